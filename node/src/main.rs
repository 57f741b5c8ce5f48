//! `augur`: run a metadata node, make certificates, run a local cluster, benchmark.

use anyhow::Context;
use augur_node::config::{MetaFile, RaftSettings};
use augur_node::{bench, certs, local, meta};
use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Every Augur process allocates through mimalloc: a put crosses a dozen short-lived buffers
/// (frames, entries, write batches, QUIC packets) on each node, and in a profile of a put run
/// glibc's malloc and free were about a tenth of the storage nodes' CPU.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Turns transparent huge pages off for this process unless `allow`, before it has touched
/// much memory. The choice is set either way, since a child inherits its parent's.
///
/// mimalloc asks the kernel for huge pages on its arenas, and a node touches fresh memory in
/// bursts: the buffers of its first shard copies after it starts. Each first touch of a huge
/// page zeroes 2 MiB inside the page fault, and on a virtual machine whose host backs guest
/// memory lazily that is slow (on the 2-core build machine 82-129 MB/s against 1.0-1.4 GB/s
/// for small pages). In the first second of a drain under load 70% of the storage nodes'
/// samples were that zeroing, and every request on those nodes waited, up to 320 ms.
/// Databases commonly ask for THP off for the same kind of stall.
fn choose_transparent_huge_pages(allow: bool) -> Result<(), String> {
    #[cfg(target_os = "linux")]
    {
        nix::sys::prctl::set_thp_disable(!allow).map_err(|e| e.to_string())
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = allow;
        Ok(())
    }
}

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
    /// Let this process use transparent huge pages (off by default: see README
    /// "Performance", "Moving shards"). A process started by another keeps its own choice.
    #[arg(long, global = true)]
    transparent_huge_pages: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a metadata node (a member of the Raft quorum).
    Meta(MetaArgs),
    /// Run a storage node (holds replicated shards; see docs/data-plane.md).
    Storage(StorageArgs),
    /// Create the cluster CA and node / client certificates.
    #[command(subcommand)]
    Cert(CertCmd),
    /// A cluster of real processes on loopback.
    #[command(subcommand)]
    Local(local::cli::LocalCmd),
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
    /// Prediction-driven draining (`[control] predict`): `off` leaves at-risk nodes in
    /// place, so the cluster only reacts to failures.
    #[arg(long, value_parser = local::cli::parse_on_off)]
    predict: Option<bool>,
}

#[derive(Args)]
struct StorageArgs {
    /// TOML configuration file; flags override it (see node/src/storage/config.rs).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Storage node id (positive integer; its certificate must name it).
    #[arg(long)]
    id: Option<u64>,
    /// QUIC listen address (data API and replication).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// HTTP admin listen address.
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
    /// Data directory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Metadata members' QUIC addresses, comma-separated.
    #[arg(long, value_delimiter = ',')]
    meta_endpoints: Vec<String>,
    /// Bytes this node may hold (0: its filesystem's size).
    #[arg(long)]
    capacity_bytes: Option<u64>,
    /// Rack label.
    #[arg(long)]
    rack: Option<String>,
    /// Zone label.
    #[arg(long)]
    zone: Option<String>,
    /// Cluster CA certificate.
    #[arg(long, requires_all = ["cert", "key"])]
    ca: Option<PathBuf>,
    /// This node's storage certificate.
    #[arg(long, requires_all = ["ca", "key"])]
    cert: Option<PathBuf>,
    /// This node's private key.
    #[arg(long, requires_all = ["ca", "cert"])]
    key: Option<PathBuf>,
    /// Health source: `linux` (default: this host, the data device), `simulated` (a
    /// synthetic node; faults injected with `augurctl node inject`) or `off`
    /// (`[health] source`).
    #[arg(long)]
    health_source: Option<augur_node::storage::health::config::HealthSource>,
}

