//! Hostile and broken peers over real QUIC: certificates from another CA, and a rogue
//! leader (with a valid certificate) sending corrupted, discontinuous, truncated and
//! oversized frames. The follower must close the connection and write nothing.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use common::{eventually, Cluster};
use walship_engine::{Durability, Epoch, Lsn};
use walship_transport::tls::{self, ClusterCa};
use walship_transport::wire::{Compression, Decoder, Frame, Ship, Welcome};
use walship_transport::{Follower, Security, SyncPolicy};

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_with_certificates_from_another_ca_are_refused() -> Result<(), walship_engine::Error>
{
    let c = Cluster::new(1 << 20);
    let leader = c.leader(
        c.log("leader"),
        SyncPolicy::Any {
            k: 1,
            of: vec!["*".into()],
        },
    );
    let lsn = leader.log().append(b"secret")?;
    leader.log().commit(lsn, Durability::Local).await?;

    // A follower whose certificate comes from another CA (same cluster name), though it
    // trusts the real one: the leader refuses it in the handshake.
    let other = ClusterCa::generate(common::CLUSTER).expect("other CA");
    let log = c.log("intruder");
    let (applied, apply) = common::recorder();
    let intruder = Follower::start(
        Arc::clone(&log),
        Security::mutual_tls(other.issue_node("intruder").expect("cert"), c.ca.cert_pem()),
        c.follower_opts(&leader),
        apply,
    )
    .expect("start");
    eventually("the intruder to be refused", WAIT, || {
        intruder.status().last_error.is_some()
    })
    .await;
    let err = intruder.status().last_error.unwrap_or_default();
    // The leader refuses it in the handshake (the client may see the refusal or only the
    // connection dropping, depending on which packet arrives first).
    assert!(
        err.contains("invalid peer certificate") || err.contains("connection lost"),
        "{err}"
    );
    assert!(!intruder.status().connected);
    assert_eq!(log.end_lsn(), log.start_lsn(), "no log byte moved");
    assert!(leader.status().followers.is_empty());
    intruder.shutdown().await;
    assert!(applied.lock().unwrap().is_empty());

    // A follower trusting only the other CA refuses the real leader.
    let log = c.log("wary");
    let (applied, apply) = common::recorder();
    let wary = Follower::start(
        Arc::clone(&log),
        Security::mutual_tls(other.issue_node("wary").expect("cert"), other.cert_pem()),
        c.follower_opts(&leader),
        apply,
    )
    .expect("start");
    eventually("the leader to be refused", WAIT, || {
        wary.status().last_error.is_some()
    })
    .await;
    let err = wary.status().last_error.unwrap_or_default();
    assert!(
        !err.contains("aborted by peer") && err.contains("invalid peer certificate"),
        "the follower refused the leader: {err}"
    );
    assert_eq!(log.end_lsn(), log.start_lsn());
    wary.shutdown().await;
    assert!(applied.lock().unwrap().is_empty());
    leader.shutdown().await;
    Ok(())
}

/// What the rogue leader sends after its `Welcome`.
enum Attack {
    /// Valid frame layout, one batch byte flipped (CRC mismatch after decompression).
    BitFlip,
    /// A frame whose base is not where the stream is.
    WrongLsn,
    /// A frame cut short, then the stream finished.
    Truncated,
    /// A header announcing a 1 GiB payload.
    Oversized,
}

/// Batches of a real log, as a leader would ship them from LSN 64.
fn real_batches(c: &Cluster) -> (Bytes, Lsn) {
    let log = c.log("source");
    let mut last = Lsn::ZERO;
    for i in 0..50 {
        last = log
            .append(format!("row {i} with some text in it").as_bytes())
            .unwrap();
    }
    log.commit(last, Durability::Local).wait().unwrap();
    let mut r = log.reader(log.start_lsn()).unwrap();
    let mut data = BytesMut::new();
    while let Some(b) = r.try_next().unwrap() {
        data.extend_from_slice(b.bytes());
    }
    (data.freeze(), last)
}

