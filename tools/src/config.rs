//! `walship serve`'s configuration file (TOML): one node's identity, directories,
//! addresses, certificates, replication policy, log settings and coordinator.
//!
//! Unknown keys are refused (a misspelt key must not silently fall back to a default),
//! and every problem is reported with the key it concerns, for example
//! ``node.toml: `replication.sync`: invalid sync policy ANY 3 (a, b): …``.
//!
//! ```toml
//! node_id = "n1"                      # must be the name in this node's certificate
//! data_dir = "/var/lib/walship/n1"
//! listen = "127.0.0.1:7400"           # replication (QUIC, mutual TLS)
//! admin = "127.0.0.1:7480"            # admin endpoint (HTTPS, mutual TLS)
//! # admin_plain = "127.0.0.1:7481"    # optional: read-only plain HTTP, loopback only
//!
//! [tls]
//! ca = "certs/ca.pem"                 # relative paths are relative to this file
//! cert = "certs/n1.pem"
//! key = "certs/n1.key"
//! # crl = "certs/crl.pem"             # revoked certificates; re-read when it changes
//!
//! [replication]
//! sync = "ANY 1 (*)"                  # synchronous_standby_names syntax
//!
//! [coordinator]
//! kind = "static"                     # or "etcd"
//! leader = "n1"
//! peers = { n1 = "127.0.0.1:7400", n2 = "127.0.0.1:7401" }   # the members
//! ```
//!
//! The members of the cluster — the only nodes that may replicate, count for a quorum or
//! hold a slot — are the static coordinator's `peers` (with this node and the leader), or
//! the etcd coordinator's `members`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use walship_engine::BackendKind;
use walship_transport::SyncPolicy;

/// A configuration problem, naming the file and the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {problem}")]
pub struct ConfigError {
    /// The configuration file.
    pub file: String,
    /// What is wrong, starting with the key in backquotes.
    pub problem: String,
}

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    node_id: String,
    data_dir: PathBuf,
    listen: String,
    advertise: Option<String>,
    admin: Option<String>,
    admin_plain: Option<String>,
    tls: RawTls,
    #[serde(default)]
    replication: RawReplication,
    #[serde(default)]
    log: RawLog,
    coordinator: RawCoordinator,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    crl: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReplication {
    sync: Option<String>,
    remote_commit_timeout_ms: Option<u64>,
    max_retained_bytes: Option<u64>,
    max_udp_payload: Option<u16>,
    compression_level: Option<i32>,
    compression_adapt: Option<bool>,
    compression_floor: Option<i32>,
    compression_ceiling: Option<i32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    segment_bytes: Option<u64>,
    backend: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "lowercase")]
enum RawCoordinator {
    Static {
        leader: String,
        #[serde(default)]
        peers: BTreeMap<String, String>,
    },
    Etcd {
        endpoints: Vec<String>,
        cluster: String,
        members: Vec<String>,
        lease_ttl_s: Option<u64>,
        election_quorum: Option<usize>,
        check_interval_ms: Option<u64>,
    },
}

/// A node's validated configuration.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The node's id (its certificate's name).
    pub node_id: String,
    /// The log directory.
    pub data_dir: PathBuf,
    /// Replication listen address.
    pub listen: SocketAddr,
    /// Address published for others, if not `listen`.
    pub advertise: Option<String>,
    /// Admin endpoint address (HTTPS with mutual TLS).
    pub admin: SocketAddr,
    /// Read-only plain-HTTP admin address, loopback only.
    pub admin_plain: Option<SocketAddr>,
    /// Cluster CA certificate (PEM).
    pub ca: PathBuf,
    /// This node's certificate chain (PEM).
    pub cert: PathBuf,
    /// This node's private key (PEM).
    pub key: PathBuf,
    /// Revoked certificates (PEM CRL), re-read when the file changes.
    pub crl: Option<PathBuf>,
    /// The cluster's members: this node, the leader and the peers (static), or the etcd
    /// coordinator's list.
    pub members: BTreeSet<String>,
    /// Which followers remote commits wait for.
    pub sync: SyncPolicy,
    /// Remote commits give up after this long.
    pub remote_commit_timeout: Duration,
    /// Most log a lagging follower's slot may hold back.
    pub max_retained_bytes: Option<u64>,
    /// The largest datagram replication sends (MTU discovery's bound); absent: jumbo on
    /// a loopback path, 1452 elsewhere ([`walship_transport::udp::auto_max_udp_payload`]).
    pub max_udp_payload: Option<u16>,
    /// How shipped data is compressed: `compression_level` (0 = off; with
    /// `compression_adapt`, where the level starts) and the adaptive range
    /// (`compression_floor`, absent: down to shipping raw; `compression_ceiling`).
    pub compression: walship_transport::CompressionOptions,
    /// Segment size.
    pub segment_bytes: Option<u64>,
    /// I/O backend.
    pub backend: BackendKind,
    /// Who leads.
    pub coordinator: CoordinatorConfig,
}

