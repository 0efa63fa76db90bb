//! The cluster security layer: a cluster CA, node certificates and mutual-TLS quinn configs.
//!
//! Every walship cluster has its own certificate authority ([`ClusterCa`]), whose subject
//! names the cluster. The CA issues each node a certificate ([`NodeIdentity`]) that serves
//! both as TLS server and TLS client certificate and carries two subject alternative names:
//! the DNS name `<node_id>` and the URI `walship://<cluster_id>/<node_id>`, so a peer's
//! cluster and node can be read from its certificate ([`peer_identity`]).
//!
//! [`server_config`] requires client certificates that chain to the CA (mutual TLS);
//! [`client_config`] verifies that the server's certificate chains to the CA. Both also
//! refuse, inside the handshake, a peer whose certificate declares another cluster id, and
//! both negotiate ALPN [`ALPN`]. After the handshake the session calls [`peer_identity`]
//! and [`check_cluster`] before any log byte moves.
//!
//! The client connects with the server's node id as server name
//! (`endpoint.connect(addr, server_node_id)`): the server's certificate is checked for it.
//!
//! Insecure configs exist only for tests, behind loudly named functions
//! ([`insecure_client_config_for_tests_only`], [`insecure_server_config_for_tests_only`]).
//!
//! Exactly one crypto provider is built: *ring*, for rustls, quinn and rcgen alike.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{IdleTimeout, MtuDiscoveryConfig, TransportConfig, VarInt};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
    Ia5String, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::SignatureScheme;
use rustls::{DigitallySignedStruct, DistinguishedName as TlsDistinguishedName, RootCertStore};

/// The ALPN protocol id of walship's replication protocol, version 1.
pub const ALPN: &[u8] = b"walship/1";

/// The URI scheme of the subject alternative name that names a node in a cluster.
pub const URI_SCHEME: &str = "walship";

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

/// Validity of a cluster CA, in years from the start of the current year.
const CA_VALIDITY_YEARS: i32 = 20;
/// Validity of a node certificate, in years from the start of the current year.
const NODE_VALIDITY_YEARS: i32 = 10;

/// Errors of the security layer.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A cluster or node id is empty, or contains characters that cannot go into a
    /// certificate name (`/`, whitespace, control characters or non-ASCII).
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidId {
        /// Which id: "cluster id" or "node id".
        what: &'static str,
        /// The rejected value.
        value: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// Generating or signing a certificate, or parsing a key, failed.
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// PEM input holds no item of the expected kind, or is malformed.
    #[error("PEM: {what}: {source}")]
    Pem {
        /// What was being read.
        what: &'static str,
        /// The underlying error.
        source: rustls::pki_types::pem::Error,
    },
    /// A certificate could not be parsed as X.509.
    #[error("certificate parse: {0}")]
    CertificateParse(String),
    /// The CA certificate given is not a CA or does not name a cluster.
    #[error("not a walship cluster CA certificate: {0}")]
    NotClusterCa(&'static str),
    /// A certificate carries no `walship://<cluster_id>/<node_id>` URI name.
    #[error("certificate has no walship URI subject alternative name")]
    NoWalshipUri,
    /// A certificate's walship URI is malformed.
    #[error("malformed walship URI {0:?}")]
    BadWalshipUri(String),
    /// A peer belongs to another cluster.
    #[error("peer {node_id:?} belongs to cluster {actual:?}, expected {expected:?}")]
    ClusterMismatch {
        /// The peer's node id.
        node_id: String,
        /// The peer's cluster id.
        actual: String,
        /// The cluster id we are part of.
        expected: String,
    },
    /// The connection has no peer certificate (e.g. an insecure test config was used).
    #[error("peer presented no certificate")]
    NoPeerCertificate,
    /// rustls rejected the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// A certificate verifier could not be built (e.g. an empty trust store).
    #[error("certificate verifier: {0}")]
    Verifier(#[from] rustls::client::VerifierBuilderError),
    /// quinn refused the rustls configuration (no TLS 1.3 or no QUIC initial suite).
    #[error("QUIC crypto configuration: {0}")]
    QuicCrypto(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
}

/// Who a peer is, as read from its certificate's walship URI name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerId {
    /// The cluster the peer's certificate was issued for.
    pub cluster_id: String,
    /// The peer's node id.
    pub node_id: String,
}

impl PeerId {
    /// Reads the walship URI name from a DER certificate.
    pub fn from_cert_der(der: &[u8]) -> Result<PeerId, TlsError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| TlsError::CertificateParse(e.to_string()))?;
        let san = cert
            .subject_alternative_name()
            .map_err(|e| TlsError::CertificateParse(e.to_string()))?
            .ok_or(TlsError::NoWalshipUri)?;
        let prefix = format!("{URI_SCHEME}://");
        let uri = san
            .value
            .general_names
            .iter()
            .find_map(|name| match name {
                x509_parser::extensions::GeneralName::URI(uri) if uri.starts_with(&prefix) => {
                    Some(*uri)
                }
                _ => None,
            })
            .ok_or(TlsError::NoWalshipUri)?;
        PeerId::from_uri(uri)
    }

    /// Parses `walship://<cluster_id>/<node_id>`.
    pub fn from_uri(uri: &str) -> Result<PeerId, TlsError> {
        let bad = || TlsError::BadWalshipUri(uri.to_owned());
        let rest = uri
            .strip_prefix(URI_SCHEME)
            .and_then(|r| r.strip_prefix("://"))
            .ok_or_else(bad)?;
        let (cluster_id, node_id) = rest.split_once('/').ok_or_else(bad)?;
        validate_id("cluster id", cluster_id).map_err(|_| bad())?;
        validate_id("node id", node_id).map_err(|_| bad())?;
        Ok(PeerId {
            cluster_id: cluster_id.to_owned(),
            node_id: node_id.to_owned(),
        })
    }

    /// The URI naming this peer: `walship://<cluster_id>/<node_id>`.
    pub fn uri(&self) -> String {
        format!("{URI_SCHEME}://{}/{}", self.cluster_id, self.node_id)
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.cluster_id, self.node_id)
    }
}

