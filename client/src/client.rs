//! The client: leader tracking, honest retries and the typed API.
//!
//! Writes go to the leader. A follower answers with a typed `NotLeader` hint and nothing
//! applied, so the client follows the hint and resends. Once a write may have reached a
//! leader (sent, then the connection dropped or timed out, or the leader lost office before
//! answering), the client stops and returns [`Error::Indeterminate`]: resending a CAS that
//! already applied would make it fail against its own write, and resending a blind put could
//! overwrite a newer one. Reads have no effect, so they are retried on any node until the
//! deadline.

use crate::error::Error;
use crate::transport::{TlsFiles, Transport};
use crate::watch::WatchStream;
use crate::ClusterFile;
use augur_proto::wire::{ApiError, ClusterStatus, MemberIdentity, MemberInfo, MAX_LIST_LIMIT};
use augur_proto::{
    Consistency, Key, MemberId, Node, Record, Request, Response, Shard, ShardId, Table, Txn,
    TxnResult,
};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// How often a client without a leader hint may ask who leads ([`Client::learn_leader`]).
const LEARN_LEADER_EVERY: Duration = Duration::from_millis(500);
/// How long that question may take before the read goes ahead without the answer.
const LEARN_LEADER_TIMEOUT: Duration = Duration::from_secs(1);

/// How to reach a cluster.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Metadata node addresses; any subset that includes one live node will do.
    pub endpoints: Vec<String>,
    /// Client certificate files.
    pub tls: TlsFiles,
    /// Deadline for one call, including leader discovery and retries. Default 5 s. No
    /// attempt starts after it; a write already sent is still given its whole
    /// `attempt_timeout` to be answered, so a write call may end up to that much later.
    pub request_timeout: Duration,
    /// Deadline for one attempt on one node. Default 1 s: far above a healthy node's p999
    /// (tens of ms), and the bound on how long a client keeps talking to a leader that died
    /// before it tries the others.
    pub attempt_timeout: Duration,
    /// Deadline for dialling a node. Default 1 s.
    pub connect_timeout: Duration,
}

impl ClientConfig {
    /// Defaults for the given endpoints and certificates.
    pub fn new(endpoints: Vec<String>, tls: TlsFiles) -> Self {
        ClientConfig {
            endpoints,
            tls,
            request_timeout: Duration::from_secs(5),
            attempt_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
        }
    }

    /// From a cluster file written by `augur local up` or by hand.
    pub fn from_cluster_file(path: &std::path::Path) -> Result<Self, Error> {
        let f = ClusterFile::load(path)?;
        Ok(Self::new(f.endpoints, f.tls))
    }
}

/// The outcome of a compare-and-set that reached the state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CasOutcome {
    /// Applied; the record's new version.
    Committed {
        /// New version (the log index of the write).
        version: u64,
    },
    /// Someone else changed the record first; its current version.
    Conflict {
        /// The version now stored.
        current: u64,
    },
}

/// A handle to a metadata cluster. Cheap to clone; clones share connections.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) transport: Transport,
    pub(crate) endpoints: Vec<String>,
    leader: Mutex<Option<String>>,
    /// When this client last asked a member who leads (see [`Client::learn_leader`]).
    asked_leader: Mutex<Option<Instant>>,
    next: AtomicUsize,
    pub(crate) cfg: ClientConfig,
}

/// Whether a request may be sent again after it might have been delivered.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Reads and status: no effect, resend freely.
    Idempotent,
    /// Writes: resend only while the request certainly did not arrive.
    UntilSent,
}

impl Client {
    /// Creates a client; connections are made on first use.
    pub fn new(cfg: ClientConfig) -> Result<Client, Error> {
        if cfg.endpoints.is_empty() {
            return Err(Error::Config("no endpoints given".into()));
        }
        let transport = Transport::client(&cfg.tls, cfg.connect_timeout)?;
        Ok(Client {
            inner: Arc::new(Inner {
                transport,
                endpoints: cfg.endpoints.clone(),
                leader: Mutex::new(None),
                asked_leader: Mutex::new(None),
                next: AtomicUsize::new(0),
                cfg,
            }),
        })
    }

