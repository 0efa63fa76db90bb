//! On-disk format: segment headers, batches, records and padding.
//!
//! This module owns every byte layout the engine writes and the decoders that read
//! them back. Decoders take untrusted bytes: they never panic, never read out of
//! bounds and never allocate in proportion to a length field; every malformed input is
//! a [`FormatError`].
//!
//! # Segment header (64 bytes, at offset 0 of every segment file)
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 8 | magic `WALSHSEG` |
//! | 8 | 4 | format version (2), little-endian |
//! | 12 | 4 | header length (64) |
//! | 16 | 8 | base LSN of the segment |
//! | 24 | 8 | segment capacity in bytes (power of two) |
//! | 32 | 28 | reserved, zero |
//! | 60 | 4 | CRC32C of bytes 0..60 |
//!
//! # Batch (the unit of group commit, CRC and shipping)
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 4 | total length of the batch, header included |
//! | 4 | 4 | CRC32C of bytes 0..4, 8..40 and 48..len (0..4 and 8..40 for padding) |
//! | 8 | 8 | base LSN: where this batch starts in the log |
//! | 16 | 8 | epoch it was written in |
//! | 24 | 8 | commit timestamp, µs since the Unix epoch (leader clock) |
//! | 32 | 4 | record count |
//! | 36 | 2 | flags: bit 0 = padding |
//! | 38 | 2 | magic `0xB47C` |
//! | 40 | 4 | flush stamp: base LSN − the flushed LSN the writer of this copy knew when it wrote the batch (saturating) |
//! | 44 | 4 | CRC32C of bytes 4..16 and 40..44: the stamp, bound to this batch's CRC and position |
//! | 48 | … | records, each: length (4 bytes LE), then the payload |
//!
//! # The flush stamp
//!
//! Every copy of a log stamps its own: the writer sets it when it writes the batch, to
//! what it knew to be durable then (a follower restamps the leader's batches as it
//! writes them, which is why the stamp has its own CRC instead of being covered by the
//! batch's). A valid batch whose stamp says `F` proves that every byte before `F` had been
//! flushed before it was written. Recovery uses that to tell the two things an invalid
//! batch followed by a valid one can be: damage to bytes that had been flushed (some later
//! stamp reaches past them: refuse to open), or the unflushed tail of a power loss,
//! where the disk persisted a later page but not an earlier one (no later stamp reaches
//! past them: nothing there was ever acknowledged, so the log ends before them). Copies
//! of a log are byte-identical except for the stamps ([`same_batch`]).
//!
//! Batches never straddle a segment. The tail of a segment that cannot hold the next
//! batch is a *padding* batch: a header with the padding flag whose length reaches
//! exactly the end of the segment, followed by zeros. A batch is only placed so that
//! it ends exactly at the segment end or leaves room for a padding header, so every
//! segment is a gapless chain of batches from its header to its end.
//!
//! The length field is covered by the CRC and the record lengths must add up to it, so
//! every single-bit flip and every truncation is detected.

use bytes::Bytes;

use crate::types::{Epoch, Lsn};

/// Length of the segment header.
pub const SEGMENT_HEADER_LEN: usize = 64;
/// Length of a batch header.
pub const BATCH_HEADER_LEN: usize = 48;
/// The bytes of a batch header holding the flush stamp and its CRC, which each copy of
/// a log writes for itself and the batch CRC does not cover.
pub const STAMP_RANGE: std::ops::Range<usize> = 40..48;
/// Length of a record's length prefix.
pub const RECORD_PREFIX_LEN: usize = 4;
/// Current format version (2 added the flush stamp to batch headers).
pub const FORMAT_VERSION: u32 = 2;

const SEGMENT_MAGIC: &[u8; 8] = b"WALSHSEG";
const BATCH_MAGIC: u16 = 0xB47C;
const FLAG_PADDING: u16 = 1;
const KNOWN_FLAGS: u16 = FLAG_PADDING;

