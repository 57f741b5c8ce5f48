//! The data API: reads and writes of keys, routed to the storage node that serves them.
//!
//! A key hashes to a shard ([`DataCluster::shard_of`], fixed when the data plane is
//! created); the shard's record names its replicas, primary first; the primary's node record
//! gives its address. [`DataClient`] keeps both tables in a [`ShardCache`], so routing costs
//! no metadata read, and sends each request to the primary with the shard epoch it believes
//! in.
//!
//! When the answer says the client's view is out of date (`Redirect`, `StaleEpoch`,
//! `UnknownShard`), the primary cannot serve right now (`Unavailable`), or the node cannot
//! be reached, the client drops what may be stale (the shard record; the node record too
//! when the node was unreachable), re-reads it, backs off briefly and tries again, all
//! within the request deadline. The first answer naming a newer configuration is followed
//! without the backoff: every epoch change (a move's commit, a hand-off) meets each
//! client's next request to the shard, and the re-read record is usually right. `Behind` (the node has not learnt the client's newer epoch
//! yet) is mostly waited out, since the client's record is the newer one; it counts as a
//! refusal without news, so a node that never catches up (its watch stalled) does not keep
//! the client from a failover the metadata has since made. A storage node never elects itself: every change
//! of primary is a metadata transaction, so the metadata record is always at least as new
//! as any epoch a node can name, and re-reading it is how a redirect is followed.
//! A refusal drops only the record its own request was routed by (not one another request
//! re-read since), and refusals that name no newer configuration (`Unavailable`, an
//! unreachable node) drop a shard's record at most every 100 ms: a failover refuses every
//! request in flight for seconds, and each refusal re-reading the shard had turned one
//! client into hundreds of metadata reads a second.
//!
//! Every write carries a [`RequestId`]: a random client id chosen once per `DataClient` and a
//! number per write. A storage node applies a request id once and answers a resend with the
//! first outcome, so a write is resent with the same id after any failure (a lost answer, a
//! timeout, a primary that changed, a node's own failure such as a disk error) until the
//! deadline. Only when the deadline passes after an attempt that may have applied is the
//! result [`Error::Indeterminate`]; a write is never resent under a new id. The refusals
//! that end a call at once are the ones that say the request itself is wrong
//! (`InvalidArgument`, `PermissionDenied`, `Fenced`).

mod admin;
mod scan;

pub use scan::PrefixScan;

use crate::cache::ShardCache;
use crate::client::Client;
use crate::error::Error;
use crate::transport::{Transport, TransportError, STORAGE_SERVER_NAME};
use augur_proto::data::{
    check_key, DataCluster, DataError, DataRequest, DataResponse, RequestId, Versioned, WriteOp,
    WriteOutcome, MAX_KEY, MAX_SCAN_LIMIT,
};
use augur_proto::{Node, NodeId, Shard, ShardId};
use futures::FutureExt;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Deadlines and limits of a [`DataClient`].
#[derive(Debug, Clone)]
pub struct DataConfig {
    /// Deadline for one call, including refreshes, backoff and resends. Default 20 s: longer
    /// than the storage nodes' failover with the default control settings (a dead
    /// primary's lease, 6 s, and grace, 8 s, then a promotion: at most 15 s) and a failed
    /// hand-off's pause and re-election (5 s and a write), so a call that meets an
    /// unpredicted node death or a stuck hand-off waits for the new primary and succeeds
    /// instead of failing, or ending `Indeterminate`. A caller that prefers to fail fast
    /// sets it lower. No attempt starts after it, and a read ends by it. A write already
    /// started is still given its whole `attempt_timeout` to be answered (cut short, an
    /// answer on its way would become an unknown outcome), after up to the transport's
    /// connect timeout for each of dialling the node, opening a stream and sending the
    /// request, so a write call may end up to `attempt_timeout` plus three connect
    /// timeouts later (4 s at the defaults).
    pub request_timeout: Duration,
    /// Deadline for one attempt on one storage node. Default 1 s.
    pub attempt_timeout: Duration,
    /// First pause between attempts; doubled after each failure up to `max_backoff`.
    /// Default 5 ms: a redirect is usually followed at once.
    pub min_backoff: Duration,
    /// Longest pause between attempts. Default 200 ms, well inside the lease and grace
    /// periods a failover takes.
    pub max_backoff: Duration,
    /// Shards a prefix scan asks at once. Default 16.
    pub scan_concurrency: usize,
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            request_timeout: Duration::from_secs(20),
            attempt_timeout: Duration::from_secs(1),
            min_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(200),
            scan_concurrency: 16,
        }
    }
}

