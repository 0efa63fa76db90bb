//! The clean-close marker, `walship.closed`: evidence for recovery that everything before
//! a position had been flushed when the log was last closed.
//!
//! Guarantees:
//! - `close` writes it ([`write`]) only once everything appended is flushed, atomically
//!   (temporary file, fsync, rename, directory fsync), recording the flushed end;
//! - it never vouches for bytes written after it: the next open removes it ([`forget`],
//!   with a directory fsync) before recovery changes anything and before anything is
//!   written, so neither a later crash nor a truncation can leave a stale marker behind;
//! - reading it ([`read`]) trusts nothing: only a regular file, read with a bound; a
//!   missing, odd or invalid marker only means less evidence, never an error.

use std::path::Path;

use crate::error::{Error, Result};
use crate::format::{decode_closed, encode_closed, CLOSED_LEN};
use crate::storage::{FileKind, Storage};
use crate::types::Lsn;

/// The marker's file name in the log directory.
pub(crate) const CLOSED_FILE: &str = "walship.closed";

/// Records that everything before `flushed` is durable: the log was closed cleanly.
pub(crate) fn write(fs: &dyn Storage, dir: &Path, flushed: Lsn) -> Result<()> {
    crate::fsutil::atomic_write_in(fs, dir, CLOSED_FILE, &encode_closed(flushed))
}

/// The end the marker in `dir` records, if there is a valid one.
pub(crate) fn read(fs: &dyn Storage, dir: &Path) -> Option<Lsn> {
    let path = dir.join(CLOSED_FILE);
    // Only a regular file, and only a bounded read: a FIFO or a link to a device must not
    // hang or exhaust the open.
    let bytes = match crate::layout::read_small_file_in(fs, &path, CLOSED_LEN as u64) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "ignoring a clean-close marker that cannot be read");
            return None;
        }
    };
    match decode_closed(&bytes) {
        Ok(end) => Some(end),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "ignoring an invalid clean-close marker");
            None
        }
    }
}

/// Removes the marker, durably, if there is one: from here on the log changes. Removing
/// a valid marker must succeed (a stale one would later make recovery refuse a healthy
/// log); anything else under its name that cannot be removed is only logged.
pub(crate) fn forget(fs: &dyn Storage, dir: &Path) -> Result<()> {
    let path = dir.join(CLOSED_FILE);
    let Ok(meta) = fs.stat(&path) else {
        return Ok(());
    };
    match fs.remove_file(&path) {
        Ok(()) => crate::fsutil::fsync_dir(fs, dir),
        Err(e) if meta.kind == FileKind::File => {
            Err(Error::io("remove clean-close marker", &path, e))
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove a clean-close marker that is not a regular file");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::OsStorage;

    #[test]
    fn written_read_and_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(&OsStorage, dir.path()), None);
        forget(&OsStorage, dir.path()).unwrap();
        write(&OsStorage, dir.path(), Lsn::new(4242)).unwrap();
        assert_eq!(read(&OsStorage, dir.path()), Some(Lsn::new(4242)));
        forget(&OsStorage, dir.path()).unwrap();
        assert!(!dir.path().join(CLOSED_FILE).exists());
    }

    #[test]
    fn an_odd_marker_is_no_evidence_and_no_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CLOSED_FILE);
        std::fs::write(&path, b"short").unwrap();
        assert_eq!(read(&OsStorage, dir.path()), None);
        forget(&OsStorage, dir.path()).unwrap();
        assert!(!path.exists(), "an invalid marker is removed too");
        std::os::unix::fs::symlink("/dev/zero", &path).unwrap();
        assert_eq!(
            read(&OsStorage, dir.path()),
            None,
            "a link to a device is not read"
        );
        forget(&OsStorage, dir.path()).unwrap();
        assert!(
            std::fs::symlink_metadata(&path).is_err(),
            "the link is removed"
        );
        std::fs::create_dir(&path).unwrap();
        assert_eq!(read(&OsStorage, dir.path()), None);
        forget(&OsStorage, dir.path()).unwrap();
        assert!(
            path.is_dir(),
            "what cannot be removed is left, and is no error"
        );
    }
}
