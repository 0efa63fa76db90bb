//! One seeded world: three nodes, each a log on its own simulated disk, driven by the
//! real decision logic (`RoleDecider`, the leader's `Registry`, `LeaderSession` and
//! `FollowerSession`), a simulated coordinator with etcd's rules, a simulated network,
//! writers at `Local` and `RemoteFlush`, and faults: process crashes, power losses,
//! isolations (a node cut off from the others and from the coordinator), dropped
//! connections, and operator promotions (the most caught-up live member, when the leader's
//! node is down). Virtual time in milliseconds, one thread: the logs are driven by the
//! world (`Drive::Manual`), so nothing happens between its steps.
//!
//! Checked as it runs and at the end of every seed (the `check_*` functions):
//! - one leader per epoch;
//! - every commit acknowledged at `Local` is on its node after a crash or power loss of
//!   that node, unless a later truncation on that node (following a new leader) cut it;
//! - every commit acknowledged at `RemoteFlush` (one follower + the leader: a majority of
//!   three) is on every leader elected afterwards, and on every node at the end;
//! - no truncation goes below what the node had learned was committed (its leader's
//!   `remote_flushed`, or what a leader's frames said): an embedder may have snapshotted
//!   that far and recycled the log behind it;
//! - at the end the logs agree byte for byte (but for flush stamps);
//! - after the faults stop, a leader is elected and commits within a bounded time.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use walship_engine::storage::{SimDisk, SimRng as Rng, Storage};
use walship_engine::{Drive, Durability, Epoch, EpochHistory, Log, Lsn, Options};
use walship_transport::coordinator::{LeaderInfo, MemberInfo};
use walship_transport::quorum::Progress;
use walship_transport::role::{Decision, Doing, RoleDecider};
use walship_transport::session::follower::{FollowerConfig, FollowerEvent, FollowerSession};
use walship_transport::session::leader::{LeaderConfig, LeaderEvent, LeaderSession, LogView};
use walship_transport::session::registry::{Effect, Registry};
use walship_transport::slots::{SlotWriter, Slots};
use walship_transport::wire::Compression;
use walship_transport::SyncPolicy;

use crate::coord::{Coordinator, LEASE_TTL_MS};

const CLUSTER: &str = "sim";
const CAP: u64 = 64 * 1024;
const DIR: &str = "/var/lib/walship/log";
const SEEN_FILE: &str = "sim.seen";
/// How often a node talks to the coordinator, ms.
const CHECK_MS: u64 = 10;
/// How long an unconfirmed leader that refused a follower ahead of it waits for a quorum
/// to confirm it before it yields, ms (`LeaderOptions::confirm_timeout`).
const CONFIRM_MS: u64 = 150;

/// The shape of one run.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// Virtual milliseconds with faults.
    pub fault_ms: u64,
    /// Virtual milliseconds after the faults stop within which a leader must commit.
    pub settle_ms: u64,
    /// Whether operators also promote over a leader that is alive (on by default;
    /// `WALSHIP_SIM_LIVE_PROMOTIONS=0` turns it off for a run of the seeds test).
    pub live_promotions: bool,
    /// Whether two nodes may lose each other (each keeping the third and the
    /// coordinator), and a node the coordinator (keeping its peers). On by default.
    pub partitions: bool,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            fault_ms: 1500,
            settle_ms: 3000,
            live_promotions: true,
            partitions: true,
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Commits acknowledged at `Local`.
    pub acked_local: u64,
    /// Commits acknowledged at `RemoteFlush` or `RemoteApply`.
    pub acked_remote: u64,
    /// Commits acknowledged at `RemoteWrite`.
    pub acked_remote_write: u64,
    /// Appends at `Async` (acknowledged at once; nothing is checked of them).
    pub acked_async: u64,
    /// Commits acknowledged at `RemoteApply` (among `acked_remote`).
    pub acked_remote_apply: u64,
    /// Read-your-writes waits on followers that returned (each checked).
    pub ryw_reads: u64,
    /// Crashes, power losses, isolations and dropped connections injected.
    pub faults: u64,
    /// Power losses among them.
    pub power_losses: u64,
    /// Operator promotions among them.
    pub promotions: u64,
    /// Elections won.
    pub elections: u64,
    /// Truncations of divergent tails.
    pub truncations: u64,
    /// Leaders that yielded: not yet confirmed, they met a follower holding flushed
    /// records they lacked, and undid their epoch.
    pub yields: u64,
}

/// A failed seed: what broke, and the run up to it.
#[derive(Debug)]
pub struct Failure {
    /// The broken invariant.
    pub what: String,
    /// The steps that led there.
    pub trace: Vec<String>,
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    lsn: Lsn,
    seq: u64,
    level: Durability,
    /// When it was appended, ms.
    at: u64,
    epoch: Epoch,
}

#[derive(Debug, Clone, Copy)]
struct Acked {
    lsn: Lsn,
    seq: u64,
    node: usize,
    epoch: Epoch,
}

struct LeaderConn {
    link: u64,
    follower: usize,
    session: LeaderSession,
    reader: Option<walship_engine::Reader>,
    id: Option<u64>,
    /// Sent everything there was once: counts for the quorum.
    streaming: bool,
}

struct Leading {
    epoch: Epoch,
    /// Confirmed by a quorum, the epoch begun and the log unsealed (as the `Node`'s
    /// leader with `write_after_confirmation`): only then do writers write.
    writable: bool,
    /// When (and why) it first refused a follower holding records it lacks, while
    /// unconfirmed: it yields if no quorum confirms it within `CONFIRM_MS`.
    ahead_since: Option<(u64, String)>,
    registry: Registry,
    slot_writer: SlotWriter,
    conns: Vec<LeaderConn>,
    next_maintain: u64,
}

struct Following {
    leader: LeaderInfo,
    conn: Option<(u64, FollowerSession)>,
    retry_at: u64,
    /// Welcomed by this leader at least once (any divergent tail is cut then): only
    /// from here does a read-your-writes wait trust the applied position.
    welcomed: bool,
}

enum Role {
    Idle,
    Leading(Box<Leading>),
    Following(Box<Following>),
}

struct Node {
    id: String,
    addr: SocketAddr,
    disk: SimDisk,
    log: Option<Arc<Log>>,
    up_at: u64,
    decider: RoleDecider,
    seen: Epoch,
    role: Role,
    /// When a leader last renewed its claim.
    renewed: u64,
    pending: Vec<Pending>,
    /// `(lsn, seq)` acknowledged at `Local` here and not cut by a truncation here since.
    local: Vec<(Lsn, u64)>,
    /// The embedder's state: the records applied, by LSN, in LSN order (a follower applies
    /// what it flushed; a leader's own writes count as applied). Rebuilt from the log
    /// after a restart; cut by a truncation.
    applied: BTreeMap<Lsn, u64>,
    /// Where the state ends.
    applied_to: Lsn,
    /// Read-your-writes waits here: `(token, its epoch, seq, give up at ms)`.
    ryw: Vec<(Lsn, Epoch, u64, u64)>,
    /// When it last crashed or lost power, ms (what it wrote to its OS, or applied in
    /// memory, may be gone since).
    went_down_at: Option<u64>,
    /// The highest flushed position this node, as a follower, reported to a leader (and
    /// not cut by a truncation since): it must survive a crash or power loss.
    reported_flushed: Lsn,
    /// The highest committed LSN this node learned, as `Node::committed` computes it (a
    /// leader's `remote_flushed`, or what a leader's frames said, never past its own
    /// flushed): an embedder may snapshot that far, so no truncation of this node's log
    /// may go below it. Kept across restarts, as a snapshot keeps it.
    committed: Lsn,
    /// The highest committed LSN a leader's session reported to it (`Committed` events).
    learned: Lsn,
    /// While down: the epoch its log was in and how far it was flushed when it went
    /// down (what its disk still holds: checked when it comes back).
    down_with: Option<(EpochHistory, Lsn)>,
}

struct Link {
    follower: usize,
    leader: usize,
    to_leader: VecDeque<(u64, Bytes)>,
    to_follower: VecDeque<(u64, Bytes)>,
}

