//! The data client's routing and retry rules, against a scripted metadata member and
//! scripted storage nodes in this process.
//!
//! Every scripted server is a real QUIC server with mutual TLS. The metadata member serves
//! the layout, the shard and node tables from a state the test changes as it goes, and
//! holds watches open without events, so the client learns of a change only by reading
//! again: each test checks that it does so when the storage node's answer calls for it.
//! Storage nodes record every request and answer as their script says (or never answer).
//! Tests check what the caller got *and* what each node received: the rules are about
//! deliveries (a write is resent only under its request id), so an outcome alone proves
//! little.

mod scripted;

use augur_client::transport::TlsFiles;
use augur_client::Error;
use augur_proto::data::{
    shard_of, DataError, DataRequest, DataResponse, Redirect, Versioned, WriteOp, WriteOutcome,
    MAX_VALUE,
};
use augur_proto::{NodeId, ShardId};
use scripted::*;
use std::collections::BTreeMap;
use std::time::Duration;

#[tokio::test]
async fn a_redirect_is_followed_to_the_new_primary() {
    let c = certs();
    let old = Storage::start(&c.tls, |_, _| {
        refuse(DataError::Redirect(Redirect {
            shard: ShardId(1),
            epoch: 2,
            primary: Some(NodeId(2)),
        }))
    });
    let new = Storage::start(&c.tls, |req, _| match req {
        DataRequest::Get { epoch: 2, .. } => Reply::Now(value(b"v", 4)),
        _ => refuse(DataError::Internal("not scripted".into())),
    });
    let meta = cluster(&c.tls, 1, &[1, 2], &[&old.addr, &new.addr]);
    let client = data_client(&meta, &c.tls, REQUEST).await;
    // The hand-off happens after the client cached epoch 1; its watch brings no news.
    meta.with(|s| s.put_shard(1, &[2, 1], 2));

    let r = client.get(b"k").await;

    assert!(
        matches!(&r, Ok(Some(v)) if v.value == b"v" && v.version == 4),
        "{r:?}"
    );
    assert_eq!(old.gets(), vec![1]);
    assert_eq!(
        new.gets(),
        vec![2],
        "sent to the new primary with its epoch"
    );
}

#[tokio::test]
async fn a_stale_epoch_refreshes_the_shard_and_resends_with_the_new_epoch() {
    let c = certs();
    let node = Storage::start(&c.tls, |req, _| match req {
        DataRequest::Write { epoch, .. } if *epoch < 3 => refuse(DataError::StaleEpoch {
            shard: ShardId(1),
            epoch: 3,
        }),
        DataRequest::Write { .. } => applied(11),
        _ => refuse(DataError::Internal("not scripted".into())),
    });
    let meta = cluster(&c.tls, 1, &[1], &[&node.addr]);
    let client = data_client(&meta, &c.tls, REQUEST).await;
    meta.with(|s| s.put_shard(1, &[1], 3));

    let r = client.put(b"k".to_vec(), b"v".to_vec()).await;

    assert!(matches!(r, Ok(11)), "{r:?}");
    let writes = node.writes();
    assert_eq!(writes.iter().map(|w| w.1).collect::<Vec<_>>(), vec![1, 3]);
    assert_eq!(writes[0].0, writes[1].0, "one write, one request id");
    assert_eq!(meta.with(|s| s.shard_reads.get(&1).copied()), Some(1));
}

#[tokio::test]
async fn a_write_whose_answer_is_lost_is_resent_with_the_same_request_id() {
    let c = certs();
    let node = Storage::start(&c.tls, |req, seen| match req {
        DataRequest::Write { .. } if seen == 0 => Reply::Stall,
        DataRequest::Write { .. } => applied(7),
        _ => refuse(DataError::Internal("not scripted".into())),
    });
    let meta = cluster(&c.tls, 1, &[1], &[&node.addr]);
    let client = data_client(&meta, &c.tls, REQUEST).await;

    let r = client.cas(b"k".to_vec(), None, Some(b"v".to_vec())).await;
    let next = client.delete(b"k".to_vec()).await;

    assert!(
        matches!(r, Ok(WriteOutcome::Applied { version: 7 })),
        "{r:?}"
    );
    assert!(matches!(next, Ok(7)), "{next:?}");
    let writes = node.writes();
    assert_eq!(writes.len(), 3);
    assert_eq!(writes[0].0, writes[1].0, "the resend keeps its id");
    assert_eq!(writes[0].0.client, client.client_id());
    assert_eq!(writes[2].0.client, writes[0].0.client);
    assert!(
        writes[2].0.seq > writes[0].0.seq,
        "the next write has a new id"
    );
}

