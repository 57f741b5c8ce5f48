//! One node's samples in memory: timestamps and f32 metric rows (plus SMART), and the
//! resampling every model reads them through.

use crate::sample::{HealthSample, N_METRICS};

use super::SmartSeries;

/// All samples of one node, sorted by time, duplicates removed.
///
/// Node metrics and SMART readings are kept apart: the agent samples metrics every few
/// seconds and SMART once an hour, and an imported drive log has SMART only.
#[derive(Debug, Clone, Default)]
pub struct NodeSeries {
    /// Node identifier.
    pub node: String,
    /// Timestamps of samples that carry node metrics, ms, strictly increasing.
    pub ts: Vec<i64>,
    /// Metric rows in [`crate::sample::Metric`] order, parallel to `ts`.
    pub values: Vec<[f32; N_METRICS]>,
    /// SMART readings.
    pub smart: SmartSeries,
    /// The grid this series was put on by [`Self::resample`] (counts already per-minute
    /// rates), `None` for samples as reported. Resampling is then idempotent: before this
    /// existed, a series resampled onto a 10-minute grid and handed to a function that
    /// resamples again had its counts rescaled twice.
    pub grid_ms: Option<i64>,
}

impl NodeSeries {
    /// Builds a series from samples of one node in any order (the agent's history, a replay).
    /// Samples of other nodes are ignored, the first node seen wins.
    pub fn from_samples<'a>(samples: impl IntoIterator<Item = &'a HealthSample>) -> Self {
        let mut series = NodeSeries::default();
        for s in samples {
            if series.node.is_empty() {
                series.node = s.node.clone();
            }
            if s.node == series.node {
                series.push(s);
            }
        }
        series.normalise_order();
        series
    }

    /// Appends one sample of this node (any order; call [`Self::normalise_order`] after).
    pub fn push(&mut self, s: &HealthSample) {
        if s.has_node_metrics() {
            self.ts.push(s.ts_ms);
            self.values.push(s.metrics());
        }
        if let Some(smart) = &s.smart {
            self.smart.push(s.ts_ms, smart);
        }
    }

    /// Sorts by time and drops repeated timestamps (a restarted agent may resend a batch).
    pub fn normalise_order(&mut self) {
        self.smart.normalise_order();
        if self.ts.windows(2).all(|w| w[0] < w[1]) {
            return;
        }
        let mut idx: Vec<usize> = (0..self.ts.len()).collect();
        idx.sort_by_key(|&i| self.ts[i]);
        idx.dedup_by_key(|i| self.ts[*i]);
        self.ts = idx.iter().map(|&i| self.ts[i]).collect();
        self.values = idx.iter().map(|&i| self.values[i]).collect();
    }

    /// Nominal sample interval: the median gap between samples, ms (`None` with fewer than
    /// two samples). The median, because lost samples and agent restarts make some gaps long.
    pub fn interval_ms(&self) -> Option<i64> {
        if self.ts.len() < 2 {
            return None;
        }
        let mut gaps: Vec<i64> = self.ts.windows(2).map(|w| w[1] - w[0]).collect();
        let mid = gaps.len() / 2;
        Some(*gaps.select_nth_unstable(mid).1)
    }

    /// The series as the node model reads it: metrics on a grid no finer than
    /// `resolution_ms` (bucket means, stamped at each bucket's last sample), with counts
    /// turned into per-minute rates.
    ///
    /// Why: samples report counts per interval, so a 5-second agent reports a twelfth of
    /// what a 1-minute one does for the same error rate, and the maximum of 720 five-second
    /// latencies is not the maximum of 60 one-minute ones. Reading every series on one grid,
    /// in per-minute units, makes every feature independent of the sampling interval. A
    /// series already at the resolution (within 10%, as jittered 1-minute traces are) is
    /// returned as is when the resolution is one minute (its counts already are per minute).
    pub fn resample(&self, resolution_ms: i64) -> std::borrow::Cow<'_, NodeSeries> {
        use std::borrow::Cow;
        const MINUTE_MS: f64 = 60_000.0;
        let res = resolution_ms.max(1);
        if self.grid_ms == Some(res) {
            return Cow::Borrowed(self);
        }
        let interval = self.interval_ms().unwrap_or(res).max(1);
        let near = (interval - res).abs() * 10 <= res;
        if near && res == MINUTE_MS as i64 {
            return Cow::Borrowed(self);
        }
        let per_minute = MINUTE_MS / interval as f64;
        let counts: Vec<usize> = crate::sample::Metric::ALL
            .iter()
            .filter(|m| m.is_count())
            .map(|m| m.index())
            .collect();
        let mut out = NodeSeries {
            node: self.node.clone(),
            smart: self.smart.clone(),
            grid_ms: Some(res),
            ..Default::default()
        };
        if interval * 10 >= res * 9 {
            // Coarser than (or at) the grid: keep the samples, rescale counts.
            out.ts = self.ts.clone();
            out.values = self.values.clone();
            for row in &mut out.values {
                for &c in &counts {
                    row[c] = (row[c] as f64 * per_minute) as f32;
                }
            }
            return Cow::Owned(out);
        }
        let mut i = 0;
        while i < self.ts.len() {
            let bucket = self.ts[i].div_euclid(res);
            let mut j = i;
            let mut sum = [0.0f64; N_METRICS];
            let mut n = [0u32; N_METRICS];
            while j < self.ts.len() && self.ts[j].div_euclid(res) == bucket {
                for (m, &v) in self.values[j].iter().enumerate() {
                    if !v.is_nan() {
                        sum[m] += v as f64;
                        n[m] += 1;
                    }
                }
                j += 1;
            }
            let mut row = [f32::NAN; N_METRICS];
            for m in 0..N_METRICS {
                if n[m] > 0 {
                    row[m] = (sum[m] / n[m] as f64) as f32;
                }
            }
            for &c in &counts {
                row[c] = (row[c] as f64 * per_minute) as f32;
            }
            out.ts.push(self.ts[j - 1]);
            out.values.push(row);
            i = j;
        }
        Cow::Owned(out)
    }

    /// Index range of samples with `from_ms < ts <= to_ms`.
    pub fn range(&self, from_ms: i64, to_ms: i64) -> std::ops::Range<usize> {
        let lo = self.ts.partition_point(|&t| t <= from_ms);
        let hi = self.ts.partition_point(|&t| t <= to_ms);
        lo..hi.max(lo)
    }

    /// Keeps only samples with `ts < until_ms` (used to cut a node at its failure).
    pub fn truncate_at(&mut self, until_ms: i64) {
        let n = self.ts.partition_point(|&t| t < until_ms);
        self.ts.truncate(n);
        self.values.truncate(n);
    }
}
