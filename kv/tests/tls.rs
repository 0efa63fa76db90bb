//! TLS on the RESP port: a client speaking TLS with the server's CA is served, a plain
//! one is not; with a client CA, only clients presenting a certificate it signed are
//! served, and then a non-loopback listener needs no password. Checked with a rustls
//! client in-process and, where installed, the real `redis-cli --tls`.
//!
//! As `redis_cli.rs`: without `redis-cli` its half says so and passes, unless
//! `WALSHIP_REQUIRE_REDIS_CLI` is set (CI).

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use common::{have_redis_cli, leads, Cluster};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use walship_engine::Durability;
use walship_kv::server::Settings;
use walship_kv::tls::{RespTls, TlsFiles};

/// A CA, a server certificate for 127.0.0.1 and localhost, and a client certificate,
/// as PEM files in `dir`.
struct Pki {
    ca: PathBuf,
    server: (PathBuf, PathBuf),
    client: (PathBuf, PathBuf),
}

fn pki(dir: &Path) -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "walship-kv test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issue = |name: &str, sans: Vec<SanType>| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.subject_alt_names = sans;
        p.distinguished_name.push(DnType::CommonName, name);
        let cert = p.signed_by(&key, &ca, &ca_key).unwrap();
        let (c, k) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    };
    let server = issue(
        "server",
        vec![
            SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])),
            SanType::DnsName("localhost".try_into().unwrap()),
        ],
    );
    let client = issue(
        "client",
        vec![SanType::DnsName("client".try_into().unwrap())],
    );
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    Pki {
        ca: ca_path,
        server,
        client,
    }
}

fn settings(c: &Cluster, p: &Pki, client_auth: bool) -> Settings {
    let files = TlsFiles {
        cert: p.server.0.clone(),
        key: p.server.1.clone(),
        client_ca: client_auth.then(|| p.ca.clone()),
    };
    Settings {
        tls: Some(RespTls::load(&files).expect("load TLS")),
        ..c.settings(Durability::Local)
    }
}

/// `PING` over TLS with a rustls client trusting `ca`, presenting `client` if given;
/// the reply, or why there was none.
async fn ping_tls(
    addr: SocketAddr,
    ca: &Path,
    client: Option<&(PathBuf, PathBuf)>,
) -> Result<String, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let cfg = match client {
        None => b.with_no_client_auth(),
        Some((c, k)) => b
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(c)
                    .unwrap()
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_file(k).unwrap(),
            )
            .unwrap(),
    };
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::IpAddress(addr.ip().into());
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tls.write_all(b"*1\r\n$4\r\nPING\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 64];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), tls.read(&mut buf))
        .await
        .map_err(|_| "no reply".to_string())?
        .map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// A plain-text `PING`: what a client that does not speak TLS gets.
async fn ping_plain(addr: SocketAddr) -> Option<String> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(b"*1\r\n$4\r\nPING\r\n").await.ok()?;
    let mut buf = vec![0u8; 64];
    let n = tokio::time::timeout(std::time::Duration::from_secs(3), s.read(&mut buf))
        .await
        .ok()?
        .ok()?;
    (n > 0).then(|| String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// `redis-cli --tls` with `args`; its standard output and whether it succeeded.
async fn cli_tls(addr: SocketAddr, args: Vec<String>) -> (bool, String) {
    tokio::task::spawn_blocking(move || {
        let out = Command::new("redis-cli")
            .args([
                "--tls",
                "-h",
                &addr.ip().to_string(),
                "-p",
                &addr.port().to_string(),
            ])
            .args(&args)
            .output()
            .expect("run redis-cli");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    })
    .await
    .expect("redis-cli task")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_clients_are_served_and_plain_ones_are_not() {
    let c = Cluster::new(1);
    let p = pki(c.dir.path());
    let n1 = c.start_with("n1", settings(&c, &p, false)).await;
    leads(&n1).await;
    let addr = n1.resp_addr();
    assert_eq!(ping_tls(addr, &p.ca, None).await, Ok("+PONG\r\n".into()));
    assert_ne!(
        ping_plain(addr).await.as_deref(),
        Some("+PONG\r\n"),
        "a plain client was served"
    );
    if have_redis_cli() {
        let ca = p.ca.display().to_string();
        let (ok, out) = cli_tls(
            addr,
            vec![
                "--cacert".into(),
                ca.clone(),
                "SET".into(),
                "k".into(),
                "v".into(),
            ],
        )
        .await;
        assert!(ok && out.trim() == "OK", "redis-cli --tls SET: {out}");
        let (ok, out) = cli_tls(addr, vec!["--cacert".into(), ca, "GET".into(), "k".into()]).await;
        assert!(ok && out.trim() == "v", "redis-cli --tls GET: {out}");
    }
    n1.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_client_ca_only_certified_clients_are_served() {
    let c = Cluster::new(1);
    let p = pki(c.dir.path());
    let n1 = c.start_with("n1", settings(&c, &p, true)).await;
    let addr = n1.resp_addr();
    assert_eq!(
        ping_tls(addr, &p.ca, Some(&p.client)).await,
        Ok("+PONG\r\n".into())
    );
    assert!(
        ping_tls(addr, &p.ca, None).await.is_err(),
        "a client without a certificate was served"
    );
    if have_redis_cli() {
        let ca = p.ca.display().to_string();
        let (ok, out) = cli_tls(
            addr,
            vec![
                "--cacert".into(),
                ca.clone(),
                "--cert".into(),
                p.client.0.display().to_string(),
                "--key".into(),
                p.client.1.display().to_string(),
                "PING".into(),
            ],
        )
        .await;
        assert!(
            ok && out.trim() == "PONG",
            "redis-cli with a client certificate: {out}"
        );
        let (_, out) = cli_tls(addr, vec!["--cacert".into(), ca, "PING".into()]).await;
        assert!(
            !out.contains("PONG"),
            "redis-cli without a client certificate was served: {out}"
        );
    }
    n1.shutdown().await;
    // Client certificates stand in for a password off loopback (as Redis's
    // tls-auth-clients); without them, such a listener is refused.
    let mut s = settings(&c, &p, true);
    s.listen = SocketAddr::from(([0, 0, 0, 0], 0));
    assert_eq!(s.check(), Ok(()));
    let mut s = settings(&c, &p, false);
    s.listen = SocketAddr::from(([0, 0, 0, 0], 0));
    assert!(s.check().is_err());
}

#[test]
fn bad_tls_files_are_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = pki(dir.path());
    let missing = dir.path().join("missing.pem");
    let e = RespTls::load(&TlsFiles {
        cert: missing.clone(),
        key: p.server.1.clone(),
        client_ca: None,
    })
    .unwrap_err();
    assert!(e.contains("missing.pem"), "{e}");
    let e = RespTls::load(&TlsFiles {
        cert: p.server.0.clone(),
        key: p.client.1.clone(),
        client_ca: None,
    })
    .unwrap_err();
    assert!(
        e.contains("server.pem") && e.contains("client.key"),
        "a key of another certificate: {e}"
    );
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let e = RespTls::load(&TlsFiles {
        cert: p.server.0.clone(),
        key: p.server.1.clone(),
        client_ca: Some(empty),
    })
    .unwrap_err();
    assert!(
        e.contains("empty.pem") && e.contains("no certificate"),
        "{e}"
    );
}