#[tokio::test]
async fn a_write_never_answered_by_the_deadline_is_indeterminate() {
    let c = certs();
    let node = Storage::start(&c.tls, |req, _| match req {
        DataRequest::Get { .. } => Reply::Now(DataResponse::Value(None)),
        _ => Reply::Stall,
    });
    let meta = cluster(&c.tls, 1, &[1], &[&node.addr]);
    let client = data_client(&meta, &c.tls, Duration::from_millis(1500)).await;
    // Connected first, so that the deadline is spent on write attempts alone, however slow
    // a handshake is on a loaded machine.
    assert!(matches!(client.get(b"k").await, Ok(None)));

    let r = client.put(b"k".to_vec(), b"v".to_vec()).await;

    assert!(matches!(r, Err(Error::Indeterminate(_))), "{r:?}");
    let writes = node.writes();
    assert!(writes.len() >= 2, "resent until the deadline: {writes:?}");
    assert!(
        writes.iter().all(|w| w.0 == writes[0].0),
        "every resend under the same id: {writes:?}"
    );
}

/// A node that fails on its own (a log append that hit a disk error) may have written the
/// entry anyway: the client resends under the same id, and a node that keeps failing ends
/// the call `Indeterminate`, never a definite failure.
#[tokio::test]
async fn a_node_failing_on_its_own_is_retried_under_the_same_request_id() {
    let c = certs();
    let node = Storage::start(&c.tls, |req, seen| match (req, seen) {
        (DataRequest::Write { .. }, 0) => refuse(DataError::Internal(
            "cannot append to the log: I/O error".into(),
        )),
        (DataRequest::Write { .. }, _) => applied(12),
        _ => refuse(DataError::PermissionDenied("not scripted".into())),
    });
    let meta = cluster(&c.tls, 1, &[1], &[&node.addr]);
    let client = data_client(&meta, &c.tls, REQUEST).await;

    let r = client.put(b"k".to_vec(), b"v".to_vec()).await;

    assert!(matches!(r, Ok(12)), "{r:?}");
    let writes = node.writes();
    assert_eq!(writes.len(), 2, "{writes:?}");
    assert_eq!(writes[0].0, writes[1].0, "one write, one request id");

    let failing = Storage::start(&c.tls, |req, _| match req {
        DataRequest::Get { key, .. } if key == b"k" => Reply::Now(DataResponse::Value(None)),
        _ => refuse(DataError::Internal(
            "cannot append to the log: I/O error".into(),
        )),
    });
    let meta = cluster(&c.tls, 1, &[1], &[&failing.addr]);
    let client = data_client(&meta, &c.tls, Duration::from_millis(800)).await;
    assert!(matches!(client.get(b"k").await, Ok(None)));
    let r = client.put(b"k".to_vec(), b"v".to_vec()).await;
    assert!(matches!(r, Err(Error::Indeterminate(_))), "{r:?}");
    let writes = failing.writes();
    assert!(writes.len() >= 2, "resent until the deadline: {writes:?}");
    assert!(writes.iter().all(|w| w.0 == writes[0].0), "{writes:?}");
    // A read that met only the node's failure reports it, not `Unavailable`.
    let r = client.get(b"broken").await;
    assert!(
        matches!(r, Err(Error::Data(DataError::Internal(_)))),
        "{r:?}"
    );
    assert!(failing.gets().len() >= 3, "retried: {:?}", failing.gets());
}

#[tokio::test]
async fn a_write_that_could_not_be_sent_is_unavailable_not_indeterminate() {
    let c = certs();
    let dead = nothing_listening();
    let meta = cluster(&c.tls, 1, &[1], &[&dead]);
    let client = data_client(&meta, &c.tls, Duration::from_millis(1500)).await;

    let r = client.put(b"k".to_vec(), b"v".to_vec()).await;

    assert!(matches!(r, Err(Error::Unavailable(_))), "{r:?}");
}

