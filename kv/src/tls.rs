//! TLS on the RESP port, as Redis's `tls-port`: the server presents a certificate chain
//! and key read from PEM files (`tls-cert-file`, `tls-key-file`), and with a CA file
//! (`tls-ca-cert-file`) every client must present a certificate that CA signed (Redis's
//! `tls-auth-clients yes`). TLS 1.3 only, with *ring*: what `redis-cli --tls` and the
//! client libraries speak.
//!
//! Every file is read once, at start; a file that is missing, holds no certificate or
//! key, or a key that does not match the certificate is refused naming the file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Where the RESP port's TLS material is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The server's certificate chain (PEM, leaf first).
    pub cert: PathBuf,
    /// The server's private key (PEM).
    pub key: PathBuf,
    /// If set, clients must present a certificate signed by one of these CAs (PEM).
    pub client_ca: Option<PathBuf>,
}

/// The RESP port's TLS: the rustls configuration and whether it authenticates clients.
#[derive(Debug, Clone)]
pub struct RespTls {
    /// The server configuration.
    pub config: Arc<rustls::ServerConfig>,
    /// Whether every client proves itself with a certificate (then no password is needed
    /// off loopback).
    pub client_auth: bool,
}

fn certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{what} {}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{what} {}: holds no certificate", path.display()));
    }
    Ok(certs)
}

impl RespTls {
    /// Reads `files` and builds the server configuration.
    ///
    /// # Errors
    /// What is wrong, naming the file.
    pub fn load(files: &TlsFiles) -> Result<RespTls, String> {
        let chain = certs(&files.cert, "TLS certificate")?;
        let key = PrivateKeyDer::from_pem_file(&files.key)
            .map_err(|e| format!("TLS key {}: {e}", files.key.display()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?;
        let builder = match &files.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in certs(ca, "TLS client CA")? {
                    roots
                        .add(c)
                        .map_err(|e| format!("TLS client CA {}: {e}", ca.display()))?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .map_err(|e| format!("TLS client CA {}: {e}", ca.display()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let config = builder.with_single_cert(chain, key).map_err(|e| {
            format!(
                "TLS certificate {} with key {}: {e}",
                files.cert.display(),
                files.key.display()
            )
        })?;
        Ok(RespTls {
            config: Arc::new(config),
            client_auth: files.client_ca.is_some(),
        })
    }
}
