//! Read-only inspection of a log directory, for operator tools: what each segment holds,
//! where the log ends, and every spot [`Log::open`](crate::Log::open) would refuse,
//! repair or tidy up.
//!
//! This module owns the offline view of a log. It never changes the directory: it takes
//! no lock, removes no leftover `.tmp` file and zeroes no torn tail, so it can look at a
//! log that a live process has open, or at a copy that must stay as it was found.
//!
//! Segments are copied into memory with plain reads, one at a time, not mapped: another
//! process may be writing the log, and bytes changing under a reference are exactly what
//! the engine's mapping contract rules out (`mmap.rs`). A read gives a snapshot instead;
//! the tail of a log that is being written may show up in it as a torn tail.
//!
//! The checks are recovery's own: every segment is scanned by the scan `open` uses (CRC,
//! framing, LSN continuity, non-decreasing epochs, segment boundaries), spare segments
//! and the tail are told apart as `open` does, and "a valid batch after the bad spot"
//! uses the same search. Each [`Finding`] says what `open` would do about it:
//!
//! | [`FindingKind`] | what `open` does |
//! | --- | --- |
//! | `Corruption` | refuses to open ([`RecoveryMode::Strict`](crate::RecoveryMode)), naming the file and offset; `TruncateCorrupt` cuts the log there |
//! | `TornTail` | zeroes the incomplete last batch: the log ends before it |
//! | `UnflushedTail` | cuts the log at the invalid batch and zeroes the valid ones after it: a power loss kept them but not it, and none was ever flushed ([`OpenReport::unflushed_cut`](crate::OpenReport)) |
//! | `Leftovers` | zeroes the non-zero bytes after the end |
//! | `HistoryAhead` | drops the epoch history entry |
//!
//! One check goes beyond what `open` does: every batch's epoch must agree with the epoch
//! history (a batch of epoch `e` lies between the start of `e` and the start of the next
//! epoch), since a leader answers divergence queries from the history, not from the
//! batches. A disagreement is reported as corruption.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::epoch::{EpochHistory, EPOCH_FILE};
use crate::error::{Error, Result};
use crate::format::{
    self, check_batch, records, BatchHeader, Expect, Geometry, RecordIter, SegmentHeader,
    BATCH_HEADER_LEN, SEGMENT_HEADER_LEN,
};
use crate::recovery::{claims_positions, scan_bytes, Evidence, SegmentScan, Verdict};
use crate::segment::parse_segment_name;
use crate::storage::OsStorage;
use crate::types::{Epoch, Lsn};

/// The log's meta file, named as [`Log::open`](crate::Log::open) writes it (a unit test
/// below opens a log made by `Log::open`, so the two names cannot drift apart).
const META_FILE: &str = "walship.meta";

/// Byte offset of entry `index` in the epoch history file (after its 16-byte header).
fn history_entry_offset(index: usize) -> u64 {
    16 + 16 * index as u64
}

/// A segment file of the log directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentFile {
    /// Base LSN, as the file name says.
    pub base: Lsn,
    /// The file.
    pub path: PathBuf,
}

/// What kind of problem a [`Finding`] is, named after what `open` does about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FindingKind {
    /// Damage to bytes that had been flushed: an invalid batch followed by a valid one
    /// written after it was flushed (its flush stamp says so; an incomplete segment that
    /// is not the last is one case), a bad segment header, a gap between segments, a
    /// file of the wrong size, or a batch whose epoch disagrees with the epoch history.
    /// `open` refuses the log.
    Corruption,
    /// The last batch was being written when the process or machine stopped: a batch
    /// header names its own position but the batch does not check. `open` zeroes it.
    /// Nothing acknowledged at [`Durability::Local`](crate::Durability) is in it (an
    /// acknowledged batch was flushed in full).
    TornTail,
    /// An invalid batch followed by valid ones, none of which was written after it had
    /// been flushed: the unflushed tail of a power loss, where the disk kept later pages
    /// and lost an earlier one. Nothing in it was acknowledged at
    /// [`Durability::Local`](crate::Durability). `open` ends the log at the invalid batch
    /// and zeroes the rest.
    UnflushedTail,
    /// Non-zero bytes after the end of the log that name no position of it: leftovers of
    /// a recycled segment's previous life, or of a write whose first page never reached
    /// the disk. `open` zeroes them.
    Leftovers,
    /// An epoch history entry starts after the end of the log (a crash after the entry
    /// was recorded, before the batches it announced were written). `open` drops it.
    HistoryAhead,
}

impl FindingKind {
    /// Whether `open` refuses a log with this finding.
    pub fn is_corruption(self) -> bool {
        self == FindingKind::Corruption
    }

    /// A short kebab-case name for output.
    pub fn as_str(self) -> &'static str {
        match self {
            FindingKind::Corruption => "corruption",
            FindingKind::TornTail => "torn-tail",
            FindingKind::UnflushedTail => "unflushed-tail",
            FindingKind::Leftovers => "leftovers",
            FindingKind::HistoryAhead => "history-ahead",
        }
    }
}

impl fmt::Display for FindingKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One problem, named by file and byte offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// What kind of problem, and so what `open` does about it.
    pub kind: FindingKind,
    /// The file holding the spot: a segment, or the epoch history.
    pub path: PathBuf,
    /// Byte offset of the spot within that file.
    pub offset: u64,
    /// The log position of the spot, where it has one.
    pub lsn: Option<Lsn>,
    /// What is wrong there and what `open` does about it.
    pub reason: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at offset {}", self.path.display(), self.offset)?;
        if let Some(lsn) = self.lsn {
            write!(f, " (LSN {lsn})")?;
        }
        write!(f, ": {}", self.reason)
    }
}

/// What one segment holds and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentSummary {
    /// The file.
    pub path: PathBuf,
    /// Base LSN, from the file name.
    pub base: Lsn,
    /// Whether the segment lies after the last segment holding data: prepared in advance
    /// or recycled, waiting to be written.
    pub spare: bool,
    /// Recovery's scan of its batches: the end of its valid chain, batch and record
    /// counts (padding excluded), first and last epoch, and where the chain stops.
    pub scan: SegmentScan,
    /// Bytes of its data batches, headers included, padding and segment header excluded.
    pub data_bytes: u64,
    /// Its problems, by offset.
    pub findings: Vec<Finding>,
}

