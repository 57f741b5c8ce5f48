//! Client errors, by what the caller can do about them.

use crate::transport::TransportError;
use augur_proto::data::DataError;
use augur_proto::wire::ApiError;
use augur_proto::Key;

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The write may or may not have been applied: the connection was lost or the leader
    /// changed after the request was sent. A metadata write was not retried; a data write
    /// was resent with its request id until the deadline without an answer. Read to find
    /// out, or (a data write made with [`crate::DataClient::write_as`]) send it again under
    /// the same id and the same op: it applies at most once and answers with its first
    /// outcome. `put`, `delete` and `cas` choose their id themselves, so calling them again
    /// is a new write (a repeated put may land twice, a repeated cas may report a conflict
    /// with its own first attempt).
    #[error("outcome unknown: {0}")]
    Indeterminate(String),
    /// No leader could be reached before the deadline; nothing was applied.
    #[error("cluster unavailable: {0}")]
    Unavailable(String),
    /// A compare-and-set named a record that does not exist.
    #[error("{0} does not exist")]
    NotFound(Key),
    /// The server refused the request (invalid argument, compacted revision, permission...).
    #[error(transparent)]
    Api(ApiError),
    /// Local configuration (certificates, cluster file, endpoints) is unusable.
    #[error("configuration: {0}")]
    Config(String),
    /// Transport set-up failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// A storage node refused a data request (malformed, not permitted, fenced); retrying it
    /// unchanged fails again. Or a read met the node's own failure (`Internal`, a disk
    /// error) on every attempt until the deadline. For a write, nothing was applied unless
    /// an attempt may have been (a node's own failure counts as one), in which case the
    /// call fails with [`Error::Indeterminate`] instead.
    #[error("storage node refused the request: {0}")]
    Data(DataError),
    /// The data plane has not been created yet (`augurctl cluster init`): there is no layout
    /// to route keys by.
    #[error("the data plane has not been created (see `augurctl cluster init`)")]
    NoDataPlane,
    /// The server answered with a message that does not fit the request.
    #[error("unexpected response to {request}: {response}")]
    Unexpected {
        /// What was asked.
        request: &'static str,
        /// What came back (debug form).
        response: String,
    },
}

impl Error {
    /// True if the call certainly had no effect and may be retried as is.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Unavailable(_))
    }
}
