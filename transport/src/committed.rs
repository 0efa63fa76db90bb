//! The committed point a leader reports: what no failover cuts.
//!
//! A leader's log knows what its sync quorum flushed (`Log::remote_flushed`). That counts
//! as committed only once the quorum has flushed a batch of the leader's own epoch (Raft's
//! rule that a leader counts replicas only for entries of its own term). Before that, the
//! records it inherited from older epochs may sit flushed on a quorum that shows no sign
//! of the new epoch, and a later leader that never had them may be confirmed by those
//! very followers and cut them. Batches carry their epoch, so a follower that flushed
//! past where the epoch began holds the epoch, and an unconfirmed leader lacking it
//! refuses that follower.

use walship_engine::{Epoch, Log, Lsn};

/// What a leader of `epoch` over `log` may report as committed: `log.remote_flushed()` once
/// it is past where `epoch` began, `Lsn::ZERO` until then (nothing is claimed).
pub fn committed_point(log: &Log, epoch: Epoch) -> Lsn {
    let flushed = log.remote_flushed();
    match log.epoch_start(epoch) {
        Some(start) if flushed > start => flushed,
        _ => Lsn::ZERO,
    }
}
