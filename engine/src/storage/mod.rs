//! Storage: every file operation the engine performs, and the replication layer's small
//! state files too, behind one trait ([`Storage`], with [`StorageFile`] for an open
//! file), so that the same engine code runs on the real file system ([`OsStorage`], the
//! default) or on a simulated disk ([`SimDisk`]) that holds unsynced writes in a page
//! cache, loses or tears them at sector granularity in a power loss, and keeps a created,
//! renamed or removed name only once its directory was fsynced.
//!
//! The operations are the ones the engine's durability rules are written in (see
//! `fsutil.rs`): create a file (new, or truncated), open one (never through a symlink,
//! only a regular file), positioned vectored writes and reads, `fdatasync`, `fsync`,
//! set length, map read-only, create and fsync a directory, rename (replacing, or never
//! replacing), unlink, list, and an exclusive lock. Nothing else touches a log directory
//! (the offline `inspect` module reads real files only; it is a tool for real disks).
//!
//! The trait is object-safe and used as `Arc<dyn Storage>`: one virtual call per file
//! operation, next to a system call, costs nothing measurable (bench/RESULTS.md). The
//! io_uring backend needs a real descriptor ([`StorageFile::raw_fd`]); on simulated
//! storage the portable backend runs, its writes and flushes going through the trait.
//!
//! ```
//! use std::sync::Arc;
//! use walship_engine::storage::{Create, SimDisk, Storage};
//! use std::path::Path;
//!
//! let disk = SimDisk::new(7);
//! let fs = disk.boot();
//! fs.create_dir(Path::new("/log"), 0o700)?;
//! fs.sync_dir(Path::new("/"))?;
//! let f = fs.open(Path::new("/log/a"), true, Create::New)?;
//! f.write_all_at(&[b"hello"], 0)?;
//! f.sync_data()?;
//! // The name was never made durable: a power loss takes the file with it.
//! disk.power_loss();
//! let fs = disk.boot();
//! assert!(fs.stat(Path::new("/log/a")).is_err());
//! assert!(fs.stat(Path::new("/log")).is_ok());
//! # Ok::<(), std::io::Error>(())
//! ```

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::os::fd::RawFd;
use std::path::Path;
use std::sync::Arc;

mod os;
mod sim;

pub use os::OsStorage;
pub use sim::{PowerLoss, SimDisk, SimRng, SimStats, SimStorage, SECTOR};

/// What a name refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link (never followed by the engine).
    Symlink,
    /// Anything else: a FIFO, a socket, a device.
    Other,
}

/// What `stat` (without following a symlink) tells about a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// What the name refers to.
    pub kind: FileKind,
    /// Length in bytes.
    pub len: u64,
    /// Permission bits (`mode & 0o7777`).
    pub mode: u32,
    /// `(device, inode)`: which file this is, whatever its name.
    pub id: (u64, u64),
}

/// Whether [`Storage::open`] creates the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Create {
    /// Open an existing file only.
    No,
    /// Create it; an existing name is an error (`O_CREAT | O_EXCL`).
    New,
    /// Create it, or empty an existing one (`O_CREAT | O_TRUNC`).
    Truncate,
    /// Create it if missing, keep an existing one's bytes (`O_CREAT`).
    Keep,
}

/// A file system as the engine uses it. Paths are absolute or relative to the process's
/// working directory, as the embedder gave them.
///
/// Every method is a single operation with the meaning of the POSIX call it is named
/// after; none of them makes anything durable unless it says so.
pub trait Storage: Send + Sync + fmt::Debug {
    /// A name for logs (`"os"`, `"sim"`).
    fn name(&self) -> &'static str;

    /// Whether its files are the OS's, with descriptors ([`StorageFile::raw_fd`]) that a
    /// backend may submit I/O on itself (io_uring).
    fn os_files(&self) -> bool {
        false
    }

    /// Creates one directory (its parent must exist) with permission bits `mode`. Its
    /// name is durable once its parent was fsynced.
    fn create_dir(&self, path: &Path, mode: u32) -> io::Result<()>;

    /// What `path` names, without following a symlink.
    fn stat(&self, path: &Path) -> io::Result<Stat>;

    /// Sets the permission bits of `path`.
    fn set_mode(&self, path: &Path, mode: u32) -> io::Result<()>;

    /// The names in directory `dir`, in no particular order.
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<OsString>>;

