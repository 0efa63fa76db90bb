//! The follower's side of a replication session.
//!
//! Sends `Hello` with its last epoch and end; on `Welcome`, truncates a divergent suffix
//! if told to, then hands every `Ship` frame to the driver to decompress and append
//! verbatim (the engine checks each batch's CRC and LSN before writing anything), and
//! acknowledges the progress the driver reports: one coalesced `Ack` per change, and a
//! status `Ack` at least every `status_interval` (PostgreSQL's
//! `wal_receiver_status_interval`). A leader of an older epoch than one already seen is
//! refused.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use walship_engine::{Epoch, Lsn};

use super::{Inbound, SessionError};
use crate::quorum::Progress;
use crate::wire::{Ack, Frame, Heartbeat, Hello, Reject, RejectCode, Ship};

/// Settings of a follower session.
#[derive(Debug, Clone)]
pub struct FollowerConfig {
    /// The cluster this follower belongs to.
    pub cluster_id: String,
    /// This follower's node id.
    pub node_id: String,
    /// The local log's segment capacity.
    pub segment_capacity: u64,
    /// Largest frame accepted from the leader.
    pub max_frame: u32,
    /// An `Ack` is sent at least this often even without progress.
    pub status_interval: Duration,
    /// The session ends if the leader is silent this long.
    pub idle_timeout: Duration,
}

/// What the driver must do for the follower.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FollowerEvent {
    /// Send these bytes to the leader.
    Transmit(Bytes),
    /// Truncate the local log to this LSN (its divergent suffix) before appending.
    Truncate(Lsn),
    /// Decompress and append these batches verbatim; report progress afterwards.
    Append(Ship),
    /// A higher epoch was seen: persist it, and refuse leaders of lower epochs from now on.
    EpochSeen(Epoch),
    /// The leader's committed LSN rose to this (what its sync quorum flushed, which no
    /// failover cuts), bounded by what this session received: it comes after the
    /// `Truncate` and `Append` events that make this log match the leader's up to it.
    Committed(Lsn),
    /// The leader accepted the session; streaming starts at `start`.
    Streaming {
        /// The leader's node id.
        leader_id: String,
        /// The leader's epoch.
        epoch: Epoch,
        /// Where log data starts.
        start: Lsn,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitWelcome,
    Streaming,
    Closed,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::AwaitWelcome => "awaiting Welcome",
            State::Streaming => "streaming",
            State::Closed => "closed",
        }
    }
}

/// A follower session; see the [module docs](self).
#[derive(Debug)]
pub struct FollowerSession {
    cfg: FollowerConfig,
    state: State,
    inbound: Inbound,
    events: VecDeque<FollowerEvent>,
    epoch: Epoch,
    end: Lsn,
    /// The leader's committed LSN, as last reported.
    leader_committed: Lsn,
    /// The last `Committed` event's LSN.
    committed: Lsn,
    progress: Progress,
    acked: Option<Progress>,
    ack_due: bool,
    last_heard: Instant,
    last_ack: Instant,
}

impl FollowerSession {
    /// Starts a session for a local log whose epoch history is `epochs` (oldest first;
    /// [`EpochHistory::entries`](walship_engine::EpochHistory::entries)) and which ends at
    /// `end`, with `progress` its current watermarks. Queues the `Hello`, which carries the
    /// newest [`MAX_HELLO_EPOCHS`](crate::wire::MAX_HELLO_EPOCHS) entries of the history.
    pub fn new(
        cfg: FollowerConfig,
        epochs: &[(Epoch, Lsn)],
        end: Lsn,
        progress: Progress,
        now: Instant,
    ) -> FollowerSession {
        FollowerSession::with_seen_epoch(cfg, epochs, Epoch::ZERO, end, progress, now)
    }

