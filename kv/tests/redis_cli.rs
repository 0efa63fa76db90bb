//! The real `redis-cli` (Debian's redis-tools) against a three-node cluster: SET on the
//! leader, `WALSHIP.WAITAPPLIED` then GET on a replica, `-READONLY` on a replica, WAIT,
//! MULTI/EXEC, expiry agreed by all nodes, and a failover after which the new leader
//! serves every acknowledged key.
//!
//! Needs `redis-cli` on the PATH. Without it the test says so and passes, so that
//! `cargo test` runs on a machine with only a Rust toolchain; CI installs redis-tools and
//! sets `WALSHIP_REQUIRE_REDIS_CLI=1`, which makes a missing `redis-cli` a failure.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use common::{eventually, have_redis_cli, stop_all, Cluster, WAIT};
use walship_engine::Durability;
use walship_transport::NodeRole;

/// Runs `redis-cli -p PORT` with `script` on its standard input (one connection, one
/// command per line, as redis-cli reads a pipe) and returns its output, off the
/// runtime's workers.
async fn cli(addr: SocketAddr, script: &str) -> String {
    let script = script.to_owned();
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut child = Command::new("redis-cli")
            .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run redis-cli");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(script.as_bytes())
            .expect("write script");
        let out = child.wait_with_output().expect("redis-cli output");
        assert!(out.status.success(), "redis-cli failed: {:?}", out);
        String::from_utf8_lossy(&out.stdout).into_owned()
    })
    .await
    .expect("redis-cli task")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cli_against_three_nodes() {
    if !have_redis_cli() {
        return;
    }
    let c = Cluster::new(3);
    let nodes = c.start_all(Durability::RemoteFlush).await;
    let (n1, n2, n3) = (
        nodes[0].resp_addr(),
        nodes[1].resp_addr(),
        nodes[2].resp_addr(),
    );

    let out = cli(
        n1,
        "PING\nSET greeting hello\nSET ttl v PX 300\nWALSHIP.TOKEN\nWAIT 2 5000\n",
    )
    .await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(&lines[..3], &["PONG", "OK", "OK"], "{out}");
    let token = lines[3];
    assert!(token.starts_with("1@"), "{out}");
    assert_eq!(lines[4], "2", "{out}");

    // Read-your-writes on a replica.
    let out = cli(
        n2,
        &format!("WALSHIP.WAITAPPLIED {token} 5000\nGET greeting\nSET x 1\n"),
    )
    .await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(&lines[..2], &["OK", "hello"], "{out}");
    assert!(
        lines[2].starts_with("READONLY You can't write against a read only replica."),
        "{out}"
    );

    // MULTI/EXEC.
    let out = cli(n1, "MULTI\nINCR c\nINCRBY c 9\nGET c\nEXEC\n").await;
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["OK", "QUEUED", "QUEUED", "QUEUED", "1", "10", "10"],
        "{out}"
    );

    // Expiry, agreed by every node.
    tokio::time::sleep(Duration::from_millis(400)).await;
    for addr in [n1, n2, n3] {
        let mut out = String::new();
        for _ in 0..300 {
            out = cli(addr, "EXISTS ttl\nDBSIZE\n").await;
            if out == "0\n2\n" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(out, "0\n2\n", "{addr}: the expired key is gone and removed");
    }

    // Failover: n2 leads and serves every acknowledged key.
    let epoch = nodes[1].node().promote().await.expect("promote");
    nodes[1]
        .node()
        .wait_for_role(|r| *r == NodeRole::Leader { epoch }, WAIT)
        .await
        .expect("n2 leads");
    let out = cli(n2, "GET greeting\nGET c\nSET after failover\nWAIT 1 5000\n").await;
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["hello", "10", "OK", "1"],
        "{out}"
    );
    let db = std::sync::Arc::clone(nodes[0].db());
    eventually("n1 follows and has the new write", || {
        db.get(b"after").is_some()
    })
    .await;
    let out = cli(n1, "SET y 1\n").await;
    assert!(out.contains("The leader is n2"), "{out}");
    stop_all(nodes).await;
}
