//! Feature windows: what the models see of a node at one scoring time.
//!
//! Every feature is defined over wall-clock spans (10 min, 1 h, 6 h), never over sample
//! counts, so the same model scores an agent sampling every 5 s and a trace at 1 min, and a
//! few lost samples only shrink a window instead of shifting it. Each feature is declared
//! once, with its monotone direction ([`feature_defs`]); the channels it reads are declared
//! in [`channels`], the load effects it removes are learned per node ([`channels::LoadModel`]).

pub(crate) mod batch;
pub mod channels;
mod episode;
mod normaliser;
pub mod select;
mod trajectory;

use serde::{Deserialize, Serialize};

pub use channels::Monotone;
use channels::{Level, LoadModel, Traj, COUNT_CHANNELS};
use episode::{EPISODE_STATS, PSU_FLAP_TREND};
pub use normaliser::Normaliser;
pub use select::{ColumnMap, UnknownFeature};
use trajectory::TRAJ_STATS;

use crate::sample::metric;
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
    /// The grid series are read on (see [`NodeSeries::resample`]), ms.
    pub resolution_ms: i64,
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

/// Statistics of a level channel ([`Level`]), all "more is worse": a channel above its own
/// baseline, rising, or more erratic than usual is what precursors look like.
const LEVEL_STATS: [(&str, Monotone); 7] = [
    ("change_10m_6h", Monotone::Rises),
    ("change_1h_base", Monotone::Rises),
    ("z_10m_base", Monotone::Rises),
    ("z_1h_base", Monotone::Rises),
    ("rel_slope_6h", Monotone::Rises),
    ("rel_std_1h", Monotone::Rises),
    ("rel_max_1h", Monotone::Rises),
];

/// Absolute levels of the channels that have them ([`Level::absolute`]).
const ABSOLUTE_STATS: [(&str, Monotone); 2] =
    [("mean_10m", Monotone::Rises), ("max_1h", Monotone::Rises)];

/// Statistics of a count channel (per-minute rates): more errors are worse, and so is
/// acceleration.
const COUNT_STATS: [(&str, Monotone); 7] = [
    ("rate_10m", Monotone::Rises),
    ("rate_1h", Monotone::Rises),
    ("rate_6h", Monotone::Rises),
    ("max_rate_1h", Monotone::Rises),
    ("accel_1h_6h", Monotone::Rises),
    ("rate_base", Monotone::Rises),
    ("accel_1h_base", Monotone::Rises),
];

/// One window feature: its name and how risk may move with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureDef {
    /// Name, as in the model file.
    pub name: String,
    /// The trees' monotone constraint for it.
    pub monotone: Monotone,
}

/// The window features, in [`WindowFeatures::extract`] order (without the anomaly score,
/// which the model appends), each with its declared direction.
pub fn feature_defs() -> Vec<FeatureDef> {
    let mut defs = Vec::new();
    let mut add = |name: String, monotone: Monotone| defs.push(FeatureDef { name, monotone });
    for ch in Level::ALL {
        for (stat, m) in LEVEL_STATS {
            add(format!("{}_{stat}", ch.name()), m);
        }
        if ch.absolute() {
            for (stat, m) in ABSOLUTE_STATS {
                add(format!("{}_{stat}", ch.name()), m);
            }
        }
    }
    // Falling throughput is the one "less is worse" level: a dying disk serves less.
    add("throughput_change_10m_6h".into(), Monotone::Falls);
    for (ch, _) in COUNT_CHANNELS {
        for (stat, m) in COUNT_STATS {
            add(format!("{ch}_{stat}"), m);
        }
    }
    add("psu_flaps_1h".into(), Monotone::Rises);
    add("psu_flaps_6h".into(), Monotone::Rises);
    add("psu_down_frac_1h".into(), Monotone::Rises);
    for ch in Traj::ALL {
        for (stat, m) in TRAJ_STATS {
            add(format!("{}_{stat}", ch.name()), m);
        }
    }
    // Appended after every feature older models name: a model lists the names it was
    // trained on and is fed only those (see [`select::ColumnMap`]).
    for ch in Traj::ALL {
        for (stat, m) in EPISODE_STATS {
            add(format!("{}_{stat}", ch.name()), m);
        }
    }
    add(PSU_FLAP_TREND.0.into(), PSU_FLAP_TREND.1);
    defs
}

