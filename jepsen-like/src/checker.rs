//! Linearizability checking: the Wing–Gong–Lowe search with P-compositionality.
//!
//! Independent keys are independent objects, and a history is linearizable iff each key's
//! sub-history is (Herlihy & Wing's locality), so the history is split by key and each part is
//! searched separately, in parallel on a bounded thread pool.
//!
//! Within a key, the search (Wing & Gong, with Lowe's memoisation) walks the call/return entries in
//! time order, tentatively linearizing the earliest pending calls and backtracking when it meets
//! the return of an operation it has not linearized. A cache of (set of linearized operations,
//! model state) prunes configurations already explored. Operations whose outcome is unknown get
//! their return at +infinity: they may be linearized anywhere after their call, and once every
//! operation with a known return is linearized the rest may simply never have happened.
//!
//! The search is exponential in the worst case, so it runs against a time budget; running out
//! answers [`Verdict::Unknown`], never a wrong [`Verdict::NotLinearizable`].

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rayon::prelude::*;
use rustc_hash::FxHashSet;
use serde::{Deserialize, Serialize};

use crate::history::{pair_events, Event, HistoryError};
use crate::model::{Model, Operation};

/// The answer for a history or one key of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// A linearization exists.
    Linearizable,
    /// The search ran out of budget before finding either answer.
    Unknown,
    /// No linearization exists.
    NotLinearizable,
}

impl Verdict {
    /// The word printed by `augur-jepsen check`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Linearizable => "linearizable",
            Verdict::Unknown => "unknown",
            Verdict::NotLinearizable => "not-linearizable",
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Limits on a check.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// Drop indeterminate operations the model proves unobservable before searching
    /// ([`Model::unobservable`]). Only turned off to cross-check that pruning against the search.
    pub prune: bool,
    /// Wall-clock budget for the whole history; keys still searching when it ends are Unknown.
    pub budget: Duration,
    /// Threads in the pool that checks keys in parallel (at least 1).
    pub threads: usize,
    /// Run the model's fast pre-check before the search. Only turned off to cross-check the
    /// pre-check against the search.
    pub precheck: bool,
    /// Memory one key's search may spend on remembered (linearized set, state) configurations;
    /// beyond it the key is Unknown rather than exhausting the machine. Up to `threads` keys
    /// are searched at once, each with this allowance.
    pub max_cache_bytes: usize,
}

impl Default for CheckOptions {
    fn default() -> Self {
        Self {
            budget: Duration::from_secs(60),
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            precheck: true,
            prune: true,
            max_cache_bytes: 512 << 20,
        }
    }
}

/// Errors that stop a check before any verdict.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The history is malformed.
    #[error("bad history: {0}")]
    History(#[from] HistoryError),
    /// The worker pool could not be built.
    #[error("cannot start checker threads: {0}")]
    Pool(String),
}

/// One operation as shown in a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpSummary {
    /// Position of the invoke event in the history (0-based).
    pub index: usize,
    /// Client process.
    pub process: u64,
    /// Invocation time.
    pub call: u64,
    /// Completion time; `null` when unknown.
    pub ret: Option<u64>,
    /// The operation and its result.
    pub op: String,
}

/// Why a key is not linearizable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anomaly {
    /// The key.
    pub key: String,
    /// What went wrong, in words.
    pub reason: String,
    /// The longest linearizable prefix the search found, in linearization order.
    pub prefix: Vec<OpSummary>,
    /// The model state after that prefix.
    pub state_after_prefix: String,
    /// Operations none of which can come next: each is either impossible from that state or
    /// leads only to dead ends, and at least one of them has already returned.
    pub unorderable: Vec<OpSummary>,
}

/// The result for one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyResult {
    /// The key.
    pub key: String,
    /// Its verdict.
    pub verdict: Verdict,
    /// Operations searched (after dropping failed ones, indeterminate reads and indeterminate
    /// writes nobody could observe).
    pub ops: usize,
    /// Time spent on this key, in microseconds.
    pub elapsed_us: u64,
    /// Configurations explored by the search.
    pub steps: u64,
    /// Present when the verdict is NotLinearizable.
    pub anomaly: Option<Anomaly>,
    /// Why the verdict is Unknown (time budget or memory cap).
    pub unknown_reason: Option<String>,
}

/// The result for a whole history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckReport {
    /// NotLinearizable if any key is, else Unknown if any key is, else Linearizable.
    pub verdict: Verdict,
    /// The model used.
    pub model: String,
    /// Per-key results, sorted by key.
    pub keys: Vec<KeyResult>,
    /// Total operations searched.
    pub ops: usize,
    /// Wall-clock time of the whole check, in microseconds.
    pub elapsed_us: u64,
}

