//! `walship-kv serve` as a process: a configuration file with a `[kv]` table, a Redis
//! client writing and reading, the admin endpoint refusing raw appends (they would put
//! records in the log that are not walship-kv's), a clean stop on SIGTERM, and a restart
//! that serves what was written. A bad configuration is refused naming its key.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use walship_transport::tls::ClusterCa;

fn free_port(udp: bool) -> u16 {
    if udp {
        std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    } else {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }
}

/// Writes certificates and a one-node configuration into `dir`; returns its path.
fn configure(dir: &Path) -> std::path::PathBuf {
    let ca = ClusterCa::generate("kv-serve").unwrap();
    std::fs::write(dir.join("ca.pem"), ca.cert_pem()).unwrap();
    let n1 = ca.issue_node("n1").unwrap();
    std::fs::write(dir.join("n1.pem"), n1.cert_chain_pem()).unwrap();
    std::fs::write(dir.join("n1.key"), n1.key_pem()).unwrap();
    let op = ca
        .issue(
            walship_transport::tls::Role::Operator,
            "op",
            Default::default(),
        )
        .unwrap();
    std::fs::write(dir.join("op.pem"), op.cert_chain_pem()).unwrap();
    std::fs::write(dir.join("op.key"), op.key_pem()).unwrap();
    let (repl, admin, resp) = (free_port(true), free_port(false), free_port(false));
    let cfg = format!(
        r#"node_id = "n1"
data_dir = "data"
listen = "127.0.0.1:{repl}"
admin = "127.0.0.1:{admin}"
[tls]
ca = "ca.pem"
cert = "n1.pem"
key = "n1.key"
[coordinator]
kind = "static"
leader = "n1"
peers = {{ n1 = "127.0.0.1:{repl}" }}
[kv]
listen = "127.0.0.1:{resp}"
durability = "local"
"#
    );
    let path = dir.join("n1.toml");
    std::fs::write(&path, cfg).unwrap();
    path
}

/// Starts the node and returns it with its RESP and admin addresses, once it announced
/// itself.
fn start(config: &Path) -> (Proc, String, String) {
    let mut child = Proc(Some(
        Command::new(env!("CARGO_BIN_EXE_walship-kv"))
            .args(["serve", "--config"])
            .arg(config)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    ));
    let stdout = child.0.as_mut().and_then(|c| c.stdout.take()).unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    assert!(
        line.starts_with("walship-kv: node n1 replicating on"),
        "{line}"
    );
    let resp = line.rsplit("RESP on ").next().unwrap().trim().to_owned();
    let admin = line
        .split("admin on https://")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap()
        .to_owned();
    (child, resp, admin)
}

/// The node's process: killed and reaped if the test ends without stopping it (a failed
/// assertion), so no node outlives its test.
struct Proc(Option<Child>);

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// SIGTERM, and a clean exit.
fn stop(mut proc: Proc) {
    let mut child = proc.0.take().unwrap();
    let pid = rustix::process::Pid::from_child(&child);
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
}

fn redis(addr: &str) -> redis::Connection {
    let client = redis::Client::open(format!("redis://{addr}/")).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match client.get_connection() {
            Ok(c) => return c,
            Err(e) if std::time::Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("connect {addr}: {e}"),
        }
    }
}

#[test]
fn the_binary_serves_stops_on_sigterm_and_restarts_with_its_data() {
    let tmp = tempfile::tempdir().unwrap();
    let config = configure(tmp.path());
    let (child, resp, admin) = start(&config);
    let mut con = redis(&resp);
    // A cluster of one confirms itself: writes are taken once it leads.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match redis::cmd("SET")
            .arg("k")
            .arg("v")
            .query::<String>(&mut con)
        {
            Ok(ok) => {
                assert_eq!(ok, "OK");
                break;
            }
            Err(e) if std::time::Instant::now() < deadline => {
                assert_eq!(e.code(), Some("READONLY"), "{e}");
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("{e}"),
        }
    }
    let n: i64 = redis::cmd("INCRBY")
        .arg("n")
        .arg(5)
        .query(&mut con)
        .unwrap();
    assert_eq!(n, 5);
    // An operator's raw append would put a record in the log that is not walship-kv's.
    let dir = tmp.path();
    let client =
        walship_tools::admin::client::Client::new(&walship_tools::admin::client::ClientTls {
            ca: Some(dir.join("ca.pem")),
            cert: Some(dir.join("op.pem")),
            key: Some(dir.join("op.key")),
            server_name: None,
        })
        .unwrap();
    let end = client
        .get::<serde_json::Value>(&admin, "/status", Duration::from_secs(10))
        .unwrap()["watermarks"]["end"]
        .clone();
    let refused = client
        .post::<serde_json::Value>(&admin, "/append", b"raw", Duration::from_secs(10))
        .unwrap_err();
    assert!(
        refused.contains("403") && refused.contains("walship-kv"),
        "{refused}"
    );
    let after = client
        .get::<serde_json::Value>(&admin, "/status", Duration::from_secs(10))
        .unwrap()["watermarks"]["end"]
        .clone();
    assert!(end.is_string(), "{end}");
    assert_eq!(end, after, "nothing was appended");
    drop(con);
    stop(child);

    let (child, resp, _) = start(&config);
    let mut con = redis(&resp);
    let got: Vec<Option<String>> = redis::cmd("MGET")
        .arg("k")
        .arg("n")
        .query(&mut con)
        .unwrap();
    assert_eq!(got, vec![Some("v".to_owned()), Some("5".to_owned())]);
    drop(con);
    stop(child);
}

#[test]
fn a_bad_kv_table_is_refused_naming_its_key() {
    let tmp = tempfile::tempdir().unwrap();
    let config = configure(tmp.path());
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("durability = \"local\"", "durability = \"soon\""),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_walship-kv"))
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`kv.durability`"), "{err}");
}
