//! Segment files: naming, creation by zero-filling, recycling, and the in-memory
//! handle that pairs a file with its read-only mapping.
//!
//! A segment covers `capacity` bytes of LSN space starting at its base LSN, which is a
//! multiple of the capacity and, as 16 hex digits, its file name (`0000000004000000.wal`).
//! New segments are zero-filled to full size and fsynced before use, as PostgreSQL does:
//! on ext4 a merely fallocate'd file has unwritten extents and pays a journal commit on
//! every first write, so `fdatasync` would flush metadata too. Retired segments are
//! recycled (renamed, header rewritten) because an already-written file is the fastest
//! to write into again. Creation and recycling go through a `.tmp` name and end with a
//! directory fsync, so a crash never leaves a half-made segment under a real name; the
//! final rename never replaces an existing file, so a segment being made can never take
//! the name of a live one (whose open file the writer would then write into unlinked).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::format::{Geometry, SegmentHeader};
use crate::fsutil::{fsync_dir, write_zeros};
use crate::mmap::{bytes_of, SegmentMap};
use crate::storage::{Create, Storage, StorageFile};
use crate::types::Lsn;

/// A segment's open file.
pub(crate) type SegmentFile = Arc<dyn StorageFile>;

pub(crate) use crate::layout::{parse_segment_name, segment_path, TMP_SUFFIX};

/// An open segment: its mapping (for reads) and, while it may be written, its file.
///
/// Only segments near the end of the log keep a file descriptor: a mapping outlives the
/// descriptor it was made from, so a long log costs mappings, not descriptors. The file is
/// reopened on demand.
#[derive(Debug)]
pub(crate) struct Segment {
    pub(crate) base: Lsn,
    pub(crate) path: PathBuf,
    /// `(device, inode)` of the file this handle maps and writes: what its name must
    /// still point to (checked by [`Log::check_files`](crate::Log::check_files)).
    pub(crate) id: (u64, u64),
    fs: Arc<dyn Storage>,
    file: Mutex<Option<SegmentFile>>,
    pub(crate) map: Arc<SegmentMap>,
}

impl Segment {
    /// Opens an existing segment file read-write and maps it.
    pub(crate) fn open(
        fs: &Arc<dyn Storage>,
        path: &Path,
        base: Lsn,
        geometry: Geometry,
    ) -> Result<Segment> {
        let file = crate::layout::open_regular(&**fs, path, true)
            .map_err(|e| Error::io("open segment", path, e))?;
        Segment::from_file(fs, file, path, base, geometry)
    }

    fn from_file(
        fs: &Arc<dyn Storage>,
        file: SegmentFile,
        path: &Path,
        base: Lsn,
        geometry: Geometry,
    ) -> Result<Segment> {
        let meta = file
            .stat()
            .map_err(|e| Error::io("stat segment", path, e))?;
        let len = meta.len;
        if len != geometry.capacity() {
            return Err(Error::corruption(
                path,
                0,
                format!(
                    "segment file is {len} bytes, the log's segments are {}",
                    geometry.capacity()
                ),
            ));
        }
        let map = SegmentMap::map(&*file, len as usize)
            .map_err(|e| Error::io("mmap segment", path, e))?;
        Ok(Segment {
            base,
            path: path.to_path_buf(),
            id: meta.id,
            fs: Arc::clone(fs),
            file: Mutex::new(Some(file)),
            map: Arc::new(map),
        })
    }

    /// The segment's file, reopened if it was released.
    pub(crate) fn file(&self) -> Result<SegmentFile> {
        let mut f = crate::sync::lock(&self.file);
        if let Some(f) = f.as_ref() {
            return Ok(Arc::clone(f));
        }
        let opened = crate::layout::open_regular(&*self.fs, &self.path, true)
            .map_err(|e| Error::io("reopen segment", &self.path, e))?;
        *f = Some(Arc::clone(&opened));
        Ok(opened)
    }

    /// Closes the file descriptor (the mapping stays).
    pub(crate) fn release_file(&self) {
        *crate::sync::lock(&self.file) = None;
    }

    /// The stable bytes `[start, end)` of this segment, by LSN.
    pub(crate) fn slice(&self, start: Lsn, end: Lsn) -> Option<&[u8]> {
        let s = start.get().checked_sub(self.base.get())? as usize;
        let e = end.get().checked_sub(self.base.get())? as usize;
        self.map.slice(s..e)
    }

