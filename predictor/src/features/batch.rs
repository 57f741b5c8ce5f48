//! Window features and autoencoder inputs of one node at many scoring times: the values of
//! [`WindowFeatures::extract`] and [`Normaliser::sequence`], computed for a whole series.
//!
//! Why a second path: training featurises every 5-minute round of every node, each over a
//! 72-hour baseline, so each sample was read about 860 times, and each time its
//! load-normalised latencies (two library `exp` calls), its log latencies for the load fit
//! and its normalised autoencoder inputs were recomputed: 598 of the 1080 CPU-seconds of
//! training 500 nodes x 30 days. Here what does not depend on the round (log latencies,
//! normalised inputs) is computed once per sample; what does (latency with this round's
//! load effect removed) once per sample and round, shared by the level and trajectory
//! features, with an inlined exponential ([`super::channels::exp_clamped`]). Every sum
//! keeps `extract`'s order of summation, so the only difference is that exponential, in
//! the last bits (tested against `extract` on a generated trace, to 1e-9 relative).

use ndarray::Array2;

use super::channels::{ln_latency, Level, LoadModel, Traj};
use super::episode::DAY_MS;
use super::trajectory::{bucket_runs, hour_stride, n_hours, sum_run, RunSums, N_TRAJ};
use super::{Normaliser, Spans, WindowFeatures, HOUR_MS};
use crate::sample::{metric, N_METRICS};
use crate::trace::NodeSeries;

/// Below this many scoring times per-sample columns are not worth building: scoring one
/// window reads only a strided subset of its baseline for the load fit.
const MIN_TIMES_FOR_COLUMNS: usize = 4;

/// One node's series prepared for scoring at many times (see the module documentation).
pub(crate) struct BatchFeatures<'a> {
    wf: WindowFeatures<'a>,
    normaliser: &'a Normaliser,
    /// Per-sample columns the load fit and normalisation read.
    cols: Option<Columns>,
    /// Normalised autoencoder inputs ([`Normaliser::apply`]) from sample `norm_lo` on.
    norm: Option<Vec<[f64; N_METRICS]>>,
    norm_lo: usize,
    /// The earliest and latest time given: the columns serve times within.
    span: (i64, i64),
    /// Per-round buffers, kept to avoid reallocating them every round.
    scratch: Scratch,
}

/// Columns of the samples from `lo` on (every sample a window ending at one of the times
/// reads for the load fit and its normalisation).
struct Columns {
    lo: usize,
    /// Log read and write latencies ([`ln_latency`]).
    ln_lat: Vec<[f64; 2]>,
    /// Read and write latencies.
    lat: [Vec<f64>; 2],
    /// Disk utilisation clamped to [0, 1].
    util: Vec<f64>,
}

#[derive(Default)]
struct Scratch {
    /// Load-normalised read and write latency of every baseline sample of the round.
    read: Vec<f64>,
    write: Vec<f64>,
    /// Hourly sums and counts of the trajectory channels.
    sums: Vec<[f64; N_TRAJ]>,
    counts: Vec<[f64; N_TRAJ]>,
    /// Every trajectory channel of the samples the hourly sums and the episode features read
    /// (the whole baseline when the hourly sums read every sample, else the last day), in
    /// [`LANES`] lanes.
    vals: Vec<[f64; LANES]>,
}

