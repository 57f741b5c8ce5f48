//! Episode features: whether a channel's episode keeps rising, comes and goes, or has settled
//! (see [`EPISODE_STATS`]), and whether a power supply flaps more and more often.
//!
//! Why: on the harder traces (`generate --hard`) the trajectory features cannot tell a real
//! precursor from the benign episodes that mimic it. A benign plateau (a chronically noisy
//! link, a supply that flaps at a constant rate) never recovers, so `*_recover` reads it as a
//! precursor; an intermittent precursor's off blocks look like recovery, so it reads a real
//! one as benign; and a failing supply stood out only in its last hours. What does separate
//! them is the *shape* over the last day: a real precursor keeps rising (trend), is on for
//! more and more of the time (duty), and has not held its current level for hours
//! (persistence); a plateau is flat and has held its level since it formed.

use super::channels::{Monotone, Traj};
use super::trajectory::{bucket_runs, RunSums, N_TRAJ};
use super::{WindowFeatures, HOUR_MS};
use crate::sample::metric;

/// Statistics of a trajectory channel ([`Traj`]) over the last day, in the excess over the
/// channel's reference (the lower quartile of its hourly means, as the trajectory features
/// use), each with its monotone direction:
///
/// * `duty_6h`: the share of the last 6 hours' short blocks (10 minutes at 1-minute
///   sampling) whose excess is at least half of the day's highest block (and above the
///   channel's quiet floor) — more is worse: an intermittent precursor is on for good near
///   the failure, a benign gated bump stays at its own duty;
/// * `duty_24h`: the same share over the last 24 hours — unconstrained: a benign plateau and
///   the last day of a slow ramp both hold it high, so only together with the other
///   statistics does it say which;
/// * `trend_6h`, `trend_24h`: the least-squares rise of the hourly excess over the last 6
///   and 24 hours, relative to the highest hourly excess in that span (about 1 for a ramp
///   from nothing, 0 for a flat plateau, negative while receding) — more is worse: a
///   plateau flaps, errs or loses packets at a constant rate, a failing part at a rising
///   one;
/// * `persist_24h`: how many of the last 24 hours were already at least 70% as far above the
///   reference as the last hour (0 when the channel is quiet) — lowers risk: a plateau has
///   held its level for hours, a ramp's middle has not. Counted, not a run, so one noisy
///   hour does not reset it.
pub(crate) const EPISODE_STATS: [(&str, Monotone); 5] = [
    ("duty_6h", Monotone::Rises),
    ("duty_24h", Monotone::Free),
    ("trend_6h", Monotone::Rises),
    ("trend_24h", Monotone::Rises),
    ("persist_24h", Monotone::Falls),
];

/// The power supply's flap trend: the least-squares rise of its hourly flap count over the
/// last 24 hours, relative to the highest hourly count plus one. A benign flapping supply
/// flaps at a constant rate; a failing one more and more often until it dies.
pub(crate) const PSU_FLAP_TREND: (&str, Monotone) = ("psu_flaps_trend_24h", Monotone::Rises);

/// Hours of history the episode statistics read (the `*_24h` ones).
const DAY_HOURS: usize = 24;
/// The span whose every sample the episode statistics read, ms.
pub(super) const DAY_MS: i64 = DAY_HOURS as i64 * HOUR_MS;
/// Hours of the recent span (the `*_6h` ones).
const RECENT_HOURS: usize = 6;
/// A block counts as on at this share of the day's highest block excess.
const DUTY_SHARE: f64 = 0.5;
/// An earlier hour has held the current level at this share of the last hour's excess.
const PERSIST_SHARE: f64 = 0.7;