/// Why an etcd coordinator is refused by a build without the `etcd` feature.
pub const ETCD_NOT_BUILT: &str = "\"etcd\": this walship was built without etcd support; \
     build it with `cargo build --release -p walship-tools --features etcd` \
     (etcd-client's build needs `protoc`: `apt-get install protobuf-compiler`)";

/// Who leads: a configured leader, or an election in etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoordinatorConfig {
    /// The configured leader leads; an operator changes it (`walship promote`).
    Static {
        /// The leader's node id.
        leader: String,
        /// Every node's replication address, by id (at least the leader's).
        peers: BTreeMap<String, SocketAddr>,
    },
    /// Members elect a leader through etcd.
    Etcd {
        /// etcd client URLs.
        endpoints: Vec<String>,
        /// The cluster's name (its key prefix).
        cluster: String,
        /// The member node ids.
        members: BTreeSet<String>,
        /// Lease TTL: a dead leader is replaced after about this long.
        lease_ttl: Duration,
        /// Members that must be visible before an election (see `NodeOptions`).
        election_quorum: usize,
        /// How often each member checks the coordinator.
        check_interval: Duration,
    },
}

impl NodeConfig {
    /// Reads and validates `path`.
    ///
    /// # Errors
    /// [`ConfigError`] naming the key and the problem, or the file that cannot be read.
    pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            problem: format!("cannot read: {e}"),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        NodeConfig::parse(&text, base).map_err(|problem| ConfigError { file, problem })
    }

    /// Parses and validates `text`; relative paths are taken from `base`.
    ///
    /// # Errors
    /// What is wrong, starting with the key.
    pub fn parse(text: &str, base: &Path) -> Result<NodeConfig, String> {
        let raw: Raw = toml::from_str(text).map_err(|e| {
            // toml names the key and shows the line; keep its message whole.
            e.to_string().trim_end().to_string()
        })?;
        let bad = |key: &str, problem: String| format!("`{key}`: {problem}");
        let addr = |key: &str, v: &str| -> Result<SocketAddr, String> {
            v.parse()
                .map_err(|_| bad(key, format!("{v:?} is not an address like 127.0.0.1:7400")))
        };
        if raw.node_id.trim().is_empty() {
            return Err(bad("node_id", "must not be empty".into()));
        }
        let listen = addr("listen", &raw.listen)?;
        let admin = addr("admin", raw.admin.as_deref().unwrap_or("127.0.0.1:7480"))?;
        let admin_plain = match &raw.admin_plain {
            None => None,
            Some(a) => {
                let a = addr("admin_plain", a)?;
                if !a.ip().is_loopback() {
                    return Err(bad(
                        "admin_plain",
                        format!(
                            "{a} is not a loopback address: the plain-HTTP listener has no \
                             authentication, so it is read-only and loopback only; remote \
                             clients use `admin` (HTTPS with mutual TLS)"
                        ),
                    ));
                }
                if a == admin {
                    return Err(bad("admin_plain", format!("{a} is also `admin`")));
                }
                Some(a)
            }
        };
        if let Some(a) = &raw.advertise {
            addr("advertise", a)?;
        }
        let sync_text = raw.replication.sync.as_deref().unwrap_or("ANY 1 (*)");
        let sync = sync_text
            .parse::<SyncPolicy>()
            .map_err(|e| bad("replication.sync", e.to_string()))?;
        if raw.replication.remote_commit_timeout_ms == Some(0) {
            return Err(bad(
                "replication.remote_commit_timeout_ms",
                "must be positive".into(),
            ));
        }
        let compression = compression(&raw.replication)?;
        if let Some(s) = raw.log.segment_bytes {
            walship_engine::format::check_capacity(s).map_err(|e| bad("log.segment_bytes", e))?;
        }
        let backend = match &raw.log.backend {
            None => BackendKind::default(),
            Some(b) => b.parse().map_err(|e: String| bad("log.backend", e))?,
        };
        let mut members = BTreeSet::from([raw.node_id.clone()]);
        let coordinator = match raw.coordinator {
            RawCoordinator::Static { leader, peers } => {
                members.insert(leader.clone());
                members.extend(peers.keys().cloned());
                let mut parsed = BTreeMap::new();
                for (id, a) in peers {
                    let key = format!("coordinator.peers.{id}");
                    parsed.insert(id, addr(&key, &a)?);
                }
                if leader != raw.node_id && !parsed.contains_key(&leader) {
                    return Err(bad(
                        "coordinator.peers",
                        format!("must give the address of the leader {leader:?}"),
                    ));
                }
                CoordinatorConfig::Static {
                    leader,
                    peers: parsed,
                }
            }
            RawCoordinator::Etcd {
                endpoints,
                cluster,
                members: listed,
                lease_ttl_s,
                election_quorum,
                check_interval_ms,
            } => {
                if !cfg!(feature = "etcd") {
                    return Err(bad("coordinator.kind", ETCD_NOT_BUILT.into()));
                }
                if endpoints.is_empty() {
                    return Err(bad(
                        "coordinator.endpoints",
                        "lists no etcd endpoint".into(),
                    ));
                }
                if cluster.is_empty() || cluster.contains('/') {
                    return Err(bad(
                        "coordinator.cluster",
                        "must be a non-empty name without `/`".into(),
                    ));
                }
                if !listed.contains(&raw.node_id) {
                    return Err(bad(
                        "coordinator.members",
                        format!("must list this node, {:?}", raw.node_id),
                    ));
                }
                members = listed.iter().cloned().collect();
                let ttl = lease_ttl_s.unwrap_or(5);
                if ttl == 0 {
                    return Err(bad("coordinator.lease_ttl_s", "must be at least 1".into()));
                }
                let quorum = election_quorum.unwrap_or(1);
                if quorum == 0 {
                    return Err(bad(
                        "coordinator.election_quorum",
                        "must be at least 1 (this node)".into(),
                    ));
                }
                CoordinatorConfig::Etcd {
                    endpoints,
                    cluster,
                    members: members.clone(),
                    lease_ttl: Duration::from_secs(ttl),
                    election_quorum: quorum,
                    check_interval: Duration::from_millis(check_interval_ms.unwrap_or(200).max(10)),
                }
            }
        };
        let max_udp_payload = raw
            .replication
            .max_udp_payload
            .map(walship_transport::udp::check_max_udp_payload)
            .transpose()
            .map_err(|e| bad("replication.max_udp_payload", e))?;
        let named = match &sync {
            SyncPolicy::First { of, .. } | SyncPolicy::Any { of, .. } => of,
        };
        if let Some(stranger) = named.iter().find(|n| *n != "*" && !members.contains(*n)) {
            return Err(bad(
                "replication.sync",
                format!(
                    "names {stranger:?}, which is not a member (members: {})",
                    members.iter().cloned().collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        Ok(NodeConfig {
            node_id: raw.node_id,
            data_dir: base.join(raw.data_dir),
            listen,
            advertise: raw.advertise,
            admin,
            admin_plain,
            ca: base.join(raw.tls.ca),
            cert: base.join(raw.tls.cert),
            key: base.join(raw.tls.key),
            crl: raw.tls.crl.map(|c| base.join(c)),
            members,
            sync,
            remote_commit_timeout: Duration::from_millis(
                raw.replication.remote_commit_timeout_ms.unwrap_or(10_000),
            ),
            max_retained_bytes: raw.replication.max_retained_bytes,
            max_udp_payload,
            compression,
            segment_bytes: raw.log.segment_bytes,
            backend,
            coordinator,
        })
    }
}

/// The compression settings of `[replication]`, checked.
fn compression(r: &RawReplication) -> Result<walship_transport::CompressionOptions, String> {
    use walship_transport::compress::adapt::{Adapt, LevelControl};
    let bad = |key: &str, problem: String| format!("`{key}`: {problem}");
    let base = walship_transport::CompressionOptions::default();
    let zstd = walship_transport::compress::levels();
    let level = match r.compression_level {
        None => base.level,
        Some(0) => None,
        Some(l) if zstd.contains(&l) => Some(l),
        Some(l) => {
            return Err(bad(
                "replication.compression_level",
                format!(
                    "{l} is outside {} ..= {} (0: off)",
                    zstd.start(),
                    zstd.end()
                ),
            ))
        }
    };
    // A level alone keeps its old meaning (fixed, 0 = off); neither key: the default.
    let adapting = r
        .compression_adapt
        .unwrap_or(r.compression_level.is_none() && base.adapt.is_some());
    if !adapting && (r.compression_floor.is_some() || r.compression_ceiling.is_some()) {
        return Err(bad(
            "replication.compression_floor",
            "a floor or ceiling needs compression_adapt = true".into(),
        ));
    }
    let adapt = adapting.then(|| {
        let d = base.adapt.unwrap_or_default();
        Adapt {
            floor: r.compression_floor.or(d.floor),
            ceiling: r.compression_ceiling.unwrap_or(d.ceiling),
        }
    });
    if let Some(range) = adapt {
        LevelControl::new(range, level, std::time::Instant::now())
            .map_err(|e| bad("replication.compression_adapt", e))?;
    }
    Ok(walship_transport::CompressionOptions {
        level,
        adapt,
        ..base
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
node_id = "n1"
data_dir = "data/n1"
listen = "127.0.0.1:7400"
[tls]
ca = "certs/ca.pem"
cert = "certs/n1.pem"
key = "certs/n1.key"
[replication]
sync = "FIRST 1 (n2, n3)"
[coordinator]
kind = "static"
leader = "n1"
peers = { n2 = "127.0.0.1:7401", n3 = "127.0.0.1:7402" }
"#;

    #[test]
    fn a_good_file_parses_with_defaults_and_paths_from_its_directory() {
        let c = NodeConfig::parse(GOOD, Path::new("/etc/walship")).unwrap();
        assert_eq!(c.data_dir, Path::new("/etc/walship/data/n1"));
        assert_eq!(c.admin, "127.0.0.1:7480".parse().unwrap());
        assert_eq!(c.sync.to_string(), "FIRST 1 (n2, n3)");
        assert_eq!(c.admin_plain, None);
        assert_eq!(c.members.iter().collect::<Vec<_>>(), ["n1", "n2", "n3"]);
        assert!(
            matches!(c.coordinator, CoordinatorConfig::Static { ref leader, .. } if leader == "n1")
        );
    }

    #[test]
    fn the_datagram_bound_is_checked_and_absent_by_default() {
        let with = |extra: &str| {
            let text = GOOD.replace("[replication]", &format!("[replication]\n{extra}"));
            NodeConfig::parse(&text, Path::new("/")).map(|c| c.max_udp_payload)
        };
        assert_eq!(with("").unwrap(), None);
        assert_eq!(with("max_udp_payload = 8952").unwrap(), Some(8952));
        let err = with("max_udp_payload = 1000").unwrap_err();
        assert!(
            err.contains("replication.max_udp_payload") && err.contains("1200"),
            "{err}"
        );
    }

    #[test]
    fn compression_is_adaptive_by_default_and_a_level_alone_is_fixed() {
        use walship_transport::compress::Adapt;
        let with = |extra: &str| {
            let text = GOOD.replace("[replication]", &format!("[replication]\n{extra}"));
            NodeConfig::parse(&text, Path::new("/"))
                .unwrap()
                .compression
        };
        let c = with("");
        assert_eq!((c.level, c.adapt), (Some(1), Some(Adapt::default())));
        let c = with("compression_level = 5");
        assert_eq!((c.level, c.adapt), (Some(5), None));
        let c = with("compression_level = 0");
        assert_eq!((c.level, c.adapt), (None, None));
        let c = with("compression_level = 3\ncompression_adapt = true\ncompression_floor = -10");
        let range = Adapt {
            floor: Some(-10),
            ceiling: 6,
        };
        assert_eq!((c.level, c.adapt), (Some(3), Some(range)));
        let c = with("compression_adapt = false");
        assert_eq!((c.level, c.adapt), (Some(1), None));
    }

    #[test]
    fn an_etcd_coordinator_needs_a_build_with_etcd() {
        let etcd = GOOD.replace(
            "kind = \"static\"\nleader = \"n1\"\npeers = { n2 = \"127.0.0.1:7401\", n3 = \"127.0.0.1:7402\" }",
            "kind = \"etcd\"\nendpoints = [\"http://127.0.0.1:2379\"]\ncluster = \"prod\"\nmembers = [\"n1\", \"n2\", \"n3\"]",
        );
        assert!(etcd.contains("kind = \"etcd\""));
        let parsed = NodeConfig::parse(&etcd, Path::new("/"));
        #[cfg(feature = "etcd")]
        assert!(matches!(
            parsed.map(|c| c.coordinator),
            Ok(CoordinatorConfig::Etcd { .. })
        ));
        #[cfg(not(feature = "etcd"))]
        {
            let e = parsed.expect_err("refused");
            assert!(
                e.contains("`coordinator.kind`") && e.contains("--features etcd"),
                "{e}"
            );
        }
    }

    #[test]
    fn problems_name_their_key() {
        let cases = [
            (
                GOOD.replace("FIRST 1 (n2, n3)", "ANY 3 (n2)"),
                "`replication.sync`",
            ),
            (GOOD.replace("127.0.0.1:7400", "localhost"), "`listen`"),
            (GOOD.replace("listen =", "listn ="), "listn"),
            (
                GOOD.replace("leader = \"n1\"", "leader = \"n9\""),
                "`coordinator.peers`",
            ),
            (
                GOOD.replace("kind = \"static\"", "kind = \"zookeeper\""),
                "zookeeper",
            ),
            (
                GOOD.replace("[replication]", "[replication]\ncompression_level = 99"),
                "`replication.compression_level`",
            ),
            (
                GOOD.replace(
                    "[replication]",
                    "[replication]\ncompression_adapt = true\ncompression_floor = 3\ncompression_ceiling = 1",
                ),
                "`replication.compression_adapt`: adaptive floor Some(3) is above the ceiling 1",
            ),
            (
                GOOD.replace(
                    "[replication]",
                    "[replication]\ncompression_adapt = false\ncompression_ceiling = 3",
                ),
                "`replication.compression_floor`",
            ),
            (
                GOOD.replace("listen =", "admin_plain = \"0.0.0.0:7481\"\nlisten ="),
                "`admin_plain`: 0.0.0.0:7481 is not a loopback address",
            ),
            (
                GOOD.replace("FIRST 1 (n2, n3)", "FIRST 1 (n2, n9)"),
                "`replication.sync`: names \"n9\", which is not a member (members: n1, n2, n3)",
            ),
        ];
        for (text, key) in cases {
            let e = NodeConfig::parse(&text, Path::new(".")).unwrap_err();
            assert!(e.contains(key), "{key}: {e}");
        }
    }
}
