//! A replication node: leader or follower as its coordinator says, switching by itself.
//!
//! [`Node`] owns a log and runs a loop that, every `check_interval`:
//! - publishes the member's position (node, address, highest epoch seen, flushed LSN);
//! - while **leading**, steps down at once — fences its [`Leader`], seals the log — when
//!   the coordinator names another leader or none, when its leadership deadline (the
//!   etcd lease, renewed locally, minus a margin) passes, or when a follower showed it a
//!   newer epoch; a step-down fails every commit still waiting on a remote level;
//! - while **following**, re-points its [`Follower`] when the coordinator names a new
//!   leader; the new leader truncates any divergent tail when it connects;
//! - when **no leader** is named, waits `settle` (so every live member has published a
//!   position taken after the old leader stopped acknowledging), then campaigns if at
//!   least `election_quorum` members are visible; the coordinator elects the most caught-
//!   up one in the next epoch, which then promotes itself.
//!
//! **Why no acknowledged commit is lost**: with `RemoteFlush` and a sync quorum that,
//! together with the leader, is a majority (3 nodes, `ANY 1`), every acknowledged record
//! is on at least one surviving follower; `election_quorum` makes the candidate see all
//! members that could hold it, and the coordinator elects the one that has flushed the
//! most. **Why no split brain is acknowledged**: a leader acknowledges remote levels only
//! through followers that have not seen a newer epoch, and the elected leader's epoch is
//! persisted by each follower before it acts on it; a leader cut off from the coordinator
//! fences itself before its lease can have expired on the server.
//!
//! While the node does not lead, its log is sealed (local appends fail with `Sealed`) and
//! remote durability is fenced (such commits fail at once with `RemoteFenced`). A node
//! granted an epoch leads it **unconfirmed** until `k` standbys of its sync policy have
//! joined it in that epoch (`LeaderOptions::write_after_confirmation`): it ships what it
//! has, but its log stays sealed and the epoch is not begun, and its role turns to
//! `Leader` only then. Until then it yields to a follower that holds written records it
//! lacks (records the leader before it may have acknowledged, if an operator promoted
//! this node over a live leader): it steps down, resigns, and stays out of elections for
//! a while. As in Raft, records of an epoch exist only once a majority turned to it.
//!
//! The embedder's [`Apply`] lives across role changes: it sees each replicated record
//! once, in order; records this node wrote as leader count as applied (the embedder
//! applied them when it wrote them); a divergent tail removed after a failover is
//! announced through [`Apply::truncated`].

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use walship_engine::{Commit, Durability, Epoch, Log, Lsn, Record};

use crate::coordinator::{Coordinator, CoordinatorError, LeaderInfo, MemberInfo};
use crate::driver::{
    load_seen_epoch, Apply, ApplyError, Follower, FollowerOptions, Leader, LeaderOptions, Security,
    TransportError,
};
use crate::role::{Decision, Doing, RoleDecider};
use crate::status::{FollowerStatus, LeaderStatus};

/// Settings of a [`Node`].
#[derive(Debug)]
pub struct NodeOptions {
    /// How to lead (`listen` is where followers connect; port 0 picks one once, at
    /// start, and the node keeps it). `epoch` is ignored: the coordinator grants epochs.
    pub leader: LeaderOptions,
    /// How to follow; `leader`, `leader_node_id` and `apply_from` are set by the node.
    pub follower: FollowerOptions,
    /// The replication address published for others to connect to; `None` publishes the
    /// bound listen address.
    pub advertise: Option<String>,
    /// How often the coordinator is consulted; failure detection takes up to this plus
    /// the coordinator's lease TTL.
    pub check_interval: Duration,
    /// How long no leader must have been named before this node campaigns.
    pub settle: Duration,
    /// Longest wait for one answer from the coordinator. A leader waits at most until its
    /// leadership deadline, whatever this says.
    pub coordinator_timeout: Duration,
    /// Members (this one included) that must be visible before this node campaigns.
    /// With `n` nodes and `ANY k`, `n - k` guarantees that a member holding every
    /// acknowledged commit takes part; 1 prefers availability.
    pub election_quorum: usize,
    /// Where the embedder's state ends: records after it are applied. `None`: the log's
    /// start.
    pub apply_from: Option<Lsn>,
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions {
            // A node writes in an epoch only once a quorum confirmed it (module docs).
            leader: LeaderOptions {
                write_after_confirmation: true,
                ..LeaderOptions::default()
            },
            follower: FollowerOptions::default(),
            advertise: None,
            check_interval: Duration::from_millis(200),
            settle: Duration::from_millis(500),
            coordinator_timeout: Duration::from_secs(1),
            election_quorum: 1,
            apply_from: None,
        }
    }
}

/// A read-your-writes token: a commit token and the epoch of the record that ends there
/// ([`Node::read_token`], [`Node::wait_for_token`]). Written `epoch@lsn`, e.g. `3@0/4B7EF`.
///
/// ```
/// use walship_transport::ReadToken;
/// let t: ReadToken = "3@0/4B7EF".parse()?;
/// assert_eq!((t.epoch.get(), t.lsn.get()), (3, 0x4B7EF));
/// assert_eq!(t.to_string(), "3@0/4B7EF");
/// assert!("0/4B7EF".parse::<ReadToken>().unwrap_err().contains("not epoch@lsn"));
/// assert!("x@0/4B7EF".parse::<ReadToken>().unwrap_err().contains("not a number"));
/// # Ok::<(), String>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadToken {
    /// The epoch the record was written in.
    pub epoch: Epoch,
    /// Where it ends (its commit token).
    pub lsn: Lsn,
}

