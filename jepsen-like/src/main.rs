//! `augur-jepsen`: run fault-injection tests against a real Augur cluster, check recorded
//! histories for linearizability and render reports.
//!
//! Exit codes of `check` / `report`: 0 every history linearizable; 1 some history not
//! linearizable; 2 no anomaly but some verdict unknown (budget exhausted); 3 some input could
//! not be read or decoded. `run` adds 4 (no progress after heal) and 5 (nodes diverged); see
//! `augur-jepsen run --help`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use augur_jepsen::checker::{CheckOptions, CheckReport, Verdict};
use augur_jepsen::harness::RunConfig;
use augur_jepsen::nemesis::schedule::parse_kinds;
use augur_jepsen::report::{render_html, ReportInput};
use augur_jepsen::results::RunResults;
use augur_jepsen::{check_history, load_history, InputFormat, ModelChoice};
use clap::{Parser, Subcommand, ValueEnum};
use serde::Serialize;

#[derive(Parser)]
#[command(
    name = "augur-jepsen",
    version,
    about = "Consistency checking for Augur"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum FormatArg {
    /// Jepsen's textual log.
    JepsenLog,
    /// Augur's history.jsonl.
    Jsonl,
}

#[derive(Clone, Copy, ValueEnum)]
enum ModelArg {
    /// Versioned register if any event has a version, else register.
    Auto,
    /// Plain read/write/cas register.
    Register,
    /// Versioned register (cas on version).
    Versioned,
}

#[derive(clap::Args)]
struct CheckArgs {
    /// Encoding of the history files.
    #[arg(long, value_enum, default_value = "jsonl")]
    format: FormatArg,
    /// Model to check against.
    #[arg(long, value_enum, default_value = "auto")]
    model: ModelArg,
    /// Time budget per file, in seconds; a search still running then answers `unknown`.
    #[arg(long, default_value_t = 60.0)]
    budget: f64,
    /// Checker threads (default: available cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Memory allowance per key being searched, in MiB; beyond it the key is `unknown`.
    #[arg(long, default_value_t = 512)]
    max_cache_mib: usize,
}