    /// The configured endpoints.
    pub fn endpoints(&self) -> &[String] {
        &self.inner.endpoints
    }

    pub(crate) fn next_endpoint(&self) -> String {
        let i = self.inner.next.fetch_add(1, Ordering::Relaxed);
        self.inner.endpoints[i % self.inner.endpoints.len()].clone()
    }

    /// The next endpoint to try when no leader is known. One we are not connected to is
    /// replaced by whichever endpoint answers first when all are dialled at once, so a dead
    /// member at the head of the list costs nothing (a fresh `augurctl` process would
    /// otherwise wait out a connect timeout on it for every command).
    ///
    /// `failed` is the endpoint this call's last attempt failed on. It is left out of the race
    /// while there is another endpoint: being connected already, it would win every race, and
    /// the retry would go straight back to the member that just stalled or refused. It is
    /// still the answer when no other endpoint can be reached.
    pub(crate) async fn pick_endpoint(&self, failed: Option<&str>) -> String {
        let ep = self.next_endpoint();
        let others: Vec<String> = self
            .inner
            .endpoints
            .iter()
            .filter(|e| Some(e.as_str()) != failed)
            .cloned()
            .collect();
        if others.is_empty() {
            return ep;
        }
        if Some(ep.as_str()) != failed && self.inner.transport.is_connected(&ep) {
            return ep;
        }
        match self.inner.transport.connect_any(&others).await {
            Ok(live) => live,
            Err(_) => failed.map_or(ep, str::to_string),
        }
    }

    /// Asks `endpoint` who leads and keeps the answer as the leader hint, at most once per
    /// [`LEARN_LEADER_EVERY`] for the whole client. Without it a client that only reads never
    /// learns the leader (a read names no leader, since any member serves it) and spreads its
    /// reads over the members in turn: each read a follower serves costs it a read-index call
    /// to the leader on top, and on two cores a read load ran at half the rate it reaches on
    /// the leader alone. A stale answer costs nothing but that hop: a write corrects the hint
    /// with `NotLeader`, and any member serves a read correctly.
    async fn learn_leader(&self, endpoint: &str) -> Option<String> {
        {
            let mut asked = self.inner.asked_leader.lock().ok()?;
            if asked.is_some_and(|t| t.elapsed() < LEARN_LEADER_EVERY) {
                return None;
            }
            *asked = Some(Instant::now());
        }
        let resp = self
            .inner
            .transport
            .call(
                endpoint,
                &Request::Status,
                self.inner.cfg.attempt_timeout.min(LEARN_LEADER_TIMEOUT),
            )
            .await
            .ok()?;
        let Response::Status(status) = resp else {
            return None;
        };
        let addr = status.leader?.addr;
        self.set_leader(Some(addr.clone()));
        Some(addr)
    }

    fn leader_hint(&self) -> Option<String> {
        self.inner.leader.lock().ok().and_then(|l| l.clone())
    }

    fn set_leader(&self, addr: Option<String>) {
        if let Ok(mut l) = self.inner.leader.lock() {
            *l = addr;
        }
    }

    /// Sends `req` to the leader, following hints, within the request deadline.
    pub(crate) async fn to_leader(&self, req: &Request, retry: Retry) -> Result<Response, Error> {
        self.to_leader_within(
            req,
            retry,
            self.inner.cfg.request_timeout,
            self.inner.cfg.attempt_timeout,
        )
        .await
    }

