//! The checker on hand-built histories whose verdicts are known: the anomalies it must flag and
//! the concurrent behaviours it must accept.

use std::time::Duration;

use augur_jepsen::checker::{check_events, CheckOptions, CheckReport, Verdict};
use augur_jepsen::history::{Event, EventKind, Fun, Payload, Value};
use augur_jepsen::model::{Register, VersionedRegister};

/// Builds a history one event at a time; each event gets the next tick.
#[derive(Default)]
struct H {
    events: Vec<Event>,
}

fn int(v: i64) -> Payload {
    Payload::One(Value::Int(v))
}

impl H {
    fn push(
        &mut self,
        kind: EventKind,
        p: u64,
        f: Fun,
        key: &str,
        value: Payload,
        version: Option<u64>,
    ) -> &mut Self {
        let time = self.events.len() as u64 * 10;
        self.events.push(Event {
            kind,
            process: p,
            time,
            f,
            key: key.into(),
            value,
            version,
        });
        self
    }
    fn invoke(&mut self, p: u64, f: Fun, value: Payload) -> &mut Self {
        self.push(EventKind::Invoke, p, f, "k", value, None)
    }
    fn ok(&mut self, p: u64, f: Fun, value: Payload) -> &mut Self {
        self.push(EventKind::Ok, p, f, "k", value, None)
    }
    fn info(&mut self, p: u64, f: Fun, value: Payload) -> &mut Self {
        self.push(EventKind::Info, p, f, "k", value, None)
    }
    fn fail(&mut self, p: u64, f: Fun, value: Payload) -> &mut Self {
        self.push(EventKind::Fail, p, f, "k", value, None)
    }
    /// A complete plain-register operation with no concurrency.
    fn op(&mut self, p: u64, f: Fun, arg: Payload, result: Payload) -> &mut Self {
        self.invoke(p, f, arg).ok(p, f, result)
    }
    fn vinvoke(&mut self, p: u64, f: Fun, value: Payload, version: Option<u64>) -> &mut Self {
        self.push(EventKind::Invoke, p, f, "k", value, version)
    }
    fn vok(&mut self, p: u64, f: Fun, value: Payload, version: u64) -> &mut Self {
        self.push(EventKind::Ok, p, f, "k", value, Some(version))
    }
    fn check(&self) -> CheckReport {
        check_events(&Register, &self.events, &CheckOptions::default())
            .expect("well-formed history")
    }
    fn vcheck(&self, precheck: bool) -> CheckReport {
        let opts = CheckOptions {
            precheck,
            ..CheckOptions::default()
        };
        check_events(&VersionedRegister, &self.events, &opts).expect("well-formed history")
    }
}

const NIL: Payload = Payload::NIL;

fn cas(a: i64, b: i64) -> Payload {
    Payload::Pair(Value::Int(a), Value::Int(b))
}

#[test]
fn lost_update_is_flagged_with_key_prefix_and_culprit() {
    let mut h = H::default();
    h.op(1, Fun::Write, int(1), int(1))
        .op(2, Fun::Cas, cas(1, 2), cas(1, 2))
        // A second cas from the same old value succeeds: the first update is lost.
        .op(3, Fun::Cas, cas(1, 3), cas(1, 3));
    let r = h.check();
    assert_eq!(r.verdict, Verdict::NotLinearizable);
    let a = r.anomalies().next().expect("anomaly");
    assert_eq!(a.key, "k");
    let prefix: Vec<&str> = a.prefix.iter().map(|o| o.op.as_str()).collect();
    assert_eq!(prefix, ["write 1", "cas 1 -> 2"]);
    assert_eq!(a.state_after_prefix, "2");
    assert!(
        a.unorderable
            .iter()
            .any(|o| o.op == "cas 1 -> 3" && o.process == 3),
        "{a:?}"
    );
}

#[test]
fn stale_read_is_flagged() {
    let mut h = H::default();
    h.op(1, Fun::Write, int(1), int(1))
        .op(1, Fun::Write, int(2), int(2))
        .op(2, Fun::Read, NIL, int(1));
    let r = h.check();
    assert_eq!(r.verdict, Verdict::NotLinearizable);
    let a = r.anomalies().next().expect("anomaly");
    assert_eq!(a.prefix.len(), 2);
    assert!(a.unorderable.iter().any(|o| o.op == "read -> 1"));
}

