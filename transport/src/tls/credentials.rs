//! A node's own certificate and key, as every handshake presents them: fixed, or read
//! from files and read again whenever they change, so `walship certs renew` takes effect
//! without a restart (etcd re-reads its certificate files, PostgreSQL reloads them).
//!
//! A changed pair is taken only if it is whole and names the same cluster, node and role
//! as the certificate the node started with: a half-copied file, a key that does not match,
//! or another node's certificate is reported once and the pair in force stays.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::SignatureScheme;

use super::watch::FileWatch;
use super::{provider, NodeIdentity, PeerId, TlsError};

/// The largest certificate or key file read.
const MAX_PEM_BYTES: u64 = 1 << 20;

struct State {
    identity: NodeIdentity,
    key: Option<Arc<CertifiedKey>>,
    /// The files' versions `identity` was read from, and the next to try (`None`: fixed).
    watch: Option<FileWatch>,
}

/// What a node presents in its handshakes; see the [module docs](super) of `tls`.
pub struct Credentials {
    files: Option<(PathBuf, PathBuf)>,
    peer: PeerId,
    state: Mutex<State>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("peer", &self.peer)
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

fn read(what: &'static str, path: &Path) -> Result<String, TlsError> {
    let bad = |reason: String| TlsError::File {
        what,
        path: path.display().to_string(),
        reason,
    };
    let bytes =
        walship_engine::read_small_file(path, MAX_PEM_BYTES).map_err(|e| bad(e.to_string()))?;
    String::from_utf8(bytes).map_err(|_| bad("not PEM text".into()))
}

impl Credentials {
    /// Always `identity`.
    pub fn fixed(identity: NodeIdentity) -> Arc<Credentials> {
        Arc::new(Credentials {
            files: None,
            peer: identity.peer_id().clone(),
            state: Mutex::new(State {
                identity,
                key: None,
                watch: None,
            }),
        })
    }

    /// The certificate chain in `cert` and the key in `key` (PEM), read now and again
    /// whenever either file changes.
    ///
    /// # Errors
    /// A file cannot be read, or does not hold a certificate and its key.
    pub fn from_files(
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> Result<Arc<Credentials>, TlsError> {
        let (cert, key) = (cert.into(), key.into());
        let watch = FileWatch::in_force_now(&[&cert, &key]);
        let identity =
            NodeIdentity::from_pem(&read("certificate", &cert)?, &read("private key", &key)?)?;
        let c = Credentials {
            peer: identity.peer_id().clone(),
            state: Mutex::new(State {
                identity,
                key: None,
                watch: Some(watch),
            }),
            files: Some((cert, key)),
        };
        c.certified()?;
        Ok(Arc::new(c))
    }

    /// Whom these credentials name (fixed for their lifetime).
    pub fn peer_id(&self) -> &PeerId {
        &self.peer
    }

    /// The certificate in force.
    pub fn identity(&self) -> NodeIdentity {
        self.refresh();
        self.state().identity.clone()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The certificate and signing key in force, for rustls.
    pub(crate) fn certified(&self) -> Result<Arc<CertifiedKey>, TlsError> {
        self.refresh();
        let mut s = self.state();
        if let Some(k) = &s.key {
            return Ok(Arc::clone(k));
        }
        let (chain, key) = s.identity.rustls_parts()?;
        let k = Arc::new(CertifiedKey::from_der(chain, key, &provider())?);
        s.key = Some(Arc::clone(&k));
        Ok(k)
    }

    /// Takes changed files into force if they are usable.
    fn refresh(&self) {
        let Some((cert, key)) = &self.files else {
            return;
        };
        let paths: [&Path; 2] = [cert, key];
        let Some(versions) = self.state().watch.as_ref().and_then(|w| w.changed(&paths)) else {
            return;
        };
        let loaded = (|| -> Result<(NodeIdentity, Arc<CertifiedKey>), TlsError> {
            let identity =
                NodeIdentity::from_pem(&read("certificate", cert)?, &read("private key", key)?)?;
            if *identity.peer_id() != self.peer {
                return Err(TlsError::CertificateParse(format!(
                    "it is {}'s certificate, not {}'s",
                    identity.peer_id(),
                    self.peer
                )));
            }
            let (chain, k) = identity.rustls_parts()?;
            let certified = Arc::new(CertifiedKey::from_der(chain, k, &provider())?);
            Ok((identity, certified))
        })();
        let mut s = self.state();
        match loaded {
            Ok((identity, certified)) => {
                tracing::info!(cert = %cert.display(), "this node's certificate was replaced; the new one is in force");
                s.identity = identity;
                s.key = Some(certified);
                if let Some(w) = s.watch.as_mut() {
                    w.took(versions);
                }
            }
            Err(e) => {
                tracing::error!(cert = %cert.display(), error = %e, "the changed certificate or key cannot be used; the one in force stays");
                if let Some(w) = s.watch.as_mut() {
                    w.refused(versions);
                }
            }
        }
    }
}

impl ResolvesServerCert for Credentials {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.certified().ok()
    }
}

impl ResolvesClientCert for Credentials {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.certified().ok()
    }

    fn has_certs(&self) -> bool {
        true
    }
}
