//! Group commit, the in-memory half: where appended records go in the log.
//!
//! Appenders reserve LSN space here under the log's append lock, as PostgreSQL's WAL
//! insertion does: a record is copied into the *open batch* and learns its LSN at once.
//! The log writer takes everything pending in one call ([`Assembler::take`]), sealing the
//! open batch, so all records appended while the previous write or flush was in progress
//! go to disk together: that is the group commit.
//!
//! This module owns the layout rules and nothing else (no files, no threads), so they
//! are unit-tested directly:
//! - batches are contiguous in LSN space and never straddle a segment;
//! - a batch is capped at `max_batch_bytes` (a larger single record gets its own batch);
//! - when the next record does not fit in the current segment, a padding chunk fills it
//!   up and the record goes to the next segment, which must be provisioned first
//!   (a provisioning failure such as `ENOSPC` leaves the assembler unchanged);
//! - verbatim batches from a leader are checked for placement and order before anything
//!   is queued.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::format::{
    check_batch, encode_padding, push_record, Expect, FormatError, Geometry, BATCH_HEADER_LEN,
    RECORD_PREFIX_LEN,
};
use crate::types::{Epoch, Lsn};

/// A contiguous piece of the log waiting to be written.
#[derive(Debug)]
pub(crate) enum Chunk {
    /// A locally assembled batch: header placeholder then records. The writer fills in
    /// the header (timestamp, CRC) just before writing.
    Local {
        base: Lsn,
        buf: Vec<u8>,
        count: u32,
        epoch: Epoch,
    },
    /// A verified batch received verbatim (a follower's copy of the leader's log).
    Encoded { base: Lsn, bytes: Bytes },
    /// Padding from `base` to the segment end: this header, then zeros.
    Padding {
        base: Lsn,
        end: Lsn,
        header: [u8; BATCH_HEADER_LEN],
    },
}

impl Chunk {
    pub(crate) fn base(&self) -> Lsn {
        match self {
            Chunk::Local { base, .. }
            | Chunk::Encoded { base, .. }
            | Chunk::Padding { base, .. } => *base,
        }
    }

    pub(crate) fn end(&self) -> Lsn {
        match self {
            Chunk::Local { base, buf, .. } => Lsn::new(base.get() + buf.len() as u64),
            Chunk::Encoded { base, bytes } => Lsn::new(base.get() + bytes.len() as u64),
            Chunk::Padding { end, .. } => *end,
        }
    }
}

/// Where appends go next. Owned by the log behind its append lock.
#[derive(Debug)]
pub(crate) struct Assembler {
    geometry: Geometry,
    max_batch: usize,
    epoch: Epoch,
    /// Start of the open batch (or of the next chunk when the open batch is empty).
    pos: Lsn,
    open: Vec<u8>,
    open_count: u32,
    queue: VecDeque<Chunk>,
    /// Just past the last appended byte (record, verbatim batch or padding).
    end: Lsn,
    free: Vec<Vec<u8>>,
}

/// The epoch change a verbatim append introduces, to be recorded in the epoch history
/// before the batch is queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EpochStart {
    pub(crate) epoch: Epoch,
    pub(crate) start: Lsn,
}

impl Assembler {
    /// An assembler continuing a log that ends at `end`, in `epoch`.
    pub(crate) fn new(geometry: Geometry, max_batch: usize, end: Lsn, epoch: Epoch) -> Assembler {
        Assembler {
            geometry,
            max_batch: max_batch.max(BATCH_HEADER_LEN + RECORD_PREFIX_LEN),
            epoch,
            pos: end,
            open: Vec::new(),
            open_count: 0,
            queue: VecDeque::new(),
            end,
            free: Vec::new(),
        }
    }

    /// Just past the last appended byte.
    pub(crate) fn end(&self) -> Lsn {
        self.end
    }

    pub(crate) fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// Whether anything waits for the writer.
    pub(crate) fn has_pending(&self) -> bool {
        self.open_count > 0 || !self.queue.is_empty()
    }

