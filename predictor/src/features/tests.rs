//! Tests of the window features.

use super::*;
use crate::sample::N_METRICS;

fn series(n: usize, step: i64, f: impl Fn(usize) -> [f32; N_METRICS]) -> NodeSeries {
    NodeSeries {
        node: "n".into(),
        ts: (0..n).map(|i| i as i64 * step).collect(),
        values: (0..n).map(f).collect(),
        ..Default::default()
    }
}

fn base(i: usize) -> [f32; N_METRICS] {
    let mut r = [0.0; N_METRICS];
    r[metric::READ_LAT] = 2.0;
    r[metric::DISK_UTIL] = 0.5;
    r[metric::ERR_LOG] = (i % 2) as f32;
    r[metric::TEMP] = f32::NAN;
    r[metric::PSU] = if matches!(i % 10, 0) { 0.0 } else { 1.0 };
    r
}

#[test]
fn features_are_interval_independent_rates() {
    let spec = WindowSpec::default();
    let names = feature_names();
    // 1-minute and 5-second sampling of the same behaviour give the same rates.
    let a = series(600, MINUTE_MS, base);
    let b = series(7200, 5_000, |i| {
        let mut r = base(i);
        r[metric::ERR_LOG] = if i % 24 == 0 { 1.0 } else { 0.0 };
        r
    });
    // And a 10-minute exporter reporting 5 errors per sample.
    let c = series(60, 10 * MINUTE_MS, |i| {
        let mut r = base(i);
        r[metric::ERR_LOG] = 5.0;
        r
    });
    let (mut fa, mut fb, mut fc) = (Vec::new(), Vec::new(), Vec::new());
    let (ra, rb, rc) = (
        a.resample(MINUTE_MS),
        b.resample(MINUTE_MS),
        c.resample(MINUTE_MS),
    );
    assert!(
        matches!(ra, std::borrow::Cow::Borrowed(_)),
        "1-minute data is read as is"
    );
    assert_eq!(
        rb.ts.len(),
        600,
        "5-second samples fall into 1-minute buckets"
    );
    WindowFeatures { series: &ra, spec }.extract(599 * MINUTE_MS, &mut fa);
    WindowFeatures { series: &rb, spec }.extract(7199 * 5_000, &mut fb);
    WindowFeatures { series: &rc, spec }.extract(59 * 10 * MINUTE_MS, &mut fc);
    assert_eq!(fa.len(), names.len());
    let rate = names.iter().position(|n| n == "err_log_rate_1h").unwrap();
    assert!((fa[rate] - 0.5).abs() < 0.02, "{}", fa[rate]);
    assert!((fb[rate] - 0.5).abs() < 0.02, "{}", fb[rate]);
    assert!((fc[rate] - 0.5).abs() < 0.02, "{}", fc[rate]);
    // The busiest minute of the hour: one error in a 5-second sample is 1 per minute in
    // its minute, not 12.
    let max = names
        .iter()
        .position(|n| n == "err_log_max_rate_1h")
        .unwrap();
    assert_eq!((fa[max], fb[max]), (1.0, 1.0));
    let lat = names
        .iter()
        .position(|n| n == "read_lat_norm_change_1h_base")
        .unwrap();
    assert!((fa[lat] - 1.0).abs() < 1e-6, "flat latency has no change");
    let temp = names.iter().position(|n| n == "temp_z_1h_base").unwrap();
    assert!(fa[temp].is_nan(), "absent sensor stays missing");
    let flaps = names.iter().position(|n| n == "psu_flaps_1h").unwrap();
    assert_eq!(fa[flaps], 11.0);
}

#[test]
fn slope_sees_a_ramp() {
    let spec = WindowSpec::default();
    let s = series(400, MINUTE_MS, |i| {
        let mut r = base(i);
        r[metric::TEMP] = 40.0 + i as f32 / 60.0; // +1 °C per hour
        r
    });
    let mut f = Vec::new();
    WindowFeatures { series: &s, spec }.extract(399 * MINUTE_MS, &mut f);
    let names = feature_names();
    let slope = names.iter().position(|n| n == "temp_rel_slope_6h").unwrap();
    let mean_24h = 40.0 + 399.0 / 120.0; // mean of the whole ramp
    assert!((f[slope] * mean_24h - 1.0).abs() < 1e-3, "{}", f[slope]);
}

