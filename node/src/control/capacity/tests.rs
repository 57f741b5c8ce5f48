//! The capacity estimate (growth, at-risk loss, headroom, alarm) and the planner's rounds
//! against an in-memory store (persisted alarm, hook calls and their cooldown).

use super::estimate::{self, estimate, Class, History, NodeInput, Params, DAY_MS};
use super::*;
use crate::control::cluster::fixtures::{cluster, node};
use crate::control::settings::ControlSettings;
use crate::control::store::fake::MemStore;
use augur_proto::{CapacityHookCall, NodeId, NodeState};

const GIB: u64 = 1 << 30;

fn input(id: u64, state: NodeState, capacity: u64, used: u64) -> NodeInput {
    NodeInput {
        id: NodeId(id),
        state,
        cordoned: false,
        late: false,
        capacity_bytes: capacity,
        used_bytes: used,
        risk: None,
        growth_bytes_per_day: None,
    }
}

fn params(min_headroom: f64, rf: Option<u32>) -> Params {
    Params {
        horizon_days: 30.0,
        min_headroom,
        rf,
    }
}

#[test]
fn growth_is_the_least_squares_slope_once_the_history_is_long_enough() {
    let mut h = History::default();
    assert_eq!(h.slope_per_day(1), None, "no samples");
    h.push(0, 100, 10);
    assert_eq!(h.slope_per_day(1), None, "one sample has no slope");
    // 1 GiB a day, sampled every 6 h, with noise that cancels out.
    let mut h = History::default();
    for i in 0..8u64 {
        let t = i * 6 * 3_600_000;
        let noise = if i % 2 == 0 { 1_000_000 } else { 0 };
        h.push(t, 10 * GIB + i * GIB / 4 + noise, 100);
    }
    let slope = h.slope_per_day(3_600_000).unwrap();
    let want = GIB as f64;
    assert!((slope - want).abs() / want < 0.01, "{slope} vs {want}");
    // The same history does not count while it spans less than the minimum.
    assert_eq!(h.slope_per_day(2 * DAY_MS as u64), None);
    // Bounded: only the latest `cap` samples are kept, so the slope follows the window.
    for i in 0..4u64 {
        h.push(2 * DAY_MS as u64 + i * 3_600_000, 20 * GIB, 4);
    }
    assert_eq!(h.len(), 4);
    assert_eq!(h.slope_per_day(1), Some(0.0));
}

#[test]
fn at_risk_nodes_lose_their_capacity_and_their_data_must_fit_elsewhere() {
    let mut nodes = vec![
        input(1, NodeState::Up, 10 * GIB, 5 * GIB),
        input(2, NodeState::Up, 10 * GIB, 5 * GIB),
        input(3, NodeState::Draining, 10 * GIB, 5 * GIB),
        input(4, NodeState::Up, 10 * GIB, 5 * GIB),
        input(5, NodeState::Down, 10 * GIB, 5 * GIB),
    ];
    nodes[3].cordoned = true;
    nodes[2].risk = Some(0.8);
    // A healthy pool node with risk 0.1 is charged a tenth of its capacity.
    nodes[0].risk = Some(0.1);
    let e = estimate(&nodes, None, &params(0.2, Some(2))).unwrap();
    assert_eq!(estimate::class(&nodes[3]), Class::Other, "cordoned");
    assert_eq!(e.pool_nodes, 2);
    assert_eq!(
        e.used_bytes,
        15 * GIB,
        "pool and at-risk data; not cordoned or Down"
    );
    assert_eq!(e.pool_capacity_bytes, 20 * GIB);
    assert_eq!(e.at_risk_capacity_bytes, 10 * GIB);
    assert_eq!(e.expected_loss_bytes, GIB);
    assert_eq!(e.capacity_after_drains_bytes, 19 * GIB);
    assert!(
        (e.headroom - (1.0 - 15.0 / 19.0)).abs() < 1e-9,
        "{}",
        e.headroom
    );
    assert!(!e.alarm, "21% >= 20%: {e:?}");
    assert_eq!(e.nodes_wanted, 0);
    assert_eq!(e.at_risk.len(), 1);
    assert_eq!(
        (e.at_risk[0].node, e.at_risk[0].risk),
        (NodeId(3), Some(0.8))
    );
    assert_eq!(e.at_risk[0].state, "draining");
    // A riskier pool node tips it over.
    nodes[1].risk = Some(0.2);
    let e = estimate(&nodes, None, &params(0.2, Some(2))).unwrap();
    assert_eq!(e.capacity_after_drains_bytes, 17 * GIB);
    assert!(e.alarm, "{e:?}");
    let reason = e.reason.unwrap();
    assert!(
        reason.contains("after draining node 3 (draining)"),
        "{reason}"
    );
    // 15 / 0.8 = 18.75 GiB needed, 17 available: 1.75 GiB short, one 10 GiB node.
    assert_eq!(e.bytes_short, (1.75 * GIB as f64).ceil() as u64);
    assert_eq!(e.nodes_wanted, 1);
}

