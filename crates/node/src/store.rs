//! The store loop: one thread that owns every shard replica on this node.
//!
//! Each iteration:
//! 1. takes what arrived (client proposals, read requests, peer messages, transport reports),
//!    waiting at most until the next tick;
//! 2. ticks the replicas when a tick is due (with seeded election jitter);
//! 3. starts one ReadIndex round for all reads that arrived since the last one, with a fresh
//!    context;
//! 4. drains the `Ready` of every replica: messages a leader may send before persisting go
//!    out at once, committed entries go to the apply task, and the entries and hard state of
//!    ALL replicas go into ONE log write with one fsync (the group commit);
//! 5. after that write, sends the messages that had to wait for it and advances the replicas.
//!
//! Messages are batched per destination node across shards. Nothing here blocks on the
//! network, nor on apply: committed entries the apply queue has no room for wait in a backlog
//! of the loop's own, so that a long apply (a compaction, a slow disk) never stops the
//! loop's ticks and heartbeats. The backlog is bounded: past [`APPLY_BACKLOG_MAX`] entries
//! the loop waits for apply after all (memory first), and a leader refuses new proposals
//! once apply trails commit by more than `MAX_APPLY_GAP` (see `submit_command`).
//!
//! A snapshot install does not stop the loop either. The replica that accepted a snapshot
//! is *parked*: its `Ready` is kept aside while apply restores the state machine, and the
//! replica is neither ticked nor stepped (what peers send it meanwhile is dropped, as a lossy
//! network would; its proposals wait as they do without a leader). Every other shard goes on.
//! Once the restore is done, the parked `Ready` is persisted (the log records the snapshot)
//! and the replica resumes.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use consensus::{
    ElectionJitter, Message, MessageType, Peer, ProtobufMessage, RaftError, Ready, SnapshotStatus,
};
use mvcc::AppliedIndex;
use storage::{LogStore, NodeId, ShardId, ShardLogWrite};

use crate::apply::{ApplyTask, ConfApplied};
use crate::shared::{ReadWaiter, Shared};
use crate::snapshot::ChunkIter;
use crate::{Envelope, NodeError, OutgoingSnapshot, Proposed, REMOVED};

/// Inbox messages handled in one iteration at most, so ticks stay on time under load.
const INBOX_BATCH: usize = 4096;
/// Proposals kept while there is no leader, re-proposed when one appears.
const STALLED_PROPOSALS_MAX: usize = 10_000;
/// Most proposals from other members a replica holds while it cannot take them (see
/// `Replica::held`); more are dropped (their clients time out, as all would without holding).
const HELD_PROPOSALS_MAX: usize = 10_000;
/// Committed entries held back while the apply queue is full, at most; beyond, the loop
/// waits for apply.
const APPLY_BACKLOG_MAX: usize = 100_000;

/// What the store loop is asked to do.
pub(crate) enum StoreMsg {
    /// A client write for `shard`, already registered as waiting under `request_id`.
    Propose {
        shard: ShardId,
        request_id: u64,
        data: Proposed,
    },
    /// Raft messages from a peer.
    Step {
        from: NodeId,
        envelopes: Vec<Envelope>,
    },
    /// A snapshot arrived whole and is spooled; step its `MsgSnapshot`.
    SnapshotArrived { shard: ShardId, message: Message },
    /// Look again: new reads wait in `Shared::reads`, or apply finished a restore.
    Wake,
    /// Hand leadership of every shard this node leads to `to` (etcd's MoveLeader).
    TransferLeader { to: NodeId },
    /// The transport could not reach a node.
    Unreachable { to: NodeId },
    /// The outcome of a snapshot sent to a node.
    SnapshotSent {
        to: NodeId,
        shard: ShardId,
        delivered: bool,
    },
}

/// A ReadIndex round in flight.
struct ReadRound {
    waiters: Vec<ReadWaiter>,
    started: Instant,
}

