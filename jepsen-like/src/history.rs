//! The history model: what clients asked for and what they were told.
//!
//! A history is a sequence of [`Event`]s. Every operation is an `invoke` followed, on the same
//! process, by exactly one completion: `ok` (it happened, with this result), `fail` (it certainly
//! did not happen) or `info` (nobody knows). A process has at most one operation outstanding;
//! after an `info` the client continues under a new process id, as in Jepsen.
//!
//! The on-disk form is `history.jsonl`: one JSON object per line with Jepsen's field names
//! (`type`, `process`, `f`, `value`, `time` in nanoseconds) plus `key` and `version`. Reading
//! and writing it lives in the `jsonl` submodule, re-exported here.

use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Serialize};

mod jsonl;
pub use jsonl::{
    parse_jsonl_line, read_jsonl, to_jsonl_line, HistoryWriter, Recorder, MAX_LINE_BYTES,
};

/// How an event relates to its operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// The client sent the request.
    Invoke,
    /// The operation took effect, with the result in the event.
    Ok,
    /// The operation certainly did not take effect.
    Fail,
    /// Unknown outcome: it may have taken effect at any time after its invocation, or never.
    Info,
}

/// The operation's function, as Jepsen's `f`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fun {
    /// Read the register.
    Read,
    /// Overwrite the register.
    Write,
    /// Compare-and-set: on a plain register against a value, on a versioned one against a version.
    Cas,
}

impl fmt::Display for Fun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Fun::Read => "read",
            Fun::Write => "write",
            Fun::Cas => "cas",
        })
    }
}

/// A register value. Jepsen's etcd test uses small integers; Augur's own workload may use strings.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    /// Absent (`nil` / JSON `null`): the initial state of every register.
    Nil,
    /// An integer value.
    Int(i64),
    /// A string value.
    Str(String),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Nil => f.write_str("nil"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Str(s) => write!(f, "{s:?}"),
        }
    }
}

/// The `value` field of an event: one value, or a pair (a plain register's cas is `[old new]`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Payload {
    /// A single value (possibly `nil`).
    One(Value),
    /// Two values: `[expected new]` for a plain cas.
    Pair(Value, Value),
}

impl Payload {
    /// The payload of an event that carries no value.
    pub const NIL: Payload = Payload::One(Value::Nil);
}

impl fmt::Display for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Payload::One(v) => write!(f, "{v}"),
            Payload::Pair(a, b) => write!(f, "[{a} {b}]"),
        }
    }
}

/// One line of a history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// invoke / ok / fail / info.
    pub kind: EventKind,
    /// The logical client process; one outstanding operation at a time.
    pub process: u64,
    /// When it happened, in nanoseconds from an arbitrary origin; only the order matters.
    pub time: u64,
    /// What the operation does.
    pub f: Fun,
    /// The register it touches; histories of independent keys are checked separately.
    pub key: String,
    /// Argument on invoke, result on ok.
    pub value: Payload,
    /// Versioned registers only: the compared version on a cas invoke, the observed or produced
    /// version on ok.
    pub version: Option<u64>,
}

/// Errors turning raw events into operations or reading/writing `history.jsonl`.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// A completion arrived for a process with nothing outstanding.
    #[error("event {index}: {kind:?} on process {process} without a pending invoke")]
    CompletionWithoutInvoke {
        /// Position of the event in the history.
        index: usize,
        /// The completion kind.
        kind: EventKind,
        /// The process.
        process: u64,
    },
    /// A process invoked a second operation before the first completed.
    #[error("event {index}: process {process} invoked while its operation from event {pending} is pending")]
    DoubleInvoke {
        /// Position of the second invoke.
        index: usize,
        /// Position of the pending invoke.
        pending: usize,
        /// The process.
        process: u64,
    },
    /// The completion does not describe the same operation as its invoke.
    #[error("event {index}: completion of process {process} is {got}/{got_key:?} but the invoke was {want}/{want_key:?}")]
    MismatchedCompletion {
        /// Position of the completion.
        index: usize,
        /// The process.
        process: u64,
        /// Function of the invoke.
        want: Fun,
        /// Function of the completion.
        got: Fun,
        /// Key of the invoke.
        want_key: String,
        /// Key of the completion.
        got_key: String,
    },
    /// Time went backwards between consecutive events.
    #[error("event {index}: time {time} is before the previous event's {previous}")]
    TimeWentBack {
        /// Position of the event.
        index: usize,
        /// Its time.
        time: u64,
        /// The previous event's time.
        previous: u64,
    },
    /// An operation's value or version has the wrong shape for the model.
    #[error("event {index}: {reason}")]
    BadOperation {
        /// Position of the offending event.
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// A `history.jsonl` line could not be decoded.
    #[error("line {line}: {reason}")]
    Jsonl {
        /// 1-based line number.
        line: usize,
        /// Why it was rejected.
        reason: String,
    },
    /// Reading or writing the file failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// An invoke paired with its completion. `fail` pairs never appear: they did not happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairedOp {
    /// The invoke event.
    pub invoke: Event,
    /// Index of the invoke in the original history.
    pub invoke_index: usize,
    /// `Some` for `ok`; `None` when the outcome is unknown (`info`, or no completion at all).
    pub completion: Option<Event>,
    /// Index of the completion in the history, if there was one (an `info` has one).
    pub completion_index: Option<usize>,
}

