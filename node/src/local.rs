//! `augur local`: a cluster of real `augur` processes on loopback, for trying Augur and for
//! tests and benchmarks.
//!
//! Layout of DIR:
//!
//! ```text
//! cluster.toml            endpoints, admin addresses and the operator certificate
//! certs/                  ca.pem, ca.key, meta-N.pem/.key, operator.pem/.key, client.pem/.key
//! meta-N/config.toml      the member's configuration
//! meta-N/data/            its RocksDB and snapshots
//! meta-N/augur.log        its log
//! meta-N/pid              its process id while running
//! storage-N/config.toml   a storage node's configuration (`augur local up --storage N`)
//! storage-N/data/         its RocksDB
//! storage-N/augur.log     its log
//! storage-N/pid           its process id while running
//! ```
//!
//! Storage nodes (certificates `certs/storage-N.pem`, each bound to node id N) are found by
//! the metadata cluster's node registry, so the cluster file does not list them; see
//! [`storage`] for how they are created, started and waited for, and [`cli`] for the
//! `augur local` command line.
//!
//! `up` on a new DIR writes everything, starts the members and bootstraps the cluster (the
//! one-time act that founds it). `up` on an existing DIR restarts the members that are not
//! running, keeping their data; it never bootstraps again. A member whose data directory was
//! lost comes back as a new incarnation that takes no part in Raft: `up` says so and prints
//! the commands that add it again.

pub mod cli;
pub mod storage;

use crate::certs::{self, Role};
use anyhow::{bail, Context};
use augur_client::{Client, ClientConfig, ClusterFile, TlsFiles};
use augur_proto::MemberId;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio::time::Instant;

/// The cluster file's name inside DIR.
pub const CLUSTER_FILE: &str = "cluster.toml";

fn member_dir(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("meta-{id}"))
}

