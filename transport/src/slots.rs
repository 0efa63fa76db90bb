//! Retention slots: what each follower still needs from the leader's log.
//!
//! A slot is created when a follower is first accepted and follows its flushed position
//! (PostgreSQL's physical slot `restart_lsn`). The leader keeps every segment at or after
//! the lowest live slot, so a follower that was away comes back to find its log still
//! there. A dead follower cannot fill the disk: once a slot is more than
//! `max_retained_bytes` behind the end of the log it is marked lost, stops holding
//! segments, and its follower is refused with `SlotLost` on every later connect, never
//! streamed a gap. Dropping the slot (an operator decision) lets it start afresh, and so
//! does a snapshot sent to it ([`Slots::hold`]): the snapshot stands in for everything
//! the slot failed to keep.
//!
//! Slots survive restarts in `replication.slots` in the log directory, written to a new
//! file, fsynced and renamed over the old one. The file is saved when a slot is created,
//! lost or dropped, and when a slot's position enters a new segment: retention works in
//! segments, so a saved position a little behind the real one only keeps what would be
//! kept anyway.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use walship_engine::storage::Storage;
use walship_engine::Lsn;

/// File name of the slot store inside the log directory.
pub const SLOTS_FILE: &str = "replication.slots";
const HEADER: &str = "walship-slots 1";

/// Why the slot store could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    /// A file system operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file could not be replaced.
    #[error("saving the slots: {0}")]
    Save(walship_engine::Error),
    /// The file does not parse or its checksum does not match.
    #[error("slot file {path} line {line}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

/// One follower's slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    /// The oldest position the follower may still need (its flushed LSN).
    pub restart: Lsn,
    /// If lost: the end of the leader's log when it was.
    pub lost_at: Option<Lsn>,
}

impl Slot {
    /// Why a lost slot was lost, for the follower's `Reject`.
    pub fn lost_reason(&self, max_retained_bytes: u64) -> Option<String> {
        self.lost_at.map(|end| {
            format!(
                "it needed the log from {} but the leader's end was {end}, more than \
                 max_retained_bytes = {max_retained_bytes} behind; a follower that installs \
                 snapshots bootstraps from the leader's, any other needs its slot dropped \
                 and a rebuild",
                self.restart
            )
        })
    }
}

/// The leader's slots; see the [module docs](self).
#[derive(Debug)]
pub struct Slots {
    /// The log's storage, where the slot file lives beside it.
    fs: Arc<dyn Storage>,
    path: PathBuf,
    slots: BTreeMap<String, Slot>,
    segment_capacity: u64,
    dirty: bool,
    /// Saves taken so far, to order their writes.
    generation: u64,
}

impl Slots {
    /// Loads the slots kept in `dir`, or none if there is no slot file yet.
    ///
    /// # Errors
    /// [`SlotError`] if the file cannot be read or is damaged.
    pub fn load(
        fs: &Arc<dyn Storage>,
        dir: &Path,
        segment_capacity: u64,
    ) -> Result<Slots, SlotError> {
        let path = dir.join(SLOTS_FILE);
        let mut s = Slots {
            fs: Arc::clone(fs),
            path,
            slots: BTreeMap::new(),
            segment_capacity: segment_capacity.max(1),
            dirty: false,
            generation: 0,
        };
        let text = match crate::durable::load(&*s.fs, &s.path) {
            Ok(Some(t)) => t,
            Ok(None) => return Ok(s),
            Err(crate::durable::LoadError::Io(source)) => {
                return Err(SlotError::Io {
                    op: "read",
                    path: s.path,
                    source,
                })
            }
            Err(crate::durable::LoadError::Corrupt(line, reason)) => {
                return Err(SlotError::Corrupt {
                    path: s.path,
                    line,
                    reason,
                })
            }
        };
        s.slots = parse(&s.path, &text)?;
        Ok(s)
    }

    /// The slot of `node`.
    pub fn get(&self, node: &str) -> Option<&Slot> {
        self.slots.get(node)
    }