/// Why bytes failed to decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// Fewer bytes than the structure needs.
    #[error("truncated: need {needed} bytes, have {available}")]
    Truncated {
        /// Bytes required.
        needed: u64,
        /// Bytes present.
        available: u64,
    },
    /// The magic number is wrong: these are not walship bytes (or they are zeros).
    #[error("bad magic {found:#x}")]
    BadMagic {
        /// What was found.
        found: u64,
    },
    /// An unknown format version.
    #[error("unsupported format version {found} (this build reads version {FORMAT_VERSION})")]
    UnsupportedVersion {
        /// The version found.
        found: u32,
    },
    /// A length field is out of range.
    #[error("length {len} out of range {min}..={max}")]
    BadLength {
        /// The length found.
        len: u64,
        /// Smallest allowed.
        min: u64,
        /// Largest allowed.
        max: u64,
    },
    /// The checksum does not match.
    #[error("CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch {
        /// CRC in the bytes.
        stored: u32,
        /// CRC of the bytes.
        computed: u32,
    },
    /// The flush stamp's own checksum does not match (a torn or damaged header).
    #[error("flush stamp CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    StampMismatch {
        /// CRC in the bytes.
        stored: u32,
        /// CRC of the stamp.
        computed: u32,
    },
    /// The batch is not where it claims to be (misplaced or stale bytes).
    #[error("LSN mismatch: batch says {found}, expected {expected}")]
    LsnMismatch {
        /// Where it should start.
        expected: Lsn,
        /// What its header says.
        found: Lsn,
    },
    /// Unknown flag bits are set.
    #[error("unknown flags {flags:#06x}")]
    UnknownFlags {
        /// The flags found.
        flags: u16,
    },
    /// The records do not exactly fill the batch.
    #[error("record framing: {reason}")]
    Framing {
        /// What is inconsistent.
        reason: String,
    },
    /// The epoch went backwards.
    #[error("epoch regression: {found} after {previous}")]
    EpochRegression {
        /// The epoch of the previous batch.
        previous: Epoch,
        /// The epoch found.
        found: Epoch,
    },
    /// A batch would cross the end of its segment, or padding does not reach it exactly.
    #[error("batch [{start}, {end}) does not fit its segment ending at {segment_end}")]
    SegmentBoundary {
        /// Batch start.
        start: Lsn,
        /// Batch end.
        end: Lsn,
        /// Segment end.
        segment_end: Lsn,
    },
    /// A segment header disagrees with the log.
    #[error("segment header mismatch: {reason}")]
    SegmentMismatch {
        /// What disagrees.
        reason: String,
    },
}

fn le_u16(b: &[u8], at: usize) -> u16 {
    let mut a = [0u8; 2];
    a.copy_from_slice(&b[at..at + 2]);
    u16::from_le_bytes(a)
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn need(buf: &[u8], n: usize) -> Result<(), FormatError> {
    if buf.len() < n {
        Err(FormatError::Truncated {
            needed: n as u64,
            available: buf.len() as u64,
        })
    } else {
        Ok(())
    }
}

// ---------------------------------------------------------------------------------
// Segment header

/// The decoded header of a segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// LSN of the segment's first byte (the header's own first byte).
    pub base: Lsn,
    /// Size of the segment file and its span of LSN space.
    pub capacity: u64,
}

