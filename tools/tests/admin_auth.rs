//! Issue 11, "authenticated, authorised admin" and "epochs only from the authority",
//! against real `walship serve` processes, as an attacker on the same host would try:
//!
//! - before: `POST /append`, `/promote`, `/step-down` and `/leader` needed no
//!   credentials, a `text/plain` POST with a foreign `Origin` (a web page) was accepted,
//!   and three `POST /leader` with epoch 2^64 − 1 truncated a write acknowledged at
//!   `RemoteFlush` on all three nodes and left a cluster that could never elect again;
//! - now: without a certificate nothing gets past the TLS handshake, the plain listener
//!   is read-only, a monitor certificate may only read, and an operator's `/leader` can
//!   neither name the node itself nor carry an epoch: the cluster stays writable with
//!   every acknowledged record.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{
    config, edit, free_tcp, free_udp, ok, records, status_until, streaming, three_nodes, walship,
    Served,
};

/// What a raw exchange got back: the answer's status line, or why there was none.
fn first_line(r: std::io::Result<Vec<u8>>) -> String {
    match r {
        Ok(b) if b.is_empty() => "closed without an answer".into(),
        Ok(b) => String::from_utf8_lossy(&b)
            .lines()
            .next()
            .unwrap_or("")
            .to_string(),
        Err(e) => format!("error: {e}"),
    }
}

/// Sends `request` as plain bytes and reads what comes back.
fn plain(addr: &str, request: &str) -> String {
    let r = (|| {
        let mut s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(request.as_bytes())?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf)?;
        Ok(buf)
    })();
    first_line(r)
}

/// Accepts any server certificate: an attacker's client that skips verification.
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Sends `request` over TLS presenting no client certificate.
fn tls_without_certificate(addr: &str, request: &str) -> String {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        .with_no_client_auth();
    let r = (|| {
        let tcp = TcpStream::connect(addr)?;
        tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
        let conn = rustls::ClientConnection::new(
            Arc::new(config),
            rustls::pki_types::ServerName::try_from("n1").unwrap(),
        )
        .map_err(std::io::Error::other)?;
        let mut s = rustls::StreamOwned::new(conn, tcp);
        s.write_all(request.as_bytes())?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf)?;
        Ok(buf)
    })();
    first_line(r)
}

