//! The leader's driver: a QUIC listener and one sender task per follower.

use std::collections::BTreeMap;
use std::future::pending;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::sync::watch;
use tokio::task::JoinSet;
use walship_engine::{Batch, Commit, Durability, Epoch, Log, Lsn, Reader};

use super::pipeline::{Pipeline, Span};
use super::{peer_certificate, Security, TransportError, CLOSE_ERROR, CLOSE_SHUTDOWN};
use crate::compress::adapt::{LevelControl, Wait};
use crate::compress::CompressionOptions;
use crate::coordinator::{verify_epoch, EpochAuthority};
use crate::quorum::{Progress, SyncPolicy};
use crate::session::leader::{LeaderConfig, LeaderEvent, LeaderSession, LogView};
use crate::session::registry::{self, Effect, Registry, SessionId};
use crate::session::SessionError;
use crate::slots::{SaveJob, SlotWriter, Slots};
use crate::status::{LeaderStatus, Role};
use crate::tls::{peer_identity, Trust};
use crate::wire::{Frame, RejectCode};
use rustls::pki_types::CertificateDer;

/// Settings of a [`Leader`].
#[derive(Debug)]
pub struct LeaderOptions {
    /// Where to listen (loopback by default).
    pub listen: SocketAddr,
    /// A socket to use instead of binding `listen` (for example one bound inside another
    /// network namespace).
    pub socket: Option<std::net::UdpSocket>,
    /// The epoch to lead; `None` starts the epoch after the log's latest. Either way it is
    /// begun in the log and recorded as seen (a restarted leader is a new leadership).
    pub epoch: Option<Epoch>,
    /// Which followers commits at remote levels wait for. The default, `ANY 1 (*)`,
    /// waits for any one streaming follower.
    pub sync: SyncPolicy,
    /// zstd settings for shipped data.
    pub compression: CompressionOptions,
    /// Frames of one follower compressed at once, on blocking threads (frames under
    /// 64 KiB are compressed inline).
    pub compression_threads: usize,
    /// Raw log bytes per `Ship` frame, at most (a single larger batch goes alone).
    pub frame_bytes: usize,
    /// Largest frame accepted from a follower, and the follower's limit this leader
    /// assumes (it must exceed the log's largest batch).
    pub max_frame: u32,
    /// Most bytes shipped to one follower and not yet acknowledged as written.
    pub max_unacked_bytes: u64,
    /// A follower's slot more than this far behind the end of the log is lost: its
    /// segments are released and it is refused until the slot is dropped.
    pub max_retained_bytes: u64,
    /// A heartbeat goes to an idle follower this often (it answers with an ack).
    pub heartbeat_interval: Duration,
    /// A follower silent this long is disconnected.
    pub idle_timeout: Duration,
    /// Commits at remote levels made through [`Leader::commit`] fail with
    /// `RemoteUnconfirmed` after this long (they are durable locally by then).
    pub remote_commit_timeout: Duration,
    /// Where a newer epoch a follower claims is verified before this leader steps down
    /// for it (the coordinator's, see [`EpochAuthority`]); `None` believes members.
    pub epoch_authority: Option<Arc<dyn EpochAuthority>>,
    /// Write in the new epoch only once a quorum has confirmed it (Raft's rule that a
    /// term has entries only once a majority elected its leader): until `k` standbys of
    /// `sync` have been accepted, the log stays sealed and the epoch is not begun, so no
    /// record of an unconfirmed epoch exists anywhere to rank a node above members that
    /// hold what an older leader acknowledged. The [`Node`](crate::Node) sets it; `false`
    /// (the default) begins the epoch and takes appends at once, for an embedder that
    /// drives failover itself and wants a lone leader to take `Local` writes.
    pub write_after_confirmation: bool,
    /// How long an unconfirmed leader that refused a follower holding records it lacks
    /// waits for other followers to confirm its epoch before it yields
    /// ([`Leader::yielded`]).
    pub confirm_timeout: Duration,
    /// The embedder's snapshots, served to a follower whose position this leader no
    /// longer retains (it then restarts its log and streams from the snapshot on);
    /// `None` refuses such a follower with `NotRetained`, as before.
    pub snapshots: Option<Arc<dyn crate::snapshot::SnapshotSource>>,
    /// The largest datagram sent (MTU discovery's upper bound); `None` takes it from the
    /// address listened on (`socket`'s, else `listen`;
    /// [`crate::udp::auto_max_udp_payload`]: jumbo on loopback, 1452 elsewhere).
    pub max_udp_payload: Option<u16>,
}

impl LeaderOptions {
    /// The same settings without the socket (a socket is used once).
    pub(crate) fn settings(&self) -> LeaderOptions {
        LeaderOptions {
            listen: self.listen,
            socket: None,
            epoch: self.epoch,
            sync: self.sync.clone(),
            compression: self.compression,
            compression_threads: self.compression_threads,
            frame_bytes: self.frame_bytes,
            max_frame: self.max_frame,
            max_unacked_bytes: self.max_unacked_bytes,
            max_retained_bytes: self.max_retained_bytes,
            heartbeat_interval: self.heartbeat_interval,
            idle_timeout: self.idle_timeout,
            remote_commit_timeout: self.remote_commit_timeout,
            epoch_authority: self.epoch_authority.clone(),
            write_after_confirmation: self.write_after_confirmation,
            confirm_timeout: self.confirm_timeout,
            snapshots: self.snapshots.clone(),
            max_udp_payload: self.max_udp_payload,
        }
    }

    /// The largest datagram this leader sends: as configured, else from the address it
    /// listens on.
    pub(crate) fn udp_payload(&self) -> Result<u16, TransportError> {
        let listening = self
            .socket
            .as_ref()
            .and_then(|s| s.local_addr().ok())
            .unwrap_or(self.listen);
        crate::udp::resolve(self.max_udp_payload, listening.ip())
            .map_err(TransportError::InvalidOptions)
    }
}

impl Default for LeaderOptions {
    fn default() -> Self {
        LeaderOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            socket: None,
            epoch: None,
            sync: SyncPolicy::Any {
                k: 1,
                of: vec!["*".into()],
            },
            compression: CompressionOptions::default(),
            compression_threads: 2,
            frame_bytes: 256 << 10,
            max_frame: 24 << 20,
            max_unacked_bytes: 64 << 20,
            max_retained_bytes: 8 << 30,
            heartbeat_interval: Duration::from_millis(500),
            idle_timeout: Duration::from_secs(10),
            remote_commit_timeout: Duration::from_secs(10),
            epoch_authority: None,
            write_after_confirmation: false,
            confirm_timeout: Duration::from_secs(2),
            snapshots: None,
            max_udp_payload: None,
        }
    }
}

/// Connections (handshaking or in session) served at once; more are refused at once.
pub const MAX_FOLLOWER_CONNECTIONS: usize = 256;
/// Connections of one node served at once: a reconnect supersedes the old session, so
/// a node needs two at most; more is a bug or an attack, and is refused.
pub const MAX_CONNECTIONS_PER_FOLLOWER: usize = 4;