impl SegmentHeader {
    /// Encodes the header.
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut b = [0u8; SEGMENT_HEADER_LEN];
        b[0..8].copy_from_slice(SEGMENT_MAGIC);
        b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&(SEGMENT_HEADER_LEN as u32).to_le_bytes());
        b[16..24].copy_from_slice(&self.base.get().to_le_bytes());
        b[24..32].copy_from_slice(&self.capacity.to_le_bytes());
        let crc = crc32c::crc32c(&b[..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes and checks a header.
    ///
    /// # Errors
    /// Truncation, bad magic, unknown version, CRC mismatch, or a capacity that is not
    /// a power of two or a base that is not aligned to it.
    pub fn decode(buf: &[u8]) -> Result<SegmentHeader, FormatError> {
        need(buf, SEGMENT_HEADER_LEN)?;
        if &buf[0..8] != SEGMENT_MAGIC {
            return Err(FormatError::BadMagic {
                found: le_u64(buf, 0),
            });
        }
        let stored = le_u32(buf, 60);
        let computed = crc32c::crc32c(&buf[..60]);
        if stored != computed {
            return Err(FormatError::CrcMismatch { stored, computed });
        }
        let version = le_u32(buf, 8);
        if version != FORMAT_VERSION {
            return Err(FormatError::UnsupportedVersion { found: version });
        }
        let hlen = le_u32(buf, 12);
        if hlen as usize != SEGMENT_HEADER_LEN {
            return Err(FormatError::BadLength {
                len: u64::from(hlen),
                min: SEGMENT_HEADER_LEN as u64,
                max: SEGMENT_HEADER_LEN as u64,
            });
        }
        let base = le_u64(buf, 16);
        let capacity = le_u64(buf, 24);
        check_capacity(capacity).map_err(|reason| FormatError::SegmentMismatch { reason })?;
        if base % capacity != 0 {
            return Err(FormatError::SegmentMismatch {
                reason: format!("base {base:#x} is not a multiple of capacity {capacity}"),
            });
        }
        Ok(SegmentHeader {
            base: Lsn::new(base),
            capacity,
        })
    }
}

/// Smallest segment capacity accepted.
pub const MIN_SEGMENT_CAPACITY: u64 = 64 * 1024;
/// Largest segment capacity accepted (the batch length field is 32 bits).
pub const MAX_SEGMENT_CAPACITY: u64 = 1 << 30;

/// Checks that a segment capacity is a power of two within range.
pub fn check_capacity(capacity: u64) -> Result<(), String> {
    if !capacity.is_power_of_two()
        || !(MIN_SEGMENT_CAPACITY..=MAX_SEGMENT_CAPACITY).contains(&capacity)
    {
        return Err(format!(
            "segment capacity {capacity} must be a power of two between {MIN_SEGMENT_CAPACITY} and {MAX_SEGMENT_CAPACITY}"
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// Segment geometry

/// Arithmetic on LSNs for a given segment capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    capacity: u64,
}

impl Geometry {
    /// Geometry for a capacity already checked with [`check_capacity`].
    pub fn new(capacity: u64) -> Geometry {
        Geometry { capacity }
    }

    /// Segment capacity.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Base LSN of the segment holding the byte at `lsn`.
    pub fn base_of(&self, lsn: Lsn) -> Lsn {
        Lsn::new(lsn.get() & !(self.capacity - 1))
    }

    /// End LSN (exclusive) of the segment holding the byte at `lsn`.
    pub fn end_of(&self, lsn: Lsn) -> Lsn {
        Lsn::new(self.base_of(lsn).get() + self.capacity)
    }

    /// First batch position in the segment starting at `base`.
    pub fn first_batch(&self, base: Lsn) -> Lsn {
        Lsn::new(base.get() + SEGMENT_HEADER_LEN as u64)
    }

    /// Offset of `lsn` within its segment file.
    pub fn offset_of(&self, lsn: Lsn) -> u64 {
        lsn.get() & (self.capacity - 1)
    }

    /// Whether a batch `[start, end)` may be placed: it must end at or before the
    /// segment end, and if before, leave room for a padding header.
    pub fn fits(&self, start: Lsn, end: Lsn) -> bool {
        let seg_end = self.end_of(start).get();
        let e = end.get();
        e == seg_end || e.saturating_add(BATCH_HEADER_LEN as u64) <= seg_end
    }

    /// The largest record payload the log accepts: alone in an empty segment, its batch
    /// still leaves room for the padding header that must describe the rest of the
    /// segment. (A record that would leave 1 to 39 bytes of an empty segment could be
    /// placed nowhere: not in that segment, since no padding fits after it, and not in
    /// the next one either, for the same reason.)
    pub fn max_payload(&self) -> u64 {
        self.capacity - (SEGMENT_HEADER_LEN + 2 * BATCH_HEADER_LEN + RECORD_PREFIX_LEN) as u64
    }
}

// ---------------------------------------------------------------------------------
// Batch header

/// The decoded header of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    /// Total length, header included.
    pub len: u32,
    /// Stored CRC32C.
    pub crc: u32,
    /// Where the batch starts in the log.
    pub base: Lsn,
    /// Epoch the batch was written in.
    pub epoch: Epoch,
    /// Commit timestamp, µs since the Unix epoch.
    pub timestamp_us: u64,
    /// Number of records.
    pub record_count: u32,
    /// Whether this is a padding batch.
    pub padding: bool,
    /// The flush stamp: every byte before this LSN had been flushed by the log holding
    /// this copy when it wrote the batch (see the module documentation).
    pub flushed: Lsn,
}

impl BatchHeader {
    /// End LSN of the batch.
    pub fn end(&self) -> Lsn {
        Lsn::new(self.base.get() + u64::from(self.len))
    }

    /// Decodes the fixed fields of a header without checking the CRC (which needs the
    /// body). Checks magic, flags and that the length is at least a header.
    ///
    /// # Errors
    /// Truncation, bad magic, unknown flags, a length shorter than a header or longer
    /// than `max_len` or than the LSN space left after the batch's base.
    pub fn decode(buf: &[u8], max_len: u64) -> Result<BatchHeader, FormatError> {
        need(buf, BATCH_HEADER_LEN)?;
        let magic = le_u16(buf, 38);
        if magic != BATCH_MAGIC {
            return Err(FormatError::BadMagic {
                found: u64::from(magic),
            });
        }
        let flags = le_u16(buf, 36);
        if flags & !KNOWN_FLAGS != 0 {
            return Err(FormatError::UnknownFlags { flags });
        }
        let len = le_u32(buf, 0);
        let base = le_u64(buf, 8);
        // The batch's LSN range must exist: `base + len` (every record's end) fits a u64.
        let max_len = max_len.min(u64::MAX - base);
        if u64::from(len) < BATCH_HEADER_LEN as u64 || u64::from(len) > max_len {
            return Err(FormatError::BadLength {
                len: u64::from(len),
                min: BATCH_HEADER_LEN as u64,
                max: max_len,
            });
        }
        Ok(BatchHeader {
            len,
            crc: le_u32(buf, 4),
            base: Lsn::new(base),
            epoch: Epoch::new(le_u64(buf, 16)),
            timestamp_us: le_u64(buf, 24),
            record_count: le_u32(buf, 32),
            padding: flags & FLAG_PADDING != 0,
            flushed: Lsn::new(base.saturating_sub(u64::from(le_u32(buf, 40)))),
        })
    }
}

/// Writes a complete batch header into `buf[..BATCH_HEADER_LEN]`: computes the CRC over
/// `buf[..len]` (the whole batch for data, the header alone for padding) and stamps it
/// with `flushed`.
///
/// `buf` must hold the whole batch for a data batch, or at least the header for padding.
#[allow(clippy::too_many_arguments)]
pub(crate) fn seal_header(
    buf: &mut [u8],
    len: u32,
    base: Lsn,
    epoch: Epoch,
    timestamp_us: u64,
    record_count: u32,
    padding: bool,
    flushed: Lsn,
) {
    buf[0..4].copy_from_slice(&len.to_le_bytes());
    buf[8..16].copy_from_slice(&base.get().to_le_bytes());
    buf[16..24].copy_from_slice(&epoch.get().to_le_bytes());
    buf[24..32].copy_from_slice(&timestamp_us.to_le_bytes());
    buf[32..36].copy_from_slice(&record_count.to_le_bytes());
    let flags = if padding { FLAG_PADDING } else { 0 };
    buf[36..38].copy_from_slice(&flags.to_le_bytes());
    buf[38..40].copy_from_slice(&BATCH_MAGIC.to_le_bytes());
    let covered = if padding {
        BATCH_HEADER_LEN
    } else {
        len as usize
    };
    let crc = batch_crc(&buf[..covered]);
    buf[4..8].copy_from_slice(&crc.to_le_bytes());
    restamp(buf, flushed);
}

/// CRC of a batch: over the length field and everything after the CRC field but the
/// flush stamp.
fn batch_crc(covered: &[u8]) -> u32 {
    let c = crc32c::crc32c(&covered[0..4]);
    let c = crc32c::crc32c_append(c, &covered[8..STAMP_RANGE.start]);
    crc32c::crc32c_append(c, covered.get(STAMP_RANGE.end..).unwrap_or(&[]))
}

/// CRC of a flush stamp: over the batch CRC, the base LSN and the stamp, so a stamp left
/// over from another batch (a recycled segment's previous life, a torn write) never
/// checks.
fn stamp_crc(header: &[u8]) -> u32 {
    let c = crc32c::crc32c(&header[4..16]);
    crc32c::crc32c_append(c, &header[STAMP_RANGE.start..STAMP_RANGE.start + 4])
}

/// Rewrites the flush stamp of the encoded batch (or padding header) at the start of
/// `batch` to say that every byte before `flushed` was durable when it was written
/// (a stamp can only understate: `flushed` is clamped to at most 4 GiB before the batch).
/// The batch CRC is unchanged; the stamp gets its own. Writers call it as they write a
/// batch; tests use it to build logs as a writer with a given flushed position would.
///
/// # Panics
/// If `batch` is shorter than a batch header (a caller's bug, not untrusted input).
///
/// ```
/// use walship_engine::format::{check_batch, encode_batch, restamp, Expect};
/// use walship_engine::{Epoch, Lsn};
/// let mut b = encode_batch(Lsn::new(4096), Epoch::new(1), 0, &[b"x".as_slice()]);
/// restamp(&mut b, Lsn::new(1024));
/// assert_eq!(check_batch(&b, Expect::default())?.header.flushed, Lsn::new(1024));
/// # Ok::<(), walship_engine::format::FormatError>(())
/// ```
pub fn restamp(batch: &mut [u8], flushed: Lsn) {
    let base = le_u64(batch, 8);
    let lag = base.saturating_sub(flushed.get()).min(u64::from(u32::MAX)) as u32;
    batch[STAMP_RANGE.start..STAMP_RANGE.start + 4].copy_from_slice(&lag.to_le_bytes());
    let crc = stamp_crc(batch);
    batch[STAMP_RANGE.start + 4..STAMP_RANGE.end].copy_from_slice(&crc.to_le_bytes());
}

/// Whether two encoded batches are the same batch: byte-identical except for the flush
/// stamp each copy of a log writes for itself. How replicas of a log compare.
pub fn same_batch(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len()
        && a.len() >= BATCH_HEADER_LEN
        && a[..STAMP_RANGE.start] == b[..STAMP_RANGE.start]
        && a[STAMP_RANGE.end..] == b[STAMP_RANGE.end..]
}

/// Encodes a padding header for `[start, segment end)`, stamped as if everything before
/// `start` had been flushed.
pub fn encode_padding(start: Lsn, segment_end: Lsn, epoch: Epoch) -> [u8; BATCH_HEADER_LEN] {
    let mut b = [0u8; BATCH_HEADER_LEN];
    let len = (segment_end.get() - start.get()) as u32;
    seal_header(&mut b, len, start, epoch, 0, 0, true, start);
    b
}

/// Encodes one data batch of `records` starting at `base`, stamped as if everything
/// before `base` had been flushed ([`restamp`] says otherwise): a convenience for tests,
/// tools and fuzz seeds (the log writer builds batches in place).
pub fn encode_batch<R: AsRef<[u8]>>(
    base: Lsn,
    epoch: Epoch,
    timestamp_us: u64,
    records: &[R],
) -> Vec<u8> {
    let body: usize = records
        .iter()
        .map(|r| RECORD_PREFIX_LEN + r.as_ref().len())
        .sum();
    let mut buf = vec![0u8; BATCH_HEADER_LEN];
    buf.reserve(body);
    for r in records {
        push_record(&mut buf, r.as_ref());
    }
    let len = buf.len() as u32;
    seal_header(
        &mut buf,
        len,
        base,
        epoch,
        timestamp_us,
        records.len() as u32,
        false,
        base,
    );
    buf
}

/// Appends one length-prefixed record to a batch under construction.
pub(crate) fn push_record(buf: &mut Vec<u8>, record: &[u8]) {
    buf.extend_from_slice(&(record.len() as u32).to_le_bytes());
    buf.extend_from_slice(record);
}

/// What a batch decoder checks beyond the batch's own integrity.
#[derive(Debug, Clone, Copy)]
pub struct Expect {
    /// The LSN the batch must start at, if known.
    pub lsn: Option<Lsn>,
    /// The largest acceptable batch length.
    pub max_len: u64,
}

impl Default for Expect {
    fn default() -> Expect {
        Expect {
            lsn: None,
            max_len: MAX_SEGMENT_CAPACITY,
        }
    }
}

/// A batch that passed every check: header, CRC, record framing.
#[derive(Debug, Clone, Copy)]
pub struct CheckedBatch {
    /// Its header.
    pub header: BatchHeader,
}

/// Decodes and fully verifies the batch at the start of `buf`.
///
/// For a padding batch only the header must be present (its body is zeros and not
/// covered by the CRC); for a data batch `buf` must hold all `len` bytes.
///
/// # Errors
/// Any [`FormatError`]; never panics on any input.
pub fn check_batch(buf: &[u8], expect: Expect) -> Result<CheckedBatch, FormatError> {
    let header = BatchHeader::decode(buf, expect.max_len)?;
    if header.padding {
        let stored = header.crc;
        let computed = batch_crc(&buf[..BATCH_HEADER_LEN]);
        if stored != computed {
            return Err(FormatError::CrcMismatch { stored, computed });
        }
        if header.record_count != 0 {
            return Err(FormatError::Framing {
                reason: format!("padding batch claims {} records", header.record_count),
            });
        }
    } else {
        need(buf, header.len as usize)?;
        let covered = &buf[..header.len as usize];
        let stored = header.crc;
        let computed = batch_crc(covered);
        if stored != computed {
            return Err(FormatError::CrcMismatch { stored, computed });
        }
        check_framing(&covered[BATCH_HEADER_LEN..], header.record_count)?;
    }
    let stored = le_u32(buf, STAMP_RANGE.start + 4);
    let computed = stamp_crc(buf);
    if stored != computed {
        return Err(FormatError::StampMismatch { stored, computed });
    }
    if let Some(expected) = expect.lsn {
        if header.base != expected {
            return Err(FormatError::LsnMismatch {
                expected,
                found: header.base,
            });
        }
    }
    Ok(CheckedBatch { header })
}

fn check_framing(body: &[u8], count: u32) -> Result<(), FormatError> {
    let mut at = 0usize;
    for i in 0..count {
        if body.len() - at < RECORD_PREFIX_LEN {
            return Err(FormatError::Framing {
                reason: format!("record {i} of {count}: length prefix cut at body offset {at}"),
            });
        }
        let len = le_u32(body, at) as usize;
        at += RECORD_PREFIX_LEN;
        if body.len() - at < len {
            return Err(FormatError::Framing {
                reason: format!(
                    "record {i} of {count}: {len} bytes claimed, {} left",
                    body.len() - at
                ),
            });
        }
        at += len;
    }
    if at != body.len() {
        return Err(FormatError::Framing {
            reason: format!(
                "{count} records end at body offset {at}, batch body is {} bytes",
                body.len()
            ),
        });
    }
    Ok(())
}

/// Iterates the records of a verified data batch as `(end LSN, payload)`.
///
/// Only call on bytes that passed [`check_batch`]; on anything else it stops early
/// rather than panic.
pub fn records<'a>(batch: &'a [u8], header: &BatchHeader) -> RecordIter<'a> {
    RecordIter {
        buf: batch,
        at: BATCH_HEADER_LEN,
        end: (header.len as usize).min(batch.len()),
        base: header.base,
        left: if header.padding {
            0
        } else {
            header.record_count
        },
    }
}

/// Iterator returned by [`records`].
#[derive(Debug, Clone)]
pub struct RecordIter<'a> {
    buf: &'a [u8],
    at: usize,
    end: usize,
    base: Lsn,
    left: u32,
}

