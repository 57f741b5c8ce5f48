//! Tests of the risk policy.

use super::*;

fn input(node: &str, p: f64, bytes: u64) -> NodeInput {
    NodeInput {
        risk: Risk {
            node: node.into(),
            at_ms: 0,
            probability: p,
            anomaly: 0.0,
            reasons: Vec::new(),
        },
        data_bytes: bytes,
    }
}

fn policy() -> RiskPolicy {
    RiskPolicy::new(PolicyConfig {
        storm_min_nodes: 10,
        ..Default::default()
    })
    .unwrap()
}

#[test]
fn hysteresis_needs_k_of_n_to_enter_and_a_lower_bar_to_leave() {
    let mut p = policy();
    let ctx = ClusterContext::default();
    let d = p.evaluate(&[input("a", 0.6, 1)], &ctx);
    assert!(!d.at_risk[0].at_risk, "one round is not enough");
    assert_eq!(d.at_risk[0].action, Action::Watch);
    let d = p.evaluate(&[input("a", 0.55, 1)], &ctx);
    assert!(d.at_risk[0].at_risk);
    assert_eq!(d.at_risk[0].action, Action::StopPlacing);
    // Dropping below enter but above leave keeps it at risk.
    let d = p.evaluate(&[input("a", 0.3, 1)], &ctx);
    assert!(d.at_risk[0].at_risk);
    let d = p.evaluate(&[input("a", 0.8, 1)], &ctx);
    assert_eq!(d.at_risk[0].action, Action::Drain);
    let d = p.evaluate(&[input("a", 0.1, 1)], &ctx);
    assert!(d.at_risk.is_empty(), "left the state and below watch");
    // Leaving cleared the window: one round above enter is not enough to re-enter.
    let d = p.evaluate(&[input("a", 0.6, 1)], &ctx);
    assert!(!d.at_risk[0].at_risk, "the old rounds no longer count");
}

#[test]
fn full_load_and_backlog_raise_thresholds_without_freezing_them() {
    let mut p = policy();
    let saturated = ClusterContext {
        load: 1.0,
        migration_backlog: 1.0,
        observed_base_rate: None,
    };
    let mut d = p.evaluate(&[input("a", 0.99, 1)], &saturated);
    d = if d.at_risk[0].at_risk {
        d
    } else {
        p.evaluate(&[input("a", 0.99, 1)], &saturated)
    };
    assert!(
        d.effective_enter > 0.5 && d.effective_enter < 0.99,
        "{}",
        d.effective_enter
    );
    assert!(
        d.at_risk[0].at_risk,
        "a near-certain failure is still flagged"
    );
    assert!(d.effective_leave < d.effective_enter);
}

#[test]
fn holdout_outcomes_measure_precision() {
    let mut p = RiskPolicy::new(PolicyConfig {
        k: 1,
        n: 1,
        holdout_fraction: 1.0,
        storm_min_nodes: 1000,
        horizon_ms: 100,
        ..Default::default()
    })
    .unwrap();
    let at = |node: &str, t: i64| NodeInput {
        risk: Risk {
            at_ms: t,
            ..input(node, 0.9, 1).risk
        },
        data_bytes: 1,
    };
    p.evaluate(
        &[at("dies", 10), at("lives", 10)],
        &ClusterContext::default(),
    );
    assert_eq!(p.holdout_report(20).pending, 2);
    p.record_failure("dies", 60);
    let r = p.holdout_report(500);
    assert_eq!((r.decided, r.failed_within_horizon, r.pending), (2, 1, 0));
    assert_eq!(r.precision, Some(0.5));
}

#[test]
fn orders_by_risk_times_data_and_adapts_to_load_and_base_rate() {
    let mut p = policy();
    let ctx = ClusterContext::default();
    for _ in 0..2 {
        p.evaluate(&[input("small", 0.9, 10), input("big", 0.6, 1000)], &ctx);
    }
    let d = p.evaluate(&[input("small", 0.9, 10), input("big", 0.6, 1000)], &ctx);
    assert_eq!(d.at_risk[0].node, "big");
    let busy = ClusterContext {
        load: 1.0,
        migration_backlog: 1.0,
        observed_base_rate: None,
    };
    let mut q = policy();
    let d = q.evaluate(&[input("x", 0.6, 1)], &busy);
    assert!(d.effective_enter > 0.6 && d.effective_enter <= 1.0);
    let rare = ClusterContext {
        observed_base_rate: Some(PolicyConfig::default().model_base_rate / 10.0),
        ..Default::default()
    };
    let d = q.evaluate(&[input("y", 0.6, 1)], &rare);
    assert!(
        d.at_risk[0].risk < 0.6,
        "fewer failures than calibrated lowers risk"
    );
}

