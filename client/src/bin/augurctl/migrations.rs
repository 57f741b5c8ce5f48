//! `augurctl migrations [--watch]`: the shard moves the control plane recorded, with their
//! progress.
//!
//! Everything shown comes from the `Migration` records themselves (read linearizably), so it
//! is what the metadata leader will resume from, whichever member leads. Progress is what
//! the records measured: bytes copied of the bytes to move (set when the learner's copy is
//! complete, and exactly from the verified checkpoint at commit), the copy rate of the
//! latest step, and an ETA from both. Elapsed time compares the leader's wall clock (when
//! the copy started) with this machine's, so it is as good as the two clocks agree.

use crate::output::{age, bytes, now_ms};
use augur_client::Client;
use augur_proto::{Consistency, Migration, MigrationKind, MigrationState, Record, Table};
use clap::Args;
use std::collections::BTreeMap;
use std::time::Duration;

/// Options of `augurctl migrations`.
#[derive(Args, Debug, Clone)]
pub struct MigrationsArgs {
    /// Refresh until interrupted (Ctrl-C); with --json, one JSON document per refresh.
    #[arg(long)]
    watch: bool,
    /// Refresh interval for --watch, in milliseconds.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(100..))]
    interval_ms: u64,
    /// Also list finished (committed and aborted) migrations, newest first.
    #[arg(long)]
    all: bool,
}

const BAR: usize = 20;

fn state_name(s: MigrationState) -> &'static str {
    match s {
        MigrationState::Planned => "planned",
        MigrationState::Copying => "copying",
        MigrationState::CatchingUp => "catching-up",
        MigrationState::Cutover => "cutover",
        MigrationState::Committed => "committed",
        MigrationState::Aborted => "aborted",
    }
}

fn kind_name(k: MigrationKind) -> &'static str {
    match k {
        MigrationKind::Restore => "restore",
        MigrationKind::Drain => "drain",
        MigrationKind::Balance => "balance",
    }
}

fn active(m: &Migration) -> bool {
    !matches!(m.state, MigrationState::Committed | MigrationState::Aborted)
}

/// `[########------------]  40% 1.2 MiB/3.0 MiB`; a committed move is full, a move of
/// unknown size (no estimate of its shard yet) shows its bytes only.
fn progress(m: &Migration) -> String {
    let (done, total) = (m.bytes_copied, m.bytes_total);
    if total == 0 && m.state != MigrationState::Committed {
        return format!("[{}]   ? {}/?", "-".repeat(BAR), bytes(done));
    }
    let fraction = match (m.state, total) {
        (MigrationState::Committed, _) => 1.0,
        (_, 0) => 0.0,
        _ => (done as f64 / total as f64).clamp(0.0, 1.0),
    };
    let filled = (fraction * BAR as f64).round() as usize;
    format!(
        "[{}{}] {:>3.0}% {}/{}",
        "#".repeat(filled),
        "-".repeat(BAR - filled),
        fraction * 100.0,
        bytes(done),
        bytes(total)
    )
}

/// Seconds left at the recorded rate, if both are known.
fn eta_ms(m: &Migration) -> Option<u64> {
    if !active(m) || m.rate_bytes_per_s == 0 || m.bytes_total <= m.bytes_copied {
        return None;
    }
    Some((m.bytes_total - m.bytes_copied).saturating_mul(1000) / m.rate_bytes_per_s)
}

fn row(m: &Migration, now: u64) -> String {
    let rate = match m.rate_bytes_per_s {
        0 => "-".to_string(),
        r => format!("{}/s", bytes(r)),
    };
    let eta = eta_ms(m).map_or("-".to_string(), age);
    let elapsed = match (m.started_ms, active(m)) {
        (0, _) | (_, false) => "-".to_string(),
        (t, true) => age(now.saturating_sub(t)),
    };
    format!(
        "{:<6} {:<6} {:<5} {:<5} {:<8} {:<12} {:<44} {:<12} {:<8} {:<8} {:<3} {}",
        m.id.0,
        m.shard.0,
        m.from.0,
        m.to.0,
        kind_name(m.kind),
        state_name(m.state),
        progress(m),
        rate,
        elapsed,
        eta,
        m.attempts,
        m.reason
    )
}

fn header() -> String {
    format!(
        "{:<6} {:<6} {:<5} {:<5} {:<8} {:<12} {:<44} {:<12} {:<8} {:<8} {:<3} REASON",
        "ID", "SHARD", "FROM", "TO", "KIND", "STATE", "PROGRESS", "RATE", "ELAPSED", "ETA", "TRY"
    )
}

fn json(m: &Migration) -> serde_json::Value {
    serde_json::json!({
        "id": m.id.0,
        "shard": m.shard.0,
        "from": m.from.0,
        "to": m.to.0,
        "kind": kind_name(m.kind),
        "state": state_name(m.state),
        "bytes_copied": m.bytes_copied,
        "bytes_total": m.bytes_total,
        "rate_bytes_per_s": m.rate_bytes_per_s,
        "eta_ms": eta_ms(m),
        "started_ms": m.started_ms,
        "deadline_ms": m.deadline_ms,
        "attempts": m.attempts,
        "priority": m.priority,
        "reason": m.reason,
        "version": m.version,
    })
}

