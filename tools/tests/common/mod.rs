//! Helpers shared by the tests that run `walship` processes.
#![allow(dead_code)]

use std::cell::RefCell;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use assert_cmd::cargo_bin_cmd;
use serde_json::Value;

thread_local! {
    /// The certificate this test thread's `walship` commands present: `(dir, name)`.
    static AS: RefCell<Option<(PathBuf, String)>> = const { RefCell::new(None) };
}

/// From now on, `walship` commands of this test present `dir/<name>.pem` (and the CA in
/// `dir`), as an operator would through WALSHIP_CERT, WALSHIP_KEY, WALSHIP_CA.
pub fn present(dir: &Path, name: &str) {
    AS.with(|a| *a.borrow_mut() = Some((dir.to_path_buf(), name.to_string())));
}

/// `walship`, presenting the certificate chosen with [`present`], if any.
pub fn walship() -> assert_cmd::Command {
    let mut c = cargo_bin_cmd!("walship");
    for v in [
        "WALSHIP_CA",
        "WALSHIP_CERT",
        "WALSHIP_KEY",
        "WALSHIP_SERVER_NAME",
    ] {
        c.env_remove(v);
    }
    AS.with(|a| {
        if let Some((dir, name)) = &*a.borrow() {
            c.env("WALSHIP_CA", dir.join("ca.pem"))
                .env("WALSHIP_CERT", dir.join(format!("{name}.pem")))
                .env("WALSHIP_KEY", dir.join(format!("{name}.key")));
        }
    });
    c
}

/// `walship certs` into `dir/certs` for `nodes`, an operator `op` and a monitor `mon`;
/// this test then presents the operator's certificate.
pub fn certs(dir: &Path, cluster: &str, nodes: &str) -> PathBuf {
    let certs = dir.join("certs");
    ok(&[
        "certs",
        "--out",
        certs.to_str().unwrap(),
        "--cluster",
        cluster,
        "--nodes",
        nodes,
        "--operators",
        "op",
        "--monitors",
        "mon",
    ]);
    present(&certs, "op");
    certs
}

/// The CLI's client, presenting `dir/<name>.pem`.
pub fn client(dir: &Path, name: &str) -> walship_tools::admin::client::Client {
    walship_tools::admin::client::Client::new(&walship_tools::admin::client::ClientTls {
        ca: Some(dir.join("ca.pem")),
        cert: Some(dir.join(format!("{name}.pem"))),
        key: Some(dir.join(format!("{name}.key"))),
        server_name: None,
    })
    .expect("client")
}

/// A TLS connection to the admin endpoint at `admin`, presenting `dir/<name>.pem`, for
/// tests that speak HTTP by hand.
pub fn tls(
    admin: &str,
    dir: &Path,
    name: &str,
) -> rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
    let read = |f: String| std::fs::read_to_string(dir.join(f)).unwrap();
    let identity = walship_transport::tls::NodeIdentity::from_pem(
        &read(format!("{name}.pem")),
        &read(format!("{name}.key")),
    )
    .unwrap();
    let config =
        walship_transport::tls::admin_client_config(&identity, &read("ca.pem".into()), None)
            .unwrap();
    let tcp = std::net::TcpStream::connect(admin).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(config, name).unwrap();
    rustls::StreamOwned::new(conn, tcp)
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
            first.contains(&format!("admin on https://{admin}")),
            "{first}"
        );
        s
    }

    /// The process id of the running `walship serve`.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// SIGTERM, then the exit status and the last line printed.
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

/// Replaces `from` with `to` in the file at `path` (a configuration), which must hold it.
pub fn edit(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "{from:?} not in {}", path.display());
    std::fs::write(path, text.replacen(from, to, 1)).unwrap();
}

/// Whether `v` (a leader's status) shows `n` streaming followers.
pub fn streaming(v: &Value, n: usize) -> bool {
    v["leading"]["followers"]
        .as_array()
        .is_some_and(|f| f.iter().filter(|f| f["state"] == "streaming").count() == n)
}

/// Three nodes n1 (the leader), n2, n3 of cluster `cluster`, `ANY 1 (*)`, with
/// certificates from [`certs`]; `tweak(id, config path)` may change each configuration
/// before its node starts. Returns the nodes, their admin and replication addresses.
pub fn three_nodes(
    dir: &Path,
    cluster: &str,
    tweak: impl Fn(&str, &Path),
) -> (Vec<Served>, Vec<String>, Vec<String>) {
    certs(dir, cluster, "n1,n2,n3");
    let ids = ["n1", "n2", "n3"];
    let listen: Vec<String> = ids.iter().map(|_| free_udp()).collect();
    let admin: Vec<String> = ids.iter().map(|_| free_tcp()).collect();
    let peers = ids
        .iter()
        .zip(&listen)
        .map(|(id, l)| format!("{id} = \"{l}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let nodes = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let c = config(dir, id, &listen[i], &admin[i], &peers, "ANY 1 (*)");
            tweak(id, &c);
            Served::start(&c, &admin[i])
        })
        .collect();
    status_until(&admin[0], "n1 leads with two streaming followers", |v| {
        v["role"] == "leader" && streaming(v, 2)
    });
    (nodes, admin, listen)
}

/// The records of the log in `data` (offline `walship dump`), as their payloads.
pub fn records(data: &Path) -> String {
    ok(&["dump", data.to_str().unwrap()])
}