impl WindowFeatures<'_> {
    /// Appends the episode features at `t`: [`EPISODE_STATS`] of every [`Traj`] channel,
    /// then [`PSU_FLAP_TREND`]. `sums` and `counts` are the trajectory channels' hourly sums
    /// (hour 0 = the last hour, as [`Self::trajectory_stats`] reads them); the duty reads
    /// the last day's samples in short blocks through `run_sums(run)`, every channel's sum
    /// and count over a run of samples ([`super::trajectory::sum_run`] or a faster equal).
    pub(super) fn episode_stats(
        &self,
        t: i64,
        sums: &[[f64; N_TRAJ]],
        counts: &[[f64; N_TRAJ]],
        run_sums: impl Fn(std::ops::Range<usize>) -> RunSums,
        out: &mut Vec<f64>,
    ) {
        let s = self.series;
        // Blocks of the short span (10 minutes; longer on a coarse grid), so a block always
        // holds a few samples.
        let block_ms = self.spec.short_ms.max(self.spec.resolution_ms).max(1);
        let day_ms = DAY_MS;
        let n_blocks = (day_ms / block_ms).max(1) as usize;
        let recent_blocks = ((RECENT_HOURS as i64 * HOUR_MS) / block_ms).max(1) as usize;
        let mut block_sum = vec![[0.0f64; N_TRAJ]; n_blocks];
        let mut block_n = vec![[0u32; N_TRAJ]; n_blocks];
        let day = s.range(t - day_ms, t);
        bucket_runs(s, day.clone(), t, block_ms, |b, run| {
            if b < n_blocks {
                let (sum, n) = run_sums(run);
                for c in 0..N_TRAJ {
                    block_sum[b][c] += sum[c];
                    block_n[b][c] += n[c] as u32;
                }
            }
        });
        let mut flaps = [0.0f64; DAY_HOURS];
        let mut psu_seen = [false; DAY_HOURS];
        let mut prev_psu = f32::NAN;
        for i in day {
            let age = (t - s.ts[i]).max(0);
            let h = ((age / HOUR_MS) as usize).min(DAY_HOURS - 1);
            let psu = s.values[i][metric::PSU];
            if !psu.is_nan() {
                if !prev_psu.is_nan() && psu != prev_psu {
                    flaps[h] += 1.0;
                }
                psu_seen[h] = true;
                prev_psu = psu;
            }
        }

        let n_hours = sums.len();
        let mut hourly = Vec::with_capacity(n_hours);
        for (c, ch) in Traj::ALL.iter().enumerate() {
            hourly.clear();
            hourly.extend((0..n_hours).map(|h| {
                if counts[h][c] > 0.0 {
                    sums[h][c] / counts[h][c]
                } else {
                    f64::NAN
                }
            }));
            let Some(reference) = super::trajectory::reference(&hourly) else {
                out.extend_from_slice(&[f64::NAN; EPISODE_STATS.len()]);
                continue;
            };
            let (eps, floor) = (ch.eps(), ch.floor());
            let excess = |v: f64| match eps {
                Some(e) => (v.max(0.0) + e) / (reference.max(0.0) + e) - 1.0,
                None => v - reference,
            };
            let blocks: Vec<f64> = (0..n_blocks)
                .map(|b| {
                    if block_n[b][c] > 0 {
                        excess(block_sum[b][c] / block_n[b][c] as f64)
                    } else {
                        f64::NAN
                    }
                })
                .collect();
            let peak = blocks
                .iter()
                .copied()
                .filter(|v| !v.is_nan())
                .fold(f64::NAN, f64::max);
            let on_at = (DUTY_SHARE * peak).max(floor);
            let duty = |blocks: &[f64]| {
                let known = blocks.iter().filter(|v| !v.is_nan()).count();
                if known == 0 {
                    return f64::NAN;
                }
                blocks.iter().filter(|&&v| v > on_at).count() as f64 / known as f64
            };
            let hours_excess: Vec<f64> = hourly
                .iter()
                .take(DAY_HOURS)
                .map(|&v| if v.is_nan() { f64::NAN } else { excess(v) })
                .collect();
            let now = hours_excess.first().copied().unwrap_or(f64::NAN);
            let persist = if now.is_nan() || now <= floor {
                0.0
            } else {
                hours_excess
                    .iter()
                    .skip(1)
                    .filter(|&&v| v >= PERSIST_SHARE * now)
                    .count() as f64
            };
            out.extend_from_slice(&[
                duty(&blocks[..recent_blocks.min(n_blocks)]),
                duty(&blocks),
                relative_rise(&hours_excess[..RECENT_HOURS.min(hours_excess.len())], floor),
                relative_rise(&hours_excess, floor),
                persist,
            ]);
        }

        let flap_hours: Vec<f64> = flaps
            .iter()
            .zip(psu_seen)
            .map(|(&f, seen)| if seen { f } else { f64::NAN })
            .collect();
        out.push(relative_rise(&flap_hours, 1.0));
    }
}

