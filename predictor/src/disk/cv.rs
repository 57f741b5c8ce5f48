//! Rows, folds and out-of-fold scores for the disk model and its baselines.
//!
//! Everything that is fitted (the model, the single tree) is fitted K times on K-1 folds of
//! the training devices and scores the fold it did not see; thresholds, alert rules, the
//! calibration and the choice between tree configurations are then made on those
//! out-of-fold scores of *every* training device, never on one thin slice of time. Folds are
//! groups of devices (a hash of the node id), so a device never scores itself.
//!
//! Labels respect the training cut-off: a failure after `until` is unknown at training time,
//! so a device that was alive at `until` only contributes rounds whose whole horizon lies
//! before it.

use rayon::prelude::*;

use crate::eval::NodeScores;
use crate::gbt::{Gbt, GbtConfig, GbtError};
use crate::split::NodeSplit;
use crate::trace::{NodeSeries, Trace};

use super::features::{DeviceView, DiskFeatureSpec};

/// Drives per rayon task at most. Left to itself rayon cuts the drives into a few long
/// runs it cannot split once started, so one core can wait while the other ends its run
/// (measured in node training: predictor/README.md, "Both cores busy"); tens of thousands
/// of short drives want small runs, not one task each.
const DRIVES_PER_TASK: usize = 64;

/// One device of one node, with what is known of its failure.
pub struct Drive<'a> {
    /// The node's series.
    pub series: &'a NodeSeries,
    /// The device.
    pub device: String,
    /// When the node failed (every device of a failed node is labelled with the failure).
    pub failed_at: Option<i64>,
    /// Cross-validation fold.
    pub fold: usize,
}

/// The devices of the nodes `keep` selects.
pub fn drives<'a>(
    trace: &'a Trace,
    keep: &(dyn Fn(&str) -> bool + Sync),
    split: &NodeSplit,
    folds: usize,
) -> Vec<Drive<'a>> {
    let mut out = Vec::new();
    for s in &trace.nodes {
        if s.smart.is_empty() || !keep(&s.node) {
            continue;
        }
        for device in s.smart.devices() {
            out.push(Drive {
                series: s,
                device: device.to_string(),
                failed_at: trace.failures.get(&s.node).map(|f| f.failed_at_ms),
                fold: split.fold(&s.node, folds.max(1)),
            });
        }
    }
    out
}

/// Round times of `d`: multiples of `round_ms` from its first to its last reading, within
/// `[from, to]` and before its failure.
pub fn rounds(d: &Drive, round_ms: i64, from: Option<i64>, to: Option<i64>) -> Vec<i64> {
    let ts = &d.series.smart.ts;
    let (Some(&first), Some(&last)) = (ts.first(), ts.last()) else {
        return Vec::new();
    };
    let lo = from.map_or(first, |f| f.max(first));
    let hi = to.map_or(last, |t| t.min(last));
    let t0 = lo + (round_ms - lo.rem_euclid(round_ms)) % round_ms;
    (0..)
        .map(|i| t0 + i * round_ms)
        .take_while(|&t| t <= hi)
        .filter(|&t| d.failed_at.is_none_or(|f| t < f))
        .collect()
}

/// What decides training rows and labels.
#[derive(Debug, Clone)]
pub struct RowConfig {
    /// Scoring cadence, ms.
    pub round_ms: i64,
    /// Horizon H, ms: the label of a round is "fails within H".
    pub horizon_ms: i64,
    /// Training cut-off, ms: failures after it are unknown, rounds must have their labels
    /// decided before it.
    pub until_ms: Option<i64>,
    /// Keep one in this many negative rounds as tree rows (weighted back up).
    pub negative_stride: usize,
    /// Share of the total weight given to positive rows.
    pub positive_share: f64,
}

impl RowConfig {
    /// The failure time as known at training time.
    pub fn known_failure(&self, d: &Drive) -> Option<i64> {
        d.failed_at.filter(|&f| self.until_ms.is_none_or(|u| f < u))
    }

