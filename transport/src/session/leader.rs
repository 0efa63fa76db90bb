//! The leader's side of a replication session with one follower.
//!
//! On `Hello` it checks cluster, segment capacity and epoch, then finds where the
//! follower's log diverges from its own with the epoch histories (Kafka's KIP-101/279):
//! the end of the follower's last epoch in the leader's history, capped by the follower's
//! end. It answers `Welcome` (with a truncation point if the follower has a divergent
//! suffix) or `Reject` (for example when that point is no longer retained and a snapshot is
//! needed). While streaming, it frames log data the driver reads from the engine (catch-up
//! and live tailing are the same path), keeps at most `max_unacked_bytes` in flight,
//! turns acks into quorum progress, and sends heartbeats when idle.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use walship_engine::{Epoch, EpochHistory, Lsn};

use super::follower::frame_name;
use super::{Inbound, SessionError};
use crate::quorum::Progress;
use crate::wire::{Compression, Frame, Heartbeat, Hello, Reject, RejectCode, Ship, Welcome};

/// Settings of a leader session.
#[derive(Debug, Clone)]
pub struct LeaderConfig {
    /// The cluster this leader serves.
    pub cluster_id: String,
    /// This leader's node id.
    pub node_id: String,
    /// The leader's segment capacity (followers must match).
    pub segment_capacity: u64,
    /// The leader's current epoch.
    pub epoch: Epoch,
    /// Largest frame accepted from the follower.
    pub max_frame: u32,
    /// Most bytes shipped but not yet acknowledged as written.
    pub max_unacked_bytes: u64,
    /// A heartbeat is sent when nothing else was sent for this long.
    pub heartbeat_interval: Duration,
    /// The session ends if the follower is silent this long.
    pub idle_timeout: Duration,
}

/// The leader's log as the session needs to see it.
#[derive(Debug, Clone)]
pub struct LogView {
    /// First retained position.
    pub start: Lsn,
    /// End of the log.
    pub end: Lsn,
    /// The epoch history.
    pub history: EpochHistory,
    /// Followers whose retention slot was lost, with the reason: refused on `Hello`.
    pub lost_slots: Arc<BTreeMap<String, String>>,
    /// Whether the leadership is confirmed ([`Registry::confirmed`](super::registry::Registry::confirmed)).
    /// Until it is, a follower whose `Hello` shows written records this leader lacks, in
    /// an epoch at least as new as the last this leader wrote in before its own, is
    /// refused, and the session ends with [`SessionError::FollowerAhead`]: those records may
    /// have been acknowledged by the leader before it (an operator's promotion over a live
    /// leader). If other followers confirm the epoch, they were not (every acknowledgement
    /// is on one of them), and the refused follower is cut when it comes back; if none do
    /// in time, the leader yields.
    pub confirmed: bool,
}

/// What the driver must do for the leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaderEvent {
    /// Send these bytes to the follower.
    Transmit(Bytes),
    /// The follower was accepted: start reading the log at `start` for it.
    Accepted {
        /// The follower's node id.
        follower: String,
        /// Where its stream starts.
        start: Lsn,
        /// What its `Hello` says it has written and flushed, up to `start`: what the
        /// quorum may count for it until it acknowledges more. Not `start` itself: a
        /// reconnecting follower's end may hold bytes it never flushed.
        progress: Progress,
    },
    /// The follower reported progress: feed the quorum tracker.
    Progress {
        /// The follower's node id.
        follower: String,
        /// Its positions.
        progress: Progress,
    },
    /// The follower asked for the newest snapshot (its position is no longer retained):
    /// send a `SnapshotHeader` and the snapshot on this stream, or refuse.
    SnapshotWanted {
        /// The follower's node id (checked against its certificate).
        follower: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    AwaitHello,
    Streaming {
        follower: String,
    },
    /// A snapshot is being sent; nothing more is expected from the follower.
    Snapshot,
    Closed,
}

impl State {
    fn name(&self) -> &'static str {
        match self {
            State::AwaitHello => "awaiting Hello",
            State::Streaming { .. } => "streaming",
            State::Snapshot => "sending a snapshot",
            State::Closed => "closed",
        }
    }
}