impl CheckReport {
    /// The anomalies of every non-linearizable key.
    pub fn anomalies(&self) -> impl Iterator<Item = &Anomaly> {
        self.keys.iter().filter_map(|k| k.anomaly.as_ref())
    }
}

/// One key's operations for model `M`.
type OpsOf<M> = Vec<Operation<<M as Model>::Input, <M as Model>::Output>>;

/// Checks a history against a model: pairs events, splits by key and searches every key.
pub fn check_events<M: Model>(
    model: &M,
    events: &[Event],
    opts: &CheckOptions,
) -> Result<CheckReport, CheckError> {
    let start = Instant::now();
    let deadline = start.checked_add(opts.budget);
    let paired = pair_events(events)?;
    let mut by_key: BTreeMap<String, OpsOf<M>> = BTreeMap::new();
    for p in &paired {
        let (input, output) = model.operation(p)?;
        if output.is_none() && model.is_read_only(&input) {
            continue;
        }
        let ops = by_key.entry(p.invoke.key.clone()).or_default();
        ops.push(Operation {
            id: ops.len(),
            process: p.invoke.process,
            call: p.invoke.time,
            ret: p.return_time(),
            input,
            output,
            invoke_index: p.invoke_index,
        });
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.threads.max(1))
        .thread_name(|i| format!("augur-check-{i}"))
        .build()
        .map_err(|e| CheckError::Pool(e.to_string()))?;
    let parts: Vec<(String, OpsOf<M>)> = by_key.into_iter().collect();
    let limits = Limits {
        deadline,
        max_cache_bytes: opts.max_cache_bytes,
        precheck: opts.precheck,
    };
    let keys: Vec<KeyResult> = pool.install(|| {
        parts
            .into_par_iter()
            .map(|(key, ops)| {
                let ops = if opts.prune { prune(model, ops) } else { ops };
                check_key(model, &key, &ops, &limits)
            })
            .collect()
    });
    let verdict = keys
        .iter()
        .map(|k| k.verdict)
        .max()
        .unwrap_or(Verdict::Linearizable);
    Ok(CheckReport {
        verdict,
        model: model.name().to_string(),
        ops: keys.iter().map(|k| k.ops).sum(),
        keys,
        elapsed_us: micros(start.elapsed()),
    })
}

/// Drops the indeterminate operations the model proves unobservable and renumbers the rest.
fn prune<M: Model>(model: &M, ops: OpsOf<M>) -> OpsOf<M> {
    let drop = model.unobservable(&ops);
    if !drop.iter().any(|&d| d) {
        return ops;
    }
    let mut kept: OpsOf<M> = ops
        .into_iter()
        .zip(drop)
        .filter(|(_, d)| !d)
        .map(|(op, _)| op)
        .collect();
    for (id, op) in kept.iter_mut().enumerate() {
        op.id = id;
    }
    kept
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn summary<M: Model>(model: &M, op: &Operation<M::Input, M::Output>) -> OpSummary {
    OpSummary {
        index: op.invoke_index,
        process: op.process,
        call: op.call,
        ret: op.ret,
        op: model.describe(&op.input, op.output.as_ref()),
    }
}

/// Bounds on one key's search.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// When to give up (`None`: never).
    pub deadline: Option<Instant>,
    /// Memory for remembered configurations, in bytes (estimated).
    pub max_cache_bytes: usize,
    /// Whether to run the model's pre-check first.
    pub precheck: bool,
}

