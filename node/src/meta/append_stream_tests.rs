//! The leader's half against a scripted follower on a real QUIC endpoint. The follower's
//! half (Raft feeding and answering) runs in every cluster test; what only a scripted peer
//! can show deterministically is the order of things on the wire.
//!
//! Kept out of `append_stream.rs` because the scripted peer (certificates, a raw QUIC
//! endpoint, hand-written answers) is as long as the session it drives.

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

/// Requests that no leader following the protocol sends are refused before Raft sees
/// them; what leaders do send passes.
#[test]
fn append_requests_that_break_the_log_order_are_refused() {
    let req =
        |prev: Option<(u64, u64)>, entries: &[(u64, u64)], vote_term: u64| AppendEntriesRequest::<
            TypeConfig,
        > {
            vote: Vote::new_committed(vote_term, 1),
            prev_log_id: prev.map(|(t, i)| log_id::<TypeConfig>(t, 1, i)),
            leader_commit: None,
            entries: entries
                .iter()
                .map(|(t, i)| blank_ent::<TypeConfig>(*t, 1, *i))
                .collect(),
        };
    // A heartbeat, the log's first entries, a batch after a prefix, a new term's entries.
    assert!(append_fits(&req(Some((1, 9)), &[], 1)).is_ok());
    assert!(append_fits(&req(None, &[(0, 0), (1, 1)], 1)).is_ok());
    assert!(append_fits(&req(Some((1, 4)), &[(1, 5), (1, 6), (2, 7)], 2)).is_ok());
    // A gap after the previous entry, a repeated index, a step back in term, an entry
    // newer than the sender's vote, an index past the end of the range.
    assert!(append_fits(&req(Some((1, 4)), &[(1, 6)], 1)).is_err());
    assert!(append_fits(&req(None, &[(1, 1)], 1)).is_err());
    assert!(append_fits(&req(Some((1, 4)), &[(1, 5), (1, 5)], 1)).is_err());
    assert!(append_fits(&req(Some((2, 4)), &[(1, 5)], 2)).is_err());
    assert!(append_fits(&req(Some((1, 4)), &[(2, 5), (1, 6)], 2)).is_err());
    assert!(append_fits(&req(Some((1, 4)), &[(3, 5)], 2)).is_err());
    assert!(append_fits(&req(Some((1, u64::MAX)), &[(1, 0)], 1)).is_err());
}
