//! Pipelined append entries: one QUIC stream per replication session, both ends.
//!
//! openraft hands the leader's network a stream of append-entries requests that lives as long
//! as replication to that follower goes well. Its default implementation sends one request,
//! waits for the answer and only then takes the next, so a follower's fsync and a round trip
//! sit between every two batches. Here the leader writes each request the moment openraft
//! produces it, with up to `raft.append_window` unanswered, and reads the answers as they
//! come: the follower's flush of one batch overlaps the transfer of the next and the leader's
//! own. A window of 1 is openraft's sequential behaviour, over the same stream.
//!
//! Order needs no sequence numbers: a QUIC stream delivers bytes in order and the follower's
//! [`Raft::stream_append`](openraft::Raft::stream_append) answers in request order, so the
//! n-th answer belongs to the n-th request.
//!
//! On the wire, after the `Request::Raft { kind: AppendStream }` header:
//! - leader to follower: one frame per `AppendEntriesRequest`; the leader finishes its side
//!   when openraft ends the input;
//! - follower to leader: one `Response::Raft(Result<StreamAppendResult, String>)` per request
//!   (`Err` is the follower's fatal error: it is shutting down), then, if a request frame
//!   could not be decoded, one `Response::Error` saying why, after which nothing more is read.
//!
//! The stream ends at the first conflict, higher vote, partial success, remote fatal error or
//! transport error, as openraft requires. Each answer must arrive within the RPC deadline,
//! counted only while one is owed: an idle session, with nothing to replicate, stays open.
//!
//! openraft bounds a batch by entry count, not bytes, and one entry may be megabytes. A
//! request whose encoding would not fit in a frame is cut into consecutive parts that do, each
//! its own frame and its own answer on the follower; the leader hands openraft one answer for
//! the whole request (the last part's if every part fully succeeded, else the first part that
//! did not). So no legal write can make a frame the follower refuses, and a follower that fell
//! far behind catches up however large the entries it missed.

use super::network::{decode_reply, rpc_err};
use super::MetaNode;
use augur_proto::frame::{payload_budget, read_frame, write_frame, FrameError};
use augur_proto::wire::ApiError;
use augur_proto::{Request, Response};
use augur_raft_store::types::LogId;
use augur_raft_store::TypeConfig;
use augur_transport::{FramedRecv, Transport};
use futures::{Stream, StreamExt};
use openraft::base::{BoxFuture, BoxStream};
use openraft::entry::RaftEntry;
use openraft::errors::{NetworkError, RPCError};
use openraft::raft::{AppendEntriesRequest, StreamAppendResult};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

/// What openraft's output stream carries.
type AppendItem = Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>;

/// The log id a request's answer must acknowledge for the request to have fully succeeded.
fn last_log_id(req: &AppendEntriesRequest<TypeConfig>) -> Option<LogId> {
    req.entries.last().map(|e| e.log_id()).or(req.prev_log_id)
}

/// Cuts a request into consecutive parts whose entries take at most `budget` bytes each
/// (a part holds at least one entry, however large). A request that fits is returned whole.
fn split(
    req: AppendEntriesRequest<TypeConfig>,
    budget: usize,
) -> Vec<AppendEntriesRequest<TypeConfig>> {
    let size = |e: &augur_raft_store::types::Entry| {
        postcard::serialize_with_flavor(e, postcard::ser_flavors::Size::default())
            .unwrap_or(usize::MAX)
    };
    let sizes: Vec<usize> = req.entries.iter().map(size).collect();
    if sizes.iter().fold(0usize, |a, s| a.saturating_add(*s)) <= budget {
        return vec![req];
    }
    let AppendEntriesRequest {
        vote,
        prev_log_id,
        leader_commit,
        entries,
    } = req;
    let mut parts = Vec::new();
    let mut prev = prev_log_id;
    let mut part = Vec::new();
    let mut bytes = 0usize;
    for (entry, entry_bytes) in entries.into_iter().zip(sizes) {
        if !part.is_empty() && bytes.saturating_add(entry_bytes) > budget {
            let done = std::mem::take(&mut part);
            let next_prev = done
                .last()
                .map(|e: &augur_raft_store::types::Entry| e.log_id());
            parts.push(AppendEntriesRequest {
                vote,
                prev_log_id: prev,
                leader_commit,
                entries: done,
            });
            prev = next_prev;
            bytes = 0;
        }
        bytes = bytes.saturating_add(entry_bytes);
        part.push(entry);
    }
    parts.push(AppendEntriesRequest {
        vote,
        prev_log_id: prev,
        leader_commit,
        entries: part,
    });
    parts
}

