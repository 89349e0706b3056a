//! The simulated network: every message waits in one ordered queue until its delivery time.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use node::{Envelope, NodeId, OutgoingSnapshot, Transport};
use parking_lot::Mutex;

use crate::SimConfig;

/// A deterministic pseudo-random sequence (splitmix64).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A sequence from `seed`.
    #[must_use]
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

struct State {
    rng: Rng,
    /// `(delivery time in ns, sequence) -> (to, from, envelopes)`.
    queue: BTreeMap<(u64, u64), (u64, u64, Vec<Envelope>)>,
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
    /// `(to, from, envelopes)`. Messages on a link cut meanwhile are lost.
    pub fn due(&self, now: Duration) -> Vec<(u64, u64, Vec<Envelope>)> {
        let mut state = self.0.lock();
        state.now_ns = now.as_nanos() as u64;
        let first_later = (state.now_ns + 1, 0);
        let later = state.queue.split_off(&first_later);
        let due = std::mem::replace(&mut state.queue, later);
        let mut out = Vec::new();
        for (_, (to, from, envelopes)) in due {
            if !state.cut.contains(&(from, to)) {
                state.delivered += 1;
                out.push((to, from, envelopes));
            }
        }
        out
    }
}

struct SimTransport {
    from: u64,
    net: Net,
}

impl Transport for SimTransport {
    fn send(&self, to: NodeId, envelopes: Vec<Envelope>) {
        let mut state = self.net.0.lock();
        let drop_per_mille = state.drop_per_mille;
        if state.cut.contains(&(self.from, to.0)) || state.rng.below(1000) < drop_per_mille {
            return;
        }
        let duplicate_per_mille = state.duplicate_per_mille;
        let copies = if state.rng.below(1000) < duplicate_per_mille {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let max_delay_ms = state.max_delay_ms;
            let delay_ms = 1 + state.rng.below(max_delay_ms);
            let at = state.now_ns + delay_ms * 1_000_000;
            state.seq += 1;
            let seq = state.seq;
            state
                .queue
                .insert((at, seq), (to.0, self.from, envelopes.clone()));
        }
    }

    fn send_snapshot(&self, _to: NodeId, _snapshot: OutgoingSnapshot) {
        // Snapshots are not simulated yet (the crate doc says so); runs are configured so
        // that no member ever needs one.
    }
}
