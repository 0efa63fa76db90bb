//! Who leads: leader election and member positions, Patroni-style.
//!
//! A [`Coordinator`] answers three questions for a node: who leads now, may I take over,
//! and what do the others hold. [`StaticCoordinator`] is the embedded default: the leader
//! is configured and changes only when an operator says so. [`EtcdCoordinator`] keeps the
//! state in etcd, under `/walship/<cluster>/`:
//!
//! - `members/<node>`: each member's replication address, epoch and flushed LSN, under
//!   that member's lease — a member that stops renewing disappears after the lease TTL;
//! - `leader`: the leader's node, address and epoch, under the leader's lease;
//! - `epoch`: the last epoch granted (no lease: epochs never repeat);
//! - `roster`: the member node ids, one per line (no lease). It is written once, from the
//!   first member's configuration, when it does not exist (as etcd's own
//!   `--initial-cluster`); afterwards it is the membership, changed by writing the key
//!   (`etcdctl put /walship/<cluster>/roster`), and every member re-reads it at each check.
//!   Only roster members are listed by [`members`](Coordinator::members) and may campaign.
//!
//! Epochs a peer claims are checked against `epoch` before they are believed
//! ([`EpochAuthority`]).
//!
//! Taking over is one compare-and-swap: it succeeds only if no `leader` key exists and
//! `epoch` is still what the candidate read, and it writes `leader` and `epoch + 1`
//! together. A candidate first checks that no live member has flushed more than it has
//! (ties go to the smaller node id), so the most caught-up member wins; with RemoteFlush
//! and a quorum that forms a majority with the leader, that member holds every
//! acknowledged commit.

use std::collections::BTreeSet;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
#[cfg(feature = "etcd")]
use std::time::Duration;
use std::time::Instant;

#[cfg(feature = "etcd")]
use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
#[cfg(feature = "etcd")]
use tokio::sync::watch;
use walship_engine::{Epoch, Lsn};

/// Why the coordinator could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoordinatorError {
    /// The coordination service failed or is unreachable.
    #[error("coordinator {endpoint}: {reason}")]
    Unavailable {
        /// Where.
        endpoint: String,
        /// What failed.
        reason: String,
    },
    /// A stored value does not parse.
    #[error("coordinator key {key}: {reason}")]
    BadValue {
        /// The key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// This node is not a member of the cluster (the coordinator's roster).
    #[error(
        "node {node:?} is not in the roster of cluster {cluster:?} ({roster}): it may not lead"
    )]
    NotMember {
        /// The node.
        node: String,
        /// The cluster.
        cluster: String,
        /// The roster, for the message.
        roster: String,
    },
    /// No epoch is left after `last`: epochs never wrap.
    #[error(
        "no epoch after {last}: epochs are exhausted and never wrap, so no leader can be elected"
    )]
    EpochsExhausted {
        /// The epoch reached.
        last: Epoch,
    },
}

/// The epoch after both `a` and `b`, or [`CoordinatorError::EpochsExhausted`].
fn epoch_after(a: Epoch, b: Epoch) -> Result<Epoch, CoordinatorError> {
    let last = a.max(b);
    last.checked_next()
        .ok_or(CoordinatorError::EpochsExhausted { last })
}

/// What a member publishes about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    /// Its node id.
    pub node_id: String,
    /// Where its replication endpoint listens.
    pub addr: String,
    /// The highest epoch it has seen.
    pub epoch: Epoch,
    /// The epoch its log is in: the latest of its epoch history. Elections compare it
    /// before `flushed`, as Raft compares last terms: a returning old leader's long
    /// unreplicated tail must not outrank a shorter log that holds a newer leader's data.
    pub log_epoch: Epoch,
    /// How far its log is flushed.
    pub flushed: Lsn,
}

/// The current leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderInfo {
    /// Its node id.
    pub node_id: String,
    /// Where followers connect.
    pub addr: String,
    /// The epoch it leads.
    pub epoch: Epoch,
}

