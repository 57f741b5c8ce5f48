//! Synthetic traces: a node simulator ([`sim`]) and a cluster-level failure plan ([`plan`]).
//!
//! The model is documented in `predictor/README.md` ("Synthetic trace model"); keep the two in
//! step. Every node draws from its own RNG stream derived from `(seed, node index)`, so a trace
//! is bit-for-bit reproducible whatever the number of threads.

mod plan;
mod sim;

use std::path::Path;

use indicatif::ProgressBar;
use rand::Rng;
use rand_distr::{Distribution, Poisson, StandardNormal};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

pub use plan::Plan;
pub use sim::{
    Cohort, Drift, Episode, FaultKind, Gate, NodeProfile, NodeSim, Noise, Shape, COHORTS,
};

use crate::trace::{write_failures, SampleWriter, TraceError};

const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 60 * MINUTE_MS;
const DAY_MS: i64 = 24 * HOUR_MS;
const YEAR_DAYS: f64 = 365.25;

/// Settings of one generated trace. Defaults are the natural-rate cluster of the README.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GeneratorConfig {
    /// Number of storage nodes.
    pub nodes: usize,
    /// Trace length in days.
    pub days: f64,
    /// Nominal sample interval, ms.
    pub interval_ms: i64,
    /// Master seed; every random draw derives from it.
    pub seed: u64,
    /// Trace start, ms since the epoch (a Monday 00:00 UTC by default).
    pub start_ms: i64,
    /// Fleet-average annual failure rate at natural rate (cohorts scale it).
    pub afr: f64,
    /// Multiplies the failure hazard, to make failure-rich training / evaluation traces.
    pub failure_boost: f64,
    /// Fraction of failures with no precursor at all.
    pub sudden_fraction: f64,
    /// False precursors (healthy, recovering episodes) per expected failure.
    pub false_precursor_ratio: f64,
    /// Nodes per rack; racks share correlated events.
    pub rack_size: usize,
    /// Correlated rack events per rack per day.
    pub rack_event_rate_per_day: f64,
    /// Probability that any one sample is lost.
    pub missing_rate: f64,
    /// Agent outages (gaps of 5-90 min) per node per day.
    pub gap_rate_per_day: f64,
    /// Timestamp jitter, as a fraction of the interval (standard deviation).
    pub jitter_frac: f64,
    /// Nodes per output file.
    pub nodes_per_file: usize,
    /// The harder fleet (see the README's "Harder traces").
    #[serde(default)]
    pub hard: bool,
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        GeneratorConfig {
            nodes: 100,
            days: 30.0,
            interval_ms: MINUTE_MS,
            seed: 1,
            // 2025-11-24 00:00 UTC, a Monday.
            start_ms: 1_763_942_400_000,
            afr: 0.05,
            failure_boost: 1.0,
            sudden_fraction: 0.4,
            false_precursor_ratio: 4.0,
            rack_size: 20,
            rack_event_rate_per_day: 1.0 / 14.0,
            missing_rate: 0.003,
            gap_rate_per_day: 1.0 / 7.0,
            jitter_frac: 0.02,
            nodes_per_file: 25,
            hard: false,
        }
    }
}

fn gauss(rng: &mut impl Rng) -> f64 {
    rng.sample(StandardNormal)
}

fn poisson(rng: &mut impl Rng, lambda: f64) -> u64 {
    if lambda <= 0.0 {
        return 0;
    }
    match Poisson::new(lambda) {
        Ok(p) => p.sample(rng) as u64,
        Err(_) => 0,
    }
}

fn round(v: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (v * f).round() / f
}

/// Log-uniform draw in `[lo, hi]`: lead times and durations span orders of magnitude.
fn log_uniform(rng: &mut impl Rng, lo: f64, hi: f64) -> f64 {
    (lo.ln() + rng.gen::<f64>() * (hi.ln() - lo.ln())).exp()
}

/// What [`generate`] wrote.
#[derive(Debug, Clone, Serialize)]
pub struct GenerateSummary {
    /// Samples written.
    pub samples: usize,
    /// Failures in the trace.
    pub failures: usize,
    /// Of which with a precursor.
    pub precursor_failures: usize,
    /// False precursor episodes placed.
    pub false_precursors: usize,
    /// Sample files written.
    pub files: usize,
}

