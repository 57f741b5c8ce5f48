//! Pins the parts of the data-plane vocabulary that are contracts rather than types: the
//! bytes a key or value encodes to, the key-to-shard hash, the size limits and the item CRC.
//!
//! Kept apart from `data.rs` so that file reads as the message catalogue it is.

use super::*;

#[test]
fn byte_strings_keep_the_encoding_of_a_sequence_of_bytes() {
    // `serde_bytes` only changes how values are decoded (one copy instead of one call per
    // byte): the bytes on the wire and on disk are those a plain `Vec<u8>` gives, so data
    // written before it reads the same.
    #[derive(Serialize)]
    struct Plain {
        value: Vec<u8>,
        version: u64,
    }
    #[derive(Serialize)]
    enum PlainOp {
        #[allow(dead_code)]
        Put { key: Vec<u8>, value: Vec<u8> },
        #[allow(dead_code)]
        Delete { key: Vec<u8> },
        Cas {
            key: Vec<u8>,
            expected: Option<u64>,
            value: Option<Vec<u8>>,
        },
    }
    let value: Vec<u8> = (0..=255).chain(0..300u32).map(|b| b as u8).collect();
    let v = Versioned {
        value: value.clone(),
        version: 7,
    };
    let bytes = postcard::to_allocvec(&v).unwrap();
    let plain = Plain {
        value: value.clone(),
        version: 7,
    };
    assert_eq!(bytes, postcard::to_allocvec(&plain).unwrap());
    assert_eq!(postcard::from_bytes::<Versioned>(&bytes).unwrap(), v);
    let op = WriteOp::Cas {
        key: b"k".to_vec(),
        expected: Some(3),
        value: Some(value.clone()),
    };
    let plain_op = PlainOp::Cas {
        key: b"k".to_vec(),
        expected: Some(3),
        value: Some(value),
    };
    let bytes = postcard::to_allocvec(&op).unwrap();
    assert_eq!(bytes, postcard::to_allocvec(&plain_op).unwrap());
    assert_eq!(postcard::from_bytes::<WriteOp>(&bytes).unwrap(), op);
}

#[test]
fn keys_spread_over_shards_and_the_hash_is_fixed() {
    // The hash is a wire contract: these values must never change.
    assert_eq!(shard_of(b"a", 256), shard_of(b"a", 256));
    let fixed: Vec<u64> = [&b"a"[..], b"user:1", b"\x00\xff"]
        .iter()
        .map(|k| shard_of(k, 1024).0)
        .collect();
    assert_eq!(fixed, expected_fixed());
    let mut counts = vec![0u32; 16];
    for i in 0..16_000u32 {
        let s = shard_of(&i.to_be_bytes(), 16);
        assert!((1..=16).contains(&s.0));
        counts[(s.0 - 1) as usize] += 1;
    }
    assert!(counts.iter().all(|c| (800..1200).contains(c)), "{counts:?}");
}

/// xxh3_64(key) % 1024 + 1, computed independently (Python's `xxhash` package) and
/// pinned, so an accidental change of hash shows up here.
fn expected_fixed() -> Vec<u64> {
    vec![544, 258, 1012]
}

#[test]
fn sizes_are_checked() {
    assert!(check_key(b"").is_err());
    assert!(check_key(&[0u8; MAX_KEY + 1]).is_err());
    assert!(WriteOp::Put {
        key: b"k".to_vec(),
        value: vec![0; MAX_VALUE + 1]
    }
    .validate()
    .is_err());
    assert!(WriteOp::Cas {
        key: b"k".to_vec(),
        expected: None,
        value: None
    }
    .validate()
    .is_ok());
    assert!(DataCluster { shards: 0, rf: 3 }.validate().is_err());
    assert!(DataCluster { shards: 64, rf: 6 }.validate().is_err());
    assert!(DataCluster { shards: 64, rf: 3 }.validate().is_ok());
}

