//! Deterministic simulation: a whole cluster of real members — store loop, the `raft` crate,
//! apply and MVCC, over in-memory storage with a disk's failure modes — run in one thread from
//! one `u64` seed, with time from a manual clock and every message through a simulated network
//! that delays, drops, duplicates, reorders and partitions. Members crash (losing whatever
//! their disks had not synced), disk writes fail, and members restart from what their disks
//! kept. The same seed gives the same run, step for step, so a failure replays exactly:
//! `SIM_SEED=<n> cargo test -p sim`.
//!
//! A member's store loop and apply task are stepped separately, in an order the seed picks
//! (see `Pace`): for stretches of time apply runs only now and then, or not at all, so it
//! trails the store loop by many iterations (entries committed but not applied, reads
//! waiting for apply, a leader asked for a snapshot while its apply is behind), or the store
//! loop is the slow one. Now and then a member crashes in the middle of a snapshot install:
//! after its state machine has durably taken the snapshot, on the log write that records it,
//! which either reaches the disk or not; it must restart with the snapshot installed.
//!
//! After every step the run checks election safety, state machine safety (every member's log
//! holds the same entries up to its commit index), log matching (one entry per index and term
//! on every member) and leader completeness (a new leader holds every committed entry); at the end, after healing, liveness (a new write commits),
//! agreement (every member's history hashes the same) and durability (every acknowledged
//! write is there, on every member, at its revision).
//!
//! Logs are compacted often, so members that were down or cut off catch up through snapshots.
//! Not simulated yet: membership changes.

mod checks;
mod clients;
mod net;

use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use linearizability::checker::{self, Verdict};
use mvcc::{Command, CommandResponse, PutRequest, RangeRequest};
use node::{Applied, Clock, Driver, Node, NodeConfig, NodeError, NodeId, ShardId};
use storage::faulty::{Faulty, FaultyKvStore, FaultyLogStore};
use storage::LogStore as _;
use tokio::sync::oneshot;

pub use checks::{ElectionSafety, LogChecks};
pub use clients::{Clients, Incarnation};
pub use net::{Delivery, Net, Rng};

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
    /// Whether members crash now and then (sometimes all at once), losing what their disks
    /// had not synced, and restart.
    pub crashes: bool,
    /// Whether disk writes fail now and then: the member stops and restarts from its disk.
    pub disk_faults: bool,
    /// Applied entries between two log compactions (`--snapshot-count`); entries kept behind
    /// the compaction point are a quarter of it.
    pub snapshot_count: u64,
    /// The Raft log's disk acknowledges syncs without making anything durable, so members
    /// acknowledge appends and votes before persisting them. A broken configuration: a run
    /// with it and crashes must fail its checks.
    pub log_ignores_sync: bool,
    /// Clients running register operations (read, put, compare-and-set) whose history must
    /// be linearizable.
    pub register_clients: usize,
    /// Search steps the linearizability checker may spend per key; running out fails the run.
    pub checker_budget: u64,
    /// Register reads are served from the member's local state without ReadIndex. A broken
    /// configuration: the linearizability check must catch it.
    pub stale_reads: bool,
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
            crashes: true,
            disk_faults: true,
            // Small: a member down or cut off for a few hundred milliseconds catches up
            // through a snapshot, so installs (and crashes in their middle) are frequent.
            snapshot_count: 100,
            log_ignores_sync: false,
            register_clients: 4,
            checker_budget: 5_000_000,
            stale_reads: false,
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
    /// Member crashes (each followed by a restart).
    pub crashes: u64,
    /// Members stopped by a failed disk write.
    pub disk_failures: u64,
    /// Log entries known committed.
    pub committed: u64,
    /// Snapshots delivered to and installed by members.
    pub snapshots: u64,
    /// Register operations checked for linearizability, and how many of them had an unknown
    /// outcome.
    pub register_ops: (usize, usize),
    /// Snapshots installed in members' state machines.
    pub installs: u64,
    /// Apply steps that ran while work had waited for them through two or more store-loop
    /// iterations, and the most iterations any work waited.
    pub lagging_applies: (u64, u64),
    /// Crashes in the middle of a snapshot install (after the state machine took it, on the
    /// log write that records it): the write was lost, or it reached the disk.
    pub install_crashes: (u64, u64),
}