/// The world of one seed.
pub struct World {
    rng: Rng,
    base: Instant,
    t: u64,
    nodes: Vec<Node>,
    coord: Coordinator,
    links: BTreeMap<u64, Link>,
    next_link: u64,
    /// Nodes cut off from everything until the given time.
    isolated: BTreeMap<usize, u64>,
    /// Pairs of nodes that cannot reach each other until the given time (both reach the
    /// coordinator and the third node).
    cut: BTreeMap<(usize, usize), u64>,
    /// Nodes that cannot reach the coordinator until the given time (they reach their
    /// peers).
    coord_cut: BTreeMap<usize, u64>,
    partitions: bool,
    seq: u64,
    acked: Vec<Acked>,
    epoch_leaders: BTreeMap<Epoch, usize>,
    /// Epochs an operator granted over a live leader: their leader may lack what that
    /// leader acknowledges until a quorum confirms it, so the check waits for that.
    live_takeovers: std::collections::BTreeSet<Epoch>,
    report: Report,
    trace: Vec<String>,
    verbose: bool,
    live_promotions: bool,
}

/// The payload of record `seq`.
fn payload(seq: u64) -> Vec<u8> {
    let len = 16 + (seq.wrapping_mul(2_654_435_761) % 1500) as usize;
    let mut v = format!("rec {seq:010} ").into_bytes();
    v.resize(len, b'a' + (seq % 26) as u8);
    v
}

fn options(fs: Arc<dyn Storage>) -> Options {
    Options {
        segment_capacity: CAP,
        recycle_pool: 1,
        // Flushes happen when a step asks for them, never on a timer.
        async_flush_interval: Duration::from_secs(3600),
        async_flush_after_bytes: u64::MAX / 2,
        storage: fs,
        // No engine thread: everything the log does happens inside a step of this world.
        drive: Drive::Manual,
        ..Options::default()
    }
}

fn progress(log: &Log, applied: Lsn) -> Progress {
    let w = log.watermarks();
    Progress {
        written: w.written,
        flushed: w.flushed,
        applied: applied.min(w.flushed),
    }
}

/// The seq a payload was made from.
fn seq_of(data: &[u8]) -> Option<u64> {
    std::str::from_utf8(data.get(4..14)?).ok()?.parse().ok()
}

/// Runs the log's writer and preparer until everything appended is written.
fn settle(log: &Log) -> Result<(), String> {
    log.step().map_err(|e| format!("log step: {e}"))?;
    let w = log.watermarks();
    if w.written < w.end {
        return Err(format!("a step left appended records unwritten: {w:?}"));
    }
    Ok(())
}

/// Flushes everything appended: a `Local` commit of the end, stepped to completion.
fn flush(log: &Log) -> Result<(), String> {
    let mut commit = log.commit(log.end_lsn(), Durability::Local);
    if commit.poll_now().is_none() {
        log.step().map_err(|e| format!("log step: {e}"))?;
    }
    match commit.poll_now() {
        Some(r) => r.map_err(|e| format!("flush: {e}")),
        None => Err("a step did not complete the flush it was asked for".into()),
    }
}

fn log_epoch(log: &Log) -> Epoch {
    log.epoch_history()
        .current()
        .map_or(Epoch::ZERO, |(e, _)| e)
        .max(log.epoch())
}

impl World {
    /// A world for `seed`.
    pub fn new(seed: u64) -> World {
        let mut rng = Rng::new(seed);
        let nodes = (0..3)
            .map(|i| Node {
                id: format!("n{}", i + 1),
                addr: SocketAddr::from(([127, 0, 0, 1], 7000 + i as u16)),
                disk: SimDisk::new(rng.next_u64()),
                log: None,
                up_at: 0,
                decider: RoleDecider::new(Duration::from_millis(60), 2),
                seen: Epoch::ZERO,
                role: Role::Idle,
                renewed: 0,
                pending: Vec::new(),
                local: Vec::new(),
                applied: BTreeMap::new(),
                applied_to: Lsn::ZERO,
                ryw: Vec::new(),
                went_down_at: None,
                reported_flushed: Lsn::ZERO,
                committed: Lsn::ZERO,
                learned: Lsn::ZERO,
                down_with: None,
            })
            .collect();
        World {
            rng,
            base: Instant::now(),
            t: 0,
            nodes,
            coord: Coordinator::default(),
            links: BTreeMap::new(),
            next_link: 1,
            isolated: BTreeMap::new(),
            cut: BTreeMap::new(),
            coord_cut: BTreeMap::new(),
            partitions: true,
            seq: 0,
            acked: Vec::new(),
            epoch_leaders: BTreeMap::new(),
            live_takeovers: std::collections::BTreeSet::new(),
            report: Report::default(),
            trace: Vec::new(),
            verbose: std::env::var_os("WALSHIP_SIM_VERBOSE").is_some(),
            live_promotions: true,
        }
    }

    fn now(&self) -> Instant {
        self.base + Duration::from_millis(self.t)
    }

    fn say(&mut self, s: String) {
        let line = format!("{:>6} ms  {s}", self.t);
        if self.verbose {
            eprintln!("{line}");
        }
        self.trace.push(line);
    }

    fn fail(&self, what: impl Into<String>) -> Failure {
        Failure {
            what: what.into(),
            trace: self.trace.clone(),
        }
    }

    fn reachable(&self, a: usize, b: usize) -> bool {
        !self.isolated.contains_key(&a)
            && !self.isolated.contains_key(&b)
            && !self.cut.contains_key(&(a.min(b), a.max(b)))
    }

    fn up(&self, n: usize) -> bool {
        self.nodes[n].log.is_some()
    }

    /// Runs the seed to the end.
    ///
    /// # Errors
    /// The first invariant that broke.
    pub fn run(mut self, cfg: Config) -> Result<Report, Failure> {
        self.live_promotions = cfg.live_promotions;
        self.partitions = cfg.partitions;
        for n in 0..self.nodes.len() {
            self.boot(n).map_err(|e| self.fail(e))?;
        }
        while self.t < cfg.fault_ms {
            self.t += 1;
            self.faults().map_err(|e| self.fail(e))?;
            self.step().map_err(|e| self.fail(e))?;
        }
        self.say("faults stop; every node up and connected".into());
        self.isolated.clear();
        self.cut.clear();
        self.coord_cut.clear();
        for n in 0..self.nodes.len() {
            if !self.up(n) {
                self.boot(n).map_err(|e| self.fail(e))?;
            }
        }
        let faults_stopped = self.t;
        let committed_before = self.report.acked_remote;
        while self.t < faults_stopped + cfg.settle_ms {
            self.t += 1;
            self.step().map_err(|e| self.fail(e))?;
            if self.report.acked_remote > committed_before + 20 && self.converged() {
                break;
            }
        }
        if self.report.acked_remote <= committed_before {
            return Err(self.fail(format!(
                "no RemoteFlush commit acknowledged within {} ms of the faults stopping ({} before)",
                cfg.settle_ms, committed_before
            )));
        }
        // Let the followers catch up, then compare.
        let deadline = self.t + cfg.settle_ms;
        while !self.converged() && self.t < deadline {
            self.t += 1;
            self.step().map_err(|e| self.fail(e))?;
        }
        self.check_end().map_err(|e| self.fail(e))?;
        self.report.elections = self.coord.elections;
        Ok(self.report)
    }

    /// The leader and every follower at the same flushed end, no commit pending.
    fn converged(&self) -> bool {
        let Some(l) = self.leader() else {
            return false;
        };
        let end = self.nodes[l].log.as_ref().map(|g| g.end_lsn());
        self.nodes.iter().all(|n| {
            n.log
                .as_ref()
                .is_some_and(|g| Some(g.end_lsn()) == end && g.watermarks().flushed >= g.end_lsn())
        }) && self.nodes.iter().all(|n| n.pending.is_empty())
    }

    fn leader(&self) -> Option<usize> {
        (0..self.nodes.len()).find(|&n| matches!(self.nodes[n].role, Role::Leading(_)))
    }

