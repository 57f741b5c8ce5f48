//! Property tests: decoders never panic on arbitrary input, and the checker accepts every history
//! produced by a real linearizable execution and agrees with its own pre-check.

use std::time::Duration;

use augur_jepsen::checker::{check_events, CheckOptions, Verdict};
use augur_jepsen::history::{pair_events, read_jsonl, Event, EventKind, Fun, Payload, Value};
use augur_jepsen::jepsen_log::parse_jepsen_log;
use augur_jepsen::model::{Model, Register, VersionedRegister};
use proptest::prelude::*;

fn opts() -> CheckOptions {
    CheckOptions {
        budget: Duration::from_secs(30),
        threads: 1,
        ..CheckOptions::default()
    }
}

/// Lines built from the Jepsen log's own vocabulary, so the parser's deeper branches are reached.
fn jepsen_line() -> impl Strategy<Value = String> {
    let proc_ = prop_oneof![
        Just("0".to_string()),
        Just("17".to_string()),
        Just(":nemesis".to_string()),
        "[a-z0-9:-]{0,4}"
    ];
    let kind = prop_oneof![
        Just(":invoke"),
        Just(":ok"),
        Just(":fail"),
        Just(":info"),
        Just(":bogus"),
        Just("")
    ];
    let f = prop_oneof![
        Just(":read"),
        Just(":write"),
        Just(":cas"),
        Just(":x"),
        Just("")
    ];
    let value = prop_oneof![
        Just("nil".to_string()),
        Just(":timed-out".to_string()),
        Just("[1 2]".to_string()),
        Just("[1".to_string()),
        Just("\"s\"".to_string()),
        "-?[0-9]{1,25}",
        "\\PC{0,8}",
    ];
    let sep = prop_oneof![Just("\t"), Just(" "), Just("   ")];
    (proc_, kind, f, value, sep)
        .prop_map(|(p, k, f, v, s)| format!("INFO  jepsen.util - {p}{s}{k}{s}{f}{s}{v}"))
}

proptest! {
    #[test]
    fn jepsen_parser_never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = parse_jepsen_log(&text);
    }

    #[test]
    fn jepsen_parser_never_panics_on_near_valid_lines(lines in proptest::collection::vec(jepsen_line(), 0..30)) {
        let text = lines.join("\n");
        match parse_jepsen_log(&text) {
            Ok(events) => {
                // Whatever parsed must also be checkable or rejected with a typed error.
                let _ = check_events(&Register, &events, &opts());
            }
            Err(e) => prop_assert!(e.line >= 1 && e.line <= lines.len()),
        }
    }

    #[test]
    fn results_reader_never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("results.json");
        std::fs::write(&path, &bytes).expect("write");
        prop_assert!(augur_jepsen::results::RunResults::read(&path).is_err());
    }

    #[test]
    fn jsonl_reader_never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = read_jsonl(bytes.as_slice());
    }

    #[test]
    fn jsonl_reader_never_panics_on_near_valid_lines(
        lines in proptest::collection::vec(
            (prop_oneof![Just("invoke"), Just("ok"), Just("fail"), Just("info"), Just("x")],
             prop_oneof![Just("read"), Just("write"), Just("cas")],
             prop_oneof![Just("null"), Just("1"), Just("[1,2]"), Just("[1]"), Just("\"a\""), Just("{}"), Just("1.5"), Just("-99999999999999999999")],
             0u64..4, 0u64..100, proptest::option::of(0u64..10))
                .prop_map(|(t, f, v, p, time, ver)| {
                    let ver = ver.map_or(String::new(), |v| format!(",\"version\":{v}"));
                    format!("{{\"type\":\"{t}\",\"process\":{p},\"time\":{time},\"f\":\"{f}\",\"key\":\"k\",\"value\":{v}{ver}}}")
                }),
            0..20)
    ) {
        let text = lines.join("\n");
        if let Ok(events) = read_jsonl(text.as_bytes()) {
            let _ = check_events(&Register, &events, &opts());
            let _ = check_events(&VersionedRegister, &events, &opts());
        }
    }
}

/// One step of a simulated execution: which process acts and how.
#[derive(Debug, Clone)]
enum Action {
    Invoke { f: u8, value: i64 },
    TakeEffect,
    Complete { info: bool },
}