#[test]
fn storm_guard_freezes_moves_and_holdout_keeps_nodes_in_place() {
    let mut p = RiskPolicy::new(PolicyConfig {
        k: 1,
        n: 1,
        storm_fraction: 0.1,
        storm_min_nodes: 2,
        ..Default::default()
    })
    .unwrap();
    let many: Vec<_> = (0..20)
        .map(|i| input(&format!("n{i}"), if i < 5 { 0.9 } else { 0.01 }, 1))
        .collect();
    let d = p.evaluate(&many, &ClusterContext::default());
    assert!(d.storm && d.alarm.is_some());
    assert!(d.at_risk.iter().all(|x| x.action == Action::Watch));

    let mut h = RiskPolicy::new(PolicyConfig {
        k: 1,
        n: 1,
        holdout_fraction: 0.5,
        storm_min_nodes: 1000,
        ..Default::default()
    })
    .unwrap();
    let flagged: Vec<_> = (0..200).map(|i| input(&format!("n{i}"), 0.9, 1)).collect();
    let d = h.evaluate(&flagged, &ClusterContext::default());
    let held = d.at_risk.iter().filter(|x| x.holdout).count();
    assert!((60..140).contains(&held), "{held}");
    assert!(d
        .at_risk
        .iter()
        .all(|x| x.holdout == (x.action == Action::Watch)));
}

#[test]
fn rejects_nonsense_settings() {
    let bad = PolicyConfig {
        leave: 0.9,
        enter: 0.5,
        ..Default::default()
    };
    assert!(RiskPolicy::new(bad).is_err());
    assert!(RiskPolicy::new(PolicyConfig {
        k: 4,
        n: 3,
        ..Default::default()
    })
    .is_err());
    let cfg: PolicyConfig = toml_like_defaults();
    assert_eq!(cfg, PolicyConfig::default());
}

fn toml_like_defaults() -> PolicyConfig {
    serde_json::from_str("{}").unwrap()
}

fn scored(node: &str, p: f64, at_ms: i64) -> NodeInput {
    let mut i = input(node, p, 1);
    i.risk.at_ms = at_ms;
    i
}

#[test]
fn evaluate_latest_counts_each_scoring_round_once() {
    let mut p = policy();
    let ctx = ClusterContext::default();
    // The same score read three times is one round: k = 2 is not reached.
    for _ in 0..3 {
        let d = p.evaluate_latest(&[scored("a", 0.8, 100)], &ctx);
        assert!(!d.at_risk[0].at_risk);
        assert_eq!(d.at_risk[0].action, Action::Watch);
    }
    let d = p.evaluate_latest(&[scored("a", 0.8, 200)], &ctx);
    assert!(d.at_risk[0].at_risk, "the second scoring round enters");
    assert_eq!(d.at_risk[0].action, Action::Drain);
    // A stale score below leave does not take it out; a new one does.
    let d = p.evaluate_latest(&[scored("a", 0.1, 200)], &ctx);
    assert!(d.at_risk[0].at_risk);
    let d = p.evaluate_latest(&[scored("a", 0.1, 300)], &ctx);
    assert!(d.at_risk.is_empty());
}

#[test]
fn restored_state_keeps_hysteresis_across_instances() {
    let ctx = ClusterContext::default();
    let mut p = policy();
    p.restore("a", true, false);
    p.restore("b", true, true);
    // Between leave and enter: still at risk, as before the restart.
    let d = p.evaluate(&[input("a", 0.3, 1), input("b", 0.9, 1)], &ctx);
    let a = d.at_risk.iter().find(|x| x.node == "a").unwrap();
    assert!(a.at_risk && a.action == Action::StopPlacing);
    let b = d.at_risk.iter().find(|x| x.node == "b").unwrap();
    assert!(b.at_risk && b.holdout && b.action == Action::Watch);
    let d = p.evaluate(&[input("a", 0.1, 1)], &ctx);
    assert!(d.at_risk.is_empty(), "below leave it leaves");
    // A node restored as not at risk needs k fresh rounds.
    p.restore("c", false, false);
    let d = p.evaluate(&[input("c", 0.9, 1)], &ctx);
    assert!(!d.at_risk[0].at_risk);
}
