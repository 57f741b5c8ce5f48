//! Length-prefixed framing: a 4-byte big-endian body length, then a postcard body.
//!
//! The length is checked against a limit before any body byte is buffered, so a peer cannot
//! make a node allocate more than the limit by lying about a length.

use serde::{de::DeserializeOwned, Serialize};

/// The frame limit used unless configured otherwise: large enough for a snapshot chunk or a
/// full list page, small enough that a hostile length costs nothing.
pub const MAX_FRAME_DEFAULT: usize = 16 * 1024 * 1024;

/// Bytes of the length prefix.
pub const HEADER_LEN: usize = 4;

/// Room left in a frame for what wraps its payload (message tags, envelopes, record headers).
/// Byte budgets for pages and batches are the frame limit minus this.
pub const FRAME_SLACK: usize = 64 * 1024;

/// The smallest frame limit a node may be configured with: one maximal transaction (a log
/// entry, a watch event) plus slack must fit in one frame.
pub const MIN_FRAME: usize = crate::txn::MAX_TXN_BYTES + FRAME_SLACK;

/// The payload bytes a frame of limit `max_frame` can carry, for paging and batching.
pub fn payload_budget(max_frame: usize) -> usize {
    max_frame.saturating_sub(FRAME_SLACK)
}

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The announced or encoded body exceeds the limit.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Body length.
        len: usize,
        /// Limit in force.
        max: usize,
    },
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame ({got} of {want} bytes)")]
    Truncated {
        /// Bytes received.
        got: usize,
        /// Bytes expected.
        want: usize,
    },
    /// The body is not a valid message (unknown variant, bad varint, trailing bytes...).
    #[error("malformed frame body: {0}")]
    Malformed(#[from] postcard::Error),
    /// The transport failed.
    #[error("transport error: {0}")]
    Io(#[from] std::io::Error),
}

/// Encodes a message as one frame.
pub fn encode<T: Serialize>(msg: &T, max: usize) -> Result<Vec<u8>, FrameError> {
    let mut out = postcard::to_extend(msg, vec![0u8; HEADER_LEN])?;
    let len = out.len() - HEADER_LEN;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    out[..HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(out)
}

/// Decodes a frame body (without its length prefix). Trailing bytes are an error: a body
/// that decodes with bytes to spare was not written by us.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    let (msg, rest) = postcard::take_from_bytes(body)?;
    if !rest.is_empty() {
        return Err(FrameError::Malformed(
            postcard::Error::DeserializeBadEncoding,
        ));
    }
    Ok(msg)
}

/// Decodes one complete frame from the front of `buf`; returns the message and the bytes
/// consumed, or `Ok(None)` if `buf` does not hold a whole frame yet.
pub fn decode<T: DeserializeOwned>(
    buf: &[u8],
    max: usize,
) -> Result<Option<(T, usize)>, FrameError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    let end = HEADER_LEN + len;
    if buf.len() < end {
        return Ok(None);
    }
    Ok(Some((decode_body(&buf[HEADER_LEN..end])?, end)))
}

#[cfg(feature = "io")]
mod io {
    use super::*;
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

    /// Writes one frame.
    pub async fn write_frame<W, T>(w: &mut W, msg: &T, max: usize) -> Result<(), FrameError>
    where
        W: AsyncWrite + Unpin,
        T: Serialize,
    {
        let bytes = encode(msg, max)?;
        w.write_all(&bytes).await?;
        Ok(())
    }

    /// Reads frames from a stream, and may be cancelled (a `tokio::select!` branch that
    /// lost) at any await without losing a byte: what has arrived of a frame waits in the
    /// reader, not in the future.
    ///
    /// [`read_frame`] keeps a partly read frame in its future, so dropping it mid-frame
    /// loses those bytes and the stream's framing with them. A replication stream read its
    /// frames in a `select!` beside the acknowledgements it sends: a multi-packet frame of
    /// large values, cut off by an acknowledgement, turned the rest of the stream into
    /// garbage, its follower stopped acknowledging, and the primary had it removed from the
    /// shard (seen in `augur bench migrate`: a shard down to one replica for minutes).
    pub struct FrameReader {
        buf: Vec<u8>,
        max: usize,
    }

