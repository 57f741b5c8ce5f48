//! A raw QUIC bulk copy: the ceiling a shard copy between two storage nodes is measured
//! against.
//!
//! Two endpoints on loopback, built by `augur-transport` from two storage nodes' certificates
//! (so the same mutual TLS, the same stream and connection windows, the same UDP buffers and
//! the same idle timeout as the storage nodes use), each on a runtime and thread of its own
//! as two processes would be. The sender opens `streams` bidirectional streams on one
//! connection and writes its share of `bytes` in `chunk`-byte writes; the receiver reads each
//! stream to its end and answers with the byte count it got. Nothing else happens to the bytes: no RocksDB,
//! no CRC, no framing, no throttle. That is the point: the ratio of a real copy's rate to
//! this one is what the copy machinery costs on top of the network.
//!
//! A copy that lands must also reach the disk: a learner's data is durable before the move
//! commits. So the same copy runs a second time with a `sink` directory on the storage
//! nodes' filesystem: the receiver writes each stream's bytes to a file of its own, 1 MiB
//! per write call, and syncs it before answering. On a machine whose
//! disk is slower than its loopback, that is the ceiling a move can reach; the first figure
//! shows how far apart the two ceilings are.

use anyhow::{bail, Context};
use augur_transport::{client_config, server_config, TlsFiles, STORAGE_SERVER_NAME};
use serde::Serialize;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
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
    /// Whether the receiver wrote the bytes to files and synced them before answering.
    pub durable: bool,
}

/// The storage nodes' idle timeout (see `storage::StorageNode::start`).
const IDLE: Duration = Duration::from_secs(10);

/// Copies `bytes` from an endpoint holding `sender` to one holding `receiver`, over
/// `streams` streams in `chunk`-byte writes, and times it. With a `sink` directory the
/// receiver writes each stream to a file there and syncs it before acknowledging; the files
/// are removed afterwards.
pub fn raw_copy(
    receiver: &TlsFiles,
    sender: &TlsFiles,
    bytes: u64,
    streams: usize,
    chunk: usize,
    sink: Option<&Path>,
) -> anyhow::Result<RawCopy> {
    if streams == 0 || chunk == 0 {
        bail!("a raw copy needs at least one stream and a positive chunk size");
    }
    let server_cfg = server_config(receiver, IDLE).context("receiver TLS")?;
    let client_cfg = client_config(sender, IDLE).context("sender TLS")?;
    if let Some(d) = sink {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let receiver_sink = sink.map(Path::to_path_buf);
    let (addr_tx, addr_rx) = std::sync::mpsc::channel::<anyhow::Result<SocketAddr>>();
    let receiver_thread = std::thread::Builder::new()
        .name("raw-copy-receiver".into())
        .spawn(move || -> anyhow::Result<u64> {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(receive(server_cfg, streams, addr_tx, receiver_sink))
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
    if let Some(d) = sink {
        for i in 0..streams {
            let _ = std::fs::remove_file(d.join(format!("stream-{i}")));
        }
    }
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
        durable: sink.is_some(),
    })
}

/// The receiving endpoint: accepts one connection and `streams` streams, reads each to its
/// end (into a synced file under `sink`, if given) and answers with its byte count; returns
/// the total.
async fn receive(
    cfg: quinn::ServerConfig,
    streams: usize,
    addr_tx: std::sync::mpsc::Sender<anyhow::Result<SocketAddr>>,
    sink: Option<PathBuf>,
) -> anyhow::Result<u64> {
    let endpoint = match augur_transport::bind_endpoint("127.0.0.1:0".parse()?, Some(cfg)) {
        Ok((e, _)) => e,
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
    for i in 0..streams {
        let (mut send, mut recv) = conn.accept_bi().await.context("accepting a stream")?;
        let file = sink.as_ref().map(|d| d.join(format!("stream-{i}")));
        tasks.push(tokio::spawn(async move {
            let n = match file {
                None => {
                    let mut buf = vec![0u8; 1 << 20];
                    let mut n = 0u64;
                    while let Some(got) = recv.read(&mut buf).await? {
                        n += got as u64;
                    }
                    n
                }
                Some(path) => receive_to_file(&mut recv, path).await?,
            };
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

/// Bytes per write call of [`receive_to_file`].
const WRITE_BYTES: usize = 1 << 20;

/// Reads `recv` to its end into a new file at `path`, [`WRITE_BYTES`] per write call on a
/// blocking thread, and syncs it; returns the bytes written.
///
/// quinn hands over about one datagram's payload (1.2 KB) per chunk. Passed to the writer
/// and written one by one, the reference measured a thread hand-off and a write call per
/// datagram, not the disk: on tmpfs it ran at a third of the copy to memory. The chunks are
/// gathered into whole buffers here, as a move's loader writes whole files.
async fn receive_to_file(recv: &mut quinn::RecvStream, path: PathBuf) -> anyhow::Result<u64> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let writer = tokio::task::spawn_blocking(move || -> anyhow::Result<u64> {
        let mut f =
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let mut n = 0u64;
        while let Some(buf) = rx.blocking_recv() {
            f.write_all(&buf)?;
            n += buf.len() as u64;
        }
        f.sync_all()?;
        Ok(n)
    });
    let read: anyhow::Result<()> = async {
        let mut buf = Vec::with_capacity(WRITE_BYTES);
        while let Some(chunk) = recv.read_chunk(usize::MAX, true).await? {
            buf.extend_from_slice(&chunk.bytes);
            if buf.len() >= WRITE_BYTES {
                let full = std::mem::replace(&mut buf, Vec::with_capacity(WRITE_BYTES));
                if tx.send(full).await.is_err() {
                    return Ok(());
                }
            }
        }
        if !buf.is_empty() {
            let _ = tx.send(buf).await;
        }
        Ok(())
    }
    .await;
    drop(tx);
    let written = writer.await??;
    read?;
    Ok(written)
}

/// The sending endpoint: returns the seconds taken and the bytes the receiver acknowledged.
async fn send(
    cfg: quinn::ClientConfig,
    addr: SocketAddr,
    bytes: u64,
    streams: usize,
    chunk: usize,
) -> anyhow::Result<(f64, u64)> {
    let (mut endpoint, _) = augur_transport::bind_endpoint("127.0.0.1:0".parse()?, None)?;
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
/// node `excluded` (the one a benchmark killed or drained), with their certificates; with
/// `durable`, into synced files in the cluster's directory (the nodes' filesystem).
pub(crate) async fn raw_copy_between_others(
    dir: &std::path::Path,
    excluded: u64,
    bytes: u64,
    streams: usize,
    durable: bool,
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
    let sink = durable.then(|| dir.join("raw-copy"));
    tokio::task::spawn_blocking(move || {
        raw_copy(&rx_tls, &tx_tls, bytes, streams, 1 << 20, sink.as_deref())
    })
    .await?
}
