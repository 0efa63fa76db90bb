//! `restart_at`: throwing the whole log away and starting again, empty, at a segment
//! boundary — what a follower does before it installs a snapshot of its leader's state
//! (Raft's `InstallSnapshot` discards the log; PostgreSQL's `pg_basebackup` starts a
//! standby from a copy).
//!
//! Order of operations, each step leaving a log that opens if the process dies after it:
//! 1. wait until everything appended is written and flushed (the append lock is then
//!    held to the end, so nothing more is appended), and pause the segment preparer (it
//!    deletes its spare);
//! 2. tell readers and waiters of the old log that it is gone (a truncation event below
//!    every old position), so they stop before its files do;
//! 3. store an empty epoch history: a crash from here on leaves a log that claims no
//!    epoch, which no leader mistakes for one that shares its history;
//! 4. remove the segments newest first (a crash leaves a shorter old log, or an empty
//!    directory that `open` refills at `Options::create_at`);
//! 5. create the segment at `base`, then record `epoch` as beginning at its first batch.
//!
//! Every crash state is one of: the old log (or a prefix of it) with no epochs, an empty
//! log, or the new empty log at `base`. None holds a record that was not in the old log
//! and none claims an epoch its records lack; the caller (the replication driver)
//! re-runs the bootstrap when the embedder's state does not lie within the log.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::epoch::EpochHistory;
use crate::error::{Error, Result};
use crate::segment;
use crate::shared::Shared;
use crate::sync::{lock, read, write};
use crate::types::{Epoch, Lsn};

