//! What each subcommand does with its arguments (the arguments themselves live in
//! `cli.rs`, what is printed and written in `output.rs`).

use std::time::Instant;

use anyhow::{bail, Context, Result};
use augur_predictor::disk::eval::{evaluate_disk, DiskEvalConfig};
use augur_predictor::disk::train::{train_disk, DiskTrainConfig};
use augur_predictor::disk::DiskModel;
use augur_predictor::eval::{
    evaluate, score_methods, tune_alert_rule, EvalConfig, NodeScores, RuleOption, TuneConfig,
};
use augur_predictor::generate::{generate, GeneratorConfig};
use augur_predictor::model::{AlertRule, Model, ModelError, ModelInfo};
use augur_predictor::progress::Progress;
use augur_predictor::split::NodeSplit;
use augur_predictor::trace::Trace;
use augur_predictor::train::{train, TrainConfig};

use crate::cli::{EvalArgs, GenerateArgs, TrainArgs, TuneArgs};
use crate::output::{opt3, print_report, read_trace, write_report, write_scores};

/// `generate`.
pub(crate) fn generate_cmd(a: GenerateArgs, progress: &Progress) -> Result<()> {
    if a.nodes == 0 || a.days <= 0.0 {
        bail!("--nodes and --days must be positive");
    }
    if !(0.0..1.0).contains(&a.afr) || a.failure_boost <= 0.0 {
        bail!("--afr must be in 0..1 and --failure-boost positive");
    }
    if !(0.0..=1.0).contains(&a.sudden_fraction) {
        bail!("--sudden-fraction must be in 0..=1");
    }
    let cfg = GeneratorConfig {
        nodes: a.nodes,
        days: a.days,
        interval_ms: a.interval,
        seed: a.seed,
        afr: a.afr,
        failure_boost: a.failure_boost,
        sudden_fraction: a.sudden_fraction,
        false_precursor_ratio: a.false_precursor_ratio,
        hard: a.hard,
        ..Default::default()
    };
    let t = Instant::now();
    let summary = generate(&cfg, &a.out, &progress.bar("generating nodes"))
        .with_context(|| format!("generating into {}", a.out.display()))?;
    println!(
        "wrote {} samples of {} nodes in {} files to {} in {:.1} s: {} failures ({} with precursor), {} false precursors",
        summary.samples,
        a.nodes,
        summary.files,
        a.out.display(),
        t.elapsed().as_secs_f64(),
        summary.failures,
        summary.precursor_failures,
        summary.false_precursors
    );
    Ok(())
}