impl std::fmt::Display for ReadToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.epoch, self.lsn)
    }
}

impl std::str::FromStr for ReadToken {
    type Err = String;

    fn from_str(s: &str) -> Result<ReadToken, String> {
        let (e, l) = s
            .split_once('@')
            .ok_or_else(|| format!("read token {s:?} is not epoch@lsn"))?;
        Ok(ReadToken {
            epoch: Epoch::new(
                e.parse()
                    .map_err(|_| format!("read token {s:?}: epoch {e:?} is not a number"))?,
            ),
            lsn: l
                .parse()
                .map_err(|err| format!("read token {s:?}: LSN {l:?}: {err}"))?,
        })
    }
}

/// What a node is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeRole {
    /// Leading `epoch`, confirmed by a quorum: the log takes appends. (Between being
    /// granted an epoch and its confirmation the role stays `Candidate`.)
    Leader {
        /// The epoch led.
        epoch: Epoch,
    },
    /// Following `leader` at `addr`.
    Follower {
        /// The leader's node id.
        leader: String,
        /// Where it is.
        addr: SocketAddr,
    },
    /// No leader known yet, or between roles.
    Candidate,
    /// Shut down.
    Stopped,
}

impl NodeRole {
    /// `"leader"`, `"follower"`, `"candidate"` or `"stopped"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            NodeRole::Leader { .. } => "leader",
            NodeRole::Follower { .. } => "follower",
            NodeRole::Candidate => "candidate",
            NodeRole::Stopped => "stopped",
        }
    }
}

/// A node's whole status: its role and the view of that role.
#[derive(Debug, Clone)]
pub struct NodeStatus {
    /// This node.
    pub node_id: String,
    /// What it is doing.
    pub role: NodeRole,
    /// The leader the coordinator named at the last check.
    pub coordinator_leader: Option<LeaderInfo>,
    /// While leading: replication as `pg_stat_replication` shows it.
    pub leading: Option<LeaderStatus>,
    /// While following: the `pg_stat_wal_receiver` view.
    pub following: Option<FollowerStatus>,
    /// The last coordinator or role-change error, if any.
    pub last_error: Option<String>,
    /// [`Node::committed`]: the end of the prefix of this node's log that no failover
    /// cuts, as far as it knows.
    pub committed: Lsn,
}

enum Current {
    Idle,
    Leading(Leader),
    Following(Follower, LeaderInfo),
}

struct Shared {
    log: Arc<Log>,
    node_id: String,
    current: Mutex<Option<Current>>,
    role: watch::Sender<NodeRole>,
    coordinator_leader: Mutex<Option<LeaderInfo>>,
    last_error: Mutex<Option<String>>,
    /// The highest committed LSN this node learned ([`Node::committed`]).
    committed: std::sync::atomic::AtomicU64,
}

impl Shared {
    fn current(&self) -> MutexGuard<'_, Option<Current>> {
        self.current.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn note(&self, error: String) {
        tracing::warn!(node = self.node_id.as_str(), error = error.as_str(), "node");
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(error);
    }
}

enum Command {
    Promote(oneshot::Sender<Result<Epoch, TransportError>>),
    StepDown(String, oneshot::Sender<()>),
}

