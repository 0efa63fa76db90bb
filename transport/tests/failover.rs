//! Manual failover in one process over real QUIC: promotion into a new epoch, an old
//! leader rejoining as a follower with its divergent tail truncated once a quorum has
//! confirmed the new epoch (and, before that, the new leader yielding to it), a stale leader made
//! to step down by a follower that has seen a newer epoch, read-your-writes on a lagging
//! follower.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{eventually, records, same_bytes, Cluster, Undoable};
use walship_engine::{Durability, Error, Lsn, Record};
use walship_transport::status::Role;
use walship_transport::{Follower, LeaderOptions, SyncPolicy};

const WAIT: Duration = Duration::from_secs(30);

fn any_one() -> SyncPolicy {
    SyncPolicy::Any {
        k: 1,
        of: vec!["*".into()],
    }
}

fn any_one_leader() -> LeaderOptions {
    LeaderOptions {
        sync: any_one(),
        ..LeaderOptions::default()
    }
}

/// Leader `n1` (ANY 1 of any) with followers `n2` and `n3`.
fn three_nodes(
    c: &Cluster,
) -> (
    Arc<walship_engine::Log>,
    walship_transport::Leader,
    Follower,
    Follower,
) {
    let log = c.log("n1");
    let leader = c.leader_named(Arc::clone(&log), any_one_leader());
    let f2 = follower_of(c, "n2", &leader);
    let f3 = follower_of(c, "n3", &leader);
    (log, leader, f2, f3)
}

fn follower_of(c: &Cluster, node: &str, leader: &walship_transport::Leader) -> Follower {
    Follower::start(
        c.log(node),
        c.security(node),
        c.follower_opts_to("n1", leader.local_addr().unwrap()),
        |_: &Record| {},
    )
    .expect("follower")
}

/// Leader n1 and followers n2, n3 share a history; n2 and n3 are cut off; n1 goes on
/// alone with a tail nobody else receives (Local commits only: no remote level can be
/// confirmed), then dies. Returns n1's log, n2's and n3's logs, the end of the common
/// history and n1's last epoch.
async fn old_leader_with_a_divergent_tail(
    c: &Cluster,
) -> Result<
    (
        Arc<walship_engine::Log>,
        [Arc<walship_engine::Log>; 2],
        Lsn,
        walship_engine::Epoch,
    ),
    Error,
> {
    let (old_log, old, f2, f3) = three_nodes(c);
    let mut last = Lsn::ZERO;
    for i in 0..500 {
        last = old_log.append(format!("common {i}").as_bytes())?;
    }
    old.commit(last, Durability::RemoteFlush).await?;
    let common_end = last;
    eventually("n2 and n3 have everything acknowledged", WAIT, || {
        f2.log().watermarks().flushed >= common_end && f3.log().watermarks().flushed >= common_end
    })
    .await;
    let (n2_log, n3_log) = (Arc::clone(f2.log()), Arc::clone(f3.log()));
    f2.shutdown().await;
    f3.shutdown().await;
    for i in 0..200 {
        last = old_log.append(format!("divergent {i}").as_bytes())?;
    }
    old_log.commit(last, Durability::Local).await?;
    let err = old
        .commit(last, Durability::RemoteFlush)
        .timeout(Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::RemoteUnconfirmed { .. }), "{err}");
    let old_epoch = old.epoch();
    old.shutdown().await;
    Ok((old_log, [n2_log, n3_log], common_end, old_epoch))
}

