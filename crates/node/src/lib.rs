//! The IO shell of a member: the store loop that drives consensus for every shard, the apply
//! task, proposals and linearizable reads.
//!
//! SKELETON: the public API below is the contract with `api` and `server`.

use std::sync::Arc;
use std::time::Duration;

pub use mvcc::{
    Applied, Command, CommandResponse, MvccError, RangeRequest, RangeResponse, Revision,
};
pub use storage::{NodeId, ShardId};

/// Settings of a node. Defaults follow etcd's.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// This node's id (its etcd member id).
    pub node_id: NodeId,
    /// The cluster id reported in response headers.
    pub cluster_id: u64,
    /// The initial voters of shard 1 (this node included). Used only to bootstrap a node
    /// whose log is empty.
    pub initial_voters: Vec<NodeId>,
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
    /// `etcdserver: request timed out`
    #[error("request timed out")]
    Timeout,
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
}

/// Receives the chunks of an incoming snapshot and hands it to the store loop when complete.
pub struct SnapshotSink {
    _private: (),
}

impl SnapshotSink {
    /// Appends one verified chunk.
    ///
    /// # Errors
    /// `Io`-like failures spooling the chunk.
    pub fn write_chunk(&mut self, _data: &[u8]) -> Result<(), NodeError> {
        unimplemented!()
    }

    /// All chunks arrived: hand the snapshot to Raft.
    ///
    /// # Errors
    /// The node stopped or the snapshot is malformed.
    pub fn finish(self) -> Result<(), NodeError> {
        unimplemented!()
    }
}

/// A handle to a running node. Cheap to clone.
#[derive(Clone)]
pub struct Node {
    _inner: Arc<()>,
}

impl Node {
    /// Opens the node's state (state machine, then the log suffix it has not applied) and
    /// starts the store loop and the apply task. A node whose log is empty bootstraps shard 1
    /// with `config.initial_voters`.
    ///
    /// # Errors
    /// `Storage` if the stores fail to open or disagree (corruption is fail-stop).
    pub fn start<L: storage::LogStore, S: storage::KvStore>(
        _config: NodeConfig,
        _log: Arc<L>,
        _kv: S,
        _transport: Arc<dyn Transport>,
    ) -> Result<Node, NodeError> {
        unimplemented!()
    }

    /// Stops the loops, answers waiting requests with `Stopped`, and flushes the state machine
    /// durably. Idempotent.
    pub fn shutdown(&self) {
        unimplemented!()
    }

    /// Proposes a write and waits until it is applied locally; returns its result and the
    /// revision after it. Any member may be asked: Raft forwards the proposal to the leader.
    ///
    /// # Errors
    /// `TooManyRequests`, `NoLeader`, `Timeout` (outcome unknown), `Stopped`.
    pub async fn propose(&self, _command: Command) -> Result<Applied, NodeError> {
        unimplemented!()
    }

    /// Waits until this member has applied everything committed before the call (ReadIndex).
    /// Then a local read is linearizable.
    ///
    /// # Errors
    /// `NoLeader`, `Timeout`, `Stopped`.
    pub async fn read_index(&self) -> Result<(), NodeError> {
        unimplemented!()
    }

    /// Reads local state (serializable). Call after [`Node::read_index`] for linearizable.
    ///
    /// # Errors
    /// `Compacted`, `FutureRevision`, storage errors.
    pub fn range(&self, _req: &RangeRequest) -> Result<(RangeResponse, Revision), NodeError> {
        unimplemented!()
    }

    /// etcd's HashKV on local state.
    ///
    /// # Errors
    /// As [`mvcc::Store::hash_kv`].
    pub fn hash_kv(&self, _revision: Revision) -> Result<(u32, Revision, Revision), NodeError> {
        unimplemented!()
    }

    /// A snapshot of this member's status.
    pub fn status(&self) -> NodeStatus {
        unimplemented!()
    }

    /// Delivers messages received from `from` to the store loop. Drops them if its inbox is
    /// full.
    pub fn step(&self, _from: NodeId, _envelopes: Vec<Envelope>) {
        unimplemented!()
    }

    /// Starts receiving a snapshot from `from`; `message` is the encoded `MsgSnapshot`.
    ///
    /// # Errors
    /// `Stopped`, or the message does not decode.
    pub fn receive_snapshot(
        &self,
        _from: NodeId,
        _shard: ShardId,
        _message: &[u8],
    ) -> Result<SnapshotSink, NodeError> {
        unimplemented!()
    }

    /// The transport could not reach `to`.
    pub fn report_unreachable(&self, _to: NodeId) {
        unimplemented!()
    }

    /// The outcome of an [`OutgoingSnapshot`] sent to `to`.
    pub fn report_snapshot(&self, _to: NodeId, _shard: ShardId, _delivered: bool) {
        unimplemented!()
    }
}
