//! Trajectory features: how far along an episode is, from hourly means over the baseline
//! span (see [`TRAJ_STATS`]).

use super::channels::{LoadModel, Monotone, Traj};
use super::{Moments, WindowFeatures, HOUR_MS, MINUTE_MS};

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
        let value = |ch: Traj, i: usize| ch.value(&s.values[i], load);
        self.trajectory_stats(t, &sums, &counts, value, out);
        self.episode_stats(t, &sums, &counts, value, out);
    }

    /// The [`TRAJ_STATS`] of every channel from its hourly sums and counts (hour 0 = the
    /// last hour), reading the last half hour's samples through `value(channel, i)`.
    pub(super) fn trajectory_stats(
        &self,
        t: i64,
        sums: &[[f64; N_TRAJ]],
        counts: &[[f64; N_TRAJ]],
        value: impl Fn(Traj, usize) -> f64,
        out: &mut Vec<f64>,
    ) {
        let s = self.series;
        let n_hours = sums.len();
        let recent = s.range(t - 30 * MINUTE_MS, t);
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
            let mut last = Moments::default();
            for i in recent.clone() {
                last.push(value(*ch, i));
            }
            let recover =
                ((excess(last.mean()) + floor) / (excess(peak).max(0.0) + floor)).clamp(-1.0, 2.0);
            out.extend_from_slice(&[at(0), at(6), at(24), at(48), onset_h, recover]);
        }
    }
}
