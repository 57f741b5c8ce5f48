//! The storage role: a storage node holding replicated shards of the key space.
//!
//! - [`config`]: the node's configuration (TOML + flags);
//! - [`engine`]: RocksDB: shard data, replication logs, replica state, request ids;
//! - [`replica`]: one task per shard: PacificA's primary, secondary and learner;
//! - [`replicate`]: the primary's replication stream to each peer;
//! - [`copy`]: copying a shard to a learner, chunked, checked, resumable, throttled;
//! - [`directory`]: shard and node records, followed by a watch;
//! - [`lease`]: registration, heartbeats and the node's lease;
//! - [`server`]: the QUIC server (data API, replication, copies, probes);
//! - [`health`]: the health agent and predictor, the node's risk;
//! - [`admin`]: `/health`, `/metrics`, `/v1/status`, `/v1/health`;
//! - [`metrics`]: Prometheus metrics.
//!
//! See `docs/data-plane.md` for the protocol.

pub mod admin;
pub mod config;
pub mod copy;
pub mod directory;
pub mod engine;
pub mod health;
pub mod lease;
pub mod metrics;
pub mod replica;
pub mod replicate;
pub mod server;

use anyhow::Context;
use augur_client::{Client, ClientConfig};
use augur_proto::data::NodeReport;
use augur_proto::{NodeId, Shard, ShardId};
use augur_transport::{client_config, server_config, Transport, STORAGE_SERVER_NAME};
use config::StorageConfig;
use engine::Engine;
use lease::Lease;
use replica::{Handle, Replica};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What every part of a storage node shares.
pub struct NodeCtx {
    /// This node's id.
    pub node: NodeId,
    /// Its data directory's incarnation.
    pub incarnation: u64,
    /// Its configuration.
    pub cfg: StorageConfig,
    /// Its address for `/health` and friends, as registered.
    pub admin_addr: String,
    /// The engine.
    pub engine: Engine,
    /// Its lease.
    pub lease: Lease,
    /// The metadata client (storage certificate).
    pub meta: Client,
    /// QUIC to other storage nodes.
    pub peers: Transport,
    /// Shard and node records.
    pub directory: directory::Directory,
    /// Signalled each time the directory has listed the metadata.
    pub directory_ready: tokio::sync::Notify,
    /// The copy budget.
    pub throttle: copy::Throttle,
    /// Metrics.
    pub metrics: metrics::Metrics,
    /// The health agent and predictor.
    pub health: Arc<health::Health>,
    /// Asks the heartbeat loop to report at once instead of at its next beat: a learner that
    /// finished its copy tells the leader now, so a move waits on no heartbeat interval.
    pub report_now: Arc<tokio::sync::Notify>,
    replicas: Mutex<HashMap<ShardId, Handle>>,
    capacity: u64,
}

impl NodeCtx {
    /// The replica task of a shard, if this node has one.
    pub fn replica(&self, shard: ShardId) -> Option<Handle> {
        self.replicas.lock().ok()?.get(&shard).cloned()
    }

