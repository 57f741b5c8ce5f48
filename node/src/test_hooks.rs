//! Test-only behaviour, so the consistency and durability tests can prove they catch the
//! faults they look for. Each hook is compiled in only with its cargo feature, and the
//! production build's code paths see a constant: nothing here is consulted at run time in a
//! real deployment.
//!
//! - `unsafe-local-reads`: the metadata quorum serves linearizable reads from local state
//!   without ReadIndex (the fault-injection suite must report stale reads);
//! - `unsafe-test-hooks`, each enabled by its environment variable:
//!   - `AUGUR_UNSAFE_SKIP_WAL_SYNC=1` (in raft-store): no WAL syncs (the power-loss test must
//!     report lost writes);
//!   - `AUGUR_UNSAFE_SKIP_LEASE_CHECK=1`: a storage primary serves reads without checking its
//!     lease (the data-plane fault runs must report stale reads);
//!   - `AUGUR_UNSAFE_CORRUPT_COPY_CHUNKS=N`: a storage node corrupts the first N shard-copy
//!     chunks it serves (the copy must detect, retry and never commit them).

/// Whether linearizable metadata reads skip the ReadIndex barrier (test builds only).
#[cfg(feature = "unsafe-local-reads")]
pub(crate) const fn skip_read_index() -> bool {
    true
}

/// Whether linearizable metadata reads skip the ReadIndex barrier: never, in this build.
#[cfg(not(feature = "unsafe-local-reads"))]
pub(crate) const fn skip_read_index() -> bool {
    false
}

#[cfg(feature = "unsafe-test-hooks")]
mod env {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;

    fn flag(name: &str) -> bool {
        std::env::var(name).is_ok_and(|v| v == "1")
    }

    pub(crate) fn skip_lease_check() -> bool {
        static ON: OnceLock<bool> = OnceLock::new();
        *ON.get_or_init(|| {
            let on = flag("AUGUR_UNSAFE_SKIP_LEASE_CHECK");
            if on {
                tracing::warn!("UNSAFE TEST HOOK: storage primaries serve reads without a lease");
            }
            on
        })
    }

    pub(crate) fn corrupt_copy_chunk() -> bool {
        static LEFT: OnceLock<AtomicU64> = OnceLock::new();
        let left = LEFT.get_or_init(|| {
            let n = std::env::var("AUGUR_UNSAFE_CORRUPT_COPY_CHUNKS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if n > 0 {
                tracing::warn!(chunks = n, "UNSAFE TEST HOOK: corrupting shard-copy chunks");
            }
            AtomicU64::new(n)
        });
        left.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
    }
}

/// Whether a storage primary skips its lease check on reads (test builds only).
pub(crate) fn skip_lease_check() -> bool {
    #[cfg(feature = "unsafe-test-hooks")]
    {
        env::skip_lease_check()
    }
    #[cfg(not(feature = "unsafe-test-hooks"))]
    {
        false
    }
}

/// Whether to corrupt the next shard-copy chunk served (test builds only).
pub(crate) fn corrupt_copy_chunk() -> bool {
    #[cfg(feature = "unsafe-test-hooks")]
    {
        env::corrupt_copy_chunk()
    }
    #[cfg(not(feature = "unsafe-test-hooks"))]
    {
        false
    }
}