impl<'a> RecordIter<'a> {
    /// The next record as `(offset of payload within the batch, payload length, end LSN)`.
    pub fn next_span(&mut self) -> Option<(usize, usize, Lsn)> {
        if self.left == 0 || self.end - self.at.min(self.end) < RECORD_PREFIX_LEN {
            return None;
        }
        let len = le_u32(self.buf, self.at) as usize;
        let start = self.at + RECORD_PREFIX_LEN;
        if self.end - start < len {
            return None;
        }
        self.at = start + len;
        self.left -= 1;
        Some((start, len, Lsn::new(self.base.get() + self.at as u64)))
    }
}

impl<'a> Iterator for RecordIter<'a> {
    type Item = (Lsn, &'a [u8]);

    fn next(&mut self) -> Option<(Lsn, &'a [u8])> {
        let (start, len, end) = self.next_span()?;
        Some((end, &self.buf[start..start + len]))
    }
}

/// One record, zero-copy over the log's mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// LSN just past the record: its commit token.
    pub lsn: Lsn,
    /// Epoch of the batch holding it.
    pub epoch: Epoch,
    /// The payload.
    pub data: Bytes,
}

// ---------------------------------------------------------------------------------
// Log meta file and clean-close marker

/// Length of the log's small state files (meta file, clean-close marker): magic (8),
/// format version (4), zero (4), one u64 value (8), zero (4), CRC32C of 0..28 (4).
const SMALL_FILE_LEN: usize = 32;
/// Length of the meta file.
pub(crate) const META_LEN: usize = SMALL_FILE_LEN;
/// Length of the clean-close marker file.
pub(crate) const CLOSED_LEN: usize = SMALL_FILE_LEN;
const META_MAGIC: &[u8; 8] = b"WALSHMET";
const CLOSED_MAGIC: &[u8; 8] = b"WALSHCLO";

