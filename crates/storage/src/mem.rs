//! In-memory stores for tests and simulation. They honour the same contracts as the disk
//! engines, except that nothing survives the process.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::Arc;

use parking_lot::RwLock;
use protobuf::Message as _;

use crate::{
    Entry, KvSnapshot, KvStore, LogStore, Result, ShardId, ShardLogState, ShardLogWrite,
    StorageError, Table, WriteOp,
};

#[derive(Clone, Default)]
struct MemShardLog {
    state: ShardLogState,
    /// `entries[i]` has index `state.truncated_index + 1 + i`.
    entries: Vec<Entry>,
}

/// Checks `write` against a shard log whose bounds are `(truncated, last)` and moves the
/// bounds to where the write would leave them: the whole batch is checked this way before
/// anything changes, so that a rejected batch changes nothing (atomicity).
fn check_bounds(bounds: &mut (u64, u64), write: &ShardLogWrite) -> Result<()> {
    let (truncated, last) = bounds;
    if let Some((index, _)) = write.install_snapshot {
        *truncated = index;
        *last = index;
    }
    if let Some((index, _)) = write.compact_to {
        if index > *last {
            return Err(StorageError::Contract(format!(
                "compact to {index} past last index {last}"
            )));
        }
        *truncated = (*truncated).max(index);
    }
    if let Some(first) = write.entries.first() {
        let first_index = first.index;
        if first_index > *last + 1 {
            return Err(StorageError::Contract(format!(
                "append at {first_index} leaves a gap after {last}"
            )));
        }
        if first_index <= *truncated {
            return Err(StorageError::Contract(format!(
                "append at {first_index} overwrites compacted index {truncated}"
            )));
        }
        *last = first_index + write.entries.len() as u64 - 1;
    }
    Ok(())
}

impl MemShardLog {
    fn last_index(&self) -> u64 {
        self.state.truncated_index + self.entries.len() as u64
    }

    /// Applies a write that passed [`check_bounds`].
    fn apply(&mut self, write: ShardLogWrite) {
        if let Some((index, term)) = write.install_snapshot {
            self.entries.clear();
            self.state.truncated_index = index;
            self.state.truncated_term = term;
        }
        if let Some((index, term)) = write.compact_to {
            if index > self.state.truncated_index {
                let drop = (index - self.state.truncated_index) as usize;
                self.entries.drain(..drop);
                self.state.truncated_index = index;
                self.state.truncated_term = term;
            }
        }
        if let Some(first) = write.entries.first() {
            let keep = (first.index - self.state.truncated_index - 1) as usize;
            self.entries.truncate(keep);
            self.entries.extend(write.entries);
        }
        if let Some(hard_state) = write.hard_state {
            self.state.hard_state = hard_state;
        }
        if let Some(conf_state) = write.conf_state {
            self.state.conf_state = conf_state;
        }
    }
}

/// A [`LogStore`] kept in memory.
#[derive(Default)]
pub struct MemLogStore {
    shards: RwLock<HashMap<ShardId, MemShardLog>>,
}

impl MemLogStore {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// An independent copy of everything stored now.
    #[must_use]
    pub fn copy(&self) -> Self {
        Self {
            shards: RwLock::new(self.shards.read().clone()),
        }
    }
}

impl LogStore for MemLogStore {
    fn write(&self, batch: Vec<ShardLogWrite>, _sync: bool) -> Result<()> {
        let mut shards = self.shards.write();
        let mut bounds: BTreeMap<ShardId, (u64, u64)> = BTreeMap::new();
        for write in &batch {
            let shard_bounds = bounds.entry(write.shard).or_insert_with(|| {
                shards
                    .get(&write.shard)
                    .map_or((0, 0), |log| (log.state.truncated_index, log.last_index()))
            });
            check_bounds(shard_bounds, write)?;
        }
        for write in batch {
            shards.entry(write.shard).or_default().apply(write);
        }
        Ok(())
    }

    fn shards(&self) -> Vec<ShardId> {
        let mut ids: Vec<ShardId> = self.shards.read().keys().copied().collect();
        ids.sort();
        ids
    }

    fn state(&self, shard: ShardId) -> Result<ShardLogState> {
        Ok(self
            .shards
            .read()
            .get(&shard)
            .map(|log| log.state.clone())
            .unwrap_or_default())
    }

