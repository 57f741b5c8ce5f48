//! The executor: injects and heals [`Fault`]s on a running cluster.
//!
//! Membership changes and the checks on a wiped member need the Augur client, so they go
//! through [`ClusterControl`], which the harness implements. The executor enforces at run time
//! what the schedule guarantees by construction: at most one member is lost (wiped and not yet
//! re-added and caught up) at a time. A re-add that failed leaves its member lost, and a second
//! disk loss or member fault is then refused ([`NemesisError::Refused`]) rather than risk
//! losing acknowledged writes to the harness's own doing.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Instant;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::clock::NodeClock;
use super::partition::{Firewall, PartitionKind};
use super::process::ManagedProcess;
use super::schedule::Fault;
use super::NemesisError;

/// One thing a fault did, and when: the report lists a disk loss's kill, wipe, restart,
/// what the wiped member said meanwhile, and each call of its re-add.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// When it happened.
    pub at: Instant,
    /// What happened.
    pub what: String,
}

impl Step {
    /// A step that happens now.
    pub fn now(what: impl Into<String>) -> Self {
        Step {
            at: Instant::now(),
            what: what.into(),
        }
    }
}

/// What the harness provides through the Augur client: the current leader, membership changes
/// and the watch on wiped members.
pub trait ClusterControl {
    /// The node index of the current leader, if one is known.
    fn leader(&mut self) -> Result<Option<usize>, String>;
    /// Removes `node` from the Raft membership.
    fn remove_member(&mut self, node: usize) -> Result<(), String>;
    /// Deletes the stopped `node`'s data directory.
    fn wipe_data(&mut self, node: usize) -> Result<(), String>;
    /// Starts watching `node`, just restarted on an empty data directory: until
    /// [`add_member`](Self::add_member) it must say it waits to be added and hold nothing. A
    /// member that does otherwise rejoined on its own, which the harness records as a failure
    /// of the run.
    fn watch_wiped(&mut self, node: usize) -> Result<(), String>;
    /// Adds `node` back the operator's way: ends its watch, removes its entry if the
    /// membership knows it under an older incarnation, adds it as a learner, waits until it
    /// has caught up, promotes it. Appends each step to `steps`.
    fn add_member(&mut self, node: usize, steps: &mut Vec<Step>) -> Result<(), String>;
}

/// A fault that is in effect and how to undo it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveFault {
    /// The fault as scheduled.
    pub fault: Fault,
    /// What was actually done, e.g. `isolate 127.0.0.3` or `kill -9 n2`.
    pub description: String,
    /// What injecting it and healing it did, in order.
    pub steps: Vec<Step>,
}

/// Injects and heals faults on a running cluster.
pub struct Nemesis<C: ClusterControl> {
    addrs: Vec<Ipv4Addr>,
    procs: Vec<ManagedProcess>,
    firewall: Result<Firewall, String>,
    clocks: Result<Vec<NodeClock>, String>,
    control: C,
    rng: ChaCha8Rng,
    /// Members removed (member fault) or wiped in place (disk loss) and not yet added back and
    /// caught up. A removal or wipe that errored may still have taken effect, so those count.
    lost: BTreeSet<usize>,
}

