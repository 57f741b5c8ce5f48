//! Transactions: the only way to change metadata.
//!
//! A transaction is a list of compares and a list of ops. It commits atomically if every
//! compare holds, and otherwise changes nothing and reports the current version of every
//! compared key, so a writer can tell a lost race from a missing record without parsing error
//! strings. Compare-and-set is a transaction with one compare and one put.

use crate::ids::{MigrationId, NodeId, ShardId};
use crate::model::{Record, RecordError};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Most compares in one transaction.
pub const MAX_COMPARES: usize = 128;
/// Most ops in one transaction.
pub const MAX_OPS: usize = 128;
/// Most bytes one transaction may take, encoded. A log entry is one transaction, so this
/// bounds every entry, every watch event and every record page entry; frame limits are
/// validated against it (see [`crate::frame::MIN_FRAME`]) so that no legal transaction can
/// produce a frame its receiver refuses.
pub const MAX_TXN_BYTES: usize = 4 * 1024 * 1024;

/// The tables of the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Table {
    /// Shard records.
    Shards,
    /// Storage-node records.
    Nodes,
    /// Migration records.
    Migrations,
    /// Cluster settings.
    Settings,
}

impl Table {
    /// Every table, in key order.
    pub const ALL: [Table; 4] = [
        Table::Shards,
        Table::Nodes,
        Table::Migrations,
        Table::Settings,
    ];

    /// A one-byte tag, used as the key prefix in storage.
    pub fn tag(self) -> u8 {
        match self {
            Table::Shards => b's',
            Table::Nodes => b'n',
            Table::Migrations => b'm',
            Table::Settings => b'c',
        }
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Table::Shards => "shards",
            Table::Nodes => "nodes",
            Table::Migrations => "migrations",
            Table::Settings => "settings",
        })
    }
}

/// The key of one record.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Key {
    /// A shard record.
    Shard(ShardId),
    /// A storage-node record.
    Node(NodeId),
    /// A migration record.
    Migration(MigrationId),
    /// A setting, by name.
    Setting(String),
}

impl Key {
    /// The table the key belongs to.
    pub fn table(&self) -> Table {
        match self {
            Key::Shard(_) => Table::Shards,
            Key::Node(_) => Table::Nodes,
            Key::Migration(_) => Table::Migrations,
            Key::Setting(_) => Table::Settings,
        }
    }

    /// The storage encoding: table tag, then the big-endian id (or the name), so that keys
    /// of one table are contiguous and ids sort numerically.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(9);
        out.push(self.table().tag());
        match self {
            Key::Shard(id) => out.extend_from_slice(&id.0.to_be_bytes()),
            Key::Node(id) => out.extend_from_slice(&id.0.to_be_bytes()),
            Key::Migration(id) => out.extend_from_slice(&id.0.to_be_bytes()),
            Key::Setting(name) => out.extend_from_slice(name.as_bytes()),
        }
        out
    }

    /// Checks the key's id or name before it is used.
    pub fn validate(&self) -> Result<(), RecordError> {
        match self {
            Key::Shard(id) => id.validate().map(|_| ()).map_err(Into::into),
            Key::Node(id) => id.validate().map(|_| ()).map_err(Into::into),
            Key::Migration(id) => id.validate().map(|_| ()).map_err(Into::into),
            Key::Setting(name) if name.is_empty() => Err(RecordError::EmptyName),
            Key::Setting(name) if name.len() > crate::model::limits::MAX_STRING => {
                Err(RecordError::TooLarge {
                    field: "setting name",
                    len: name.len(),
                    max: crate::model::limits::MAX_STRING,
                })
            }
            Key::Setting(_) => Ok(()),
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Shard(id) => write!(f, "shard/{id}"),
            Key::Node(id) => write!(f, "node/{id}"),
            Key::Migration(id) => write!(f, "migration/{id}"),
            Key::Setting(name) => write!(f, "setting/{name}"),
        }
    }
}

/// What a compare checks about a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    /// The record exists and its version equals this.
    VersionEq(u64),
    /// The record exists.
    Exists,
    /// The record does not exist.
    Absent,
}

/// One precondition of a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    /// The key compared.
    pub key: Key,
    /// What must hold.
    pub target: CompareTarget,
}

impl Compare {
    /// Holds when the record's current version (None: absent) satisfies the target.
    pub fn holds(&self, current: Option<u64>) -> bool {
        match (self.target, current) {
            (CompareTarget::VersionEq(want), Some(have)) => want == have,
            (CompareTarget::VersionEq(_), None) => false,
            (CompareTarget::Exists, v) => v.is_some(),
            (CompareTarget::Absent, v) => v.is_none(),
        }
    }
}

/// One change of a transaction.
// A record is a few hundred bytes and lives as briefly as the op that carries it: boxing
// it would add an allocation per op for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Op {
    /// Create or replace a record; its version is stamped by the store.
    Put(Record),
    /// Remove a record (a no-op if absent).
    Delete(Key),
}

impl Op {
    /// The key this op writes.
    pub fn key(&self) -> Key {
        match self {
            Op::Put(r) => r.key(),
            Op::Delete(k) => k.clone(),
        }
    }
}

/// A transaction: all compares hold and all ops apply, or nothing changes.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Txn {
    /// Preconditions, all of which must hold.
    pub compares: Vec<Compare>,
    /// Changes applied in order if they do.
    pub ops: Vec<Op>,
}

