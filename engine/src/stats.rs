//! Counters of what the log has done since it was opened, for metrics and for explaining
//! benchmark results (e.g. records per flush is the group-commit factor).

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters, updated with relaxed atomics on the paths they count.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) records_appended: AtomicU64,
    pub(crate) batches_written: AtomicU64,
    pub(crate) write_calls: AtomicU64,
    pub(crate) bytes_written: AtomicU64,
    pub(crate) flushes: AtomicU64,
    pub(crate) flush_micros: AtomicU64,
    pub(crate) segments_created: AtomicU64,
    pub(crate) segments_recycled: AtomicU64,
    pub(crate) back_pressure_waits: AtomicU64,
    pub(crate) segment_waits: AtomicU64,
    pub(crate) segment_wait_micros: AtomicU64,
    pub(crate) retire_errors: AtomicU64,
}

impl Counters {
    pub(crate) fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Stats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Stats {
            records_appended: g(&self.records_appended),
            batches_written: g(&self.batches_written),
            write_calls: g(&self.write_calls),
            bytes_written: g(&self.bytes_written),
            flushes: g(&self.flushes),
            flush_micros: g(&self.flush_micros),
            segments_created: g(&self.segments_created),
            segments_recycled: g(&self.segments_recycled),
            back_pressure_waits: g(&self.back_pressure_waits),
            segment_waits: g(&self.segment_waits),
            segment_wait_micros: g(&self.segment_wait_micros),
            retire_errors: g(&self.retire_errors),
        }
    }
}

/// What a log has done since it was opened; see [`Log::stats`](crate::Log::stats).
///
/// Differences of two snapshots give rates: records per flush is the group-commit
/// factor, `flush_micros / flushes` the mean flush time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Records appended locally (verbatim batches from a leader are not counted).
    pub records_appended: u64,
    /// Batches written, padding excluded.
    pub batches_written: u64,
    /// Vectored write calls (one per segment touched per writer turn).
    pub write_calls: u64,
    /// Bytes written, padding included.
    pub bytes_written: u64,
    /// Completed flushes (`fdatasync` rounds).
    pub flushes: u64,
    /// Total time flushes were in flight, µs.
    pub flush_micros: u64,
    /// Segments created by zero-filling.
    pub segments_created: u64,
    /// Segments made by recycling a retired one.
    pub segments_recycled: u64,
    /// Times an appender had to wait for the writer (back-pressure).
    pub back_pressure_waits: u64,
    /// Times an appender crossing into a new segment found it not yet prepared and
    /// waited for the preparer (appends stall meanwhile: the preparer is behind).
    pub segment_waits: u64,
    /// Total time of those waits, µs.
    pub segment_wait_micros: u64,
    /// Times segment retirement stopped on an error (see
    /// [`Log::last_retire_error`](crate::Log::last_retire_error)).
    pub retire_errors: u64,
}
