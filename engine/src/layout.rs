//! The log directory: what it may hold, who may touch it, and how its files are opened.
//!
//! Guarantees:
//! - a directory the engine creates is mode 0700 and every file it creates 0600: a log is
//!   a database's data, for its owner's eyes only (PostgreSQL's data directory rule);
//! - a directory that the group or others may write into is refused: whoever can write
//!   there can replace a segment or plant a symlink where a file will be written;
//! - `open` takes over only a directory that is empty or holds a walship log; anything
//!   else is refused before anything is created in it, naming what it holds;
//! - the only files the engine deletes on its own are ones it made: temporary files under
//!   names only it uses (`<segment>.tmp`, `recycle-<segment>.tmp`, `.<name>.walship-tmp`)
//!   and segments of its own log — a user's `thesis.tmp` is never touched;
//! - its files are opened without following symlinks and without blocking (a FIFO under
//!   a segment's name is an error naming it, not a hang), and small files are read with
//!   the bound their format allows (a link to `/dev/zero` is an error, not an OOM).

use std::io;
use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::storage::{read_bounded, Create, FileKind, OsStorage, Storage, StorageFile};
use crate::types::Lsn;

/// File name suffix of segments.
pub(crate) const SEGMENT_SUFFIX: &str = ".wal";
/// Suffix of a segment being made (`<segment>.tmp`, `recycle-<segment>.tmp`).
pub(crate) const TMP_SUFFIX: &str = ".tmp";

/// The path of the segment starting at `base`: its base as 16 hex digits.
pub(crate) fn segment_path(dir: &Path, base: Lsn) -> std::path::PathBuf {
    dir.join(format!("{:016x}{SEGMENT_SUFFIX}", base.get()))
}

/// The base LSN encoded in a segment file name, if it is one.
pub(crate) fn parse_segment_name(name: &str) -> Option<Lsn> {
    let hex = name.strip_suffix(SEGMENT_SUFFIX)?;
    if hex.len() != 16 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(hex, 16).ok().map(Lsn::new)
}

/// The log's meta file: created with the log, records its segment capacity.
pub(crate) const META_FILE: &str = "walship.meta";
/// The lock file (`flock`): one process per log.
pub(crate) const LOCK_FILE: &str = "LOCK";
/// Which cluster and node the log belongs to.
pub(crate) const IDENTITY_FILE: &str = "walship.identity";
/// Mode of a directory the engine creates.
pub(crate) const DIR_MODE: u32 = 0o700;
/// Mode of every file the engine creates.
pub(crate) const FILE_MODE: u32 = 0o600;
/// Suffix of [`atomic_write`](crate::atomic_write)'s temporary files.
const ATOMIC_TMP_SUFFIX: &str = ".walship-tmp";
/// Entries named when a directory is refused.
const NAMED: usize = 5;

/// The temporary name under which [`atomic_write`](crate::atomic_write) writes `name`.
pub(crate) fn atomic_tmp_name(name: &str) -> String {
    format!(".{name}{ATOMIC_TMP_SUFFIX}")
}

/// Whether `name` is a temporary file that only the engine makes (and may delete).
pub(crate) fn is_own_temporary(name: &str) -> bool {
    if name.starts_with('.') && name.len() > ATOMIC_TMP_SUFFIX.len() + 1 {
        return name.ends_with(ATOMIC_TMP_SUFFIX);
    }
    let Some(stem) = name.strip_suffix(TMP_SUFFIX) else {
        return false;
    };
    parse_segment_name(stem.strip_prefix("recycle-").unwrap_or(stem)).is_some()
}

