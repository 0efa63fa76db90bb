//! The admin endpoint's TLS (HTTPS with mutual TLS): the node serves with its own
//! certificate and admits node, operator and monitor certificates of the cluster (what
//! each may do is the endpoint's decision, per request); the CLI presents an operator or
//! monitor certificate and accepts any member node of the cluster — or, given a node id,
//! only that node.

use std::sync::Arc;

use rustls::pki_types::CertificateDer;

use super::verify::{ClientVerifier, ServerNameRule, ServerVerifier};
use super::{
    ca::cluster_of_ca, Credentials, NodeIdentity, PeerId, Role, TlsError, Trust, ADMIN_ALPN,
};

/// The admin endpoint's server config: presents `creds` (the node's certificate, re-read
/// when its files change) and requires a client certificate in any role that `trust`
/// admits. TLS 1.3, ALPN `http/1.1`.
pub fn admin_server_config(
    creds: &Arc<Credentials>,
    trust: &Arc<Trust>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let verifier = Arc::new(ClientVerifier {
        trust: Arc::clone(trust),
        roles: &[Role::Operator, Role::Monitor, Role::Node],
    });
    Ok(Arc::new(super::server_tls(
        creds, trust, verifier, ADMIN_ALPN,
    )?))
}

/// The CLI's client config: presents `identity`, trusts the CA in `ca_pem` (which must be
/// the CA of the identity's cluster), and accepts a server certificate of a node of that
/// cluster — of `node` only, if given.
pub fn admin_client_config(
    identity: &NodeIdentity,
    ca_pem: &str,
    node: Option<&str>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let ca_cluster = cluster_of_ca(ca_pem)?;
    if ca_cluster != identity.cluster_id() {
        return Err(TlsError::ClusterMismatch {
            node_id: identity.node_id().to_owned(),
            actual: identity.cluster_id().to_owned(),
            expected: ca_cluster,
        });
    }
    let trust = Arc::new(Trust::new(ca_pem, identity.cluster_id())?);
    let verifier = Arc::new(ServerVerifier {
        trust: Arc::clone(&trust),
        name: ServerNameRule::Node(node.map(str::to_owned)),
    });
    Ok(Arc::new(super::client_tls(
        &Credentials::fixed(identity.clone()),
        &trust,
        verifier,
        ADMIN_ALPN,
    )?))
}

/// Who is at the other end of an established TLS connection (the verified end-entity
/// certificate).
pub fn peer_of_tls(certs: Option<&[CertificateDer<'_>]>) -> Result<PeerId, TlsError> {
    let end_entity = certs
        .and_then(|c| c.first())
        .ok_or(TlsError::NoPeerCertificate)?;
    PeerId::from_cert_der(end_entity)
}
