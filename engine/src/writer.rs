//! The write path: writing what was appended, flushing it, and the two background
//! threads that do so when no committer does.
//!
//! [`write_pending`] takes everything appended since the last write (one call seals the
//! open batch, so concurrent appenders share one write) and writes it as one vectored
//! write per segment, under the *write lock* (`Shared::writing`), and publishes
//! `written`. [`flush_through`] makes a position durable through the flush gate
//! (`flush_gate.rs`): a committer that finds no flush running writes and flushes on its
//! own thread; others wait for that flush or lead the next one.
//!
//! Two threads serve what no committer waits for:
//! - the *writer* writes what is appended when someone waits for it to be written (a
//!   reader tailing the log, a follower acknowledging `written`), when appenders wait for
//!   room, or when a large amount is pending, so big groups are written while a flush
//!   runs;
//! - the *flusher* flushes for async commits (`commit(..).await`), every
//!   `async_flush_interval`, after `async_flush_after_bytes`, and at close. It is just
//!   another committer at the gate.
//!
//! Before the first byte goes into a new segment, everything in the previous one is
//! flushed, so a crash can only tear the last segment (recovery relies on this).
//!
//! Every batch is stamped as it is written with the flushed position known then
//! (`format::restamp`), including a leader's batches written verbatim by a follower:
//! each copy of a log proves what was durable on its own disk, which recovery uses to
//! tell an unflushed tail from damage to flushed data.
//!
//! Any write or flush error poisons the log: after a failed fsync the page cache state is
//! unknown, and acknowledging anything later could lose data silently.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::error::Error;
use crate::flush_gate::{self, Outcome};
use crate::format::{restamp, seal_header, BATCH_HEADER_LEN};
use crate::group_commit::Chunk;
use crate::io::Backend;
use crate::shared::Shared;
use crate::stats::Counters;
use crate::sync::{lock, read};
use crate::types::Lsn;

static ZEROS: [u8; 64 * 1024] = [0u8; 64 * 1024];

