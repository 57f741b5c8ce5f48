//! The control socket: a Unix stream socket taking one command line per connection and
//! answering one line.
//!
//! | command | effect | answer |
//! |---|---|---|
//! | `crash` | the power cut: drop every unsynced byte now | `ok files=N bytes=M` (what was dropped) |
//! | `checkpoint` | persist every unsynced byte, as `sync(1)` | `ok files=N bytes=M` (what was written) |
//! | `status` | nothing | `ok files=N bytes=M` (what is unsynced) |
//!
//! Anything else, or a line longer than [`MAX_LINE`] bytes, is answered `error <why>` and
//! changes nothing. The answer is sent only once the command is done, so a caller that got
//! `ok` to `crash` knows the cut has happened.

use crate::state::{CacheStats, State};
use crate::Error;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Longest command line accepted, newline included.
pub const MAX_LINE: usize = 64;

/// How long the server waits for a connected client to send its command.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A control command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Drop every unsynced byte (the power cut).
    Crash,
    /// Persist every unsynced byte.
    Checkpoint,
    /// Report what is unsynced.
    Status,
}

impl Command {
    /// The command's word on the wire.
    pub fn word(self) -> &'static str {
        match self {
            Command::Crash => "crash",
            Command::Checkpoint => "checkpoint",
            Command::Status => "status",
        }
    }

    /// Parses one command line (surrounding whitespace ignored).
    pub fn parse(line: &str) -> Result<Command, String> {
        match line.trim() {
            "crash" => Ok(Command::Crash),
            "checkpoint" => Ok(Command::Checkpoint),
            "status" => Ok(Command::Status),
            other => Err(format!(
                "unknown command {:?} (expected crash, checkpoint or status)",
                other.chars().take(MAX_LINE).collect::<String>()
            )),
        }
    }
}

/// Carries out `cmd` on `state`; `after_crash` runs once a power cut is done (it tells the
/// kernel to forget what it cached about the files).
pub fn execute(state: &State, cmd: Command, after_crash: &dyn Fn()) -> Result<CacheStats, String> {
    match cmd {
        Command::Crash => {
            let stats = state.crash();
            after_crash();
            tracing::info!(files = stats.files, bytes = stats.bytes, "power cut");
            Ok(stats)
        }
        Command::Checkpoint => state
            .checkpoint()
            .map_err(|e| format!("checkpoint failed: {e}")),
        Command::Status => Ok(state.unsynced()),
    }
}

fn format_ok(stats: CacheStats) -> String {
    format!("ok files={} bytes={}\n", stats.files, stats.bytes)
}

/// Parses an `ok files=N bytes=M` answer.
fn parse_ok(line: &str) -> Option<CacheStats> {
    let rest = line.trim().strip_prefix("ok ")?;
    let mut files = None;
    let mut bytes = None;
    for field in rest.split_whitespace() {
        match field.split_once('=')? {
            ("files", v) => files = Some(v.parse().ok()?),
            ("bytes", v) => bytes = Some(v.parse().ok()?),
            _ => return None,
        }
    }
    Some(CacheStats {
        files: files?,
        bytes: bytes?,
    })
}

/// Reads one bounded command line from `stream`.
fn read_line(stream: &UnixStream) -> Result<String, String> {
    let mut buf = Vec::new();
    let mut reader = BufReader::new(stream).take(MAX_LINE as u64 + 1);
    reader
        .read_until(b'\n', &mut buf)
        .map_err(|e| format!("reading the command: {e}"))?;
    if buf.len() > MAX_LINE {
        return Err(format!("command line longer than {MAX_LINE} bytes"));
    }
    String::from_utf8(buf).map_err(|_| "command is not UTF-8".to_string())
}

fn serve_one(mut stream: UnixStream, state: &State, after_crash: &dyn Fn()) {
    let _ = stream.set_read_timeout(Some(READ_TIMEOUT));
    let answer = read_line(&stream)
        .and_then(|line| Command::parse(&line))
        .and_then(|cmd| execute(state, cmd, after_crash));
    let text = match answer {
        Ok(stats) => format_ok(stats),
        Err(why) => format!("error {why}\n"),
    };
    if let Err(e) = stream.write_all(text.as_bytes()) {
        tracing::warn!(error = %e, "control client went away before the answer");
    }
}

