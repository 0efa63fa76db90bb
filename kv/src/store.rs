//! The key space: the state machine every node reaches by applying the log in order.
//!
//! Keys are ordered by (CRC32C of the key, key), so that `SCAN` has a numeric cursor
//! that stays valid while keys come and go (every key present for a whole scan is
//! returned, as Redis promises), with the same order on every node; lookups are
//! `O(log n)` on mostly-integer comparisons, and colliding hashes cost nothing more
//! than a key comparison (no flooding to fear). A second index orders keys by expiry
//! time, so the leader finds every key that is due without sampling.
//!
//! Applying is pure: a record's ops decide everything ([`crate::record`]); reading takes
//! the caller's `now`, and a key past its expiry reads as absent on every node before
//! the leader's `Expired` op removes it, as Redis replicas do.
//!
//! Both indexes are persistent B-trees (`imbl`): a clone costs O(1) and shares every
//! node until one side changes it, so a snapshot ([`crate::snapshot`]) copies the key
//! space under the write lock in constant time and writes it out while writes go on,
//! as Redis's forked child does with the kernel's copy-on-write pages.

use std::ops::Bound;

use bytes::Bytes;
use imbl::{OrdMap, OrdSet};
use walship_engine::Lsn;

use crate::hlc::Timestamp;
use crate::record::{Op, WriteRecord};

/// Where a key sits in the key space's order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Slot {
    hash: u32,
    key: Bytes,
}

impl Slot {
    fn of(key: &Bytes) -> Slot {
        Slot {
            hash: crc32c::crc32c(key),
            key: key.clone(),
        }
    }
}

/// A key's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The value.
    pub value: Bytes,
    /// When it expires, ms since the Unix epoch.
    pub expire_at: Option<u64>,
    /// The timestamp of the write that set it.
    pub ts: Timestamp,
}

impl Entry {
    /// Whether it has expired at `now_ms`.
    pub fn expired(&self, now_ms: u64) -> bool {
        self.expire_at.is_some_and(|t| t <= now_ms)
    }
}

/// What `op` leaves of a key that held `prev`: its entry, or `None` if it is gone.
pub fn effect(prev: Option<&Entry>, op: &Op, ts: Timestamp) -> Option<Entry> {
    match op {
        Op::Set {
            value, expire_at, ..
        } => Some(Entry {
            value: value.clone(),
            expire_at: *expire_at,
            ts,
        }),
        Op::Del { .. } | Op::Expired { .. } => None,
        Op::Expire { at, .. } => prev.map(|e| Entry {
            expire_at: Some(*at),
            ts,
            ..e.clone()
        }),
        Op::Persist { .. } => prev.map(|e| Entry {
            expire_at: None,
            ts,
            ..e.clone()
        }),
    }
}

/// The key space, and the log position it reflects.
#[derive(Debug, Default, Clone)]
pub struct Store {
    keys: OrdMap<Slot, Entry>,
    by_expiry: OrdSet<(u64, Slot)>,
    expired: u64,
    applied: Lsn,
}

/// One page of a [`Store::scan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// The cursor to pass next; 0 when the scan is complete.
    pub cursor: u64,
    /// The keys of this page.
    pub keys: Vec<Bytes>,
}

impl Store {
    /// An empty key space.
    pub fn new() -> Store {
        Store::default()
    }

    /// The entry of `key`, expired or not.
    pub fn entry(&self, key: &Bytes) -> Option<&Entry> {
        self.keys.get(&Slot::of(key))
    }

    /// The entry of `key` unless it has expired at `now_ms`.
    pub fn live(&self, key: &Bytes, now_ms: u64) -> Option<&Entry> {
        self.entry(key).filter(|e| !e.expired(now_ms))
    }

    /// Keys held, expired or not yet removed (as Redis's `DBSIZE`).
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Keys with an expiry.
    pub fn volatile(&self) -> usize {
        self.by_expiry.len()
    }

    /// Keys removed by `Expired` ops so far.
    pub fn expired_count(&self) -> u64 {
        self.expired
    }

