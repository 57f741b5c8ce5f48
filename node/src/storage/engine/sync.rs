//! Group commit: one thread syncs the WAL for every write waiting on it.

use super::{Engine, EngineError};
use rocksdb::DB;
use std::sync::{mpsc, Arc};
use std::time::Duration;

pub(super) type SyncDone = Box<dyn FnOnce(Result<(), String>) + Send>;

/// Stops and joins the syncer when the last engine handle goes.
pub(super) struct Syncer {
    pub(super) tx: Option<mpsc::Sender<SyncDone>>,
    pub(super) thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Syncer {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Engine {
    /// Calls `done` once every write made before this call is durable. Calls that arrive
    /// while a sync runs share the next one.
    pub fn sync(
        &self,
        done: impl FnOnce(Result<(), String>) + Send + 'static,
    ) -> Result<(), EngineError> {
        self.syncer
            .tx
            .as_ref()
            .ok_or(EngineError::SyncerGone)?
            .send(Box::new(done))
            .map_err(|_| EngineError::SyncerGone)
    }

    /// Waits until every write made before this call is durable.
    pub async fn synced(&self) -> Result<(), EngineError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.sync(move |r| {
            let _ = tx.send(r);
        })?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(EngineError::Io(std::io::Error::other(e))),
            Err(_) => Err(EngineError::SyncerGone),
        }
    }
}

/// Syncs the WAL for every waiting callback at once, then calls them in arrival order.
/// Under load (the previous sync answered more than one caller) it first waits `wait` for
/// more callers to share the sync.
pub(super) fn run_syncer(db: Arc<DB>, rx: mpsc::Receiver<SyncDone>, wait: Duration) {
    // How many callers the previous sync answered: more than one means a load.
    let mut last_batch = 0usize;
    while let Ok(first) = rx.recv() {
        let mut waiting = vec![first];
        if !wait.is_zero() && last_batch > 1 {
            std::thread::sleep(wait);
        }
        while let Ok(more) = rx.try_recv() {
            waiting.push(more);
        }
        last_batch = waiting.len();
        let result = db.flush_wal(true).map_err(|e| e.to_string());
        if let Err(e) = &result {
            tracing::error!(error = %e, "WAL sync failed");
        }
        for done in waiting {
            done(result.clone());
        }
    }
}
