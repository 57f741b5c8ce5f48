//! The control plane's two ways to reach the world: the metadata store (read the records,
//! propose a transaction) and the storage nodes (probe, checkpoint, hand-off).
//!
//! Both are traits so that the control plane's loops can be driven in unit tests against an
//! in-memory store and scripted storage nodes; production uses [`MetaNode`] and
//! [`QuicStorage`], and nothing else implements them outside tests.

use super::cluster::Cluster;
use crate::meta::MetaNode;
use augur_proto::data::{
    DataCluster, DataError, DataRequest, DataResponse, NodeReport, DATA_CLUSTER_SETTING,
};
use augur_proto::wire::ApiError;
use augur_proto::{Key, Record, ShardId, StormGuard, Table, Txn, TxnResult, STORM_GUARD_SETTING};
use augur_transport::{Transport, STORAGE_SERVER_NAME};
use futures::future::BoxFuture;
use std::time::Duration;

/// The metadata store as the control plane uses it.
pub trait MetaStore: Send + Sync {
    /// Every node, shard and migration record and the layout, read linearizably (the leader
    /// confirms its leadership first) at one revision.
    fn cluster(&self) -> BoxFuture<'_, Result<Cluster, ApiError>>;
    /// Every storage-node record only (the liveness tick's read, several times a second:
    /// it must not scale with the number of shards).
    fn nodes(&self) -> BoxFuture<'_, Result<Cluster, ApiError>>;
    /// One record, read linearizably (`None`: absent).
    fn get(&self, key: Key) -> BoxFuture<'_, Result<Option<Record>, ApiError>>;
    /// Proposes a transaction as leader and waits for its outcome.
    fn propose(&self, txn: Txn) -> BoxFuture<'_, Result<TxnResult, ApiError>>;
}

/// Why a call to a storage node failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CallError {
    /// The node could not be reached, or did not answer in time.
    #[error("storage node at {addr} unreachable: {detail}")]
    Unreachable {
        /// The address called.
        addr: String,
        /// Why.
        detail: String,
    },
    /// The node answered with an error.
    #[error("storage node at {addr} refused: {error}")]
    Refused {
        /// The address called.
        addr: String,
        /// Its answer.
        error: DataError,
    },
    /// The node answered something that is not an answer to the request.
    #[error("storage node at {addr} answered {detail}")]
    Unexpected {
        /// The address called.
        addr: String,
        /// What it answered.
        detail: String,
    },
}

/// The requests the control plane makes of storage nodes.
pub trait StorageCalls: Send + Sync {
    /// The state of every replica on the node at `addr`.
    fn probe<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, Result<NodeReport, CallError>>;
    /// Asks the primary at `addr` to write a checkpoint entry for `shard` at `epoch`; the
    /// sequence of the entry once it is committed.
    fn checkpoint<'a>(
        &'a self,
        addr: &'a str,
        shard: ShardId,
        epoch: u64,
    ) -> BoxFuture<'a, Result<u64, CallError>>;
    /// Asks the primary at `addr` to hand `shard` off at `epoch` (a planned move of its
    /// primary role): it stops taking requests, lets every write in flight commit and answers
    /// with its last applied sequence; it serves again if no new configuration comes within
    /// `timeout_ms`.
    fn hand_off<'a>(
        &'a self,
        addr: &'a str,
        shard: ShardId,
        epoch: u64,
        timeout_ms: u64,
    ) -> BoxFuture<'a, Result<u64, CallError>>;
}

/// [`StorageCalls`] over QUIC, from the member's own endpoint with the member certificate.
pub struct QuicStorage {
    transport: Transport,
    timeout: Duration,
}

impl QuicStorage {
    /// Calls storage nodes from `peers`' endpoint (verifying them as storage servers), each
    /// call bounded by `timeout`.
    pub fn new(peers: &Transport, timeout: Duration) -> QuicStorage {
        QuicStorage {
            transport: peers.for_servers(STORAGE_SERVER_NAME),
            timeout,
        }
    }