/// `train`: reads the trace (only the training nodes of a disk model), picks the kind.
pub(crate) fn train_cmd(a: TrainArgs, progress: &Progress) -> Result<()> {
    let frac_for = |kind: &str| {
        a.train_frac
            .unwrap_or(if kind == "disk" { 0.7 } else { 1.0 })
    };
    if !(0.05..=1.0).contains(&frac_for(&a.kind)) {
        bail!("--train-frac must be in 0.05..=1");
    }
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let t = Instant::now();
    let mut split = NodeSplit {
        train_frac: frac_for(&a.kind),
        salt: a.split_salt,
    };
    let trace = if a.kind == "disk" {
        // Held-out nodes are never read: a full Backblaze import is large.
        Trace::read_dir_filtered(
            &a.traces,
            &|n| split.is_train(n),
            &progress.bar("reading sample files"),
        )
        .with_context(|| format!("reading trace {}", a.traces.display()))?
    } else {
        read_trace(&a.traces, progress)?
    };
    let read_s = t.elapsed().as_secs_f64();
    let has_metrics = trace.nodes.iter().any(|s| !s.ts.is_empty());
    let has_smart = trace.nodes.iter().any(|s| !s.smart.is_empty());
    let kind = match a.kind.as_str() {
        "auto" if has_metrics => "node",
        "auto" if has_smart => "disk",
        "auto" => bail!(
            "{}: the samples carry neither node metrics nor SMART",
            a.traces.display()
        ),
        "node" | "disk" => a.kind.as_str(),
        other => bail!("--kind {other}: use node, disk or auto"),
    };
    split.train_frac = frac_for(kind);
    if kind == "disk" {
        return train_disk_cmd(&a, &trace, split, &command, read_s, t, progress);
    }
    let mut cfg = TrainConfig {
        horizon_ms: a.horizon.unwrap_or(86_400_000),
        round_ms: a.round,
        tree_horizon_ms: a.tree_horizon,
        skip_gap: !a.keep_gap,
        negative_stride: a
            .negative_stride
            .unwrap_or(TrainConfig::default().negative_stride),
        rules: match (a.k, a.n) {
            (Some(k), Some(n)) if k <= n => vec![(k, n)],
            (Some(k), Some(n)) => bail!("need 1 <= k <= n (got k={k}, n={n})"),
            _ => a.rules.0.clone(),
        },
        max_false_alarms: a.max_false_alarms.unwrap_or(1.0),
        min_precision: a.min_precision,
        seed: a.seed,
        lstm_windows: a.lstm_windows,
        cv_folds: a.folds,
        split,
        failure_at_silence: a.failure_at_silence,
        ..Default::default()
    };
    cfg.gbt.iterations = a.trees;
    cfg.gbt.tail_bins = a.tail_bins;
    if let Some(f) = a.row_sample {
        cfg.gbt.subsample = f;
        cfg.gbt.row_sampling = true;
    }
    cfg.lstm.epochs = a.lstm_epochs;
    let info = ModelInfo {
        trained_on: a.traces.display().to_string(),
        command,
        ..Default::default()
    };
    let (model, report) = train(&trace, &cfg, info, progress)?;
    model.save(&a.out)?;
    let size = std::fs::metadata(&a.out).map(|m| m.len()).unwrap_or(0);
    println!(
        "trained on {} of {} nodes ({} samples in the trace), {} failures among them, {}-fold cross-validation over node groups: read {read_s:.1} s, total {:.1} s",
        model.info.nodes,
        trace.nodes.len(),
        trace.sample_count(),
        model.info.failures,
        model.info.cv_folds,
        t.elapsed().as_secs_f64()
    );
    for (name, ap) in &model.info.cv_pr_auc {
        println!("  out-of-fold PR-AUC {name}: {ap:.4}");
    }
    for (phase, s) in &report.seconds {
        println!("  {phase:<34} {s:.1} s");
    }
    println!(
        "tree rows: {} positive, {} negative; operating points chosen out of fold ({} failures) for the best F1 within {:.2} false alarms per 1000 healthy node-days:",
        report.positives, report.negatives, report.failures, report.budget
    );
    println!(
        "  {:<18} {:>5} {:>10} {:>9} {:>7} {:>9} {:>7} {:>9} {:>7}",
        "method",
        "rule",
        "threshold",
        "precision",
        "recall",
        "rec.prec",
        "F1",
        "FA/1000d",
        "PR-AUC"
    );
    for m in &report.out_of_fold {
        println!(
            "  {:<18} {:>5} {:>10.4} {:>9.3} {:>7.3} {:>9} {:>7.3} {:>9.2} {:>7.3}",
            m.name,
            format!("{}/{}", m.alert.k, m.alert.n),
            m.alert.threshold,
            m.precision,
            m.recall,
            opt3(m.recall_precursor),
            m.f1,
            m.false_alarms_per_1000_node_days,
            m.pr_auc
        );
    }
    let top: Vec<String> = report
        .top_features
        .iter()
        .map(|(n, g)| format!("{n} {:.1}%", g * 100.0))
        .collect();
    println!("top features by gain: {}", top.join(", "));
    println!("model written to {} ({} bytes)", a.out.display(), size);
    Ok(())
}