/// Member ids present in DIR, in order.
pub fn members(dir: &Path) -> anyhow::Result<Vec<u64>> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let name = entry?.file_name();
        if let Some(id) = name
            .to_string_lossy()
            .strip_prefix("meta-")
            .and_then(|s| s.parse().ok())
        {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// A free UDP port (QUIC) and a free TCP port (HTTP admin) on loopback, never one this
/// process handed out before: the sockets that found them are closed before the members bind,
/// so the kernel could offer a port again to the next member of the same cluster.
///
/// The ports come from below the kernel's ephemeral range (`ip_local_port_range`), which it
/// never hands to a socket bound to port 0. A member that restarts must bind its port again,
/// and any client socket opened meanwhile on the machine (the tests open many) could have been
/// given that very port from the ephemeral range: a power-loss test lost a member to
/// "Address already in use" that way.
pub(crate) fn free_port_pair() -> anyhow::Result<(u16, u16)> {
    use rand::Rng;
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let (low, high) = (10_000u16, ephemeral_start().max(10_100));
    let mut rng = rand::thread_rng();
    for _ in 0..256 {
        let (q, a) = (rng.gen_range(low..high), rng.gen_range(low..high));
        if q == a {
            continue;
        }
        let mut given = GIVEN
            .lock()
            .map_err(|_| anyhow::anyhow!("port registry poisoned"))?;
        if given.contains(&q) || given.contains(&a) {
            continue;
        }
        // Taken by something else on this machine: try another pair.
        let free = std::net::UdpSocket::bind(("127.0.0.1", q)).is_ok()
            && std::net::TcpListener::bind(("127.0.0.1", a)).is_ok();
        if free {
            given.extend([q, a]);
            return Ok((q, a));
        }
    }
    anyhow::bail!("no free pair of loopback ports below {high} after 256 tries")
}

/// The first port of the kernel's ephemeral range (32768 when it cannot be read).
fn ephemeral_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// Member settings a new local cluster may override, e.g. to make snapshots frequent in tests.
#[derive(Debug, Clone, Default)]
pub struct Tuning {
    /// `raft.snapshot_logs_since_last`.
    pub snapshot_logs: Option<u64>,
    /// `raft.max_in_snapshot_log_to_keep`.
    pub keep_logs: Option<u64>,
    /// `raft.append_window`.
    pub append_window: Option<usize>,
    /// `control.down_delay_ms`: how long a Down storage node waits before its replicas are
    /// re-created (benchmarks and demos of re-replication set it to seconds).
    pub down_delay_ms: Option<u64>,
    /// `control.predict`: prediction-driven draining on or off (`augur bench failover
    /// --predict on|off` compares the two).
    pub predict: Option<bool>,
    /// Further lines of the `[control]` table, each `key = value` in TOML (dotted keys reach
    /// its sub-tables: `policy.k = 1`): tests shorten the risk policy's windows with them.
    pub control: Vec<String>,
}

fn write_member(
    dir: &Path,
    id: u64,
    listen: &str,
    admin: &str,
    initial: &[String],
    tuning: &Tuning,
) -> anyhow::Result<()> {
    let certs_dir = dir.join("certs");
    let name = format!("meta-{id}");
    certs::issue(
        &certs_dir,
        &certs_dir,
        &name,
        Role::Member,
        &["127.0.0.1".into(), "localhost".into()],
    )?;
    let mdir = member_dir(dir, id);
    std::fs::create_dir_all(&mdir)?;
    let mut config = format!(
        "# Written by `augur local`.\n\
         id = {id}\n\
         listen = \"{listen}\"\n\
         admin_listen = \"{admin}\"\n\
         data_dir = \"data\"\n\
         initial_members = [{initial}]\n\n\
         [tls]\n\
         ca = \"../certs/ca.pem\"\n\
         cert = \"../certs/{name}.pem\"\n\
         key = \"../certs/{name}.key\"\n",
        initial = initial.join(", "),
    );
    if tuning.snapshot_logs.is_some()
        || tuning.keep_logs.is_some()
        || tuning.append_window.is_some()
    {
        config.push_str("\n[raft]\n");
        if let Some(n) = tuning.snapshot_logs {
            config.push_str(&format!("snapshot_logs_since_last = {n}\n"));
        }
        if let Some(n) = tuning.keep_logs {
            config.push_str(&format!("max_in_snapshot_log_to_keep = {n}\n"));
        }
        if let Some(n) = tuning.append_window {
            config.push_str(&format!("append_window = {n}\n"));
        }
    }
    let mut control: Vec<String> = Vec::new();
    if let Some(ms) = tuning.down_delay_ms {
        control.push(format!("down_delay_ms = {ms}"));
    }
    if let Some(p) = tuning.predict {
        control.push(format!("predict = {p}"));
    }
    control.extend(tuning.control.iter().cloned());
    if !control.is_empty() {
        config.push_str(&format!("\n[control]\n{}\n", control.join("\n")));
    }
    std::fs::write(mdir.join("config.toml"), config)?;
    Ok(())
}

/// Creates the files of a new member that will join as a learner (it has no initial
/// members), adds it to the cluster file, and returns its id and QUIC address. Start it with
/// [`start_member`], then add and promote it through the client.
pub fn add_member(dir: &Path, tuning: Tuning) -> anyhow::Result<(u64, String)> {
    let path = dir.join(CLUSTER_FILE);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut file: ClusterFile =
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let id = members(dir)?.last().copied().unwrap_or(0) + 1;
    let (q, a) = free_port_pair()?;
    let (listen, admin) = (format!("127.0.0.1:{q}"), format!("127.0.0.1:{a}"));
    write_member(dir, id, &listen, &admin, &[], &tuning)?;
    file.endpoints.push(listen.clone());
    file.admin.push(admin);
    file.save(&path)?;
    Ok((id, listen))
}

/// Writes certificates, configs and the cluster file for `n` members.
fn create(dir: &Path, n: u64, tuning: Tuning) -> anyhow::Result<()> {
    let certs_dir = dir.join("certs");
    certs::create_ca(&certs_dir)?;
    certs::issue(&certs_dir, &certs_dir, "operator", Role::Operator, &[])?;
    certs::issue(&certs_dir, &certs_dir, "client", Role::Client, &[])?;
    let mut ports = Vec::new();
    for _ in 0..n {
        ports.push(free_port_pair()?);
    }
    let endpoints: Vec<String> = ports
        .iter()
        .map(|(q, _)| format!("127.0.0.1:{q}"))
        .collect();
    let admin: Vec<String> = ports
        .iter()
        .map(|(_, a)| format!("127.0.0.1:{a}"))
        .collect();
    let initial: Vec<String> = endpoints
        .iter()
        .enumerate()
        .map(|(i, e)| format!("\"{}={}\"", i + 1, e))
        .collect();
    for id in 1..=n {
        let i = (id - 1) as usize;
        write_member(dir, id, &endpoints[i], &admin[i], &initial, &tuning)?;
    }
    ClusterFile {
        endpoints,
        admin,
        tls: TlsFiles {
            ca: "certs/ca.pem".into(),
            cert: "certs/operator.pem".into(),
            key: "certs/operator.key".into(),
        },
    }
    .save(&dir.join(CLUSTER_FILE))?;
    Ok(())
}

/// One process of a local cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proc {
    /// A metadata member, by member id.
    Member(u64),
    /// A storage node, by node id.
    Storage(u64),
}

impl Proc {
    /// Its directory in DIR.
    pub fn dir(&self, dir: &Path) -> PathBuf {
        match self {
            Proc::Member(id) => member_dir(dir, *id),
            Proc::Storage(id) => storage::storage_dir(dir, *id),
        }
    }

