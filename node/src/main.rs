//! `augur`: run a metadata node, make certificates, run a local cluster, benchmark.

use anyhow::Context;
use augur_node::config::{MetaFile, RaftSettings};
use augur_node::{bench, certs, local, meta};
use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "augur",
    version,
    about = "Augur: keep a sharded storage cluster ahead of hardware failure"
)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a metadata node (a member of the Raft quorum).
    Meta(MetaArgs),
    /// Create the cluster CA and node / client certificates.
    #[command(subcommand)]
    Cert(CertCmd),
    /// A cluster of real processes on loopback.
    #[command(subcommand)]
    Local(LocalCmd),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCmd),
}

#[derive(Args)]
struct MetaArgs {
    /// TOML configuration file; flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Member id (positive integer).
    #[arg(long)]
    id: Option<u64>,
    /// QUIC listen address for peers and clients.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// HTTP admin listen address.
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
    /// Data directory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Bootstrap members, `id=host:port`, comma-separated.
    #[arg(long, value_delimiter = ',')]
    initial_members: Vec<String>,
    /// Cluster CA certificate.
    #[arg(long, requires_all = ["cert", "key"])]
    ca: Option<PathBuf>,
    /// This node's certificate.
    #[arg(long, requires_all = ["ca", "key"])]
    cert: Option<PathBuf>,
    /// This node's private key.
    #[arg(long, requires_all = ["ca", "cert"])]
    key: Option<PathBuf>,
}

