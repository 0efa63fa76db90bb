//! The admin endpoint's requests: who may make them, and what they do.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use walship_engine::{Durability, Epoch, Lsn};
use walship_transport::coordinator::LeaderInfo;
use walship_transport::tls::Role;

use super::{
    AdminState, Appended, Caller, ErrorBody, Leadership, SlotDropped, BODY_BUDGET, BODY_TIMEOUT,
    MAX_WAIT,
};
use crate::view::NodeView;

/// Largest body of a request that carries no record (`/leader`).
const MAX_SMALL_BODY: usize = 4096;

/// What a connection's requests are served with.
pub(super) struct Ctx {
    pub(super) state: Arc<AdminState>,
    /// Request bodies held in memory, in KiB.
    pub(super) bodies: Arc<Semaphore>,
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

/// What a request needs of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Reading: any certificate of the cluster, or the local read-only listener.
    Read,
    /// Changing the node or the cluster: an operator certificate.
    Operate,
}

/// The request's route and what it needs, or the answer for one that has none.
enum Route {
    Status,
    Metrics,
    Wait,
    Append,
    Promote,
    StepDown,
    SetLeader,
    DropSlot(String),
}

/// A refusal: its status and explanation.
type Refusal = (StatusCode, String);

fn route(req: &Request<Incoming>) -> Result<(Route, Access), Refusal> {
    let path = req.uri().path();
    let r = match (req.method(), path) {
        (&Method::GET, "/status") => (Route::Status, Access::Read),
        (&Method::GET, "/metrics") => (Route::Metrics, Access::Read),
        (&Method::GET, "/wait") => (Route::Wait, Access::Read),
        (&Method::POST, "/append") => (Route::Append, Access::Operate),
        (&Method::POST, "/promote") => (Route::Promote, Access::Operate),
        (&Method::POST, "/step-down") => (Route::StepDown, Access::Operate),
        (&Method::POST, "/leader") => (Route::SetLeader, Access::Operate),
        (&Method::DELETE, p) if p.starts_with("/slots/") && p.len() > "/slots/".len() => (
            Route::DropSlot(p["/slots/".len()..].to_string()),
            Access::Operate,
        ),
        (
            _,
            "/status" | "/metrics" | "/append" | "/wait" | "/promote" | "/step-down" | "/leader",
        ) => {
            return Err((
                StatusCode::METHOD_NOT_ALLOWED,
                "wrong method for this path".into(),
            ))
        }
        (_, p) if p.starts_with("/slots/") => {
            return Err((
                StatusCode::METHOD_NOT_ALLOWED,
                "DELETE /slots/NODE drops NODE's slot; the slots are listed in /status".into(),
            ))
        }
        (_, p) => {
            return Err((
                StatusCode::NOT_FOUND,
                format!("no such endpoint {p:?}; see /status, /metrics"),
            ))
        }
    };
    Ok(r)
}

