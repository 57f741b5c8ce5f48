//! Feature windows: what the models see of a node at one scoring time.
//!
//! Every feature is defined over wall-clock spans (10 min, 1 h, 6 h), never over sample
//! counts, so the same model scores an agent sampling every 5 s and a trace at 1 min, and a
//! few lost samples only shrink a window instead of shifting it.

use ndarray::Array2;
use serde::{Deserialize, Serialize};

use crate::sample::{metric, N_METRICS};
use crate::trace::NodeSeries;

const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 60 * MINUTE_MS;

/// Window geometry, stored in the model file so scoring always matches training.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct WindowSpec {
    /// Short span: "right now".
    pub short_ms: i64,
    /// Middle span.
    pub mid_ms: i64,
    /// Long span: recent trend.
    pub long_ms: i64,
    /// Baseline span: the node's own normal, so a level is judged against this node's
    /// hardware and workload rather than the fleet's. Long, because slow precursors ramp for
    /// days and a short baseline would absorb them.
    pub baseline_ms: i64,
    /// Step of the LSTM input sequence (samples are averaged per step).
    pub seq_step_ms: i64,
    /// Number of LSTM steps; `seq_len * seq_step_ms` should equal `long_ms`.
    pub seq_len: usize,
    /// Minimum samples in the middle span for a window to be scored at all.
    pub min_samples: usize,
    /// The grid series are read on (see [`NodeSeries::resample`]), ms. Absent in models
    /// trained before it existed, which were trained on 1-minute traces.
    #[serde(default = "default_resolution")]
    pub resolution_ms: i64,
}

fn default_resolution() -> i64 {
    MINUTE_MS
}

impl Default for WindowSpec {
    fn default() -> Self {
        WindowSpec {
            short_ms: 10 * MINUTE_MS,
            mid_ms: HOUR_MS,
            long_ms: 6 * HOUR_MS,
            baseline_ms: 72 * HOUR_MS,
            seq_step_ms: 15 * MINUTE_MS,
            seq_len: 24,
            min_samples: 3,
            resolution_ms: MINUTE_MS,
        }
    }
}

impl WindowSpec {
    /// The geometry for a trace sampled every `interval_ms`: the default spans, stretched
    /// where a span would hold fewer than three samples (a 10-minute trace reads its
    /// "right now" over 30 minutes instead of one sample), on a grid of the trace's own
    /// interval (never finer than a minute). Windows are wall-clock spans with a minimum
    /// sample count, so a model trained at one interval scores any finer one.
    pub fn for_interval(interval_ms: i64) -> WindowSpec {
        let d = WindowSpec::default();
        let res = interval_ms.max(MINUTE_MS);
        let short_ms = d.short_ms.max(3 * res);
        let mid_ms = d.mid_ms.max(2 * short_ms);
        let long_ms = d.long_ms.max(3 * mid_ms);
        let baseline_ms = d.baseline_ms.max(4 * long_ms);
        let seq_step_ms = d.seq_step_ms.max(res);
        WindowSpec {
            short_ms,
            mid_ms,
            long_ms,
            baseline_ms,
            seq_step_ms,
            seq_len: ((long_ms / seq_step_ms) as usize).clamp(6, 48),
            min_samples: d.min_samples,
            resolution_ms: res,
        }
    }
}

/// Level channels: derived per-sample values whose level, spread and trend matter.
/// Latency is also given "utilisation-normalised" (`lat * (1 - 0.9 util)`): queueing makes a
/// busy healthy disk slow, a sick disk is slow at any load, and this separates the two.
///
/// Features of a level channel are relative to the node's own 24 h baseline (ratios, z-scores,
/// relative slope), because absolute latencies differ 50x between hardware cohorts and alone
/// would let the trees memorise *which* nodes failed in training instead of *how* failing
/// nodes look. Latency, loss and temperature also get absolute levels (a 60 ms read or 70 °C
/// is bad on any machine); the trees' monotone constraints keep them from using absolute
/// levels as a node fingerprint.
///
/// CPU and disk utilisation are deliberately absent: they follow tenant load, and with few
/// failures to learn from, trees latch onto load swings that happen to precede a failure. They
/// still reach the model through the autoencoder and the utilisation-normalised latency.
const LEVEL_CHANNELS: [(&str, bool); 6] = [
    ("read_lat_norm", true),
    ("write_lat_norm", true),
    ("read_lat", true),
    ("rtt", false),
    ("loss", true),
    ("temp", true),
];

