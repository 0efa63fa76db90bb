//! Leader and follower sessions driven against each other over in-memory queues, with
//! real engine logs on both sides and virtual time: the sans-I/O cores work end to end
//! without a socket.

use std::time::{Duration, Instant};

use bytes::BytesMut;
use walship_engine::{BackendKind, Durability, Epoch, Log, Lsn, Options};
use walship_transport::quorum::Progress;
use walship_transport::session::follower::{FollowerConfig, FollowerEvent, FollowerSession};
use walship_transport::session::leader::{LeaderConfig, LeaderEvent, LeaderSession, LogView};
use walship_transport::session::SessionError;
use walship_transport::wire::{Compression, RejectCode};

const CAP: u64 = 64 * 1024;

fn opts() -> Options {
    Options {
        segment_capacity: CAP,
        backend: BackendKind::Portable,
        ..Options::default()
    }
}

/// A leader's and a follower's log in temporary directories (kept alive by the first).
fn two_logs() -> ([tempfile::TempDir; 2], Log, Log) {
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let leader = Log::open(dirs[0].path(), opts()).unwrap();
    let follower = Log::open(dirs[1].path(), opts()).unwrap();
    (dirs, leader, follower)
}

fn view(log: &Log) -> LogView {
    LogView {
        start: log.start_lsn(),
        end: log.end_lsn(),
        history: log.epoch_history(),
        lost_slots: Default::default(),
        // Confirmed: these tests are about what a leader does once a quorum follows it;
        // `an_unconfirmed_leader_*` below are about before.
        confirmed: true,
    }
}

fn progress(log: &Log) -> Progress {
    let w = log.watermarks();
    Progress {
        written: w.written,
        flushed: w.flushed,
        applied: w.flushed,
    }
}

fn leader_cfg(epoch: u64) -> LeaderConfig {
    LeaderConfig {
        cluster_id: "c1".into(),
        node_id: "leader".into(),
        segment_capacity: CAP,
        epoch: Epoch::new(epoch),
        max_frame: 1 << 20,
        max_unacked_bytes: 256 * 1024,
        heartbeat_interval: Duration::from_millis(100),
        idle_timeout: Duration::from_secs(5),
    }
}

fn follower_cfg() -> FollowerConfig {
    FollowerConfig {
        cluster_id: "c1".into(),
        node_id: "f1".into(),
        segment_capacity: CAP,
        max_frame: 1 << 20,
        status_interval: Duration::from_millis(200),
        idle_timeout: Duration::from_secs(5),
    }
}

/// A leader and a follower session wired together through in-memory queues. The leader
/// ships batches read from its log (uncompressed); the follower appends them with
/// `append_encoded` and reports its watermarks.
struct Pair<'a> {
    leader_log: &'a Log,
    follower_log: &'a Log,
    leader: LeaderSession,
    follower: FollowerSession,
    reader: Option<walship_engine::Reader>,
    now: Instant,
    to_follower: BytesMut,
    to_leader: BytesMut,
    reported: Option<Progress>,
    truncated: Option<Lsn>,
    /// The last `Committed` event's LSN.
    committed: Option<Lsn>,
    /// Seeded chunking: deliver a random prefix of what is in flight each step.
    rng: Option<u64>,
}

