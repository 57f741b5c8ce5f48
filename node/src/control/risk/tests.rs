//! The risk policy's decisions and their persistence, against an in-memory store.

use super::decide::{self, Heard, Verdict};
use crate::control::cluster::fixtures::cluster;
use crate::control::cluster::Cluster;
use crate::control::settings::ControlSettings;
use crate::control::store::fake::MemStore;
use crate::control::{Control, Seen};
use augur_predictor::policy::PolicyConfig;
use augur_proto::data::NodeReport;
use augur_proto::wire::{HealthSummary, NodeHealth, RiskReport, RiskState};
use augur_proto::{NodeId, NodeState, Record, StateOrigin, StormGuard};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Node `id` was heard with `score` from its scoring round `at_ms`.
fn hear(control: &Control, id: u64, score: f64, at_ms: i64) {
    control.seen.lock().unwrap().insert(
        NodeId(id),
        Seen {
            at: Instant::now(),
            report: NodeReport {
                node: NodeId(id),
                incarnation: 7,
                node_epoch: 1,
                used_bytes: 0,
                capacity_bytes: 0,
                replicas: vec![],
            },
            usage_written: None,
            health: Some(NodeHealth {
                source: "simulated".into(),
                risk: RiskState::Scored(RiskReport {
                    score,
                    model: "node".into(),
                    at_ms,
                    reasons: vec![("node:read_lat_rel_std_1h".into(), 1.2)],
                }),
                summary: HealthSummary::default(),
            }),
        },
    );
}

/// Every node of 1..=n heard at `at_ms`: `high` ones at 0.9, the rest at 0.02.
fn round(control: &Control, n: u64, high: &[u64], at_ms: i64) {
    for id in 1..=n {
        let s = if high.contains(&id) { 0.9 } else { 0.02 };
        hear(control, id, s, at_ms);
    }
}

fn settings(policy: PolicyConfig) -> ControlSettings {
    ControlSettings {
        policy,
        ..Default::default()
    }
}

fn state(store: &MemStore, id: u64) -> (NodeState, StateOrigin) {
    let n = &store.read().nodes[&NodeId(id)];
    (n.state, n.cause.origin)
}

async fn tick(control: &Control, store: &MemStore) -> Vec<(NodeId, Verdict)> {
    control
        .risk_tick(store, Duration::from_secs(60), 1_000_000)
        .await
        .unwrap()
}

#[tokio::test]
async fn an_at_risk_node_is_watched_then_drained_with_its_reason_and_risk() {
    let control = Control::for_tests(ControlSettings::default());
    let store = MemStore::with(&cluster(&[1, 2, 3, 4, 5], vec![], 3));
    round(&control, 5, &[2], 100);
    // One round above enter is not k = 2: watched (no new replicas), nothing moves.
    assert_eq!(
        tick(&control, &store).await,
        vec![(NodeId(2), Verdict::Watch)]
    );
    assert_eq!(state(&store, 2), (NodeState::Suspect, StateOrigin::Policy));
    assert!(!store.read().accepts_replicas(NodeId(2)));
    // The same scoring round read again counts once: still only watched.
    assert!(tick(&control, &store).await.is_empty());
    round(&control, 5, &[2], 200);
    assert_eq!(
        tick(&control, &store).await,
        vec![(NodeId(2), Verdict::Drain)]
    );
    let c = store.read();
    let n = &c.nodes[&NodeId(2)];
    assert_eq!(n.state, NodeState::Draining);
    assert_eq!(n.state_since_ms, 1_000_000);
    assert!(n.cause.at_risk && !n.cause.holdout);
    assert_eq!(n.cause.risk, 0.9);
    assert_eq!(n.risk.score, 0.9);
    assert!(n.cause.reason.contains("drain"), "{}", n.cause.reason);
    assert!(
        n.cause.reason.contains("node:read_lat_rel_std_1h"),
        "{}",
        n.cause.reason
    );
    assert!(c.to_drain(NodeId(2)));
    // The healthy ones were never touched.
    for id in [1, 3, 4, 5] {
        assert_eq!(state(&store, id), (NodeState::Up, StateOrigin::Registered));
    }
    assert_eq!(
        control
            .metrics
            .risk_decisions
            .get_or_create(&crate::control::metrics::DecisionLabel { decision: "drain" })
            .get(),
        1
    );
}

