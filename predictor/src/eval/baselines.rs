//! Baselines the model is compared with, fitted on the same data as the model.

/// Static-threshold statistics over the last 10 minutes, as an operator would alert on them:
/// raw read and write latency, kernel error lines per minute, temperature.
pub(super) const STATIC_STATS: [&str; 4] = [
    "disk_read_lat_ms",
    "disk_write_lat_ms",
    "err_log_per_min",
    "temp_c",
];

/// The static statistics of the 10 minutes up to `t` (NaN where unmeasured).
pub(super) fn static_stats(series: &crate::trace::NodeSeries, t: i64) -> [f32; 4] {
    use crate::sample::metric;
    let r = series.range(t - 600_000, t);
    let mut out = [f32::NAN; 4];
    if r.is_empty() {
        return out;
    }
    for (k, m) in [
        metric::READ_LAT,
        metric::WRITE_LAT,
        metric::ERR_LOG,
        metric::TEMP,
    ]
    .into_iter()
    .enumerate()
    {
        let vals: Vec<f32> = r
            .clone()
            .map(|i| series.values[i][m])
            .filter(|v| !v.is_nan())
            .collect();
        if !vals.is_empty() {
            let mean = vals.iter().sum::<f32>() / vals.len() as f32;
            // The series is resampled: error counts are per-minute rates already.
            out[k] = mean;
        }
    }
    out
}

/// How far the worst statistic is above its limit (1.0: at the limit).
pub(super) fn static_score(stats: &[f32; 4], limits: &[f64; 4]) -> f64 {
    stats
        .iter()
        .zip(limits)
        .map(|(&v, &l)| v as f64 / l)
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max)
}
