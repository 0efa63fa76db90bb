//! A certificate with its key ([`NodeIdentity`]), and what a certificate says
//! ([`CertInfo`]).

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::KeyPair;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::{parse_cert_chain, PeerId, Role, TlsError};

/// What a certificate says about its holder: who, in what role, its serial number and
/// when it is valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Cluster, name and role.
    pub peer: PeerId,
    /// The serial number, big-endian (what a revocation list names).
    pub serial: Vec<u8>,
    /// Not valid before.
    pub not_before: SystemTime,
    /// Not valid after.
    pub not_after: SystemTime,
}

impl CertInfo {
    /// Reads the end-entity certificate of a PEM chain.
    pub fn from_pem(cert_pem: &str) -> Result<CertInfo, TlsError> {
        let chain = parse_cert_chain(cert_pem)?;
        CertInfo::from_der(&chain[0])
    }

    /// Reads a DER certificate.
    pub fn from_der(der: &[u8]) -> Result<CertInfo, TlsError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| TlsError::CertificateParse(e.to_string()))?;
        let time = |t: x509_parser::time::ASN1Time| {
            UNIX_EPOCH + Duration::from_secs(u64::try_from(t.timestamp()).unwrap_or(0))
        };
        Ok(CertInfo {
            peer: PeerId::from_parsed(&cert)?,
            serial: cert.raw_serial().to_vec(),
            not_before: time(cert.validity().not_before),
            not_after: time(cert.validity().not_after),
        })
    }

    /// The serial number as colon-separated hex, as `openssl x509 -serial` shows it.
    pub fn serial_hex(&self) -> String {
        self.serial
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":")
    }
}

/// A certificate signed by the cluster CA, with its private key: a node's, an operator's
/// or a monitor's (see [`role`](Self::role)).
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
    pub(crate) fn new(
        peer: PeerId,
        cert_chain_pem: String,
        key_pem: String,
    ) -> Result<NodeIdentity, TlsError> {
        Ok(NodeIdentity {
            peer,
            cert_chain_pem,
            key_pem,
        })
    }

    /// Loads an identity from its PEM certificate chain (end entity first) and PEM
    /// private key; the cluster, name and role are read from the certificate.
    pub fn from_pem(cert_chain_pem: &str, key_pem: &str) -> Result<NodeIdentity, TlsError> {
        let chain = parse_cert_chain(cert_chain_pem)?;
        let end_entity = &chain[0];
        let peer = PeerId::from_cert_der(end_entity)?;
        let key = KeyPair::from_pem(key_pem)?;
        let (_, parsed) = x509_parser::parse_x509_certificate(end_entity)
            .map_err(|e| TlsError::CertificateParse(e.to_string()))?;
        if parsed.public_key().raw != key.public_key_der().as_slice() {
            return Err(TlsError::CertificateParse(
                "private key does not match the certificate".to_owned(),
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

    /// The cluster, name and role this certificate names.
    pub fn peer_id(&self) -> &PeerId {
        &self.peer
    }

    /// The node id (an operator's or monitor's name).
    pub fn node_id(&self) -> &str {
        &self.peer.node_id
    }

    /// The cluster id.
    pub fn cluster_id(&self) -> &str {
        &self.peer.cluster_id
    }

    /// What the certificate entitles its holder to.
    pub fn role(&self) -> Role {
        self.peer.role
    }

    /// Serial number and validity of the certificate.
    pub fn info(&self) -> Result<CertInfo, TlsError> {
        CertInfo::from_pem(&self.cert_chain_pem)
    }

    pub(crate) fn rustls_parts(
        &self,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
        let chain = parse_cert_chain(&self.cert_chain_pem)?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).map_err(|source| {
            TlsError::Pem {
                what: "private key",
                source,
            }
        })?;
        Ok((chain, key))
    }
}