    /// The `augur` subcommand that runs it.
    fn subcommand(&self) -> &'static str {
        match self {
            Proc::Member(_) => "meta",
            Proc::Storage(_) => "storage",
        }
    }
}

impl std::fmt::Display for Proc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Proc::Member(id) => write!(f, "member {id}"),
            Proc::Storage(id) => write!(f, "storage node {id}"),
        }
    }
}

/// The pid of a running member, if its pid file names a live `augur` process.
pub fn running_pid(dir: &Path, id: u64) -> Option<i32> {
    running(dir, Proc::Member(id))
}

/// The pid of a running process of the cluster, if its pid file names a live `augur`
/// process running that role with that config.
pub fn running(dir: &Path, proc: Proc) -> Option<i32> {
    let pdir = proc.dir(dir);
    let text = std::fs::read_to_string(pdir.join("pid")).ok()?;
    let pid: i32 = text.trim().parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let cmdline = String::from_utf8_lossy(&cmdline);
    let config = pdir.join("config.toml");
    // Guard against pid reuse: it must be our process with our config.
    (alive(Pid::from_raw(pid))
        && cmdline.contains(proc.subcommand())
        && cmdline.contains(&*config.to_string_lossy()))
    .then_some(pid)
}

/// Starts one member in the background (no-op if it is running).
pub fn start_member(dir: &Path, id: u64) -> anyhow::Result<()> {
    start(dir, Proc::Member(id))
}

