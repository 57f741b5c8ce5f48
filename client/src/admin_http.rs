//! Just enough HTTP/1.1 to read a node's admin surface (`/health`, `/v1/status`,
//! `/v1/digest`, `/metrics`, a storage node's `/v1/health`) and to POST a storage node's
//! fault injection: one request per connection, `Connection: close`, a bounded body.
//!
//! Tools and tests read a few small answers from nodes they can reach directly; a hand-rolled
//! GET keeps an HTTP client stack (and its TLS and connection pool) out of the client's
//! dependency graph.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Largest response accepted; the admin answers are a few hundred bytes.
const MAX_RESPONSE: usize = 1 << 20;

/// Why a GET failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// Connecting, sending or receiving failed.
    #[error("{addr}{path}: {source}")]
    Io {
        /// The server.
        addr: SocketAddr,
        /// The path asked for.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// No complete answer within the deadline (a paused node never answers).
    #[error("{addr}{path}: no answer within {timeout:?}")]
    Timeout {
        /// The server.
        addr: SocketAddr,
        /// The path asked for.
        path: String,
        /// The deadline.
        timeout: Duration,
    },
    /// The answer is not an HTTP response the harness understands.
    #[error("{addr}{path}: malformed response: {reason}")]
    Malformed {
        /// The server.
        addr: SocketAddr,
        /// The path asked for.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

/// A response: status code and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// The body, decoded from chunked transfer encoding if needed.
    pub body: String,
}

/// The sum of every sample of the series `name` (all its label sets) in a Prometheus text
/// exposition, e.g. a node's `/metrics`; 0 when there is none.
pub fn metric_sum(body: &str, name: &str) -> f64 {
    body.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with([' ', '{']))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// GETs `path` from `addr` within `timeout`.
pub async fn get(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<HttpResponse, HttpError> {
    let host = addr.to_string();
    exchange(addr, &host, "GET", path, None, timeout).await
}

/// POSTs a JSON `body` to `path` at `addr` within `timeout` (the storage node's fault
/// injection). Any status is returned; the caller reads the error body.
pub async fn post_json(
    addr: SocketAddr,
    path: &str,
    body: &serde_json::Value,
    timeout: Duration,
) -> Result<HttpResponse, HttpError> {
    let host = addr.to_string();
    exchange(addr, &host, "POST", path, Some(body.to_string()), timeout).await
}

/// [`post_json`] to a server known by name: `host` (with its port unless 80) is sent as the
/// `Host` header, which a virtual host or an ingress in front of the server routes by.
pub async fn post_json_to_host(
    addr: SocketAddr,
    host: &str,
    path: &str,
    body: &serde_json::Value,
    timeout: Duration,
) -> Result<HttpResponse, HttpError> {
    exchange(addr, host, "POST", path, Some(body.to_string()), timeout).await
}

async fn exchange(
    addr: SocketAddr,
    host: &str,
    method: &str,
    path: &str,
    body: Option<String>,
    timeout: Duration,
) -> Result<HttpResponse, HttpError> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let request = match &body {
            None => {
                format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
            }
            Some(b) => format!(
                "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
                b.len()
            ),
        };
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        (&mut stream)
            .take(MAX_RESPONSE as u64 + 1)
            .read_to_end(&mut raw)
            .await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = match tokio::time::timeout(timeout, exchange).await {
        Err(_) => {
            return Err(HttpError::Timeout {
                addr,
                path: path.to_string(),
                timeout,
            })
        }
        Ok(Err(source)) => {
            return Err(HttpError::Io {
                addr,
                path: path.to_string(),
                source,
            })
        }
        Ok(Ok(raw)) => raw,
    };
    parse_response(&raw).map_err(|reason| HttpError::Malformed {
        addr,
        path: path.to_string(),
        reason,
    })
}

/// Splits a complete HTTP/1.1 response into status and body.
fn parse_response(raw: &[u8]) -> Result<HttpResponse, String> {
    if raw.len() > MAX_RESPONSE {
        return Err(format!("longer than {MAX_RESPONSE} bytes"));
    }
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers")?;
    let head = std::str::from_utf8(&raw[..split]).map_err(|_| "headers are not UTF-8")?;
    let body = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or("empty response")?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let chunked = lines.any(|l| {
        l.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("transfer-encoding")
                && value.to_ascii_lowercase().contains("chunked")
        })
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_vec()
    };
    // The status is the answer; a body that is not UTF-8 (a proxy's page in another
    // charset) is shown as best it can be, not turned into a failed exchange.
    let body = String::from_utf8_lossy(&body).into_owned();
    Ok(HttpResponse { status, body })
}

/// Decodes a chunked body.
fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("chunk size line not terminated")?;
        let line = std::str::from_utf8(&rest[..eol]).map_err(|_| "chunk size is not UTF-8")?;
        let size_hex = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|_| format!("bad chunk size {size_hex:?}"))?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        // A size near usize::MAX must not wrap into a small one.
        let end = size
            .checked_add(2)
            .filter(|end| *end <= rest.len())
            .ok_or("chunk shorter than announced")?;
        out.extend_from_slice(&rest[..size]);
        rest = &rest[end..];
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn metric_sum_adds_every_label_set_of_one_series() {
        let body = "# HELP x_bytes b\nx_bytes 3\nx_bytes_total 100\nx{shard=\"1\"} 2\nx{shard=\"2\"} 5.5\ny 9\n";
        assert_eq!(metric_sum(body, "x"), 7.5);
        assert_eq!(metric_sum(body, "x_bytes"), 3.0);
        assert_eq!(metric_sum(body, "z"), 0.0);
    }

    use super::*;

    #[test]
    fn parses_plain_and_chunked_bodies() {
        let plain = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(
            parse_response(plain).unwrap(),
            HttpResponse {
                status: 200,
                body: "{}".into()
            }
        );
        let chunked =
            b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        let r = parse_response(chunked).unwrap();
        assert_eq!((r.status, r.body.as_str()), (503, "abcde"));
        // A body in another charset still answers with its status.
        let latin1 = parse_response(b"HTTP/1.1 200 OK\r\n\r\nok \xe9t\xe9").unwrap();
        assert_eq!(
            (latin1.status, latin1.body.as_str()),
            (200, "ok \u{fffd}t\u{fffd}")
        );
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        for bad in [
            &b""[..],
            b"HTTP/1.1 200 OK\r\n",
            b"garbage\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nab\r\n",
            // A size that wraps when the CRLF after it is added.
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\nx",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffe\r\nx",
        ] {
            assert!(parse_response(bad).is_err(), "{bad:?}");
        }
    }
}
