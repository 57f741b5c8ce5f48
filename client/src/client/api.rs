//! The typed metadata API: transactions and CAS, reads and listings, watches, status,
//! membership changes and bootstrap, each one request turned into a typed result.
//!
//! Apart from the parent module because that is where requests are routed, retried and
//! given up on; the calls here only build a request, say how it may be routed (to the
//! leader, to any member, or to one named endpoint) and decode the answer.

use super::{unexpected, CasOutcome, Client, Retry};
use crate::error::Error;
use crate::watch::WatchStream;
use augur_proto::wire::{ApiError, ClusterStatus, MemberIdentity, MemberInfo, MAX_LIST_LIMIT};
use augur_proto::{
    Consistency, Key, MemberId, Node, Record, Request, Response, Shard, ShardId, Table, Txn,
    TxnResult,
};
use std::time::Duration;
use tokio::time::Instant;

impl Client {
    /// Applies a transaction. A failed compare is not an error: see [`TxnResult::succeeded`].
    pub async fn txn(&self, txn: Txn) -> Result<TxnResult, Error> {
        txn.validate()
            .map_err(|e| Error::Api(ApiError::InvalidArgument(e.to_string())))?;
        match self.to_leader(&Request::Txn(txn), Retry::UntilSent).await? {
            Response::Txn(r) => Ok(r),
            other => Err(unexpected("txn", other)),
        }
    }

    /// Puts `record` if the stored record is at `expected_version` (None: only if absent).
    /// A CAS on a record that does not exist fails with [`Error::NotFound`].
    pub async fn cas(
        &self,
        record: Record,
        expected_version: Option<u64>,
    ) -> Result<CasOutcome, Error> {
        let key = record.key();
        let r = self.txn(Txn::cas(record, expected_version)).await?;
        if r.succeeded {
            return Ok(CasOutcome::Committed {
                version: r.revision,
            });
        }
        match r.current.first().and_then(|(_, v)| *v) {
            Some(current) => Ok(CasOutcome::Conflict { current }),
            None => Err(Error::NotFound(key)),
        }
    }

    /// Reads one record, linearizably.
    pub async fn get(&self, key: &Key) -> Result<Option<Record>, Error> {
        Ok(self.get_with(key, Consistency::Linearizable).await?.0)
    }

    /// Reads one record with the given consistency; also returns the revision read at.
    pub async fn get_with(
        &self,
        key: &Key,
        consistency: Consistency,
    ) -> Result<(Option<Record>, u64), Error> {
        let req = get_request(key, consistency)?;
        match self.read(&req, consistency).await? {
            Response::Get { record, revision } => Ok((record, revision)),
            other => Err(unexpected("get", other)),
        }
    }

    /// Reads one record on exactly `endpoint`, in one attempt bounded by the request timeout:
    /// no redirect to the leader and no retry. Any member serves linearizable reads (a
    /// follower confirms with the leader first), so this is how to check what each node
    /// answers, e.g. after a fault-injection run, or to spread reads over the members.
    pub async fn get_on(
        &self,
        endpoint: &str,
        key: &Key,
        consistency: Consistency,
    ) -> Result<(Option<Record>, u64), Error> {
        let req = get_request(key, consistency)?;
        let resp = self
            .inner
            .transport
            .call(endpoint, &req, self.inner.cfg.request_timeout)
            .await
            .map_err(|e| Error::Unavailable(format!("{endpoint}: {e}")))?;
        match resp {
            Response::Get { record, revision } => Ok((record, revision)),
            Response::Error(e) => Err(Error::Api(e)),
            other => Err(unexpected("get", other)),
        }
    }

    /// Reads one page of a table after `start_after`.
    pub async fn list_page(
        &self,
        table: Table,
        start_after: Option<Key>,
        limit: u32,
        consistency: Consistency,
    ) -> Result<(Vec<Record>, bool, u64), Error> {
        let req = Request::List {
            table,
            start_after,
            limit: limit.min(MAX_LIST_LIMIT),
            consistency,
        };
        match self.read(&req, consistency).await? {
            Response::List {
                records,
                more,
                revision,
            } => Ok((records, more, revision)),
            other => Err(unexpected("list", other)),
        }
    }

    /// Reads a whole table page by page; returns the records and the revision of the first
    /// page. Pages are read at possibly different revisions: for an exact view, list and
    /// then watch from the returned revision + 1.
    pub async fn list(
        &self,
        table: Table,
        consistency: Consistency,
    ) -> Result<(Vec<Record>, u64), Error> {
        let mut all = Vec::new();
        let mut start_after = None;
        let mut first_revision = None;
        loop {
            let (records, more, revision) = self
                .list_page(table, start_after.clone(), MAX_LIST_LIMIT, consistency)
                .await?;
            first_revision.get_or_insert(revision);
            // Each page must start past the last one: a server that repeated a page would
            // otherwise keep this loop going for ever.
            let keys_rise = records.windows(2).all(|w| w[0].key() < w[1].key());
            let past = match (&start_after, records.first()) {
                (Some(prev), Some(first)) => first.key() > *prev,
                _ => true,
            };
            if !keys_rise || !past {
                return Err(Error::Unexpected {
                    request: "list",
                    response: format!(
                        "a {table:?} page whose keys do not rise past {start_after:?}"
                    ),
                });
            }
            start_after = records.last().map(Record::key);
            all.extend(records);
            if !more || start_after.is_none() {
                break;
            }
        }
        Ok((all, first_revision.unwrap_or(0)))
    }

    /// Streams changes to `tables` (empty: all) from `from_revision` on (0: from now).
    pub fn watch(&self, tables: Vec<Table>, from_revision: u64) -> WatchStream {
        WatchStream::start(self.clone(), tables, from_revision)
    }

