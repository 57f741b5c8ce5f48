//! A simulated health source for tests and demos: replays a recorded trace, or synthesises a
//! healthy node (the generator's physics) into which faults can be injected while it runs.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use rand::rngs::StdRng;
use rand::SeedableRng;

use super::{AgentError, Collector};
use crate::generate::{Episode, FaultKind, NodeSim, Shape};
use crate::sample::HealthSample;

enum Mode {
    Replay(VecDeque<HealthSample>),
    Synthetic(Box<NodeSim>),
}

/// Injects faults into a running [`SimulatedSource`] (cheap to clone, share with a test or a
/// demo controller).
#[derive(Debug, Clone, Default)]
pub struct FaultInjector {
    faults: Arc<Mutex<Vec<Episode>>>,
    dead: Arc<AtomicBool>,
}

impl FaultInjector {
    /// Starts `kind` at `now_ms`, ramping to full severity over `ramp_ms` and staying there
    /// (a fail-slow disk, error burst, thermal runaway, PSU flapping or packet loss). A
    /// `SuddenDeath` kills the node at once: it produces no more samples.
    pub fn inject(&self, kind: FaultKind, now_ms: i64, ramp_ms: i64) {
        if kind == FaultKind::SuddenDeath {
            self.dead.store(true, Ordering::SeqCst);
            return;
        }
        let mut f = self.faults.lock().unwrap_or_else(PoisonError::into_inner);
        f.push(Episode {
            kind,
            start_ms: now_ms,
            end_ms: now_ms.saturating_add(ramp_ms.max(1)),
            peak: 1.0,
            shape: Shape::Ramp { gamma: 1.0 },
            gate: None,
        });
    }

    /// Removes every injected fault (the node recovers; a dead node stays dead).
    pub fn clear(&self) {
        self.faults
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// Whether a sudden death was injected.
    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::SeqCst)
    }
}

/// A [`Collector`] backed by a replay or a synthetic node.
pub struct SimulatedSource {
    mode: Mode,
    interval_ms: i64,
    injector: FaultInjector,
}

impl SimulatedSource {
    /// Replays recorded samples in order, re-stamped with the agent's clock; ends with
    /// [`AgentError::Unavailable`] when the recording is exhausted.
    pub fn replay(samples: Vec<HealthSample>, interval_ms: i64) -> Self {
        SimulatedSource {
            mode: Mode::Replay(samples.into()),
            interval_ms,
            injector: FaultInjector::default(),
        }
    }

    /// A healthy synthetic node with a random profile drawn from `seed`.
    pub fn healthy(node: &str, seed: u64, interval_ms: i64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let profile = NodeSim::random_profile(node.to_string(), 0, &mut rng);
        SimulatedSource {
            mode: Mode::Synthetic(Box::new(NodeSim::new(profile, seed))),
            interval_ms,
            injector: FaultInjector::default(),
        }
    }

    /// The handle that injects faults into this source.
    pub fn injector(&self) -> FaultInjector {
        self.injector.clone()
    }
}

impl Collector for SimulatedSource {
    fn collect(&mut self, now_ms: i64) -> Result<Option<HealthSample>, AgentError> {
        if self.injector.is_dead() {
            return Err(AgentError::Unavailable("simulated node died".into()));
        }
        match &mut self.mode {
            Mode::Replay(queue) => {
                let mut s = queue
                    .pop_front()
                    .ok_or_else(|| AgentError::Unavailable("replay exhausted".into()))?;
                s.ts_ms = now_ms;
                Ok(Some(s))
            }
            Mode::Synthetic(sim) => {
                sim.episodes = self
                    .injector
                    .faults
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                Ok(Some(sim.sample(now_ms, self.interval_ms)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn injected_faults_show_up_and_clear() {
        let mut src = SimulatedSource::healthy("n", 3, 60_000);
        let inj = src.injector();
        let t0 = 1_763_942_400_000i64;
        let mean = |src: &mut SimulatedSource, from: i64, f: &dyn Fn(&HealthSample) -> f64| {
            (0..30)
                .map(|i| f(&src.collect(from + i * 60_000).unwrap().unwrap()))
                .sum::<f64>()
                / 30.0
        };
        let loss0 = mean(&mut src, t0, &|s| s.net_loss_pct.unwrap());
        inj.inject(FaultKind::PacketLoss, t0 + 3_600_000, 600_000);
        let loss1 = mean(&mut src, t0 + 4_000_000, &|s| s.net_loss_pct.unwrap());
        assert!(loss1 > loss0 + 2.0, "{loss0} -> {loss1}");
        inj.inject(FaultKind::ErrorBurst, t0 + 5_000_000, 60_000);
        let errs = mean(&mut src, t0 + 5_100_000, &|s| {
            s.err_log_count.unwrap() as f64
        });
        assert!(errs > 1.0, "{errs}");
        inj.clear();
        let loss2 = mean(&mut src, t0 + 8_000_000, &|s| s.net_loss_pct.unwrap());
        assert!(loss2 < 0.5, "{loss2}");
        inj.inject(FaultKind::SuddenDeath, 0, 0);
        assert!(matches!(src.collect(t0), Err(AgentError::Unavailable(_))));
    }

    #[test]
    fn replay_restamps_and_ends() {
        let mut gen = SimulatedSource::healthy("r", 1, 5_000);
        let rec: Vec<_> = (0..3)
            .map(|i| gen.collect(i * 5_000).unwrap().unwrap())
            .collect();
        let mut src = SimulatedSource::replay(rec.clone(), 5_000);
        let s = src.collect(42).unwrap().unwrap();
        assert_eq!(s.ts_ms, 42);
        assert_eq!(s.cpu_util, rec[0].cpu_util);
        src.collect(43).unwrap();
        src.collect(44).unwrap();
        assert!(src.collect(45).is_err());
    }
}