    /// Opens a regular file for reading (and writing if `write`), creating it with mode
    /// 0600 as `create` says. Never follows a symlink and never blocks on a FIFO: anything
    /// but a regular file is an `InvalidInput` error.
    fn open(&self, path: &Path, write: bool, create: Create) -> io::Result<Arc<dyn StorageFile>>;

    /// Renames `from` to `to`, replacing a file named `to`. Durable once the directory was
    /// fsynced.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;

    /// Renames `from` to `to` only if nothing is named `to` (`AlreadyExists` otherwise).
    fn rename_noreplace(&self, from: &Path, to: &Path) -> io::Result<()>;

    /// Removes the name `path` (not a directory). Durable once the directory was fsynced.
    fn remove_file(&self, path: &Path) -> io::Result<()>;

    /// Fsyncs directory `dir`: every name created, renamed or removed in it is durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;

    /// Takes an exclusive lock named by the file `path` (created if missing), held until
    /// the returned guard is dropped; `Ok(None)` if another holder has it.
    fn lock(&self, path: &Path) -> io::Result<Option<LockGuard>>;
}

/// An exclusive lock taken by [`Storage::lock`]; dropping it releases the lock.
pub struct LockGuard {
    /// Held for its drop, which releases the lock.
    _held: Box<dyn Send + Sync>,
}

impl LockGuard {
    /// A guard that holds `inner` (whose drop releases the lock).
    pub fn new(inner: impl Send + Sync + 'static) -> LockGuard {
        LockGuard {
            _held: Box::new(inner),
        }
    }
}

impl fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LockGuard")
    }
}

/// An open regular file.
pub trait StorageFile: Send + Sync + fmt::Debug {
    /// Writes all of `bufs`, contiguously, at `offset`; retries short writes and `EINTR`.
    /// The bytes are in the page cache, not durable.
    fn write_all_at(&self, bufs: &[&[u8]], offset: u64) -> io::Result<()>;

    /// Reads up to `buf.len()` bytes at `offset`; fewer only at the end of the file.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;

    /// `fdatasync`: the file's bytes, and its length, are durable.
    fn sync_data(&self) -> io::Result<()>;

    /// `fsync`: as `sync_data`, metadata included.
    fn sync_all(&self) -> io::Result<()>;

    /// Starts writing back `len` bytes at `offset` without waiting and without any
    /// durability promise (`sync_file_range(SYNC_FILE_RANGE_WRITE)`): spreads the
    /// writeback of a large write over its duration instead of one burst at the
    /// `fsync` that follows. The default does nothing.
    fn start_writeback(&self, offset: u64, len: u64) -> io::Result<()> {
        let _ = (offset, len);
        Ok(())
    }

    /// Sets the length (zeros when it grows).
    fn set_len(&self, len: u64) -> io::Result<()>;

    /// The file's `stat`.
    fn stat(&self) -> io::Result<Stat>;

    /// Maps the first `len` bytes read-only and shared: later writes through any handle
    /// of this file are seen through the mapping (the file must be at least `len` long).
    fn map(&self, len: usize) -> io::Result<Box<dyn Mapped>>;

    /// The OS descriptor, for backends that submit I/O themselves (io_uring); `None` for
    /// storage that is not the OS's.
    fn raw_fd(&self) -> Option<RawFd>;
}

/// A read-only mapping of a file's first [`len`](Mapped::len) bytes.
///
/// # Safety
/// `as_ptr` must return a pointer valid for reads of `len` bytes for as long as the value
/// lives, always the same one; those bytes change only through writes to the file (they
/// are never unmapped or moved while the value lives).
pub unsafe trait Mapped: Send + Sync + fmt::Debug {
    /// The first mapped byte.
    fn as_ptr(&self) -> *const u8;
    /// How many bytes are mapped.
    fn len(&self) -> usize;
    /// Whether nothing is mapped.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The default storage: the operating system's file system.
pub fn os() -> Arc<dyn Storage> {
    Arc::new(OsStorage)
}

/// Reads the whole of a small file through `file`, at most `max + 1` bytes.
pub(crate) fn read_bounded(file: &dyn StorageFile, max: u64) -> io::Result<Vec<u8>> {
    let limit = max.saturating_add(1);
    let mut out = Vec::new();
    let mut chunk = vec![0u8; limit.min(64 << 10) as usize];
    loop {
        let want = (limit - out.len() as u64).min(chunk.len() as u64) as usize;
        if want == 0 {
            return Ok(out);
        }
        match file.read_at(&mut chunk[..want], out.len() as u64) {
            Ok(0) => return Ok(out),
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}