impl<'a> Pair<'a> {
    fn new(leader_log: &'a Log, follower_log: &'a Log, leader_epoch: u64) -> Pair<'a> {
        let now = Instant::now();
        Pair {
            leader: LeaderSession::new(leader_cfg(leader_epoch), now),
            follower: FollowerSession::new(
                follower_cfg(),
                follower_log.epoch_history().entries(),
                follower_log.end_lsn(),
                progress(follower_log),
                now,
            ),
            leader_log,
            follower_log,
            reader: None,
            now,
            to_follower: BytesMut::new(),
            to_leader: BytesMut::new(),
            reported: None,
            truncated: None,
            committed: None,
            rng: None,
        }
    }

    /// How many of `len` in-flight bytes to deliver this step: all, or with a seed a
    /// random amount (zero is a delay).
    fn deliver(&mut self, len: usize) -> usize {
        match self.rng.as_mut() {
            None => len,
            Some(x) => {
                *x ^= *x << 13;
                *x ^= *x >> 7;
                *x ^= *x << 17;
                match *x % 4 {
                    0 => 0,
                    1 => len,
                    _ => (*x >> 8) as usize % (len + 1),
                }
            }
        }
    }

    fn step(&mut self) -> Result<bool, SessionError> {
        let mut moved = false;
        self.now += Duration::from_millis(1);
        while let Some(ev) = self.follower.poll_event(self.now) {
            moved = true;
            match ev {
                FollowerEvent::Transmit(b) => self.to_leader.extend_from_slice(&b),
                FollowerEvent::Truncate(l) => {
                    self.follower_log.truncate_suffix(l).unwrap();
                    self.truncated = Some(l);
                }
                FollowerEvent::Append(ship) => {
                    assert_eq!(ship.compression, Compression::None);
                    self.follower_log.append_encoded(ship.data).unwrap();
                    let end = self.follower_log.end_lsn();
                    self.follower_log
                        .commit(end, Durability::Local)
                        .wait()
                        .unwrap();
                    self.follower.handle_progress(progress(self.follower_log));
                }
                FollowerEvent::Committed(l) => {
                    // Final only if this log holds the leader's bytes up to it by now.
                    assert!(l <= self.follower_log.end_lsn());
                    same_bytes_to(self.leader_log, self.follower_log, l);
                    self.committed = Some(l);
                }
                FollowerEvent::EpochSeen(_) | FollowerEvent::Streaming { .. } => {}
            }
        }
        if !self.to_leader.is_empty() {
            let n = self.deliver(self.to_leader.len());
            let bytes = self.to_leader.split_to(n);
            self.leader
                .handle_bytes(self.now, &bytes, &view(self.leader_log))?;
            moved = true;
        }
        while let Some(ev) = self.leader.poll_event() {
            moved = true;
            match ev {
                LeaderEvent::Transmit(b) => self.to_follower.extend_from_slice(&b),
                LeaderEvent::Accepted { start, .. } => {
                    self.reader = Some(self.leader_log.reader(start).unwrap())
                }
                LeaderEvent::Progress { progress, .. } => self.reported = Some(progress),
                LeaderEvent::SnapshotWanted { follower } => {
                    panic!("{follower} asked for a snapshot; these sessions never need one")
                }
            }
        }
        if let (Some(r), Some((pos, room))) = (self.reader.as_mut(), self.leader.send_window()) {
            assert_eq!(r.position(), pos);
            let mut data = BytesMut::new();
            let mut end = pos;
            while (data.len() as u64) < room.min(64 * 1024) {
                match r.try_next().unwrap() {
                    Some(b) => {
                        data.extend_from_slice(b.bytes());
                        end = b.end();
                    }
                    None => break,
                }
            }
            if !data.is_empty() {
                let raw = data.len() as u32;
                self.leader
                    .ship(self.now, pos, end, raw, Compression::None, data.freeze())?;
                moved = true;
                while let Some(ev) = self.leader.poll_event() {
                    if let LeaderEvent::Transmit(b) = ev {
                        self.to_follower.extend_from_slice(&b);
                    }
                }
            }
        }
        if !self.to_follower.is_empty() {
            let n = self.deliver(self.to_follower.len());
            let bytes = self.to_follower.split_to(n);
            self.follower.handle_bytes(self.now, &bytes)?;
            moved = true;
        }
        Ok(moved)
    }

    fn run(&mut self) -> Result<(), SessionError> {
        for _ in 0..100_000 {
            if !self.step()? {
                return Ok(());
            }
        }
        panic!("sessions did not settle (livelock)");
    }
}