    fn entries(&self, shard: ShardId, low: u64, high: u64, max_bytes: u64) -> Result<Vec<Entry>> {
        let shards = self.shards.read();
        let Some(log) = shards.get(&shard) else {
            return if low >= high {
                Ok(Vec::new())
            } else {
                Err(StorageError::Unavailable)
            };
        };
        if low <= log.state.truncated_index {
            return Err(StorageError::Compacted);
        }
        if high > log.last_index() + 1 {
            return Err(StorageError::Unavailable);
        }
        let mut out = Vec::new();
        let mut size = 0u64;
        for index in low..high {
            let entry = &log.entries[(index - log.state.truncated_index - 1) as usize];
            size += u64::from(entry.compute_size());
            if !out.is_empty() && size > max_bytes {
                break;
            }
            out.push(entry.clone());
        }
        Ok(out)
    }

    fn term(&self, shard: ShardId, index: u64) -> Result<u64> {
        let shards = self.shards.read();
        let state = shards.get(&shard);
        let truncated = state.map_or(0, |log| log.state.truncated_index);
        let last = state.map_or(0, MemShardLog::last_index);
        if index < truncated {
            return Err(StorageError::Compacted);
        }
        if index > last {
            return Err(StorageError::Unavailable);
        }
        match state {
            None => Ok(0),
            Some(log) if index == truncated => Ok(log.state.truncated_term),
            Some(log) => Ok(log.entries[(index - truncated - 1) as usize].term),
        }
    }

    fn first_index(&self, shard: ShardId) -> u64 {
        self.shards
            .read()
            .get(&shard)
            .map_or(1, |log| log.state.truncated_index + 1)
    }

    fn last_index(&self, shard: ShardId) -> u64 {
        self.shards
            .read()
            .get(&shard)
            .map_or(0, MemShardLog::last_index)
    }

    fn purge(&self) -> Result<()> {
        Ok(())
    }
}

type Tables = BTreeMap<Table, Arc<BTreeMap<Vec<u8>, Vec<u8>>>>;

/// A [`KvStore`] kept in memory. Snapshots are copy-on-write clones of the tables.
#[derive(Default)]
pub struct MemKvStore {
    tables: RwLock<Tables>,
}

impl MemKvStore {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// An independent copy of everything stored now (cheap: tables are copied on write).
    #[must_use]
    pub fn copy(&self) -> Self {
        Self {
            tables: RwLock::new(self.tables.read().clone()),
        }
    }
}

/// A point-in-time view of a [`MemKvStore`].
pub struct MemKvSnapshot {
    tables: Tables,
}

impl KvSnapshot for MemKvSnapshot {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.tables.get(&table).and_then(|t| t.get(key).cloned()))
    }

    fn scan(
        &self,
        table: Table,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()> {
        let Some(t) = self.tables.get(&table) else {
            return Ok(());
        };
        let upper = match end {
            Some(end) if end <= start => return Ok(()),
            Some(end) => Bound::Excluded(end),
            None => Bound::Unbounded,
        };
        for (key, value) in t.range::<[u8], _>((Bound::Included(start), upper)) {
            if !visit(key, value) {
                break;
            }
        }
        Ok(())
    }
}

impl KvStore for MemKvStore {
    type Snapshot = MemKvSnapshot;

    fn write(&self, ops: Vec<WriteOp>, _durable: bool) -> Result<()> {
        let mut tables = self.tables.write();
        for op in ops {
            match op {
                WriteOp::Put { table, key, value } => {
                    Arc::make_mut(tables.entry(table).or_default()).insert(key, value);
                }
                WriteOp::Delete { table, key } => {
                    if let Some(t) = tables.get_mut(&table) {
                        Arc::make_mut(t).remove(&key);
                    }
                }
            }
        }
        Ok(())
    }

    fn snapshot(&self) -> Result<MemKvSnapshot> {
        Ok(MemKvSnapshot {
            tables: self.tables.read().clone(),
        })
    }

    fn restore(
        &self,
        entries: &mut dyn Iterator<Item = Result<(Table, Vec<u8>, Vec<u8>)>>,
    ) -> Result<()> {
        let mut fresh: BTreeMap<Table, BTreeMap<Vec<u8>, Vec<u8>>> = BTreeMap::new();
        for item in entries {
            let (table, key, value) = item?;
            fresh.entry(table).or_default().insert(key, value);
        }
        *self.tables.write() = fresh.into_iter().map(|(t, m)| (t, Arc::new(m))).collect();
        Ok(())
    }

    fn size_bytes(&self) -> u64 {
        self.tables
            .read()
            .values()
            .flat_map(|t| t.iter())
            .map(|(k, v)| (k.len() + v.len()) as u64)
            .sum()
    }

    /// Memory holds nothing a rewrite would free.
    fn defragment(&self) -> Result<()> {
        Ok(())
    }
}
