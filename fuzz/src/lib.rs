//! Shared pieces of the walship fuzz targets: the template log the `recovery` target
//! damages, the damage operations it decodes from fuzzer input, and the encoders the
//! seed generator uses to write inputs that get past the CRCs.
//!
//! Everything here is deterministic: the template log is the same bytes in every
//! process (including the flush stamps the log writer puts into every batch header and
//! the clean-close marker `walship.closed`, which records the end), so a crashing input
//! reproduces in a fresh process. [`build_template`] checks this.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use walship_engine::format::{
    check_batch, encode_batch, encode_padding, records, restamp, Expect, SegmentHeader,
    BATCH_HEADER_LEN, SEGMENT_HEADER_LEN,
};
use walship_engine::internals::segment_path;
use walship_engine::{BackendKind, Durability, Epoch, Log, Lsn, Options, RecoveryMode};

/// Segment capacity of the template log (the smallest the engine accepts).
pub const CAP: u64 = 64 * 1024;

/// Options every log in the fuzz targets is opened with.
pub fn options(mode: RecoveryMode) -> Options {
    Options {
        segment_capacity: CAP,
        backend: BackendKind::Portable,
        recovery: mode,
        ..Options::default()
    }
}

/// A tiny deterministic PRNG (xorshift64*), so that the template needs no dependency.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a non-zero seed.
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A value in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// `n` pseudo-random bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

/// One record of the template log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateRecord {
    /// LSN just past the record (its commit token).
    pub lsn: Lsn,
    /// Its payload.
    pub data: Vec<u8>,
    /// End of the batch holding it: the record survives damage at or after this LSN.
    pub batch_end: Lsn,
}

/// The encoded batches of the template log, in order: `(base, bytes)`; padding batches
/// are the header only (`BATCH_HEADER_LEN` bytes; the rest of the segment is zeros).
/// They are encoded with lag-0 flush stamps (`encode_batch`); the template's files hold
/// the same batches with the stamps the log writer gave them ([`template_stamp`]).
pub fn template_batches() -> Vec<(Lsn, Vec<u8>)> {
    let mut rng = Rng::new(0x005E_ED0F_7A11);
    let mut out = Vec::new();
    let mut pos = Lsn::new(SEGMENT_HEADER_LEN as u64);
    // Segment 0 is filled up and padded; segment 1 is filled to about 15/16: recovery
    // scans the rest of the tail byte by byte, which dominates the cost of an open.
    let stop = Lsn::new(CAP + 15 * CAP / 16);
    let mut epoch = 1u64;
    let mut n = 0u64;
    while pos < stop {
        n += 1;
        if n.is_multiple_of(9) {
            epoch += 1;
        }
        let count = match n % 5 {
            0 => 0,
            1 => 1,
            2 => 2,
            3 => 7,
            _ => 1 + rng.below(20) as usize,
        };
        let recs: Vec<Vec<u8>> = (0..count)
            .map(|i| {
                let len = match (n + i as u64) % 6 {
                    0 => 0,
                    1 => 1,
                    2 => 13,
                    3 => 100,
                    4 => 700,
                    _ => rng.below(3000) as usize,
                };
                rng.bytes(len)
            })
            .collect();
        let batch = encode_batch(pos, Epoch::new(epoch), 1_700_000_000_000_000 + n, &recs);
        let seg_end = Lsn::new((pos.get() / CAP + 1) * CAP);
        let end = pos.get() + batch.len() as u64;
        if end != seg_end.get() && end + BATCH_HEADER_LEN as u64 > seg_end.get() {
            out.push((
                pos,
                encode_padding(pos, seg_end, Epoch::new(epoch)).to_vec(),
            ));
            pos = Lsn::new(seg_end.get() + SEGMENT_HEADER_LEN as u64);
            continue;
        }
        out.push((pos, batch));
        pos = Lsn::new(end);
    }
    out
}

