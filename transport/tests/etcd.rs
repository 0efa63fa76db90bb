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
    use walship_transport::{LeaderOptions, Node, NodeOptions, NodeRole, SyncPolicy};

    let Some(etcd) = Etcd::start() else { return };
    let c = common::Cluster::new(1 << 20);
    let mut nodes = Vec::new();
    for id in ["n1", "n2", "n3"] {
        let opts = NodeOptions {
            leader: LeaderOptions {
                sync: SyncPolicy::Any {
                    k: 1,
                    of: vec!["*".into()],
                },
                remote_commit_timeout: Duration::from_secs(1),
                ..LeaderOptions::default()
            },
            follower: c.follower_opts_to("", "127.0.0.1:1".parse().unwrap()),
            check_interval: Duration::from_millis(50),
            settle: Duration::from_millis(300),
            election_quorum: 2,
            ..NodeOptions::default()
        };
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
