//! On-disk implementations of the `storage` traits.
//!
//! - [`RaftLogStore`]: the Raft log of every shard on a node, in one raft-engine instance
//!   (TiKV's log engine: many Raft groups share one set of append-only files and one fsync).
//! - [`RedbKvStore`]: the state machine, in one redb file.
//!
//! # Layout
//!
//! A member's directory holds `log/` (raft-engine's `*.raftlog` and `*.rewrite` files) and
//! `state.redb`.
//!
//! # Definitions
//!
//! - Shard id = raft-engine region id. Per shard, raft-engine holds the entries and three keys:
//!   `hard_state` and `conf_state` (raft-proto messages) and `truncated` (16 bytes: index and
//!   term big-endian, the last entry discarded by compaction or a snapshot).
//! - Each `storage::Table` is a redb table of the same name, byte keys to byte values.
//!
//! # Invariants
//!
//! - One `LogStore::write` = one raft-engine `LogBatch` = one write call, synced when asked:
//!   a batch is all or nothing after a crash.
//! - raft-engine opens in `AbsoluteConsistency` mode: a record that fails its checksum stops
//!   the open with an error naming the file and offset. (The default mode would cut a corrupt
//!   tail silently, and with it writes that were acknowledged.)
//! - The state machine's commits are redb transactions: `Durability::Immediate` ones are
//!   durable on return; `Durability::None` ones are visible at once and durable with the next
//!   immediate commit.
//!
//! # Assumptions about the medium
//!
//! `fsync`/`fdatasync` returning means the data is on stable storage; a torn write of a
//! record is detected by its checksum (raft-engine's per-batch checksum; redb's commit
//! protocol with checksummed pages).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use raft_engine::{Command, Config, Engine, LogBatch, MessageExt, ReadableSize, RecoveryMode};
use raft_proto::eraftpb::{ConfState, Entry, HardState};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use storage::{
    KvSnapshot, KvStore, LogStore, Result, ShardId, ShardLogState, ShardLogWrite, StorageError,
    Table, WriteOp,
};

const HARD_STATE_KEY: &[u8] = b"hard_state";
const CONF_STATE_KEY: &[u8] = b"conf_state";
const TRUNCATED_KEY: &[u8] = b"truncated";
/// Log files are reclaimed once they exceed this total size and their entries are compacted.
const PURGE_THRESHOLD: ReadableSize = ReadableSize::mb(256);

struct RaftEntries;

impl MessageExt for RaftEntries {
    type Entry = Entry;

    fn index(entry: &Entry) -> u64 {
        entry.index
    }
}

/// The last error raft-engine logged: it carries the file sequence and offset of a corrupt
/// record, which its returned error does not.
static LAST_ENGINE_ERROR: Mutex<Option<String>> = Mutex::new(None);

/// Forwards raft-engine's `log` records to `tracing` and remembers the last error.
struct EngineLog;

impl log::Log for EngineLog {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::Level::Info
    }

    fn log(&self, record: &log::Record<'_>) {
        let message = record.args().to_string();
        match record.level() {
            log::Level::Error => {
                tracing::error!(target: "raft_engine", "{message}");
                *LAST_ENGINE_ERROR.lock() = Some(message);
            }
            log::Level::Warn => tracing::warn!(target: "raft_engine", "{message}"),
            _ => tracing::debug!(target: "raft_engine", "{message}"),
        }
    }

    fn flush(&self) {}
}

static ENGINE_LOG: EngineLog = EngineLog;

fn install_engine_log() {
    // Fails harmlessly if the process installed another `log` logger.
    if log::set_logger(&ENGINE_LOG).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
}

fn engine_error(e: raft_engine::Error) -> StorageError {
    match e {
        raft_engine::Error::Corruption(detail) => StorageError::Corruption(detail),
        raft_engine::Error::Io(io) => StorageError::Io(io.to_string()),
        other => StorageError::Io(other.to_string()),
    }
}

/// Where raft-engine found a bad record, read from its own log line
/// `... (queue=Append,seq=3,offset=4096): <detail>`: (file, offset, detail).
fn locate_corruption(dir: &Path, logged: &str) -> Option<(PathBuf, u64, String)> {
    let field = |name: &str| -> Option<&str> {
        let start = logged.find(name)? + name.len();
        let rest = &logged[start..];
        let end = rest.find([',', ')']).unwrap_or(rest.len());
        Some(&rest[..end])
    };
    let seq: u64 = field("seq=")?.parse().ok()?;
    let offset: u64 = field("offset=")?.parse().ok()?;
    let suffix = if field("queue=")? == "Rewrite" {
        "rewrite"
    } else {
        "raftlog"
    };
    let file = dir.join(format!("{seq:016}.{suffix}"));
    let detail = logged.split("): ").nth(1).unwrap_or(logged).to_string();
    Some((file, offset, detail))
}