/// The records of [`template_batches`], in order.
pub fn template_records(batches: &[(Lsn, Vec<u8>)]) -> Vec<TemplateRecord> {
    let mut out = Vec::new();
    for (_, b) in batches {
        let h = check_batch(b, Expect::default())
            .expect("template batch is valid")
            .header;
        for (lsn, data) in records(b, &h) {
            out.push(TemplateRecord {
                lsn,
                data: data.to_vec(),
                batch_end: h.end(),
            });
        }
    }
    out
}

/// The template log: a directory to copy, its records and layout.
#[derive(Debug)]
pub struct Template {
    /// Where the template lives.
    pub dir: PathBuf,
    /// Every record, in LSN order.
    pub records: Vec<TemplateRecord>,
    /// End of the log (just past the last batch).
    pub end: Lsn,
    /// Base of the segment before the tail.
    pub prev: Lsn,
    /// Base of the tail segment.
    pub tail: Lsn,
    /// Base of the segment after the tail: the template has none (recovery scans a spare
    /// byte by byte, which is most of an open's cost); operations on [`Target::Spare`]
    /// create it empty first, as the preparer thread would have.
    pub spare: Lsn,
    /// Where the data of the segment before the tail ends (its padding starts).
    pub prev_data_end: Lsn,
    /// Where the second of the two appends that wrote the template starts, in the middle
    /// of the tail (see [`template_split`]): the batches from here on are stamped as
    /// written once everything before this LSN had been flushed.
    pub split: Lsn,
}

/// Name of the clean-close marker file that `Log::close` writes into the log directory.
pub const CLOSED_FILE: &str = "walship.closed";

/// Where the template is split into two appends with a local flush in between: the base
/// of the first batch at or after the middle of the tail segment. So the tail holds
/// batches stamped with two different flushed positions, and damage before the split
/// is proven flushed by the (valid) batches after it even without the clean-close marker.
pub fn template_split(batches: &[(Lsn, Vec<u8>)]) -> Lsn {
    batches
        .iter()
        .map(|(base, _)| *base)
        .find(|base| base.get() >= CAP + CAP / 2)
        .expect("the template reaches the middle of the tail")
}

/// The flushed position the log writer stamps the template batch at `base` with: the
/// first append goes out in one write, so the batches of segment 0 carry the flushed
/// position of the fresh log (its first batch) and those of the tail the end of segment
/// 0 (the writer flushes a segment before it writes into the next one and stamps after
/// that flush); the second append, after a local flush up to `split`, carries `split`.
pub fn template_stamp(base: Lsn, split: Lsn) -> Lsn {
    if base >= split {
        split
    } else if base.get() >= CAP {
        Lsn::new(CAP)
    } else {
        Lsn::new(SEGMENT_HEADER_LEN as u64)
    }
}

/// Writes the template log into `dir` (which must not exist or be empty).
///
/// The log is created by `Log::open` and filled through `append_encoded` in two calls
/// (split at [`template_split`], with a `Local` commit after each), then closed, which
/// writes the clean-close marker `walship.closed` recording the end. So its batches are
/// exactly [`template_batches`] but for their flush stamps, which are
/// [`template_stamp`]; this function checks every byte of both segments and the marker
/// (it panics if the writer ever stamped differently, which would make the template
/// differ between processes). The spare segment the preparer thread may have made after
/// the tail is removed, so the template is the same in every process.
pub fn build_template(dir: &Path) -> Template {
    let batches = template_batches();
    let split = template_split(&batches);
    let log = Log::open(dir, options(RecoveryMode::Strict)).expect("create template log");
    let mut end = Lsn::ZERO;
    let at = batches.partition_point(|(base, _)| *base < split);
    for part in [&batches[..at], &batches[at..]] {
        let wire: Vec<u8> = part.iter().flat_map(|(_, b)| b.iter().copied()).collect();
        end = log
            .append_encoded(Bytes::from(wire))
            .expect("append template batches");
        log.commit(end, Durability::Local)
            .wait()
            .expect("flush template");
    }
    log.close().expect("close template");
    drop(log);
    let tail = Lsn::new(end.get() / CAP * CAP);
    assert_eq!(tail.get(), CAP, "the template spans two segments");
    let prev = Lsn::ZERO;
    let spare = Lsn::new(tail.get() + CAP);
    for entry in fs::read_dir(dir).expect("list template") {
        let p = entry.expect("list template").path();
        let is_seg = p.extension().is_some_and(|e| e == "wal");
        if is_seg && p != segment_path(dir, prev) && p != segment_path(dir, tail) {
            fs::remove_file(&p).expect("remove preparer's segment");
        }
    }
    check_template(dir, &batches, split, end);
    let prev_data_end = batches
        .iter()
        .rev()
        .find(|(base, b)| base.get() < CAP && b.len() == BATCH_HEADER_LEN && is_padding(b))
        .map_or(Lsn::new(CAP), |(base, _)| *base);
    Template {
        dir: dir.to_path_buf(),
        records: template_records(&batches),
        end,
        prev,
        tail,
        spare,
        prev_data_end,
        split,
    }
}

