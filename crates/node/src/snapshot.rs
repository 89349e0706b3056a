//! Raft snapshots: how the state machine travels to a follower that is too far behind.
//!
//! The Raft `Snapshot` message carries only metadata (index, term, configuration) and a
//! marker. The state itself is streamed separately, from one consistent read view of the
//! leader's state machine, as a sequence of records:
//!
//! ```text
//! record = [table: u8][key length: u32 BE][key][value length: u32 BE][value]
//! ```
//!
//! grouped into chunks of about [`CHUNK_BYTES`]. The transport checksums every chunk on the
//! wire. The receiver spools the chunks to a file, and only when the whole stream has arrived
//! does it hand the `MsgSnapshot` to Raft. When Raft accepts it, the apply task replaces the
//! state machine with the spooled records, durably, before the log records the snapshot: a
//! crash in between leaves a state machine ahead of its log, which startup repairs.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use consensus::{RaftError, RaftStorageError, Snapshot, SnapshotMetadata, SnapshotSource};
use encryption::{FramedFile, FramedReader, KeyRing};
use parking_lot::Mutex;
use storage::{KvSnapshot, LogStore, ShardId, StorageError, Table};

use crate::state::StateReader;
use crate::NodeError;

/// Target size of one snapshot chunk. A chunk holds at least one record, so a single larger
/// record makes a larger chunk.
pub(crate) const CHUNK_BYTES: usize = 1024 * 1024;

/// The marker in `Snapshot.data`: the state follows on the snapshot stream.
pub(crate) const SNAPSHOT_MARKER: &[u8] = b"concord-snapshot-v1";

fn table_code(table: Table) -> u8 {
    Table::ALL
        .iter()
        .position(|t| *t == table)
        .expect("Table::ALL lists every table") as u8
}

fn table_from_code(code: u8) -> Option<Table> {
    Table::ALL.get(code as usize).copied()
}

fn push_record(chunk: &mut Vec<u8>, table: Table, key: &[u8], value: &[u8]) {
    chunk.push(table_code(table));
    chunk.extend_from_slice(&(key.len() as u32).to_be_bytes());
    chunk.extend_from_slice(key);
    chunk.extend_from_slice(&(value.len() as u32).to_be_bytes());
    chunk.extend_from_slice(value);
}

/// Streams a read view of the state machine as chunks of records, table by table in
/// `Table::ALL` order and key order within a table (the order `mvcc::Store::restore` expects).
pub(crate) struct ChunkIter {
    view: Box<dyn KvSnapshot>,
    table: usize,
    /// Where the next scan of the current table starts.
    resume_at: Vec<u8>,
}

impl ChunkIter {
    pub(crate) fn new(view: Box<dyn KvSnapshot>) -> Self {
        Self {
            view,
            table: 0,
            resume_at: Vec::new(),
        }
    }
}

impl Iterator for ChunkIter {
    type Item = Result<Vec<u8>, NodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut chunk = Vec::new();
        while self.table < Table::ALL.len() {
            let table = Table::ALL[self.table];
            let mut last_key: Option<Vec<u8>> = None;
            let scanned = self
                .view
                .scan(table, &self.resume_at, None, &mut |key, value| {
                    push_record(&mut chunk, table, key, value);
                    if chunk.len() >= CHUNK_BYTES {
                        last_key = Some(key.to_vec());
                        return false;
                    }
                    true
                });
            if let Err(e) = scanned {
                return Some(Err(NodeError::Storage(e.to_string())));
            }
            match last_key {
                Some(mut key) => {
                    // The smallest key after `key`: resume strictly past it.
                    key.push(0);
                    self.resume_at = key;
                    return Some(Ok(chunk));
                }
                None => {
                    self.table += 1;
                    self.resume_at.clear();
                }
            }
        }
        (!chunk.is_empty()).then_some(Ok(chunk))
    }
}

/// Reads the records of a spooled snapshot file back, for `mvcc::Store::restore`.
pub(crate) struct RecordReader {
    reader: BufReader<std::io::Take<Box<dyn Read + Send>>>,
    path: PathBuf,
    offset: u64,
    /// The file's length: no record length may point past it (a length from a peer is
    /// never allocated as given).
    len: u64,
    /// Whether [`END_MARKER`] ends the records (backups), or is corruption (snapshots).
    end_marker: bool,
}

