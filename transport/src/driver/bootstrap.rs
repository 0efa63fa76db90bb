//! The follower's side of a snapshot bootstrap (see [`crate::snapshot`]): asks the
//! leader for its newest snapshot on a stream of its own, checks the header against
//! what this follower accepts, and passes the bytes to the apply thread, which restarts
//! the log and has the embedder install them.

use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, oneshot};
use walship_engine::Epoch;
#[cfg(test)]
use walship_engine::Lsn;

use super::TransportError;
use crate::snapshot::{Piece, SnapshotReader};
use crate::wire::{Decoder, Frame, SnapshotHeader, SnapshotRequest, CONTROL_FRAME_LIMIT};

/// What the apply thread is asked to do: restart the log at `header.base`, have the
/// embedder install the snapshot from `reader`, and answer on `done`.
pub(crate) struct Install {
    pub(crate) header: SnapshotHeader,
    pub(crate) reader: SnapshotReader,
    pub(crate) done: oneshot::Sender<Result<(), String>>,
}

/// Who is asking and what it accepts.
pub(crate) struct Ask<'a> {
    pub(crate) cluster_id: &'a str,
    pub(crate) node_id: &'a str,
    pub(crate) segment_capacity: u64,
    /// The highest epoch this node has seen: an older leader's snapshot is refused.
    pub(crate) seen: Epoch,
    pub(crate) max_bytes: u64,
}

/// Checks a header the leader sent.
pub(crate) fn check(h: &SnapshotHeader, ask: &Ask<'_>) -> Result<(), String> {
    let cap = ask.segment_capacity;
    if h.epoch < ask.seen {
        return Err(format!(
            "the snapshot comes from a leader of epoch {}, older than epoch {} seen here",
            h.epoch, ask.seen
        ));
    }
    if h.base_epoch > h.epoch {
        return Err(format!(
            "the snapshot's log restarts in epoch {}, after its leader's epoch {}",
            h.base_epoch, h.epoch
        ));
    }
    if h.len > ask.max_bytes {
        return Err(format!(
            "the snapshot is {} bytes, more than max_snapshot_bytes {}",
            h.len, ask.max_bytes
        ));
    }
    let in_segment =
        h.base.get() % cap == 0 && h.lsn >= h.base && h.lsn.get() - h.base.get() <= cap;
    if !in_segment {
        return Err(format!(
            "the snapshot at {} cannot restart the log at {} (segments of {cap} bytes)",
            h.lsn, h.base
        ));
    }
    Ok(())
}

/// Asks for the snapshot on a new stream of `conn`, and once its header checks out,
/// hands it to `post` (the apply thread) and feeds it the bytes as they arrive; returns
/// once the apply thread has installed it.
pub(crate) async fn fetch(
    conn: &quinn::Connection,
    peer: std::net::SocketAddr,
    ask: Ask<'_>,
    idle: std::time::Duration,
    post: impl FnOnce(Install),
) -> Result<SnapshotHeader, TransportError> {
    let conn_err = |reason: String| TransportError::Connection { peer, reason };
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| conn_err(e.to_string()))?;
    let mut out = BytesMut::new();
    Frame::SnapshotRequest(SnapshotRequest {
        cluster_id: ask.cluster_id.to_owned(),
        node_id: ask.node_id.to_owned(),
        segment_capacity: ask.segment_capacity,
    })
    .encode(&mut out)
    .map_err(|e| conn_err(format!("snapshot request: {e}")))?;
    send.write_all(&out)
        .await
        .map_err(|e| conn_err(e.to_string()))?;

    let mut decoder = Decoder::new(CONTROL_FRAME_LIMIT);
    let mut buf = BytesMut::new();
    let header = loop {
        match decoder.decode(&mut buf) {
            Ok(Some(Frame::SnapshotHeader(h))) => break h,
            Ok(Some(Frame::Reject(r))) => {
                return Err(conn_err(format!(
                    "the leader refused a snapshot ({:?}): {}",
                    r.code, r.reason
                )))
            }
            Ok(Some(f)) => {
                return Err(conn_err(format!(
                    "expected a snapshot header, got {}",
                    crate::session::follower::frame_name(&f)
                )))
            }
            Ok(None) => {}
            Err(e) => return Err(conn_err(format!("snapshot header: {e}"))),
        }
        match read_some(&mut recv, idle).await.map_err(&conn_err)? {
            Some(b) => buf.extend_from_slice(&b),
            None => {
                return Err(conn_err(
                    "the leader closed the stream before a snapshot".into(),
                ))
            }
        }
    };
    check(&header, &ask).map_err(conn_err)?;
    tracing::info!(%peer, lsn = %header.lsn, base = %header.base, len = header.len, "receiving a snapshot");
    let (tx, rx) = mpsc::channel(8);
    let (done_tx, done_rx) = oneshot::channel();
    post(Install {
        header,
        reader: SnapshotReader::new(rx),
        done: done_tx,
    });
    let pumped = pump(&mut recv, buf.freeze(), header.len, &tx, idle).await;
    let piece = match &pumped {
        Ok(()) => Piece::End,
        Err(why) => Piece::Failed(why.clone()),
    };
    // The installer may have stopped reading already (it failed); its answer says why.
    let _ = tx.send(piece).await;
    drop(tx);
    let installed = done_rx
        .await
        .unwrap_or_else(|_| Err("the apply thread stopped before installing the snapshot".into()));
    let _ = send.finish();
    pumped.map_err(&conn_err)?;
    installed.map_err(|why| conn_err(format!("installing the snapshot: {why}")))?;
    Ok(header)
}