#[tokio::test]
async fn unavailable_and_behind_are_retried_and_other_refusals_are_not() {
    let c = certs();
    let node = Storage::start(&c.tls, |req, seen| match (req, seen) {
        (DataRequest::Get { .. }, 0) => refuse(DataError::Unavailable("reconciling".into())),
        (DataRequest::Get { .. }, 1) => refuse(DataError::Behind {
            shard: ShardId(1),
            epoch: 0,
        }),
        (DataRequest::Get { .. }, _) => Reply::Now(DataResponse::Value(None)),
        _ => refuse(DataError::PermissionDenied("clients only".into())),
    });
    let meta = cluster(&c.tls, 1, &[1], &[&node.addr]);
    let client = data_client(&meta, &c.tls, REQUEST).await;

    let r = client.get(b"k").await;
    let w = client.put(b"k".to_vec(), b"v".to_vec()).await;

    assert!(matches!(r, Ok(None)), "{r:?}");
    assert_eq!(node.gets().len(), 3);
    assert!(
        matches!(w, Err(Error::Data(DataError::PermissionDenied(_)))),
        "{w:?}"
    );
    assert_eq!(node.writes().len(), 1, "a refusal is final");
}

/// A node whose view of the metadata stalled (its watch cut off) answers `Behind` for as long
/// as it stays cut off, and meanwhile the metadata may fail its shards over to another
/// primary. The client's record is the newer one, but not necessarily the newest: it
/// re-reads it now and then (at most every 100 ms per shard) rather than wait out its
/// deadline on a node that cannot catch up.
#[tokio::test]
async fn a_node_that_stays_behind_does_not_hold_the_client_past_a_failover() {
    let c = certs();
    let stalled = Storage::start(&c.tls, |_, _| {
        refuse(DataError::Behind {
            shard: ShardId(1),
            epoch: 0,
        })
    });
    let new = Storage::start(&c.tls, |req, _| match req {
        DataRequest::Get { epoch: 2, .. } => Reply::Now(value(b"v", 7)),
        _ => refuse(DataError::Internal("not scripted".into())),
    });
    let meta = cluster(&c.tls, 1, &[1, 2], &[&stalled.addr, &new.addr]);
    let client = data_client(&meta, &c.tls, Duration::from_secs(60)).await;
    meta.with(|s| s.put_shard(1, &[2], 2));

    let r = client.get(b"k").await;

    assert!(
        matches!(&r, Ok(Some(v)) if v.value == b"v" && v.version == 7),
        "{r:?}"
    );
    assert!(
        !stalled.gets().is_empty(),
        "the stalled node was asked first"
    );
    assert_eq!(new.gets(), vec![2], "then the primary the re-read named");
}

/// A primary that cannot serve yet (reconciling, its lease not yet valid) refuses at an
/// unchanged epoch. The requests it turns away share their re-reads of the shard record:
/// each refusal drops only the record its own request was routed by, not one another
/// request has just re-read. Dropping any record of that epoch cost the metadata leader a
/// linearizable read per refusal.
#[tokio::test]
async fn refusals_at_one_epoch_share_their_re_reads_of_the_shard_record() {
    const REFUSALS: usize = 400;
    let c = certs();
    let node = Storage::start(&c.tls, |req, seen| match req {
        DataRequest::Get { .. } if seen < REFUSALS => {
            refuse(DataError::Unavailable("reconciling".into()))
        }
        DataRequest::Get { .. } => Reply::Now(DataResponse::Value(None)),
        _ => refuse(DataError::Internal("not scripted".into())),
    });
    let meta = cluster(&c.tls, 1, &[1], &[&node.addr]);
    let client = data_client(&meta, &c.tls, Duration::from_secs(60)).await;

    let gets: Vec<_> = (0..50)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.get(b"k").await })
        })
        .collect();
    for g in gets {
        let r = g.await.expect("get task");
        assert!(matches!(r, Ok(None)), "{r:?}");
    }

    let reads = meta.with(|s| s.shard_reads.get(&1).copied().unwrap_or(0));
    assert!(node.gets().len() > REFUSALS);
    assert!(
        reads * 8 <= REFUSALS,
        "{reads} reads of the shard record for {REFUSALS} refusals"
    );
}

