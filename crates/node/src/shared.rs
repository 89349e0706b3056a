//! What the handle, the store loop, the apply task and the lessor share, in parts that each
//! have one writer and say who it is. Their fields are private to this module: every other
//! module goes through the methods, which keep each part's rules (bounds, ordering of
//! publications) in one place.
//!
//! - [`Waiters`]: proposals and reads waiting for an answer. The handle registers them
//!   (bounded); apply answers proposals as it applies them; the store loop answers reads.
//! - [`RaftView`]: what the store loop publishes of its replicas (leader, term, log
//!   positions, ticks).
//! - [`Progress`]: what apply publishes (applied and durable indexes).
//! - [`Lifecycle`]: whether the member runs, and the failure that stopped it.
//! - [`SnapshotFiles`]: snapshot views waiting to be streamed out, and spooled snapshots
//!   waiting to be installed.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::thread::JoinHandle;

use consensus::{SnapshotMetadata, StateRole};
use parking_lot::Mutex;
use storage::{KvSnapshot, ShardId};
use tokio::sync::{oneshot, watch};

use crate::leases::Lessor;
use crate::snapshot::{IncomingFiles, OutgoingViews};
use crate::state::StateReader;
use crate::store::StoreMsg;
use crate::{Applied, Member, NodeConfig, NodeError, PeerProgress, Transport};

/// Answers one linearizable read waiter with the read index.
pub(crate) type ReadWaiter = oneshot::Sender<Result<u64, NodeError>>;
type ProposalWaiter = oneshot::Sender<Result<Applied, NodeError>>;

/// State shared by the handle, the store loop, the apply task and the lessor.
pub(crate) struct Shared {
    pub(crate) config: NodeConfig,
    /// The store loop's inbox.
    pub(crate) inbox: SyncSender<StoreMsg>,
    pub(crate) transport: Arc<dyn Transport>,
    /// Reads of the state machine (ranges, leases, hashes).
    pub(crate) state: Arc<dyn StateReader>,
    pub(crate) waiters: Waiters,
    pub(crate) raft: RaftView,
    pub(crate) progress: Progress,
    pub(crate) life: Lifecycle,
    pub(crate) snapshots: SnapshotFiles,
    /// The watchers of this member; the apply task publishes to it.
    pub(crate) watch_hub: Arc<::watch::Hub>,
    /// When this member's leases expire.
    pub(crate) lessor: Lessor,
}

impl Shared {
    pub(crate) fn is_stopped(&self) -> bool {
        self.life.is_stopped()
    }

    /// Records a fatal error: the member stops serving, and every waiter is answered
    /// `Stopped`.
    pub(crate) fn fail(&self, error: String) {
        self.life.fail(error);
        self.waiters.clear();
    }
}

/// Proposals and reads waiting for an answer, and the request id counter.
pub(crate) struct Waiters {
    /// Proposals may wait at most, and as many reads.
    max: usize,
    /// Proposals of this node waiting to be applied, by request id.
    proposals: Mutex<HashMap<u64, ProposalWaiter>>,
    /// Reads waiting for the next ReadIndex round.
    reads: Mutex<Vec<ReadWaiter>>,
    /// Reads in ReadIndex rounds not answered yet (published by the store loop).
    reads_in_flight: AtomicUsize,
    /// Request ids, ReadIndex contexts and generated lease ids come from here; it starts
    /// past every value of the member's previous runs (see `Node::build`).
    next_id: AtomicU64,
}

impl Waiters {
    pub(crate) fn new(max: usize, first_id: u64) -> Self {
        Self {
            max,
            proposals: Mutex::new(HashMap::new()),
            reads: Mutex::new(Vec::new()),
            reads_in_flight: AtomicUsize::new(0),
            next_id: AtomicU64::new(first_id),
        }
    }

    /// A number this member never handed out before, in this run or an earlier one.
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers a proposal; returns its request id and where its result will arrive.
    ///
    /// # Errors
    /// `TooManyRequests` when `max` proposals wait already.
    pub(crate) fn add_proposal(
        &self,
    ) -> Result<(u64, oneshot::Receiver<Result<Applied, NodeError>>), NodeError> {
        let request_id = self.next_id();
        let (tx, rx) = oneshot::channel();
        let mut proposals = self.proposals.lock();
        if proposals.len() >= self.max {
            return Err(NodeError::TooManyRequests);
        }
        proposals.insert(request_id, tx);
        Ok((request_id, rx))
    }

    /// Answers the proposal `request_id`, if it still waits.
    pub(crate) fn finish_proposal(&self, request_id: u64, result: Result<Applied, NodeError>) {
        if let Some(waiter) = self.proposals.lock().remove(&request_id) {
            let _ = waiter.send(result);
        }
    }

