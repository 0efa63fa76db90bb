//! What `/status` returns: a node's status as JSON, and what `walship status` and
//! `walship lag` read back.
//!
//! The shapes follow `pg_stat_replication` (the leader's view of each follower) and
//! `pg_stat_wal_receiver` (a follower's view of its leader). LSNs are PostgreSQL-style
//! `HI/LO` strings, as everywhere in walship's output; durations are seconds as numbers.
//! The schema is versioned (`schema`), so scripts can check what they parse.

use serde::{Deserialize, Serialize};
use walship_engine::{Lsn, Watermarks};
use walship_transport::status::{FollowerInfo, FollowerStatus, LeaderStatus};
use walship_transport::{NodeRole, NodeStatus};

/// The schema name and version of [`NodeView`].
pub const SCHEMA: &str = "walship-status/1";

/// One node's status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeView {
    /// Always [`SCHEMA`].
    pub schema: String,
    /// The node's id.
    pub node_id: String,
    /// `leader`, `follower`, `candidate` or `stopped`.
    pub role: String,
    /// The epoch led (leaders) or the highest seen (followers).
    pub epoch: Option<u64>,
    /// The leader this node follows, or the one the coordinator names.
    pub leader: Option<String>,
    /// The local log's positions.
    pub watermarks: Option<WatermarksView>,
    /// While leading.
    pub leading: Option<LeadingView>,
    /// While following.
    pub following: Option<FollowingView>,
    /// The last coordinator or role-change error.
    pub last_error: Option<String>,
    /// The end of the prefix of the log no failover cuts, as far as this node knows
    /// (`Node::committed`: what a sync quorum flushed; zero until known). Absent from
    /// the output of nodes older than this field.
    #[serde(default)]
    pub committed: Option<String>,
}

/// A log's positions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatermarksView {
    /// First retained LSN.
    pub start: String,
    /// End of the log (appended).
    pub end: String,
    /// Written to the OS.
    pub written: String,
    /// Flushed to disk.
    pub flushed: String,
    /// Written by the sync quorum.
    pub remote_written: String,
    /// Flushed by the sync quorum.
    pub remote_flushed: String,
    /// Applied by the sync quorum.
    pub remote_applied: String,
}

/// A leader's replication, as `pg_stat_replication`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeadingView {
    /// `synchronous_standby_names`-style policy.
    pub sync_policy: String,
    /// Why it stepped down, if it did.
    pub fenced: Option<String>,
    /// One row per follower (connected, or holding a slot).
    pub followers: Vec<FollowerRow>,
}

/// One follower as its leader sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FollowerRow {
    /// The follower's node id.
    pub node_id: String,
    /// Its address while connected.
    pub addr: Option<String>,
    /// `catchup`, `streaming` or `disconnected`.
    pub state: String,
    /// `sync`, `quorum`, `potential` or `async`.
    pub sync_state: String,
    /// Shipped up to.
    pub sent_lsn: String,
    /// Written to its OS up to.
    pub write_lsn: String,
    /// Flushed up to.
    pub flush_lsn: String,
    /// Applied up to.
    pub apply_lsn: String,
    /// Bytes between its write position and the leader's end.
    pub write_lag_bytes: u64,
    /// Bytes between its flush position and the leader's end.
    pub flush_lag_bytes: u64,
    /// Bytes between its apply position and the leader's end.
    pub apply_lag_bytes: u64,
    /// Seconds until written, for recent data (`write_lag`).
    pub write_lag_s: Option<f64>,
    /// Seconds until flushed (`flush_lag`).
    pub flush_lag_s: Option<f64>,
    /// Seconds until applied (`replay_lag`).
    pub apply_lag_s: Option<f64>,
    /// Log bytes shipped.
    pub bytes_raw: u64,
    /// Bytes on the wire for them (after compression).
    pub bytes_wire: u64,
    /// Its retention slot's restart LSN.
    pub slot_restart_lsn: Option<String>,
    /// Whether the slot is lost (the follower must be rebuilt).
    pub slot_lost: bool,
    /// The last error of its session.
    pub last_error: Option<String>,
    /// While connected: the largest datagram its path carries (QUIC's path MTU).
    #[serde(default)]
    pub path_mtu: Option<u16>,
    /// While connected: the smoothed round-trip time to it, milliseconds.
    #[serde(default)]
    pub rtt_ms: Option<f64>,
}

