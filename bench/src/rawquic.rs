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
use std::net::UdpSocket;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use walship_transport::tls::{self, ClusterCa, NodeIdentity};

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

/// Sends `frames` over one QUIC stream from a server ("leader") on `server_socket` to a
/// client ("follower") on `client_socket`; both sockets are already bound (possibly in
/// different network namespaces). Must run inside a tokio runtime.
pub async fn measure(
    cluster: &Cluster,
    frames: &[Bytes],
    server_socket: UdpSocket,
    client_socket: UdpSocket,
) -> Result<RawQuic, BoxError> {
    let server_cfg =
        tls::server_config(&cluster.leader, cluster.ca.cert_pem(), &cluster.cluster_id)?;
    let client_cfg = tls::client_config(
        &cluster.follower,
        cluster.ca.cert_pem(),
        &cluster.cluster_id,
    )?;
    let runtime = Arc::new(quinn::TokioRuntime);
    let server = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server_cfg),
        server_socket,
        runtime.clone(),
    )?;
    let server_addr = server.local_addr()?;
    let mut client = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        client_socket,
        runtime,
    )?;
    client.set_default_client_config(client_cfg);

    let frames: Vec<Bytes> = frames.to_vec();
    let sender = tokio::spawn(async move {
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
        Ok::<_, BoxError>(stats)
    });

    let conn = client.connect(server_addr, "leader")?.await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    let start = Instant::now();
    send.write_all(b"go").await?;
    let mut bytes = 0u64;
    while let Some(chunk) = recv.read_chunk(usize::MAX, true).await? {
        bytes += chunk.bytes.len() as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    conn.close(0u32.into(), b"done");
    let stats = sender.await??;
    client.wait_idle().await;
    Ok(RawQuic {
        bytes,
        secs,
        wire_bytes: stats.udp_tx.bytes,
        lost_packets: stats.path.lost_packets,
        mtu: stats.path.current_mtu,
        rtt: stats.path.rtt,
    })
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
