//! The leader's registry of followers, without I/O: which sessions are current, what each
//! follower acknowledged, the sync quorum, retention slots and lag.
//!
//! Inputs are method calls (a follower accepted, an ack, a frame shipped, caught up, a
//! session ended, an upkeep tick with the log's end, a slot dropped); outputs are
//! [`Effect`]s pulled with [`poll_effect`](Registry::poll_effect): move the log's
//! retention floor, raise the remote watermarks to the quorum's positions, save the slot
//! file. The driver carries them out — the floor and the watermarks at once, under the
//! same lock (a new slot must hold the log before the embedder can checkpoint past it),
//! the save afterwards, off the lock.
//!
//! Rules kept here:
//! - a session counts only while it is the follower's newest (a reconnect supersedes);
//! - a follower counts for the quorum only once it streams (caught up), as PostgreSQL
//!   counts a standby for sync only then;
//! - a slot further behind the end than `max_retained_bytes` is lost for good, and its
//!   session is told to end;
//! - the leadership is **confirmed** once `k` of the policy's standbys have been accepted
//!   in it ([`confirmed`](Registry::confirmed)). Until then each session checks that its
//!   follower holds no written record the leader lacks, and the leader yields if one does
//!   (`LeaderSession`, [`LogView::confirmed`](super::leader::LogView::confirmed)). Those `k`
//!   followers and the leader are a majority that has turned to this epoch, so no older
//!   leader can acknowledge anything after it, and each older acknowledgement is on one
//!   of them, hence here: from then on a follower's divergent tail may be cut.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use walship_engine::Lsn;

use crate::lag::LagTracker;
use crate::quorum::{PolicyError, Progress, QuorumTracker, SyncPolicy};
use crate::slots::{SaveJob, Slots};
use crate::status::{FollowerInfo, StreamState};

/// A session of one follower, as the registry numbers them.
pub type SessionId = u64;

/// What the driver must do for the registry.
#[derive(Debug)]
pub enum Effect {
    /// Keep the log from this position on (`None`: no slot holds anything).
    RetentionFloor(Option<Lsn>),
    /// The sync quorum has these positions: raise the remote watermarks to them.
    Quorum(Progress),
    /// Write the slot file (off the lock; call [`Registry::save_failed`] if it fails).
    Save(SaveJob),
    /// The leadership is confirmed (once per registry): `k` standbys were accepted in it.
    Confirmed,
}

/// Why the registry wants a session to end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// A newer session of the same follower replaced it.
    Superseded,
    /// The follower's slot was lost, for this reason.
    SlotLost(String),
}

#[derive(Debug, Default)]
struct Entry {
    addr: Option<SocketAddr>,
    session: SessionId,
    state: Option<StreamState>,
    sent: Lsn,
    acked: Progress,
    lag: LagTracker,
    bytes_raw: u64,
    bytes_wire: u64,
    frames: u64,
    last_error: Option<String>,
    kick: Option<String>,
    /// The path's MTU and round-trip time, as the connection last reported them.
    path: Option<(u16, Duration)>,
}

/// See the [module docs](self).
#[derive(Debug)]
pub struct Registry {
    quorum: QuorumTracker,
    slots: Slots,
    followers: BTreeMap<String, Entry>,
    lost: Arc<BTreeMap<String, String>>,
    next_session: SessionId,
    max_retained_bytes: u64,
    effects: VecDeque<Effect>,
    /// The standbys accepted in this leadership, until `k` confirm it.
    confirmers: std::collections::BTreeSet<String>,
    confirmed: bool,
}

impl Registry {
    /// A registry for `sync`, with the slots kept so far.
    ///
    /// # Errors
    /// The policy cannot be satisfied.
    pub fn new(
        sync: SyncPolicy,
        slots: Slots,
        max_retained_bytes: u64,
    ) -> Result<Registry, PolicyError> {
        let lost = Arc::new(slots.lost(max_retained_bytes));
        Ok(Registry {
            quorum: QuorumTracker::new(sync)?,
            slots,
            followers: BTreeMap::new(),
            lost,
            next_session: 0,
            max_retained_bytes,
            effects: VecDeque::new(),
            confirmers: std::collections::BTreeSet::new(),
            confirmed: false,
        })
    }

    /// The next effect to carry out.
    pub fn poll_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    /// Whether `k` of the policy's standbys have been accepted in this leadership (see the
    /// [module docs](self)). Never goes back.
    pub fn confirmed(&self) -> bool {
        self.confirmed
    }