    /// Every slot.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Slot)> {
        self.slots.iter().map(|(n, s)| (n.as_str(), s))
    }

    /// Creates `node`'s slot at `start` if it has none (a lost slot stays lost).
    pub fn accept(&mut self, node: &str, start: Lsn) {
        if !self.slots.contains_key(node) {
            self.slots.insert(
                node.to_string(),
                Slot {
                    restart: start,
                    lost_at: None,
                },
            );
            self.dirty = true;
        }
    }

    /// Holds the log from `at` for `node`, which is being sent a snapshot and will
    /// stream from there: creates its slot at `at`, moves a live one back to it, or makes
    /// a lost one live again at `at`. A slot is lost because the log it held is gone; the
    /// snapshot replaces everything before `at`, so nothing the follower will stream is
    /// missing any more.
    pub fn hold(&mut self, node: &str, at: Lsn) {
        match self.slots.get_mut(node) {
            None => self.accept(node, at),
            Some(s) if s.lost_at.is_some() => {
                *s = Slot {
                    restart: at,
                    lost_at: None,
                };
                self.dirty = true;
            }
            Some(s) if s.restart > at => {
                s.restart = at;
                self.dirty = true;
            }
            Some(_) => {}
        }
    }

    /// `node` has flushed up to `flushed`.
    pub fn advance(&mut self, node: &str, flushed: Lsn) {
        let cap = self.segment_capacity;
        if let Some(s) = self.slots.get_mut(node) {
            if s.lost_at.is_none() && flushed > s.restart {
                if flushed.get() / cap != s.restart.get() / cap {
                    self.dirty = true;
                }
                s.restart = flushed;
            }
        }
    }

    /// Marks every live slot more than `max_bytes` behind `end` as lost; returns the
    /// nodes that just lost theirs.
    pub fn enforce_cap(&mut self, end: Lsn, max_bytes: u64) -> Vec<String> {
        let mut lost = Vec::new();
        for (node, s) in &mut self.slots {
            if s.lost_at.is_none() && end.bytes_after(s.restart) > max_bytes {
                s.lost_at = Some(end);
                lost.push(node.clone());
            }
        }
        if !lost.is_empty() {
            self.dirty = true;
        }
        lost
    }

    /// Removes `node`'s slot; returns whether it had one.
    pub fn drop_slot(&mut self, node: &str) -> bool {
        let had = self.slots.remove(node).is_some();
        self.dirty |= had;
        had
    }

    /// The lowest position a live slot needs: the log's retention floor.
    pub fn floor(&self) -> Option<Lsn> {
        self.slots
            .values()
            .filter(|s| s.lost_at.is_none())
            .map(|s| s.restart)
            .min()
    }

    /// Lost slots and why, for refusing their followers.
    pub fn lost(&self, max_retained_bytes: u64) -> BTreeMap<String, String> {
        self.slots
            .iter()
            .filter_map(|(n, s)| s.lost_reason(max_retained_bytes).map(|r| (n.clone(), r)))
            .collect()
    }

    /// Whether a change must be saved.
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Writes the slots durably if anything changed that must survive a restart.
    ///
    /// # Errors
    /// [`SlotError::Save`]; the slots stay dirty and the next save retries.
    pub fn save(&mut self) -> Result<(), SlotError> {
        match self.take_save() {
            Some(job) => job
                .write(&SlotWriter::default())
                .inspect_err(|_| self.dirty = true),
            None => Ok(()),
        }
    }

    /// What must be written for the file to hold the slots as they are now, if anything
    /// changed that must survive a restart: taken under the caller's lock, written
    /// ([`SaveJob::write`]) without it and off the async runtime's workers (a write,
    /// two fsyncs and a rename can take milliseconds on a slow disk, and every
    /// follower's acks wait for that lock). If writing fails, call
    /// [`mark_dirty`](Self::mark_dirty) so the next save retries.
    pub fn take_save(&mut self) -> Option<SaveJob> {
        if !self.dirty {
            return None;
        }
        self.dirty = false;
        self.generation += 1;
        Some(SaveJob {
            fs: Arc::clone(&self.fs),
            dir: self.path.parent().unwrap_or(Path::new(".")).to_path_buf(),
            text: render(&self.slots),
            generation: self.generation,
        })
    }

    /// The slots changed in a way that must be saved (a save failed).
    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }
}

/// The slots' file contents as they were when taken ([`Slots::take_save`]).
#[derive(Debug)]
pub struct SaveJob {
    fs: Arc<dyn Storage>,
    dir: PathBuf,
    text: String,
    generation: u64,
}

/// Writes [`SaveJob`]s of one slot file in order: a job older than the last one written
/// is dropped, so two saves racing cannot leave the older contents in place.
#[derive(Debug, Default)]
pub struct SlotWriter {
    written: std::sync::Mutex<u64>,
}

impl SaveJob {
    /// Writes the file atomically and durably (blocking: call it off the async workers).
    ///
    /// # Errors
    /// [`SlotError::Save`].
    pub fn write(self, writer: &SlotWriter) -> Result<(), SlotError> {
        let mut last = writer
            .written
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.generation <= *last {
            return Ok(());
        }
        crate::durable::store(&*self.fs, &self.dir, SLOTS_FILE, &self.text)
            .map_err(SlotError::Save)?;
        *last = self.generation;
        Ok(())
    }
}

