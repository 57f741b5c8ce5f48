//! The node model's grid kept incrementally: what [`NodeSeries::resample`] gives for a node's
//! held samples, updated as samples are appended and the oldest evicted instead of recomputed
//! from every raw sample at every scoring round.
//!
//! Why: at a 5-second sampling interval a 72 h history is 51,840 samples, and resampling them
//! all (plus the median of their 51,840 gaps) at every call made scoring 3.5x slower than at
//! one minute (predictor/README.md, "Speed"). Here the finished minutes are kept as bucket
//! means, the newest bucket as running sums, the oldest (partial once its first samples are
//! evicted) is recomputed from the few raw samples it still holds, and the gap median comes
//! from a running two-halves multiset. [`GridSeries::series`] is then exactly (bit for bit)
//! what `resample` of the same samples gives: every bucket sum adds the same values in the
//! same order, and the count rescaling is applied to the same f32 means.

use std::collections::BTreeMap;

use crate::sample::{HealthSample, Metric, N_METRICS};

use super::NodeSeries;

const MINUTE_MS: i64 = 60_000;

/// Evicted rows are dropped from the front of the vectors in batches once this many (and an
/// eighth of the vector) have accumulated, so eviction is amortised O(1) without a deque
/// (the features read the series as slices).
const COMPACT_AFTER: usize = 1024;

/// Why a sample was not appended to a [`GridSeries`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GridError {
    /// The grid takes samples in time order; this one is not after the newest held sample.
    #[error("sample at {ts_ms} ms is not after the newest held sample ({last_ms} ms)")]
    OutOfOrder {
        /// The refused sample's time.
        ts_ms: i64,
        /// The newest held sample's time.
        last_ms: i64,
    },
    /// The sample belongs to another node than the grid's.
    #[error("sample of node `{found}` offered to the grid of node `{expected}`")]
    OtherNode {
        /// The grid's node.
        expected: String,
        /// The sample's node.
        found: String,
    },
}

/// The median of a changing multiset of gaps, exactly as `select_nth_unstable(len / 2)` of
/// all of them would give: `low` holds the `len / 2 + 1` smallest values, `high` the rest
/// (each value with its multiplicity), so the median is the largest of `low`. Insert and
/// remove are O(log d) in the number of distinct gaps.
#[derive(Debug, Clone, Default)]
struct RunningMedian {
    low: BTreeMap<i64, u32>,
    high: BTreeMap<i64, u32>,
    n_low: usize,
    n_high: usize,
}

fn add(set: &mut BTreeMap<i64, u32>, x: i64) {
    *set.entry(x).or_insert(0) += 1;
}

/// Removes one `x`; false when there is none.
fn take(set: &mut BTreeMap<i64, u32>, x: i64) -> bool {
    match set.get_mut(&x) {
        Some(c) if *c > 1 => {
            *c -= 1;
            true
        }
        Some(_) => {
            set.remove(&x);
            true
        }
        None => false,
    }
}

impl RunningMedian {
    fn low_max(&self) -> Option<i64> {
        self.low.last_key_value().map(|(&k, _)| k)
    }

    fn insert(&mut self, x: i64) {
        if self.low_max().is_some_and(|m| x <= m) {
            add(&mut self.low, x);
            self.n_low += 1;
        } else {
            add(&mut self.high, x);
            self.n_high += 1;
        }
        self.rebalance();
    }

    /// Removes one `x` (every value below or at the median is in `low`, every other one in
    /// `high`). False when `x` is not held.
    fn remove(&mut self, x: i64) -> bool {
        let removed = if self.low_max().is_some_and(|m| x <= m) {
            let r = take(&mut self.low, x);
            self.n_low -= usize::from(r);
            r
        } else {
            let r = take(&mut self.high, x);
            self.n_high -= usize::from(r);
            r
        };
        self.rebalance();
        removed
    }

    fn rebalance(&mut self) {
        let len = self.n_low + self.n_high;
        let target = if len == 0 { 0 } else { len / 2 + 1 };
        while self.n_low > target {
            let Some(x) = self.low_max() else { break };
            take(&mut self.low, x);
            add(&mut self.high, x);
            self.n_low -= 1;
            self.n_high += 1;
        }
        while self.n_low < target {
            let Some((&x, _)) = self.high.first_key_value() else {
                break;
            };
            take(&mut self.high, x);
            add(&mut self.low, x);
            self.n_high -= 1;
            self.n_low += 1;
        }
    }