/// One page of a scan: items in key order, and whether more follow the last one.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScanPage {
    /// Keys and their values, in key order.
    pub items: Vec<(Vec<u8>, Versioned)>,
    /// Whether more items follow the last one: resume after its key.
    pub more: bool,
}

/// A handle to the data plane. Cheap to clone; clones share the cache, the connections and
/// the request-id sequence.
#[derive(Clone)]
pub struct DataClient {
    inner: Arc<Inner>,
}

struct Inner {
    layout: DataCluster,
    cache: ShardCache,
    /// The metadata client's endpoint, with a pool of its own verifying storage servers.
    transport: Transport,
    /// Names this client in request ids; random, so two clients never share ids.
    client_id: u128,
    /// The last write number handed out.
    seq: AtomicU64,
    cfg: DataConfig,
    /// When this client last dropped a shard's or a node's record after a refusal that does
    /// not name a newer configuration ([`DataClient::may_reread`]).
    rereads: std::sync::Mutex<Rereads>,
}

/// The least time between two re-reads of one shard's (or node's) record that a refusal
/// *without* news (`Unavailable`, an unreachable node) causes. Such refusals come at an unchanged epoch,
/// from every request in flight, for as long as a failover or a reconciliation lasts, and
/// the records they would re-read arrive by the cache's watch anyway: the re-read only
/// covers a watch that lags. A redirect or a stale epoch (news of a newer configuration) is
/// always followed at once.
const REREAD_EVERY: Duration = Duration::from_millis(100);

/// Per record, when a refusal without news last dropped it ([`REREAD_EVERY`]).
#[derive(Default)]
struct Rereads {
    shards: HashMap<ShardId, Instant>,
    nodes: HashMap<NodeId, Instant>,
}

/// Whether `key`'s record may be dropped now, noting it if so.
fn allow<K: std::hash::Hash + Eq>(last: &mut HashMap<K, Instant>, key: K) -> bool {
    let now = Instant::now();
    match last.get(&key) {
        Some(at) if now.saturating_duration_since(*at) < REREAD_EVERY => false,
        _ => {
            last.insert(key, now);
            true
        }
    }
}

/// Where to send a shard's requests now.
struct Route {
    epoch: u64,
    addr: String,
    /// The cached records the route was read from: a refusal drops exactly these
    /// ([`ShardCache::forget_shard`]).
    shard: Arc<Shard>,
    node: Arc<Node>,
}

/// What one attempt showed.
enum Outcome {
    /// Answered.
    Done(DataResponse),
    /// Try again after backing off, first dropping what may be out of date.
    Again {
        why: String,
        refresh: Refresh,
        /// The answer named a newer configuration: the re-read record is worth trying at
        /// once, without the backoff (the first time; a repeat backs off).
        at_once: bool,
    },
    /// Give up with this error (unless an earlier attempt of a write may have applied).
    Fail(Error),
}

/// What an attempt's failure says may be out of date in the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refresh {
    /// Nothing: the same route is right, just not ready.
    Nothing,
    /// The shard's record (epoch, primary).
    Shard,
    /// The shard's record and its primary's node record (the node may have moved).
    ShardAndNode,
}

/// A read goes anywhere as often as needed; a write is resent only under its id.
#[derive(Clone, Copy)]
enum Kind {
    Read,
    Write(RequestId),
}

