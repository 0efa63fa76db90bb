//! Small file-system helpers with the durability rules the engine relies on: the
//! directory is fsynced whenever a file is created, renamed or removed, and small
//! files are replaced atomically (write temp, fsync, rename, fsync directory).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::error::{Error, Result};

/// Fsyncs a directory so that entries created, renamed or removed in it are durable.
pub(crate) fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("fsync directory", dir, e))
}

/// Replaces `dir/name` with `bytes` atomically and durably: written to `name.tmp`,
/// fsynced, renamed over `name`, and the directory fsynced. A crash leaves the old or the
/// new content, never a mix (a leftover `.tmp` in a log directory is removed on open).
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
    let tmp = dir.join(format!("{name}.tmp"));
    let dst = dir.join(name);
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(|e| Error::io("create", &tmp, e))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io("write", &tmp, e))?;
    drop(f);
    fs::rename(&tmp, &dst).map_err(|e| Error::io("rename into place", &dst, e))?;
    fsync_dir(dir)
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
