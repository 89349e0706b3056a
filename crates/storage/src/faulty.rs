//! In-memory stores with a disk's failure modes, for simulation: a write can be made to fail,
//! and a crash keeps only what was synced plus some prefix of what was written after it, as a
//! power cut does to a page cache.
//!
//! Each store keeps two copies: the live one, which reads see (every completed write, synced
//! or not, as the traits promise), and the durable one, which a crash leaves behind. Writes
//! since the last sync wait in order; a crash keeps a prefix of them — never a later write
//! without an earlier one, which is what the traits promise for unsynced writes.

use std::sync::Arc;

use parking_lot::RwLock;

use crate::mem::MemKvSnapshot;
use crate::{
    Entry, KvStore, LogStore, MemKvStore, MemLogStore, Result, ShardId, ShardLogState,
    ShardLogWrite, StorageError, Table, WriteOp,
};

/// A medium the fault layer can wrap: it applies changes and can be copied.
trait Medium: Sized {
    /// One atomic write.
    type Change: Clone;
    fn apply(&self, change: Self::Change) -> Result<()>;
    fn copy(&self) -> Self;
}

impl Medium for MemLogStore {
    type Change = Vec<ShardLogWrite>;

    fn apply(&self, change: Self::Change) -> Result<()> {
        LogStore::write(self, change, true)
    }

    fn copy(&self) -> Self {
        MemLogStore::copy(self)
    }
}

/// The whole content of the tables, as a restore writes it: `(table, key, value)`.
type TableRows = Arc<Vec<(Table, Vec<u8>, Vec<u8>)>>;

/// A change to the state machine's tables.
#[derive(Clone)]
enum KvChange {
    Write(Vec<WriteOp>),
    Restore(TableRows),
}

impl Medium for MemKvStore {
    type Change = KvChange;

    fn apply(&self, change: KvChange) -> Result<()> {
        match change {
            KvChange::Write(ops) => KvStore::write(self, ops, true),
            KvChange::Restore(entries) => {
                KvStore::restore(self, &mut entries.iter().cloned().map(Ok))
            }
        }
    }

    fn copy(&self) -> Self {
        MemKvStore::copy(self)
    }
}

/// The live and durable copies of one store and the writes between them.
struct Disk<M: Medium> {
    live: Arc<M>,
    durable: M,
    /// Written since the last sync, oldest first.
    unsynced: Vec<M::Change>,
    /// Writes attempted so far.
    writes: u64,
    /// The write (by count) that fails, if one is planned.
    fail_at: Option<u64>,
    /// A planned failure happened; every later write fails too, until the crash.
    failed: bool,
    /// Syncs return without making anything durable: a disk that lies about fsync.
    ignore_sync: bool,
    /// Runs once, right after the next restore is durable (state machines only).
    after_restore: Option<RestoreHook>,
    /// Restores completed (state machines only).
    restores: u64,
}

/// What runs right after a state machine's restore; see [`FaultyKvStore::after_next_restore`].
pub type RestoreHook = Box<dyn FnOnce() + Send + Sync>;

impl<M: Medium> Disk<M> {
    fn new(medium: M) -> Self {
        Self {
            durable: medium.copy(),
            live: Arc::new(medium),
            unsynced: Vec::new(),
            writes: 0,
            fail_at: None,
            failed: false,
            ignore_sync: false,
            after_restore: None,
            restores: 0,
        }
    }

    fn write(&mut self, change: M::Change, sync: bool) -> Result<()> {
        self.writes += 1;
        if self.failed {
            return Err(StorageError::Io("the disk failed earlier".into()));
        }
        if self.fail_at == Some(self.writes) {
            // A failed write may or may not have reached the medium: leave it to the crash.
            self.failed = true;
            self.unsynced.push(change);
            return Err(StorageError::Io(format!(
                "injected failure of write {}",
                self.writes
            )));
        }
        self.live.apply(change.clone())?;
        self.unsynced.push(change);
        if sync && !self.ignore_sync {
            for change in self.unsynced.drain(..) {
                self.durable
                    .apply(change)
                    .expect("the durable copy accepts what the live copy accepted");
            }
        }
        Ok(())
    }

    /// Loses the unsynced writes after the first `keep` of them, and makes the result live.
    fn crash(&mut self, keep: usize) {
        let keep = keep.min(self.unsynced.len());
        for change in self.unsynced.drain(..).take(keep) {
            // A failed write that the medium would have refused changes nothing.
            let _ = self.durable.apply(change);
        }
        self.live = Arc::new(self.durable.copy());
        self.fail_at = None;
        self.failed = false;
        self.after_restore = None;
    }
}

