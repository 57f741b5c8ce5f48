//! Partitions between processes that share one address: which UDP ports each process owns,
//! and a firewall that drops traffic between chosen (source port, destination port) pairs.
//!
//! `augur local` runs every member and storage node on 127.0.0.1, so the address-pair
//! firewall of [`super::partition`] cannot tell them apart. Ports can: a QUIC endpoint sends
//! from the port it is bound to, and each process's endpoints stay bound for its lifetime
//! (its server endpoint, which also dials its peers, and the ephemeral endpoint of each
//! client it holds, such as a storage node's metadata client). The ports of a process are
//! read from `/proc/<pid>/fd` (its socket inodes) and `/proc/<pid>/net/udp{,6}` (the inode's
//! local port), in the process's own network namespace. A restarted process has new
//! ephemeral ports, so a partition is computed from the ports at the moment it is applied.
//!
//! The nftables table (`inet augur_ports`, inside the run's namespace only) drops any UDP
//! packet whose `sport . dport` is in its set, in the `output` and `input` chains; changing
//! the partition is one atomic set update and healing is a set flush, as with the
//! address-pair firewall.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use super::{netns::NetNs, require, run, NemesisError};

/// Name of the nftables table.
pub const TABLE: &str = "augur_ports";
/// Name of the set of blocked port pairs.
pub const SET: &str = "blocked";

/// Most pairs one partition may block: a bound on the nft script, far above what a run of a
/// few processes with a few sockets each produces.
pub const MAX_PAIRS: usize = 100_000;

/// The UDP ports bound by the sockets process `pid` holds open.
///
/// A process that has exited (or a pid that was never ours) is an error: the caller then
/// cannot partition it, and says so.
pub fn udp_ports_of(pid: i32) -> Result<BTreeSet<u16>, NemesisError> {
    if pid <= 0 {
        return Err(NemesisError::Invalid(format!("pid {pid}")));
    }
    let mut inodes = BTreeSet::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let Ok(target) = std::fs::read_link(entry?.path()) else {
            continue; // closed meanwhile
        };
        if let Some(inode) = socket_inode(&target.to_string_lossy()) {
            inodes.insert(inode);
        }
    }
    let mut ports = BTreeSet::new();
    for table in ["udp", "udp6"] {
        let text = match std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e.into()),
        };
        ports.extend(
            parse_udp_table(&text)
                .into_iter()
                .filter(|(_, inode)| inodes.contains(inode))
                .map(|(port, _)| port),
        );
    }
    Ok(ports)
}

/// `socket:[12345]` -> 12345.
fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// (local port, inode) of every row of a `/proc/net/udp` table; malformed rows are skipped.
fn parse_udp_table(text: &str) -> Vec<(u16, u64)> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let local = cols.get(1)?;
            let port_hex = local.rsplit_once(':')?.1;
            let port = u16::from_str_radix(port_hex, 16).ok()?;
            let inode = cols.get(9)?.parse().ok()?;
            Some((port, inode))
        })
        .collect()
}

/// A set of blocked (source port, destination port) pairs, with a description for the report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortPartition {
    /// Packets from port `.0` to port `.1` are dropped.
    pub blocked: BTreeSet<(u16, u16)>,
}

impl PortPartition {
    /// No traffic between any port of `a` and any port of `b`, either way.
    pub fn split(a: &BTreeSet<u16>, b: &BTreeSet<u16>) -> Self {
        let mut blocked = BTreeSet::new();
        for &x in a {
            for &y in b {
                if x != y {
                    blocked.insert((x, y));
                    blocked.insert((y, x));
                }
            }
        }
        PortPartition { blocked }
    }

    /// Adds every pair of `other`.
    pub fn merge(&mut self, other: &PortPartition) {
        self.blocked.extend(other.blocked.iter().copied());
    }

    /// True when packets from port `a` to port `b` pass.
    pub fn allows(&self, a: u16, b: u16) -> bool {
        !self.blocked.contains(&(a, b))
    }
}

/// The nftables table enforcing port partitions inside one namespace.
#[derive(Debug)]
pub struct PortFirewall {
    namespace: String,
    ip: PathBuf,
    nft: PathBuf,
}

