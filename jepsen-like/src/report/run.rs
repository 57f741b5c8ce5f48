//! The parts of `report.html` only a cluster run has: the summary table above the timeline,
//! and the clients, the nodes' end state, heal errors and wiped-member violations below it.

use std::fmt::Write as _;

use super::esc;
use crate::results::RunResults;

/// The headline figures of a run, as a table above the timeline.
pub(super) fn summary_html(r: &RunResults) -> String {
    let mut rows: Vec<(String, String)> = Vec::new();
    if let Some(seed) = r.seed {
        rows.push(("seed".into(), seed.to_string()));
    }
    if let Some(run) = &r.run {
        let nodes = match &run.data {
            Some(d) => format!(
                "{} metadata members + {} storage nodes, {} shards at rf {}, lease {} ms, \
                 grace {} ms{}",
                d.meta,
                d.storage,
                d.shards,
                d.rf,
                d.lease_ms,
                d.grace_ms,
                if d.unsafe_skip_lease_check {
                    " (UNSAFE: primaries skip the lease check)"
                } else {
                    ""
                }
            ),
            None => format!("{} nodes", run.nodes),
        };
        rows.push((
            "cluster".into(),
            format!(
                "{nodes}, nemeses {}, {} s, binary {}",
                run.nemeses.join(","),
                run.duration_ms / 1000,
                run.augur_bin
            ),
        ));
        rows.push((
            "exit".into(),
            format!("{} ({})", run.exit_code, run.exit_reason),
        ));
    }
    let ops: Vec<String> = r
        .history
        .ops_by_kind
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    rows.push(("operations".into(), ops.join(", ")));
    let o = r.history.outcomes;
    rows.push((
        "outcomes".into(),
        format!("ok {}, fail {}, info {}", o.ok, o.fail, o.info),
    ));
    if let Some(l) = r.history.latency {
        rows.push((
            "latency (ok + fail)".into(),
            format!(
                "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                l.p50_ms, l.p99_ms, l.max_ms
            ),
        ));
    }
    let injected = r.faults.iter().filter(|f| f.injected).count();
    rows.push((
        "faults".into(),
        format!(
            "{injected} injected, {} not injected",
            r.faults.len() - injected
        ),
    ));
    if let Some(slowest) = r.faults.iter().filter_map(|f| f.recovered_after_ms).max() {
        rows.push((
            "slowest recovery after a fault's heal".into(),
            format!("{slowest} ms (first write invoked after the heal that succeeded)"),
        ));
    }
    rows.push((
        "leader changes".into(),
        format!(
            "{} (leadership moved; {} observations incl. periods without a leader)",
            crate::results::leader_moves(&r.leader_changes),
            r.leader_changes.len()
        ),
    ));
    rows.push((
        "recovery after heal".into(),
        r.recovery_ms
            .map_or("did not recover".into(), |m| format!("{m} ms")),
    ));
    rows.push((
        "checker".into(),
        format!(
            "{} keys, {} unknown, {} anomalies, {:.1} ms",
            r.keys_checked,
            r.keys_unknown.len(),
            r.anomalies.len(),
            r.checker_ms
        ),
    ));
    if let Some(run) = &r.run {
        let c = &run.convergence;
        rows.push((
            "convergence".into(),
            if let (true, Some(d)) = (c.converged, &run.data) {
                format!(
                    "converged: every shard back at rf {} ({}), {} replicas equal at their \
                     checkpoints; {} keys read after heal",
                    d.rf,
                    d.replicated_after_ms
                        .map_or("-".into(), |m| format!("{m} ms after heal")),
                    c.nodes.len(),
                    c.keys_read
                )
            } else if c.converged {
                format!(
                    "converged: {} keys read on every node, revision {} everywhere",
                    c.keys_read,
                    c.nodes.first().map_or(0, |n| n.revision)
                )
            } else {
                format!(
                    "NOT converged: {}",
                    c.detail.as_deref().unwrap_or("see below")
                )
            },
        ));
        if let Some(d) = run.data.as_ref().filter(|d| !d.lost_writes.is_empty()) {
            rows.push((
                "lost writes".into(),
                format!(
                    "{} acknowledged writes not in the final reads (listed below)",
                    d.lost_writes.len()
                ),
            ));
        }
        if !run.wiped_member_violations.is_empty() {
            rows.push((
                "wiped members".into(),
                format!(
                    "REJOINED before being added back: {} observations (listed below)",
                    run.wiped_member_violations.len()
                ),
            ));
        }
        for (nemesis, why) in &run.unavailable {
            rows.push((format!("{nemesis} not injected"), why.clone()));
        }
    }
    let mut html = String::from("<table class=\"summary\">");
    for (k, v) in rows {
        let _ = write!(html, "<tr><th>{}</th><td>{}</td></tr>", esc(&k), esc(&v));
    }
    html.push_str("</table>\n");
    html
}

/// Clients' progress and the per-node end state, below the timeline.
pub(super) fn run_details_html(r: &RunResults) -> String {
    let Some(run) = &r.run else {
        return String::new();
    };
    let mut html = String::from("<h2>Clients</h2><table><tr><th>worker</th><th>home node</th><th>process ids</th><th>ok</th><th>fail</th><th>info</th><th>reads ok</th><th>writes ok</th></tr>");
    for w in &run.workers {
        let procs: Vec<String> = w.processes.iter().map(u64::to_string).collect();
        let cls = if w.ok == 0 { " class=\"bad\"" } else { "" };
        let _ = write!(
            html,
            "<tr{cls}><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            w.worker,
            esc(&w.home_node),
            esc(&procs.join(" ")),
            w.ok,
            w.fail,
            w.info,
            w.reads_ok,
            w.writes_ok
        );
    }
    html.push_str(if run.data.is_some() {
        "</table>\n<h2>Shard replicas after heal</h2><table><tr><th>replica</th><th>checkpoint sequence</th><th>keys</th><th>CRC-64</th></tr>"
    } else {
        "</table>\n<h2>Nodes after heal</h2><table><tr><th>node</th><th>revision</th><th>records</th><th>state CRC-64</th></tr>"
    });
    for n in &run.convergence.nodes {
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
            esc(&n.node),
            n.revision,
            n.records,
            esc(&n.crc64)
        );
    }
    html.push_str("</table>\n");
    let none = Vec::new();
    let (lost, under) = run
        .data
        .as_ref()
        .map_or((&none, &none), |d| (&d.lost_writes, &d.under_replicated));
    for (title, list) in [
        ("Acknowledged writes lost", lost),
        ("Shards not back at their replication factor", under),
        (
            if run.data.is_some() {
                "Shards whose replicas differ or could not be compared"
            } else {
                "Keys read differently on different nodes"
            },
            &run.convergence.disagreements,
        ),
        (
            "Final reads that never succeeded",
            &run.convergence.missing_reads,
        ),
        ("Heal errors", &run.heal_errors),
        (
            "Wiped members that took part in Raft before being added back",
            &run.wiped_member_violations,
        ),
    ] {
        if list.is_empty() {
            continue;
        }
        let _ = write!(html, "<h2 class=\"bad\">{}</h2><ul>", esc(title));
        for item in list.iter().take(200) {
            let _ = write!(html, "<li>{}</li>", esc(item));
        }
        if list.len() > 200 {
            let _ = write!(html, "<li>... {} more</li>", list.len() - 200);
        }
        html.push_str("</ul>\n");
    }
    html
}
