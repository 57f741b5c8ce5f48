//! `augur-jepsen run`: its flags and what it prints. The work is the library's
//! (`augur_jepsen::harness` for the metadata workload, `augur_jepsen::data` for the data
//! plane); this module only turns flags into a run configuration.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use augur_jepsen::harness::RunConfig;
use augur_jepsen::nemesis::schedule::parse_kinds;
use clap::ValueEnum;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum WorkloadArg {
    /// The metadata quorum's records.
    Meta,
    /// The data API of storage nodes.
    Data,
}

/// Flags of `augur-jepsen run`.
#[derive(clap::Args)]
#[command(after_help = RUN_HELP)]
pub(crate) struct RunArgs {
    /// What to test: `meta` (the metadata quorum's records, `augur meta` processes the
    /// harness starts itself) or `data` (the data API on an `augur local` cluster of members
    /// and storage nodes).
    #[arg(long, value_enum, default_value = "meta")]
    workload: WorkloadArg,
    /// Number of `augur meta` processes (3 to 9; 3 and 5 are the usual). Metadata workload
    /// only, default 3; the data workload takes --meta.
    #[arg(long)]
    nodes: Option<usize>,
    /// Data workload: metadata members (default 3; metadata faults need 3 or more).
    #[arg(long)]
    meta: Option<u64>,
    /// Data workload: storage nodes (default 5).
    #[arg(long)]
    storage: Option<u64>,
    /// Data workload: shards (default 16).
    #[arg(long)]
    shards: Option<u32>,
    /// Data workload: replicas per shard (default 3).
    #[arg(long)]
    rf: Option<u32>,
    /// Data workload: storage lease in ms written into the members' `[control]` tables, with
    /// heartbeat and grace period derived from it (default 2000; 0 keeps the members' defaults,
    /// a 6 s lease and 8 s grace).
    #[arg(long)]
    lease_ms: Option<u64>,
    /// Data workload: how long a Down storage node's replicas wait before they are re-created
    /// elsewhere, in ms (`augur local up --down-delay-ms`; default 2000).
    #[arg(long)]
    down_delay_ms: Option<u64>,
    /// Data workload: bound on one read at one storage node (default 1s).
    #[arg(long, value_parser = augur_jepsen::harness::parse_duration)]
    read_timeout: Option<Duration>,
    /// Length of the workload and fault period (e.g. 60s, 2m).
    #[arg(long, default_value = "60s", value_parser = augur_jepsen::harness::parse_duration)]
    time: Duration,
    /// Fault families, comma-separated: partition, kill, pause, clock, member, disk-loss;
    /// migrate (data workload only: drains storage nodes meanwhile). Empty (`--nemesis ''`)
    /// runs without faults.
    #[arg(long, default_value = "partition,kill,pause")]
    nemesis: String,
    /// Seed of the fault schedule and the clients' choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Run directory for history.jsonl, results.json, report.html, node data and logs.
    #[arg(long)]
    out: PathBuf,
    /// The `augur` binary under test. Default: the `augur` next to this executable (both come
    /// out of one `cargo build`), else `augur` on PATH. Copy it aside for long runs: a rebuild
    /// during a run would change what restarted nodes execute.
    #[arg(long, env = "AUGUR_BIN")]
    augur_bin: Option<PathBuf>,
    /// Keys in use at any one time (each retires after --ops-per-key operations).
    #[arg(long, default_value_t = 8)]
    keys: usize,
    /// Workload operations per key before a fresh key replaces it.
    #[arg(long, default_value_t = 200)]
    ops_per_key: u32,
    /// Client processes per node (each has its own client and reads through its home node);
    /// with the data workload, per storage node (half of them keep routes to unresponsive
    /// primaries, see README "Data-plane runs").
    #[arg(long, default_value_t = 2)]
    clients_per_node: usize,
    /// Bound on one operation; past it the outcome is indeterminate (`info`). Default 3s; 5s
    /// for the data workload (a write waits out a failover: lease, grace period, promotion).
    #[arg(long, value_parser = augur_jepsen::harness::parse_duration)]
    op_timeout: Option<Duration>,
    /// Mean pause between one process's operations (uniform in 0..2x); 0 for none.
    #[arg(long, default_value = "10ms", value_parser = augur_jepsen::harness::parse_duration)]
    think: Duration,
    /// Shortest quiet or fault period.
    #[arg(long, default_value = "3s", value_parser = augur_jepsen::harness::parse_duration)]
    min_period: Duration,
    /// Longest quiet or fault period.
    #[arg(long, default_value = "8s", value_parser = augur_jepsen::harness::parse_duration)]
    max_period: Duration,
    /// How long the cluster may take to serve again after the final heal.
    #[arg(long, default_value = "60s", value_parser = augur_jepsen::harness::parse_duration)]
    recovery_timeout: Duration,
    /// The checker's time budget; keys still searching then are `unknown`.
    #[arg(long, default_value = "120s", value_parser = augur_jepsen::harness::parse_duration)]
    check_budget: Duration,
    /// Largest clock skew or jump, in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    max_skew_ms: i64,
}