/// A leader session; see the [module docs](self).
#[derive(Debug)]
pub struct LeaderSession {
    cfg: LeaderConfig,
    state: State,
    inbound: Inbound,
    events: VecDeque<LeaderEvent>,
    /// Next position to ship.
    sent: Lsn,
    /// The leader's committed LSN, sent in every `Ship` and `Heartbeat`.
    committed: Lsn,
    /// Where this session's stream started: nothing before it is in flight.
    streamed_from: Lsn,
    acked: Progress,
    last_heard: Instant,
    last_sent: Instant,
    peer: Option<String>,
}

/// The newest epoch in `history` before `epoch` (the epoch a leader of `epoch` wrote in
/// before its own): a follower whose last epoch is older holds, past where the logs
/// part, only what a newer leader overwrote, so an unconfirmed leader cuts it; one whose
/// last epoch is as new or newer may hold what the leader before acknowledged, so the
/// unconfirmed leader yields to it (Raft's "at least as up to date": last epoch first).
fn last_epoch_before(history: &EpochHistory, epoch: Epoch) -> Epoch {
    history
        .entries()
        .iter()
        .rev()
        .find(|(e, _)| *e < epoch)
        .map_or(Epoch::ZERO, |&(e, _)| e)
}

/// Where a follower whose epoch history ends with `follower` (oldest first, as its
/// `Hello` carries it) and whose log ends at `end` must continue from, and whether it
/// must first truncate there.
///
/// Two logs that hold records of the same epoch hold the same bytes before them (each epoch's records come from its one leader, which began it at its own end), so
/// they agree up to where the newest epoch they share ends in either of them: Kafka's
/// leader-epoch rule, Raft's log matching. With no epoch in common, only what precedes
/// both first epochs can agree. Before protocol 3 the leader knew only the follower's
/// last epoch and took the end of the newest of its own epochs below it: a follower that
/// had led an epoch this leader never had kept that epoch's records up to there (found
/// by the cluster simulator with promotions over a live leader, seed 249).
pub fn divergence_point(
    history: &EpochHistory,
    leader_end: Lsn,
    follower: &[(Epoch, Lsn)],
    end: Lsn,
) -> (Lsn, Option<Lsn>) {
    let leader = history.entries();
    let next_start =
        |h: &[(Epoch, Lsn)], i: usize, log_end: Lsn| h.get(i + 1).map_or(log_end, |&(_, s)| s);
    // By epoch alone: where an epoch begins may differ by a segment header (a leader
    // begins it at its end, which may be a segment boundary; a follower records where
    // the epoch's first batch lies).
    let shared = follower.iter().enumerate().rev().find_map(|(fi, (fe, _))| {
        leader
            .iter()
            .position(|(le, _)| le == fe)
            .map(|li| (fi, li))
    });
    let point = match shared {
        Some((fi, li)) => next_start(follower, fi, end).min(next_start(leader, li, leader_end)),
        None => leader
            .first()
            .map_or(leader_end, |&(_, s)| s)
            .min(follower.first().map_or(end, |&(_, s)| s)),
    }
    .min(end)
    .min(leader_end);
    // A follower whose last epoch this leader never had must forget it even when no byte
    // goes (an epoch its old leader began at its end and wrote nothing in): else it
    // refuses this leader's older-epoch batches after it forever (found by the cluster
    // simulator, seed 22005738277791).
    let forget = match (follower.last(), shared) {
        (None, _) => false,
        (Some(_), Some((fi, _))) => fi + 1 < follower.len(),
        (Some(_), None) => true,
    };
    (point, (point < end || forget).then_some(point))
}

impl LeaderSession {
    /// A session waiting for a follower's `Hello`.
    pub fn new(cfg: LeaderConfig, now: Instant) -> LeaderSession {
        LeaderSession {
            // A follower sends only control frames.
            inbound: Inbound::new(cfg.max_frame.min(crate::wire::CONTROL_FRAME_LIMIT)),
            cfg,
            state: State::AwaitHello,
            events: VecDeque::new(),
            sent: Lsn::ZERO,
            committed: Lsn::ZERO,
            streamed_from: Lsn::ZERO,
            acked: Progress::default(),
            last_heard: now,
            last_sent: now,
            peer: None,
        }
    }

