//! Opening a log directory: finding where the log ends after a crash.
//!
//! Guarantees:
//! - the log found is a gapless chain of valid batches (CRC, LSN, non-decreasing epoch)
//!   from the first segment to the end;
//! - the *torn tail* (bytes after the last valid batch of the last non-empty segment) is
//!   zeroed and fsynced, so a later scan cannot mistake leftovers of a partial write for
//!   data once new batches are appended next to them;
//! - where the chain breaks, the valid batches after the spot decide what it is
//!   ([`judge`]), from the flush stamp each carries (the flushed position its writer knew
//!   when writing it): if one proves the spot had been flushed, durable bytes are damaged
//!   and open fails with [`Error::Corruption`] naming the file and offset (unless
//!   [`RecoveryMode::TruncateCorrupt`] asks to cut the log there); otherwise the log ends
//!   at the spot: a torn write, or the unflushed tail of a power loss that reached the
//!   disk out of order, which the [`OpenReport`](crate::OpenReport) reports;
//! - segments after the end (prepared spares, or unflushed leftovers) are zeroed where
//!   they claim positions and handed back for recycling.
//!
//! The writer fsyncs a segment before it writes into the next one, and stamps a batch
//! after that flush, so a valid batch in a later segment always proves the earlier one
//! flushed: an incomplete non-final segment is damage. Only the last two segments are
//! scanned batch by batch unless `verify_all` asks for every one; earlier ones have their
//! headers checked.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::format::{
    check_batch, Expect, FormatError, Geometry, SegmentHeader, BATCH_HEADER_LEN, SEGMENT_HEADER_LEN,
};
use crate::segment::{self, parse_segment_name, Segment};
use crate::storage::Storage;
use crate::types::{Epoch, Lsn};

/// What to do about corruption that is not a torn tail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RecoveryMode {
    /// Refuse to open, naming the file and offset (the default).
    #[default]
    Strict,
    /// Cut the log at the first invalid batch, discarding everything after it.
    TruncateCorrupt,
}

/// The outcome of scanning one segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentScan {
    /// Just past the last valid batch.
    pub end: Lsn,
    /// Whether valid batches (or padding) reach the end of the segment.
    pub complete: bool,
    /// Valid batches, padding excluded.
    pub batches: u64,
    /// Records in them.
    pub records: u64,
    /// Epoch of the first and last valid batch, if any.
    pub epochs: Option<(Epoch, Epoch)>,
    /// The first invalid spot and why, if the chain stopped before the end.
    pub bad: Option<(Lsn, FormatError)>,
}

/// Scans the batches of `seg` from its first batch, requiring epochs not below
/// `prev_epoch`, using only the segment's bytes.
pub(crate) fn scan_bytes(
    bytes: &[u8],
    base: Lsn,
    geometry: Geometry,
    prev_epoch: Epoch,
) -> SegmentScan {
    let seg_end = Lsn::new(base.get() + geometry.capacity());
    let mut pos = geometry.first_batch(base);
    let mut scan = SegmentScan {
        end: pos,
        complete: false,
        batches: 0,
        records: 0,
        epochs: None,
        bad: None,
    };
    let mut epoch = prev_epoch;
    loop {
        if pos == seg_end {
            scan.complete = true;
            return scan;
        }
        let off = (pos.get() - base.get()) as usize;
        let rest = bytes.get(off..).unwrap_or(&[]);
        let max_len = seg_end.get() - pos.get();
        let checked = match check_batch(
            rest,
            Expect {
                lsn: Some(pos),
                max_len,
            },
        ) {
            Ok(c) => c,
            Err(e) => {
                scan.bad = Some((pos, e));
                return scan;
            }
        };
        let h = checked.header;
        if h.epoch < epoch {
            scan.bad = Some((
                pos,
                FormatError::EpochRegression {
                    previous: epoch,
                    found: h.epoch,
                },
            ));
            return scan;
        }
        let misfit = if h.padding {
            h.end() != seg_end
        } else {
            !geometry.fits(pos, h.end())
        };
        if misfit {
            scan.bad = Some((
                pos,
                FormatError::SegmentBoundary {
                    start: pos,
                    end: h.end(),
                    segment_end: seg_end,
                },
            ));
            return scan;
        }
        epoch = h.epoch;
        if !h.padding {
            scan.batches += 1;
            scan.records += u64::from(h.record_count);
            scan.epochs = Some((scan.epochs.map_or(h.epoch, |(f, _)| f), h.epoch));
        }
        pos = h.end();
        scan.end = pos;
    }
}

