//! Real nodes: `walship serve` in child processes with mutual TLS on loopback, written
//! to with `walship append`, watched with `status`, `lag` and `/metrics`, failed over
//! with `promote`, stopped with SIGTERM, then checked offline with `inspect`, `dump` and
//! `verify`.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{config, ok, status_until, streaming, walship};
use serde_json::Value;

#[test]
fn three_served_nodes_replicate_fail_over_and_stop_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (mut nodes, admin, _) = common::three_nodes(dir, "t", |_, _| {});
    let certs = dir.join("certs");
    let ids = ["n1", "n2", "n3"];
    let appended = ok(&["append", &admin[0], "-d", "remote-flush", "hello", "world"]);
    assert_eq!(appended.lines().count(), 2, "{appended}");
    assert!(appended.contains("remote-flush"), "{appended}");
    // What a RemoteFlush commit acknowledged is committed: the leader says so at once,
    // a follower once the leader's next frame told it.
    let last = appended
        .lines()
        .last()
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    let leader_view: Value = serde_json::from_str(&ok(&["status", &admin[0], "--json"])).unwrap();
    assert_eq!(leader_view["committed"], last, "{leader_view:#}");
    assert!(
        ok(&["status", &admin[0]]).contains(&format!("committed  {last} ")),
        "walship status prints it"
    );
    for a in &admin[1..] {
        status_until(a, "a follower learns the committed point", |v| {
            v["committed"] == last
        });
    }
    // A follower refuses writes, and says where to write.
    let refused = walship()
        .args(["append", &admin[1], "nope"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("write to the leader"));

    let lag = ok(&["lag", &admin[0]]);
    assert!(lag.starts_with("leader n1 epoch 1"), "{lag}");
    for header in [
        "follower",
        "state",
        "sync",
        "sent_lsn",
        "flush_lsn",
        "write_lag",
        "apply_time",
    ] {
        assert!(lag.contains(header), "{header} missing: {lag}");
    }
    assert_eq!(lag.matches("streaming").count(), 2, "{lag}");
    let watched = ok(&[
        "lag",
        &admin[0],
        "--watch",
        "--interval",
        "0.1",
        "--count",
        "2",
    ]);
    assert_eq!(
        watched.matches("\x1b[H\x1b[2J").count(),
        2,
        "redrawn in place twice"
    );
    let status = ok(&["status", &admin[1]]);
    assert!(status.contains("role       follower (epoch 1)"), "{status}");
    assert!(status.contains("leader     n1"), "{status}");
    assert!(
        walship()
            .args(["lag", &admin[1]])
            .output()
            .unwrap()
            .status
            .code()
            == Some(2)
    );

    // /metrics is Prometheus text.
    let body = common::client(&certs, "mon")
        .get_text(&admin[0], "/metrics", Duration::from_secs(5))
        .expect("GET /metrics");
    let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string())))
        .expect("Prometheus text format");
    let value = |name: &str| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name)
            .unwrap_or_else(|| panic!("{name} missing from {body}"))
            .value
            .clone()
    };
    assert!(matches!(value("walship_is_leader"), prometheus_parse::Value::Gauge(v) if v == 1.0));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        matches!(value("walship_certificate_expiry_timestamp_seconds"), prometheus_parse::Value::Gauge(v) if v > now + 80.0 * 86_400.0),
        "the node's certificate expires in about 90 days"
    );
    value("walship_follower_lag_bytes");
    value("walship_shipped_bytes_total");
    assert!(
        matches!(
            value("walship_commit_latency_seconds"),
            prometheus_parse::Value::Histogram(_)
        ),
        "commit latencies are a histogram"
    );

    // Renewing n1's certificate takes effect without a restart: /metrics reports the new
    // expiry, and replication (new handshakes included) goes on.
    let renewed = ok(&[
        "certs",
        "renew",
        "--out",
        certs.to_str().unwrap(),
        "n1",
        "--days",
        "30",
    ]);
    assert!(renewed.contains("renewed 1 certificate(s)"), "{renewed}");
    let expiry = || {
        let body = common::client(&certs, "mon")
            .get_text(&admin[0], "/metrics", Duration::from_secs(5))
            .unwrap();
        let scrape =
            prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).unwrap();
        match scrape
            .samples
            .iter()
            .find(|s| s.metric == "walship_certificate_expiry_timestamp_seconds")
            .map(|s| s.value.clone())
        {
            Some(prometheus_parse::Value::Gauge(v)) => v,
            other => panic!("{other:?}"),
        }
    };
    assert!(
        expiry() < now + 31.0 * 86_400.0,
        "the renewed certificate is in force"
    );
    ok(&["append", &admin[0], "-d", "remote-flush", "after-renewal"]);

    // Manual failover to n2; n1 and n3 are pointed at it.
    let promoted = ok(&[
        "promote",
        &admin[1],
        "--followers",
        &format!("{},{}", admin[0], admin[2]),
    ]);
    assert!(
        promoted.contains("n2 is the leader in epoch 2"),
        "{promoted}"
    );
    status_until(&admin[1], "n2 leads both others", |v| {
        v["role"] == "leader" && streaming(v, 2)
    });
    ok(&["append", &admin[1], "-d", "remote-apply", "after"]);
    let n1 = status_until(&admin[0], "n1 follows n2", |v| v["leader"] == "n2");
    assert_eq!(n1["role"], "follower");

    // A follower stopped with SIGTERM closes its connection: the leader sees it gone at
    // once, not after its idle timeout (10 s). A node still referenced at shutdown used
    // to exit without closing anything.
    let n3 = nodes.pop().expect("n3");
    let stopped = std::time::Instant::now();
    let (clean, last) = n3.stop();
    assert!(clean && last.contains("stopped (SIGTERM)"), "{last}");
    status_until(&admin[1], "n2 sees n3 gone", |v| {
        v["leading"]["followers"].as_array().is_some_and(|f| {
            f.iter()
                .any(|f| f["node_id"] == "n3" && f["state"] == "disconnected")
        })
    });
    assert!(
        stopped.elapsed() < Duration::from_secs(5),
        "the leader noticed after {:?}",
        stopped.elapsed()
    );
    for n in nodes.drain(..) {
        let (clean, last) = n.stop();
        assert!(clean, "exit status after SIGTERM");
        assert!(last.contains("stopped (SIGTERM)"), "{last}");
    }

    // Offline: the three logs hold the same records, all valid.
    for id in ids {
        let data = dir.join("data").join(id);
        let data = data.to_str().unwrap();
        assert!(ok(&["verify", data]).trim_end().ends_with("OK"));
        let dump = ok(&["dump", data]);
        for r in ["\"hello\"", "\"world\"", "\"after\""] {
            assert!(dump.contains(r), "{id}: {r} missing from {dump}");
        }
        let inspect: Value = serde_json::from_str(&ok(&["inspect", data, "--json"])).unwrap();
        let epochs = inspect["epoch_history"].as_array().map_or(0, Vec::len);
        assert_eq!(epochs, 2, "{id}: epochs 1 and 2 in {inspect:#}");
    }
}

/// Runs `walship serve --config config`, which must refuse it with exit code 2; returns
/// what it said.
fn refused(config: &Path) -> String {
    let out = walship()
        .args(["serve", "--config"])
        .arg(config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_broken_config_is_refused_naming_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let c = config(
        tmp.path(),
        "n1",
        "127.0.0.1:0",
        "127.0.0.1:0",
        "",
        "ANY 3 (n2)",
    );
    let err = refused(&c);
    assert!(err.contains("n1.toml: `replication.sync`"), "{err}");
    assert!(err.contains("only 1 standbys are listed"), "{err}");
    // Nothing was created.
    assert!(!tmp.path().join("data").exists());

    std::fs::write(&c, "node_id = \"n1\"\nlisten = 5\n").unwrap();
    let err = refused(&c);
    assert!(err.contains("listen"), "{err}");
}
