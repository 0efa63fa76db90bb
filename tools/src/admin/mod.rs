//! A node's admin endpoint and the client the CLI uses.
//!
//! The endpoint speaks **HTTPS with mutual TLS** against the cluster CA: a client without
//! a certificate of the cluster never gets past the handshake (a web page in a browser on
//! the host cannot present one). What a caller may do follows its certificate's role:
//!
//! | request | role | answer |
//! | --- | --- | --- |
//! | `GET /status` | any | the node's status as JSON ([`NodeView`]) |
//! | `GET /metrics` | any | Prometheus text format ([`Metrics`]) |
//! | `GET /wait?lsn=LSN&timeout_ms=N` | any | read-your-writes: returns once this node applied `LSN` |
//! | `POST /append?durability=LEVEL` | operator | appends the body as one record, commits it at `LEVEL`, returns `{"lsn", "durability", "latency_us"}` |
//! | `POST /promote` | operator | takes leadership in a new epoch; returns `{"node_id", "addr", "epoch"}` |
//! | `POST /step-down` | operator | stops leading (fences) and resigns |
//! | `POST /leader` | operator | static coordinator only: body `{"node_id", "addr"}` names the member to follow (never this node, and never an epoch: epochs come from the leader's own grant) |
//! | `DELETE /slots/NODE` | operator | on the leader: drops `NODE`'s retention slot |
//!
//! "any" is a monitor, an operator or a member node. An optional second listener speaks
//! plain HTTP, **read-only** (`GET` of the rows marked "any"), on loopback only, for
//! scrapers that cannot present a certificate; it answers only requests whose `Host` is a
//! loopback name, so a web page cannot read it through DNS rebinding either.
//!
//! Errors are JSON `{"error": "…"}` with a status saying whose fault: 400 for a bad
//! request, 403 when the certificate's role does not allow it, 409 when the node's role
//! does not (a follower asked to append), 503 when a commit could not be confirmed, 504
//! on a timeout. Every change an operator makes is logged with the operator's name.
//!
//! Everything a client can make it hold is bounded: at most [`MAX_CONNECTIONS`]
//! connections are served at once (more wait in the kernel's backlog, costing the process
//! no descriptor), one request per connection, the TLS handshake and the headers each
//! within [`HEADER_TIMEOUT`], a body only with a `Content-Length` within the log's record
//! limit (`/append`) or 4 KiB, read within [`BODY_TIMEOUT`], and all bodies held at once
//! within [`BODY_BUDGET`] bytes (beyond it: 503, retry); `/wait` waits at most
//! [`MAX_WAIT`]. Accept errors (such as running out of descriptors) and refused
//! handshakes back off or are logged once per burst, never once per failure.

pub mod client;
mod routes;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioIo, TokioTimer};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{watch, Semaphore};
use walship_transport::coordinator::StaticCoordinator;
use walship_transport::tls::{peer_of_tls, MemberSet, PeerId};
use walship_transport::Node;

use crate::metrics::Metrics;
#[cfg(doc)]
use crate::view::NodeView;

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 64;
/// A connection's TLS handshake, and then its request's headers, must each have arrived
/// within this (slow clients hold no slot longer).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A request's body must have arrived within this.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest `/wait`.
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// Request bodies held in memory at once, over all connections.
pub const BODY_BUDGET: usize = 64 << 20;
/// The longest any connection lives: handshake, headers, body, the slowest answer, slack.
const CONNECTION_LIMIT: Duration = Duration::from_secs(5 + 5 + 30 + 60 + 25);

/// What the endpoint serves.
pub struct AdminState {
    /// The node.
    pub node: Arc<Node>,
    /// Its metrics.
    pub metrics: Metrics,
    /// The address others connect to for replication, reported by `/promote`.
    pub advertise: String,
    /// With a static coordinator: its handle, for `/leader`.
    pub operator: Option<StaticCoordinator>,
    /// The cluster's members: `/leader` names one of them.
    pub members: MemberSet,
    /// Whether `POST /append` may put raw records in the log. An embedder whose log holds
    /// records of its own format (walship-kv) refuses them: its replicas could not apply
    /// them.
    pub raw_appends: bool,
}

/// How a listener talks.
#[derive(Clone)]
pub enum Listener {
    /// HTTPS with mutual TLS (the server config admits the cluster's certificates).
    Https(Arc<rustls::ServerConfig>),
    /// Plain HTTP, read-only. Only for loopback addresses.
    PlainReadOnly,
}

/// Who sent a request.
#[derive(Debug, Clone)]
pub enum Caller {
    /// The holder of this verified certificate.
    Certificate(PeerId),
    /// Someone on this host, over the plain read-only listener.
    Local,
}

