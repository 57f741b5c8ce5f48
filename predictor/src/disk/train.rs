//! Training the disk model: cross-validation over device groups chooses the tree
//! configuration, calibrates and tunes the alert rule; the final trees are fitted on every
//! training device.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::eval::{choose_operating_point, pr_curve, NodeScores, OperatingGoal};
use crate::gbt::{GbtConfig, Platt};
use crate::model::AlertRule;
use crate::progress::Progress;
use crate::split::NodeSplit;
use crate::trace::Trace;
use crate::train::TrainError;

use super::cv::{drives, fit_cv, oof_scores, training_rows, Drive, RowConfig};
use super::features::{attr_kind, attr_order, AttrKind, DiskFeatureSpec};
use super::{DiskModel, DiskModelInfo, DISK_SCHEMA_VERSION};

const DAY_MS: i64 = 86_400_000;

/// The attributes of Backblaze's own rule: a drive with any of them above zero is suspect.
pub const BACKBLAZE_RULE_ATTRS: [&str; 5] = ["5", "187", "188", "197", "198"];

/// Disk-model training settings; defaults are the shipped disk model's.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiskTrainConfig {
    /// Horizon H, ms.
    pub horizon_ms: i64,
    /// Scoring cadence, ms (SMART changes over days).
    pub round_ms: i64,
    /// Which nodes train.
    pub split: NodeSplit,
    /// Only data before this time trains (failures after it are unknown), ms.
    pub until_ms: Option<i64>,
    /// Cross-validation folds.
    pub folds: usize,
    /// Keep one in this many negative rounds as tree rows.
    pub negative_stride: usize,
    /// Share of the training weight given to positive rows.
    pub positive_share: f64,
    /// Candidate tree configurations; cross-validation picks one by out-of-fold PR-AUC.
    pub grid: Vec<(String, GbtConfig)>,
    /// Candidate (k, n) alert rules, in rounds.
    pub rules: Vec<(usize, usize)>,
    /// False alarms per 1000 healthy device-days allowed when choosing the rule; `None`:
    /// the out-of-fold rate of Backblaze's own rule tuned the same way, so the model is
    /// compared with it at an equal or lower false-alarm rate.
    pub max_false_alarms: Option<f64>,
    /// Refuse to train with fewer known failures than this.
    pub min_failures: usize,
    /// An attribute is a feature when at least this fraction of training devices report it.
    pub min_attr_coverage: f64,
}

impl Default for DiskTrainConfig {
    fn default() -> Self {
        let tree = |iterations, depth| GbtConfig {
            iterations,
            learning_rate: 0.1,
            max_depth: depth,
            nbins: 64,
            colsample: 0.8,
            ..Default::default()
        };
        DiskTrainConfig {
            horizon_ms: 30 * DAY_MS,
            round_ms: DAY_MS,
            split: NodeSplit::default(),
            until_ms: None,
            folds: 4,
            negative_stride: 25,
            positive_share: 0.2,
            grid: vec![
                ("depth3_100".into(), tree(100, 3)),
                ("depth5_150".into(), tree(150, 5)),
            ],
            rules: vec![(1, 1), (2, 2), (2, 3), (3, 7)],
            max_false_alarms: None,
            min_failures: 20,
            min_attr_coverage: 0.01,
        }
    }
}

/// What training measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiskTrainReport {
    /// Backblaze's rule on the out-of-fold rounds at its tuned threshold: (threshold, k, n,
    /// precision, recall, false alarms per 1000 device-days, F1).
    pub rule: Option<(f64, usize, usize, f64, f64, f64, f64)>,
    /// The false-alarm budget the model was tuned under.
    pub budget: f64,
    /// Seconds per phase.
    pub seconds: Vec<(String, f64)>,
    /// The ten features with the largest share of split gain.
    pub top_features: Vec<(String, f32)>,
}

/// Backblaze's rule as a score: the largest `log(1 + raw)` of SMART 5, 187, 188, 197 and
/// 198 in a feature row (0 when the drive reports none). "Above zero" is any threshold
/// between 0 and `log 2`; tuning may pick a higher one.
pub fn backblaze_rule_score(spec: &DiskFeatureSpec) -> impl Fn(&[f32]) -> Vec<f64> + Sync {
    let names: Vec<String> = spec.features().into_iter().map(|f| f.0).collect();
    let n = names.len();
    let cols: Vec<usize> = BACKBLAZE_RULE_ATTRS
        .iter()
        .filter_map(|a| names.iter().position(|x| *x == format!("smart_{a}_raw")))
        .collect();
    move |rows: &[f32]| {
        rows.chunks(n.max(1))
            .map(|r| {
                cols.iter()
                    .map(|&c| r[c] as f64)
                    .filter(|v| v.is_finite())
                    .map(|v| v.max(0.0).ln_1p())
                    .fold(0.0, f64::max)
            })
            .collect()
    }
}