/// Refuses a peer of another cluster. Call it on [`peer_identity`]'s answer before any
/// log byte moves.
pub fn check_cluster(peer: &PeerId, expected_cluster_id: &str) -> Result<(), TlsError> {
    if peer.cluster_id == expected_cluster_id {
        Ok(())
    } else {
        Err(TlsError::ClusterMismatch {
            node_id: peer.node_id.clone(),
            actual: peer.cluster_id.clone(),
            expected: expected_cluster_id.to_owned(),
        })
    }
}

/// Reads the peer's identity from its certificate on an established connection.
///
/// Fails with [`TlsError::NoPeerCertificate`] if the peer sent none (only possible with
/// the insecure test configs).
pub fn peer_identity(conn: &quinn::Connection) -> Result<PeerId, TlsError> {
    let identity = conn.peer_identity().ok_or(TlsError::NoPeerCertificate)?;
    let chain = identity
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| TlsError::NoPeerCertificate)?;
    let end_entity = chain.first().ok_or(TlsError::NoPeerCertificate)?;
    PeerId::from_cert_der(end_entity)
}

/// Checks that an id can be a DNS name label sequence and a URI path segment: non-empty,
/// at most 63 bytes, ASCII letters, digits, `-`, `_` and `.` only.
fn validate_id(what: &'static str, value: &str) -> Result<(), TlsError> {
    let err = |reason| TlsError::InvalidId {
        what,
        value: value.to_owned(),
        reason,
    };
    if value.is_empty() {
        return Err(err("empty"));
    }
    if value.len() > 63 {
        return Err(err("longer than 63 bytes"));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(err(
            "only ASCII letters, digits, '-', '_' and '.' are allowed",
        ));
    }
    Ok(())
}

/// The current calendar year (UTC), from the system clock; 1970 if the clock is before it.
fn current_year() -> i32 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // Average Gregorian year; exact enough for a validity window starting a year back.
    1970 + i32::try_from(secs / 31_556_952).unwrap_or(0)
}

/// Validity from the start of last year (tolerates clock skew between nodes) to
/// `years` after the start of this one.
fn set_validity(params: &mut CertificateParams, years: i32) {
    let year = current_year();
    params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + years, 1, 1);
}

fn ca_distinguished_name(cluster_id: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "walship");
    dn.push(DnType::OrganizationalUnitName, cluster_id);
    dn.push(
        DnType::CommonName,
        format!("walship cluster CA {cluster_id}"),
    );
    dn
}

/// A cluster's certificate authority: its certificate and private key.
///
/// The subject is `O=walship, OU=<cluster_id>, CN=walship cluster CA <cluster_id>`.
/// Keys are ECDSA P-256.
pub struct ClusterCa {
    cluster_id: String,
    cert: rcgen::Certificate,
    cert_pem: String,
    key: KeyPair,
}

impl fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterCa")
            .field("cluster_id", &self.cluster_id)
            .finish_non_exhaustive()
    }
}

