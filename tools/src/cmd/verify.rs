//! `walship verify`: a verdict on a log directory, by exit code, naming the first bad
//! spot by file and byte offset.

use std::io::Write;
use std::path::PathBuf;

use walship_engine::inspect::{FindingKind, LogDir};
use walship_engine::Error;
use walship_tools::outcome::Failure;

/// Check a log directory: every CRC, LSN continuity, epochs, segment headers
///
/// Reads every segment in full and checks what opening the log checks, everywhere
/// (`open` itself scans only the last two segments unless told otherwise):
///   - the meta file and the epoch history file (their CRCs);
///   - each segment: file size, header (magic, version, CRC, base, capacity), no gap
///     to the segment before;
///   - each batch: CRC, record framing, its LSN (continuity: every segment but the last
///     is a gapless chain of batches to its end), placement within its segment, and
///     its epoch: never lower than the batch before, and inside that epoch's range in
///     the epoch history;
///   - where the chain of valid batches stops, what the valid batches after that spot
///     say: each carries the flushed position its writer knew when writing it.
///
/// Prints a summary, then OK, or the FIRST bad spot in log order as
///   CORRUPT <file> at offset <byte offset> (LSN <lsn>): <what is wrong>
/// and how many more problems follow (`walship inspect` lists them all).
///
/// Torn tail: an incomplete last batch (zeroed or partly written) with nothing valid
/// after it is what a crash mid-write leaves. The engine's recovery treats it as the
/// end of the log and zeroes it on the next open (in RecoveryMode::Strict too), and
/// nothing acknowledged at Local durability can be in it, since an acknowledged batch
/// was flushed in full. So verify reports it as a WARNING with its file and offset and
/// still exits 0.
///
/// Unflushed tail: an invalid batch followed by valid ones, none of which was written
/// after it had been flushed (their flush stamps say so), is what a power loss leaves
/// when the disk kept later pages of unflushed data and lost an earlier one. Nothing in
/// it was acknowledged; the next open ends the log at the invalid batch and zeroes the
/// rest (reporting the cut). A WARNING too, exit 0.
///
/// Non-zero leftovers after the end (NOTE) and an epoch history entry starting after
/// the end (NOTE) are zeroed or dropped by open. Corruption is damage to bytes that had
/// been flushed: an invalid batch followed by a valid one written after it was flushed
/// (an incomplete segment before the last is one case), or, when the log was last
/// closed cleanly (its clean-close marker), any invalid batch before the end it records.
///
/// Read-only: takes no lock and changes nothing. On a log a running process is
/// writing, the last batch may be caught mid-write and show as a torn tail.
///
/// Exit codes: 0 valid (warnings and notes allowed), 1 corrupt, 2 the directory could
/// not be read or is not a log.
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub(crate) struct Args {
    /// The log directory
    dir: PathBuf,
}

pub(crate) fn run(args: &Args, out: &mut dyn Write) -> Result<(), Failure> {
    let logdir = match LogDir::open(&args.dir) {
        Ok(d) => d,
        Err(Error::Corruption {
            path,
            offset,
            reason,
        }) => {
            writeln!(
                out,
                "CORRUPT {} at offset {offset}: {reason}",
                path.display()
            )?;
            return Err(Failure::FoundCorruption);
        }
        Err(e) => return Err(e.into()),
    };
    let report = logdir.check()?;
    let spares = report.segments.iter().filter(|s| s.spare).count();
    let (batches, records) = report
        .segments
        .iter()
        .fold((0, 0), |(b, r), s| (b + s.scan.batches, r + s.scan.records));
    let epochs = report
        .segments
        .iter()
        .filter_map(|s| s.scan.epochs)
        .fold(None, |acc, (a, b)| match acc {
            None => Some((a, b)),
            Some((lo, hi)) => Some((std::cmp::min(lo, a), std::cmp::max(hi, b))),
        })
        .map_or_else(|| "none".to_owned(), |(a, b)| format!("{a}..{b}"));
    let span = match (report.start, report.end) {
        (Some(s), Some(e)) => format!("{s}..{e}"),
        _ => "empty".to_owned(),
    };
    writeln!(
        out,
        "checked {}: {} segments ({spares} spare), log {span}, {batches} batches, {records} records, epochs {epochs}, {} epoch history entries",
        logdir.path().display(),
        report.segments.len(),
        report.epoch_history.entries().len(),
    )?;
    for f in report.findings().filter(|f| !f.kind.is_corruption()) {
        let label = match f.kind {
            FindingKind::TornTail => "WARNING torn tail:",
            FindingKind::UnflushedTail => "WARNING unflushed tail:",
            _ => "NOTE",
        };
        writeln!(out, "{label} {f}")?;
    }
    match report.first_corruption() {
        None => {
            writeln!(out, "OK")?;
            Ok(())
        }
        Some(bad) => {
            writeln!(out, "CORRUPT {bad}")?;
            let more = report.findings().filter(|f| f.kind.is_corruption()).count() - 1;
            if more > 0 {
                writeln!(
                    out,
                    "{more} more corrupt spot(s) after it (walship inspect lists them all)"
                )?;
            }
            Err(Failure::FoundCorruption)
        }
    }
}
