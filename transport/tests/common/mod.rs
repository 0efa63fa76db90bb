//! A small cluster on loopback for the driver tests: a CA, a leader, followers with
//! recording apply callbacks, all with temporary directories and ports from port 0.

#![allow(dead_code)]

#[cfg(feature = "etcd")]
pub mod etcd;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use walship_engine::{BackendKind, Log, Lsn, Options, Record};
use walship_transport::tls::ClusterCa;
use walship_transport::{
    Apply, ApplyError, Follower, FollowerOptions, Leader, LeaderOptions, Security, SyncPolicy,
};

pub const CLUSTER: &str = "test-cluster";

pub fn opts(capacity: u64) -> Options {
    Options {
        segment_capacity: capacity,
        backend: BackendKind::Portable,
        ..Options::default()
    }
}

pub fn open(dir: &Path, capacity: u64) -> Arc<Log> {
    Arc::new(Log::open(dir, opts(capacity)).expect("open log"))
}

/// What a follower's apply callback saw, in call order.
pub type Applied = Arc<Mutex<Vec<(Lsn, Vec<u8>)>>>;

pub fn recorder() -> (Applied, impl FnMut(&Record) + Send + 'static) {
    let seen: Applied = Arc::default();
    let s = Arc::clone(&seen);
    (seen, move |r: &Record| {
        s.lock().unwrap().push((r.lsn, r.data.to_vec()));
    })
}

/// An embedder that keeps its state as a list and can undo a truncated tail.
#[derive(Clone, Default)]
pub struct Undoable {
    pub state: Applied,
    pub truncations: Arc<Mutex<Vec<Lsn>>>,
}

impl Apply for Undoable {
    fn apply(&mut self, r: &Record) -> Result<(), ApplyError> {
        self.state.lock().unwrap().push((r.lsn, r.data.to_vec()));
        Ok(())
    }

    fn truncated(&mut self, to: Lsn) -> Result<(), ApplyError> {
        self.state.lock().unwrap().retain(|(l, _)| *l <= to);
        self.truncations.lock().unwrap().push(to);
        Ok(())
    }
}

pub struct Cluster {
    pub ca: ClusterCa,
    pub dir: tempfile::TempDir,
    pub capacity: u64,
}

impl Cluster {
    pub fn new(capacity: u64) -> Cluster {
        Cluster {
            ca: ClusterCa::generate(CLUSTER).expect("CA"),
            dir: tempfile::tempdir().expect("tempdir"),
            capacity,
        }
    }

    pub fn security(&self, node: &str) -> Security {
        Security::mutual_tls(self.ca.issue_node(node).expect("cert"), self.ca.cert_pem())
    }

    pub fn log(&self, node: &str) -> Arc<Log> {
        open(&self.dir.path().join(node), self.capacity)
    }

    pub fn leader(&self, log: Arc<Log>, sync: SyncPolicy) -> Leader {
        self.leader_with(
            log,
            LeaderOptions {
                sync,
                ..LeaderOptions::default()
            },
        )
    }

    pub fn leader_with(&self, log: Arc<Log>, opts: LeaderOptions) -> Leader {
        Leader::start(log, self.security("leader"), opts).expect("start leader")
    }

    /// A leader whose node id is the name of its log's directory.
    pub fn leader_named(&self, log: Arc<Log>, opts: LeaderOptions) -> Leader {
        let name = log
            .dir()
            .file_name()
            .expect("log dir name")
            .to_string_lossy()
            .to_string();
        Leader::start(log, self.security(&name), opts).expect("start leader")
    }

    pub fn follower(&self, node: &str, log: Arc<Log>, leader: &Leader) -> (Follower, Applied) {
        let (seen, apply) = recorder();
        let f = Follower::start(log, self.security(node), self.follower_opts(leader), apply)
            .expect("start follower");
        (f, seen)
    }

    pub fn follower_opts(&self, leader: &Leader) -> FollowerOptions {
        self.follower_opts_to("leader", leader.local_addr().expect("leader address"))
    }

    /// Options for a follower of node `leader_id` at `addr`.
    pub fn follower_opts_to(&self, leader_id: &str, addr: std::net::SocketAddr) -> FollowerOptions {
        FollowerOptions {
            leader: addr,
            leader_node_id: leader_id.into(),
            reconnect_min: Duration::from_millis(20),
            reconnect_max: Duration::from_millis(200),
            ..FollowerOptions::default()
        }
    }
}

