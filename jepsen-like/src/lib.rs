//! Augur's Jepsen-style consistency testing: histories, a linearizability checker, nemeses
//! (fault injectors) and the run's outputs.
//!
//! The checker ([`checker`]) is usable on its own: feed it [`history::Event`]s from a
//! `history.jsonl` or a Jepsen log ([`jepsen_log`]) and a [`model::Model`]. The cluster
//! harness ([`harness`]) runs real `augur meta` processes under faults and checks what its
//! clients saw; the data-plane harness ([`data`]) does the same for storage nodes and the data
//! API, on an `augur local` cluster.

#![warn(missing_docs)]

pub mod checker;
pub mod data;
pub mod harness;
pub mod history;
pub mod jepsen_log;
pub mod model;
pub mod nemesis;
pub mod report;
pub mod results;

use std::path::Path;

use checker::{check_events, CheckError, CheckOptions, CheckReport};
use history::{Event, HistoryError};
use jepsen_log::JepsenLogError;

/// How a history file is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputFormat {
    /// Jepsen's textual log (`INFO  jepsen.util - 3 :ok :read 4`, tab- or space-separated).
    JepsenLog,
    /// Augur's `history.jsonl`.
    Jsonl,
}

/// Which sequential model to check against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelChoice {
    /// Versioned register if any event carries a version, else plain register.
    Auto,
    /// Plain read/write/cas register.
    Register,
    /// Versioned register (cas on version).
    Versioned,
}

/// A history file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The Jepsen log is malformed.
    #[error("{path}: {source}")]
    JepsenLog {
        /// The file.
        path: String,
        /// Why.
        source: JepsenLogError,
    },
    /// The `history.jsonl` is malformed.
    #[error("{path}: {source}")]
    Jsonl {
        /// The file.
        path: String,
        /// Why.
        source: HistoryError,
    },
}

/// Reads and decodes a history file.
pub fn load_history(path: &Path, format: InputFormat) -> Result<Vec<Event>, LoadError> {
    let name = path.display().to_string();
    match format {
        InputFormat::JepsenLog => {
            let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
                path: name.clone(),
                source,
            })?;
            jepsen_log::parse_jepsen_log(&text)
                .map_err(|source| LoadError::JepsenLog { path: name, source })
        }
        InputFormat::Jsonl => {
            let file = std::fs::File::open(path).map_err(|source| LoadError::Io {
                path: name.clone(),
                source,
            })?;
            history::read_jsonl(std::io::BufReader::new(file))
                .map_err(|source| LoadError::Jsonl { path: name, source })
        }
    }
}

/// Checks a history with the chosen model.
pub fn check_history(
    events: &[Event],
    model: ModelChoice,
    opts: &CheckOptions,
) -> Result<CheckReport, CheckError> {
    let versioned = match model {
        ModelChoice::Register => false,
        ModelChoice::Versioned => true,
        ModelChoice::Auto => events.iter().any(|e| e.version.is_some()),
    };
    if versioned {
        check_events(&model::VersionedRegister, events, opts)
    } else {
        check_events(&model::Register, events, opts)
    }
}