/// Three nodes, node 2 heard at risk for two rounds (k = 2): drained by the policy.
async fn node_2_drained_by_the_policy() -> (Control, MemStore) {
    let control = Control::for_tests(ControlSettings::default());
    let store = MemStore::with(&cluster(&[1, 2, 3], vec![], 3));
    for at in [1, 2] {
        round(&control, 3, &[2], at);
        tick(&control, &store).await;
    }
    (control, store)
}

#[tokio::test]
async fn a_drain_resumed_after_down_keeps_the_policys_hysteresis() {
    let (control, store) = node_2_drained_by_the_policy().await;
    let draining = store.read().nodes[&NodeId(2)].clone();
    assert_eq!(draining.state, NodeState::Draining);
    // Declared Down (the policy forgets it), then back with its data, draining again.
    let down = crate::control::liveness::moved(&draining, NodeState::Down, 5, "silent".into());
    store.put(Record::Node(down.clone()));
    tick(&control, &store).await;
    let mut back = down.clone();
    back.state = NodeState::Draining;
    back.cause = down.drain_when_back.clone().expect("the drain kept");
    back.drain_when_back = None;
    store.put(Record::Node(back));
    // Between leave and enter, in the first rounds after its return: still draining, as
    // before it went Down (an empty k-of-n window would have undrained it).
    for at in [3, 4] {
        hear(&control, 2, 0.4, at);
        assert!(tick(&control, &store).await.is_empty());
        assert_eq!(state(&store, 2), (NodeState::Draining, StateOrigin::Policy));
    }
    hear(&control, 2, 0.05, 5);
    assert_eq!(
        tick(&control, &store).await,
        vec![(NodeId(2), Verdict::Undrain)]
    );
}

#[tokio::test]
async fn a_false_alarm_is_undrained_only_below_leave() {
    let (control, store) = node_2_drained_by_the_policy().await;
    assert_eq!(state(&store, 2).0, NodeState::Draining);
    // Between leave (0.25) and enter: hysteresis keeps it draining.
    hear(&control, 2, 0.4, 3);
    assert!(tick(&control, &store).await.is_empty());
    assert_eq!(state(&store, 2).0, NodeState::Draining);
    hear(&control, 2, 0.05, 4);
    assert_eq!(
        tick(&control, &store).await,
        vec![(NodeId(2), Verdict::Undrain)]
    );
    let n = &store.read().nodes[&NodeId(2)];
    assert_eq!(
        (n.state, n.cause.origin),
        (NodeState::Up, StateOrigin::Policy)
    );
    assert!(n.cause.reason.contains("false alarm"), "{}", n.cause.reason);
}

#[tokio::test]
async fn liveness_suspects_operator_drains_and_dead_nodes_are_left_alone() {
    let control = Control::for_tests(ControlSettings::default());
    let mut c = cluster(&[1, 2, 3, 4], vec![], 3);
    let set = |c: &mut Cluster, id: u64, s: NodeState, o: StateOrigin| {
        let n = c.nodes.get_mut(&NodeId(id)).unwrap();
        n.state = s;
        n.cause.origin = o;
    };
    set(&mut c, 2, NodeState::Suspect, StateOrigin::Liveness);
    set(&mut c, 3, NodeState::Draining, StateOrigin::Operator);
    set(&mut c, 4, NodeState::Down, StateOrigin::Liveness);
    let store = MemStore::with(&c);
    for at in [1, 2, 3] {
        round(&control, 4, &[2, 4], at);
        hear(&control, 3, 0.0, at);
        assert!(tick(&control, &store).await.is_empty());
    }
    assert_eq!(
        state(&store, 2),
        (NodeState::Suspect, StateOrigin::Liveness)
    );
    assert_eq!(
        state(&store, 3),
        (NodeState::Draining, StateOrigin::Operator)
    );
    assert_eq!(state(&store, 4), (NodeState::Down, StateOrigin::Liveness));
}

