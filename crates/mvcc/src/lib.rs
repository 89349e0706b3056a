//! The etcd data model over a [`storage::KvStore`]: revisions, keys, txn, compaction.
//!
//! Like etcd's bbolt backend, every version of every key is stored under its revision in
//! [`Table::Revisions`], and an index `key -> versions` is kept in memory and rebuilt from
//! storage at open. The index holds each version's metadata (revision, create revision,
//! version, lease, tombstone); values are read from storage.
//!
//! Revisions follow etcd exactly: a fresh store is at revision 1; every command that changes
//! something gets the next main revision, and its changes get sub-revisions 0, 1, ... in
//! order. Commands that change nothing, and commands that fail, leave the revision alone.
//!
//! Invariants:
//! - The applied index is written in the same storage batch as the data it describes.
//! - Readers never see an index entry whose value storage cannot serve: the index lock is
//!   held while a batch is committed to storage, and a reader opens its storage snapshot
//!   while holding the lock.
//! - One writer at a time (the apply task, a restore or a defragmentation: `Store::writer`);
//!   any number of readers.
//!
//! This crate reads no clock, draws no randomness, knows no protobuf and does IO only through
//! `KvStore`.
//!
//! Layout:
//! - `lib.rs`: [`Store`] and its API (open, apply, reads, history, leases, alarms, snapshot
//!   and restore, HashKV), [`MvccError`], and the re-export of the public types.
//! - `types`: the commands, requests, responses, events and leases of the data model.
//! - `codec`: the persisted encoding of a [`Command`] (what a Raft log entry carries).
//! - `encoding`: how the state is stored: revision keys, version records, lease records,
//!   alarm keys and the meta counters.
//! - `index`: the in-memory index (every key's versions, the leases, the counters), its
//!   queries, and its rebuild from storage at open.
//! - `read`: range reads and the read-only view of one revision a txn's compares and checks
//!   use, which also serves read-only txns.
//! - `execute`: running each command against the index (put, delete, txn, compact, alarms,
//!   leases, checkpoints), undoing a failed one, and the alarms' gating of writes.

mod codec;
mod encoding;
mod execute;
mod index;
mod read;
mod types;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};
pub use types::*;

use storage::{KvSnapshot, KvStore, StorageError, Table, WriteOp};

use encoding::{
    decode_record, decode_rev_key, event, meta_i64, put_meta, rev_key, META_APPLIED_INDEX,
    META_APPLIED_TERM, META_CURRENT_REVISION,
};
use execute::{refused_by_alarms, Execution};
use index::{load_index, Index};
use read::{range_at, ValueSource, View};

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
    /// `etcdserver: lease already exists`
    #[error("lease already exists")]
    LeaseExists,
    /// `etcdserver: too large lease TTL`
    #[error("too large lease TTL")]
    LeaseTtlTooLarge,
    /// `etcdserver: mvcc: database space exceeded`: the NOSPACE alarm is raised and the
    /// command would add data.
    #[error("mvcc: database space exceeded")]
    NoSpace,
    /// `etcdserver: corrupt cluster`: the CORRUPT alarm is raised and the command writes.
    #[error("corrupt cluster")]
    Corrupt,
    /// `etcdserver: member ID already exist`
    #[error("member ID already exist")]
    MemberExists,
    /// `etcdserver: Peer URLs already exists`
    #[error("Peer URLs already exists")]
    PeerUrlExists,
    /// `etcdserver: member not found` (also for an id that was removed)
    #[error("member not found")]
    MemberNotFound,
    /// `etcdserver: can only promote a learner member`
    #[error("can only promote a learner member")]
    MemberNotLearner,
    /// The storage engine failed or holds data that does not decode. Fail-stop for the
    /// applier.
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

/// The members recorded in a view of the state machine (see [`Store::snapshot_view`]), in
/// id order.
///
/// # Errors
/// Storage errors; `Storage` if a record does not decode.
pub fn members_of(view: &dyn KvSnapshot) -> Result<Vec<Member>, MvccError> {
    index::members_of(view)
}

