//! The epoch history: `(epoch, start LSN)` pairs, one per leadership, as Kafka's leader
//! epoch cache and PostgreSQL's timeline history. It answers the question divergence
//! repair asks: where does epoch E end in this log?
//!
//! Stored in the file `epochs` of the log directory and replaced atomically (write temp,
//! fsync, rename, fsync directory), so a crash leaves the old or the new history.
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 8 | magic `WALSHEPO` |
//! | 8 | 4 | format version (1) |
//! | 12 | 4 | entry count n |
//! | 16 | 16·n | entries: epoch (8), start LSN (8), little-endian |
//! | 16+16n | 4 | CRC32C of everything before |

use std::path::Path;

use crate::error::{Error, Result};
use crate::fsutil::atomic_write_in;
use crate::storage::Storage;
use crate::types::{Epoch, Lsn};

pub(crate) const EPOCH_FILE: &str = "epochs";
/// The largest epoch history file read: a million epochs, far more than any log has.
pub(crate) const MAX_FILE_BYTES: u64 = 16 << 20;
const MAGIC: &[u8; 8] = b"WALSHEPO";
const MAX_ENTRIES: usize = 1 << 20;

/// Where each epoch of a log starts.
///
/// ```
/// use walship_engine::{EpochHistory, Epoch, Lsn};
/// let mut h = EpochHistory::default();
/// h.push(Epoch::new(1), Lsn::new(64)).unwrap();
/// h.push(Epoch::new(3), Lsn::new(5000)).unwrap();
/// // Epoch 1 (and the epoch 2 this log never saw) ended where epoch 3 began.
/// assert_eq!(h.end_of(Epoch::new(2), Lsn::new(9000)), Some((Epoch::new(1), Lsn::new(5000))));
/// assert_eq!(h.end_of(Epoch::new(3), Lsn::new(9000)), Some((Epoch::new(3), Lsn::new(9000))));
/// assert_eq!(h.end_of(Epoch::new(0), Lsn::new(9000)), None);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EpochHistory {
    entries: Vec<(Epoch, Lsn)>,
}

impl EpochHistory {
    /// All entries, oldest first; epochs strictly increase and starts never decrease.
    pub fn entries(&self) -> &[(Epoch, Lsn)] {
        &self.entries
    }

    /// The latest epoch and where it started.
    pub fn current(&self) -> Option<(Epoch, Lsn)> {
        self.entries.last().copied()
    }

    /// Records that `epoch` starts at `start`.
    ///
    /// # Errors
    /// [`Error::EpochRegression`] if `epoch` is not greater than the latest, or
    /// [`Error::InvalidState`] if `start` precedes the latest start.
    pub fn push(&mut self, epoch: Epoch, start: Lsn) -> Result<()> {
        if let Some((e, s)) = self.current() {
            if epoch <= e {
                return Err(Error::EpochRegression {
                    current: e,
                    new: epoch,
                });
            }
            if start < s {
                return Err(Error::InvalidState {
                    op: "record epoch start",
                    reason: format!(
                        "epoch {epoch} would start at {start}, before epoch {e} at {s}"
                    ),
                });
            }
        }
        self.entries.push((epoch, start));
        Ok(())
    }

    /// The epoch of the record that ends at `lsn` (a commit token): the one that began
    /// last before it. `None` before the first epoch.
    ///
    /// ```
    /// # use walship_engine::{Epoch, EpochHistory, Lsn};
    /// let mut h = EpochHistory::default();
    /// h.push(Epoch::new(1), Lsn::new(64))?;
    /// h.push(Epoch::new(3), Lsn::new(5000))?;
    /// assert_eq!(h.epoch_at(Lsn::new(5000)), Some(Epoch::new(1)));
    /// assert_eq!(h.epoch_at(Lsn::new(5001)), Some(Epoch::new(3)));
    /// assert_eq!(h.epoch_at(Lsn::new(64)), None);
    /// # Ok::<(), walship_engine::Error>(())
    /// ```
    pub fn epoch_at(&self, lsn: Lsn) -> Option<Epoch> {
        self.entries
            .iter()
            .rev()
            .find(|&&(_, s)| s < lsn)
            .map(|&(e, _)| e)
    }

    /// Where `epoch` begins, if it is in the history.
    pub fn start_of(&self, epoch: Epoch) -> Option<Lsn> {
        self.entries
            .iter()
            .find(|(e, _)| *e == epoch)
            .map(|&(_, s)| s)
    }

    /// Where `epoch` ends in a log that ends at `log_end`: the largest epoch in the
    /// history not above `epoch`, and the start of the next one (or `log_end`).
    /// `None` if `epoch` precedes every entry. This is the answer a leader gives a
    /// follower's `last_epoch` (Kafka's OffsetsForLeaderEpoch).
    pub fn end_of(&self, epoch: Epoch, log_end: Lsn) -> Option<(Epoch, Lsn)> {
        let idx = self.entries.iter().rposition(|(e, _)| *e <= epoch)?;
        let end = self
            .entries
            .get(idx + 1)
            .map(|(_, s)| *s)
            .unwrap_or(log_end);
        Some((self.entries[idx].0, end))
    }

