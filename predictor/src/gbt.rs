//! Gradient-boosted trees (forust-ml) for P(failure within horizon), Platt calibration and
//! SHAP explanations.
//!
//! Rows are stored row-major everywhere in this crate; forust wants column-major matrices, so
//! the conversion happens here, once, and nowhere else.

use forust_ml::constraints::{Constraint, ConstraintMap};
use std::sync::OnceLock;

use forust_ml::gradientbooster::{GradientBooster, ImportanceMethod};
use forust_ml::objective::ObjectiveType;
use forust_ml::sampler::SampleMethod;
use forust_ml::Matrix;
use serde::{Deserialize, Serialize};

use crate::shap::TreeExplainer;

mod bins;
use bins::tail_grid;

/// Hyper-parameters of the boosted model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GbtConfig {
    /// Number of trees.
    pub iterations: usize,
    /// Shrinkage per tree.
    pub learning_rate: f32,
    /// Maximum depth of each tree.
    pub max_depth: usize,
    /// Histogram bins per feature.
    pub nbins: u16,
    /// Put half of the bins in the tail of a feature beyond its most common value (see
    /// [`bins::tail_grid`]). Off by default, so that the shipped models and their published
    /// figures retrain exactly; `train --tail-bins` turns it on for a node model and its
    /// single-tree baseline (predictor/README.md, "Third pass"). Off when a stored
    /// configuration predates it.
    #[serde(default)]
    pub tail_bins: bool,
    /// Minimum hessian sum per leaf. Kept low: confident leaves have tiny hessians, and a
    /// high floor caps how far a blatant precursor can push the score.
    pub min_leaf_weight: f32,
    /// L2 regularisation of leaf weights.
    pub l2: f32,
    /// Fraction of the rows each tree is grown on, drawn anew per tree (1: every row).
    /// forust applies it only with a sampling method set, which this crate did not do before
    /// `row_sampling`: every model trained until then grew each tree on all rows, whatever
    /// this field recorded.
    pub subsample: f32,
    /// Whether `subsample` takes effect. Off when a stored configuration predates it (those
    /// models were grown on every row, see `subsample`), and off by default so that the
    /// shipped models retrain exactly; `train --row-sample F` turns it on.
    #[serde(default)]
    pub row_sampling: bool,
    /// Feature subsample per tree: with few failures, forcing trees to use different
    /// features keeps one spurious feature from dominating.
    pub colsample: f64,
    /// Seed of the row subsampling.
    pub seed: u64,
}

impl Default for GbtConfig {
    fn default() -> Self {
        GbtConfig {
            iterations: 150,
            learning_rate: 0.1,
            max_depth: 5,
            nbins: 128,
            tail_bins: false,
            min_leaf_weight: 1.0,
            l2: 1.0,
            subsample: 0.8,
            row_sampling: false,
            colsample: 0.6,
            seed: 5,
        }
    }
}

/// Why fitting failed (forust reports invalid parameters and data this way).
#[derive(Debug, thiserror::Error)]
#[error("gradient boosting: {0}")]
pub struct GbtError(String);

impl GbtError {
    /// An error of the caller's fitting machinery rather than forust's.
    pub fn other(what: &str) -> GbtError {
        GbtError(what.to_string())
    }
}

/// A fitted boosted classifier over a fixed number of features.
#[derive(Serialize, Deserialize)]
pub struct Gbt {
    /// Number of input features.
    pub n_features: usize,
    /// The forust ensemble (its own serde format, nested in the model file).
    pub booster: GradientBooster,
    /// The trees flattened for SHAP, built on first use (not stored in the model file).
    #[serde(skip)]
    explainer: OnceLock<TreeExplainer>,
}

impl std::fmt::Debug for Gbt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gbt")
            .field("n_features", &self.n_features)
            .field("iterations", &self.booster.iterations)
            .finish()
    }
}

fn column_major(rows: &[f64], n_rows: usize, n_cols: usize) -> Vec<f64> {
    let mut out = vec![0.0; rows.len()];
    for r in 0..n_rows {
        for c in 0..n_cols {
            out[c * n_rows + r] = rows[r * n_cols + c];
        }
    }
    out
}

impl Gbt {
    /// Fits on row-major `rows` (`y.len()` rows of `n_features`), labels 0/1 and weights.
    /// `monotone[i]` is +1 / -1 when risk may only rise / fall with feature `i` (0: free, and
    /// an empty slice constrains nothing).
    pub fn fit(
        rows: &[f64],
        n_features: usize,
        y: &[f64],
        weights: &[f64],
        monotone: &[i8],
        cfg: &GbtConfig,
    ) -> Result<Gbt, GbtError> {
        let n = y.len();
        if n == 0 || rows.len() != n * n_features || weights.len() != n {
            return Err(GbtError(format!(
                "inconsistent training data: {} values, {n} labels, {} weights, {n_features} features",
                rows.len(),
                weights.len()
            )));
        }
        Self::fit_columns(
            column_major(rows, n, n_features),
            n_features,
            y,
            weights,
            monotone,
            cfg,
            true,
        )
    }