impl<'a> BatchFeatures<'a> {
    /// Prepares `series` (resampled, see [`NodeSeries::resample`]) for scoring at `times`
    /// (any order): columns cover every sample the windows ending at those times read.
    pub(crate) fn new(
        series: &'a NodeSeries,
        spec: super::WindowSpec,
        normaliser: &'a Normaliser,
        times: &[i64],
    ) -> BatchFeatures<'a> {
        let mut b = BatchFeatures {
            wf: WindowFeatures { series, spec },
            normaliser,
            cols: None,
            norm: None,
            norm_lo: 0,
            span: (i64::MAX, i64::MIN),
            scratch: Scratch::default(),
        };
        let (Some(&t_min), Some(&t_max)) = (times.iter().min(), times.iter().max()) else {
            return b;
        };
        if times.len() < MIN_TIMES_FOR_COLUMNS {
            return b;
        }
        b.span = (t_min, t_max);
        let hi = series.range(t_max, t_max).end;
        let seq_span = spec.seq_step_ms * spec.seq_len as i64;
        let lo = series.range(t_min - spec.baseline_ms, t_max).start;
        let rows = &series.values[lo..hi.max(lo)];
        b.cols = Some(Columns {
            lo,
            ln_lat: rows
                .iter()
                .map(|v| {
                    [
                        ln_latency(v[metric::READ_LAT]),
                        ln_latency(v[metric::WRITE_LAT]),
                    ]
                })
                .collect(),
            lat: [
                column(rows, |v| v[metric::READ_LAT] as f64),
                column(rows, |v| v[metric::WRITE_LAT] as f64),
            ],
            util: column(rows, |v| (v[metric::DISK_UTIL] as f64).clamp(0.0, 1.0)),
        });
        b.norm_lo = series.range(t_min - seq_span, t_max).start;
        b.norm = Some(
            series.values[b.norm_lo..hi.max(b.norm_lo)]
                .iter()
                .map(|v| std::array::from_fn(|m| normaliser.apply(m, v[m])))
                .collect(),
        );
        b
    }

    /// The autoencoder input sequence ending at `t` ([`Normaliser::sequence`]).
    pub(crate) fn sequence(&self, t: i64) -> Array2<f64> {
        let (s, spec) = (self.wf.series, &self.wf.spec);
        match self.norm.as_ref().filter(|_| self.covers(t)) {
            Some(norm) => {
                let lo = self.norm_lo;
                self.normaliser
                    .sequence_with(s, t, spec, |i, m| norm[i - lo][m])
            }
            None => self.normaliser.sequence(s, t, spec),
        }
    }

    /// Whether the columns cover the windows ending at `t`.
    fn covers(&self, t: i64) -> bool {
        (self.span.0..=self.span.1).contains(&t)
    }

    /// Appends the window features at `t` to `out` ([`WindowFeatures::extract`]).
    pub(crate) fn extract(&mut self, t: i64, out: &mut Vec<f64>) {
        let wf = self.wf;
        let s = wf.series;
        let spans = Spans::at(s, &wf.spec, t);
        let base = spans.base.clone();
        let past = base.start..spans.long.start;
        let cols = self.cols.as_ref().filter(|_| self.covers(t));
        let load = match cols {
            Some(cols) => LoadModel::fit_with(s, past, base.clone(), |i| cols.ln_lat[i - cols.lo]),
            None => LoadModel::fit(s, past, base.clone()),
        };
        // This round's load-normalised latencies of every baseline sample, read by both
        // the level and the trajectory features.
        let sc = &mut self.scratch;
        sc.read.clear();
        sc.write.clear();
        match cols {
            Some(cols) => {
                let r = base.start - cols.lo..base.end - cols.lo;
                sc.read.resize(base.len(), 0.0);
                sc.write.resize(base.len(), 0.0);
                let util = &cols.util[r.clone()];
                load.read
                    .normalise_many(&cols.lat[0][r.clone()], util, &mut sc.read);
                load.write
                    .normalise_many(&cols.lat[1][r], util, &mut sc.write);
            }
            None => {
                for row in &s.values[base.clone()] {
                    sc.read
                        .push(load.read.normalise_fast(row[metric::READ_LAT], row));
                    sc.write
                        .push(load.write.normalise_fast(row[metric::WRITE_LAT], row));
                }
            }
        }
        let b0 = base.start;
        let (read, write) = (sc.read.as_slice(), sc.write.as_slice());
        // Indices below the baseline only occur with a baseline shorter than half an hour.
        let norm = |lat: &[f64], i: usize| lat.get(i.wrapping_sub(b0)).copied();
        wf.levels(
            t,
            &spans,
            |ch, i| {
                let buffered = match ch {
                    Level::ReadLatNorm => norm(read, i),
                    Level::WriteLatNorm => norm(write, i),
                    _ => None,
                };
                buffered.unwrap_or_else(|| ch.value(&s.values[i], &load))
            },
            out,
        );
        wf.rates(&spans, out);

        // Every trajectory channel of the samples the hourly sums and the episode features
        // read (the whole baseline when the hourly sums read every sample, else the last
        // day), once per round, padded to eight lanes so a run of them sums as vectors.
        let k = load.temp_per_cpu;
        let channels = |i: usize| -> [f64; N_TRAJ] {
            let row = &s.values[i];
            // Traj::ALL order; the values of `Traj::value`.
            [
                norm(read, i).unwrap_or_else(|| Traj::ReadLatNorm.value(row, &load)),
                norm(write, i).unwrap_or_else(|| Traj::WriteLatNorm.value(row, &load)),
                row[metric::LOSS] as f64,
                row[metric::TEMP] as f64 - k * row[metric::CPU] as f64,
                row[metric::ERR_LOG] as f64,
                row[metric::NET_ERR] as f64,
                1.0 - row[metric::PSU] as f64,
            ]
        };
        let n_hours = n_hours(&wf.spec);
        let stride = hour_stride(&base, n_hours);
        // A stride above 1 needs a grid finer than a minute, which resampling never gives
        // (the sums then read one sample in `stride`, per sample as before).
        let lo = if stride == 1 {
            base.start
        } else {
            s.range(t - DAY_MS, t).start.max(base.start)
        };
        sc.vals.clear();
        sc.vals.extend((lo..base.end).map(|i| lanes(channels(i))));
        let vals = sc.vals.as_slice();
        let cached = |i: usize| i.checked_sub(lo).and_then(|j| vals.get(j));
        let values = |i: usize| match cached(i) {
            Some(v) => std::array::from_fn(|c| v[c]),
            None => channels(i),
        };
        let run_sums = |r: std::ops::Range<usize>| match r.start.checked_sub(lo) {
            Some(j) if r.end <= lo + vals.len() => sum_lanes(&vals[j..r.end - lo]),
            _ => sum_run(r, values),
        };

        // Hourly sums of the trajectory channels, in `trajectory`'s order of summation: the
        // hour only falls as the index rises, so each hour is one run of samples.
        sc.sums.clear();
        sc.sums.resize(n_hours, [0.0; N_TRAJ]);
        sc.counts.clear();
        sc.counts.resize(n_hours, [0.0; N_TRAJ]);
        bucket_runs(s, base.clone(), t, HOUR_MS, |h, run| {
            if h < n_hours {
                let (sum, n) = if stride == 1 {
                    run_sums(run)
                } else {
                    sum_run(
                        run.filter(|i| (i - base.start).is_multiple_of(stride)),
                        values,
                    )
                };
                add_hour(&mut sc.sums[h], &mut sc.counts[h], &sum, &n);
            }
        });
        wf.trajectory_stats(t, &sc.sums, &sc.counts, values, out);
        wf.episode_stats(t, &sc.sums, &sc.counts, run_sums, out);
    }
}

