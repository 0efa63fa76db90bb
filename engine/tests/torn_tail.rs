//! Recovery from torn and garbage tails written straight into the tail segment, from
//! unflushed tails a power loss left out of order, and from corruption of flushed data.
//!
//! The template log is closed and its clean-close marker removed: the state a crash after
//! the last flush leaves (with the marker, any invalid batch before the end is damage).

mod common;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use common::{backends, payload, small, verified, Rng};
use walship_engine::format::{BatchHeader, BATCH_HEADER_LEN, SEGMENT_HEADER_LEN};
use walship_engine::{BackendKind, Durability, Error, Log, Lsn, Options, RecoveryMode};

/// A closed log with records spread over a few segments; returns each batch's
/// `(base, end, records as (lsn, data))`, padding included (with no records).
type Batches = Vec<(Lsn, Lsn, Vec<(Lsn, Vec<u8>)>)>;

/// At least `n` records, then as many more, each its own batch, as it takes for the tail
/// segment to hold five batches (how group commit batched the first `n` depends on
/// thread timing; the tests tear batches of the tail).
fn build(dir: &Path, b: BackendKind, n: u64) -> Batches {
    let log = Log::open(dir, small(b)).unwrap();
    for seq in 0..n {
        let lsn = log.append(&payload(seq, 900)).unwrap();
        if seq % 7 == 0 {
            log.commit(lsn, Durability::Local).wait().unwrap();
        }
    }
    log.commit(log.end_lsn(), Durability::Local).wait().unwrap();
    let (mut seq, mut tail_segment, mut in_tail) = (n, u64::MAX, 0);
    while in_tail < 5 {
        let lsn = log.append(&payload(seq, 900)).unwrap();
        log.commit(lsn, Durability::Local).wait().unwrap();
        seq += 1;
        // Committed alone, so its own batch, in the segment holding its last byte.
        let segment = (lsn.get() - 1) / CAP;
        if segment == tail_segment {
            in_tail += 1;
        } else {
            (tail_segment, in_tail) = (segment, 1);
        }
    }
    let batches = batches_of(&log);
    log.close().unwrap();
    batches
}

fn batches_of(log: &Log) -> Batches {
    let mut r = log.reader(log.start_lsn()).unwrap();
    let mut out = Vec::new();
    while let Some(b) = r.try_next().unwrap() {
        out.push((
            b.base(),
            b.end(),
            b.records().map(|r| (r.lsn, r.data.to_vec())).collect(),
        ));
    }
    out
}

/// A closed template log of 400 records, its batches, its end, and the indices of the
/// data batches in its tail segment (the candidates for tearing).
fn fixture(b: BackendKind) -> (tempfile::TempDir, Batches, Lsn, Vec<usize>) {
    let template = tempfile::tempdir().unwrap();
    let batches = build(template.path(), b, 400);
    as_after_a_crash(template.path());
    let end = batches.last().unwrap().1;
    let tail_base = Lsn::new(end.get() & !(CAP - 1));
    let in_tail = (0..batches.len())
        .filter(|&i| batches[i].0 >= tail_base && !batches[i].2.is_empty())
        .collect();
    (template, batches, end, in_tail)
}

/// Removes the clean-close marker, leaving the log as a crash would.
fn as_after_a_crash(dir: &Path) {
    std::fs::remove_file(dir.join("walship.closed")).unwrap();
}

fn records(log: &Log) -> Vec<(Lsn, Vec<u8>)> {
    batches_of(log)
        .into_iter()
        .flat_map(|(_, _, r)| r)
        .collect()
}

fn seg_file(dir: &Path, cap: u64, lsn: Lsn) -> (PathBuf, u64) {
    let base = lsn.get() & !(cap - 1);
    (dir.join(format!("{base:016x}.wal")), lsn.get() - base)
}