    /// Followers whose slot was lost, with the reason (refused on `Hello`).
    pub fn lost_slots(&self) -> Arc<BTreeMap<String, String>> {
        Arc::clone(&self.lost)
    }

    /// The sync policy.
    pub fn policy(&self) -> &SyncPolicy {
        self.quorum.policy()
    }

    fn floor(&mut self) {
        self.effects
            .push_back(Effect::RetentionFloor(self.slots.floor()));
    }

    fn publish_quorum(&mut self) {
        let mut q = self.quorum.quorum();
        if walship_engine::mutation::active(walship_engine::mutation::REMOTE_FLUSH_ON_WRITTEN) {
            q.flushed = q.written;
        }
        self.effects.push_back(Effect::Quorum(q));
    }

    fn save(&mut self) {
        if let Some(job) = self.slots.take_save() {
            self.effects.push_back(Effect::Save(job));
        }
    }

    /// `node` was accepted from `addr` and is streamed from `start`, having written and
    /// flushed `acked` (its `Hello`'s word, at most `start`); returns its new session,
    /// which supersedes any earlier one. Its slot holds the log from `start` at once.
    ///
    /// Until it acknowledges more, the quorum counts it for `acked`, not for `start`: a
    /// reconnecting follower's end may hold bytes it wrote but never flushed, and counting
    /// them would confirm `RemoteFlush` commits that are on no follower's disk (found by
    /// the cluster simulator, issue 12).
    pub fn accept(
        &mut self,
        node: &str,
        addr: SocketAddr,
        start: Lsn,
        acked: Progress,
    ) -> SessionId {
        self.next_session += 1;
        let id = self.next_session;
        self.slots.accept(node, start);
        self.floor();
        let e = self.followers.entry(node.to_string()).or_default();
        *e = Entry {
            addr: Some(addr),
            session: id,
            state: Some(StreamState::Catchup),
            sent: start,
            acked: Progress {
                written: acked.written.min(start),
                flushed: acked.flushed.min(acked.written).min(start),
                applied: acked.applied.min(acked.flushed).min(start),
            },
            bytes_raw: e.bytes_raw,
            bytes_wire: e.bytes_wire,
            frames: e.frames,
            ..Entry::default()
        };
        // Not streaming yet: PostgreSQL counts a standby for sync only once caught up.
        self.quorum.disconnected(node);
        if !self.confirmed && self.quorum.policy().counts(node) {
            self.confirmers.insert(node.to_string());
            if self.confirmers.len() >= self.quorum.policy().required() {
                self.confirmed = true;
                self.confirmers.clear();
                self.effects.push_back(Effect::Confirmed);
            }
        }
        id
    }

    /// `node` is being sent a snapshot and will stream from `at`: its slot holds the log
    /// from there, live again if it was lost ([`Slots::hold`](crate::slots::Slots::hold)).
    pub fn hold_for_snapshot(&mut self, node: &str, at: Lsn) {
        self.slots.hold(node, at);
        if self.lost.contains_key(node) {
            self.lost = Arc::new(self.slots.lost(self.max_retained_bytes));
        }
        self.floor();
        self.save();
    }

    /// The entry of `node` if `session` is its current one.
    fn current(&mut self, node: &str, session: SessionId) -> Option<&mut Entry> {
        self.followers
            .get_mut(node)
            .filter(|e| e.session == session)
    }

    /// `node` acknowledged `p` at `now`.
    pub fn progress(&mut self, node: &str, session: SessionId, p: Progress, now: Instant) {
        let Some(e) = self.current(node, session) else {
            return;
        };
        e.acked = p;
        e.lag.acked(p, now);
        let streaming = e.state == Some(StreamState::Streaming);
        self.slots.advance(node, p.flushed);
        if streaming {
            self.quorum.update(node, true, p);
            self.publish_quorum();
        }
    }

    /// A frame up to `end` (`raw` log bytes, `wire` on the wire) went to `node` at `now`.
    pub fn shipped(
        &mut self,
        node: &str,
        session: SessionId,
        end: Lsn,
        raw: usize,
        wire: usize,
        now: Instant,
    ) {
        if let Some(e) = self.current(node, session) {
            e.sent = end;
            e.lag.shipped(end, now);
            e.bytes_raw += raw as u64;
            e.bytes_wire += wire as u64;
            e.frames += 1;
        }
    }

