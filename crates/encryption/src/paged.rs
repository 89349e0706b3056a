//! A random-access file sealed in blocks: what the state machine's database (redb) reads and
//! writes through.
//!
//! # Layout
//!
//! ```text
//! header (64 bytes, plain): magic (16) | file id (16, random) | zeros
//! slot 0a | slot 0b | slot 1 | slot 2 | ...
//! slot: nonce (24) | key id (4) | valid length (4) | sequence (8) | tag (16) | 4096 sealed bytes
//! ```
//!
//! Logical block `b` (bytes `b*4096 ..`) lives in one slot, except block 0, which has two.
//! Each slot is sealed with its key, binding file id, block number, key id, valid length and
//! sequence: a slot moved to another place or file, or changed in any bit, fails to open.
//! The logical length is `(blocks - 1) * 4096 + valid length of the last block`; bytes past
//! the valid length of a block are always zero.
//!
//! # Crash behaviour
//!
//! redb overwrites in place only its header, which lies in block 0; everything else it
//! writes to pages no durable commit refers to, and it makes those durable before a header
//! refers to them (two-phase commit). A torn write of another block can therefore only hit
//! a block nothing durable refers to. Block 0 is written to the slot that does not hold the
//! current version, with the next sequence number: a torn write of it leaves the previous
//! version, as if the write had not happened, which is what redb expects of an unsynced
//! header write.
//!
//! A block that fails to open is an error (the member stops): a wrong key is named as such,
//! anything else is damage or tampering.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;

use crate::keys::{KeyId, KeyRing, NONCE_LEN, TAG_LEN};

/// Plaintext bytes in a block: redb's page size, so that its page writes cover whole blocks.
pub const BLOCK: usize = 4096;
/// The first bytes of a sealed paged file.
pub const MAGIC: &[u8; 16] = b"concord:pages:v1";
const HEADER: u64 = 64;
const META: usize = NONCE_LEN + 4 + 4 + 8 + TAG_LEN;
const SLOT: usize = META + BLOCK;
/// Blocks written with one system call at most while growing the file: bounds the buffer.
const GROW_BATCH: u64 = 256;

/// Where block 0's current version is.
#[derive(Clone, Copy, Debug)]
struct Block0 {
    slot: u64,
    sequence: u64,
}

#[derive(Debug)]
struct State {
    /// Logical length in bytes.
    len: u64,
    /// Blocks allocated: `ceil(len / BLOCK)`.
    blocks: u64,
    block0: Block0,
}

/// A sealed random-access file.
#[derive(Debug)]
pub struct PagedFile {
    file: File,
    path: PathBuf,
    keys: Arc<KeyRing>,
    file_id: [u8; 16],
    state: RwLock<State>,
}

/// An error for a file that cannot be trusted.
pub(crate) fn damaged(path: &Path, detail: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("encrypted file {}: {detail}", path.display()),
    )
}

