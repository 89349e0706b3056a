//! A history: every operation the clients invoked, when, and what came of it.
//!
//! Times are nanoseconds since the run started, on one monotonic clock shared by every client.
//! An operation whose outcome is unknown (a timeout, a dropped connection, a leader change)
//! has no completion time: it may have taken effect at any point after its invocation, or
//! never.

use std::fmt::Write as _;

/// A value written to a register. Every write in a run writes a value no other write uses,
/// so a read names the write it saw.
pub type Value = u64;

/// What a client asked of one key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    /// A linearizable read.
    Read,
    /// A put of the value.
    Write(Value),
    /// A txn: if the key holds `expected` (`None`: the key is absent), put `new`.
    Cas {
        /// The value compared against.
        expected: Option<Value>,
        /// The value put if the compare holds.
        new: Value,
    },
}

/// What came of a call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A read answered with the key's value (`None`: absent).
    Read(Option<Value>),
    /// A write was acknowledged.
    Written,
    /// A compare-and-set answered; `true` if the compare held and the put was applied.
    Cas(bool),
    /// Refused with an error that means it did not take effect (etcd's definite failures,
    /// such as an invalid argument).
    Failed(String),
    /// No answer that says whether it took effect (timeouts, unavailability, a dropped
    /// connection): it may have, at any time after its invocation.
    Unknown(String),
}

impl Outcome {
    /// Whether the operation may have taken effect without an acknowledgement.
    #[must_use]
    pub fn is_unknown(&self) -> bool {
        matches!(self, Outcome::Unknown(_))
    }
}

/// What an answer said about the store's version order (etcd's revisions).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Revisions {
    /// The response header's revision: the store's revision when the answer was made; for a
    /// write that took effect, the revision it created.
    pub header: u64,
    /// For a read that found the key: the revision that last modified it.
    pub modified: Option<u64>,
}

/// One operation of one client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    /// Its position in the history (assigned by [`History::push`]).
    pub id: usize,
    /// The client that ran it. A client runs one operation at a time.
    pub process: usize,
    /// The key.
    pub key: String,
    /// What was asked.
    pub call: Call,
    /// When it was invoked.
    pub invoked_ns: u64,
    /// When the answer arrived; `None` when the outcome is unknown.
    pub completed_ns: Option<u64>,
    /// What came of it.
    pub outcome: Outcome,
    /// The revisions its answer carried, if it had a definite one and they were recorded.
    pub revisions: Option<Revisions>,
}

#[cfg(test)]
impl Op {
    /// An operation on key `k` for tests; times in milliseconds.
    pub(crate) fn on_k(
        process: usize,
        call: Call,
        (invoked_ms, completed_ms): (u64, u64),
        outcome: Outcome,
        revisions: Option<Revisions>,
    ) -> Op {
        Op {
            id: 0,
            process,
            key: "k".into(),
            call,
            invoked_ns: invoked_ms * 1_000_000,
            completed_ns: Some(completed_ms * 1_000_000),
            outcome,
            revisions,
        }
    }
}

/// Every operation of a run, in the order they completed (or gave up).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    ops: Vec<Op>,
}

impl History {
    /// An empty history.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Records an operation, giving it the next id. An unknown outcome forgets any
    /// completion time: the answer that never came says nothing about when it took effect.
    pub fn push(&mut self, mut op: Op) {
        op.id = self.ops.len();
        if op.outcome.is_unknown() {
            op.completed_ns = None;
        }
        self.ops.push(op);
    }

    /// The operations, by id.
    #[must_use]
    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    /// The history as JSON: one object per operation.
    #[must_use]
    pub fn to_json(&self) -> String {
        let mut out = String::from("[\n");
        for (i, op) in self.ops.iter().enumerate() {
            let (call, value, expected) = match op.call {
                Call::Read => ("read", None, None),
                Call::Write(v) => ("write", Some(v), None),
                Call::Cas { expected, new } => ("cas", Some(new), Some(expected)),
            };
            let _ = write!(
                out,
                "  {{\"id\":{},\"process\":{},\"key\":{},\"call\":\"{call}\"",
                op.id,
                op.process,
                json_string(&op.key)
            );
            if let Some(v) = value {
                let _ = write!(out, ",\"value\":{v}");
            }
            if let Some(expected) = expected {
                let _ = write!(out, ",\"expected\":{}", json_option(expected));
            }
            let _ = write!(out, ",\"invoked_ns\":{}", op.invoked_ns);
            match op.completed_ns {
                Some(t) => {
                    let _ = write!(out, ",\"completed_ns\":{t}");
                }
                None => out.push_str(",\"completed_ns\":null"),
            }
            let _ = match &op.outcome {
                Outcome::Read(v) => write!(out, ",\"outcome\":\"ok\",\"read\":{}", json_option(*v)),
                Outcome::Written => write!(out, ",\"outcome\":\"ok\""),
                Outcome::Cas(held) => write!(out, ",\"outcome\":\"ok\",\"succeeded\":{held}"),
                Outcome::Failed(e) => {
                    write!(out, ",\"outcome\":\"fail\",\"error\":{}", json_string(e))
                }
                Outcome::Unknown(e) => {
                    write!(out, ",\"outcome\":\"info\",\"error\":{}", json_string(e))
                }
            };
            out.push('}');
            if i + 1 < self.ops.len() {
                out.push(',');
            }
            out.push('\n');
        }
        out.push_str("]\n");
        out
    }

