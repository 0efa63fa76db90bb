//! Raw quinn throughput with walship's tuned transport: the ceiling for replication over
//! one QUIC stream, measured with the project's own mutual-TLS configs
//! ([`walship_transport::tls::server_config`] / [`client_config`]).
//!
//! The "leader" is the QUIC server and the sender, as in replication: the follower (the
//! client) opens one bidirectional stream and sends a 2-byte request; the leader answers
//! with `write_chunk` of each frame (`Bytes`, no copy) and finishes the stream; the
//! follower reads with `read_chunk` until the end. Throughput is measured at the
//! receiver, from the request to the last byte.
//!
//! [`client_config`]: walship_transport::tls::client_config

use std::error::Error;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use walship_transport::tls::{self, ClusterCa, NodeIdentity};
use walship_transport::udp;

type BoxError = Box<dyn Error + Send + Sync>;

/// The result of [`measure`].
#[derive(Debug, Clone)]
pub struct RawQuic {
    /// Stream bytes received.
    pub bytes: u64,
    /// Seconds from the request to the end of the stream, at the receiver.
    pub secs: f64,
    /// UDP bytes the sender put on the wire (QUIC headers, acks' share, retransmissions).
    pub wire_bytes: u64,
    /// Packets the sender declared lost.
    pub lost_packets: u64,
    /// The sender's path MTU at the end.
    pub mtu: u16,
    /// The sender's smoothed RTT at the end.
    pub rtt: Duration,
}

impl RawQuic {
    /// Receiver throughput, MB/s.
    pub fn mb_s(&self) -> f64 {
        self.bytes as f64 / crate::MB / self.secs.max(1e-9)
    }
}

/// The parties of a test cluster: its CA and two node identities.
#[derive(Debug)]
pub struct Cluster {
    /// The cluster id.
    pub cluster_id: String,
    /// The cluster CA.
    pub ca: ClusterCa,
    /// Node "leader".
    pub leader: NodeIdentity,
    /// Node "follower".
    pub follower: NodeIdentity,
}

impl Cluster {
    /// A new CA for `cluster_id` with identities for "leader" and "follower".
    pub fn generate(cluster_id: &str) -> Result<Cluster, BoxError> {
        let ca = ClusterCa::generate(cluster_id)?;
        let leader = ca.issue_node("leader")?;
        let follower = ca.issue_node("follower")?;
        Ok(Cluster {
            cluster_id: cluster_id.to_owned(),
            ca,
            leader,
            follower,
        })
    }
}

impl Cluster {
    /// Writes the CA certificate and `node`'s certificate chain and key into `dir` (as
    /// `ca.pem`, `<node>.crt`, `<node>.key`, the key readable by the owner only), for a
    /// child process to load with [`load_node`].
    pub fn save_node(&self, dir: &Path, node: &NodeIdentity) -> Result<(), BoxError> {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::write(dir.join("ca.pem"), self.ca.cert_pem())?;
        let (cert, key) = node.to_pem();
        std::fs::write(dir.join(format!("{}.crt", node.node_id())), cert)?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(dir.join(format!("{}.key", node.node_id())))?;
        std::io::Write::write_all(&mut f, key.as_bytes())?;
        Ok(())
    }
}

/// The CA certificate PEM and `node`'s identity saved by [`Cluster::save_node`].
pub fn load_node(dir: &Path, node: &str) -> Result<(String, NodeIdentity), BoxError> {
    let read = |name: String| {
        std::fs::read_to_string(dir.join(&name)).map_err(|e| format!("read {name}: {e}"))
    };
    let ca = read("ca.pem".into())?;
    let id = NodeIdentity::from_pem(&read(format!("{node}.crt"))?, &read(format!("{node}.key"))?)?;
    Ok((ca, id))
}

/// What the sending end saw of one [`send`].
#[derive(Debug, Clone)]
pub struct SendStats {
    /// UDP bytes the sender put on the wire (QUIC headers, acks' share, retransmissions).
    pub wire_bytes: u64,
    /// Packets the sender declared lost.
    pub lost_packets: u64,
    /// The sender's path MTU at the end.
    pub mtu: u16,
    /// The sender's smoothed RTT at the end.
    pub rtt: Duration,
}

/// What the receiving end saw of one transfer.
#[derive(Debug, Clone, Copy)]
pub struct Received {
    /// Stream bytes received.
    pub bytes: u64,
    /// [`crate::child::mono_ns`] when the request was sent, and when the stream ended.
    pub start_ns: u64,
    /// See `start_ns`.
    pub end_ns: u64,
}