/// A leader with a valid certificate that misbehaves once, then reports how the
/// follower closed the connection.
async fn rogue_leader(
    c: &Cluster,
    attack: Attack,
) -> (SocketAddr, tokio::task::JoinHandle<String>) {
    let identity = c.ca.issue_node("leader").expect("cert");
    let config = tls::server_config(&identity, c.ca.cert_pem(), common::CLUSTER).expect("config");
    let endpoint =
        quinn::Endpoint::server(config, SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
    let addr = endpoint.local_addr().expect("addr");
    let (batches, end) = real_batches(c);
    let task = tokio::spawn(async move {
        let conn = endpoint
            .accept()
            .await
            .expect("incoming")
            .await
            .expect("handshake");
        let (mut send, mut recv) = conn.accept_bi().await.expect("stream");
        let mut dec = Decoder::new(1 << 20);
        let mut buf = BytesMut::new();
        let hello = loop {
            let chunk = recv
                .read_chunk(1 << 16, true)
                .await
                .expect("read")
                .expect("data");
            buf.extend_from_slice(&chunk.bytes);
            if let Some(Frame::Hello(h)) = dec.decode(&mut buf).expect("decode") {
                break h;
            }
        };
        let mut out = BytesMut::new();
        Frame::Welcome(Welcome {
            epoch: Epoch::new(1),
            truncate_to: None,
            start_lsn: hello.end_lsn,
            leader_id: "leader".into(),
        })
        .encode(&mut out)
        .unwrap();
        let ship = |data: Bytes, base: Lsn, compression| Ship {
            epoch: Epoch::new(1),
            base,
            end,
            committed: Lsn::ZERO,
            raw_len: batches.len() as u32,
            compression,
            data,
        };
        match attack {
            Attack::BitFlip => {
                let mut bad = batches.to_vec();
                let at = bad.len() / 2;
                bad[at] ^= 0x10;
                let z = zstd_compress(&bad);
                Frame::Ship(ship(z, hello.end_lsn, Compression::Zstd))
                    .encode(&mut out)
                    .unwrap();
            }
            Attack::WrongLsn => {
                let base = Lsn::new(hello.end_lsn.get() + 64);
                let mut s = ship(batches.clone(), base, Compression::None);
                s.end = Lsn::new(s.end.get() + 64);
                Frame::Ship(s).encode(&mut out).unwrap();
            }
            Attack::Truncated => {
                let mut whole = BytesMut::new();
                Frame::Ship(ship(batches.clone(), hello.end_lsn, Compression::None))
                    .encode(&mut whole)
                    .unwrap();
                out.extend_from_slice(&whole[..whole.len() - 7]);
            }
            Attack::Oversized => {
                out.put_u16_le(0x5753);
                out.put_u8(walship_transport::wire::PROTOCOL_VERSION);
                out.put_u8(4);
                out.put_u32_le(1 << 30);
                out.extend_from_slice(&[0u8; 64]);
            }
        }
        send.write_all(&out).await.expect("send");
        let _ = send.finish();
        let reason = conn.closed().await;
        endpoint.close(0u32.into(), b"done");
        endpoint.wait_idle().await;
        reason.to_string()
    });
    (addr, task)
}

fn zstd_compress(b: &[u8]) -> Bytes {
    let mut c =
        walship_transport::compress::Compressor::new(walship_transport::CompressionOptions {
            level: Some(1),
            min_bytes: 0,
            ..Default::default()
        })
        .unwrap();
    let (how, data) = c.encode(Bytes::copy_from_slice(b));
    assert_eq!(how, Compression::Zstd);
    data
}

async fn attacked(attack: Attack, expect_error: &str) {
    let c = Cluster::new(1 << 20);
    let (addr, rogue) = rogue_leader(&c, attack).await;
    let log = c.log("victim");
    let start = log.end_lsn();
    let (applied, apply) = common::recorder();
    let follower = Follower::start(
        Arc::clone(&log),
        c.security("victim"),
        walship_transport::FollowerOptions {
            leader: addr,
            leader_node_id: "leader".into(),
            max_frame: 1 << 20,
            // One attempt within the test: the error stays the last one.
            reconnect_min: Duration::from_secs(30),
            ..walship_transport::FollowerOptions::default()
        },
        apply,
    )
    .expect("start");
    let closed = tokio::time::timeout(WAIT, rogue)
        .await
        .expect("closed in time")
        .unwrap();
    assert!(
        closed.contains("closed by peer"),
        "the follower closed: {closed}"
    );
    eventually("the error in the follower's status", WAIT, || {
        follower.status().last_error.is_some()
    })
    .await;
    let err = follower.status().last_error.unwrap();
    assert!(
        err.contains(expect_error),
        "expected {expect_error:?} in {err:?}"
    );
    assert_eq!(log.end_lsn(), start, "nothing appended");
    assert_eq!(log.watermarks().written, start, "nothing written");
    follower.shutdown().await;
    assert!(applied.lock().unwrap().is_empty(), "nothing applied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bit_flip_after_decompression_writes_nothing() {
    attacked(Attack::BitFlip, "CRC").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_at_the_wrong_lsn_writes_nothing() {
    attacked(Attack::WrongLsn, "gap").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_frame_writes_nothing() {
    attacked(Attack::Truncated, "leader closed its stream").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_over_the_size_limit_is_refused_before_it_arrives() {
    attacked(Attack::Oversized, "exceeds the limit").await;
}

/// Issue 11, "connections per peer are capped": a member that opens connection after
/// connection (a bug, or a compromised node) gets at most
/// `MAX_CONNECTIONS_PER_FOLLOWER` at once; the others are closed at once, and the
/// leader keeps serving.
#[tokio::test]
async fn a_follower_opening_many_connections_is_capped() {
    use walship_transport::{SyncPolicy, MAX_CONNECTIONS_PER_FOLLOWER};
    let c = Cluster::new(1 << 20);
    let leader = c.leader(
        c.log("leader"),
        SyncPolicy::Any {
            k: 1,
            of: vec!["*".into()],
        },
    );
    let addr = leader.local_addr().unwrap();
    let identity = c.ca.issue_node("greedy").unwrap();
    let config = tls::client_config(&identity, c.ca.cert_pem(), common::CLUSTER).unwrap();
    let ep = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    let mut conns = Vec::new();
    for _ in 0..MAX_CONNECTIONS_PER_FOLLOWER + 4 {
        let conn = ep
            .connect_with(config.clone(), addr, "leader")
            .unwrap()
            .await
            .expect("handshake");
        // Opening a stream makes the leader's side of the connection real.
        let (mut send, _recv) = conn.open_bi().await.unwrap();
        send.write_all(b"").await.unwrap();
        conns.push((conn, send));
    }
    let mut closed = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::time::Instant::now() < deadline {
        closed = conns
            .iter()
            .filter(|(c, _)| c.close_reason().is_some())
            .count();
        if closed >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(closed, 4, "connections beyond the cap are closed");
    // The leader still serves a well-behaved follower.
    let (f, _) = c.follower("n2", c.log("n2"), &leader);
    common::eventually("n2 streams", Duration::from_secs(10), || {
        f.status().connected
    })
    .await;
    f.shutdown().await;
    for (conn, _) in conns {
        conn.close(0u32.into(), b"done");
    }
    ep.wait_idle().await;
    leader.shutdown().await;
}
