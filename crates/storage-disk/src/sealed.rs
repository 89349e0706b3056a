//! The storage engines' IO layers over the `encryption` crate's sealed files: redb's
//! `StorageBackend` over a [`PagedFile`], raft-engine's `FileSystem` over [`FramedFile`]s.

use std::io::{self, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::Arc;

use encryption::{FramedFile, FramedReader, KeyRing, PagedFile};
use raft_engine::env::{FileSystem, Handle, Permission, WriteExt};

/// redb's storage backend over a sealed paged file.
#[derive(Debug)]
pub(crate) struct SealedBackend(pub(crate) PagedFile);

impl redb::StorageBackend for SealedBackend {
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.len())
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.0.read(offset, out)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync()
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.0.write(offset, data)
    }
}

/// raft-engine's file system over sealed framed files. Log recycling must be off: a
/// recycled file is rewritten from its start, which a framed file only allows as a restart.
pub(crate) struct SealedFileSystem {
    pub(crate) keys: Arc<KeyRing>,
}

/// An open log file.
pub(crate) struct SealedHandle(Arc<FramedFile>);

impl Handle for SealedHandle {
    fn truncate(&self, offset: usize) -> io::Result<()> {
        self.0.truncate(offset as u64)
    }

    fn file_size(&self) -> io::Result<usize> {
        usize::try_from(self.0.len()).map_err(io::Error::other)
    }

    fn sync(&self) -> io::Result<()> {
        self.0.sync()
    }
}

/// Appends to a log file at its end (or from its start, which starts it over).
pub(crate) struct SealedWriter {
    file: Arc<FramedFile>,
    position: u64,
}

impl Write for SealedWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write_at(self.position, buf)?;
        self.position += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        // Every write reached the file already; durability is `Handle::sync`'s.
        Ok(())
    }
}

impl Seek for SealedWriter {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let target = match pos {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.file.len().checked_add_signed(d),
            SeekFrom::Current(d) => self.position.checked_add_signed(d),
        }
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start"))?;
        self.position = target;
        Ok(target)
    }
}

impl WriteExt for SealedWriter {
    fn truncate(&mut self, offset: usize) -> io::Result<()> {
        self.file.truncate(offset as u64)
    }

    fn allocate(&mut self, _offset: usize, _size: usize) -> io::Result<()> {
        // Space is not reserved ahead: a frame is written whole or not at all, and zeros
        // past the last frame would only be read as an unfinished append.
        Ok(())
    }
}

impl FileSystem for SealedFileSystem {
    type Handle = SealedHandle;
    type Reader = FramedReader;
    type Writer = SealedWriter;

    fn create<P: AsRef<Path>>(&self, path: P) -> io::Result<SealedHandle> {
        let file = FramedFile::create(path.as_ref(), self.keys.clone())?;
        Ok(SealedHandle(Arc::new(file)))
    }

    fn open<P: AsRef<Path>>(&self, path: P, perm: Permission) -> io::Result<SealedHandle> {
        let writable = perm == Permission::ReadWrite;
        let file = FramedFile::open(path.as_ref(), self.keys.clone(), writable)?;
        Ok(SealedHandle(Arc::new(file)))
    }

    fn delete<P: AsRef<Path>>(&self, path: P) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn rename<P: AsRef<Path>>(&self, src_path: P, dst_path: P) -> io::Result<()> {
        std::fs::rename(src_path, dst_path)
    }

    fn new_reader(&self, handle: Arc<SealedHandle>) -> io::Result<FramedReader> {
        Ok(FramedReader::new(handle.0.clone()))
    }

    fn new_writer(&self, handle: Arc<SealedHandle>) -> io::Result<SealedWriter> {
        Ok(SealedWriter {
            file: handle.0.clone(),
            position: 0,
        })
    }
}
