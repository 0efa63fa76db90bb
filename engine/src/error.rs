//! The crate's one error type. Every variant names what failed and where (file,
//! offset, LSN), so an operator can act on the message alone.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use crate::format::FormatError;
use crate::types::{Durability, Epoch, Lsn};

/// Result alias for the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything the engine can fail with.
///
/// Errors are `Clone` because one failure (a failed fsync, say) is delivered to every
/// commit waiting on it.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system call failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done, e.g. "write segment".
        op: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: Arc<io::Error>,
    },
    /// The file system is full. Nothing was appended; the log is consistent and accepts
    /// appends again once space is freed.
    #[error(
        "no space left on device: {op} {path}; nothing was appended, retry once space is freed"
    )]
    NoSpace {
        /// What was being done.
        op: &'static str,
        /// The file concerned.
        path: PathBuf,
    },
    /// Stored bytes are invalid somewhere other than a torn tail.
    #[error("corrupt log: {path} at offset {offset}: {reason}")]
    Corruption {
        /// The file holding the bad bytes.
        path: PathBuf,
        /// Byte offset within that file.
        offset: u64,
        /// What is wrong there.
        reason: String,
    },
    /// The log was written in an on-disk format this build does not read.
    #[error(
        "{path}: log format version {found}, but this build reads version {supported} only; \
         there is no in-place upgrade: rebuild this node's log from a leader, or read it with the walship release that wrote it"
    )]
    UnsupportedFormat {
        /// The file that says so (the log's meta file).
        path: PathBuf,
        /// The version found.
        found: u32,
        /// The version this build reads.
        supported: u32,
    },
    /// The log's files disagree with what it believes it has (found by
    /// [`Log::check_files`](crate::Log::check_files)).
    #[error("log files disagree with the log: {path}: {reason}")]
    FileMismatch {
        /// The file concerned.
        path: PathBuf,
        /// What disagrees.
        reason: String,
    },
    /// Encoded batches handed to [`Log::append_encoded`](crate::Log::append_encoded) are
    /// malformed, misplaced or out of order. Nothing was appended.
    #[error("rejected encoded batch at {lsn}: {source}")]
    BadBatch {
        /// Where the batch claimed or was expected to start.
        lsn: Lsn,
        /// What is wrong with it.
        #[source]
        source: FormatError,
    },
    /// A record is larger than [`Options::max_record_bytes`](crate::Options).
    #[error("record of {len} bytes exceeds the maximum record size of {max} bytes")]
    RecordTooLarge {
        /// The record's length.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The non-blocking append found the in-memory queue full.
    #[error("append would block: {pending} bytes are waiting for the log writer (limit {limit})")]
    WouldBlock {
        /// Bytes appended but not yet written.
        pending: u64,
        /// The configured limit.
        limit: u64,
    },
    /// Local appends are refused: this node stepped down from leading, or a switchover is
    /// under way ([`Log::seal`](crate::Log::seal)). Verbatim appends from a leader still work.
    #[error("the log refuses local appends: {reason}")]
    Sealed {
        /// Why.
        reason: String,
    },
    /// The log was closed.
    #[error("log {path} is closed")]
    Closed {
        /// The log directory.
        path: PathBuf,
    },
    /// A write or flush failed; the state of the page cache is unknown, so the log
    /// refuses further work until it is reopened (PostgreSQL's policy after a failed
    /// fsync).
    #[error("log {path} stopped after a failed {op}: {reason}; reopen the log to recover")]
    Poisoned {
        /// The log directory.
        path: PathBuf,
        /// The operation that failed.
        op: &'static str,
        /// The underlying error.
        reason: String,
    },
    /// The directory is already open by another `Log` (in this or another process).
    #[error("log directory {path} is locked by another process or handle")]
    Locked {
        /// The log directory.
        path: PathBuf,
    },
    /// An LSN lies before the start of the retained log.
    #[error("{lsn} is no longer retained: the log starts at {start}")]
    NotRetained {
        /// The requested position.
        lsn: Lsn,
        /// The first retained position.
        start: Lsn,
    },
    /// An LSN lies beyond the end of the log.
    #[error("{lsn} is beyond the end of the log at {end}")]
    BeyondEnd {
        /// The requested position.
        lsn: Lsn,
        /// The end of the log.
        end: Lsn,
    },
    /// An LSN is not a batch or record boundary.
    #[error("{lsn} is not a {expected} boundary (nearest boundary before it: {before})")]
    NotBoundary {
        /// The requested position.
        lsn: Lsn,
        /// "batch" or "record".
        expected: &'static str,
        /// The closest boundary at or before it.
        before: Lsn,
    },
    /// The record at `lsn` was removed by [`Log::truncate_suffix`](crate::Log::truncate_suffix)
    /// while a commit or reader was waiting on it.
    #[error("{lsn} was truncated away (log truncated to {truncated_to})")]
    Truncated {
        /// The position waited on or read.
        lsn: Lsn,
        /// The new end of the log.
        truncated_to: Lsn,
    },
    /// Neither local nor remote durability was reached in time.
    #[error("timed out waiting for {level} durability of {lsn}")]
    Timeout {
        /// The commit token.
        lsn: Lsn,
        /// The level waited for.
        level: Durability,
    },
    /// The record is durable locally, but the replicas did not confirm the requested level
    /// in time. The outcome is ambiguous, as with PostgreSQL: the record may or may not
    /// survive a failover.
    #[error("{lsn} is durable locally but {level} was not confirmed by the sync quorum in time")]
    RemoteUnconfirmed {
        /// The commit token.
        lsn: Lsn,
        /// The level waited for.
        level: Durability,
    },
    /// Remote durability can no longer be confirmed by this node (it was fenced or
    /// stepped down). The record is durable locally; its fate is decided by the new leader.
    #[error("{lsn} is durable locally but this node can no longer confirm {level}: {reason}")]
    RemoteFenced {
        /// The commit token.
        lsn: Lsn,
        /// The level waited for.
        level: Durability,
        /// Why.
        reason: String,
    },
    /// An epoch was not greater than the current one.
    #[error("epoch {new} does not follow current epoch {current}")]
    EpochRegression {
        /// The current epoch.
        current: Epoch,
        /// The rejected epoch.
        new: Epoch,
    },
    /// Local and verbatim appends were mixed without the open batch being written.
    #[error("cannot {op}: {reason}")]
    InvalidState {
        /// The refused operation.
        op: &'static str,
        /// Why.
        reason: String,
    },
    /// The directory cannot hold a log safely (others may write into it, or it is not a
    /// directory).
    #[error("log directory {path} {reason}")]
    UnsafeDirectory {
        /// The directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The directory holds files that are not a walship log: it is not taken over.
    #[error(
        "{path} is not a walship log and not empty (it holds {holds}): refusing to take it \
         over; give the log a directory of its own"
    )]
    NotALog {
        /// The directory.
        path: PathBuf,
        /// Some of what it holds.
        holds: String,
    },
    /// The log belongs to another cluster or node than it is opened as.
    #[error("{path}: this log is {recorded}, but it is opened as {expected}; refusing to use it")]
    IdentityMismatch {
        /// The identity file.
        path: PathBuf,
        /// What the log records.
        recorded: String,
        /// What it was opened as.
        expected: String,
    },
    /// Options are invalid.
    #[error("invalid option {name}: {reason}")]
    InvalidOptions {
        /// The option's name.
        name: &'static str,
        /// What is wrong.
        reason: String,
    },
}

impl Error {
    /// The error for a meta file that failed to decode: an unsupported format version is
    /// its own error, anything else is corruption.
    pub(crate) fn meta(path: &std::path::Path, e: crate::format::FormatError) -> Error {
        match e {
            crate::format::FormatError::UnsupportedVersion { found } => Error::UnsupportedFormat {
                path: path.to_path_buf(),
                found,
                supported: crate::format::FORMAT_VERSION,
            },
            e => Error::corruption(path, 0, e.to_string()),
        }
    }

    /// Wraps an I/O error with what and where, mapping `ENOSPC` to [`Error::NoSpace`].
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Error {
        let path = path.into();
        if source.raw_os_error() == Some(libc::ENOSPC) {
            Error::NoSpace { op, path }
        } else {
            Error::Io {
                op,
                path,
                source: Arc::new(source),
            }
        }
    }

    pub(crate) fn corruption(
        path: impl Into<PathBuf>,
        offset: u64,
        reason: impl Into<String>,
    ) -> Error {
        Error::Corruption {
            path: path.into(),
            offset,
            reason: reason.into(),
        }
    }
}
