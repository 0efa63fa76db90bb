//! The follower's driver: a connection loop with back-off, and an apply thread.

use std::future::pending;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::watch;
use walship_engine::{Commit, Durability, Epoch, Log, Lsn, Record};

use super::{Security, TransportError, CLOSE_ERROR, CLOSE_SHUTDOWN};
use crate::compress::Decompressor;
use crate::coordinator::{verify_epoch, EpochAuthority};
use crate::quorum::Progress;
use crate::session::follower::{FollowerConfig, FollowerEvent, FollowerSession};
use crate::status::{FollowerStatus, Role};

/// File in the log directory holding the highest epoch this node has seen.
pub const SEEN_EPOCH_FILE: &str = "replication.epoch";

/// The highest epoch recorded in `dir`'s [`SEEN_EPOCH_FILE`], zero if none.
pub(crate) fn load_seen_epoch(
    fs: &dyn walship_engine::storage::Storage,
    dir: &std::path::Path,
) -> Result<Epoch, TransportError> {
    let path = dir.join(SEEN_EPOCH_FILE);
    let bad = |reason: String| TransportError::File {
        op: "read",
        path: path.clone(),
        reason,
    };
    match crate::durable::load(fs, &path) {
        Ok(None) => Ok(Epoch::ZERO),
        Ok(Some(text)) => text
            .trim_end()
            .strip_prefix("seen ")
            .and_then(|n| n.parse().ok())
            .map(Epoch::new)
            .ok_or_else(|| bad(format!("expected `seen <epoch>`, found {text:?}"))),
        Err(crate::durable::LoadError::Io(e)) => Err(bad(e.to_string())),
        Err(crate::durable::LoadError::Corrupt(line, why)) => {
            Err(bad(format!("line {line}: {why}")))
        }
    }
}

/// Records durably that epoch `e` has been seen in `dir`.
pub(crate) fn store_seen_epoch(
    fs: &dyn walship_engine::storage::Storage,
    dir: &std::path::Path,
    e: Epoch,
) -> Result<(), TransportError> {
    Ok(crate::durable::store(
        fs,
        dir,
        SEEN_EPOCH_FILE,
        &format!("seen {}\n", e.get()),
    )?)
}

/// An error from the embedder's [`Apply`] callback.
pub type ApplyError = Box<dyn std::error::Error + Send + Sync>;

/// The embedder's replay of the log: called in LSN order, once per record, only for
/// records already flushed to the follower's disk.
///
/// A closure `FnMut(&Record)` is an `Apply`.
pub trait Apply: Send + 'static {
    /// Makes `record` visible in the embedder's state. An error stops applying (the
    /// follower keeps receiving and flushing); the status reports it.
    ///
    /// # Errors
    /// Whatever the embedder cannot apply.
    fn apply(&mut self, record: &Record) -> Result<(), ApplyError>;

    /// The log was truncated to `to`, below records already applied: they were a
    /// divergent tail that the new leader never had (failover). The embedder must undo
    /// them or rebuild its state; the default refuses, which stops applying.
    ///
    /// # Errors
    /// If the embedder cannot undo.
    fn truncated(&mut self, to: Lsn) -> Result<(), ApplyError> {
        Err(format!("records after {to} were applied and then truncated; rebuild required").into())
    }

    /// Whether this embedder installs its leader's snapshots
    /// ([`install_snapshot`](Apply::install_snapshot)). If so, a follower whose position
    /// the leader no longer retains (or whose state lies outside its log after a crash)
    /// bootstraps from the leader's snapshot instead of stopping at `NotRetained`.
    fn installs_snapshots(&self) -> bool {
        false
    }

    /// Replaces the embedder's whole state with its leader's snapshot, which holds the
    /// effect of every record up to `lsn`; records after `lsn` are applied next. The
    /// follower's log has just been restarted empty (nothing before it is readable).
    /// `snapshot` fails instead of ending if the bytes do not all arrive intact: read it
    /// to the end before putting the new state in place.
    ///
    /// # Errors
    /// If the snapshot cannot be read or installed; the follower asks again later.
    fn install_snapshot(
        &mut self,
        lsn: Lsn,
        snapshot: &mut dyn std::io::Read,
    ) -> Result<(), ApplyError> {
        let _ = snapshot;
        Err(format!("this embedder installs no snapshots (one up to {lsn} was offered)").into())
    }
}

impl<F: FnMut(&Record) + Send + 'static> Apply for F {
    fn apply(&mut self, record: &Record) -> Result<(), ApplyError> {
        self(record);
        Ok(())
    }
}

/// Settings of a [`Follower`].
#[derive(Debug)]
pub struct FollowerOptions {
    /// The leader's address.
    pub leader: SocketAddr,
    /// The leader's node id (its certificate must name it).
    pub leader_node_id: String,
    /// Local address to bind; `None` binds the loopback or unspecified address of the
    /// leader's family, port 0.
    pub bind: Option<SocketAddr>,
    /// A socket to use instead of binding.
    pub socket: Option<std::net::UdpSocket>,
    /// Largest frame accepted from the leader.
    pub max_frame: u32,
    /// An ack goes out at least this often, progress or not.
    pub status_interval: Duration,
    /// A leader silent this long is disconnected from.
    pub idle_timeout: Duration,
    /// Connecting gives up after this long (then backs off and retries).
    pub connect_timeout: Duration,
    /// First delay before reconnecting; doubled after each failure.
    pub reconnect_min: Duration,
    /// Longest delay before reconnecting.
    pub reconnect_max: Duration,
    /// Where the embedder's state ends: records after it are applied. `None` applies
    /// the whole retained log.
    pub apply_from: Option<Lsn>,
    /// Where a newer epoch the leader claims is verified before it is recorded as seen
    /// (the coordinator's, see [`EpochAuthority`]); `None` believes the leader.
    pub epoch_authority: Option<Arc<dyn EpochAuthority>>,
    /// The largest snapshot accepted from the leader for a bootstrap (see
    /// [`Apply::install_snapshot`]); a larger one is refused before a byte is read.
    pub max_snapshot_bytes: u64,
    /// The largest datagram sent (MTU discovery's upper bound); `None` takes it from the
    /// leader's address ([`crate::udp::auto_max_udp_payload`]).
    pub max_udp_payload: Option<u16>,
}

