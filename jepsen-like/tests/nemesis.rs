//! Nemesis primitives against the real system: a namespace, nftables partitions between real
//! processes, signals, and libfaketime.
//!
//! The processes under test are this test binary re-executed in helper mode
//! (`AUGUR_JEPSEN_HELPER=...`, running the ignored `helper_process` test), so no external tool is
//! needed. Tests that need root, `ip`, `nft` or libfaketime print why they were skipped.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use augur_jepsen::nemesis::clock::Faketime;
use augur_jepsen::nemesis::netns::NetNs;
use augur_jepsen::nemesis::partition::{Firewall, Partition};
use augur_jepsen::nemesis::ports::{udp_ports_of, PortFirewall, PortPartition};
use augur_jepsen::nemesis::process::{ManagedProcess, ProcessSpec};
use augur_jepsen::nemesis::{find_program, is_root, NemesisError};

const HELPER_ENV: &str = "AUGUR_JEPSEN_HELPER";
const DEADLINE: Duration = Duration::from_secs(20);

/// Why the namespace tests cannot run here, if they cannot.
fn netns_missing() -> Option<String> {
    if !is_root() {
        return Some("not running as root".into());
    }
    for p in ["ip", "nft"] {
        if find_program(p).is_none() {
            return Some(format!("`{p}` not installed"));
        }
    }
    None
}

fn unique(prefix: &str) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}