#[derive(Subcommand)]
enum CertCmd {
    /// Create ca.pem and ca.key.
    Ca {
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
    },
    /// Issue a node certificate (server + client).
    Node {
        /// Directory holding ca.pem and ca.key.
        #[arg(long)]
        ca_dir: PathBuf,
        /// Certificate name; files are NAME.pem and NAME.key.
        #[arg(long)]
        name: String,
        /// Extra host names or IPs the node is reachable at.
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
    },
    /// Issue a client certificate.
    Client {
        /// Directory holding ca.pem and ca.key.
        #[arg(long)]
        ca_dir: PathBuf,
        /// Certificate name.
        #[arg(long)]
        name: String,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum LocalCmd {
    /// Start (or restart) a loopback cluster and wait until it is healthy.
    Up {
        /// Cluster directory.
        #[arg(long)]
        dir: PathBuf,
        /// Metadata members (1..=7) for a new cluster.
        #[arg(long, default_value_t = 3)]
        meta: u64,
        /// Seconds to wait for health.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        /// Snapshot after this many log entries (new clusters; default from `augur meta`).
        #[arg(long)]
        snapshot_logs: Option<u64>,
        /// Log entries kept behind a snapshot (new clusters).
        #[arg(long)]
        keep_logs: Option<u64>,
        /// Append-entries batches in flight to a follower (new clusters; 1 = unpipelined).
        #[arg(long)]
        append_window: Option<usize>,
    },
    /// Create a new member that will join as a learner (then start it and add it).
    Add {
        /// Cluster directory.
        #[arg(long)]
        dir: PathBuf,
        /// Start it too.
        #[arg(long)]
        start: bool,
    },
    /// Stop every member (data stays).
    Down {
        /// Cluster directory.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Show each member's view.
    Status {
        /// Cluster directory.
        #[arg(long)]
        dir: PathBuf,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Stop one member (SIGTERM; --kill for SIGKILL).
    Stop {
        /// Cluster directory.
        #[arg(long)]
        dir: PathBuf,
        /// Member id.
        #[arg(long)]
        member: u64,
        /// SIGKILL instead of a clean stop.
        #[arg(long)]
        kill: bool,
    },
    /// Print the member id of the current leader.
    Leader {
        /// Cluster directory.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Start one stopped member.
    Start {
        /// Cluster directory.
        #[arg(long)]
        dir: PathBuf,
        /// Member id.
        #[arg(long)]
        member: u64,
    },
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Benchmark the metadata service.
    Meta(bench::MetaBenchArgs),
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn meta_config(a: MetaArgs) -> anyhow::Result<augur_node::config::MetaConfig> {
    let mut file = match &a.config {
        Some(p) => MetaFile::load(p)?,
        None => MetaFile {
            raft: RaftSettings::default(),
            ..Default::default()
        },
    };
    file.id = a.id.or(file.id);
    file.listen = a.listen.or(file.listen);
    file.admin_listen = a.admin_listen.or(file.admin_listen);
    file.data_dir = a.data_dir.or(file.data_dir);
    if !a.initial_members.is_empty() {
        file.initial_members = a.initial_members;
    }
    if let (Some(ca), Some(cert), Some(key)) = (a.ca, a.cert, a.key) {
        file.tls = Some(augur_client::TlsFiles { ca, cert, key });
    }
    Ok(file.validate()?)
}

async fn run_meta(a: MetaArgs) -> anyhow::Result<()> {
    let cfg = meta_config(a)?;
    let admin_addr = cfg.admin_listen;
    let node = meta::MetaNode::start(cfg).await?;
    let admin = tokio::spawn(meta::admin::serve(node.clone(), admin_addr));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        r = admin => {
            match r {
                Ok(Err(e)) => tracing::error!(error = %e, "admin server failed"),
                Err(e) => tracing::error!(error = %e, "admin server task failed"),
                Ok(Ok(())) => {}
            }
        }
    }
    node.shutdown().await;
    Ok(())
}

async fn local_status(dir: PathBuf, json: bool) -> anyhow::Result<()> {
    let file = augur_client::ClusterFile::load(&dir.join(local::CLUSTER_FILE))?;
    let client = local::client(&dir)?;
    let mut rows = Vec::new();
    for (i, ep) in file.endpoints.iter().enumerate() {
        let id = i as u64 + 1;
        let pid = local::running_pid(&dir, id);
        let status = match pid {
            Some(_) => client.status(Some(ep)).await.ok(),
            None => None,
        };
        rows.push((id, ep.clone(), pid, status));
    }
    if json {
        let v: Vec<_> = rows
            .iter()
            .map(|(id, ep, pid, s)| serde_json::json!({"member": id, "endpoint": ep, "pid": pid, "status": s}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "{:<7} {:<22} {:<8} {:<10} {:>5} {:>7} {:>10} {:>10}",
        "MEMBER", "ENDPOINT", "PID", "ROLE", "TERM", "LEADER", "COMMITTED", "APPLIED"
    );
    for (id, ep, pid, s) in rows {
        let pid = pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into());
        match s {
            Some(s) => println!(
                "{:<7} {:<22} {:<8} {:<10} {:>5} {:>7} {:>10} {:>10}",
                id,
                ep,
                pid,
                s.role,
                s.term,
                s.leader
                    .map(|l| l.id.0.to_string())
                    .unwrap_or_else(|| "-".into()),
                s.committed,
                s.applied
            ),
            None => println!("{:<7} {:<22} {:<8} {:<10}", id, ep, pid, "down"),
        }
    }
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Meta(a) => run_meta(a).await,
        Cmd::Cert(CertCmd::Ca { out }) => {
            certs::create_ca(&out)?;
            println!("wrote {0}/ca.pem and {0}/ca.key", out.display());
            Ok(())
        }
        Cmd::Cert(CertCmd::Node {
            ca_dir,
            name,
            hosts,
            out,
        }) => {
            let (c, k) = certs::issue(&ca_dir, &out, &name, certs::Role::Node, &hosts)?;
            println!("wrote {} and {}", c.display(), k.display());
            Ok(())
        }
        Cmd::Cert(CertCmd::Client { ca_dir, name, out }) => {
            let (c, k) = certs::issue(&ca_dir, &out, &name, certs::Role::Client, &[])?;
            println!("wrote {} and {}", c.display(), k.display());
            Ok(())
        }
        Cmd::Local(LocalCmd::Up {
            dir,
            meta,
            timeout,
            snapshot_logs,
            keep_logs,
            append_window,
        }) => {
            let tuning = local::Tuning {
                snapshot_logs,
                keep_logs,
                append_window,
            };
            local::up(&dir, meta, tuning, Duration::from_secs(timeout)).await?;
            println!(
                "cluster is up; cluster file: {}",
                dir.join(local::CLUSTER_FILE).display()
            );
            local_status(dir, false).await
        }
        Cmd::Local(LocalCmd::Add { dir, start }) => {
            let (id, addr) = local::add_member(&dir, local::Tuning::default())?;
            if start {
                local::start_member(&dir, id)?;
            }
            println!("member {id} at {addr}: created{}; add it with `augurctl members add --id {id} --addr {addr}`", if start { " and started" } else { "" });
            Ok(())
        }
        Cmd::Local(LocalCmd::Down { dir }) => {
            let n = local::down(&dir).await?;
            println!("stopped {n} member(s)");
            Ok(())
        }
        Cmd::Local(LocalCmd::Status { dir, json }) => local_status(dir, json).await,
        Cmd::Local(LocalCmd::Stop { dir, member, kill }) => {
            let stopped = local::stop_member(&dir, member, kill, Duration::from_secs(10)).await?;
            println!(
                "member {member}: {}",
                if stopped {
                    "stopped"
                } else {
                    "was not running"
                }
            );
            Ok(())
        }
        Cmd::Local(LocalCmd::Leader { dir }) => {
            let status = local::client(&dir)?.status(None).await?;
            match status.leader {
                Some(l) => {
                    println!("{}", l.id);
                    Ok(())
                }
                None => anyhow::bail!("no leader known to member {}", status.id),
            }
        }
        Cmd::Local(LocalCmd::Start { dir, member }) => {
            local::start_member(&dir, member)?;
            println!("member {member}: started");
            Ok(())
        }
        Cmd::Bench(BenchCmd::Meta(a)) => bench::run_meta(a).await,
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(&cli.log_format);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(run(cli))
}
