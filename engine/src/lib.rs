//! # walship-engine
//!
//! A write-ahead log on one machine, built to be the storage layer under a replicated
//! database: segmented, memory-mapped for zero-copy reads, appended with group commit
//! driven by the committers themselves (the first committer that finds no flush running
//! writes and `fdatasync`s everything appended, on its own thread; the others wait for
//! that flush or lead the next), with every commit choosing its [`Durability`].
//!
//! ## Guarantees
//! - **No acknowledged commit is lost.** `commit(lsn, Local)` resolves only after an
//!   `fdatasync` covering `lsn` completed; remote levels additionally wait on watermarks
//!   that the replication layer advances ([`Log::advance_remote_flushed`] …).
//! - **No corrupt byte is returned.** Every batch carries a CRC32C over its length and
//!   body and its own LSN; readers and recovery verify both.
//! - **Crash recovery is exact.** After a crash the log is the longest valid prefix;
//!   the torn tail is zeroed. Damage that is not a torn tail stops `open` with an
//!   error naming the file and offset (see [`RecoveryMode`]).
//! - **A failed write or fsync stops the log** (it must be reopened): after a failed
//!   fsync the page cache is in an unknown state, so nothing later is acknowledged.
//! - **`ENOSPC` fails the append, not the log**: new segments are fully preallocated, so
//!   only making one can run out of space; that append fails with [`Error::NoSpace`],
//!   nothing is appended, and appends succeed again once space is freed.
//! - **Memory is bounded**: `append` blocks (or `try_append` returns
//!   [`Error::WouldBlock`]) when `max_pending_bytes` wait for the writer.
//!
//! ## Quick tour
//! ```
//! use walship_engine::{Durability, Log, Options};
//! let dir = tempfile::tempdir()?;
//! let log = Log::open(dir.path(), Options { segment_capacity: 1 << 20, ..Options::default() })?;
//! let tokens = log.append_batch(&[b"a".as_slice(), b"b"])?;
//! log.commit(tokens[1], Durability::Local).wait()?;
//! assert!(log.watermarks().flushed >= tokens[1]);
//! let mut batches = log.reader(log.start_lsn())?;
//! let batch = batches.try_next()?.expect("one batch");
//! assert_eq!(batch.records().count(), 2);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The on-disk layout is documented in [`format`](mod@format).

#![warn(missing_docs, unreachable_pub)]

mod audit;
mod commit;
mod epoch;
mod error;
mod failpoint;
mod flush_gate;
pub mod format;
mod fsutil;
mod group_commit;
mod identity;
pub mod inspect;
mod io;
mod layout;
mod lifecycle;
mod log;
mod marker;
mod mmap;
pub mod mutation;
mod options;
mod preparer;
mod reader;
mod recovery;
mod restart;
mod segment;
mod shared;
mod stats;
pub mod storage;
mod sync;
mod timer;
mod truncate;
mod types;
mod watermark;
mod writer;

pub use audit::SegmentFiles;
pub use commit::Commit;
pub use epoch::EpochHistory;
pub use error::{Error, Result};
pub use format::Record;
pub use fsutil::{atomic_write, atomic_write_in};
pub use identity::LogIdentity;
pub use io::BackendKind;
pub use layout::{read_small_file, read_small_file_in};
pub use log::{Log, OpenReport, Watermarks};
pub use options::{Drive, Options};
pub use reader::{Batch, Reader, RecordReader};
pub use recovery::{RecoveryMode, SegmentScan, UnflushedCut};
pub use stats::Stats;
pub use types::{Durability, Epoch, Lsn, ParseError};

/// Internals for tools, benchmarks and fuzz targets; not a stable API.
#[cfg(feature = "internals")]
pub mod internals {
    use std::path::Path;

    use crate::format::Geometry;
    use crate::types::{Epoch, Lsn};

    pub use crate::recovery::SegmentScan;

    /// Scans the batches of one segment's bytes (what `open` and `verify` do).
    pub fn scan_segment(bytes: &[u8], base: Lsn, capacity: u64, prev_epoch: Epoch) -> SegmentScan {
        crate::recovery::scan_bytes(bytes, base, Geometry::new(capacity), prev_epoch)
    }

    /// The file name of the segment at `base` in `dir`.
    pub fn segment_path(dir: &Path, base: Lsn) -> std::path::PathBuf {
        crate::segment::segment_path(dir, base)
    }
}
