//! `truncate_suffix`: removing a divergent tail, crash-safely.
//!
//! Order of operations, each step leaving a valid log if the process dies after it:
//! 1. wait until everything appended is written and flushed (the writer is then idle,
//!    and stays so: the append lock is held from here on);
//! 2. pause the segment preparer (before the start is checked: a retirement must not
//!    move it under the truncation) and delete the prepared spare, then remove segments
//!    after the one holding the new end, newest first (a crash leaves a shorter but valid
//!    log, never a hole: no spare lies beyond a removed segment);
//! 3. rewrite the segment holding the new end into a new file that keeps the prefix and
//!    zeros the rest, renamed over the old one (mapped readers keep the old bytes);
//! 4. forget epochs that started after the new end, in the epoch history;
//! 5. lower the watermarks and fail waiters beyond the new end.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::format::{BatchHeader, Geometry};
use crate::segment;
use crate::shared::Shared;
use crate::sync::{lock, write};
use crate::types::{Epoch, Lsn};

pub(crate) fn truncate_suffix(sh: &Arc<Shared>, lsn: Lsn) -> Result<()> {
    let g = sh.geometry;
    let ((), mut asm) = sh.quiesced(|sh| ((), lock(&sh.append)))?;
    let end = asm.end();
    // The preparer stops first: a retirement running meanwhile would move the start and
    // take the segment that keeps the new end out of the map between the check of one
    // and the lookup of the other. No segment is prepared or retired from here on, and
    // the spare is gone.
    let paused = sh.prep.pause(sh)?;
    let start = sh.start();
    if lsn < start {
        return Err(Error::NotRetained { lsn, start });
    }
    if lsn > end {
        return Err(Error::BeyondEnd { lsn, end });
    }
    crate::failpoint::wait_if_paused("truncate::checked", &sh.dir);
    // The segment that keeps the new end: an end exactly on a boundary belongs to the
    // segment before it.
    let keep_base = if g.offset_of(lsn) == 0 && lsn > start {
        Lsn::new(lsn.get() - g.capacity())
    } else {
        g.base_of(lsn)
    };
    let keep = sh.segment(keep_base).ok_or_else(|| {
        Error::corruption(
            segment::segment_path(&sh.dir, keep_base),
            0,
            "segment missing from the log",
        )
    })?;
    check_boundary(
        &keep,
        g,
        lsn,
        end.min(Lsn::new(keep_base.get() + g.capacity())),
    )?;

    if lsn < end {
        let later: Vec<_> = {
            let segs = crate::sync::read(&sh.segments);
            segs.range(keep_base.get() + 1..)
                .map(|(_, s)| Arc::clone(s))
                .rev()
                .collect()
        };
        sh.remove_segments(&later, "remove truncated segment")?;
        let rewritten = segment::rewrite_prefix(&sh.fs, &sh.dir, &keep, lsn, g)?;
        write(&sh.segments).insert(keep_base.get(), Arc::new(rewritten));
    }
    drop(paused);

    // The history is cut after the data, never before: a crash between leaves an epoch
    // that begins at the new end and holds nothing (recovery keeps an epoch begun at
    // the end), which the next divergence check drops. The other order could leave
    // records of a dropped epoch attributed to the epoch before it.
    let epoch = {
        let mut h = lock(&sh.epochs);
        let mut next = h.clone();
        if next.truncate_from(lsn) {
            next.store(&*sh.fs, &sh.dir)?;
            *h = next;
        }
        h.current().map_or(Epoch::ZERO, |(e, _)| e)
    };
    asm.reset(lsn, epoch);
    sh.end.store(lsn.get(), Ordering::Release);
    {
        let mut t = lock(&sh.truncations);
        let gen = sh.trunc_gen.load(Ordering::Acquire) + 1;
        t.events.push((gen, lsn));
        sh.trunc_gen.store(gen, Ordering::Release);
    }
    sh.flush_requested.fetch_min(lsn.get(), Ordering::AcqRel);
    sh.written.lower_to(lsn);
    sh.flushed.lower_to(lsn);
    for w in [&sh.remote_written, &sh.remote_flushed, &sh.remote_applied] {
        w.lower_to(lsn);
    }
    drop(asm);
    tracing::info!(dir = %sh.dir.display(), from = %end, to = %lsn, "log truncated");
    Ok(())
}

/// Checks that `lsn` is a batch boundary in `seg` (hopping batch headers from the first).
fn check_boundary(seg: &segment::Segment, g: Geometry, lsn: Lsn, limit: Lsn) -> Result<()> {
    let mut pos = g.first_batch(seg.base);
    let mut prev = pos;
    while pos < lsn && pos < limit {
        let hdr = seg
            .slice(
                pos,
                Lsn::new(pos.get() + crate::format::BATCH_HEADER_LEN as u64),
            )
            .ok_or_else(|| {
                Error::corruption(&seg.path, g.offset_of(pos), "batch header beyond segment")
            })?;
        let h = BatchHeader::decode(hdr, g.capacity())
            .map_err(|e| Error::corruption(&seg.path, g.offset_of(pos), e.to_string()))?;
        prev = pos;
        pos = h.end();
    }
    if pos == lsn {
        Ok(())
    } else {
        Err(Error::NotBoundary {
            lsn,
            expected: "batch",
            before: prev,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use crate::{failpoint, Error, Log, Lsn, Options};

    /// A checkpoint's retirement racing a truncation into the segment it retires: the
    /// truncation either finds the segment or reports `NotRetained`, never a corrupt log
    /// (found by `tests/sim_power.rs` on CI, seed 27450039550692: the start was checked
    /// before the preparer paused, and the segment was gone at the lookup).
    #[test]
    fn a_retirement_cannot_take_the_segment_a_truncation_keeps() {
        let dir = tempfile::tempdir().unwrap();
        let log = std::sync::Arc::new(
            Log::open(
                dir.path(),
                Options {
                    segment_capacity: 64 << 10,
                    ..Options::default()
                },
            )
            .unwrap(),
        );
        let mut ends = Vec::new();
        // One batch per record (each committed before the next): every end is a
        // batch boundary.
        while log.end_lsn().get() < 3 * (64 << 10) {
            let lsn = log.append(&[9u8; 3000]).unwrap();
            log.commit(lsn, crate::Durability::Local).wait().unwrap();
            ends.push(lsn);
        }
        let target = ends[3];
        assert!(target.get() < 64 << 10, "in the first segment");

        failpoint::pause("truncate::checked", dir.path());
        let truncating = std::thread::spawn({
            let log = std::sync::Arc::clone(&log);
            move || log.truncate_suffix(target)
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while !failpoint::is_held("truncate::checked", dir.path()) {
            assert!(Instant::now() < deadline, "the truncation never got there");
            std::thread::sleep(Duration::from_millis(1));
        }
        // The checkpoint retires the first segment unless the truncation holds the
        // preparer; give it the time it would need.
        log.set_checkpoint(ends[ends.len() - 1]);
        let deadline = Instant::now() + Duration::from_millis(300);
        while log.start_lsn().get() < 64 << 10 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        failpoint::resume(dir.path());
        let result = truncating.join().unwrap();
        assert!(
            matches!(result, Ok(()) | Err(Error::NotRetained { .. })),
            "a truncation racing a retirement: {result:?}"
        );
        if result.is_ok() {
            assert_eq!(log.end_lsn(), target);
        }
        log.check_files().unwrap();
        let lsn = log.append(b"after").unwrap();
        log.commit(lsn, crate::Durability::Local).wait().unwrap();
        assert!(lsn > Lsn::ZERO);
    }
}
