//! Backups: a whole state machine in one file, for `etcdctl snapshot save` and restore.
//!
//! A backup file is the record stream of a Raft snapshot (see `snapshot`), taken from one
//! consistent read view, an end marker, zeros up to a multiple of 512 bytes, and the
//! SHA-256 of everything before it:
//!
//! ```text
//! backup = [records...][0xff][zeros][sha256: 32 bytes]
//! ```
//!
//! A member with encryption at rest (`--encryption-key-file`) seals its backups: the records
//! and end marker travel as the frames of a sealed stream (`encryption::StreamSealer`), the
//! last frame padded inside so that the stream ends on a 512-byte boundary; the SHA-256 of
//! the sealed bytes follows. Restoring one needs a key file holding the key it names.
//!
//! The padding is there for etcd's tools: `etcdctl snapshot save` keeps a file only if its
//! size is 32 bytes past a multiple of 512 (etcd's data file is made of pages), which is
//! how it tells that the checksum is there.
//!
//! Restoring one makes the state machine of a member of a new cluster: the data, revisions
//! and leases are kept; the old cluster's membership and log position are dropped, so that
//! the new cluster's bootstrap entries apply on top of it.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;
use std::sync::Arc;

use encryption::{KeyRing, StreamSealer};

use mvcc::{Revision, Store};
use sha2::{Digest, Sha256};
use storage::KvStore;

use crate::snapshot::{ChunkIter, RecordReader, END_MARKER};
use crate::state::StateReader;
use crate::NodeError;

/// Bytes of the checksum at the end of a backup.
pub const BACKUP_CHECKSUM_BYTES: u64 = 32;
/// The records and padding of a backup are a multiple of this.
const BACKUP_ALIGN: usize = 512;

/// The chunks of a backup of `state`, sealed with `keys` if given, checksum last.
pub(crate) fn chunks(
    state: &dyn StateReader,
    keys: Option<Arc<KeyRing>>,
) -> Result<impl Iterator<Item = Result<Vec<u8>, NodeError>> + Send, NodeError> {
    let (view, _) = state.snapshot_view()?;
    let mut records = ChunkIter::new(view);
    let mut sealer = keys
        .map(StreamSealer::new)
        .transpose()
        .map_err(|e| NodeError::Storage(format!("seal the backup: {e}")))?;
    let mut hasher = Some(Sha256::new());
    let mut written = 0usize;
    let mut padded = false;
    Ok(std::iter::from_fn(move || {
        let hasher_now = hasher.as_mut()?;
        match records.next() {
            Some(Ok(chunk)) => {
                let chunk = match sealer.as_mut() {
                    Some(sealer) => sealer.seal(&chunk),
                    None => chunk,
                };
                hasher_now.update(&chunk);
                written += chunk.len();
                Some(Ok(chunk))
            }
            Some(Err(e)) => {
                hasher = None;
                Some(Err(e))
            }
            None if !padded => {
                padded = true;
                let end = match sealer.as_mut() {
                    Some(sealer) => sealer.seal_aligned(&[END_MARKER], BACKUP_ALIGN as u64),
                    None => {
                        let mut end = vec![END_MARKER];
                        let total = written + 1;
                        end.resize(1 + (BACKUP_ALIGN - total % BACKUP_ALIGN) % BACKUP_ALIGN, 0);
                        end
                    }
                };
                hasher_now.update(&end);
                Some(Ok(end))
            }
            None => hasher.take().map(|hasher| Ok(hasher.finalize().to_vec())),
        }
    }))
}

/// What a backup file holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupStatus {
    /// CRC-32C of the records.
    pub hash: u32,
    /// The revision of the state it holds.
    pub revision: Revision,
    /// Records (keys of every table) it holds.
    pub total_keys: u64,
    /// Its size in bytes.
    pub total_size: u64,
}

fn io_error(path: &Path, e: impl std::fmt::Display) -> NodeError {
    NodeError::Storage(format!("{}: {e}", path.display()))
}