#[test]
fn growth_over_the_horizon_counts_and_shrinking_does_not() {
    let nodes = vec![
        input(1, NodeState::Up, 10 * GIB, 4 * GIB),
        input(2, NodeState::Up, 10 * GIB, 4 * GIB),
    ];
    let p = params(0.2, None);
    let flat = estimate(&nodes, None, &p).unwrap();
    assert_eq!(flat.projected_used_bytes, 8 * GIB);
    assert!(!flat.alarm);
    // 0.1 GiB/day for 30 days: 11 GiB of 20, headroom 45%.
    let e = estimate(&nodes, Some(0.1 * GIB as f64), &p).unwrap();
    assert_eq!(e.projected_used_bytes, 11 * GIB);
    assert!(!e.alarm);
    // 0.3 GiB/day: 17 GiB of 20, headroom 15%: the alarm, one node wanted.
    let e = estimate(&nodes, Some(0.3 * GIB as f64), &p).unwrap();
    assert_eq!(e.projected_used_bytes, 17 * GIB);
    assert!(e.alarm);
    assert_eq!(e.nodes_wanted, 1);
    // 2 GiB/day: 68 GiB, needing 85: 65 short, seven 10 GiB nodes.
    let e = estimate(&nodes, Some(2.0 * GIB as f64), &p).unwrap();
    assert_eq!(e.bytes_short, 65 * GIB);
    assert_eq!(e.nodes_wanted, 7);
    // Shrinking frees nothing the plan counts on.
    let e = estimate(&nodes, Some(-(GIB as f64)), &p).unwrap();
    assert_eq!(e.projected_used_bytes, 8 * GIB);
}

#[test]
fn the_alarm_threshold_is_the_minimum_headroom() {
    let nodes = |used: u64| {
        vec![
            input(1, NodeState::Up, 100 * GIB, used * GIB),
            input(2, NodeState::Suspect, 100 * GIB, 0),
        ]
    };
    // Exactly at the minimum is not below it.
    assert!(
        !estimate(&nodes(80), None, &params(0.2, None))
            .unwrap()
            .alarm
    );
    assert!(
        estimate(&nodes(81), None, &params(0.2, None))
            .unwrap()
            .alarm
    );
    assert!(
        !estimate(&nodes(81), None, &params(0.1, None))
            .unwrap()
            .alarm
    );
    // Over capacity: negative headroom.
    let e = estimate(&nodes(150), None, &params(0.2, None)).unwrap();
    assert!((e.headroom + 0.5).abs() < 1e-9);
    // No pool at all with data to hold.
    let all_at_risk = vec![input(1, NodeState::Draining, 100 * GIB, GIB)];
    let e = estimate(&all_at_risk, None, &params(0.2, None)).unwrap();
    assert_eq!((e.headroom, e.alarm, e.nodes_wanted), (-1.0, true, 1));
    // No storage node at all: nothing to plan for.
    assert_eq!(estimate(&[], None, &params(0.2, None)), None);
    // Every node Down (or cordoned): no pool left is the worst shortfall, not silence.
    let e = estimate(
        &[
            input(1, NodeState::Down, GIB, 0),
            NodeInput {
                cordoned: true,
                ..input(2, NodeState::Up, GIB, GIB / 2)
            },
        ],
        None,
        &params(0.2, Some(2)),
    )
    .unwrap();
    assert_eq!((e.pool_nodes, e.alarm, e.nodes_wanted), (0, true, 2));
    assert!(e
        .reason
        .unwrap()
        .contains("fewer than the replication factor 2"));
}