/// n2, promoted over the dead n1: n1 comes back first, holding a tail n2 lacks, and is
/// refused while n2 is unconfirmed; n3 confirms n2, and n1's divergent tail is then cut
/// and undone in its embedder's state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_follower_leads_and_the_old_leader_rejoins_truncated() -> Result<(), Error> {
    let c = Cluster::new(1 << 20);
    let (old_log, [n2_log, n3_log], common_end, old_epoch) =
        old_leader_with_a_divergent_tail(&c).await?;

    // n2 is promoted: a new epoch at its end.
    let f2 = Follower::start(
        n2_log,
        c.security("n2"),
        c.follower_opts_to("n1", "127.0.0.1:9".parse().unwrap()),
        |_: &Record| {},
    )
    .expect("n2 as a follower");
    let new = f2
        .promote(c.security("n2"), any_one_leader())
        .await
        .expect("promote");
    assert!(new.epoch() > old_epoch);
    let new_log = Arc::clone(new.log());
    assert_eq!(
        new_log.end_lsn(),
        common_end,
        "the new leader has exactly what was acknowledged"
    );
    let mut last = Lsn::ZERO;
    for i in 0..300 {
        last = new_log.append(format!("new leader {i}").as_bytes())?;
    }
    // The old leader comes back as a follower of the new one first; its embedder state
    // already holds everything it wrote as leader. It holds records n2 lacks, and n2 is
    // not yet confirmed: it is refused (and retries).
    let embedder = Undoable::default();
    *embedder.state.lock().unwrap() = records(&old_log);
    let rejoined = Follower::start(
        Arc::clone(&old_log),
        c.security("n1"),
        walship_transport::FollowerOptions {
            apply_from: Some(old_log.end_lsn()),
            ..c.follower_opts_to("n2", new.local_addr().unwrap())
        },
        embedder.clone(),
    )
    .expect("n1 as a follower");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        embedder.truncations.lock().unwrap().is_empty(),
        "an unconfirmed leader cuts nothing"
    );
    // n3 follows it: with ANY 1 that confirms the new epoch (n3 holds nothing n2 lacks),
    // so n1's tail cannot have been acknowledged, and is cut when n1 comes back.
    let f3 = Follower::start(
        n3_log,
        c.security("n3"),
        c.follower_opts_to("n2", new.local_addr().unwrap()),
        |_: &Record| {},
    )
    .expect("n3 as a follower");
    new.commit(last, Durability::RemoteFlush).await?;
    // (Its applied position starts where its own writes ended, which may lie past `last`:
    // the cut is what shows it followed.)
    eventually(
        "n1 cut its tail and applied the new leader's records",
        WAIT,
        || !embedder.truncations.lock().unwrap().is_empty() && rejoined.applied() >= last,
    )
    .await;
    // Its divergent tail was cut at the end of the common history, undone in its state,
    // and the logs are now identical.
    assert_eq!(*embedder.truncations.lock().unwrap(), vec![common_end]);
    same_bytes(&new_log, &old_log);
    let state = embedder.state.lock().unwrap().clone();
    assert_eq!(state, records(&new_log));
    assert!(state.iter().all(|(_, d)| !d.starts_with(b"divergent")));
    assert_eq!(rejoined.status().epoch, new.epoch());
    assert!(new.fenced().is_none() && !new.yielded());
    rejoined.shutdown().await;
    f3.shutdown().await;
    new.shutdown().await;
    Ok(())
}