const RUN_HELP: &str = "\
Needs root for the network namespace and nftables (partitions) and libfaketime for clock
faults; without them those faults are recorded as not injected, never simulated.

Outputs in --out: history.jsonl, results.json, report.html, and the cluster's files:
nodes/n<i>/{config.toml,data,augur.log} (--workload meta) or cluster/ (--workload data: an
`augur local` directory with meta-N/ and storage-N/).

--workload data: registers on keys through the data API, reads at the primaries, faults
(partition, kill, pause, disk-loss) on storage nodes and metadata members at once, and with
migrate a storage node drained meanwhile; after heal every shard must be back at --rf with
equal checksums on its replicas, every migration Committed or Aborted, no node Draining, and no
acknowledged write may be lost (exit 1 if one is).

Exit codes (worst wins: 1 > 6 > 5 > 4 > 2 > 0):
  0  linearizable, nodes converged, cluster served again after heal
  1  anomaly: the history is not linearizable
  2  no anomaly, but the checker's budget ran out on some key (unknown)
  3  the run could not be carried out (bad flags, setup failure)
  4  no progress after heal (cluster did not serve again, or final reads failed)
  5  nodes did not converge (different revision, state digest or final values)
  6  a wiped member took part in Raft before the operator added it back (disk-loss, member)";

/// The `augur` built alongside this binary, else the one on PATH.
fn default_augur_bin() -> anyhow::Result<PathBuf> {
    let sibling = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("augur")))
        .filter(|p| p.is_file());
    sibling
        .or_else(|| augur_jepsen::nemesis::find_program("augur"))
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no augur binary next to this executable or on PATH; pass --augur-bin or set AUGUR_BIN"
            )
        })
}

