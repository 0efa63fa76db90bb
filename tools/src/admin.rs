//! A node's admin endpoint (HTTP/1.1, loopback by default) and the client the CLI uses.
//!
//! | request | answer |
//! | --- | --- |
//! | `GET /status` | the node's status as JSON ([`NodeView`]) |
//! | `GET /metrics` | Prometheus text format ([`Metrics`]) |
//! | `POST /append?durability=LEVEL` | appends the body as one record, commits it at `LEVEL`, returns `{"lsn", "durability", "latency_us"}` |
//! | `GET /wait?lsn=LSN&timeout_ms=N` | read-your-writes: returns once this node applied `LSN` |
//! | `POST /promote` | takes leadership in a new epoch; returns `{"node_id", "addr", "epoch"}` |
//! | `POST /step-down` | stops leading (fences) and resigns |
//! | `POST /leader` | static coordinator only: body `{"node_id", "addr", "epoch"}` names the leader to follow |
//!
//! Errors are JSON `{"error": "…"}` with a status saying whose fault: 400 for a bad
//! request, 409 when the node's role does not allow it (a follower asked to append),
//! 503 when a commit could not be confirmed, 504 on a timeout.
//!
//! The endpoint can append and promote: bind it to loopback (the default) or a
//! management network only.
//!
//! Everything a client can make it hold is bounded: at most [`MAX_CONNECTIONS`]
//! connections are served at once (more wait in the kernel's backlog, costing the process
//! no descriptor), one request per connection, headers within [`HEADER_TIMEOUT`], a body
//! only with a `Content-Length` within the log's record limit (`/append`) or 4 KiB, read
//! within [`BODY_TIMEOUT`], and all bodies held at once within [`BODY_BUDGET`] bytes
//! (beyond it: 503, retry); `/wait` waits at most [`MAX_WAIT`]. Accept errors (such as
//! running out of descriptors) back off and log one warning per burst.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use walship_engine::{Durability, Epoch, Lsn};
use walship_transport::coordinator::{LeaderInfo, StaticCoordinator};
use walship_transport::Node;

use crate::metrics::Metrics;
use crate::view::NodeView;

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 64;
/// A request's headers must have arrived within this (slow clients hold no slot longer).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A request's body must have arrived within this.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest `/wait`.
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// Request bodies held in memory at once, over all connections.
pub const BODY_BUDGET: usize = 64 << 20;
/// Largest body of a request that carries no record (`/leader`).
const MAX_SMALL_BODY: usize = 4096;
/// The longest any connection lives: headers, body, the slowest answer, some slack.
const CONNECTION_LIMIT: Duration = Duration::from_secs(5 + 30 + 60 + 25);

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
}

