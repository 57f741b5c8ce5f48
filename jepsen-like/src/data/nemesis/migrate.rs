//! The `migrate` nemesis: a storage node drained through the operator command
//! (`augurctl node drain`, [`Client::node_command`]) while the other streams kill, pause and
//! cut off nodes, so the planner's hand-offs and the migrator's copies, verifications and
//! commits run under faults; undrained at heal.
//!
//! Rules, so that a run stays one the cluster is built to survive: at most one node drained
//! at a time (refused while any node is Draining, or while an earlier undrain has not
//! succeeded), and only when the nodes that still accept replicas (Up, not cordoned) are
//! enough to hold the replication factor without it. The node is the primary of a shard a
//! key in use lives on when there is one, so the drain starts with hand-offs under client
//! traffic.
//!
//! A fault ends in one of two ways, alternating (the schedule's `finish`): undrained at once,
//! which must cancel the moves still unfinished; or left until the drain has emptied the
//! node (bounded by [`FINISH_WAIT`]), then undrained, so the node takes replicas again later.
//! Either way the undrain is retried until it lands, since a node left Draining would be
//! emptied for good.
//!
//! What the drain did is sampled from the records every [`SAMPLE_EVERY`] (the migration
//! table keeps only a few finished moves per shard) until the undrain's cancellations have
//! landed, and kept as a [`MigrateFault`] for `results.json`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use augur_client::{Client, NodeCommand, NodeCommandError, NodeCommandOutcome};
use augur_proto::{
    Migration, MigrationId, MigrationKind, MigrationState, Node, NodeId, NodeState, ShardId,
};

use super::{lock, stop_requested, DataNemesis, Undo};
use crate::data::cluster::Proc;
use crate::nemesis::NemesisError;
use crate::results::{FaultStep, MigrateFault};

/// How often the records are sampled while a node is drained.
const SAMPLE_EVERY: Duration = Duration::from_millis(500);
/// How long a `finish` heal waits for the drain to empty the node before undraining anyway.
const FINISH_WAIT: Duration = Duration::from_secs(40);
/// How long a drain or an undrain is retried while its outcome is unknown (the metadata
/// leader may be cut off or killed).
const UNDRAIN_WAIT: Duration = Duration::from_secs(15);
/// How long after the undrain the drain's moves are watched until each is terminal (the
/// cancellations take a mover pass or two).
const SETTLE_WAIT: Duration = Duration::from_secs(10);
/// The reason recorded on the node by the drain and the undrain.
const REASON: &str = "augur-jepsen migrate nemesis";

/// What the records showed of one drain so far.
#[derive(Debug, Default)]
struct Seen {
    /// Migrations that existed before the drain: not its moves.
    before: BTreeSet<MigrationId>,
    /// The drain's moves, as last seen.
    moves: BTreeMap<MigrationId, Migration>,
    /// Shards the node led when drained.
    led: BTreeSet<ShardId>,
    /// Of those, the ones seen led by another node.
    moved: BTreeSet<ShardId>,
    /// Replicas and learner copies the node held at the last sample.
    held: usize,
    /// When the node was first seen holding nothing, after the drain.
    emptied_after_ms: Option<u64>,
    /// Set once undrained: emptiness seen later is not the drain's.
    undrained: bool,
    /// The node's state at the last sample.
    state: Option<NodeState>,
    /// When the node's record says its drain began (`state_since_ms` of the first Draining
    /// sample).
    draining_since: Option<u64>,
    /// The node left Draining at some point (Down, or undrained), though it may be
    /// Draining again: a node declared Down resumes its drain when it returns, having
    /// meanwhile had replicas dropped as Down's, so its emptiness is not the drain's alone.
    interrupted: bool,
}

impl Seen {
    fn terminal(m: &Migration) -> bool {
        matches!(m.state, MigrationState::Committed | MigrationState::Aborted)
    }

    fn count(&self, f: impl Fn(&Migration) -> bool) -> usize {
        self.moves.values().filter(|m| f(m)).count()
    }

    fn summary(&self) -> String {
        format!(
            "{} moves: {} committed, {} aborted, {} unfinished",
            self.moves.len(),
            self.count(|m| m.state == MigrationState::Committed),
            self.count(|m| m.state == MigrationState::Aborted),
            self.count(|m| !Seen::terminal(m))
        )
    }
}

/// The node drained now, and what is watching its drain.
#[derive(Debug)]
pub(super) struct Drained {
    node: NodeId,
    /// The fault's start, ms from the run's start.
    start_ms: u64,
    finish: bool,
    drained_at: Instant,
    primaries: usize,
    replicas: usize,
    seen: Arc<Mutex<Seen>>,
    /// `None` when the drain's outcome is unknown: nothing is watched, the undrain is owed.
    watch: Option<(Arc<AtomicBool>, tokio::task::JoinHandle<()>)>,
}

