//! Which faults happen when, and the executor that injects and heals them.
//!
//! A run alternates quiet periods and fault periods of a few seconds each. The sequence is drawn
//! from a seeded RNG, so a seed replays the same schedule. Membership changes need the Augur
//! client, so they go through [`ClusterControl`], which the harness implements.

use std::net::Ipv4Addr;
use std::str::FromStr;
use std::time::Duration;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::clock::NodeClock;
use super::partition::{Firewall, PartitionKind};
use super::process::ManagedProcess;
use super::NemesisError;

/// A family of faults, as named on the command line (`--nemesis partition,kill,pause,clock,member`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NemesisKind {
    /// Network partitions of every shape in [`PartitionKind`].
    Partition,
    /// `kill -9`, restarted at heal.
    Kill,
    /// SIGSTOP, SIGCONT at heal.
    Pause,
    /// Wall-clock skew and jumps.
    Clock,
    /// Remove a member from the Raft configuration, re-add it at heal.
    Member,
}

impl FromStr for NemesisKind {
    type Err = NemesisError;
    fn from_str(s: &str) -> Result<Self, NemesisError> {
        Ok(match s.trim() {
            "partition" => NemesisKind::Partition,
            "kill" => NemesisKind::Kill,
            "pause" => NemesisKind::Pause,
            "clock" => NemesisKind::Clock,
            "member" => NemesisKind::Member,
            other => {
                return Err(NemesisError::Invalid(format!(
                    "unknown nemesis {other:?} (expected partition, kill, pause, clock or member)"
                )))
            }
        })
    }
}

/// Parses a comma-separated list of nemesis kinds.
pub fn parse_kinds(list: &str) -> Result<Vec<NemesisKind>, NemesisError> {
    let mut kinds = Vec::new();
    for part in list.split(',').filter(|p| !p.trim().is_empty()) {
        let k: NemesisKind = part.parse()?;
        if !kinds.contains(&k) {
            kinds.push(k);
        }
    }
    Ok(kinds)
}

/// One concrete fault. Nodes are indices into the run's node list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "fault", rename_all = "kebab-case")]
pub enum Fault {
    /// A partition; the concrete pairs are drawn at injection (isolate-leader needs the leader).
    Partition {
        /// Its shape.
        kind: PartitionKind,
    },
    /// Kill -9 a node.
    Kill {
        /// The node.
        node: usize,
    },
    /// SIGSTOP a node.
    Pause {
        /// The node.
        node: usize,
    },
    /// Set a node's wall clock this far from real time.
    ClockSkew {
        /// The node.
        node: usize,
        /// Offset in milliseconds.
        offset_ms: i64,
    },
    /// Jump a node's wall clock by this much, repeatedly in alternating directions (a strobe).
    ClockJump {
        /// The node.
        node: usize,
        /// Jump in milliseconds.
        delta_ms: i64,
    },
    /// Remove a node from the cluster's membership.
    Member {
        /// The node.
        node: usize,
    },
}

impl Fault {
    /// What the fault is, in words, for reports (node indices shown as `n<index+1>`, the
    /// nodes' names).
    pub fn describe(&self) -> String {
        match self {
            Fault::Partition { kind } => {
                let shape = serde_json::to_value(kind)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_else(|| format!("{kind:?}"));
                format!("partition ({shape})")
            }
            Fault::Kill { node } => format!("kill -9 n{}", node + 1),
            Fault::Pause { node } => format!("pause n{}", node + 1),
            Fault::ClockSkew { node, offset_ms } => {
                format!("clock of n{} skewed {offset_ms:+} ms", node + 1)
            }
            Fault::ClockJump { node, delta_ms } => {
                format!("clock of n{} jumped {delta_ms:+} ms", node + 1)
            }
            Fault::Member { node } => format!("remove member n{}", node + 1),
        }
    }

    /// Which family it belongs to.
    pub fn kind(&self) -> NemesisKind {
        match self {
            Fault::Partition { .. } => NemesisKind::Partition,
            Fault::Kill { .. } => NemesisKind::Kill,
            Fault::Pause { .. } => NemesisKind::Pause,
            Fault::ClockSkew { .. } | Fault::ClockJump { .. } => NemesisKind::Clock,
            Fault::Member { .. } => NemesisKind::Member,
        }
    }
}