/// Feeds `len` bytes of snapshot (starting with `first`, what followed the header) to
/// `tx`, then checks the CRC32C that follows them.
async fn pump(
    recv: &mut quinn::RecvStream,
    first: Bytes,
    len: u64,
    tx: &mpsc::Sender<Piece>,
    idle: std::time::Duration,
) -> Result<(), String> {
    let mut left = len;
    let mut crc = 0u32;
    let mut trailer = BytesMut::new();
    let mut chunk = first;
    loop {
        if left > 0 && !chunk.is_empty() {
            let n = (chunk.len() as u64).min(left) as usize;
            let data = chunk.split_to(n);
            crc = crc32c::crc32c_append(crc, &data);
            left -= n as u64;
            if tx.send(Piece::Data(data)).await.is_err() {
                return Err("the installer stopped reading".into());
            }
        }
        if left == 0 {
            trailer.extend_from_slice(&chunk);
            if trailer.len() >= 4 {
                break;
            }
        }
        chunk = match read_some(recv, idle).await? {
            Some(b) => b,
            None if left > 0 => {
                return Err(format!(
                    "the leader's stream ended {left} bytes before the snapshot's end"
                ))
            }
            None => return Err("the leader's stream ended before the snapshot's checksum".into()),
        };
    }
    if trailer.len() > 4 {
        return Err(format!(
            "{} bytes after the snapshot's checksum",
            trailer.len() - 4
        ));
    }
    let sent = u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]);
    if sent != crc {
        return Err(format!(
            "the snapshot's checksum differs: {crc:#010x} received, {sent:#010x} sent"
        ));
    }
    Ok(())
}

/// The next chunk of `recv`, `None` at its end; an error if nothing comes for `idle`.
async fn read_some(
    recv: &mut quinn::RecvStream,
    idle: std::time::Duration,
) -> Result<Option<Bytes>, String> {
    match tokio::time::timeout(idle, recv.read_chunk(1 << 16, true)).await {
        Ok(Ok(Some(c))) => Ok(Some(c.bytes)),
        Ok(Ok(None)) => Ok(None),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("the leader sent nothing for {idle:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask() -> Ask<'static> {
        Ask {
            cluster_id: "c",
            node_id: "n2",
            segment_capacity: 1 << 20,
            seen: Epoch::new(3),
            max_bytes: 1000,
        }
    }

    fn header() -> SnapshotHeader {
        SnapshotHeader {
            epoch: Epoch::new(3),
            lsn: Lsn::new(3 << 20 | 500),
            base: Lsn::new(3 << 20),
            base_epoch: Epoch::new(2),
            len: 10,
        }
    }

    #[test]
    fn headers_a_follower_must_refuse() {
        assert_eq!(check(&header(), &ask()), Ok(()));
        let bad = [
            SnapshotHeader {
                epoch: Epoch::new(2),
                ..header()
            },
            SnapshotHeader {
                base_epoch: Epoch::new(4),
                ..header()
            },
            SnapshotHeader {
                len: 1001,
                ..header()
            },
            SnapshotHeader {
                base: Lsn::new(3 << 20 | 1),
                ..header()
            },
            SnapshotHeader {
                base: Lsn::new(1 << 20),
                ..header()
            },
            SnapshotHeader {
                lsn: Lsn::new(5),
                ..header()
            },
        ];
        for h in bad {
            assert!(check(&h, &ask()).is_err(), "{h:?} accepted");
        }
    }
}
