//! Whom a node trusts: the cluster CA, the revocation list, the members.
//!
//! A [`Trust`] is shared by every listener and client of a node. It answers, inside each
//! handshake, whether a certificate chains to the CA and is within its validity (webpki),
//! is not revoked, names this cluster, carries an admitted role, and — for a node —
//! names a member. The revocation list is a file that is looked at (one `stat`) on every
//! handshake and re-read when it changed, so `walship certs revoke` followed by copying the
//! list to the nodes takes effect without a restart. A list that cannot be used (damaged,
//! not the CA's) is refused when the node starts; one that goes bad later is reported
//! once and the last good list stays in force: revocations already in force never lapse
//! because of a bad copy.

use std::collections::BTreeSet;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, ServerName, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{DistinguishedName, RootCertStore};

use super::watch::FileWatch;
use super::{check_cluster, parse_cert_chain, provider, root_store, PeerId, Role, TlsError};

/// The largest revocation list file read.
pub const MAX_CRL_BYTES: u64 = 16 << 20;

/// The node ids that are members of the cluster: the only nodes that may replicate, count
/// for a quorum or hold a retention slot. Clones share one set, so a coordinator that
/// learns of a change ([`set`](Self::set)) changes it for every listener at once.
#[derive(Clone, Default)]
pub struct MemberSet(Arc<RwLock<Option<Arc<BTreeSet<String>>>>>);

impl fmt::Debug for MemberSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.list() {
            Some(l) => f.debug_tuple("MemberSet").field(&l).finish(),
            None => f.write_str("MemberSet(any node of the cluster)"),
        }
    }
}

impl MemberSet {
    /// No restriction: every node certificate of the cluster is a member. For embedders
    /// whose CA issues node certificates to members only, and for tests.
    pub fn any() -> MemberSet {
        MemberSet::default()
    }

    /// Exactly these node ids.
    pub fn of<I, S>(ids: I) -> MemberSet
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let m = MemberSet::default();
        m.set(ids);
        m
    }

    /// Replaces the members with `ids`.
    pub fn set<I, S>(&self, ids: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let ids: BTreeSet<String> = ids.into_iter().map(Into::into).collect();
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(ids));
    }

    /// Whether `node_id` is a member.
    pub fn contains(&self, node_id: &str) -> bool {
        match &*self.0.read().unwrap_or_else(PoisonError::into_inner) {
            Some(ids) => ids.contains(node_id),
            None => true,
        }
    }

    /// The members, or `None` when every node of the cluster is one.
    pub fn list(&self) -> Option<Vec<String>> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|ids| ids.iter().cloned().collect())
    }
}

/// The webpki verifiers for the revocation list in force.
struct Loaded {
    /// The CRL file's version they were built from, and the next to try.
    watch: Option<FileWatch>,
    /// Serial numbers revoked, for the status.
    revoked: usize,
    client: Arc<dyn ClientCertVerifier>,
    server: Arc<WebPkiServerVerifier>,
}

/// Whom a node trusts: the cluster CA, the members, the revocation list.
///
/// Inside each handshake it answers whether a certificate chains to the CA and is within
/// its validity, is not revoked, names this cluster, carries an admitted role, and — for
/// a node — names a member. The revocation list file is looked at on every handshake
/// (and by [`refresh`](Self::refresh)) and re-read when it changed; one that cannot be
/// used when given is an error, one that goes bad later is reported once and the last
/// good list stays in force.
pub struct Trust {
    cluster_id: String,
    ca_subject: Vec<u8>,
    ca_der: Vec<u8>,
    roots: Arc<RootCertStore>,
    hints: Vec<DistinguishedName>,
    provider: Arc<CryptoProvider>,
    members: MemberSet,
    crl: Option<PathBuf>,
    loaded: Mutex<Loaded>,
    /// Bumped whenever a new revocation list takes effect: sessions established before
    /// re-check their peer then.
    generation: AtomicU64,
}

impl fmt::Debug for Trust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Trust")
            .field("cluster_id", &self.cluster_id)
            .field("members", &self.members)
            .field("crl", &self.crl)
            .finish_non_exhaustive()
    }
}

