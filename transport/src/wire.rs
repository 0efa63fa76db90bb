//! The wire format: versioned, length-prefixed frames between leader and follower.
//!
//! This module owns every byte that crosses the network and the decoder that checks it.
//! The decoder takes untrusted input: it never panics, refuses a frame whose declared
//! length exceeds the limit *before* buffering it, and, because it follows the stream, it
//! also rejects log data that would leave a gap or overlap, and epochs that go backwards.
//!
//! # Frame
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 2 | magic `0x5753` ("WS"), little-endian |
//! | 2 | 1 | protocol version ([`PROTOCOL_VERSION`]) |
//! | 3 | 1 | kind (below) |
//! | 4 | 4 | payload length n, little-endian |
//! | 8 | n | payload |
//!
//! QUIC already authenticates and checksums every packet; log data inside [`Ship`]
//! frames additionally carries each batch's own CRC32C, which the follower verifies after
//! decompression before appending anything.
//!
//! # Payloads (all integers little-endian; strings are a u16 length then UTF-8)
//!
//! | kind | frame | payload |
//! | --- | --- | --- |
//! | 1 | [`Hello`] | cluster id, node id, last epoch u64, seen epoch u64, end LSN u64, written LSN u64, flushed LSN u64, segment capacity u64, epoch count u8 (at most [`MAX_HELLO_EPOCHS`]) then that many (epoch u64, start LSN u64) |
//! | 2 | [`Welcome`] | epoch u64, truncate-to flag u8 + LSN u64, start LSN u64, leader id |
//! | 3 | [`Reject`] | code u8, epoch u64, LSN u64, reason |
//! | 4 | [`Ship`] | epoch u64, base LSN u64, end LSN u64, committed LSN u64, raw length u32, compression u8, data |
//! | 5 | [`Ack`] | epoch u64, written u64, flushed u64, applied u64 |
//! | 6 | [`Heartbeat`] | epoch u64, end LSN u64, committed LSN u64, timestamp µs u64, reply-requested u8 |
//! | 7 | [`SnapshotRequest`] | cluster id, node id, segment capacity u64 |
//! | 8 | [`SnapshotHeader`] | epoch u64, covered LSN u64, base LSN u64, base epoch u64, length u64 |
//!
//! A follower whose position the leader no longer retains opens a stream with a
//! `SnapshotRequest` instead of a `Hello`; the leader answers with a `SnapshotHeader`,
//! then exactly `length` bytes of the embedder's snapshot, then their CRC32C (u32), and
//! finishes the stream (or with a `Reject`).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use walship_engine::{Epoch, Lsn};

/// The largest frame that carries no log data (Hello, Welcome, Reject, Ack, Heartbeat):
/// what a leader accepts from a follower at all, and a follower from a leader until the
/// leader has welcomed it, so an unauthenticated or misbehaving peer cannot make either
/// buffer a large frame. Reject reasons are cut to fit.
pub const CONTROL_FRAME_LIMIT: u32 = 4 * 1024;
/// The longest reject reason sent, in bytes (any string on the wire is at most this).
pub const MAX_REASON_BYTES: usize = MAX_STRING;

/// The protocol version this build speaks (2: batches carry the engine's format-2 header
/// with its flush stamp, which a follower rewrites for its own copy; 3: a `Hello` carries
/// the newest entries of the follower's epoch history, so the leader finds the point
/// where the logs part even when the follower's last epoch is one it never had; 4: `Ship`
/// and `Heartbeat` carry the leader's committed LSN, so followers know how much of their
/// log no failover can cut, the bound of an embedder's snapshot; 5: `SnapshotRequest` and
/// `SnapshotHeader`, a follower's bootstrap from its leader's snapshot).
pub const PROTOCOL_VERSION: u8 = 5;
/// The most epoch-history entries a `Hello` carries (the newest ones).
pub const MAX_HELLO_EPOCHS: usize = 64;
/// Bytes in a frame header.
pub const FRAME_HEADER_LEN: usize = 8;
const MAGIC: u16 = 0x5753;
const MAX_STRING: usize = 255;

/// A follower's opening message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The cluster the follower belongs to; must match the leader's.
    pub cluster_id: String,
    /// The follower's node id.
    pub node_id: String,
    /// The last epoch in the follower's log (for the divergence point).
    pub last_epoch: Epoch,
    /// The highest epoch the follower has seen, durably (for fencing: a leader of an
    /// older epoch must step down). At least `last_epoch`.
    pub seen_epoch: Epoch,
    /// The end of the follower's log (appended, not necessarily written or flushed).
    pub end_lsn: Lsn,
    /// How far the follower's log is written to its OS: at most `end_lsn`.
    pub written_lsn: Lsn,
    /// How far the follower's log is flushed to its disk: at most `written_lsn`. The
    /// leader counts nothing past it as flushed until an `Ack` says so.
    pub flushed_lsn: Lsn,
    /// The follower's segment capacity; must match for identical logs.
    pub segment_capacity: u64,
    /// The newest entries of the follower's epoch history, oldest first (at most
    /// [`MAX_HELLO_EPOCHS`]): each epoch and where it starts in the follower's log. The
    /// last is `last_epoch` (none if `last_epoch` is zero).
    pub epochs: Vec<(Epoch, Lsn)>,
}

