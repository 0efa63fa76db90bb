//! Issue 11, "members, not certificate holders": who may replicate is decided in the
//! handshake. A certificate of the wrong role, an expired one, a revoked one and one of a
//! node that is not a member are each refused there, on real quinn endpoints; a
//! revocation takes effect without a restart, and a damaged revocation list never lifts
//! one already in force.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use quinn::Endpoint;
use walship_transport::tls::{
    client_config_with, server_config_with, ClusterCa, Credentials, MemberSet, NodeIdentity,
    Revoked, Role, TlsError, Trust, Validity,
};

const TEST_TIMEOUT: Duration = Duration::from_secs(30);

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// Whether `client` (trusting `client_trust`) and a server `server` (trusting
/// `server_trust`) complete a handshake and can exchange a byte: `(server_ok, client_ok)`.
async fn handshake(
    server: &NodeIdentity,
    server_trust: &Arc<Trust>,
    client: &NodeIdentity,
    client_trust: &Arc<Trust>,
) -> (bool, bool) {
    let config = server_config_with(&Credentials::fixed(server.clone()), server_trust)
        .expect("server config");
    let server_ep = Endpoint::server(config, loopback()).expect("bind");
    let addr = server_ep.local_addr().unwrap();
    let accept = tokio::spawn({
        let ep = server_ep.clone();
        async move {
            let Some(incoming) = ep.accept().await else {
                return false;
            };
            match incoming.await {
                Ok(conn) => {
                    let ok = match conn.accept_bi().await {
                        Ok((mut send, mut recv)) => {
                            let got = recv.read_to_end(16).await.unwrap_or_default();
                            let _ = send.write_all(&got).await;
                            let _ = send.finish();
                            got == b"x"
                        }
                        Err(_) => false,
                    };
                    conn.closed().await;
                    ok
                }
                Err(_) => false,
            }
        }
    });
    let client_ep = Endpoint::client(loopback()).unwrap();
    let config = client_config_with(&Credentials::fixed(client.clone()), client_trust)
        .expect("client config");
    let client_ok = match client_ep
        .connect_with(config, addr, server.node_id())
        .unwrap()
        .await
    {
        Ok(conn) => {
            let r: Result<Vec<u8>, String> = async {
                let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
                send.write_all(b"x").await.map_err(|e| e.to_string())?;
                send.finish().map_err(|e| e.to_string())?;
                recv.read_to_end(16).await.map_err(|e| e.to_string())
            }
            .await;
            conn.close(0u32.into(), b"done");
            r.is_ok_and(|b| b == b"x")
        }
        Err(_) => false,
    };
    let server_ok = tokio::time::timeout(Duration::from_secs(10), accept)
        .await
        .map(|r| r.unwrap_or(false))
        .unwrap_or(false);
    server_ep.close(0u32.into(), b"done");
    client_ep.close(0u32.into(), b"done");
    server_ep.wait_idle().await;
    client_ep.wait_idle().await;
    (server_ok, client_ok)
}

fn trust(ca: &ClusterCa) -> Arc<Trust> {
    Arc::new(Trust::new(ca.cert_pem(), ca.cluster_id()).unwrap())
}

#[tokio::test]
async fn members_with_good_certificates_connect() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let ca = ClusterCa::generate("prod").unwrap();
        let (n1, n2) = (ca.issue_node("n1").unwrap(), ca.issue_node("n2").unwrap());
        let t = Arc::new(
            Trust::new(ca.cert_pem(), "prod")
                .unwrap()
                .with_members(MemberSet::of(["n1", "n2", "n3"])),
        );
        assert_eq!(handshake(&n1, &t, &n2, &t).await, (true, true));
    })
    .await
    .expect("timed out");
}