    fn boot(&mut self, n: usize) -> Result<(), String> {
        let fs: Arc<dyn Storage> = self.nodes[n].disk.boot();
        let log = Log::open(DIR, options(Arc::clone(&fs)))
            .map_err(|e| format!("{}: open after restart: {e}", self.nodes[n].id))?;
        let seen = walship_engine::read_small_file_in(&*fs, &Path::new(DIR).join(SEEN_FILE), 32)
            .ok()
            .and_then(|b| String::from_utf8(b).ok()?.trim().parse().ok())
            .map_or(Epoch::ZERO, Epoch::new);
        // Local acknowledgements survive a crash or power loss of their node.
        let have = Self::records(&log)?;
        for &(lsn, seq) in &self.nodes[n].local {
            if have.get(&lsn).map(|d| &d[..]) != Some(&payload(seq)[..]) {
                return Err(format!(
                    "{} lost record {seq} at {lsn}, acknowledged at Local on it, across its restart",
                    self.nodes[n].id
                ));
            }
        }
        if log.end_lsn() < self.nodes[n].reported_flushed {
            return Err(format!(
                "{} reported {} flushed to its leader, but after its restart the log ends at {}",
                self.nodes[n].id,
                self.nodes[n].reported_flushed,
                log.end_lsn()
            ));
        }
        log.seal("not leading");
        log.fence_remote("not leading");
        let node = &mut self.nodes[n];
        // The embedder's state did not survive the process: it is rebuilt from the log.
        node.applied.clear();
        node.applied_to = log.start_lsn();
        node.ryw.clear();
        node.log = Some(Arc::new(log));
        node.down_with = None;
        node.seen = seen;
        node.role = Role::Idle;
        node.decider = RoleDecider::new(Duration::from_millis(60), 2);
        let (id, end) = (node.id.clone(), node.log.as_ref().map(|l| l.end_lsn()));
        self.say(format!(
            "{id} starts: log ends at {end:?}, seen epoch {seen}"
        ));
        Ok(())
    }