struct Replica<L: LogStore> {
    peer: Peer<L>,
    /// Applied index last reported to Raft.
    reported_applied: u64,
    /// A log compaction to include in the next write.
    compact_to: Option<(u64, u64)>,
    /// This replica's election jitter.
    jitter: ElectionJitter,
    /// The term in which this replica's commit index last reached an entry of the current
    /// term (0: not yet in the current term). A leader ignores ReadIndex requests until it
    /// has committed an entry of its term, so rounds sent before that are re-sent the moment
    /// it has, instead of after the retry delay.
    committed_in_term: u64,
    /// A snapshot install in progress: the replica is parked until apply has restored it.
    installing: Option<Install>,
    /// Conf change entries handed to apply and not yet reported back, in log order. Raft is
    /// told of nothing applied past the first: it must have applied a conf change before it
    /// accepts the next one.
    conf_pending: VecDeque<u64>,
    /// Conf changes up to this index are covered by an installed snapshot's configuration.
    conf_covered_to: u64,
    /// Proposals other members forwarded while this replica could not take them (see
    /// [`can_take_proposals`]), which Raft would drop without a word: the sender's client
    /// would wait out its timeout. Never appended, so stepping them again once it can cannot
    /// duplicate them: a follower forwards them to the leader it knows.
    held: Vec<Message>,
}

/// Whether Raft would take (append or forward) a proposal stepped into `replica` now: not
/// while it is parked, knows no leader, or hands leadership over. Proposals that arrive
/// meanwhile wait (local ones in `StoreLoop::stalled`, other members' in `Replica::held`).
fn can_take_proposals<L: LogStore>(replica: &Replica<L>) -> bool {
    !replica.parked()
        && consensus::status(&replica.peer).leader_id != 0
        && !consensus::transferring(&replica.peer)
}

/// A snapshot Raft accepted, being restored into the state machine by apply.
struct Install {
    /// The `Ready` that carried the snapshot, persisted once the restore is done.
    ready: Ready,
    /// The spooled snapshot file.
    path: PathBuf,
    /// Apply's answer: the position the state machine was restored to.
    restored: Receiver<Result<AppliedIndex, NodeError>>,
}

impl<L: LogStore> Replica<L> {
    fn parked(&self) -> bool {
        self.installing.is_some()
    }
}

pub(crate) struct StoreLoop<L: LogStore> {
    shared: Arc<Shared>,
    log: Arc<L>,
    replicas: BTreeMap<ShardId, Replica<L>>,
    inbox: Receiver<StoreMsg>,
    apply: SyncSender<ApplyTask>,
    /// Conf changes apply has applied to the state machine (see [`ConfApplied`]).
    conf_applied: Receiver<ConfApplied>,
    /// When each peer was last heard from: a leader's view of which members are up.
    last_heard: HashMap<u64, Instant>,
    read_rounds: HashMap<Vec<u8>, ReadRound>,
    /// Waiters in `read_rounds`, published to `Waiters` for the bound on reads.
    reads_in_flight: usize,
    stalled: VecDeque<(ShardId, u64, Proposed)>,
    /// Work waiting for room in the apply queue (committed entries, restores), in log order.
    apply_backlog: VecDeque<ApplyTask>,
    apply_backlog_entries: usize,
    /// Ordered, so that messages go out in the same order run after run.
    outbox: BTreeMap<u64, Vec<Envelope>>,
    next_tick: Instant,
    /// Resend an unanswered ReadIndex round (with a new context) after this long.
    read_retry: Duration,
    /// When the node is driven (no apply thread): runs the apply task's queued work on this
    /// thread, for when the loop must wait for room in the apply queue.
    inline_apply: Option<Box<dyn FnMut() -> bool + Send>>,
}

impl<L: LogStore> StoreLoop<L> {
    pub(crate) fn new(
        shared: Arc<Shared>,
        log: Arc<L>,
        replicas: BTreeMap<ShardId, Peer<L>>,
        inbox: Receiver<StoreMsg>,
        apply: SyncSender<ApplyTask>,
        conf_applied: Receiver<ConfApplied>,
    ) -> Self {
        let tick = shared.config.tick_interval;
        let election = tick * shared.config.election_ticks as u32;
        let replicas = replicas
            .into_iter()
            .map(|(shard, peer)| {
                let reported_applied = consensus::status(&peer).applied;
                let replica = Replica {
                    // Each replica draws its own jitter, so shards do not campaign in step.
                    jitter: ElectionJitter::new(shared.config.seed ^ shard.0.rotate_left(32)),
                    peer,
                    reported_applied,
                    compact_to: None,
                    committed_in_term: 0,
                    installing: None,
                    conf_pending: VecDeque::new(),
                    conf_covered_to: 0,
                    held: Vec::new(),
                };
                (shard, replica)
            })
            .collect();
        Self {
            next_tick: shared.config.clock.now() + tick,
            shared,
            log,
            replicas,
            inbox,
            apply,
            conf_applied,
            last_heard: HashMap::new(),
            read_rounds: HashMap::new(),
            reads_in_flight: 0,
            stalled: VecDeque::new(),
            apply_backlog: VecDeque::new(),
            apply_backlog_entries: 0,
            outbox: BTreeMap::new(),
            read_retry: election / 2,
            inline_apply: None,
        }
    }

