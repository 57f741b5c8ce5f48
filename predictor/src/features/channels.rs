//! What the window features read from each sample: the channels, each declared once with
//! its name and how its per-sample value is derived, and the per-node load model that
//! takes the effect of load out of latency and temperature.

use crate::sample::{metric, N_METRICS};
use crate::trace::NodeSeries;

/// How risk may move with a feature, declared next to the feature's definition (never
/// guessed from its name): the trees' monotone constraint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Monotone {
    /// Risk may only rise with the feature.
    Rises,
    /// Risk may only fall with the feature.
    Falls,
    /// Unconstrained.
    Free,
}

impl Monotone {
    /// The sign the tree learner takes (+1, -1, 0).
    pub fn sign(self) -> i8 {
        match self {
            Monotone::Rises => 1,
            Monotone::Falls => -1,
            Monotone::Free => 0,
        }
    }
}

/// Level channels: per-sample values whose level, spread and trend matter.
///
/// Features of a level channel are relative to the node's own baseline (ratios, z-scores,
/// relative slope), because absolute latencies differ 50x between hardware generations and
/// alone would let the trees memorise *which* nodes failed in training instead of *how*
/// failing nodes look. Latency, loss and temperature also get absolute levels (a 60 ms read
/// or 70 °C is bad on any machine); the monotone constraints keep the trees from using them
/// as a node fingerprint.
///
/// CPU and disk utilisation are deliberately absent: they follow tenant load, and with few
/// failures to learn from, trees latch onto load swings that happen to precede a failure.
/// They still reach the model through the autoencoder and the load-normalised latency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Level {
    /// Read latency with this node's learned load effect removed ([`LoadModel`]).
    ReadLatNorm,
    /// Write latency, likewise.
    WriteLatNorm,
    /// Raw read latency.
    ReadLat,
    /// Round-trip time to peers.
    Rtt,
    /// Packet loss.
    Loss,
    /// Temperature.
    Temp,
}

impl Level {
    /// Every level channel, in feature order.
    pub(crate) const ALL: [Level; 6] = [
        Level::ReadLatNorm,
        Level::WriteLatNorm,
        Level::ReadLat,
        Level::Rtt,
        Level::Loss,
        Level::Temp,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Level::ReadLatNorm => "read_lat_norm",
            Level::WriteLatNorm => "write_lat_norm",
            Level::ReadLat => "read_lat",
            Level::Rtt => "rtt",
            Level::Loss => "loss",
            Level::Temp => "temp",
        }
    }

    /// Whether the channel also gets absolute levels (bad on any machine).
    pub(crate) fn absolute(self) -> bool {
        self != Level::Rtt
    }

    /// Whether changes are differences (°C) rather than ratios.
    pub(crate) fn by_difference(self) -> bool {
        self == Level::Temp
    }

    /// The channel's value in one sample.
    pub(crate) fn value(self, row: &[f32; N_METRICS], load: &LoadModel) -> f64 {
        match self {
            Level::ReadLatNorm => load.read.normalise(row[metric::READ_LAT], row),
            Level::WriteLatNorm => load.write.normalise(row[metric::WRITE_LAT], row),
            Level::ReadLat => row[metric::READ_LAT] as f64,
            Level::Rtt => row[metric::RTT] as f64,
            Level::Loss => row[metric::LOSS] as f64,
            Level::Temp => row[metric::TEMP] as f64,
        }
    }
}

/// Count channels (per-minute rates after resampling).
pub(crate) const COUNT_CHANNELS: [(&str, usize); 2] = [
    ("err_log", metric::ERR_LOG),
    ("net_errors", metric::NET_ERR),
];