impl DataClient {
    /// A data client with [`DataConfig`]'s default deadlines (only the attempt timeout is
    /// `meta`'s), reading the layout through `meta` and following the shard and node
    /// tables. Fails with [`Error::NoDataPlane`] before the data plane is created.
    ///
    /// Why not `meta`'s request deadline too: a metadata call waits out a leader election
    /// (a second or two), a data call a storage node's failover (up to 15 s), and the
    /// metadata deadline would turn every unpredicted primary death into failed writes.
    pub async fn new(meta: Client) -> Result<DataClient, Error> {
        let cfg = DataConfig {
            attempt_timeout: meta.inner.cfg.attempt_timeout,
            ..DataConfig::default()
        };
        Self::with_config(meta, cfg).await
    }

    /// [`DataClient::new`] with explicit deadlines.
    pub async fn with_config(meta: Client, cfg: DataConfig) -> Result<DataClient, Error> {
        let layout = meta.data_layout().await?.ok_or(Error::NoDataPlane)?;
        let cache = ShardCache::start(meta.clone()).await?;
        let transport = meta.inner.transport.for_servers(STORAGE_SERVER_NAME);
        Ok(DataClient {
            inner: Arc::new(Inner {
                layout,
                cache,
                transport,
                client_id: rand::random(),
                seq: AtomicU64::new(0),
                cfg,
                rereads: Default::default(),
            }),
        })
    }

    /// The data plane's layout.
    pub fn layout(&self) -> DataCluster {
        self.inner.layout
    }

    /// The shard `key` belongs to.
    pub fn shard_of(&self, key: &[u8]) -> ShardId {
        self.inner.layout.shard_of(key)
    }

    /// The cache this client routes by (shards and nodes).
    pub fn cache(&self) -> &ShardCache {
        &self.inner.cache
    }

    /// The random id this client's writes carry.
    pub fn client_id(&self) -> u128 {
        self.inner.client_id
    }

    /// A fresh request id for [`DataClient::write_as`].
    pub fn next_request_id(&self) -> RequestId {
        RequestId {
            client: self.inner.client_id,
            seq: self.inner.seq.fetch_add(1, Ordering::Relaxed) + 1,
        }
    }

    /// Reads a key at its shard's primary: the committed value, or `None` if absent.
    pub async fn get(&self, key: &[u8]) -> Result<Option<Versioned>, Error> {
        check_key(key).map_err(Error::Data)?;
        let shard = self.shard_of(key);
        let resp = self
            .send(shard, Kind::Read, |epoch| DataRequest::Get {
                shard,
                epoch,
                key: key.to_vec(),
            })
            .await?;
        match resp {
            DataResponse::Value(v) => Ok(v),
            other => Err(unexpected("get", other)),
        }
    }

    /// Sets a key; returns its new version.
    pub async fn put(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
    ) -> Result<u64, Error> {
        let op = WriteOp::Put {
            key: key.into(),
            value: value.into(),
        };
        applied(self.write(op).await?)
    }

    /// Removes a key (a new version even if it was absent); returns that version.
    pub async fn delete(&self, key: impl Into<Vec<u8>>) -> Result<u64, Error> {
        applied(self.write(WriteOp::Delete { key: key.into() }).await?)
    }

    /// Sets (or, with `value: None`, deletes) a key if its version is `expected` (`None`:
    /// only if it is absent). A version mismatch is [`WriteOutcome::Conflict`], not an error.
    pub async fn cas(
        &self,
        key: impl Into<Vec<u8>>,
        expected: Option<u64>,
        value: Option<Vec<u8>>,
    ) -> Result<WriteOutcome, Error> {
        self.write(WriteOp::Cas {
            key: key.into(),
            expected,
            value,
        })
        .await
    }

    /// Applies one write under a fresh request id.
    pub async fn write(&self, op: WriteOp) -> Result<WriteOutcome, Error> {
        self.write_as(self.next_request_id(), op).await
    }