fn action() -> impl Strategy<Value = (usize, Action)> {
    (
        0usize..4,
        prop_oneof![
            (0u8..3, 0i64..3).prop_map(|(f, value)| Action::Invoke { f, value }),
            Just(Action::TakeEffect),
            Just(Action::TakeEffect),
            prop_oneof![4 => Just(false), 1 => Just(true)]
                .prop_map(|info| Action::Complete { info }),
        ],
    )
}

/// A pending operation in the simulation.
struct Pending {
    process: u64,
    f: Fun,
    arg: Payload,
    expected_version: Option<u64>,
    /// Set once it has taken effect: the completion's value and version (None for a failed cas).
    result: Option<Option<(Payload, Option<u64>)>>,
}

/// Runs a real register with versions against random client behaviour and records the history,
/// which is therefore linearizable by construction (each op takes effect between its invoke and
/// its completion). `versioned` records versions and compares them in cas.
fn simulate(actions: &[(usize, Action)], versioned: bool) -> Vec<Event> {
    let mut value = Value::Nil;
    let mut version = 0u64;
    let mut slots: Vec<Option<Pending>> = (0..4).map(|_| None).collect();
    let mut next_process = [0u64, 1, 2, 3];
    let mut events = Vec::new();
    let mut time = 0u64;
    for (slot, act) in actions {
        time += 1;
        let slot = *slot;
        match act {
            Action::Invoke { f, value: v } => {
                if slots[slot].is_some() {
                    continue;
                }
                let (f, arg, expected_version) = match f {
                    0 => (Fun::Read, Payload::NIL, None),
                    1 => (Fun::Write, Payload::One(Value::Int(*v)), None),
                    _ if versioned => (
                        Fun::Cas,
                        Payload::One(Value::Int(*v)),
                        Some(version.saturating_sub(*v as u64 % 2)),
                    ),
                    _ => (
                        Fun::Cas,
                        Payload::Pair(
                            if *v == 0 {
                                Value::Nil
                            } else {
                                Value::Int(*v - 1)
                            },
                            Value::Int(*v),
                        ),
                        None,
                    ),
                };
                let process = next_process[slot];
                events.push(Event {
                    kind: EventKind::Invoke,
                    process,
                    time,
                    f,
                    key: "k".into(),
                    value: arg.clone(),
                    version: expected_version,
                });
                slots[slot] = Some(Pending {
                    process,
                    f,
                    arg,
                    expected_version,
                    result: None,
                });
            }
            Action::TakeEffect => {
                let Some(p) = slots[slot].as_mut() else {
                    continue;
                };
                if p.result.is_some() {
                    continue;
                }
                let result = match (p.f, &p.arg) {
                    (Fun::Read, _) => Some((Payload::One(value.clone()), Some(version))),
                    (Fun::Write, Payload::One(v)) => {
                        version += 1 + time % 3;
                        value = v.clone();
                        Some((p.arg.clone(), Some(version)))
                    }
                    (Fun::Cas, Payload::One(v)) if p.expected_version == Some(version) => {
                        version += 1 + time % 3;
                        value = v.clone();
                        Some((p.arg.clone(), Some(version)))
                    }
                    (Fun::Cas, Payload::Pair(old, new)) if *old == value => {
                        version += 1;
                        value = new.clone();
                        Some((p.arg.clone(), None))
                    }
                    _ => None,
                };
                p.result = Some(result);
            }
            Action::Complete { info } => {
                let Some(p) = slots[slot].as_ref() else {
                    continue;
                };
                let (kind, value, version) = match (&p.result, info) {
                    (_, true) => (EventKind::Info, p.arg.clone(), None),
                    (None, false) => continue,
                    (Some(None), false) => (EventKind::Fail, p.arg.clone(), None),
                    (Some(Some((v, ver))), false) => (
                        EventKind::Ok,
                        v.clone(),
                        if versioned { *ver } else { None },
                    ),
                };
                events.push(Event {
                    kind,
                    process: p.process,
                    time,
                    f: p.f,
                    key: "k".into(),
                    value,
                    version,
                });
                if *info {
                    next_process[slot] += 4;
                }
                slots[slot] = None;
            }
        }
    }
    events
}

