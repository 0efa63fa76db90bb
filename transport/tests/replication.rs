//! A leader and followers over real QUIC on loopback, in one process: streaming,
//! catch-up from disk, retention slots.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{eventually, records, same_bytes, Cluster, Fault, Relay};
use walship_engine::{Durability, Lsn};
use walship_transport::status::StreamState;
use walship_transport::{LeaderOptions, SyncPolicy};

const WAIT: Duration = Duration::from_secs(60);

fn any_one() -> SyncPolicy {
    SyncPolicy::Any {
        k: 1,
        of: vec!["*".into()],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_followers_replay_100k_remote_flush_commits_byte_for_byte() {
    const WRITERS: usize = 64;
    const RECORDS: usize = 100_000;
    let c = Cluster::new(1 << 20);
    let leader = Arc::new(c.leader(
        c.log("leader"),
        SyncPolicy::Any {
            k: 2,
            of: vec!["f1".into(), "f2".into()],
        },
    ));
    let (f1, seen1) = c.follower("f1", c.log("f1"), &leader);
    let (f2, seen2) = c.follower("f2", c.log("f2"), &leader);

    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let leader = Arc::clone(&leader);
        writers.push(tokio::spawn(async move {
            for i in (w..RECORDS).step_by(WRITERS) {
                let lsn = leader
                    .log()
                    .append(format!("record {i:06} from writer {w}").as_bytes())?;
                leader.commit(lsn, Durability::RemoteFlush).await?;
                // RemoteFlush means both followers (k = 2) have it on disk.
                let wm = leader.log().watermarks();
                assert!(wm.remote_flushed >= lsn && wm.flushed >= lsn);
            }
            Ok::<_, walship_engine::Error>(())
        }));
    }
    for w in writers {
        w.await.unwrap().unwrap();
    }
    let end = leader.log().end_lsn();
    for f in [&f1, &f2] {
        eventually("followers to apply everything", WAIT, || f.applied() >= end).await;
    }

    let expected = records(leader.log());
    assert_eq!(expected.len(), RECORDS);
    for (f, seen) in [(&f1, &seen1), (&f2, &seen2)] {
        same_bytes(leader.log(), f.log());
        assert_eq!(f.log().epoch_history(), leader.log().epoch_history());
        // Every record applied once, in LSN order.
        assert_eq!(*seen.lock().unwrap(), expected);
    }
    let st = leader.status();
    assert_eq!(st.followers.len(), 2);
    for fi in &st.followers {
        assert_eq!(fi.state, StreamState::Streaming);
        assert_eq!(fi.flush, end);
        assert_eq!(fi.sync_state.as_str(), "quorum");
        assert!(fi.lag.flush.is_some());
    }
    f1.shutdown().await;
    f2.shutdown().await;
    Arc::into_inner(leader).unwrap().shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_follower_catches_up_50mib_from_disk_and_a_lost_one_is_refused(
) -> Result<(), walship_engine::Error> {
    const CAP: u64 = 4 << 20;
    let c = Cluster::new(CAP);
    let leader = c.leader_with(
        c.log("leader"),
        LeaderOptions {
            sync: any_one(),
            max_retained_bytes: 80 << 20,
            ..LeaderOptions::default()
        },
    );
    let (f1, _) = c.follower("f1", c.log("f1"), &leader);
    let (f2, _) = c.follower("f2", c.log("f2"), &leader);
    let lsn = leader.log().append(b"first")?;
    leader.commit(lsn, Durability::RemoteFlush).await?;
    for f in [&f1, &f2] {
        eventually("both followers", WAIT, || f.applied() >= lsn).await;
    }
    // f1 stops; 50 MiB are written (f2 keeps up).
    f1.shutdown().await;
    let row = vec![b'x'; 4000];
    let mut last = lsn;
    while leader.log().end_lsn().bytes_after(lsn) < 50 << 20 {
        let batch: Vec<&[u8]> = (0..16).map(|_| row.as_slice()).collect();
        last = *leader.log().append_batch(&batch)?.last().unwrap();
    }
    leader.commit(last, Durability::RemoteFlush).await?;
    // The embedder checkpoints everything, but f1's slot holds the log it needs.
    leader.log().set_checkpoint(last);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(leader.log().start_lsn() <= lsn);
    let (f1, seen1) = c.follower("f1", c.log("f1"), &leader);
    eventually("f1 to catch up", WAIT, || f1.applied() >= last).await;
    same_bytes(leader.log(), f1.log());
    assert_eq!(seen1.lock().unwrap().last().map(|r| r.0), Some(last));

    // f2 stops; 90 MiB more: beyond max_retained_bytes, its slot is lost.
    // Where f2's log ends (its last flush ack may lag behind what it received).
    let f2_log = Arc::clone(f2.log());
    f2.shutdown().await;
    let f2_end = f2_log.end_lsn();
    drop(f2_log);
    while leader.log().end_lsn().bytes_after(f2_end) < 90 << 20 {
        let batch: Vec<&[u8]> = (0..16).map(|_| row.as_slice()).collect();
        last = *leader.log().append_batch(&batch)?.last().unwrap();
    }
    leader.commit(last, Durability::RemoteFlush).await?;
    leader.log().set_checkpoint(last);
    eventually("f2's slot to be lost", WAIT, || {
        leader
            .status()
            .followers
            .iter()
            .any(|f| f.node_id == "f2" && f.slot_lost)
    })
    .await;
    // Its segments go (f1 keeps up, so the floor moves on).
    eventually("the leader to recycle what only f2 needed", WAIT, || {
        leader.log().start_lsn() > f2_end
    })
    .await;
    let (f2, seen2) = c.follower("f2", c.log("f2"), &leader);
    eventually("f2 to be refused", WAIT, || {
        f2.status()
            .last_error
            .is_some_and(|e| e.contains("SlotLost") && e.contains("max_retained_bytes"))
    })
    .await;
    // Never streamed a gap: its log still ends where it stopped.
    assert_eq!(f2.log().end_lsn(), f2_end);
    assert!(seen2.lock().unwrap().iter().all(|r| r.0 <= f2_end));
    f2.shutdown().await;
    f1.shutdown().await;
    leader.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_positions_lag_and_states() -> Result<(), walship_engine::Error> {
    let c = Cluster::new(1 << 20);
    let leader = c.leader(
        c.log("leader"),
        SyncPolicy::First {
            k: 1,
            of: vec!["f1".into(), "f2".into()],
        },
    );
    let (f1, _) = c.follower("f1", c.log("f1"), &leader);
    let (f2, _) = c.follower("f2", c.log("f2"), &leader);
    let lsn = leader.log().append(b"x")?;
    leader.commit(lsn, Durability::RemoteApply).await?;
    eventually("both streaming and applied", WAIT, || {
        let st = leader.status();
        st.followers.len() == 2
            && st
                .followers
                .iter()
                .all(|f| f.state == StreamState::Streaming && f.apply >= lsn)
    })
    .await;
    let st = leader.status();
    assert_eq!(st.role.as_str(), "leader");
    assert_eq!(st.epoch, leader.epoch());
    assert_eq!(st.sync_policy, "FIRST 1 (f1, f2)");
    let by = |n: &str| {
        st.followers
            .iter()
            .find(|f| f.node_id == n)
            .unwrap()
            .clone()
    };
    assert_eq!(by("f1").sync_state.as_str(), "sync");
    assert_eq!(by("f2").sync_state.as_str(), "potential");
    for f in [by("f1"), by("f2")] {
        assert_eq!((f.sent, f.write, f.flush, f.apply), (lsn, lsn, lsn, lsn));
        assert_eq!(f.write_lag_bytes + f.flush_lag_bytes + f.apply_lag_bytes, 0);
        assert!(f.lag.write.is_some() && f.lag.flush.is_some());
        assert!(f.addr.is_some() && f.slot_restart == Some(lsn));
    }
    assert!(st.watermarks.remote_applied >= lsn);
    // The QUIC path of each: loopback, so MTU discovery goes past Ethernet's 1452.
    eventually("the path MTU and RTT of both", WAIT, || {
        leader
            .status()
            .followers
            .iter()
            .all(|f| f.path_mtu.is_some_and(|m| m > 1452) && f.rtt.is_some_and(|r| !r.is_zero()))
    })
    .await;
    let fs = f1.status();
    assert_eq!(fs.role.as_str(), "follower");
    assert!(fs.connected);
    assert_eq!(fs.leader_id.as_deref(), Some("leader"));
    assert_eq!(fs.epoch, leader.epoch());
    assert_eq!(fs.applied, lsn);
    f1.shutdown().await;
    eventually("f1 disconnected", WAIT, || {
        leader
            .status()
            .followers
            .iter()
            .any(|f| f.node_id == "f1" && f.state == StreamState::Disconnected)
    })
    .await;
    f2.shutdown().await;
    leader.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_reconnects_after_faults_and_never_reapplies(
) -> Result<(), walship_engine::Error> {
    let c = Cluster::new(1 << 20);
    let log = c.log("leader");
    let leader = c.leader(Arc::clone(&log), any_one());
    let addr = leader.local_addr().unwrap();
    let (f1, seen) = c.follower("f1", c.log("f1"), &leader);
    let mut last = log.append(b"before")?;
    for round in 0..3 {
        for i in 0..500 {
            last = log.append(format!("round {round} record {i}").as_bytes())?;
        }
        leader.commit(last, Durability::RemoteFlush).await?;
        eventually("applied", WAIT, || f1.applied() >= last).await;
    }
    // The leader goes away (a restart: a new epoch on the same log and address); the
    // log keeps growing meanwhile.
    let epoch = leader.epoch();
    leader.shutdown().await;
    for i in 0..500 {
        last = log.append(format!("while the leader was down {i}").as_bytes())?;
    }
    // The old endpoint's socket is released by quinn's driver task shortly after shutdown
    // returns: rebinding the same port may need a few tries.
    let deadline = std::time::Instant::now() + WAIT;
    let leader = loop {
        let opts = LeaderOptions {
            listen: addr,
            sync: any_one(),
            ..LeaderOptions::default()
        };
        match walship_transport::Leader::start(Arc::clone(&log), c.security("leader"), opts) {
            Ok(l) => break l,
            Err(walship_transport::TransportError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::AddrInUse
                    && std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("restart the leader on {addr}: {e}"),
        }
    };
    assert!(leader.epoch() > epoch);
    leader.commit(last, Durability::RemoteFlush).await?;
    // A record of the new epoch: the follower learns epochs from the batches it receives.
    last = log.append(b"after the restart")?;
    leader.commit(last, Durability::RemoteFlush).await?;
    eventually("applied after reconnecting", WAIT, || f1.applied() >= last).await;
    assert!(f1.status().connects >= 2, "{:?}", f1.status());
    same_bytes(&log, f1.log());
    assert_eq!(f1.log().epoch_history(), log.epoch_history());
    // Every record exactly once, in order, across the reconnects.
    assert_eq!(*seen.lock().unwrap(), records(&log));
    f1.shutdown().await;
    leader.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_follower_times_out_reconnects_and_catches_up(
) -> Result<(), walship_engine::Error> {
    let c = Cluster::new(1 << 20);
    let log = c.log("leader");
    let leader = c.leader_with(
        Arc::clone(&log),
        LeaderOptions {
            sync: any_one(),
            heartbeat_interval: Duration::from_millis(100),
            idle_timeout: Duration::from_millis(800),
            ..LeaderOptions::default()
        },
    );
    let relay = Relay::start(leader.local_addr().unwrap()).await;
    let (seen, apply) = common::recorder();
    let f1 = walship_transport::Follower::start(
        c.log("f1"),
        c.security("f1"),
        walship_transport::FollowerOptions {
            leader: relay.addr,
            idle_timeout: Duration::from_millis(800),
            status_interval: Duration::from_millis(100),
            ..c.follower_opts(&leader)
        },
        apply,
    )
    .expect("follower");
    // Lossy link: QUIC retransmits, nothing visible above it.
    relay.set(Fault::DropOneIn(20));
    let mut last = Lsn::ZERO;
    for i in 0..2000 {
        last = log.append(format!("lossy {i}").as_bytes())?;
    }
    leader.commit(last, Durability::RemoteFlush).await?;
    // A partition longer than the idle timeouts: both sides give up on the session.
    relay.set(Fault::Blackhole);
    for i in 0..2000 {
        last = log.append(format!("partitioned {i}").as_bytes())?;
    }
    eventually("the leader to drop the session", WAIT, || {
        leader
            .status()
            .followers
            .iter()
            .all(|f| f.state == StreamState::Disconnected)
    })
    .await;
    relay.set(Fault::Pass);
    leader.commit(last, Durability::RemoteFlush).await?;
    eventually("caught up after healing", WAIT, || f1.applied() >= last).await;
    assert!(f1.status().connects >= 2);
    same_bytes(&log, f1.log());
    assert_eq!(*seen.lock().unwrap(), records(&log));
    f1.shutdown().await;
    leader.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_followers_slot_holds_the_log_from_the_moment_it_is_accepted(
) -> Result<(), walship_engine::Error> {
    const CAP: u64 = 1 << 20;
    let c = Cluster::new(CAP);
    let log = c.log("leader");
    let leader = c.leader(Arc::clone(&log), any_one());
    let row = vec![b'r'; 1000];
    let mut last = Lsn::ZERO;
    for _ in 0..20_000 {
        last = log.append(&row)?;
    }
    log.commit(last, Durability::Local).await?;
    // A new follower starts catching up; as soon as it has received anything, the
    // embedder checkpoints everything, as fast as it can. The follower's slot, created
    // when it was accepted, must already hold the log (not from the next upkeep tick).
    let (f1, _) = c.follower("f1", c.log("f1"), &leader);
    let start = f1.log().end_lsn();
    eventually("f1 to receive something", WAIT, || {
        f1.log().end_lsn() > start
    })
    .await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let checkpointer = {
        let (log, stop) = (Arc::clone(&log), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                log.set_checkpoint(log.watermarks().flushed);
                std::thread::sleep(Duration::from_micros(200));
            }
        })
    };
    eventually("catch-up under eager checkpoints", WAIT, || {
        f1.applied() >= last || f1.status().last_error.is_some()
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Release);
    checkpointer.join().unwrap();
    assert_eq!(f1.status().last_error, None);
    assert_eq!(f1.applied(), last);
    f1.shutdown().await;
    leader.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_catches_up_byte_for_byte_while_the_zstd_level_adapts(
) -> Result<(), walship_engine::Error> {
    // Frames compressed at whatever level the controller is trying (and raw ones, which
    // it may choose) must decode to the same log; the moves themselves are unit-tested
    // in `compress::adapt`.
    let c = Cluster::new(16 << 20);
    let leader = c.leader_with(
        c.log("leader"),
        LeaderOptions {
            sync: any_one(),
            compression: walship_transport::CompressionOptions {
                adapt: Some(walship_transport::compress::Adapt {
                    floor: None,
                    ceiling: 3,
                }),
                ..walship_transport::CompressionOptions::default()
            },
            ..LeaderOptions::default()
        },
    );
    let mut last = Lsn::ZERO;
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut i = 0u64;
    while leader.log().end_lsn() < Lsn::new(160 << 20) {
        // Rows that compress, with every eighth batch noise that does not.
        let rows: Vec<Vec<u8>> = (0..32)
            .map(|_| {
                i += 1;
                if i % 256 < 32 {
                    (0..2000)
                        .map(|_| {
                            x ^= x << 13;
                            x ^= x >> 7;
                            x ^= x << 17;
                            x as u8
                        })
                        .collect()
                } else {
                    format!(
                        "{{\"id\":{i},\"status\":\"shipped\",\"note\":\"row {}\"}}",
                        i % 97
                    )
                    .repeat(20)
                    .into_bytes()
                }
            })
            .collect();
        let batch: Vec<&[u8]> = rows.iter().map(Vec::as_slice).collect();
        last = *leader.log().append_batch(&batch)?.last().unwrap();
    }
    let (f1, seen) = c.follower("f1", c.log("f1"), &leader);
    eventually("f1 to catch up", WAIT, || f1.applied() >= last).await;
    same_bytes(leader.log(), f1.log());
    assert_eq!(seen.lock().unwrap().last().map(|r| r.0), Some(last));
    let st = leader.status();
    let fi = &st.followers[0];
    assert!(
        fi.bytes_wire < fi.bytes_raw,
        "{} of {}",
        fi.bytes_wire,
        fi.bytes_raw
    );
    f1.shutdown().await;
    leader.shutdown().await;
    Ok(())
}
