//! The RESP listener: accepts clients, runs a task per connection, and on the leader
//! runs the expiry that logs `Expired` for keys past their time. Every task it starts,
//! [`Server::shutdown`] stops and waits for.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use walship_engine::Durability;
use walship_transport::{Node, NodeRole};

use crate::conn::{Connection, Shared};
use crate::db::{now_ms, Db};
use crate::resp::Limits;

/// How the server behaves.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where clients connect. A non-loopback address needs a password.
    pub listen: SocketAddr,
    /// A connection's durability until it says otherwise (`WALSHIP.DURABILITY`).
    pub durability: Durability,
    /// The `default` user's password (`AUTH`); `None`: no authentication, which only a
    /// loopback listener allows.
    pub password: Option<String>,
    /// Named users besides `default` (`AUTH name password`), each with what it may run.
    /// With any, a connection starts unauthenticated even if `default` has no password
    /// (then `default` cannot log in: Redis's `nopass` is not offered).
    pub users: Vec<User>,
    /// Bounds on one request.
    pub limits: Limits,
    /// Longest wait for a write's commit before its reply is an error.
    pub commit_timeout: Duration,
    /// How often the leader looks for expired keys.
    pub expiry_interval: Duration,
    /// Most keys expired in one record.
    pub expiry_batch: usize,
    /// Most clients connected at once (Redis's `maxclients`); one more is told so and
    /// closed.
    pub max_clients: u64,
    /// Longest a request may take to arrive once it began; a connection whose request
    /// is not whole by then is closed.
    pub request_timeout: Duration,
    /// TLS on the port (every connection; `None`: plain TCP).
    pub tls: Option<crate::tls::RespTls>,
}

impl Settings {
    /// Whether the settings are safe to serve with: a listener off loopback needs a
    /// password, since anyone who reaches it could read and write.
    ///
    /// # Errors
    /// What is unsafe, naming the address.
    pub fn check(&self) -> Result<(), String> {
        let certified = self.tls.as_ref().is_some_and(|t| t.client_auth);
        let passwords = self.password.is_some() || !self.users.is_empty();
        if !passwords && !certified && !self.listen.ip().is_loopback() {
            return Err(format!(
                "{} is not a loopback address, and neither a password nor client certificates are required: anyone who can reach it could read and write",
                self.listen
            ));
        }
        Ok(())
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            listen: SocketAddr::from(([127, 0, 0, 1], 6379)),
            durability: Durability::Local,
            password: None,
            users: Vec::new(),
            limits: Limits::default(),
            commit_timeout: Duration::from_secs(10),
            expiry_interval: Duration::from_millis(100),
            expiry_batch: 1000,
            max_clients: 10_000,
            request_timeout: Duration::from_secs(30),
            tls: None,
        }
    }
}

/// A user besides `default`, as Redis's ACL users.
#[derive(Clone, PartialEq, Eq)]
pub struct User {
    /// Its name (`AUTH name password`); not `default`.
    pub name: String,
    /// Its password.
    pub password: String,
    /// What it may run.
    pub commands: Commands,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("name", &self.name)
            .field("commands", &self.commands)
            .finish_non_exhaustive()
    }
}

/// What a user may run: Redis's `+@all`, or `+@read` (with the connection commands
/// every client needs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commands {
    /// Everything.
    All,
    /// No command that writes; a write gets `-NOPERM`.
    Read,
}

/// Why the server did not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The listener could not be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The settings are not safe to run.
    #[error("{0}")]
    Settings(String),
}

/// A running RESP server.
pub struct Server {
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Binds `settings.listen` and serves `db` through `node` until shut down.
    ///
    /// # Errors
    /// [`ServerError::Bind`]; [`ServerError::Settings`] for a non-loopback listener
    /// without a password.
    pub async fn start(
        db: Arc<Db>,
        node: Arc<Node>,
        settings: Settings,
    ) -> Result<Server, ServerError> {
        settings.check().map_err(ServerError::Settings)?;
        let listener =
            TcpListener::bind(settings.listen)
                .await
                .map_err(|source| ServerError::Bind {
                    addr: settings.listen,
                    source,
                })?;
        let local_addr = listener.local_addr().map_err(|source| ServerError::Bind {
            addr: settings.listen,
            source,
        })?;
        let shared = Arc::new(Shared {
            db,
            node,
            settings,
            started: std::time::Instant::now(),
            started_unix: crate::db::now_ms() / 1000,
            next_id: AtomicU64::new(0),
            connected: AtomicU64::new(0),
            commands: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            local_addr,
        });
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run(listener, shared, stop_rx));
        tracing::info!(%local_addr, "serving RESP");
        Ok(Server {
            local_addr,
            stop,
            task,
        })
    }

    /// Where clients connect.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, closes every connection and the expiry, and waits for them.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Longest a client may take to finish its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

async fn run(listener: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut tasks = JoinSet::new();
    tasks.spawn(expiry(Arc::clone(&shared), stop.clone()));
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((mut socket, _peer)) => {
                    let _ = socket.set_nodelay(true);
                    shared.connections.fetch_add(1, Ordering::Relaxed);
                    if shared.connected.load(Ordering::Relaxed) >= shared.settings.max_clients {
                        // As Redis: an error, then the connection closes. Bounded: the
                        // write is small and the task is short.
                        tasks.spawn(async move {
                            use tokio::io::AsyncWriteExt;
                            let _ = tokio::time::timeout(
                                Duration::from_secs(1),
                                socket.write_all(b"-ERR max number of clients reached\r\n"),
                            )
                            .await;
                        });
                        continue;
                    }
                    let conn = Connection::new(Arc::clone(&shared));
                    let shared = Arc::clone(&shared);
                    let stop = stop.clone();
                    // Counted here, before the task runs: a burst cannot overshoot.
                    shared.connected.fetch_add(1, Ordering::Relaxed);
                    tasks.spawn(async move {
                        match shared.settings.tls.as_ref().map(|t| Arc::clone(&t.config)) {
                            None => conn.serve(socket, stop).await,
                            Some(config) => {
                                let accept = tokio_rustls::TlsAcceptor::from(config).accept(socket);
                                match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, accept).await {
                                    Ok(Ok(tls)) => conn.serve(tls, stop).await,
                                    Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake refused"),
                                    Err(_) => tracing::debug!("TLS handshake timed out"),
                                }
                            }
                        }
                        shared.connected.fetch_sub(1, Ordering::Relaxed);
                    });
                }
                Err(e) => {
                    // Out of descriptors, say: back off rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            // Reap finished connections as they end.
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    while tasks.join_next().await.is_some() {}
}

/// On the leader, logs `Expired` for due keys every `expiry_interval`.
async fn expiry(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(shared.settings.expiry_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        if !matches!(shared.node.role(), NodeRole::Leader { .. }) {
            continue;
        }
        loop {
            match shared.db.expire_due(now_ms(), shared.settings.expiry_batch) {
                Ok(n) => {
                    if n < shared.settings.expiry_batch {
                        break;
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "expiry");
                    break;
                }
            }
        }
    }
}