    /// Fits on column-major `data` (feature 0 of every row, then feature 1...), as forust
    /// reads it: callers that gather rows from a larger store write them straight into this
    /// layout and skip a row-major copy of the whole training set. Taken by value: with
    /// [`GbtConfig::tail_bins`] the values are put on the bin grid in place.
    ///
    /// `parallel`: build each node's histograms on rayon's pool, for a fit that runs alone;
    /// or all on the calling thread, for fits that run side by side, one per core. The
    /// trees are the same either way. Side by side, forust's parallel histograms left a
    /// core idle about a tenth of the time (probably as in featurisation: rayon cuts each
    /// node's columns into a few runs and the fit waits for the last), and its binning
    /// runs on the calling thread anyway.
    pub fn fit_columns(
        mut data: Vec<f64>,
        n_features: usize,
        y: &[f64],
        weights: &[f64],
        monotone: &[i8],
        cfg: &GbtConfig,
        parallel: bool,
    ) -> Result<Gbt, GbtError> {
        let n = y.len();
        if n == 0 || data.len() != n * n_features || weights.len() != n {
            return Err(GbtError(format!(
                "inconsistent training data: {} values, {n} labels, {} weights, {n_features} features",
                data.len(),
                weights.len()
            )));
        }
        if cfg.tail_bins {
            use rayon::prelude::*;
            let grid = |col: &mut [f64]| tail_grid(col, weights, usize::from(cfg.nbins));
            if parallel {
                data.par_chunks_mut(n).for_each(grid);
            } else {
                data.chunks_mut(n).for_each(grid);
            }
        }
        let matrix = Matrix::new(&data, n, n_features);
        let constraints: ConstraintMap = monotone
            .iter()
            .enumerate()
            .filter_map(|(i, &d)| match d {
                1 => Some((i, Constraint::Positive)),
                -1 => Some((i, Constraint::Negative)),
                _ => None,
            })
            .collect();
        let mut booster = GradientBooster::default()
            .set_monotone_constraints((!constraints.is_empty()).then_some(constraints))
            .set_objective_type(ObjectiveType::LogLoss)
            .set_iterations(cfg.iterations)
            .set_learning_rate(cfg.learning_rate)
            .set_max_depth(cfg.max_depth)
            .set_nbins(cfg.nbins)
            .set_min_leaf_weight(cfg.min_leaf_weight)
            .set_l2(cfg.l2)
            .set_subsample(cfg.subsample)
            .set_sample_method(if cfg.row_sampling && cfg.subsample < 1.0 {
                SampleMethod::Random
            } else {
                SampleMethod::None
            })
            .set_colsample_bytree(cfg.colsample)
            .set_seed(cfg.seed)
            .set_parallel(parallel)
            .set_initialize_base_score(true);
        booster
            .fit(&matrix, y, weights, None)
            .map_err(|e| GbtError(e.to_string()))?;
        Ok(Gbt {
            n_features,
            booster,
            explainer: OnceLock::new(),
        })
    }

    /// Checks that the trees can be walked safely: every split reads a feature this model
    /// has and every child index points further down its own tree (so no walk can index out
    /// of range or loop). forust indexes without checking, so a corrupt or hand-edited model
    /// file would otherwise panic the node at its first prediction.
    pub fn validate(&self) -> Result<(), String> {
        if self.booster.trees.is_empty() {
            return Err("the ensemble has no trees".into());
        }
        for (t, tree) in self.booster.trees.iter().enumerate() {
            if tree.nodes.is_empty() {
                return Err(format!("tree {t} has no nodes"));
            }
            for (i, node) in tree.nodes.iter().enumerate() {
                if node.is_leaf {
                    if !node.weight_value.is_finite() {
                        return Err(format!("tree {t} leaf {i} has a non-finite value"));
                    }
                    continue;
                }
                if node.split_feature >= self.n_features {
                    return Err(format!(
                        "tree {t} node {i} splits on feature {} of {}",
                        node.split_feature, self.n_features
                    ));
                }
                for child in [node.left_child, node.right_child, node.missing_node] {
                    if child <= i || child >= tree.nodes.len() {
                        return Err(format!(
                            "tree {t} node {i} points to node {child} (of {})",
                            tree.nodes.len()
                        ));
                    }
                }
            }
        }
        if !self.booster.base_score.is_finite() {
            return Err("non-finite base score".into());
        }
        Ok(())
    }