/// Checks one key's operations (ids must be `0..ops.len()`, in that order).
pub fn check_key<M: Model>(
    model: &M,
    key: &str,
    ops: &[Operation<M::Input, M::Output>],
    limits: &Limits,
) -> KeyResult {
    let Limits {
        deadline,
        max_cache_bytes,
        precheck,
    } = *limits;
    let start = Instant::now();
    let span = tracing::debug_span!("check_key", key, ops = ops.len());
    let _enter = span.enter();
    let pre = if precheck {
        model.precheck(ops)
    } else {
        Ok(())
    };
    if let Err(v) = &pre {
        tracing::debug!(key, reason = %v.reason, "pre-check found a violation");
    }
    // A pre-check violation already settles the verdict; the search then only looks for the
    // longest linearizable prefix to show, so it gets a short leash.
    let search_deadline = match (&pre, deadline) {
        (Err(_), d) => {
            let leash = start + PREFIX_SEARCH_BUDGET;
            Some(d.map_or(leash, |d| d.min(leash)))
        }
        (Ok(()), d) => d,
    };
    let outcome = search(model, ops, search_deadline, max_cache_bytes);
    let mut unknown_reason = None;
    let (verdict, anomaly, steps) = match (pre, outcome) {
        (Ok(()), Outcome::Linearizable { steps }) => (Verdict::Linearizable, None, steps),
        (Err(v), Outcome::Linearizable { steps }) => {
            // A sound pre-check never disagrees with the search; if it does, the model is wrong
            // and the search, being exhaustive, is the one to believe.
            tracing::error!(key, reason = %v.reason, "pre-check violation contradicted by the search");
            (Verdict::Linearizable, None, steps)
        }
        (Ok(()), Outcome::Unknown { steps, reason }) => {
            unknown_reason = Some(reason);
            (Verdict::Unknown, None, steps)
        }
        (Err(v), Outcome::Unknown { steps, .. }) => {
            let anomaly = Anomaly {
                key: key.to_string(),
                reason: format!("pre-check: {}", v.reason),
                prefix: Vec::new(),
                state_after_prefix: String::from("(search stopped before finding a prefix)"),
                unorderable: v
                    .ops
                    .iter()
                    .filter_map(|&i| ops.get(i))
                    .map(|o| summary(model, o))
                    .collect(),
            };
            (Verdict::NotLinearizable, Some(anomaly), steps)
        }
        (pre, Outcome::Illegal { steps, stuck }) => {
            let reason = match pre {
                Err(v) => format!("pre-check: {}", v.reason),
                Ok(()) => String::from(
                    "no linearization: after the prefix no pending operation can take effect",
                ),
            };
            let anomaly = Anomaly {
                key: key.to_string(),
                reason,
                prefix: stuck
                    .prefix
                    .iter()
                    .map(|&i| summary(model, &ops[i]))
                    .collect(),
                state_after_prefix: stuck.state,
                unorderable: stuck
                    .candidates
                    .iter()
                    .map(|&i| summary(model, &ops[i]))
                    .collect(),
            };
            (Verdict::NotLinearizable, Some(anomaly), steps)
        }
    };
    KeyResult {
        key: key.to_string(),
        verdict,
        ops: ops.len(),
        elapsed_us: micros(start.elapsed()),
        steps,
        anomaly,
        unknown_reason,
    }
}

/// The deepest point where the search got stuck.
struct Stuck {
    prefix: Vec<usize>,
    state: String,
    candidates: Vec<usize>,
}

enum Outcome {
    Linearizable { steps: u64 },
    Illegal { steps: u64, stuck: Stuck },
    Unknown { steps: u64, reason: String },
}

/// A fixed-size set of operation ids.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Bitset(Box<[u64]>);