/// Makes `dir` ready to hold a log: creates it (mode 0700) if missing, each directory it
/// creates made durable in its parent; refuses it if the group or others may write into
/// it, or if it holds anything but a walship log. A new (empty) directory is narrowed to
/// 0700; an existing log readable by others is opened with a warning. Returns whether the
/// directory already held a log.
pub(crate) fn prepare(fs: &dyn Storage, dir: &Path) -> Result<bool> {
    match fs.stat(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => create_dir_all(fs, dir)?,
        Err(e) => return Err(Error::io("inspect log directory", dir, e)),
        Ok(_) => {}
    }
    let meta = fs
        .stat(dir)
        .map_err(|e| Error::io("inspect log directory", dir, e))?;
    if meta.kind != FileKind::Dir {
        return Err(Error::UnsafeDirectory {
            path: dir.to_path_buf(),
            reason: "is not a directory".into(),
        });
    }
    let mode = meta.mode;
    if mode & 0o022 != 0 {
        return Err(Error::UnsafeDirectory {
            path: dir.to_path_buf(),
            reason: format!(
                "is writable by {} (mode {mode:04o}): anyone who can write there can replace \
                 a segment; `chmod 700` it",
                if mode & 0o002 != 0 {
                    "everyone"
                } else {
                    "its group"
                }
            ),
        });
    }
    let is_log = fs.stat(&dir.join(META_FILE)).is_ok();
    if is_log {
        if mode & 0o077 != 0 {
            tracing::warn!(dir = %dir.display(), mode = format!("{mode:04o}"), "the log directory is readable by others; `chmod 700` it");
        }
        return Ok(true);
    }
    let mut foreign = Vec::new();
    let mut count = 0usize;
    let names = fs
        .list_dir(dir)
        .map_err(|e| Error::io("list log directory", dir, e))?;
    for name in names {
        let name = name.to_string_lossy().into_owned();
        let ours = name == LOCK_FILE
            || name == IDENTITY_FILE
            || is_own_temporary(&name)
            || parse_segment_name(&name).is_some();
        if !ours {
            count += 1;
            if foreign.len() < NAMED {
                foreign.push(name);
            }
        }
    }
    if count > 0 {
        let more = count.saturating_sub(foreign.len());
        return Err(Error::NotALog {
            path: dir.to_path_buf(),
            holds: if more > 0 {
                format!("{} and {more} more", foreign.join(", "))
            } else {
                foreign.join(", ")
            },
        });
    }
    if mode & 0o077 != 0 {
        fs.set_mode(dir, DIR_MODE)
            .map_err(|e| Error::io("restrict log directory to its owner", dir, e))?;
    }
    Ok(false)
}

/// Creates `dir` and its missing ancestors (mode 0700), fsyncing the parent of each one
/// created: a log whose directory's name is not durable is lost, whole, by a power loss
/// (PostgreSQL's `fsync_parent_path`; the simulated disk models exactly this).
fn create_dir_all(fs: &dyn Storage, dir: &Path) -> Result<()> {
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(p) = at {
        if p.as_os_str().is_empty() {
            break;
        }
        match fs.stat(p) {
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::NotFound => missing.push(p),
            Err(e) => return Err(Error::io("inspect log directory", p, e)),
        }
        at = p.parent();
    }
    for p in missing.into_iter().rev() {
        match fs.create_dir(p, DIR_MODE) {
            Ok(()) => {}
            // Someone else made it meanwhile; it is checked like any existing one.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::io("create log directory", p, e)),
        }
        let parent = match p.parent() {
            Some(q) if !q.as_os_str().is_empty() => q,
            _ => Path::new("."),
        };
        if !crate::mutation::active(crate::mutation::SKIP_LOG_DIR_PARENT_FSYNC) {
            crate::fsutil::fsync_dir(fs, parent)?;
        }
    }
    Ok(())
}

/// Opens one of the log's files without following a symlink and without blocking, and
/// refuses anything but a regular file.
pub(crate) fn open_regular(
    fs: &dyn Storage,
    path: &Path,
    write: bool,
) -> io::Result<Arc<dyn StorageFile>> {
    fs.open(path, write, Create::No)
}

/// Reads a small state file (at most `max` bytes, as its format allows) of a log
/// directory: only a regular file, never a symlink, a FIFO or a device, and never more
/// than `max + 1` bytes.
///
/// ```
/// # let dir = tempfile::tempdir()?;
/// walship_engine::atomic_write(dir.path(), "state", b"v2")?;
/// let p = dir.path().join("state");
/// assert_eq!(walship_engine::read_small_file(&p, 16)?, b"v2");
/// assert!(walship_engine::read_small_file(&p, 1).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// The OS error (`NotFound` if it does not exist); `InvalidInput` for something other
/// than a regular file; `InvalidData` for a file longer than `max`.
pub fn read_small_file(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    read_small_file_in(&OsStorage, path, max)
}