    fn median(&self) -> Option<i64> {
        self.low_max()
    }
}

/// How [`NodeSeries::resample`] treats a series of a given median interval (the same three
/// cases, decided the same way).
enum View {
    /// At about a minute on a one-minute grid: the samples as reported.
    Raw,
    /// At or coarser than the grid: the samples, counts scaled by this per-minute factor.
    RawScaled(f64),
    /// Finer than the grid: bucket means, counts scaled for this median interval.
    Buckets(i64),
}

/// Sums and non-NaN counts of one bucket's samples, added in sample order.
#[derive(Debug, Clone, Copy)]
struct BucketSums {
    sum: [f64; N_METRICS],
    n: [u32; N_METRICS],
}

impl Default for BucketSums {
    fn default() -> Self {
        BucketSums {
            sum: [0.0; N_METRICS],
            n: [0; N_METRICS],
        }
    }
}

impl BucketSums {
    fn add(&mut self, row: &[f32; N_METRICS]) {
        for (m, &v) in row.iter().enumerate() {
            if !v.is_nan() {
                self.sum[m] += v as f64;
                self.n[m] += 1;
            }
        }
    }

    /// The bucket's means, f32 as `resample` stores them, before count scaling.
    fn means(&self) -> [f32; N_METRICS] {
        let mut row = [f32::NAN; N_METRICS];
        for ((v, &sum), &n) in row.iter_mut().zip(&self.sum).zip(&self.n) {
            if n > 0 {
                *v = (sum / n as f64) as f32;
            }
        }
        row
    }
}

/// A row with its counts turned into per-minute rates, rounded as `resample` rounds them.
fn scaled(means: &[f32; N_METRICS], per_minute: f64) -> [f32; N_METRICS] {
    let mut row = *means;
    for m in Metric::ALL {
        if m.is_count() {
            row[m.index()] = (row[m.index()] as f64 * per_minute) as f32;
        }
    }
    row
}

fn per_minute(interval_ms: i64) -> f64 {
    MINUTE_MS as f64 / interval_ms as f64
}

/// One node's samples with the model's grid of them kept up to date.
///
/// Append samples in time order with [`Self::push`] / [`Self::push_sample`], evict the oldest
/// with [`Self::evict_oldest`]; [`Self::series`] is what `NodeSeries::resample` of the held
/// samples at the grid's resolution gives (same timestamps, bit-identical rows). The raw rows
/// are kept too (about 60 bytes a sample): they decide the median interval's case, are the
/// series itself at about one sample a minute, and refill the oldest bucket on eviction.
#[derive(Debug, Clone)]
pub struct GridSeries {
    /// Grid resolution, ms (at least 1).
    res: i64,
    /// The samples as reported; rows before `raw_head` are evicted.
    raw: NodeSeries,
    raw_head: usize,
    /// Gaps between consecutive held samples.
    gaps: RunningMedian,
    /// Bucket number (`ts.div_euclid(res)`) of each grid row; rows before `grid_head` are
    /// evicted (in `ids`, `means` and `grid` alike).
    ids: Vec<i64>,
    /// Each grid row's means before count scaling: what a change of interval rescales.
    means: Vec<[f32; N_METRICS]>,
    /// The grid rows, stamped at each bucket's newest sample, counts scaled for `scaled_for`.
    grid: NodeSeries,
    grid_head: usize,
    /// The median interval the grid's counts are scaled for.
    scaled_for: i64,
    /// Running sums of the newest bucket.
    tail: BucketSums,
    /// The counts-scaled copy of the samples, for series at or coarser than the grid.
    coarse: NodeSeries,
}

impl GridSeries {
    /// An empty grid for `node` at `resolution_ms` (the model's `window.resolution_ms`).
    pub fn new(node: &str, resolution_ms: i64) -> Self {
        let res = resolution_ms.max(1);
        let named = || NodeSeries {
            node: node.to_string(),
            grid_ms: Some(res),
            ..Default::default()
        };
        GridSeries {
            res,
            raw: named(),
            raw_head: 0,
            gaps: RunningMedian::default(),
            ids: Vec::new(),
            means: Vec::new(),
            grid: named(),
            grid_head: 0,
            scaled_for: res,
            tail: BucketSums::default(),
            coarse: named(),
        }
    }