    /// The end of the last record applied: the state is the log's up to here.
    pub fn applied(&self) -> Lsn {
        self.applied
    }

    /// Records that the state now reflects the log up to `lsn` (the end of the record
    /// just applied).
    pub fn set_applied(&mut self, lsn: Lsn) {
        self.applied = lsn;
    }

    /// Every entry, in the key space's order: what a snapshot holds.
    pub fn entries(&self) -> impl Iterator<Item = (&Bytes, &Entry)> {
        self.keys.iter().map(|(s, e)| (&s.key, e))
    }

    /// A key space restored from a snapshot: its `entries` in the key space's order (as
    /// [`entries`](Store::entries) gives them), the count of keys expired before it, and
    /// the position it reflects.
    ///
    /// # Errors
    /// The index of the first entry out of order or repeated: the entries did not come
    /// from a key space.
    pub fn restore(
        entries: impl IntoIterator<Item = (Bytes, Entry)>,
        expired: u64,
        applied: Lsn,
    ) -> Result<Store, usize> {
        let mut s = Store {
            expired,
            applied,
            ..Store::default()
        };
        let mut last: Option<Slot> = None;
        for (i, (key, e)) in entries.into_iter().enumerate() {
            let slot = Slot::of(&key);
            if last.as_ref().is_some_and(|l| *l >= slot) {
                return Err(i);
            }
            if let Some(at) = e.expire_at {
                s.by_expiry.insert((at, slot.clone()));
            }
            s.keys.insert(slot.clone(), e);
            last = Some(slot);
        }
        Ok(s)
    }

    /// Applies a record's ops in order.
    pub fn apply(&mut self, record: &WriteRecord) {
        for op in &record.ops {
            self.apply_op(op, record.ts);
        }
    }

    /// Applies one op.
    pub fn apply_op(&mut self, op: &Op, ts: Timestamp) {
        let slot = Slot::of(op.key());
        let prev = self.keys.get(&slot);
        let next = effect(prev, op, ts);
        if let Some(at) = prev.and_then(|e| e.expire_at) {
            self.by_expiry.remove(&(at, slot.clone()));
        }
        if matches!(op, Op::Expired { .. }) && prev.is_some() {
            self.expired += 1;
        }
        match next {
            Some(e) => {
                if let Some(at) = e.expire_at {
                    self.by_expiry.insert((at, slot.clone()));
                }
                self.keys.insert(slot, e);
            }
            None => {
                self.keys.remove(&slot);
            }
        }
    }

    /// Up to `limit` keys that have expired at `now_ms`, soonest first: what the leader
    /// logs `Expired` ops for.
    pub fn due(&self, now_ms: u64, limit: usize) -> Vec<Bytes> {
        self.by_expiry
            .iter()
            .take_while(|(at, _)| *at <= now_ms)
            .take(limit)
            .map(|(_, s)| s.key.clone())
            .collect()
    }

    /// One page of a scan from `cursor` (0 starts one): about `count` keys, live at
    /// `now_ms`, that `keep` accepts. Every key held for the whole scan is returned once;
    /// keys added or removed meanwhile may or may not be (Redis's `SCAN` guarantee).
    pub fn scan(
        &self,
        cursor: u64,
        count: usize,
        now_ms: u64,
        mut keep: impl FnMut(&Bytes) -> bool,
    ) -> Page {
        // The cursor is the hash to resume from: all keys sharing a hash go in one page,
        // so none is returned twice or skipped.
        let Ok(from) = u32::try_from(cursor) else {
            return Page {
                cursor: 0,
                keys: Vec::new(),
            };
        };
        let start = Slot {
            hash: from,
            key: Bytes::new(),
        };
        let mut keys = Vec::new();
        let mut last_hash = None;
        let range = self.keys.range((Bound::Included(start), Bound::Unbounded));
        for (visited, (slot, entry)) in range.enumerate() {
            if visited >= count.max(1) && last_hash != Some(slot.hash) {
                return Page {
                    cursor: u64::from(slot.hash),
                    keys,
                };
            }
            last_hash = Some(slot.hash);
            if !entry.expired(now_ms) && keep(&slot.key) {
                keys.push(slot.key.clone());
            }
        }
        Page { cursor: 0, keys }
    }

