//! A slow disk under the leader's slot file must not stall acknowledgements (issue 12):
//! a slot save (write, fsync, rename, directory fsync) runs on a blocking thread, off the
//! lock every follower's acks take and off the async workers. The leader's log lives on
//! a simulated disk whose syncs of the slot file take 700 ms each.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{eventually, Cluster};
use walship_engine::storage::SimDisk;
use walship_engine::{Durability, Log, Options};
use walship_transport::SyncPolicy;

const SLOW: Duration = Duration::from_millis(700);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_slot_file_does_not_stall_remote_commits() {
    // Small segments and 4 KiB records: the slot moves to a new segment (and is saved)
    // every 16 commits or so.
    let c = Cluster::new(64 << 10);
    let disk = SimDisk::new(1);
    disk.slow_syncs("replication.slots", SLOW);
    let log = Log::open(
        "/leader/log",
        Options {
            segment_capacity: 64 << 10,
            storage: disk.boot(),
            ..Options::default()
        },
    )
    .expect("open the leader's log on the simulated disk");
    let leader = c.leader(
        Arc::new(log),
        SyncPolicy::Any {
            k: 1,
            of: vec!["*".into()],
        },
    );
    let (_f1, _) = c.follower("f1", c.log("f1"), &leader);
    let commit = |i: u64| {
        let leader = &leader;
        async move {
            let mut record = format!("record {i} ").into_bytes();
            record.resize(4096, b'.');
            let lsn = leader.log().append(&record)?;
            leader.commit(lsn, Durability::RemoteFlush).await
        }
    };
    // The follower streams and its slot has been saved once (slowly) before measuring.
    commit(0).await.expect("first commit");
    eventually("a slow slot save", Duration::from_secs(30), || {
        disk.stats().slowed_syncs >= 1
    })
    .await;
    let before = disk.stats().slowed_syncs;
    let (mut n, mut worst) = (0u64, Duration::ZERO);
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        let t = Instant::now();
        commit(n + 1).await.expect("remote commit");
        worst = worst.max(t.elapsed());
        n += 1;
    }
    let slowed = disk.stats().slowed_syncs - before;
    eprintln!("{n} RemoteFlush commits in 4 s, slowest {worst:?}, {slowed} slot syncs of {SLOW:?} meanwhile");
    assert!(
        slowed >= 2,
        "the slot file was saved while commits ran ({slowed} slow syncs)"
    );
    assert!(
        worst < SLOW / 2,
        "a commit waited {worst:?}: acknowledgements stall behind a slot save of {SLOW:?}"
    );
    leader.shutdown().await;
}