    /// Requires the follower's `Hello` to carry `node_id`: the identity its certificate
    /// proved, so one node cannot stream as (and move the slot of) another.
    pub fn expect_peer(mut self, node_id: impl Into<String>) -> LeaderSession {
        self.peer = Some(node_id.into());
        self
    }

    /// The follower's node id, once it said hello and was accepted.
    pub fn follower(&self) -> Option<&str> {
        match &self.state {
            State::Streaming { follower } => Some(follower),
            _ => None,
        }
    }

    /// The next position to ship.
    pub fn sent(&self) -> Lsn {
        self.sent
    }

    /// The follower's last acknowledged positions.
    pub fn acked(&self) -> Progress {
        self.acked
    }

    fn transmit(&mut self, f: &Frame, now: Instant) {
        let mut b = BytesMut::new();
        if f.encode(&mut b).is_ok() {
            self.last_sent = now;
            self.events.push_back(LeaderEvent::Transmit(b.freeze()));
        }
    }

    /// Ends the session, queueing a `Reject` that tells the follower why (for example,
    /// its slot was lost while it streamed). Drain `poll_event` to send it.
    pub fn refuse(
        &mut self,
        code: RejectCode,
        lsn: Lsn,
        reason: String,
        now: Instant,
    ) -> SessionError {
        let reason = super::bounded_reason(reason);
        let r = Frame::Reject(Reject {
            code,
            epoch: self.cfg.epoch,
            lsn,
            reason: reason.clone(),
        });
        self.transmit(&r, now);
        self.state = State::Closed;
        SessionError::Refused { code, reason }
    }

    /// Bytes received from the follower; `log` is the leader's log as it is now.
    ///
    /// # Errors
    /// The session is over; drain `poll_event` (a `Reject` may be queued) and close.
    /// [`SessionError::NewerEpoch`] means this leader must step down.
    pub fn handle_bytes(
        &mut self,
        now: Instant,
        data: &[u8],
        log: &LogView,
    ) -> Result<(), SessionError> {
        self.inbound.push(self.state == State::Closed, data)?;
        self.last_heard = now;
        while let Some(frame) = self
            .inbound
            .next()
            .inspect_err(|_| self.state = State::Closed)?
        {
            self.handle_frame(now, frame, log)?;
        }
        Ok(())
    }

    /// A follower asks for a snapshot: the same admission as a `Hello` (cluster, the
    /// certificate's identity, a lost slot, the segment capacity), no epoch business (the
    /// follower's log is about to go).
    fn handle_snapshot_request(
        &mut self,
        now: Instant,
        r: crate::wire::SnapshotRequest,
        log: &LogView,
    ) -> Result<(), SessionError> {
        self.admit(
            now,
            &r.cluster_id,
            &r.node_id,
            r.segment_capacity,
            log,
            true,
        )?;
        self.state = State::Snapshot;
        self.events.push_back(LeaderEvent::SnapshotWanted {
            follower: r.node_id,
        });
        Ok(())
    }

    /// The checks every opening frame passes: the cluster, the certificate's identity,
    /// the node's slot, the segment capacity. A lost slot refuses streaming but not a
    /// `snapshot`: the snapshot replaces the log the slot failed to keep, and sending it
    /// makes the slot live again.
    fn admit(
        &mut self,
        now: Instant,
        cluster_id: &str,
        node_id: &str,
        segment_capacity: u64,
        log: &LogView,
        snapshot: bool,
    ) -> Result<(), SessionError> {
        if cluster_id != self.cfg.cluster_id {
            let why = format!(
                "cluster {:?} is not this cluster {:?}",
                cluster_id, self.cfg.cluster_id
            );
            return Err(self.refuse(RejectCode::Cluster, Lsn::ZERO, why, now));
        }
        if let Some(peer) = self.peer.as_ref().filter(|p| **p != node_id) {
            let why =
                format!("the request names node {node_id:?} but the certificate is node {peer:?}");
            return Err(self.refuse(RejectCode::Identity, Lsn::ZERO, why, now));
        }
        if let Some(reason) = log.lost_slots.get(node_id).filter(|_| !snapshot) {
            let why = format!("the retention slot of {node_id:?} was lost: {reason}");
            return Err(self.refuse(RejectCode::SlotLost, log.start, why, now));
        }
        if segment_capacity != self.cfg.segment_capacity {
            let why = format!(
                "segment capacity {segment_capacity} differs from the leader's {}",
                self.cfg.segment_capacity
            );
            return Err(self.refuse(RejectCode::SegmentCapacity, Lsn::ZERO, why, now));
        }
        Ok(())
    }

