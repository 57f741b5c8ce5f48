//! The watch on a wiped member, from its restart on an empty data directory until the operator
//! starts adding it back.
//!
//! The durability rule under test: a member whose data is gone never rejoins on its own; it is
//! a new incarnation that takes no part in Raft until it is added again. The history cannot
//! always show a breach (an unsafe vote loses writes only in a rare sequence of faults), so the
//! harness asks the member itself, several times a second: its status must name a reason for
//! waiting and show nothing applied and nothing in its log, and `/health` must answer 503 with
//! a `waiting` field. Anything else is a violation, recorded as a run failure.
//!
//! The watch is stopped, and its last request answered, before the re-add's first call, so an
//! answer it judges always predates the re-add.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use augur_client::admin_http as http;
use augur_client::Client;
use augur_proto::wire::ClusterStatus;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

use super::cluster::NodeLayout;

/// How often the wiped member is asked.
const POLL: Duration = Duration::from_millis(200);
/// Bound on one `/health` request.
const HEALTH_TIMEOUT: Duration = Duration::from_millis(500);
/// Violations one watch adds to the run's list; later ones are only counted.
const MAX_RECORDED: u64 = 10;

/// What one watch saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Status answers (over QUIC).
    pub answers: u64,
    /// `/health` answers.
    pub health_answers: u64,
    /// The first reason for waiting it gave, with its incarnation.
    pub first_waiting: Option<(u64, String)>,
    /// Answers that broke the rule.
    pub violations: u64,
}

impl Summary {
    /// One line for the fault's steps.
    pub fn describe(&self, name: &str, watched: Duration) -> String {
        let secs = watched.as_secs_f64();
        if self.answers == 0 && self.health_answers == 0 {
            return format!("{name} never answered during the {secs:.1} s it was watched");
        }
        let verdict = if self.violations == 0 {
            "always waiting, nothing applied, /health 503".to_string()
        } else {
            format!("{} answers showed it taking part in Raft", self.violations)
        };
        let first = self
            .first_waiting
            .as_ref()
            .map(|(inc, why)| format!(" (incarnation {inc:016x}: \"{why}\")"))
            .unwrap_or_default();
        format!(
            "while lost for {secs:.1} s {name} answered status {} times and /health {} times: \
             {verdict}{first}",
            self.answers, self.health_answers
        )
    }
}

/// A running watch. Dropping it stops the polling (at the end of a run whose final heal
/// failed, say) without waiting for it.
pub struct Watch {
    stop: Arc<AtomicBool>,
    task: Option<JoinHandle<Summary>>,
    started: Instant,
    name: String,
}

impl Watch {
    /// Stops the watch once its request in flight is answered; returns what it saw and a line
    /// describing it.
    pub async fn finish(mut self) -> (Summary, String) {
        self.stop.store(true, Ordering::Relaxed);
        let summary = match self.task.take() {
            Some(task) => match task.await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(node = %self.name, error = %e, "wiped-member watch ended abnormally");
                    Summary::default()
                }
            },
            None => Summary::default(),
        };
        let line = summary.describe(&self.name, self.started.elapsed());
        (summary, line)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Starts watching `node` on `handle`; violations are appended to `violations`.
pub fn start(
    handle: &Handle,
    client: Client,
    node: NodeLayout,
    violations: Arc<Mutex<Vec<String>>>,
) -> Watch {
    let stop = Arc::new(AtomicBool::new(false));
    let name = node.name.clone();
    let started = Instant::now();
    let task = handle.spawn(poll(client, node, Arc::clone(&stop), violations, started));
    Watch {
        stop,
        task: Some(task),
        started,
        name,
    }
}

