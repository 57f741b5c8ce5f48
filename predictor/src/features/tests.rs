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