#[test]
fn concurrent_history_is_linearizable() {
    // p1 writes 1 while p2 writes 2; p3's read overlaps both and sees 1; p4 reads 2 afterwards,
    // which forces the order write 1, read 1, write 2, read 2.
    let mut h = H::default();
    h.invoke(1, Fun::Write, int(1))
        .invoke(2, Fun::Write, int(2))
        .invoke(3, Fun::Read, NIL)
        .ok(3, Fun::Read, int(1))
        .ok(2, Fun::Write, int(2))
        .ok(1, Fun::Write, int(1))
        .op(4, Fun::Read, NIL, int(2))
        .op(3, Fun::Cas, cas(2, 5), cas(2, 5))
        .op(4, Fun::Read, NIL, int(5));
    assert_eq!(h.check().verdict, Verdict::Linearizable);
}

#[test]
fn indeterminate_write_must_be_placed_when_observed() {
    let mut h = H::default();
    h.invoke(1, Fun::Write, int(7))
        .info(1, Fun::Write, int(7))
        // Long after the timeout, the write shows up.
        .op(2, Fun::Read, NIL, NIL)
        .op(2, Fun::Read, NIL, int(7));
    assert_eq!(h.check().verdict, Verdict::Linearizable);
}

#[test]
fn indeterminate_operations_may_never_happen() {
    let mut h = H::default();
    h.invoke(1, Fun::Write, int(7))
        .info(1, Fun::Write, int(7))
        .invoke(5, Fun::Cas, cas(0, 9))
        .info(5, Fun::Cas, cas(0, 9))
        .op(2, Fun::Read, NIL, NIL)
        .op(2, Fun::Write, int(3), int(3))
        .op(2, Fun::Read, NIL, int(3))
        // Invoked and never completed: indeterminate too.
        .invoke(3, Fun::Write, int(4));
    assert_eq!(h.check().verdict, Verdict::Linearizable);
}

#[test]
fn indeterminate_cas_can_take_effect_late() {
    let mut h = H::default();
    h.op(1, Fun::Write, int(1), int(1))
        .invoke(2, Fun::Cas, cas(1, 8))
        .info(2, Fun::Cas, cas(1, 8))
        .op(3, Fun::Read, NIL, int(1))
        .op(3, Fun::Read, NIL, int(8));
    assert_eq!(h.check().verdict, Verdict::Linearizable);
}

#[test]
fn indeterminate_write_cannot_precede_its_invocation() {
    let mut h = H::default();
    h.op(2, Fun::Read, NIL, int(7))
        .invoke(1, Fun::Write, int(7))
        .info(1, Fun::Write, int(7));
    assert_eq!(h.check().verdict, Verdict::NotLinearizable);
}

#[test]
fn failed_write_never_happened() {
    let mut h = H::default();
    h.invoke(1, Fun::Write, int(3))
        .fail(1, Fun::Write, int(3))
        .op(2, Fun::Read, NIL, int(3));
    assert_eq!(h.check().verdict, Verdict::NotLinearizable);
}

#[test]
fn keys_are_checked_independently() {
    let mut h = H::default();
    h.push(EventKind::Invoke, 1, Fun::Write, "a", int(1), None)
        .push(EventKind::Ok, 1, Fun::Write, "a", int(1), None)
        .push(EventKind::Invoke, 1, Fun::Read, "b", NIL, None)
        .push(EventKind::Ok, 1, Fun::Read, "b", NIL, None)
        .push(EventKind::Invoke, 2, Fun::Read, "c", NIL, None)
        .push(EventKind::Ok, 2, Fun::Read, "c", int(1), None);
    let r = h.check();
    assert_eq!(r.verdict, Verdict::NotLinearizable);
    let verdicts: Vec<(&str, Verdict)> =
        r.keys.iter().map(|k| (k.key.as_str(), k.verdict)).collect();
    assert_eq!(
        verdicts,
        [
            ("a", Verdict::Linearizable),
            ("b", Verdict::Linearizable),
            ("c", Verdict::NotLinearizable)
        ]
    );
}