/// Why a session is ended by the leader's side.
enum End {
    /// The same follower connected again; this older session goes.
    Superseded,
    /// The follower's slot was lost.
    SlotLost(String),
    /// The follower is no longer a member of the cluster.
    NotMember,
}

struct Shared {
    log: Arc<Log>,
    cfg: LeaderConfig,
    security: Security,
    /// Whom the listener admits; sessions re-check their follower when it changes.
    trust: Option<Arc<Trust>>,
    compression: CompressionOptions,
    compression_threads: usize,
    frame_bytes: usize,
    /// Frames compressed by one session for the others.
    frames: Arc<super::frames::FrameCache>,
    max_retained_bytes: u64,
    remote_commit_timeout: Duration,
    epoch_authority: Option<Arc<dyn EpochAuthority>>,
    snapshots: Option<Arc<dyn crate::snapshot::SnapshotSource>>,
    /// Writes the slot file, in order.
    slot_writer: Arc<SlotWriter>,
    /// Connections per node id, for [`MAX_CONNECTIONS_PER_FOLLOWER`].
    per_peer: Mutex<BTreeMap<String, usize>>,
    registry: Mutex<Registry>,
    /// Set once this leader steps down; never cleared (a new leadership is a new `Leader`).
    fence: watch::Sender<Option<String>>,
    /// Set if it stepped down because, before a quorum confirmed it, a follower showed
    /// written records it lacks ([`Leader::yielded`]).
    yielded: std::sync::atomic::AtomicBool,
    /// Whether the epoch is begun and the log takes appends ([`Leader::writable`]).
    writable: watch::Sender<bool>,
    /// Held while the log is sealed or unsealed for this leadership: a step-down and the
    /// unsealing at confirmation never interleave.
    lifecycle: Mutex<()>,
    /// Confirmed, and the epoch still to begin (`write_after_confirmation`).
    confirmed_unbegun: std::sync::atomic::AtomicBool,
    /// Since when, and why, a follower holding records this unconfirmed leader lacks was
    /// first refused.
    ahead_since: Mutex<Option<(Instant, String)>>,
    confirm_timeout: Duration,
    /// Bumped at every follower acknowledgement while somebody waits on individual
    /// followers ([`Leader::wait_for_flushed`]); nothing is sent when nobody listens.
    acks: watch::Sender<()>,
}

impl Shared {
    /// Steps down: remote durability can no longer be confirmed (waiting commits fail at
    /// once with `RemoteFenced`), and every session ends with a `NotLeader` refusal.
    fn step_down(&self, reason: String) {
        let _life = self
            .lifecycle
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if self.fence.borrow().is_some() {
            return;
        }
        tracing::warn!(node = self.cfg.node_id.as_str(), epoch = %self.cfg.epoch, reason = reason.as_str(), "leader stepping down");
        self.log.seal(reason.clone());
        self.log.fence_remote(reason.clone());
        self.fence.send_replace(Some(reason));
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the registry and carries out its effects: the retention floor and the
    /// remote watermarks at once, under the lock; a slot save is returned, to be written
    /// off the lock ([`save_slots`]).
    fn with_registry<T>(&self, f: impl FnOnce(&mut Registry) -> T) -> (T, Option<SaveJob>) {
        let mut r = self.registry();
        let out = f(&mut r);
        let mut save = None;
        while let Some(effect) = r.poll_effect() {
            match effect {
                Effect::RetentionFloor(floor) => self.log.set_retention_floor(floor),
                Effect::Quorum(q) => {
                    self.log.advance_remote_written(q.written);
                    self.log.advance_remote_flushed(q.flushed);
                    crate::hops::hop(crate::hops::LEADER_QUORUM, q.flushed);
                    self.log.advance_remote_applied(q.applied);
                }
                // A later save covers an earlier one.
                Effect::Save(job) => save = Some(job),
                Effect::Confirmed => {
                    tracing::info!(
                        node = self.cfg.node_id.as_str(),
                        epoch = %self.cfg.epoch,
                        "leadership confirmed: a quorum of followers turned to this epoch"
                    );
                    if !*self.writable.borrow() {
                        self.confirmed_unbegun
                            .store(true, std::sync::atomic::Ordering::Release);
                    }
                }
            }
        }
        (out, save)
    }

    fn view(&self) -> LogView {
        let (lost, confirmed) = {
            let r = self.registry();
            (r.lost_slots(), r.confirmed())
        };
        LogView {
            start: self.log.start_lsn(),
            end: self.log.end_lsn(),
            history: self.log.epoch_history(),
            lost_slots: lost,
            confirmed,
        }
    }

    fn accepted(&self, node: &str, addr: SocketAddr, start: Lsn, acked: Progress) -> SessionId {
        self.with_registry(|r| r.accept(node, addr, start, acked)).0
    }

    /// Yields if a follower holding records this leader lacks was refused more than
    /// `confirm_timeout` ago and no quorum confirmed the epoch since.
    fn yield_if_unconfirmed(&self) {
        let why = {
            let a = self
                .ahead_since
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match &*a {
                Some((since, why)) if since.elapsed() >= self.confirm_timeout => why.clone(),
                _ => return,
            }
        };
        if self.registry().confirmed() || self.fence.borrow().is_some() {
            return;
        }
        self.yielded
            .store(true, std::sync::atomic::Ordering::Release);
        self.step_down(format!(
            "no quorum confirmed epoch {} within {:?} of refusing a follower that holds records this leader lacks ({why}): yielding",
            self.cfg.epoch, self.confirm_timeout
        ));
    }

    /// Once confirmed (`write_after_confirmation`): begins the epoch (a durable write, off
    /// the runtime's workers) and unseals the log, unless this leader stepped down
    /// meanwhile.
    async fn begin_writing(&self) {
        use std::sync::atomic::Ordering;
        if !self.confirmed_unbegun.swap(false, Ordering::AcqRel) || self.fence.borrow().is_some() {
            return;
        }
        let (log, epoch) = (Arc::clone(&self.log), self.cfg.epoch);
        let begun = match tokio::task::spawn_blocking(move || log.begin_epoch(epoch)).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(e) => Err(format!("task: {e}")),
        };
        if let Err(e) = begun {
            self.step_down(format!("cannot begin confirmed epoch {epoch}: {e}"));
            return;
        }
        let _life = self
            .lifecycle
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if self.fence.borrow().is_none() {
            self.log.unseal();
            self.writable.send_replace(true);
            tracing::info!(node = self.cfg.node_id.as_str(), %epoch, "epoch begun: the log takes appends");
        }
    }

    fn progress(&self, node: &str, session: SessionId, p: Progress, now: Instant) {
        self.with_registry(|r| r.progress(node, session, p, now));
        if self.acks.receiver_count() > 0 {
            self.acks.send_replace(());
        }
    }

    fn shipped(
        &self,
        node: &str,
        session: SessionId,
        end: Lsn,
        raw: usize,
        wire: usize,
        now: Instant,
    ) {
        self.with_registry(|r| r.shipped(node, session, end, raw, wire, now));
    }

