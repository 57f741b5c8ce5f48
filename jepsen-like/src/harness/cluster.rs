//! The cluster under test: where each `augur meta` process listens, its files, its
//! certificates, and how to ask it about itself.
//!
//! Layout of the run directory:
//!
//! ```text
//! certs/              ca.pem, ca.key, n<i>.pem/.key, operator.pem/.key (made by `augur cert`)
//! nodes/n<i>/config.toml
//! nodes/n<i>/data/    its RocksDB (wiped by the member and disk-loss nemeses)
//! nodes/n<i>/augur.log
//! clock/n<i>.faketime libfaketime control files (clock nemesis only)
//! ```
//!
//! Node `i` (1-based) listens on 127.0.0.(10+i) for QUIC and HTTP admin. The node's QUIC
//! endpoint is bound to that address, so its Raft traffic leaves with it as source, which is
//! what the partition nemesis matches on.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use augur_client::{Client, TlsFiles};
use augur_proto::wire::ClusterStatus;
use augur_proto::MemberId;
use serde::{Deserialize, Serialize};

use super::HarnessError;
use crate::nemesis::process::ProcessSpec;
use augur_client::admin_http as http;

/// QUIC port every node uses inside the run's own namespace (each node has its own address).
const NS_QUIC_PORT: u16 = 7100;
/// Admin HTTP port inside the run's own namespace.
const NS_ADMIN_PORT: u16 = 7200;

/// One node's addresses and files.
#[derive(Debug, Clone)]
pub struct NodeLayout {
    /// 0-based index (the nemesis's node number).
    pub index: usize,
    /// Raft member id (`index + 1`).
    pub id: u64,
    /// `n<id>`: file and certificate name.
    pub name: String,
    /// Its own loopback address.
    pub addr: Ipv4Addr,
    /// QUIC address for peers and clients.
    pub quic: SocketAddr,
    /// HTTP admin address.
    pub admin: SocketAddr,
    /// `nodes/n<id>`.
    pub dir: PathBuf,
    /// `nodes/n<id>/data`.
    pub data_dir: PathBuf,
    /// `nodes/n<id>/config.toml`.
    pub config: PathBuf,
    /// `nodes/n<id>/augur.log`.
    pub log: PathBuf,
}

impl NodeLayout {
    /// The QUIC endpoint as the client names it.
    pub fn endpoint(&self) -> String {
        self.quic.to_string()
    }
}

/// Every node of the run plus the client's certificate.
#[derive(Debug, Clone)]
pub struct ClusterLayout {
    /// The nodes, by index.
    pub nodes: Vec<NodeLayout>,
    /// `certs/`.
    pub certs: PathBuf,
    /// The harness's certificate: an operator's, since its clients write metadata, change the
    /// membership and bootstrap the cluster.
    pub client_tls: TlsFiles,
}

/// `/v1/digest`: what a node's state hashes to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest {
    /// Applied revision the digest was taken at.
    pub revision: u64,
    /// Records in the state.
    pub records: u64,
    /// CRC-64 of the whole state, hex.
    pub crc64: String,
}

/// A free port on `addr`, for runs without their own namespace, where fixed ports could
/// collide with anything else on the host.
fn free_port(addr: Ipv4Addr, udp: bool) -> Result<u16, HarnessError> {
    let bind = SocketAddr::from((addr, 0));
    let port = if udp {
        std::net::UdpSocket::bind(bind)?.local_addr()?.port()
    } else {
        std::net::TcpListener::bind(bind)?.local_addr()?.port()
    };
    Ok(port)
}

/// Quotes a string for TOML (a JSON string is a valid TOML basic string).
fn toml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| String::from("\"\""))
}

