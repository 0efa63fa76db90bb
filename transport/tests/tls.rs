//! The cluster security layer over real quinn endpoints on loopback.

use std::net::SocketAddr;
use std::time::Duration;

use quinn::{Connection, Endpoint};
use walship_transport::tls::{
    check_cluster, client_config, insecure_client_config_for_tests_only,
    insecure_server_config_for_tests_only, peer_identity, server_config, ClusterCa, NodeIdentity,
    PeerId, TlsError,
};

const TEST_TIMEOUT: Duration = Duration::from_secs(30);

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A server endpoint for `identity`, trusting `ca` for cluster `cluster_id`.
fn server(identity: &NodeIdentity, ca: &ClusterCa, cluster_id: &str) -> Endpoint {
    let config = server_config(identity, ca.cert_pem(), cluster_id).expect("server config");
    Endpoint::server(config, loopback()).expect("bind server")
}

fn client_endpoint() -> Endpoint {
    Endpoint::client(loopback()).expect("bind client")
}

async fn close(endpoints: &[&Endpoint]) {
    for endpoint in endpoints {
        endpoint.close(0u32.into(), b"done");
    }
    for endpoint in endpoints {
        endpoint.wait_idle().await;
    }
}

/// Connects `identity` (trusting `ca`) to `server_name` at `addr`; errors of the handshake.
async fn connect(
    endpoint: &Endpoint,
    identity: &NodeIdentity,
    ca: &ClusterCa,
    cluster_id: &str,
    addr: SocketAddr,
    server_name: &str,
) -> Result<Connection, quinn::ConnectionError> {
    let config = client_config(identity, ca.cert_pem(), cluster_id).expect("client config");
    endpoint
        .connect_with(config, addr, server_name)
        .expect("connect")
        .await
}

/// After the handshake, the refused client's first stream must fail.
async fn first_stream_fails(conn: &Connection) {
    let result: Result<Vec<u8>, String> = async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        send.write_all(b"hello").await.map_err(|e| e.to_string())?;
        send.finish().map_err(|e| e.to_string())?;
        recv.read_to_end(1024).await.map_err(|e| e.to_string())
    }
    .await;
    assert!(result.is_err(), "stream of a refused peer got {result:?}");
}