fn encode_small_file(magic: &[u8; 8], value: u64) -> [u8; SMALL_FILE_LEN] {
    let mut b = [0u8; SMALL_FILE_LEN];
    b[0..8].copy_from_slice(magic);
    b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    b[16..24].copy_from_slice(&value.to_le_bytes());
    let crc = crc32c::crc32c(&b[..28]);
    b[28..32].copy_from_slice(&crc.to_le_bytes());
    b
}

fn decode_small_file(buf: &[u8], magic: &[u8; 8]) -> Result<u64, FormatError> {
    need(buf, SMALL_FILE_LEN)?;
    if &buf[0..8] != magic {
        return Err(FormatError::BadMagic {
            found: le_u64(buf, 0),
        });
    }
    let stored = le_u32(buf, 28);
    let computed = crc32c::crc32c(&buf[..28]);
    if stored != computed {
        return Err(FormatError::CrcMismatch { stored, computed });
    }
    let version = le_u32(buf, 8);
    if version != FORMAT_VERSION {
        return Err(FormatError::UnsupportedVersion { found: version });
    }
    Ok(le_u64(buf, 16))
}

/// Encodes the log meta file (created once with the log; records the capacity).
pub(crate) fn encode_meta(capacity: u64) -> [u8; META_LEN] {
    encode_small_file(META_MAGIC, capacity)
}

