//! The state a log shares between its `Log` handle, its writer and preparer threads,
//! commits and readers ([`Shared`]): positions, watermarks, the open batch, the segment
//! map, the lifecycle, and the few operations on them that several of those need
//! (provisioning a segment, waking waiters, requesting a flush, poisoning).
//!
//! It lives apart from `log.rs` so that the modules using it depend on it, not on the
//! public handle (they used to import `log.rs`, which imports them).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};

use crate::epoch::EpochHistory;
use crate::error::{Error, Result};
use crate::format::Geometry;
use crate::group_commit::Assembler;
use crate::io::WriterWake;
use crate::options::Options;
use crate::preparer::Preparer;
use crate::segment::Segment;
use crate::sync::{lock, read, write};
use crate::timer::Timer;
use crate::types::Lsn;
use crate::watermark::Watermark;

/// Truncations so far, so that commits and readers created before one can tell
/// whether it removed what they wait on.
#[derive(Default)]
pub(crate) struct Truncations {
    pub(crate) events: Vec<(u64, Lsn)>,
}

/// State shared by the `Log` handle, its writer and preparer threads, commits and readers.
pub(crate) struct Shared {
    pub(crate) dir: PathBuf,
    /// Where every file operation of the log goes (`Options::storage`).
    pub(crate) fs: Arc<dyn crate::storage::Storage>,
    pub(crate) geometry: Geometry,
    pub(crate) opts: Options,
    pub(crate) append: Mutex<Assembler>,
    pub(crate) space: Condvar,
    pub(crate) space_waiters: AtomicUsize,
    pub(crate) has_pending: AtomicBool,
    pub(crate) segments: RwLock<BTreeMap<u64, Arc<Segment>>>,
    pub(crate) start: AtomicU64,
    pub(crate) end: AtomicU64,
    pub(crate) written: Watermark,
    pub(crate) flushed: Watermark,
    pub(crate) remote_written: Watermark,
    pub(crate) remote_flushed: Watermark,
    pub(crate) remote_applied: Watermark,
    pub(crate) flush_requested: AtomicU64,
    /// The write lock: held while writing what was appended (`writer::write_pending`).
    pub(crate) writing: Mutex<crate::writer::WriteState>,
    /// Where committers meet to flush (`flush_gate.rs`).
    pub(crate) gate: crate::flush_gate::FlushGate,
    /// Wakes the writer thread.
    pub(crate) wake: WriterWake,
    /// Wakes the flusher thread.
    pub(crate) flush_wake: WriterWake,
    /// What the log accepts: local appends (sealed or not), remote confirmation (fenced
    /// or not), and whether it runs, failed or is closing.
    pub(crate) life: crate::lifecycle::Lifecycle,
    pub(crate) truncations: Mutex<Truncations>,
    pub(crate) trunc_gen: AtomicU64,
    pub(crate) timer: Timer,
    pub(crate) epochs: Mutex<EpochHistory>,
    pub(crate) prep: Preparer,
    pub(crate) checkpoint: AtomicU64,
    /// Lowest position another component (the followers' retention slots) still needs;
    /// `u64::MAX` when nothing is held.
    pub(crate) retention_floor: AtomicU64,
    pub(crate) backend_name: &'static str,
    pub(crate) counters: crate::stats::Counters,
    /// Why segment retirement last stopped, if it did.
    pub(crate) retire_error: Mutex<Option<Error>>,
    /// The cluster and node the log belongs to, if it records them.
    pub(crate) identity: Option<crate::LogIdentity>,
}

impl Shared {
    pub(crate) fn end(&self) -> Lsn {
        Lsn::new(self.end.load(Ordering::Acquire))
    }

    pub(crate) fn start(&self) -> Lsn {
        Lsn::new(self.start.load(Ordering::Acquire))
    }

    /// The error to return if the log can no longer be used, if any.
    pub(crate) fn unusable(&self) -> Option<Error> {
        self.life.unusable(&self.dir)
    }

    /// Stops the log after a failed write or flush: the state of the page cache is
    /// unknown, so nothing more is acknowledged (PostgreSQL and raft-engine do the same).
    pub(crate) fn poison(&self, op: &'static str, err: &std::io::Error) {
        tracing::error!(dir = %self.dir.display(), op, error = %err, "log writer failed; the log refuses further work until reopened");
        self.life.poison(Error::Poisoned {
            path: self.dir.clone(),
            op,
            reason: err.to_string(),
        });
        self.wake_everyone();
    }

    pub(crate) fn wake_everyone(&self) {
        for w in self.watermarks() {
            w.wake_all();
        }
        drop(lock(&self.append));
        self.space.notify_all();
        self.prep.notify();
        self.gate.wake_all();
        self.wake.notify();
        self.flush_wake.notify();
    }

    fn watermarks(&self) -> [&Watermark; 5] {
        [
            &self.written,
            &self.flushed,
            &self.remote_written,
            &self.remote_flushed,
            &self.remote_applied,
        ]
    }