/// The leader's acceptance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// The leader's current epoch.
    pub epoch: Epoch,
    /// Where the follower must truncate its log first (its divergent suffix), if anywhere.
    pub truncate_to: Option<Lsn>,
    /// Where streaming starts.
    pub start_lsn: Lsn,
    /// The leader's node id.
    pub leader_id: String,
}

/// Why a peer was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RejectCode {
    /// The protocol version is not spoken here.
    Version,
    /// The cluster id differs.
    Cluster,
    /// The segment capacity differs.
    SegmentCapacity,
    /// The peer's epoch is behind (`epoch` carries the current one).
    StaleEpoch,
    /// The follower needs log the leader no longer retains (`lsn` carries the leader's
    /// start): it needs a snapshot.
    NotRetained,
    /// This node is not the leader.
    NotLeader,
    /// The follower's retention slot was dropped for exceeding `max_retained_bytes`.
    SlotLost,
    /// The node id in `Hello` is not the one in the peer's certificate.
    Identity,
    /// The node is not (or no longer) a member of the cluster.
    NotMember,
    /// The peer claims an epoch the coordinator never granted.
    UnverifiedEpoch,
}

impl RejectCode {
    fn to_u8(self) -> u8 {
        match self {
            RejectCode::Version => 1,
            RejectCode::Cluster => 2,
            RejectCode::SegmentCapacity => 3,
            RejectCode::StaleEpoch => 4,
            RejectCode::NotRetained => 5,
            RejectCode::NotLeader => 6,
            RejectCode::SlotLost => 7,
            RejectCode::Identity => 8,
            RejectCode::NotMember => 9,
            RejectCode::UnverifiedEpoch => 10,
        }
    }

    fn from_u8(v: u8) -> Option<RejectCode> {
        Some(match v {
            1 => RejectCode::Version,
            2 => RejectCode::Cluster,
            3 => RejectCode::SegmentCapacity,
            4 => RejectCode::StaleEpoch,
            5 => RejectCode::NotRetained,
            6 => RejectCode::NotLeader,
            7 => RejectCode::SlotLost,
            8 => RejectCode::Identity,
            9 => RejectCode::NotMember,
            10 => RejectCode::UnverifiedEpoch,
            _ => return None,
        })
    }
}

/// A refusal, with the facts the peer needs to act on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    /// What kind of refusal.
    pub code: RejectCode,
    /// The sender's epoch.
    pub epoch: Epoch,
    /// An LSN relevant to the code (the leader's log start for `NotRetained`), else zero.
    pub lsn: Lsn,
    /// A human-readable explanation.
    pub reason: String,
}

/// How the data of a [`Ship`] frame is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// The batches as stored.
    None,
    /// One zstd frame holding the batches.
    Zstd,
}

/// Consecutive log batches `[base, end)`, byte-identical to the leader's log once
/// decompressed (the follower writes its own flush stamp into each batch header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ship {
    /// The leader's epoch when it sent them.
    pub epoch: Epoch,
    /// LSN of the first byte.
    pub base: Lsn,
    /// LSN just past the last byte.
    pub end: Lsn,
    /// The leader's committed LSN ([`Heartbeat::committed`]).
    pub committed: Lsn,
    /// Length of the data once decompressed (`end - base` minus skipped segment headers).
    pub raw_len: u32,
    /// How `data` is encoded.
    pub compression: Compression,
    /// The (possibly compressed) batches.
    pub data: Bytes,
}

/// Bytes of a [`Ship`] payload before its data.
const SHIP_FIELDS_LEN: usize = 37;

impl Ship {
    fn put_fields(&self, out: &mut BytesMut) {
        out.put_u64_le(self.epoch.get());
        out.put_u64_le(self.base.get());
        out.put_u64_le(self.end.get());
        out.put_u64_le(self.committed.get());
        out.put_u32_le(self.raw_len);
        out.put_u8(match self.compression {
            Compression::None => 0,
            Compression::Zstd => 1,
        });
    }

    /// The frame header and fields of this `Ship`, without its data: sending this and
    /// then `data` as a separate chunk puts the same bytes on the wire as
    /// [`Frame::encode`], without copying the data.
    ///
    /// # Errors
    /// [`WireError::FrameTooLarge`] for data over `u32::MAX` bytes.
    pub fn encode_header(&self) -> Result<Bytes, WireError> {
        let len = SHIP_FIELDS_LEN + self.data.len();
        let len = u32::try_from(len).map_err(|_| WireError::FrameTooLarge {
            len: len as u64,
            max: u64::from(u32::MAX),
        })?;
        let mut out = BytesMut::with_capacity(FRAME_HEADER_LEN + SHIP_FIELDS_LEN);
        out.put_u16_le(MAGIC);
        out.put_u8(PROTOCOL_VERSION);
        out.put_u8(4);
        out.put_u32_le(len);
        self.put_fields(&mut out);
        Ok(out.freeze())
    }
}

/// A follower's progress report, as `pg_stat_replication`'s write/flush/replay LSNs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    /// The follower's epoch.
    pub epoch: Epoch,
    /// Written to the follower's OS.
    pub written: Lsn,
    /// Flushed to the follower's disk.
    pub flushed: Lsn,
    /// Applied by the follower's embedder.
    pub applied: Lsn,
}