/// A future of an [`EpochAuthority`].
pub type EpochFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Epoch, CoordinatorError>> + Send + 'a>>;

/// Where epochs are granted: asked before an epoch a peer claims is believed. A leader
/// steps down for a newer epoch, and a follower records one as seen, only if the
/// authority granted it — so a peer that claims 2^64 − 1 (a bug, a planted file, a
/// compromised member) cannot make a leader step down or pin a follower to an epoch no
/// leader can ever hold.
pub trait EpochAuthority: Send + Sync + fmt::Debug {
    /// The highest epoch granted so far.
    fn granted(&self) -> EpochFuture<'_>;
}

/// Whether `claimed` was granted by `authority` (always, without one). `Err` says why
/// not, or that it could not be asked (then the claim is not believed either: a leader
/// whose coordinator is unreachable fences itself at its lease deadline anyway).
pub async fn verify_epoch(
    authority: Option<&Arc<dyn EpochAuthority>>,
    claimed: Epoch,
) -> Result<(), String> {
    let Some(a) = authority else {
        return Ok(());
    };
    match tokio::time::timeout(std::time::Duration::from_secs(2), a.granted()).await {
        Ok(Ok(granted)) if granted >= claimed => Ok(()),
        Ok(Ok(granted)) => Err(format!(
            "epoch {claimed} was never granted: the coordinator has granted epochs up to {granted}"
        )),
        Ok(Err(e)) => Err(format!("epoch {claimed} could not be verified: {e}")),
        Err(_) => Err(format!(
            "epoch {claimed} could not be verified: the coordinator did not answer in 2 s"
        )),
    }
}

/// Leader election and member positions; see the [module docs](self).
pub trait Coordinator: Send {
    /// Publishes this member's state.
    fn publish(
        &mut self,
        me: &MemberInfo,
    ) -> impl Future<Output = Result<(), CoordinatorError>> + Send;

    /// The live members' published states.
    fn members(&mut self)
        -> impl Future<Output = Result<Vec<MemberInfo>, CoordinatorError>> + Send;

    /// The current leader, if any.
    fn leader(
        &mut self,
    ) -> impl Future<Output = Result<Option<LeaderInfo>, CoordinatorError>> + Send;

    /// Tries to become the leader; returns the epoch won, or `None` if another leads or
    /// is better placed.
    fn campaign(
        &mut self,
        me: &MemberInfo,
    ) -> impl Future<Output = Result<Option<Epoch>, CoordinatorError>> + Send;

    /// An operator's promotion: makes `me` the leader now, whoever leads, in a new epoch
    /// above every epoch granted or seen. The old leader learns it from
    /// [`leader`](Coordinator::leader) (and from its followers' refusals) and steps down.
    fn takeover(
        &mut self,
        me: &MemberInfo,
    ) -> impl Future<Output = Result<Epoch, CoordinatorError>> + Send;

    /// Gives up leadership if `node_id` holds it (a clean shutdown or a demotion), so
    /// that another member can take over without waiting for a lease to expire.
    fn resign(
        &mut self,
        node_id: &str,
    ) -> impl Future<Output = Result<(), CoordinatorError>> + Send;

    /// Until when a leader elected through this coordinator may keep acknowledging
    /// without renewing its claim; past it another member may already have been elected,
    /// so the leader must fence itself first. `None`: leadership does not expire.
    fn leadership_deadline(&self) -> Option<Instant> {
        None
    }

    /// Where the epochs this coordinator grants can be verified; `None` when peers'
    /// epochs are believed (the static coordinator: members are trusted, and only an
    /// operator's promotion raises an epoch).
    fn epoch_authority(&self) -> Option<Arc<dyn EpochAuthority>> {
        None
    }

    /// The members of the cluster as the coordinator keeps them, if it keeps them
    /// (etcd's roster); `None`: they are the configuration's.
    fn roster(
        &mut self,
    ) -> impl Future<Output = Result<Option<BTreeSet<String>>, CoordinatorError>> + Send {
        async { Ok(None) }
    }
}

