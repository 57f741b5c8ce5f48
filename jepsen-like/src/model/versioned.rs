//! The versioned register: Augur's records, where every change gets a larger version and a
//! cas compares versions, not values.
//!
//! Apart from the plain register because versions carry more to check: pruning reasons about
//! versions no acknowledged write produced, and [`precheck`](super::Model::precheck) can refute
//! a history in O(n log n) before the search, which the plain register does not.

use super::{bad, single, Model, Operation, PrecheckViolation};
use crate::history::{Fun, HistoryError, PairedOp, Value};

/// A register whose every change gets a new, larger version (Augur's records: version = the log
/// index that last changed it). Reads return version and value; cas compares the version.
/// Starts at version 0 with value `nil`.
#[derive(Debug, Clone, Copy, Default)]
pub struct VersionedRegister;

/// What the checker knows about a versioned register's current version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VersionKnowledge {
    /// Exactly this version.
    Known(u64),
    /// Changed by an operation whose resulting version nobody saw: at least this version.
    AtLeast(u64),
}

/// State of a versioned register.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VersionedState {
    /// The current version, as far as the history pins it down.
    pub version: VersionKnowledge,
    /// The current value.
    pub value: Value,
}

/// Arguments of a versioned register operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionedInput {
    /// Read version and value.
    Read,
    /// Unconditional write.
    Write(Value),
    /// Write `new` if the current version is `expected`.
    Cas {
        /// The version compared against.
        expected: u64,
        /// The value written on success.
        new: Value,
    },
}

/// Results of a versioned register operation that completed `ok`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionedOutput {
    /// Observed version and value.
    Read {
        /// The version read.
        version: u64,
        /// The value read.
        value: Value,
    },
    /// The write or cas took effect and produced this version.
    Written {
        /// The new version.
        version: u64,
    },
}

impl VersionedRegister {
    fn version_of(op: &Operation<VersionedInput, VersionedOutput>) -> Option<u64> {
        match &op.output {
            Some(VersionedOutput::Read { version, .. })
            | Some(VersionedOutput::Written { version }) => Some(*version),
            None => None,
        }
    }
}

impl Model for VersionedRegister {
    type State = VersionedState;
    type Input = VersionedInput;
    type Output = VersionedOutput;