    fn handle_hello(&mut self, now: Instant, h: Hello, log: &LogView) -> Result<(), SessionError> {
        self.admit(
            now,
            &h.cluster_id,
            &h.node_id,
            h.segment_capacity,
            log,
            false,
        )?;
        let seen = h.seen_epoch.max(h.last_epoch);
        if seen > self.cfg.epoch {
            let why = format!(
                "follower has seen epoch {seen}, this leader is at {}",
                self.cfg.epoch
            );
            let _ = self.refuse(RejectCode::NotLeader, Lsn::ZERO, why, now);
            return Err(SessionError::NewerEpoch {
                ours: self.cfg.epoch,
                seen,
            });
        }
        let (start, truncate_to) = divergence_point(&log.history, log.end, &h.epochs, h.end_lsn);
        if !log.confirmed
            && h.written_lsn > start
            && h.last_epoch >= last_epoch_before(&log.history, self.cfg.epoch)
            && !walship_engine::mutation::active(walship_engine::mutation::UNCONFIRMED_TRUNCATES)
        {
            let why = format!(
                "follower {} has written up to {} (its last epoch {}), past {start} where this \
                 leader's log parts from it, and this leader is not yet confirmed by a quorum \
                 in epoch {}: refused until one is",
                h.node_id, h.written_lsn, h.last_epoch, self.cfg.epoch
            );
            let _ = self.refuse(RejectCode::NotLeader, start, why, now);
            return Err(SessionError::FollowerAhead {
                follower: h.node_id,
                epoch: h.last_epoch,
                written: h.written_lsn,
                from: start,
            });
        }
        if start < log.start {
            let why = format!(
                "follower needs the log from {start}, but it is retained only from {}: it needs a snapshot",
                log.start
            );
            return Err(self.refuse(RejectCode::NotRetained, log.start, why, now));
        }
        let welcome = Frame::Welcome(Welcome {
            epoch: self.cfg.epoch,
            truncate_to,
            start_lsn: start,
            leader_id: self.cfg.node_id.clone(),
        });
        self.transmit(&welcome, now);
        // Our own decoder starts expecting nothing of the follower's data (it sends none).
        self.sent = start;
        self.streamed_from = start;
        // Only what the follower says it wrote and flushed counts: its end may hold bytes
        // it has appended but not yet flushed (a RemoteFlush commit must not be confirmed
        // for those).
        let flushed =
            if walship_engine::mutation::active(walship_engine::mutation::HELLO_END_AS_FLUSHED) {
                h.end_lsn
            } else {
                h.flushed_lsn
            };
        self.acked = Progress {
            written: start.min(h.written_lsn),
            flushed: start.min(flushed),
            applied: Lsn::ZERO,
        };
        self.state = State::Streaming {
            follower: h.node_id.clone(),
        };
        self.events.push_back(LeaderEvent::Accepted {
            follower: h.node_id,
            start,
            progress: self.acked,
        });
        Ok(())
    }

