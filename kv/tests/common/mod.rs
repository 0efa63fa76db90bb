//! A walship-kv cluster in one process, over real QUIC and TCP on loopback, and a real
//! Redis client (the `redis` crate) to talk to it.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use walship_engine::{Durability, Epoch, Log, Options};
use walship_kv::config::SnapshotConfig;
use walship_kv::instance::Instance;
use walship_kv::server::Settings;
use walship_kv::snapshotter::Policy;
use walship_transport::coordinator::{LeaderInfo, StaticCoordinator};
use walship_transport::tls::ClusterCa;
use walship_transport::{
    FollowerOptions, LeaderOptions, NodeOptions, NodeRole, Security, SyncPolicy,
};

pub const WAIT: Duration = Duration::from_secs(30);

pub struct Cluster {
    pub ca: ClusterCa,
    pub dir: tempfile::TempDir,
    pub coordinator: StaticCoordinator,
    pub size: usize,
    /// When the nodes snapshot (the default: too rarely for a test to see one).
    pub snapshot_policy: Policy,
}

impl Cluster {
    /// `size` nodes named n1.., n1 the configured leader.
    pub fn new(size: usize) -> Cluster {
        Cluster {
            ca: ClusterCa::generate("kv-test").expect("CA"),
            dir: tempfile::tempdir().expect("tempdir"),
            coordinator: configured("n1"),
            size,
            snapshot_policy: Policy::default(),
        }
    }

    /// A static coordinator configured anew, as a restarted process reads it from its
    /// configuration (a leader that shut down resigned from the old one).
    pub fn reconfigure(&mut self, leader: &str) {
        self.coordinator = configured(leader);
    }

    pub fn data_dir(&self, id: &str) -> PathBuf {
        self.dir.path().join(id)
    }

    pub fn log(&self, id: &str) -> Arc<Log> {
        let opts = Options {
            segment_capacity: 1 << 20,
            ..Options::default()
        };
        Arc::new(Log::open(self.data_dir(id), opts).expect("open log"))
    }

    pub fn snapshot_dir(&self, id: &str) -> PathBuf {
        self.data_dir(id).join("kv-snapshots")
    }

    pub fn snapshots(&self, id: &str) -> Option<SnapshotConfig> {
        Some(SnapshotConfig {
            dir: self.snapshot_dir(id),
            policy: self.snapshot_policy.clone(),
            alone: self.size == 1,
        })
    }

    pub fn security(&self, id: &str) -> Security {
        Security::mutual_tls(self.ca.issue_node(id).expect("cert"), self.ca.cert_pem())
    }

    pub fn node_options(&self) -> NodeOptions {
        NodeOptions {
            leader: LeaderOptions {
                sync: SyncPolicy::Any {
                    k: 1,
                    of: vec!["*".into()],
                },
                remote_commit_timeout: Duration::from_secs(5),
                // A cluster of one is its own majority; larger ones confirm each epoch.
                write_after_confirmation: self.size > 1,
                ..LeaderOptions::default()
            },
            follower: FollowerOptions {
                leader: "127.0.0.1:1".parse().expect("addr"),
                reconnect_min: Duration::from_millis(20),
                reconnect_max: Duration::from_millis(200),
                ..FollowerOptions::default()
            },
            check_interval: Duration::from_millis(50),
            settle: Duration::from_millis(200),
            election_quorum: 2.min(self.size),
            ..NodeOptions::default()
        }
    }

    pub fn settings(&self, durability: Durability) -> Settings {
        Settings {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            durability,
            expiry_interval: Duration::from_millis(20),
            ..Settings::default()
        }
    }

    pub async fn start(&self, id: &str, durability: Durability) -> Instance {
        self.start_with(id, self.settings(durability)).await
    }

    pub async fn start_with(&self, id: &str, settings: Settings) -> Instance {
        Instance::start(
            self.log(id),
            self.security(id),
            self.coordinator.clone(),
            self.node_options(),
            settings,
            self.snapshots(id),
        )
        .await
        .expect("start node")
    }

    /// Every node, n1 leading and the others following it.
    pub async fn start_all(&self, durability: Durability) -> Vec<Instance> {
        let mut nodes = Vec::new();
        for i in 1..=self.size {
            nodes.push(self.start(&format!("n{i}"), durability).await);
        }
        nodes[0]
            .node()
            .wait_for_role(|r| matches!(r, NodeRole::Leader { .. }), WAIT)
            .await
            .expect("n1 leads");
        for n in &nodes[1..] {
            n.node()
                .wait_for_role(
                    |r| matches!(r, NodeRole::Follower { leader, .. } if leader == "n1"),
                    WAIT,
                )
                .await
                .expect("follows n1");
        }
        nodes
    }
}

fn configured(leader: &str) -> StaticCoordinator {
    StaticCoordinator::new(Some(LeaderInfo {
        node_id: leader.into(),
        addr: String::new(),
        epoch: Epoch::ZERO,
    }))
}

pub async fn stop_all(nodes: Vec<Instance>) {
    for n in nodes {
        n.shutdown().await;
    }
}

/// Runs `f` with a connection of the `redis` crate to `addr` (RESP3 if `resp3`), off
/// the runtime's workers: the client blocks.
pub async fn client<T: Send + 'static>(
    addr: SocketAddr,
    resp3: bool,
    f: impl FnOnce(&mut redis::Connection) -> T + Send + 'static,
) -> T {
    tokio::task::spawn_blocking(move || {
        let url = format!(
            "redis://{addr}/{}",
            if resp3 { "?protocol=resp3" } else { "" }
        );
        let client = redis::Client::open(url).expect("client");
        let mut con = client.get_connection().expect("connect");
        f(&mut con)
    })
    .await
    .expect("client task")
}

/// `cmd` with `args`, as the client sends it.
pub fn cmd(args: &[&str]) -> redis::Cmd {
    let mut c = redis::cmd(args[0]);
    for a in &args[1..] {
        c.arg(*a);
    }
    c
}

pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until `node` leads.
pub async fn leads(node: &Instance) {
    node.node()
        .wait_for_role(|r| matches!(r, NodeRole::Leader { .. }), WAIT)
        .await
        .expect("the node leads");
}

/// Whether `redis-cli` is on the PATH. Without it a test says so and passes, so that
/// `cargo test` runs with only a Rust toolchain; CI installs redis-tools and sets
/// `WALSHIP_REQUIRE_REDIS_CLI=1`, which makes a missing `redis-cli` a failure.
pub fn have_redis_cli() -> bool {
    let found = std::process::Command::new("redis-cli")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var("WALSHIP_REQUIRE_REDIS_CLI").is_err(),
            "WALSHIP_REQUIRE_REDIS_CLI is set but redis-cli is not on the PATH"
        );
        eprintln!("redis-cli not found: skipping (install redis-tools to run this test)");
    }
    found
}
