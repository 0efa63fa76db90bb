//! Files read again when they change: the revocation list, a node's own certificate and
//! key. One rule for all of them ([`FileWatch`]): a new version of the files is tried
//! once; if it cannot be used it is reported once, and the last good contents stay in
//! force until the files change again.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::SystemTime;

/// What identifies one version of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: SystemTime,
}

impl FileStamp {
    fn of(path: &Path) -> std::io::Result<FileStamp> {
        let m = std::fs::metadata(path)?;
        Ok(FileStamp {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime: m.modified()?,
        })
    }
}

/// The versions of a set of files (`None`: missing or unreadable).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Versions(Vec<Option<FileStamp>>);

impl Versions {
    fn of(paths: &[&Path]) -> Versions {
        Versions(paths.iter().map(|p| FileStamp::of(p).ok()).collect())
    }
}

/// See the [module docs](self).
#[derive(Debug)]
pub(crate) struct FileWatch {
    in_force: Versions,
    failed: Option<Versions>,
}

impl FileWatch {
    /// Watches `paths`, whose versions now are the ones in force.
    pub(crate) fn in_force_now(paths: &[&Path]) -> FileWatch {
        FileWatch {
            in_force: Versions::of(paths),
            failed: None,
        }
    }

    /// The versions of `paths` now, if they are neither the ones in force nor ones
    /// already found unusable: the caller tries them, then says [`took`](Self::took) or
    /// [`refused`](Self::refused). One `stat` per file.
    pub(crate) fn changed(&self, paths: &[&Path]) -> Option<Versions> {
        let now = Versions::of(paths);
        (now != self.in_force && self.failed.as_ref() != Some(&now)).then_some(now)
    }

    /// These versions are in force now.
    pub(crate) fn took(&mut self, v: Versions) {
        self.in_force = v;
        self.failed = None;
    }

    /// These versions cannot be used: not tried again until the files change.
    pub(crate) fn refused(&mut self, v: Versions) {
        self.failed = Some(v);
    }
}
