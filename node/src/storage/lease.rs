//! The node's lease and its heartbeats to the metadata leader.
//!
//! Every heartbeat interval the node sends the leader its report (usage, every replica's
//! state). The leader confirms its leadership before acknowledging. The lease then runs on
//! this node's monotonic clock from when the heartbeat was *sent*, for the lease duration the
//! leader named, so it can only err on the short side. A primary serves only while its node's
//! lease holds; the leader declares a silent node Down only after a grace period longer than
//! the lease (allowing for clock-rate drift), so a primary cut off from the leader stops before
//! another is promoted.
//!
//! An acknowledgement carrying a higher node epoch than the node knows means the leader
//! declared it Down meanwhile: the node registers again.

use super::NodeCtx;
use augur_proto::{Node, NodeState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// The node's lease.
#[derive(Debug, Default)]
pub struct Lease {
    until: Mutex<Option<Instant>>,
    /// The node epoch it was granted under.
    pub node_epoch: AtomicU64,
    /// Milliseconds between heartbeats, as the leader asks.
    pub interval_ms: AtomicU64,
    /// When the last acknowledged heartbeat was sent.
    last_ack: Mutex<Option<Instant>>,
}

impl Lease {
    /// Whether the lease holds now.
    pub fn valid(&self) -> bool {
        self.until
            .lock()
            .map(|u| u.is_some_and(|u| Instant::now() < u))
            .unwrap_or(false)
    }

    /// How long ago the last acknowledged heartbeat was sent.
    pub fn age(&self) -> Option<Duration> {
        self.last_ack.lock().ok()?.map(|t| t.elapsed())
    }

    /// Extends the lease to `sent + duration`, never shortening it.
    fn extend(&self, sent: Instant, duration: Duration) {
        if let Ok(mut u) = self.until.lock() {
            let new = sent + duration;
            if u.is_none_or(|old| new > old) {
                *u = Some(new);
            }
        }
        if let Ok(mut a) = self.last_ack.lock() {
            if a.is_none_or(|old| sent > old) {
                *a = Some(sent);
            }
        }
    }

    /// Ends the lease at once (the node was declared Down).
    fn revoke(&self) {
        if let Ok(mut u) = self.until.lock() {
            *u = None;
        }
    }
}

/// The node's own record, as it registers it.
pub(crate) fn own_record(ctx: &NodeCtx) -> Node {
    Node {
        id: ctx.node,
        incarnation: ctx.incarnation,
        addrs: vec![ctx.cfg.advertise.clone()],
        admin: ctx.admin_addr.clone(),
        rack: ctx.cfg.rack.clone(),
        zone: ctx.cfg.zone.clone(),
        capacity_bytes: ctx.capacity(),
        used_bytes: ctx.engine.used_bytes(),
        state: NodeState::Up,
        state_since_ms: 0,
        risk: Default::default(),
        epoch: 0,
        last_heartbeat_ms: 0,
        version: 0,
        cordoned: false,
        drain_when_back: None,
        undrain_when_back: None,
        cause: Default::default(),
    }
}

/// Registers the node, retrying until the leader accepts it. A registration refused because
/// the node's data is gone while the registry still places replicas on it is retried too:
/// once the control plane has declared the node Down and moved those replicas away, the node
/// joins as the new incarnation it is. Other refusals (a bad record) are returned.
pub async fn register(ctx: &NodeCtx) -> Result<(), augur_client::Error> {
    let mut backoff = Duration::from_millis(100);
    loop {
        let sent = Instant::now();
        match ctx.meta.register(own_record(ctx)).await {
            Ok(ack) => {
                ctx.lease
                    .node_epoch
                    .store(ack.node_epoch, Ordering::Release);
                ctx.lease
                    .interval_ms
                    .store(ack.heartbeat_interval_ms.max(1), Ordering::Release);
                ctx.lease.extend(sent, Duration::from_millis(ack.lease_ms));
                tracing::info!(node = %ctx.node, epoch = ack.node_epoch, state = ?ack.state, "registered");
                return Ok(());
            }
            Err(augur_client::Error::Api(augur_proto::wire::ApiError::WrongIdentity(why))) => {
                tracing::warn!(%why, "registration refused; waiting for the control plane to move this node's replicas away");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(augur_client::Error::Api(e)) => return Err(augur_client::Error::Api(e)),
            Err(e) => {
                tracing::warn!(error = %e, "registration not acknowledged; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Heartbeats until the node stops: every interval, and at once when something the leader
/// waits for happened (`NodeCtx::report_now`).
pub async fn heartbeats(weak: Weak<NodeCtx>) {
    let Some(report_now) = weak.upgrade().map(|c| c.report_now.clone()) else {
        return;
    };
    loop {
        let Some(ctx) = weak.upgrade() else { return };
        let interval = Duration::from_millis(ctx.lease.interval_ms.load(Ordering::Acquire).max(1));
        let next = Instant::now() + interval;
        beat(&ctx).await;
        drop(ctx);
        tokio::select! {
            _ = tokio::time::sleep_until(next.into()) => {}
            _ = report_now.notified() => {}
        }
    }
}

async fn beat(ctx: &Arc<NodeCtx>) {
    let report = ctx.report().await;
    let sent = Instant::now();
    let health = ctx.health.node_health();
    match ctx.meta.heartbeat_with_health(report, health).await {
        Ok(ack) => {
            let known = ctx.lease.node_epoch.load(Ordering::Acquire);
            if ack.node_epoch > known || ack.state == NodeState::Down {
                tracing::warn!(node = %ctx.node, known, registry = ack.node_epoch, state = ?ack.state, "declared Down meanwhile: stepping down, registering again");
                ctx.lease.revoke();
                // Another replica may lead its shards by now: every primary here steps down
                // before the new registration renews the lease.
                for h in ctx.replicas() {
                    h.fence().await;
                }
                if let Err(e) = register(ctx).await {
                    tracing::error!(error = %e, "registration refused");
                }
                return;
            }
            ctx.lease
                .interval_ms
                .store(ack.heartbeat_interval_ms.max(1), Ordering::Release);
            ctx.lease.extend(sent, Duration::from_millis(ack.lease_ms));
            ctx.metrics.heartbeat_ok();
        }
        Err(e) => {
            ctx.metrics.heartbeat_failed();
            tracing::debug!(error = %e, "heartbeat not acknowledged");
        }
    }
}
