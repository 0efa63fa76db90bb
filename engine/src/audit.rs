//! [`Log::check_files`](crate::Log::check_files): whether the files in the log directory
//! are exactly the ones the log believes it has.
//!
//! The segment-boundary bug of issue 10 left a log writing into an unlinked inode while
//! another file carried its segment's name, and a failed retirement left segment files
//! outside the segment map: both are disagreements between the log's belief and the
//! directory that nothing noticed until a later open lost data or refused. This check
//! states the agreement precisely:
//! - every segment in the map is the file under its name (same device and inode);
//! - the prepared next segment, if any, likewise, and it is not in the map;
//! - every segment file in the directory is in the map or is that spare;
//! - every `recycle-*.tmp` file is in the recycle pool, and every pool file exists.
//!
//! It holds the append lock (no provisioning, truncation or epoch change meanwhile) and
//! waits for the preparer to be idle (no segment being made or retired), so what it
//! compares is a settled state.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::segment::{parse_segment_name, TMP_SUFFIX};
use crate::shared::Shared;
use crate::storage::Storage;
use crate::sync::{lock, read};
use crate::types::Lsn;

/// The log's files, as [`Log::check_files`](crate::Log::check_files) found them, all
/// accounted for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentFiles {
    /// Base LSNs of the log's segments, ascending.
    pub segments: Vec<Lsn>,
    /// Base LSN of the prepared next segment, if one is ready.
    pub spare: Option<Lsn>,
    /// Retired segment files kept for recycling.
    pub recycle_pool: usize,
}

fn mismatch(path: &Path, reason: impl Into<String>) -> Error {
    Error::FileMismatch {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// `path` must be the file `id` (device, inode).
fn same_file(fs: &dyn Storage, path: &Path, id: (u64, u64), what: &str) -> Result<()> {
    match fs.stat(path) {
        Ok(m) if m.id == id => Ok(()),
        Ok(m) => Err(mismatch(
            path,
            format!(
                "another file (inode {}) has replaced the {what} the log maps and writes (inode {})",
                m.id.1,
                id.1
            ),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(mismatch(
            path,
            format!("no file has this name, but the log uses it as its {what}: the file it writes is unlinked"),
        )),
        Err(e) => Err(Error::io("stat segment", path, e)),
    }
}

pub(crate) fn check_files(sh: &Shared) -> Result<SegmentFiles> {
    let _append = lock(&sh.append);
    if let Some(e) = sh.unusable() {
        return Err(e);
    }
    let prep = sh.prep.quiesce();
    let segs = read(&sh.segments);
    for seg in segs.values() {
        same_file(&*sh.fs, &seg.path, seg.id, "segment")?;
    }
    let spare = prep.spare();
    if let Some((base, path, id)) = spare {
        if segs.contains_key(&base.get()) {
            return Err(mismatch(
                path,
                format!("segment {base} is both in the log and prepared as its next segment"),
            ));
        }
        same_file(&*sh.fs, path, id, "prepared next segment")?;
    }
    let pool: BTreeSet<PathBuf> = prep.pool().map(Path::to_path_buf).collect();
    for p in &pool {
        if sh.fs.stat(p).is_err() {
            return Err(mismatch(p, "in the recycle pool, but missing"));
        }
    }
    let names = sh
        .fs
        .list_dir(&sh.dir)
        .map_err(|e| Error::io("list log directory", &sh.dir, e))?;
    for name in names {
        let Some(name) = name.to_str() else { continue };
        let path = sh.dir.join(name);
        if let Some(base) = parse_segment_name(name) {
            let known = segs.contains_key(&base.get()) || spare.is_some_and(|(b, _, _)| b == base);
            if !known {
                return Err(mismatch(
                    &path,
                    "a segment file that is neither one of the log's segments nor its prepared next one",
                ));
            }
        } else if name.starts_with("recycle-")
            && name.ends_with(TMP_SUFFIX)
            && !pool.contains(&path)
        {
            return Err(mismatch(
                &path,
                "a retired segment file that is not in the recycle pool",
            ));
        }
    }
    Ok(SegmentFiles {
        segments: segs.keys().map(|&b| Lsn::new(b)).collect(),
        spare: spare.map(|(b, _, _)| b),
        recycle_pool: pool.len(),
    })
}