    /// A zero-copy [`Bytes`] over `[start, end)`.
    pub(crate) fn bytes(&self, start: Lsn, end: Lsn) -> Option<Bytes> {
        let s = start.get().checked_sub(self.base.get())? as usize;
        let e = end.get().checked_sub(self.base.get())? as usize;
        bytes_of(&self.map, s..e)
    }

    /// Whether any reader or `Bytes` still references the mapping.
    pub(crate) fn is_referenced(self: &Arc<Segment>) -> bool {
        Arc::strong_count(&self.map) > 1 || Arc::strong_count(self) > 1
    }
}

/// Creates a new segment at `base`: zero-filled to capacity, header written, fsynced,
/// renamed into place, directory fsynced.
pub(crate) fn create(
    fs: &Arc<dyn Storage>,
    dir: &Path,
    base: Lsn,
    geometry: Geometry,
) -> Result<Segment> {
    let path = segment_path(dir, base);
    let tmp = tmp_path(&path);
    let result = (|| {
        let file = create_tmp(&**fs, &tmp, "create segment")?;
        write_header_and_zeros(&*file, &tmp, base, geometry)?;
        file.sync_all()
            .map_err(|e| Error::io("fsync new segment", &tmp, e))?;
        fs.rename_noreplace(&tmp, &path)
            .map_err(|e| Error::io("move new segment into place (never over a file)", &path, e))?;
        if !crate::mutation::active(crate::mutation::SKIP_SEGMENT_DIR_FSYNC) {
            fsync_dir(&**fs, dir)?;
        }
        Segment::from_file(fs, file, &path, base, geometry)
    })();
    if result.is_err() {
        // Leave no half-written file behind; ENOSPC must not leak the space it used.
        let _ = fs.remove_file(&tmp);
    }
    result
}

fn write_header_and_zeros(
    file: &dyn StorageFile,
    path: &Path,
    base: Lsn,
    geometry: Geometry,
) -> Result<()> {
    let header = SegmentHeader {
        base,
        capacity: geometry.capacity(),
    }
    .encode();
    file.write_all_at(&[&header], 0)
        .map_err(|e| Error::io("write segment header", path, e))?;
    let hl = header.len() as u64;
    write_zeros(file, path, hl, geometry.capacity() - hl)
}

/// Turns the retired segment file `old` into the segment at `base`: its stale content
/// stays (its batches carry LSNs below the log start, so recovery never takes them for
/// data), only the header is rewritten.
pub(crate) fn recycle(
    fs: &Arc<dyn Storage>,
    dir: &Path,
    old: &Path,
    base: Lsn,
    geometry: Geometry,
) -> Result<Segment> {
    let path = segment_path(dir, base);
    let tmp = tmp_path(&path);
    fs.rename(old, &tmp)
        .map_err(|e| Error::io("rename retired segment", old, e))?;
    let result = (|| {
        // The old name must be durably gone before its header changes.
        fsync_dir(&**fs, dir)?;
        let file = crate::layout::open_regular(&**fs, &tmp, true)
            .map_err(|e| Error::io("open recycled segment", &tmp, e))?;
        let header = SegmentHeader {
            base,
            capacity: geometry.capacity(),
        }
        .encode();
        file.write_all_at(&[&header], 0)
            .and_then(|_| file.sync_data())
            .map_err(|e| Error::io("rewrite recycled segment header", &tmp, e))?;
        fs.rename_noreplace(&tmp, &path).map_err(|e| {
            Error::io(
                "move recycled segment into place (never over a file)",
                &path,
                e,
            )
        })?;
        fsync_dir(&**fs, dir)?;
        Segment::from_file(fs, file, &path, base, geometry)
    })();
    if result.is_err() {
        // A spare is cheap to remake; a stray file under a temporary name is not wanted.
        let _ = fs.remove_file(&tmp);
    }
    result
}

