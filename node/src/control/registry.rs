//! Storage nodes joining and staying in touch, and creating the data plane.
//!
//! A node registers when it starts: the leader checks its incarnation against the registry. A
//! node whose recorded incarnation differs has lost its data; if the registry still places
//! replicas on it, the registration is refused, because taking part under that id would
//! pretend the data is there. Heartbeats are not Raft entries: the leader confirms it is still
//! leader (ReadIndex), notes the time, and writes the node's record only when something
//! changes (its usage at most every `usage_interval_ms`).

use super::placement::{self, Candidate};
use super::Seen;
use crate::meta::MetaNode;
use augur_proto::data::{
    DataCluster, NodeReport, ReplicaRole, ReplicaStatus, DATA_CLUSTER_SETTING,
};
use augur_proto::wire::{
    ApiError, NodeHealth, RiskState, MAX_HEALTH_BATCH, MAX_HEALTH_SAMPLE_BYTES,
};
use augur_proto::{
    Compare, CompareTarget, Key, Node, NodeState, Op, Record, Response, Setting, Shard, ShardState,
    Table, Txn,
};
use augur_proto::{NodeId, ShardId};
use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch on this machine's wall clock.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl MetaNode {
    /// Proposes a transaction as leader and waits for its result.
    pub(crate) async fn propose(&self, txn: Txn) -> Result<augur_proto::TxnResult, ApiError> {
        match self.txn(txn).await {
            Response::Txn(r) => Ok(r),
            Response::Error(e) => Err(e),
            other => Err(ApiError::Internal(format!("txn answered {other:?}"))),
        }
    }

    /// Reads a record from this member's state after confirming leadership.
    pub(crate) async fn leader_get(&self, key: Key) -> Result<Option<Record>, ApiError> {
        self.require_leader()?;
        self.leader_read_index(true).await?;
        self.read_sm(move |sm| sm.get(&key)).await.map(|(r, _)| r)
    }

    /// Every record of a table, read on the leader after confirming leadership.
    pub(crate) async fn leader_list(&self, table: Table) -> Result<Vec<Record>, ApiError> {
        self.require_leader()?;
        self.leader_read_index(true).await?;
        let mut all = Vec::new();
        let mut after: Option<Key> = None;
        loop {
            let start = after.clone();
            let (page, more, _) = self
                .read_sm(move |sm| sm.list(table, start.as_ref(), 10_000, usize::MAX))
                .await?;
            after = page.last().map(Record::key);
            all.extend(page);
            if !more || after.is_none() {
                return Ok(all);
            }
        }
    }

    /// Every shard record.
    pub(crate) async fn shards(&self) -> Result<Vec<Shard>, ApiError> {
        Ok(self
            .leader_list(Table::Shards)
            .await?
            .into_iter()
            .filter_map(|r| match r {
                Record::Shard(s) => Some(s),
                _ => None,
            })
            .collect())
    }

    /// Every storage-node record.
    pub(crate) async fn nodes(&self) -> Result<Vec<Node>, ApiError> {
        Ok(self
            .leader_list(Table::Nodes)
            .await?
            .into_iter()
            .filter_map(|r| match r {
                Record::Node(n) => Some(n),
                _ => None,
            })
            .collect())
    }

    /// `Request::Register`: see the module documentation.
    pub(crate) async fn register(&self, mut node: Node) -> Response {
        if let Err(e) = Record::Node(node.clone()).validate() {
            return Response::Error(ApiError::InvalidArgument(e.to_string()));
        }
        if node.incarnation == 0 {
            return Response::Error(ApiError::InvalidArgument(
                "a node's incarnation is never 0".into(),
            ));
        }
        // The acknowledgement grants a lease: ordered against liveness like a heartbeat's.
        let _gate = self.control.grants.lock(node.id).await;
        let current = match self.leader_get(Key::Node(node.id)).await {
            Ok(Some(Record::Node(n))) => Some(n),
            Ok(_) => None,
            Err(e) => return Response::Error(e),
        };
        let now = now_ms();
        let compare = match &current {
            None => {
                node.state = NodeState::Up;
                node.state_since_ms = now;
                node.epoch = 1;
                node.cordoned = false;
                node.cause = registered("registered");
                CompareTarget::Absent
            }
            Some(old) => {
                if old.incarnation != node.incarnation {
                    let holds = match self.shards().await {
                        Ok(shards) => shards
                            .iter()
                            .filter(|s| {
                                s.replicas.contains(&node.id) || s.learners.contains(&node.id)
                            })
                            .count(),
                        Err(e) => return Response::Error(e),
                    };
                    // Even once Removed: a shard that still lists the id would take the
                    // new, empty node for its replica (for a shard with no other replica,
                    // its primary), and the shard would wait on a node that holds nothing.
                    if holds > 0 && old.state == NodeState::Removed {
                        return Response::Error(ApiError::WrongIdentity(format!(
                            "node {} was removed, but {holds} shard(s) still list it as a replica: \
                             it may join as a new node once re-replication has replaced it there \
                             (`augurctl shard list`; a shard whose every replica is gone needs \
                             `augurctl shard force-primary`)",
                            node.id
                        )));
                    }
                    if holds > 0 {
                        return Response::Error(ApiError::WrongIdentity(format!(
                            "node {} is registered as incarnation {:016x} and holds {holds} \
                             replica(s), but its data directory is incarnation {:016x}: its data \
                             is gone. Once it is Down, remove it (`augurctl node remove --id {}`) \
                             and start it as a new node",
                            node.id, old.incarnation, node.incarnation, node.id
                        )));
                    }
                }
                carry_over(old, &mut node, now);
                CompareTarget::VersionEq(old.version)
            }
        };
        node.last_heartbeat_ms = now;
        let txn = Txn {
            compares: vec![Compare {
                key: Key::Node(node.id),
                target: compare,
            }],
            ops: vec![Op::Put(Record::Node(node.clone()))],
        };
        match self.propose(txn).await {
            Ok(r) if r.succeeded => {
                self.control.grants.note(node.id, Instant::now());
                tracing::info!(node = %node.id, incarnation = format_args!("{:016x}", node.incarnation), epoch = node.epoch, state = ?node.state, "storage node registered");
                self.heartbeat_ack(node.epoch, node.state)
            }
            Ok(_) => Response::Error(ApiError::Unavailable(
                "the node's record changed meanwhile; register again".into(),
            )),
            Err(e) => Response::Error(e),
        }
    }

    /// `Request::Heartbeat` (and `HealthHeartbeat`, with `health`): confirms leadership,
    /// notes the time and the node's health, acknowledges with the node's registered epoch
    /// and state. The risk is kept in memory (`/v1/control`, `augur_node_risk`) and written to
    /// the node's record when it changes, at most every `usage_interval_ms`, with the usage.
    pub(crate) async fn heartbeat(
        &self,
        report: NodeReport,
        health: Option<NodeHealth>,
    ) -> Response {
        if let Err(e) = self.require_leader() {
            return Response::Error(e);
        }
        if let Some(h) = &health {
            if let Err(e) = h.validate() {
                return Response::Error(ApiError::InvalidArgument(e.to_string()));
            }
        }
        if let Err(e) = report.validate() {
            return Response::Error(ApiError::InvalidArgument(e.to_string()));
        }
        // Held until the answer is built: a Down being written about this node is either
        // seen in the record below or sees this grant ([`super::grants`]).
        let _gate = self.control.grants.lock(report.node).await;
        // A heartbeat acknowledged by a deposed leader would extend a lease nobody vouches
        // for: confirm with a quorum first.
        if let Err(e) = self.leader_read_index(true).await {
            return Response::Error(e);
        }
        let key = Key::Node(report.node);
        let record = match self.read_sm(move |sm| sm.get(&key)).await {
            Ok((Some(Record::Node(n)), _)) => n,
            Ok(_) => {
                return Response::Error(ApiError::InvalidArgument(format!(
                    "node {} is not registered",
                    report.node
                )))
            }
            Err(e) => return Response::Error(e),
        };
        if record.incarnation != report.incarnation {
            return Response::Error(ApiError::WrongIdentity(format!(
                "node {} is registered as incarnation {:016x}, the heartbeat is from {:016x}",
                report.node, record.incarnation, report.incarnation
            )));
        }
        let now = Instant::now();
        let write_usage = {
            let Ok(mut seen) = self.control.seen.lock() else {
                return Response::Error(ApiError::Internal("liveness table poisoned".into()));
            };
            let interval = Duration::from_millis(self.control.settings.usage_interval_ms);
            let prev = seen.get(&report.node).and_then(|s| s.usage_written);
            if mover_news(seen.get(&report.node).map(|s| &s.report), &report) {
                self.control.wake_mover();
            }
            let health = health.or_else(|| seen.get(&report.node).and_then(|s| s.health.clone()));
            let risk = health.as_ref().and_then(|h| record_risk(&h.risk));
            let risk_changed = risk.as_ref().is_some_and(|r| risk_moved(&record.risk, r));
            let due = (record.used_bytes != report.used_bytes || risk_changed)
                && prev.is_none_or(|t| now.duration_since(t) >= interval);
            if let Some(h) = &health {
                self.control.note_risk(report.node, &h.risk);
            }
            self.control.grants.note(report.node, now);
            seen.insert(
                report.node,
                Seen {
                    at: now,
                    report: report.clone(),
                    usage_written: if due { Some(now) } else { prev },
                    health,
                },
            );
            due.then_some(risk)
        };
        if let Some(risk) = write_usage {
            let node = self.clone();
            let mut updated = record.clone();
            updated.used_bytes = report.used_bytes;
            updated.capacity_bytes = report.capacity_bytes;
            updated.last_heartbeat_ms = now_ms();
            if let Some(risk) = risk {
                updated.risk = risk;
            }
            tokio::spawn(async move {
                let txn = Txn::cas(Record::Node(updated), Some(record.version));
                if let Err(e) = node.propose(txn).await {
                    tracing::debug!(error = %e, "usage update not written");
                }
            });
        }
        self.heartbeat_ack(record.epoch, record.state)
    }

    /// `Request::HealthSamples`: checks the batch (bounded, every sample of the predictor's
    /// format and of this node) and keeps it in the leader's bounded memory. A malformed batch
    /// is refused whole with `InvalidArgument`; nothing is kept.
    pub(crate) fn health_samples(&self, node: NodeId, samples: Vec<String>) -> Response {
        if let Err(e) = self.require_leader() {
            return Response::Error(e);
        }
        match parse_samples(node, &samples) {
            Ok(batch) => {
                self.control.note_samples(node, batch);
                Response::Done
            }
            Err(why) => Response::Error(ApiError::InvalidArgument(why)),
        }
    }

    fn heartbeat_ack(&self, node_epoch: u64, state: NodeState) -> Response {
        Response::HeartbeatAck {
            node_epoch,
            state,
            lease_ms: self.control.settings.lease_ms,
            heartbeat_interval_ms: self.control.settings.heartbeat_interval_ms,
        }
    }

    /// `Request::InitDataPlane`: writes the layout and every shard's initial placement over
    /// the Up nodes. Asking again with the same layout completes an interrupted creation.
    pub(crate) async fn init_data_plane(&self, layout: DataCluster) -> Response {
        if let Err(e) = layout.validate() {
            return Response::Error(ApiError::InvalidArgument(e.to_string()));
        }
        let setting_key = Key::Setting(DATA_CLUSTER_SETTING.into());
        let existing = match self.leader_get(setting_key.clone()).await {
            Ok(r) => r,
            Err(e) => return Response::Error(e),
        };
        let mut txns = Vec::new();
        if let Some(Record::Setting(s)) = &existing {
            match serde_json::from_slice::<DataCluster>(&s.value) {
                Ok(l) if l == layout => {}
                Ok(l) => {
                    return Response::Error(ApiError::InvalidArgument(format!(
                        "the data plane exists with {} shards at rf {}",
                        l.shards, l.rf
                    )))
                }
                Err(e) => {
                    return Response::Error(ApiError::Internal(format!(
                        "setting {DATA_CLUSTER_SETTING} does not parse: {e}"
                    )))
                }
            }
        }
        let nodes = match self.nodes().await {
            Ok(n) => n,
            Err(e) => return Response::Error(e),
        };
        let candidates: Vec<Candidate> = nodes
            .iter()
            .filter(|n| super::cluster::accepts_replicas(n))
            .map(|n| Candidate {
                id: n.id,
                weight: n.capacity_bytes.max(1) as f64,
                rack: n.rack.clone(),
            })
            .collect();
        let placed = match placement::initial(layout.shards, layout.rf as usize, &candidates) {
            Ok(p) => p,
            Err(e) => return Response::Error(ApiError::Unavailable(e.to_string())),
        };
        let present: std::collections::HashSet<_> = match self.shards().await {
            Ok(s) => s.into_iter().map(|s| s.id).collect(),
            Err(e) => return Response::Error(e),
        };
        let mut ops: Vec<(Compare, Op)> = Vec::new();
        if existing.is_none() {
            let value = match serde_json::to_vec(&layout) {
                Ok(v) => v,
                Err(e) => return Response::Error(ApiError::Internal(e.to_string())),
            };
            ops.push((
                Compare {
                    key: setting_key,
                    target: CompareTarget::Absent,
                },
                Op::Put(Record::Setting(Setting {
                    name: DATA_CLUSTER_SETTING.into(),
                    value,
                    version: 0,
                })),
            ));
        }
        for (id, replicas) in placed {
            if present.contains(&id) {
                continue;
            }
            ops.push((
                Compare {
                    key: Key::Shard(id),
                    target: CompareTarget::Absent,
                },
                Op::Put(Record::Shard(Shard {
                    id,
                    replicas,
                    learners: vec![],
                    epoch: augur_proto::SHARD_CREATION_EPOCH,
                    version: 0,
                    state: ShardState::Stable,
                    size_bytes: 0,
                    crc64: 0,
                })),
            ));
        }
        // The layout goes in the first transaction, so shards never exist without it.
        for chunk in ops.chunks(augur_proto::txn::MAX_OPS) {
            let (compares, ops): (Vec<Compare>, Vec<Op>) = chunk.iter().cloned().unzip();
            txns.push(Txn { compares, ops });
        }
        for txn in txns {
            match self.propose(txn).await {
                Ok(r) if r.succeeded => {}
                Ok(_) => {
                    return Response::Error(ApiError::Unavailable(
                        "another creation of the data plane raced this one; ask again".into(),
                    ))
                }
                Err(e) => return Response::Error(e),
            }
        }
        tracing::info!(
            shards = layout.shards,
            rf = layout.rf,
            nodes = candidates.len(),
            "data plane created"
        );
        Response::Done
    }
}

