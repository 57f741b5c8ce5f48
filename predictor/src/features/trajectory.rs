//! Trajectory features: how far along an episode is, from hourly means over the baseline
//! span (see [`TRAJ_STATS`]).

use super::channels::{LoadModel, Monotone, Traj};
use super::{Moments, WindowFeatures, HOUR_MS, MINUTE_MS};
use crate::trace::NodeSeries;

/// Statistics of a trajectory channel, against the channel's reference level (the lower
/// quartile of its hourly means over the baseline span, which a precursor younger than about
/// two days does not move), each with its monotone direction:
///
/// * `sev_1h`: the last hour's level — more is worse;
/// * `sev_lag6h`, `sev_lag24h`, `sev_lag48h`: the level 6, 24 and 48 hours earlier — may only
///   *lower* risk: for the same present severity, an episode already visible hours or days
///   ago is ramping slowly (it fails later, often beyond H, where an alert is a false
///   positive) or is a chronic, benign state. Left free, trees fitted on a few dozen
///   failures bent them both ways;
/// * `onset_h`: how many hours the excess has stayed above half its current size (the
///   episode's age) — lowers risk, for the same reason;
/// * `recover`: the last 30 minutes' excess relative to the highest hourly excess of the
///   last 6 hours (about 1 while still rising, lower once an episode recedes) — more is
///   worse.
pub(crate) const TRAJ_STATS: [(&str, Monotone); 6] = [
    ("sev_1h", Monotone::Rises),
    ("sev_lag6h", Monotone::Falls),
    ("sev_lag24h", Monotone::Falls),
    ("sev_lag48h", Monotone::Falls),
    ("onset_h", Monotone::Falls),
    ("recover", Monotone::Rises),
];

/// A channel's reference level from its hourly means: the lower quartile (nearest rank
/// below) of the known ones, which a precursor younger than about two days does not move;
/// `None` with fewer than 3 known hours.
pub(super) fn reference(hourly: &[f64]) -> Option<f64> {
    let mut known: Vec<f64> = hourly.iter().copied().filter(|v| !v.is_nan()).collect();
    if known.len() < 3 {
        return None;
    }
    let q = (known.len() - 1) / 4;
    Some(*known.select_nth_unstable_by(q, f64::total_cmp).1)
}

/// Trajectory channels.
pub(super) const N_TRAJ: usize = Traj::ALL.len();

/// Sums and counts of every trajectory channel over a run of samples (NaN skipped), each
/// channel summed from zero in index order.
pub(super) type RunSums = ([f64; N_TRAJ], [f64; N_TRAJ]);

/// [`RunSums`] of samples `r` (in that order), reading sample `i` through `values(i)`.
pub(super) fn sum_run(
    r: impl IntoIterator<Item = usize>,
    values: impl Fn(usize) -> [f64; N_TRAJ],
) -> RunSums {
    let (mut sum, mut n) = ([0.0f64; N_TRAJ], [0.0f64; N_TRAJ]);
    for i in r {
        for ((a, k), x) in sum.iter_mut().zip(n.iter_mut()).zip(values(i)) {
            if !x.is_nan() {
                *a += x;
                *k += 1.0;
            }
        }
    }
    (sum, n)
}

/// Splits samples `r` of `s` into runs of one bucket each, bucket `(t - ts) / width` (0 =
/// the latest; `width` at least 1), and calls `f(bucket, run)` for each, latest bucket last.
/// Samples are in time order, so each bucket is one run, found by a binary search instead
/// of a division per sample; callers add a run's sum to a bucket's zero, which is then the
/// sequential sum to the bit. A sample past `t` (none is, in the spans features read) is a
/// run of its own in bucket 0, so adding it still matches adding it alone.
pub(super) fn bucket_runs(
    s: &NodeSeries,
    r: std::ops::Range<usize>,
    t: i64,
    width: i64,
    mut f: impl FnMut(usize, std::ops::Range<usize>),
) {
    let width = width.max(1);
    let mut i = r.start;
    while i < r.end {
        let b = (t - s.ts[i]).max(0) / width;
        // Bucket b holds the samples with t - (b + 1) * width < ts <= t - b * width (a
        // sample past t counts as bucket 0 on its own).
        let upper = t - b * width;
        let end = if s.ts[i] > upper {
            i + 1
        } else {
            i + 1 + s.ts[i + 1..r.end].partition_point(|&ts| ts <= upper)
        };
        f(b as usize, i..end);
        i = end;
    }
}

