//! Store errors.

use augur_proto::wire::ApiError;

/// Anything that can go wrong inside the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// RocksDB failed.
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    /// Stored bytes do not decode: the database or a snapshot file is damaged.
    #[error("corrupt {what}: {detail}")]
    Corrupt {
        /// What was being read.
        what: &'static str,
        /// Why it failed.
        detail: String,
    },
    /// A watch or history read asked for revisions that were compacted away.
    #[error("revision {requested} is compacted; oldest available is {compacted}")]
    Compacted {
        /// The revision asked for.
        requested: u64,
        /// Oldest revision still held.
        compacted: u64,
    },
    /// The data directory's identity does not fit (another member's, or data without one).
    #[error("identity: {0}")]
    Identity(String),
    /// A file operation failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// A blocking task panicked or was cancelled.
    #[error("background task failed: {0}")]
    Task(String),
}

impl StoreError {
    pub(crate) fn corrupt(what: &'static str, detail: impl ToString) -> Self {
        StoreError::Corrupt {
            what,
            detail: detail.to_string(),
        }
    }
}

impl From<StoreError> for std::io::Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Io(e) => e,
            other => std::io::Error::other(other.to_string()),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Compacted {
                requested,
                compacted,
            } => ApiError::Compacted {
                requested,
                compacted_revision: compacted,
            },
            other => ApiError::Internal(other.to_string()),
        }
    }
}