fn same_bytes(a: &Log, b: &Log) {
    same_bytes_to(a, b, Lsn::new(u64::MAX));
}

/// Both logs hold the same batches up to `to` (a batch boundary in both).
fn same_bytes_to(a: &Log, b: &Log, to: Lsn) {
    let mut ra = a.reader(a.start_lsn()).unwrap();
    let mut rb = b.reader(b.start_lsn()).unwrap();
    loop {
        if ra.position() >= to && rb.position() >= to {
            return;
        }
        match (ra.try_next().unwrap(), rb.try_next().unwrap()) {
            (Some(x), Some(y)) => assert!(
                walship_engine::format::same_batch(x.bytes(), y.bytes()),
                "batch at {} differs (beyond the flush stamp each copy writes)",
                x.base()
            ),
            (None, None) => return,
            (x, y) => panic!(
                "logs differ in length: {:?} vs {:?}",
                x.map(|b| b.base()),
                y.map(|b| b.base())
            ),
        }
    }
}

#[test]
fn a_follower_catches_up_and_acknowledges_everything() {
    let (_dirs, leader, follower) = two_logs();
    leader.begin_epoch(Epoch::new(1)).unwrap();
    let mut last = Lsn::ZERO;
    for i in 0..3000u32 {
        last = leader
            .append(format!("record {i} {}", "x".repeat((i % 300) as usize)).as_bytes())
            .unwrap();
    }
    leader.commit(last, Durability::Local).wait().unwrap();
    assert!(leader.segment_count() > 3, "crosses segments");
    let mut pair = Pair::new(&leader, &follower, 1);
    pair.run().unwrap();
    assert_eq!(follower.end_lsn(), leader.end_lsn());
    same_bytes(&leader, &follower);
    let p = pair.reported.expect("progress reported");
    assert_eq!((p.written, p.flushed), (leader.end_lsn(), leader.end_lsn()));
    assert_eq!(follower.epoch_history(), leader.epoch_history());
    // Live tailing is the same path: more appends, more steps.
    let more = leader.append(b"live").unwrap();
    leader.commit(more, Durability::Local).wait().unwrap();
    pair.run().unwrap();
    assert_eq!(pair.reported.unwrap().flushed, more);
}

#[test]
fn a_divergent_follower_is_truncated_then_streams() {
    let (_dirs, leader, follower) = two_logs();
    leader.begin_epoch(Epoch::new(1)).unwrap();
    for i in 0..500u32 {
        leader.append(format!("common {i}").as_bytes()).unwrap();
    }
    leader
        .commit(leader.end_lsn(), Durability::Local)
        .wait()
        .unwrap();
    let mut pair = Pair::new(&leader, &follower, 1);
    pair.run().unwrap();
    let shared_end = follower.end_lsn();
    drop(pair);
    // The follower, as an old leader of epoch 2 cut off from the others, wrote a tail
    // nobody else has.
    follower.begin_epoch(Epoch::new(2)).unwrap();
    for i in 0..200u32 {
        follower
            .append(format!("divergent {i}").as_bytes())
            .unwrap();
    }
    follower
        .commit(follower.end_lsn(), Durability::Local)
        .wait()
        .unwrap();
    // Meanwhile the leader was elected for epoch 3 and wrote on.
    leader.begin_epoch(Epoch::new(3)).unwrap();
    // Large enough to go in several frames, each saying the whole log is committed.
    let pad = "x".repeat(1000);
    for i in 0..300u32 {
        leader
            .append(format!("new leader {i} {pad}").as_bytes())
            .unwrap();
    }
    leader
        .commit(leader.end_lsn(), Durability::Local)
        .wait()
        .unwrap();
    let mut pair = Pair::new(&leader, &follower, 3);
    // The leader says all of its log is committed: the follower learns it only for what
    // it holds of the leader's log, after its divergent tail is cut (each `Committed`
    // event is checked against both logs' bytes).
    pair.leader.set_committed(leader.end_lsn());
    pair.run().unwrap();
    assert_eq!(
        pair.truncated,
        Some(shared_end),
        "cut back to where epoch 1 ended on the leader"
    );
    assert_eq!(pair.committed, Some(leader.end_lsn()));
    assert_eq!(follower.end_lsn(), leader.end_lsn());
    same_bytes(&leader, &follower);
    let mut r = follower.record_reader(follower.start_lsn()).unwrap();
    while let Some(rec) = r.try_next().unwrap() {
        assert!(
            !rec.data.starts_with(b"divergent"),
            "no divergent record survives"
        );
    }
}

