//! Which faults a data-plane run injects, and when.
//!
//! Two streams run side by side, each alternating quiet and fault periods drawn from a seeded
//! RNG (the same seed gives the same schedule): one on the **storage nodes**, one on the
//! **metadata members**, so a storage primary may be cut off while the metadata leader is being
//! killed. Within a stream faults follow one another, never overlapping: at most one storage
//! node and one member are disturbed at a time, which is what RF 3 and a 3-member quorum are
//! built to survive. Families are dealt from a shuffled deck per stream, so each comes up once
//! per round.
//!
//! `migrate` is a third stream of its own ([`Side::Migrate`]): a drain is not a failure but
//! the control plane's reaction to a predicted one, and what matters is that its moves run
//! *while* storage nodes are killed, paused and cut off, which a fault of the storage stream
//! never would. Its own stream also leaves the other two streams exactly as they were drawn
//! without it, so older seeds replay. Its faults alternate between the two ways a drain
//! ends: undrained mid-way (unfinished moves cancelled) or left to empty the node first; the
//! seed chooses which comes first.
//!
//! Which node a storage fault hits is decided when it is injected (the primary of a shard a
//! key in use lives on, most of the time), since primaries move during a run; the schedule
//! carries a random `pick` for that choice. A storage pause lasts at least `min_pause`
//! (longer than the grace period after which the control plane promotes another replica), so
//! that a paused primary is really replaced while it sleeps. The last fault of each stream is
//! held until the workload ends, so the final heal has something real to undo.

use std::time::Duration;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::nemesis::schedule::NemesisKind;
use crate::nemesis::NemesisError;

/// The part of the cluster a fault hits: one fault stream each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// A storage node.
    Storage,
    /// A metadata member.
    Meta,
    /// A storage node drained through the control plane (the `migrate` stream, which runs
    /// beside the storage stream's faults).
    Migrate,
}

/// The shapes of a partition. Processes share 127.0.0.1; partitions are drawn between their
/// ports ([`crate::nemesis::ports`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PartitionShape {
    /// A storage primary cut off from the other storage nodes (its secondaries) and from the
    /// metadata leader: it can neither replicate nor renew its lease.
    PrimaryIsolated,
    /// A storage primary cut off from every metadata member: it still replicates, but its
    /// lease runs out and the control plane declares it Down.
    PrimaryFromMeta,
    /// A storage primary cut off from the other storage nodes only: it still heartbeats, and
    /// must ask the control plane to remove the secondaries that stopped acknowledging.
    PrimaryFromSecondaries,
    /// A metadata member cut off from the other members and every storage node.
    MemberIsolated,
    /// The metadata leader cut off from the other members and every storage node.
    LeaderIsolated,
}

impl PartitionShape {
    const STORAGE: [PartitionShape; 3] = [
        PartitionShape::PrimaryIsolated,
        PartitionShape::PrimaryFromMeta,
        PartitionShape::PrimaryFromSecondaries,
    ];
    const META: [PartitionShape; 2] = [
        PartitionShape::MemberIsolated,
        PartitionShape::LeaderIsolated,
    ];
}

/// One fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "fault", rename_all = "kebab-case")]
pub enum DataFault {
    /// SIGKILL; restarted at heal.
    Kill,
    /// SIGSTOP; SIGCONT at heal.
    Pause,
    /// SIGKILL, delete the data directory, restart at once. A storage node then waits to
    /// register until the control plane has moved its replicas away and comes back as a new
    /// incarnation; a member waits to be added back, which the heal does (the operator path,
    /// `augur local readd`).
    DiskLoss,
    /// A partition of this shape.
    Partition {
        /// Its shape.
        shape: PartitionShape,
    },
    /// `augurctl node drain` on a storage node; at heal `undrain`, which cancels the moves
    /// still unfinished, or, with `finish`, only once the drain has emptied the node (so it
    /// takes replicas again later).
    Migrate {
        /// Let the drain finish before undraining.
        finish: bool,
    },
}

impl DataFault {
    /// The family's command-line name, as `results.json` records it.
    pub fn kind_name(&self) -> &'static str {
        match self {
            DataFault::Kill => "kill",
            DataFault::Pause => "pause",
            DataFault::DiskLoss => "disk-loss",
            DataFault::Partition { .. } => "partition",
            DataFault::Migrate { .. } => "migrate",
        }
    }
}

/// One planned fault: injected at `start`, healed at `end` (offsets from the run's start).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Planned {
    /// When to inject.
    pub start: Duration,
    /// When to heal.
    pub end: Duration,
    /// Which part of the cluster.
    pub side: Side,
    /// What.
    pub fault: DataFault,
    /// A random number the executor uses to choose the node when it injects.
    pub pick: u64,
}