/// A follower's view of its leader, as `pg_stat_wal_receiver`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FollowingView {
    /// Whether a session is up.
    pub connected: bool,
    /// The leader's log end it last reported.
    pub leader_end: String,
    /// Applied by the embedder up to.
    pub applied: String,
    /// Sessions opened so far.
    pub connects: u64,
    /// Log bytes received.
    pub bytes_raw: u64,
    /// Bytes on the wire for them.
    pub bytes_wire: u64,
    /// Seconds since the leader's last message.
    pub since_last_message_s: Option<f64>,
    /// The last session error.
    pub last_error: Option<String>,
    /// Why applying stopped, if it did.
    pub apply_error: Option<String>,
}

fn lsn(l: Lsn) -> String {
    l.to_string()
}

impl From<&Watermarks> for WatermarksView {
    fn from(w: &Watermarks) -> Self {
        WatermarksView {
            start: lsn(w.start),
            end: lsn(w.end),
            written: lsn(w.written),
            flushed: lsn(w.flushed),
            remote_written: lsn(w.remote_written),
            remote_flushed: lsn(w.remote_flushed),
            remote_applied: lsn(w.remote_applied),
        }
    }
}

impl From<&FollowerInfo> for FollowerRow {
    fn from(f: &FollowerInfo) -> Self {
        FollowerRow {
            node_id: f.node_id.clone(),
            addr: f.addr.map(|a| a.to_string()),
            state: f.state.as_str().into(),
            sync_state: f.sync_state.as_str().into(),
            sent_lsn: lsn(f.sent),
            write_lsn: lsn(f.write),
            flush_lsn: lsn(f.flush),
            apply_lsn: lsn(f.apply),
            write_lag_bytes: f.write_lag_bytes,
            flush_lag_bytes: f.flush_lag_bytes,
            apply_lag_bytes: f.apply_lag_bytes,
            write_lag_s: f.lag.write.map(|d| d.as_secs_f64()),
            flush_lag_s: f.lag.flush.map(|d| d.as_secs_f64()),
            apply_lag_s: f.lag.apply.map(|d| d.as_secs_f64()),
            bytes_raw: f.bytes_raw,
            bytes_wire: f.bytes_wire,
            slot_restart_lsn: f.slot_restart.map(lsn),
            slot_lost: f.slot_lost,
            last_error: f.last_error.clone(),
            path_mtu: f.path_mtu,
            rtt_ms: f.rtt.map(|d| d.as_secs_f64() * 1000.0),
        }
    }
}

impl From<&LeaderStatus> for LeadingView {
    fn from(l: &LeaderStatus) -> Self {
        LeadingView {
            sync_policy: l.sync_policy.clone(),
            fenced: l.fenced.clone(),
            followers: l.followers.iter().map(FollowerRow::from).collect(),
        }
    }
}

impl From<&FollowerStatus> for FollowingView {
    fn from(f: &FollowerStatus) -> Self {
        FollowingView {
            connected: f.connected,
            leader_end: lsn(f.leader_end),
            applied: lsn(f.applied),
            connects: f.connects,
            bytes_raw: f.bytes_raw,
            bytes_wire: f.bytes_wire,
            since_last_message_s: f.since_last_message.map(|d| d.as_secs_f64()),
            last_error: f.last_error.clone(),
            apply_error: f.apply_error.clone(),
        }
    }
}

impl NodeView {
    /// The view of `s`, with the log's `watermarks`.
    pub fn new(s: &NodeStatus, watermarks: &Watermarks) -> NodeView {
        let (epoch, leader) = match (&s.role, &s.leading, &s.following) {
            (_, Some(l), _) => (Some(l.epoch.get()), Some(s.node_id.clone())),
            (NodeRole::Follower { leader, .. }, _, f) => {
                (f.as_ref().map(|f| f.epoch.get()), Some(leader.clone()))
            }
            _ => (
                None,
                s.coordinator_leader.as_ref().map(|l| l.node_id.clone()),
            ),
        };
        NodeView {
            schema: SCHEMA.into(),
            node_id: s.node_id.clone(),
            role: s.role.as_str().into(),
            epoch,
            leader,
            watermarks: Some(watermarks.into()),
            leading: s.leading.as_ref().map(LeadingView::from),
            following: s.following.as_ref().map(FollowingView::from),
            last_error: s.last_error.clone(),
            committed: Some(lsn(s.committed)),
        }
    }
}
