//! The disk model: P(a data device fails within H days) from its SMART history.
//!
//! The node model watches the machine every few seconds and warns hours ahead; SMART changes
//! over days and warns days to weeks ahead, and, unlike our synthetic traces, there is real
//! labelled SMART data to train and judge it on (Backblaze, see `predictor/README.md`). The
//! storage node scores both and merges them with [`crate::combine::combine_risks`].
//!
//! The model file is its own kind (`"kind": "disk"`): gzip JSON with the feature spec, the
//! trees, the calibration, the alert rule and what it was trained on, including the failure
//! rate it was calibrated and tuned at.

pub mod cv;
pub mod eval;
pub mod features;
pub mod train;

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::gbt::{Gbt, Platt};
use crate::model::{read_model_value, write_model_json, AlertRule, ModelError, Reason, Risk};
use crate::sample::HealthSample;
use crate::split::NodeSplit;
use crate::trace::NodeSeries;
use features::{DeviceView, DiskFeatureSpec};

/// The disk-model schema this build reads and writes.
pub const DISK_SCHEMA_VERSION: u32 = 1;

/// Provenance of a disk model: what it was trained on, how, and at which failure rate.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DiskModelInfo {
    /// Trace directory, as given.
    pub trained_on: String,
    /// The command line that trained it.
    pub command: String,
    /// Which nodes trained (the rest are held out for `eval`).
    pub split: Option<NodeSplit>,
    /// Only rounds before this time were used (ms), if set.
    pub train_until_ms: Option<i64>,
    /// Devices (drives) trained on.
    pub devices: usize,
    /// Failures among them before `train_until_ms`.
    pub failures: usize,
    /// Device-days scored during cross-validation.
    pub device_days: f64,
    /// Failures per device-day in the data the calibration was fitted on (out-of-fold scores
    /// of the training devices): what `probability` means is relative to this rate, and
    /// the policy's base-rate correction is anchored to it.
    pub calibrated_failures_per_device_day: f64,
    /// Failures per device-day in the data the alert rule was tuned on (the same out-of-fold
    /// scores; recorded separately because a retuned model may differ).
    pub tuned_failures_per_device_day: f64,
    /// Tree rows fitted (positives, negatives).
    pub training_rows: (usize, usize),
    /// Cross-validation folds.
    pub folds: usize,
    /// Out-of-fold average precision of each candidate tree configuration.
    pub cv_pr_auc: Vec<(String, f64)>,
    /// The chosen configuration.
    pub chosen: String,
    /// Out-of-fold figures at the chosen rule: precision, recall, false alarms per 1000
    /// device-days, F1.
    pub cv_at_rule: (f64, f64, f64, f64),
    /// Wall-clock training time, seconds.
    pub train_seconds: f64,
}

/// A trained disk model.
#[derive(Debug, Serialize, Deserialize)]
pub struct DiskModel {
    /// Always `"disk"`.
    pub kind: String,
    /// Always [`DISK_SCHEMA_VERSION`] for a model this build loaded or trained.
    pub schema_version: u32,
    /// Prediction horizon H, ms.
    pub horizon_ms: i64,
    /// What the features read.
    pub spec: DiskFeatureSpec,
    /// Feature names, in row order.
    pub features: Vec<String>,
    /// The failure model.
    pub gbt: Gbt,
    /// Margin-to-probability calibration (fitted on out-of-fold scores).
    pub calibration: Platt,
    /// Alert rule, chosen by cross-validation.
    pub alert: AlertRule,
    /// Provenance.
    pub info: DiskModelInfo,
}