/// A segment read into memory: its summary and a view of its valid batches.
#[derive(Debug)]
pub struct SegmentImage {
    summary: SegmentSummary,
    bytes: Vec<u8>,
}

impl SegmentImage {
    /// What the segment holds and what is wrong with it.
    pub fn summary(&self) -> &SegmentSummary {
        &self.summary
    }

    /// The summary, dropping the bytes.
    pub fn into_summary(self) -> SegmentSummary {
        self.summary
    }

    /// The batches of the segment's valid chain, padding included, in LSN order. Where
    /// the chain stops, the segment's findings say why.
    pub fn batches(&self) -> Batches<'_> {
        Batches {
            bytes: &self.bytes,
            base: self.summary.base,
            pos: first_batch(self.summary.base),
            end: self.summary.scan.end,
        }
    }
}

/// Iterator over the valid batches of a [`SegmentImage`].
#[derive(Debug, Clone)]
pub struct Batches<'a> {
    bytes: &'a [u8],
    base: Lsn,
    pos: Lsn,
    end: Lsn,
}

impl<'a> Iterator for Batches<'a> {
    type Item = BatchView<'a>;

    fn next(&mut self) -> Option<BatchView<'a>> {
        if self.pos >= self.end {
            return None;
        }
        // The scan verified every batch up to `end`; only the header is decoded again.
        let offset = self.pos.get() - self.base.get();
        let rest = self.bytes.get(usize::try_from(offset).ok()?..)?;
        let header = BatchHeader::decode(rest, self.end.get() - self.pos.get()).ok()?;
        let len = if header.padding {
            BATCH_HEADER_LEN
        } else {
            header.len as usize
        };
        self.pos = header.end();
        Some(BatchView {
            header,
            offset,
            bytes: rest.get(..len)?,
        })
    }
}

/// One valid batch of a segment image.
#[derive(Debug, Clone, Copy)]
pub struct BatchView<'a> {
    header: BatchHeader,
    offset: u64,
    bytes: &'a [u8],
}

impl<'a> BatchView<'a> {
    /// Its header (position, epoch, timestamp, record count, padding flag).
    pub fn header(&self) -> &BatchHeader {
        &self.header
    }

    /// Byte offset of the batch within its segment file.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Its stored bytes (for padding, the header only).
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Its records as `(end LSN, payload)`: the end LSN is the record's commit token.
    pub fn records(&self) -> RecordIter<'a> {
        records(self.bytes, &self.header)
    }
}

/// The whole log checked: every segment's summary, the epoch history and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspection {
    /// Segment capacity, from the meta file.
    pub segment_capacity: u64,
    /// Every segment, ascending.
    pub segments: Vec<SegmentSummary>,
    /// The epoch history as stored.
    pub epoch_history: EpochHistory,
    /// Where the log starts (the first segment's first batch), if it has a segment.
    pub start: Option<Lsn>,
    /// Where the valid chain of the last segment holding data ends: the end `open` finds
    /// when nothing is corrupt.
    pub end: Option<Lsn>,
    /// Problems of the epoch history file itself.
    pub history_findings: Vec<Finding>,
}

impl Inspection {
    /// Every finding: the segments' in file order, then the epoch history's.
    pub fn findings(&self) -> impl Iterator<Item = &Finding> {
        self.segments
            .iter()
            .flat_map(|s| s.findings.iter())
            .chain(self.history_findings.iter())
    }

    /// The first spot that makes `open` refuse the log, in file and offset order.
    pub fn first_corruption(&self) -> Option<&Finding> {
        self.findings().find(|f| f.kind.is_corruption())
    }

    /// Whether `open` would accept the log (possibly after zeroing a torn tail).
    pub fn is_valid(&self) -> bool {
        self.first_corruption().is_none()
    }
}

/// A log directory opened for inspection, read-only.
///
/// ```
/// use walship_engine::inspect::LogDir;
/// use walship_engine::{Durability, Log, Options};
/// let dir = tempfile::tempdir()?;
/// let log = Log::open(dir.path(), Options { segment_capacity: 64 << 10, ..Options::default() })?;
/// let end = log.append(b"hello")?;
/// log.commit(end, Durability::Local).wait()?;
/// // The log stays open: inspecting takes no lock and changes nothing.
/// let logdir = LogDir::open(dir.path())?;
/// let report = logdir.check()?;
/// assert!(report.is_valid());
/// assert_eq!(report.end, Some(end));
/// assert_eq!(report.segments[0].scan.records, 1);
/// let first = logdir.images(end).next().expect("one segment")?;
/// let batch = first.batches().next().expect("one batch");
/// assert_eq!(batch.records().next(), Some((end, &b"hello"[..])));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct LogDir {
    dir: PathBuf,
    geometry: Geometry,
    files: Vec<SegmentFile>,
    /// Index of the last segment whose first batch is valid: later ones are spares.
    tail: usize,
    epochs: EpochHistory,
    /// The end recorded by the clean-close marker, if the log was last closed cleanly.
    closed: Option<Lsn>,
    /// The cluster and node it records.
    identity: Option<crate::LogIdentity>,
}

