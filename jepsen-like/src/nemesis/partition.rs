//! Network partitions: which (source, destination) address pairs may not talk, and a firewall
//! that enforces them with one nftables set inside the run's namespace.
//!
//! The table has an `input` and an `output` chain that drop any packet whose
//! `ip saddr . ip daddr` is in the set, so changing the partition is one atomic set update and
//! healing is a set flush. Nodes must send from their own 127.0.0.x address (bind before
//! connecting, as a QUIC endpoint bound to its address does), otherwise the kernel picks
//! 127.0.0.1 as source and the rules cannot tell nodes apart.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;

use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::{netns::NetNs, require, run, NemesisError};

/// The shapes of partition a run can choose from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PartitionKind {
    /// One random node cut off from all others.
    IsolateOne,
    /// A random minority cut off from the majority.
    Halves,
    /// Every node sees a majority, but no two nodes see the same majority.
    MajoritiesRing,
    /// The current leader (given by the caller) cut off from all others.
    IsolateLeader,
    /// One random node cannot send to the others, but still receives from them.
    OneWay,
}

impl PartitionKind {
    /// All kinds, for random choice.
    pub const ALL: [PartitionKind; 5] = [
        PartitionKind::IsolateOne,
        PartitionKind::Halves,
        PartitionKind::MajoritiesRing,
        PartitionKind::IsolateLeader,
        PartitionKind::OneWay,
    ];

    /// Builds a concrete partition of `nodes`. `leader` is required for `IsolateLeader`.
    pub fn build(
        self,
        nodes: &[Ipv4Addr],
        leader: Option<Ipv4Addr>,
        rng: &mut impl Rng,
    ) -> Result<Partition, NemesisError> {
        if nodes.len() < 2 {
            return Err(NemesisError::Invalid(
                "a partition needs at least 2 nodes".into(),
            ));
        }
        let pick = |rng: &mut _| *nodes.choose(rng).unwrap_or(&nodes[0]);
        Ok(match self {
            PartitionKind::IsolateOne => Partition::isolate(pick(rng), nodes),
            PartitionKind::IsolateLeader => {
                let leader = leader
                    .ok_or_else(|| NemesisError::Control("no known leader to isolate".into()))?;
                if !nodes.contains(&leader) {
                    return Err(NemesisError::Invalid(format!(
                        "leader {leader} is not a node"
                    )));
                }
                Partition::isolate(leader, nodes)
            }
            PartitionKind::Halves => {
                let mut shuffled = nodes.to_vec();
                shuffled.shuffle(rng);
                let (minority, majority) = shuffled.split_at(nodes.len() / 2);
                Partition::split(minority, majority)
            }
            PartitionKind::MajoritiesRing => {
                let mut shuffled = nodes.to_vec();
                shuffled.shuffle(rng);
                Partition::majorities_ring(&shuffled)
            }
            PartitionKind::OneWay => {
                let from = pick(rng);
                let others: Vec<Ipv4Addr> = nodes.iter().copied().filter(|&n| n != from).collect();
                Partition::one_way(&[from], &others)
            }
        })
    }
}

/// A set of blocked (source, destination) pairs, with a description for the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partition {
    /// Packets from `.0` to `.1` are dropped.
    pub blocked: BTreeSet<(Ipv4Addr, Ipv4Addr)>,
    /// What it is, e.g. `isolate 127.0.0.2`.
    pub description: String,
}

impl Partition {
    /// `node` can neither send to nor receive from the rest of `all`.
    pub fn isolate(node: Ipv4Addr, all: &[Ipv4Addr]) -> Self {
        let others: Vec<Ipv4Addr> = all.iter().copied().filter(|&n| n != node).collect();
        let mut p = Self::split(&[node], &others);
        p.description = format!("isolate {node}");
        p
    }

    /// No traffic between group `a` and group `b`, either way.
    pub fn split(a: &[Ipv4Addr], b: &[Ipv4Addr]) -> Self {
        let mut blocked = BTreeSet::new();
        for &x in a {
            for &y in b {
                if x != y {
                    blocked.insert((x, y));
                    blocked.insert((y, x));
                }
            }
        }
        Partition {
            blocked,
            description: format!("split {} | {}", join(a), join(b)),
        }
    }

    /// Packets from any of `from` to any of `to` are dropped; the reverse direction flows.
    pub fn one_way(from: &[Ipv4Addr], to: &[Ipv4Addr]) -> Self {
        let blocked = from
            .iter()
            .flat_map(|&x| to.iter().filter(move |&&y| y != x).map(move |&y| (x, y)))
            .collect();
        Partition {
            blocked,
            description: format!("one-way {} -/-> {}", join(from), join(to)),
        }
    }

    /// Nodes in ring order each see their nearest neighbours, enough to form a majority
    /// (themselves included), and nothing further. With 5 nodes each sees 3, and no two see the
    /// same 3; with fewer than 5 nodes every majority overlaps and the ring blocks nothing.
    pub fn majorities_ring(ring: &[Ipv4Addr]) -> Self {
        let n = ring.len();
        let majority = n / 2 + 1;
        // Reach on each side so that 1 + 2 * reach >= majority.
        let reach = (majority.saturating_sub(1)).div_ceil(2);
        let mut blocked = BTreeSet::new();
        for i in 0..n {
            for j in 0..n {
                let d = i.abs_diff(j);
                let ring_distance = d.min(n - d);
                if ring_distance > reach {
                    blocked.insert((ring[i], ring[j]));
                }
            }
        }
        Partition {
            blocked,
            description: format!("majorities ring {}", join(ring)),
        }
    }