/// What a test can do to a faulty store.
pub trait Faulty {
    /// Makes the `n`-th write from now (1 = the next) fail with an IO error, as a full or
    /// broken disk would; every write after it fails too, until [`Faulty::crash`].
    fn fail_write_after(&self, n: u64);
    /// Cancels a planned failure that has not happened yet (and a planned restore hook).
    fn cancel_failure(&self);
    /// Whether a planned failure has happened.
    fn has_failed(&self) -> bool;
    /// Writes since the last sync, which a crash may lose.
    fn unsynced_writes(&self) -> usize;
    /// A power cut: keeps what was synced and the first `keep` writes after it, loses the
    /// rest. The store then reads as it would after a restart; a failure plan (and a planned
    /// restore hook) is cleared.
    fn crash(&self, keep: usize);
    /// With `true`, syncs make nothing durable (a disk that lies about fsync): only for tests
    /// that show a simulation catches lost acknowledged writes.
    fn set_ignore_sync(&self, ignore: bool);
}

macro_rules! faulty_impl {
    ($store:ty) => {
        impl Faulty for $store {
            fn fail_write_after(&self, n: u64) {
                let mut disk = self.disk.write();
                disk.fail_at = Some(disk.writes + n.max(1));
            }

            fn cancel_failure(&self) {
                let mut disk = self.disk.write();
                disk.fail_at = None;
                disk.after_restore = None;
            }

            fn has_failed(&self) -> bool {
                self.disk.read().failed
            }

            fn unsynced_writes(&self) -> usize {
                self.disk.read().unsynced.len()
            }

            fn crash(&self, keep: usize) {
                self.disk.write().crash(keep);
            }

            fn set_ignore_sync(&self, ignore: bool) {
                self.disk.write().ignore_sync = ignore;
            }
        }
    };
}

/// A [`LogStore`] in memory that can fail writes and lose unsynced ones in a crash.
pub struct FaultyLogStore {
    disk: RwLock<Disk<MemLogStore>>,
}

impl Default for FaultyLogStore {
    fn default() -> Self {
        Self::new()
    }
}

impl FaultyLogStore {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        Self {
            disk: RwLock::new(Disk::new(MemLogStore::new())),
        }
    }

    fn live(&self) -> Arc<MemLogStore> {
        self.disk.read().live.clone()
    }
}

faulty_impl!(FaultyLogStore);

impl LogStore for FaultyLogStore {
    fn write(&self, batch: Vec<ShardLogWrite>, sync: bool) -> Result<()> {
        self.disk.write().write(batch, sync)
    }

    fn shards(&self) -> Vec<ShardId> {
        self.live().shards()
    }

    fn state(&self, shard: ShardId) -> Result<ShardLogState> {
        self.live().state(shard)
    }

    fn entries(&self, shard: ShardId, low: u64, high: u64, max_bytes: u64) -> Result<Vec<Entry>> {
        self.live().entries(shard, low, high, max_bytes)
    }

    fn term(&self, shard: ShardId, index: u64) -> Result<u64> {
        self.live().term(shard, index)
    }

    fn first_index(&self, shard: ShardId) -> u64 {
        self.live().first_index(shard)
    }

    fn last_index(&self, shard: ShardId) -> u64 {
        self.live().last_index(shard)
    }

    fn purge(&self) -> Result<()> {
        Ok(())
    }
}

/// A [`KvStore`] in memory that can fail writes and lose non-durable ones in a crash.
pub struct FaultyKvStore {
    disk: RwLock<Disk<MemKvStore>>,
}

impl Default for FaultyKvStore {
    fn default() -> Self {
        Self::new()
    }
}

impl FaultyKvStore {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        Self {
            disk: RwLock::new(Disk::new(MemKvStore::new())),
        }
    }

    /// Runs `then` once, right after the next restore (a snapshot install) is durable and
    /// before the restore returns to its caller: where a test plans a fault in the middle of
    /// an install, such as a failure of the Raft log's next write, which would have recorded
    /// the install. A crash or [`Faulty::cancel_failure`] drops it unrun.
    pub fn after_next_restore(&self, then: RestoreHook) {
        self.disk.write().after_restore = Some(then);
    }

    /// Restores (snapshot installs) completed so far, across crashes.
    #[must_use]
    pub fn restores(&self) -> u64 {
        self.disk.read().restores
    }
}

faulty_impl!(FaultyKvStore);

impl KvStore for FaultyKvStore {
    type Snapshot = MemKvSnapshot;

    fn write(&self, ops: Vec<WriteOp>, durable: bool) -> Result<()> {
        self.disk.write().write(KvChange::Write(ops), durable)
    }

    fn snapshot(&self) -> Result<MemKvSnapshot> {
        self.disk.read().live.snapshot()
    }