    async fn call(&self, addr: &str, req: DataRequest) -> Result<DataResponse, CallError> {
        let resp: DataResponse = self
            .transport
            .call_as(addr, &req, self.timeout)
            .await
            .map_err(|e| CallError::Unreachable {
                addr: addr.to_string(),
                detail: e.to_string(),
            })?;
        match resp {
            DataResponse::Error(error) => Err(CallError::Refused {
                addr: addr.to_string(),
                error,
            }),
            other => Ok(other),
        }
    }
}

impl StorageCalls for QuicStorage {
    fn probe<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, Result<NodeReport, CallError>> {
        Box::pin(async move {
            match self.call(addr, DataRequest::Probe).await? {
                DataResponse::Probe(report) => Ok(report),
                other => Err(CallError::Unexpected {
                    addr: addr.to_string(),
                    detail: format!("{other:?}"),
                }),
            }
        })
    }

    fn checkpoint<'a>(
        &'a self,
        addr: &'a str,
        shard: ShardId,
        epoch: u64,
    ) -> BoxFuture<'a, Result<u64, CallError>> {
        Box::pin(async move {
            match self
                .call(addr, DataRequest::Checkpoint { shard, epoch })
                .await?
            {
                DataResponse::Checkpointed { seq } => Ok(seq),
                other => Err(CallError::Unexpected {
                    addr: addr.to_string(),
                    detail: format!("{other:?}"),
                }),
            }
        })
    }

    fn hand_off<'a>(
        &'a self,
        addr: &'a str,
        shard: ShardId,
        epoch: u64,
        timeout_ms: u64,
    ) -> BoxFuture<'a, Result<u64, CallError>> {
        Box::pin(async move {
            let req = DataRequest::HandOff {
                shard,
                epoch,
                timeout_ms,
            };
            match self.call(addr, req).await? {
                DataResponse::HandedOff { seq } => Ok(seq),
                other => Err(CallError::Unexpected {
                    addr: addr.to_string(),
                    detail: format!("{other:?}"),
                }),
            }
        })
    }
}

impl MetaNode {
    /// Every record of `table` from this member's state machine; the caller has confirmed
    /// leadership.
    async fn table_records(&self, table: Table) -> Result<Vec<Record>, ApiError> {
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

    async fn read_nodes(&self) -> Result<Cluster, ApiError> {
        self.require_leader()?;
        self.leader_read_index(true).await?;
        let mut cluster = Cluster::default();
        for r in self.table_records(Table::Nodes).await? {
            if let Record::Node(n) = r {
                cluster.nodes.insert(n.id, n);
            }
        }
        Ok(cluster)
    }

    async fn read_cluster(&self) -> Result<Cluster, ApiError> {
        // One confirmation of leadership for all the reads: they see at least everything
        // committed before it.
        let mut cluster = self.read_nodes().await?;
        let key = Key::Setting(DATA_CLUSTER_SETTING.into());
        if let (Some(Record::Setting(s)), _) = self.read_sm(move |sm| sm.get(&key)).await? {
            let layout: DataCluster = serde_json::from_slice(&s.value).map_err(|e| {
                ApiError::Internal(format!(
                    "setting {DATA_CLUSTER_SETTING} does not parse: {e}"
                ))
            })?;
            cluster.layout = Some(layout);
        }
        if cluster.layout.is_none() {
            // No data plane: whatever the shard table holds belongs to no storage node and
            // is nobody's to repair or move. Reading it every pass cost a metadata-only
            // cluster's leader a table scan per second (10,000 records in `bench meta`).
            return Ok(cluster);
        }
        for r in self.table_records(Table::Shards).await? {
            if let Record::Shard(s) = r {
                cluster.shards.insert(s.id, s);
            }
        }
        for r in self.table_records(Table::Migrations).await? {
            if let Record::Migration(m) = r {
                cluster.migrations.push(m);
            }
        }
        let key = Key::Setting(STORM_GUARD_SETTING.into());
        if let (Some(Record::Setting(s)), _) = self.read_sm(move |sm| sm.get(&key)).await? {
            // Unreadable (written by a newer leader, say): not frozen. The guard only ever
            // holds moves back, and this leader's next policy round rewrites it.
            cluster.storm = serde_json::from_slice(&s.value).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "setting {STORM_GUARD_SETTING} does not parse");
                StormGuard::default()
            });
        }
        Ok(cluster)
    }
}