/// Hours of the baseline span the hourly means cover.
pub(super) fn n_hours(spec: &super::WindowSpec) -> usize {
    (spec.baseline_ms / HOUR_MS).max(1) as usize
}

/// Samples of the baseline span `base` the hourly means read: every this many.
pub(super) fn hour_stride(base: &std::ops::Range<usize>, n_hours: usize) -> usize {
    (base.len() / (60 * n_hours)).max(1)
}

impl WindowFeatures<'_> {
    /// Appends the trajectory features at time `t` (every [`Traj`] channel, [`TRAJ_STATS`]
    /// each), then the episode features read from the same hourly means
    /// ([`super::episode::EPISODE_STATS`]).
    pub(super) fn trajectory(
        &self,
        t: i64,
        base: std::ops::Range<usize>,
        load: &LoadModel,
        out: &mut Vec<f64>,
    ) {
        const N: usize = N_TRAJ;
        let s = self.series;
        let n_hours = n_hours(&self.spec);
        // Hourly means, hour 0 = the last hour. Each hour reads at most ~60 samples.
        let mut sums = vec![[0.0f64; N]; n_hours];
        let mut counts = vec![[0.0f64; N]; n_hours];
        let hour_stride = hour_stride(&base, n_hours);
        let mut i = base.start;
        while i < base.end {
            let h = ((t - s.ts[i]).max(0) / HOUR_MS) as usize;
            if h < n_hours {
                for (c, ch) in Traj::ALL.iter().enumerate() {
                    let x = ch.value(&s.values[i], load);
                    if !x.is_nan() {
                        sums[h][c] += x;
                        counts[h][c] += 1.0;
                    }
                }
            }
            i += hour_stride;
        }
        let values = |i: usize| Traj::ALL.map(|ch| ch.value(&s.values[i], load));
        self.trajectory_stats(t, &sums, &counts, values, out);
        self.episode_stats(t, &sums, &counts, |r| sum_run(r, values), out);
    }

    /// The [`TRAJ_STATS`] of every channel from its hourly sums and counts (hour 0 = the
    /// last hour), reading the last half hour's samples through `values(i)` (every channel
    /// of sample `i`, in [`Traj::ALL`] order).
    pub(super) fn trajectory_stats(
        &self,
        t: i64,
        sums: &[[f64; N_TRAJ]],
        counts: &[[f64; N_TRAJ]],
        values: impl Fn(usize) -> [f64; N_TRAJ],
        out: &mut Vec<f64>,
    ) {
        let s = self.series;
        let n_hours = sums.len();
        // The last half hour's mean of every channel.
        let mut last = [Moments::default(); N_TRAJ];
        for i in s.range(t - 30 * MINUTE_MS, t) {
            for (m, v) in last.iter_mut().zip(values(i)) {
                m.push(v);
            }
        }
        let mut hourly = Vec::with_capacity(n_hours);
        for (c, ch) in Traj::ALL.iter().enumerate() {
            let (eps, floor) = (ch.eps(), ch.floor());
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
            // The lower quartile (nearest rank below): the element a full sort would put there.
            let q = (known.len() - 1) / 4;
            let reference = *known.select_nth_unstable_by(q, f64::total_cmp).1;
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
            let recover = ((excess(last[c].mean()) + floor) / (excess(peak).max(0.0) + floor))
                .clamp(-1.0, 2.0);
            out.extend_from_slice(&[at(0), at(6), at(24), at(48), onset_h, recover]);
        }
    }
}