    /// Answers the proposals of one applied batch, under one lock.
    pub(crate) fn finish_applied(&self, answers: Vec<(u64, Applied)>) {
        if answers.is_empty() {
            return;
        }
        let mut proposals = self.proposals.lock();
        for (request_id, applied) in answers {
            if let Some(waiter) = proposals.remove(&request_id) {
                let _ = waiter.send(Ok(applied));
            }
        }
    }

    /// Stops waiting for a proposal (its caller gave up; it may still be applied).
    pub(crate) fn forget_proposal(&self, request_id: u64) {
        self.proposals.lock().remove(&request_id);
    }

    /// Whether someone still waits for the proposal `request_id`.
    pub(crate) fn proposal_waiting(&self, request_id: u64) -> bool {
        self.proposals
            .lock()
            .get(&request_id)
            .is_some_and(|waiter| !waiter.is_closed())
    }

    /// Registers a read for the next ReadIndex round.
    ///
    /// # Errors
    /// `TooManyRequests` when `max` reads wait already, for the next round or in rounds
    /// not answered yet.
    pub(crate) fn add_read(&self, waiter: ReadWaiter) -> Result<(), NodeError> {
        let mut reads = self.reads.lock();
        let in_flight = self.reads_in_flight.load(Ordering::Acquire);
        if reads.len() + in_flight >= self.max {
            return Err(NodeError::TooManyRequests);
        }
        reads.push(waiter);
        Ok(())
    }

    /// The reads registered since the last call: they join the next round.
    pub(crate) fn take_reads(&self) -> Vec<ReadWaiter> {
        std::mem::take(&mut *self.reads.lock())
    }

    /// Records how many reads wait in rounds sent and not answered yet.
    pub(crate) fn set_reads_in_flight(&self, count: usize) {
        self.reads_in_flight.store(count, Ordering::Release);
    }

    /// Drops every waiter: their callers see `Stopped`.
    pub(crate) fn clear(&self) {
        self.proposals.lock().clear();
        self.reads.lock().clear();
    }

    #[cfg(test)]
    pub(crate) fn fill_proposals(&self, count: usize) {
        let mut proposals = self.proposals.lock();
        for i in 0..count {
            let (tx, _rx) = oneshot::channel();
            proposals.insert(u64::MAX - i as u64, tx);
        }
    }
}

/// What the store loop publishes of its replicas' Raft state. Written by the store loop
/// only.
pub(crate) struct RaftView {
    leader: AtomicU64,
    term: AtomicU64,
    commit_index: AtomicU64,
    last_index: AtomicU64,
    ticks: AtomicU64,
    /// The leader's view of every member's replication, refreshed every tick; `None` while
    /// this member does not lead.
    progress: Mutex<Option<Vec<PeerProgress>>>,
}

impl RaftView {
    pub(crate) fn new(last_index: u64) -> Self {
        Self {
            leader: AtomicU64::new(0),
            term: AtomicU64::new(0),
            commit_index: AtomicU64::new(0),
            last_index: AtomicU64::new(last_index),
            ticks: AtomicU64::new(0),
            progress: Mutex::new(None),
        }
    }

    pub(crate) fn progress(&self) -> Option<Vec<PeerProgress>> {
        self.progress.lock().clone()
    }

    pub(crate) fn observe_progress(&self, progress: Option<Vec<PeerProgress>>) {
        *self.progress.lock() = progress;
    }

    /// The leader this member knows of, 0 if none.
    pub(crate) fn leader(&self) -> u64 {
        self.leader.load(Ordering::Acquire)
    }

    pub(crate) fn term(&self) -> u64 {
        self.term.load(Ordering::Acquire)
    }

    pub(crate) fn commit_index(&self) -> u64 {
        self.commit_index.load(Ordering::Acquire)
    }

    pub(crate) fn last_index(&self) -> u64 {
        self.last_index.load(Ordering::Acquire)
    }

    /// Ticks the store loop has taken.
    pub(crate) fn ticks(&self) -> u64 {
        self.ticks.load(Ordering::Acquire)
    }

    pub(crate) fn observe_role(&self, shard: ShardId, leader: u64, role: StateRole) {
        let previous = self.leader.swap(leader, Ordering::AcqRel);
        if previous != leader {
            tracing::info!(shard_id = shard.0, leader_id = leader, role = ?role, "leader changed");
        }
    }

    pub(crate) fn observe_log(&self, term: u64, commit_index: u64, last_index: u64) {
        self.term.store(term, Ordering::Release);
        self.commit_index.store(commit_index, Ordering::Release);
        self.last_index.store(last_index, Ordering::Release);
    }

    pub(crate) fn tick(&self) {
        self.ticks.fetch_add(1, Ordering::AcqRel);
    }
}

/// How far the state machine has applied, and made durable. Written by apply only, so
/// that nobody waits on the state machine to learn it.
pub(crate) struct Progress {
    applied: AtomicU64,
    /// The applied index the state machine has made durable: the log is never compacted
    /// past it.
    durable: AtomicU64,
    applied_tx: watch::Sender<u64>,
    /// The cluster's members as of the applied index.
    members: watch::Sender<Vec<Member>>,
}