/// Whether `file` is the newest append file of `dir` and holds only zeros from `offset` on:
/// space the engine preallocated and never wrote. A process killed between two writes
/// leaves such a tail; it holds no record, so nothing acknowledged can be in it.
fn is_unwritten_tail(dir: &Path, file: &Path, offset: u64) -> bool {
    let newest = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "raftlog"))
        .max();
    if newest.as_deref() != Some(file) {
        return false;
    }
    let Ok(bytes) = std::fs::read(file) else {
        return false;
    };
    let start = usize::try_from(offset).unwrap_or(usize::MAX);
    start <= bytes.len() && bytes[start..].iter().all(|b| *b == 0)
}

/// The Raft log of every shard on a node, on raft-engine.
pub struct RaftLogStore {
    engine: Engine,
    dir: PathBuf,
    /// Serialises writers with the reads of a write's preconditions.
    write_lock: Mutex<()>,
}

impl RaftLogStore {
    /// Opens (or creates) the log in `dir`.
    ///
    /// # Errors
    /// `Corruption` naming the file and offset if a record fails its checksum; `Io` if the
    /// directory cannot be used.
    pub fn open(dir: &Path) -> Result<Self> {
        install_engine_log();
        let config = |recovery_mode| Config {
            dir: dir.to_string_lossy().into_owned(),
            recovery_mode,
            purge_threshold: PURGE_THRESHOLD,
            ..Config::default()
        };
        *LAST_ENGINE_ERROR.lock() = None;
        let engine = match Engine::open(config(RecoveryMode::AbsoluteConsistency)) {
            Ok(engine) => engine,
            Err(raft_engine::Error::Corruption(detail)) => {
                let logged = LAST_ENGINE_ERROR.lock().take();
                match logged.and_then(|line| locate_corruption(dir, &line)) {
                    Some((file, offset, _)) if is_unwritten_tail(dir, &file, offset) => {
                        tracing::warn!(
                            file = %file.display(),
                            offset,
                            "discarding the unwritten tail of the raft log"
                        );
                        Engine::open(config(RecoveryMode::TolerateTailCorruption))
                            .map_err(engine_error)?
                    }
                    Some((file, offset, detail)) => {
                        return Err(StorageError::Corruption(format!(
                            "log file {}: corrupt record at offset {offset}: {detail}",
                            file.display()
                        )))
                    }
                    None => {
                        return Err(StorageError::Corruption(format!(
                            "log directory {}: {detail}",
                            dir.display()
                        )))
                    }
                }
            }
            Err(e) => {
                return Err(StorageError::Io(format!(
                    "open log directory {}: {e}",
                    dir.display()
                )))
            }
        };
        let store = Self {
            engine,
            dir: dir.to_path_buf(),
            write_lock: Mutex::new(()),
        };
        store.verify()?;
        Ok(store)
    }

    /// Reads every live entry once, so that a corrupt entry is found at startup rather than
    /// when a follower or a replay needs it. raft-engine checks the record headers on open
    /// but an entry block's checksum only when the block is read.
    fn verify(&self) -> Result<()> {
        const CHUNK: u64 = 1024;
        for region in self.engine.raft_groups() {
            let (Some(first), Some(last)) = (
                self.engine.first_index(region),
                self.engine.last_index(region),
            ) else {
                continue;
            };
            let mut low = first;
            while low <= last {
                let high = (low + CHUNK).min(last + 1);
                let mut entries = Vec::new();
                if let Err(e) = self.engine.fetch_entries_to::<RaftEntries>(
                    region,
                    low,
                    high,
                    None,
                    &mut entries,
                ) {
                    let index = (low..high)
                        .find(|&i| self.engine.get_entry::<RaftEntries>(region, i).is_err())
                        .unwrap_or(low);
                    return Err(StorageError::Corruption(
                        self.describe_bad_entry(region, index, &e),
                    ));
                }
                low = high;
            }
        }
        Ok(())
    }