/// A keep-alive in either direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    /// The sender's epoch.
    pub epoch: Epoch,
    /// The sender's log end.
    pub end_lsn: Lsn,
    /// From a leader: the end of its log's prefix that the sync quorum has flushed (its
    /// `remote_flushed` watermark), which is what a `RemoteFlush` commit acknowledges
    /// and what no failover or power loss cuts. Zero from a follower.
    pub committed: Lsn,
    /// The sender's clock, µs since the Unix epoch (for lag in time).
    pub timestamp_us: u64,
    /// Whether the receiver should answer at once (with an Ack or a Heartbeat).
    pub reply_requested: bool,
}

/// A follower's request for its leader's newest snapshot, first on its stream: its
/// position is no longer retained (`pg_basebackup`, done by the follower itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRequest {
    /// The cluster the follower belongs to; must match the leader's.
    pub cluster_id: String,
    /// The follower's node id (its certificate must name it).
    pub node_id: String,
    /// The follower's segment capacity; must match (the log restarts at a segment base).
    pub segment_capacity: u64,
}

/// What a snapshot that follows on the stream covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotHeader {
    /// The leader's epoch.
    pub epoch: Epoch,
    /// The snapshot holds the effect of every record up to this LSN (a record boundary).
    pub lsn: Lsn,
    /// The segment the follower's log restarts at: the one holding the last byte of the
    /// record at `lsn`, which the leader retains while it serves the snapshot.
    pub base: Lsn,
    /// The epoch of the leader's log at `base` (the restarted log's first epoch).
    pub base_epoch: Epoch,
    /// Bytes of snapshot that follow, before their CRC32C.
    pub len: u64,
}

/// One protocol message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Follower → leader, first.
    Hello(Hello),
    /// Leader → follower, accepting.
    Welcome(Welcome),
    /// Either way, refusing; the connection closes after it.
    Reject(Reject),
    /// Leader → follower: log data.
    Ship(Ship),
    /// Follower → leader: progress.
    Ack(Ack),
    /// Either way: keep-alive.
    Heartbeat(Heartbeat),
    /// Follower → leader, first, instead of `Hello`.
    SnapshotRequest(SnapshotRequest),
    /// Leader → follower: the snapshot's bytes follow.
    SnapshotHeader(SnapshotHeader),
}

impl Frame {
    fn kind(&self) -> u8 {
        match self {
            Frame::Hello(_) => 1,
            Frame::Welcome(_) => 2,
            Frame::Reject(_) => 3,
            Frame::Ship(_) => 4,
            Frame::Ack(_) => 5,
            Frame::Heartbeat(_) => 6,
            Frame::SnapshotRequest(_) => 7,
            Frame::SnapshotHeader(_) => 8,
        }
    }

    /// Appends the encoded frame to `out`.
    ///
    /// # Errors
    /// [`WireError::StringTooLong`] for an id or reason over 255 bytes, and
    /// [`WireError::FrameTooLarge`] for a payload over `u32::MAX`.
    pub fn encode(&self, out: &mut BytesMut) -> Result<(), WireError> {
        let start = out.len();
        out.put_u16_le(MAGIC);
        out.put_u8(PROTOCOL_VERSION);
        out.put_u8(self.kind());
        out.put_u32_le(0);
        match self {
            Frame::Hello(h) => {
                put_str(out, &h.cluster_id)?;
                put_str(out, &h.node_id)?;
                out.put_u64_le(h.last_epoch.get());
                out.put_u64_le(h.seen_epoch.get());
                out.put_u64_le(h.end_lsn.get());
                out.put_u64_le(h.written_lsn.get());
                out.put_u64_le(h.flushed_lsn.get());
                out.put_u64_le(h.segment_capacity);
                let count = u8::try_from(h.epochs.len())
                    .ok()
                    .filter(|&n| usize::from(n) <= MAX_HELLO_EPOCHS)
                    .ok_or(WireError::Malformed {
                        kind: "Hello",
                        reason: format!(
                            "{} epoch-history entries, more than {MAX_HELLO_EPOCHS}",
                            h.epochs.len()
                        ),
                    })?;
                out.put_u8(count);
                for (e, s) in &h.epochs {
                    out.put_u64_le(e.get());
                    out.put_u64_le(s.get());
                }
            }
            Frame::Welcome(w) => {
                out.put_u64_le(w.epoch.get());
                out.put_u8(u8::from(w.truncate_to.is_some()));
                out.put_u64_le(w.truncate_to.map_or(0, Lsn::get));
                out.put_u64_le(w.start_lsn.get());
                put_str(out, &w.leader_id)?;
            }
            Frame::Reject(r) => {
                out.put_u8(r.code.to_u8());
                out.put_u64_le(r.epoch.get());
                out.put_u64_le(r.lsn.get());
                put_str(out, &r.reason)?;
            }
            Frame::Ship(s) => {
                s.put_fields(out);
                out.put_slice(&s.data);
            }
            Frame::Ack(a) => {
                out.put_u64_le(a.epoch.get());
                out.put_u64_le(a.written.get());
                out.put_u64_le(a.flushed.get());
                out.put_u64_le(a.applied.get());
            }
            Frame::Heartbeat(h) => {
                out.put_u64_le(h.epoch.get());
                out.put_u64_le(h.end_lsn.get());
                out.put_u64_le(h.committed.get());
                out.put_u64_le(h.timestamp_us);
                out.put_u8(u8::from(h.reply_requested));
            }
            Frame::SnapshotRequest(r) => {
                put_str(out, &r.cluster_id)?;
                put_str(out, &r.node_id)?;
                out.put_u64_le(r.segment_capacity);
            }
            Frame::SnapshotHeader(h) => {
                out.put_u64_le(h.epoch.get());
                out.put_u64_le(h.lsn.get());
                out.put_u64_le(h.base.get());
                out.put_u64_le(h.base_epoch.get());
                out.put_u64_le(h.len);
            }
        }
        let len = out.len() - start - FRAME_HEADER_LEN;
        let len = u32::try_from(len).map_err(|_| WireError::FrameTooLarge {
            len: len as u64,
            max: u64::from(u32::MAX),
        })?;
        out[start + 4..start + 8].copy_from_slice(&len.to_le_bytes());
        Ok(())
    }
}

