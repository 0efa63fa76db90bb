//! `walship-kv serve`'s configuration: a `walship serve` node configuration (identity,
//! data directory, certificates, replication, coordinator: see `walship_tools::config`)
//! with one more table, `[kv]`, for the RESP side. Unknown keys are refused in `[kv]` as
//! everywhere else, and every problem names its key.
//!
//! ```toml
//! [kv]
//! listen = "127.0.0.1:6379"     # RESP (Redis clients)
//! durability = "local"          # a connection's default: async, local, remote-write, remote-flush, remote-apply
//! # password = "…"              # AUTH for the `default` user; required unless `listen` is loopback
//! # password_file = "secret"    # or read it from a file (first line), relative to this file
//! # tls_cert_file = "resp.pem"  # TLS on the port (Redis's tls-cert-file), with
//! # tls_key_file = "resp.key"   #   its key (tls-key-file); both or neither
//! # tls_ca_cert_file = "ca.pem" # clients must present a certificate this CA signed
//! #                             #   (tls-auth-clients yes): then no password is needed off loopback
//! # [[kv.users]]                # ACL users besides `default` (AUTH name password)
//! # name = "reporting"
//! # password_file = "reporting.secret"   # or password = "…"
//! # commands = "read"           # "all" (default) or "read": writes get -NOPERM
//! # commit_timeout_ms = 10000   # a write's reply waits at most this long for its commit
//! # max_request_bytes = 16777216
//! # max_clients = 10000         # as Redis's maxclients
//! # request_timeout_ms = 30000  # a request must be whole this long after it began
//! # snapshot_dir = "data/kv-snapshots"   # default: `kv-snapshots` in the node's data_dir
//! # snapshot_log_bytes = 67108864  # snapshot once this much log was applied since the last (0: not by size)
//! # snapshot_interval_ms = 300000  # or this long after the last, if anything changed (0: not by time)
//! # snapshot_commit_wait_ms = 10000  # a snapshot waits this long for its LSN to be committed
//! ```
//!
//! With both `snapshot_log_bytes` and `snapshot_interval_ms` at 0 no snapshot is taken:
//! the log is never recycled, and a restart replays all of it.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use walship_engine::Durability;
use walship_tools::config::{ConfigError, NodeConfig};

use crate::resp::Limits;
use crate::server::Settings;
use crate::snapshotter::Policy;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKv {
    listen: Option<String>,
    durability: Option<String>,
    password: Option<String>,
    password_file: Option<String>,
    tls_cert_file: Option<String>,
    tls_key_file: Option<String>,
    tls_ca_cert_file: Option<String>,
    users: Option<Vec<RawUser>>,
    commit_timeout_ms: Option<u64>,
    max_request_bytes: Option<usize>,
    max_clients: Option<u64>,
    request_timeout_ms: Option<u64>,
    snapshot_dir: Option<String>,
    snapshot_log_bytes: Option<u64>,
    snapshot_interval_ms: Option<u64>,
    snapshot_commit_wait_ms: Option<u64>,
}

/// One `[[kv.users]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    name: String,
    password: Option<String>,
    password_file: Option<String>,
    commands: Option<String>,
}

/// Where and when snapshots are taken.
#[derive(Debug, Clone)]
pub struct SnapshotConfig {
    /// The snapshot directory.
    pub dir: std::path::PathBuf,
    /// When.
    pub policy: Policy,
    /// The cluster is this node alone (no other member is configured): nothing it
    /// flushed is ever cut, so what it flushed bounds its snapshots rather than the
    /// committed point, which a node without followers never learns.
    pub alone: bool,
}

/// A walship-kv node's whole configuration.
#[derive(Debug)]
pub struct KvConfig {
    /// The replication node.
    pub node: NodeConfig,
    /// The RESP server.
    pub settings: Settings,
    /// Snapshots.
    pub snapshots: SnapshotConfig,
}