/// Polls `cond` every 10 ms until it holds or `timeout` passes.
pub async fn eventually(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Asserts that two logs end at the same place and hold the same batches, byte for byte
/// but for the flush stamp each copy writes for itself, over the range both retain. The leader may recycle segments meanwhile (its slots and
/// checkpoint move on): then the comparison restarts from the new start.
pub fn same_bytes(a: &Log, b: &Log) {
    assert_eq!(a.end_lsn(), b.end_lsn(), "end");
    for _ in 0..10 {
        match compare_from(a, b, a.start_lsn().max(b.start_lsn())) {
            Ok(n) => {
                assert!(n > 0, "no batches compared");
                return;
            }
            Err(walship_engine::Error::NotRetained { .. }) => continue,
            Err(e) => panic!("reading the logs: {e}"),
        }
    }
    panic!("the logs kept being recycled under the comparison");
}

fn compare_from(a: &Log, b: &Log, from: Lsn) -> walship_engine::Result<u64> {
    let mut ra = a.reader(from)?;
    let mut rb = b.reader(from)?;
    let mut n = 0u64;
    loop {
        match (ra.try_next()?, rb.try_next()?) {
            (Some(x), Some(y)) => {
                assert!(
                    walship_engine::format::same_batch(x.bytes(), y.bytes()),
                    "batch at {} differs: {} vs {} bytes",
                    x.base(),
                    x.bytes().len(),
                    y.bytes().len()
                );
                n += 1;
            }
            (None, None) => return Ok(n),
            (x, y) => panic!(
                "logs differ in length: {:?} vs {:?}",
                x.map(|b| b.base()),
                y.map(|b| b.base())
            ),
        }
    }
}

/// Every record of `log`, in order.
pub fn records(log: &Log) -> Vec<(Lsn, Vec<u8>)> {
    let mut r = log.record_reader(log.start_lsn()).unwrap();
    let mut out = Vec::new();
    while let Some(rec) = r.try_next().unwrap() {
        out.push((rec.lsn, rec.data.to_vec()));
    }
    out
}

/// What a [`Relay`] does with datagrams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward everything.
    Pass,
    /// Drop every datagram in both directions (a partition).
    Blackhole,
    /// Drop one datagram in `n`, both directions.
    DropOneIn(u32),
}

/// A fault-injecting UDP relay in front of `target`, on loopback: clients connect to
/// [`Relay::addr`], each through its own upstream socket. The tasks stop when the relay
/// is dropped.
pub struct Relay {
    pub addr: std::net::SocketAddr,
    fault: Arc<Mutex<Fault>>,
    task: tokio::task::JoinHandle<()>,
}

/// Whether the `n`th datagram passes under `fault`.
fn passes(fault: &Mutex<Fault>, n: u32) -> bool {
    match *fault.lock().unwrap() {
        Fault::Pass => true,
        Fault::Blackhole => false,
        Fault::DropOneIn(k) => n % k.max(1) != 0,
    }
}

impl Relay {
    pub async fn start(target: std::net::SocketAddr) -> Relay {
        use std::collections::HashMap;
        use std::sync::atomic::{AtomicU32, Ordering};
        use tokio::net::UdpSocket;
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind relay"));
        let addr = front.local_addr().expect("relay address");
        let fault = Arc::new(Mutex::new(Fault::Pass));
        let f = Arc::clone(&fault);
        let task = tokio::spawn(async move {
            let counter = Arc::new(AtomicU32::new(0));
            let mut upstreams: HashMap<std::net::SocketAddr, Arc<UdpSocket>> = HashMap::new();
            let mut children = tokio::task::JoinSet::new();
            let mut buf = vec![0u8; 65536];
            loop {
                let Ok((len, from)) = front.recv_from(&mut buf).await else {
                    continue;
                };
                let up = match upstreams.get(&from) {
                    Some(u) => Arc::clone(u),
                    None => {
                        let Ok(u) = UdpSocket::bind("127.0.0.1:0").await else {
                            continue;
                        };
                        if u.connect(target).await.is_err() {
                            continue;
                        }
                        let u = Arc::new(u);
                        upstreams.insert(from, Arc::clone(&u));
                        let (front, up, f, counter) = (
                            Arc::clone(&front),
                            Arc::clone(&u),
                            Arc::clone(&f),
                            Arc::clone(&counter),
                        );
                        children.spawn(async move {
                            let mut b = vec![0u8; 65536];
                            while let Ok(len) = up.recv(&mut b).await {
                                if passes(&f, counter.fetch_add(1, Ordering::Relaxed)) {
                                    let _ = front.send_to(&b[..len], from).await;
                                }
                            }
                        });
                        u
                    }
                };
                if passes(&f, counter.fetch_add(1, Ordering::Relaxed)) {
                    let _ = up.send(&buf[..len]).await;
                }
            }
        });
        Relay { addr, fault, task }
    }

    pub fn set(&self, fault: Fault) {
        *self.fault.lock().unwrap() = fault;
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}