#[tokio::test]
async fn same_ca_nodes_exchange_bytes_and_know_each_other() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let ca = ClusterCa::generate("alpha").unwrap();
        let leader = ca.issue_node("node-a").unwrap();
        let follower = ca.issue_node("node-b").unwrap();

        let server_ep = server(&leader, &ca, "alpha");
        let addr = server_ep.local_addr().unwrap();
        let server_task = tokio::spawn({
            let server_ep = server_ep.clone();
            async move {
                let conn = server_ep.accept().await.unwrap().await.unwrap();
                let peer = peer_identity(&conn).unwrap();
                check_cluster(&peer, "alpha").unwrap();
                let (mut send, mut recv) = conn.accept_bi().await.unwrap();
                let got = recv.read_to_end(1 << 20).await.unwrap();
                send.write_all(b"welcome ").await.unwrap();
                send.write_all(&got).await.unwrap();
                send.finish().unwrap();
                conn.closed().await;
                peer
            }
        });

        let client_ep = client_endpoint();
        let conn = connect(&client_ep, &follower, &ca, "alpha", addr, "node-a")
            .await
            .unwrap();
        let server_peer = peer_identity(&conn).unwrap();
        assert_eq!(server_peer, PeerId::node("alpha", "node-a"));
        check_cluster(&server_peer, "alpha").unwrap();
        assert_eq!(
            conn.handshake_data().and_then(|d| {
                d.downcast::<quinn::crypto::rustls::HandshakeData>()
                    .ok()
                    .and_then(|h| h.protocol)
            }),
            Some(b"walship/1".to_vec())
        );

        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(b"hello").await.unwrap();
        send.finish().unwrap();
        let reply = recv.read_to_end(1 << 20).await.unwrap();
        assert_eq!(reply, b"welcome hello");
        conn.close(0u32.into(), b"bye");

        let client_peer = server_task.await.unwrap();
        assert_eq!(client_peer, PeerId::node("alpha", "node-b"));
        close(&[&client_ep, &server_ep]).await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn client_from_another_ca_is_refused() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let ca = ClusterCa::generate("alpha").unwrap();
        let rogue_ca = ClusterCa::generate("alpha").unwrap();
        let leader = ca.issue_node("node-a").unwrap();
        let rogue = rogue_ca.issue_node("node-b").unwrap();

        let server_ep = server(&leader, &ca, "alpha");
        let addr = server_ep.local_addr().unwrap();
        let server_task = tokio::spawn({
            let server_ep = server_ep.clone();
            async move {
                let incoming = server_ep.accept().await.unwrap();
                // The handshake fails on the server: no connection, so no stream, ever.
                assert!(incoming.await.is_err(), "server accepted a rogue client");
            }
        });

        let client_ep = client_endpoint();
        // The rogue client trusts the real CA, so it accepts the server; the server refuses it.
        match connect(&client_ep, &rogue, &ca, "alpha", addr, "node-a").await {
            Err(_) => {}
            Ok(conn) => first_stream_fails(&conn).await,
        }
        server_task.await.unwrap();
        close(&[&client_ep, &server_ep]).await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn server_from_another_ca_is_refused() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let ca = ClusterCa::generate("alpha").unwrap();
        let rogue_ca = ClusterCa::generate("alpha").unwrap();
        let rogue_leader = rogue_ca.issue_node("node-a").unwrap();
        let follower = ca.issue_node("node-b").unwrap();

        // The rogue server trusts the real CA, so only the client's check can refuse it.
        let server_ep = server(&rogue_leader, &ca, "alpha");
        let addr = server_ep.local_addr().unwrap();
        let server_task = tokio::spawn({
            let server_ep = server_ep.clone();
            async move {
                let incoming = server_ep.accept().await.unwrap();
                assert!(
                    incoming.await.is_err(),
                    "handshake completed with a refusing client"
                );
            }
        });

        let client_ep = client_endpoint();
        let result = connect(&client_ep, &follower, &ca, "alpha", addr, "node-a").await;
        let err = result.expect_err("client accepted a server from another CA");
        assert!(
            matches!(err, quinn::ConnectionError::TransportError(_)),
            "unexpected error {err:?}"
        );
        server_task.await.unwrap();
        close(&[&client_ep, &server_ep]).await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn node_claiming_another_cluster_is_refused() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let ca = ClusterCa::generate("alpha").unwrap();
        let leader = ca.issue_node("node-a").unwrap();
        // Signed by the right CA, but its URI names cluster "beta".
        let impostor = ca
            .issue_node_claiming_cluster_for_tests_only("node-x", "beta")
            .unwrap();
        assert_eq!(impostor.cluster_id(), "beta");
        let err = check_cluster(impostor.peer_id(), "alpha").unwrap_err();
        assert!(
            matches!(&err, TlsError::ClusterMismatch { node_id, actual, expected }
                if node_id == "node-x" && actual == "beta" && expected == "alpha"),
            "unexpected error {err:?}"
        );

        // As a client of a secure server: refused in the handshake already.
        let server_ep = server(&leader, &ca, "alpha");
        let addr = server_ep.local_addr().unwrap();
        let server_task = tokio::spawn({
            let server_ep = server_ep.clone();
            async move {
                let incoming = server_ep.accept().await.unwrap();
                assert!(
                    incoming.await.is_err(),
                    "server accepted a client of another cluster"
                );
            }
        });
        let client_ep = client_endpoint();
        match connect(&client_ep, &impostor, &ca, "alpha", addr, "node-a").await {
            Err(_) => {}
            Ok(conn) => first_stream_fails(&conn).await,
        }
        server_task.await.unwrap();
        close(&[&client_ep, &server_ep]).await;

        // As a server, seen by a client that skips verification (and by a server that
        // skips client auth): `peer_identity` reads cluster "beta" from the certificate
        // and `check_cluster` refuses it.
        let config = insecure_server_config_for_tests_only(&impostor).unwrap();
        let impostor_ep = Endpoint::server(config, loopback()).unwrap();
        let addr = impostor_ep.local_addr().unwrap();
        let server_task = tokio::spawn({
            let impostor_ep = impostor_ep.clone();
            async move {
                let conn = impostor_ep.accept().await.unwrap().await.unwrap();
                let err = peer_identity(&conn).unwrap_err();
                assert!(matches!(err, TlsError::NoPeerCertificate), "{err:?}");
                conn.closed().await;
            }
        });
        let client_ep = client_endpoint();
        let config = insecure_client_config_for_tests_only().unwrap();
        let conn = client_ep
            .connect_with(config, addr, "node-x")
            .unwrap()
            .await
            .unwrap();
        let peer = peer_identity(&conn).unwrap();
        assert_eq!(peer.cluster_id, "beta");
        assert!(matches!(
            check_cluster(&peer, "alpha"),
            Err(TlsError::ClusterMismatch { .. })
        ));
        conn.close(0u32.into(), b"wrong cluster");
        server_task.await.unwrap();
        close(&[&client_ep, &impostor_ep]).await;
    })
    .await
    .expect("test timed out");
}

