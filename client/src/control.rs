//! What storage nodes ask of the metadata leader's control plane: registering, heartbeating,
//! and reporting a replica that stopped acknowledging. Storage-node certificates only.
//!
//! Each is idempotent at the leader (a registration or heartbeat repeated says the same, a
//! report repeated at one epoch changes nothing twice), so each is resent freely until the
//! request deadline, like a read.

use crate::client::{unexpected, Client, Retry};
use crate::error::Error;
use augur_proto::data::NodeReport;
use augur_proto::wire::{ApiError, NodeHealth};
use augur_proto::{Node, NodeId, NodeState, Request, Response, ShardId};

/// The leader's acknowledgement of a registration or heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeartbeatAck {
    /// The node's epoch in the registry.
    pub node_epoch: u64,
    /// Its state there.
    pub state: NodeState,
    /// The lease a heartbeat buys, from when it was sent, in milliseconds.
    pub lease_ms: u64,
    /// How often to heartbeat, in milliseconds.
    pub heartbeat_interval_ms: u64,
}

fn ack(what: &'static str, resp: Response) -> Result<HeartbeatAck, Error> {
    match resp {
        Response::HeartbeatAck {
            node_epoch,
            state,
            lease_ms,
            heartbeat_interval_ms,
        } => Ok(HeartbeatAck {
            node_epoch,
            state,
            lease_ms,
            heartbeat_interval_ms,
        }),
        other => Err(unexpected(what, other)),
    }
}

impl Client {
    /// Registers (or re-registers) a storage node's record.
    pub async fn register(&self, node: Node) -> Result<HeartbeatAck, Error> {
        let resp = self
            .to_leader(&Request::Register(node), Retry::Idempotent)
            .await?;
        ack("register", resp)
    }

    /// Sends one heartbeat. The caller's lease runs from when it *sent* it, and only once it
    /// is acknowledged.
    pub async fn heartbeat(&self, report: NodeReport) -> Result<HeartbeatAck, Error> {
        let resp = self
            .to_leader(&Request::Heartbeat(report), Retry::Idempotent)
            .await?;
        ack("heartbeat", resp)
    }

    /// Sends one heartbeat carrying the node's health. A leader of an older version that
    /// cannot decode it answers with an error; the heartbeat is then sent without health, so
    /// the lease never depends on the health agent.
    pub async fn heartbeat_with_health(
        &self,
        report: NodeReport,
        health: NodeHealth,
    ) -> Result<HeartbeatAck, Error> {
        let req = Request::HealthHeartbeat {
            report: report.clone(),
            health,
        };
        match self.to_leader(&req, Retry::Idempotent).await {
            Ok(resp) => match ack("heartbeat", resp) {
                Ok(a) => Ok(a),
                Err(e) => {
                    tracing::debug!(error = %e, "health heartbeat not understood; sending a plain one");
                    self.heartbeat(report).await
                }
            },
            Err(Error::Api(ApiError::InvalidArgument(why))) => {
                tracing::debug!(%why, "health heartbeat refused; sending a plain one");
                self.heartbeat(report).await
            }
            Err(e) => Err(e),
        }
    }

    /// Sends a batch of health samples (JSON objects in the predictor's format) to the
    /// leader, which keeps a bounded window per node.
    pub async fn health_samples(&self, node: NodeId, samples: Vec<String>) -> Result<(), Error> {
        let req = Request::HealthSamples { node, samples };
        match self.to_leader(&req, Retry::Idempotent).await? {
            Response::Done => Ok(()),
            other => Err(unexpected("health-samples", other)),
        }
    }

    /// Asks the control plane to remove `replica` from `shard` (sent by the shard's primary
    /// at `epoch`); a primary naming itself asks for a new epoch after it restarted.
    pub async fn report_replica(
        &self,
        shard: ShardId,
        epoch: u64,
        replica: NodeId,
        reason: String,
    ) -> Result<(), Error> {
        let req = Request::ReportReplica {
            shard,
            epoch,
            replica,
            reason,
        };
        match self.to_leader(&req, Retry::Idempotent).await? {
            Response::Done => Ok(()),
            other => Err(unexpected("report-replica", other)),
        }
    }
}