impl LogDir {
    /// Reads the meta file, the epoch history and the list of segments of the log in
    /// `dir`, and finds the last segment holding data.
    ///
    /// # Errors
    /// [`Error::Corruption`] for a damaged meta or epoch history file, or a missing meta
    /// file beside segments; [`Error::Io`] if the directory or a file cannot be read
    /// (a directory without a meta file is not a log).
    pub fn open(dir: impl AsRef<Path>) -> Result<LogDir> {
        let dir = dir.as_ref().to_path_buf();
        let files = list_segments(&dir)?;
        let meta = dir.join(META_FILE);
        let capacity = match crate::layout::read_state_file(
            &OsStorage,
            &meta,
            format::META_LEN as u64,
            "read log meta file",
        ) {
            Ok(Some(b)) => format::decode_meta(&b).map_err(|e| Error::meta(&meta, e))?,
            Ok(None) if !files.is_empty() => {
                return Err(Error::corruption(
                    &meta,
                    0,
                    "missing, but the directory holds segments",
                ));
            }
            Ok(None) => {
                return Err(Error::io(
                    "read log meta file",
                    &meta,
                    io::Error::from(io::ErrorKind::NotFound),
                ))
            }
            Err(e) => return Err(e),
        };
        let geometry = Geometry::new(capacity);
        let epochs = EpochHistory::load(&OsStorage, &dir)?;
        let identity = crate::identity::load(&OsStorage, &dir)?;
        let mut tail = 0;
        for (i, f) in files.iter().enumerate().rev() {
            if first_batch_valid(f, geometry)? {
                tail = i;
                break;
            }
        }
        let closed = crate::marker::read(&OsStorage, &dir);
        Ok(LogDir {
            dir,
            geometry,
            files,
            tail,
            epochs,
            closed,
            identity,
        })
    }

    /// The cluster and node the log records it belongs to, if it does.
    pub fn identity(&self) -> Option<&crate::LogIdentity> {
        self.identity.as_ref()
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Segment capacity, from the meta file.
    pub fn segment_capacity(&self) -> u64 {
        self.geometry.capacity()
    }

    /// The segment files, ascending.
    pub fn segment_files(&self) -> &[SegmentFile] {
        &self.files
    }

    /// The epoch history as stored.
    pub fn epoch_history(&self) -> &EpochHistory {
        &self.epochs
    }

    /// The epoch history file (which may not exist: a log that never began an epoch).
    pub fn epoch_history_path(&self) -> PathBuf {
        self.dir.join(EPOCH_FILE)
    }

    /// Reads and checks the segments one at a time, from the one holding `from` on
    /// (`Lsn::ZERO` for all). Epoch order is checked from the first segment read on.
    pub fn images(&self, from: Lsn) -> Images<'_> {
        let cap = self.geometry.capacity();
        let next = self
            .files
            .partition_point(|f| f.base.get().saturating_add(cap) <= from.get());
        Images {
            dir: self,
            next,
            prev_epoch: Epoch::ZERO,
            after: None,
        }
    }

    /// Reads and checks every segment and the epoch history.
    ///
    /// # Errors
    /// [`Error::Io`] if a segment cannot be read. Damage is not an error: it is in the
    /// returned [`Inspection`].
    pub fn check(&self) -> Result<Inspection> {
        let segments = self
            .images(Lsn::ZERO)
            .map(|img| img.map(SegmentImage::into_summary))
            .collect::<Result<Vec<_>>>()?;
        let start = self.files.first().map(|f| first_batch(f.base));
        let end = segments.get(self.tail).map(|s| s.scan.end);
        let mut history_findings = Vec::new();
        if let Some(end) = end {
            for (i, &(epoch, at)) in self.epochs.entries().iter().enumerate() {
                if at > end {
                    history_findings.push(Finding {
                        kind: FindingKind::HistoryAhead,
                        path: self.epoch_history_path(),
                        offset: history_entry_offset(i),
                        lsn: Some(at),
                        reason: format!(
                            "epoch {epoch} starts at {at}, after the end of the log at {end}; \
                             the next open drops it"
                        ),
                    });
                }
            }
        }
        Ok(Inspection {
            segment_capacity: self.geometry.capacity(),
            segments,
            epoch_history: self.epochs.clone(),
            start,
            end,
            history_findings,
        })
    }

    fn read_image(
        &self,
        index: usize,
        prev_epoch: Epoch,
        after: Option<After>,
    ) -> Result<SegmentImage> {
        let g = self.geometry;
        let cap = g.capacity();
        let SegmentFile { base, path } = &self.files[index];
        let base = *base;
        let (bytes, file_len) = read_segment(path, cap)?;
        let spare = index > self.tail;
        let corrupt = |offset: u64, lsn: Option<Lsn>, reason: String| Finding {
            kind: FindingKind::Corruption,
            path: path.clone(),
            offset,
            lsn,
            reason,
        };
        let mut findings = Vec::new();
        if let Some(prev) = index.checked_sub(1).map(|i| self.files[i].base) {
            if prev.checked_add(cap) != Some(base) {
                findings.push(corrupt(
                    0,
                    None,
                    format!("segment gap: previous segment starts at {prev}, this one at {base}"),
                ));
            }
        }
        if file_len != cap {
            findings.push(corrupt(
                0,
                None,
                format!("segment file is {file_len} bytes, the log's segments are {cap}"),
            ));
        }
        match SegmentHeader::decode(&bytes) {
            Err(e) => findings.push(corrupt(0, Some(base), format!("segment header: {e}"))),
            Ok(h) if h.base != base || h.capacity != cap => findings.push(corrupt(
                0,
                Some(base),
                format!(
                    "segment header says base {} capacity {}, expected base {base} capacity {cap}",
                    h.base, h.capacity
                ),
            )),
            Ok(_) => {}
        }
        let first = first_batch(base);
        let scan = if base.get() % cap != 0 || base.checked_add(cap).is_none() {
            // Its LSN range cannot be a segment's: there is nothing to scan it against.
            findings.push(corrupt(
                0,
                None,
                format!("file name names base {base}, not a segment of {cap} bytes"),
            ));
            SegmentScan {
                end: first,
                complete: false,
                batches: 0,
                records: 0,
                epochs: None,
                bad: None,
            }
        } else {
            scan_bytes(
                &bytes,
                base,
                g,
                if spare { Epoch::ZERO } else { prev_epoch },
            )
        };
        let mut image = SegmentImage {
            summary: SegmentSummary {
                path: path.clone(),
                base,
                spare,
                scan,
                data_bytes: 0,
                findings,
            },
            bytes,
        };
        let mut data_end = first;
        let mut disagreement = None;
        for b in image.batches() {
            let h = b.header();
            if !h.padding {
                data_end = h.end();
            }
            if disagreement.is_none() && !spare {
                disagreement = self
                    .history_disagrees(h)
                    .map(|why| (b.offset(), h.base, why));
            }
        }
        let summary = &mut image.summary;
        summary.data_bytes = data_end.get() - first.get();
        if let Some((offset, lsn, why)) = disagreement {
            summary.findings.push(corrupt(offset, Some(lsn), why));
        }
        if let Some(f) = self.classify_stop(index, &image, after)? {
            image.summary.findings.push(f);
        }
        image.summary.findings.sort_by_key(|f| f.offset);
        Ok(image)
    }

