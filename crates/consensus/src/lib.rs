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
    ConfChange, ConfChangeType, ConfState, Entry, EntryType, HardState, Message, MessageType,
    Snapshot, SnapshotMetadata,
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
    ///   draws from a global RNG); [`ElectionJitter`] supplies seeded jitter instead. The
    ///   campaign timeout is one tick past the election timeout, so that a follower's lease
    ///   on its leader (the CheckQuorum vote guard, measured in the same ticks) has expired
    ///   on every follower by the time the first one campaigns.
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
            min_election_tick: self.election_ticks + 1,
            max_election_tick: self.election_ticks + 2,
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

/// Seeded election jitter, one per shard replica.
///
/// With raft's own randomisation off, every follower would time out after exactly the same
/// number of ticks and split votes forever. Instead a replica ticks normally until its
/// election timeout has passed (so every follower's lease on the dead leader ends at the
/// same time, and none refuses a pre-vote because it is still in lease), then withholds a
/// random number of ticks, drawn once from our seed in `0..election_ticks - 1`, before the
/// tick that makes it campaign: campaigns start between `T + 1` and `2T - 1` ticks after
/// the last word from the leader, like etcd's `[T, 2T)`, and a simulation replays them.
/// Leaders always tick: their heartbeats and quorum checks must stay on time.
#[derive(Clone, Debug)]
pub struct ElectionJitter {
    rng: seeded::Rng,
    /// Ticks still withheld before this replica's campaign, once its timeout has passed.
    hold: Option<u64>,
}

impl ElectionJitter {
    /// A jitter source from `seed`.
    #[must_use]
    pub fn new(seed: u64) -> Self {
        Self {
            rng: seeded::Rng::new(seed),
            hold: None,
        }
    }

    /// Ticks `peer` unless this tick is withheld; returns whether raft has something to do.
    pub fn tick<L: LogStore>(&mut self, peer: &mut Peer<L>) -> bool {
        let raft = &peer.raft;
        let tick = self.should_tick(raft.state, raft.election_elapsed, raft.election_timeout());
        tick && peer.tick()
    }

    /// Whether a replica in `role`, `elapsed` ticks since it last heard from a leader (or
    /// since it campaigned) with an election timeout of `timeout` ticks, gets this tick.
    pub fn should_tick(&mut self, role: StateRole, elapsed: usize, timeout: usize) -> bool {
        if role == StateRole::Leader || elapsed < timeout {
            self.hold = None;
            return true;
        }
        let span = (timeout as u64).saturating_sub(1).max(1);
        let rng = &mut self.rng;
        let hold = self.hold.get_or_insert_with(|| rng.below(span));
        if *hold == 0 {
            self.hold = None;
            return true;
        }
        *hold -= 1;
        false
    }
}

/// What the driver knows of a replica's Raft state, so that no other crate reads the raft
/// crate's internals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RaftStatus {
    /// Leader, follower, candidate or pre-candidate.
    pub role: StateRole,
    /// The leader this replica knows of, 0 if none.
    pub leader_id: u64,
    /// The current term.
    pub term: u64,
    /// The commit index.
    pub committed: u64,
    /// The last index in the log (persisted or not).
    pub last_index: u64,
    /// The applied index Raft was told of.
    pub applied: u64,
}

/// The replica's Raft state.
pub fn status<L: LogStore>(peer: &Peer<L>) -> RaftStatus {
    let raft = &peer.raft;
    RaftStatus {
        role: raft.state,
        leader_id: raft.leader_id,
        term: raft.term,
        committed: raft.raft_log.committed,
        last_index: raft.raft_log.last_index(),
        applied: raft.raft_log.applied,
    }
}

/// Whether the replica leads and is handing leadership over: Raft drops every proposal
/// meanwhile, its own and those followers forward.
pub fn transferring<L: LogStore>(peer: &Peer<L>) -> bool {
    peer.raft.state == StateRole::Leader && peer.raft.lead_transferee.is_some()
}

/// Whether the replica's commit index has reached an entry of its current term: from then on
/// the leader of that term answers ReadIndex requests (it ignores them before).
pub fn committed_in_current_term<L: LogStore>(peer: &Peer<L>) -> bool {
    let raft = &peer.raft;
    raft.raft_log.term(raft.raft_log.committed).ok() == Some(raft.term)
}

/// The transport lost `to`: its connection broke, or was refused. Raft hears of it (a
/// replicating leader slows down to probing); and a follower whose leader it is stops
/// waiting out its lease on it: the leader's process is most likely gone, and waiting a
/// whole election timeout for silence to prove it would double the failover time. Safe
/// whatever the truth: leases only keep disruptive candidates out, and if the leader is
/// alive, its next heartbeat restores the lease, and the other followers, still hearing it,
/// refuse this one's pre-votes.
pub fn report_unreachable<L: LogStore>(peer: &mut Peer<L>, to: u64) {
    peer.report_unreachable(to);
    let raft = &mut peer.raft;
    if raft.state == StateRole::Follower && raft.leader_id == to {
        raft.election_elapsed = raft.election_elapsed.max(raft.election_timeout());
    }
}

/// What a leader knows of one member's replication.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerProgress {
    /// The member.
    pub id: u64,
    /// The highest log index known to be replicated on it.
    pub matched: u64,
    /// Whether the leader heard from it lately (Raft's flag here; the node makes it "within
    /// the last election timeout").
    pub recent_active: bool,
    /// Whether it is a learner.
    pub is_learner: bool,
}

/// The leader's view of every member's replication, in id order; `None` unless `peer` leads.
pub fn progress<L: LogStore>(peer: &Peer<L>) -> Option<Vec<PeerProgress>> {
    let raft = &peer.raft;
    if raft.state != StateRole::Leader {
        return None;
    }
    let learners = raft.prs().conf().learners();
    let mut members: Vec<PeerProgress> = raft
        .prs()
        .iter()
        .map(|(&id, pr)| PeerProgress {
            id,
            // The leader's own progress is its log.
            matched: if id == raft.id {
                raft.raft_log.last_index()
            } else {
                pr.matched
            },
            recent_active: id == raft.id || pr.recent_active,
            is_learner: learners.contains(&id),
        })
        .collect();
    members.sort_by_key(|m| m.id);
    Some(members)
}

/// Whether a conf change may still be unapplied here: a leader would turn a new one into an
/// empty entry.
pub fn has_pending_conf_change<L: LogStore>(peer: &Peer<L>) -> bool {
    peer.raft.has_pending_conf()
}

/// A single-member conf change (Raft's simple, one-at-a-time changes) carrying `context`.
#[must_use]
pub fn conf_change(change_type: ConfChangeType, node_id: u64, context: Vec<u8>) -> ConfChange {
    let mut cc = ConfChange::default();
    cc.set_change_type(change_type);
    cc.node_id = node_id;
    cc.context = context.into();
    cc
}

/// The conf change a committed `EntryConfChange` entry carries.
///
/// # Errors
/// The entry's data does not decode.
pub fn decode_conf_change(data: &[u8]) -> Result<ConfChange, String> {
    ConfChange::parse_from_bytes(data).map_err(|e| e.to_string())
}

/// The voters and learners of a configuration, from `(id, is_learner)` pairs.
pub fn conf_state_of(members: impl IntoIterator<Item = (u64, bool)>) -> ConfState {
    let mut conf_state = ConfState::default();
    for (id, is_learner) in members {
        if is_learner {
            conf_state.learners.push(id);
        } else {
            conf_state.voters.push(id);
        }
    }
    conf_state
}

#[cfg(test)]
mod tests;
