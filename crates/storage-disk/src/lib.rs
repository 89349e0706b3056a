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

use encryption::KeyRing;
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

mod sealed;

/// raft-engine over plain files, or over sealed ones (`--encryption-key-file`).
enum LogEngine {
    Plain(Engine),
    Sealed(Engine<sealed::SealedFileSystem>),
}

/// Runs `$body` with `$e` bound to the engine, whichever file system it has.
macro_rules! with_engine {
    ($engine:expr, $e:ident => $body:expr) => {
        match $engine {
            LogEngine::Plain($e) => $body,
            LogEngine::Sealed($e) => $body,
        }
    };
}

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

/// Checks that the files of `path` (a file, or the files of a directory) are sealed if and
/// only if `sealed`: a data directory is encrypted from its creation or not at all.
fn check_sealing(path: &Path, sealed: bool) -> Result<()> {
    let files: Vec<PathBuf> = if path.is_dir() {
        std::fs::read_dir(path)
            .map_err(|e| StorageError::Io(format!("read {}: {e}", path.display())))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.extension()
                    .is_some_and(|x| x == "raftlog" || x == "rewrite")
            })
            .collect()
    } else {
        vec![path.to_path_buf()]
    };
    for file in files {
        // Files too short to hold a header say nothing either way.
        if std::fs::metadata(&file).map_or(0, |m| m.len()) < 16 {
            continue;
        }
        let is_sealed = encryption::is_sealed(&file)
            .map_err(|e| StorageError::Io(format!("read {}: {e}", file.display())))?;
        if is_sealed && !sealed {
            return Err(StorageError::Corruption(format!(
                "{} is encrypted: start with the --encryption-key-file it was written with",
                file.display()
            )));
        }
        if !is_sealed && sealed {
            return Err(StorageError::Corruption(format!(
                "{} is not encrypted: --encryption-key-file applies to a new data directory \
                 (restore a backup into a new one to encrypt existing data)",
                file.display()
            )));
        }
    }
    Ok(())
}

