//! Feeding a model the features it names, in its order.
//!
//! Why: a model file lists the feature names its trees were fitted on, and a newer build may
//! compute more (features are only ever appended, and an existing feature keeps its name and
//! meaning; a change of meaning is a schema bump). Matching the model's list against this
//! build's by name once, at load, lets an older model keep scoring exactly as it did while
//! new models use the new features; a model naming a feature this build does not compute
//! (one from a newer build) is refused at load rather than fed the wrong column.

use std::collections::HashMap;

use super::feature_names;
use crate::model::ANOMALY_FEATURE;

/// Why a model's feature list cannot be served by this build.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnknownFeature {
    /// The model reads a feature this build does not compute.
    #[error("the model reads feature `{feature}`, which this build does not compute (a model from a newer build?); retrain with this build's `augur-predict train`")]
    NotComputed {
        /// The feature's name.
        feature: String,
    },
    /// The model names a feature twice.
    #[error("the model names feature `{feature}` twice")]
    Duplicate {
        /// The feature's name.
        feature: String,
    },
}

/// Where each of a model's features sits in the row this build computes (the window
/// features of [`super::feature_defs`], then the autoencoder's anomaly score).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnMap {
    /// For each of the model's features, in its order, the column of this build's row.
    columns: Vec<usize>,
    /// Width of this build's row.
    full: usize,
}

impl ColumnMap {
    /// The names of this build's row, in order: what a model trained now lists.
    pub fn build_names() -> Vec<String> {
        let mut names = feature_names();
        names.push(ANOMALY_FEATURE.to_string());
        names
    }

    /// Every column of this build's row, in order (a model trained by this build).
    pub fn full() -> ColumnMap {
        let full = Self::build_names().len();
        ColumnMap {
            columns: (0..full).collect(),
            full,
        }
    }

    /// Matches a model's feature names against this build's row.
    pub fn resolve(names: &[String]) -> Result<ColumnMap, UnknownFeature> {
        let build = Self::build_names();
        let index: HashMap<&str, usize> = build
            .iter()
            .enumerate()
            .map(|(i, n)| (n.as_str(), i))
            .collect();
        let mut columns = Vec::with_capacity(names.len());
        let mut used = vec![false; build.len()];
        for name in names {
            let &c = index
                .get(name.as_str())
                .ok_or_else(|| UnknownFeature::NotComputed {
                    feature: name.clone(),
                })?;
            if std::mem::replace(&mut used[c], true) {
                return Err(UnknownFeature::Duplicate {
                    feature: name.clone(),
                });
            }
            columns.push(c);
        }
        Ok(ColumnMap {
            columns,
            full: build.len(),
        })
    }

    /// Whether the model reads this build's row as it is.
    pub fn is_identity(&self) -> bool {
        self.columns.len() == self.full && self.columns.iter().enumerate().all(|(i, &c)| i == c)
    }

    /// Number of features the model reads.
    pub fn width(&self) -> usize {
        self.columns.len()
    }