/// A replication node driven by a [`Coordinator`]; see the [module docs](self).
///
/// ```
/// use std::sync::Arc;
/// use walship_engine::{Durability, Log, Options, Record};
/// use walship_transport::coordinator::{LeaderInfo, StaticCoordinator};
/// use walship_transport::node::{Node, NodeOptions, NodeRole};
/// use walship_transport::{tls::ClusterCa, LeaderOptions, Security};
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let ca = ClusterCa::generate("demo")?;
/// let dir = tempfile::tempdir()?;
/// let log = Arc::new(Log::open(dir.path(), Options::default())?);
/// // The embedded default: a static coordinator naming this node the leader.
/// let coordinator = StaticCoordinator::new(Some(LeaderInfo {
///     node_id: "n1".into(),
///     addr: String::new(),
///     epoch: Default::default(),
/// }));
/// let node = Node::start(
///     Arc::clone(&log),
///     Security::mutual_tls(ca.issue_node("n1")?, ca.cert_pem()),
///     coordinator,
///     NodeOptions {
///         // A cluster of one: the leader alone is the majority, with no follower to
///         // confirm its epoch (a node of a larger cluster leaves this `true`).
///         leader: LeaderOptions { write_after_confirmation: false, ..LeaderOptions::default() },
///         ..NodeOptions::default()
///     },
///     |_: &Record| {},
/// )?;
/// node.wait_for_role(|r| matches!(r, NodeRole::Leader { .. }), std::time::Duration::from_secs(5)).await?;
/// let lsn = log.append(b"hello")?;
/// node.commit(lsn, Durability::Local).await?;
/// node.shutdown().await;
/// # Ok(()) }
/// ```
pub struct Node {
    shared: Arc<Shared>,
    commands: mpsc::Sender<Command>,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Node {
    /// Starts a node on `log` and returns at once; it takes a role at its first check.
    /// Must be called inside a Tokio runtime.
    ///
    /// # Errors
    /// [`TransportError`] if the listen address cannot be bound or the seen epoch read.
    pub fn start<C: Coordinator + 'static>(
        log: Arc<Log>,
        security: Security,
        coordinator: C,
        mut opts: NodeOptions,
        apply: impl Apply,
    ) -> Result<Node, TransportError> {
        // Bind now, so the address is known before the first campaign publishes it.
        let socket = match opts.leader.socket.take() {
            Some(s) => s,
            None => std::net::UdpSocket::bind(opts.leader.listen).map_err(|source| {
                TransportError::Io {
                    op: "bind",
                    addr: opts.leader.listen,
                    source,
                }
            })?,
        };
        let listen = socket.local_addr().map_err(|source| TransportError::Io {
            op: "read the address of",
            addr: opts.leader.listen,
            source,
        })?;
        opts.leader.listen = listen;
        let advertise = opts.advertise.clone().unwrap_or_else(|| listen.to_string());
        load_seen_epoch(&**log.storage(), log.dir())?;
        log.seal("this node is not the leader");
        log.fence_remote("this node is not the leader");
        let node_id = security.node_id().to_owned();
        let shared = Arc::new(Shared {
            log: Arc::clone(&log),
            node_id: node_id.clone(),
            current: Mutex::new(Some(Current::Idle)),
            role: watch::channel(NodeRole::Candidate).0,
            coordinator_leader: Mutex::new(None),
            last_error: Mutex::new(None),
            committed: std::sync::atomic::AtomicU64::new(0),
        });
        let (commands, rx) = mpsc::channel(4);
        let (stop, stop_rx) = watch::channel(false);
        let runner = Runner {
            decider: RoleDecider::new(opts.settle, opts.election_quorum),
            confirming: None,
            applied: opts.apply_from.unwrap_or_else(|| log.start_lsn()),
            shared: Arc::clone(&shared),
            coordinator,
            security,
            apply: Arc::new(Mutex::new(apply)),
            socket: Some(socket),
            advertise,
            opts,
        };
        let task = tokio::spawn(runner.run(rx, stop_rx));
        tracing::info!(node = node_id.as_str(), %listen, "node started");
        Ok(Node {
            shared,
            commands,
            stop,
            task: Some(task),
        })
    }

    /// The log.
    pub fn log(&self) -> &Arc<Log> {
        &self.shared.log
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.shared.node_id
    }

    /// What the node is doing now.
    pub fn role(&self) -> NodeRole {
        self.shared.role.borrow().clone()
    }

    /// Changes of role, as they happen.
    pub fn role_changes(&self) -> watch::Receiver<NodeRole> {
        self.shared.role.subscribe()
    }