    fn handle_frame(
        &mut self,
        now: Instant,
        frame: Frame,
        log: &LogView,
    ) -> Result<(), SessionError> {
        match (&self.state, frame) {
            (State::AwaitHello, Frame::Hello(h)) => self.handle_hello(now, h, log),
            (State::AwaitHello, Frame::SnapshotRequest(r)) => {
                self.handle_snapshot_request(now, r, log)
            }
            (State::Streaming { follower }, Frame::Ack(a)) => {
                let follower = follower.clone();
                if a.epoch > self.cfg.epoch {
                    self.state = State::Closed;
                    return Err(SessionError::NewerEpoch {
                        ours: self.cfg.epoch,
                        seen: a.epoch,
                    });
                }
                if a.written > self.sent {
                    let why = format!(
                        "acknowledged {} but only {} was shipped",
                        a.written, self.sent
                    );
                    return Err(self.refuse(RejectCode::NotLeader, a.written, why, now));
                }
                let p = Progress {
                    written: self.acked.written.max(a.written),
                    flushed: self.acked.flushed.max(a.flushed),
                    applied: self.acked.applied.max(a.applied),
                };
                if p != self.acked {
                    self.acked = p;
                    self.events.push_back(LeaderEvent::Progress {
                        follower,
                        progress: p,
                    });
                }
                Ok(())
            }
            (State::Streaming { .. }, Frame::Heartbeat(h)) => {
                if h.epoch > self.cfg.epoch {
                    self.state = State::Closed;
                    return Err(SessionError::NewerEpoch {
                        ours: self.cfg.epoch,
                        seen: h.epoch,
                    });
                }
                if h.reply_requested {
                    self.heartbeat(now, log.end, 0, false);
                }
                Ok(())
            }
            (_, Frame::Reject(r)) => {
                self.state = State::Closed;
                if r.epoch > self.cfg.epoch {
                    return Err(SessionError::NewerEpoch {
                        ours: self.cfg.epoch,
                        seen: r.epoch,
                    });
                }
                Err(SessionError::Rejected {
                    code: r.code,
                    epoch: r.epoch,
                    lsn: r.lsn,
                    reason: r.reason,
                })
            }
            (state, f) => {
                let state = state.name();
                self.state = State::Closed;
                Err(SessionError::Unexpected {
                    frame: frame_name(&f),
                    state,
                })
            }
        }
    }

    /// How much log the driver may ship now: the next position and a byte budget, or
    /// `None` if not streaming or the unacknowledged window is full.
    pub fn send_window(&self) -> Option<(Lsn, u64)> {
        if !matches!(self.state, State::Streaming { .. }) {
            return None;
        }
        let in_flight = self
            .sent
            .bytes_after(self.acked.written.max(self.streamed_from));
        let room = self.cfg.max_unacked_bytes.saturating_sub(in_flight);
        (room > 0).then_some((self.sent, room))
    }

    /// Ships `[base, end)`: `data` is the encoded batches (compressed as `compression`
    /// says) that decode to `raw_len` bytes. `base` must be [`sent`](Self::sent).
    ///
    /// # Errors
    /// [`SessionError::Unexpected`] if not streaming or `base` is not where the stream is.
    pub fn ship(
        &mut self,
        now: Instant,
        base: Lsn,
        end: Lsn,
        raw_len: u32,
        compression: Compression,
        data: Bytes,
    ) -> Result<(), SessionError> {
        if !matches!(self.state, State::Streaming { .. }) || base != self.sent || end < base {
            return Err(SessionError::Unexpected {
                frame: "Ship",
                state: if base != self.sent {
                    "not at the stream position"
                } else {
                    self.state.name()
                },
            });
        }
        let ship = Ship {
            epoch: self.cfg.epoch,
            base,
            end,
            committed: self.committed,
            raw_len,
            compression,
            data,
        };
        // Header and data go out as two chunks, so the data is never copied.
        let header = ship.encode_header()?;
        self.events.push_back(LeaderEvent::Transmit(header));
        if !ship.data.is_empty() {
            self.events.push_back(LeaderEvent::Transmit(ship.data));
        }
        self.last_sent = now;
        self.sent = end;
        Ok(())
    }

    /// The log's committed LSN moved (its `remote_flushed` watermark: what the sync
    /// quorum flushed, so what `RemoteFlush` commits acknowledge). The next `Ship` or
    /// `Heartbeat` carries it to the follower, which learns from it how much of its log
    /// no failover will cut.
    pub fn set_committed(&mut self, committed: Lsn) {
        self.committed = committed;
    }

    fn heartbeat(&mut self, now: Instant, end: Lsn, timestamp_us: u64, reply: bool) {
        let hb = Frame::Heartbeat(Heartbeat {
            epoch: self.cfg.epoch,
            end_lsn: end,
            committed: self.committed,
            timestamp_us,
            reply_requested: reply,
        });
        self.transmit(&hb, now);
    }