/// In a backup, the byte after the last record; padding follows it.
pub(crate) const END_MARKER: u8 = 0xff;

impl RecordReader {
    /// Reads the records of an encrypted backup, whose sealed stream fills its first
    /// `len` bytes, up to the end marker.
    pub(crate) fn open_sealed_backup(
        path: &Path,
        keys: &Arc<KeyRing>,
        len: u64,
    ) -> Result<Self, StorageError> {
        let file = FramedFile::open_prefix(path, keys.clone(), len)
            .map_err(|e| StorageError::Corruption(format!("backup {}: {e}", path.display())))?;
        let plain_len = file.len();
        let source: Box<dyn Read + Send> = Box::new(FramedReader::new(Arc::new(file)));
        Ok(Self::from_source(path, source, plain_len, true))
    }

    /// Reads a spooled snapshot, sealed with `keys` if given.
    pub(crate) fn open(path: &Path, keys: Option<&Arc<KeyRing>>) -> Result<Self, StorageError> {
        let Some(keys) = keys else {
            return Self::open_prefix(path, None, false);
        };
        let file = FramedFile::open(path, keys.clone(), false).map_err(|e| {
            StorageError::Corruption(format!("snapshot file {}: {e}", path.display()))
        })?;
        let len = file.len();
        let source: Box<dyn Read + Send> = Box::new(FramedReader::new(Arc::new(file)));
        Ok(Self::from_source(path, source, len, false))
    }

    /// Reads the records of the first `len` bytes of the file (all of it if `None`), up to
    /// an [`END_MARKER`] if `end_marker`.
    pub(crate) fn open_prefix(
        path: &Path,
        len: Option<u64>,
        end_marker: bool,
    ) -> Result<Self, StorageError> {
        let io = |e: std::io::Error| {
            StorageError::Io(format!("open snapshot file {}: {e}", path.display()))
        };
        let file = File::open(path).map_err(io)?;
        let file_len = file.metadata().map_err(io)?.len();
        let len = len.map_or(file_len, |len| len.min(file_len));
        Ok(Self::from_source(path, Box::new(file), len, end_marker))
    }

    fn from_source(path: &Path, source: Box<dyn Read + Send>, len: u64, end_marker: bool) -> Self {
        Self {
            reader: BufReader::new(source.take(len)),
            path: path.to_path_buf(),
            offset: 0,
            len,
            end_marker,
        }
    }

    fn corrupt(&self, detail: &str) -> StorageError {
        StorageError::Corruption(format!(
            "snapshot file {} at offset {}: {detail}",
            self.path.display(),
            self.offset
        ))
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), StorageError> {
        self.reader
            .read_exact(buf)
            .map_err(|_| self.corrupt("truncated record"))?;
        self.offset += buf.len() as u64;
        Ok(())
    }

    fn read_bytes(&mut self) -> Result<Vec<u8>, StorageError> {
        let mut len = [0u8; 4];
        self.read_exact(&mut len)?;
        let len = u64::from(u32::from_be_bytes(len));
        if len > self.len.saturating_sub(self.offset) {
            return Err(self.corrupt("record length past the end of the file"));
        }
        let mut bytes = vec![0u8; len as usize];
        self.read_exact(&mut bytes)?;
        Ok(bytes)
    }

    fn read_record(&mut self) -> Option<<Self as Iterator>::Item> {
        let mut code = [0u8; 1];
        match self.reader.read(&mut code) {
            Ok(0) => return None,
            Ok(_) => self.offset += 1,
            Err(e) => return Some(Err(StorageError::Io(e.to_string()))),
        }
        if self.end_marker && code[0] == END_MARKER {
            return None;
        }
        let Some(table) = table_from_code(code[0]) else {
            return Some(Err(self.corrupt("unknown table")));
        };
        let record = self
            .read_bytes()
            .and_then(|key| Ok((table, key, self.read_bytes()?)));
        Some(record)
    }
}

impl Iterator for RecordReader {
    type Item = Result<(Table, Vec<u8>, Vec<u8>), StorageError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.read_record()
    }
}

/// Read views taken for snapshots that Raft is about to send, by destination.
pub(crate) type OutgoingViews = Mutex<HashMap<u64, (SnapshotMetadata, Box<dyn KvSnapshot>)>>;

