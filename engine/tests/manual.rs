//! A log its caller drives (`Drive::Manual`): nothing is written, flushed, prepared or
//! retired except inside a call into the log, so a simulation decides every order of
//! events. On the simulated disk, across segment switches, retirement, truncation,
//! back-pressure, close and reopen.

mod common;

use std::time::Duration;

use common::exact_payload as payload;
use walship_engine::storage::SimDisk;
use walship_engine::{Drive, Durability, Error, Log, Lsn, Options};

const CAP: u64 = 64 * 1024;

fn options(disk: &SimDisk) -> Options {
    Options {
        segment_capacity: CAP,
        recycle_pool: 1,
        max_pending_bytes: 256 * 1024,
        async_flush_interval: Duration::from_secs(3600),
        storage: disk.boot(),
        drive: Drive::Manual,
        ..Options::default()
    }
}

fn commit_local(log: &Log, lsn: Lsn) {
    let mut c = log.commit(lsn, Durability::Local);
    assert!(c.poll_now().is_none(), "nothing is flushed before a step");
    log.step().unwrap();
    assert!(matches!(c.poll_now(), Some(Ok(()))), "one step flushes it");
}

#[test]
fn the_caller_drives_every_write_flush_and_segment() {
    let disk = SimDisk::new(3);
    let log = Log::open("/log", options(&disk)).unwrap();
    assert_eq!(log.backend_name(), "inline");
    let mut last = Lsn::ZERO;
    let mut seq = 0u64;
    // Across several segments: each switch needs a segment made by the step (or by the
    // appender itself when none is ready).
    for round in 0..40 {
        for _ in 0..10 {
            seq += 1;
            last = log
                .append(&payload(seq, 700 + (seq as usize % 300)))
                .unwrap();
        }
        assert!(
            log.watermarks().written < last,
            "round {round}: not written before a step"
        );
        commit_local(&log, last);
        assert!(log.watermarks().flushed >= last);
    }
    assert!(log.segment_count() > 3, "crossed segments");
    log.check_files().unwrap();
    // Retirement happens in a step too.
    log.set_checkpoint(last);
    let before = log.segment_count();
    log.step().unwrap();
    assert!(log.segment_count() < before, "retired below the checkpoint");
    let start = log.start_lsn();
    // Back-pressure cannot block (nobody else would make room): it refuses.
    let big = vec![7u8; 60 * 1024];
    let refused = (0..10).find_map(|_| log.append(&big).err());
    assert!(
        matches!(refused, Some(Error::WouldBlock { .. })),
        "{refused:?}"
    );
    log.step().unwrap();
    assert!(log.append(b"room again").is_ok());
    // A truncation drains the log first, by itself.
    let mut r = log.reader(start).unwrap();
    let mut ends = Vec::new();
    log.step().unwrap();
    while let Some(b) = r.try_next().unwrap() {
        ends.push(b.end());
    }
    drop(r);
    let cut = ends[ends.len() / 2];
    log.truncate_suffix(cut).unwrap();
    assert_eq!(log.end_lsn(), cut);
    log.close().unwrap();
    drop(log);
    // Everything closed cleanly survives a power loss: close flushed it.
    disk.power_loss();
    let log = Log::open("/log", options(&disk)).unwrap();
    assert_eq!(log.end_lsn(), cut);
    assert_eq!(log.start_lsn(), start);
    let mut rr = log.record_reader(start).unwrap();
    let mut n = 0;
    while let Some(rec) = rr.try_next().unwrap() {
        assert!(rec.lsn <= cut);
        n += 1;
    }
    assert!(n > 0);
}

#[test]
fn a_manual_log_on_a_dead_disk_fails_its_step_and_closes() {
    let disk = SimDisk::new(4);
    let log = Log::open("/log", options(&disk)).unwrap();
    let lsn = log.append(b"never flushed").unwrap();
    disk.crash();
    let mut c = log.commit(lsn, Durability::Local);
    assert!(c.poll_now().is_none());
    assert!(log.step().is_err(), "the write fails: the log is poisoned");
    assert!(matches!(c.poll_now(), Some(Err(_))));
    assert!(log.close().is_err());
}