const LEVEL_STATS: [&str; 7] = [
    "change_10m_6h",
    "change_1h_base",
    "z_10m_base",
    "z_1h_base",
    "rel_slope_6h",
    "rel_std_1h",
    "rel_max_1h",
];

fn level_value(row: &[f32; N_METRICS], channel: usize) -> f64 {
    let util = row[metric::DISK_UTIL] as f64;
    let q = 1.0 - 0.9 * util.clamp(0.0, 1.0);
    match channel {
        0 => row[metric::READ_LAT] as f64 * q,
        1 => row[metric::WRITE_LAT] as f64 * q,
        2 => row[metric::READ_LAT] as f64,
        3 => row[metric::RTT] as f64,
        4 => row[metric::LOSS] as f64,
        _ => row[metric::TEMP] as f64,
    }
}

const COUNT_CHANNELS: [(&str, usize); 2] = [
    ("err_log", metric::ERR_LOG),
    ("net_errors", metric::NET_ERR),
];

/// Names of the window features, in [`WindowFeatures::extract`] order (without the anomaly
/// score, which the model appends).
pub fn feature_names() -> Vec<String> {
    let mut names = Vec::new();
    for (ch, absolute) in LEVEL_CHANNELS {
        for stat in LEVEL_STATS {
            names.push(format!("{ch}_{stat}"));
        }
        if absolute {
            names.push(format!("{ch}_mean_10m"));
            names.push(format!("{ch}_max_1h"));
        }
    }
    names.push("throughput_change_10m_6h".into());
    for (ch, _) in COUNT_CHANNELS {
        for stat in [
            "rate_10m",
            "rate_1h",
            "rate_6h",
            "max_rate_1h",
            "accel_1h_6h",
            "rate_base",
            "accel_1h_base",
        ] {
            names.push(format!("{ch}_{stat}"));
        }
    }
    names.push("psu_flaps_1h".into());
    names.push("psu_flaps_6h".into());
    names.push("psu_down_frac_1h".into());
    for (ch, _, _) in TRAJ_CHANNELS {
        for stat in TRAJ_STATS {
            names.push(format!("{ch}_{stat}"));
        }
    }
    names
}

/// Trajectory channels: per-sample signals whose hourly means are followed over the whole
/// baseline span to tell *how far along* an episode is, not only how bad it is now. With the
/// offset `eps` used in ratios (its unit's noise floor; `None` means "compare by difference":
/// temperature residual in °C, PSU down fraction) and the excess over the reference below
/// which the channel counts as quiet (in ratio - 1 or in the difference's unit).
///
/// Why: a precursor that began two days ago and one that began two hours ago can look alike
/// right now, but the first will usually fail much later — more than H later, where an alert
/// is a false positive. And a false precursor recovers while a real one never does.
const TRAJ_CHANNELS: [(&str, Option<f64>, f64); 7] = [
    ("read_lat_norm", Some(1e-3), 0.2),
    ("write_lat_norm", Some(1e-3), 0.2),
    ("loss", Some(0.01), 1.0),
    ("temp_resid", None, 1.0),
    ("err_log", Some(0.01), 1.0),
    ("net_errors", Some(0.05), 1.0),
    ("psu_down", None, 0.02),
];

/// Statistics of a trajectory channel, against the channel's reference level (the lower
/// quartile of its hourly means over the baseline span, which a precursor younger than about
/// two days does not move): the last hour's level (`sev_1h`), the level 6, 24 and 48 hours
/// earlier (`sev_lag6h`...), how many hours the excess has stayed above half its current size
/// (`onset_h`, an estimate of the episode's age), and the last 30 minutes' excess relative to
/// the highest hourly excess of the last 6 hours (`recover`: about 1 while still rising, lower
/// once an episode is receding).
const TRAJ_STATS: [&str; 6] = [
    "sev_1h",
    "sev_lag6h",
    "sev_lag24h",
    "sev_lag48h",
    "onset_h",
    "recover",
];

