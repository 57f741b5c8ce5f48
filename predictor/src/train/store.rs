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

/// Tree fits run at once at most (see [`Store::fit_jobs`] why two).
pub(super) const CONCURRENT_FITS: usize = 2;

/// Rows copied into the column-major layout at a time (see [`Store::fit`]).
const GATHER_BLOCK: usize = 256;

/// One fit of [`Store::fit_jobs`].
pub(super) struct FitJob<'a> {
    pub cfg: &'a GbtConfig,
    /// Columns read (the first ones of each row).
    pub n_cols: usize,
    /// Monotone constraints of those columns (empty: none).
    pub monotone: &'a [i8],
    /// The fold whose rows are left out (`None`: every row).
    pub left_out: Option<usize>,
}

impl<'a> FitJob<'a> {
    /// One job per fold, each leaving that fold out.
    pub fn per_fold(
        cfg: &'a GbtConfig,
        n_cols: usize,
        monotone: &'a [i8],
        folds: usize,
    ) -> impl Iterator<Item = FitJob<'a>> {
        (0..folds).map(move |f| FitJob {
            cfg,
            n_cols,
            monotone,
            left_out: Some(f),
        })
    }
}

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
        // One task per node (`with_max_len(1)`): rayon otherwise cuts the nodes into a few
        // long runs that it cannot split once started, and one core sat idle for the
        // last run's tens of seconds while the other finished it.
        let nodes = nodes
            .par_iter()
            .with_max_len(1)
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

    /// Fits on the tree rows whose fold `keep` accepts, reading the first `n_cols` columns
    /// (`parallel`: see [`Gbt::fit_columns`]).
    pub fn fit(
        &self,
        rows: &TreeRows,
        keep: impl Fn(u8) -> bool,
        n_cols: usize,
        monotone: &[i8],
        cfg: &GbtConfig,
        parallel: bool,
    ) -> Result<Gbt, GbtError> {
        let idx: Vec<usize> = (0..rows.y.len()).filter(|&i| keep(rows.fold[i])).collect();
        let n = idx.len();
        let mut data = vec![0.0f64; n * n_cols];
        // A block of rows at a time, column by column: the block's rows stay in cache
        // while each column's run of them is written in order (row by row, each row's
        // values would land on `n_cols` cache lines far apart).
        for (b, block) in idx.chunks(GATHER_BLOCK).enumerate() {
            let r0 = b * GATHER_BLOCK;
            for c in 0..n_cols {
                let out = &mut data[c * n + r0..c * n + r0 + block.len()];
                for (o, &i) in out.iter_mut().zip(block) {
                    let (node, round) = rows.at[i];
                    *o =
                        self.nodes[node as usize].rows[round as usize * self.n_features + c] as f64;
                }
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
            parallel,
        )
    }

    /// Runs `jobs` on up to `concurrent` threads, taking them in order, and returns their
    /// models in the same order.
    ///
    /// Each concurrent fit runs on its own thread, entirely (see [`Gbt::fit_columns`]);
    /// one fit alone builds its histograms on rayon's pool. Not more than
    /// [`CONCURRENT_FITS`]: each fit holds its own column-major copy of its rows (~0.5 GB
    /// for three quarters of 500 nodes x 30 days). Plain threads rather than rayon tasks,
    /// because a rayon worker waiting inside forust would steal and start yet another fit.
    /// Callers put every fit they can name up front into one call, longest first, so that
    /// no core waits while the other finishes a queue of its own.
    pub fn fit_jobs(
        &self,
        rows: &TreeRows,
        jobs: &[FitJob],
        concurrent: usize,
    ) -> Result<Vec<Gbt>, GbtError> {
        let next = AtomicUsize::new(0);
        let done: Mutex<Vec<Option<Result<Gbt, GbtError>>>> =
            Mutex::new((0..jobs.len()).map(|_| None).collect());
        let workers = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(concurrent)
            .clamp(1, CONCURRENT_FITS)
            .min(jobs.len());
        let alone = workers == 1;
        std::thread::scope(|scope| {
            for _ in 0..workers {
                scope.spawn(|| loop {
                    let j = next.fetch_add(1, Ordering::Relaxed);
                    let Some(job) = jobs.get(j) else { break };
                    let keep = |x: u8| job.left_out.is_none_or(|f| x as usize != f);
                    let fit = self.fit(rows, keep, job.n_cols, job.monotone, job.cfg, alone);
                    done.lock().unwrap_or_else(|e| e.into_inner())[j] = Some(fit);
                });
            }
        });
        done.into_inner()
            .unwrap_or_else(|e| e.into_inner())
            .into_iter()
            .map(|fit| fit.unwrap_or_else(|| Err(GbtError::other("a tree fit did not finish"))))
            .collect()
    }

    /// Every node's rounds scored by `score(node)`, labelled with the recorded failure.
    pub fn scores(&self, score: impl Fn(&NodeRounds) -> Vec<f64> + Sync) -> Vec<NodeScores> {
        self.nodes
            .par_iter()
            .with_max_len(1)
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

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Nodes whose first column decides the label, with noise columns beside it.
    fn store(nodes: usize, rounds: usize, n_features: usize) -> (Store, TreeRows) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let mut tree_rows = TreeRows::default();
        let nodes = (0..nodes)
            .map(|n| {
                let mut rows = Vec::with_capacity(rounds * n_features);
                for r in 0..rounds {
                    let signal: f32 = rng.gen_range(0.0..1.0);
                    rows.push(signal);
                    rows.extend((1..n_features).map(|_| rng.gen_range(-1.0f32..1.0)));
                    tree_rows.at.push((n as u32, r as u32));
                    tree_rows.y.push(if signal > 0.8 { 1.0 } else { 0.0 });
                    tree_rows.w.push(1.0);
                    tree_rows.fold.push((n % 3) as u8);
                }
                NodeRounds {
                    node: format!("n{n}"),
                    fold: n % 3,
                    failed_at: None,
                    precursor: None,
                    times: (0..rounds as i64).collect(),
                    rows,
                    statics: vec![[0.0; N_STATIC]; rounds],
                }
            })
            .collect();
        (Store { nodes, n_features }, tree_rows)
    }

    /// The queue returns each job's model in the order given, each the same to the bit as
    /// the job fitted alone (left-out fold, columns read, constraints), and the blocked copy
    /// into columns (more rows than one block) is the copy the models were fitted on.
    #[test]
    fn queued_fits_are_the_fits_made_one_by_one() {
        let (store, rows) = store(9, 70, 5);
        assert!(rows.y.len() > 2 * GATHER_BLOCK);
        let deep = GbtConfig {
            iterations: 8,
            ..GbtConfig::default()
        };
        let stump = GbtConfig {
            iterations: 3,
            max_depth: 1,
            ..GbtConfig::default()
        };
        let monotone = [1i8, 0, 0, 0, 0];
        let jobs: Vec<FitJob> = FitJob::per_fold(&deep, 5, &monotone, 3)
            .chain([FitJob {
                cfg: &stump,
                n_cols: 2,
                monotone: &[],
                left_out: None,
            }])
            .collect();
        let fits = store.fit_jobs(&rows, &jobs, CONCURRENT_FITS).unwrap();
        assert_eq!(fits.len(), jobs.len());
        let probe: Vec<f64> = store.nodes[0].rows.iter().map(|&v| v as f64).collect();
        for (job, fit) in jobs.iter().zip(&fits) {
            let keep = |x: u8| job.left_out.is_none_or(|f| x as usize != f);
            let alone = store
                .fit(&rows, keep, job.n_cols, job.monotone, job.cfg, true)
                .unwrap();
            assert_eq!(fit.n_features, job.n_cols);
            let wide: Vec<f64> = probe
                .chunks(store.n_features)
                .flat_map(|r| r[..job.n_cols].to_vec())
                .collect();
            let (a, b) = (fit.margins(&wide), alone.margins(&wide));
            assert_eq!(a.len(), 70);
            assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
        }
        // The fold models differ from one another (each left a different fold out) and
        // learned the rule.
        let m0 = fits[0].margins(&probe);
        let m1 = fits[1].margins(&probe);
        assert_ne!(m0, m1);
        let (hi, lo): (Vec<_>, Vec<_>) = probe.chunks(5).zip(&m0).partition(|(r, _)| r[0] > 0.85);
        let mean = |v: &[(&[f64], &f64)]| v.iter().map(|p| *p.1).sum::<f64>() / v.len() as f64;
        assert!(mean(&hi) > mean(&lo));
    }

    /// A fit that forust refuses (here a NaN label in two of the three folds' rows) comes
    /// back as an error, not a panic or a missing model.
    #[test]
    fn a_refused_fit_is_an_error() {
        let (store, mut rows) = store(3, 10, 3);
        rows.y[0] = f64::NAN;
        let cfg = GbtConfig::default();
        let jobs: Vec<FitJob> = FitJob::per_fold(&cfg, 3, &[], 3).collect();
        assert!(store.fit_jobs(&rows, &jobs, CONCURRENT_FITS).is_err());
        assert!(store.fit_jobs(&rows, &jobs[..1], 1).is_ok());
    }
}