/// Flags of `augur-jepsen run`.
#[derive(clap::Args)]
#[command(after_help = RUN_HELP)]
struct RunArgs {
    /// Number of `augur meta` processes (3 to 9; 3 and 5 are the usual).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Length of the workload and fault period (e.g. 60s, 2m).
    #[arg(long, default_value = "60s", value_parser = augur_jepsen::harness::parse_duration)]
    time: Duration,
    /// Fault families, comma-separated: partition, kill, pause, clock, member, disk-loss.
    /// Empty (`--nemesis ''`) runs without faults.
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
    /// Client processes per node (each has its own client and reads through its home node).
    #[arg(long, default_value_t = 2)]
    clients_per_node: usize,
    /// Bound on one operation; past it the outcome is indeterminate (`info`).
    #[arg(long, default_value = "3s", value_parser = augur_jepsen::harness::parse_duration)]
    op_timeout: Duration,
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

Outputs in --out: history.jsonl, results.json, report.html, nodes/n<i>/{config.toml,data,augur.log}.

Exit codes (worst wins: 1 > 6 > 5 > 4 > 2 > 0):
  0  linearizable, nodes converged, cluster served again after heal
  1  anomaly: the history is not linearizable
  2  no anomaly, but the checker's budget ran out on some key (unknown)
  3  the run could not be carried out (bad flags, setup failure)
  4  no progress after heal (cluster did not serve again, or final reads failed)
  5  nodes did not converge (different revision, state digest or final values)
  6  a wiped member took part in Raft before the operator added it back (disk-loss, member)";

#[derive(Subcommand)]
enum Command {
    /// Start a real cluster, inject faults while clients run, then check and report.
    Run(Box<RunArgs>),
    /// Check history files; one verdict per file.
    Check {
        #[command(flatten)]
        args: CheckArgs,
        /// Print one JSON document with every file's full report instead of text.
        #[arg(long)]
        json: bool,
        /// Print each file's checking time and a summary (median, max, total).
        #[arg(long)]
        timing: bool,
        /// Print the anomaly (key, longest linearizable prefix, unorderable operations).
        #[arg(long)]
        explain: bool,
        /// History files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Check one history and render report.html (and optionally results.json) for it.
    Report {
        #[command(flatten)]
        args: CheckArgs,
        /// The history file.
        file: PathBuf,
        /// Where to write the HTML report.
        #[arg(long)]
        out: PathBuf,
        /// Also write results.json here.
        #[arg(long)]
        results: Option<PathBuf>,
        /// Draw the fault intervals recorded in this results.json (e.g. from a harness run).
        #[arg(long)]
        faults_from: Option<PathBuf>,
    },
}

impl CheckArgs {
    fn options(&self) -> anyhow::Result<CheckOptions> {
        anyhow::ensure!(
            self.budget.is_finite() && self.budget >= 0.0,
            "--budget must be a non-negative number of seconds"
        );
        let mut opts = CheckOptions {
            budget: Duration::from_secs_f64(self.budget.min(1e9)),
            max_cache_bytes: self.max_cache_mib.saturating_mul(1 << 20),
            ..CheckOptions::default()
        };
        if let Some(t) = self.threads {
            anyhow::ensure!(t > 0, "--threads must be at least 1");
            opts.threads = t;
        }
        Ok(opts)
    }
    fn format(&self) -> InputFormat {
        match self.format {
            FormatArg::JepsenLog => InputFormat::JepsenLog,
            FormatArg::Jsonl => InputFormat::Jsonl,
        }
    }
    fn model(&self) -> ModelChoice {
        match self.model {
            ModelArg::Auto => ModelChoice::Auto,
            ModelArg::Register => ModelChoice::Register,
            ModelArg::Versioned => ModelChoice::Versioned,
        }
    }
}

#[derive(Serialize)]
struct FileResult {
    file: String,
    /// `linearizable`, `not-linearizable`, `unknown` or `error`.
    verdict: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    report: Option<CheckReport>,
}

fn check(
    args: CheckArgs,
    json: bool,
    timing: bool,
    explain: bool,
    files: Vec<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let opts = args.options()?;
    let mut results = Vec::new();
    let mut times_ms = Vec::new();
    let mut worst = 0u8;
    for file in files {
        let name = file.display().to_string();
        let outcome = load_history(&file, args.format())
            .map_err(anyhow::Error::from)
            .and_then(|events| {
                check_history(&events, args.model(), &opts).map_err(anyhow::Error::from)
            })
            .with_context(|| format!("checking {name}"));
        let result = match outcome {
            Ok(report) => {
                let ms = report.elapsed_us as f64 / 1000.0;
                times_ms.push(ms);
                worst = worst.max(match report.verdict {
                    Verdict::Linearizable => 0,
                    Verdict::NotLinearizable => 1,
                    Verdict::Unknown => 2,
                });
                if !json {
                    let mut line = format!("{name}\t{}", report.verdict);
                    if timing {
                        line.push_str(&format!(
                            "\t{ms:.3} ms\t{} ops\t{} keys",
                            report.ops,
                            report.keys.len()
                        ));
                    }
                    println!("{line}");
                    if explain {
                        print_anomalies(&report);
                    }
                }
                FileResult {
                    file: name,
                    verdict: report.verdict.to_string(),
                    error: None,
                    report: Some(report),
                }
            }
            Err(e) => {
                worst = 3;
                if !json {
                    println!("{name}\terror");
                    eprintln!("error: {e:#}");
                }
                FileResult {
                    file: name,
                    verdict: "error".into(),
                    error: Some(format!("{e:#}")),
                    report: None,
                }
            }
        };
        results.push(result);
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "files": results }))?
        );
    } else if timing && !times_ms.is_empty() {
        times_ms.sort_by(f64::total_cmp);
        let median = times_ms[times_ms.len() / 2];
        let max = times_ms[times_ms.len() - 1];
        let total: f64 = times_ms.iter().sum();
        println!(
            "checked {} files: median {median:.3} ms, max {max:.3} ms, total {total:.3} ms",
            times_ms.len()
        );
    }
    // 1 (an anomaly) outranks 2 (unknown); 3 (bad input) outranks both.
    let code = match worst {
        3 => 3,
        1 => 1,
        2 => 2,
        _ => 0,
    };
    Ok(ExitCode::from(code))
}