/// One look at the records: the drain's moves and where the node's replicas are.
async fn sample(client: &Client, node: NodeId, seen: &Mutex<Seen>, since: Instant) {
    if let Ok(migrations) = client.list_migrations().await {
        let mut s = lock(seen);
        for m in migrations {
            if m.kind == MigrationKind::Drain && m.from == node && !s.before.contains(&m.id) {
                s.moves.insert(m.id, m);
            }
        }
    }
    if let Ok(nodes) = client.list_nodes().await {
        let mut s = lock(seen);
        let n = nodes.iter().find(|n| n.id == node);
        s.state = n.map(|n| n.state);
        // A Down state the samples missed still shows: the drain resumed on the node's
        // return has a later `state_since_ms`.
        match (n.map(|n| (n.state, n.state_since_ms)), s.draining_since) {
            (Some((NodeState::Draining, since)), None) => s.draining_since = Some(since),
            (Some((NodeState::Draining, since)), Some(first)) if since == first => {}
            _ => s.interrupted = true,
        }
    }
    if let Ok(shards) = client.list_shards().await {
        let held = shards
            .values()
            .filter(|s| s.replicas.contains(&node) || s.learners.contains(&node))
            .count();
        let mut s = lock(seen);
        s.held = held;
        for (id, shard) in &shards {
            if s.led.contains(id) && shard.replicas.first() != Some(&node) {
                s.moved.insert(*id);
            }
        }
        // Empty while Draining since the drain: emptied by the drain, not dropped from its
        // shards as Down.
        let draining = s.state == Some(NodeState::Draining) && !s.interrupted;
        if held == 0 && draining && !s.undrained && s.emptied_after_ms.is_none() {
            s.emptied_after_ms = Some(since.elapsed().as_millis() as u64);
        }
    }
}

async fn watch(
    client: Client,
    node: NodeId,
    seen: Arc<Mutex<Seen>>,
    since: Instant,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::Relaxed) {
        sample(&client, node, &seen, since).await;
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
}

/// Whether the process is stopped (SIGSTOP): state `T` in `/proc/<pid>/stat`.
fn stopped(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('T'))
    })
}

