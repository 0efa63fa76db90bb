//! Running one node from its configuration: the log, replication under the configured
//! coordinator, the admin endpoint and what an [`Embedder`] serves on top (nothing for
//! `walship serve`, a RESP server for walship-kv), until SIGINT or SIGTERM, then a clean
//! shutdown: the embedder's front end first, then the admin endpoint, the node (a leader
//! resigns and tells its followers) and the log.

use std::future::Future;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use walship_engine::{Log, LogIdentity, Lsn, Options};
use walship_transport::coordinator::{Coordinator, LeaderInfo, StaticCoordinator};
use walship_transport::tls::{admin_server_config, Credentials, MemberSet, Role, Trust};
use walship_transport::{Apply, LeaderOptions, Node, NodeOptions, Security};

use crate::admin::{Admin, AdminState, Listener};
use crate::config::{CoordinatorConfig, NodeConfig};
use crate::metrics::Metrics;
use crate::outcome::Failure;

/// What runs on a node besides replication: the state machine its records are applied
/// to, and whatever it serves from it.
pub trait Embedder: Send + 'static {
    /// The state machine replicated records are applied to.
    type Apply: Apply;
    /// What [`start`](Embedder::start) leaves running, until [`stop`](Embedder::stop).
    type Running: Send;

    /// The program's name, for its messages (`walship`, `walship-kv`).
    fn name(&self) -> &'static str;

    /// Before the node starts, with its log open: the state machine, and where its state
    /// ends (the node applies the records after it).
    ///
    /// # Errors
    /// Why the state cannot be built; nothing starts.
    fn prepare(&mut self, log: &Arc<Log>) -> Result<(Self::Apply, Lsn), String>;

    /// Once the node runs: starts what the embedder serves; returns it and a phrase for
    /// the announcement (", RESP on 127.0.0.1:6379"), empty for none.
    ///
    /// # Errors
    /// Why it cannot start; the node is stopped again.
    fn start(
        &mut self,
        node: Arc<Node>,
    ) -> impl Future<Output = Result<(Self::Running, String), String>> + Send;

    /// Stops what `start` started, before the node stops.
    fn stop(running: Self::Running) -> impl Future<Output = ()> + Send;

    /// The snapshots the node serves, leading, to a follower whose position its log no
    /// longer holds (called after [`prepare`](Embedder::prepare)); `None` refuses it.
    fn snapshots(&self) -> Option<Arc<dyn walship_transport::snapshot::SnapshotSource>> {
        None
    }

    /// Whether the admin endpoint's `POST /append` may put raw records in the log: not
    /// when the log holds records of the embedder's own format.
    fn raw_appends(&self) -> bool {
        true
    }
}

/// Runs the node `cfg` describes, with `embedder`, until SIGINT or SIGTERM; logs go to
/// standard error (`RUST_LOG` filters them, default `info`).
///
/// # Errors
/// [`Failure`] naming what could not start.
pub fn run<E: Embedder>(cfg: NodeConfig, embedder: E, out: &mut dyn Write) -> Result<(), Failure> {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .try_init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Error(format!("starting the runtime: {e}")))?;
    rt.block_on(serve(cfg, embedder, out))
}

fn error(what: &str, e: impl std::fmt::Display) -> Failure {
    Failure::Error(format!("{what}: {e}"))
}

/// The node's certificate, and whom it trusts: the CA, the members, the revocation list.
fn security(cfg: &NodeConfig) -> Result<(Security, Arc<Trust>), Failure> {
    let read = |p: &PathBuf| {
        std::fs::read_to_string(p).map_err(|e| error(&format!("reading {}", p.display()), e))
    };
    // Read again whenever the files change: `walship certs renew` needs no restart.
    let credentials = Credentials::from_files(&cfg.cert, &cfg.key).map_err(|e| {
        error(
            &format!("{} / {}", cfg.cert.display(), cfg.key.display()),
            e,
        )
    })?;
    let identity = credentials.identity();
    if identity.role() != Role::Node {
        return Err(Failure::Error(format!(
            "`tls.cert`: {} is a {} certificate; a node needs a node certificate \
             (walship certs --nodes {})",
            cfg.cert.display(),
            identity.role(),
            cfg.node_id
        )));
    }
    if identity.node_id() != cfg.node_id {
        return Err(Failure::Error(format!(
            "`node_id` is {:?} but the certificate {} is for {:?}",
            cfg.node_id,
            cfg.cert.display(),
            identity.node_id()
        )));
    }
    let mut trust = Trust::new(&read(&cfg.ca)?, identity.cluster_id())
        .map_err(|e| error(&format!("`tls.ca` {}", cfg.ca.display()), e))?
        .with_members(MemberSet::of(cfg.members.iter().cloned()));
    if let Some(crl) = &cfg.crl {
        trust = trust
            .with_crl_file(crl)
            .map_err(|e| error("`tls.crl`", e))?;
    }
    let trust = Arc::new(trust);
    Ok((
        Security::with_credentials(credentials, Arc::clone(&trust)),
        trust,
    ))
}

