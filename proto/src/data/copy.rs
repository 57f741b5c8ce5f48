//! Shard copies on the wire: the frames a copy source streams to a learner, and the
//! canonical CRC-64 encodings both ends (and the whole-shard checksums) compute, so the same
//! bytes give the same digest on every node.

use super::{DataError, RequestId, Versioned, WriteOutcome};
use serde::{Deserialize, Serialize};

/// One piece of a shard copy: items in key order, with their CRC-64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyChunk {
    /// Keys and values, in key order, after the previous chunk's last key.
    pub items: Vec<(Vec<u8>, Versioned)>,
    /// CRC-64/XZ of the chunk's items as [`crc_items`] encodes them.
    pub crc64: u64,
    /// The applied sequence the copy was read at (the same in every chunk of one copy).
    pub at_seq: u64,
    /// Whether this is the last chunk.
    pub done: bool,
}

/// The frames of a copy stream, source to learner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CopyFrame {
    /// The next chunk.
    Chunk(CopyChunk),
    /// The source refuses or failed; the stream ends.
    Refused(DataError),
    /// Request ids the shard applied, read from the same snapshot as the chunks that
    /// follow: sent before them.
    Requests(RequestsChunk),
}

/// A request id a shard applied, and what its write did. A learner takes these with the
/// shard's data: once it is a replica it may become primary, and a client resending a write
/// whose answer it lost must find the write applied rather than apply it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopiedRequest {
    /// The request id.
    pub id: RequestId,
    /// The sequence of the entry that carried it.
    pub seq: u64,
    /// What the client was told.
    pub outcome: WriteOutcome,
    /// The writing primary's wall clock, ms (the id's age, for pruning).
    pub at_ms: u64,
    /// [`crate::data::WriteOp::digest`] of the write: a resend must be the same write.
    pub op_digest: u64,
}

/// Some of a copy's request ids, with the CRC-64 of their canonical encoding
/// ([`crc_requests`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestsChunk {
    /// The ids.
    pub items: Vec<CopiedRequest>,
    /// [`crc_requests`] of `items`.
    pub crc64: u64,
}

impl RequestsChunk {
    /// A chunk of `items` with their checksum.
    pub fn new(items: Vec<CopiedRequest>) -> RequestsChunk {
        let crc64 = crc_requests(&items);
        RequestsChunk { items, crc64 }
    }

    /// Whether the items still match their checksum.
    pub fn intact(&self) -> bool {
        crc_requests(&self.items) == self.crc64
    }
}

/// CRC-64 of request ids: for each, client (u128 BE), write number, entry sequence, the
/// outcome (tag 0 and version, or tag 1, a presence byte and the current version), the
/// time and the write's digest, integers big-endian.
pub fn crc_requests(items: &[CopiedRequest]) -> u64 {
    let mut d = crc64fast::Digest::new();
    for r in items {
        d.write(&r.id.client.to_be_bytes());
        d.write(&r.id.seq.to_be_bytes());
        d.write(&r.seq.to_be_bytes());
        match r.outcome {
            WriteOutcome::Applied { version } => {
                d.write(&[0]);
                d.write(&version.to_be_bytes());
            }
            WriteOutcome::Conflict { current } => {
                d.write(&[1, u8::from(current.is_some())]);
                d.write(&current.unwrap_or(0).to_be_bytes());
            }
        }
        d.write(&r.at_ms.to_be_bytes());
        d.write(&r.op_digest.to_be_bytes());
    }
    d.sum64()
}

/// Feeds items into a CRC-64 in the canonical encoding used for chunks and whole-shard
/// checksums: for each item, the key length (u32 BE), key, version (u64 BE), value length
/// (u32 BE), value. The same bytes in the same order give the same digest on every node.
pub fn crc_items<'a>(
    digest: &mut crc64fast::Digest,
    items: impl IntoIterator<Item = (&'a [u8], &'a Versioned)>,
) {
    for (key, v) in items {
        crc_item(digest, key, v.version, &v.value);
    }
}

/// Feeds one item into a CRC-64 exactly as [`crc_items`] does, from borrowed parts.
pub fn crc_item(digest: &mut crc64fast::Digest, key: &[u8], version: u64, value: &[u8]) {
    digest.write(&(key.len() as u32).to_be_bytes());
    digest.write(key);
    digest.write(&version.to_be_bytes());
    digest.write(&(value.len() as u32).to_be_bytes());
    digest.write(value);
}