#[tokio::test]
async fn an_operators_undrain_holds_until_the_risk_falls_below_leave() {
    let control = Control::for_tests(ControlSettings::default());
    let store = MemStore::with(&cluster(&[1, 2, 3], vec![], 3));
    for at in [1, 2] {
        round(&control, 3, &[2], at);
        tick(&control, &store).await;
    }
    // `augurctl node undrain 2`.
    let mut n = store.read().nodes[&NodeId(2)].clone();
    n.state = NodeState::Up;
    n.cause.origin = StateOrigin::Operator;
    store.put(Record::Node(n));
    for at in [3, 4, 5] {
        round(&control, 3, &[2], at);
        assert!(tick(&control, &store).await.is_empty(), "not redrained");
    }
    // A new leader inherits the override too.
    let next = Control::for_tests(ControlSettings::default());
    round(&next, 3, &[2], 6);
    assert!(tick(&next, &store).await.is_empty());
    assert_eq!(state(&store, 2), (NodeState::Up, StateOrigin::Operator));
    hear(&next, 2, 0.05, 7);
    assert_eq!(
        tick(&next, &store).await,
        vec![(NodeId(2), Verdict::Release)]
    );
    assert_eq!(state(&store, 2), (NodeState::Up, StateOrigin::Policy));
}

#[tokio::test]
async fn a_new_leader_restores_hysteresis_from_the_records() {
    let first = Control::for_tests(ControlSettings::default());
    let store = MemStore::with(&cluster(&[1, 2, 3], vec![], 3));
    for at in [1, 2] {
        round(&first, 3, &[2], at);
        tick(&first, &store).await;
    }
    assert_eq!(state(&store, 2).0, NodeState::Draining);
    // Another member leads, with an empty memory: between leave and enter the node stays
    // Draining, as it would have under the first.
    let next = Control::for_tests(ControlSettings::default());
    hear(&next, 2, 0.4, 3);
    assert!(tick(&next, &store).await.is_empty());
    assert_eq!(state(&store, 2).0, NodeState::Draining);
    // A node only watched is not at risk: it needs k fresh rounds under the new leader.
    assert_eq!(
        decide::restorable(&store.read()),
        vec![("2".to_string(), true, false)]
    );
}

#[tokio::test]
async fn the_storm_guard_freezes_new_drains_records_the_alarm_and_clears() {
    let policy = PolicyConfig {
        storm_min_nodes: 1,
        ..Default::default()
    };
    let control = Control::for_tests(settings(policy));
    let store = MemStore::with(&cluster(&[1, 2, 3, 4, 5], vec![], 3));
    for at in [1, 2, 3] {
        round(&control, 5, &[2, 3], at);
        tick(&control, &store).await;
    }
    let c = store.read();
    assert!(c.frozen());
    assert_eq!(c.storm.flagged, vec![NodeId(2), NodeId(3)]);
    assert!(c
        .storm
        .alarm
        .as_deref()
        .unwrap_or("")
        .contains("storm guard"));
    for id in [2, 3] {
        let n = &c.nodes[&NodeId(id)];
        assert_eq!(
            n.state,
            NodeState::Suspect,
            "no automated drain while frozen"
        );
        assert!(n.cause.at_risk);
    }
    assert_eq!(control.metrics.storm_frozen.get(), 1);
    let status = control.risk_status();
    let last = status.last_round.unwrap();
    assert!(last.frozen && last.alarm.is_some());
    // Node 3 recovers: one node at risk is within the guard, node 2 drains now.
    for at in [4, 5] {
        round(&control, 5, &[2], at);
        tick(&control, &store).await;
    }
    let c = store.read();
    assert!(!c.frozen());
    assert_eq!(c.storm.alarm, None);
    assert_eq!(state(&store, 2).0, NodeState::Draining);
    assert_eq!(state(&store, 3), (NodeState::Up, StateOrigin::Policy));
    assert_eq!(control.metrics.storm_frozen.get(), 0);
}

#[tokio::test]
async fn a_whole_rack_at_risk_trips_the_guard() {
    let control = Control::for_tests(ControlSettings::default());
    let mut c = cluster(&[1, 2, 3, 4, 5], vec![], 3);
    for id in [1, 2] {
        c.nodes.get_mut(&NodeId(id)).unwrap().rack = "a".into();
    }
    let store = MemStore::with(&c);
    for at in [1, 2, 3] {
        round(&control, 5, &[1, 2], at);
        tick(&control, &store).await;
    }
    let c = store.read();
    assert!(c.frozen());
    assert!(c.storm.alarm.as_deref().unwrap_or("").contains("rack(s) a"));
    assert_eq!(state(&store, 1).0, NodeState::Suspect);
    // One node of the rack alone is no storm.
    let heard: BTreeMap<NodeId, Heard> = (1..=5).map(|i| (NodeId(i), Heard::default())).collect();
    let mut d = augur_predictor::policy::PolicyDecision {
        at_risk: vec![],
        storm: false,
        alarm: None,
        effective_enter: 0.5,
        effective_leave: 0.25,
    };
    assert!(decide::racks_at_risk(&c, &d, &heard, 2).is_empty());
    decide::rack_storm(&mut d, &[]);
    assert!(!d.storm);
}

