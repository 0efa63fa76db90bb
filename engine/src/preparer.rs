//! The segment preparer thread: makes the next segment ready before the log needs it,
//! and retires segments the embedder's checkpoint no longer needs.
//!
//! Guarantees:
//! - **Only the segment after the log's last one is ever prepared**, and never one whose
//!   base the segment map already holds; the file is moved into place without replacing
//!   any existing name (`segment::create`/`recycle`). So a prepared segment can never
//!   be, or replace, a live one.
//! - **A prepared segment is handed out only for its own base** ([`Preparer::take`]);
//!   one the log no longer continues at is deleted, which is safe because of the first
//!   guarantee. A truncation pauses the preparer ([`Preparer::pause`]): it deletes the
//!   spare first and nothing is prepared or retired until it is done, so a crash in the
//!   middle never leaves a spare beyond a removed segment (a gap `open` would refuse). If preparation failed (e.g. `ENOSPC`) the appender
//!   gets the error and nothing is appended; the next crossing asks again.
//! - **Retirement keeps the segment map and the directory in agreement**: a segment
//!   whose file cannot be renamed into the recycle pool or unlinked goes back into the
//!   map (no file operation runs under the map's lock); a failure stops retirement there,
//!   is recorded
//!   ([`Log::last_retire_error`](crate::Log::last_retire_error), `Stats::retire_errors`)
//!   and is retried at the next checkpoint. A file that has already vanished is recorded
//!   too, and its entry dropped, since nothing is left to keep.
//!
//! Preparing prefers a retired file (recycling: rename, rewrite the header, fsync) over a
//! new zero-filled one, because writing into already-written blocks is the fastest write
//! this file system offers. A retired segment that no reader or `Bytes` still maps goes
//! to the recycle pool (renamed to a `.tmp` name, so a crash simply deletes it); one
//! still mapped is unlinked, and the mapping keeps its bytes alive.

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::segment::{self, Segment, TMP_SUFFIX};
use crate::shared::Shared;
use crate::stats::Counters;
use crate::sync::{lock, read, write};
use crate::types::Lsn;

pub(crate) struct State {
    /// The segment wanted next: the one after the log's last segment.
    want: Option<Lsn>,
    ready: Option<Result<Segment>>,
    pool: VecDeque<PathBuf>,
    retention: bool,
    /// The preparer thread is changing files outside the lock (preparing or retiring).
    busy: bool,
    /// A truncation is changing the segments: the preparer starts nothing.
    paused: bool,
    shutdown: bool,
}

impl State {
    /// The prepared segment waiting to be taken, if any: its base and file identity.
    pub(crate) fn spare(&self) -> Option<(Lsn, &Path, (u64, u64))> {
        match &self.ready {
            Some(Ok(s)) => Some((s.base, s.path.as_path(), s.id)),
            _ => None,
        }
    }

    /// Retired files kept for recycling.
    pub(crate) fn pool(&self) -> impl Iterator<Item = &Path> {
        self.pool.iter().map(PathBuf::as_path)
    }
}

pub(crate) struct Preparer {
    state: Mutex<State>,
    cv: Condvar,
}

impl Preparer {
    pub(crate) fn new(ready: Option<Segment>, next: Lsn) -> Preparer {
        let want = if ready.is_some() { None } else { Some(next) };
        Preparer {
            state: Mutex::new(State {
                want,
                ready: ready.map(Ok),
                pool: VecDeque::new(),
                retention: false,
                busy: false,
                paused: false,
                shutdown: false,
            }),
            cv: Condvar::new(),
        }
    }

    pub(crate) fn notify(&self) {
        drop(lock(&self.state));
        self.cv.notify_all();
    }

    pub(crate) fn shutdown(&self) {
        lock(&self.state).shutdown = true;
        self.cv.notify_all();
    }

    pub(crate) fn request_retention(&self) {
        lock(&self.state).retention = true;
        self.cv.notify_all();
    }

