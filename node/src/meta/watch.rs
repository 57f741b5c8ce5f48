//! Watch streams: applied history from a revision on, then live changes.
//!
//! Every applied revision is the same on every member, so any member serves a watch from its
//! own history. History is read in pages bounded by count and bytes, each from one RocksDB
//! snapshot that also holds the compaction floor: a page starts exactly where the last one
//! stopped, or the stream ends with `Compacted` and the client re-lists. No revision is ever
//! skipped or sent twice.
//!
//! A member cut off from the leader (partitioned, or left alone) stops applying, and its
//! watchers would wait for ever without knowing. A watch is refused, or ended, `Unavailable`
//! once its member has been out of touch ([`MetaNode::in_touch`]) for
//! [`MetaNode::watch_out_of_touch_limit`], checked every [`TOUCH_CHECK`]; its client resumes
//! on another member from the revision it reached.

use super::MetaNode;
use augur_proto::frame::{payload_budget, write_frame};
use augur_proto::wire::ApiError;
use augur_proto::{Response, Table};
use std::time::Duration;

/// How often a watch checks that its member is in touch with a leader.
const TOUCH_CHECK: Duration = Duration::from_millis(500);

impl MetaNode {
    /// Streams history from `from_revision` and then live changes until the client goes away.
    pub(crate) async fn serve_watch(
        &self,
        mut tables: Vec<Table>,
        from_revision: u64,
        mut send: quinn::SendStream,
    ) {
        // Each page and each live change is matched against the list: a request repeating
        // a table a million times would make every one of them a million comparisons.
        tables.sort_unstable();
        tables.dedup();
        let max = self.max_frame();
        let budget = payload_budget(max);
        let mut applied_rx = self.sm.subscribe();
        let current = *applied_rx.borrow_and_update();
        let mut next = if from_revision == 0 {
            current + 1
        } else {
            from_revision
        };
        let limit = self.watch_out_of_touch_limit();
        if !self.in_touch(limit).await {
            let _ = write_frame(&mut send, &out_of_touch(self.id, limit), max).await;
            let _ = send.finish();
            return;
        }
        self.metrics.watchers(1);
        let _guard = WatcherGuard(&self.metrics);
        if write_frame(
            &mut send,
            &Response::WatchStarted { revision: current },
            max,
        )
        .await
        .is_err()
        {
            return;
        }
        let mut shutdown = self.shutdown_signal();
        let mut touch = tokio::time::interval(TOUCH_CHECK);
        touch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let applied = *applied_rx.borrow_and_update();
            while next <= applied {
                let tables = tables.clone();
                let from = next;
                let page = match self
                    .read_sm_for_request(move |sm| sm.history(from, applied, &tables, budget))
                    .await
                {
                    Ok(p) => p,
                    Err(e) => {
                        if !matches!(e, ApiError::Compacted { .. }) {
                            tracing::error!(error = %e, "watch history read failed");
                        }
                        let _ = write_frame(&mut send, &Response::Error(e), max).await;
                        let _ = send.finish();
                        return;
                    }
                };
                for ev in page.events {
                    if write_frame(&mut send, &Response::Watch(ev), max)
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                next = page.next;
            }
            tokio::select! {
                changed = applied_rx.changed() => if changed.is_err() { return },
                _ = send.stopped() => return,
                _ = touch.tick() => {
                    if !self.in_touch(limit).await {
                        tracing::info!(member = self.id, next, "ending a watch: out of touch with a leader");
                        let _ = write_frame(&mut send, &out_of_touch(self.id, limit), max).await;
                        let _ = send.finish();
                        return;
                    }
                }
                _ = shutdown.changed() => {
                    let _ = write_frame(&mut send, &Response::Error(ApiError::Unavailable("node shutting down".into())), max).await;
                    let _ = send.finish();
                    return;
                }
            }
        }
    }
}

/// Why a watch is refused or ended on a member out of touch with a leader.
fn out_of_touch(member: u64, limit: Duration) -> Response {
    Response::Error(ApiError::Unavailable(format!(
        "member {member} has been out of touch with a leader for {} ms: its history may be \
         behind; watch another member",
        limit.as_millis()
    )))
}

struct WatcherGuard<'a>(&'a super::metrics::Metrics);

impl Drop for WatcherGuard<'_> {
    fn drop(&mut self) {
        self.0.watchers(-1);
    }
}