/// Parameters of a schedule.
#[derive(Debug, Clone)]
pub struct ScheduleConfig {
    /// RNG seed; the same seed gives the same schedule.
    pub seed: u64,
    /// Number of nodes.
    pub nodes: usize,
    /// Length of the faulty part of the run.
    pub duration: Duration,
    /// Shortest quiet or fault period.
    pub min_period: Duration,
    /// Longest quiet or fault period.
    pub max_period: Duration,
    /// Families to draw from.
    pub kinds: Vec<NemesisKind>,
    /// Largest clock skew, in milliseconds.
    pub max_skew_ms: i64,
}

/// A fault switched on at `start` and healed at `end` (offsets from the start of the run).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduledFault {
    /// When to inject.
    pub start: Duration,
    /// When to heal.
    pub end: Duration,
    /// What.
    pub fault: Fault,
}

/// Draws the schedule: quiet, fault, quiet, fault... until `duration`, every fault healed by then.
/// Each run of `kinds.len()` consecutive faults uses every family once, in random order.
pub fn schedule(cfg: &ScheduleConfig) -> Result<Vec<ScheduledFault>, NemesisError> {
    if cfg.nodes == 0 {
        return Err(NemesisError::Invalid("a schedule needs nodes".into()));
    }
    if cfg.min_period.is_zero() || cfg.min_period > cfg.max_period {
        return Err(NemesisError::Invalid(
            "need 0 < min_period <= max_period".into(),
        ));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut out = Vec::new();
    if cfg.kinds.is_empty() {
        return Ok(out);
    }
    let period = |rng: &mut ChaCha8Rng| {
        let lo = cfg.min_period.as_millis() as u64;
        let hi = cfg.max_period.as_millis() as u64;
        Duration::from_millis(rng.gen_range(lo..=hi))
    };
    let mut t = period(&mut rng);
    let mut deck: Vec<NemesisKind> = Vec::new();
    loop {
        let len = period(&mut rng);
        if t + len > cfg.duration {
            break;
        }
        // Families are dealt from a shuffled deck, so every requested family comes up once
        // in every `kinds.len()` faults instead of a short run missing one by chance.
        if deck.is_empty() {
            deck = cfg.kinds.clone();
            deck.shuffle(&mut rng);
        }
        let kind = deck.pop().unwrap_or(NemesisKind::Partition);
        let node = rng.gen_range(0..cfg.nodes);
        let skew = cfg.max_skew_ms.max(1);
        let fault = match kind {
            NemesisKind::Partition => Fault::Partition {
                kind: *PartitionKind::ALL
                    .choose(&mut rng)
                    .unwrap_or(&PartitionKind::IsolateOne),
            },
            NemesisKind::Kill => Fault::Kill { node },
            NemesisKind::Pause => Fault::Pause { node },
            NemesisKind::Clock if rng.gen_bool(0.5) => Fault::ClockSkew {
                node,
                offset_ms: rng.gen_range(-skew..=skew),
            },
            NemesisKind::Clock => Fault::ClockJump {
                node,
                delta_ms: rng.gen_range(1..=skew),
            },
            NemesisKind::Member => Fault::Member { node },
        };
        out.push(ScheduledFault {
            start: t,
            end: t + len,
            fault,
        });
        t += len + period(&mut rng);
    }
    Ok(out)
}

/// Why a set-up error makes a nemesis unavailable, without repeating the nemesis's name (it is
/// wrapped into a new `Unavailable` at each injection).
fn reason_of(e: NemesisError) -> String {
    match e {
        NemesisError::Unavailable { reason, .. } => reason,
        other => other.to_string(),
    }
}

/// What the harness provides through the Augur client: the current leader and membership changes.
pub trait ClusterControl {
    /// The node index of the current leader, if one is known.
    fn leader(&mut self) -> Result<Option<usize>, String>;
    /// Removes `node` from the Raft membership.
    fn remove_member(&mut self, node: usize) -> Result<(), String>;
    /// Deletes the stopped `node`'s data, so that it restarts as a fresh, empty process that
    /// waits to be added (it must not bootstrap a cluster of its own).
    fn wipe_data(&mut self, node: usize) -> Result<(), String>;
    /// Adds `node` back to the Raft membership (as a learner, then a voter once caught up).
    fn add_member(&mut self, node: usize) -> Result<(), String>;
}

/// A fault that is in effect and how to undo it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveFault {
    /// The fault as scheduled.
    pub fault: Fault,
    /// What was actually done, e.g. `isolate 127.0.0.3` or `kill -9 n2`.
    pub description: String,
}

/// Injects and heals faults on a running cluster.
pub struct Nemesis<C: ClusterControl> {
    addrs: Vec<Ipv4Addr>,
    procs: Vec<ManagedProcess>,
    firewall: Result<Firewall, String>,
    clocks: Result<Vec<NodeClock>, String>,
    control: C,
    rng: ChaCha8Rng,
    /// Nodes whose removal was attempted and that have not been added back yet. A removal
    /// that errored may still have taken effect, so those count too.
    removed: std::collections::BTreeSet<usize>,
}