impl FollowerOptions {
    /// The same settings without the socket (a socket is used once).
    pub(crate) fn settings(&self) -> FollowerOptions {
        FollowerOptions {
            leader: self.leader,
            leader_node_id: self.leader_node_id.clone(),
            bind: self.bind,
            socket: None,
            max_frame: self.max_frame,
            status_interval: self.status_interval,
            idle_timeout: self.idle_timeout,
            connect_timeout: self.connect_timeout,
            reconnect_min: self.reconnect_min,
            reconnect_max: self.reconnect_max,
            apply_from: self.apply_from,
            epoch_authority: self.epoch_authority.clone(),
            max_snapshot_bytes: self.max_snapshot_bytes,
            max_udp_payload: self.max_udp_payload,
        }
    }

    /// The largest datagram this follower sends: as configured, else from the leader's
    /// address.
    pub(crate) fn udp_payload(&self) -> Result<u16, TransportError> {
        crate::udp::resolve(self.max_udp_payload, self.leader.ip())
            .map_err(TransportError::InvalidOptions)
    }
}

impl Default for FollowerOptions {
    fn default() -> Self {
        FollowerOptions {
            leader: SocketAddr::from(([127, 0, 0, 1], 0)),
            leader_node_id: String::new(),
            bind: None,
            socket: None,
            max_frame: 24 << 20,
            status_interval: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            reconnect_min: Duration::from_millis(50),
            reconnect_max: Duration::from_secs(5),
            apply_from: None,
            epoch_authority: None,
            max_snapshot_bytes: 64 << 30,
            max_udp_payload: None,
        }
    }
}

#[derive(Debug, Default)]
struct State {
    epoch: Epoch,
    connected: bool,
    leader_id: Option<String>,
    leader_end: Lsn,
    /// The highest committed LSN any leader reported (see [`FollowerStatus`]).
    leader_committed: Lsn,
    connects: u64,
    last_error: Option<String>,
    apply_error: Option<String>,
    bytes_raw: u64,
    bytes_wire: u64,
    last_message: Option<Instant>,
}

struct Shared {
    log: Arc<Log>,
    node_id: String,
    cfg: FollowerConfig,
    state: Mutex<State>,
    applied: watch::Sender<Lsn>,
    /// Truncations asked of the apply thread: how many, and the lowest point among those
    /// it has not yet undone.
    cuts: Mutex<(u64, Option<Lsn>)>,
    /// The count of `cuts`, readable without its lock: the apply thread looks at it for
    /// every record and takes the lock only when it moved.
    cuts_asked: std::sync::atomic::AtomicU64,
    /// How many of them the apply thread has undone (the embedder's state no longer holds
    /// anything past the point).
    cuts_undone: watch::Sender<u64>,
    stop_apply: AtomicBool,
    epoch_authority: Option<Arc<dyn EpochAuthority>>,
    /// Whom this follower admits as its leader; the session re-checks the leader when it
    /// changes.
    trust: Option<Arc<crate::tls::Trust>>,
    /// Whether the embedder installs snapshots ([`Apply::installs_snapshots`]).
    bootstraps: bool,
    /// A snapshot for the apply thread to install, and whether one waits there.
    install: Mutex<Option<super::bootstrap::Install>>,
    install_posted: AtomicBool,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn progress(&self) -> Progress {
        let w = self.log.watermarks();
        Progress {
            written: w.written,
            flushed: w.flushed,
            applied: *self.applied.borrow(),
        }
    }
}

/// A follower replaying its leader's log; see the [module docs](super).
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use walship_engine::{Log, Options, Record};
/// use walship_transport::tls::ClusterCa;
/// use walship_transport::{Follower, FollowerOptions, Security};
/// let ca = ClusterCa::generate("prod")?;
/// let log = Arc::new(Log::open("/var/lib/walship", Options::default())?);
/// let follower = Follower::start(
///     log,
///     Security::mutual_tls(ca.issue_node("n2")?, ca.cert_pem()),
///     FollowerOptions {
///         leader: "10.0.0.1:7400".parse()?,
///         leader_node_id: "n1".into(),
///         ..FollowerOptions::default()
///     },
///     |r: &Record| println!("{} {:?}", r.lsn, r.data),
/// )?;
/// println!("applied up to {}", follower.status().applied);
/// follower.shutdown().await;
/// # Ok(()) }
/// ```
pub struct Follower {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
    applier: Option<JoinHandle<()>>,
}

