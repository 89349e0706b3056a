//! The IO shell of a member: the store loop that drives consensus for every shard, the apply
//! task, proposals and linearizable reads.
//!
//! Layout:
//! - `store`: the store loop thread. It owns every shard replica (`consensus::Peer`), does one
//!   log write and one fsync per iteration for all of them, and batches messages per node.
//! - `apply`: the apply thread. Committed entries go into `mvcc` there, so that applying never
//!   stalls consensus.
//! - `snapshot`: snapshot streaming, spooling and installation.
//! - `proposal`: the encoding of a client request inside a log entry.
//! - `shared`: what the threads share, in parts with one writer each (waiters, the Raft
//!   view the store loop publishes, the progress apply publishes, the lifecycle, snapshot
//!   files), reached only through their methods.
//! - `leases`: the lessor (lease clocks on the leader); `watching`: the watch catch-up.
//!
//! Invariants:
//! - **Persist before apply**: only entries durable in the local log are applied (the raft
//!   crate hands out committed entries up to the persisted index only).
//! - **The log is never compacted past the state machine's durable applied index**, so a
//!   crash always finds every entry it must replay.
//! - **A snapshot is installed in the state machine, durably, before the log records it.**
//! - Every ReadIndex round has a context never used before.
//! - Every queue is bounded: a full inbox answers `too many requests`.
//!
//! This crate does no network IO (a [`Transport`] does) and knows no protobuf other than the
//! raft crate's own messages, which it encodes for the transport as opaque bytes.

mod apply;
mod backup;
mod clock;
mod leases;
mod proposal;
mod shared;
mod snapshot;
mod state;
mod store;
mod watching;

use std::collections::BTreeMap;
use std::sync::mpsc::TrySendError;
use std::sync::Arc;
use std::time::Duration;

use consensus::{Message, MessageType, PeerStorage, ProtobufMessage, RaftConfig};
use parking_lot::Mutex;
use storage::{LogStore, ShardLogWrite};
use tokio::sync::oneshot;

use crate::apply::ApplyLoop;
use crate::shared::{Lifecycle, Progress, RaftView, Shared, SnapshotFiles, Waiters};
use crate::snapshot::{Spool, StateSnapshots};
use crate::state::StateReader;
use crate::store::{StoreLoop, StoreMsg};

pub use ::watch::HubConfig as WatchConfig;
pub use backup::{
    backup_status, restore_backup, verify_backup, BackupStatus, BACKUP_CHECKSUM_BYTES,
};
pub use clock::Clock;
pub use consensus::PeerProgress;
pub use mvcc::{
    AlarmMember, AlarmType, Applied, Command, CommandResponse, Lease, LeaseId, Member,
    MembershipChange, MvccError, RangeRequest, RangeResponse, Revision, TxnRequest, TxnResponse,
};
pub use storage::{NodeId, ShardId};

/// etcd's default period of watch progress notifications (`--watch-progress-notify-interval`).
pub const DEFAULT_WATCH_PROGRESS_NOTIFY_INTERVAL: Duration = Duration::from_secs(600);
/// etcd's period of lease checkpoints (`leaseCheckpointInterval`).
pub const DEFAULT_LEASE_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(300);

/// Settings of a node. Defaults follow etcd's.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// This node's id (its etcd member id).
    pub node_id: NodeId,
    /// The cluster id reported in response headers.
    pub cluster_id: u64,
    /// The members of a new cluster (this node included), with their ids, names and peer
    /// URLs: a node whose log is empty bootstraps shard 1 with them. Empty for a node that
    /// joins an existing cluster: it waits for the leader to send it the log or a snapshot.
    pub initial_members: Vec<Member>,
    /// Length of one Raft tick; the heartbeat interval (etcd: 100 ms).
    pub tick_interval: Duration,
    /// Election timeout in ticks (etcd: 10 ticks = 1000 ms).
    pub election_ticks: usize,
    /// Heartbeat interval in ticks (1).
    pub heartbeat_ticks: usize,
    /// Applied entries between two log compactions (etcd's `--snapshot-count`).
    pub snapshot_count: u64,
    /// Entries kept behind the compaction point so slightly slow followers catch up from the
    /// log rather than a snapshot (etcd: 5000).
    pub snapshot_catchup_entries: u64,
    /// How long a proposal or a read may wait before `etcdserver: request timed out`.
    pub request_timeout: Duration,
    /// Proposals waiting for apply before `etcdserver: too many requests`.
    pub max_pending_proposals: usize,
    /// Seed for election jitter.
    pub seed: u64,
    /// Where incoming snapshots are spooled before they are installed.
    pub snapshot_dir: std::path::PathBuf,
    /// The keys spooled snapshots are sealed with (`--encryption-key-file`); plain if none.
    pub snapshot_keys: Option<Arc<encryption::KeyRing>>,
    /// Where time comes from: the system clock, or a manual one in a simulation.
    pub clock: Clock,
    /// Limits of the watch hub.
    pub watch: WatchConfig,
    /// Period of the progress notifications of watchers that asked for them (etcd's
    /// `--watch-progress-notify-interval`, 10 minutes).
    pub watch_progress_notify_interval: Duration,
    /// How often the leader records the remaining TTL of leases nobody renews (etcd's lease
    /// checkpoints, 5 minutes).
    pub lease_checkpoint_interval: Duration,
}