fn put_str(out: &mut BytesMut, s: &str) -> Result<(), WireError> {
    if s.len() > MAX_STRING {
        return Err(WireError::StringTooLong { len: s.len() });
    }
    out.put_u16_le(s.len() as u16);
    out.put_slice(s.as_bytes());
    Ok(())
}

/// Why bytes from a peer were refused. The connection is closed and nothing is written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// Not a walship frame.
    #[error("bad frame magic {found:#06x}")]
    BadMagic {
        /// What was found.
        found: u16,
    },
    /// A protocol version this build does not speak.
    #[error("unsupported protocol version {found} (this build speaks {PROTOCOL_VERSION})")]
    UnsupportedVersion {
        /// The version found.
        found: u8,
    },
    /// An unknown frame kind.
    #[error("unknown frame kind {kind}")]
    UnknownKind {
        /// The kind found.
        kind: u8,
    },
    /// A frame longer than the limit; refused before it is buffered.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    FrameTooLarge {
        /// Declared length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// The payload ends before its fields do, or has bytes left over.
    #[error("{kind} frame payload malformed: {reason}")]
    Malformed {
        /// Which frame.
        kind: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A string over 255 bytes, or not UTF-8.
    #[error("string of {len} bytes is too long or not UTF-8")]
    StringTooLong {
        /// Its length.
        len: usize,
    },
    /// Log data does not continue where the previous data ended.
    #[error("log data at {found} does not continue the stream at {expected} ({})", if found > expected { "gap" } else { "overlap" })]
    LsnDiscontinuity {
        /// Where the data should start.
        expected: Lsn,
        /// Where it starts.
        found: Lsn,
    },
    /// An epoch lower than one already seen on this connection.
    #[error("epoch regression: {found} after {previous}")]
    EpochRegression {
        /// The highest epoch seen.
        previous: Epoch,
        /// The epoch found.
        found: Epoch,
    },
    /// Acknowledged positions out of order (applied ≤ flushed ≤ written must hold).
    #[error("inconsistent ack: written {written}, flushed {flushed}, applied {applied}")]
    InconsistentAck {
        /// Written LSN.
        written: Lsn,
        /// Flushed LSN.
        flushed: Lsn,
        /// Applied LSN.
        applied: Lsn,
    },
    /// A data frame whose declared sizes are impossible.
    #[error("ship frame [{base}, {end}) declares {raw_len} raw bytes: {reason}")]
    BadShip {
        /// Base LSN.
        base: Lsn,
        /// End LSN.
        end: Lsn,
        /// Declared raw length.
        raw_len: u32,
        /// What is impossible.
        reason: String,
    },
}

/// A streaming decoder for one direction of one connection.
///
/// Feed it bytes as they arrive; it returns whole frames. It remembers where log data
/// must continue and the highest epoch seen, so a peer cannot open a gap, overlap, or go
/// back in epochs.
///
/// ```
/// use bytes::BytesMut;
/// use walship_engine::{Epoch, Lsn};
/// use walship_transport::wire::{Ack, Decoder, Frame, WireError};
/// let mut buf = BytesMut::new();
/// let ack = Frame::Ack(Ack { epoch: Epoch::new(2), written: Lsn::new(90), flushed: Lsn::new(80), applied: Lsn::new(70) });
/// ack.encode(&mut buf)?;
/// let mut dec = Decoder::new(1 << 20);
/// assert_eq!(dec.decode(&mut buf)?, Some(ack));
/// assert_eq!(dec.decode(&mut buf)?, None); // nothing left
/// # Ok::<(), WireError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Decoder {
    max_frame: u64,
    max_raw: u32,
    expect_lsn: Option<Lsn>,
    epoch: Epoch,
}

impl Decoder {
    /// A decoder refusing frames with payloads over `max_frame` bytes; decompressed data
    /// may be at most four times that.
    pub fn new(max_frame: u32) -> Decoder {
        Decoder {
            max_frame: u64::from(max_frame),
            max_raw: max_frame.saturating_mul(4),
            expect_lsn: None,
            epoch: Epoch::ZERO,
        }
    }

    /// Changes the largest frame accepted (a follower raises it once it is welcomed).
    pub fn set_max_frame(&mut self, max_frame: u32) {
        self.max_frame = u64::from(max_frame);
        self.max_raw = max_frame.saturating_mul(4);
    }