/// Whether `Host` names this host by a loopback name: the plain listener answers only
/// those, so that a web page cannot read it by rebinding its own name to 127.0.0.1.
fn host_is_loopback(req: &Request<Incoming>) -> bool {
    let Some(host) = req
        .headers()
        .get(hyper::header::HOST)
        .and_then(|h| h.to_str().ok())
    else {
        return false;
    };
    if let Ok(a) = host.parse::<SocketAddr>() {
        return a.ip().is_loopback();
    }
    let name = host.rsplit_once(':').map_or(host, |(h, _)| h);
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Refuses a caller whose certificate does not allow `access`.
fn authorise(caller: &Caller, access: Access, req: &Request<Incoming>) -> Result<(), Refusal> {
    match (caller, access) {
        (Caller::Local, _) if !host_is_loopback(req) => Err((
            StatusCode::MISDIRECTED_REQUEST,
            "the plain-HTTP listener answers only requests for a loopback host".into(),
        )),
        (Caller::Local, Access::Read) => Ok(()),
        (Caller::Local, Access::Operate) => Err((
            StatusCode::FORBIDDEN,
            "the plain-HTTP listener is read-only: send this to the HTTPS admin address with \
             an operator certificate (walship certs --operators NAME issues one)"
                .into(),
        )),
        (Caller::Certificate(_), Access::Read) => Ok(()),
        (Caller::Certificate(p), Access::Operate) if p.role == Role::Operator => Ok(()),
        (Caller::Certificate(p), Access::Operate) => Err((
            StatusCode::FORBIDDEN,
            format!(
                "{p} presents a {} certificate; this request needs an operator certificate",
                p.role
            ),
        )),
    }
}

fn who(caller: &Caller) -> String {
    match caller {
        Caller::Certificate(p) => p.to_string(),
        Caller::Local => "local".into(),
    }
}

pub(super) async fn handle(
    ctx: Arc<Ctx>,
    caller: Arc<Caller>,
    req: Request<Incoming>,
) -> Result<Reply, Infallible> {
    let (route, access) = match route(&req) {
        Ok(r) => r,
        Err((status, why)) => return Ok(fail(status, why)),
    };
    if let Err((status, why)) = authorise(&caller, access, &req) {
        tracing::warn!(
            caller = who(&caller),
            path = req.uri().path(),
            "admin request refused"
        );
        return Ok(fail(status, why));
    }
    let state = &ctx.state;
    let node = &state.node;
    if access == Access::Operate {
        tracing::info!(operator = who(&caller), method = %req.method(), path = req.uri().path(), "admin request");
    }
    let r = match route {
        Route::Status => json(
            StatusCode::OK,
            &NodeView::new(&node.status(), &node.log().watermarks()),
        ),
        Route::Metrics => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            state
                .metrics
                .render(&node.status(), &node.log().watermarks()),
        ),
        Route::Append => append(&ctx, req).await,
        Route::Wait => wait(state, &req).await,
        Route::Promote => match node.promote().await {
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
        Route::StepDown => {
            let why = format!("requested by {} through the admin endpoint", who(&caller));
            match node.step_down(why).await {
                Ok(()) => json(StatusCode::OK, &serde_json::json!({"stepped_down": true})),
                Err(e) => fail(StatusCode::CONFLICT, e.to_string()),
            }
        }
        Route::SetLeader => set_leader(&ctx, req).await,
        Route::DropSlot(n) => match node.drop_slot(&n).await {
            Ok(dropped) => json(
                StatusCode::OK,
                &SlotDropped {
                    node_id: n,
                    dropped,
                },
            ),
            Err(e) => fail(StatusCode::CONFLICT, e.to_string()),
        },
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
    if !state.raw_appends {
        return fail(
            StatusCode::FORBIDDEN,
            "this node's log holds its embedder's records (walship-kv): write through the embedder, not raw appends",
        );
    }
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
    let timeout = query(req, "timeout_ms")
        .and_then(|t| t.parse().ok())
        .map_or(Duration::from_secs(10), Duration::from_millis)
        .min(MAX_WAIT);
    // `?token=epoch@lsn` names the write (read-your-writes across failovers); a bare
    // `?lsn=` only a position.
    if let Some(t) = query(req, "token") {
        let token = match t.parse::<walship_transport::ReadToken>() {
            Ok(t) => t,
            Err(e) => return fail(StatusCode::BAD_REQUEST, e),
        };
        return match state.node.wait_for_token(token, timeout).await {
            Ok(()) => json(
                StatusCode::OK,
                &serde_json::json!({"applied": token.lsn.to_string(), "token": token.to_string()}),
            ),
            Err(e) => fail(StatusCode::GATEWAY_TIMEOUT, e.to_string()),
        };
    }
    let lsn = match query(req, "lsn").map(str::parse::<Lsn>) {
        Some(Ok(l)) => l,
        Some(Err(e)) => return fail(StatusCode::BAD_REQUEST, e.to_string()),
        None => return fail(StatusCode::BAD_REQUEST, "missing ?token= or ?lsn="),
    };
    match state.node.wait_for_applied(lsn, timeout).await {
        Ok(()) => json(
            StatusCode::OK,
            &serde_json::json!({"applied": lsn.to_string()}),
        ),
        Err(e) => fail(StatusCode::GATEWAY_TIMEOUT, e.to_string()),
    }
}

/// Re-points this node at another member (static coordinator). The request names who
/// leads and where, never the epoch: an epoch taken from a request could be any number
/// (2^64 − 1 once left a cluster unable to elect anyone), so the follower learns it from
/// the leader it connects to, which obtained it by promotion, and checks it there.
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
    if l.node_id == state.node.node_id() {
        return fail(
            StatusCode::CONFLICT,
            format!(
                "{} cannot be told that it leads: promote it (POST /promote), which takes a \
                 new epoch from the coordinator",
                l.node_id
            ),
        );
    }
    if !state.members.contains(&l.node_id) {
        return fail(
            StatusCode::BAD_REQUEST,
            format!(
                "{:?} is not a member of this cluster (members: {})",
                l.node_id,
                state.members.list().unwrap_or_default().join(", ")
            ),
        );
    }
    if l.addr.parse::<SocketAddr>().is_err() {
        return fail(
            StatusCode::BAD_REQUEST,
            format!("addr {:?} is not an address like 10.0.0.1:7400", l.addr),
        );
    }
    op.set_leader(LeaderInfo {
        node_id: l.node_id.clone(),
        addr: l.addr.clone(),
        epoch: Epoch::ZERO,
    });
    json(StatusCode::OK, &Leadership { epoch: 0, ..l })
}