/// Errors returned to clients by the node. `api` maps each to etcd's code and message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    /// An error from the data model.
    #[error(transparent)]
    Mvcc(#[from] MvccError),
    /// `etcdserver: no leader`
    #[error("no leader")]
    NoLeader,
    /// `etcdserver: leader changed`
    #[error("leader changed")]
    LeaderChanged,
    /// `etcdserver: not leader`: only the leader can answer (lease renewals); the leader
    /// this member knows of, 0 if none.
    #[error("not leader")]
    NotLeader(u64),
    /// `etcdserver: request timed out`
    #[error("request timed out")]
    Timeout,
    /// `etcdserver: bad leader transferee`
    #[error("bad leader transferee")]
    BadLeaderTransferee,
    /// `etcdserver: request timed out, leader transfer took too long`
    #[error("request timed out, leader transfer took too long")]
    LeaderTransferTimeout,
    /// `etcdserver: too many requests`
    #[error("too many requests")]
    TooManyRequests,
    /// `etcdserver: server stopped`
    #[error("server stopped")]
    Stopped,
    /// Local storage failed or is corrupt; the member stops serving.
    #[error("storage: {0}")]
    Storage(String),
}

/// A batch of encoded Raft messages for one shard, as carried by the peer transport.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// The shard the message belongs to.
    pub shard: ShardId,
    /// One Raft message, encoded by `node` (opaque to the transport).
    pub message: Vec<u8>,
}

/// A snapshot to stream to a peer: the encoded `MsgSnapshot`, then data chunks. The
/// transport checksums each chunk on the wire and reports the outcome with
/// [`Node::report_snapshot`].
pub struct OutgoingSnapshot {
    /// The shard.
    pub shard: ShardId,
    /// The encoded Raft `MsgSnapshot` message.
    pub message: Vec<u8>,
    /// The state machine content, in chunks of bounded size.
    pub chunks: Box<dyn Iterator<Item = Result<Vec<u8>, NodeError>> + Send>,
}

/// How `node` reaches other nodes. Implemented by `api` over gRPC streams, by `sim` in memory.
pub trait Transport: Send + Sync + 'static {
    /// Sends messages to `to`, best effort: Raft tolerates loss, so a full queue drops.
    fn send(&self, to: NodeId, envelopes: Vec<Envelope>);
    /// Streams a snapshot to `to` on its own stream, so it never blocks heartbeats.
    fn send_snapshot(&self, to: NodeId, snapshot: OutgoingSnapshot);
}

/// What a member reports in `Maintenance.Status` and response headers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeStatus {
    /// This member's id.
    pub member_id: u64,
    /// The cluster id.
    pub cluster_id: u64,
    /// The leader's id, 0 if unknown.
    pub leader: u64,
    /// Current Raft term.
    pub term: u64,
    /// Last index in the Raft log.
    pub raft_index: u64,
    /// Commit index.
    pub commit_index: u64,
    /// Last applied index.
    pub applied_index: u64,
    /// Current revision.
    pub revision: Revision,
    /// State machine size on disk.
    pub db_size: u64,
    /// Bytes of it the data occupies (what the backend quota counts).
    pub db_size_in_use: u64,
    /// Ticks the store loop has taken since the member started: it advances every tick
    /// interval while the loop is live, whatever apply or a snapshot install is doing.
    pub ticks: u64,
}

/// Runs a node started with [`Node::start_driven`] one step at a time, on the caller's
/// thread. The store loop and the apply task are stepped separately, so that a caller can
/// let apply trail the store loop by any number of iterations, as the apply thread may.
pub struct Driver {
    inner: Box<dyn Driven>,
}

impl Driver {
    /// One iteration of the store loop (inbox, a tick if due on the node's clock, reads,
    /// readies and the log write), then applies everything committed. Returns false once the
    /// node has stopped or failed.
    pub fn step(&mut self) -> bool {
        self.inner.step()
    }

    /// One iteration of the store loop alone (and a lessor tick): committed entries are
    /// queued for apply, not applied, and a snapshot install parks its replica until a later
    /// apply step has restored it, as with the apply thread. Returns false once the node has
    /// stopped or failed.
    pub fn step_store(&mut self) -> bool {
        self.inner.step_store()
    }

    /// One iteration of the apply task (the next queued task and the entries queued behind
    /// it, in one bounded batch; nothing if the queue is empty), and a pass of the watch
    /// catch-up. Returns false once the node has stopped or failed.
    pub fn step_apply(&mut self) -> bool {
        self.inner.step_apply()
    }

    /// Whether work waits in the apply queue.
    pub fn apply_pending(&mut self) -> bool {
        self.inner.apply_pending()
    }

    /// Store-loop iterations that ended with work waiting for apply since the apply queue was
    /// last empty: how far apply trails the store loop.
    pub fn apply_lag(&self) -> u64 {
        self.inner.apply_lag()
    }
}

/// A node's loops, driven by [`Driver`].
trait Driven: Send {
    fn step(&mut self) -> bool;
    fn step_store(&mut self) -> bool;
    fn step_apply(&mut self) -> bool;
    fn apply_pending(&mut self) -> bool;
    fn apply_lag(&self) -> u64;
}

/// The apply task of a driven node and how far it trails the store loop. Shared by the
/// driver and the store loop, which runs the queue itself when it must wait for room in it.
struct DrivenApply<S: storage::KvStore> {
    apply_loop: ApplyLoop<S>,
    lag: u64,
}

impl<S: storage::KvStore> DrivenApply<S> {
    fn drain(&mut self) -> bool {
        let drained = self.apply_loop.drain();
        self.lag = 0;
        drained
    }
}

struct DrivenNode<L: LogStore, S: storage::KvStore> {
    shared: Arc<Shared>,
    store_loop: StoreLoop<L>,
    apply: Arc<Mutex<DrivenApply<S>>>,
    state: Arc<mvcc::Store<S>>,
}

impl<L: LogStore, S: storage::KvStore> Driven for DrivenNode<L, S> {
    fn step(&mut self) -> bool {
        let stepped = self.store_loop.iterate()
            && self.apply.lock().drain()
            && watching::step(&self.shared, self.state.as_ref());
        leases::tick(&self.shared);
        stepped
    }

