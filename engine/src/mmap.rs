//! Read-only shared mappings of segment files: the only place the engine reads through a
//! mapping (made by the [`Storage`](crate::storage::Storage)'s file: an `mmap` of the OS's
//! page cache, or a simulated file's cache).
//!
//! # Why this is sound
//! A mapped file can change underneath the mapping. The engine keeps that from being
//! observed through any reference it hands out:
//! - the log writer only writes bytes at or beyond the `written` watermark, and readers
//!   only slice bytes below it, which never change again while mapped;
//! - recovery zeroes a torn tail before any mapping of that segment is created;
//! - truncation never writes a mapped file: it writes a new file and renames it over
//!   the old one, so existing mappings keep the old inode's bytes;
//! - a retired segment is recycled (overwritten) only when no mapping of it is alive
//!   (the [`SegmentMap`] `Arc` is unique); otherwise it is unlinked and the mapping keeps
//!   the old inode alive.
//!
//! Other processes writing into a live log directory are outside this contract; the
//! directory is locked against a second `Log`.

use std::io;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;

use crate::storage::{Mapped, StorageFile};

/// A read-only mapping of a whole segment file.
#[derive(Debug)]
pub(crate) struct SegmentMap {
    map: Box<dyn Mapped>,
}

impl SegmentMap {
    /// Maps the first `len` bytes of `file` (the file must be at least that long).
    pub(crate) fn map(file: &dyn StorageFile, len: usize) -> io::Result<SegmentMap> {
        let map = file.map(len)?;
        if map.len() != len {
            return Err(io::Error::other("the storage mapped a different length"));
        }
        Ok(SegmentMap { map })
    }

    /// Length of the mapping.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// The bytes in `range`, or `None` if it is out of bounds.
    ///
    /// Callers only ask for ranges that are stable: below the `written` watermark, or in
    /// a file no writer touches (recovery, tools).
    pub(crate) fn slice(&self, range: Range<usize>) -> Option<&[u8]> {
        if range.start > range.end || range.end > self.map.len() {
            return None;
        }
        // SAFETY: the range is within the mapping (checked above); the pointer is valid for
        // the mapping's lifetime, which `&self` bounds; the bytes are not mutated while the
        // returned reference lives (module documentation).
        Some(unsafe {
            std::slice::from_raw_parts(self.map.as_ptr().add(range.start), range.end - range.start)
        })
    }
}

/// A zero-copy view of part of a mapping, the owner behind a [`Bytes`].
struct MapView {
    map: Arc<SegmentMap>,
    start: usize,
    end: usize,
}

impl AsRef<[u8]> for MapView {
    fn as_ref(&self) -> &[u8] {
        // `bytes_of` checked the range when the view was made.
        self.map.slice(self.start..self.end).unwrap_or(&[])
    }
}

/// A [`Bytes`] over `range` of the mapping that keeps the mapping alive. The mapping's
/// `Arc` count tells whether any such `Bytes` (or slice of one) is still alive.
pub(crate) fn bytes_of(map: &Arc<SegmentMap>, range: Range<usize>) -> Option<Bytes> {
    map.slice(range.clone())?;
    Some(Bytes::from_owner(MapView {
        map: Arc::clone(map),
        start: range.start,
        end: range.end,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Storage;

    fn os_file(dir: &tempfile::TempDir) -> Arc<dyn StorageFile> {
        crate::storage::os()
            .open(&dir.path().join("f"), true, crate::storage::Create::New)
            .unwrap()
    }

    #[test]
    fn maps_and_slices_and_counts_views() {
        let dir = tempfile::tempdir().unwrap();
        let f = os_file(&dir);
        f.write_all_at(&[&(0u8..=255).collect::<Vec<_>>()], 0)
            .unwrap();
        let map = Arc::new(SegmentMap::map(&*f, 256).unwrap());
        assert_eq!(map.len(), 256);
        assert_eq!(map.slice(10..13), Some(&[10u8, 11, 12][..]));
        assert_eq!(map.slice(250..257), None);
        #[allow(clippy::reversed_empty_ranges)]
        let reversed = map.slice(5..4);
        assert_eq!(reversed, None);
        let b = bytes_of(&map, 100..110).unwrap();
        let sub = b.slice(2..4);
        drop(b);
        assert_eq!(Arc::strong_count(&map), 2, "a slice keeps the view alive");
        assert_eq!(&sub[..], &[102, 103]);
        drop(sub);
        assert_eq!(Arc::strong_count(&map), 1);
        assert!(bytes_of(&map, 200..300).is_none());
    }

    #[test]
    fn sees_writes_made_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let disk = crate::storage::SimDisk::new(1);
        let sim = disk.boot();
        sim.create_dir(std::path::Path::new("/d"), 0o700).unwrap();
        let files = [
            os_file(&dir),
            crate::storage::Storage::open(
                &*sim,
                std::path::Path::new("/d/f"),
                true,
                crate::storage::Create::New,
            )
            .unwrap(),
        ];
        for f in files {
            f.set_len(4096).unwrap();
            let map = SegmentMap::map(&*f, 4096).unwrap();
            f.write_all_at(&[b"hello"], 100).unwrap();
            assert_eq!(map.slice(100..105), Some(&b"hello"[..]));
        }
    }
}