/// Offsets from `first` on whose 8 bytes at `+8` name their own LSN, as a batch header's
/// base field would: the cheap filter before a CRC check. All-zero stretches (most of an
/// unused segment) are skipped a page at a time, since a zero field names no position.
fn candidates(bytes: &[u8], base: Lsn, first: usize) -> impl Iterator<Item = usize> + '_ {
    const PAGE: usize = 4096;
    let last = bytes.len().saturating_sub(BATCH_HEADER_LEN);
    let mut off = first;
    std::iter::from_fn(move || {
        while off <= last {
            let field = off + 8;
            // Skip a page of zeros: no LSN field lying wholly inside it can match (LSNs of
            // batches are never zero: every segment starts with a header).
            if field % PAGE == 0
                && bytes
                    .get(field..field + PAGE)
                    .is_some_and(|p| p.iter().all(|&b| b == 0))
            {
                off += PAGE - 7;
                continue;
            }
            let here = off;
            off += 1;
            if bytes.get(here + 8..here + 16)
                == Some(&base.get().wrapping_add(here as u64).to_le_bytes()[..])
            {
                return Some(here);
            }
        }
        None
    })
}

/// Whether any bytes after `base`'s header look like a batch header naming its own
/// position: leftovers of a torn write in this segment's current life. (A recycled
/// segment's stale batches name positions of its previous life and never match.)
pub(crate) fn claims_positions(bytes: &[u8], base: Lsn) -> bool {
    candidates(bytes, base, SEGMENT_HEADER_LEN).next().is_some()
}

/// What the spot where a log's chain of valid batches breaks is, judged from the valid
/// batches that lie after it (see [`judge`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Nothing valid after it: the write in progress when the process or machine
    /// stopped. The log ends there.
    TornTail,
    /// Valid batches after it, but none was written after it had been flushed: the tail
    /// of a power loss, where the disk kept later pages and lost an earlier one. Nothing
    /// in it was acknowledged at `Local` (an acknowledged batch and everything before it
    /// were flushed, and a batch written later would say so). The log ends there.
    Unflushed {
        /// Valid batches (padding included) found after the spot, discarded.
        batches: u64,
        /// The end of the last of them.
        until: Lsn,
    },
    /// The spot had been flushed, so durable bytes were damaged: a valid batch after it
    /// was written once everything before its stamp, which lies past the spot, had been
    /// flushed; or the log was last closed cleanly with everything before a later
    /// position flushed.
    Corruption(Proof),
}

/// What shows that bytes had been flushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Proof {
    /// The valid batch at `at`, whose flush stamp is `flushed`.
    Batch { at: Lsn, flushed: Lsn },
    /// A valid batch at `at` in a later segment: the writer flushes a segment in full
    /// before it writes into the next one, whatever that batch's stamp says.
    LaterSegment { at: Lsn },
    /// The clean-close marker: the log was closed with everything before `end` flushed.
    Closed { end: Lsn },
}

impl Verdict {
    /// Why, in words, for errors and tools (`why` is what is wrong with the batch).
    pub(crate) fn explain(&self, at: Lsn, why: &FormatError) -> String {
        match self {
            Verdict::TornTail => format!("torn last batch ({why}): the log ends at {at}"),
            Verdict::Unflushed { batches, until } => format!(
                "invalid batch ({why}) followed by {batches} valid batch(es) up to {until}, none \
                 written after it was flushed: an unflushed tail a power loss left out of \
                 order, never acknowledged; the log ends at {at}"
            ),
            Verdict::Corruption(Proof::Batch { at: proof, flushed }) => format!(
                "invalid batch ({why}) followed by a valid batch at {proof} that was written \
                 once everything before {flushed} had been flushed: these bytes were durable \
                 and are damaged"
            ),
            Verdict::Corruption(Proof::LaterSegment { at: proof }) => format!(
                "invalid batch ({why}) followed by a valid batch at {proof} in a later \
                 segment, written after this one had been flushed in full: these bytes were \
                 durable and are damaged"
            ),
            Verdict::Corruption(Proof::Closed { end }) => format!(
                "invalid batch ({why}), but the log was closed cleanly with everything before \
                 {end} flushed: these bytes were durable and are damaged"
            ),
        }
    }
}