async fn read(c: &Client) -> anyhow::Result<(Vec<Migration>, u64)> {
    let (records, revision) = c.list(Table::Migrations, Consistency::Linearizable).await?;
    let migrations = records
        .into_iter()
        .filter_map(|r| match r {
            Record::Migration(m) => Some(m),
            _ => None,
        })
        .collect();
    Ok((migrations, revision))
}

/// The table (or JSON) for one reading.
fn render(all: &[Migration], revision: u64, show_finished: bool, as_json: bool) -> String {
    let mut shown: Vec<&Migration> = all.iter().filter(|m| show_finished || active(m)).collect();
    // In flight first (oldest first: they run in that order), then finished, newest first.
    shown.sort_by_key(|m| {
        (
            !active(m),
            if active(m) { m.id.0 } else { u64::MAX - m.id.0 },
        )
    });
    if as_json {
        let v: Vec<serde_json::Value> = shown.iter().map(|m| json(m)).collect();
        return serde_json::json!({"revision": revision, "migrations": v}).to_string();
    }
    let mut by_state: BTreeMap<&str, usize> = BTreeMap::new();
    for m in all {
        *by_state.entry(state_name(m.state)).or_default() += 1;
    }
    let rate: u64 = all
        .iter()
        .filter(|m| active(m))
        .map(|m| m.rate_bytes_per_s)
        .fold(0u64, u64::saturating_add);
    let now = now_ms();
    let mut out = header();
    for m in &shown {
        out.push('\n');
        out.push_str(&row(m, now));
    }
    let counts: Vec<String> = by_state.iter().map(|(s, n)| format!("{n} {s}")).collect();
    let counts = if counts.is_empty() {
        "none".to_string()
    } else {
        counts.join(", ")
    };
    out.push_str(&format!(
        "\n({} migration records: {counts}; moving {}/s; revision {revision})",
        all.len(),
        bytes(rate)
    ));
    out
}

/// Runs `augurctl migrations`.
pub async fn run(c: &Client, args: MigrationsArgs, as_json: bool) -> anyhow::Result<i32> {
    if !args.watch {
        let (all, revision) = read(c).await?;
        println!("{}", render(&all, revision, args.all, as_json));
        return Ok(0);
    }
    let interval = Duration::from_millis(args.interval_ms);
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        // A failed reading (a leader change, say) is shown and retried, not fatal.
        let text = match read(c).await {
            Ok((all, revision)) => render(&all, revision, args.all, as_json),
            Err(e) => format!("reading the migrations failed: {e:#} (retrying)"),
        };
        if as_json {
            println!("{text}");
        } else {
            // Clear the screen and home the cursor, then redraw.
            println!("\x1b[2J\x1b[H{text}");
        }
        tokio::select! {
            _ = &mut interrupted => return Ok(0),
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use augur_proto::{MigrationId, NodeId, ShardId};

    fn m(id: u64, state: MigrationState, copied: u64, total: u64, rate: u64) -> Migration {
        Migration {
            id: MigrationId(id),
            shard: ShardId(3),
            from: NodeId(2),
            to: NodeId(5),
            state,
            reason: "drain node 2".into(),
            priority: 0,
            deadline_ms: 0,
            bytes_copied: copied,
            bytes_total: total,
            attempts: 1,
            kind: MigrationKind::Drain,
            started_ms: 0,
            rate_bytes_per_s: rate,
            version: 9,
        }
    }

    #[test]
    fn progress_rate_and_eta_come_from_the_record() {
        let x = m(1, MigrationState::Copying, 1 << 20, 4 << 20, 1 << 20);
        assert!(progress(&x).starts_with("[#####---------------]  25%"));
        assert_eq!(eta_ms(&x), Some(3000));
        // Unknown size or rate: no ETA, an empty bar; committed: full.
        assert_eq!(eta_ms(&m(1, MigrationState::Copying, 0, 0, 0)), None);
        assert!(progress(&m(1, MigrationState::Planned, 0, 5, 0)).contains("  0%"));
        let unknown = progress(&m(1, MigrationState::Copying, 3 << 20, 0, 1 << 20));
        assert!(
            unknown.contains("   ? ") && unknown.ends_with("/?"),
            "{unknown}"
        );
        assert!(progress(&m(1, MigrationState::Committed, 5, 5, 9)).contains("100%"));
        assert_eq!(eta_ms(&m(1, MigrationState::Committed, 1, 5, 9)), None);
    }

    #[test]
    fn the_table_lists_moves_in_flight_first_and_counts_every_state() {
        let all = vec![
            m(1, MigrationState::Committed, 5, 5, 9),
            m(2, MigrationState::Aborted, 0, 5, 0),
            m(3, MigrationState::Copying, 0, 5, 0),
        ];
        let t = render(&all, 42, false, false);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        assert!(lines[1].starts_with("3 "));
        assert!(lines[2].contains("1 aborted, 1 committed, 1 copying"));
        let t = render(&all, 42, true, false);
        let ids: Vec<&str> = t.lines().skip(1).take(3).map(|l| &l[..1]).collect();
        assert_eq!(ids, vec!["3", "2", "1"]);
        let j: serde_json::Value = serde_json::from_str(&render(&all, 42, true, true)).unwrap();
        assert_eq!(j["migrations"].as_array().unwrap().len(), 3);
        assert_eq!(j["migrations"][0]["state"], "copying");
    }
}