    /// Why a valid batch disagrees with the epoch history, if it does: a batch of epoch
    /// `e` must lie at or after the start of `e` and end by the start of the next epoch;
    /// a batch of epoch 0 (no leader yet) must end by the start of the first.
    fn history_disagrees(&self, h: &BatchHeader) -> Option<String> {
        let entries = self.epochs.entries();
        let (first_epoch, first_start) = *entries.first()?;
        let file = EPOCH_FILE;
        let Some(i) = entries.iter().position(|&(e, _)| e == h.epoch) else {
            if h.epoch == Epoch::ZERO {
                return (h.end() > first_start).then(|| {
                    format!(
                        "batch of epoch 0 ends at {}, after epoch {first_epoch} started at \
                         {first_start} ({file})",
                        h.end()
                    )
                });
            }
            return Some(format!(
                "batch of epoch {} has no entry in the epoch history ({file})",
                h.epoch
            ));
        };
        let start = entries[i].1;
        if h.base < start {
            return Some(format!(
                "batch of epoch {} at {}, before the epoch starts at {start} ({file})",
                h.epoch, h.base
            ));
        }
        match entries.get(i + 1) {
            Some(&(next, next_start)) if h.end() > next_start => Some(format!(
                "batch of epoch {} ends at {}, after epoch {next} started at {next_start} ({file})",
                h.epoch,
                h.end()
            )),
            _ => None,
        }
    }

    /// What the spot where a segment's valid chain stops is, as recovery decides it: the
    /// first such spot of the log is judged from the valid batches after it, in this
    /// segment and the later ones ([`Evidence`]); after it (`after`), only bytes naming
    /// their own positions matter, which the next open zeroes if the log ended there.
    fn classify_stop(
        &self,
        index: usize,
        image: &SegmentImage,
        after: Option<After>,
    ) -> Result<Option<Finding>> {
        let SegmentSummary {
            path,
            base,
            spare,
            scan,
            ..
        } = &image.summary;
        let (base, bytes, g) = (*base, &image.bytes[..], self.geometry);
        let Some((bad_at, why)) = scan.bad.clone().filter(|_| !scan.complete) else {
            return Ok(None);
        };
        let finding = |kind, reason| Finding {
            kind,
            path: path.clone(),
            offset: bad_at.get() - base.get(),
            lsn: Some(bad_at),
            reason,
        };
        if after == Some(After::Damage) {
            return Ok(None);
        }
        if after == Some(After::End) {
            return Ok(claims_positions(bytes, base).then(|| {
                finding(
                    FindingKind::TornTail,
                    "bytes after the end of the log name positions here (a torn or unflushed \
                     write); the next open zeroes them"
                        .to_string(),
                )
            }));
        }
        let Ok(offset) = usize::try_from(bad_at.get() - base.get()) else {
            return Ok(None);
        };
        let mut evidence = Evidence::new(bad_at, self.closed);
        if !evidence.look(base, bytes, g) {
            for f in &self.files[index + 1..] {
                let (later, _) = read_segment(&f.path, g.capacity())?;
                if evidence.look(f.base, &later, g) {
                    break;
                }
            }
        }
        let verdict = evidence.verdict();
        let explained = verdict.explain(bad_at, &why);
        Ok(match verdict {
            Verdict::Corruption(_) => Some(finding(FindingKind::Corruption, explained)),
            Verdict::Unflushed { .. } => Some(finding(
                FindingKind::UnflushedTail,
                format!("{explained}; the next open cuts it there"),
            )),
            // A header at the spot naming the spot: a write of this segment's current life.
            Verdict::TornTail
                if bytes.get(offset + 8..offset + 16) == Some(&bad_at.get().to_le_bytes()) =>
            {
                Some(finding(
                    FindingKind::TornTail,
                    format!("torn last batch ({why}); the next open zeroes it"),
                ))
            }
            // A prepared or recycled segment holds zeros or a previous life's bytes.
            Verdict::TornTail if *spare => None,
            Verdict::TornTail => {
                let dirty = bytes[offset.min(bytes.len())..]
                    .iter()
                    .filter(|&&b| b != 0)
                    .count();
                (dirty > 0).then(|| {
                    finding(
                        FindingKind::Leftovers,
                        format!(
                            "{dirty} non-zero bytes after the end of the log name no position of it \
                             (a recycled segment's previous life, or a write whose start never reached \
                             the disk); the next open zeroes them"
                        ),
                    )
                })
            }
        })
    }
}

/// Iterator over segment images, returned by [`LogDir::images`].
#[derive(Debug)]
pub struct Images<'a> {
    dir: &'a LogDir,
    next: usize,
    prev_epoch: Epoch,
    /// Whether a segment read before stopped short of its end, and what that was.
    after: Option<After>,
}

/// What the first stop of the chain was, for the segments after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    /// The log ends there: later bytes naming positions are zeroed by the next open.
    End,
    /// Damage `open` refuses: it is what gets reported, not what follows it.
    Damage,
}

impl Iterator for Images<'_> {
    type Item = Result<SegmentImage>;

    fn next(&mut self) -> Option<Result<SegmentImage>> {
        let index = self.next;
        if index >= self.dir.files.len() {
            return None;
        }
        self.next += 1;
        let image = self.dir.read_image(index, self.prev_epoch, self.after);
        if let Ok(img) = &image {
            if let (false, Some((_, last))) = (img.summary.spare, img.summary.scan.epochs) {
                self.prev_epoch = last;
            }
            if self.after.is_none() && !img.summary.scan.complete {
                // The first stop: the end of the log, or damage `open` refuses.
                let damaged = img.summary.findings.iter().any(|f| f.kind.is_corruption());
                self.after = Some(if damaged { After::Damage } else { After::End });
            }
        }
        Some(image)
    }
}

