//! A raw QUIC bulk copy: the ceiling a shard copy between two storage nodes is measured
//! against.
//!
//! Two endpoints on loopback, built by `augur-transport` from two storage nodes' certificates
//! (so the same mutual TLS, the same stream and connection windows and the same idle
//! timeout as the storage nodes use), each on a runtime and thread of its own as two
//! processes would be. The sender opens `streams` bidirectional streams on one connection and
//! writes its share of `bytes` in `chunk`-byte writes; the receiver reads each stream to its
//! end and answers with the byte count it got. Nothing else happens to the bytes: no RocksDB,
//! no CRC, no framing, no throttle. That is the point: the ratio of a real copy's rate to
//! this one is what the copy machinery costs on top of the network.

use anyhow::{bail, Context};
use augur_transport::{client_config, server_config, TlsFiles, STORAGE_SERVER_NAME};
use serde::Serialize;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// What the raw copy measured.
#[derive(Debug, Clone, Serialize)]
pub struct RawCopy {
    /// Bytes copied.
    pub bytes: u64,
    /// Streams used at once.
    pub streams: usize,
    /// Seconds from the first stream opened to the last byte acknowledged.
    pub seconds: f64,
    /// MB/s (10^6 bytes).
    pub mb_per_sec: f64,
}

/// The storage nodes' idle timeout (see `storage::StorageNode::start`).
const IDLE: Duration = Duration::from_secs(10);

/// Copies `bytes` from an endpoint holding `sender` to one holding `receiver`, over
/// `streams` streams in `chunk`-byte writes, and times it.
pub fn raw_copy(
    receiver: &TlsFiles,
    sender: &TlsFiles,
    bytes: u64,
    streams: usize,
    chunk: usize,
) -> anyhow::Result<RawCopy> {
    if streams == 0 || chunk == 0 {
        bail!("a raw copy needs at least one stream and a positive chunk size");
    }
    let server_cfg = server_config(receiver, IDLE).context("receiver TLS")?;
    let client_cfg = client_config(sender, IDLE).context("sender TLS")?;
    let (addr_tx, addr_rx) = std::sync::mpsc::channel::<anyhow::Result<SocketAddr>>();
    let receiver_thread = std::thread::Builder::new()
        .name("raw-copy-receiver".into())
        .spawn(move || -> anyhow::Result<u64> {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(receive(server_cfg, streams, addr_tx))
        })?;
    let addr = addr_rx
        .recv()
        .context("the receiver thread ended before binding")??;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let sent = rt.block_on(send(client_cfg, addr, bytes, streams, chunk));
    let received = receiver_thread
        .join()
        .map_err(|_| anyhow::anyhow!("the receiver thread panicked"))?;
    let (seconds, acknowledged) = sent?;
    let received = received?;
    if received != bytes || acknowledged != bytes {
        bail!("raw copy: sent {bytes} bytes, receiver counted {received}, acknowledged {acknowledged}");
    }
    Ok(RawCopy {
        bytes,
        streams,
        seconds,
        mb_per_sec: bytes as f64 / 1e6 / seconds,
    })
}

/// The receiving endpoint: accepts one connection and `streams` streams, reads each to its
/// end and answers with its byte count; returns the total.
async fn receive(
    cfg: quinn::ServerConfig,
    streams: usize,
    addr_tx: std::sync::mpsc::Sender<anyhow::Result<SocketAddr>>,
) -> anyhow::Result<u64> {
    let endpoint = match quinn::Endpoint::server(cfg, "127.0.0.1:0".parse()?) {
        Ok(e) => e,
        Err(e) => {
            let _ = addr_tx.send(Err(anyhow::anyhow!("binding the receiver: {e}")));
            return Err(e.into());
        }
    };
    let _ = addr_tx.send(Ok(endpoint.local_addr()?));
    let conn = endpoint
        .accept()
        .await
        .context("no connection")?
        .await
        .context("handshake")?;
    let mut tasks = Vec::new();
    for _ in 0..streams {
        let (mut send, mut recv) = conn.accept_bi().await.context("accepting a stream")?;
        tasks.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 1 << 20];
            let mut n = 0u64;
            while let Some(got) = recv.read(&mut buf).await? {
                n += got as u64;
            }
            send.write_all(&n.to_be_bytes()).await?;
            send.finish()?;
            let _ = send.stopped().await;
            anyhow::Ok(n)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    conn.closed().await;
    endpoint.wait_idle().await;
    Ok(total)
}

/// The sending endpoint: returns the seconds taken and the bytes the receiver acknowledged.
async fn send(
    cfg: quinn::ClientConfig,
    addr: SocketAddr,
    bytes: u64,
    streams: usize,
    chunk: usize,
) -> anyhow::Result<(f64, u64)> {
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    endpoint.set_default_client_config(cfg);
    let conn = endpoint
        .connect(addr, STORAGE_SERVER_NAME)?
        .await
        .context("connecting to the receiver")?;
    let data = std::sync::Arc::new(vec![0x5au8; chunk]);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..streams as u64 {
        let share = bytes / streams as u64 + u64::from(i < bytes % streams as u64);
        let (mut send, mut recv) = conn.open_bi().await?;
        let data = data.clone();
        tasks.push(tokio::spawn(async move {
            let mut left = share;
            while left > 0 {
                let n = left.min(data.len() as u64) as usize;
                send.write_all(&data[..n]).await?;
                left -= n as u64;
            }
            send.finish()?;
            let mut ack = [0u8; 8];
            recv.read_exact(&mut ack).await?;
            anyhow::Ok(u64::from_be_bytes(ack))
        }));
    }
    let mut acknowledged = 0;
    for t in tasks {
        acknowledged += t.await??;
    }
    let seconds = started.elapsed().as_secs_f64();
    conn.close(0u32.into(), b"done");
    endpoint.wait_idle().await;
    Ok((seconds, acknowledged))
}

/// A raw copy of `bytes` between two storage nodes of the local cluster in `dir` other than
/// node `excluded` (the one a benchmark killed or drained), with their certificates.
pub(crate) async fn raw_copy_between_others(
    dir: &std::path::Path,
    excluded: u64,
    bytes: u64,
    streams: usize,
) -> anyhow::Result<RawCopy> {
    let others: Vec<u64> = crate::local::storage::storage_nodes(dir)?
        .into_iter()
        .filter(|id| *id != excluded)
        .take(2)
        .collect();
    let [rx, tx] = others[..] else {
        bail!("a raw copy needs two storage certificates besides node {excluded}'s");
    };
    let tls = |id: u64| TlsFiles {
        ca: dir.join("certs/ca.pem"),
        cert: dir.join(format!("certs/storage-{id}.pem")),
        key: dir.join(format!("certs/storage-{id}.key")),
    };
    let (rx_tls, tx_tls) = (tls(rx), tls(tx));
    tokio::task::spawn_blocking(move || raw_copy(&rx_tls, &tx_tls, bytes, streams, 1 << 20)).await?
}