impl Follower {
    /// Starts replicating into `log` from the leader in `opts`, applying records with
    /// `apply`. Must be called inside a Tokio runtime. Returns at once; the connection is
    /// made (and remade) in the background.
    ///
    /// # Errors
    /// [`TransportError`] for TLS configuration, binding, or an `apply_from` outside the
    /// log.
    pub fn start(
        log: Arc<Log>,
        security: Security,
        mut opts: FollowerOptions,
        apply: impl Apply,
    ) -> Result<Follower, TransportError> {
        security.check_log(&log)?;
        let trust = security.trust()?;
        let mut client = security.client_config(trust.as_ref())?;
        let udp_payload = opts.udp_payload()?;
        client.transport_config(Arc::new(crate::tls::transport_config_for(udp_payload)));
        let bind = opts.bind.unwrap_or_else(|| match opts.leader {
            SocketAddr::V4(a) if a.ip().is_loopback() => SocketAddr::from(([127, 0, 0, 1], 0)),
            SocketAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
            SocketAddr::V6(a) if a.ip().is_loopback() => {
                SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 0))
            }
            SocketAddr::V6(_) => SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0)),
        });
        let apply_from = opts.apply_from.unwrap_or_else(|| log.start_lsn());
        let bootstraps = apply.installs_snapshots();
        // An embedder whose state the log does not continue (the leader's log was
        // recycled past it, or a bootstrap was cut short by a crash) starts over from
        // a snapshot before anything is applied.
        let outside = apply_from < log.start_lsn() || apply_from > log.end_lsn();
        let records = if bootstraps && outside {
            tracing::info!(%apply_from, start = %log.start_lsn(), end = %log.end_lsn(), "the embedder's state lies outside the log: bootstrapping from the leader's snapshot");
            None
        } else {
            Some(log.record_reader(apply_from)?)
        };
        let endpoint = super::endpoint(None, bind, opts.socket.take(), udp_payload)?;
        let (applied, _) = watch::channel(apply_from);
        let epoch = load_seen_epoch(&**log.storage(), log.dir())?.max(log.epoch());
        let shared = Arc::new(Shared {
            cfg: FollowerConfig {
                cluster_id: security.cluster_id().to_owned(),
                node_id: security.node_id().to_owned(),
                segment_capacity: log.segment_capacity(),
                max_frame: opts.max_frame,
                status_interval: opts.status_interval,
                idle_timeout: opts.idle_timeout,
            },
            node_id: security.node_id().to_owned(),
            log,
            state: Mutex::new(State {
                epoch,
                ..State::default()
            }),
            applied,
            cuts: Mutex::new((0, None)),
            cuts_asked: std::sync::atomic::AtomicU64::new(0),
            cuts_undone: watch::channel(0).0,
            stop_apply: AtomicBool::new(false),
            epoch_authority: opts.epoch_authority.clone(),
            trust,
            bootstraps,
            install: Mutex::new(None),
            install_posted: AtomicBool::new(false),
        });
        let applier = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name(format!("walship-apply-{}", shared.node_id))
                .spawn(move || apply_loop(&shared, records, apply_from, apply))
                .map_err(|source| TransportError::Io {
                    op: "spawn the apply thread for",
                    addr: bind,
                    source,
                })?
        };
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(connect_loop(
            Arc::clone(&shared),
            endpoint,
            client,
            opts,
            stop_rx,
            outside && bootstraps,
        ));
        Ok(Follower {
            shared,
            stop,
            task: Some(task),
            applier: Some(applier),
        })
    }

    /// The local log.
    pub fn log(&self) -> &Arc<Log> {
        &self.shared.log
    }

    /// Applied by the embedder up to here.
    pub fn applied(&self) -> Lsn {
        *self.shared.applied.borrow()
    }

    /// Whether the current session was welcomed by the leader (any divergent tail of this
    /// log is cut by then): until it is, the applied position may be a tail about to go.
    pub(crate) fn welcomed(&self) -> bool {
        self.shared.state().connected
    }

    /// The applied position as it moves.
    pub(crate) fn applied_changes(&self) -> watch::Receiver<Lsn> {
        self.shared.applied.subscribe()
    }

    /// The highest committed LSN a leader reported ([`FollowerStatus::leader_committed`]).
    pub fn leader_committed(&self) -> Lsn {
        self.shared.state().leader_committed
    }

    /// Replication as this follower sees it.
    pub fn status(&self) -> FollowerStatus {
        let s = self.shared.state();
        FollowerStatus {
            role: Role::Follower,
            node_id: self.shared.node_id.clone(),
            epoch: s.epoch,
            watermarks: self.shared.log.watermarks(),
            applied: self.applied(),
            connected: s.connected,
            leader_id: s.leader_id.clone(),
            leader_end: s.leader_end,
            leader_committed: s.leader_committed,
            connects: s.connects,
            last_error: s.last_error.clone(),
            apply_error: s.apply_error.clone(),
            bytes_raw: s.bytes_raw,
            bytes_wire: s.bytes_wire,
            since_last_message: s.last_message.map(|t| t.elapsed()),
        }
    }

    /// Waits until the embedder has applied `lsn`, or `timeout` passes.
    ///
    /// # Errors
    /// [`walship_engine::Error::Timeout`] naming the LSN.
    pub async fn wait_for_applied(
        &self,
        lsn: Lsn,
        timeout: Duration,
    ) -> Result<(), walship_engine::Error> {
        let mut rx = self.shared.applied.subscribe();
        let reached = tokio::time::timeout(timeout, rx.wait_for(|a| *a >= lsn))
            .await
            .map(|r| r.is_ok());
        match reached {
            Ok(true) => Ok(()),
            Ok(false) => Err(walship_engine::Error::Closed {
                path: self.shared.log.dir().to_path_buf(),
            }),
            Err(_) => Err(walship_engine::Error::Timeout {
                lsn,
                level: Durability::RemoteApply,
            }),
        }
    }

    /// Closes the connection, stops the apply thread, and returns once both are done.
    /// The log stays open (it belongs to the caller).
    pub async fn shutdown(mut self) {
        self.stop_all().await;
    }

    /// Makes this follower the leader of a new epoch at the end of its log (manual
    /// failover, PostgreSQL's `pg_promote`): stops replicating and applying, then starts a [`Leader`](super::Leader) on the same log with
    /// `opts` — whose `epoch`, if `None`, becomes one past the highest epoch this node has
    /// seen, so no older leader can win a follower back. The other followers must be
    /// pointed at the new leader (the coordinator's job); those with a divergent tail are
    /// truncated when they connect.
    ///
    /// # Errors
    /// As [`Leader::start`](super::Leader::start), and [`TransportError::File`] if the
    /// epoch cannot be recorded.
    pub async fn promote(
        mut self,
        security: Security,
        mut opts: super::LeaderOptions,
    ) -> Result<super::Leader, TransportError> {
        self.stop_all().await;
        let log = Arc::clone(&self.shared.log);
        let seen = self.shared.state().epoch.max(log.epoch());
        let epoch = match opts.epoch {
            Some(e) => e,
            None => seen.checked_next().ok_or_else(|| {
                TransportError::InvalidOptions(format!(
                    "cannot promote: epoch {seen} has been seen here and no epoch comes after \
                     it (epochs never wrap)"
                ))
            })?,
        };
        if epoch <= seen {
            return Err(TransportError::InvalidOptions(format!(
                "cannot promote into epoch {epoch}: epoch {seen} has already been seen"
            )));
        }
        // `Leader::start` records the epoch as seen before it listens.
        opts.epoch = Some(epoch);
        tracing::info!(node = self.shared.node_id.as_str(), %epoch, end = %log.end_lsn(), "promoting to leader");
        super::Leader::start(log, security, opts)
    }

    async fn stop_all(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
        self.shared.stop_apply.store(true, Ordering::Release);
        if let Some(a) = self.applier.take() {
            let _ = tokio::task::spawn_blocking(move || a.join()).await;
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        self.shared.stop_apply.store(true, Ordering::Release);
    }
}