/// The direction in which risk may move with a feature: +1 (only up), -1 (only down) or 0.
///
/// Failure precursors are "more is worse" — more errors, more loss, hotter, slower than this
/// node's own baseline — and with dozens rather than thousands of failures to learn from,
/// letting trees bend that relation fits noise. Falling throughput is the one "less is worse"
/// level.
///
/// The trajectory lags and the episode age may only *lower* risk: for the same present
/// severity, an episode that was already visible hours or days ago is ramping slowly (it
/// fails later, often beyond H, where an alert is a false positive) or is a chronic, benign
/// state. Left free, trees fitted on a few dozen failures bent them both ways.
pub fn monotone_direction(name: &str) -> i8 {
    let falls =
        name.starts_with("throughput_") || name.contains("_sev_lag") || name.ends_with("_onset_h");
    if falls {
        -1
    } else {
        1
    }
}

/// Feature extraction over one node's series.
#[derive(Debug, Clone, Copy)]
pub struct WindowFeatures<'a> {
    /// The node's samples.
    pub series: &'a NodeSeries,
    /// Window geometry.
    pub spec: WindowSpec,
}

#[derive(Default, Clone, Copy)]
struct Moments {
    n: f64,
    sum: f64,
    sum_sq: f64,
    max: f64,
}

impl Moments {
    fn push(&mut self, v: f64) {
        self.push_weighted(v, 1.0);
    }
    /// A sample standing for `w` samples (strided reads of long spans).
    fn push_weighted(&mut self, v: f64, w: f64) {
        if v.is_nan() {
            return;
        }
        if self.n == 0.0 || v > self.max {
            self.max = v;
        }
        self.n += w;
        self.sum += w * v;
        self.sum_sq += w * v * v;
    }
    fn mean(&self) -> f64 {
        if self.n == 0.0 {
            f64::NAN
        } else {
            self.sum / self.n
        }
    }
    fn std(&self) -> f64 {
        if self.n < 2.0 {
            return f64::NAN;
        }
        let m = self.mean();
        (self.sum_sq / self.n - m * m).max(0.0).sqrt()
    }
    fn max(&self) -> f64 {
        if self.n == 0.0 {
            f64::NAN
        } else {
            self.max
        }
    }
}

impl<'a> WindowFeatures<'a> {
    /// Whether the window ending at `t` has enough data to be scored.
    pub fn scorable(&self, t: i64) -> bool {
        self.series.range(t - self.spec.mid_ms, t).len() >= self.spec.min_samples
    }