#[tokio::test]
async fn operator_and_monitor_certificates_cannot_replicate() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let ca = ClusterCa::generate("prod").unwrap();
        let n1 = ca.issue_node("n1").unwrap();
        let t = trust(&ca);
        for role in [Role::Operator, Role::Monitor] {
            let holder = ca.issue(role, "alice", Validity::default()).unwrap();
            assert_eq!(holder.role(), role);
            assert_eq!(
                holder.peer_id().uri(),
                format!("walship://prod/{role}/alice")
            );
            // As a follower: the leader refuses it in the handshake.
            let (server_ok, client_ok) = handshake(&n1, &t, &holder, &t).await;
            assert!(!server_ok && !client_ok, "{role} replicated");
            let err = t.admit(holder.peer_id(), &[Role::Node]).unwrap_err();
            assert!(
                matches!(err, TlsError::WrongRole { .. })
                    && err.to_string().contains(&format!("a {role} certificate")),
                "{err}"
            );
        }
        // Nor can an operator certificate serve as a leader: it is a client certificate.
        let op = ca.issue(Role::Operator, "n9", Validity::default()).unwrap();
        assert!(
            server_config_with(&Credentials::fixed(op.clone()), &t).is_ok(),
            "a config can be built…"
        );
        let (server_ok, client_ok) = handshake(&op, &t, &n1, &t).await;
        assert!(!server_ok && !client_ok, "…but no follower accepts it");
    })
    .await
    .expect("timed out");
}

#[tokio::test]
async fn an_expired_certificate_is_refused() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let ca = ClusterCa::generate("prod").unwrap();
        let n1 = ca.issue_node("n1").unwrap();
        let day = Duration::from_secs(86_400);
        let expired = ca
            .issue(
                Role::Node,
                "n2",
                Validity {
                    not_before: SystemTime::now() - day * 10,
                    not_after: SystemTime::now() - day,
                },
            )
            .unwrap();
        let t = trust(&ca);
        assert_eq!(handshake(&n1, &t, &expired, &t).await, (false, false));
        // An expired leader is refused by its followers too.
        let expired_leader = ca
            .issue(
                Role::Node,
                "n3",
                Validity {
                    not_before: SystemTime::now() - day * 10,
                    not_after: SystemTime::now() - day,
                },
            )
            .unwrap();
        let (_, client_ok) = handshake(&expired_leader, &t, &n1, &t).await;
        assert!(!client_ok);
        // The default validity is short.
        let info = n1.info().unwrap();
        let days = info
            .not_after
            .duration_since(SystemTime::now())
            .unwrap()
            .as_secs()
            / 86_400;
        assert!((89..=90).contains(&days), "{days} days");
    })
    .await
    .expect("timed out");
}

#[tokio::test]
async fn a_node_that_is_not_a_member_is_refused_both_ways() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let ca = ClusterCa::generate("prod").unwrap();
        let (n1, n4) = (ca.issue_node("n1").unwrap(), ca.issue_node("n4").unwrap());
        let members = MemberSet::of(["n1", "n2", "n3"]);
        let t = Arc::new(
            Trust::new(ca.cert_pem(), "prod")
                .unwrap()
                .with_members(members.clone()),
        );
        // n4 holds a good certificate of the cluster's CA, but is in no configuration.
        assert_eq!(handshake(&n1, &t, &n4, &t).await, (false, false));
        let err = t.admit(n4.peer_id(), &[Role::Node]).unwrap_err();
        assert!(
            err.to_string()
                .contains("\"n4\" is not a member of cluster \"prod\" (members: n1, n2, n3)"),
            "{err}"
        );
        // A follower will not follow a leader that is not a member either.
        let (_, client_ok) = handshake(&n4, &trust(&ca), &n1, &t).await;
        assert!(!client_ok);
        // Membership is live: adding n4 admits it at the next handshake.
        members.set(["n1", "n2", "n3", "n4"]);
        assert_eq!(handshake(&n1, &t, &n4, &t).await, (true, true));
    })
    .await
    .expect("timed out");
}

