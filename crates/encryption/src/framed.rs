//! An append-only file sealed in frames: what the Raft log (raft-engine) and snapshot spools
//! write through.
//!
//! # Layout
//!
//! ```text
//! header (64 bytes, plain): magic (16) | file id (16, random) | zeros
//! frame: length (4) | key id (4) | nonce (24) | tag (16) | length sealed bytes
//! ```
//!
//! Each frame is sealed binding file id, its logical offset, length and key id: frames
//! cannot be reordered, moved between files or altered. One append is written with one
//! system call however many frames it takes, so a process killed mid-append leaves all of
//! it or none (as with a plain file). Frames are never rewritten, so an append cannot damage
//! what earlier appends made durable.
//!
//! # Opening
//!
//! Every frame is opened once. A frame cut short by the end of the file, or a zeroed frame
//! header, is an append that did not finish: it is dropped, with a warning. A whole frame
//! that fails to open stops the open: a wrong key is named as such, anything else is damage
//! or tampering.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;

use crate::keys::{KeyId, KeyRing, NONCE_LEN, TAG_LEN};
use crate::paged::damaged;

/// The first bytes of a sealed framed file.
pub const MAGIC: &[u8; 16] = b"concord:frames:1";
const HEADER: u64 = 64;
const META: usize = 4 + 4 + NONCE_LEN + TAG_LEN;
/// Most plaintext bytes in a frame: bounds what one read decrypts.
pub const MAX_FRAME: usize = 64 * 1024;

#[derive(Clone, Copy, Debug)]
struct Frame {
    logical: u64,
    physical: u64,
    len: u32,
}

#[derive(Debug, Default)]
struct State {
    frames: Vec<Frame>,
    len: u64,
    physical: u64,
}

/// A sealed append-only file.
#[derive(Debug)]
pub struct FramedFile {
    file: File,
    path: PathBuf,
    keys: Arc<KeyRing>,
    file_id: RwLock<[u8; 16]>,
    state: RwLock<State>,
}

fn aad(file_id: &[u8; 16], logical: u64, len: u32, key: KeyId) -> [u8; 32] {
    let mut aad = [0u8; 32];
    aad[..16].copy_from_slice(file_id);
    aad[16..24].copy_from_slice(&logical.to_le_bytes());
    aad[24..28].copy_from_slice(&len.to_le_bytes());
    aad[28..32].copy_from_slice(&key.0.to_le_bytes());
    aad
}

/// A new file id and the header that carries it.
fn new_header() -> io::Result<([u8; 16], [u8; HEADER as usize])> {
    let mut file_id = [0u8; 16];
    getrandom::getrandom(&mut file_id).map_err(io::Error::other)?;
    let mut header = [0u8; HEADER as usize];
    header[..16].copy_from_slice(MAGIC);
    header[16..32].copy_from_slice(&file_id);
    Ok((file_id, header))
}

/// Seals `data` as frames following `logical` plaintext bytes (and `physical` file bytes) of
/// the file `file_id`, appending them to `out`; returns where each frame is.
fn seal_frames(
    key: &crate::keys::Key,
    file_id: &[u8; 16],
    mut logical: u64,
    mut physical: u64,
    data: &[u8],
    out: &mut Vec<u8>,
) -> Vec<Frame> {
    let mut frames = Vec::with_capacity(data.len().div_ceil(MAX_FRAME));
    for chunk in data.chunks(MAX_FRAME) {
        let len = u32::try_from(chunk.len()).expect("a frame is at most MAX_FRAME");
        let at = out.len();
        out.resize(at + META, 0);
        out.extend_from_slice(chunk);
        let (meta, sealed) = out[at..].split_at_mut(META);
        let (nonce, tag) = key.seal(&aad(file_id, logical, len, key.id()), sealed);
        meta[..4].copy_from_slice(&len.to_le_bytes());
        meta[4..8].copy_from_slice(&key.id().0.to_le_bytes());
        meta[8..32].copy_from_slice(&nonce);
        meta[32..48].copy_from_slice(&tag);
        frames.push(Frame {
            logical,
            physical,
            len,
        });
        logical += u64::from(len);
        physical += (META + chunk.len()) as u64;
    }
    frames
}

/// Seals a stream into the framed format without a file (backups sent to clients): the
/// header, then the frames of each piece given.
pub struct StreamSealer {
    keys: Arc<KeyRing>,
    file_id: [u8; 16],
    header: Option<[u8; HEADER as usize]>,
    logical: u64,
    physical: u64,
}