#[test]
fn refusals_stale_leaders_and_missing_log() {
    let (_dirs, leader, follower) = two_logs();
    leader.begin_epoch(Epoch::new(1)).unwrap();
    follower.begin_epoch(Epoch::new(5)).unwrap();
    // A follower that has seen epoch 5 makes an epoch-1 leader step down.
    let mut pair = Pair::new(&leader, &follower, 1);
    let err = pair.run().unwrap_err();
    assert_eq!(
        err,
        SessionError::NewerEpoch {
            ours: Epoch::new(1),
            seen: Epoch::new(5)
        }
    );

    // A follower from another cluster is refused before any log byte moves.
    let now = Instant::now();
    let mut l = LeaderSession::new(leader_cfg(1), now);
    let mut f = FollowerSession::new(
        FollowerConfig {
            cluster_id: "other".into(),
            ..follower_cfg()
        },
        &[],
        Lsn::new(64),
        Progress::default(),
        now,
    );
    let Some(FollowerEvent::Transmit(hello)) = f.poll_event(now) else {
        panic!("hello")
    };
    let err = l.handle_bytes(now, &hello, &view(&leader)).unwrap_err();
    assert!(
        matches!(
            err,
            SessionError::Refused {
                code: RejectCode::Cluster,
                ..
            }
        ),
        "{err}"
    );
    assert!(l.send_window().is_none());

    // A follower needing log the leader no longer retains is told so explicitly.
    let view_late = LogView {
        start: Lsn::new(10 * CAP + 64),
        ..view(&leader)
    };
    let mut l = LeaderSession::new(leader_cfg(1), now);
    let mut f = FollowerSession::new(
        follower_cfg(),
        &[(Epoch::new(1), Lsn::new(64))],
        Lsn::new(64),
        Progress::default(),
        now,
    );
    let Some(FollowerEvent::Transmit(hello)) = f.poll_event(now) else {
        panic!("hello")
    };
    let err = l.handle_bytes(now, &hello, &view_late).unwrap_err();
    assert!(matches!(
        err,
        SessionError::Refused {
            code: RejectCode::NotRetained,
            ..
        }
    ));
    let Some(LeaderEvent::Transmit(reject)) = l.poll_event() else {
        panic!("reject queued")
    };
    let err = f.handle_bytes(now, &reject).unwrap_err();
    assert!(
        matches!(err, SessionError::Rejected { code: RejectCode::NotRetained, lsn, .. } if lsn == view_late.start)
    );
}

