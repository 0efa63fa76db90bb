//! A follower whose position the leader no longer retains is bootstrapped from the
//! leader's snapshot: its log restarts empty at the snapshot's segment, the embedder
//! installs the snapshot, and streaming resumes after it. Bad transfers install nothing.

mod common;

use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{eventually, records, Applied, Cluster};
use walship_engine::{Durability, Lsn, Record};
use walship_transport::snapshot::{restart_base, SnapshotFile, SnapshotSource};
use walship_transport::{Apply, ApplyError, Follower, FollowerOptions, LeaderOptions};

const CAP: u64 = 64 << 10;

/// A state of `(lsn, data)` pairs, encoded as the snapshot's bytes.
fn encode(state: &[(Lsn, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (l, d) in state {
        out.extend_from_slice(&l.get().to_le_bytes());
        out.extend_from_slice(&(d.len() as u32).to_le_bytes());
        out.extend_from_slice(d);
    }
    out
}

fn decode(mut b: &[u8]) -> Result<Vec<(Lsn, Vec<u8>)>, String> {
    let mut out = Vec::new();
    while !b.is_empty() {
        if b.len() < 12 {
            return Err("torn entry".into());
        }
        let l = u64::from_le_bytes(b[..8].try_into().unwrap());
        let n = u32::from_le_bytes(b[8..12].try_into().unwrap()) as usize;
        let d = b.get(12..12 + n).ok_or("torn entry")?.to_vec();
        out.push((Lsn::new(l), d));
        b = &b[12 + n..];
    }
    Ok(out)
}

/// The leader's snapshot: fixed bytes covering `lsn`; `short` bytes fewer than it
/// claims are yielded while `short` is non-zero.
#[derive(Debug, Default)]
struct Source {
    snap: Mutex<Option<(Lsn, Vec<u8>)>>,
    short: AtomicU64,
}

impl SnapshotSource for Source {
    fn newest(&self) -> Result<Option<SnapshotFile>, String> {
        let s = self.snap.lock().unwrap().clone();
        Ok(s.map(|(lsn, bytes)| {
            let len = bytes.len() as u64;
            let short = self.short.load(Ordering::Acquire) as usize;
            let yielded = bytes[..bytes.len().saturating_sub(short)].to_vec();
            SnapshotFile {
                lsn,
                len,
                reader: Box::new(std::io::Cursor::new(yielded)),
            }
        }))
    }
}

/// An embedder whose state is the list of records, replaced by an installed snapshot.
#[derive(Clone, Default)]
struct Embedder {
    state: Applied,
    installs: Arc<Mutex<Vec<Lsn>>>,
}

impl Apply for Embedder {
    fn apply(&mut self, r: &Record) -> Result<(), ApplyError> {
        self.state.lock().unwrap().push((r.lsn, r.data.to_vec()));
        Ok(())
    }

    fn installs_snapshots(&self) -> bool {
        true
    }

    fn install_snapshot(&mut self, lsn: Lsn, snapshot: &mut dyn Read) -> Result<(), ApplyError> {
        let mut b = Vec::new();
        snapshot.read_to_end(&mut b)?;
        let state = decode(&b)?;
        if state.last().map(|(l, _)| *l) != Some(lsn) {
            return Err(format!("the snapshot does not end at {lsn}").into());
        }
        *self.state.lock().unwrap() = state;
        self.installs.lock().unwrap().push(lsn);
        Ok(())
    }
}

/// A leader of `c`'s log "leader" serving `source`'s snapshots, with `opts` otherwise.
fn serving(
    c: &Cluster,
    source: &Arc<Source>,
    opts: LeaderOptions,
) -> (walship_transport::Leader, Arc<walship_engine::Log>) {
    let log = c.log("leader");
    let leader = c.leader_with(
        Arc::clone(&log),
        LeaderOptions {
            snapshots: Some(Arc::clone(source) as Arc<dyn SnapshotSource>),
            ..opts
        },
    );
    (leader, log)
}

/// A leader that recycled the start of its log behind a snapshot at `P`, with more
/// records after it; returns the leader's records from the start (what the snapshot
/// covers, then the rest) and `P`.
async fn recycled_leader(
    c: &Cluster,
    source: &Arc<Source>,
) -> (walship_transport::Leader, Vec<(Lsn, Vec<u8>)>, Lsn) {
    let (leader, log) = serving(c, source, LeaderOptions::default());
    let mut last = Lsn::ZERO;
    for i in 0..300u32 {
        last = log.append(&[(i % 251) as u8; 1000]).unwrap();
    }
    log.commit(last, Durability::Local).wait().unwrap();
    let covered = records(&log);
    *source.snap.lock().unwrap() = Some((last, encode(&covered)));
    log.set_checkpoint(last);
    eventually(
        "the leader recycles its first segments",
        Duration::from_secs(10),
        || log.start_lsn().get() > CAP,
    )
    .await;
    let mut after = last;
    for i in 0..50u32 {
        after = log.append(format!("after {i}").as_bytes()).unwrap();
    }
    log.commit(after, Durability::Local).wait().unwrap();
    let mut all = covered;
    all.extend(records(&log).into_iter().filter(|(l, _)| *l > last));
    (leader, all, last)
}

fn start(
    c: &Cluster,
    log: Arc<walship_engine::Log>,
    opts: FollowerOptions,
    e: &Embedder,
) -> Follower {
    Follower::start(log, c.security("n2"), opts, e.clone()).expect("start follower")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_the_leader_no_longer_retains_is_bootstrapped_from_its_snapshot() {
    let c = Cluster::new(CAP);
    let source = Arc::new(Source::default());
    let (leader, expected, p) = recycled_leader(&c, &source).await;
    let e = Embedder::default();
    let log = c.log("n2");
    let f = start(&c, Arc::clone(&log), c.follower_opts(&leader), &e);
    let end = leader.log().end_lsn();
    eventually(
        "the follower applies everything",
        Duration::from_secs(20),
        || f.applied() >= end,
    )
    .await;
    assert_eq!(
        *e.installs.lock().unwrap(),
        vec![p],
        "one snapshot, at the leader's"
    );
    assert_eq!(
        *e.state.lock().unwrap(),
        expected,
        "the snapshot, then every record after it, once"
    );
    let base = restart_base(p, CAP);
    assert_eq!(
        log.start_lsn(),
        Lsn::new(base.get() + 64),
        "the log restarted at the snapshot's segment"
    );
    assert_eq!(log.epoch_history().entries()[0].1, log.start_lsn());

    // Restarted with its state kept, it streams on: no second snapshot.
    let applied = f.applied();
    f.shutdown().await;
    let opts = FollowerOptions {
        apply_from: Some(applied),
        ..c.follower_opts(&leader)
    };
    let f = start(&c, Arc::clone(&log), opts, &e);
    let more = leader.log().append(b"after the restart").unwrap();
    leader.log().commit(more, Durability::Local).wait().unwrap();
    eventually(
        "the restarted follower applies the new record",
        Duration::from_secs(20),
        || f.applied() >= more,
    )
    .await;
    assert_eq!(e.installs.lock().unwrap().len(), 1);
    assert_eq!(e.state.lock().unwrap().last().map(|(l, _)| *l), Some(more));
    f.shutdown().await;
    leader.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_cut_short_is_never_installed_and_a_whole_one_is() {
    let c = Cluster::new(CAP);
    let source = Arc::new(Source::default());
    source.short.store(100, Ordering::Release);
    let (leader, expected, p) = recycled_leader(&c, &source).await;
    let e = Embedder::default();
    let f = start(&c, c.log("n2"), c.follower_opts(&leader), &e);
    eventually("a failed bootstrap", Duration::from_secs(20), || {
        f.status()
            .last_error
            .is_some_and(|m| m.contains("snapshot"))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        e.installs.lock().unwrap().is_empty(),
        "a short snapshot was installed"
    );
    assert!(
        e.state.lock().unwrap().is_empty(),
        "part of a snapshot was applied"
    );
    source.short.store(0, Ordering::Release);
    let end = leader.log().end_lsn();
    eventually(
        "the follower bootstraps once the snapshot is whole",
        Duration::from_secs(20),
        || f.applied() >= end,
    )
    .await;
    assert_eq!(*e.installs.lock().unwrap(), vec![p]);
    assert_eq!(*e.state.lock().unwrap(), expected);
    f.shutdown().await;
    leader.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_over_the_followers_limit_is_refused_and_its_log_left_alone() {
    let c = Cluster::new(CAP);
    let source = Arc::new(Source::default());
    let (leader, _, _) = recycled_leader(&c, &source).await;
    let e = Embedder::default();
    let log = c.log("n2");
    let opts = FollowerOptions {
        max_snapshot_bytes: 1000,
        ..c.follower_opts(&leader)
    };
    let f = start(&c, Arc::clone(&log), opts, &e);
    eventually("the refusal", Duration::from_secs(20), || {
        f.status()
            .last_error
            .is_some_and(|m| m.contains("max_snapshot_bytes"))
    })
    .await;
    assert!(e.installs.lock().unwrap().is_empty());
    assert_eq!(
        (log.start_lsn(), log.end_lsn()),
        (Lsn::new(64), Lsn::new(64)),
        "the log was not restarted"
    );
    f.shutdown().await;
    leader.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_without_snapshots_says_so() {
    let c = Cluster::new(CAP);
    let source = Arc::new(Source::default());
    let (leader, _, _) = recycled_leader(&c, &source).await;
    leader.shutdown().await;
    // The same log led again without a snapshot source.
    let leader = c.leader_with(c.log("leader"), LeaderOptions::default());
    let e = Embedder::default();
    let f = start(&c, c.log("n2"), c.follower_opts(&leader), &e);
    eventually("the refusal", Duration::from_secs(20), || {
        f.status()
            .last_error
            .is_some_and(|m| m.contains("serves no snapshots"))
    })
    .await;
    assert!(e.installs.lock().unwrap().is_empty());
    f.shutdown().await;
    leader.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedder_whose_state_lies_outside_its_log_bootstraps_before_streaming() {
    let c = Cluster::new(CAP);
    let source = Arc::new(Source::default());
    let (leader, log) = serving(&c, &source, LeaderOptions::default());
    let mut last = Lsn::ZERO;
    for i in 0..100u32 {
        last = log.append(format!("r{i}").as_bytes()).unwrap();
    }
    log.commit(last, Durability::Local).wait().unwrap();
    let all = records(&log);
    *source.snap.lock().unwrap() = Some((last, encode(&all)));
    // As after a crash between a log restart and the snapshot's install: the embedder
    // says it holds more than its (empty) log.
    let e = Embedder::default();
    let opts = FollowerOptions {
        apply_from: Some(Lsn::new(1 << 20)),
        ..c.follower_opts(&leader)
    };
    let f = start(&c, c.log("n2"), opts, &e);
    eventually("the bootstrap", Duration::from_secs(20), || {
        !e.installs.lock().unwrap().is_empty()
    })
    .await;
    let more = log.append(b"after").unwrap();
    log.commit(more, Durability::Local).wait().unwrap();
    eventually("streaming after it", Duration::from_secs(20), || {
        e.state.lock().unwrap().last().map(|(l, _)| *l) == Some(more)
    })
    .await;
    let mut all = all;
    all.push((more, b"after".to_vec()));
    assert_eq!(*e.installs.lock().unwrap(), vec![last]);
    assert_eq!(*e.state.lock().unwrap(), all);
    f.shutdown().await;
    leader.shutdown().await;
}

/// A follower away for longer than its slot may hold the log (`max_retained_bytes`) is
/// refused with `SlotLost`; one that installs snapshots then asks for the leader's, which
/// makes its slot live again, and it streams on from the snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_whose_slot_was_lost_is_bootstrapped_and_its_slot_lives_again() {
    let c = Cluster::new(CAP);
    let source = Arc::new(Source::default());
    let opts = LeaderOptions {
        max_retained_bytes: 2 * CAP,
        ..LeaderOptions::default()
    };
    let (leader, log) = serving(&c, &source, opts);
    let slot_lost = |leader: &walship_transport::Leader| {
        leader
            .status()
            .followers
            .iter()
            .find(|f| f.node_id == "n2")
            .map(|f| f.slot_lost)
    };
    // n2 streams a little, then goes away: its slot stays, at what it flushed.
    let e = Embedder::default();
    let f_log = c.log("n2");
    let f = start(&c, Arc::clone(&f_log), c.follower_opts(&leader), &e);
    let first = log.append(b"before").unwrap();
    log.commit(first, Durability::Local).wait().unwrap();
    eventually(
        "n2 applies the first record",
        Duration::from_secs(20),
        || f.applied() >= first,
    )
    .await;
    let applied = f.applied();
    f.shutdown().await;
    assert_eq!(slot_lost(&leader), Some(false));

    // Three segments more than the slot may hold: lost. The embedder snapshots and
    // checkpoints, so the log n2 would need goes.
    let mut last = first;
    for i in 0..300u32 {
        last = log.append(&[(i % 251) as u8; 1000]).unwrap();
    }
    log.commit(last, Durability::Local).wait().unwrap();
    let covered = records(&log);
    *source.snap.lock().unwrap() = Some((last, encode(&covered)));
    log.set_checkpoint(last);
    eventually("n2's slot to be lost", Duration::from_secs(20), || {
        slot_lost(&leader) == Some(true)
    })
    .await;
    eventually(
        "the leader recycles what n2 needed",
        Duration::from_secs(20),
        || log.start_lsn() > f_log.end_lsn(),
    )
    .await;
    let mut after = last;
    for i in 0..50u32 {
        after = log.append(format!("after {i}").as_bytes()).unwrap();
    }
    log.commit(after, Durability::Local).wait().unwrap();

    // Back with its state: refused, bootstrapped, streaming, and its slot live again.
    let opts = FollowerOptions {
        apply_from: Some(applied),
        ..c.follower_opts(&leader)
    };
    let f = start(&c, Arc::clone(&f_log), opts, &e);
    eventually(
        "n2 applies everything after the snapshot",
        Duration::from_secs(20),
        || f.applied() >= after,
    )
    .await;
    assert_eq!(*e.installs.lock().unwrap(), vec![last], "one snapshot");
    let mut expected = covered;
    expected.extend(records(&log).into_iter().filter(|(l, _)| *l > last));
    assert_eq!(*e.state.lock().unwrap(), expected);
    assert_eq!(slot_lost(&leader), Some(false), "the slot lives again");
    // And it holds the log again: n2 keeps streaming new records.
    let more = log.append(b"more").unwrap();
    log.commit(more, Durability::Local).wait().unwrap();
    eventually("n2 streams on", Duration::from_secs(20), || {
        f.applied() >= more
    })
    .await;
    f.shutdown().await;
    leader.shutdown().await;
}