/// Applies flushed records in order until stopped; survives truncation.
fn apply_loop(
    shared: &Shared,
    mut records: Option<walship_engine::RecordReader>,
    from: Lsn,
    mut apply: impl Apply,
) {
    let log = &shared.log;
    let mut applied = from;
    let mut flushed = log.watermarks().flushed;
    let mut since_publish = 0u32;
    let poll = Duration::from_millis(50);
    let fail = |e: String| {
        tracing::error!(error = e.as_str(), "apply stopped");
        shared.state().apply_error = Some(e);
    };
    let mut undone = 0;
    while !shared.stop_apply.load(Ordering::Acquire) {
        // A load first: the apply loop asks for every record, and a swap is a write.
        if shared.install_posted.load(Ordering::Acquire)
            && shared.install_posted.swap(false, Ordering::AcqRel)
        {
            let job = shared
                .install
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            if let Some(job) = job {
                let lsn = job.header.lsn;
                let (outcome, done) = install(shared, &mut apply, job);
                records = match outcome {
                    Ok(r) => {
                        applied = lsn;
                        flushed = log.watermarks().flushed;
                        shared.applied.send_replace(applied);
                        shared.state().apply_error = None;
                        let _ = done.send(Ok(()));
                        Some(r)
                    }
                    Err(why) => {
                        tracing::error!(
                            error = why.as_str(),
                            "snapshot not installed; asking again"
                        );
                        let _ = done.send(Err(why));
                        None
                    }
                };
            }
            continue;
        }
        // A truncation the session made: undone here before the session goes on.
        let cut = (shared.cuts_asked.load(Ordering::Acquire) != undone)
            .then(|| {
                let mut c = shared.cuts.lock().unwrap_or_else(PoisonError::into_inner);
                (c.0 != undone).then(|| (c.0, c.1.take()))
            })
            .flatten();
        if let Some((n, to)) = cut {
            if let Some(to) = to {
                flushed = flushed.min(to);
                match reopen(shared, &mut apply, &mut applied, to) {
                    Ok(r) => records = Some(r),
                    Err(e) => return fail(e),
                }
            }
            undone = n;
            shared.cuts_undone.send_replace(n);
        }
        let Some(reader) = records.as_mut() else {
            // Waiting for a snapshot to install.
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        let next = match reader.try_next() {
            Ok(Some(r)) => Ok(Some(r)),
            Ok(None) => {
                // Idle: make what was applied visible before sleeping.
                shared.applied.send_replace(applied);
                since_publish = 0;
                reader.next_blocking(Some(poll))
            }
            Err(e) => Err(e),
        };
        let rec = match next {
            Ok(Some(r)) => r,
            Ok(None) => continue,
            Err(walship_engine::Error::Closed { .. }) => return,
            Err(walship_engine::Error::Truncated { truncated_to, .. }) => {
                flushed = flushed.min(truncated_to);
                match reopen(shared, &mut apply, &mut applied, truncated_to) {
                    Ok(r) => records = Some(r),
                    Err(e) => return fail(e),
                }
                continue;
            }
            Err(e) => return fail(format!("reading the local log: {e}")),
        };
        // After a snapshot: the restarted log's records it already holds.
        if rec.lsn <= applied {
            continue;
        }
        // Only what is on the follower's disk is applied: a crash never leaves the
        // embedder ahead of its own log.
        let mut cut = None;
        while rec.lsn > flushed {
            match log.commit(rec.lsn, Durability::Local).wait_timeout(poll) {
                Ok(()) => flushed = log.watermarks().flushed.max(rec.lsn),
                Err(walship_engine::Error::Timeout { .. }) => {
                    if shared.stop_apply.load(Ordering::Acquire) {
                        return;
                    }
                }
                Err(walship_engine::Error::Closed { .. }) => return,
                Err(walship_engine::Error::Truncated { truncated_to, .. }) => {
                    cut = Some(truncated_to);
                    break;
                }
                Err(e) => return fail(format!("waiting for the local flush: {e}")),
            }
        }
        if let Some(t) = cut {
            // Truncated under us, below this record.
            flushed = flushed.min(t);
            match reopen(shared, &mut apply, &mut applied, t) {
                Ok(r) => records = Some(r),
                Err(e) => return fail(e),
            }
            continue;
        }
        if let Err(e) = apply.apply(&rec) {
            return fail(format!("the apply callback failed at {}: {e}", rec.lsn));
        }
        applied = rec.lsn;
        since_publish += 1;
        if since_publish >= 1024 {
            shared.applied.send_replace(applied);
            since_publish = 0;
        }
    }
    shared.applied.send_replace(applied);
}

/// Restarts the log where the snapshot's header says and has the embedder install it;
/// returns a reader of the new log and where to answer.
fn install(
    shared: &Shared,
    apply: &mut impl Apply,
    job: super::bootstrap::Install,
) -> (
    Result<walship_engine::RecordReader, String>,
    tokio::sync::oneshot::Sender<Result<(), String>>,
) {
    let super::bootstrap::Install {
        header: h,
        mut reader,
        done,
    } = job;
    let log = &shared.log;
    let outcome = (|| {
        log.restart_at(h.base, h.base_epoch)
            .map_err(|e| format!("restarting the log at {}: {e}", h.base))?;
        apply.install_snapshot(h.lsn, &mut reader).map_err(|e| {
            format!(
                "the embedder did not install the snapshot up to {}: {e}",
                h.lsn
            )
        })?;
        tracing::info!(lsn = %h.lsn, base = %h.base, epoch = %h.base_epoch, "snapshot installed; the log restarts empty");
        log.record_reader(log.start_lsn())
            .map_err(|e| format!("reading the restarted log: {e}"))
    })();
    (outcome, done)
}

/// A reader positioned after a truncation to `end`: at `applied` if it survived, else at
/// `end`, after the embedder undid what it lost. `end` is the truncation point, not the
/// log's end now: a new leader's data may already have been appended past it.
fn reopen(
    shared: &Shared,
    apply: &mut impl Apply,
    applied: &mut Lsn,
    end: Lsn,
) -> Result<walship_engine::RecordReader, String> {
    if *applied > end {
        apply
            .truncated(end)
            .map_err(|e| format!("applied records after {end} were truncated: {e}"))?;
        *applied = end;
        shared.applied.send_replace(end);
    }
    shared
        .log
        .record_reader(*applied)
        .map_err(|e| format!("reopening the local log at {applied}: {e}"))
}

async fn connect_loop(
    shared: Arc<Shared>,
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
    opts: FollowerOptions,
    mut stop: watch::Receiver<bool>,
    mut bootstrap_first: bool,
) {
    let mut backoff = opts.reconnect_min;
    loop {
        if *stop.borrow() {
            break;
        }
        let started = Instant::now();
        if bootstrap_first {
            match bootstrap(&shared, &endpoint, &client, &opts, &mut stop).await {
                Ok(()) => {
                    bootstrap_first = false;
                    backoff = opts.reconnect_min;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(leader = %opts.leader, error = %e, "snapshot bootstrap failed; retrying");
                    shared.state().last_error = Some(e.to_string());
                }
            }
        } else {
            let result = session(&shared, &endpoint, &client, &opts, &mut stop).await;
            if shared.bootstraps {
                if let Some(why) = snapshot_needed(&result) {
                    tracing::info!(leader = %opts.leader, "{why}: bootstrapping from its snapshot");
                    bootstrap_first = true;
                }
            }
            if !finished(&shared, &opts, result) {
                break;
            }
        }
        // A session that streamed for a while resets the back-off.
        if started.elapsed() > opts.reconnect_max {
            backoff = opts.reconnect_min;
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(opts.reconnect_max);
    }
    endpoint.close(
        quinn::VarInt::from_u32(CLOSE_SHUTDOWN),
        b"follower shutting down",
    );
    // Draining lets the close reach the leader; with a dead leader it lasts until the
    // timeout, which must not hold up whoever stops this follower (a node re-pointing
    // it at a new leader), so it goes on in the background.
    tokio::spawn(async move {
        let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    });
}

/// Why only a snapshot lets this follower stream again, if a session ended so: the
/// leader no longer retains its position (`NotRetained`), or stopped holding the log for
/// it (`SlotLost`; sending the snapshot makes the slot live again).
fn snapshot_needed(result: &Result<(), TransportError>) -> Option<&'static str> {
    use crate::wire::RejectCode;
    match result {
        Err(TransportError::Session {
            source: crate::session::SessionError::Rejected { code, .. },
            ..
        }) => match code {
            RejectCode::NotRetained => Some("the leader no longer retains this follower's log"),
            RejectCode::SlotLost => Some("the leader lost this follower's retention slot"),
            _ => None,
        },
        _ => None,
    }
}

/// Records how a session ended; `false` if the follower is stopping.
fn finished(shared: &Shared, opts: &FollowerOptions, result: Result<(), TransportError>) -> bool {
    {
        let mut s = shared.state();
        s.connected = false;
        if let Err(e) = &result {
            s.last_error = Some(e.to_string());
        }
    }
    match result {
        Ok(()) => false,
        Err(e) => {
            tracing::warn!(leader = %opts.leader, error = %e, "replication session ended; reconnecting");
            true
        }
    }
}

/// Fetches the leader's newest snapshot and has the apply thread install it.
async fn bootstrap(
    shared: &Shared,
    endpoint: &quinn::Endpoint,
    client: &quinn::ClientConfig,
    opts: &FollowerOptions,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), TransportError> {
    let Some(conn) = dial(endpoint, client, opts, stop).await? else {
        return Ok(());
    };
    let seen = shared.state().epoch;
    let ask = super::bootstrap::Ask {
        cluster_id: &shared.cfg.cluster_id,
        node_id: &shared.node_id,
        segment_capacity: shared.cfg.segment_capacity,
        seen,
        max_bytes: opts.max_snapshot_bytes,
    };
    let fetched = tokio::select! {
        _ = stop.wait_for(|s| *s) => Ok(None),
        r = super::bootstrap::fetch(&conn, opts.leader, ask, opts.idle_timeout, |job| {
            *shared.install.lock().unwrap_or_else(PoisonError::into_inner) = Some(job);
            shared.install_posted.store(true, Ordering::Release);
        }) => r.map(Some),
    };
    let code = if fetched.is_ok() {
        CLOSE_SHUTDOWN
    } else {
        CLOSE_ERROR
    };
    conn.close(quinn::VarInt::from_u32(code), b"snapshot received");
    if let Some(h) = fetched? {
        tracing::info!(leader = %opts.leader, lsn = %h.lsn, len = h.len, "bootstrapped from the leader's snapshot");
    }
    Ok(())
}

/// Connects to the leader; `None` if stopped meanwhile.
async fn dial(
    endpoint: &quinn::Endpoint,
    client: &quinn::ClientConfig,
    opts: &FollowerOptions,
    stop: &mut watch::Receiver<bool>,
) -> Result<Option<quinn::Connection>, TransportError> {
    let peer = opts.leader;
    let connecting = endpoint
        .connect_with(client.clone(), peer, &opts.leader_node_id)
        .map_err(|e| TransportError::Connection {
            peer,
            reason: e.to_string(),
        })?;
    tokio::select! {
        _ = stop.wait_for(|s| *s) => Ok(None),
        c = tokio::time::timeout(opts.connect_timeout, connecting) => match c {
            Ok(c) => c.map(Some).map_err(|e| TransportError::Connection { peer, reason: e.to_string() }),
            Err(_) => Err(TransportError::Timeout { what: "connecting", peer, after: opts.connect_timeout }),
        },
    }
}

async fn maybe(c: Option<&mut Commit>) -> walship_engine::Result<()> {
    match c {
        Some(c) => c.await,
        None => pending().await,
    }
}

/// One session: connect, stream until an error or `stop`.
async fn session(
    shared: &Shared,
    endpoint: &quinn::Endpoint,
    client: &quinn::ClientConfig,
    opts: &FollowerOptions,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), TransportError> {
    let peer = opts.leader;
    let conn_err = |e: quinn::ConnectionError| TransportError::Connection {
        peer,
        reason: e.to_string(),
    };
    let Some(conn) = dial(endpoint, client, opts, stop).await? else {
        return Ok(());
    };
    let (mut send, mut recv) = conn.open_bi().await.map_err(conn_err)?;
    let leader_cert = super::peer_certificate(&conn);
    shared.state().connects += 1;
    let log = &shared.log;
    let seen = shared.state().epoch;
    let history = log.epoch_history();
    let mut session = FollowerSession::with_seen_epoch(
        shared.cfg.clone(),
        history.entries(),
        seen,
        log.end_lsn(),
        shared.progress(),
        Instant::now(),
    );
    let mut applied = shared.applied.subscribe();
    let mut run = Stream {
        shared,
        peer,
        decompressor: Decompressor::new()
            .map_err(|source| TransportError::Codec { peer, source })?,
        written: None,
        flush: None,
        ack_due: None,
        received: log.end_lsn(),
        leader_cert,
        leader_node_id: opts.leader_node_id.clone(),
        trust_generation: shared.trust.as_ref().map_or(0, |t| t.generation()),
    };
    let result = run
        .go(&mut session, &mut send, &mut recv, &mut applied, stop)
        .await;
    // A refusal we queued (for example a stale leader) goes out before the close.
    while let Some(ev) = session.poll_event(Instant::now()) {
        if let FollowerEvent::Transmit(b) = ev {
            let _ = send.write_chunk(b).await;
        }
    }
    let _ = send.finish();
    let code = if result.is_ok() {
        CLOSE_SHUTDOWN
    } else {
        CLOSE_ERROR
    };
    let _ = tokio::time::timeout(Duration::from_millis(200), send.stopped()).await;
    conn.close(quinn::VarInt::from_u32(code), b"follower session ended");
    result
}

/// The most unflushed bytes a follower's session flushes on its own thread
/// ([`Stream::flush_in_place`]): a few group commits' worth, far below a catch-up frame.
const FLUSH_IN_PLACE_MAX: u64 = 64 << 10;
/// How long a flush in place may take before the session stops waiting for it.
const FLUSH_IN_PLACE_WAIT: Duration = Duration::from_millis(200);

struct Stream<'a> {
    shared: &'a Shared,
    peer: SocketAddr,
    decompressor: Decompressor,
    /// The write to the OS being waited for, to acknowledge it.
    written: Option<Commit>,
    /// The flush being waited for, to acknowledge it.
    flush: Option<Commit>,
    /// The end of what was appended.
    received: Lsn,
    /// A flush waited for whose acknowledgement is not yet written (for the
    /// [`crate::hops::FOLLOWER_ACKED`] event).
    ack_due: Option<Lsn>,
    /// The leader's certificate, checked again when the revocation list changes.
    leader_cert: Option<rustls::pki_types::CertificateDer<'static>>,
    leader_node_id: String,
    trust_generation: u64,
}