    /// The grid of samples in any order, with [`NodeSeries::from_samples`]'s rules (samples
    /// of other nodes than the first ignored, repeated timestamps dropped, SMART-only samples
    /// not on the grid).
    pub fn from_samples<'a>(
        samples: impl IntoIterator<Item = &'a HealthSample>,
        resolution_ms: i64,
    ) -> Self {
        let series = NodeSeries::from_samples(samples);
        let mut grid = GridSeries::new(&series.node, resolution_ms);
        // `from_samples` sorts and deduplicates: every row is after the previous one.
        for (&ts, row) in series.ts.iter().zip(&series.values) {
            grid.append(ts, *row);
        }
        grid
    }

    /// The node whose samples these are.
    pub fn node(&self) -> &str {
        &self.raw.node
    }

    /// The grid resolution, ms.
    pub fn resolution_ms(&self) -> i64 {
        self.res
    }

    /// Samples held.
    pub fn len(&self) -> usize {
        self.raw.ts.len() - self.raw_head
    }

    /// Whether no sample is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The oldest held sample's time.
    pub fn first_ts(&self) -> Option<i64> {
        self.raw.ts.get(self.raw_head).copied()
    }

    /// The newest held sample's time.
    pub fn last_ts(&self) -> Option<i64> {
        if self.is_empty() {
            None
        } else {
            self.raw.ts.last().copied()
        }
    }

    /// The median gap between held samples, as [`NodeSeries::interval_ms`] gives it.
    pub fn interval_ms(&self) -> Option<i64> {
        self.gaps.median()
    }

    /// Appends the node metrics of `s` (true), or nothing for a sample without any (false:
    /// a SMART-only reading, which the node model does not read).
    pub fn push_sample(&mut self, s: &HealthSample) -> Result<bool, GridError> {
        if s.node != self.raw.node {
            return Err(GridError::OtherNode {
                expected: self.raw.node.clone(),
                found: s.node.clone(),
            });
        }
        if !s.has_node_metrics() {
            return Ok(false);
        }
        self.push(s.ts_ms, s.metrics())?;
        Ok(true)
    }

    /// Appends one metric row at `ts_ms`, which must be after the newest held sample.
    pub fn push(&mut self, ts_ms: i64, row: [f32; N_METRICS]) -> Result<(), GridError> {
        if let Some(last) = self.last_ts() {
            if ts_ms <= last {
                return Err(GridError::OutOfOrder {
                    ts_ms,
                    last_ms: last,
                });
            }
        }
        self.append(ts_ms, row);
        Ok(())
    }

    /// [`Self::push`] for a row known to be after the newest held one.
    fn append(&mut self, ts: i64, row: [f32; N_METRICS]) {
        if let Some(last) = self.last_ts() {
            self.gaps.insert(ts - last);
        }
        self.raw.ts.push(ts);
        self.raw.values.push(row);
        let id = ts.div_euclid(self.res);
        let pm = per_minute(self.scaled_for);
        if self.grid_head < self.ids.len() && self.ids.last() == Some(&id) {
            self.tail.add(&row);
            let means = self.tail.means();
            let i = self.ids.len() - 1;
            self.means[i] = means;
            self.grid.ts[i] = ts;
            self.grid.values[i] = scaled(&means, pm);
        } else {
            self.tail = BucketSums::default();
            self.tail.add(&row);
            let means = self.tail.means();
            self.ids.push(id);
            self.means.push(means);
            self.grid.ts.push(ts);
            self.grid.values.push(scaled(&means, pm));
        }
    }

    /// Evicts the oldest held sample and returns its time (`None` when empty). Its bucket is
    /// recomputed from the samples it still holds, in their order, as `resample` would sum
    /// them.
    pub fn evict_oldest(&mut self) -> Option<i64> {
        let ts0 = self.first_ts()?;
        self.raw_head += 1;
        if let Some(next) = self.first_ts() {
            self.gaps.remove(next - ts0);
        }
        let id = ts0.div_euclid(self.res);
        let mut sums = BucketSums::default();
        let mut held = 0usize;
        for (&ts, row) in self.raw.ts[self.raw_head..]
            .iter()
            .zip(&self.raw.values[self.raw_head..])
        {
            if ts.div_euclid(self.res) != id {
                break;
            }
            sums.add(row);
            held += 1;
        }
        let i = self.grid_head;
        if held == 0 {
            self.grid_head += 1;
        } else {
            let means = sums.means();
            self.means[i] = means;
            self.grid.values[i] = scaled(&means, per_minute(self.scaled_for));
            if i + 1 == self.ids.len() {
                self.tail = sums;
            }
        }
        if self.raw_head >= COMPACT_AFTER && self.raw_head * 8 >= self.raw.ts.len() {
            self.compact_raw();
        }
        if self.grid_head >= COMPACT_AFTER && self.grid_head * 8 >= self.ids.len() {
            self.compact_grid();
        }
        Some(ts0)
    }

    /// Evicts every sample older than `ts_ms`; returns how many.
    pub fn evict_before(&mut self, ts_ms: i64) -> usize {
        let mut n = 0;
        while self.first_ts().is_some_and(|t| t < ts_ms) {
            self.evict_oldest();
            n += 1;
        }
        n
    }

    /// Puts the held samples on another grid (a model of another resolution): O(samples),
    /// nothing when the resolution is already this one.
    pub fn set_resolution(&mut self, resolution_ms: i64) {
        if resolution_ms.max(1) == self.res {
            return;
        }
        let mut grid = GridSeries::new(&self.raw.node, resolution_ms);
        for (&ts, row) in self.raw.ts[self.raw_head..]
            .iter()
            .zip(&self.raw.values[self.raw_head..])
        {
            grid.append(ts, *row);
        }
        *self = grid;
    }

    fn compact_raw(&mut self) {
        self.raw.ts.drain(..self.raw_head);
        self.raw.values.drain(..self.raw_head);
        self.raw_head = 0;
    }

    fn compact_grid(&mut self) {
        let h = self.grid_head;
        self.ids.drain(..h);
        self.means.drain(..h);
        self.grid.ts.drain(..h);
        self.grid.values.drain(..h);
        self.grid_head = 0;
    }

    /// Which of `resample`'s cases the held samples fall in, decided as it decides.
    fn view(&self) -> View {
        let res = self.res;
        let interval = self.gaps.median().unwrap_or(res).max(1);
        let near = (interval - res).abs() * 10 <= res;
        if near && res == MINUTE_MS {
            View::Raw
        } else if interval * 10 >= res * 9 {
            View::RawScaled(per_minute(interval))
        } else {
            View::Buckets(interval)
        }
    }

    /// The held samples as the node model reads them: equal (timestamps and bit-identical
    /// rows) to `NodeSeries::resample` of the same samples at the grid's resolution, and
    /// marked as on that grid (`grid_ms`) so resampling it again is a no-op. Costs nothing
    /// per raw sample when the samples are finer than the grid; a series at or coarser than
    /// it is the samples themselves (rescaled, as `resample` does, when not at a minute).
    pub fn series(&mut self) -> &NodeSeries {
        match self.view() {
            View::Raw => {
                if self.raw_head > 0 {
                    self.compact_raw();
                }
                &self.raw
            }
            View::RawScaled(pm) => {
                let live = self.raw_head..self.raw.ts.len();
                self.coarse.ts.clear();
                self.coarse.ts.extend_from_slice(&self.raw.ts[live.clone()]);
                self.coarse.values.clear();
                self.coarse
                    .values
                    .extend(self.raw.values[live].iter().map(|r| scaled(r, pm)));
                &self.coarse
            }
            View::Buckets(interval) => {
                if self.grid_head > 0 {
                    self.compact_grid();
                }
                if interval != self.scaled_for {
                    let pm = per_minute(interval);
                    for (row, means) in self.grid.values.iter_mut().zip(&self.means) {
                        *row = scaled(means, pm);
                    }
                    self.scaled_for = interval;
                }
                &self.grid
            }
        }
    }
}

#[cfg(test)]
mod tests;