/// The current revision, if a stored record of a state machine (as a snapshot or a backup
/// carries them) is the one that holds it.
#[must_use]
pub fn current_revision_record(table: Table, key: &[u8], value: &[u8]) -> Option<Revision> {
    (table == Table::Meta && key == encoding::META_CURRENT_REVISION)
        .then(|| value.try_into().ok().map(i64::from_be_bytes))
        .flatten()
}

/// The longest lease TTL etcd grants, in seconds (`MaxLeaseTTL`).
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

/// etcd's range end for every key starting with `prefix`: the prefix with trailing 0xff
/// bytes dropped and its last byte incremented; `[0]` (every key from `prefix` on) when
/// nothing is left.
#[must_use]
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The multi-version store of one shard.
pub struct Store<S: KvStore> {
    kv: S,
    index: RwLock<Index>,
    /// The current revision and the bytes in use, as of the last batch or restore: read
    /// without the index lock, which a long apply or a snapshot restore holds for its whole
    /// duration, so that status and quota checks never wait for one.
    current: AtomicI64,
    bytes: AtomicU64,
    /// Held by whatever writes to `kv` (apply, restore, defragmentation), taken before the
    /// index lock: a long defragmentation holds writes back without holding the index, so
    /// reads go on.
    writer: Mutex<()>,
}

impl<S: KvStore> Store<S> {
    /// Opens the store, rebuilding the in-memory key index from `kv`.
    ///
    /// # Errors
    /// Storage errors, or `Storage` if persisted data cannot be decoded.
    pub fn open(kv: S) -> Result<Self, MvccError> {
        let index = load_index(&kv.snapshot()?)?;
        Ok(Self {
            kv,
            current: AtomicI64::new(index.current),
            bytes: AtomicU64::new(index.bytes),
            index: RwLock::new(index),
            writer: Mutex::new(()),
        })
    }

