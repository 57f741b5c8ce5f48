//! Reproduces every verdict of the shared Jepsen etcd histories (`EXPECTED.tsv`).
//!
//! The data lives outside the project (`/work/shared/data/jepsen-etcd`); when it is absent the
//! test says so loudly and checks nothing, rather than passing as if it had.

use std::path::PathBuf;
use std::time::Duration;

use augur_jepsen::checker::{CheckOptions, Verdict};
use augur_jepsen::{check_history, load_history, InputFormat, ModelChoice};

/// Read at run time (cargo test sets it): the compile-time value names whichever clone built
/// the binary, and a target directory shared between clones can run a binary built elsewhere.
fn data_dir() -> PathBuf {
    let crate_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    crate_dir.join("../../shared/data/jepsen-etcd")
}

#[test]
fn reproduces_every_expected_verdict() {
    let dir = data_dir();
    let expected_path = dir.join("EXPECTED.tsv");
    let Ok(expected) = std::fs::read_to_string(&expected_path) else {
        println!(
            "SKIPPED: Jepsen etcd data absent ({} not readable); no verdict was checked",
            expected_path.display()
        );
        return;
    };
    let mut rows = Vec::new();
    for (i, line) in expected.lines().enumerate() {
        if i == 0 || line.trim().is_empty() {
            continue;
        }
        let (file, verdict) = line
            .split_once('\t')
            .unwrap_or_else(|| panic!("EXPECTED.tsv line {} is not `file<TAB>verdict`", i + 1));
        let verdict = match verdict.trim() {
            "linearizable" => Verdict::Linearizable,
            "not-linearizable" => Verdict::NotLinearizable,
            other => panic!("EXPECTED.tsv line {}: unknown verdict {other:?}", i + 1),
        };
        rows.push((file.to_string(), verdict));
    }
    // Every log in the directory must have an expected verdict, so none is silently skipped.
    let mut logs: Vec<String> = std::fs::read_dir(&dir)
        .expect("data directory readable")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".log"))
        .collect();
    logs.sort();
    let mut listed: Vec<String> = rows.iter().map(|(f, _)| f.clone()).collect();
    listed.sort();
    assert_eq!(logs, listed, "EXPECTED.tsv and the .log files disagree");
    assert!(!rows.is_empty(), "EXPECTED.tsv lists no files");

    let opts = CheckOptions {
        budget: Duration::from_secs(120),
        ..CheckOptions::default()
    };
    let mut mismatches = Vec::new();
    let mut times_ms = Vec::new();
    for (file, want) in &rows {
        let events = load_history(&dir.join(file), InputFormat::JepsenLog)
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        let report = check_history(&events, ModelChoice::Register, &opts)
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        let ms = report.elapsed_us as f64 / 1000.0;
        times_ms.push(ms);
        println!(
            "{file}\t{}\texpected {}\t{ms:.3} ms\t{} ops",
            report.verdict, want, report.ops
        );
        if report.verdict == Verdict::NotLinearizable {
            let anomaly = report
                .anomalies()
                .next()
                .expect("an illegal verdict carries its anomaly");
            assert!(
                !anomaly.unorderable.is_empty(),
                "{file}: anomaly names no operation"
            );
        }
        if report.verdict != *want {
            mismatches.push(format!("{file}: got {}, expected {want}", report.verdict));
        }
    }
    times_ms.sort_by(f64::total_cmp);
    println!(
        "{} files: {} verdicts matched; checking time median {:.3} ms, max {:.3} ms",
        rows.len(),
        rows.len() - mismatches.len(),
        times_ms[times_ms.len() / 2],
        times_ms[times_ms.len() - 1]
    );
    assert!(
        mismatches.is_empty(),
        "verdict mismatches:\n{}",
        mismatches.join("\n")
    );
}
