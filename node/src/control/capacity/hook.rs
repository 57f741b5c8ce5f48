//! The auto-scaling hook: what the capacity planner calls to ask for storage nodes.
//!
//! Two kinds, chosen by the setting's form:
//!
//! - an absolute path: an executable, run with the JSON request on stdin and in the
//!   environment variable [`REQUEST_ENV`], in its own process group; killed (the whole group)
//!   at the deadline; its exit status and the end of its stderr are logged. Whatever it
//!   starts in a group of its own (a storage node, say) outlives it.
//!   The call ends when its stderr closes, so a long-lived process it starts must not
//!   inherit it (redirect a daemon's output), or the call lasts until the deadline.
//! - an `http://` URL: the request POSTed as JSON; any 2xx answer is success. The workspace
//!   has no TLS HTTP client (hyper is built as a server only, for the admin port), so
//!   `https://` is refused at load: run `curl` from an executable hook instead.
//!
//! Either way the call is bounded by `capacity_hook_timeout_ms`.

use augur_client::admin_http;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The environment variable holding the JSON request for an executable hook.
pub const REQUEST_ENV: &str = "AUGUR_CAPACITY_REQUEST";

/// Bytes of a hook's stderr (its end) or of an HTTP answer kept for the log and the view.
const DETAIL_BYTES: usize = 2_048;

/// A configured hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hook {
    /// An executable.
    Exec(PathBuf),
    /// An HTTP endpoint.
    Http {
        /// Host name or address, as written.
        host: String,
        /// Port (80 when not written).
        port: u16,
        /// Path and query (`/` when not written).
        path: String,
    },
}

/// Why a `capacity_hook` setting is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HookError {
    /// An `https://` URL.
    #[error("https:// hooks are not supported (no TLS HTTP client in this build); use an executable hook that runs curl")]
    Https,
    /// A URL that does not parse.
    #[error("not a usable http:// URL: {0}")]
    BadUrl(String),
    /// A relative path: the leader's working directory is nobody's business.
    #[error("{0}: an executable hook must be an absolute path")]
    NotAbsolute(PathBuf),
    /// A path that is not an executable file.
    #[error("{path}: {why}")]
    NotExecutable {
        /// The path.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The executable could not be started.
    #[error("could not run {path}: {source}")]
    Spawn {
        /// The executable.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// It exited unsuccessfully.
    #[error("exited with {status}; stderr: {stderr}")]
    Exit {
        /// Its status.
        status: String,
        /// The end of its stderr.
        stderr: String,
    },
    /// No answer or exit within the deadline.
    #[error("no result within {0:?} (killed)")]
    Timeout(Duration),
    /// The host did not resolve.
    #[error("cannot resolve {host}: {why}")]
    Resolve {
        /// The host.
        host: String,
        /// Why.
        why: String,
    },
    /// The HTTP exchange failed.
    #[error("{0}")]
    Http(#[from] admin_http::HttpError),
    /// A non-2xx answer.
    #[error("HTTP {status}: {body}")]
    Status {
        /// The status code.
        status: u16,
        /// The start of the body.
        body: String,
    },
}

impl Hook {
    /// Parses the `capacity_hook` setting; `None` for an empty one. An executable must exist
    /// and be executable when the configuration loads, so a typo is found then, not at the
    /// first alarm.
    pub fn parse(setting: &str) -> Result<Option<Hook>, HookError> {
        let s = setting.trim();
        if s.is_empty() {
            return Ok(None);
        }
        let lower = s.to_ascii_lowercase();
        if lower.starts_with("https://") {
            return Err(HookError::Https);
        }
        if lower.starts_with("http://") {
            return parse_url(&s["http://".len()..]).map(Some);
        }
        if s.contains("://") {
            return Err(HookError::BadUrl(format!("{s}: only http:// URLs")));
        }
        let path = PathBuf::from(s);
        if !path.is_absolute() {
            return Err(HookError::NotAbsolute(path));
        }
        let not_exec = |why: String| HookError::NotExecutable {
            path: path.clone(),
            why,
        };
        let meta = std::fs::metadata(&path).map_err(|e| not_exec(e.to_string()))?;
        if !meta.is_file() {
            return Err(not_exec("not a file".into()));
        }
        if meta.permissions().mode() & 0o111 == 0 {
            return Err(not_exec("not executable".into()));
        }
        Ok(Some(Hook::Exec(path)))
    }

    /// How the hook shows in the view and the logs.
    pub fn describe(&self) -> String {
        match self {
            Hook::Exec(p) => p.display().to_string(),
            Hook::Http { host, port, path } => format!("http://{host}:{port}{path}"),
        }
    }

    /// Calls the hook with `request` (JSON) within `timeout`: what it said on success.
    pub async fn call(&self, request: &str, timeout: Duration) -> Result<String, CallError> {
        match self {
            Hook::Exec(path) => run(path, request, timeout).await,
            Hook::Http { host, port, path } => post(host, *port, path, request, timeout).await,
        }
    }
}

/// `host[:port][/path]`, the part after `http://`.
fn parse_url(rest: &str) -> Result<Hook, HookError> {
    let bad = |why: &str| HookError::BadUrl(format!("http://{rest}: {why}"));
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) if rest[i..].starts_with('/') => (&rest[..i], rest[i..].to_string()),
        Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
        None => (rest, "/".to_string()),
    };
    if authority.contains('@') {
        return Err(bad("credentials in the URL are not supported"));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| bad("bad port"))?,
            None if after.is_empty() => 80,
            None => return Err(bad("junk after ']'")),
        };
        (h.to_string(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse().map_err(|_| bad("bad port"))?),
            None => (authority.to_string(), 80),
        }
    };
    if host.is_empty() || port == 0 {
        return Err(bad("no host or port"));
    }
    if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("whitespace in the path"));
    }
    Ok(Hook::Http { host, port, path })
}