    /// Names the file and offset of the block holding entry `index` of `region`.
    ///
    /// raft-engine exports its log reader but not the type of a record's content, so the
    /// entry's location is read from the record's debug form, which for the pinned version
    /// reads `EntryIndex { index: 7, entries: Some(FileBlockHandle { id: FileId { queue:
    /// Append, seq: 1 }, offset: 4104, ...`. If that ever stops parsing, the message still
    /// names the directory and the entry.
    fn describe_bad_entry(&self, region: u64, index: u64, error: &raft_engine::Error) -> String {
        let reader = raft_engine::internals::debug::LogItemReader::new_directory_reader(
            Arc::new(raft_engine::env::DefaultFileSystem),
            &self.dir,
        );
        let needle = format!(
            "EntryIndex {{ index: {index}, entries: Some(FileBlockHandle {{ id: FileId {{ queue: "
        );
        let mut location = None;
        if let Ok(reader) = reader {
            for item in reader.flatten() {
                if item.raft_group_id != region {
                    continue;
                }
                let text = format!("{:?}", item.content);
                if let Some(at) = text.find(&needle) {
                    // A later write of the same index replaces an earlier one.
                    location = parse_location(&text[at + needle.len()..]).or(location);
                }
            }
        }
        match location {
            Some((rewrite, seq, offset)) => {
                let suffix = if rewrite { "rewrite" } else { "raftlog" };
                let file = self.dir.join(format!("{seq:016}.{suffix}"));
                format!(
                    "log file {}: corrupt record at offset {offset}: entry {index} of shard {region}: {error}",
                    file.display()
                )
            }
            None => format!(
                "log directory {}: entry {index} of shard {region} is unreadable: {error}",
                self.dir.display()
            ),
        }
    }

    /// The directory the log lives in.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn truncated(&self, shard: ShardId) -> (u64, u64) {
        self.engine
            .get(shard.0, TRUNCATED_KEY)
            .filter(|v| v.len() == 16)
            .map_or((0, 0), |v| {
                let index = u64::from_be_bytes(v[..8].try_into().expect("8 bytes"));
                let term = u64::from_be_bytes(v[8..].try_into().expect("8 bytes"));
                (index, term)
            })
    }
}

fn truncated_value(index: u64, term: u64) -> Vec<u8> {
    let mut value = index.to_be_bytes().to_vec();
    value.extend_from_slice(&term.to_be_bytes());
    value
}

impl LogStore for RaftLogStore {
    fn write(&self, batch: Vec<ShardLogWrite>, sync: bool) -> Result<()> {
        let _guard = self.write_lock.lock();
        let mut log_batch = LogBatch::default();
        let contract = |s: String| StorageError::Contract(s);
        for write in batch {
            let region = write.shard.0;
            let (mut truncated_index, mut truncated_term) = self.truncated(write.shard);
            let mut last = self.last_index(write.shard);
            let mut state = self.state(write.shard)?;
            if let Some((index, term)) = write.install_snapshot {
                // Clean drops the region's entries and keys; the state keys are written again
                // below, in the same atomic batch.
                log_batch.add_command(region, Command::Clean);
                truncated_index = index;
                truncated_term = term;
                last = index;
                log_batch
                    .put_message(region, HARD_STATE_KEY.to_vec(), &state.hard_state)
                    .map_err(engine_error)?;
                log_batch
                    .put_message(region, CONF_STATE_KEY.to_vec(), &state.conf_state)
                    .map_err(engine_error)?;
                log_batch
                    .put(region, TRUNCATED_KEY.to_vec(), truncated_value(index, term))
                    .map_err(engine_error)?;
            }
            if let Some((index, term)) = write.compact_to {
                if index > last {
                    return Err(contract(format!(
                        "compact to {index} past last index {last}"
                    )));
                }
                if index > truncated_index {
                    log_batch.add_command(region, Command::Compact { index: index + 1 });
                    truncated_index = index;
                    truncated_term = term;
                    log_batch
                        .put(region, TRUNCATED_KEY.to_vec(), truncated_value(index, term))
                        .map_err(engine_error)?;
                }
            }
            if let Some(first) = write.entries.first() {
                if first.index > last + 1 {
                    return Err(contract(format!(
                        "append at {} leaves a gap after {last}",
                        first.index
                    )));
                }
                if first.index <= truncated_index {
                    return Err(contract(format!(
                        "append at {} overwrites compacted index {truncated_index}",
                        first.index
                    )));
                }
                log_batch
                    .add_entries::<RaftEntries>(region, &write.entries)
                    .map_err(engine_error)?;
            }
            if let Some(hard_state) = write.hard_state {
                state.hard_state = hard_state;
                log_batch
                    .put_message(region, HARD_STATE_KEY.to_vec(), &state.hard_state)
                    .map_err(engine_error)?;
            }
            if let Some(conf_state) = write.conf_state {
                log_batch
                    .put_message(region, CONF_STATE_KEY.to_vec(), &conf_state)
                    .map_err(engine_error)?;
            }
            let _ = truncated_term;
        }
        if log_batch.is_empty() {
            return Ok(());
        }
        self.engine
            .write(&mut log_batch, sync)
            .map_err(engine_error)?;
        Ok(())
    }