    /// True when packets from `a` to `b` pass.
    pub fn allows(&self, a: Ipv4Addr, b: Ipv4Addr) -> bool {
        !self.blocked.contains(&(a, b))
    }
}

fn join(addrs: &[Ipv4Addr]) -> String {
    addrs
        .iter()
        .map(Ipv4Addr::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Name of the nftables table the harness owns inside its namespace.
pub const TABLE: &str = "augur_nemesis";
/// Name of the set of blocked pairs.
pub const SET: &str = "blocked";

/// The nftables table enforcing partitions inside one namespace.
#[derive(Debug)]
pub struct Firewall {
    namespace: String,
    ip: PathBuf,
    nft: PathBuf,
}

impl Firewall {
    /// Creates the table, set and chains in `ns`. Needs root, `ip` and `nft`.
    pub fn install(ns: &NetNs) -> Result<Self, NemesisError> {
        let tools = require("partition", &["ip", "nft"])?;
        let fw = Firewall {
            namespace: ns.name().to_string(),
            ip: tools[0].clone(),
            nft: tools[1].clone(),
        };
        let script = format!(
            "table inet {TABLE} {{\n\
             \x20 set {SET} {{\n    type ipv4_addr . ipv4_addr\n  }}\n\
             \x20 chain output {{\n    type filter hook output priority 0; policy accept;\n    ip saddr . ip daddr @{SET} drop\n  }}\n\
             \x20 chain input {{\n    type filter hook input priority 0; policy accept;\n    ip saddr . ip daddr @{SET} drop\n  }}\n\
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
    pub fn apply(&self, p: &Partition) -> Result<(), NemesisError> {
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
        tracing::info!(partition = %p.description, pairs = p.blocked.len(), "partition applied");
        Ok(())
    }

    /// Removes every blocked pair.
    pub fn heal(&self) -> Result<(), NemesisError> {
        self.nft_script(&format!("flush set inet {TABLE} {SET}\n"))?;
        tracing::info!("partition healed");
        Ok(())
    }

    /// The pairs the kernel currently blocks, read back from nftables.
    pub fn blocked(&self) -> Result<BTreeSet<(Ipv4Addr, Ipv4Addr)>, NemesisError> {
        let out = run(
            self.nft().args(["-j", "list", "set", "inet", TABLE, SET]),
            None,
        )?;
        let bad = |why: &str| NemesisError::Command {
            command: "nft -j list set".into(),
            status: "unexpected output".into(),
            stderr: why.to_string(),
        };
        let doc: serde_json::Value = serde_json::from_str(&out).map_err(|e| bad(&e.to_string()))?;
        let mut pairs = BTreeSet::new();
        let items = doc["nftables"]
            .as_array()
            .ok_or_else(|| bad("no nftables array"))?;
        for item in items {
            let Some(elems) = item["set"]["elem"].as_array() else {
                continue;
            };
            for e in elems {
                let concat = e["concat"]
                    .as_array()
                    .ok_or_else(|| bad("element is not a concatenation"))?;
                let addr = |i: usize| -> Result<Ipv4Addr, NemesisError> {
                    concat
                        .get(i)
                        .and_then(|v| v.as_str())
                        .and_then(|s| s.parse().ok())
                        .ok_or_else(|| bad("element is not an address pair"))
                };
                pairs.insert((addr(0)?, addr(1)?));
            }
        }
        Ok(pairs)
    }
}

impl Drop for Firewall {
    fn drop(&mut self) {
        if let Err(e) = self.nft_script(&format!("delete table inet {TABLE}\n")) {
            tracing::debug!(error = %e, "could not delete nftables table (namespace gone?)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn nodes(n: u8) -> Vec<Ipv4Addr> {
        (0..n).map(|i| Ipv4Addr::new(127, 0, 0, 2 + i)).collect()
    }

    fn sees(p: &Partition, a: Ipv4Addr, all: &[Ipv4Addr]) -> BTreeSet<Ipv4Addr> {
        all.iter()
            .copied()
            .filter(|&b| b == a || (p.allows(a, b) && p.allows(b, a)))
            .collect()
    }

    #[test]
    fn majorities_ring_gives_everyone_a_distinct_majority() {
        for n in [5u8, 6, 7, 9] {
            let all = nodes(n);
            let p = Partition::majorities_ring(&all);
            let views: Vec<BTreeSet<Ipv4Addr>> = all.iter().map(|&a| sees(&p, a, &all)).collect();
            for v in &views {
                assert!(
                    v.len() > all.len() / 2,
                    "n={n}: a node sees only {}",
                    v.len()
                );
            }
            if n == 5 {
                let distinct: BTreeSet<_> = views.iter().collect();
                assert_eq!(
                    distinct.len(),
                    views.len(),
                    "n=5: two nodes share a majority"
                );
            }
        }
    }

    #[test]
    fn shapes_block_what_they_say() {
        let all = nodes(5);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let iso = PartitionKind::IsolateLeader
            .build(&all, Some(all[2]), &mut rng)
            .unwrap();
        assert_eq!(sees(&iso, all[2], &all).len(), 1);
        assert_eq!(sees(&iso, all[0], &all).len(), 4);
        let halves = PartitionKind::Halves.build(&all, None, &mut rng).unwrap();
        let mut sizes: Vec<usize> = all.iter().map(|&a| sees(&halves, a, &all).len()).collect();
        sizes.sort();
        assert_eq!(sizes, [2, 2, 3, 3, 3]);
        let ow = Partition::one_way(&[all[0]], &all[1..]);
        assert!(!ow.allows(all[0], all[1]) && ow.allows(all[1], all[0]));
        assert!(matches!(
            PartitionKind::IsolateLeader.build(&all, None, &mut rng),
            Err(NemesisError::Control(_))
        ));
    }
}