fn train_disk_cmd(
    a: &TrainArgs,
    trace: &Trace,
    split: NodeSplit,
    command: &str,
    read_s: f64,
    t: Instant,
    progress: &Progress,
) -> Result<()> {
    let mut cfg = DiskTrainConfig {
        horizon_ms: a.horizon.unwrap_or(30 * 86_400_000),
        split,
        until_ms: a.until,
        folds: a.folds,
        max_false_alarms: a.max_false_alarms,
        ..Default::default()
    };
    if let Some(s) = a.negative_stride {
        cfg.negative_stride = s;
    }
    let (model, report) = train_disk(
        trace,
        &cfg,
        &a.traces.display().to_string(),
        command,
        progress,
    )?;
    model.save(&a.out)?;
    let i = &model.info;
    println!(
        "disk model: {} training devices, {} failures before the cut-off, {:.0} device-days; read {read_s:.1} s, total {:.1} s",
        i.devices,
        i.failures,
        i.device_days,
        t.elapsed().as_secs_f64()
    );
    for (phase, s) in &report.seconds {
        println!("  {phase:<22} {s:.1} s");
    }
    println!(
        "attributes: {}; tree rows {} positive / {} negative",
        model.spec.attrs.join(", "),
        i.training_rows.0,
        i.training_rows.1
    );
    for (name, ap) in &i.cv_pr_auc {
        println!("  out-of-fold PR-AUC {name}: {ap:.4}");
    }
    if let Some((thr, k, n, p, r, fa, f1)) = report.rule {
        println!(
            "Backblaze rule out of fold: log(1+raw) >= {thr:.3} {k}-of-{n}: precision {p:.3} recall {r:.3} FA/1000 device-days {fa:.2} F1 {f1:.3}"
        );
    }
    let (p, r, fa, f1) = i.cv_at_rule;
    println!(
        "model out of fold ({}, budget {:.2} FA/1000 device-days): {}-of-{} at {:.4}: precision {p:.3} recall {r:.3} FA/1000 device-days {fa:.2} F1 {f1:.3}",
        i.chosen, report.budget, model.alert.k, model.alert.n, model.alert.threshold
    );
    println!(
        "calibrated at {:.3e} failures per device-day",
        i.calibrated_failures_per_device_day
    );
    let top: Vec<String> = report
        .top_features
        .iter()
        .map(|(n, g)| format!("{n} {:.1}%", g * 100.0))
        .collect();
    println!("top features by gain: {}", top.join(", "));
    println!("model written to {}", a.out.display());
    Ok(())
}

/// `eval`: a node model on its held-out nodes (or every node of another trace), a disk
/// model on its held-out drives from its cut-off.
pub(crate) fn eval_cmd(a: EvalArgs, progress: &Progress) -> Result<()> {
    let model = match Model::load(&a.model) {
        Ok(m) => m,
        Err(ModelError::Kind { found, .. }) if found == "disk" => {
            let disk = DiskModel::load(&a.model)?;
            let trace = read_trace(&a.traces, progress)?;
            let cfg = DiskEvalConfig {
                test_from_ms: a.test_from_date,
                bootstrap: a.bootstrap,
                ..Default::default()
            };
            let report = evaluate_disk(&disk, &trace, &cfg)?;
            print_report(&report);
            return write_report(
                &report,
                a.json.as_deref(),
                a.html.as_deref(),
                a.scores.as_deref(),
            );
        }
        Err(e) => return Err(e.into()),
    };
    // Trained on part of the fleet: judge it on the nodes it never saw.
    let trace = match model.info.split {
        Some(split) => Trace::read_dir_filtered(
            &a.traces,
            &|n| !split.is_train(n),
            &progress.bar("reading held-out nodes"),
        )
        .with_context(|| format!("reading trace {}", a.traces.display()))?,
        None => read_trace(&a.traces, progress)?,
    };
    let cfg = EvalConfig {
        test_from_frac: a.test_from,
        k: a.k,
        n: a.n,
        threshold: a.threshold,
        bootstrap: a.bootstrap,
        ..Default::default()
    };
    let report = evaluate(&model, &trace, &cfg, &progress.bar("scoring nodes"))?;
    print_report(&report);
    write_report(
        &report,
        a.json.as_deref(),
        a.html.as_deref(),
        a.scores.as_deref(),
    )
}