/// Spooled snapshots that arrived whole, by (shard, index, term), waiting for Raft to accept.
pub(crate) type IncomingFiles = Mutex<HashMap<(ShardId, u64, u64), PathBuf>>;

/// Answers Raft's requests for a snapshot from a fresh read view of the state machine.
pub(crate) struct StateSnapshots<L: LogStore> {
    pub state: Arc<dyn StateReader>,
    pub log: Arc<L>,
    pub outgoing: Arc<OutgoingViews>,
}

impl<L: LogStore> SnapshotSource for StateSnapshots<L> {
    fn snapshot(
        &self,
        shard: ShardId,
        request_index: u64,
        to: u64,
    ) -> consensus::RaftResult<Snapshot> {
        let unavailable = || RaftError::Store(RaftStorageError::SnapshotTemporarilyUnavailable);
        let (view, applied) = self.state.snapshot_view().map_err(|e| {
            tracing::warn!(shard_id = shard.0, error = %e, "cannot take snapshot view");
            unavailable()
        })?;
        if applied.index < request_index {
            return Err(unavailable());
        }
        // The configuration of the members the view records: the one the snapshot's data
        // describes (the log's may already include conf changes apply has not reached).
        let members = mvcc::members_of(view.as_ref()).map_err(|e| {
            tracing::warn!(shard_id = shard.0, error = %e, "cannot read the members of a snapshot view");
            unavailable()
        })?;
        let conf_state = if members.is_empty() {
            self.log
                .state(shard)
                .map_err(|e| RaftError::Store(RaftStorageError::Other(Box::new(e))))?
                .conf_state
        } else {
            consensus::conf_state_of(members.iter().map(|m| (m.id, m.is_learner)))
        };
        let mut metadata = SnapshotMetadata {
            index: applied.index,
            term: applied.term,
            ..Default::default()
        };
        metadata.set_conf_state(conf_state);
        self.outgoing.lock().insert(to, (metadata.clone(), view));
        let mut snapshot = Snapshot::default();
        snapshot.set_metadata(metadata);
        snapshot.data = SNAPSHOT_MARKER.to_vec().into();
        Ok(snapshot)
    }
}

/// A snapshot being received, written to a spool file (sealed with the member's keys if the
/// data directory is encrypted). Dropped before [`Spool::complete`] (a failed stream), its
/// file is removed.
pub(crate) struct Spool {
    file: Option<SpoolFile>,
    path: PathBuf,
}

enum SpoolFile {
    Plain(BufWriter<File>),
    /// Appended in frames of a buffer's worth.
    Sealed(FramedFile, Vec<u8>),
}