    /// Asks the flusher thread to flush through `lsn` (an async commit; a blocking one
    /// flushes on its own thread).
    pub(crate) fn request_flush(&self, lsn: Lsn) {
        let old = self.flush_requested.fetch_max(lsn.get(), Ordering::AcqRel);
        if old < lsn.get() {
            self.flush_wake.notify();
        }
    }

    /// Called after appending (`has_pending` set under the append lock): wakes the writer thread if anybody waits for the new
    /// bytes to be written or enough is pending (`writer::write_wanted`). A committer
    /// writes its own records, so a lone committer pays no hand-off to the writer.
    pub(crate) fn appended(&self) {
        if crate::writer::write_wanted(self) {
            self.wake.notify();
        }
    }

    /// Called by whoever just registered to wait on `written`: wakes the writer if
    /// something is pending. (`appended` stores `has_pending` then reads the waiters;
    /// this registers then reads `has_pending`: both sequentially consistent, so one of
    /// the two sees the other.)
    pub(crate) fn want_written(&self) {
        if self.has_pending.load(Ordering::SeqCst) {
            self.wake.notify();
        }
    }

    /// The lowest truncation point of truncations after generation `gen`, if any.
    pub(crate) fn truncated_since(&self, gen: u64) -> Option<Lsn> {
        if self.trunc_gen.load(Ordering::Acquire) == gen {
            return None;
        }
        lock(&self.truncations)
            .events
            .iter()
            .filter(|(g, _)| *g > gen)
            .map(|(_, l)| *l)
            .min()
    }

    pub(crate) fn segment(&self, base: Lsn) -> Option<Arc<Segment>> {
        read(&self.segments).get(&base.get()).cloned()
    }

    /// Makes the segment at `base` available for appends (called under the append lock).
    /// Segments are added strictly in order: `base` must already be in the log or be the
    /// one right after its last segment, so no position can ever be skipped.
    pub(crate) fn provision(&self, base: Lsn) -> Result<()> {
        {
            let segs = read(&self.segments);
            if segs.contains_key(&base.get()) {
                return Ok(());
            }
            let next = segs
                .last_key_value()
                .map(|(&last, _)| last.saturating_add(self.geometry.capacity()));
            if next != Some(base.get()) {
                return Err(Error::InvalidState {
                    op: "provision a segment",
                    reason: format!(
                        "segment {base} is not the one after the log's last segment ({})",
                        segs.last_key_value()
                            .map_or("none".to_string(), |(&b, _)| Lsn::new(b).to_string())
                    ),
                });
            }
        }
        let seg = self.prep.take(self, base)?;
        write(&self.segments).insert(base.get(), Arc::new(seg));
        Ok(())
    }

    /// Waits until everything appended is written and flushed, then returns what `take`
    /// locked (the append lock among it) with that still true: nothing pending, and
    /// nothing more appended while the caller holds the guards. The log's structural
    /// changes (truncation, restart) run under it.
    ///
    /// # Errors
    /// The error that makes the log unusable, if it is.
    pub(crate) fn quiesced<'a, G>(
        &'a self,
        take: impl Fn(&'a Shared) -> (G, std::sync::MutexGuard<'a, Assembler>),
    ) -> Result<(G, std::sync::MutexGuard<'a, Assembler>)> {
        loop {
            let (g, asm) = take(self);
            if let Some(e) = self.unusable() {
                return Err(e);
            }
            let end = asm.end();
            if !asm.has_pending() && self.written.get() >= end && self.flushed.get() >= end {
                return Ok((g, asm));
            }
            drop(asm);
            drop(g);
            self.request_flush(end);
            let reached = crate::watermark::block_on(
                crate::commit::reach(&self.flushed, end),
                Some(std::time::Instant::now() + std::time::Duration::from_secs(1)),
            );
            if reached.is_none() && self.life.is_poisoned() {
                return Err(self.unusable().unwrap_or(Error::Closed {
                    path: self.dir.clone(),
                }));
            }
        }
    }

    /// Removes `segs` from the directory and the map, in the order given (newest first,
    /// so a crash leaves a prefix with no hole), making each removal durable before the
    /// next; `what` names the operation in an error.
    pub(crate) fn remove_segments(&self, segs: &[Arc<Segment>], what: &'static str) -> Result<()> {
        for s in segs {
            self.fs
                .remove_file(&s.path)
                .map_err(|e| Error::io(what, &s.path, e))?;
            crate::fsutil::fsync_dir(&*self.fs, &self.dir)?;
            write(&self.segments).remove(&s.base.get());
        }
        Ok(())
    }

    /// Notifies appenders blocked on back-pressure, if any.
    pub(crate) fn release_space(&self) {
        if self.space_waiters.load(Ordering::Acquire) > 0 {
            // Taking the lock orders this wake-up after a waiter's check; one waiter is
            // woken, and each admitted appender wakes the next while room remains.
            drop(lock(&self.append));
            self.space.notify_one();
        }
    }
}
