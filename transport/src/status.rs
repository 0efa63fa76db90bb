//! What a node reports about replication: the data behind `walship status`, `walship lag`
//! and the admin endpoint, shaped after PostgreSQL's `pg_stat_replication` and
//! `pg_stat_wal_receiver`.

use std::net::SocketAddr;
use std::time::Duration;

use walship_engine::{Epoch, Lsn, Watermarks};

use crate::lag::Lags;
use crate::quorum::SyncState;

/// A node's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Accepts writes and streams them.
    Leader,
    /// Replays a leader's log.
    Follower,
    /// Was a leader, and stepped down (a newer epoch exists, or it was fenced): it
    /// confirms no remote durability and serves no follower.
    Fenced,
}

impl Role {
    /// `"leader"` or `"follower"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::Fenced => "fenced",
        }
    }
}

/// Where a follower's stream is, as `pg_stat_replication.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamState {
    /// Connected, still sending it log that existed when it connected.
    Catchup,
    /// Caught up once; receiving log as it is written.
    Streaming,
    /// Not connected (its slot is kept).
    Disconnected,
}

impl StreamState {
    /// `"catchup"`, `"streaming"` or `"disconnected"`.
    pub fn as_str(self) -> &'static str {
        match self {
            StreamState::Catchup => "catchup",
            StreamState::Streaming => "streaming",
            StreamState::Disconnected => "disconnected",
        }
    }
}

/// One follower as its leader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowerInfo {
    /// The follower's node id.
    pub node_id: String,
    /// Its address, while connected.
    pub addr: Option<SocketAddr>,
    /// Catch-up, streaming or disconnected.
    pub state: StreamState,
    /// Its role in the sync quorum.
    pub sync_state: SyncState,
    /// Shipped up to here.
    pub sent: Lsn,
    /// Written to its OS up to here.
    pub write: Lsn,
    /// Flushed to its disk up to here.
    pub flush: Lsn,
    /// Applied by its embedder up to here.
    pub apply: Lsn,
    /// Bytes of log between its write position and the leader's end.
    pub write_lag_bytes: u64,
    /// Bytes between its flush position and the leader's end.
    pub flush_lag_bytes: u64,
    /// Bytes between its apply position and the leader's end.
    pub apply_lag_bytes: u64,
    /// Lag in time per level.
    pub lag: Lags,
    /// Log bytes shipped to it (before compression).
    pub bytes_raw: u64,
    /// Bytes of log data put on the wire for it (after compression).
    pub bytes_wire: u64,
    /// `Ship` frames sent to it.
    pub frames: u64,
    /// Its retention slot's position, if it has a slot.
    pub slot_restart: Option<Lsn>,
    /// Whether its slot was lost (it will be refused until the slot is dropped).
    pub slot_lost: bool,
    /// Why its last session ended, if one did.
    pub last_error: Option<String>,
    /// While connected: the largest datagram the path carries, as QUIC's MTU discovery
    /// found it (8952 on loopback, at most 1452 on a plain Ethernet path).
    pub path_mtu: Option<u16>,
    /// While connected: QUIC's smoothed round-trip time to it.
    pub rtt: Option<std::time::Duration>,
}

/// A leader's view of replication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderStatus {
    /// [`Role::Leader`], or [`Role::Fenced`] once it stepped down.
    pub role: Role,
    /// Why it stepped down, if it did.
    pub fenced: Option<String>,
    /// This node's id.
    pub node_id: String,
    /// The epoch it leads.
    pub epoch: Epoch,
    /// Its log's positions, including the quorum's remote watermarks.
    pub watermarks: Watermarks,
    /// The sync policy, as `synchronous_standby_names` would spell it.
    pub sync_policy: String,
    /// Every follower that connected since start or has a slot, by node id.
    pub followers: Vec<FollowerInfo>,
}

/// A follower's view of its upstream, as `pg_stat_wal_receiver`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowerStatus {
    /// Always [`Role::Follower`].
    pub role: Role,
    /// This node's id.
    pub node_id: String,
    /// The highest epoch seen.
    pub epoch: Epoch,
    /// Its log's positions.
    pub watermarks: Watermarks,
    /// Applied by the embedder up to here.
    pub applied: Lsn,
    /// Whether a session with the leader is streaming now.
    pub connected: bool,
    /// The leader's node id, once one welcomed us.
    pub leader_id: Option<String>,
    /// The leader's log end, from its last heartbeat or data.
    pub leader_end: Lsn,
    /// The highest committed LSN a leader reported: what its sync quorum had flushed,
    /// so what `RemoteFlush` commits acknowledged. No failover cuts this log below
    /// `leader_committed.min(watermarks.flushed)`, which bounds what an embedder may
    /// snapshot (the records before it are final). It never lies past what this follower
    /// received from that leader.
    pub leader_committed: Lsn,
    /// Sessions started (the first connect included).
    pub connects: u64,
    /// Why the last session ended, if one did.
    pub last_error: Option<String>,
    /// Why applying stopped, if the embedder's callback failed.
    pub apply_error: Option<String>,
    /// Log bytes received (after decompression).
    pub bytes_raw: u64,
    /// Bytes of log data received on the wire.
    pub bytes_wire: u64,
    /// Time since the last frame from the leader.
    pub since_last_message: Option<Duration>,
}
