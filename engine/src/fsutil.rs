//! Small file-system helpers with the durability rules the engine relies on, written once
//! over [`Storage`]: the directory is fsynced whenever a file is created, renamed or
//! removed, small files are replaced atomically (write temp, fsync, rename, fsync
//! directory), and a new segment is moved into place without ever replacing a file
//! already under its name (`Storage::rename_noreplace`).

use std::path::Path;

use crate::error::{Error, Result};
use crate::storage::{Create, Storage, StorageFile};

/// Fsyncs a directory so that entries created, renamed or removed in it are durable.
pub(crate) fn fsync_dir(fs: &dyn Storage, dir: &Path) -> Result<()> {
    fs.sync_dir(dir)
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
    atomic_write_in(&crate::storage::OsStorage, dir, name, bytes)
}

/// [`atomic_write`] on the storage `fs` (a log's, [`Log::storage`](crate::Log::storage)).
///
/// # Errors
/// [`Error::Io`] naming the operation and the file.
pub fn atomic_write_in(fs: &dyn Storage, dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let tmp = dir.join(crate::layout::atomic_tmp_name(name));
    let dst = dir.join(name);
    // A leftover of a crash is ours to replace; anything else under the name (a symlink
    // planted there) is not followed: the open refuses it, after unlinking ours only.
    if let Ok(s) = fs.stat(&tmp) {
        if s.kind == crate::storage::FileKind::File {
            fs.remove_file(&tmp)
                .map_err(|e| Error::io("remove", &tmp, e))?;
        }
    }
    let f = fs
        .open(&tmp, true, Create::New)
        .map_err(|e| Error::io("create", &tmp, e))?;
    f.write_all_at(&[bytes], 0)
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io("write", &tmp, e))?;
    drop(f);
    fs.rename(&tmp, &dst)
        .map_err(|e| Error::io("rename into place", &dst, e))?;
    fsync_dir(fs, dir)
}

/// Writes `len` zero bytes at `offset`, in chunks, skipping nothing, and starts each
/// chunk's writeback as soon as it is written (RocksDB's `bytes_per_sync`): zero-filling
/// a 64 MiB segment while commits flush must not leave 64 MiB of dirty pages for its
/// final `fsync` to push out in one burst, queued ahead of the commits' flushes.
pub(crate) fn write_zeros(
    file: &dyn StorageFile,
    path: &Path,
    mut offset: u64,
    len: u64,
) -> Result<()> {
    const CHUNK: usize = 1 << 20;
    let zeros = vec![0u8; CHUNK.min(len as usize)];
    let end = offset + len;
    while offset < end {
        let n = ((end - offset) as usize).min(CHUNK);
        file.write_all_at(&[&zeros[..n]], offset)
            .map_err(|e| Error::io("zero-fill", path, e))?;
        file.start_writeback(offset, n as u64)
            .map_err(|e| Error::io("start writeback of zero-fill", path, e))?;
        offset += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io;

    use crate::storage::{OsStorage, SimDisk};

    use super::*;

    fn never_replaces(fs: &dyn Storage, dir: &Path) {
        let (a, b) = (dir.join("a"), dir.join("b"));
        let put = |p: &Path, bytes: &[u8]| {
            fs.open(p, true, Create::Truncate)
                .unwrap()
                .write_all_at(&[bytes], 0)
                .unwrap()
        };
        let get = |p: &Path| {
            let f = fs.open(p, false, Create::No).unwrap();
            crate::storage::read_bounded(&*f, 64).unwrap()
        };
        put(&a, b"new");
        put(&b, b"live");
        let e = fs.rename_noreplace(&a, &b).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(get(&b), b"live");
        assert_eq!(get(&a), b"new");
        fs.remove_file(&b).unwrap();
        fs.rename_noreplace(&a, &b).unwrap();
        assert!(fs.stat(&a).is_err());
        assert_eq!(get(&b), b"new");
        let missing = fs.rename_noreplace(&a, &dir.join("c")).unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn rename_noreplace_never_replaces() {
        let dir = tempfile::tempdir().unwrap();
        never_replaces(&OsStorage, dir.path());
        let disk = SimDisk::new(1);
        let sim = disk.boot();
        sim.create_dir(Path::new("/d"), 0o700).unwrap();
        never_replaces(&*sim, Path::new("/d"));
    }

    #[test]
    fn atomic_write_is_durable_on_the_simulated_disk() {
        let disk = SimDisk::new(1);
        let fs = disk.boot();
        fs.create_dir(Path::new("/d"), 0o700).unwrap();
        fs.sync_dir(Path::new("/")).unwrap();
        atomic_write_in(&*fs, Path::new("/d"), "state", b"v1").unwrap();
        disk.power_loss();
        let fs = disk.boot();
        let f = fs.open(Path::new("/d/state"), false, Create::No).unwrap();
        assert_eq!(crate::storage::read_bounded(&*f, 8).unwrap(), b"v1");
        assert_eq!(
            fs.list_dir(Path::new("/d")).unwrap().len(),
            1,
            "no temporary left"
        );
    }
}