fn post(path: &str, body: &str, extra: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// `walship ARGS…` expected to fail; returns standard error.
fn refused(args: &[&str]) -> String {
    let out = walship().args(args).output().unwrap();
    assert!(!out.status.success(), "walship {args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn epoch_of(admin: &str) -> u64 {
    let v = status_until(admin, "status", |_| true);
    v["epoch"].as_u64().unwrap_or(0)
}

#[test]
fn nobody_without_an_operator_certificate_changes_the_cluster_and_leader_carries_no_epoch() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (nodes, admin, listen) = three_nodes(dir, "prod", |_, _| {});
    let certs = dir.join("certs");
    ok(&["append", &admin[0], "-d", "remote-flush", "acknowledged-1"]);

    let max = u64::MAX;
    let attack = format!(r#"{{"node_id":"n3","addr":"{}","epoch":{max}}}"#, listen[2]);
    for a in &admin {
        for (path, body) in [
            ("/leader", attack.as_str()),
            ("/append?durability=local", "forged"),
            ("/promote", ""),
            ("/step-down", ""),
        ] {
            // Plain HTTP to the HTTPS port: no answer at all.
            let got = plain(a, &post(path, body, ""));
            assert!(!got.starts_with("HTTP/1.1 2"), "plain {path} on {a}: {got}");
            // A web page's request (text/plain, foreign Origin): the same.
            let page = post(
                path,
                body,
                "Origin: http://evil.example\r\nContent-Type: text/plain\r\n",
            );
            let got = plain(a, &page);
            assert!(
                !got.starts_with("HTTP/1.1 2"),
                "web page {path} on {a}: {got}"
            );
            // TLS without a client certificate: the handshake is refused.
            let got = tls_without_certificate(a, &post(path, body, ""));
            assert!(
                !got.starts_with("HTTP/1.1"),
                "no certificate {path} on {a}: {got}"
            );
        }
    }
    // The CLI without a certificate says what it needs.
    let err = walship()
        .args(["status", &admin[0]])
        .env_remove("WALSHIP_CERT")
        .env_remove("WALSHIP_KEY")
        .env_remove("WALSHIP_CA")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&err.stderr);
    assert!(err.contains("needs a certificate"), "{err}");

    // A monitor certificate reads, and may change nothing.
    common::present(&certs, "mon");
    assert!(ok(&["status", &admin[0]]).contains("role       leader"));
    for args in [
        vec!["append", &admin[0], "x"],
        vec!["promote", &admin[1]],
        vec!["slot", "drop", &admin[0], "n2"],
    ] {
        let e = refused(&args);
        assert!(
            e.contains("403") && e.contains("presents a monitor certificate"),
            "{args:?}: {e}"
        );
    }
    // A node's certificate (member) reads too, but is not an operator's.
    common::present(&certs, "n2");
    assert!(ok(&["status", &admin[0]]).contains("role       leader"));
    assert!(refused(&["append", &admin[0], "x"]).contains("presents a node certificate"));

    // Nothing moved: n1 leads epoch 1 with both followers, and takes writes.
    common::present(&certs, "op");
    let v = status_until(&admin[0], "n1 still leads", |v| {
        v["role"] == "leader" && streaming(v, 2)
    });
    assert_eq!(v["epoch"], 1);
    ok(&["append", &admin[0], "-d", "remote-flush", "acknowledged-2"]);

    // Even an operator's `/leader` cannot make a node lead, nor raise an epoch: the
    // attack of before (2^64 - 1, naming n3, sent to all three) now re-points n1 and n2
    // at n3 and nothing else; n3 refuses to be told it leads.
    let op = common::client(&certs, "op");
    for (i, a) in admin.iter().enumerate() {
        let r: Result<serde_json::Value, String> =
            op.post(a, "/leader", attack.as_bytes(), Duration::from_secs(10));
        if i == 2 {
            let e = r.unwrap_err();
            assert!(e.contains("409") && e.contains("promote it"), "{e}");
        } else {
            assert_eq!(r.unwrap()["epoch"], 0, "the epoch is not taken");
        }
    }
    std::thread::sleep(Duration::from_millis(600));
    for a in &admin {
        assert!(epoch_of(a) <= 1, "{a} saw an epoch it was never granted");
    }
    // The operator promotes the most caught-up node; the next epoch is 2, not a wrap.
    let promoted = ok(&[
        "promote",
        &admin[0],
        "--followers",
        &format!("{},{}", admin[1], admin[2]),
    ]);
    assert!(
        promoted.contains("n1 is the leader in epoch 2"),
        "{promoted}"
    );
    status_until(&admin[0], "n1 leads both again", |v| {
        v["role"] == "leader" && streaming(v, 2)
    });
    ok(&["append", &admin[0], "-d", "remote-flush", "acknowledged-3"]);
    status_until(&admin[0], "both flushed everything", |v| {
        v["leading"]["followers"]
            .as_array()
            .is_some_and(|f| f.iter().all(|f| f["flush_lag_bytes"] == 0))
    });

    for n in nodes {
        assert!(n.stop().0);
    }
    for id in ["n1", "n2", "n3"] {
        let dump = records(&dir.join("data").join(id));
        for r in ["acknowledged-1", "acknowledged-2", "acknowledged-3"] {
            assert!(dump.contains(r), "{id} lost {r}: {dump}");
        }
        assert!(!dump.contains("forged"), "{id}");
    }
}

#[test]
fn the_plain_listener_is_read_only_and_answers_loopback_names_only() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    common::certs(dir, "prod", "n1");
    let (listen, admin, plain_addr) = (free_udp(), free_tcp(), free_tcp());
    let path = config(dir, "n1", &listen, &admin, "", "ANY 1 (*)");
    edit(
        &path,
        "[tls]",
        &format!("admin_plain = \"{plain_addr}\"\n\n[tls]"),
    );
    let served = Served::start(&path, &admin);
    let url = format!("http://{plain_addr}");
    // Readable without a certificate.
    let status = walship()
        .args(["status", &url])
        .env_remove("WALSHIP_CERT")
        .env_remove("WALSHIP_KEY")
        .env_remove("WALSHIP_CA")
        .output()
        .unwrap();
    assert!(status.status.success());
    assert!(String::from_utf8_lossy(&status.stdout).contains("node       n1"));
    let metrics = plain(
        &plain_addr,
        "GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n",
    );
    assert!(metrics.contains("200"), "{metrics}");
    // Changes are refused, whoever asks (a web page included).
    for p in [
        "/append?durability=local",
        "/promote",
        "/step-down",
        "/leader",
    ] {
        let got = plain(
            &plain_addr,
            &post(
                p,
                "x",
                "Origin: http://evil.example\r\nContent-Type: text/plain\r\n",
            ),
        );
        assert!(got.contains("403"), "{p}: {got}");
    }
    // A name that resolves to loopback by rebinding is not a loopback name.
    let got = plain(
        &plain_addr,
        "GET /status HTTP/1.1\r\nHost: evil.example:80\r\n\r\n",
    );
    assert!(got.contains("421"), "{got}");
    assert!(served.stop().0);
    assert!(!records(&dir.join("data/n1")).contains("\"x\""));

    // Off loopback it does not start, naming the key.
    edit(
        &path,
        &format!("admin_plain = \"{plain_addr}\""),
        "admin_plain = \"0.0.0.0:7481\"",
    );
    let out = walship()
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`admin_plain`: 0.0.0.0:7481 is not a loopback address"),
        "{err}"
    );
}

