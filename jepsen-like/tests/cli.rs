//! The `augur-jepsen` binary: verdict lines, JSON, exit codes and the report subcommand.

use std::path::{Path, PathBuf};
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_augur-jepsen"))
}

fn write(dir: &Path, name: &str, lines: &[&str]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, lines.join("\n") + "\n").expect("write history");
    p
}

const STALE_READ: [&str; 6] = [
    r#"{"type":"invoke","process":0,"time":0,"f":"write","key":"a","value":1}"#,
    r#"{"type":"ok","process":0,"time":10,"f":"write","key":"a","value":1}"#,
    r#"{"type":"invoke","process":0,"time":20,"f":"write","key":"a","value":2}"#,
    r#"{"type":"ok","process":0,"time":30,"f":"write","key":"a","value":2}"#,
    r#"{"type":"invoke","process":1,"time":40,"f":"read","key":"a","value":null}"#,
    r#"{"type":"ok","process":1,"time":50,"f":"read","key":"a","value":1}"#,
];

#[test]
fn verdicts_json_and_exit_codes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = write(dir.path(), "good.jsonl", &STALE_READ[..4]);
    let bad = write(dir.path(), "bad.jsonl", &STALE_READ);
    let broken = write(dir.path(), "broken.jsonl", &["{\"type\":\"invoke\""]);

    let out = bin().arg("check").arg(&good).output().expect("run");
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("\tlinearizable"));

    let out = bin()
        .args(["check", "--explain"])
        .arg(&good)
        .arg(&bad)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("bad.jsonl\tnot-linearizable"), "{text}");
    assert!(
        text.contains("key a:") && text.contains("read -> 1"),
        "{text}"
    );

    let out = bin()
        .args(["check", "--json"])
        .arg(&bad)
        .arg(&broken)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(3), "bad input outranks an anomaly");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("--json prints JSON");
    assert_eq!(doc["files"][0]["verdict"], "not-linearizable");
    assert_eq!(doc["files"][0]["report"]["keys"][0]["anomaly"]["key"], "a");
    assert_eq!(doc["files"][1]["verdict"], "error");

    let out = bin()
        .args(["check", "--budget", "0"])
        .arg(&bad)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "exhausted budget is unknown");
    assert!(String::from_utf8_lossy(&out.stdout).contains("\tunknown"));
}

#[test]
fn report_writes_html_and_results() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = write(dir.path(), "history.jsonl", &STALE_READ);
    let html = dir.path().join("report.html");
    let results = dir.path().join("results.json");
    let out = bin()
        .arg("report")
        .arg(&bad)
        .arg("--out")
        .arg(&html)
        .arg("--results")
        .arg(&results)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let page = std::fs::read_to_string(&html).expect("report written");
    assert!(page.contains("<svg") && page.contains("Key a: not linearizable"));
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&results).expect("results written"))
            .expect("json");
    assert_eq!(r["verdict"], "not-linearizable");
    assert_eq!(r["history"]["ops_by_kind"]["write"], 2);
    assert_eq!(r["keys_checked"], 1);

    // Re-render with the faults of a results.json (as a harness run would have recorded them).
    let mut doc = r.clone();
    doc["faults"] = serde_json::json!([{
        "kind": "partition", "description": "isolate 127.0.0.2", "start_ms": 0,
        "end_ms": 1, "injected": true, "note": null
    }]);
    std::fs::write(&results, doc.to_string()).expect("write results");
    let html2 = dir.path().join("report2.html");
    let out = bin()
        .arg("report")
        .arg(&bad)
        .arg("--out")
        .arg(&html2)
        .arg("--faults-from")
        .arg(&results)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let page = std::fs::read_to_string(&html2).expect("report written");
    assert!(page.contains("class=\"fault\"") && page.contains("isolate 127.0.0.2"));
}

#[test]
fn run_refuses_bad_flags_clearly_and_creates_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("never");
    let cases: Vec<(&[&str], &str)> = vec![
        (&["--nodes", "2"], "--nodes must be 3 to 9"),
        (&["--storage", "5"], "--storage is for --workload data"),
        (
            &["--workload", "data", "--nodes", "3"],
            "--nodes is for --workload meta",
        ),
        (
            &["--workload", "data", "--nemesis", "kill,clock"],
            "partition, kill, pause, disk-loss and migrate, not clock",
        ),
        (
            &["--nemesis", "kill,migrate"],
            "migrate drains storage nodes: it needs --workload data",
        ),
        (
            &[
                "--workload",
                "data",
                "--storage",
                "3",
                "--nemesis",
                "migrate",
            ],
            "migrate needs more storage nodes than --rf",
        ),
        (&["--workload", "data", "--rf", "6"], "--rf must be 1 to 5"),
        (
            &[
                "--workload",
                "data",
                "--storage",
                "3",
                "--nemesis",
                "disk-loss",
            ],
            "disk-loss needs more storage nodes than --rf",
        ),
        (
            &["--workload", "data", "--lease-ms", "10"],
            "--lease-ms must be",
        ),
        (&["--workload", "data", "--shards", "0"], "--shards must be"),
        (&["--workload", "bogus"], "invalid value 'bogus'"),
        (
            &["--nemesis", "partition,explode"],
            "unknown nemesis \"explode\"",
        ),
        (&["--time", "soon"], "is not a duration"),
        (&["--ops-per-key", "0"], "--ops-per-key must be 1 to 10000"),
        (&["--augur-bin", "/nonexistent/augur"], "does not exist"),
        (
            &["--min-period", "9s", "--max-period", "2s"],
            "--min-period <= --max-period",
        ),
    ];
    for (args, want) in cases {
        let mut cmd = bin();
        cmd.arg("run").arg("--out").arg(&out);
        if !args.contains(&"--augur-bin") {
            // Any existing file passes the binary check, so the flag under test is what fails.
            cmd.args(["--augur-bin", env!("CARGO_BIN_EXE_augur-jepsen")]);
        }
        let out_s = cmd.args(args).output().expect("run");
        let stderr = String::from_utf8_lossy(&out_s.stderr);
        assert_eq!(out_s.status.code(), Some(3), "{args:?}: {stderr}");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
        assert!(!out.exists(), "{args:?} created the run directory");
    }
    let help = bin().args(["run", "--help"]).output().expect("help");
    assert_eq!(help.status.code(), Some(0));
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(text.contains("5  nodes did not converge"), "{text}");
}