/// Checks that the segments in `dir` hold exactly `batches` with the stamps of
/// [`template_stamp`] (then zeros) and that the clean-close marker records `end`.
fn check_template(dir: &Path, batches: &[(Lsn, Vec<u8>)], split: Lsn, end: Lsn) {
    let mut want = vec![0u8; 2 * CAP as usize];
    for base in [Lsn::ZERO, Lsn::new(CAP)] {
        let at = base.get() as usize;
        want[at..at + SEGMENT_HEADER_LEN].copy_from_slice(
            &SegmentHeader {
                base,
                capacity: CAP,
            }
            .encode(),
        );
    }
    for (base, b) in batches {
        let mut b = b.clone();
        restamp(&mut b, template_stamp(*base, split));
        let at = base.get() as usize;
        want[at..at + b.len()].copy_from_slice(&b);
    }
    for base in [Lsn::ZERO, Lsn::new(CAP)] {
        let got = fs::read(segment_path(dir, base)).expect("read template segment");
        let want = &want[base.get() as usize..(base.get() + CAP) as usize];
        if got != want {
            let at = got
                .iter()
                .zip(want)
                .position(|(a, b)| a != b)
                .unwrap_or(got.len().min(want.len()));
            panic!(
                "template segment {base} differs from the expected bytes at offset {at} \
                 (size {} vs {}): the template would not be the same in every process",
                got.len(),
                want.len()
            );
        }
    }
    let marker = fs::read(dir.join(CLOSED_FILE)).expect("the template was closed cleanly");
    assert_eq!(marker.len(), 32, "clean-close marker length");
    assert_eq!(&marker[..8], b"WALSHCLO", "clean-close marker magic");
    assert_eq!(
        &marker[16..24],
        &end.get().to_le_bytes(),
        "the clean-close marker records the template's end"
    );
}

fn is_padding(b: &[u8]) -> bool {
    b.len() >= 38 && b[36] & 1 == 1
}

/// Writes a zero-filled segment file with a valid header at `base`.
pub fn write_empty_segment(path: &Path, base: Lsn) {
    let mut bytes = vec![0u8; CAP as usize];
    bytes[..SEGMENT_HEADER_LEN].copy_from_slice(
        &SegmentHeader {
            base,
            capacity: CAP,
        }
        .encode(),
    );
    fs::write(path, bytes).expect("write segment");
}

/// Copies the regular files of `from` into `to` (created).
///
/// Plain reads and writes rather than `fs::copy`: once in a CI run, `fs::copy` on tmpfs
/// failed mid-file on an input that passes when replayed, leaving an empty copy.
pub fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("create copy");
    for entry in fs::read_dir(from).expect("list template") {
        let src = entry.expect("list template").path();
        let Some(name) = src.file_name() else {
            continue;
        };
        let bytes = fs::read(&src).unwrap_or_else(|e| panic!("read {}: {e}", src.display()));
        let dst = to.join(name);
        fs::write(&dst, bytes).unwrap_or_else(|e| panic!("write {}: {e}", dst.display()));
    }
}

// ---------------------------------------------------------------------------------
// Damage operations