    /// Makes the loop run the apply task's queue with `drain` when it must wait for room in
    /// it, instead of waiting for the apply thread: for a node driven on one thread.
    pub(crate) fn set_inline_apply(&mut self, drain: Box<dyn FnMut() -> bool + Send>) {
        self.inline_apply = Some(drain);
    }

    pub(crate) fn run(mut self) {
        loop {
            let wait = self
                .next_tick
                .saturating_duration_since(self.shared.config.clock.now());
            match self.inbox.recv_timeout(wait) {
                Ok(msg) => self.handle(msg),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if !self.iterate() {
                break;
            }
        }
        // Dropping the loop drops every waiter it holds: their callers see `Stopped`.
    }

    /// One iteration without waiting: what is in the inbox, a tick if one is due, a read
    /// round, the readies. Returns false once the loop must stop (stopped or failed).
    pub(crate) fn iterate(&mut self) -> bool {
        for _ in 0..INBOX_BATCH {
            match self.inbox.try_recv() {
                Ok(msg) => self.handle(msg),
                Err(_) => break,
            }
        }
        if self.shared.is_stopped() {
            return false;
        }
        if self.shared.config.clock.now() >= self.next_tick {
            self.tick();
        }
        self.start_read_round();
        if let Err(e) = self
            .apply_conf_changes()
            .and_then(|()| self.flush_apply_backlog(false))
            .and_then(|()| self.handle_readies())
        {
            self.shared.fail(e);
            return false;
        }
        self.publish_status();
        self.publish_reads_in_flight();
        true
    }

    /// Publishes how many reads wait in rounds in flight: with those waiting for the next
    /// round, they are bounded by `max_pending_proposals` (see `Node::submit_read`).
    fn publish_reads_in_flight(&mut self) {
        let in_flight = self.read_rounds.values().map(|r| r.waiters.len()).sum();
        if in_flight != self.reads_in_flight {
            self.reads_in_flight = in_flight;
            self.shared.waiters.set_reads_in_flight(in_flight);
        }
    }

    /// Whether a conf change of `shard` may still be unapplied, once Raft has heard of every
    /// one apply reported.
    fn conf_change_pending(&mut self, shard: ShardId) -> bool {
        if let Err(e) = self.apply_conf_changes() {
            self.shared.fail(e);
            return true;
        }
        let replica = self.replicas.get_mut(&shard).expect("proposing to it");
        if replica.parked() {
            return false;
        }
        Self::report_applied(&self.shared, replica);
        consensus::has_pending_conf_change(&replica.peer)
    }

    /// Tells Raft how far apply has gone, never past a conf change not yet applied to Raft.
    fn report_applied(shared: &Shared, replica: &mut Replica<L>) {
        let mut applied = shared.progress.applied();
        if let Some(&first) = replica.conf_pending.front() {
            applied = applied.min(first - 1);
        }
        if applied > replica.reported_applied {
            replica.peer.advance_apply_to(applied);
            replica.reported_applied = applied;
        }
    }

    /// Applies to Raft the conf changes apply has applied to the state machine, in log order.
    /// Fails the member if it was removed.
    fn apply_conf_changes(&mut self) -> Result<(), String> {
        while let Ok(report) = self.conf_applied.try_recv() {
            // One shard until the key space is split.
            let replica = self
                .replicas
                .values_mut()
                .next()
                .expect("a node has at least one shard");
            let pending = replica.conf_pending.pop_front();
            assert_eq!(
                pending,
                Some(report.index),
                "conf change {} applied out of order",
                report.index
            );
            let Some(cc) = report.conf_change else {
                continue;
            };
            if report.index <= replica.conf_covered_to {
                // A snapshot's configuration already includes it.
                continue;
            }
            replica
                .peer
                .apply_conf_change(&cc)
                .map_err(|e| format!("conf change {} cannot apply: {e}", report.index))?;
            tracing::info!(
                index = report.index,
                change = ?cc.get_change_type(),
                member_id = cc.node_id,
                "configuration changed"
            );
            if cc.get_change_type() == consensus::ConfChangeType::RemoveNode
                && cc.node_id == self.shared.config.node_id.0
            {
                return Err(REMOVED.into());
            }
        }
        Ok(())
    }

    fn handle(&mut self, msg: StoreMsg) {
        match msg {
            StoreMsg::Propose {
                shard,
                request_id,
                data,
            } => self.propose(shard, request_id, data),
            StoreMsg::Step { from, envelopes } => {
                self.last_heard
                    .insert(from.0, self.shared.config.clock.now());
                for envelope in envelopes {
                    let message = match Message::parse_from_bytes(&envelope.message) {
                        Ok(message) => message,
                        Err(e) => {
                            tracing::warn!(peer_id = from.0, error = %e, "undecodable raft message");
                            continue;
                        }
                    };
                    if message.from != from.0 {
                        tracing::warn!(peer_id = from.0, "raft message with a forged sender");
                        continue;
                    }
                    self.step(envelope.shard, message);
                }
            }
            StoreMsg::SnapshotArrived { shard, message } => self.step(shard, message),
            StoreMsg::Wake => {}
            StoreMsg::TransferLeader { to } => {
                for replica in self.replicas.values_mut().filter(|r| !r.parked()) {
                    if consensus::status(&replica.peer).role == consensus::StateRole::Leader {
                        replica.peer.transfer_leader(to.0);
                    }
                }
            }
            StoreMsg::Unreachable { to } => {
                for replica in self.replicas.values_mut().filter(|r| !r.parked()) {
                    consensus::report_unreachable(&mut replica.peer, to.0);
                }
            }
            StoreMsg::SnapshotSent {
                to,
                shard,
                delivered,
            } => {
                if let Some(replica) = self.replicas.get_mut(&shard).filter(|r| !r.parked()) {
                    let status = if delivered {
                        SnapshotStatus::Finish
                    } else {
                        SnapshotStatus::Failure
                    };
                    replica.peer.report_snapshot(to.0, status);
                }
            }
        }
    }

    fn step(&mut self, shard: ShardId, message: Message) {
        let Some(replica) = self.replicas.get_mut(&shard) else {
            tracing::debug!(shard_id = shard.0, "message for an unknown shard");
            return;
        };
        let mut message = message;
        if message.get_msg_type() == MessageType::MsgPropose {
            // A member that is not the leader forwards a proposal as it is, and the leader
            // would take it for a forged one if it still named the member it came from:
            // it comes from this one now (a proposal's sender means nothing to Raft).
            message.from = self.shared.config.node_id.0;
            if !can_take_proposals(replica) {
                if replica.held.len() < HELD_PROPOSALS_MAX {
                    replica.held.push(message);
                }
                return;
            }
        }
        if replica.parked() {
            // Raft must not be stepped with a snapshot not yet persisted; the sender retries.
            if message.get_msg_type() == MessageType::MsgSnapshot {
                let metadata = message.get_snapshot().get_metadata();
                let key = (shard, metadata.index, metadata.term);
                if let Some(path) = self.shared.snapshots.take_incoming(&key) {
                    let _ = std::fs::remove_file(path);
                }
            }
            return;
        }
        if let Err(e) = replica.peer.step(message) {
            tracing::debug!(shard_id = shard.0, error = %e, "raft rejected a message");
        }
    }

    /// Steps again the proposals held while this replica could not take them.
    fn release_held(&mut self) {
        for replica in self.replicas.values_mut() {
            if replica.held.is_empty() || !can_take_proposals(replica) {
                continue;
            }
            for message in std::mem::take(&mut replica.held) {
                if let Err(e) = replica.peer.step(message) {
                    tracing::debug!(error = %e, "raft rejected a held proposal");
                }
            }
        }
    }

    fn propose(&mut self, shard: ShardId, request_id: u64, data: Proposed) {
        if !self.replicas.contains_key(&shard) {
            self.shared
                .waiters
                .finish_proposal(request_id, Err(NodeError::NoLeader));
            return;
        }
        // A leader turns a conf change into an empty entry while another may be unapplied,
        // and its waiter would wait in vain: refuse it here.
        if matches!(data, Proposed::ConfChange(_)) && self.conf_change_pending(shard) {
            self.shared
                .waiters
                .finish_proposal(request_id, Err(NodeError::TooManyRequests));
            return;
        }
        let replica = self.replicas.get_mut(&shard).expect("checked above");
        let proposed = if replica.parked() {
            Err(RaftError::ProposalDropped)
        } else {
            match &data {
                Proposed::Entry(entry) => replica.peer.propose(Vec::new(), entry.clone()),
                Proposed::ConfChange(cc) => {
                    replica.peer.propose_conf_change(Vec::new(), cc.clone())
                }
            }
        };
        match proposed {
            Ok(()) => {}
            Err(RaftError::ProposalDropped) if !can_take_proposals(replica) => {
                // No leader yet, a leadership hand-over, or the replica installs a snapshot:
                // keep it until it can be proposed (as etcd blocks proposals during an
                // election) rather than fail a request that could succeed.
                if self.stalled.len() < STALLED_PROPOSALS_MAX {
                    self.stalled.push_back((shard, request_id, data));
                } else {
                    self.shared
                        .waiters
                        .finish_proposal(request_id, Err(NodeError::TooManyRequests));
                }
            }
            Err(RaftError::ProposalDropped) => {
                // A leader exists but refused (the uncommitted-size limit).
                self.shared
                    .waiters
                    .finish_proposal(request_id, Err(NodeError::TooManyRequests));
            }
            Err(e) => {
                tracing::warn!(shard_id = shard.0, error = %e, "proposal failed");
                self.shared
                    .waiters
                    .finish_proposal(request_id, Err(NodeError::LeaderChanged));
            }
        }
    }

    fn retry_stalled(&mut self) {
        let has_leader = self.replicas.values().all(can_take_proposals);
        if self.stalled.is_empty() || !has_leader {
            return;
        }
        for (shard, request_id, data) in std::mem::take(&mut self.stalled) {
            if self.shared.waiters.proposal_waiting(request_id) {
                self.propose(shard, request_id, data);
            }
        }
    }

    fn tick(&mut self) {
        let now = self.shared.config.clock.now();
        let tick = self.shared.config.tick_interval;
        self.next_tick += tick;
        if self.next_tick < now {
            // The loop fell behind (a long fsync or a paused process): do not replay the
            // missed ticks in a burst, which would trigger spurious elections.
            self.next_tick = now + tick;
        }
        for replica in self.replicas.values_mut().filter(|r| !r.parked()) {
            replica.jitter.tick(&mut replica.peer);
        }
        self.shared.raft.tick();
        // "Active" is "heard from within an election timeout": Raft's own flag is cleared at
        // every quorum check and would call every follower down right after one.
        let election = tick * self.shared.config.election_ticks as u32;
        let me = self.shared.config.node_id.0;
        let leader_view = self
            .replicas
            .values()
            .next()
            .and_then(|replica| consensus::progress(&replica.peer))
            .map(|mut progress| {
                for peer in &mut progress {
                    peer.recent_active = peer.id == me
                        || self
                            .last_heard
                            .get(&peer.id)
                            .is_some_and(|heard| now.duration_since(*heard) < election);
                }
                progress
            });
        self.shared.raft.observe_progress(leader_view);
        self.retry_read_rounds(now, self.read_retry);
        self.plan_log_compaction();
    }

    fn start_read_round(&mut self) {
        let waiters = self.shared.waiters.take_reads();
        if !waiters.is_empty() {
            self.issue_read_round(waiters);
        }
    }

    /// Every round gets a context never used before (node id and a sequence number), so a
    /// late answer to an old round can never be mistaken for an answer to a new one.
    fn issue_read_round(&mut self, waiters: Vec<ReadWaiter>) {
        let waiters: Vec<ReadWaiter> = waiters.into_iter().filter(|w| !w.is_closed()).collect();
        if waiters.is_empty() {
            return;
        }
        // Contexts must not repeat across restarts either: a late answer to a round of the
        // previous run would otherwise answer a new round with an old index. They come from
        // the request ids, which start past the previous run's at every start (see
        // `Node::build`).
        let seq = self.shared.waiters.next_id();
        let mut context = Vec::with_capacity(16);
        context.extend_from_slice(&self.shared.config.node_id.0.to_be_bytes());
        context.extend_from_slice(&seq.to_be_bytes());
        // Reads go to the first shard until reads are routed by key.
        let replica = self
            .replicas
            .values_mut()
            .next()
            .expect("a node has at least one shard");
        // A parked replica cannot take the request: the round is sent once it resumes.
        if !replica.parked() {
            replica.peer.read_index(context.clone());
        }
        self.read_rounds.insert(
            context,
            ReadRound {
                waiters,
                started: self.shared.config.clock.now(),
            },
        );
    }

    /// Re-issues, with new contexts, the rounds unanswered for `after` or longer.
    fn retry_read_rounds(&mut self, now: Instant, after: Duration) {
        let mut expired: Vec<Vec<u8>> = self
            .read_rounds
            .iter()
            .filter(|(_, round)| now.duration_since(round.started) >= after)
            .map(|(context, _)| context.clone())
            .collect();
        // In context order, not the map's: the same run re-issues them the same way.
        expired.sort_unstable();
        for context in expired {
            let round = self.read_rounds.remove(&context).expect("listed above");
            self.issue_read_round(round.waiters);
        }
    }

    /// Plans a log compaction once enough applied entries are durable in the state machine.
    /// Never past the durable applied index: the log must still hold whatever a crash would
    /// make the state machine replay.
    fn plan_log_compaction(&mut self) {
        let config = &self.shared.config;
        let durable = self.shared.progress.durable();
        for (shard, replica) in self.replicas.iter_mut().filter(|(_, r)| !r.parked()) {
            let truncated = self.log.first_index(*shard) - 1;
            if durable < truncated + config.snapshot_count + config.snapshot_catchup_entries {
                continue;
            }
            let compact_to = durable - config.snapshot_catchup_entries;
            match self.log.term(*shard, compact_to) {
                Ok(term) => replica.compact_to = Some((compact_to, term)),
                Err(e) => tracing::warn!(shard_id = shard.0, error = %e, "cannot plan compaction"),
            }
        }
    }

    fn send(&mut self, shard: ShardId, messages: Vec<Message>) {
        for message in messages {
            if message.get_msg_type() == MessageType::MsgSnapshot {
                self.send_snapshot(shard, message);
                continue;
            }
            let bytes = message
                .write_to_bytes()
                .expect("encoding a raft message cannot fail");
            self.outbox.entry(message.to).or_default().push(Envelope {
                shard,
                message: bytes,
            });
        }
    }

    fn send_snapshot(&mut self, shard: ShardId, message: Message) {
        let to = message.to;
        let Some((metadata, view)) = self.shared.snapshots.take_outgoing(to) else {
            tracing::warn!(peer_id = to, "snapshot message without a read view");
            if let Some(replica) = self.replicas.get_mut(&shard) {
                replica.peer.report_snapshot(to, SnapshotStatus::Failure);
            }
            return;
        };
        debug_assert_eq!(&metadata, message.get_snapshot().get_metadata());
        tracing::info!(
            shard_id = shard.0,
            peer_id = to,
            index = metadata.index,
            term = metadata.term,
            "sending snapshot"
        );
        let bytes = message
            .write_to_bytes()
            .expect("encoding a raft message cannot fail");
        self.shared.transport.send_snapshot(
            NodeId(to),
            OutgoingSnapshot {
                shard,
                message: bytes,
                chunks: Box::new(ChunkIter::new(view)),
            },
        );
    }

    fn flush_outbox(&mut self) {
        for (to, envelopes) in std::mem::take(&mut self.outbox) {
            self.shared.transport.send(NodeId(to), envelopes);
        }
    }

    fn resolve_reads(&mut self, read_states: Vec<consensus::ReadState>) {
        for state in read_states {
            if let Some(round) = self.read_rounds.remove(&state.request_ctx) {
                for waiter in round.waiters {
                    let _ = waiter.send(Ok(state.index));
                }
            }
        }
    }

    /// Hands committed entries to the apply task, behind any backlog, without waiting
    /// unless the backlog is full.
    ///
    /// # Panics
    /// If an entry is past `persisted`, the end of the local durable log: persist before
    /// apply is what makes an acknowledged write survive a crash.
    fn submit_committed(
        &mut self,
        shard: ShardId,
        entries: Vec<consensus::Entry>,
        persisted: u64,
    ) -> Result<(), String> {
        if let Some(last) = entries.last() {
            assert!(
                last.index <= persisted,
                "entry {} committed for apply before it was persisted (log ends at {persisted})",
                last.index
            );
        }
        let replica = self.replicas.get_mut(&shard).expect("a replica's entries");
        replica.conf_pending.extend(
            entries
                .iter()
                .filter(|e| e.get_entry_type() != consensus::EntryType::EntryNormal)
                .map(|e| e.index),
        );
        if !entries.is_empty() {
            self.apply_backlog_entries += entries.len();
            self.apply_backlog.push_back(ApplyTask::Entries(entries));
        }
        let wait = self.apply_backlog_entries > APPLY_BACKLOG_MAX;
        self.flush_apply_backlog(wait)
    }

    /// Moves the backlog into the apply queue: as much as fits, or all of it if `wait`.
    fn flush_apply_backlog(&mut self, wait: bool) -> Result<(), String> {
        while let Some(task) = self.apply_backlog.pop_front() {
            let count = match &task {
                ApplyTask::Entries(entries) => entries.len(),
                ApplyTask::Restore { .. } => 0,
            };
            match self.apply.try_send(task) {
                Ok(()) => self.apply_backlog_entries -= count,
                Err(TrySendError::Full(task)) => {
                    self.apply_backlog.push_front(task);
                    if !wait {
                        return Ok(());
                    }
                    self.wait_for_apply()?;
                }
                Err(TrySendError::Disconnected(_)) => return Err("apply task stopped".into()),
            }
        }
        Ok(())
    }

    /// Gives apply time to make room in its queue: runs it here when the node is driven on
    /// one thread, else waits a moment for the apply thread.
    fn wait_for_apply(&mut self) -> Result<(), String> {
        match &mut self.inline_apply {
            Some(drain) => {
                if !drain() {
                    return Err("apply failed".into());
                }
            }
            None => std::thread::sleep(Duration::from_millis(1)),
        }
        Ok(())
    }

    /// Starts installing the snapshot in `ready`, which Raft accepted: apply restores the
    /// state machine from the spooled file, behind every entry committed before it, and the
    /// replica stays parked with `ready` until then (see [`Self::finish_install`]).
    fn start_install(&mut self, shard: ShardId, ready: Ready) -> Result<(), String> {
        let metadata = ready.snapshot().get_metadata();
        let key = (shard, metadata.index, metadata.term);
        let path = self
            .shared
            .snapshots
            .take_incoming(&key)
            .ok_or_else(|| format!("raft accepted snapshot {key:?} that was never spooled"))?;
        tracing::info!(
            shard_id = shard.0,
            index = metadata.index,
            term = metadata.term,
            "installing snapshot"
        );
        let (reply, restored) = std::sync::mpsc::sync_channel(1);
        self.apply_backlog.push_back(ApplyTask::Restore {
            path: path.clone(),
            reply,
        });
        self.flush_apply_backlog(false)?;
        let replica = self.replicas.get_mut(&shard).expect("a replica's ready");
        // Raft took the snapshot's configuration when it accepted it.
        replica.conf_covered_to = replica
            .conf_covered_to
            .max(ready.snapshot().get_metadata().index);
        replica.installing = Some(Install {
            ready,
            path,
            restored,
        });
        Ok(())
    }

    /// The parked `Ready` of `shard` once apply has restored its snapshot; `None` while the
    /// restore runs. A failed restore fails the member.
    fn finish_install(&mut self, shard: ShardId) -> Result<Option<Ready>, String> {
        let replica = self.replicas.get_mut(&shard).expect("listed");
        let Some(install) = &replica.installing else {
            return Ok(None);
        };
        let restored = match install.restored.try_recv() {
            Ok(restored) => restored.map_err(|e| e.to_string())?,
            Err(TryRecvError::Empty) => return Ok(None),
            Err(TryRecvError::Disconnected) => {
                return Err("apply task stopped during snapshot install".into())
            }
        };
        let install = replica.installing.take().expect("checked above");
        let metadata = install.ready.snapshot().get_metadata();
        if restored.index != metadata.index || restored.term != metadata.term {
            return Err(format!(
                "snapshot data is at index {} term {}, its metadata says index {} term {}",
                restored.index, restored.term, metadata.index, metadata.term
            ));
        }
        let _ = std::fs::remove_file(&install.path);
        tracing::info!(
            shard_id = shard.0,
            index = metadata.index,
            term = metadata.term,
            "installed snapshot"
        );
        Ok(Some(install.ready))
    }

    fn handle_readies(&mut self) -> Result<(), String> {
        let shards: Vec<ShardId> = self.replicas.keys().copied().collect();
        let mut writes = Vec::new();
        let mut readies = Vec::new();
        let mut sync = false;
        let mut resumed = false;
        for shard in shards {
            // A parked replica resumes with the `Ready` it was parked with, once restored.
            let parked = self.replicas[&shard].parked();
            let (mut ready, compact_to) = match self.finish_install(shard)? {
                Some(ready) => {
                    resumed = true;
                    (ready, None)
                }
                None if parked => continue,
                None => {
                    let replica = self.replicas.get_mut(&shard).expect("listed above");
                    Self::report_applied(&self.shared, replica);
                    let compact_to = replica.compact_to.take();
                    if !replica.peer.has_ready() {
                        if compact_to.is_some() {
                            writes.push(ShardLogWrite {
                                shard,
                                compact_to,
                                ..Default::default()
                            });
                        }
                        continue;
                    }
                    let mut ready = replica.peer.ready();
                    if let Some(soft) = ready.ss() {
                        self.shared
                            .raft
                            .observe_role(shard, soft.leader_id, soft.raft_state);
                    }
                    let messages = ready.take_messages();
                    self.send(shard, messages);
                    if !ready.snapshot().is_empty() {
                        // The restore runs on apply; the replica waits for it, parked. A
                        // compaction planned against the old log no longer applies.
                        self.start_install(shard, ready)?;
                        continue;
                    }
                    (ready, compact_to)
                }
            };
            let mut write = ShardLogWrite {
                shard,
                compact_to,
                ..Default::default()
            };
            if !ready.snapshot().is_empty() {
                let metadata = ready.snapshot().get_metadata();
                write.install_snapshot = Some((metadata.index, metadata.term));
                write.conf_state = Some(metadata.get_conf_state().clone());
            }
            // With a snapshot in the ready, the log is replaced by the write below; raft hands
            // out no entry past it before then.
            let persisted = if ready.snapshot().is_empty() {
                self.log.last_index(shard)
            } else {
                u64::MAX
            };
            self.submit_committed(shard, ready.take_committed_entries(), persisted)?;
            self.resolve_reads(ready.take_read_states());
            write.entries = ready.take_entries();
            write.hard_state = ready.hs().cloned();
            sync |= ready.must_sync();
            writes.push(write);
            readies.push((shard, ready));
        }
        // Leader messages go out before the fsync: replication overlaps the local write.
        self.flush_outbox();
        if !writes.is_empty() {
            let durable = self.shared.progress.durable();
            for write in &writes {
                if let Some((index, _)) = write.compact_to {
                    assert!(
                        index <= durable,
                        "log compaction to {index} past the durable applied index {durable}"
                    );
                }
            }
            let compacted = writes.iter().any(|w| w.compact_to.is_some());
            self.log
                .write(writes, sync)
                .map_err(|e| format!("raft log write failed: {e}"))?;
            if compacted {
                tracing::info!("compacted raft log");
                if let Err(e) = self.log.purge() {
                    tracing::warn!(error = %e, "raft log purge failed");
                }
            }
        }
        for (shard, mut ready) in readies {
            let persisted = ready.take_persisted_messages();
            self.send(shard, persisted);
            let replica = self.replicas.get_mut(&shard).expect("listed above");
            let mut light = replica.peer.advance_append(ready);
            let messages = light.take_messages();
            let committed = light.take_committed_entries();
            self.send(shard, messages);
            let persisted = self.log.last_index(shard);
            self.submit_committed(shard, committed, persisted)?;
        }
        self.flush_outbox();
        self.release_held();
        self.retry_stalled();
        // Rounds held while a replica was parked, or that a new leader ignored until it had
        // committed in its term, go out at once.
        if (resumed || self.leader_committed_in_new_term()) && !self.read_rounds.is_empty() {
            let now = self.shared.config.clock.now();
            self.retry_read_rounds(now, Duration::ZERO);
        }
        Ok(())
    }

    /// Whether some replica's commit index has just reached an entry of its current term:
    /// the leader of that term now answers ReadIndex requests.
    fn leader_committed_in_new_term(&mut self) -> bool {
        let mut reached = false;
        for replica in self.replicas.values_mut() {
            let raft = consensus::status(&replica.peer);
            if replica.committed_in_term == raft.term || raft.leader_id == 0 {
                continue;
            }
            if consensus::committed_in_current_term(&replica.peer) {
                replica.committed_in_term = raft.term;
                reached = true;
            }
        }
        reached
    }

    /// Publishes each replica's role and log positions. Not a parked replica's: Raft's
    /// commit index already counts the snapshot that its log does not record yet.
    fn publish_status(&self) {
        for (shard, replica) in self.replicas.iter().filter(|(_, r)| !r.parked()) {
            let raft = consensus::status(&replica.peer);
            self.shared
                .raft
                .observe_role(*shard, raft.leader_id, raft.role);
            self.shared
                .raft
                .observe_log(raft.term, raft.committed, raft.last_index);
        }
    }
}
