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
