//! The cluster-level plan of a trace: who fails when and why, which episodes happen where,
//! and (harder traces) which healthy nodes are chronically noisy and how late failures are
//! recorded.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::sim::{Cohort, Drift, Episode, FaultKind, Gate, NodeProfile, NodeSim, Noise, Shape};
use super::COHORTS;
use super::{gauss, log_uniform, poisson, GeneratorConfig, DAY_MS, MINUTE_MS, YEAR_DAYS};
use crate::sample::{FailureRecord, HealthSample};

/// The cluster-level plan of a trace: who fails when and why, which episodes happen where.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// Settings used.
    pub config: GeneratorConfig,
    /// Node profiles.
    pub profiles: Vec<NodeProfile>,
    /// Failures within the trace.
    pub failures: Vec<FailureRecord>,
    /// Episodes per node (precursors, false precursors, rack events).
    pub episodes: Vec<Vec<Episode>>,
    /// Fleet drift.
    pub drift: Drift,
    /// Expected number of failures under the configured hazard.
    pub expected_failures: f64,
    /// Number of false-precursor episodes placed.
    pub false_precursors: usize,
}

/// The precursor of a failure at `fail_at` on a node of cohort `c`, in a harder trace: the
/// cohort decides the kind's odds, the lead and the curvature, and most precursors come and
/// go (gated) instead of ramping smoothly.
fn hard_precursor(rng: &mut StdRng, c: &Cohort, fail_at: i64) -> Episode {
    let total: f64 = c.precursor_odds.iter().sum();
    let mut u = rng.gen::<f64>() * total;
    let mut kind = FaultKind::PRECURSORS[0];
    for (k, &odds) in FaultKind::PRECURSORS.iter().zip(&c.precursor_odds) {
        kind = *k;
        if u < odds {
            break;
        }
        u -= odds;
    }
    let lead_min =
        (c.lead_median_h * 60.0 * (1.0 * gauss(rng)).exp()).clamp(10.0, 5.0 * 24.0 * 60.0);
    let gate = rng.gen_bool(c.p_intermittent).then(|| Gate {
        block_ms: (log_uniform(rng, 15.0, 90.0) * MINUTE_MS as f64) as i64,
        duty0: rng.gen_range(0.2..0.5),
        off_level: rng.gen_range(0.0..0.25),
        seed: rng.gen(),
    });
    Episode {
        kind,
        start_ms: fail_at - (lead_min * MINUTE_MS as f64) as i64,
        end_ms: fail_at,
        peak: 1.0,
        shape: Shape::Ramp {
            gamma: rng.gen_range(c.gamma.0..c.gamma.1),
        },
        gate,
    }
}

/// A benign episode in a harder trace: stronger than before (peaks overlap a real
/// precursor's middle), and of three shapes — a bump that recovers, a gated bump that comes
/// and goes, or a plateau that never recovers before the trace ends.
fn hard_false_precursor(rng: &mut StdRng, start: i64, end: i64) -> Episode {
    let kind = FaultKind::PRECURSORS[rng.gen_range(0..FaultKind::PRECURSORS.len())];
    let s = start + rng.gen_range(0..(end - start).max(1));
    let peak = rng.gen_range(0.1..0.7);
    let shape_draw: f64 = rng.gen();
    if shape_draw < 0.3 {
        let rise = (log_uniform(rng, 30.0, 12.0 * 60.0) * MINUTE_MS as f64) as i64;
        return Episode {
            kind,
            start_ms: s,
            end_ms: end,
            peak: peak * 0.6,
            shape: Shape::Plateau { top_ms: s + rise },
            gate: None,
        };
    }
    let dur = (log_uniform(rng, 30.0, 36.0 * 60.0) * MINUTE_MS as f64) as i64;
    let top = s + (dur as f64 * rng.gen_range(0.3..0.9)) as i64;
    let gate = (shape_draw < 0.65).then(|| Gate {
        block_ms: (log_uniform(rng, 15.0, 90.0) * MINUTE_MS as f64) as i64,
        duty0: rng.gen_range(0.3..0.8),
        off_level: rng.gen_range(0.0..0.25),
        seed: rng.gen(),
    });
    Episode {
        kind,
        start_ms: s,
        end_ms: s + dur,
        peak,
        shape: Shape::Bump { top_ms: top },
        gate,
    }
}

/// Chronic benign noise of a node in a harder trace (about one node in eight).
fn hard_noise(rng: &mut StdRng) -> Option<Noise> {
    if !rng.gen_bool(0.12) {
        return None;
    }
    Some(match rng.gen_range(0..4) {
        0 => Noise::ErrorProne(rng.gen_range(0.05..0.3)),
        1 => Noise::FlakyNetwork(rng.gen_range(0.1..0.5)),
        2 => Noise::HotRunning(rng.gen_range(6.0..12.0)),
        _ => Noise::JitteryDisk(rng.gen_range(0.35..0.6)),
    })
}