#[test]
fn crc_of_items_depends_on_every_byte_and_the_order() {
    let a = Versioned {
        value: b"x".to_vec(),
        version: 1,
    };
    let b = Versioned {
        value: b"y".to_vec(),
        version: 2,
    };
    let crc = |items: &[(&[u8], &Versioned)]| {
        let mut d = crc64fast::Digest::new();
        crc_items(&mut d, items.iter().copied());
        d.sum64()
    };
    let base = crc(&[(b"k1", &a), (b"k2", &b)]);
    assert_ne!(base, crc(&[(b"k2", &b), (b"k1", &a)]));
    assert_ne!(base, crc(&[(b"k1", &b), (b"k2", &a)]));
    // Chunks in order give the whole's digest.
    let mut d = crc64fast::Digest::new();
    crc_items(&mut d, [(&b"k1"[..], &a)]);
    crc_items(&mut d, [(&b"k2"[..], &b)]);
    assert_eq!(d.sum64(), base);
}

#[test]
fn a_requests_chunk_detects_any_changed_field() {
    let item = |client: u128, seq: u64, outcome| CopiedRequest {
        id: RequestId { client, seq },
        seq: 40 + seq,
        outcome,
        at_ms: 1_000,
        op_digest: 0xfeed ^ seq,
    };
    let chunk = RequestsChunk::new(vec![
        item(7, 1, WriteOutcome::Applied { version: 41 }),
        item(7, 2, WriteOutcome::Conflict { current: None }),
        item(9, 1, WriteOutcome::Conflict { current: Some(0) }),
    ]);
    assert!(chunk.intact());
    let changes: [fn(&mut CopiedRequest); 6] = [
        |r| r.id.client ^= 1 << 100,
        |r| r.op_digest ^= 1 << 63,
        |r| r.seq += 1,
        |r| r.at_ms += 1,
        |r| r.outcome = WriteOutcome::Conflict { current: Some(0) },
        |r| r.outcome = WriteOutcome::Applied { version: 0 },
    ];
    for (i, change) in changes.iter().enumerate() {
        for j in 0..chunk.items.len() {
            let mut bad = chunk.clone();
            change(&mut bad.items[j]);
            if bad.items[j] != chunk.items[j] {
                assert!(!bad.intact(), "change {i} of item {j} went unnoticed");
            }
        }
    }
    // Absent and a current version of 0 are different outcomes.
    assert_ne!(
        crc_requests(&[item(9, 1, WriteOutcome::Conflict { current: None })]),
        crc_requests(&[item(9, 1, WriteOutcome::Conflict { current: Some(0) })])
    );
}

#[test]
fn write_digests_tell_every_different_write_apart() {
    let (k, v) = (b"k".to_vec(), b"v".to_vec());
    let ops = [
        WriteOp::Put {
            key: k.clone(),
            value: v.clone(),
        },
        WriteOp::Put {
            key: k.clone(),
            value: b"w".to_vec(),
        },
        WriteOp::Put {
            key: b"kv".to_vec(),
            value: vec![],
        },
        WriteOp::Put {
            key: k.clone(),
            value: vec![],
        },
        WriteOp::Delete { key: k.clone() },
        WriteOp::Cas {
            key: k.clone(),
            expected: None,
            value: Some(v.clone()),
        },
        WriteOp::Cas {
            key: k.clone(),
            expected: Some(0),
            value: Some(v.clone()),
        },
        WriteOp::Cas {
            key: k.clone(),
            expected: Some(0),
            value: None,
        },
        WriteOp::Cas {
            key: k.clone(),
            expected: Some(0),
            value: Some(vec![]),
        },
    ];
    for (i, a) in ops.iter().enumerate() {
        assert_eq!(a.digest(), a.clone().digest(), "op {i} is not stable");
        for (j, b) in ops.iter().enumerate().skip(i + 1) {
            assert_ne!(a.digest(), b.digest(), "ops {i} and {j} collide");
        }
    }
}
