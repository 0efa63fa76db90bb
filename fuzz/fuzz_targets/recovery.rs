//! Fuzz target `recovery`: damages a copy of a valid log directory as the input says
//! (overwrite, truncate, append garbage, flip bits; in the tail segment, the segment
//! before it, the spare, a new segment, the epoch history, the meta file or the
//! clean-close marker `walship.closed`) and opens it with `RecoveryMode::Strict` and
//! `RecoveryMode::TruncateCorrupt`.
//!
//! The template was closed cleanly, so it holds the marker: where the chain of valid
//! batches breaks before the end it records, recovery must treat the break as corruption.
//! An input that damages (or empties) the marker leaves the log as a crash would; then
//! only the flush stamps of the valid batches after the break tell corruption (a stamp
//! past the break) from an unflushed tail, which recovery cuts (`OpenReport::unflushed_cut`).
//! The template's tail is written in two appends with a flush in between, so both
//! verdicts are reachable within the tail (see `walship_fuzz::template_split`).
//!
//! Properties checked:
//! - `open` returns `Ok` or `Err(Error::Corruption)`, never panics or hangs;
//! - after a successful open every record reads back without error, in increasing LSN
//!   order, `end >= start`, and every record of a batch before the first damaged byte is
//!   there with its LSN and payload (recovery loses nothing that precedes the damage);
//! - whatever `Strict` opens, `TruncateCorrupt` opens to the same end without repairing
//!   (and cuts the same unflushed tail, if any);
//! - recovery is idempotent: when it zeroed a torn tail, cut an unflushed tail or
//!   repaired, closing and reopening (strictly) gives the same end.
//!
//! Repaired logs get the same full checks as any other (the repair bug kept in
//! fuzz/regressions/recovery/known-repair-ends-after-hole is fixed: repair scans every
//! segment). `WALSHIP_FUZZ_CHECK_REPAIRED=0` relaxes them, for bisecting old engines.
//!
//! The template log is built once per process (deterministically) on tmpfs when
//! available and copied for every input.

#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use walship_engine::{Error, Log, Lsn, RecoveryMode};
use walship_fuzz::{
    apply_ops, build_template, copy_dir, must_survive, options, parse_ops, Template,
};

fn scratch_root() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

static TEMPLATE_DIR: OnceLock<PathBuf> = OnceLock::new();

extern "C" fn remove_template() {
    if let Some(d) = TEMPLATE_DIR.get() {
        let _ = std::fs::remove_dir_all(d);
    }
}