/// A server endpoint on `socket` with the leader's identity: bound, not yet accepting.
pub fn server(cluster: &Cluster, socket: UdpSocket) -> Result<quinn::Endpoint, BoxError> {
    let mut server_cfg =
        tls::server_config(&cluster.leader, cluster.ca.cert_pem(), &cluster.cluster_id)?;
    // The datagram size a leader listening there would use.
    let payload = udp::auto_max_udp_payload(socket.local_addr()?.ip());
    server_cfg.transport_config(Arc::new(tls::transport_config_for(payload)));
    Ok(quinn::Endpoint::new(
        tls::endpoint_config_for(payload),
        Some(server_cfg),
        socket,
        udp::runtime(payload),
    )?)
}

/// The sending end ("leader", the QUIC server): accepts one connection on `server`,
/// answers its request with `write_chunk` of every frame, finishes the stream and waits
/// for the receiver to close the connection. Must run inside a tokio runtime.
pub async fn send(server: quinn::Endpoint, frames: Vec<Bytes>) -> Result<SendStats, BoxError> {
    let incoming = server
        .accept()
        .await
        .ok_or_else(|| BoxError::from("server endpoint closed before a connection"))?;
    let conn = incoming.await?;
    let (mut send, mut recv) = conn.accept_bi().await?;
    let mut request = [0u8; 2];
    recv.read_exact(&mut request).await?;
    for frame in frames {
        send.write_chunk(frame).await?;
    }
    send.finish()?;
    // Wait until the receiver has everything and closes the connection.
    let _ = conn.closed().await;
    let stats = conn.stats();
    server.wait_idle().await;
    Ok(SendStats {
        wire_bytes: stats.udp_tx.bytes,
        lost_packets: stats.path.lost_packets,
        mtu: stats.path.current_mtu,
        rtt: stats.path.rtt,
    })
}

/// The receiving end ("follower", the QUIC client) on `socket`: connects to the server at
/// `server_addr` with `identity`, opens one stream, sends a 2-byte request and reads with
/// `read_chunk` until the stream ends. Must run inside a tokio runtime.
pub async fn receive(
    ca_pem: &str,
    identity: &NodeIdentity,
    socket: UdpSocket,
    server_addr: SocketAddr,
) -> Result<Received, BoxError> {
    let mut client_cfg = tls::client_config(identity, ca_pem, identity.cluster_id())?;
    // As a follower of a leader there would.
    let payload = udp::auto_max_udp_payload(server_addr.ip());
    client_cfg.transport_config(Arc::new(tls::transport_config_for(payload)));
    let mut client = quinn::Endpoint::new(
        tls::endpoint_config_for(payload),
        None,
        socket,
        udp::runtime(payload),
    )?;
    client.set_default_client_config(client_cfg);
    let conn = client.connect(server_addr, "leader")?.await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    let start_ns = crate::child::mono_ns();
    send.write_all(b"go").await?;
    let mut bytes = 0u64;
    while let Some(chunk) = recv.read_chunk(usize::MAX, true).await? {
        bytes += chunk.bytes.len() as u64;
    }
    let end_ns = crate::child::mono_ns();
    conn.close(0u32.into(), b"done");
    client.wait_idle().await;
    Ok(Received {
        bytes,
        start_ns,
        end_ns,
    })
}

/// Sends `frames` over one QUIC stream from a server ("leader") on `server_socket` to a
/// client ("follower") on `client_socket`, both ends in this process; both sockets are
/// already bound (possibly in different network namespaces). Must run inside a tokio
/// runtime.
pub async fn measure(
    cluster: &Cluster,
    frames: &[Bytes],
    server_socket: UdpSocket,
    client_socket: UdpSocket,
) -> Result<RawQuic, BoxError> {
    let server = server(cluster, server_socket)?;
    let server_addr = server.local_addr()?;
    let sender = tokio::spawn(send(server, frames.to_vec()));
    let got = receive(
        cluster.ca.cert_pem(),
        &cluster.follower,
        client_socket,
        server_addr,
    )
    .await?;
    let stats = sender.await??;
    Ok(RawQuic::from_parts(&got, &stats))
}

impl RawQuic {
    /// One transfer's figures from what its two ends saw.
    pub fn from_parts(got: &Received, sent: &SendStats) -> RawQuic {
        RawQuic {
            bytes: got.bytes,
            secs: got.end_ns.saturating_sub(got.start_ns) as f64 / 1e9,
            wire_bytes: sent.wire_bytes,
            lost_packets: sent.lost_packets,
            mtu: sent.mtu,
            rtt: sent.rtt,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_every_byte_over_loopback() {
        let run = || -> Result<RawQuic, BoxError> {
            let cluster = Cluster::generate("bench")?;
            let frames: Vec<Bytes> = (0..40u8).map(|i| Bytes::from(vec![i; 100_000])).collect();
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            let a = UdpSocket::bind("127.0.0.1:0")?;
            let b = UdpSocket::bind("127.0.0.1:0")?;
            rt.block_on(measure(&cluster, &frames, a, b))
        };
        let r = run().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.bytes, 4_000_000);
        assert!(r.wire_bytes >= r.bytes);
        assert!(r.mb_s() > 0.0);
    }
}