/// The disk model's goal for every method: the best F1 within `budget` false alarms per
/// 1000 healthy device-days, no precision floor.
pub(crate) fn f1_goal(rules: &[(usize, usize)], budget: f64) -> OperatingGoal {
    OperatingGoal {
        rules: rules.to_vec(),
        max_false_alarms: budget,
        min_precision: 0.0,
    }
}

/// The attributes reported by at least `min_coverage` of `drives`, in canonical order.
pub fn choose_attrs(drives: &[Drive], min_coverage: f64) -> Vec<String> {
    let mut count: std::collections::BTreeMap<&str, usize> = Default::default();
    for d in drives {
        for c in &d.series.smart.columns {
            if c.device == d.device {
                *count.entry(c.attr.as_str()).or_default() += 1;
            }
        }
    }
    let need = (drives.len() as f64 * min_coverage).ceil().max(1.0) as usize;
    let mut attrs: Vec<String> = count
        .into_iter()
        .filter(|&(_, c)| c >= need)
        .map(|(a, _)| a.to_string())
        .collect();
    attrs.sort_by(|a, b| attr_order(a, b));
    // At most 32 attributes, error counters first: NVMe logs carry dozens of fields.
    attrs.sort_by_key(|a| attr_kind(a) != AttrKind::Counter);
    attrs.truncate(32);
    attrs.sort_by(|a, b| attr_order(a, b));
    attrs
}

/// Failures per device-day in out-of-fold scores.
fn failure_rate(nodes: &[NodeScores]) -> (f64, f64) {
    let failures = nodes.iter().filter(|s| s.failed_at.is_some()).count() as f64;
    let days: f64 = nodes.iter().map(|s| s.times.len() as f64).sum();
    (failures / days.max(1.0), days)
}