    /// Applies one write under `id`. Resending a write whose outcome was unknown under the
    /// same id (and the same op) applies it at most once and returns its outcome, as long as
    /// the storage nodes still remember the id (`replication.request_retention_ms`).
    pub async fn write_as(&self, id: RequestId, op: WriteOp) -> Result<WriteOutcome, Error> {
        op.validate().map_err(Error::Data)?;
        let shard = self.shard_of(op.key());
        let resp = self
            .send(shard, Kind::Write(id), |epoch| DataRequest::Write {
                shard,
                epoch,
                id,
                op: op.clone(),
            })
            .await?;
        match resp {
            DataResponse::Written(outcome) => Ok(outcome),
            // Some answer came back, but not to this write: whether it applied is unknown.
            other => Err(Error::Indeterminate(format!(
                "write {id} to shard {shard}: answered {other:?}"
            ))),
        }
    }

    /// Reads one page of one shard's keys that start with `prefix` (empty: all), after
    /// `start_after`, in key order, at most `limit` (1..=[`MAX_SCAN_LIMIT`]) items; the
    /// storage node may return fewer (pages are bounded in bytes too).
    pub async fn scan_shard(
        &self,
        shard: ShardId,
        prefix: &[u8],
        start_after: Option<&[u8]>,
        limit: u32,
    ) -> Result<ScanPage, Error> {
        let invalid = |why: String| Error::Data(DataError::InvalidArgument(why));
        if shard.0 == 0 || shard.0 > u64::from(self.inner.layout.shards) {
            return Err(invalid(format!(
                "shard {shard} is not in 1..={}",
                self.inner.layout.shards
            )));
        }
        if !(1..=MAX_SCAN_LIMIT).contains(&limit) {
            return Err(invalid(format!(
                "a scan limit is 1..={MAX_SCAN_LIMIT}, got {limit}"
            )));
        }
        if prefix.len() > MAX_KEY {
            return Err(invalid(format!(
                "a prefix is at most {MAX_KEY} bytes, got {}",
                prefix.len()
            )));
        }
        if let Some(k) = start_after {
            check_key(k).map_err(Error::Data)?;
        }
        let resp = self
            .send(shard, Kind::Read, |epoch| DataRequest::Scan {
                shard,
                epoch,
                prefix: prefix.to_vec(),
                start_after: start_after.map(<[u8]>::to_vec),
                limit,
            })
            .await?;
        let DataResponse::Page { items, more } = resp else {
            return Err(unexpected("scan", resp));
        };
        // The merge across shards relies on each page being what was asked for.
        let mut last = start_after;
        // A key that is not a valid key of this shard would become the next page's
        // `start_after` (refused as the caller's mistake) or be handed out twice by the merge.
        for (k, _) in &items {
            if !k.starts_with(prefix)
                || last.is_some_and(|l| k.as_slice() <= l)
                || check_key(k).is_err()
                || self.shard_of(k) != shard
            {
                return Err(Error::Unexpected {
                    request: "scan",
                    response: format!(
                        "shard {shard} returned keys out of order, out of range or of \
                         another shard"
                    ),
                });
            }
            last = Some(k);
        }
        Ok(ScanPage { items, more })
    }

    /// A scan of every key that starts with `prefix` (empty: all keys), across all shards,
    /// merged in key order. Keys hash over every shard, so it asks every shard; see
    /// [`PrefixScan`] for the cost.
    pub fn scan(&self, prefix: &[u8]) -> PrefixScan {
        PrefixScan::new(self.clone(), prefix.to_vec(), None)
    }

    /// One page of a prefix scan across all shards, after `start_after`: at most `limit`
    /// items in key order, and whether more follow. Resume with the last key returned.
    pub async fn scan_prefix(
        &self,
        prefix: &[u8],
        start_after: Option<&[u8]>,
        limit: u32,
    ) -> Result<ScanPage, Error> {
        if let Some(k) = start_after {
            check_key(k).map_err(Error::Data)?;
        }
        let mut scan = PrefixScan::new(self.clone(), prefix.to_vec(), start_after);
        let items = scan.next_page(limit).await?;
        Ok(ScanPage {
            items,
            more: !scan.is_done(),
        })
    }