/// A running admin listener.
pub struct Admin {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Admin {
    /// Listens on `addr` and serves `state` until [`shutdown`](Admin::shutdown).
    ///
    /// # Errors
    /// The address cannot be bound, or a plain listener was asked for on an address
    /// other than loopback.
    pub async fn start(
        addr: SocketAddr,
        listener: Listener,
        state: Arc<AdminState>,
    ) -> std::io::Result<Admin> {
        if matches!(listener, Listener::PlainReadOnly) && !addr.ip().is_loopback() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!("{addr} is not a loopback address: plain HTTP is served on loopback only"),
            ));
        }
        let tcp = tokio::net::TcpListener::bind(addr).await?;
        let addr = tcp.local_addr()?;
        let (stop, mut stopped) = watch::channel(false);
        let ctx = Arc::new(routes::Ctx {
            state,
            bodies: Arc::new(Semaphore::new(BODY_BUDGET / 1024)),
        });
        let task = tokio::spawn(async move {
            let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
            let mut conns = tokio::task::JoinSet::new();
            let mut accept = Burst::new("admin endpoint: accepting a connection failed");
            let refused = Arc::new(std::sync::Mutex::new(Burst::new(
                "admin endpoint: refused a TLS handshake",
            )));
            loop {
                // A slot first: beyond the cap, connections wait in the kernel's backlog.
                let slot = tokio::select! {
                    _ = stopped.changed() => break,
                    s = Arc::clone(&slots).acquire_owned() => match s {
                        Ok(s) => s,
                        Err(_) => break,
                    },
                };
                let stream = tokio::select! {
                    _ = stopped.changed() => break,
                    a = tcp.accept() => match a {
                        Ok((s, _)) => {
                            accept.ended();
                            s
                        }
                        Err(e) => {
                            let pause = accept.failed(&e);
                            drop(slot);
                            tokio::select! {
                                _ = stopped.changed() => break,
                                () = tokio::time::sleep(pause) => continue,
                            }
                        }
                    },
                };
                let (ctx, listener, refused) =
                    (Arc::clone(&ctx), listener.clone(), Arc::clone(&refused));
                conns.spawn(async move {
                    let _slot = slot;
                    let _ = tokio::time::timeout(
                        CONNECTION_LIMIT,
                        connection(ctx, listener, stream, refused),
                    )
                    .await;
                });
                while conns.try_join_next().is_some() {}
            }
            conns.shutdown().await;
        });
        Ok(Admin { addr, stop, task })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops listening and ends open connections.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// One connection: the TLS handshake (if any), then one request.
async fn connection(
    ctx: Arc<routes::Ctx>,
    listener: Listener,
    stream: tokio::net::TcpStream,
    refused: Arc<std::sync::Mutex<Burst>>,
) {
    match listener {
        Listener::PlainReadOnly => serve_http(ctx, Caller::Local, stream).await,
        Listener::Https(config) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            let outcome = match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(stream)).await
            {
                Ok(Ok(tls)) => peer_of_tls(tls.get_ref().1.peer_certificates())
                    .map(|p| (tls, p))
                    .map_err(|e| e.to_string()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no TLS handshake within {HEADER_TIMEOUT:?}")),
            };
            let peer = {
                let mut burst = refused
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                match outcome {
                    Ok(ok) => {
                        burst.ended();
                        Some(ok)
                    }
                    Err(why) => {
                        burst.failed(&why);
                        None
                    }
                }
            };
            if let Some((tls, peer)) = peer {
                serve_http(ctx, Caller::Certificate(peer), tls).await;
            }
        }
    }
}

async fn serve_http<S>(ctx: Arc<routes::Ctx>, caller: Caller, io: S)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let caller = Arc::new(caller);
    let service = hyper::service::service_fn(move |req| {
        routes::handle(Arc::clone(&ctx), Arc::clone(&caller), req)
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .keep_alive(false)
        .serve_connection(TokioIo::new(io), service)
        .await;
}

/// Failures that come in bursts (accept errors such as running out of descriptors,
/// refused handshakes): one warning when a burst starts, one when it ends with the count,
/// and a back-off for accepting again.
struct Burst {
    what: &'static str,
    failures: u64,
    pause: Duration,
    since: Instant,
}

impl Burst {
    fn new(what: &'static str) -> Burst {
        Burst {
            what,
            failures: 0,
            pause: Duration::ZERO,
            since: Instant::now(),
        }
    }

    fn failed(&mut self, e: &dyn std::fmt::Display) -> Duration {
        if self.failures == 0 {
            tracing::warn!(error = %e, "{}; further failures are counted, not logged", self.what);
            self.since = Instant::now();
        }
        self.failures += 1;
        self.pause = (self.pause * 2).clamp(Duration::from_millis(5), Duration::from_secs(1));
        self.pause
    }

    fn ended(&mut self) {
        if self.failures > 1 {
            tracing::warn!(
                failures = self.failures,
                over = ?self.since.elapsed(),
                "{}: the burst ended",
                self.what
            );
        }
        self.failures = 0;
        self.pause = Duration::ZERO;
    }
}

/// `/append`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Appended {
    /// The record's LSN: its read-your-writes token.
    pub lsn: String,
    /// The level it was committed at.
    pub durability: String,
    /// How long the commit took.
    pub latency_us: u64,
}

/// `/promote`'s answer and `/leader`'s request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leadership {
    /// The leader.
    pub node_id: String,
    /// Its replication address.
    pub addr: String,
    /// The epoch it leads (in `/promote`'s answer; `/leader` ignores it: a follower
    /// learns the epoch from the leader it connects to, which checks it).
    #[serde(default)]
    pub epoch: u64,
}

/// One retention slot, as `walship slot list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotDropped {
    /// The follower whose slot it was.
    pub node_id: String,
    /// Whether there was one.
    pub dropped: bool,
}

#[derive(Serialize, Deserialize)]
struct ErrorBody {
    error: String,
}