    fn name(&self) -> &'static str {
        "versioned-register"
    }

    fn init(&self) -> VersionedState {
        VersionedState {
            version: VersionKnowledge::Known(0),
            value: Value::Nil,
        }
    }

    fn operation(
        &self,
        op: &PairedOp,
    ) -> Result<(VersionedInput, Option<VersionedOutput>), HistoryError> {
        let inv = &op.invoke;
        let at = op.invoke_index;
        let done_at = op.completion_index.unwrap_or(at);
        let done_version = |what: &str| -> Result<Option<u64>, HistoryError> {
            match &op.completion {
                None => Ok(None),
                Some(c) => c
                    .version
                    .map(Some)
                    .ok_or_else(|| bad(done_at, format!("an ok {what} must carry a version"))),
            }
        };
        Ok(match inv.f {
            Fun::Read => {
                let out = match (&op.completion, done_version("read")?) {
                    (Some(c), Some(version)) => Some(VersionedOutput::Read {
                        version,
                        value: single(&c.value, done_at, "a read's result")?,
                    }),
                    _ => None,
                };
                (VersionedInput::Read, out)
            }
            Fun::Write => (
                VersionedInput::Write(single(&inv.value, at, "a write's argument")?),
                done_version("write")?.map(|version| VersionedOutput::Written { version }),
            ),
            Fun::Cas => {
                let expected = inv.version.ok_or_else(|| {
                    bad(at, "a versioned cas invoke must carry the expected version")
                })?;
                (
                    VersionedInput::Cas {
                        expected,
                        new: single(&inv.value, at, "a versioned cas's new value")?,
                    },
                    done_version("cas")?.map(|version| VersionedOutput::Written { version }),
                )
            }
        })
    }

    fn step(
        &self,
        state: &VersionedState,
        input: &VersionedInput,
        output: Option<&VersionedOutput>,
    ) -> Option<VersionedState> {
        use VersionKnowledge::{AtLeast, Known};
        // The smallest version the register may have now.
        let floor = match state.version {
            Known(k) | AtLeast(k) => k,
        };
        let could_be = |v: u64| match state.version {
            Known(k) => v == k,
            AtLeast(m) => v >= m,
        };
        match (input, output) {
            (VersionedInput::Read, Some(VersionedOutput::Read { version, value })) => {
                (could_be(*version) && *value == state.value).then(|| VersionedState {
                    version: Known(*version),
                    value: value.clone(),
                })
            }
            (VersionedInput::Read, None) => Some(state.clone()),
            (VersionedInput::Write(v), Some(VersionedOutput::Written { version })) => {
                (*version > floor).then(|| VersionedState {
                    version: Known(*version),
                    value: v.clone(),
                })
            }
            (VersionedInput::Write(v), None) => Some(VersionedState {
                version: AtLeast(floor.saturating_add(1)),
                value: v.clone(),
            }),
            (VersionedInput::Cas { expected, new }, Some(VersionedOutput::Written { version })) => {
                (could_be(*expected) && *version > *expected).then(|| VersionedState {
                    version: Known(*version),
                    value: new.clone(),
                })
            }
            (VersionedInput::Cas { expected, new }, None) => {
                could_be(*expected).then(|| VersionedState {
                    version: AtLeast(expected.saturating_add(1)),
                    value: new.clone(),
                })
            }
            (VersionedInput::Read, Some(VersionedOutput::Written { .. }))
            | (
                VersionedInput::Write(_) | VersionedInput::Cas { .. },
                Some(VersionedOutput::Read { .. }),
            ) => None,
        }
    }

    fn is_read_only(&self, input: &VersionedInput) -> bool {
        matches!(input, VersionedInput::Read)
    }

    fn describe(&self, input: &VersionedInput, output: Option<&VersionedOutput>) -> String {
        let out = match output {
            None => " (unknown outcome)".to_string(),
            Some(VersionedOutput::Read { version, value }) => format!(" -> {value}@v{version}"),
            Some(VersionedOutput::Written { version }) => format!(" -> v{version}"),
        };
        match input {
            VersionedInput::Read => format!("read{out}"),
            VersionedInput::Write(v) => format!("write {v}{out}"),
            VersionedInput::Cas { expected, new } => format!("cas v{expected} := {new}{out}"),
        }
    }

    fn describe_state(&self, state: &VersionedState) -> String {
        match state.version {
            VersionKnowledge::Known(v) => format!("{}@v{v}", state.value),
            VersionKnowledge::AtLeast(v) => format!("{}@v>={v}", state.value),
        }
    }

    /// An indeterminate write or cas is unobservable when nothing could see the version it
    /// would produce: no completed read returns its value at a version no acknowledged write
    /// produced, and no cas (completed or not) expects a version no acknowledged write produced.
    /// Right after it, the register's version is one no acknowledged write produced (versions
    /// are unique and grow), so only an overwrite could follow it; without it, the overwrite is
    /// still legal from the lower version. Dropping an indeterminate cas can remove the last
    /// unexplained expectation, hence the fixpoint.
    fn unobservable(&self, ops: &[Operation<VersionedInput, VersionedOutput>]) -> Vec<bool> {
        use std::collections::HashSet;
        let produced: HashSet<u64> = ops
            .iter()
            .filter_map(|o| match &o.output {
                Some(VersionedOutput::Written { version }) => Some(*version),
                _ => None,
            })
            .collect();
        let unexplained = |v: u64| v != 0 && !produced.contains(&v);
        let mut read_values: HashSet<&Value> = HashSet::new();
        for op in ops {
            if let Some(VersionedOutput::Read { version, value }) = &op.output {
                if unexplained(*version) {
                    read_values.insert(value);
                }
            }
        }
        // Live operations that expect an unexplained version.
        let mut expecting: HashSet<usize> = HashSet::new();
        for (i, op) in ops.iter().enumerate() {
            if let VersionedInput::Cas { expected, .. } = &op.input {
                if unexplained(*expected) {
                    expecting.insert(i);
                }
            }
        }
        let mut dropped = vec![false; ops.len()];
        loop {
            let mut changed = false;
            for (i, op) in ops.iter().enumerate() {
                if dropped[i] || op.output.is_some() {
                    continue;
                }
                let written = match &op.input {
                    VersionedInput::Write(v) | VersionedInput::Cas { new: v, .. } => v,
                    VersionedInput::Read => continue,
                };
                let others_expect = expecting.iter().any(|&j| j != i);
                if !read_values.contains(written) && !others_expect {
                    dropped[i] = true;
                    expecting.remove(&i);
                    changed = true;
                }
            }
            if !changed {
                return dropped;
            }
        }
    }

    /// Three necessary conditions, each O(n log n): versions produced by acknowledged writes are
    /// unique and grow past what a cas compared; every read of a version matches the write that
    /// produced it (and did not finish before that write began); an operation that finished
    /// before another began never has a larger version.
    fn precheck(
        &self,
        ops: &[Operation<VersionedInput, VersionedOutput>],
    ) -> Result<(), PrecheckViolation> {
        use std::collections::HashMap;
        let mut producer: HashMap<u64, usize> = HashMap::new();
        for op in ops {
            if let Some(VersionedOutput::Written { version }) = &op.output {
                if *version == 0 {
                    return Err(PrecheckViolation {
                        reason: format!(
                            "{} produced version 0, the initial version",
                            self.describe(&op.input, op.output.as_ref())
                        ),
                        ops: vec![op.id],
                    });
                }
                if let VersionedInput::Cas { expected, .. } = &op.input {
                    if version <= expected {
                        return Err(PrecheckViolation {
                            reason: format!(
                                "cas on v{expected} produced v{version}, which is not newer"
                            ),
                            ops: vec![op.id],
                        });
                    }
                }
                if let Some(&other) = producer.get(version) {
                    return Err(PrecheckViolation {
                        reason: format!("two acknowledged writes produced version {version}"),
                        ops: vec![other, op.id],
                    });
                }
                producer.insert(*version, op.id);
            }
        }
        for op in ops {
            let Some(VersionedOutput::Read { version, value }) = &op.output else {
                continue;
            };
            let ret = op.ret.unwrap_or(u64::MAX);
            if *version == 0 {
                if *value != Value::Nil {
                    return Err(PrecheckViolation {
                        reason: format!("read {value} at version 0, where the register is nil"),
                        ops: vec![op.id],
                    });
                }
                continue;
            }
            match producer.get(version) {
                Some(&w) => {
                    let writer = &ops[w];
                    let written = match &writer.input {
                        VersionedInput::Write(v) | VersionedInput::Cas { new: v, .. } => v,
                        VersionedInput::Read => continue,
                    };
                    if written != value {
                        return Err(PrecheckViolation {
                            reason: format!("read {value} at v{version}, but v{version} was written as {written}"),
                            ops: vec![w, op.id],
                        });
                    }
                    if ret < writer.call {
                        return Err(PrecheckViolation {
                            reason: format!(
                                "read of v{version} finished before the write producing it began"
                            ),
                            ops: vec![w, op.id],
                        });
                    }
                }
                None => {
                    // Only a write with unknown outcome could have produced it.
                    let candidate = ops.iter().any(|o| {
                        o.output.is_none()
                            && o.call <= ret
                            && match &o.input {
                                VersionedInput::Write(v) => v == value,
                                VersionedInput::Cas { expected, new } => {
                                    new == value && expected < version
                                }
                                VersionedInput::Read => false,
                            }
                    });
                    if !candidate {
                        return Err(PrecheckViolation {
                            reason: format!(
                                "read {value} at v{version}, a version no write produced"
                            ),
                            ops: vec![op.id],
                        });
                    }
                }
            }
        }
        // Real-time order implies version order. For each op B, the largest version of any op that
        // returned strictly before B was invoked must not exceed what B allows.
        let mut by_ret: Vec<&Operation<VersionedInput, VersionedOutput>> = ops
            .iter()
            .filter(|o| o.ret.is_some() && Self::version_of(o).is_some())
            .collect();
        by_ret.sort_by_key(|o| o.ret);
        let mut by_call: Vec<&Operation<VersionedInput, VersionedOutput>> =
            ops.iter().filter(|o| o.output.is_some()).collect();
        by_call.sort_by_key(|o| o.call);
        let mut next = 0;
        let mut best: Option<(u64, usize)> = None;
        for b in by_call {
            while next < by_ret.len() && by_ret[next].ret.is_some_and(|r| r < b.call) {
                let a = by_ret[next];
                if let Some(v) = Self::version_of(a) {
                    if best.is_none_or(|(bv, _)| v > bv) {
                        best = Some((v, a.id));
                    }
                }
                next += 1;
            }
            let Some((before, a)) = best else { continue };
            let ok = match (&b.input, &b.output) {
                (VersionedInput::Read, Some(VersionedOutput::Read { version, .. })) => {
                    *version >= before
                }
                (VersionedInput::Write(_), Some(VersionedOutput::Written { version })) => {
                    *version > before
                }
                (VersionedInput::Cas { expected, .. }, Some(VersionedOutput::Written { .. })) => {
                    *expected >= before
                }
                _ => true,
            };
            if !ok {
                return Err(PrecheckViolation {
                    reason: format!(
                        "{} began after an operation at v{before} had finished, yet saw an older version",
                        self.describe(&b.input, b.output.as_ref())
                    ),
                    ops: vec![a, b.id],
                });
            }
        }
        Ok(())
    }
}