/// Opens a pipelined append stream to the follower at `addr` and returns its answers.
///
/// `header` is the `Request::Raft { kind: AppendStream }` that opens the stream, envelope
/// included. At most `window` requests (at least 1) are unanswered at a time.
/// `answer_timeout` bounds the wait for each owed answer; a stream that misses it ends with an
/// error (the stream is reset; the connection stays for everything else using it).
pub(crate) fn open<'s, S>(
    transport: Transport,
    addr: String,
    header: Request,
    input: S,
    answer_timeout: Duration,
    window: usize,
) -> BoxFuture<'s, Result<BoxStream<'s, AppendItem>, RPCError<TypeConfig>>>
where
    S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
{
    Box::pin(async move {
        let (send, recv) = transport.open(&addr, &header).await.map_err(rpc_err)?;
        // The writer takes a permit per request and announces it to the reader with the
        // request; the reader gives the permit back once the answer is in.
        let window = Arc::new(Semaphore::new(window.max(1)));
        let (owed_tx, owed_rx) = mpsc::unbounded_channel();
        let writer = tokio::spawn(write_requests(
            input,
            send,
            Owed {
                tx: owed_tx,
                window,
            },
            transport.max_frame(),
            addr.clone(),
        ));
        let reader = AnswerReader {
            recv,
            owed: owed_rx,
            _writer: AbortOnDrop(writer),
            transport,
            addr,
            answer_timeout,
        };
        let answers: BoxStream<'s, AppendItem> =
            Box::pin(futures::stream::unfold(Some(reader), |state| async move {
                let mut reader = state?;
                let (item, go_on) = reader.next_answer().await?;
                Some((item, go_on.then_some(reader)))
            }));
        Ok(answers)
    })
}

/// A request the reader must see answered: for each of its parts on the wire, the log id the
/// part's answer must acknowledge; and the window permit the request holds until then.
type OwedAnswer = (Vec<Option<LogId>>, OwnedSemaphorePermit);

/// The writer's end of the reader's queue, and the window that bounds it.
struct Owed {
    tx: mpsc::UnboundedSender<OwedAnswer>,
    window: Arc<Semaphore>,
}

/// Sends each request openraft produces; finishes the stream when openraft ends the input.
async fn write_requests<S>(
    mut input: S,
    send: quinn::SendStream,
    owed: Owed,
    max_frame: usize,
    addr: String,
) where
    S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Unpin,
{
    let mut send = ResetOnDrop(Some(send));
    loop {
        // Wait for room before taking the next request, so openraft batches whatever arrives
        // meanwhile into it.
        let Ok(permit) = owed.window.clone().acquire_owned().await else {
            return;
        };
        let Some(req) = input.next().await else {
            break;
        };
        let parts = split(req, payload_budget(max_frame));
        // Announced before it is written, so the answer deadline also covers a follower too
        // slow to take the bytes.
        let expected = parts.iter().map(last_log_id).collect();
        if owed.tx.send((expected, permit)).is_err() {
            return; // the reader has stopped: the session is over
        }
        let Some(stream) = send.0.as_mut() else {
            return;
        };
        for part in &parts {
            if let Err(e) = write_frame(stream, part, max_frame).await {
                // The follower answers what it got and then sees the stream reset; the reader
                // reports the missing answer.
                tracing::warn!(peer = %addr, error = %e, "append stream: sending a request failed");
                return;
            }
        }
    }
    if let Some(mut stream) = send.0.take() {
        // Dropped un-reset: resetting a finished stream could discard requests not yet
        // delivered.
        let _ = stream.finish();
    }
}

/// Resets the leader's side unless it was finished: a writer stopped mid-frame (the session
/// was dropped, or a write failed) must not look like a request cut short to the follower,
/// which is what a plain drop would send (quinn finishes a dropped stream).
struct ResetOnDrop(Option<quinn::SendStream>);

impl Drop for ResetOnDrop {
    fn drop(&mut self) {
        if let Some(stream) = self.0.as_mut() {
            let _ = stream.reset(0u32.into());
        }
    }
}

/// The leader's half that reads answers, one per announced request, in order.
struct AnswerReader {
    recv: FramedRecv,
    owed: mpsc::UnboundedReceiver<OwedAnswer>,
    _writer: AbortOnDrop,
    transport: Transport,
    addr: String,
    answer_timeout: Duration,
}

impl AnswerReader {
    /// The next answer to one of openraft's requests and whether the stream goes on after it;
    /// `None` once the input has ended and every request is answered.
    async fn next_answer(&mut self) -> Option<(AppendItem, bool)> {
        // The permit goes back to the window when this returns, answer in hand.
        let (expected, _permit) = self.owed.recv().await?;
        let mut last = None;
        for part in expected {
            let (item, go_on) = self.next_part(part).await;
            if !go_on {
                // A part that did not fully succeed answers for the whole request: openraft
                // resends from what the follower really has.
                return Some((item, false));
            }
            last = Some(item);
        }
        last.map(|item| (item, true))
    }