/// Reads `stream` to its end, keeping at most its last `2 x DETAIL_BYTES` bytes.
async fn read_tail(stream: Option<tokio::process::ChildStderr>) -> std::io::Result<Vec<u8>> {
    let mut kept = Vec::new();
    let Some(mut stream) = stream else {
        return Ok(kept);
    };
    let mut buf = [0u8; 8_192];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(kept);
        }
        kept.extend_from_slice(&buf[..n]);
        if kept.len() > 2 * DETAIL_BYTES {
            kept.drain(..kept.len() - DETAIL_BYTES);
        }
    }
}

/// The last `DETAIL_BYTES` of `bytes`, as text.
fn tail(bytes: &[u8]) -> String {
    let from = bytes.len().saturating_sub(DETAIL_BYTES);
    String::from_utf8_lossy(&bytes[from..]).trim().to_string()
}

async fn run(path: &PathBuf, request: &str, timeout: Duration) -> Result<String, CallError> {
    let mut child = tokio::process::Command::new(path)
        .env(REQUEST_ENV, request)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        // Its own group, so the deadline kills what it started too (unless that made a
        // group of its own: a node it launched is meant to outlive it).
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| CallError::Spawn {
            path: path.clone(),
            source,
        })?;
    let pid = child.id();
    if let Some(mut stdin) = child.stdin.take() {
        let body = request.as_bytes().to_vec();
        // A hook that ignores stdin closes it early: not an error.
        tokio::spawn(async move {
            let _ = stdin.write_all(&body).await;
        });
    }
    // Only stderr's end is kept: a hook that prints without pause until its deadline
    // (a debug flag, a retry loop) must not fill the leader's memory.
    let stderr = child.stderr.take();
    let ended = async {
        let (status, stderr) = tokio::join!(child.wait(), read_tail(stderr));
        Ok::<_, std::io::Error>((status?, stderr?))
    };
    match tokio::time::timeout(timeout, ended).await {
        Ok(Ok((status, stderr))) if status.success() => Ok(tail(&stderr)),
        Ok(Ok((status, stderr))) => Err(CallError::Exit {
            status: match (status.code(), status.signal()) {
                (Some(c), _) => format!("exit status {c}"),
                (None, Some(s)) => format!("signal {s}"),
                _ => status.to_string(),
            },
            stderr: tail(&stderr),
        }),
        Ok(Err(source)) => Err(CallError::Spawn {
            path: path.clone(),
            source,
        }),
        Err(_) => {
            if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            Err(CallError::Timeout(timeout))
        }
    }
}

/// The `Host` header for `host` and `port` (the port left out when it is 80; an IPv6
/// literal in brackets).
fn host_header(host: &str, port: u16) -> String {
    match (host.contains(':'), port) {
        (true, 80) => format!("[{host}]"),
        (true, p) => format!("[{host}]:{p}"),
        (false, 80) => host.to_string(),
        (false, p) => format!("{host}:{p}"),
    }
}