#[tokio::test]
async fn prediction_off_changes_nothing() {
    let control = Control::for_tests(ControlSettings {
        predict: false,
        ..Default::default()
    });
    let store = MemStore::with(&cluster(&[1, 2, 3], vec![], 3));
    for at in [1, 2, 3] {
        round(&control, 3, &[2], at);
        assert!(tick(&control, &store).await.is_empty());
    }
    assert_eq!(state(&store, 2).0, NodeState::Up);
    assert!(!control.risk_status().predict);
}

#[test]
fn the_context_adapts_to_load_backlog_and_only_meaningful_failure_rates() {
    let s = ControlSettings::default();
    let mut c = cluster(&[1, 2, 3, 4], vec![], 3);
    let heard: BTreeMap<NodeId, Heard> = [(1, 0.2, 0.6), (2, 0.4, 0.1)]
        .into_iter()
        .map(|(id, cpu, disk)| {
            (
                NodeId(id),
                Heard {
                    summary: HealthSummary {
                        cpu_util: Some(cpu),
                        disk_util: Some(disk),
                        ..Default::default()
                    },
                    ..Default::default()
                },
            )
        })
        .collect();
    let ctx = decide::context(&c, &heard, &s, 10 * 86_400_000);
    assert!((ctx.load - 0.5).abs() < 1e-9, "{}", ctx.load);
    assert_eq!(ctx.migration_backlog, 0.0);
    // A Down node in a four-node cluster: far too few node-days to say anything.
    c.nodes.get_mut(&NodeId(4)).unwrap().state = NodeState::Down;
    assert_eq!(decide::context(&c, &heard, &s, 0).observed_base_rate, None);
    // A thousand nodes over 30 days: 4 failures expected at the calibrated rate.
    let big = cluster(&(1..=1000).collect::<Vec<_>>(), vec![], 3);
    let r = decide::context(&big, &heard, &s, 0).observed_base_rate;
    assert_eq!(r, Some(0.0));
}

#[test]
fn the_storm_record_changes_only_when_the_guard_does() {
    let mut d = augur_predictor::policy::PolicyDecision {
        at_risk: vec![],
        storm: false,
        alarm: None,
        effective_enter: 0.5,
        effective_leave: 0.25,
    };
    assert_eq!(decide::storm_record(&StormGuard::default(), &d, 5), None);
    d.storm = true;
    d.alarm = Some("storm".into());
    let g = decide::storm_record(&StormGuard::default(), &d, 5).unwrap();
    assert!(g.frozen && g.since_ms == 5);
    assert_eq!(decide::storm_record(&g, &d, 6), None);
    d.storm = false;
    assert!(!decide::storm_record(&g, &d, 7).unwrap().frozen);
}

#[tokio::test]
async fn a_new_leader_waits_to_hear_every_live_node_before_a_round() {
    let control = Control::for_tests(ControlSettings::default());
    let store = MemStore::with(&cluster(&[1, 2, 3], vec![], 3));
    hear(&control, 2, 0.9, 1);
    let r = control
        .risk_tick(&store, Duration::from_millis(500), 1)
        .await
        .unwrap();
    assert!(r.is_empty() && control.risk_status().last_round.is_none());
    // Led past suspect_after_ms: the silent ones are late, the round runs.
    let r = control
        .risk_tick(&store, Duration::from_secs(3), 2)
        .await
        .unwrap();
    assert_eq!(r, vec![(NodeId(2), Verdict::Watch)]);
}

