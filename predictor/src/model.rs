//! The versioned model file and scoring.
//!
//! One file carries everything scoring needs — schema version, window geometry, feature names,
//! normalisation, horizon, the LSTM autoencoder, the boosted trees, calibration and the alert
//! rule chosen at training — so a node can never pair trees with the wrong features. The file
//! is gzip-compressed JSON; plain JSON is accepted too.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use serde::{Deserialize, Serialize};

use crate::features::batch::BatchFeatures;
use crate::features::{
    feature_names, ColumnMap, Normaliser, UnknownFeature, WindowFeatures, WindowSpec,
};
use crate::gbt::{Gbt, Platt};
use crate::lstm::{to_steps, LstmAutoencoder};
use crate::sample::{HealthSample, N_METRICS};
use crate::trace::{GridSeries, NodeSeries};

/// The schema this build reads and writes. Bump on any change to the model's meaning.
/// Version 3: latency is normalised by a load effect learned per node (it was a fixed
/// queueing formula), and the file carries the baselines trained beside the model.
///
/// Adding features does not bump it: a model lists the features its trees read by name, and
/// a build that computes more feeds each model only those ([`ColumnMap`]), so a newer build
/// reads older schema-3 models with a subset of its features and scores them as before.
pub const SCHEMA_VERSION: u32 = 3;

/// Name of the anomaly-score feature appended to the window features.
pub const ANOMALY_FEATURE: &str = "lstm_anomaly";

/// The longest autoencoder sequence a model file may declare (the generator's geometries
/// use 6..=48 steps).
const MAX_SEQ_LEN: usize = 1024;

/// Why a model could not be loaded, saved or used.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// Reading or writing the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The model file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a model of any schema (not JSON, or missing the version).
    #[error("{path}: not an augur model file: {reason}")]
    Format {
        /// The model file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The file is a model of another schema version.
    #[error("{path}: model schema version {found} is not supported (this build reads version {expected}); retrain with this build's `augur-predict train`")]
    Schema {
        /// The model file.
        path: PathBuf,
        /// Version in the file.
        found: u64,
        /// Version this build understands.
        expected: u32,
    },
    /// The parts of the model do not fit together (corrupt or hand-edited file).
    #[error("{path}: inconsistent model: {reason}")]
    Inconsistent {
        /// The model file.
        path: PathBuf,
        /// What does not fit.
        reason: String,
    },
    /// The model reads a feature this build does not compute (or names one twice).
    #[error("{path}: {source}")]
    Features {
        /// The model file.
        path: PathBuf,
        /// Which feature.
        #[source]
        source: UnknownFeature,
    },
    /// The file holds another kind of model (a disk model where a node model was expected,
    /// or the reverse).
    #[error("{path}: this is a {found} model; expected a {expected} model")]
    Kind {
        /// The model file.
        path: PathBuf,
        /// Kind in the file.
        found: String,
        /// Kind the caller asked for.
        expected: &'static str,
    },
    /// The samples given are not enough to score a window.
    #[error("not enough samples to score node {node}: need {need} in the last {span_min} min, have {have}")]
    NotEnoughData {
        /// Node id.
        node: String,
        /// Samples required.
        need: usize,
        /// Samples present.
        have: usize,
        /// Span considered, minutes.
        span_min: i64,
    },
}

/// The alert rule: a node alerts when its calibrated risk is at or above `threshold` in `k` of
/// the last `n` scoring rounds, scoring every `round_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AlertRule {
    /// Calibrated probability threshold.
    pub threshold: f64,
    /// Rounds above threshold required...
    pub k: usize,
    /// ...among this many most recent rounds.
    pub n: usize,
    /// Time between scoring rounds, ms.
    pub round_ms: i64,
}

