//! The history model: what clients asked for and what they were told.
//!
//! A history is a sequence of [`Event`]s. Every operation is an `invoke` followed, on the same
//! process, by exactly one completion: `ok` (it happened, with this result), `fail` (it certainly
//! did not happen) or `info` (nobody knows). A process has at most one operation outstanding;
//! after an `info` the client continues under a new process id, as in Jepsen.
//!
//! The on-disk form is `history.jsonl`: one JSON object per line with Jepsen's field names
//! (`type`, `process`, `f`, `value`, `time` in nanoseconds) plus `key` and `version`.

use std::collections::HashMap;
use std::fmt;
use std::io::{BufRead, Write};

use serde::{Deserialize, Serialize};

/// Longest `history.jsonl` line accepted; a longer line is corrupt input, not an event.
pub const MAX_LINE_BYTES: usize = 1 << 20;

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

/// The serialised form of one `history.jsonl` line, with Jepsen's field names. Other fields
/// (Jepsen's `error`, a node name...) are ignored, so richer records still load.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct JsonlRecord {
    #[serde(rename = "type")]
    kind: EventKind,
    process: u64,
    time: u64,
    f: Fun,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    value: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    version: Option<u64>,
}

fn value_from_json(v: &serde_json::Value) -> Result<Value, String> {
    match v {
        serde_json::Value::Null => Ok(Value::Nil),
        serde_json::Value::Number(n) => n
            .as_i64()
            .map(Value::Int)
            .ok_or_else(|| format!("value {n} is not a 64-bit integer")),
        serde_json::Value::String(s) => Ok(Value::Str(s.clone())),
        other => Err(format!("value {other} is not null, an integer or a string")),
    }
}

fn payload_from_json(v: &serde_json::Value) -> Result<Payload, String> {
    match v {
        serde_json::Value::Array(items) => match items.as_slice() {
            [a, b] => Ok(Payload::Pair(value_from_json(a)?, value_from_json(b)?)),
            _ => Err(format!(
                "a list value must have exactly 2 elements, got {}",
                items.len()
            )),
        },
        one => Ok(Payload::One(value_from_json(one)?)),
    }
}

fn payload_to_json(p: &Payload) -> serde_json::Value {
    fn one(v: &Value) -> serde_json::Value {
        match v {
            Value::Nil => serde_json::Value::Null,
            Value::Int(i) => serde_json::Value::from(*i),
            Value::Str(s) => serde_json::Value::from(s.as_str()),
        }
    }
    match p {
        Payload::One(v) => one(v),
        Payload::Pair(a, b) => serde_json::Value::Array(vec![one(a), one(b)]),
    }
}

/// Key used for events that name none: the whole history is a single register.
pub const DEFAULT_KEY: &str = "register";

/// Decodes one `history.jsonl` line (1-based `line` for error messages).
pub fn parse_jsonl_line(text: &str, line: usize) -> Result<Event, HistoryError> {
    let rec: JsonlRecord = serde_json::from_str(text).map_err(|e| HistoryError::Jsonl {
        line,
        reason: e.to_string(),
    })?;
    let value =
        payload_from_json(&rec.value).map_err(|reason| HistoryError::Jsonl { line, reason })?;
    Ok(Event {
        kind: rec.kind,
        process: rec.process,
        time: rec.time,
        f: rec.f,
        key: rec.key.unwrap_or_else(|| DEFAULT_KEY.to_string()),
        value,
        version: rec.version,
    })
}

/// Reads a whole `history.jsonl`; blank lines are ignored, anything else must be an event.
pub fn read_jsonl(reader: impl BufRead) -> Result<Vec<Event>, HistoryError> {
    let mut events = Vec::new();
    let mut reader = reader;
    let mut buf = Vec::new();
    let mut line = 0usize;
    loop {
        buf.clear();
        line += 1;
        let n = std::io::Read::take(&mut reader, MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut buf)?;
        if n == 0 {
            break;
        }
        if buf.len() > MAX_LINE_BYTES {
            return Err(HistoryError::Jsonl {
                line,
                reason: format!("line longer than {MAX_LINE_BYTES} bytes"),
            });
        }
        let text = std::str::from_utf8(&buf).map_err(|e| HistoryError::Jsonl {
            line,
            reason: format!("not UTF-8: {e}"),
        })?;
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        events.push(parse_jsonl_line(text, line)?);
    }
    Ok(events)
}

/// Encodes one event as a `history.jsonl` line (without the newline).
pub fn to_jsonl_line(ev: &Event) -> String {
    let rec = JsonlRecord {
        kind: ev.kind,
        process: ev.process,
        time: ev.time,
        f: ev.f,
        key: Some(ev.key.clone()),
        value: payload_to_json(&ev.value),
        version: ev.version,
    };
    // Serialising a struct of plain fields into a String cannot fail; fall back to an empty
    // object rather than panic if serde_json ever changes that.
    serde_json::to_string(&rec).unwrap_or_else(|_| String::from("{}"))
}

/// Appends events to a `history.jsonl` as they happen, so a crashed run still leaves its history.
pub struct HistoryWriter<W: Write> {
    out: W,
    written: usize,
}

