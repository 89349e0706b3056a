//! Deterministic simulation: a whole cluster of real members — store loop, the `raft` crate,
//! apply and MVCC, over in-memory storage — run in one thread from one `u64` seed, with time
//! from a manual clock and every message through a simulated network that delays, drops,
//! duplicates, reorders and partitions. The same seed gives the same run, step for step, so a
//! failure replays exactly: `SIM_SEED=<n> cargo test -p sim`.
//!
//! After every step the run checks election safety (one leader per term); at the end, after
//! healing, liveness (a new write commits), state machine safety (every member's history
//! hashes the same at a common revision) and durability (every acknowledged write is there,
//! on every member, at its revision).
//!
//! Not simulated yet: crashes and restarts with lost unsynced writes, snapshots, membership
//! changes.

mod net;

use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use mvcc::{Command, CommandResponse, PutRequest, RangeRequest};
use node::{Applied, Clock, Driver, Node, NodeConfig, NodeError, NodeId};
use storage::{MemKvStore, MemLogStore};
use tokio::sync::oneshot;

pub use net::{Net, Rng};

/// What a simulation runs.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Members (3 or 5).
    pub members: usize,
    /// Virtual time under faults.
    pub duration: Duration,
    /// Virtual time after the heal in which a new write must commit.
    pub settle: Duration,
    /// Per mille of messages dropped.
    pub drop_per_mille: u64,
    /// Per mille of messages delivered twice.
    pub duplicate_per_mille: u64,
    /// Longest delivery delay in milliseconds (delays differ, so messages reorder).
    pub max_delay_ms: u64,
    /// Whether members are cut off from the others now and then.
    pub partitions: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            members: 3,
            duration: Duration::from_secs(10),
            settle: Duration::from_secs(5),
            drop_per_mille: 20,
            duplicate_per_mille: 10,
            max_delay_ms: 15,
            partitions: true,
        }
    }
}

/// What a run saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// A digest of everything that happened, in order: equal for equal seeds.
    pub trace: u64,
    /// Writes acknowledged to clients.
    pub acknowledged: usize,
    /// Leaders seen, by term.
    pub leaders: BTreeMap<u64, u64>,
    /// Messages delivered.
    pub delivered: u64,
}

/// A write a client is waiting on.
struct Pending {
    key: Vec<u8>,
    value: Vec<u8>,
    answer: oneshot::Receiver<Result<Applied, NodeError>>,
}

/// Records who led in which term and fails if two members did in one.
#[derive(Default)]
pub struct ElectionSafety {
    leaders: BTreeMap<u64, u64>,
}

impl ElectionSafety {
    /// Notes that `member` considers itself leader in `term`.
    ///
    /// # Errors
    /// If another member led in that term.
    pub fn observe(&mut self, term: u64, member: u64) -> Result<(), String> {
        match self.leaders.insert(term, member) {
            Some(other) if other != member => Err(format!(
                "election safety: members {other} and {member} both led term {term}"
            )),
            _ => Ok(()),
        }
    }
}