/// Checks the SHA-256 at the end of the backup at `path`; returns the length of the records.
///
/// # Errors
/// `Storage` if the file cannot be read, is too short, or its checksum does not match.
pub fn verify_backup(path: &Path) -> Result<u64, NodeError> {
    let records_len = records_len(path)?;
    let mut file = File::open(path).map_err(|e| io_error(path, e))?;
    let mut hasher = Sha256::new();
    let mut reader = BufReader::new((&mut file).take(records_len));
    std::io::copy(&mut reader, &mut hasher).map_err(|e| io_error(path, e))?;
    let mut trailer = [0u8; BACKUP_CHECKSUM_BYTES as usize];
    drop(reader);
    file.read_exact(&mut trailer)
        .map_err(|e| io_error(path, e))?;
    let computed = hasher.finalize();
    if computed.as_slice() != trailer {
        return Err(NodeError::Storage(format!(
            "{}: expected sha256 {}, got {}",
            path.display(),
            hex(&trailer),
            hex(&computed)
        )));
    }
    Ok(records_len)
}

fn records_len(path: &Path) -> Result<u64, NodeError> {
    let len = std::fs::metadata(path)
        .map_err(|e| io_error(path, e))?
        .len();
    len.checked_sub(BACKUP_CHECKSUM_BYTES).ok_or_else(|| {
        NodeError::Storage(format!(
            "{}: {len} bytes is too short for a backup",
            path.display()
        ))
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Makes `kv` (an empty store) the state machine of a member of a new cluster from the
/// backup at `path`: checks its checksum unless `skip_hash_check`, restores its records,
/// then drops the old cluster's membership and log position. Returns what it held.
///
/// # Errors
/// `Storage` if the checksum does not match, a record is malformed, or `kv` fails.
pub fn restore_backup<S: KvStore>(
    path: &Path,
    kv: S,
    skip_hash_check: bool,
    keys: Option<&Arc<KeyRing>>,
) -> Result<BackupStatus, NodeError> {
    let records_len = if skip_hash_check {
        records_len(path)?
    } else {
        verify_backup(path)?
    };
    let status = backup_status_of(path, records_len, keys)?;
    let store = Store::open(kv)?;
    let mut records = backup_records(path, records_len, keys)?;
    store.restore(&mut records)?;
    store.reset_for_new_cluster()?;
    Ok(status)
}

/// What the backup at `path` holds (its checksum is not checked); an encrypted one is read
/// with `keys`.
///
/// # Errors
/// `Storage` if the file cannot be read or a record is malformed, or it is encrypted and
/// `keys` lacks its key.
pub fn backup_status(path: &Path, keys: Option<&Arc<KeyRing>>) -> Result<BackupStatus, NodeError> {
    backup_status_of(path, records_len(path)?, keys)
}

/// The records of the backup at `path`, whose first `records_len` bytes hold them.
fn backup_records(
    path: &Path,
    records_len: u64,
    keys: Option<&Arc<KeyRing>>,
) -> Result<RecordReader, NodeError> {
    let sealed = encryption::is_sealed(path).map_err(|e| io_error(path, e))?;
    let records = match (sealed, keys) {
        (false, _) => RecordReader::open_prefix(path, Some(records_len), true),
        (true, Some(keys)) => RecordReader::open_sealed_backup(path, keys, records_len),
        (true, None) => {
            return Err(NodeError::Storage(format!(
                "{} is an encrypted backup: give the --encryption-key-file holding its key",
                path.display()
            )))
        }
    };
    records.map_err(|e| NodeError::Storage(e.to_string()))
}

fn backup_status_of(
    path: &Path,
    records_len: u64,
    keys: Option<&Arc<KeyRing>>,
) -> Result<BackupStatus, NodeError> {
    let records = backup_records(path, records_len, keys)?;
    let mut status = BackupStatus {
        hash: 0,
        revision: 0,
        total_keys: 0,
        total_size: records_len + BACKUP_CHECKSUM_BYTES,
    };
    for record in records {
        let (table, key, value) = record.map_err(|e| NodeError::Storage(e.to_string()))?;
        status.total_keys += 1;
        status.hash = crc32c::crc32c_append(status.hash, &key);
        status.hash = crc32c::crc32c_append(status.hash, &value);
        if let Some(revision) = mvcc::current_revision_record(table, &key, &value) {
            status.revision = revision;
        }
    }
    Ok(status)
}
