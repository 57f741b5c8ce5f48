//! The metadata client's data-plane administration: creating the data plane, reading its
//! layout, forcing a primary.

use crate::client::{unexpected, Client, Retry};
use crate::error::Error;
use augur_proto::data::{DataCluster, DATA_CLUSTER_SETTING};
use augur_proto::wire::ApiError;
use augur_proto::{Key, NodeId, Record, Request, Response, ShardId};
use std::time::Duration;

impl Client {
    /// The data plane's layout (setting `data.cluster`), read linearizably; `None` before
    /// the data plane is created.
    pub async fn data_layout(&self) -> Result<Option<DataCluster>, Error> {
        let Some(record) = self.get(&Key::Setting(DATA_CLUSTER_SETTING.into())).await? else {
            return Ok(None);
        };
        let Record::Setting(s) = record else {
            return Err(Error::Unexpected {
                request: "get data.cluster",
                response: format!("{record:?}"),
            });
        };
        let layout: DataCluster = serde_json::from_slice(&s.value).map_err(|e| {
            Error::Config(format!(
                "setting {DATA_CLUSTER_SETTING} does not parse: {e}"
            ))
        })?;
        layout.validate().map_err(|e| {
            Error::Config(format!(
                "setting {DATA_CLUSTER_SETTING} is out of bounds: {e}"
            ))
        })?;
        Ok(Some(layout))
    }

    /// Creates the data plane: the layout (setting `data.cluster`) and every shard's initial
    /// placement over the Up storage nodes (an operator certificate is needed). The leader
    /// writes the shard records in many transactions, so each attempt may take up to
    /// `timeout`. Asking again with the same layout completes an interrupted creation and is
    /// otherwise a no-op, so the request is resent freely; another layout is refused.
    pub async fn init_data_plane(
        &self,
        layout: DataCluster,
        timeout: Duration,
    ) -> Result<(), Error> {
        layout
            .validate()
            .map_err(|e| Error::Api(ApiError::InvalidArgument(e.to_string())))?;
        let req = Request::InitDataPlane(layout);
        match self
            .to_leader_within(&req, Retry::Idempotent, timeout, timeout)
            .await?
        {
            Response::Done => Ok(()),
            other => Err(unexpected("init-data-plane", other)),
        }
    }

    /// Makes `node` the primary of `shard` when none of its replicas is alive (an operator
    /// certificate is needed). Writes acknowledged only by the dead replicas may be lost:
    /// this is the operator's explicit choice of an unclean promotion. Each forcing bumps the
    /// shard's epoch, so a request that may have arrived is not resent: an unknown outcome is
    /// [`Error::Indeterminate`]; read the shard to find out.
    pub async fn force_primary(&self, shard: ShardId, node: NodeId) -> Result<(), Error> {
        let req = Request::ForcePrimary { shard, node };
        match self.to_leader(&req, Retry::UntilSent).await? {
            Response::Done => Ok(()),
            other => Err(unexpected("force-primary", other)),
        }
    }
}