/// Generates a trace directory: sample files of `nodes_per_file` nodes each (gzip), then
/// `failures.jsonl` and `plan.json` (the ground truth: profiles, episodes, drift).
pub fn generate(
    config: &GeneratorConfig,
    out: &Path,
    progress: &ProgressBar,
) -> Result<GenerateSummary, TraceError> {
    let io = |e| TraceError::Io {
        path: out.to_path_buf(),
        source: e,
    };
    std::fs::create_dir_all(out).map_err(io)?;
    let plan = Plan::new(config);
    let per_file = config.nodes_per_file.max(1);
    let chunks: Vec<(usize, std::ops::Range<usize>)> = (0..config.nodes)
        .step_by(per_file)
        .enumerate()
        .map(|(f, lo)| (f, lo..(lo + per_file).min(config.nodes)))
        .collect();
    progress.set_length(config.nodes as u64);
    let counts: Vec<usize> = chunks
        .par_iter()
        .with_max_len(1)
        .map(|(f, range)| -> Result<usize, TraceError> {
            let mut w = SampleWriter::create(&out.join(format!("samples-{f:04}.jsonl.gz")))?;
            let mut n = 0;
            for i in range.clone() {
                for s in plan.node_samples(i) {
                    w.write(&s)?;
                    n += 1;
                }
                progress.inc(1);
            }
            w.finish()?;
            Ok(n)
        })
        .collect::<Result<_, _>>()?;
    write_failures(out, &plan.failures)?;
    let plan_path = out.join("plan.json");
    let json = serde_json::to_vec_pretty(&plan).map_err(|e| TraceError::Io {
        path: plan_path.clone(),
        source: std::io::Error::other(e),
    })?;
    std::fs::write(&plan_path, json).map_err(|e| TraceError::Io {
        path: plan_path.clone(),
        source: e,
    })?;
    Ok(GenerateSummary {
        samples: counts.iter().sum(),
        failures: plan.failures.len(),
        precursor_failures: plan
            .failures
            .iter()
            .filter(|f| f.has_precursor() == Some(true))
            .count(),
        false_precursors: plan.false_precursors,
        files: chunks.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::Trace;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn small() -> GeneratorConfig {
        GeneratorConfig {
            nodes: 12,
            days: 3.0,
            interval_ms: 5 * MINUTE_MS,
            seed: 7,
            failure_boost: 400.0,
            nodes_per_file: 5,
            ..Default::default()
        }
    }

    #[test]
    fn generation_is_deterministic_and_readable() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let sa = generate(&small(), a.path(), &ProgressBar::hidden()).unwrap();
        generate(&small(), b.path(), &ProgressBar::hidden()).unwrap();
        let ta = Trace::read_dir(a.path(), &ProgressBar::hidden()).unwrap();
        let tb = Trace::read_dir(b.path(), &ProgressBar::hidden()).unwrap();
        assert_eq!(ta.sample_count(), sa.samples);
        assert_eq!(ta.nodes.len(), 12);
        assert_eq!(sa.files, 3);
        assert!(sa.failures > 0, "boosted hazard must produce failures");
        for (x, y) in ta.nodes.iter().zip(&tb.nodes) {
            assert_eq!(x.ts, y.ts);
            assert_eq!(x.values.len(), y.values.len());
        }
        // Dead nodes stop reporting.
        for f in ta.failures.values() {
            let n = ta.nodes.iter().find(|n| n.node == f.node).unwrap();
            assert!(n.ts.last().is_none_or(|&t| t < f.failed_at_ms));
        }
    }

    #[test]
    fn precursor_raises_latency_and_bump_recovers() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut p = NodeSim::random_profile("n".into(), 0, &mut rng);
        p.cohort = 1;
        let mut sim = NodeSim::new(p, 5);
        let t0 = 1_763_942_400_000;
        sim.episodes.push(Episode {
            kind: FaultKind::FailSlowDisk,
            start_ms: t0 + DAY_MS,
            end_ms: t0 + 2 * DAY_MS,
            peak: 1.0,
            shape: Shape::Ramp { gamma: 1.0 },
            gate: None,
        });
        let mean_lat = |sim: &mut NodeSim, from: i64| {
            (0..60)
                .map(|k| {
                    sim.sample(from + k * MINUTE_MS, MINUTE_MS)
                        .disk_read_lat_ms
                        .unwrap_or(0.0)
                })
                .sum::<f64>()
                / 60.0
        };
        let healthy = mean_lat(&mut sim, t0 + 14 * HOUR_MS);
        let sick = mean_lat(&mut sim, t0 + DAY_MS + 23 * HOUR_MS);
        assert!(sick > 3.0 * healthy, "healthy {healthy} sick {sick}");
        let bump = Episode {
            kind: FaultKind::PacketLoss,
            start_ms: 0,
            end_ms: 100,
            peak: 0.5,
            shape: Shape::Bump { top_ms: 50 },
            gate: None,
        };
        assert_eq!(bump.severity(50), 0.5);
        assert_eq!(bump.severity(100), 0.0);
    }

    /// The harder trace: failures recorded after the node died (it stops reporting at its
    /// death), chronically noisy nodes, intermittent and cohort-shaped precursors, benign
    /// plateaus that never recover.
    #[test]
    fn harder_traces_delay_labels_and_add_noise() {
        let cfg = GeneratorConfig {
            nodes: 200,
            days: 4.0,
            interval_ms: 10 * MINUTE_MS,
            seed: 9,
            failure_boost: 300.0,
            hard: true,
            ..Default::default()
        };
        let plan = Plan::new(&cfg);
        assert!(plan.failures.len() >= 10, "{}", plan.failures.len());
        for f in &plan.failures {
            let died = f.died_at_ms.expect("the harder trace records the death");
            assert!(f.failed_at_ms > died && f.failed_at_ms - died <= 12 * HOUR_MS + 1);
            assert_eq!(f.truth_ms(), died);
        }
        let noisy = plan.profiles.iter().filter(|p| p.noise.is_some()).count();
        assert!((8..50).contains(&noisy), "{noisy} noisy nodes");
        let all: Vec<&Episode> = plan.episodes.iter().flatten().collect();
        assert!(all
            .iter()
            .any(|e| matches!(e.shape, Shape::Ramp { .. }) && e.gate.is_some()));
        assert!(all.iter().any(|e| matches!(e.shape, Shape::Plateau { .. })));
        // A dead node stops at its death, not at the recorded failure.
        let f = &plan.failures[0];
        let i = plan.profiles.iter().position(|p| p.name == f.node).unwrap();
        let samples = plan.node_samples(i);
        assert!(samples.last().is_none_or(|s| s.ts_ms < f.truth_ms()));
        // The standard trace has none of it.
        let plain = Plan::new(&GeneratorConfig { hard: false, ..cfg });
        assert!(plain.failures.iter().all(|f| f.died_at_ms.is_none()));
        assert!(plain.profiles.iter().all(|p| p.noise.is_none()));
    }

    /// A gated ramp comes and goes early on and is on for good near the failure; a plateau
    /// never recovers.
    #[test]
    fn gates_open_as_a_ramp_progresses_and_plateaus_stay() {
        let ramp = Episode {
            kind: FaultKind::ErrorBurst,
            start_ms: 0,
            end_ms: 100 * HOUR_MS,
            peak: 1.0,
            shape: Shape::Ramp { gamma: 0.5 },
            gate: Some(Gate {
                block_ms: 30 * MINUTE_MS,
                duty0: 0.3,
                off_level: 0.0,
                seed: 4,
            }),
        };
        let on_fraction = |from: i64, to: i64| {
            let blocks: Vec<i64> = (from..to).step_by(30 * MINUTE_MS as usize).collect();
            blocks.iter().filter(|&&t| ramp.severity(t) > 0.0).count() as f64 / blocks.len() as f64
        };
        let early = on_fraction(HOUR_MS, 30 * HOUR_MS);
        let late = on_fraction(90 * HOUR_MS, 100 * HOUR_MS);
        assert!(early < 0.7 && late > 0.85, "early {early} late {late}");
        assert_eq!(
            ramp.severity(5 * HOUR_MS),
            ramp.severity(5 * HOUR_MS),
            "pure in time"
        );
        let plateau = Episode {
            kind: FaultKind::PacketLoss,
            start_ms: 0,
            end_ms: 1000,
            peak: 0.4,
            shape: Shape::Plateau { top_ms: 100 },
            gate: None,
        };
        assert_eq!(plateau.severity(50), 0.2);
        assert_eq!(plateau.severity(900), 0.4);
        assert_eq!(plateau.severity(1000), 0.0);
    }
}
