//! The nemesis side of a run: [`ClusterControl`] over the Augur client, and the thread that
//! walks the fault schedule.
//!
//! The nemesis primitives are synchronous (signals, `nft`, files), so the schedule runs on its
//! own OS thread and reaches the async client through the runtime's [`Handle`]. The workload
//! keeps running on the runtime meanwhile.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use augur_client::Client;
use augur_proto::MemberId;
use tokio::runtime::Handle;

use super::cluster::{self, ClusterLayout};
use super::wiped;
use crate::nemesis::executor::{ActiveFault, ClusterControl, Nemesis, Step};
use crate::nemesis::schedule::ScheduledFault;
use crate::nemesis::timeline::{timeline, Action};
use crate::nemesis::NemesisError;
use crate::results::{FaultRecord, FaultStep};

/// Bound on one membership call (the client retries it within its own deadline).
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a re-added learner may take to catch up before the re-add counts as failed.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(30);

/// Cluster control through an admin client, for the nemesis thread.
pub struct Control {
    handle: Handle,
    client: Client,
    layout: Arc<ClusterLayout>,
    watches: HashMap<usize, wiped::Watch>,
    violations: Arc<Mutex<Vec<String>>>,
}

impl Control {
    /// Control over `layout` through `client`, running async calls on `handle`.
    pub fn new(handle: Handle, client: Client, layout: Arc<ClusterLayout>) -> Self {
        Control {
            handle,
            client,
            layout,
            watches: HashMap::new(),
            violations: Arc::default(),
        }
    }

    /// Where the watches on wiped members record what breaks the rule (see [`wiped`]); shared,
    /// so the harness can read it whatever became of the nemesis.
    pub fn violations(&self) -> Arc<Mutex<Vec<String>>> {
        Arc::clone(&self.violations)
    }

    fn member(&self, node: usize) -> Result<(MemberId, String, String), String> {
        let n = self.layout.node(node).map_err(|e| e.to_string())?;
        Ok((MemberId(n.id), n.endpoint(), n.name.clone()))
    }
}

/// The leader's committed index, asked of the leader itself: any other member (a wiped one
/// above all) may know less.
async fn leader_committed(client: &Client) -> Result<u64, String> {
    let any = client.status(None).await.map_err(|e| e.to_string())?;
    let leader = any
        .leader
        .ok_or_else(|| format!("member {} knows no leader", any.id))?;
    let s = client
        .status(Some(&leader.addr))
        .await
        .map_err(|e| format!("leader {}: {e}", leader.id))?;
    if s.role != "leader" {
        return Err(format!("member {} is no longer the leader", leader.id));
    }
    Ok(s.committed)
}

