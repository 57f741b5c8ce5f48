//! The metadata role: a Raft member serving the metadata API over QUIC.
//!
//! - [`server`]: accepting connections, reading each request, checking the caller's role;
//! - [`auth`]: which certificate role may make which request;
//! - [`kv`]: transactions and reads (linearizable through ReadIndex);
//! - [`watch`]: change streams from the applied history;
//! - [`membership`]: bootstrap, learners, promotion, removal, leader transfer, status;
//! - [`raft_server`]: Raft messages from peers: identity checks, votes, snapshots;
//! - [`network`]: Raft messages to peers;
//! - [`append_stream`]: pipelined append entries, both the leader's and the follower's end;
//! - [`admin`]: the HTTP admin surface (`/health`, `/metrics`, `/v1/status`);
//! - [`metrics`]: Prometheus metrics.
//!
//! A member takes part in Raft only as the incarnation of its data directory the membership
//! knows (see `augur_raft_store::identity`): a new cluster is founded once, by an explicit
//! bootstrap, and a member that comes up with an empty directory waits to be added again.

pub mod admin;
pub mod append_stream;
pub mod auth;
pub mod kv;
pub mod membership;
pub mod metrics;
pub mod network;
pub mod raft_server;
pub mod server;
pub mod watch;

use crate::config::MetaConfig;
use anyhow::Context;
use augur_raft_store::types::Raft;
use augur_raft_store::{Identity, StateMachine, StoreConfig};
use augur_transport::{client_config, server_config, Transport};
use openraft::async_runtime::WatchReceiver;
use openraft::ServerState;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A running metadata node. Cheap to clone.
#[derive(Clone)]
pub struct MetaNode {
    pub(crate) id: u64,
    pub(crate) raft: Raft,
    pub(crate) sm: StateMachine,
    /// Member id, incarnation and cluster of this data directory.
    pub(crate) identity: Identity,
    /// Log index of the membership Raft acts under, for outgoing envelopes.
    pub(crate) membership_index: Arc<std::sync::atomic::AtomicU64>,
    pub(crate) endpoint: quinn::Endpoint,
    /// Node-to-node calls outside Raft's own traffic (a follower's read-index request).
    pub(crate) peers: Transport,
    pub(crate) metrics: Arc<metrics::Metrics>,
    cfg: Arc<MetaConfig>,
    shutting_down: Arc<AtomicBool>,
    shutdown_tx: Arc<tokio::sync::watch::Sender<bool>>,
    /// Held while a bootstrap runs, so two cannot found two clusters from one member.
    bootstrapping: Arc<tokio::sync::Mutex<()>>,
    /// The data plane's control plane (acts while this member leads).
    pub(crate) control: Arc<crate::control::Control>,
    /// Slots for peers' state-machine reads on the blocking pool
    /// ([`MetaNode::read_sm_for_request`]). Raft's own synced writes (votes, truncations,
    /// applies) run on that pool too: without a bound, enough concurrent lists or watch
    /// pages would queue them behind those reads, and elections would follow. The control
    /// plane's own reads (heartbeats) do not take a slot.
    pub(crate) read_slots: Arc<tokio::sync::Semaphore>,
    /// When this member, as a follower, last had its leader confirm leadership with a quorum
    /// (a read index), or started: what [`MetaNode::in_touch`] judges it by. Held across the
    /// confirmation, so the watches of one member share one call.
    pub(crate) confirmed: Arc<tokio::sync::Mutex<std::time::Instant>>,
}

impl MetaNode {
    /// How long a member may go without touch with a leader ([`MetaNode::in_touch`]) before
    /// its watches end `Unavailable`, so that their clients resume on another member: the
    /// longer of 3 s and 8 election timeouts, well past an election.
    pub(crate) fn watch_out_of_touch_limit(&self) -> Duration {
        Duration::from_millis(self.cfg.raft.election_timeout_max_ms.saturating_mul(8))
            .max(Duration::from_secs(3))
    }
}

/// State-machine reads that may run on the blocking pool at once (its default size is 512).
const MAX_BLOCKING_READS: usize = 32;