/// Trajectory channels: per-sample signals whose hourly means are followed over the whole
/// baseline span to tell *how far along* an episode is, not only how bad it is now.
///
/// Why: a precursor that began two days ago and one that began two hours ago can look alike
/// right now, but the first will usually fail much later — more than H later, where an
/// alert is a false positive. And a benign episode often recovers while a real one often
/// does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Traj {
    ReadLatNorm,
    WriteLatNorm,
    Loss,
    /// Temperature with this node's CPU-load effect removed.
    TempResid,
    ErrLog,
    NetErrors,
    /// 1 while the power supply is down.
    PsuDown,
}

impl Traj {
    /// Every trajectory channel, in feature order.
    pub(crate) const ALL: [Traj; 7] = [
        Traj::ReadLatNorm,
        Traj::WriteLatNorm,
        Traj::Loss,
        Traj::TempResid,
        Traj::ErrLog,
        Traj::NetErrors,
        Traj::PsuDown,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Traj::ReadLatNorm => "read_lat_norm",
            Traj::WriteLatNorm => "write_lat_norm",
            Traj::Loss => "loss",
            Traj::TempResid => "temp_resid",
            Traj::ErrLog => "err_log",
            Traj::NetErrors => "net_errors",
            Traj::PsuDown => "psu_down",
        }
    }

    /// The offset used in ratios (the unit's noise floor); `None`: compare by difference
    /// (temperature residual in °C, PSU down fraction).
    pub(crate) fn eps(self) -> Option<f64> {
        match self {
            Traj::ReadLatNorm | Traj::WriteLatNorm => Some(1e-3),
            Traj::Loss | Traj::ErrLog => Some(0.01),
            Traj::NetErrors => Some(0.05),
            Traj::TempResid | Traj::PsuDown => None,
        }
    }

    /// The excess over the reference below which the channel counts as quiet (ratio - 1,
    /// or the difference's unit).
    pub(crate) fn floor(self) -> f64 {
        match self {
            Traj::ReadLatNorm | Traj::WriteLatNorm => 0.2,
            Traj::PsuDown => 0.02,
            _ => 1.0,
        }
    }

    /// The channel's value in one sample.
    pub(crate) fn value(self, row: &[f32; N_METRICS], load: &LoadModel) -> f64 {
        match self {
            Traj::ReadLatNorm => Level::ReadLatNorm.value(row, load),
            Traj::WriteLatNorm => Level::WriteLatNorm.value(row, load),
            Traj::Loss => row[metric::LOSS] as f64,
            Traj::TempResid => {
                row[metric::TEMP] as f64 - load.temp_per_cpu * row[metric::CPU] as f64
            }
            Traj::ErrLog => row[metric::ERR_LOG] as f64,
            Traj::NetErrors => row[metric::NET_ERR] as f64,
            Traj::PsuDown => 1.0 - row[metric::PSU] as f64,
        }
    }
}

/// `ln(lat)` of a latency the load fit may use (measured, finite, positive), NaN otherwise.
#[inline]
pub(crate) fn ln_latency(lat: f32) -> f64 {
    let lat = lat as f64;
    if lat.is_finite() && lat > 0.0 {
        lat.ln()
    } else {
        f64::NAN
    }
}