impl ClusterLayout {
    /// Decides addresses and paths for `n` nodes under `dir` (which must be absolute). Inside
    /// the run's own namespace the ports are fixed; on the host they are picked free.
    pub fn plan(dir: &Path, n: usize, own_namespace: bool) -> Result<Self, HarnessError> {
        if !(1..=200).contains(&n) {
            return Err(HarnessError::Config(format!(
                "{n} nodes: addresses 127.0.0.11.. allow 1 to 200"
            )));
        }
        let certs = dir.join("certs");
        let mut nodes = Vec::with_capacity(n);
        for index in 0..n {
            let id = index as u64 + 1;
            let name = format!("n{id}");
            let addr = Ipv4Addr::new(127, 0, 0, 10 + id as u8);
            let (q, a) = if own_namespace {
                (NS_QUIC_PORT, NS_ADMIN_PORT)
            } else {
                (free_port(addr, true)?, free_port(addr, false)?)
            };
            let ndir = dir.join("nodes").join(&name);
            nodes.push(NodeLayout {
                index,
                id,
                addr,
                quic: SocketAddr::from((addr, q)),
                admin: SocketAddr::from((addr, a)),
                data_dir: ndir.join("data"),
                config: ndir.join("config.toml"),
                log: ndir.join("augur.log"),
                dir: ndir,
                name,
            });
        }
        Ok(ClusterLayout {
            nodes,
            client_tls: TlsFiles {
                ca: certs.join("ca.pem"),
                cert: certs.join("operator.pem"),
                key: certs.join("operator.key"),
            },
            certs,
        })
    }

    /// Endpoints of every node, in index order.
    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(NodeLayout::endpoint).collect()
    }

    /// The node with member id `id`.
    pub fn by_id(&self, id: MemberId) -> Option<&NodeLayout> {
        self.nodes.iter().find(|n| n.id == id.0)
    }

    /// Makes the CA, a member certificate per node (carrying its address) and the harness's
    /// operator certificate, with the binary under test's own `augur cert`, exactly as an
    /// operator would.
    pub fn make_certs(&self, augur: &Path) -> Result<(), HarnessError> {
        std::fs::create_dir_all(&self.certs)?;
        let certs = self.certs.as_os_str();
        augur_cmd(augur, |c| {
            c.args(["cert", "ca", "--out"]).arg(certs);
        })?;
        for n in &self.nodes {
            augur_cmd(augur, |c| {
                c.args(["cert", "member", "--ca-dir"])
                    .arg(certs)
                    .args(["--name", &n.name, "--host", &n.addr.to_string()])
                    .args(["--host", "localhost", "--out"])
                    .arg(certs);
            })?;
        }
        augur_cmd(augur, |c| {
            c.args(["cert", "operator", "--ca-dir"])
                .arg(certs)
                .args(["--name", "operator", "--out"])
                .arg(certs);
        })?;
        Ok(())
    }

    /// Writes every node's `config.toml`. With `bootstrap`, each lists all nodes as initial
    /// members (the founding set the harness then bootstraps once); without, none does. A node
    /// that starts with no data waits to be added either way: founding is an explicit act.
    pub fn write_configs(&self, bootstrap: bool) -> Result<(), HarnessError> {
        let initial: Vec<String> = self
            .nodes
            .iter()
            .map(|n| toml_str(&format!("{}={}", n.id, n.quic)))
            .collect();
        for n in &self.nodes {
            std::fs::create_dir_all(&n.dir)?;
            let members = if bootstrap {
                initial.join(", ")
            } else {
                String::new()
            };
            let text = format!(
                "# Written by augur-jepsen run.\n\
                 id = {id}\n\
                 listen = {listen}\n\
                 admin_listen = {admin}\n\
                 data_dir = {data}\n\
                 initial_members = [{members}]\n\n\
                 [tls]\n\
                 ca = {ca}\n\
                 cert = {cert}\n\
                 key = {key}\n",
                id = n.id,
                listen = toml_str(&n.quic.to_string()),
                admin = toml_str(&n.admin.to_string()),
                data = toml_str(&n.data_dir.to_string_lossy()),
                ca = toml_str(&self.certs.join("ca.pem").to_string_lossy()),
                cert = toml_str(&self.certs.join(format!("{}.pem", n.name)).to_string_lossy()),
                key = toml_str(&self.certs.join(format!("{}.key", n.name)).to_string_lossy()),
            );
            let tmp = n.config.with_extension("toml.tmp");
            std::fs::write(&tmp, text)?;
            std::fs::rename(&tmp, &n.config)?;
        }
        Ok(())
    }

    /// How to start node `index` (`env`: e.g. libfaketime's variables).
    pub fn process_spec(
        &self,
        index: usize,
        augur: &Path,
        env: Vec<(std::ffi::OsString, std::ffi::OsString)>,
    ) -> Result<ProcessSpec, HarnessError> {
        let n = self.node(index)?;
        Ok(ProcessSpec {
            name: n.name.clone(),
            program: augur.to_path_buf(),
            args: vec!["meta".into(), "--config".into(), n.config.clone().into()],
            env,
            cwd: Some(n.dir.clone()),
            log: n.log.clone(),
        })
    }

    /// Node `index`, or a typed error.
    pub fn node(&self, index: usize) -> Result<&NodeLayout, HarnessError> {
        self.nodes
            .get(index)
            .ok_or_else(|| HarnessError::Config(format!("no node {index}")))
    }
}

