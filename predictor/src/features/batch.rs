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
use super::trajectory::{hour_stride, n_hours, N_TRAJ};
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

        // Hourly sums of the trajectory channels, in `trajectory`'s order of summation: the
        // hour only falls as the index rises, so each hour is one run of samples.
        let n_hours = n_hours(&wf.spec);
        let stride = hour_stride(&base, n_hours);
        sc.sums.clear();
        sc.sums.resize(n_hours, [0.0; N_TRAJ]);
        sc.counts.clear();
        sc.counts.resize(n_hours, [0.0; N_TRAJ]);
        let k = load.temp_per_cpu;
        let mut cur = usize::MAX;
        let (mut acc, mut cnt) = ([0.0f64; N_TRAJ], [0.0f64; N_TRAJ]);
        let mut i = base.start;
        while i < base.end {
            let h = ((t - s.ts[i]).max(0) / HOUR_MS) as usize;
            if h != cur {
                if cur < n_hours {
                    add_hour(&mut sc.sums[cur], &mut sc.counts[cur], &acc, &cnt);
                }
                cur = h;
                (acc, cnt) = ([0.0; N_TRAJ], [0.0; N_TRAJ]);
            }
            if h < n_hours {
                let row = &s.values[i];
                // Traj::ALL order; the values of `Traj::value`.
                let xs = [
                    sc.read[i - b0],
                    sc.write[i - b0],
                    row[metric::LOSS] as f64,
                    row[metric::TEMP] as f64 - k * row[metric::CPU] as f64,
                    row[metric::ERR_LOG] as f64,
                    row[metric::NET_ERR] as f64,
                    1.0 - row[metric::PSU] as f64,
                ];
                for ((a, n), x) in acc.iter_mut().zip(cnt.iter_mut()).zip(xs) {
                    if !x.is_nan() {
                        *a += x;
                        *n += 1.0;
                    }
                }
            }
            i += stride;
        }
        if cur < n_hours {
            add_hour(&mut sc.sums[cur], &mut sc.counts[cur], &acc, &cnt);
        }
        let (read, write) = (sc.read.as_slice(), sc.write.as_slice());
        let value = |ch: Traj, i: usize| {
            let buffered = match ch {
                Traj::ReadLatNorm => norm(read, i),
                Traj::WriteLatNorm => norm(write, i),
                _ => None,
            };
            buffered.unwrap_or_else(|| ch.value(&s.values[i], &load))
        };
        wf.trajectory_stats(t, &sc.sums, &sc.counts, value, out);
        wf.episode_stats(t, &sc.sums, &sc.counts, value, out);
    }
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
