//! Helpers shared by the tests that run `walship` processes.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use assert_cmd::cargo_bin_cmd;
use serde_json::Value;

pub fn walship() -> assert_cmd::Command {
    cargo_bin_cmd!("walship")
}

/// Runs `walship args…`, expecting success; returns standard output.
pub fn ok(args: &[&str]) -> String {
    let out = walship().args(args).output().expect("run walship");
    assert!(
        out.status.success(),
        "walship {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

pub fn free_udp() -> String {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap().to_string()
}

pub fn free_tcp() -> String {
    let s = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap().to_string()
}

/// A `walship serve` child, stopped with SIGTERM (or killed, if the test failed first).
pub struct Served {
    child: Option<Child>,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Served {
    pub fn start(config: &Path, admin: &str) -> Served {
        let mut child = Command::new(assert_cmd::cargo::cargo_bin!("walship"))
            .args(["serve", "--config"])
            .arg(config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn walship serve");
        let out = child.stdout.take().expect("stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        let s = Served {
            child: Some(child),
            lines,
        };
        let first = s
            .lines
            .recv_timeout(Duration::from_secs(30))
            .expect("walship serve announces itself");
        assert!(
            first.contains(&format!("admin on http://{admin}")),
            "{first}"
        );
        s
    }

    /// SIGTERM, then the exit status and the last line printed.
    /// The process id of the running `walship serve`.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn stop(mut self) -> (bool, String) {
        let mut child = self.child.take().expect("running");
        let ok = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok);
        let status = child.wait().expect("wait");
        let last = self
            .lines
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_default();
        (status.success(), last)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn config(dir: &Path, id: &str, listen: &str, admin: &str, peers: &str, sync: &str) -> PathBuf {
    let path = dir.join(format!("{id}.toml"));
    std::fs::write(
        &path,
        format!(
            r#"node_id = "{id}"
data_dir = "data/{id}"
listen = "{listen}"
admin = "{admin}"

[tls]
ca = "certs/ca.pem"
cert = "certs/{id}.pem"
key = "certs/{id}.key"

[replication]
sync = "{sync}"
remote_commit_timeout_ms = 5000

[log]
segment_bytes = 1048576

[coordinator]
kind = "static"
leader = "n1"
peers = {{ {peers} }}
"#
        ),
    )
    .unwrap();
    path
}

/// Polls `walship status --json` on `admin` until `pred` holds.
pub fn status_until(admin: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v: Value = serde_json::from_str(&ok(&["status", admin, "--json"])).unwrap();
        if pred(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: last status {v:#}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
