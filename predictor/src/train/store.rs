//! Every scoring round of every training node, featurised once: the trees' rows are a
//! subset of it, and every method's out-of-fold scores are read from it.
//!
//! Before, training computed features twice (once for the tree rows, once more for the
//! out-of-fold scores of every round); the store computes them once, as `f32`, and the
//! cross-validation fits gather their rows straight into forust's column-major layout.

use std::borrow::Cow;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use rayon::prelude::*;

use super::TrainConfig;
use crate::baselines::{static_stats, N_STATIC};
use crate::eval::NodeScores;
use crate::features::{Normaliser, WindowSpec};
use crate::gbt::{Gbt, GbtConfig, GbtError};
use crate::lstm::LstmAutoencoder;
use crate::model::feature_rows;
use crate::progress::Progress;
use crate::sample::FailureRecord;
use crate::trace::NodeSeries;

/// Tree fits run at once at most (see [`Store::fit_folds`] why two).
pub(super) const CONCURRENT_FITS: usize = 2;

/// One training node's rounds.
pub(super) struct NodeRounds {
    pub node: String,
    pub fold: usize,
    /// The recorded failure time (what training may know).
    pub failed_at: Option<i64>,
    pub precursor: Option<bool>,
    /// Scored rounds (those whose window holds enough samples).
    pub times: Vec<i64>,
    /// Window features then the anomaly score, row-major, one row per round.
    pub rows: Vec<f32>,
    /// The static baseline's statistics per round.
    pub statics: Vec<[f32; N_STATIC]>,
}

/// All training nodes' rounds.
pub(super) struct Store {
    pub nodes: Vec<NodeRounds>,
    /// Columns per row (window features + anomaly).
    pub n_features: usize,
}

/// Which rounds the trees fit on: (node, round) with label, weight and fold.
#[derive(Default)]
pub(super) struct TreeRows {
    pub at: Vec<(u32, u32)>,
    pub y: Vec<f64>,
    pub w: Vec<f64>,
    pub fold: Vec<u8>,
}

impl TreeRows {
    pub fn positives(&self) -> usize {
        self.y.iter().filter(|&&v| v > 0.0).count()
    }
}

/// Round times of `series` on the `round` cadence within `[from, to]`, before `failed_at`.
pub(crate) fn rounds_of(
    series: &NodeSeries,
    round: i64,
    from: i64,
    to: i64,
    failed_at: Option<i64>,
) -> Vec<i64> {
    let (Some(&first), Some(&last)) = (series.ts.first(), series.ts.last()) else {
        return Vec::new();
    };
    let lo = first.max(from);
    let t0 = lo + (round - lo.rem_euclid(round)) % round;
    (0..)
        .map(|i| t0 + i * round)
        .take_while(|&t| t <= last.min(to))
        .filter(|&t| failed_at.is_none_or(|f| t < f))
        .collect()
}

/// What [`Store::build`] featurises with.
pub(super) struct Featuriser<'a> {
    pub window: &'a WindowSpec,
    pub normaliser: &'a Normaliser,
    pub lstm: &'a LstmAutoencoder,
}

impl Store {
    /// Featurises every round of every node in `nodes` (already resampled).
    pub fn build(
        nodes: &[Cow<NodeSeries>],
        failures: &std::collections::BTreeMap<String, FailureRecord>,
        cfg: &TrainConfig,
        f: &Featuriser,
        progress: &Progress,
    ) -> Store {
        let bar = progress.bar("features (every round)");
        bar.set_length(nodes.len() as u64);
        let n_features = crate::features::feature_names().len() + 1;
        let nodes = nodes
            .par_iter()
            .map(|s| {
                let failure = failures.get(&s.node);
                let failed_at = failure.map(|r| r.failed_at_ms);
                let times = rounds_of(s, cfg.round_ms, i64::MIN, i64::MAX, failed_at);
                let (kept, rows) = feature_rows(s, &times, f.window, f.normaliser, f.lstm);
                bar.inc(1);
                NodeRounds {
                    node: s.node.clone(),
                    fold: cfg.split.fold(&s.node, cfg.cv_folds),
                    failed_at,
                    precursor: failure.and_then(|r| r.has_precursor()),
                    statics: kept
                        .iter()
                        .map(|&t| static_stats(s, t, f.window.short_ms))
                        .collect(),
                    times: kept,
                    rows: rows.into_iter().map(|v| v as f32).collect(),
                }
            })
            .collect();
        Store { nodes, n_features }
    }