/// Runs the simulation of `seed`.
///
/// # Errors
/// The first property that failed, with the virtual time it failed at.
pub fn run(seed: u64, config: &SimConfig) -> Result<Report, String> {
    let clock = Clock::manual();
    let net = Net::new(seed, config);
    let ids: Vec<u64> = (1..=config.members as u64).collect();
    let dir = std::env::temp_dir().join(format!("concord-sim-{}-{seed}", std::process::id()));
    let mut nodes = Vec::new();
    let mut drivers: Vec<Driver> = Vec::new();
    for &id in &ids {
        let node_config = NodeConfig {
            node_id: NodeId(id),
            cluster_id: 1,
            initial_voters: ids.iter().map(|&i| NodeId(i)).collect(),
            tick_interval: Duration::from_millis(10),
            election_ticks: 10,
            heartbeat_ticks: 1,
            // No snapshots: they need threads (see the crate doc).
            snapshot_count: u64::MAX / 4,
            snapshot_catchup_entries: 1000,
            request_timeout: Duration::from_secs(5),
            max_pending_proposals: 10_000,
            seed: seed ^ id.wrapping_mul(0x9e37_79b9_7f4a_7c15),
            snapshot_dir: dir.join(id.to_string()),
            clock: clock.clone(),
        };
        let (node, driver) = Node::start_driven(
            node_config,
            Arc::new(MemLogStore::new()),
            MemKvStore::new(),
            net.transport(id),
        )
        .map_err(|e| format!("start member {id}: {e}"))?;
        nodes.push(node);
        drivers.push(driver);
    }
    let mut rng = Rng::new(seed ^ 0x0000_636c_6965_6e74);
    let mut trace = DefaultHasher::new();
    let mut safety = ElectionSafety::default();
    let mut pending: Vec<Pending> = Vec::new();
    let mut acknowledged: Vec<(Vec<u8>, Vec<u8>, i64)> = Vec::new();
    let mut writes = 0u64;
    let step = Duration::from_millis(1);
    let end = config.duration + config.settle;
    let mut heal_at = None;
    let mut liveness_probe: Option<Pending> = None;
    while clock.elapsed() < end {
        clock.advance(step);
        let now = clock.elapsed();
        let at = |what: String| format!("at {:?}: {what}", now);
        // Faults, only before the settle period.
        if config.partitions && now < config.duration {
            match heal_at {
                None if rng.below(1000) < 2 => {
                    let isolated = ids[rng.below(ids.len() as u64) as usize];
                    net.isolate(isolated);
                    heal_at = Some(now + Duration::from_millis(200 + rng.below(1500)));
                    isolated.hash(&mut trace);
                }
                Some(t) if now >= t => {
                    net.heal();
                    heal_at = None;
                }
                _ => {}
            }
        }
        if now >= config.duration && heal_at.is_some() {
            net.heal();
            heal_at = None;
        }
        for (to, from, envelopes) in net.due(now) {
            nodes[(to - 1) as usize].step(NodeId(from), envelopes);
        }
        for (i, driver) in drivers.iter_mut().enumerate() {
            if !driver.step() {
                return Err(at(format!("member {} stopped", ids[i])));
            }
        }
        for node in &nodes {
            let status = node.status();
            if status.leader == status.member_id && status.leader != 0 {
                safety.observe(status.term, status.member_id).map_err(at)?;
            }
        }
        // Clients: a write every few milliseconds, to a random member, while faults last.
        if now < config.duration && rng.below(5) == 0 {
            writes += 1;
            let key = format!("k{}", rng.below(8)).into_bytes();
            let value = format!("{seed}-{writes}").into_bytes();
            let member = rng.below(nodes.len() as u64) as usize;
            let command = Command::Put(PutRequest {
                key: key.clone(),
                value: value.clone(),
                ..Default::default()
            });
            if let Ok((_, answer)) = nodes[member].submit(&command) {
                pending.push(Pending { key, value, answer });
            }
        }
        let mut still = Vec::new();
        for mut write in pending.drain(..) {
            match write.answer.try_recv() {
                Ok(Ok(applied)) => {
                    if let Ok(CommandResponse::Put(put)) = applied.result {
                        (&write.key, &write.value, put.revision).hash(&mut trace);
                        acknowledged.push((write.key, write.value, put.revision));
                    }
                }
                Ok(Err(_)) | Err(oneshot::error::TryRecvError::Closed) => {}
                Err(oneshot::error::TryRecvError::Empty) => still.push(write),
            }
        }
        pending = still;
        // Liveness: once healed, one more write must commit within the settle period.
        if now >= config.duration && liveness_probe.is_none() {
            let command = Command::Put(PutRequest {
                key: b"liveness".to_vec(),
                value: b"probe".to_vec(),
                ..Default::default()
            });
            let (_, answer) = nodes[0].submit(&command).map_err(|e| at(e.to_string()))?;
            liveness_probe = Some(Pending {
                key: b"liveness".to_vec(),
                value: b"probe".to_vec(),
                answer,
            });
        }
        if let Some(probe) = &mut liveness_probe {
            match probe.answer.try_recv() {
                Ok(Ok(applied)) if applied.result.is_ok() => break,
                Ok(other) => return Err(at(format!("liveness probe failed: {other:?}"))),
                Err(oneshot::error::TryRecvError::Empty) => {}
                Err(e) => return Err(at(format!("liveness probe lost: {e}"))),
            }
        }
    }
    if clock.elapsed() >= end {
        return Err(format!(
            "liveness: no write committed within {:?} after the heal",
            config.settle
        ));
    }
    // Let followers apply what the leader has: a few quiet heartbeats.
    for _ in 0..200 {
        clock.advance(step);
        for (to, from, envelopes) in net.due(clock.elapsed()) {
            nodes[(to - 1) as usize].step(NodeId(from), envelopes);
        }
        for driver in &mut drivers {
            driver.step();
        }
    }
    check_agreement(&nodes, &acknowledged)?;
    let delivered = net.delivered();
    delivered.hash(&mut trace);
    for node in &nodes {
        node.status().revision.hash(&mut trace);
    }
    for node in &nodes {
        node.shutdown();
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Report {
        trace: trace.finish(),
        acknowledged: acknowledged.len(),
        leaders: safety.leaders,
        delivered,
    })
}

/// State machine safety and durability at the end of a run.
fn check_agreement(nodes: &[Node], acknowledged: &[(Vec<u8>, Vec<u8>, i64)]) -> Result<(), String> {
    let common = nodes.iter().map(|n| n.status().revision).min().unwrap_or(1);
    let mut hashes = Vec::new();
    for node in nodes {
        let (hash, _, _) = node
            .hash_kv(common)
            .map_err(|e| format!("hash at {common}: {e}"))?;
        hashes.push(hash);
    }
    if hashes.iter().any(|&h| h != hashes[0]) {
        return Err(format!(
            "state machine safety: members' histories differ at revision {common}: {hashes:?}"
        ));
    }
    for (key, value, revision) in acknowledged {
        for (i, node) in nodes.iter().enumerate() {
            let request = RangeRequest {
                key: key.clone(),
                revision: *revision,
                ..Default::default()
            };
            let (found, _) = node
                .range(&request)
                .map_err(|e| format!("member {}: read at {revision}: {e}", i + 1))?;
            let seen = found.kvs.first().map(|kv| kv.value.clone());
            if seen.as_deref() != Some(value.as_slice()) {
                return Err(format!(
                    "durability: write {}={} acknowledged at revision {revision} reads as {:?} on member {}",
                    String::from_utf8_lossy(key),
                    String::from_utf8_lossy(value),
                    seen.map(|v| String::from_utf8_lossy(&v).into_owned()),
                    i + 1
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