/// How a member's store loop and apply task are scheduled for a while: the simulation's
/// stand-in for the OS scheduler and for slow disks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pace {
    /// Both run every millisecond, in a random order.
    Even,
    /// Apply runs in one millisecond out of this many (a slow state-machine disk).
    ApplySlow(u64),
    /// Apply does not run (a long state-machine write or compaction).
    ApplyStalled,
    /// The store loop runs in half the milliseconds (a slow log disk); apply in every one.
    StoreSlow,
}

impl Pace {
    /// A new pace and how long it lasts.
    fn draw(rng: &mut Rng) -> (Pace, Duration) {
        match rng.below(8) {
            0..=3 => (Pace::Even, rng.millis(50, 500)),
            4 | 5 => (Pace::ApplySlow(2 + rng.below(7)), rng.millis(20, 300)),
            6 => (Pace::ApplyStalled, rng.millis(5, 150)),
            _ => (Pace::StoreSlow, rng.millis(10, 100)),
        }
    }
}

/// A write a client is waiting on.
struct Pending {
    key: Vec<u8>,
    value: Vec<u8>,
    answer: oneshot::Receiver<Result<Applied, NodeError>>,
}

/// One member: its disks, which outlive its crashes, and the running node if it is up.
struct Member {
    id: u64,
    log: Arc<FaultyLogStore>,
    kv: Arc<FaultyKvStore>,
    running: Option<(Node, Driver)>,
    restart_at: Option<Duration>,
    /// Times started.
    generation: u64,
    /// How its two loops are scheduled, until when.
    pace: (Pace, Duration),
    /// Set when a crash planned for the middle of a snapshot install is under way: the state
    /// machine has taken the snapshot and the log's next write (the one that records it)
    /// fails.
    install_fault: Arc<AtomicBool>,
    /// The index of a snapshot it had installed in its state machine when it crashed in the
    /// middle of the install: it must restart at least there.
    installed: Option<u64>,
}

/// A cluster being simulated.
struct Sim {
    seed: u64,
    config: SimConfig,
    clock: Clock,
    net: Net,
    dir: PathBuf,
    members: Vec<Member>,
    rng: Rng,
    trace: DefaultHasher,
    safety: ElectionSafety,
    logs: LogChecks,
    newest_term: u64,
    crashes: u64,
    disk_failures: u64,
    snapshots: u64,
    /// Picks the order of every member's steps; apart from the faults' randomness, so that
    /// the fault schedule does not depend on it.
    schedule: Rng,
    lagging_applies: u64,
    max_apply_lag: u64,
    install_crashes: (u64, u64),
}

impl Sim {
    fn new(seed: u64, config: &SimConfig) -> Result<Self, String> {
        let mut sim = Sim {
            seed,
            config: config.clone(),
            clock: Clock::manual(),
            net: Net::new(seed, config),
            dir: std::env::temp_dir().join(format!("concord-sim-{}-{seed}", std::process::id())),
            members: Vec::new(),
            rng: Rng::new(seed ^ 0x0000_636c_6965_6e74),
            trace: DefaultHasher::new(),
            safety: ElectionSafety::default(),
            logs: LogChecks::default(),
            newest_term: 0,
            crashes: 0,
            disk_failures: 0,
            snapshots: 0,
            schedule: Rng::new(seed ^ 0x7363_6865_6475_6c65),
            lagging_applies: 0,
            max_apply_lag: 0,
            install_crashes: (0, 0),
        };
        for id in 1..=config.members as u64 {
            let log = Arc::new(FaultyLogStore::new());
            let kv = Arc::new(FaultyKvStore::new());
            log.set_ignore_sync(config.log_ignores_sync);
            sim.members.push(Member {
                id,
                log,
                kv,
                running: None,
                restart_at: None,
                generation: 0,
                pace: (Pace::Even, Duration::ZERO),
                install_fault: Arc::new(AtomicBool::new(false)),
                installed: None,
            });
        }
        for i in 0..sim.members.len() {
            sim.start(i)?;
        }
        Ok(sim)
    }

