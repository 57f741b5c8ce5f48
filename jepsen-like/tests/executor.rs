//! The fault executor on real processes, with a recording stand-in for the cluster control:
//! what each fault does to the processes and which membership calls it makes, in which order,
//! and that at most one member is ever lost at a time.
//!
//! The processes are this test binary re-executed as a sleeper (the ignored `sleeper` test), so
//! nothing external is needed and nothing needs root.

use std::net::Ipv4Addr;
use std::time::Duration;

use augur_jepsen::nemesis::executor::{ClusterControl, Nemesis, Step};
use augur_jepsen::nemesis::partition::PartitionKind;
use augur_jepsen::nemesis::process::{ManagedProcess, ProcessSpec};
use augur_jepsen::nemesis::schedule::Fault;
use augur_jepsen::nemesis::NemesisError;

const SLEEPER_ENV: &str = "AUGUR_JEPSEN_SLEEPER";

/// Records membership calls; the real implementation is the harness's, over the Augur client.
#[derive(Default)]
struct RecordingControl {
    calls: Vec<String>,
    /// Make `add_member` fail, as a re-add whose learner never catches up does.
    fail_add: bool,
}

impl ClusterControl for RecordingControl {
    fn leader(&mut self) -> Result<Option<usize>, String> {
        Ok(Some(1))
    }
    fn remove_member(&mut self, node: usize) -> Result<(), String> {
        self.calls.push(format!("remove {node}"));
        Ok(())
    }
    fn wipe_data(&mut self, node: usize) -> Result<(), String> {
        self.calls.push(format!("wipe {node}"));
        Ok(())
    }
    fn watch_wiped(&mut self, node: usize) -> Result<(), String> {
        self.calls.push(format!("watch {node}"));
        Ok(())
    }
    fn add_member(&mut self, node: usize, steps: &mut Vec<Step>) -> Result<(), String> {
        if self.fail_add {
            self.calls.push(format!("add {node} failed"));
            return Err(format!("n{} did not catch up", node + 1));
        }
        self.calls.push(format!("add {node}"));
        steps.push(Step::now(format!("re-added {node}")));
        Ok(())
    }
}

fn start_sleeper(name: &str, dir: &std::path::Path) -> ManagedProcess {
    let spec = ProcessSpec {
        name: name.into(),
        program: std::env::current_exe().expect("test binary path"),
        args: [
            "--exact",
            "sleeper",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ]
        .iter()
        .map(Into::into)
        .collect(),
        env: vec![(SLEEPER_ENV.into(), "1".into())],
        cwd: None,
        log: dir.join(format!("{name}.log")),
    };
    ManagedProcess::start(spec, None).expect("start")
}

fn nemesis(n: usize, dir: &std::path::Path) -> Nemesis<RecordingControl> {
    // Named as the harness names nodes: index 0 is n1.
    let procs: Vec<ManagedProcess> = (0..n)
        .map(|i| start_sleeper(&format!("n{}", i + 1), dir))
        .collect();
    let addrs = (0..n)
        .map(|i| Ipv4Addr::new(127, 0, 0, 2 + i as u8))
        .collect();
    let no_fw = Err(NemesisError::Unavailable {
        nemesis: "partition",
        reason: "test: no firewall".into(),
    });
    let no_clock = Err(NemesisError::Unavailable {
        nemesis: "clock",
        reason: "test: no libfaketime".into(),
    });
    Nemesis::new(
        addrs,
        procs,
        no_fw,
        no_clock,
        RecordingControl::default(),
        1,
    )
    .expect("nemesis")
}