    /// Waits until the role satisfies `pred`, and returns it.
    ///
    /// # Errors
    /// [`TransportError::RoleTimeout`] naming the role held instead, or
    /// [`TransportError::Stopped`].
    pub async fn wait_for_role(
        &self,
        pred: impl Fn(&NodeRole) -> bool,
        timeout: Duration,
    ) -> Result<NodeRole, TransportError> {
        let mut rx = self.shared.role.subscribe();
        let reached = tokio::time::timeout(timeout, async {
            rx.wait_for(|r| pred(r)).await.map(|r| r.clone())
        })
        .await;
        match reached {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(_)) => Err(TransportError::Stopped {
                node: self.shared.node_id.clone(),
            }),
            Err(_) => Err(TransportError::RoleTimeout {
                node: self.shared.node_id.clone(),
                role: self.role().as_str(),
                after: timeout,
            }),
        }
    }

    /// A commit of `lsn` at `level`. On the leader, as [`Leader::commit`]; elsewhere,
    /// remote levels fail at once (`RemoteFenced`): only a leader can confirm them.
    pub fn commit(&self, lsn: Lsn, level: Durability) -> Commit {
        match self.shared.current().as_ref() {
            Some(Current::Leading(l)) => l.commit(lsn, level),
            _ => self.shared.log.commit(lsn, level),
        }
    }

    /// Waits until the embedder has applied `lsn` here. On the leader, whose writes the
    /// embedder applied as it made them, that is as soon as the record is in the log.
    /// A bare LSN does not say which record: across a failover another record may end
    /// there, so for read-your-writes use [`wait_for_token`](Node::wait_for_token).
    ///
    /// # Errors
    /// [`walship_engine::Error::Timeout`] naming the LSN.
    pub async fn wait_for_applied(
        &self,
        lsn: Lsn,
        timeout: Duration,
    ) -> Result<(), walship_engine::Error> {
        let deadline = Instant::now() + timeout;
        loop {
            // A follower's applied position as it moves; a leader's writes were applied
            // by the embedder as it made them.
            let mut applied = match self.shared.current().as_ref() {
                Some(Current::Leading(l)) if l.log().end_lsn() >= lsn => return Ok(()),
                Some(Current::Following(f, _)) => Some(f.applied_changes()),
                _ => None,
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(walship_engine::Error::Timeout {
                    lsn,
                    level: Durability::RemoteApply,
                });
            }
            // Re-checked at least every 50 ms: the role may change meanwhile.
            let slice = left.min(Duration::from_millis(50));
            match &mut applied {
                Some(rx) => {
                    if let Ok(Ok(_)) = tokio::time::timeout(slice, rx.wait_for(|a| *a >= lsn)).await
                    {
                        return Ok(());
                    }
                }
                None => tokio::time::sleep(slice).await,
            }
        }
    }

    /// The read-your-writes token of the record that ends at `lsn` in this node's log (a
    /// commit token): its epoch and `lsn`. `None` if the log does not reach `lsn`.
    pub fn read_token(&self, lsn: Lsn) -> Option<ReadToken> {
        let log = &self.shared.log;
        (log.end_lsn() >= lsn)
            .then(|| log.epoch_history().epoch_at(lsn))
            .flatten()
            .map(|epoch| ReadToken { epoch, lsn })
    }

    /// Waits until this node's state holds the write `token` names (read-your-writes,
    /// with a token from [`read_token`](Node::read_token) on the node that committed).
    /// Unlike [`wait_for_applied`](Node::wait_for_applied), it answers only once this
    /// node's log holds, at the token, a record of the token's epoch — by log matching,
    /// the write itself — so neither a leader deposed without knowing it yet nor a
    /// follower whose divergent tail is still to be cut answers from other records (both
    /// found by the cluster simulator). A follower answers once its current session was
    /// welcomed and it applied the record; a leader once the record is in its log.
    ///
    /// # Errors
    /// [`walship_engine::Error::Timeout`] naming the LSN.
    pub async fn wait_for_token(
        &self,
        token: ReadToken,
        timeout: Duration,
    ) -> Result<(), walship_engine::Error> {
        let deadline = Instant::now() + timeout;
        loop {
            let log = &self.shared.log;
            let same = log.end_lsn() >= token.lsn
                && log.epoch_history().epoch_at(token.lsn) == Some(token.epoch);
            let ready = same
                && match self.shared.current().as_ref() {
                    Some(Current::Leading(l)) => l.fenced().is_none(),
                    Some(Current::Following(f, _)) => f.welcomed() && f.applied() >= token.lsn,
                    _ => false,
                };
            if ready {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(walship_engine::Error::Timeout {
                    lsn: token.lsn,
                    level: Durability::RemoteApply,
                });
            }
            // A follower still to apply the record is woken when it does; anything else
            // (a session not yet welcomed, another epoch's record to be cut, the role
            // changing) is re-checked every 5 ms.
            let applying = match self.shared.current().as_ref() {
                Some(Current::Following(f, _)) if f.applied() < token.lsn => {
                    Some(f.applied_changes())
                }
                _ => None,
            };
            match applying {
                Some(mut rx) => {
                    let slice = left.min(Duration::from_millis(50));
                    let _ = tokio::time::timeout(slice, rx.wait_for(|a| *a >= token.lsn)).await;
                }
                None => tokio::time::sleep(left.min(Duration::from_millis(5))).await,
            }
        }
    }

    /// Waits until `replicas` followers have flushed `lsn`, or `timeout` passes, and
    /// returns how many have (Redis's `WAIT`; see [`Leader::wait_for_flushed`]).
    /// `None` if this node does not lead.
    ///
    /// [`Leader::wait_for_flushed`]: crate::Leader::wait_for_flushed
    pub async fn wait_for_flushed(
        &self,
        lsn: Lsn,
        replicas: usize,
        timeout: Duration,
    ) -> Option<usize> {
        let deadline = tokio::time::Instant::now() + timeout;
        let waiter = match self.shared.current().as_ref() {
            Some(Current::Leading(l)) => l.flush_waiter(),
            _ => return None,
        };
        Some(waiter.wait(lsn, replicas, deadline).await)
    }

    /// The node's status.
    pub fn status(&self) -> NodeStatus {
        let (leading, following) = match self.shared.current().as_ref() {
            Some(Current::Leading(l)) => (Some(l.status()), None),
            Some(Current::Following(f, _)) => (None, Some(f.status())),
            _ => (None, None),
        };
        NodeStatus {
            node_id: self.shared.node_id.clone(),
            role: self.role(),
            coordinator_leader: self
                .shared
                .coordinator_leader
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            leading,
            following,
            last_error: self
                .shared
                .last_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            committed: self.committed(),
        }
    }

    /// The end of the prefix of this node's log that no failover cuts, as far as this
    /// node knows: what a sync quorum had flushed (so what `RemoteFlush` commits
    /// acknowledged), whether this node learned it leading (its log's `remote_flushed`)
    /// or from a leader's frames while following, and never past what this node flushed.
    /// It only grows while the node runs and starts at zero again after a restart.
    ///
    /// An embedder may snapshot its state up to here and checkpoint the log behind the
    /// snapshot: [`Apply::truncated`] is never called below it.
    /// A cluster of one has no sync quorum and never cuts; its embedder bounds snapshots
    /// by the log's flushed watermark instead.
    pub fn committed(&self) -> Lsn {
        use std::sync::atomic::Ordering;
        let log = &self.shared.log;
        // Leading: what the quorum flushed of this leadership's epoch and before
        // (`committed_point`); a log's remote marks from an earlier leadership are not
        // trusted.
        let learned = match self.shared.current().as_ref() {
            Some(Current::Following(f, _)) => f.leader_committed(),
            Some(Current::Leading(l)) => crate::committed::committed_point(log, l.epoch()),
            _ => Lsn::ZERO,
        };
        let now = learned.get();
        let best = self
            .shared
            .committed
            .fetch_max(now, Ordering::AcqRel)
            .max(now);
        Lsn::new(best).min(log.watermarks().flushed)
    }

    /// An operator's promotion (`pg_promote`, Patroni's failover): takes leadership
    /// through the coordinator in a new epoch, whoever leads, and starts leading at the
    /// end of this node's log. Returns the epoch. The old leader steps down when it
    /// checks the coordinator or meets a follower that has seen the new epoch.
    ///
    /// # Errors
    /// The coordinator's error, or the leader failing to start.
    pub async fn promote(&self) -> Result<Epoch, TransportError> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Promote(tx)).await?;
        rx.await.map_err(|_| self.stopped())?
    }

    /// Steps down if leading (`demote`): fences the leader — pending remote commits fail
    /// — resigns in the coordinator, and stays out of elections for a while so another
    /// member takes over. Then it follows whoever is elected.
    ///
    /// # Errors
    /// [`TransportError::Stopped`].
    pub async fn step_down(&self, reason: impl Into<String>) -> Result<(), TransportError> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::StepDown(reason.into(), tx)).await?;
        rx.await.map_err(|_| self.stopped())
    }

    /// Drops `node`'s retention slot (`pg_drop_replication_slot`); returns whether there
    /// was one. Slots are kept by the leader: on any other role this is refused.
    ///
    /// # Errors
    /// [`TransportError::NotLeading`], or the slot file could not be saved.
    pub async fn drop_slot(&self, node: &str) -> Result<bool, TransportError> {
        let control = match self.shared.current().as_ref() {
            Some(Current::Leading(l)) if l.fenced().is_none() => l.slot_control(),
            _ => {
                return Err(TransportError::NotLeading {
                    node: self.shared.node_id.clone(),
                    role: self.role().as_str(),
                })
            }
        };
        control.drop_slot(node).await
    }

    async fn send(&self, c: Command) -> Result<(), TransportError> {
        self.commands.send(c).await.map_err(|_| self.stopped())
    }

    fn stopped(&self) -> TransportError {
        TransportError::Stopped {
            node: self.shared.node_id.clone(),
        }
    }

    /// Stops: a leader resigns in the coordinator and shuts down cleanly (followers are
    /// told, slots saved); a follower closes its connection and stops applying.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// The embedder's [`Apply`], shared by the followers a node runs one after another.
