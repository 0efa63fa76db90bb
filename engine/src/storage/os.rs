//! The operating system's file system: [`Storage`] as the system calls the engine has
//! always made (`O_NOFOLLOW | O_NONBLOCK` opens, `pwritev`, `fdatasync`,
//! `renameat2(RENAME_NOREPLACE)`, `flock`, read-only shared `mmap`).

use std::ffi::{CString, OsString};
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;

use memmap2::{Mmap, MmapOptions};

use super::{Create, FileKind, LockGuard, Mapped, Stat, Storage, StorageFile};

/// The real file system. Stateless: every handle is a plain descriptor.
#[derive(Debug, Clone, Copy, Default)]
pub struct OsStorage;

fn stat_of(m: &fs::Metadata) -> Stat {
    let t = m.file_type();
    let kind = if t.is_file() {
        FileKind::File
    } else if t.is_dir() {
        FileKind::Dir
    } else if t.is_symlink() {
        FileKind::Symlink
    } else {
        debug_assert!(t.is_fifo() || t.is_socket() || t.is_block_device() || t.is_char_device());
        FileKind::Other
    };
    Stat {
        kind,
        len: m.len(),
        mode: m.permissions().mode() & 0o7777,
        id: (m.dev(), m.ino()),
    }
}

impl Storage for OsStorage {
    fn name(&self) -> &'static str {
        "os"
    }

    fn os_files(&self) -> bool {
        true
    }

    fn create_dir(&self, path: &Path, mode: u32) -> io::Result<()> {
        DirBuilder::new().mode(mode).create(path)
    }

    fn stat(&self, path: &Path) -> io::Result<Stat> {
        fs::symlink_metadata(path).map(|m| stat_of(&m))
    }

    fn set_mode(&self, path: &Path, mode: u32) -> io::Result<()> {
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<OsString>> {
        fs::read_dir(dir)?
            .map(|e| e.map(|e| e.file_name()))
            .collect()
    }

    fn open(&self, path: &Path, write: bool, create: Create) -> io::Result<Arc<dyn StorageFile>> {
        let mut o = OpenOptions::new();
        o.read(true)
            .write(write || create != Create::No)
            .mode(crate::layout::FILE_MODE)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC);
        match create {
            Create::No => {}
            Create::New => {
                o.create_new(true);
            }
            Create::Truncate => {
                o.create(true).truncate(true);
            }
            Create::Keep => {
                o.create(true).truncate(false);
            }
        }
        let f = o.open(path).map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => io::Error::new(
                io::ErrorKind::InvalidInput,
                "is a symbolic link; the log's files must be regular files",
            ),
            _ => e,
        })?;
        if !f.metadata()?.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "is not a regular file",
            ));
        }
        // O_NONBLOCK was for the open only (a FIFO must not hang it). Left on a regular
        // file it changes nothing for pwritev, but io_uring then fails a write that would
        // block with EAGAIN instead of completing it in its workers: the writer would spin.
        clear_nonblock(&f)?;
        Ok(Arc::new(OsFile(f)))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn rename_noreplace(&self, from: &Path, to: &Path) -> io::Result<()> {
        let c = |p: &Path| {
            CString::new(p.as_os_str().as_bytes())
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))
        };
        let (f, t) = (c(from)?, c(to)?);
        // SAFETY: both pointers are NUL-terminated strings that outlive the call; the
        // directory descriptors are AT_FDCWD, so relative paths resolve as for rename(2).
        let r = unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                f.as_ptr(),
                libc::AT_FDCWD,
                t.as_ptr(),
                libc::RENAME_NOREPLACE,
            )
        };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            // The file system (or kernel) does not support the flag: a hard link is just
            // as unable to replace a name.
            Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP) => {
                fs::hard_link(from, to)?;
                fs::remove_file(from)
            }
            _ => Err(e),
        }
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir).and_then(|d| d.sync_all())
    }

    fn lock(&self, path: &Path) -> io::Result<Option<LockGuard>> {
        Ok(flock(path)?.map(LockGuard::new))
    }
}