/// Provenance of a model: what it was trained on and how to reproduce it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Trace directory (as given on the command line).
    pub trained_on: String,
    /// Command line that produced the model, if trained by the CLI.
    pub command: String,
    /// Samples in the training trace.
    pub samples: usize,
    /// Nodes in the training trace.
    pub nodes: usize,
    /// Failures in the training trace.
    pub failures: usize,
    /// Rows the trees were fitted on.
    pub training_rows: usize,
    /// Wall-clock training time, seconds.
    pub train_seconds: f64,
    /// Final autoencoder training loss.
    pub lstm_loss: f64,
    /// Command line that re-chose the alert rule on a validation trace (`augur-predict
    /// tune`), empty if the rule is the one training chose.
    #[serde(default)]
    pub tune_command: String,
    /// Failures per node-day in the slice the calibration was fitted on: what
    /// `probability` is relative to, and what the policy's base-rate correction is
    /// anchored to. `None` in models trained before it was recorded.
    #[serde(default)]
    pub calibrated_failures_per_node_day: Option<f64>,
    /// Failures per node-day in the trace the alert rule was tuned on (the calibration
    /// slice, or the validation trace of `augur-predict tune`).
    #[serde(default)]
    pub tuned_failures_per_node_day: Option<f64>,
    /// Which nodes trained, when some were held out (`eval` then reads only the others).
    #[serde(default)]
    pub split: Option<crate::split::NodeSplit>,
    /// Cross-validation folds over node groups (0: the old time-ordered split).
    #[serde(default)]
    pub cv_folds: usize,
    /// Out-of-fold PR-AUC of each candidate tree configuration.
    #[serde(default)]
    pub cv_pr_auc: Vec<(String, f64)>,
    /// The false alarms per 1000 healthy node-days the model's operating point was chosen
    /// within (the configured budget, or the static thresholds' own out-of-fold rate when
    /// lower).
    #[serde(default)]
    pub false_alarm_budget: Option<f64>,
    /// The model's and each baseline's operating point and out-of-fold figures.
    #[serde(default)]
    pub out_of_fold: Vec<crate::baselines::OutOfFold>,
}

/// A trained failure model.
#[derive(Debug, Serialize, Deserialize)]
pub struct Model {
    /// Always [`SCHEMA_VERSION`] for a model this build loaded or trained.
    pub schema_version: u32,
    /// Prediction horizon H: the model gives P(failure within H), ms.
    pub horizon_ms: i64,
    /// Window geometry.
    pub window: WindowSpec,
    /// Names of the features the trees read, in their column order: window features, then
    /// [`ANOMALY_FEATURE`]. A model trained by this build lists every feature it computes;
    /// an older model a subset, and is fed only those.
    pub features: Vec<String>,
    /// LSTM input normalisation.
    pub normaliser: Normaliser,
    /// The anomaly model.
    pub lstm: LstmAutoencoder,
    /// The failure model.
    pub gbt: Gbt,
    /// Margin-to-probability calibration.
    pub calibration: Platt,
    /// Alert rule, chosen out of fold (or re-chosen by `augur-predict tune`).
    pub alert: AlertRule,
    /// Provenance.
    pub info: ModelInfo,
    /// The baselines fitted and tuned beside the model, for `eval`.
    #[serde(default)]
    pub baselines: Option<crate::baselines::NodeBaselines>,
    /// Where [`Self::features`] sit in the row this build computes, matched by name once at
    /// load (not per score).
    #[serde(skip, default = "ColumnMap::full")]
    pub(crate) columns: ColumnMap,
}

/// One feature's push on a prediction (SHAP value, log-odds units).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reason {
    /// Feature name.
    pub feature: String,
    /// The feature's value in this window.
    pub value: f64,
    /// Its contribution; positive pushes towards failure.
    pub contribution: f64,
}

/// The model's verdict on one node at one time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Risk {
    /// Node id.
    pub node: String,
    /// Scoring time, ms.
    pub at_ms: i64,
    /// Calibrated P(failure within the horizon).
    pub probability: f64,
    /// LSTM reconstruction error of the window.
    pub anomaly: f64,
    /// Top contributing features, strongest first.
    pub reasons: Vec<Reason>,
}

