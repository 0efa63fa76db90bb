//! `walship inspect`: what a log directory holds, segment by segment, and what is wrong
//! with it; as tables or as one JSON document.

use std::io::Write;
use std::path::PathBuf;

use serde::Serialize;
use walship_engine::inspect::{Finding, Inspection, LogDir, SegmentSummary};
use walship_engine::Lsn;
use walship_tools::outcome::Failure;
use walship_tools::text::{size, Align, Table};

/// Show a log directory's segments, epoch history and problems (offline, read-only)
///
/// For each segment file: its base LSN, the end of its valid batches, how many batches
/// (padding not counted) and records it holds, the bytes of those batches (headers
/// included; segment header and padding not), the range of epochs of its batches, and
/// its state: full, tail (holds the end of the log), spare (prepared or recycled, not
/// yet written) or corrupt. Then the epoch history (the `epochs` file) and every
/// problem found, each named by file and byte offset (`walship verify` for a verdict).
///
/// The engine does not store the embedder's checkpoint in the log directory (it is
/// reported to the running log), so there is none to show.
///
/// Read-only: takes no lock and changes nothing, so it can look at a log a running
/// process has open (its last segment may then show a torn tail: a batch mid-write).
/// Exits 0 when the directory could be inspected, whatever it holds; 2 when it could not
/// be read; 1 when its meta or epoch history file is corrupt.
///
/// --json prints one document:
///   { "format": "walship-inspect/1", "dir", "segment_capacity" (bytes),
///     "start", "end", "checkpoint" (always null),
///     "segments": [ { "file", "base", "end" (null for a spare), "state",
///                     "batches", "records", "bytes",
///                     "epochs": { "first", "last" } or null } ],
///     "epoch_history": [ { "epoch", "start" } ],
///     "problems": [ { "kind", "file", "offset", "lsn" (or null), "reason" } ],
///     "valid" (false when a problem is corruption) }
/// LSNs are strings in PostgreSQL's HI/LO hex form (as `walship dump --from` takes
/// them); counts, sizes and offsets are numbers; kind is corruption, torn-tail,
/// unflushed-tail, leftovers or history-ahead.
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub(crate) struct Args {
    /// The log directory
    dir: PathBuf,
    /// Print one JSON document instead of tables
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: &Args, out: &mut dyn Write) -> Result<(), Failure> {
    let logdir = LogDir::open(&args.dir)?;
    let report = logdir.check()?;
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &Document::new(&logdir, &report))
            .map_err(|e| Failure::from(std::io::Error::from(e)))?;
        writeln!(out)?;
    } else {
        write_text(&logdir, &report, out)?;
    }
    Ok(())
}

/// A segment's state in one word.
fn state(s: &SegmentSummary, is_tail: bool) -> &'static str {
    if s.findings.iter().any(|f| f.kind.is_corruption()) {
        "corrupt"
    } else if s.spare {
        "spare"
    } else if is_tail {
        "tail"
    } else {
        "full"
    }
}