/// The least-squares rise over `hours` (index 0 = the last hour; NaN hours skipped) across
/// the whole span, relative to the span's highest value plus `floor`; NaN with fewer than 3
/// known hours.
pub(super) fn relative_rise(hours: &[f64], floor: f64) -> f64 {
    let (mut n, mut sx, mut sy, mut sxx, mut sxy) = (0.0, 0.0, 0.0, 0.0, 0.0);
    let mut peak = f64::NAN;
    for (h, &y) in hours.iter().enumerate() {
        if y.is_nan() {
            continue;
        }
        // Time runs forward: the last hour is the latest.
        let x = -(h as f64);
        n += 1.0;
        sx += x;
        sy += y;
        sxx += x * x;
        sxy += x * y;
        peak = peak.max(y);
    }
    let denom = n * sxx - sx * sx;
    if n < 3.0 || denom.abs() < 1e-12 {
        return f64::NAN;
    }
    let slope = (n * sxy - sx * sy) / denom;
    slope * hours.len() as f64 / (peak.max(0.0) + floor)
}

#[cfg(test)]
mod tests {
    use super::super::{feature_defs, feature_names, WindowSpec, MINUTE_MS};
    use super::*;
    use crate::sample::N_METRICS;
    use crate::trace::NodeSeries;

    /// Three days and an hour at 1-minute sampling, quiet but for what `f(age_ms, row)`
    /// sets; features are read at the last sample.
    fn features_of(f: impl Fn(i64, &mut [f32; N_METRICS])) -> Vec<f64> {
        let n = 73 * 60usize;
        let t = (n as i64 - 1) * MINUTE_MS;
        let s = NodeSeries {
            node: "n".into(),
            ts: (0..n).map(|i| i as i64 * MINUTE_MS).collect(),
            values: (0..n)
                .map(|i| {
                    let mut r = [0.0f32; N_METRICS];
                    r[metric::READ_LAT] = 2.0;
                    r[metric::WRITE_LAT] = 3.0;
                    r[metric::DISK_UTIL] = 0.3;
                    r[metric::TEMP] = f32::NAN;
                    r[metric::PSU] = 1.0;
                    f(t - i as i64 * MINUTE_MS, &mut r);
                    r
                })
                .collect(),
            ..Default::default()
        };
        let mut out = Vec::new();
        WindowFeatures {
            series: &s,
            spec: WindowSpec::default(),
        }
        .extract(t, &mut out);
        assert_eq!(out.len(), feature_names().len());
        out
    }

    fn at(f: &[f64], name: &str) -> f64 {
        f[feature_names().iter().position(|n| n == name).unwrap()]
    }

    /// The 10-minute block a sample `age_ms` old falls in, counted back from the newest.
    fn block(age_ms: i64) -> i64 {
        age_ms / (10 * MINUTE_MS)
    }