/// Trains a disk model on the SMART readings of `trace`'s training nodes.
pub fn train_disk(
    trace: &Trace,
    cfg: &DiskTrainConfig,
    trained_on: &str,
    command: &str,
    progress: &Progress,
) -> Result<(DiskModel, DiskTrainReport), TrainError> {
    let started = Instant::now();
    let mut seconds = Vec::new();
    let mut phase = Instant::now();
    let mut lap = |name: &str, phase: &mut Instant| {
        seconds.push((name.to_string(), phase.elapsed().as_secs_f64()));
        tracing::info!(
            phase = name,
            secs = phase.elapsed().as_secs_f64(),
            "disk training phase done"
        );
        *phase = Instant::now();
    };
    if cfg.folds < 2 {
        return Err(TrainError::Data(
            "cross-validation needs at least 2 folds".into(),
        ));
    }
    let split = cfg.split;
    let keep = |n: &str| split.is_train(n);
    let drives = drives(trace, &keep, &split, cfg.folds);
    if drives.is_empty() {
        return Err(TrainError::Data(
            "no training node has SMART readings: a disk model needs a `smart` object in the samples".into(),
        ));
    }
    let rows_cfg = RowConfig {
        round_ms: cfg.round_ms,
        horizon_ms: cfg.horizon_ms,
        until_ms: cfg.until_ms,
        negative_stride: cfg.negative_stride,
        positive_share: cfg.positive_share,
    };
    let failures = drives
        .iter()
        .filter(|d| rows_cfg.known_failure(d).is_some())
        .count();
    if failures < cfg.min_failures {
        return Err(TrainError::Data(format!(
            "{failures} failures among {} training devices before the cut-off; at least {} are needed to fit and cross-validate a model",
            drives.len(),
            cfg.min_failures
        )));
    }
    let mut per_fold = vec![0usize; cfg.folds];
    for d in &drives {
        if rows_cfg.known_failure(d).is_some() {
            per_fold[d.fold] += 1;
        }
    }
    if per_fold.contains(&0) {
        return Err(TrainError::Data(format!(
            "a cross-validation fold holds no failure ({per_fold:?}); use fewer folds"
        )));
    }
    let spec = DiskFeatureSpec::new(choose_attrs(&drives, cfg.min_attr_coverage));
    if spec.attrs.is_empty() {
        return Err(TrainError::Data(
            "no SMART attribute is reported widely enough".into(),
        ));
    }
    let features = spec.features();
    let monotone: Vec<i8> = features.iter().map(|f| f.1).collect();
    let names: Vec<String> = features.into_iter().map(|f| f.0).collect();
    let rows = training_rows(&drives, &spec, &rows_cfg);
    let positives = rows.positives();
    if positives == 0 {
        return Err(TrainError::Data(
            "no positive rounds (failures with readings within H)".into(),
        ));
    }
    lap("rows", &mut phase);

    // Backblaze's rule on the same out-of-fold rounds: the incumbent whose false-alarm rate
    // the model must not exceed (unless a budget is given).
    let rule_score = backblaze_rule_score(&spec);
    let rule_oof = oof_scores(&drives, &spec, &rows_cfg, &|_, r| rule_score(r));
    let rule = choose_operating_point(
        &rule_oof,
        cfg.horizon_ms,
        &f1_goal(&cfg.rules, f64::INFINITY),
        1.05,
    );
    let (base_rate, device_days) = failure_rate(&rule_oof);
    drop(rule_oof);
    let budget = cfg
        .max_false_alarms
        .or(rule.as_ref().map(|r| r.stats.false_alarms_per_1000()))
        .unwrap_or(f64::INFINITY);
    lap("rule", &mut phase);

    // Model selection: out-of-fold PR-AUC of each configuration.
    let bar = progress.bar("cross-validation");
    bar.set_length(cfg.grid.len() as u64);
    let mut best: Option<(String, f64, Vec<NodeScores>, crate::gbt::Gbt)> = None;
    let mut cv_pr_auc = Vec::new();
    for (name, gbt_cfg) in &cfg.grid {
        let (fold_models, all) = fit_cv(&rows, cfg.folds, &monotone, gbt_cfg)?;
        let oof = oof_scores(&drives, &spec, &rows_cfg, &|fold, r| {
            fold_models[fold].margins_f32(r)
        });
        let (ap, _) = pr_curve(&oof, cfg.horizon_ms);
        tracing::info!(config = %name, pr_auc = ap, "out-of-fold PR-AUC");
        cv_pr_auc.push((name.clone(), ap));
        if best.as_ref().is_none_or(|b| ap > b.1) {
            best = Some((name.clone(), ap, oof, all));
        }
        bar.inc(1);
    }
    let Some((chosen, _, mut oof, gbt)) = best else {
        return Err(TrainError::Data("no tree configuration to try".into()));
    };
    lap("cross-validation", &mut phase);

    // Calibration on out-of-fold margins (every labelled round), then the rule.
    let mut margins = Vec::new();
    let mut labels = Vec::new();
    for s in &oof {
        for (&t, &m) in s.times.iter().zip(&s.scores) {
            margins.push(m);
            labels.push(
                s.failed_at
                    .is_some_and(|f| f > t && f - t <= cfg.horizon_ms),
            );
        }
    }
    let calibration = Platt::fit(&margins, &labels, &vec![1.0; margins.len()]);
    drop((margins, labels));
    for s in &mut oof {
        s.scores
            .iter_mut()
            .for_each(|v| *v = calibration.probability(*v));
    }
    let tuned = choose_operating_point(&oof, cfg.horizon_ms, &f1_goal(&cfg.rules, budget), 1.05).ok_or_else(|| {
        TrainError::Data(format!(
            "cross-validated, the model detects no failure within {budget:.2} false alarms per 1000 device-days: the data cannot support a model at that rate"
        ))
    })?;
    lap("calibration and rule", &mut phase);

    let top_features = gbt
        .importance()
        .into_iter()
        .take(10)
        .filter_map(|(i, g)| names.get(i).map(|n| (n.clone(), g)))
        .collect();
    let st = &tuned.stats;
    let model = DiskModel {
        kind: "disk".into(),
        schema_version: DISK_SCHEMA_VERSION,
        horizon_ms: cfg.horizon_ms,
        spec,
        features: names,
        gbt,
        calibration,
        alert: AlertRule {
            threshold: tuned.threshold,
            k: tuned.k,
            n: tuned.n,
            round_ms: cfg.round_ms,
        },
        info: DiskModelInfo {
            trained_on: trained_on.to_string(),
            command: command.to_string(),
            split: Some(split),
            train_until_ms: cfg.until_ms,
            devices: drives.len(),
            failures,
            device_days,
            calibrated_failures_per_device_day: base_rate,
            tuned_failures_per_device_day: base_rate,
            training_rows: (positives, rows.y.len() - positives),
            folds: cfg.folds,
            cv_pr_auc,
            chosen,
            cv_at_rule: (
                st.precision(),
                st.recall(),
                st.false_alarms_per_1000(),
                st.f1(),
            ),
            train_seconds: started.elapsed().as_secs_f64(),
        },
    };
    Ok((
        model,
        DiskTrainReport {
            rule: rule.map(|r| {
                (
                    r.threshold,
                    r.k,
                    r.n,
                    r.stats.precision(),
                    r.stats.recall(),
                    r.stats.false_alarms_per_1000(),
                    r.stats.f1(),
                )
            }),
            budget,
            seconds,
            top_features,
        },
    ))
}