pub(crate) fn restart_at(sh: &Arc<Shared>, base: Lsn, epoch: Epoch) -> Result<()> {
    let g = sh.geometry;
    if g.offset_of(base) != 0 {
        return Err(Error::NotBoundary {
            lsn: base,
            expected: "segment",
            before: g.base_of(base),
        });
    }
    let first = g.first_batch(base);
    // The write lock before the append lock, as the writer takes them: held together,
    // no write starts and nothing is appended until the log is whole again.
    let (mut writing, mut asm) = sh.quiesced(|sh| (lock(&sh.writing), lock(&sh.append)))?;
    let old_end = asm.end();
    let paused = sh.prep.pause(sh)?;
    let old_start = sh.start();

    // Every position of the old log is gone: commits and readers from before fail with
    // `Truncated` instead of meeting a missing segment.
    let cut = old_start.min(first);
    {
        let mut t = lock(&sh.truncations);
        let gen = sh.trunc_gen.load(Ordering::Acquire) + 1;
        t.events.push((gen, cut));
        sh.trunc_gen.store(gen, Ordering::Release);
    }
    for w in [
        &sh.written,
        &sh.flushed,
        &sh.remote_written,
        &sh.remote_flushed,
        &sh.remote_applied,
    ] {
        w.wake_all();
    }

    {
        let mut h = lock(&sh.epochs);
        let empty = EpochHistory::default();
        empty.store(&*sh.fs, &sh.dir)?;
        *h = empty;
    }

    let old: Vec<_> = read(&sh.segments).values().rev().map(Arc::clone).collect();
    sh.remove_segments(&old, "remove a segment of the log being restarted")?;

    let seg = segment::create(&sh.fs, &sh.dir, base, g)?;
    write(&sh.segments).insert(base.get(), Arc::new(seg));
    if epoch > Epoch::ZERO {
        let mut h = lock(&sh.epochs);
        let mut next = EpochHistory::default();
        next.push(epoch, first)?;
        next.store(&*sh.fs, &sh.dir)?;
        *h = next;
    }

    // The writer last wrote into a segment that no longer exists.
    writing.current = None;
    asm.reset(first, epoch);
    sh.start.store(first.get(), Ordering::Release);
    sh.end.store(first.get(), Ordering::Release);
    sh.checkpoint.store(0, Ordering::Release);
    sh.flush_requested.store(first.get(), Ordering::Release);
    for w in [&sh.written, &sh.flushed] {
        w.lower_to(first);
        w.advance(first);
    }
    for w in [&sh.remote_written, &sh.remote_flushed, &sh.remote_applied] {
        w.lower_to(first);
    }
    drop(asm);
    drop(writing);
    drop(paused);
    tracing::info!(dir = %sh.dir.display(), from = %old_start, to = %old_end, base = %base, %epoch, "log restarted empty");
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use crate::storage::SimDisk;
    use crate::{Drive, Durability, Epoch, Error, Log, Lsn, Options};

    const CAP: u64 = 64 << 10;

    fn opts(disk: &SimDisk) -> Options {
        Options {
            segment_capacity: CAP,
            drive: Drive::Manual,
            storage: disk.boot(),
            ..Options::default()
        }
    }

    fn records(log: &Log) -> Result<BTreeMap<u64, Vec<u8>>, Error> {
        let mut r = log.record_reader(log.start_lsn())?;
        let mut out = BTreeMap::new();
        while let Some(rec) = r.try_next()? {
            out.insert(rec.lsn.get(), rec.data.to_vec());
        }
        Ok(out)
    }

    /// Commits `lsn` at `Local` on a manually driven log.
    fn flush(log: &Log, lsn: Lsn) {
        let mut c = log.commit(lsn, Durability::Local);
        loop {
            match c.poll_now() {
                Some(r) => return r.unwrap(),
                None => {
                    log.step().unwrap();
                }
            }
        }
    }

    /// A log of three segments and two epochs, all of it flushed.
    fn old_log(disk: &SimDisk) -> (Log, BTreeMap<u64, Vec<u8>>) {
        let log = Log::open("/log", opts(disk)).unwrap();
        log.begin_epoch(Epoch::new(1)).unwrap();
        let mut i = 0u32;
        while log.end_lsn().get() < 2 * CAP + CAP / 2 {
            if i == 40 {
                log.begin_epoch(Epoch::new(2)).unwrap();
            }
            let lsn = log.append(&[i as u8; 3000]).unwrap();
            flush(&log, lsn);
            i += 1;
        }
        let recs = records(&log).unwrap();
        (log, recs)
    }

    #[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
    enum After {
        Untouched,
        OldPrefix,
        Empty,
        New,
    }

    /// A power loss between any two storage operations of `restart_at` leaves a log
    /// that opens and is one of the states its docs promise: part of the old log
    /// claiming no epoch, an empty log, or the new one; and once `restart_at` returned,
    /// the new one.
    #[test]
    fn a_power_loss_anywhere_in_a_restart_leaves_a_log_it_promises() {
        let base = Lsn::new(10 * CAP);
        let first = Lsn::new(base.get() + crate::format::SEGMENT_HEADER_LEN as u64);
        let epoch = Epoch::new(5);
        let mut seen = std::collections::BTreeSet::new();
        for ops in 0u64.. {
            let disk = SimDisk::new(ops);
            let (log, old) = old_log(&disk);
            let old_history = log.epoch_history().entries().to_vec();
            disk.power_loss_after(ops);
            let result = log.restart_at(base, epoch);
            // Not cut within the restart: the last round.
            let finished = disk.power_cut_pending();
            if !finished {
                assert!(
                    result.is_err(),
                    "the power went at operation {ops}, yet it succeeded"
                );
            }
            drop(log);
            if disk.power_cut_pending() {
                // What it returned having done is durable.
                disk.power_loss();
            }
            let log = Log::open("/log", opts(&disk))
                .unwrap_or_else(|e| panic!("power loss after {ops} operations: open: {e}"));
            let history = log.epoch_history().entries().to_vec();
            let recs = records(&log).unwrap();
            for (lsn, data) in &recs {
                assert_eq!(
                    old.get(lsn),
                    Some(data),
                    "after {ops} operations: a record the old log never had at {lsn}"
                );
            }
            let state = if log.start_lsn() == first && log.end_lsn() == first && !history.is_empty()
            {
                assert_eq!(history, vec![(epoch, first)], "after {ops} operations");
                After::New
            } else if !history.is_empty() {
                // Before the history was emptied nothing else had changed.
                assert_eq!(history, old_history, "after {ops} operations");
                assert!(
                    recs == old,
                    "after {ops} operations: the old history over a changed log ({} of {} records)",
                    recs.len(),
                    old.len()
                );
                After::Untouched
            } else if recs.is_empty() {
                After::Empty
            } else {
                After::OldPrefix
            };
            if result.is_ok() {
                assert_eq!(state, After::New, "restart_at returned Ok");
            }
            // Whatever it is, it takes appends.
            let lsn = log.append(b"next").unwrap();
            flush(&log, lsn);
            assert_eq!(
                records(&log).unwrap().get(&lsn.get()).map(Vec::as_slice),
                Some(&b"next"[..])
            );
            seen.insert(state);
            if finished {
                break;
            }
        }
        assert_eq!(seen.len(), 4, "every crash state was reached: {seen:?}");
    }

    /// On a log run by its threads: waiters and readers of the old log fail with
    /// `Truncated`, the log takes appends at once, and a reopen finds the new log.
    #[test]
    fn a_restarted_log_tells_old_readers_and_takes_appends() {
        let dir = tempfile::tempdir().unwrap();
        let o = || Options {
            segment_capacity: CAP,
            ..Options::default()
        };
        let log = Log::open(dir.path(), o()).unwrap();
        log.begin_epoch(Epoch::new(3)).unwrap();
        let mut last = Lsn::ZERO;
        while log.end_lsn().get() < 3 * CAP {
            last = log.append(&[7u8; 5000]).unwrap();
        }
        log.commit(last, Durability::Local).wait().unwrap();
        let mut reader = log.record_reader(log.start_lsn()).unwrap();
        assert!(reader.try_next().unwrap().is_some());
        log.set_checkpoint(last);
        let base = Lsn::new(2 * CAP);
        log.restart_at(base, Epoch::new(4)).unwrap();
        let err = loop {
            match reader.try_next() {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the old reader saw the new log as its own"),
                Err(e) => break e,
            }
        };
        assert!(
            matches!(err, Error::Truncated { .. } | Error::NotRetained { .. }),
            "{err}"
        );
        let w = log.watermarks();
        assert_eq!(
            (w.start, w.end, w.flushed, w.checkpoint),
            (w.start, w.start, w.start, Lsn::ZERO)
        );
        assert_eq!(
            w.start.get(),
            base.get() + crate::format::SEGMENT_HEADER_LEN as u64
        );
        let a = log.append(b"first after").unwrap();
        let mut b = a;
        for _ in 0..20 {
            b = log.append(&[1u8; 5000]).unwrap();
        }
        log.commit(b, Durability::Local).wait().unwrap();
        assert_eq!(log.epoch(), Epoch::new(4));
        drop(log);
        let log = Log::open(dir.path(), o()).unwrap();
        let recs = records(&log).unwrap();
        assert_eq!(
            recs.len(),
            21,
            "the first record after and twenty across a segment boundary"
        );
        assert_eq!(
            (recs.keys().next(), recs.keys().last()),
            (Some(&a.get()), Some(&b.get()))
        );
        assert_eq!(
            log.epoch_history().entries(),
            &[(Epoch::new(4), log.start_lsn())]
        );
        log.check_files().unwrap();
    }

    #[test]
    fn a_restart_off_a_segment_boundary_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(
            dir.path(),
            Options {
                segment_capacity: CAP,
                ..Options::default()
            },
        )
        .unwrap();
        let lsn = log.append(b"kept").unwrap();
        log.commit(lsn, Durability::Local).wait().unwrap();
        let r = log.restart_at(Lsn::new(CAP + 64), Epoch::new(1));
        assert!(matches!(r, Err(Error::NotBoundary { .. })), "{r:?}");
        assert_eq!(records(&log).unwrap().len(), 1);
    }
}