/// [`read_small_file`] on the storage `fs` (a log's, [`Log::storage`](crate::Log::storage)).
///
/// # Errors
/// As [`read_small_file`].
pub fn read_small_file_in(fs: &dyn Storage, path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let bytes = read_bounded(&*open_regular(fs, path, false)?, max)?;
    if bytes.len() as u64 > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("is longer than the {max} bytes such a file may hold"),
        ));
    }
    Ok(bytes)
}

/// One of the log's state files (meta, identity, epoch history): `None` if it does not
/// exist; one longer than its format allows is damage ([`Error::Corruption`] naming it),
/// like any other bad content; one that cannot be read as a regular file is an
/// [`Error::Io`] naming it.
pub(crate) fn read_state_file(
    fs: &dyn Storage,
    path: &Path,
    max: u64,
    what: &'static str,
) -> Result<Option<Vec<u8>>> {
    match read_small_file_in(fs, path, max) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::InvalidData => {
            Err(Error::corruption(path, max, e.to_string()))
        }
        Err(e) => Err(Error::io(what, path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn only_the_engines_own_temporary_names_are_its_own() {
        for own in [
            "0000000000010000.wal.tmp",
            "recycle-0000000000010000.wal.tmp",
            ".walship.meta.walship-tmp",
            ".replication.slots.walship-tmp",
        ] {
            assert!(is_own_temporary(own), "{own}");
        }
        for theirs in [
            "thesis.tmp",
            "walship.meta.tmp",
            "recycle-x.tmp",
            ".walship-tmp",
            "0000000000010000.wal",
            "notes.walship-tmp",
        ] {
            assert!(!is_own_temporary(theirs), "{theirs}");
        }
    }

    #[test]
    fn a_foreign_directory_is_refused_naming_what_it_holds_and_kept_as_it_was() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("thesis.tmp"), b"three years of work").unwrap();
        fs::write(d.path().join("notes.txt"), b"x").unwrap();
        let e = prepare(&OsStorage, d.path()).unwrap_err().to_string();
        assert!(
            e.contains("is not a walship log")
                && e.contains("thesis.tmp")
                && e.contains("notes.txt"),
            "{e}"
        );
        assert_eq!(
            fs::read(d.path().join("thesis.tmp")).unwrap(),
            b"three years of work"
        );
        assert!(!d.path().join(LOCK_FILE).exists(), "nothing created in it");
    }

    #[test]
    fn directories_others_can_write_are_refused_and_new_ones_are_private() {
        let d = tempfile::tempdir().unwrap();
        let open = d.path().join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
        let e = prepare(&OsStorage, &open).unwrap_err().to_string();
        assert!(e.contains("writable by everyone (mode 0777)"), "{e}");
        fs::set_permissions(&open, fs::Permissions::from_mode(0o775)).unwrap();
        assert!(prepare(&OsStorage, &open)
            .unwrap_err()
            .to_string()
            .contains("its group"));
        // An empty directory readable by others is narrowed; a missing one is created so.
        fs::set_permissions(&open, fs::Permissions::from_mode(0o755)).unwrap();
        assert!(!prepare(&OsStorage, &open).unwrap());
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&open), 0o700);
        let new = d.path().join("a/b");
        prepare(&OsStorage, &new).unwrap();
        assert_eq!(mode(&new), 0o700);
    }

    #[test]
    fn small_files_are_regular_and_bounded() {
        let d = tempfile::tempdir().unwrap();
        let zero = d.path().join("zero");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        let e = read_small_file(&zero, 32).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        let fifo = d.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a NUL-terminated path that outlives the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = read_small_file(&fifo, 32).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        let big = d.path().join("big");
        fs::write(&big, vec![1u8; 100]).unwrap();
        assert_eq!(
            read_small_file(&big, 99).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        assert_eq!(read_small_file(&big, 100).unwrap().len(), 100);
    }
}