/// Whether `me` is the best-placed live member: none has a log in a newer epoch, or in the
/// same epoch flushed further (ties: the smaller id). The rule of a campaign (etcd's, and
/// the simulator's coordinator's).
pub fn best_placed(me: &MemberInfo, members: &[MemberInfo]) -> bool {
    let rank = |m: &MemberInfo| (m.log_epoch, m.flushed, std::cmp::Reverse(m.node_id.clone()));
    members
        .iter()
        .filter(|m| m.node_id != me.node_id)
        .all(|m| rank(m) < rank(me))
}

#[derive(Debug, Default)]
struct StaticState {
    leader: Option<LeaderInfo>,
    members: Vec<MemberInfo>,
}

/// The embedded default: a configured leader, changed only by [`set_leader`]
/// (an operator's promotion). Clones share the state, so nodes in one process agree.
///
/// [`set_leader`]: StaticCoordinator::set_leader
#[derive(Debug, Clone, Default)]
pub struct StaticCoordinator {
    state: Arc<Mutex<StaticState>>,
}

impl StaticCoordinator {
    /// A coordinator whose leader is `leader`.
    pub fn new(leader: Option<LeaderInfo>) -> StaticCoordinator {
        StaticCoordinator {
            state: Arc::new(Mutex::new(StaticState {
                leader,
                members: Vec::new(),
            })),
        }
    }

    /// The operator names a new leader.
    pub fn set_leader(&self, leader: LeaderInfo) {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .leader = Some(leader);
    }
}

impl Coordinator for StaticCoordinator {
    async fn publish(&mut self, me: &MemberInfo) -> Result<(), CoordinatorError> {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        s.members.retain(|m| m.node_id != me.node_id);
        s.members.push(me.clone());
        Ok(())
    }

    async fn members(&mut self) -> Result<Vec<MemberInfo>, CoordinatorError> {
        Ok(self
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .members
            .clone())
    }

    async fn leader(&mut self) -> Result<Option<LeaderInfo>, CoordinatorError> {
        Ok(self
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .leader
            .clone())
    }

    /// Elects only the configured leader: with static configuration, only an operator
    /// changes who leads. The configured leader (re)starting gets a new epoch.
    async fn campaign(&mut self, me: &MemberInfo) -> Result<Option<Epoch>, CoordinatorError> {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        match &mut s.leader {
            Some(l) if l.node_id == me.node_id => l.grant(me).map(Some),
            _ => Ok(None),
        }
    }

    async fn takeover(&mut self, me: &MemberInfo) -> Result<Epoch, CoordinatorError> {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let mut l = s.leader.clone().unwrap_or(LeaderInfo {
            node_id: me.node_id.clone(),
            addr: me.addr.clone(),
            epoch: Epoch::ZERO,
        });
        l.node_id.clone_from(&me.node_id);
        // At the last epoch the leadership stays as it was.
        let epoch = l.grant(me)?;
        s.leader = Some(l);
        Ok(epoch)
    }

    async fn resign(&mut self, node_id: &str) -> Result<(), CoordinatorError> {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if s.leader.as_ref().is_some_and(|l| l.node_id == node_id) {
            s.leader = None;
        }
        Ok(())
    }
}

impl LeaderInfo {
    /// Hands this leadership to `me` in the epoch after both its own and `me`'s.
    fn grant(&mut self, me: &MemberInfo) -> Result<Epoch, CoordinatorError> {
        self.epoch = epoch_after(self.epoch, me.epoch)?;
        self.addr.clone_from(&me.addr);
        Ok(self.epoch)
    }
}

#[cfg(feature = "etcd")]
/// Election and membership in etcd; see the [module docs](self).
pub struct EtcdCoordinator {
    client: Client,
    endpoint: String,
    cluster: String,
    prefix: String,
    /// The roster as last read; `None` until read.
    roster: Option<BTreeSet<String>>,
    ttl_s: i64,
    lease: i64,
    lost: Arc<watch::Sender<bool>>,
    deadline: Arc<Mutex<Instant>>,
    keeper: tokio::task::JoinHandle<()>,
}

