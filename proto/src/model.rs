//! The metadata model: shards, storage nodes, migrations and cluster settings.
//!
//! Every record carries `version`, the Raft log index of the write that last changed it. The
//! store assigns it when the record is applied; whatever version a writer puts in a record is
//! overwritten. Writers use the version they read for optimistic locking (see [`crate::txn`]).

use crate::ids::{MigrationId, NodeId, ShardId};
use crate::txn::{Key, Table};
use serde::{Deserialize, Serialize};

/// Upper bounds on record contents, so one record can never blow the frame or entry budget.
pub mod limits {
    /// Replicas per shard.
    pub const MAX_REPLICAS: usize = 16;
    /// Addresses per node.
    pub const MAX_ADDRS: usize = 8;
    /// Bytes in any one string field (addresses, reasons, model names, setting names).
    pub const MAX_STRING: usize = 1024;
    /// Top contributing features reported with a risk score.
    pub const MAX_FEATURES: usize = 16;
    /// Bytes in a setting's value.
    pub const MAX_SETTING_VALUE: usize = 64 * 1024;

    /// `s` cut to [`MAX_STRING`] bytes at a character boundary, ending in "..." when cut:
    /// reasons built from errors and model output can be any length, and a record or report
    /// carrying one longer than the bound would be refused whole.
    pub fn bounded(mut s: String) -> String {
        if s.len() > MAX_STRING {
            let mut cut = MAX_STRING - 3;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            s.truncate(cut);
            s.push_str("...");
        }
        s
    }
}

/// Where a shard stands with respect to migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShardState {
    /// Served by its replicas; no move in progress.
    Stable,
    /// A migration is copying it; the id names the migration record.
    Moving(MigrationId),
}

/// The epoch every shard is created at. Its founding replicas hold the whole (empty) shard
/// without copying it; at any later epoch a node joins only as a learner, by a copy.
pub const SHARD_CREATION_EPOCH: u64 = 1;

/// A data shard and where it lives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Shard {
    /// The shard's id.
    pub id: ShardId,
    /// Storage nodes holding it, primary first.
    pub replicas: Vec<NodeId>,
    /// Nodes joining as replicas: they receive every write (their acknowledgement is needed
    /// to commit) while they copy the shard, and serve nothing until they are replicas.
    pub learners: Vec<NodeId>,
    /// Bumped on every change of ownership; storage nodes refuse requests for older epochs.
    pub epoch: u64,
    /// Log index of the last change (assigned by the store).
    pub version: u64,
    /// Stable or moving.
    pub state: ShardState,
    /// Bytes of data in the shard at its last verified copy.
    pub size_bytes: u64,
    /// CRC-64/XZ of the shard's content at its last verified copy.
    pub crc64: u64,
}

/// Lifecycle of a storage node as the planner sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeState {
    /// Healthy; may receive new placements.
    Up,
    /// Risk above the watch threshold or heartbeats late; no action yet.
    Suspect,
    /// Being emptied; no new placements.
    Draining,
    /// Considered dead.
    Down,
    /// Removed by an operator; kept for history.
    Removed,
}

/// A storage node's predicted risk, as reported in its heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Risk {
    /// Calibrated probability of failure within the model's horizon, 0..=1.
    pub score: f64,
    /// Model name and version that produced the score.
    pub model: String,
    /// The features that pushed the score most, with their contributions.
    pub top_features: Vec<(String, f64)>,
}