    /// The trees' rows: every round within the tree horizon of a failure is a positive;
    /// one in `negative_stride` other rounds is a negative (weighted back up), except, with
    /// `skip_gap`, rounds between the tree horizon and H before a failure (see
    /// [`TrainConfig::skip_gap`]). Positives are then given `positive_share` of the weight.
    pub fn tree_rows(&self, cfg: &TrainConfig) -> TreeRows {
        let (h, th) = (cfg.horizon_ms, cfg.tree_horizon_ms.clamp(1, cfg.horizon_ms));
        let stride = cfg.negative_stride.max(1);
        let mut rows = TreeRows::default();
        for (n, node) in self.nodes.iter().enumerate() {
            let f = node.failed_at;
            for (i, &t) in node.times.iter().enumerate() {
                let pos = f.is_some_and(|f| f > t && f - t <= th);
                let gap = cfg.skip_gap && f.is_some_and(|f| f - t > th && f - t <= h);
                if pos || (!gap && i % stride == 0) {
                    rows.at.push((n as u32, i as u32));
                    rows.y.push(if pos { 1.0 } else { 0.0 });
                    rows.w.push(if pos { 1.0 } else { stride as f64 });
                    rows.fold.push(node.fold as u8);
                }
            }
        }
        // Rebalance: forust bins features by weighted quantiles, and with positives at a
        // fraction of a percent of the weight every precursor lands in the top bin, where no
        // split can separate "a little loss" from "a lot". Calibration on out-of-fold
        // scores restores true probabilities.
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

    /// Fits on the tree rows whose fold `keep` accepts, reading the first `n_cols` columns.
    pub fn fit(
        &self,
        rows: &TreeRows,
        keep: impl Fn(u8) -> bool,
        n_cols: usize,
        monotone: &[i8],
        cfg: &GbtConfig,
    ) -> Result<Gbt, GbtError> {
        let idx: Vec<usize> = (0..rows.y.len()).filter(|&i| keep(rows.fold[i])).collect();
        let n = idx.len();
        let mut data = vec![0.0f64; n * n_cols];
        for (r, &i) in idx.iter().enumerate() {
            let (node, round) = rows.at[i];
            let row = &self.nodes[node as usize].rows
                [round as usize * self.n_features..round as usize * self.n_features + n_cols];
            for (c, &v) in row.iter().enumerate() {
                data[c * n + r] = v as f64;
            }
        }
        let y: Vec<f64> = idx.iter().map(|&i| rows.y[i]).collect();
        let w: Vec<f64> = idx.iter().map(|&i| rows.w[i]).collect();
        Gbt::fit_columns(
            data,
            n_cols,
            &y,
            &w,
            &monotone[..monotone.len().min(n_cols)],
            cfg,
        )
    }

    /// For each configuration in `cfgs`, one model per fold, each fitted on the other
    /// folds' rows (`result[config][fold]`), up to `concurrent` fits at a time.
    ///
    /// Each concurrent fit runs on its own thread: forust parallelises only part of a fit,
    /// so one fit keeps about one core busy. Not more than [`CONCURRENT_FITS`]: each fit
    /// holds its own column-major copy of three quarters of the tree rows (~0.8 GB for 500
    /// nodes x 30 days). Plain threads rather than rayon tasks, because a rayon worker
    /// waiting inside forust would steal and start yet another fit.
    pub fn fit_folds(
        &self,
        rows: &TreeRows,
        folds: usize,
        n_cols: usize,
        monotone: &[i8],
        cfgs: &[GbtConfig],
        concurrent: usize,
    ) -> Result<Vec<Vec<Gbt>>, GbtError> {
        let jobs: Vec<(usize, usize)> = (0..cfgs.len())
            .flat_map(|c| (0..folds).map(move |f| (c, f)))
            .collect();
        let next = AtomicUsize::new(0);
        let done: Mutex<Vec<Option<Result<Gbt, GbtError>>>> =
            Mutex::new((0..jobs.len()).map(|_| None).collect());
        let workers = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(concurrent)
            .clamp(1, CONCURRENT_FITS)
            .min(jobs.len());
        std::thread::scope(|scope| {
            for _ in 0..workers {
                scope.spawn(|| loop {
                    let j = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&(c, f)) = jobs.get(j) else { break };
                    let fit = self.fit(rows, |x| x as usize != f, n_cols, monotone, &cfgs[c]);
                    done.lock().unwrap_or_else(|e| e.into_inner())[j] = Some(fit);
                });
            }
        });
        let mut fits = done
            .into_inner()
            .unwrap_or_else(|e| e.into_inner())
            .into_iter();
        let mut out = Vec::with_capacity(cfgs.len());
        for _ in cfgs {
            let mut per_fold = Vec::with_capacity(folds);
            for _ in 0..folds {
                match fits.next().flatten() {
                    Some(fit) => per_fold.push(fit?),
                    None => return Err(GbtError::other("a cross-validation fit did not finish")),
                }
            }
            out.push(per_fold);
        }
        Ok(out)
    }

    /// Every node's rounds scored by `score(node)`, labelled with the recorded failure.
    pub fn scores(&self, score: impl Fn(&NodeRounds) -> Vec<f64> + Sync) -> Vec<NodeScores> {
        self.nodes
            .par_iter()
            .map(|n| NodeScores {
                node: n.node.clone(),
                times: n.times.clone(),
                scores: score(n),
                failed_at: n.failed_at,
                precursor: n.precursor,
            })
            .collect()
    }

    /// Out-of-fold margins: each node scored by the model that did not see its fold,
    /// reading the first `n_cols` columns.
    pub fn oof_margins(&self, fold_models: &[Gbt], n_cols: usize) -> Vec<NodeScores> {
        self.scores(|n| {
            let rows: Vec<f64> = n
                .rows
                .chunks(self.n_features)
                .flat_map(|r| r[..n_cols].iter().map(|&v| v as f64))
                .collect();
            fold_models[n.fold].margins(&rows)
        })
    }
}