/// Whether the file at `path` starts as a sealed file of any kind of this crate: false for a
/// missing or empty file.
///
/// # Errors
/// The file exists but cannot be read.
pub fn is_sealed(path: &Path) -> io::Result<bool> {
    let mut magic = [0u8; 16];
    match File::open(path) {
        Ok(file) => match file.read_exact_at(&mut magic, 0) {
            Ok(()) => Ok(magic.starts_with(b"concord:")),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
            Err(e) => Err(e),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

fn slot_offset(block: u64, block0_slot: u64) -> u64 {
    if block == 0 {
        HEADER + block0_slot * SLOT as u64
    } else {
        HEADER + (block + 1) * SLOT as u64
    }
}

fn aad(file_id: &[u8; 16], block: u64, key: KeyId, valid: u32, sequence: u64) -> [u8; 40] {
    let mut aad = [0u8; 40];
    aad[..16].copy_from_slice(file_id);
    aad[16..24].copy_from_slice(&block.to_le_bytes());
    aad[24..28].copy_from_slice(&key.0.to_le_bytes());
    aad[28..32].copy_from_slice(&valid.to_le_bytes());
    aad[32..40].copy_from_slice(&sequence.to_le_bytes());
    aad
}

/// A slot's fields, as read from disk.
struct OpenedSlot {
    valid: u32,
    sequence: u64,
}

impl PagedFile {
    /// Opens the sealed file at `path`, creating it if it does not exist or is empty.
    ///
    /// # Errors
    /// The file cannot be read or written; it is not a sealed paged file; a block is sealed
    /// with a key `keys` lacks; a block fails to open (damage or tampering).
    pub fn open(path: &Path, keys: Arc<KeyRing>) -> io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let mut physical = file.metadata()?.len();
        let mut file_id = [0u8; 16];
        if physical == 0 {
            getrandom::getrandom(&mut file_id).map_err(io::Error::other)?;
            let mut header = [0u8; HEADER as usize];
            header[..16].copy_from_slice(MAGIC);
            header[16..32].copy_from_slice(&file_id);
            file.write_all_at(&header, 0)?;
            file.sync_all()?;
            physical = HEADER;
        } else {
            let mut header = [0u8; HEADER as usize];
            file.read_exact_at(&mut header, 0)
                .map_err(|_| damaged(path, "shorter than its header"))?;
            if &header[..16] != MAGIC {
                return Err(damaged(path, "not a sealed paged file"));
            }
            file_id.copy_from_slice(&header[16..32]);
        }
        let mut this = Self {
            file,
            path: path.to_path_buf(),
            keys,
            file_id,
            state: RwLock::new(State {
                len: 0,
                blocks: 0,
                block0: Block0 {
                    slot: 0,
                    sequence: 0,
                },
            }),
        };
        let slots = (physical - HEADER) / SLOT as u64;
        let whole = HEADER + slots * SLOT as u64;
        // Fewer than block 0's two slots, or a slot cut short: a growth that a crash
        // interrupted, never referred to by anything durable.
        let keep = if slots < 2 { HEADER } else { whole };
        if keep != physical {
            tracing::warn!(
                file = %path.display(),
                bytes = physical - keep,
                "dropping the unfinished growth of an encrypted file"
            );
            this.file.set_len(keep)?;
        }
        if keep > HEADER {
            let blocks = (keep - HEADER) / SLOT as u64 - 1;
            let block0 = this.choose_block0()?;
            let mut last = vec![0u8; BLOCK];
            let opened = this.read_block(blocks - 1, block0.slot, &mut last)?;
            let state = this.state.get_mut();
            state.block0 = block0;
            state.blocks = blocks;
            state.len = (blocks - 1) * BLOCK as u64 + u64::from(opened.valid);
        }
        Ok(this)
    }

    /// The logical length.
    pub fn len(&self) -> u64 {
        self.state.read().len
    }

    /// Whether the logical length is zero.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The version of block 0 with the highest sequence that opens.
    fn choose_block0(&self) -> io::Result<Block0> {
        let mut best: Option<Block0> = None;
        let mut first_error = None;
        let mut plain = vec![0u8; BLOCK];
        for slot in 0..2 {
            match self.read_block(0, slot, &mut plain) {
                Ok(opened) => {
                    if best.is_none_or(|b| opened.sequence > b.sequence) {
                        best = Some(Block0 {
                            slot,
                            sequence: opened.sequence,
                        });
                    }
                }
                Err(e) => first_error = first_error.or(Some(e)),
            }
        }
        match (best, first_error) {
            (Some(best), Some(e)) => {
                // A torn write of the newer version: the older one stands.
                tracing::warn!(file = %self.path.display(), error = %e, "using the previous version of block 0");
                Ok(best)
            }
            (Some(best), None) => Ok(best),
            (None, Some(e)) => Err(e),
            (None, None) => unreachable!("two slots were read"),
        }
    }

    /// Reads and opens block `block` (from `block0_slot` for block 0) into `out` (BLOCK bytes).
    fn read_block(&self, block: u64, block0_slot: u64, out: &mut [u8]) -> io::Result<OpenedSlot> {
        let mut slot = vec![0u8; SLOT];
        self.file
            .read_exact_at(&mut slot, slot_offset(block, block0_slot))?;
        let opened = self.open_slot(block, &mut slot)?;
        out.copy_from_slice(&slot[META..]);
        Ok(opened)
    }

    /// Opens a slot read from disk in place: afterwards `slot[META..]` is the plaintext.
    fn open_slot(&self, block: u64, slot: &mut [u8]) -> io::Result<OpenedSlot> {
        let (meta, data) = slot.split_at_mut(META);
        let nonce: [u8; NONCE_LEN] = meta[..24].try_into().expect("sized");
        let key_id = KeyId(u32::from_le_bytes(meta[24..28].try_into().expect("sized")));
        let valid = u32::from_le_bytes(meta[28..32].try_into().expect("sized"));
        let sequence = u64::from_le_bytes(meta[32..40].try_into().expect("sized"));
        let tag: [u8; TAG_LEN] = meta[40..56].try_into().expect("sized");
        let Some(key) = self.keys.get(key_id) else {
            return Err(damaged(
                &self.path,
                format!(
                    "block {block} is sealed with key {key_id}, which the key file does not hold \
                     (wrong --encryption-key-file?)"
                ),
            ));
        };
        if valid as usize > BLOCK
            || !key.open(
                &nonce,
                &aad(&self.file_id, block, key_id, valid, sequence),
                data,
                &tag,
            )
        {
            return Err(damaged(
                &self.path,
                format!("block {block} fails authentication: the file is damaged or was altered"),
            ));
        }
        Ok(OpenedSlot { valid, sequence })
    }

    /// Seals `plain` (BLOCK bytes) as block `block` into `slot` (SLOT bytes).
    fn seal_into(&self, block: u64, valid: u32, sequence: u64, plain: &[u8], slot: &mut [u8]) {
        debug_assert!(plain[valid as usize..].iter().all(|b| *b == 0));
        let key = self.keys.active();
        let (meta, data) = slot.split_at_mut(META);
        data.copy_from_slice(plain);
        let (nonce, tag) = key.seal(&aad(&self.file_id, block, key.id(), valid, sequence), data);
        meta[..24].copy_from_slice(&nonce);
        meta[24..28].copy_from_slice(&key.id().0.to_le_bytes());
        meta[28..32].copy_from_slice(&valid.to_le_bytes());
        meta[32..40].copy_from_slice(&sequence.to_le_bytes());
        meta[40..56].copy_from_slice(&tag);
    }

    fn valid_in(len: u64, block: u64) -> u32 {
        let start = block * BLOCK as u64;
        u32::try_from(len.saturating_sub(start).min(BLOCK as u64)).expect("at most a block")
    }

    /// Writes a new version of block 0, for a file of `len` bytes, to the slot not holding
    /// the current one.
    fn write_block0(&self, state: &mut State, plain: &[u8], len: u64) -> io::Result<()> {
        let next = Block0 {
            slot: 1 - state.block0.slot,
            sequence: state.block0.sequence + 1,
        };
        let mut slot = vec![0u8; SLOT];
        self.seal_into(0, Self::valid_in(len, 0), next.sequence, plain, &mut slot);
        self.file.write_all_at(&slot, slot_offset(0, next.slot))?;
        state.block0 = next;
        Ok(())
    }

    /// Reads `out.len()` bytes at `offset`.
    ///
    /// # Errors
    /// The range passes the end; a block fails to open; the file cannot be read.
    pub fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let state = self.state.read();
        let end = offset
            .checked_add(out.len() as u64)
            .filter(|end| *end <= state.len)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "read of {} bytes at {offset} passes the end ({}) of {}",
                        out.len(),
                        state.len,
                        self.path.display()
                    ),
                )
            })?;
        if out.is_empty() {
            return Ok(());
        }
        let first = offset / BLOCK as u64;
        let last = (end - 1) / BLOCK as u64;
        let mut done = 0usize;
        let mut block = first;
        while block <= last {
            // Blocks after 0 are contiguous on disk: read a run with one call.
            let run_end = if block == 0 { 0 } else { last };
            let count = (run_end - block + 1) as usize;
            let mut slots = vec![0u8; SLOT * count];
            self.file
                .read_exact_at(&mut slots, slot_offset(block, state.block0.slot))?;
            for (i, slot) in slots.chunks_exact_mut(SLOT).enumerate() {
                let b = block + i as u64;
                self.open_slot(b, slot)?;
                let plain = &slot[META..];
                let start = if b == first {
                    (offset % BLOCK as u64) as usize
                } else {
                    0
                };
                let take = (BLOCK - start).min(out.len() - done);
                out[done..done + take].copy_from_slice(&plain[start..start + take]);
                done += take;
            }
            block = run_end + 1;
        }
        debug_assert_eq!(done, out.len());
        Ok(())
    }

    /// Writes `data` at `offset`, growing the file if it ends past the end.
    ///
    /// # Errors
    /// A block to be partly rewritten fails to open; the file cannot be written.
    pub fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let mut state = self.state.write();
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "write past 2^64"))?;
        if end > state.len {
            self.resize(&mut state, end)?;
        }
        let first = offset / BLOCK as u64;
        let last = (end - 1) / BLOCK as u64;
        let mut run: Vec<u8> = Vec::new();
        let mut run_start = None;
        let mut plain = vec![0u8; BLOCK];
        for block in first..=last {
            let block_start = block * BLOCK as u64;
            let from = offset.max(block_start);
            let to = end.min(block_start + BLOCK as u64);
            let valid = Self::valid_in(state.len, block);
            if to - from < u64::from(valid) {
                // Part of the block: read the rest of it first.
                self.read_block(block, state.block0.slot, &mut plain)?;
            } else {
                plain.fill(0);
            }
            let src = &data[(from - offset) as usize..(to - offset) as usize];
            let at = (from - block_start) as usize;
            plain[at..at + src.len()].copy_from_slice(src);
            if block == 0 {
                let len = state.len;
                self.write_block0(&mut state, &plain, len)?;
                continue;
            }
            run_start.get_or_insert(block);
            let at = run.len();
            run.resize(at + SLOT, 0);
            self.seal_into(block, valid, 0, &plain, &mut run[at..]);
        }
        if let Some(start) = run_start {
            self.file.write_all_at(&run, slot_offset(start, 0))?;
        }
        Ok(())
    }

    /// Sets the logical length: new bytes are zero.
    ///
    /// # Errors
    /// The last kept block fails to open; the file cannot be written.
    pub fn set_len(&self, len: u64) -> io::Result<()> {
        let mut state = self.state.write();
        self.resize(&mut state, len)
    }

    fn resize(&self, state: &mut State, len: u64) -> io::Result<()> {
        if len == state.len {
            return Ok(());
        }
        let blocks = len.div_ceil(BLOCK as u64);
        let mut plain = vec![0u8; BLOCK];
        if len > state.len {
            // The old last block's length grows: its tail is zeros already, reseal it.
            if state.blocks > 0 {
                let last = state.blocks - 1;
                self.read_block(last, state.block0.slot, &mut plain)?;
                self.reseal(state, last, &plain, len)?;
            }
            // New blocks of zeros, block 0's two slots at once.
            plain.fill(0);
            let mut block = state.blocks;
            while block < blocks {
                let batch_end = (block + GROW_BATCH).min(blocks);
                let slots = if block == 0 {
                    batch_end + 1
                } else {
                    batch_end - block
                };
                let mut run = vec![0u8; SLOT * slots as usize];
                let mut chunks = run.chunks_exact_mut(SLOT);
                for b in block..batch_end {
                    let valid = Self::valid_in(len, b);
                    if b == 0 {
                        for sequence in [1, 0] {
                            let slot = chunks.next().expect("sized for both slots");
                            self.seal_into(0, valid, sequence, &plain, slot);
                        }
                    } else {
                        let slot = chunks.next().expect("sized");
                        self.seal_into(b, valid, 0, &plain, slot);
                    }
                }
                self.file.write_all_at(&run, slot_offset(block, 0))?;
                if block == 0 {
                    state.block0 = Block0 {
                        slot: 0,
                        sequence: 1,
                    };
                }
                block = batch_end;
            }
        } else if blocks == 0 {
            self.file.set_len(HEADER)?;
        } else {
            // Zero what is cut off the new last block, so that growing again reads zeros.
            let last = blocks - 1;
            self.read_block(last, state.block0.slot, &mut plain)?;
            let keep = (len - last * BLOCK as u64) as usize;
            plain[keep..].fill(0);
            self.reseal(state, last, &plain, len)?;
            self.file.set_len(slot_offset(blocks, 0))?;
        }
        state.len = len;
        state.blocks = blocks;
        Ok(())
    }

    /// Seals `plain` as block `block` at its place, for a file of `len` bytes.
    fn reseal(&self, state: &mut State, block: u64, plain: &[u8], len: u64) -> io::Result<()> {
        if block == 0 {
            return self.write_block0(state, plain, len);
        }
        let mut slot = vec![0u8; SLOT];
        self.seal_into(block, Self::valid_in(len, block), 0, plain, &mut slot);
        self.file.write_all_at(&slot, slot_offset(block, 0))
    }

    /// Makes every write so far durable.
    ///
    /// # Errors
    /// The file system's.
    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ring(byte: u8) -> Arc<KeyRing> {
        Arc::new(KeyRing::from_keys(&[[byte; 32]]))
    }

    #[test]
    fn contents_and_length_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = PagedFile::open(&path, ring(1)).unwrap();
        file.set_len(3 * BLOCK as u64 + 10).unwrap();
        file.write(100, b"hello").unwrap();
        file.write(BLOCK as u64 - 2, b"across").unwrap();
        file.write(3 * BLOCK as u64 + 5, b"tail!").unwrap();
        drop(file);
        let file = PagedFile::open(&path, ring(1)).unwrap();
        assert_eq!(file.len(), 3 * BLOCK as u64 + 10);
        let mut out = [0u8; 5];
        file.read(100, &mut out).unwrap();
        assert_eq!(&out, b"hello");
        let mut out = [0u8; 6];
        file.read(BLOCK as u64 - 2, &mut out).unwrap();
        assert_eq!(&out, b"across");
        let mut out = [0u8; 5];
        file.read(3 * BLOCK as u64 + 5, &mut out).unwrap();
        assert_eq!(&out, b"tail!");
        assert!(file.read(3 * BLOCK as u64 + 6, &mut out).is_err());
    }

    #[test]
    fn no_plaintext_reaches_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = PagedFile::open(&path, ring(1)).unwrap();
        file.write(0, &b"secret-value-".repeat(1000)).unwrap();
        file.sync().unwrap();
        let raw = std::fs::read(&path).unwrap();
        assert!(!raw.windows(12).any(|w| w == b"secret-value"));
    }

    #[test]
    fn a_wrong_key_is_named_and_an_altered_block_fails() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = PagedFile::open(&path, ring(1)).unwrap();
        file.write(0, &[7u8; 3 * BLOCK]).unwrap();
        drop(file);
        let error = PagedFile::open(&path, ring(2)).unwrap_err().to_string();
        assert!(
            error.contains("which the key file does not hold"),
            "{error}"
        );

        // Flip one byte of block 1's sealed data: reading it fails, the others read.
        let raw = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        raw.write_all_at(&[0x55], slot_offset(1, 0) + META as u64 + 17)
            .unwrap();
        let file = PagedFile::open(&path, ring(1)).unwrap();
        let mut out = [0u8; 4];
        let error = file.read(BLOCK as u64, &mut out).unwrap_err().to_string();
        assert!(error.contains("block 1 fails authentication"), "{error}");
        file.read(2 * BLOCK as u64, &mut out).unwrap();
        drop(file);
        // The last block is read at open: altering it stops the open.
        raw.write_all_at(&[0x55], slot_offset(2, 0) + 3).unwrap();
        let error = PagedFile::open(&path, ring(1)).unwrap_err().to_string();
        assert!(error.contains("block 2 fails authentication"), "{error}");
    }

    #[test]
    fn a_torn_write_of_block_0_leaves_its_previous_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = PagedFile::open(&path, ring(1)).unwrap();
        file.write(0, b"version one").unwrap();
        file.write(0, b"version two").unwrap();
        let current = file.state.read().block0.slot;
        drop(file);
        // The newest version is torn: half its slot is garbage.
        let raw = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        raw.write_all_at(&[0xAB; 2048], slot_offset(0, current) + 2000)
            .unwrap();
        let file = PagedFile::open(&path, ring(1)).unwrap();
        let mut out = [0u8; 11];
        file.read(0, &mut out).unwrap();
        assert_eq!(&out, b"version one");
        // And the next write goes to the torn slot, not over the surviving version.
        file.write(0, b"version six").unwrap();
        drop(file);
        let file = PagedFile::open(&path, ring(1)).unwrap();
        file.read(0, &mut out).unwrap();
        assert_eq!(&out, b"version six");
    }

    #[test]
    fn blocks_sealed_with_an_old_key_stay_readable_and_are_resealed_on_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let old = [1u8; 32];
        let new = [2u8; 32];
        let file = PagedFile::open(&path, Arc::new(KeyRing::from_keys(&[old]))).unwrap();
        file.write(0, &[9u8; 2 * BLOCK]).unwrap();
        drop(file);
        let rotated = Arc::new(KeyRing::from_keys(&[new, old]));
        let file = PagedFile::open(&path, rotated).unwrap();
        file.write(BLOCK as u64, &[8u8; BLOCK]).unwrap();
        drop(file);
        // Block 1 is under the new key now, block 0 still under the old one.
        let only_new = Arc::new(KeyRing::from_keys(&[new]));
        let error = PagedFile::open(&path, only_new).unwrap_err().to_string();
        assert!(error.contains("block 0 is sealed with key"), "{error}");
    }

    #[derive(Debug, Clone)]
    enum Op {
        Write(u64, Vec<u8>),
        SetLen(u64),
        Reopen,
    }

    fn op() -> impl Strategy<Value = Op> {
        let max = 5 * BLOCK as u64;
        prop_oneof![
            4 => (0..max, proptest::collection::vec(any::<u8>(), 1..2 * BLOCK))
                .prop_map(|(o, d)| Op::Write(o, d)),
            2 => (0..max).prop_map(Op::SetLen),
            1 => Just(Op::Reopen),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// The sealed file reads back what a plain byte vector would hold, through writes,
        /// growth, shrinking and reopening.
        #[test]
        fn behaves_like_a_byte_vector(ops in proptest::collection::vec(op(), 1..24)) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("f");
            let keys = ring(3);
            let mut file = PagedFile::open(&path, keys.clone()).unwrap();
            let mut model: Vec<u8> = Vec::new();
            for op in ops {
                match op {
                    Op::Write(offset, data) => {
                        file.write(offset, &data).unwrap();
                        let end = offset as usize + data.len();
                        if model.len() < end {
                            model.resize(end, 0);
                        }
                        model[offset as usize..end].copy_from_slice(&data);
                    }
                    Op::SetLen(len) => {
                        file.set_len(len).unwrap();
                        model.resize(len as usize, 0);
                    }
                    Op::Reopen => {
                        drop(file);
                        file = PagedFile::open(&path, keys.clone()).unwrap();
                    }
                }
                prop_assert_eq!(file.len(), model.len() as u64);
                let mut all = vec![0u8; model.len()];
                file.read(0, &mut all).unwrap();
                prop_assert!(all == model);
            }
        }
    }
}
