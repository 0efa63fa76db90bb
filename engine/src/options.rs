//! Options for opening a [`Log`](crate::Log).

use std::time::Duration;

use crate::error::{Error, Result};
use crate::format::{check_capacity, Geometry, BATCH_HEADER_LEN, RECORD_PREFIX_LEN};
use crate::io::BackendKind;
use crate::recovery::RecoveryMode;
use crate::types::Lsn;

/// Who runs the log's background work: writing and flushing appended records, preparing
/// the next segment, retiring old ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Drive {
    /// The log's own threads (a writer, a flusher, a segment preparer): the default.
    #[default]
    Threads,
    /// The caller, through [`Log::step`](crate::Log::step): no thread is started, and
    /// nothing is written, flushed or prepared except inside a call into the log. For
    /// deterministic simulation: one thread, one order of events. In this mode a blocking
    /// wait ([`Commit::wait`](crate::Commit::wait), back-pressure in `append`) is never
    /// ended by anyone but the caller, so poll commits and step instead: `append` over
    /// `max_pending_bytes` fails with [`WouldBlock`](crate::Error::WouldBlock), and
    /// `truncate_suffix` and `close` step the log themselves. The I/O goes through the
    /// storage on the calling thread (`backend` is not used).
    Manual,
}

/// How to open (or create) a log. `Options::default()` suits most embedders.
///
/// ```
/// use std::time::Duration;
/// use walship_engine::{BackendKind, Options};
/// let opts = Options {
///     segment_capacity: 16 << 20,
///     async_flush_interval: Duration::from_millis(50),
///     backend: BackendKind::Portable,
///     ..Options::default()
/// };
/// assert!(opts.validate().is_ok());
/// ```
#[derive(Debug, Clone)]
pub struct Options {
    /// Segment size, a power of two between 64 KiB and 1 GiB. Only used when the log is
    /// created; an existing log keeps the capacity recorded in it. Default 64 MiB.
    pub segment_capacity: u64,
    /// Largest record accepted; larger ones are refused, never truncated. The limit in
    /// force is the smaller of this and what an empty segment can hold with room left for
    /// a padding header (segment capacity − 148 bytes). Default 8 MiB.
    pub max_record_bytes: usize,
    /// A batch stops growing at this size (a larger single record gets its own batch;
    /// no batch crosses a segment end). Default 1 MiB.
    pub max_batch_bytes: usize,
    /// Bytes appended but not yet written before `append` blocks (or `try_append`
    /// returns [`Error::WouldBlock`]). Default 64 MiB.
    pub max_pending_bytes: u64,
    /// With only `Async` commits outstanding, written data is flushed at least this often
    /// (PostgreSQL's `wal_writer_delay`). Default 200 ms.
    pub async_flush_interval: Duration,
    /// With only `Async` commits outstanding, a flush also starts once this many bytes are
    /// written but not flushed (PostgreSQL's `wal_writer_flush_after`): flushing runs in
    /// the background instead of piling up for the flush every segment switch needs.
    /// Default 1 MiB.
    pub async_flush_after_bytes: u64,
    /// How many flushes (`fdatasync`) committers may have in flight at once, 1 to 4. A
    /// flush covers everything written before it began, so a second can start while the
    /// first waits for the device; on a disk that overlaps them this trades group size
    /// for parallelism. Default 1: on the disks measured (bench/RESULTS.md, issue 13) the
    /// larger groups of one flush at a time commit more per second.
    pub flushes_in_flight: usize,
    /// The I/O backend. Default [`BackendKind::Auto`].
    pub backend: BackendKind,
    /// What to do with corruption found on open. Default [`RecoveryMode::Strict`].
    pub recovery: RecoveryMode,
    /// Check every batch of every segment on open, not just the last two segments.
    pub verify_all_on_open: bool,
    /// Retired segments kept for recycling. Default 2.
    pub recycle_pool: usize,
    /// Base LSN of the first segment when the log is created (a multiple of the segment
    /// capacity): a follower created from a leader whose log no longer starts at zero.
    pub create_at: Lsn,
    /// Which cluster and node this log belongs to: recorded when the log is created (or
    /// first opened with one), compared on every open; a mismatch is refused naming
    /// both. `None` checks nothing.
    pub identity: Option<crate::LogIdentity>,
    /// Where the log's files live: the OS's file system (the default), or a simulated
    /// disk ([`SimDisk`](crate::storage::SimDisk)) for tests of power loss and crashes.
    pub storage: std::sync::Arc<dyn crate::storage::Storage>,
    /// Who runs the background work ([`Drive`]); the log's own threads by default.
    pub drive: Drive,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            segment_capacity: 64 << 20,
            max_record_bytes: 8 << 20,
            max_batch_bytes: 1 << 20,
            max_pending_bytes: 64 << 20,
            async_flush_interval: Duration::from_millis(200),
            async_flush_after_bytes: 1 << 20,
            flushes_in_flight: 1,
            backend: BackendKind::Auto,
            recovery: RecoveryMode::Strict,
            verify_all_on_open: false,
            recycle_pool: 2,
            create_at: Lsn::ZERO,
            identity: None,
            storage: crate::storage::os(),
            drive: Drive::Threads,
        }
    }
}

impl Options {
    /// Checks the options against each other.
    ///
    /// # Errors
    /// [`Error::InvalidOptions`] naming the offending option.
    pub fn validate(&self) -> Result<()> {
        self.validate_for(self.segment_capacity)
    }

    /// The record size limit in force for segments of `capacity` bytes.
    pub fn effective_max_record(&self, capacity: u64) -> usize {
        let fits = Geometry::new(capacity).max_payload();
        self.max_record_bytes
            .min(usize::try_from(fits).unwrap_or(usize::MAX))
    }

    pub(crate) fn validate_for(&self, capacity: u64) -> Result<()> {
        check_capacity(capacity).map_err(|reason| Error::InvalidOptions {
            name: "segment_capacity",
            reason,
        })?;
        if self.max_record_bytes == 0 || self.max_record_bytes > u32::MAX as usize {
            return Err(Error::InvalidOptions {
                name: "max_record_bytes",
                reason: format!(
                    "{} must be between 1 and {}",
                    self.max_record_bytes,
                    u32::MAX
                ),
            });
        }
        if self.max_batch_bytes < BATCH_HEADER_LEN + RECORD_PREFIX_LEN {
            return Err(Error::InvalidOptions {
                name: "max_batch_bytes",
                reason: format!(
                    "{} is less than a batch header and an empty record (44)",
                    self.max_batch_bytes
                ),
            });
        }
        if self.max_pending_bytes == 0 {
            return Err(Error::InvalidOptions {
                name: "max_pending_bytes",
                reason: "must be positive".into(),
            });
        }
        if self.create_at.get() % capacity != 0 {
            return Err(Error::InvalidOptions {
                name: "create_at",
                reason: format!(
                    "{} is not a multiple of the segment capacity {capacity}",
                    self.create_at
                ),
            });
        }
        if self.async_flush_interval.is_zero() {
            return Err(Error::InvalidOptions {
                name: "async_flush_interval",
                reason: "must be positive".into(),
            });
        }
        Ok(())
    }
}