#[cfg(feature = "etcd")]
impl std::fmt::Debug for EtcdCoordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdCoordinator")
            .field("endpoint", &self.endpoint)
            .field("prefix", &self.prefix)
            .field("lease", &self.lease)
            .finish()
    }
}

#[cfg(feature = "etcd")]
/// How long a lease granted or renewed with `ttl_s` is relied on: the server's clock for
/// it starts after the request was sent, which is when it is measured from here, and
/// the margin covers clock rate differences.
fn valid_for(ttl_s: i64) -> Duration {
    let ttl = Duration::from_secs(ttl_s.max(0) as u64);
    ttl - ttl / 8
}

#[cfg(feature = "etcd")]
impl EtcdCoordinator {
    /// Connects to etcd at `endpoints` for cluster `cluster`, grants this member a lease
    /// of `ttl` (whole seconds, at least one) and keeps it alive, renewing every third of
    /// it. If a renewal fails or takes longer than that, the lease — and with it
    /// leadership — is presumed lost (see [`lease_lost`]); the next
    /// [`publish`](Coordinator::publish) asks for a new one.
    ///
    /// # Errors
    /// [`CoordinatorError::Unavailable`] if etcd cannot be reached.
    ///
    /// [`lease_lost`]: EtcdCoordinator::lease_lost
    pub async fn connect(
        endpoints: &[String],
        cluster: &str,
        ttl: Duration,
    ) -> Result<EtcdCoordinator, CoordinatorError> {
        let endpoint = endpoints.join(",");
        let client =
            Client::connect(endpoints, None)
                .await
                .map_err(|e| CoordinatorError::Unavailable {
                    endpoint: endpoint.clone(),
                    reason: e.to_string(),
                })?;
        let mut c = EtcdCoordinator {
            client,
            endpoint,
            cluster: cluster.to_owned(),
            prefix: format!("/walship/{cluster}/"),
            roster: None,
            ttl_s: ttl.as_secs().max(1) as i64,
            lease: 0,
            lost: Arc::new(watch::channel(true).0),
            deadline: Arc::new(Mutex::new(Instant::now())),
            keeper: tokio::spawn(async {}),
        };
        c.ensure_lease().await?;
        Ok(c)
    }

