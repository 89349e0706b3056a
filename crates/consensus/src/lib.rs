//! The one crate that touches the `raft` crate.
//!
//! It owns three things and nothing else:
//!
//! - [`RaftConfig`]: our settings, turned into a `raft::Config` with the choices DESIGN.md
//!   fixes (PreVote, CheckQuorum, ReadIndex reads, no raft-internal randomness).
//! - [`PeerStorage`]: the adapter that lets a shard's `RawNode` read its log from a
//!   [`storage::LogStore`] and ask the node for a snapshot.
//! - [`ElectionJitter`]: election timeout randomisation from our own seed, so that a
//!   simulation replays the same elections from the same seed.
//!
//! It does no IO of its own, reads no clock and draws no OS randomness: time arrives as
//! `tick()` calls, randomness as a seed. Upgrading or replacing the Raft library touches this
//! crate and the node's driver loop only.

use std::sync::Arc;

use storage::{LogStore, ShardId, StorageError};

pub use raft::eraftpb::{
    ConfState, Entry, EntryType, HardState, Message, MessageType, Snapshot, SnapshotMetadata,
};
pub use raft::{
    Error as RaftError, LightReady, RawNode, ReadState, Ready, SnapshotStatus, SoftState,
    StateRole, StorageError as RaftStorageError,
};

/// Result type of the raft crate.
pub type RaftResult<T> = raft::Result<T>;

/// Re-exported so the driver can encode and decode Raft messages without its own dependency.
pub use protobuf::Message as ProtobufMessage;

/// Settings of one shard replica. Timings are in ticks; the node decides how long a tick is.
#[derive(Clone, Debug)]
pub struct RaftConfig {
    /// This replica's id (the node id; one replica per node per shard).
    pub id: u64,
    /// Ticks without a leader before a follower campaigns (before jitter).
    pub election_ticks: usize,
    /// Ticks between leader heartbeats.
    pub heartbeat_ticks: usize,
    /// The index the state machine has already applied; Raft hands out entries after it.
    pub applied: u64,
    /// Bytes of entries in one append message.
    pub max_size_per_msg: u64,
    /// Append messages in flight to one follower.
    pub max_inflight_msgs: usize,
    /// Bytes of committed entries handed out in one Ready.
    pub max_committed_size_per_ready: u64,
    /// Bytes of proposed but uncommitted entries before new proposals are dropped.
    pub max_uncommitted_size: u64,
}

impl RaftConfig {
    /// Defaults matching etcd's: 1 tick heartbeat, 10 ticks election timeout.
    #[must_use]
    pub fn new(id: u64) -> Self {
        Self {
            id,
            election_ticks: 10,
            heartbeat_ticks: 1,
            applied: 0,
            max_size_per_msg: 1024 * 1024,
            max_inflight_msgs: 256,
            max_committed_size_per_ready: 16 * 1024 * 1024,
            max_uncommitted_size: 256 * 1024 * 1024,
        }
    }

    /// The `raft::Config` with our fixed choices.
    ///
    /// - PreVote and CheckQuorum are on: a partitioned member cannot disrupt a healthy
    ///   leader, and an isolated leader steps down.
    /// - Reads use ReadIndex (`ReadOnlyOption::Safe`), never a clock-based lease.
    /// - `max_election_tick = min_election_tick + 1` removes raft's own randomisation (it
    ///   draws from a global RNG); [`ElectionJitter`] supplies seeded jitter instead.
    fn to_raft(&self) -> raft::Config {
        raft::Config {
            id: self.id,
            election_tick: self.election_ticks,
            heartbeat_tick: self.heartbeat_ticks,
            applied: self.applied,
            max_size_per_msg: self.max_size_per_msg,
            max_inflight_msgs: self.max_inflight_msgs,
            check_quorum: true,
            pre_vote: true,
            min_election_tick: self.election_ticks,
            max_election_tick: self.election_ticks + 1,
            read_only_option: raft::ReadOnlyOption::Safe,
            max_committed_size_per_ready: self.max_committed_size_per_ready,
            max_uncommitted_size: self.max_uncommitted_size,
            ..raft::Config::default()
        }
    }
}