async fn poll(
    client: Client,
    node: NodeLayout,
    stop: Arc<AtomicBool>,
    violations: Arc<Mutex<Vec<String>>>,
    started: Instant,
) -> Summary {
    let endpoint = node.endpoint();
    let mut summary = Summary::default();
    let record = |summary: &mut Summary, what: String| {
        summary.violations += 1;
        if summary.violations <= MAX_RECORDED {
            let line = format!(
                "{what} ({:.1} s after its restart on an empty data directory)",
                started.elapsed().as_secs_f64()
            );
            tracing::error!(node = %node.name, "{line}");
            violations
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(line);
        }
    };
    while !stop.load(Ordering::Relaxed) {
        // A member that is down, starting, paused or cut off does not answer: nothing to judge.
        if let Ok(s) = client.status(Some(&endpoint)).await {
            summary.answers += 1;
            if let (None, Some(why)) = (&summary.first_waiting, &s.waiting) {
                summary.first_waiting = Some((s.incarnation, why.clone()));
            }
            if let Some(v) = judge_status(&node.name, &s) {
                record(&mut summary, v);
            }
        }
        if let Ok(r) = http::get(node.admin, "/health", HEALTH_TIMEOUT).await {
            summary.health_answers += 1;
            if let Some(v) = judge_health(&node.name, r.status, &r.body) {
                record(&mut summary, v);
            }
        }
        tokio::time::sleep(POLL).await;
    }
    summary
}

/// Why a wiped member's status shows it taking part in Raft, if it does.
pub fn judge_status(name: &str, s: &ClusterStatus) -> Option<String> {
    if s.waiting.is_some() && s.applied == 0 && s.last_log == 0 {
        return None;
    }
    Some(format!(
        "{name} was wiped and not yet added back, yet its status says: role {}, term {}, \
         applied {}, last log {}, waiting {}",
        s.role,
        s.term,
        s.applied,
        s.last_log,
        s.waiting.as_deref().unwrap_or("none")
    ))
}

/// Why a wiped member's `/health` answer shows it taking part in Raft, if it does: it must be
/// 503 and carry a `waiting` reason.
pub fn judge_health(name: &str, code: u16, body: &str) -> Option<String> {
    let waiting = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.get("waiting")
                .and_then(|w| w.as_str().map(str::to_string))
        });
    if code != 200 && waiting.is_some() {
        return None;
    }
    let mut body = body.to_string();
    body.truncate(300);
    Some(format!(
        "{name} was wiped and not yet added back, yet /health answered {code}: {body}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use augur_proto::MemberId;

    fn status(waiting: Option<&str>, applied: u64, last_log: u64) -> ClusterStatus {
        ClusterStatus {
            id: MemberId(2),
            role: "learner".into(),
            term: 0,
            leader: None,
            committed: 0,
            applied,
            last_log,
            compacted_revision: 0,
            members: Vec::new(),
            incarnation: 7,
            cluster: None,
            waiting: waiting.map(str::to_string),
        }
    }

    #[test]
    fn a_waiting_empty_member_passes_and_anything_else_is_a_violation() {
        assert_eq!(judge_status("n2", &status(Some("no data"), 0, 0)), None);
        for bad in [
            status(None, 0, 0),
            status(Some("no data"), 3, 3),
            status(Some("no data"), 0, 1),
        ] {
            let v = judge_status("n2", &bad).expect("a violation");
            assert!(v.starts_with("n2 was wiped"), "{v}");
        }
    }

    #[test]
    fn health_must_be_503_with_a_waiting_reason() {
        let waiting = r#"{"ready":false,"waiting":"member 2 holds no data"}"#;
        assert_eq!(judge_health("n2", 503, waiting), None);
        assert!(judge_health("n2", 200, waiting).is_some());
        assert!(judge_health("n2", 503, r#"{"ready":false,"waiting":null}"#).is_some());
        assert!(judge_health("n2", 503, "not json").is_some());
    }

    #[test]
    fn the_summary_says_what_was_seen() {
        let quiet = Summary::default();
        assert!(quiet
            .describe("n2", Duration::from_secs(3))
            .contains("never answered"));
        let fine = Summary {
            answers: 12,
            health_answers: 12,
            first_waiting: Some((0xab, "holds no data".into())),
            violations: 0,
        };
        let line = fine.describe("n2", Duration::from_secs(3));
        assert!(
            line.contains("12 times") && line.contains("00000000000000ab"),
            "{line}"
        );
    }
}
