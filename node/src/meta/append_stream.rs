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
mod tests {
    //! The leader's half against a scripted follower on a real QUIC endpoint. The follower's
    //! half (Raft feeding and answering) runs in every cluster test; what only a scripted peer
    //! can show deterministically is the order of things on the wire.
    use super::*;
    use crate::certs::{create_ca, issue, Role};
    use augur_proto::frame::MAX_FRAME_DEFAULT;
    use augur_proto::wire::{RaftEnvelope, RaftRpcKind};
    use augur_transport::{client_config, server_config, TlsFiles};
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
            Role::Member,
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

    /// The stream's opening frame, as a leader sends it.
    fn header() -> Request {
        Request::Raft {
            kind: RaftRpcKind::AppendStream,
            envelope: RaftEnvelope {
                cluster: augur_proto::ClusterId(1),
                from: augur_proto::MemberId(1),
                from_incarnation: 11,
                to: augur_proto::MemberId(2),
                to_incarnation: 22,
                membership_index: 0,
            },
            payload: Vec::new(),
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
                    header(),
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
        let reply = crate::meta::raft_server::encode_reply::<StreamAppendResult<TypeConfig>>(Ok(r));
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
            header(),
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

    /// One request carrying `n` entries of about `each` bytes, after entry 0.
    fn big_request(n: u64, each: usize) -> AppendEntriesRequest<TypeConfig> {
        use augur_proto::{Op, Record, Setting, Txn};
        AppendEntriesRequest {
            vote: Vote::new_committed(1, 1),
            prev_log_id: None,
            leader_commit: Some(log_id::<TypeConfig>(1, 1, 2)),
            entries: (1..=n)
                .map(|i| augur_raft_store::types::Entry {
                    log_id: log_id::<TypeConfig>(1, 1, i),
                    payload: openraft::EntryPayload::Normal(augur_raft_store::Command::Txn(Txn {
                        compares: vec![],
                        ops: vec![Op::Put(Record::Setting(Setting {
                            name: format!("s{i}"),
                            value: vec![i as u8; each],
                            version: 0,
                        }))],
                    })),
                })
                .collect(),
        }
    }

    #[test]
    fn requests_are_split_into_consecutive_parts_within_the_budget() {
        let req = big_request(10, 1000);
        assert_eq!(split(req.clone(), usize::MAX).len(), 1);
        let parts = split(req.clone(), 3500);
        assert!(parts.len() >= 3, "{} parts", parts.len());
        let mut prev = req.prev_log_id;
        let mut all = Vec::new();
        for p in &parts {
            assert_eq!(p.prev_log_id, prev, "parts chain on each other");
            assert_eq!(p.leader_commit, req.leader_commit);
            assert!(!p.entries.is_empty());
            let bytes: usize = p
                .entries
                .iter()
                .map(|e| postcard::to_allocvec(e).unwrap().len())
                .sum();
            assert!(bytes <= 3500 || p.entries.len() == 1, "{bytes}");
            prev = p.entries.last().map(|e| e.log_id());
            all.extend(p.entries.iter().map(|e| e.log_id()));
        }
        assert_eq!(
            all,
            req.entries.iter().map(|e| e.log_id()).collect::<Vec<_>>()
        );
        // An entry larger than the budget travels alone.
        assert_eq!(split(big_request(3, 5000), 1000).len(), 3);
    }

    #[tokio::test]
    async fn an_oversized_request_goes_out_in_parts_and_is_answered_once() {
        let mut p = peers();
        // A small frame limit on the leader's side, so that one request needs several frames.
        p.leader = p
            .leader
            .clone()
            .with_max_frame(augur_proto::frame::FRAME_SLACK + 8 * 1024);
        let req = big_request(12, 2000);
        let follower = p.follower.clone();
        let scripted = tokio::spawn(async move {
            let conn = follower.accept().await.unwrap().await.unwrap();
            let (mut send, mut recv) = conn.accept_bi().await.unwrap();
            let _header: Request = read_frame(&mut recv, MAX_FRAME_DEFAULT)
                .await
                .unwrap()
                .unwrap();
            let mut frames = 0;
            while let Some(part) =
                read_frame::<_, AppendEntriesRequest<TypeConfig>>(&mut recv, MAX_FRAME_DEFAULT)
                    .await
                    .unwrap()
            {
                frames += 1;
                answer(&mut send, Ok(last_log_id(&part))).await;
            }
            let _ = send.finish();
            let _ = send.stopped().await;
            frames
        });
        let answers = p.collect_answers(vec![req.clone()]).await;
        let frames = scripted.await.unwrap();
        assert!(frames > 1, "sent in {frames} frame(s)");
        assert_eq!(answers.len(), 1, "{answers:?}");
        assert_eq!(
            answers[0].as_ref().unwrap().as_ref().unwrap(),
            &last_log_id(&req)
        );
    }
}
