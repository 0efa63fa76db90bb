//! The replication protocol's QUIC configurations (mutual TLS 1.3, ALPN [`ALPN`]) and
//! transport parameters tuned for throughput.

use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{IdleTimeout, MtuDiscoveryConfig, TransportConfig, VarInt};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use super::verify::{ClientVerifier, ServerNameRule, ServerVerifier};
use super::{provider, Credentials, NodeIdentity, Role, TlsError, Trust, ALPN};

/// Stream receive window: one stream may have this many unacknowledged bytes in flight.
pub const STREAM_RECEIVE_WINDOW: u32 = 64 << 20;
/// Connection receive window, over all streams.
pub const CONNECTION_RECEIVE_WINDOW: u32 = 256 << 20;
/// Send window, over all streams of a connection.
pub const SEND_WINDOW: u64 = 256 << 20;
/// Initial UDP payload size: 1452 fits IPv6 (and IPv4) over a 1500-byte Ethernet MTU;
/// MTU discovery then probes upwards.
pub const INITIAL_MTU: u16 = 1452;
/// Keep-alive interval: a ping is sent when the connection has been quiet this long.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(1);
/// Idle timeout in milliseconds: a connection with no traffic for this long is closed.
pub const MAX_IDLE_TIMEOUT_MS: u32 = 10_000;

/// Transport parameters tuned for replication throughput (see MACHINE.md): 64 MiB stream
/// and 256 MiB connection receive windows, a 256 MiB send window, a 1452-byte initial
/// MTU with MTU discovery on, keep-alive every second and a 10 s idle timeout.
pub fn transport_config() -> TransportConfig {
    let mut config = TransportConfig::default();
    config
        .stream_receive_window(VarInt::from_u32(STREAM_RECEIVE_WINDOW))
        .receive_window(VarInt::from_u32(CONNECTION_RECEIVE_WINDOW))
        .send_window(SEND_WINDOW)
        .initial_mtu(INITIAL_MTU)
        .mtu_discovery_config(Some(MtuDiscoveryConfig::default()))
        .keep_alive_interval(Some(KEEP_ALIVE_INTERVAL))
        .max_idle_timeout(Some(IdleTimeout::from(VarInt::from_u32(
            MAX_IDLE_TIMEOUT_MS,
        ))));
    config
}

/// The endpoint configuration of every replication endpoint (and the benchmark's raw
/// quinn reference, so the two are compared with the same settings).
pub fn endpoint_config() -> quinn::EndpointConfig {
    quinn::EndpointConfig::default()
}

/// [`endpoint_config`] accepting datagrams of `max_udp_payload` bytes from peers (quinn
/// accepts 1472 by default, and a peer never sends more than it is told it may, whatever
/// its own MTU discovery finds).
pub fn endpoint_config_for(max_udp_payload: u16) -> quinn::EndpointConfig {
    let mut c = endpoint_config();
    let accepted = max_udp_payload.max(DEFAULT_ACCEPTED_UDP_PAYLOAD);
    if c.max_udp_payload_size(accepted).is_err() {
        // Outside 1200 ..= 65527: callers check the range first; keep the default.
        return endpoint_config();
    }
    c
}

/// What quinn accepts from peers by default: a 1500-byte Ethernet frame's UDP payload.
const DEFAULT_ACCEPTED_UDP_PAYLOAD: u16 = 1472;

/// [`transport_config`] with MTU discovery probing up to `max_udp_payload`: the largest
/// datagram the endpoint sends once a probe of that size got through (see
/// [`crate::udp`], whose runtime keeps each send of such datagrams within 64 KiB).
pub fn transport_config_for(max_udp_payload: u16) -> TransportConfig {
    let mut config = transport_config();
    let mut mtud = MtuDiscoveryConfig::default();
    mtud.upper_bound(max_udp_payload);
    config
        .initial_mtu(INITIAL_MTU.min(max_udp_payload))
        .mtu_discovery_config(Some(mtud));
    config
}