/// Decodes the meta file, returning the segment capacity.
pub(crate) fn decode_meta(buf: &[u8]) -> Result<u64, FormatError> {
    let capacity = decode_small_file(buf, META_MAGIC)?;
    check_capacity(capacity).map_err(|reason| FormatError::SegmentMismatch { reason })?;
    Ok(capacity)
}

/// Encodes the clean-close marker: the log was closed with everything before `end`
/// flushed.
pub(crate) fn encode_closed(end: Lsn) -> [u8; CLOSED_LEN] {
    encode_small_file(CLOSED_MAGIC, end.get())
}

/// Decodes the clean-close marker.
pub(crate) fn decode_closed(buf: &[u8]) -> Result<Lsn, FormatError> {
    decode_small_file(buf, CLOSED_MAGIC).map(Lsn::new)
}

/// Length of the identity file: magic (8), format version (4), cluster id length (1),
/// node id length (1), zero (2), cluster id (64, zero-padded), node id (64, zero-padded),
/// CRC32C of everything before (4).
pub(crate) const IDENTITY_LEN: usize = 148;
const IDENTITY_MAGIC: &[u8; 8] = b"WALSHIDN";
/// The longest cluster or node id.
pub const MAX_ID_LEN: usize = 63;

/// Checks a cluster or node id: 1 to 63 ASCII letters, digits, `-`, `_` or `.` (what a
/// certificate name can carry).
pub fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(format!("{id:?} must be 1 to {MAX_ID_LEN} bytes"));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(format!(
            "{id:?} may hold only ASCII letters, digits, '-', '_' and '.'"
        ));
    }
    Ok(())
}

/// Encodes the identity file: the cluster and node a log belongs to.
pub(crate) fn encode_identity(
    cluster_id: &str,
    node_id: &str,
) -> Result<[u8; IDENTITY_LEN], String> {
    check_id(cluster_id)?;
    check_id(node_id)?;
    let mut b = [0u8; IDENTITY_LEN];
    b[0..8].copy_from_slice(IDENTITY_MAGIC);
    b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    b[12] = cluster_id.len() as u8;
    b[13] = node_id.len() as u8;
    b[16..16 + cluster_id.len()].copy_from_slice(cluster_id.as_bytes());
    b[80..80 + node_id.len()].copy_from_slice(node_id.as_bytes());
    let crc = crc32c::crc32c(&b[..144]);
    b[144..148].copy_from_slice(&crc.to_le_bytes());
    Ok(b)
}

