//! Liveness: from the heartbeats this leader received, which storage nodes are late
//! (Suspect), which are dead (Down), and which came back (Up).
//!
//! Silence is measured on this leader's monotonic clock, from the later of the last lease it
//! granted the node (a heartbeat or a registration acknowledged, [`super::grants`], whose
//! per-node lock each decision holds until it is written) and the moment this member became
//! leader: a new leader does not know when nodes
//! last spoke to its predecessor, so it counts everyone's silence from its own start, and so
//! never declares anyone Down before a full grace period of its own leadership has passed.
//! Because `grace_ms` exceeds the lease (see [`super::settings::ControlSettings`]), a node
//! declared Down has stopped serving by its own clock: promoting another replica is safe.
//!
//! A probe answered by a node is not a heartbeat: the node's lease runs only from
//! acknowledged heartbeats and registrations, so only they may keep it from being declared
//! Down.
//!
//! Declaring a node Down is one transaction comparing the node record's version that sets
//! its state and `state_since_ms` and bumps its epoch: the node, seeing the higher epoch in
//! its next heartbeat answer, knows everything it did under the old one is void.
//!
//! Suspect is shared with the risk policy ([`super::risk`]), which marks nodes above its
//! watch threshold Suspect too. Every change here records [`StateOrigin::Liveness`] as its
//! cause, and liveness turns a Suspect node back to Up only when it made it Suspect: a node
//! the policy watches stays Suspect when its heartbeats resume.

use super::registry::now_ms;
use super::settings::ControlSettings;
use super::store::MetaStore;
use super::Control;
use augur_proto::wire::ApiError;
use augur_proto::{Node, NodeId, NodeState, Record, StateCause, StateOrigin, Txn};
use std::time::{Duration, Instant};

/// Whether a Suspect node set by `origin` is liveness's to bring back: its own, and a state
/// nobody decided (as registered).
pub fn liveness_owns(origin: StateOrigin) -> bool {
    matches!(origin, StateOrigin::Liveness | StateOrigin::Registered)
}

/// The state a node should move to, given who set its current state (`origin`), how long ago
/// this leader last heard its heartbeat (`heard`: `None` if never) and how long this member
/// has led (`leading`). `None`: no change.
///
/// - Up, Suspect or Draining, silent longer than `grace_ms` -> Down;
/// - Up, silent longer than `suspect_after_ms` -> Suspect;
/// - Suspect that liveness set, heard within `suspect_after_ms` -> Up (heartbeats resumed);
///   a Suspect the risk policy or an operator set is theirs to clear;
/// - Down and Removed nodes are left alone: a Down node comes back by registering again.
///
/// Silence is `min(heard, leading)`, so neither Suspect nor Down can follow from what a new
/// leader has not had time to hear; Suspect -> Up needs an actual recent heartbeat.
pub fn transition(
    state: NodeState,
    origin: StateOrigin,
    heard: Option<Duration>,
    leading: Duration,
    s: &ControlSettings,
) -> Option<NodeState> {
    let silence = heard.map_or(leading, |h| h.min(leading));
    let grace = Duration::from_millis(s.grace_ms);
    let suspect = Duration::from_millis(s.suspect_after_ms);
    match state {
        NodeState::Down | NodeState::Removed => None,
        _ if silence > grace => Some(NodeState::Down),
        NodeState::Up if silence > suspect => Some(NodeState::Suspect),
        NodeState::Suspect if liveness_owns(origin) && heard.is_some_and(|h| h <= suspect) => {
            Some(NodeState::Up)
        }
        _ => None,
    }
}

/// The record `node` should be written as to enter `to` at wall-clock `now_ms` for `reason`
/// (liveness's decision): Down bumps the node's epoch, and keeps a drain for the node's
/// return (`Node::drain_when_back`); Suspect keeps an operator's undrain, which the return
/// to Up restores (`Node::undrain_when_back`).
pub fn moved(node: &Node, to: NodeState, now_ms: u64, reason: String) -> Node {
    let mut n = node.clone();
    n.state = to;
    n.state_since_ms = now_ms;
    n.cause = StateCause {
        origin: StateOrigin::Liveness,
        reason,
        risk: node.risk.score,
        at_risk: false,
        holdout: false,
    };
    n.undrain_when_back = None;
    let undrained = node.state == NodeState::Up && node.cause.origin == StateOrigin::Operator;
    match to {
        NodeState::Suspect if undrained => n.undrain_when_back = Some(node.cause.clone()),
        NodeState::Up => {
            if let Some(undrain) = &node.undrain_when_back {
                n.cause = undrain.clone();
            }
        }
        _ => {}
    }
    if to == NodeState::Down {
        n.epoch = node.epoch + 1;
        if node.state == NodeState::Draining {
            // Whoever drained it still wants it empty should it come back.
            n.drain_when_back = Some(node.cause.clone());
        }
    }
    n
}