impl StreamSealer {
    /// A stream sealed with `keys`' first key.
    ///
    /// # Errors
    /// The operating system's random source fails.
    pub fn new(keys: Arc<KeyRing>) -> io::Result<Self> {
        let (file_id, header) = new_header()?;
        Ok(Self {
            keys,
            file_id,
            header: Some(header),
            logical: 0,
            physical: 0,
        })
    }

    /// The sealed bytes that carry `data` (the header first, on the first call).
    pub fn seal(&mut self, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(data.len() + HEADER as usize + 2 * META);
        if let Some(header) = self.header.take() {
            out.extend_from_slice(&header);
            self.physical = HEADER;
        }
        let frames = seal_frames(
            self.keys.active(),
            &self.file_id,
            self.logical,
            self.physical,
            data,
            &mut out,
        );
        if let Some(last) = frames.last() {
            self.logical = last.logical + u64::from(last.len);
            self.physical = last.physical + (META as u64) + u64::from(last.len);
        }
        out
    }

    /// Seals `tail` followed by as many zero bytes as make the stream's length a multiple
    /// of `align` (at most a frame's worth).
    ///
    /// # Panics
    /// If `align` is zero or more than a frame can hold.
    pub fn seal_aligned(&mut self, tail: &[u8], align: u64) -> Vec<u8> {
        assert!(align > 0 && align as usize <= MAX_FRAME / 2 && tail.len() <= MAX_FRAME / 2);
        let start = if self.header.is_some() {
            HEADER
        } else {
            self.physical
        };
        let unpadded = start + META as u64 + tail.len() as u64;
        let mut plain = tail.to_vec();
        plain.resize(
            tail.len() + ((align - unpadded % align) % align) as usize,
            0,
        );
        self.seal(&plain)
    }
}

impl FramedFile {
    fn new(file: File, path: &Path, keys: Arc<KeyRing>) -> Self {
        Self {
            file,
            path: path.to_path_buf(),
            keys,
            file_id: RwLock::new([0; 16]),
            state: RwLock::new(State::default()),
        }
    }