#[test]
fn executor_injects_heals_and_reports_unavailable_faults() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut nem = nemesis(2, dir.path());

    for fault in [
        Fault::Partition {
            kind: PartitionKind::IsolateLeader,
        },
        Fault::ClockSkew {
            node: 0,
            offset_ms: 500,
        },
    ] {
        let err = nem.inject(&fault).expect_err("must not pretend to inject");
        assert!(err.is_unavailable(), "{err}");
    }

    let first_pid = nem.processes()[0].pid();
    let mut kill = nem.inject(&Fault::Kill { node: 0 }).expect("kill");
    assert!(!nem.processes()[0].is_running());
    nem.heal(&mut kill).expect("restart");
    assert!(nem.processes()[0].is_running());
    assert_ne!(nem.processes()[0].pid(), first_pid);

    let mut pause = nem.inject(&Fault::Pause { node: 1 }).expect("pause");
    assert!(nem.processes()[1].is_paused());
    nem.heal(&mut pause).expect("resume");
    assert!(!nem.processes()[1].is_paused());

    let before = nem.processes()[1].starts();
    let mut member = nem.inject(&Fault::Member { node: 1 }).expect("member");
    assert_eq!(
        member.description,
        "remove member n2, wipe it, restart it empty"
    );
    assert_eq!(nem.processes()[1].starts(), before + 1, "not restarted");
    assert_eq!(nem.lost_members(), [1]);
    nem.heal(&mut member).expect("re-add");
    assert!(nem.lost_members().is_empty());
    assert_eq!(
        nem.control().calls,
        ["remove 1", "wipe 1", "watch 1", "add 1"]
    );
    assert!(matches!(
        nem.inject(&Fault::Kill { node: 7 }),
        Err(NemesisError::Invalid(_))
    ));

    // heal_all brings back whatever is down or stopped.
    nem.inject(&Fault::Kill { node: 0 }).expect("kill");
    nem.inject(&Fault::Pause { node: 1 }).expect("pause");
    let mut steps = Vec::new();
    assert!(nem.heal_all(&mut steps).is_empty());
    nem.inject(&Fault::Member { node: 0 }).expect("member");
    assert!(nem.heal_all(&mut steps).is_empty());
    assert!(nem.lost_members().is_empty(), "heal_all left a member out");
    assert!(nem.processes()[0].is_running() && !nem.processes()[1].is_paused());
    assert_eq!(steps.len(), 1, "the re-add's step: {steps:?}");
}

#[test]
fn disk_loss_wipes_in_place_and_never_loses_a_second_member() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut nem = nemesis(3, dir.path());

    let before = nem.processes()[0].starts();
    let mut loss = nem.inject(&Fault::DiskLoss { node: 0 }).expect("disk loss");
    // Killed, wiped and restarted, never removed from the membership first.
    assert_eq!(nem.control().calls, ["wipe 0", "watch 0"]);
    assert_eq!(nem.processes()[0].starts(), before + 1);
    assert!(nem.processes()[0].is_running());
    assert_eq!(nem.lost_members(), [0]);
    let what: Vec<&str> = loss.steps.iter().map(|s| s.what.as_str()).collect();
    assert_eq!(
        what,
        [
            "kill -9 n1",
            "deleted its data directory",
            "restarted it on an empty data directory"
        ]
    );
    assert!(loss.steps.windows(2).all(|w| w[0].at <= w[1].at));

    // While n1 is lost, nothing may lose another member; other faults go on.
    let starts_1 = nem.processes()[1].starts();
    for second in [Fault::DiskLoss { node: 1 }, Fault::Member { node: 2 }] {
        let e = nem.inject(&second).expect_err("a second lost member");
        assert!(matches!(e, NemesisError::Refused(_)), "{e}");
        assert!(e.to_string().contains("n1 is still lost"), "{e}");
    }
    assert_eq!(nem.processes()[1].starts(), starts_1, "n2 was touched");
    let mut kill = nem
        .inject(&Fault::Kill { node: 1 })
        .expect("kill while lost");
    nem.heal(&mut kill).expect("restart");
    let mut pause = nem
        .inject(&Fault::Pause { node: 0 })
        .expect("pause the lost one");

    // A re-add that fails leaves the member lost, and the rule still holds.
    nem.control().fail_add = true;
    let e = nem.heal(&mut loss).expect_err("re-add fails");
    assert!(matches!(e, NemesisError::Control(_)), "{e}");
    assert_eq!(nem.lost_members(), [0]);
    assert!(
        !nem.processes()[0].is_paused(),
        "a lost member is resumed before its re-add"
    );
    nem.heal(&mut pause).expect("resuming twice is harmless");
    assert!(matches!(
        nem.inject(&Fault::DiskLoss { node: 2 }),
        Err(NemesisError::Refused(_))
    ));

    // Retried, it succeeds; then another member may be lost.
    nem.control().fail_add = false;
    let mut steps = Vec::new();
    assert!(nem.heal_lost(&mut steps).is_empty());
    assert!(nem.lost_members().is_empty());
    assert_eq!(steps.len(), 1);
    let mut next = nem
        .inject(&Fault::DiskLoss { node: 2 })
        .expect("n2 may go now");
    assert_eq!(nem.lost_members(), [2]);
    nem.heal(&mut next).expect("re-add");
    assert_eq!(
        nem.control().calls,
        [
            "wipe 0",
            "watch 0",
            "add 0 failed",
            "add 0",
            "wipe 2",
            "watch 2",
            "add 2"
        ]
    );
    assert_eq!(
        next.steps.last().map(|s| s.what.as_str()),
        Some("re-added 2")
    );
}

/// The process the tests above start. Does nothing unless run by them (ignored otherwise).
#[test]
#[ignore = "helper process, started by the tests in this file"]
fn sleeper() {
    if std::env::var_os(SLEEPER_ENV).is_some() {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