/// Parameters of a data-plane schedule.
#[derive(Debug, Clone)]
pub struct DataScheduleConfig {
    /// RNG seed.
    pub seed: u64,
    /// Length of the workload.
    pub duration: Duration,
    /// Shortest quiet or fault period.
    pub min_period: Duration,
    /// Longest quiet or fault period.
    pub max_period: Duration,
    /// Families to draw from (partition, kill, pause, disk-loss, migrate).
    pub kinds: Vec<NemesisKind>,
    /// Shortest storage pause.
    pub min_pause: Duration,
    /// Whether the metadata stream runs (it needs a quorum that survives one member: 3+).
    pub meta_faults: bool,
}

/// The families the data workload can inject.
pub const SUPPORTED: [NemesisKind; 5] = [
    NemesisKind::Partition,
    NemesisKind::Kill,
    NemesisKind::Pause,
    NemesisKind::DiskLoss,
    NemesisKind::Migrate,
];

/// Draws both streams' faults, in start order.
pub fn schedule(cfg: &DataScheduleConfig) -> Result<Vec<Planned>, NemesisError> {
    if cfg.min_period.is_zero() || cfg.min_period > cfg.max_period {
        return Err(NemesisError::Invalid(
            "need 0 < min_period <= max_period".into(),
        ));
    }
    if let Some(k) = cfg.kinds.iter().find(|k| !SUPPORTED.contains(k)) {
        return Err(NemesisError::Invalid(format!(
            "the data workload does not inject {} faults (partition, kill, pause, disk-loss, \
             migrate)",
            k.name()
        )));
    }
    let faults: Vec<NemesisKind> = cfg
        .kinds
        .iter()
        .copied()
        .filter(|k| *k != NemesisKind::Migrate)
        .collect();
    let mut out = stream(cfg, Side::Storage, 0x5709_a9e5, &faults);
    if cfg.meta_faults {
        out.extend(stream(cfg, Side::Meta, 0x3e7a_0001, &faults));
    }
    if cfg.kinds.contains(&NemesisKind::Migrate) {
        out.extend(stream(
            cfg,
            Side::Migrate,
            0xd7a1_0005,
            &[NemesisKind::Migrate],
        ));
    }
    out.sort_by_key(|p| (p.start, p.side));
    Ok(out)
}