#[tokio::test]
async fn a_revoked_certificate_is_refused_without_a_restart() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let dir = tempfile::tempdir().unwrap();
        let crl = dir.path().join("crl.pem");
        let ca = ClusterCa::generate("prod").unwrap();
        let (n1, n2) = (ca.issue_node("n1").unwrap(), ca.issue_node("n2").unwrap());
        std::fs::write(&crl, ca.revocation_list(&[], 1).unwrap()).unwrap();
        let t = Arc::new(
            Trust::new(ca.cert_pem(), "prod")
                .unwrap()
                .with_crl_file(&crl)
                .unwrap(),
        );
        assert_eq!(handshake(&n1, &t, &n2, &t).await, (true, true));

        // Revoke n2: the same Trust (no restart) refuses it at the next handshake.
        let revoked = Revoked {
            serial: n2.info().unwrap().serial,
            at: SystemTime::now(),
        };
        std::fs::write(&crl, ca.revocation_list(&[revoked], 2).unwrap()).unwrap();
        assert_eq!(handshake(&n1, &t, &n2, &t).await, (false, false));
        assert_eq!(t.revocation().map(|(_, n)| n), Some(1));
        // A revoked leader is refused by its followers.
        let (_, client_ok) = handshake(&n2, &trust(&ca), &n1, &t).await;
        assert!(!client_ok);

        // A damaged list later does not lift the revocation: the last good one stays.
        std::fs::write(&crl, "garbage").unwrap();
        assert_eq!(handshake(&n1, &t, &n2, &t).await, (false, false));
        std::fs::remove_file(&crl).unwrap();
        assert_eq!(handshake(&n1, &t, &n2, &t).await, (false, false));
        // n1 itself still connects.
        let n3 = ca.issue_node("n3").unwrap();
        assert_eq!(handshake(&n1, &t, &n3, &t).await, (true, true));
    })
    .await
    .expect("timed out");
}

#[test]
fn an_unusable_revocation_list_is_refused_at_start_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ClusterCa::generate("prod").unwrap();
    let other = ClusterCa::generate("prod").unwrap();
    let path = dir.path().join("crl.pem");
    let cases: Vec<(&str, Option<String>, &str)> = vec![
        ("missing", None, "No such file"),
        ("garbage", Some("hello".into()), "holds no X509 CRL"),
        (
            "another CA's list",
            Some(other.revocation_list(&[], 1).unwrap()),
            "is not signed by this cluster's CA",
        ),
    ];
    for (what, contents, expect) in cases {
        let _ = std::fs::remove_file(&path);
        if let Some(c) = contents {
            std::fs::write(&path, c).unwrap();
        }
        let err = Trust::new(ca.cert_pem(), "prod")
            .unwrap()
            .with_crl_file(&path)
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(path.to_str().unwrap()) && msg.contains(expect),
            "{what}: {msg}"
        );
    }
    // A FIFO is not read (it would block).
    let fifo = dir.path().join("fifo.pem");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let err = Trust::new(ca.cert_pem(), "prod")
        .unwrap()
        .with_crl_file(&fifo)
        .unwrap_err();
    assert!(err.to_string().contains("not a regular file"), "{err}");
}

/// A revocation cuts an established replication session too, not only the next
/// handshake: a follower whose certificate is revoked stops receiving the log within a
/// few seconds (the leader notices the new list itself, with no handshake), and a
/// follower whose leader's certificate is revoked stops following it.
#[tokio::test]
async fn a_revocation_ends_established_sessions() {
    use walship_engine::Durability;
    use walship_transport::{Follower, Leader, LeaderOptions, Security};

    for revoke_leader in [false, true] {
        let c = common::Cluster::new(1 << 20);
        let crl = c.dir.path().join("crl.pem");
        std::fs::write(&crl, c.ca.revocation_list(&[], 1).unwrap()).unwrap();
        let trust = || {
            Arc::new(
                Trust::new(c.ca.cert_pem(), common::CLUSTER)
                    .unwrap()
                    .with_crl_file(&crl)
                    .unwrap(),
            )
        };
        let (n1, n2) = (
            c.ca.issue_node("n1").unwrap(),
            c.ca.issue_node("n2").unwrap(),
        );
        let leader = Leader::start(
            c.log("n1"),
            Security::with_trust(n1.clone(), trust()),
            LeaderOptions::default(),
        )
        .unwrap();
        let mut opts = c.follower_opts(&leader);
        opts.leader_node_id = "n1".into();
        let log2 = c.log("n2");
        let f = Follower::start(
            Arc::clone(&log2),
            Security::with_trust(n2.clone(), trust()),
            opts,
            |_: &walship_engine::Record| {},
        )
        .unwrap();
        let lsn = leader.log().append(b"before").unwrap();
        leader.log().commit(lsn, Durability::Local).await.unwrap();
        common::eventually("n2 has the record", Duration::from_secs(10), || {
            log2.watermarks().flushed >= lsn
        })
        .await;
        let victim = if revoke_leader { &n1 } else { &n2 };
        let revoked = Revoked {
            serial: victim.info().unwrap().serial,
            at: SystemTime::now(),
        };
        std::fs::write(&crl, c.ca.revocation_list(&[revoked], 2).unwrap()).unwrap();
        common::eventually("the session ends", Duration::from_secs(10), || {
            !f.status().connected
        })
        .await;
        let after = leader.log().append(b"after").unwrap();
        leader.log().commit(after, Durability::Local).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(
            log2.end_lsn() < after,
            "revoke_leader {revoke_leader}: the log kept flowing after the revocation: {:?}",
            f.status()
        );
        f.shutdown().await;
        leader.shutdown().await;
    }
}

