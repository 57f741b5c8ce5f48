//! Clock skew and jumps through libfaketime.
//!
//! Each node starts with libfaketime preloaded and `FAKETIME_TIMESTAMP_FILE` pointing at its own
//! file; with `FAKETIME_NO_CACHE=1` the library re-reads the file on every clock call, so the
//! nemesis changes a running node's wall clock by rewriting that file (atomically, via rename).
//! Only the wall clock (`CLOCK_REALTIME`) is shifted: `FAKETIME_DONT_FAKE_MONOTONIC=1` leaves
//! the monotonic clock alone, as a real NTP step or a skewed host would.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::NemesisError;

/// Where Debian and common builds install the preload library.
const CANDIDATES: [&str; 3] = [
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/faketime/libfaketime.so.1",
    "/usr/local/lib/faketime/libfaketime.so.1",
];

/// The located libfaketime preload library.
#[derive(Debug, Clone)]
pub struct Faketime {
    lib: PathBuf,
}

impl Faketime {
    /// Finds libfaketime in the usual places, or asks dpkg where the `libfaketime` package put it.
    pub fn locate() -> Result<Self, NemesisError> {
        if let Some(lib) = CANDIDATES.iter().map(PathBuf::from).find(|p| p.is_file()) {
            return Ok(Faketime { lib });
        }
        let from_dpkg = std::process::Command::new("dpkg")
            .args(["-L", "libfaketime"])
            .output()
            .ok()
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .map(PathBuf::from)
                    .find(|p| p.file_name().is_some_and(|n| n == "libfaketime.so.1") && p.is_file())
            });
        from_dpkg
            .map(|lib| Faketime { lib })
            .ok_or_else(|| NemesisError::Unavailable {
                nemesis: "clock",
                reason: "libfaketime.so.1 not found (Debian package `libfaketime`)".into(),
            })
    }

    /// Uses a specific library path.
    pub fn at(lib: impl Into<PathBuf>) -> Result<Self, NemesisError> {
        let lib = lib.into();
        if !lib.is_file() {
            return Err(NemesisError::Unavailable {
                nemesis: "clock",
                reason: format!("{} does not exist", lib.display()),
            });
        }
        Ok(Faketime { lib })
    }

    /// The library path.
    pub fn library(&self) -> &Path {
        &self.lib
    }

    /// Creates a clock for one node, with its control file in `dir`, starting at zero offset.
    pub fn node_clock(&self, dir: &Path, node: &str) -> Result<NodeClock, NemesisError> {
        if node.is_empty()
            || !node
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(NemesisError::Invalid(format!(
                "node name {node:?} is not a plain file name"
            )));
        }
        let mut clock = NodeClock {
            lib: self.lib.clone(),
            file: dir.join(format!("{node}.faketime")),
            offset_ms: 0,
        };
        clock.set_offset_ms(0)?;
        Ok(clock)
    }
}

/// One node's fake wall clock.
#[derive(Debug)]
pub struct NodeClock {
    lib: PathBuf,
    file: PathBuf,
    offset_ms: i64,
}

impl NodeClock {
    /// Environment to start the node with (add to [`super::process::ProcessSpec::env`]).
    pub fn env(&self) -> Vec<(OsString, OsString)> {
        vec![
            ("LD_PRELOAD".into(), self.lib.clone().into_os_string()),
            (
                "FAKETIME_TIMESTAMP_FILE".into(),
                self.file.clone().into_os_string(),
            ),
            ("FAKETIME_NO_CACHE".into(), "1".into()),
            ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
        ]
    }

    /// The control file.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Current offset from real time, in milliseconds.
    pub fn offset_ms(&self) -> i64 {
        self.offset_ms
    }

    /// Sets the wall clock to real time + `offset_ms` (negative: behind).
    pub fn set_offset_ms(&mut self, offset_ms: i64) -> Result<(), NemesisError> {
        let sign = if offset_ms < 0 { '-' } else { '+' };
        let abs = offset_ms.unsigned_abs();
        let spec = format!("{sign}{}.{:03}\n", abs / 1000, abs % 1000);
        let tmp = self.file.with_extension("faketime.tmp");
        std::fs::write(&tmp, spec)?;
        std::fs::rename(&tmp, &self.file)?;
        self.offset_ms = offset_ms;
        tracing::info!(file = %self.file.display(), offset_ms, "clock offset set");
        Ok(())
    }

    /// Moves the clock by `delta_ms` from where it is now (a jump).
    pub fn jump_ms(&mut self, delta_ms: i64) -> Result<(), NemesisError> {
        self.set_offset_ms(self.offset_ms.saturating_add(delta_ms))
    }

    /// Back to real time.
    pub fn reset(&mut self) -> Result<(), NemesisError> {
        self.set_offset_ms(0)
    }
}