async fn post(
    host: &str,
    port: u16,
    path: &str,
    request: &str,
    timeout: Duration,
) -> Result<String, CallError> {
    let resolve_err = |why: String| CallError::Resolve {
        host: host.to_string(),
        why,
    };
    // One deadline for the lookup and the exchange together.
    let deadline = tokio::time::Instant::now() + timeout;
    let addr = tokio::time::timeout_at(deadline, tokio::net::lookup_host((host, port)))
        .await
        .map_err(|_| CallError::Timeout(timeout))?
        .map_err(|e| resolve_err(e.to_string()))?
        .next()
        .ok_or_else(|| resolve_err("no address".into()))?;
    let body: serde_json::Value =
        serde_json::from_str(request).unwrap_or(serde_json::Value::String(request.into()));
    // The name the URL gave, not the address it resolved to: a virtual host or an ingress
    // routes by it.
    let host_header = host_header(host, port);
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    if left.is_zero() {
        return Err(CallError::Timeout(timeout));
    }
    let answer = admin_http::post_json_to_host(addr, &host_header, path, &body, left).await?;
    let text: String = answer.body.chars().take(DETAIL_BYTES).collect();
    if (200..300).contains(&answer.status) {
        Ok(text)
    } else {
        Err(CallError::Status {
            status: answer.status,
            body: text,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_paths_parse_or_are_refused_with_a_reason() {
        assert_eq!(Hook::parse("  ").unwrap(), None);
        assert_eq!(
            Hook::parse("http://scaler.local:8080/v1/grow?pool=a").unwrap(),
            Some(Hook::Http {
                host: "scaler.local".into(),
                port: 8080,
                path: "/v1/grow?pool=a".into()
            })
        );
        assert_eq!(
            Hook::parse("http://10.0.0.1").unwrap(),
            Some(Hook::Http {
                host: "10.0.0.1".into(),
                port: 80,
                path: "/".into()
            })
        );
        assert_eq!(
            Hook::parse("http://[::1]:81/x").unwrap(),
            Some(Hook::Http {
                host: "::1".into(),
                port: 81,
                path: "/x".into()
            })
        );
        assert_eq!(Hook::parse("HTTPS://x/y"), Err(HookError::Https));
        assert!(matches!(
            Hook::parse("http://h:notaport/"),
            Err(HookError::BadUrl(_))
        ));
        assert!(matches!(Hook::parse("ftp://h/"), Err(HookError::BadUrl(_))));
        assert!(matches!(
            Hook::parse("hook.sh"),
            Err(HookError::NotAbsolute(_))
        ));
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("hook.sh");
        std::fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
        assert!(matches!(
            Hook::parse(script.to_str().unwrap()),
            Err(HookError::NotExecutable { .. })
        ));
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(
            Hook::parse(script.to_str().unwrap()).unwrap(),
            Some(Hook::Exec(script.clone()))
        );
    }

    fn script(dir: &std::path::Path, body: &str) -> Hook {
        let p = dir.join("hook.sh");
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        Hook::Exec(p)
    }

    #[tokio::test]
    async fn an_executable_gets_the_request_and_its_failures_and_hangs_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("got");
        let hook = script(
            dir.path(),
            &format!(
                "cat > {0}.stdin; printf '%s' \"${REQUEST_ENV}\" > {0}.env; echo asked >&2",
                out.display()
            ),
        );
        let said = hook
            .call("{\"nodes_wanted\":2}", Duration::from_secs(20))
            .await
            .unwrap();
        assert_eq!(said, "asked");
        let stdin = std::fs::read_to_string(out.with_extension("stdin")).unwrap();
        let env = std::fs::read_to_string(out.with_extension("env")).unwrap();
        assert_eq!(stdin, "{\"nodes_wanted\":2}");
        assert_eq!(env, stdin);

        let hook = script(dir.path(), "echo no capacity left >&2; exit 3");
        match hook.call("{}", Duration::from_secs(20)).await {
            Err(CallError::Exit { status, stderr }) => {
                assert_eq!(status, "exit status 3");
                assert_eq!(stderr, "no capacity left");
            }
            other => panic!("expected an exit failure, got {other:?}"),
        }

        // Megabytes of stderr: only the end is kept, and the call still succeeds.
        let hook = script(
            dir.path(),
            "head -c 4000000 /dev/zero | tr '\\0' x >&2; echo >&2; echo done >&2",
        );
        let said = hook.call("{}", Duration::from_secs(20)).await.unwrap();
        assert!(said.len() <= DETAIL_BYTES, "{}", said.len());
        assert!(said.ends_with("\ndone"), "{}", &said[said.len() - 10..]);

        let hook = script(dir.path(), "sleep 30");
        let started = std::time::Instant::now();
        assert!(matches!(
            hook.call("{}", Duration::from_millis(300)).await,
            Err(CallError::Timeout(_))
        ));
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[tokio::test]
    async fn an_http_hook_gets_the_request_posted() {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while !String::from_utf8_lossy(&got).contains("\"nodes_wanted\":1}") {
                let n = s.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            s.write_all(
                b"HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
            )
            .await
            .unwrap();
            String::from_utf8_lossy(&got).into_owned()
        });
        let hook = Hook::parse(&format!("http://127.0.0.1:{port}/scale"))
            .unwrap()
            .unwrap();
        let said = hook
            .call("{\"nodes_wanted\":1}", Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(said, "ok");
        let request = server.await.unwrap();
        assert!(request.starts_with("POST /scale HTTP/1.1"), "{request}");
        assert!(
            request.contains(&format!("\r\nHost: 127.0.0.1:{port}\r\n")),
            "{request}"
        );
    }

    #[test]
    fn the_host_header_names_the_configured_host() {
        assert_eq!(host_header("scaler.internal", 80), "scaler.internal");
        assert_eq!(host_header("scaler.internal", 8080), "scaler.internal:8080");
        assert_eq!(host_header("::1", 80), "[::1]");
        assert_eq!(host_header("::1", 9000), "[::1]:9000");
    }
}