    /// Grants a new lease and starts renewing it, unless the current one is alive.
    async fn ensure_lease(&mut self) -> Result<(), CoordinatorError> {
        if !*self.lost.borrow() {
            return Ok(());
        }
        self.keeper.abort();
        let asked = Instant::now();
        let lease = self
            .client
            .lease_grant(self.ttl_s, None)
            .await
            .map_err(|e| self.unavailable(e))?
            .id();
        let (mut keeper, mut stream) = self
            .client
            .lease_keep_alive(lease)
            .await
            .map_err(|e| self.unavailable(e))?;
        self.lease = lease;
        *self.deadline.lock().unwrap_or_else(PoisonError::into_inner) =
            asked + valid_for(self.ttl_s);
        let every = Duration::from_secs(self.ttl_s as u64) / 3;
        let (renewed_until, lost) = (Arc::clone(&self.deadline), Arc::clone(&self.lost));
        self.keeper = tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let asked = Instant::now();
                let renewal = tokio::time::timeout(every, async {
                    keeper.keep_alive().await.ok()?;
                    match stream.message().await {
                        Ok(Some(r)) if r.ttl() > 0 => Some(r.ttl()),
                        _ => None,
                    }
                })
                .await;
                match renewal {
                    Ok(Some(ttl_s)) => {
                        *renewed_until.lock().unwrap_or_else(PoisonError::into_inner) =
                            asked + valid_for(ttl_s);
                    }
                    _ => {
                        lost.send_replace(true);
                        return;
                    }
                }
            }
        });
        self.lost.send_replace(false);
        Ok(())
    }

    /// `true` while this member's lease is presumed lost: a renewal failed, so another
    /// member may be elected once the TTL has passed, and a leader must fence itself.
    pub fn lease_lost(&self) -> watch::Receiver<bool> {
        self.lost.subscribe()
    }

    /// Stops renewing the lease without revoking it, as a crashed member would: its keys
    /// disappear when the TTL runs out. For tests of failover.
    pub fn abandon(self) {
        self.keeper.abort();
    }

    /// Revokes the lease (its keys go at once) and stops.
    ///
    /// # Errors
    /// [`CoordinatorError::Unavailable`].
    pub async fn close(mut self) -> Result<(), CoordinatorError> {
        self.keeper.abort();
        let lease = self.lease;
        self.client
            .lease_revoke(lease)
            .await
            .map(|_| ())
            .map_err(|e| self.unavailable(e))
    }

    fn unavailable(&self, e: etcd_client::Error) -> CoordinatorError {
        CoordinatorError::Unavailable {
            endpoint: self.endpoint.clone(),
            reason: e.to_string(),
        }
    }

    fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }

    /// The roster in etcd; if there is none yet, `initial` becomes it (one transaction,
    /// so two members starting at once agree on one). Returns the roster in force, which
    /// may differ from `initial`: once written, etcd's roster is the membership.
    ///
    /// # Errors
    /// [`CoordinatorError::Unavailable`], or a roster that does not parse.
    pub async fn bootstrap_roster(
        &mut self,
        initial: &BTreeSet<String>,
    ) -> Result<BTreeSet<String>, CoordinatorError> {
        let key = self.key("roster");
        let value = initial.iter().cloned().collect::<Vec<_>>().join("\n");
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, value, None)]);
        let created = self
            .client
            .txn(txn)
            .await
            .map_err(|e| self.unavailable(e))?
            .succeeded();
        if created {
            tracing::info!(cluster = self.cluster.as_str(), roster = ?initial, "wrote the cluster's roster to etcd");
        }
        match Coordinator::roster(self).await? {
            Some(r) => Ok(r),
            None => Err(bad(
                self.key("roster").as_bytes(),
                "missing right after it was written",
            )),
        }
    }

    /// Refuses `me` unless it is in the roster (when the roster is known).
    fn check_member(&self, me: &str) -> Result<(), CoordinatorError> {
        match &self.roster {
            Some(r) if !r.contains(me) => Err(CoordinatorError::NotMember {
                node: me.to_owned(),
                cluster: self.cluster.clone(),
                roster: r.iter().cloned().collect::<Vec<_>>().join(", "),
            }),
            _ => Ok(()),
        }
    }
}

#[cfg(feature = "etcd")]
/// The etcd `epoch` key, read for [`EpochAuthority`].
#[derive(Clone)]
struct EtcdEpochs {
    client: Client,
    key: String,
    endpoint: String,
}

#[cfg(feature = "etcd")]
impl fmt::Debug for EtcdEpochs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdEpochs")
            .field("key", &self.key)
            .finish()
    }
}

#[cfg(feature = "etcd")]
impl EpochAuthority for EtcdEpochs {
    fn granted(&self) -> EpochFuture<'_> {
        Box::pin(async move {
            let mut client = self.client.clone();
            let resp = client.get(self.key.clone(), None).await.map_err(|e| {
                CoordinatorError::Unavailable {
                    endpoint: self.endpoint.clone(),
                    reason: e.to_string(),
                }
            })?;
            match resp.kvs().first() {
                Some(kv) => {
                    let s =
                        std::str::from_utf8(kv.value()).map_err(|_| bad(kv.key(), "not UTF-8"))?;
                    Ok(Epoch::new(number(kv.key(), s)?))
                }
                None => Ok(Epoch::ZERO),
            }
        })
    }
}

#[cfg(feature = "etcd")]
/// The roster's lines: node ids, each valid as one.
fn parse_roster(key: &[u8], value: &[u8]) -> Result<BTreeSet<String>, CoordinatorError> {
    let text = std::str::from_utf8(value).map_err(|_| bad(key, "not UTF-8"))?;
    let mut ids = BTreeSet::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        crate::tls::validate_id("node id", line).map_err(|e| bad(key, e.to_string()))?;
        ids.insert(line.to_owned());
    }
    if ids.is_empty() {
        return Err(bad(key, "lists no member"));
    }
    Ok(ids)
}