impl PairedOp {
    /// Completion time, or `None` for +infinity (an indeterminate operation).
    pub fn return_time(&self) -> Option<u64> {
        self.completion.as_ref().map(|c| c.time)
    }
}

/// Pairs invokes with completions, drops `fail`ed operations and turns `info` completions and
/// unmatched trailing invokes into indeterminate operations.
///
/// Times must be non-decreasing: a history is a log of what was observed, in order.
pub fn pair_events(events: &[Event]) -> Result<Vec<PairedOp>, HistoryError> {
    let mut pending: HashMap<u64, usize> = HashMap::new();
    let mut slots: Vec<Option<PairedOp>> = Vec::new();
    let mut slot_of: HashMap<usize, usize> = HashMap::new();
    let mut previous = 0u64;
    for (index, ev) in events.iter().enumerate() {
        if ev.time < previous {
            return Err(HistoryError::TimeWentBack {
                index,
                time: ev.time,
                previous,
            });
        }
        previous = ev.time;
        match ev.kind {
            EventKind::Invoke => {
                if let Some(&p) = pending.get(&ev.process) {
                    return Err(HistoryError::DoubleInvoke {
                        index,
                        pending: p,
                        process: ev.process,
                    });
                }
                pending.insert(ev.process, index);
                slot_of.insert(index, slots.len());
                slots.push(Some(PairedOp {
                    invoke: ev.clone(),
                    invoke_index: index,
                    completion: None,
                    completion_index: None,
                }));
            }
            kind => {
                let Some(inv_index) = pending.remove(&ev.process) else {
                    return Err(HistoryError::CompletionWithoutInvoke {
                        index,
                        kind,
                        process: ev.process,
                    });
                };
                let inv = &events[inv_index];
                if inv.f != ev.f || inv.key != ev.key {
                    return Err(HistoryError::MismatchedCompletion {
                        index,
                        process: ev.process,
                        want: inv.f,
                        got: ev.f,
                        want_key: inv.key.clone(),
                        got_key: ev.key.clone(),
                    });
                }
                let slot = slot_of[&inv_index];
                match kind {
                    EventKind::Fail => slots[slot] = None,
                    EventKind::Ok => {
                        if let Some(op) = slots[slot].as_mut() {
                            op.completion = Some(ev.clone());
                            op.completion_index = Some(index);
                        }
                    }
                    EventKind::Info | EventKind::Invoke => {
                        if let Some(op) = slots[slot].as_mut() {
                            op.completion_index = Some(index);
                        }
                    }
                }
            }
        }
    }
    Ok(slots.into_iter().flatten().collect())
}

/// Key used for events that name none: the whole history is a single register.
pub const DEFAULT_KEY: &str = "register";

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn ev(kind: EventKind, process: u64, time: u64, f: Fun, value: Payload) -> Event {
        Event {
            kind,
            process,
            time,
            f,
            key: "k".into(),
            value,
            version: None,
        }
    }

    #[test]
    fn pairing_drops_fail_and_keeps_info_open() {
        let events = vec![
            ev(
                EventKind::Invoke,
                1,
                1,
                Fun::Write,
                Payload::One(Value::Int(1)),
            ),
            ev(
                EventKind::Invoke,
                2,
                2,
                Fun::Write,
                Payload::One(Value::Int(2)),
            ),
            ev(EventKind::Invoke, 3, 3, Fun::Read, Payload::NIL),
            ev(
                EventKind::Fail,
                1,
                4,
                Fun::Write,
                Payload::One(Value::Int(1)),
            ),
            ev(
                EventKind::Info,
                2,
                5,
                Fun::Write,
                Payload::One(Value::Int(2)),
            ),
            ev(EventKind::Ok, 3, 6, Fun::Read, Payload::One(Value::Int(2))),
            ev(EventKind::Invoke, 4, 7, Fun::Read, Payload::NIL),
        ];
        let ops = pair_events(&events).unwrap();
        assert_eq!(ops.len(), 3);
        assert_eq!(ops[0].invoke.process, 2);
        assert_eq!(ops[0].return_time(), None);
        assert_eq!(ops[1].return_time(), Some(6));
        assert_eq!(ops[2].invoke.process, 4);
        assert_eq!(ops[2].return_time(), None);
    }

    #[test]
    fn pairing_rejects_malformed_histories() {
        let orphan = vec![ev(EventKind::Ok, 1, 1, Fun::Read, Payload::NIL)];
        assert!(matches!(
            pair_events(&orphan),
            Err(HistoryError::CompletionWithoutInvoke { .. })
        ));
        let double = vec![
            ev(EventKind::Invoke, 1, 1, Fun::Read, Payload::NIL),
            ev(EventKind::Invoke, 1, 2, Fun::Read, Payload::NIL),
        ];
        assert!(matches!(
            pair_events(&double),
            Err(HistoryError::DoubleInvoke { .. })
        ));
        let mismatch = vec![
            ev(EventKind::Invoke, 1, 1, Fun::Read, Payload::NIL),
            ev(EventKind::Ok, 1, 2, Fun::Write, Payload::NIL),
        ];
        assert!(matches!(
            pair_events(&mismatch),
            Err(HistoryError::MismatchedCompletion { .. })
        ));
        let back = vec![
            ev(EventKind::Invoke, 1, 5, Fun::Read, Payload::NIL),
            ev(EventKind::Ok, 1, 2, Fun::Read, Payload::NIL),
        ];
        assert!(matches!(
            pair_events(&back),
            Err(HistoryError::TimeWentBack { .. })
        ));
    }
}