/// Vector lanes of one sample's trajectory channels: the seven, then a NaN that no sum
/// counts.
const LANES: usize = 8;

/// One sample's trajectory channels as [`LANES`] lanes.
fn lanes(v: [f64; N_TRAJ]) -> [f64; LANES] {
    std::array::from_fn(|c| v.get(c).copied().unwrap_or(f64::NAN))
}

/// [`sum_run`] of a run of samples already in lanes, to the bit: each lane adds its
/// channel's values in order from zero, a NaN adding 0 (a sum that starts at +0 never
/// becomes -0, so adding 0 leaves it unchanged) and its count 0. The hourly sums and the
/// episode blocks are most of the remaining feature time (about 30,000 additions a round),
/// so on x86-64 the sums run as AVX-512 or AVX2 vectors when the CPU has them: lane by
/// lane the same IEEE additions in the same order, so the same bits.
fn sum_lanes(run: &[[f64; LANES]]) -> RunSums {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F, which the copy is compiled for.
            return unsafe { sum_lanes_avx512(run) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2, which the copy is compiled for.
            return unsafe { sum_lanes_avx2(run) };
        }
    }
    sum_lanes_portable(run)
}

/// [`sum_lanes`] with AVX-512F: one vector per sample, the sums and counts of its known
/// lanes added under a mask (a NaN lane is left as it was, exactly as [`sum_run`] skips it).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn sum_lanes_avx512(run: &[[f64; LANES]]) -> RunSums {
    use std::arch::x86_64::*;
    let mut sum = _mm512_setzero_pd();
    let mut n = _mm512_setzero_pd();
    let one = _mm512_set1_pd(1.0);
    for v in run {
        // SAFETY: `v` is 8 f64s; the load is unaligned.
        let x = unsafe { _mm512_loadu_pd(v.as_ptr()) };
        let known = _mm512_cmp_pd_mask::<_CMP_ORD_Q>(x, x);
        sum = _mm512_mask_add_pd(sum, known, sum, x);
        n = _mm512_mask_add_pd(n, known, n, one);
    }
    let (mut s, mut k) = ([0.0f64; LANES], [0.0f64; LANES]);
    // SAFETY: each array is 8 f64s; the stores are unaligned.
    unsafe {
        _mm512_storeu_pd(s.as_mut_ptr(), sum);
        _mm512_storeu_pd(k.as_mut_ptr(), n);
    }
    (std::array::from_fn(|c| s[c]), std::array::from_fn(|c| k[c]))
}

