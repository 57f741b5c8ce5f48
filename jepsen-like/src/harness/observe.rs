//! Watching the cluster from outside during and after a run: health, the leader, recovery
//! after the final heal, and whether the replicas converged.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use augur_client::Client;
use augur_proto::{Op, Record, Setting, Txn};

use super::cluster::{self, ClusterLayout};
use super::ms;
use crate::results::{LeaderChange, NodeDigest};

/// Waits until every node answers `/health` with 200.
pub(super) async fn wait_all_healthy(
    layout: &ClusterLayout,
    deadline: Instant,
) -> Result<(), String> {
    loop {
        let checks = layout
            .nodes
            .iter()
            .map(|n| cluster::healthy(n, Duration::from_millis(500)));
        let results = futures::future::join_all(checks).await;
        let sick: Vec<&str> = layout
            .nodes
            .iter()
            .zip(&results)
            .filter(|(_, ok)| !**ok)
            .map(|(n, _)| n.name.as_str())
            .collect();
        if sick.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("not healthy: {}", sick.join(", ")));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls the leader every 250 ms and records each change, until `stop`.
pub(super) async fn watch_leader(
    client: Client,
    layout: Arc<ClusterLayout>,
    t0: Instant,
    stop: Arc<AtomicBool>,
    changes: Arc<Mutex<Vec<LeaderChange>>>,
) {
    let mut last: Option<Option<usize>> = None;
    while !stop.load(Ordering::Relaxed) {
        let statuses = cluster::statuses(&client, &layout).await;
        let leader = cluster::leader_of(&layout, &statuses);
        if last != Some(leader) {
            tracing::info!(leader = ?leader.map(|i| i + 1), "leader observed");
            changes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(LeaderChange {
                    at_ms: ms(t0.elapsed()),
                    leader,
                });
            last = Some(leader);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits for the cluster to serve after heal: every node healthy and a write committed.
pub(super) async fn wait_recovered(
    client: &Client,
    layout: &ClusterLayout,
    deadline: Instant,
) -> Result<(), String> {
    wait_all_healthy(layout, deadline).await?;
    let probe = Record::Setting(Setting {
        name: "jepsen-recovery-probe".into(),
        value: b"healed".to_vec(),
        version: 0,
    });
    let mut last = String::new();
    while Instant::now() < deadline {
        let txn = Txn {
            compares: Vec::new(),
            ops: vec![Op::Put(probe.clone())],
        };
        match client.txn(txn).await {
            Ok(_) => return Ok(()),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("no write committed after heal: {last}"))
}

/// Polls every node's digest until all agree or `deadline`; returns the last digests seen.
pub(super) async fn converge(
    layout: &ClusterLayout,
    deadline: Instant,
) -> (bool, Vec<NodeDigest>, Option<String>) {
    loop {
        let asks = layout
            .nodes
            .iter()
            .map(|n| cluster::digest(n, Duration::from_secs(2)));
        let answers = futures::future::join_all(asks).await;
        let mut digests = Vec::new();
        let mut errors = Vec::new();
        for (n, a) in layout.nodes.iter().zip(answers) {
            match a {
                Ok(d) => digests.push(NodeDigest {
                    node: n.name.clone(),
                    revision: d.revision,
                    records: d.records,
                    crc64: d.crc64,
                }),
                Err(e) => errors.push(e.to_string()),
            }
        }
        let distinct: HashSet<(u64, &str)> = digests
            .iter()
            .map(|d| (d.revision, d.crc64.as_str()))
            .collect();
        if errors.is_empty() && distinct.len() == 1 {
            return (true, digests, None);
        }
        if Instant::now() >= deadline {
            let detail = if errors.is_empty() {
                format!("{} different (revision, digest) pairs", distinct.len())
            } else {
                errors.join("; ")
            };
            return (false, digests, Some(detail));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