    /// The model's rows from this build's row-major `rows` (a copy only when the model reads
    /// a subset or another order).
    pub fn select(&self, rows: Vec<f64>) -> Vec<f64> {
        if self.is_identity() {
            return rows;
        }
        let mut out = Vec::with_capacity(rows.len() / self.full.max(1) * self.columns.len());
        for row in rows.chunks_exact(self.full) {
            out.extend(self.columns.iter().map(|&c| row[c]));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::simulated::SimulatedSource;
    use crate::agent::Collector;
    use crate::generate::FaultKind;
    use crate::model::{Model, ModelError};
    use crate::sample::HealthSample;
    use crate::trace::NodeSeries;

    fn crate_dir() -> std::path::PathBuf {
        std::env::var_os("CARGO_MANIFEST_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into())
    }

    const T0: i64 = 1_763_942_400_000;

    /// A simulated node (60 s) whose supply flaps, link loses packets and disk slows from
    /// hour 30 on, 34 hours of it.
    fn pinned_node() -> NodeSeries {
        let mut src = SimulatedSource::healthy("pin", 23, 60_000);
        let injector = src.injector();
        let sick_from = T0 + 30 * 3_600_000;
        injector.inject(FaultKind::PsuFlapping, sick_from, 4 * 3_600_000);
        injector.inject(FaultKind::PacketLoss, sick_from, 4 * 3_600_000);
        injector.inject(FaultKind::FailSlowDisk, sick_from, 4 * 3_600_000);
        let samples: Vec<HealthSample> = (0..34 * 60)
            .map(|i| src.collect(T0 + i * 60_000).unwrap().unwrap())
            .collect();
        NodeSeries::from_samples(&samples)
    }

    /// The shipped `default.model` (112 window features + the anomaly, fewer than this build
    /// computes) scores exactly as it did before features were selected by name: the values
    /// were computed with the build before that change (2026-12-05) and pinned here. A change
    /// to an existing feature's definition fails here; adding a feature must not.
    #[test]
    fn shipped_default_model_scores_as_before_features_were_added() {
        let model = Model::load(&crate_dir().join("models/default.model")).unwrap();
        assert_eq!(model.features.len(), 113);
        assert!(model.features.len() < ColumnMap::build_names().len());
        let s = pinned_node();
        // (hour, probability, anomaly, strongest reason, its value, its contribution)
        let pinned = [
            (
                20,
                0.03967984495984165,
                0.023869018308815177,
                "lstm_anomaly",
                0.023869018308815177,
                -0.22678597423269797,
            ),
            (
                32,
                0.9668124269871162,
                3.175206317962536,
                "lstm_anomaly",
                3.175206317962536,
                1.7399363549333497,
            ),
            (
                34,
                0.9998007197464284,
                4.805715775255192,
                "net_errors_max_rate_1h",
                26.0,
                2.414866184110447,
            ),
        ];
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * b.abs().max(1e-3);
        for (h, p, anomaly, feature, value, contribution) in pinned {
            let r = model
                .score_series(&s, T0 + h * 3_600_000 - 60_000, 3)
                .unwrap();
            assert!(
                close(r.probability, p),
                "at {h} h: {} vs {p}",
                r.probability
            );
            assert!(close(r.anomaly, anomaly), "at {h} h: {}", r.anomaly);
            assert_eq!(r.reasons[0].feature, feature, "at {h} h");
            assert!(close(r.reasons[0].value, value), "at {h} h");
            assert!(close(r.reasons[0].contribution, contribution), "at {h} h");
        }
        // The second reason of the 32 h score, a window feature (not the anomaly).
        let r = model
            .score_series(&s, T0 + 32 * 3_600_000 - 60_000, 3)
            .unwrap();
        assert_eq!(r.reasons[1].feature, "net_errors_max_rate_1h");
        assert!(close(r.reasons[1].contribution, 0.7453688642983896));
    }

    #[test]
    fn models_are_fed_their_own_columns_and_unknown_features_are_refused() {
        let build = ColumnMap::build_names();
        assert!(ColumnMap::full().is_identity());
        assert_eq!(ColumnMap::resolve(&build).unwrap(), ColumnMap::full());
        // A subset in another order reads exactly those columns.
        let names = vec![
            build[5].clone(),
            build[0].clone(),
            build[build.len() - 1].clone(),
        ];
        let map = ColumnMap::resolve(&names).unwrap();
        assert!(!map.is_identity());
        assert_eq!(map.width(), 3);
        let w = build.len();
        let rows: Vec<f64> = (0..2 * w).map(|v| v as f64).collect();
        let w_f = w as f64;
        assert_eq!(
            map.select(rows),
            vec![5.0, 0.0, w_f - 1.0, w_f + 5.0, w_f, 2.0 * w_f - 1.0]
        );
        assert!(matches!(
            ColumnMap::resolve(&["no_such_feature".to_string()]),
            Err(UnknownFeature::NotComputed { feature }) if feature == "no_such_feature"
        ));
        assert!(matches!(
            ColumnMap::resolve(&[build[1].clone(), build[1].clone()]),
            Err(UnknownFeature::Duplicate { .. })
        ));
    }

    /// A model file naming a feature this build does not compute is a typed error at load.
    #[test]
    fn a_model_from_a_newer_build_is_refused_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let src = crate_dir().join("models/default.model");
        let model = Model::load(&src).unwrap();
        let mut value = serde_json::to_value(&model).unwrap();
        value["features"][3] = serde_json::Value::String("feature_from_the_future".into());
        let path = dir.path().join("newer.model");
        std::fs::write(&path, serde_json::to_vec(&value).unwrap()).unwrap();
        match Model::load(&path) {
            Err(ModelError::Features {
                source: UnknownFeature::NotComputed { feature },
                ..
            }) => assert_eq!(feature, "feature_from_the_future"),
            other => panic!("expected an unknown-feature error, got {:?}", other.err()),
        }
    }
}