/// Why a transaction was refused before reaching the log.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TxnError {
    /// A transaction must change something.
    #[error("transaction has no ops")]
    Empty,
    /// Too many compares or ops.
    #[error(
        "transaction too large: {compares} compares, {ops} ops (max {MAX_COMPARES}, {MAX_OPS})"
    )]
    TooLarge {
        /// Compares given.
        compares: usize,
        /// Ops given.
        ops: usize,
    },
    /// The encoded transaction exceeds [`MAX_TXN_BYTES`].
    #[error("transaction of {bytes} bytes exceeds the limit of {MAX_TXN_BYTES}")]
    TooManyBytes {
        /// Its encoded size.
        bytes: usize,
    },
    /// Two ops write one key: their order would be the only thing deciding the outcome.
    #[error("key {0} is written twice in one transaction")]
    DuplicateWrite(Key),
    /// A record or key is malformed.
    #[error("invalid record: {0}")]
    Record(#[from] RecordError),
}

impl Txn {
    /// A compare-and-set: put `record` if the record at its key is at `expected_version`
    /// (`None`: only if it does not exist yet).
    pub fn cas(record: Record, expected_version: Option<u64>) -> Txn {
        let target = match expected_version {
            Some(v) => CompareTarget::VersionEq(v),
            None => CompareTarget::Absent,
        };
        Txn {
            compares: vec![Compare {
                key: record.key(),
                target,
            }],
            ops: vec![Op::Put(record)],
        }
    }

    /// Checks shape and contents, so that a bad transaction is refused before it costs a log
    /// entry on every replica.
    pub fn validate(&self) -> Result<(), TxnError> {
        if self.ops.is_empty() {
            return Err(TxnError::Empty);
        }
        if self.compares.len() > MAX_COMPARES || self.ops.len() > MAX_OPS {
            return Err(TxnError::TooLarge {
                compares: self.compares.len(),
                ops: self.ops.len(),
            });
        }
        for c in &self.compares {
            c.key.validate()?;
        }
        let mut written: Vec<Key> = Vec::with_capacity(self.ops.len());
        for op in &self.ops {
            match op {
                Op::Put(r) => r.validate()?,
                Op::Delete(k) => k.validate()?,
            }
            let key = op.key();
            if written.contains(&key) {
                return Err(TxnError::DuplicateWrite(key));
            }
            written.push(key);
        }
        let bytes = self.encoded_len();
        if bytes > MAX_TXN_BYTES {
            return Err(TxnError::TooManyBytes { bytes });
        }
        Ok(())
    }

    /// Bytes the transaction takes encoded, counted without building the encoding.
    pub fn encoded_len(&self) -> usize {
        postcard::serialize_with_flavor(self, postcard::ser_flavors::Size::default())
            .unwrap_or(usize::MAX)
    }
}

/// The outcome of an applied transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnResult {
    /// True if every compare held and the ops were applied.
    pub succeeded: bool,
    /// The log index the transaction was applied at: the new version of every record it put.
    pub revision: u64,
    /// On failure, the current version (None: absent) of every compared key, in compare order.
    pub current: Vec<(Key, Option<u64>)>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Setting;

    fn setting(name: &str) -> Record {
        Record::Setting(Setting {
            name: name.into(),
            value: b"v".to_vec(),
            version: 0,
        })
    }

    #[test]
    fn compare_semantics() {
        let k = Key::Setting("a".into());
        let eq = |v| Compare {
            key: k.clone(),
            target: CompareTarget::VersionEq(v),
        };
        assert!(eq(3).holds(Some(3)));
        assert!(!eq(3).holds(Some(4)));
        assert!(!eq(3).holds(None));
        let ex = Compare {
            key: k.clone(),
            target: CompareTarget::Exists,
        };
        assert!(ex.holds(Some(1)) && !ex.holds(None));
        let ab = Compare {
            key: k,
            target: CompareTarget::Absent,
        };
        assert!(ab.holds(None) && !ab.holds(Some(1)));
    }

    #[test]
    fn validation() {
        assert_eq!(Txn::default().validate(), Err(TxnError::Empty));
        assert!(Txn::cas(setting("a"), Some(1)).validate().is_ok());
        let dup = Txn {
            compares: vec![],
            ops: vec![Op::Put(setting("a")), Op::Delete(Key::Setting("a".into()))],
        };
        assert!(matches!(dup.validate(), Err(TxnError::DuplicateWrite(_))));
        assert!(Txn::cas(setting(""), None).validate().is_err());
    }

    #[test]
    fn byte_bound_counts_the_encoding() {
        let big = |name: &str| {
            Op::Put(Record::Setting(Setting {
                name: name.into(),
                value: vec![7u8; crate::model::limits::MAX_SETTING_VALUE],
                version: 0,
            }))
        };
        let small = Txn {
            compares: vec![],
            ops: vec![big("a")],
        };
        assert_eq!(
            small.encoded_len(),
            postcard::to_allocvec(&small).unwrap().len()
        );
        assert!(small.validate().is_ok());
        // 128 maximal settings are within the op count but not the byte bound.
        let huge = Txn {
            compares: vec![],
            ops: (0..MAX_OPS).map(|i| big(&format!("s{i}"))).collect(),
        };
        assert!(matches!(
            huge.validate(),
            Err(TxnError::TooManyBytes { .. })
        ));
    }

    #[test]
    fn key_encoding_sorts_ids_numerically() {
        let a = Key::Shard(ShardId(2)).encode();
        let b = Key::Shard(ShardId(256)).encode();
        assert!(a < b);
        assert_ne!(
            Key::Shard(ShardId(1)).encode(),
            Key::Node(NodeId(1)).encode()
        );
    }
}
