//! The control plane: runs on the metadata leader and manages the data plane.
//!
//! - [`placement`]: weighted rendezvous hashing with bounded load and rack spread;
//! - [`registry`]: storage nodes registering and heartbeating, and creating the data plane;
//! - [`liveness`]: Up -> Suspect -> Down from heartbeat silence;
//! - [`grants`]: lease grants ordered against liveness decisions, per node;
//! - [`risk`]: the risk policy: Suspect and Draining from predicted risk, the storm guard;
//! - [`capacity`]: capacity needed ahead (growth, predicted failures), alarm, scaling hook;
//! - [`repair`]: dead primaries replaced, dead replicas removed;
//! - [`failure`]: a primary's `ReportReplica`, an operator's `ForcePrimary`;
//! - [`mover`]: re-replication through recorded, resumable migrations;
//! - [`status`]: the leader's view (`/v1/control`) and metrics;
//! - [`cluster`], [`store`]: what decisions read, and the traits they act through;
//! - [`settings`]: the `[control]` configuration.
//!
//! Every decision is a metadata transaction that compares the versions it read, so a decision
//! taken by a leader that lost office (or raced another) changes nothing. State the leader
//! keeps in memory (when it last heard from each node, the latest probe reports, losses it
//! caused) is rebuilt by a new leader from what follows, and a new leader waits a full grace
//! period before declaring any node Down.
//!
//! Every member runs the loops ([`spawn`]); they act only while the member leads.

pub mod capacity;
pub mod cluster;
pub mod failure;
pub mod grants;
pub mod liveness;
pub mod metrics;
pub mod mover;
pub mod placement;
pub mod registry;
pub mod repair;
pub mod risk;
pub mod settings;
pub mod status;
pub mod store;

use crate::meta::MetaNode;
use augur_proto::data::NodeReport;
use augur_proto::wire::ApiError;
use augur_proto::{NodeId, NodeState, Shard, ShardId};
use cluster::{Cluster, Reports};
use futures::future::join_all;
use metrics::ControlMetrics;
use mover::MoverMemory;
use openraft::async_runtime::WatchReceiver;
use openraft::ServerState;
use settings::ControlSettings;
use status::ControlView;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use store::{MetaStore, QuicStorage, StorageCalls};

/// What the leader last heard from a storage node.
#[derive(Debug, Clone)]
pub struct Seen {
    /// When the heartbeat arrived, on this leader's monotonic clock.
    pub at: Instant,
    /// What it said.
    pub report: NodeReport,
    /// When this leader last wrote the node's usage to its record.
    pub usage_written: Option<Instant>,
    /// The node's health from its latest heartbeat that carried one (kept across heartbeats
    /// that did not, e.g. from a node of an older version).
    pub health: Option<augur_proto::wire::NodeHealth>,
}

/// What the leader's last probes of a storage node found.
#[derive(Debug, Clone, Default)]
pub struct Probed {
    /// The last successful probe: when it was answered, and the report.
    pub ok: Option<(Instant, NodeReport)>,
    /// The last failed probe, if it came after the last success: when, and why.
    pub failed: Option<(Instant, String)>,
}

/// When and in which term this member became leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Leadership {
    term: u64,
    since: Instant,
}