    /// Seals the open batch and switches to `epoch` for later batches.
    pub(crate) fn set_epoch(&mut self, epoch: Epoch) {
        self.seal();
        self.epoch = epoch;
    }

    fn open_len(&self) -> usize {
        if self.open_count == 0 {
            BATCH_HEADER_LEN
        } else {
            self.open.len()
        }
    }

    fn seal(&mut self) {
        if self.open_count == 0 {
            return;
        }
        let buf = std::mem::take(&mut self.open);
        let base = self.pos;
        self.pos = Lsn::new(base.get() + buf.len() as u64);
        self.queue.push_back(Chunk::Local {
            base,
            buf,
            count: std::mem::take(&mut self.open_count),
            epoch: self.epoch,
        });
    }

    /// If `pos` sits exactly on a segment boundary (the previous segment ended with a
    /// full batch or padding), provision that segment and step over its header.
    fn cross_boundary_if_at_one(
        &mut self,
        ensure: &mut dyn FnMut(Lsn) -> Result<()>,
    ) -> Result<()> {
        if self.open_count == 0 && self.geometry.offset_of(self.pos) == 0 {
            ensure(self.pos)?;
            self.pos = self.geometry.first_batch(self.pos);
        }
        Ok(())
    }

    /// Appends one record and returns the LSN just past it.
    ///
    /// `ensure(base)` must make the segment at `base` available before anything is placed
    /// in it; if it fails, the assembler is left as it was (apart from the open batch
    /// possibly being sealed, which changes no LSN) and the error is returned.
    /// The caller has checked the record against the maximum record size.
    pub(crate) fn append(
        &mut self,
        record: &[u8],
        ensure: &mut dyn FnMut(Lsn) -> Result<()>,
    ) -> Result<Lsn> {
        let need = RECORD_PREFIX_LEN + record.len();
        self.cross_boundary_if_at_one(ensure)?;
        if self.open_count > 0 {
            let grown = self.open.len() + need;
            let end = Lsn::new(self.pos.get() + grown as u64);
            if grown > self.max_batch || !self.geometry.fits(self.pos, end) {
                self.seal();
                // The sealed batch may have filled its segment to the last byte.
                self.cross_boundary_if_at_one(ensure)?;
            }
        }
        if self.open_count == 0 {
            let end = Lsn::new(self.pos.get() + (BATCH_HEADER_LEN + need) as u64);
            if !self.geometry.fits(self.pos, end) {
                let seg_end = self.geometry.end_of(self.pos);
                ensure(seg_end)?;
                let header = encode_padding(self.pos, seg_end, self.epoch);
                self.queue.push_back(Chunk::Padding {
                    base: self.pos,
                    end: seg_end,
                    header,
                });
                self.pos = self.geometry.first_batch(seg_end);
            }
            let mut buf = self
                .free
                .pop()
                .unwrap_or_else(|| Vec::with_capacity(self.max_batch.min(1 << 20)));
            buf.clear();
            buf.resize(BATCH_HEADER_LEN, 0);
            self.open = buf;
        }
        push_record(&mut self.open, record);
        self.open_count += 1;
        debug_assert!(self.open_len() >= BATCH_HEADER_LEN);
        self.end = Lsn::new(self.pos.get() + self.open.len() as u64);
        Ok(self.end)
    }