fn hex(s: &str) -> String {
    s.bytes().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

fn unhex(s: &str) -> Option<String> {
    if s.len() % 2 != 0 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect();
    String::from_utf8(bytes?).ok()
}

fn render(slots: &BTreeMap<String, Slot>) -> String {
    let mut body = format!("{HEADER}\n");
    for (node, s) in slots {
        let lost = s.lost_at.map_or("-".to_string(), |l| l.get().to_string());
        let _ = writeln!(body, "slot {} {} {lost}", hex(node), s.restart.get());
    }
    body
}

fn parse(path: &Path, body: &str) -> Result<BTreeMap<String, Slot>, SlotError> {
    let corrupt = |line: usize, reason: String| SlotError::Corrupt {
        path: path.to_path_buf(),
        line,
        reason,
    };
    let mut out = BTreeMap::new();
    for (i, line) in body.lines().enumerate() {
        if i == 0 {
            if line != HEADER {
                return Err(corrupt(1, format!("expected {HEADER:?}")));
            }
            continue;
        }
        let f: Vec<&str> = line.split(' ').collect();
        let parsed =
            match f.as_slice() {
                ["slot", node, restart, lost] => unhex(node).zip(restart.parse().ok()).and_then(
                    |(node, restart): (String, u64)| {
                        let lost_at = match *lost {
                            "-" => None,
                            l => Some(Lsn::new(l.parse().ok()?)),
                        };
                        Some((
                            node,
                            Slot {
                                restart: Lsn::new(restart),
                                lost_at,
                            },
                        ))
                    },
                ),
                _ => None,
            };
        let (node, slot) = parsed.ok_or_else(|| {
            corrupt(
                i + 1,
                format!("expected `slot <hex node> <lsn> <lost>`, found {line:?}"),
            )
        })?;
        out.insert(node, slot);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    const CAP: u64 = 1 << 20;

    #[test]
    fn slots_hold_the_floor_until_lost_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Slots::load(&walship_engine::storage::os(), dir.path(), CAP).unwrap();
        assert_eq!(s.floor(), None);
        s.accept("a b", Lsn::new(100));
        s.accept("c", Lsn::new(5000));
        assert_eq!(s.floor(), Some(Lsn::new(100)));
        s.save().unwrap();
        assert!(!s.is_dirty());
        // Within a segment: no save needed; into the next segment: saved.
        s.advance("a b", Lsn::new(200));
        assert!(!s.is_dirty());
        s.advance("a b", Lsn::new(CAP + 64));
        assert!(s.is_dirty());
        // "c" is far behind a log that moved on: lost, no longer holding anything.
        assert_eq!(
            s.enforce_cap(Lsn::new(3 * CAP), 2 * CAP),
            vec!["c".to_string()]
        );
        assert_eq!(s.floor(), Some(Lsn::new(CAP + 64)));
        assert!(s.lost(2 * CAP)["c"].contains("max_retained_bytes"));
        // A lost slot is not revived by acks or accepts.
        s.accept("c", Lsn::new(3 * CAP));
        s.advance("c", Lsn::new(3 * CAP));
        assert!(s.get("c").unwrap().lost_at.is_some());
        s.save().unwrap();

        let again = Slots::load(&walship_engine::storage::os(), dir.path(), CAP).unwrap();
        assert_eq!(again.slots, s.slots);
        assert!(s.drop_slot("c"));
        assert!(!s.drop_slot("c"));
    }

    #[test]
    fn a_snapshot_makes_a_lost_slot_live_again_where_it_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Slots::load(&walship_engine::storage::os(), dir.path(), CAP).unwrap();
        s.accept("c", Lsn::new(100));
        s.enforce_cap(Lsn::new(3 * CAP), 2 * CAP);
        assert!(s.get("c").unwrap().lost_at.is_some());
        s.save().unwrap();
        // The snapshot's segment starts at 2 * CAP: held from there, no longer lost.
        s.hold("c", Lsn::new(2 * CAP));
        assert!(s.is_dirty(), "the revived slot is saved");
        assert_eq!(
            s.get("c"),
            Some(&Slot {
                restart: Lsn::new(2 * CAP),
                lost_at: None
            })
        );
        assert!(s.lost(2 * CAP).is_empty());
        assert_eq!(s.floor(), Some(Lsn::new(2 * CAP)));
        // A live slot is only ever moved back by a hold, never forward.
        s.hold("c", Lsn::new(3 * CAP));
        assert_eq!(s.get("c").unwrap().restart, Lsn::new(2 * CAP));
        s.save().unwrap();
        let again = Slots::load(&walship_engine::storage::os(), dir.path(), CAP).unwrap();
        assert_eq!(again.slots, s.slots);
    }

    #[test]
    fn a_damaged_slot_file_is_refused_with_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Slots::load(&walship_engine::storage::os(), dir.path(), CAP).unwrap();
        s.accept("n1", Lsn::new(64));
        s.save().unwrap();
        let path = dir.path().join(SLOTS_FILE);
        let text = fs::read_to_string(&path).unwrap();
        fs::write(&path, text.replace(" 64 ", " 65 ")).unwrap();
        let err = Slots::load(&walship_engine::storage::os(), dir.path(), CAP)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("checksum") && err.contains(SLOTS_FILE),
            "{err}"
        );
        fs::write(&path, "garbage").unwrap();
        assert!(Slots::load(&walship_engine::storage::os(), dir.path(), CAP).is_err());
        fs::write(&path, "").unwrap();
        assert!(Slots::load(&walship_engine::storage::os(), dir.path(), CAP).is_err());
    }
}