    /// The preparer's state once it is not changing any file: held, it keeps the
    /// preparer from starting to (the caller also holds the append lock, so nothing
    /// else changes the directory either).
    pub(crate) fn quiesce(&self) -> MutexGuard<'_, State> {
        self.idle(lock(&self.state))
    }

    /// Waits, holding `st` in between, until the preparer thread changes no file.
    fn idle<'a>(&'a self, mut st: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        while st.busy && !st.shutdown {
            st = self
                .cv
                .wait_timeout(st, Duration::from_millis(100))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        st
    }

    /// Takes the prepared segment at `base`, waiting for it if necessary; asks for the
    /// one after it next. Called under the append lock with `base` just after the log's
    /// last segment.
    pub(crate) fn take(&self, shared: &Shared, base: Lsn) -> Result<Segment> {
        let cap = shared.geometry.capacity();
        let mut st = lock(&self.state);
        let mut counted = false;
        loop {
            if st.shutdown {
                return Err(Error::Closed {
                    path: shared.dir.clone(),
                });
            }
            match st.ready.take() {
                Some(Ok(seg)) if seg.base == base => {
                    st.want = Some(Lsn::new(base.get() + cap));
                    drop(st);
                    self.cv.notify_all();
                    return Ok(seg);
                }
                Some(Ok(other)) => discard(shared, other)?,
                Some(Err(e)) => {
                    st.want = None;
                    return Err(e);
                }
                None => {}
            }
            if st.want != Some(base) {
                st.want = Some(base);
                self.cv.notify_all();
            }
            if shared.opts.drive == crate::options::Drive::Manual {
                // No preparer thread: the appender makes the segment itself.
                let (next, did) = work(shared, st);
                st = next;
                if !did && st.ready.is_none() {
                    return Err(Error::InvalidState {
                        op: "provision a segment",
                        reason: "the preparer is paused (a truncation is under way)".into(),
                    });
                }
                continue;
            }
            let waited = Instant::now();
            st = self
                .cv
                .wait_timeout(st, Duration::from_millis(100))
                .unwrap_or_else(|p| p.into_inner())
                .0;
            let c = &shared.counters;
            if !counted {
                counted = true;
                crate::stats::Counters::add(&c.segment_waits, 1);
            }
            crate::stats::Counters::add(
                &c.segment_wait_micros,
                waited.elapsed().as_micros() as u64,
            );
        }
    }

    /// Stops the preparer for a truncation: waits until it is idle, deletes the prepared
    /// segment (the log will no longer continue where it was made for) and starts nothing
    /// until the returned guard is dropped, which asks for the segment after the log's
    /// last one. So no spare can appear beyond a segment the truncation removes: a crash
    /// in the middle of a truncation leaves a gapless directory. Called under the append
    /// lock.
    pub(crate) fn pause<'a>(&'a self, shared: &'a Shared) -> Result<Paused<'a>> {
        let mut st = lock(&self.state);
        st.paused = true;
        let paused = Paused { prep: self, shared };
        st = self.idle(st);
        st.want = None;
        let spare = st.ready.take();
        // Unlocked before the file goes: if that fails, the guard resumes the preparer
        // on the way out, and it takes the lock (holding it deadlocked there, found by a
        // power cut in `restart::tests`).
        drop(st);
        if let Some(Ok(seg)) = spare {
            discard(shared, seg)?;
        }
        Ok(paused)
    }
}

/// The preparer paused by [`Preparer::pause`]; dropping this resumes it.
pub(crate) struct Paused<'a> {
    prep: &'a Preparer,
    shared: &'a Shared,
}

impl Drop for Paused<'_> {
    fn drop(&mut self) {
        let next = read(&self.shared.segments)
            .last_key_value()
            .map(|(&last, _)| Lsn::new(last.saturating_add(self.shared.geometry.capacity())));
        let mut st = lock(&self.prep.state);
        st.paused = false;
        if st.ready.is_none() {
            st.want = next;
        }
        drop(st);
        self.prep.cv.notify_all();
    }
}

/// Deletes a prepared segment the log does not continue at. Never one the log holds:
/// nothing is prepared at a base in the segment map, and nothing is moved into place
/// over an existing name, so a file under this name is this segment's own.
fn discard(shared: &Shared, seg: Segment) -> Result<()> {
    if read(&shared.segments).contains_key(&seg.base.get()) {
        return Err(Error::InvalidState {
            op: "discard a prepared segment",
            reason: format!(
                "segment {} is part of the log; its file is left alone",
                seg.base
            ),
        });
    }
    let path = seg.path.clone();
    drop(seg);
    match shared.fs.remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove unneeded prepared segment", &path, e)),
    }
}