    fn now(&self) -> Duration {
        self.clock.elapsed()
    }

    /// Starts member `i` on what its disks hold.
    fn start(&mut self, i: usize) -> Result<(), String> {
        let id = self.members[i].id;
        let config = NodeConfig {
            node_id: NodeId(id),
            cluster_id: 1,
            initial_members: (1..=self.members.len() as u64)
                .map(|id| node::Member {
                    id,
                    name: format!("m{id}"),
                    peer_urls: vec![format!("sim://m{id}")],
                    ..Default::default()
                })
                .collect(),
            tick_interval: Duration::from_millis(10),
            election_ticks: 10,
            heartbeat_ticks: 1,
            // Small, so that logs are compacted and members that were down or cut off for a
            // while catch up through a snapshot.
            snapshot_count: self.config.snapshot_count,
            snapshot_catchup_entries: self.config.snapshot_count / 4,
            request_timeout: Duration::from_secs(5),
            max_pending_proposals: 10_000,
            seed: self.seed ^ id.wrapping_mul(0x9e37_79b9_7f4a_7c15),
            snapshot_dir: self.dir.join(id.to_string()),
            snapshot_keys: None,
            clock: self.clock.clone(),
            watch: node::WatchConfig::default(),
            watch_progress_notify_interval: node::DEFAULT_WATCH_PROGRESS_NOTIFY_INTERVAL,
            lease_checkpoint_interval: node::DEFAULT_LEASE_CHECKPOINT_INTERVAL,
        };
        let member = &mut self.members[i];
        let started = match Node::start_driven(
            config,
            member.log.clone(),
            member.kv.clone(),
            self.net.transport(id),
        ) {
            Ok(started) => started,
            // A planned disk failure struck the start's own writes (recovery records what
            // it repairs): the member stops, as it must; it gets another power cycle.
            Err(_) if member.log.has_failed() || member.kv.has_failed() => {
                self.disk_failures += 1;
                self.crash(i, Duration::from_millis(100));
                return Ok(());
            }
            Err(e) => {
                return Err(format!(
                    "at {:?}: start member {id}: {e}",
                    self.clock.elapsed()
                ))
            }
        };
        if let Some(index) = member.installed.take() {
            let applied = started.0.applied_index();
            if applied < index {
                return Err(format!(
                    "at {:?}: snapshot install: member {id} restarted at applied index \
                     {applied}, before the snapshot at {index} its state machine had taken",
                    self.clock.elapsed()
                ));
            }
        }
        member.running = Some(started);
        member.restart_at = None;
        member.generation += 1;
        self.logs.restarted(id);
        Ok(())
    }

    /// Power cut on member `i`: its disks keep what they synced and some prefix of what
    /// followed. It restarts after `down`.
    fn crash(&mut self, i: usize, down: Duration) {
        let unsynced = self.members[i].log.unsynced_writes() as u64;
        let keep_log = self.rng.below(unsynced + 1) as usize;
        self.crash_keeping(i, down, keep_log);
    }

    /// [`Sim::crash`], keeping the first `keep_log` unsynced writes of the log.
    fn crash_keeping(&mut self, i: usize, down: Duration, keep_log: usize) {
        let now = self.now();
        let member = &mut self.members[i];
        if let Some((node, _)) = member.running.take() {
            node.shutdown();
        }
        member.install_fault.store(false, Ordering::Release);
        let keep_kv = self.rng.below(member.kv.unsynced_writes() as u64 + 1) as usize;
        member.log.crash(keep_log);
        member.kv.crash(keep_kv);
        member.restart_at = Some(now + down);
        (member.id, now, keep_log, keep_kv).hash(&mut self.trace);
        self.crashes += 1;
    }