#[cfg(feature = "etcd")]
impl Drop for EtcdCoordinator {
    /// Stops renewing: the lease then runs out as after a crash (use
    /// [`close`](EtcdCoordinator::close) to release it at once).
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

#[cfg(feature = "etcd")]
fn bad(key: &[u8], reason: impl Into<String>) -> CoordinatorError {
    CoordinatorError::BadValue {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: reason.into(),
    }
}

#[cfg(feature = "etcd")]
/// `node addr epoch [flushed]`, one field per line.
fn fields(key: &[u8], value: &[u8], n: usize) -> Result<Vec<String>, CoordinatorError> {
    let text = std::str::from_utf8(value).map_err(|_| bad(key, "not UTF-8"))?;
    let f: Vec<String> = text.lines().map(str::to_owned).collect();
    if f.len() != n {
        return Err(bad(key, format!("expected {n} lines, found {}", f.len())));
    }
    Ok(f)
}

#[cfg(feature = "etcd")]
fn number(key: &[u8], s: &str) -> Result<u64, CoordinatorError> {
    s.parse()
        .map_err(|_| bad(key, format!("{s:?} is not a number")))
}

#[cfg(feature = "etcd")]
fn parse_leader(key: &[u8], value: &[u8]) -> Result<LeaderInfo, CoordinatorError> {
    let f = fields(key, value, 3)?;
    Ok(LeaderInfo {
        node_id: f[0].clone(),
        addr: f[1].clone(),
        epoch: Epoch::new(number(key, &f[2])?),
    })
}

#[cfg(feature = "etcd")]
fn parse_member(key: &[u8], value: &[u8]) -> Result<MemberInfo, CoordinatorError> {
    let f = fields(key, value, 5)?;
    Ok(MemberInfo {
        node_id: f[0].clone(),
        addr: f[1].clone(),
        epoch: Epoch::new(number(key, &f[2])?),
        log_epoch: Epoch::new(number(key, &f[3])?),
        flushed: Lsn::new(number(key, &f[4])?),
    })
}

#[cfg(feature = "etcd")]
impl Coordinator for EtcdCoordinator {
    async fn publish(&mut self, me: &MemberInfo) -> Result<(), CoordinatorError> {
        self.ensure_lease().await?;
        let key = self.key(&format!("members/{}", me.node_id));
        let value = format!(
            "{}\n{}\n{}\n{}\n{}",
            me.node_id,
            me.addr,
            me.epoch.get(),
            me.log_epoch.get(),
            me.flushed.get()
        );
        let opts = PutOptions::new().with_lease(self.lease);
        self.client
            .put(key, value, Some(opts))
            .await
            .map(|_| ())
            .map_err(|e| self.unavailable(e))
    }