/// A running admin endpoint.
pub struct Admin {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Admin {
    /// Listens on `addr` and serves `state` until [`shutdown`](Admin::shutdown).
    ///
    /// # Errors
    /// The address cannot be bound.
    pub async fn start(addr: SocketAddr, state: Arc<AdminState>) -> std::io::Result<Admin> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (stop, mut stopped) = watch::channel(false);
        let ctx = Arc::new(Ctx {
            state,
            bodies: Arc::new(Semaphore::new(BODY_BUDGET / 1024)),
        });
        let task = tokio::spawn(async move {
            let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
            let mut conns = tokio::task::JoinSet::new();
            let mut accept = AcceptBackoff::default();
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
                    a = listener.accept() => match a {
                        Ok((s, _)) => {
                            accept.succeeded();
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
                let ctx = Arc::clone(&ctx);
                conns.spawn(async move {
                    let _slot = slot;
                    let service =
                        hyper::service::service_fn(move |req| handle(Arc::clone(&ctx), req));
                    let conn = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(HEADER_TIMEOUT)
                        .keep_alive(false)
                        .serve_connection(TokioIo::new(stream), service);
                    let _ = tokio::time::timeout(CONNECTION_LIMIT, conn).await;
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

/// What a connection's requests are served with.
struct Ctx {
    state: Arc<AdminState>,
    /// Request bodies held in memory, in KiB.
    bodies: Arc<Semaphore>,
}

/// Backs off after failed accepts (`EMFILE`: accepting again at once would spin and log
/// without end) and logs one warning per burst of failures, not one per failure.
#[derive(Default)]
struct AcceptBackoff {
    failures: u64,
    pause: Duration,
}

impl AcceptBackoff {
    fn failed(&mut self, e: &std::io::Error) -> Duration {
        if self.failures == 0 {
            tracing::warn!(error = %e, "admin endpoint: accepting a connection failed; backing off until it works again");
        }
        self.failures += 1;
        self.pause = (self.pause * 2).clamp(Duration::from_millis(5), Duration::from_secs(1));
        self.pause
    }

    fn succeeded(&mut self) {
        if self.failures > 0 {
            tracing::warn!(
                failures = self.failures,
                "admin endpoint: accepting connections again"
            );
        }
        *self = AcceptBackoff::default();
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
    /// The epoch it leads.
    pub epoch: u64,
}

#[derive(Serialize, Deserialize)]
struct ErrorBody {
    error: String,
}

type Reply = Response<Full<Bytes>>;

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Reply {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Reply {
    match serde_json::to_vec_pretty(value) {
        Ok(b) => reply(status, "application/json", b),
        Err(e) => fail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

fn fail(status: StatusCode, error: impl Into<String>) -> Reply {
    json(
        status,
        &ErrorBody {
            error: error.into(),
        },
    )
}

/// The value of `key` in the query string.
fn query<'a>(req: &'a Request<Incoming>, key: &str) -> Option<&'a str> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then_some(v)
    })
}

async fn handle(ctx: Arc<Ctx>, req: Request<Incoming>) -> Result<Reply, Infallible> {
    let state = &ctx.state;
    let node = &state.node;
    let r = match (req.method(), req.uri().path()) {
        (&Method::GET, "/status") => json(
            StatusCode::OK,
            &NodeView::new(&node.status(), &node.log().watermarks()),
        ),
        (&Method::GET, "/metrics") => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            state
                .metrics
                .render(&node.status(), &node.log().watermarks()),
        ),
        (&Method::POST, "/append") => append(&ctx, req).await,
        (&Method::GET, "/wait") => wait(state, &req).await,
        (&Method::POST, "/promote") => match node.promote().await {
            Ok(epoch) => json(
                StatusCode::OK,
                &Leadership {
                    node_id: node.node_id().to_string(),
                    addr: state.advertise.clone(),
                    epoch: epoch.get(),
                },
            ),
            Err(e) => fail(StatusCode::CONFLICT, format!("promotion failed: {e}")),
        },
        (&Method::POST, "/step-down") => {
            match node.step_down("requested through the admin endpoint").await {
                Ok(()) => json(StatusCode::OK, &serde_json::json!({"stepped_down": true})),
                Err(e) => fail(StatusCode::CONFLICT, e.to_string()),
            }
        }
        (&Method::POST, "/leader") => set_leader(&ctx, req).await,
        (
            _,
            "/status" | "/metrics" | "/append" | "/wait" | "/promote" | "/step-down" | "/leader",
        ) => fail(StatusCode::METHOD_NOT_ALLOWED, "wrong method for this path"),
        (_, path) => fail(
            StatusCode::NOT_FOUND,
            format!("no such endpoint {path:?}; see /status, /metrics"),
        ),
    };
    Ok(r)
}

/// The request's body, of at most `max` bytes, read only after its declared length was
/// checked and reserved in the shared body budget; the permit holds the reservation.
async fn body(
    ctx: &Ctx,
    req: Request<Incoming>,
    max: usize,
) -> Result<(Bytes, OwnedSemaphorePermit), Reply> {
    let declared = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let Some(len) = declared else {
        return Err(fail(
            StatusCode::LENGTH_REQUIRED,
            "send the body with a Content-Length",
        ));
    };
    if len > max as u64 {
        return Err(fail(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is {len} bytes; this request takes at most {max}"),
        ));
    }
    let kib = u32::try_from(len.div_ceil(1024).max(1)).unwrap_or(u32::MAX);
    let Ok(permit) = Arc::clone(&ctx.bodies).try_acquire_many_owned(kib) else {
        return Err(fail(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("busy: {BODY_BUDGET} bytes of request bodies are being received; retry"),
        ));
    };
    let read = Limited::new(req.into_body(), max).collect();
    match tokio::time::timeout(BODY_TIMEOUT, read).await {
        Ok(Ok(b)) => Ok((b.to_bytes(), permit)),
        Ok(Err(e)) => Err(fail(
            StatusCode::BAD_REQUEST,
            format!("reading the request body (at most {max} bytes): {e}"),
        )),
        Err(_) => Err(fail(
            StatusCode::REQUEST_TIMEOUT,
            format!("the body did not arrive within {BODY_TIMEOUT:?}"),
        )),
    }
}

async fn append(ctx: &Ctx, req: Request<Incoming>) -> Reply {
    let state = &ctx.state;
    let level = match query(&req, "durability")
        .unwrap_or("local")
        .parse::<Durability>()
    {
        Ok(l) => l,
        Err(e) => return fail(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let max = state.node.log().max_record_bytes();
    let (data, _reserved) = match body(ctx, req, max).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let node = &state.node;
    let started = Instant::now();
    let lsn = match node.log().append(&data) {
        Ok(l) => l,
        Err(e @ walship_engine::Error::Sealed { .. }) => {
            return fail(
                StatusCode::CONFLICT,
                format!(
                    "{e} (this node is {}; write to the leader)",
                    node.role().as_str()
                ),
            )
        }
        Err(e) => return fail(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let result = node.commit(lsn, level).await;
    let took = started.elapsed();
    state.metrics.observe_commit(level, took, result.is_ok());
    match result {
        Ok(()) => json(
            StatusCode::OK,
            &Appended {
                lsn: lsn.to_string(),
                durability: level.to_string(),
                latency_us: u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
            },
        ),
        Err(e) => fail(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("record {lsn} was appended but not committed at {level}: {e}"),
        ),
    }
}

async fn wait(state: &AdminState, req: &Request<Incoming>) -> Reply {
    let lsn = match query(req, "lsn").map(str::parse::<Lsn>) {
        Some(Ok(l)) => l,
        Some(Err(e)) => return fail(StatusCode::BAD_REQUEST, e.to_string()),
        None => return fail(StatusCode::BAD_REQUEST, "missing ?lsn="),
    };
    let timeout = query(req, "timeout_ms")
        .and_then(|t| t.parse().ok())
        .map_or(Duration::from_secs(10), Duration::from_millis)
        .min(MAX_WAIT);
    match state.node.wait_for_applied(lsn, timeout).await {
        Ok(()) => json(
            StatusCode::OK,
            &serde_json::json!({"applied": lsn.to_string()}),
        ),
        Err(e) => fail(StatusCode::GATEWAY_TIMEOUT, e.to_string()),
    }
}

async fn set_leader(ctx: &Ctx, req: Request<Incoming>) -> Reply {
    let state = &ctx.state;
    let Some(op) = &state.operator else {
        return fail(
            StatusCode::CONFLICT,
            "this node's coordinator is not static: its leader is elected, not set",
        );
    };
    let (b, _reserved) = match body(ctx, req, MAX_SMALL_BODY).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let l: Leadership = match serde_json::from_slice(&b) {
        Ok(l) => l,
        Err(e) => return fail(StatusCode::BAD_REQUEST, format!("body: {e}")),
    };
    op.set_leader(LeaderInfo {
        node_id: l.node_id.clone(),
        addr: l.addr.clone(),
        epoch: Epoch::new(l.epoch),
    });
    json(StatusCode::OK, &l)
}

/// The CLI's side: requests to an admin endpoint.
pub mod client {
    use std::time::Duration;

    use serde::de::DeserializeOwned;

    use super::ErrorBody;

    /// `http://ADDR` for `ADDR`, `host:port` or a URL.
    pub fn base_url(addr: &str) -> String {
        let a = addr.trim_end_matches('/');
        if a.starts_with("http://") || a.starts_with("https://") {
            a.to_string()
        } else {
            format!("http://{a}")
        }
    }

    fn agent(timeout: Duration) -> ureq::Agent {
        ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .build()
            .into()
    }

    /// The answer's text, or an error naming the URL, the status and the endpoint's
    /// own explanation (its `{"error": …}` body) when there is one.
    fn text(
        url: &str,
        r: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<String, String> {
        let mut r = r.map_err(|e| format!("{url}: {e}"))?;
        let status = r.status();
        let text = r
            .body_mut()
            .read_to_string()
            .map_err(|e| format!("{url}: reading the answer: {e}"))?;
        if !status.is_success() {
            let why = serde_json::from_str::<ErrorBody>(&text)
                .map(|e| e.error)
                .unwrap_or(text);
            return Err(format!("{url}: {status}: {why}"));
        }
        Ok(text)
    }

    fn parse<T: DeserializeOwned>(url: &str, text: &str) -> Result<T, String> {
        serde_json::from_str(text).map_err(|e| format!("{url}: unexpected answer: {e}"))
    }

    /// `GET` `path` and parse the JSON answer.
    ///
    /// # Errors
    /// Connection, HTTP or parse failures, with the URL.
    pub fn get<T: DeserializeOwned>(
        addr: &str,
        path: &str,
        timeout: Duration,
    ) -> Result<T, String> {
        let url = format!("{}{path}", base_url(addr));
        parse(&url, &get_text(addr, path, timeout)?)
    }

    /// `GET` `path` as text.
    ///
    /// # Errors
    /// Connection or HTTP failures, with the URL.
    pub fn get_text(addr: &str, path: &str, timeout: Duration) -> Result<String, String> {
        let url = format!("{}{path}", base_url(addr));
        text(&url, agent(timeout).get(&url).call())
    }

    /// `POST` `body` to `path` and parse the JSON answer.
    ///
    /// # Errors
    /// Connection, HTTP or parse failures, with the URL.
    pub fn post<T: DeserializeOwned>(
        addr: &str,
        path: &str,
        body: &[u8],
        timeout: Duration,
    ) -> Result<T, String> {
        let url = format!("{}{path}", base_url(addr));
        parse(&url, &text(&url, agent(timeout).post(&url).send(body))?)
    }
}