impl ClusterCa {
    /// Generates a new self-signed CA for the cluster `cluster_id`.
    pub fn generate(cluster_id: &str) -> Result<ClusterCa, TlsError> {
        validate_id("cluster id", cluster_id)?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = ca_distinguished_name(cluster_id);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, CA_VALIDITY_YEARS);
        let cert = params.self_signed(&key)?;
        let cert_pem = cert.pem();
        Ok(ClusterCa {
            cluster_id: cluster_id.to_owned(),
            cert,
            cert_pem,
            key,
        })
    }

    /// Loads a CA from its certificate and private key, both PEM (as written by
    /// [`cert_pem`](Self::cert_pem) and [`key_pem`](Self::key_pem)).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<ClusterCa, TlsError> {
        let key = KeyPair::from_pem(key_pem)?;
        let params = CertificateParams::from_ca_cert_pem(cert_pem)?;
        if !matches!(params.is_ca, IsCa::Ca(_)) {
            return Err(TlsError::NotClusterCa(
                "basic constraints do not allow signing",
            ));
        }
        let cluster_id = match params
            .distinguished_name
            .get(&DnType::OrganizationalUnitName)
        {
            Some(rcgen::DnValue::Utf8String(s)) => s.clone(),
            Some(rcgen::DnValue::PrintableString(s)) => s.as_str().to_owned(),
            _ => return Err(TlsError::NotClusterCa("subject has no cluster id (OU)")),
        };
        validate_id("cluster id", &cluster_id)?;
        // The key must belong to the certificate.
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|source| {
            TlsError::Pem {
                what: "CA certificate",
                source,
            }
        })?;
        let (_, parsed) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| TlsError::CertificateParse(e.to_string()))?;
        if parsed.public_key().raw != key.public_key_der().as_slice() {
            return Err(TlsError::NotClusterCa(
                "private key does not match the certificate",
            ));
        }
        // Re-signing the parsed parameters gives an issuer with the same subject and key
        // identifier, which is all a signature needs; keep the original PEM for export.
        let cert = params.self_signed(&key)?;
        Ok(ClusterCa {
            cluster_id,
            cert,
            cert_pem: cert_pem.to_owned(),
            key,
        })
    }

    /// The cluster this CA belongs to.
    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    /// The CA certificate, PEM. Every node needs it to verify its peers.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key, PKCS#8 PEM. Keep it off the nodes when possible.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// Issues the certificate of node `node_id` of this cluster.
    pub fn issue_node(&self, node_id: &str) -> Result<NodeIdentity, TlsError> {
        self.issue_with_uri(node_id, &self.cluster_id)
    }

    /// Issues a node certificate whose URI names `cluster_id`, which may differ from this
    /// CA's cluster. For tests of cluster-mismatch refusal only.
    #[doc(hidden)]
    pub fn issue_node_claiming_cluster_for_tests_only(
        &self,
        node_id: &str,
        cluster_id: &str,
    ) -> Result<NodeIdentity, TlsError> {
        self.issue_with_uri(node_id, cluster_id)
    }

    fn issue_with_uri(&self, node_id: &str, cluster_id: &str) -> Result<NodeIdentity, TlsError> {
        validate_id("node id", node_id)?;
        validate_id("cluster id", cluster_id)?;
        let peer = PeerId {
            cluster_id: cluster_id.to_owned(),
            node_id: node_id.to_owned(),
        };
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "walship");
        dn.push(DnType::OrganizationalUnitName, cluster_id);
        dn.push(DnType::CommonName, node_id);
        params.distinguished_name = dn;
        params.subject_alt_names = vec![
            SanType::DnsName(Ia5String::try_from(node_id)?),
            SanType::URI(Ia5String::try_from(peer.uri())?),
        ];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, NODE_VALIDITY_YEARS);
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        Ok(NodeIdentity {
            peer,
            cert_chain_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// A node's certificate (signed by the cluster CA) and private key.
#[derive(Clone, PartialEq, Eq)]
pub struct NodeIdentity {
    peer: PeerId,
    cert_chain_pem: String,
    key_pem: String,
}

impl fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeIdentity")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl NodeIdentity {
    /// Loads an identity from its PEM certificate chain (end entity first) and PEM
    /// private key; the cluster and node ids are read from the certificate.
    pub fn from_pem(cert_chain_pem: &str, key_pem: &str) -> Result<NodeIdentity, TlsError> {
        let chain = parse_cert_chain(cert_chain_pem)?;
        let end_entity = chain.first().ok_or(TlsError::Pem {
            what: "node certificate",
            source: rustls::pki_types::pem::Error::NoItemsFound,
        })?;
        let peer = PeerId::from_cert_der(end_entity)?;
        let key = KeyPair::from_pem(key_pem)?;
        let (_, parsed) = x509_parser::parse_x509_certificate(end_entity)
            .map_err(|e| TlsError::CertificateParse(e.to_string()))?;
        if parsed.public_key().raw != key.public_key_der().as_slice() {
            return Err(TlsError::CertificateParse(
                "private key does not match the node certificate".to_owned(),
            ));
        }
        Ok(NodeIdentity {
            peer,
            cert_chain_pem: cert_chain_pem.to_owned(),
            key_pem: key_pem.to_owned(),
        })
    }

    /// The certificate chain and private key, both PEM: `(cert_chain_pem, key_pem)`.
    pub fn to_pem(&self) -> (String, String) {
        (self.cert_chain_pem.clone(), self.key_pem.clone())
    }

    /// The certificate chain, PEM, end entity first.
    pub fn cert_chain_pem(&self) -> &str {
        &self.cert_chain_pem
    }

    /// The private key, PKCS#8 PEM.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The cluster and node ids this certificate names.
    pub fn peer_id(&self) -> &PeerId {
        &self.peer
    }

    /// The node id.
    pub fn node_id(&self) -> &str {
        &self.peer.node_id
    }

    /// The cluster id.
    pub fn cluster_id(&self) -> &str {
        &self.peer.cluster_id
    }

    fn rustls_parts(
        &self,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
        let chain = parse_cert_chain(&self.cert_chain_pem)?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).map_err(|source| {
            TlsError::Pem {
                what: "node private key",
                source,
            }
        })?;
        Ok((chain, key))
    }
}

