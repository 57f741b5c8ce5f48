use super::*;

#[tokio::test]
async fn the_copy_budget_yields_while_clients_are_served() {
    let t = Throttle::new(100 << 20, 10 << 20, Duration::from_millis(50), 1);
    assert_eq!(t.rate(), 100 << 20, "idle: the full budget");
    t.note_client();
    assert_eq!(t.rate(), 10 << 20, "a client request: the busy budget");
    // Back to the full budget once the window has passed with no client.
    let deadline = Instant::now() + Duration::from_secs(10);
    while t.rate() != 100 << 20 {
        assert!(Instant::now() < deadline, "the busy budget never ended");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A busy budget above the full one is capped by it.
    let t = Throttle::new(1 << 20, 8 << 20, Duration::from_secs(60), 1);
    t.note_client();
    assert_eq!(t.rate(), 1 << 20);
    // An urgent copy (a repair) takes the full budget even while clients are served: a
    // whole second's worth goes at once, where a yielding copy would wait for it.
    let t = Throttle::new(1 << 20, 1 << 10, Duration::from_secs(60), 1);
    t.note_client();
    let started = Instant::now();
    t.take(1 << 18, true).await;
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn a_copy_is_urgent_below_rf_or_when_no_replica_is_on_an_up_node() {
    use augur_proto::NodeId;
    let shard = |replicas: &[u64]| Shard {
        id: augur_proto::ShardId(1),
        replicas: replicas.iter().map(|n| NodeId(*n)).collect(),
        learners: vec![NodeId(9)],
        epoch: 3,
        version: 1,
        state: augur_proto::ShardState::Stable,
        size_bytes: 0,
        crc64: 0,
    };
    let up = |n: NodeId| n != NodeId(2);
    // A drain with healthy replicas yields; a repair does not.
    assert!(!urgent(Some(3), &shard(&[1, 2, 3]), up));
    assert!(urgent(Some(3), &shard(&[1, 3]), up));
    // rf 1: the only copy is on the draining node (2), so the copy does not yield.
    assert!(urgent(Some(1), &shard(&[2]), up));
    assert!(!urgent(Some(1), &shard(&[1]), up));
    // Every replica on a node that is not Up.
    assert!(urgent(Some(2), &shard(&[2, 2]), up));
    // Layout unknown: judged by the replicas' nodes alone.
    assert!(!urgent(None, &shard(&[1]), up));
}