fn stream(cfg: &DataScheduleConfig, side: Side, salt: u64, kinds: &[NemesisKind]) -> Vec<Planned> {
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ salt);
    let mut out: Vec<Planned> = Vec::new();
    if kinds.is_empty() {
        return out;
    }
    // Drawn only in the migrate stream, so the other streams' draws stay as they were.
    let mut finish = side == Side::Migrate && rng.gen_bool(0.5);
    let lo = cfg.min_period.as_millis() as u64;
    let hi = cfg.max_period.as_millis() as u64;
    let period = |rng: &mut ChaCha8Rng| Duration::from_millis(rng.gen_range(lo..=hi));
    let mut t = period(&mut rng);
    if side == Side::Meta {
        // Staggered, so the two streams' faults overlap in varying ways.
        t += cfg.min_period / 2;
    }
    let mut deck: Vec<NemesisKind> = Vec::new();
    loop {
        if deck.is_empty() {
            deck = kinds.to_vec();
            deck.shuffle(&mut rng);
        }
        let kind = deck.pop().unwrap_or(NemesisKind::Kill);
        let mut len = period(&mut rng);
        let fault = match kind {
            NemesisKind::Kill => DataFault::Kill,
            NemesisKind::Pause => {
                if side == Side::Storage {
                    len = len.max(cfg.min_pause);
                }
                DataFault::Pause
            }
            NemesisKind::DiskLoss => DataFault::DiskLoss,
            NemesisKind::Migrate => {
                let f = DataFault::Migrate { finish };
                finish = !finish;
                f
            }
            _ => {
                let shapes: &[PartitionShape] = match side {
                    // The migrate stream draws only drains.
                    Side::Storage | Side::Migrate => &PartitionShape::STORAGE,
                    Side::Meta => &PartitionShape::META,
                };
                DataFault::Partition {
                    shape: *shapes
                        .choose(&mut rng)
                        .unwrap_or(&PartitionShape::PrimaryIsolated),
                }
            }
        };
        let pick = rng.gen();
        if t + len > cfg.duration {
            break;
        }
        out.push(Planned {
            start: t,
            end: t + len,
            side,
            fault,
            pick,
        });
        t += len + period(&mut rng);
    }
    if let Some(last) = out.last_mut() {
        last.end = cfg.duration.max(last.end);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nemesis::schedule::parse_kinds;

    fn cfg(seed: u64) -> DataScheduleConfig {
        DataScheduleConfig {
            seed,
            duration: Duration::from_secs(60),
            min_period: Duration::from_secs(3),
            max_period: Duration::from_secs(8),
            kinds: parse_kinds("partition,kill,pause,disk-loss").unwrap(),
            min_pause: Duration::from_secs(6),
            meta_faults: true,
        }
    }

    #[test]
    fn streams_never_overlap_themselves_and_pauses_outlast_the_grace_period() {
        for seed in 0..200 {
            let c = cfg(seed);
            let s = schedule(&c).unwrap();
            assert_eq!(s, schedule(&c).unwrap(), "reproducible");
            for side in [Side::Storage, Side::Meta] {
                let mine: Vec<&Planned> = s.iter().filter(|p| p.side == side).collect();
                assert!(!mine.is_empty(), "seed {seed}: no {side:?} fault");
                for w in mine.windows(2) {
                    assert!(w[0].end < w[1].start, "seed {seed}: overlap {w:?}");
                }
                for p in &mine {
                    assert!(p.start < p.end && p.end <= c.duration, "{p:?}");
                    if side == Side::Storage && p.fault == DataFault::Pause {
                        assert!(p.end - p.start >= c.min_pause, "{p:?}");
                    }
                    if let DataFault::Partition { shape } = p.fault {
                        let storage_shape = PartitionShape::STORAGE.contains(&shape);
                        assert_eq!(storage_shape, side == Side::Storage, "{p:?}");
                    }
                }
                assert_eq!(mine.last().unwrap().end, c.duration, "last fault held");
            }
        }
        assert_ne!(schedule(&cfg(1)).unwrap(), schedule(&cfg(2)).unwrap());
    }

    #[test]
    fn migrate_runs_in_its_own_stream_alternating_how_drains_end() {
        let mut drains = 0;
        let mut firsts = [0; 2];
        for seed in 0..200 {
            let without = cfg(seed);
            let mut with = cfg(seed);
            with.kinds.push(NemesisKind::Migrate);
            let s = schedule(&with).unwrap();
            // The storage and member streams are those drawn without migrate: seeds replay.
            let others: Vec<Planned> = s
                .iter()
                .copied()
                .filter(|p| p.side != Side::Migrate)
                .collect();
            assert_eq!(others, schedule(&without).unwrap(), "seed {seed}");
            let mine: Vec<&Planned> = s.iter().filter(|p| p.side == Side::Migrate).collect();
            assert!(!mine.is_empty(), "seed {seed}: no migrate fault");
            assert_eq!(mine.last().unwrap().end, with.duration, "last drain held");
            let finishes: Vec<bool> = mine
                .iter()
                .map(|p| match p.fault {
                    DataFault::Migrate { finish } => finish,
                    other => panic!("seed {seed}: {other:?} in the migrate stream"),
                })
                .collect();
            firsts[usize::from(finishes[0])] += 1;
            for w in finishes.windows(2) {
                assert_ne!(
                    w[0], w[1],
                    "seed {seed}: drains must alternate: {finishes:?}"
                );
            }
            for w in mine.windows(2) {
                assert!(
                    w[0].end < w[1].start,
                    "seed {seed}: one drain at a time {w:?}"
                );
            }
            drains += mine.len();
        }
        assert!(drains >= 200 * 4, "too few drains: {drains}");
        assert!(
            firsts[0] > 50 && firsts[1] > 50,
            "the seed picks the first: {firsts:?}"
        );
        let mut alone = cfg(7);
        alone.kinds = parse_kinds("migrate").unwrap();
        assert!(schedule(&alone)
            .unwrap()
            .iter()
            .all(|p| p.side == Side::Migrate && p.fault.kind_name() == "migrate"));
    }

    #[test]
    fn unsupported_families_and_bad_periods_are_refused() {
        let mut c = cfg(1);
        c.kinds = parse_kinds("kill,clock").unwrap();
        assert!(matches!(schedule(&c), Err(NemesisError::Invalid(_))));
        let mut c = cfg(1);
        c.min_period = Duration::ZERO;
        assert!(schedule(&c).is_err());
        let mut c = cfg(1);
        c.kinds.clear();
        assert!(schedule(&c).unwrap().is_empty());
        let mut c = cfg(1);
        c.meta_faults = false;
        assert!(schedule(&c)
            .unwrap()
            .iter()
            .all(|p| p.side == Side::Storage));
    }
}