/// Produces the Raft snapshot a lagging follower needs. Implemented by the node, which owns
/// the state machine; called by Raft on the store loop thread.
pub trait SnapshotSource: Send + Sync + 'static {
    /// A snapshot of the shard's state machine whose index is at least `request_index`, to be
    /// sent to replica `to`. The returned `Snapshot` carries only metadata and a small marker;
    /// the state itself travels on its own stream.
    ///
    /// # Errors
    /// `SnapshotTemporarilyUnavailable` if no snapshot can be made now (Raft retries later).
    fn snapshot(&self, shard: ShardId, request_index: u64, to: u64) -> raft::Result<Snapshot>;
}

/// The `raft::Storage` of one shard replica: its log lives in the node's [`LogStore`].
pub struct PeerStorage<L: LogStore> {
    shard: ShardId,
    log: Arc<L>,
    snapshots: Arc<dyn SnapshotSource>,
}

impl<L: LogStore> PeerStorage<L> {
    /// A view of `shard`'s log in `log`.
    pub fn new(shard: ShardId, log: Arc<L>, snapshots: Arc<dyn SnapshotSource>) -> Self {
        Self {
            shard,
            log,
            snapshots,
        }
    }
}

fn to_raft_error(e: StorageError) -> raft::Error {
    match e {
        StorageError::Compacted => raft::Error::Store(raft::StorageError::Compacted),
        StorageError::Unavailable => raft::Error::Store(raft::StorageError::Unavailable),
        other => raft::Error::Store(raft::StorageError::Other(Box::new(other))),
    }
}

impl<L: LogStore> raft::Storage for PeerStorage<L> {
    fn initial_state(&self) -> raft::Result<raft::RaftState> {
        let state = self.log.state(self.shard).map_err(to_raft_error)?;
        Ok(raft::RaftState::new(state.hard_state, state.conf_state))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: raft::GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let max_bytes = max_size.into().unwrap_or(u64::MAX);
        self.log
            .entries(self.shard, low, high, max_bytes)
            .map_err(to_raft_error)
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        self.log.term(self.shard, index).map_err(to_raft_error)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.log.first_index(self.shard))
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.log.last_index(self.shard))
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        self.snapshots.snapshot(self.shard, request_index, to)
    }
}

/// A shard replica: the raft crate's `RawNode` over our storage adapter.
pub type Peer<L> = RawNode<PeerStorage<L>>;

/// Creates a replica from `config` over `storage`, logging through `tracing`.
///
/// # Errors
/// The raft crate's configuration or storage errors.
pub fn new_peer<L: LogStore>(
    config: &RaftConfig,
    storage: PeerStorage<L>,
) -> Result<Peer<L>, RaftError> {
    let raft_config = config.to_raft();
    raft_config.validate()?;
    RawNode::new(&raft_config, storage, &logger())
}

/// The raft crate logs through `slog`; bridge it into `tracing` (events carry target `slog`).
/// Only warnings and errors pass: raft's info lines (every vote and term change, with file
/// paths) would drown a member's log, and the node logs role changes itself. The bridge's
/// events do not respond to `tracing` filter directives, so the level is set here.
fn logger() -> slog::Logger {
    use slog::Drain as _;
    let drain = slog::LevelFilter::new(tracing_slog::TracingSlogDrain, slog::Level::Warning);
    slog::Logger::root(drain.ignore_res(), slog::o!())
}

/// Seeded election jitter.
///
/// With raft's own randomisation off, every follower would time out after exactly
/// `election_ticks` and split votes forever. Instead the driver withholds ticks from
/// non-leaders at random: each tick is skipped with probability 1/3, which stretches the
/// timeout to about 1.5x its nominal value on average with a spread of a few ticks, like
/// etcd's `[T, 2T)` range, but decided by our seed. Leaders always tick: their heartbeats
/// and quorum checks must stay on time.
#[derive(Clone, Debug)]
pub struct ElectionJitter {
    rng: seeded::Rng,
}

impl ElectionJitter {
    /// A jitter source from `seed`.
    #[must_use]
    pub fn new(seed: u64) -> Self {
        Self {
            rng: seeded::Rng::new(seed),
        }
    }

    /// Whether a replica in `role` receives this tick.
    pub fn should_tick(&mut self, role: StateRole) -> bool {
        role == StateRole::Leader || !self.rng.next_u64().is_multiple_of(3)
    }
}

#[cfg(test)]
mod tests;