impl Bitset {
    fn new(n: usize) -> Self {
        Bitset(vec![0; n.div_ceil(64)].into_boxed_slice())
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

const NIL: usize = usize::MAX;
/// How long the search may look for a prefix to report once the pre-check has proved a violation.
const PREFIX_SEARCH_BUDGET: Duration = Duration::from_secs(1);
/// How many search steps between looks at the clock (a power of two).
const CLOCK_EVERY: u64 = 1024;

#[derive(Clone, Copy)]
struct Entry {
    op: usize,
    is_call: bool,
    /// Index of the call's return entry, or the return's call entry.
    matching: usize,
    prev: usize,
    next: usize,
}

/// Doubly linked list of call/return entries in time order; entry 0 is the head sentinel.
struct EntryList {
    e: Vec<Entry>,
}

impl EntryList {
    fn build<I, O>(ops: &[Operation<I, O>]) -> Self {
        // (indeterminate return?, time, is return?, op): calls sort before returns at equal
        // times, so operations with equal timestamps count as concurrent; returns at +infinity
        // sort after everything.
        let mut order: Vec<(bool, u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
        for (i, op) in ops.iter().enumerate() {
            order.push((false, op.call, false, i));
            match op.ret {
                Some(t) => order.push((false, t, true, i)),
                None => order.push((true, u64::MAX, true, i)),
            }
        }
        order.sort_unstable();
        let mut e = Vec::with_capacity(order.len() + 1);
        e.push(Entry {
            op: NIL,
            is_call: false,
            matching: NIL,
            prev: NIL,
            next: NIL,
        });
        let mut call_at = vec![NIL; ops.len()];
        let mut ret_at = vec![NIL; ops.len()];
        for (pos, &(_, _, is_ret, op)) in order.iter().enumerate() {
            let idx = pos + 1;
            if is_ret {
                ret_at[op] = idx;
            } else {
                call_at[op] = idx;
            }
            e.push(Entry {
                op,
                is_call: !is_ret,
                matching: NIL,
                prev: idx - 1,
                next: if pos + 1 < order.len() { idx + 1 } else { NIL },
            });
        }
        if !order.is_empty() {
            e[0].next = 1;
        }
        for op in 0..ops.len() {
            e[call_at[op]].matching = ret_at[op];
            e[ret_at[op]].matching = call_at[op];
        }
        EntryList { e }
    }

    fn unlink(&mut self, i: usize) {
        let Entry { prev, next, .. } = self.e[i];
        self.e[prev].next = next;
        if next != NIL {
            self.e[next].prev = prev;
        }
    }

    fn relink(&mut self, i: usize) {
        let Entry { prev, next, .. } = self.e[i];
        self.e[prev].next = i;
        if next != NIL {
            self.e[next].prev = i;
        }
    }

    /// Removes a call and its return from the list.
    fn lift(&mut self, call: usize) {
        let ret = self.e[call].matching;
        self.unlink(call);
        self.unlink(ret);
    }

    /// Undoes `lift`, in reverse order so the saved neighbour links are valid again.
    fn unlift(&mut self, call: usize) {
        let ret = self.e[call].matching;
        self.relink(ret);
        self.relink(call);
    }
}

fn search<M: Model>(
    model: &M,
    ops: &[Operation<M::Input, M::Output>],
    deadline: Option<Instant>,
    max_cache_bytes: usize,
) -> Outcome {
    let mut list = EntryList::build(ops);
    let mut state = model.init();
    let mut linearized = Bitset::new(ops.len());
    let mut cache: FxHashSet<(Bitset, M::State)> = FxHashSet::default();
    let mut stack: Vec<(usize, M::State)> = Vec::new();
    // Per entry: the bitset's heap words plus allocator header, and the table slot counted twice
    // (load factor and the old table alive while it grows).
    let entry_bytes =
        linearized.0.len() * 8 + 16 + 2 * std::mem::size_of::<(Bitset, M::State)>() + 2;
    let max_entries = max_cache_bytes / entry_bytes.max(1);
    let mut best: Option<Stuck> = None;
    let mut steps: u64 = 0;
    let mut entry = list.e[0].next;
    loop {
        if steps & (CLOCK_EVERY - 1) == 0 {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                let reason = format!("time budget exhausted after {steps} steps");
                return Outcome::Unknown { steps, reason };
            }
            if cache.len() >= max_entries {
                let reason = format!(
                    "memory cap reached: {max_entries} configurations (~{} MiB)",
                    max_cache_bytes >> 20
                );
                return Outcome::Unknown { steps, reason };
            }
        }
        steps += 1;
        if entry == NIL {
            return Outcome::Linearizable { steps };
        }
        let Entry {
            op, is_call, next, ..
        } = list.e[entry];
        let o = &ops[op];
        if is_call {
            if let Some(new_state) = model.step(&state, &o.input, o.output.as_ref()) {
                linearized.set(op);
                if cache.insert((linearized.clone(), new_state.clone())) {
                    let old = std::mem::replace(&mut state, new_state);
                    stack.push((entry, old));
                    list.lift(entry);
                    entry = list.e[0].next;
                    continue;
                }
                linearized.clear(op);
            }
            entry = next;
            continue;
        }
        // The earliest remaining return belongs to an operation not yet linearized.
        if o.ret.is_none() {
            // Every operation with a known return is linearized; the indeterminate rest never
            // took effect.
            return Outcome::Linearizable { steps };
        }
        if best.as_ref().is_none_or(|b| stack.len() > b.prefix.len()) {
            let mut candidates = Vec::new();
            let mut c = list.e[0].next;
            while c != NIL && c != entry {
                if list.e[c].is_call {
                    candidates.push(list.e[c].op);
                }
                c = list.e[c].next;
            }
            if !candidates.contains(&op) {
                candidates.push(op);
            }
            best = Some(Stuck {
                prefix: stack.iter().map(|&(call, _)| list.e[call].op).collect(),
                state: model.describe_state(&state),
                candidates,
            });
        }
        let Some((call, prev_state)) = stack.pop() else {
            let stuck = best.unwrap_or(Stuck {
                prefix: Vec::new(),
                state: model.describe_state(&state),
                candidates: vec![op],
            });
            return Outcome::Illegal { steps, stuck };
        };
        state = prev_state;
        linearized.clear(list.e[call].op);
        list.unlift(call);
        entry = list.e[call].next;
    }
}
