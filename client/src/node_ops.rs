//! Operators' commands on storage nodes: drain, undrain, cordon, uncordon; and the risk
//! policy's storm guard.
//!
//! Each command is a compare-and-set of the node's record, like every control decision: it
//! reads the record, computes the new one ([`apply`], a pure function), and writes it only if
//! the record is still at the version read. A record changed meanwhile (a heartbeat's usage
//! update, a policy decision) is read again and the command decided again, a few times.
//!
//! - **drain**: Draining, origin Operator. Sticky: the risk policy never undrains an
//!   operator's drain; the planner empties the node.
//! - **undrain**: Up, origin Operator, from Draining (whoever drained it) or from a Suspect
//!   the policy set. The mover cancels the node's unfinished moves. The policy leaves the
//!   node alone until its risk falls below the policy's leave threshold, then watches it
//!   again as usual. Of a Down node that was draining: the drain it would resume when it
//!   comes back is dropped (it comes back Up).
//! - **cordon** / **uncordon**: the record's `cordoned` flag: no new replicas are placed on
//!   a cordoned node, nothing is moved off it. The state is not touched.
//!
//! Commands are idempotent: asking for what already holds changes nothing and succeeds.

use crate::client::{CasOutcome, Client};
use crate::error::Error;
use augur_proto::{
    Key, Node, NodeId, NodeState, Record, StateCause, StateOrigin, StormGuard, STORM_GUARD_SETTING,
};

/// An operator's command on a storage node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeCommand {
    /// Empty the node (sticky).
    Drain,
    /// Stop emptying it; back to Up.
    Undrain,
    /// No new replicas on it.
    Cordon,
    /// Replicas may be placed on it again.
    Uncordon,
}

impl NodeCommand {
    /// The command's name, as `augurctl node` spells it.
    pub fn name(self) -> &'static str {
        match self {
            NodeCommand::Drain => "drain",
            NodeCommand::Undrain => "undrain",
            NodeCommand::Cordon => "cordon",
            NodeCommand::Uncordon => "uncordon",
        }
    }
}

/// Why a command was refused. Nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum NodeCommandError {
    /// No such node is registered.
    #[error("node {0} is not registered")]
    UnknownNode(NodeId),
    /// The node is Down or Removed: there is nothing to drain, and its replicas are the
    /// re-replication's business. (Cordon refuses only Removed nodes: a Down node may come
    /// back, and an operator may want it cordoned when it does.)
    #[error("node {node} is {state:?}: `{command}` needs a node that is not {state:?}")]
    NotLive {
        /// The node.
        node: NodeId,
        /// Its state.
        state: NodeState,
        /// The command refused.
        command: &'static str,
    },
    /// Undrain of a node that is neither draining nor watched by the risk policy (a Suspect
    /// from late heartbeats clears when they resume).
    #[error("node {node} is not draining: it is {state:?} ({origin:?})")]
    NotDraining {
        /// The node.
        node: NodeId,
        /// Its state.
        state: NodeState,
        /// Who set it.
        origin: StateOrigin,
    },
    /// The record kept changing between the read and the write.
    #[error("node {0}'s record kept changing under the command; try again")]
    Contended(NodeId),
    /// The cluster could not be asked, or the write's outcome is unknown.
    #[error(transparent)]
    Client(#[from] Error),
}

/// What a command did.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeCommandOutcome {
    /// The record was changed; the node as written (with its new version).
    Changed(Node),
    /// What was asked already held; the node as read.
    Unchanged(Node),
}