    fn step_store(&mut self) -> bool {
        let stepped = self.store_loop.iterate();
        {
            let mut apply = self.apply.lock();
            if apply.apply_loop.has_queued() {
                apply.lag += 1;
            } else {
                apply.lag = 0;
            }
        }
        leases::tick(&self.shared);
        stepped
    }

    fn step_apply(&mut self) -> bool {
        if self.shared.is_stopped() {
            return false;
        }
        let applied = {
            let mut apply = self.apply.lock();
            let applied = apply.apply_loop.step();
            if !apply.apply_loop.has_queued() {
                apply.lag = 0;
            }
            applied
        };
        applied && watching::step(&self.shared, self.state.as_ref())
    }

    fn apply_pending(&mut self) -> bool {
        self.apply.lock().apply_loop.has_queued()
    }

    fn apply_lag(&self) -> u64 {
        self.apply.lock().lag
    }
}

/// The shard every key lives in until the key space is split.
pub const FIRST_SHARD: ShardId = ShardId(1);

/// Inbox capacity of the store loop. Beyond it, proposals get `too many requests` and peer
/// messages are dropped (Raft retransmits).
const INBOX_CAPACITY: usize = 16 * 1024;
/// Apply queue capacity, in batches of committed entries.
const APPLY_QUEUE_CAPACITY: usize = 1024;
/// Committed entries apply may trail by before new proposals are refused with `too many
/// requests` (etcd's `maxGapBetweenApplyAndCommitIndex`).
const MAX_APPLY_GAP: u64 = 5000;

/// Receives the chunks of an incoming snapshot and hands it to the store loop when complete.
pub struct SnapshotSink {
    shared: Arc<Shared>,
    shard: ShardId,
    message: Message,
    spool: Spool,
}

impl SnapshotSink {
    /// Appends one verified chunk.
    ///
    /// # Errors
    /// `Storage` if the chunk cannot be spooled to disk.
    pub fn write_chunk(&mut self, data: &[u8]) -> Result<(), NodeError> {
        self.spool.write(data)
    }

    /// All chunks arrived: hand the snapshot to Raft.
    ///
    /// # Errors
    /// `Storage` if the spool file cannot be synced, `TooManyRequests` if the store loop's
    /// inbox is full (the leader retries), `Stopped`.
    pub fn finish(self) -> Result<(), NodeError> {
        let path = self.spool.complete()?;
        let metadata = self.message.get_snapshot().get_metadata();
        let key = (self.shard, metadata.index, metadata.term);
        self.shared.snapshots.add_incoming(key, path);
        let msg = StoreMsg::SnapshotArrived {
            shard: self.shard,
            message: self.message,
        };
        match self.shared.inbox.try_send(msg) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(NodeError::TooManyRequests),
            Err(TrySendError::Disconnected(_)) => Err(NodeError::Stopped),
        }
    }
}

/// A handle to a running node. Cheap to clone.
#[derive(Clone)]
pub struct Node {
    shared: Arc<Shared>,
}