/// A running control socket; stopped (and its file removed) by [`ControlServer::stop`] or
/// on drop.
pub struct ControlServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ControlServer {
    /// Listens on `path` (a stale socket file there is replaced). Connections are served
    /// one at a time, in order: two power cuts never interleave.
    pub fn start(
        path: &Path,
        state: Arc<State>,
        after_crash: Box<dyn Fn() + Send>,
    ) -> Result<ControlServer, Error> {
        let err = |e| Error::Control(path.to_path_buf(), e);
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(e)),
        }
        let listener = UnixListener::bind(path).map_err(err)?;
        // Only the owner may cut the power.
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .map_err(err)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("lazyfs-control".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if stop2.load(Ordering::Acquire) {
                        break;
                    }
                    match conn {
                        Ok(stream) => serve_one(stream, &state, &*after_crash),
                        Err(e) => tracing::warn!(error = %e, "control socket accept failed"),
                    }
                }
            })
            .map_err(err)?;
        Ok(ControlServer {
            path: path.to_path_buf(),
            stop,
            thread: Some(thread),
        })
    }

    /// Stops serving and removes the socket file.
    pub fn stop(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.stop.store(true, Ordering::Release);
        // Wake the accept loop so it sees the flag.
        let _ = UnixStream::connect(&self.path);
        let _ = thread.join();
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Sends `cmd` to the control socket at `path` and waits up to `timeout` for the answer.
pub fn request(path: &Path, cmd: Command, timeout: Duration) -> Result<CacheStats, Error> {
    let err = |e| Error::Control(path.to_path_buf(), e);
    let mut stream = UnixStream::connect(path).map_err(err)?;
    stream.set_read_timeout(Some(timeout)).map_err(err)?;
    stream.set_write_timeout(Some(timeout)).map_err(err)?;
    stream
        .write_all(format!("{}\n", cmd.word()).as_bytes())
        .map_err(err)?;
    let mut line = String::new();
    BufReader::new(&stream)
        .take(4096)
        .read_line(&mut line)
        .map_err(err)?;
    if let Some(why) = line.strip_prefix("error ") {
        return Err(Error::Refused(why.trim().to_string()));
    }
    parse_ok(&line).ok_or_else(|| Error::BadReply(line.trim().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_and_bad_ones_are_refused() {
        assert_eq!(Command::parse("crash\n"), Ok(Command::Crash));
        assert_eq!(Command::parse(" checkpoint "), Ok(Command::Checkpoint));
        assert_eq!(Command::parse("status"), Ok(Command::Status));
        assert!(Command::parse("").is_err());
        assert!(Command::parse("crash now").is_err());
        assert!(Command::parse("CRASH").is_err());
    }

    #[test]
    fn answers_round_trip() {
        let s = CacheStats {
            files: 3,
            bytes: 12345,
        };
        assert_eq!(parse_ok(&format_ok(s)), Some(s));
        assert_eq!(parse_ok("ok files=1"), None);
        assert_eq!(parse_ok("ok files=x bytes=2"), None);
        assert_eq!(parse_ok("nope"), None);
    }

    /// The socket refuses garbage and over-long lines without acting, and serves a real
    /// command afterwards.
    #[test]
    fn socket_survives_bad_input() {
        let dir = tempfile::tempdir().unwrap();
        let backing = dir.path().join("backing");
        std::fs::create_dir(&backing).unwrap();
        let state = Arc::new(State::new(&backing).unwrap());
        let sock = dir.path().join("control");
        let mut server = ControlServer::start(&sock, state, Box::new(|| {})).unwrap();
        let send = |bytes: &[u8]| {
            let mut s = UnixStream::connect(&sock).unwrap();
            s.write_all(bytes).unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        };
        assert!(send(b"reboot\n").starts_with("error unknown command"));
        assert!(send(&[b'x'; 500]).starts_with("error command line longer"));
        assert!(send(&[0xff, 0xfe, b'\n']).starts_with("error command is not UTF-8"));
        let t = Duration::from_secs(5);
        assert_eq!(
            request(&sock, Command::Status, t).unwrap(),
            CacheStats::default()
        );
        assert_eq!(
            request(&sock, Command::Crash, t).unwrap(),
            CacheStats::default()
        );
        server.stop();
        assert!(!sock.exists());
    }
}