/// Prints one method's candidate rules on the validation trace and returns its choice.
fn tune_one(name: &str, scores: &[NodeScores], h: i64, cfg: &TuneConfig) -> Result<RuleOption> {
    let Some((best, options)) = tune_alert_rule(scores, h, cfg) else {
        bail!("no candidate rules");
    };
    println!("{name}:");
    println!("  rule   threshold  precision  recall  rec.prec  FA/1000d  early  lead med   slack");
    for o in &options {
        let med = augur_predictor::eval::quantile(&o.stats.leads_h, 0.5)
            .map_or("-".into(), |v| format!("{v:.2} h"));
        println!(
            "  {:>2}/{:<3} {:>9.4} {:>10.3} {:>7.3} {:>9} {:>9.2} {:>6} {:>9}  {:+.3}",
            o.k,
            o.n,
            o.threshold,
            o.stats.precision(),
            o.stats.recall(),
            opt3(o.stats.recall_precursor()),
            o.stats.false_alarms_per_1000(),
            o.stats.early_alerts,
            med,
            o.slack
        );
    }
    println!(
        "  chosen: {}-of-{} at {:.4}, {} every target on the validation trace ({} failures, {} healthy node-days)",
        best.k,
        best.n,
        best.threshold,
        if best.meets_goal() { "meeting" } else { "NOT meeting" },
        best.stats.failures,
        best.stats.healthy_node_days.round()
    );
    Ok(best)
}

/// `tune`: the model's and each baseline's rule re-chosen by the same criterion on the same
/// validation scores, so a tuned model is still compared with baselines tuned alike.
pub(crate) fn tune_cmd(a: TuneArgs, progress: &Progress) -> Result<()> {
    let mut model = Model::load(&a.model)?;
    let trace = read_trace(&a.traces, progress)?;
    // Skip the first baseline span: windows there see a truncated history.
    let from = trace.start_ms() + model.window.baseline_ms;
    let scored = score_methods(&model, &trace, from, &progress.bar("scoring nodes"));
    if let Some(path) = &a.scores {
        write_scores(path, &scored.model).with_context(|| format!("writing {}", path.display()))?;
    }
    let cfg = TuneConfig {
        rules: a.rules.0.clone(),
        min_precision: a.min_precision,
        max_false_alarms: a.max_false_alarms,
        min_recall: a.min_recall,
        min_lead_h: a.min_lead as f64 / 3.6e6,
    };
    let h = model.horizon_ms;
    let apply = |alert: &mut AlertRule, o: &RuleOption| {
        alert.k = o.k;
        alert.n = o.n;
        alert.threshold = o.threshold;
    };
    let best = tune_one("model", &scored.model, h, &cfg)?;
    apply(&mut model.alert, &best);
    if let Some(b) = model.baselines.as_mut() {
        if let (Some(st), Some(s)) = (b.static_thresholds.as_mut(), &scored.static_thresholds) {
            apply(&mut st.alert, &tune_one("static_thresholds", s, h, &cfg)?);
        }
        if let (Some(tr), Some(s)) = (b.decision_tree.as_mut(), &scored.decision_tree) {
            apply(&mut tr.alert, &tune_one("decision_tree", s, h, &cfg)?);
        }
    }
    model.info.tune_command = std::env::args().collect::<Vec<_>>().join(" ");
    let st = &best.stats;
    model.info.tuned_failures_per_node_day = Some(st.failures as f64 / st.node_days.max(1e-9));
    model.save(&a.out)?;
    println!("model written to {}", a.out.display());
    Ok(())
}