    /// Creates an empty sealed file at `path`, replacing any file there.
    ///
    /// # Errors
    /// The file cannot be created.
    pub fn create(path: &Path, keys: Arc<KeyRing>) -> io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        let this = Self::new(file, path, keys);
        this.reset(&mut this.state.write())?;
        Ok(this)
    }

    /// Opens the sealed file at `path`, read-only unless `writable`.
    ///
    /// # Errors
    /// The file cannot be opened or read; it is not a sealed framed file; a frame is sealed
    /// with a key `keys` lacks; a whole frame fails to open.
    pub fn open(path: &Path, keys: Arc<KeyRing>, writable: bool) -> io::Result<Self> {
        Self::open_limited(path, keys, writable, None)
    }

    /// Opens, read-only, the sealed stream that fills the first `len` bytes of the file at
    /// `path` (a backup: a checksum follows it).
    ///
    /// # Errors
    /// As [`FramedFile::open`]; also if the frames do not end exactly at `len`.
    pub fn open_prefix(path: &Path, keys: Arc<KeyRing>, len: u64) -> io::Result<Self> {
        let this = Self::open_limited(path, keys, false, Some(len))?;
        if this.state.read().physical != len {
            return Err(damaged(
                path,
                format!("its frames do not end at byte {len}"),
            ));
        }
        Ok(this)
    }

    fn open_limited(
        path: &Path,
        keys: Arc<KeyRing>,
        writable: bool,
        limit: Option<u64>,
    ) -> io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(writable)
            .open(path)?;
        let on_disk = file.metadata()?.len();
        let physical = limit.map_or(on_disk, |limit| limit.min(on_disk));
        let this = Self::new(file, path, keys);
        if physical < HEADER {
            if !writable {
                return Err(damaged(path, "shorter than its header"));
            }
            // Created, and the process stopped before the header was written.
            this.reset(&mut this.state.write())?;
            return Ok(this);
        }
        let mut header = [0u8; HEADER as usize];
        this.file.read_exact_at(&mut header, 0)?;
        if &header[..16] != MAGIC {
            return Err(damaged(path, "not a sealed framed file"));
        }
        this.file_id.write().copy_from_slice(&header[16..32]);
        this.scan(physical, writable)?;
        Ok(this)
    }

    /// Reads every frame's header and opens every frame, building the index.
    fn scan(&self, physical: u64, writable: bool) -> io::Result<()> {
        let mut state = self.state.write();
        state.physical = HEADER;
        let mut buf = Vec::new();
        loop {
            let at = state.physical;
            if at == physical {
                break;
            }
            let mut meta = [0u8; META];
            let header_whole = at + META as u64 <= physical;
            if header_whole {
                self.file.read_exact_at(&mut meta, at)?;
            }
            let len = u32::from_le_bytes(meta[..4].try_into().expect("sized"));
            let cut_short = !header_whole
                || meta.iter().all(|b| *b == 0)
                || at + (META as u64) + u64::from(len) > physical;
            if cut_short {
                tracing::warn!(
                    file = %self.path.display(),
                    offset = at,
                    bytes = physical - at,
                    "dropping an append to an encrypted file that did not finish"
                );
                if writable {
                    self.file.set_len(at)?;
                }
                break;
            }
            if len == 0 || len as usize > MAX_FRAME {
                return Err(damaged(
                    &self.path,
                    format!("frame at offset {at} has an impossible length {len}"),
                ));
            }
            buf.resize(len as usize, 0);
            self.file.read_exact_at(&mut buf, at + META as u64)?;
            let logical = state.len;
            self.open_frame(at, logical, &meta, &mut buf)?;
            state.frames.push(Frame {
                logical,
                physical: at,
                len,
            });
            state.len += u64::from(len);
            state.physical = at + META as u64 + u64::from(len);
        }
        Ok(())
    }

    fn open_frame(&self, at: u64, logical: u64, meta: &[u8], data: &mut [u8]) -> io::Result<()> {
        let len = u32::from_le_bytes(meta[..4].try_into().expect("sized"));
        let key_id = KeyId(u32::from_le_bytes(meta[4..8].try_into().expect("sized")));
        let nonce: [u8; NONCE_LEN] = meta[8..32].try_into().expect("sized");
        let tag: [u8; TAG_LEN] = meta[32..48].try_into().expect("sized");
        let Some(key) = self.keys.get(key_id) else {
            return Err(damaged(
                &self.path,
                format!(
                    "frame at offset {at} is sealed with key {key_id}, which the key file does \
                     not hold (wrong --encryption-key-file?)"
                ),
            ));
        };
        let file_id = *self.file_id.read();
        if !key.open(&nonce, &aad(&file_id, logical, len, key_id), data, &tag) {
            return Err(damaged(
                &self.path,
                format!(
                    "frame at offset {at} fails authentication: the file is damaged or was altered"
                ),
            ));
        }
        Ok(())
    }

    /// Empties the file under a new file id (so no frame of its past can be replayed).
    fn reset(&self, state: &mut State) -> io::Result<()> {
        let (file_id, header) = new_header()?;
        self.file.set_len(0)?;
        self.file.write_all_at(&header, 0)?;
        *self.file_id.write() = file_id;
        *state = State {
            frames: Vec::new(),
            len: 0,
            physical: HEADER,
        };
        Ok(())
    }

    /// The logical length.
    pub fn len(&self) -> u64 {
        self.state.read().len
    }

    /// Whether nothing was appended.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends `data` with one system call.
    ///
    /// # Errors
    /// The file cannot be written (then nothing was appended as far as this file knows).
    pub fn append(&self, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let mut state = self.state.write();
        let file_id = *self.file_id.read();
        let mut out = Vec::with_capacity(data.len() + data.len().div_ceil(MAX_FRAME) * META);
        let frames = seal_frames(
            self.keys.active(),
            &file_id,
            state.len,
            state.physical,
            data,
            &mut out,
        );
        self.file.write_all_at(&out, state.physical)?;
        let last = *frames.last().expect("data is not empty");
        state.frames.extend(frames);
        state.len = last.logical + u64::from(last.len);
        state.physical = last.physical + (META as u64) + u64::from(last.len);
        Ok(())
    }

    /// Appends at `offset`: the end, or 0 to start the file over.
    ///
    /// # Errors
    /// `offset` is elsewhere (the file is append-only); the file cannot be written.
    pub fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let len = self.len();
        if offset == 0 && len > 0 {
            self.reset(&mut self.state.write())?;
        } else if offset != len {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "encrypted file {} is append-only: write at {offset}, length {len}",
                    self.path.display()
                ),
            ));
        }
        self.append(data)
    }

    /// Cuts the file to `len` logical bytes. A frame cut in the middle is sealed again,
    /// shorter, in its place.
    ///
    /// # Errors
    /// The frame to shorten fails to open; the file cannot be written.
    pub fn truncate(&self, len: u64) -> io::Result<()> {
        let mut state = self.state.write();
        if len >= state.len {
            return Ok(());
        }
        // Frames that end by `len` stay; the next one (there is one: `len` < length) is cut.
        let keep = state
            .frames
            .partition_point(|f| f.logical + u64::from(f.len) <= len);
        let frame = state.frames[keep];
        let head = if frame.logical < len {
            let mut plain = vec![0u8; frame.len as usize];
            self.read_frame(&frame, &mut plain)?;
            plain.truncate((len - frame.logical) as usize);
            Some(plain)
        } else {
            None
        };
        self.file.set_len(frame.physical)?;
        state.frames.truncate(keep);
        state.len = frame.logical;
        state.physical = frame.physical;
        drop(state);
        if let Some(head) = head {
            self.append(&head)?;
        }
        Ok(())
    }

    fn read_frame(&self, frame: &Frame, out: &mut [u8]) -> io::Result<()> {
        let mut buf = vec![0u8; META + frame.len as usize];
        self.file.read_exact_at(&mut buf, frame.physical)?;
        let (meta, data) = buf.split_at_mut(META);
        self.open_frame(frame.physical, frame.logical, meta, data)?;
        out.copy_from_slice(data);
        Ok(())
    }

    /// Reads up to `out.len()` bytes at logical `offset`; returns how many (0 at the end).
    ///
    /// # Errors
    /// A frame fails to open; the file cannot be read.
    pub fn read_at(&self, offset: u64, out: &mut [u8]) -> io::Result<usize> {
        self.read_at_cached(offset, out, &mut None)
    }

    /// As [`FramedFile::read_at`], keeping the last frame read in `cache` for the next call
    /// (sequential readers read a frame in several pieces).
    ///
    /// # Errors
    /// As `read_at`.
    pub fn read_at_cached(
        &self,
        offset: u64,
        out: &mut [u8],
        cache: &mut Option<(u64, Vec<u8>)>,
    ) -> io::Result<usize> {
        let state = self.state.read();
        if offset >= state.len || out.is_empty() {
            return Ok(0);
        }
        let mut index = state.frames.partition_point(|f| f.logical <= offset) - 1;
        let mut done = 0;
        let mut at = offset;
        while done < out.len() && index < state.frames.len() {
            let frame = state.frames[index];
            let cached = matches!(cache, Some((logical, _)) if *logical == frame.logical);
            if !cached {
                let mut plain = vec![0u8; frame.len as usize];
                self.read_frame(&frame, &mut plain)?;
                *cache = Some((frame.logical, plain));
            }
            let plain = &cache.as_ref().expect("filled above").1;
            let start = (at - frame.logical) as usize;
            let take = (plain.len() - start).min(out.len() - done);
            out[done..done + take].copy_from_slice(&plain[start..start + take]);
            done += take;
            at += take as u64;
            index += 1;
        }
        Ok(done)
    }

    /// Makes every append so far durable.
    ///
    /// # Errors
    /// The file system's.
    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A sequential reader of a [`FramedFile`].
