//! Leader and follower session logic, without I/O.
//!
//! Each session is a plain state machine in the style of `quinn-proto`: inputs arrive as
//! method calls carrying `now` (bytes received, local log progress, a timer firing), and
//! outputs are pulled with `poll_*` (bytes to transmit, a truncation or an append for the
//! local log, progress for the quorum tracker, the earliest timer). No sockets, threads or
//! clocks inside, so the same code runs under real QUIC and under a simulated network.
//!
//! Call order for both: feed inputs, then drain `poll_output` until `None`, then arm one
//! timer at `poll_timeout`. Time passed in must never go backwards.

pub mod follower;
pub mod leader;
pub mod registry;

use bytes::BytesMut;
use walship_engine::{Epoch, Lsn};

use crate::wire::{Decoder, Frame, RejectCode, WireError, MAX_REASON_BYTES};

/// The receiving half both sessions share: bytes in, whole checked frames out.
#[derive(Debug)]
pub(crate) struct Inbound {
    decoder: Decoder,
    buf: BytesMut,
}

impl Inbound {
    pub(crate) fn new(max_frame: u32) -> Inbound {
        Inbound {
            decoder: Decoder::new(max_frame),
            buf: BytesMut::new(),
        }
    }

    /// Changes the largest frame accepted.
    pub(crate) fn set_max_frame(&mut self, max_frame: u32) {
        self.decoder.set_max_frame(max_frame);
    }

    /// Buffers `data`, unless the session (whose state says so) is already closed.
    pub(crate) fn push(&mut self, session_closed: bool, data: &[u8]) -> Result<(), SessionError> {
        if session_closed {
            return Err(SessionError::Unexpected {
                frame: "any",
                state: "closed",
            });
        }
        self.buf.extend_from_slice(data);
        Ok(())
    }

    /// The next whole frame. After an error the caller closes the session.
    pub(crate) fn next(&mut self) -> Result<Option<Frame>, SessionError> {
        Ok(self.decoder.decode(&mut self.buf)?)
    }
}

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The peer sent bytes that do not decode or break the protocol's rules.
    #[error("protocol violation: {0}")]
    Wire(#[from] WireError),
    /// The peer sent a frame that is valid but not expected in this state.
    #[error("unexpected {frame} frame while {state}")]
    Unexpected {
        /// The frame's kind.
        frame: &'static str,
        /// The session's state.
        state: &'static str,
    },
    /// The peer refused us.
    #[error("rejected by peer ({code:?}, its epoch {epoch}, LSN {lsn}): {reason}")]
    Rejected {
        /// The refusal code.
        code: RejectCode,
        /// The peer's epoch.
        epoch: Epoch,
        /// The LSN the refusal mentions.
        lsn: Lsn,
        /// The peer's explanation.
        reason: String,
    },
    /// We refused the peer (the reject frame has been queued for transmission).
    #[error("refused peer ({code:?}): {reason}")]
    Refused {
        /// The refusal code.
        code: RejectCode,
        /// Why.
        reason: String,
    },
    /// A newer epoch exists: this node must step down (leader) or follow it (follower).
    #[error("epoch {seen} is newer than ours ({ours})")]
    NewerEpoch {
        /// Our epoch.
        ours: Epoch,
        /// The newer one.
        seen: Epoch,
    },
    /// Nothing arrived from the peer for longer than the idle timeout.
    #[error("peer silent for longer than the idle timeout")]
    IdleTimeout,
    /// A follower holds written records this leader lacks, and the leadership is not yet
    /// confirmed: the follower was refused (it retries). The leader waits for other
    /// followers to confirm it and yields if none do in time (see
    /// [`LogView::confirmed`](leader::LogView::confirmed)).
    #[error(
        "follower {follower} has written up to {written} in epoch {epoch}, past {from} where this unconfirmed leader's log parts from it: refused until a quorum confirms the epoch"
    )]
    FollowerAhead {
        /// The follower.
        follower: String,
        /// The follower's last epoch.
        epoch: Epoch,
        /// What it has written (a `RemoteWrite` commit counts it, flushed or not).
        written: Lsn,
        /// Where this leader's log parts from it.
        from: Lsn,
    },
}

/// `reason`, cut at a character boundary to at most [`MAX_REASON_BYTES`] bytes, so a
/// `Reject` always fits a control frame.
pub(crate) fn bounded_reason(mut reason: String) -> String {
    if reason.len() > MAX_REASON_BYTES {
        let mut at = MAX_REASON_BYTES;
        while !reason.is_char_boundary(at) {
            at -= 1;
        }
        reason.truncate(at);
    }
    reason
}
