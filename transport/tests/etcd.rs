//! The etcd coordinator against a real etcd (Debian's `etcd-server`), started on loopback
//! ports with a temporary data directory and killed at the end. Where `etcd` is not
//! installed, each test says so and returns without checking anything.

#![cfg(feature = "etcd")]

mod common;

use std::time::{Duration, Instant};

use common::etcd::Etcd;

use walship_engine::{Epoch, Lsn};
use walship_transport::coordinator::{Coordinator, MemberInfo};

const TTL: Duration = Duration::from_secs(2);

fn member(id: &str, flushed: u64, epoch: u64) -> MemberInfo {
    MemberInfo {
        node_id: id.into(),
        addr: format!("127.0.0.1:7{}", id.len()),
        epoch: Epoch::new(epoch),
        log_epoch: Epoch::new(epoch),
        flushed: Lsn::new(flushed),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_most_caught_up_member_wins_and_a_dead_leader_is_replaced_after_its_lease() {
    let Some(etcd) = Etcd::start() else { return };
    let mut a = etcd.connect("c1", TTL).await;
    let mut b = etcd.connect("c1", TTL).await;
    let mut c = etcd.connect("c1", TTL).await;
    let (ma, mb, mc) = (
        member("a", 100, 0),
        member("b", 900, 0),
        member("c", 500, 0),
    );
    a.publish(&ma).await.unwrap();
    b.publish(&mb).await.unwrap();
    c.publish(&mc).await.unwrap();
    // Only the most caught-up member can win; the others stand back.
    assert_eq!(a.campaign(&ma).await.unwrap(), None);
    assert_eq!(c.campaign(&mc).await.unwrap(), None);
    assert_eq!(b.campaign(&mb).await.unwrap(), Some(Epoch::new(1)));
    // Exactly one leader, and everyone sees it.
    assert_eq!(b.campaign(&mb).await.unwrap(), None);
    let l = a.leader().await.unwrap().expect("a leader");
    assert_eq!((l.node_id.as_str(), l.epoch), ("b", Epoch::new(1)));
    assert_eq!(a.members().await.unwrap().len(), 3);

    // b dies (stops renewing, as a killed process would). Its keys expire with the
    // lease; c, now the most caught up, takes over in the next epoch.
    let died = Instant::now();
    b.abandon();
    let mut won = None;
    while won.is_none() {
        assert!(died.elapsed() < Duration::from_secs(30), "no takeover");
        tokio::time::sleep(Duration::from_millis(50)).await;
        c.publish(&mc).await.unwrap();
        won = c.campaign(&mc).await.unwrap();
        assert_eq!(a.campaign(&ma).await.unwrap(), None, "a is behind c");
    }
    let detection = died.elapsed();
    assert_eq!(won, Some(Epoch::new(2)));
    eprintln!("leader lease {TTL:?}: takeover {detection:?} after the leader stopped renewing");
    assert!(
        detection >= TTL / 2,
        "not before the lease could expire: {detection:?}"
    );
    let l = a.leader().await.unwrap().expect("a leader");
    assert_eq!((l.node_id.as_str(), l.epoch), ("c", Epoch::new(2)));
    a.close().await.unwrap();
    c.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_candidates_elect_one_leader_per_epoch() {
    let Some(etcd) = Etcd::start() else { return };
    // Nobody has published a position yet, so every candidate believes it is best placed
    // and all of them race for the same compare-and-swap.
    let mut coords = Vec::new();
    for _ in 0..4 {
        coords.push(etcd.connect("c1", TTL).await);
    }
    let ids = ["n1", "n2", "n3", "n4"];
    let mut tasks = Vec::new();
    for (mut c, id) in coords.into_iter().zip(ids) {
        tasks.push(tokio::spawn(async move {
            let won = c.campaign(&member(id, 700, 3)).await.unwrap();
            (c, id, won)
        }));
    }
    let mut winners = Vec::new();
    let mut coords = Vec::new();
    for t in tasks {
        let (c, id, won) = t.await.unwrap();
        if let Some(e) = won {
            winners.push((id, e));
        }
        coords.push(c);
    }
    // Exactly one winner, in the epoch after every epoch the candidates had seen.
    assert_eq!(winners.len(), 1, "{winners:?}");
    assert_eq!(winners[0].1, Epoch::new(4));
    for c in coords {
        c.close().await.unwrap();
    }
}

/// Options of the three-node etcd clusters below: ANY 1 (*), checks every 50 ms, an
/// election needing two live members.
fn node_opts(
    c: &common::Cluster,
    remote_commit_timeout: Duration,
) -> walship_transport::NodeOptions {
    use walship_transport::{LeaderOptions, NodeOptions, SyncPolicy};
    NodeOptions {
        leader: LeaderOptions {
            sync: SyncPolicy::Any {
                k: 1,
                of: vec!["*".into()],
            },
            remote_commit_timeout,
            ..LeaderOptions::default()
        },
        follower: c.follower_opts_to("", "127.0.0.1:1".parse().unwrap()),
        check_interval: Duration::from_millis(50),
        settle: Duration::from_millis(300),
        election_quorum: 2,
        ..NodeOptions::default()
    }
}

/// Sends `signal` (`STOP`, `CONT`) to etcd: a frozen etcd answers no renewal.
fn signal(etcd: &Etcd, signal: &str) {
    let ok = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &etcd.child.id().to_string()])
        .status()
        .expect("kill(1)")
        .success();
    assert!(ok, "kill -{signal}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_etcd_fences_itself_before_its_lease_can_expire() {
    use std::sync::Arc;
    use walship_engine::{Durability, Error, Record};
    use walship_transport::{Node, NodeRole};

    let Some(etcd) = Etcd::start() else { return };
    let c = common::Cluster::new(1 << 20);
    let mut nodes = Vec::new();
    for id in ["n1", "n2", "n3"] {
        let opts = node_opts(&c, Duration::from_secs(1));
        let coordinator = etcd.connect("fence", TTL).await;
        let node = Node::start(
            c.log(id),
            c.security(id),
            coordinator,
            opts,
            |_: &Record| {},
        )
        .expect("node");
        nodes.push(node);
    }
    let leader = loop {
        if let Some(n) = nodes
            .iter()
            .find(|n| matches!(n.role(), NodeRole::Leader { .. }))
        {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let log = Arc::clone(leader.log());
    for _ in 0..20 {
        let lsn = log.append(b"before").unwrap();
        leader.commit(lsn, Durability::RemoteFlush).await.unwrap();
    }

    // etcd freezes: no renewal gets through. The leader must step down by itself
    // before the lease it last renewed could run out (TTL after that renewal).
    signal(&etcd, "STOP");
    let frozen = Instant::now();
    leader
        .wait_for_role(|r| !matches!(r, NodeRole::Leader { .. }), TTL * 2)
        .await
        .expect("the cut-off leader steps down");
    let stepped_down = frozen.elapsed();
    assert!(
        stepped_down < TTL,
        "stepped down {stepped_down:?} after etcd froze; its lease could have expired by then"
    );
    match log.append(b"after") {
        Err(Error::Sealed { .. }) => {}
        other => panic!("a fenced leader took a write: {other:?}"),
    }
    eprintln!("etcd frozen: the leader stepped down after {stepped_down:?} (lease {TTL:?})");

    // etcd thaws: members get new leases, and one of them leads again.
    signal(&etcd, "CONT");
    let deadline = Instant::now() + Duration::from_secs(30);
    let leader = loop {
        assert!(Instant::now() < deadline, "no leader after etcd came back");
        if let Some(n) = nodes
            .iter()
            .find(|n| matches!(n.role(), NodeRole::Leader { .. }))
        {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut ok = false;
    while !ok {
        assert!(
            Instant::now() < deadline,
            "the new leader never acknowledged"
        );
        let lsn = leader.log().append(b"again");
        if let Ok(lsn) = lsn {
            ok = leader.commit(lsn, Durability::RemoteFlush).await.is_ok();
        }
    }
    for n in nodes {
        n.shutdown().await;
    }
}

/// Issue 11, "epochs only from the authority": a member whose seen-epoch file says
/// 2^64 - 1 (planted, or left by a bug) made a fresh leader step down 7 times in 6 s,
/// because followers' claims were believed. With etcd, a claim is checked against the
/// epoch etcd granted: the leader keeps leading and keeps confirming commits through
/// the honest follower, and the claimant is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_claiming_an_epoch_etcd_never_granted_moves_nobody() {
    use walship_engine::{Durability, Record};
    use walship_transport::{Node, NodeRole};

    let Some(etcd) = Etcd::start() else { return };
    let c = common::Cluster::new(1 << 20);
    // n3 claims the last epoch there is.
    let n3 = c.log("n3");
    let text = format!("seen {}\n", u64::MAX);
    let forged = format!("{text}crc32c {:08x}\n", crc32c::crc32c(text.as_bytes()));
    walship_engine::atomic_write(
        n3.dir(),
        walship_transport::SEEN_EPOCH_FILE,
        forged.as_bytes(),
    )
    .unwrap();
    let mut nodes = Vec::new();
    for (id, log) in [("n1", c.log("n1")), ("n2", c.log("n2")), ("n3", n3)] {
        let opts = node_opts(&c, Duration::from_secs(2));
        let coordinator = etcd.connect("forged", TTL).await;
        nodes.push(
            Node::start(log, c.security(id), coordinator, opts, |_: &Record| {}).expect("node"),
        );
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let leader = loop {
        assert!(Instant::now() < deadline, "no leader");
        if let Some(n) = nodes
            .iter()
            .find(|n| matches!(n.role(), NodeRole::Leader { .. }))
        {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_ne!(
        leader.node_id(),
        "n3",
        "n3 can take no epoch after the last"
    );
    let NodeRole::Leader { epoch } = leader.role() else {
        unreachable!()
    };
    assert!(
        epoch.get() < 10,
        "the leader's epoch is one etcd granted: {epoch}"
    );
    // For 6 s the leader stays put and confirms RemoteFlush commits.
    let changes = leader.role_changes();
    let watched = Instant::now();
    let mut commits = 0;
    while watched.elapsed() < Duration::from_secs(6) {
        let lsn = leader.log().append(b"x").unwrap();
        leader
            .commit(lsn, Durability::RemoteFlush)
            .await
            .expect("the leader keeps confirming commits");
        commits += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !changes.has_changed().unwrap_or(true),
        "the leader changed role: {:?}",
        leader.role()
    );
    assert_eq!(leader.role(), NodeRole::Leader { epoch });
    eprintln!("forged epoch 2^64-1: the leader stayed, {commits} RemoteFlush commits in 6 s");
    for n in nodes {
        n.shutdown().await;
    }
}

/// A leader that claims an epoch etcd never granted (a rogue or misconfigured node with
/// a member's certificate) is not believed by a follower that verifies: the follower
/// neither records the epoch as seen nor appends what it ships.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_does_not_believe_a_leader_of_an_ungranted_epoch() {
    use walship_engine::Durability;
    use walship_transport::coordinator::Coordinator;
    use walship_transport::{Follower, LeaderOptions};

    let Some(etcd) = Etcd::start() else { return };
    let c = common::Cluster::new(1 << 20);
    let coordinator = etcd.connect("rogue", TTL).await;
    let rogue = c.leader_with(
        c.log("leader"),
        LeaderOptions {
            epoch: Some(Epoch::new(1000)),
            ..LeaderOptions::default()
        },
    );
    let lsn = rogue.log().append(b"from a rogue").unwrap();
    rogue.log().commit(lsn, Durability::Local).await.unwrap();
    let log = c.log("n2");
    let mut opts = c.follower_opts(&rogue);
    opts.epoch_authority = coordinator.epoch_authority();
    let f = Follower::start(
        log.clone(),
        c.security("n2"),
        opts,
        |_: &walship_engine::Record| {},
    )
    .unwrap();
    common::eventually(
        "the follower refuses the rogue",
        Duration::from_secs(10),
        || {
            f.status()
                .last_error
                .is_some_and(|e| e.contains("epoch 1000 was never granted"))
        },
    )
    .await;
    assert_eq!(log.end_lsn(), log.start_lsn(), "nothing appended");
    assert!(f.status().epoch < Epoch::new(1000), "not recorded as seen");
    f.shutdown().await;
    rogue.shutdown().await;
}

/// The roster: written once from the configuration, then etcd's is the membership; only
/// roster members are listed as live members and may campaign.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_roster_decides_who_is_a_member() {
    use std::collections::BTreeSet;
    use walship_transport::coordinator::CoordinatorError;

    let Some(etcd) = Etcd::start() else { return };
    let set = |ids: &[&str]| ids.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    let mut a = etcd.connect("roster", TTL).await;
    let mut b = etcd.connect("roster", TTL).await;
    assert_eq!(
        a.bootstrap_roster(&set(&["n1", "n2", "n3"])).await.unwrap(),
        set(&["n1", "n2", "n3"])
    );
    // A second member's configuration does not replace it.
    assert_eq!(
        b.bootstrap_roster(&set(&["n1", "n9"])).await.unwrap(),
        set(&["n1", "n2", "n3"])
    );
    // n9 publishes a long log: it is neither listed nor may it campaign.
    b.publish(&member("n9", 1 << 40, 0)).await.unwrap();
    a.publish(&member("n1", 100, 0)).await.unwrap();
    let live: Vec<String> = a
        .members()
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.node_id)
        .collect();
    assert_eq!(live, ["n1"]);
    assert!(matches!(
        b.campaign(&member("n9", 1 << 40, 0)).await,
        Err(CoordinatorError::NotMember { .. })
    ));
    assert_eq!(
        a.campaign(&member("n1", 100, 0)).await.unwrap(),
        Some(Epoch::new(1))
    );
    a.close().await.unwrap();
    b.close().await.unwrap();
}
