use super::*;

#[test]
fn a_node_draining_when_it_went_down_drains_again_when_it_returns() {
    use crate::control::cluster::fixtures::node;
    use crate::control::liveness::moved;
    let mut draining = node(3, NodeState::Draining);
    draining.cause = augur_proto::StateCause {
        origin: augur_proto::StateOrigin::Operator,
        reason: "disk swap".into(),
        ..Default::default()
    };
    draining.cordoned = true;
    let down = moved(&draining, NodeState::Down, 50, "silent".into());
    assert_eq!(down.drain_when_back.as_ref(), Some(&draining.cause));
    assert_eq!(down.cause.origin, augur_proto::StateOrigin::Liveness);

    // Back with its data: draining again, for whoever drained it, under its epoch.
    let mut back = node(3, NodeState::Up);
    back.drain_when_back = Some(registered("forged by the node"));
    carry_over(&down, &mut back, 90);
    assert_eq!(
        (back.state, &back.cause, back.state_since_ms, back.epoch),
        (NodeState::Draining, &draining.cause, 90, down.epoch)
    );
    assert_eq!(back.drain_when_back, None, "resumed once");
    assert!(back.cordoned, "the operator's cordon is kept");

    // A node Down from anything else comes back Up.
    let mut up = node(3, NodeState::Up);
    carry_over(
        &moved(
            &node(3, NodeState::Suspect),
            NodeState::Down,
            50,
            "silent".into(),
        ),
        &mut up,
        90,
    );
    assert_eq!(
        (up.state, up.cause.origin),
        (NodeState::Up, augur_proto::StateOrigin::Registered)
    );

    // A new incarnation holds nothing to drain: a fresh start under a new epoch.
    let mut fresh = node(3, NodeState::Up);
    fresh.incarnation = 8;
    carry_over(&down, &mut fresh, 90);
    assert_eq!(
        (fresh.state, fresh.epoch, fresh.drain_when_back.as_ref()),
        (NodeState::Up, down.epoch + 1, None)
    );

    // A node that registers again while still live keeps its state and cause.
    let mut again = node(3, NodeState::Up);
    carry_over(&draining, &mut again, 90);
    assert_eq!(
        (again.state, &again.cause, again.state_since_ms),
        (NodeState::Draining, &draining.cause, 0)
    );
    assert_eq!(again.drain_when_back, None);

    // A node restarting while late heartbeats displaced an operator's undrain keeps it for
    // their return; a new incarnation does not.
    let mut undrained = node(3, NodeState::Up);
    undrained.cause = draining.cause.clone();
    let late = moved(&undrained, NodeState::Suspect, 50, "late".into());
    let mut again = node(3, NodeState::Up);
    carry_over(&late, &mut again, 90);
    assert_eq!(again.undrain_when_back.as_ref(), Some(&draining.cause));
    let mut fresh = node(3, NodeState::Up);
    fresh.incarnation = 8;
    carry_over(&late, &mut fresh, 90);
    assert_eq!(fresh.undrain_when_back, None);
}

#[test]
fn only_news_a_move_waits_for_wakes_the_mover() {
    use augur_proto::data::ReplicaStatus;
    use augur_proto::ShardId;
    let status = |shard: u64, role, copied| ReplicaStatus {
        shard: ShardId(shard),
        epoch: 1,
        role,
        prepared: 0,
        committed: 0,
        applied: 0,
        serving: false,
        copied,
        copy_bytes: 0,
        size_estimate: 0,
        checkpoint: None,
    };
    let report = |replicas| NodeReport {
        node: NodeId(4),
        incarnation: 1,
        node_epoch: 1,
        used_bytes: 0,
        capacity_bytes: 1,
        replicas,
    };
    let copying = report(vec![status(1, ReplicaRole::Learner, false)]);
    let copied = report(vec![status(1, ReplicaRole::Learner, true)]);
    assert!(!mover_news(None, &copying));
    assert!(mover_news(None, &copied));
    assert!(mover_news(Some(&copying), &copied));
    assert!(
        !mover_news(Some(&copied), &copied),
        "told once, not every beat"
    );
    let secondary = report(vec![status(1, ReplicaRole::Secondary, true)]);
    assert!(!mover_news(Some(&copying), &secondary));
    // A checksum at a newer checkpoint is news once.
    let checked = |seq| {
        let mut s = status(1, ReplicaRole::Secondary, true);
        s.checkpoint = Some(augur_proto::data::Checkpoint {
            seq,
            crc64: 7,
            bytes: 1,
            keys: 1,
        });
        report(vec![s])
    };
    assert!(mover_news(Some(&secondary), &checked(9)));
    assert!(!mover_news(Some(&checked(9)), &checked(9)));
    assert!(mover_news(Some(&checked(9)), &checked(12)));
}

#[test]
fn sample_batches_are_checked_whole() {
    let good = r#"{"node":"2","ts_ms":1000,"cpu_util":0.5}"#.to_string();
    assert_eq!(
        parse_samples(NodeId(2), std::slice::from_ref(&good))
            .unwrap()
            .len(),
        1
    );
    for bad in [
        r#"{"node":"3","ts_ms":1000,"cpu_util":0.5}"#,
        r#"{"node":"2","ts_ms":1000,"cpu_util":7}"#,
        r#"{"node":"2"}"#,
        "not json",
    ] {
        assert!(
            parse_samples(NodeId(2), &[good.clone(), bad.to_string()]).is_err(),
            "{bad}"
        );
    }
    let many = vec![good; MAX_HEALTH_BATCH + 1];
    assert!(parse_samples(NodeId(2), &many).is_err());
    assert!(parse_samples(NodeId(2), &["x".repeat(MAX_HEALTH_SAMPLE_BYTES + 1)]).is_err());
}