    /// Appends the window features at time `t` to `out` (see [`feature_names`]). The series
    /// must be resampled ([`NodeSeries::resample`]): counts are read as per-minute rates.
    pub fn extract(&self, t: i64, out: &mut Vec<f64>) {
        let s = self.series;
        let base = s.range(t - self.spec.baseline_ms, t);
        let long = s.range(t - self.spec.long_ms, t);
        let mid = s.range(t - self.spec.mid_ms, t);
        let short = s.range(t - self.spec.short_ms, t);
        let t_hours = |i: usize| (s.ts[i] - t) as f64 / HOUR_MS as f64;
        // Spans longer than the middle one are read with a stride so that a 5-second agent
        // costs about what a 1-minute trace does: a baseline mean does not need every sample.
        let base_stride = ((long.start - base.start) / 360).max(1);
        let long_stride = ((mid.start - long.start) / 120).max(1);

        for (ch, &(name, absolute)) in LEVEL_CHANNELS.iter().enumerate() {
            let (mut m_base, mut m_long, mut m_mid, mut m_short) = (
                Moments::default(),
                Moments::default(),
                Moments::default(),
                Moments::default(),
            );
            // Least-squares slope per hour over the long span (weighted like the moments).
            let (mut sx, mut sy, mut sxx, mut sxy) = (0.0, 0.0, 0.0, 0.0);
            let mut i = base.start;
            while i < base.end {
                let stride = if i < long.start {
                    base_stride
                } else if i < mid.start {
                    long_stride
                } else {
                    1
                };
                let w = stride.min(base.end - i) as f64;
                let v = level_value(&s.values[i], ch);
                i += stride;
                if v.is_nan() {
                    continue;
                }
                let idx = i - stride;
                m_base.push_weighted(v, w);
                if idx < long.start {
                    continue;
                }
                m_long.push_weighted(v, w);
                if idx >= mid.start {
                    m_mid.push(v);
                }
                if idx >= short.start {
                    m_short.push(v);
                }
                let x = t_hours(idx);
                sx += w * x;
                sy += w * v;
                sxx += w * x * x;
                sxy += w * x * v;
            }
            let n = m_long.n;
            let denom = n * sxx - sx * sx;
            let slope = if n >= 3.0 && denom.abs() > 1e-12 {
                (n * sxy - sx * sy) / denom
            } else {
                f64::NAN
            };
            let base_mean = m_base.mean();
            let base_sd = m_base.std() + 1e-3 + 0.01 * base_mean.abs();
            let rel = |v: f64| v / (base_mean.abs() + 1e-3);
            let (change, change_base) = if name == "temp" {
                (m_short.mean() - m_long.mean(), m_mid.mean() - base_mean)
            } else {
                (
                    (m_short.mean() + 1e-3) / (m_long.mean() + 1e-3),
                    (m_mid.mean() + 1e-3) / (base_mean + 1e-3),
                )
            };
            out.extend_from_slice(&[
                change,
                change_base,
                (m_short.mean() - base_mean) / base_sd,
                (m_mid.mean() - base_mean) / base_sd,
                rel(slope),
                rel(m_mid.std()),
                rel(m_mid.max()),
            ]);
            if absolute {
                out.extend_from_slice(&[m_short.mean(), m_mid.max()]);
            }
        }

        let tput = |r: &std::ops::Range<usize>| {
            let mut m = Moments::default();
            for i in r.clone() {
                m.push((s.values[i][metric::READ_MBPS] + s.values[i][metric::WRITE_MBPS]) as f64);
            }
            m.mean()
        };
        out.push((tput(&short) + 1.0) / (tput(&long) + 1.0));

        for (_, col) in COUNT_CHANNELS {
            let rate = |r: &std::ops::Range<usize>| {
                if r.is_empty() {
                    return f64::NAN;
                }
                // Long spans are strided like the level channels; counts scale back up.
                let stride = (r.len() / 720).max(1);
                let mut sum = 0.0;
                let mut seen = 0usize;
                let mut i = r.start;
                while i < r.end {
                    sum += s.values[i][col] as f64;
                    seen += 1;
                    i += stride;
                }
                sum / seen as f64
            };
            let max_rate = mid
                .clone()
                .map(|i| s.values[i][col] as f64)
                .fold(f64::NAN, f64::max);
            let (r_short, r_mid, r_long, r_base) =
                (rate(&short), rate(&mid), rate(&long), rate(&base));
            out.extend_from_slice(&[
                r_short,
                r_mid,
                r_long,
                max_rate,
                (r_mid + 0.01) / (r_long + 0.01),
                r_base,
                (r_mid + 0.01) / (r_base + 0.01),
            ]);
        }

        let flaps = |r: &std::ops::Range<usize>| {
            let mut prev = f32::NAN;
            let mut flips = 0.0;
            let mut seen = false;
            for i in r.clone() {
                let v = s.values[i][metric::PSU];
                if v.is_nan() {
                    continue;
                }
                if seen && v != prev {
                    flips += 1.0;
                }
                prev = v;
                seen = true;
            }
            if seen {
                flips
            } else {
                f64::NAN
            }
        };
        out.push(flaps(&mid));
        out.push(flaps(&long));
        let mut down = Moments::default();
        for i in mid.clone() {
            let v = s.values[i][metric::PSU];
            down.push(if v.is_nan() { f64::NAN } else { 1.0 - v as f64 });
        }
        out.push(down.mean());
        self.trajectory(t, base, out);
    }

