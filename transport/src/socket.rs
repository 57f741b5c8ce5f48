//! The UDP socket under every QUIC endpoint, with kernel buffers sized for bulk copies.
//!
//! Linux gives a UDP socket about 208 KiB of receive buffer by default. A QUIC endpoint
//! that falls a few milliseconds behind (a storage node checksumming a shard, applying a
//! burst of writes) overflows it, the kernel drops datagrams, and the sender's congestion
//! controller reads every drop as congestion. Four shard copies into a loaded node ran at
//! about 90 MB/s together, with 80 to 1,500 drops a second; with these buffers the same
//! copies ran at about 145 MB/s and the drops mostly stopped. The kernel caps what an
//! unprivileged process may ask for at `net.core.rmem_max` / `wmem_max`; the endpoint logs
//! what it got when that is less than it asked for, so an operator knows to raise them.

use crate::TransportError;
use socket2::{Domain, Protocol, Socket, Type};
use std::net::SocketAddr;

/// The receive and send buffer each endpoint asks the kernel for.
pub const UDP_BUFFER_BYTES: usize = 8 << 20;

/// What the kernel reports for a buffer of [`UDP_BUFFER_BYTES`]: Linux reports twice the
/// size set (the rest is its own bookkeeping), so a cap at `rmem_max` of half the request
/// would otherwise pass for a full grant.
const REPORTED_IF_GRANTED: usize = if cfg!(target_os = "linux") {
    2 * UDP_BUFFER_BYTES
} else {
    UDP_BUFFER_BYTES
};

/// The buffers the kernel granted a socket, in bytes (as the kernel reports them: Linux
/// doubles the figure asked for to account for its own bookkeeping).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpBuffers {
    /// Receive buffer.
    pub recv: usize,
    /// Send buffer.
    pub send: usize,
}

/// Binds a UDP socket on `addr` with [`UDP_BUFFER_BYTES`] of buffer each way (or as much as
/// the kernel allows) and builds a QUIC endpoint on it: a server if `server` is given,
/// otherwise a client-only endpoint. Must run inside a Tokio runtime.
pub fn bind_endpoint(
    addr: SocketAddr,
    server: Option<quinn::ServerConfig>,
) -> Result<(quinn::Endpoint, UdpBuffers), TransportError> {
    let err = |what: &str, e: std::io::Error| TransportError::Endpoint(format!("{what}: {e}"));
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .map_err(|e| err("creating a UDP socket", e))?;
    // A buffer the kernel refuses to grow is not an error: the endpoint works, only slower
    // under load, and the warning below says so.
    let _ = socket.set_recv_buffer_size(UDP_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(UDP_BUFFER_BYTES);
    socket
        .bind(&addr.into())
        .map_err(|e| err(&format!("binding {addr}"), e))?;
    socket
        .set_nonblocking(true)
        .map_err(|e| err("making the socket non-blocking", e))?;
    let buffers = UdpBuffers {
        recv: socket.recv_buffer_size().unwrap_or(0),
        send: socket.send_buffer_size().unwrap_or(0),
    };
    // Once per process: a benchmark's clients bind an endpoint each, and the kernel's cap is
    // the same for all of them.
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let short = buffers.recv < REPORTED_IF_GRANTED || buffers.send < REPORTED_IF_GRANTED;
    if short && !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        tracing::warn!(
            %addr,
            asked = UDP_BUFFER_BYTES,
            // In the units asked for: the kernel's report counts its bookkeeping too.
            recv = buffers.recv * UDP_BUFFER_BYTES / REPORTED_IF_GRANTED,
            send = buffers.send * UDP_BUFFER_BYTES / REPORTED_IF_GRANTED,
            "the kernel granted smaller UDP buffers than asked for; raise net.core.rmem_max and \
             net.core.wmem_max for full copy speed under load"
        );
    }
    let runtime = quinn::default_runtime()
        .ok_or_else(|| TransportError::Endpoint("no async runtime for QUIC".into()))?;
    let endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        server,
        socket.into(),
        runtime,
    )
    .map_err(|e| err("starting the QUIC endpoint", e))?;
    Ok((endpoint, buffers))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn endpoints_get_larger_buffers_than_the_default() {
        let (ep, buffers) = bind_endpoint("127.0.0.1:0".parse().unwrap(), None).unwrap();
        assert!(ep.local_addr().unwrap().port() > 0);
        // Whatever the host's limits, a request for more never yields less than the
        // default an unconfigured socket gets.
        let plain = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let default = socket2::SockRef::from(&plain).recv_buffer_size().unwrap();
        assert!(buffers.recv >= default, "{buffers:?} < {default}");
    }
}