/// How an operation damages its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Write the payload at the offset (clamped to the file, which keeps its size).
    Overwrite,
    /// Cut the file at the offset; if the payload's first byte is odd, extend it back to
    /// its size with zeros (a lost tail rather than a short file).
    TruncateAt,
    /// Write the payload where the file's data ends (plus `offset & 0xff`), or at the very
    /// end of the file if bit 15 of the offset is set; may grow the file.
    AppendGarbage,
    /// XOR the payload into the file at the offset (bit flips).
    FlipBits,
}

/// Which file an operation damages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The last segment holding data.
    Tail,
    /// The segment before it (full, ends with padding).
    Prev,
    /// The prepared segment after the tail (created empty with a valid header if
    /// missing, then damaged).
    Spare,
    /// A segment file after the spare (created like the spare; without the spare, a gap).
    NewSegment,
    /// The `epochs` file.
    Epochs,
    /// The `walship.meta` file.
    Meta,
    /// The clean-close marker `walship.closed` (32 bytes recording the end the log was
    /// closed at). Any damage makes it invalid, which recovery must treat like a missing
    /// marker (less evidence); `TruncateAt` offset 0 with an even payload byte is how an
    /// input "deletes" it (an empty marker is invalid), leaving the log as a crash would.
    Closed,
    /// Delete the spare segment, if an earlier operation made it (no payload).
    DeleteSpare,
}

/// One decoded damage operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    /// What to do.
    pub mode: Mode,
    /// To which file.
    pub target: Target,
    /// Where.
    pub offset: u16,
    /// With which bytes.
    pub payload: Vec<u8>,
}

/// Length of an encoded operation header.
pub const OP_HEADER_LEN: usize = 4;
/// At most this many operations are taken from one input.
pub const MAX_OPS: usize = 4;

/// Decodes fuzzer input into operations.
///
/// Each operation is a 4-byte header, `[kind, offset lo, offset hi, len]`, then `len`
/// payload bytes (`len == 0`: the rest of the input). `kind` bits 0-1 are the [`Mode`],
/// bits 2-4 the [`Target`] (0 tail, 1 prev, 2 spare, 3 epochs, 4 new segment,
/// 5 delete spare, 6 meta, 7 the clean-close marker); bits 5-7 are ignored.
pub fn parse_ops(mut data: &[u8]) -> Vec<Op> {
    let mut ops = Vec::new();
    while data.len() >= OP_HEADER_LEN && ops.len() < MAX_OPS {
        let kind = data[0];
        let offset = u16::from_le_bytes([data[1], data[2]]);
        let len = data[3] as usize;
        data = &data[OP_HEADER_LEN..];
        let take = if len == 0 {
            data.len()
        } else {
            len.min(data.len())
        };
        let payload = data[..take].to_vec();
        data = &data[take..];
        let mode = match kind & 3 {
            0 => Mode::Overwrite,
            1 => Mode::TruncateAt,
            2 => Mode::AppendGarbage,
            _ => Mode::FlipBits,
        };
        let target = match (kind >> 2) & 7 {
            1 => Target::Prev,
            2 => Target::Spare,
            3 => Target::Epochs,
            4 => Target::NewSegment,
            5 => Target::DeleteSpare,
            6 => Target::Meta,
            7 => Target::Closed,
            _ => Target::Tail,
        };
        ops.push(Op {
            mode,
            target,
            offset,
            payload,
        });
    }
    ops
}

/// Encodes operations as [`parse_ops`] reads them (for seeds). A payload longer than
/// 255 bytes must be the last operation.
pub fn encode_ops(ops: &[Op]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let mode = match op.mode {
            Mode::Overwrite => 0,
            Mode::TruncateAt => 1,
            Mode::AppendGarbage => 2,
            Mode::FlipBits => 3,
        };
        let target = match op.target {
            Target::Tail => 0,
            Target::Prev => 1,
            Target::Spare => 2,
            Target::Epochs => 3,
            Target::NewSegment => 4,
            Target::DeleteSpare => 5,
            Target::Meta => 6,
            Target::Closed => 7,
        };
        let last = i + 1 == ops.len();
        let len = if last && (op.payload.len() > 255 || op.payload.is_empty()) {
            0
        } else {
            assert!(
                !op.payload.is_empty() && op.payload.len() <= 255,
                "payload length"
            );
            op.payload.len() as u8
        };
        out.push(mode | (target << 2));
        out.extend_from_slice(&op.offset.to_le_bytes());
        out.push(len);
        out.extend_from_slice(&op.payload);
    }
    out
}