/// Names of the window features, in [`WindowFeatures::extract`] order.
pub fn feature_names() -> Vec<String> {
    feature_defs().into_iter().map(|d| d.name).collect()
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

    /// Appends the window features at time `t` to `out` (see [`feature_defs`]). The series
    /// must be resampled ([`NodeSeries::resample`]): counts are read as per-minute rates.
    ///
    /// This is the straightforward definition, one time at a time; [`batch::BatchFeatures`]
    /// computes the same values for many times of one node (what training and evaluation
    /// need), and is tested against this.
    pub fn extract(&self, t: i64, out: &mut Vec<f64>) {
        let s = self.series;
        let w = Spans::at(s, &self.spec, t);
        let load = LoadModel::fit(s, w.base.start..w.long.start, w.base.clone());
        self.levels(t, &w, |ch, i| ch.value(&s.values[i], &load), out);
        self.rates(&w, out);
        self.trajectory(t, w.base.clone(), &load, out);
    }

    /// The level-channel features ([`LEVEL_STATS`], [`ABSOLUTE_STATS`]) of every [`Level`]
    /// channel, reading sample `i`'s value of a channel from `value(channel, i)`.
    fn levels(
        &self,
        t: i64,
        spans: &Spans,
        value: impl Fn(Level, usize) -> f64,
        out: &mut Vec<f64>,
    ) {
        let s = self.series;
        let Spans {
            base,
            long,
            mid,
            short,
        } = spans;
        let t_hours = |i: usize| (s.ts[i] - t) as f64 / HOUR_MS as f64;
        // Spans longer than the middle one are read with a stride so that a 5-second agent
        // costs about what a 1-minute trace does: a baseline mean does not need every sample.
        let base_stride = ((long.start - base.start) / 360).max(1);
        let long_stride = ((mid.start - long.start) / 120).max(1);

        for ch in Level::ALL {
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
                let v = value(ch, i);
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
            let (change, change_base) = if ch.by_difference() {
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
            if ch.absolute() {
                out.extend_from_slice(&[m_short.mean(), m_mid.max()]);
            }
        }
    }

    /// Throughput, count-channel and power-supply features (none depends on the load fit).
    fn rates(&self, spans: &Spans, out: &mut Vec<f64>) {
        let s = self.series;
        let Spans {
            base,
            long,
            mid,
            short,
        } = spans;
        let tput = |r: &std::ops::Range<usize>| {
            let mut m = Moments::default();
            for i in r.clone() {
                m.push((s.values[i][metric::READ_MBPS] + s.values[i][metric::WRITE_MBPS]) as f64);
            }
            m.mean()
        };
        out.push((tput(short) + 1.0) / (tput(long) + 1.0));

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
            let (r_short, r_mid, r_long, r_base) = (rate(short), rate(mid), rate(long), rate(base));
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
        out.push(flaps(mid));
        out.push(flaps(long));
        let mut down = Moments::default();
        for i in mid.clone() {
            let v = s.values[i][metric::PSU];
            down.push(if v.is_nan() { f64::NAN } else { 1.0 - v as f64 });
        }
        out.push(down.mean());
    }
}

/// The index ranges of the spans ending at one scoring time.
struct Spans {
    base: std::ops::Range<usize>,
    long: std::ops::Range<usize>,
    mid: std::ops::Range<usize>,
    short: std::ops::Range<usize>,
}

impl Spans {
    fn at(s: &NodeSeries, spec: &WindowSpec, t: i64) -> Spans {
        Spans {
            base: s.range(t - spec.baseline_ms, t),
            long: s.range(t - spec.long_ms, t),
            mid: s.range(t - spec.mid_ms, t),
            short: s.range(t - spec.short_ms, t),
        }
    }
}

#[cfg(test)]
mod tests;
