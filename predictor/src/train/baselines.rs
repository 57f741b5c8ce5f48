//! The baselines, fitted and tuned exactly as the model: out of fold over the training
//! nodes' groups, with the model's candidate rules and goal.

use crate::baselines::{
    static_score, OutOfFold, StaticThresholds, TreeBaseline, N_STATIC, STATIC_QUANTILES,
    STATIC_STATS,
};
#[cfg(doc)]
use crate::eval::quantile;
use crate::eval::{choose_operating_point, pr_curve, NodeScores, OperatingGoal, RuleOption};
use crate::gbt::{Gbt, GbtConfig, GbtError};
use crate::model::AlertRule;

use super::store::{FitJob, Store, TreeRows};
use super::TrainConfig;

/// Rank step of the threshold search on out-of-fold scores (every method the same).
pub(super) const RANK_STEP: f64 = 1.05;

/// A method's operating point as recorded in the model file.
pub(super) fn out_of_fold(
    name: &str,
    o: &RuleOption,
    scores: &[NodeScores],
    cfg: &TrainConfig,
) -> OutOfFold {
    let st = &o.stats;
    OutOfFold {
        name: name.into(),
        alert: rule(o, cfg),
        precision: st.precision(),
        recall: st.recall(),
        recall_precursor: st.recall_precursor(),
        false_alarms_per_1000_node_days: st.false_alarms_per_1000(),
        f1: st.f1(),
        pr_auc: pr_curve(scores, cfg.horizon_ms).0,
    }
}

/// The alert rule of an option, on training's cadence.
pub(super) fn rule(o: &RuleOption, cfg: &TrainConfig) -> AlertRule {
    AlertRule {
        threshold: o.threshold,
        k: o.k,
        n: o.n,
        round_ms: cfg.round_ms,
    }
}

/// [`quantile`] of an already sorted `v` (nearest rank), `None` when empty.
fn sorted_quantile(v: &[f64], q: f64) -> Option<f64> {
    (!v.is_empty()).then(|| v[((v.len() - 1) as f64 * q).round() as usize])
}

/// Healthy-round quantiles of each static statistic over the nodes `keep` accepts: one
/// limit vector per entry of [`STATIC_QUANTILES`].
fn static_limits(store: &Store, h: i64, keep: impl Fn(usize) -> bool) -> Vec<Vec<f64>> {
    let mut per_q = vec![vec![f64::INFINITY; N_STATIC]; STATIC_QUANTILES.len()];
    for c in 0..N_STATIC {
        let mut healthy: Vec<f64> = Vec::new();
        for n in store.nodes.iter().filter(|n| keep(n.fold)) {
            for (i, &t) in n.times.iter().enumerate() {
                let positive = n.failed_at.is_some_and(|f| f > t && f - t <= h);
                let v = n.statics[i][c] as f64;
                if !positive && v.is_finite() {
                    healthy.push(v);
                }
            }
        }
        // Sorted once for every quantile ([`quantile`] of each would sort a copy each time).
        healthy.sort_unstable_by(f64::total_cmp);
        for (q, limits) in STATIC_QUANTILES.iter().zip(per_q.iter_mut()) {
            // A statistic that is always 0 when healthy (errors) gets a tiny limit: any
            // error then counts, as an operator's "errors > 0" alert would.
            limits[c] = sorted_quantile(&healthy, *q)
                .unwrap_or(f64::INFINITY)
                .max(1e-9);
        }
    }
    per_q
}

/// Static thresholds: per fold, limits at each candidate quantile of the other folds'
/// healthy rounds; the quantile, rule and threshold with the best out-of-fold F1 under
/// `goal` win; the limits are then refitted on every training node.
pub(super) fn fit_static(
    store: &Store,
    cfg: &TrainConfig,
    goal: &OperatingGoal,
    span_ms: i64,
) -> Option<(StaticThresholds, OutOfFold)> {
    let h = cfg.horizon_ms;
    let per_fold: Vec<Vec<Vec<f64>>> = (0..cfg.cv_folds)
        .map(|f| static_limits(store, h, |x| x != f))
        .collect();
    let mut best: Option<(usize, RuleOption, Vec<NodeScores>)> = None;
    for q in 0..STATIC_QUANTILES.len() {
        let oof = store.scores(|n| {
            let limits = &per_fold[n.fold][q];
            n.statics.iter().map(|s| static_score(s, limits)).collect()
        });
        if let Some(o) = choose_operating_point(&oof, h, goal, RANK_STEP) {
            tracing::info!(
                quantile = STATIC_QUANTILES[q],
                f1 = o.slack,
                "static thresholds out of fold"
            );
            if best.as_ref().is_none_or(|b| o.slack > b.1.slack) {
                best = Some((q, o, oof));
            }
        }
    }
    let (q, option, oof) = best?;
    let limits = static_limits(store, h, |_| true).swap_remove(q);
    let figures = out_of_fold("static_thresholds", &option, &oof, cfg);
    Some((
        StaticThresholds {
            stats: STATIC_STATS.iter().map(|s| s.0.to_string()).collect(),
            quantile: STATIC_QUANTILES[q],
            limits,
            span_ms,
            alert: rule(&option, cfg),
        },
        figures,
    ))
}

/// The single tree's settings: one tree of depth 6 on every row and column, with the
/// model's bin cuts (`train --tail-bins`).
pub(super) fn tree_config(cfg: &TrainConfig) -> GbtConfig {
    GbtConfig {
        iterations: 1,
        learning_rate: 1.0,
        max_depth: 6,
        subsample: 1.0,
        colsample: 1.0,
        tail_bins: cfg.gbt.tail_bins,
        ..Default::default()
    }
}

/// Columns the single tree reads: the window features, not the anomaly score (the
/// model's own, last in each row). Its fold fits, its scoring and its final fit all read
/// these.
fn tree_columns(store: &Store) -> usize {
    store.n_features - 1
}

/// The single tree's fits: one per fold on the model's tree rows ([`tree_columns`]), no
/// constraints. Training runs them in the cross-validation's queue; they depend on
/// nothing it decides.
pub(super) fn tree_jobs<'a>(
    store: &Store,
    tree_cfg: &'a GbtConfig,
    folds: usize,
) -> impl Iterator<Item = FitJob<'a>> {
    FitJob::per_fold(tree_cfg, tree_columns(store), &[], folds)
}

/// The single tree, tuned on the out-of-fold margins of its fold models (see
/// [`tree_jobs`]) under `goal` and refitted on every row.
pub(super) fn fit_tree(
    store: &Store,
    rows: &TreeRows,
    cfg: &TrainConfig,
    goal: &OperatingGoal,
    folds: &[Gbt],
) -> Result<Option<(TreeBaseline, OutOfFold)>, GbtError> {
    let tree_cfg = tree_config(cfg);
    let n_window = tree_columns(store);
    let oof = store.oof_margins(folds, n_window);
    let Some(option) = choose_operating_point(&oof, cfg.horizon_ms, goal, RANK_STEP) else {
        tracing::warn!(
            "the single tree detects nothing within the budget out of fold: baseline left out"
        );
        return Ok(None);
    };
    let figures = out_of_fold("decision_tree", &option, &oof, cfg);
    let gbt = store.fit(rows, |_| true, n_window, &[], &tree_cfg, true)?;
    Ok(Some((
        TreeBaseline {
            gbt,
            alert: rule(&option, cfg),
        },
        figures,
    )))
}