/// `e^x` for `|x| <= 3` (the clamped load effect), to within a few units in the last place
/// of `f64::exp` (NaN stays NaN; accurate up to `|x| = 700`). Why not the library's: it is a
/// call through the PLT with error handling for the whole real line, and training takes
/// ~9,000 of these per round; this one has no branch, call or table, so a loop of them
/// vectorises. Range reduction `x = k ln 2 + r` (`|r| <= ln 2 / 2`, `ln 2` split so
/// `k ln 2` is exact), the Taylor series of `e^r` to degree 13 (truncation below 1e-17 on
/// that interval) in Estrin's form (short dependency chains), then `2^k` from the bits.
#[inline]
pub(crate) fn exp_clamped(x: f64) -> f64 {
    // ln 2 with its low 32 bits cleared (k * LN2_HI is exact for |k| < 2^20), and the rest.
    const LN2_HI: f64 = f64::from_bits(std::f64::consts::LN_2.to_bits() & 0xffff_ffff_0000_0000);
    const LN2_LO: f64 = std::f64::consts::LN_2 - LN2_HI;
    // Adding 1.5 * 2^52 rounds to an integer (ties to even) and leaves it in the low bits.
    const ROUND: f64 = 6_755_399_441_055_744.0;
    let x = x.clamp(-700.0, 700.0);
    let shifted = x * std::f64::consts::LOG2_E + ROUND;
    let k = shifted - ROUND;
    let r = (x - k * LN2_HI) - k * LN2_LO;
    let c = &INV_FACT;
    let r2 = r * r;
    let r4 = r2 * r2;
    let r8 = r4 * r4;
    let q0 = (c[0] + c[1] * r) + r2 * (c[2] + c[3] * r);
    let q1 = (c[4] + c[5] * r) + r2 * (c[6] + c[7] * r);
    let q2 = (c[8] + c[9] * r) + r2 * (c[10] + c[11] * r);
    let q3 = c[12] + c[13] * r;
    let p = (q0 + r4 * q1) + r8 * (q2 + r4 * q3);
    // 2^k: the low 12 bits of k + 1023 (k sits in the low bits of `shifted`) as the
    // exponent field.
    p * f64::from_bits(shifted.to_bits().wrapping_add(1023) << 52)
}

/// 1 / j! for j = 0..=13.
const INV_FACT: [f64; 14] = {
    let mut t = [1.0f64; 14];
    let mut j = 1;
    while j < 14 {
        t[j] = t[j - 1] / j as f64;
        j += 1;
    }
    t
};

/// How one latency depends on disk utilisation on this node: `log(latency)` as a quadratic
/// in utilisation, fitted on the node's own past. `normalise` divides the load effect out,
/// leaving the latency this node would show idle.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct LatencyLoad {
    /// Mean utilisation of the fit (the quadratic is centred there).
    u0: f64,
    /// Slope and curvature of `log(latency)` in `utilisation - u0`.
    b: f64,
    c: f64,
}

impl LatencyLoad {
    /// The load effect at utilisation `u` relative to an idle device, in log units.
    #[inline]
    fn effect(&self, u: f64) -> f64 {
        let at = |u: f64| {
            let x = u - self.u0;
            self.b * x + self.c * x * x
        };
        (at(u) - at(0.0)).clamp(-3.0, 3.0)
    }

    /// `lat` with the load effect of this sample's utilisation removed (NaN when either is
    /// unmeasured).
    pub(crate) fn normalise(&self, lat: f32, row: &[f32; N_METRICS]) -> f64 {
        let u = row[metric::DISK_UTIL] as f64;
        lat as f64 * (-self.effect(u.clamp(0.0, 1.0))).exp()
    }

    /// [`Self::normalise`] with [`exp_clamped`] instead of the C library's `exp`: equal to
    /// within a few units in the last place. Training computes this for every sample of
    /// every 72-hour window of every round (about 9,000 per round), where the library call
    /// was a third of the feature time.
    #[inline]
    pub(crate) fn normalise_fast(&self, lat: f32, row: &[f32; N_METRICS]) -> f64 {
        let u = row[metric::DISK_UTIL] as f64;
        lat as f64 * exp_clamped(-self.effect(u.clamp(0.0, 1.0)))
    }