    /// Checks verbatim batches for placement after the current end, without changing
    /// anything. Returns the segment bases that must be provisioned (in order), the epoch
    /// changes they introduce, and the chunks to queue.
    pub(crate) fn plan_encoded(&self, bytes: &Bytes) -> Result<EncodedPlan> {
        if self.open_count > 0 {
            return Err(Error::InvalidState {
                op: "append encoded batches",
                reason: format!(
                    "locally appended records up to {} are not yet sealed",
                    self.end
                ),
            });
        }
        let mut plan = EncodedPlan::default();
        let mut pos = self.pos;
        let mut epoch = self.epoch;
        let mut at = 0usize;
        let cap = self.geometry.capacity();
        while at < bytes.len() {
            if self.geometry.offset_of(pos) == 0 {
                plan.provision.push(pos);
                pos = self.geometry.first_batch(pos);
            }
            let bad = |source: FormatError| Error::BadBatch { lsn: pos, source };
            let checked = check_batch(
                &bytes[at..],
                Expect {
                    lsn: Some(pos),
                    max_len: cap,
                },
            )
            .map_err(bad)?;
            let h = checked.header;
            if h.epoch < epoch {
                return Err(bad(FormatError::EpochRegression {
                    previous: epoch,
                    found: h.epoch,
                }));
            }
            let seg_end = self.geometry.end_of(pos);
            let end = h.end();
            let misfit = if h.padding {
                end != seg_end
            } else {
                !self.geometry.fits(pos, end)
            };
            if misfit {
                return Err(bad(FormatError::SegmentBoundary {
                    start: pos,
                    end,
                    segment_end: seg_end,
                }));
            }
            if h.epoch > epoch {
                plan.epochs.push(EpochStart {
                    epoch: h.epoch,
                    start: pos,
                });
                epoch = h.epoch;
            }
            if h.padding {
                // Accept the header alone or the header with all its zeros (a batch header
                // is never all zeros, so the two cannot be confused); write zeros either way.
                let full = h.len as usize;
                let given = if bytes.len() - at >= full
                    && bytes[at + BATCH_HEADER_LEN..at + full]
                        .iter()
                        .all(|&b| b == 0)
                {
                    full
                } else {
                    BATCH_HEADER_LEN
                };
                let mut header = [0u8; BATCH_HEADER_LEN];
                header.copy_from_slice(&bytes[at..at + BATCH_HEADER_LEN]);
                plan.chunks.push(Chunk::Padding {
                    base: pos,
                    end: seg_end,
                    header,
                });
                at += given;
            } else {
                plan.chunks.push(Chunk::Encoded {
                    base: pos,
                    bytes: bytes.slice(at..at + h.len as usize),
                });
                at += h.len as usize;
            }
            pos = end;
        }
        plan.end = pos;
        plan.epoch = epoch;
        Ok(plan)
    }

    /// Queues a plan made by [`plan_encoded`](Self::plan_encoded) against the current state.
    pub(crate) fn apply_encoded(&mut self, plan: EncodedPlan) {
        self.queue.extend(plan.chunks);
        self.pos = plan.end;
        self.end = plan.end;
        self.epoch = plan.epoch;
    }

    /// Takes everything pending, sealing the open batch.
    pub(crate) fn take(&mut self, into: &mut Vec<Chunk>) {
        self.seal();
        into.extend(self.queue.drain(..));
    }

    /// Returns a written batch buffer for reuse.
    pub(crate) fn recycle_buf(&mut self, buf: Vec<u8>) {
        if self.free.len() < 64 && buf.capacity() <= 4 * self.max_batch {
            self.free.push(buf);
        }
    }

    /// Restarts at `end` after a truncation. Nothing may be pending.
    pub(crate) fn reset(&mut self, end: Lsn, epoch: Epoch) {
        debug_assert!(!self.has_pending());
        self.pos = end;
        self.end = end;
        self.epoch = epoch;
    }
}

/// The result of [`Assembler::plan_encoded`].
#[derive(Debug, Default)]
pub(crate) struct EncodedPlan {
    pub(crate) provision: Vec<Lsn>,
    pub(crate) epochs: Vec<EpochStart>,
    pub(crate) chunks: Vec<Chunk>,
    pub(crate) end: Lsn,
    pub(crate) epoch: Epoch,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{encode_batch, seal_header};

    const CAP: u64 = 1 << 16;
    const H: u64 = BATCH_HEADER_LEN as u64;

    fn asm(max_batch: usize) -> Assembler {
        let g = Geometry::new(CAP);
        Assembler::new(g, max_batch, g.first_batch(Lsn::ZERO), Epoch::new(1))
    }

    fn ok(_: Lsn) -> Result<()> {
        Ok(())
    }