#[test]
fn trajectory_dates_episodes_and_sees_recovery() {
    let spec = WindowSpec::default();
    let names = feature_names();
    let at = |f: &[f64], name: &str| f[names.iter().position(|n| n == name).unwrap()];
    let n = 73 * 60;
    let t = (n as i64 - 1) * MINUTE_MS;
    // Temperature follows a daily CPU cycle; kernel errors run at 1/min for the last
    // 5 hours (a rising episode) or from 6 h to 3 h ago (one that has receded).
    let make = |errs: &dyn Fn(i64) -> bool| {
        series(n, MINUTE_MS, |i| {
            let mut r = base(i);
            let age = t - i as i64 * MINUTE_MS;
            let cpu = 0.5 + 0.4 * (i as f32 / 1440.0 * std::f32::consts::TAU).sin();
            r[metric::CPU] = cpu;
            r[metric::TEMP] = 40.0 + 12.0 * cpu;
            r[metric::ERR_LOG] = if errs(age) { 1.0 } else { 0.0 };
            r
        })
    };
    let rising = make(&|age| age < 5 * HOUR_MS);
    let mut f = Vec::new();
    WindowFeatures {
        series: &rising,
        spec,
    }
    .extract(t, &mut f);
    assert_eq!(f.len(), names.len());
    assert!(
        at(&f, "temp_resid_sev_1h").abs() < 0.5,
        "load is regressed out"
    );
    assert_eq!(at(&f, "err_log_onset_h"), 5.0);
    assert!(at(&f, "err_log_sev_1h") > 50.0);
    assert!(
        (at(&f, "err_log_sev_lag24h") - 1.0).abs() < 1e-9,
        "quiet a day ago"
    );
    assert!(at(&f, "err_log_recover") > 0.9, "still at its peak");
    let receded = make(&|age| (3 * HOUR_MS..6 * HOUR_MS).contains(&age));
    let mut g = Vec::new();
    WindowFeatures {
        series: &receded,
        spec,
    }
    .extract(t, &mut g);
    assert!(
        at(&g, "err_log_recover") < 0.1,
        "{}",
        at(&g, "err_log_recover")
    );
    assert!(at(&g, "err_log_sev_lag6h") < 2.0 && at(&g, "err_log_onset_h") == 0.0);
    // Directions are declared with each feature: lags and episode age only lower risk.
    let dir = |name: &str| {
        feature_defs()
            .into_iter()
            .find(|d| d.name == name)
            .map(|d| d.monotone)
    };
    assert_eq!(dir("err_log_onset_h"), Some(Monotone::Falls));
    assert_eq!(dir("temp_resid_sev_lag24h"), Some(Monotone::Falls));
    assert_eq!(dir("err_log_recover"), Some(Monotone::Rises));
    assert_eq!(dir("throughput_change_10m_6h"), Some(Monotone::Falls));
    assert_eq!(feature_defs().len(), names.len());
}

#[test]
fn sequence_fills_gaps_and_normalises() {
    let spec = WindowSpec::default();
    let mut s = series(400, MINUTE_MS, base);
    // Remove an hour in the middle.
    s.ts.drain(200..260);
    s.values.drain(200..260);
    let rows: Vec<_> = s.values.clone();
    let norm = Normaliser::fit(&rows);
    let seq = norm.sequence(&s, 399 * MINUTE_MS, &spec);
    assert_eq!(seq.dim(), (24, N_METRICS));
    assert!(seq.iter().all(|v| v.is_finite()));
    assert!(seq[[23, metric::READ_LAT]].abs() < 1e-9, "median maps to 0");
}