#[test]
fn a_node_that_is_only_late_stays_in_the_pool() {
    let late = NodeInput {
        late: true,
        ..input(3, NodeState::Suspect, 100 * GIB, GIB)
    };
    assert_eq!(estimate::class(&late), Class::Pool);
    let decided = input(3, NodeState::Suspect, 100 * GIB, GIB);
    assert_eq!(estimate::class(&decided), Class::AtRisk);
    let cordoned = NodeInput {
        cordoned: true,
        ..late.clone()
    };
    assert_eq!(estimate::class(&cordoned), Class::Other);
    // Three nodes at rf 3, one of them a few seconds late: no alarm, no node asked for.
    let nodes = vec![
        input(1, NodeState::Up, 100 * GIB, GIB),
        input(2, NodeState::Up, 100 * GIB, GIB),
        late,
    ];
    assert!(!estimate(&nodes, None, &params(0.2, Some(3))).unwrap().alarm);
}

#[test]
fn growth_is_the_sum_of_the_counted_nodes_own_slopes() {
    let with = |state, growth| NodeInput {
        growth_bytes_per_day: growth,
        ..input(1, state, 100 * GIB, GIB)
    };
    assert_eq!(estimate::counted_growth(&[]), None);
    assert_eq!(
        estimate::counted_growth(&[with(NodeState::Up, None)]),
        None,
        "no history long enough"
    );
    let g = estimate::counted_growth(&[
        with(NodeState::Up, Some(3.0)),
        with(NodeState::Draining, Some(-1.0)),
        with(NodeState::Up, None),
        with(NodeState::Down, Some(100.0)),
        with(NodeState::Up, Some(f64::NAN)),
    ]);
    assert_eq!(
        g,
        Some(2.0),
        "a drain's source offsets its destination; Down is not counted"
    );
}

#[test]
fn fewer_pool_nodes_than_the_replication_factor_raise_the_alarm() {
    let nodes = vec![
        input(1, NodeState::Up, 100 * GIB, GIB),
        input(2, NodeState::Up, 100 * GIB, GIB),
        input(3, NodeState::Draining, 100 * GIB, GIB),
    ];
    let e = estimate(&nodes, None, &params(0.2, Some(3))).unwrap();
    assert!(e.headroom > 0.9);
    assert!(e.alarm);
    assert_eq!(e.nodes_wanted, 1);
    assert!(e
        .reason
        .unwrap()
        .contains("fewer than the replication factor 3"));
    assert!(!estimate(&nodes, None, &params(0.2, Some(2))).unwrap().alarm);
}

#[test]
fn the_hook_waits_for_the_nodes_asked_for_or_the_cooldown() {
    assert!(estimate::may_call(None, 0, 1_000, 3));
    let last = CapacityHookCall {
        at_ms: 10_000,
        nodes_wanted: 2,
        nodes_accepting: 3,
    };
    assert!(!estimate::may_call(Some(&last), 10_500, 1_000, 3));
    assert!(
        !estimate::may_call(Some(&last), 10_500, 1_000, 4),
        "one of two"
    );
    assert!(
        estimate::may_call(Some(&last), 10_500, 1_000, 5),
        "both came"
    );
    assert!(
        estimate::may_call(Some(&last), 11_000, 1_000, 3),
        "cooldown over"
    );
}

