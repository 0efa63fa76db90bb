//! The log-writer thread: group commit, the I/O half.
//!
//! Each turn of the loop: reap a completed flush and publish `flushed`; take everything
//! appended since the last turn (one call seals the open batch, so concurrent appenders
//! share one write); write it as one vectored write per segment and publish `written`;
//! start a flush when a waiter needs `Local` or stronger, when the async flush interval
//! has passed, or when closing. While a flush is in flight the next batch is gathered and
//! written (pipelining); a flush covers everything written before it started.
//!
//! Before the first byte goes into a new segment, everything in the previous one is
//! flushed, so a crash can only tear the last segment (recovery relies on this).
//!
//! Every batch is stamped as it is written with the flushed position the writer knows
//! then (`format::restamp`), including a leader's batches written verbatim by a follower:
//! each copy of a log proves what was durable on its own disk, which recovery uses to
//! tell an unflushed tail from damage to flushed data.
//!
//! Any write or flush error poisons the log: after a failed fsync the page cache state is
//! unknown, and acknowledging anything later could lose data silently.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::format::{restamp, seal_header, BATCH_HEADER_LEN};
use crate::group_commit::Chunk;
use crate::io::Backend;
use crate::segment::Segment;
use crate::shared::Shared;
use crate::stats::Counters;
use crate::sync::lock;
use crate::types::Lsn;

static ZEROS: [u8; 64 * 1024] = [0u8; 64 * 1024];

