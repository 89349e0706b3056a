//! Register clients: each runs one operation at a time — a linearizable read (ReadIndex, then
//! a local read once the member has applied that far), a put of a value never written before,
//! or a compare-and-set through a txn — against a random running member, and records what it
//! asked and saw in a [`History`] that the linearizability checker judges at the end.
//!
//! Outcomes are classified as a real client would see them: an answer is definite; a member
//! that crashed or restarted under the operation, or no answer within the client's timeout,
//! leaves it unknown (it may still take effect).

use std::time::Duration;

use linearizability::history::{Call, History, Op, Outcome, Revisions, Value};
use mvcc::{
    Command, CommandResponse, Compare, CompareResult, CompareTarget, PutRequest, RangeRequest,
    RequestOp, TxnRequest,
};
use node::{Applied, Node, NodeError};
use tokio::sync::oneshot;

use crate::Rng;

/// How long a client waits for an answer before it gives up (the outcome is then unknown).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(1);
/// Keys change this often, so each key's history stays small enough to check.
const KEY_PERIOD: Duration = Duration::from_secs(2);
/// Keys in use at a time.
const KEYS: u64 = 3;

/// Where a member is: its index and how many times it has been started, so that an operation
/// on a member that crashed since can be told apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Incarnation {
    /// The member's position.
    pub member: usize,
    /// Its start count.
    pub generation: u64,
}

enum Waiting {
    /// A put or a txn, until it is applied on the member that took it.
    Write(oneshot::Receiver<Result<Applied, NodeError>>),
    /// A read, until the member learns the read index.
    ReadIndex(oneshot::Receiver<Result<u64, NodeError>>),
    /// A read, until the member has applied up to the read index.
    Applied(u64),
}

struct InFlight {
    key: String,
    call: Call,
    invoked: Duration,
    node: Node,
    at: Incarnation,
    waiting: Waiting,
}

/// The clients of one simulation and the history they record.
pub struct Clients {
    rng: Rng,
    /// Reads skip ReadIndex (serializable reads taken for linearizable ones): a broken
    /// configuration the checker must catch.
    stale_reads: bool,
    in_flight: Vec<Option<InFlight>>,
    /// The last value each client read, by key: what its next compare-and-set expects.
    last_read: Vec<Option<(String, Option<Value>)>>,
    history: History,
    next_value: Value,
}

impl Clients {
    /// `n` idle clients, their choices drawn from `seed`.
    pub fn new(n: usize, seed: u64, stale_reads: bool) -> Self {
        Self {
            rng: Rng::new(seed),
            stale_reads,
            in_flight: (0..n).map(|_| None).collect(),
            last_read: vec![None; n],
            history: History::new(),
            next_value: 1,
        }
    }

    /// What the clients did so far.
    pub fn history(&self) -> &History {
        &self.history
    }

    /// Starts an operation on some of the idle clients, each against one of the `running`
    /// members.
    pub fn start(&mut self, now: Duration, running: &[(Node, Incarnation)]) {
        if running.is_empty() {
            return;
        }
        for process in 0..self.in_flight.len() {
            if self.in_flight[process].is_some() || self.rng.below(4) != 0 {
                continue;
            }
            let (node, at) = running[self.rng.below(running.len() as u64) as usize].clone();
            let period = now.as_nanos() / KEY_PERIOD.as_nanos();
            let key = format!("r{period}-{}", self.rng.below(KEYS));
            let call = match self.rng.below(3) {
                0 => Call::Read,
                1 => Call::Write(self.fresh_value()),
                _ => {
                    let expected = match &self.last_read[process] {
                        Some((read_key, value)) if *read_key == key => *value,
                        _ => None,
                    };
                    Call::Cas {
                        expected,
                        new: self.fresh_value(),
                    }
                }
            };
            let submitted = match call {
                Call::Read if self.stale_reads => Ok(Waiting::Applied(0)),
                Call::Read => node.submit_read().map(Waiting::ReadIndex),
                Call::Write(value) => node
                    .submit(&put(&key, value))
                    .map(|(_, answer)| Waiting::Write(answer)),
                Call::Cas { expected, new } => node
                    .submit(&cas(&key, expected, new))
                    .map(|(_, answer)| Waiting::Write(answer)),
            };
            match submitted {
                Ok(waiting) => {
                    self.in_flight[process] = Some(InFlight {
                        key,
                        call,
                        invoked: now,
                        node,
                        at,
                        waiting,
                    });
                }
                // Refused before it was proposed: it cannot take effect.
                Err(e) => self.record(process, key, call, (now, now), failed(&e), None),
            }
        }
    }

    /// Collects the answers that arrived. `current` says whether an incarnation is still the
    /// running one.
    pub fn poll(&mut self, now: Duration, current: &dyn Fn(Incarnation) -> bool) {
        for process in 0..self.in_flight.len() {
            let Some(mut op) = self.in_flight[process].take() else {
                continue;
            };
            let answered = if current(op.at) {
                op.poll()
            } else {
                Some((Outcome::Unknown("the member crashed".into()), None))
            };
            let (outcome, revisions) = match answered {
                Some(answered) => answered,
                None if now >= op.invoked + CLIENT_TIMEOUT => {
                    (Outcome::Unknown("request timed out".into()), None)
                }
                None => {
                    self.in_flight[process] = Some(op);
                    continue;
                }
            };
            if let Outcome::Read(value) = outcome {
                self.last_read[process] = Some((op.key.clone(), value));
            }
            self.record(
                process,
                op.key,
                op.call,
                (op.invoked, now),
                outcome,
                revisions,
            );
        }
    }