/// Whether `now` reports something a move waits for that `before` did not: a learner's
/// finished copy, or a newer checkpoint checksum (a verification's figure). The mover's next
/// step is then ready.
fn mover_news(before: Option<&NodeReport>, now: &NodeReport) -> bool {
    // Indexed: the comparison runs under the liveness table's lock, once per heartbeat.
    let before: HashMap<ShardId, &ReplicaStatus> = before
        .map(|b| b.replicas.iter().map(|r| (r.shard, r)).collect())
        .unwrap_or_default();
    let earlier = |shard| before.get(&shard).copied();
    now.replicas.iter().any(|r| {
        let prev = earlier(r.shard);
        let copied = r.role == ReplicaRole::Learner
            && r.copied
            && !prev.is_some_and(|p| p.role == ReplicaRole::Learner && p.copied);
        let checkpoint =
            r.checkpoint.map(|c| c.seq) > prev.and_then(|p| p.checkpoint.map(|c| c.seq));
        copied || checkpoint
    })
}

/// The record a node registering again as `node` is written as, given its record `old`:
/// what the node says of itself (addresses, capacity, labels, incarnation) with what the
/// control plane decided kept (state, risk, cordon), except that
/// - a new incarnation (checked to hold nothing) starts afresh, Up under a new epoch;
/// - a node declared Down that talks to us again is Up under its epoch, or Draining again
///   if it was draining when it went Down (`Node::drain_when_back`).
///
/// Coming back from anything else (Suspect, or Removed by mistake) is up to the liveness
/// rules and the operators.
fn carry_over(old: &Node, node: &mut Node, now: u64) {
    // Only liveness keeps a drain or an undrain for a node's return; a registration never
    // asks for one.
    node.drain_when_back = None;
    node.undrain_when_back = None;
    if old.incarnation != node.incarnation {
        node.epoch = old.epoch + 1;
        node.state = NodeState::Up;
        node.state_since_ms = now;
        node.cause = registered("registered as a new incarnation");
    } else {
        node.epoch = old.epoch;
        match (old.state, &old.drain_when_back) {
            (NodeState::Down, Some(drain)) => {
                node.state = NodeState::Draining;
                node.state_since_ms = now;
                node.cause = drain.clone();
            }
            (NodeState::Down, None) => {
                node.state = NodeState::Up;
                node.state_since_ms = now;
                node.cause = registered("registered again after being Down");
            }
            (s, _) => {
                node.state = s;
                node.state_since_ms = old.state_since_ms;
                node.cause = old.cause.clone();
                node.drain_when_back = old.drain_when_back.clone();
                node.undrain_when_back = old.undrain_when_back.clone();
            }
        }
    }
    node.risk = old.risk.clone();
    // Only an operator cordons and uncordons.
    node.cordoned = old.cordoned;
}