/// The operator path for one member (as `augur local readd`): remove the entry the membership
/// has for an older incarnation of it, add it as a learner (the leader asks it for its
/// identity), wait until it has applied what the leader had committed and no longer waits,
/// promote it. Each call that changed something is a step. Safe to repeat after a failure: a
/// member already present under its current incarnation is not removed again.
async fn readd(
    client: &Client,
    id: MemberId,
    endpoint: &str,
    name: &str,
    steps: &mut Vec<Step>,
) -> Result<(), String> {
    // A member restarted a moment ago (by the final heal) may not listen yet.
    let asked = Instant::now();
    let me = loop {
        match client.identity(endpoint).await {
            Ok(me) => break me,
            Err(e) if asked.elapsed() >= MEMBERSHIP_TIMEOUT => {
                return Err(format!("asking {name} who it is: {e}"))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    let members = client
        .members()
        .await
        .map_err(|e| format!("listing members: {e}"))?;
    let entry = members.iter().find(|m| m.id == id);
    let mut voter = false;
    match entry {
        Some(m) if m.incarnation == me.incarnation => voter = m.voter,
        Some(m) => {
            client
                .remove_member(id)
                .await
                .map_err(|e| format!("removing {name}'s old entry: {e}"))?;
            steps.push(Step::now(format!(
                "removed {name}'s old entry (incarnation {:016x})",
                m.incarnation
            )));
        }
        None => {}
    }
    if entry.is_none_or(|m| m.incarnation != me.incarnation) {
        client
            .add_learner(id, endpoint.to_string())
            .await
            .map_err(|e| format!("adding {name} as a learner: {e}"))?;
        steps.push(Step::now(format!(
            "added {name} as a learner (incarnation {:016x})",
            me.incarnation
        )));
    }
    let deadline = Instant::now() + CATCH_UP_TIMEOUT;
    let target = loop {
        match leader_committed(client).await {
            Ok(c) => break c,
            Err(e) if Instant::now() >= deadline => {
                return Err(format!("no leader to catch {name} up to: {e}"))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    loop {
        if let Ok(s) = client.status(Some(endpoint)).await {
            if s.applied >= target && s.waiting.is_none() {
                steps.push(Step::now(format!(
                    "{name} caught up: applied {} >= the leader's committed {target}",
                    s.applied
                )));
                break;
            }
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{name} did not catch up to {target} within {CATCH_UP_TIMEOUT:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !voter {
        client
            .promote(id)
            .await
            .map_err(|e| format!("promoting {name}: {e}"))?;
        steps.push(Step::now(format!("promoted {name} to voter")));
    }
    Ok(())
}

impl ClusterControl for Control {
    fn leader(&mut self) -> Result<Option<usize>, String> {
        let statuses = self
            .handle
            .block_on(cluster::statuses(&self.client, &self.layout));
        Ok(cluster::leader_of(&self.layout, &statuses))
    }

    fn remove_member(&mut self, node: usize) -> Result<(), String> {
        let (id, _, name) = self.member(node)?;
        // The timer must be created inside the runtime, so inside the future.
        let call =
            async { tokio::time::timeout(MEMBERSHIP_TIMEOUT, self.client.remove_member(id)).await };
        match self.handle.block_on(call) {
            Ok(Ok(())) => {
                tracing::info!(node = %name, "member removed");
                Ok(())
            }
            Ok(Err(e)) => Err(format!("removing {name}: {e}")),
            Err(_) => Err(format!(
                "removing {name}: no answer within {MEMBERSHIP_TIMEOUT:?}"
            )),
        }
    }

    fn wipe_data(&mut self, node: usize) -> Result<(), String> {
        let n = self.layout.node(node).map_err(|e| e.to_string())?;
        match std::fs::remove_dir_all(&n.data_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("wiping {}: {e}", n.data_dir.display())),
        }
        tracing::info!(node = %n.name, dir = %n.data_dir.display(), "member data wiped");
        Ok(())
    }

    fn watch_wiped(&mut self, node: usize) -> Result<(), String> {
        let n = self.layout.node(node).map_err(|e| e.to_string())?.clone();
        let watch = wiped::start(
            &self.handle,
            self.client.clone(),
            n,
            Arc::clone(&self.violations),
        );
        if let Some(old) = self.watches.insert(node, watch) {
            // Not expected (a member is re-added before it is lost again); end it quietly.
            let _ = self.handle.block_on(old.finish());
        }
        Ok(())
    }

    fn add_member(&mut self, node: usize, steps: &mut Vec<Step>) -> Result<(), String> {
        let (id, endpoint, name) = self.member(node)?;
        if let Some(watch) = self.watches.remove(&node) {
            let (_, line) = self.handle.block_on(watch.finish());
            steps.push(Step::now(line));
        }
        let bounded = async {
            tokio::time::timeout(
                MEMBERSHIP_TIMEOUT + CATCH_UP_TIMEOUT,
                readd(&self.client, id, &endpoint, &name, steps),
            )
            .await
        };
        match self.handle.block_on(bounded) {
            Ok(Ok(())) => {
                tracing::info!(node = %name, "member added back");
                Ok(())
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(format!("adding {name} back: timed out")),
        }
    }
}

/// What the nemesis thread hands back.
pub struct NemesisReport {
    /// The nemesis (and with it the node processes).
    pub nemesis: Nemesis<Control>,
    /// Every fault attempted, with its times.
    pub faults: Vec<FaultRecord>,
    /// When the final heal began.
    pub heal_started: Instant,
    /// Errors of the final heal that persisted until its deadline.
    pub heal_errors: Vec<String>,
}

fn ms_since(t0: Instant, at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(t0).as_millis()).unwrap_or(u64::MAX)
}

fn record_steps(t0: Instant, steps: &[Step]) -> Vec<FaultStep> {
    steps
        .iter()
        .map(|s| FaultStep {
            at_ms: ms_since(t0, s.at),
            what: s.what.clone(),
        })
        .collect()
}

/// Sleeps until `t0 + at` or until `stop` is set; false when stopped early.
fn sleep_until(t0: Instant, at: Duration, stop: &AtomicBool) -> bool {
    let when = t0 + at;
    loop {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        let now = Instant::now();
        if now >= when {
            return true;
        }
        std::thread::sleep((when - now).min(Duration::from_millis(100)));
    }
}

/// Walks the schedule: injects each fault at its start, heals it at its end, and records what
/// happened. Faults the machine cannot inject are recorded with `injected: false` and the
/// reason. When `stop` is set (the workload is over) it stops early, healing the faults in
/// effect, and then runs the final heal ([`heal_everything`]) with `heal_timeout`.
///
/// The final heal runs here, on a plain thread, because membership changes block on the
/// async client through the runtime handle, which must not happen on a runtime thread.
pub fn drive(
    mut nemesis: Nemesis<Control>,
    schedule: Vec<ScheduledFault>,
    t0: Instant,
    stop: Arc<AtomicBool>,
    heal_timeout: Duration,
) -> NemesisReport {
    let (mut faults, held) = walk(&mut nemesis, &schedule, t0, &stop);
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(20));
    }
    tracing::info!("final heal");
    let heal_started = Instant::now();
    let mut steps = Vec::new();
    let heal_errors = heal_everything(&mut nemesis, heal_started + heal_timeout, &mut steps);
    // The fault left in effect for the final heal to undo (see `walk`) ends with it, and the
    // final heal's steps (a re-add) belong to it.
    if let Some(last) = held.and_then(|i| faults.get_mut(i)) {
        last.steps.extend(record_steps(t0, &steps));
        if heal_errors.is_empty() {
            last.end_ms = Some(ms_since(t0, Instant::now()));
            last.note = Some("in effect until the final heal".into());
        }
    }
    NemesisReport {
        nemesis,
        faults,
        heal_started,
        heal_errors,
    }
}

/// Injects `planned`, records the attempt, and returns the fault if it is now in effect.
fn inject_one(
    nemesis: &mut Nemesis<Control>,
    planned: &ScheduledFault,
    t0: Instant,
) -> (FaultRecord, Option<ActiveFault>) {
    let mut record = FaultRecord {
        kind: planned.fault.kind().name().to_string(),
        description: planned.fault.describe(),
        start_ms: ms_since(t0, Instant::now()),
        end_ms: None,
        injected: false,
        note: None,
        recovered_after_ms: None,
        steps: Vec::new(),
    };
    // A re-add that failed earlier leaves its member lost; try again before losing another.
    if planned.fault.loses_member().is_some() && !nemesis.lost_members().is_empty() {
        let mut steps = Vec::new();
        for e in nemesis.heal_lost(&mut steps) {
            tracing::warn!(error = %e, "re-adding a member left lost by a failed heal");
        }
        record.steps = record_steps(t0, &steps);
    }
    match nemesis.inject(&planned.fault) {
        Ok(active) => {
            tracing::info!(fault = %active.description, "fault injected");
            record.description.clone_from(&active.description);
            record.injected = true;
            record.steps.extend(record_steps(t0, &active.steps));
            (record, Some(active))
        }
        Err(e) => {
            if e.is_unavailable() {
                tracing::info!(fault = %record.description, reason = %e, "fault not injected");
            } else {
                tracing::warn!(fault = %record.description, error = %e, "fault injection failed");
            }
            record.end_ms = Some(ms_since(t0, Instant::now()));
            record.note = Some(e.to_string());
            (record, None)
        }
    }
}

/// Heals one fault at the end of its period and completes its record. A membership fault
/// whose injection failed may still have left its member removed or wiped: the member is
/// added back then, like an injected one.
fn heal_one(
    nemesis: &mut Nemesis<Control>,
    planned: &ScheduledFault,
    active: Option<ActiveFault>,
    record: &mut FaultRecord,
    t0: Instant,
) {
    let Some(mut active) = active else {
        if planned.fault.loses_member().is_some() && !nemesis.lost_members().is_empty() {
            let mut steps = Vec::new();
            let errors = nemesis.heal_lost(&mut steps);
            for e in &errors {
                tracing::warn!(error = %e, "re-adding after a failed injection");
            }
            record.steps.extend(record_steps(t0, &steps));
        }
        return;
    };
    let done = active.steps.len();
    let healed = nemesis.heal(&mut active);
    record.steps.extend(record_steps(t0, &active.steps[done..]));
    match healed {
        Ok(()) => {
            record.end_ms = Some(ms_since(t0, Instant::now()));
            tracing::info!(fault = %active.description, "fault healed");
        }
        Err(e) => {
            tracing::warn!(fault = %active.description, error = %e, "heal failed; the final heal will retry");
            record.note = Some(format!("heal failed: {e}"));
        }
    }
}

/// Injects and heals the scheduled faults in [`timeline`] order, except that the fault healed
/// last stays in effect until the workload ends: the final heal then has something real to
/// undo, and the recovery time it measures is the time to come back from a fault, as in
/// Jepsen. Returns the records in schedule order and the index of the record left in effect.
fn walk(
    nemesis: &mut Nemesis<Control>,
    schedule: &[ScheduledFault],
    t0: Instant,
    stop: &AtomicBool,
) -> (Vec<FaultRecord>, Option<usize>) {
    let events = timeline(schedule);
    let held = events
        .iter()
        .rev()
        .find(|e| e.action == Action::Heal)
        .map(|e| e.fault);
    let mut records: BTreeMap<usize, FaultRecord> = BTreeMap::new();
    // In effect, in injection order (so that an early stop heals the newest first).
    let mut active: Vec<(usize, Option<ActiveFault>)> = Vec::new();
    for e in events {
        if !sleep_until(t0, e.at, stop) {
            break;
        }
        let planned = &schedule[e.fault];
        match e.action {
            Action::Inject => {
                let (record, fault) = inject_one(nemesis, planned, t0);
                if Some(e.fault) == held && fault.is_some() {
                    tracing::info!(fault = %record.description, "last fault: left in effect for the final heal");
                }
                records.insert(e.fault, record);
                active.push((e.fault, fault));
            }
            Action::Heal if Some(e.fault) == held => {}
            Action::Heal => {
                let Some(pos) = active.iter().position(|(i, _)| *i == e.fault) else {
                    continue;
                };
                let (_, fault) = active.remove(pos);
                if let Some(record) = records.get_mut(&e.fault) {
                    heal_one(nemesis, planned, fault, record, t0);
                }
            }
        }
    }
    // Stopped early: heal what is still in effect, newest first, but the held fault.
    while let Some((i, fault)) = active.pop() {
        if Some(i) == held {
            continue;
        }
        if let Some(record) = records.get_mut(&i) {
            heal_one(nemesis, &schedule[i], fault, record, t0);
        }
    }
    let held_record = held.and_then(|h| {
        records
            .get(&h)
            .filter(|r| r.injected)
            .and_then(|_| records.keys().position(|&k| k == h))
    });
    (records.into_values().collect(), held_record)
}

/// The final heal: everything healed, lost members added back, retried until `deadline`.
/// Returns the errors of the last attempt (empty on success); the re-adds' steps go to `steps`.
pub fn heal_everything(
    nemesis: &mut Nemesis<Control>,
    deadline: Instant,
    steps: &mut Vec<Step>,
) -> Vec<String> {
    loop {
        let errors: Vec<String> = nemesis
            .heal_all(steps)
            .iter()
            .map(NemesisError::to_string)
            .collect();
        if errors.is_empty() || Instant::now() >= deadline {
            return errors;
        }
        tracing::info!(errors = ?errors, "final heal incomplete; retrying");
        std::thread::sleep(Duration::from_millis(500));
    }
}