impl Node {
    /// Opens the node's state (state machine, then the log suffix it has not applied) and
    /// starts the store loop and the apply task. A node whose log is empty bootstraps shard 1
    /// with `config.initial_members`.
    ///
    /// # Errors
    /// `Storage` if the stores fail to open or disagree (corruption is fail-stop).
    pub fn start<L: LogStore, S: storage::KvStore>(
        config: NodeConfig,
        log: Arc<L>,
        kv: S,
        transport: Arc<dyn Transport>,
    ) -> Result<Node, NodeError> {
        let (node, store_loop, apply_loop) = Self::build(config, log, kv, transport)?;
        let shared = node.shared.clone();
        let store = apply_loop.store();
        // A panic in either thread is a broken invariant: the member must stop serving, not
        // limp on without its loop. Record it as a failure the server acts on.
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            let failed = shared.clone();
            let thread_name = name.to_string();
            std::thread::Builder::new()
                .name(name.to_string())
                .spawn(move || {
                    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err() {
                        failed.fail(format!("{thread_name} thread panicked"));
                    }
                })
                .map_err(|e| NodeError::Storage(format!("spawn {name}: {e}")))
        };
        let store_thread = spawn("store-loop", Box::new(move || store_loop.run()))?;
        let apply_thread = spawn("apply", Box::new(move || apply_loop.run()))?;
        let sync_shared = shared.clone();
        let watch_thread = spawn(
            "watch-sync",
            Box::new(move || watching::run(&sync_shared, store.as_ref())),
        )?;
        let lessor_shared = shared.clone();
        let lessor_thread = spawn("lessor", Box::new(move || leases::run(&lessor_shared)))?;
        shared
            .life
            .add_threads([store_thread, apply_thread, watch_thread, lessor_thread]);
        Ok(node)
    }

    /// Opens the node as [`Node::start`] does but runs no thread of its own: the caller
    /// drives it with [`Driver::step`] (or its halves, [`Driver::step_store`] and
    /// [`Driver::step_apply`]), on a manual clock (`config.clock`), so that a whole
    /// cluster can run in one thread, the same way every time.
    ///
    /// # Errors
    /// As [`Node::start`].
    pub fn start_driven<L: LogStore, S: storage::KvStore>(
        config: NodeConfig,
        log: Arc<L>,
        kv: S,
        transport: Arc<dyn Transport>,
    ) -> Result<(Node, Driver), NodeError> {
        let (node, mut store_loop, apply_loop) = Self::build(config, log, kv, transport)?;
        let state = apply_loop.store();
        // The store loop runs the apply queue itself when it must wait for room in it (no
        // other thread would apply), so the two share the apply loop.
        let apply = Arc::new(Mutex::new(DrivenApply { apply_loop, lag: 0 }));
        let inline = apply.clone();
        store_loop.set_inline_apply(Box::new(move || inline.lock().drain()));
        let driven = DrivenNode {
            shared: node.shared.clone(),
            store_loop,
            apply,
            state,
        };
        Ok((
            node,
            Driver {
                inner: Box::new(driven),
            },
        ))
    }

    /// The node and its two loops, not yet running.
    fn build<L: LogStore, S: storage::KvStore>(
        config: NodeConfig,
        log: Arc<L>,
        kv: S,
        transport: Arc<dyn Transport>,
    ) -> Result<(Node, StoreLoop<L>, ApplyLoop<S>), NodeError> {
        let store = Arc::new(
            mvcc::Store::open(kv).map_err(|e| NodeError::Storage(format!("state machine: {e}")))?,
        );
        let durable = store.durable_applied();
        let shard = FIRST_SHARD;
        let members = store.members();
        recover_log(&config, log.as_ref(), shard, durable, &members)?;
        snapshot::clear_spool(&config.snapshot_dir);

        let (inbox_tx, inbox_rx) = std::sync::mpsc::sync_channel(INBOX_CAPACITY);
        let (apply_tx, apply_rx) = std::sync::mpsc::sync_channel(APPLY_QUEUE_CAPACITY);
        let state: Arc<dyn StateReader> = store.clone();
        // Request ids must not repeat across restarts while old entries may still be
        // applied, nor may ReadIndex contexts (taken from the same counter): start from the
        // wall clock, in nanoseconds, past any id of an earlier run (which took fewer than one
        // id per nanosecond); on a manual clock, from the manual time, which only moves
        // forward, so that a simulation repeats itself.
        let first_request_id = if config.clock.is_manual() {
            config.clock.elapsed().as_nanos() as u64 + 1
        } else {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        };
        let shared = Arc::new(Shared {
            config: config.clone(),
            inbox: inbox_tx,
            transport,
            state: state.clone(),
            waiters: Waiters::new(config.max_pending_proposals, first_request_id),
            raft: RaftView::new(log.last_index(shard)),
            progress: Progress::new(durable.index, members),
            life: Lifecycle::default(),
            snapshots: SnapshotFiles::default(),
            watch_hub: ::watch::Hub::new(store.current_revision(), config.watch),
            lessor: leases::Lessor::default(),
        });

        let mut raft_config = RaftConfig::new(config.node_id.0);
        raft_config.election_ticks = config.election_ticks;
        raft_config.heartbeat_ticks = config.heartbeat_ticks;
        raft_config.applied = durable.index;
        let snapshots = Arc::new(StateSnapshots {
            state,
            log: log.clone(),
            outgoing: shared.snapshots.outgoing(),
        });
        let peer = consensus::new_peer(
            &raft_config,
            PeerStorage::new(shard, log.clone(), snapshots),
        )
        .map_err(|e| NodeError::Storage(format!("raft: {e}")))?;
        tracing::info!(
            node_id = config.node_id.0,
            shard_id = shard.0,
            index = durable.index,
            term = durable.term,
            "starting"
        );

        let (conf_tx, conf_rx) = std::sync::mpsc::channel();
        let store_loop = StoreLoop::new(
            shared.clone(),
            log,
            BTreeMap::from([(shard, peer)]),
            inbox_rx,
            apply_tx,
            conf_rx,
        );
        let apply_loop = ApplyLoop::new(store, shared.clone(), apply_rx, conf_tx);
        Ok((Node { shared }, store_loop, apply_loop))
    }

    /// Stops the loops and answers waiting requests with `Stopped`. Idempotent. Entries
    /// applied but not yet durable in the state machine are replayed from the log at the next
    /// start.
    pub fn shutdown(&self) {
        self.shared.life.stop();
        let _ = self.shared.inbox.try_send(StoreMsg::Wake);
        self.shared.watch_hub.wake();
        self.shared.life.join();
        self.shared.waiters.clear();
    }

    /// Resolves when the member hits a fatal error (storage failure or corruption), with its
    /// description. The member no longer serves after that; the process should exit.
    pub async fn failed(&self) -> String {
        let mut failure = self.shared.life.failure();
        let result = failure.wait_for(Option::is_some).await;
        match result {
            Ok(failure) => failure.clone().unwrap_or_default(),
            // The sender lives in `Shared`, which this handle keeps alive.
            Err(_) => unreachable!("failure channel closed while a handle exists"),
        }
    }

    /// Proposes a write and waits until it is applied locally; returns its result and the
    /// revision after it. Any member may be asked: Raft forwards the proposal to the leader.
    ///
    /// # Errors
    /// `TooManyRequests`, `Timeout` (outcome unknown), `Stopped`.
    pub async fn propose(&self, command: Command) -> Result<Applied, NodeError> {
        let shared = &self.shared;
        let (request_id, rx) = self.submit(&command)?;
        match tokio::time::timeout(shared.config.request_timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(NodeError::Stopped),
            Err(_) => {
                shared.waiters.forget_proposal(request_id);
                Err(NodeError::Timeout)
            }
        }
    }

    /// Hands a write to the store loop without waiting for it: the receiver gets its result
    /// once it is applied here (or `Stopped`). For callers that drive the node themselves;
    /// [`Node::propose`] is this with a deadline.
    ///
    /// # Errors
    /// `TooManyRequests`, `Stopped`.
    pub fn submit(
        &self,
        command: &Command,
    ) -> Result<(u64, oneshot::Receiver<Result<Applied, NodeError>>), NodeError> {
        submit_command(&self.shared, FIRST_SHARD, command)
    }

    /// Waits until this member has applied everything committed before the call (ReadIndex).
    /// Then a local read is linearizable.
    ///
    /// # Errors
    /// `Timeout` (no leader answered in time), `Stopped`.
    pub async fn read_index(&self) -> Result<(), NodeError> {
        let shared = &self.shared;
        let deadline = tokio::time::Instant::now() + shared.config.request_timeout;
        let rx = self.submit_read()?;
        let index = match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(result)) => result?,
            Ok(Err(_)) => return Err(NodeError::Stopped),
            Err(_) => return Err(NodeError::Timeout),
        };
        let mut applied = shared.progress.subscribe();
        let reached = tokio::time::timeout_at(deadline, applied.wait_for(|a| *a >= index))
            .await
            .map(|waited| waited.is_ok());
        match reached {
            Ok(true) => Ok(()),
            Ok(false) => Err(NodeError::Stopped),
            Err(_) => Err(NodeError::Timeout),
        }
    }

    /// Joins the next ReadIndex round without waiting: the receiver gets the index this
    /// member must have applied (see [`Node::applied_index`]) before a local read is
    /// linearizable. For callers that drive the node themselves; [`Node::read_index`] is this
    /// with the wait and a deadline.
    ///
    /// # Errors
    /// `TooManyRequests` when as many reads as proposals may wait already wait (for the next
    /// round, or in rounds not answered yet); `Stopped`.
    pub fn submit_read(&self) -> Result<oneshot::Receiver<Result<u64, NodeError>>, NodeError> {
        let shared = &self.shared;
        if shared.is_stopped() {
            return Err(NodeError::Stopped);
        }
        let (tx, rx) = oneshot::channel();
        shared.waiters.add_read(tx)?;
        // A full inbox is fine: the loop picks the read up on its next iteration anyway.
        let _ = shared.inbox.try_send(StoreMsg::Wake);
        Ok(rx)
    }

    /// Changes the cluster's membership through Raft (adding, removing or promoting a
    /// member changes the Raft configuration, one member at a time) and waits until it is
    /// applied here; returns the members after it.
    ///
    /// # Errors
    /// etcd's membership errors (`Mvcc(MemberExists | PeerUrlExists | MemberNotFound |
    /// MemberNotLearner)`), `TooManyRequests` (another configuration change is still
    /// pending), `Timeout`, `Stopped`.
    pub async fn change_membership(
        &self,
        change: MembershipChange,
    ) -> Result<Vec<Member>, NodeError> {
        let applied = self.propose(Command::Membership(change)).await?;
        match applied.result {
            Ok(CommandResponse::Membership(members)) => Ok(members),
            Ok(other) => Err(NodeError::Storage(format!(
                "a membership change answered {other:?}"
            ))),
            Err(e) => Err(NodeError::Mvcc(e)),
        }
    }

    /// Hands leadership to voter `to` (etcd's MoveLeader) and waits until it leads.
    ///
    /// # Errors
    /// `NotLeader` if this member does not lead; `BadLeaderTransferee` if `to` is not a
    /// voting member; `LeaderTransferTimeout` if it does not lead within the request
    /// timeout; `Stopped`.
    pub async fn move_leader(&self, to: u64) -> Result<(), NodeError> {
        let shared = &self.shared;
        let me = shared.config.node_id.0;
        if shared.raft.leader() != me {
            return Err(NodeError::NotLeader(shared.raft.leader()));
        }
        let voter = self.members().iter().any(|m| m.id == to && !m.is_learner);
        if !voter {
            return Err(NodeError::BadLeaderTransferee);
        }
        if to == me {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + shared.config.request_timeout;
        let msg = StoreMsg::TransferLeader { to: NodeId(to) };
        shared.inbox.try_send(msg).map_err(|e| match e {
            TrySendError::Full(_) => NodeError::TooManyRequests,
            TrySendError::Disconnected(_) => NodeError::Stopped,
        })?;
        while shared.raft.leader() != to {
            if shared.is_stopped() {
                return Err(NodeError::Stopped);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(NodeError::LeaderTransferTimeout);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// A backup of this member's state machine, from one consistent view, in chunks: the
    /// records, then their SHA-256 (see [`restore_backup`]).
    ///
    /// # Errors
    /// `Storage` if no view can be taken; each chunk may fail the same way.
    pub fn backup(
        &self,
    ) -> Result<impl Iterator<Item = Result<Vec<u8>, NodeError>> + Send, NodeError> {
        backup::chunks(
            self.shared.state.as_ref(),
            self.shared.config.snapshot_keys.clone(),
        )
    }

    /// The cluster's members as of this member's applied index, in id order.
    pub fn members(&self) -> Vec<Member> {
        self.shared.progress.members()
    }

    /// Whether member `id` was removed from the cluster, as of this member's applied index
    /// (ids are never reused). Called for every batch of Raft messages: a current member
    /// is answered from the published membership, without the state machine's index lock,
    /// which apply holds for a whole batch.
    pub fn was_removed(&self, id: NodeId) -> bool {
        !self.shared.progress.is_member(id.0) && self.shared.state.was_removed(id.0)
    }

    /// A peer refused this member's traffic because the cluster removed it: it missed its
    /// own removal (the leader stops sending to a member as soon as it is removed, so the
    /// commit of that removal may never reach it). It stops for good, as if it had applied
    /// the removal.
    pub fn removed_by_peer(&self, peer: NodeId) {
        tracing::error!(
            peer_id = format!("{:x}", peer.0),
            "a peer says this member was removed from the cluster"
        );
        self.shared.fail(REMOVED.to_string());
    }

    /// Whether this member is a learner, as of its applied index.
    pub fn is_learner(&self) -> bool {
        self.shared.progress.is_learner(self.id().0)
    }

    /// Follows the cluster's members: the receiver sees every change this member applies.
    pub fn watch_members(&self) -> tokio::sync::watch::Receiver<Vec<Member>> {
        self.shared.progress.watch_members()
    }

    /// The leader's view of every member's replication (its own entry included); `None`
    /// unless this member leads.
    pub fn peer_progress(&self) -> Option<Vec<PeerProgress>> {
        self.shared.raft.progress()
    }

    /// The index of the last entry applied to this member's state machine.
    pub fn applied_index(&self) -> u64 {
        self.shared.progress.applied()
    }

    /// Reads local state (serializable). Call after [`Node::read_index`] for linearizable.
    ///
    /// # Errors
    /// `Compacted`, `FutureRevision`, storage errors.
    pub fn range(&self, req: &RangeRequest) -> Result<(RangeResponse, Revision), NodeError> {
        Ok(self.shared.state.range(req)?)
    }

    /// Serves a read-only txn from local state (serializable). Call after
    /// [`Node::read_index`] for linearizable.
    ///
    /// # Errors
    /// As [`mvcc::Store::read_txn`].
    pub fn read_txn(&self, req: &TxnRequest) -> Result<(TxnResponse, Revision), NodeError> {
        Ok(self.shared.state.read_txn(req)?)
    }

    /// etcd's defragmentation of this member's state machine: rewrites its file so that the
    /// space compaction freed goes back to the file system. Applying waits meanwhile (the
    /// store loop does not: Raft goes on, and entries queue for apply); reads go on.
    ///
    /// # Errors
    /// `Storage` if the rewrite failed; the state machine is then as it was.
    pub async fn defragment(&self) -> Result<(), NodeError> {
        let state = self.shared.state.clone();
        tokio::task::spawn_blocking(move || state.defragment())
            .await
            .map_err(|e| NodeError::Storage(format!("defragment: {e}")))??;
        Ok(())
    }

    /// etcd's HashKV on local state.
    ///
    /// # Errors
    /// As [`mvcc::Store::hash_kv`].
    pub fn hash_kv(&self, revision: Revision) -> Result<(u32, Revision, Revision), NodeError> {
        Ok(self.shared.state.hash_kv(revision)?)
    }

    /// A snapshot of this member's status.
    pub fn status(&self) -> NodeStatus {
        let shared = &self.shared;
        NodeStatus {
            member_id: shared.config.node_id.0,
            cluster_id: shared.config.cluster_id,
            leader: shared.raft.leader(),
            term: shared.raft.term(),
            raft_index: shared.raft.last_index(),
            commit_index: shared.raft.commit_index(),
            applied_index: shared.progress.applied(),
            revision: shared.state.current_revision(),
            db_size: shared.state.size_bytes(),
            db_size_in_use: shared.state.bytes_in_use(),
            ticks: shared.raft.ticks(),
        }
    }

    /// How long a request may wait before `etcdserver: request timed out`.
    pub fn request_timeout(&self) -> Duration {
        self.shared.config.request_timeout
    }

    /// This member's id.
    pub fn id(&self) -> NodeId {
        self.shared.config.node_id
    }

    /// The election timeout (ticks times the tick interval).
    pub fn election_timeout(&self) -> Duration {
        let config = &self.shared.config;
        config.tick_interval * u32::try_from(config.election_ticks).unwrap_or(u32::MAX)
    }

    /// Every lease, with its attached keys (local state: call [`Node::read_index`] first for
    /// a linearizable answer).
    pub fn leases(&self) -> Vec<Lease> {
        self.shared.state.leases()
    }

    /// A lease, with its attached keys and its granted TTL (local state, as
    /// [`Node::leases`]). The time it has left is the leader's: [`Node::lease_remaining`].
    pub fn lease(&self, id: LeaseId) -> Option<Lease> {
        self.shared.state.lease(id)
    }

    /// Renews lease `id` as the leader, from its lessor's memory: no log write unless a
    /// checkpoint of the lease must be cleared first (see `leases`). Returns the granted TTL.
    ///
    /// # Errors
    /// `NotLeader` (with the leader this member knows of) when this member does not lead or
    /// is not yet the primary lessor; `Mvcc(LeaseNotFound)` for an unknown or expired lease;
    /// `Timeout`, `Stopped`.
    pub async fn renew_lease(&self, id: LeaseId) -> Result<i64, NodeError> {
        // Two rounds at most: a renewal that had to clear a checkpoint renews after it.
        for _ in 0..2 {
            let term = self.confirm_leadership().await?;
            let now = self.shared.config.clock.now();
            match self.shared.lessor.renew(id, term, now) {
                Ok(leases::Renewal::Renewed(ttl)) => return Ok(ttl),
                Ok(leases::Renewal::ClearCheckpoint) => {
                    let clear = Command::LeaseCheckpoint(vec![mvcc::LeaseCheckpoint {
                        id,
                        remaining_ttl: 0,
                    }]);
                    self.propose(clear).await?.result?;
                }
                Err(NodeError::NotLeader(_)) => return Err(NodeError::NotLeader(self.leader())),
                Err(e) => return Err(e),
            }
        }
        // Another checkpoint was proposed while this one cleared: the client retries.
        Err(NodeError::Timeout)
    }

    /// The time lease `id` has left by the leader's lessor; `None` if it does not exist.
    ///
    /// # Errors
    /// As [`Node::renew_lease`].
    pub async fn lease_remaining(&self, id: LeaseId) -> Result<Option<Duration>, NodeError> {
        let term = self.confirm_leadership().await?;
        let now = self.shared.config.clock.now();
        self.shared
            .lessor
            .remaining(id, term, now)
            .map_err(|_| NodeError::NotLeader(self.leader()))
    }

    /// Confirms that this member still leads (a ReadIndex round) and has become the primary
    /// lessor of its term; returns the term.
    async fn confirm_leadership(&self) -> Result<u64, NodeError> {
        let shared = &self.shared;
        let is_leader = || shared.raft.leader() == shared.config.node_id.0;
        if !is_leader() {
            return Err(NodeError::NotLeader(self.leader()));
        }
        let term = shared.raft.term();
        self.read_index().await?;
        // The read index is at least the leader's first entry of its term, now applied.
        leases::maybe_promote(shared);
        if !is_leader() || shared.raft.term() != term {
            return Err(NodeError::NotLeader(self.leader()));
        }
        Ok(term)
    }

    /// The current revision of the local state.
    pub fn current_revision(&self) -> Revision {
        self.shared.state.current_revision()
    }

    /// An id no other call on any member returns (for leases granted without one): this
    /// member's id in the top bits, a request counter below, always positive and non-zero.
    pub fn unique_id(&self) -> i64 {
        let counter = self.shared.waiters.next_id();
        let member = self.shared.config.node_id.0.rotate_left(48) & 0x7fff_0000_0000_0000;
        let id = (member ^ (counter & 0x0000_ffff_ffff_ffff)) & 0x7fff_ffff_ffff_ffff;
        (id.max(1)) as i64
    }

    /// The leader this member knows of, 0 if none.
    pub fn leader(&self) -> u64 {
        self.shared.raft.leader()
    }

    /// The watchers of this member: the Watch API opens its streams here.
    pub fn watch_hub(&self) -> &Arc<::watch::Hub> {
        &self.shared.watch_hub
    }

    /// What a response header names: `(cluster id, member id, current term)`. Cheaper than
    /// [`Node::status`], which also asks storage for its size.
    pub fn header_fields(&self) -> (u64, u64, u64) {
        let shared = &self.shared;
        (
            shared.config.cluster_id,
            shared.config.node_id.0,
            shared.raft.term(),
        )
    }

    /// Bytes the data occupies in the state machine (what the backend quota counts).
    pub fn bytes_in_use(&self) -> u64 {
        self.shared.state.bytes_in_use()
    }

    /// The alarms active in this member's applied state.
    pub fn alarms(&self) -> Vec<AlarmMember> {
        self.shared.state.alarms()
    }

    /// Delivers messages received from `from` to the store loop. Drops them if its inbox is
    /// full: Raft retransmits.
    pub fn step(&self, from: NodeId, envelopes: Vec<Envelope>) {
        let _ = self
            .shared
            .inbox
            .try_send(StoreMsg::Step { from, envelopes });
    }

    /// Starts receiving a snapshot from `from`; `message` is the encoded `MsgSnapshot`.
    ///
    /// # Errors
    /// `Stopped`; `Storage` if the message is not a snapshot or the spool file cannot be
    /// created.
    pub fn receive_snapshot(
        &self,
        from: NodeId,
        shard: ShardId,
        message: &[u8],
    ) -> Result<SnapshotSink, NodeError> {
        if self.shared.is_stopped() {
            return Err(NodeError::Stopped);
        }
        let message = Message::parse_from_bytes(message)
            .map_err(|e| NodeError::Storage(format!("undecodable snapshot message: {e}")))?;
        if message.get_msg_type() != MessageType::MsgSnapshot || message.from != from.0 {
            return Err(NodeError::Storage(
                "snapshot stream does not start with a snapshot message from its sender".into(),
            ));
        }
        let seq = self.shared.snapshots.next_seq();
        let name = format!("{}-{}-{}.part", shard.0, from.0, seq);
        let config = &self.shared.config;
        let spool = Spool::create(&config.snapshot_dir, &name, config.snapshot_keys.clone())?;
        Ok(SnapshotSink {
            shared: self.shared.clone(),
            shard,
            message,
            spool,
        })
    }

    /// The transport could not reach `to`.
    pub fn report_unreachable(&self, to: NodeId) {
        let _ = self.shared.inbox.try_send(StoreMsg::Unreachable { to });
    }

    /// The outcome of an [`OutgoingSnapshot`] sent to `to`.
    pub fn report_snapshot(&self, to: NodeId, shard: ShardId, delivered: bool) {
        let _ = self.shared.inbox.try_send(StoreMsg::SnapshotSent {
            to,
            shard,
            delivered,
        });
    }
}

/// The message of a member that finds itself removed from the cluster.
pub const REMOVED: &str = "the member has been permanently removed from the cluster";

/// Brings the log in line with the state machine before Raft starts.
///
/// - An empty node of a new cluster bootstraps the shard: one conf change entry per initial
///   member (the same entries on every member, committed at term 1), which the state
///   machine applies like any later membership change, and those members as voters.
/// - Raft starts with the configuration of the members the state machine records (as of
///   its durable applied index); later conf changes in the log are applied again as they are
///   replayed. A member the state machine says was removed does not start.
/// - A state machine ahead of the log means a crash interrupted a snapshot install after the
///   state machine took it: record the snapshot in the log now.
/// - The persisted commit index may lag what was applied (commit advances are persisted with
///   the next hard state); raise it, since applied entries were committed.
fn recover_log<L: LogStore>(
    config: &NodeConfig,
    log: &L,
    shard: ShardId,
    durable: mvcc::AppliedIndex,
    members: &[Member],
) -> Result<(), NodeError> {
    let storage_error = |e: storage::StorageError| NodeError::Storage(e.to_string());
    let state = log.state(shard).map_err(storage_error)?;
    let mut write = ShardLogWrite {
        shard,
        ..Default::default()
    };
    let fresh = state.conf_state.voters.is_empty() && log.last_index(shard) == 0;
    if fresh && durable.index == 0 && !config.initial_members.is_empty() {
        let (entries, conf_state) = bootstrap_entries(&config.initial_members);
        write.hard_state = Some(consensus::HardState {
            term: 1,
            commit: entries.len() as u64,
            ..Default::default()
        });
        write.entries = entries;
        write.conf_state = Some(conf_state);
        log.write(vec![write], true).map_err(storage_error)?;
        return Ok(());
    }
    if !members.is_empty() {
        if !members.iter().any(|m| m.id == config.node_id.0) {
            return Err(NodeError::Storage(REMOVED.into()));
        }
        let conf_state = consensus::conf_state_of(members.iter().map(|m| (m.id, m.is_learner)));
        if conf_state != state.conf_state {
            write.conf_state = Some(conf_state);
        }
    }
    let truncated = log.first_index(shard) - 1;
    if durable.index < truncated {
        return Err(NodeError::Storage(format!(
            "state machine at index {} is behind the compacted log at {}: entries are missing",
            durable.index, truncated
        )));
    }
    // The state machine holds a snapshot the log does not record when the log ends before
    // it, or has another entry at its index: a deposed leader's divergent tail, which the
    // install replaced (taking it for committed would apply entries that never were).
    let log_disagrees = durable.index > log.last_index(shard)
        || (durable.index > truncated && log.term(shard, durable.index).ok() != Some(durable.term));
    if durable.index > 0 && log_disagrees {
        tracing::warn!(
            shard_id = shard.0,
            index = durable.index,
            term = durable.term,
            "completing an interrupted snapshot install"
        );
        write.install_snapshot = Some((durable.index, durable.term));
    }
    if state.hard_state.commit < durable.index {
        let mut hard_state = state.hard_state.clone();
        hard_state.commit = durable.index;
        write.hard_state = Some(hard_state);
    }
    if write.conf_state.is_some() || write.install_snapshot.is_some() || write.hard_state.is_some()
    {
        log.write(vec![write], true).map_err(storage_error)?;
    }
    Ok(())
}

/// The first entries of a new cluster's log: one `AddNode` conf change per member, in id
/// order, at term 1, identical on every member; and the configuration they make.
fn bootstrap_entries(members: &[Member]) -> (Vec<consensus::Entry>, consensus::ConfState) {
    let mut members = members.to_vec();
    members.sort_by_key(|m| m.id);
    let entries = members
        .iter()
        .enumerate()
        .map(|(i, member)| {
            let change = MembershipChange::Add(Member {
                is_learner: false,
                ..member.clone()
            });
            let context = proposal::encode(0, 0, &Command::Membership(change));
            let cc = consensus::conf_change(consensus::ConfChangeType::AddNode, member.id, context);
            let mut entry = consensus::Entry::default();
            entry.set_entry_type(consensus::EntryType::EntryConfChange);
            entry.index = i as u64 + 1;
            entry.term = 1;
            entry.data = cc
                .write_to_bytes()
                .expect("encoding a conf change cannot fail")
                .into();
            entry
        })
        .collect();
    let conf_state = consensus::conf_state_of(members.iter().map(|m| (m.id, false)));
    (entries, conf_state)
}

/// Hands `command` to the store loop for `shard`, as a plain entry or, for membership
/// changes of the Raft configuration, as a conf change; see [`Node::submit`].
fn submit_command(
    shared: &Shared,
    shard: ShardId,
    command: &Command,
) -> Result<(u64, oneshot::Receiver<Result<Applied, NodeError>>), NodeError> {
    if shared.is_stopped() {
        return Err(NodeError::Stopped);
    }
    let committed = shared.raft.commit_index();
    if committed > shared.progress.applied() + MAX_APPLY_GAP {
        return Err(NodeError::TooManyRequests);
    }
    let (request_id, rx) = shared.waiters.add_proposal()?;
    let encoded = proposal::encode(shared.config.node_id.0, request_id, command);
    let data = match command {
        Command::Membership(change) => match conf_change_of(change) {
            Some((change_type, node_id)) => {
                Proposed::ConfChange(consensus::conf_change(change_type, node_id, encoded))
            }
            None => Proposed::Entry(encoded),
        },
        _ => Proposed::Entry(encoded),
    };
    let msg = StoreMsg::Propose {
        shard,
        request_id,
        data,
    };
    if let Err(e) = shared.inbox.try_send(msg) {
        shared.waiters.forget_proposal(request_id);
        return Err(match e {
            TrySendError::Full(_) => NodeError::TooManyRequests,
            TrySendError::Disconnected(_) => NodeError::Stopped,
        });
    }
    Ok((request_id, rx))
}

/// What a proposal puts in the log.
#[derive(Clone, Debug)]
pub(crate) enum Proposed {
    /// A normal entry: the encoded proposal.
    Entry(Vec<u8>),
    /// A conf change, the encoded proposal in its context.
    ConfChange(consensus::ConfChange),
}

/// The Raft conf change a membership change makes, if it changes the configuration.
fn conf_change_of(change: &MembershipChange) -> Option<(consensus::ConfChangeType, u64)> {
    use consensus::ConfChangeType::{AddLearnerNode, AddNode, RemoveNode};
    match change {
        MembershipChange::Add(member) if member.is_learner => Some((AddLearnerNode, member.id)),
        MembershipChange::Add(member) => Some((AddNode, member.id)),
        MembershipChange::Remove(id) => Some((RemoveNode, *id)),
        MembershipChange::Promote(id) => Some((AddNode, *id)),
        MembershipChange::UpdatePeers { .. } | MembershipChange::Publish { .. } => None,
    }
}

#[cfg(test)]
mod tests;