#[derive(Subcommand)]
enum CertCmd {
    /// Create ca.pem and ca.key.
    Ca {
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
    },
    /// Issue a metadata member's certificate (server + client; the only role that speaks Raft).
    #[command(alias = "node")]
    Member {
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
    /// Issue a storage node's certificate (server + client), bound to its node id.
    Storage {
        /// Directory holding ca.pem and ca.key.
        #[arg(long)]
        ca_dir: PathBuf,
        /// Certificate name; files are NAME.pem and NAME.key.
        #[arg(long)]
        name: String,
        /// The storage node id this certificate may act as.
        #[arg(long)]
        node_id: augur_proto::NodeId,
        /// Extra host names or IPs the node is reachable at.
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
    },
    /// Issue an operator certificate (membership, bootstrap, any metadata change).
    Operator {
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
    /// Issue a client certificate (data API and metadata reads).
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
enum BenchCmd {
    /// Benchmark the metadata service.
    Meta(bench::MetaBenchArgs),
    /// Benchmark the data plane (puts, gets, mixed, or a load with memory per node).
    Data(bench::data::DataBenchArgs),
    /// Kill a storage node under load: the write gap and the time and rate to restore RF.
    Recover(bench::recover::RecoverBenchArgs),
    /// A storage node shows a precursor, then dies: what clients pay, with and without
    /// prediction-driven draining (`--predict on|off`).
    Failover(bench::failover::FailoverBenchArgs),
    /// Drain a storage node under load: the move rate against a raw QUIC copy, and client
    /// p99 during the drain against before it.
    Migrate(bench::migrate::MigrateBenchArgs),
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
        file.tls = Some(augur_transport::TlsFiles { ca, cert, key });
    }
    if let Some(p) = a.predict {
        file.control.predict = p;
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

fn storage_config(a: StorageArgs) -> anyhow::Result<augur_node::storage::config::StorageConfig> {
    use augur_node::storage::config::StorageFile;
    let mut file = match &a.config {
        Some(p) => StorageFile::load(p)?,
        None => StorageFile::default(),
    };
    file.id = a.id.or(file.id);
    file.listen = a.listen.or(file.listen);
    file.admin_listen = a.admin_listen.or(file.admin_listen);
    file.data_dir = a.data_dir.or(file.data_dir);
    if !a.meta_endpoints.is_empty() {
        file.meta_endpoints = a.meta_endpoints;
    }
    if let Some(c) = a.capacity_bytes {
        file.capacity_bytes = c;
    }
    if let Some(r) = a.rack {
        file.rack = r;
    }
    if let Some(z) = a.zone {
        file.zone = z;
    }
    if let Some(h) = a.health_source {
        file.health.source = h;
    }
    if let (Some(ca), Some(cert), Some(key)) = (a.ca, a.cert, a.key) {
        file.tls = Some(augur_transport::TlsFiles { ca, cert, key });
    }
    Ok(file.validate()?)
}

async fn run_storage(a: StorageArgs) -> anyhow::Result<()> {
    let cfg = storage_config(a)?;
    let admin_addr = cfg.admin_listen;
    let node = augur_node::storage::StorageNode::start(cfg).await?;
    let admin = tokio::spawn(augur_node::storage::admin::serve(
        node.ctx().clone(),
        admin_addr,
    ));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        r = admin => match r {
            Ok(Err(e)) => tracing::error!(error = %e, "admin server failed"),
            Err(e) => tracing::error!(error = %e, "admin server task failed"),
            Ok(Ok(())) => {}
        },
    }
    node.shutdown().await;
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Meta(a) => run_meta(a).await,
        Cmd::Storage(a) => run_storage(a).await,
        Cmd::Cert(CertCmd::Ca { out }) => {
            certs::create_ca(&out)?;
            println!("wrote {0}/ca.pem and {0}/ca.key", out.display());
            Ok(())
        }
        Cmd::Cert(CertCmd::Member {
            ca_dir,
            name,
            hosts,
            out,
        }) => {
            let (c, k) = certs::issue(&ca_dir, &out, &name, certs::Role::Member, &hosts)?;
            println!("wrote {} and {}", c.display(), k.display());
            Ok(())
        }
        Cmd::Cert(CertCmd::Storage {
            ca_dir,
            name,
            node_id,
            hosts,
            out,
        }) => {
            let (c, k) = certs::issue(&ca_dir, &out, &name, certs::Role::Storage(node_id), &hosts)?;
            println!("wrote {} and {}", c.display(), k.display());
            Ok(())
        }
        Cmd::Cert(CertCmd::Operator { ca_dir, name, out }) => {
            let (c, k) = certs::issue(&ca_dir, &out, &name, certs::Role::Operator, &[])?;
            println!("wrote {} and {}", c.display(), k.display());
            Ok(())
        }
        Cmd::Cert(CertCmd::Client { ca_dir, name, out }) => {
            let (c, k) = certs::issue(&ca_dir, &out, &name, certs::Role::Client, &[])?;
            println!("wrote {} and {}", c.display(), k.display());
            Ok(())
        }
        Cmd::Local(cmd) => local::cli::run(cmd).await,
        Cmd::Bench(BenchCmd::Meta(a)) => bench::run_meta(a).await,
        Cmd::Bench(BenchCmd::Data(a)) => bench::data::run_data(a).await,
        Cmd::Bench(BenchCmd::Recover(a)) => bench::recover::run_recover(a).await,
        Cmd::Bench(BenchCmd::Failover(a)) => bench::failover::run_failover(a).await,
        Cmd::Bench(BenchCmd::Migrate(a)) => bench::migrate::run_migrate(a).await,
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let thp = choose_transparent_huge_pages(cli.transparent_huge_pages);
    init_logging(&cli.log_format);
    if let Err(e) = thp {
        tracing::warn!(error = %e, "could not set this process's transparent huge pages");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(run(cli))
}
