//! After the final heal: did every shard get back to its replication factor, and do its
//! replicas hold the same data?
//!
//! Replicas are compared the way the data plane compares a learner's copy with its primary:
//! at one sequence. The harness asks each shard's primary for a checkpoint
//! (`DataRequest::Checkpoint`, answered `Checkpointed { seq }` once the checkpoint entry is
//! committed, so every replica has it in its log); each replica computes the CRC-64 of the
//! shard's content when it applies that entry and reports it in its probe (`DataRequest::Probe`
//! -> `NodeReport`, `ReplicaStatus::checkpoint`). The probes are polled until every replica
//! reports the checkpoint of that sequence; the CRC-64s (and key counts) must be equal. A
//! later checkpoint (the control plane takes them for copies) overtaking ours makes the
//! harness ask for a new one. The operator certificate of the cluster file may ask both.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use augur_client::{Client, Transport};
use augur_proto::data::{DataRequest, DataResponse, NodeReport};
use augur_proto::{MigrationState, Node, NodeId, NodeState, Shard, ShardId};

use crate::results::NodeDigest;

/// Every shard record, by id.
pub async fn shards(client: &Client) -> Result<BTreeMap<ShardId, Shard>, augur_client::Error> {
    client.list_shards().await
}

/// Every storage node record, by id.
pub async fn nodes(client: &Client) -> Result<BTreeMap<NodeId, Node>, augur_client::Error> {
    Ok(client
        .list_nodes()
        .await?
        .into_iter()
        .map(|n| (n.id, n))
        .collect())
}

/// Why a shard is not (yet) fully replicated, or `None` when it is: `rf` replicas on Up
/// nodes and no learner. A Draining node counts as Up: it holds and serves a full replica
/// until a verified copy replaces it (the final check separately requires that no node is
/// left Draining, [`settle_moves`]).
pub fn under_replicated(s: &Shard, rf: u32, nodes: &BTreeMap<NodeId, Node>) -> Option<String> {
    if s.replicas.len() != rf as usize {
        return Some(format!(
            "shard {}: {} replicas {:?}, want {rf}",
            s.id,
            s.replicas.len(),
            ids(&s.replicas)
        ));
    }
    if !s.learners.is_empty() {
        return Some(format!(
            "shard {}: learners {:?} joining",
            s.id,
            ids(&s.learners)
        ));
    }
    let down: Vec<u64> = s
        .replicas
        .iter()
        .filter(|n| {
            nodes
                .get(n)
                .is_none_or(|n| !matches!(n.state, NodeState::Up | NodeState::Draining))
        })
        .map(|n| n.0)
        .collect();
    if !down.is_empty() {
        return Some(format!("shard {}: replicas {down:?} not Up", s.id));
    }
    None
}

fn ids(v: &[NodeId]) -> Vec<u64> {
    v.iter().map(|n| n.0).collect()
}

/// Whether the moves came to rest after the final heal.
#[derive(Debug, Clone, Default)]
pub struct MoveSettlement {
    /// Migrations neither Committed nor Aborted at the deadline, described.
    pub unfinished: Vec<String>,
    /// Storage nodes still Draining at the deadline, described.
    pub draining: Vec<String>,
    /// Time from the heal until both lists were empty, ms.
    pub settled_after_ms: Option<u64>,
    /// Why the records could not be read at the deadline, if they could not.
    pub error: Option<String>,
}

impl MoveSettlement {
    /// Every migration terminal and no node Draining.
    pub fn settled(&self) -> bool {
        self.settled_after_ms.is_some()
    }
}

/// How long nothing may be in flight before the moves count as settled (the mover plans
/// balancing moves within a pass or two of the last move's end).
const SETTLED_FOR: Duration = Duration::from_secs(3);