    /// Drops entries starting at or after `at` (a truncation to `at`: an epoch begun
    /// there holds nothing any more, and a follower learns its leader's epochs again from
    /// the batches). Returns whether any was.
    pub(crate) fn truncate_from(&mut self, at: Lsn) -> bool {
        let before = self.entries.len();
        self.entries.retain(|(_, s)| *s < at);
        self.entries.len() != before
    }

    /// Drops entries starting after `end` (recovery: an epoch begun at the end stays).
    /// Returns whether any was.
    pub(crate) fn truncate_after(&mut self, end: Lsn) -> bool {
        let before = self.entries.len();
        self.entries.retain(|(_, s)| *s <= end);
        self.entries.len() != before
    }

    fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(20 + 16 * self.entries.len());
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        for (e, s) in &self.entries {
            b.extend_from_slice(&e.get().to_le_bytes());
            b.extend_from_slice(&s.get().to_le_bytes());
        }
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> std::result::Result<EpochHistory, String> {
        if b.len() < 20 || &b[0..8] != MAGIC {
            return Err("not an epoch history file (bad magic or too short)".into());
        }
        let (body, crc) = b.split_at(b.len() - 4);
        let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
        if crc32c::crc32c(body) != stored {
            return Err("CRC mismatch".into());
        }
        let u32_at =
            |i: usize| u32::from_le_bytes([body[i], body[i + 1], body[i + 2], body[i + 3]]);
        if u32_at(8) != 1 {
            return Err(format!("unsupported version {}", u32_at(8)));
        }
        let n = u32_at(12) as usize;
        if n > MAX_ENTRIES || body.len() != 16 + 16 * n {
            return Err(format!(
                "{n} entries do not match a file of {} bytes",
                b.len()
            ));
        }
        let mut h = EpochHistory::default();
        for c in body[16..].chunks_exact(16) {
            let mut e = [0u8; 8];
            let mut s = [0u8; 8];
            e.copy_from_slice(&c[..8]);
            s.copy_from_slice(&c[8..]);
            h.push(
                Epoch::new(u64::from_le_bytes(e)),
                Lsn::new(u64::from_le_bytes(s)),
            )
            .map_err(|e| e.to_string())?;
        }
        Ok(h)
    }

    /// Reads the history of the log in `dir` (empty if the file does not exist).
    pub(crate) fn load(fs: &dyn Storage, dir: &Path) -> Result<EpochHistory> {
        let path = dir.join(EPOCH_FILE);
        match crate::layout::read_state_file(fs, &path, MAX_FILE_BYTES, "read epoch history")? {
            Some(b) => EpochHistory::decode(&b).map_err(|r| Error::corruption(&path, 0, r)),
            None => Ok(EpochHistory::default()),
        }
    }

    /// Atomically replaces the history of the log in `dir`.
    pub(crate) fn store(&self, fs: &dyn Storage, dir: &Path) -> Result<()> {
        atomic_write_in(fs, dir, EPOCH_FILE, &self.encode())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn store_load_truncate() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(
            EpochHistory::load(&crate::storage::OsStorage, d.path()).unwrap(),
            EpochHistory::default()
        );
        let mut h = EpochHistory::default();
        h.push(Epoch::new(1), Lsn::new(64)).unwrap();
        h.push(Epoch::new(2), Lsn::new(100)).unwrap();
        assert!(h.push(Epoch::new(2), Lsn::new(200)).is_err());
        assert!(h.push(Epoch::new(3), Lsn::new(99)).is_err());
        h.store(&crate::storage::OsStorage, d.path()).unwrap();
        assert_eq!(
            EpochHistory::load(&crate::storage::OsStorage, d.path()).unwrap(),
            h
        );
        assert!(h.truncate_after(Lsn::new(99)));
        assert_eq!(h.entries(), &[(Epoch::new(1), Lsn::new(64))]);
        std::fs::write(d.path().join(EPOCH_FILE), b"garbage").unwrap();
        assert!(matches!(
            EpochHistory::load(&crate::storage::OsStorage, d.path()),
            Err(Error::Corruption { .. })
        ));
    }

    proptest! {
        #[test]
        fn decode_never_panics(b in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = EpochHistory::decode(&b);
        }

        #[test]
        fn encode_decode_round_trip(steps in prop::collection::vec((1u64..5, 0u64..1000), 0..20)) {
            let mut h = EpochHistory::default();
            let (mut e, mut s) = (0u64, 0u64);
            for (de, ds) in steps {
                e += de;
                s += ds;
                h.push(Epoch::new(e), Lsn::new(s)).unwrap();
            }
            prop_assert_eq!(EpochHistory::decode(&h.encode()).unwrap(), h);
        }
    }
}
