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

mod run_cmd;

use anyhow::Context;
use augur_jepsen::checker::{CheckOptions, CheckReport, Verdict};
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

#[derive(Subcommand)]
enum Command {
    /// Start a real cluster, inject faults while clients run, then check and report.
    Run(Box<run_cmd::RunArgs>),
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
        Command::Run(args) => run_cmd::run(*args),
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
