//! Test-only behaviour, so the consistency and durability tests can prove they catch the
//! faults they look for. Each hook is compiled in only with its cargo feature, and the
//! production build's code paths see a constant `false`: nothing here is ever consulted at
//! run time in a real deployment.
//!
//! - `unsafe-local-reads`: linearizable reads are served from local state without ReadIndex
//!   (the fault-injection suite must report stale reads);
//! - `unsafe-test-hooks`: raft-store skips WAL syncs when `AUGUR_UNSAFE_SKIP_WAL_SYNC=1` (the
//!   power-loss test must report lost writes).

/// Whether linearizable reads skip the ReadIndex barrier (test builds only).
#[cfg(feature = "unsafe-local-reads")]
pub(crate) const fn skip_read_index() -> bool {
    true
}

/// Whether linearizable reads skip the ReadIndex barrier: never, in this build.
#[cfg(not(feature = "unsafe-local-reads"))]
pub(crate) const fn skip_read_index() -> bool {
    false
}