/// Runs `augur ...` to completion; a failure carries its stderr.
fn augur_cmd(augur: &Path, build: impl FnOnce(&mut Command)) -> Result<(), HarnessError> {
    let mut cmd = Command::new(augur);
    build(&mut cmd);
    let line = format!("{cmd:?}");
    let out = cmd
        .output()
        .map_err(|e| HarnessError::Setup(format!("{line}: {e}")))?;
    if !out.status.success() {
        return Err(HarnessError::Setup(format!(
            "{line} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// True when the node's `/health` answers 200: it knows a leader and has applied everything it
/// knows committed.
pub async fn healthy(node: &NodeLayout, timeout: Duration) -> bool {
    matches!(http::get(node.admin, "/health", timeout).await, Ok(r) if r.status == 200)
}

/// The node's `/v1/digest`.
pub async fn digest(node: &NodeLayout, timeout: Duration) -> Result<Digest, HarnessError> {
    let r = http::get(node.admin, "/v1/digest", timeout).await?;
    if r.status != 200 {
        return Err(HarnessError::Admin(format!(
            "{} /v1/digest answered {}: {}",
            node.name, r.status, r.body
        )));
    }
    serde_json::from_str(&r.body)
        .map_err(|e| HarnessError::Admin(format!("{} /v1/digest: {e}: {}", node.name, r.body)))
}

/// Every node's own view (over QUIC), `None` for nodes that do not answer.
pub async fn statuses(client: &Client, layout: &ClusterLayout) -> Vec<Option<ClusterStatus>> {
    let asks = layout.nodes.iter().map(|n| {
        let ep = n.endpoint();
        async move { client.status(Some(&ep)).await.ok() }
    });
    futures::future::join_all(asks).await
}

/// The leader as the cluster sees it: the one named by the answering node with the highest
/// term, as a node index. A stale leader that was partitioned away answers with a lower term.
pub fn leader_of(layout: &ClusterLayout, statuses: &[Option<ClusterStatus>]) -> Option<usize> {
    statuses
        .iter()
        .flatten()
        .filter(|s| s.leader.is_some())
        .max_by_key(|s| s.term)
        .and_then(|s| s.leader.as_ref())
        .and_then(|l| layout.by_id(l.id))
        .map(|n| n.index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_gives_each_node_its_own_address_and_files() {
        let l = ClusterLayout::plan(Path::new("/tmp/run"), 3, true).unwrap();
        assert_eq!(l.nodes[0].quic.to_string(), "127.0.0.11:7100");
        assert_eq!(l.nodes[2].admin.to_string(), "127.0.0.13:7200");
        assert_eq!(l.nodes[1].data_dir, Path::new("/tmp/run/nodes/n2/data"));
        assert!(ClusterLayout::plan(Path::new("/tmp/run"), 0, true).is_err());
        assert!(ClusterLayout::plan(Path::new("/tmp/run"), 201, true).is_err());
        assert_eq!(toml_str("a\"b\\c"), r#""a\"b\\c""#);
    }

    #[test]
    fn configs_bootstrap_only_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let l = ClusterLayout::plan(dir.path(), 3, true).unwrap();
        l.write_configs(true).unwrap();
        let text = std::fs::read_to_string(&l.nodes[0].config).unwrap();
        assert!(text.contains(r#"initial_members = ["1=127.0.0.11:7100", "2=127.0.0.12:7100", "3=127.0.0.13:7100"]"#), "{text}");
        l.write_configs(false).unwrap();
        let text = std::fs::read_to_string(&l.nodes[0].config).unwrap();
        assert!(text.contains("initial_members = []"), "{text}");
    }
}