    /// The shard's primary and the epoch to name, from the cache (or a metadata read when
    /// the cache does not hold it). `Err(Ok(why))`: try again later; `Err(Err(e))`: give up.
    async fn route(&self, shard: ShardId) -> Result<Route, Result<String, Error>> {
        let cache = &self.inner.cache;
        let meta_err = |e: Error| match e {
            Error::Unavailable(why) => Ok(format!("metadata: {why}")),
            e => Err(e),
        };
        let s = cache
            .lookup_or_fetch(shard)
            .await
            .map_err(meta_err)?
            .ok_or_else(|| Ok(format!("shard {shard} has no record yet")))?;
        let primary = *s
            .replicas
            .first()
            .ok_or_else(|| Ok(format!("shard {shard} has no replicas")))?;
        let node = cache
            .node_or_fetch(primary)
            .await
            .map_err(meta_err)?
            .ok_or_else(|| {
                Ok(format!(
                    "primary {primary} of shard {shard} is not registered"
                ))
            })?;
        let addr = node
            .addrs
            .first()
            .ok_or_else(|| Ok(format!("node {primary} has no address")))?
            .clone();
        Ok(Route {
            epoch: s.epoch,
            addr,
            shard: s,
            node,
        })
    }

    /// Drops what a refused attempt was routed by, so the next route reads it again.
    ///
    /// A refusal naming a newer configuration (`Redirect`, `StaleEpoch`, `UnknownShard`)
    /// drops the shard's record at or below the epoch refused, whoever read it: a copy
    /// re-read since at the same epoch is just as stale. A refusal without news drops only
    /// the records this attempt used, if the cache still holds them (a request routed by
    /// an older copy learns nothing another has not already re-read), and each at most
    /// once per [`REREAD_EVERY`].
    fn forget_route(&self, route: &Route, refresh: Refresh, news: bool) {
        let cache = &self.inner.cache;
        if refresh == Refresh::Nothing {
            return;
        }
        if news {
            cache.invalidate(route.shard.id, route.epoch);
        } else {
            cache.forget_shard(&route.shard, || {
                self.may_reread(|r| &mut r.shards, route.shard.id)
            });
        }
        if refresh == Refresh::ShardAndNode {
            cache.forget_node(&route.node, || {
                self.may_reread(|r| &mut r.nodes, route.node.id)
            });
        }
    }

    /// Whether a refusal without news may drop a record now: at most once per
    /// [`REREAD_EVERY`] per record, whatever the number of requests refused.
    fn may_reread<K: std::hash::Hash + Eq>(
        &self,
        table: impl FnOnce(&mut Rereads) -> &mut HashMap<K, Instant>,
        key: K,
    ) -> bool {
        match self.inner.rereads.lock() {
            Ok(mut r) => allow(table(&mut r), key),
            Err(_) => true,
        }
    }