/// The valid batches found after the spot `at` where a log's chain breaks, gathered
/// segment by segment (so tools can read one segment at a time): each must be at the
/// very position its header names. Only a flush stamp past `at`, or a clean close with
/// more flushed, proves that `at` had been flushed; no valid batch at all is a torn write.
#[derive(Debug, Clone)]
pub(crate) struct Evidence {
    at: Lsn,
    batches: u64,
    until: Lsn,
    proof: Option<Proof>,
}

impl Evidence {
    /// Evidence about the spot `at`; `closed` is the end the clean-close marker records.
    pub(crate) fn new(at: Lsn, closed: Option<Lsn>) -> Evidence {
        Evidence {
            at,
            batches: 0,
            until: at,
            proof: closed
                .filter(|&end| end > at)
                .map(|end| Proof::Closed { end }),
        }
    }

    /// Looks at the bytes of the segment at `base` (the one holding `at`, or a later one).
    /// Returns whether the verdict is settled (corruption proven).
    pub(crate) fn look(&mut self, base: Lsn, bytes: &[u8], geometry: Geometry) -> bool {
        if self.proof.is_some() {
            return true;
        }
        if base.get() % geometry.capacity() != 0 || base.checked_add(geometry.capacity()).is_none()
        {
            return false; // a file name no segment can have names no position either
        }
        let cap = geometry.capacity() as usize;
        let first = if geometry.base_of(self.at) == base {
            (self.at.get() - base.get()) as usize + 1
        } else {
            SEGMENT_HEADER_LEN
        };
        let mut next = first;
        for off in candidates(bytes, base, first.max(SEGMENT_HEADER_LEN)) {
            if off < next || off >= cap {
                continue; // inside a valid batch already counted
            }
            let pos = Lsn::new(base.get() + off as u64);
            let Ok(c) = check_batch(
                &bytes[off..],
                Expect {
                    lsn: Some(pos),
                    max_len: (cap - off) as u64,
                },
            ) else {
                continue;
            };
            let h = c.header;
            if base > geometry.base_of(self.at) {
                self.proof = Some(Proof::LaterSegment { at: pos });
                return true;
            }
            if h.flushed > self.at {
                self.proof = Some(Proof::Batch {
                    at: pos,
                    flushed: h.flushed,
                });
                return true;
            }
            self.batches += 1;
            self.until = self.until.max(h.end());
            next = off
                + if h.padding {
                    BATCH_HEADER_LEN
                } else {
                    h.len as usize
                };
        }
        false
    }

    pub(crate) fn verdict(&self) -> Verdict {
        match self.proof {
            Some(proof) => Verdict::Corruption(proof),
            None if self.batches == 0 => Verdict::TornTail,
            None => Verdict::Unflushed {
                batches: self.batches,
                until: self.until,
            },
        }
    }
}

/// Judges the spot `at` where the valid chain breaks in `segs[0]`, from the valid
/// batches after it there and in the later segments `segs[1..]` ([`Evidence`]).
pub(crate) fn judge(
    segs: &[(Lsn, &[u8])],
    geometry: Geometry,
    at: Lsn,
    closed: Option<Lsn>,
) -> Verdict {
    let mut e = Evidence::new(at, closed);
    for &(base, bytes) in segs {
        if e.look(base, bytes, geometry) {
            break;
        }
    }
    e.verdict()
}

/// An unflushed tail that recovery cut: valid batches after an invalid one, none of
/// them written after the invalid one had been flushed (their flush stamps say so), so
/// none was acknowledged: what a power loss leaves when the disk persisted later pages of
/// unflushed data but not an earlier one. See [`OpenReport`](crate::OpenReport).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnflushedCut {
    /// Where the log now ends: the first invalid batch.
    pub at: Lsn,
    /// What was wrong with it.
    pub reason: String,
    /// Valid batches found after it (padding included), discarded.
    pub discarded_batches: u64,
    /// The end of the last of them.
    pub discarded_until: Lsn,
}