impl<W: Write> HistoryWriter<W> {
    /// Wraps a writer (a `BufWriter<File>` in the harness).
    pub fn new(out: W) -> Self {
        Self { out, written: 0 }
    }

    /// Writes one event as a line.
    pub fn write(&mut self, ev: &Event) -> Result<(), HistoryError> {
        self.out.write_all(to_jsonl_line(ev).as_bytes())?;
        self.out.write_all(b"\n")?;
        self.written += 1;
        Ok(())
    }

    /// Number of events written so far.
    pub fn written(&self) -> usize {
        self.written
    }

    /// Flushes buffered lines to the underlying writer.
    pub fn flush(&mut self) -> Result<(), HistoryError> {
        self.out.flush()?;
        Ok(())
    }

    /// Flushes and returns the underlying writer.
    pub fn into_inner(mut self) -> Result<W, HistoryError> {
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Stamps and writes events for many concurrent clients. The time is taken while holding the
/// writer's lock, so `history.jsonl` is always in time order, as the checker requires, and an
/// event is on disk (in the buffer) before the client acts on its outcome.
pub struct Recorder<W: Write> {
    start: std::time::Instant,
    inner: std::sync::Mutex<HistoryWriter<W>>,
}

impl<W: Write> Recorder<W> {
    /// Starts the clock: event times are nanoseconds since now.
    pub fn new(out: W) -> Self {
        Recorder {
            start: std::time::Instant::now(),
            inner: std::sync::Mutex::new(HistoryWriter::new(out)),
        }
    }

    /// The instant event times count from, so that the harness can put fault times on the
    /// same clock as the history.
    pub fn started_at(&self) -> std::time::Instant {
        self.start
    }

    /// Records one event now and returns it as written.
    pub fn record(
        &self,
        kind: EventKind,
        process: u64,
        f: Fun,
        key: &str,
        value: Payload,
        version: Option<u64>,
    ) -> Result<Event, HistoryError> {
        // A poisoned lock means a client panicked mid-write; the writer itself is still usable.
        let mut w = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let time = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let ev = Event {
            kind,
            process,
            time,
            f,
            key: key.to_string(),
            value,
            version,
        };
        w.write(&ev)?;
        Ok(ev)
    }

    /// Flushes what has been recorded.
    pub fn flush(&self) -> Result<(), HistoryError> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).flush()
    }

    /// Flushes and returns the underlying writer.
    pub fn into_inner(self) -> Result<W, HistoryError> {
        self.inner
            .into_inner()
            .unwrap_or_else(|p| p.into_inner())
            .into_inner()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: EventKind, process: u64, time: u64, f: Fun, value: Payload) -> Event {
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
    fn jsonl_round_trip() {
        let events = vec![
            ev(
                EventKind::Invoke,
                1,
                10,
                Fun::Cas,
                Payload::Pair(Value::Int(1), Value::Str("x".into())),
            ),
            Event {
                version: Some(7),
                ..ev(
                    EventKind::Ok,
                    1,
                    20,
                    Fun::Cas,
                    Payload::Pair(Value::Int(1), Value::Str("x".into())),
                )
            },
            ev(EventKind::Invoke, 2, 30, Fun::Read, Payload::NIL),
        ];
        let mut w = HistoryWriter::new(Vec::new());
        for e in &events {
            w.write(e).unwrap();
        }
        assert_eq!(w.written(), 3);
        let bytes = w.into_inner().unwrap();
        let back = read_jsonl(bytes.as_slice()).unwrap();
        assert_eq!(back, events);
    }

    #[test]
    fn recorder_keeps_concurrent_clients_in_time_order() {
        let rec = Recorder::new(Vec::new());
        std::thread::scope(|scope| {
            for p in 0..4u64 {
                let rec = &rec;
                scope.spawn(move || {
                    for i in 0..200 {
                        let v = Payload::One(Value::Int(i));
                        rec.record(EventKind::Invoke, p, Fun::Write, "k", v.clone(), None)
                            .unwrap();
                        rec.record(EventKind::Ok, p, Fun::Write, "k", v, Some(1))
                            .unwrap();
                    }
                });
            }
        });
        let bytes = rec.into_inner().unwrap();
        let events = read_jsonl(bytes.as_slice()).unwrap();
        assert_eq!(events.len(), 1600);
        assert!(events.windows(2).all(|w| w[0].time <= w[1].time));
        assert_eq!(pair_events(&events).unwrap().len(), 800);
    }

    #[test]
    fn jsonl_rejects_bad_lines_with_line_numbers() {
        let text = "{\"type\":\"invoke\",\"process\":1,\"time\":0,\"f\":\"read\"}\n\n{\"type\":\"bogus\"}\n";
        match read_jsonl(text.as_bytes()) {
            Err(HistoryError::Jsonl { line: 3, .. }) => {}
            other => panic!("expected a line-3 error, got {other:?}"),
        }
        let text = "{\"type\":\"ok\",\"process\":1,\"time\":0,\"f\":\"read\",\"value\":[1,2,3]}";
        assert!(matches!(
            read_jsonl(text.as_bytes()),
            Err(HistoryError::Jsonl { line: 1, .. })
        ));
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