    fn caught_up(&self, node: &str, session: SessionId) {
        if self.with_registry(|r| r.caught_up(node, session)).0 {
            tracing::info!(follower = node, "follower caught up; streaming");
        }
    }

    /// Why this session must end, if it must.
    fn must_end(&self, node: &str, session: SessionId) -> Option<End> {
        if !self.security.is_member(node) {
            return Some(End::NotMember);
        }
        self.registry().must_end(node, session).map(|e| match e {
            registry::End::Superseded => End::Superseded,
            registry::End::SlotLost(why) => End::SlotLost(why),
        })
    }

    fn ended(&self, node: &str, session: SessionId, error: Option<String>) {
        self.with_registry(|r| r.ended(node, session, error));
    }

    /// Slot upkeep: enforce the cap, move the retention floor; returns what must be saved
    /// (written by [`save_slots`], off the lock and off the async workers).
    fn maintain(&self) -> Option<SaveJob> {
        let end = self.log.end_lsn();
        let (lost, save) = self.with_registry(|r| r.maintain(end));
        for node in &lost {
            tracing::warn!(
                follower = node.as_str(),
                max_retained_bytes = self.max_retained_bytes,
                "retention slot lost: follower too far behind"
            );
        }
        save
    }

    /// Drops `node`'s slot; returns whether it had one, and what must be saved.
    fn drop_slot(&self, node: &str) -> (bool, Option<SaveJob>) {
        self.with_registry(|r| r.drop_slot(node))
    }
}

/// Writes a slot save on a blocking thread: a write, two fsyncs and a rename must not
/// hold a tokio worker (nor the lock every follower's acks take). A failed save leaves
/// the slots dirty, so the next upkeep tick retries.
async fn save_slots(shared: &Shared, job: SaveJob) -> Result<(), TransportError> {
    let writer = Arc::clone(&shared.slot_writer);
    let outcome = tokio::task::spawn_blocking(move || job.write(&writer)).await;
    let failed = match outcome {
        Ok(Ok(())) => return Ok(()),
        Ok(Err(e)) => TransportError::Slots(e),
        Err(e) => TransportError::InvalidOptions(format!("slot save task: {e}")),
    };
    shared.registry().save_failed();
    Err(failed)
}