fn parse_cert_chain(pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            what: "certificate chain",
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::Pem {
            what: "certificate chain",
            source: rustls::pki_types::pem::Error::NoItemsFound,
        });
    }
    Ok(chain)
}

fn root_store(ca_cert_pem: &str) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in parse_cert_chain(ca_cert_pem)? {
        roots.add(cert)?;
    }
    Ok(Arc::new(roots))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

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

/// Refuses, during the handshake, a certificate whose walship URI names another cluster
/// (or that has none). The chain itself is verified before this is called.
fn check_cert_cluster(
    end_entity: &CertificateDer<'_>,
    cluster_id: &str,
) -> Result<(), rustls::Error> {
    let peer = PeerId::from_cert_der(end_entity).map_err(|e| {
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
            Arc::new(e),
        )))
    })?;
    check_cluster(&peer, cluster_id).map_err(|e| {
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
            Arc::new(e),
        )))
    })
}

/// Client-certificate verifier: webpki chain verification to the cluster CA, then the
/// cluster id check.
#[derive(Debug)]
struct ClusterClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    cluster_id: String,
}

impl ClientCertVerifier for ClusterClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[TlsDistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        check_cert_cluster(end_entity, &self.cluster_id)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Server-certificate verifier: webpki chain and name verification to the cluster CA,
/// then the cluster id check.
#[derive(Debug)]
struct ClusterServerVerifier {
    inner: Arc<WebPkiServerVerifier>,
    cluster_id: String,
}

impl ServerCertVerifier for ClusterServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        check_cert_cluster(end_entity, &self.cluster_id)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A quinn server config with mutual TLS: the server presents `identity`, and requires a
/// client certificate that chains to the CA in `ca_cert_pem` and names `cluster_id`.
/// TLS 1.3 only, ALPN [`ALPN`], [`transport_config`].
pub fn server_config(
    identity: &NodeIdentity,
    ca_cert_pem: &str,
    cluster_id: &str,
) -> Result<quinn::ServerConfig, TlsError> {
    let provider = provider();
    let roots = root_store(ca_cert_pem)?;
    let inner = WebPkiClientVerifier::builder_with_provider(roots, provider.clone()).build()?;
    let verifier = Arc::new(ClusterClientVerifier {
        inner,
        cluster_id: cluster_id.to_owned(),
    });
    let (chain, key) = identity.rustls_parts()?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    finish_server(tls)
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
    let provider = provider();
    let roots = root_store(ca_cert_pem)?;
    let inner = WebPkiServerVerifier::builder_with_provider(roots, provider.clone()).build()?;
    let verifier = Arc::new(ClusterServerVerifier {
        inner,
        cluster_id: cluster_id.to_owned(),
    });
    let (chain, key) = identity.rustls_parts()?;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(chain, key)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    finish_client(tls)
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
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
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
