//! Sequential specifications the checker linearizes histories against.
//!
//! A [`Model`] says how one operation changes the state of one key and whether the result the
//! client saw is possible. The checker is generic over it, so new data types (a set, a queue, a
//! transaction log) only need a new `Model` implementation.

use std::fmt::Debug;
use std::hash::Hash;

use crate::history::{Fun, HistoryError, PairedOp, Payload, Value};

/// One completed (or indeterminate) operation, in the form the checker searches over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation<I, O> {
    /// Dense id within its key's partition (bit index in the linearized-set bitset).
    pub id: usize,
    /// The client process that ran it.
    pub process: u64,
    /// Invocation time.
    pub call: u64,
    /// Completion time; `None` is +infinity: the outcome is unknown.
    pub ret: Option<u64>,
    /// What the client asked for.
    pub input: I,
    /// What the client was told; `None` when the outcome is unknown.
    pub output: Option<O>,
    /// Position of the invoke event in the original history, for reports.
    pub invoke_index: usize,
}

/// A fast necessary condition failed: the history cannot be linearizable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrecheckViolation {
    /// What is impossible, in words.
    pub reason: String,
    /// Ids of the operations involved.
    pub ops: Vec<usize>,
}

/// A sequential data type: the specification a concurrent history must be explainable by.
pub trait Model: Send + Sync {
    /// The state of one key. Hashed into the search cache, so keep it small.
    type State: Clone + Eq + Hash + Debug + Send + Sync;
    /// An operation's arguments.
    type Input: Clone + Debug + Send + Sync;
    /// An operation's observed result.
    type Output: Clone + Debug + Send + Sync;

    /// Short name for reports.
    fn name(&self) -> &'static str;

    /// The state every key starts in.
    fn init(&self) -> Self::State;

    /// Interprets a paired invoke/completion as this model's input and output (output `None`
    /// when the outcome is unknown). Shape errors name the offending event.
    fn operation(&self, op: &PairedOp)
        -> Result<(Self::Input, Option<Self::Output>), HistoryError>;

    /// Applies `input` to `state`: `Some(next)` when `output` is a possible result, else `None`.
    /// With `output == None` the operation must be treated as having taken effect with whatever
    /// result the state implies; an operation that would have had no effect may return `None`,
    /// since the checker already allows an indeterminate operation never to take effect.
    fn step(
        &self,
        state: &Self::State,
        input: &Self::Input,
        output: Option<&Self::Output>,
    ) -> Option<Self::State>;

    /// True when the operation never changes state; such operations with unknown outcome carry
    /// no information and are dropped before the search.
    fn is_read_only(&self, input: &Self::Input) -> bool;

    /// Human-readable form of an operation for reports.
    fn describe(&self, input: &Self::Input, output: Option<&Self::Output>) -> String;

    /// Human-readable form of a state for reports.
    fn describe_state(&self, state: &Self::State) -> String {
        format!("{state:?}")
    }

    /// Marks indeterminate operations whose effect no other operation could ever observe. They
    /// may be assumed never to have happened, which keeps them out of the search; indeterminate
    /// operations are what makes the search blow up. Must be sound: dropping the marked
    /// operations must not change whether a linearization exists. The default marks nothing.
    fn unobservable(&self, ops: &[Operation<Self::Input, Self::Output>]) -> Vec<bool> {
        vec![false; ops.len()]
    }

    /// A cheap necessary condition checked before the exponential search. Must be sound: it may
    /// only report a violation when no linearization exists.
    fn precheck(
        &self,
        _ops: &[Operation<Self::Input, Self::Output>],
    ) -> Result<(), PrecheckViolation> {
        Ok(())
    }
}

fn bad(index: usize, reason: impl Into<String>) -> HistoryError {
    HistoryError::BadOperation {
        index,
        reason: reason.into(),
    }
}

fn single(p: &Payload, index: usize, what: &str) -> Result<Value, HistoryError> {
    match p {
        Payload::One(v) => Ok(v.clone()),
        Payload::Pair(..) => Err(bad(
            index,
            format!("{what} must be a single value, got {p}"),
        )),
    }
}

/// A plain read/write/cas register (Jepsen's etcd register test). Starts as `nil`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Register;

/// Arguments of a plain register operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegisterInput {
    /// Read the value.
    Read,
    /// Set the value.
    Write(Value),
    /// Set to `new` if the value is `expected`.
    Cas {
        /// The value compared against.
        expected: Value,
        /// The value written on success.
        new: Value,
    },
}

/// Results of a plain register operation that completed `ok`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegisterOutput {
    /// The value read.
    Read(Value),
    /// The write or cas took effect (a failed cas is a `fail` and never reaches the checker).
    Done,
}