/// A control plane whose hook is `/bin/true`, with `cooldown_ms`.
fn control(cooldown_ms: u64) -> Control {
    Control::for_tests(ControlSettings {
        capacity_hook: "/bin/true".into(),
        capacity_hook_cooldown_ms: cooldown_ms,
        ..Default::default()
    })
}

/// Three 10 GiB nodes holding 7 GiB each, rf 3.
fn store() -> MemStore {
    let mut c = cluster(&[1, 2, 3], vec![], 3);
    for n in c.nodes.values_mut() {
        n.capacity_bytes = 10 * GIB;
        n.used_bytes = 7 * GIB;
    }
    MemStore::with(&c)
}

fn recorded(store: &MemStore) -> CapacityAlarm {
    match store
        .inner
        .lock()
        .unwrap()
        .0
        .get(&augur_proto::Key::Setting(CAPACITY_SETTING.into()))
    {
        Some(Record::Setting(s)) => serde_json::from_slice(&s.value).unwrap(),
        _ => CapacityAlarm::default(),
    }
}

fn set_state(store: &MemStore, id: u64, state: NodeState) {
    let mut n = store.read().nodes[&NodeId(id)].clone();
    n.state = state;
    store.put(Record::Node(n));
}

#[tokio::test]
async fn a_round_raises_the_alarm_calls_once_and_again_only_when_due() {
    if Hook::parse("/bin/true").is_err() {
        return; // no /bin/true on this machine
    }
    let store = store();
    let c = control(60_000);
    let now = Instant::now();
    // 21 GiB on 30: headroom 30%, no alarm, nothing written.
    assert!(c.capacity_tick(&store, now, 1_000).await.unwrap().is_none());
    assert!(!recorded(&store).alarm);
    assert_eq!(c.metrics.capacity_alarm.get(), 0);
    assert!(c.capacity_status().last_round.is_some());

    // Node 3 drains: 21 GiB on 20, and two nodes for rf 3.
    set_state(&store, 3, NodeState::Draining);
    let (_, req) = c
        .capacity_tick(&store, now, 2_000)
        .await
        .unwrap()
        .expect("the hook is called");
    assert_eq!(req.nodes_wanted, 1);
    assert_eq!(req.at_risk.len(), 1);
    assert_eq!(req.at_risk[0].node, NodeId(3));
    assert!(req.headroom < 0.2);
    let r = recorded(&store);
    assert!(r.alarm);
    assert_eq!(
        r.last_call,
        Some(CapacityHookCall {
            at_ms: 2_000,
            nodes_wanted: 1,
            nodes_accepting: 2
        })
    );
    assert_eq!(c.metrics.capacity_alarm.get(), 1);
    assert_eq!(c.metrics.capacity_nodes_wanted.get(), 1);

    // While it runs, and after it while the node has not come, no new call.
    assert!(c.capacity_tick(&store, now, 3_000).await.unwrap().is_none());
    c.capacity.lock().unwrap().calling = false;
    assert!(c.capacity_tick(&store, now, 4_000).await.unwrap().is_none());
    // A new leader (memory gone) honours the recorded call too.
    let c2 = control(60_000);
    assert!(c2
        .capacity_tick(&store, now, 5_000)
        .await
        .unwrap()
        .is_none());
    // After the cooldown it asks again.
    assert!(c2
        .capacity_tick(&store, now, 62_000)
        .await
        .unwrap()
        .is_some());

    // The node asked for registers but is not Up yet: it has not come.
    c2.capacity.lock().unwrap().calling = false;
    let mut n4 = node(4, NodeState::Suspect);
    n4.capacity_bytes = 5 * GIB;
    store.put(Record::Node(n4.clone()));
    assert!(c2
        .capacity_tick(&store, now, 62_500)
        .await
        .unwrap()
        .is_none());
    // Up (small: 5 GiB), so the alarm holds and a call is due at once, without waiting for
    // the cooldown.
    n4.state = NodeState::Up;
    store.put(Record::Node(n4));
    let (_, req) = c2
        .capacity_tick(&store, now, 63_000)
        .await
        .unwrap()
        .expect("the nodes came: may ask again");
    assert_eq!(req.nodes_wanted, 1);

    // A big one clears the alarm.
    c2.capacity.lock().unwrap().calling = false;
    let mut n5 = node(5, NodeState::Up);
    n5.capacity_bytes = 100 * GIB;
    store.put(Record::Node(n5));
    assert!(c2
        .capacity_tick(&store, now, 64_000)
        .await
        .unwrap()
        .is_none());
    let r = recorded(&store);
    assert!(!r.alarm);
    assert_eq!(r.nodes_wanted, 0);
    assert_eq!(c2.metrics.capacity_alarm.get(), 0);
}