/// What [`recover`] found.
#[derive(Debug)]
pub(crate) struct Recovered {
    /// The log's segments, contiguous, ascending; the last holds the end.
    pub(crate) segments: Vec<Segment>,
    /// Segment files beyond the tail holding no data: recyclable.
    pub(crate) spares: Vec<PathBuf>,
    pub(crate) start: Lsn,
    pub(crate) end: Lsn,
    pub(crate) last_epoch: Epoch,
    /// Bytes of torn tail that were zeroed.
    pub(crate) zeroed: u64,
    /// Where the log was cut because of corruption, in repair mode.
    pub(crate) repaired_at: Option<Lsn>,
    /// Where an unflushed tail was cut, if one was.
    pub(crate) unflushed: Option<UnflushedCut>,
}

fn list(fs: &dyn Storage, dir: &Path) -> Result<Vec<(Lsn, PathBuf)>> {
    let mut segs = Vec::new();
    let names = fs
        .list_dir(dir)
        .map_err(|e| Error::io("list log directory", dir, e))?;
    for name in names {
        let Some(name) = name.to_str() else { continue };
        let p = dir.join(name);
        if crate::layout::is_own_temporary(name) {
            fs.remove_file(&p)
                .map_err(|e| Error::io("remove leftover temporary file", &p, e))?;
        } else if let Some(base) = parse_segment_name(name) {
            segs.push((base, p));
        }
    }
    segs.sort();
    Ok(segs)
}

fn whole(s: &Segment) -> &[u8] {
    s.map.slice(0..s.map.len()).unwrap_or(&[])
}

