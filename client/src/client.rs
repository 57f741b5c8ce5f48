//! The client: leader tracking, honest retries and the typed API.
//!
//! Writes go to the leader. A follower answers with a typed `NotLeader` hint and nothing
//! applied, so the client follows the hint and resends. Once a write may have reached a
//! leader (sent, then the connection dropped or timed out, or the leader lost office before
//! answering), the client stops and returns [`Error::Indeterminate`]: resending a CAS that
//! already applied would make it fail against its own write, and resending a blind put could
//! overwrite a newer one. Reads have no effect, so they are retried on any node until the
//! deadline.
//!
//! This module holds the handle and that routing; the typed calls built on it (records,
//! watches, membership, bootstrap) are in the `api` submodule.

use crate::error::Error;
use crate::transport::{TlsFiles, Transport};
use crate::ClusterFile;
use augur_proto::wire::{ApiError, MemberInfo};
use augur_proto::{Consistency, Request, Response};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

mod api;

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
        let deadline = deadline_after(request_timeout);
        let mut backoff = Duration::from_millis(10);
        let mut last = String::from("no attempt made");
        let mut failed: Option<String> = None;
        // Hints followed without a pause since the last one that was not: during an election
        // two members may name each other, and following them at once would bounce between
        // the two for the whole deadline.
        let mut hints_followed = 0;
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
                            hints_followed += 1;
                            if hints_followed <= MAX_HINTS_AT_ONCE {
                                continue;
                            }
                            hints_followed = 0;
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
        let deadline = deadline_after(self.inner.cfg.request_timeout);
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

/// Leader hints a call follows one after another before it pauses for its backoff.
const MAX_HINTS_AT_ONCE: u32 = 2;

/// `now + timeout`, where a configured timeout too large for the clock means no deadline in
/// practice (a century) rather than a panic.
pub(crate) fn deadline_after(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86_400))
}

pub(crate) fn unexpected(request: &'static str, response: Response) -> Error {
    Error::Unexpected {
        request,
        response: format!("{response:?}"),
    }
}