    /// The faults of one step, before the settle period.
    fn inject_faults(&mut self, partition_heal_at: &mut Option<Duration>) {
        let now = self.now();
        let n = self.members.len() as u64;
        if self.config.partitions {
            match *partition_heal_at {
                None if self.rng.below(1000) < 2 => {
                    let isolated = 1 + self.rng.below(n);
                    self.net.isolate(isolated);
                    *partition_heal_at =
                        Some(now + Duration::from_millis(200 + self.rng.below(1500)));
                    isolated.hash(&mut self.trace);
                }
                Some(t) if now >= t => {
                    self.net.heal();
                    *partition_heal_at = None;
                }
                _ => {}
            }
        }
        if self.config.crashes && self.rng.below(1000) < 1 {
            let down = Duration::from_millis(10 + self.rng.below(1500));
            if self.rng.below(8) == 0 {
                // The whole cluster loses power at once.
                for i in 0..self.members.len() {
                    if self.members[i].running.is_some() {
                        self.crash(i, down);
                    }
                }
            } else {
                let i = self.rng.below(n) as usize;
                if self.members[i].running.is_some() {
                    self.crash(i, down);
                }
            }
        }
        if self.config.disk_faults && self.rng.below(2000) < 1 {
            let member = &self.members[self.rng.below(n) as usize];
            let after = 1 + self.rng.below(100);
            if self.rng.below(2) == 0 {
                member.log.fail_write_after(after);
            } else {
                member.kv.fail_write_after(after);
            }
        }
    }

    /// Ends the faults: heals the network, cancels planned disk failures, restarts everyone.
    fn heal(&mut self) -> Result<(), String> {
        self.net.heal();
        for member in &self.members {
            member.log.cancel_failure();
            member.kv.cancel_failure();
        }
        for i in 0..self.members.len() {
            if self.members[i].running.is_none() {
                self.start(i)?;
            }
        }
        Ok(())
    }

    /// Plans a crash of member `i` in the middle of its next snapshot install: right after
    /// its state machine has durably taken the snapshot, the log write that records it fails
    /// (the member stops, and the simulation cuts its power).
    fn plan_install_crash(&mut self, i: usize) {
        let member = &self.members[i];
        let log = member.log.clone();
        let fired = member.install_fault.clone();
        member.kv.after_next_restore(Box::new(move || {
            log.fail_write_after(1);
            fired.store(true, Ordering::Release);
        }));
    }