type OpResult<T> = Result<T, (&'static str, std::io::Error)>;

/// Pending bytes past which an append wakes the writer thread even though nobody waits
/// for them to be written: a large group is then written while the previous flush runs,
/// instead of after it by the next leader.
pub(crate) const WRITE_AHEAD_BYTES: u64 = 256 << 10;

/// What the write lock guards: the I/O backend and the writer's own buffers.
pub(crate) struct WriteState {
    backend: Box<dyn Backend>,
    chunks: Vec<Chunk>,
    spent: Vec<Vec<u8>>,
    headers: Vec<[u8; BATCH_HEADER_LEN]>,
    /// Base of the segment last written.
    pub(crate) current: Option<Lsn>,
}

impl WriteState {
    pub(crate) fn new(backend: Box<dyn Backend>) -> WriteState {
        WriteState {
            backend,
            chunks: Vec::new(),
            spent: Vec::new(),
            headers: Vec::new(),
            current: None,
        }
    }
}

/// Writes everything appended so far, under the write lock; returns whether anything
/// was written.
pub(crate) fn write_pending(sh: &Shared) -> OpResult<bool> {
    let mut st = lock(&sh.writing);
    {
        let mut asm = lock(&sh.append);
        for b in st.spent.drain(..) {
            asm.recycle_buf(b);
        }
        let st = &mut *st;
        asm.take(&mut st.chunks);
        sh.has_pending.store(false, Ordering::SeqCst);
    }
    if st.chunks.is_empty() {
        return Ok(false);
    }
    write_chunks(sh, &mut st)?;
    drop(st);
    sh.release_space();
    Ok(true)
}

/// `fdatasync`s every segment holding bytes in `[from, to)`.
fn sync_range(sh: &Shared, from: Lsn, to: Lsn) -> OpResult<()> {
    if to <= from {
        return Ok(());
    }
    let t0 = Instant::now();
    crate::failpoint::hit("writer::flush", &sh.dir).map_err(|e| ("fdatasync", e))?;
    let g = sh.geometry;
    let segs: Vec<_> = read(&sh.segments)
        .range(g.base_of(from).get()..=g.base_of(Lsn::new(to.get() - 1)).get())
        .map(|(_, s)| Arc::clone(s))
        .collect();
    for s in segs {
        let f = s.file().map_err(|e| {
            (
                "open segment for fdatasync",
                std::io::Error::other(e.to_string()),
            )
        })?;
        f.sync_data().map_err(|e| ("fdatasync", e))?;
    }
    let c = &sh.counters;
    Counters::add(&c.flushes, 1);
    Counters::add(&c.flush_micros, t0.elapsed().as_micros() as u64);
    Ok(())
}

/// Flushes everything written so far on this thread and publishes it.
fn flush_written(sh: &Shared) -> OpResult<()> {
    let from = sh.flushed.get();
    let to = sh.written.get();
    if to > from {
        sync_range(sh, from, to)?;
        sh.flushed.advance(to);
    }
    Ok(())
}

/// Poisons the log with an I/O failure and returns the error every caller now gets.
fn fail(sh: &Shared, (op, e): (&'static str, std::io::Error)) -> Error {
    sh.poison(op, &e);
    sh.life.poisoned().unwrap_or(Error::Poisoned {
        path: sh.dir.clone(),
        op,
        reason: e.to_string(),
    })
}

/// Returns once everything before `lsn` is durable, writing and flushing on this thread
/// when no flush is running (see `flush_gate.rs`). `gen` is the truncation generation the
/// caller's position belongs to: a truncation below `lsn` since then ends the wait.
pub(crate) fn flush_through(sh: &Shared, lsn: Lsn, deadline: Option<Instant>, gen: u64) -> Outcome {
    let durable = || sh.flushed.get();
    let appended = || sh.end();
    let refused = || {
        if let Some(e) = sh.life.poisoned() {
            return Some(e);
        }
        if let Some(t) = sh.truncated_since(gen).filter(|t| lsn > *t) {
            return Some(Error::Truncated {
                lsn,
                truncated_to: t,
            });
        }
        sh.life.is_closed().then(|| Error::Closed {
            path: sh.dir.clone(),
        })
    };
    let log = flush_gate::Log {
        durable: &durable,
        appended: &appended,
        refused: &refused,
    };
    sh.gate.wait_durable(&log, lsn, deadline, &mut || {
        write_pending(sh).map_err(|e| fail(sh, e))?;
        flush_written(sh).map_err(|e| fail(sh, e))?;
        if crate::mutation::active(crate::mutation::FLUSH_CLAIMS_APPENDED) {
            // What was appended meanwhile is written (readable), never flushed.
            write_pending(sh).map_err(|e| fail(sh, e))?;
            sh.flushed.advance(sh.written.get());
        }
        Ok(())
    })
}

/// Whether the flusher has work: a flush asked for, or due by size, age or close.
fn flush_due(sh: &Shared, last_flush: Instant) -> bool {
    let flushed = sh.flushed.get();
    if sh.end() <= flushed {
        return false;
    }
    Lsn::new(sh.flush_requested.load(Ordering::Acquire)) > flushed
        || sh.written.get().bytes_after(flushed) >= sh.opts.async_flush_after_bytes
        || last_flush.elapsed() >= sh.opts.async_flush_interval
        || sh.life.is_closing()
}

/// Whether the writer thread should write now.
pub(crate) fn write_wanted(sh: &Shared) -> bool {
    sh.has_pending.load(Ordering::SeqCst)
        && (sh.written.has_waiters()
            || sh.space_waiters.load(Ordering::Acquire) > 0
            || sh.end().bytes_after(sh.written.get()) >= WRITE_AHEAD_BYTES
            || sh.life.is_stopping())
}

/// The writer thread.
pub(crate) fn run_writer(sh: Arc<Shared>) {
    sh.wake.bind_current_thread();
    loop {
        match write_pending(&sh) {
            Ok(true) => {
                if sh.written.get().bytes_after(sh.flushed.get()) >= sh.opts.async_flush_after_bytes
                {
                    sh.flush_wake.notify();
                }
                continue;
            }
            Ok(false) => {}
            Err(e) => {
                fail(&sh, e);
                return;
            }
        }
        if sh.life.is_stopping() && !sh.has_pending.load(Ordering::SeqCst) {
            return;
        }
        if sh
            .wake
            .prepare_sleep(&|| write_wanted(&sh) || sh.life.is_stopping())
        {
            std::thread::park_timeout(sh.opts.async_flush_interval);
            sh.wake.woke();
        }
    }
}

/// The flusher thread.
pub(crate) fn run_flusher(sh: Arc<Shared>) {
    sh.flush_wake.bind_current_thread();
    let mut last_flush = Instant::now();
    let mut last_seen = sh.flushed.get();
    loop {
        let flushed = sh.flushed.get();
        if flushed != last_seen {
            // Committers flushed: the interval counts from their flush.
            last_seen = flushed;
            last_flush = Instant::now();
        }
        if flush_due(&sh, last_flush) {
            let gen = sh.trunc_gen.load(Ordering::Acquire);
            let end = sh.end();
            match flush_through(&sh, end, None, gen) {
                Outcome::Refused(_) if sh.life.is_poisoned() => return,
                _ => {}
            }
            last_flush = Instant::now();
            last_seen = sh.flushed.get();
            continue;
        }
        if sh.life.is_poisoned() || (sh.life.is_stopping() && sh.flushed.get() >= sh.end()) {
            return;
        }
        // With everything flushed there is nothing to time: a full interval (a write
        // meanwhile is flushed by the next wake-up, within the interval, as `Async`
        // promises). Counting from the last flush instead gave a zero timeout once the
        // log had been idle for an interval, and the thread spun.
        let interval = sh.opts.async_flush_interval;
        let timeout = if sh.end() <= sh.flushed.get() {
            interval
        } else {
            interval.saturating_sub(last_flush.elapsed())
        };
        if sh
            .flush_wake
            .prepare_sleep(&|| flush_due(&sh, last_flush) || sh.life.is_stopping())
        {
            std::thread::park_timeout(timeout);
            sh.flush_wake.woke();
        }
    }
}

/// The work of both threads, for a log its caller drives: writes what is pending and
/// flushes when a flush is due, until nothing is left. Returns whether anything was
/// done; an error poisons the log, as on the threads.
pub(crate) struct Manual {
    last_flush: Instant,
}

impl Manual {
    pub(crate) fn new() -> Manual {
        Manual {
            last_flush: Instant::now(),
        }
    }

    pub(crate) fn step(&mut self, sh: &Shared) -> bool {
        let mut did = false;
        loop {
            match write_pending(sh) {
                Ok(true) => did = true,
                Ok(false) => {}
                Err(e) => {
                    fail(sh, e);
                    return did;
                }
            }
            if !flush_due(sh, self.last_flush) || sh.written.get() <= sh.flushed.get() {
                return did;
            }
            if let Err(e) = flush_written(sh) {
                fail(sh, e);
                return did;
            }
            self.last_flush = Instant::now();
            did = true;
        }
    }
}

fn write_chunks(sh: &Shared, st: &mut WriteState) -> OpResult<()> {
    let geometry = sh.geometry;
    let mut chunks = std::mem::take(&mut st.chunks);
    let now_us = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    let mut headers = std::mem::take(&mut st.headers);
    let mut i = 0;
    while i < chunks.len() {
        let base = geometry.base_of(chunks[i].base());
        let mut j = i + 1;
        while j < chunks.len()
            && geometry.base_of(chunks[j].base()) == base
            && chunks[j].base() == chunks[j - 1].end()
        {
            j += 1;
        }
        if let Some(prev) = st.current.filter(|c| *c != base) {
            flush_written(sh)?;
            // Done with it (a truncation that comes back reopens it on demand).
            if let Some(s) = sh.segment(prev) {
                s.release_file();
            }
        }
        st.current = Some(base);
        // Stamped after the barrier above: a batch in a new segment proves that the
        // whole previous segment was durable before it was written.
        let flushed = sh.flushed.get();
        headers.clear();
        for c in chunks[i..j].iter_mut() {
            match c {
                Chunk::Local {
                    base,
                    buf,
                    count,
                    epoch,
                } => {
                    let len = buf.len() as u32;
                    seal_header(buf, len, *base, *epoch, now_us, *count, false, flushed);
                }
                Chunk::Padding { header, .. } => restamp(header, flushed),
                Chunk::Encoded { bytes, .. } => {
                    // This copy's own stamp, written in place of the leader's.
                    let mut h = [0u8; BATCH_HEADER_LEN];
                    h.copy_from_slice(&bytes[..BATCH_HEADER_LEN]);
                    restamp(&mut h, flushed);
                    headers.push(h);
                }
            }
        }
        let seg = sh.segment(base).ok_or_else(|| {
            (
                "find segment",
                std::io::Error::other(format!(
                    "segment {base} was not provisioned before a write into it"
                )),
            )
        })?;
        let mut slices: Vec<&[u8]> = Vec::with_capacity(j - i + headers.len());
        let mut stamped = headers.iter();
        for c in &chunks[i..j] {
            match c {
                Chunk::Local { buf, .. } => slices.push(buf),
                Chunk::Encoded { bytes, .. } => {
                    if let Some(h) = stamped.next() {
                        slices.push(h);
                    }
                    slices.push(&bytes[BATCH_HEADER_LEN..]);
                }
                Chunk::Padding { base, end, header } => {
                    slices.push(header);
                    let mut zeros = (end.get() - base.get()) as usize - BATCH_HEADER_LEN;
                    while zeros > 0 {
                        let n = zeros.min(ZEROS.len());
                        slices.push(&ZEROS[..n]);
                        zeros -= n;
                    }
                }
            }
        }
        let offset = geometry.offset_of(chunks[i].base());
        let file = seg.file().map_err(|e| {
            (
                "open segment for writing",
                std::io::Error::other(e.to_string()),
            )
        })?;
        crate::failpoint::wait_if_paused("writer::write", &sh.dir);
        crate::failpoint::hit("writer::write", &sh.dir)
            .and_then(|()| st.backend.write_all_at(&*file, offset, &slices))
            .map_err(|e| ("write segment", e))?;
        let end = chunks[j - 1].end();
        let c = &sh.counters;
        Counters::add(&c.write_calls, 1);
        Counters::add(&c.bytes_written, end.get() - chunks[i].base().get());
        let batches = chunks[i..j]
            .iter()
            .filter(|c| !matches!(c, Chunk::Padding { .. }))
            .count();
        Counters::add(&c.batches_written, batches as u64);
        sh.written.advance(end);
        i = j;
    }
    for c in chunks.drain(..) {
        if let Chunk::Local { buf, .. } = c {
            st.spent.push(buf);
        }
    }
    st.chunks = chunks;
    st.headers = headers;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::failpoint;
    use crate::{BackendKind, Durability, Error, Log, Options};

    fn opts(backend: BackendKind) -> Options {
        Options {
            segment_capacity: 1 << 16,
            backend,
            ..Options::default()
        }
    }

    #[test]
    fn a_failed_flush_or_write_poisons_the_log_until_reopened() {
        for point in ["writer::flush", "writer::write"] {
            for backend in [BackendKind::Portable, BackendKind::Auto] {
                let dir = tempfile::tempdir().unwrap();
                let log = Log::open(dir.path(), opts(backend)).unwrap();
                let ok = log.append(b"before").unwrap();
                log.commit(ok, Durability::Local).wait().unwrap();
                failpoint::set(point, dir.path(), libc::EIO);
                let lsn = log.append(b"doomed").unwrap();
                let r = log.wait(lsn, Durability::Local, Duration::from_secs(10));
                assert!(matches!(r, Err(Error::Poisoned { .. })), "{point}: {r:?}");
                let msg = r.unwrap_err().to_string();
                assert!(msg.contains("reopen"), "{msg}");
                // Nothing is acknowledged or accepted afterwards.
                assert!(matches!(log.append(b"more"), Err(Error::Poisoned { .. })));
                assert!(matches!(
                    log.commit(ok, Durability::Async).wait(),
                    Err(Error::Poisoned { .. })
                ));
                assert!(log.close().is_err());
                drop(log);
                failpoint::clear(dir.path());
                // Reopening recovers what is really on disk; the acknowledged record is there.
                let log = Log::open(dir.path(), opts(backend)).unwrap();
                let mut r = log.record_reader(log.start_lsn()).unwrap();
                assert_eq!(&r.try_next().unwrap().unwrap().data[..], b"before");
                let again = log.append(b"after").unwrap();
                log.commit(again, Durability::Local).wait().unwrap();
            }
        }
    }
}
