//! The cluster CA: issuing certificates in a role, and signing revocation lists.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, Ia5String, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SanType, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use super::{validate_id, NodeIdentity, PeerId, Role, TlsError};

/// When a certificate is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// Not valid before this.
    pub not_before: SystemTime,
    /// Not valid after this.
    pub not_after: SystemTime,
}

impl Validity {
    /// Days a node, operator or monitor certificate is valid by default: short, so a
    /// stolen key stops working on its own; `walship certs renew` issues the next one.
    pub const DEFAULT_DAYS: u32 = 90;
    /// Days a cluster CA is valid.
    pub const CA_DAYS: u32 = 3653;
    /// The longest validity `days` accepts (ten years).
    pub const MAX_DAYS: u32 = 3653;

    /// From an hour ago (clocks of the nodes differ a little) to `days` days from now,
    /// `days` capped at [`MAX_DAYS`](Self::MAX_DAYS).
    pub fn days(days: u32) -> Validity {
        let now = SystemTime::now();
        let day = Duration::from_secs(86_400);
        Validity {
            not_before: now.checked_sub(Duration::from_secs(3600)).unwrap_or(now),
            not_after: now + day * days.min(Self::MAX_DAYS),
        }
    }
}

impl Default for Validity {
    fn default() -> Validity {
        Validity::days(Validity::DEFAULT_DAYS)
    }
}

/// One revoked certificate, as a revocation list records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked {
    /// The certificate's serial number (big-endian bytes).
    pub serial: Vec<u8>,
    /// When it was revoked.
    pub at: SystemTime,
}

fn to_x509_time(t: SystemTime) -> time::OffsetDateTime {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    time::OffsetDateTime::from_unix_timestamp(i64::try_from(secs).unwrap_or(0))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
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
        let v = Validity::days(Validity::CA_DAYS);
        params.not_before = to_x509_time(v.not_before);
        params.not_after = to_x509_time(v.not_after);
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
        let cluster_id = cluster_of_ca(cert_pem)?;
        let params = CertificateParams::from_ca_cert_pem(cert_pem)?;
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

    /// Issues the certificate of node `node_id` of this cluster, valid for
    /// [`Validity::DEFAULT_DAYS`].
    pub fn issue_node(&self, node_id: &str) -> Result<NodeIdentity, TlsError> {
        self.issue(Role::Node, node_id, Validity::default())
    }

    /// Issues a certificate in `role` for `name`, valid for `validity`.
    pub fn issue(
        &self,
        role: Role,
        name: &str,
        validity: Validity,
    ) -> Result<NodeIdentity, TlsError> {
        self.issue_with_uri(role, name, &self.cluster_id, validity)
    }

    /// Issues a node certificate whose URI names `cluster_id`, which may differ from this
    /// CA's cluster. For tests of cluster-mismatch refusal only.
    #[doc(hidden)]
    pub fn issue_node_claiming_cluster_for_tests_only(
        &self,
        node_id: &str,
        cluster_id: &str,
    ) -> Result<NodeIdentity, TlsError> {
        self.issue_with_uri(Role::Node, node_id, cluster_id, Validity::default())
    }

    fn issue_with_uri(
        &self,
        role: Role,
        name: &str,
        cluster_id: &str,
        validity: Validity,
    ) -> Result<NodeIdentity, TlsError> {
        validate_id("node id", name)?;
        validate_id("cluster id", cluster_id)?;
        let peer = PeerId {
            cluster_id: cluster_id.to_owned(),
            node_id: name.to_owned(),
            role,
        };
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "walship");
        dn.push(DnType::OrganizationalUnitName, cluster_id);
        dn.push(
            DnType::CommonName,
            match role {
                Role::Node => name.to_owned(),
                r => format!("{r} {name}"),
            },
        );
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::URI(Ia5String::try_from(peer.uri())?)];
        if role == Role::Node {
            // Nodes serve too (replication, admin), under their node id.
            params
                .subject_alt_names
                .push(SanType::DnsName(Ia5String::try_from(name)?));
            params.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
        } else {
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        params.not_before = to_x509_time(validity.not_before);
        params.not_after = to_x509_time(validity.not_after);
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        NodeIdentity::new(peer, cert.pem(), key.serialize_pem())
    }

    /// A certificate revocation list, signed by this CA, revoking `revoked`; `number` must
    /// grow with every list issued. Valid for a year (nodes keep using the newest list they
    /// have: walship does not refuse an old list).
    pub fn revocation_list(&self, revoked: &[Revoked], number: u64) -> Result<String, TlsError> {
        let now = SystemTime::now();
        let params = CertificateRevocationListParams {
            this_update: to_x509_time(now),
            next_update: to_x509_time(now + Duration::from_secs(365 * 86_400)),
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|r| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&r.serial),
                    revocation_time: to_x509_time(r.at),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.cert, &self.key)?.pem()?)
    }
}

/// The cluster id a CA certificate names (its subject's OU), checking that it is a CA.
pub(crate) fn cluster_of_ca(cert_pem: &str) -> Result<String, TlsError> {
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
    Ok(cluster_id)
}

/// The revoked certificates and the number of a revocation list (PEM), to extend it.
/// The list is not verified here: the nodes verify it against the CA when they load it.
pub fn read_revocation_list(pem: &str) -> Result<(Vec<Revoked>, u64), TlsError> {
    use rustls::pki_types::CertificateRevocationListDer;
    let der = CertificateRevocationListDer::from_pem_slice(pem.as_bytes()).map_err(|source| {
        TlsError::Pem {
            what: "certificate revocation list",
            source,
        }
    })?;
    let (_, crl) = x509_parser::parse_x509_crl(&der)
        .map_err(|e| TlsError::CertificateParse(format!("revocation list: {e}")))?;
    let number = crl
        .crl_number()
        .and_then(|n| u64::try_from(n).ok())
        .unwrap_or(0);
    let revoked = crl
        .iter_revoked_certificates()
        .map(|r| Revoked {
            serial: r.raw_serial().to_vec(),
            at: UNIX_EPOCH
                + Duration::from_secs(u64::try_from(r.revocation_date.timestamp()).unwrap_or(0)),
        })
        .collect();
    Ok((revoked, number))
}