impl Trust {
    /// Trusts certificates of cluster `cluster_id` issued by the CA in `ca_pem`; every
    /// node of the cluster is a member and nothing is revoked until said otherwise.
    pub fn new(ca_pem: &str, cluster_id: &str) -> Result<Trust, TlsError> {
        let roots = root_store(ca_pem)?;
        let provider = provider();
        let ca = parse_cert_chain(ca_pem)?;
        let (_, parsed) = x509_parser::parse_x509_certificate(&ca[0])
            .map_err(|e| TlsError::CertificateParse(e.to_string()))?;
        let ca_subject = parsed.subject().as_raw().to_vec();
        let ca_der = ca[0].to_vec();
        let (client, server) = build(&roots, &provider, Vec::new())?;
        Ok(Trust {
            cluster_id: cluster_id.to_owned(),
            ca_subject,
            ca_der,
            hints: roots.subjects(),
            roots,
            provider,
            members: MemberSet::any(),
            crl: None,
            generation: AtomicU64::new(0),
            loaded: Mutex::new(Loaded {
                watch: None,
                revoked: 0,
                client,
                server,
            }),
        })
    }

    /// Only `members` may replicate (see [`MemberSet`]).
    pub fn with_members(mut self, members: MemberSet) -> Trust {
        self.members = members;
        self
    }

    /// Refuses the certificates the revocation list at `path` names. The file is read now
    /// (an unusable one is an error) and again whenever it changes.
    pub fn with_crl_file(mut self, path: impl Into<PathBuf>) -> Result<Trust, TlsError> {
        let path = path.into();
        std::fs::metadata(&path).map_err(|e| crl_error(&path, e.to_string()))?;
        let watch = FileWatch::in_force_now(&[&path]);
        let (crls, revoked) = self.read_crl(&path)?;
        let (client, server) = build(&self.roots, &self.provider, crls)?;
        self.loaded = Mutex::new(Loaded {
            watch: Some(watch),
            revoked,
            client,
            server,
        });
        self.crl = Some(path);
        Ok(self)
    }

    /// The cluster trusted.
    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    /// The members.
    pub fn members(&self) -> &MemberSet {
        &self.members
    }

    /// The revocation list file, if one is used, and how many certificates it revokes.
    pub fn revocation(&self) -> Option<(&Path, usize)> {
        let revoked = self.loaded().revoked;
        self.crl.as_deref().map(|p| (p, revoked))
    }

    /// Refuses `peer` unless it belongs to this cluster, has one of `roles`, and, as a
    /// node, is a member.
    pub fn admit(&self, peer: &PeerId, roles: &[Role]) -> Result<(), TlsError> {
        check_cluster(peer, &self.cluster_id)?;
        if !roles.contains(&peer.role) {
            return Err(TlsError::WrongRole {
                peer: peer.to_string(),
                role: peer.role,
                allowed: roles
                    .iter()
                    .map(|r| format!("{r} certificates"))
                    .collect::<Vec<_>>()
                    .join(" or "),
            });
        }
        if peer.role == Role::Node && !self.members.contains(&peer.node_id) {
            return Err(TlsError::NotMember {
                node_id: peer.node_id.clone(),
                cluster_id: self.cluster_id.clone(),
                members: self.members.list().unwrap_or_default().join(", "),
            });
        }
        Ok(())
    }

    pub(crate) fn hints(&self) -> &[DistinguishedName] {
        &self.hints
    }

    pub(crate) fn provider(&self) -> &Arc<CryptoProvider> {
        &self.provider
    }

    fn loaded(&self) -> std::sync::MutexGuard<'_, Loaded> {
        self.loaded.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The verifiers for the revocation list as the file is now.
    pub(crate) fn verifiers(&self) -> (Arc<dyn ClientCertVerifier>, Arc<WebPkiServerVerifier>) {
        self.refresh();
        let l = self.loaded();
        (Arc::clone(&l.client), Arc::clone(&l.server))
    }

    /// Looks at the revocation list file (one `stat`) and takes a changed one into
    /// force; returns the [`generation`](Self::generation).
    pub fn refresh(&self) -> u64 {
        if let Some(path) = &self.crl {
            self.refresh_from(path);
        }
        self.generation()
    }

    /// Grows whenever a new revocation list takes effect: a session established before
    /// should check its peer again ([`readmit_client`](Self::readmit_client),
    /// [`readmit_server`](Self::readmit_server)).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Whether the client certificate `end_entity` of an established session would still
    /// be admitted in one of `roles` (not revoked since, still a member, still valid).
    pub fn readmit_client(
        &self,
        end_entity: &CertificateDer<'_>,
        roles: &[Role],
    ) -> Result<(), TlsError> {
        let (client, _) = self.verifiers();
        client.verify_client_cert(end_entity, &[], UnixTime::now())?;
        self.admit(&PeerId::from_cert_der(end_entity)?, roles)
    }

