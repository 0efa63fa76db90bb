//! The cluster security layer: a cluster CA, certificates that carry a role, and the
//! mutual-TLS configurations of the replication protocol (QUIC) and the admin endpoint
//! (HTTPS).
//!
//! Every walship cluster has its own certificate authority ([`ClusterCa`]), whose subject
//! names the cluster. The CA issues certificates ([`NodeIdentity`]) in one of three
//! [`Role`]s, read from the certificate's URI subject alternative name:
//!
//! | role | URI | may |
//! | --- | --- | --- |
//! | [`Role::Node`] | `walship://<cluster>/<node>` | replicate (lead or follow), if a member |
//! | [`Role::Operator`] | `walship://<cluster>/operator/<name>` | change the cluster through the admin endpoint |
//! | [`Role::Monitor`] | `walship://<cluster>/monitor/<name>` | read `/status` and `/metrics` |
//!
//! Node certificates also carry the DNS name `<node>` and both TLS server and client
//! authentication; operator and monitor certificates are client certificates only.
//!
//! Who may connect is decided inside the handshake by a [`Trust`]: the chain must lead to
//! the cluster CA, the certificate must be within its validity, not revoked by the CRL file
//! (re-read whenever it changes, so a revocation takes effect without a restart), name
//! this cluster, carry a role the listener admits, and — for nodes — name a member
//! ([`MemberSet`]). The replication listener ([`server_config_with`]) admits only member
//! nodes; the admin listener ([`admin_server_config`]) admits every role and leaves
//! authorisation per request to the endpoint. After the handshake a session reads the
//! peer with [`peer_identity`].
//!
//! A follower connects with its leader's node id as server name
//! (`endpoint.connect(addr, leader_node_id)`): the leader's certificate is checked for it.
//!
//! Insecure configs exist only for tests, behind loudly named functions
//! ([`insecure_client_config_for_tests_only`], [`insecure_server_config_for_tests_only`]).
//!
//! Exactly one crypto provider is built: *ring*, for rustls, quinn and rcgen alike.

mod ca;
mod credentials;
mod https;
mod identity;
mod quic;
mod trust;
mod verify;
mod watch;

use std::fmt;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;

pub use ca::{read_revocation_list, ClusterCa, Revoked, Validity};
pub use credentials::Credentials;
pub use https::{admin_client_config, admin_server_config, peer_of_tls};
pub use identity::{CertInfo, NodeIdentity};
pub use quic::{
    client_config, client_config_with, endpoint_config, endpoint_config_for,
    insecure_client_config_for_tests_only, insecure_server_config_for_tests_only, server_config,
    server_config_with, transport_config, transport_config_for, CONNECTION_RECEIVE_WINDOW,
    INITIAL_MTU, KEEP_ALIVE_INTERVAL, MAX_IDLE_TIMEOUT_MS, SEND_WINDOW, STREAM_RECEIVE_WINDOW,
};
pub use trust::{MemberSet, Trust, MAX_CRL_BYTES};

/// The ALPN protocol id of walship's replication protocol, version 1.
pub const ALPN: &[u8] = b"walship/1";

/// The ALPN protocol id of the admin endpoint (HTTP/1.1 over TLS).
pub const ADMIN_ALPN: &[u8] = b"http/1.1";

/// The URI scheme of the subject alternative name that names a peer in a cluster.
pub const URI_SCHEME: &str = "walship";

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
    /// A peer's certificate carries a role this listener does not admit (an operator
    /// certificate at the replication port, say).
    #[error("{peer} presents a {role} certificate; this connection takes only {allowed}")]
    WrongRole {
        /// Who the certificate names.
        peer: String,
        /// Its role.
        role: Role,
        /// The roles admitted.
        allowed: String,
    },
    /// A node certificate names a node that is not a member of the cluster.
    #[error("node {node_id:?} is not a member of cluster {cluster_id:?} (members: {members})")]
    NotMember {
        /// The node the certificate names.
        node_id: String,
        /// The cluster.
        cluster_id: String,
        /// The members, for the message.
        members: String,
    },
    /// The certificate revocation list could not be used.
    #[error("certificate revocation list {path}: {reason}")]
    Crl {
        /// The CRL file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A certificate or key file cannot be used.
    #[error("{what} {path}: {reason}")]
    File {
        /// Which file: "certificate" or "private key".
        what: &'static str,
        /// Its path.
        path: String,
        /// What is wrong.
        reason: String,
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

/// What a certificate entitles its holder to; see the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// A cluster node: replicates, leads or follows.
    Node,
    /// An operator: may append, promote, step down, re-point and drop slots through the
    /// admin endpoint, and read everything a monitor reads.
    Operator,
    /// A monitor: may read `/status` and `/metrics`.
    Monitor,
}

impl Role {
    /// `"node"`, `"operator"` or `"monitor"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Node => "node",
            Role::Operator => "operator",
            Role::Monitor => "monitor",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "node" => Ok(Role::Node),
            "operator" => Ok(Role::Operator),
            "monitor" => Ok(Role::Monitor),
            other => Err(format!("unknown role {other:?}: node, operator or monitor")),
        }
    }
}

