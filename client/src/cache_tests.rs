use super::*;
use augur_proto::{NodeId, ShardState};

fn shard(id: u64, version: u64, epoch: u64) -> Shard {
    Shard {
        id: ShardId(id),
        replicas: vec![NodeId(1)],
        learners: vec![],
        epoch,
        version,
        state: ShardState::Stable,
        size_bytes: 0,
        crc64: 0,
    }
}

#[test]
fn older_knowledge_never_wins() {
    let mut m = ShardMap::default();
    m.apply(5, Change::Put(Record::Shard(shard(1, 5, 2))));
    m.apply(3, Change::Put(Record::Shard(shard(1, 3, 1))));
    assert_eq!(m.get(ShardId(1)).map(|s| s.version), Some(5));
    // Deleted at 7: a read of version 5 that was in flight does not resurrect it.
    m.apply(7, Change::Delete(Key::Shard(ShardId(1))));
    m.learn(ShardId(1), Entry::Present(Arc::new(shard(1, 5, 2))));
    assert!(m.get(ShardId(1)).is_none());
    // Created again later: newer than the tombstone.
    m.apply(9, Change::Put(Record::Shard(shard(1, 9, 3))));
    assert_eq!(m.get(ShardId(1)).map(|s| s.epoch), Some(3));
    assert_eq!(m.len(), 1);
}

#[test]
fn a_relisting_deletes_what_it_no_longer_holds() {
    let mut m = ShardMap::default();
    m.relist(vec![shard(1, 2, 1), shard(2, 3, 1)], 3);
    assert_eq!(m.len(), 2);
    // Listed again at 10 after the watch ended: shard 2 was deleted meanwhile, shard 1
    // changed, shard 3 appeared.
    m.relist(vec![shard(1, 8, 2), shard(3, 9, 1)], 10);
    assert!(m.get(ShardId(2)).is_none());
    assert_eq!(m.get(ShardId(1)).map(|s| s.epoch), Some(2));
    assert!(m.get(ShardId(3)).is_some());
    // A stale event about shard 2 from before the relisting cannot bring it back.
    m.apply(4, Change::Put(Record::Shard(shard(2, 4, 1))));
    assert!(m.get(ShardId(2)).is_none());
}

fn node(id: u64, version: u64, addr: &str) -> Node {
    Node {
        id: NodeId(id),
        incarnation: 1,
        addrs: vec![addr.to_string()],
        admin: String::new(),
        rack: "r1".into(),
        zone: String::new(),
        capacity_bytes: 1,
        used_bytes: 0,
        state: augur_proto::NodeState::Up,
        state_since_ms: 0,
        risk: Default::default(),
        epoch: 1,
        last_heartbeat_ms: 0,
        version,
        cordoned: false,
        drain_when_back: None,
        undrain_when_back: None,
        cause: Default::default(),
    }
}

#[test]
fn one_event_updates_shards_and_nodes_by_the_same_rules() {
    let mut m = Maps::default();
    m.relist(Listing {
        shards: vec![shard(1, 4, 1)],
        shards_at: 6,
        nodes: vec![node(1, 2, "a:1"), node(2, 3, "b:1")],
        nodes_at: 5,
    });
    // Replayed from the older listing's revision on: nothing changes.
    m.apply(4, Change::Put(Record::Shard(shard(1, 4, 1))));
    m.apply(3, Change::Put(Record::Node(node(2, 3, "b:1"))));
    assert_eq!(
        m.nodes.get(NodeId(2)).map(|n| n.addrs[0].clone()),
        Some("b:1".into())
    );
    // A node moved and another left, in the same revision as a shard change.
    m.apply(8, Change::Put(Record::Node(node(1, 8, "a:2"))));
    m.apply(8, Change::Delete(Key::Node(NodeId(2))));
    m.apply(8, Change::Put(Record::Shard(shard(1, 8, 2))));
    assert_eq!(
        m.nodes.get(NodeId(1)).map(|n| n.addrs[0].clone()),
        Some("a:2".into())
    );
    assert!(m.nodes.get(NodeId(2)).is_none());
    assert_eq!(m.shards.get(ShardId(1)).map(|s| s.epoch), Some(2));
    // A late read of the deleted node does not bring it back.
    m.nodes
        .learn(NodeId(2), Entry::Present(Arc::new(node(2, 3, "b:1"))));
    assert!(m.nodes.get(NodeId(2)).is_none());
    assert_eq!((m.shards.len(), m.nodes.len()), (1, 1));
}
