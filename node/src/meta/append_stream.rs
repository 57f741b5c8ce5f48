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

use super::network::{decode_reply, rpc_err};
use super::MetaNode;
use augur_client::transport::{FramedRecv, Transport};
use augur_proto::frame::{read_frame, write_frame, FrameError};
use augur_proto::wire::{ApiError, RaftRpcKind};
use augur_proto::{Request, Response};
use augur_raft_store::types::LogId;
use augur_raft_store::TypeConfig;
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

/// Opens a pipelined append stream to the follower at `addr` and returns its answers.
///
/// At most `window` requests (at least 1) are unanswered at a time. `answer_timeout` bounds
/// the wait for each owed answer; a stream that misses it ends with an error and the pooled
/// connection is dropped, as for a plain RPC that times out.
pub(crate) fn open<'s, S>(
    transport: Transport,
    addr: String,
    input: S,
    answer_timeout: Duration,
    window: usize,
) -> BoxFuture<'s, Result<BoxStream<'s, AppendItem>, RPCError<TypeConfig>>>
where
    S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
{
    Box::pin(async move {
        let header = Request::Raft {
            kind: RaftRpcKind::AppendStream,
            payload: Vec::new(),
        };
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

/// A request the reader must see answered: the log id the answer must acknowledge, and the
/// window permit it holds until then.
type OwedAnswer = (Option<LogId>, OwnedSemaphorePermit);

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
        // Announced before it is written, so the answer deadline also covers a follower too
        // slow to take the bytes.
        if owed.tx.send((last_log_id(&req), permit)).is_err() {
            return; // the reader has stopped: the session is over
        }
        let Some(stream) = send.0.as_mut() else {
            return;
        };
        if let Err(e) = write_frame(stream, &req, max_frame).await {
            // The follower answers what it got and then sees the stream reset; the reader
            // reports the missing answer.
            tracing::warn!(peer = %addr, error = %e, "append stream: sending a request failed");
            return;
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
    /// The next answer and whether the stream goes on after it; `None` once the input has
    /// ended and every request is answered.
    async fn next_answer(&mut self) -> Option<(AppendItem, bool)> {
        // The permit goes back to the window when this returns, answer in hand.
        let (expected, _permit) = self.owed.recv().await?;
        let answer = match tokio::time::timeout(self.answer_timeout, self.recv.next()).await {
            Err(_) => {
                self.transport.forget(&self.addr).await;
                return Some((
                    Err(RPCError::Network(NetworkError::from_string(format!(
                        "{}: no append answer within {:?}",
                        self.addr, self.answer_timeout
                    )))),
                    false,
                ));
            }
            Ok(Err(e)) => {
                self.transport.forget(&self.addr).await;
                return Some((Err(rpc_err(e)), false));
            }
            Ok(Ok(None)) => {
                return Some((
                    Err(RPCError::Network(NetworkError::from_string(format!(
                        "{}: append stream ended with a request unanswered",
                        self.addr
                    )))),
                    false,
                ))
            }
            Ok(Ok(Some(resp))) => resp,
        };
        let item: AppendItem = decode_reply(&self.addr, answer);
        // Only a full success lets the pipeline go on: after a conflict or a higher vote the
        // requests behind are moot, and after a partial success they would leave a gap.
        let go_on = matches!(&item, Ok(Ok(matched)) if *matched == expected);
        Some((item, go_on))
    }
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
                        Ok(Some(req)) => {
                            if let Ok(mut a) = arrived.lock() {
                                a.push_back(Instant::now());
                            }
                            Some((req, recv))
                        }
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
            let reply = super::service::encode_reply(answer.map_err(|fatal| fatal.to_string()));
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
mod tests {
    //! The leader's half against a scripted follower on a real QUIC endpoint. The follower's
    //! half (Raft feeding and answering) runs in every cluster test; what only a scripted peer
    //! can show deterministically is the order of things on the wire.
    use super::*;
    use crate::certs::{create_ca, issue, Role};
    use augur_client::transport::{client_config, server_config, TlsFiles};
    use augur_proto::frame::MAX_FRAME_DEFAULT;
    use openraft::raft::StreamAppendError;
    use openraft::testing::{blank_ent, log_id};

    type Vote = augur_raft_store::types::Vote;

    /// The default window; the tests below need at least 3.
    const WINDOW: usize = 64;

    struct Peers {
        follower: quinn::Endpoint,
        leader: Transport,
        addr: String,
        _dir: tempfile::TempDir,
    }

    fn peers() -> Peers {
        let dir = tempfile::tempdir().unwrap();
        create_ca(dir.path()).unwrap();
        let (cert, key) = issue(
            dir.path(),
            dir.path(),
            "meta-1",
            Role::Node,
            &["127.0.0.1".into()],
        )
        .unwrap();
        let tls = TlsFiles {
            ca: dir.path().join("ca.pem"),
            cert,
            key,
        };
        let idle = Duration::from_secs(10);
        let follower = quinn::Endpoint::server(
            server_config(&tls, idle).unwrap(),
            "127.0.0.1:0".parse().unwrap(),
        )
        .unwrap();
        let addr = follower.local_addr().unwrap().to_string();
        let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        ep.set_default_client_config(client_config(&tls, idle).unwrap());
        Peers {
            follower,
            leader: Transport::from_endpoint(ep, Duration::from_secs(5)),
            addr,
            _dir: dir,
        }
    }

    impl Peers {
        /// Opens an append stream to the follower and collects every answer until it ends.
        async fn collect_answers(
            &self,
            reqs: Vec<AppendEntriesRequest<TypeConfig>>,
        ) -> Vec<AppendItem> {
            let input = futures::stream::iter(reqs);
            let answers = async {
                open(
                    self.leader.clone(),
                    self.addr.clone(),
                    input,
                    Duration::from_secs(20),
                    WINDOW,
                )
                .await
                .unwrap()
                .collect()
                .await
            };
            tokio::time::timeout(Duration::from_secs(30), answers)
                .await
                .expect("the stream ends within the deadline")
        }
    }

    /// Three requests for entries 1, 2 and 3, each after the one before.
    fn requests() -> Vec<AppendEntriesRequest<TypeConfig>> {
        (1..=3u64)
            .map(|i| AppendEntriesRequest {
                vote: Vote::new_committed(1, 1),
                prev_log_id: (i > 1).then(|| log_id::<TypeConfig>(1, 1, i - 1)),
                leader_commit: None,
                entries: vec![blank_ent::<TypeConfig>(1, 1, i)],
            })
            .collect()
    }

    /// Accepts the append stream and reads `n` requests without answering any.
    async fn accept_and_read(
        follower: &quinn::Endpoint,
        n: usize,
    ) -> (
        quinn::SendStream,
        quinn::RecvStream,
        Vec<AppendEntriesRequest<TypeConfig>>,
    ) {
        let conn = follower.accept().await.unwrap().await.unwrap();
        let (send, mut recv) = conn.accept_bi().await.unwrap();
        let header: Request = read_frame(&mut recv, MAX_FRAME_DEFAULT)
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(
            header,
            Request::Raft {
                kind: RaftRpcKind::AppendStream,
                ..
            }
        ));
        let mut got = Vec::new();
        for _ in 0..n {
            got.push(
                read_frame(&mut recv, MAX_FRAME_DEFAULT)
                    .await
                    .unwrap()
                    .unwrap(),
            );
        }
        (send, recv, got)
    }

    async fn answer(send: &mut quinn::SendStream, r: StreamAppendResult<TypeConfig>) {
        let reply = crate::meta::service::encode_reply::<StreamAppendResult<TypeConfig>>(Ok(r));
        write_frame(send, &reply, MAX_FRAME_DEFAULT).await.unwrap();
    }

    #[tokio::test]
    async fn requests_go_out_before_answers_come_back() {
        let p = peers();
        let follower = p.follower.clone();
        // The follower reads all three requests before answering the first. A sender that
        // waits for each answer would never get the second one out, and this would hang.
        let scripted = tokio::spawn(async move {
            let (mut send, mut recv, got) = accept_and_read(&follower, 3).await;
            for req in &got {
                answer(&mut send, Ok(last_log_id(req))).await;
            }
            // openraft's input ended, so the leader finishes its side.
            let more: Option<AppendEntriesRequest<TypeConfig>> =
                read_frame(&mut recv, MAX_FRAME_DEFAULT).await.unwrap();
            assert!(more.is_none());
            let _ = send.finish();
            let _ = send.stopped().await;
            got.len()
        });
        let answers = p.collect_answers(requests()).await;
        assert_eq!(scripted.await.unwrap(), 3);
        let matched: Vec<_> = answers
            .into_iter()
            .map(|a| a.unwrap().unwrap().map(|l| l.index))
            .collect();
        assert_eq!(matched, vec![Some(1), Some(2), Some(3)]);
    }

    #[tokio::test]
    async fn a_conflict_or_partial_success_ends_the_stream() {
        for partial in [false, true] {
            let p = peers();
            let follower = p.follower.clone();
            let scripted = tokio::spawn(async move {
                let (mut send, _recv, got) = accept_and_read(&follower, 3).await;
                let first = if partial {
                    // Took none of the entries of the first request.
                    Ok(got[0].prev_log_id)
                } else {
                    Err(StreamAppendError::Conflict(log_id::<TypeConfig>(1, 1, 1)))
                };
                answer(&mut send, first).await;
                // Answers to the rest would be wrong to deliver: after a conflict or a gap the
                // leader has to start over from what the follower really has.
                answer(&mut send, Ok(last_log_id(&got[1]))).await;
                let _ = send.finish();
                let _ = send.stopped().await;
            });
            let answers = p.collect_answers(requests()).await;
            scripted.await.unwrap();
            assert_eq!(answers.len(), 1, "partial={partial}: {answers:?}");
            match (&answers[0], partial) {
                (Ok(Ok(None)), true) => {}
                (Ok(Err(StreamAppendError::Conflict(_))), false) => {}
                (other, _) => panic!("partial={partial}: unexpected {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn an_owed_answer_that_never_comes_is_an_error() {
        let p = peers();
        let follower = p.follower.clone();
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let scripted = tokio::spawn(async move {
            // Reads, never answers, and keeps the connection open until the leader gives up.
            let held = accept_and_read(&follower, 1).await;
            let _ = released.await;
            drop(held);
        });
        let input = futures::stream::iter(requests().into_iter().take(1));
        let mut answers = open(
            p.leader.clone(),
            p.addr.clone(),
            input,
            Duration::from_millis(300),
            WINDOW,
        )
        .await
        .unwrap();
        let first = tokio::time::timeout(Duration::from_secs(30), answers.next())
            .await
            .expect("the answer deadline fires");
        assert!(
            matches!(first, Some(Err(RPCError::Network(_)))),
            "{first:?}"
        );
        assert!(answers.next().await.is_none());
        let _ = release.send(());
        scripted.await.unwrap();
    }
}