#[test]
fn pem_round_trip_of_ca_and_node_identity() {
    let ca = ClusterCa::generate("alpha").unwrap();
    let loaded = ClusterCa::from_pem(ca.cert_pem(), &ca.key_pem()).unwrap();
    assert_eq!(loaded.cluster_id(), "alpha");
    assert_eq!(loaded.cert_pem(), ca.cert_pem());
    assert_eq!(loaded.key_pem(), ca.key_pem());

    let node = ca.issue_node("node-a").unwrap();
    let (chain, key) = node.to_pem();
    let back = NodeIdentity::from_pem(&chain, &key).unwrap();
    assert_eq!(back, node);
    assert_eq!(back.node_id(), "node-a");
    assert_eq!(back.cluster_id(), "alpha");
    assert_eq!(
        back.peer_id().uri(),
        "walship://alpha/node-a",
        "URI SAN names cluster and node"
    );

    // A CA loaded from PEM issues certificates that chain to the original certificate.
    let issued_by_loaded = loaded.issue_node("node-b").unwrap();
    client_config(&issued_by_loaded, ca.cert_pem(), "alpha").unwrap();
    server_config(&issued_by_loaded, ca.cert_pem(), "alpha").unwrap();

    // Mismatched key and certificate are refused.
    let other = ClusterCa::generate("alpha").unwrap();
    assert!(ClusterCa::from_pem(ca.cert_pem(), &other.key_pem()).is_err());
    let other_node = ca.issue_node("node-c").unwrap();
    assert!(NodeIdentity::from_pem(node.cert_chain_pem(), other_node.key_pem()).is_err());
    // Garbage is refused with an error, not a panic.
    assert!(ClusterCa::from_pem("not pem", "not pem").is_err());
    assert!(NodeIdentity::from_pem("", "").is_err());
    // Ids that cannot go into a certificate name are refused.
    assert!(ClusterCa::generate("").is_err());
    assert!(ca.issue_node("a/b").is_err());
}

#[tokio::test]
async fn node_issued_by_reloaded_ca_connects_to_node_of_original() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let ca = ClusterCa::generate("alpha").unwrap();
        let reloaded = ClusterCa::from_pem(ca.cert_pem(), &ca.key_pem()).unwrap();
        let leader = ca.issue_node("node-a").unwrap();
        let follower = reloaded.issue_node("node-b").unwrap();

        let server_ep = server(&leader, &ca, "alpha");
        let addr = server_ep.local_addr().unwrap();
        let server_task = tokio::spawn({
            let server_ep = server_ep.clone();
            async move {
                let conn = server_ep.accept().await.unwrap().await.unwrap();
                let peer = peer_identity(&conn).unwrap();
                conn.closed().await;
                peer
            }
        });
        let client_ep = client_endpoint();
        let conn = connect(&client_ep, &follower, &reloaded, "alpha", addr, "node-a")
            .await
            .unwrap();
        assert_eq!(peer_identity(&conn).unwrap().node_id, "node-a");
        conn.close(0u32.into(), b"bye");
        assert_eq!(server_task.await.unwrap().node_id, "node-b");
        close(&[&client_ep, &server_ep]).await;
    })
    .await
    .expect("test timed out");
}
