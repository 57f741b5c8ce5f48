//! The plain register: values compared by equality, as in Jepsen's etcd register test.
//!
//! One model per file because each is a whole specification with its own pruning rule
//! (`unobservable`): what makes an unknown write invisible differs between them.

use super::{bad, single, Model, Operation};
use crate::history::{Fun, HistoryError, PairedOp, Payload, Value};

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