    /// Fits on row-major `f32` rows (as the disk pipeline stores them, to halve memory).
    pub fn fit_f32(
        rows: &[f32],
        n_features: usize,
        y: &[f64],
        weights: &[f64],
        monotone: &[i8],
        cfg: &GbtConfig,
    ) -> Result<Gbt, GbtError> {
        let wide: Vec<f64> = rows.iter().map(|&v| v as f64).collect();
        Self::fit(&wide, n_features, y, weights, monotone, cfg)
    }

    /// Log-odds for many row-major `f32` rows.
    pub fn margins_f32(&self, rows: &[f32]) -> Vec<f64> {
        let wide: Vec<f64> = rows.iter().map(|&v| v as f64).collect();
        self.margins(&wide)
    }

    /// Log-odds for many row-major rows.
    pub fn margins(&self, rows: &[f64]) -> Vec<f64> {
        let n = rows.len() / self.n_features.max(1);
        if n == 0 {
            return Vec::new();
        }
        let data = column_major(rows, n, self.n_features);
        self.booster
            .predict(&Matrix::new(&data, n, self.n_features), false)
    }

    /// Log-odds of one row.
    pub fn margin(&self, row: &[f64]) -> f64 {
        self.booster
            .predict(&Matrix::new(row, 1, self.n_features), false)
            .first()
            .copied()
            .unwrap_or(f64::NAN)
    }

    /// Share of total split gain per feature index, largest first.
    pub fn importance(&self) -> Vec<(usize, f32)> {
        let mut v: Vec<(usize, f32)> = self
            .booster
            .calculate_feature_importance(ImportanceMethod::TotalGain, true)
            .into_iter()
            .collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1));
        v
    }

    /// Exact SHAP values of one row (log-odds units), one per feature; the bias term is
    /// dropped. See [`crate::shap`] for what is computed and why it is not forust's.
    pub fn shap(&self, row: &[f64]) -> Vec<f64> {
        let mut out = vec![0.0; self.n_features];
        let n = row.len().min(self.n_features);
        self.explainer().shap_into(&row[..n], &mut out[..n]);
        out
    }

    /// The cached SHAP explainer (flattened on first use, then shared).
    pub fn explainer(&self) -> &TreeExplainer {
        self.explainer
            .get_or_init(|| TreeExplainer::new(&self.booster))
    }
}

/// Platt scaling: `p = sigmoid(a * margin + b)`, fitted on a later time slice than the trees
/// so the probabilities mean what they say at the rate the cluster actually sees.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Platt {
    /// Slope on the raw margin.
    pub a: f64,
    /// Offset.
    pub b: f64,
}

impl Default for Platt {
    fn default() -> Self {
        Platt { a: 1.0, b: 0.0 }
    }
}

impl Platt {
    /// Calibrated probability for a raw margin.
    pub fn probability(&self, margin: f64) -> f64 {
        1.0 / (1.0 + (-(self.a * margin + self.b)).exp())
    }