    /// The answer to one frame on the wire.
    async fn next_part(&mut self, expected: Option<LogId>) -> (AppendItem, bool) {
        let answer = match tokio::time::timeout(self.answer_timeout, self.recv.next()).await {
            Err(_) => {
                // A follower that was killed (and perhaps restarted) leaves a connection that
                // looks open until the idle timeout; silence tells, and the next session
                // dials afresh.
                self.transport.discard_if_silent(&self.recv);
                return (
                    Err(RPCError::Network(NetworkError::from_string(format!(
                        "{}: no append answer within {:?}",
                        self.addr, self.answer_timeout
                    )))),
                    false,
                );
            }
            Ok(Err(e)) => {
                return (Err(rpc_err(e)), false);
            }
            Ok(Ok(None)) => {
                return (
                    Err(RPCError::Network(NetworkError::from_string(format!(
                        "{}: append stream ended with a request unanswered",
                        self.addr
                    )))),
                    false,
                )
            }
            Ok(Ok(Some(resp))) => resp,
        };
        let item: AppendItem = decode_reply(&self.addr, answer);
        // Only a full success lets the pipeline go on: after a conflict or a higher vote the
        // requests behind are moot, and after a partial success they would leave a gap.
        let go_on = matches!(&item, Ok(Ok(matched)) if *matched == expected);
        (item, go_on)
    }
}

/// Whether `req` could have come from a leader following the protocol: its entries follow
/// `prev_log_id` one index after another, their log ids never go back, and none is newer
/// than the sender's vote. Raft relies on the first (an assertion in debug builds; in
/// release the entries would be stored as sent, leaving a gap in the log) and on the others
/// for its log's order, so a request that breaks them is refused here, as a damaged
/// snapshot header is. Only a member certificate can send one.
fn append_fits(req: &AppendEntriesRequest<TypeConfig>) -> Result<(), String> {
    use openraft::entry::RaftEntry;
    use openraft::vote::RaftLeaderId;
    let newest = req.vote.leader_id.to_committed();
    let mut prev: Option<LogId> = req.prev_log_id;
    for entry in &req.entries {
        let id = entry.log_id();
        let want = prev.map_or(Some(0), |p| p.index.checked_add(1));
        if Some(id.index) != want {
            return Err(format!(
                "entry {id} does not follow {}",
                prev.map_or("the start of the log".to_string(), |p| p.to_string())
            ));
        }
        if prev.is_some_and(|p| p.leader_id > id.leader_id) {
            return Err(format!("entry {id} goes back to an older term"));
        }
        if id.leader_id > newest {
            return Err(format!(
                "entry {id} is beyond the sender's vote {}",
                req.vote
            ));
        }
        prev = Some(id);
    }
    Ok(())
}

/// Stops the writer when openraft drops the answer stream (a new session, or leadership lost).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl MetaNode {
    /// The follower's half: feeds the requests to Raft in order and writes each answer back.
    pub(crate) async fn serve_append_stream(
        &self,
        mut send: quinn::SendStream,
        recv: quinn::RecvStream,
    ) {
        let max = self.max_frame();
        // Arrival times, in order, so each answer's latency lands in the same histogram as a
        // plain append's; and why reading stopped, if a frame was bad.
        let arrived: Arc<Mutex<VecDeque<Instant>>> = Arc::default();
        let bad_frame: Arc<Mutex<Option<String>>> = Arc::default();
        let requests = {
            let arrived = arrived.clone();
            let bad_frame = bad_frame.clone();
            futures::stream::unfold(recv, move |mut recv| {
                let arrived = arrived.clone();
                let bad_frame = bad_frame.clone();
                async move {
                    match read_frame::<_, AppendEntriesRequest<TypeConfig>>(&mut recv, max).await {
                        Ok(Some(req)) => match append_fits(&req) {
                            Ok(()) => {
                                if let Ok(mut a) = arrived.lock() {
                                    a.push_back(Instant::now());
                                }
                                Some((req, recv))
                            }
                            Err(why) => {
                                if let Ok(mut b) = bad_frame.lock() {
                                    *b = Some(why);
                                }
                                None
                            }
                        },
                        // The leader finished its side, or went away: nothing to report.
                        Ok(None) | Err(FrameError::Io(_)) => None,
                        Err(e) => {
                            if let Ok(mut b) = bad_frame.lock() {
                                *b = Some(e.to_string());
                            }
                            None
                        }
                    }
                }
            })
        };
        let mut answers = std::pin::pin!(self.raft.stream_append(requests));
        while let Some(answer) = answers.next().await {
            let go_on = matches!(answer, Ok(Ok(_)));
            let reply = super::raft_server::encode_reply(answer.map_err(|fatal| fatal.to_string()));
            let started = arrived.lock().ok().and_then(|mut a| a.pop_front());
            if let Some(started) = started {
                self.metrics.observe_rpc("raft_append", started.elapsed());
            }
            if write_frame(&mut send, &reply, max).await.is_err() {
                return;
            }
            if !go_on {
                break;
            }
        }
        let bad = bad_frame.lock().ok().and_then(|mut b| b.take());
        if let Some(why) = bad {
            self.metrics.rpc_errors("invalid_argument");
            let resp = Response::Error(ApiError::InvalidArgument(format!(
                "append stream request frame: {why}"
            )));
            let _ = write_frame(&mut send, &resp, max).await;
        }
        let _ = send.finish();
        let _ = send.stopped().await;
    }
}

#[cfg(test)]
#[path = "append_stream_tests.rs"]
mod tests;