/// `n` fully concurrent writes of distinct values, then a read of a value none wrote: the search
/// must try every subset of the writes before it can say no, 2^n configurations.
fn exponential_history(n: u64) -> H {
    let mut h = H::default();
    for p in 0..n {
        h.invoke(p, Fun::Write, int(p as i64));
    }
    for p in 0..n {
        h.ok(p, Fun::Write, int(p as i64));
        h.invoke(p + n, Fun::Write, int((p + n) as i64));
    }
    for p in 0..n {
        h.ok(p + n, Fun::Write, int((p + n) as i64));
    }
    h.op(999, Fun::Read, NIL, int(-1));
    h
}

#[test]
fn exhausted_budget_answers_unknown_never_illegal() {
    let h = exponential_history(30);
    for budget in [Duration::ZERO, Duration::from_millis(50)] {
        let opts = CheckOptions {
            budget,
            ..CheckOptions::default()
        };
        let r = check_events(&Register, &h.events, &opts).expect("well-formed");
        assert_eq!(r.verdict, Verdict::Unknown, "budget {budget:?}");
        assert_eq!(r.anomalies().count(), 0);
    }
    // A memory cap answers unknown the same way.
    let opts = CheckOptions {
        max_cache_bytes: 64 << 10,
        ..CheckOptions::default()
    };
    let r = check_events(&Register, &h.events, &opts).expect("well-formed");
    assert_eq!(r.verdict, Verdict::Unknown);
    let reason = r.keys[0].unknown_reason.as_deref().unwrap_or("");
    assert!(reason.contains("memory cap"), "{reason}");
    // The same shape, small enough to finish, is indeed illegal.
    assert_eq!(
        exponential_history(4).check().verdict,
        Verdict::NotLinearizable
    );
}

#[test]
fn versioned_register_accepts_a_correct_history() {
    let mut h = H::default();
    h.vinvoke(1, Fun::Write, int(1), None)
        .vinvoke(2, Fun::Read, NIL, None)
        .vok(2, Fun::Read, NIL, 0)
        .vok(1, Fun::Write, int(1), 5)
        .vinvoke(2, Fun::Cas, int(2), Some(5))
        .vinvoke(3, Fun::Read, NIL, None)
        .vok(3, Fun::Read, int(1), 5)
        .vok(2, Fun::Cas, int(2), 9)
        .vinvoke(3, Fun::Read, NIL, None)
        .vok(3, Fun::Read, int(2), 9)
        // An indeterminate write whose version nobody saw, then observed by a read.
        .vinvoke(4, Fun::Write, int(3), None)
        .push(EventKind::Info, 4, Fun::Write, "k", int(3), None)
        .vinvoke(3, Fun::Read, NIL, None)
        .vok(3, Fun::Read, int(3), 12)
        .vinvoke(3, Fun::Cas, int(4), Some(12))
        .vok(3, Fun::Cas, int(4), 13);
    for precheck in [true, false] {
        assert_eq!(h.vcheck(precheck).verdict, Verdict::Linearizable);
    }
}

/// Asserts the pre-check catches it and the exhaustive search, on its own, agrees.
fn assert_precheck_violation(h: &H, reason: &str) {
    let r = h.vcheck(true);
    assert_eq!(r.verdict, Verdict::NotLinearizable);
    let a = r.anomalies().next().expect("anomaly");
    assert!(
        a.reason.starts_with("pre-check:") && a.reason.contains(reason),
        "{}",
        a.reason
    );
    assert!(!a.unorderable.is_empty());
    assert_eq!(
        h.vcheck(false).verdict,
        Verdict::NotLinearizable,
        "search disagrees with pre-check"
    );
}

#[test]
fn versioned_precheck_duplicate_versions() {
    let mut h = H::default();
    h.vinvoke(1, Fun::Write, int(1), None)
        .vinvoke(2, Fun::Write, int(2), None)
        .vok(1, Fun::Write, int(1), 3)
        .vok(2, Fun::Write, int(2), 3);
    assert_precheck_violation(&h, "two acknowledged writes produced version 3");
}