/// A storage node in the registry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// The node's id.
    pub id: NodeId,
    /// The incarnation of its data directory: random, chosen when the directory was created.
    /// A node that comes back with another incarnation lost its data.
    pub incarnation: u64,
    /// Addresses the node serves data on (`host:port`), the first preferred.
    pub addrs: Vec<String>,
    /// Its HTTP admin address (`/health`, `/metrics`, `/v1/status`), empty if none.
    pub admin: String,
    /// Failure domain: replicas of a shard go to different racks where possible.
    pub rack: String,
    /// Larger failure domain.
    pub zone: String,
    /// Bytes the node may hold.
    pub capacity_bytes: u64,
    /// Bytes the node holds.
    pub used_bytes: u64,
    /// Lifecycle state.
    pub state: NodeState,
    /// Wall-clock milliseconds (of the metadata leader that wrote it) when `state` last
    /// changed.
    pub state_since_ms: u64,
    /// Latest predicted risk.
    pub risk: Risk,
    /// Bumped by the control plane when it declares the node Down: the node's lease and
    /// everything it did under the old epoch are void.
    pub epoch: u64,
    /// Wall-clock milliseconds of the last heartbeat, as reported by the node.
    pub last_heartbeat_ms: u64,
    /// Log index of the last change (assigned by the store).
    pub version: u64,
    /// Cordoned by an operator: no new replicas are placed on the node, nothing is moved off
    /// it. Independent of `state`, and only an operator sets or clears it (a registration
    /// keeps it), so a node under maintenance stays cordoned across restarts.
    pub cordoned: bool,
    /// Who put the node in its `state`, why, and its risk at that moment. Two deciders share
    /// the states (liveness marks late nodes Suspect, the risk policy marks at-risk nodes
    /// Suspect or Draining, operators drain and undrain), and each may only undo its own
    /// decisions: this is how they tell them apart.
    pub cause: StateCause,
    /// The drain (its cause) a node was under when liveness declared it Down, resumed when
    /// the node registers again with its data: a drained node that reboots, or is silent a
    /// while, is still being emptied when it returns instead of quietly taking replicas
    /// again. Cleared by that return, by a registration as a new incarnation (nothing left
    /// to drain) and by an operator's undrain.
    pub drain_when_back: Option<StateCause>,
    /// The operator's undrain (Up, origin Operator) a node was under when liveness marked it
    /// Suspect for late heartbeats, restored when they resume: an undrain holds until the
    /// node's risk falls below the policy's leave threshold, and a heartbeat blip must not
    /// hand a node the operator kept in service back to the policy to drain. Cleared by any
    /// other change of state (Down, an operator's command, a new incarnation).
    pub undrain_when_back: Option<StateCause>,
}

/// Which part of the system set a node's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum StateOrigin {
    /// The node registered (or came back from Down): nobody decided anything since.
    #[default]
    Registered,
    /// The control plane's liveness rules: heartbeats late (Suspect), stopped (Down), or
    /// resumed (Up).
    Liveness,
    /// The risk policy on the metadata leader: Suspect (watch, no new replicas) or Draining,
    /// and back to Up once the risk has fallen below the policy's leave threshold.
    Policy,
    /// An operator (`augurctl node drain|undrain`). An operator's drain is never undone by
    /// the policy; an operator's undrain holds until the node's risk falls below the
    /// policy's leave threshold.
    Operator,
}

/// Why a node is in its state: recorded with every decision that changes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct StateCause {
    /// Who decided.
    pub origin: StateOrigin,
    /// Why, for people (at most [`limits::MAX_STRING`] bytes).
    pub reason: String,
    /// The node's risk score when the decision was taken (0 when risk played no part).
    pub risk: f64,
    /// Policy decisions only: the node was in the policy's at-risk state (k of the last n
    /// rounds above `enter`), not merely above the watch threshold. A new leader rebuilds the
    /// policy's state from this, so hysteresis survives leader changes.
    pub at_risk: bool,
    /// Policy decisions only: the node is at risk but held out (left in place on purpose, to
    /// measure the policy's precision).
    pub holdout: bool,
}

/// Name of the setting holding the storm guard's state (JSON [`StormGuard`]), written by the
/// metadata leader's risk policy when the guard trips or clears.
pub const STORM_GUARD_SETTING: &str = "control.storm_guard";

/// The risk policy's storm guard, as persisted: while `frozen`, automated moves stop (the
/// policy drains no new node, and the planner plans no new moves off nodes the policy
/// drained); operators' drains and the re-replication of Down nodes go on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct StormGuard {
    /// Automated moves are frozen.
    pub frozen: bool,
    /// The alarm, for people, while frozen.
    pub alarm: Option<String>,
    /// The nodes at risk when the guard last tripped.
    pub flagged: Vec<NodeId>,
    /// Wall-clock milliseconds (of the leader that wrote it) of the last change.
    pub since_ms: u64,
}