/// A leader streaming its log to followers; see the [module docs](super).
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use walship_engine::{Durability, Log, Options};
/// use walship_transport::tls::ClusterCa;
/// use walship_transport::{Leader, LeaderOptions, Security};
/// let ca = ClusterCa::generate("prod")?;
/// let log = Arc::new(Log::open("/var/lib/walship", Options::default())?);
/// let leader = Leader::start(
///     Arc::clone(&log),
///     Security::mutual_tls(ca.issue_node("n1")?, ca.cert_pem()),
///     LeaderOptions::default(),
/// )?;
/// let lsn = log.append(b"x")?;
/// leader.commit(lsn, Durability::RemoteFlush).await?; // on a follower's disk too
/// leader.shutdown().await;
/// # Ok(()) }
/// ```
pub struct Leader {
    shared: Arc<Shared>,
    endpoint: quinn::Endpoint,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Leader {
    /// Begins a new epoch in `log` and starts listening. Must be called inside a Tokio
    /// runtime.
    ///
    /// # Errors
    /// [`TransportError`] for an invalid policy or options, TLS configuration, binding,
    /// the slot file, or the log refusing the epoch.
    pub fn start(
        log: Arc<Log>,
        security: Security,
        opts: LeaderOptions,
    ) -> Result<Leader, TransportError> {
        opts.sync.validate()?;
        if opts.frame_bytes == 0 || opts.max_unacked_bytes == 0 {
            return Err(TransportError::InvalidOptions(
                "frame_bytes and max_unacked_bytes must be positive".into(),
            ));
        }
        if opts.frame_bytes as u64 >= u64::from(opts.max_frame) {
            return Err(TransportError::InvalidOptions(format!(
                "frame_bytes {} must be below max_frame {}",
                opts.frame_bytes, opts.max_frame
            )));
        }
        if let Some(range) = opts.compression.adapt {
            LevelControl::new(range, opts.compression.level, Instant::now()).map_err(|e| {
                TransportError::InvalidOptions(format!("compression {:?}: {e}", opts.compression))
            })?;
        }
        security.check_log(&log)?;
        let slots = Slots::load(log.storage(), log.dir(), log.segment_capacity())?;
        let trust = security.trust()?;
        let mut server = security.server_config(trust.as_ref())?;
        let udp_payload = opts.udp_payload()?;
        server.transport_config(Arc::new(crate::tls::transport_config_for(udp_payload)));
        let endpoint = super::endpoint(Some(server), opts.listen, opts.socket, udp_payload)?;
        let seen = super::follower::load_seen_epoch(&**log.storage(), log.dir())?.max(log.epoch());
        let epoch = match opts.epoch {
            Some(e) => e,
            None => seen.checked_next().ok_or_else(|| {
                TransportError::InvalidOptions(format!(
                    "cannot lead: epoch {seen} has been seen here and no epoch comes after it \
                     (epochs never wrap)"
                ))
            })?,
        };
        if epoch <= seen {
            return Err(TransportError::InvalidOptions(format!(
                "cannot lead epoch {epoch}: epoch {seen} has already been seen here"
            )));
        }
        super::follower::store_seen_epoch(&**log.storage(), log.dir(), epoch)?;
        if opts.write_after_confirmation {
            log.seal(format!(
                "leading epoch {epoch}, not yet confirmed by a quorum of followers"
            ));
        } else {
            log.begin_epoch(epoch)?;
            log.unseal();
        }
        log.unfence_remote();
        let registry = Registry::new(opts.sync.clone(), slots, opts.max_retained_bytes)?;
        let shared = Arc::new(Shared {
            cfg: LeaderConfig {
                cluster_id: security.cluster_id().to_owned(),
                node_id: security.node_id().to_owned(),
                segment_capacity: log.segment_capacity(),
                epoch,
                max_frame: opts.max_frame,
                max_unacked_bytes: opts.max_unacked_bytes,
                heartbeat_interval: opts.heartbeat_interval,
                idle_timeout: opts.idle_timeout,
            },
            log,
            security,
            trust,
            compression: opts.compression,
            compression_threads: opts.compression_threads,
            frame_bytes: opts.frame_bytes,
            frames: Arc::default(),
            max_retained_bytes: opts.max_retained_bytes,
            remote_commit_timeout: opts.remote_commit_timeout,
            epoch_authority: opts.epoch_authority.clone(),
            snapshots: opts.snapshots.clone(),
            per_peer: Mutex::new(BTreeMap::new()),
            slot_writer: Arc::new(SlotWriter::default()),
            fence: watch::channel(None).0,
            yielded: std::sync::atomic::AtomicBool::new(false),
            writable: watch::channel(!opts.write_after_confirmation).0,
            lifecycle: Mutex::new(()),
            confirmed_unbegun: std::sync::atomic::AtomicBool::new(false),
            ahead_since: Mutex::new(None),
            confirm_timeout: opts.confirm_timeout,
            registry: Mutex::new(registry),
            acks: watch::channel(()).0,
        });
        // At start, before anything is shipped: the one save made on the caller's thread.
        if let Some(job) = shared.maintain() {
            job.write(&shared.slot_writer)?;
        }
        let (stop, stop_rx) = watch::channel(false);
        let accept = tokio::spawn(accept_loop(
            endpoint.clone(),
            Arc::clone(&shared),
            stop_rx.clone(),
        ));
        let upkeep = tokio::spawn(upkeep_loop(Arc::clone(&shared), stop_rx));
        tracing::info!(
            node = shared.cfg.node_id.as_str(),
            %epoch,
            addr = ?endpoint.local_addr().ok(),
            "leader started"
        );
        Ok(Leader {
            shared,
            endpoint,
            stop,
            tasks: Mutex::new(vec![accept, upkeep]),
        })
    }

    /// The address followers connect to.
    ///
    /// # Errors
    /// The socket's error.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// The log being led.
    pub fn log(&self) -> &Arc<Log> {
        &self.shared.log
    }

    /// The epoch being led.
    pub fn epoch(&self) -> Epoch {
        self.shared.cfg.epoch
    }

    /// A commit of `lsn` at `level`; remote levels time out after
    /// [`LeaderOptions::remote_commit_timeout`] with `RemoteUnconfirmed` (durable
    /// locally, not confirmed by the quorum).
    pub fn commit(&self, lsn: Lsn, level: Durability) -> Commit {
        let c = self.shared.log.commit(lsn, level);
        if level.is_remote() {
            c.timeout(self.shared.remote_commit_timeout)
        } else {
            c
        }
    }

    /// Steps down now (a manual fence, or a coordinator that knows of a newer epoch): the
    /// log is sealed (local appends fail with `Sealed`), commits waiting on remote levels
    /// fail with `RemoteFenced`, new ones too, and every follower session ends with a
    /// `NotLeader` refusal. The same happens by itself when a follower shows this leader a
    /// newer epoch.
    pub fn fence(&self, reason: impl Into<String>) {
        self.shared.step_down(reason.into());
    }

    /// Planned switchover to follower `node` (PostgreSQL's switchover, Kafka's controlled
    /// shutdown): seals the log against local appends, waits until `node` has flushed all
    /// of it, then steps down, and returns that end position. Promoting `node` next (its
    /// `Follower::promote`, or the coordinator) loses nothing — not even writes that were
    /// acknowledged only at `Async`. If `node` does not catch up within `timeout`, the log
    /// is unsealed and this node stays the leader.
    ///
    /// # Errors
    /// [`TransportError::Switchover`] on timeout, or if this leader has stepped down.
    pub async fn switchover_to(
        &self,
        node: &str,
        timeout: Duration,
    ) -> Result<Lsn, TransportError> {
        let fail = |reason: String| TransportError::Switchover {
            node: node.to_string(),
            reason,
        };
        if let Some(why) = self.fenced() {
            return Err(fail(format!("this node already stepped down: {why}")));
        }
        let log = &self.shared.log;
        log.seal(format!("switching over to {node}"));
        let end = log.end_lsn();
        let deadline = Instant::now() + timeout;
        loop {
            let flushed = self.shared.registry().flushed_by(node);
            if flushed.is_some_and(|f| f >= end) {
                break;
            }
            if Instant::now() >= deadline {
                log.unseal();
                return Err(fail(format!(
                    "it had flushed {} of {end} after {timeout:?}",
                    flushed.map_or("nothing".to_string(), |f| f.to_string())
                )));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        self.shared.step_down(format!(
            "switched over to {node}, which holds the log up to {end}"
        ));
        Ok(end)
    }

    /// Why this leader stepped down, if it did.
    pub fn fenced(&self) -> Option<String> {
        self.shared.fence.borrow().clone()
    }

    /// Whether the epoch is begun and the log takes appends: at once, or with
    /// [`LeaderOptions::write_after_confirmation`] once a quorum confirmed the epoch.
    pub fn writable(&self) -> bool {
        *self.shared.writable.borrow()
    }

    /// A receiver of [`writable`](Leader::writable)'s changes.
    pub fn subscribe_writable(&self) -> watch::Receiver<bool> {
        self.shared.writable.subscribe()
    }

    /// Waits until [`writable`](Leader::writable) (at once without
    /// `write_after_confirmation`), or this leader steps down first (`false`).
    pub async fn wait_writable(&self) -> bool {
        let mut w = self.shared.writable.subscribe();
        let mut fence = self.shared.fence.subscribe();
        loop {
            if *w.borrow_and_update() {
                return true;
            }
            if fence.borrow_and_update().is_some() {
                return false;
            }
            tokio::select! {
                r = w.changed() => if r.is_err() { return false },
                r = fence.changed() => if r.is_err() { return false },
            }
        }
    }

    /// Whether this leader stepped down because, before a quorum of followers confirmed
    /// its epoch, one showed written records it lacks: records the leader before it may
    /// have acknowledged (an operator promoted this node while that leader was alive).
    /// Its own epoch must then be undone — truncate the log where the epoch began, which
    /// also forgets the epoch — so the election ranks it by what it held before; the
    /// [`Node`](crate::Node) does that, announcing the cut through `Apply::truncated`.
    pub fn yielded(&self) -> bool {
        self.shared
            .yielded
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Drops `node`'s retention slot (for example after it was lost and the follower
    /// was rebuilt); returns whether it had one, once the slot file says so.
    ///
    /// # Errors
    /// The slot file could not be saved (the next upkeep tick retries).
    pub async fn drop_slot(&self, node: &str) -> Result<bool, TransportError> {
        self.slot_control().drop_slot(node).await
    }

    /// Waits until `replicas` followers have flushed `lsn`, or `timeout` passes, and
    /// returns how many have: Redis's `WAIT numreplicas timeout`, counted as
    /// [`status`](Leader::status) counts a follower's `flush` (its acknowledgement, or
    /// its slot's restart point). Each follower acknowledgement wakes the wait, so it
    /// answers as soon as the follower's ack arrives, without polling.
    ///
    /// ```no_run
    /// # async fn demo(leader: &walship_transport::Leader) {
    /// use std::time::Duration;
    /// let lsn = leader.log().end_lsn();
    /// let have = leader.wait_for_flushed(lsn, 1, Duration::from_secs(1)).await;
    /// println!("{have} followers flushed {lsn}");
    /// # }
    /// ```
    pub async fn wait_for_flushed(&self, lsn: Lsn, replicas: usize, timeout: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + timeout;
        self.flush_waiter().wait(lsn, replicas, deadline).await
    }

    /// A handle that waits on followers' flushes without borrowing the leader (the node
    /// keeps its leader behind a lock that must not be held across the wait).
    pub(crate) fn flush_waiter(&self) -> FlushWaiter {
        FlushWaiter(Arc::clone(&self.shared))
    }

    /// A handle that drops slots without borrowing the leader (the node keeps its leader
    /// behind a lock that must not be held across the save).
    pub(crate) fn slot_control(&self) -> SlotControl {
        SlotControl(Arc::clone(&self.shared))
    }

    /// Replication as `pg_stat_replication` shows it.
    pub fn status(&self) -> LeaderStatus {
        let log = &self.shared.log;
        let watermarks = log.watermarks();
        let end = watermarks.end;
        let r = self.shared.registry();
        let followers = r.followers(end);
        let fenced = self.fenced();
        LeaderStatus {
            role: if fenced.is_some() {
                Role::Fenced
            } else {
                Role::Leader
            },
            fenced,
            node_id: self.shared.cfg.node_id.clone(),
            epoch: self.shared.cfg.epoch,
            watermarks,
            sync_policy: r.policy().to_string(),
            followers,
        }
    }

    /// Stops accepting, ends every session (closing connections cleanly), saves the slots,
    /// and fails commits still waiting on remote levels: nothing will confirm them now.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let tasks: Vec<_> = self
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
            .collect();
        for t in tasks {
            let _ = t.await;
        }
        self.endpoint.close(
            quinn::VarInt::from_u32(CLOSE_SHUTDOWN),
            b"leader shutting down",
        );
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
        if let Some(job) = self.shared.maintain() {
            if let Err(e) = save_slots(&self.shared, job).await {
                tracing::error!(error = %e, "could not save retention slots at shutdown");
            }
        }
        self.shared
            .log
            .fence_remote("the replication leader was shut down");
        tracing::info!(node = self.shared.cfg.node_id.as_str(), "leader stopped");
    }
}

/// Drops slots of a running leader; see [`Leader::slot_control`].
pub(crate) struct SlotControl(Arc<Shared>);

impl SlotControl {
    pub(crate) async fn drop_slot(&self, node: &str) -> Result<bool, TransportError> {
        let (had, job) = self.0.drop_slot(node);
        if let Some(job) = job {
            save_slots(&self.0, job).await?;
        }
        Ok(had)
    }
}

/// Waits on followers' flushes of a running leader; see [`Leader::flush_waiter`].
pub(crate) struct FlushWaiter(Arc<Shared>);

impl FlushWaiter {
    /// Waits until `replicas` followers have flushed `lsn`, or `deadline`; returns how
    /// many have. Woken by each acknowledgement: subscribed before the first count, so
    /// one that lands between the count and the wait is not missed.
    pub(crate) async fn wait(
        &self,
        lsn: Lsn,
        replicas: usize,
        deadline: tokio::time::Instant,
    ) -> usize {
        let mut acks = self.0.acks.subscribe();
        loop {
            let have = self.0.registry().flushed_count(lsn);
            if have >= replicas {
                return have;
            }
            match tokio::time::timeout_at(deadline, acks.changed()).await {
                Ok(Ok(())) => {}
                // The deadline, or the leader is gone (the sender with it).
                _ => return self.0.registry().flushed_count(lsn),
            }
        }
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

async fn upkeep_loop(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tick.tick() => {}
        }
        // A changed revocation list is noticed here even if no handshake comes.
        if let Some(t) = &shared.trust {
            t.refresh();
        }
        if let Some(job) = shared.maintain() {
            if let Err(e) = save_slots(&shared, job).await {
                tracing::error!(error = %e, "could not save retention slots; retrying");
            }
        }
        shared.yield_if_unconfirmed();
    }
}

async fn accept_loop(
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let mut sessions = JoinSet::new();
    let session_stop = stop.clone();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_FOLLOWER_CONNECTIONS));
    let mut refusing = false;
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                    if !refusing {
                        tracing::warn!(max = MAX_FOLLOWER_CONNECTIONS, "refusing replication connections: too many at once");
                    }
                    refusing = true;
                    incoming.refuse();
                    continue;
                };
                refusing = false;
                let shared = Arc::clone(&shared);
                let stop = session_stop.clone();
                sessions.spawn(async move {
                    let _slot = slot;
                    let peer = incoming.remote_address();
                    if let Err(e) = serve(incoming, &shared, stop).await {
                        tracing::warn!(%peer, error = %e, "follower session ended");
                    }
                });
            }
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
        }
    }
    while sessions.join_next().await.is_some() {}
}

