//! Bootstrapping a follower from its leader's snapshot: what the embedder provides on
//! each side, and the byte stream between them (`pg_basebackup`, done by the follower
//! itself when its leader says `NotRetained`; Raft's `InstallSnapshot`).
//!
//! On the leader, a [`SnapshotSource`] opens the embedder's newest snapshot. The leader
//! sends a [`SnapshotHeader`](crate::wire::SnapshotHeader), the bytes, then their CRC32C,
//! holding its log from the header's `base` for the follower (its retention slot).
//!
//! On the follower, the embedder's [`Apply::install_snapshot`](crate::Apply) reads the
//! bytes through a [`SnapshotReader`], which fails rather than end early or end on bytes
//! whose checksum differs: an embedder that reads to the end before it puts the new
//! state in place never installs a damaged one. Before that, the follower restarts its
//! log empty at `base` ([`walship_engine::Log::restart_at`]); afterwards it streams from
//! there and applies only records after the snapshot's LSN.
//!
//! Guarantees: a snapshot longer than the follower's `max_snapshot_bytes` is refused
//! before a byte of it is read; a follower is never left with an embedder state that its
//! log does not continue (after any crash the embedder's position lies outside the log,
//! and the follower bootstraps again before streaming).

use std::io::Read;

use bytes::Bytes;
use walship_engine::Lsn;

/// The embedder's newest snapshot, opened for a follower.
pub struct SnapshotFile {
    /// The snapshot holds the effect of every record up to this LSN (a record boundary
    /// of the leader's log, at most what the leader flushed).
    pub lsn: Lsn,
    /// Its length in bytes: exactly what `reader` yields.
    pub len: u64,
    /// Its bytes.
    pub reader: Box<dyn Read + Send>,
}

impl std::fmt::Debug for SnapshotFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotFile")
            .field("lsn", &self.lsn)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

/// Where a leader finds the snapshot it serves to followers it no longer retains the
/// log for (`LeaderOptions::snapshots`).
///
/// ```
/// use std::io::Cursor;
/// use walship_engine::Lsn;
/// use walship_transport::snapshot::{SnapshotFile, SnapshotSource};
/// #[derive(Debug)]
/// struct Fixed(Vec<u8>, Lsn);
/// impl SnapshotSource for Fixed {
///     fn newest(&self) -> Result<Option<SnapshotFile>, String> {
///         Ok(Some(SnapshotFile { lsn: self.1, len: self.0.len() as u64, reader: Box::new(Cursor::new(self.0.clone())) }))
///     }
/// }
/// let s = Fixed(b"state".to_vec(), Lsn::new(100));
/// assert_eq!(s.newest().unwrap().unwrap().len, 5);
/// ```
pub trait SnapshotSource: Send + Sync + std::fmt::Debug + 'static {
    /// Opens the newest complete snapshot, or `None` if there is none yet. Called on a
    /// blocking thread. The embedder must checkpoint its log no further than the
    /// snapshot's LSN (so the segment holding it is still retained).
    ///
    /// # Errors
    /// Why it cannot be opened (the follower is refused with it and retries).
    fn newest(&self) -> Result<Option<SnapshotFile>, String>;
}

/// The segment a follower's log restarts at for a snapshot covering `lsn`: the one that
/// holds the last byte of the record ending there.
pub fn restart_base(lsn: Lsn, segment_capacity: u64) -> Lsn {
    let last = lsn.get().saturating_sub(1);
    Lsn::new(last - last % segment_capacity.max(1))
}

/// What the receiving side hands the reader: bytes, the verified end, or why not.
#[derive(Debug)]
pub(crate) enum Piece {
    Data(Bytes),
    End,
    Failed(String),
}

/// The snapshot's bytes as they arrive, for [`Apply::install_snapshot`](crate::Apply):
/// `read` returns `Ok(0)` only once all of them arrived and their CRC32C matched, and
/// an error if the transfer failed or they did not.
pub struct SnapshotReader {
    rx: tokio::sync::mpsc::Receiver<Piece>,
    current: Bytes,
    ended: bool,
}

impl std::fmt::Debug for SnapshotReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotReader")
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl SnapshotReader {
    pub(crate) fn new(rx: tokio::sync::mpsc::Receiver<Piece>) -> SnapshotReader {
        SnapshotReader {
            rx,
            current: Bytes::new(),
            ended: false,
        }
    }
}

impl Read for SnapshotReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if !self.current.is_empty() {
                let n = buf.len().min(self.current.len());
                buf[..n].copy_from_slice(&self.current.split_to(n));
                return Ok(n);
            }
            if self.ended {
                return Ok(0);
            }
            match self.rx.blocking_recv() {
                Some(Piece::Data(b)) => self.current = b,
                Some(Piece::End) => self.ended = true,
                Some(Piece::Failed(why)) => return Err(std::io::Error::other(why)),
                None => {
                    return Err(std::io::Error::other(
                        "the snapshot transfer stopped before its end",
                    ))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_restart_base_holds_the_last_byte_of_the_covered_record() {
        let cap = 1 << 20;
        assert_eq!(restart_base(Lsn::new(0), cap), Lsn::ZERO);
        assert_eq!(restart_base(Lsn::new(5000), cap), Lsn::ZERO);
        assert_eq!(restart_base(Lsn::new(cap), cap), Lsn::ZERO);
        assert_eq!(restart_base(Lsn::new(cap + 1), cap), Lsn::new(cap));
    }

    #[test]
    fn the_reader_ends_only_on_a_verified_end() {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.try_send(Piece::Data(Bytes::from_static(b"abc")))
            .unwrap();
        tx.try_send(Piece::End).unwrap();
        let mut out = Vec::new();
        SnapshotReader::new(rx).read_to_end(&mut out).unwrap();
        assert_eq!(out, b"abc");

        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.try_send(Piece::Data(Bytes::from_static(b"abc")))
            .unwrap();
        tx.try_send(Piece::Failed("checksum".into())).unwrap();
        let e = SnapshotReader::new(rx)
            .read_to_end(&mut Vec::new())
            .unwrap_err();
        assert!(e.to_string().contains("checksum"));

        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.try_send(Piece::Data(Bytes::from_static(b"abc")))
            .unwrap();
        drop(tx);
        assert!(SnapshotReader::new(rx)
            .read_to_end(&mut Vec::new())
            .is_err());
    }
}