    /// [`Self::normalise_fast`] of many samples: `out[j]` for latency `lat[j]` at
    /// utilisation `util[j]` (already clamped to [0, 1]). Columns in, column out, no
    /// branch: the compiler vectorises the loop.
    ///
    /// Training spends a fifth of its feature time here (8,640 samples a round), so on
    /// x86-64 the loop also runs in a copy compiled for AVX-512 or AVX2 (8 or 4 lanes instead
    /// of SSE2's 2) when the CPU has them. The results are the same to the bit: each lane
    /// does the same IEEE operations in the same order (Rust never fuses a multiply and an
    /// add on its own), so which copy runs changes no feature value.
    pub(crate) fn normalise_many(&self, lat: &[f64], util: &[f64], out: &mut [f64]) {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has AVX-512F, the only feature the copy is compiled for.
                return unsafe { self.normalise_many_avx512(lat, util, out) };
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU has AVX2, the only feature the copy is compiled for.
                return unsafe { self.normalise_many_avx2(lat, util, out) };
            }
        }
        self.normalise_many_portable(lat, util, out)
    }

    /// [`Self::normalise_many`] compiled for AVX-512F.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    fn normalise_many_avx512(&self, lat: &[f64], util: &[f64], out: &mut [f64]) {
        self.normalise_many_portable(lat, util, out)
    }

    /// [`Self::normalise_many`] compiled for AVX2.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn normalise_many_avx2(&self, lat: &[f64], util: &[f64], out: &mut [f64]) {
        self.normalise_many_portable(lat, util, out)
    }

    /// The loop itself, inlined into each compiled copy.
    #[inline(always)]
    fn normalise_many_portable(&self, lat: &[f64], util: &[f64], out: &mut [f64]) {
        let (u0, b, c) = (self.u0, self.b, self.c);
        // `effect`'s arithmetic, with its idle term computed once.
        let idle = {
            let x = 0.0 - u0;
            b * x + c * x * x
        };
        for ((o, &l), &u) in out.iter_mut().zip(lat).zip(util) {
            let x = u - u0;
            let effect = (b * x + c * x * x - idle).clamp(-3.0, 3.0);
            *o = l * exp_clamped(-effect);
        }
    }

    /// Least-squares fit of `log(lat)` on `u` and `u²` (centred); linear when the curvature
    /// is not identifiable, and no correction at all when utilisation hardly varies.
    fn fit(points: &[(f64, f64)]) -> LatencyLoad {
        let n = points.len() as f64;
        if points.len() < 30 {
            return LatencyLoad::default();
        }
        let u0 = points.iter().map(|p| p.0).sum::<f64>() / n;
        let y0 = points.iter().map(|p| p.1).sum::<f64>() / n;
        let (mut s2, mut s3, mut s4, mut sy1, mut sy2) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for &(u, y) in points {
            let (x, y) = (u - u0, y - y0);
            s2 += x * x;
            s3 += x * x * x;
            s4 += x * x * x * x;
            sy1 += x * y;
            sy2 += x * x * y;
        }
        // Utilisation must span a few percent for a slope to mean anything.
        if s2 / n < 1e-4 {
            return LatencyLoad {
                u0,
                ..Default::default()
            };
        }
        // Normal equations for [x, x² - mean(x²)] (the intercept is absorbed by centring).
        let m2 = s2 / n;
        let (a11, a12) = (s2, s3);
        let a22 = s4 - n * m2 * m2;
        let (r1, r2) = (sy1, sy2);
        let det = a11 * a22 - a12 * a12;
        let (b, c) = if det > 1e-9 * a11 * a22.max(1e-12) {
            ((r1 * a22 - a12 * r2) / det, (a11 * r2 - a12 * r1) / det)
        } else {
            (r1 / a11, 0.0)
        };
        // A latency that falls steeply with load is noise in the fit, not physics.
        LatencyLoad {
            u0,
            b: b.clamp(-1.0, 10.0),
            c: c.clamp(-20.0, 20.0),
        }
    }
}

/// The load effects of one node, learned from its own past at each scoring time: latency
/// against disk utilisation (queueing makes a busy healthy disk slow; a sick disk is slow at
/// any load) and temperature against CPU load (a busy afternoon is not a thermal episode).
///
/// Why learned per node rather than a formula: the relation differs by device, firmware and
/// workload, and a fixed queueing formula is only right for the fleet it was derived from
/// (it was our own generator's). The fit reads the node's baseline span *before* the long
/// window, so an episode of the last hours does not teach the fit to explain it away.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct LoadModel {
    pub(crate) read: LatencyLoad,
    pub(crate) write: LatencyLoad,
    /// °C per unit of CPU utilisation (0..50).
    pub(crate) temp_per_cpu: f64,
}