    /// Whether the server certificate `end_entity` of node `name`, the other end of an
    /// established session, would still be admitted.
    pub fn readmit_server(
        &self,
        end_entity: &CertificateDer<'_>,
        name: &str,
    ) -> Result<(), TlsError> {
        let (_, server) = self.verifiers();
        let name = ServerName::try_from(name.to_owned())
            .map_err(|_| TlsError::BadWalshipUri(name.to_owned()))?;
        rustls::client::danger::ServerCertVerifier::verify_server_cert(
            server.as_ref(),
            end_entity,
            &[],
            &name,
            &[],
            UnixTime::now(),
        )?;
        self.admit(&PeerId::from_cert_der(end_entity)?, &[Role::Node])
    }

    fn refresh_from(&self, path: &Path) {
        let Some(versions) = self
            .loaded()
            .watch
            .as_ref()
            .and_then(|w| w.changed(&[path]))
        else {
            return;
        };
        let result = self.read_crl(path).and_then(|(crls, revoked)| {
            build(&self.roots, &self.provider, crls).map(|v| (v, revoked))
        });
        let mut l = self.loaded();
        let Some(watch) = l.watch.as_mut() else {
            return;
        };
        match result {
            Ok(((client, server), revoked)) => {
                tracing::info!(path = %path.display(), revoked, "certificate revocation list loaded");
                watch.took(versions);
                l.revoked = revoked;
                l.client = client;
                l.server = server;
                self.generation.fetch_add(1, Ordering::AcqRel);
            }
            Err(e) => {
                tracing::error!(error = %e, "the changed revocation list cannot be used; the last good one stays in force");
                watch.refused(versions);
            }
        }
    }

    /// The CRLs in the file at `path`, and how many serial numbers they revoke.
    fn read_crl(
        &self,
        path: &Path,
    ) -> Result<(Vec<CertificateRevocationListDer<'static>>, usize), TlsError> {
        let bad = |reason: String| crl_error(path, reason);
        let meta = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
        if !meta.is_file() {
            return Err(bad("is not a regular file".into()));
        }
        if meta.len() > MAX_CRL_BYTES {
            return Err(bad(format!(
                "is {} bytes, more than the {MAX_CRL_BYTES} a revocation list may have",
                meta.len()
            )));
        }
        let mut text = Vec::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_CRL_BYTES + 1).read_to_end(&mut text))
            .map_err(|e| bad(e.to_string()))?;
        let crls = CertificateRevocationListDer::pem_slice_iter(&text)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(format!("not PEM: {e}")))?;
        if crls.is_empty() {
            return Err(bad(
                "holds no X509 CRL (walship certs writes crl.pem with the CA)".into(),
            ));
        }
        let (_, ca) = x509_parser::parse_x509_certificate(&self.ca_der)
            .map_err(|e| bad(format!("the CA certificate: {e}")))?;
        let mut revoked = 0;
        for der in &crls {
            let (_, crl) = x509_parser::parse_x509_crl(der)
                .map_err(|e| bad(format!("not a revocation list: {e}")))?;
            if crl.issuer().as_raw() != self.ca_subject.as_slice() {
                return Err(bad(format!(
                    "was issued by {}, not by this cluster's CA",
                    crl.issuer()
                )));
            }
            crl.verify_signature(ca.public_key()).map_err(|_| {
                bad("is not signed by this cluster's CA (another CA of the same name?)".into())
            })?;
            revoked += crl.iter_revoked_certificates().count();
        }
        Ok((crls, revoked))
    }
}

fn crl_error(path: &Path, reason: String) -> TlsError {
    TlsError::Crl {
        path: path.display().to_string(),
        reason,
    }
}

type Verifiers = (Arc<dyn ClientCertVerifier>, Arc<WebPkiServerVerifier>);

fn build(
    roots: &Arc<RootCertStore>,
    provider: &Arc<CryptoProvider>,
    crls: Vec<CertificateRevocationListDer<'static>>,
) -> Result<Verifiers, TlsError> {
    let client =
        WebPkiClientVerifier::builder_with_provider(Arc::clone(roots), Arc::clone(provider))
            .with_crls(crls.clone())
            .only_check_end_entity_revocation()
            .build()?;
    let server =
        WebPkiServerVerifier::builder_with_provider(Arc::clone(roots), Arc::clone(provider))
            .with_crls(crls)
            .only_check_end_entity_revocation()
            .build()?;
    Ok((client, server))
}