    /// Every replica task.
    pub fn replicas(&self) -> Vec<Handle> {
        self.replicas
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Forgets a replica whose task ended.
    pub fn forget(&self, shard: ShardId) {
        if let Ok(mut m) = self.replicas.lock() {
            m.remove(&shard);
        }
    }

    /// A peer's address from the registry.
    pub fn node_addr(&self, id: NodeId) -> Option<String> {
        self.directory.node(id)?.addrs.first().cloned()
    }

    /// Bytes this node may hold.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Whether the node's lease holds.
    pub fn lease_valid(&self) -> bool {
        self.lease.valid()
    }

    /// Hands a shard record to its replica, starting one if the record lists this node.
    pub(crate) async fn on_shard(self: &Arc<Self>, shard: Arc<Shard>) {
        let listed = shard.replicas.contains(&self.node) || shard.learners.contains(&self.node);
        // The task found may be ending (a stray that deleted its copy closes its queue after
        // forgetting itself): a record it can no longer take goes to a new task, or the
        // shard would wait for a record the directory, already holding it, never sends again.
        for _ in 0..2 {
            let Some(handle) = self.replica_for(&shard, listed) else {
                return;
            };
            if handle
                .send(replica::Msg::Config(shard.clone()))
                .await
                .is_ok()
            {
                return;
            }
            self.forget_task(&handle);
        }
        tracing::warn!(shard = %shard.id, "no replica task took the shard's record");
    }

    /// The replica task of `shard`, started if there is none and the record lists this node.
    fn replica_for(self: &Arc<Self>, shard: &Shard, listed: bool) -> Option<Handle> {
        // Looked up and started under one lock: two records arriving at once (the watch, a
        // refresh) must not start two tasks on one shard's log.
        let mut m = self.replicas.lock().ok()?;
        match m.get(&shard.id) {
            Some(h) => Some(h.clone()),
            None if listed => match Replica::spawn(self.clone(), shard.id) {
                Ok(h) => Some(m.entry(shard.id).or_insert(h).clone()),
                Err(e) => {
                    tracing::error!(shard = %shard.id, error = %e, "cannot start a replica");
                    None
                }
            },
            None => None,
        }
    }

    /// Forgets `handle`'s task if the map still holds it (not a newer task of its shard).
    fn forget_task(&self, handle: &Handle) {
        if let Ok(mut m) = self.replicas.lock() {
            if m.get(&handle.shard).is_some_and(|h| h.same_task(handle)) {
                m.remove(&handle.shard);
            }
        }
    }

    /// Usage and every replica's state.
    pub async fn report(&self) -> NodeReport {
        let handles: Vec<Handle> = self
            .replicas
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        let mut report = server::empty_report(self);
        for h in handles {
            if let Some(s) = h.status().await {
                report.replicas.push(s);
            }
        }
        report.replicas.sort_by_key(|r| r.shard);
        let shards: Vec<ShardId> = report.replicas.iter().map(|r| r.shard).collect();
        for (r, size) in report
            .replicas
            .iter_mut()
            .zip(self.engine.size_estimates(&shards))
        {
            r.size_estimate = size;
        }
        report
    }
}

/// The size of the filesystem holding `dir`, for a capacity of 0 ("the disk's").
// The statvfs field types differ between platforms (u32 on some 32-bit ones).
#[allow(clippy::unnecessary_cast)]
fn filesystem_bytes(dir: &std::path::Path) -> u64 {
    nix::sys::statvfs::statvfs(dir)
        .map(|s| s.blocks() as u64 * s.fragment_size() as u64)
        .unwrap_or(0)
}

/// A running storage node.
pub struct StorageNode {
    ctx: Arc<NodeCtx>,
    endpoint: quinn::Endpoint,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl StorageNode {
    /// Opens the engine, registers with the metadata leader, starts every replica this node
    /// holds, and serves.
    pub async fn start(cfg: StorageConfig) -> anyhow::Result<StorageNode> {
        let sync_wait = Duration::from_micros(cfg.replication.sync_wait_us);
        let (engine, identity) = Engine::open(&cfg.data_dir, cfg.id, 64 << 20, sync_wait)
            .with_context(|| format!("opening {}", cfg.data_dir.display()))?;
        engine.set_request_retention(cfg.replication.request_retention_ms);
        let idle = Duration::from_secs(10);
        let (mut endpoint, _) = augur_transport::bind_endpoint(
            cfg.listen,
            Some(server_config(&cfg.tls, idle).context("TLS server configuration")?),
        )
        .with_context(|| format!("binding QUIC endpoint on {}", cfg.listen))?;
        endpoint.set_default_client_config(
            client_config(&cfg.tls, idle).context("TLS client configuration")?,
        );
        let peers = Transport::from_endpoint(endpoint.clone(), Duration::from_secs(1))
            .with_max_frame(cfg.limits.max_frame_bytes)
            .for_servers(STORAGE_SERVER_NAME);
        let mut meta_cfg = ClientConfig::new(cfg.meta_endpoints.clone(), cfg.tls.clone());
        meta_cfg.request_timeout = Duration::from_millis(cfg.limits.request_timeout_ms);
        let meta = Client::new(meta_cfg).context("metadata client")?;
        std::fs::create_dir_all(&cfg.data_dir)?;
        let capacity = if cfg.capacity_bytes > 0 {
            cfg.capacity_bytes
        } else {
            filesystem_bytes(&cfg.data_dir)
        };
        let (health, health_tasks) =
            health::Health::start(cfg.health.clone(), cfg.id, &cfg.data_dir);
        let ctx = Arc::new(NodeCtx {
            node: NodeId::new(cfg.id)?,
            incarnation: identity.incarnation,
            admin_addr: cfg.admin_listen.to_string(),
            throttle: copy::Throttle::new(
                cfg.copy.bytes_per_sec,
                cfg.copy.busy_bytes_per_sec,
                Duration::from_millis(cfg.copy.busy_window_ms),
                cfg.copy.max_concurrent,
            ),
            cfg,
            engine,
            lease: Lease::default(),
            meta,
            peers,
            directory: directory::Directory::default(),
            directory_ready: tokio::sync::Notify::new(),
            metrics: metrics::Metrics::new(),
            health,
            report_now: Arc::new(tokio::sync::Notify::new()),
            replicas: Mutex::new(HashMap::new()),
            capacity,
        });
        lease::register(&ctx)
            .await
            .context("registering with the metadata leader")?;
        // Replicas this node holds from before a restart: their tasks start now and learn
        // their configuration from the directory.
        for (shard, _) in ctx.engine.shards()? {
            match Replica::spawn(ctx.clone(), shard) {
                Ok(h) => {
                    if let Ok(mut m) = ctx.replicas.lock() {
                        m.insert(shard, h);
                    }
                }
                Err(e) => tracing::error!(%shard, error = %e, "cannot start a replica"),
            }
        }
        let mut tasks = health_tasks;
        if let Some(outbox) = ctx.health.take_outbox() {
            tasks.push(tokio::spawn(health::ship(
                ctx.meta.clone(),
                ctx.node,
                outbox,
            )));
        }
        tasks.push(tokio::spawn(directory::follow(Arc::downgrade(&ctx))));
        tasks.push(tokio::spawn(lease::heartbeats(Arc::downgrade(&ctx))));
        let accept = endpoint.clone();
        let server_ctx = ctx.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(incoming) = accept.accept().await {
                tokio::spawn(server::serve_connection(server_ctx.clone(), incoming));
            }
        }));
        tracing::info!(node = %ctx.node, incarnation = format_args!("{:016x}", ctx.incarnation), listen = %ctx.cfg.listen, "storage node started");
        Ok(StorageNode {
            ctx,
            endpoint,
            tasks,
        })
    }

    /// The shared context (admin server, tests).
    pub fn ctx(&self) -> &Arc<NodeCtx> {
        &self.ctx
    }

    /// Stops serving and waits briefly for peers to be told.
    pub async fn shutdown(self) {
        for t in &self.tasks {
            t.abort();
        }
        self.endpoint.close(0u32.into(), b"shutdown");
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
        tracing::info!(node = %self.ctx.node, "storage node stopped");
    }
}