/// Name of the setting holding the capacity planner's alarm and its last call of the
/// auto-scaling hook (JSON [`CapacityAlarm`]), written by the metadata leader.
pub const CAPACITY_SETTING: &str = "control.capacity";

/// The capacity planner's alarm, as persisted: written when the alarm is raised or cleared,
/// when the number of nodes it asks for changes, and before each call of the hook, so
/// `augurctl status` shows it and a new leader honours the last call's cooldown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct CapacityAlarm {
    /// Headroom after draining the at-risk nodes is below the minimum (or fewer nodes accept
    /// replicas than the replication factor).
    pub alarm: bool,
    /// Why, for people, while raised.
    pub reason: Option<String>,
    /// Headroom fraction when written.
    pub headroom: f64,
    /// Storage nodes the planner asks for.
    pub nodes_wanted: u32,
    /// Capacity missing for the headroom to reach its minimum, bytes.
    pub bytes_short: u64,
    /// Wall-clock milliseconds (of the leader that wrote it) of the last change.
    pub since_ms: u64,
    /// The last call of the hook, if any.
    pub last_call: Option<CapacityHookCall>,
}

/// One call of the auto-scaling hook, recorded before it is made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct CapacityHookCall {
    /// Wall-clock milliseconds (of the calling leader).
    pub at_ms: u64,
    /// Nodes asked for.
    pub nodes_wanted: u32,
    /// Storage nodes accepting replicas (Up, not cordoned) then: the nodes asked for have
    /// come once this many plus `nodes_wanted` accept replicas.
    pub nodes_accepting: u64,
}

/// Progress of one shard move; see DESIGN.md "Moving a shard".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MigrationState {
    /// Committed by the planner; nothing copied yet.
    Planned,
    /// Bulk copy in progress.
    Copying,
    /// Forwarding writes that arrived during the copy.
    CatchingUp,
    /// Source fenced; final tail and verification.
    Cutover,
    /// Ownership moved; terminal.
    Committed,
    /// Given up; the source still owns the shard; terminal.
    Aborted,
}

/// What a move does to the shard's replica set when it commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MigrationKind {
    /// Re-replication: the destination is added (the shard had fewer replicas than `rf`);
    /// `from` names the lost replica, or the copy source when that is unknown.
    Restore,
    /// Drain: the destination replaces `from`, a replica on a node being emptied, in one
    /// write, so the shard keeps its replica count throughout.
    Drain,
    /// Balance: as a drain move, the destination replaces `from`, a secondary on a node
    /// holding more than its share of replicas, so a node added or emptied takes its share.
    Balance,
}

/// The highest migration id a record may carry (ids count up from 1, one per planned move).
pub const MAX_MIGRATION_ID: u64 = 1 << 48;

/// One planned move of one shard from one node to another.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Migration {
    /// The migration's id.
    pub id: MigrationId,
    /// The shard being moved.
    pub shard: ShardId,
    /// Current owner.
    pub from: NodeId,
    /// Destination.
    pub to: NodeId,
    /// Progress.
    pub state: MigrationState,
    /// Why the move was planned (e.g. the risk report that triggered it) and, once aborted,
    /// why it was given up.
    pub reason: String,
    /// Higher runs first.
    pub priority: u32,
    /// Wall-clock milliseconds by which the planning leader expected the move done, for
    /// operators. It decides nothing: a move is given up after `move_timeout_ms` without
    /// progress, as the current leader's own clock measures it (clocks of two leaders differ).
    pub deadline_ms: u64,
    /// Bytes verified at the destination so far.
    pub bytes_copied: u64,
    /// Bytes to copy.
    pub bytes_total: u64,
    /// Attempts so far (retries after aborts).
    pub attempts: u32,
    /// Restore (add the destination) or drain (replace the source with it).
    pub kind: MigrationKind,
    /// Wall-clock milliseconds (of the leader that wrote it) when the copy started; 0
    /// before. With `bytes_copied` and `rate_bytes_per_s` it gives progress and an ETA.
    pub started_ms: u64,
    /// Copy rate measured at the latest recorded step, bytes per second (0: not yet).
    pub rate_bytes_per_s: u64,
    /// Log index of the last change (assigned by the store).
    pub version: u64,
}