    /// As [`new`](Self::new), for a follower that has durably seen epoch `seen` (higher
    /// than its log's last epoch when it was welcomed by a newer leader but has received
    /// nothing from it yet): leaders older than `seen` are refused and told to step down.
    pub fn with_seen_epoch(
        cfg: FollowerConfig,
        epochs: &[(Epoch, Lsn)],
        seen: Epoch,
        end: Lsn,
        progress: Progress,
        now: Instant,
    ) -> FollowerSession {
        // An epoch that begins past the end (its first records were lost) is sent as
        // beginning at the end: the leader then shares nothing of it with this log.
        let epochs: Vec<(Epoch, Lsn)> = epochs
            [epochs.len().saturating_sub(crate::wire::MAX_HELLO_EPOCHS)..]
            .iter()
            .map(|&(e, s)| (e, s.min(end)))
            .collect();
        let epoch = epochs.last().map_or(Epoch::ZERO, |&(e, _)| e);
        let log_epoch = epoch;
        let epoch = seen.max(log_epoch);
        let mut s = FollowerSession {
            // Until the leader welcomes it, only control frames.
            inbound: Inbound::new(cfg.max_frame.min(crate::wire::CONTROL_FRAME_LIMIT)),
            cfg,
            state: State::AwaitWelcome,
            events: VecDeque::new(),
            epoch,
            end,
            leader_committed: Lsn::ZERO,
            committed: Lsn::ZERO,
            progress,
            acked: None,
            ack_due: false,
            last_heard: now,
            last_ack: now,
        };
        let hello = Frame::Hello(Hello {
            cluster_id: s.cfg.cluster_id.clone(),
            node_id: s.cfg.node_id.clone(),
            last_epoch: log_epoch,
            seen_epoch: epoch,
            end_lsn: end,
            written_lsn: s.progress.written.min(end),
            flushed_lsn: s.progress.flushed.min(s.progress.written).min(end),
            segment_capacity: s.cfg.segment_capacity,
            epochs,
        });
        s.transmit(&hello);
        s
    }

    /// The highest epoch seen.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// Whether the leader accepted the session and data may flow.
    pub fn is_streaming(&self) -> bool {
        self.state == State::Streaming
    }

    fn transmit(&mut self, f: &Frame) {
        let mut b = BytesMut::new();
        // Frames built here are within every limit (ids are the caller's, checked at
        // encode time; an over-long id would only fail the Hello, which the peer refuses).
        if f.encode(&mut b).is_ok() {
            self.events.push_back(FollowerEvent::Transmit(b.freeze()));
        }
    }

    fn refuse(&mut self, code: RejectCode, reason: String) -> SessionError {
        let reason = super::bounded_reason(reason);
        let reject = Frame::Reject(Reject {
            code,
            epoch: self.epoch,
            lsn: self.end,
            reason: reason.clone(),
        });
        self.transmit(&reject);
        self.state = State::Closed;
        SessionError::Refused { code, reason }
    }

    fn see_epoch(&mut self, e: Epoch) -> Result<(), SessionError> {
        if e < self.epoch {
            return Err(self.refuse(
                RejectCode::StaleEpoch,
                format!(
                    "leader epoch {e} is older than epoch {} already seen",
                    self.epoch
                ),
            ));
        }
        if e > self.epoch {
            self.epoch = e;
            self.events.push_back(FollowerEvent::EpochSeen(e));
        }
        Ok(())
    }

    /// Bytes received from the leader.
    ///
    /// # Errors
    /// The session is over; drain `poll_event` (a `Reject` may be queued) and close.
    pub fn handle_bytes(&mut self, now: Instant, data: &[u8]) -> Result<(), SessionError> {
        self.inbound.push(self.state == State::Closed, data)?;
        self.last_heard = now;
        while let Some(frame) = self
            .inbound
            .next()
            .inspect_err(|_| self.state = State::Closed)?
        {
            self.handle_frame(frame)?;
        }
        Ok(())
    }

    fn handle_frame(&mut self, frame: Frame) -> Result<(), SessionError> {
        match (self.state, frame) {
            (State::AwaitWelcome, Frame::Welcome(w)) => {
                if !walship_engine::mutation::active(
                    walship_engine::mutation::WELCOME_EPOCH_UNCHECKED,
                ) {
                    self.see_epoch(w.epoch)?;
                }
                let mut end = self.end;
                if let Some(t) = w.truncate_to {
                    // At the end too: that only forgets epochs begun there.
                    if t <= end {
                        self.events.push_back(FollowerEvent::Truncate(t));
                        end = t;
                        let clip = |l: Lsn| l.min(t);
                        self.progress = Progress {
                            written: clip(self.progress.written),
                            flushed: clip(self.progress.flushed),
                            applied: clip(self.progress.applied),
                        };
                    }
                }
                if w.start_lsn != end {
                    return Err(self.refuse(
                        RejectCode::NotRetained,
                        format!(
                            "leader would stream from {} but this log ends at {end}",
                            w.start_lsn
                        ),
                    ));
                }
                self.end = end;
                self.state = State::Streaming;
                self.inbound.set_max_frame(self.cfg.max_frame);
                self.ack_due = true;
                self.events.push_back(FollowerEvent::Streaming {
                    leader_id: w.leader_id,
                    epoch: w.epoch,
                    start: end,
                });
                Ok(())
            }
            (_, Frame::Reject(r)) => {
                self.state = State::Closed;
                if r.code == RejectCode::StaleEpoch && r.epoch > self.epoch {
                    self.epoch = r.epoch;
                    self.events.push_back(FollowerEvent::EpochSeen(r.epoch));
                }
                Err(SessionError::Rejected {
                    code: r.code,
                    epoch: r.epoch,
                    lsn: r.lsn,
                    reason: r.reason,
                })
            }
            (State::Streaming, Frame::Ship(s)) => {
                self.see_epoch(s.epoch)?;
                self.end = s.end;
                let committed = s.committed;
                self.events.push_back(FollowerEvent::Append(s));
                self.leader_committed(committed);
                Ok(())
            }
            (State::Streaming, Frame::Heartbeat(h)) => {
                self.see_epoch(h.epoch)?;
                self.leader_committed(h.committed);
                if h.reply_requested {
                    self.ack_due = true;
                }
                Ok(())
            }
            (state, f) => {
                self.state = State::Closed;
                Err(SessionError::Unexpected {
                    frame: frame_name(&f),
                    state: state.name(),
                })
            }
        }
    }