/// Rewrites the segment at `seg` so that it keeps only `[base, keep_end)` and zeros
/// after, via a new file renamed over the old one (existing mappings keep the old bytes).
pub(crate) fn rewrite_prefix(
    fs: &Arc<dyn Storage>,
    dir: &Path,
    seg: &Segment,
    keep_end: Lsn,
    geometry: Geometry,
) -> Result<Segment> {
    let tmp = tmp_path(&seg.path);
    let keep = keep_end.get() - seg.base.get();
    let result = (|| {
        let prefix = seg
            .map
            .slice(0..keep as usize)
            .ok_or_else(|| Error::corruption(&seg.path, keep, "truncation point beyond segment"))?;
        let file = create_tmp(&**fs, &tmp, "create truncated segment")?;
        file.write_all_at(&[prefix], 0)
            .map_err(|e| Error::io("copy kept prefix", &tmp, e))?;
        write_zeros(&*file, &tmp, keep, geometry.capacity() - keep)?;
        file.sync_all()
            .map_err(|e| Error::io("fsync truncated segment", &tmp, e))?;
        // Replacing the old file is the point here: mappings of it keep the old bytes.
        fs.rename(&tmp, &seg.path)
            .map_err(|e| Error::io("rename truncated segment", &seg.path, e))?;
        fsync_dir(&**fs, dir)?;
        Segment::from_file(fs, file, &seg.path, seg.base, geometry)
    })();
    if result.is_err() {
        let _ = fs.remove_file(&tmp);
    }
    result
}

/// A new, empty temporary file for a segment being made.
fn create_tmp(fs: &dyn Storage, tmp: &Path, op: &'static str) -> Result<SegmentFile> {
    fs.open(tmp, true, Create::Truncate)
        .map_err(|e| Error::io(op, tmp, e))
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(TMP_SUFFIX);
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn os() -> Arc<dyn Storage> {
        crate::storage::os()
    }

    #[test]
    fn names() {
        let p = segment_path(Path::new("/d"), Lsn::new(0x400_0000));
        assert_eq!(p, Path::new("/d/0000000004000000.wal"));
        assert_eq!(
            parse_segment_name("0000000004000000.wal"),
            Some(Lsn::new(0x400_0000))
        );
        assert_eq!(parse_segment_name("0000000004000000.wal.tmp"), None);
        assert_eq!(parse_segment_name("04000000.wal"), None);
        assert_eq!(parse_segment_name("000000000400000g.wal"), None);
    }

    #[test]
    fn a_new_or_recycled_segment_never_replaces_a_file_of_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let g = Geometry::new(1 << 16);
        let live = create(&os(), dir.path(), Lsn::ZERO, g).unwrap();
        live.file()
            .unwrap()
            .write_all_at(&[b"acknowledged"], 64)
            .unwrap();
        let e = create(&os(), dir.path(), Lsn::ZERO, g).unwrap_err();
        assert!(e.to_string().contains("never over a file"), "{e}");
        let old = dir.path().join("retired");
        std::fs::write(&old, vec![0u8; 1 << 16]).unwrap();
        assert!(recycle(&os(), dir.path(), &old, Lsn::ZERO, g).is_err());
        let on_disk = std::fs::read(segment_path(dir.path(), Lsn::ZERO)).unwrap();
        assert_eq!(
            &on_disk[64..76],
            b"acknowledged",
            "the live file is untouched"
        );
        let meta = std::fs::metadata(&live.path).unwrap();
        assert_eq!((meta.dev(), meta.ino()), live.id);
        assert!(
            !tmp_path(&live.path).exists(),
            "no temporary file left behind"
        );
    }

    #[test]
    fn create_recycle_rewrite() {
        let dir = tempfile::tempdir().unwrap();
        let g = Geometry::new(1 << 16);
        let s = create(&os(), dir.path(), Lsn::ZERO, g).unwrap();
        assert_eq!(
            SegmentHeader::decode(s.slice(Lsn::ZERO, Lsn::new(64)).unwrap())
                .unwrap()
                .base,
            Lsn::ZERO
        );
        assert!(s
            .slice(Lsn::new(64), Lsn::new(1 << 16))
            .unwrap()
            .iter()
            .all(|&b| b == 0));
        s.file().unwrap().write_all_at(&[b"data"], 64).unwrap();
        let r = rewrite_prefix(&os(), dir.path(), &s, Lsn::new(66), g).unwrap();
        assert_eq!(r.slice(Lsn::new(64), Lsn::new(68)).unwrap(), b"da\0\0");
        assert_eq!(
            s.slice(Lsn::new(64), Lsn::new(68)).unwrap(),
            b"data",
            "old mapping unchanged"
        );
        let path = r.path.clone();
        drop((s, r));
        let n = recycle(&os(), dir.path(), &path, Lsn::new(1 << 16), g).unwrap();
        assert!(!path.exists());
        assert_eq!(n.path, segment_path(dir.path(), Lsn::new(1 << 16)));
        assert_eq!(
            SegmentHeader::decode(n.slice(n.base, Lsn::new((1 << 16) + 64)).unwrap())
                .unwrap()
                .base,
            Lsn::new(1 << 16)
        );
    }
}
