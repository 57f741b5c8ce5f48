//! Sequential specifications the checker linearizes histories against.
//!
//! A [`Model`] says how one operation changes the state of one key and whether the result the
//! client saw is possible. The checker is generic over it, so new data types (a set, a queue, a
//! transaction log) only need a new `Model` implementation.
//!
//! This module holds the contract; each model lives in its own submodule (the plain register,
//! the versioned register) and is re-exported here.

use std::fmt::Debug;
use std::hash::Hash;

use crate::history::{HistoryError, PairedOp, Payload, Value};

mod register;
mod versioned;
pub use register::{Register, RegisterInput, RegisterOutput};
pub use versioned::{
    VersionKnowledge, VersionedInput, VersionedOutput, VersionedRegister, VersionedState,
};

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