fn template() -> &'static Template {
    static T: OnceLock<Template> = OnceLock::new();
    T.get_or_init(|| {
        let dir = scratch_root().join(format!("walship-fuzz-template-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        TEMPLATE_DIR.set(dir.clone()).expect("template made once");
        // SAFETY: registers a plain `extern "C" fn` with no captured state.
        unsafe { libc::atexit(remove_template) };
        build_template(&dir)
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Opened {
    start: Lsn,
    end: Lsn,
    repaired_at: Option<Lsn>,
    /// Where an unflushed tail was cut, if one was.
    unflushed_at: Option<Lsn>,
    records: usize,
    /// Whether recovery changed the directory (zeroed a torn tail, cut an unflushed tail
    /// or repaired).
    changed: bool,
}

/// Whether repaired logs get the full checks (see the module documentation).
fn check_repaired() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("WALSHIP_FUZZ_CHECK_REPAIRED").is_none_or(|v| v != "0"))
}

/// Opens `dir` in `mode`; on success reads every record and checks them. `None` for a
/// refused open (which must be a typed corruption error).
fn open_and_check(t: &Template, dir: &Path, mode: RecoveryMode, damage: Lsn) -> Option<Opened> {
    let (log, report) = match Log::open_with_report(dir, options(mode)) {
        Ok(x) => x,
        Err(Error::Corruption { .. }) => return None,
        Err(e) => panic!("open ({mode:?}) failed with a non-corruption error: {e:?}"),
    };
    let start = log.start_lsn();
    let end = log.end_lsn();
    assert!(end >= start, "end {end} before start {start}");
    let mut reader = log.record_reader(start).expect("record reader at start");
    let survivors = must_survive(t, damage);
    let mut n = 0usize;
    let mut last = start;
    // Every record takes at least 4 bytes of LSN space: this bounds the loop.
    let bound = end.get().saturating_sub(start.get()) / 4 + 2;
    let lenient = report.repaired_at.is_some() && !check_repaired();
    loop {
        let rec = match reader.try_next() {
            Ok(Some(rec)) => rec,
            Ok(None) => break,
            // Known issue: a repaired log may end after invalid bytes.
            Err(Error::Corruption { .. }) if lenient && n >= survivors.len() => break,
            Err(e) => panic!("reading record {n} ({mode:?}, {report:?}): {e:?}"),
        };
        assert!(
            rec.lsn > last && rec.lsn <= end,
            "record lsn {} after {last}, end {end}",
            rec.lsn
        );
        if let Some(want) = survivors.get(n) {
            assert_eq!(rec.lsn, want.lsn, "record {n} moved ({mode:?})");
            assert_eq!(
                &rec.data[..],
                &want.data[..],
                "record {n} changed ({mode:?})"
            );
        }
        last = rec.lsn;
        n += 1;
        assert!((n as u64) < bound, "reader does not stop");
    }
    assert!(
        n >= survivors.len(),
        "{mode:?}: {n} records read, but the {} records before the damage at {damage} must survive (end {end}, report {report:?})",
        survivors.len()
    );
    drop(reader);
    log.close().expect("close");
    drop(log);
    Some(Opened {
        start,
        end,
        repaired_at: report.repaired_at,
        unflushed_at: report.unflushed_cut.as_ref().map(|c| c.at),
        records: n,
        changed: report.zeroed_tail_bytes > 0
            || report.repaired_at.is_some()
            || report.unflushed_cut.is_some(),
    })
}

fuzz_target!(|data: &[u8]| {
    let t = template();
    let ops = parse_ops(data);
    let work = tempfile::Builder::new()
        .prefix("walship-fuzz-case")
        .tempdir_in(scratch_root())
        .expect("scratch dir");
    let strict_dir = work.path().join("strict");
    let repair_dir = work.path().join("repair");
    copy_dir(&t.dir, &strict_dir);
    let damage = apply_ops(t, &strict_dir, &ops);
    copy_dir(&t.dir, &repair_dir);
    apply_ops(t, &repair_dir, &ops);

    let strict = open_and_check(t, &strict_dir, RecoveryMode::Strict, damage);
    let repair = open_and_check(t, &repair_dir, RecoveryMode::TruncateCorrupt, damage);
    if let Some(s) = &strict {
        let r = repair
            .as_ref()
            .expect("TruncateCorrupt refused a log that Strict opened");
        assert_eq!(s.repaired_at, None);
        assert_eq!(
            (r.end, r.records, r.repaired_at, r.unflushed_at, r.changed),
            (s.end, s.records, None, s.unflushed_at, s.changed),
            "repair changed a clean log"
        );
    }
    for (first, dir) in [(&strict, &strict_dir), (&repair, &repair_dir)] {
        let Some(first) = first else { continue };
        if !first.changed {
            // Recovery wrote nothing: reopening sees the same bytes (and costs an open).
            continue;
        }
        if first.repaired_at.is_some() && !check_repaired() {
            // Known issues: reopening a repaired log strictly may fail or find another end;
            // it must still reopen in repair mode with everything before the damage.
            open_and_check(t, dir, RecoveryMode::TruncateCorrupt, damage).unwrap_or_else(|| {
                panic!("a repaired log ({first:?}) does not reopen in repair mode")
            });
            continue;
        }
        let again = open_and_check(t, dir, RecoveryMode::Strict, damage)
            .unwrap_or_else(|| panic!("a log that opened ({first:?}) does not reopen strictly"));
        assert_eq!(
            (again.start, again.end, again.records),
            (first.start, first.end, first.records),
            "reopen moved the log"
        );
    }
});
