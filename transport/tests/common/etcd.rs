//! A real etcd (Debian's `etcd-server`) on free loopback ports with a temporary data
//! directory, killed on drop.

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use walship_transport::coordinator::EtcdCoordinator;

/// A free loopback port (bound, then released for etcd to take).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a: SocketAddr| a.port())
        .expect("a free port")
}

/// A running etcd, killed on drop.
pub struct Etcd {
    pub child: Child,
    pub endpoint: String,
    _dir: tempfile::TempDir,
}

impl Etcd {
    pub fn start() -> Option<Etcd> {
        if Command::new("etcd").arg("--version").output().is_err() {
            eprintln!("SKIPPED: `etcd` is not installed (apt-get install -y etcd-server); nothing was checked");
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let (client, peer) = (free_port(), free_port());
        let endpoint = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child = Command::new("etcd")
            .args(["--name", "t", "--data-dir"])
            .arg(dir.path())
            .args(["--listen-client-urls", &endpoint])
            .args(["--advertise-client-urls", &endpoint])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("t={peer_url}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn etcd");
        Some(Etcd {
            child,
            endpoint,
            _dir: dir,
        })
    }

    pub async fn connect(&self, cluster: &str, ttl: Duration) -> EtcdCoordinator {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match EtcdCoordinator::connect(std::slice::from_ref(&self.endpoint), cluster, ttl).await
            {
                Ok(c) => return c,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("etcd at {} never answered: {e}", self.endpoint),
            }
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