/// A named cluster setting (planner policy, thresholds) with an opaque value.
///
/// Settings are also the plain registers the consistency tests exercise: a versioned byte
/// value under a name, with nothing else to get in the way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Setting {
    /// The setting's name.
    pub name: String,
    /// The value, at most [`limits::MAX_SETTING_VALUE`] bytes.
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// Log index of the last change (assigned by the store).
    pub version: u64,
}

/// Any record of the model.
// Node records are most of what the registry holds and are read far more than written;
// boxing them would add an allocation per record for a few hundred bytes of stack.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Record {
    /// A shard.
    Shard(Shard),
    /// A storage node.
    Node(Node),
    /// A migration.
    Migration(Migration),
    /// A setting.
    Setting(Setting),
}

/// Why a record was refused before it reached the log.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RecordError {
    /// An id is zero.
    #[error(transparent)]
    Id(#[from] crate::ids::IdError),
    /// A shard must live somewhere.
    #[error("shard {0} has no replicas")]
    NoReplicas(ShardId),
    /// A node appears twice in one shard's replica and learner lists.
    #[error("shard {shard} lists node {node} twice")]
    DuplicateReplica {
        /// The shard.
        shard: ShardId,
        /// The repeated node.
        node: NodeId,
    },
    /// A list or string exceeds its limit.
    #[error("{field} too large: {len} > {max}")]
    TooLarge {
        /// Which field.
        field: &'static str,
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A migration must move between two different nodes.
    #[error("migration {0} moves a shard onto the node it is already on")]
    SelfMigration(MigrationId),
    /// A risk score outside 0..=1 or not a number.
    #[error("risk score {0} is not a probability")]
    BadRisk(f64),
    /// A setting name must be non-empty.
    #[error("setting name is empty")]
    EmptyName,
}

fn check_len(field: &'static str, len: usize, max: usize) -> Result<(), RecordError> {
    if len > max {
        Err(RecordError::TooLarge { field, len, max })
    } else {
        Ok(())
    }
}

impl Record {
    /// The key this record is stored under.
    pub fn key(&self) -> Key {
        match self {
            Record::Shard(s) => Key::Shard(s.id),
            Record::Node(n) => Key::Node(n.id),
            Record::Migration(m) => Key::Migration(m.id),
            Record::Setting(s) => Key::Setting(s.name.clone()),
        }
    }

    /// The table the record lives in.
    pub fn table(&self) -> Table {
        self.key().table()
    }

    /// The log index that last changed the record.
    pub fn version(&self) -> u64 {
        match self {
            Record::Shard(s) => s.version,
            Record::Node(n) => n.version,
            Record::Migration(m) => m.version,
            Record::Setting(s) => s.version,
        }
    }

    /// Stamps the version; only the state machine calls this, with the applying log index.
    pub fn set_version(&mut self, version: u64) {
        match self {
            Record::Shard(s) => s.version = version,
            Record::Node(n) => n.version = version,
            Record::Migration(m) => m.version = version,
            Record::Setting(s) => s.version = version,
        }
    }

    /// Checks everything that can be checked without the store, so that a bad record is
    /// refused before it costs a log entry.
    pub fn validate(&self) -> Result<(), RecordError> {
        use limits::*;
        match self {
            Record::Shard(s) => {
                s.id.validate()?;
                if s.replicas.is_empty() {
                    return Err(RecordError::NoReplicas(s.id));
                }
                check_len("replicas", s.replicas.len(), MAX_REPLICAS)?;
                check_len("learners", s.learners.len(), MAX_REPLICAS)?;
                let all: Vec<NodeId> = s.replicas.iter().chain(&s.learners).copied().collect();
                for (i, n) in all.iter().enumerate() {
                    n.validate()?;
                    if all[..i].contains(n) {
                        return Err(RecordError::DuplicateReplica {
                            shard: s.id,
                            node: *n,
                        });
                    }
                }
                if let ShardState::Moving(m) = s.state {
                    m.validate()?;
                }
            }
            Record::Node(n) => {
                n.id.validate()?;
                check_len("addrs", n.addrs.len(), MAX_ADDRS)?;
                for a in &n.addrs {
                    check_len("addr", a.len(), MAX_STRING)?;
                }
                check_len("admin", n.admin.len(), MAX_STRING)?;
                check_len("rack", n.rack.len(), MAX_STRING)?;
                check_len("zone", n.zone.len(), MAX_STRING)?;
                if !(0.0..=1.0).contains(&n.risk.score) {
                    return Err(RecordError::BadRisk(n.risk.score));
                }
                check_len("risk.model", n.risk.model.len(), MAX_STRING)?;
                check_len("risk.top_features", n.risk.top_features.len(), MAX_FEATURES)?;
                for (name, _) in &n.risk.top_features {
                    check_len("feature name", name.len(), MAX_STRING)?;
                }
                for cause in std::iter::once(&n.cause)
                    .chain(&n.drain_when_back)
                    .chain(&n.undrain_when_back)
                {
                    check_len("cause.reason", cause.reason.len(), MAX_STRING)?;
                    if !(0.0..=1.0).contains(&cause.risk) {
                        return Err(RecordError::BadRisk(cause.risk));
                    }
                }
            }
            Record::Migration(m) => {
                m.id.validate()?;
                // Planners number new moves from the highest id: one at the top of the range
                // would leave no id for the next.
                check_len("migration id", m.id.0 as usize, MAX_MIGRATION_ID as usize)?;
                m.shard.validate()?;
                m.from.validate()?;
                m.to.validate()?;
                if m.from == m.to {
                    return Err(RecordError::SelfMigration(m.id));
                }
                check_len("reason", m.reason.len(), MAX_STRING)?;
            }
            Record::Setting(s) => {
                if s.name.is_empty() {
                    return Err(RecordError::EmptyName);
                }
                check_len("setting name", s.name.len(), MAX_STRING)?;
                check_len("setting value", s.value.len(), MAX_SETTING_VALUE)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(replicas: Vec<u64>) -> Record {
        Record::Shard(Shard {
            id: ShardId(1),
            replicas: replicas.into_iter().map(NodeId).collect(),
            learners: vec![],
            epoch: 1,
            version: 0,
            state: ShardState::Stable,
            size_bytes: 0,
            crc64: 0,
        })
    }

    #[test]
    fn shard_validation() {
        assert!(shard(vec![1, 2, 3]).validate().is_ok());
        assert_eq!(
            shard(vec![]).validate(),
            Err(RecordError::NoReplicas(ShardId(1)))
        );
        assert!(matches!(
            shard(vec![1, 2, 1]).validate(),
            Err(RecordError::DuplicateReplica { .. })
        ));
        assert!(shard(vec![1, 0]).validate().is_err());
        // A learner that is also a replica is listed twice.
        let mut r = shard(vec![1, 2]);
        if let Record::Shard(s) = &mut r {
            s.learners = vec![NodeId(2)];
        }
        assert!(matches!(
            r.validate(),
            Err(RecordError::DuplicateReplica { .. })
        ));
    }

    #[test]
    fn migration_ids_leave_room_for_the_next() {
        let m = |id: u64| {
            Record::Migration(Migration {
                id: MigrationId(id),
                shard: ShardId(1),
                from: NodeId(1),
                to: NodeId(2),
                state: MigrationState::Planned,
                reason: String::new(),
                priority: 0,
                deadline_ms: 0,
                bytes_copied: 0,
                bytes_total: 0,
                attempts: 1,
                kind: MigrationKind::Drain,
                started_ms: 0,
                rate_bytes_per_s: 0,
                version: 0,
            })
        };
        assert!(m(1).validate().is_ok());
        assert!(m(MAX_MIGRATION_ID).validate().is_ok());
        assert!(matches!(
            m(u64::MAX).validate(),
            Err(RecordError::TooLarge { .. })
        ));
    }

    #[test]
    fn version_is_stamped() {
        let mut r = shard(vec![1]);
        r.set_version(42);
        assert_eq!(r.version(), 42);
        assert_eq!(r.key(), Key::Shard(ShardId(1)));
    }
}