/// The record `node` becomes under `cmd` (`None`: it already is so), or why the command is
/// refused. `reason` is recorded as the state's cause by drain and undrain; `now_ms` stamps a
/// state change.
pub fn apply(
    node: &Node,
    cmd: NodeCommand,
    reason: &str,
    now_ms: u64,
) -> Result<Option<Node>, NodeCommandError> {
    let refuse = |state| NodeCommandError::NotLive {
        node: node.id,
        state,
        command: cmd.name(),
    };
    let mut n = node.clone();
    let set_state = |n: &mut Node, state: NodeState| {
        if n.state != state {
            n.state_since_ms = now_ms;
        }
        n.state = state;
        // The operator decides afresh: an undrain kept across late heartbeats is replaced.
        n.undrain_when_back = None;
        n.cause = StateCause {
            origin: StateOrigin::Operator,
            reason: reason.to_string(),
            risk: node.risk.score.clamp(0.0, 1.0),
            at_risk: false,
            holdout: false,
        };
    };
    match cmd {
        // A Down node that was draining would resume its drain on its return: undrain
        // cancels that, and the node comes back Up.
        NodeCommand::Undrain if node.state == NodeState::Down && node.drain_when_back.is_some() => {
            n.drain_when_back = None;
        }
        NodeCommand::Drain | NodeCommand::Undrain
            if matches!(node.state, NodeState::Down | NodeState::Removed) =>
        {
            return Err(refuse(node.state))
        }
        NodeCommand::Cordon | NodeCommand::Uncordon if node.state == NodeState::Removed => {
            return Err(refuse(node.state))
        }
        NodeCommand::Drain => {
            if node.state == NodeState::Draining && node.cause.origin == StateOrigin::Operator {
                return Ok(None);
            }
            set_state(&mut n, NodeState::Draining);
        }
        NodeCommand::Undrain => match (node.state, node.cause.origin) {
            (NodeState::Up, _) => return Ok(None),
            (NodeState::Draining, _) | (NodeState::Suspect, StateOrigin::Policy) => {
                set_state(&mut n, NodeState::Up)
            }
            (state, origin) => {
                return Err(NodeCommandError::NotDraining {
                    node: node.id,
                    state,
                    origin,
                })
            }
        },
        NodeCommand::Cordon | NodeCommand::Uncordon => {
            let want = cmd == NodeCommand::Cordon;
            if node.cordoned == want {
                return Ok(None);
            }
            n.cordoned = want;
        }
    }
    Ok(Some(n))
}