/// `walship certs renew` needs no restart: a node's certificate files are read again when
/// they change, and the next handshake presents the new certificate; a damaged file, a
/// key that does not match or another node's certificate leaves the one in force.
#[tokio::test]
async fn a_renewed_certificate_is_presented_without_a_restart() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let dir = tempfile::tempdir().unwrap();
        let ca = ClusterCa::generate("prod").unwrap();
        let (cert, key) = (dir.path().join("n1.pem"), dir.path().join("n1.key"));
        let write = |id: &NodeIdentity| {
            std::fs::write(&cert, id.cert_chain_pem()).unwrap();
            std::fs::write(&key, id.key_pem()).unwrap();
        };
        let first = ca.issue_node("n1").unwrap();
        write(&first);
        let creds = Credentials::from_files(&cert, &key).unwrap();
        let t = trust(&ca);
        let config = server_config_with(&creds, &t).unwrap();
        let server = Endpoint::server(config, loopback()).unwrap();
        let addr = server.local_addr().unwrap();
        let accept = tokio::spawn({
            let server = server.clone();
            async move {
                while let Some(i) = server.accept().await {
                    if let Ok(c) = i.await {
                        tokio::spawn(async move { c.closed().await });
                    }
                }
            }
        });
        let n2 = Credentials::fixed(ca.issue_node("n2").unwrap());
        let client = Endpoint::client(loopback()).unwrap();
        let serial_seen = || async {
            let conn = client
                .connect_with(client_config_with(&n2, &t).unwrap(), addr, "n1")
                .unwrap()
                .await
                .expect("handshake");
            let der = conn
                .peer_identity()
                .unwrap()
                .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .unwrap()[0]
                .clone();
            conn.close(0u32.into(), b"done");
            walship_transport::tls::CertInfo::from_der(&der)
                .unwrap()
                .serial
        };
        let serial = |id: &NodeIdentity| id.info().unwrap().serial;
        assert_eq!(serial_seen().await, serial(&first));

        let renewed = ca.issue(Role::Node, "n1", Validity::days(30)).unwrap();
        write(&renewed);
        assert_eq!(serial_seen().await, serial(&renewed), "the renewed one");
        assert_eq!(creds.identity(), renewed);

        let n3 = ca.issue_node("n3").unwrap();
        for (what, c, k) in [
            (
                "garbage",
                "not pem".to_string(),
                renewed.key_pem().to_string(),
            ),
            (
                "a key of another certificate",
                ca.issue_node("n1").unwrap().cert_chain_pem().to_string(),
                renewed.key_pem().to_string(),
            ),
            (
                "another node's certificate",
                n3.cert_chain_pem().to_string(),
                n3.key_pem().to_string(),
            ),
        ] {
            std::fs::write(&cert, &c).unwrap();
            std::fs::write(&key, &k).unwrap();
            assert_eq!(
                serial_seen().await,
                serial(&renewed),
                "{what}: the one in force stays"
            );
        }
        server.close(0u32.into(), b"done");
        accept.abort();
        client.wait_idle().await;
    })
    .await
    .expect("timed out");
}
