//! Which certificate role may make which request of a metadata member.
//!
//! | request | member | operator | storage node N | client |
//! |---|---|---|---|---|
//! | Raft messages | yes | | | |
//! | bootstrap, membership, leader transfer | | yes | | |
//! | transactions | yes | yes | only on node record N | |
//! | writing the data plane's layout (`data.cluster`) | | | | |
//! | reads, watch, status, identity | yes | yes | yes | yes |
//!
//! A storage node may write only its own node record: it registers itself and reports its
//! usage and risk there. Changes to shards (promotions, removals) it asks the control plane
//! for, which decides and writes them; it never writes a shard record itself. Clients read.

use augur_proto::data::DATA_CLUSTER_SETTING;
use augur_proto::wire::ApiError;
use augur_proto::{Key, Op, Request};
use augur_transport::roles::RoleError;
use augur_transport::Role;

/// Refuses `req` unless `role` allows it; says which role would.
pub(crate) fn authorize(role: &Result<Role, RoleError>, req: &Request) -> Result<(), ApiError> {
    let role = match role {
        Ok(r) => *r,
        Err(e) => return Err(ApiError::PermissionDenied(e.to_string())),
    };
    let denied = |what: &str, who: &str| {
        Err(ApiError::PermissionDenied(format!(
            "{what} needs a {who} certificate; this one is a {role} certificate"
        )))
    };
    match req {
        Request::Raft { .. } => match role {
            Role::Member => Ok(()),
            _ => denied("Raft traffic", "metadata member"),
        },
        Request::Register(node) => match role {
            Role::Storage(id) if node.id == id => Ok(()),
            Role::Storage(id) => Err(ApiError::PermissionDenied(format!(
                "storage node {id} may register only itself, not node {}",
                node.id
            ))),
            _ => denied("registering a storage node", "storage node"),
        },
        Request::Heartbeat(report) | Request::HealthHeartbeat { report, .. } => match role {
            Role::Storage(id) if report.node == id => Ok(()),
            Role::Storage(id) => Err(ApiError::PermissionDenied(format!(
                "storage node {id} may heartbeat only for itself, not node {}",
                report.node
            ))),
            _ => denied("heartbeats", "storage node"),
        },
        Request::HealthSamples { node, .. } => match role {
            Role::Storage(id) if *node == id => Ok(()),
            Role::Storage(id) => Err(ApiError::PermissionDenied(format!(
                "storage node {id} may send health samples only for itself, not node {node}"
            ))),
            _ => denied("health samples", "storage node"),
        },
        Request::ReportReplica { .. } => match role {
            Role::Storage(_) => Ok(()),
            _ => denied("reporting a replica", "storage node"),
        },
        Request::InitDataPlane(_) | Request::ForcePrimary { .. } => match role {
            Role::Operator => Ok(()),
            _ => denied("creating the data plane or forcing a primary", "operator"),
        },
        Request::Bootstrap
        | Request::AddLearner { .. }
        | Request::Promote { .. }
        | Request::RemoveMember { .. }
        | Request::TransferLeader { .. } => match role {
            Role::Operator => Ok(()),
            _ => denied("changing the metadata membership", "operator"),
        },
        Request::Txn(txn)
            if txn
                .ops
                .iter()
                .any(|op| op.key() == Key::Setting(DATA_CLUSTER_SETTING.into())) =>
        {
            // Written once, by `InitDataPlane` (which checks it), and fixed for good: a
            // new shard count would send every key to another shard, which holds none of
            // them.
            Err(ApiError::PermissionDenied(format!(
                "the data plane's layout (setting {DATA_CLUSTER_SETTING}) is fixed when \
                 `augurctl cluster init` creates it; no transaction may write or delete it"
            )))
        }
        Request::Txn(txn) => match role {
            Role::Member | Role::Operator => Ok(()),
            Role::Storage(node) => {
                let own = Key::Node(node);
                let foreign = txn
                    .compares
                    .iter()
                    .map(|c| c.key.clone())
                    .chain(txn.ops.iter().map(Op::key))
                    .find(|k| *k != own);
                match foreign {
                    None => Ok(()),
                    Some(k) => Err(ApiError::PermissionDenied(format!(
                        "storage node {node} may write only its own node record, not {k}"
                    ))),
                }
            }
            Role::Client => denied("writing metadata", "operator"),
        },
        Request::Get { .. }
        | Request::List { .. }
        | Request::Watch { .. }
        | Request::Status
        | Request::Members
        | Request::Identity => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use augur_proto::{MemberId, NodeId, Record, Setting, Txn};

    fn setting_txn() -> Request {
        Request::Txn(Txn::cas(
            Record::Setting(Setting {
                name: "x".into(),
                value: vec![1],
                version: 0,
            }),
            None,
        ))
    }

    fn node_txn(id: u64) -> Request {
        Request::Txn(Txn {
            compares: vec![],
            ops: vec![Op::Delete(Key::Node(NodeId(id)))],
        })
    }

    fn raft() -> Request {
        Request::Raft {
            kind: augur_proto::wire::RaftRpcKind::Vote,
            envelope: augur_proto::wire::RaftEnvelope {
                cluster: augur_proto::ClusterId(1),
                from: MemberId(1),
                from_incarnation: 1,
                to: MemberId(2),
                to_incarnation: 2,
                membership_index: 0,
            },
            payload: vec![],
        }
    }

    fn allowed(role: Role, req: &Request) -> bool {
        authorize(&Ok(role), req).is_ok()
    }

    #[test]
    fn each_role_gets_what_it_needs_and_no_more() {
        let storage = Role::Storage(NodeId(5));
        // Raft: members only.
        assert!(allowed(Role::Member, &raft()));
        for r in [Role::Operator, Role::Client, storage] {
            assert!(!allowed(r, &raft()), "{r}");
        }
        // Membership: operators only.
        let add = Request::AddLearner {
            id: MemberId(4),
            addr: "127.0.0.1:1".into(),
        };
        for req in [
            add,
            Request::Bootstrap,
            Request::TransferLeader { to: MemberId(1) },
        ] {
            assert!(allowed(Role::Operator, &req));
            for r in [Role::Member, Role::Client, storage] {
                assert!(!allowed(r, &req), "{r} {req:?}");
            }
        }
        // Metadata writes: members and operators; a storage node on its own record only.
        assert!(allowed(Role::Operator, &setting_txn()));
        assert!(allowed(Role::Member, &setting_txn()));
        assert!(!allowed(Role::Client, &setting_txn()));
        assert!(!allowed(storage, &setting_txn()));
        assert!(allowed(storage, &node_txn(5)));
        assert!(!allowed(storage, &node_txn(6)));
        // The data plane's layout: nobody, by transaction.
        for op in [
            Op::Put(Record::Setting(Setting {
                name: DATA_CLUSTER_SETTING.into(),
                value: br#"{"shards":7,"rf":3}"#.to_vec(),
                version: 0,
            })),
            Op::Delete(Key::Setting(DATA_CLUSTER_SETTING.into())),
        ] {
            let txn = Request::Txn(Txn {
                compares: vec![],
                ops: vec![op],
            });
            for r in [Role::Member, Role::Operator, Role::Client, storage] {
                assert!(!allowed(r, &txn), "{r} {txn:?}");
            }
        }
        // Reads: everyone.
        for r in [Role::Member, Role::Operator, Role::Client, storage] {
            assert!(allowed(r, &Request::Status));
            assert!(allowed(r, &Request::Identity));
        }
        // No role: nothing.
        assert!(authorize(&Err(RoleError::NoRole), &Request::Status).is_err());
    }
}
