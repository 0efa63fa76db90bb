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

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use walship_engine::{Durability, Epoch, Lsn};
use walship_transport::coordinator::{LeaderInfo, StaticCoordinator};
use walship_transport::Node;

use crate::metrics::Metrics;
use crate::view::NodeView;

/// Largest record `/append` takes.
const MAX_BODY: usize = 16 << 20;

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
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let stream = tokio::select! {
                    _ = stopped.changed() => break,
                    a = listener.accept() => match a {
                        Ok((s, _)) => s,
                        Err(e) => {
                            tracing::warn!(error = %e, "admin endpoint: accept failed");
                            continue;
                        }
                    },
                };
                let state = Arc::clone(&state);
                conns.spawn(async move {
                    let service =
                        hyper::service::service_fn(move |req| handle(Arc::clone(&state), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
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

async fn handle(state: Arc<AdminState>, req: Request<Incoming>) -> Result<Reply, Infallible> {
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
        (&Method::POST, "/append") => append(&state, req).await,
        (&Method::GET, "/wait") => wait(&state, &req).await,
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
        (&Method::POST, "/leader") => set_leader(&state, req).await,
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

async fn body(req: Request<Incoming>) -> Result<Bytes, Reply> {
    match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) => Err(fail(
            StatusCode::BAD_REQUEST,
            format!("reading the request body (at most {MAX_BODY} bytes): {e}"),
        )),
    }
}

async fn append(state: &AdminState, req: Request<Incoming>) -> Reply {
    let level = match query(&req, "durability")
        .unwrap_or("local")
        .parse::<Durability>()
    {
        Ok(l) => l,
        Err(e) => return fail(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let data = match body(req).await {
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
        .map_or(Duration::from_secs(10), Duration::from_millis);
    match state.node.wait_for_applied(lsn, timeout).await {
        Ok(()) => json(
            StatusCode::OK,
            &serde_json::json!({"applied": lsn.to_string()}),
        ),
        Err(e) => fail(StatusCode::GATEWAY_TIMEOUT, e.to_string()),
    }
}

async fn set_leader(state: &AdminState, req: Request<Incoming>) -> Reply {
    let Some(op) = &state.operator else {
        return fail(
            StatusCode::CONFLICT,
            "this node's coordinator is not static: its leader is elected, not set",
        );
    };
    let b = match body(req).await {
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