    /// The live members that are in the roster: a node outside it cannot sway an
    /// election by publishing a long log.
    async fn members(&mut self) -> Result<Vec<MemberInfo>, CoordinatorError> {
        let key = self.key("members/");
        let resp = self
            .client
            .get(key, Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|e| self.unavailable(e))?;
        let all = resp
            .kvs()
            .iter()
            .map(|kv| parse_member(kv.key(), kv.value()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(all
            .into_iter()
            .filter(|m| self.roster.as_ref().is_none_or(|r| r.contains(&m.node_id)))
            .collect())
    }

    async fn leader(&mut self) -> Result<Option<LeaderInfo>, CoordinatorError> {
        let key = self.key("leader");
        let resp = self
            .client
            .get(key, None)
            .await
            .map_err(|e| self.unavailable(e))?;
        resp.kvs()
            .first()
            .map(|kv| parse_leader(kv.key(), kv.value()))
            .transpose()
    }

    async fn campaign(&mut self, me: &MemberInfo) -> Result<Option<Epoch>, CoordinatorError> {
        self.check_member(&me.node_id)?;
        if self.leader().await?.is_some() {
            return Ok(None);
        }
        let members = self.members().await?;
        if !best_placed(me, &members) {
            return Ok(None);
        }
        let (last, rev) = self.granted_epoch().await?;
        let next = epoch_after(last, me.epoch)?;
        let won = self
            .claim(
                me,
                next,
                rev,
                Some(Compare::create_revision(
                    self.key("leader"),
                    CompareOp::Equal,
                    0,
                )),
            )
            .await?;
        Ok(won.then_some(next))
    }

    async fn takeover(&mut self, me: &MemberInfo) -> Result<Epoch, CoordinatorError> {
        self.check_member(&me.node_id)?;
        // Retried only while other takeovers or elections race this one.
        for _ in 0..16 {
            let (last, rev) = self.granted_epoch().await?;
            let next = epoch_after(last, me.epoch)?;
            if self.claim(me, next, rev, None).await? {
                return Ok(next);
            }
        }
        Err(CoordinatorError::Unavailable {
            endpoint: self.endpoint.clone(),
            reason: "takeover kept losing the race for the epoch key".into(),
        })
    }

    async fn resign(&mut self, node_id: &str) -> Result<(), CoordinatorError> {
        let key = self.key("leader");
        let resp = self
            .client
            .get(key.clone(), None)
            .await
            .map_err(|e| self.unavailable(e))?;
        let Some(kv) = resp.kvs().first() else {
            return Ok(());
        };
        if parse_leader(kv.key(), kv.value())?.node_id != node_id {
            return Ok(());
        }
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                kv.mod_revision(),
            )])
            .and_then([TxnOp::delete(key, None)]);
        self.client
            .txn(txn)
            .await
            .map(|_| ())
            .map_err(|e| self.unavailable(e))
    }

