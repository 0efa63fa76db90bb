//! Regressions for issue 10: acknowledged commits lost at a segment boundary, and a
//! retirement failure that left a log no recovery mode would open.
//!
//! Both reproduce the sequences the power-loss campaign found, on a plain file system:
//! - `append_batch` at exactly a segment boundary provisioned the segment after the
//!   boundary instead of the one at it; the preparer then deleted the segment being
//!   written, re-created another live segment over its open file, and the writer kept
//!   acknowledging commits into an unlinked inode;
//! - retirement dropped every retirable segment from the segment map before renaming any
//!   of them, so one failed rename left the rest on disk outside the map, and every later
//!   open failed with a segment gap.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{backends, payload, read_all, small};
use walship_engine::format::{BATCH_HEADER_LEN, RECORD_PREFIX_LEN, SEGMENT_HEADER_LEN};
use walship_engine::{Durability, Log, Lsn};

const CAP: u64 = 64 * 1024;

/// The payload length that makes a batch of one record starting at `pos` end exactly at
/// the end of `pos`'s segment.
fn exact_fill(pos: Lsn) -> usize {
    let seg_end = (pos.get() / CAP + 1) * CAP;
    (seg_end - pos.get()) as usize - BATCH_HEADER_LEN - RECORD_PREFIX_LEN
}

/// Segment files of `dir` (base LSNs), ascending.
fn segment_files(dir: &Path) -> Vec<u64> {
    let mut v: Vec<u64> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().ok()?;
            let hex = name.strip_suffix(".wal")?;
            u64::from_str_radix(hex, 16).ok()
        })
        .collect();
    v.sort_unstable();
    v
}

/// Open descriptors of this process on segment files of `dir` that were unlinked.
fn deleted_segment_fds(dir: &Path) -> Vec<String> {
    let prefix = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|t| t.to_string_lossy().into_owned())
        .filter(|t| t.starts_with(&prefix) && t.contains(".wal") && t.ends_with("(deleted)"))
        .collect()
}

/// Asserts that `got` holds exactly the records `want`, naming the first difference
/// compactly (payloads are long).
fn assert_records(got: &[(Lsn, Vec<u8>)], want: &[(Lsn, Vec<u8>)], what: &str) {
    let got_lsns: Vec<u64> = got.iter().map(|(l, _)| l.get()).collect();
    let want_lsns: Vec<u64> = want.iter().map(|(l, _)| l.get()).collect();
    let missing: Vec<u64> = want_lsns
        .iter()
        .filter(|l| !got_lsns.contains(l))
        .copied()
        .collect();
    assert!(
        got_lsns == want_lsns,
        "{what}: {} records read, {} expected; missing LSNs {missing:x?}",
        got.len(),
        want.len()
    );
    for ((lsn, a), (_, b)) in got.iter().zip(want) {
        assert!(a == b, "{what}: record at {lsn} differs");
    }
}

/// Brings the log's end to exactly the boundary `CAP`: by one batch filling segment 0 to
/// its last byte, or (`padded`) by records spilling into segment 1 and a truncation back
/// to the end of segment 0's padding.
fn end_at_boundary(log: &Log, padded: bool) -> Vec<(Lsn, Vec<u8>)> {
    let mut acked = Vec::new();
    if padded {
        // Sizes that cannot tile the segment: the last one leaves padding behind.
        let mut seq = 0;
        while log.end_lsn() < Lsn::new(CAP) {
            let p = payload(seq, 9_000);
            let lsn = log.append(&p).unwrap();
            log.commit(lsn, Durability::Local).wait().unwrap();
            acked.push((lsn, p));
            seq += 1;
        }
        acked.retain(|(lsn, _)| lsn.get() <= CAP);
        log.truncate_suffix(Lsn::new(CAP)).unwrap();
    } else {
        // One batch of 1000 bytes, then one filling the rest of the segment exactly.
        let first = vec![6u8; 1000];
        let lsn = log.append(&first).unwrap();
        log.commit(lsn, Durability::Local).wait().unwrap();
        acked.push((lsn, first));
        let rest = vec![7u8; exact_fill(log.end_lsn())];
        let lsn = log.append(&rest).unwrap();
        log.commit(lsn, Durability::Local).wait().unwrap();
        acked.push((lsn, rest));
    }
    assert_eq!(log.end_lsn(), Lsn::new(CAP), "the log ends at the boundary");
    acked
}