    /// Requires the next log data to start at `lsn` (set once streaming starts).
    pub fn expect_lsn(&mut self, lsn: Lsn) {
        self.expect_lsn = Some(lsn);
    }

    /// Where the next log data must start, once known.
    pub fn next_lsn(&self) -> Option<Lsn> {
        self.expect_lsn
    }

    /// The highest epoch seen.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The largest decompressed size a [`Ship`] frame may declare.
    pub fn max_raw(&self) -> u32 {
        self.max_raw
    }

    /// Takes one frame off the front of `buf`, or returns `None` if it is not all there
    /// yet. A frame header declaring too large a payload is refused at once.
    ///
    /// # Errors
    /// Any [`WireError`]; the stream is then unusable.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, WireError> {
        if buf.len() < FRAME_HEADER_LEN {
            // Check what is there already, so a bad stream fails at its first bytes.
            if buf.len() >= 2 {
                let magic = u16::from_le_bytes([buf[0], buf[1]]);
                if magic != MAGIC {
                    return Err(WireError::BadMagic { found: magic });
                }
            }
            return Ok(None);
        }
        let magic = u16::from_le_bytes([buf[0], buf[1]]);
        if magic != MAGIC {
            return Err(WireError::BadMagic { found: magic });
        }
        if buf[2] != PROTOCOL_VERSION {
            return Err(WireError::UnsupportedVersion { found: buf[2] });
        }
        let kind = buf[3];
        if !(1..=8).contains(&kind) {
            return Err(WireError::UnknownKind { kind });
        }
        let len = u64::from(u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]));
        if len > self.max_frame {
            return Err(WireError::FrameTooLarge {
                len,
                max: self.max_frame,
            });
        }
        let total = FRAME_HEADER_LEN + len as usize;
        if buf.len() < total {
            buf.reserve(total - buf.len());
            return Ok(None);
        }
        let mut frame = buf.split_to(total);
        frame.advance(FRAME_HEADER_LEN);
        let payload = frame.freeze();
        let decoded = decode_payload(kind, payload)?;
        self.check(&decoded)?;
        Ok(Some(decoded))
    }

    fn see_epoch(&mut self, e: Epoch) -> Result<(), WireError> {
        if e < self.epoch {
            return Err(WireError::EpochRegression {
                previous: self.epoch,
                found: e,
            });
        }
        self.epoch = e;
        Ok(())
    }

    fn check(&mut self, f: &Frame) -> Result<(), WireError> {
        match f {
            Frame::Hello(h) => {
                if h.flushed_lsn > h.written_lsn || h.written_lsn > h.end_lsn {
                    return Err(WireError::Malformed {
                        kind: "Hello",
                        reason: format!(
                            "flushed {} > written {} or written > end {}",
                            h.flushed_lsn, h.written_lsn, h.end_lsn
                        ),
                    });
                }
                check_hello_epochs(h)?;
                self.see_epoch(h.seen_epoch.max(h.last_epoch))
            }
            Frame::Welcome(w) => {
                self.see_epoch(w.epoch)?;
                self.expect_lsn = Some(w.start_lsn);
                Ok(())
            }
            Frame::Reject(_) => Ok(()),
            Frame::Ship(s) => {
                self.see_epoch(s.epoch)?;
                if s.end < s.base {
                    return Err(WireError::BadShip {
                        base: s.base,
                        end: s.end,
                        raw_len: s.raw_len,
                        reason: "end before base".into(),
                    });
                }
                if s.raw_len > self.max_raw || u64::from(s.raw_len) > s.end.get() - s.base.get() {
                    return Err(WireError::BadShip {
                        base: s.base,
                        end: s.end,
                        raw_len: s.raw_len,
                        reason: format!("more than the LSN span or the limit of {}", self.max_raw),
                    });
                }
                if s.compression == Compression::None && s.data.len() != s.raw_len as usize {
                    return Err(WireError::BadShip {
                        base: s.base,
                        end: s.end,
                        raw_len: s.raw_len,
                        reason: format!("uncompressed data is {} bytes", s.data.len()),
                    });
                }
                if let Some(expected) = self.expect_lsn {
                    if s.base != expected {
                        return Err(WireError::LsnDiscontinuity {
                            expected,
                            found: s.base,
                        });
                    }
                }
                self.expect_lsn = Some(s.end);
                Ok(())
            }
            Frame::Ack(a) => {
                if a.flushed > a.written || a.applied > a.flushed {
                    return Err(WireError::InconsistentAck {
                        written: a.written,
                        flushed: a.flushed,
                        applied: a.applied,
                    });
                }
                self.see_epoch(a.epoch)
            }
            Frame::Heartbeat(h) => self.see_epoch(h.epoch),
            Frame::SnapshotRequest(_) => Ok(()),
            Frame::SnapshotHeader(h) => self.see_epoch(h.epoch),
        }
    }
}

struct Payload {
    kind: &'static str,
    b: Bytes,
}