fn report(
    args: CheckArgs,
    file: PathBuf,
    out: PathBuf,
    results: Option<PathBuf>,
    faults_from: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let opts = args.options()?;
    let recorded = match &faults_from {
        Some(path) => Some(RunResults::read(path)?),
        None => None,
    };
    let faults = recorded
        .as_ref()
        .map(|r| r.faults.clone())
        .unwrap_or_default();
    let events = load_history(&file, args.format())?;
    let check = check_history(&events, args.model(), &opts)?;
    let title = file.display().to_string();
    let html = render_html(&ReportInput {
        title: &title,
        events: &events,
        faults: &faults,
        check: Some(&check),
        time_unit_ns: match args.format() {
            InputFormat::Jsonl => Some(1),
            InputFormat::JepsenLog => None,
        },
        results: recorded.as_ref(),
    });
    std::fs::write(&out, html).with_context(|| format!("writing {}", out.display()))?;
    if let Some(path) = results {
        let mut r = RunResults::new(&events, &check);
        r.faults = faults.clone();
        if args.format() == InputFormat::JepsenLog {
            // A Jepsen log's times are event positions, not a clock.
            r.history.latency = None;
        }
        r.write(&path)?;
    }
    println!("{title}\t{}\treport {}", check.verdict, out.display());
    Ok(ExitCode::from(match check.verdict {
        Verdict::Linearizable => 0,
        Verdict::NotLinearizable => 1,
        Verdict::Unknown => 2,
    }))
}

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

fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let nemeses = parse_kinds(&args.nemesis).map_err(|e| anyhow::anyhow!("--nemesis: {e}"))?;
    let cfg = RunConfig {
        nodes: args.nodes,
        time: args.time,
        nemeses,
        seed: args.seed,
        out: args.out,
        augur_bin: match args.augur_bin {
            Some(p) => p,
            None => default_augur_bin()?,
        },
        keys: args.keys,
        ops_per_key: args.ops_per_key,
        clients_per_node: args.clients_per_node,
        op_timeout: args.op_timeout,
        think: args.think,
        min_period: args.min_period,
        max_period: args.max_period,
        recovery_timeout: args.recovery_timeout,
        check_budget: args.check_budget,
        max_skew_ms: args.max_skew_ms,
    };
    let out = cfg.out.clone();
    let outcome = augur_jepsen::harness::run(cfg).context("run")?;
    let r = &outcome.results;
    let o = r.history.outcomes;
    println!("run {}: {}", out.display(), outcome.exit.reason());
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

fn print_anomalies(report: &CheckReport) {
    for a in report.anomalies() {
        println!("  key {}: {}", a.key, a.reason);
        println!(
            "  longest linearizable prefix ({} ops), ending in state {}:",
            a.prefix.len(),
            a.state_after_prefix
        );
        for op in &a.prefix {
            println!("    #{:<5} p{:<4} {}", op.index, op.process, op.op);
        }
        println!("  operations that cannot be ordered next:");
        for op in &a.unorderable {
            let ret = op.ret.map_or("inf".to_string(), |r| r.to_string());
            println!(
                "    #{:<5} p{:<4} [{}, {ret}] {}",
                op.index, op.process, op.call, op.op
            );
        }
    }
}

fn main() -> ExitCode {
    // Behave like other Unix filters when the reader goes away (`| head`): die quietly on SIGPIPE
    // instead of panicking in println!.
    // SAFETY: restoring the default disposition installs no Rust code as a handler, and runs
    // before any thread is started.
    let _ = unsafe {
        nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGPIPE,
            nix::sys::signal::SigHandler::SigDfl,
        )
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    // Usage errors exit 3 ("could not be carried out"), not clap's default 2, which here means
    // "unknown verdict". --help and --version exit 0.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 3 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let result = match cli.command {
        Command::Run(args) => run(*args),
        Command::Check {
            args,
            json,
            timing,
            explain,
            files,
        } => check(args, json, timing, explain, files),
        Command::Report {
            args,
            file,
            out,
            results,
            faults_from,
        } => report(args, file, out, results, faults_from),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(3)
        }
    }
}