/// Whether two feature values agree: both missing, or equal to 1e-9 relative.
fn agree(a: f64, b: f64) -> bool {
    (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= 1e-9 * a.abs().max(b.abs())
}

/// The batch path (training, evaluation, scoring) gives `extract`'s features and
/// `Normaliser::sequence`'s autoencoder inputs on a generated trace with failures,
/// precursors, lost samples and agent gaps, both with per-sample columns (many times) and
/// without (a single time). Guards the shipped model: it was trained on `extract`'s values.
///
/// To the bit wherever the two paths do the same arithmetic: every feature that does not
/// read the load-normalised latencies (`extract` takes the library's `exp` for those, the
/// batch the inlined one: equal to 1e-9 relative), and every feature between the two batch
/// paths (the vectorised normalisation and run sums against one sample at a time). Also
/// on a geometry whose baseline is shorter than the episode features' day, where those
/// read samples outside the per-round rows, and on a grid finer than a minute, where the
/// hourly sums read a strided subset.
#[test]
fn batch_features_equal_the_reference_on_a_generated_trace() {
    use crate::generate::{generate, GeneratorConfig};
    use batch::BatchFeatures;
    let dir = tempfile::tempdir().unwrap();
    let gen = GeneratorConfig {
        nodes: 4,
        days: 4.0,
        interval_ms: 60_000,
        seed: 7,
        failure_boost: 400.0,
        gap_rate_per_day: 2.0,
        nodes_per_file: 4,
        ..Default::default()
    };
    let hidden = indicatif::ProgressBar::hidden();
    generate(&gen, dir.path(), &hidden).unwrap();
    let trace = crate::trace::Trace::read_dir(dir.path(), &hidden).unwrap();
    let names = feature_names();
    let short_baseline = WindowSpec {
        baseline_ms: 12 * HOUR_MS,
        ..WindowSpec::default()
    };
    // A 15-second grid over a 12-hour baseline: more than 60 samples an hour, so the hourly
    // sums read one sample in `hour_stride` (no resampled trace does this today).
    let fine_dir = tempfile::tempdir().unwrap();
    let fine_gen = GeneratorConfig {
        nodes: 1,
        days: 1.5,
        interval_ms: 15_000,
        ..gen.clone()
    };
    generate(&fine_gen, fine_dir.path(), &hidden).unwrap();
    let fine = crate::trace::Trace::read_dir(fine_dir.path(), &hidden).unwrap();
    let strided = WindowSpec {
        resolution_ms: 15_000,
        ..short_baseline
    };
    let mut compared = 0;
    for (spec, trace) in [
        (WindowSpec::default(), &trace),
        (short_baseline, &trace),
        (strided, &fine),
    ] {
        for node in &trace.nodes {
            let s = node.resample(spec.resolution_ms);
            let norm = Normaliser::fit(&s.values);
            let wf = WindowFeatures { series: &s, spec };
            let (first, last) = (s.ts[0], *s.ts.last().unwrap());
            let times: Vec<i64> = (1..)
                .map(|i| first + i * 10 * MINUTE_MS)
                .take_while(|&t| t <= last)
                .filter(|&t| wf.scorable(t))
                .collect();
            let mut many = BatchFeatures::new(&s, spec, &norm, &times);
            for &t in &times {
                let mut want = Vec::new();
                wf.extract(t, &mut want);
                let mut one = BatchFeatures::new(&s, spec, &norm, &[t]);
                let (mut got, mut got_one) = (Vec::new(), Vec::new());
                many.extract(t, &mut got);
                one.extract(t, &mut got_one);
                assert_eq!((got.len(), got_one.len()), (names.len(), names.len()));
                for (i, name) in names.iter().enumerate() {
                    let exact = !name.contains("_lat_norm");
                    let same = |a: f64, b: f64| {
                        if exact {
                            a.to_bits() == b.to_bits()
                        } else {
                            agree(a, b)
                        }
                    };
                    assert!(
                        same(want[i], got[i])
                            && same(want[i], got_one[i])
                            && got[i].to_bits() == got_one[i].to_bits(),
                        "{} at {t} (baseline {} h): {name} reference {} batch {} single {}",
                        node.node,
                        spec.baseline_ms / HOUR_MS,
                        want[i],
                        got[i],
                        got_one[i]
                    );
                }
                let seq = norm.sequence(&s, t, &spec);
                assert_eq!(seq, many.sequence(t), "autoencoder input at {t}");
                assert_eq!(seq, one.sequence(t), "autoencoder input at {t}");
                compared += 1;
            }
        }
    }
    assert!(compared > 1000, "{compared} windows compared");
}

/// The inlined exponential of the load normalisation matches the library's to a few ulp
/// over the clamped range it serves, and keeps NaN.
#[test]
fn clamped_exponential_matches_the_library() {
    let mut worst = 0.0f64;
    for i in -300_000..=300_000 {
        let x = i as f64 * 1e-5 + 1.234_567e-7;
        let (a, b) = (channels::exp_clamped(x), x.exp());
        worst = worst.max(((a - b) / b).abs());
    }
    assert!(worst < 1e-15, "worst relative error {worst:e}");
    assert!(channels::exp_clamped(f64::NAN).is_nan());
    assert_eq!(channels::exp_clamped(0.0), 1.0);
}