async fn serve<E: Embedder>(
    cfg: NodeConfig,
    mut embedder: E,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    let (security, trust) = security(&cfg)?;
    let mut options = Options {
        backend: cfg.backend,
        // A copy of another cluster's or node's data is refused before it is touched.
        identity: Some(LogIdentity::new(security.cluster_id(), security.node_id())),
        ..Options::default()
    };
    if let Some(s) = cfg.segment_bytes {
        options.segment_capacity = s;
    }
    let log = Arc::new(
        Log::open(&cfg.data_dir, options)
            .map_err(|e| error(&format!("opening the log in {}", cfg.data_dir.display()), e))?,
    );
    let mut leader = LeaderOptions {
        listen: cfg.listen,
        sync: cfg.sync.clone(),
        remote_commit_timeout: cfg.remote_commit_timeout,
        // With other members, an epoch is written in only once a quorum of them confirmed
        // it; a cluster of one is its own majority.
        write_after_confirmation: cfg.members.len() > 1,
        ..LeaderOptions::default()
    };
    if let Some(m) = cfg.max_retained_bytes {
        leader.max_retained_bytes = m;
    }
    leader.max_udp_payload = cfg.max_udp_payload;
    leader.compression = cfg.compression;
    let (apply, apply_from) = embedder.prepare(&log).map_err(Failure::Error)?;
    leader.snapshots = embedder.snapshots();
    let opts = NodeOptions {
        leader,
        follower: walship_transport::FollowerOptions {
            max_udp_payload: cfg.max_udp_payload,
            ..walship_transport::FollowerOptions::default()
        },
        advertise: cfg.advertise.clone(),
        apply_from: Some(apply_from),
        ..NodeOptions::default()
    };
    let parts = Parts { embedder, apply };
    let advertise = cfg
        .advertise
        .clone()
        .unwrap_or_else(|| cfg.listen.to_string());
    match &cfg.coordinator {
        CoordinatorConfig::Static { leader, peers } => {
            let addr = if *leader == cfg.node_id {
                advertise.clone()
            } else {
                peers.get(leader).map(|a| a.to_string()).unwrap_or_default()
            };
            let c = StaticCoordinator::new(Some(LeaderInfo {
                node_id: leader.clone(),
                addr,
                epoch: Default::default(),
            }));
            run_node(
                &cfg,
                log,
                (security, trust),
                c.clone(),
                Some(c),
                opts,
                advertise,
                parts,
                out,
            )
            .await
        }
        #[cfg(feature = "etcd")]
        CoordinatorConfig::Etcd {
            endpoints,
            cluster,
            members,
            lease_ttl,
            election_quorum,
            check_interval,
        } => {
            let mut opts = opts;
            opts.election_quorum = *election_quorum;
            opts.check_interval = *check_interval;
            let mut c = walship_transport::coordinator::EtcdCoordinator::connect(
                endpoints, cluster, *lease_ttl,
            )
            .await
            .map_err(|e| error("`coordinator`", e))?;
            // The configured members only bootstrap the roster; once in etcd, etcd's is
            // the membership (as etcd's own --initial-cluster).
            let roster = c
                .bootstrap_roster(members)
                .await
                .map_err(|e| error("`coordinator.members`", e))?;
            if roster != *members {
                tracing::warn!(configured = ?members, in_etcd = ?roster, "the roster in etcd differs from `coordinator.members`; etcd's is in force");
            }
            trust.members().set(roster.iter().cloned());
            run_node(
                &cfg,
                log,
                (security, trust),
                c,
                None,
                opts,
                advertise,
                parts,
                out,
            )
            .await
        }
        // Refused when the configuration was read; kept as a clear error all the same.
        #[cfg(not(feature = "etcd"))]
        CoordinatorConfig::Etcd { .. } => Err(Failure::Error(format!(
            "`coordinator.kind`: {}",
            crate::config::ETCD_NOT_BUILT
        ))),
    }
}

/// The embedder and the state machine it prepared.
struct Parts<E: Embedder> {
    embedder: E,
    apply: E::Apply,
}