/// A quinn server config with mutual TLS: the server presents `identity`, and requires a
/// client certificate of a node of `cluster_id` issued by the CA in `ca_cert_pem` (any
/// node: see [`server_config_with`] for members and revocation).
/// TLS 1.3 only, ALPN [`ALPN`], [`transport_config`].
pub fn server_config(
    identity: &NodeIdentity,
    ca_cert_pem: &str,
    cluster_id: &str,
) -> Result<quinn::ServerConfig, TlsError> {
    server_config_with(
        &Credentials::fixed(identity.clone()),
        &Arc::new(Trust::new(ca_cert_pem, cluster_id)?),
    )
}

/// A quinn server config with mutual TLS: the server presents `creds` (re-read when its
/// files change) and admits the node certificates `trust` admits (members, not revoked);
/// operator and monitor certificates are refused in the handshake.
pub fn server_config_with(
    creds: &Arc<Credentials>,
    trust: &Arc<Trust>,
) -> Result<quinn::ServerConfig, TlsError> {
    let verifier = Arc::new(ClientVerifier {
        trust: Arc::clone(trust),
        roles: &[Role::Node],
    });
    finish_server(super::server_tls(creds, trust, verifier, ALPN)?)
}

/// A quinn client config with mutual TLS: the client presents `identity`, and requires the
/// server's certificate to chain to the CA in `ca_cert_pem`, to name `cluster_id`, and to
/// carry the server name given to `Endpoint::connect` (the server's node id).
/// TLS 1.3 only, ALPN [`ALPN`], [`transport_config`].
pub fn client_config(
    identity: &NodeIdentity,
    ca_cert_pem: &str,
    cluster_id: &str,
) -> Result<quinn::ClientConfig, TlsError> {
    client_config_with(
        &Credentials::fixed(identity.clone()),
        &Arc::new(Trust::new(ca_cert_pem, cluster_id)?),
    )
}

/// As [`client_config`], presenting `creds`, with the members and revocation list of
/// `trust`: the server must be a member node whose certificate is not revoked.
pub fn client_config_with(
    creds: &Arc<Credentials>,
    trust: &Arc<Trust>,
) -> Result<quinn::ClientConfig, TlsError> {
    let verifier = Arc::new(ServerVerifier {
        trust: Arc::clone(trust),
        name: ServerNameRule::AsConnected,
    });
    finish_client(super::client_tls(creds, trust, verifier, ALPN)?)
}

fn finish_server(tls: rustls::ServerConfig) -> Result<quinn::ServerConfig, TlsError> {
    let crypto = QuicServerConfig::try_from(tls)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(transport_config()));
    Ok(config)
}

fn finish_client(tls: rustls::ClientConfig) -> Result<quinn::ClientConfig, TlsError> {
    let crypto = QuicClientConfig::try_from(tls)?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport_config()));
    Ok(config)
}

/// Accepts any server certificate without verification.
#[derive(Debug)]
struct AcceptAnyServer(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        super::verify::tls12(&self.0, message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        super::verify::tls13(&self.0, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        super::verify::schemes(&self.0)
    }
}

/// **DANGEROUS — tests only.** A client config that accepts *any* server certificate
/// without checking its chain, name or cluster, and presents no client certificate.
/// Anyone can impersonate the leader to a follower using it. Logs a warning when called.
pub fn insecure_client_config_for_tests_only() -> Result<quinn::ClientConfig, TlsError> {
    tracing::warn!("INSECURE: client config without server certificate verification; tests only");
    let provider = provider();
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServer(provider)))
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    finish_client(tls)
}

/// **DANGEROUS — tests only.** A server config that presents `identity` but accepts any
/// client without a certificate: anyone who can reach the port can replicate the log or
/// feed it. Logs a warning when called.
pub fn insecure_server_config_for_tests_only(
    identity: &NodeIdentity,
) -> Result<quinn::ServerConfig, TlsError> {
    tracing::warn!("INSECURE: server config without client authentication; tests only");
    let (chain, key) = identity.rustls_parts()?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    finish_server(tls)
}