/// How long after a death the failure is recorded (harder traces): half are caught by the
/// heartbeat within minutes, half by an operator hours later.
fn label_delay_ms(rng: &mut StdRng) -> i64 {
    let minutes = if rng.gen_bool(0.5) {
        rng.gen_range(2.0..20.0)
    } else {
        log_uniform(rng, 30.0, 12.0 * 60.0)
    };
    (minutes * MINUTE_MS as f64) as i64
}

impl Plan {
    /// Draws the plan from the master seed. The standard trace's draws are exactly those
    /// of earlier versions (its traces reproduce); the harder trace draws its extras from
    /// a second stream.
    pub fn new(config: &GeneratorConfig) -> Plan {
        let mut rng = StdRng::seed_from_u64(config.seed);
        let mut hard_rng = StdRng::seed_from_u64(config.seed ^ 0x4A5D_0000_0000_0001);
        let duration_ms = (config.days * DAY_MS as f64) as i64;
        let start = config.start_ms;
        let end = start + duration_ms;
        let mut profiles: Vec<NodeProfile> = (0..config.nodes)
            .map(|i| {
                NodeSim::random_profile(format!("s-{i:04}"), i / config.rack_size.max(1), &mut rng)
            })
            .collect();
        let mut episodes: Vec<Vec<Episode>> = vec![Vec::new(); config.nodes];
        let mut failures = Vec::new();
        let mut expected_failures = 0.0;
        let years = config.days / YEAR_DAYS;
        for (i, p) in profiles.iter_mut().enumerate() {
            // Weibull lifetime conditioned on the node's current age; the hazard boost
            // multiplies cumulative hazard. Scale chosen so P(fail within a year) = AFR at age 0.
            let c = &COHORTS[p.cohort];
            let afr = (config.afr * c.afr_mult).clamp(1e-6, 0.99);
            let k = c.weibull_shape;
            let scale = 1.0 / (-(1.0 - afr).ln()).powf(1.0 / k);
            let age: f64 = rng.gen_range(0.0..4.0);
            let h0 = (age / scale).powf(k);
            let h1 = ((age + years) / scale).powf(k);
            expected_failures += 1.0 - (-(h1 - h0) * config.failure_boost).exp();
            let u: f64 = rng.gen::<f64>().max(1e-300);
            let ttf_years = scale * (h0 - u.ln() / config.failure_boost).powf(1.0 / k) - age;
            let fail_at = start + (ttf_years * YEAR_DAYS * DAY_MS as f64) as i64;
            if config.hard {
                // Independent of failing: a noisy node dies at the fleet's rate, so noise
                // teaches nothing about who fails.
                p.noise = hard_noise(&mut hard_rng);
            }
            if fail_at >= end {
                continue;
            }
            let sudden = rng.gen_bool(config.sudden_fraction.clamp(0.0, 1.0));
            let (cause, onset) = if sudden {
                (FaultKind::SuddenDeath, None)
            } else if config.hard {
                let ep = hard_precursor(&mut hard_rng, c, fail_at);
                let (kind, onset) = (ep.kind, ep.start_ms);
                episodes[i].push(ep);
                (kind, Some(onset))
            } else {
                let kind = FaultKind::PRECURSORS[rng.gen_range(0..FaultKind::PRECURSORS.len())];
                // Lead times: log-normal, median 8 h, clamped to 10 min .. 5 days; about 4% of
                // precursors give under an hour of warning, about 10% over two days.
                let lead_min =
                    (8.0 * 60.0 * (1.2 * gauss(&mut rng)).exp()).clamp(10.0, 5.0 * 24.0 * 60.0);
                let onset = fail_at - (lead_min * MINUTE_MS as f64) as i64;
                episodes[i].push(Episode {
                    kind,
                    start_ms: onset,
                    end_ms: fail_at,
                    peak: 1.0,
                    shape: Shape::Ramp {
                        gamma: rng.gen_range(0.35..1.0),
                    },
                    gate: None,
                });
                (kind, Some(onset))
            };
            let recorded = if config.hard {
                fail_at + label_delay_ms(&mut hard_rng)
            } else {
                fail_at
            };
            failures.push(FailureRecord {
                node: p.name.clone(),
                failed_at_ms: recorded,
                cause: Some(cause.name().to_string()),
                precursor_onset_ms: onset,
                died_at_ms: config.hard.then_some(fail_at),
            });
        }

        // False precursors: same kinds, weaker, benign.
        let lambda = config.false_precursor_ratio * expected_failures;
        let false_precursors = if lambda > 0.0 {
            poisson(&mut rng, lambda)
        } else {
            0
        } as usize;
        for _ in 0..false_precursors {
            let i = rng.gen_range(0..config.nodes.max(1));
            if i >= config.nodes {
                break;
            }
            if config.hard {
                episodes[i].push(hard_false_precursor(&mut hard_rng, start, end));
                continue;
            }
            let dur = (log_uniform(&mut rng, 30.0, 24.0 * 60.0) * MINUTE_MS as f64) as i64;
            let s = start + rng.gen_range(0..duration_ms.max(1));
            let top = s + (dur as f64 * rng.gen_range(0.3..0.8)) as i64;
            episodes[i].push(Episode {
                kind: FaultKind::PRECURSORS[rng.gen_range(0..FaultKind::PRECURSORS.len())],
                start_ms: s,
                end_ms: s + dur,
                peak: rng.gen_range(0.1..0.5),
                shape: Shape::Bump { top_ms: top },
                gate: None,
            });
        }

        // Correlated rack events: every node of the rack sees the same episode.
        let racks = config.nodes.div_ceil(config.rack_size.max(1));
        for rack in 0..racks {
            let n = poisson(&mut rng, config.rack_event_rate_per_day * config.days);
            for _ in 0..n {
                let kind = if rng.gen_bool(0.5) {
                    FaultKind::RackCooling
                } else {
                    FaultKind::RackNetwork
                };
                let dur = (log_uniform(&mut rng, 20.0, 360.0) * MINUTE_MS as f64) as i64;
                let s = start + rng.gen_range(0..duration_ms.max(1));
                let ep = Episode {
                    kind,
                    start_ms: s,
                    end_ms: s + dur,
                    peak: rng.gen_range(0.3..1.0),
                    shape: Shape::Bump {
                        top_ms: s + dur / 3,
                    },
                    gate: None,
                };
                for (i, p) in profiles.iter().enumerate() {
                    if p.rack == rack {
                        episodes[i].push(ep.clone());
                    }
                }
            }
        }

        let drift = Drift {
            at_ms: start + (duration_ms as f64 * rng.gen_range(0.45..0.65)) as i64,
            load_mult: rng.gen_range(0.85..1.2),
            latency_mult: [
                rng.gen_range(0.8..1.3),
                rng.gen_range(0.8..1.3),
                rng.gen_range(0.8..1.3),
                rng.gen_range(0.8..1.3),
            ],
        };
        failures.sort_by_key(|f| f.failed_at_ms);
        Plan {
            config: config.clone(),
            profiles,
            failures,
            episodes,
            drift,
            expected_failures,
            false_precursors,
        }
    }