impl DataNemesis {
    /// How another fault disturbs storage node `id` now, if it does: not running, paused,
    /// or the process a partition in effect cuts off.
    fn disturbed(&self, id: u64) -> Option<&'static str> {
        let p = Proc::Storage(id);
        let Some(pid) = self.cluster.pid(p) else {
            return Some("not running");
        };
        if stopped(pid) {
            return Some("paused");
        }
        if lock(&self.partitions)
            .values()
            .any(|(victim, _)| *victim == p)
        {
            return Some("cut off");
        }
        None
    }

    /// Drains a storage node chosen with `pick` (see the module documentation).
    pub(super) async fn drain(
        &self,
        pick: u64,
        finish: bool,
        steps: &mut Vec<FaultStep>,
    ) -> Result<(String, Undo), NemesisError> {
        // An undrain still owed (a drain whose outcome stayed unknown): settle it first.
        if let Some(owed) = self.owed_undrain() {
            self.undrain(owed, steps, None).await.map_err(|e| {
                NemesisError::Refused(format!(
                    "storage-{owed} may still be drained ({e}): one drained node at a time"
                ))
            })?;
        }
        let control = |e: augur_client::Error| NemesisError::Control(format!("metadata: {e}"));
        let nodes: BTreeMap<NodeId, Node> = crate::data::converge::nodes(&self.client)
            .await
            .map_err(control)?;
        if let Some(n) = nodes.values().find(|n| n.state == NodeState::Draining) {
            return Err(NemesisError::Refused(format!(
                "storage-{} is Draining already ({:?}: {}): one drained node at a time",
                n.id, n.cause.origin, n.cause.reason
            )));
        }
        let accepts = |n: &Node| n.state == NodeState::Up && !n.cordoned;
        let shards = self.client.list_shards().await.map_err(control)?;
        let leads = |id: u64| {
            shards
                .values()
                .filter(|s| s.replicas.first() == Some(&NodeId(id)))
                .count()
        };
        // The primary of a shard in use (hand-offs under traffic), else a node leading some
        // shard, else any; one Up and not disturbed by another fault right now if there is
        // one (a drain of a node already killed or cut off moves nothing), else any Up one.
        let (first, why) = self.storage_target(pick - pick % 4).await;
        let count = self.cluster.shape.storage.max(1);
        let mut order: Vec<u64> = (0..count).map(|k| 1 + (pick / 4 + k) % count).collect();
        order.sort_by_key(|id| (*id != first, leads(*id) == 0));
        let up: Vec<u64> = order
            .into_iter()
            .filter(|id| nodes.get(&NodeId(*id)).is_some_and(accepts))
            .collect();
        let target = up
            .iter()
            .copied()
            .find(|id| self.disturbed(*id).is_none())
            .or(up.first().copied())
            .ok_or_else(|| {
                NemesisError::Refused("no storage node is Up and uncordoned to drain".into())
            })?;
        let why = if target == first {
            why
        } else {
            let state = nodes.get(&NodeId(first)).map(|n| n.state);
            let reason = match self.disturbed(first) {
                Some(d) if state == Some(NodeState::Up) => d.to_string(),
                _ => state.map_or("not registered".into(), |s| format!("{s:?}")),
            };
            format!(
                "storage-{first} ({why}) is {reason}; this one leads {} shard(s)",
                leads(target)
            )
        };
        let rf = self.layout.rf as usize;
        let holders = nodes
            .values()
            .filter(|n| n.id != NodeId(target) && accepts(n))
            .count();
        if holders < rf {
            return Err(NemesisError::Refused(format!(
                "draining storage-{target} would leave {holders} node(s) accepting replicas, \
                 fewer than rf {rf}"
            )));
        }
        let node = NodeId(target);
        let before: BTreeSet<MigrationId> = self
            .client
            .list_migrations()
            .await
            .map_err(control)?
            .into_iter()
            .map(|m| m.id)
            .collect();
        let led: BTreeSet<ShardId> = shards
            .values()
            .filter(|s| s.replicas.first() == Some(&node))
            .map(|s| s.id)
            .collect();
        let replicas = shards
            .values()
            .filter(|s| s.replicas.contains(&node))
            .count();
        let seen = Arc::new(Mutex::new(Seen {
            before,
            led: led.clone(),
            held: replicas,
            ..Seen::default()
        }));
        let mut drained = Drained {
            node,
            start_ms: self.ms(),
            finish,
            drained_at: Instant::now(),
            primaries: led.len(),
            replicas,
            seen: Arc::clone(&seen),
            watch: None,
        };
        // A drain is idempotent: one whose outcome is unknown (the metadata leader killed or
        // cut off meanwhile) is asked again until the answer is definite.
        let deadline = Instant::now() + UNDRAIN_WAIT;
        let answer = loop {
            match self
                .client
                .node_command(node, NodeCommand::Drain, Some(REASON))
                .await
            {
                Err(NodeCommandError::Client(_)) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(300)).await
                }
                answer => break answer,
            }
        };
        match answer {
            Ok(outcome) => {
                let n = match outcome {
                    NodeCommandOutcome::Changed(n) | NodeCommandOutcome::Unchanged(n) => n,
                };
                self.step(
                    steps,
                    format!(
                        "drained storage-{target}: {:?}, leading {} shard(s), holding {replicas} \
                         replica(s)",
                        n.state,
                        led.len()
                    ),
                );
                drained.start_ms = steps.last().map_or(drained.start_ms, |s| s.at_ms);
            }
            // Refused: nothing changed.
            Err(
                e @ (NodeCommandError::UnknownNode(_)
                | NodeCommandError::NotLive { .. }
                | NodeCommandError::NotDraining { .. }
                | NodeCommandError::Contended(_)),
            ) => {
                return Err(NemesisError::Refused(format!(
                    "drain of storage-{target}: {e}"
                )))
            }
            // The write may have landed: the undrain is owed either way.
            Err(e) => {
                *lock(&self.drained) = Some(drained);
                return Err(NemesisError::Control(format!(
                    "drain of storage-{target}, outcome unknown (undrained at the final heal): {e}"
                )));
            }
        }
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(watch(
            self.client.clone(),
            node,
            seen,
            drained.drained_at,
            Arc::clone(&stop),
        ));
        drained.watch = Some((stop, task));
        *lock(&self.drained) = Some(drained);
        let end = if finish {
            "let the drain empty it, then undrain"
        } else {
            "undrain, cancelling unfinished moves"
        };
        Ok((
            format!("drain storage-{target} ({why}); at heal: {end}"),
            Undo::Undrain(target),
        ))
    }

    /// Heals a drain: waits for it to empty the node if it was to finish, undrains (retried
    /// for [`UNDRAIN_WAIT`]), watches the cancellations land and records what the drain did.
    pub(super) async fn undrain(
        &self,
        target: u64,
        steps: &mut Vec<FaultStep>,
        stop: Option<&AtomicBool>,
    ) -> Result<(), String> {
        let node = NodeId(target);
        let (finish, seen, since) = match lock(&self.drained).as_ref() {
            Some(d) if d.node == node => (
                d.finish && d.watch.is_some(),
                Arc::clone(&d.seen),
                d.drained_at,
            ),
            _ => return Ok(()),
        };
        if finish {
            let deadline = Instant::now() + FINISH_WAIT;
            loop {
                let (emptied, held, state, interrupted) = {
                    let s = lock(&seen);
                    (s.emptied_after_ms, s.held, s.state, s.interrupted)
                };
                if let Some(after) = emptied {
                    let summary = lock(&seen).summary();
                    self.step(
                        steps,
                        format!("storage-{target} emptied {after} ms after the drain ({summary})"),
                    );
                    break;
                }
                // Declared Down (killed, paused, cut off), or back Up: the drain will not
                // empty the node now (a Down node resumes it on its return, Draining
                // again; the undrain below ends that).
                if let Some(state) = state.filter(|s| *s != NodeState::Draining || interrupted) {
                    self.step(
                        steps,
                        format!(
                            "storage-{target} is {state:?}, its drain interrupted ({held} \
                             replica(s) left)"
                        ),
                    );
                    break;
                }
                if stop_requested(stop) || Instant::now() >= deadline {
                    let why = if stop_requested(stop) {
                        "the workload ended".to_string()
                    } else {
                        format!("{} s passed", FINISH_WAIT.as_secs())
                    };
                    self.step(
                        steps,
                        format!(
                            "storage-{target} not emptied ({held} replica(s) left) when {why}: \
                             undraining"
                        ),
                    );
                    break;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
        let deadline = Instant::now() + UNDRAIN_WAIT;
        let undrain = loop {
            let outcome = self
                .client
                .node_command(node, NodeCommand::Undrain, Some(REASON))
                .await;
            let done = match outcome {
                Ok(NodeCommandOutcome::Changed(n)) => {
                    Some(format!("undrained storage-{target}: {:?} again", n.state))
                }
                Ok(NodeCommandOutcome::Unchanged(n)) => Some(format!(
                    "storage-{target} is {:?} already: nothing to undrain",
                    n.state
                )),
                // Down with no drain to resume (its undrain already landed), or Removed.
                Err(NodeCommandError::NotLive { state, .. }) => Some(format!(
                    "storage-{target} is {state:?}: its drain ended when it became {state:?}"
                )),
                Err(NodeCommandError::NotDraining { state, origin, .. }) => Some(format!(
                    "storage-{target} is {state:?} ({origin:?}), not draining"
                )),
                Err(e) if Instant::now() >= deadline => {
                    return Err(format!("undrain of storage-{target}: {e}"));
                }
                Err(_) => None,
            };
            if let Some(done) = done {
                break done;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        };
        self.step(steps, undrain.clone());
        let held_at_undrain = {
            let mut s = lock(&seen);
            s.undrained = true;
            s.held
        };
        let Some(drained) = lock(&self.drained).take() else {
            return Ok(());
        };
        let Some((watch_stop, task)) = drained.watch else {
            return Ok(());
        };
        // The moves still in flight are cancelled by the mover's next passes.
        let deadline = Instant::now() + SETTLE_WAIT;
        loop {
            sample(&self.client, node, &seen, since).await;
            let unfinished = lock(&seen).count(|m| !Seen::terminal(m));
            if unfinished == 0 || Instant::now() >= deadline || stop_requested(stop) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        watch_stop.store(true, Ordering::Relaxed);
        let _ = task.await;
        let s = lock(&seen);
        self.step(steps, format!("drain of storage-{target}: {}", s.summary()));
        lock(&self.migrate_log).push(MigrateFault {
            start_ms: drained.start_ms,
            node: target,
            finish: drained.finish,
            primaries_at_drain: drained.primaries,
            replicas_at_drain: drained.replicas,
            primaries_moved: s.moved.len(),
            moves_planned: s.moves.len(),
            moves_started: s.count(|m| m.started_ms != 0),
            moves_committed: s.count(|m| m.state == MigrationState::Committed),
            moves_aborted: s.count(|m| m.state == MigrationState::Aborted),
            moves_unfinished: s.count(|m| !Seen::terminal(m)),
            emptied: s.emptied_after_ms.is_some(),
            emptied_after_ms: s.emptied_after_ms,
            replicas_at_undrain: held_at_undrain,
            undrain,
        });
        Ok(())
    }

    /// The node whose undrain is still owed, if any (the final heal's business).
    pub(super) fn owed_undrain(&self) -> Option<u64> {
        lock(&self.drained).as_ref().map(|d| d.node.0)
    }

    /// What every migrate fault's drain did, in start order.
    pub fn migrate_faults(&self) -> Vec<MigrateFault> {
        let mut v = lock(&self.migrate_log).clone();
        v.sort_by_key(|f| f.start_ms);
        v
    }
}