    /// A gated precursor (on in one block of three for a day, then on for good for the last
    /// 6 hours; off blocks keep 15% of the loss) is on for nearly all of its last 6 hours;
    /// a benign gated bump at the same levels (on in two blocks of five all day) is not.
    #[test]
    fn a_gated_precursor_has_a_high_recent_duty() {
        let gated = |on: &dyn Fn(i64) -> bool| {
            features_of(|age, r| {
                if age < 24 * HOUR_MS {
                    r[metric::LOSS] = if on(age) { 2.0 } else { 0.3 };
                }
            })
        };
        let precursor = gated(&|age| age < 6 * HOUR_MS || block(age) % 3 == 0);
        let bump = gated(&|age| block(age) % 5 < 2);
        assert!(at(&precursor, "loss_duty_6h") > 0.95, "{precursor:?}");
        let bump_duty = at(&bump, "loss_duty_6h");
        assert!((0.3..0.5).contains(&bump_duty), "{bump_duty}");
        // Over the day both come and go.
        assert!(at(&precursor, "loss_duty_24h") < 0.6);
        assert!(at(&precursor, "loss_duty_24h") > at(&bump, "loss_duty_24h"));
        // A quiet channel is never on.
        assert_eq!(at(&precursor, "err_log_duty_6h"), 0.0);
    }

    /// A benign plateau (kernel errors at a constant rate for 30 hours) has held its level
    /// for the whole day and does not rise; a ramp to the same rate over the last day rises
    /// and has held its level for only its last few hours.
    #[test]
    fn a_plateau_persists_and_a_ramp_rises() {
        let plateau = features_of(|age, r| {
            if age < 30 * HOUR_MS {
                r[metric::ERR_LOG] = 2.0 + 0.2 * ((age / MINUTE_MS) % 3) as f32;
            }
        });
        let ramp = features_of(|age, r| {
            if age < 24 * HOUR_MS {
                r[metric::ERR_LOG] = 2.0 * (1.0 - age as f32 / (24 * HOUR_MS) as f32);
            }
        });
        assert_eq!(at(&plateau, "err_log_persist_24h"), 23.0);
        assert!(at(&plateau, "err_log_trend_24h").abs() < 0.02);
        assert!(at(&plateau, "err_log_trend_6h").abs() < 0.02);
        assert!(at(&ramp, "err_log_persist_24h") <= 8.0);
        assert!(
            at(&ramp, "err_log_trend_24h") > 0.8,
            "{}",
            at(&ramp, "err_log_trend_24h")
        );
        assert!(at(&ramp, "err_log_trend_6h") > 0.15);
        // Directions are declared with the features.
        let dir = |name: &str| feature_defs().into_iter().find(|d| d.name == name).unwrap();
        assert_eq!(dir("err_log_persist_24h").monotone, Monotone::Falls);
        assert_eq!(dir("loss_duty_6h").monotone, Monotone::Rises);
        assert_eq!(dir("psu_down_trend_24h").monotone, Monotone::Rises);
    }

    /// A supply that flaps more and more often over the day has a positive flap trend; one
    /// flapping at a constant rate all day (a benign plateau) has none.
    #[test]
    fn psu_flaps_rising_over_a_day_have_a_positive_trend() {
        // Flaps every `period(hour)` minutes within each hour.
        let flapping = |period: &dyn Fn(i64) -> i64| {
            features_of(|age, r| {
                let minute = age / MINUTE_MS;
                let p = period(age / HOUR_MS);
                r[metric::PSU] = if (minute / p) % 2 == 0 { 1.0 } else { 0.0 };
            })
        };
        // 2 flaps an hour a day ago, 30 in the last hour.
        let rising = flapping(&|h| if h < 24 { 2 + 28 * h / 23 } else { 30 });
        let steady = flapping(&|_| 6);
        let trend = at(&rising, PSU_FLAP_TREND.0);
        assert!(trend > 0.5, "{trend}");
        assert!(at(&steady, PSU_FLAP_TREND.0).abs() < 0.05);
        // A node without the sensor has no trend at all.
        let none = features_of(|_, r| r[metric::PSU] = f32::NAN);
        assert!(at(&none, PSU_FLAP_TREND.0).is_nan());
    }
}