#[tokio::test]
async fn a_new_leader_keeps_the_guard_frozen_while_the_nodes_that_tripped_it_are_silent() {
    let policy = PolicyConfig {
        storm_min_nodes: 1,
        ..Default::default()
    };
    let first = Control::for_tests(settings(policy.clone()));
    let store = MemStore::with(&cluster(&[1, 2, 3, 4, 5], vec![], 3));
    for at in [1, 2, 3] {
        round(&first, 5, &[2, 3], at);
        tick(&first, &store).await;
    }
    assert!(store.read().frozen());
    // A new leader hears nodes 1, 2, 4 and 5 (node 2 still at risk); node 3, at risk in its
    // record, stays silent past suspect_after_ms. One node at risk heard is within the
    // limit, but two are at risk: the guard holds and node 2 is not drained.
    let next = Control::for_tests(settings(policy));
    for id in [1, 2, 4, 5] {
        hear(&next, id, if id == 2 { 0.9 } else { 0.02 }, 10);
    }
    tick(&next, &store).await;
    let c = store.read();
    assert!(c.frozen(), "a silent node at risk must keep the guard");
    assert_eq!(c.storm.flagged, vec![NodeId(2), NodeId(3)]);
    let last = next.risk_status().last_round.unwrap();
    assert!(last.frozen);
    assert!(
        last.alarm.as_deref().unwrap_or("").contains("not heard"),
        "{:?}",
        last.alarm
    );
    assert_eq!(state(&store, 2).0, NodeState::Suspect);
    assert_eq!(state(&store, 3), (NodeState::Suspect, StateOrigin::Policy));
    // Node 3 reports, recovered: now one node at risk, the guard clears and node 2 drains.
    for at in [11, 12] {
        round(&next, 5, &[2], at);
        tick(&next, &store).await;
    }
    assert!(!store.read().frozen());
    assert_eq!(state(&store, 2).0, NodeState::Draining);
}

#[tokio::test]
async fn an_operators_undrain_survives_late_heartbeats_and_a_new_leader() {
    use crate::control::liveness::moved;
    let (control, store) = node_2_drained_by_the_policy().await;
    // `augurctl node undrain 2`.
    let mut n = store.read().nodes[&NodeId(2)].clone();
    n.state = NodeState::Up;
    n.cause.origin = StateOrigin::Operator;
    n.cause.reason = "operator: disk replaced".into();
    store.put(Record::Node(n));
    // Its heartbeats are late for a while: liveness marks it Suspect, keeping the undrain.
    let up = store.read().nodes[&NodeId(2)].clone();
    store.put(Record::Node(moved(
        &up,
        NodeState::Suspect,
        10,
        "late".into(),
    )));
    let late = store.read().nodes[&NodeId(2)].clone();
    assert_eq!(
        late.undrain_when_back.as_ref().map(|c| c.origin),
        Some(StateOrigin::Operator)
    );
    // A new leader takes over meanwhile and hears node 2 between leave and enter: at risk
    // only because the record says so (restored), not by its own k of n rounds.
    let next = Control::for_tests(ControlSettings::default());
    let between = |at| {
        round(&next, 3, &[], at);
        hear(&next, 2, 0.4, at);
    };
    between(3);
    assert!(tick(&next, &store).await.is_empty(), "liveness's Suspect");
    // Heartbeats resume: liveness restores the undrain, and the policy does not redrain it.
    store.put(Record::Node(moved(
        &late,
        NodeState::Up,
        20,
        "resumed".into(),
    )));
    assert_eq!(state(&store, 2), (NodeState::Up, StateOrigin::Operator));
    assert_eq!(
        store.read().nodes[&NodeId(2)].cause.reason,
        "operator: disk replaced"
    );
    assert!(store.read().nodes[&NodeId(2)].undrain_when_back.is_none());
    for at in [4, 5, 6] {
        between(at);
        assert!(
            tick(&next, &store).await.is_empty(),
            "neither redrained nor released"
        );
    }
    drop(control);
    // Only a risk below leave releases it, as before.
    hear(&next, 2, 0.05, 7);
    assert_eq!(
        tick(&next, &store).await,
        vec![(NodeId(2), Verdict::Release)]
    );
}

#[tokio::test]
async fn a_node_back_as_a_new_incarnation_is_judged_afresh() {
    let (control, store) = node_2_drained_by_the_policy().await;
    // Its disk is replaced within the grace period: it registers as a new incarnation,
    // Up and holding nothing (as the registry writes it).
    let mut n = store.read().nodes[&NodeId(2)].clone();
    n.incarnation += 1;
    n.state = NodeState::Up;
    n.cause.origin = StateOrigin::Registered;
    n.cause.at_risk = false;
    store.put(Record::Node(n));
    // One high score is one round of k = 2: watched, not drained on the old disk's rounds.
    round(&control, 3, &[2], 3);
    assert_eq!(
        tick(&control, &store).await,
        vec![(NodeId(2), Verdict::Watch)]
    );
    assert_eq!(state(&store, 2), (NodeState::Suspect, StateOrigin::Policy));
}