    /// A timer fired. `log_end` and `timestamp_us` go into a heartbeat if one is due.
    ///
    /// # Errors
    /// [`SessionError::IdleTimeout`] if the follower has been silent too long.
    pub fn handle_timeout(
        &mut self,
        now: Instant,
        log_end: Lsn,
        timestamp_us: u64,
    ) -> Result<(), SessionError> {
        if self.state == State::Closed {
            return Ok(());
        }
        if now.saturating_duration_since(self.last_heard) >= self.cfg.idle_timeout {
            self.state = State::Closed;
            return Err(SessionError::IdleTimeout);
        }
        if matches!(self.state, State::Streaming { .. })
            && now.saturating_duration_since(self.last_sent) >= self.cfg.heartbeat_interval
        {
            self.heartbeat(now, log_end, timestamp_us, true);
        }
        Ok(())
    }

    /// The next thing for the driver to do, if any.
    pub fn poll_event(&mut self) -> Option<LeaderEvent> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            // The driver bounds a snapshot's transfer itself.
            State::Closed | State::Snapshot => None,
            State::AwaitHello => Some(self.last_heard + self.cfg.idle_timeout),
            State::Streaming { .. } => Some(
                (self.last_heard + self.cfg.idle_timeout)
                    .min(self.last_sent + self.cfg.heartbeat_interval),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history(entries: &[(u64, u64)]) -> EpochHistory {
        let mut h = EpochHistory::default();
        for &(e, s) in entries {
            h.push(Epoch::new(e), Lsn::new(s)).unwrap();
        }
        h
    }

    fn entries(e: &[(u64, u64)]) -> Vec<(Epoch, Lsn)> {
        e.iter()
            .map(|&(e, s)| (Epoch::new(e), Lsn::new(s)))
            .collect()
    }

    #[test]
    fn divergence_follows_the_epoch_histories() {
        // Leader: epoch 1 from 64, epoch 3 from 5000; its log ends at 9000.
        let h = history(&[(1, 64), (3, 5000)]);
        let end = Lsn::new(9000);
        let l = Lsn::new;
        let at = |f: &[(u64, u64)], fend: u64| divergence_point(&h, end, &entries(f), l(fend));
        // A follower in epoch 1 that got further than epoch 1 lasted: truncate to 5000.
        assert_eq!(at(&[(1, 64)], 7000), (l(5000), Some(l(5000))));
        // A follower in epoch 1 that is behind: no truncation, continue from its end.
        assert_eq!(at(&[(1, 64)], 4000), (l(4000), None));
        // A follower that led epoch 2 from 4500, which this leader never had: everything
        // of epoch 2 goes, though epoch 1 lasted until 5000 here.
        assert_eq!(at(&[(1, 64), (2, 4500)], 6000), (l(4500), Some(l(4500))));
        // ... and so does an epoch 2 it began at its end and wrote nothing in.
        assert_eq!(at(&[(1, 64), (2, 4500)], 4500), (l(4500), Some(l(4500))));
        // A follower in the current epoch: continue from its end.
        assert_eq!(at(&[(1, 64), (3, 5000)], 8000), (l(8000), None));
        // A follower with an empty log.
        assert_eq!(at(&[], 64), (l(64), None));
        // A follower with data but no epoch: everything after the first epoch's start goes.
        assert_eq!(at(&[], 300), (l(64), Some(l(64))));
        // No epoch in common (its history reaches further back than it sends): only what
        // precedes both first epochs can agree.
        assert_eq!(at(&[(2, 1000)], 3000), (l(64), Some(l(64))));
    }

    /// A session's configuration for leader n1 of `epoch`.
    fn config(epoch: u64) -> LeaderConfig {
        LeaderConfig {
            cluster_id: "c".into(),
            node_id: "n1".into(),
            segment_capacity: 1 << 20,
            epoch: Epoch::new(epoch),
            max_frame: 1 << 20,
            max_unacked_bytes: 1 << 20,
            heartbeat_interval: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(10),
        }
    }

    /// The frames the session queued for its follower.
    fn sent_frames(s: &mut LeaderSession) -> Vec<Frame> {
        let mut buf = BytesMut::new();
        while let Some(e) = s.poll_event() {
            if let LeaderEvent::Transmit(b) = e {
                buf.extend_from_slice(&b);
            }
        }
        let mut decoder = crate::wire::Decoder::new(crate::wire::CONTROL_FRAME_LIMIT);
        std::iter::from_fn(|| decoder.decode(&mut buf).ok().flatten()).collect()
    }

    fn frame_bytes(f: Frame) -> Vec<u8> {
        let mut b = bytes::BytesMut::new();
        f.encode(&mut b).unwrap();
        b.to_vec()
    }

    /// Issue 11: frames from a follower carry no log data, so the leader refuses any
    /// larger than a control frame from its 8-byte header, before buffering it (it
    /// accepted up to `max_frame`, 24 MiB by default, from any peer, before any Hello).
    #[test]
    fn a_large_frame_from_a_follower_is_refused_from_its_header() {
        let now = Instant::now();
        let cfg = LeaderConfig {
            max_frame: 24 << 20,
            ..config(1)
        };
        let log = LogView {
            start: Lsn::new(64),
            end: Lsn::new(64),
            history: EpochHistory::default(),
            lost_slots: Arc::default(),
            confirmed: true,
        };
        let mut s = LeaderSession::new(cfg, now);
        let mut header = Vec::new();
        header.extend_from_slice(&0x5753u16.to_le_bytes());
        header.push(crate::wire::PROTOCOL_VERSION);
        header.push(1);
        header.extend_from_slice(&(crate::wire::CONTROL_FRAME_LIMIT + 1).to_le_bytes());
        let err = s.handle_bytes(now, &header, &log).unwrap_err();
        assert!(err.to_string().contains("exceeds the limit"), "{err}");
    }

    /// A follower whose slot was lost may not stream, but may ask for a snapshot: the
    /// snapshot replaces the log its slot failed to keep.
    #[test]
    fn a_lost_slot_refuses_streaming_but_not_a_snapshot() {
        let now = Instant::now();
        let log = LogView {
            start: Lsn::new(64),
            end: Lsn::new(64),
            history: EpochHistory::default(),
            lost_slots: Arc::new(
                [("n2".to_string(), "3 GiB behind".to_string())]
                    .into_iter()
                    .collect(),
            ),
            confirmed: true,
        };
        let request = |node: &str| {
            frame_bytes(Frame::SnapshotRequest(crate::wire::SnapshotRequest {
                cluster_id: "c".into(),
                node_id: node.into(),
                segment_capacity: 1 << 20,
            }))
        };
        let mut s = LeaderSession::new(config(1), now).expect_peer("n2");
        s.handle_bytes(now, &request("n2"), &log).unwrap();
        assert!(matches!(
            s.poll_event(),
            Some(LeaderEvent::SnapshotWanted { follower }) if follower == "n2"
        ));
        // The other checks still hold: the certificate must name the requester.
        let mut s = LeaderSession::new(config(1), now).expect_peer("n3");
        let err = s.handle_bytes(now, &request("n2"), &log).unwrap_err();
        assert!(
            matches!(
                &err,
                SessionError::Refused {
                    code: RejectCode::Identity,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn reject_reasons_are_cut_to_fit_a_control_frame() {
        let long = "é".repeat(3000);
        let cut = crate::session::bounded_reason(long);
        assert!(cut.len() <= crate::wire::MAX_REASON_BYTES && cut.chars().all(|c| c == 'é'));
        let mut b = bytes::BytesMut::new();
        Frame::Reject(Reject {
            code: RejectCode::NotLeader,
            epoch: Epoch::new(1),
            lsn: Lsn::ZERO,
            reason: cut,
        })
        .encode(&mut b)
        .unwrap();
        assert!(b.len() <= crate::wire::CONTROL_FRAME_LIMIT as usize);
    }

    /// Issue 11: a reconnecting follower's end may hold bytes it has appended but not
    /// flushed. The leader counted its whole end as flushed, so a `RemoteFlush` commit
    /// could be confirmed for bytes on no follower's disk.
    #[test]
    fn a_reconnecting_follower_counts_as_flushed_only_what_it_flushed() {
        let now = Instant::now();
        let cfg = config(1);
        let log = LogView {
            start: Lsn::new(64),
            end: Lsn::new(9000),
            history: history(&[(1, 64)]),
            lost_slots: Arc::default(),
            confirmed: true,
        };
        let mut s = LeaderSession::new(cfg, now);
        let hello = Frame::Hello(Hello {
            cluster_id: "c".into(),
            node_id: "n2".into(),
            last_epoch: Epoch::new(1),
            seen_epoch: Epoch::new(1),
            end_lsn: Lsn::new(8000),
            written_lsn: Lsn::new(7000),
            flushed_lsn: Lsn::new(5000),
            segment_capacity: 1 << 20,
            epochs: vec![(Epoch::new(1), Lsn::new(64))],
        });
        s.handle_bytes(now, &frame_bytes(hello), &log).unwrap();
        assert_eq!(s.follower(), Some("n2"));
        assert_eq!(
            s.acked(),
            Progress {
                written: Lsn::new(7000),
                flushed: Lsn::new(5000),
                applied: Lsn::ZERO,
            }
        );
        // Its first ack says no more: nothing past 5000 is flushed there.
        let ack = Frame::Ack(crate::wire::Ack {
            epoch: Epoch::new(1),
            written: Lsn::new(8000),
            flushed: Lsn::new(5000),
            applied: Lsn::new(5000),
        });
        s.handle_bytes(now, &frame_bytes(ack), &log).unwrap();
        let progress = std::iter::from_fn(|| s.poll_event())
            .filter_map(|e| match e {
                LeaderEvent::Progress { progress, .. } => Some(progress),
                _ => None,
            })
            .last()
            .expect("progress reported");
        assert_eq!(progress.flushed, Lsn::new(5000));
        assert_eq!(progress.written, Lsn::new(8000));
    }

    /// Found by the cluster simulator (seed 34609147569298): promoted over a live leader,
    /// an unconfirmed leader refused only followers that had *flushed* records it lacked.
    /// A `RemoteWrite` commit is acknowledged once followers wrote it, so the old leader's
    /// last acknowledged records were written, not yet flushed, on the one follower that
    /// had them: the new leader welcomed it and cut them.
    #[test]
    fn an_unconfirmed_leader_refuses_a_follower_that_wrote_records_it_lacks() {
        let now = Instant::now();
        // n1 leads epoch 2 from 5000, unconfirmed: its epoch-1 records end there.
        let log = LogView {
            start: Lsn::new(64),
            end: Lsn::new(5000),
            history: history(&[(1, 64), (2, 5000)]),
            lost_slots: Arc::default(),
            confirmed: false,
        };
        let hello = |written: u64| {
            frame_bytes(Frame::Hello(Hello {
                cluster_id: "c".into(),
                node_id: "n3".into(),
                last_epoch: Epoch::new(1),
                seen_epoch: Epoch::new(2),
                end_lsn: Lsn::new(6000),
                written_lsn: Lsn::new(written),
                flushed_lsn: Lsn::new(4000),
                segment_capacity: 1 << 20,
                epochs: vec![(Epoch::new(1), Lsn::new(64))],
            }))
        };
        // n3 wrote epoch-1 records up to 6000, flushed only to 4000: refused, nothing cut.
        let mut s = LeaderSession::new(config(2), now);
        let err = s.handle_bytes(now, &hello(6000), &log).unwrap_err();
        assert!(
            matches!(
                err,
                SessionError::FollowerAhead { written, from, .. }
                    if written == Lsn::new(6000) && from == Lsn::new(5000)
            ),
            "{err}"
        );
        let sent = sent_frames(&mut s);
        assert!(
            matches!(sent.as_slice(), [Frame::Reject(r)] if r.code == RejectCode::NotLeader),
            "{sent:?}"
        );
        // What it wrote ends where the logs part (its end past it is not yet written, so
        // nothing there was acknowledged): welcomed, told to cut at 5000.
        let mut s = LeaderSession::new(config(2), now);
        s.handle_bytes(now, &hello(5000), &log).unwrap();
        assert_eq!(s.follower(), Some("n3"));
        // Once confirmed, the leader welcomes the follower that wrote further, and cuts it.
        let mut s = LeaderSession::new(config(2), now);
        let confirmed = LogView {
            confirmed: true,
            ..log
        };
        s.handle_bytes(now, &hello(6000), &confirmed).unwrap();
        let sent = sent_frames(&mut s);
        assert!(
            matches!(sent.as_slice(), [Frame::Welcome(w)] if w.truncate_to == Some(Lsn::new(5000))),
            "{sent:?}"
        );
    }
}