    /// Delivers due messages, steps every running member, restarts those due. `faults`:
    /// whether faults are still injected.
    fn step_members(&mut self, faults: bool) -> Result<(), String> {
        let now = self.now();
        for i in 0..self.members.len() {
            if self.members[i].running.is_none()
                && self.members[i].restart_at.is_some_and(|t| now >= t)
            {
                self.start(i)?;
            }
        }
        for (to, from, what) in self.net.due(now) {
            let receiver = self.members[(to - 1) as usize].running.as_ref();
            let receiver = receiver.map(|(node, _)| node.clone());
            let sender = self.members[(from - 1) as usize].running.as_ref();
            let sender = sender.map(|(node, _)| node.clone());
            match what {
                Delivery::Messages(envelopes) => {
                    if let Some(node) = receiver {
                        node.step(NodeId(from), envelopes);
                    }
                }
                Delivery::Snapshot {
                    shard,
                    message,
                    chunks,
                } => {
                    let delivered = receiver.is_some_and(|node| {
                        receive_snapshot(&node, from, shard, &message, chunks).is_ok()
                    });
                    if delivered {
                        self.snapshots += 1;
                        (to, from, "snapshot").hash(&mut self.trace);
                        if faults && self.config.crashes && self.rng.below(3) == 0 {
                            self.plan_install_crash((to - 1) as usize);
                        }
                    }
                    if let Some(node) = sender {
                        node.report_snapshot(NodeId(to), shard, delivered);
                    }
                }
                // Here `to` sent the snapshot and `from` did not get it.
                Delivery::SnapshotFailed { shard } => {
                    if let Some(node) = receiver {
                        node.report_snapshot(NodeId(from), shard, false);
                    }
                }
            }
        }
        for i in 0..self.members.len() {
            if self.members[i].running.is_none() {
                continue;
            }
            let (apply_first, store, apply) = self.plan_steps(i, now);
            let member = &mut self.members[i];
            let (_, driver) = member.running.as_mut().expect("checked above");
            // A panic is a member stopping on a broken invariant: report it as a failure of
            // the run, with the member and the time, rather than unwind through the sim.
            let stepped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let mut lag = None;
                let mut run_apply = |driver: &mut Driver| {
                    if driver.apply_pending() {
                        lag = Some(driver.apply_lag());
                    }
                    driver.step_apply()
                };
                let stepped = (!apply || !apply_first || run_apply(driver))
                    && (!store || driver.step_store())
                    && (!apply || apply_first || run_apply(driver));
                (stepped, lag)
            }));
            match stepped {
                Ok((stepped, lag)) => {
                    if let Some(lag) = lag {
                        self.max_apply_lag = self.max_apply_lag.max(lag);
                        if lag >= 2 {
                            self.lagging_applies += 1;
                        }
                    }
                    if stepped {
                        continue;
                    }
                }
                Err(panic) => {
                    let message = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_string()))
                        .unwrap_or_default();
                    return Err(format!(
                        "at {now:?}: member {} panicked: {message}",
                        member.id
                    ));
                }
            }
            let down = Duration::from_millis(10 + self.rng.below(500));
            if member.install_fault.load(Ordering::Acquire) && member.log.has_failed() {
                // The planned crash in the middle of a snapshot install: the state machine
                // holds the snapshot; the log write that records it reached the disk or not.
                let installed = member
                    .running
                    .as_ref()
                    .map(|(node, _)| node.applied_index());
                let unsynced = member.log.unsynced_writes();
                let recorded = self.rng.below(2) == 0;
                let keep = if recorded {
                    unsynced
                } else {
                    self.rng.below(unsynced.max(1) as u64) as usize
                };
                self.crash_keeping(i, down, keep);
                self.members[i].installed = installed;
                let log = &self.members[i].log;
                let holds = installed.is_some_and(|index| log.first_index(ShardId(1)) > index);
                if holds {
                    self.install_crashes.1 += 1;
                } else {
                    self.install_crashes.0 += 1;
                }
            } else if member.log.has_failed() || member.kv.has_failed() {
                // The injected disk failure stopped it, as it must: restart from the disk.
                self.disk_failures += 1;
                self.crash(i, down);
            } else {
                return Err(format!("at {now:?}: member {} stopped", member.id));
            }
        }
        Ok(())
    }

    /// Which of member `i`'s steps run in this millisecond, by its pace: `(apply first,
    /// store loop, apply)`.
    fn plan_steps(&mut self, i: usize, now: Duration) -> (bool, bool, bool) {
        let rng = &mut self.schedule;
        let member = &mut self.members[i];
        if now >= member.pace.1 {
            let (pace, lasts) = Pace::draw(rng);
            member.pace = (pace, now + lasts);
        }
        let apply_first = rng.below(2) == 0;
        match member.pace.0 {
            Pace::Even => (apply_first, true, true),
            Pace::ApplySlow(n) => (apply_first, true, rng.below(n) == 0),
            Pace::ApplyStalled => (false, true, false),
            Pace::StoreSlow => (apply_first, rng.below(2) == 0, true),
        }
    }

    /// The checks after every step.
    fn check_step(&mut self) -> Result<(), String> {
        let now = self.now();
        let at = |what: String| format!("at {now:?}: {what}");
        for member in &self.members {
            let Some((node, _)) = &member.running else {
                continue;
            };
            let status = node.status();
            self.newest_term = self.newest_term.max(status.term);
            if status.leader == member.id {
                let first_time = self.safety.leaders().get(&status.term) != Some(&member.id);
                self.safety.observe(status.term, member.id).map_err(at)?;
                if first_time {
                    (status.term, member.id).hash(&mut self.trace);
                    self.logs
                        .new_leader(
                            member.id,
                            status.term,
                            self.newest_term,
                            member.log.as_ref(),
                        )
                        .map_err(at)?;
                }
            }
            self.logs
                .member_committed(member.id, member.log.as_ref(), status.commit_index)
                .map_err(at)?;
            self.logs
                .member_tail(member.id, member.log.as_ref(), status.commit_index)
                .map_err(at)?;
        }
        Ok(())
    }

    /// A running member, chosen at random.
    fn any_running(&mut self) -> Option<Node> {
        let mut running = self.running();
        if running.is_empty() {
            return None;
        }
        let i = self.rng.below(running.len() as u64) as usize;
        Some(running.swap_remove(i).0)
    }

    /// Each member's Raft position, for failure messages.
    fn describe(&self) -> String {
        let mut out = Vec::new();
        for member in &self.members {
            match &member.running {
                Some((node, _)) => {
                    let s = node.status();
                    out.push(format!(
                        "{}: term {} leader {} last {} commit {} applied {}",
                        member.id, s.term, s.leader, s.raft_index, s.commit_index, s.applied_index
                    ));
                }
                None => out.push(format!("{}: down", member.id)),
            }
        }
        out.join("; ")
    }

    /// The running members, for clients.
    fn running(&self) -> Vec<(Node, Incarnation)> {
        let mut out = Vec::new();
        for (i, member) in self.members.iter().enumerate() {
            if let Some((node, _)) = &member.running {
                let at = Incarnation {
                    member: i,
                    generation: member.generation,
                };
                out.push((node.clone(), at));
            }
        }
        out
    }

    /// Whether `at` is still the running incarnation of its member.
    fn is_current(&self, at: Incarnation) -> bool {
        let member = &self.members[at.member];
        member.running.is_some() && member.generation == at.generation
    }

    fn nodes(&self) -> Vec<Node> {
        self.running().into_iter().map(|(node, _)| node).collect()
    }

    fn shutdown(&mut self) {
        for member in &mut self.members {
            if let Some((node, _)) = member.running.take() {
                node.shutdown();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Hands a whole snapshot to `node`, as the peer service does chunk by chunk.
fn receive_snapshot(
    node: &Node,
    from: u64,
    shard: ShardId,
    message: &[u8],
    chunks: Result<Vec<Vec<u8>>, String>,
) -> Result<(), String> {
    let chunks = chunks?;
    let mut sink = node
        .receive_snapshot(NodeId(from), shard, message)
        .map_err(|e| e.to_string())?;
    for chunk in &chunks {
        sink.write_chunk(chunk).map_err(|e| e.to_string())?;
    }
    sink.finish().map_err(|e| e.to_string())
}

fn put(key: &[u8], value: &[u8]) -> Command {
    Command::Put(PutRequest {
        key: key.to_vec(),
        value: value.to_vec(),
        ..Default::default()
    })
}

/// How long the liveness probe waits before it asks again.
const PROBE_RETRY: Duration = Duration::from_secs(1);

/// Runs the simulation of `seed`.
///
/// # Errors
/// The first property that failed, with the virtual time it failed at.
pub fn run(seed: u64, config: &SimConfig) -> Result<Report, String> {
    let mut sim = Sim::new(seed, config)?;
    let mut pending: Vec<Pending> = Vec::new();
    let mut acknowledged: Vec<(Vec<u8>, Vec<u8>, i64)> = Vec::new();
    let mut writes = 0u64;
    let mut registers = Clients::new(
        config.register_clients,
        seed ^ 0x7265_6769_7374_6572,
        config.stale_reads,
    );
    let step = Duration::from_millis(1);
    let end = config.duration + config.settle;
    let mut partition_heal_at = None;
    let mut healed = false;
    let mut probes: Vec<(Duration, oneshot::Receiver<Result<Applied, NodeError>>)> = Vec::new();
    while sim.now() < end {
        sim.clock.advance(step);
        let now = sim.now();
        if now < config.duration {
            sim.inject_faults(&mut partition_heal_at);
        } else if !healed {
            sim.heal()?;
            healed = true;
        }
        sim.step_members(now < config.duration)?;
        sim.check_step()?;
        // Clients: a write every few milliseconds, to a random member, while faults last.
        if now < config.duration && sim.rng.below(5) == 0 {
            writes += 1;
            let key = format!("k{}", sim.rng.below(8)).into_bytes();
            let value = format!("{seed}-{writes}").into_bytes();
            if let Some(node) = sim.any_running() {
                if let Ok((_, answer)) = node.submit(&put(&key, &value)) {
                    pending.push(Pending { key, value, answer });
                }
            }
        }
        let mut still = Vec::new();
        for mut write in pending.drain(..) {
            match write.answer.try_recv() {
                Ok(Ok(applied)) => {
                    if let Ok(CommandResponse::Put(put)) = applied.result {
                        (&write.key, &write.value, put.revision).hash(&mut sim.trace);
                        acknowledged.push((write.key, write.value, put.revision));
                    }
                }
                Ok(Err(_)) | Err(oneshot::error::TryRecvError::Closed) => {}
                Err(oneshot::error::TryRecvError::Empty) => still.push(write),
            }
        }
        pending = still;
        if now < config.duration {
            let running = sim.running();
            registers.start(now, &running);
        }
        registers.poll(now, &|at| sim.is_current(at));
        // Liveness: once healed, one more write must commit within the settle period. Like a
        // client whose request timed out, the probe asks again every second: a proposal
        // forwarded to a member that no longer leads is dropped, as in etcd.
        if healed && probes.last().is_none_or(|(at, _)| now >= *at + PROBE_RETRY) {
            let node = sim.members[0].running.as_ref().expect("healed").0.clone();
            let (_, answer) = node
                .submit(&put(b"liveness", b"probe"))
                .map_err(|e| format!("at {now:?}: liveness probe refused: {e}"))?;
            probes.push((now, answer));
        }
        let mut live = false;
        for (_, answer) in &mut probes {
            match answer.try_recv() {
                Ok(Ok(applied)) if applied.result.is_ok() => live = true,
                Ok(other) => return Err(format!("at {now:?}: liveness probe failed: {other:?}")),
                Err(oneshot::error::TryRecvError::Empty) => {}
                Err(e) => return Err(format!("at {now:?}: liveness probe lost: {e}")),
            }
        }
        if live {
            break;
        }
    }
    if sim.now() >= end {
        return Err(format!(
            "liveness: no write committed within {:?} after the heal; members: {}",
            config.settle,
            sim.describe()
        ));
    }
    // Let every member apply what is committed: quiet steps until they agree, within a bound.
    let converge_by = sim.now() + config.settle;
    loop {
        sim.clock.advance(step);
        sim.step_members(false)?;
        sim.check_step()?;
        let statuses: Vec<_> = sim.nodes().iter().map(Node::status).collect();
        let commit = statuses.iter().map(|s| s.commit_index).max().unwrap_or(0);
        if statuses.iter().all(|s| s.applied_index == commit) {
            break;
        }
        if sim.now() >= converge_by {
            return Err(format!(
                "liveness: members did not all apply the commit index {commit} within {:?}: {}",
                config.settle,
                sim.describe()
            ));
        }
    }
    let nodes = sim.nodes();
    check_agreement(&nodes, &acknowledged)?;
    registers.abandon(sim.now());
    let history = registers.history();
    match checker::check(history, config.checker_budget) {
        Verdict::Linearizable => {}
        Verdict::Violation(v) => {
            return Err(format!(
                "linearizability: the clients' operations on {} have no linearization: {v:?}\n{}",
                v.key,
                history.key_timeline(&v.key)
            ))
        }
        Verdict::Unknown { key, steps } => {
            return Err(format!(
                "linearizability: the checker gave up on {key} after {steps} steps"
            ))
        }
    }
    if let Some(anomaly) = linearizability::revisions::verify(history).first() {
        return Err(format!("linearizability: revision order: {anomaly}"));
    }
    let delivered = sim.net.delivered();
    delivered.hash(&mut sim.trace);
    history.to_json().hash(&mut sim.trace);
    for node in &nodes {
        node.status().revision.hash(&mut sim.trace);
    }
    Ok(Report {
        trace: sim.trace.finish(),
        acknowledged: acknowledged.len(),
        leaders: sim.safety.leaders().clone(),
        delivered,
        crashes: sim.crashes,
        disk_failures: sim.disk_failures,
        committed: sim.logs.committed_len(),
        snapshots: sim.snapshots,
        installs: sim.members.iter().map(|m| m.kv.restores()).sum(),
        lagging_applies: (sim.lagging_applies, sim.max_apply_lag),
        install_crashes: sim.install_crashes,
        register_ops: (
            history.ops().len(),
            history
                .ops()
                .iter()
                .filter(|op| op.outcome.is_unknown())
                .count(),
        ),
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