pub(crate) fn run(shared: &Arc<Shared>) {
    let prep = &shared.prep;
    let mut st = lock(&prep.state);
    loop {
        if st.shutdown {
            return;
        }
        let (next, did) = work(shared, st);
        st = next;
        if !did {
            st = prep.cv.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// For a log its caller drives: does whatever the preparer thread would (retire below
/// the checkpoint, prepare the segment wanted next) on the calling thread, until nothing
/// is left. Returns whether anything was done.
pub(crate) fn step(shared: &Shared) -> bool {
    let mut st = lock(&shared.prep.state);
    let mut did = false;
    loop {
        if st.shutdown {
            return did;
        }
        let (next, worked) = work(shared, st);
        st = next;
        if !worked {
            return did;
        }
        did = true;
    }
}

/// One unit of the preparer's work, if there is any: a retirement asked for, else the
/// segment wanted next. Takes the state's lock and gives it back (it is released while
/// files change); says whether it did anything.
fn work<'a>(shared: &'a Shared, mut st: MutexGuard<'a, State>) -> (MutexGuard<'a, State>, bool) {
    let prep = &shared.prep;
    if st.paused {
        return (st, false);
    }
    if st.retention {
        st.retention = false;
        st.busy = true;
        drop(st);
        let (recyclable, error) = retire(shared);
        st = lock(&prep.state);
        for p in recyclable {
            if st.pool.len() < shared.opts.recycle_pool {
                st.pool.push_back(p);
            } else if let Err(e) = shared.fs.remove_file(&p) {
                tracing::warn!(path = %p.display(), error = %e, "cannot remove retired segment");
            }
        }
        if let Some(e) = error {
            tracing::error!(error = %e, "segment retirement stopped; it resumes at the next checkpoint");
            Counters::add(&shared.counters.retire_errors, 1);
            *lock(&shared.retire_error) = Some(e);
        }
        st.busy = false;
        prep.cv.notify_all();
        return (st, true);
    }
    if let (Some(base), None) = (st.want, st.ready.as_ref()) {
        st.busy = true;
        let already = read(&shared.segments).contains_key(&base.get());
        let recycled = if already { None } else { st.pool.pop_front() };
        drop(st);
        let result = if already {
            Err(Error::InvalidState {
                op: "prepare a segment",
                reason: format!("segment {base} is already part of the log"),
            })
        } else {
            prepare(shared, base, recycled.as_deref())
        };
        if let Err(e) = &result {
            tracing::warn!(base = %base, error = %e, "cannot prepare the next segment");
        }
        st = lock(&prep.state);
        st.busy = false;
        if st.want == Some(base) {
            st.want = None;
            st.ready = Some(result);
        } else if let Ok(seg) = result {
            // The log moved on (truncation) while this was prepared.
            if let Err(e) = discard(shared, seg) {
                tracing::warn!(error = %e, "cannot remove an unneeded prepared segment");
            }
        }
        prep.cv.notify_all();
        return (st, true);
    }
    (st, false)
}

/// Makes the segment at `base`: from the retired file `recycled` if there is one,
/// zero-filled otherwise.
fn prepare(shared: &Shared, base: Lsn, recycled: Option<&Path>) -> Result<Segment> {
    let c = &shared.counters;
    let create = || {
        let r = segment::create(&shared.fs, &shared.dir, base, shared.geometry);
        if r.is_ok() {
            Counters::add(&c.segments_created, 1);
        }
        r
    };
    match recycled {
        Some(old) => match segment::recycle(&shared.fs, &shared.dir, old, base, shared.geometry) {
            Ok(seg) => {
                Counters::add(&c.segments_recycled, 1);
                Ok(seg)
            }
            Err(e) => {
                tracing::warn!(error = %e, "recycling failed; creating a new segment");
                create()
            }
        },
        None => create(),
    }
}

/// Removes segments wholly below the retirement floor from the front of the log, one at
/// a time: each is renamed into the recycle pool (returned) or unlinked, and if that
/// fails it goes back into the segment map, so map and directory agree whenever the
/// preparer is idle. Stops at the first failure, which is returned.
fn retire(shared: &Shared) -> (Vec<PathBuf>, Option<Error>) {
    let g = shared.geometry;
    let checkpoint = Lsn::new(shared.checkpoint.load(Ordering::Acquire));
    let held = Lsn::new(shared.retention_floor.load(Ordering::Acquire));
    // Never a segment with bytes the writer has yet to flush.
    let floor = checkpoint.min(held).min(shared.flushed.get());
    let writing = g.base_of(shared.written.get()).get();
    let mut recyclable = Vec::new();
    let mut error = None;
    let mut changed = false;
    loop {
        // Decided under the map's lock, where no reader can take a new reference to the
        // segment; the file operation runs outside it, so the writer (which looks
        // segments up for every write) never waits for the file system here. The start
        // moves first, so no reader is sent to the segment meanwhile.
        let (base, seg) = {
            let mut segs = write(&shared.segments);
            if segs.len() <= 1 {
                break;
            }
            let Some((&base, _)) = segs.first_key_value() else {
                break;
            };
            if base + g.capacity() > floor.get() || base >= writing {
                break;
            }
            let Some((_, seg)) = segs.pop_first() else {
                break;
            };
            if let Some((&next, _)) = segs.first_key_value() {
                shared
                    .start
                    .store(g.first_batch(Lsn::new(next)).get(), Ordering::Release);
            }
            (base, seg)
        };
        let referenced = seg.is_referenced();
        let path = seg.path.clone();
        let outcome = if let Err(e) = crate::failpoint::hit("preparer::retire", &shared.dir) {
            Err(("retire segment", e))
        } else if referenced {
            shared
                .fs
                .remove_file(&path)
                .map(|()| None)
                .map_err(|e| ("remove retired segment", e))
        } else {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("segment");
            let tmp = shared.dir.join(format!("recycle-{name}{TMP_SUFFIX}"));
            shared
                .fs
                .rename(&path, &tmp)
                .map(|()| Some(tmp))
                .map_err(|e| ("rename retired segment into the recycle pool", e))
        };
        match outcome {
            Ok(tmp) => {
                recyclable.extend(tmp);
                changed = true;
            }
            Err((_, e)) if e.kind() == io::ErrorKind::NotFound => {
                // Nothing left to keep: the entry stays dropped, but say so, since a
                // segment file the log holds must not vanish.
                error = Some(Error::io("retire segment: its file had vanished", &path, e));
                changed = true;
            }
            Err((op, e)) => {
                // The file is still there: so is the segment, and the start before it.
                let mut segs = write(&shared.segments);
                segs.insert(base, seg);
                shared
                    .start
                    .store(g.first_batch(Lsn::new(base)).get(), Ordering::Release);
                error = Some(Error::io(op, &path, e));
                break;
            }
        }
    }
    if changed {
        if let Err(e) = crate::fsutil::fsync_dir(&*shared.fs, &shared.dir) {
            error.get_or_insert(e);
        }
        tracing::debug!(start = %shared.start(), recyclable = recyclable.len(), "retired segments below the checkpoint");
    }
    (recyclable, error)
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use crate::failpoint;
    use crate::{BackendKind, Durability, Log, Lsn, Options};

    const CAP: u64 = 1 << 16;

    fn opts() -> Options {
        Options {
            segment_capacity: CAP,
            backend: BackendKind::Portable,
            recycle_pool: 1,
            ..Options::default()
        }
    }

    fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + std::time::Duration::from_secs(20);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    #[test]
    fn a_retirement_error_stops_there_is_reported_and_leaves_map_and_disk_in_agreement() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), opts()).unwrap();
        while log.end_lsn() < Lsn::new(8 * CAP) {
            log.append(&[5u8; 3000]).unwrap();
        }
        log.commit(log.end_lsn(), Durability::Local).wait().unwrap();
        let before = log.check_files().unwrap();
        // Two segments retire, then the third file operation fails.
        failpoint::set_after("preparer::retire", dir.path(), libc::EIO, 2);
        log.set_checkpoint(Lsn::new(6 * CAP));
        wait_until("the retirement error", || log.stats().retire_errors == 1);
        let e = log.last_retire_error().expect("reported");
        assert!(e.to_string().contains("retire segment"), "{e}");
        let after = log.check_files().expect("map and directory agree");
        assert_eq!(
            after.segments[0],
            Lsn::new(2 * CAP),
            "stopped at the failure"
        );
        assert_eq!(after.segments.len(), before.segments.len() - 2);
        assert_eq!(log.start_lsn(), Lsn::new(2 * CAP + 64));
        // Retried at the next checkpoint once the error is gone.
        failpoint::clear(dir.path());
        log.set_checkpoint(Lsn::new(6 * CAP));
        wait_until("retirement to resume", || {
            log.start_lsn() > Lsn::new(6 * CAP)
        });
        let done = log.check_files().unwrap();
        assert_eq!(done.segments[0], Lsn::new(6 * CAP));
        assert!(done.recycle_pool <= 1);
        log.close().unwrap();
        drop(log);
        let log = Log::open(dir.path(), opts()).unwrap();
        assert_eq!(log.start_lsn(), Lsn::new(6 * CAP + 64));
        log.check_files().unwrap();
    }
}
