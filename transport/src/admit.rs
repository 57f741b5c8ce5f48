//! Reading a request frame within a connection's byte budget.
//!
//! A server reads each stream's request whole before it can act on it, and a certified peer
//! may open thousands of streams per connection: with one frame limit for everyone, a client
//! could make a node buffer gigabytes (4096 streams of 16 MiB) before a single role check.
//! So each connection has a budget of request bytes being read or decoded at once: a frame's
//! length is read first and its bytes are reserved before any of them are buffered. A frame
//! over budget is refused at once as busy (its stream stopped, so QUIC drops its bytes), not
//! kept waiting: a waiting stream's unread bytes would sit in the connection's flow-control
//! window, and enough of them would leave the streams holding the budget unable to finish,
//! wedging the connection. Callers also pass a per-role frame limit, so a peer whose
//! requests are small cannot announce large ones.

use augur_proto::frame::{read_body, read_len, FrameError};
use serde::de::DeserializeOwned;
use std::sync::Arc;
use tokio::io::AsyncRead;
use tokio::sync::Semaphore;

/// Why a request was not admitted.
#[derive(Debug, thiserror::Error)]
pub enum AdmitError {
    /// The frame could not be read (too large for the caller's role, malformed, cut off).
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The connection already has as many request bytes in flight as it may: retry later.
    /// Nothing of the request was acted on.
    #[error("busy: a request of {len} bytes with {free} bytes of this connection's budget free")]
    Busy {
        /// The frame's announced length.
        len: usize,
        /// Bytes of the budget free when it arrived.
        free: usize,
    },
}

/// The least request budget of a connection: several maximal client requests at once.
pub const MIN_CONNECTION_BUDGET: usize = 64 * 1024 * 1024;

/// One connection's budget of request bytes in flight (see the module documentation).
#[derive(Debug, Clone)]
pub struct RequestBudget {
    bytes: Arc<Semaphore>,
    total: usize,
}

impl RequestBudget {
    /// A budget that admits at least two frames of `max_frame` at once.
    pub fn for_frames(max_frame: usize) -> RequestBudget {
        let total = MIN_CONNECTION_BUDGET
            .max(max_frame.saturating_mul(2))
            .min(Semaphore::MAX_PERMITS);
        RequestBudget {
            bytes: Arc::new(Semaphore::new(total)),
            total,
        }
    }

    /// Reads one request frame of at most `max` bytes, holding its bytes against the budget
    /// while they are read and decoded. `Ok(None)`: the stream ended before a frame began.
    pub async fn read<R, T>(&self, r: &mut R, max: usize) -> Result<Option<T>, AdmitError>
    where
        R: AsyncRead + Unpin,
        T: DeserializeOwned,
    {
        let Some(len) = read_len(r, max.min(self.total)).await? else {
            return Ok(None);
        };
        // `len <= total <= u32::MAX` by construction.
        let want = u32::try_from(len).unwrap_or(u32::MAX);
        let Ok(_held) = self.bytes.try_acquire_many(want) else {
            return Err(AdmitError::Busy {
                len,
                free: self.bytes.available_permits(),
            });
        };
        Ok(Some(read_body(r, len).await?))
    }

    /// Bytes currently free, for tests and metrics.
    pub fn available(&self) -> usize {
        self.bytes.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use augur_proto::frame::encode;
    use tokio::io::AsyncWriteExt;

    /// A frame over the caller's limit is refused from its length alone, before any body byte
    /// is read; frames within it are read whole and give their bytes back.
    #[tokio::test]
    async fn frames_are_admitted_by_length_and_release_their_bytes() {
        let budget = RequestBudget::for_frames(1024);
        let (mut w, mut r) = tokio::io::duplex(1 << 16);
        let small = encode(&vec![7u8; 100], 1 << 20).unwrap();
        w.write_all(&small).await.unwrap();
        let got: Option<Vec<u8>> = budget.read(&mut r, 1024).await.unwrap();
        assert_eq!(got, Some(vec![7u8; 100]));
        assert_eq!(budget.available(), MIN_CONNECTION_BUDGET);

        // Only the header of the large frame is written: the refusal cannot have waited for
        // its body.
        let large = encode(&vec![1u8; 4000], 1 << 20).unwrap();
        w.write_all(&large[..4]).await.unwrap();
        let err = budget.read::<_, Vec<u8>>(&mut r, 1024).await.unwrap_err();
        assert!(
            matches!(
                err,
                AdmitError::Frame(FrameError::TooLarge { max: 1024, .. })
            ),
            "{err}"
        );
        assert_eq!(budget.available(), MIN_CONNECTION_BUDGET);
    }

    /// While other frames' bytes are held, a frame that would exceed the budget is refused
    /// as busy at once (a waiting stream would hold connection credit), and admitted again
    /// once they are released.
    #[tokio::test]
    async fn a_frame_over_budget_is_refused_as_busy() {
        let budget = RequestBudget::for_frames(1024);
        let total = budget.available();
        let hold = budget
            .bytes
            .clone()
            .acquire_many_owned((total - 10) as u32)
            .await
            .unwrap();
        let (mut w, mut r) = tokio::io::duplex(1 << 16);
        let frame = encode(&vec![3u8; 100], 1 << 20).unwrap();
        w.write_all(&frame).await.unwrap();
        let err = budget.read::<_, Vec<u8>>(&mut r, 1024).await.unwrap_err();
        assert!(matches!(err, AdmitError::Busy { free: 10, .. }), "{err}");
        drop(hold);
        // A server drops the refused stream, body unread; the next request comes on another.
        let (mut w2, mut r2) = tokio::io::duplex(1 << 16);
        w2.write_all(&frame).await.unwrap();
        let got = budget.read::<_, Vec<u8>>(&mut r2, 1024).await.unwrap();
        assert_eq!(got, Some(vec![3u8; 100]));
        assert_eq!(budget.available(), total);
    }
}