fn file_name(s: &SegmentSummary) -> String {
    s.path.file_name().map_or_else(
        || s.path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// Index of the segment holding the end of the log: the last one that is not a spare.
fn tail_index(report: &Inspection) -> Option<usize> {
    report.segments.iter().rposition(|s| !s.spare)
}

fn opt_lsn(lsn: Option<Lsn>) -> String {
    lsn.map_or_else(|| "-".to_owned(), |l| l.to_string())
}

fn write_text(logdir: &LogDir, report: &Inspection, out: &mut dyn Write) -> Result<(), Failure> {
    let tail = tail_index(report);
    let mut head = Table::new(&[("", Align::Left), ("", Align::Left)]);
    head.row([
        "log directory".to_owned(),
        logdir.path().display().to_string(),
    ]);
    head.row(["segment size".to_owned(), size(report.segment_capacity)]);
    head.row(["start".to_owned(), opt_lsn(report.start)]);
    head.row(["end".to_owned(), opt_lsn(report.end)]);
    head.row([
        "checkpoint",
        "not stored in the log directory (the embedder reports it to the running log)",
    ]);
    head.write(out)?;
    writeln!(out)?;

    let mut segs = Table::new(&[
        ("file", Align::Left),
        ("base", Align::Left),
        ("end", Align::Left),
        ("batches", Align::Right),
        ("records", Align::Right),
        ("bytes", Align::Right),
        ("epochs", Align::Left),
        ("state", Align::Left),
    ]);
    for (i, s) in report.segments.iter().enumerate() {
        let epochs = match s.scan.epochs {
            None => "-".to_owned(),
            Some((a, b)) if a == b => a.to_string(),
            Some((a, b)) => format!("{a}-{b}"),
        };
        segs.row([
            file_name(s),
            s.base.to_string(),
            if s.spare {
                "-".to_owned()
            } else {
                s.scan.end.to_string()
            },
            s.scan.batches.to_string(),
            s.scan.records.to_string(),
            s.data_bytes.to_string(),
            epochs,
            state(s, Some(i) == tail).to_owned(),
        ]);
    }
    if report.segments.is_empty() {
        writeln!(out, "no segments")?;
    } else {
        segs.write(out)?;
    }
    let (batches, records) = report
        .segments
        .iter()
        .fold((0, 0), |(b, r), s| (b + s.scan.batches, r + s.scan.records));
    writeln!(
        out,
        "{} segments, {batches} batches, {records} records",
        report.segments.len()
    )?;
    writeln!(out)?;

    let entries = report.epoch_history.entries();
    if entries.is_empty() {
        writeln!(out, "epoch history: empty (no epoch was ever begun)")?;
    } else {
        writeln!(
            out,
            "epoch history ({})",
            logdir.epoch_history_path().display()
        )?;
        let mut t = Table::new(&[("epoch", Align::Right), ("start", Align::Left)]);
        for (e, s) in entries {
            t.row([e.to_string(), s.to_string()]);
        }
        t.write(out)?;
    }
    writeln!(out)?;

    let findings: Vec<&Finding> = report.findings().collect();
    if findings.is_empty() {
        writeln!(out, "problems: none")?;
    } else {
        writeln!(out, "problems")?;
        for f in findings {
            writeln!(out, "{:<13}  {f}", f.kind)?;
        }
    }
    Ok(())
}

/// The `--json` document (its schema is in the command's help).
#[derive(Serialize)]
struct Document {
    format: &'static str,
    dir: String,
    segment_capacity: u64,
    start: Option<String>,
    end: Option<String>,
    checkpoint: Option<String>,
    segments: Vec<SegmentJson>,
    epoch_history: Vec<EpochJson>,
    problems: Vec<ProblemJson>,
    valid: bool,
}

#[derive(Serialize)]
struct SegmentJson {
    file: String,
    base: String,
    end: Option<String>,
    state: &'static str,
    batches: u64,
    records: u64,
    bytes: u64,
    epochs: Option<EpochRange>,
}

#[derive(Serialize)]
struct EpochRange {
    first: u64,
    last: u64,
}

#[derive(Serialize)]
struct EpochJson {
    epoch: u64,
    start: String,
}

#[derive(Serialize)]
struct ProblemJson {
    kind: &'static str,
    file: String,
    offset: u64,
    lsn: Option<String>,
    reason: String,
}

impl Document {
    fn new(logdir: &LogDir, report: &Inspection) -> Document {
        let tail = tail_index(report);
        Document {
            format: "walship-inspect/1",
            dir: logdir.path().display().to_string(),
            segment_capacity: report.segment_capacity,
            start: report.start.map(|l| l.to_string()),
            end: report.end.map(|l| l.to_string()),
            checkpoint: None,
            segments: report
                .segments
                .iter()
                .enumerate()
                .map(|(i, s)| SegmentJson {
                    file: file_name(s),
                    base: s.base.to_string(),
                    end: (!s.spare).then(|| s.scan.end.to_string()),
                    state: state(s, Some(i) == tail),
                    batches: s.scan.batches,
                    records: s.scan.records,
                    bytes: s.data_bytes,
                    epochs: s.scan.epochs.map(|(a, b)| EpochRange {
                        first: a.get(),
                        last: b.get(),
                    }),
                })
                .collect(),
            epoch_history: report
                .epoch_history
                .entries()
                .iter()
                .map(|(e, s)| EpochJson {
                    epoch: e.get(),
                    start: s.to_string(),
                })
                .collect(),
            problems: report
                .findings()
                .map(|f| ProblemJson {
                    kind: f.kind.as_str(),
                    file: f.path.display().to_string(),
                    offset: f.offset,
                    lsn: f.lsn.map(|l| l.to_string()),
                    reason: f.reason.clone(),
                })
                .collect(),
            valid: report.is_valid(),
        }
    }
}