    /// Fits by Newton's method on weighted log loss with Platt's smoothed targets (which keep
    /// the fit finite when the classes separate perfectly).
    pub fn fit(margins: &[f64], labels: &[bool], weights: &[f64]) -> Platt {
        let (mut pos, mut neg) = (0.0, 0.0);
        for (&l, &w) in labels.iter().zip(weights) {
            if l {
                pos += w;
            } else {
                neg += w;
            }
        }
        if pos == 0.0 || neg == 0.0 {
            return Platt::default();
        }
        let t_pos = (pos + 1.0) / (pos + 2.0);
        let t_neg = 1.0 / (neg + 2.0);
        let target = |l: bool| if l { t_pos } else { t_neg };
        let loss = |a: f64, b: f64| -> f64 {
            let mut total = 0.0;
            for ((&m, &l), &w) in margins.iter().zip(labels).zip(weights) {
                if !m.is_finite() {
                    continue;
                }
                let z = a * m + b;
                let t = target(l);
                // log(1 + e^z) - t z, computed stably.
                let softplus = if z > 0.0 {
                    z + (-z).exp().ln_1p()
                } else {
                    z.exp().ln_1p()
                };
                total += w * (softplus - t * z);
            }
            total
        };
        let (mut a, mut b) = (1.0, 0.0);
        let mut current = loss(a, b);
        for _ in 0..100 {
            let (mut ga, mut gb, mut haa, mut hab, mut hbb) = (0.0, 0.0, 1e-9, 0.0, 1e-9);
            for ((&m, &l), &w) in margins.iter().zip(labels).zip(weights) {
                if !m.is_finite() {
                    continue;
                }
                let p = 1.0 / (1.0 + (-(a * m + b)).exp());
                let d = w * (p - target(l));
                let h = w * (p * (1.0 - p)).max(1e-12);
                ga += d * m;
                gb += d;
                haa += h * m * m;
                hab += h * m;
                hbb += h;
            }
            let det = haa * hbb - hab * hab;
            if det.abs() < 1e-18 {
                break;
            }
            let da = (hbb * ga - hab * gb) / det;
            let db = (haa * gb - hab * ga) / det;
            // Backtracking: a full Newton step can overshoot when margins are extreme.
            let mut step = 1.0;
            let mut improved = false;
            while step > 1e-6 {
                let (na, nb) = (a - step * da, b - step * db);
                let l = loss(na, nb);
                if l.is_finite() && l <= current {
                    a = na;
                    b = nb;
                    improved = current - l > 1e-12 * current.abs().max(1.0);
                    current = l;
                    break;
                }
                step *= 0.5;
            }
            if !improved {
                break;
            }
        }
        if a.is_finite() && b.is_finite() {
            Platt { a, b }
        } else {
            Platt::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn learns_a_threshold_rule_explains_it_and_round_trips() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let n = 2000;
        let mut rows = Vec::new();
        let mut y = Vec::new();
        for _ in 0..n {
            let signal: f64 = rng.gen_range(0.0..1.0);
            let noise: f64 = rng.gen_range(0.0..1.0);
            rows.extend_from_slice(&[noise, signal, f64::NAN]);
            y.push(if signal > 0.7 { 1.0 } else { 0.0 });
        }
        let cfg = GbtConfig {
            iterations: 100,
            ..Default::default()
        };
        let model = Gbt::fit(&rows, 3, &y, &vec![1.0; n], &[0, 1, 0], &cfg).unwrap();
        let hi = model.margin(&[0.5, 0.9, f64::NAN]);
        let lo = model.margin(&[0.5, 0.2, f64::NAN]);
        assert!(hi > 2.0 && lo < -2.0, "hi {hi} lo {lo}");
        let shap = model.shap(&[0.5, 0.9, f64::NAN]);
        assert_eq!(shap.len(), 3);
        assert!(shap[1].abs() > 10.0 * shap[0].abs(), "{shap:?}");
        let json = serde_json::to_string(&model).unwrap();
        let back: Gbt = serde_json::from_str(&json).unwrap();
        assert_eq!(back.margin(&[0.5, 0.9, f64::NAN]), hi);
        assert_eq!(model.margins(&rows[..6]).len(), 2);
        assert!(Gbt::fit(&rows[..5], 3, &y[..2], &[1.0, 1.0], &[], &cfg).is_err());
    }

    /// `subsample` alone never sampled (forust needs a sampling method too), so every model
    /// trained before `row_sampling` grew its trees on all rows; with it, trees differ and
    /// still learn the rule.
    #[test]
    fn rows_are_sampled_only_with_row_sampling_on() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        let n = 3000;
        let (mut rows, mut y) = (Vec::new(), Vec::new());
        for _ in 0..n {
            let signal: f64 = rng.gen_range(0.0..1.0);
            let noise: f64 = rng.gen_range(0.0..1.0);
            rows.extend_from_slice(&[noise, signal]);
            y.push(if signal + 0.2 * noise > 0.75 {
                1.0
            } else {
                0.0
            });
        }
        let fit = |subsample, row_sampling| {
            let cfg = GbtConfig {
                iterations: 40,
                subsample,
                row_sampling,
                colsample: 1.0,
                ..Default::default()
            };
            Gbt::fit(&rows, 2, &y, &vec![1.0; n], &[], &cfg).unwrap()
        };
        let margins = |m: &Gbt| m.margins(&rows);
        let all_rows = margins(&fit(1.0, false));
        assert_eq!(margins(&fit(0.8, false)), all_rows);
        assert_eq!(margins(&fit(1.0, true)), all_rows);
        let sampled = fit(0.5, true);
        assert_ne!(margins(&sampled), all_rows);
        assert!(sampled.margin(&[0.5, 0.95]) > 2.0 && sampled.margin(&[0.5, 0.2]) < -2.0);
    }

    #[test]
    fn platt_recovers_a_known_calibration() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let (a, b) = (0.5, -2.0);
        let mut m = Vec::new();
        let mut l = Vec::new();
        for _ in 0..20000 {
            let x: f64 = rng.gen_range(-6.0..6.0);
            let p = 1.0 / (1.0 + (-(a * x + b)).exp());
            m.push(x);
            l.push(rng.gen_bool(p));
        }
        let fit = Platt::fit(&m, &l, &vec![1.0; m.len()]);
        assert!(
            (fit.a - a).abs() < 0.05 && (fit.b - b).abs() < 0.1,
            "{fit:?}"
        );
        assert_eq!(
            Platt::fit(&m, &vec![false; m.len()], &vec![1.0; m.len()]),
            Platt::default()
        );
    }
}
