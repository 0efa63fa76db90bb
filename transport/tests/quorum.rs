//! Commits at remote durability levels over real QUIC: ANY and FIRST quorums as
//! followers come and go, RemoteApply visibility, and the timeout that says a commit is
//! durable locally but unconfirmed remotely.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{eventually, Cluster};
use walship_engine::{Durability, Error, Record};
use walship_transport::quorum::SyncState;
use walship_transport::{Follower, LeaderOptions, SyncPolicy};

const WAIT: Duration = Duration::from_secs(30);

fn names(n: &[&str]) -> Vec<String> {
    n.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_one_of_two_keeps_committing_with_one_follower_down() -> Result<(), Error> {
    let c = Cluster::new(1 << 20);
    let leader = c.leader(
        c.log("leader"),
        SyncPolicy::Any {
            k: 1,
            of: names(&["f1", "f2"]),
        },
    );
    let (f1, _) = c.follower("f1", c.log("f1"), &leader);
    // f2 is down from the start; f1 alone confirms.
    for i in 0..200u32 {
        let lsn = leader.log().append(&i.to_le_bytes())?;
        leader.commit(lsn, Durability::RemoteFlush).await?;
    }
    let (f2, _) = c.follower("f2", c.log("f2"), &leader);
    eventually("f2 streaming", WAIT, || {
        leader
            .status()
            .followers
            .iter()
            .filter(|f| f.sync_state == SyncState::Quorum)
            .count()
            == 2
    })
    .await;
    // Now f1 goes away; f2 alone confirms.
    f1.shutdown().await;
    for i in 0..200u32 {
        let lsn = leader.log().append(&i.to_le_bytes())?;
        leader.commit(lsn, Durability::RemoteFlush).await?;
        assert!(
            f2.log().watermarks().flushed >= lsn,
            "confirmed by f2's flush"
        );
    }
    f2.shutdown().await;
    leader.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_one_moves_to_the_next_follower_when_the_first_goes_away() -> Result<(), Error> {
    let c = Cluster::new(1 << 20);
    let leader = c.leader(
        c.log("leader"),
        SyncPolicy::First {
            k: 1,
            of: names(&["f1", "f2"]),
        },
    );
    let (f1, _) = c.follower("f1", c.log("f1"), &leader);
    let (f2, _) = c.follower("f2", c.log("f2"), &leader);
    let state = |n: &str| {
        leader
            .status()
            .followers
            .iter()
            .find(|f| f.node_id == n)
            .map(|f| f.sync_state)
    };
    eventually("f1 sync, f2 potential", WAIT, || {
        state("f1") == Some(SyncState::Sync) && state("f2") == Some(SyncState::Potential)
    })
    .await;
    for i in 0..100u32 {
        let lsn = leader.log().append(&i.to_le_bytes())?;
        leader.commit(lsn, Durability::RemoteFlush).await?;
        // FIRST 1 waits for f1, the highest-priority streaming follower.
        assert!(f1.log().watermarks().flushed >= lsn);
    }
    f1.shutdown().await;
    eventually("f2 to become sync", WAIT, || {
        state("f2") == Some(SyncState::Sync)
    })
    .await;
    assert_eq!(state("f1"), Some(SyncState::Async));
    for i in 0..100u32 {
        let lsn = leader.log().append(&i.to_le_bytes())?;
        leader.commit(lsn, Durability::RemoteFlush).await?;
        assert!(f2.log().watermarks().flushed >= lsn);
    }
    f2.shutdown().await;
    leader.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_apply_means_visible_on_the_follower_when_commit_returns() -> Result<(), Error> {
    let c = Cluster::new(1 << 20);
    let leader = c.leader(
        c.log("leader"),
        SyncPolicy::First {
            k: 1,
            of: names(&["f1"]),
        },
    );
    // The embedder's state: a key/value map the apply callback writes.
    let state: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    let s = Arc::clone(&state);
    let follower = Follower::start(
        c.log("f1"),
        c.security("f1"),
        c.follower_opts(&leader),
        move |r: &Record| {
            let text = String::from_utf8_lossy(&r.data).to_string();
            if let Some((k, v)) = text.split_once('=') {
                s.lock().unwrap().insert(k.to_string(), v.to_string());
            }
        },
    )
    .expect("follower");
    for i in 0..300 {
        let lsn = leader.log().append(format!("key{i}=value{i}").as_bytes())?;
        leader.commit(lsn, Durability::RemoteApply).await?;
        // No waiting: the value is there the moment the commit returns.
        assert_eq!(
            state
                .lock()
                .unwrap()
                .get(&format!("key{i}"))
                .map(String::as_str),
            Some(format!("value{i}").as_str())
        );
    }
    follower.shutdown().await;
    leader.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_without_its_quorum_times_out_durable_locally_but_unconfirmed() -> Result<(), Error>
{
    let c = Cluster::new(1 << 20);
    let leader = c.leader_with(
        c.log("leader"),
        LeaderOptions {
            sync: SyncPolicy::Any {
                k: 2,
                of: names(&["f1", "f2"]),
            },
            remote_commit_timeout: Duration::from_millis(300),
            ..LeaderOptions::default()
        },
    );
    let (f1, _) = c.follower("f1", c.log("f1"), &leader);
    let lsn = leader.log().append(b"only one follower")?;
    for level in [
        Durability::RemoteWrite,
        Durability::RemoteFlush,
        Durability::RemoteApply,
    ] {
        let err = leader.commit(lsn, level).await.unwrap_err();
        assert!(matches!(err, Error::RemoteUnconfirmed { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("durable locally") && msg.contains("not confirmed"),
            "{msg}"
        );
    }
    // Locally it is on disk; f1 has it too, but one follower is not ANY 2.
    assert!(leader.log().watermarks().flushed >= lsn);
    eventually("f1 to flush it", WAIT, || {
        f1.log().watermarks().flushed >= lsn
    })
    .await;
    assert!(leader.log().watermarks().remote_flushed < lsn);
    // Local levels are unaffected.
    leader.commit(lsn, Durability::Local).await?;
    f1.shutdown().await;
    leader.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutting_the_leader_down_fails_waiting_remote_commits() -> Result<(), Error> {
    let c = Cluster::new(1 << 20);
    let log = c.log("leader");
    let leader = c.leader(
        log.clone(),
        SyncPolicy::Any {
            k: 1,
            of: names(&["f1"]),
        },
    );
    let lsn = log.append(b"nobody will confirm this")?;
    let waiting = tokio::spawn(log.commit(lsn, Durability::RemoteFlush));
    tokio::time::sleep(Duration::from_millis(100)).await;
    leader.shutdown().await;
    let err = waiting.await.unwrap().unwrap_err();
    assert!(matches!(err, Error::RemoteFenced { .. }), "{err}");
    Ok(())
}

/// `Leader::wait_for_flushed` (Redis's `WAIT`) counts each follower that flushed the
/// LSN, whatever the sync policy needs, and answers with how many once the timeout
/// passes short of the number asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_followers_counts_each_one_that_flushed() -> Result<(), Error> {
    let c = Cluster::new(1 << 20);
    let leader = c.leader(
        c.log("leader"),
        SyncPolicy::Any {
            k: 1,
            of: names(&["f1", "f2"]),
        },
    );
    let (f1, _) = c.follower("f1", c.log("f1"), &leader);
    let (f2, _) = c.follower("f2", c.log("f2"), &leader);
    // Acknowledgements wake the waits: a wait that slept out its timeout would take
    // 100 x 30 s here, against well under a second.
    let loop_start = std::time::Instant::now();
    for i in 0..100u32 {
        // Committed locally only: nothing but the wait itself waits for the followers.
        let lsn = leader.log().append(&i.to_le_bytes())?;
        leader.commit(lsn, Durability::Local).await?;
        let have = leader.wait_for_flushed(lsn, 2, WAIT).await;
        assert_eq!(have, 2, "both followers flush record {i} at {lsn}");
        for f in [&f1, &f2] {
            assert!(
                f.log().watermarks().flushed >= lsn,
                "counted only once flushed"
            );
        }
        assert!(
            loop_start.elapsed() < WAIT,
            "the waits answered as the acknowledgements came, not at their timeouts"
        );
    }
    f2.shutdown().await;
    let lsn = leader.log().append(b"after f2 left")?;
    leader.commit(lsn, Durability::Local).await?;
    let start = std::time::Instant::now();
    let have = leader
        .wait_for_flushed(lsn, 2, Duration::from_millis(300))
        .await;
    assert_eq!(have, 1, "f1 alone has it once the timeout passed");
    assert!(
        start.elapsed() >= Duration::from_millis(300),
        "waited the timeout"
    );
    assert_eq!(leader.wait_for_flushed(lsn, 1, WAIT).await, 1);
    assert_eq!(
        leader.wait_for_flushed(lsn, 0, Duration::ZERO).await,
        1,
        "asking for none answers at once with the count"
    );
    f1.shutdown().await;
    leader.shutdown().await;
    Ok(())
}