impl MetaStore for MetaNode {
    fn cluster(&self) -> BoxFuture<'_, Result<Cluster, ApiError>> {
        Box::pin(self.read_cluster())
    }

    fn nodes(&self) -> BoxFuture<'_, Result<Cluster, ApiError>> {
        Box::pin(self.read_nodes())
    }

    fn get(&self, key: Key) -> BoxFuture<'_, Result<Option<Record>, ApiError>> {
        Box::pin(self.leader_get(key))
    }

    fn propose(&self, txn: Txn) -> BoxFuture<'_, Result<TxnResult, ApiError>> {
        Box::pin(MetaNode::propose(self, txn))
    }
}

#[cfg(test)]
pub(crate) mod fake {
    //! An in-memory metadata store and scripted storage nodes, for the loops' unit tests.
    use super::*;
    use augur_proto::{CompareTarget, Op};
    use std::collections::{BTreeMap, HashMap};
    use std::sync::Mutex;

    /// Applies transactions to records in memory, stamping versions like the real store.
    #[derive(Default)]
    pub struct MemStore {
        pub inner: Mutex<(BTreeMap<Key, Record>, u64)>,
    }

    impl MemStore {
        /// A store holding `cluster`'s records.
        pub fn with(cluster: &Cluster) -> MemStore {
            let mut records = BTreeMap::new();
            let mut revision = 1;
            let all = cluster
                .nodes
                .values()
                .cloned()
                .map(Record::Node)
                .chain(cluster.shards.values().cloned().map(Record::Shard))
                .chain(cluster.migrations.iter().cloned().map(Record::Migration));
            for r in all {
                revision = revision.max(r.version());
                records.insert(r.key(), r);
            }
            if let Some(l) = cluster.layout {
                let s = augur_proto::Setting {
                    name: DATA_CLUSTER_SETTING.into(),
                    value: serde_json::to_vec(&l).unwrap(),
                    version: 1,
                };
                records.insert(Key::Setting(s.name.clone()), Record::Setting(s));
            }
            if cluster.storm != StormGuard::default() {
                let s = augur_proto::Setting {
                    name: STORM_GUARD_SETTING.into(),
                    value: serde_json::to_vec(&cluster.storm).unwrap(),
                    version: 1,
                };
                records.insert(Key::Setting(s.name.clone()), Record::Setting(s));
            }
            MemStore {
                inner: Mutex::new((records, revision)),
            }
        }

        /// Reads the cluster synchronously.
        pub fn read(&self) -> Cluster {
            let g = self.inner.lock().unwrap();
            let mut c = Cluster::default();
            for r in g.0.values() {
                match r {
                    Record::Node(n) => {
                        c.nodes.insert(n.id, n.clone());
                    }
                    Record::Shard(s) => {
                        c.shards.insert(s.id, s.clone());
                    }
                    Record::Migration(m) => c.migrations.push(m.clone()),
                    Record::Setting(s) if s.name == DATA_CLUSTER_SETTING => {
                        c.layout = serde_json::from_slice(&s.value).ok()
                    }
                    Record::Setting(s) if s.name == STORM_GUARD_SETTING => {
                        c.storm = serde_json::from_slice(&s.value).unwrap_or_default()
                    }
                    Record::Setting(_) => {}
                }
            }
            c
        }

        /// Replaces one record outside any transaction (a test's "meanwhile").
        pub fn put(&self, mut r: Record) {
            let mut g = self.inner.lock().unwrap();
            g.1 += 1;
            r.set_version(g.1);
            g.0.insert(r.key(), r);
        }
    }

    impl MetaStore for MemStore {
        fn cluster(&self) -> BoxFuture<'_, Result<Cluster, ApiError>> {
            Box::pin(async move { Ok(self.read()) })
        }