/// [`sum_lanes`] with AVX2: two vectors per sample, a NaN lane adding +0 (which leaves a sum
/// that started at +0 unchanged, see [`sum_lanes`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn sum_lanes_avx2(run: &[[f64; LANES]]) -> RunSums {
    use std::arch::x86_64::*;
    let (mut s_lo, mut s_hi) = (_mm256_setzero_pd(), _mm256_setzero_pd());
    let (mut n_lo, mut n_hi) = (_mm256_setzero_pd(), _mm256_setzero_pd());
    let one = _mm256_set1_pd(1.0);
    for v in run {
        // SAFETY: `v` is 8 f64s; both loads are unaligned and within it.
        let (lo, hi) = unsafe {
            (
                _mm256_loadu_pd(v.as_ptr()),
                _mm256_loadu_pd(v.as_ptr().add(4)),
            )
        };
        let (k_lo, k_hi) = (
            _mm256_cmp_pd::<_CMP_ORD_Q>(lo, lo),
            _mm256_cmp_pd::<_CMP_ORD_Q>(hi, hi),
        );
        s_lo = _mm256_add_pd(s_lo, _mm256_and_pd(lo, k_lo));
        s_hi = _mm256_add_pd(s_hi, _mm256_and_pd(hi, k_hi));
        n_lo = _mm256_add_pd(n_lo, _mm256_and_pd(one, k_lo));
        n_hi = _mm256_add_pd(n_hi, _mm256_and_pd(one, k_hi));
    }
    let (mut s, mut k) = ([0.0f64; LANES], [0.0f64; LANES]);
    // SAFETY: each array is 8 f64s; the stores are unaligned and within them.
    unsafe {
        _mm256_storeu_pd(s.as_mut_ptr(), s_lo);
        _mm256_storeu_pd(s.as_mut_ptr().add(4), s_hi);
        _mm256_storeu_pd(k.as_mut_ptr(), n_lo);
        _mm256_storeu_pd(k.as_mut_ptr().add(4), n_hi);
    }
    (std::array::from_fn(|c| s[c]), std::array::from_fn(|c| k[c]))
}

/// The same sums without vector instructions (other CPUs).
fn sum_lanes_portable(run: &[[f64; LANES]]) -> RunSums {
    sum_run(0..run.len(), |i| std::array::from_fn(|c| run[i][c]))
}

/// One value per row.
fn column(rows: &[[f32; N_METRICS]], f: impl Fn(&[f32; N_METRICS]) -> f64) -> Vec<f64> {
    rows.iter().map(f).collect()
}