    /// `node` has been sent everything there was: it streams, and counts for the quorum.
    /// Returns whether this was news.
    pub fn caught_up(&mut self, node: &str, session: SessionId) -> bool {
        let Some(e) = self.current(node, session) else {
            return false;
        };
        e.state = Some(StreamState::Streaming);
        let p = e.acked;
        self.quorum.update(node, true, p);
        self.publish_quorum();
        true
    }

    /// Why this session must end, if it must (membership is the driver's to check).
    pub fn must_end(&self, node: &str, session: SessionId) -> Option<End> {
        match self.followers.get(node) {
            Some(e) if e.session == session => e.kick.clone().map(End::SlotLost),
            _ => Some(End::Superseded),
        }
    }

    /// The session ended, with `error` if it failed.
    pub fn ended(&mut self, node: &str, session: SessionId, error: Option<String>) {
        let Some(e) = self.current(node, session) else {
            return;
        };
        e.state = Some(StreamState::Disconnected);
        e.addr = None;
        e.kick = None;
        e.path = None;
        e.last_error = error;
        self.quorum.disconnected(node);
    }

    /// Upkeep with the log ending at `end`: loses slots too far behind (their sessions
    /// are told to end), moves the floor, saves what changed. Returns the followers whose
    /// slot was lost now.
    pub fn maintain(&mut self, end: Lsn) -> Vec<String> {
        let lost = self.slots.enforce_cap(end, self.max_retained_bytes);
        for node in &lost {
            let why = format!(
                "retention slot lost: more than max_retained_bytes = {} behind",
                self.max_retained_bytes
            );
            if let Some(e) = self.followers.get_mut(node) {
                e.kick = Some(why);
            }
        }
        if !lost.is_empty() {
            self.lost = Arc::new(self.slots.lost(self.max_retained_bytes));
        }
        self.floor();
        self.save();
        lost
    }

    /// `node`'s connection reports a path MTU of `mtu` bytes and a round-trip time of
    /// `rtt` (shown by [`followers`](Self::followers) while it is connected).
    pub fn path(&mut self, node: &str, session: SessionId, mtu: u16, rtt: Duration) {
        if let Some(e) = self.current(node, session) {
            e.path = Some((mtu, rtt));
        }
    }

    /// Drops `node`'s slot; returns whether it had one.
    pub fn drop_slot(&mut self, node: &str) -> bool {
        let had = self.slots.drop_slot(node);
        self.lost = Arc::new(self.slots.lost(self.max_retained_bytes));
        self.floor();
        self.save();
        had
    }

    /// A [`Effect::Save`] could not be written: the next upkeep saves again.
    pub fn save_failed(&mut self) {
        self.slots.mark_dirty();
    }

    /// What `node` has flushed, while it is connected.
    pub fn flushed_by(&self, node: &str) -> Option<Lsn> {
        self.followers
            .get(node)
            .filter(|e| e.addr.is_some())
            .map(|e| e.acked.flushed)
    }

    /// How many followers have flushed `lsn`, each counted as
    /// [`followers`](Self::followers) reports its `flush` (its acknowledgement, or its
    /// slot's restart point), without building that report.
    pub fn flushed_count(&self, lsn: Lsn) -> usize {
        let restart = |n: &str| self.slots.get(n).map_or(Lsn::ZERO, |s| s.restart);
        let connected = self
            .followers
            .iter()
            .filter(|(n, e)| e.acked.flushed.max(restart(n)) >= lsn)
            .count();
        let slot_only = self
            .slots
            .iter()
            .filter(|(n, s)| !self.followers.contains_key(*n) && s.restart >= lsn)
            .count();
        connected + slot_only
    }