#[test]
fn append_batch_at_an_exact_segment_boundary_loses_nothing() {
    for b in backends() {
        for padded in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let log = Log::open(dir.path(), small(b)).unwrap();
            let mut acked = end_at_boundary(&log, padded);

            let two = [vec![1u8; 42], vec![2u8; 42]];
            let lsns = log.append_batch(&two).unwrap();
            let first = Lsn::new(CAP + (SEGMENT_HEADER_LEN + BATCH_HEADER_LEN) as u64 + 46);
            assert_eq!(lsns, vec![first, Lsn::new(first.get() + 46)]);
            log.commit(lsns[1], Durability::Local).wait().unwrap();
            acked.extend(lsns.into_iter().zip(two));

            let mut seq = 1_000;
            while acked.iter().filter(|(l, _)| l.get() > 2 * CAP).count() < 8 {
                let p = payload(seq, 1_000);
                let lsn = log.append(&p).unwrap();
                log.commit(lsn, Durability::Local).wait().unwrap();
                acked.push((lsn, p));
                seq += 1;
                let deleted = deleted_segment_fds(dir.path());
                assert!(
                    deleted.is_empty(),
                    "{b:?} padded={padded}: the log writes into unlinked segments {deleted:?}"
                );
                if let Err(e) = log.check_files() {
                    panic!("{b:?} padded={padded}: {e}");
                }
            }
            let what = format!("{b:?} padded={padded}: read while open");
            assert_records(&read_all(&log), &acked, &what);
            log.close().unwrap();
            drop(log);

            let log = Log::open(dir.path(), small(b)).unwrap();
            let what = format!("{b:?} padded={padded}: every acknowledged record after reopen");
            assert_records(&read_all(&log), &acked, &what);
            assert_eq!(log.end_lsn(), acked.last().unwrap().0);
        }
    }
}

/// Found by the model test: a record whose batch would leave 1 to 39 bytes of an empty
/// segment fits nowhere (no padding header fits after it, in this segment or the next),
/// yet it was accepted, placed anyway, and the next append made a padding batch shorter
/// than its own header: the writer thread panicked and every waiter hung. Such records
/// are now over the size limit, and every size up to the limit is placed.
#[test]
fn every_record_size_up_to_the_limit_is_placed_and_none_above_it() {
    for b in backends() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), small(b)).unwrap();
        let limit = CAP as usize - SEGMENT_HEADER_LEN - 2 * BATCH_HEADER_LEN - RECORD_PREFIX_LEN;
        let mut acked = Vec::new();
        for len in limit - 3..limit + 45 {
            // Each after a small record, and in a fresh segment.
            for p in [vec![1u8; 10], vec![2u8; len]] {
                match log.append(&p) {
                    Ok(lsn) => {
                        assert!(p.len() <= limit, "{b:?}: {} bytes accepted", p.len());
                        acked.push((lsn, p));
                    }
                    Err(walship_engine::Error::RecordTooLarge { len, max }) => {
                        assert!(len > limit && max == limit, "{b:?}: {len} refused");
                    }
                    Err(e) => panic!("{b:?}: {e}"),
                }
            }
            let last = acked.last().unwrap().0;
            log.commit(last, Durability::Local).wait().unwrap();
        }
        log.close().unwrap();
        drop(log);
        let log = Log::open(dir.path(), small(b)).unwrap();
        assert_records(&read_all(&log), &acked, &format!("{b:?}"));
    }
}

/// Waits until the log's start moves past `old`, or fails the test.
fn wait_for_start_after(log: &Log, old: Lsn) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while log.start_lsn() <= old {
        assert!(Instant::now() < deadline, "retirement never ran");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A segment file that vanished behind the log's back (what the boundary bug did to its
/// own files) must not make retirement strand the segments after it on disk.
#[test]
fn a_failed_retirement_leaves_the_log_openable() {
    for b in backends() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), small(b)).unwrap();
        let mut acked = Vec::new();
        let mut seq = 0;
        while log.end_lsn() < Lsn::new(8 * CAP) {
            let p = payload(seq, 3_000);
            let lsn = log.append(&p).unwrap();
            acked.push((lsn, p));
            seq += 1;
        }
        log.commit(log.end_lsn(), Durability::Local).wait().unwrap();
        // Segment 2 disappears; segments 0..6 are then all below the checkpoint.
        std::fs::remove_file(dir.path().join(format!("{:016x}.wal", 2 * CAP))).unwrap();
        let start = log.start_lsn();
        log.set_checkpoint(Lsn::new(6 * CAP));
        wait_for_start_after(&log, start);
        // Let retirement finish whatever it does.
        std::thread::sleep(Duration::from_millis(200));
        let files = segment_files(dir.path());
        assert!(
            files.iter().all(|&b| b >= 6 * CAP),
            "{b:?}: retired segments left on disk: {files:x?}"
        );
        let reported = log.last_retire_error().map(|e| e.to_string());
        assert!(
            reported.as_deref().is_some_and(|e| e.contains("vanished")),
            "{b:?}: the vanished segment is reported: {reported:?}"
        );
        log.check_files().unwrap();
        log.close().unwrap();
        drop(log);

        let log = Log::open(dir.path(), small(b))
            .unwrap_or_else(|e| panic!("{b:?}: the log must open after a failed retirement: {e}"));
        let kept: Vec<_> = acked
            .into_iter()
            .filter(|(lsn, _)| lsn.get() > 6 * CAP)
            .collect();
        let what = format!("{b:?}: everything above the checkpoint");
        assert_records(&read_all(&log), &kept, &what);
    }
}
