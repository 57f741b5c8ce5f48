//! Predictive capacity planning on the metadata leader, and the auto-scaling hook.
//!
//! Every `capacity_interval_ms` the leader estimates the capacity the cluster needs
//! `capacity_horizon_days` ahead ([`estimate`]): the data the nodes that accept replicas
//! must hold once the at-risk nodes (Suspect, Draining) are emptied, grown by the sum of
//! each node's least-squares slope of its used bytes over the last `capacity_history`
//! rounds, against their capacity less what predicted failures are expected to take. When
//! the headroom falls below `capacity_min_headroom`, or fewer nodes accept replicas than the replication factor (a
//! drain then has nowhere to go), it raises an alarm (`/v1/control` under `capacity`,
//! `augurctl status`, the `augur_control_capacity_*` gauges) and calls `capacity_hook`
//! ([`hook`]) asking for `nodes_wanted` nodes.
//!
//! **Growth with few samples.** Until the samples span `capacity_min_history_ms` growth is
//! unknown and counts as zero: the estimate is then today's data against today's capacity
//! after drains. A slope below zero (data deleted, a node lost) also counts as zero: space
//! freed is not planned on.
//!
//! **Calls.** The alarm, the nodes asked for and each call are persisted (setting
//! [`augur_proto::CAPACITY_SETTING`], a compare-and-set on its version, so only the leader
//! writes it and a deposed one changes nothing). A call is recorded before it is made; the
//! hook is called again only once the nodes it asked for accept replicas (registered and
//! Up) or `capacity_hook_cooldown_ms` has passed, and never while a call is running.
//!
//! **Leader changes.** The history lives in the leader's memory: a new leader starts with
//! none, so growth is unknown for `capacity_min_history_ms`. It reads the last call from the
//! setting, so it calls again only after the cooldown (measured on wall clocks, which may
//! differ between members by their skew: a call may come that much early or late) or once
//! the nodes have appeared. A call running when leadership moves is not waited for; the new
//! leader may repeat it after the cooldown, which a hook must tolerate: asking a scaling group
//! for a size (`target_pool_nodes` in the request), not an increment, makes a repeated call
//! harmless.

pub mod estimate;
pub mod hook;

use super::store::MetaStore;
use super::Control;
use augur_proto::data::{DataCluster, DATA_CLUSTER_SETTING};
use augur_proto::wire::{ApiError, RiskState};
use augur_proto::{
    CapacityAlarm, CapacityHookCall, Compare, CompareTarget, Key, NodeId, Op, Record, Setting, Txn,
    CAPACITY_SETTING,
};
use estimate::{Estimate, History, NodeInput, Params};
use hook::Hook;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the capacity planner keeps in the leader's memory, dropped when leadership changes.
#[derive(Debug, Default)]
pub struct CapacityMemory {
    /// When this leadership's first round ran (the histories' time origin).
    origin: Option<Instant>,
    /// Used bytes per node, per round, since it last joined the counted classes (pool or
    /// at risk; `false`: it is in neither, and its history says nothing).
    per_node: BTreeMap<NodeId, (bool, History)>,
    /// The last round.
    last: Option<Round>,
    /// A hook call is running.
    calling: bool,
    /// How the last call of this leadership ended.
    last_outcome: Option<HookOutcome>,
    /// The persisted record as of the last round.
    recorded: Option<CapacityAlarm>,
}

/// One round, as the view shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Round {
    /// Wall-clock milliseconds.
    pub at_ms: u64,
    /// Rounds of history behind the growth estimate (the longest of a counted node's).
    pub samples: usize,
    /// The estimate.
    pub estimate: Estimate,
}

/// How a hook call ended.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HookOutcome {
    /// Wall-clock milliseconds when it ended.
    pub at_ms: u64,
    /// Whether it succeeded.
    pub ok: bool,
    /// What it said (stderr's end or the HTTP answer), or why it failed.
    pub detail: String,
}