/// Where the first batch of the segment at `base` goes. Saturating: a file name may claim
/// any base, and one too close to the top of LSN space is reported, not scanned.
fn first_batch(base: Lsn) -> Lsn {
    Lsn::new(base.get().saturating_add(SEGMENT_HEADER_LEN as u64))
}

/// The segment files in `dir`, ascending; other files (and `.tmp` leftovers) are left be.
fn list_segments(dir: &Path) -> Result<Vec<SegmentFile>> {
    let mut files = Vec::new();
    let rd = fs::read_dir(dir).map_err(|e| Error::io("list log directory", dir, e))?;
    for entry in rd {
        let entry = entry.map_err(|e| Error::io("list log directory", dir, e))?;
        if let Some(base) = entry.file_name().to_str().and_then(parse_segment_name) {
            files.push(SegmentFile {
                base,
                path: entry.path(),
            });
        }
    }
    files.sort_by_key(|f| f.base);
    Ok(files)
}

/// Up to `cap` bytes of the segment file, and the file's length.
fn read_segment(path: &Path, cap: u64) -> Result<(Vec<u8>, u64)> {
    let file = crate::layout::open_regular(&OsStorage, path, false)
        .map_err(|e| Error::io("open segment", path, e))?;
    let len = file
        .stat()
        .map_err(|e| Error::io("stat segment", path, e))?
        .len;
    let mut bytes = crate::storage::read_bounded(&*file, cap.saturating_sub(1))
        .map_err(|e| Error::io("read segment", path, e))?;
    bytes.truncate(usize::try_from(cap).unwrap_or(usize::MAX));
    Ok((bytes, len))
}