impl Spool {
    pub(crate) fn create(
        dir: &Path,
        name: &str,
        keys: Option<Arc<KeyRing>>,
    ) -> Result<Self, NodeError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| NodeError::Storage(format!("create {}: {e}", dir.display())))?;
        let path = dir.join(name);
        let io = |e: std::io::Error| NodeError::Storage(format!("create {}: {e}", path.display()));
        let file = match keys {
            None => SpoolFile::Plain(BufWriter::new(File::create(&path).map_err(io)?)),
            Some(keys) => SpoolFile::Sealed(
                FramedFile::create(&path, keys).map_err(io)?,
                Vec::with_capacity(encryption::framed::MAX_FRAME),
            ),
        };
        Ok(Self {
            file: Some(file),
            path,
        })
    }

    pub(crate) fn write(&mut self, data: &[u8]) -> Result<(), NodeError> {
        let written = match self
            .file
            .as_mut()
            .expect("a spool is written until completed")
        {
            SpoolFile::Plain(file) => file.write_all(data),
            SpoolFile::Sealed(file, pending) => {
                pending.extend_from_slice(data);
                if pending.len() >= encryption::framed::MAX_FRAME {
                    let appended = file.append(pending);
                    pending.clear();
                    appended
                } else {
                    Ok(())
                }
            }
        };
        written.map_err(|e| NodeError::Storage(format!("write {}: {e}", self.path.display())))
    }

    /// Flushes and syncs the file and gives it its final name.
    pub(crate) fn complete(mut self) -> Result<PathBuf, NodeError> {
        let path = self.path.clone();
        let io = |e: std::io::Error| NodeError::Storage(format!("{}: {e}", path.display()));
        match self.file.take().expect("a spool is completed once") {
            SpoolFile::Plain(file) => {
                let file = file.into_inner().map_err(|e| io(e.into_error()))?;
                file.sync_all().map_err(io)?;
            }
            SpoolFile::Sealed(file, pending) => {
                file.append(&pending).map_err(io)?;
                file.sync().map_err(io)?;
            }
        }
        let done = self.path.with_extension("snap");
        std::fs::rename(&self.path, &done).map_err(io)?;
        Ok(done)
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Removes what earlier runs left in the spool directory: snapshots being received or
/// waiting for Raft when the member stopped are never installed after a restart (the
/// leader sends a new one).
pub(crate) fn clear_spool(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let spooled = path
            .extension()
            .is_some_and(|ext| ext == "part" || ext == "snap");
        if spooled {
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(error = %e, path = %path.display(), "cannot remove a stale snapshot file");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use storage::{KvStore, MemKvStore, WriteOp};

    use super::*;

    // Proves the chunked stream carries every record of every table in order, across chunk
    // boundaries (including a record larger than a chunk), and reads back from a spool file.
    #[test]
    fn chunks_round_trip_through_a_spool_file() {
        let kv = MemKvStore::new();
        let mut expected = Vec::new();
        let mut ops = Vec::new();
        for (i, table) in Table::ALL.iter().enumerate() {
            for k in 0..300u32 {
                let key = k.to_be_bytes().to_vec();
                let size = if k == 7 { CHUNK_BYTES + 10 } else { 4000 + i };
                let value = vec![k as u8; size];
                ops.push(WriteOp::Put {
                    table: *table,
                    key: key.clone(),
                    value: value.clone(),
                });
                expected.push((*table, key, value));
            }
        }
        kv.write(ops, true).unwrap();
        let chunks: Vec<Vec<u8>> = ChunkIter::new(Box::new(kv.snapshot().unwrap()))
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(chunks.len() > 3);

        let dir = std::env::temp_dir().join(format!("concord-snap-test-{}", std::process::id()));
        let sealed = Arc::new(KeyRing::from_keys(&[[5u8; 32]]));
        for keys in [None, Some(sealed)] {
            let mut spool = Spool::create(&dir, "s.part", keys.clone()).unwrap();
            for chunk in &chunks {
                spool.write(chunk).unwrap();
            }
            let path = spool.complete().unwrap();
            if keys.is_some() {
                // No value reaches the disk in the clear.
                let raw = std::fs::read(&path).unwrap();
                assert!(!raw.windows(64).any(|w| w == [7u8; 64]));
            }
            let records: Vec<_> = RecordReader::open(&path, keys.as_ref())
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert_eq!(records, expected);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    // Proves a record length from a peer is checked against the file before anything is
    // allocated: a 4 GiB length in a short file is corruption, named with its offset.
    #[test]
    fn a_record_length_past_the_end_of_the_file_is_corruption() {
        let dir = std::env::temp_dir().join(format!("concord-snap-len-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("huge.snap");
        let mut bytes = vec![table_code(Table::Revisions)];
        bytes.extend_from_slice(&u32::MAX.to_be_bytes());
        bytes.extend_from_slice(b"short");
        std::fs::write(&path, &bytes).unwrap();
        let first = RecordReader::open(&path, None).unwrap().next().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        match first {
            Err(StorageError::Corruption(detail)) => {
                assert!(detail.contains("past the end"), "{detail}");
            }
            other => panic!("a 4 GiB record length was accepted: {other:?}"),
        }
    }

    // Proves that a snapshot stream that fails part way leaves no file behind, and that files
    // an earlier run left are removed at the next start.
    #[test]
    fn abandoned_snapshot_files_are_removed() {
        let dir = std::env::temp_dir().join(format!("concord-snap-spool-{}", std::process::id()));
        let mut spool = Spool::create(&dir, "1-2-3.part", None).unwrap();
        spool.write(b"half a snapshot").unwrap();
        drop(spool);
        assert!(
            !dir.join("1-2-3.part").exists(),
            "a failed stream left its file"
        );
        std::fs::write(dir.join("1-2-4.part"), b"x").unwrap();
        std::fs::write(dir.join("1-2-5.snap"), b"x").unwrap();
        std::fs::write(dir.join("other"), b"x").unwrap();
        clear_spool(&dir);
        let mut left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(left, vec!["other".to_string()]);
    }
}