/// Opens the segments of the log in `dir`, finds its end and zeroes the torn tail.
/// Creates the first segment at `create_base` if there is none.
///
/// The log is the chain of valid batches from the first segment. Where it breaks, the
/// valid batches after the spot decide ([`judge`]): none, or none proving the spot had
/// been flushed, and the log ends there (a torn write, or an unflushed tail a power loss
/// left out of order); one proving it flushed, and the bytes there are damage that
/// `RecoveryMode::Strict` refuses and `TruncateCorrupt` cuts.
pub(crate) fn recover(
    fs: &Arc<dyn Storage>,
    dir: &Path,
    geometry: Geometry,
    mode: RecoveryMode,
    verify_all: bool,
    create_base: Lsn,
    closed: Option<Lsn>,
) -> Result<Recovered> {
    let files = list(&**fs, dir)?;
    if files.is_empty() {
        let seg = segment::create(fs, dir, create_base, geometry)?;
        let start = geometry.first_batch(create_base);
        return Ok(Recovered {
            segments: vec![seg],
            spares: Vec::new(),
            start,
            end: start,
            last_epoch: Epoch::ZERO,
            zeroed: 0,
            repaired_at: None,
            unflushed: None,
        });
    }
    let mut segs = Vec::with_capacity(files.len());
    let n_files = files.len();
    for (i, (base, path)) in files.iter().enumerate() {
        if i > 0 {
            let prev = files[i - 1].0;
            if base.get() != prev.get() + geometry.capacity() {
                return Err(Error::corruption(
                    path,
                    0,
                    format!("segment gap: previous segment starts at {prev}, this one at {base}"),
                ));
            }
        }
        let seg = Segment::open(fs, path, *base, geometry)?;
        let hdr = seg
            .map
            .slice(0..SEGMENT_HEADER_LEN)
            .ok_or_else(|| Error::corruption(path, 0, "segment shorter than its header"))?;
        let h = SegmentHeader::decode(hdr)
            .map_err(|e| Error::corruption(path, 0, format!("segment header: {e}")))?;
        if h.base != *base || h.capacity != geometry.capacity() {
            return Err(Error::corruption(
                path,
                0,
                format!(
                    "segment header says base {} capacity {}, expected base {} capacity {}",
                    h.base,
                    h.capacity,
                    base,
                    geometry.capacity()
                ),
            ));
        }
        // Only the last segments can be written; the others need no descriptor.
        if i + 3 < n_files {
            seg.release_file();
        }
        segs.push(seg);
    }

    let has_first_batch = |s: &Segment| {
        let first = geometry.first_batch(s.base);
        check_batch(
            &whole(s)[SEGMENT_HEADER_LEN..],
            Expect {
                lsn: Some(first),
                max_len: geometry.capacity() - SEGMENT_HEADER_LEN as u64,
            },
        )
        .is_ok()
    };
    // The last segment holding data; only it and the one before are scanned batch by
    // batch, unless asked to verify everything. Repair scans everything: a cut must
    // never assume an unscanned segment is complete.
    let tail = segs.iter().rposition(has_first_batch).unwrap_or(0);
    let first_scanned = if verify_all || mode == RecoveryMode::TruncateCorrupt {
        0
    } else {
        tail.saturating_sub(1)
    };

    // Follow the chain to where it breaks.
    let mut prev_epoch = Epoch::ZERO;
    let mut end = geometry.first_batch(segs[0].base);
    let mut brk: Option<(usize, Lsn, FormatError)> = None;
    for (i, s) in segs.iter().enumerate().skip(first_scanned) {
        let scan = scan_bytes(whole(s), s.base, geometry, prev_epoch);
        if let Some((_, last)) = scan.epochs {
            prev_epoch = last;
        }
        end = scan.end;
        if !scan.complete {
            let (at, why) = scan.bad.unwrap_or((
                scan.end,
                FormatError::Truncated {
                    needed: 0,
                    available: 0,
                },
            ));
            brk = Some((i, at, why));
            break;
        }
    }

    let mut repaired_at = None;
    let mut unflushed = None;
    // Segments from `keep` on are not part of the log; `remove` says whether they are
    // deleted (after a repair) or kept as spares (zeroed where they claim positions).
    let mut keep = segs.len();
    let mut remove = false;
    if let Some((i, at, why)) = brk {
        let later: Vec<(Lsn, &[u8])> = segs[i..].iter().map(|s| (s.base, whole(s))).collect();
        let verdict = judge(&later, geometry, at, closed);
        match &verdict {
            Verdict::TornTail => {}
            Verdict::Unflushed { batches, until } => {
                tracing::warn!(at = %at, discarded = batches, until = %until, "cutting an unflushed tail left out of order by a power loss");
                unflushed = Some(UnflushedCut {
                    at,
                    reason: why.to_string(),
                    discarded_batches: *batches,
                    discarded_until: *until,
                });
            }
            Verdict::Corruption(_) => {
                let err = Error::corruption(
                    &segs[i].path,
                    geometry.offset_of(at),
                    verdict.explain(at, &why),
                );
                match mode {
                    RecoveryMode::Strict => return Err(err),
                    RecoveryMode::TruncateCorrupt => {
                        tracing::warn!(%err, "repair: truncating the log here");
                        repaired_at = Some(at);
                        remove = true;
                    }
                }
            }
        }
        keep = i + 1;
        // A break at the first batch of a segment: the log ends with the segment before.
        if i > 0 && end == geometry.first_batch(segs[i].base) {
            end = segs[i].base;
            keep = i;
        }
    }

    // Everything below changes the directory: the clean-close marker must not outlive
    // that (a repair that a crash interrupts must not meet it again).
    crate::marker::forget(&**fs, dir)?;
    let mut spares = Vec::new();
    let mut zeroed = 0;
    if remove {
        for s in segs.drain(keep..).rev() {
            fs.remove_file(&s.path)
                .map_err(|e| Error::io("remove segment after repair point", &s.path, e))?;
        }
        crate::fsutil::fsync_dir(&**fs, dir)?;
    } else {
        for s in segs.drain(keep..) {
            if claims_positions(whole(&s), s.base) {
                // Torn or unflushed batches of this life: zero them like any torn tail.
                let from = geometry.first_batch(s.base);
                zeroed += zero_nonzero(&s, from, Lsn::new(s.base.get() + geometry.capacity()))?;
            }
            spares.push(s.path.clone());
        }
    }

    // Zero the torn tail of the last segment.
    if let Some(last) = segs.last() {
        let seg_end = Lsn::new(last.base.get() + geometry.capacity());
        if end < seg_end {
            zeroed += zero_nonzero(last, end, seg_end)?;
        }
    }
    Ok(Recovered {
        start: geometry.first_batch(segs[0].base),
        segments: segs,
        spares,
        end,
        last_epoch: prev_epoch,
        zeroed,
        repaired_at,
        unflushed,
    })
}

