//! Nodes driven by a coordinator, in one process over real QUIC: an operator's promotion
//! moving the whole cluster, and a partitioned leader that acknowledges nothing while
//! another is promoted, then steps down and loses its divergent tail when the partition
//! heals.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{eventually, records, same_bytes, Cluster, Fault, Relay, Undoable};
use walship_engine::{Durability, Epoch, Error, Log};
use walship_transport::coordinator::{
    Coordinator, CoordinatorError, LeaderInfo, MemberInfo, StaticCoordinator,
};
use walship_transport::{LeaderOptions, Node, NodeOptions, NodeRole, SyncPolicy};

const WAIT: Duration = Duration::from_secs(30);

fn options(c: &Cluster, advertise: Option<String>) -> NodeOptions {
    NodeOptions {
        leader: LeaderOptions {
            sync: SyncPolicy::Any {
                k: 1,
                of: vec!["*".into()],
            },
            remote_commit_timeout: Duration::from_secs(2),
            ..LeaderOptions::default()
        },
        follower: c.follower_opts_to("", "127.0.0.1:1".parse().unwrap()),
        advertise,
        check_interval: Duration::from_millis(50),
        settle: Duration::from_millis(200),
        election_quorum: 2,
        ..NodeOptions::default()
    }
}

fn configured(leader: &str) -> StaticCoordinator {
    StaticCoordinator::new(Some(LeaderInfo {
        node_id: leader.into(),
        addr: String::new(),
        epoch: Epoch::ZERO,
    }))
}

fn start(
    c: &Cluster,
    id: &str,
    coordinator: impl Coordinator + 'static,
    opts: NodeOptions,
) -> (Node, Arc<Log>, Undoable) {
    let log = c.log(id);
    let state = Undoable::default();
    let node = Node::start(
        Arc::clone(&log),
        c.security(id),
        coordinator,
        opts,
        state.clone(),
    )
    .expect("start node");
    (node, log, state)
}

fn is_leader(r: &NodeRole) -> bool {
    matches!(r, NodeRole::Leader { .. })
}

fn follows(leader: &'static str) -> impl Fn(&NodeRole) -> bool {
    move |r| matches!(r, NodeRole::Follower { leader: l, .. } if l == leader)
}

/// Appends `n` records through `node` and commits each at `RemoteFlush`; returns them.
async fn write(node: &Node, tag: &str, n: usize) -> Vec<(walship_engine::Lsn, Vec<u8>)> {
    let mut acked = Vec::new();
    for i in 0..n {
        let data = format!("{tag}-{i}").into_bytes();
        let lsn = node.log().append(&data).expect("append");
        node.commit(lsn, Durability::RemoteFlush)
            .await
            .expect("commit");
        acked.push((lsn, data));
    }
    acked
}