    fn restore(
        &self,
        entries: &mut dyn Iterator<Item = Result<(Table, Vec<u8>, Vec<u8>)>>,
    ) -> Result<()> {
        let entries = entries.collect::<Result<Vec<_>>>()?;
        let then = {
            let mut disk = self.disk.write();
            disk.write(KvChange::Restore(Arc::new(entries)), true)?;
            disk.restores += 1;
            disk.after_restore.take()
        };
        // Outside the lock: the hook may reach other stores, or this one.
        if let Some(then) = then {
            then();
        }
        Ok(())
    }

    fn size_bytes(&self) -> u64 {
        self.disk.read().live.size_bytes()
    }

    /// Memory holds nothing a rewrite would free.
    fn defragment(&self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            ..Default::default()
        }
    }

    fn append(index: u64) -> Vec<ShardLogWrite> {
        vec![ShardLogWrite {
            shard: ShardId(1),
            entries: vec![entry(index, 1)],
            ..Default::default()
        }]
    }

    fn put(key: &str) -> Vec<WriteOp> {
        vec![WriteOp::Put {
            table: Table::Meta,
            key: key.as_bytes().to_vec(),
            value: b"v".to_vec(),
        }]
    }

    #[test]
    fn a_crash_keeps_synced_writes_and_a_prefix_of_the_rest() {
        let log = FaultyLogStore::new();
        log.write(append(1), true).unwrap();
        log.write(append(2), false).unwrap();
        log.write(append(3), false).unwrap();
        log.write(append(4), false).unwrap();
        assert_eq!(log.last_index(ShardId(1)), 4, "reads see unsynced writes");
        assert_eq!(log.unsynced_writes(), 3);
        log.crash(1);
        assert_eq!(log.last_index(ShardId(1)), 2);
        assert_eq!(log.unsynced_writes(), 0);
        log.write(append(3), true).unwrap();
        log.crash(0);
        assert_eq!(
            log.last_index(ShardId(1)),
            3,
            "a sync makes earlier writes durable"
        );
    }

    #[test]
    fn a_failed_write_fails_every_later_one_until_the_crash() {
        let kv = FaultyKvStore::new();
        kv.write(put("a"), true).unwrap();
        kv.fail_write_after(2);
        kv.write(put("b"), false).unwrap();
        assert!(matches!(kv.write(put("c"), true), Err(StorageError::Io(_))));
        assert!(kv.has_failed());
        assert!(kv.write(put("d"), true).is_err());
        // The failed write may have reached the disk: a crash that keeps it shows it.
        kv.crash(2);
        assert!(!kv.has_failed());
        let snapshot = kv.snapshot().unwrap();
        use crate::KvSnapshot as _;
        for key in ["a", "b", "c"] {
            assert!(snapshot.get(Table::Meta, key.as_bytes()).unwrap().is_some());
        }
        assert!(snapshot.get(Table::Meta, b"d").unwrap().is_none());
        kv.write(put("e"), true).unwrap();
    }

    #[test]
    fn a_lying_disk_loses_synced_writes() {
        let kv = FaultyKvStore::new();
        kv.set_ignore_sync(true);
        kv.write(put("a"), true).unwrap();
        kv.crash(0);
        use crate::KvSnapshot as _;
        assert!(kv
            .snapshot()
            .unwrap()
            .get(Table::Meta, b"a")
            .unwrap()
            .is_none());
    }

    #[test]
    fn a_restore_is_durable() {
        let kv = FaultyKvStore::new();
        kv.write(put("old"), false).unwrap();
        let mut entries = vec![Ok((Table::Meta, b"new".to_vec(), b"v".to_vec()))].into_iter();
        kv.restore(&mut entries).unwrap();
        kv.crash(0);
        use crate::KvSnapshot as _;
        let snapshot = kv.snapshot().unwrap();
        assert!(snapshot.get(Table::Meta, b"new").unwrap().is_some());
        assert!(snapshot.get(Table::Meta, b"old").unwrap().is_none());
    }

    #[test]
    fn a_restore_hook_runs_once_after_the_restore_is_durable() {
        let kv = Arc::new(FaultyKvStore::new());
        let log = Arc::new(FaultyLogStore::new());
        let (seen, fail) = (kv.clone(), log.clone());
        kv.after_next_restore(Box::new(move || {
            // The restore is durable when the hook runs: a crash now keeps it.
            assert_eq!(seen.unsynced_writes(), 0);
            fail.fail_write_after(1);
        }));
        let row = || vec![Ok((Table::Meta, b"k".to_vec(), b"v".to_vec()))].into_iter();
        kv.restore(&mut row()).unwrap();
        assert_eq!(kv.restores(), 1);
        assert!(log.write(append(1), true).is_err(), "the hook planned it");
        kv.restore(&mut row()).unwrap();
        assert_eq!(kv.restores(), 2, "the hook ran once");
        kv.after_next_restore(Box::new(|| panic!("a crash drops the hook")));
        kv.crash(0);
        kv.restore(&mut row()).unwrap();
    }
}