    /// Every operation still waiting becomes unknown (the run is over).
    pub fn abandon(&mut self, now: Duration) {
        for process in 0..self.in_flight.len() {
            if let Some(op) = self.in_flight[process].take() {
                let outcome = Outcome::Unknown("the run ended".into());
                self.record(process, op.key, op.call, (op.invoked, now), outcome, None);
            }
        }
    }

    fn fresh_value(&mut self) -> Value {
        self.next_value += 1;
        self.next_value
    }

    fn record(
        &mut self,
        process: usize,
        key: String,
        call: Call,
        (invoked, completed): (Duration, Duration),
        outcome: Outcome,
        revisions: Option<Revisions>,
    ) {
        self.history.push(Op {
            id: 0,
            process,
            key,
            call,
            invoked_ns: invoked.as_nanos() as u64,
            completed_ns: Some(completed.as_nanos() as u64),
            outcome,
            revisions,
        });
    }
}

impl InFlight {
    /// The outcome and the revisions its answer carried, if it is known now.
    fn poll(&mut self) -> Option<(Outcome, Option<Revisions>)> {
        match &mut self.waiting {
            Waiting::Write(answer) => match answer.try_recv() {
                Err(oneshot::error::TryRecvError::Empty) => None,
                Err(oneshot::error::TryRecvError::Closed) => {
                    Some((Outcome::Unknown("the member stopped".into()), None))
                }
                Ok(Err(e)) => Some((failed(&e), None)),
                Ok(Ok(applied)) => {
                    let revisions = Some(Revisions {
                        header: applied.revision as u64,
                        modified: None,
                    });
                    Some(match applied.result {
                        Ok(CommandResponse::Put(_)) => (Outcome::Written, revisions),
                        Ok(CommandResponse::Txn(txn)) => (Outcome::Cas(txn.succeeded), revisions),
                        Ok(other) => (Outcome::Failed(format!("unexpected {other:?}")), None),
                        Err(e) => (Outcome::Failed(e.to_string()), None),
                    })
                }
            },
            Waiting::ReadIndex(answer) => match answer.try_recv() {
                Err(oneshot::error::TryRecvError::Empty) => None,
                Err(oneshot::error::TryRecvError::Closed) => {
                    Some((Outcome::Unknown("the member stopped".into()), None))
                }
                Ok(Err(e)) => Some((Outcome::Failed(e.to_string()), None)),
                Ok(Ok(index)) => {
                    self.waiting = Waiting::Applied(index);
                    self.poll()
                }
            },
            Waiting::Applied(index) => {
                if self.node.applied_index() < *index {
                    return None;
                }
                let request = RangeRequest {
                    key: self.key.as_bytes().to_vec(),
                    ..Default::default()
                };
                Some(match self.node.range(&request) {
                    Ok((found, _)) => {
                        let kv = found.kvs.first();
                        let revisions = Revisions {
                            header: found.revision as u64,
                            modified: kv.map(|kv| kv.mod_revision as u64),
                        };
                        match kv.map(|kv| parse(&kv.value)) {
                            None => (Outcome::Read(None), Some(revisions)),
                            Some(Some(value)) => (Outcome::Read(Some(value)), Some(revisions)),
                            Some(None) => (Outcome::Failed("a value no client wrote".into()), None),
                        }
                    }
                    Err(e) => (Outcome::Failed(e.to_string()), None),
                })
            }
        }
    }
}

/// The outcome of an error answer: definite unless the write may still be in the log.
fn failed(error: &NodeError) -> Outcome {
    match error {
        NodeError::Stopped | NodeError::Timeout | NodeError::Storage(_) => {
            Outcome::Unknown(error.to_string())
        }
        _ => Outcome::Failed(error.to_string()),
    }
}

fn encode(value: Value) -> Vec<u8> {
    value.to_string().into_bytes()
}

fn parse(bytes: &[u8]) -> Option<Value> {
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

fn put(key: &str, value: Value) -> Command {
    Command::Put(PutRequest {
        key: key.as_bytes().to_vec(),
        value: encode(value),
        ..Default::default()
    })
}

/// A txn that puts `new` if the key holds `expected` (or is absent, for `None`).
fn cas(key: &str, expected: Option<Value>, new: Value) -> Command {
    let target = match expected {
        Some(value) => CompareTarget::Value(encode(value)),
        None => CompareTarget::Create(0),
    };
    Command::Txn(TxnRequest {
        compare: vec![Compare {
            result: CompareResult::Equal,
            target,
            key: key.as_bytes().to_vec(),
            range_end: Vec::new(),
        }],
        success: vec![RequestOp::Put(PutRequest {
            key: key.as_bytes().to_vec(),
            value: encode(new),
            ..Default::default()
        })],
        failure: Vec::new(),
    })
}