impl Model for Register {
    type State = Value;
    type Input = RegisterInput;
    type Output = RegisterOutput;

    fn name(&self) -> &'static str {
        "register"
    }

    fn init(&self) -> Value {
        Value::Nil
    }

    fn operation(
        &self,
        op: &PairedOp,
    ) -> Result<(RegisterInput, Option<RegisterOutput>), HistoryError> {
        let inv = &op.invoke;
        let at = op.invoke_index;
        let done = op.completion.as_ref();
        let done_at = op.completion_index.unwrap_or(at);
        Ok(match inv.f {
            Fun::Read => {
                let out = match done {
                    Some(c) => Some(RegisterOutput::Read(single(
                        &c.value,
                        done_at,
                        "a read's result",
                    )?)),
                    None => None,
                };
                (RegisterInput::Read, out)
            }
            Fun::Write => (
                RegisterInput::Write(single(&inv.value, at, "a write's argument")?),
                done.map(|_| RegisterOutput::Done),
            ),
            Fun::Cas => match &inv.value {
                Payload::Pair(expected, new) => (
                    RegisterInput::Cas {
                        expected: expected.clone(),
                        new: new.clone(),
                    },
                    done.map(|_| RegisterOutput::Done),
                ),
                Payload::One(v) => {
                    return Err(bad(at, format!("a cas needs [expected new], got {v}")))
                }
            },
        })
    }

    fn step(
        &self,
        state: &Value,
        input: &RegisterInput,
        output: Option<&RegisterOutput>,
    ) -> Option<Value> {
        match (input, output) {
            (RegisterInput::Read, Some(RegisterOutput::Read(v))) => {
                (v == state).then(|| state.clone())
            }
            (RegisterInput::Read, None) => Some(state.clone()),
            (RegisterInput::Read, Some(RegisterOutput::Done)) => None,
            (RegisterInput::Write(v), Some(RegisterOutput::Done) | None) => Some(v.clone()),
            (RegisterInput::Cas { expected, new }, Some(RegisterOutput::Done) | None) => {
                (expected == state).then(|| new.clone())
            }
            (
                RegisterInput::Write(_) | RegisterInput::Cas { .. },
                Some(RegisterOutput::Read(_)),
            ) => None,
        }
    }

    fn is_read_only(&self, input: &RegisterInput) -> bool {
        matches!(input, RegisterInput::Read)
    }

    fn describe(&self, input: &RegisterInput, output: Option<&RegisterOutput>) -> String {
        let out = match output {
            None => " (unknown outcome)".to_string(),
            Some(RegisterOutput::Read(v)) => format!(" -> {v}"),
            Some(RegisterOutput::Done) => String::new(),
        };
        match input {
            RegisterInput::Read => format!("read{out}"),
            RegisterInput::Write(v) => format!("write {v}{out}"),
            RegisterInput::Cas { expected, new } => format!("cas {expected} -> {new}{out}"),
        }
    }

    fn describe_state(&self, state: &Value) -> String {
        state.to_string()
    }

    /// An indeterminate write or cas that sets value `v` is unobservable when no completed read
    /// returned `v` and no cas (completed or not) expects `v`. In any linearization, the register
    /// holds `v` right after it, so the next operation can only be an overwrite (or nothing):
    /// removing it leaves every other step legal. Dropping an indeterminate cas can make the
    /// value it expected unobserved too, hence the fixpoint.
    fn unobservable(&self, ops: &[Operation<RegisterInput, RegisterOutput>]) -> Vec<bool> {
        use std::collections::HashMap;
        let mut dropped = vec![false; ops.len()];
        // How many live operations observe each value.
        let mut observers: HashMap<&Value, usize> = HashMap::new();
        for op in ops {
            match (&op.input, &op.output) {
                (_, Some(RegisterOutput::Read(v)))
                | (RegisterInput::Cas { expected: v, .. }, _) => {
                    *observers.entry(v).or_default() += 1;
                }
                _ => {}
            }
        }
        loop {
            let mut changed = false;
            for (i, op) in ops.iter().enumerate() {
                if dropped[i] || op.output.is_some() {
                    continue;
                }
                let (written, expected) = match &op.input {
                    RegisterInput::Write(v) => (v, None),
                    RegisterInput::Cas { expected, new } => (new, Some(expected)),
                    RegisterInput::Read => continue,
                };
                if observers.get(written).copied().unwrap_or(0) == 0 {
                    dropped[i] = true;
                    changed = true;
                    if let Some(e) = expected {
                        if let Some(n) = observers.get_mut(e) {
                            *n = n.saturating_sub(1);
                        }
                    }
                }
            }
            if !changed {
                return dropped;
            }
        }
    }
}

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
