//! Linearizability of a history of register operations, key by key.
//!
//! Linearizability is compositional: a history is linearizable if and only if its restriction
//! to each key is, so each key is checked on its own. For one key the check is the
//! Wing–Gong–Lowe search (Lowe, "Testing for linearizability", 2017): walk the call and return
//! events in time order, linearize any pending call whose effect is consistent with the
//! register's state, and backtrack when a return is reached for an operation not yet
//! linearized. A cache of (set of linearized operations, state) pairs already explored keeps
//! the search from repeating itself.
//!
//! How outcomes enter the search:
//! - a definite failure took no effect and is left out;
//! - an unknown read says nothing and is left out;
//! - an unknown write or compare-and-set may have taken effect at any time after its
//!   invocation, so its return is placed at infinity; taking effect after everything else is
//!   indistinguishable from never taking effect, so "maybe never" needs no extra case;
//! - a compare-and-set that answered "did not hold" is an observation: at its linearization
//!   point the register did not hold the expected value.
//!
//! The search is exponential in the worst case. It stops after a budget of steps with
//! [`Verdict::Unknown`], which callers must treat as a failure to verify, never as a pass.

use std::collections::{BTreeMap, HashSet};

use crate::history::{Call, History, Op, Outcome, Value};

/// The verdict on a history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every key's operations have a linearization.
    Linearizable,
    /// A key's operations have none.
    Violation(Violation),
    /// The search ran out of budget on a key before deciding.
    Unknown {
        /// The key.
        key: String,
        /// Steps taken on it.
        steps: u64,
    },
}

/// Where the search for a linearization failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The key whose operations cannot be linearized.
    pub key: String,
    /// The longest sequence of its operations (ids) the search could linearize.
    pub longest_prefix: Vec<usize>,
    /// The register's value after that sequence.
    pub state_after_prefix: Option<Value>,
    /// Operations that had to come next (their return came before they could be placed),
    /// none of which is consistent with that state.
    pub stuck_on: Vec<usize>,
}