pub(crate) fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let nemeses = parse_kinds(&args.nemesis).map_err(|e| anyhow::anyhow!("--nemesis: {e}"))?;
    let augur_bin = match args.augur_bin {
        Some(p) => p,
        None => default_augur_bin()?,
    };
    let out = args.out.clone();
    let outcome = if args.workload == WorkloadArg::Data {
        anyhow::ensure!(
            args.nodes.is_none(),
            "--nodes is for --workload meta; the data workload takes --meta and --storage"
        );
        let storage = args.storage.unwrap_or(5);
        let cfg = augur_jepsen::data::DataRunConfig {
            meta: args.meta.unwrap_or(3),
            storage,
            shards: args.shards.unwrap_or(16),
            rf: args.rf.unwrap_or(3),
            time: args.time,
            nemeses,
            seed: args.seed,
            out: args.out,
            augur_bin,
            keys: args.keys,
            ops_per_key: args.ops_per_key,
            clients: args
                .clients_per_node
                .saturating_mul(usize::try_from(storage).unwrap_or(usize::MAX)),
            op_timeout: args.op_timeout.unwrap_or(Duration::from_secs(5)),
            read_timeout: args.read_timeout.unwrap_or(Duration::from_secs(1)),
            think: args.think,
            min_period: args.min_period,
            max_period: args.max_period,
            recovery_timeout: args.recovery_timeout,
            check_budget: args.check_budget,
            lease_ms: args.lease_ms.unwrap_or(2_000),
            down_delay_ms: args.down_delay_ms.unwrap_or(2_000),
        };
        augur_jepsen::data::run(cfg).context("run")?
    } else {
        let data_only = [
            ("--meta", args.meta.is_some()),
            ("--storage", args.storage.is_some()),
            ("--shards", args.shards.is_some()),
            ("--rf", args.rf.is_some()),
            ("--lease-ms", args.lease_ms.is_some()),
            ("--down-delay-ms", args.down_delay_ms.is_some()),
            ("--read-timeout", args.read_timeout.is_some()),
        ];
        if let Some((flag, _)) = data_only.iter().find(|(_, given)| *given) {
            anyhow::bail!("{flag} is for --workload data");
        }
        let cfg = RunConfig {
            nodes: args.nodes.unwrap_or(3),
            time: args.time,
            nemeses,
            seed: args.seed,
            out: args.out,
            augur_bin,
            keys: args.keys,
            ops_per_key: args.ops_per_key,
            clients_per_node: args.clients_per_node,
            op_timeout: args.op_timeout.unwrap_or(Duration::from_secs(3)),
            think: args.think,
            min_period: args.min_period,
            max_period: args.max_period,
            recovery_timeout: args.recovery_timeout,
            check_budget: args.check_budget,
            max_skew_ms: args.max_skew_ms,
        };
        augur_jepsen::harness::run(cfg).context("run")?
    };
    let r = &outcome.results;
    let o = r.history.outcomes;
    let reason = r
        .run
        .as_ref()
        .map_or(outcome.exit.reason(), |run| run.exit_reason.as_str());
    println!("run {}: {reason}", out.display());
    println!(
        "  operations {:?}; ok {} fail {} info {}",
        r.history.ops_by_kind, o.ok, o.fail, o.info
    );
    if let Some(l) = r.history.latency {
        println!("  latency p50 {:.1} ms, p99 {:.1} ms", l.p50_ms, l.p99_ms);
    }
    let injected = r.faults.iter().filter(|f| f.injected).count();
    println!(
        "  faults injected {injected}, not injected {}; leader changes {}",
        r.faults.len() - injected,
        augur_jepsen::results::leader_moves(&r.leader_changes)
    );
    if let Some(run) = &r.run {
        for (nemesis, why) in &run.unavailable {
            println!("  {nemesis} not injected: {why}");
        }
        for v in &run.wiped_member_violations {
            println!("  wiped member rejoined: {v}");
        }
        println!(
            "  recovery after heal {}; converged {}",
            r.recovery_ms
                .map_or("none".to_string(), |m| format!("{m} ms")),
            run.convergence.converged
        );
        if let Some(d) = &run.data {
            println!(
                "  shards back at rf {} after {}; {} replica checksums compared, {} shards \
                 differ, {} under-replicated; {} acknowledged writes lost",
                d.rf,
                d.replicated_after_ms
                    .map_or("never".to_string(), |m| format!("{m} ms")),
                run.convergence.nodes.len(),
                d.mismatches.len(),
                d.under_replicated.len(),
                d.lost_writes.len()
            );
            for line in d.lost_writes.iter().chain(&d.mismatches).take(10) {
                println!("    {line}");
            }
            for m in &d.migrate {
                println!(
                    "  migrate storage-{} at {} ms ({}): led {}, held {}; moves {} planned, {} \
                     committed, {} aborted, {} unfinished; emptied {}",
                    m.node,
                    m.start_ms,
                    if m.finish {
                        "left to finish"
                    } else {
                        "undrained at heal"
                    },
                    m.primaries_at_drain,
                    m.replicas_at_drain,
                    m.moves_planned,
                    m.moves_committed,
                    m.moves_aborted,
                    m.moves_unfinished,
                    m.emptied
                );
            }
            for line in d
                .unfinished_migrations
                .iter()
                .chain(&d.draining_nodes)
                .take(10)
            {
                println!("    not at rest: {line}");
            }
        }
    }
    println!(
        "  checker: {} keys, verdict {}, {} anomalies, {:.1} ms",
        r.keys_checked,
        r.verdict,
        r.anomalies.len(),
        r.checker_ms
    );
    println!("  report {}", out.join("report.html").display());
    Ok(ExitCode::from(outcome.exit.code()))
}
