//! `walship dump`: the batches and records of a log directory with their positions,
//! epochs, commit times, lengths and CRC status, and their payloads, as `pg_waldump`
//! and `kafka-dump-log` show theirs.

use std::io::Write;
use std::path::PathBuf;

use walship_engine::inspect::{Finding, LogDir};
use walship_engine::Lsn;
use walship_tools::outcome::Failure;
use walship_tools::text::{payload, timestamp_us};

/// Width of LSN fields, so that lines of one log line up (`1/FFFFFFFF` fits).
const LSN_WIDTH: usize = 10;

/// Print the batches and records of a log directory (offline, read-only)
///
/// From the segment holding --from on, in LSN order, one line per batch and one per
/// record at or after --from:
///
///   segment 0000000000000000.wal  base 0/0
///   …
///   padding  lsn 0/FE99      end 0/10000     epoch 1  len 359  offset 65177  crc 0x8fb0c58d ok
///   segment 0000000000010000.wal  base 0/10000
///   batch    lsn 0/10040     end 0/109D2     epoch 1  time 2026-11-22T01:53:51.868898Z  records 4  len 2450  offset 64  crc 0xade81660 ok
///     record lsn 0/10313     len 679    "put key-00167=vvvvvvvvvvvvvvvvvv" +647 bytes
///     record lsn 0/106B8     len 209    0xa9b0b7bec5ccd3dae1e8eff6fd040b12 +177 bytes
///
/// A record's LSN is its commit token: the position just past it, as `append` returns it.
/// The batch time is its commit timestamp (leader clock, µs, UTC). Payloads that are
/// text are printed quoted and escaped, others as 0x hex; at most --payload-bytes of
/// each, then how many bytes more.
///
/// Every batch printed passed its CRC, framing and position checks. Where a segment's
/// valid batches stop, the spot is printed with what is wrong and what `open` does about
/// it (CORRUPTION, TORN-TAIL, LEFTOVERS), and the dump goes on with the next segment.
///
/// Read-only: takes no lock and changes nothing. Exits 1 if it printed corruption, 2 if
/// the directory could not be read, 0 otherwise.
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub(crate) struct Args {
    /// The log directory
    dir: PathBuf,
    /// First position to show, HI/LO hex (0/16B3740) or decimal: the record holding it (or starting there) comes first [default: the start of the log]
    #[arg(long, value_name = "LSN", value_parser = super::parse_lsn, default_value_t = Lsn::ZERO, hide_default_value = true)]
    from: Lsn,
    /// Print at most this many records
    #[arg(long, value_name = "N")]
    limit: Option<u64>,
    /// Print at most this many bytes of each payload
    #[arg(long, value_name = "BYTES", default_value_t = 64)]
    payload_bytes: usize,
}

pub(crate) fn run(args: &Args, out: &mut dyn Write) -> Result<(), Failure> {
    let logdir = LogDir::open(&args.dir)?;
    let from = args.from;
    let limit = args.limit.unwrap_or(u64::MAX);
    let mut shown = 0u64;
    let mut limited = false;
    let mut corrupt = false;
    let mut end = None;
    let mut print_finding = |out: &mut dyn Write, f: &Finding| {
        corrupt |= f.kind.is_corruption();
        writeln!(out, "{}  {f}", f.kind.as_str().to_uppercase())
    };
    'segments: for image in logdir.images(from) {
        let image = image?;
        let s = image.summary();
        if !s.spare {
            end = Some(s.scan.end);
        }
        // Problems before `from` are left out, except where the valid batches stop: that
        // spot is why nothing of the segment at or after `from` can be shown.
        let mut findings = s
            .findings
            .iter()
            .filter(|f| f.lsn.is_none_or(|l| l >= from || l == s.scan.end))
            .peekable();
        if s.spare && findings.peek().is_none() {
            continue;
        }
        let name = s.path.file_name().map_or_else(
            || s.path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        writeln!(out, "segment {name}  base {}", s.base)?;
        for batch in image.batches() {
            while let Some(f) = findings.next_if(|f| f.offset <= batch.offset()) {
                print_finding(out, f)?;
            }
            let h = batch.header();
            if h.end() <= from {
                continue;
            }
            if shown >= limit {
                limited = true;
                break 'segments;
            }
            let (lsn, batch_end) = (h.base.to_string(), h.end().to_string());
            if h.padding {
                writeln!(
                    out,
                    "padding  lsn {lsn:<LSN_WIDTH$}  end {batch_end:<LSN_WIDTH$}  epoch {}  len {}  offset {}  crc {:#010x} ok",
                    h.epoch, h.len, batch.offset(), h.crc
                )?;
                continue;
            }
            writeln!(
                out,
                "batch    lsn {lsn:<LSN_WIDTH$}  end {batch_end:<LSN_WIDTH$}  epoch {}  time {}  records {}  len {}  offset {}  crc {:#010x} ok",
                h.epoch,
                timestamp_us(h.timestamp_us),
                h.record_count,
                h.len,
                batch.offset(),
                h.crc
            )?;
            for (record_end, data) in batch.records() {
                if record_end <= from {
                    continue;
                }
                if shown >= limit {
                    limited = true;
                    break 'segments;
                }
                let lsn = record_end.to_string();
                writeln!(
                    out,
                    "  record lsn {lsn:<LSN_WIDTH$}  len {:<6} {}",
                    data.len(),
                    payload(data, args.payload_bytes)
                )?;
                shown += 1;
            }
        }
        for f in findings {
            print_finding(out, f)?;
        }
    }
    if limited {
        writeln!(out, "stopped after {shown} records (--limit)")?;
    } else {
        match end {
            Some(end) if from > end => {
                writeln!(out, "nothing at or after {from}: the log ends at {end}")?
            }
            Some(end) => writeln!(out, "{shown} records; the log ends at {end}")?,
            None => writeln!(out, "{shown} records; the log has no segments")?,
        }
    }
    if corrupt {
        return Err(Failure::FoundCorruption);
    }
    Ok(())
}