/// Why a set-up error makes a nemesis unavailable, without repeating the nemesis's name (it is
/// wrapped into a new `Unavailable` at each injection).
fn reason_of(e: NemesisError) -> String {
    match e {
        NemesisError::Unavailable { reason, .. } => reason,
        other => other.to_string(),
    }
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
            lost: Default::default(),
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

    /// Refuses to lose a member while another is lost.
    fn one_lost_at_a_time(&self, node: usize) -> Result<(), NemesisError> {
        match self.lost.iter().next() {
            Some(other) => Err(NemesisError::Refused(format!(
                "n{} is still lost (wiped or removed, not yet added back and caught up): losing \
                 n{} as well could lose acknowledged writes",
                other + 1,
                node + 1
            ))),
            None => Ok(()),
        }
    }

    /// Injects a fault. An `Unavailable` error means it was not injected and must be reported
    /// so; `Refused` that it was not injected because it would break the one-lost-member rule.
    pub fn inject(&mut self, fault: &Fault) -> Result<ActiveFault, NemesisError> {
        let mut steps = Vec::new();
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
                let name = self.proc(node)?.name().to_string();
                self.one_lost_at_a_time(node)?;
                self.lost.insert(node);
                self.control
                    .remove_member(node)
                    .map_err(NemesisError::Control)?;
                steps.push(Step::now(format!("removed {name} from the membership")));
                // Only once the cluster has confirmed the removal is the node's data
                // expendable: wiping a voter would be the harness losing data, not Augur.
                self.wipe_and_restart(node, &mut steps)?;
                format!("remove member {name}, wipe it, restart it empty")
            }
            Fault::DiskLoss { node } => {
                let node = *node;
                let name = self.proc(node)?.name().to_string();
                self.one_lost_at_a_time(node)?;
                // From the kill on, its data may be gone: it counts as lost until re-added.
                self.lost.insert(node);
                self.wipe_and_restart(node, &mut steps)?;
                format!("disk loss on {name}: kill -9, delete its data, restart it still a member")
            }
        };
        Ok(ActiveFault {
            fault: fault.clone(),
            description,
            steps,
        })
    }

    /// Kills `node`, deletes its data directory, starts it again, and has the control watch it.
    fn wipe_and_restart(&mut self, node: usize, steps: &mut Vec<Step>) -> Result<(), NemesisError> {
        let p = self.proc(node)?;
        p.kill9()?;
        steps.push(Step::now(format!("kill -9 {}", p.name())));
        self.control
            .wipe_data(node)
            .map_err(NemesisError::Control)?;
        steps.push(Step::now("deleted its data directory"));
        self.proc(node)?.restart()?;
        steps.push(Step::now("restarted it on an empty data directory"));
        self.control
            .watch_wiped(node)
            .map_err(NemesisError::Control)
    }

    /// Undoes one injected fault, appending what it did to `active.steps`.
    pub fn heal(&mut self, active: &mut ActiveFault) -> Result<(), NemesisError> {
        match active.fault {
            Fault::Partition { .. } => self.firewall()?.heal(),
            Fault::Kill { node } => self.proc(node)?.restart(),
            Fault::Pause { node } => self.proc(node)?.resume(),
            Fault::ClockSkew { node, .. } | Fault::ClockJump { node, .. } => {
                self.clock(node)?.reset()
            }
            Fault::Member { node } | Fault::DiskLoss { node } => {
                self.add_back(node, &mut active.steps)
            }
        }
    }

    /// Brings a lost member's process up if a failure left it down or stopped, then adds it
    /// back through the control.
    fn add_back(&mut self, node: usize, steps: &mut Vec<Step>) -> Result<(), NemesisError> {
        let p = self.proc(node)?;
        if p.is_paused() {
            p.resume()?;
        }
        if !p.is_running() {
            p.restart()?;
            steps.push(Step::now(format!("restarted {}", p.name())));
        }
        self.control
            .add_member(node, steps)
            .map_err(NemesisError::Control)?;
        self.lost.remove(&node);
        Ok(())
    }

    /// Members wiped or removed and not yet added back and caught up.
    pub fn lost_members(&self) -> Vec<usize> {
        self.lost.iter().copied().collect()
    }

    /// Adds back every lost member; returns the errors. A member that could not be added back
    /// stays in [`lost_members`](Self::lost_members) for the caller to retry.
    pub fn heal_lost(&mut self, steps: &mut Vec<Step>) -> Vec<NemesisError> {
        let mut errors = Vec::new();
        for node in self.lost_members() {
            if let Err(e) = self.add_back(node, steps) {
                errors.push(e);
            }
        }
        errors
    }

    /// Heals everything that can be healed, whatever was injected: flushes the partition set,
    /// resumes paused nodes, restarts dead ones, resets clocks, adds lost members back (their
    /// steps appended to `steps`). Returns the errors it met.
    pub fn heal_all(&mut self, steps: &mut Vec<Step>) -> Vec<NemesisError> {
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
        errors.extend(self.heal_lost(steps));
        errors
    }
}