struct SharedApply<A>(Arc<Mutex<A>>);

impl<A: Apply> Apply for SharedApply<A> {
    fn apply(&mut self, record: &Record) -> Result<(), ApplyError> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .apply(record)
    }

    fn truncated(&mut self, to: Lsn) -> Result<(), ApplyError> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .truncated(to)
    }

    fn installs_snapshots(&self) -> bool {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .installs_snapshots()
    }

    fn install_snapshot(
        &mut self,
        lsn: Lsn,
        snapshot: &mut dyn std::io::Read,
    ) -> Result<(), ApplyError> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .install_snapshot(lsn, snapshot)
    }
}

/// `call`, or `Unavailable` if it does not answer within `limit`.
async fn bounded<T>(
    limit: Duration,
    call: impl std::future::Future<Output = Result<T, CoordinatorError>>,
) -> Result<T, CoordinatorError> {
    match tokio::time::timeout(limit, call).await {
        Ok(r) => r,
        Err(_) => Err(CoordinatorError::Unavailable {
            endpoint: "coordinator".into(),
            reason: format!("no answer within {limit:?}"),
        }),
    }
}

/// What a check decided.
enum Action {
    Stay,
    StepDown(String),
    Follow(LeaderInfo),
    Lead(Epoch),
}

struct Runner<C, A> {
    shared: Arc<Shared>,
    coordinator: C,
    security: Security,
    apply: Arc<Mutex<A>>,
    opts: NodeOptions,
    /// The listen socket until the first leadership uses it.
    socket: Option<std::net::UdpSocket>,
    advertise: String,
    /// Where the embedder's state ends.
    applied: Lsn,
    /// The role decisions.
    decider: RoleDecider,
    /// While leading an epoch not yet confirmed: when it becomes writable, the node's
    /// role turns to `Leader`.
    confirming: Option<(Epoch, watch::Receiver<bool>)>,
}