/// Who a peer is, as read from its certificate's walship URI name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerId {
    /// The cluster the peer's certificate was issued for.
    pub cluster_id: String,
    /// The peer's node id (or, for an operator or monitor, its name).
    pub node_id: String,
    /// What the certificate entitles it to.
    pub role: Role,
}

impl PeerId {
    /// A node of `cluster_id`.
    pub fn node(cluster_id: impl Into<String>, node_id: impl Into<String>) -> PeerId {
        PeerId {
            cluster_id: cluster_id.into(),
            node_id: node_id.into(),
            role: Role::Node,
        }
    }

    /// Reads the walship URI name from a DER certificate.
    pub fn from_cert_der(der: &[u8]) -> Result<PeerId, TlsError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| TlsError::CertificateParse(e.to_string()))?;
        PeerId::from_parsed(&cert)
    }

    pub(crate) fn from_parsed(
        cert: &x509_parser::certificate::X509Certificate<'_>,
    ) -> Result<PeerId, TlsError> {
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

    /// Parses `walship://<cluster_id>/<node_id>` (a node) or
    /// `walship://<cluster_id>/<role>/<name>` (an operator or monitor).
    pub fn from_uri(uri: &str) -> Result<PeerId, TlsError> {
        let bad = || TlsError::BadWalshipUri(uri.to_owned());
        let rest = uri
            .strip_prefix(URI_SCHEME)
            .and_then(|r| r.strip_prefix("://"))
            .ok_or_else(bad)?;
        let parts: Vec<&str> = rest.split('/').collect();
        let (cluster_id, role, name) = match parts.as_slice() {
            [cluster, node] => (*cluster, Role::Node, *node),
            [cluster, role, name] => match role.parse::<Role>() {
                Ok(r @ (Role::Operator | Role::Monitor)) => (*cluster, r, *name),
                _ => return Err(bad()),
            },
            _ => return Err(bad()),
        };
        validate_id("cluster id", cluster_id).map_err(|_| bad())?;
        validate_id("node id", name).map_err(|_| bad())?;
        Ok(PeerId {
            cluster_id: cluster_id.to_owned(),
            node_id: name.to_owned(),
            role,
        })
    }

    /// The URI naming this peer.
    pub fn uri(&self) -> String {
        match self.role {
            Role::Node => format!("{URI_SCHEME}://{}/{}", self.cluster_id, self.node_id),
            r => format!("{URI_SCHEME}://{}/{r}/{}", self.cluster_id, self.node_id),
        }
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.role {
            Role::Node => write!(f, "{}/{}", self.cluster_id, self.node_id),
            r => write!(f, "{}/{r}/{}", self.cluster_id, self.node_id),
        }
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
pub(crate) fn validate_id(what: &'static str, value: &str) -> Result<(), TlsError> {
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

/// No TLS session resumption, on either side: a resumed session skips the certificate
/// checks, so a certificate revoked (or a node removed from the members) since the first
/// handshake would come back in without them. Found by the test that revokes a
/// follower's certificate mid-session: its reconnect resumed and was admitted.
fn no_resumption_server(tls: &mut rustls::ServerConfig) {
    tls.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    tls.send_tls13_tickets = 0;
}

fn no_resumption_client(tls: &mut rustls::ClientConfig) {
    tls.resumption = rustls::client::Resumption::disabled();
}

/// A TLS 1.3 server config presenting `creds`, verifying clients with `verifier`,
/// speaking `alpn`, without resumption.
fn server_tls(
    creds: &Arc<Credentials>,
    trust: &Trust,
    verifier: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    alpn: &[u8],
) -> Result<rustls::ServerConfig, TlsError> {
    creds.certified()?;
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::clone(trust.provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::clone(creds) as Arc<dyn rustls::server::ResolvesServerCert>);
    tls.alpn_protocols = vec![alpn.to_vec()];
    no_resumption_server(&mut tls);
    Ok(tls)
}

/// A TLS 1.3 client config presenting `creds`, verifying the server with `verifier`,
/// speaking `alpn`, without resumption.
fn client_tls(
    creds: &Arc<Credentials>,
    trust: &Trust,
    verifier: Arc<dyn rustls::client::danger::ServerCertVerifier>,
    alpn: &[u8],
) -> Result<rustls::ClientConfig, TlsError> {
    creds.certified()?;
    let mut tls =
        rustls::ClientConfig::builder_with_provider(Arc::clone(trust.provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(
                Arc::clone(creds) as Arc<dyn rustls::client::ResolvesClientCert>
            );
    tls.alpn_protocols = vec![alpn.to_vec()];
    no_resumption_client(&mut tls);
    Ok(tls)
}

/// A refusal inside the handshake, carrying our own error for the log.
fn refusal(e: TlsError) -> rustls::Error {
    rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
        Arc::new(e),
    )))
}
