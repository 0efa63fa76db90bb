//! Snapshots: the log is recycled behind them, a restart loads the newest and replays the
//! log after it, replicas snapshot only what is committed, and a node refuses to start
//! on a recycled log whose snapshot is corrupt.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{client, cmd, eventually, stop_all, Cluster, WAIT};
use walship_engine::Durability;
use walship_kv::instance::Instance;
use walship_kv::snapshotter::Policy;

/// Every 512 KiB of log, never by time; segments are 1 MiB (`Cluster::log`).
fn by_size() -> Policy {
    Policy {
        log_bytes: 512 << 10,
        interval: Duration::ZERO,
        commit_wait: Duration::from_secs(5),
    }
}

fn value(i: usize) -> String {
    format!("{i}:{}", "v".repeat(4000))
}

/// 1,000 keys of 4 KB: about 4 MB of log, several segments.
async fn fill(node: &Instance) {
    client(node.resp_addr(), false, |con| {
        for chunk in (0..1000).collect::<Vec<usize>>().chunks(50) {
            let mut p = redis::pipe();
            for i in chunk {
                p.cmd("SET").arg(format!("key:{i}")).arg(value(*i)).ignore();
            }
            p.query::<()>(con).unwrap();
        }
        assert_eq!(
            cmd(&["EXPIRE", "key:7", "100000"])
                .query::<i64>(con)
                .unwrap(),
            1
        );
    })
    .await;
}

/// Whether the log's first segments are gone: a log never recycled starts at its first
/// segment's first batch.
fn recycled(db: &walship_kv::db::Db) -> bool {
    db.log().start_lsn().get() > walship_engine::format::SEGMENT_HEADER_LEN as u64
}

/// Waits until `node` has put a snapshot in place and its log recycled the segments
/// before it.
async fn snapshotted_and_recycled(node: &Instance) {
    let db = Arc::clone(node.db());
    eventually("a snapshot in place and the log recycled behind it", || {
        db.snapshot_status().taken >= 1 && recycled(&db)
    })
    .await;
}

/// A node alone snapshots by size, its log recycles behind the snapshot, and a restart
/// gets every key back from the snapshot plus the log after it (the writes after the
/// snapshot included). A corrupted snapshot is then refused, naming the file: the log
/// alone no longer holds the key space.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_loads_the_snapshot_and_replays_the_log_after_it() {
    let mut c = Cluster::new(1);
    c.snapshot_policy = by_size();
    let nodes = c.start_all(Durability::Local).await;
    fill(&nodes[0]).await;
    snapshotted_and_recycled(&nodes[0]).await;
    let snapshot = nodes[0].db().snapshot_status().lsn;
    // After the snapshot: too little log for another.
    client(nodes[0].resp_addr(), false, |con| {
        assert_eq!(cmd(&["DEL", "key:0"]).query::<i64>(con).unwrap(), 1);
        assert_eq!(
            cmd(&["SET", "late", "1"]).query::<String>(con).unwrap(),
            "OK"
        );
        assert_eq!(cmd(&["INCRBY", "late", "9"]).query::<i64>(con).unwrap(), 10);
    })
    .await;
    let end = nodes[0].db().log().end_lsn();
    stop_all(nodes).await;

    c.reconfigure("n1");
    let nodes = c.start_all(Durability::Local).await;
    let db = Arc::clone(nodes[0].db());
    let status = db.snapshot_status();
    assert!(
        status.lsn >= snapshot && status.lsn < end,
        "loaded the snapshot at {} (taken at {snapshot}, log end {end})",
        status.lsn
    );
    assert!(recycled(&db), "the log stays recycled");
    let loaded = status.lsn.get();
    client(nodes[0].resp_addr(), false, move |con| {
        let info: String = cmd(&["INFO", "persistence"]).query(con).unwrap();
        assert!(
            info.contains(&format!("walship_snapshot_lsn:{loaded}\r\n"))
                && info.contains("rdb_last_bgsave_status:ok\r\n")
                && !info.contains("rdb_changes_since_last_save:0\r\n"),
            "{info}"
        );
        assert_eq!(cmd(&["DBSIZE"]).query::<i64>(con).unwrap(), 1000);
        assert_eq!(cmd(&["GET", "late"]).query::<String>(con).unwrap(), "10");
        assert_eq!(
            cmd(&["EXISTS", "key:0"]).query::<i64>(con).unwrap(),
            0,
            "deleted after the snapshot"
        );
        for i in 1..1000 {
            let k = format!("key:{i}");
            assert_eq!(
                cmd(&["GET", &k]).query::<String>(con).unwrap(),
                value(i),
                "{k}"
            );
        }
        let ttl = cmd(&["TTL", "key:7"]).query::<i64>(con).unwrap();
        assert!((99_000..=100_000).contains(&ttl), "{ttl}");
    })
    .await;
    drop(db);
    stop_all(nodes).await;

    // Every snapshot corrupted: the recycled log alone cannot rebuild the key space.
    for e in std::fs::read_dir(c.snapshot_dir("n1")).unwrap() {
        let path = e.unwrap().path();
        let mut b = std::fs::read(&path).unwrap();
        let mid = b.len() / 2;
        b[mid] ^= 0x20;
        std::fs::write(&path, b).unwrap();
    }
    c.reconfigure("n1");
    let started = Instance::start(
        c.log("n1"),
        c.security("n1"),
        c.coordinator.clone(),
        c.node_options(),
        c.settings(Durability::Local),
        c.snapshots("n1"),
    )
    .await;
    let Err(e) = started else {
        panic!("started from a recycled log without a valid snapshot");
    };
    let e = e.to_string();
    assert!(
        e.contains("no valid snapshot") && e.contains("snap-") && e.contains("checksum"),
        "{e}"
    );
}