impl<C: ClusterControl> Nemesis<C> {
    /// `addrs[i]` is node i's address and `procs[i]` its process. A firewall or clocks that could
    /// not be set up are passed as their error and make those faults report "unavailable".
    pub fn new(
        addrs: Vec<Ipv4Addr>,
        procs: Vec<ManagedProcess>,
        firewall: Result<Firewall, NemesisError>,
        clocks: Result<Vec<NodeClock>, NemesisError>,
        control: C,
        seed: u64,
    ) -> Result<Self, NemesisError> {
        if addrs.len() != procs.len() {
            return Err(NemesisError::Invalid(format!(
                "{} addresses for {} processes",
                addrs.len(),
                procs.len()
            )));
        }
        if let Ok(c) = &clocks {
            if c.len() != procs.len() {
                return Err(NemesisError::Invalid(format!(
                    "{} clocks for {} processes",
                    c.len(),
                    procs.len()
                )));
            }
        }
        Ok(Nemesis {
            addrs,
            procs,
            firewall: firewall.map_err(reason_of),
            clocks: clocks.map_err(reason_of),
            control,
            // Distinct stream from the schedule's, same seed.
            rng: ChaCha8Rng::seed_from_u64(seed ^ 0x006e_656d_6573_6973),
            removed: Default::default(),
        })
    }

    /// The node processes, for the harness to inspect or restart.
    pub fn processes(&mut self) -> &mut [ManagedProcess] {
        &mut self.procs
    }

    /// The cluster control, for the harness's own use.
    pub fn control(&mut self) -> &mut C {
        &mut self.control
    }

    fn proc(&mut self, node: usize) -> Result<&mut ManagedProcess, NemesisError> {
        self.procs
            .get_mut(node)
            .ok_or_else(|| NemesisError::Invalid(format!("no node {node}")))
    }

    fn firewall(&self) -> Result<&Firewall, NemesisError> {
        self.firewall
            .as_ref()
            .map_err(|reason| NemesisError::Unavailable {
                nemesis: "partition",
                reason: reason.clone(),
            })
    }

    fn clock(&mut self, node: usize) -> Result<&mut NodeClock, NemesisError> {
        let clocks = self
            .clocks
            .as_mut()
            .map_err(|reason| NemesisError::Unavailable {
                nemesis: "clock",
                reason: reason.clone(),
            })?;
        clocks
            .get_mut(node)
            .ok_or_else(|| NemesisError::Invalid(format!("no node {node}")))
    }

    /// Injects a fault. An `Unavailable` error means it was not injected and must be reported so.
    pub fn inject(&mut self, fault: &Fault) -> Result<ActiveFault, NemesisError> {
        let description = match fault {
            Fault::Partition { kind } => {
                self.firewall()?;
                let leader = match kind {
                    PartitionKind::IsolateLeader => {
                        let l = self.control.leader().map_err(NemesisError::Control)?;
                        l.and_then(|i| self.addrs.get(i).copied())
                    }
                    _ => None,
                };
                let p = kind.build(&self.addrs, leader, &mut self.rng)?;
                self.firewall()?.apply(&p)?;
                p.description
            }
            Fault::Kill { node } => {
                let p = self.proc(*node)?;
                p.kill9()?;
                format!("kill -9 {}", p.name())
            }
            Fault::Pause { node } => {
                let p = self.proc(*node)?;
                p.pause()?;
                format!("pause {}", p.name())
            }
            Fault::ClockSkew { node, offset_ms } => {
                let name = self.proc(*node)?.name().to_string();
                self.clock(*node)?.set_offset_ms(*offset_ms)?;
                format!("clock of {name} skewed {offset_ms:+} ms")
            }
            Fault::ClockJump { node, delta_ms } => {
                let name = self.proc(*node)?.name().to_string();
                self.clock(*node)?.jump_ms(*delta_ms)?;
                format!("clock of {name} jumped {delta_ms:+} ms")
            }
            Fault::Member { node } => {
                let node = *node;
                self.proc(node)?;
                self.removed.insert(node);
                self.control
                    .remove_member(node)
                    .map_err(NemesisError::Control)?;
                // Only once the cluster has confirmed the removal is the node's data
                // expendable: wiping a voter would be the harness losing data, not Augur.
                self.proc(node)?.kill9()?;
                self.control
                    .wipe_data(node)
                    .map_err(NemesisError::Control)?;
                let p = self.proc(node)?;
                p.restart()?;
                format!("remove member {}, wipe it, restart it empty", p.name())
            }
        };
        Ok(ActiveFault {
            fault: fault.clone(),
            description,
        })
    }