fn assert_holds(log: &Log, acked: &[(walship_engine::Lsn, Vec<u8>)]) {
    let have: std::collections::HashMap<_, _> = records(log).into_iter().collect();
    for (lsn, data) in acked {
        assert_eq!(have.get(lsn), Some(data), "acknowledged record at {lsn}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_promotion_moves_the_cluster() -> Result<(), Error> {
    let c = Cluster::new(1 << 20);
    let coord = configured("n1");
    let (n1, l1, _) = start(&c, "n1", coord.clone(), options(&c, None));
    let (n2, l2, s2) = start(&c, "n2", coord.clone(), options(&c, None));
    let (n3, l3, s3) = start(&c, "n3", coord.clone(), options(&c, None));
    n1.wait_for_role(is_leader, WAIT).await.unwrap();
    n2.wait_for_role(follows("n1"), WAIT).await.unwrap();
    n3.wait_for_role(follows("n1"), WAIT).await.unwrap();
    assert!(
        matches!(l2.append(b"x"), Err(Error::Sealed { .. })),
        "a follower's log takes no local appends"
    );
    let mut acked = write(&n1, "first", 200).await;
    // As an operator would check `walship lag` first: ANY 1 acknowledged each write once
    // one follower flushed it, and a promoted follower that lacks one loses it.
    let end = l1.end_lsn();
    eventually("n2 and n3 flushed everything n1 acknowledged", WAIT, || {
        l2.watermarks().flushed >= end && l3.watermarks().flushed >= end
    })
    .await;

    let epoch = n2.promote().await.expect("promote");
    // The role is `Leader` (and the log takes appends) once a follower confirmed the epoch.
    n2.wait_for_role(|r| *r == NodeRole::Leader { epoch }, WAIT)
        .await
        .unwrap();
    n1.wait_for_role(follows("n2"), WAIT).await.unwrap();
    n3.wait_for_role(follows("n2"), WAIT).await.unwrap();
    acked.extend(write(&n2, "second", 200).await);
    let token = acked.last().unwrap().0;
    n3.wait_for_applied(token, WAIT).await?;
    n1.wait_for_applied(token, WAIT).await?;
    // The same write as a read token (its epoch with it): answered on both followers.
    let read = n2.read_token(token).expect("n2's log holds its own write");
    assert_eq!(read.epoch, epoch);
    assert_eq!(
        read.to_string().parse::<walship_transport::ReadToken>(),
        Ok(read)
    );
    n3.wait_for_token(read, WAIT).await?;
    n1.wait_for_token(read, WAIT).await?;
    // A token naming another epoch at that position names another write: n1 applied
    // past the LSN, yet does not answer (a bare LSN would).
    let other = walship_transport::ReadToken {
        epoch: walship_engine::Epoch::new(epoch.get() + 7),
        lsn: token,
    };
    let err = n1
        .wait_for_token(other, Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    n1.wait_for_applied(token, Duration::from_millis(200))
        .await?;

    assert_holds(&l2, &acked);
    same_bytes(&l2, &l1);
    same_bytes(&l2, &l3);
    // n2's embedder applied the first leader's records as a follower, then wrote its
    // own; n3's saw all of them.
    assert_eq!(s2.state.lock().unwrap().len(), 200);
    assert_eq!(*s3.state.lock().unwrap(), records(&l3));
    let status = n2.status();
    assert_eq!(status.leading.expect("leader status").followers.len(), 2);
    for n in [n1, n2, n3] {
        n.shutdown().await;
    }
    Ok(())
}

/// A coordinator that an injected partition makes unreachable.
struct Partitionable {
    inner: StaticCoordinator,
    cut: Arc<AtomicBool>,
}

impl Partitionable {
    fn check(&self) -> Result<(), CoordinatorError> {
        if self.cut.load(Ordering::SeqCst) {
            return Err(CoordinatorError::Unavailable {
                endpoint: "static".into(),
                reason: "partitioned (injected)".into(),
            });
        }
        Ok(())
    }
}

impl Coordinator for Partitionable {
    async fn publish(&mut self, me: &MemberInfo) -> Result<(), CoordinatorError> {
        self.check()?;
        self.inner.publish(me).await
    }
    async fn members(&mut self) -> Result<Vec<MemberInfo>, CoordinatorError> {
        self.check()?;
        self.inner.members().await
    }
    async fn leader(&mut self) -> Result<Option<LeaderInfo>, CoordinatorError> {
        self.check()?;
        self.inner.leader().await
    }
    async fn campaign(&mut self, me: &MemberInfo) -> Result<Option<Epoch>, CoordinatorError> {
        self.check()?;
        self.inner.campaign(me).await
    }
    async fn takeover(&mut self, me: &MemberInfo) -> Result<Epoch, CoordinatorError> {
        self.check()?;
        self.inner.takeover(me).await
    }
    async fn resign(&mut self, node_id: &str) -> Result<(), CoordinatorError> {
        self.check()?;
        self.inner.resign(node_id).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_leader_acknowledges_nothing_and_is_repaired_when_it_heals(
) -> Result<(), Error> {
    let c = Cluster::new(1 << 20);
    let coord = configured("n1");
    // Followers reach n1 only through the relay.
    let listen = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let relay = Relay::start(listen.local_addr().unwrap()).await;
    let mut o1 = options(&c, Some(relay.addr.to_string()));
    o1.leader.socket = Some(listen);
    let cut = Arc::new(AtomicBool::new(false));
    let p1 = Partitionable {
        inner: coord.clone(),
        cut: Arc::clone(&cut),
    };
    let (n1, l1, s1) = start(&c, "n1", p1, o1);
    let (n2, l2, _) = start(&c, "n2", coord.clone(), options(&c, None));
    let (n3, l3, _) = start(&c, "n3", coord.clone(), options(&c, None));
    n1.wait_for_role(is_leader, WAIT).await.unwrap();
    n2.wait_for_role(follows("n1"), WAIT).await.unwrap();
    n3.wait_for_role(follows("n1"), WAIT).await.unwrap();
    let mut acked = write(&n1, "before", 100).await;
    // ANY 1 acknowledges once one follower flushed; the operator below promotes n2, so
    // let both hold everything first (promoting a follower that lacks acknowledged writes
    // loses them, here as in PostgreSQL: the operator's choice, not what this tests).
    let end = l1.end_lsn();
    eventually("n2 and n3 flushed everything n1 acknowledged", WAIT, || {
        l2.watermarks().flushed >= end && l3.watermarks().flushed >= end
    })
    .await;

    // n1 loses its followers and the coordinator; it still takes local appends.
    relay.set(Fault::Blackhole);
    cut.store(true, Ordering::SeqCst);
    let mut divergent = Vec::new();
    for i in 0..50 {
        let data = format!("divergent-{i}").into_bytes();
        let lsn = l1.append(&data)?;
        divergent.push((lsn, data, n1.commit(lsn, Durability::RemoteFlush)));
    }
    // Meanwhile the operator promotes n2, which n3 follows.
    n2.promote().await.expect("promote n2");
    n3.wait_for_role(follows("n2"), WAIT).await.unwrap();
    acked.extend(write(&n2, "after", 100).await);

    let mut refused = 0;
    for (lsn, _, commit) in divergent.iter_mut() {
        match commit.await {
            Err(Error::RemoteUnconfirmed { .. } | Error::RemoteFenced { .. }) => refused += 1,
            other => panic!("the cut-off leader acknowledged {lsn} at RemoteFlush: {other:?}"),
        }
    }
    assert_eq!(refused, 50);
    assert!(
        is_leader(&n1.role()),
        "without the coordinator, n1 cannot know"
    );

    // Healing: n1 hears from the coordinator, steps down, follows n2, is truncated.
    cut.store(false, Ordering::SeqCst);
    relay.set(Fault::Pass);
    n1.wait_for_role(follows("n2"), WAIT).await.unwrap();
    let end = l2.end_lsn();
    eventually("n1 and n3 flushed everything", WAIT, || {
        l1.watermarks().flushed == end && l3.watermarks().flushed == end
    })
    .await;
    same_bytes(&l2, &l1);
    same_bytes(&l2, &l3);
    assert_holds(&l1, &acked);
    let kept = records(&l1);
    for (_, data, _) in &divergent {
        assert!(
            !kept.iter().any(|(_, d)| d == data),
            "divergent record {} survived",
            String::from_utf8_lossy(data)
        );
    }
    assert_eq!(
        s1.truncations.lock().unwrap().len(),
        1,
        "the embedder was told once to undo the divergent tail"
    );
    for n in [n1, n2, n3] {
        n.shutdown().await;
    }
    Ok(())
}

/// An embedder that takes `delay` per record, so a follower's apply lags its log.
#[derive(Clone)]
struct Slow(Undoable, Duration);

impl walship_transport::Apply for Slow {
    fn apply(&mut self, r: &walship_engine::Record) -> Result<(), walship_transport::ApplyError> {
        std::thread::sleep(self.1);
        self.0.apply(r)
    }

    fn truncated(&mut self, to: walship_engine::Lsn) -> Result<(), walship_transport::ApplyError> {
        self.0.truncated(to)
    }
}

/// A follower stops applying when it stops following, and may have flushed more than it
/// applied: promoted then, it must apply the rest before it leads, or its embedder never
/// sees those records (its own writes as leader count as applied). Found building
/// walship-kv, whose state is what it applied. Seen failing without `catch_up` (n2's
/// embedder held 4 of the 300 records when it led), and with 304 when the node read the
/// follower's applied position before its apply thread stopped (records applied twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_follower_applies_what_it_flushed_before_it_leads() -> Result<(), Error> {
    let c = Cluster::new(1 << 20);
    let coord = configured("n1");
    let (n1, _l1, _) = start(&c, "n1", coord.clone(), options(&c, None));
    let slow = Slow(Undoable::default(), Duration::from_millis(3));
    let l2 = c.log("n2");
    let n2 = Node::start(
        Arc::clone(&l2),
        c.security("n2"),
        coord.clone(),
        options(&c, None),
        slow.clone(),
    )
    .expect("start n2");
    let (n3, _l3, _) = start(&c, "n3", coord.clone(), options(&c, None));
    n1.wait_for_role(is_leader, WAIT).await.unwrap();
    n2.wait_for_role(follows("n1"), WAIT).await.unwrap();
    n3.wait_for_role(follows("n1"), WAIT).await.unwrap();
    let lsns: Vec<_> = (0..300)
        .map(|i| n1.log().append(format!("r{i}").as_bytes()).expect("append"))
        .collect();
    let last = *lsns.last().unwrap();
    n1.commit(last, Durability::Local).await?;
    eventually("n2 flushed every record", WAIT, || {
        l2.watermarks().flushed >= last
    })
    .await;
    let applied = slow.0.state.lock().unwrap().len();
    assert!(
        applied < 300,
        "n2 applied {applied} already: the test needs a lagging apply"
    );

    let epoch = n2.promote().await.expect("promote");
    n2.wait_for_role(|r| *r == NodeRole::Leader { epoch }, WAIT)
        .await
        .unwrap();
    let state = slow.0.state.lock().unwrap().clone();
    assert_eq!(
        state.len(),
        300,
        "n2 led with {} of 300 records applied",
        state.len()
    );
    assert_eq!(state.last().map(|(l, _)| *l), Some(last));
    assert!(
        state.windows(2).all(|w| w[0].0 < w[1].0),
        "each record applied once, in order"
    );
    for n in [n1, n2, n3] {
        n.shutdown().await;
    }
    Ok(())
}

/// Every node learns how much of its log is committed (what a sync quorum flushed, so
/// what no failover cuts): the leader from its followers' acks, the followers from the
/// leader's frames, and only within what each holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_learns_the_committed_point_of_its_log() -> Result<(), Error> {
    let c = Cluster::new(1 << 20);
    let coord = configured("n1");
    let (n1, _l1, _) = start(&c, "n1", coord.clone(), options(&c, None));
    let (n2, l2, _) = start(&c, "n2", coord.clone(), options(&c, None));
    let (n3, l3, _) = start(&c, "n3", coord.clone(), options(&c, None));
    n1.wait_for_role(is_leader, WAIT).await.unwrap();
    n2.wait_for_role(follows("n1"), WAIT).await.unwrap();
    n3.wait_for_role(follows("n1"), WAIT).await.unwrap();
    let acked = write(&n1, "c", 50).await;
    let last = acked.last().map(|(l, _)| *l).unwrap();
    n1.commit(last, Durability::RemoteFlush).await?;
    assert!(n1.committed() >= last, "the leader: {}", n1.committed());
    // The follower hears of it in the next frame (a heartbeat when no write follows).
    for (n, log) in [(&n2, &l2), (&n3, &l3)] {
        eventually("a follower learned the commit", WAIT, || {
            n.committed() >= last
        })
        .await;
        assert!(n.committed() <= log.watermarks().flushed);
        let status = n.status().following.expect("following");
        assert!(status.leader_committed >= last);
    }
    for n in [n1, n2, n3] {
        n.shutdown().await;
    }
    Ok(())
}

/// A node whose embedder holds a state its log does not continue (a snapshot bootstrap
/// cut short by a crash: the log restarted, the snapshot ahead of it) does not lead,
/// even when named leader: it would write after a state no other node has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_state_its_log_does_not_continue_does_not_lead() {
    let c = Cluster::new(1 << 20);
    let opts = NodeOptions {
        apply_from: Some(walship_engine::Lsn::new(5 << 20)),
        ..options(&c, None)
    };
    let (n1, log, _) = start(&c, "n1", configured("n1"), opts);
    eventually("the refusal to lead", WAIT, || {
        n1.status()
            .last_error
            .is_some_and(|e| e.contains("bootstrapped from a leader's snapshot"))
    })
    .await;
    assert!(!is_leader(&n1.status().role));
    assert_eq!(log.end_lsn(), log.start_lsn(), "nothing was written");
    n1.shutdown().await;
}
