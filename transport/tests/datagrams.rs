//! Large datagrams on loopback: the replication endpoints' runtime ([`udp::runtime`])
//! keeps every GSO send within 64 KiB, so MTU discovery can raise the datagram size to
//! the bound and stay there. quinn's own runtime puts 10 datagrams in a send; at
//! 8952 bytes that is 89 KB, every full send fails, the failures look like a black hole
//! and the path falls back to 1200-byte datagrams.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;

use walship_transport::tls::{self, ClusterCa};
use walship_transport::udp;

const CLUSTER: &str = "datagrams";

/// Sends `bytes` from a server to a client over one stream, both on `runtime`'s sockets
/// with MTU discovery up to `payload`; returns the sender's path MTU at the end and the
/// packets it lost.
async fn transfer(
    payload: u16,
    runtime: fn(u16) -> Arc<dyn quinn::Runtime>,
    bytes: usize,
) -> (u16, u64) {
    let ca = ClusterCa::generate(CLUSTER).unwrap();
    let (n1, n2) = (ca.issue_node("n1").unwrap(), ca.issue_node("n2").unwrap());
    let mut server_cfg = tls::server_config(&n1, ca.cert_pem(), CLUSTER).unwrap();
    server_cfg.transport_config(Arc::new(tls::transport_config_for(payload)));
    let server = quinn::Endpoint::new(
        tls::endpoint_config_for(payload),
        Some(server_cfg),
        UdpSocket::bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap(),
        runtime(payload),
    )
    .unwrap();
    let addr = server.local_addr().unwrap();
    let mut client_cfg = tls::client_config(&n2, ca.cert_pem(), CLUSTER).unwrap();
    client_cfg.transport_config(Arc::new(tls::transport_config_for(payload)));
    let mut client = quinn::Endpoint::new(
        tls::endpoint_config_for(payload),
        None,
        UdpSocket::bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap(),
        runtime(payload),
    )
    .unwrap();
    client.set_default_client_config(client_cfg);

    let sender = tokio::spawn(async move {
        let conn = server.accept().await.unwrap().await.unwrap();
        let mut send = conn.open_uni().await.unwrap();
        let chunk = bytes::Bytes::from(vec![7u8; 256 << 10]);
        let mut sent = 0;
        while sent < bytes {
            send.write_chunk(chunk.clone()).await.unwrap();
            sent += chunk.len();
        }
        send.finish().unwrap();
        let _ = conn.closed().await;
        let stats = conn.stats();
        server.wait_idle().await;
        (stats.path.current_mtu, stats.path.lost_packets)
    });
    let conn = client.connect(addr, "n1").unwrap().await.unwrap();
    let mut recv = conn.accept_uni().await.unwrap();
    let mut got = 0;
    while let Some(c) = recv.read_chunk(usize::MAX, true).await.unwrap() {
        got += c.bytes.len();
    }
    assert!(got >= bytes);
    conn.close(0u32.into(), b"done");
    client.wait_idle().await;
    sender.await.unwrap()
}

fn quinns_own(_: u16) -> Arc<dyn quinn::Runtime> {
    Arc::new(quinn::TokioRuntime)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jumbo_datagrams_are_reached_and_kept_on_loopback() {
    let payload = udp::LOOPBACK_MAX_UDP_PAYLOAD;
    let (mtu, lost) = transfer(payload, udp::runtime, 64 << 20).await;
    // A probe lost among data (a full socket buffer) ends the search a step below the
    // bound; what must not happen is the fall back to 1200-byte datagrams.
    assert!(
        mtu > 8000 && mtu <= payload,
        "the path MTU is {mtu}, not near {payload} ({lost} packets lost)"
    );
    // quinn's own runtime on the same path, for the record (it needs GSO to fail).
    let (theirs, lost_theirs) = transfer(payload, quinns_own, 64 << 20).await;
    eprintln!("quinn's own runtime: MTU {theirs}, {lost_theirs} packets lost");
}