impl LoadModel {
    /// Fits on the samples of `past` (indices into `s`), read with a stride so a 5-second
    /// history costs what a 1-minute one does; `fallback` is used when `past` holds too few.
    pub(crate) fn fit(
        s: &NodeSeries,
        past: std::ops::Range<usize>,
        fallback: std::ops::Range<usize>,
    ) -> LoadModel {
        Self::fit_with(s, past, fallback, |i| {
            let v = &s.values[i];
            [
                ln_latency(v[metric::READ_LAT]),
                ln_latency(v[metric::WRITE_LAT]),
            ]
        })
    }

    /// [`Self::fit`] with the log latencies (read, write) of sample `i` from `ln_lat`
    /// ([`ln_latency`] of each): many rounds of one node fit on overlapping samples, so
    /// training takes each logarithm once per sample instead of once per round.
    pub(crate) fn fit_with(
        s: &NodeSeries,
        past: std::ops::Range<usize>,
        fallback: std::ops::Range<usize>,
        ln_lat: impl Fn(usize) -> [f64; 2],
    ) -> LoadModel {
        let r = if past.len() >= 60 { past } else { fallback };
        let stride = (r.len() / 720).max(1);
        let mut read = Vec::with_capacity(r.len() / stride + 1);
        let mut write = Vec::with_capacity(r.len() / stride + 1);
        let (mut n, mut sx, mut sy, mut sxx, mut sxy) = (0.0, 0.0, 0.0, 0.0, 0.0);
        let mut i = r.start;
        while i < r.end {
            let v = &s.values[i];
            let u = v[metric::DISK_UTIL] as f64;
            let [ln_read, ln_write] = ln_lat(i);
            for (ln, out) in [(ln_read, &mut read), (ln_write, &mut write)] {
                if u.is_finite() && !ln.is_nan() {
                    out.push((u.clamp(0.0, 1.0), ln));
                }
            }
            let (cpu, temp) = (v[metric::CPU] as f64, v[metric::TEMP] as f64);
            if cpu.is_finite() && temp.is_finite() {
                n += 1.0;
                sx += cpu;
                sy += temp;
                sxx += cpu * cpu;
                sxy += cpu * temp;
            }
            i += stride;
        }
        let var = n * sxx - sx * sx;
        let temp_per_cpu = if n >= 10.0 && var > 1e-9 {
            ((n * sxy - sx * sy) / var).clamp(0.0, 50.0)
        } else {
            0.0
        };
        LoadModel {
            read: LatencyLoad::fit(&read),
            write: LatencyLoad::fit(&write),
            temp_per_cpu,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every compiled copy of the batch normalisation gives `normalise_fast`'s bits, one
    /// sample at a time, over latencies and utilisations with NaNs, zeros, subnormals, the
    /// ends of the utilisation range and loads that hit the effect's clamp, at lengths that
    /// leave a loop tail.
    #[test]
    fn batch_normalisation_equals_one_at_a_time_to_the_bit() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let fits = [
            LatencyLoad::default(),
            LatencyLoad {
                u0: 0.4,
                b: 2.5,
                c: 6.0,
            },
            LatencyLoad {
                u0: 0.1,
                b: 10.0,
                c: 20.0,
            },
            LatencyLoad {
                u0: 0.7,
                b: -1.0,
                c: -20.0,
            },
        ];
        for n in [0, 1, 7, 8, 9, 31, 1000] {
            let lat: Vec<f64> = (0..n)
                .map(|_| match rng.gen_range(0..10) {
                    0 => f64::NAN,
                    1 => 0.0,
                    2 => f64::MIN_POSITIVE / 4.0,
                    3 => 1e30,
                    _ => rng.gen_range(0.0..50.0),
                })
                .collect();
            let util: Vec<f64> = (0..n)
                .map(|_| match rng.gen_range(0..8) {
                    0 => f64::NAN,
                    1 => 0.0,
                    2 => 1.0,
                    _ => rng.gen_range(0.0..1.0),
                })
                .collect();
            for fit in &fits {
                let want: Vec<u64> = lat
                    .iter()
                    .zip(&util)
                    .map(|(&l, &u)| {
                        let mut row = [0.0f32; N_METRICS];
                        row[metric::DISK_UTIL] = u as f32;
                        fit.normalise_fast(l as f32, &row).to_bits()
                    })
                    .collect();
                // The batch reads the same f32 samples widened (as `Columns` holds them),
                // its utilisation already clamped.
                let lat32: Vec<f64> = lat.iter().map(|&l| l as f32 as f64).collect();
                let util32: Vec<f64> = util
                    .iter()
                    .map(|&u| (u as f32 as f64).clamp(0.0, 1.0))
                    .collect();
                let mut out = vec![0.0; n];
                let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                fit.normalise_many(&lat32, &util32, &mut out);
                assert_eq!(bits(&out), want, "dispatched, n {n}, {fit:?}");
                fit.normalise_many_portable(&lat32, &util32, &mut out);
                assert_eq!(bits(&out), want, "portable, n {n}, {fit:?}");
                #[cfg(target_arch = "x86_64")]
                {
                    if std::arch::is_x86_feature_detected!("avx2") {
                        // SAFETY: the CPU has AVX2.
                        unsafe { fit.normalise_many_avx2(&lat32, &util32, &mut out) };
                        assert_eq!(bits(&out), want, "avx2, n {n}, {fit:?}");
                    }
                    if std::arch::is_x86_feature_detected!("avx512f") {
                        // SAFETY: the CPU has AVX-512F.
                        unsafe { fit.normalise_many_avx512(&lat32, &util32, &mut out) };
                        assert_eq!(bits(&out), want, "avx512, n {n}, {fit:?}");
                    }
                }
            }
        }
    }

    /// The fit recovers a queueing curve it was never told about, and removes it: the same
    /// device at 20% and 70% utilisation normalises to the same idle latency.
    #[test]
    fn learns_the_load_effect_of_latency_per_node() {
        let points: Vec<(f64, f64)> = (0..400)
            .map(|i| {
                let u = 0.1 + 0.7 * (i as f64 / 400.0);
                (u, (3.0 / (1.0 - 0.85 * u)).ln())
            })
            .collect();
        let fit = LatencyLoad::fit(&points);
        let row = |u: f32| {
            let mut r = [f32::NAN; N_METRICS];
            r[metric::DISK_UTIL] = u;
            r
        };
        let lo = fit.normalise((3.0 / (1.0 - 0.85 * 0.2)) as f32, &row(0.2));
        let hi = fit.normalise((3.0 / (1.0 - 0.85 * 0.7)) as f32, &row(0.7));
        assert!(
            (lo - 3.0).abs() < 0.15 && (hi - 3.0).abs() < 0.15,
            "{lo} {hi}"
        );
        // A slow disk stays slow after normalisation.
        let sick = fit.normalise((18.0 / (1.0 - 0.85 * 0.4)) as f32, &row(0.4));
        assert!(sick > 5.0 * lo, "{sick}");
        // Constant utilisation: nothing to learn, nothing removed.
        let flat: Vec<(f64, f64)> = (0..100).map(|i| (0.5, (i % 3) as f64)).collect();
        let none = LatencyLoad::fit(&flat);
        assert_eq!(none.normalise(4.0, &row(0.9)), 4.0);
        // Unmeasured utilisation or latency stays unmeasured.
        assert!(fit.normalise(f32::NAN, &row(0.2)).is_nan());
    }
}