    /// A reader's buffer is given back when it is empty and larger than this.
    const KEEP_CAPACITY: usize = 1 << 20;

    impl FrameReader {
        /// A reader of frames of at most `max` body bytes.
        pub fn new(max: usize) -> FrameReader {
            FrameReader {
                buf: Vec::new(),
                max,
            }
        }

        /// The next frame; `Ok(None)` when the stream ended cleanly between frames.
        /// Cancel-safe if `r`'s reads are (tokio's `read_buf` then hands bytes over only
        /// when it completes, as quinn's streams do).
        pub async fn next<R, T>(&mut self, r: &mut R) -> Result<Option<T>, FrameError>
        where
            R: AsyncRead + Unpin,
            T: DeserializeOwned,
        {
            loop {
                if let Some((msg, used)) = decode(&self.buf, self.max)? {
                    self.buf.drain(..used);
                    if self.buf.is_empty() && self.buf.capacity() > KEEP_CAPACITY {
                        self.buf = Vec::new();
                    }
                    return Ok(Some(msg));
                }
                // Room for the rest of this frame only: the length is checked (by `decode`)
                // before more than a header's worth is asked for.
                let want = if self.buf.len() < HEADER_LEN {
                    HEADER_LEN
                } else {
                    let len =
                        u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
                    HEADER_LEN + len as usize
                };
                self.buf.reserve(want - self.buf.len());
                let n = r.read_buf(&mut self.buf).await?;
                if n == 0 {
                    if self.buf.is_empty() {
                        return Ok(None);
                    }
                    return Err(FrameError::Truncated {
                        got: self.buf.len(),
                        want,
                    });
                }
            }
        }
    }

    /// Reads one frame. `Ok(None)` means the stream ended cleanly between frames. Not
    /// cancel-safe: inside `select!`, use a [`FrameReader`].
    pub async fn read_frame<R, T>(r: &mut R, max: usize) -> Result<Option<T>, FrameError>
    where
        R: AsyncRead + Unpin,
        T: DeserializeOwned,
    {
        match read_len(r, max).await? {
            Some(len) => read_body(r, len).await.map(Some),
            None => Ok(None),
        }
    }

    /// Reads a frame's length prefix and checks it against `max`; `Ok(None)` means the
    /// stream ended cleanly. Split from [`read_body`] so that a server can hold the frame's
    /// bytes against a budget before it buffers any of them.
    pub async fn read_len<R>(r: &mut R, max: usize) -> Result<Option<usize>, FrameError>
    where
        R: AsyncRead + Unpin,
    {
        let mut header = [0u8; HEADER_LEN];
        let mut got = 0;
        while got < HEADER_LEN {
            let n = r.read(&mut header[got..]).await?;
            if n == 0 {
                if got == 0 {
                    return Ok(None);
                }
                return Err(FrameError::Truncated {
                    got,
                    want: HEADER_LEN,
                });
            }
            got += n;
        }
        let len = u32::from_be_bytes(header) as usize;
        if len > max {
            return Err(FrameError::TooLarge { len, max });
        }
        Ok(Some(len))
    }

    /// Reads and decodes the `len` body bytes announced by [`read_len`].
    pub async fn read_body<R, T>(r: &mut R, len: usize) -> Result<T, FrameError>
    where
        R: AsyncRead + Unpin,
        T: DeserializeOwned,
    {
        let mut body = vec![0u8; len];
        let mut got = 0;
        while got < len {
            let n = r.read(&mut body[got..]).await?;
            if n == 0 {
                return Err(FrameError::Truncated { got, want: len });
            }
            got += n;
        }
        decode_body(&body)
    }
}

