//! Narrow storage traits for a Concord node, and their in-memory implementations.
//!
//! Two stores, kept apart as TiKV keeps `RaftEngine` and `KvEngine`:
//!
//! - [`LogStore`]: the durable Raft log and hard state of every shard on a node. One instance
//!   per node; one [`LogStore::write`] call persists the Ready of every shard at once, which is
//!   what makes group commit (one fsync per store-loop iteration) possible.
//! - [`KvStore`]: the state machine's ordered key-value tables. Writes are atomic batches;
//!   reads go through a consistent point-in-time [`KvSnapshot`].
//!
//! This crate owns no file format and does no IO: `storage-disk` implements the traits on disk,
//! [`MemLogStore`] and [`MemKvStore`] implement them in memory for tests and simulation, and
//! [`faulty`] wraps them with a disk's failure modes (failed writes, unsynced data lost in a
//! crash) for the simulation.
//! The `testing` feature adds a conformance suite that every implementation runs.
//!
//! Log entries and hard state are the `raft-proto` types: the on-disk log engine stores them
//! as they are, and converting every entry on the hot path would buy nothing.

pub mod faulty;
mod mem;
#[cfg(feature = "testing")]
pub mod testing;

pub use mem::{MemKvStore, MemLogStore};
pub use raft_proto::eraftpb::{ConfState, Entry, HardState};

/// Identifies a shard: a key range and its Raft group. There is one shard (id 1) for now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardId(pub u64);

/// Identifies a node (a process); equal to its etcd member id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u64);

/// What can go wrong in a store.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// Stored data failed a checksum or could not be decoded. Fail-stop: the member must not
    /// serve. The message names the file and offset where the engine knows them.
    #[error("storage corruption: {0}")]
    Corruption(String),
    /// The operating system refused an operation (disk full, permission, IO error).
    #[error("storage io error: {0}")]
    Io(String),
    /// The requested log entries were discarded by compaction or a snapshot.
    #[error("log entries compacted")]
    Compacted,
    /// The requested log entries do not exist yet.
    #[error("log entries unavailable")]
    Unavailable,
    /// The caller broke the store's contract (for example, appended a gap).
    #[error("storage contract violated: {0}")]
    Contract(String),
}

/// Result alias for storage operations.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// The persisted state of one shard's log, as read back at startup.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ShardLogState {
    /// Raft hard state (term, vote, commit). Default when never written.
    pub hard_state: HardState,
    /// Raft configuration (voters, learners). Default when never written.
    pub conf_state: ConfState,
    /// Index of the last entry discarded by compaction or snapshot install (0 if none).
    pub truncated_index: u64,
    /// Term of the entry at `truncated_index` (0 if none).
    pub truncated_term: u64,
}

/// Changes to one shard's log, applied in this order: `install_snapshot`, `compact_to`,
/// `entries`, `hard_state`, `conf_state`.
#[derive(Clone, Debug, Default)]
pub struct ShardLogWrite {
    /// The shard being changed.
    pub shard: ShardId,
    /// A snapshot at `(index, term)` was installed: every entry is discarded and the
    /// truncated state becomes `(index, term)`, so the next entry appended is `index + 1`.
    pub install_snapshot: Option<(u64, u64)>,
    /// Discard every entry with index `<= index`; the truncated state becomes
    /// `(index, term)`. `index` must not exceed the last index. Compacting to or below the
    /// current truncated index is a no-op.
    pub compact_to: Option<(u64, u64)>,
    /// Entries to append, contiguous and ascending. The first must be at most
    /// `last_index + 1`; any stored entries at or after its index are replaced (Raft
    /// overwrites a conflicting suffix this way).
    pub entries: Vec<Entry>,
    /// New hard state, if changed.
    pub hard_state: Option<HardState>,
    /// New configuration, if changed.
    pub conf_state: Option<ConfState>,
}

/// The durable Raft log of every shard on a node.
///
/// Contract:
/// - [`LogStore::write`] is atomic across all shards in the batch: after a crash either all of
///   it is visible or none of it. With `sync = true`, it returns only once the batch is on
///   stable storage; an acknowledged write must survive a power cut.
/// - Reads see every completed write, synced or not.
/// - Corruption found while opening or reading is an error, never silently skipped: a log with
///   a hole would let a member acknowledge history it no longer has.
/// - One writer at a time (the store loop); reads may come from any thread.
pub trait LogStore: Send + Sync + 'static {
    /// Persists changes to one or more shards in one atomic batch.
    ///
    /// # Errors
    /// `Io` if the write or fsync failed (the member must stop: Raft state is then unknown),
    /// `Contract` if an append would leave a gap.
    fn write(&self, batch: Vec<ShardLogWrite>, sync: bool) -> Result<()>;

    /// The shards that have any persisted state.
    fn shards(&self) -> Vec<ShardId>;

    /// The persisted state of a shard, or the default if it has none.
    ///
    /// # Errors
    /// `Corruption` if stored metadata cannot be decoded.
    fn state(&self, shard: ShardId) -> Result<ShardLogState>;

    /// Entries in `[low, high)`, stopping early once their total encoded size exceeds
    /// `max_bytes` (at least one entry is always returned when the range is not empty).
    ///
    /// # Errors
    /// `Compacted` if `low <= truncated_index`, `Unavailable` if `high > last_index + 1`,
    /// `Corruption` if a stored entry fails its checksum.
    fn entries(&self, shard: ShardId, low: u64, high: u64, max_bytes: u64) -> Result<Vec<Entry>>;

    /// The term of the entry at `index` (also answers for `truncated_index`).
    ///
    /// # Errors
    /// `Compacted` below the truncated index, `Unavailable` past the last index.
    fn term(&self, shard: ShardId, index: u64) -> Result<u64>;

    /// Index of the first entry still stored: `truncated_index + 1`.
    fn first_index(&self, shard: ShardId) -> u64;

    /// Index of the last entry stored, or `truncated_index` if there is none.
    fn last_index(&self, shard: ShardId) -> u64;

    /// Reclaims disk space freed by compaction. Cheap to call when there is nothing to do.
    ///
    /// # Errors
    /// `Io` if the engine could not rewrite or delete its files.
    fn purge(&self) -> Result<()>;
}

