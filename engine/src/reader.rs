//! Readers: batches and records as zero-copy [`Bytes`] over the segment mappings.
//!
//! A reader never sees bytes at or beyond the `written` watermark, so everything it
//! returns is stable. Each batch is verified (CRC, LSN) before it is returned; bad
//! bytes are an [`Error::Corruption`] naming file and offset. Reading at the end waits
//! for the writer: [`Reader::next_blocking`] parks the thread, [`Reader::next`] is an
//! async function usable from any runtime. A reader holds its current segment's mapping,
//! so retention cannot recycle bytes under it (the file is unlinked instead).

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::format::{check_batch, records, BatchHeader, Expect, Record, BATCH_HEADER_LEN};
use crate::segment::Segment;
use crate::shared::Shared;
use crate::types::{Epoch, Lsn};
use crate::watermark::{block_on, next_waiter_id};

/// One verified batch: its header and its encoded bytes, zero-copy.
#[derive(Debug, Clone)]
pub struct Batch {
    header: BatchHeader,
    bytes: Bytes,
}

impl Batch {
    /// Where the batch starts.
    pub fn base(&self) -> Lsn {
        self.header.base
    }
    /// Just past the batch.
    pub fn end(&self) -> Lsn {
        self.header.end()
    }
    /// The epoch it was written in.
    pub fn epoch(&self) -> Epoch {
        self.header.epoch
    }
    /// Commit timestamp (µs since the Unix epoch, leader clock); 0 for padding.
    pub fn timestamp_us(&self) -> u64 {
        self.header.timestamp_us
    }
    /// Number of records.
    pub fn record_count(&self) -> u32 {
        self.header.record_count
    }
    /// Whether this is the padding at the end of a segment.
    pub fn is_padding(&self) -> bool {
        self.header.padding
    }
    /// The header.
    pub fn header(&self) -> &BatchHeader {
        &self.header
    }
    /// The batch exactly as stored (header, records; for padding, header and zeros):
    /// what a leader ships and a follower appends with
    /// [`Log::append_encoded`](crate::Log::append_encoded).
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }
    /// The records, each a zero-copy slice.
    pub fn records(&self) -> impl Iterator<Item = Record> + '_ {
        let mut it = records(&self.bytes, &self.header);
        let epoch = self.header.epoch;
        std::iter::from_fn(move || {
            let (start, len, lsn) = it.next_span()?;
            Some(Record {
                lsn,
                epoch,
                data: self.bytes.slice(start..start + len),
            })
        })
    }
}

/// Reads batches in LSN order; created by [`Log::reader`](crate::Log::reader).
///
/// At the end of the log it waits for the writer, so the same reader serves catch-up
/// from disk and live tailing:
///
/// ```
/// use std::{sync::Arc, time::Duration};
/// use walship_engine::{Log, Options};
/// let dir = tempfile::tempdir()?;
/// let log = Arc::new(Log::open(dir.path(), Options { segment_capacity: 1 << 20, ..Options::default() })?);
/// let mut tail = log.reader(log.end_lsn())?;
/// let writer = { let log = Arc::clone(&log); std::thread::spawn(move || log.append(b"later")) };
/// let batch = tail.next_blocking(Some(Duration::from_secs(10)))?.expect("written within 10 s");
/// assert_eq!(&batch.records().next().unwrap().data[..], b"later");
/// assert_eq!(batch.end(), writer.join().unwrap()?);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Reader {
    shared: Arc<Shared>,
    pos: Lsn,
    seg: Option<Arc<Segment>>,
    gen: u64,
    id: u64,
}