impl Control {
    /// Whether this leader acknowledged a heartbeat (or registration) of `node` within
    /// `suspect_after_ms` before `now`: fresher than a node record, which liveness changes
    /// only for Up nodes (a Draining or at-risk Suspect node that fell silent keeps its state
    /// until it is declared Down). Judged at the later of `now` and the clock: the writes
    /// that ask come after a mover pass's storage calls (hand-offs, probes, each up to
    /// `storage_call_timeout_ms`), and a member silent since the pass began must not pass
    /// for one heard lately.
    pub(crate) fn heard_lately(&self, node: NodeId, now: Instant) -> bool {
        let now = now.max(Instant::now());
        let fresh = Duration::from_millis(self.settings.suspect_after_ms);
        self.grants
            .last(node)
            .is_some_and(|at| now.saturating_duration_since(at) < fresh)
    }

    /// One liveness pass as leader (since `leader_since`): writes every transition due at
    /// `now`. Returns how many nodes were declared Down, so the caller repairs their shards
    /// at once.
    pub(crate) async fn liveness_tick(
        &self,
        meta: &dyn MetaStore,
        leader_since: Instant,
        now: Instant,
    ) -> Result<usize, ApiError> {
        let cluster = meta.nodes().await?;
        let leading = now.saturating_duration_since(leader_since);
        let mut down = 0;
        for (id, node) in &cluster.nodes {
            let id = *id;
            // Held until the transition is written: a heartbeat acknowledged meanwhile would
            // otherwise extend a lease this decision does not see ([`super::grants`]).
            let _gate = self.grants.lock(id).await;
            // The wait for the lock can span a change of leadership: if this member lost
            // office and won it back meanwhile, its grants were cleared, and counting silence
            // from the old `leader_since` would declare Down nodes it granted leases to a
            // moment ago. A later tick starts from the new leadership.
            if self.leading_since() != Some(leader_since) {
                return Err(ApiError::NotLeader { leader: None });
            }
            let heard = self
                .grants
                .last(id)
                .map(|at| now.saturating_duration_since(at));
            let Some(to) = transition(
                node.state,
                node.cause.origin,
                heard,
                leading,
                &self.settings,
            ) else {
                continue;
            };
            let silence = heard.map_or(leading, |h| h.min(leading)).as_millis();
            let reason = match to {
                NodeState::Up => "heartbeats resumed".to_string(),
                NodeState::Suspect => format!("heartbeats late: silent {silence} ms"),
                _ => format!(
                    "no heartbeat for {silence} ms (grace {} ms)",
                    self.settings.grace_ms
                ),
            };
            let updated = moved(node, to, now_ms(), reason);
            let txn = Txn::cas(Record::Node(updated.clone()), Some(node.version));
            match meta.propose(txn).await {
                Ok(r) if r.succeeded => {
                    let silent_ms = heard.map(|h| h.as_millis() as u64);
                    if to == NodeState::Down {
                        down += 1;
                        self.metrics.declared_down.inc();
                        tracing::warn!(node = %id, from = ?node.state, silent_ms, epoch = updated.epoch, leading_ms = leading.as_millis() as u64, "storage node declared Down");
                    } else {
                        tracing::info!(node = %id, from = ?node.state, to = ?to, silent_ms, "storage node state changed");
                    }
                }
                // The record changed meanwhile (a registration, a usage update): the next
                // tick decides again from the new record.
                Ok(_) => {
                    tracing::debug!(node = %id, "node record changed under a liveness decision")
                }
                Err(e) => return Err(e),
            }
        }
        Ok(down)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::cluster::fixtures::{cluster, node};
    use crate::control::store::fake::MemStore;
    use augur_proto::NodeId;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn silence_moves_nodes_through_suspect_to_down() {
        let s = ControlSettings::default();
        let long = ms(60_000);
        assert_eq!(
            transition(
                NodeState::Up,
                StateOrigin::Liveness,
                Some(ms(900)),
                long,
                &s
            ),
            None
        );
        assert_eq!(
            transition(
                NodeState::Up,
                StateOrigin::Liveness,
                Some(ms(2_600)),
                long,
                &s
            ),
            Some(NodeState::Suspect)
        );
        assert_eq!(
            transition(
                NodeState::Suspect,
                StateOrigin::Liveness,
                Some(ms(4_000)),
                long,
                &s
            ),
            None
        );
        assert_eq!(
            transition(
                NodeState::Suspect,
                StateOrigin::Liveness,
                Some(ms(8_001)),
                long,
                &s
            ),
            Some(NodeState::Down)
        );
        // Straight from Up when a tick sees a longer silence at once.
        assert_eq!(
            transition(
                NodeState::Up,
                StateOrigin::Liveness,
                Some(ms(9_000)),
                long,
                &s
            ),
            Some(NodeState::Down)
        );
        // Exactly at grace is not beyond it.
        assert_eq!(
            transition(
                NodeState::Suspect,
                StateOrigin::Liveness,
                Some(ms(8_000)),
                long,
                &s
            ),
            None
        );
        // Draining nodes die too, but are never merely Suspect.
        assert_eq!(
            transition(
                NodeState::Draining,
                StateOrigin::Liveness,
                Some(ms(5_000)),
                long,
                &s
            ),
            None
        );
        assert_eq!(
            transition(
                NodeState::Draining,
                StateOrigin::Liveness,
                Some(ms(8_500)),
                long,
                &s
            ),
            Some(NodeState::Down)
        );
    }

    #[test]
    fn liveness_clears_only_its_own_suspects() {
        let s = ControlSettings::default();
        let heard = Some(ms(300));
        for origin in [StateOrigin::Policy, StateOrigin::Operator] {
            assert_eq!(
                transition(NodeState::Suspect, origin, heard, ms(60_000), &s),
                None,
                "{origin:?}"
            );
            // But a silent node dies whoever made it Suspect.
            assert_eq!(
                transition(NodeState::Suspect, origin, Some(ms(9_000)), ms(60_000), &s),
                Some(NodeState::Down)
            );
        }
        assert_eq!(
            transition(
                NodeState::Suspect,
                StateOrigin::Registered,
                heard,
                ms(60_000),
                &s
            ),
            Some(NodeState::Up)
        );
    }

    #[test]
    fn heartbeats_resuming_bring_a_suspect_back() {
        let s = ControlSettings::default();
        assert_eq!(
            transition(
                NodeState::Suspect,
                StateOrigin::Liveness,
                Some(ms(300)),
                ms(60_000),
                &s
            ),
            Some(NodeState::Up)
        );
        // A new leader that has heard nothing does not clear a Suspect it inherited.
        assert_eq!(
            transition(NodeState::Suspect, StateOrigin::Liveness, None, ms(100), &s),
            None
        );
        // Down and Removed nodes are not brought back by liveness.
        assert_eq!(
            transition(
                NodeState::Down,
                StateOrigin::Liveness,
                Some(ms(10)),
                ms(60_000),
                &s
            ),
            None
        );
        assert_eq!(
            transition(
                NodeState::Removed,
                StateOrigin::Liveness,
                None,
                ms(60_000),
                &s
            ),
            None
        );
    }

    #[test]
    fn a_new_leader_waits_a_full_grace_before_declaring_down() {
        let s = ControlSettings::default();
        // Never heard from (the node spoke to the previous leader): silence counts from
        // this leader's start.
        assert_eq!(
            transition(NodeState::Up, StateOrigin::Liveness, None, ms(1_000), &s),
            None
        );
        assert_eq!(
            transition(NodeState::Up, StateOrigin::Liveness, None, ms(3_000), &s),
            Some(NodeState::Suspect)
        );
        assert_eq!(
            transition(
                NodeState::Suspect,
                StateOrigin::Liveness,
                None,
                ms(7_999),
                &s
            ),
            None
        );
        assert_eq!(
            transition(
                NodeState::Suspect,
                StateOrigin::Liveness,
                None,
                ms(8_001),
                &s
            ),
            Some(NodeState::Down)
        );
        // A heartbeat remembered from an earlier term is older than this leadership: it
        // does not shorten the wait.
        assert_eq!(
            transition(
                NodeState::Up,
                StateOrigin::Liveness,
                Some(ms(50_000)),
                ms(7_000),
                &s
            ),
            Some(NodeState::Suspect)
        );
        assert_eq!(
            transition(
                NodeState::Suspect,
                StateOrigin::Liveness,
                Some(ms(50_000)),
                ms(7_000),
                &s
            ),
            None
        );
    }

    #[test]
    fn declaring_down_bumps_the_epoch_and_stamps_the_time() {
        let n = node(3, NodeState::Suspect);
        let d = moved(&n, NodeState::Down, 1234, "silent".into());
        assert_eq!(
            (d.state, d.epoch, d.state_since_ms),
            (NodeState::Down, 2, 1234)
        );
        let u = moved(&n, NodeState::Up, 99, "back".into());
        assert_eq!(d.cause.origin, StateOrigin::Liveness);
        assert_eq!((u.state, u.epoch), (NodeState::Up, 1));
    }

    #[test]
    fn late_heartbeats_keep_an_operators_undrain_for_their_return() {
        let mut n = node(3, NodeState::Up);
        n.cause.origin = StateOrigin::Operator;
        n.cause.reason = "undrained by hand".into();
        let late = moved(&n, NodeState::Suspect, 10, "late".into());
        assert_eq!(late.cause.origin, StateOrigin::Liveness);
        assert_eq!(late.undrain_when_back.as_ref(), Some(&n.cause));
        let back = moved(&late, NodeState::Up, 20, "resumed".into());
        assert_eq!((back.state, &back.cause), (NodeState::Up, &n.cause));
        assert_eq!(back.undrain_when_back, None);
        // Down ends it; an Up node nobody undrained keeps nothing.
        let down = moved(&late, NodeState::Down, 30, "silent".into());
        assert_eq!(down.undrain_when_back, None);
        let plain = moved(
            &node(4, NodeState::Up),
            NodeState::Suspect,
            10,
            "late".into(),
        );
        assert_eq!(plain.undrain_when_back, None);
        let back = moved(&plain, NodeState::Up, 20, "resumed".into());
        assert_eq!(back.cause.origin, StateOrigin::Liveness);
    }

    /// A lease granted to node `id` at `at` (a heartbeat or registration acknowledged).
    fn granted(control: &Control, id: u64, at: Instant) {
        control.grants.note(NodeId(id), at);
    }

    #[tokio::test]
    async fn the_tick_writes_transitions_with_compares() {
        let control = Control::for_tests(ControlSettings::default());
        let store = MemStore::with(&cluster(&[1, 2, 3], vec![], 3));
        let t0 = Instant::now();
        control.set_leadership(Some(1), t0);
        let leader_since = t0;
        // Node 1 heartbeats throughout; 2 stopped at t0 + 1 s; 3 was never heard.
        granted(&control, 2, t0 + ms(1_000));
        granted(&control, 1, t0 + ms(4_900));
        let down = control
            .liveness_tick(&store, leader_since, t0 + ms(5_000))
            .await
            .unwrap();
        assert_eq!(down, 0);
        let c = store.read();
        assert_eq!(c.state(NodeId(1)), Some(NodeState::Up));
        assert_eq!(c.state(NodeId(2)), Some(NodeState::Suspect));
        assert_eq!(c.state(NodeId(3)), Some(NodeState::Suspect));
        granted(&control, 1, t0 + ms(9_500));
        let down = control
            .liveness_tick(&store, leader_since, t0 + ms(9_600))
            .await
            .unwrap();
        // Node 2: silent 8.6 s -> Down; node 3: leader for 9.6 s, never heard -> Down.
        assert_eq!(down, 2);
        let c = store.read();
        assert_eq!(c.state(NodeId(2)), Some(NodeState::Down));
        assert_eq!(c.nodes[&NodeId(2)].epoch, 2);
        assert_eq!(c.state(NodeId(1)), Some(NodeState::Up));
        // Node 2 speaks again: it is Down until it registers; liveness leaves it alone.
        granted(&control, 2, t0 + ms(9_700));
        let down = control
            .liveness_tick(&store, leader_since, t0 + ms(9_800))
            .await
            .unwrap();
        assert_eq!(down, 0);
        assert_eq!(store.read().state(NodeId(2)), Some(NodeState::Down));
    }

    /// A tick that waits for a node's lock while this member loses office and wins it
    /// back must not count that node's silence from the old leadership: the new term
    /// cleared the grants, and the node may hold a lease granted a moment before.
    #[tokio::test]
    async fn a_tick_spanning_a_change_of_leadership_declares_nobody_down() {
        let control = std::sync::Arc::new(Control::for_tests(ControlSettings::default()));
        let store = std::sync::Arc::new(MemStore::with(&cluster(&[1, 2], vec![], 2)));
        let t0 = Instant::now();
        control.set_leadership(Some(5), t0);
        // Both nodes heartbeat until a minute into the term.
        granted(&control, 1, t0 + ms(60_000));
        granted(&control, 2, t0 + ms(60_000));
        // A heartbeat of node 1 holds its lock (confirming leadership through an election).
        let held = control.grants.lock(NodeId(1)).await;
        let tick = {
            let (control, store) = (control.clone(), store.clone());
            tokio::spawn(async move { control.liveness_tick(&*store, t0, t0 + ms(60_100)).await })
        };
        // The term changes while the tick waits (whether it has reached the lock yet or
        // not, it reads the grants only once it holds it).
        tokio::task::yield_now().await;
        control.set_leadership(None, t0 + ms(60_050));
        control.set_leadership(Some(7), t0 + ms(60_060));
        drop(held);
        let r = tick.await.unwrap();
        assert!(matches!(r, Err(ApiError::NotLeader { .. })), "{r:?}");
        let c = store.read();
        assert_eq!(c.state(NodeId(1)), Some(NodeState::Up));
        assert_eq!(c.state(NodeId(2)), Some(NodeState::Up));
    }
}