    /// Every live key `keep` accepts (`KEYS`).
    pub fn keys(&self, now_ms: u64, mut keep: impl FnMut(&Bytes) -> bool) -> Vec<Bytes> {
        self.keys
            .iter()
            .filter(|(s, e)| !e.expired(now_ms) && keep(&s.key))
            .map(|(s, _)| s.key.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn set(k: &str, v: &str, expire_at: Option<u64>) -> Op {
        Op::Set {
            key: b(k),
            value: b(v),
            expire_at,
        }
    }

    #[test]
    fn ops_apply_and_expiry_is_indexed() {
        let mut s = Store::new();
        let ts = Timestamp::new(1, 0);
        s.apply_op(&set("a", "1", Some(100)), ts);
        s.apply_op(&set("b", "2", None), ts);
        s.apply_op(&set("c", "3", Some(50)), ts);
        assert_eq!(s.volatile(), 2);
        assert_eq!(s.due(99, 10), vec![b("c")]);
        assert_eq!(s.live(&b("c"), 50), None);
        assert_eq!(s.live(&b("c"), 49).map(|e| e.value.clone()), Some(b("3")));
        s.apply_op(&Op::Persist { key: b("a") }, ts);
        s.apply_op(
            &Op::Expire {
                key: b("b"),
                at: 10,
            },
            ts,
        );
        assert_eq!(s.due(1000, 10), vec![b("b"), b("c")]);
        s.apply_op(&Op::Expired { key: b("c") }, ts);
        s.apply_op(&Op::Del { key: b("b") }, ts);
        assert_eq!((s.len(), s.volatile(), s.expired_count()), (1, 0, 1));
        // Expiring or persisting a missing key does nothing.
        s.apply_op(
            &Op::Expire {
                key: b("zz"),
                at: 1,
            },
            ts,
        );
        s.apply_op(&Op::Persist { key: b("zz") }, ts);
        assert_eq!(s.len(), 1);
    }

    /// A full scan returns every key exactly once, though keys are deleted and added
    /// between its pages.
    #[test]
    fn a_scan_returns_every_key_held_throughout_exactly_once() {
        let mut s = Store::new();
        let ts = Timestamp::new(1, 0);
        for i in 0..2000 {
            s.apply_op(&set(&format!("key:{i}"), "v", None), ts);
        }
        let mut seen = std::collections::BTreeMap::new();
        let mut cursor = 0;
        let mut pages = 0;
        loop {
            let p = s.scan(cursor, 10, 0, |_| true);
            for k in p.keys {
                *seen.entry(k).or_insert(0) += 1;
            }
            pages += 1;
            // Churn: keys 0..1000 stay; others come and go.
            s.apply_op(
                &Op::Del {
                    key: b(&format!("key:{}", 1000 + pages)),
                },
                ts,
            );
            s.apply_op(&set(&format!("new:{pages}"), "v", None), ts);
            cursor = p.cursor;
            if cursor == 0 {
                break;
            }
        }
        assert!(pages > 100, "{pages} pages");
        for i in 0..1000 {
            assert_eq!(seen.get(&b(&format!("key:{i}"))), Some(&1), "key:{i}");
        }
        assert!(seen.values().all(|&n| n == 1));
    }

    #[test]
    fn a_scan_skips_expired_keys_and_filters() {
        let mut s = Store::new();
        let ts = Timestamp::new(1, 0);
        s.apply_op(&set("a", "1", Some(5)), ts);
        s.apply_op(&set("b", "1", None), ts);
        s.apply_op(&set("c", "1", None), ts);
        let p = s.scan(0, 100, 10, |k| k != &b("c"));
        assert_eq!((p.cursor, p.keys), (0, vec![b("b")]));
        assert_eq!(s.scan(1 << 40, 10, 0, |_| true).keys, Vec::<Bytes>::new());
    }
}
