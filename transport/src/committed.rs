//! The committed point a leader reports: what no failover cuts.
//!
//! A leader's log knows what its sync quorum flushed (`Log::remote_flushed`). That counts
//! as committed only once the quorum has flushed a batch of the leader's own epoch (Raft's
//! rule that a leader counts replicas only for entries of its own term). Before that, the
//! records it inherited from older epochs may sit flushed on a quorum that shows no sign
//! of the new epoch, and a later leader that never had them may be confirmed by those
//! very followers and cut them. Batches carry their epoch, so a follower that flushed
//! past where the epoch began holds the epoch, and an unconfirmed leader lacking it
//! refuses that follower. And a record is committed only once the leader flushed it too:
//! a `RemoteFlush` commit waits for both, and so does the point reported.

use walship_engine::{Epoch, Log, Lsn};

/// What a leader of `epoch` over `log` may report as committed: what both the quorum and
/// the leader itself flushed (`log.remote_flushed()`, capped by `log.flushed()`) once it
/// is past where `epoch` began, `Lsn::ZERO` until then (nothing is claimed).
///
/// The cap matters: followers receive records once the leader *wrote* them, so they may
/// flush before it does; a record flushed by one follower and not yet by the leader
/// lives on one node of three, and a power loss on the leader followed by an election
/// the follower misses cuts it.
pub fn committed_point(log: &Log, epoch: Epoch) -> Lsn {
    let flushed = log.remote_flushed().min(log.flushed());
    match log.epoch_start(epoch) {
        Some(start) if flushed > start => flushed,
        _ => Lsn::ZERO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use walship_engine::storage::SimDisk;
    use walship_engine::{Drive, Durability, Options};

    fn manual_log() -> Log {
        let disk = SimDisk::new(7);
        let opts = Options {
            drive: Drive::Manual,
            storage: disk.boot(),
            async_flush_interval: std::time::Duration::from_secs(3600),
            async_flush_after_bytes: u64::MAX / 2,
            ..Options::default()
        };
        Log::open("/log", opts).unwrap()
    }

    #[test]
    fn nothing_is_committed_before_the_quorum_holds_the_epoch() {
        let log = manual_log();
        let epoch = Epoch::new(1);
        let start = log.begin_epoch(epoch).unwrap();
        log.advance_remote_flushed(start);
        assert_eq!(committed_point(&log, epoch), Lsn::ZERO);
    }

    #[test]
    fn the_committed_point_never_passes_what_the_leader_flushed() {
        let log = manual_log();
        let epoch = Epoch::new(1);
        log.begin_epoch(epoch).unwrap();
        let a = log.append(b"flushed here").unwrap();
        let mut c = log.commit(a, Durability::Local);
        assert!(c.poll_now().is_none());
        log.step().unwrap();
        assert!(matches!(c.poll_now(), Some(Ok(()))));
        // Written, shipped and flushed by the quorum's follower, not yet by the leader.
        let b = log.append(b"written, not flushed here").unwrap();
        log.step().unwrap();
        let w = log.watermarks();
        assert!(w.written >= b && w.flushed < b, "{w:?}");
        log.advance_remote_flushed(log.end_lsn());
        assert_eq!(committed_point(&log, epoch), w.flushed);
        // Once the leader flushes too, the point moves up to the quorum's.
        let mut c = log.commit(b, Durability::Local);
        assert!(c.poll_now().is_none());
        log.step().unwrap();
        assert!(matches!(c.poll_now(), Some(Ok(()))));
        assert_eq!(committed_point(&log, epoch), log.end_lsn());
    }
}
