//! The nemesis side of a run: [`ClusterControl`] over the Augur client, and the thread that
//! walks the fault schedule.
//!
//! The nemesis primitives are synchronous (signals, `nft`, files), so the schedule runs on its
//! own OS thread and reaches the async client through the runtime's [`Handle`]. The workload
//! keeps running on the runtime meanwhile.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use augur_client::Client;
use augur_proto::MemberId;
use tokio::runtime::Handle;

use super::cluster::{self, ClusterLayout};
use crate::nemesis::schedule::{ClusterControl, Nemesis, ScheduledFault};
use crate::nemesis::NemesisError;
use crate::results::FaultRecord;

/// Bound on one membership call (the client retries it within its own deadline).
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a re-added learner may take to catch up before it is promoted anyway.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(30);

/// Cluster control through an admin client, for the nemesis thread.
pub struct Control {
    handle: Handle,
    client: Client,
    layout: Arc<ClusterLayout>,
}

impl Control {
    /// Control over `layout` through `client`, running async calls on `handle`.
    pub fn new(handle: Handle, client: Client, layout: Arc<ClusterLayout>) -> Self {
        Control {
            handle,
            client,
            layout,
        }
    }

    fn member(&self, node: usize) -> Result<(MemberId, String, String), String> {
        let n = self.layout.node(node).map_err(|e| e.to_string())?;
        Ok((MemberId(n.id), n.endpoint(), n.name.clone()))
    }

    /// Waits until `node` has applied what the leader had committed when it was added.
    async fn catch_up(&self, endpoint: &str) -> Result<(), String> {
        let deadline = Instant::now() + CATCH_UP_TIMEOUT;
        let target = self
            .client
            .status(None)
            .await
            .map(|s| s.committed)
            .map_err(|e| e.to_string())?;
        loop {
            if let Ok(s) = self.client.status(Some(endpoint)).await {
                if s.applied >= target {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{endpoint} did not catch up to {target} within {CATCH_UP_TIMEOUT:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
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

    fn add_member(&mut self, node: usize) -> Result<(), String> {
        let (id, endpoint, name) = self.member(node)?;
        let work = async {
            self.client
                .add_learner(id, endpoint.clone())
                .await
                .map_err(|e| format!("adding {name} as learner: {e}"))?;
            if let Err(e) = self.catch_up(&endpoint).await {
                // Promotion still works with a lagging learner (the old voters form the
                // quorum); it only takes longer for the new voter to count.
                tracing::warn!(node = %name, error = %e, "promoting a learner that has not caught up");
            }
            self.client
                .promote(id)
                .await
                .map_err(|e| format!("promoting {name}: {e}"))
        };
        let bounded =
            async { tokio::time::timeout(MEMBERSHIP_TIMEOUT + CATCH_UP_TIMEOUT, work).await };
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

fn ms_since(t0: Instant) -> u64 {
    u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX)
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
/// reason. When `stop` is set (the workload is over) it stops early, healing the fault in
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
    let mut faults = walk(&mut nemesis, schedule, t0, &stop);
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(20));
    }
    tracing::info!("final heal");
    let heal_started = Instant::now();
    let heal_errors = heal_everything(&mut nemesis, heal_started + heal_timeout);
    // The last fault was left in effect for the final heal to undo (see `walk`).
    if let Some(last) = faults
        .last_mut()
        .filter(|f| f.injected && f.end_ms.is_none())
    {
        if heal_errors.is_empty() {
            last.end_ms = Some(u64::try_from((heal_started - t0).as_millis()).unwrap_or(u64::MAX));
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

/// Injects and heals the scheduled faults, except that the last one stays in effect until the
/// workload ends: the final heal then has something real to undo, and the recovery time it
/// measures is the time to come back from a fault, as in Jepsen.
fn walk(
    nemesis: &mut Nemesis<Control>,
    schedule: Vec<ScheduledFault>,
    t0: Instant,
    stop: &AtomicBool,
) -> Vec<FaultRecord> {
    let mut faults = Vec::new();
    let count = schedule.len();
    for (i, planned) in schedule.into_iter().enumerate() {
        if !sleep_until(t0, planned.start, stop) {
            break;
        }
        let kind = serde_json::to_value(planned.fault.kind())
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let start_ms = ms_since(t0);
        let active = match nemesis.inject(&planned.fault) {
            Ok(active) => active,
            Err(e) => {
                let described = planned.fault.describe();
                if e.is_unavailable() {
                    tracing::info!(fault = %described, reason = %e, "fault not injected");
                } else {
                    tracing::warn!(fault = %described, error = %e, "fault injection failed");
                }
                // A member removal that failed may still have happened; heal it at the end
                // of its period like an injected one.
                let partial = matches!(e, NemesisError::Control(_) | NemesisError::Io(_))
                    && !nemesis.removed_members().is_empty();
                if partial {
                    let _ = sleep_until(t0, planned.end, stop);
                    let errors = nemesis.heal_all();
                    for e in errors {
                        tracing::warn!(error = %e, "heal after failed injection");
                    }
                }
                faults.push(FaultRecord {
                    kind,
                    description: described,
                    start_ms,
                    end_ms: Some(ms_since(t0)),
                    injected: false,
                    note: Some(e.to_string()),
                    recovered_after_ms: None,
                });
                continue;
            }
        };
        tracing::info!(fault = %active.description, "fault injected");
        if i + 1 == count {
            tracing::info!(fault = %active.description, "last fault: left in effect for the final heal");
            faults.push(FaultRecord {
                kind,
                description: active.description,
                start_ms,
                end_ms: None,
                injected: true,
                note: None,
                recovered_after_ms: None,
            });
            break;
        }
        let _ = sleep_until(t0, planned.end, stop);
        let (end_ms, note) = match nemesis.heal(&active) {
            Ok(()) => (Some(ms_since(t0)), None),
            Err(e) => {
                tracing::warn!(fault = %active.description, error = %e, "heal failed; the final heal will retry");
                (None, Some(format!("heal failed: {e}")))
            }
        };
        tracing::info!(fault = %active.description, "fault healed");
        faults.push(FaultRecord {
            kind,
            description: active.description,
            start_ms,
            end_ms,
            injected: true,
            note,
            recovered_after_ms: None,
        });
    }
    faults
}

/// The final heal: everything healed, removed members added back, retried until `deadline`.
/// Returns the errors of the last attempt (empty on success).
pub fn heal_everything(nemesis: &mut Nemesis<Control>, deadline: Instant) -> Vec<String> {
    loop {
        let errors: Vec<String> = nemesis.heal_all().iter().map(|e| e.to_string()).collect();
        if errors.is_empty() || Instant::now() >= deadline {
            return errors;
        }
        tracing::info!(errors = ?errors, "final heal incomplete; retrying");
        std::thread::sleep(Duration::from_millis(500));
    }
}