#[tokio::test]
async fn oversized_keys_and_values_are_refused_before_anything_is_sent() {
    let c = certs();
    let node = Storage::start(&c.tls, |_, _| applied(1));
    let meta = cluster(&c.tls, 1, &[1], &[&node.addr]);
    let client = data_client(&meta, &c.tls, REQUEST).await;

    let big = client.put(b"k".to_vec(), vec![0u8; MAX_VALUE + 1]).await;
    let empty = client.get(b"").await;
    let bad_scan = client.scan_shard(ShardId(2), b"", None, 10).await;
    let no_limit = client.scan_prefix(b"", None, 0).await;
    let bad_op = client
        .write(WriteOp::Delete {
            key: vec![1u8; 2000],
        })
        .await;

    for r in [
        big.map(|_| ()),
        empty.map(|_| ()),
        bad_scan.map(|_| ()),
        no_limit.map(|_| ()),
        bad_op.map(|_| ()),
    ] {
        assert!(
            matches!(r, Err(Error::Data(DataError::InvalidArgument(_)))),
            "{r:?}"
        );
    }
    assert!(node.requests().is_empty());
}

/// A storage node serving every shard of a 4-shard layout from a map, as scans see it.
fn scan_node(tls: &TlsFiles, keys: Vec<Vec<u8>>, shards: u32) -> Storage {
    let data: BTreeMap<Vec<u8>, u64> = keys.into_iter().zip(1..).collect();
    Storage::start(tls, move |req, _| match req {
        DataRequest::Scan {
            shard,
            prefix,
            start_after,
            limit,
            ..
        } => {
            let mut items: Vec<(Vec<u8>, Versioned)> = data
                .iter()
                .filter(|(k, _)| shard_of(k, shards) == *shard && k.starts_with(prefix))
                .filter(|(k, _)| {
                    start_after
                        .as_ref()
                        .is_none_or(|a| k.as_slice() > a.as_slice())
                })
                .map(|(k, v)| {
                    let value = Versioned {
                        value: k.clone(),
                        version: *v,
                    };
                    (k.clone(), value)
                })
                .collect();
            let more = items.len() > *limit as usize;
            items.truncate(*limit as usize);
            Reply::Now(DataResponse::Page { items, more })
        }
        _ => refuse(DataError::Internal("not scripted".into())),
    })
}

#[tokio::test]
async fn a_prefix_scan_merges_every_shard_in_key_order_page_by_page() {
    let c = certs();
    let mut keys: Vec<Vec<u8>> = (0..60)
        .map(|i| format!("user:{i:03}").into_bytes())
        .collect();
    keys.extend((0..20).map(|i| format!("other:{i}").into_bytes()));
    let node = scan_node(&c.tls, keys.clone(), 4);
    let meta = cluster(&c.tls, 4, &[1], &[&node.addr]);
    let client = data_client(&meta, &c.tls, REQUEST).await;
    let mut expected: Vec<Vec<u8>> = keys
        .into_iter()
        .filter(|k| k.starts_with(b"user:"))
        .collect();
    expected.sort();

    // Stateless pages, resumed after the last key.
    let mut got = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = client
            .scan_prefix(b"user:", after.as_deref(), 7)
            .await
            .expect("page");
        assert!(page.items.len() <= 7);
        got.extend(page.items.iter().map(|(k, _)| k.clone()));
        after = page.items.last().map(|(k, _)| k.clone());
        if !page.more {
            break;
        }
    }
    assert_eq!(got, expected);

    // One scan, read a page at a time.
    let mut scan = client.scan(b"user:");
    let mut got = Vec::new();
    while !scan.is_done() {
        let page = scan.next_page(9).await.expect("page");
        got.extend(page.into_iter().map(|(k, _)| k));
    }
    assert_eq!(got, expected);
}

/// More shards than the page holds: each shard's share is one item, and a shard that runs
/// dry again within a page is asked for more each time. Every key comes once, in order.
#[tokio::test]
async fn a_prefix_scan_over_more_shards_than_its_page_still_merges_in_order() {
    let c = certs();
    let keys: Vec<Vec<u8>> = (0..200).map(|i| format!("k:{i:04}").into_bytes()).collect();
    let node = scan_node(&c.tls, keys.clone(), 64);
    let meta = cluster(&c.tls, 64, &[1], &[&node.addr]);
    let client = data_client(&meta, &c.tls, REQUEST).await;
    let mut expected = keys;
    expected.sort();
    for limit in [1u32, 7, 50] {
        let mut scan = client.scan(b"k:");
        let mut got = Vec::new();
        while !scan.is_done() {
            let page = scan.next_page(limit).await.expect("page");
            assert!(page.len() <= limit as usize);
            got.extend(page.into_iter().map(|(k, _)| k));
        }
        assert_eq!(got, expected, "limit {limit}");
    }
}
