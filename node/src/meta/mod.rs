//! The metadata role: a Raft member serving the metadata API over QUIC.
//!
//! - [`network`]: Raft RPCs to peers;
//! - [`append_stream`]: pipelined append entries, both the leader's and the follower's end;
//! - [`service`]: request handling (writes, reads, watch, membership, Raft RPCs from peers);
//! - [`admin`]: the HTTP admin surface (`/health`, `/metrics`, `/v1/status`);
//! - [`metrics`]: Prometheus metrics.

pub mod admin;
pub mod append_stream;
pub mod metrics;
pub mod network;
pub mod service;

use crate::config::MetaConfig;
use anyhow::Context;
use augur_client::transport::{client_config, server_config, Transport};
use augur_raft_store::types::Raft;
use augur_raft_store::{StateMachine, StoreConfig};
use openraft::async_runtime::WatchReceiver;
use openraft::{BasicNode, ServerState};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// A running metadata node. Cheap to clone.
#[derive(Clone)]
pub struct MetaNode {
    pub(crate) id: u64,
    pub(crate) raft: Raft,
    pub(crate) sm: StateMachine,
    pub(crate) endpoint: quinn::Endpoint,
    /// Node-to-node calls outside Raft's own traffic (a follower's read-index request).
    pub(crate) peers: Transport,
    pub(crate) metrics: Arc<metrics::Metrics>,
    cfg: Arc<MetaConfig>,
    shutting_down: Arc<AtomicBool>,
    shutdown_tx: Arc<watch::Sender<bool>>,
}

impl MetaNode {
    /// Opens the store, starts Raft and the QUIC endpoint, and bootstraps the cluster if this
    /// node is configured with initial members and nothing is initialised yet.
    pub async fn start(cfg: MetaConfig) -> anyhow::Result<MetaNode> {
        let store_cfg = StoreConfig {
            dir: cfg.data_dir.clone(),
            history_retention: cfg.store.history_retention,
            block_cache_bytes: cfg.store.block_cache_mb << 20,
        };
        let stores = augur_raft_store::open(&store_cfg)
            .with_context(|| format!("opening store in {}", cfg.data_dir.display()))?;
        let idle = Duration::from_millis(cfg.raft.peer_idle_timeout_ms);
        let server = server_config(&cfg.tls, idle).context("TLS server configuration")?;
        let mut endpoint = quinn::Endpoint::server(server, cfg.listen)
            .with_context(|| format!("binding QUIC endpoint on {}", cfg.listen))?;
        endpoint.set_default_client_config(
            client_config(&cfg.tls, idle).context("TLS client configuration")?,
        );
        let transport = Transport::from_endpoint(
            endpoint.clone(),
            Duration::from_millis(cfg.raft.connect_timeout_ms),
        );
        let raft_config = Arc::new(cfg.raft.to_openraft().context("raft settings")?);
        let sm = stores.state.clone();
        let raft = Raft::new(
            cfg.id,
            raft_config,
            network::Network::new(
                transport.clone(),
                Duration::from_millis(cfg.raft.election_timeout_min_ms),
                cfg.raft.append_window,
            ),
            stores.log,
            stores.state,
        )
        .await
        .context("starting raft")?;
        let metrics = Arc::new(metrics::Metrics::new(sm.apply_histogram()));
        let (shutdown_tx, _) = watch::channel(false);
        let node = MetaNode {
            id: cfg.id,
            raft,
            sm,
            endpoint,
            peers: transport,
            metrics,
            cfg: Arc::new(cfg),
            shutting_down: Arc::new(AtomicBool::new(false)),
            shutdown_tx: Arc::new(shutdown_tx),
        };
        node.bootstrap().await?;
        let accept = node.clone();
        tokio::spawn(async move {
            while let Some(incoming) = accept.endpoint.accept().await {
                tokio::spawn(accept.clone().serve_connection(incoming));
            }
        });
        tracing::info!(id = node.id, listen = %node.cfg.listen, "metadata node started");
        Ok(node)
    }

    /// Initialises a fresh cluster from `initial_members`; a no-op once initialised, so every
    /// listed member may run it on every start.
    async fn bootstrap(&self) -> anyhow::Result<()> {
        if self.cfg.initial_members.is_empty() || self.raft.is_initialized().await? {
            return Ok(());
        }
        let members: BTreeMap<u64, BasicNode> = self
            .cfg
            .initial_members
            .iter()
            .map(|m| {
                (
                    m.id,
                    BasicNode {
                        addr: m.addr.clone(),
                    },
                )
            })
            .collect();
        match self.raft.initialize(members).await {
            Ok(()) => tracing::info!(id = self.id, "initialised cluster"),
            // Another member initialised first; its log wins and ours is empty: fine.
            Err(e) => tracing::info!(id = self.id, error = %e, "cluster already initialised"),
        }
        Ok(())
    }

    fn max_frame(&self) -> usize {
        self.cfg.limits.max_frame_bytes
    }

    fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    fn shutdown_signal(&self) -> watch::Receiver<bool> {
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