/// Checks every key of `history`, spending at most `budget` search steps on each.
#[must_use]
pub fn check(history: &History, budget: u64) -> Verdict {
    let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in history.ops() {
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    for (key, ops) in by_key {
        match check_key(key, &ops, budget) {
            Verdict::Linearizable => {}
            other => return other,
        }
    }
    Verdict::Linearizable
}

/// One operation as the search sees it.
#[derive(Clone, Copy, Debug)]
struct Entry {
    id: usize,
    call: Call,
    /// What the answer observed: the value read, or whether a compare held.
    observed: Observed,
    invoked: u64,
    /// `u64::MAX` for an unknown outcome.
    returned: u64,
}

#[derive(Clone, Copy, Debug)]
enum Observed {
    Read(Option<Value>),
    Cas(bool),
    /// An acknowledged write, or an unknown write or compare-and-set.
    Nothing,
}

impl Entry {
    /// The register's state after this operation takes effect in `state`, or `None` if it
    /// cannot take effect there (its answer contradicts the state).
    fn step(&self, state: Option<Value>) -> Option<Option<Value>> {
        match (self.call, self.observed) {
            (Call::Read, Observed::Read(seen)) => (seen == state).then_some(state),
            (Call::Read, _) => Some(state),
            (Call::Write(v), _) => Some(Some(v)),
            (Call::Cas { expected, new }, Observed::Cas(true)) => {
                (state == expected).then_some(Some(new))
            }
            (Call::Cas { expected, .. }, Observed::Cas(false)) => {
                (state != expected).then_some(state)
            }
            // Unknown: the compare decides, as it would have in the store.
            (Call::Cas { expected, new }, _) => {
                Some(if state == expected { Some(new) } else { state })
            }
        }
    }
}

fn entry(op: &Op) -> Option<Entry> {
    let observed = match (&op.outcome, op.call) {
        (Outcome::Failed(_), _) | (Outcome::Unknown(_), Call::Read) => return None,
        (Outcome::Read(v), Call::Read) => Observed::Read(*v),
        (Outcome::Cas(held), Call::Cas { .. }) => Observed::Cas(*held),
        (Outcome::Written | Outcome::Unknown(_), Call::Write(_) | Call::Cas { .. }) => {
            Observed::Nothing
        }
        // An outcome that does not fit its call is a harness bug; it constrains nothing.
        _ => return None,
    };
    Some(Entry {
        id: op.id,
        call: op.call,
        observed,
        invoked: op.invoked_ns,
        returned: match (&op.outcome, op.completed_ns) {
            (Outcome::Unknown(_), _) | (_, None) => u64::MAX,
            (_, Some(t)) => t,
        },
    })
}

/// A set of operation indexes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Self {
        Bits(vec![0; n.div_ceil(64)])
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

const HEAD: usize = usize::MAX;

/// The events of one key's operations in time order, as a doubly linked list from which a
/// linearized operation's call and return are lifted and, on backtracking, put back.
struct Events {
    /// `(operation index, is_call)` per event.
    kind: Vec<(usize, bool)>,
    next: Vec<usize>,
    prev: Vec<usize>,
    head_next: usize,
    /// Each operation's return event.
    return_of: Vec<usize>,
}

impl Events {
    fn new(entries: &[Entry]) -> Self {
        let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(entries.len() * 2);
        for (i, e) in entries.iter().enumerate() {
            // At equal times a call sorts before a return: the two are then concurrent,
            // the more permissive reading of a tie.
            events.push((e.invoked, false, i));
            events.push((e.returned, true, i));
        }
        events.sort_unstable();
        let n = events.len();
        let mut return_of = vec![0; entries.len()];
        let kind = events
            .iter()
            .enumerate()
            .map(|(position, &(_, is_return, op))| {
                if is_return {
                    return_of[op] = position;
                }
                (op, !is_return)
            })
            .collect();
        Events {
            kind,
            next: (1..=n).map(|i| if i == n { HEAD } else { i }).collect(),
            prev: (0..n).map(|i| if i == 0 { HEAD } else { i - 1 }).collect(),
            head_next: if n == 0 { HEAD } else { 0 },
            return_of,
        }
    }

    fn first(&self) -> usize {
        self.head_next
    }

    fn set_next(&mut self, at: usize, to: usize) {
        if at == HEAD {
            self.head_next = to;
        } else {
            self.next[at] = to;
        }
    }

    fn unlink(&mut self, event: usize) {
        let (prev, next) = (self.prev[event], self.next[event]);
        self.set_next(prev, next);
        if next != HEAD {
            self.prev[next] = prev;
        }
    }

    /// Puts back an event removed by [`Events::unlink`]; events must be put back in the
    /// reverse order of their removal.
    fn relink(&mut self, event: usize) {
        let (prev, next) = (self.prev[event], self.next[event]);
        self.set_next(prev, event);
        if next != HEAD {
            self.prev[next] = event;
        }
    }

    /// Lifts an operation (its call event `call`) out of the list.
    fn lift(&mut self, call: usize) {
        let op = self.kind[call].0;
        self.unlink(call);
        self.unlink(self.return_of[op]);
    }

    fn unlift(&mut self, call: usize) {
        let op = self.kind[call].0;
        self.relink(self.return_of[op]);
        self.relink(call);
    }
}

/// Leaves out the unknown writes and compare-and-sets that cannot matter, which is what keeps
/// the search small when faults leave many outcomes unknown.
///
/// Such an operation `u` writing `v` matters only through the state `v` it leaves. If no read
/// returned `v` and no compare-and-set expected `v`, the operations after `u` that could
/// notice that state are compare-and-sets that answered "did not hold". If none of those ends
/// after `u` began, then any linearization of the rest extends to one with `u` placed last,
/// and any linearization with `u` yields one without it (unknown operations after `u` that
/// would now act differently are moved to the end too, where they act on nobody). So the
/// verdict is the same.
fn prune_unobservable(entries: Vec<Entry>) -> Vec<Entry> {
    let mut observed = HashSet::new();
    let mut latest_refusal = None;
    for e in &entries {
        match (e.call, e.observed) {
            (Call::Read, Observed::Read(Some(v))) => {
                observed.insert(v);
            }
            (Call::Cas { expected, .. }, observed_cas) => {
                if let Some(v) = expected {
                    observed.insert(v);
                }
                if matches!(observed_cas, Observed::Cas(false)) {
                    latest_refusal = latest_refusal.max(Some(e.returned));
                }
            }
            _ => {}
        }
    }
    entries
        .into_iter()
        .filter(|e| {
            let written = match e.call {
                Call::Write(v) | Call::Cas { new: v, .. } => v,
                Call::Read => return true,
            };
            let unknown = e.returned == u64::MAX;
            let noticed =
                observed.contains(&written) || latest_refusal.is_some_and(|t| t >= e.invoked);
            !unknown || noticed
        })
        .collect()
}

fn check_key(key: &str, ops: &[&Op], budget: u64) -> Verdict {
    let entries = prune_unobservable(ops.iter().filter_map(|op| entry(op)).collect());
    let mut events = Events::new(&entries);
    let mut linearized = Bits::new(entries.len());
    let mut seen: HashSet<(Bits, Option<Value>)> = HashSet::new();
    // The call events linearized so far, with the state before each.
    let mut stack: Vec<(usize, Option<Value>)> = Vec::new();
    let mut state: Option<Value> = None;
    let mut longest: (Vec<usize>, Option<Value>) = (Vec::new(), None);
    let mut stuck_on = Vec::new();
    let mut at = events.first();
    let mut steps = 0u64;
    loop {
        if events.first() == HEAD {
            return Verdict::Linearizable;
        }
        steps += 1;
        if steps > budget {
            return Verdict::Unknown {
                key: key.to_string(),
                steps,
            };
        }
        let (op, is_call) = events.kind[at];
        if is_call {
            let next_state = entries[op].step(state);
            if let Some(next_state) = next_state {
                linearized.set(op);
                if seen.insert((linearized.clone(), next_state)) {
                    stack.push((at, state));
                    state = next_state;
                    events.lift(at);
                    if stack.len() > longest.0.len() {
                        longest = (
                            stack
                                .iter()
                                .map(|&(call, _)| entries[events.kind[call].0].id)
                                .collect(),
                            state,
                        );
                        stuck_on.clear();
                    }
                    at = events.first();
                    continue;
                }
                linearized.clear(op);
            }
            at = events.next[at];
        } else {
            // `op` returned before it could be linearized: undo the last choice.
            if stack.len() == longest.0.len() && !stuck_on.contains(&entries[op].id) {
                stuck_on.push(entries[op].id);
            }
            let Some((call, before)) = stack.pop() else {
                return Verdict::Violation(Violation {
                    key: key.to_string(),
                    longest_prefix: longest.0,
                    state_after_prefix: longest.1,
                    stuck_on,
                });
            };
            let undone = events.kind[call].0;
            state = before;
            linearized.clear(undone);
            events.unlift(call);
            at = events.next[call];
        }
        // Never past the end: the last event in the list is always a return (every call's
        // own return follows it), and reaching a return backtracks.
        debug_assert!(at != HEAD);
    }
}

#[cfg(test)]
mod tests;