/// An uncordoned node joins the counted nodes with everything it holds: that is no growth.
/// (The slope of the counted total read it as 7 GiB within a few seconds, about 200 TiB a
/// day.)
#[tokio::test]
async fn a_node_joining_the_pool_with_its_data_is_not_growth() {
    let store = store();
    let mut n3 = store.read().nodes[&NodeId(3)].clone();
    n3.cordoned = true;
    store.put(Record::Node(n3.clone()));
    let c = Control::for_tests(ControlSettings {
        capacity_min_history_ms: 1_000,
        ..Default::default()
    });
    let t0 = Instant::now();
    let growth = |c: &Control| {
        c.capacity_status()
            .last_round
            .unwrap()
            .estimate
            .growth_bytes_per_day
    };
    // Round `i`, a second after the one before.
    let round = |i: u64| c.capacity_tick(&store, t0 + Duration::from_secs(i), 1_000 + i * 1_000);
    for i in 0..3u64 {
        round(i).await.unwrap();
    }
    assert_eq!(growth(&c), Some(0.0), "nodes 1 and 2 hold steady");
    n3.cordoned = false;
    store.put(Record::Node(n3));
    for i in 3..6u64 {
        round(i).await.unwrap();
        assert_eq!(growth(&c), Some(0.0), "round {i}");
    }
    let round = c.capacity_status().last_round.unwrap();
    assert_eq!(round.estimate.used_bytes, 21 * GIB);
    assert_eq!(round.samples, 6);
}

#[tokio::test]
async fn without_a_hook_the_alarm_is_still_recorded() {
    let store = store();
    set_state(&store, 2, NodeState::Draining);
    let c = Control::for_tests(ControlSettings::default());
    assert!(c
        .capacity_tick(&store, Instant::now(), 1_000)
        .await
        .unwrap()
        .is_none());
    let r = recorded(&store);
    assert!(r.alarm && r.last_call.is_none(), "{r:?}");
    assert!(r.reason.unwrap().starts_with("capacity: "));
}

#[tokio::test]
async fn a_hook_call_is_counted_and_its_failure_too() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("hook.sh");
    std::fs::write(&script, "#!/bin/sh\necho nope >&2\nexit 2\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let c = Arc::new(Control::for_tests(ControlSettings {
        capacity_hook: script.display().to_string(),
        ..Default::default()
    }));
    let store = store();
    set_state(&store, 2, NodeState::Draining);
    let (hook, req) = c
        .capacity_tick(&store, Instant::now(), 1_000)
        .await
        .unwrap()
        .unwrap();
    c.clone().call_hook(hook, req).await;
    assert_eq!(c.metrics.capacity_hook_calls.get(), 1);
    assert_eq!(c.metrics.capacity_hook_failures.get(), 1);
    let status = c.capacity_status();
    assert!(!status.calling);
    let outcome = status.last_outcome.unwrap();
    assert!(!outcome.ok);
    assert!(outcome.detail.contains("nope"), "{}", outcome.detail);
}