impl Model {
    /// Loads and checks a model file. The schema version is checked before anything else so an
    /// old or future model fails with a clear message rather than a field-level parse error.
    pub fn load(path: &Path) -> Result<Model, ModelError> {
        let value = read_model_value(path, "node", SCHEMA_VERSION)?;
        let format = |reason: String| ModelError::Format {
            path: path.to_path_buf(),
            reason,
        };
        let mut model: Model = serde_json::from_value(value).map_err(|e| format(e.to_string()))?;
        model.columns =
            ColumnMap::resolve(&model.features).map_err(|source| ModelError::Features {
                path: path.to_path_buf(),
                source,
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

    /// Verifies that the parts fit together, including every tree's split indices. Whether
    /// this build computes every feature named is checked at load ([`ColumnMap::resolve`]).
    pub fn check(&self) -> Result<(), String> {
        self.gbt.validate()?;
        if self.features.last().map(String::as_str) != Some(ANOMALY_FEATURE) {
            return Err(format!("the last feature is not `{ANOMALY_FEATURE}`"));
        }
        if self.gbt.n_features != self.features.len() {
            return Err(format!(
                "trees expect {} features, file lists {}",
                self.gbt.n_features,
                self.features.len()
            ));
        }
        if self.lstm.input_dim() != N_METRICS
            || self.normaliser.center.len() != N_METRICS
            || self.normaliser.scale.len() != N_METRICS
            || self.normaliser.log.len() != N_METRICS
        {
            return Err(format!(
                "autoencoder / normaliser are not {N_METRICS}-dimensional"
            ));
        }
        let h = self.lstm.encoder.b.len() / 4;
        if self.lstm.encoder.w.dim() != (N_METRICS + h, 4 * h)
            || self.lstm.decoder.w.dim() != (2 * h, 4 * h)
            || self.lstm.decoder.b.len() != 4 * h
            || self.lstm.out_w.dim() != (h, N_METRICS)
        {
            return Err("autoencoder weight shapes disagree".into());
        }
        let w = &self.window;
        // Scoring allocates the sequence and multiplies spans: a geometry beyond any real
        // one would overflow or exhaust memory at the first round instead of failing here.
        const YEAR_MS: i64 = 366 * 24 * 3_600_000;
        let spans = [
            ("short_ms", w.short_ms),
            ("mid_ms", w.mid_ms),
            ("long_ms", w.long_ms),
            ("baseline_ms", w.baseline_ms),
            ("seq_step_ms", w.seq_step_ms),
            ("resolution_ms", w.resolution_ms),
        ];
        if let Some((name, v)) = spans.iter().find(|(_, v)| !(1..=YEAR_MS).contains(v)) {
            return Err(format!("window {name} {v} is outside 1 ms ..= 366 days"));
        }
        if !(1..=MAX_SEQ_LEN).contains(&w.seq_len) {
            return Err(format!(
                "window seq_len {} is outside 1..={MAX_SEQ_LEN}",
                w.seq_len
            ));
        }
        crate::baselines::check_rule(&self.alert)?;
        if let Some(b) = &self.baselines {
            b.check(self.features.len() - 1)?;
        }
        Ok(())
    }

    /// Feature rows (the model's [`Self::features`], in its order) for `times` of one node,
    /// row-major. Times without enough data are skipped; returns the times kept with their
    /// rows.
    pub fn feature_rows(&self, series: &NodeSeries, times: &[i64]) -> (Vec<i64>, Vec<f64>) {
        let (kept, rows) = feature_rows(series, times, &self.window, &self.normaliser, &self.lstm);
        (kept, self.columns.select(rows))
    }

    /// Calibrated probabilities for many times of one node (evaluation, timelines).
    pub fn probabilities(&self, series: &NodeSeries, times: &[i64]) -> (Vec<i64>, Vec<f64>) {
        let (kept, rows) = self.feature_rows(series, times);
        let probs = self
            .gbt
            .margins(&rows)
            .into_iter()
            .map(|m| self.calibration.probability(m))
            .collect();
        (kept, probs)
    }

    /// Scores one node at `at_ms` with the `explain` strongest reasons (SHAP). `None` when the
    /// window holds too few samples.
    pub fn score_series(&self, series: &NodeSeries, at_ms: i64, explain: usize) -> Option<Risk> {
        let (kept, row) = self.feature_rows(series, &[at_ms]);
        kept.first()?;
        let margin = self.gbt.margin(&row);
        let reasons = if explain > 0 {
            let shap = self.gbt.shap(&row);
            let mut idx: Vec<usize> = (0..shap.len()).collect();
            idx.sort_by(|&a, &b| shap[b].abs().total_cmp(&shap[a].abs()));
            idx.into_iter()
                .take(explain)
                .map(|i| Reason {
                    feature: self.features[i].clone(),
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
            probability: self.calibration.probability(margin),
            anomaly: row.last().copied().unwrap_or(f64::NAN),
            reasons,
        })
    }

    /// Scores a node from its recent samples (a replay, a copy of a history) at the time of
    /// the newest sample, with three reasons. The storage node scores its agent's history
    /// through [`crate::HistoryHandle::score_node`] instead: the same risk from a grid kept
    /// as samples arrive, where this resamples every sample at every call.
    pub fn score_samples(&self, samples: &[HealthSample]) -> Result<Risk, ModelError> {
        let series = NodeSeries::from_samples(samples);
        let at = series.ts.last().copied().unwrap_or(0);
        self.score_series(&series, at, 3)
            .ok_or_else(|| ModelError::NotEnoughData {
                node: series.node.clone(),
                need: self.window.min_samples,
                have: series
                    .resample(self.window.resolution_ms)
                    .range(at - self.window.mid_ms, at)
                    .len(),
                span_min: self.window.mid_ms / 60_000,
            })
    }

    /// Scores a node from its incrementally kept grid ([`GridSeries`], as the agent's history
    /// keeps it) at the time of the newest sample, with three reasons: the same risk as
    /// [`Self::score_samples`] of the same samples, without resampling every raw sample at
    /// every call. The grid is re-gridded first if it is not at this model's resolution.
    pub fn score_grid(&self, grid: &mut GridSeries) -> Result<Risk, ModelError> {
        grid.set_resolution(self.window.resolution_ms);
        let at = grid.last_ts().unwrap_or(0);
        let series = grid.series();
        self.score_series(series, at, 3)
            .ok_or_else(|| ModelError::NotEnoughData {
                node: series.node.clone(),
                need: self.window.min_samples,
                have: series.range(at - self.window.mid_ms, at).len(),
                span_min: self.window.mid_ms / 60_000,
            })
    }
}

/// Reads a model file (gzip or plain JSON) and checks its kind and schema version before
/// anything else, so an old, future or other-kind model fails with a clear message rather
/// than a field-level parse error. Files without a `kind` are node models (schema 2 had
/// none).
pub(crate) fn read_model_value(
    path: &Path,
    kind: &'static str,
    schema: u32,
) -> Result<serde_json::Value, ModelError> {
    let io = |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    };
    let format = |reason: String| ModelError::Format {
        path: path.to_path_buf(),
        reason,
    };
    let raw = std::fs::read(path).map_err(io)?;
    let text = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut s = Vec::new();
        GzDecoder::new(&raw[..])
            .read_to_end(&mut s)
            .map_err(|e| format(format!("bad gzip stream: {e}")))?;
        s
    } else {
        raw
    };
    let value: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| format(e.to_string()))?;
    let found_kind = value
        .get("kind")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("node");
    if found_kind != kind {
        return Err(ModelError::Kind {
            path: path.to_path_buf(),
            found: found_kind.to_string(),
            expected: kind,
        });
    }
    let found = value
        .get("schema_version")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| format("no numeric `schema_version`".into()))?;
    if found != u64::from(schema) {
        return Err(ModelError::Schema {
            path: path.to_path_buf(),
            found,
            expected: schema,
        });
    }
    Ok(value)
}