impl Progress {
    pub(crate) fn new(durable: u64, members: Vec<Member>) -> Self {
        let (applied_tx, _) = watch::channel(durable);
        Self {
            applied: AtomicU64::new(durable),
            durable: AtomicU64::new(durable),
            applied_tx,
            members: watch::channel(members).0,
        }
    }

    pub(crate) fn members(&self) -> Vec<Member> {
        self.members.borrow().clone()
    }

    /// Whether `id` is a member.
    pub(crate) fn is_member(&self, id: u64) -> bool {
        self.members.borrow().iter().any(|m| m.id == id)
    }

    /// Whether member `id` is a learner (false if it is not a member).
    pub(crate) fn is_learner(&self, id: u64) -> bool {
        self.members
            .borrow()
            .iter()
            .any(|m| m.id == id && m.is_learner)
    }

    pub(crate) fn watch_members(&self) -> watch::Receiver<Vec<Member>> {
        self.members.subscribe()
    }

    /// Records the members after a membership change or a snapshot restore.
    pub(crate) fn publish_members(&self, members: Vec<Member>) {
        self.members.send_if_modified(|current| {
            let changed = *current != members;
            *current = members;
            changed
        });
    }

    pub(crate) fn applied(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }

    pub(crate) fn durable(&self) -> u64 {
        self.durable.load(Ordering::Acquire)
    }

    pub(crate) fn publish_applied(&self, index: u64) {
        self.applied.store(index, Ordering::Release);
        self.applied_tx.send_replace(index);
    }

    /// Records that the state machine made everything up to `index` durable.
    pub(crate) fn publish_durable(&self, index: u64) {
        self.durable.fetch_max(index, Ordering::AcqRel);
    }

    /// After a snapshot restore, which replaces the state machine (durably) and may move
    /// nowhere but to the snapshot's index.
    pub(crate) fn restored(&self, index: u64) {
        self.durable.store(index, Ordering::Release);
        self.publish_applied(index);
    }

    /// Follows the applied index: for waiting until it reaches a read index.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.applied_tx.subscribe()
    }
}

/// Whether the member still runs, its threads, and the failure that stopped it.
pub(crate) struct Lifecycle {
    stopped: AtomicBool,
    failure: watch::Sender<Option<String>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self {
            stopped: AtomicBool::new(false),
            failure: watch::channel(None).0,
            threads: Mutex::new(Vec::new()),
        }
    }
}

impl Lifecycle {
    pub(crate) fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// Stops the member for good, recording why (only the first failure is kept).
    fn fail(&self, error: String) {
        tracing::error!(error = %error, "member failed");
        self.failure.send_if_modified(|failure| {
            if failure.is_none() {
                *failure = Some(error);
                true
            } else {
                false
            }
        });
        self.stop();
    }

    pub(crate) fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
    }

    pub(crate) fn add_threads(&self, threads: impl IntoIterator<Item = JoinHandle<()>>) {
        self.threads.lock().extend(threads);
    }

    /// Waits for the member's threads to end.
    pub(crate) fn join(&self) {
        let threads = std::mem::take(&mut *self.threads.lock());
        for thread in threads {
            let _ = thread.join();
        }
    }

    /// Follows the failure that stopped the member.
    pub(crate) fn failure(&self) -> watch::Receiver<Option<String>> {
        self.failure.subscribe()
    }
}

/// Snapshots on their way out (views Raft asked for, by peer) and in (spooled files, by
/// shard, index and term), and the numbering of spool files.
#[derive(Default)]
pub(crate) struct SnapshotFiles {
    outgoing: Arc<OutgoingViews>,
    incoming: IncomingFiles,
    seq: AtomicU64,
}

impl SnapshotFiles {
    /// Where Raft's snapshot requests leave the views to stream (shared with the storage
    /// that makes them).
    pub(crate) fn outgoing(&self) -> Arc<OutgoingViews> {
        self.outgoing.clone()
    }

    /// The view made for `to`, to stream now.
    pub(crate) fn take_outgoing(&self, to: u64) -> Option<(SnapshotMetadata, Box<dyn KvSnapshot>)> {
        self.outgoing.lock().remove(&to)
    }

    /// Records a completely spooled snapshot; removes a file spooled earlier for the same
    /// snapshot.
    pub(crate) fn add_incoming(&self, key: (ShardId, u64, u64), path: PathBuf) {
        if let Some(stale) = self.incoming.lock().insert(key, path) {
            let _ = std::fs::remove_file(stale);
        }
    }

    /// The spooled file of a snapshot, handed over to install it (or to remove it).
    pub(crate) fn take_incoming(&self, key: &(ShardId, u64, u64)) -> Option<PathBuf> {
        self.incoming.lock().remove(key)
    }

    /// A number for the next spool file's name.
    pub(crate) fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }
}