    /// A node's view of the cluster: `endpoint`, or whichever answers first.
    pub async fn status(&self, endpoint: Option<&str>) -> Result<ClusterStatus, Error> {
        let resp = match endpoint {
            Some(addr) => match self
                .inner
                .transport
                .call(addr, &Request::Status, self.inner.cfg.attempt_timeout)
                .await
            {
                Ok(r) => r,
                Err(e) => return Err(Error::Unavailable(e.to_string())),
            },
            None => self.to_any(&Request::Status).await?,
        };
        match resp {
            Response::Status(s) => Ok(s),
            Response::Error(e) => Err(Error::Api(e)),
            other => Err(unexpected("status", other)),
        }
    }

    /// The Raft membership, from the leader.
    pub async fn members(&self) -> Result<Vec<MemberInfo>, Error> {
        match self.to_leader(&Request::Members, Retry::Idempotent).await? {
            Response::Members(m) => Ok(m),
            other => Err(unexpected("members", other)),
        }
    }

    async fn admin(&self, req: Request, what: &'static str) -> Result<(), Error> {
        // Membership changes are idempotent at the server (adding a present learner or
        // removing an absent member is a no-op), so they may be resent.
        match self.to_leader(&req, Retry::Idempotent).await? {
            Response::Done => Ok(()),
            other => Err(unexpected(what, other)),
        }
    }

    /// Adds a metadata node as a learner.
    pub async fn add_learner(&self, id: MemberId, addr: String) -> Result<(), Error> {
        self.admin(Request::AddLearner { id, addr }, "add-learner")
            .await
    }

    /// Promotes a learner to voter.
    pub async fn promote(&self, id: MemberId) -> Result<(), Error> {
        self.admin(Request::Promote { id }, "promote").await
    }

    /// Removes a member.
    pub async fn remove_member(&self, id: MemberId) -> Result<(), Error> {
        self.admin(Request::RemoveMember { id }, "remove-member")
            .await
    }

    /// Hands leadership to `to`.
    pub async fn transfer_leader(&self, to: MemberId) -> Result<(), Error> {
        self.admin(Request::TransferLeader { to }, "transfer-leader")
            .await
    }

    /// What the member at `endpoint` says about itself: id, incarnation, cluster.
    pub async fn identity(&self, endpoint: &str) -> Result<MemberIdentity, Error> {
        match self
            .inner
            .transport
            .call(endpoint, &Request::Identity, self.inner.cfg.attempt_timeout)
            .await
            .map_err(|e| Error::Unavailable(e.to_string()))?
        {
            Response::Identity(i) => Ok(i),
            Response::Error(e) => Err(Error::Api(e)),
            other => Err(unexpected("identity", other)),
        }
    }

    /// Founds a new cluster through the member at `endpoint`, from its `initial_members`:
    /// the one-time act that creates a cluster (an operator certificate is needed). Retried
    /// while the founding members are still starting, until `timeout`; asking again after it
    /// succeeded is a no-op, so an unknown outcome can be resolved by asking again.
    pub async fn bootstrap(&self, endpoint: &str, timeout: Duration) -> Result<(), Error> {
        let deadline = crate::client::deadline_after(timeout);
        loop {
            let attempt = self
                .inner
                .transport
                .call(
                    endpoint,
                    &Request::Bootstrap,
                    self.inner.cfg.request_timeout,
                )
                .await;
            let why = match attempt {
                Ok(Response::Done) => return Ok(()),
                Ok(Response::Error(ApiError::Unavailable(why))) => why,
                Ok(Response::Error(e)) => return Err(Error::Api(e)),
                Ok(other) => return Err(unexpected("bootstrap", other)),
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(Error::Unavailable(why));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Reads a shard record.
    pub async fn get_shard(&self, id: ShardId) -> Result<Option<Shard>, Error> {
        match self.get(&Key::Shard(id)).await? {
            Some(Record::Shard(s)) => Ok(Some(s)),
            None => Ok(None),
            Some(other) => Err(unexpected(
                "get shard",
                Response::Get {
                    record: Some(other),
                    revision: 0,
                },
            )),
        }
    }

    /// Lists storage nodes.
    pub async fn list_nodes(&self) -> Result<Vec<Node>, Error> {
        let (records, _) = self.list(Table::Nodes, Consistency::Linearizable).await?;
        Ok(records
            .into_iter()
            .filter_map(|r| match r {
                Record::Node(n) => Some(n),
                _ => None,
            })
            .collect())
    }

    /// Lists every shard record, by id (a linearizable read of the whole table).
    pub async fn list_shards(&self) -> Result<std::collections::BTreeMap<ShardId, Shard>, Error> {
        let (records, _) = self.list(Table::Shards, Consistency::Linearizable).await?;
        Ok(records
            .into_iter()
            .filter_map(|r| match r {
                Record::Shard(s) => Some((s.id, s)),
                _ => None,
            })
            .collect())
    }

    /// Lists every migration record (in flight and the finished ones kept per shard).
    pub async fn list_migrations(&self) -> Result<Vec<augur_proto::Migration>, Error> {
        let (records, _) = self
            .list(Table::Migrations, Consistency::Linearizable)
            .await?;
        Ok(records
            .into_iter()
            .filter_map(|r| match r {
                Record::Migration(m) => Some(m),
                _ => None,
            })
            .collect())
    }
}

/// A validated get request: an invalid key never leaves the process.
fn get_request(key: &Key, consistency: Consistency) -> Result<Request, Error> {
    key.validate()
        .map_err(|e| Error::Api(ApiError::InvalidArgument(e.to_string())))?;
    Ok(Request::Get {
        key: key.clone(),
        consistency,
    })
}