impl<C: Coordinator, A: Apply> Runner<C, A> {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>, mut stop: watch::Receiver<bool>) {
        let mut next_check = Instant::now();
        loop {
            let wake = match self.shared.current().as_ref() {
                Some(Current::Leading(_)) => self
                    .coordinator
                    .leadership_deadline()
                    .map_or(next_check, |d| d.min(next_check)),
                _ => next_check,
            };
            let confirmed = async {
                match self.confirming.as_mut() {
                    Some((_, rx)) => {
                        let _ = rx.wait_for(|w| *w).await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = stop.changed() => break,
                Some(c) = commands.recv() => self.command(c).await,
                () = confirmed => self.confirmed(),
                () = tokio::time::sleep_until(wake.into()) => {}
            }
            if *stop.borrow() {
                break;
            }
            if Instant::now() >= next_check {
                next_check = Instant::now() + self.opts.check_interval;
                self.check().await;
            } else {
                self.check_deadline().await;
            }
        }
        self.stop().await;
    }

    /// How long the next coordinator call may take: a leader must be free to fence
    /// itself at its deadline even if the coordinator hangs.
    fn limit(&self) -> Duration {
        match self.coordinator.leadership_deadline() {
            Some(d) if self.leading() => self
                .opts
                .coordinator_timeout
                .min(d.saturating_duration_since(Instant::now())),
            _ => self.opts.coordinator_timeout,
        }
    }

    fn me(&self) -> MemberInfo {
        let log = &self.shared.log;
        // An unreadable seen-epoch file only lowers what is published here; leading
        // reads it again (`Leader::start`) and refuses, naming the file.
        let seen = load_seen_epoch(&**log.storage(), log.dir()).unwrap_or(Epoch::ZERO);
        MemberInfo {
            node_id: self.shared.node_id.clone(),
            addr: self.advertise.clone(),
            epoch: seen.max(log.epoch()),
            log_epoch: log.epoch(),
            flushed: log.watermarks().flushed,
        }
    }

    async fn check_deadline(&mut self) {
        let expired = self
            .coordinator
            .leadership_deadline()
            .is_some_and(|d| Instant::now() >= d);
        // Stepping down is a no-op unless leading.
        if expired {
            self.act(Action::StepDown(
                "the coordinator lease could not be renewed in time".into(),
            ))
            .await;
        }
    }

    async fn check(&mut self) {
        self.check_deadline().await;
        let me = self.me();
        if let Err(e) = bounded(self.limit(), self.coordinator.publish(&me)).await {
            self.shared.note(format!("publishing this member: {e}"));
        }
        self.refresh_roster().await;
        let named = match bounded(self.limit(), self.coordinator.leader()).await {
            Ok(l) => l,
            Err(e) => {
                // Unreachable coordinator: a leader keeps leading until its deadline.
                self.shared.note(format!("asking for the leader: {e}"));
                return;
            }
        };
        *self
            .shared
            .coordinator_leader
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = named.clone();
        let action = self.decide(&me, named).await;
        self.act(action).await;
    }

    /// Takes the coordinator's roster, if it keeps one, as the members this node admits:
    /// a node removed from it is refused at its next handshake and its session ends.
    async fn refresh_roster(&mut self) {
        match bounded(self.limit(), self.coordinator.roster()).await {
            Ok(Some(roster)) => {
                if let Some(members) = self.security.members() {
                    let now: Vec<String> = roster.into_iter().collect();
                    if members.list().as_ref() != Some(&now) {
                        tracing::info!(node = self.shared.node_id.as_str(), members = ?now, "the coordinator's roster changed the members");
                        members.set(now);
                    }
                }
            }
            Ok(None) => {}
            Err(e) => self.shared.note(format!("reading the roster: {e}")),
        }
    }

    /// Asks the [`RoleDecider`] what to do, and asks the coordinator what a decision
    /// needs answered (a campaign, a member count) before it becomes an action.
    async fn decide(&mut self, me: &MemberInfo, named: Option<LeaderInfo>) -> Action {
        let doing = match self.shared.current().as_ref() {
            Some(Current::Leading(l)) => Doing::Leading(l.fenced()),
            Some(Current::Following(_, li)) => Doing::Following(li.clone()),
            _ => Doing::Idle,
        };
        match self
            .decider
            .decide(Instant::now(), &doing, me, named.as_ref())
        {
            Decision::Stay => Action::Stay,
            Decision::StepDown(why) => Action::StepDown(why),
            Decision::Follow(l) => Action::Follow(l),
            Decision::Lead(epoch) => Action::Lead(epoch),
            Decision::Campaign => self.campaign(me).await,
            Decision::RenewClaim => match self.campaign(me).await {
                Action::Stay => {
                    if let Err(e) =
                        bounded(self.limit(), self.coordinator.resign(&me.node_id)).await
                    {
                        self.shared
                            .note(format!("releasing a stale leader claim: {e}"));
                    }
                    Action::Stay
                }
                other => other,
            },
            Decision::CountMembers => {
                match bounded(self.limit(), self.coordinator.members()).await {
                    Ok(m) => match self.decider.members(m.len()) {
                        Ok(_) => self.campaign(me).await,
                        Err(why) => {
                            self.shared.note(why);
                            Action::Stay
                        }
                    },
                    Err(e) => {
                        self.shared.note(format!("listing members: {e}"));
                        Action::Stay
                    }
                }
            }
        }
    }

    async fn campaign(&mut self, me: &MemberInfo) -> Action {
        match bounded(self.limit(), self.coordinator.campaign(me)).await {
            Ok(Some(epoch)) => Action::Lead(epoch),
            Ok(None) => Action::Stay,
            Err(e) => {
                self.shared.note(format!("campaigning: {e}"));
                Action::Stay
            }
        }
    }

    async fn command(&mut self, c: Command) {
        match c {
            Command::Promote(reply) => {
                let leading = match self.shared.current().as_ref() {
                    Some(Current::Leading(l)) if l.fenced().is_none() => Some(l.epoch()),
                    _ => None,
                };
                let result = match leading {
                    Some(e) => Ok(e),
                    None => {
                        match bounded(self.limit(), self.coordinator.takeover(&self.me())).await {
                            Ok(epoch) => match self.lead(epoch).await {
                                Ok(()) => Ok(epoch),
                                Err(e) => {
                                    self.shared.note(format!("leading epoch {epoch}: {e}"));
                                    self.idle();
                                    Err(e)
                                }
                            },
                            Err(e) => Err(e.into()),
                        }
                    }
                };
                let _ = reply.send(result);
            }
            Command::StepDown(why, reply) => {
                if self.leading() {
                    self.act(Action::StepDown(why)).await;
                    let me = self.shared.node_id.clone();
                    if let Err(e) = bounded(self.limit(), self.coordinator.resign(&me)).await {
                        self.shared.note(format!("resigning: {e}"));
                    }
                    self.decider.stepped_down(Instant::now());
                }
                let _ = reply.send(());
            }
        }
    }

    async fn act(&mut self, action: Action) {
        match action {
            Action::Stay => {}
            Action::StepDown(why) => {
                if self.leading() {
                    tracing::warn!(
                        node = self.shared.node_id.as_str(),
                        reason = why.as_str(),
                        "stepping down"
                    );
                    self.release(why).await;
                    self.idle();
                }
            }
            // A leader whose address does not parse cannot be followed: carry on as is.
            Action::Follow(li) => match li.addr.parse::<SocketAddr>() {
                Err(_) => self.shared.note(format!(
                    "the leader {} publishes an address that does not parse: {:?}",
                    li.node_id, li.addr
                )),
                Ok(addr) => {
                    let who = li.node_id.clone();
                    if let Err(e) = self.follow(li, addr).await {
                        self.shared.note(format!("following {who}: {e}"));
                        self.idle();
                    }
                }
            },
            Action::Lead(epoch) => {
                if let Err(e) = self.lead(epoch).await {
                    self.shared.note(format!("leading epoch {epoch}: {e}"));
                    self.idle();
                }
            }
        }
    }

    fn leading(&self) -> bool {
        matches!(self.shared.current().as_ref(), Some(Current::Leading(_)))
    }

    /// Neither leading nor following.
    fn idle(&self) {
        *self.shared.current() = Some(Current::Idle);
        self.shared.role.send_replace(NodeRole::Candidate);
    }

    /// Stops whatever the node runs: a follower (remembering what was applied), or a
    /// leader, fenced with `why`.
    async fn release(&mut self, why: String) {
        // Taken out first: the lock must not be held across the awaits below.
        let current = self.shared.current().take();
        match current {
            Some(Current::Following(f, _)) => {
                // Read once the apply thread has stopped: the position it publishes while
                // running lags what it applied (by up to 1,024 records), and the next
                // role would apply those records again.
                let applied = f.applied_changes();
                f.shutdown().await;
                self.applied = *applied.borrow();
            }
            Some(Current::Leading(l)) => {
                let (yielded, epoch) = (l.yielded(), l.epoch());
                l.fence(why);
                l.shutdown().await;
                self.became_idle();
                if yielded {
                    self.undo_epoch(epoch).await;
                }
            }
            _ => {}
        }
    }

    /// After yielding (see [`Leader::yielded`]): truncates the log where `epoch` began,
    /// which forgets the epoch and whatever was written in it (no remote level can have
    /// confirmed any of it: the epoch was never confirmed), tells the embedder, gives up
    /// the claim and stays out of elections for a while, so the member that holds what
    /// this one lacked is elected.
    async fn undo_epoch(&mut self, epoch: Epoch) {
        let log = Arc::clone(&self.shared.log);
        let Some(start) = log.epoch_start(epoch) else {
            return;
        };
        let cut = tokio::task::spawn_blocking(move || log.truncate_suffix(start)).await;
        match cut {
            Ok(Ok(())) => {
                tracing::warn!(node = self.shared.node_id.as_str(), %epoch, %start, "yielded: the unconfirmed epoch is undone");
                if start < self.applied {
                    self.applied = start;
                    if let Err(e) = SharedApply(Arc::clone(&self.apply)).truncated(start) {
                        self.shared.note(format!(
                            "undoing epoch {epoch}: the embedder's truncated: {e}"
                        ));
                    }
                }
            }
            Ok(Err(e)) => self
                .shared
                .note(format!("undoing epoch {epoch} from {start}: {e}")),
            Err(e) => self
                .shared
                .note(format!("undoing epoch {epoch}: truncation task: {e}")),
        }
        let me = self.shared.node_id.clone();
        if let Err(e) = bounded(self.limit(), self.coordinator.resign(&me)).await {
            self.shared.note(format!("resigning after yielding: {e}"));
        }
        self.decider.stepped_down(Instant::now());
    }

    async fn follow(&mut self, li: LeaderInfo, addr: SocketAddr) -> Result<(), TransportError> {
        self.release(format!("{} leads now", li.node_id)).await;
        let mut opts = self.opts.follower.settings();
        opts.leader = addr;
        opts.leader_node_id.clone_from(&li.node_id);
        opts.apply_from = Some(self.applied);
        opts.epoch_authority = self.coordinator.epoch_authority();
        let apply = SharedApply(Arc::clone(&self.apply));
        let f = Follower::start(
            Arc::clone(&self.shared.log),
            self.security.clone(),
            opts,
            apply,
        )?;
        tracing::info!(node = self.shared.node_id.as_str(), leader = li.node_id.as_str(), %addr, "following");
        let leader = li.node_id.clone();
        *self.shared.current() = Some(Current::Following(f, li));
        self.shared
            .role
            .send_replace(NodeRole::Follower { leader, addr });
        Ok(())
    }

    /// What `Follower::promote` does, with the bind retried.
    async fn lead(&mut self, epoch: Epoch) -> Result<(), TransportError> {
        let mut opts = self.opts.leader.settings();
        opts.epoch = Some(epoch);
        opts.socket = self.socket.take();
        opts.epoch_authority = self.coordinator.epoch_authority();
        self.release(format!("leading epoch {epoch} instead")).await;
        self.catch_up().await?;
        tracing::info!(node = self.shared.node_id.as_str(), %epoch, end = %self.shared.log.end_lsn(), "taking the lead");
        let l = self.start_leader(opts).await?;
        let writable = l.writable();
        self.confirming = (!writable).then(|| (epoch, l.subscribe_writable()));
        *self.shared.current() = Some(Current::Leading(l));
        self.decider.leads();
        if writable {
            self.shared.role.send_replace(NodeRole::Leader { epoch });
            return Ok(());
        }
        tracing::info!(node = self.shared.node_id.as_str(), %epoch, "leading, until a quorum of followers confirms the epoch without taking appends");
        Ok(())
    }

    /// Before leading: applies what the log holds past what the embedder applied (a
    /// follower stops applying when it stops, and may have received and flushed more
    /// than it applied). A leader's own writes are applied by the embedder as it makes
    /// them, so without this the records in between would never reach its state.
    async fn catch_up(&mut self) -> Result<(), TransportError> {
        let log = Arc::clone(&self.shared.log);
        let (from, end) = (self.applied, log.end_lsn());
        if from > end || from < log.start_lsn() {
            // A bootstrap cut short: the embedder holds a snapshot its log does not
            // continue. Leading would write after a state nobody else has.
            return Err(TransportError::Apply {
                lsn: from,
                reason: format!(
                    "the embedder's state (at {from}) is not continued by this node's log ({}..{end}): it must be bootstrapped from a leader's snapshot before this node can lead",
                    log.start_lsn()
                ),
            });
        }
        if from == end {
            return Ok(());
        }
        let apply = Arc::clone(&self.apply);
        let done = tokio::task::spawn_blocking(move || {
            let mut at = from;
            let fail = |at: Lsn, reason: String| TransportError::Apply { lsn: at, reason };
            let mut records = log
                .record_reader(from)
                .map_err(|e| fail(at, e.to_string()))?;
            while at < end {
                let rec = records
                    .next_blocking(Some(Duration::from_secs(10)))
                    .map_err(|e| fail(at, e.to_string()))?
                    .ok_or_else(|| fail(at, format!("the log did not reach {end} in time")))?;
                SharedApply(Arc::clone(&apply))
                    .apply(&rec)
                    .map_err(|e| fail(rec.lsn, e.to_string()))?;
                at = rec.lsn;
            }
            Ok::<Lsn, TransportError>(at)
        })
        .await
        .map_err(|e| TransportError::Apply {
            lsn: from,
            reason: format!("the apply task failed: {e}"),
        })??;
        tracing::info!(node = self.shared.node_id.as_str(), %from, to = %done, "applied the log's tail before leading");
        self.applied = done;
        Ok(())
    }

    /// The epoch being led was confirmed and begun: the node is the leader now (its role
    /// says so only from here: `Leader` means it takes appends).
    fn confirmed(&mut self) {
        let Some((epoch, _)) = self.confirming.take() else {
            return;
        };
        if matches!(self.shared.current().as_ref(), Some(Current::Leading(l)) if l.epoch() == epoch && l.fenced().is_none())
        {
            self.shared.role.send_replace(NodeRole::Leader { epoch });
        }
    }

    /// After leading: everything in the log was the embedder's own writes.
    fn became_idle(&mut self) {
        let log = &self.shared.log;
        self.applied = log.end_lsn();
        log.seal("this node is not the leader");
    }

    /// Starts a leader on the kept listen address; a just-closed endpoint releases it
    /// asynchronously, so binding is retried briefly.
    async fn start_leader(&mut self, opts: LeaderOptions) -> Result<Leader, TransportError> {
        let mut opts = opts;
        let mut tries = 0;
        loop {
            let next = opts.settings();
            match Leader::start(Arc::clone(&self.shared.log), self.security.clone(), opts) {
                Err(TransportError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::AddrInUse && tries < 40 =>
                {
                    tries += 1;
                    opts = next;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => return other,
            }
        }
    }

    async fn stop(mut self) {
        let current = self.shared.current().take();
        match current {
            Some(Current::Leading(l)) => {
                let me = self.shared.node_id.clone();
                if let Err(e) = bounded(self.limit(), self.coordinator.resign(&me)).await {
                    self.shared.note(format!("resigning: {e}"));
                }
                l.shutdown().await;
                self.shared.log.seal("this node has stopped");
            }
            Some(Current::Following(f, _)) => f.shutdown().await,
            _ => {}
        }
        self.shared.role.send_replace(NodeRole::Stopped);
        tracing::info!(node = self.shared.node_id.as_str(), "node stopped");
    }
}
