//! What a run is asked to do ([`RunConfig`], with its duration parser) and what its findings
//! add up to ([`RunExit`]).

use std::path::PathBuf;
use std::time::Duration;

use super::HarnessError;
use crate::checker::Verdict;
use crate::nemesis::schedule::NemesisKind;

/// Exit codes of `augur-jepsen run`, worst first when several apply (1 > 6 > 5 > 4 > 2 > 0;
/// 3 when the run itself could not be carried out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunExit {
    /// Linearizable, converged, served again after heal.
    Pass = 0,
    /// The history is not linearizable.
    Anomaly = 1,
    /// No anomaly found, but the checker's budget ran out on some key.
    Unknown = 2,
    /// The harness could not carry out the run (bad flags, setup failure).
    Error = 3,
    /// After heal, the cluster did not serve again, or final reads never succeeded.
    NoProgress = 4,
    /// The nodes ended with different revisions, digests or final values.
    Diverged = 5,
    /// A member whose data was wiped took part in Raft (or stopped saying it waits, or applied
    /// something) before the operator added it back: the durability rule that a member whose
    /// data is gone never rejoins on its own was broken, whether or not the history shows it.
    WipedMemberRejoined = 6,
}

/// What a run found, for [`RunExit::judge`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Findings {
    /// The checker's verdict on the history.
    pub verdict: Verdict,
    /// Every node ended with the same revision, digest and final values.
    pub converged: bool,
    /// Some final read never succeeded.
    pub missing_reads: bool,
    /// The cluster served again after the final heal.
    pub recovered: bool,
    /// A wiped member was seen taking part in Raft before it was added back.
    pub wiped_member_rejoined: bool,
}

impl RunExit {
    /// The process exit code.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// What the code means, for `results.json`.
    pub fn reason(self) -> &'static str {
        match self {
            RunExit::Pass => "linearizable, converged, recovered after heal",
            RunExit::Anomaly => "not linearizable",
            RunExit::Unknown => "no anomaly found, but some keys could not be decided",
            RunExit::Error => "the run could not be carried out",
            RunExit::NoProgress => "no progress after heal",
            RunExit::Diverged => "nodes did not converge",
            RunExit::WipedMemberRejoined => {
                "a wiped member took part in Raft before it was added back"
            }
        }
    }

    /// The exit code for `f`, the worst finding winning. Divergence is only judged when every
    /// final read succeeded: a node that never answered is lack of progress, not divergence.
    pub fn judge(f: &Findings) -> RunExit {
        if f.verdict == Verdict::NotLinearizable {
            RunExit::Anomaly
        } else if f.wiped_member_rejoined {
            RunExit::WipedMemberRejoined
        } else if !f.converged && !f.missing_reads {
            RunExit::Diverged
        } else if !f.recovered || f.missing_reads {
            RunExit::NoProgress
        } else if f.verdict == Verdict::Unknown {
            RunExit::Unknown
        } else {
            RunExit::Pass
        }
    }
}

/// Everything a run needs.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Number of `augur meta` processes (3 or 5 are the interesting ones).
    pub nodes: usize,
    /// Length of the workload and fault period.
    pub time: Duration,
    /// Fault families.
    pub nemeses: Vec<NemesisKind>,
    /// Seed of the fault schedule and the workload's choices.
    pub seed: u64,
    /// Run directory (created; must not hold a previous run).
    pub out: PathBuf,
    /// The `augur` binary under test.
    pub augur_bin: PathBuf,
    /// Keys in use at once.
    pub keys: usize,
    /// Workload operations per key before it retires.
    pub ops_per_key: u32,
    /// Client processes per node.
    pub clients_per_node: usize,
    /// Bound on one operation.
    pub op_timeout: Duration,
    /// Mean pause between one process's operations.
    pub think: Duration,
    /// Shortest quiet or fault period.
    pub min_period: Duration,
    /// Longest quiet or fault period.
    pub max_period: Duration,
    /// How long the cluster may take to serve again after the final heal.
    pub recovery_timeout: Duration,
    /// The checker's time budget.
    pub check_budget: Duration,
    /// Largest clock skew, ms.
    pub max_skew_ms: i64,
}

