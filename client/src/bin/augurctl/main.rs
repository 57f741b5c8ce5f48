//! `augurctl`: inspect and change an Augur cluster: its metadata, its storage nodes and
//! shards, and the keys they hold.
//!
//! Tables for people by default, `--json` for scripts. Exit status 0 on success, 1 on any
//! error, 2 on usage errors; a compare-and-set that lost its race exits 3 so scripts can
//! tell, and a write whose outcome is unknown exits 4.
//!
//! - `meta`: status, bootstrap, membership, settings, watch;
//! - `shards`: shard and storage-node records, creating the data plane;
//! - `kv`: keys, through the data API;
//! - `health`: a storage node's health and fault injection, through its admin endpoint;
//! - `migrations`: shard moves and their progress;
//! - `output`: formatting shared by the others.

mod health;
mod kv;
mod meta;
mod migrations;
mod nodes;
mod output;
mod shards;

use anyhow::{bail, Context};
use augur_client::{CasOutcome, Client, ClientConfig, TlsFiles};
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "augurctl",
    version,
    about = "Inspect and change an Augur cluster: metadata, storage nodes, shards and keys"
)]
struct Cli {
    /// Cluster file (as written by `augur local up`).
    #[arg(long, env = "AUGUR_CLUSTER", conflicts_with = "endpoints")]
    cluster: Option<PathBuf>,
    /// Metadata endpoints, comma-separated (with --ca, --cert, --key).
    #[arg(long, value_delimiter = ',', requires_all = ["ca", "cert", "key"])]
    endpoints: Vec<String>,
    /// Cluster CA certificate.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Client certificate.
    #[arg(long)]
    cert: Option<PathBuf>,
    /// Client key.
    #[arg(long)]
    key: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Every member's view of the cluster.
    Status,
    /// Found a new metadata cluster from the members' `initial_members`: once, when the
    /// founding members are first started (an operator certificate is needed).
    Bootstrap {
        /// The member to ask (default: the first endpoint).
        #[arg(long)]
        endpoint: Option<String>,
        /// Seconds (at most a day) to keep trying while the founding members start.
        #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
        timeout: u64,
    },
    /// Raft membership.
    #[command(subcommand)]
    Members(meta::MembersCmd),
    /// The data plane as a whole.
    #[command(subcommand)]
    Cluster(shards::ClusterCmd),
    /// Shard records.
    #[command(subcommand)]
    Shard(shards::ShardCmd),
    /// Storage-node records.
    #[command(subcommand)]
    Node(nodes::NodeCmd),
    /// Keys and values, through the storage nodes.
    Kv(kv::KvCmd),
    /// Shard moves (re-replication, drains) and their progress.
    Migrations(migrations::MigrationsArgs),
    /// Cluster settings.
    #[command(subcommand)]
    Setting(meta::SettingCmd),
    /// Print changes as they are applied.
    Watch {
        /// Tables to watch (default: all).
        #[arg(long = "table", value_enum)]
        tables: Vec<meta::TableArg>,
        /// First revision to print (default: from now).
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Stop after this many revisions.
        #[arg(long)]
        count: Option<u64>,
    },
}

/// `absent` -> None, a number -> Some(version).
fn parse_expect(s: &str) -> anyhow::Result<Option<u64>> {
    match s {
        "absent" => Ok(None),
        v => Ok(Some(v.parse().with_context(|| {
            format!("--expect must be a version number or `absent`, got {v:?}")
        })?)),
    }
}

fn client(cli: &Cli) -> anyhow::Result<Client> {
    let cfg = match (&cli.cluster, cli.endpoints.is_empty()) {
        (Some(path), _) => ClientConfig::from_cluster_file(path)?,
        (None, false) => ClientConfig::new(
            cli.endpoints.clone(),
            TlsFiles {
                ca: cli.ca.clone().context("--ca")?,
                cert: cli.cert.clone().context("--cert")?,
                key: cli.key.clone().context("--key")?,
            },
        ),
        (None, true) => {
            bail!("give --cluster FILE (or AUGUR_CLUSTER) or --endpoints with --ca/--cert/--key")
        }
    };
    Ok(Client::new(cfg)?)
}

async fn run(cli: Cli) -> anyhow::Result<i32> {
    let c = client(&cli)?;
    let json = cli.json;
    match cli.cmd {
        Cmd::Status => meta::status(&c, json).await,
        Cmd::Bootstrap { endpoint, timeout } => meta::bootstrap(&c, endpoint, timeout).await,
        Cmd::Members(m) => meta::members(&c, m, json).await,
        Cmd::Cluster(cmd) => shards::cluster(&c, cmd, json).await,
        Cmd::Shard(cmd) => shards::shard(&c, cmd, json).await,
        Cmd::Node(cmd) => nodes::node(&c, cmd, json).await,
        Cmd::Kv(cmd) => kv::run(c, cmd, json).await,
        Cmd::Migrations(args) => migrations::run(&c, args, json).await,
        Cmd::Setting(s) => meta::setting(&c, s, json).await,
        Cmd::Watch {
            tables,
            from,
            count,
        } => meta::watch(&c, tables, from, count, json).await,
    }
}

/// Prints a metadata compare-and-set's result; exit status 3 on a conflict.
fn cas_report(r: Result<CasOutcome, augur_client::Error>, json: bool) -> anyhow::Result<i32> {
    match r? {
        CasOutcome::Committed { version } => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({"committed": true, "version": version})
                );
            } else {
                println!("committed at version {version}");
            }
            Ok(0)
        }
        CasOutcome::Conflict { current } => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({"committed": false, "current_version": current})
                );
            } else {
                println!("conflict: the record is at version {current}");
            }
            Ok(3)
        }
    }
}

/// The exit status for a failed command: 4 when a write's outcome is unknown, so a script
/// knows to read before it retries; 1 otherwise.
fn failure_status(e: &anyhow::Error) -> i32 {
    match e.downcast_ref::<augur_client::Error>() {
        Some(augur_client::Error::Indeterminate(_)) => 4,
        _ => 1,
    }
}

fn main() {
    // Rust ignores SIGPIPE, so printing to a closed pipe (`augurctl shard list | head`)
    // would panic; the default action ends the process quietly, as for any Unix tool.
    // SAFETY: called first thing, before any other thread exists, with a valid handler.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = rt.block_on(async {
        match run(cli).await {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {e:#}");
                failure_status(&e)
            }
        }
    });
    std::process::exit(code);
}
