//! Parser for Jepsen's textual history logs (the `jepsen.util` lines of a test run), such as the
//! etcd register histories used to validate the checker.
//!
//! Each event line looks like `INFO  jepsen.util - 3<ws>:ok<ws>:read<ws>4`: the process, the
//! completion type, the function and the value (`nil`, an integer, `[a b]` for cas, a quoted
//! string, or a keyword such as `:timed-out` on `fail`/`info`). Fields are separated by tabs or
//! spaces. Lines from other loggers and events of the `:nemesis` process are skipped. Event
//! times are the event's position in the file: a log carries no clock, only an order.
//!
//! All events belong to one register, [`DEFAULT_KEY`].

use crate::history::{Event, EventKind, Fun, Payload, Value, DEFAULT_KEY};

/// The marker that introduces a history event in a Jepsen log line.
const MARKER: &str = "jepsen.util - ";

/// Longest line accepted; longer lines are corrupt input.
pub const MAX_LINE_CHARS: usize = 64 * 1024;

/// What is wrong with a line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    /// A field is missing.
    #[error("missing {0}")]
    Missing(&'static str),
    /// The process is neither a number nor a keyword.
    #[error("bad process {0:?}")]
    BadProcess(String),
    /// Not one of `:invoke`, `:ok`, `:fail`, `:info`.
    #[error("bad event type {0:?}")]
    BadType(String),
    /// Not one of `:read`, `:write`, `:cas`.
    #[error("unsupported function {0:?}")]
    BadFunction(String),
    /// The value cannot be decoded.
    #[error("bad value {0:?}")]
    BadValue(String),
    /// A keyword (like `:timed-out`) where an invoke or ok needs a real value.
    #[error("keyword value {0:?} on an invoke or ok")]
    KeywordValue(String),
    /// The line is too long.
    #[error("line longer than {MAX_LINE_CHARS} characters")]
    TooLong,
}

/// A Jepsen log could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {error}")]
pub struct JepsenLogError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong with it.
    pub error: LineError,
}

fn parse_scalar(tok: &str) -> Result<Value, LineError> {
    if tok == "nil" {
        return Ok(Value::Nil);
    }
    if let Some(inner) = tok.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        if inner.contains('"') || inner.contains('\\') {
            return Err(LineError::BadValue(tok.to_string()));
        }
        return Ok(Value::Str(inner.to_string()));
    }
    tok.parse::<i64>()
        .map(Value::Int)
        .map_err(|_| LineError::BadValue(tok.to_string()))
}

/// A decoded value field: a payload, or a keyword that only a failure/indeterminate may carry.
enum Field {
    Payload(Payload),
    Keyword(String),
}

fn parse_value(text: &str) -> Result<Field, LineError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(LineError::Missing("value"));
    }
    if text.starts_with(':') {
        if text.len() > 1 && !text.contains(char::is_whitespace) {
            return Ok(Field::Keyword(text.to_string()));
        }
        return Err(LineError::BadValue(text.to_string()));
    }
    if let Some(inner) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
        let parts: Vec<&str> = inner.split_whitespace().collect();
        return match parts.as_slice() {
            [a, b] => Ok(Field::Payload(Payload::Pair(
                parse_scalar(a)?,
                parse_scalar(b)?,
            ))),
            _ => Err(LineError::BadValue(text.to_string())),
        };
    }
    Ok(Field::Payload(Payload::One(parse_scalar(text)?)))
}