    fn shards(&self) -> Vec<ShardId> {
        let mut ids: Vec<ShardId> = self.engine.raft_groups().into_iter().map(ShardId).collect();
        ids.sort();
        ids
    }

    fn state(&self, shard: ShardId) -> Result<ShardLogState> {
        let hard_state = self
            .engine
            .get_message::<HardState>(shard.0, HARD_STATE_KEY)
            .map_err(engine_error)?
            .unwrap_or_default();
        let conf_state = self
            .engine
            .get_message::<ConfState>(shard.0, CONF_STATE_KEY)
            .map_err(engine_error)?
            .unwrap_or_default();
        let (truncated_index, truncated_term) = self.truncated(shard);
        Ok(ShardLogState {
            hard_state,
            conf_state,
            truncated_index,
            truncated_term,
        })
    }

    fn entries(&self, shard: ShardId, low: u64, high: u64, max_bytes: u64) -> Result<Vec<Entry>> {
        if low >= high {
            return Ok(Vec::new());
        }
        let (truncated, _) = self.truncated(shard);
        if low <= truncated {
            return Err(StorageError::Compacted);
        }
        if high > self.last_index(shard) + 1 {
            return Err(StorageError::Unavailable);
        }
        let mut entries = Vec::with_capacity((high - low).min(1024) as usize);
        let max_size = usize::try_from(max_bytes).unwrap_or(usize::MAX);
        self.engine
            .fetch_entries_to::<RaftEntries>(shard.0, low, high, Some(max_size), &mut entries)
            .map_err(engine_error)?;
        if entries.is_empty() {
            // raft-engine returns nothing when the first entry alone exceeds the limit; the
            // contract says at least one.
            self.engine
                .fetch_entries_to::<RaftEntries>(shard.0, low, low + 1, None, &mut entries)
                .map_err(engine_error)?;
        }
        Ok(entries)
    }

    fn term(&self, shard: ShardId, index: u64) -> Result<u64> {
        let (truncated_index, truncated_term) = self.truncated(shard);
        if index == truncated_index {
            return Ok(truncated_term);
        }
        if index < truncated_index {
            return Err(StorageError::Compacted);
        }
        if index > self.last_index(shard) {
            return Err(StorageError::Unavailable);
        }
        match self
            .engine
            .get_entry::<RaftEntries>(shard.0, index)
            .map_err(engine_error)?
        {
            Some(entry) => Ok(entry.term),
            None => Err(StorageError::Unavailable),
        }
    }

    fn first_index(&self, shard: ShardId) -> u64 {
        self.truncated(shard).0 + 1
    }

    fn last_index(&self, shard: ShardId) -> u64 {
        let (truncated, _) = self.truncated(shard);
        self.engine
            .last_index(shard.0)
            .map_or(truncated, |last| last.max(truncated))
    }

    fn purge(&self) -> Result<()> {
        self.engine.purge_expired_files().map_err(engine_error)?;
        Ok(())
    }
}

type BytesTableDefinition = TableDefinition<'static, &'static [u8], &'static [u8]>;

fn table_definition(table: Table) -> BytesTableDefinition {
    TableDefinition::new(table.name())
}

fn redb_error(context: &str, e: impl std::fmt::Display) -> StorageError {
    StorageError::Io(format!("state machine {context}: {e}"))
}

/// The state machine's tables in one redb file.
pub struct RedbKvStore {
    /// The open database. Defragmenting replaces it with a rewritten one; views taken
    /// before that keep the old one (and its unlinked file) alive until they are dropped.
    db: RwLock<Arc<redb::Database>>,
    path: PathBuf,
}

/// Entries copied per transaction while defragmenting: bounds the memory a rewrite holds.
const DEFRAGMENT_BATCH: usize = 10_000;

fn open_database(path: &Path) -> Result<redb::Database> {
    redb::Database::create(path).map_err(|e| match e {
        redb::DatabaseError::Storage(redb::StorageError::Corrupted(detail)) => {
            StorageError::Corruption(format!("state file {}: {detail}", path.display()))
        }
        other => StorageError::Io(format!("open state file {}: {other}", path.display())),
    })
}

