//! Hop events: the steps a remote commit takes between the leader's log and the
//! follower's acknowledgement, as `tracing` events at TRACE level on target [`TARGET`],
//! each with two fields, `hop` (one of the names below) and `lsn`. A subscriber that
//! records them with their times gives the latency of each hop (the `hops` benchmark
//! does); without one, each costs a disabled callsite check.
//!
//! | hop | where | `lsn` |
//! | --- | --- | --- |
//! | [`LEADER_READ`] | the leader's session gathered a frame from its log | frame end |
//! | [`LEADER_SENT`] | the frame was handed to QUIC | frame end |
//! | [`FOLLOWER_RECEIVED`] | the follower's session decoded the `Ship` message | frame end |
//! | [`FOLLOWER_APPENDED`] | the follower appended it to its log | frame end |
//! | [`FOLLOWER_FLUSHED`] | the follower's wait for its flush resolved | flushed |
//! | [`FOLLOWER_ACKED`] | the follower handed the status reporting it to QUIC | flushed |
//! | [`LEADER_ACKED`] | the leader's session decoded that status | follower's flushed |
//! | [`LEADER_QUORUM`] | the leader advanced its remote-flushed watermark | remote flushed |

use walship_engine::Lsn;

/// The `tracing` target of every hop event.
pub const TARGET: &str = "walship::hop";
/// See the [module docs](self).
pub const LEADER_READ: &str = "leader.read";
/// See the [module docs](self).
pub const LEADER_SENT: &str = "leader.sent";
/// See the [module docs](self).
pub const FOLLOWER_RECEIVED: &str = "follower.received";
/// See the [module docs](self).
pub const FOLLOWER_APPENDED: &str = "follower.appended";
/// See the [module docs](self).
pub const FOLLOWER_FLUSHED: &str = "follower.flushed";
/// See the [module docs](self).
pub const FOLLOWER_ACKED: &str = "follower.acked";
/// See the [module docs](self).
pub const LEADER_ACKED: &str = "leader.acked";
/// See the [module docs](self).
pub const LEADER_QUORUM: &str = "leader.quorum";

/// Every hop, in the order a remote commit takes them.
pub const ALL: [&str; 8] = [
    LEADER_READ,
    LEADER_SENT,
    FOLLOWER_RECEIVED,
    FOLLOWER_APPENDED,
    FOLLOWER_FLUSHED,
    FOLLOWER_ACKED,
    LEADER_ACKED,
    LEADER_QUORUM,
];

/// Emits one hop event.
#[inline]
pub(crate) fn hop(name: &'static str, lsn: Lsn) {
    tracing::trace!(target: TARGET, hop = name, lsn = lsn.get());
}