/// Adds one run's sums and counts to an hour's (which start at zero, so a single run gives
/// exactly the sums of adding its samples one by one).
fn add_hour(
    sums: &mut [f64; N_TRAJ],
    counts: &mut [f64; N_TRAJ],
    acc: &[f64; N_TRAJ],
    cnt: &[f64; N_TRAJ],
) {
    for (s, a) in sums.iter_mut().zip(acc) {
        *s += a;
    }
    for (n, c) in counts.iter_mut().zip(cnt) {
        *n += c;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Samples with missing channels, zeros of both signs and values far apart in size,
    /// where any change in the order or kind of addition would show in the last bits.
    fn awkward_samples(n: usize, seed: u64) -> Vec<[f64; N_TRAJ]> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..n)
            .map(|_| {
                std::array::from_fn(|_| match rng.gen_range(0..40) {
                    0..=5 => f64::NAN,
                    6..=9 => -0.0,
                    10..=13 => 0.0,
                    14 => f64::INFINITY,
                    15 => f64::NEG_INFINITY,
                    16 => f64::MIN_POSITIVE / 8.0,
                    17..=22 => rng.gen_range(-1e12..1e12),
                    _ => rng.gen_range(-1.0..1.0) * 10f64.powi(rng.gen_range(-8..4)),
                })
            })
            .collect()
    }

    /// Every compiled copy of the lane sums gives `sum_run`'s bits (the feature values the
    /// shipped model was trained on).
    #[test]
    fn lane_sums_equal_the_sequential_sums_to_the_bit() {
        for (seed, n) in [(1, 0), (2, 1), (3, 7), (4, 60), (5, 1440)] {
            let samples = awkward_samples(n, seed);
            let want = sum_run(0..n, |i| samples[i]);
            let laned: Vec<[f64; LANES]> = samples.iter().map(|v| lanes(*v)).collect();
            let bits = |(s, k): RunSums| (s.map(f64::to_bits), k.map(f64::to_bits));
            assert_eq!(bits(sum_lanes(&laned)), bits(want), "dispatched, n {n}");
            assert_eq!(
                bits(sum_lanes_portable(&laned)),
                bits(want),
                "portable, n {n}"
            );
            #[cfg(target_arch = "x86_64")]
            {
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU has AVX2.
                    let got = unsafe { sum_lanes_avx2(&laned) };
                    assert_eq!(bits(got), bits(want), "avx2, n {n}");
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has AVX-512F.
                    let got = unsafe { sum_lanes_avx512(&laned) };
                    assert_eq!(bits(got), bits(want), "avx512, n {n}");
                }
            }
        }
    }

    /// Runs found by binary search are maximal: they cover the range in order, each holds
    /// the samples that share `(t - ts) / width`, and two neighbours never share a bucket
    /// (a bucket split in two would add `(a + b) + c` where the sequential sum adds
    /// `a + b + c`), but for the single-sample runs past `t`. Over a series with gaps,
    /// samples a millisecond apart and samples past `t`; whole, partial and empty ranges.
    #[test]
    fn bucket_runs_are_the_maximal_runs_of_one_bucket() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let mut ts = Vec::new();
        let mut at = 0i64;
        for _ in 0..3000 {
            at += [1, 59_999, 60_000, 60_000, 61_000, 900_000][rng.gen_range(0..6)];
            ts.push(at);
        }
        let s = NodeSeries {
            node: "n".into(),
            values: vec![[0.0; N_METRICS]; ts.len()],
            ts,
            ..Default::default()
        };
        let t = s.ts[2500];
        let bucket = |i: usize, width: i64| ((t - s.ts[i]).max(0) / width.max(1)) as usize;
        for width in [0, 1, 60_000, 600_000, HOUR_MS] {
            for r in [0..s.ts.len(), 137..2411, 2490..2520, 700..700] {
                let mut runs = Vec::new();
                bucket_runs(&s, r.clone(), t, width, |b, run| runs.push((b, run)));
                let mut next = r.start;
                for (k, (b, run)) in runs.iter().enumerate() {
                    assert_eq!(run.start, next, "width {width} range {r:?}: gap or overlap");
                    assert!(run.end > run.start, "width {width}: empty run");
                    assert!(run.clone().all(|i| bucket(i, width) == *b), "width {width}");
                    if let Some((b_prev, prev)) = k.checked_sub(1).map(|j| &runs[j]) {
                        let past_t = s.ts[prev.start] > t || s.ts[run.start] > t;
                        assert!(b_prev != b || past_t, "width {width}: bucket {b} split");
                    }
                    next = run.end;
                }
                assert_eq!(
                    next,
                    r.end.max(r.start),
                    "width {width} range {r:?}: not covered"
                );
            }
        }
    }
}