/// Where a defragmentation writes the new file before it replaces the old one.
fn defragment_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".defrag");
    PathBuf::from(name)
}

impl RedbKvStore {
    /// Opens (or creates) the database file at `path`.
    ///
    /// # Errors
    /// `Corruption` if the file is not a valid redb database, `Io` otherwise.
    pub fn open(path: &Path) -> Result<Self> {
        // A defragmentation that did not finish left its partial copy; the file at `path`
        // is whole (the copy replaces it only once complete and durable).
        let partial = defragment_path(path);
        if partial.exists() {
            std::fs::remove_file(&partial)
                .map_err(|e| StorageError::Io(format!("remove {}: {e}", partial.display())))?;
        }
        let db = open_database(path)?;
        // Create every table up front so readers never meet a missing one.
        let txn = db.begin_write().map_err(|e| redb_error("begin", e))?;
        for table in Table::ALL {
            txn.open_table(table_definition(table))
                .map_err(|e| redb_error("open table", e))?;
        }
        txn.commit().map_err(|e| redb_error("commit", e))?;
        Ok(Self {
            db: RwLock::new(Arc::new(db)),
            path: path.to_path_buf(),
        })
    }

    fn db(&self) -> Arc<redb::Database> {
        self.db.read().clone()
    }

    /// Copies every table of `from` into a new database at `to`, durably.
    fn copy_to(from: &redb::Database, to: &Path) -> Result<redb::Database> {
        let copy = open_database(to)?;
        let source = from.begin_read().map_err(|e| redb_error("begin read", e))?;
        for table in Table::ALL {
            let source = source
                .open_table(table_definition(table))
                .map_err(|e| redb_error("open table", e))?;
            let mut items = source.iter().map_err(|e| redb_error("scan", e))?.peekable();
            // An empty table is created all the same: readers never meet a missing one.
            loop {
                let txn = copy.begin_write().map_err(|e| redb_error("begin", e))?;
                {
                    let mut target = txn
                        .open_table(table_definition(table))
                        .map_err(|e| redb_error("open table", e))?;
                    for item in items.by_ref().take(DEFRAGMENT_BATCH) {
                        let (key, value) = item.map_err(|e| redb_error("scan", e))?;
                        target
                            .insert(key.value(), value.value())
                            .map_err(|e| redb_error("write", e))?;
                    }
                }
                txn.commit().map_err(|e| redb_error("commit", e))?;
                if items.peek().is_none() {
                    break;
                }
            }
        }
        Ok(copy)
    }
}

type ReadOnlyBytesTable = redb::ReadOnlyTable<&'static [u8], &'static [u8]>;
type BytesTable<'t> = redb::Table<'t, &'static [u8], &'static [u8]>;

/// Every table of `txn`, in `Table::ALL` order (index with [`table_index`]).
fn open_write_tables(txn: &redb::WriteTransaction) -> Result<Vec<BytesTable<'_>>> {
    Table::ALL
        .iter()
        .map(|table| {
            txn.open_table(table_definition(*table))
                .map_err(|e| redb_error("open table", e))
        })
        .collect()
}

/// Position of `table` in `Table::ALL`, which is also its position in the vectors of opened
/// tables below.
fn table_index(table: Table) -> usize {
    Table::ALL
        .iter()
        .position(|t| *t == table)
        .expect("Table::ALL lists every table")
}

/// A redb read transaction: a consistent view while it lives.
pub struct RedbSnapshot {
    /// One opened table per `Table::ALL` entry, in that order.
    tables: Vec<ReadOnlyBytesTable>,
    /// The database the view reads: a defragmentation may have replaced it since.
    _db: Arc<redb::Database>,
}

impl RedbSnapshot {
    fn table(&self, table: Table) -> &ReadOnlyBytesTable {
        &self.tables[table_index(table)]
    }
}

impl KvSnapshot for RedbSnapshot {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let value = self
            .table(table)
            .get(key)
            .map_err(|e| redb_error("read", e))?;
        Ok(value.map(|v| v.value().to_vec()))
    }

    fn scan(
        &self,
        table: Table,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()> {
        let t = self.table(table);
        let range = match end {
            Some(end) if end <= start => return Ok(()),
            Some(end) => t.range::<&[u8]>(start..end),
            None => t.range::<&[u8]>(start..),
        }
        .map_err(|e| redb_error("scan", e))?;
        for item in range {
            let (key, value) = item.map_err(|e| redb_error("scan", e))?;
            if !visit(key.value(), value.value()) {
                break;
            }
        }
        Ok(())
    }
}