        fn nodes(&self) -> BoxFuture<'_, Result<Cluster, ApiError>> {
            Box::pin(async move {
                Ok(Cluster {
                    nodes: self.read().nodes,
                    ..Default::default()
                })
            })
        }

        fn get(&self, key: Key) -> BoxFuture<'_, Result<Option<Record>, ApiError>> {
            Box::pin(async move { Ok(self.inner.lock().unwrap().0.get(&key).cloned()) })
        }

        fn propose(&self, txn: Txn) -> BoxFuture<'_, Result<TxnResult, ApiError>> {
            Box::pin(async move {
                txn.validate()
                    .map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
                let mut g = self.inner.lock().unwrap();
                let current: Vec<(Key, Option<u64>)> = txn
                    .compares
                    .iter()
                    .map(|c| (c.key.clone(), g.0.get(&c.key).map(Record::version)))
                    .collect();
                let holds =
                    txn.compares
                        .iter()
                        .zip(&current)
                        .all(|(c, (_, v))| match (c.target, v) {
                            (CompareTarget::VersionEq(w), Some(h)) => w == *h,
                            (CompareTarget::VersionEq(_), None) => false,
                            (CompareTarget::Exists, v) => v.is_some(),
                            (CompareTarget::Absent, v) => v.is_none(),
                        });
                g.1 += 1;
                let revision = g.1;
                if !holds {
                    return Ok(TxnResult {
                        succeeded: false,
                        revision,
                        current,
                    });
                }
                for op in txn.ops {
                    match op {
                        Op::Put(mut r) => {
                            r.set_version(revision);
                            g.0.insert(r.key(), r);
                        }
                        Op::Delete(k) => {
                            g.0.remove(&k);
                        }
                    }
                }
                Ok(TxnResult {
                    succeeded: true,
                    revision,
                    current: vec![],
                })
            })
        }
    }

    /// Storage nodes that answer from a script: reports per address, checkpoint sequences.
    #[derive(Default)]
    pub struct Scripted {
        pub reports: Mutex<HashMap<String, NodeReport>>,
        pub checkpoints: Mutex<Vec<(String, ShardId, u64)>>,
        pub next_seq: Mutex<u64>,
        /// Hand-offs asked for: (address, shard, epoch).
        pub hand_offs: Mutex<Vec<(String, ShardId, u64)>>,
        /// Addresses whose hand-offs fail.
        pub refuse_hand_off: Mutex<Vec<String>>,
    }

    impl StorageCalls for Scripted {
        fn probe<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, Result<NodeReport, CallError>> {
            Box::pin(async move {
                self.reports
                    .lock()
                    .unwrap()
                    .get(addr)
                    .cloned()
                    .ok_or_else(|| CallError::Unreachable {
                        addr: addr.into(),
                        detail: "scripted: down".into(),
                    })
            })
        }

        fn checkpoint<'a>(
            &'a self,
            addr: &'a str,
            shard: ShardId,
            epoch: u64,
        ) -> BoxFuture<'a, Result<u64, CallError>> {
            Box::pin(async move {
                self.checkpoints
                    .lock()
                    .unwrap()
                    .push((addr.to_string(), shard, epoch));
                let mut seq = self.next_seq.lock().unwrap();
                *seq += 1;
                Ok(*seq)
            })
        }

        fn hand_off<'a>(
            &'a self,
            addr: &'a str,
            shard: ShardId,
            epoch: u64,
            _timeout_ms: u64,
        ) -> BoxFuture<'a, Result<u64, CallError>> {
            Box::pin(async move {
                if self
                    .refuse_hand_off
                    .lock()
                    .unwrap()
                    .iter()
                    .any(|a| a == addr)
                {
                    return Err(CallError::Unreachable {
                        addr: addr.into(),
                        detail: "scripted: hand-off refused".into(),
                    });
                }
                self.hand_offs
                    .lock()
                    .unwrap()
                    .push((addr.to_string(), shard, epoch));
                Ok(*self.next_seq.lock().unwrap())
            })
        }
    }
}