fn copy_dir(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_name() != "LOCK" {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

const CAP: u64 = 64 * 1024;

/// Whether any bytes of the segment image at `base`, from offset `from` (at least past
/// its header) on, name their own position as the LSN field of a batch header would.
fn names_a_position(bytes: &[u8], base: Lsn, from: u64) -> bool {
    let from = (from as usize).max(SEGMENT_HEADER_LEN);
    (from..=bytes.len().saturating_sub(BATCH_HEADER_LEN))
        .any(|o| bytes[o + 8..o + 16] == (base.get() + o as u64).to_le_bytes())
}

#[test]
fn torn_and_garbage_tails_keep_exactly_the_valid_prefix() {
    let seed = std::env::var("WALSHIP_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5EED_0001);
    for b in backends() {
        let (template, batches, end, in_tail) = fixture(b);
        assert!(
            in_tail.len() >= 3,
            "test needs several batches in the tail segment"
        );
        let mut rng = Rng::new(seed);
        for trial in 0..60 {
            let dir = tempfile::tempdir().unwrap();
            copy_dir(template.path(), dir.path());
            let victim = in_tail[rng.below(in_tail.len() as u64) as usize];
            let (vbase, vend, _) = &batches[victim];
            let (path, off) = seg_file(dir.path(), CAP, *vbase);
            let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            let vlen = vend.get() - vbase.get();
            let mode = rng.below(4);
            if mode < 3 {
                // The victim is torn, so nothing written after it reached the disk either.
                let zeros = vec![0u8; (CAP - off - vlen) as usize];
                f.write_all_at(&zeros, off + vlen).unwrap();
            }
            // What a crash can leave: a batch cut short (zeros after some prefix of it),
            // a prefix of it followed by garbage, or garbage where the next batch would go.
            let keep_batches = match mode {
                0 => {
                    let cut = rng.below(vlen);
                    let zeros = vec![0u8; (CAP - off - cut) as usize];
                    f.write_all_at(&zeros, off + cut).unwrap();
                    victim
                }
                1 => {
                    let cut = rng.below(vlen);
                    let n = 1 + rng.below(3000) as usize;
                    let garbage = rng.bytes(n);
                    let room = (CAP - off - cut) as usize;
                    f.write_all_at(&garbage[..garbage.len().min(room)], off + cut)
                        .unwrap();
                    victim
                }
                2 => {
                    let at = rng.below(vlen);
                    let bit = rng.below(8);
                    let mut byte = [0u8];
                    std::fs::File::open(&path)
                        .unwrap()
                        .read_exact_at(&mut byte, off + at)
                        .unwrap();
                    byte[0] ^= 1 << bit;
                    f.write_all_at(&byte, off + at).unwrap();
                    victim
                }
                _ => {
                    let (p, eoff) = seg_file(dir.path(), CAP, end);
                    let g = std::fs::OpenOptions::new().write(true).open(p).unwrap();
                    let n = 1 + rng.below(5000) as usize;
                    let garbage = rng.bytes(n);
                    let room = (CAP - eoff) as usize;
                    g.write_all_at(&garbage[..garbage.len().min(room)], eoff)
                        .unwrap();
                    batches.len()
                }
            };
            drop(f);
            let tail_base = Lsn::new(end.get() & !(CAP - 1));
            let (tail_path, _) = seg_file(dir.path(), CAP, tail_base);
            let tail_claims = names_a_position(&std::fs::read(&tail_path).unwrap(), tail_base, 0);
            let (log, report) = Log::open_with_report(dir.path(), verified(b))
                .unwrap_or_else(|e| panic!("{b:?} trial {trial} mode {mode}: open failed: {e}"));
            let expect: Vec<_> = batches[..keep_batches]
                .iter()
                .flat_map(|(_, _, r)| r.clone())
                .collect();
            let got = records(&log);
            assert_eq!(
                got.len(),
                expect.len(),
                "{b:?} trial {trial} mode {mode}: record count"
            );
            assert!(
                got == expect,
                "{b:?} trial {trial} mode {mode}: exactly the valid prefix"
            );
            let want_end = if keep_batches == 0 {
                log.start_lsn()
            } else {
                batches[keep_batches - 1].1
            };
            assert_eq!(log.end_lsn(), want_end);
            if want_end == tail_base && !tail_claims {
                // The victim was the tail segment's first batch: the log ends with the
                // segment before, and the tail segment is the spare the next append writes
                // into. A spare is zeroed only where its bytes name their own position (no
                // other bytes can be taken for data, as with a recycled spare's stale
                // bytes); with the victim's LSN field damaged, none does.
                assert_eq!(
                    (
                        report.zeroed_tail_bytes,
                        &report.unflushed_cut,
                        report.repaired_at
                    ),
                    (0, &None, None),
                    "{b:?} trial {trial} mode {mode}: a spare naming no position is left alone"
                );
            } else {
                assert!(
                    report.zeroed_tail_bytes > 0 || mode == 0,
                    "{b:?} trial {trial} mode {mode}: the torn tail was zeroed"
                );
            }
            let from = want_end.get().max(tail_base.get()) - tail_base.get();
            assert!(
                !names_a_position(&std::fs::read(&tail_path).unwrap(), tail_base, from),
                "{b:?} trial {trial} mode {mode}: nothing after the end can be taken for data"
            );
            // The zeroed tail makes the next scan deterministic: append, reopen, same data.
            let lsn = log.append(b"after recovery").unwrap();
            log.commit(lsn, Durability::Local).wait().unwrap();
            log.close().unwrap();
            drop(log);
            let log = Log::open(dir.path(), verified(b)).unwrap();
            let again = records(&log);
            assert_eq!(again.len(), expect.len() + 1);
            assert_eq!(again.last().unwrap(), &(lsn, b"after recovery".to_vec()));
        }
    }
}

#[test]
fn corruption_before_the_tail_names_file_and_offset_unless_repair() {
    let b = BackendKind::Portable;
    let (template, batches, end, in_tail) = fixture(b);
    let tail_base = Lsn::new(end.get() & !(CAP - 1));

    // 1. A flipped bit in a tail-segment batch that valid batches follow.
    let victim = in_tail[0];
    let dir = tempfile::tempdir().unwrap();
    copy_dir(template.path(), dir.path());
    let (path, off) = seg_file(dir.path(), CAP, batches[victim].0);
    flip(&path, off + 50);
    match Log::open(dir.path(), small(b)) {
        Err(Error::Corruption {
            path: p,
            offset,
            reason,
        }) => {
            assert_eq!((p, offset), (path.clone(), off), "{reason}");
            assert!(reason.contains("followed by a valid batch"), "{reason}");
            assert!(reason.contains("CRC mismatch"), "{reason}");
        }
        other => panic!("expected corruption, got {other:?}"),
    }
    let (log, report) = Log::open_with_report(
        dir.path(),
        Options {
            recovery: RecoveryMode::TruncateCorrupt,
            ..small(b)
        },
    )
    .unwrap();
    assert_eq!(report.repaired_at, Some(batches[victim].0));
    assert_eq!(
        log.end_lsn(),
        batches[victim - 1].1,
        "ends after the padding before the victim"
    );
    let expect: Vec<_> = batches[..victim]
        .iter()
        .flat_map(|(_, _, r)| r.clone())
        .collect();
    assert!(records(&log) == expect);
    drop(log);

    // 2. A damaged batch in a segment that is not the last.
    let early = batches
        .iter()
        .position(|(base, _, r)| *base < tail_base && base.get() >= CAP && !r.is_empty())
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    copy_dir(template.path(), dir.path());
    let (path, off) = seg_file(dir.path(), CAP, batches[early].0);
    flip(&path, off + BATCH_HEADER_LEN as u64 + 1);
    let strict = verified(b);
    match Log::open(dir.path(), strict.clone()) {
        Err(Error::Corruption {
            path: p, offset, ..
        }) => assert_eq!((p, offset), (path.clone(), off)),
        other => panic!("expected corruption, got {other:?}"),
    }
    let log = Log::open(
        dir.path(),
        Options {
            recovery: RecoveryMode::TruncateCorrupt,
            ..strict
        },
    )
    .unwrap();
    assert_eq!(log.end_lsn(), batches[early - 1].1);
    drop(log);

    // 3. A damaged segment header and a missing segment in the middle.
    let dir = tempfile::tempdir().unwrap();
    copy_dir(template.path(), dir.path());
    let (first, _) = seg_file(dir.path(), CAP, Lsn::new(CAP));
    flip(&first, 20);
    match Log::open(dir.path(), small(b)) {
        Err(Error::Corruption {
            path: p,
            offset: 0,
            reason,
        }) => {
            assert_eq!(p, first);
            assert!(reason.contains("segment header"), "{reason}");
        }
        other => panic!("expected header corruption, got {other:?}"),
    }
    std::fs::remove_file(&first).unwrap();
    assert!(
        matches!(Log::open(dir.path(), small(b)), Err(Error::Corruption { reason, .. }) if reason.contains("gap"))
    );

    // 4. Damage to the last batch: after a clean close it was flushed, and the marker the
    // close left says so; after a crash nothing later proves it, so it is a torn tail.
    let last = *in_tail.last().unwrap();
    let (vbase, vend, _) = &batches[last];
    for closed in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(template.path(), dir.path());
        let log = Log::open(dir.path(), small(b)).unwrap();
        assert_eq!(log.end_lsn(), end);
        log.close().unwrap();
        drop(log);
        if !closed {
            as_after_a_crash(dir.path());
        }
        let (path, off) = seg_file(dir.path(), CAP, *vbase);
        flip(&path, off + (vend.get() - vbase.get()) - 1);
        match Log::open_with_report(dir.path(), small(b)) {
            Err(Error::Corruption { offset, reason, .. }) if closed => {
                assert_eq!(offset, off);
                assert!(reason.contains("closed cleanly"), "{reason}");
            }
            Ok((log, report)) if !closed => {
                assert_eq!(log.end_lsn(), *vbase);
                assert!(report.zeroed_tail_bytes > 0 && report.unflushed_cut.is_none());
            }
            other => panic!("closed cleanly: {closed}: {other:?}"),
        }
    }
}

/// The records of the log in `dir` and how each of its batches is stamped:
/// `(base, end, flush stamp)`.
fn stamps(dir: &Path) -> Vec<(Lsn, Lsn, Lsn)> {
    let mut out = Vec::new();
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    names.sort();
    for p in names {
        let bytes = std::fs::read(&p).unwrap();
        let mut at = 64;
        while let Ok(h) = BatchHeader::decode(&bytes[at.min(bytes.len())..], CAP) {
            if walship_engine::format::check_batch(&bytes[at..], Default::default()).is_err() {
                break;
            }
            out.push((h.base, h.end(), h.flushed));
            at += h.len as usize;
        }
    }
    out
}

/// A power loss where the disk persisted later pages of the unflushed tail but lost an
/// earlier one: the default open keeps everything acknowledged, cuts at the first lost
/// batch and says so. Damage to a batch that a later stamp proves flushed is refused.
#[test]
fn out_of_order_persistence_of_an_unflushed_tail_is_cut_not_refused() {
    let seed = std::env::var("WALSHIP_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5EED_0002);
    let mut rng = Rng::new(seed);
    for b in backends() {
        // Acknowledged records, then a tail written batch by batch and never flushed
        // (the writer flushes only when asked).
        let template = tempfile::tempdir().unwrap();
        let opts = Options {
            async_flush_interval: std::time::Duration::from_secs(3600),
            async_flush_after_bytes: 1 << 40,
            ..small(b)
        };
        let log = Log::open(template.path(), opts.clone()).unwrap();
        let mut acked = Vec::new();
        for seq in 0..40 {
            let p = payload(seq, 700);
            let lsn = log.append(&p).unwrap();
            log.commit(lsn, Durability::Local).wait().unwrap();
            acked.push((lsn, p));
        }
        let flushed = log.watermarks().flushed;
        let mut unflushed = Vec::new();
        while unflushed.len() < 12 {
            let p = payload(1000 + unflushed.len() as u64, 300);
            let lsn = log.append(&p).unwrap();
            log.written(lsn).wait().unwrap();
            if (lsn.get() & !(CAP - 1)) != (flushed.get() & !(CAP - 1)) {
                break; // stay in the flushed data's segment: a switch would flush
            }
            unflushed.push((lsn, p));
        }
        assert!(
            unflushed.len() >= 4,
            "{b:?}: an unflushed tail of several batches"
        );
        log.close().unwrap();
        drop(log);
        as_after_a_crash(template.path());
        let tail: Vec<(Lsn, Lsn, Lsn)> = stamps(template.path())
            .into_iter()
            .filter(|&(base, _, _)| base >= flushed)
            .collect();
        assert!(
            tail.iter().all(|&(_, _, f)| f <= flushed),
            "{b:?}: no batch of the tail proves any of it flushed: {tail:?}"
        );

        for trial in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            copy_dir(template.path(), dir.path());
            // One batch of the unflushed tail, not the last, never reached the disk (or
            // only its first sectors, or garbage did); a later one did.
            let lost = rng.below(tail.len() as u64 - 1) as usize;
            let (base, end, _) = tail[lost];
            let (path, off) = seg_file(dir.path(), CAP, base);
            let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            let len = end.get() - base.get();
            let how = rng.below(3);
            let from = match how {
                0 => 0,
                1 => (rng.below(len / 512 + 1) * 512).min(len - 1),
                _ => 0,
            };
            let bytes = if how == 2 {
                rng.bytes((len - from) as usize)
            } else {
                vec![0u8; (len - from) as usize]
            };
            f.write_all_at(&bytes, off + from).unwrap();
            drop(f);
            let (log, report) = Log::open_with_report(dir.path(), opts.clone())
                .unwrap_or_else(|e| panic!("{b:?} trial {trial}: the default open refused: {e}"));
            let cut = report
                .unflushed_cut
                .clone()
                .unwrap_or_else(|| panic!("{b:?} trial {trial}: no cut reported: {report:?}"));
            assert_eq!(cut.at, base, "{b:?} trial {trial}");
            assert_eq!(cut.discarded_batches, (tail.len() - lost - 1) as u64);
            assert_eq!(cut.discarded_until, tail.last().unwrap().1);
            assert_eq!(log.end_lsn(), base);
            let got = records(&log);
            let want: Vec<_> = acked
                .iter()
                .chain(unflushed.iter())
                .filter(|(lsn, _)| *lsn <= base)
                .cloned()
                .collect();
            assert!(
                got == want,
                "{b:?} trial {trial}: the valid prefix, every acknowledged record"
            );
            // Appending over the cut works, and a strict reopen sees exactly that.
            let lsn = log.append(b"after").unwrap();
            log.commit(lsn, Durability::Local).wait().unwrap();
            log.close().unwrap();
            drop(log);
            let log = Log::open(dir.path(), verified(b)).unwrap();
            assert_eq!(records(&log).len(), want.len() + 1);
        }

        // Damage to the last acknowledged batch: the unflushed batches after it were
        // written once it had been flushed, and their stamps say so.
        let dir = tempfile::tempdir().unwrap();
        copy_dir(template.path(), dir.path());
        let victim = stamps(dir.path())
            .into_iter()
            .rev()
            .find(|&(_, end, _)| end <= flushed)
            .unwrap();
        assert_eq!(victim.1, flushed);
        let (path, off) = seg_file(dir.path(), CAP, victim.0);
        flip(&path, off + BATCH_HEADER_LEN as u64 + 2);
        match Log::open(dir.path(), opts.clone()) {
            Err(Error::Corruption {
                path: p,
                offset,
                reason,
            }) => {
                assert_eq!((p, offset), (path, off), "{reason}");
                assert!(reason.contains("these bytes were durable"), "{reason}");
            }
            other => panic!("{b:?}: damage to flushed data must be refused: {other:?}"),
        }
    }
}

fn flip(path: &Path, at: u64) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut byte = [0u8];
    f.read_exact_at(&mut byte, at).unwrap();
    byte[0] ^= 0x10;
    f.write_all_at(&byte, at).unwrap();
}

/// A log written in format 1 (40-byte batch headers, no flush stamp) is refused with an
/// error that says so, by `open` and by the offline inspection, and nothing is changed.
#[test]
fn a_format_1_log_gets_a_clear_error_and_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small(BackendKind::Portable)).unwrap();
    log.append(b"x").unwrap();
    log.close().unwrap();
    drop(log);
    // The meta file as format 1 wrote it: magic, version 1, capacity, CRC32C of 0..28.
    let meta = dir.path().join("walship.meta");
    let mut m = std::fs::read(&meta).unwrap();
    m[8..12].copy_from_slice(&1u32.to_le_bytes());
    let crc = crc32c::crc32c(&m[..28]);
    m[28..32].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&meta, &m).unwrap();
    let before: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap_or_default())
        .collect();
    for e in [
        Log::open(dir.path(), small(BackendKind::Portable)).unwrap_err(),
        walship_engine::inspect::LogDir::open(dir.path()).unwrap_err(),
    ] {
        match &e {
            Error::UnsupportedFormat {
                path,
                found: 1,
                supported: 2,
            } => assert_eq!(path, &meta),
            other => panic!("{other:?}"),
        }
        assert!(
            e.to_string()
                .contains("log format version 1, but this build reads version 2"),
            "{e}"
        );
    }
    let after: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap_or_default())
        .collect();
    assert_eq!(before, after, "nothing changed");
}