/// Writes any model as gzip-compressed JSON.
pub(crate) fn write_model_json<T: Serialize>(model: &T, path: &Path) -> Result<(), ModelError> {
    let io = |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    };
    let json = serde_json::to_vec(model).map_err(|e| io(std::io::Error::other(e)))?;
    let file = std::fs::File::create(path).map_err(io)?;
    let mut gz = GzEncoder::new(std::io::BufWriter::new(file), Compression::best());
    gz.write_all(&json).map_err(io)?;
    gz.finish().map_err(io)?.flush().map_err(io)
}

/// Feature rows (window features, then the autoencoder's anomaly score) of one node at
/// `times`, row-major; times whose window holds too few samples are skipped. Shared by
/// training (before trees exist) and scoring, so both see identical features.
pub fn feature_rows(
    series: &NodeSeries,
    times: &[i64],
    window: &WindowSpec,
    normaliser: &Normaliser,
    lstm: &LstmAutoencoder,
) -> (Vec<i64>, Vec<f64>) {
    let series = &*series.resample(window.resolution_ms);
    let wf = WindowFeatures {
        series,
        spec: *window,
    };
    let kept: Vec<i64> = times.iter().copied().filter(|&t| wf.scorable(t)).collect();
    let n_feat = feature_names().len() + 1;
    let mut rows = Vec::with_capacity(kept.len() * n_feat);
    let mut batch = BatchFeatures::new(series, *window, normaliser, &kept);
    for chunk in kept.chunks(256) {
        let seqs: Vec<_> = chunk.iter().map(|&t| batch.sequence(t)).collect();
        let anomalies = lstm.errors(&to_steps(&seqs));
        for (&t, a) in chunk.iter().zip(anomalies) {
            batch.extract(t, &mut rows);
            rows.push(a);
        }
    }
    (kept, rows)
}

#[cfg(test)]
#[path = "model_tests.rs"]
mod tests;
