//! Compressed frames shared by a leader's sessions: a span of log that several followers
//! need is compressed once, by the first session that gathers it, and the others ship
//! the same bytes. With two followers at zstd level 1 that halves the leader's
//! compression work (the `replication` benchmark's 2-follower rows).
//!
//! An entry is found only by the same span *and* the same raw bytes (compared, not
//! hashed), so a log rewritten under the same LSNs (a truncation) can never ship a stale
//! frame. A session that finds the frame still compressing waits for it; if the
//! compressing session goes away first, the waiter ships the frame raw. The cache holds
//! the most recent [`CAPACITY`] frames, raw bytes included; a follower that falls
//! further behind compresses for itself.
//!
//! Sessions gather frames that never cross a multiple of the frame size
//! ([`next_line`]), so followers that start at different positions cut the same frames
//! from the first such line on.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};

use bytes::Bytes;
use tokio::sync::watch;
use walship_engine::Lsn;

use super::pipeline::Span;
use crate::wire::Compression;

/// Frames kept: a few windows' worth for two followers streaming in step.
pub(super) const CAPACITY: usize = 32;

/// A frame as shipped: how it is encoded, and its bytes.
pub(super) type Encoding = (Compression, Bytes);

/// The frame's encoding, once its compressor has published it (`None` until then).
pub(super) type Pending = watch::Receiver<Option<Encoding>>;

/// What a session does with a frame it gathered.
pub(super) enum Lookup {
    /// Compressed already: ship this.
    Ready(Encoding),
    /// Another session is compressing it: wait for that.
    Wait(Pending),
    /// Nobody has it: compress it and publish the result here.
    Compress(watch::Sender<Option<Encoding>>),
}

struct Entry {
    span: Span,
    raw: Bytes,
    value: Pending,
}

/// See the [module docs](self).
#[derive(Default)]
pub(super) struct FrameCache {
    entries: Mutex<VecDeque<Entry>>,
}

impl FrameCache {
    /// What to do with `raw`, the bytes of `span`.
    pub(super) fn lookup(&self, span: Span, raw: &Bytes) -> Lookup {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(i) = entries.iter().position(|e| e.span == span && e.raw == *raw) {
            let e = &entries[i];
            if let Some(v) = e.value.borrow().clone() {
                return Lookup::Ready(v);
            }
            if e.value.has_changed().is_ok() {
                return Lookup::Wait(e.value.clone());
            }
            // Its compressor went away without publishing: this session takes over.
            entries.remove(i);
        }
        let (tx, rx) = watch::channel(None);
        if entries.len() >= CAPACITY {
            entries.pop_front();
        }
        entries.push_back(Entry {
            span,
            raw: raw.clone(),
            value: rx,
        });
        Lookup::Compress(tx)
    }
}

/// The first multiple of `frame_bytes` above `at`: a frame starting at `at` ends at the
/// last batch that ends by then (or holds one batch, if that batch crosses it).
pub(super) fn next_line(at: Lsn, frame_bytes: u64) -> Lsn {
    let f = frame_bytes.max(1);
    Lsn::new((at.get() / f).saturating_add(1).saturating_mul(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(base: u64, end: u64) -> Span {
        Span {
            base: Lsn::new(base),
            end: Lsn::new(end),
            raw_len: (end - base) as u32,
        }
    }

    #[test]
    fn a_frame_is_compressed_once_and_shared() {
        let c = FrameCache::default();
        let raw = Bytes::from_static(b"0123456789");
        let Lookup::Compress(tx) = c.lookup(span(0, 10), &raw) else {
            panic!("the first session compresses");
        };
        let Lookup::Wait(mut rx) = c.lookup(span(0, 10), &raw) else {
            panic!("the second waits while it compresses");
        };
        tx.send_replace(Some((Compression::None, raw.clone())));
        assert!(rx.borrow_and_update().is_some());
        assert!(matches!(c.lookup(span(0, 10), &raw), Lookup::Ready(_)));
    }

    #[test]
    fn other_bytes_under_the_same_span_are_not_shared() {
        let c = FrameCache::default();
        let a = Bytes::from_static(b"0123456789");
        let b = Bytes::from_static(b"9876543210");
        let Lookup::Compress(tx) = c.lookup(span(0, 10), &a) else {
            panic!("compress");
        };
        tx.send_replace(Some((Compression::None, a.clone())));
        assert!(matches!(c.lookup(span(0, 10), &b), Lookup::Compress(_)));
    }

    #[test]
    fn a_compressor_that_went_away_is_replaced() {
        let c = FrameCache::default();
        let raw = Bytes::from_static(b"abc");
        let Lookup::Compress(tx) = c.lookup(span(0, 3), &raw) else {
            panic!("compress");
        };
        let Lookup::Wait(rx) = c.lookup(span(0, 3), &raw) else {
            panic!("wait");
        };
        drop(tx);
        assert!(rx.has_changed().is_err(), "the waiter learns it");
        assert!(matches!(c.lookup(span(0, 3), &raw), Lookup::Compress(_)));
    }

    #[test]
    fn the_oldest_frames_are_dropped() {
        let c = FrameCache::default();
        let raw = Bytes::from_static(b"x");
        let mut senders = Vec::new();
        for i in 0..=CAPACITY as u64 {
            if let Lookup::Compress(tx) = c.lookup(span(i, i + 1), &raw) {
                tx.send_replace(Some((Compression::None, raw.clone())));
                senders.push(tx);
            }
        }
        assert!(matches!(c.lookup(span(0, 1), &raw), Lookup::Compress(_)));
        assert!(matches!(
            c.lookup(span(CAPACITY as u64, CAPACITY as u64 + 1), &raw),
            Lookup::Ready(_)
        ));
    }

    #[test]
    fn lines_are_multiples_of_the_frame_size() {
        assert_eq!(next_line(Lsn::new(0), 100), Lsn::new(100));
        assert_eq!(next_line(Lsn::new(99), 100), Lsn::new(100));
        assert_eq!(next_line(Lsn::new(100), 100), Lsn::new(200));
        // No overflow at the end of the LSN space.
        assert!(next_line(Lsn::new(u64::MAX - 1), 100) >= Lsn::new(u64::MAX - 1));
    }
}
