//! The risk policy on the metadata leader: every `risk_interval_ms` it feeds each live
//! node's latest risk (from its heartbeats) into the predictor's [`RiskPolicy`] and persists
//! what the policy decides as node states, by transactions that compare the records'
//! versions like every other control decision:
//!
//! - Up -> Suspect when the risk reaches the watch threshold, or the node is at risk (k of
//!   the last n scoring rounds above `enter`) but below `drain`, or held out: no new
//!   replicas, nothing moves;
//! - -> Draining when it is at risk above `drain`: the planner empties it;
//! - back to Up (or Suspect) only once the risk falls below `leave` (hysteresis): a false
//!   alarm is undrained, and the mover cancels its unfinished moves.
//!
//! Each decision records its cause on the node (origin Policy, a reason with the top
//! reasons, the risk, the at-risk and holdout flags). That is what lets the deciders share
//! the states: liveness clears only the Suspects it set, the policy never touches an
//! operator's drain, and an operator's undrain holds until the risk falls below `leave`
//! (see [`decide::next_record`]).
//!
//! **Leader changes.** The policy's state lives in this leader's memory. A new leader
//! rebuilds it from the records at its first round ([`decide::restorable`]): nodes the
//! policy held at risk are at risk again, so hysteresis holds across the change. The k-of-n
//! window of a node not yet at risk is not persisted (it would cost a write per node per
//! round): it starts empty, which can delay a new flag by up to k rounds, never hasten one.
//! A node's risk counts once per scoring round (`evaluate_latest` skips a score whose
//! `at_ms` was counted), however many leader rounds see it.
//!
//! **Storm guard.** Too many nodes at risk at once (the policy's `storm_fraction` /
//! `storm_min_nodes`, Ceph's `mon_osd_min_in_ratio` idea), or every node of one rack
//! (`storm_rack_min_nodes`), is more likely a shared cause or a model fault than a wave of
//! dying disks: actions are capped at Watch (no new automated Draining), and the setting
//! [`augur_proto::STORM_GUARD_SETTING`] records `frozen` with the alarm, so the planner (see
//! [`crate::control::cluster::Cluster::to_drain`]), `augurctl status`, `/v1/control` and
//! `augur_control_storm_frozen` all see it, and a new leader inherits it. A live node this
//! leader has not heard from yet still counts at risk if the policy holds it so
//! ([`decide::count_silent`]): a new leader must not clear a guard because the nodes that
//! tripped it have not reported to it yet.
//!
//! `[control] predict = false` (`augur meta --predict off`) stops the loop: the cluster
//! then only reacts to failures.

pub mod decide;

use super::cluster::is_live;
use super::store::MetaStore;
use super::Control;
use augur_predictor::policy::{
    ClusterContext, HoldoutReport, NodeDecision, PolicyDecision, RiskPolicy,
};
use augur_proto::wire::{ApiError, RiskState};
use augur_proto::{
    Compare, CompareTarget, Key, NodeId, NodeState, Op, Record, Setting, Txn, STORM_GUARD_SETTING,
};
use decide::{Heard, Thresholds, Verdict};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// What the risk policy keeps in the leader's memory, dropped when leadership changes.
#[derive(Debug, Default)]
pub struct RiskMemory {
    /// The policy, rebuilt from the records at the first round of a leadership.
    policy: Option<RiskPolicy>,
    /// Nodes seen Down (their failure was told to the policy's holdout bookkeeping).
    down: BTreeSet<NodeId>,
    /// The incarnation each live node had at the last round: a node back as a new
    /// incarnation (its disk replaced, inside the grace period) is a new node to the policy.
    incarnations: BTreeMap<NodeId, u64>,
    /// The last round, for `/v1/control`.
    view: Option<RiskView>,
}

/// The last policy round, as `/v1/control` shows it under `risk`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RiskView {
    /// Wall-clock milliseconds of the round.
    pub at_ms: u64,
    /// Nodes whose risk was fed to the policy.
    pub nodes_scored: usize,
    /// The storm guard holds automated moves.
    pub frozen: bool,
    /// Why, when it does.
    pub alarm: Option<String>,
    /// Entering threshold after load and backlog adjustment.
    pub effective_enter: f64,
    /// Leaving threshold after adjustment.
    pub effective_leave: f64,
    /// The conditions the thresholds adapted to.
    pub context: ClusterContext,
    /// The policy's verdicts (nodes above watch or at risk), highest priority first.
    pub decisions: Vec<NodeDecision>,
    /// How the held-out nodes turned out (this leadership's).
    pub holdout: HoldoutReport,
}