/// A file holding an exclusive `flock`, released explicitly when dropped.
///
/// Closing the descriptor alone is not enough: a child forked by another thread holds a
/// copy of every descriptor until it execs (`O_CLOEXEC` acts only then), and a `flock`
/// lives as long as any copy does. A log closed and opened again in that window would
/// find its own directory locked. `LOCK_UN` releases the lock for every copy.
#[derive(Debug)]
struct Flock(File);

impl Drop for Flock {
    fn drop(&mut self) {
        // SAFETY: flock on a descriptor we own; no memory is passed.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

/// Opens `path` (created if missing) and takes an exclusive `flock` on it without
/// waiting; `None` if another holder has it.
fn flock(path: &Path) -> io::Result<Option<Flock>> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(crate::layout::FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    // SAFETY: flock on a descriptor we own; no memory is passed.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Ok(None);
        }
        return Err(e);
    }
    Ok(Some(Flock(f)))
}

fn clear_nonblock(f: &File) -> io::Result<()> {
    let fd = f.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own; F_GETFL/F_SETFL pass no memory.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    if flags & libc::O_NONBLOCK != 0 {
        // SAFETY: as above.
        if unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// An open OS file.
#[derive(Debug)]
struct OsFile(File);

impl StorageFile for OsFile {
    fn write_all_at(&self, bufs: &[&[u8]], offset: u64) -> io::Result<()> {
        match bufs {
            [one] => self.0.write_all_at(one, offset),
            _ => crate::io::portable::pwritev_all(self.0.as_raw_fd(), offset, bufs),
        }
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            match self.0.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn sync_all(&self) -> io::Result<()> {
        self.0.sync_all()
    }

    fn start_writeback(&self, offset: u64, len: u64) -> io::Result<()> {
        let (Ok(off), Ok(n)) = (
            libc::off64_t::try_from(offset),
            libc::off64_t::try_from(len),
        ) else {
            return Ok(());
        };
        // SAFETY: a plain system call on a descriptor this value owns; it reads no
        // memory of ours. It promises nothing about durability and is only a hint.
        let r = unsafe {
            libc::sync_file_range(self.0.as_raw_fd(), off, n, libc::SYNC_FILE_RANGE_WRITE)
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn stat(&self) -> io::Result<Stat> {
        self.0.metadata().map(|m| stat_of(&m))
    }

    fn map(&self, len: usize) -> io::Result<Box<dyn Mapped>> {
        // SAFETY: the mapping is read-only and shared. Bytes of the file change only in
        // the ways `mmap.rs` lists, none of which modifies a range that a reference
        // obtained through `SegmentMap::slice` covers.
        let map = unsafe { MmapOptions::new().len(len).map(&self.0)? };
        Ok(Box::new(OsMap(map)))
    }

    fn raw_fd(&self) -> Option<RawFd> {
        Some(self.0.as_raw_fd())
    }
}

#[derive(Debug)]
struct OsMap(Mmap);

// SAFETY: the pointer is the mapping's start, valid for `len` bytes until the `Mmap` is
// dropped with this value; a mapping never moves.
unsafe impl Mapped for OsMap {
    fn as_ptr(&self) -> *const u8 {
        self.0.as_ptr()
    }
    fn len(&self) -> usize {
        self.0.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_released_lock_is_free_although_a_copy_of_its_descriptor_lives() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let held = flock(&path).unwrap().expect("free at first");
        assert!(
            flock(&path).unwrap().is_none(),
            "held: a second taker is refused"
        );
        // What a child forked by another thread holds until it execs: a copy of the
        // descriptor, sharing the open file description and so the lock.
        let copy = held.0.try_clone().unwrap();
        drop(held);
        assert!(
            flock(&path).unwrap().is_some(),
            "released for every copy of the descriptor"
        );
        drop(copy);
    }

    #[test]
    fn opened_files_block_as_regular_files_do() {
        let dir = tempfile::tempdir().unwrap();
        for create in [Create::New, Create::No, Create::Keep, Create::Truncate] {
            let f = OsStorage.open(&dir.path().join("f"), true, create).unwrap();
            let fd = f.raw_fd().unwrap();
            // SAFETY: F_GETFL on a live descriptor passes no memory.
            let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
            assert_eq!(flags & libc::O_NONBLOCK, 0, "{create:?}");
        }
    }
}
