//! Injecting and healing the data-plane run's faults on the real processes.
//!
//! Each stream of the schedule ([`super::schedule`]) runs as its own task, so a slow step on
//! one side (a member's re-add) never delays the other. Partitions of both streams may be in
//! effect at once: the firewall's set is always the union of the partitions in effect.
//!
//! | fault | storage node | metadata member |
//! |---|---|---|
//! | kill | SIGKILL, `augur local start` at heal | same |
//! | pause | SIGSTOP, SIGCONT at heal (at least the grace period) | same |
//! | disk-loss | SIGKILL, data dir deleted, started at once; it registers again as a new incarnation once the control plane has moved its replicas away; the heal records whether it has | SIGKILL, data dir deleted, started at once (it waits to be added); at heal the operator path `augur local readd` |
//! | partition | the primary of a shard in use from its secondaries and / or the metadata members | a member, or the leader, from everyone |
//! | migrate | drained through the operator command, undrained at heal (at once, or once emptied) ([`migrate`]) | — |
//!
//! A member's disk loss always hits the last member: re-adding a member while the leader is
//! itself a re-added member does not work yet (jepsen-like README, "Disk loss"), and one
//! member losing its disk repeatedly never makes that happen. Anything the machine cannot do
//! (no namespace for partitions) and anything refused is recorded as not injected, with why.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use augur_client::Client;
use augur_proto::data::DataCluster;
use augur_proto::{NodeId, NodeState};
use nix::sys::signal::Signal;

mod migrate;
mod partition;

use super::cluster::{LocalCluster, Proc};
use super::converge;
use super::schedule::{DataFault, Planned, Side};
use super::workload::data_key;
use crate::harness::workload::Shared;
use crate::nemesis::ports::{PortFirewall, PortPartition};
use crate::nemesis::NemesisError;
use crate::results::{FaultRecord, FaultStep};

/// What healing a fault in effect takes.
#[derive(Debug, Clone)]
pub enum Undo {
    /// Start the killed process again.
    Restart(Proc),
    /// SIGCONT the paused process.
    Resume(Proc),
    /// Lift the partition injected as fault `.0`.
    Unpartition(usize),
    /// Nothing to do but see whether the wiped storage node registered again as a new
    /// incarnation (it was `.1` before).
    Reborn(Proc, Option<u64>),
    /// Add the wiped member back (the operator path).
    Readd(u64),
    /// Undrain the drained storage node (after its drain emptied it, when so scheduled).
    Undrain(u64),
}

/// One stream's faults and the one still in effect when the workload ended.
#[derive(Debug, Default)]
pub struct StreamOutcome {
    /// Every fault tried.
    pub records: Vec<FaultRecord>,
    /// The fault in effect at the end (index into `records`) and how to heal it.
    pub held: Option<(usize, Undo)>,
}

/// The executor, shared by both streams.
pub struct DataNemesis {
    cluster: Arc<LocalCluster>,
    firewall: Result<PortFirewall, String>,
    /// The partitions in effect, by fault number, with the process each cuts off.
    partitions: Mutex<BTreeMap<usize, (Proc, PortPartition)>>,
    client: Client,
    shared: Arc<Shared>,
    layout: DataCluster,
    t0: Instant,
    lost_member: Mutex<Option<u64>>,
    drained: Mutex<Option<migrate::Drained>>,
    migrate_log: Mutex<Vec<crate::results::MigrateFault>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The metadata leader's member id: the one named by the answering member with the highest
/// term (a deposed leader cut off from the others answers with a lower one; a member that
/// lost its data names none).
pub async fn leader(client: &Client) -> Option<u64> {
    let asks = client
        .endpoints()
        .iter()
        .map(|ep| async move { client.status(Some(ep)).await.ok() });
    futures::future::join_all(asks)
        .await
        .into_iter()
        .flatten()
        .filter(|s| s.leader.is_some())
        .max_by_key(|s| s.term)
        .and_then(|s| s.leader.map(|l| l.id.0))
}

/// How long a wiped storage node's disk loss waits, at its heal, for the node to register
/// again as a new incarnation.
const REBORN_WAIT: Duration = Duration::from_secs(30);

fn stop_requested(stop: Option<&AtomicBool>) -> bool {
    stop.is_some_and(|s| s.load(Ordering::Relaxed))
}

/// Sleeps until `at`, waking early when `stop` is set; false when stopped.
async fn sleep_until(at: Instant, stop: &AtomicBool) -> bool {
    loop {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        let now = Instant::now();
        if now >= at {
            return true;
        }
        tokio::time::sleep((at - now).min(Duration::from_millis(100))).await;
    }
}

impl DataNemesis {
    /// An executor over `cluster`; `firewall` is the reason partitions cannot be injected when
    /// it is an error. `t0` is the history's time origin.
    pub fn new(
        cluster: Arc<LocalCluster>,
        firewall: Result<PortFirewall, String>,
        client: Client,
        shared: Arc<Shared>,
        layout: DataCluster,
        t0: Instant,
    ) -> Self {
        DataNemesis {
            cluster,
            firewall,
            partitions: Mutex::new(BTreeMap::new()),
            client,
            shared,
            layout,
            t0,
            lost_member: Mutex::new(None),
            drained: Mutex::new(None),
            migrate_log: Mutex::new(Vec::new()),
        }
    }

