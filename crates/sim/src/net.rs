//! The simulated network: every message waits in one ordered queue until its delivery time.
//! Snapshots travel the same way, whole: read from the sender's view when sent, delivered
//! (or lost to a cut link) like any message.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use consensus::{Message, MessageType, ProtobufMessage as _};
use node::{Envelope, NodeId, OutgoingSnapshot, ShardId, Transport};
use parking_lot::Mutex;

use crate::SimConfig;

pub use seeded::Rng;

/// What the network delivers.
pub enum Delivery {
    /// Raft messages.
    Messages(Vec<Envelope>),
    /// A whole snapshot: the encoded `MsgSnapshot` and the data chunks. `chunks` is an error
    /// if the sender could not read its view.
    Snapshot {
        /// The shard.
        shard: ShardId,
        /// The encoded `MsgSnapshot`.
        message: Vec<u8>,
        /// The state machine content.
        chunks: Result<Vec<Vec<u8>>, String>,
    },
    /// To a snapshot's sender: the stream to `from` broke, the snapshot was not delivered.
    SnapshotFailed {
        /// The shard.
        shard: ShardId,
    },
}

struct State {
    rng: Rng,
    /// `(delivery time in ns, sequence) -> (to, from, what)`.
    queue: BTreeMap<(u64, u64), (u64, u64, Delivery)>,
    seq: u64,
    /// Links that drop everything: `(from, to)`.
    cut: BTreeSet<(u64, u64)>,
    members: Vec<u64>,
    now_ns: u64,
    drop_per_mille: u64,
    duplicate_per_mille: u64,
    max_delay_ms: u64,
    delivered: u64,
}

/// The network of one simulation. Cloning shares it.
#[derive(Clone)]
pub struct Net(Arc<Mutex<State>>);

impl Net {
    /// A network for `config.members` members (ids 1..=n), its randomness from `seed`.
    #[must_use]
    pub fn new(seed: u64, config: &SimConfig) -> Self {
        Net(Arc::new(Mutex::new(State {
            rng: Rng::new(seed ^ 0x006e_6574_776f_726b),
            queue: BTreeMap::new(),
            seq: 0,
            cut: BTreeSet::new(),
            members: (1..=config.members as u64).collect(),
            now_ns: 0,
            drop_per_mille: config.drop_per_mille,
            duplicate_per_mille: config.duplicate_per_mille,
            max_delay_ms: config.max_delay_ms.max(1),
            delivered: 0,
        })))
    }

    /// The transport member `id` sends through.
    #[must_use]
    pub fn transport(&self, id: u64) -> Arc<dyn Transport> {
        Arc::new(SimTransport {
            from: id,
            net: self.clone(),
        })
    }

    /// Cuts `member` off from every other member, both ways.
    pub fn isolate(&self, member: u64) {
        let mut state = self.0.lock();
        let others: Vec<u64> = state
            .members
            .iter()
            .copied()
            .filter(|&m| m != member)
            .collect();
        for other in others {
            state.cut.insert((member, other));
            state.cut.insert((other, member));
        }
    }

    /// Restores every link.
    pub fn heal(&self) {
        self.0.lock().cut.clear();
    }

    /// Messages delivered so far.
    #[must_use]
    pub fn delivered(&self) -> u64 {
        self.0.lock().delivered
    }

    /// Takes the messages due at `now` (virtual time since the start), in delivery order:
    /// `(to, from, what)`. Messages on a link cut meanwhile are lost; a snapshot lost so is
    /// reported to its sender, as a broken stream is.
    pub fn due(&self, now: Duration) -> Vec<(u64, u64, Delivery)> {
        let mut state = self.0.lock();
        state.now_ns = now.as_nanos() as u64;
        let first_later = (state.now_ns + 1, 0);
        let later = state.queue.split_off(&first_later);
        let due = std::mem::replace(&mut state.queue, later);
        let mut out = Vec::new();
        for (_, (to, from, what)) in due {
            let report = matches!(what, Delivery::SnapshotFailed { .. });
            if report || !state.cut.contains(&(from, to)) {
                state.delivered += 1;
                out.push((to, from, what));
            } else if let Delivery::Snapshot { shard, .. } = what {
                // The peer transport reports a broken stream; without the report the sender's
                // Raft waits for the snapshot forever (a follower in snapshot state is sent
                // nothing else). Seed 8373 lost it once: its follower never caught up.
                state.delivered += 1;
                out.push((from, to, Delivery::SnapshotFailed { shard }));
            }
        }
        out
    }
}

impl State {
    /// Queues `what` from `from` to `to` after a random delay; it may be dropped or doubled.
    fn send(&mut self, from: u64, to: u64, what: Delivery) {
        if self.cut.contains(&(from, to)) || self.rng.below(1000) < self.drop_per_mille {
            if let Delivery::Snapshot { shard, .. } = what {
                // A snapshot goes on a stream of its own, whose failure its sender learns.
                let at = self.now_ns + self.max_delay_ms * 1_000_000;
                self.seq += 1;
                let report = Delivery::SnapshotFailed { shard };
                self.queue.insert((at, self.seq), (from, to, report));
            }
            return;
        }
        let copies = if self.rng.below(1000) < self.duplicate_per_mille && may_duplicate(&what) {
            2
        } else {
            1
        };
        let mut what = Some(what);
        for copy in 0..copies {
            let delay_ms = 1 + self.rng.below(self.max_delay_ms);
            let at = self.now_ns + delay_ms * 1_000_000;
            self.seq += 1;
            let item = if copy + 1 == copies {
                what.take().expect("taken once")
            } else {
                what.as_ref().expect("not taken yet").duplicate()
            };
            self.queue.insert((at, self.seq), (to, from, item));
        }
    }
}

/// Whether a network may deliver `what` twice. Raft's own messages are idempotent, but a
/// proposal a follower forwards to the leader is not: the leader would append it twice and
/// the write would take effect twice (the simulation found this: a put applied at two
/// revisions). The peer transport is a gRPC stream that never resends, so a forwarded proposal
/// arrives at most once, as in etcd; the simulation delivers it at most once too.
fn may_duplicate(what: &Delivery) -> bool {
    let Delivery::Messages(envelopes) = what else {
        return true;
    };
    envelopes.iter().all(|envelope| {
        Message::parse_from_bytes(&envelope.message)
            .is_ok_and(|message| message.get_msg_type() != MessageType::MsgPropose)
    })
}

impl Delivery {
    fn duplicate(&self) -> Delivery {
        match self {
            Delivery::Messages(envelopes) => Delivery::Messages(envelopes.clone()),
            Delivery::Snapshot {
                shard,
                message,
                chunks,
            } => Delivery::Snapshot {
                shard: *shard,
                message: message.clone(),
                chunks: chunks.clone(),
            },
            Delivery::SnapshotFailed { shard } => Delivery::SnapshotFailed { shard: *shard },
        }
    }
}

struct SimTransport {
    from: u64,
    net: Net,
}

impl Transport for SimTransport {
    fn send(&self, to: NodeId, envelopes: Vec<Envelope>) {
        self.net
            .0
            .lock()
            .send(self.from, to.0, Delivery::Messages(envelopes));
    }

    fn send_snapshot(&self, to: NodeId, snapshot: OutgoingSnapshot) {
        let chunks = snapshot
            .chunks
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string());
        let what = Delivery::Snapshot {
            shard: snapshot.shard,
            message: snapshot.message,
            chunks,
        };
        self.net.0.lock().send(self.from, to.0, what);
    }
}