/// The planner in `/v1/control`, under `capacity`.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct CapacityStatus {
    /// The hook, as configured (`None`: none).
    pub hook: Option<String>,
    /// The last round of this leadership.
    pub last_round: Option<Round>,
    /// The alarm as last persisted (with the last call).
    pub recorded: Option<CapacityAlarm>,
    /// A call is running.
    pub calling: bool,
    /// How this leadership's last call ended.
    pub last_outcome: Option<HookOutcome>,
}

/// The body of a hook call (JSON).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HookRequest {
    /// Storage nodes wanted, on top of `pool_nodes`.
    pub nodes_wanted: u32,
    /// Nodes that accept replicas now (Up, not cordoned; late ones included).
    pub pool_nodes: u64,
    /// `pool_nodes + nodes_wanted`: the size to ask a scaling group for, which a repeated
    /// call (after the cooldown, or from a new leader) leaves as it was.
    pub target_pool_nodes: u64,
    /// Capacity missing for the headroom to reach its minimum, bytes.
    pub bytes_short: u64,
    /// Headroom after draining the at-risk nodes (fraction; negative when over capacity).
    pub headroom: f64,
    /// The minimum headroom.
    pub min_headroom: f64,
    /// The planner's horizon, days.
    pub horizon_days: f64,
    /// Used bytes projected at the horizon.
    pub projected_used_bytes: u64,
    /// Capacity after the drains and expected failures, bytes.
    pub capacity_after_drains_bytes: u64,
    /// The at-risk nodes, with their risk.
    pub at_risk: Vec<estimate::AtRiskNode>,
    /// Why, for people.
    pub reason: String,
    /// Wall-clock milliseconds of the round.
    pub at_ms: u64,
}

impl HookRequest {
    fn of(e: &Estimate, at_ms: u64) -> HookRequest {
        HookRequest {
            nodes_wanted: e.nodes_wanted,
            pool_nodes: e.pool_nodes as u64,
            target_pool_nodes: (e.pool_nodes as u64).saturating_add(u64::from(e.nodes_wanted)),
            bytes_short: e.bytes_short,
            headroom: e.headroom,
            min_headroom: e.min_headroom,
            horizon_days: e.horizon_days,
            projected_used_bytes: e.projected_used_bytes,
            capacity_after_drains_bytes: e.capacity_after_drains_bytes,
            at_risk: e.at_risk.clone(),
            reason: e.reason.clone().unwrap_or_default(),
            at_ms,
        }
    }
}

/// The record to write after a round, if it changed: the alarm raised or cleared, or the
/// nodes asked for changed (the headroom alone changes every round and is not rewritten).
pub fn next_record(old: &CapacityAlarm, e: &Estimate, now_ms: u64) -> Option<CapacityAlarm> {
    if old.alarm == e.alarm && old.nodes_wanted == e.nodes_wanted {
        return None;
    }
    Some(CapacityAlarm {
        alarm: e.alarm,
        reason: e.reason.clone(),
        headroom: e.headroom,
        nodes_wanted: e.nodes_wanted,
        bytes_short: e.bytes_short,
        since_ms: now_ms,
        last_call: old.last_call.clone(),
    })
}

impl Control {
    /// The planner's state for `/v1/control`.
    pub fn capacity_status(&self) -> CapacityStatus {
        let mem = super::lock(&self.capacity);
        CapacityStatus {
            hook: Hook::parse(&self.settings.capacity_hook)
                .ok()
                .flatten()
                .map(|h| h.describe()),
            last_round: mem.last.clone(),
            recorded: mem.recorded.clone(),
            calling: mem.calling,
            last_outcome: mem.last_outcome.clone(),
        }
    }