/// Applies `ops` to the copy of the template in `dir`. Returns the lowest LSN of a
/// segment byte that may have changed: every template record of a batch ending at or
/// before it must survive any successful open.
pub fn apply_ops(t: &Template, dir: &Path, ops: &[Op]) -> Lsn {
    let mut damage = Lsn::new(u64::MAX);
    for op in ops {
        let (path, base, data_end) = match op.target {
            Target::Tail => (
                segment_path(dir, t.tail),
                Some(t.tail),
                t.end.get() - t.tail.get(),
            ),
            Target::Prev => (
                segment_path(dir, t.prev),
                Some(t.prev),
                t.prev_data_end.get() - t.prev.get(),
            ),
            Target::Spare | Target::NewSegment => {
                let base = match op.target {
                    Target::Spare => t.spare,
                    _ => Lsn::new(t.spare.get() + CAP),
                };
                let p = segment_path(dir, base);
                if !p.exists() {
                    write_empty_segment(&p, base);
                }
                (p, Some(base), SEGMENT_HEADER_LEN as u64)
            }
            Target::Epochs => (dir.join("epochs"), None, u64::MAX),
            Target::Meta => (dir.join("walship.meta"), None, u64::MAX),
            // Not a segment: damage to it does not lower `damage` (the marker only adds
            // evidence; the records before the first damaged segment byte must survive).
            Target::Closed => (dir.join(CLOSED_FILE), None, u64::MAX),
            Target::DeleteSpare => {
                let _ = fs::remove_file(segment_path(dir, t.spare));
                continue;
            }
        };
        let Ok(f) = OpenOptions::new().read(true).write(true).open(&path) else {
            continue;
        };
        let size = f.metadata().map(|m| m.len()).unwrap_or(0);
        let off = u64::from(op.offset);
        // The file offset of the first byte changed, if any.
        let changed: Option<u64> = match op.mode {
            Mode::Overwrite | Mode::FlipBits => {
                if size == 0 || op.payload.is_empty() {
                    None
                } else {
                    let at = off % size;
                    let n = op.payload.len().min((size - at) as usize);
                    let mut buf = vec![0u8; n];
                    f.read_exact_at(&mut buf, at).expect("read for damage");
                    for (b, p) in buf.iter_mut().zip(&op.payload) {
                        if op.mode == Mode::Overwrite {
                            *b = *p;
                        } else {
                            *b ^= *p;
                        }
                    }
                    f.write_all_at(&buf, at).expect("damage");
                    Some(at)
                }
            }
            Mode::TruncateAt => {
                let at = off.min(size);
                f.set_len(at).expect("truncate");
                if op.payload.first().is_some_and(|b| b & 1 == 1) {
                    f.set_len(size).expect("re-extend");
                }
                Some(at)
            }
            Mode::AppendGarbage => {
                let at = if op.offset & 0x8000 != 0 {
                    size
                } else {
                    data_end.min(size).saturating_add(off & 0xff)
                };
                if op.payload.is_empty() {
                    None
                } else {
                    f.write_all_at(&op.payload, at).expect("append garbage");
                    Some(at)
                }
            }
        };
        if let (Some(base), Some(at)) = (base, changed) {
            damage = damage.min(Lsn::new(base.get() + at));
        }
    }
    damage
}

/// The template records that must survive damage starting at `damage`.
pub fn must_survive(t: &Template, damage: Lsn) -> &[TemplateRecord] {
    let n = t
        .records
        .iter()
        .take_while(|r| r.batch_end <= damage)
        .count();
    &t.records[..n]
}