    fn faults(&mut self) -> Result<(), String> {
        self.isolated.retain(|_, until| *until > self.t);
        let t = self.t;
        self.cut.retain(|_, until| *until > t);
        self.coord_cut.retain(|_, until| *until > t);
        let down = (0..self.nodes.len()).filter(|&n| !self.up(n)).count();
        for n in 0..self.nodes.len() {
            if !self.up(n) && self.nodes[n].up_at <= self.t {
                self.boot(n)?;
            }
        }
        // At most one node down or cut off at a time: a majority always remains.
        let impaired = down + self.isolated.len() + self.cut.len() + self.coord_cut.len();
        match self.rng.below(1000) {
            0..=2 if impaired == 0 => {
                let n = self.rng.below(3) as usize;
                let power = self.rng.one_in(2);
                self.crash(n, power);
                self.report.faults += 1;
            }
            3..=4 if impaired == 0 => {
                let n = self.rng.below(3) as usize;
                let until = self.t + self.rng.between(50, 400);
                self.say(format!("{} isolated until {until} ms", self.nodes[n].id));
                self.isolated.insert(n, until);
                self.cut_links(n);
                self.report.faults += 1;
            }
            8..=9 if down == 1 && impaired == 1 => self.promote(false),
            11..=12 if self.partitions && impaired == 0 => {
                // Two nodes lose each other; each still reaches the third and the
                // coordinator.
                let a = self.rng.below(3) as usize;
                let b = (a + 1 + self.rng.below(2) as usize) % 3;
                let until = self.t + self.rng.between(50, 400);
                let (x, y) = (self.nodes[a].id.clone(), self.nodes[b].id.clone());
                self.say(format!(
                    "{x} and {y} cannot reach each other until {until} ms"
                ));
                self.cut.insert((a.min(b), a.max(b)), until);
                self.cut_pair(a, b);
                self.report.faults += 1;
            }
            13 if self.partitions && impaired == 0 => {
                // A node loses the coordinator but keeps its peers.
                let n = self.rng.below(3) as usize;
                let until = self.t + self.rng.between(50, 400);
                self.say(format!(
                    "{} cannot reach the coordinator until {until} ms",
                    self.nodes[n].id
                ));
                self.coord_cut.insert(n, until);
                self.report.faults += 1;
            }
            10 | 14 | 15 if self.live_promotions && impaired == 0 => self.promote(true),
            5..=7 => {
                if let Some(&id) = self.links.keys().nth(self.rng.below(4) as usize) {
                    self.say(format!("connection {id} drops"));
                    self.close_link(id);
                    self.report.faults += 1;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The operator's failover, as the Jepsen test does it: the leader's node is down, so
    /// the most caught-up live member is promoted at once (the coordinator's `takeover`),
    /// without waiting for the dead leader's lease to expire.
    ///
    /// With `live`, the leader is promoted over while it is alive: the promoted node then
    /// leads unconfirmed until a quorum turns to its epoch, and yields if a follower shows
    /// it records the live leader may have acknowledged meanwhile.
    fn promote(&mut self, alive: bool) {
        let Some(named) = self.coord.peek_leader(self.t) else {
            return;
        };
        let Some(old) = self.nodes.iter().position(|x| x.id == named.node_id) else {
            return;
        };
        if self.up(old) != alive {
            return;
        }
        // Over a dead leader, the positions are final: the operator reads them. Over a
        // live one, it sees what the members last published, as an operator would.
        let live: Vec<MemberInfo> = if alive {
            self.coord.members(self.t)
        } else {
            (0..self.nodes.len())
                .filter_map(|n| self.member(n))
                .collect()
        };
        let Some(best) = live
            .iter()
            .find(|m| walship_transport::coordinator::best_placed(m, &live))
            .cloned()
        else {
            return;
        };
        if best.node_id == named.node_id {
            // The leader is the best placed: nothing to promote.
            return;
        }
        if self
            .nodes
            .iter()
            .position(|x| x.id == best.node_id)
            .is_none_or(|b| !self.up(b))
        {
            return;
        }
        if let Some(e) = self.coord.takeover(self.t, &best, &best.addr) {
            if alive {
                self.live_takeovers.insert(e);
            }
            self.report.faults += 1;
            self.report.promotions += 1;
            self.say(format!(
                "operator promotes {} (epoch {e}) over {} ({})",
                best.node_id,
                named.node_id,
                if alive { "alive" } else { "down" }
            ));
        }
    }

    fn crash(&mut self, n: usize, power: bool) {
        let what = if power { "power loss" } else { "crash" };
        let node = &mut self.nodes[n];
        if power {
            let r = node.disk.power_loss();
            self.report.power_losses += 1;
            let id = node.id.clone();
            self.say(format!(
                "{id}: {what} ({} unsynced sectors, {} kept, {} names undone)",
                r.unsynced_sectors, r.kept_sectors, r.undone_names
            ));
        } else {
            node.disk.crash();
            let id = node.id.clone();
            self.say(format!("{id}: {what}"));
        }
        let node = &mut self.nodes[n];
        node.down_with = node
            .log
            .as_ref()
            .map(|log| (log.epoch_history(), log.watermarks().flushed));
        node.log = None;
        node.role = Role::Idle;
        node.pending.clear();
        node.ryw.clear();
        node.went_down_at = Some(self.t);
        node.up_at = self.t + self.rng.between(30, 300);
        // A dead process resigns nothing: its claim lasts until its lease expires.
        self.cut_links(n);
    }

    /// Closes the connections between `a` and `b`.
    fn cut_pair(&mut self, a: usize, b: usize) {
        let ids: Vec<u64> = self
            .links
            .iter()
            .filter(|(_, l)| {
                (l.follower == a && l.leader == b) || (l.follower == b && l.leader == a)
            })
            .map(|(&id, _)| id)
            .collect();
        for id in ids {
            self.close_link(id);
        }
    }

    fn cut_links(&mut self, n: usize) {
        let ids: Vec<u64> = self
            .links
            .iter()
            .filter(|(_, l)| l.follower == n || l.leader == n)
            .map(|(&id, _)| id)
            .collect();
        for id in ids {
            self.close_link(id);
        }
    }

    fn close_link(&mut self, id: u64) {
        let Some(link) = self.links.remove(&id) else {
            return;
        };
        if let Role::Following(f) = &mut self.nodes[link.follower].role {
            if f.conn.as_ref().is_some_and(|(l, _)| *l == id) {
                f.conn = None;
                f.retry_at = self.t + 20;
                // The next session may cut a tail: until it is welcomed, nothing applied
                // is trusted for reads.
                f.welcomed = false;
            }
        }
        let follower_id = self.nodes[link.follower].id.clone();
        if let Role::Leading(l) = &mut self.nodes[link.leader].role {
            if let Some(i) = l.conns.iter().position(|c| c.link == id) {
                let c = l.conns.remove(i);
                if let Some(sid) = c.id {
                    l.registry
                        .ended(&follower_id, sid, Some("connection lost".into()));
                }
            }
        }
    }

    fn member(&self, n: usize) -> Option<MemberInfo> {
        let node = &self.nodes[n];
        let log = node.log.as_ref()?;
        Some(MemberInfo {
            node_id: node.id.clone(),
            addr: node.addr.to_string(),
            epoch: node.seen.max(log_epoch(log)),
            log_epoch: log_epoch(log),
            flushed: log.watermarks().flushed,
        })
    }

    fn step(&mut self) -> Result<(), String> {
        for n in 0..self.nodes.len() {
            if self.up(n) && self.t % CHECK_MS == n as u64 {
                self.check_role(n)?;
            }
        }
        self.deliver()?;
        for n in 0..self.nodes.len() {
            if !self.up(n) {
                continue;
            }
            match self.nodes[n].role {
                Role::Leading(_) => self.drive_leader(n)?,
                Role::Following(_) => self.drive_follower(n)?,
                Role::Idle => {}
            }
        }
        self.clients()?;
        self.apply_all()?;
        self.acks()?;
        self.reads()?;
        Ok(())
    }

    /// Each node's embedder applies what it may, in LSN order: a follower what it has
    /// flushed (a few records a step, so it lags), a leader its own writes at once.
    fn apply_all(&mut self) -> Result<(), String> {
        for n in 0..self.nodes.len() {
            let Some(log) = self.nodes[n].log.clone() else {
                continue;
            };
            // A follower applies in bursts (so it lags), a leader at once; each burst
            // reads the log once.
            let (limit, budget) = match self.nodes[n].role {
                Role::Leading(_) => (log.end_lsn(), usize::MAX),
                Role::Following(_) if self.rng.one_in(8) => (log.watermarks().flushed, usize::MAX),
                _ => continue,
            };
            let from = self.nodes[n].applied_to;
            if from >= limit || budget == 0 {
                continue;
            }
            let mut r = log
                .record_reader(from.max(log.start_lsn()))
                .map_err(|e| format!("{}: apply reader at {from}: {e}", self.nodes[n].id))?;
            let mut done = 0;
            while done < budget {
                let Some(rec) = r.try_next().map_err(|e| format!("apply read: {e}"))? else {
                    break;
                };
                if rec.lsn > limit {
                    break;
                }
                let node = &mut self.nodes[n];
                // In LSN order, and never twice without a truncation in between.
                if let Some((&last, _)) = node.applied.last_key_value() {
                    if rec.lsn <= last {
                        return Err(format!(
                            "{} applied the record at {} after the one at {last}: out of order, or twice",
                            node.id, rec.lsn
                        ));
                    }
                }
                let seq = seq_of(&rec.data).ok_or_else(|| {
                    format!(
                        "{}: an applied record at {} is no payload",
                        node.id, rec.lsn
                    )
                })?;
                node.applied.insert(rec.lsn, seq);
                node.applied_to = rec.lsn;
                done += 1;
            }
            if done > 0 && matches!(self.nodes[n].role, Role::Following(_)) {
                self.follower_progress(n)?;
            }
        }
        Ok(())
    }

    /// Read-your-writes: a wait for a token on a node returns once the node applied up to
    /// it, and then its state holds the acknowledged record there.
    fn reads(&mut self) -> Result<(), String> {
        let t = self.t;
        for n in 0..self.nodes.len() {
            if self.nodes[n].ryw.is_empty() {
                continue;
            }
            let node = &mut self.nodes[n];
            let mut done = 0;
            let mut error = None;
            // As `Node::wait_for_applied`: a leader answers once the record is in its log
            // (its own writes are applied), a follower once it applied it; a node doing
            // neither does not answer. A follower's applied position counts only once its
            // leader welcomed it (before, it may be a divergent tail about to be cut).
            let readable = match &node.role {
                Role::Leading(_) => node.log.as_ref().map_or(Lsn::ZERO, |l| l.end_lsn()),
                Role::Following(f) if f.welcomed => node.applied_to,
                _ => Lsn::ZERO,
            };
            // The token carries its epoch: a node answers only once its log holds, at
            // the token, a record of that epoch (by log matching, the acknowledged one).
            // Without it a deposed leader, or a follower holding a divergent tail, answers
            // from records that are not the write (see sim/README.md, open items).
            let history = node.log.as_ref().map(|l| l.epoch_history());
            node.ryw.retain(|&(token, epoch, seq, until)| {
                let same = history
                    .as_ref()
                    .is_some_and(|h| h.epoch_at(token) == Some(epoch));
                if readable >= token && same {
                    done += 1;
                    if node.applied.get(&token) != Some(&seq) {
                        error.get_or_insert(format!(
                            "a read-your-writes wait on {} for token {token} (record {seq}) returned, but its state holds {:?} there",
                            node.id,
                            node.applied.get(&token)
                        ));
                    }
                    false
                } else {
                    // A wait may time out; it never returns early.
                    until > t
                }
            });
            self.report.ryw_reads += done;
            if let Some(e) = error {
                return Err(e);
            }
        }
        Ok(())
    }

    fn check_role(&mut self, n: usize) -> Result<(), String> {
        let now_ms = self.t;
        if self.isolated.contains_key(&n) || self.coord_cut.contains_key(&n) {
            // No coordinator: a leader that cannot renew fences itself before its lease
            // could expire and another be elected.
            if let Role::Leading(_) = self.nodes[n].role {
                if now_ms.saturating_sub(self.nodes[n].renewed) >= LEASE_TTL_MS / 2 {
                    self.step_down(n, "cannot renew the leader lease")?;
                }
            }
            return Ok(());
        }
        let Some(me) = self.member(n) else {
            return Ok(());
        };
        self.coord.publish(now_ms, me.clone());
        let named = self.coord.leader(now_ms, &self.nodes[n].id);
        let doing = match &self.nodes[n].role {
            Role::Idle => Doing::Idle,
            Role::Leading(_) => Doing::Leading(None),
            Role::Following(f) => Doing::Following(f.leader.clone()),
        };
        if matches!(doing, Doing::Leading(_))
            && named.as_ref().is_some_and(|l| l.node_id == me.node_id)
        {
            self.nodes[n].renewed = now_ms;
        }
        let now = self.now();
        let decision = self.nodes[n]
            .decider
            .decide(now, &doing, &me, named.as_ref());
        let decision = match decision {
            Decision::CountMembers => {
                let live = self.coord.members(now_ms).len();
                match self.nodes[n].decider.members(live) {
                    Ok(d) => d,
                    Err(_) => Decision::Stay,
                }
            }
            d => d,
        };
        match decision {
            Decision::Stay | Decision::CountMembers => {}
            Decision::StepDown(why) => self.step_down(n, &why)?,
            Decision::Follow(l) => self.follow(n, l)?,
            Decision::Lead(e) => self.lead(n, e)?,
            Decision::Campaign | Decision::RenewClaim => {
                if matches!(decision, Decision::RenewClaim) {
                    self.coord.resign(&me.node_id);
                }
                if let Some(e) = self.coord.campaign(now_ms, &me, &me.addr) {
                    self.lead(n, e)?;
                }
            }
        }
        Ok(())
    }

    fn store_seen(&mut self, n: usize, e: Epoch) -> Result<(), String> {
        let log = self.nodes[n].log.clone().ok_or("down")?;
        walship_engine::atomic_write_in(
            &**log.storage(),
            log.dir(),
            SEEN_FILE,
            e.get().to_string().as_bytes(),
        )
        .map_err(|e| format!("store seen epoch: {e}"))?;
        self.nodes[n].seen = self.nodes[n].seen.max(e);
        Ok(())
    }

    fn lead(&mut self, n: usize, epoch: Epoch) -> Result<(), String> {
        if let Some(&other) = self.epoch_leaders.get(&epoch) {
            if other != n {
                return Err(format!(
                    "two leaders in epoch {epoch}: {} and {}",
                    self.nodes[other].id, self.nodes[n].id
                ));
            }
        }
        self.epoch_leaders.insert(epoch, n);
        self.leave_role(n, "taking a new epoch");
        self.store_seen(n, epoch)?;
        let log = self.nodes[n].log.clone().ok_or("down")?;
        // Every commit acknowledged at RemoteFlush so far is here: a majority had it and
        // the best-placed member won. Over a live leader, that leader may still
        // acknowledge until a quorum turns to this epoch: checked at the confirmation.
        if !self.live_takeovers.contains(&epoch) {
            self.check_has_acked(n)?;
        }
        // As the Node's leader: the epoch begins, and the log takes appends, only once a
        // quorum confirmed it.
        log.seal("leading, not yet confirmed");
        log.unfence_remote();
        let slots =
            Slots::load(log.storage(), log.dir(), CAP).map_err(|e| format!("slots: {e}"))?;
        let registry = Registry::new(
            SyncPolicy::Any {
                k: 1,
                of: vec!["*".into()],
            },
            slots,
            u64::MAX / 4,
        )
        .map_err(|e| format!("registry: {e}"))?;
        self.nodes[n].role = Role::Leading(Box::new(Leading {
            epoch,
            writable: false,
            ahead_since: None,
            registry,
            slot_writer: SlotWriter::default(),
            conns: Vec::new(),
            next_maintain: self.t,
        }));
        self.nodes[n].renewed = self.t;
        self.nodes[n].decider.leads();
        let id = self.nodes[n].id.clone();
        self.say(format!("{id} leads epoch {epoch} from {}", log.end_lsn()));
        Ok(())
    }

    /// Leaves whatever role `n` has: sealed and fenced, no session, nothing pending.
    fn leave_role(&mut self, n: usize, why: &str) {
        if let Some(log) = &self.nodes[n].log {
            log.seal(why);
            log.fence_remote(why);
        }
        self.nodes[n].pending.clear();
        self.nodes[n].role = Role::Idle;
        self.cut_links(n);
    }

    /// Stops leading (or whatever it did), giving up its claim if it can reach the
    /// coordinator.
    fn step_down(&mut self, n: usize, why: &str) -> Result<(), String> {
        if let Role::Leading(_) = self.nodes[n].role {
            let id = self.nodes[n].id.clone();
            self.say(format!("{id} steps down: {why}"));
            if !self.isolated.contains_key(&n) && !self.coord_cut.contains_key(&n) {
                self.coord.resign(&id);
            }
        }
        self.leave_role(n, why);
        Ok(())
    }

    fn follow(&mut self, n: usize, leader: LeaderInfo) -> Result<(), String> {
        self.step_down(n, "following")?;
        let id = self.nodes[n].id.clone();
        self.say(format!(
            "{id} follows {} (epoch {})",
            leader.node_id, leader.epoch
        ));
        self.nodes[n].role = Role::Following(Box::new(Following {
            leader,
            conn: None,
            retry_at: self.t,
            welcomed: false,
        }));
        Ok(())
    }

    fn leader_cfg(&self, n: usize, epoch: Epoch) -> LeaderConfig {
        LeaderConfig {
            cluster_id: CLUSTER.into(),
            node_id: self.nodes[n].id.clone(),
            segment_capacity: CAP,
            epoch,
            max_frame: 1 << 20,
            max_unacked_bytes: 128 * 1024,
            heartbeat_interval: Duration::from_millis(50),
            idle_timeout: Duration::from_millis(400),
        }
    }

    fn follower_cfg(&self, n: usize) -> FollowerConfig {
        FollowerConfig {
            cluster_id: CLUSTER.into(),
            node_id: self.nodes[n].id.clone(),
            segment_capacity: CAP,
            max_frame: 1 << 20,
            status_interval: Duration::from_millis(50),
            idle_timeout: Duration::from_millis(400),
        }
    }

    /// A follower connects to the node at its leader's address, if that node is up,
    /// reachable and leading (whatever epoch it leads).
    fn connect(&mut self, n: usize) -> Result<(), String> {
        let Role::Following(f) = &self.nodes[n].role else {
            return Ok(());
        };
        if f.conn.is_some() || f.retry_at > self.t {
            return Ok(());
        }
        let target = f.leader.node_id.clone();
        let Some(l) = self.nodes.iter().position(|x| x.id == target) else {
            return Ok(());
        };
        let leading = match &self.nodes[l].role {
            Role::Leading(s) => Some(s.epoch),
            _ => None,
        };
        let (Some(epoch), true) = (leading, self.reachable(n, l)) else {
            if let Role::Following(f) = &mut self.nodes[n].role {
                f.retry_at = self.t + 20;
            }
            return Ok(());
        };
        let log = self.nodes[n].log.clone().ok_or("down")?;
        let now = self.now();
        let session = FollowerSession::with_seen_epoch(
            self.follower_cfg(n),
            log.epoch_history().entries(),
            self.nodes[n].seen,
            log.end_lsn(),
            progress(&log, self.nodes[n].applied_to),
            now,
        );
        let leader_session = LeaderSession::new(self.leader_cfg(l, epoch), now)
            .expect_peer(self.nodes[n].id.clone());
        let id = self.next_link;
        self.next_link += 1;
        self.links.insert(
            id,
            Link {
                follower: n,
                leader: l,
                to_leader: VecDeque::new(),
                to_follower: VecDeque::new(),
            },
        );
        let session_epoch = session.epoch();
        if let Role::Following(f) = &mut self.nodes[n].role {
            f.conn = Some((id, session));
        }
        // Rarely, a peer that breaks the protocol answers instead: a Welcome of an epoch
        // older than the follower has seen, telling it to cut its whole log. The
        // follower must refuse it (the `welcome-epoch-unchecked` mutation accepts it).
        if session_epoch.get() >= 2 && self.rng.one_in(150) {
            let lie = walship_transport::wire::Frame::Welcome(walship_transport::wire::Welcome {
                epoch: Epoch::new(session_epoch.get() - 1),
                truncate_to: Some(log.start_lsn()),
                start_lsn: log.start_lsn(),
                leader_id: self.nodes[l].id.clone(),
            });
            let mut b = BytesMut::new();
            lie.encode(&mut b)
                .map_err(|e| format!("encode a forged Welcome: {e}"))?;
            self.send(id, false, b.freeze());
            let (a, liar) = (self.nodes[n].id.clone(), self.nodes[l].id.clone());
            self.say(format!(
                "{a} connects to {liar} (connection {id}), which answers with a Welcome of epoch {} (older than {session_epoch}) telling it to cut its log",
                session_epoch.get() - 1
            ));
            self.report.faults += 1;
            return Ok(());
        }
        if let Role::Leading(s) = &mut self.nodes[l].role {
            s.conns.push(LeaderConn {
                link: id,
                follower: n,
                session: leader_session,
                reader: None,
                id: None,
                streaming: false,
            });
        }
        let (a, b) = (self.nodes[n].id.clone(), self.nodes[l].id.clone());
        self.say(format!("{a} connects to {b} (connection {id})"));
        Ok(())
    }

    fn send(&mut self, link: u64, to_leader: bool, bytes: Bytes) {
        let delay = self.rng.between(0, 3);
        let at = self.t + delay;
        if let Some(l) = self.links.get_mut(&link) {
            let q = if to_leader {
                &mut l.to_leader
            } else {
                &mut l.to_follower
            };
            q.push_back((at, bytes));
        }
    }

    /// The next chunk on connection `id` due by now, toward the leader or the follower,
    /// with the node it goes to.
    fn pop_due(&mut self, id: u64, to_leader: bool) -> Option<(usize, Bytes)> {
        let t = self.t;
        let link = self.links.get_mut(&id)?;
        let (q, node) = if to_leader {
            (&mut link.to_leader, link.leader)
        } else {
            (&mut link.to_follower, link.follower)
        };
        if q.front().is_none_or(|(at, _)| *at > t) {
            return None;
        }
        q.pop_front().map(|(_, b)| (node, b))
    }

    fn deliver(&mut self) -> Result<(), String> {
        let ids: Vec<u64> = self.links.keys().copied().collect();
        for id in ids {
            while let Some((l, bytes)) = self.pop_due(id, true) {
                self.leader_bytes(l, id, &bytes)?;
            }
            while let Some((f, bytes)) = self.pop_due(id, false) {
                let now = self.now();
                let result = match &mut self.nodes[f].role {
                    Role::Following(s) => match &mut s.conn {
                        Some((l, session)) if *l == id => session.handle_bytes(now, &bytes),
                        _ => Ok(()),
                    },
                    _ => Ok(()),
                };
                if let Err(e) = result {
                    self.follower_session_ended(f, id, &e.to_string())?;
                }
            }
        }
        Ok(())
    }

    fn leader_bytes(&mut self, l: usize, link: u64, bytes: &[u8]) -> Result<(), String> {
        let now = self.now();
        let Some(log) = self.nodes[l].log.clone() else {
            return Ok(());
        };
        let Role::Leading(s) = &mut self.nodes[l].role else {
            return Ok(());
        };
        let view = LogView {
            start: log.start_lsn(),
            end: log.end_lsn(),
            history: log.epoch_history(),
            lost_slots: s.registry.lost_slots(),
            confirmed: s.registry.confirmed(),
        };
        let Some(c) = s.conns.iter_mut().find(|c| c.link == link) else {
            return Ok(());
        };
        if let Err(e) = c.session.handle_bytes(now, bytes, &view) {
            use walship_transport::session::SessionError;
            let newer = matches!(e, SessionError::NewerEpoch { .. });
            let ahead = matches!(e, SessionError::FollowerAhead { .. });
            self.flush_leader_events(l)?;
            let id = self.nodes[l].id.clone();
            self.say(format!("{id}: session on connection {link} ends: {e}"));
            if ahead {
                let t = self.t;
                if let Role::Leading(s) = &mut self.nodes[l].role {
                    s.ahead_since.get_or_insert((t, e.to_string()));
                }
                self.close_link(link);
            } else if newer {
                self.step_down(l, &e.to_string())?;
            } else {
                self.close_link(link);
            }
        }
        Ok(())
    }

    fn follower_session_ended(&mut self, f: usize, link: u64, why: &str) -> Result<(), String> {
        // A Reject queued by the session still goes out.
        self.drive_follower(f)?;
        let id = self.nodes[f].id.clone();
        self.say(format!("{id}: session on connection {link} ends: {why}"));
        self.close_link(link);
        Ok(())
    }

    /// Carries out the registry's effects on the leader's log.
    fn effects(&mut self, l: usize) -> Result<(), String> {
        let Some(log) = self.nodes[l].log.clone() else {
            return Ok(());
        };
        let Role::Leading(s) = &mut self.nodes[l].role else {
            return Ok(());
        };
        let mut confirmed = None;
        while let Some(effect) = s.registry.poll_effect() {
            match effect {
                Effect::RetentionFloor(floor) => log.set_retention_floor(floor),
                Effect::Quorum(q) => {
                    log.advance_remote_written(q.written);
                    log.advance_remote_flushed(q.flushed);
                    log.advance_remote_applied(q.applied);
                }
                Effect::Save(job) => job
                    .write(&s.slot_writer)
                    .map_err(|e| format!("slot save: {e}"))?,
                Effect::Confirmed => confirmed = Some(s.epoch),
            }
        }
        if let Some(epoch) = confirmed {
            let id = self.nodes[l].id.clone();
            self.say(format!("{id}: epoch {epoch} confirmed by a quorum"));
            // From here on no leader before it can acknowledge anything it lacks.
            self.check_has_acked(l)?;
            log.begin_epoch(epoch)
                .map_err(|e| format!("begin epoch: {e}"))?;
            flush(&log)?;
            log.unseal();
            if let Role::Leading(s) = &mut self.nodes[l].role {
                s.writable = true;
            }
        }
        Ok(())
    }

    /// A leader not yet confirmed met a follower with written records it lacks: it steps
    /// down, undoes its epoch (truncating where the epoch began forgets it), gives up its
    /// claim and stays out of elections for a while, as `Node` does.
    fn yield_epoch(&mut self, l: usize, why: &str) -> Result<(), String> {
        let Role::Leading(s) = &self.nodes[l].role else {
            return Ok(());
        };
        let epoch = s.epoch;
        self.step_down(l, why)?;
        self.report.yields += 1;
        let log = self.nodes[l].log.clone().ok_or("down")?;
        if let Some(start) = log.epoch_start(epoch) {
            self.check_cut_keeps_committed(l, start)?;
            log.truncate_suffix(start)
                .map_err(|e| format!("{}: undo epoch {epoch}: {e}", self.nodes[l].id))?;
            self.nodes[l].local.retain(|&(lsn, _)| lsn <= start);
            self.nodes[l].applied.retain(|&lsn, _| lsn <= start);
            let a = &mut self.nodes[l].applied_to;
            *a = (*a).min(start);
            let id = self.nodes[l].id.clone();
            self.say(format!("{id} undoes epoch {epoch} from {start}"));
        }
        let now = self.now();
        self.nodes[l].decider.stepped_down(now);
        Ok(())
    }

    /// Drains every leader session's events (transmits, accepts, progress).
    fn flush_leader_events(&mut self, l: usize) -> Result<(), String> {
        let now = self.now();
        let Some(log) = self.nodes[l].log.clone() else {
            return Ok(());
        };
        let mut out = Vec::new();
        let mut accepted = Vec::new();
        if let Role::Leading(s) = &mut self.nodes[l].role {
            for c in &mut s.conns {
                while let Some(ev) = c.session.poll_event() {
                    match ev {
                        LeaderEvent::Transmit(b) => out.push((c.link, b)),
                        LeaderEvent::Accepted {
                            follower,
                            start,
                            progress,
                        } => {
                            accepted.push(format!("streams to {follower} from {start}"));
                            let addr = SocketAddr::from(([127, 0, 0, 1], 9000 + c.follower as u16));
                            c.id = Some(s.registry.accept(&follower, addr, start, progress));
                            c.reader = Some(
                                log.reader(start)
                                    .map_err(|e| format!("leader reader at {start}: {e}"))?,
                            );
                        }
                        LeaderEvent::Progress { follower, progress } => {
                            if let Some(id) = c.id {
                                s.registry.progress(&follower, id, progress, now);
                            }
                        }
                        // Simulated followers never recycle past their leader's start.
                        LeaderEvent::SnapshotWanted { follower } => {
                            return Err(format!("{follower} asked for a snapshot, which the simulator does not model"));
                        }
                    }
                }
            }
        }
        for (link, b) in out {
            self.send(link, false, b);
        }
        let id = self.nodes[l].id.clone();
        for a in accepted {
            self.say(format!("{id} {a}"));
        }
        self.effects(l)?;
        self.check_beliefs(l)
    }

    fn drive_leader(&mut self, l: usize) -> Result<(), String> {
        self.flush_leader_events(l)?;
        self.note_committed(l);
        let overdue = match &self.nodes[l].role {
            Role::Leading(s) if !s.registry.confirmed() => s
                .ahead_since
                .as_ref()
                .filter(|(t, _)| t + CONFIRM_MS <= self.t)
                .map(|(_, why)| why.clone()),
            _ => None,
        };
        if let Some(why) = overdue {
            return self.yield_epoch(
                l,
                &format!("no quorum confirmed the epoch within {CONFIRM_MS} ms of refusing a follower ahead ({why})"),
            );
        }
        let now = self.now();
        let now_us = self.t * 1000;
        let Some(log) = self.nodes[l].log.clone() else {
            return Ok(());
        };
        let mut ended = Vec::new();
        let mut maintain = false;
        let follower_ids: Vec<String> = self.nodes.iter().map(|n| n.id.clone()).collect();
        if let Role::Leading(s) = &mut self.nodes[l].role {
            let committed = walship_transport::committed::committed_point(&log, s.epoch);
            for c in &mut s.conns {
                c.session.set_committed(committed);
                if c.session.poll_timeout().is_some_and(|t| t <= now) {
                    if let Err(e) = c.session.handle_timeout(now, log.end_lsn(), now_us) {
                        ended.push((c.link, e.to_string()));
                        continue;
                    }
                }
                if let (Some(r), Some((pos, room))) = (c.reader.as_mut(), c.session.send_window()) {
                    let mut data = BytesMut::new();
                    let mut end = pos;
                    let mut caught_up = false;
                    while (data.len() as u64) < room.min(32 * 1024) {
                        match r.try_next().map_err(|e| format!("leader read: {e}"))? {
                            Some(b) => {
                                data.extend_from_slice(b.bytes());
                                end = b.end();
                            }
                            None => {
                                caught_up = true;
                                break;
                            }
                        }
                    }
                    if caught_up && !c.streaming {
                        if let Some(id) = c.id {
                            c.streaming = true;
                            let node = follower_ids[c.follower].clone();
                            s.registry.caught_up(&node, id);
                        }
                    }
                    if !data.is_empty() {
                        let raw = data.len() as u32;
                        if let Err(e) =
                            c.session
                                .ship(now, pos, end, raw, Compression::None, data.freeze())
                        {
                            ended.push((c.link, e.to_string()));
                        }
                    }
                }
            }
            if s.next_maintain <= self.t {
                s.next_maintain = self.t + 100;
                maintain = true;
            }
        }
        if maintain {
            if let Role::Leading(s) = &mut self.nodes[l].role {
                s.registry.maintain(log.end_lsn());
            }
        }
        self.flush_leader_events(l)?;
        for (link, why) in ended {
            let id = self.nodes[l].id.clone();
            self.say(format!("{id}: session on connection {link} ends: {why}"));
            self.close_link(link);
        }
        Ok(())
    }

    fn drive_follower(&mut self, f: usize) -> Result<(), String> {
        self.connect(f)?;
        let now = self.now();
        let Some(log) = self.nodes[f].log.clone() else {
            return Ok(());
        };
        // A session that timed out ends here; its Reject, if any, still goes out.
        let timed_out = match &mut self.nodes[f].role {
            Role::Following(s) => match &mut s.conn {
                Some((link, session)) if session.poll_timeout().is_some_and(|t| t <= now) => {
                    session
                        .handle_timeout(now)
                        .err()
                        .map(|e| (*link, e.to_string()))
                }
                _ => None,
            },
            _ => None,
        };
        if let Some((link, why)) = timed_out {
            return self.follower_session_ended(f, link, &why);
        }
        self.note_committed(f);
        while let Some((link, ev)) = self.next_follower_event(f, now) {
            match ev {
                FollowerEvent::Transmit(b) => self.send(link, true, b),
                FollowerEvent::Truncate(to) => {
                    self.check_cut_keeps_acked(f, &log, to)?;
                    self.check_cut_keeps_committed(f, to)?;
                    log.truncate_suffix(to)
                        .map_err(|e| format!("{}: truncate to {to}: {e}", self.nodes[f].id))?;
                    self.nodes[f].local.retain(|&(lsn, _)| lsn <= to);
                    self.nodes[f].applied.retain(|&lsn, _| lsn <= to);
                    let a = &mut self.nodes[f].applied_to;
                    *a = (*a).min(to);
                    let r = &mut self.nodes[f].reported_flushed;
                    *r = (*r).min(to);
                    self.report.truncations += 1;
                    let id = self.nodes[f].id.clone();
                    self.say(format!("{id} truncates its divergent tail after {to}"));
                }
                FollowerEvent::Append(ship) => {
                    if let Err(e) = log.append_encoded(ship.data) {
                        return self.follower_session_ended(f, link, &format!("append: {e}"));
                    }
                    settle(&log)?;
                    // Flushed at once, or later (a step of its own): the leader must not
                    // count what is only written.
                    if self.rng.one_in(2) {
                        flush(&log)?;
                    }
                    self.follower_progress(f)?;
                }
                FollowerEvent::Committed(lsn) => {
                    let l = &mut self.nodes[f].learned;
                    *l = (*l).max(lsn);
                    self.note_committed(f);
                }
                FollowerEvent::EpochSeen(e) => {
                    if !self.coord.granted(e) {
                        return self.follower_session_ended(
                            f,
                            link,
                            &format!("epoch {e} was never granted"),
                        );
                    }
                    self.store_seen(f, e)?;
                }
                FollowerEvent::Streaming { .. } => {
                    if let Role::Following(s) = &mut self.nodes[f].role {
                        s.welcomed = true;
                    }
                }
            }
        }
        Ok(())
    }

    fn next_follower_event(&mut self, f: usize, now: Instant) -> Option<(u64, FollowerEvent)> {
        match &mut self.nodes[f].role {
            Role::Following(s) => {
                let (link, session) = s.conn.as_mut()?;
                session.poll_event(now).map(|ev| (*link, ev))
            }
            _ => None,
        }
    }

    fn follower_progress(&mut self, f: usize) -> Result<(), String> {
        let Some(log) = self.nodes[f].log.clone() else {
            return Ok(());
        };
        let p = progress(&log, self.nodes[f].applied_to);
        if let Role::Following(s) = &mut self.nodes[f].role {
            if let Some((_, session)) = &mut s.conn {
                session.handle_progress(p);
                let r = &mut self.nodes[f].reported_flushed;
                *r = (*r).max(p.flushed);
            }
        }
        Ok(())
    }

    fn clients(&mut self) -> Result<(), String> {
        for n in 0..self.nodes.len() {
            let Some(log) = self.nodes[n].log.clone() else {
                continue;
            };
            if let Role::Leading(s) = &self.nodes[n].role {
                if !s.writable {
                    continue;
                }
                let epoch = s.epoch;
                if self.rng.one_in(3) {
                    // One record or a batch of them; written before the next step, so
                    // how records group into batches is the seed's choice, not the
                    // writer thread's timing.
                    let k = self.rng.between(1, 3);
                    let seqs: Vec<u64> = (0..k)
                        .map(|_| {
                            self.seq += 1;
                            self.seq
                        })
                        .collect();
                    let bodies: Vec<Vec<u8>> = seqs.iter().map(|&q| payload(q)).collect();
                    let lsns = if k == 1 {
                        vec![log.append(&bodies[0]).map_err(|e| format!("append: {e}"))?]
                    } else {
                        log.append_batch(&bodies)
                            .map_err(|e| format!("append_batch: {e}"))?
                    };
                    for (seq, lsn) in seqs.into_iter().zip(lsns) {
                        let level = match self.rng.below(20) {
                            0..=1 => Durability::Async,
                            2..=4 => Durability::Local,
                            5..=7 => Durability::RemoteWrite,
                            8..=15 => Durability::RemoteFlush,
                            _ => Durability::RemoteApply,
                        };
                        let at = self.t;
                        self.nodes[n].pending.push(Pending {
                            lsn,
                            seq,
                            level,
                            epoch,
                            at,
                        });
                    }
                    settle(&log)?;
                }
                if self.rng.one_in(4) {
                    flush(&log)?;
                }
            } else if let Role::Following(_) = self.nodes[n].role {
                // Rarely: a follower may reconnect with bytes it wrote but never flushed.
                if log.watermarks().flushed < log.end_lsn() && self.rng.one_in(40) {
                    flush(&log)?;
                    self.follower_progress(n)?;
                }
            }
        }
        Ok(())
    }

    fn acks(&mut self) -> Result<(), String> {
        for n in 0..self.nodes.len() {
            let Some(log) = self.nodes[n].log.clone() else {
                continue;
            };
            let leading = match &self.nodes[n].role {
                Role::Leading(s) => Some(s.epoch),
                _ => None,
            };
            let w = log.watermarks();
            let mut still = Vec::new();
            for p in std::mem::take(&mut self.nodes[n].pending) {
                let here = w.flushed >= p.lsn && leading == Some(p.epoch);
                let ok = match p.level {
                    Durability::Async => true,
                    Durability::Local => w.flushed >= p.lsn,
                    Durability::RemoteWrite => here && w.remote_written >= p.lsn,
                    Durability::RemoteFlush => here && w.remote_flushed >= p.lsn,
                    _ => here && w.remote_flushed >= p.lsn && w.remote_applied >= p.lsn,
                };
                if !ok {
                    still.push(p);
                    continue;
                }
                if p.level == Durability::Async {
                    // Promises nothing past the append.
                    self.report.acked_async += 1;
                    continue;
                }
                self.nodes[n].local.push((p.lsn, p.seq));
                match p.level {
                    Durability::Local => self.report.acked_local += 1,
                    Durability::RemoteWrite => {
                        self.check_written_on_a_follower(n, p)?;
                        self.report.acked_remote_write += 1;
                    }
                    level => {
                        self.check_on_a_majority(n, p)?;
                        self.check_successors_hold(n, p)?;
                        if level == Durability::RemoteApply {
                            self.check_applied_on_a_follower(n, p)?;
                            self.report.acked_remote_apply += 1;
                        }
                        self.report.acked_remote += 1;
                        self.acked.push(Acked {
                            lsn: p.lsn,
                            seq: p.seq,
                            node: n,
                            epoch: p.epoch,
                        });
                        // Sometimes the writer reads its write back on a follower.
                        if self.rng.one_in(4) {
                            let f = (n + 1 + self.rng.below(2) as usize) % self.nodes.len();
                            if self.up(f) {
                                let until = self.t + 400;
                                self.nodes[f].ryw.push((p.lsn, p.epoch, p.seq, until));
                            }
                        }
                    }
                }
            }
            self.nodes[n].pending = still;
        }
        Ok(())
    }

    fn records(log: &Log) -> Result<BTreeMap<Lsn, Bytes>, String> {
        let mut have = BTreeMap::new();
        let mut r = log
            .record_reader(log.start_lsn())
            .map_err(|e| format!("reader: {e}"))?;
        while let Some(rec) = r.try_next().map_err(|e| format!("read: {e}"))? {
            have.insert(rec.lsn, rec.data);
        }
        Ok(have)
    }

    fn follower_went_down_since(&self, leader: usize, t: u64) -> bool {
        (0..self.nodes.len())
            .filter(|&n| n != leader)
            .any(|n| self.nodes[n].went_down_at.is_some_and(|d| d >= t))
    }

    /// No truncation cuts a record acknowledged at `RemoteFlush` or `RemoteApply`: every
    /// leader after it holds it at the same position, so no follower's copy of it is ever
    /// a divergent tail.
    fn check_cut_keeps_acked(&self, f: usize, log: &Log, to: Lsn) -> Result<(), String> {
        if !self.acked.iter().any(|a| a.lsn > to) {
            return Ok(());
        }
        let have = Self::records(log)?;
        for a in self.acked.iter().filter(|a| a.lsn > to) {
            if have.get(&a.lsn).map(|d| &d[..]) == Some(&payload(a.seq)[..]) {
                return Err(format!(
                    "{} was told to cut its log after {to}, which would cut record {} at {}, acknowledged at RemoteFlush by {} in epoch {}",
                    self.nodes[f].id, a.seq, a.lsn, self.nodes[a.node].id, a.epoch
                ));
            }
        }
        Ok(())
    }

    /// What this node learned is committed (as `walship_transport::Node::committed`).
    fn note_committed(&mut self, n: usize) {
        let Some(log) = self.nodes[n].log.clone() else {
            return;
        };
        let learned = self.nodes[n].learned;
        let leading = match &self.nodes[n].role {
            Role::Leading(s) => walship_transport::committed::committed_point(&log, s.epoch),
            _ => Lsn::ZERO,
        };
        let now = learned.max(leading).min(log.watermarks().flushed);
        let c = &mut self.nodes[n].committed;
        *c = (*c).max(now);
    }

    /// No truncation goes below what the node learned is committed: an embedder's
    /// snapshot may cover that much and its log may be recycled behind it.
    fn check_cut_keeps_committed(&self, n: usize, to: Lsn) -> Result<(), String> {
        let committed = self.nodes[n].committed;
        if to < committed {
            return Err(format!(
                "{} was told to cut its log after {to}, below {committed}, which it had learned was committed",
                self.nodes[n].id
            ));
        }
        Ok(())
    }

    /// A commit acknowledged at `RemoteWrite` is, at that moment, written (handed to the
    /// OS) by at least one follower in the commit's epoch.
    /// (Unless a follower went down since the record was appended: written, not flushed,
    /// is what a power loss takes, and the leader's remote-written watermark never goes
    /// back; what it believed is checked against each follower in `check_beliefs`.)
    fn check_written_on_a_follower(&self, leader: usize, p: Pending) -> Result<(), String> {
        if self.follower_went_down_since(leader, p.at) {
            return Ok(());
        }
        let holds = (0..self.nodes.len()).filter(|&n| n != leader).any(|n| {
            self.nodes[n].log.as_ref().is_some_and(|log| {
                log.watermarks().written >= p.lsn
                    && log.epoch_history().epoch_at(p.lsn) == Some(p.epoch)
            })
        });
        if holds {
            Ok(())
        } else {
            Err(format!(
                "{} acknowledged record {} at {} at RemoteWrite in epoch {}, but no follower has written it",
                self.nodes[leader].id, p.seq, p.lsn, p.epoch
            ))
        }
    }

    /// A commit acknowledged at `RemoteApply` is, at that moment, in the applied state of
    /// at least one follower.
    fn check_applied_on_a_follower(&self, leader: usize, p: Pending) -> Result<(), String> {
        // A state in memory does not survive its process.
        if self.follower_went_down_since(leader, p.at) {
            return Ok(());
        }
        let holds = (0..self.nodes.len())
            .filter(|&n| n != leader)
            .any(|n| self.nodes[n].applied.get(&p.lsn) == Some(&p.seq));
        if holds {
            Ok(())
        } else {
            Err(format!(
                "{} acknowledged record {} at {} at RemoteApply in epoch {}, but no follower has applied it",
                self.nodes[leader].id, p.seq, p.lsn, p.epoch
            ))
        }
    }

    /// A commit acknowledged at `RemoteFlush` is, at that moment, on the disk of the
    /// leader and of at least one follower (a majority of three). A follower whose log is
    /// in the commit's epoch holds the leader's bytes up to its end (it truncated any
    /// divergence when welcomed); the bytes themselves are compared at every election and
    /// at the end.
    fn check_on_a_majority(&self, leader: usize, p: Pending) -> Result<(), String> {
        let followers = (0..self.nodes.len())
            .filter(|&n| n != leader)
            .filter(|&n| {
                let node = &self.nodes[n];
                let (history, flushed) = match &node.log {
                    Some(log) => (log.epoch_history(), log.watermarks().flushed),
                    None => node
                        .down_with
                        .clone()
                        .unwrap_or((EpochHistory::default(), Lsn::ZERO)),
                };
                history.epoch_at(p.lsn) == Some(p.epoch) && flushed >= p.lsn
            })
            .count();
        if followers == 0 {
            return Err(format!(
                "{} acknowledged record {} at {} at RemoteFlush in epoch {}, but no follower has it on disk",
                self.nodes[leader].id, p.seq, p.lsn, p.epoch
            ));
        }
        Ok(())
    }

    /// A leader acknowledging after a newer epoch was confirmed (its follower's ack was
    /// in flight) acknowledges only what that epoch's leader already holds: a confirmed
    /// epoch's leader has every record any older leader can still acknowledge.
    fn check_successors_hold(&self, leader: usize, p: Pending) -> Result<(), String> {
        for (m, node) in self.nodes.iter().enumerate() {
            let (Role::Leading(s), Some(log)) = (&node.role, &node.log) else {
                continue;
            };
            if m == leader || s.epoch <= p.epoch || !s.registry.confirmed() {
                continue;
            }
            let have = Self::records(log)?;
            if have.get(&p.lsn).map(|d| &d[..]) != Some(&payload(p.seq)[..]) {
                return Err(format!(
                    "{} acknowledged record {} at {} at RemoteFlush in epoch {} after epoch {} was confirmed, and {}, its leader, lacks it",
                    self.nodes[leader].id, p.seq, p.lsn, p.epoch, s.epoch, node.id
                ));
            }
        }
        Ok(())
    }

    /// The leader never believes a follower flushed more than it did: what it counts for
    /// `RemoteFlush` is on that follower's disk.
    fn check_beliefs(&self, l: usize) -> Result<(), String> {
        let Role::Leading(s) = &self.nodes[l].role else {
            return Ok(());
        };
        for c in &s.conns {
            let f = &self.nodes[c.follower];
            let (Some(believed), Some(log)) = (s.registry.flushed_by(&f.id), &f.log) else {
                continue;
            };
            let actual = log.watermarks().flushed;
            if believed > actual {
                return Err(format!(
                    "{} believes {} flushed {believed}, but its log is flushed to {actual}",
                    self.nodes[l].id, f.id
                ));
            }
        }
        Ok(())
    }

    fn check_has_acked(&self, n: usize) -> Result<(), String> {
        let log = self.nodes[n].log.as_ref().ok_or("down")?;
        let have = Self::records(log)?;
        for a in &self.acked {
            if have.get(&a.lsn).map(|d| &d[..]) != Some(&payload(a.seq)[..]) {
                return Err(format!(
                    "{} lacks record {} at {}, acknowledged at RemoteFlush by {} in epoch {}",
                    self.nodes[n].id, a.seq, a.lsn, self.nodes[a.node].id, a.epoch
                ));
            }
        }
        Ok(())
    }

    fn check_end(&self) -> Result<(), String> {
        let l = self.leader().ok_or("no leader at the end")?;
        for n in 0..self.nodes.len() {
            self.check_has_acked(n)?;
        }
        let lead = self.nodes[l].log.as_ref().ok_or("leader down")?;
        for n in 0..self.nodes.len() {
            if n == l {
                continue;
            }
            let other = self.nodes[n].log.as_ref().ok_or("down at the end")?;
            let mut a = lead.reader(lead.start_lsn()).map_err(|e| e.to_string())?;
            let mut b = other.reader(other.start_lsn()).map_err(|e| e.to_string())?;
            loop {
                match (
                    a.try_next().map_err(|e| e.to_string())?,
                    b.try_next().map_err(|e| e.to_string())?,
                ) {
                    (Some(x), Some(y)) => {
                        if !walship_engine::format::same_batch(x.bytes(), y.bytes()) {
                            return Err(format!(
                                "logs of {} and {} differ at {}",
                                self.nodes[l].id,
                                self.nodes[n].id,
                                x.base()
                            ));
                        }
                    }
                    (None, None) => break,
                    (x, y) => {
                        return Err(format!(
                            "logs of {} and {} differ in length: {:?} vs {:?}",
                            self.nodes[l].id,
                            self.nodes[n].id,
                            x.map(|b| b.base()),
                            y.map(|b| b.base())
                        ))
                    }
                }
            }
        }
        Ok(())
    }
}