    /// Every node's input: usage and capacity from its latest heartbeat this leadership,
    /// else from its record; risk from its latest scored heartbeat.
    fn capacity_inputs(&self, nodes: &[augur_proto::Node]) -> Vec<NodeInput> {
        let seen = super::lock(&self.seen);
        nodes
            .iter()
            .map(|n| {
                let s = seen.get(&n.id);
                let report = s.map(|s| &s.report);
                let risk = s
                    .and_then(|s| s.health.as_ref())
                    .and_then(|h| match &h.risk {
                        RiskState::Scored(r) if r.score.is_finite() => Some(r.score),
                        _ => None,
                    });
                NodeInput {
                    id: n.id,
                    state: n.state,
                    cordoned: n.cordoned,
                    late: n.state == augur_proto::NodeState::Suspect
                        && n.cause.origin == augur_proto::StateOrigin::Liveness,
                    capacity_bytes: report
                        .map(|r| r.capacity_bytes)
                        .filter(|c| *c > 0)
                        .unwrap_or(n.capacity_bytes),
                    used_bytes: report.map_or(n.used_bytes, |r| r.used_bytes),
                    risk,
                    growth_bytes_per_day: None,
                }
            })
            .collect()
    }

    /// One planner round at wall-clock `now_ms`: estimates, records the history, persists the
    /// alarm when it changes, and, when the hook is due, records the call and returns its
    /// request (the caller runs it with [`Control::call_hook`], off the round).
    pub(crate) async fn capacity_tick(
        &self,
        meta: &dyn MetaStore,
        now: Instant,
        now_ms: u64,
    ) -> Result<Option<(Hook, HookRequest)>, ApiError> {
        let cluster = meta.nodes().await?;
        let rf = match meta.get(Key::Setting(DATA_CLUSTER_SETTING.into())).await? {
            Some(Record::Setting(s)) => serde_json::from_slice::<DataCluster>(&s.value)
                .ok()
                .map(|l| l.rf),
            _ => None,
        };
        let (recorded, version) = match meta.get(Key::Setting(CAPACITY_SETTING.into())).await? {
            Some(Record::Setting(s)) => (
                // Unreadable (a newer leader's format): start afresh; it is rewritten below.
                serde_json::from_slice::<CapacityAlarm>(&s.value).unwrap_or_default(),
                Some(s.version),
            ),
            _ => (CapacityAlarm::default(), None),
        };
        let nodes: Vec<augur_proto::Node> = cluster.nodes.values().cloned().collect();
        let mut inputs = self.capacity_inputs(&nodes);
        let s = &self.settings;
        let params = Params {
            horizon_days: s.capacity_horizon_days as f64,
            min_headroom: s.capacity_min_headroom,
            rf,
        };
        let (estimate, calling) = {
            let mut mem = super::lock(&self.capacity);
            let origin = *mem.origin.get_or_insert(now);
            let t = now.saturating_duration_since(origin).as_millis() as u64;
            let mut samples = 0;
            for n in &mut inputs {
                let counted = estimate::class(n) != estimate::Class::Other;
                let (was, h) = mem.per_node.entry(n.id).or_default();
                if *was != counted {
                    // Joined or left the counted classes: what it held before is no growth.
                    *was = counted;
                    *h = History::default();
                }
                h.push(t, n.used_bytes, s.capacity_history);
                n.growth_bytes_per_day = h.slope_per_day(s.capacity_min_history_ms);
                if counted {
                    samples = samples.max(h.len());
                }
            }
            let present: BTreeSet<NodeId> = inputs.iter().map(|n| n.id).collect();
            mem.per_node.retain(|id, _| present.contains(id));
            let growth = estimate::counted_growth(&inputs);
            let Some(e) = estimate::estimate(&inputs, growth, &params) else {
                // No storage node at all: nothing to say.
                mem.last = None;
                drop(mem);
                self.metrics.reset_capacity();
                return Ok(None);
            };
            mem.last = Some(Round {
                at_ms: now_ms,
                samples,
                estimate: e.clone(),
            });
            (e, mem.calling)
        };
        let m = &self.metrics;
        m.capacity_projected_used
            .set(estimate.projected_used_bytes.min(i64::MAX as u64) as i64);
        m.capacity_after_drains
            .set(estimate.capacity_after_drains_bytes.min(i64::MAX as u64) as i64);
        m.capacity_headroom.set(estimate.headroom);
        m.capacity_alarm.set(estimate.alarm as i64);
        m.capacity_nodes_wanted.set(estimate.nodes_wanted as i64);

        let mut record = recorded.clone();
        if let Some(next) = next_record(&recorded, &estimate, now_ms) {
            if next.alarm && !recorded.alarm {
                tracing::warn!(
                    reason = next.reason.as_deref().unwrap_or(""),
                    nodes_wanted = next.nodes_wanted,
                    "capacity alarm raised"
                );
            } else if !next.alarm && recorded.alarm {
                tracing::info!(headroom = estimate.headroom, "capacity alarm cleared");
            }
            record = next;
        }
        // Checked at load; parsed again because the executable can vanish meanwhile.
        let hook = match Hook::parse(&s.capacity_hook) {
            Ok(h) => h,
            Err(e) => {
                if estimate.alarm {
                    tracing::error!(error = %e, "capacity hook unusable: nodes not asked for");
                }
                None
            }
        };
        let accepting = estimate.pool_nodes as u64;
        let due = estimate.alarm
            && hook.is_some()
            && !calling
            && estimate::may_call(
                recorded.last_call.as_ref(),
                now_ms,
                s.capacity_hook_cooldown_ms,
                accepting,
            );
        if due {
            record.last_call = Some(CapacityHookCall {
                at_ms: now_ms,
                nodes_wanted: estimate.nodes_wanted,
                nodes_accepting: accepting,
            });
        }
        let written = record != recorded && self.write_capacity(meta, &record, version).await?;
        let mut mem = super::lock(&self.capacity);
        mem.recorded = Some(if written { record } else { recorded });
        match hook {
            Some(hook) if written && due => {
                mem.calling = true;
                Ok(Some((hook, HookRequest::of(&estimate, now_ms))))
            }
            _ => Ok(None),
        }
    }

