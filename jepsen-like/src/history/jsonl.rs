//! `history.jsonl`, the on-disk form of a history: decoding and encoding lines, and the
//! writers that append events as a run produces them.
//!
//! Separate from the event model in the parent module because that model is also what a
//! Jepsen log decodes to and what the checker reads; only this module knows JSON. Its public
//! items are re-exported from [`crate::history`].

use std::io::{BufRead, Write};

use serde::{Deserialize, Serialize};

use super::{Event, EventKind, Fun, HistoryError, Payload, Value, DEFAULT_KEY};

/// Longest `history.jsonl` line accepted; a longer line is corrupt input, not an event.
pub const MAX_LINE_BYTES: usize = 1 << 20;

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
    use crate::history::pair_events;
    use crate::history::tests::ev;

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
}
