//! The cluster file: how a client finds and authenticates to a cluster.
//!
//! `augur local up` writes one; operators write their own. TLS paths are relative to the
//! file's directory.
//!
//! ```toml
//! endpoints = ["127.0.0.1:7101", "127.0.0.1:7102", "127.0.0.1:7103"]
//! admin = ["127.0.0.1:7201", "127.0.0.1:7202", "127.0.0.1:7203"]
//! [tls]
//! ca = "certs/ca.pem"
//! cert = "certs/client.pem"
//! key = "certs/client.key"
//! ```

use crate::error::Error;
use crate::transport::TlsFiles;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Endpoints and credentials of one cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    /// QUIC addresses of metadata nodes.
    pub endpoints: Vec<String>,
    /// HTTP admin addresses, in the same order (informational).
    #[serde(default)]
    pub admin: Vec<String>,
    /// Client certificate files.
    pub tls: TlsFiles,
}

impl ClusterFile {
    /// Reads a cluster file; TLS paths come back absolute.
    pub fn load(path: &Path) -> Result<ClusterFile, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::Config(format!("cannot read cluster file {}: {e}", path.display()))
        })?;
        let mut file: ClusterFile = toml::from_str(&text)
            .map_err(|e| Error::Config(format!("cluster file {}: {e}", path.display())))?;
        if file.endpoints.is_empty() {
            return Err(Error::Config(format!(
                "cluster file {} lists no endpoints",
                path.display()
            )));
        }
        let base = path.parent().unwrap_or(Path::new("."));
        file.tls = file.tls.relative_to(base);
        Ok(file)
    }

    /// Writes the file (paths as given).
    pub fn save(&self, path: &Path) -> Result<(), Error> {
        let text = toml::to_string_pretty(self).map_err(|e| Error::Config(e.to_string()))?;
        std::fs::write(path, text)
            .map_err(|e| Error::Config(format!("cannot write {}: {e}", path.display())))
    }
}