    /// Rounds whose label is decided: a device not known to fail must have been watched
    /// for a whole horizon after the round, before the cut-off and before its own last
    /// reading (a drive retired healthy is censored, not proven to survive).
    pub fn labelled_rounds(&self, d: &Drive) -> Vec<i64> {
        let failed = self.known_failure(d);
        let mut r = rounds(d, self.round_ms, None, self.until_ms);
        if failed.is_none() {
            let last = d.series.smart.ts.last().copied().unwrap_or(i64::MIN);
            let seen_until = self.until_ms.map_or(last, |u| u.min(last));
            r.retain(|&t| t + self.horizon_ms <= seen_until);
        }
        r
    }

    /// Whether the round at `t` is a positive (the known failure within H).
    pub fn label(&self, d: &Drive, t: i64) -> bool {
        self.known_failure(d)
            .is_some_and(|f| f > t && f - t <= self.horizon_ms)
    }
}

/// Tree rows: all positives, one in `negative_stride` negatives, f32 row-major.
#[derive(Debug, Default)]
pub struct Rows {
    /// Features per row.
    pub n_features: usize,
    /// Row-major values.
    pub x: Vec<f32>,
    /// Labels (0 / 1).
    pub y: Vec<f64>,
    /// Weights (negatives weighted by the stride, positives rebalanced).
    pub w: Vec<f64>,
    /// Fold of each row's device.
    pub fold: Vec<u8>,
}

impl Rows {
    /// Positive rows.
    pub fn positives(&self) -> usize {
        self.y.iter().filter(|&&v| v > 0.0).count()
    }

    /// The rows whose fold `keep` accepts, as a new set.
    fn select(&self, keep: impl Fn(u8) -> bool) -> Rows {
        let mut out = Rows {
            n_features: self.n_features,
            ..Default::default()
        };
        for i in 0..self.y.len() {
            if keep(self.fold[i]) {
                out.x
                    .extend_from_slice(&self.x[i * self.n_features..(i + 1) * self.n_features]);
                out.y.push(self.y[i]);
                out.w.push(self.w[i]);
                out.fold.push(self.fold[i]);
            }
        }
        out
    }
}

/// Builds the tree rows of `drives`.
pub fn training_rows(drives: &[Drive], spec: &DiskFeatureSpec, cfg: &RowConfig) -> Rows {
    let n_features = spec.n_features();
    let stride = cfg.negative_stride.max(1);
    let parts: Vec<Rows> = drives
        .par_iter()
        .with_max_len(DRIVES_PER_TASK)
        .map(|d| {
            let view = DeviceView::new(&d.series.smart, &d.device, spec);
            let mut part = Rows {
                n_features,
                ..Default::default()
            };
            for (i, t) in cfg.labelled_rounds(d).into_iter().enumerate() {
                let pos = cfg.label(d, t);
                if !pos && i % stride != 0 {
                    continue;
                }
                if view.extract(spec, t, &mut part.x) {
                    part.y.push(if pos { 1.0 } else { 0.0 });
                    part.w.push(if pos { 1.0 } else { stride as f64 });
                    part.fold.push(d.fold as u8);
                }
            }
            part
        })
        .collect();
    let mut rows = Rows {
        n_features,
        ..Default::default()
    };
    for p in parts {
        rows.x.extend(p.x);
        rows.y.extend(p.y);
        rows.w.extend(p.w);
        rows.fold.extend(p.fold);
    }
    // Rebalance (as the node model does): with positives a fraction of a percent of the
    // weight, histogram binning puts every precursor in the top bin and no split can tell
    // a little growth from a lot. Calibration on out-of-fold scores restores probabilities.
    let positives = rows.positives();
    if positives > 0 {
        let neg: f64 = rows
            .y
            .iter()
            .zip(&rows.w)
            .filter(|(&y, _)| y == 0.0)
            .map(|(_, &w)| w)
            .sum();
        let share = cfg.positive_share.clamp(0.01, 0.9);
        let pos_w = (neg * share / (1.0 - share) / positives as f64).max(1.0);
        for (w, &y) in rows.w.iter_mut().zip(&rows.y) {
            if y > 0.0 {
                *w = pos_w;
            }
        }
    }
    rows
}