impl Reader {
    /// Positions a reader at `from`. In record mode `from` may be a record boundary inside
    /// a batch: the reader starts at that batch and the returned LSN says which records
    /// to skip.
    pub(crate) fn new(shared: Arc<Shared>, from: Lsn, record_mode: bool) -> Result<(Reader, Lsn)> {
        let start = shared.start();
        let end = shared.end();
        if from < start {
            return Err(Error::NotRetained { lsn: from, start });
        }
        if from > end {
            return Err(Error::BeyondEnd { lsn: from, end });
        }
        let gen = shared.trunc_gen.load(Ordering::Acquire);
        let mut r = Reader {
            shared,
            pos: from,
            seg: None,
            gen,
            id: next_waiter_id(),
        };
        let g = r.shared.geometry;
        if from == start || g.offset_of(from) == 0 || from == g.first_batch(g.base_of(from)) {
            return Ok((r, from));
        }
        // Hop batch headers from the segment's first batch up to `from`. Appended bytes
        // not yet written are not readable yet: wait for them briefly.
        let written = r.shared.written.get();
        if written < from {
            r.shared.request_flush(from);
            let _ = block_on(
                crate::commit::reach(&r.shared.written, from),
                Some(Instant::now() + Duration::from_secs(10)),
            );
        }
        let base = g.base_of(from);
        r.pos = g.first_batch(base);
        let mut prev;
        while r.pos < from {
            let b = r.try_next()?.ok_or(Error::BeyondEnd {
                lsn: from,
                end: r.shared.written.get(),
            })?;
            prev = b.base();
            if b.end() > from {
                let is_record_end = b.records().any(|rec| rec.lsn == from);
                if record_mode && is_record_end {
                    r.pos = b.base();
                    return Ok((r, from));
                }
                return Err(Error::NotBoundary {
                    lsn: from,
                    expected: if record_mode { "record" } else { "batch" },
                    before: prev,
                });
            }
        }
        Ok((r, from))
    }

    /// The position of the next batch.
    pub fn position(&self) -> Lsn {
        self.pos
    }

    /// The next batch if one is written, without waiting.
    ///
    /// # Errors
    /// [`Error::Truncated`] if the log was truncated below the reader's position,
    /// [`Error::NotRetained`] if its next segment was recycled, [`Error::Corruption`].
    pub fn try_next(&mut self) -> Result<Option<Batch>> {
        let sh = Arc::clone(&self.shared);
        let g = sh.geometry;
        if let Some(t) = sh.truncated_since(self.gen) {
            if self.pos > t {
                return Err(Error::Truncated {
                    lsn: self.pos,
                    truncated_to: t,
                });
            }
            self.seg = None;
            self.gen = sh.trunc_gen.load(Ordering::Acquire);
        }
        let written = sh.written.get();
        let mut pos = self.pos;
        if pos >= written {
            sh.want_written();
            return Ok(None);
        }
        if g.offset_of(pos) == 0 {
            pos = g.first_batch(pos);
        }
        let base = g.base_of(pos);
        let seg = match &self.seg {
            Some(s) if s.base == base => Arc::clone(s),
            _ => {
                let s = sh.segment(base).ok_or_else(|| {
                    let start = sh.start();
                    if pos < start {
                        Error::NotRetained { lsn: pos, start }
                    } else {
                        Error::corruption(
                            crate::segment::segment_path(&sh.dir, base),
                            0,
                            "segment missing below the written watermark",
                        )
                    }
                })?;
                self.seg = Some(Arc::clone(&s));
                s
            }
        };
        let seg_end = g.end_of(pos);
        let limit = written.min(seg_end);
        let bytes = seg
            .slice(pos, limit)
            .ok_or_else(|| Error::corruption(&seg.path, g.offset_of(pos), "read beyond segment"))?;
        let checked = check_batch(
            bytes,
            Expect {
                lsn: Some(pos),
                max_len: seg_end.get() - pos.get(),
            },
        )
        .map_err(|e| {
            Error::corruption(
                &seg.path,
                g.offset_of(pos),
                format!("reading batch at {pos}: {e}"),
            )
        })?;
        let h = checked.header;
        let end = h.end();
        if end > limit {
            return Err(Error::corruption(
                &seg.path,
                g.offset_of(pos),
                format!("batch at {pos} runs past {limit}"),
            ));
        }
        let data = seg.bytes(pos, end).ok_or_else(|| {
            Error::corruption(&seg.path, g.offset_of(pos), "batch beyond mapping")
        })?;
        debug_assert!(data.len() >= BATCH_HEADER_LEN);
        self.pos = end;
        Ok(Some(Batch {
            header: h,
            bytes: data,
        }))
    }

    fn check_open(&self) -> Result<()> {
        if self.shared.life.is_closed() {
            return Err(Error::Closed {
                path: self.shared.dir.clone(),
            });
        }
        if self.shared.life.is_poisoned() {
            if let Some(e) = self.shared.unusable() {
                return Err(e);
            }
        }
        Ok(())
    }

