//! Which faults happen when.
//!
//! A run alternates quiet periods and fault periods of a few seconds each. The sequence is drawn
//! from a seeded RNG, so a seed replays the same schedule. The executor that injects and heals
//! the faults is [`super::executor`].
//!
//! Faults follow one another, with one exception: a **disk loss** leaves its member *lost*
//! (wiped, restarted, not yet re-added) for a span that may contain a few faults of the other
//! families, because a member that lost its data must stay out of Raft however the rest of the
//! cluster is disturbed meanwhile. Two rules keep a run meaningful: at most one member is lost
//! at a time (a disk loss, or a member fault's removal and wipe, until it is re-added and caught
//! up: with 3 nodes, two lost disks could legitimately lose acknowledged writes, and a
//! membership change needs the lost member's old entry gone first), and every disk loss ends
//! with its re-add. [`super::timeline::lost_member_violations`] checks both on a drawn
//! schedule, and [`super::timeline::timeline`] is the order the executor walks it in.

use std::str::FromStr;
use std::time::Duration;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::partition::PartitionKind;
use super::NemesisError;

/// A family of faults, as named on the command line
/// (`--nemesis partition,kill,pause,clock,member,disk-loss`).
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
    /// Kill a member, delete its data directory and restart it *without* removing it first;
    /// at heal the operator path re-adds it (remove the old entry, add as a learner, catch up,
    /// promote).
    #[serde(rename = "disk-loss")]
    DiskLoss,
    /// Drain a storage node through the operator command while the other faults run, undrain
    /// it at heal: data-plane runs only (`--workload data`), where shard moves exist.
    Migrate,
}

impl NemesisKind {
    /// True when a fault of this family may happen while a member is lost: it neither wipes a
    /// member nor changes the membership (a change would need the lost member's old entry,
    /// which cannot answer, in its joint quorum).
    pub fn may_run_while_a_member_is_lost(self) -> bool {
        !matches!(self, NemesisKind::Member | NemesisKind::DiskLoss)
    }