    /// Applies committed entries in order in one storage write; returns one result per entry
    /// whose `command` is `Some`. The applied index (the last entry's) is written atomically
    /// with the data. `durable` asks the storage to persist this and every earlier batch.
    ///
    /// # Errors
    /// Only storage failures, including one met while executing a command: the member must
    /// stop (its state now differs from what it reports), never count it as that command's
    /// failure and go on. etcd errors are inside each [`Applied`].
    ///
    /// # Panics
    /// If the entries do not follow the applied index one by one, or their terms go back: a
    /// duplicate or a gap means the log and the state machine disagree, and applying it
    /// would diverge from every other member.
    pub fn apply_batch(
        &self,
        entries: &[ApplyEntry<'_>],
        durable: bool,
    ) -> Result<Vec<Applied>, MvccError> {
        self.apply_batch_with_events(entries, durable, EventsWanted::None)
            .map(|(results, _)| results)
    }

    /// [`Store::apply_batch`], also returning the events of the changes made, in revision
    /// order, as `wanted` asks.
    ///
    /// # Errors
    /// Only storage failures (fail-stop); etcd errors are inside each [`Applied`].
    pub fn apply_batch_with_events(
        &self,
        entries: &[ApplyEntry<'_>],
        durable: bool,
        wanted: EventsWanted,
    ) -> Result<(Vec<Applied>, Vec<Event>), MvccError> {
        let Some(last) = entries.last() else {
            return Ok((Vec::new(), Vec::new()));
        };
        let mut events = Vec::new();
        let _writer = self.writer.lock();
        let snapshot = self.kv.snapshot()?;
        let mut index = self.index.write();
        let (mut previous, mut term) = (index.applied.index, index.applied.term);
        for entry in entries {
            assert_eq!(
                entry.index,
                previous + 1,
                "entry {} applied after entry {previous}",
                entry.index
            );
            assert!(
                entry.term >= term,
                "entry {} of term {} applied after term {term}",
                entry.index,
                entry.term
            );
            (previous, term) = (entry.index, entry.term);
        }
        let revision_before = index.current;
        let mut pending = HashMap::new();
        let mut ops = Vec::new();
        let mut results = Vec::new();
        for entry in entries {
            let Some(command) = entry.command else {
                continue;
            };
            let mut execution = Execution {
                main: index.current + 1,
                index: &mut index,
                snapshot: &snapshot,
                pending: &mut pending,
                ops: Vec::new(),
                sub: 0,
                touched: Vec::new(),
                wanted,
                events: Vec::new(),
            };
            let result = match refused_by_alarms(&execution.index.alarms, command) {
                Some(refused) => Err(refused),
                None => execution.run(command),
            };
            if result.is_err() {
                execution.undo();
            } else {
                execution.attach_touched();
            }
            if let Err(MvccError::Storage(detail)) = result {
                return Err(MvccError::Storage(format!(
                    "applying entry {}: {detail}",
                    entry.index
                )));
            }
            let wrote = execution.sub > 0;
            let main = execution.main;
            ops.append(&mut execution.ops);
            events.append(&mut execution.events);
            if wrote {
                index.current = main;
            }
            results.push(Applied {
                result,
                revision: index.current,
            });
        }
        assert!(index.current >= revision_before, "the revision went back");
        put_meta(&mut ops, META_CURRENT_REVISION, index.current);
        put_meta(&mut ops, META_APPLIED_INDEX, last.index as i64);
        put_meta(&mut ops, META_APPLIED_TERM, last.term as i64);
        // Committed while the index lock is held: no reader sees the new index entries before
        // storage can serve their values.
        self.kv.write(ops, durable)?;
        index.applied = AppliedIndex {
            index: last.index,
            term: last.term,
        };
        if durable {
            index.durable = index.applied;
        }
        self.publish(&index);
        Ok((results, events))
    }

    /// Serves a range at `req.revision` (or current). Returns the response and the current
    /// revision (the header revision).
    ///
    /// # Errors
    /// `Compacted`, `FutureRevision`, storage errors.
    pub fn range(&self, req: &RangeRequest) -> Result<(RangeResponse, Revision), MvccError> {
        let index = self.index.read();
        let snapshot = self.kv.snapshot()?;
        let pending = HashMap::new();
        let values = ValueSource {
            pending: &pending,
            snapshot: &snapshot,
        };
        let response = range_at(&index, &values, req, index.current)?;
        Ok((response, index.current))
    }

    /// Serves a read-only txn ([`TxnRequest::is_read_only`]) from the current state, as
    /// etcd serves those without the log. Returns the response and the header revision.
    ///
    /// # Errors
    /// As the same txn applied: `Compacted`, `FutureRevision`; storage errors.
    pub fn read_txn(&self, req: &TxnRequest) -> Result<(TxnResponse, Revision), MvccError> {
        let index = self.index.read();
        let snapshot = self.kv.snapshot()?;
        let pending = HashMap::new();
        let view = View {
            index: &index,
            values: ValueSource {
                pending: &pending,
                snapshot: &snapshot,
            },
            at: index.current,
        };
        let path = view.checked_path(req)?;
        let response = view.read_path(req, &path, &mut 0)?;
        Ok((response, index.current))
    }

    /// The events of revisions `from..=to` as the store retains them, in revision order, for
    /// watchers catching up. The read stops at the end of the first revision at which it has
    /// gathered `max_bytes` of keys and values, so a revision is never split;
    /// [`History::through`] says how far it got. With `with_prev_kv` every event carries the
    /// key's previous version, when that is retained and not a deletion.
    ///
    /// # Errors
    /// `Compacted` if `from` is below the compaction revision (events there are gone),
    /// `FutureRevision` if `to` is past the current revision; storage errors.
    pub fn history(
        &self,
        from: Revision,
        to: Revision,
        max_bytes: usize,
        with_prev_kv: bool,
    ) -> Result<History, MvccError> {
        let index = self.index.read();
        if from < index.compacted {
            return Err(MvccError::Compacted);
        }
        if to > index.current {
            return Err(MvccError::FutureRevision);
        }
        let mut history = History {
            events: Vec::new(),
            through: to,
        };
        if to < from {
            return Ok(history);
        }
        let snapshot = self.kv.snapshot()?;
        let pending = HashMap::new();
        let values = ValueSource {
            pending: &pending,
            snapshot: &snapshot,
        };
        let (start, end) = (rev_key((from.max(0), 0)), rev_key((to + 1, 0)));
        let mut bytes = 0usize;
        let mut failure = None;
        snapshot.scan(Table::Revisions, &start, Some(&end), &mut |key, value| {
            let read = decode_rev_key(key)
                .and_then(|rev| decode_record(rev, value))
                .and_then(|(key, version, value)| {
                    let last = history.events.last().map(Event::revision);
                    if bytes >= max_bytes && last.is_some_and(|last| version.rev.0 > last) {
                        history.through = last.unwrap_or(to);
                        return Ok(false);
                    }
                    bytes += key.len() + value.len();
                    let prev_kv = if with_prev_kv {
                        index
                            .previous(&key, version.rev)
                            .map(|previous| values.key_value(&key, &previous, true))
                            .transpose()?
                    } else {
                        None
                    };
                    history.events.push(event(&key, &version, value, prev_kv));
                    Ok(true)
                });
            read.unwrap_or_else(|e| {
                failure = Some(e);
                false
            })
        })?;
        match failure {
            Some(e) => Err(e),
            None => Ok(history),
        }
    }

    /// Every lease, in id order, with its attached keys.
    pub fn leases(&self) -> Vec<Lease> {
        let index = self.index.read();
        index
            .leases
            .iter()
            .map(|(id, lease)| lease.to_lease(*id))
            .collect()
    }

    /// One lease, with its attached keys.
    pub fn lease(&self, id: LeaseId) -> Option<Lease> {
        self.index
            .read()
            .leases
            .get(&id)
            .map(|lease| lease.to_lease(id))
    }

    /// The current revision.
    pub fn current_revision(&self) -> Revision {
        self.current.load(Ordering::Acquire)
    }

    /// Publishes what readers may see without the index lock; called with the write lock.
    fn publish(&self, index: &Index) {
        self.current.store(index.current, Ordering::Release);
        self.bytes.store(index.bytes, Ordering::Release);
    }

    /// Bytes the stored records occupy (see [`Index`]'s `bytes`): what the backend quota
    /// counts, and what `Status` reports as the database size in use.
    pub fn bytes_in_use(&self) -> u64 {
        self.bytes.load(Ordering::Acquire)
    }

    /// The active alarms, in (member, type) order.
    pub fn alarms(&self) -> Vec<AlarmMember> {
        self.index.read().alarms.iter().copied().collect()
    }

    /// Makes a restored state machine that of a new cluster: forgets the old cluster's
    /// members, removed ids and log position (the new cluster's log starts again at 1),
    /// durably; keeps the data, revisions and leases.
    ///
    /// # Errors
    /// Storage errors.
    pub fn reset_for_new_cluster(&self) -> Result<(), MvccError> {
        let _writer = self.writer.lock();
        let mut index = self.index.write();
        let mut ops = Vec::new();
        for id in index.members.keys() {
            ops.push(WriteOp::Delete {
                table: Table::Meta,
                key: encoding::member_key(encoding::META_MEMBER_PREFIX, *id),
            });
        }
        for id in &index.removed {
            ops.push(WriteOp::Delete {
                table: Table::Meta,
                key: encoding::member_key(encoding::META_REMOVED_PREFIX, *id),
            });
        }
        put_meta(&mut ops, META_APPLIED_INDEX, 0);
        put_meta(&mut ops, META_APPLIED_TERM, 0);
        self.kv.write(ops, true)?;
        index.members.clear();
        index.removed.clear();
        index.applied = AppliedIndex::default();
        index.durable = AppliedIndex::default();
        Ok(())
    }

    /// The cluster's members, in id order.
    pub fn members(&self) -> Vec<Member> {
        self.index.read().members.values().cloned().collect()
    }

    /// Whether `id` was removed from the cluster (it can never come back).
    pub fn was_removed(&self, id: u64) -> bool {
        self.index.read().removed.contains(&id)
    }

    /// The compacted revision (-1 if never compacted, as etcd reports it).
    pub fn compact_revision(&self) -> Revision {
        self.index.read().compacted
    }

    /// The last applied entry (as visible to readers, durable or not).
    pub fn applied(&self) -> AppliedIndex {
        self.index.read().applied
    }

    /// The last applied entry whose batch was written durably: the log may be compacted up to
    /// here and no further.
    pub fn durable_applied(&self) -> AppliedIndex {
        self.index.read().durable
    }

    /// A consistent view of the whole state machine for a Raft snapshot, with the applied
    /// index that view corresponds to (read from the view itself, so the two always agree).
    ///
    /// # Errors
    /// Storage errors.
    pub fn snapshot_view(&self) -> Result<(S::Snapshot, AppliedIndex), MvccError> {
        let snapshot = self.kv.snapshot()?;
        let applied = AppliedIndex {
            index: meta_i64(&snapshot, META_APPLIED_INDEX)? as u64,
            term: meta_i64(&snapshot, META_APPLIED_TERM)? as u64,
        };
        Ok((snapshot, applied))
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
        entries: &mut dyn Iterator<Item = storage::Result<(Table, Vec<u8>, Vec<u8>)>>,
    ) -> Result<AppliedIndex, MvccError> {
        let _writer = self.writer.lock();
        let mut index = self.index.write();
        self.kv.restore(entries)?;
        *index = load_index(&self.kv.snapshot()?)?;
        self.publish(&index);
        Ok(index.applied)
    }

    /// etcd's HashKV: a CRC-32C over every retained version with revision `<= revision`
    /// (0 = current), in revision order. Returns `(hash, compact_revision, hash_revision)`.
    /// Equal state gives equal hashes on every member.
    ///
    /// # Errors
    /// `Compacted`, `FutureRevision`, storage errors.
    pub fn hash_kv(&self, revision: Revision) -> Result<(u32, Revision, Revision), MvccError> {
        let index = self.index.read();
        let snapshot = self.kv.snapshot()?;
        let (current, compacted) = (index.current, index.compacted);
        drop(index);
        let at = if revision <= 0 { current } else { revision };
        if at > current {
            return Err(MvccError::FutureRevision);
        }
        // As etcd 3.5.5 and later: the compacted revision itself is hashed (etcd 3.4 refused
        // it, which kept the leader's compaction-time hash check from ever comparing).
        if at < compacted {
            return Err(MvccError::Compacted);
        }
        let mut hash = 0u32;
        let end = rev_key((at + 1, 0));
        snapshot.scan(Table::Revisions, &[], Some(&end), &mut |key, value| {
            hash = crc32c::crc32c_append(hash, key);
            hash = crc32c::crc32c_append(hash, value);
            true
        })?;
        Ok((hash, compacted, at))
    }

    /// Rewrites the storage compactly (etcd's defragmentation), returning the space that
    /// compaction freed to the file system. Writes wait until it is done; reads go on.
    ///
    /// # Errors
    /// Storage errors; the store is then as it was.
    pub fn defragment(&self) -> Result<(), MvccError> {
        let _writer = self.writer.lock();
        self.kv.defragment()?;
        Ok(())
    }

    /// The underlying store (for snapshots and size).
    pub fn kv(&self) -> &S {
        &self.kv
    }
}

#[cfg(test)]
mod tests;