    /// Appends the trajectory features (see [`TRAJ_STATS`]) at time `t`.
    fn trajectory(&self, t: i64, base: std::ops::Range<usize>, out: &mut Vec<f64>) {
        const N: usize = TRAJ_CHANNELS.len();
        let s = self.series;
        let n_hours = (self.spec.baseline_ms / HOUR_MS).max(1) as usize;
        // Temperature follows CPU load on a healthy machine; regress it out per node so a
        // busy afternoon is not a thermal episode. Fitted on the (strided) baseline span.
        let stride = (base.len() / 720).max(1);
        let (mut n, mut sx, mut sy, mut sxx, mut sxy) = (0.0, 0.0, 0.0, 0.0, 0.0);
        let mut i = base.start;
        while i < base.end {
            let (cpu, temp) = (
                s.values[i][metric::CPU] as f64,
                s.values[i][metric::TEMP] as f64,
            );
            if !cpu.is_nan() && !temp.is_nan() {
                n += 1.0;
                sx += cpu;
                sy += temp;
                sxx += cpu * cpu;
                sxy += cpu * temp;
            }
            i += stride;
        }
        let var = n * sxx - sx * sx;
        let beta = if n >= 10.0 && var > 1e-9 {
            ((n * sxy - sx * sy) / var).clamp(0.0, 50.0)
        } else {
            0.0
        };
        // Hourly means, hour 0 = the last hour. Each hour reads at most ~60 samples.
        let mut sums = vec![[0.0f64; N]; n_hours];
        let mut counts = vec![[0.0f64; N]; n_hours];
        let hour_stride = (base.len() / (60 * n_hours)).max(1);
        let mut i = base.start;
        while i < base.end {
            let h = ((t - s.ts[i]).max(0) / HOUR_MS) as usize;
            if h < n_hours {
                let v = &s.values[i];
                let vals = [
                    level_value(v, 0),
                    level_value(v, 1),
                    v[metric::LOSS] as f64,
                    v[metric::TEMP] as f64 - beta * v[metric::CPU] as f64,
                    v[metric::ERR_LOG] as f64,
                    v[metric::NET_ERR] as f64,
                    1.0 - v[metric::PSU] as f64,
                ];
                for (c, &x) in vals.iter().enumerate() {
                    if !x.is_nan() {
                        sums[h][c] += x;
                        counts[h][c] += 1.0;
                    }
                }
            }
            i += hour_stride;
        }
        let recent = s.range(t - 30 * MINUTE_MS, t);
        let mut hourly = Vec::with_capacity(n_hours);
        for (c, &(_, eps, floor)) in TRAJ_CHANNELS.iter().enumerate() {
            hourly.clear();
            hourly.extend((0..n_hours).map(|h| {
                if counts[h][c] > 0.0 {
                    sums[h][c] / counts[h][c]
                } else {
                    f64::NAN
                }
            }));
            let mut known: Vec<f64> = hourly.iter().copied().filter(|v| !v.is_nan()).collect();
            if known.len() < 3 {
                out.extend_from_slice(&[f64::NAN; TRAJ_STATS.len()]);
                continue;
            }
            known.sort_by(f64::total_cmp);
            let reference = known[(known.len() - 1) / 4];
            let sev = |v: f64| match eps {
                Some(e) => (v.max(0.0) + e) / (reference.max(0.0) + e),
                None => v - reference,
            };
            let at = |h: usize| hourly.get(h).copied().map_or(f64::NAN, sev);
            // Excess over the reference in the units of `floor`.
            let excess = |v: f64| sev(v) - if eps.is_some() { 1.0 } else { 0.0 };
            let now = hourly[0];
            let onset_h = if now.is_nan() || excess(now) <= floor {
                0.0
            } else {
                let half = 0.5 * excess(now);
                hourly
                    .iter()
                    .take_while(|v| v.is_nan() || excess(**v) >= half)
                    .count() as f64
            };
            let peak = hourly
                .iter()
                .take(6)
                .copied()
                .filter(|v| !v.is_nan())
                .fold(f64::NAN, f64::max);
            let mut last = Moments::default();
            for i in recent.clone() {
                let v = &s.values[i];
                last.push(match c {
                    0 | 1 => level_value(v, c),
                    2 => v[metric::LOSS] as f64,
                    3 => v[metric::TEMP] as f64 - beta * v[metric::CPU] as f64,
                    4 => v[metric::ERR_LOG] as f64,
                    5 => v[metric::NET_ERR] as f64,
                    _ => 1.0 - v[metric::PSU] as f64,
                });
            }
            let recover =
                ((excess(last.mean()) + floor) / (excess(peak).max(0.0) + floor)).clamp(-1.0, 2.0);
            out.extend_from_slice(&[at(0), at(6), at(24), at(48), onset_h, recover]);
        }
    }
}

