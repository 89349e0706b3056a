//! The etcd data model over a [`storage::KvStore`]: revisions, keys, txn, compaction.
//!
//! SKELETON: the public API below is the contract with `node` and `api`; bodies are being
//! written.

mod types;

pub use types::*;

use storage::{KvStore, StorageError};

/// Errors etcd returns from the data model. `api` maps each to etcd's code and message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MvccError {
    /// `etcdserver: mvcc: required revision has been compacted`
    #[error("mvcc: required revision has been compacted")]
    Compacted,
    /// `etcdserver: mvcc: required revision is a future revision`
    #[error("mvcc: required revision is a future revision")]
    FutureRevision,
    /// `etcdserver: key not found` (ignore_value / ignore_lease on a missing key)
    #[error("key not found")]
    KeyNotFound,
    /// `etcdserver: requested lease not found`
    #[error("requested lease not found")]
    LeaseNotFound,
    /// The storage engine failed. Fail-stop for the applier.
    #[error("storage: {0}")]
    Storage(String),
}

impl From<StorageError> for MvccError {
    fn from(e: StorageError) -> Self {
        MvccError::Storage(e.to_string())
    }
}

/// Position of the state machine in the Raft log of its shard.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AppliedIndex {
    /// Index of the last applied entry.
    pub index: u64,
    /// Term of that entry.
    pub term: u64,
}

/// One committed log entry for [`Store::apply_batch`].
pub struct ApplyEntry<'a> {
    /// Log index of the entry.
    pub index: u64,
    /// Term of the entry.
    pub term: u64,
    /// The command, or `None` for entries that change nothing (empty entries, conf changes).
    pub command: Option<&'a Command>,
}

/// The multi-version store of one shard.
pub struct Store<S: KvStore> {
    kv: S,
}

impl<S: KvStore> Store<S> {
    /// Opens the store, rebuilding the in-memory key index from `kv`.
    ///
    /// # Errors
    /// Storage errors, or `Storage` if persisted data cannot be decoded.
    pub fn open(kv: S) -> Result<Self, MvccError> {
        Ok(Self { kv })
    }

    /// Applies committed entries in order in one storage write; returns one result per entry
    /// whose `command` is `Some`. The applied index (the last entry's) is written atomically
    /// with the data. `durable` asks the storage to persist this and every earlier batch.
    ///
    /// # Errors
    /// Only storage failures (fail-stop); etcd errors are inside each [`Applied`].
    pub fn apply_batch(
        &self,
        _entries: &[ApplyEntry<'_>],
        _durable: bool,
    ) -> Result<Vec<Applied>, MvccError> {
        unimplemented!()
    }

    /// Serves a range at `req.revision` (or current). Returns the response and the current
    /// revision (the header revision).
    ///
    /// # Errors
    /// `Compacted`, `FutureRevision`, storage errors.
    pub fn range(&self, _req: &RangeRequest) -> Result<(RangeResponse, Revision), MvccError> {
        unimplemented!()
    }

    /// The current revision.
    pub fn current_revision(&self) -> Revision {
        unimplemented!()
    }

    /// The compacted revision (0 if never compacted).
    pub fn compact_revision(&self) -> Revision {
        unimplemented!()
    }

    /// The last applied entry (as visible to readers, durable or not).
    pub fn applied(&self) -> AppliedIndex {
        unimplemented!()
    }

    /// The last applied entry whose batch was written durably: the log may be compacted up to
    /// here and no further.
    pub fn durable_applied(&self) -> AppliedIndex {
        unimplemented!()
    }

    /// A consistent view of the whole state machine for a Raft snapshot, with the applied
    /// index that view corresponds to (read from the view itself, so the two always agree).
    ///
    /// # Errors
    /// Storage errors.
    pub fn snapshot_view(&self) -> Result<(S::Snapshot, AppliedIndex), MvccError> {
        unimplemented!()
    }

    /// Replaces the whole state with a snapshot's `(table, key, value)` stream (as produced by
    /// scanning every table of a [`Store::snapshot_view`] in `Table::ALL` order), durably,
    /// then rebuilds the in-memory index. Afterwards `applied() == durable_applied()` is the
    /// snapshot's applied index.
    ///
    /// # Errors
    /// The stream's error or storage errors; on error the store is unchanged.
    pub fn restore(
        &self,
        _entries: &mut dyn Iterator<Item = storage::Result<(storage::Table, Vec<u8>, Vec<u8>)>>,
    ) -> Result<AppliedIndex, MvccError> {
        unimplemented!()
    }

    /// etcd's HashKV: a CRC-32C over every retained version with revision `<= revision`
    /// (0 = current) and above the compaction point, in revision order. Returns
    /// `(hash, compact_revision, hash_revision)`. Equal state gives equal hashes on every member.
    ///
    /// # Errors
    /// `Compacted`, `FutureRevision`, storage errors.
    pub fn hash_kv(&self, _revision: Revision) -> Result<(u32, Revision, Revision), MvccError> {
        unimplemented!()
    }

    /// The underlying store (for snapshots and size).
    pub fn kv(&self) -> &S {
        &self.kv
    }
}