impl MetaNode {
    /// Opens the store, starts Raft and the QUIC endpoint. Nothing is bootstrapped here: a
    /// member with no data waits for `Request::Bootstrap` or to be added by the leader.
    pub async fn start(cfg: MetaConfig) -> anyhow::Result<MetaNode> {
        let store_cfg = StoreConfig {
            dir: cfg.data_dir.clone(),
            history_retention: cfg.store.history_retention,
            block_cache_bytes: cfg.store.block_cache_mb << 20,
        };
        let stores = augur_raft_store::open(&store_cfg, cfg.id)
            .with_context(|| format!("opening store in {}", cfg.data_dir.display()))?;
        let identity = stores.identity.clone();
        let idle = Duration::from_millis(cfg.raft.peer_idle_timeout_ms);
        let server = server_config(&cfg.tls, idle).context("TLS server configuration")?;
        let (mut endpoint, _) = augur_transport::bind_endpoint(cfg.listen, Some(server))
            .with_context(|| format!("binding QUIC endpoint on {}", cfg.listen))?;
        endpoint.set_default_client_config(
            client_config(&cfg.tls, idle).context("TLS client configuration")?,
        );
        let transport = Transport::from_endpoint(
            endpoint.clone(),
            Duration::from_millis(cfg.raft.connect_timeout_ms),
        )
        .with_max_frame(cfg.limits.max_frame_bytes);
        let raft_config = Arc::new(cfg.raft.to_openraft().context("raft settings")?);
        let cfg_control = cfg.control.clone();
        let membership_index = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let sm = stores.state.clone();
        let raft = Raft::new(
            cfg.id,
            raft_config,
            network::Network::new(
                transport.clone(),
                identity.clone(),
                membership_index.clone(),
                Duration::from_millis(cfg.raft.election_timeout_min_ms),
                cfg.raft.append_window,
            ),
            stores.log,
            stores.state,
        )
        .await
        .context("starting raft")?;
        let metrics = Arc::new(metrics::Metrics::new(sm.apply_histogram()));
        let (shutdown_tx, _) = tokio::sync::watch::channel(false);
        let control = Arc::new(crate::control::Control::new(
            cfg_control,
            metrics.control.clone(),
        ));
        let node = MetaNode {
            id: cfg.id,
            raft,
            sm,
            identity,
            membership_index: membership_index.clone(),
            endpoint,
            peers: transport,
            metrics,
            cfg: Arc::new(cfg),
            shutting_down: Arc::new(AtomicBool::new(false)),
            shutdown_tx: Arc::new(shutdown_tx),
            bootstrapping: Arc::new(tokio::sync::Mutex::new(())),
            control,
            read_slots: Arc::new(tokio::sync::Semaphore::new(MAX_BLOCKING_READS)),
            confirmed: Arc::new(tokio::sync::Mutex::new(std::time::Instant::now())),
        };
        if let Some(why) = node.waiting_reason() {
            tracing::warn!(
                id = node.id,
                incarnation = format_args!("{:016x}", node.identity.incarnation()),
                "{why}"
            );
        }
        crate::control::spawn(node.clone());
        // Keep the membership index for outgoing envelopes current. Server metrics change only
        // with the role, vote, leader or membership; the full metrics change with every
        // append, commit and acknowledgement, and a task woken for each cost CPU on every
        // write.
        let mut metrics_rx = node.raft.server_metrics();
        let index = membership_index.clone();
        tokio::spawn(async move {
            loop {
                let i = metrics_rx
                    .borrow_watched()
                    .membership_config
                    .log_id()
                    .as_ref()
                    .map_or(0, |l| l.index);
                index.store(i, std::sync::atomic::Ordering::Release);
                if metrics_rx.changed().await.is_err() {
                    return;
                }
            }
        });
        let accept = node.clone();
        tokio::spawn(async move {
            while let Some(incoming) = accept.endpoint.accept().await {
                tokio::spawn(accept.clone().serve_connection(incoming));
            }
        });
        tracing::info!(id = node.id, listen = %node.cfg.listen, "metadata node started");
        Ok(node)
    }

    pub(crate) fn max_frame(&self) -> usize {
        self.cfg.limits.max_frame_bytes
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    pub(crate) fn shutdown_signal(&self) -> tokio::sync::watch::Receiver<bool> {
        self.shutdown_tx.subscribe()
    }

    /// The Raft handle (tests, admin).
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// Stops serving. A leader first hands leadership to its most caught-up voter, so the
    /// cluster does not wait out an election timeout.
    pub async fn shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
        let deadline = Duration::from_millis(self.cfg.limits.shutdown_transfer_timeout_ms);
        if let Err(e) = tokio::time::timeout(deadline, self.hand_off_leadership()).await {
            tracing::warn!(error = %e, "leadership hand-off did not finish before the deadline");
        }
        self.shutdown_tx.send_replace(true);
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
        self.endpoint.close(0u32.into(), b"shutdown");
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
        tracing::info!(id = self.id, "metadata node stopped");
    }

    async fn hand_off_leadership(&self) {
        let m = self.raft.metrics().borrow_watched().clone();
        if m.state != ServerState::Leader {
            return;
        }
        let voters: Vec<u64> = m
            .membership_config
            .membership()
            .voter_ids()
            .filter(|v| *v != self.id)
            .collect();
        let matched = |id: &u64| {
            m.replication
                .as_ref()
                .and_then(|r| r.get(id).cloned().flatten())
                .map(|l| l.index)
                .unwrap_or(0)
        };
        let Some(target) = voters.iter().max_by_key(|v| matched(v)).copied() else {
            return;
        };
        tracing::info!(
            id = self.id,
            target,
            "handing leadership off before shutdown"
        );
        if let Err(e) = self.raft.trigger().transfer_leader(target).await {
            tracing::warn!(error = %e, "leader transfer failed");
            return;
        }
        let mut rx = self.raft.metrics();
        loop {
            {
                let now = rx.borrow_watched();
                if now.current_leader.is_some_and(|l| l != self.id) {
                    return;
                }
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }
}
