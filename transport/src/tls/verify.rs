//! The rustls certificate verifiers: webpki's chain, validity and revocation checks, then
//! the [`Trust`]'s cluster, role and membership rules, all inside the handshake.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use super::{refusal, PeerId, Role, TlsError, Trust};

/// Handshake signatures are checked the same way by every verifier here (the trust
/// decisions differ, not the signature algorithms).
pub(crate) fn tls12(
    provider: &CryptoProvider,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls12_signature(
        message,
        cert,
        dss,
        &provider.signature_verification_algorithms,
    )
}

pub(crate) fn tls13(
    provider: &CryptoProvider,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls13_signature(
        message,
        cert,
        dss,
        &provider.signature_verification_algorithms,
    )
}

pub(crate) fn schemes(provider: &CryptoProvider) -> Vec<SignatureScheme> {
    provider
        .signature_verification_algorithms
        .supported_schemes()
}

/// Verifies client certificates: admits the `roles` given.
#[derive(Debug)]
pub(crate) struct ClientVerifier {
    pub(crate) trust: Arc<Trust>,
    pub(crate) roles: &'static [Role],
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.trust.hints()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let (inner, _) = self.trust.verifiers();
        let verified = inner.verify_client_cert(end_entity, intermediates, now)?;
        let peer = PeerId::from_cert_der(end_entity).map_err(refusal)?;
        self.trust.admit(&peer, self.roles).map_err(|e| {
            tracing::debug!(peer = %peer, error = %e, "refused a client certificate");
            refusal(e)
        })?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls12(self.trust.provider(), message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls13(self.trust.provider(), message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        schemes(self.trust.provider())
    }
}

/// Which name a server certificate must carry.
#[derive(Debug, Clone)]
pub(crate) enum ServerNameRule {
    /// The one given to `connect` (a follower names its leader).
    AsConnected,
    /// Any member node; if `Some`, this one (the CLI, which connects by address and
    /// may not know which node answers there: PostgreSQL's `verify-ca`, or `verify-full`
    /// with a name).
    Node(Option<String>),
}

/// Verifies server certificates: a member node of the cluster.
#[derive(Debug)]
pub(crate) struct ServerVerifier {
    pub(crate) trust: Arc<Trust>,
    pub(crate) name: ServerNameRule,
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let (_, inner) = self.trust.verifiers();
        let peer = PeerId::from_cert_der(end_entity).map_err(refusal)?;
        let own_name;
        let name = match &self.name {
            ServerNameRule::AsConnected => server_name,
            ServerNameRule::Node(expected) => {
                if let Some(n) = expected.as_ref().filter(|n| **n != peer.node_id) {
                    return Err(refusal(TlsError::CertificateParse(format!(
                        "the server is {peer}, not node {n:?}"
                    ))));
                }
                own_name = ServerName::try_from(peer.node_id.clone())
                    .map_err(|_| refusal(TlsError::BadWalshipUri(peer.uri())))?;
                &own_name
            }
        };
        let verified =
            inner.verify_server_cert(end_entity, intermediates, name, ocsp_response, now)?;
        self.trust.admit(&peer, &[Role::Node]).map_err(refusal)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls12(self.trust.provider(), message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls13(self.trust.provider(), message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        schemes(self.trust.provider())
    }
}