    /// The next batch, waiting up to `timeout` (forever if `None`) for one to be written.
    /// `Ok(None)` on timeout.
    ///
    /// # Errors
    /// As [`try_next`](Reader::try_next), and [`Error::Closed`].
    pub fn next_blocking(&mut self, timeout: Option<Duration>) -> Result<Option<Batch>> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if let Some(b) = self.try_next()? {
                return Ok(Some(b));
            }
            self.check_open()?;
            let target = Lsn::new(self.pos.get() + 1);
            let sh = Arc::clone(&self.shared);
            let id = self.id;
            let fut = poll_fn(|cx| {
                if sh.written.poll_reached(target, id, cx.waker())
                    || sh.life.is_closed()
                    || sh.life.is_poisoned()
                    || sh.trunc_gen.load(Ordering::Acquire) != self.gen
                {
                    Poll::Ready(())
                } else {
                    // Registered: make sure the writer knows somebody waits.
                    sh.want_written();
                    Poll::Pending
                }
            });
            if block_on(fut, deadline).is_none() {
                sh.written.cancel(id);
                return Ok(None);
            }
        }
    }

    /// The next batch, waiting as long as it takes. Cancel-safe: dropping the future
    /// loses nothing.
    ///
    /// # Errors
    /// As [`next_blocking`](Reader::next_blocking).
    pub async fn next(&mut self) -> Result<Batch> {
        loop {
            if let Some(b) = self.try_next()? {
                return Ok(b);
            }
            self.check_open()?;
            let target = Lsn::new(self.pos.get() + 1);
            let sh = Arc::clone(&self.shared);
            let id = self.id;
            let gen = self.gen;
            poll_fn(|cx| {
                if sh.written.poll_reached(target, id, cx.waker())
                    || sh.life.is_closed()
                    || sh.life.is_poisoned()
                    || sh.trunc_gen.load(Ordering::Acquire) != gen
                {
                    Poll::Ready(())
                } else {
                    // Registered: make sure the writer knows somebody waits.
                    sh.want_written();
                    Poll::Pending
                }
            })
            .await;
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.shared.written.cancel(self.id);
    }
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("position", &self.pos)
            .finish()
    }
}

/// Reads records in LSN order, skipping padding; created by
/// [`Log::record_reader`](crate::Log::record_reader).
#[derive(Debug)]
pub struct RecordReader {
    reader: Reader,
    pending: VecDeque<Record>,
    skip_to: Lsn,
    last: Lsn,
}

impl RecordReader {
    pub(crate) fn new(reader: Reader, skip_to: Lsn) -> RecordReader {
        RecordReader {
            last: skip_to,
            reader,
            pending: VecDeque::new(),
            skip_to,
        }
    }

    /// The LSN just past the last record returned (or the starting point).
    pub fn position(&self) -> Lsn {
        self.last
    }

    fn load(&mut self, b: Batch) {
        let skip = self.skip_to;
        self.pending.extend(b.records().filter(|r| r.lsn > skip));
    }

    fn pop(&mut self) -> Option<Record> {
        let r = self.pending.pop_front()?;
        self.last = r.lsn;
        Some(r)
    }

    /// The next record if one is written, without waiting.
    ///
    /// # Errors
    /// As [`Reader::try_next`].
    pub fn try_next(&mut self) -> Result<Option<Record>> {
        loop {
            if let Some(r) = self.pop() {
                return Ok(Some(r));
            }
            match self.reader.try_next()? {
                Some(b) => self.load(b),
                None => return Ok(None),
            }
        }
    }

    /// The next record, waiting up to `timeout` (forever if `None`); `Ok(None)` on timeout.
    ///
    /// # Errors
    /// As [`Reader::next_blocking`].
    pub fn next_blocking(&mut self, timeout: Option<Duration>) -> Result<Option<Record>> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if let Some(r) = self.pop() {
                return Ok(Some(r));
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            match self.reader.next_blocking(left)? {
                Some(b) => self.load(b),
                None => return Ok(None),
            }
        }
    }

    /// The next record, waiting as long as it takes.
    ///
    /// # Errors
    /// As [`Reader::next`].
    pub async fn next(&mut self) -> Result<Record> {
        loop {
            if let Some(r) = self.pop() {
                return Ok(r);
            }
            let b = self.reader.next().await?;
            self.load(b);
        }
    }
}