    /// The name used on the command line and in `results.json`.
    pub fn name(self) -> &'static str {
        match self {
            NemesisKind::Partition => "partition",
            NemesisKind::Kill => "kill",
            NemesisKind::Pause => "pause",
            NemesisKind::Clock => "clock",
            NemesisKind::Member => "member",
            NemesisKind::DiskLoss => "disk-loss",
            NemesisKind::Migrate => "migrate",
        }
    }
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
            "disk-loss" => NemesisKind::DiskLoss,
            "migrate" => NemesisKind::Migrate,
            other => {
                return Err(NemesisError::Invalid(format!(
                    "unknown nemesis {other:?} (expected partition, kill, pause, clock, member, \
                     disk-loss or migrate)"
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
    /// A member's disk dies: kill it, delete its data, restart it still in the membership.
    DiskLoss {
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
            Fault::DiskLoss { node } => format!("disk loss on n{}", node + 1),
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
            Fault::DiskLoss { .. } => NemesisKind::DiskLoss,
        }
    }

    /// The member this fault leaves lost (wiped and out of Raft) until its heal, if any.
    pub fn loses_member(&self) -> Option<usize> {
        match self {
            Fault::Member { node } | Fault::DiskLoss { node } => Some(*node),
            _ => None,
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

/// Most faults of other families drawn inside one disk loss's span. Each adds a fault period
/// and a quiet period to the time the member stays lost, and a run should also see plain
/// faults and plain disk losses.
const MAX_FAULTS_WHILE_LOST: u32 = 2;

/// Draws the schedule: quiet, fault, quiet, fault... until `duration`, every fault healed by then.
/// Families are dealt from a shuffled deck, so every requested family comes up once in every
/// `kinds.len()` faults instead of a short run missing one by chance.
///
/// A disk loss starts in a quiet period and leaves its member lost for a fault period (the
/// cluster serves on the remaining majority), then for up to two faults of the families that
/// may run meanwhile, each followed by its quiet period; its heal (the
/// re-add) comes after them, before the next membership-changing fault is dealt. Schedules
/// without disk loss draw exactly what they drew before disk loss existed, so old seeds replay.
pub fn schedule(cfg: &ScheduleConfig) -> Result<Vec<ScheduledFault>, NemesisError> {
    if cfg.nodes == 0 {
        return Err(NemesisError::Invalid("a schedule needs nodes".into()));
    }
    if cfg.min_period.is_zero() || cfg.min_period > cfg.max_period {
        return Err(NemesisError::Invalid(
            "need 0 < min_period <= max_period".into(),
        ));
    }
    if cfg.kinds.contains(&NemesisKind::Migrate) {
        return Err(NemesisError::Invalid(
            "migrate drains storage nodes: it needs --workload data".into(),
        ));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut out: Vec<ScheduledFault> = Vec::new();
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
    // The disk loss in progress: its index in `out` and how many more faults it may span.
    let mut lost: Option<(usize, u32)> = None;
    loop {
        if let Some((index, more)) = lost {
            if deck.is_empty() {
                deck = cfg.kinds.clone();
                deck.shuffle(&mut rng);
            }
            let next_may_run = deck
                .last()
                .is_some_and(|k| k.may_run_while_a_member_is_lost());
            if more == 0 || !next_may_run {
                // The re-add: now, after the quiet period that followed the last fault.
                out[index].end = t.min(cfg.duration).max(out[index].end);
                lost = None;
                t += period(&mut rng);
                continue;
            }
        }
        let len = period(&mut rng);
        if t + len > cfg.duration {
            break;
        }
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
            NemesisKind::DiskLoss => Fault::DiskLoss { node },
            // Refused above: only data-plane runs drain storage nodes.
            NemesisKind::Migrate => break,
        };
        out.push(ScheduledFault {
            start: t,
            end: t + len,
            fault,
        });
        if kind == NemesisKind::DiskLoss {
            // `end` so far only covers the first period, when the member sits lost alone.
            lost = Some((out.len() - 1, rng.gen_range(0..=MAX_FAULTS_WHILE_LOST)));
            t += len;
            continue;
        }
        if let Some((_, more)) = lost.as_mut() {
            *more = more.saturating_sub(1);
        }
        t += len + period(&mut rng);
    }
    if let Some((index, _)) = lost {
        out[index].end = t.min(cfg.duration).max(out[index].end);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nemesis::timeline::lost_member_violations;

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
        assert!(lost_member_violations(&a, Duration::from_secs(120)).is_empty());
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
            parse_kinds("kill, pause,kill,disk-loss").unwrap(),
            [NemesisKind::Kill, NemesisKind::Pause, NemesisKind::DiskLoss]
        );
        assert!(matches!(
            parse_kinds("kill,explode"),
            Err(NemesisError::Invalid(_))
        ));
        assert!(parse_kinds("diskloss").is_err());
        for k in parse_kinds("partition,kill,pause,clock,member,disk-loss,migrate").unwrap() {
            // The command-line name is the serialised name, which `results.json` records.
            assert_eq!(serde_json::to_value(k).unwrap(), k.name());
        }
        let mut bad = cfg(1);
        bad.min_period = Duration::ZERO;
        assert!(schedule(&bad).is_err());
        let mut data_only = cfg(1);
        data_only.kinds = parse_kinds("kill,migrate").unwrap();
        assert!(matches!(
            schedule(&data_only),
            Err(NemesisError::Invalid(_))
        ));
    }

    fn all_kinds(seed: u64, nodes: usize, secs: u64) -> ScheduleConfig {
        ScheduleConfig {
            nodes,
            duration: Duration::from_secs(secs),
            min_period: Duration::from_secs(3),
            max_period: Duration::from_secs(8),
            kinds: parse_kinds("disk-loss,partition,kill,pause,clock,member").unwrap(),
            ..cfg(seed)
        }
    }

    #[test]
    fn never_two_lost_members_and_every_disk_loss_is_re_added() {
        let mut spans_with_company = 0;
        let mut disk_losses = 0;
        for seed in 0..300 {
            for (nodes, kinds) in [
                (3, "disk-loss,kill,partition"),
                (5, "disk-loss,partition,kill,pause,clock,member"),
                (3, "disk-loss,member"),
                (3, "disk-loss"),
            ] {
                let c = ScheduleConfig {
                    kinds: parse_kinds(kinds).unwrap(),
                    ..all_kinds(seed, nodes, 60)
                };
                let s = schedule(&c).unwrap();
                let bad = lost_member_violations(&s, c.duration);
                assert!(bad.is_empty(), "seed {seed} {kinds}: {bad:?}\n{s:#?}");
                let others = c.kinds.iter().any(|k| k.may_run_while_a_member_is_lost());
                for (i, f) in s.iter().enumerate() {
                    if let Fault::DiskLoss { node } = f.fault {
                        assert!(node < nodes);
                        if !others {
                            continue;
                        }
                        disk_losses += 1;
                        if s[i + 1..].iter().any(|g| g.start < f.end) {
                            spans_with_company += 1;
                        }
                    }
                }
            }
        }
        // The invariant is not met by never mixing: where other families are asked for, many
        // disk losses have faults of theirs inside.
        assert!(disk_losses > 500, "{disk_losses} {spans_with_company}");
        assert!(
            spans_with_company * 4 > disk_losses,
            "{spans_with_company} of {disk_losses} disk losses overlap another fault"
        );
    }

    #[test]
    fn schedules_without_disk_loss_are_unchanged_by_it() {
        // Figures in the README name seeds of schedules drawn before disk loss existed, and a
        // seed must replay the same faults: the first faults of seed 42 as drawn then (3
        // nodes, partition,kill,pause, 3..8 s). Checked against the previous implementation
        // on 4000 configurations when disk loss was added.
        let c = ScheduleConfig {
            nodes: 3,
            min_period: Duration::from_secs(3),
            max_period: Duration::from_secs(8),
            kinds: parse_kinds("partition,kill,pause").unwrap(),
            ..cfg(42)
        };
        let s = schedule(&c).unwrap();
        let ms = Duration::from_millis;
        let first: Vec<(Duration, Duration, Fault)> = s
            .iter()
            .take(4)
            .map(|f| (f.start, f.end, f.fault.clone()))
            .collect();
        assert_eq!(
            first,
            [
                (ms(6_410), ms(14_162), Fault::Pause { node: 0 }),
                (ms(18_702), ms(25_722), Fault::Kill { node: 2 }),
                (
                    ms(29_915),
                    ms(35_880),
                    Fault::Partition {
                        kind: PartitionKind::Halves
                    }
                ),
                (ms(39_401), ms(43_391), Fault::Kill { node: 0 }),
            ]
        );
    }
}