/// Fits one model per fold (on the other folds' rows) and one on all rows.
pub fn fit_cv(
    rows: &Rows,
    folds: usize,
    monotone: &[i8],
    cfg: &GbtConfig,
) -> Result<(Vec<Gbt>, Gbt), GbtError> {
    let mut per_fold = Vec::with_capacity(folds);
    for f in 0..folds {
        let train = rows.select(|x| x as usize != f);
        per_fold.push(Gbt::fit_f32(
            &train.x,
            train.n_features,
            &train.y,
            &train.w,
            monotone,
            cfg,
        )?);
    }
    let all = Gbt::fit_f32(&rows.x, rows.n_features, &rows.y, &rows.w, monotone, cfg)?;
    Ok((per_fold, all))
}

/// Scores every labelled round of every drive with `score(fold, rows)`, where `rows` are that
/// drive's feature rows (row-major); for fitted methods `score` must use the model that did
/// not see `fold`. Returns one [`NodeScores`] per drive (raw scores, labelled with the known
/// failure) in `drives` order.
pub fn oof_scores(
    drives: &[Drive],
    spec: &DiskFeatureSpec,
    cfg: &RowConfig,
    score: &(dyn Fn(usize, &[f32]) -> Vec<f64> + Sync),
) -> Vec<NodeScores> {
    drives
        .par_iter()
        .with_max_len(DRIVES_PER_TASK)
        .map(|d| {
            let view = DeviceView::new(&d.series.smart, &d.device, spec);
            let mut rows = Vec::new();
            let mut times = Vec::new();
            for t in cfg.labelled_rounds(d) {
                if view.extract(spec, t, &mut rows) {
                    times.push(t);
                }
            }
            let scores = score(d.fold, &rows);
            NodeScores {
                node: format!("{}/{}", d.series.node, d.device),
                times,
                scores,
                failed_at: cfg.known_failure(d),
                precursor: None,
            }
        })
        .collect()
}

/// Scores the test rounds of every drive from `from_ms`. Rounds of a drive that does not
/// fail stop one horizon before its own last reading: whether it failed within H after a
/// later round is not known (the data ended, or the drive was retired).
pub fn test_scores(
    drives: &[Drive],
    spec: &DiskFeatureSpec,
    round_ms: i64,
    horizon_ms: i64,
    from_ms: Option<i64>,
    end_ms: i64,
    score: &(dyn Fn(&[f32]) -> Vec<f64> + Sync),
) -> Vec<NodeScores> {
    drives
        .par_iter()
        .with_max_len(DRIVES_PER_TASK)
        .map(|d| {
            let view = DeviceView::new(&d.series.smart, &d.device, spec);
            let last = d.series.smart.ts.last().copied().unwrap_or(end_ms);
            let to = if d.failed_at.is_some() {
                end_ms
            } else {
                last.min(end_ms) - horizon_ms
            };
            let mut rows = Vec::new();
            let mut times = Vec::new();
            for t in rounds(d, round_ms, from_ms, Some(to)) {
                if view.extract(spec, t, &mut rows) {
                    times.push(t);
                }
            }
            NodeScores {
                node: format!("{}/{}", d.series.node, d.device),
                scores: score(&rows),
                times,
                failed_at: d.failed_at.filter(|&f| from_ms.is_none_or(|s| f >= s)),
                precursor: None,
            }
        })
        .filter(|s| !s.times.is_empty())
        .collect()
}
