//! End-to-end test of node-model training.

use super::*;
use crate::generate::{generate, GeneratorConfig};
use crate::model::ModelError;
use crate::split::NodeSplit;

/// End to end on a small failure-rich trace: train, save, load, score, refuse a bad schema.
#[test]
fn trains_saves_loads_and_scores() {
    let dir = tempfile::tempdir().unwrap();
    let gen = GeneratorConfig {
        nodes: 40,
        days: 6.0,
        interval_ms: 300_000,
        seed: 21,
        failure_boost: 150.0,
        nodes_per_file: 20,
        ..Default::default()
    };
    generate(&gen, dir.path(), &indicatif::ProgressBar::hidden()).unwrap();
    let trace = Trace::read_dir(dir.path(), &indicatif::ProgressBar::hidden()).unwrap();
    assert!(
        trace.failures.len() >= 4,
        "{} failures",
        trace.failures.len()
    );
    // Two node groups, a quarter of the nodes held out: depth, calibration and every
    // method's operating point are chosen out of fold.
    let cfg = TrainConfig {
        lstm_windows: 300,
        lstm: LstmConfig {
            epochs: 2,
            hidden: 8,
            ..Default::default()
        },
        gbt: GbtConfig {
            iterations: 20,
            ..Default::default()
        },
        round_ms: 900_000,
        min_failures: 1,
        cv_folds: 2,
        split: NodeSplit {
            train_frac: 0.75,
            salt: 3,
        },
        max_false_alarms: 1000.0,
        ..Default::default()
    };
    let (model, report) = train(&trace, &cfg, ModelInfo::default(), &Progress::hidden()).unwrap();
    assert!(report.positives > 0 && report.negatives > 0);
    assert!(model.alert.threshold.is_finite());
    let path = dir.path().join("m.model");
    model.save(&path).unwrap();
    let back = Model::load(&path).unwrap();
    let s = &trace.nodes[0];
    let at = *s.ts.last().unwrap();
    let a = model.score_series(s, at, 3).unwrap();
    let b = back.score_series(s, at, 3).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.reasons.len(), 3);
    assert!((0.0..=1.0).contains(&a.probability));

    // The evaluation pipeline runs end to end on the same small trace.
    let eval = crate::eval::evaluate(
        &back,
        &trace,
        &crate::eval::EvalConfig::default(),
        &indicatif::ProgressBar::hidden(),
    )
    .unwrap();
    assert_eq!(eval.methods[0].name, "model");
    assert_eq!(eval.methods[1].name, "static_thresholds");
    for m in &eval.methods {
        assert!((0.0..=1.0).contains(&m.precision) && (0.0..=1.0).contains(&m.recall));
        assert!(m.false_alarms_per_1000_node_days >= 0.0);
    }
    assert_eq!(
        eval.threshold_sweep.len(),
        crate::eval::SWEEP_THRESHOLDS.len()
    );
    let html = crate::report::render_html(&eval);
    assert!(html.contains("<svg") && !html.contains("chart unavailable"));

    // Another schema version is refused by name.
    let mut v: serde_json::Value = serde_json::to_value(&model).unwrap();
    v["schema_version"] = serde_json::json!(SCHEMA_VERSION + 1);
    let other = dir.path().join("v2.model");
    std::fs::write(&other, serde_json::to_vec(&v).unwrap()).unwrap();
    let err = Model::load(&other).unwrap_err();
    assert!(
        matches!(err, ModelError::Schema { found, .. } if found == u64::from(SCHEMA_VERSION) + 1),
        "{err}"
    );
    assert!(err.to_string().contains("v2.model"));
    // Garbage and truncated models are typed errors, not panics.
    std::fs::write(&other, b"not json").unwrap();
    assert!(matches!(
        Model::load(&other),
        Err(ModelError::Format { .. })
    ));
    v["schema_version"] = serde_json::json!(SCHEMA_VERSION);
    // A window geometry no trace has (a sequence of 10^12 steps, spans that overflow when
    // multiplied) is refused on loading, not at the first scoring round.
    for (field, bad) in [
        ("seq_len", serde_json::json!(1_000_000_000_000u64)),
        ("baseline_ms", serde_json::json!(i64::MAX)),
        ("seq_step_ms", serde_json::json!(-5)),
        ("long_ms", serde_json::json!(0)),
    ] {
        let mut w = v.clone();
        w["window"][field] = bad;
        std::fs::write(&other, serde_json::to_vec(&w).unwrap()).unwrap();
        let err = Model::load(&other).unwrap_err();
        assert!(
            matches!(err, ModelError::Inconsistent { .. }) && err.to_string().contains(field),
            "{field}: {err}"
        );
    }
    // A feature this build does not compute is refused by name; known names that do not
    // fit the trees are inconsistent.
    v["features"] = serde_json::json!(["x"]);
    std::fs::write(&other, serde_json::to_vec(&v).unwrap()).unwrap();
    assert!(matches!(
        Model::load(&other),
        Err(ModelError::Features { .. })
    ));
    v["features"] = serde_json::json!([crate::model::ANOMALY_FEATURE]);
    std::fs::write(&other, serde_json::to_vec(&v).unwrap()).unwrap();
    assert!(matches!(
        Model::load(&other),
        Err(ModelError::Inconsistent { .. })
    ));
    assert!(matches!(
        Model::load(&dir.path().join("absent.model")),
        Err(ModelError::Io { .. })
    ));
    assert_eq!(model.info.cv_pr_auc.len(), 2);
    assert_eq!(model.info.cv_folds, 2);
    assert!(model.info.nodes < trace.nodes.len() && model.info.split.is_some());
    assert_eq!(report.out_of_fold[0].name, "model");
    assert_eq!(model.info.out_of_fold, report.out_of_fold);
    let baselines = model.baselines.as_ref().unwrap();
    assert!(
        baselines.static_thresholds.is_some(),
        "static thresholds fitted"
    );
    // Every method's operating point lies within the budget the model was held to.
    for m in &report.out_of_fold {
        assert!(
            m.false_alarms_per_1000_node_days <= cfg.max_false_alarms + 1e-9,
            "{m:?}"
        );
    }
    // One fold is refused before anything expensive.
    let err = train(
        &trace,
        &TrainConfig {
            cv_folds: 1,
            ..cfg.clone()
        },
        ModelInfo::default(),
        &Progress::hidden(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("at least 2 folds"), "{err}");
    // A trace with too few failures is refused with the counts, before
    // any expensive step.
    let err = train(
        &trace,
        &TrainConfig::default(),
        ModelInfo::default(),
        &Progress::hidden(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("cannot support a model"), "{err}");
    // Too little history is an error for the node's scoring call.
    let few: Vec<_> = (0..2)
        .map(|i| crate::sample::HealthSample {
            cpu_util: Some(0.1),
            disk_read_lat_ms: Some(1.0),
            err_log_count: Some(0),
            ..crate::sample::HealthSample::empty("x", i * 60_000)
        })
        .collect();
    assert!(matches!(
        back.score_samples(&few),
        Err(ModelError::NotEnoughData { .. })
    ));
}

/// Failures logged late (the harder trace): with `failure_at_silence` training dates each
/// failure at the end of the node's reports, which is close to the true death and never
/// after the log; without it the log's time stands.
#[test]
fn failure_at_silence_dates_late_logs_at_the_last_report() {
    let dir = tempfile::tempdir().unwrap();
    let interval = 600_000;
    let gen = GeneratorConfig {
        nodes: 120,
        days: 4.0,
        interval_ms: interval,
        seed: 9,
        failure_boost: 300.0,
        hard: true,
        ..Default::default()
    };
    generate(&gen, dir.path(), &indicatif::ProgressBar::hidden()).unwrap();
    let trace = Trace::read_dir(dir.path(), &indicatif::ProgressBar::hidden()).unwrap();
    let recorded = training_failures(&trace, &TrainConfig::default());
    assert_eq!(recorded, trace.failures);
    let silent = training_failures(
        &trace,
        &TrainConfig {
            failure_at_silence: true,
            ..TrainConfig::default()
        },
    );
    let mut errors: Vec<i64> = Vec::new();
    let mut moved = 0;
    for (node, f) in &silent {
        let log = &trace.failures[node];
        assert!(
            f.failed_at_ms <= log.failed_at_ms,
            "{node}: later than the log"
        );
        moved += usize::from(f.failed_at_ms < log.failed_at_ms);
        let died = log.died_at_ms.expect("the harder trace records the death");
        errors.push((f.failed_at_ms - died).abs());
    }
    assert!(errors.len() >= 10, "{} failures", errors.len());
    // Most logs are late by more than an interval; the last report dates the death to
    // within about one interval (jitter, a lost last sample or an outage can move it).
    assert!(
        moved * 3 > errors.len(),
        "{moved} of {} moved",
        errors.len()
    );
    errors.sort_unstable();
    assert!(
        errors[errors.len() / 2] <= interval,
        "median error {} ms",
        errors[errors.len() / 2]
    );
}