/// The next batch from `reader`, or never if there is none.
async fn next_batch(reader: Option<&mut Reader>) -> walship_engine::Result<Batch> {
    match reader {
        Some(r) => r.next().await,
        None => pending().await,
    }
}

fn conn_err(peer: SocketAddr) -> impl Fn(quinn::ConnectionError) -> TransportError {
    move |e| TransportError::Connection {
        peer,
        reason: e.to_string(),
    }
}

async fn write(
    send: &mut quinn::SendStream,
    b: Bytes,
    peer: SocketAddr,
) -> Result<(), TransportError> {
    send.write_chunk(b)
        .await
        .map_err(|e| TransportError::Connection {
            peer,
            reason: e.to_string(),
        })
}

/// One follower's session, from the handshake to the end.
async fn serve(
    incoming: quinn::Incoming,
    shared: &Shared,
    mut stop: watch::Receiver<bool>,
) -> Result<(), TransportError> {
    let peer = incoming.remote_address();
    let idle = shared.cfg.idle_timeout;
    let conn = incoming.await.map_err(conn_err(peer))?;
    let cert_node = if shared.security.verifies_peers() {
        Some(peer_identity(&conn)?.node_id)
    } else {
        None
    };
    let cert = peer_certificate(&conn);
    let _counted = match &cert_node {
        Some(n) => match PeerCount::take(shared, n) {
            Some(c) => Some(c),
            None => {
                conn.close(
                    quinn::VarInt::from_u32(CLOSE_ERROR),
                    b"too many connections",
                );
                return Err(TransportError::Connection {
                    peer,
                    reason: format!(
                        "node {n} already has {MAX_CONNECTIONS_PER_FOLLOWER} connections; refused"
                    ),
                });
            }
        },
        None => None,
    };
    let (mut send, mut recv) = match tokio::time::timeout(idle, conn.accept_bi()).await {
        Ok(r) => r.map_err(conn_err(peer))?,
        Err(_) => {
            return Err(TransportError::Timeout {
                what: "waiting for the replication stream",
                peer,
                after: idle,
            })
        }
    };
    let mut session = LeaderSession::new(shared.cfg.clone(), Instant::now());
    if let Some(n) = cert_node {
        session = session.expect_peer(n);
    }
    let mut run = Run {
        shared,
        peer,
        node: None,
        id: 0,
        reader: None,
        pending: None,
        pipeline: Pipeline::new(
            shared.compression,
            shared.compression_threads,
            Some(Arc::clone(&shared.frames)),
        )
        .map_err(|e| {
            TransportError::InvalidOptions(format!("compression {:?}: {e}", shared.compression))
        })?,
        next: Lsn::ZERO,
        streaming: false,
        sent_due: None,
        acked_to: Lsn::ZERO,
        // The range was checked by `Leader::start`, so this cannot fail.
        level: shared.compression.adapt.and_then(|range| {
            LevelControl::new(range, shared.compression.level, Instant::now()).ok()
        }),
        cert,
        trust_generation: shared.trust.as_ref().map_or(0, |t| t.generation()),
        snapshot_for: None,
        conn: conn.clone(),
        path_reported: None,
    };
    let mut fence = shared.fence.subscribe();
    let result = run
        .go(&mut session, &mut send, &mut recv, &mut stop, &mut fence)
        .await;
    if let Err(TransportError::Session {
        source: SessionError::NewerEpoch { ours, seen },
        ..
    }) = &result
    {
        match verify_epoch(shared.epoch_authority.as_ref(), *seen).await {
            Ok(()) => shared.step_down(format!(
                "follower at {peer} has seen epoch {seen}, newer than this leader's {ours}"
            )),
            Err(why) => tracing::warn!(
                %peer,
                %seen,
                reason = why.as_str(),
                "a follower claims a newer epoch that is not believed; not stepping down"
            ),
        }
    }
    if let Err(TransportError::Session {
        source: e @ SessionError::FollowerAhead { .. },
        ..
    }) = &result
    {
        let mut a = shared
            .ahead_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        a.get_or_insert_with(|| (Instant::now(), e.to_string()));
    }
    // Whatever ended the session, the follower hears why: a queued Reject goes out first.
    let mut goodbye = false;
    while let Some(ev) = session.poll_event() {
        if let LeaderEvent::Transmit(b) = ev {
            goodbye = true;
            let _ = send.write_chunk(b).await;
        }
    }
    let clean = matches!(result, Ok(()));
    if goodbye {
        let _ = send.finish();
        let _ = tokio::time::timeout(Duration::from_secs(1), send.stopped()).await;
    }
    let (code, why): (u32, &[u8]) = if clean {
        (CLOSE_SHUTDOWN, b"leader shutting down")
    } else {
        (CLOSE_ERROR, b"session ended")
    };
    conn.close(quinn::VarInt::from_u32(code), why);
    if let Some(node) = &run.node {
        shared.ended(node, run.id, result.as_ref().err().map(ToString::to_string));
    }
    result
}