/// In a cluster every node snapshots and recycles its log, each snapshot within what
/// that node knows is committed; a failover then keeps every key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_of_a_cluster_snapshots_what_is_committed() {
    let mut c = Cluster::new(3);
    c.snapshot_policy = by_size();
    let nodes = c.start_all(Durability::RemoteFlush).await;
    fill(&nodes[0]).await;
    for n in &nodes {
        snapshotted_and_recycled(n).await;
        let (snap, committed) = (n.db().snapshot_status().lsn, n.node().committed());
        assert!(
            snap <= committed,
            "snapshot at {snap}, committed {committed}"
        );
    }
    let epoch = nodes[1].node().promote().await.expect("promote n2");
    nodes[1]
        .node()
        .wait_for_role(
            |r| *r == walship_transport::NodeRole::Leader { epoch },
            WAIT,
        )
        .await
        .expect("n2 leads");
    client(nodes[1].resp_addr(), false, |con| {
        assert_eq!(cmd(&["DBSIZE"]).query::<i64>(con).unwrap(), 1000);
        assert_eq!(
            cmd(&["SET", "after", "1"]).query::<String>(con).unwrap(),
            "OK"
        );
        assert_eq!(cmd(&["WAIT", "2", "10000"]).query::<i64>(con).unwrap(), 2);
    })
    .await;
    for n in &nodes {
        let db = Arc::clone(n.db());
        eventually("every node holds every key", || db.len() == 1001).await;
        assert_eq!(db.get(b"key:999").as_deref(), Some(value(999).as_bytes()));
    }
    stop_all(nodes).await;
}

/// With its followers gone, a leader's writes acknowledged at `local` are not
/// committed: a snapshot of them is thrown away rather than put in place, and the log
/// is not checkpointed past the committed point.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_snapshot_is_put_in_place_past_the_committed_point() {
    let mut c = Cluster::new(3);
    c.snapshot_policy = Policy {
        commit_wait: Duration::from_millis(300),
        ..by_size()
    };
    let mut nodes = c.start_all(Durability::Local).await;
    client(nodes[0].resp_addr(), false, |con| {
        assert_eq!(cmd(&["SET", "a", "1"]).query::<String>(con).unwrap(), "OK");
        assert_eq!(cmd(&["WAIT", "2", "10000"]).query::<i64>(con).unwrap(), 2);
    })
    .await;
    for n in nodes.split_off(1) {
        n.shutdown().await;
    }
    let leader = &nodes[0];
    fill(leader).await;
    let db = Arc::clone(leader.db());
    eventually("a snapshot refused for want of a commit", || {
        db.snapshot_status()
            .last_error
            .is_some_and(|e| e.contains("not committed"))
    })
    .await;
    let committed = leader.node().committed();
    assert!(
        committed < db.read().applied(),
        "nothing after the followers left is committed"
    );
    let dir = c.snapshot_dir("n1");
    for e in std::fs::read_dir(&dir).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        let lsn = name
            .strip_prefix("snap-")
            .and_then(|n| n.strip_suffix(".kv"))
            .map(|h| u64::from_str_radix(h, 16).unwrap());
        if let Some(lsn) = lsn {
            assert!(
                lsn <= committed.get(),
                "{name} is past the committed point {committed}"
            );
        }
    }
    assert!(db.log().watermarks().checkpoint <= committed);
    stop_all(nodes).await;
}