/// Parses one line. `Ok(None)` for lines that are not client events.
pub fn parse_line(line: &str, time: u64) -> Result<Option<Event>, LineError> {
    if line.chars().count() > MAX_LINE_CHARS {
        return Err(LineError::TooLong);
    }
    let Some(pos) = line.find(MARKER) else {
        return Ok(None);
    };
    let rest = &line[pos + MARKER.len()..];
    let mut fields = rest.trim_start().splitn(2, char::is_whitespace);
    let process = fields
        .next()
        .filter(|s| !s.is_empty())
        .ok_or(LineError::Missing("process"))?;
    if process.starts_with(':') {
        // :nemesis and friends are not clients.
        return Ok(None);
    }
    let process: u64 = process
        .parse()
        .map_err(|_| LineError::BadProcess(process.to_string()))?;
    let rest = fields.next().unwrap_or("").trim_start();
    let mut fields = rest.splitn(2, char::is_whitespace);
    let kind = match fields
        .next()
        .filter(|s| !s.is_empty())
        .ok_or(LineError::Missing("type"))?
    {
        ":invoke" => EventKind::Invoke,
        ":ok" => EventKind::Ok,
        ":fail" => EventKind::Fail,
        ":info" => EventKind::Info,
        other => return Err(LineError::BadType(other.to_string())),
    };
    let rest = fields.next().unwrap_or("").trim_start();
    let mut fields = rest.splitn(2, char::is_whitespace);
    let f = match fields
        .next()
        .filter(|s| !s.is_empty())
        .ok_or(LineError::Missing("function"))?
    {
        ":read" => Fun::Read,
        ":write" => Fun::Write,
        ":cas" => Fun::Cas,
        other => return Err(LineError::BadFunction(other.to_string())),
    };
    let value_text = fields.next().unwrap_or("");
    let value = match (kind, parse_value(value_text)) {
        (_, Ok(Field::Payload(p))) => p,
        (EventKind::Fail | EventKind::Info, Ok(Field::Keyword(_)) | Err(LineError::Missing(_))) => {
            Payload::NIL
        }
        (_, Ok(Field::Keyword(k))) => return Err(LineError::KeywordValue(k)),
        (_, Err(e)) => return Err(e),
    };
    Ok(Some(Event {
        kind,
        process,
        time,
        f,
        key: DEFAULT_KEY.to_string(),
        value,
        version: None,
    }))
}

/// Parses a whole log into events, numbering event times by position.
pub fn parse_jepsen_log(text: &str) -> Result<Vec<Event>, JepsenLogError> {
    let mut events = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let time = events.len() as u64;
        match parse_line(line, time) {
            Ok(Some(ev)) => events.push(ev),
            Ok(None) => {}
            Err(error) => return Err(JepsenLogError { line: i + 1, error }),
        }
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_shapes() {
        let log = "INFO  jepsen.util - 3\t:invoke\t:read\tnil\n\
                   INFO  jepsen.util - 3\t:ok\t:read\t4\n\
                   INFO  jepsen.util - 1   :invoke :cas    [4 0]\n\
                   INFO  jepsen.util - 1\t:fail\t:cas\t[4 0]\n\
                   some other logger line\n\
                   INFO  jepsen.util - :nemesis\t:info\t:start\tnil\n\
                   INFO  jepsen.util - 0\t:invoke\t:read\tnil\n\
                   INFO  jepsen.util - 0\t:fail\t:read\t:timed-out\n\
                   INFO  jepsen.util - 4\t:invoke\t:write\t\"x\"\n\
                   INFO  jepsen.util - 4\t:info\t:write\t:timed-out\n";
        let evs = parse_jepsen_log(log).unwrap();
        assert_eq!(evs.len(), 8);
        assert_eq!(evs[1].value, Payload::One(Value::Int(4)));
        assert_eq!(evs[2].value, Payload::Pair(Value::Int(4), Value::Int(0)));
        assert_eq!(evs[2].process, 1);
        assert_eq!(evs[5].kind, EventKind::Fail);
        assert_eq!(evs[6].value, Payload::One(Value::Str("x".into())));
        assert_eq!(evs[7].kind, EventKind::Info);
        assert_eq!(
            evs.iter().map(|e| e.time).collect::<Vec<_>>(),
            (0..8).collect::<Vec<_>>()
        );
    }

    #[test]
    fn rejects_malformed_lines_with_their_number() {
        for (line, want) in [
            (
                "INFO  jepsen.util - x\t:ok\t:read\t1",
                LineError::BadProcess("x".into()),
            ),
            (
                "INFO  jepsen.util - 1\t:done\t:read\t1",
                LineError::BadType(":done".into()),
            ),
            (
                "INFO  jepsen.util - 1\t:ok\t:append\t1",
                LineError::BadFunction(":append".into()),
            ),
            (
                "INFO  jepsen.util - 1\t:ok\t:read\t:timed-out",
                LineError::KeywordValue(":timed-out".into()),
            ),
            (
                "INFO  jepsen.util - 1\t:ok\t:read\t[1 2 3]",
                LineError::BadValue("[1 2 3]".into()),
            ),
            ("INFO  jepsen.util - 1\t:ok", LineError::Missing("function")),
            (
                "INFO  jepsen.util - 1\t:invoke\t:write",
                LineError::Missing("value"),
            ),
        ] {
            let text = format!("INFO  jepsen.util - 0\t:invoke\t:read\tnil\n{line}\n");
            assert_eq!(
                parse_jepsen_log(&text),
                Err(JepsenLogError {
                    line: 2,
                    error: want
                })
            );
        }
    }
}