    /// A readable timeline: one line per operation in invocation order, with its interval
    /// in milliseconds, client, key, call and outcome.
    #[must_use]
    pub fn timeline(&self) -> String {
        self.timeline_of(|_| true)
    }

    /// The timeline of the operations on `key` only.
    #[must_use]
    pub fn key_timeline(&self, key: &str) -> String {
        self.timeline_of(|op| op.key == key)
    }

    fn timeline_of(&self, keep: impl Fn(&Op) -> bool) -> String {
        let mut ops: Vec<&Op> = self.ops.iter().filter(|op| keep(op)).collect();
        ops.sort_by_key(|op| (op.invoked_ns, op.id));
        let mut out = String::new();
        for op in ops {
            let end = op
                .completed_ns
                .map_or_else(|| "?".to_string(), |t| format!("{:.3}", ms(t)));
            let call = match op.call {
                Call::Read => "read".to_string(),
                Call::Write(v) => format!("write {v}"),
                Call::Cas { expected, new } => format!("cas {} -> {new}", show(expected)),
            };
            let outcome = match &op.outcome {
                Outcome::Read(v) => format!("ok {}", show(*v)),
                Outcome::Written => "ok".to_string(),
                Outcome::Cas(held) => format!("ok {}", if *held { "held" } else { "did not hold" }),
                Outcome::Failed(e) => format!("fail: {e}"),
                Outcome::Unknown(e) => format!("unknown: {e}"),
            };
            let _ = writeln!(
                out,
                "{:>10.3} .. {end:>10}  #{:<5} p{:<3} {:<8} {call:<24} {outcome}",
                ms(op.invoked_ns),
                op.id,
                op.process,
                op.key
            );
        }
        out
    }
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

fn show(value: Option<Value>) -> String {
    value.map_or_else(|| "absent".to_string(), |v| v.to_string())
}

fn json_option(value: Option<Value>) -> String {
    value.map_or_else(|| "null".to_string(), |v| v.to_string())
}

/// `text` as a JSON string literal.
fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves the JSON form names every field, escapes error text, and writes unknown
    // completions as null; and that pushing an unknown outcome drops its completion time.
    #[test]
    fn json_and_timeline() {
        let mut history = History::new();
        history.push(Op {
            id: 99,
            process: 1,
            key: "k0".into(),
            call: Call::Cas {
                expected: None,
                new: 7,
            },
            invoked_ns: 1_000_000,
            completed_ns: Some(2_000_000),
            outcome: Outcome::Unknown("deadline \"exceeded\"".into()),
            revisions: None,
        });
        history.push(Op {
            id: 0,
            process: 2,
            key: "k0".into(),
            call: Call::Read,
            invoked_ns: 1_500_000,
            completed_ns: Some(3_000_000),
            outcome: Outcome::Read(Some(7)),
            revisions: None,
        });
        assert_eq!(history.ops()[0].id, 0);
        assert_eq!(history.ops()[0].completed_ns, None);
        assert_eq!(
            history.to_json(),
            "[\n  {\"id\":0,\"process\":1,\"key\":\"k0\",\"call\":\"cas\",\"value\":7,\
             \"expected\":null,\"invoked_ns\":1000000,\"completed_ns\":null,\
             \"outcome\":\"info\",\"error\":\"deadline \\\"exceeded\\\"\"},\n  \
             {\"id\":1,\"process\":2,\"key\":\"k0\",\"call\":\"read\",\"invoked_ns\":1500000,\
             \"completed_ns\":3000000,\"outcome\":\"ok\",\"read\":7}\n]\n"
        );
        let timeline = history.timeline();
        assert!(timeline.contains("cas absent -> 7"), "{timeline}");
        assert!(timeline.contains("unknown: deadline"), "{timeline}");
        assert!(timeline.contains("ok 7"), "{timeline}");
    }
}