/// Starts one process in the background (no-op if it is running), logging to its
/// `augur.log`.
pub fn start(dir: &Path, proc: Proc) -> anyhow::Result<()> {
    if running(dir, proc).is_some() {
        return Ok(());
    }
    let pdir = proc.dir(dir);
    let config = pdir.join("config.toml");
    if !config.exists() {
        bail!(
            "{} does not exist: no {proc} in {}",
            config.display(),
            dir.display()
        );
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(pdir.join("augur.log"))?;
    let exe = std::env::current_exe().context("locating the augur binary")?;
    use std::os::unix::process::CommandExt;
    let child = Command::new(exe)
        .arg(proc.subcommand())
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group: Ctrl-C in the terminal that ran `up` must not stop it.
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {proc}"))?;
    std::fs::write(pdir.join("pid"), child.id().to_string())?;
    Ok(())
}

/// Stops one member: SIGTERM (leaders hand off first), then SIGKILL after `grace`.
/// With `hard`, SIGKILL at once, as a crash would.
pub async fn stop_member(dir: &Path, id: u64, hard: bool, grace: Duration) -> anyhow::Result<bool> {
    stop(dir, Proc::Member(id), hard, grace).await
}

/// Stops one process: SIGTERM, then SIGKILL after `grace`; with `hard`, SIGKILL at once,
/// as a crash would. Returns whether it was running.
pub async fn stop(dir: &Path, proc: Proc, hard: bool, grace: Duration) -> anyhow::Result<bool> {
    let Some(pid) = running(dir, proc) else {
        return Ok(false);
    };
    let pid = Pid::from_raw(pid);
    let _ = kill(
        pid,
        if hard {
            Signal::SIGKILL
        } else {
            Signal::SIGTERM
        },
    );
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if !alive(pid) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if alive(pid) {
        let _ = kill(pid, Signal::SIGKILL);
        while alive(pid) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let _ = std::fs::remove_file(proc.dir(dir).join("pid"));
    Ok(true)
}

/// The last `n` lines of a process's log, for reporting why it did not come up.
pub fn log_tail(dir: &Path, proc: Proc, n: usize) -> Vec<String> {
    let text = std::fs::read_to_string(proc.dir(dir).join("augur.log")).unwrap_or_default();
    let mut lines: Vec<String> = text.lines().rev().take(n).map(str::to_string).collect();
    lines.reverse();
    lines
}

fn alive(pid: Pid) -> bool {
    // A zombie still answers kill(0); look at its state too.
    if kill(pid, None).is_err() {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// A client for the cluster in DIR.
pub fn client(dir: &Path) -> anyhow::Result<Client> {
    let cfg = ClientConfig::from_cluster_file(&dir.join(CLUSTER_FILE))?;
    Ok(Client::new(cfg)?)
}

/// A running member that takes no part in Raft, and why.
#[derive(Debug, Clone)]
pub struct Waiting {
    /// Its id.
    pub id: u64,
    /// Its QUIC address.
    pub addr: String,
    /// What it says about itself.
    pub why: String,
}

/// Waits until every running member that belongs to the cluster knows a leader and has
/// applied all it knows committed. Members that wait to be added (they lost their data) are
/// returned, not waited for: nothing will change for them until an operator acts.
pub async fn wait_healthy(dir: &Path, timeout: Duration) -> anyhow::Result<Vec<Waiting>> {
    let file = ClusterFile::load(&dir.join(CLUSTER_FILE))?;
    let client = client(dir)?;
    let deadline = Instant::now() + timeout;
    loop {
        let mut pending = Vec::new();
        let mut waiting = Vec::new();
        for (i, ep) in file.endpoints.iter().enumerate() {
            let id = i as u64 + 1;
            if running_pid(dir, id).is_none() {
                continue;
            }
            match client.status(Some(ep)).await {
                Ok(s) if s.cluster.is_none() && s.waiting.is_some() => waiting.push(Waiting {
                    id,
                    addr: ep.clone(),
                    why: s.waiting.unwrap_or_default(),
                }),
                Ok(s) if s.leader.is_some() && s.applied >= s.committed => {}
                Ok(s) => pending.push(format!(
                    "meta-{id}: {} leader={:?}{}",
                    s.role,
                    s.leader.map(|l| l.id.0),
                    s.waiting.map(|w| format!(" ({w})")).unwrap_or_default()
                )),
                Err(e) => pending.push(format!("meta-{id}: {e}")),
            }
        }
        if pending.is_empty() {
            return Ok(waiting);
        }
        if Instant::now() >= deadline {
            bail!(
                "cluster not healthy after {timeout:?}: {}",
                pending.join("; ")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Founds the cluster: asks member 1 to bootstrap from its initial members, retrying while
/// the other founders are still starting.
async fn bootstrap(dir: &Path, timeout: Duration) -> anyhow::Result<()> {
    let file = ClusterFile::load(&dir.join(CLUSTER_FILE))?;
    let first = file
        .endpoints
        .first()
        .context("the cluster file lists no members")?
        .clone();
    client(dir)?
        .bootstrap(&first, timeout)
        .await
        .with_context(|| format!("bootstrapping the cluster through {first}"))
}

/// `augur local up`: creates and bootstraps a new cluster, or restarts the stopped members of
/// an existing one. Returns the members that wait to be added again.
pub async fn up(
    dir: &Path,
    meta: u64,
    tuning: Tuning,
    timeout: Duration,
) -> anyhow::Result<Vec<Waiting>> {
    if !(1..=7).contains(&meta) {
        bail!("--meta must be between 1 and 7, got {meta}");
    }
    let new = !dir.join(CLUSTER_FILE).exists();
    if new {
        std::fs::create_dir_all(dir)?;
        create(dir, meta, tuning)
            .with_context(|| format!("creating cluster files in {}", dir.display()))?;
    }
    let ids = members(dir)?;
    for id in &ids {
        start_member(dir, *id)?;
    }
    let result = async {
        if new {
            bootstrap(dir, timeout).await?;
        }
        wait_healthy(dir, timeout).await
    }
    .await;
    if result.is_err() {
        for id in &ids {
            let log = member_dir(dir, *id).join("augur.log");
            eprintln!("--- last lines of {}:", log.display());
            for l in log_tail(dir, Proc::Member(*id), 10) {
                eprintln!("{l}");
            }
        }
    }
    result
}

/// The operator's way back for a member that lost its data: remove its old entry, add its new
/// incarnation as a learner, wait until it has caught up, and promote it.
pub async fn readd(dir: &Path, id: u64, timeout: Duration) -> anyhow::Result<()> {
    let file = ClusterFile::load(&dir.join(CLUSTER_FILE))?;
    let addr = file
        .endpoints
        .get(id as usize - 1)
        .with_context(|| format!("no member {id} in {}", dir.display()))?
        .clone();
    let c = client(dir)?;
    let member = MemberId::new(id)?;
    c.remove_member(member).await?;
    c.add_learner(member, addr.clone()).await?;
    let deadline = Instant::now() + timeout;
    loop {
        let leader = match c.status(None).await?.leader {
            Some(l) => c.status(Some(&l.addr)).await?,
            None => c.status(None).await?,
        };
        let mine = c.status(Some(&addr)).await?;
        if leader.role == "leader" && mine.applied >= leader.committed && mine.waiting.is_none() {
            break;
        }
        if Instant::now() >= deadline {
            bail!("member {id} did not catch up within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.promote(member).await?;
    Ok(())
}

/// `augur local down`: stops every storage node, then every member; data stays. Storage
/// nodes go first, while the metadata quorum they report to is still there.
pub async fn down(dir: &Path) -> anyhow::Result<usize> {
    let mut n = 0;
    let groups = [
        storage::storage_nodes(dir)?
            .into_iter()
            .map(Proc::Storage)
            .collect::<Vec<_>>(),
        members(dir)?.into_iter().map(Proc::Member).collect(),
    ];
    for group in groups {
        let stops = group
            .iter()
            .map(|p| stop(dir, *p, false, Duration::from_secs(10)));
        for s in futures::future::join_all(stops).await {
            if s? {
                n += 1;
            }
        }
    }
    Ok(n)
}