/// Zeroes every non-zero 64 KiB-aligned chunk of `[from, to)` in `seg` and fsyncs if
/// anything was written. Returns the bytes written.
fn zero_nonzero(seg: &Segment, from: Lsn, to: Lsn) -> Result<u64> {
    const CHUNK: u64 = 64 * 1024;
    let file = seg.file()?;
    let mut written = 0;
    let mut at = from;
    while at < to {
        let next = Lsn::new(((at.get() / CHUNK) + 1) * CHUNK).min(to);
        let dirty = seg
            .slice(at, next)
            .is_some_and(|b| b.iter().any(|&x| x != 0));
        if dirty {
            let off = at.get() - seg.base.get();
            crate::fsutil::write_zeros(&*file, &seg.path, off, next.get() - at.get())?;
            written += next.get() - at.get();
        }
        at = next;
    }
    if written > 0 {
        file.sync_data()
            .map_err(|e| Error::io("fsync zeroed tail", &seg.path, e))?;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{encode_batch, encode_padding};
    use proptest::prelude::*;

    const CAP: u64 = 1 << 16;

    /// A segment image holding `sizes` as one-record batches; returns it and, per batch,
    /// `(end, position up to which it must be intact)`: all of it, or a padding's header.
    fn image(base: Lsn, sizes: &[usize]) -> (Vec<u8>, Vec<(Lsn, Lsn)>) {
        let g = Geometry::new(CAP);
        let mut img = vec![0u8; CAP as usize];
        img[..SEGMENT_HEADER_LEN].copy_from_slice(
            &SegmentHeader {
                base,
                capacity: CAP,
            }
            .encode(),
        );
        let mut pos = g.first_batch(base);
        let mut ends = Vec::new();
        for (i, &n) in sizes.iter().enumerate() {
            // Non-zero payloads: tearing must change bytes for the test to mean anything.
            let rec = vec![(i % 255) as u8 + 1; n];
            let end = Lsn::new(pos.get() + (BATCH_HEADER_LEN + 4 + n) as u64);
            if !g.fits(pos, end) {
                let seg_end = g.end_of(pos);
                let off = (pos.get() - base.get()) as usize;
                img[off..off + BATCH_HEADER_LEN].copy_from_slice(&encode_padding(
                    pos,
                    seg_end,
                    Epoch::new(1),
                ));
                ends.push((seg_end, Lsn::new(pos.get() + BATCH_HEADER_LEN as u64)));
                break;
            }
            let b = encode_batch(pos, Epoch::new(1), 0, &[rec]);
            let off = (pos.get() - base.get()) as usize;
            img[off..off + b.len()].copy_from_slice(&b);
            pos = end;
            ends.push((end, end));
        }
        (img, ends)
    }

    /// A segment image with one-record batches, each restamped to `stamp(batch base)`.
    fn stamped(base: Lsn, sizes: &[usize], stamp: impl Fn(Lsn) -> Lsn) -> (Vec<u8>, Vec<Lsn>) {
        let (mut img, ends) = image(base, sizes);
        let g = Geometry::new(CAP);
        let mut starts = vec![g.first_batch(base)];
        starts.extend(ends.iter().map(|&(end, _)| end));
        starts.truncate(ends.len());
        for &at in &starts {
            let off = (at.get() - base.get()) as usize;
            crate::format::restamp(&mut img[off..], stamp(at));
        }
        (img, starts)
    }

    #[test]
    fn the_batches_after_a_break_decide_what_it_is() {
        let g = Geometry::new(CAP);
        let base = Lsn::new(CAP);
        let sizes = [100, 200, 300, 400];
        // Written back to back with nothing flushed since the segment began.
        let (mut img, starts) = stamped(base, &sizes, |_| base);
        let at = starts[1];
        let off = (at.get() - base.get()) as usize + BATCH_HEADER_LEN + 5;
        img[off] ^= 1;
        assert_eq!(
            judge(&[(base, &img)], g, at, None),
            Verdict::Unflushed {
                batches: 2,
                until: Lsn::new(starts[3].get() + (BATCH_HEADER_LEN + 4 + 400) as u64)
            }
        );
        // The clean-close marker says more was flushed.
        assert!(matches!(
            judge(&[(base, &img)], g, at, Some(starts[3])),
            Verdict::Corruption(Proof::Closed { .. })
        ));
        assert_eq!(
            judge(&[(base, &img)], g, at, Some(at)),
            judge(&[(base, &img)], g, at, None)
        );
        // A later batch was written once the damaged one had been flushed.
        let (mut img2, _) = stamped(
            base,
            &sizes,
            |b| if b >= starts[3] { starts[2] } else { base },
        );
        img2[off] ^= 1;
        assert_eq!(
            judge(&[(base, &img2)], g, at, None),
            Verdict::Corruption(Proof::Batch {
                at: starts[3],
                flushed: starts[2]
            })
        );
        // Any valid batch in a later segment proves it, whatever its stamp (found by the
        // recovery fuzzer: a low stamp there once let an open trust an unscanned segment).
        let next = Lsn::new(2 * CAP);
        let (later, later_starts) = stamped(next, &[10], |_| Lsn::new(64));
        let torn_to_end: Vec<u8> = img[..off]
            .iter()
            .copied()
            .chain(std::iter::repeat_n(0, img.len() - off))
            .collect();
        assert_eq!(
            judge(&[(base, &torn_to_end), (next, &later)], g, at, None),
            Verdict::Corruption(Proof::LaterSegment {
                at: later_starts[0]
            })
        );
        // Nothing valid after it: a torn write.
        assert_eq!(
            judge(&[(base, &torn_to_end)], g, at, None),
            Verdict::TornTail
        );
    }

    proptest! {
        #[test]
        fn scan_stops_exactly_after_the_last_intact_batch(
            sizes in prop::collection::vec(1usize..3000, 1..40),
            tear in any::<prop::sample::Index>(),
            garbage in prop::collection::vec(any::<u8>(), 0..200),
        ) {
            let g = Geometry::new(CAP);
            let base = Lsn::new(CAP);
            let (mut img, ends) = image(base, &sizes);
            let last = ends.last().map_or(g.first_batch(base), |&(_, needs)| needs);
            // Tear anywhere in the written part: zero from there, then maybe garbage.
            let written = (last.get() - base.get()) as usize;
            let at = SEGMENT_HEADER_LEN + tear.index(written - SEGMENT_HEADER_LEN + 1);
            img[at..].iter_mut().for_each(|b| *b = 0);
            let n = garbage.len().min(img.len() - at);
            img[at..at + n].copy_from_slice(&garbage[..n]);
            let scan = scan_bytes(&img, base, g, Epoch::ZERO);
            let intact = ends
                .iter()
                .take_while(|(_, needs)| needs.get() - base.get() <= at as u64)
                .last()
                .map(|&(end, _)| end);
            prop_assert_eq!(scan.end, intact.unwrap_or(g.first_batch(base)));
            prop_assert!(scan.complete || judge(&[(base, &img)], g, scan.end, None) == Verdict::TornTail);
        }

        #[test]
        fn zero_skipping_finds_the_same_candidates_as_a_byte_by_byte_scan(
            spots in prop::collection::vec((0usize..(3 * 4096), any::<bool>()), 0..12),
            noise in prop::collection::vec((0usize..(3 * 4096), any::<u8>()), 0..6),
            first in 0usize..5000,
        ) {
            let base = Lsn::new(1 << 20);
            let mut bytes = vec![0u8; 3 * 4096 + 100];
            for (off, real) in spots {
                let lsn = base.get() + off as u64 + u64::from(!real);
                let end = (off + 16).min(bytes.len());
                if off + 8 < end {
                    let field = lsn.to_le_bytes();
                    bytes[off + 8..end].copy_from_slice(&field[..end - off - 8]);
                }
            }
            for (off, v) in noise {
                bytes[off] = v;
            }
            let naive: Vec<usize> = (first..=bytes.len() - BATCH_HEADER_LEN)
                .filter(|&o| bytes[o + 8..o + 16] == (base.get() + o as u64).to_le_bytes())
                .collect();
            let fast: Vec<usize> = candidates(&bytes, base, first).collect();
            prop_assert_eq!(fast, naive);
        }

        #[test]
        fn scanning_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
            let g = Geometry::new(CAP);
            let _ = scan_bytes(&bytes, Lsn::ZERO, g, Epoch::ZERO);
            let _ = judge(&[(Lsn::ZERO, &bytes)], g, Lsn::ZERO, None);
        }
    }
}
