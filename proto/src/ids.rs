//! Identifiers.
//!
//! Ids are newtypes over `u64` so a shard id can never be passed where a node id is meant.
//! Zero is reserved as "no id": it is what a zeroed or truncated buffer decodes to, so
//! accepting it would let garbage masquerade as a real record.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// An id that is zero or does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Zero is reserved and never names a record.
    #[error("{kind} id must be a positive integer, got 0")]
    Zero {
        /// Which kind of id was being built.
        kind: &'static str,
    },
    /// The text is not an unsigned 64-bit integer.
    #[error("{kind} id {text:?} is not an unsigned integer")]
    NotANumber {
        /// Which kind of id was being parsed.
        kind: &'static str,
        /// The offending text.
        text: String,
    },
}

macro_rules! define_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub struct $name(pub u64);

        impl $name {
            /// Builds the id, refusing the reserved value zero.
            pub fn new(raw: u64) -> Result<Self, IdError> {
                if raw == 0 {
                    Err(IdError::Zero { kind: $kind })
                } else {
                    Ok(Self(raw))
                }
            }

            /// Checks an id that arrived from outside (a frame, a file) before it is used.
            pub fn validate(self) -> Result<Self, IdError> {
                Self::new(self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                // Forward the formatter so widths and alignment apply in tables.
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                let raw = s.trim().parse::<u64>().map_err(|_| IdError::NotANumber {
                    kind: $kind,
                    text: s.to_string(),
                })?;
                Self::new(raw)
            }
        }
    };
}

define_id!(
    /// A data shard: the unit of placement and migration.
    ShardId,
    "shard"
);
define_id!(
    /// A storage node in the node registry.
    NodeId,
    "node"
);
define_id!(
    /// One planned move of one shard.
    MigrationId,
    "migration"
);
define_id!(
    /// A member of the metadata Raft group (not a storage node: the two sets are independent).
    MemberId,
    "member"
);

/// A metadata cluster, chosen at random when it is bootstrapped. Every Raft message carries
/// it, so members of two clusters that share a CA never mix their logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ClusterId(pub u128);

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl FromStr for ClusterId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        match u128::from_str_radix(s.trim(), 16) {
            Ok(0) => Err(IdError::Zero { kind: "cluster" }),
            Ok(v) => Ok(ClusterId(v)),
            Err(_) => Err(IdError::NotANumber {
                kind: "cluster",
                text: s.to_string(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_is_refused_everywhere() {
        assert_eq!(ShardId::new(0), Err(IdError::Zero { kind: "shard" }));
        assert!("0".parse::<NodeId>().is_err());
        assert!(MigrationId(0).validate().is_err());
        assert_eq!("17".parse::<MemberId>(), Ok(MemberId(17)));
        assert!(matches!(
            "x1".parse::<ShardId>(),
            Err(IdError::NotANumber { .. })
        ));
        let c = ClusterId(0xabc);
        assert_eq!(c.to_string().parse::<ClusterId>(), Ok(c));
        assert!("0".parse::<ClusterId>().is_err());
    }
}