    /// [`Client::to_leader`] with its own deadlines, for requests whose work on the leader
    /// takes longer than an ordinary attempt (creating every shard record of the data plane).
    pub(crate) async fn to_leader_within(
        &self,
        req: &Request,
        retry: Retry,
        request_timeout: Duration,
        attempt_timeout: Duration,
    ) -> Result<Response, Error> {
        let deadline = Instant::now() + request_timeout;
        let mut backoff = Duration::from_millis(10);
        let mut last = String::from("no attempt made");
        let mut failed: Option<String> = None;
        loop {
            if Instant::now() >= deadline {
                return Err(Error::Unavailable(last));
            }
            let target = match self.leader_hint() {
                Some(t) => t,
                None => {
                    let picked = self.pick_endpoint(failed.as_deref()).await;
                    match retry {
                        // A write learns the leader from a `NotLeader` answer; a read would
                        // not (any member serves it), so it asks first.
                        Retry::Idempotent => self.learn_leader(&picked).await.unwrap_or(picked),
                        Retry::UntilSent => picked,
                    }
                }
            };
            let remaining = deadline.saturating_duration_since(Instant::now());
            // The deadline decides whether an attempt starts, not how long a write's attempt
            // may last. Cut to the few milliseconds left, a write times out while the member
            // is still answering, and one the cluster refused (nothing applied) or would have
            // acknowledged is reported as an unknown outcome. A read loses nothing by being
            // cut short, so reads keep to the deadline.
            let attempt = match retry {
                Retry::UntilSent => attempt_timeout,
                Retry::Idempotent => attempt_timeout.min(remaining),
            };
            match self.inner.transport.call(&target, req, attempt).await {
                Ok(Response::Error(ApiError::NotLeader { leader })) => {
                    last = format!("{target} is not the leader");
                    match leader {
                        Some(MemberInfo { addr, .. }) if addr != target => {
                            self.set_leader(Some(addr));
                            continue;
                        }
                        _ => self.set_leader(None),
                    }
                }
                Ok(Response::Error(ApiError::Unavailable(why))) => {
                    last = format!("{target}: {why}");
                    self.set_leader(None);
                }
                Ok(Response::Error(ApiError::Indeterminate(why))) => {
                    self.set_leader(None);
                    if retry == Retry::UntilSent {
                        return Err(Error::Indeterminate(format!("{target}: {why}")));
                    }
                    last = format!("{target}: {why}");
                }
                Ok(Response::Error(e)) => return Err(Error::Api(e)),
                Ok(resp) => {
                    // Only answers a leader alone gives may name the leader: any member
                    // serves reads, so a read answered proves nothing.
                    if leader_only(&resp) {
                        self.set_leader(Some(target));
                    }
                    return Ok(resp);
                }
                Err(e) => {
                    self.set_leader(None);
                    if retry == Retry::UntilSent && !e.certainly_not_sent() {
                        return Err(Error::Indeterminate(e.to_string()));
                    }
                    last = e.to_string();
                }
            }
            failed = Some(target);
            tokio::time::sleep(backoff.min(deadline.saturating_duration_since(Instant::now())))
                .await;
            backoff = (backoff * 2).min(Duration::from_millis(200));
        }
    }

    /// Sends `req` to any node that answers (serializable reads, status).
    async fn to_any(&self, req: &Request) -> Result<Response, Error> {
        let deadline = Instant::now() + self.inner.cfg.request_timeout;
        let mut last = String::from("no attempt made");
        let mut failed: Option<String> = None;
        loop {
            if Instant::now() >= deadline {
                return Err(Error::Unavailable(last));
            }
            let target = self.pick_endpoint(failed.as_deref()).await;
            match self
                .inner
                .transport
                .call(&target, req, self.inner.cfg.attempt_timeout)
                .await
            {
                Ok(Response::Error(ApiError::Unavailable(why))) => {
                    last = format!("{target}: {why}")
                }
                Ok(Response::Error(e)) => return Err(Error::Api(e)),
                Ok(resp) => return Ok(resp),
                Err(e) => last = e.to_string(),
            }
            failed = Some(target);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn read(&self, req: &Request, consistency: Consistency) -> Result<Response, Error> {
        match consistency {
            Consistency::Linearizable => self.to_leader(req, Retry::Idempotent).await,
            Consistency::Serializable => self.to_any(req).await,
        }
    }

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
        let deadline = Instant::now() + timeout;
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

    /// Closes connections gracefully.
    pub async fn close(&self) {
        self.inner.transport.close().await;
    }
}

/// Whether only the leader gives this answer (so the answering member is the leader).
fn leader_only(resp: &Response) -> bool {
    matches!(
        resp,
        Response::Txn(_) | Response::Members(_) | Response::Done
    )
}

pub(crate) fn unexpected(request: &'static str, response: Response) -> Error {
    Error::Unexpected {
        request,
        response: format!("{response:?}"),
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