fn namespaces() -> String {
    Command::new(find_program("ip").expect("ip"))
        .args(["netns", "list"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn helper_spec(name: &str, mode: &str, args: &[&str], log: PathBuf) -> ProcessSpec {
    let mut env = vec![(HELPER_ENV.into(), mode.into())];
    for (i, a) in args.iter().enumerate() {
        env.push((format!("AUGUR_JEPSEN_HELPER_ARG{i}").into(), (*a).into()));
    }
    ProcessSpec {
        name: name.into(),
        program: std::env::current_exe().expect("test binary path"),
        args: [
            "--exact",
            "helper_process",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ]
        .iter()
        .map(Into::into)
        .collect(),
        env,
        cwd: None,
        log,
    }
}

/// Polls `f` until it returns true or the deadline passes.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < DEADLINE {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for: {what}");
}

fn lines(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Waits until the probe log of a node shows `want` (reachable or not) `n` times in a row for
/// probes written after line `after`.
fn probes_settle(log: &Path, peer: Ipv4Addr, want: bool, after: usize) -> usize {
    let tag = format!("probe {peer} ");
    let mut seen_at = 0;
    eventually(
        &format!("{} to {peer} to become {want}", log.display()),
        || {
            let all = lines(log);
            let results: Vec<bool> = all
                .iter()
                .skip(after)
                .filter(|l| l.starts_with(&tag))
                .map(|l| l.ends_with("up"))
                .collect();
            seen_at = all.len();
            results.len() >= 3 && results[results.len() - 3..].iter().all(|&r| r == want)
        },
    );
    seen_at
}

#[test]
fn namespace_is_created_and_always_removed() {
    if let Some(why) = netns_missing() {
        println!("SKIPPED namespace test: {why}");
        if !is_root() {
            // What can be checked here: the nemesis reports itself unavailable, not pretending.
            let err = NetNs::create(&unique("augur-t-ns")).expect_err("created without root?");
            assert!(err.is_unavailable(), "{err}");
        }
        return;
    }
    let name = unique("augur-t-ns");
    {
        let ns = NetNs::create(&name).expect("create namespace");
        assert!(namespaces().contains(&name));
        let out = ns
            .command("ip")
            .args(["-o", "link", "show", "lo"])
            .output()
            .expect("ip in ns");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("UP"),
            "lo is not up"
        );
        // The test harness runs threads, so entering would leave the process straddling two
        // namespaces: refused.
        assert!(matches!(ns.enter(), Err(NemesisError::Invalid(_))));
    }
    assert!(
        !namespaces().contains(&name),
        "namespace left behind after drop"
    );
    let ns = NetNs::create(&name).expect("create again");
    ns.remove().expect("explicit remove");
    assert!(!namespaces().contains(&name));
    assert!(NetNs::create("bad name/../x").is_err());
}

#[test]
fn partitions_cut_and_heal_real_traffic() {
    if let Some(why) = netns_missing() {
        println!("SKIPPED partition test: {why}");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let ns = NetNs::create(&unique("augur-t-part")).expect("namespace");
    let fw = Firewall::install(&ns).expect("firewall");
    let a = Ipv4Addr::new(127, 0, 0, 2);
    let b = Ipv4Addr::new(127, 0, 0, 3);
    let port = "7400";
    let (log_a, log_b) = (dir.path().join("a.log"), dir.path().join("b.log"));
    let _pa = ManagedProcess::start(
        helper_spec(
            "a",
            "echo",
            &[&format!("{a}:{port}"), &format!("{b}:{port}")],
            log_a.clone(),
        ),
        Some(&ns),
    )
    .expect("start a");
    let _pb = ManagedProcess::start(
        helper_spec(
            "b",
            "echo",
            &[&format!("{b}:{port}"), &format!("{a}:{port}")],
            log_b.clone(),
        ),
        Some(&ns),
    )
    .expect("start b");

    // Connected at first.
    let mut at = probes_settle(&log_a, b, true, 0);
    probes_settle(&log_b, a, true, 0);

    // Full partition between the two.
    let split = Partition::split(&[a], &[b]);
    fw.apply(&split).expect("apply split");
    assert_eq!(fw.blocked().expect("read back"), split.blocked);
    at = probes_settle(&log_a, b, false, at);
    let bt = probes_settle(&log_b, a, false, 0);

    // Heal.
    fw.heal().expect("heal");
    assert!(fw.blocked().expect("read back").is_empty());
    at = probes_settle(&log_a, b, true, at);
    let bt = probes_settle(&log_b, a, true, bt);

    // One way: a's packets to b are dropped; b's still reach a (a logs them), though a's replies
    // cannot get back.
    fw.apply(&Partition::one_way(&[a], &[b])).expect("one-way");
    probes_settle(&log_a, b, false, at);
    let after = lines(&log_a).len();
    eventually("a to receive b's pings under a one-way partition", || {
        lines(&log_a)
            .iter()
            .skip(after)
            .any(|l| l == &format!("recv from {b}"))
    });
    probes_settle(&log_b, a, false, bt);
    fw.heal().expect("heal");
    probes_settle(&log_a, b, true, lines(&log_a).len());
}

#[test]
fn port_partitions_cut_and_heal_traffic_between_processes_on_one_address() {
    if let Some(why) = netns_missing() {
        println!("SKIPPED port partition test: {why}");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let ns = NetNs::create(&unique("augur-t-ports")).expect("namespace");
    let fw = PortFirewall::install(&ns).expect("firewall");
    // Both on 127.0.0.1, as `augur local` runs its processes: only ports tell them apart.
    let (a, b) = ("127.0.0.1:7401", "127.0.0.1:7402");
    let (log_a, log_b) = (dir.path().join("a.log"), dir.path().join("b.log"));
    let pa = ManagedProcess::start(helper_spec("a", "echo", &[a, b], log_a.clone()), Some(&ns))
        .expect("start a");
    let pb = ManagedProcess::start(helper_spec("b", "echo", &[b, a], log_b.clone()), Some(&ns))
        .expect("start b");
    let lo = Ipv4Addr::LOCALHOST;
    let at = probes_settle(&log_a, lo, true, 0);
    let bt = probes_settle(&log_b, lo, true, 0);
    // Each owns its server port and the ephemeral port it pings from.
    let ports = |p: &ManagedProcess| {
        let pid = p.pid().expect("running") as i32;
        udp_ports_of(pid).expect("ports of a running process")
    };
    let (ports_a, ports_b) = (ports(&pa), ports(&pb));
    assert!(ports_a.contains(&7401) && ports_a.len() >= 2, "{ports_a:?}");
    assert!(
        ports_b.contains(&7402) && !ports_b.contains(&7401),
        "{ports_b:?}"
    );

    let split = PortPartition::split(&ports_a, &ports_b);
    fw.apply(&split).expect("apply");
    assert_eq!(fw.blocked_count().expect("read back"), split.blocked.len());
    let at = probes_settle(&log_a, lo, false, at);
    let bt = probes_settle(&log_b, lo, false, bt);
    fw.heal().expect("heal");
    assert_eq!(fw.blocked_count().expect("read back"), 0);
    probes_settle(&log_a, lo, true, at);
    probes_settle(&log_b, lo, true, bt);
}

#[test]
fn kill_restart_pause_resume_act_on_the_real_process() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("sleeper.log");
    let mut p =
        ManagedProcess::start(helper_spec("sleeper", "sleep", &[], log), None).expect("start");
    let pid = p.pid().expect("pid");
    let state = |pid: u32| -> Option<char> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The state follows the parenthesised command name.
        stat.rsplit_once(')')?.1.trim_start().chars().next()
    };
    p.pause().expect("pause");
    eventually("process to be stopped", || state(pid) == Some('T'));
    p.resume().expect("resume");
    eventually("process to run again", || {
        matches!(state(pid), Some('S' | 'R'))
    });
    p.kill9().expect("kill");
    assert!(!p.is_running());
    assert_eq!(state(pid), None, "killed process still exists");
    p.restart().expect("restart");
    assert!(p.is_running());
    assert_eq!(p.starts(), 2);
    assert_ne!(p.pid(), Some(pid));
    let new_pid = p.pid().expect("pid");
    drop(p);
    assert_eq!(state(new_pid), None, "drop did not kill the process");
}

#[test]
fn signal_cleanup_removes_the_namespace_of_an_interrupted_harness() {
    if let Some(why) = netns_missing() {
        println!("SKIPPED signal cleanup test: {why}");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("guarded.log");
    let name = unique("augur-t-sig");
    let spec = helper_spec("guarded", "guarded", &[&name], log.clone());
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)));
    cmd.stdout(std::fs::File::create(&log).expect("log"));
    cmd.stderr(std::process::Stdio::null());
    // Killed (and its namespace removed) even if an assertion below fails.
    struct Reap(std::process::Child, String);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
            if let Some(ip) = find_program("ip") {
                let _ = Command::new(ip).args(["netns", "del", &self.1]).output();
            }
        }
    }
    let mut child = Reap(cmd.spawn().expect("spawn harness stand-in"), name.clone());
    // libtest prints its "test helper_process ... " header without a newline first.
    eventually("the stand-in to create its namespace", || {
        lines(&log)
            .iter()
            .any(|l| l.ends_with(&format!("ready {name}")))
    });
    assert!(namespaces().contains(&name));
    let pid = nix::unistd::Pid::from_raw(child.0.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let status = child.0.wait().expect("wait");
    assert_eq!(status.code(), Some(128 + 15), "exit status {status}");
    assert!(
        !namespaces().contains(&name),
        "namespace survived the signal"
    );
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[test]
fn faketime_skews_and_jumps_a_running_process() {
    let ft = match Faketime::locate() {
        Ok(ft) => ft,
        Err(e) => {
            println!("SKIPPED clock test: {e}");
            return;
        }
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut clock = ft.node_clock(dir.path(), "n1").expect("clock");
    let log = dir.path().join("clock.log");
    let mut spec = helper_spec("clock", "clock", &[], log.clone());
    spec.env.extend(clock.env());
    let _p = ManagedProcess::start(spec, None).expect("start");
    let reported = |skip: usize| -> Vec<i64> {
        lines(&log)
            .iter()
            .skip(skip)
            .filter_map(|l| l.strip_prefix("now ").and_then(|s| s.parse().ok()))
            .collect()
    };
    let near = |t: i64, want: i64| (t - want).abs() < 60;
    eventually("clock helper to report real time", || {
        reported(0).iter().any(|&t| near(t, unix_now()))
    });
    clock.set_offset_ms(86_400_000).expect("skew +1 day");
    let mark = lines(&log).len();
    eventually("clock to read one day ahead", || {
        reported(mark).iter().any(|&t| near(t, unix_now() + 86_400))
    });
    clock.jump_ms(-2 * 86_400_000).expect("jump back 2 days");
    let mark = lines(&log).len();
    eventually("clock to read one day behind", || {
        reported(mark).iter().any(|&t| near(t, unix_now() - 86_400))
    });
    clock.reset().expect("reset");
    let mark = lines(&log).len();
    eventually("clock back to real time", || {
        reported(mark).iter().any(|&t| near(t, unix_now()))
    });
}

fn helper_arg(i: usize) -> String {
    std::env::var(format!("AUGUR_JEPSEN_HELPER_ARG{i}")).unwrap_or_default()
}

/// The processes the tests above start. Does nothing unless run by them (ignored otherwise).
#[test]
#[ignore = "helper process for the nemesis tests; runs only when re-executed by them"]
fn helper_process() {
    let Ok(mode) = std::env::var(HELPER_ENV) else {
        return;
    };
    match mode.as_str() {
        "sleep" => loop {
            std::thread::sleep(Duration::from_secs(60));
        },
        "clock" => loop {
            println!("now {}", unix_now());
            std::thread::sleep(Duration::from_millis(50));
        },
        "echo" => echo_node(),
        "guarded" => {
            augur_jepsen::nemesis::install_signal_cleanup().expect("signal handler");
            let ns = NetNs::create(&helper_arg(0)).expect("namespace");
            println!("ready {}", ns.name());
            loop {
                std::thread::sleep(Duration::from_secs(60));
            }
        }
        other => panic!("unknown helper mode {other}"),
    }
}

/// Answers pings on its address and pings its peer from the same address every 100 ms, printing
/// `probe PEER up|down` and `recv from PEER`.
fn echo_node() {
    let me: SocketAddr = helper_arg(0).parse().expect("own address");
    let peer: SocketAddr = helper_arg(1).parse().expect("peer address");
    let server = UdpSocket::bind(me).expect("bind server");
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while let Ok((n, from)) = server.recv_from(&mut buf) {
            if &buf[..n] == b"ping" {
                println!("recv from {}", from.ip());
                let _ = server.send_to(b"pong", from);
            }
        }
    });
    let client = UdpSocket::bind(SocketAddr::new(me.ip(), 0)).expect("bind client");
    client
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut buf = [0u8; 64];
    loop {
        let up = client.send_to(b"ping", peer).is_ok()
            && matches!(client.recv_from(&mut buf), Ok((4, from)) if from == peer && &buf[..4] == b"pong");
        println!("probe {} {}", peer.ip(), if up { "up" } else { "down" });
        std::thread::sleep(Duration::from_millis(100));
    }
}
