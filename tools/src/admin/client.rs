//! The CLI's side: requests to a node's admin endpoint, over HTTPS with the caller's
//! certificate (an operator's to change things, a monitor's to read), as `etcdctl` does
//! with `--cacert`, `--cert`, `--key`.
//!
//! An address is `host:port` or `https://host:port` (HTTPS, the default) or
//! `http://host:port` (a node's plain read-only listener, no certificate needed). The
//! server must present a certificate of a member node of the cluster the caller's
//! certificate names; `--server-name` pins which node (PostgreSQL's `verify-full`),
//! otherwise any member node is accepted (`verify-ca`: the cluster CA issues node
//! certificates only to its nodes).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use serde::de::DeserializeOwned;
use walship_transport::tls::{admin_client_config, NodeIdentity};

use super::ErrorBody;

/// The largest answer read (a `/status` of a leader with many followers is a few KiB).
const MAX_ANSWER: usize = 64 << 20;
/// The largest certificate or key file read.
const MAX_PEM: u64 = 1 << 20;

/// How the CLI authenticates to a node (flags, or the environment as `etcdctl` takes it).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ClientTls {
    /// The cluster CA certificate (PEM)
    #[arg(long, env = "WALSHIP_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Your certificate (PEM): an operator's to change the cluster, a monitor's to read
    #[arg(long, env = "WALSHIP_CERT", value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// Your certificate's private key (PEM)
    #[arg(long, env = "WALSHIP_KEY", value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Accept only this node's certificate at the address (default: any member node)
    #[arg(long, env = "WALSHIP_SERVER_NAME", value_name = "NODE")]
    pub server_name: Option<String>,
}

fn read_pem(what: &str, path: &Path) -> Result<String, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{what} {}: {e}", path.display()))?;
    if !meta.is_file() || meta.len() > MAX_PEM {
        return Err(format!(
            "{what} {}: not a regular file of at most {MAX_PEM} bytes",
            path.display()
        ));
    }
    std::fs::read_to_string(path).map_err(|e| format!("{what} {}: {e}", path.display()))
}

/// A client of admin endpoints.
#[derive(Clone)]
pub struct Client {
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Client {
    /// A client presenting the certificate `creds` names; without one, it can only talk
    /// to plain read-only listeners (`http://…`).
    ///
    /// # Errors
    /// A file cannot be read, the certificate and key do not match, or the CA is not the
    /// certificate's cluster's.
    pub fn new(creds: &ClientTls) -> Result<Client, String> {
        let tls = match (&creds.cert, &creds.key, &creds.ca) {
            (None, None, None) => None,
            (Some(cert), Some(key), Some(ca)) => {
                let identity =
                    NodeIdentity::from_pem(&read_pem("certificate", cert)?, &read_pem("key", key)?)
                        .map_err(|e| format!("{} / {}: {e}", cert.display(), key.display()))?;
                let ca_pem = read_pem("CA certificate", ca)?;
                Some(
                    admin_client_config(&identity, &ca_pem, creds.server_name.as_deref())
                        .map_err(|e| format!("{}: {e}", ca.display()))?,
                )
            }
            _ => {
                return Err(
                    "give all three of --cert, --key and --ca (or WALSHIP_CERT, WALSHIP_KEY, \
                     WALSHIP_CA)"
                        .into(),
                )
            }
        };
        Ok(Client { tls })
    }

    /// `GET` `path` and parse the JSON answer.
    ///
    /// # Errors
    /// Connection, TLS, HTTP or parse failures, with the URL.
    pub fn get<T: DeserializeOwned>(
        &self,
        addr: &str,
        path: &str,
        timeout: Duration,
    ) -> Result<T, String> {
        let (url, text) = self.request(Method::GET, addr, path, Bytes::new(), timeout)?;
        parse(&url, &text)
    }

    /// `GET` `path` as text.
    ///
    /// # Errors
    /// Connection, TLS or HTTP failures, with the URL.
    pub fn get_text(&self, addr: &str, path: &str, timeout: Duration) -> Result<String, String> {
        self.request(Method::GET, addr, path, Bytes::new(), timeout)
            .map(|(_, t)| t)
    }

    /// `POST` `body` to `path` and parse the JSON answer.
    ///
    /// # Errors
    /// Connection, TLS, HTTP or parse failures, with the URL.
    pub fn post<T: DeserializeOwned>(
        &self,
        addr: &str,
        path: &str,
        body: &[u8],
        timeout: Duration,
    ) -> Result<T, String> {
        let (url, text) = self.request(
            Method::POST,
            addr,
            path,
            Bytes::copy_from_slice(body),
            timeout,
        )?;
        parse(&url, &text)
    }

    /// `DELETE` `path` and parse the JSON answer.
    ///
    /// # Errors
    /// Connection, TLS, HTTP or parse failures, with the URL.
    pub fn delete<T: DeserializeOwned>(
        &self,
        addr: &str,
        path: &str,
        timeout: Duration,
    ) -> Result<T, String> {
        let (url, text) = self.request(Method::DELETE, addr, path, Bytes::new(), timeout)?;
        parse(&url, &text)
    }

    /// One request on a connection of its own; returns the URL and the answer's text.
    fn request(
        &self,
        method: Method,
        addr: &str,
        path: &str,
        body: Bytes,
        timeout: Duration,
    ) -> Result<(String, String), String> {
        let target = Target::parse(addr)?;
        let url = format!("{}{path}", target.base());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("{url}: starting the runtime: {e}"))?;
        let exchange = self.exchange(&target, &url, method, path, body);
        let text = rt.block_on(async {
            tokio::time::timeout(timeout, exchange)
                .await
                .unwrap_or_else(|_| Err(format!("{url}: no answer within {timeout:?}")))
        })?;
        Ok((url, text))
    }