    /// Writes the planner's record, comparing its version (absent: created). Whether it was
    /// written: a lost compare means another leader wrote it, and this round acts on nothing.
    async fn write_capacity(
        &self,
        meta: &dyn MetaStore,
        record: &CapacityAlarm,
        version: Option<u64>,
    ) -> Result<bool, ApiError> {
        let key = Key::Setting(CAPACITY_SETTING.into());
        let target = match version {
            Some(v) => CompareTarget::VersionEq(v),
            None => CompareTarget::Absent,
        };
        let value = serde_json::to_vec(record).map_err(|e| ApiError::Internal(e.to_string()))?;
        let txn = Txn {
            compares: vec![Compare { key, target }],
            ops: vec![Op::Put(Record::Setting(Setting {
                name: CAPACITY_SETTING.into(),
                value,
                version: 0,
            }))],
        };
        Ok(meta.propose(txn).await?.succeeded)
    }

    /// Runs one hook call (bounded by `capacity_hook_timeout_ms`), logs and counts how it
    /// ended.
    pub(crate) async fn call_hook(self: Arc<Self>, hook: Hook, request: HookRequest) {
        let body = match serde_json::to_string(&request) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "capacity hook request does not encode");
                super::lock(&self.capacity).calling = false;
                return;
            }
        };
        self.metrics.capacity_hook_calls.inc();
        tracing::warn!(hook = %hook.describe(), nodes_wanted = request.nodes_wanted, reason = %request.reason, "capacity: asking the hook for nodes");
        let timeout = Duration::from_millis(self.settings.capacity_hook_timeout_ms);
        let result = hook.call(&body, timeout).await;
        let outcome = match result {
            Ok(said) => {
                tracing::info!(hook = %hook.describe(), stderr = %said, "capacity hook succeeded");
                HookOutcome {
                    at_ms: super::registry::now_ms(),
                    ok: true,
                    detail: said,
                }
            }
            Err(e) => {
                self.metrics.capacity_hook_failures.inc();
                tracing::error!(hook = %hook.describe(), error = %e, "capacity hook failed");
                HookOutcome {
                    at_ms: super::registry::now_ms(),
                    ok: false,
                    detail: e.to_string(),
                }
            }
        };
        let mut mem = super::lock(&self.capacity);
        mem.calling = false;
        mem.last_outcome = Some(outcome);
    }
}

#[cfg(test)]
mod tests;
