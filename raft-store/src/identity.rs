//! What a data directory says about itself: which member it belongs to, its incarnation, and
//! the cluster it joined.
//!
//! Raft's safety rests on a member remembering its vote and its log. A member whose disk died
//! and came back empty remembers neither: if it took part again under its old name it could
//! vote twice in one term, or help elect a leader that lacks committed entries. So a data
//! directory gets a random *incarnation* when it is created, and the membership records the
//! incarnation each member was added with. Messages are addressed to (member, incarnation):
//! an empty directory is a new incarnation, which nobody addresses until an operator adds it
//! again as a learner. The identity lives in the same database (and write-ahead log) as the
//! vote and the log, so it is lost exactly when they are.

use crate::db::{cf, decode, encode, CF_LOG, CF_RAFT, CF_SM};
use crate::error::StoreError;
use rocksdb::{WriteBatch, WriteOptions, DB};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, RwLock};

const KEY_IDENTITY: &[u8] = b"identity";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Stored {
    member: u64,
    incarnation: u64,
    cluster: Option<u128>,
}

/// The identity of this data directory. Cheap to clone; clones share it.
#[derive(Clone)]
pub struct Identity {
    db: Arc<DB>,
    state: Arc<RwLock<Stored>>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.read();
        f.debug_struct("Identity")
            .field("member", &s.member)
            .field("incarnation", &format_args!("{:016x}", s.incarnation))
            .field("cluster", &s.cluster.map(|c| format!("{c:032x}")))
            .finish()
    }
}

impl Identity {
    /// Reads the identity, or gives a directory without Raft data a new one with a fresh
    /// random incarnation (synced before this returns). A directory that holds Raft data but
    /// no identity, or another member's identity, is refused: starting on it could make one
    /// member speak with another's memory.
    pub(crate) fn load_or_create(db: Arc<DB>, member: u64) -> Result<Identity, StoreError> {
        let raft = cf(&db, CF_RAFT)?;
        let stored = match db.get_cf(raft, KEY_IDENTITY)? {
            Some(bytes) => {
                let s: Stored = decode("identity", &bytes)?;
                if s.member != member {
                    return Err(StoreError::Identity(format!(
                        "this data directory belongs to member {}, not {member}",
                        s.member
                    )));
                }
                s
            }
            None => {
                if has_raft_data(&db)? {
                    return Err(StoreError::Identity(
                        "the data directory holds Raft data but no identity (written by an \
                         older build); move it aside and add this member again"
                            .into(),
                    ));
                }
                let s = Stored {
                    member,
                    incarnation: new_incarnation(),
                    cluster: None,
                };
                write_synced(&db, &s)?;
                tracing::info!(
                    member,
                    incarnation = format_args!("{:016x}", s.incarnation),
                    "new data directory: created a new incarnation"
                );
                s
            }
        };
        Ok(Identity {
            db,
            state: Arc::new(RwLock::new(stored)),
        })
    }

    fn read(&self) -> Stored {
        match self.state.read() {
            Ok(s) => *s,
            Err(poisoned) => *poisoned.into_inner(),
        }
    }

    /// The member id this directory belongs to.
    pub fn member(&self) -> u64 {
        self.read().member
    }

    /// The incarnation of this directory: random, never zero.
    pub fn incarnation(&self) -> u64 {
        self.read().incarnation
    }

    /// The cluster this directory joined, once it has.
    pub fn cluster(&self) -> Option<u128> {
        self.read().cluster
    }

    /// Records that this directory belongs to `cluster` (synced before it returns). Joining
    /// the cluster it already belongs to is a no-op; joining another is refused.
    pub fn join_cluster(&self, cluster: u128) -> Result<(), StoreError> {
        let mut guard = self
            .state
            .write()
            .map_err(|_| StoreError::Task("identity lock poisoned".into()))?;
        match guard.cluster {
            Some(c) if c == cluster => Ok(()),
            Some(c) => Err(StoreError::Identity(format!(
                "this member belongs to cluster {c:032x}, not {cluster:032x}"
            ))),
            None => {
                let next = Stored {
                    cluster: Some(cluster),
                    ..*guard
                };
                write_synced(&self.db, &next)?;
                *guard = next;
                tracing::info!(cluster = format_args!("{cluster:032x}"), "joined cluster");
                Ok(())
            }
        }
    }
}

/// A random incarnation. Zero is reserved for "unknown".
fn new_incarnation() -> u64 {
    loop {
        let v: u64 = rand::random();
        if v != 0 {
            return v;
        }
    }
}

fn write_synced(db: &DB, s: &Stored) -> Result<(), StoreError> {
    let mut batch = WriteBatch::default();
    batch.put_cf(cf(db, CF_RAFT)?, KEY_IDENTITY, encode(s)?);
    let mut opts = WriteOptions::default();
    opts.set_sync(true);
    db.write_opt(batch, &opts)?;
    Ok(())
}

/// Whether any Raft state exists: a vote, a log entry, or an applied state.
fn has_raft_data(db: &DB) -> Result<bool, StoreError> {
    if db.get_cf(cf(db, CF_RAFT)?, b"vote")?.is_some() {
        return Ok(true);
    }
    if db
        .iterator_cf(cf(db, CF_LOG)?, rocksdb::IteratorMode::Start)
        .next()
        .is_some()
    {
        return Ok(true);
    }
    Ok(db.get_cf(cf(db, CF_SM)?, b"applied")?.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::StoreConfig;

    #[test]
    fn identity_persists_and_a_new_directory_is_a_new_incarnation() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig::new(dir.path());
        let first = {
            let stores = crate::open(&cfg, 3).unwrap();
            let id = stores.identity.clone();
            assert_eq!(id.member(), 3);
            assert_eq!(id.cluster(), None);
            id.join_cluster(77).unwrap();
            id.join_cluster(77).unwrap();
            assert!(matches!(id.join_cluster(78), Err(StoreError::Identity(_))));
            id.incarnation()
        };
        {
            let stores = crate::open(&cfg, 3).unwrap();
            assert_eq!(stores.identity.incarnation(), first);
            assert_eq!(stores.identity.cluster(), Some(77));
        }
        assert!(matches!(
            crate::open(&cfg, 4).map(|_| ()),
            Err(StoreError::Identity(_))
        ));
        // The disk dies: the same member on an empty directory is another incarnation.
        let other = tempfile::tempdir().unwrap();
        let stores = crate::open(&StoreConfig::new(other.path()), 3).unwrap();
        assert_ne!(stores.identity.incarnation(), first);
        assert_eq!(stores.identity.cluster(), None);
    }
}