/// The control plane's in-memory state. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Control {
    /// Timings and limits.
    pub settings: ControlSettings,
    /// Last heartbeat per node, as this member saw them while leader.
    pub(crate) seen: Mutex<HashMap<NodeId, Seen>>,
    /// Leases granted per node (heartbeats and registrations acknowledged), the clock
    /// liveness counts silence on.
    pub(crate) grants: grants::Grants,
    /// Last probe per node, as this member saw them while leader.
    probes: Mutex<HashMap<NodeId, Probed>>,
    leadership: Mutex<Option<Leadership>>,
    memory: Mutex<MoverMemory>,
    /// Stuck shards already logged, so each is logged once per leadership.
    stuck: Mutex<HashSet<ShardId>>,
    view: Mutex<ControlView>,
    /// Health samples per node, the latest `health_samples_per_node`, while leader.
    samples: Mutex<HashMap<NodeId, std::collections::VecDeque<augur_predictor::HealthSample>>>,
    /// The risk policy's state, while leader.
    risk: Mutex<risk::RiskMemory>,
    /// The capacity planner's state, while leader.
    capacity: Mutex<capacity::CapacityMemory>,
    pub(crate) metrics: ControlMetrics,
    /// Runs the mover's next pass now: a heartbeat reported what a move waits for.
    mover_wake: tokio::sync::Notify,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded maps are plain data, consistent after any panic mid-update.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Control {
    /// A control plane with nothing heard yet, reporting through `metrics`.
    pub fn new(settings: ControlSettings, metrics: ControlMetrics) -> Control {
        Control {
            settings,
            seen: Mutex::new(HashMap::new()),
            grants: grants::Grants::default(),
            probes: Mutex::new(HashMap::new()),
            leadership: Mutex::new(None),
            memory: Mutex::new(MoverMemory::default()),
            stuck: Mutex::new(HashSet::new()),
            view: Mutex::new(ControlView::default()),
            samples: Mutex::new(HashMap::new()),
            risk: Mutex::new(risk::RiskMemory::default()),
            capacity: Mutex::new(capacity::CapacityMemory::default()),
            metrics,
            mover_wake: tokio::sync::Notify::new(),
        }
    }

    /// Asks for a mover pass now rather than at its next tick.
    pub(crate) fn wake_mover(&self) {
        self.mover_wake.notify_one();
    }

    #[cfg(test)]
    pub(crate) fn for_tests(settings: ControlSettings) -> Control {
        Control::new(settings, ControlMetrics::default())
    }

    /// What was last heard from `node`.
    pub fn last_seen(&self, node: NodeId) -> Option<Seen> {
        lock(&self.seen).get(&node).cloned()
    }

    /// When this member became leader, if it leads.
    pub fn leading_since(&self) -> Option<Instant> {
        lock(&self.leadership).map(|l| l.since)
    }

    /// The leader's view of the data plane, as of its last repair pass.
    pub fn view(&self) -> ControlView {
        let mut v = lock(&self.view).clone();
        // Health changes with every heartbeat, the rest of the view with each repair pass:
        // the health shown is the latest heard.
        let seen = lock(&self.seen);
        let samples = lock(&self.samples);
        for n in &mut v.nodes {
            if let Some(h) = seen.get(&n.id).and_then(|s| s.health.as_ref()) {
                n.health = Some(h.clone());
            }
            let held = samples.get(&n.id);
            n.samples_held = held.map_or(0, |q| q.len());
            n.latest_sample_ms = held.and_then(|q| q.back()).map(|s| s.ts_ms);
        }
        drop((seen, samples));
        if v.leading {
            v.risk = self.risk_status();
            v.capacity = self.capacity_status();
        }
        v
    }

    /// Keeps a batch of `node`'s health samples, within `health_samples_per_node`. A sample
    /// whose time is already among the latest kept is skipped: a batch sent again (its first
    /// attempt timed out after it arrived) must not enter the window twice. Only exact
    /// repeats: after the node's clock steps back, its new samples are still taken.
    pub(crate) fn note_samples(&self, node: NodeId, batch: Vec<augur_predictor::HealthSample>) {
        let cap = self.settings.health_samples_per_node;
        if cap == 0 {
            return;
        }
        let mut all = lock(&self.samples);
        let q = all.entry(node).or_default();
        for s in batch {
            let recent = q.iter().rev().take(2 * augur_proto::wire::MAX_HEALTH_BATCH);
            if recent.map(|k| k.ts_ms).any(|t| t == s.ts_ms) {
                continue;
            }
            if q.len() >= cap {
                q.pop_front();
            }
            q.push_back(s);
        }
    }

    /// The health samples this leader holds for `node`, oldest first.
    pub fn samples(&self, node: NodeId) -> Vec<augur_predictor::HealthSample> {
        lock(&self.samples)
            .get(&node)
            .map(|q| q.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Notes this member's Raft role: leading in `term` (from `now` if it just began), or not
    /// leading. Whatever was kept in memory belongs to one leadership and is dropped when it
    /// begins or ends.
    pub(crate) fn set_leadership(&self, term: Option<u64>, now: Instant) {
        let mut current = lock(&self.leadership);
        let next = match (term, *current) {
            (Some(t), Some(l)) if l.term == t => return,
            (Some(t), _) => Some(Leadership {
                term: t,
                since: now,
            }),
            (None, None) => return,
            (None, Some(_)) => None,
        };
        *current = next;
        drop(current);
        lock(&self.seen).clear();
        self.grants.clear();
        lock(&self.probes).clear();
        lock(&self.samples).clear();
        *lock(&self.memory) = MoverMemory::default();
        lock(&self.stuck).clear();
        *lock(&self.risk) = risk::RiskMemory::default();
        *lock(&self.capacity) = capacity::CapacityMemory::default();
        *lock(&self.view) = ControlView::default();
        self.metrics.reset(next.is_some());
        match next {
            Some(l) => tracing::info!(term = l.term, "leading: control plane active"),
            None => tracing::info!("no longer leading: control plane idle"),
        }
    }

    /// The latest report from each node: its last heartbeat or its last answered probe,
    /// whichever is newer.
    pub fn reports(&self) -> Reports {
        let mut latest: HashMap<NodeId, (Instant, NodeReport)> = lock(&self.seen)
            .iter()
            .map(|(id, s)| (*id, (s.at, s.report.clone())))
            .collect();
        for (id, p) in lock(&self.probes).iter() {
            if let Some((at, report)) = &p.ok {
                if latest.get(id).is_none_or(|(t, _)| t < at) {
                    latest.insert(*id, (*at, report.clone()));
                }
            }
        }
        Reports {
            by_node: latest.into_iter().map(|(id, (_, r))| (id, r)).collect(),
        }
    }

    /// Records a probe's outcome for `node`.
    pub(crate) fn record_probe(
        &self,
        node: NodeId,
        at: Instant,
        result: Result<NodeReport, String>,
    ) {
        let mut probes = lock(&self.probes);
        let entry = probes.entry(node).or_default();
        match result {
            Ok(report) => {
                entry.ok = Some((at, report));
                entry.failed = None;
            }
            Err(why) => entry.failed = Some((at, why)),
        }
    }

    /// The last probe outcome for `node`.
    pub fn last_probe(&self, node: NodeId) -> Option<Probed> {
        lock(&self.probes).get(&node).cloned()
    }

    fn with_memory<T>(&self, f: impl FnOnce(&mut MoverMemory) -> T) -> T {
        f(&mut lock(&self.memory))
    }

    /// Notes that this leader removed `nodes` from `shard` at `now` (re-replication counts
    /// the shard's delay from the loss).
    ///
    /// Only replicas of `record` (the shard before the removal) count: a learner removed is
    /// no lost replica, its move failed and the move's backoff already paces the next
    /// attempt. The earliest loss is kept: a second one before the shard is back at rf must
    /// not start the down delay again, or a shard left on one copy would wait longer than
    /// the one that lost a single replica.
    pub(crate) fn note_lost(&self, record: &Shard, nodes: &[NodeId], now: Instant) {
        if let Some(n) = nodes.iter().rev().find(|n| record.replicas.contains(n)) {
            self.with_memory(|m| {
                m.lost.entry(record.id).or_insert((*n, now));
            });
        }
    }

    /// The replica this leader last removed from `shard`, and when.
    pub fn lost_replica(&self, shard: ShardId) -> Option<(NodeId, Instant)> {
        self.with_memory(|m| m.lost.get(&shard).copied())
    }

    /// Whether `shard` was already logged as stuck; marks it logged.
    fn stuck_logged(&self, shard: ShardId) -> bool {
        !lock(&self.stuck).insert(shard)
    }

    fn forget_stuck_except(&self, still: &[ShardId]) {
        // A set, not `still.contains`: with many stuck shards the scan was quadratic.
        let still: HashSet<ShardId> = still.iter().copied().collect();
        lock(&self.stuck).retain(|s| still.contains(s));
    }

    /// Probes `nodes` at once (each within the call timeout) and records what they say. A
    /// node answering for another id is recorded as a failure: its address was reused.
    pub(crate) async fn probe_nodes(
        &self,
        cluster: &Cluster,
        nodes: &[NodeId],
        storage: &dyn StorageCalls,
    ) {
        let timeout = Duration::from_millis(self.settings.storage_call_timeout_ms);
        let calls = nodes.iter().filter_map(|id| {
            let addr = cluster.nodes.get(id)?.addrs.first()?.clone();
            Some(async move {
                let result = match tokio::time::timeout(timeout, storage.probe(&addr)).await {
                    Ok(Ok(r)) if r.node != *id => {
                        Err(format!("{addr} answered as node {}", r.node))
                    }
                    Ok(Ok(r)) => r.validate().map(|()| r).map_err(|e| e.to_string()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(format!("no answer from {addr} within {timeout:?}")),
                };
                (*id, result)
            })
        });
        for (id, result) in join_all(calls).await {
            if let Err(e) = &result {
                tracing::debug!(node = %id, error = %e, "probe failed");
            }
            self.record_probe(id, Instant::now(), result);
        }
    }

    /// One probe pass over every registered node that is not Removed.
    pub(crate) async fn probe_tick(
        &self,
        meta: &dyn MetaStore,
        storage: &dyn StorageCalls,
    ) -> Result<(), ApiError> {
        let cluster = meta.nodes().await?;
        let nodes: Vec<NodeId> = cluster
            .nodes
            .values()
            .filter(|n| n.state != NodeState::Removed)
            .map(|n| n.id)
            .collect();
        self.probe_nodes(&cluster, &nodes, storage).await;
        Ok(())
    }

    /// One repair pass and a refreshed view.
    pub(crate) async fn repair_and_view(
        &self,
        meta: &dyn MetaStore,
        leader_since: Instant,
    ) -> Result<(), ApiError> {
        let now = Instant::now();
        let mut cluster = meta.cluster().await?;
        let reports = self.reports();
        let out = self.repair_tick(meta, &cluster, &reports, now).await?;
        if out.reconfigured > 0 {
            cluster = meta.cluster().await?;
        }
        self.update_view(&cluster, &out.stuck, leader_since, now);
        Ok(())
    }

    fn set_view(&self, view: ControlView) {
        *lock(&self.view) = view;
    }
}

/// Starts the control plane's loops on a metadata member. They idle unless it leads.
pub(crate) fn spawn(node: MetaNode) {
    let s = node.control.settings.clone();
    let storage: Arc<dyn StorageCalls> = Arc::new(QuicStorage::new(
        &node.peers,
        Duration::from_millis(s.storage_call_timeout_ms),
    ));
    tokio::spawn(watch_leadership(node.clone()));

    let repair_every = Duration::from_millis(s.repair_interval_ms);
    let mut last_repair: Option<Instant> = None;
    every(node.clone(), s.liveness_tick_ms, move |n, since| {
        let due = last_repair.is_none_or(|t| t.elapsed() >= repair_every);
        if due {
            last_repair = Some(Instant::now());
        }
        async move {
            let down = n.control.liveness_tick(&n, since, Instant::now()).await?;
            if down > 0 || due {
                n.control.repair_and_view(&n, since).await?;
            }
            Ok(())
        }
    });

    every(
        node.clone(),
        s.risk_interval_ms,
        move |n, since| async move {
            n.control
                .risk_tick(&n, since.elapsed(), registry::now_ms())
                .await
                .map(|_| ())
        },
    );

    every(
        node.clone(),
        s.capacity_interval_ms,
        move |n, _| async move {
            if let Some((hook, request)) = n
                .control
                .capacity_tick(&n, Instant::now(), registry::now_ms())
                .await?
            {
                tokio::spawn(n.control.clone().call_hook(hook, request));
            }
            Ok(())
        },
    );

    let probes = storage.clone();
    every(node.clone(), s.probe_interval_ms, move |n, _| {
        let storage = probes.clone();
        async move { n.control.probe_tick(&n, storage.as_ref()).await }
    });

    tokio::spawn(mover_loop(node, storage));
}

/// The mover's passes while this member leads: every `mover_interval_ms`, and sooner when a
/// pass made progress (the next step of a move is often ready at once), when one waits on
/// something that takes milliseconds (a checkpoint being applied), or when a heartbeat
/// reported a finished copy. So a move costs its copy plus a few round trips, not a tick per
/// step.
async fn mover_loop(node: MetaNode, storage: Arc<dyn StorageCalls>) {
    let interval = Duration::from_millis(node.control.settings.mover_interval_ms);
    let mut shutdown = node.shutdown_signal();
    let mut next = tokio::time::Instant::now() + interval;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = node.control.mover_wake.notified() => {}
            _ = shutdown.changed() => {}
        }
        if node.is_shutting_down() || *shutdown.borrow() {
            return;
        }
        let mut pace = mover::Pace::Idle;
        if let (Some(since), true) = (node.control.leading_since(), node.is_leader()) {
            let pass = node
                .control
                .mover_tick(
                    &node,
                    storage.as_ref(),
                    since,
                    Instant::now(),
                    registry::now_ms(),
                )
                .await;
            match pass {
                Ok(p) => pace = p,
                Err(ApiError::NotLeader { .. }) => {}
                Err(e) => tracing::warn!(error = %e, "mover pass failed; retrying next tick"),
            }
        }
        next = tokio::time::Instant::now() + pace.delay().unwrap_or(interval).min(interval);
    }
}

/// Runs `f` every `interval_ms` while `node` leads, until it shuts down.
fn every<F, Fut>(node: MetaNode, interval_ms: u64, mut f: F)
where
    F: FnMut(MetaNode, Instant) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), ApiError>> + Send,
{
    tokio::spawn(async move {
        let mut shutdown = node.shutdown_signal();
        let mut ticker = tokio::time::interval(Duration::from_millis(interval_ms));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = shutdown.changed() => {}
            }
            if node.is_shutting_down() || *shutdown.borrow() {
                return;
            }
            let Some(since) = node.control.leading_since() else {
                continue;
            };
            if !node.is_leader() {
                continue;
            }
            match f(node.clone(), since).await {
                Ok(()) => {}
                Err(ApiError::NotLeader { .. }) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "control plane pass failed; retrying next tick")
                }
            }
        }
    });
}