impl RunConfig {
    /// Checks the settings before anything is created.
    pub fn validate(&self) -> Result<(), HarnessError> {
        let bad = |m: String| Err(HarnessError::Config(m));
        if !(3..=9).contains(&self.nodes) {
            return bad(format!("--nodes must be 3 to 9, got {}", self.nodes));
        }
        if self.time < Duration::from_secs(1) {
            return bad("--time must be at least 1s".into());
        }
        if self.keys == 0 || self.keys > 100_000 {
            return bad(format!("--keys must be 1 to 100000, got {}", self.keys));
        }
        if self.ops_per_key == 0 || self.ops_per_key > 10_000 {
            return bad(format!(
                "--ops-per-key must be 1 to 10000, got {} (the checker's search grows \
                 exponentially with operations per key; 200 is the tested default)",
                self.ops_per_key
            ));
        }
        if self.clients_per_node == 0 || self.clients_per_node > 64 {
            return bad(format!(
                "--clients-per-node must be 1 to 64, got {}",
                self.clients_per_node
            ));
        }
        if self.op_timeout < Duration::from_millis(100) {
            return bad("--op-timeout must be at least 100ms".into());
        }
        if self.min_period.is_zero() || self.min_period > self.max_period {
            return bad("need 0 < --min-period <= --max-period".into());
        }
        if self.max_skew_ms <= 0 {
            return bad("--max-skew must be positive".into());
        }
        if self.nemeses.contains(&NemesisKind::Migrate) {
            return bad("--nemesis migrate drains storage nodes: it needs --workload data".into());
        }
        if !self.augur_bin.is_file() {
            return bad(format!(
                "augur binary {} does not exist (set --augur-bin or AUGUR_BIN)",
                self.augur_bin.display()
            ));
        }
        if self.out.join("history.jsonl").exists() {
            return bad(format!(
                "{} already holds a run (history.jsonl); choose a new --out",
                self.out.display()
            ));
        }
        Ok(())
    }
}

/// Parses `60s`, `2m`, `500ms`, `1h` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 60s, 2m, 500ms)"))?;
    let secs = match unit.trim() {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {s:?} (use ms, s, m or h)"
            ))
        }
    };
    if !secs.is_finite() || !(0.0..=1e7).contains(&secs) {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn durations_parse_and_reject_junk() {
        assert_eq!(parse_duration("60s").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        for bad in ["", "s", "10x", "-1s", "1e999s", "abc"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn exit_codes_are_distinct() {
        let all = [
            RunExit::Pass,
            RunExit::Anomaly,
            RunExit::Unknown,
            RunExit::Error,
            RunExit::NoProgress,
            RunExit::Diverged,
            RunExit::WipedMemberRejoined,
        ];
        let codes: HashSet<u8> = all.iter().map(|e| e.code()).collect();
        assert_eq!(codes.len(), all.len());
    }

    #[test]
    fn the_worst_finding_decides_the_exit_code() {
        let pass = Findings {
            verdict: Verdict::Linearizable,
            converged: true,
            missing_reads: false,
            recovered: true,
            wiped_member_rejoined: false,
        };
        assert_eq!(RunExit::judge(&pass), RunExit::Pass);
        let rejoined = Findings {
            wiped_member_rejoined: true,
            converged: false,
            recovered: false,
            verdict: Verdict::Unknown,
            ..pass
        };
        assert_eq!(RunExit::judge(&rejoined), RunExit::WipedMemberRejoined);
        let anomaly = Findings {
            verdict: Verdict::NotLinearizable,
            ..rejoined
        };
        assert_eq!(RunExit::judge(&anomaly), RunExit::Anomaly);
        let diverged = Findings {
            converged: false,
            recovered: false,
            ..pass
        };
        assert_eq!(RunExit::judge(&diverged), RunExit::Diverged);
        let stuck = Findings {
            missing_reads: true,
            ..diverged
        };
        assert_eq!(RunExit::judge(&stuck), RunExit::NoProgress);
        let unknown = Findings {
            verdict: Verdict::Unknown,
            ..pass
        };
        assert_eq!(RunExit::judge(&unknown), RunExit::Unknown);
    }
}