    /// All samples of node `i` (dead nodes stop reporting at their death; gaps, drops and
    /// jitter applied).
    pub fn node_samples(&self, i: usize) -> Vec<HealthSample> {
        let cfg = &self.config;
        let seed = cfg.seed ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut sim = NodeSim::new(self.profiles[i].clone(), seed);
        sim.episodes = self.episodes[i].clone();
        sim.drift = Some(self.drift.clone());
        let mut rng = StdRng::seed_from_u64(seed.rotate_left(17) ^ 0xA5A5);
        let end = cfg.start_ms + (cfg.days * DAY_MS as f64) as i64;
        let end = self
            .failures
            .iter()
            .find(|f| f.node == self.profiles[i].name)
            .map_or(end, |f| f.truth_ms().min(end));
        let mut gaps = Vec::new();
        for _ in 0..poisson(&mut rng, cfg.gap_rate_per_day * cfg.days) {
            let s = cfg.start_ms + rng.gen_range(0..(end - cfg.start_ms).max(1));
            let len = (rng.gen_range(5.0..90.0) * MINUTE_MS as f64) as i64;
            gaps.push((s, s + len));
        }
        let jitter_sd = cfg.jitter_frac * cfg.interval_ms as f64;
        let max_jitter = cfg.interval_ms as f64 * 0.4;
        let mut out = Vec::with_capacity(((end - cfg.start_ms) / cfg.interval_ms.max(1)) as usize);
        let mut t = cfg.start_ms;
        while t < end {
            let ts = t + (jitter_sd * gauss(&mut rng)).clamp(-max_jitter, max_jitter) as i64;
            // The simulator advances even when a sample is lost, so state stays continuous.
            let s = sim.sample(ts, cfg.interval_ms);
            let lost = rng.gen_bool(cfg.missing_rate.clamp(0.0, 1.0))
                || gaps.iter().any(|&(a, b)| ts >= a && ts < b);
            if !lost && ts < end {
                out.push(s);
            }
            t += cfg.interval_ms;
        }
        out
    }
}