    fn drain(a: &mut Assembler) -> Vec<Chunk> {
        let mut v = Vec::new();
        a.take(&mut v);
        v
    }

    #[test]
    fn records_group_into_one_batch_until_taken() {
        let mut a = asm(1 << 20);
        let l1 = a.append(b"aaaa", &mut ok).unwrap();
        let l2 = a.append(b"bb", &mut ok).unwrap();
        assert_eq!(l1, Lsn::new(64 + H + 8));
        assert_eq!(l2, Lsn::new(64 + H + 8 + 6));
        let chunks = drain(&mut a);
        assert_eq!(chunks.len(), 1);
        assert_eq!(chunks[0].base(), Lsn::new(64));
        assert_eq!(chunks[0].end(), l2);
        let l3 = a.append(b"c", &mut ok).unwrap();
        assert_eq!(l3, Lsn::new(l2.get() + H + 5), "a new batch after the take");
        assert!(!a.has_pending() || drain(&mut a).len() == 1);
    }

    #[test]
    fn batch_size_cap_splits_batches() {
        let mut a = asm(100);
        for _ in 0..10 {
            a.append(&[7u8; 20], &mut ok).unwrap();
        }
        let chunks = drain(&mut a);
        assert!(chunks.len() >= 4, "{} chunks", chunks.len());
        for w in chunks.windows(2) {
            assert_eq!(w[0].end(), w[1].base(), "contiguous");
        }
        for c in &chunks {
            assert!(c.end().get() - c.base().get() <= 100);
        }
    }

    #[test]
    fn pads_to_segment_end_and_provisions_next_segment() {
        let mut a = asm(1 << 20);
        let mut provisioned = Vec::new();
        let mut ensure = |b: Lsn| {
            provisioned.push(b);
            Ok(())
        };
        let big = vec![1u8; 30_000];
        a.append(&big, &mut ensure).unwrap();
        a.append(&big, &mut ensure).unwrap();
        let l = a.append(&big, &mut ensure).unwrap();
        assert_eq!(provisioned, vec![Lsn::new(CAP)]);
        let chunks = drain(&mut a);
        let pad = chunks
            .iter()
            .find(|c| matches!(c, Chunk::Padding { .. }))
            .unwrap();
        assert_eq!(pad.end(), Lsn::new(CAP));
        assert_eq!(l, Lsn::new(CAP + 64 + H + 4 + 30_000));
        for w in chunks.windows(2) {
            let next = if w[0].end() == Lsn::new(CAP) {
                Lsn::new(CAP + 64)
            } else {
                w[0].end()
            };
            assert_eq!(next, w[1].base());
        }
    }

    #[test]
    fn a_batch_filling_its_segment_exactly_moves_the_next_record_to_the_next_segment() {
        let mut a = asm(1 << 20);
        let mut provisioned = Vec::new();
        let mut ensure = |b: Lsn| {
            provisioned.push(b);
            Ok(())
        };
        let exact = (CAP - 64 - H - 4) as usize;
        assert_eq!(
            a.append(&vec![1u8; exact], &mut ensure).unwrap(),
            Lsn::new(CAP)
        );
        let l = a.append(b"next", &mut ensure).unwrap();
        assert_eq!(provisioned, vec![Lsn::new(CAP)]);
        assert_eq!(l, Lsn::new(CAP + 64 + H + 8));
        let chunks = drain(&mut a);
        assert_eq!(chunks.len(), 2);
        assert_eq!(chunks[0].end(), Lsn::new(CAP));
        assert_eq!(chunks[1].base(), Lsn::new(CAP + 64));
    }

    #[test]
    fn provisioning_failure_changes_nothing() {
        let mut a = asm(1 << 20);
        a.append(&vec![1u8; 60_000], &mut ok).unwrap();
        drain(&mut a);
        let end = a.end();
        let mut fail = |_: Lsn| {
            Err(Error::NoSpace {
                op: "test",
                path: "x".into(),
            })
        };
        assert!(matches!(
            a.append(&vec![1u8; 10_000], &mut fail),
            Err(Error::NoSpace { .. })
        ));
        assert_eq!(a.end(), end);
        assert!(!a.has_pending());
        let l = a.append(&vec![1u8; 10_000], &mut ok).unwrap();
        assert!(l > Lsn::new(CAP));
    }