impl KvStore for RedbKvStore {
    type Snapshot = RedbSnapshot;

    fn write(&self, ops: Vec<WriteOp>, durable: bool) -> Result<()> {
        let db = self.db();
        let mut txn = db.begin_write().map_err(|e| redb_error("begin", e))?;
        let durability = if durable {
            redb::Durability::Immediate
        } else {
            redb::Durability::None
        };
        txn.set_durability(durability)
            .map_err(|e| redb_error("durability", e))?;
        {
            let mut tables = open_write_tables(&txn)?;
            for op in &ops {
                match op {
                    WriteOp::Put { table, key, value } => {
                        tables[table_index(*table)]
                            .insert(key.as_slice(), value.as_slice())
                            .map_err(|e| redb_error("write", e))?;
                    }
                    WriteOp::Delete { table, key } => {
                        tables[table_index(*table)]
                            .remove(key.as_slice())
                            .map_err(|e| redb_error("write", e))?;
                    }
                }
            }
        }
        txn.commit().map_err(|e| redb_error("commit", e))
    }

    fn snapshot(&self) -> Result<RedbSnapshot> {
        let db = self.db();
        let txn = db.begin_read().map_err(|e| redb_error("begin read", e))?;
        let mut tables = Vec::with_capacity(Table::ALL.len());
        for table in Table::ALL {
            let opened = txn
                .open_table(table_definition(table))
                .map_err(|e| redb_error("open table", e))?;
            tables.push(opened);
        }
        Ok(RedbSnapshot { tables, _db: db })
    }

    fn restore(
        &self,
        entries: &mut dyn Iterator<Item = Result<(Table, Vec<u8>, Vec<u8>)>>,
    ) -> Result<()> {
        let db = self.db();
        let mut txn = db.begin_write().map_err(|e| redb_error("begin", e))?;
        txn.set_durability(redb::Durability::Immediate)
            .map_err(|e| redb_error("durability", e))?;
        for table in Table::ALL {
            txn.delete_table(table_definition(table))
                .map_err(|e| redb_error("clear", e))?;
        }
        {
            let mut tables = open_write_tables(&txn)?;
            for item in entries {
                // An error drops `txn` without commit: the store is unchanged.
                let (table, key, value) = item?;
                tables[table_index(table)]
                    .insert(key.as_slice(), value.as_slice())
                    .map_err(|e| redb_error("write", e))?;
            }
        }
        txn.commit().map_err(|e| redb_error("commit", e))
    }

    fn size_bytes(&self) -> u64 {
        std::fs::metadata(&self.path).map_or(0, |m| m.len())
    }

    /// Copies the data into a new file, which then replaces the old one: redb reuses freed
    /// pages but never gives them back to the file system. Readers go on meanwhile (on the
    /// old file); the caller holds writes back. The new file is durable before it replaces
    /// the old one, and the rename is made durable before the new file serves anything, so
    /// a crash at any point leaves one whole file at `path`.
    fn defragment(&self) -> Result<()> {
        let old = self.db();
        let partial = defragment_path(&self.path);
        let copy = match Self::copy_to(&old, &partial) {
            Ok(copy) => copy,
            Err(e) => {
                let _ = std::fs::remove_file(&partial);
                return Err(e);
            }
        };
        let io = |what: &str, e: std::io::Error| {
            StorageError::Io(format!("defragment: {what} {}: {e}", self.path.display()))
        };
        std::fs::rename(&partial, &self.path).map_err(|e| io("replace", e))?;
        let dir = self.path.parent().unwrap_or_else(|| Path::new("."));
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io("sync the directory of", e))?;
        *self.db.write() = Arc::new(copy);
        Ok(())
    }
}

/// Parses `Append, seq: 1 }, offset: 4104` into (is rewrite queue, seq, offset).
fn parse_location(text: &str) -> Option<(bool, u64, u64)> {
    let (queue, rest) = text.split_once(", seq: ")?;
    let (seq, rest) = rest.split_once(" }, offset: ")?;
    let offset: String = rest.chars().take_while(char::is_ascii_digit).collect();
    Some((queue == "Rewrite", seq.parse().ok()?, offset.parse().ok()?))
}

/// Keeps `Arc` in scope for callers that share a store.
pub type SharedLogStore = Arc<RaftLogStore>;

#[cfg(test)]
mod tests;
