//! What the server says about itself: `INFO` in Redis's field names (so monitoring that
//! reads Redis reads this), `ROLE`, `COMMAND`, `CONFIG GET`.
//!
//! Replication positions are LSNs as integers: `master_repl_offset` is the leader's log
//! end, a replica's `slave_repl_offset` what it flushed.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use walship_transport::NodeRole;

use crate::conn::Shared;
use crate::glob;
use crate::resp::Reply;

/// The Redis version reported to clients, which some check before using a command.
pub(crate) const REDIS_VERSION: &str = "7.2.0";

/// A command's `COMMAND` entry: name, arity (negative: at least), flags, first key,
/// last key, step.
type Spec = (&'static str, i64, &'static [&'static str], i64, i64, i64);

const COMMANDS: &[Spec] = &[
    ("get", 2, &["readonly", "fast"], 1, 1, 1),
    ("mget", -2, &["readonly", "fast"], 1, -1, 1),
    ("exists", -2, &["readonly", "fast"], 1, -1, 1),
    ("strlen", 2, &["readonly", "fast"], 1, 1, 1),
    ("ttl", 2, &["readonly", "fast"], 1, 1, 1),
    ("pttl", 2, &["readonly", "fast"], 1, 1, 1),
    ("type", 2, &["readonly", "fast"], 1, 1, 1),
    ("dbsize", 1, &["readonly", "fast"], 0, 0, 0),
    ("bgsave", -1, &["admin", "noscript"], 0, 0, 0),
    ("lastsave", 1, &["random", "fast"], 0, 0, 0),
    ("scan", -2, &["readonly"], 0, 0, 0),
    ("keys", 2, &["readonly"], 0, 0, 0),
    ("set", -3, &["write", "denyoom"], 1, 1, 1),
    ("getdel", 2, &["write", "fast"], 1, 1, 1),
    ("del", -2, &["write"], 1, -1, 1),
    ("mset", -3, &["write", "denyoom"], 1, -1, 2),
    ("incr", 2, &["write", "denyoom", "fast"], 1, 1, 1),
    ("incrby", 3, &["write", "denyoom", "fast"], 1, 1, 1),
    ("decr", 2, &["write", "denyoom", "fast"], 1, 1, 1),
    ("decrby", 3, &["write", "denyoom", "fast"], 1, 1, 1),
    ("append", 3, &["write", "denyoom", "fast"], 1, 1, 1),
    ("expire", -3, &["write", "fast"], 1, 1, 1),
    ("pexpire", -3, &["write", "fast"], 1, 1, 1),
    ("persist", 2, &["write", "fast"], 1, 1, 1),
    ("ping", -1, &["fast"], 0, 0, 0),
    ("echo", 2, &["fast"], 0, 0, 0),
    ("hello", -1, &["noauth", "fast"], 0, 0, 0),
    ("auth", -2, &["noauth", "fast"], 0, 0, 0),
    ("select", 2, &["loading", "fast"], 0, 0, 0),
    ("quit", -1, &["noauth", "fast"], 0, 0, 0),
    ("client", -2, &["admin"], 0, 0, 0),
    ("acl", -2, &["admin", "noscript", "loading"], 0, 0, 0),
    ("command", -1, &["loading"], 0, 0, 0),
    ("config", -2, &["admin"], 0, 0, 0),
    ("info", -1, &["loading"], 0, 0, 0),
    ("role", 1, &["noscript", "fast"], 0, 0, 0),
    ("multi", 1, &["fast"], 0, 0, 0),
    ("exec", 1, &["noscript"], 0, 0, 0),
    ("discard", 1, &["fast"], 0, 0, 0),
    ("wait", 3, &["noscript"], 0, 0, 0),
    ("walship.durability", -1, &["fast"], 0, 0, 0),
    ("walship.token", 1, &["fast"], 0, 0, 0),
    ("walship.waitapplied", 3, &["readonly"], 0, 0, 0),
];

fn entry(&(name, arity, flags, first, last, step): &Spec) -> Reply {
    Reply::Array(vec![
        Reply::text(name),
        Reply::Int(arity),
        Reply::Array(flags.iter().map(|f| Reply::Status((*f).into())).collect()),
        Reply::Int(first),
        Reply::Int(last),
        Reply::Int(step),
    ])
}

/// `COMMAND [COUNT|DOCS|INFO …]`.
pub(crate) fn command(sub: Option<&str>) -> Reply {
    match sub {
        None | Some("info") => Reply::Array(COMMANDS.iter().map(entry).collect()),
        Some("count") => Reply::Int(COMMANDS.len() as i64),
        // redis-cli asks for docs to offer hints; none are kept here.
        Some("docs") => Reply::Map(Vec::new()),
        Some(other) => Reply::error(format!(
            "ERR unknown subcommand '{other}'. Try COMMAND HELP."
        )),
    }
}

/// `CONFIG GET pattern …`: the few parameters clients and tools ask about.
pub(crate) fn config_get(shared: &Shared, patterns: &[Bytes]) -> Reply {
    let durability = shared.settings.durability.as_str().to_owned();
    let params = [
        ("appendonly", "yes".to_owned()),
        ("appendfsync", "always".to_owned()),
        ("save", String::new()),
        ("databases", "1".to_owned()),
        ("port", shared.local_addr.port().to_string()),
        ("walship-durability", durability),
    ];
    let mut pairs = Vec::new();
    for (name, value) in &params {
        if patterns
            .iter()
            .any(|p| glob::matches(&p.to_ascii_lowercase(), name.as_bytes()))
        {
            pairs.push((Reply::text(*name), Reply::text(value.clone())));
        }
    }
    Reply::Map(pairs)
}

fn host_port(addr: &str) -> (String, String) {
    match addr.rsplit_once(':') {
        Some((h, p)) => (h.trim_matches(['[', ']']).to_owned(), p.to_owned()),
        None => (addr.to_owned(), "0".to_owned()),
    }
}

/// `ROLE`, as Redis answers it.
pub(crate) fn role(shared: &Shared) -> Reply {
    let status = shared.node.status();
    if let Some(l) = status.leading {
        let replicas = l
            .followers
            .iter()
            .filter(|f| f.addr.is_some())
            .map(|f| {
                let addr = f.addr.map(|a| a.to_string()).unwrap_or_default();
                let (host, port) = host_port(&addr);
                Reply::Array(vec![
                    Reply::text(host),
                    Reply::text(port),
                    Reply::text(f.flush.get().to_string()),
                ])
            })
            .collect();
        return Reply::Array(vec![
            Reply::text("master"),
            Reply::Int(l.watermarks.end.get() as i64),
            Reply::Array(replicas),
        ]);
    }
    let (host, port) = match &status.role {
        NodeRole::Follower { addr, .. } => (addr.ip().to_string(), i64::from(addr.port())),
        _ => (String::new(), -1),
    };
    let (state, offset) = status.following.as_ref().map_or(("connect", -1), |f| {
        (
            if f.connected {
                "connected"
            } else {
                "connecting"
            },
            f.watermarks.flushed.get() as i64,
        )
    });
    Reply::Array(vec![
        Reply::text("slave"),
        Reply::text(host),
        Reply::Int(port),
        Reply::text(state),
        Reply::Int(offset),
    ])
}

/// The text of `INFO [section …]`: `server`, `clients`, `replication`, `persistence`,
/// `stats`, `keyspace` (all by default; `all`/`everything`/`default` as Redis).
pub(crate) fn info(shared: &Shared, sections: &[String]) -> String {
    let want = |s: &str| {
        sections.is_empty()
            || sections
                .iter()
                .any(|x| x == s || x == "all" || x == "everything" || x == "default")
    };
    let mut out = String::new();
    let status = shared.node.status();
    let wm = shared.db.log().watermarks();
    if want("server") {
        let _ = write!(
            out,
            "# Server\r\nredis_version:{REDIS_VERSION}\r\nwalship_kv_version:{}\r\nredis_mode:standalone\r\nos:{}\r\narch_bits:64\r\nprocess_id:{}\r\ntcp_port:{}\r\nuptime_in_seconds:{}\r\nwalship_node_id:{}\r\n\r\n",
            env!("CARGO_PKG_VERSION"),
            std::env::consts::OS,
            std::process::id(),
            shared.local_addr.port(),
            shared.started.elapsed().as_secs(),
            status.node_id,
        );
    }
    if want("clients") {
        let _ = write!(
            out,
            "# Clients\r\nconnected_clients:{}\r\n\r\n",
            shared.connected.load(Ordering::Relaxed)
        );
    }
    if want("persistence") {
        // Redis's RDB fields describe the snapshots: what changed since the one in place
        // is the log applied after it, in bytes.
        let snap = shared.db.snapshot_status();
        let applied = shared.db.read().applied();
        let _ = write!(
            out,
            "# Persistence\r\nloading:0\r\naof_enabled:1\r\nrdb_changes_since_last_save:{}\r\nrdb_bgsave_in_progress:{}\r\nrdb_last_save_time:{}\r\nrdb_last_bgsave_status:{}\r\nrdb_last_bgsave_time_sec:{}\r\nrdb_saves:{}\r\nwalship_snapshot_lsn:{}\r\nwalship_snapshot_last_error:{}\r\nwalship_durability_default:{}\r\nwalship_log_start:{}\r\nwalship_log_end:{}\r\nwalship_log_flushed:{}\r\nwalship_log_checkpoint:{}\r\n\r\n",
            applied.get().saturating_sub(snap.lsn.get()),
            u8::from(snap.in_progress),
            snap.saved_at,
            if snap.last_error.is_some() { "err" } else { "ok" },
            snap.last_took.as_secs(),
            snap.taken,
            snap.lsn.get(),
            // One line: an error's own line breaks would end the field.
            snap.last_error.as_deref().unwrap_or("").replace(['\r', '\n'], " "),
            shared.settings.durability.as_str(),
            wm.start.get(),
            wm.end.get(),
            wm.flushed.get(),
            wm.checkpoint.get(),
        );
    }
    if want("stats") {
        let _ = write!(
            out,
            "# Stats\r\ntotal_connections_received:{}\r\ntotal_commands_processed:{}\r\nexpired_keys:{}\r\n\r\n",
            shared.connections.load(Ordering::Relaxed),
            shared.commands.load(Ordering::Relaxed),
            // The key space's count: a replica counts the leader's expiry as it applies it.
            shared.db.read().expired_count(),
        );
    }
    if want("replication") {
        out.push_str("# Replication\r\n");
        match (&status.role, &status.leading, &status.following) {
            (NodeRole::Leader { epoch }, Some(l), _) => {
                let online: Vec<_> = l.followers.iter().filter(|f| f.addr.is_some()).collect();
                let _ = write!(out, "role:master\r\nconnected_slaves:{}\r\n", online.len());
                for (i, f) in online.iter().enumerate() {
                    let addr = f.addr.map(|a| a.to_string()).unwrap_or_default();
                    let (ip, port) = host_port(&addr);
                    let _ = write!(
                        out,
                        "slave{i}:ip={ip},port={port},state=online,offset={},lag={},walship_node_id={},write={},apply={}\r\n",
                        f.flush.get(),
                        f.lag.flush.map_or(0, |d| d.as_secs()),
                        f.node_id,
                        f.write.get(),
                        f.apply.get(),
                    );
                }
                let _ = write!(
                    out,
                    "master_repl_offset:{}\r\nwalship_epoch:{}\r\nwalship_sync_policy:{}\r\nwalship_quorum_flushed:{}\r\n",
                    wm.end.get(),
                    epoch.get(),
                    l.sync_policy,
                    wm.remote_flushed.get(),
                );
            }
            (NodeRole::Follower { leader, addr }, _, f) => {
                let _ = write!(
                    out,
                    "role:slave\r\nmaster_host:{}\r\nmaster_port:{}\r\nmaster_link_status:{}\r\nmaster_last_io_seconds_ago:{}\r\nslave_repl_offset:{}\r\nslave_read_repl_offset:{}\r\nslave_read_only:1\r\nconnected_slaves:0\r\nmaster_repl_offset:{}\r\nwalship_leader:{leader}\r\nwalship_applied:{}\r\nwalship_lag_bytes:{}\r\n",
                    addr.ip(),
                    addr.port(),
                    if f.as_ref().is_some_and(|f| f.connected) { "up" } else { "down" },
                    f.as_ref().and_then(|f| f.since_last_message).map_or(-1, |d| d.as_secs() as i64),
                    wm.flushed.get(),
                    wm.end.get(),
                    wm.end.get(),
                    f.as_ref().map_or(0, |f| f.applied.get()),
                    f.as_ref().map_or(0, |f| f.leader_end.get().saturating_sub(f.applied.get())),
                );
            }
            _ => {
                let _ = write!(
                    out,
                    "role:slave\r\nmaster_link_status:down\r\nwalship_role:{}\r\nmaster_repl_offset:{}\r\n",
                    status.role.as_str(),
                    wm.end.get()
                );
            }
        }
        out.push_str("\r\n");
    }
    if want("keyspace") {
        out.push_str("# Keyspace\r\n");
        let store = shared.db.read();
        if !store.is_empty() {
            let _ = write!(
                out,
                "db0:keys={},expires={},avg_ttl=0\r\n",
                store.len(),
                store.volatile()
            );
        }
    }
    out
}