impl KvConfig {
    /// Reads and validates `path`.
    ///
    /// # Errors
    /// [`ConfigError`] naming the key and the problem.
    pub fn load(path: &Path) -> Result<KvConfig, ConfigError> {
        let file = path.display().to_string();
        let err = |problem: String| ConfigError {
            file: file.clone(),
            problem,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
        let base = path.parent().unwrap_or(Path::new("."));
        KvConfig::parse(&text, base).map_err(err)
    }

    /// Parses and validates `text`; relative paths are taken from `base`.
    ///
    /// # Errors
    /// What is wrong, starting with the key.
    pub fn parse(text: &str, base: &Path) -> Result<KvConfig, String> {
        let mut table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| e.to_string().trim_end().to_owned())?;
        let kv = match table.remove("kv") {
            None => RawKv::default(),
            Some(v) => v
                .try_into::<RawKv>()
                .map_err(|e| format!("`kv`: {}", e.to_string().trim_end()))?,
        };
        // The rest is a node configuration, read by the same code as `walship serve`'s.
        let rest = toml::to_string(&table).map_err(|e| e.to_string())?;
        let node = NodeConfig::parse(&rest, base)?;
        let bad = |key: &str, problem: String| format!("`kv.{key}`: {problem}");
        let defaults = Settings::default();
        let listen = match &kv.listen {
            None => defaults.listen,
            Some(l) => l.parse::<SocketAddr>().map_err(|_| {
                bad(
                    "listen",
                    format!("{l:?} is not an address like 127.0.0.1:6379"),
                )
            })?,
        };
        let durability = match &kv.durability {
            None => defaults.durability,
            Some(d) => d
                .parse::<Durability>()
                .map_err(|e| bad("durability", e.to_string()))?,
        };
        let password = match (kv.password, &kv.password_file) {
            (Some(_), Some(_)) => {
                return Err(bad(
                    "password",
                    "give `password` or `password_file`, not both".into(),
                ))
            }
            (Some(p), None) => Some(p),
            (None, Some(f)) => {
                let path = base.join(f);
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| bad("password_file", format!("{}: {e}", path.display())))?;
                Some(text.lines().next().unwrap_or("").to_owned())
            }
            (None, None) => None,
        };
        if password.as_deref().is_some_and(str::is_empty) {
            return Err(bad("password", "must not be empty".into()));
        }
        let mut users = Vec::new();
        for (i, u) in kv.users.unwrap_or_default().into_iter().enumerate() {
            let key = format!("users[{i}]");
            if u.name.is_empty()
                || u.name == "default"
                || u.name.bytes().any(|b| !(0x21..=0x7e).contains(&b))
            {
                return Err(bad(&key, format!("name {:?}: must be printable, without spaces, and not `default` (its password is `kv.password`)", u.name)));
            }
            if users.iter().any(|x: &crate::server::User| x.name == u.name) {
                return Err(bad(&key, format!("user {:?} is given twice", u.name)));
            }
            let password = match (u.password, &u.password_file) {
                (Some(p), None) => p,
                (None, Some(f)) => {
                    let path = base.join(f);
                    let text = std::fs::read_to_string(&path)
                        .map_err(|e| bad(&key, format!("password_file {}: {e}", path.display())))?;
                    text.lines().next().unwrap_or("").to_owned()
                }
                _ => {
                    return Err(bad(
                        &key,
                        "give `password` or `password_file`, one of them".into(),
                    ))
                }
            };
            if password.is_empty() {
                return Err(bad(&key, "the password must not be empty".into()));
            }
            let commands = match u.commands.as_deref() {
                None | Some("all") => crate::server::Commands::All,
                Some("read") => crate::server::Commands::Read,
                Some(other) => {
                    return Err(bad(
                        &key,
                        format!("commands {other:?}: expected \"all\" or \"read\""),
                    ))
                }
            };
            users.push(crate::server::User {
                name: u.name,
                password,
                commands,
            });
        }
        let mut limits = Limits::default();
        if let Some(m) = kv.max_request_bytes {
            if m < 1024 {
                return Err(bad("max_request_bytes", format!("{m} is below 1024")));
            }
            limits.max_request = m;
            limits.max_bulk = limits.max_bulk.min(m);
        }
        let commit_timeout = match kv.commit_timeout_ms {
            Some(0) => return Err(bad("commit_timeout_ms", "must be above 0".into())),
            Some(ms) => Duration::from_millis(ms),
            None => defaults.commit_timeout,
        };
        let max_clients = match kv.max_clients {
            Some(0) => return Err(bad("max_clients", "must be above 0".into())),
            Some(n) => n,
            None => defaults.max_clients,
        };
        let request_timeout = match kv.request_timeout_ms {
            Some(0) => return Err(bad("request_timeout_ms", "must be above 0".into())),
            Some(ms) => Duration::from_millis(ms),
            None => defaults.request_timeout,
        };
        let tls = match (&kv.tls_cert_file, &kv.tls_key_file) {
            (None, None) => {
                if kv.tls_ca_cert_file.is_some() {
                    return Err(bad(
                        "tls_ca_cert_file",
                        "needs `tls_cert_file` and `tls_key_file`".into(),
                    ));
                }
                None
            }
            (Some(cert), Some(key)) => {
                let files = crate::tls::TlsFiles {
                    cert: base.join(cert),
                    key: base.join(key),
                    client_ca: kv.tls_ca_cert_file.as_ref().map(|c| base.join(c)),
                };
                Some(crate::tls::RespTls::load(&files).map_err(|e| bad("tls_cert_file", e))?)
            }
            (Some(_), None) => {
                return Err(bad(
                    "tls_key_file",
                    "missing: `tls_cert_file` needs it".into(),
                ))
            }
            (None, Some(_)) => {
                return Err(bad(
                    "tls_cert_file",
                    "missing: `tls_key_file` needs it".into(),
                ))
            }
        };
        let settings = Settings {
            listen,
            durability,
            password,
            users,
            tls,
            limits,
            commit_timeout,
            max_clients,
            request_timeout,
            ..defaults
        };
        // The server's own check, refused here before anything starts.
        settings.check().map_err(|e| bad("listen", e))?;
        let default_policy = Policy::default();
        let policy = Policy {
            log_bytes: kv.snapshot_log_bytes.unwrap_or(default_policy.log_bytes),
            interval: kv
                .snapshot_interval_ms
                .map_or(default_policy.interval, Duration::from_millis),
            commit_wait: match kv.snapshot_commit_wait_ms {
                Some(0) => return Err(bad("snapshot_commit_wait_ms", "must be above 0".into())),
                Some(ms) => Duration::from_millis(ms),
                None => default_policy.commit_wait,
            },
        };
        let dir = match &kv.snapshot_dir {
            Some(d) if d.is_empty() => return Err(bad("snapshot_dir", "must not be empty".into())),
            Some(d) => base.join(d),
            None => node.data_dir.join("kv-snapshots"),
        };
        let alone = node.members.iter().all(|m| *m == node.node_id);
        Ok(KvConfig {
            node,
            settings,
            snapshots: SnapshotConfig { dir, policy, alone },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: &str = r#"
node_id = "n1"
data_dir = "data"
listen = "127.0.0.1:7400"
[tls]
ca = "ca.pem"
cert = "n1.pem"
key = "n1.key"
[coordinator]
kind = "static"
leader = "n1"
peers = { n1 = "127.0.0.1:7400" }
"#;

    #[test]
    fn the_kv_table_is_read_and_the_rest_is_a_node_configuration() {
        let c = KvConfig::parse(
            &format!("{NODE}\n[kv]\nlisten = \"127.0.0.1:7000\"\ndurability = \"remote-flush\"\n"),
            Path::new("/etc/kv"),
        )
        .unwrap();
        assert_eq!(c.node.node_id, "n1");
        assert_eq!(c.settings.listen.port(), 7000);
        assert_eq!(c.settings.durability, Durability::RemoteFlush);
        let c = KvConfig::parse(NODE, Path::new("/")).unwrap();
        assert_eq!(c.settings.durability, Durability::Local);
        assert_eq!(c.snapshots.dir, Path::new("/data/kv-snapshots"));
        assert_eq!(c.snapshots.policy, Policy::default());
        assert!(c.snapshots.alone, "n1 is the only member");
        let c = KvConfig::parse(
            &format!("{NODE}\n[kv]\nsnapshot_dir = \"snaps\"\nsnapshot_log_bytes = 0\nsnapshot_interval_ms = 1500\n"),
            Path::new("/etc/kv"),
        )
        .unwrap();
        assert_eq!(c.snapshots.dir, Path::new("/etc/kv/snaps"));
        assert_eq!(
            (c.snapshots.policy.log_bytes, c.snapshots.policy.interval),
            (0, Duration::from_millis(1500))
        );
    }

    #[test]
    fn problems_name_their_key() {
        let p = |kv: &str| {
            KvConfig::parse(&format!("{NODE}\n[kv]\n{kv}\n"), Path::new("/")).unwrap_err()
        };
        assert!(p("listen = \"0.0.0.0:6379\"")
            .starts_with("`kv.listen`: 0.0.0.0:6379 is not a loopback address"));
        assert!(p("durability = \"fast\"").starts_with("`kv.durability`"));
        assert!(
            p("colour = 1").contains("unknown field `colour`"),
            "{}",
            p("colour = 1")
        );
        assert!(p("password = \"\"").starts_with("`kv.password`: must not be empty"));
        assert!(p("max_clients = 0").starts_with("`kv.max_clients`: must be above 0"));
        assert!(p("request_timeout_ms = 0").starts_with("`kv.request_timeout_ms`: must be above 0"));
        assert!(p("snapshot_commit_wait_ms = 0").starts_with("`kv.snapshot_commit_wait_ms`"));
        assert!(p("snapshot_dir = \"\"").starts_with("`kv.snapshot_dir`: must not be empty"));
        assert!(p("snapshot_log_bytes = -1").contains("snapshot_log_bytes"));
        // A password makes a non-loopback listener acceptable.
        assert!(KvConfig::parse(
            &format!("{NODE}\n[kv]\nlisten = \"0.0.0.0:6379\"\npassword = \"s3cret\"\n"),
            Path::new("/")
        )
        .is_ok());
        // ACL users, and TLS files given by halves.
        let users = "[[kv.users]]\nname = \"app\"\npassword = \"pw\"\n[[kv.users]]\nname = \"ro\"\npassword = \"pw2\"\ncommands = \"read\"";
        let c = KvConfig::parse(
            &format!("{NODE}\n[kv]\nlisten = \"0.0.0.0:6379\"\n{users}\n"),
            Path::new("/"),
        )
        .unwrap();
        assert_eq!(
            c.settings.users.len(),
            2,
            "users make a non-loopback listener acceptable"
        );
        assert_eq!(c.settings.users[1].commands, crate::server::Commands::Read);
        assert!(p("[[kv.users]]\nname = \"default\"\npassword = \"x\"")
            .starts_with("`kv.users[0]`: name \"default\""));
        assert!(p("[[kv.users]]\nname = \"a\"").contains("give `password` or `password_file`"));
        assert!(
            p("[[kv.users]]\nname = \"a\"\npassword = \"x\"\ncommands = \"some\"")
                .contains("expected \"all\" or \"read\"")
        );
        assert!(p("[[kv.users]]\nname = \"a\"\npassword = \"x\"\n[[kv.users]]\nname = \"a\"\npassword = \"y\"").starts_with("`kv.users[1]`: user \"a\" is given twice"));
        assert!(p("tls_cert_file = \"c.pem\"").starts_with("`kv.tls_key_file`: missing"));
        assert!(p("tls_ca_cert_file = \"ca.pem\"").starts_with("`kv.tls_ca_cert_file`: needs"));
        assert!(
            p("tls_cert_file = \"nope.pem\"\ntls_key_file = \"nope.key\"").contains("nope.pem")
        );
        // The node part is checked as `walship serve` checks it.
        let e = KvConfig::parse(
            &NODE.replace("listen = \"127.0.0.1:7400\"", "listen = \"x\""),
            Path::new("/"),
        )
        .unwrap_err();
        assert!(e.starts_with("`listen`"), "{e}");
    }
}