    async fn exchange(
        &self,
        target: &Target,
        url: &str,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<String, String> {
        if target.https && self.tls.is_none() {
            return Err(format!(
                "{url}: the admin endpoint speaks HTTPS with mutual TLS and needs a \
                 certificate: pass --cert, --key and --ca (or WALSHIP_CERT, WALSHIP_KEY, \
                 WALSHIP_CA); `walship certs --operators NAME` (or --monitors NAME) issues one"
            ));
        }
        let tcp = tokio::net::TcpStream::connect(&target.authority)
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, &target.authority)
            .header(hyper::header::CONTENT_LENGTH, body.len())
            .body(Full::new(body))
            .map_err(|e| format!("{url}: {e}"))?;
        if let (true, Some(config)) = (target.https, &self.tls) {
            let name =
                ServerName::try_from(target.host.clone()).map_err(|e| format!("{url}: {e}"))?;
            let tls = tokio_rustls::TlsConnector::from(Arc::clone(config))
                .connect(name, tcp)
                .await
                .map_err(|e| format!("{url}: TLS handshake: {e}"))?;
            send(url, tls, req).await
        } else {
            send(url, tcp, req).await
        }
    }
}

async fn send<S>(url: &str, io: S, req: Request<Full<Bytes>>) -> Result<String, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let driver = tokio::spawn(conn);
    let answer = sender.send_request(req).await;
    let result = async {
        // A peer that refuses our certificate does so after the handshake (TLS 1.3): its
        // alert arrives as this error.
        let answer = answer.map_err(|e| {
            let chain = error_chain(&e);
            let hint = if chain.contains("received fatal alert") {
                " (the node refused this certificate: not of its cluster, not a member, \
                 expired or revoked; its log says which)"
            } else {
                ""
            };
            format!("{url}: {chain}{hint}")
        })?;
        let status = answer.status();
        let bytes = Limited::new(answer.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| format!("{url}: reading the answer: {e}"))?
            .to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        if !status.is_success() {
            let why = serde_json::from_str::<ErrorBody>(&text)
                .map(|e| e.error)
                .unwrap_or(text);
            return Err(format!("{url}: {status}: {why}"));
        }
        Ok(text)
    }
    .await;
    driver.abort();
    result
}

/// An error and its causes, as one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

fn parse<T: DeserializeOwned>(url: &str, text: &str) -> Result<T, String> {
    serde_json::from_str(text).map_err(|e| format!("{url}: unexpected answer: {e}"))
}

/// Where a request goes.
struct Target {
    https: bool,
    /// `host:port`.
    authority: String,
    /// The host alone (an IP address or a name), for the TLS server name.
    host: String,
}

impl Target {
    fn parse(addr: &str) -> Result<Target, String> {
        let a = addr.trim_end_matches('/');
        let (https, authority) = if let Some(rest) = a.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = a.strip_prefix("http://") {
            (false, rest)
        } else {
            (true, a)
        };
        let host = match authority.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok() => {
                h.trim_start_matches('[').trim_end_matches(']').to_string()
            }
            _ => {
                return Err(format!(
                    "{addr:?} is not an admin address like 127.0.0.1:7480 or https://host:7480"
                ))
            }
        };
        Ok(Target {
            https,
            authority: authority.to_string(),
            host,
        })
    }

    fn base(&self) -> String {
        format!(
            "{}://{}",
            if self.https { "https" } else { "http" },
            self.authority
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_default_to_https() {
        let t = Target::parse("127.0.0.1:7480").unwrap();
        assert!(t.https && t.host == "127.0.0.1" && t.base() == "https://127.0.0.1:7480");
        let t = Target::parse("http://localhost:7481/").unwrap();
        assert!(!t.https && t.host == "localhost");
        let t = Target::parse("https://[::1]:7480").unwrap();
        assert_eq!(t.host, "::1");
        assert!(Target::parse("localhost").is_err());
        assert!(Target::parse("https://:80").is_err());
    }

    #[test]
    fn credentials_come_in_threes() {
        let partial = ClientTls {
            cert: Some("x.pem".into()),
            ..ClientTls::default()
        };
        let e = Client::new(&partial).err().unwrap();
        assert!(e.contains("--cert, --key and --ca"), "{e}");
        let none = Client::new(&ClientTls::default()).unwrap();
        let e = none
            .get_text("127.0.0.1:1", "/status", Duration::from_secs(1))
            .unwrap_err();
        assert!(
            e.contains("https://127.0.0.1:1/status") && e.contains("needs a certificate"),
            "{e}"
        );
    }
}