impl DiskModel {
    /// Loads and checks a disk model file (a node model, another schema or a corrupt file
    /// is a typed error).
    pub fn load(path: &Path) -> Result<DiskModel, ModelError> {
        let value = read_model_value(path, "disk", DISK_SCHEMA_VERSION)?;
        let model: DiskModel = serde_json::from_value(value).map_err(|e| ModelError::Format {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        model.check().map_err(|reason| ModelError::Inconsistent {
            path: path.to_path_buf(),
            reason,
        })?;
        Ok(model)
    }

    /// Writes the model, gzip-compressed.
    pub fn save(&self, path: &Path) -> Result<(), ModelError> {
        write_model_json(self, path)
    }

    /// Verifies that the parts fit together.
    pub fn check(&self) -> Result<(), String> {
        let names: Vec<String> = self.spec.features().into_iter().map(|f| f.0).collect();
        if names != self.features {
            return Err(format!(
                "the spec computes {} features, the file lists {}",
                names.len(),
                self.features.len()
            ));
        }
        if self.gbt.n_features != self.features.len() {
            return Err(format!(
                "trees expect {} features, file lists {}",
                self.gbt.n_features,
                self.features.len()
            ));
        }
        self.gbt.validate()?;
        if self.horizon_ms <= 0 || self.spec.spans_ms.iter().any(|&s| s <= 0) {
            return Err("non-positive horizon or span".into());
        }
        if self.alert.k == 0 || self.alert.k > self.alert.n || self.alert.round_ms <= 0 {
            return Err(format!("invalid alert rule {:?}", self.alert));
        }
        Ok(())
    }

    /// Calibrated probabilities of `device` of `series` at `times` (times without a fresh
    /// reading are skipped); returns the times kept.
    pub fn probabilities(
        &self,
        series: &NodeSeries,
        device: &str,
        times: &[i64],
    ) -> (Vec<i64>, Vec<f64>) {
        let view = DeviceView::new(&series.smart, device, &self.spec);
        let mut kept = Vec::new();
        let mut rows = Vec::new();
        for &t in times {
            if view.extract(&self.spec, t, &mut rows) {
                kept.push(t);
            }
        }
        let probs = self
            .gbt
            .margins_f32(&rows)
            .into_iter()
            .map(|m| self.calibration.probability(m))
            .collect();
        (kept, probs)
    }

    /// The riskiest device of `series` at `at_ms` with the `explain` strongest reasons
    /// (SHAP); `None` when no device has a fresh reading. Reasons name the device.
    pub fn score_series(&self, series: &NodeSeries, at_ms: i64, explain: usize) -> Option<Risk> {
        let mut best: Option<(f64, String, Vec<f64>)> = None;
        for device in series.smart.devices() {
            let view = DeviceView::new(&series.smart, device, &self.spec);
            let mut row = Vec::new();
            if !view.extract(&self.spec, at_ms, &mut row) {
                continue;
            }
            let wide: Vec<f64> = row.iter().map(|&v| v as f64).collect();
            let p = self.calibration.probability(self.gbt.margin(&wide));
            if best.as_ref().is_none_or(|b| p > b.0) {
                best = Some((p, device.to_string(), wide));
            }
        }
        let (probability, device, row) = best?;
        let reasons = if explain > 0 {
            let shap = self.gbt.shap(&row);
            let mut idx: Vec<usize> = (0..shap.len()).collect();
            idx.sort_by(|&a, &b| shap[b].abs().total_cmp(&shap[a].abs()));
            idx.into_iter()
                .take(explain)
                .map(|i| Reason {
                    feature: format!("{device}:{}", self.features[i]),
                    value: row[i],
                    contribution: shap[i],
                })
                .collect()
        } else {
            Vec::new()
        };
        Some(Risk {
            node: series.node.clone(),
            at_ms,
            probability,
            anomaly: f64::NAN,
            reasons,
        })
    }

    /// Scores a node from its recent samples (the agent's history: the samples carrying
    /// SMART) at the newest SMART reading, with three reasons.
    pub fn score_samples(&self, samples: &[HealthSample]) -> Result<Risk, ModelError> {
        let series = NodeSeries::from_samples(samples);
        let at = series.smart.ts.last().copied().unwrap_or(0);
        self.score_series(&series, at, 3)
            .ok_or_else(|| ModelError::NotEnoughData {
                node: series.node.clone(),
                need: 1,
                have: 0,
                span_min: self.spec.stale_ms / 60_000,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::eval::{evaluate_disk, DiskEvalConfig};
    use super::train::{train_disk, DiskTrainConfig};
    use super::*;
    use crate::progress::Progress;
    use crate::sample::{FailureRecord, SmartReadings};
    use crate::trace::Trace;
    use rand::{Rng, SeedableRng};

    const DAY: i64 = 86_400_000;

    /// A fleet of drives read daily for 400 days: 30% of failing drives grow reallocated /
    /// pending sectors over their last weeks; healthy drives sometimes carry a few
    /// reallocated sectors forever (as real ones do).
    fn fleet(drives: usize, seed: u64) -> Trace {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut trace = Trace::default();
        for d in 0..drives {
            let node = format!("D{seed}-{d:05}");
            let fails = rng.gen_bool(0.25);
            let fail_day: i64 = rng.gen_range(60..400);
            let last = if fails { fail_day } else { 400 };
            let warns = fails && rng.gen_bool(0.8);
            let lead: i64 = rng.gen_range(3..40);
            let chronic = if rng.gen_bool(0.08) {
                rng.gen_range(1..20)
            } else {
                0
            };
            let mut s = NodeSeries {
                node: node.clone(),
                ..Default::default()
            };
            let mut grown = 0.0;
            for day in 0..last {
                if warns && day >= last - lead && rng.gen_bool(0.5) {
                    grown += rng.gen_range(1.0..8.0);
                }
                let mut r = SmartReadings::new();
                let a = r.entry("disk".to_string()).or_default();
                a.insert("5".into(), chronic as f64 + grown);
                a.insert("197".into(), (grown / 2.0).floor());
                a.insert("9".into(), (day * 24) as f64);
                s.smart.push(day * DAY, &r);
            }
            if fails {
                trace.failures.insert(
                    node.clone(),
                    FailureRecord {
                        node: node.clone(),
                        failed_at_ms: last * DAY - DAY / 2,
                        cause: None,
                        precursor_onset_ms: None,
                        died_at_ms: None,
                    },
                );
            }
            trace.nodes.push(s);
        }
        trace
    }

    #[test]
    fn trains_by_cross_validation_evaluates_and_refuses_bad_files() {
        let trace = fleet(600, 3);
        let small = |iterations, depth| crate::gbt::GbtConfig {
            iterations,
            max_depth: depth,
            nbins: 32,
            ..Default::default()
        };
        let cfg = DiskTrainConfig {
            horizon_ms: 30 * DAY,
            until_ms: Some(250 * DAY),
            negative_stride: 5,
            grid: vec![("d2".into(), small(20, 2)), ("d3".into(), small(30, 3))],
            ..Default::default()
        };
        let (model, report) =
            train_disk(&trace, &cfg, "synthetic", "test", &Progress::hidden()).unwrap();
        assert_eq!(model.spec.attrs, ["5", "9", "197"]);
        assert_eq!(model.info.cv_pr_auc.len(), 2);
        let (p, r, _, _) = model.info.cv_at_rule;
        assert!(p > 0.5 && r > 0.3, "out of fold: precision {p} recall {r}");
        assert!(model.info.calibrated_failures_per_device_day > 0.0);
        let rule = report.rule.unwrap();
        assert!(report.budget >= rule.5 - 1e-12);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.model");
        model.save(&path).unwrap();
        let back = DiskModel::load(&path).unwrap();
        let s = &trace.nodes[0];
        let at = *s.smart.ts.last().unwrap();
        let (a, risk) = (
            model.score_series(s, at, 3).unwrap(),
            back.score_series(s, at, 3).unwrap(),
        );
        assert_eq!(
            (a.probability, &a.reasons),
            (risk.probability, &risk.reasons)
        );
        assert_eq!(risk.reasons.len(), 3);
        assert!(risk.reasons[0].feature.starts_with("disk:smart_"));

        let report = evaluate_disk(
            &back,
            &trace,
            &DiskEvalConfig {
                bootstrap: 50,
                ..Default::default()
            },
        )
        .unwrap();
        let names: Vec<&str> = report.methods.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names[..2], ["model", "backblaze_rule"]);
        let m = &report.methods[0];
        assert!(
            m.recall > 0.3 && m.recall_precursor.is_none(),
            "{}",
            m.recall
        );
        let ci = m.ci95.as_ref().unwrap();
        let p = ci.precision.unwrap();
        assert!(
            p.lo <= m.precision && m.precision <= p.hi,
            "{p:?} {}",
            m.precision
        );
        assert!(report.policy.is_some());
        let json = serde_json::to_value(&report).unwrap();
        assert!(json["methods"][0]["recall_precursor"].is_null());
        assert!(json["methods"][0]["stats"]["per_node"].is_array());

        // A node model file is not a disk model, and the reverse.
        assert!(matches!(
            crate::model::Model::load(&path),
            Err(ModelError::Kind { .. })
        ));
        // A split on a feature the model lacks is a typed error, not a panic at scoring.
        let mut v: serde_json::Value = serde_json::to_value(&model).unwrap();
        v["gbt"]["booster"]["trees"][0]["nodes"][0]["split_feature"] = serde_json::json!(999);
        std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
        let err = DiskModel::load(&path).unwrap_err();
        assert!(
            matches!(err, ModelError::Inconsistent { .. }) && err.to_string().contains("999"),
            "{err}"
        );
    }

    /// The shipped disk model (trained on Backblaze by `scripts/predictor-backblaze.sh`)
    /// loads with this build, records what it was trained on, and scores a drive whose
    /// pending sectors just grew above one that stayed clean.
    #[test]
    fn shipped_disk_model_loads_and_scores() {
        let crate_dir = std::env::var_os("CARGO_MANIFEST_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
        let path = crate_dir.join("models/disk.model");
        let model = DiskModel::load(&path).unwrap();
        assert!(std::fs::metadata(&path).unwrap().len() < 1024 * 1024);
        assert_eq!(model.horizon_ms, 30 * DAY);
        assert!(model.info.failures > 1000 && model.info.split.is_some());
        assert!(model.info.calibrated_failures_per_device_day > 0.0);
        let drive = |pending_now: f64| {
            let mut s = NodeSeries {
                node: "d".into(),
                ..Default::default()
            };
            for day in 0..60i64 {
                let mut r = SmartReadings::new();
                let a = r.entry("sda".to_string()).or_default();
                a.insert("5".into(), if day >= 55 { pending_now } else { 0.0 });
                a.insert("197".into(), if day >= 55 { pending_now } else { 0.0 });
                a.insert("9".into(), (20_000 + day * 24) as f64);
                s.smart.push(day * DAY, &r);
            }
            s
        };
        let clean = model.score_series(&drive(0.0), 59 * DAY, 3).unwrap();
        let sick = model.score_series(&drive(40.0), 59 * DAY, 3).unwrap();
        assert!(
            sick.probability > 2.0 * clean.probability,
            "clean {} sick {}",
            clean.probability,
            sick.probability
        );
        assert!(sick.reasons[0].feature.starts_with("sda:smart_"));
    }

    #[test]
    fn refuses_data_that_cannot_support_a_model() {
        let mut trace = fleet(60, 4);
        trace.failures.clear();
        let err = train_disk(
            &trace,
            &DiskTrainConfig::default(),
            "x",
            "x",
            &Progress::hidden(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("at least 20"), "{err}");
        let no_smart = Trace {
            nodes: vec![NodeSeries {
                node: "n".into(),
                ts: vec![1],
                values: vec![[0.0; crate::sample::N_METRICS]],
                ..Default::default()
            }],
            ..Default::default()
        };
        let err = train_disk(
            &no_smart,
            &DiskTrainConfig {
                split: NodeSplit::all(),
                ..Default::default()
            },
            "x",
            "x",
            &Progress::hidden(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("SMART"), "{err}");
    }
}