#[test]
fn the_unacknowledged_window_bounds_what_is_in_flight_and_heartbeats_keep_it_alive() {
    let now = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), opts()).unwrap();
    let mut l = LeaderSession::new(leader_cfg(1), now);
    let mut f = FollowerSession::new(follower_cfg(), &[], log.end_lsn(), Progress::default(), now);
    let Some(FollowerEvent::Transmit(hello)) = f.poll_event(now) else {
        panic!("hello")
    };
    l.handle_bytes(now, &hello, &view(&log)).unwrap();
    let (pos, room) = l.send_window().unwrap();
    assert_eq!(room, 256 * 1024);
    l.ship(
        now,
        pos,
        Lsn::new(pos.get() + room),
        0,
        Compression::Zstd,
        bytes::Bytes::from_static(b"z"),
    )
    .unwrap();
    assert!(l.send_window().is_none(), "window full until acknowledged");
    assert!(
        l.ship(now, pos, pos, 0, Compression::None, bytes::Bytes::new())
            .is_err(),
        "not at the stream position"
    );
    while l.poll_event().is_some() {}
    // Idle: a heartbeat asking for a reply goes out; silence past the idle timeout ends it.
    let t = l.poll_timeout().unwrap();
    assert!(t <= now + Duration::from_millis(100));
    l.handle_timeout(t, log.end_lsn(), 1).unwrap();
    assert!(matches!(l.poll_event(), Some(LeaderEvent::Transmit(_))));
    assert_eq!(
        l.handle_timeout(now + Duration::from_secs(6), log.end_lsn(), 2),
        Err(SessionError::IdleTimeout)
    );
}