/// One of a node's connections, counted while it lives.
struct PeerCount<'a> {
    shared: &'a Shared,
    node: String,
}

impl<'a> PeerCount<'a> {
    fn take(shared: &'a Shared, node: &str) -> Option<PeerCount<'a>> {
        let mut m = shared
            .per_peer
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let n = m.entry(node.to_string()).or_insert(0);
        if *n >= MAX_CONNECTIONS_PER_FOLLOWER {
            return None;
        }
        *n += 1;
        Some(PeerCount {
            shared,
            node: node.to_string(),
        })
    }
}

impl Drop for PeerCount<'_> {
    fn drop(&mut self) {
        let mut m = self
            .shared
            .per_peer
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = m.get_mut(&self.node) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.node);
            }
        }
    }
}

struct Run<'a> {
    shared: &'a Shared,
    peer: SocketAddr,
    node: Option<String>,
    id: u64,
    reader: Option<Reader>,
    /// A batch read but not yet put in a frame.
    pending: Option<Batch>,
    pipeline: Pipeline,
    /// Where the next frame starts: the end of the last one gathered (shipped or not).
    next: Lsn,
    streaming: bool,
    /// The end of a frame handed to the session whose transmission is not yet written
    /// (for the [`crate::hops::LEADER_SENT`] event).
    sent_due: Option<Lsn>,
    /// The adaptive compression level, if it adapts.
    level: Option<LevelControl>,
    /// The follower's written position, as last acknowledged.
    acked_to: Lsn,
    /// The follower's certificate, checked again when the revocation list changes.
    cert: Option<CertificateDer<'static>>,
    trust_generation: u64,
    /// The follower that asked for a snapshot instead of a stream.
    snapshot_for: Option<String>,
    /// The connection, for its path statistics.
    conn: quinn::Connection,
    /// When the path statistics were last put in the registry.
    path_reported: Option<Instant>,
}

/// How often a session puts its connection's path MTU and round-trip time in the
/// registry (for `status`).
const PATH_REPORT_INTERVAL: Duration = Duration::from_secs(1);