    fn leadership_deadline(&self) -> Option<Instant> {
        if *self.lost.borrow() {
            return Some(Instant::now());
        }
        Some(*self.deadline.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn epoch_authority(&self) -> Option<Arc<dyn EpochAuthority>> {
        Some(Arc::new(EtcdEpochs {
            client: self.client.clone(),
            key: self.key("epoch"),
            endpoint: self.endpoint.clone(),
        }))
    }

    async fn roster(&mut self) -> Result<Option<BTreeSet<String>>, CoordinatorError> {
        let key = self.key("roster");
        let resp = self
            .client
            .get(key, None)
            .await
            .map_err(|e| self.unavailable(e))?;
        let roster = match resp.kvs().first() {
            Some(kv) => Some(parse_roster(kv.key(), kv.value())?),
            None => None,
        };
        if roster.is_some() {
            self.roster.clone_from(&roster);
        }
        Ok(roster)
    }
}

#[cfg(feature = "etcd")]
impl EtcdCoordinator {
    /// The last epoch granted and the revision of its key (0: none yet).
    async fn granted_epoch(&mut self) -> Result<(Epoch, i64), CoordinatorError> {
        let resp = self
            .client
            .get(self.key("epoch"), None)
            .await
            .map_err(|e| self.unavailable(e))?;
        match resp.kvs().first() {
            Some(kv) => {
                let s = std::str::from_utf8(kv.value()).map_err(|_| bad(kv.key(), "not UTF-8"))?;
                Ok((Epoch::new(number(kv.key(), s)?), kv.mod_revision()))
            }
            None => Ok((Epoch::ZERO, 0)),
        }
    }

    /// One transaction: if the epoch key is still at `rev` (and `also` holds), `me` leads
    /// `next` under its lease and `next` is recorded as granted.
    async fn claim(
        &mut self,
        me: &MemberInfo,
        next: Epoch,
        rev: i64,
        also: Option<Compare>,
    ) -> Result<bool, CoordinatorError> {
        let (epoch_key, leader_key) = (self.key("epoch"), self.key("leader"));
        let value = format!("{}\n{}\n{}", me.node_id, me.addr, next.get());
        let mut when = vec![Compare::mod_revision(
            epoch_key.clone(),
            CompareOp::Equal,
            rev,
        )];
        when.extend(also);
        let txn = Txn::new().when(when).and_then([
            TxnOp::put(
                leader_key,
                value,
                Some(PutOptions::new().with_lease(self.lease)),
            ),
            TxnOp::put(epoch_key, next.get().to_string(), None),
        ]);
        Ok(self
            .client
            .txn(txn)
            .await
            .map_err(|e| self.unavailable(e))?
            .succeeded())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: &str, flushed: u64) -> MemberInfo {
        MemberInfo {
            node_id: id.into(),
            addr: String::new(),
            epoch: Epoch::new(1),
            log_epoch: Epoch::new(1),
            flushed: Lsn::new(flushed),
        }
    }

    #[cfg(feature = "etcd")]
    #[test]
    fn the_most_caught_up_member_is_best_placed_ties_to_the_smaller_id() {
        let all = [m("a", 100), m("b", 300), m("c", 300)];
        assert!(!best_placed(&all[0], &all));
        assert!(best_placed(&all[1], &all));
        assert!(!best_placed(&all[2], &all));
        assert!(best_placed(&m("z", 0), &[]));
        // A newer log epoch outranks a longer log in an older one.
        let newer = MemberInfo {
            log_epoch: Epoch::new(2),
            ..m("c", 10)
        };
        assert!(best_placed(&newer, &[m("a", 900), newer.clone()]));
        assert!(!best_placed(&m("a", 900), &[m("a", 900), newer]));
    }

    /// Issue 11: epoch arithmetic wrapped (`+ 1`): a cluster pushed to the last epoch
    /// elected a leader in epoch 0, below everything already seen.
    #[tokio::test]
    async fn epochs_never_wrap_and_the_leadership_stays_at_the_limit() {
        let at_max = LeaderInfo {
            node_id: "n1".into(),
            addr: "a".into(),
            epoch: Epoch::MAX,
        };
        let mut c = StaticCoordinator::new(Some(at_max.clone()));
        let me = m("n1", 0);
        assert_eq!(
            c.campaign(&me).await,
            Err(CoordinatorError::EpochsExhausted { last: Epoch::MAX })
        );
        let err = c.takeover(&m("n2", 0)).await.unwrap_err();
        assert!(err.to_string().contains("never wrap"), "{err}");
        assert_eq!(c.leader().await.unwrap(), Some(at_max), "unchanged");
        // Below the limit, the next epoch as before.
        let mut c = StaticCoordinator::new(None);
        assert_eq!(c.takeover(&me).await.unwrap(), Epoch::new(2));
    }

    #[cfg(feature = "etcd")]
    #[test]
    fn values_parse_and_damage_is_named() {
        let l = parse_leader(b"k", b"n1\n10.0.0.1:7400\n7").unwrap();
        assert_eq!((l.node_id.as_str(), l.epoch), ("n1", Epoch::new(7)));
        let e = parse_member(b"/walship/c/members/x", b"x\naddr\nnope\n1\n5").unwrap_err();
        assert!(e.to_string().contains("/walship/c/members/x"), "{e}");
        assert!(parse_leader(b"k", b"only one line").is_err());
    }

    #[tokio::test]
    async fn the_static_coordinator_changes_leader_only_when_told() {
        let info = |n: &str, e| LeaderInfo {
            node_id: n.into(),
            addr: "a".into(),
            epoch: Epoch::new(e),
        };
        let mut c = StaticCoordinator::new(Some(info("n1", 1)));
        let mut other = c.clone();
        c.publish(&m("n2", 500)).await.unwrap();
        assert_eq!(other.members().await.unwrap().len(), 1);
        assert_eq!(c.campaign(&m("n2", 500)).await.unwrap(), None);
        c.set_leader(info("n2", 2));
        assert_eq!(other.leader().await.unwrap(), Some(info("n2", 2)));
    }
}