impl PortFirewall {
    /// Creates the table, set and chains in `ns`. Needs root, `ip` and `nft`.
    pub fn install(ns: &NetNs) -> Result<Self, NemesisError> {
        let tools = require("partition", &["ip", "nft"])?;
        let fw = PortFirewall {
            namespace: ns.name().to_string(),
            ip: tools[0].clone(),
            nft: tools[1].clone(),
        };
        let script = format!(
            "table inet {TABLE} {{\n\
             \x20 set {SET} {{\n    type inet_service . inet_service\n  }}\n\
             \x20 chain output {{\n    type filter hook output priority 0; policy accept;\n    udp sport . udp dport @{SET} drop\n  }}\n\
             \x20 chain input {{\n    type filter hook input priority 0; policy accept;\n    udp sport . udp dport @{SET} drop\n  }}\n\
             }}\n"
        );
        fw.nft_script(&script)?;
        Ok(fw)
    }

    fn nft(&self) -> Command {
        let mut c = Command::new(&self.ip);
        c.args(["netns", "exec"])
            .arg(&self.namespace)
            .arg(&self.nft);
        c
    }

    fn nft_script(&self, script: &str) -> Result<(), NemesisError> {
        run(self.nft().args(["-f", "-"]), Some(script))?;
        Ok(())
    }

    /// Replaces the blocked pairs with `p`'s, atomically (one nft transaction).
    pub fn apply(&self, p: &PortPartition) -> Result<(), NemesisError> {
        if p.blocked.len() > MAX_PAIRS {
            return Err(NemesisError::Invalid(format!(
                "{} port pairs exceed the bound of {MAX_PAIRS}",
                p.blocked.len()
            )));
        }
        let mut script = format!("flush set inet {TABLE} {SET}\n");
        if !p.blocked.is_empty() {
            let elems: Vec<String> = p
                .blocked
                .iter()
                .map(|(a, b)| format!("{a} . {b}"))
                .collect();
            script.push_str(&format!(
                "add element inet {TABLE} {SET} {{ {} }}\n",
                elems.join(", ")
            ));
        }
        self.nft_script(&script)?;
        tracing::info!(pairs = p.blocked.len(), "port partition applied");
        Ok(())
    }

    /// Removes every blocked pair.
    pub fn heal(&self) -> Result<(), NemesisError> {
        self.nft_script(&format!("flush set inet {TABLE} {SET}\n"))?;
        tracing::info!("port partition healed");
        Ok(())
    }

    /// How many pairs the kernel currently blocks, read back from nftables.
    pub fn blocked_count(&self) -> Result<usize, NemesisError> {
        let out = run(
            self.nft().args(["-j", "list", "set", "inet", TABLE, SET]),
            None,
        )?;
        let doc: serde_json::Value =
            serde_json::from_str(&out).map_err(|e| NemesisError::Command {
                command: "nft -j list set".into(),
                status: "unexpected output".into(),
                stderr: e.to_string(),
            })?;
        Ok(doc["nftables"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter_map(|i| i["set"]["elem"].as_array())
                    .map(Vec::len)
                    .sum()
            })
            .unwrap_or(0))
    }
}

impl Drop for PortFirewall {
    fn drop(&mut self) {
        if let Err(e) = self.nft_script(&format!("delete table inet {TABLE}\n")) {
            tracing::debug!(error = %e, "could not delete nftables table (namespace gone?)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_tables_parse_and_junk_is_skipped() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
                    \x20 1: 0100007F:1F90 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4242 2 0000000000000000 0\n\
                    garbage line\n\
                    \x20 2: 00000000:D431 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 77 2 0000000000000000 0\n";
        assert_eq!(parse_udp_table(text), vec![(8080, 4242), (54321, 77)]);
        assert_eq!(socket_inode("socket:[123]"), Some(123));
        assert_eq!(socket_inode("pipe:[123]"), None);
        assert_eq!(socket_inode("socket:[x]"), None);
    }

    #[test]
    fn this_process_owns_the_socket_it_binds() {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = sock.local_addr().unwrap().port();
        let ports = udp_ports_of(std::process::id() as i32).unwrap();
        assert!(ports.contains(&port), "{port} not in {ports:?}");
        assert!(udp_ports_of(0).is_err());
    }

    #[test]
    fn split_blocks_both_ways_and_only_across() {
        let a: BTreeSet<u16> = [1, 2].into();
        let b: BTreeSet<u16> = [3].into();
        let mut p = PortPartition::split(&a, &b);
        assert!(!p.allows(1, 3) && !p.allows(3, 1) && !p.allows(2, 3));
        assert!(p.allows(1, 2));
        assert_eq!(p.blocked.len(), 4);
        p.merge(&PortPartition::split(&[5].into(), &[6].into()));
        assert_eq!(p.blocked.len(), 6);
    }
}