    /// Undoes one injected fault.
    pub fn heal(&mut self, active: &ActiveFault) -> Result<(), NemesisError> {
        match &active.fault {
            Fault::Partition { .. } => self.firewall()?.heal(),
            Fault::Kill { node } => self.proc(*node)?.restart(),
            Fault::Pause { node } => self.proc(*node)?.resume(),
            Fault::ClockSkew { node, .. } | Fault::ClockJump { node, .. } => {
                self.clock(*node)?.reset()
            }
            Fault::Member { node } => {
                // A wipe or restart that failed half-way leaves the node down; bring it up.
                let p = self.proc(*node)?;
                if !p.is_running() {
                    p.restart()?;
                }
                self.control
                    .add_member(*node)
                    .map_err(NemesisError::Control)?;
                self.removed.remove(node);
                Ok(())
            }
        }
    }

    /// Nodes removed from the membership and not yet added back.
    pub fn removed_members(&self) -> Vec<usize> {
        self.removed.iter().copied().collect()
    }

    /// Heals everything that can be healed, whatever was injected: flushes the partition set,
    /// resumes paused nodes, restarts dead ones, resets clocks, adds removed members back.
    /// Returns the errors it met; a member that could not be added back stays in
    /// [`removed_members`](Self::removed_members) for the caller to retry.
    pub fn heal_all(&mut self) -> Vec<NemesisError> {
        let mut errors = Vec::new();
        if let Ok(fw) = &self.firewall {
            if let Err(e) = fw.heal() {
                errors.push(e);
            }
        }
        for p in &mut self.procs {
            let r = if p.is_paused() {
                p.resume()
            } else if !p.is_running() {
                p.restart()
            } else {
                Ok(())
            };
            if let Err(e) = r {
                errors.push(e);
            }
        }
        if let Ok(clocks) = &mut self.clocks {
            for c in clocks {
                if let Err(e) = c.reset() {
                    errors.push(e);
                }
            }
        }
        for node in self.removed_members() {
            match self.control.add_member(node) {
                Ok(()) => {
                    self.removed.remove(&node);
                }
                Err(e) => errors.push(NemesisError::Control(e)),
            }
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(seed: u64) -> ScheduleConfig {
        ScheduleConfig {
            seed,
            nodes: 5,
            duration: Duration::from_secs(120),
            min_period: Duration::from_secs(2),
            max_period: Duration::from_secs(6),
            kinds: parse_kinds("partition,kill,pause,clock,member").unwrap(),
            max_skew_ms: 60_000,
        }
    }

    #[test]
    fn schedule_is_reproducible_alternating_and_bounded() {
        let a = schedule(&cfg(42)).unwrap();
        assert_eq!(a, schedule(&cfg(42)).unwrap());
        assert_ne!(a, schedule(&cfg(43)).unwrap());
        assert!(a.len() >= 10, "only {} faults in 120 s", a.len());
        let mut last_end = Duration::ZERO;
        for f in &a {
            assert!(f.start > last_end, "faults overlap or touch: {f:?}");
            assert!(f.end > f.start && f.end <= Duration::from_secs(120));
            assert!(
                f.end - f.start >= Duration::from_secs(2)
                    && f.end - f.start <= Duration::from_secs(6)
            );
            last_end = f.end;
        }
        let kinds: std::collections::HashSet<NemesisKind> =
            a.iter().map(|f| f.fault.kind()).collect();
        assert_eq!(kinds.len(), 5, "not every family drawn: {kinds:?}");
    }

    #[test]
    fn every_family_comes_up_in_each_round() {
        let c = cfg(3);
        let a = schedule(&c).unwrap();
        for round in a.chunks_exact(c.kinds.len()) {
            let kinds: std::collections::HashSet<NemesisKind> =
                round.iter().map(|f| f.fault.kind()).collect();
            assert_eq!(kinds.len(), c.kinds.len(), "{round:?}");
        }
    }

    #[test]
    fn kinds_parse_and_reject_unknown_names() {
        assert_eq!(
            parse_kinds("kill, pause,kill").unwrap(),
            [NemesisKind::Kill, NemesisKind::Pause]
        );
        assert!(matches!(
            parse_kinds("kill,explode"),
            Err(NemesisError::Invalid(_))
        ));
        let mut bad = cfg(1);
        bad.min_period = Duration::ZERO;
        assert!(schedule(&bad).is_err());
    }
}