/// The cause recorded when a registration sets a node's state.
fn registered(reason: &str) -> augur_proto::StateCause {
    augur_proto::StateCause {
        origin: augur_proto::StateOrigin::Registered,
        reason: reason.to_string(),
        ..Default::default()
    }
}

/// The record's form of a scored risk (`None` for any other state: the record keeps the last
/// score it had, and `/v1/control` says why there is no newer one).
fn record_risk(state: &RiskState) -> Option<augur_proto::Risk> {
    match state {
        RiskState::Scored(r) => Some(augur_proto::Risk {
            score: r.score,
            model: r.model.clone(),
            top_features: r
                .reasons
                .iter()
                .take(augur_proto::model::limits::MAX_FEATURES)
                .cloned()
                .collect(),
        }),
        _ => None,
    }
}

/// Whether a new risk differs enough from the recorded one to be worth a metadata write:
/// another model, another top reason, or a score 0.01 or more away.
fn risk_moved(old: &augur_proto::Risk, new: &augur_proto::Risk) -> bool {
    old.model != new.model
        || old.top_features.first().map(|f| &f.0) != new.top_features.first().map(|f| &f.0)
        || (old.score - new.score).abs() >= 0.01
}

/// A `HealthSamples` batch, checked: bounded, each sample the predictor's format (its own
/// checks: utilisation within 0..1, no negative latency, something measured) and of `node`.
pub(crate) fn parse_samples(
    node: NodeId,
    samples: &[String],
) -> Result<Vec<augur_predictor::HealthSample>, String> {
    if samples.len() > MAX_HEALTH_BATCH {
        return Err(format!(
            "{} health samples in one batch (at most {MAX_HEALTH_BATCH})",
            samples.len()
        ));
    }
    let name = node.0.to_string();
    samples
        .iter()
        .enumerate()
        .map(|(i, text)| {
            if text.len() > MAX_HEALTH_SAMPLE_BYTES {
                return Err(format!(
                    "health sample {i}: {} bytes (at most {MAX_HEALTH_SAMPLE_BYTES})",
                    text.len()
                ));
            }
            let s: augur_predictor::HealthSample =
                serde_json::from_str(text).map_err(|e| format!("health sample {i}: {e}"))?;
            s.validate()
                .map_err(|(field, why)| format!("health sample {i}: `{field}` {why}"))?;
            if s.node != name {
                return Err(format!(
                    "health sample {i} is of node {:?}, not {name}",
                    s.node
                ));
            }
            Ok(s)
        })
        .collect()
}

#[cfg(test)]
#[path = "registry_tests.rs"]
mod health_tests;