/// Attempts at a command whose record keeps changing under it.
const ATTEMPTS: usize = 8;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Client {
    /// Runs an operator's command on node `id` (see the module documentation); `reason` is
    /// recorded on the node for drain and undrain (default: `operator <command>`).
    pub async fn node_command(
        &self,
        id: NodeId,
        cmd: NodeCommand,
        reason: Option<&str>,
    ) -> Result<NodeCommandOutcome, NodeCommandError> {
        let default_reason = format!("operator {}", cmd.name());
        let reason = reason.unwrap_or(&default_reason);
        for _ in 0..ATTEMPTS {
            let node = match self.get(&Key::Node(id)).await? {
                Some(Record::Node(n)) => n,
                _ => return Err(NodeCommandError::UnknownNode(id)),
            };
            let Some(mut updated) = apply(&node, cmd, reason, now_ms())? else {
                return Ok(NodeCommandOutcome::Unchanged(node));
            };
            match self
                .cas(Record::Node(updated.clone()), Some(node.version))
                .await?
            {
                CasOutcome::Committed { version } => {
                    updated.version = version;
                    return Ok(NodeCommandOutcome::Changed(updated));
                }
                CasOutcome::Conflict { .. } => continue,
            }
        }
        Err(NodeCommandError::Contended(id))
    }

    /// The risk policy's storm guard, as recorded (not frozen when it never tripped).
    pub async fn storm_guard(&self) -> Result<StormGuard, Error> {
        match self.get(&Key::Setting(STORM_GUARD_SETTING.into())).await? {
            Some(Record::Setting(s)) => {
                serde_json::from_slice(&s.value).map_err(|e| Error::Unexpected {
                    request: "storm guard",
                    response: format!("setting {STORM_GUARD_SETTING} does not parse: {e}"),
                })
            }
            _ => Ok(StormGuard::default()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use augur_proto::Risk;

    fn node(state: NodeState, origin: StateOrigin) -> Node {
        Node {
            id: NodeId(2),
            incarnation: 1,
            addrs: vec![],
            admin: String::new(),
            rack: String::new(),
            zone: String::new(),
            capacity_bytes: 0,
            used_bytes: 0,
            state,
            state_since_ms: 1,
            risk: Risk {
                score: 0.8,
                ..Default::default()
            },
            epoch: 1,
            last_heartbeat_ms: 0,
            version: 5,
            cordoned: false,
            drain_when_back: None,
            undrain_when_back: None,
            cause: StateCause {
                origin,
                ..Default::default()
            },
        }
    }

    #[test]
    fn drain_is_the_operators_and_idempotent() {
        let n = node(NodeState::Draining, StateOrigin::Policy);
        let d = apply(&n, NodeCommand::Drain, "disk swap", 9)
            .unwrap()
            .unwrap();
        assert_eq!(
            (d.state, d.cause.origin),
            (NodeState::Draining, StateOrigin::Operator)
        );
        assert_eq!(
            d.state_since_ms, 1,
            "already draining: the state did not change"
        );
        assert_eq!((d.cause.reason.as_str(), d.cause.risk), ("disk swap", 0.8));
        assert_eq!(apply(&d, NodeCommand::Drain, "again", 10).unwrap(), None);
        let up = apply(
            &node(NodeState::Up, StateOrigin::Registered),
            NodeCommand::Drain,
            "x",
            9,
        )
        .unwrap()
        .unwrap();
        assert_eq!((up.state, up.state_since_ms), (NodeState::Draining, 9));
    }

    #[test]
    fn undrain_returns_drained_and_policy_watched_nodes_to_up() {
        for (state, origin) in [
            (NodeState::Draining, StateOrigin::Operator),
            (NodeState::Draining, StateOrigin::Policy),
            (NodeState::Suspect, StateOrigin::Policy),
        ] {
            let u = apply(&node(state, origin), NodeCommand::Undrain, "ok", 3)
                .unwrap()
                .unwrap();
            assert_eq!(
                (u.state, u.cause.origin),
                (NodeState::Up, StateOrigin::Operator)
            );
        }
        assert_eq!(
            apply(
                &node(NodeState::Up, StateOrigin::Policy),
                NodeCommand::Undrain,
                "",
                3
            )
            .unwrap(),
            None
        );
        assert!(matches!(
            apply(
                &node(NodeState::Suspect, StateOrigin::Liveness),
                NodeCommand::Undrain,
                "",
                3
            ),
            Err(NodeCommandError::NotDraining { .. })
        ));
    }

    #[test]
    fn undrain_of_a_down_node_drops_the_drain_it_would_resume() {
        let mut down = node(NodeState::Down, StateOrigin::Liveness);
        down.drain_when_back = Some(StateCause {
            origin: StateOrigin::Operator,
            ..Default::default()
        });
        let u = apply(&down, NodeCommand::Undrain, "keep it", 4)
            .unwrap()
            .unwrap();
        assert_eq!(
            (
                u.state,
                u.cause.origin,
                u.state_since_ms,
                u.drain_when_back.clone()
            ),
            (NodeState::Down, StateOrigin::Liveness, 1, None)
        );
        // Nothing left to undo: refused, as for any Down node.
        assert!(matches!(
            apply(&u, NodeCommand::Undrain, "", 5),
            Err(NodeCommandError::NotLive { .. })
        ));
    }

    #[test]
    fn dead_nodes_are_refused_typed_and_cordon_is_a_flag() {
        for state in [NodeState::Down, NodeState::Removed] {
            for cmd in [NodeCommand::Drain, NodeCommand::Undrain] {
                assert!(matches!(
                    apply(&node(state, StateOrigin::Liveness), cmd, "", 1),
                    Err(NodeCommandError::NotLive { .. })
                ));
            }
        }
        assert!(matches!(
            apply(
                &node(NodeState::Removed, StateOrigin::Operator),
                NodeCommand::Cordon,
                "",
                1
            ),
            Err(NodeCommandError::NotLive { .. })
        ));
        let n = node(NodeState::Down, StateOrigin::Liveness);
        let c = apply(&n, NodeCommand::Cordon, "", 1).unwrap().unwrap();
        assert!(c.cordoned);
        assert_eq!((c.state, c.cause.clone()), (n.state, n.cause.clone()));
        assert_eq!(apply(&c, NodeCommand::Cordon, "", 1).unwrap(), None);
        let u = apply(&c, NodeCommand::Uncordon, "", 1).unwrap().unwrap();
        assert!(!u.cordoned);
    }
}