/// A `Hello`'s epoch history is a history: epochs rising, starts not falling and within
/// the follower's log, ending with its last epoch.
fn check_hello_epochs(h: &Hello) -> Result<(), WireError> {
    let bad = |reason: String| WireError::Malformed {
        kind: "Hello",
        reason,
    };
    for w in h.epochs.windows(2) {
        if w[1].0 <= w[0].0 || w[1].1 < w[0].1 {
            return Err(bad(format!(
                "epoch history goes backwards: epoch {} from {} after epoch {} from {}",
                w[1].0, w[1].1, w[0].0, w[0].1
            )));
        }
    }
    match h.epochs.last() {
        Some(&(e, s)) if e != h.last_epoch || s > h.end_lsn => Err(bad(format!(
            "epoch history ends with epoch {e} from {s}, but the last epoch is {} and the log ends at {}",
            h.last_epoch, h.end_lsn
        ))),
        None if h.last_epoch != Epoch::ZERO => Err(bad(format!(
            "no epoch history, but the last epoch is {}",
            h.last_epoch
        ))),
        _ => Ok(()),
    }
}

impl Payload {
    fn need(&self, n: usize) -> Result<(), WireError> {
        if self.b.remaining() < n {
            return Err(WireError::Malformed {
                kind: self.kind,
                reason: format!("needs {n} more bytes, {} left", self.b.remaining()),
            });
        }
        Ok(())
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        self.need(1)?;
        Ok(self.b.get_u8())
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        self.need(4)?;
        Ok(self.b.get_u32_le())
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        self.need(8)?;
        Ok(self.b.get_u64_le())
    }
    fn string(&mut self) -> Result<String, WireError> {
        self.need(2)?;
        let len = self.b.get_u16_le() as usize;
        if len > MAX_STRING {
            return Err(WireError::StringTooLong { len });
        }
        self.need(len)?;
        let bytes = self.b.split_to(len);
        String::from_utf8(bytes.to_vec()).map_err(|_| WireError::StringTooLong { len })
    }
    fn flag(&mut self) -> Result<bool, WireError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(WireError::Malformed {
                kind: self.kind,
                reason: format!("flag byte {v} is neither 0 nor 1"),
            }),
        }
    }
    fn done(self) -> Result<(), WireError> {
        if self.b.has_remaining() {
            return Err(WireError::Malformed {
                kind: self.kind,
                reason: format!("{} bytes left over", self.b.remaining()),
            });
        }
        Ok(())
    }
}