    /// Sends the request `build` makes for an epoch to the shard's primary until it is
    /// answered or the deadline passes; see the module documentation for the rules.
    async fn send(
        &self,
        shard: ShardId,
        kind: Kind,
        build: impl Fn(u64) -> DataRequest,
    ) -> Result<DataResponse, Error> {
        let cfg = &self.inner.cfg;
        let deadline = crate::client::deadline_after(cfg.request_timeout);
        // A zero pause would turn every retry into a busy loop of metadata reads.
        let mut backoff = cfg.min_backoff.max(Duration::from_millis(1));
        let mut last = String::from("no attempt made");
        // Whether an attempt of this write may have been applied: from then on, giving up
        // is an unknown outcome, never a refusal.
        let mut maybe_applied = false;
        // Whether a newer configuration was already followed without backing off.
        let mut followed = false;
        // The last attempt's refusal if the node failed on its own (`Internal`): a request
        // that certainly did nothing and gives up on it reports that failure, not
        // `Unavailable`, which would invite the caller to retry what fails again.
        let mut node_failed: Option<DataError> = None;
        let give_up = |maybe_applied: bool, why: String, node_failed: &Option<DataError>| match (
            kind,
            node_failed,
        ) {
            (Kind::Write(id), _) if maybe_applied => {
                Error::Indeterminate(format!("write {id} to shard {shard}: {why}"))
            }
            (_, Some(e)) => Error::Data(e.clone()),
            _ => Error::Unavailable(format!("shard {shard}: {why}")),
        };
        loop {
            if Instant::now() >= deadline {
                return Err(give_up(maybe_applied, last, &node_failed));
            }
            // Routing may read the metadata (a refresh after a move): within the time left,
            // not each read's own timeout, so that no attempt starts after the deadline. A
            // route from the cache is ready at once and needs no timer.
            let route = self.route(shard);
            tokio::pin!(route);
            let routed = match (&mut route).now_or_never() {
                Some(r) => r,
                None => {
                    tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), route)
                        .await
                        .unwrap_or_else(|_| Err(Ok("no route before the deadline".to_string())))
                }
            };
            let now = Instant::now();
            let remaining = deadline.saturating_duration_since(now);
            if remaining < MIN_ATTEMPT {
                // Too little time for an answer to come back: an attempt could only time
                // out (and a timeout with nothing heard drops the pooled connection). A
                // definite answer from the metadata (a refusal) is still that answer.
                let why = match routed {
                    Err(Err(e)) if !maybe_applied => return Err(e),
                    Err(Err(e)) => e.to_string(),
                    Err(Ok(why)) => why,
                    Ok(_) => last,
                };
                return Err(give_up(maybe_applied, why, &node_failed));
            }
            let outcome = match routed {
                Err(Err(e)) if maybe_applied => {
                    return Err(give_up(true, e.to_string(), &node_failed))
                }
                Err(Err(e)) => return Err(e),
                Err(Ok(why)) => Outcome::Again {
                    why,
                    refresh: Refresh::Nothing,
                    at_once: false,
                },
                Ok(route) => {
                    let attempt = match kind {
                        Kind::Write(_) => cfg.attempt_timeout,
                        Kind::Read => cfg.attempt_timeout.min(remaining),
                    };
                    let req = build(route.epoch);
                    let call = self.inner.transport.call_as::<DataRequest, DataResponse>(
                        &route.addr,
                        &req,
                        attempt,
                    );
                    let answer =
                        match kind {
                            Kind::Write(_) => call.await,
                            // A read has nothing to learn after its deadline: bound the whole
                            // attempt by it, dialling and sending included (`attempt` bounds only
                            // the wait for the answer), so a read never answers late.
                            Kind::Read => tokio::time::timeout(remaining, call)
                                .await
                                .unwrap_or_else(|_| {
                                    Err(TransportError::Timeout {
                                        addr: route.addr.clone(),
                                        timeout: remaining,
                                    })
                                }),
                        };
                    node_failed = match &answer {
                        Ok(DataResponse::Error(e @ DataError::Internal(_))) => Some(e.clone()),
                        _ => None,
                    };
                    let (outcome, may_have_applied) = judge(&route.addr, answer);
                    maybe_applied |= may_have_applied && matches!(kind, Kind::Write(_));
                    if let Outcome::Again {
                        refresh, at_once, ..
                    } = &outcome
                    {
                        self.forget_route(&route, *refresh, *at_once);
                    }
                    outcome
                }
            };
            match outcome {
                Outcome::Done(resp) => return Ok(resp),
                Outcome::Fail(e) if maybe_applied => {
                    return Err(give_up(true, e.to_string(), &node_failed))
                }
                Outcome::Fail(e) => return Err(e),
                Outcome::Again { why, at_once, .. } => {
                    last = why;
                    // A move's commit or a hand-off bumps the epoch: every client's next
                    // request to that shard is answered `StaleEpoch` or `Redirect` once.
                    // Sleeping before following it made each such request pay the backoff
                    // on top of the re-read, and during a drain those requests were the
                    // clients' p99.
                    if at_once && !followed {
                        followed = true;
                        continue;
                    }
                }
            }
            // Jittered (half to all of the backoff): the clients that one failover turned
            // away at once do not all come back, and re-read the metadata, at once.
            let jittered = backoff.mul_f64(rand::random::<f64>() * 0.5 + 0.5);
            let pause = jittered.min(deadline.saturating_duration_since(Instant::now()));
            tokio::time::sleep(pause).await;
            // Floored as the first pause is: a `max_backoff` of zero must not make every
            // later retry a busy loop.
            backoff = (backoff * 2)
                .min(cfg.max_backoff)
                .max(Duration::from_millis(1));
        }
    }
}