impl Run<'_> {
    fn session_err(&self, source: SessionError) -> TransportError {
        TransportError::Session {
            peer: self.peer,
            source,
        }
    }

    async fn go(
        &mut self,
        session: &mut LeaderSession,
        send: &mut quinn::SendStream,
        recv: &mut quinn::RecvStream,
        stop: &mut watch::Receiver<bool>,
        fence: &mut watch::Receiver<Option<String>>,
    ) -> Result<(), TransportError> {
        let log = Arc::clone(&self.shared.log);
        loop {
            let fenced = fence.borrow_and_update().clone();
            if let Some(why) = fenced {
                let why = format!("this node is no longer the leader: {why}");
                let err = session.refuse(RejectCode::NotLeader, log.end_lsn(), why, Instant::now());
                return Err(self.session_err(err));
            }
            // What the sync quorum flushed is what no failover (nor power loss) cuts;
            // followers learn it from every frame (a snapshot may cover that much).
            session.set_committed(crate::committed::committed_point(
                &log,
                self.shared.cfg.epoch,
            ));
            // Frames that finished compressing go out first, then everything queued.
            self.ship_ready(session)?;
            self.drain(session, send).await?;
            if let Some(node) = self.snapshot_for.take() {
                return self.send_snapshot(session, send, &node).await;
            }
            self.account(Wait::Link);
            self.report_path();
            if let Some(why) = self.no_longer_admitted() {
                let err = session.refuse(RejectCode::NotMember, Lsn::ZERO, why, Instant::now());
                return Err(self.session_err(err));
            }
            if let Some(node) = &self.node {
                match self.shared.must_end(node, self.id) {
                    None => {}
                    Some(End::Superseded) => {
                        return Err(TransportError::Connection {
                            peer: self.peer,
                            reason: format!("superseded by a newer session of {node}"),
                        })
                    }
                    Some(End::NotMember) => {
                        let why = format!(
                            "{node} is no longer a member of cluster {}",
                            self.shared.cfg.cluster_id
                        );
                        let err =
                            session.refuse(RejectCode::NotMember, Lsn::ZERO, why, Instant::now());
                        return Err(self.session_err(err));
                    }
                    Some(End::SlotLost(why)) => {
                        let err = session.refuse(
                            RejectCode::SlotLost,
                            log.start_lsn(),
                            why,
                            Instant::now(),
                        );
                        return Err(self.session_err(err));
                    }
                }
            }
            let gathered = self.gather(session);
            self.account(Wait::Cpu);
            match gathered {
                Ok(true) => continue,
                Ok(false) => {}
                Err(TransportError::Engine(walship_engine::Error::NotRetained { lsn, start })) => {
                    return Err(self.not_retained(session, lsn, start));
                }
                Err(e) => return Err(e),
            }
            let window_open =
                self.reader.is_some() && self.pending.is_none() && self.room(session) > 0;
            let deadline = session
                .poll_timeout()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
            // Only an adaptive level needs to know (a fixed one pays nothing here).
            let waiting = match self.level {
                Some(_) => self.waiting_on(session, &log),
                None => Wait::Idle,
            };
            tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => return Ok(()),
                _ = fence.changed() => {}
                chunk = recv.read_chunk(1 << 16, true) => match chunk {
                    Ok(Some(c)) => session
                        .handle_bytes(Instant::now(), &c.bytes, &self.shared.view())
                        .map_err(|e| self.session_err(e))?,
                    Ok(None) => {
                        return Err(TransportError::Connection {
                            peer: self.peer,
                            reason: "follower closed its stream".into(),
                        })
                    }
                    Err(e) => {
                        return Err(TransportError::Connection {
                            peer: self.peer,
                            reason: e.to_string(),
                        })
                    }
                },
                b = next_batch(self.reader.as_mut().filter(|_| window_open)) => match b {
                    Ok(b) => self.pending = Some(b),
                    Err(walship_engine::Error::NotRetained { lsn, start }) => {
                        return Err(self.not_retained(session, lsn, start));
                    }
                    Err(e) => return Err(e.into()),
                },
                r = self.pipeline.front_done() => {
                    r.map_err(|source| TransportError::Codec { peer: self.peer, source })?;
                }
                _ = tokio::time::sleep_until(deadline.into()) => session
                    .handle_timeout(Instant::now(), log.end_lsn(), super::now_us())
                    .map_err(|e| self.session_err(e))?,
            }
            self.account(waiting);
        }
    }

    /// What the session waits on while it waits (for the adaptive level): the link (or
    /// the follower) if the window is full, compression if the next frame to ship is
    /// still compressing or every compressor is busy, nothing if there is nothing to send.
    fn waiting_on(&self, session: &LeaderSession, log: &Log) -> Wait {
        let more = self.reader.is_some() && (self.pending.is_some() || log.end_lsn() > self.next);
        // A full window comes first: the frames still compressing count in it, so even
        // instant compression would leave the sender waiting for acks.
        let full = || {
            session
                .send_window()
                .is_none_or(|(sent, room)| room <= self.next.bytes_after(sent))
        };
        if more && full() {
            Wait::Link
        } else if self.pipeline.front_busy() || (more && !self.pipeline.can_take()) {
            Wait::Cpu
        } else {
            Wait::Idle
        }
    }

    /// The time since the last call went to `wait`; at the end of a window, the level
    /// may change.
    /// Puts the connection's path MTU and round-trip time in the registry, at most once
    /// per [`PATH_REPORT_INTERVAL`].
    fn report_path(&mut self) {
        let Some(node) = &self.node else {
            return;
        };
        let now = Instant::now();
        if self
            .path_reported
            .is_some_and(|t| now.duration_since(t) < PATH_REPORT_INTERVAL)
        {
            return;
        }
        self.path_reported = Some(now);
        let p = self.conn.stats().path;
        let (id, mtu, rtt) = (self.id, p.current_mtu, p.rtt);
        // It queues no effect, so the plain lock does.
        self.shared.registry().path(node, id, mtu, rtt);
    }

    fn account(&mut self, wait: Wait) {
        let Some(level) = self.level.as_mut() else {
            return;
        };
        let now = Instant::now();
        level.account(now, wait);
        level.in_flight(self.next.bytes_after(self.acked_to));
        if let Some(l) = level.poll(now) {
            tracing::debug!(peer = %self.peer, level = ?l, "zstd level adapted");
            self.pipeline.set_level(l);
        }
    }

    /// Why the follower's certificate would be refused now, if it would: checked again
    /// whenever a new revocation list took effect since the handshake.
    fn no_longer_admitted(&mut self) -> Option<String> {
        let (trust, cert) = (self.shared.trust.as_ref()?, self.cert.as_ref()?);
        let g = trust.generation();
        if g == self.trust_generation {
            return None;
        }
        self.trust_generation = g;
        trust
            .readmit_client(cert, &[crate::tls::Role::Node])
            .err()
            .map(|e| {
                format!(
                    "the certificate of {} is no longer admitted: {e}",
                    self.peer
                )
            })
    }

    /// Acts on the session's events: sends, opens the reader, records progress.
    async fn drain(
        &mut self,
        session: &mut LeaderSession,
        send: &mut quinn::SendStream,
    ) -> Result<(), TransportError> {
        while let Some(ev) = session.poll_event() {
            match ev {
                LeaderEvent::Transmit(b) => {
                    write(send, b, self.peer).await?;
                    if let Some(end) = self.sent_due.take() {
                        crate::hops::hop(crate::hops::LEADER_SENT, end);
                    }
                }
                LeaderEvent::Accepted {
                    follower,
                    start,
                    progress,
                } => {
                    // The slot first (it holds the log), then the reader.
                    self.id = self.shared.accepted(&follower, self.peer, start, progress);
                    self.shared.begin_writing().await;
                    self.reader = Some(self.shared.log.reader(start)?);
                    self.next = start;
                    self.acked_to = start;
                    tracing::info!(follower = follower.as_str(), %start, peer = %self.peer, "follower accepted");
                    self.node = Some(follower);
                }
                LeaderEvent::SnapshotWanted { follower } => self.snapshot_for = Some(follower),
                LeaderEvent::Progress { follower, progress } => {
                    crate::hops::hop(crate::hops::LEADER_ACKED, progress.flushed);
                    if let Some(level) = self.level.as_mut() {
                        level.acked(Instant::now(), progress.written.bytes_after(self.acked_to));
                    }
                    self.acked_to = self.acked_to.max(progress.written);
                    self.shared
                        .progress(&follower, self.id, progress, Instant::now())
                }
            }
        }
        Ok(())
    }

    /// Sends the embedder's newest snapshot to `node` on this stream: its header, its
    /// bytes (read on a blocking thread), their CRC32C; the log stays held for `node`
    /// from the header's base (its slot), so it can stream from there afterwards.
    async fn send_snapshot(
        &mut self,
        session: &mut LeaderSession,
        send: &mut quinn::SendStream,
        node: &str,
    ) -> Result<(), TransportError> {
        let peer = self.peer;
        let refuse = |session: &mut LeaderSession, why: String| {
            let start = self.shared.log.start_lsn();
            self.session_err(session.refuse(RejectCode::NotRetained, start, why, Instant::now()))
        };
        let Some(source) = self.shared.snapshots.clone() else {
            return Err(refuse(
                session,
                "this leader serves no snapshots (no snapshot source is configured)".into(),
            ));
        };
        let opened = tokio::task::spawn_blocking(move || source.newest())
            .await
            .map_err(|e| {
                TransportError::InvalidOptions(format!("snapshot source panicked: {e}"))
            })?;
        let snap = match opened {
            Ok(Some(s)) => s,
            Ok(None) => return Err(refuse(session, "this leader has no snapshot yet".into())),
            Err(why) => return Err(refuse(session, format!("cannot open the snapshot: {why}"))),
        };
        let log = &self.shared.log;
        let cap = log.segment_capacity();
        let first = |b: Lsn| Lsn::new(b.get() + walship_engine::format::SEGMENT_HEADER_LEN as u64);
        // The segment holding the snapshot's last record, or, for a record that ends a
        // segment exactly, the next one (the checkpoint may have released the first).
        let mut base = crate::snapshot::restart_base(snap.lsn, cap);
        if snap.lsn.get() % cap == 0 && log.start_lsn() > first(base) {
            base = snap.lsn;
        }
        if snap.lsn > log.watermarks().flushed {
            return Err(refuse(
                session,
                format!(
                    "the snapshot covers {}, past this leader's flushed log",
                    snap.lsn
                ),
            ));
        }
        let (_, save) = self
            .shared
            .with_registry(|r| r.hold_for_snapshot(node, base));
        if let Some(job) = save {
            save_slots(self.shared, job).await?;
        }
        if log.start_lsn() > first(base) {
            return Err(refuse(
                session,
                format!(
                    "the snapshot at {} needs the log from {base}, released meanwhile (retained from {}); ask again",
                    snap.lsn,
                    log.start_lsn()
                ),
            ));
        }
        let base_epoch = log
            .epoch_history()
            .epoch_at(first(base))
            .unwrap_or(Epoch::ZERO);
        let header = crate::wire::SnapshotHeader {
            epoch: self.shared.cfg.epoch,
            lsn: snap.lsn,
            base,
            base_epoch,
            len: snap.len,
        };
        let mut out = bytes::BytesMut::new();
        Frame::SnapshotHeader(header)
            .encode(&mut out)
            .map_err(|e| TransportError::InvalidOptions(format!("snapshot header: {e}")))?;
        write(send, out.freeze(), peer).await?;
        tracing::info!(follower = node, lsn = %snap.lsn, %base, len = snap.len, "sending a snapshot");
        let (tx, mut rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
        let len = snap.len;
        let mut reader = snap.reader;
        let reading = tokio::task::spawn_blocking(move || {
            let mut left = len;
            while left > 0 {
                let mut buf = vec![0u8; (256 << 10).min(left) as usize];
                let r = reader.read(&mut buf);
                let piece = match r {
                    Ok(0) => Err(std::io::Error::other(format!(
                        "the snapshot ended {left} bytes before its length"
                    ))),
                    Ok(n) => {
                        buf.truncate(n);
                        left -= n as u64;
                        Ok(Bytes::from(buf))
                    }
                    Err(e) => Err(e),
                };
                let failed = piece.is_err();
                if tx.blocking_send(piece).is_err() || failed {
                    return;
                }
            }
        });
        let mut crc = 0u32;
        let mut sent = 0u64;
        while sent < len {
            let Some(piece) = rx.recv().await else { break };
            let b = piece.map_err(|e| TransportError::Connection {
                peer,
                reason: format!("reading the snapshot to send: {e}"),
            })?;
            crc = crc32c::crc32c_append(crc, &b);
            sent += b.len() as u64;
            write(send, b, peer).await?;
        }
        let _ = reading.await;
        if sent != len {
            return Err(TransportError::Connection {
                peer,
                reason: format!("the snapshot yielded {sent} of its {len} bytes"),
            });
        }
        write(send, Bytes::copy_from_slice(&crc.to_le_bytes()), peer).await?;
        let _ = send.finish();
        // The follower reads to the end before it lets the stream go.
        let _ = tokio::time::timeout(self.shared.cfg.idle_timeout, send.stopped()).await;
        tracing::info!(follower = node, lsn = %snap.lsn, len, "snapshot sent");
        Ok(())
    }

    /// The log this follower needs was recycled under its reader (it had no slot holding
    /// it): it is told so explicitly, as on connect, rather than left to guess.
    fn not_retained(&self, session: &mut LeaderSession, lsn: Lsn, start: Lsn) -> TransportError {
        let why = format!(
            "the log at {lsn} was recycled while streaming (retained from {start}): the follower needs a snapshot"
        );
        self.session_err(session.refuse(RejectCode::NotRetained, start, why, Instant::now()))
    }

    /// Bytes that may be gathered into new frames now: the session's window minus what
    /// is gathered but not yet shipped; zero while every compressor is busy.
    fn room(&self, session: &LeaderSession) -> u64 {
        match session.send_window() {
            Some((sent, room)) if self.pipeline.can_take() => {
                room.saturating_sub(self.next.bytes_after(sent))
            }
            _ => 0,
        }
    }

    /// Ships every compressed frame that is next in order.
    fn ship_ready(&mut self, session: &mut LeaderSession) -> Result<(), TransportError> {
        while let Some(e) = self.pipeline.pop_ready() {
            let now = Instant::now();
            let wire = e.data.len();

            session
                .ship(now, e.span.base, e.span.end, e.span.raw_len, e.how, e.data)
                .map_err(|err| self.session_err(err))?;
            self.sent_due = Some(e.span.end);
            if let Some(node) = &self.node {
                self.shared.shipped(
                    node,
                    self.id,
                    e.span.end,
                    e.span.raw_len as usize,
                    wire,
                    now,
                );
            }
        }
        Ok(())
    }

    /// Gathers as much log as the window allows into one frame for the pipeline; returns
    /// whether it did.
    fn gather(&mut self, session: &LeaderSession) -> Result<bool, TransportError> {
        let room = self.room(session);
        let Some(reader) = self.reader.as_mut().filter(|_| room > 0) else {
            return Ok(false);
        };
        let budget = room.min(self.shared.frame_bytes as u64) as usize;
        // Frames end by the next multiple of the frame size, so that every follower cuts
        // the same frames and one compression serves them all (`frames`).
        let line = super::frames::next_line(self.next, self.shared.frame_bytes as u64);
        let mut parts: Vec<Bytes> = Vec::new();
        let mut total = 0usize;
        let mut end = self.next;
        let mut caught_up = false;
        loop {
            let b = match self.pending.take() {
                Some(b) => b,
                None => match reader.try_next()? {
                    Some(b) => b,
                    None => {
                        caught_up = true;
                        break;
                    }
                },
            };
            let len = b.bytes().len();
            if !parts.is_empty() && (total + len > budget || b.end() > line) {
                self.pending = Some(b);
                break;
            }
            total += len;
            end = b.end();
            parts.push(b.bytes().clone());
            if total >= budget {
                break;
            }
        }
        if caught_up && !self.streaming {
            if let Some(node) = &self.node {
                self.streaming = true;
                self.shared.caught_up(node, self.id);
            }
        }
        if parts.is_empty() {
            return Ok(false);
        }
        let raw = if parts.len() == 1 {
            parts.swap_remove(0)
        } else {
            let mut b = BytesMut::with_capacity(total);
            for p in &parts {
                b.extend_from_slice(p);
            }
            b.freeze()
        };
        let raw_len = u32::try_from(total).map_err(|_| {
            TransportError::InvalidOptions(format!("a frame of {total} bytes is over 4 GiB"))
        })?;
        let span = Span {
            base: self.next,
            end,
            raw_len,
        };
        self.next = end;
        crate::hops::hop(crate::hops::LEADER_READ, end);
        self.pipeline.push(span, raw);
        Ok(true)
    }
}