/// Follows this member's Raft role into [`Control::set_leadership`].
///
/// It watches openraft's server metrics, which change only with the role, vote, leader or
/// membership: the full metrics change with every append and commit, and waking this task
/// for each cost the leader CPU on every write.
async fn watch_leadership(node: MetaNode) {
    let mut rx = node.raft.server_metrics();
    let mut shutdown = node.shutdown_signal();
    loop {
        let term = {
            let m = rx.borrow_watched();
            (m.state == ServerState::Leader && m.current_leader == Some(node.id))
                .then_some(m.vote.leader_id.term)
        };
        node.control.set_leadership(term, Instant::now());
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return },
            _ = shutdown.changed() => {
                node.control.set_leadership(None, Instant::now());
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch of health samples sent twice (its first attempt timed out after the leader
    /// took it) enters the window once; newer samples still do.
    #[test]
    fn a_health_batch_sent_again_is_kept_once() {
        let control = Control::for_tests(ControlSettings::default());
        let sample = |ts_ms| augur_predictor::HealthSample {
            ts_ms,
            ..Default::default()
        };
        let batch = vec![sample(1_000), sample(6_000)];
        control.note_samples(NodeId(3), batch.clone());
        control.note_samples(NodeId(3), batch);
        control.note_samples(NodeId(3), vec![sample(6_000), sample(11_000)]);
        // The node's clock stepped back: its samples still count.
        control.note_samples(NodeId(3), vec![sample(4_000)]);
        let kept: Vec<i64> = control.samples(NodeId(3)).iter().map(|s| s.ts_ms).collect();
        assert_eq!(kept, vec![1_000, 6_000, 11_000, 4_000]);
    }
}