/// `BGSAVE` takes a snapshot even under a policy that takes none, and `LASTSAVE` then
/// moves from the start time to its time; a node without a snapshot directory says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bgsave_takes_a_snapshot_when_asked() {
    let mut c = Cluster::new(1);
    c.snapshot_policy = Policy {
        log_bytes: 0,
        interval: Duration::ZERO,
        commit_wait: Duration::from_secs(5),
    };
    let nodes = c.start_all(Durability::Local).await;
    let db = Arc::clone(nodes[0].db());
    let started = client(nodes[0].resp_addr(), false, |con| {
        assert_eq!(cmd(&["SET", "a", "1"]).query::<String>(con).unwrap(), "OK");
        let started: i64 = cmd(&["LASTSAVE"]).query(con).unwrap();
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(
            cmd(&["BGSAVE"]).query::<String>(con).unwrap(),
            "Background saving started"
        );
        started
    })
    .await;
    eventually("the snapshot BGSAVE asked for", || {
        db.snapshot_status().taken == 1
    })
    .await;
    assert_eq!(db.snapshot_status().lsn, db.read().applied());
    let names: Vec<_> = std::fs::read_dir(c.snapshot_dir("n1"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.len() == 1 && names[0].ends_with(".kv"), "{names:?}");
    client(nodes[0].resp_addr(), false, move |con| {
        let at: i64 = cmd(&["LASTSAVE"]).query(con).unwrap();
        assert!(at > started, "LASTSAVE {at}, before it {started}");
        let info: String = cmd(&["INFO", "persistence"]).query(con).unwrap();
        assert!(info.contains("rdb_saves:1\r\n"), "{info}");
    })
    .await;
    drop(db);
    stop_all(nodes).await;

    c.reconfigure("n1");
    let node = Instance::start(
        c.log("n1"),
        c.security("n1"),
        c.coordinator.clone(),
        c.node_options(),
        c.settings(Durability::Local),
        None,
    )
    .await
    .expect("start without snapshots");
    client(node.resp_addr(), false, |con| {
        let e = cmd(&["BGSAVE"]).query::<String>(con).unwrap_err();
        assert!(e.to_string().contains("takes no snapshots"), "{e}");
    })
    .await;
    stop_all(vec![node]).await;
}

/// A replica that joins after the leader recycled its log behind a snapshot (the leader
/// no longer has the log it would stream from) is bootstrapped from that snapshot:
/// its log restarts at the snapshot's segment, it then streams, serves every key, and
/// after its own restart still does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_joining_after_the_log_was_recycled_is_bootstrapped_from_a_snapshot() {
    let mut c = Cluster::new(3);
    c.snapshot_policy = by_size();
    let n1 = c.start("n1", Durability::Local).await;
    let n2 = c.start("n2", Durability::Local).await;
    n1.node()
        .wait_for_role(
            |r| matches!(r, walship_transport::NodeRole::Leader { .. }),
            WAIT,
        )
        .await
        .expect("n1 leads");
    fill(&n1).await;
    snapshotted_and_recycled(&n1).await;
    let snap = n1.db().snapshot_status().lsn;
    let n3 = c.start("n3", Durability::Local).await;
    let db3 = Arc::clone(n3.db());
    eventually("n3 holds every key", || db3.len() == 1000).await;
    assert!(
        db3.log().start_lsn().get() > walship_engine::format::SEGMENT_HEADER_LEN as u64,
        "n3's log restarted past the recycled segments"
    );
    assert!(
        db3.snapshot_status().lsn >= snap,
        "n3 put the leader's snapshot in place"
    );
    client(n1.resp_addr(), false, |con| {
        assert_eq!(
            cmd(&["SET", "after", "1"]).query::<String>(con).unwrap(),
            "OK"
        );
    })
    .await;
    eventually("n3 streams after the snapshot", || {
        db3.get(b"after").is_some()
    })
    .await;
    assert_eq!(db3.get(b"key:999").as_deref(), Some(value(999).as_bytes()));
    let ttl = client(n3.resp_addr(), false, |con| {
        cmd(&["TTL", "key:7"]).query::<i64>(con).unwrap()
    })
    .await;
    assert!(ttl > 0, "the expiry came with the snapshot: {ttl}");
    drop(db3);
    n3.shutdown().await;
    let n3 = c.start("n3", Durability::Local).await;
    let db3 = Arc::clone(n3.db());
    assert_eq!(
        db3.len(),
        1001,
        "after its restart: the snapshot and its log"
    );
    assert_eq!(db3.get(b"after").as_deref(), Some(&b"1"[..]));
    drop(db3);
    stop_all(vec![n3, n2, n1]).await;
}