    /// The local log's watermarks advanced (the driver appended, flushed or applied).
    pub fn handle_progress(&mut self, progress: Progress) {
        if progress != self.progress {
            self.progress = progress;
            self.ack_due = true;
        }
    }

    /// A timer fired (see [`poll_timeout`](Self::poll_timeout)).
    ///
    /// # Errors
    /// [`SessionError::IdleTimeout`] if the leader has been silent too long.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), SessionError> {
        if now.saturating_duration_since(self.last_heard) >= self.cfg.idle_timeout {
            self.state = State::Closed;
            return Err(SessionError::IdleTimeout);
        }
        if now.saturating_duration_since(self.last_ack) >= self.cfg.status_interval {
            self.ack_due = true;
        }
        Ok(())
    }

    /// The next thing for the driver to do, if any. Acks are coalesced: however many
    /// progress reports arrived since the last poll, one `Ack` carries the latest.
    pub fn poll_event(&mut self, now: Instant) -> Option<FollowerEvent> {
        if let Some(e) = self.events.pop_front() {
            return Some(e);
        }
        if self.ack_due && self.state == State::Streaming {
            self.ack_due = false;
            self.last_ack = now;
            self.acked = Some(self.progress);
            let ack = Frame::Ack(Ack {
                epoch: self.epoch,
                written: self.progress.written,
                flushed: self.progress.flushed.min(self.progress.written),
                applied: self
                    .progress
                    .applied
                    .min(self.progress.flushed)
                    .min(self.progress.written),
            });
            self.transmit(&ack);
            return self.events.pop_front();
        }
        None
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.state == State::Closed {
            return None;
        }
        let idle = self.last_heard + self.cfg.idle_timeout;
        Some(match self.state {
            State::Streaming => idle.min(self.last_ack + self.cfg.status_interval),
            _ => idle,
        })
    }

    /// The leader reported its committed LSN: what of it this log holds (while
    /// streaming, `end` is where this log matches the leader's) is final.
    fn leader_committed(&mut self, lsn: Lsn) {
        self.leader_committed = self.leader_committed.max(lsn);
        let known = self.leader_committed.min(self.end);
        if known > self.committed {
            self.committed = known;
            self.events.push_back(FollowerEvent::Committed(known));
        }
    }

    /// Asks the leader to answer at once (used by a driver checking the connection).
    pub fn ping(&mut self, now: Instant, timestamp_us: u64) {
        let hb = Frame::Heartbeat(Heartbeat {
            epoch: self.epoch,
            end_lsn: self.end,
            committed: Lsn::ZERO,
            timestamp_us,
            reply_requested: true,
        });
        self.last_ack = now;
        self.transmit(&hb);
    }
}

pub(crate) fn frame_name(f: &Frame) -> &'static str {
    match f {
        Frame::Hello(_) => "Hello",
        Frame::Welcome(_) => "Welcome",
        Frame::Reject(_) => "Reject",
        Frame::Ship(_) => "Ship",
        Frame::Ack(_) => "Ack",
        Frame::Heartbeat(_) => "Heartbeat",
        Frame::SnapshotRequest(_) => "SnapshotRequest",
        Frame::SnapshotHeader(_) => "SnapshotHeader",
    }
}