pub struct FramedReader {
    file: Arc<FramedFile>,
    position: u64,
    cache: Option<(u64, Vec<u8>)>,
}

impl FramedReader {
    /// A reader at the start of `file`.
    #[must_use]
    pub fn new(file: Arc<FramedFile>) -> Self {
        Self {
            file,
            position: 0,
            cache: None,
        }
    }
}

impl io::Read for FramedReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self
            .file
            .read_at_cached(self.position, buf, &mut self.cache)?;
        self.position += n as u64;
        Ok(n)
    }
}

impl io::Seek for FramedReader {
    fn seek(&mut self, pos: io::SeekFrom) -> io::Result<u64> {
        let len = self.file.len();
        let target = match pos {
            io::SeekFrom::Start(p) => Some(p),
            io::SeekFrom::End(d) => len.checked_add_signed(d),
            io::SeekFrom::Current(d) => self.position.checked_add_signed(d),
        }
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start"))?;
        self.position = target;
        Ok(target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    fn ring(byte: u8) -> Arc<KeyRing> {
        Arc::new(KeyRing::from_keys(&[[byte; 32]]))
    }

    fn contents(file: &Arc<FramedFile>) -> Vec<u8> {
        let mut all = Vec::new();
        FramedReader::new(file.clone())
            .read_to_end(&mut all)
            .unwrap();
        all
    }

    #[test]
    fn appends_read_back_across_frames_and_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let file = FramedFile::create(&path, ring(1)).unwrap();
        let big: Vec<u8> = (0..3 * MAX_FRAME + 5).map(|i| (i % 251) as u8).collect();
        file.append(b"head").unwrap();
        file.append(&big).unwrap();
        file.sync().unwrap();
        drop(file);
        let file = Arc::new(FramedFile::open(&path, ring(1), true).unwrap());
        let mut expected = b"head".to_vec();
        expected.extend_from_slice(&big);
        assert_eq!(contents(&file), expected);
        let mut middle = [0u8; 10];
        assert_eq!(file.read_at(MAX_FRAME as u64 - 3, &mut middle).unwrap(), 10);
        assert_eq!(&middle[..], &expected[MAX_FRAME - 3..MAX_FRAME + 7]);
        let raw = std::fs::read(&path).unwrap();
        assert!(!raw.windows(4).any(|w| w == b"head"));
    }

    #[test]
    fn an_unfinished_append_is_dropped_and_a_whole_altered_frame_stops_the_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let file = FramedFile::create(&path, ring(1)).unwrap();
        file.append(b"first record").unwrap();
        file.append(b"second record").unwrap();
        drop(file);
        let full = std::fs::metadata(&path).unwrap().len();
        // Cut the second frame short: an append the process did not finish.
        let raw = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        raw.set_len(full - 3).unwrap();
        let file = Arc::new(FramedFile::open(&path, ring(1), true).unwrap());
        assert_eq!(contents(&file), b"first record");
        file.append(b"+more").unwrap();
        drop(file);
        let file = Arc::new(FramedFile::open(&path, ring(1), true).unwrap());
        assert_eq!(contents(&file), b"first record+more");
        drop(file);

        raw.write_all_at(&[0xEE], HEADER + META as u64 + 2).unwrap();
        let error = FramedFile::open(&path, ring(1), true)
            .unwrap_err()
            .to_string();
        assert!(error.contains("fails authentication"), "{error}");
        let error = FramedFile::open(&path, ring(9), true)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("which the key file does not hold"),
            "{error}"
        );
    }

    #[test]
    fn a_sealed_stream_reads_back_as_a_file_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("backup");
        let mut sealer = StreamSealer::new(ring(1)).unwrap();
        let big = vec![3u8; MAX_FRAME + 100];
        let mut bytes = sealer.seal(b"records ");
        bytes.extend(sealer.seal(&big));
        bytes.extend(sealer.seal_aligned(b"end", 512));
        assert_eq!(bytes.len() % 512, 0);
        let prefix = bytes.len() as u64;
        bytes.extend_from_slice(&[0xCC; 32]);
        std::fs::write(&path, &bytes).unwrap();
        let file = Arc::new(FramedFile::open_prefix(&path, ring(1), prefix).unwrap());
        let all = contents(&file);
        assert!(all.starts_with(b"records "));
        assert_eq!(&all[8..8 + big.len()], &big[..]);
        assert!(all[8 + big.len()..].starts_with(b"end"));
        assert!(all[8 + big.len() + 3..].iter().all(|b| *b == 0));
        assert!(FramedFile::open_prefix(&path, ring(1), prefix - 1).is_err());
    }

    #[test]
    fn truncation_cuts_inside_a_frame_and_writing_at_zero_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let file = Arc::new(FramedFile::create(&path, ring(1)).unwrap());
        file.append(b"0123456789").unwrap();
        file.append(b"abcdef").unwrap();
        file.truncate(13).unwrap();
        assert_eq!(contents(&file), b"0123456789abc");
        file.truncate(10).unwrap();
        assert_eq!(contents(&file), b"0123456789");
        file.truncate(4).unwrap();
        file.append(b"XY").unwrap();
        assert_eq!(contents(&file), b"0123XY");
        assert!(file.write_at(3, b"no").is_err());
        file.write_at(0, b"fresh").unwrap();
        drop(file);
        let file = Arc::new(FramedFile::open(&path, ring(1), false).unwrap());
        assert_eq!(contents(&file), b"fresh");
    }
}
