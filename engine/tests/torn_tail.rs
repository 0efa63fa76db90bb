//! Recovery from torn and garbage tails written straight into the tail segment, and
//! from corruption that is not a torn tail.

mod common;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use common::{backends, payload, small, verified, Rng};
use walship_engine::{BackendKind, Durability, Error, Log, Lsn, Options, RecoveryMode};

/// A closed log with records spread over a few segments; returns each batch's
/// `(base, end, records as (lsn, data))`, padding included (with no records).
type Batches = Vec<(Lsn, Lsn, Vec<(Lsn, Vec<u8>)>)>;

fn build(dir: &Path, b: BackendKind, n: u64) -> Batches {
    let log = Log::open(dir, small(b)).unwrap();
    for seq in 0..n {
        let lsn = log.append(&payload(seq, 900)).unwrap();
        if seq % 7 == 0 {
            log.commit(lsn, Durability::Local).wait().unwrap();
        }
    }
    log.commit(log.end_lsn(), Durability::Local).wait().unwrap();
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
    let end = batches.last().unwrap().1;
    let tail_base = Lsn::new(end.get() & !(CAP - 1));
    let in_tail = (0..batches.len())
        .filter(|&i| batches[i].0 >= tail_base && !batches[i].2.is_empty())
        .collect();
    (template, batches, end, in_tail)
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
        let mut rng = Rng(seed);
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
            assert!(
                report.zeroed_tail_bytes > 0 || mode == 0,
                "the torn tail was zeroed"
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
    flip(&path, off + 41);
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