#[test]
fn non_member_and_revoked_certificates_are_refused_without_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let certs = common::certs(dir, "prod", "n1,n2,n4");
    let (listen, admin) = (free_udp(), free_tcp());
    // n4 has a certificate of the cluster's CA but is in no configuration. (n1 is a
    // cluster of one: a member that never came up would keep its epoch unconfirmed, and
    // its log sealed.)
    let path = config(dir, "n1", &listen, &admin, "", "ANY 1 (*)");
    edit(
        &path,
        "key = \"certs/n1.key\"",
        "key = \"certs/n1.key\"\ncrl = \"certs/crl.pem\"",
    );
    let served = Served::start(&path, &admin);
    status_until(&admin, "n1 leads", |v| v["role"] == "leader");

    common::present(&certs, "n4");
    let e = refused(&["status", &admin]);
    assert!(e.contains("the node refused this certificate"), "{e}");

    // The operator works; once revoked (and the list copied where the node reads it),
    // the same certificate is refused at the next handshake, the node still running.
    common::present(&certs, "op");
    ok(&["append", &admin, "-d", "local", "before"]);
    let revoked = ok(&["certs", "revoke", "--out", certs.to_str().unwrap(), "op"]);
    assert!(revoked.contains("now revokes 1 certificate"), "{revoked}");
    let e = refused(&["append", &admin, "-d", "local", "after"]);
    assert!(e.contains("the node refused this certificate"), "{e}");
    // A monitor is not revoked.
    common::present(&certs, "mon");
    assert!(ok(&["status", &admin]).contains("node       n1"));
    assert!(served.stop().0);
    let dump = records(&dir.join("data/n1"));
    assert!(
        dump.contains("before") && !dump.contains("\"after\""),
        "{dump}"
    );
    assert!(Path::new(&certs.join("crl.pem")).exists());
}