/// Per-metric normalisation for the LSTM input, fitted on healthy training data.
///
/// Heavy-tailed metrics (latencies, throughputs, counts, loss) are log-compressed first so a
/// latency spike does not dominate the reconstruction loss; centre and scale are robust
/// (median, IQR) so the fit is not thrown by the very anomalies we look for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Normaliser {
    /// Whether metric `i` is log1p-transformed first.
    pub log: Vec<bool>,
    /// Median of the transformed metric.
    pub center: Vec<f64>,
    /// Robust spread of the transformed metric (never below a floor).
    pub scale: Vec<f64>,
}

const LOG_METRICS: [usize; 8] = [
    metric::READ_LAT,
    metric::WRITE_LAT,
    metric::READ_MBPS,
    metric::WRITE_MBPS,
    metric::RTT,
    metric::LOSS,
    metric::NET_ERR,
    metric::ERR_LOG,
];

impl Normaliser {
    /// Fits on a sample of metric rows (NaNs ignored; all-NaN metrics get centre 0, scale 1).
    pub fn fit(rows: &[[f32; N_METRICS]]) -> Normaliser {
        let log: Vec<bool> = (0..N_METRICS).map(|m| LOG_METRICS.contains(&m)).collect();
        let mut center = vec![0.0; N_METRICS];
        let mut scale = vec![1.0; N_METRICS];
        for m in 0..N_METRICS {
            let mut v: Vec<f64> = rows
                .iter()
                .map(|r| transform(r[m] as f64, log[m]))
                .filter(|x| !x.is_nan())
                .collect();
            if v.is_empty() {
                continue;
            }
            v.sort_by(f64::total_cmp);
            let q = |p: f64| v[((v.len() - 1) as f64 * p) as usize];
            center[m] = q(0.5);
            scale[m] = ((q(0.75) - q(0.25)) / 1.349).max(0.05);
        }
        Normaliser { log, center, scale }
    }

    /// Normalised value of metric `m`; NaN (absent sensor) maps to 0, the typical value, so
    /// the autoencoder neither sees nor learns anything from a missing sensor.
    pub fn apply(&self, m: usize, raw: f32) -> f64 {
        let x = transform(raw as f64, self.log[m]);
        if x.is_nan() {
            0.0
        } else {
            ((x - self.center[m]) / self.scale[m]).clamp(-10.0, 10.0)
        }
    }

    /// The LSTM input sequence ending at `t`: per-step means of normalised metrics. An empty
    /// step (lost samples, agent restart) repeats the previous step so gaps look flat, not
    /// like a sudden return to the mean. Dense steps are read with a stride (at most
    /// `SEQ_SAMPLES_PER_STEP` samples each).
    pub fn sequence(&self, series: &NodeSeries, t: i64, spec: &WindowSpec) -> Array2<f64> {
        let mut seq = Array2::<f64>::zeros((spec.seq_len, N_METRICS));
        let start = t - spec.seq_step_ms * spec.seq_len as i64;
        let mut prev: Option<usize> = None;
        for step in 0..spec.seq_len {
            let a = start + step as i64 * spec.seq_step_ms;
            let r = series.range(a, a + spec.seq_step_ms);
            if r.is_empty() {
                if let Some(p) = prev {
                    let row = seq.row(p).to_owned();
                    seq.row_mut(step).assign(&row);
                }
                continue;
            }
            // About one sample per minute is plenty for a 15-minute mean and is what the
            // autoencoder was trained on; a 5-second agent would otherwise cost 12x more here.
            let stride = (r.len() / SEQ_SAMPLES_PER_STEP).max(1);
            let n = r.clone().step_by(stride).count() as f64;
            for i in r.step_by(stride) {
                for m in 0..N_METRICS {
                    seq[[step, m]] += self.apply(m, series.values[i][m]) / n;
                }
            }
            prev = Some(step);
        }
        seq
    }
}

/// Samples averaged per LSTM step at most (see [`Normaliser::sequence`]).
const SEQ_SAMPLES_PER_STEP: usize = 15;

fn transform(x: f64, log: bool) -> f64 {
    if log {
        x.max(0.0).ln_1p()
    } else {
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        // The new features are constrained to lower risk only.
        assert_eq!(monotone_direction("err_log_onset_h"), -1);
        assert_eq!(monotone_direction("temp_resid_sev_lag24h"), -1);
        assert_eq!(monotone_direction("err_log_recover"), 1);
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
}