/// Decodes the identity file: `(cluster_id, node_id)`.
pub(crate) fn decode_identity(buf: &[u8]) -> Result<(String, String), FormatError> {
    need(buf, IDENTITY_LEN)?;
    if buf.len() != IDENTITY_LEN {
        return Err(FormatError::BadLength {
            len: buf.len() as u64,
            min: IDENTITY_LEN as u64,
            max: IDENTITY_LEN as u64,
        });
    }
    if &buf[0..8] != IDENTITY_MAGIC {
        return Err(FormatError::BadMagic {
            found: le_u64(buf, 0),
        });
    }
    let stored = le_u32(buf, 144);
    let computed = crc32c::crc32c(&buf[..144]);
    if stored != computed {
        return Err(FormatError::CrcMismatch { stored, computed });
    }
    let version = le_u32(buf, 8);
    if version != FORMAT_VERSION {
        return Err(FormatError::UnsupportedVersion { found: version });
    }
    let field = |at: usize, len: u8| -> Result<String, FormatError> {
        let len = usize::from(len);
        let framing = |reason: String| FormatError::Framing { reason };
        if len > MAX_ID_LEN || buf[at + len..at + 64].iter().any(|&b| b != 0) {
            return Err(framing("identity field length or padding".into()));
        }
        let s = std::str::from_utf8(&buf[at..at + len])
            .map_err(|_| framing("identity is not ASCII".into()))?;
        check_id(s).map_err(framing)?;
        Ok(s.to_owned())
    };
    Ok((field(16, buf[12])?, field(80, buf[13])?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn identity_round_trip_and_every_flip_is_detected() {
        let b = encode_identity("prod", "n1").unwrap();
        assert_eq!(decode_identity(&b).unwrap(), ("prod".into(), "n1".into()));
        for i in 0..IDENTITY_LEN * 8 {
            let mut c = b;
            c[i / 8] ^= 1 << (i % 8);
            assert!(decode_identity(&c).is_err(), "bit {i}");
        }
        assert!(decode_identity(&b[..100]).is_err());
        assert!(encode_identity("", "n1").is_err());
        assert!(encode_identity("a/b", "n1").is_err());
        assert!(encode_identity("prod", &"x".repeat(64)).is_err());
    }

    fn expect_at(lsn: u64) -> Expect {
        Expect {
            lsn: Some(Lsn::new(lsn)),
            max_len: 1 << 24,
        }
    }

    #[test]
    fn segment_header_round_trip_and_rejects() {
        let h = SegmentHeader {
            base: Lsn::new(3 << 20),
            capacity: 1 << 20,
        };
        let b = h.encode();
        assert_eq!(SegmentHeader::decode(&b), Ok(h));
        assert!(matches!(
            SegmentHeader::decode(&[0u8; 64]),
            Err(FormatError::BadMagic { .. })
        ));
        assert!(matches!(
            SegmentHeader::decode(&b[..63]),
            Err(FormatError::Truncated { .. })
        ));
        for bit in 0..(64 * 8) {
            let mut c = b;
            c[bit / 8] ^= 1 << (bit % 8);
            assert!(SegmentHeader::decode(&c).is_err(), "bit {bit}");
        }
    }

    #[test]
    fn padding_round_trip() {
        let p = encode_padding(Lsn::new(1000), Lsn::new(4096), Epoch::new(3));
        let c = check_batch(&p, expect_at(1000)).unwrap();
        assert!(c.header.padding);
        assert_eq!(c.header.end(), Lsn::new(4096));
        assert_eq!(records(&p, &c.header).count(), 0);
    }

    #[test]
    fn empty_batch_is_valid() {
        let b = encode_batch::<&[u8]>(Lsn::new(64), Epoch::new(1), 5, &[]);
        assert_eq!(b.len(), BATCH_HEADER_LEN);
        check_batch(&b, expect_at(64)).unwrap();
    }

    #[test]
    fn closed_marker_round_trip() {
        let m = encode_closed(Lsn::new(1 << 40));
        assert_eq!(decode_closed(&m), Ok(Lsn::new(1 << 40)));
        for bit in 0..CLOSED_LEN * 8 {
            let mut c = m;
            c[bit / 8] ^= 1 << (bit % 8);
            assert!(decode_closed(&c).is_err(), "bit {bit}");
        }
        assert!(decode_closed(&m[..31]).is_err());
        assert!(decode_meta(&m).is_err(), "a marker is not a meta file");
    }

    #[test]
    fn meta_round_trip() {
        let m = encode_meta(1 << 26);
        assert_eq!(decode_meta(&m), Ok(1 << 26));
        let mut bad = m;
        bad[17] ^= 4;
        assert!(decode_meta(&bad).is_err());
    }

    #[test]
    fn geometry() {
        let g = Geometry::new(1 << 16);
        assert_eq!(g.base_of(Lsn::new(70_000)), Lsn::new(65_536));
        assert_eq!(g.end_of(Lsn::new(70_000)), Lsn::new(131_072));
        assert!(g.fits(Lsn::new(65_600), Lsn::new(131_072)));
        assert!(!g.fits(Lsn::new(65_600), Lsn::new(131_072 - 1)));
        assert!(g.fits(
            Lsn::new(65_600),
            Lsn::new(131_072 - BATCH_HEADER_LEN as u64)
        ));
        assert!(!g.fits(
            Lsn::new(65_600),
            Lsn::new(131_072 - BATCH_HEADER_LEN as u64 + 1)
        ));
    }

    /// Found by the `batch_decoder` fuzz target (fuzz/regressions/batch_decoder/
    /// records-lsn-overflow): a batch with a valid CRC whose base LSN is so close to
    /// `u64::MAX` that its records' end LSNs overflow was accepted, and `records`
    /// panicked computing them.
    #[test]
    fn batch_whose_lsn_range_overflows_is_rejected() {
        let crash: &[u8] = &[
            0x3b, 0x00, 0x00, 0x00, 0xe8, 0xa2, 0x71, 0x49, 0xd2, 0xff, 0xff, 0xff, 0xff, 0xff,
            0xff, 0xff, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0a, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x7c, 0xb4, 0x05, 0x00,
            0x00, 0x00, 0xfc, 0x78, 0xd0, 0x4a, 0x34, 0x06, 0x00, 0x00, 0x00, 0x54, 0x58, 0x93,
            0xcd, 0x07, 0x90,
        ];
        assert!(matches!(
            check_batch(crash, Expect::default()),
            Err(FormatError::BadLength { .. })
        ));
        assert!(BatchHeader::decode(crash, u64::MAX).is_err());
        // A batch ending exactly at the top of LSN space is still valid.
        let recs = [&b"hello"[..], b"world!"];
        let len = encode_batch(Lsn::ZERO, Epoch::new(3), 10, &recs).len() as u64;
        let top = encode_batch(Lsn::new(u64::MAX - len), Epoch::new(3), 10, &recs);
        let h = check_batch(&top, Expect::default()).unwrap().header;
        let ends: Vec<Lsn> = records(&top, &h).map(|(lsn, _)| lsn).collect();
        assert_eq!(ends.last(), Some(&Lsn::new(u64::MAX)));
        assert_eq!(h.end(), Lsn::new(u64::MAX));
    }

    fn arb_records() -> impl Strategy<Value = Vec<Vec<u8>>> {
        prop::collection::vec(prop::collection::vec(any::<u8>(), 0..200), 0..12)
    }

    proptest! {
        #[test]
        fn batch_round_trip(base in 0u64..(1 << 40), epoch in any::<u64>(), ts in any::<u64>(), recs in arb_records()) {
            let b = encode_batch(Lsn::new(base), Epoch::new(epoch), ts, &recs);
            let c = check_batch(&b, expect_at(base)).unwrap();
            prop_assert_eq!(c.header.base, Lsn::new(base));
            prop_assert_eq!(c.header.epoch, Epoch::new(epoch));
            prop_assert_eq!(c.header.timestamp_us, ts);
            prop_assert_eq!(c.header.len as usize, b.len());
            let got: Vec<Vec<u8>> = records(&b, &c.header).map(|(_, r)| r.to_vec()).collect();
            prop_assert_eq!(&got, &recs);
            let mut end = base + BATCH_HEADER_LEN as u64;
            for (lsn, r) in records(&b, &c.header) {
                end += (RECORD_PREFIX_LEN + r.len()) as u64;
                prop_assert_eq!(lsn, Lsn::new(end));
            }
            prop_assert_eq!(end, base + b.len() as u64);
        }

        #[test]
        fn every_bit_flip_is_detected(recs in arb_records(), base in 0u64..(1 << 40)) {
            let b = encode_batch(Lsn::new(base), Epoch::new(7), 1, &recs);
            for bit in 0..b.len() * 8 {
                let mut c = b.clone();
                c[bit / 8] ^= 1 << (bit % 8);
                prop_assert!(check_batch(&c, expect_at(base)).is_err(), "flip of bit {} undetected", bit);
            }
        }

        #[test]
        fn every_truncation_is_detected(recs in arb_records()) {
            let b = encode_batch(Lsn::new(64), Epoch::new(1), 1, &recs);
            for cut in 0..b.len() {
                prop_assert!(check_batch(&b[..cut], expect_at(64)).is_err(), "truncation to {} undetected", cut);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = check_batch(&bytes, Expect::default());
            let _ = SegmentHeader::decode(&bytes);
            let _ = decode_meta(&bytes);
            let _ = decode_closed(&bytes);
            if let Ok(h) = BatchHeader::decode(&bytes, 1 << 20) {
                let _ = records(&bytes, &h).count();
            }
        }
    }
}