/// Whether the segment's first batch is valid (recovery's test for "holds data"),
/// reading only that batch.
fn first_batch_valid(f: &SegmentFile, g: Geometry) -> Result<bool> {
    let file = crate::layout::open_regular(&OsStorage, &f.path, false)
        .map_err(|e| Error::io("open segment", &f.path, e))?;
    let max_len = g.capacity() - SEGMENT_HEADER_LEN as u64;
    let read_at = |buf: &mut [u8]| match file.read_at(buf, SEGMENT_HEADER_LEN as u64) {
        Ok(n) => Ok(n == buf.len()),
        Err(e) => Err(Error::io("read segment", &f.path, e)),
    };
    let mut head = [0u8; BATCH_HEADER_LEN];
    if !read_at(&mut head)? {
        return Ok(false);
    }
    let Ok(h) = BatchHeader::decode(&head, max_len) else {
        return Ok(false);
    };
    // The length is bounded by the segment capacity, which a full read allocates anyway.
    let mut batch = vec![
        0u8;
        if h.padding {
            head.len()
        } else {
            h.len as usize
        }
    ];
    if !read_at(&mut batch)? {
        return Ok(false);
    }
    let expect = Expect {
        lsn: Some(first_batch(f.base)),
        max_len,
    };
    Ok(check_batch(&batch, expect).is_ok())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::os::unix::fs::FileExt;

    use super::*;
    use crate::format::encode_batch;
    use crate::{BackendKind, Durability, Log, Options};

    const CAP: u64 = 64 * 1024;

    fn opts() -> Options {
        Options {
            segment_capacity: CAP,
            backend: BackendKind::Portable,
            ..Options::default()
        }
    }

    /// A batch as a reader returns it: base, end, epoch, records, padding.
    type Seen = (Lsn, Lsn, Epoch, u32, bool);

    fn record(seq: u64) -> Vec<u8> {
        let mut v = format!("record {seq}:").into_bytes();
        v.resize(100 + (seq as usize * 37) % 800, b'a' + (seq % 26) as u8);
        v
    }

    fn batches_of(log: &Log) -> Vec<Seen> {
        let mut r = log.reader(log.start_lsn()).unwrap();
        let mut out = Vec::new();
        while let Some(b) = r.try_next().unwrap() {
            out.push((
                b.base(),
                b.end(),
                b.epoch(),
                b.record_count(),
                b.is_padding(),
            ));
        }
        out
    }

    /// A closed log of `n` records over several segments, epoch 1 then epoch 2 from the
    /// middle on; returns its batches.
    fn build(dir: &Path, n: u64) -> Vec<Seen> {
        let log = Log::open(dir, opts()).unwrap();
        log.begin_epoch(Epoch::new(1)).unwrap();
        for seq in 0..n {
            if seq == n / 2 {
                log.begin_epoch(Epoch::new(2)).unwrap();
            }
            let lsn = log.append(&record(seq)).unwrap();
            if seq % 10 == 0 {
                log.commit(lsn, Durability::Local).wait().unwrap();
            }
        }
        log.commit(log.end_lsn(), Durability::Local).wait().unwrap();
        let batches = batches_of(&log);
        log.close().unwrap();
        batches
    }

    fn snapshot(dir: &Path) -> BTreeMap<std::ffi::OsString, Vec<u8>> {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.file_name(), fs::read(e.path()).unwrap())
            })
            .collect()
    }

    fn seg_path(dir: &Path, lsn: Lsn) -> PathBuf {
        crate::segment::segment_path(dir, Geometry::new(CAP).base_of(lsn))
    }

    fn poke(dir: &Path, at: Lsn, bytes: &[u8]) {
        let f = fs::OpenOptions::new()
            .write(true)
            .open(seg_path(dir, at))
            .unwrap();
        f.write_all_at(bytes, at.get() % CAP).unwrap();
    }

    /// Inverts the byte at `at`: a change whatever it held (writing a fixed byte over a
    /// CRC's byte is no change once in 256 runs).
    fn flip(dir: &Path, at: Lsn) {
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(seg_path(dir, at))
            .unwrap();
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, at.get() % CAP).unwrap();
        f.write_all_at(&[!b[0]], at.get() % CAP).unwrap();
    }

    fn only_finding(report: &Inspection) -> &Finding {
        let all: Vec<_> = report.findings().collect();
        assert_eq!(all.len(), 1, "{all:#?}");
        all[0]
    }

    #[test]
    fn a_healthy_log_is_summarised_exactly_and_left_untouched() {
        let d = tempfile::tempdir().unwrap();
        let batches = build(d.path(), 400);
        fs::write(d.path().join("0000000000050000.wal.tmp"), b"half-made").unwrap();
        let before = snapshot(d.path());

        let dir = LogDir::open(d.path()).unwrap();
        let report = dir.check().unwrap();
        assert!(report.is_valid());
        assert_eq!(report.findings().count(), 0, "{report:#?}");
        let data: Vec<&Seen> = batches.iter().filter(|b| !b.4).collect();
        let seg_sum = |f: fn(&SegmentSummary) -> u64| report.segments.iter().map(f).sum::<u64>();
        assert_eq!(seg_sum(|s| s.scan.batches), data.len() as u64);
        assert_eq!(seg_sum(|s| s.scan.records), 400);
        assert_eq!(
            seg_sum(|s| s.data_bytes),
            data.iter().map(|b| b.1.get() - b.0.get()).sum::<u64>()
        );
        assert!(report.segments.len() >= 3, "several segments");
        assert_eq!(report.start, Some(Lsn::new(64)));
        assert_eq!(report.end, batches.last().map(|b| b.1));
        assert_eq!(
            report.segments[0].scan.epochs,
            Some((Epoch::new(1), Epoch::new(1)))
        );
        let h = report.epoch_history.entries();
        assert_eq!(h.len(), 2);
        assert_eq!(h[0], (Epoch::new(1), Lsn::new(64)));

        // The batches the images show are the reader's, from the segment holding `from`.
        let from = data[data.len() / 2].0;
        let seen: Vec<Seen> = dir
            .images(from)
            .flat_map(|img| {
                let img = img.unwrap();
                img.batches()
                    .map(|b| {
                        let h = b.header();
                        (h.base, h.end(), h.epoch, h.record_count, h.padding)
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        let expected: Vec<Seen> = batches
            .iter()
            .filter(|b| b.0 >= Geometry::new(CAP).base_of(from))
            .copied()
            .collect();
        assert_eq!(seen, expected);
        assert_eq!(
            snapshot(d.path()),
            before,
            "inspection changed the directory"
        );
    }

    #[test]
    fn a_live_log_can_be_inspected() {
        let d = tempfile::tempdir().unwrap();
        let log = Log::open(d.path(), opts()).unwrap();
        let mut last = Lsn::ZERO;
        for seq in 0..300 {
            last = log.append(&record(seq)).unwrap();
        }
        log.commit(last, Durability::Local).wait().unwrap();
        let report = LogDir::open(d.path()).unwrap().check().unwrap();
        assert!(report.is_valid(), "{report:#?}");
        assert_eq!(report.end, Some(last));
        assert!(log.append(b"still writable").is_ok());
    }

    #[test]
    fn corruption_in_a_middle_segment_is_named_as_open_names_it() {
        let d = tempfile::tempdir().unwrap();
        let batches = build(d.path(), 400);
        let victim = batches
            .iter()
            .filter(|b| !b.4 && b.0.get() / CAP == 1)
            .nth(2)
            .unwrap();
        // A byte of the flush stamp's CRC, which the batch's CRC binds.
        flip(d.path(), Lsn::new(victim.0.get() + 45));

        let report = LogDir::open(d.path()).unwrap().check().unwrap();
        let bad = report.first_corruption().unwrap();
        assert_eq!(bad.path, seg_path(d.path(), victim.0));
        assert_eq!(bad.offset, victim.0.get() % CAP);
        assert_eq!(bad.lsn, Some(victim.0));
        assert!(bad.reason.contains("CRC mismatch"), "{bad}");
        assert!(!report.is_valid());

        let strict = Options {
            verify_all_on_open: true,
            ..opts()
        };
        match Log::open(d.path(), strict) {
            Err(Error::Corruption { path, offset, .. }) => {
                assert_eq!((path, offset), (bad.path.clone(), bad.offset));
            }
            other => panic!("open should refuse the log: {other:?}"),
        }
    }

    /// Removes the clean-close marker, leaving the log as a crash would.
    fn as_after_a_crash(dir: &Path) {
        fs::remove_file(dir.join("walship.closed")).unwrap();
    }

    #[test]
    fn a_torn_last_batch_is_a_torn_tail_where_open_cuts() {
        let d = tempfile::tempdir().unwrap();
        let batches = build(d.path(), 200);
        as_after_a_crash(d.path());
        let last = *batches.iter().rev().find(|b| !b.4).unwrap();
        let len = (last.1.get() - last.0.get()) as usize;
        poke(
            d.path(),
            Lsn::new(last.0.get() + len as u64 / 2),
            &vec![0; len - len / 2],
        );

        let report = LogDir::open(d.path()).unwrap().check().unwrap();
        assert!(report.is_valid());
        let torn = only_finding(&report);
        assert_eq!(torn.kind, FindingKind::TornTail);
        assert_eq!(torn.path, seg_path(d.path(), last.0));
        assert_eq!(torn.offset, last.0.get() % CAP);
        assert_eq!(report.end, Some(last.0));
        assert_eq!(Log::open(d.path(), opts()).unwrap().end_lsn(), last.0);
    }

    #[test]
    fn stray_bytes_after_the_end_are_leftovers() {
        let d = tempfile::tempdir().unwrap();
        let batches = build(d.path(), 50);
        let end = batches.last().unwrap().1;
        poke(d.path(), Lsn::new(end.get() + 300), &[0xab; 100]);
        let report = LogDir::open(d.path()).unwrap().check().unwrap();
        assert!(report.is_valid());
        let f = only_finding(&report);
        assert_eq!(
            (f.kind, f.offset),
            (FindingKind::Leftovers, end.get() % CAP)
        );
        assert!(f.reason.starts_with("100 non-zero bytes"), "{f}");
    }

    #[test]
    fn a_bad_batch_followed_by_a_valid_one_in_the_tail_is_corruption() {
        let d = tempfile::tempdir().unwrap();
        let batches = build(d.path(), 400);
        let tail_base = Geometry::new(CAP).base_of(batches.last().unwrap().0);
        let in_tail: Vec<_> = batches
            .iter()
            .filter(|b| !b.4 && b.0 >= tail_base)
            .collect();
        assert!(in_tail.len() >= 2);
        let data = Lsn::new(in_tail[0].0.get() + BATCH_HEADER_LEN as u64 + 1);
        poke(d.path(), data, b"\x00\x00");
        // Closed cleanly: everything before the end was flushed.
        let report = LogDir::open(d.path()).unwrap().check().unwrap();
        let bad = report.first_corruption().unwrap();
        assert_eq!(bad.offset, in_tail[0].0.get() % CAP);
        assert!(bad.reason.contains("closed cleanly"), "{bad}");
        // After a crash, a later batch's flush stamp proves it: the writer wrote it once
        // the damaged batch had been flushed (the build commits every ten records).
        as_after_a_crash(d.path());
        let report = LogDir::open(d.path()).unwrap().check().unwrap();
        let bad = report.first_corruption().unwrap();
        assert_eq!(bad.offset, in_tail[0].0.get() % CAP);
        assert!(
            bad.reason
                .contains("these bytes were durable and are damaged"),
            "{bad}"
        );
        assert!(matches!(
            Log::open(d.path(), opts()),
            Err(Error::Corruption { offset, .. }) if offset == bad.offset
        ));
    }

    #[test]
    fn valid_batches_after_an_unflushed_one_are_an_unflushed_tail_open_cuts() {
        let d = tempfile::tempdir().unwrap();
        build(d.path(), 200);
        // Three more records, each its own batch, in one segment (more if one crosses).
        let log = Log::open(d.path(), opts()).unwrap();
        let mut last: Vec<Lsn> = Vec::new();
        while last.len() < 3
            || last.iter().any(|&l| {
                Geometry::new(CAP).base_of(Lsn::new(l.get() - 1))
                    != Geometry::new(CAP).base_of(Lsn::new(last[0].get() - 1))
            })
        {
            let lsn = log.append(&record(10_000 + last.len() as u64)).unwrap();
            log.commit(lsn, Durability::Local).wait().unwrap();
            last.push(lsn);
            if last.len() > 3 {
                last.remove(0);
            }
        }
        let batches = batches_of(&log);
        log.close().unwrap();
        drop(log);
        as_after_a_crash(d.path());
        // The last three data batches, rewritten as a writer that had flushed nothing of
        // them would have stamped them; then the first of them loses its bytes.
        let data: Vec<&Seen> = batches.iter().filter(|b| !b.4).collect();
        let tail = &data[data.len() - 3..];
        let seg = Geometry::new(CAP).base_of(tail[0].0);
        assert!(tail.iter().all(|b| Geometry::new(CAP).base_of(b.0) == seg));
        for b in tail {
            let mut h = [0u8; BATCH_HEADER_LEN];
            let f = fs::File::open(seg_path(d.path(), b.0)).unwrap();
            f.read_exact_at(&mut h, b.0.get() % CAP).unwrap();
            format::restamp(&mut h, tail[0].0);
            poke(d.path(), b.0, &h);
        }
        poke(
            d.path(),
            Lsn::new(tail[0].0.get() + BATCH_HEADER_LEN as u64 + 1),
            b"\xff\xfe",
        );
        let report = LogDir::open(d.path()).unwrap().check().unwrap();
        assert!(report.is_valid(), "{report:#?}");
        let f = only_finding(&report);
        assert_eq!(
            (f.kind, f.lsn),
            (FindingKind::UnflushedTail, Some(tail[0].0))
        );
        assert!(f.reason.contains("2 valid batch(es)"), "{f}");
        let (log, open) = Log::open_with_report(d.path(), opts()).unwrap();
        assert_eq!(log.end_lsn(), tail[0].0);
        let cut = open.unflushed_cut.expect("reported");
        assert_eq!((cut.at, cut.discarded_batches), (tail[0].0, 2));
        assert_eq!(cut.discarded_until, tail[2].1);
        drop(log);
        let report = LogDir::open(d.path()).unwrap().check().unwrap();
        assert_eq!(
            report.findings().count(),
            0,
            "the next open cut and zeroed it"
        );
    }

    #[test]
    fn batches_must_agree_with_the_epoch_history() {
        let d = tempfile::tempdir().unwrap();
        let batches = build(d.path(), 400);
        let first_of_2 = batches.iter().find(|b| b.2 == Epoch::new(2)).unwrap().0;
        let end = batches.last().unwrap().1;

        // Epoch 2 recorded as starting later than its first batch.
        let mut h = EpochHistory::default();
        h.push(Epoch::new(1), Lsn::new(64)).unwrap();
        h.push(Epoch::new(2), Lsn::new(first_of_2.get() + 1))
            .unwrap();
        h.store(&OsStorage, d.path()).unwrap();
        let report = LogDir::open(d.path()).unwrap().check().unwrap();
        let bad = report.first_corruption().unwrap();
        assert_eq!(
            (bad.path.clone(), bad.lsn),
            (seg_path(d.path(), first_of_2), Some(first_of_2))
        );
        assert!(bad.reason.contains("before the epoch starts"), "{bad}");

        // An epoch begun after the end: open drops it, so it is not corruption.
        let mut h = EpochHistory::default();
        h.push(Epoch::new(1), Lsn::new(64)).unwrap();
        h.push(Epoch::new(2), first_of_2).unwrap();
        h.push(Epoch::new(5), Lsn::new(end.get() + 1000)).unwrap();
        h.store(&OsStorage, d.path()).unwrap();
        let report = LogDir::open(d.path()).unwrap().check().unwrap();
        assert!(report.is_valid());
        let ahead = only_finding(&report);
        assert_eq!(ahead.kind, FindingKind::HistoryAhead);
        assert_eq!(
            (ahead.path.clone(), ahead.offset),
            (d.path().join(EPOCH_FILE), 48)
        );

        // No history at all for batches of epochs 1 and 2.
        let mut h = EpochHistory::default();
        h.push(Epoch::new(2), first_of_2).unwrap();
        h.store(&OsStorage, d.path()).unwrap();
        let report = LogDir::open(d.path()).unwrap().check().unwrap();
        let bad = report.first_corruption().unwrap();
        assert_eq!(bad.offset, 64);
        assert!(bad.reason.contains("epoch 1 has no entry"), "{bad}");
    }

    #[test]
    fn follower_copies_and_truncated_logs_agree_with_their_history() {
        let leader_dir = tempfile::tempdir().unwrap();
        let follower_dir = tempfile::tempdir().unwrap();
        let leader = Log::open(leader_dir.path(), opts()).unwrap();
        let follower = Log::open(follower_dir.path(), opts()).unwrap();
        for seq in 0..100 {
            leader.append(&record(seq)).unwrap();
        }
        for (epoch, n) in [(1, 150), (2, 5), (4, 200)] {
            leader.begin_epoch(Epoch::new(epoch)).unwrap();
            for seq in 0..n {
                leader.append(&record(seq)).unwrap();
            }
        }
        leader
            .commit(leader.end_lsn(), Durability::Local)
            .wait()
            .unwrap();
        // Cut in the middle of epoch 4, then lead again in epoch 6.
        let of_4: Vec<Seen> = batches_of(&leader)
            .into_iter()
            .filter(|b| b.2 == Epoch::new(4))
            .collect();
        assert!(of_4.len() >= 2);
        let cut = of_4[of_4.len() / 2].1;
        leader.truncate_suffix(cut).unwrap();
        leader.begin_epoch(Epoch::new(6)).unwrap();
        for seq in 0..150 {
            leader.append(&record(seq)).unwrap();
        }
        leader
            .commit(leader.end_lsn(), Durability::Local)
            .wait()
            .unwrap();
        let mut r = leader.reader(leader.start_lsn()).unwrap();
        while let Some(b) = r.try_next().unwrap() {
            follower.append_encoded(b.bytes().clone()).unwrap();
        }
        follower
            .commit(follower.end_lsn(), Durability::Local)
            .wait()
            .unwrap();
        for (log, d) in [(&leader, &leader_dir), (&follower, &follower_dir)] {
            let report = LogDir::open(d.path()).unwrap().check().unwrap();
            assert_eq!(report.findings().count(), 0, "{report:#?}");
            assert_eq!(report.end, Some(log.end_lsn()));
        }
    }

    #[test]
    fn damage_around_segments_is_corruption_at_their_start() {
        let d = tempfile::tempdir().unwrap();
        let batches = build(d.path(), 400);
        let tail_base = Geometry::new(CAP).base_of(batches.last().unwrap().0);

        // A spare holding a valid batch (not at its start), placed in the first
        // segment after the tail that the preparer has not made: whether it made
        // the next one before the close is timing, and a hole would add a gap.
        let mut spare_base = Lsn::new(tail_base.get() + CAP);
        while crate::segment::segment_path(d.path(), spare_base).exists() {
            spare_base = Lsn::new(spare_base.get() + CAP);
        }
        let spare = crate::segment::segment_path(d.path(), spare_base);
        let mut img = vec![0u8; CAP as usize];
        img[..SEGMENT_HEADER_LEN].copy_from_slice(
            &SegmentHeader {
                base: spare_base,
                capacity: CAP,
            }
            .encode(),
        );
        let at = spare_base.get() + 1000;
        let b = encode_batch(Lsn::new(at), Epoch::new(2), 1, &[b"stray".as_slice()]);
        img[1000..1000 + b.len()].copy_from_slice(&b);
        fs::write(&spare, &img).unwrap();
        as_after_a_crash(d.path());
        let report = LogDir::open(d.path()).unwrap().check().unwrap();
        let f = only_finding(&report);
        // Its stamp says everything before it was flushed: the end of the log is damage.
        let end = batches.last().unwrap().1;
        assert_eq!(
            (f.path.clone(), f.offset),
            (seg_path(d.path(), end), end.get() % CAP)
        );
        assert!(f
            .reason
            .contains(&format!("valid batch at {}", Lsn::new(at))));
        fs::remove_file(&spare).unwrap();

        // A segment header that is not this segment's.
        poke(d.path(), Lsn::new(CAP + 20), b"\x01");
        let report = LogDir::open(d.path()).unwrap().check().unwrap();
        let bad = only_finding(&report);
        assert_eq!(
            (bad.path.clone(), bad.offset),
            (seg_path(d.path(), Lsn::new(CAP)), 0)
        );
        assert!(bad.reason.starts_with("segment header: "), "{bad}");

        // A missing segment.
        fs::remove_file(seg_path(d.path(), Lsn::new(CAP))).unwrap();
        let report = LogDir::open(d.path()).unwrap().check().unwrap();
        let bad = only_finding(&report);
        assert_eq!(
            (bad.path.clone(), bad.offset),
            (seg_path(d.path(), Lsn::new(2 * CAP)), 0)
        );
        assert!(bad.reason.starts_with("segment gap"), "{bad}");

        // A file name no segment can have.
        let odd = d.path().join("ffffffffffffffff.wal");
        fs::write(&odd, vec![1u8; CAP as usize]).unwrap();
        let report = LogDir::open(d.path()).unwrap().check().unwrap();
        let last = report.segments.last().unwrap();
        assert_eq!((last.path.clone(), last.scan.batches), (odd, 0));
        assert!(last
            .findings
            .iter()
            .any(|f| f.reason.contains("not a segment of")));
    }

    #[test]
    fn what_is_not_a_log_is_refused() {
        let d = tempfile::tempdir().unwrap();
        assert!(matches!(LogDir::open(d.path()), Err(Error::Io { .. })));
        build(d.path(), 10);
        fs::remove_file(d.path().join(META_FILE)).unwrap();
        assert!(matches!(
            LogDir::open(d.path()),
            Err(Error::Corruption { offset: 0, .. })
        ));
    }
}