/// Changes one acknowledged read's result to something no write produced.
fn corrupt_a_read(events: &mut [Event], pick: usize, versioned: bool) -> bool {
    let reads: Vec<usize> = events
        .iter()
        .enumerate()
        .filter(|(_, e)| e.kind == EventKind::Ok && e.f == Fun::Read)
        .map(|(i, _)| i)
        .collect();
    if reads.is_empty() {
        return false;
    }
    let i = reads[pick % reads.len()];
    events[i].value = Payload::One(Value::Int(42));
    if versioned {
        events[i].version = events[i].version.map(|v| v + 1);
    }
    true
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn simulated_register_histories_are_linearizable(actions in proptest::collection::vec(action(), 0..80)) {
        let events = simulate(&actions, false);
        let r = check_events(&Register, &events, &opts()).expect("simulation produces well-formed histories");
        prop_assert_eq!(r.verdict, Verdict::Linearizable, "{:?}", r.anomalies().next());
    }

    #[test]
    fn simulated_versioned_histories_are_linearizable(actions in proptest::collection::vec(action(), 0..80)) {
        let events = simulate(&actions, true);
        for precheck in [true, false] {
            let o = CheckOptions { precheck, ..opts() };
            let r = check_events(&VersionedRegister, &events, &o).expect("well-formed");
            prop_assert_eq!(r.verdict, Verdict::Linearizable, "{:?}", r.anomalies().next());
        }
    }

    #[test]
    fn corrupted_reads_are_caught(actions in proptest::collection::vec(action(), 0..80), pick in 0usize..100) {
        let mut events = simulate(&actions, false);
        if corrupt_a_read(&mut events, pick, false) {
            let r = check_events(&Register, &events, &opts()).expect("well-formed");
            prop_assert_eq!(r.verdict, Verdict::NotLinearizable);
        }
    }

    #[test]
    fn precheck_agrees_with_search(actions in proptest::collection::vec(action(), 0..60), pick in 0usize..100, shift in 0u64..3) {
        let mut events = simulate(&actions, true);
        // Perturb a version or a read so some histories become illegal in various ways.
        let n = events.len();
        if n > 0 {
            let e = &mut events[pick % n];
            e.version = e.version.map(|v| v.saturating_sub(shift));
        }
        corrupt_a_read(&mut events, pick / 2, true);
        let with = check_events(&VersionedRegister, &events, &opts());
        let without = check_events(&VersionedRegister, &events, &CheckOptions { precheck: false, ..opts() });
        match (with, without) {
            (Ok(a), Ok(b)) => prop_assert_eq!(a.verdict, b.verdict),
            (Err(_), Err(_)) => {}
            (a, b) => prop_assert!(false, "one check errored: {:?} / {:?}", a.map(|r| r.verdict), b.map(|r| r.verdict)),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Dropping unobservable indeterminate operations never changes a verdict.
    #[test]
    fn pruning_never_changes_a_verdict(
        actions in proptest::collection::vec(action(), 0..60),
        pick in 0usize..100,
        corrupt in any::<bool>(),
        versioned in any::<bool>(),
    ) {
        let mut events = simulate(&actions, versioned);
        if corrupt {
            corrupt_a_read(&mut events, pick, versioned);
        }
        let run = |prune: bool| {
            let o = CheckOptions { prune, precheck: false, ..opts() };
            if versioned {
                check_events(&VersionedRegister, &events, &o).map(|r| (r.verdict, r.ops))
            } else {
                check_events(&Register, &events, &o).map(|r| (r.verdict, r.ops))
            }
        };
        let (pruned, full) = (run(true).expect("well-formed"), run(false).expect("well-formed"));
        prop_assert_eq!(pruned.0, full.0);
        prop_assert!(pruned.1 <= full.1);
    }
}

/// (call, return, input, output) of one operation for the brute-force checker.
type BruteOp<M> = (
    u64,
    Option<u64>,
    <M as Model>::Input,
    Option<<M as Model>::Output>,
);
/// A pending invocation in the random history generator: (process, f, argument, version).
type PendingInvoke = Option<(u64, Fun, Payload, Option<u64>)>;

/// Decides linearizability by trying every order (and every subset of indeterminate operations)
/// that respects real time: slow, obviously correct, for tiny histories only.
fn brute_force<M: Model>(model: &M, events: &[Event]) -> Option<bool> {
    let paired = pair_events(events).ok()?;
    let mut ops = Vec::new();
    for p in &paired {
        let (input, output) = model.operation(p).ok()?;
        ops.push((p.invoke.time, p.return_time(), input, output));
    }
    fn go<M: Model>(model: &M, ops: &[BruteOp<M>], state: &M::State, remaining: u32) -> bool {
        // Done once only indeterminate operations are left: they may never have happened.
        if (0..ops.len()).all(|i| remaining & (1 << i) == 0 || ops[i].1.is_none()) {
            return true;
        }
        for i in (0..ops.len()).filter(|&i| remaining & (1 << i) != 0) {
            let call = ops[i].0;
            let blocked = (0..ops.len())
                .any(|j| j != i && remaining & (1 << j) != 0 && ops[j].1.is_some_and(|r| r < call));
            if blocked {
                continue;
            }
            if let Some(next) = model.step(state, &ops[i].2, ops[i].3.as_ref()) {
                if go(model, ops, &next, remaining & !(1 << i)) {
                    return true;
                }
            }
        }
        false
    }
    Some(go(model, &ops, &model.init(), (1u32 << ops.len()) - 1))
}

/// Random, mostly non-linearizable histories of at most 7 operations on one key.
fn random_history(steps: &[(usize, u8, i64, u64)], versioned: bool) -> Vec<Event> {
    let mut events = Vec::new();
    let mut pending: [PendingInvoke; 3] = [None, None, None];
    let mut next_process = [0u64, 1, 2];
    let mut invoked = 0;
    for (t, &(slot, choice, v, ver)) in steps.iter().enumerate() {
        let slot = slot % 3;
        let time = t as u64 / 2; // some equal timestamps
        let value = if v < 0 { Value::Nil } else { Value::Int(v) };
        match pending[slot].take() {
            None if invoked < 7 => {
                let (f, arg, version) = match choice % 3 {
                    0 => (Fun::Read, Payload::NIL, None),
                    1 => (Fun::Write, Payload::One(value), None),
                    _ if versioned => (Fun::Cas, Payload::One(value), Some(ver)),
                    _ => (
                        Fun::Cas,
                        Payload::Pair(Value::Int(v.rem_euclid(2)), value),
                        None,
                    ),
                };
                let process = next_process[slot];
                events.push(Event {
                    kind: EventKind::Invoke,
                    process,
                    time,
                    f,
                    key: "k".into(),
                    value: arg.clone(),
                    version,
                });
                pending[slot] = Some((process, f, arg, version));
                invoked += 1;
            }
            None => {}
            Some((process, f, arg, _)) => {
                let kind = match choice % 5 {
                    0 => EventKind::Fail,
                    1 => EventKind::Info,
                    _ => EventKind::Ok,
                };
                let (value, version) = match (f, kind) {
                    (Fun::Read, EventKind::Ok) => (Payload::One(value), versioned.then_some(ver)),
                    (_, EventKind::Ok) => (arg, versioned.then_some(ver + 1)),
                    _ => (arg, None),
                };
                events.push(Event {
                    kind,
                    process,
                    time,
                    f,
                    key: "k".into(),
                    value,
                    version,
                });
                if kind == EventKind::Info {
                    next_process[slot] += 3;
                }
            }
        }
    }
    events
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    /// The WGL search (with and without pruning and pre-check) agrees with exhaustive search.
    #[test]
    fn search_agrees_with_brute_force(
        steps in proptest::collection::vec((0usize..3, 0u8..15, -1i64..3, 0u64..4), 0..24),
        versioned in any::<bool>(),
    ) {
        let events = random_history(&steps, versioned);
        for (prune, precheck) in [(true, true), (false, false)] {
            let o = CheckOptions { prune, precheck, ..opts() };
            let (got, want) = if versioned {
                (check_events(&VersionedRegister, &events, &o).ok(), brute_force(&VersionedRegister, &events))
            } else {
                (check_events(&Register, &events, &o).ok(), brute_force(&Register, &events))
            };
            let (Some(got), Some(want)) = (got, want) else {
                continue; // malformed for this model (e.g. a versioned cas without a version)
            };
            let want = if want { Verdict::Linearizable } else { Verdict::NotLinearizable };
            prop_assert_eq!(got.verdict, want, "prune={} precheck={} events={:?}", prune, precheck, events);
        }
    }
}