/// What the risk loop reports in `/v1/control`.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct RiskStatus {
    /// `[control] predict`: whether the policy runs.
    pub predict: bool,
    /// The last round this leader ran (`None` before its first).
    pub last_round: Option<RiskView>,
}

impl Control {
    /// The latest scored risk and health sample of every node heard this leadership.
    fn heard(&self) -> BTreeMap<NodeId, Heard> {
        super::lock(&self.seen)
            .iter()
            .filter_map(|(id, s)| {
                let h = s.health.as_ref()?;
                match &h.risk {
                    RiskState::Scored(r) if r.score.is_finite() => Some((
                        *id,
                        Heard {
                            risk: r.clone(),
                            summary: h.summary.clone(),
                        },
                    )),
                    _ => None,
                }
            })
            .collect()
    }

    /// The risk loop's state for `/v1/control`.
    pub fn risk_status(&self) -> RiskStatus {
        RiskStatus {
            predict: self.settings.predict,
            last_round: super::lock(&self.risk).view.clone(),
        }
    }

    /// One policy round at wall-clock `now_ms`, this member having led for `leading_for`:
    /// evaluates, then writes every decision (and the storm guard when it changes) with
    /// compares. A write that loses its compare (a heartbeat's usage update, an operator's
    /// command) is decided again next round, from the new record. Returns the decisions
    /// written.
    ///
    /// A new leader waits until it has heard every live node (or `suspect_after_ms` has
    /// passed: the rest are late): a round over some nodes only would count too few at risk
    /// for the storm guard, and could drain a node the guard holds, or clear the guard.
    pub(crate) async fn risk_tick(
        &self,
        meta: &dyn MetaStore,
        leading_for: Duration,
        now_ms: u64,
    ) -> Result<Vec<(NodeId, Verdict)>, ApiError> {
        if !self.settings.predict {
            return Ok(Vec::new());
        }
        let cluster = meta.cluster().await?;
        // Live nodes this leader has had no heartbeat from at all.
        let unheard: BTreeSet<NodeId> = {
            let seen = super::lock(&self.seen);
            cluster
                .nodes
                .values()
                .filter(|n| is_live(n.state) && !seen.contains_key(&n.id))
                .map(|n| n.id)
                .collect()
        };
        let all_heard = unheard.is_empty();
        if !all_heard && leading_for < Duration::from_millis(self.settings.suspect_after_ms) {
            return Ok(Vec::new());
        }
        let heard = self.heard();
        let (writes, storm) = {
            let mut mem = super::lock(&self.risk);
            let mem = &mut *mem;
            if mem.policy.is_none() {
                // First round of this leadership: rebuild from the records.
                let mut p = RiskPolicy::new(self.settings.policy.clone())
                    .map_err(|e| ApiError::Internal(e.to_string()))?;
                for (node, at_risk, holdout) in decide::restorable(&cluster) {
                    p.restore(&node, at_risk, holdout);
                }
                mem.policy = Some(p);
            }
            let Some(policy) = mem.policy.as_mut() else {
                return Err(ApiError::Internal("risk policy missing".into()));
            };
            for n in cluster.nodes.values() {
                match n.state {
                    NodeState::Down => {
                        if mem.down.insert(n.id) {
                            let name = decide::policy_name(n.id);
                            policy.record_failure(&name, n.state_since_ms as i64);
                            policy.forget(&name);
                        }
                    }
                    NodeState::Removed => policy.forget(&decide::policy_name(n.id)),
                    _ => {
                        let name = decide::policy_name(n.id);
                        let reborn = mem
                            .incarnations
                            .insert(n.id, n.incarnation)
                            .is_some_and(|old| old != n.incarnation);
                        if reborn {
                            // Its at-risk state and window belonged to the old disk; the
                            // record (Up, registered afresh) says what holds now.
                            policy.forget(&name);
                        }
                        if mem.down.remove(&n.id) || reborn {
                            // Back from Down: forgotten then; the record says what holds.
                            if let Some((at_risk, holdout)) = decide::restorable_node(n) {
                                policy.restore(&name, at_risk, holdout);
                            }
                        }
                    }
                }
            }
            let inputs = decide::inputs(&cluster, &heard);
            let ctx = decide::context(&cluster, &heard, &self.settings, now_ms);
            let mut decision: PolicyDecision = policy.evaluate_latest(&inputs, &ctx);
            decide::count_silent(&mut decision, &cluster, &unheard, policy);
            let racks = decide::racks_at_risk(
                &cluster,
                &decision,
                &heard,
                self.settings.storm_rack_min_nodes,
            );
            decide::rack_storm(&mut decision, &racks);
            let t = Thresholds::of(&decision, policy.config());
            let by_node: BTreeMap<&str, &NodeDecision> = decision
                .at_risk
                .iter()
                .map(|d| (d.node.as_str(), d))
                .collect();
            let writes: Vec<(augur_proto::Node, augur_proto::Node, Verdict)> = cluster
                .nodes
                .values()
                .filter(|n| heard.contains_key(&n.id))
                .filter_map(|n| {
                    let d = by_node.get(decide::policy_name(n.id).as_str()).copied();
                    decide::next_record(n, d, heard.get(&n.id), &t, now_ms)
                        .map(|(updated, v)| (n.clone(), updated, v))
                })
                .collect();
            let storm = decide::storm_record(&cluster.storm, &decision, now_ms);
            mem.view = Some(RiskView {
                at_ms: now_ms,
                nodes_scored: inputs.len(),
                frozen: decision.storm,
                alarm: decision.alarm.clone(),
                effective_enter: decision.effective_enter,
                effective_leave: decision.effective_leave,
                context: ctx,
                decisions: decision.at_risk.clone(),
                holdout: policy.holdout_report(now_ms as i64),
            });
            self.metrics.storm_frozen.set(decision.storm as i64);
            (writes, storm)
        };
        if let Some(guard) = storm {
            self.write_storm_guard(meta, &guard).await?;
        }
        let mut done = Vec::new();
        for (old, updated, verdict) in writes {
            let txn = Txn::cas(Record::Node(updated.clone()), Some(old.version));
            match meta.propose(txn).await? {
                r if r.succeeded => {
                    self.metrics
                        .risk_decisions
                        .get_or_create(&super::metrics::DecisionLabel {
                            decision: verdict.name(),
                        })
                        .inc();
                    let (id, reason) = (updated.id, &updated.cause.reason);
                    match verdict {
                        Verdict::Drain => {
                            tracing::warn!(node = %id, from = ?old.state, %reason, "risk policy: draining at-risk node")
                        }
                        _ => {
                            tracing::info!(node = %id, from = ?old.state, to = ?updated.state, decision = verdict.name(), %reason, "risk policy decision")
                        }
                    }
                    done.push((id, verdict));
                }
                _ => tracing::debug!(node = %old.id, "node record changed under a risk decision"),
            }
        }
        Ok(done)
    }

    /// Writes the storm guard's setting, comparing its version (absent: created).
    async fn write_storm_guard(
        &self,
        meta: &dyn MetaStore,
        guard: &augur_proto::StormGuard,
    ) -> Result<(), ApiError> {
        let key = Key::Setting(STORM_GUARD_SETTING.into());
        let target = match meta.get(key.clone()).await? {
            Some(r) => CompareTarget::VersionEq(r.version()),
            None => CompareTarget::Absent,
        };
        let value = serde_json::to_vec(guard).map_err(|e| ApiError::Internal(e.to_string()))?;
        let txn = Txn {
            compares: vec![Compare { key, target }],
            ops: vec![Op::Put(Record::Setting(Setting {
                name: STORM_GUARD_SETTING.into(),
                value,
                version: 0,
            }))],
        };
        if meta.propose(txn).await?.succeeded {
            match &guard.alarm {
                Some(alarm) if guard.frozen => {
                    tracing::error!(%alarm, "storm guard: automated moves frozen")
                }
                _ => tracing::warn!("storm guard cleared: automated moves resume"),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