#[allow(clippy::too_many_arguments)]
async fn run_node<E: Embedder>(
    cfg: &NodeConfig,
    log: Arc<Log>,
    (security, trust): (Security, Arc<Trust>),
    coordinator: impl Coordinator + 'static,
    operator: Option<StaticCoordinator>,
    opts: NodeOptions,
    advertise: String,
    Parts {
        mut embedder,
        apply,
    }: Parts<E>,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    let metrics = Metrics::new();
    metrics.follow_certificate(Arc::clone(security.credentials()));
    match security.identity().info() {
        Ok(info) => {
            let left = info
                .not_after
                .duration_since(std::time::SystemTime::now())
                .unwrap_or_default();
            if left < std::time::Duration::from_secs(14 * 86_400) {
                tracing::warn!(
                    days = left.as_secs() / 86_400,
                    "this node's certificate expires soon; renew it (walship certs renew)"
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot read this node's certificate's validity"),
    }
    let https = admin_server_config(security.credentials(), &trust)
        .map_err(|e| error("the admin endpoint's TLS", e))?;
    let node = Arc::new(
        Node::start(Arc::clone(&log), security, coordinator, opts, apply)
            .map_err(|e| error("starting the node", e))?,
    );
    let state = Arc::new(AdminState {
        node: Arc::clone(&node),
        metrics,
        advertise,
        operator,
        members: trust.members().clone(),
        raw_appends: embedder.raw_appends(),
    });
    let admin = match Admin::start(cfg.admin, Listener::Https(https), Arc::clone(&state)).await {
        Ok(a) => a,
        Err(e) => {
            stop(node, log).await;
            return Err(error(&format!("`admin`: binding {}", cfg.admin), e));
        }
    };
    // The listeners hold the node's only other references: once they are shut down, the
    // node is ours alone again and can be shut down cleanly (`stop`).
    let plain = match cfg.admin_plain {
        None => {
            drop(state);
            None
        }
        Some(addr) => match Admin::start(addr, Listener::PlainReadOnly, state).await {
            Ok(a) => Some(a),
            Err(e) => {
                admin.shutdown().await;
                stop(node, log).await;
                return Err(error(&format!("`admin_plain`: binding {addr}"), e));
            }
        },
    };
    let (running, served) = match embedder.start(Arc::clone(&node)).await {
        Ok(r) => r,
        Err(e) => {
            admin.shutdown().await;
            if let Some(p) = plain {
                p.shutdown().await;
            }
            stop(node, log).await;
            return Err(Failure::Error(e));
        }
    };
    let plain_note = plain.as_ref().map_or(String::new(), |p| {
        format!(", read-only on http://{}", p.local_addr())
    });
    // The handlers are in place before the node announces itself: a SIGTERM right after
    // the announcement (a supervisor, a test) gets the clean shutdown, not the default
    // action that ends the process at once (found by a test that stopped a node as soon
    // as it announced itself, on a loaded machine).
    let signals = signals();
    writeln!(
        out,
        "{}: node {} replicating on {}, admin on https://{}{plain_note}{served}",
        embedder.name(),
        cfg.node_id,
        cfg.listen,
        admin.local_addr()
    )?;
    out.flush()?;
    let signal = wait_for_signal(signals).await;
    tracing::info!(signal, "shutting down");
    E::stop(running).await;
    admin.shutdown().await;
    if let Some(p) = plain {
        p.shutdown().await;
    }
    stop(node, log).await;
    writeln!(
        out,
        "{}: node {} stopped ({signal})",
        embedder.name(),
        cfg.node_id
    )?;
    Ok(())
}

async fn stop(node: Arc<Node>, log: Arc<Log>) {
    match Arc::try_unwrap(node) {
        Ok(node) => node.shutdown().await,
        // A bug: something still holds the node. Say so rather than exit without
        // resigning and closing the followers' connections.
        Err(node) => tracing::error!(
            references = Arc::strong_count(&node),
            "the node is still referenced at shutdown; stopping without resigning"
        ),
    }
    if let Err(e) = log.close() {
        tracing::error!(error = %e, "closing the log");
    }
}

type Signals = Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>;

/// SIGTERM's and SIGINT's handlers, installed now.
fn signals() -> Signals {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(term), Ok(int)) => Some((term, int)),
        _ => None,
    }
}

async fn wait_for_signal(signals: Signals) -> &'static str {
    let Some((mut term, mut int)) = signals else {
        // Without signal handlers, Ctrl-C still ends the process (the OS default).
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}
