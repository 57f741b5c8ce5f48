use super::*;
use crate::agent::simulated::SimulatedSource;
use crate::agent::Collector;
use crate::generate::FaultKind;

/// The same simulated node sampled every 5 s and every minute (an exporter averaging each
/// minute's levels and summing its counts, as the agent's 5 s counts would be summed)
/// gets the same risk from the shipped model: features read per-minute rates on a
/// one-minute grid whatever the sampling interval. Tolerance: 0.01 in probability (the
/// two series differ only by float rounding of the minute means).
#[test]
fn risk_does_not_depend_on_the_sampling_interval() {
    let crate_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
    let model = Model::load(&crate_dir.join("models/default.model")).unwrap();
    let mut src = SimulatedSource::healthy("s-5s", 11, 5_000);
    let injector = src.injector();
    let t0 = 1_763_942_400_000i64;
    let sick_from = t0 + 20 * 3_600_000;
    injector.inject(FaultKind::ErrorBurst, sick_from, 2 * 3_600_000);
    injector.inject(FaultKind::FailSlowDisk, sick_from, 2 * 3_600_000);
    let fine: Vec<HealthSample> = (0..24 * 720)
        .map(|i| src.collect(t0 + i * 5_000).unwrap().unwrap())
        .collect();
    let fine_series = NodeSeries::from_samples(&fine);
    // The minute view: means of levels, sums of counts, stamped at each minute's last
    // sample.
    let mut coarse = NodeSeries {
        node: "s-5s".into(),
        ..Default::default()
    };
    for minute in fine_series.ts.chunks(12).zip(fine_series.values.chunks(12)) {
        let (ts, rows) = minute;
        let mut row = [0.0f32; N_METRICS];
        for m in crate::sample::Metric::ALL {
            let vals: Vec<f64> = rows
                .iter()
                .map(|r| r[m.index()] as f64)
                .filter(|v| !v.is_nan())
                .collect();
            row[m.index()] = if vals.is_empty() {
                f32::NAN
            } else if m.is_count() {
                vals.iter().sum::<f64>() as f32
            } else {
                (vals.iter().sum::<f64>() / vals.len() as f64) as f32
            };
        }
        coarse.ts.push(*ts.last().unwrap());
        coarse.values.push(row);
    }
    for hours in [12i64, 21, 22] {
        let at = t0 + hours * 3_600_000 - 5_000;
        let a = model.score_series(&fine_series, at, 0).unwrap();
        let b = model.score_series(&coarse, at, 0).unwrap();
        assert!(
            (a.probability - b.probability).abs() < 0.01,
            "at {hours} h: 5 s {} vs 1 min {}",
            a.probability,
            b.probability
        );
    }
    let sick = model
        .score_series(&fine_series, t0 + 22 * 3_600_000 - 5_000, 0)
        .unwrap();
    let calm = model
        .score_series(&fine_series, t0 + 12 * 3_600_000 - 5_000, 0)
        .unwrap();
    assert!(sick.probability > calm.probability, "the fault still shows");
}

/// The shipped model must load with this build and score an agent's history; a feature or
/// schema change without retraining `models/default.model` fails here.
#[test]
fn shipped_default_model_loads_and_scores() {
    // The crate directory at run time: a target directory shared between clones can run
    // a test binary built in another clone, whose compile-time path may be gone.
    let crate_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
    let path = crate_dir.join("models/default.model");
    let model = Model::load(&path).unwrap();
    assert!(std::fs::metadata(&path).unwrap().len() < 5 * 1024 * 1024);
    let mut src = SimulatedSource::healthy("s-demo", 4, 60_000);
    let injector = src.injector();
    let t0 = 1_763_942_400_000i64;
    let mut history: Vec<HealthSample> = (0..24 * 60)
        .map(|i| src.collect(t0 + i * 60_000).unwrap().unwrap())
        .collect();
    let healthy = model.score_samples(&history).unwrap();
    assert_eq!(healthy.reasons.len(), 3);
    let sick_from = t0 + 24 * 3_600_000;
    injector.inject(FaultKind::ErrorBurst, sick_from, 3_600_000);
    injector.inject(FaultKind::FailSlowDisk, sick_from, 3_600_000);
    history.extend((0..180).map(|i| src.collect(sick_from + i * 60_000).unwrap().unwrap()));
    let sick = model.score_samples(&history).unwrap();
    assert!(
        sick.probability > 5.0 * healthy.probability && sick.probability > model.alert.threshold,
        "healthy {} sick {}",
        healthy.probability,
        sick.probability
    );
}