fn decode_payload(kind: u8, b: Bytes) -> Result<Frame, WireError> {
    let name = match kind {
        1 => "Hello",
        2 => "Welcome",
        3 => "Reject",
        4 => "Ship",
        5 => "Ack",
        6 => "Heartbeat",
        7 => "SnapshotRequest",
        _ => "SnapshotHeader",
    };
    let mut p = Payload { kind: name, b };
    let frame = match kind {
        1 => {
            let mut h = Hello {
                cluster_id: p.string()?,
                node_id: p.string()?,
                last_epoch: Epoch::new(p.u64()?),
                seen_epoch: Epoch::new(p.u64()?),
                end_lsn: Lsn::new(p.u64()?),
                written_lsn: Lsn::new(p.u64()?),
                flushed_lsn: Lsn::new(p.u64()?),
                segment_capacity: p.u64()?,
                epochs: Vec::new(),
            };
            let count = usize::from(p.u8()?);
            if count > MAX_HELLO_EPOCHS {
                return Err(WireError::Malformed {
                    kind: "Hello",
                    reason: format!("{count} epoch-history entries, more than {MAX_HELLO_EPOCHS}"),
                });
            }
            for _ in 0..count {
                h.epochs.push((Epoch::new(p.u64()?), Lsn::new(p.u64()?)));
            }
            Frame::Hello(h)
        }
        2 => {
            let epoch = Epoch::new(p.u64()?);
            let has_truncate = p.flag()?;
            let t = Lsn::new(p.u64()?);
            Frame::Welcome(Welcome {
                epoch,
                truncate_to: has_truncate.then_some(t),
                start_lsn: Lsn::new(p.u64()?),
                leader_id: p.string()?,
            })
        }
        3 => {
            let raw = p.u8()?;
            let code = RejectCode::from_u8(raw).ok_or_else(|| WireError::Malformed {
                kind: "Reject",
                reason: format!("unknown reject code {raw}"),
            })?;
            Frame::Reject(Reject {
                code,
                epoch: Epoch::new(p.u64()?),
                lsn: Lsn::new(p.u64()?),
                reason: p.string()?,
            })
        }
        4 => {
            let epoch = Epoch::new(p.u64()?);
            let base = Lsn::new(p.u64()?);
            let end = Lsn::new(p.u64()?);
            let committed = Lsn::new(p.u64()?);
            let raw_len = p.u32()?;
            let compression = match p.u8()? {
                0 => Compression::None,
                1 => Compression::Zstd,
                v => {
                    return Err(WireError::Malformed {
                        kind: "Ship",
                        reason: format!("unknown compression {v}"),
                    })
                }
            };
            let data = std::mem::take(&mut p.b);
            Frame::Ship(Ship {
                epoch,
                base,
                end,
                committed,
                raw_len,
                compression,
                data,
            })
        }
        5 => Frame::Ack(Ack {
            epoch: Epoch::new(p.u64()?),
            written: Lsn::new(p.u64()?),
            flushed: Lsn::new(p.u64()?),
            applied: Lsn::new(p.u64()?),
        }),
        6 => Frame::Heartbeat(Heartbeat {
            epoch: Epoch::new(p.u64()?),
            end_lsn: Lsn::new(p.u64()?),
            committed: Lsn::new(p.u64()?),
            timestamp_us: p.u64()?,
            reply_requested: p.flag()?,
        }),
        7 => Frame::SnapshotRequest(SnapshotRequest {
            cluster_id: p.string()?,
            node_id: p.string()?,
            segment_capacity: p.u64()?,
        }),
        _ => Frame::SnapshotHeader(SnapshotHeader {
            epoch: Epoch::new(p.u64()?),
            lsn: Lsn::new(p.u64()?),
            base: Lsn::new(p.u64()?),
            base_epoch: Epoch::new(p.u64()?),
            len: p.u64()?,
        }),
    };
    p.done()?;
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encode(f: &Frame) -> BytesMut {
        let mut b = BytesMut::new();
        f.encode(&mut b).unwrap();
        b
    }

    fn arb_frame() -> impl Strategy<Value = Frame> {
        let s = "[a-z0-9-]{0,40}";
        prop_oneof![
            (
                s,
                s,
                any::<u64>(),
                any::<u64>(),
                any::<[u64; 3]>(),
                any::<u64>(),
                proptest::collection::vec((1..1000u64, any::<u64>()), 0..=MAX_HELLO_EPOCHS)
            )
                .prop_map(|(c, n, e, seen, mut lsns, cap, steps)| {
                    lsns.sort_unstable();
                    // A history: epochs rising from `e`, starts rising within the log.
                    let end = lsns[2];
                    let mut epoch = e % (u64::MAX / 2);
                    let mut starts: Vec<u64> = steps.iter().map(|&(_, s)| s % (end + 1)).collect();
                    starts.sort_unstable();
                    let epochs: Vec<(Epoch, Lsn)> = steps
                        .iter()
                        .zip(starts)
                        .map(|(&(de, _), s)| {
                            epoch += de;
                            (Epoch::new(epoch), Lsn::new(s))
                        })
                        .collect();
                    Frame::Hello(Hello {
                        cluster_id: c,
                        node_id: n,
                        last_epoch: epochs.last().map_or(Epoch::ZERO, |&(e, _)| e),
                        seen_epoch: Epoch::new(seen),
                        end_lsn: Lsn::new(end),
                        written_lsn: Lsn::new(lsns[1]),
                        flushed_lsn: Lsn::new(lsns[0]),
                        segment_capacity: cap,
                        epochs,
                    })
                }),
            (any::<u64>(), any::<Option<u64>>(), any::<u64>(), s).prop_map(|(e, t, st, id)| {
                Frame::Welcome(Welcome {
                    epoch: Epoch::new(e),
                    truncate_to: t.map(Lsn::new),
                    start_lsn: Lsn::new(st),
                    leader_id: id,
                })
            }),
            (1u8..=10, any::<u64>(), any::<u64>(), ".{0,60}").prop_map(|(c, e, l, r)| {
                Frame::Reject(Reject {
                    code: RejectCode::from_u8(c).unwrap(),
                    epoch: Epoch::new(e),
                    lsn: Lsn::new(l),
                    reason: r,
                })
            }),
            (
                any::<u64>(),
                0u64..(1 << 40),
                prop::collection::vec(any::<u8>(), 0..300)
            )
                .prop_map(|(e, base, data)| {
                    Frame::Ship(Ship {
                        epoch: Epoch::new(e),
                        base: Lsn::new(base),
                        end: Lsn::new(base + data.len() as u64),
                        committed: Lsn::new(base / 2),
                        raw_len: data.len() as u32,
                        compression: Compression::None,
                        data: Bytes::from(data),
                    })
                }),
            (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(e, a, b, c)| {
                let mut v = [a, b, c];
                v.sort_unstable();
                Frame::Ack(Ack {
                    epoch: Epoch::new(e),
                    written: Lsn::new(v[2]),
                    flushed: Lsn::new(v[1]),
                    applied: Lsn::new(v[0]),
                })
            }),
            (any::<u64>(), any::<u64>(), any::<u64>(), any::<bool>()).prop_map(|(e, l, t, r)| {
                Frame::Heartbeat(Heartbeat {
                    epoch: Epoch::new(e),
                    end_lsn: Lsn::new(l),
                    committed: Lsn::new(t / 3),
                    timestamp_us: t,
                    reply_requested: r,
                })
            }),
            ("[a-z]{0,20}", "[a-z0-9]{0,20}", any::<u64>()).prop_map(|(c, n, cap)| {
                Frame::SnapshotRequest(SnapshotRequest {
                    cluster_id: c,
                    node_id: n,
                    segment_capacity: cap,
                })
            }),
            (
                any::<u64>(),
                any::<u64>(),
                any::<u64>(),
                any::<u64>(),
                any::<u64>()
            )
                .prop_map(|(e, l, b, be, n)| {
                    Frame::SnapshotHeader(SnapshotHeader {
                        epoch: Epoch::new(e),
                        lsn: Lsn::new(l),
                        base: Lsn::new(b),
                        base_epoch: Epoch::new(be),
                        len: n,
                    })
                }),
        ]
    }

    proptest! {
        #[test]
        fn ship_header_then_data_is_the_encoded_frame(f in arb_frame()) {
            if let Frame::Ship(ship) = &f {
                let mut split = BytesMut::from(&ship.encode_header().unwrap()[..]);
                split.extend_from_slice(&ship.data);
                prop_assert_eq!(split, encode(&f));
            }
        }

        #[test]
        fn round_trip(f in arb_frame()) {
            let mut b = encode(&f);
            let mut d = Decoder::new(1 << 20);
            prop_assert_eq!(d.decode(&mut b).unwrap(), Some(f));
            prop_assert!(b.is_empty());
        }

        #[test]
        fn byte_at_a_time_gives_the_same_frame(f in arb_frame()) {
            let all = encode(&f);
            let mut d = Decoder::new(1 << 20);
            let mut buf = BytesMut::new();
            let mut got = None;
            for (i, byte) in all.iter().enumerate() {
                buf.put_u8(*byte);
                let r = d.decode(&mut buf).unwrap();
                if i + 1 < all.len() {
                    prop_assert!(r.is_none());
                } else {
                    got = r;
                }
            }
            prop_assert_eq!(got, Some(f));
        }

        #[test]
        fn every_truncated_payload_is_rejected_not_misread(f in arb_frame()) {
            let all = encode(&f);
            let n = all.len() - FRAME_HEADER_LEN;
            for cut in 0..n {
                // Same header length field shortened to `cut`: the payload ends early.
                let mut b = BytesMut::from(&all[..FRAME_HEADER_LEN + cut]);
                b[4..8].copy_from_slice(&(cut as u32).to_le_bytes());
                let r = Decoder::new(1 << 20).decode(&mut b);
                // A Ship frame's data is open-ended, so a shorter one can still be well formed;
                // then its declared sizes no longer match and the decoder refuses it.
                prop_assert!(r.is_err(), "cut {} of {:?} accepted: {:?}", cut, f, r);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
            let mut b = BytesMut::from(&bytes[..]);
            let mut d = Decoder::new(1 << 16);
            while let Ok(Some(_)) = d.decode(&mut b) {}
        }
    }

    #[test]
    fn refuses_unknown_versions_kinds_and_oversized_frames_before_buffering() {
        let f = Frame::Heartbeat(Heartbeat {
            epoch: Epoch::new(1),
            end_lsn: Lsn::new(5),
            committed: Lsn::new(3),
            timestamp_us: 9,
            reply_requested: false,
        });
        let mut b = encode(&f);
        b[2] = 9;
        assert_eq!(
            Decoder::new(1024).decode(&mut b),
            Err(WireError::UnsupportedVersion { found: 9 })
        );
        let mut b = encode(&f);
        b[3] = 77;
        assert_eq!(
            Decoder::new(1024).decode(&mut b),
            Err(WireError::UnknownKind { kind: 77 })
        );
        // Only the 8-byte header of a 4 GiB frame has arrived: refused now, nothing reserved.
        let mut b = BytesMut::from(&encode(&f)[..FRAME_HEADER_LEN]);
        b[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            Decoder::new(1024).decode(&mut b),
            Err(WireError::FrameTooLarge { .. })
        ));
        assert!(b.capacity() < 1 << 20);
        let mut b = BytesMut::from(&b"GET / HTTP/1.1"[..]);
        assert!(matches!(
            Decoder::new(1024).decode(&mut b),
            Err(WireError::BadMagic { .. })
        ));
    }

    fn ship(epoch: u64, base: u64, len: usize) -> Frame {
        Frame::Ship(Ship {
            epoch: Epoch::new(epoch),
            base: Lsn::new(base),
            end: Lsn::new(base + len as u64),
            committed: Lsn::ZERO,
            raw_len: len as u32,
            compression: Compression::None,
            data: Bytes::from(vec![0u8; len]),
        })
    }

    #[test]
    fn refuses_gaps_overlaps_and_epoch_regression() {
        let mut d = Decoder::new(1 << 20);
        d.expect_lsn(Lsn::new(100));
        assert!(d.decode(&mut encode(&ship(3, 100, 50))).unwrap().is_some());
        assert_eq!(d.next_lsn(), Some(Lsn::new(150)));
        assert_eq!(
            d.clone().decode(&mut encode(&ship(3, 160, 10))),
            Err(WireError::LsnDiscontinuity {
                expected: Lsn::new(150),
                found: Lsn::new(160)
            })
        );
        assert_eq!(
            d.clone().decode(&mut encode(&ship(3, 140, 10))),
            Err(WireError::LsnDiscontinuity {
                expected: Lsn::new(150),
                found: Lsn::new(140)
            })
        );
        assert_eq!(
            d.clone().decode(&mut encode(&ship(2, 150, 10))),
            Err(WireError::EpochRegression {
                previous: Epoch::new(3),
                found: Epoch::new(2)
            })
        );
        let bad_ack = Frame::Ack(Ack {
            epoch: Epoch::new(3),
            written: Lsn::new(10),
            flushed: Lsn::new(20),
            applied: Lsn::new(0),
        });
        assert!(matches!(
            d.clone().decode(&mut encode(&bad_ack)),
            Err(WireError::InconsistentAck { .. })
        ));
        let mut lying = ship(3, 150, 10);
        if let Frame::Ship(s) = &mut lying {
            s.raw_len = 11;
        }
        assert!(matches!(
            d.decode(&mut encode(&lying)),
            Err(WireError::BadShip { .. })
        ));
    }
}