/// The Raft log of every shard on a node, on raft-engine.
pub struct RaftLogStore {
    engine: LogEngine,
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
        Self::open_with(dir, None)
    }

    /// Opens (or creates) the log in `dir`, sealed with `keys` if given.
    ///
    /// # Errors
    /// As [`RaftLogStore::open`]; also `Corruption` if the directory's files are encrypted
    /// and no keys (or other keys) are given, or plain and keys are.
    pub fn open_with(dir: &Path, keys: Option<Arc<KeyRing>>) -> Result<Self> {
        install_engine_log();
        check_sealing(dir, keys.is_some())?;
        let config = |recovery_mode| Config {
            dir: dir.to_string_lossy().into_owned(),
            recovery_mode,
            purge_threshold: PURGE_THRESHOLD,
            // A recycled file is rewritten from its start; a sealed file is append-only.
            enable_log_recycle: keys.is_none(),
            ..Config::default()
        };
        let open_engine = |recovery_mode| match &keys {
            None => Engine::open(config(recovery_mode)).map(LogEngine::Plain),
            Some(keys) => Engine::open_with_file_system(
                config(recovery_mode),
                Arc::new(sealed::SealedFileSystem { keys: keys.clone() }),
            )
            .map(LogEngine::Sealed),
        };
        *LAST_ENGINE_ERROR.lock() = None;
        let engine = match open_engine(RecoveryMode::AbsoluteConsistency) {
            Ok(engine) => engine,
            Err(raft_engine::Error::Corruption(detail)) => {
                let logged = LAST_ENGINE_ERROR.lock().take();
                match logged.and_then(|line| locate_corruption(dir, &line)) {
                    // (A sealed file drops an unfinished append itself, before the engine
                    // reads it; its raw bytes are never zeros.)
                    Some((file, offset, _))
                        if keys.is_none() && is_unwritten_tail(dir, &file, offset) =>
                    {
                        tracing::warn!(
                            file = %file.display(),
                            offset,
                            "discarding the unwritten tail of the raft log"
                        );
                        open_engine(RecoveryMode::TolerateTailCorruption).map_err(engine_error)?
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
            Err(raft_engine::Error::Io(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
                // A sealed file that is not ours to open: the message names file and cause.
                return Err(StorageError::Corruption(e.to_string()));
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
        for region in with_engine!(&self.engine, e => e.raft_groups()) {
            let (Some(first), Some(last)) = with_engine!(&self.engine, e => (
                e.first_index(region),
                e.last_index(region),
            )) else {
                continue;
            };
            let mut low = first;
            while low <= last {
                let high = (low + CHUNK).min(last + 1);
                let mut entries = Vec::new();
                let fetched = with_engine!(&self.engine, e => {
                    e.fetch_entries_to::<RaftEntries>(region, low, high, None, &mut entries)
                });
                if let Err(e) = fetched {
                    let unreadable = |i| with_engine!(&self.engine, e => e.get_entry::<RaftEntries>(region, i).is_err());
                    let index = (low..high).find(|&i| unreadable(i)).unwrap_or(low);
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
        use raft_engine::internals::debug::LogItemReader;
        let needle = format!(
            "EntryIndex {{ index: {index}, entries: Some(FileBlockHandle {{ id: FileId {{ queue: "
        );
        let mut location = None;
        let mut visit = |group: u64, content: String| {
            if group != region {
                return;
            }
            if let Some(at) = content.find(&needle) {
                // A later write of the same index replaces an earlier one.
                location = parse_location(&content[at + needle.len()..]).or(location);
            }
        };
        match &self.engine {
            LogEngine::Plain(_) => {
                let system = Arc::new(raft_engine::env::DefaultFileSystem);
                if let Ok(reader) = LogItemReader::new_directory_reader(system, &self.dir) {
                    for item in reader.flatten() {
                        visit(item.raft_group_id, format!("{:?}", item.content));
                    }
                }
            }
            LogEngine::Sealed(_) => {
                // The entry's block failed to open: the error already names file and offset.
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
        with_engine!(&self.engine, e => e.get(shard.0, TRUNCATED_KEY))
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
        with_engine!(&self.engine, e => e.write(&mut log_batch, sync)).map_err(engine_error)?;
        Ok(())
    }

    fn shards(&self) -> Vec<ShardId> {
        let groups = with_engine!(&self.engine, e => e.raft_groups());
        let mut ids: Vec<ShardId> = groups.into_iter().map(ShardId).collect();
        ids.sort();
        ids
    }

    fn state(&self, shard: ShardId) -> Result<ShardLogState> {
        let hard_state =
            with_engine!(&self.engine, e => e.get_message::<HardState>(shard.0, HARD_STATE_KEY))
                .map_err(engine_error)?
                .unwrap_or_default();
        let conf_state =
            with_engine!(&self.engine, e => e.get_message::<ConfState>(shard.0, CONF_STATE_KEY))
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
        with_engine!(&self.engine, e => {
            e.fetch_entries_to::<RaftEntries>(shard.0, low, high, Some(max_size), &mut entries)
        })
        .map_err(engine_error)?;
        if entries.is_empty() {
            // raft-engine returns nothing when the first entry alone exceeds the limit; the
            // contract says at least one.
            with_engine!(&self.engine, e => {
                e.fetch_entries_to::<RaftEntries>(shard.0, low, low + 1, None, &mut entries)
            })
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
        match with_engine!(&self.engine, e => e.get_entry::<RaftEntries>(shard.0, index))
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
        with_engine!(&self.engine, e => e.last_index(shard.0))
            .map_or(truncated, |last| last.max(truncated))
    }

    fn purge(&self) -> Result<()> {
        with_engine!(&self.engine, e => e.purge_expired_files()).map_err(engine_error)?;
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
    /// The keys the file is sealed with, if encrypted.
    keys: Option<Arc<KeyRing>>,
}

/// Entries copied per transaction while defragmenting: bounds the memory a rewrite holds.
const DEFRAGMENT_BATCH: usize = 10_000;

fn open_database(path: &Path, keys: Option<&Arc<KeyRing>>) -> Result<redb::Database> {
    check_sealing(path, keys.is_some())?;
    let opened = match keys {
        None => redb::Database::create(path),
        Some(keys) => {
            let file = encryption::PagedFile::open(path, keys.clone())
                .map_err(|e| storage_io_error(path, &e))?;
            redb::Database::builder().create_with_backend(sealed::SealedBackend(file))
        }
    };
    opened.map_err(|e| match e {
        redb::DatabaseError::Storage(redb::StorageError::Corrupted(detail)) => {
            StorageError::Corruption(format!("state file {}: {detail}", path.display()))
        }
        redb::DatabaseError::Storage(redb::StorageError::Io(io)) => storage_io_error(path, &io),
        other => StorageError::Io(format!("open state file {}: {other}", path.display())),
    })
}

/// An IO error of the state file: a sealed block that fails to open is corruption (its
/// message names the file and the cause).
fn storage_io_error(path: &Path, e: &std::io::Error) -> StorageError {
    if e.kind() == std::io::ErrorKind::InvalidData {
        StorageError::Corruption(e.to_string())
    } else {
        StorageError::Io(format!("state file {}: {e}", path.display()))
    }
}

/// A write transaction; `durable` ones are durable when their commit returns.
///
/// Durable commits are two-phase (pages synced before the header that refers to them is
/// written), so that after a crash no page a durable header refers to can be torn: a sealed
/// file could not tell a torn page from an altered one. The state machine commits durably
/// only every so many entries, so the extra sync is rare.
fn begin_write(db: &redb::Database, durable: bool) -> Result<redb::WriteTransaction> {
    let mut txn = db.begin_write().map_err(|e| redb_error("begin", e))?;
    let durability = if durable {
        redb::Durability::Immediate
    } else {
        redb::Durability::None
    };
    txn.set_durability(durability)
        .map_err(|e| redb_error("durability", e))?;
    txn.set_two_phase_commit(true);
    Ok(txn)
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
        Self::open_with(path, None)
    }

    /// Opens (or creates) the database file at `path`, sealed with `keys` if given.
    ///
    /// # Errors
    /// As [`RedbKvStore::open`]; also `Corruption` if the file is encrypted and no keys (or
    /// other keys) are given, or plain and keys are.
    pub fn open_with(path: &Path, keys: Option<Arc<KeyRing>>) -> Result<Self> {
        // A defragmentation that did not finish left its partial copy; the file at `path`
        // is whole (the copy replaces it only once complete and durable).
        let partial = defragment_path(path);
        if partial.exists() {
            std::fs::remove_file(&partial)
                .map_err(|e| StorageError::Io(format!("remove {}: {e}", partial.display())))?;
        }
        let db = open_database(path, keys.as_ref())?;
        // Create every table up front so readers never meet a missing one.
        let txn = begin_write(&db, true)?;
        for table in Table::ALL {
            txn.open_table(table_definition(table))
                .map_err(|e| redb_error("open table", e))?;
        }
        txn.commit().map_err(|e| redb_error("commit", e))?;
        Ok(Self {
            db: RwLock::new(Arc::new(db)),
            path: path.to_path_buf(),
            keys,
        })
    }

    fn db(&self) -> Arc<redb::Database> {
        self.db.read().clone()
    }

    /// Copies every table of `from` into a new database at `to`, durably.
    fn copy_to(&self, from: &redb::Database, to: &Path) -> Result<redb::Database> {
        let copy = open_database(to, self.keys.as_ref())?;
        let source = from.begin_read().map_err(|e| redb_error("begin read", e))?;
        for table in Table::ALL {
            let source = source
                .open_table(table_definition(table))
                .map_err(|e| redb_error("open table", e))?;
            let mut items = source.iter().map_err(|e| redb_error("scan", e))?.peekable();
            // An empty table is created all the same: readers never meet a missing one.
            loop {
                let txn = begin_write(&copy, true)?;
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
        let txn = begin_write(&db, durable)?;
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
        let txn = begin_write(&db, true)?;
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
        let copy = match self.copy_to(&old, &partial) {
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