type OpResult<T> = Result<T, (&'static str, std::io::Error)>;

pub(crate) struct Writer {
    shared: Arc<Shared>,
    backend: Box<dyn Backend>,
    chunks: Vec<Chunk>,
    spent: Vec<Vec<u8>>,
    /// Segments written since the last flush started.
    dirty: Vec<Arc<Segment>>,
    /// Base of the segment last written.
    current: Option<Lsn>,
    /// What the flush in flight will make durable.
    flush_target: Lsn,
    flush_started: Instant,
    last_flush: Instant,
}

pub(crate) fn run(shared: Arc<Shared>, backend: Box<dyn Backend>) {
    shared.wake.bind_current_thread();
    let mut w = Writer::new(shared, backend);
    loop {
        match w.turn() {
            Ok(true) => {}
            Ok(false) => {
                if w.finished() {
                    break;
                }
                w.sleep();
            }
            Err((op, e)) => {
                w.shared.poison(op, &e);
                break;
            }
        }
    }
    // Dropping the backend waits for a flush still in flight.
}

impl Writer {
    pub(crate) fn new(shared: Arc<Shared>, backend: Box<dyn Backend>) -> Writer {
        Writer {
            flush_target: shared.flushed.get(),
            shared,
            backend,
            chunks: Vec::new(),
            spent: Vec::new(),
            dirty: Vec::new(),
            current: None,
            flush_started: Instant::now(),
            last_flush: Instant::now(),
        }
    }

    /// For a log its caller drives: turns until nothing is left to do (with the inline
    /// backend a flush completes within a turn). Returns whether anything was done; an
    /// error poisons the log, as on the writer thread.
    pub(crate) fn step(&mut self) -> bool {
        let mut did = false;
        loop {
            match self.turn() {
                Ok(true) => did = true,
                Ok(false) => return did,
                Err((op, e)) => {
                    self.shared.poison(op, &e);
                    return did;
                }
            }
        }
    }

    fn finished(&self) -> bool {
        let sh = &self.shared;
        sh.life.is_stopping()
            && !sh.has_pending.load(Ordering::Acquire)
            && !self.backend.flush_in_flight()
            && sh.flushed.get() >= sh.written.get()
    }

    fn sleep(&mut self) {
        let sh = Arc::clone(&self.shared);
        let in_flight = self.backend.flush_in_flight();
        let interval = sh.opts.async_flush_interval;
        let unflushed = sh.written.get() > sh.flushed.get();
        let timeout = if unflushed && !in_flight {
            Some(interval.saturating_sub(self.last_flush.elapsed()))
        } else if in_flight {
            None
        } else {
            Some(interval)
        };
        let has_work = || {
            sh.has_pending.load(Ordering::Acquire)
                || (!in_flight && sh.life.is_closing())
                || (!in_flight
                    && sh.flush_requested.load(Ordering::Acquire) > sh.flushed.get().get()
                    && sh.written.get() > sh.flushed.get())
        };
        self.backend.wait(timeout, &has_work);
    }

    /// One turn; returns whether anything was done.
    fn turn(&mut self) -> OpResult<bool> {
        let mut did = self.reap_flush()?;
        self.take();
        if !self.chunks.is_empty() {
            self.write_chunks()?;
            self.shared.release_space();
            did = true;
        }
        let flushed = self.shared.flushed.get();
        did |= self.maybe_flush(flushed)?;
        Ok(did)
    }

    fn reap_flush(&mut self) -> OpResult<bool> {
        let polled = self
            .backend
            .poll_flush()
            .map(|r| r.and_then(|()| crate::failpoint::hit("writer::flush", &self.shared.dir)));
        match polled {
            Some(Ok(())) => {
                let done = self.flush_target;
                let c = &self.shared.counters;
                Counters::add(&c.flushes, 1);
                Counters::add(
                    &c.flush_micros,
                    self.flush_started.elapsed().as_micros() as u64,
                );
                self.last_flush = Instant::now();
                // Start the next flush before waking anyone: waking is one system call per
                // waiting committer, and it should overlap the disk flush, not delay it.
                self.maybe_flush(done)?;
                self.shared.flushed.advance(done);
                Ok(true)
            }
            Some(Err(e)) => Err(("fdatasync", e)),
            None => Ok(false),
        }
    }

    fn take(&mut self) {
        let sh = &self.shared;
        if !sh.has_pending.load(Ordering::Acquire) && self.spent.is_empty() {
            return;
        }
        let mut asm = lock(&sh.append);
        for b in self.spent.drain(..) {
            asm.recycle_buf(b);
        }
        asm.take(&mut self.chunks);
        sh.has_pending.store(false, Ordering::Release);
    }

    /// Starts a flush if one is due, given that everything before `flushed` is durable.
    fn maybe_flush(&mut self, flushed: Lsn) -> OpResult<bool> {
        if self.backend.flush_in_flight() {
            return Ok(false);
        }
        let sh = &self.shared;
        let written = sh.written.get();
        if written <= flushed {
            return Ok(false);
        }
        let requested = Lsn::new(sh.flush_requested.load(Ordering::Acquire));
        let due = requested > flushed
            || written.bytes_after(flushed) >= sh.opts.async_flush_after_bytes
            || self.last_flush.elapsed() >= sh.opts.async_flush_interval
            || sh.life.is_closing();
        if !due {
            return Ok(false);
        }
        self.start_flush(written)?;
        Ok(true)
    }

    fn start_flush(&mut self, target: Lsn) -> OpResult<()> {
        let mut files = Vec::with_capacity(self.dirty.len());
        for s in self.dirty.drain(..) {
            files.push(s.file().map_err(|e| {
                (
                    "open segment for fdatasync",
                    std::io::Error::other(e.to_string()),
                )
            })?);
        }
        self.flush_target = target;
        self.flush_started = Instant::now();
        self.backend
            .start_flush(files)
            .map_err(|e| ("start fdatasync", e))
    }

    /// Flushes everything written so far and waits for it.
    fn flush_now(&mut self) -> OpResult<()> {
        while self.backend.flush_in_flight() {
            if !self.reap_flush()? {
                self.backend.wait(None, &|| false);
            }
        }
        let written = self.shared.written.get();
        if written > self.shared.flushed.get() {
            self.start_flush(written)?;
            while self.backend.flush_in_flight() {
                if !self.reap_flush()? {
                    self.backend.wait(None, &|| false);
                }
            }
        }
        Ok(())
    }

    fn write_chunks(&mut self) -> OpResult<()> {
        let geometry = self.shared.geometry;
        let mut chunks = std::mem::take(&mut self.chunks);
        let now_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let mut headers: Vec<[u8; BATCH_HEADER_LEN]> = Vec::new();
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
            if let Some(prev) = self.current.filter(|c| *c != base) {
                if self.shared.written.get() > self.shared.flushed.get() {
                    self.flush_now()?;
                }
                // Done with it (a truncation that comes back reopens it on demand).
                if let Some(s) = self.shared.segment(prev) {
                    s.release_file();
                }
            }
            self.current = Some(base);
            // Stamped after the barrier above: a batch in a new segment proves that the
            // whole previous segment was durable before it was written.
            let flushed = self.shared.flushed.get();
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
            let seg = self.shared.segment(base).ok_or_else(|| {
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
            crate::failpoint::wait_if_paused("writer::write", &self.shared.dir);
            crate::failpoint::hit("writer::write", &self.shared.dir)
                .and_then(|()| self.backend.write_all_at(&*file, offset, &slices))
                .map_err(|e| ("write segment", e))?;
            let end = chunks[j - 1].end();
            let c = &self.shared.counters;
            Counters::add(&c.write_calls, 1);
            Counters::add(&c.bytes_written, end.get() - chunks[i].base().get());
            let batches = chunks[i..j]
                .iter()
                .filter(|c| !matches!(c, Chunk::Padding { .. }))
                .count();
            Counters::add(&c.batches_written, batches as u64);
            self.shared.written.advance(end);
            if !self.dirty.iter().any(|d| Arc::ptr_eq(d, &seg)) {
                self.dirty.push(seg);
            }
            i = j;
        }
        for c in chunks.drain(..) {
            if let Chunk::Local { buf, .. } = c {
                self.spent.push(buf);
            }
        }
        self.chunks = chunks;
        Ok(())
    }
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