    #[test]
    fn batch_never_leaves_less_than_a_header_before_segment_end() {
        let g = Geometry::new(CAP);
        for size in [0usize, 1, 3, 17, 100, 1000, 4000] {
            let mut a = asm(1 << 20);
            let mut pending = Vec::new();
            while a.end() < Lsn::new(3 * CAP) {
                a.append(&vec![0u8; size], &mut ok).unwrap();
                a.take(&mut pending);
            }
            for c in &pending {
                assert!(
                    g.fits(c.base(), c.end()),
                    "size {size}: chunk {:?}..{:?}",
                    c.base(),
                    c.end()
                );
            }
        }
    }

    #[test]
    fn encoded_plan_checks_position_epoch_and_fit() {
        let a = asm(1 << 20);
        let b1 = encode_batch(Lsn::new(64), Epoch::new(2), 9, &[b"x".as_slice()]);
        let b2 = encode_batch(
            Lsn::new(64 + b1.len() as u64),
            Epoch::new(2),
            9,
            &[b"yy".as_slice()],
        );
        let mut both = b1.clone();
        both.extend_from_slice(&b2);
        let plan = a.plan_encoded(&Bytes::from(both)).unwrap();
        assert_eq!(plan.chunks.len(), 2);
        assert_eq!(
            plan.epochs,
            vec![EpochStart {
                epoch: Epoch::new(2),
                start: Lsn::new(64)
            }]
        );

        let misplaced = encode_batch(Lsn::new(65), Epoch::new(2), 9, &[b"x".as_slice()]);
        assert!(matches!(
            a.plan_encoded(&Bytes::from(misplaced)),
            Err(Error::BadBatch {
                source: FormatError::LsnMismatch { .. },
                ..
            })
        ));
        let old = encode_batch(Lsn::new(64), Epoch::new(0), 9, &[b"x".as_slice()]);
        assert!(matches!(
            a.plan_encoded(&Bytes::from(old)),
            Err(Error::BadBatch {
                source: FormatError::EpochRegression { .. },
                ..
            })
        ));
        // A batch leaving 10 bytes before the segment end is refused.
        let body = CAP as usize - 64 - 10 - BATCH_HEADER_LEN - 4;
        let misfit = encode_batch(Lsn::new(64), Epoch::new(1), 9, &[vec![0u8; body]]);
        assert!(matches!(
            a.plan_encoded(&Bytes::from(misfit)),
            Err(Error::BadBatch {
                source: FormatError::SegmentBoundary { .. },
                ..
            })
        ));
    }

    #[test]
    fn encoded_padding_then_next_segment() {
        let mut a = asm(1 << 20);
        let mut pad = [0u8; BATCH_HEADER_LEN];
        seal_header(
            &mut pad,
            (CAP - 64) as u32,
            Lsn::new(64),
            Epoch::new(1),
            0,
            0,
            true,
            Lsn::new(64),
        );
        let next = encode_batch(Lsn::new(CAP + 64), Epoch::new(1), 1, &[b"z".as_slice()]);
        let mut bytes = pad.to_vec();
        bytes.extend_from_slice(&next);
        let plan = a.plan_encoded(&Bytes::from(bytes)).unwrap();
        assert_eq!(plan.provision, vec![Lsn::new(CAP)]);
        assert_eq!(plan.end, Lsn::new(CAP + 64 + next.len() as u64));
        a.apply_encoded(plan);
        assert_eq!(drain(&mut a).len(), 2);
        a.append(b"local", &mut ok).unwrap();
        assert!(
            a.plan_encoded(&Bytes::new()).is_err(),
            "mixing local and verbatim appends"
        );
    }
}
