//! Lease grants to storage nodes, ordered against the liveness decisions about them.
//!
//! A storage node's lease runs from when it sent a request the leader acknowledged: a
//! heartbeat or a registration ([`crate::storage::lease`]). Liveness declares the node Down
//! only after `grace_ms` of silence since the latest such acknowledgement, and repair then
//! promotes another replica. That argument needs both sides to agree on "the latest": an
//! acknowledgement built from a record read just before a Down commits, noted just after
//! liveness looked, would extend a lease the Down had already outrun, and the old primary
//! would serve reads while the promoted one takes writes without it.
//!
//! So per node one async lock orders the two. A grant confirms leadership, reads the node's
//! record, notes its time and builds its answer while holding it; a liveness decision reads
//! the latest grant and writes its transition while holding it. Either the grant came first
//! and the decision sees it, or the Down is applied first and the grant reads it and answers
//! Down (which ends the node's lease). Confirming leadership inside the lock also covers a
//! Down whose proposal failed when this member lost office: if the entry commits later, it
//! is under another term, and no grant is made here until this member leads again, by which
//! time its first confirmed read sees every entry of the earlier terms.
//!
//! The locks are per node, so a slow quorum write about one node delays only that node's
//! heartbeats.

use augur_proto::NodeId;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::OwnedMutexGuard;

/// Per node: the lock above, and when this leader last granted it a lease.
#[derive(Debug, Default)]
pub struct Grants {
    /// One lock per node, never removed: a task still holding an old lock must keep
    /// excluding the next holder.
    gates: Mutex<HashMap<NodeId, Arc<tokio::sync::Mutex<()>>>>,
    /// The latest grant per node, on this leader's monotonic clock.
    last: Mutex<HashMap<NodeId, Instant>>,
}

impl Grants {
    /// Waits for `node`'s lock: held while granting it a lease or deciding its liveness.
    pub async fn lock(&self, node: NodeId) -> OwnedMutexGuard<()> {
        let gate = super::lock(&self.gates).entry(node).or_default().clone();
        gate.lock_owned().await
    }

    /// Notes a lease granted to `node` at `at`, a time no earlier than the request's arrival
    /// (so no earlier than the node's own start of the lease). Call with its lock held.
    pub fn note(&self, node: NodeId, at: Instant) {
        let mut last = super::lock(&self.last);
        let t = last.entry(node).or_insert(at);
        *t = (*t).max(at);
    }

    /// When this leader last granted `node` a lease.
    pub fn last(&self, node: NodeId) -> Option<Instant> {
        super::lock(&self.last).get(&node).copied()
    }

    /// Forgets every grant (leadership began or ended): a new leader counts silence from the
    /// start of its leadership.
    pub fn clear(&self) {
        super::lock(&self.last).clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn one_holder_per_node_and_the_latest_grant_wins() {
        let g = Arc::new(Grants::default());
        let held = g.lock(NodeId(1)).await;
        // Another node's lock is free; the same node's waits.
        drop(g.lock(NodeId(2)).await);
        let g2 = g.clone();
        let waiter = tokio::spawn(async move {
            let _l = g2.lock(NodeId(1)).await;
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(held);
        tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("the lock is handed over once released")
            .unwrap();

        let t0 = Instant::now();
        g.note(NodeId(1), t0 + Duration::from_secs(2));
        g.note(NodeId(1), t0 + Duration::from_secs(1));
        assert_eq!(g.last(NodeId(1)), Some(t0 + Duration::from_secs(2)));
        g.clear();
        assert_eq!(g.last(NodeId(1)), None);
    }
}