    fn ms(&self) -> u64 {
        self.t0.elapsed().as_millis() as u64
    }

    fn step(&self, steps: &mut Vec<FaultStep>, what: impl Into<String>) {
        steps.push(FaultStep {
            at_ms: self.ms(),
            what: what.into(),
        });
    }

    /// Runs `f` on the cluster off the async threads (`augur local` commands block).
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&LocalCluster) -> Result<T, String> + Send + 'static,
    ) -> Result<T, String> {
        let c = Arc::clone(&self.cluster);
        tokio::task::spawn_blocking(move || f(&c))
            .await
            .map_err(|e| e.to_string())?
    }

    /// The metadata leader's member id, as the cluster reports it.
    async fn leader(&self) -> Option<u64> {
        leader(&self.client).await
    }

    /// The storage node to hit: usually the primary of the shard of a key in use, else any.
    async fn storage_target(&self, pick: u64) -> (u64, String) {
        let n = self.cluster.shape.storage.max(1);
        let keys = self.shared.keys.active();
        if pick % 4 != 3 && !keys.is_empty() {
            let key = data_key(keys[(pick / 4) as usize % keys.len()]);
            let shard = self.layout.shard_of(key.as_bytes());
            if let Ok(Some(s)) = self.client.get_shard(shard).await {
                if let Some(p) = s.replicas.first() {
                    return (p.0, format!("primary of shard {shard}, key {key}"));
                }
            }
        }
        (1 + (pick / 4) % n, "chosen at random".into())
    }

    async fn incarnation(&self, id: u64) -> Option<u64> {
        let nodes = converge::nodes(&self.client).await.ok()?;
        nodes.get(&NodeId(id)).map(|n| n.incarnation)
    }

    /// Injects `p` (fault number `index`); its description, how to heal it and the steps.
    async fn inject(
        &self,
        index: usize,
        p: &Planned,
        steps: &mut Vec<FaultStep>,
    ) -> Result<(String, Undo), NemesisError> {
        match p.fault {
            DataFault::Partition { shape } => {
                return self.partition(index, p.side, shape, p.pick).await
            }
            DataFault::Migrate { finish } => return self.drain(p.pick, finish, steps).await,
            _ => {}
        }
        let (proc, why) = match p.side {
            Side::Storage => {
                let (id, why) = self.storage_target(p.pick).await;
                (Proc::Storage(id), why)
            }
            Side::Meta if p.fault == DataFault::DiskLoss => (
                Proc::Meta(self.cluster.shape.meta),
                "the last member".into(),
            ),
            Side::Meta => {
                let id = 1 + (p.pick % self.cluster.shape.meta.max(1));
                let why = if self.leader().await == Some(id) {
                    "the leader"
                } else {
                    "a follower"
                };
                (Proc::Meta(id), why.into())
            }
            Side::Migrate => {
                return Err(NemesisError::Invalid(format!(
                    "a {} fault is not the migrate stream's",
                    p.fault.kind_name()
                )))
            }
        };
        let name = proc.name();
        match p.fault {
            DataFault::Kill => {
                self.cluster.kill(proc).await?;
                Ok((format!("kill -9 {name} ({why})"), Undo::Restart(proc)))
            }
            DataFault::Pause => {
                self.cluster.signal(proc, Signal::SIGSTOP)?;
                Ok((format!("pause {name} ({why})"), Undo::Resume(proc)))
            }
            DataFault::DiskLoss => {
                if let (Proc::Meta(_), Some(m)) = (proc, *lock(&self.lost_member)) {
                    return Err(NemesisError::Refused(format!(
                        "member {m} has not been added back yet"
                    )));
                }
                let before = match proc {
                    Proc::Storage(id) => self.incarnation(id).await,
                    Proc::Meta(_) => None,
                };
                self.cluster.kill(proc).await?;
                self.step(steps, format!("killed {name}"));
                self.cluster.wipe(proc)?;
                if let Proc::Meta(id) = proc {
                    *lock(&self.lost_member) = Some(id);
                }
                self.step(steps, format!("deleted {name}'s data directory"));
                self.blocking(move |c| c.start(proc).map_err(|e| e.to_string()))
                    .await
                    .map_err(NemesisError::Control)?;
                self.step(steps, format!("restarted {name} with no data"));
                let undo = match proc {
                    Proc::Storage(_) => Undo::Reborn(proc, before),
                    Proc::Meta(id) => Undo::Readd(id),
                };
                Ok((format!("disk loss on {name} ({why})"), undo))
            }
            DataFault::Partition { .. } | DataFault::Migrate { .. } => {
                Err(NemesisError::Invalid("dispatched above".into()))
            }
        }
    }

    /// What must hold before `p` may be injected: a storage node loses its disk only while
    /// every shard has all its replicas (two replicas of a shard lost at once could lose
    /// acknowledged writes, which a run must not provoke). Waits for it (at most 20 s).
    async fn prepare(&self, p: &Planned) -> Result<(), NemesisError> {
        if p.side == Side::Storage && p.fault == DataFault::DiskLoss {
            self.wait_replicated(Duration::from_secs(20))
                .await
                .map_err(|why| {
                    NemesisError::Refused(format!(
                        "shards not back at their replication factor, so a second loss could \
                         lose data: {why}"
                    ))
                })?;
        }
        Ok(())
    }

    /// Waits until every shard has its replication factor on Up nodes with no learner.
    async fn wait_replicated(&self, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        loop {
            let why = match (
                converge::shards(&self.client).await,
                converge::nodes(&self.client).await,
            ) {
                (Ok(s), Ok(n)) => s
                    .values()
                    .find_map(|s| converge::under_replicated(s, self.layout.rf, &n)),
                (Err(e), _) | (_, Err(e)) => Some(format!("metadata: {e}")),
            };
            match why {
                None => return Ok(()),
                Some(why) if Instant::now() >= deadline => return Err(why),
                Some(_) => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    }

    /// Heals one fault.
    async fn heal(
        &self,
        undo: &Undo,
        steps: &mut Vec<FaultStep>,
        stop: Option<&AtomicBool>,
    ) -> Result<(), String> {
        match undo {
            Undo::Restart(p) => {
                let p = *p;
                self.blocking(move |c| c.start(p).map_err(|e| e.to_string()))
                    .await
            }
            Undo::Resume(p) => match self.cluster.signal(*p, Signal::SIGCONT) {
                Ok(_) => Ok(()),
                Err(e) => Err(format!("resuming {}: {e}", p.name())),
            },
            Undo::Unpartition(i) => {
                lock(&self.partitions).remove(i);
                self.apply_partitions().map_err(|e| e.to_string())
            }
            Undo::Reborn(p, before) => {
                let Proc::Storage(id) = *p else {
                    return Ok(());
                };
                // The fault lasts until the node is back: Down after the grace period, its
                // replicas moved away after the down delay, then it registers anew.
                let deadline = Instant::now() + REBORN_WAIT;
                loop {
                    let nodes = converge::nodes(&self.client).await.unwrap_or_default();
                    let what = match nodes.get(&NodeId(id)) {
                        Some(n) if Some(n.incarnation) != *before && n.state == NodeState::Up => {
                            Some(format!(
                                "{} registered again as incarnation {:016x}",
                                p.name(),
                                n.incarnation
                            ))
                        }
                        _ if Instant::now() >= deadline || stop_requested(stop) => Some(format!(
                            "{} not registered again as a new incarnation yet ({})",
                            p.name(),
                            nodes.get(&NodeId(id)).map_or("no record".to_string(), |n| {
                                format!("the registry has {:016x}, {:?}", n.incarnation, n.state)
                            })
                        )),
                        _ => None,
                    };
                    if let Some(what) = what {
                        self.step(steps, what);
                        return Ok(());
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
            Undo::Readd(id) => {
                let id = *id;
                let arg = id.to_string();
                let result = self
                    .blocking(move |c| {
                        c.start(Proc::Meta(id)).map_err(|e| e.to_string())?;
                        c.local(&["readd", "--member", &arg, "--timeout", "60"])
                            .map_err(|e| e.to_string())
                    })
                    .await;
                if result.is_ok() {
                    *lock(&self.lost_member) = None;
                    self.step(
                        steps,
                        format!("meta-{id} added back: learner, caught up, promoted"),
                    );
                }
                result.map(|_| ())
            }
            Undo::Undrain(id) => self.undrain(*id, steps, stop).await,
        }
    }

    /// Walks one stream's faults until they are done or `stop` is set; the fault in effect
    /// then is left for [`DataNemesis::heal_all`].
    pub async fn run_stream(
        self: Arc<Self>,
        plan: Vec<(usize, Planned)>,
        stop: Arc<AtomicBool>,
    ) -> StreamOutcome {
        let mut out = StreamOutcome::default();
        let count = plan.len();
        for (i, (index, p)) in plan.into_iter().enumerate() {
            if !sleep_until(self.t0 + p.start, &stop).await {
                break;
            }
            let mut steps = Vec::new();
            let mut end_at = self.t0 + p.end;
            let injected = match self.prepare(&p).await {
                Ok(()) => {
                    let started = Instant::now();
                    let injected = self.inject(index, &p, &mut steps).await;
                    // A fault delayed by its precondition still lasts as long as planned.
                    let planned = p.end.saturating_sub(p.start);
                    end_at = (self.t0 + p.end).max(started + planned);
                    injected
                }
                Err(e) => Err(e),
            };
            let start_ms = steps.first().map_or(self.ms(), |s: &FaultStep| s.at_ms);
            let (description, undo, note) = match injected {
                Ok((d, u)) => (d, Some(u), None),
                Err(e) => {
                    tracing::warn!(fault = ?p.fault, side = ?p.side, error = %e, "fault not injected");
                    (
                        match p.side {
                            Side::Migrate => "drain of a storage node".to_string(),
                            side => {
                                format!("{} on a {side:?} node", p.fault.kind_name()).to_lowercase()
                            }
                        },
                        None,
                        Some(e.to_string()),
                    )
                }
            };
            tracing::info!(%description, injected = undo.is_some(), "fault");
            out.records.push(FaultRecord {
                kind: p.fault.kind_name().to_string(),
                description,
                start_ms,
                end_ms: None,
                injected: undo.is_some(),
                note,
                recovered_after_ms: None,
                steps,
            });
            let at = out.records.len() - 1;
            let Some(undo) = undo else {
                out.records[at].end_ms = Some(start_ms);
                continue;
            };
            // The last fault is held until the workload ends (its planned end): the final
            // heal undoes it after the other streams' faults, which a drain left to finish
            // needs (a node it moves to may be the one killed or cut off).
            if i + 1 == count || !sleep_until(end_at, &stop).await {
                out.held = Some((at, undo));
                break;
            }
            let mut steps = std::mem::take(&mut out.records[at].steps);
            let healed = self.heal(&undo, &mut steps, Some(&stop)).await;
            let r = &mut out.records[at];
            r.steps = steps;
            r.end_ms = Some(self.ms());
            if let Err(e) = healed {
                tracing::warn!(error = %e, "heal failed; the final heal retries it");
                r.note = Some(format!("heal failed: {e}"));
                out.held = Some((at, undo));
                break;
            }
        }
        out
    }

    /// The final heal: undoes the faults still in effect, then makes sure of everything
    /// (partitions flushed, every process resumed and running, a wiped member added back),
    /// retrying until `deadline`. Returns the errors that persisted.
    pub async fn heal_all(
        &self,
        held: Vec<(usize, Undo)>,
        records: &mut [FaultRecord],
        deadline: Instant,
    ) -> Vec<String> {
        let mut errors = Vec::new();
        for (at, undo) in &held {
            let mut steps = records
                .get_mut(*at)
                .map(|r| std::mem::take(&mut r.steps))
                .unwrap_or_default();
            let result = self.heal(undo, &mut steps, None).await;
            if let Some(r) = records.get_mut(*at) {
                r.steps = steps;
                r.end_ms = Some(self.ms());
                if let Err(e) = &result {
                    r.note = Some(format!("final heal: {e}"));
                }
            }
        }
        loop {
            errors.clear();
            lock(&self.partitions).clear();
            if let Ok(fw) = &self.firewall {
                if let Err(e) = fw.heal() {
                    errors.push(format!("flushing partitions: {e}"));
                }
            }
            for p in self.cluster.procs() {
                let _ = self.cluster.signal(p, Signal::SIGCONT);
                if self.cluster.pid(p).is_none() {
                    if let Err(e) = self
                        .blocking(move |c| c.start(p).map_err(|e| e.to_string()))
                        .await
                    {
                        errors.push(format!("starting {}: {e}", p.name()));
                    }
                }
            }
            let lost = *lock(&self.lost_member);
            if let Some(id) = lost {
                let mut steps = Vec::new();
                if let Err(e) = self.heal(&Undo::Readd(id), &mut steps, None).await {
                    errors.push(format!("adding meta-{id} back: {e}"));
                }
            }
            // A drain whose outcome was unknown, or whose undrain failed: never left behind.
            if let Some(id) = self.owed_undrain() {
                let mut steps = Vec::new();
                if let Err(e) = self.heal(&Undo::Undrain(id), &mut steps, None).await {
                    errors.push(format!("undraining storage-{id}: {e}"));
                }
            }
            if errors.is_empty() || Instant::now() >= deadline {
                return errors;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}
