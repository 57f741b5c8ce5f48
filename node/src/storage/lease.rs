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
//!
//! The clock is the boot-time clock ([`LeaseClock`]), not `Instant`'s: Linux's monotonic
//! clock stops while the machine is suspended, so a node that slept through its lease would
//! wake believing it still held one, long after the leader declared it Down and promoted
//! another primary. The boot-time clock counts the sleep, at the same rate otherwise.

use super::NodeCtx;
use augur_proto::{Node, NodeState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// A reading of the clock a lease runs on: time since boot, suspended time included
/// (`CLOCK_BOOTTIME`; see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct LeaseClock(Duration);

impl LeaseClock {
    /// Now, or `None` if the clock cannot be read (then no lease is taken or held).
    pub fn now() -> Option<LeaseClock> {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            use nix::time::{clock_gettime, ClockId};
            let t = clock_gettime(ClockId::CLOCK_BOOTTIME).ok()?;
            let secs = u64::try_from(t.tv_sec()).ok()?;
            let nanos = u32::try_from(t.tv_nsec()).ok()?;
            Some(LeaseClock(Duration::new(secs, nanos)))
        }
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        {
            // Elsewhere the monotonic clock, from the first reading on.
            static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
            Some(LeaseClock(START.get_or_init(Instant::now).elapsed()))
        }
    }

    /// This reading plus `d` (`None` past the clock's range).
    fn after(self, d: Duration) -> Option<LeaseClock> {
        self.0.checked_add(d).map(LeaseClock)
    }

    /// How long ago this reading was (zero if the clock cannot be read).
    fn elapsed(self) -> Duration {
        LeaseClock::now().map_or(Duration::ZERO, |now| now.0.saturating_sub(self.0))
    }
}

/// The node's lease.
#[derive(Debug, Default)]
pub struct Lease {
    until: Mutex<Option<LeaseClock>>,
    /// The node epoch it was granted under.
    pub node_epoch: AtomicU64,
    /// Milliseconds between heartbeats, as the leader asks.
    pub interval_ms: AtomicU64,
    /// When the last acknowledged heartbeat was sent.
    last_ack: Mutex<Option<LeaseClock>>,
}

impl Lease {
    /// Whether the lease holds now.
    pub fn valid(&self) -> bool {
        let Some(now) = LeaseClock::now() else {
            return false;
        };
        self.until
            .lock()
            .map(|u| u.is_some_and(|u| now < u))
            .unwrap_or(false)
    }

    /// How long ago the last acknowledged heartbeat was sent.
    pub fn age(&self) -> Option<Duration> {
        self.last_ack.lock().ok()?.map(|t| t.elapsed())
    }

    /// Extends the lease to `sent + duration`, never shortening it. A send time the clock
    /// could not give extends nothing.
    fn extend(&self, sent: Option<LeaseClock>, duration: Duration) {
        let Some(sent) = sent else {
            return;
        };
        if let Ok(mut u) = self.until.lock() {
            let Some(new) = sent.after(duration) else {
                return;
            };
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
        let sent = LeaseClock::now();
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
    let sent = LeaseClock::now();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_runs_from_its_send_time_and_is_never_shortened() {
        let lease = Lease::default();
        assert!(!lease.valid(), "no lease before an acknowledgement");
        lease.extend(None, Duration::from_secs(60));
        assert!(!lease.valid(), "an unreadable send time grants nothing");
        let now = LeaseClock::now().expect("the boot-time clock");
        lease.extend(Some(now), Duration::from_secs(3600));
        assert!(lease.valid());
        assert!(lease.age().is_some_and(|a| a < Duration::from_secs(3600)));
        // An acknowledgement of an older heartbeat, with a shorter lease, changes nothing.
        lease.extend(Some(LeaseClock(Duration::ZERO)), Duration::from_millis(1));
        assert!(lease.valid());
        // One sent long ago has already run out.
        let old = Lease::default();
        old.extend(Some(LeaseClock(Duration::ZERO)), Duration::from_millis(1));
        assert!(!old.valid());
        lease.revoke();
        assert!(!lease.valid());
        assert!(LeaseClock(Duration::MAX)
            .after(Duration::from_secs(1))
            .is_none());
    }
}
