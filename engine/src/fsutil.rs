//! Small file-system helpers with the durability rules the engine relies on: the
//! directory is fsynced whenever a file is created, renamed or removed, small files are
//! replaced atomically (write temp, fsync, rename, fsync directory), and a new segment
//! is moved into place without ever replacing a file already under its name.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use crate::error::{Error, Result};

/// Fsyncs a directory so that entries created, renamed or removed in it are durable.
pub(crate) fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("fsync directory", dir, e))
}

/// Replaces `dir/name` with `bytes` atomically and durably: written to
/// `.name.walship-tmp` (created new, mode 0600, never through a symlink), fsynced,
/// renamed over `name`, and the directory fsynced. A crash leaves the old or the new
/// content, never a mix (a leftover temporary file in a log directory is removed on open).
/// For small state files kept beside a log, such as the replication layer's.
///
/// ```
/// # let dir = tempfile::tempdir()?;
/// walship_engine::atomic_write(dir.path(), "state", b"v2")?;
/// assert_eq!(std::fs::read(dir.path().join("state"))?, b"v2");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// [`Error::Io`] naming the operation and the file.
pub fn atomic_write(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let tmp = dir.join(crate::layout::atomic_tmp_name(name));
    let dst = dir.join(name);
    // A leftover of a crash is ours to replace; anything else under the name (a symlink
    // planted there) is not followed: O_NOFOLLOW fails on it, after unlinking ours only.
    match fs::symlink_metadata(&tmp) {
        Ok(m) if m.is_file() => fs::remove_file(&tmp).map_err(|e| Error::io("remove", &tmp, e))?,
        _ => {}
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(crate::layout::FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)
        .map_err(|e| Error::io("create", &tmp, e))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io("write", &tmp, e))?;
    drop(f);
    fs::rename(&tmp, &dst).map_err(|e| Error::io("rename into place", &dst, e))?;
    fsync_dir(dir)
}

/// Renames `from` to `to` only if nothing is named `to`: `renameat2(RENAME_NOREPLACE)`,
/// or, on file systems without it, `link` then `unlink` (a link never replaces either).
/// A segment made for a position must never replace the live file of that position (the
/// writer would go on writing into an unlinked inode), so an existing `to` is an error
/// (`AlreadyExists`), not something to overwrite. The caller fsyncs the directory.
pub(crate) fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
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
        // The file system (or kernel) does not support the flag: a hard link is just as
        // unable to replace a name.
        Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP) => {
            fs::hard_link(from, to)?;
            fs::remove_file(from)
        }
        _ => Err(e),
    }
}

/// Writes `len` zero bytes at `offset`, in chunks, skipping nothing.
pub(crate) fn write_zeros(file: &File, path: &Path, mut offset: u64, len: u64) -> Result<()> {
    const CHUNK: usize = 1 << 20;
    let zeros = vec![0u8; CHUNK];
    let end = offset + len;
    while offset < end {
        let n = ((end - offset) as usize).min(CHUNK);
        file.write_all_at(&zeros[..n], offset)
            .map_err(|e| Error::io("zero-fill", path, e))?;
        offset += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rename_noreplace_never_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        fs::write(&a, b"new").unwrap();
        fs::write(&b, b"live").unwrap();
        let e = rename_noreplace(&a, &b).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&b).unwrap(), b"live");
        assert_eq!(fs::read(&a).unwrap(), b"new");
        fs::remove_file(&b).unwrap();
        rename_noreplace(&a, &b).unwrap();
        assert!(!a.exists());
        assert_eq!(fs::read(&b).unwrap(), b"new");
        let missing = rename_noreplace(&a, &dir.path().join("c")).unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
    }
}