#[test]
fn versioned_precheck_read_mismatching_its_write() {
    let mut h = H::default();
    h.vinvoke(1, Fun::Write, int(1), None)
        .vok(1, Fun::Write, int(1), 3)
        .vinvoke(2, Fun::Read, NIL, None)
        .vok(2, Fun::Read, int(2), 3);
    assert_precheck_violation(&h, "was written as 1");
}

#[test]
fn versioned_precheck_read_of_unwritten_version() {
    let mut h = H::default();
    h.vinvoke(2, Fun::Read, NIL, None)
        .vok(2, Fun::Read, int(2), 4);
    assert_precheck_violation(&h, "no write produced");
}

#[test]
fn versioned_precheck_stale_read_breaks_real_time_order() {
    let mut h = H::default();
    h.vinvoke(1, Fun::Write, int(1), None)
        .vok(1, Fun::Write, int(1), 3)
        .vinvoke(1, Fun::Write, int(2), None)
        .vok(1, Fun::Write, int(2), 4)
        .vinvoke(2, Fun::Read, NIL, None)
        .vok(2, Fun::Read, int(1), 3);
    assert_precheck_violation(&h, "saw an older version");
}

#[test]
fn versioned_precheck_lost_update() {
    let mut h = H::default();
    h.vinvoke(1, Fun::Write, int(1), None)
        .vok(1, Fun::Write, int(1), 3)
        .vinvoke(2, Fun::Cas, int(2), Some(3))
        .vok(2, Fun::Cas, int(2), 4)
        .vinvoke(3, Fun::Cas, int(5), Some(3))
        .vok(3, Fun::Cas, int(5), 6);
    assert_precheck_violation(&h, "saw an older version");
}

#[test]
fn versioned_precheck_read_from_the_future() {
    let mut h = H::default();
    h.vinvoke(2, Fun::Read, NIL, None)
        .vok(2, Fun::Read, int(1), 3)
        .vinvoke(1, Fun::Write, int(1), None)
        .vok(1, Fun::Write, int(1), 3);
    assert_precheck_violation(&h, "before the write producing it began");
}

#[test]
fn malformed_versioned_operations_are_typed_errors() {
    let mut h = H::default();
    h.vinvoke(1, Fun::Cas, int(1), None)
        .vok(1, Fun::Cas, int(1), 3);
    let err = check_events(&VersionedRegister, &h.events, &CheckOptions::default()).unwrap_err();
    assert!(err.to_string().contains("expected version"), "{err}");
    let mut h = H::default();
    h.invoke(1, Fun::Read, NIL).ok(1, Fun::Read, NIL);
    let err = check_events(&VersionedRegister, &h.events, &CheckOptions::default()).unwrap_err();
    assert!(err.to_string().contains("must carry a version"), "{err}");
}

#[test]
fn unobservable_indeterminate_writes_are_pruned_observed_ones_kept() {
    let mut h = H::default();
    h.invoke(1, Fun::Write, int(7))
        .info(1, Fun::Write, int(7))
        .invoke(2, Fun::Write, int(8))
        .info(2, Fun::Write, int(8))
        // 9 is expected by an indeterminate cas that writes 10, which nobody reads: both go.
        .invoke(3, Fun::Write, int(9))
        .info(3, Fun::Write, int(9))
        .invoke(4, Fun::Cas, cas(9, 10))
        .info(4, Fun::Cas, cas(9, 10))
        .op(5, Fun::Read, NIL, int(8));
    let pruned = h.check();
    assert_eq!(pruned.verdict, Verdict::Linearizable);
    // Left: the write of 8 (observed) and the read.
    assert_eq!(pruned.ops, 2);
    let full = check_events(
        &Register,
        &h.events,
        &CheckOptions {
            prune: false,
            ..CheckOptions::default()
        },
    )
    .expect("well-formed");
    assert_eq!(full.verdict, Verdict::Linearizable);
    assert_eq!(full.ops, 5);
}