#[cfg(feature = "io")]
pub use io::{read_body, read_frame, read_len, write_frame, FrameReader};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Request, Response};
    use proptest::prelude::*;

    /// Frames written a few bytes at a time, read by a reader whose every other poll is cut
    /// off (as a `select!` branch that lost): every frame arrives whole and in order; then an
    /// end inside a frame and a lying length are typed errors.
    #[cfg(feature = "io")]
    #[tokio::test]
    async fn a_frame_reader_cancelled_mid_frame_loses_nothing() {
        use tokio::io::AsyncWriteExt;
        let msgs: Vec<Vec<u8>> = (0..40u8).map(|i| vec![i; 10 + 97 * i as usize]).collect();
        let (mut w, mut r) = tokio::io::duplex(64);
        let sent = msgs.clone();
        let writer = tokio::spawn(async move {
            for m in &sent {
                for piece in encode(m, 1 << 20).unwrap().chunks(7) {
                    w.write_all(piece).await.unwrap();
                    tokio::task::yield_now().await;
                }
            }
            // A frame that announces 100 bytes and stops after 3.
            w.write_all(&[0, 0, 0, 100, 1, 2, 3]).await.unwrap();
        });
        let mut reader = FrameReader::new(1 << 20);
        let mut got = Vec::new();
        let mut cut = 0;
        while got.len() < msgs.len() {
            tokio::select! {
                biased;
                m = reader.next::<_, Vec<u8>>(&mut r) => got.push(m.unwrap().unwrap()),
                _ = tokio::task::yield_now() => cut += 1,
            }
        }
        assert_eq!(got, msgs);
        assert!(
            cut > 100,
            "the reader was cut off mid-frame only {cut} times"
        );
        writer.await.unwrap();
        assert!(matches!(
            reader.next::<_, Vec<u8>>(&mut r).await,
            Err(FrameError::Truncated { got: 7, want: 104 })
        ));
        let (mut w, mut r) = tokio::io::duplex(64);
        w.write_all(&[0xff, 0xff, 0xff, 0xff, 0]).await.unwrap();
        assert!(matches!(
            FrameReader::new(1024).next::<_, Vec<u8>>(&mut r).await,
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn roundtrip() {
        let req = Request::Status;
        let bytes = encode(&req, MAX_FRAME_DEFAULT).unwrap();
        let (back, used): (Request, usize) = decode(&bytes, MAX_FRAME_DEFAULT).unwrap().unwrap();
        assert_eq!(back, req);
        assert_eq!(used, bytes.len());
    }

    #[test]
    fn oversized_length_is_refused_before_buffering() {
        let mut bytes = vec![0xff, 0xff, 0xff, 0xff];
        bytes.extend_from_slice(&[0u8; 8]);
        assert!(matches!(
            decode::<Request>(&bytes, 1024),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn partial_frame_waits_and_trailing_bytes_fail() {
        let bytes = encode(&Request::Members, 1024).unwrap();
        assert!(decode::<Request>(&bytes[..bytes.len() - 1], 1024)
            .unwrap()
            .is_none());
        let mut padded = bytes.clone();
        padded.push(0);
        padded[3] += 1;
        assert!(matches!(
            decode::<Request>(&padded, 1024),
            Err(FrameError::Malformed(_))
        ));
    }

    #[test]
    fn unknown_variant_is_malformed() {
        // Variant index 200 does not exist.
        let body = [200u8, 1];
        assert!(matches!(
            decode_body::<Request>(&body),
            Err(FrameError::Malformed(_))
        ));
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<Request>(&bytes, 4096);
            let _ = decode::<Response>(&bytes, 4096);
            let _ = decode_body::<Request>(&bytes);
            let _ = decode_body::<Response>(&bytes);
        }

        #[test]
        fn truncations_of_valid_frames_never_panic(cut in 0usize..64) {
            let msg = Response::Error(crate::wire::ApiError::InvalidArgument("x".repeat(40)));
            let bytes = encode(&msg, 4096).unwrap();
            let cut = cut.min(bytes.len());
            let r = decode::<Response>(&bytes[..cut], 4096);
            prop_assert!(matches!(r, Ok(None)) || cut == bytes.len());
        }
    }
}