/// A seeded simulation: bytes arrive in random pieces with delays, connections drop at
/// random moments (in-flight bytes lost, both sessions restarted from the logs), the
/// leader sometimes restarts into a new epoch, and it keeps appending throughout. Every
/// seed must converge to identical logs (but for flush stamps) with the same epoch history. A failing
/// seed replays exactly: `WALSHIP_SIM_SEED=<n>`; `WALSHIP_SIM_SEEDS=<n>` runs seeds 1..=n.
#[test]
fn seeded_simulation_of_chunking_drops_and_restarts_converges() {
    let seeds: Vec<u64> = match std::env::var("WALSHIP_SIM_SEED") {
        Ok(s) => vec![s.parse().expect("WALSHIP_SIM_SEED is a number")],
        // Each seed fsyncs thousands of times; WALSHIP_SIM_SEEDS=<n> runs more.
        Err(_) => (1..=std::env::var("WALSHIP_SIM_SEEDS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(8))
            .collect(),
    };
    for seed in seeds {
        let (_dirs, leader, follower) = two_logs();
        let mut epoch = 1;
        leader.begin_epoch(Epoch::new(epoch)).unwrap();
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut appended = 0u32;
        for _round in 0..12 {
            let mut pair = Pair::new(&leader, &follower, epoch);
            pair.rng = Some(next() | 1);
            let steps = next() % 400;
            for _ in 0..steps {
                if next() % 5 == 0 {
                    let n = 1 + next() % 40;
                    let size = (next() % 2000) as usize;
                    for _ in 0..n {
                        leader
                            .append(format!("{seed}:{appended}:{}", "y".repeat(size)).as_bytes())
                            .unwrap();
                        appended += 1;
                    }
                }
                if let Err(e) = pair.step() {
                    panic!("seed {seed}: session error {e}");
                }
            }
            // The connection drops here; sometimes the leader restarts into a new epoch.
            drop(pair);
            if next() % 3 == 0 {
                epoch += 1;
                leader.begin_epoch(Epoch::new(epoch)).unwrap();
            }
        }
        // Finally a clean connection settles everything.
        let end = leader.append(format!("{seed}: last").as_bytes()).unwrap();
        leader.commit(end, Durability::Local).wait().unwrap();
        let mut pair = Pair::new(&leader, &follower, epoch);
        pair.run()
            .unwrap_or_else(|e| panic!("seed {seed}: session error {e}"));
        assert_eq!(follower.end_lsn(), leader.end_lsn(), "seed {seed}");
        same_bytes(&leader, &follower);
        // A follower learns epochs from batches: an epoch the leader began and left
        // without writing (restarted at once) never reaches it, and need not.
        assert_eq!(
            epochs_with_data(&follower),
            epochs_with_data(&leader),
            "seed {seed}"
        );
    }
}

fn epochs_with_data(log: &Log) -> Vec<(Epoch, Lsn)> {
    let h = log.epoch_history();
    let e = h.entries();
    e.iter()
        .enumerate()
        .filter(|&(i, &(_, start))| start < e.get(i + 1).map_or(log.end_lsn(), |n| n.1))
        .map(|(_, &x)| x)
        .collect()
}

#[test]
fn a_hello_must_name_the_certified_node_and_a_lost_slot_is_refused() {
    let (_dirs, leader, follower) = two_logs();
    leader.begin_epoch(Epoch::new(1)).unwrap();
    let now = Instant::now();
    let hello = |f: &mut FollowerSession| match f.poll_event(now) {
        Some(FollowerEvent::Transmit(b)) => b,
        other => panic!("expected the Hello, got {other:?}"),
    };
    let mut f = FollowerSession::new(
        follower_cfg(),
        &[],
        follower.end_lsn(),
        Progress::default(),
        now,
    );
    // The certificate said "f2"; the Hello says "f1".
    let mut l = LeaderSession::new(leader_cfg(1), now).expect_peer("f2");
    let err = l
        .handle_bytes(now, &hello(&mut f), &view(&leader))
        .unwrap_err();
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
    // A follower whose slot was lost is told so, with the reason.
    let mut f = FollowerSession::new(
        follower_cfg(),
        &[],
        follower.end_lsn(),
        Progress::default(),
        now,
    );
    let mut l = LeaderSession::new(leader_cfg(1), now).expect_peer("f1");
    let lost = LogView {
        lost_slots: std::sync::Arc::new(
            [("f1".to_string(), "3 GiB behind".to_string())]
                .into_iter()
                .collect(),
        ),
        ..view(&leader)
    };
    let err = l.handle_bytes(now, &hello(&mut f), &lost).unwrap_err();
    assert!(
        matches!(&err, SessionError::Refused { code: RejectCode::SlotLost, reason } if reason.contains("3 GiB behind")),
        "{err}"
    );
    let reject = match l.poll_event() {
        Some(LeaderEvent::Transmit(b)) => b,
        other => panic!("expected the Reject, got {other:?}"),
    };
    let err = f.handle_bytes(now, &reject).unwrap_err();
    assert!(
        matches!(
            &err,
            SessionError::Rejected {
                code: RejectCode::SlotLost,
                ..
            }
        ),
        "{err}"
    );
}

/// The follower's own check, which the leader's `Hello` check makes redundant between
/// honest peers (so the cluster simulator cannot catch its removal): a `Welcome` from a
/// leader older than the newest epoch this follower has seen is refused, and nothing of
/// it is acted on.
#[test]
fn a_welcome_from_an_older_epoch_than_seen_is_refused() {
    let now = Instant::now();
    let mut f = FollowerSession::with_seen_epoch(
        follower_cfg(),
        &[(Epoch::new(3), Lsn::new(64))],
        Epoch::new(5),
        Lsn::new(64),
        Progress::default(),
        now,
    );
    while f.poll_event(now).is_some() {}
    let mut welcome = BytesMut::new();
    walship_transport::wire::Frame::Welcome(walship_transport::wire::Welcome {
        epoch: Epoch::new(4),
        truncate_to: Some(Lsn::new(64)),
        start_lsn: Lsn::new(64),
        leader_id: "stale".into(),
    })
    .encode(&mut welcome)
    .unwrap();
    let err = f.handle_bytes(now, &welcome).unwrap_err();
    assert!(
        matches!(
            err,
            SessionError::Refused {
                code: RejectCode::StaleEpoch,
                ..
            }
        ),
        "{err}"
    );
    assert!(!f.is_streaming());
    let events: Vec<_> = std::iter::from_fn(|| f.poll_event(now)).collect();
    assert!(
        events
            .iter()
            .all(|e| matches!(e, FollowerEvent::Transmit(_))),
        "only the Reject goes out: no truncation, no streaming: {events:?}"
    );
}