impl Stream<'_> {
    async fn go(
        &mut self,
        session: &mut FollowerSession,
        send: &mut quinn::SendStream,
        recv: &mut quinn::RecvStream,
        applied: &mut watch::Receiver<Lsn>,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), TransportError> {
        let peer = self.peer;
        let session_err = |source| TransportError::Session { peer, source };
        // One timer, moved as the session's deadline moves, and up to 64 chunks of data
        // per wake-up: per-iteration costs are paid per burst, not per QUIC packet.
        let timer = tokio::time::sleep(Duration::from_secs(1));
        tokio::pin!(timer);
        let mut chunks: Vec<Bytes> = vec![Bytes::new(); 64];
        let mut checked = Instant::now();
        loop {
            self.drain(session, send).await?;
            if self.flush_in_place(session)? {
                // Its acknowledgement goes out first.
                continue;
            }
            self.await_local();
            // At most once a second, whatever the load (the timer below may keep moving).
            if checked.elapsed() >= Duration::from_secs(1) {
                checked = Instant::now();
                self.check_leader_still_admitted()?;
            }
            let deadline = session
                .poll_timeout()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
            if timer.deadline() != deadline.into() {
                timer.as_mut().reset(deadline.into());
            }
            tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => return Ok(()),
                r = maybe(self.flush.as_mut()) => {
                    self.flush = None;
                    match r {
                        Ok(()) | Err(walship_engine::Error::Truncated { .. }) => {}
                        Err(e) => return Err(e.into()),
                    }
                    let progress = self.shared.progress();
                    crate::hops::hop(crate::hops::FOLLOWER_FLUSHED, progress.flushed);
                    self.ack_due = Some(progress.flushed);
                    session.handle_progress(progress);
                    self.await_local();
                }
                r = maybe(self.written.as_mut()) => {
                    self.written = None;
                    match r {
                        Ok(()) | Err(walship_engine::Error::Truncated { .. }) => {}
                        Err(e) => return Err(e.into()),
                    }
                    session.handle_progress(self.shared.progress());
                    self.await_local();
                }
                n = recv.read_chunks(&mut chunks) => match n {
                    Ok(Some(n)) => {
                        let now = Instant::now();
                        for c in &mut chunks[..n] {
                            session.handle_bytes(now, c).map_err(session_err)?;
                            *c = Bytes::new();
                        }
                        self.shared.state().last_message = Some(now);
                    }
                    Ok(None) => return Err(TransportError::Connection { peer, reason: "leader closed its stream".into() }),
                    Err(e) => return Err(TransportError::Connection { peer, reason: e.to_string() }),
                },
                r = applied.changed() => {
                    if r.is_ok() {
                        session.handle_progress(self.shared.progress());
                    }
                }
                _ = &mut timer => {
                    session.handle_timeout(Instant::now()).map_err(session_err)?;
                    session.handle_progress(self.shared.progress());
                }
            }
        }
    }

    /// Ends the session if the leader's certificate would be refused now (revoked since the
    /// handshake): looked at whenever a new revocation list took effect.
    fn check_leader_still_admitted(&mut self) -> Result<(), TransportError> {
        let (Some(trust), Some(cert)) = (self.shared.trust.as_ref(), self.leader_cert.as_ref())
        else {
            return Ok(());
        };
        let g = trust.refresh();
        if g == self.trust_generation {
            return Ok(());
        }
        self.trust_generation = g;
        trust
            .readmit_server(cert, &self.leader_node_id)
            .map_err(TransportError::Tls)
    }

    /// Flushes what was received on this task's own thread, if that is a small amount
    /// and no flush is in flight, and reports it: returns whether it did. A remote
    /// commit waits for this flush, and handing it to the log's flusher thread and back
    /// costs two thread wake-ups, as much as the flush itself on a fast disk (the `hops`
    /// benchmark). Larger amounts (catch-up, bulk streaming) are flushed in the
    /// background instead ([`Stream::await_local`]), so receiving and appending go on
    /// during the flush.
    fn flush_in_place(&mut self, session: &mut FollowerSession) -> Result<bool, TransportError> {
        let log = &self.shared.log;
        let flushed = log.watermarks().flushed;
        if self.flush.is_some()
            || self.received <= flushed
            || self.received.bytes_after(flushed) > FLUSH_IN_PLACE_MAX
            || !super::in_place_allowed()
        {
            return Ok(false);
        }
        let commit = log.commit(self.received, Durability::Local);
        match tokio::task::block_in_place(|| commit.wait_timeout(FLUSH_IN_PLACE_WAIT)) {
            Ok(()) | Err(walship_engine::Error::Truncated { .. }) => {}
            // A slow disk: the background flush takes over, and this task goes back to
            // receiving (and to its stop signal).
            Err(walship_engine::Error::Timeout { .. }) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
        let progress = self.shared.progress();
        crate::hops::hop(crate::hops::FOLLOWER_FLUSHED, progress.flushed);
        self.ack_due = Some(progress.flushed);
        session.handle_progress(progress);
        Ok(true)
    }

    /// Waits for everything received to be written, and flushed, unless such a wait is
    /// in progress: the target of a pending wait is not moved, so acks flow even under
    /// constant load. Written is acknowledged apart from flushed: the leader's window of
    /// unacknowledged bytes counts against written, so it reopens without waiting for
    /// the disk.
    fn await_local(&mut self) {
        let w = self.shared.log.watermarks();
        if self.written.is_none() && self.received > w.written {
            self.written = Some(self.shared.log.written(self.received));
        }
        if self.flush.is_none() && self.received > w.flushed {
            self.flush = Some(self.shared.log.commit(self.received, Durability::Local));
        }
    }

    async fn drain(
        &mut self,
        session: &mut FollowerSession,
        send: &mut quinn::SendStream,
    ) -> Result<(), TransportError> {
        let peer = self.peer;
        let log = &self.shared.log;
        while let Some(ev) = session.poll_event(Instant::now()) {
            match ev {
                FollowerEvent::Transmit(b) => {
                    send.write_chunk(b)
                        .await
                        .map_err(|e| TransportError::Connection {
                            peer,
                            reason: e.to_string(),
                        })?;
                    if let Some(flushed) = self.ack_due.take() {
                        crate::hops::hop(crate::hops::FOLLOWER_ACKED, flushed);
                    }
                }
                FollowerEvent::Truncate(to) => {
                    tracing::warn!(%to, "truncating the divergent suffix of the local log");
                    self.flush = None;
                    self.written = None;
                    let l = Arc::clone(log);
                    tokio::task::spawn_blocking(move || l.truncate_suffix(to))
                        .await
                        .map_err(|e| {
                            TransportError::InvalidOptions(format!("truncation task: {e}"))
                        })??;
                    self.received = to;
                    // The embedder's state is cut too before anything more happens: until
                    // then a read-your-writes wait could see the cut records.
                    let n = {
                        let mut c = self
                            .shared
                            .cuts
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner);
                        c.0 += 1;
                        c.1 = Some(c.1.map_or(to, |t| t.min(to)));
                        self.shared.cuts_asked.store(c.0, Ordering::Release);
                        c.0
                    };
                    // (An apply thread that stopped on an error undoes nothing; the error
                    // is in the status already.)
                    let mut undone = self.shared.cuts_undone.subscribe();
                    let deadline = Instant::now() + Duration::from_secs(10);
                    while *undone.borrow_and_update() < n
                        && self.shared.state().apply_error.is_none()
                    {
                        if Instant::now() >= deadline {
                            return Err(TransportError::InvalidOptions(format!(
                                "the apply thread did not undo the truncation to {to} within 10 s"
                            )));
                        }
                        let _ =
                            tokio::time::timeout(Duration::from_millis(50), undone.changed()).await;
                    }
                }
                FollowerEvent::Append(ship) => {
                    crate::hops::hop(crate::hops::FOLLOWER_RECEIVED, ship.end);
                    let wire = ship.data.len();
                    let raw: Bytes = self
                        .decompressor
                        .decode(ship.compression, ship.raw_len, ship.data)
                        .map_err(|source| TransportError::Codec { peer, source })?;
                    let n = raw.len();
                    // On a blocking thread: an append may wait for room (back-pressure) or
                    // for its next segment to be made, which must not hold a tokio worker
                    // (other sessions' acks and the leader's tasks run there).
                    let l = Arc::clone(log);
                    super::blocking("append task", move || l.append_encoded(raw)).await??;
                    self.received = ship.end;
                    crate::hops::hop(crate::hops::FOLLOWER_APPENDED, ship.end);
                    {
                        let mut s = self.shared.state();
                        s.bytes_raw += n as u64;
                        s.bytes_wire += wire as u64;
                        s.leader_end = s.leader_end.max(ship.end);
                    }
                }
                FollowerEvent::Committed(lsn) => {
                    let mut s = self.shared.state();
                    s.leader_committed = s.leader_committed.max(lsn);
                }
                FollowerEvent::EpochSeen(e) => {
                    // Believed only if the coordinator granted it: a leader claiming an
                    // epoch nobody granted (2^64 - 1, say) would otherwise pin this node
                    // to an epoch no real leader can reach.
                    verify_epoch(self.shared.epoch_authority.as_ref(), e)
                        .await
                        .map_err(|reason| TransportError::UnverifiedEpoch { peer, reason })?;
                    // Durable before anything of that epoch is acted on: after a crash this
                    // node still refuses leaders older than `e`.
                    let dir = log.dir().to_path_buf();
                    let fs = std::sync::Arc::clone(log.storage());
                    tokio::task::spawn_blocking(move || store_seen_epoch(&*fs, &dir, e))
                        .await
                        .map_err(|err| {
                            TransportError::InvalidOptions(format!("epoch store task: {err}"))
                        })??;
                    let mut s = self.shared.state();
                    s.epoch = s.epoch.max(e);
                }
                FollowerEvent::Streaming {
                    leader_id,
                    epoch,
                    start,
                } => {
                    tracing::info!(leader = leader_id.as_str(), %epoch, %start, "streaming from the leader");
                    let mut s = self.shared.state();
                    s.connected = true;
                    s.leader_id = Some(leader_id);
                    s.last_error = None;
                }
            }
        }
        Ok(())
    }
}