    /// Every follower that connected since start or holds a slot, as
    /// `pg_stat_replication` shows them, against the log's `end`.
    pub fn followers(&self, end: Lsn) -> Vec<FollowerInfo> {
        let mut names: Vec<&str> = self.followers.keys().map(String::as_str).collect();
        for (n, _) in self.slots.iter() {
            if !self.followers.contains_key(n) {
                names.push(n);
            }
        }
        names
            .into_iter()
            .map(|n| {
                let e = self.followers.get(n);
                let slot = self.slots.get(n);
                let acked = e.map(|e| e.acked).unwrap_or_default();
                let write = acked.written.max(slot.map_or(Lsn::ZERO, |s| s.restart));
                FollowerInfo {
                    node_id: n.to_string(),
                    addr: e.and_then(|e| e.addr),
                    state: e.and_then(|e| e.state).unwrap_or(StreamState::Disconnected),
                    sync_state: self.quorum.sync_state(n),
                    sent: e.map_or(write, |e| e.sent),
                    write,
                    flush: acked.flushed.max(slot.map_or(Lsn::ZERO, |s| s.restart)),
                    apply: acked.applied,
                    write_lag_bytes: end.bytes_after(write),
                    flush_lag_bytes: end.bytes_after(acked.flushed),
                    apply_lag_bytes: end.bytes_after(acked.applied),
                    lag: e.map(|e| e.lag.lags()).unwrap_or_default(),
                    bytes_raw: e.map_or(0, |e| e.bytes_raw),
                    bytes_wire: e.map_or(0, |e| e.bytes_wire),
                    frames: e.map_or(0, |e| e.frames),
                    slot_restart: slot.map(|s| s.restart),
                    slot_lost: slot.is_some_and(|s| s.lost_at.is_some()),
                    last_error: e.and_then(|e| e.last_error.clone()),
                    path_mtu: e.and_then(|e| e.path).map(|p| p.0),
                    rtt: e.and_then(|e| e.path).map(|p| p.1),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAP: u64 = 1 << 20;

    fn registry(dir: &std::path::Path) -> Registry {
        Registry::new(
            SyncPolicy::Any {
                k: 1,
                of: vec!["*".into()],
            },
            Slots::load(&walship_engine::storage::os(), dir, CAP).unwrap(),
            4 * CAP,
        )
        .unwrap()
    }

    fn effects(r: &mut Registry) -> Vec<Effect> {
        std::iter::from_fn(|| r.poll_effect()).collect()
    }

    fn p(w: u64, f: u64, a: u64) -> Progress {
        Progress {
            written: Lsn::new(w),
            flushed: Lsn::new(f),
            applied: Lsn::new(a),
        }
    }

    fn addr() -> SocketAddr {
        "127.0.0.1:1".parse().unwrap()
    }

    #[test]
    fn a_leadership_is_confirmed_by_k_distinct_listed_standbys() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Registry::new(
            SyncPolicy::Any {
                k: 2,
                of: vec!["n2".into(), "n3".into(), "n4".into()],
            },
            Slots::load(&walship_engine::storage::os(), dir.path(), CAP).unwrap(),
            4 * CAP,
        )
        .unwrap();
        let confirmed =
            |r: &mut Registry| effects(r).iter().any(|e| matches!(e, Effect::Confirmed));
        // An unlisted follower, and the same follower twice, do not count twice.
        r.accept("n9", addr(), Lsn::new(64), p(64, 64, 0));
        r.accept("n2", addr(), Lsn::new(64), p(64, 64, 0));
        r.accept("n2", addr(), Lsn::new(64), p(64, 64, 0));
        assert!(!confirmed(&mut r) && !r.confirmed());
        r.accept("n3", addr(), Lsn::new(64), p(64, 64, 0));
        assert!(confirmed(&mut r) && r.confirmed());
        r.accept("n4", addr(), Lsn::new(64), p(64, 64, 0));
        assert!(!confirmed(&mut r), "confirmed once");
    }

    #[test]
    fn a_follower_confirms_only_once_it_streams_and_only_in_its_newest_session() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = registry(dir.path());
        let now = Instant::now();
        assert!(!r.confirmed());
        let s1 = r.accept("n2", addr(), Lsn::new(64), p(64, 64, 0));
        // Its slot holds the log at once; with `ANY 1`, one accepted follower confirms the
        // leadership (once).
        assert!(matches!(
            effects(&mut r).as_slice(),
            [Effect::RetentionFloor(Some(l)), Effect::Confirmed] if *l == Lsn::new(64)
        ));
        assert!(r.confirmed());
        // Catching up, its acks move its slot but confirm nothing.
        r.progress("n2", s1, p(500, 400, 0), now);
        assert!(effects(&mut r).is_empty());
        assert!(r.caught_up("n2", s1));
        assert!(matches!(
            effects(&mut r).as_slice(),
            [Effect::Quorum(q)] if *q == p(500, 400, 0)
        ));
        r.progress("n2", s1, p(900, 900, 800), now);
        assert!(
            matches!(effects(&mut r).as_slice(), [Effect::Quorum(q)] if *q == p(900, 900, 800))
        );
        // A reconnect supersedes: the old session's acks count for nothing.
        let s2 = r.accept("n2", addr(), Lsn::new(900), p(900, 900, 0));
        let _ = effects(&mut r);
        assert_eq!(r.must_end("n2", s1), Some(End::Superseded));
        assert_eq!(r.must_end("n2", s2), None);
        r.progress("n2", s1, p(5000, 5000, 5000), now);
        assert!(effects(&mut r).is_empty());
        r.ended("n2", s1, Some("old".into()));
        assert_eq!(
            r.flushed_by("n2"),
            Some(Lsn::new(900)),
            "the new session is untouched"
        );
        r.ended("n2", s2, None);
        assert_eq!(r.flushed_by("n2"), None);
    }

    #[test]
    fn a_reconnecting_follower_counts_only_for_what_it_flushed() {
        // Its Hello: the log ends at 900, but only 500 of it is flushed. Caught up at
        // once (nothing more to send), it must not confirm RemoteFlush past 500.
        let dir = tempfile::tempdir().unwrap();
        let mut r = registry(dir.path());
        let s = r.accept("n2", addr(), Lsn::new(900), p(900, 500, 0));
        assert!(r.caught_up("n2", s));
        let quorum: Vec<_> = effects(&mut r)
            .into_iter()
            .filter_map(|e| match e {
                Effect::Quorum(q) => Some(q),
                _ => None,
            })
            .collect();
        assert_eq!(quorum, vec![p(900, 500, 0)], "written 900, flushed 500");
        assert_eq!(r.flushed_by("n2"), Some(Lsn::new(500)));
        // A Hello claiming more than its end is clipped to where it streams from.
        let s = r.accept("n2", addr(), Lsn::new(900), p(2000, 2000, 2000));
        assert!(r.caught_up("n2", s));
        assert_eq!(r.flushed_by("n2"), Some(Lsn::new(900)));
    }

    #[test]
    fn a_slot_too_far_behind_is_lost_its_session_told_and_it_is_saved() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = registry(dir.path());
        let s = r.accept("n3", addr(), Lsn::new(64), p(64, 64, 0));
        let _ = effects(&mut r);
        assert!(r.maintain(Lsn::new(2 * CAP)).is_empty());
        assert!(effects(&mut r).iter().any(|e| matches!(e, Effect::Save(_))));
        assert_eq!(r.maintain(Lsn::new(10 * CAP)), vec!["n3".to_string()]);
        assert!(
            matches!(r.must_end("n3", s), Some(End::SlotLost(why)) if why.contains("max_retained_bytes"))
        );
        assert!(r.lost_slots().contains_key("n3"));
        let floors: Vec<_> = effects(&mut r)
            .into_iter()
            .filter_map(|e| match e {
                Effect::RetentionFloor(f) => Some(f),
                _ => None,
            })
            .collect();
        assert_eq!(floors, vec![None], "a lost slot holds nothing");
        assert!(r.drop_slot("n3"));
        assert!(!r.lost_slots().contains_key("n3"));
        assert!(!r.drop_slot("n3"));
    }

    #[test]
    fn the_path_is_shown_while_its_session_is_connected() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = registry(dir.path());
        let old = r.accept("n2", addr(), Lsn::new(64), p(64, 64, 0));
        let s = r.accept("n2", addr(), Lsn::new(64), p(64, 64, 0));
        let row = |r: &Registry| r.followers(Lsn::new(64)).remove(0);
        assert_eq!((row(&r).path_mtu, row(&r).rtt), (None, None));
        r.path("n2", old, 1200, Duration::from_millis(9));
        assert_eq!(
            row(&r).path_mtu,
            None,
            "a superseded session reports nothing"
        );
        r.path("n2", s, 8952, Duration::from_micros(250));
        assert_eq!(
            (row(&r).path_mtu, row(&r).rtt),
            (Some(8952), Some(Duration::from_micros(250)))
        );
        r.ended("n2", s, None);
        assert_eq!((row(&r).path_mtu, row(&r).rtt), (None, None));
    }

    #[test]
    fn a_snapshot_sent_makes_a_lost_slot_hold_the_log_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = registry(dir.path());
        r.accept("n3", addr(), Lsn::new(64), p(64, 64, 0));
        assert_eq!(r.maintain(Lsn::new(10 * CAP)), vec!["n3".to_string()]);
        let _ = effects(&mut r);
        r.hold_for_snapshot("n3", Lsn::new(9 * CAP));
        assert!(!r.lost_slots().contains_key("n3"), "no longer refused");
        let e = effects(&mut r);
        assert!(e
            .iter()
            .any(|e| matches!(e, Effect::RetentionFloor(Some(f)) if *f == Lsn::new(9 * CAP))));
        assert!(e.iter().any(|e| matches!(e, Effect::Save(_))), "and saved");
    }
}