/// Waits (until `deadline`) for every migration to be terminal (Committed or Aborted) and no
/// storage node to be Draining, for [`SETTLED_FOR`] in a row: a move that never ends holds its shard `Moving` and blocks
/// every later move of it, and a node left Draining would be emptied for good. `since` is
/// when the cluster was healed.
pub async fn settle_moves(client: &Client, since: Instant, deadline: Instant) -> MoveSettlement {
    let mut out = MoveSettlement::default();
    let mut empty_since: Option<Duration> = None;
    loop {
        match (client.list_migrations().await, nodes(client).await) {
            (Ok(migrations), Ok(registry)) => {
                out.error = None;
                out.unfinished = migrations
                    .iter()
                    .filter(|m| {
                        !matches!(m.state, MigrationState::Committed | MigrationState::Aborted)
                    })
                    .map(|m| {
                        format!(
                            "migration {} ({:?}) of shard {} from node {} to node {}: {:?}, \
                             attempt {}",
                            m.id, m.kind, m.shard, m.from, m.to, m.state, m.attempts
                        )
                    })
                    .collect();
                out.draining = registry
                    .values()
                    .filter(|n| n.state == NodeState::Draining)
                    .map(|n| {
                        format!(
                            "storage-{} Draining ({:?}: {})",
                            n.id, n.cause.origin, n.cause.reason
                        )
                    })
                    .collect();
                if out.unfinished.is_empty() && out.draining.is_empty() {
                    // Balancing may plan moves a pass after the last one ends: settled is
                    // nothing in flight for a while, counted from when it began.
                    let at = *empty_since.get_or_insert_with(|| since.elapsed());
                    if since.elapsed() >= at + SETTLED_FOR {
                        out.settled_after_ms = Some(at.as_millis() as u64);
                        return out;
                    }
                } else {
                    empty_since = None;
                }
            }
            (Err(e), _) | (_, Err(e)) => out.error = Some(format!("metadata: {e}")),
        }
        if Instant::now() >= deadline {
            return out;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// What the convergence check found.
#[derive(Debug, Clone, Default)]
pub struct ShardConvergence {
    /// Every shard at its replication factor with equal checksums on every replica.
    pub converged: bool,
    /// One entry per shard replica: `node` = `shard S @ storage-N`, `revision` = the
    /// checkpoint's sequence, `records` = keys, `crc64` = the replica's CRC-64.
    pub replicas: Vec<NodeDigest>,
    /// Shards not back at their replication factor by the deadline, why.
    pub under_replicated: Vec<String>,
    /// Shards whose replicas differ at one checkpoint, or could not be compared.
    pub mismatches: Vec<String>,
    /// Why not converged, in words.
    pub detail: Option<String>,
    /// Time from the heal until every shard was back at its replication factor, ms.
    pub replicated_after_ms: Option<u64>,
}

async fn probe(raw: &Transport, addr: &str) -> Option<NodeReport> {
    match raw
        .call_as::<_, DataResponse>(addr, &DataRequest::Probe, Duration::from_secs(3))
        .await
    {
        Ok(DataResponse::Probe(r)) => Some(r),
        _ => None,
    }
}

/// One shard's replicas at one checkpoint, or why they could not be compared yet.
async fn compare_shard(
    raw: &Transport,
    s: &Shard,
    nodes: &BTreeMap<NodeId, Node>,
    deadline: Instant,
) -> Result<Vec<NodeDigest>, String> {
    let addr = |n: &NodeId| -> Result<String, String> {
        nodes
            .get(n)
            .and_then(|n| n.addrs.first().cloned())
            .ok_or_else(|| format!("node {n} has no address"))
    };
    let primary = s
        .replicas
        .first()
        .ok_or_else(|| format!("shard {} has no replicas", s.id))?;
    let seq = match raw
        .call_as::<_, DataResponse>(
            &addr(primary)?,
            &DataRequest::Checkpoint {
                shard: s.id,
                epoch: s.epoch,
            },
            Duration::from_secs(10),
        )
        .await
    {
        Ok(DataResponse::Checkpointed { seq }) => seq,
        Ok(other) => return Err(format!("checkpoint of shard {}: {other:?}", s.id)),
        Err(e) => return Err(format!("checkpoint of shard {}: {e}", s.id)),
    };
    loop {
        let mut got = Vec::new();
        let mut waiting = Vec::new();
        for n in &s.replicas {
            let report = probe(raw, &addr(n)?).await;
            let c = report
                .as_ref()
                .and_then(|r| r.replicas.iter().find(|r| r.shard == s.id))
                .and_then(|r| r.checkpoint);
            match c {
                Some(c) if c.seq == seq => got.push(NodeDigest {
                    node: format!("shard {} @ storage-{}", s.id, n.0),
                    revision: seq,
                    records: c.keys,
                    crc64: format!("{:016x}", c.crc64),
                }),
                Some(c) if c.seq > seq => {
                    return Err(format!(
                        "shard {}: a later checkpoint ({}) overtook {seq} on node {n}",
                        s.id, c.seq
                    ))
                }
                other => waiting.push(format!("node {n} at checkpoint {:?}", other.map(|c| c.seq))),
            }
        }
        if waiting.is_empty() {
            return Ok(got);
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "shard {}: checkpoint {seq} not reported by every replica: {}",
                s.id,
                waiting.join(", ")
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits (until `deadline`) for every shard to be back at `rf` replicas, then compares each
/// shard's replicas at one checkpoint, retrying a shard whose comparison failed (an overtaking
/// checkpoint, a primary change) until the deadline. `since` is when the cluster was healed,
/// for [`ShardConvergence::replicated_after_ms`].
pub async fn check(
    client: &Client,
    raw: &Transport,
    rf: u32,
    since: Instant,
    deadline: Instant,
) -> ShardConvergence {
    let started = since;
    let mut out = ShardConvergence::default();
    // 1. Back at rf.
    let (records, registry) = loop {
        let listed = match (shards(client).await, nodes(client).await) {
            (Ok(s), Ok(n)) => Ok((s, n)),
            (Err(e), _) | (_, Err(e)) => Err(e.to_string()),
        };
        let pending: Vec<String> = match &listed {
            Ok((s, n)) => s
                .values()
                .filter_map(|s| under_replicated(s, rf, n))
                .collect(),
            Err(e) => vec![format!("metadata: {e}")],
        };
        if pending.is_empty() {
            if let Ok(l) = listed {
                out.replicated_after_ms = Some(started.elapsed().as_millis() as u64);
                break l;
            }
        }
        if Instant::now() >= deadline {
            out.detail = Some(format!(
                "{} shard(s) not back at rf {rf}: {}",
                pending.len(),
                pending.first().cloned().unwrap_or_default()
            ));
            out.under_replicated = pending;
            return out;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    // 2. Equal at one checkpoint, shard by shard.
    let mut records = records;
    let mut registry = registry;
    let mut pending: Vec<ShardId> = records.keys().copied().collect();
    let mut last_error: BTreeMap<ShardId, String> = BTreeMap::new();
    while !pending.is_empty() {
        let mut still = Vec::new();
        for id in pending {
            let Some(s) = records.get(&id) else { continue };
            match compare_shard(raw, s, &registry, deadline).await {
                Ok(digests) => {
                    let first = digests.first().map(|d| (d.crc64.clone(), d.records));
                    if digests
                        .iter()
                        .any(|d| Some((d.crc64.clone(), d.records)) != first)
                    {
                        out.mismatches.push(format!(
                            "shard {id}: replicas differ at checkpoint {}: {}",
                            digests.first().map_or(0, |d| d.revision),
                            digests
                                .iter()
                                .map(|d| format!("{}={} ({} keys)", d.node, d.crc64, d.records))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ));
                    }
                    out.replicas.extend(digests);
                    last_error.remove(&id);
                }
                Err(e) => {
                    last_error.insert(id, e);
                    still.push(id);
                }
            }
        }
        pending = still;
        if pending.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            out.mismatches
                .extend(pending.iter().filter_map(|id| last_error.get(id).cloned()));
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        // A shard may have changed primary meanwhile: compare under its current record.
        if let (Ok(s), Ok(n)) = (shards(client).await, nodes(client).await) {
            records = s;
            registry = n;
        }
    }
    out.converged = out.mismatches.is_empty() && out.under_replicated.is_empty();
    if !out.converged && out.detail.is_none() {
        out.detail = Some(format!(
            "{} shard(s) differ or could not be compared: {}",
            out.mismatches.len(),
            out.mismatches.first().cloned().unwrap_or_default()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u64, state: NodeState) -> (NodeId, Node) {
        (
            NodeId(id),
            Node {
                id: NodeId(id),
                incarnation: 1,
                addrs: vec![format!("127.0.0.1:{}", 7000 + id)],
                admin: String::new(),
                rack: String::new(),
                zone: String::new(),
                capacity_bytes: 0,
                used_bytes: 0,
                state,
                state_since_ms: 0,
                risk: Default::default(),
                epoch: 0,
                last_heartbeat_ms: 0,
                version: 0,
                cordoned: false,
                drain_when_back: None,
                undrain_when_back: None,
                cause: Default::default(),
            },
        )
    }

    #[test]
    fn a_shard_is_replicated_with_rf_up_replicas_and_no_learner() {
        let nodes: BTreeMap<NodeId, Node> = [
            node(1, NodeState::Up),
            node(2, NodeState::Up),
            node(3, NodeState::Down),
            node(4, NodeState::Up),
        ]
        .into();
        let mut s = Shard {
            id: ShardId(1),
            replicas: vec![NodeId(1), NodeId(2), NodeId(4)],
            learners: vec![],
            epoch: 3,
            version: 9,
            state: augur_proto::ShardState::Stable,
            size_bytes: 0,
            crc64: 0,
        };
        assert_eq!(under_replicated(&s, 3, &nodes), None);
        let mut draining = nodes.clone();
        draining.insert(NodeId(2), node(2, NodeState::Draining).1);
        assert_eq!(
            under_replicated(&s, 3, &draining),
            None,
            "a draining replica serves"
        );
        s.learners.push(NodeId(3));
        assert!(under_replicated(&s, 3, &nodes)
            .unwrap()
            .contains("learners"));
        s.learners.clear();
        s.replicas[2] = NodeId(3);
        assert!(under_replicated(&s, 3, &nodes).unwrap().contains("not Up"));
        s.replicas.pop();
        assert!(under_replicated(&s, 3, &nodes).unwrap().contains("want 3"));
    }
}
