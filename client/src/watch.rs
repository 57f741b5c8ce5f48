//! A watch that survives reconnects without gaps or duplicates.
//!
//! Every applied revision is the same on every metadata node, so any node can serve a watch
//! from its applied history. The stream remembers the next revision it owes the caller; when
//! a connection drops it asks another node for history from exactly that revision and drops
//! anything older it receives. A node that has compacted that revision away is skipped; only
//! when every node has, or could not be reached, does the stream end with
//! [`ApiError::Compacted`], and the caller must re-list.

use crate::client::Client;
use crate::error::Error;
use augur_proto::wire::{ApiError, WatchEvent};
use augur_proto::{Request, Response, Table};
use futures::Stream;
use std::collections::HashSet;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::mpsc;

/// Changes to the watched tables, one item per revision, in revision order.
pub struct WatchStream {
    rx: mpsc::Receiver<Result<WatchEvent, Error>>,
    task: tokio::task::JoinHandle<()>,
}

impl WatchStream {
    pub(crate) fn start(client: Client, tables: Vec<Table>, from_revision: u64) -> WatchStream {
        let (tx, rx) = mpsc::channel(256);
        let task = tokio::spawn(run(client, tables, from_revision, tx));
        WatchStream { rx, task }
    }
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Stream for WatchStream {
    type Item = Result<WatchEvent, Error>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

/// What ended one connection's worth of watching.
enum Ended {
    /// The caller dropped the stream.
    Closed,
    /// The connection failed; try another node.
    Lost(String),
    /// The node no longer has the revision we need.
    Compacted(ApiError),
    /// The server refused the request outright.
    Refused(ApiError),
}

async fn run(
    client: Client,
    tables: Vec<Table>,
    from_revision: u64,
    tx: mpsc::Sender<Result<WatchEvent, Error>>,
) {
    // 0 means "from now": the first node to answer fixes what now is.
    let mut next = from_revision;
    // Since the last revision delivered: the nodes that no longer hold `next`, and those
    // that could not be reached. When every node is in one or the other and at least one
    // has compacted, the stream ends with `Compacted`; a node that stays down must not keep
    // a watcher that fell behind from ever learning it has to re-list.
    let mut compacted = HashSet::new();
    let mut lost = HashSet::new();
    let mut refusal = None;
    let mut backoff = Duration::from_millis(20);
    let hopeless = |compacted: &HashSet<String>, lost: &HashSet<String>| {
        !compacted.is_empty()
            && client
                .endpoints()
                .iter()
                .all(|e| compacted.contains(e) || lost.contains(e))
    };
    loop {
        let endpoint = client.next_endpoint();
        let before = next;
        let ended = watch_once(&client, &endpoint, &tables, &mut next, &tx).await;
        if next != before {
            compacted.clear();
            lost.clear();
            refusal = None;
        }
        match ended {
            Ended::Closed => return,
            Ended::Lost(why) => {
                tracing::debug!(%endpoint, %why, next, "watch connection lost; resuming elsewhere");
                lost.insert(endpoint);
            }
            Ended::Compacted(e) => {
                lost.remove(&endpoint);
                compacted.insert(endpoint);
                if hopeless(&compacted, &lost) {
                    let _ = tx.send(Err(Error::Api(e))).await;
                    return;
                }
                refusal = Some(e);
                continue;
            }
            Ended::Refused(e) => {
                let _ = tx.send(Err(Error::Api(e))).await;
                return;
            }
        }
        if let Some(e) = refusal.take_if(|_| hopeless(&compacted, &lost)) {
            let _ = tx.send(Err(Error::Api(e))).await;
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(500));
    }
}

async fn watch_once(
    client: &Client,
    endpoint: &str,
    tables: &[Table],
    next: &mut u64,
    tx: &mpsc::Sender<Result<WatchEvent, Error>>,
) -> Ended {
    let req = Request::Watch {
        tables: tables.to_vec(),
        from_revision: *next,
    };
    let (_send, mut recv) = match client.inner.transport.open(endpoint, &req).await {
        Ok(s) => s,
        Err(e) => return Ended::Lost(e.to_string()),
    };
    loop {
        let resp = tokio::select! {
            r = recv.next() => r,
            _ = tx.closed() => return Ended::Closed,
        };
        match resp {
            Ok(Some(Response::WatchStarted { revision })) => {
                if *next == 0 {
                    match after(revision) {
                        Ok(n) => *next = n,
                        Err(end) => return end,
                    }
                }
            }
            Ok(Some(Response::Watch(event))) => {
                if event.revision < *next {
                    continue; // already delivered before a reconnect
                }
                match after(event.revision) {
                    Ok(n) => *next = n,
                    Err(end) => return end,
                }
                if tx.send(Ok(event)).await.is_err() {
                    return Ended::Closed;
                }
            }
            Ok(Some(Response::Error(e @ ApiError::Compacted { .. }))) => {
                return Ended::Compacted(e)
            }
            Ok(Some(Response::Error(ApiError::Unavailable(why)))) => return Ended::Lost(why),
            Ok(Some(Response::Error(e))) => return Ended::Refused(e),
            Ok(Some(other)) => return Ended::Lost(format!("unexpected response {other:?}")),
            Ok(None) => return Ended::Lost("server ended the watch".into()),
            Err(e) => return Ended::Lost(e.to_string()),
        }
    }
}

/// The revision to watch from after `revision`: a member naming the last possible revision
/// is not followed (the next would wrap to 0, which means "from now").
fn after(revision: u64) -> Result<u64, Ended> {
    revision
        .checked_add(1)
        .ok_or_else(|| Ended::Lost(format!("the member names revision {revision}")))
}