/// The least time left worth an attempt: about a round trip on a busy machine.
const MIN_ATTEMPT: Duration = Duration::from_millis(20);

/// What one answer (or failure) means, and whether the request may have been applied.
fn judge(at: &str, answer: Result<DataResponse, TransportError>) -> (Outcome, bool) {
    let again = |why: String, refresh: Refresh| Outcome::Again {
        why,
        refresh,
        at_once: false,
    };
    match answer {
        Ok(DataResponse::Error(e)) => match e {
            // The client's record is older than what the node knows, or the node does not
            // hold the shard: re-read the record. Nothing was applied.
            DataError::Redirect(_) | DataError::StaleEpoch { .. } | DataError::UnknownShard(_) => (
                Outcome::Again {
                    why: format!("{at}: {e}"),
                    refresh: Refresh::Shard,
                    at_once: true,
                },
                false,
            ),
            // The node has not learnt the client's (newer) epoch yet. Usually it soon
            // will, but a node whose watch of the metadata stalled stays behind while the
            // metadata fails its shards over: look again now and then (a refusal without
            // news re-reads a shard at most every `REREAD_EVERY`).
            DataError::Behind { .. } => (again(format!("{at}: {e}"), Refresh::Shard), false),
            // The primary cannot serve now; it may be on its way out, so look again.
            DataError::Unavailable(_) => (again(format!("{at}: {e}"), Refresh::Shard), false),
            // The write may commit or not (the primary lost its lease or role with it in
            // flight): resend it under its id, to whoever is primary now, to learn which.
            DataError::Indeterminate(_) => (again(format!("{at}: {e}"), Refresh::Shard), true),
            // The node failed on its own (its disk, a task that died). A write may have
            // reached its log first (a failed RocksDB write can survive in its WAL and be
            // replayed), and on a failing node, the very case this system moves data for,
            // another primary serves after the drain or the failover: resend under the id
            // to whoever is primary then, and learn which.
            DataError::Internal(_) => (again(format!("{at}: {e}"), Refresh::Nothing), true),
            e @ (DataError::InvalidArgument(_)
            | DataError::PermissionDenied(_)
            | DataError::Fenced(_)) => (Outcome::Fail(Error::Data(e)), false),
        },
        Ok(resp) => (Outcome::Done(resp), false),
        Err(e @ TransportError::Oversized { .. }) => (
            Outcome::Fail(Error::Data(DataError::InvalidArgument(e.to_string()))),
            false,
        ),
        // The node may be gone (or have moved): re-read its record and the shard's.
        Err(e) => (
            again(e.to_string(), Refresh::ShardAndNode),
            !e.certainly_not_sent(),
        ),
    }
}

fn applied(outcome: WriteOutcome) -> Result<u64, Error> {
    match outcome {
        WriteOutcome::Applied { version } => Ok(version),
        WriteOutcome::Conflict { current } => Err(Error::Unexpected {
            request: "write",
            response: format!(
                "a conflict (current version {current:?}) for an unconditional write"
            ),
        }),
    }
}

fn unexpected(request: &'static str, response: DataResponse) -> Error {
    Error::Unexpected {
        request,
        response: format!("{response:?}"),
    }
}

#[cfg(test)]
#[path = "data_tests.rs"]
mod tests;