/// n2, promoted over n1, has not been confirmed by any follower when n1 comes back with
/// flushed records n2 lacks: records n1 may have acknowledged through a follower n2
/// never heard from. n2 refuses to cut them, and when no other follower confirms it
/// within `confirm_timeout`, it yields (steps down, fenced, `yielded`); n1's log is
/// untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unconfirmed_leader_yields_to_a_follower_with_more_flushed() -> Result<(), Error> {
    let c = Cluster::new(1 << 20);
    let (old_log, [n2_log, _], common_end, _) = old_leader_with_a_divergent_tail(&c).await?;
    let old_end = old_log.end_lsn();
    let f2 = Follower::start(
        n2_log,
        c.security("n2"),
        c.follower_opts_to("n1", "127.0.0.1:9".parse().unwrap()),
        |_: &Record| {},
    )
    .expect("n2 as a follower");
    let new = f2
        .promote(c.security("n2"), any_one_leader())
        .await
        .expect("promote");
    let lsn = new
        .log()
        .append(b"written before any follower confirmed the epoch")?;
    let rejoined = Follower::start(
        Arc::clone(&old_log),
        c.security("n1"),
        c.follower_opts_to("n2", new.local_addr().unwrap()),
        |_: &Record| {},
    )
    .expect("n1 as a follower");
    eventually("n2 yields", WAIT, || new.yielded()).await;
    let why = new.fenced().expect("a leader that yields is fenced");
    assert!(why.contains("yielding") && why.contains("n1"), "{why}");
    // Nothing remote can be confirmed there, and n1 kept everything.
    let err = new.commit(lsn, Durability::RemoteFlush).await.unwrap_err();
    assert!(matches!(err, Error::RemoteFenced { .. }), "{err}");
    rejoined.shutdown().await;
    assert_eq!(old_log.end_lsn(), old_end);
    assert!(records(&old_log)
        .iter()
        .any(|(_, d)| d.starts_with(b"divergent")));
    assert!(new.log().end_lsn() > common_end);
    new.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_leader_steps_down_when_it_meets_a_newer_epoch() -> Result<(), Error> {
    let c = Cluster::new(1 << 20);
    let (old_log, old, f2, f3) = three_nodes(&c);
    let lsn = old_log.append(b"before the failover")?;
    old.commit(lsn, Durability::RemoteFlush).await?;
    eventually("both followers have it", WAIT, || {
        f2.applied() >= lsn && f3.applied() >= lsn
    })
    .await;

    // n2 is promoted while n1 still runs (say, partitioned from n2); n3 follows n2 and
    // durably records the new epoch.
    let new = f2
        .promote(c.security("n2"), any_one_leader())
        .await
        .expect("promote");
    let n3_log = Arc::clone(f3.log());
    f3.shutdown().await;
    let f3 = Follower::start(
        Arc::clone(&n3_log),
        c.security("n3"),
        c.follower_opts_to("n2", new.local_addr().unwrap()),
        |_: &Record| {},
    )
    .expect("n3 follows n2");
    let l2 = new.log().append(b"epoch of the new leader")?;
    new.commit(l2, Durability::RemoteFlush).await?;
    f3.shutdown().await;

    // The old leader still takes writes, but can confirm none remotely.
    let stale = old_log.append(b"written to the stale leader")?;
    let waiting = tokio::spawn(old.commit(stale, Durability::RemoteFlush));

    // n3, restarted (its seen epoch comes from disk), is pointed at the old leader by
    // mistake: it refuses it, and the old leader steps down at once.
    let (n3_applied, applied_by_n3) = common::recorder();
    let f3 = Follower::start(
        Arc::clone(&n3_log),
        c.security("n3"),
        walship_transport::FollowerOptions {
            reconnect_min: Duration::from_secs(30),
            apply_from: Some(n3_log.end_lsn()),
            ..c.follower_opts_to("n1", old.local_addr().unwrap())
        },
        applied_by_n3,
    )
    .expect("n3 restarted");
    let err = waiting.await.unwrap().unwrap_err();
    assert!(matches!(err, Error::RemoteFenced { .. }), "{err}");
    assert!(err.to_string().contains("newer than this leader"), "{err}");
    let st = old.status();
    assert_eq!(st.role, Role::Fenced);
    assert!(st.fenced.is_some());
    // Nothing of the stale leader reached n3.
    assert_eq!(n3_log.end_lsn(), new.log().end_lsn());
    assert!(n3_applied.lock().unwrap().is_empty());
    // The fenced leader takes no more writes, and confirms nothing remotely.
    let err = old_log.append(b"after stepping down").unwrap_err();
    assert!(matches!(err, Error::Sealed { .. }), "{err}");
    let err = old
        .commit(stale, Durability::RemoteWrite)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::RemoteFenced { .. }), "{err}");
    f3.shutdown().await;
    old.shutdown().await;
    new.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_your_writes_on_a_lagging_follower() -> Result<(), Error> {
    let c = Cluster::new(1 << 20);
    let leader = c.leader(
        c.log("leader"),
        SyncPolicy::First {
            k: 1,
            of: vec!["fast".into()],
        },
    );
    let (fast, _) = c.follower("fast", c.log("fast"), &leader);
    // The slow follower's embedder takes 2 ms per record.
    let seen: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let s = Arc::clone(&seen);
    let slow = Follower::start(
        c.log("slow"),
        c.security("slow"),
        c.follower_opts(&leader),
        move |r: &Record| {
            std::thread::sleep(Duration::from_millis(2));
            s.lock().unwrap().push(r.data.to_vec());
        },
    )
    .expect("slow follower");
    let mut token = Lsn::ZERO;
    for i in 0..200 {
        token = leader.log().append(format!("k{i}=v{i}").as_bytes())?;
    }
    // Committed at RemoteFlush (confirmed by "fast"); the client carries `token`.
    leader.commit(token, Durability::RemoteFlush).await?;
    // A read on "slow" with too short a wait fails clearly, naming the token...
    let err = slow
        .wait_for_applied(token, Duration::from_millis(20))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Timeout { lsn, .. } if lsn == token),
        "{err}"
    );
    // ...and with enough time it returns once the write is visible there.
    slow.wait_for_applied(token, WAIT).await?;
    assert_eq!(
        seen.lock().unwrap().last().map(Vec::as_slice),
        Some(&b"k199=v199"[..])
    );
    fast.shutdown().await;
    slow.shutdown().await;
    leader.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planned_switchover_loses_no_write_even_at_async() -> Result<(), Error> {
    let c = Cluster::new(1 << 20);
    let (old_log, old, f2, f3) = three_nodes(&c);
    // A writer acknowledges at Async as fast as it can, until the log refuses it.
    let writer = {
        let log = Arc::clone(&old_log);
        tokio::task::spawn_blocking(move || {
            let mut acked = Vec::new();
            for i in 0u64.. {
                let data = format!("async write {i}");
                match log.append(data.as_bytes()) {
                    Ok(lsn) => acked.push((lsn, data.into_bytes())),
                    Err(Error::Sealed { .. }) => return acked,
                    Err(e) => panic!("unexpected append error: {e}"),
                }
            }
            acked
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let end = old.switchover_to("n2", WAIT).await.expect("switchover");
    let acked = writer.await.unwrap();
    assert!(acked.len() > 100, "the writer wrote while streaming");
    assert_eq!(old.status().role, Role::Fenced);
    assert_eq!(old_log.end_lsn(), end);
    let new = f2
        .promote(c.security("n2"), any_one_leader())
        .await
        .expect("promote");
    // Every acknowledged write is on the new leader, with nothing after it.
    assert_eq!(new.log().end_lsn(), end);
    let mut held = records(new.log()).into_iter();
    for (lsn, data) in &acked {
        assert_eq!(held.next().as_ref(), Some(&(*lsn, data.clone())));
    }
    // The old leader rejoins without losing or truncating anything.
    let n3_log = Arc::clone(f3.log());
    f3.shutdown().await;
    let f3 = Follower::start(
        n3_log,
        c.security("n3"),
        c.follower_opts_to("n2", new.local_addr().unwrap()),
        |_: &Record| {},
    )
    .expect("n3 follows n2");
    let rejoined = Follower::start(
        Arc::clone(&old_log),
        c.security("n1"),
        walship_transport::FollowerOptions {
            apply_from: Some(end),
            ..c.follower_opts_to("n2", new.local_addr().unwrap())
        },
        |_: &Record| {},
    )
    .expect("n1 follows n2");
    let next = new.log().append(b"first write of the new leader")?;
    new.commit(next, Durability::RemoteFlush).await?;
    eventually("both follow", WAIT, || {
        rejoined.applied() >= next && f3.applied() >= next
    })
    .await;
    same_bytes(new.log(), &old_log);
    same_bytes(new.log(), f3.log());
    rejoined.shutdown().await;
    f3.shutdown().await;
    new.shutdown().await;
    old.shutdown().await;
    Ok(())
}