/// The tables of the state machine. A closed set: adding one is a format change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// Small named values: applied index and term, current and compacted revision, ...
    Meta,
    /// Every retained version of every key, keyed by encoded revision.
    Revisions,
    /// Leases and their attached keys.
    Leases,
}

impl Table {
    /// Every table, in a fixed order (snapshots stream them in this order).
    pub const ALL: [Table; 3] = [Table::Meta, Table::Revisions, Table::Leases];

    /// A stable name, used by engines that name their tables.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Table::Meta => "meta",
            Table::Revisions => "revisions",
            Table::Leases => "leases",
        }
    }
}

/// One change inside a [`KvStore::write`] batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteOp {
    /// Insert or overwrite `key` in `table`.
    Put {
        /// Target table.
        table: Table,
        /// Key bytes.
        key: Vec<u8>,
        /// Value bytes.
        value: Vec<u8>,
    },
    /// Remove `key` from `table` (absent keys are ignored).
    Delete {
        /// Target table.
        table: Table,
        /// Key bytes.
        key: Vec<u8>,
    },
}

/// A consistent point-in-time view of a [`KvStore`]. Later writes are not visible through it.
pub trait KvSnapshot: Send + Sync + 'static {
    /// The value of `key` in `table`.
    ///
    /// # Errors
    /// `Io` or `Corruption` from the engine.
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// Visits the entries of `table` with `start <= key < end` (`end = None`: no upper bound)
    /// in ascending key order, until `visit` returns `false`.
    ///
    /// # Errors
    /// `Io` or `Corruption` from the engine.
    fn scan(
        &self,
        table: Table,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()>;
}

/// The state machine's ordered key-value tables.
///
/// Contract:
/// - [`KvStore::write`] is atomic. With `durable = false` it is visible to later snapshots
///   at once but may be lost in a crash, together with every later non-durable write (never
///   a later one without an earlier one); with `durable = true` it and everything before it
///   survive a crash once the call returns.
/// - One writer at a time; snapshots may be taken and read from any thread concurrently.
pub trait KvStore: Send + Sync + 'static {
    /// The snapshot type.
    type Snapshot: KvSnapshot;

    /// Applies `ops` atomically.
    ///
    /// # Errors
    /// `Io` if the engine failed; the store is then unchanged.
    fn write(&self, ops: Vec<WriteOp>, durable: bool) -> Result<()>;

    /// A consistent view of everything written so far.
    ///
    /// # Errors
    /// `Io` from the engine.
    fn snapshot(&self) -> Result<Self::Snapshot>;

    /// Replaces the whole content of every table with `entries`, durably and atomically
    /// (used to install a snapshot received from the leader). `entries` yields
    /// `(table, key, value)`; an `Err` from it aborts the restore and leaves the store as it was.
    ///
    /// # Errors
    /// The iterator's error, or `Io` from the engine.
    fn restore(
        &self,
        entries: &mut dyn Iterator<Item = Result<(Table, Vec<u8>, Vec<u8>)>>,
    ) -> Result<()>;

    /// Bytes the store occupies on its medium (the database file size).
    fn size_bytes(&self) -> u64;

    /// Rewrites the store compactly, returning the space freed by deletions to the medium
    /// (etcd's defragmentation). A write: never concurrent with `write` or `restore`.
    /// Snapshots taken before it stay readable; the content is unchanged, and durable on
    /// return.
    ///
    /// # Errors
    /// `Io` from the engine; the store is then as it was.
    fn defragment(&self) -> Result<()>;
}

/// A shared store is a store: lets a test keep a handle to the store it gave a node, so the
/// node can be stopped and started again on the same state.
impl<K: KvStore> KvStore for std::sync::Arc<K> {
    type Snapshot = K::Snapshot;

    fn write(&self, ops: Vec<WriteOp>, durable: bool) -> Result<()> {
        (**self).write(ops, durable)
    }

    fn snapshot(&self) -> Result<Self::Snapshot> {
        (**self).snapshot()
    }

    fn restore(
        &self,
        entries: &mut dyn Iterator<Item = Result<(Table, Vec<u8>, Vec<u8>)>>,
    ) -> Result<()> {
        (**self).restore(entries)
    }

    fn size_bytes(&self) -> u64 {
        (**self).size_bytes()
    }

    fn defragment(&self) -> Result<()> {
        (**self).defragment()
    }
}
