//! The driver: binds the sans-I/O sessions to quinn, tokio and the engine.
//!
//! - [`Leader`] listens for followers; one task per follower reads the engine log with a
//!   tailing reader (catch-up from disk and live streaming are the same loop), compresses
//!   runs of batches, ships them within the session's unacknowledged window, and turns
//!   acknowledgements into quorum watermarks, retention-slot positions and lag.
//! - [`Follower`] connects to its leader, appends what it receives verbatim, acknowledges
//!   what it wrote, flushed and applied, runs the embedder's [`Apply`] callback on a thread
//!   of its own in LSN order, and reconnects with back-off after any fault.
//!
//! Both need to be started inside a Tokio runtime (multi-threaded recommended: the
//! follower's appends and the leader's compression are CPU work done on its threads).

mod bootstrap;
mod follower;
mod frames;
mod leader;
mod pipeline;

pub(crate) use follower::load_seen_epoch;
pub use follower::{Apply, ApplyError, Follower, FollowerOptions, SEEN_EPOCH_FILE};
pub use leader::{Leader, LeaderOptions, MAX_CONNECTIONS_PER_FOLLOWER, MAX_FOLLOWER_CONNECTIONS};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::compress::CodecError;
use crate::quorum::PolicyError;
use crate::session::SessionError;
use crate::slots::SlotError;
use crate::tls::{self, Credentials, NodeIdentity, TlsError, Trust};

/// Application close code: orderly shutdown.
pub(crate) const CLOSE_SHUTDOWN: u32 = 0;
/// Application close code: the session ended on an error or a refusal.
pub(crate) const CLOSE_ERROR: u32 = 1;

/// How nodes authenticate each other: this node's certificate, and whom it trusts.
#[derive(Debug, Clone)]
pub struct Security {
    credentials: Arc<Credentials>,
    mode: Mode,
}

#[derive(Debug, Clone)]
enum Mode {
    /// Mutual TLS against a CA given as PEM: every node of the cluster is a member.
    CaPem(String),
    /// Mutual TLS with a shared [`Trust`]: members, revocation list.
    Trust(Arc<Trust>),
    /// No verification of peers.
    InsecureForTestsOnly,
}

impl Security {
    /// Mutual TLS with `identity` against the CA in `ca_pem`: peers must present node
    /// certificates of this cluster issued by that CA. Every such node is a member; see
    /// [`with_trust`](Self::with_trust) to name the members and revoke certificates.
    pub fn mutual_tls(identity: NodeIdentity, ca_pem: &str) -> Security {
        Security {
            credentials: Credentials::fixed(identity),
            mode: Mode::CaPem(ca_pem.to_owned()),
        }
    }

    /// Mutual TLS with `identity`, admitting the peers `trust` admits (members only, not
    /// revoked). One `Trust` is meant to be shared by every role a node takes, so a
    /// change of members or of the revocation list applies to all of them.
    pub fn with_trust(identity: NodeIdentity, trust: Arc<Trust>) -> Security {
        Security::with_credentials(Credentials::fixed(identity), trust)
    }

    /// As [`with_trust`](Self::with_trust), presenting `credentials`: certificate files
    /// re-read when they change ([`Credentials::from_files`]), so a renewed certificate
    /// takes effect without a restart.
    pub fn with_credentials(credentials: Arc<Credentials>, trust: Arc<Trust>) -> Security {
        Security {
            credentials,
            mode: Mode::Trust(trust),
        }
    }

    /// **DANGEROUS — tests only.** The leader accepts any client and the follower any
    /// server certificate: anyone who can reach the port can read or feed the log.
    /// `identity` is still presented by the leader, and ids come from it.
    pub fn insecure_for_tests_only(identity: NodeIdentity) -> Security {
        Security {
            credentials: Credentials::fixed(identity),
            mode: Mode::InsecureForTestsOnly,
        }
    }

    /// This node's certificate and key, as its handshakes present them.
    pub fn credentials(&self) -> &Arc<Credentials> {
        &self.credentials
    }

    /// This node's certificate in force.
    pub fn identity(&self) -> NodeIdentity {
        self.credentials.identity()
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.credentials.peer_id().node_id
    }

    /// The cluster's id.
    pub fn cluster_id(&self) -> &str {
        &self.credentials.peer_id().cluster_id
    }

    /// Whom this node trusts (`None` in the insecure test mode).
    ///
    /// # Errors
    /// The CA certificate does not parse.
    pub fn trust(&self) -> Result<Option<Arc<Trust>>, TlsError> {
        match &self.mode {
            Mode::CaPem(pem) => Ok(Some(Arc::new(Trust::new(pem, self.cluster_id())?))),
            Mode::Trust(t) => Ok(Some(Arc::clone(t))),
            Mode::InsecureForTestsOnly => Ok(None),
        }
    }

    /// The members this node admits, when it names them ([`with_trust`](Self::with_trust)).
    pub fn members(&self) -> Option<&tls::MemberSet> {
        match &self.mode {
            Mode::Trust(t) => Some(t.members()),
            Mode::CaPem(_) | Mode::InsecureForTestsOnly => None,
        }
    }

    /// Whether `node` may replicate: a member of the cluster.
    pub(crate) fn is_member(&self, node: &str) -> bool {
        match &self.mode {
            Mode::Trust(t) => t.members().contains(node),
            Mode::CaPem(_) | Mode::InsecureForTestsOnly => true,
        }
    }

    /// Refuses to replicate `log` if it records another cluster or node than this
    /// certificate names (a copy of another node's or cluster's data).
    pub(crate) fn check_log(&self, log: &walship_engine::Log) -> Result<(), TransportError> {
        match log.identity() {
            Some(id) if id.cluster_id != self.cluster_id() || id.node_id != self.node_id() => {
                Err(TransportError::InvalidOptions(format!(
                    "the log in {} is {id}, but this node's certificate is node {} of cluster {}",
                    log.dir().display(),
                    self.node_id(),
                    self.cluster_id()
                )))
            }
            _ => Ok(()),
        }
    }

    fn check_own_certificate(&self) -> Result<(), TlsError> {
        let me = self.credentials.peer_id();
        if me.role != tls::Role::Node {
            return Err(TlsError::WrongRole {
                peer: me.to_string(),
                role: me.role,
                allowed: "node certificates".into(),
            });
        }
        Ok(())
    }

    /// The listener's config, admitting what `trust` (this node's [`trust`](Self::trust))
    /// admits.
    fn server_config(&self, trust: Option<&Arc<Trust>>) -> Result<quinn::ServerConfig, TlsError> {
        self.check_own_certificate()?;
        match trust {
            Some(t) => tls::server_config_with(&self.credentials, t),
            None => tls::insecure_server_config_for_tests_only(&self.credentials.identity()),
        }
    }

    fn client_config(&self, trust: Option<&Arc<Trust>>) -> Result<quinn::ClientConfig, TlsError> {
        self.check_own_certificate()?;
        match trust {
            Some(t) => tls::client_config_with(&self.credentials, t),
            None => tls::insecure_client_config_for_tests_only(),
        }
    }

    fn verifies_peers(&self) -> bool {
        !matches!(self.mode, Mode::InsecureForTestsOnly)
    }
}

/// Why the driver could not start or a session ended.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// Certificates or TLS configuration.
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    /// A socket operation.
    #[error("{op} {addr}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The address involved.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The local log refused an operation.
    #[error("local log: {0}")]
    Engine(#[from] walship_engine::Error),
    /// The replication protocol ended the session.
    #[error("session with {peer}: {source}")]
    Session {
        /// The peer's address.
        peer: SocketAddr,
        /// Why.
        source: SessionError,
    },
    /// Compressed data from the peer was invalid.
    #[error("data from {peer}: {source}")]
    Codec {
        /// The peer's address.
        peer: SocketAddr,
        /// Why.
        source: CodecError,
    },
    /// The QUIC connection failed or was closed.
    #[error("connection with {peer}: {reason}")]
    Connection {
        /// The peer's address.
        peer: SocketAddr,
        /// quinn's explanation.
        reason: String,
    },
    /// Nothing happened for too long.
    #[error("{what} with {peer} timed out after {after:?}")]
    Timeout {
        /// What was awaited.
        what: &'static str,
        /// The peer's address.
        peer: SocketAddr,
        /// How long was waited.
        after: Duration,
    },
    /// The retention slot store.
    #[error("retention slots: {0}")]
    Slots(#[from] SlotError),
    /// The sync policy.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The options are inconsistent.
    #[error("invalid options: {0}")]
    InvalidOptions(String),
    /// A planned switchover could not complete; this node is still the leader.
    #[error("switchover to {node} abandoned: {reason}")]
    Switchover {
        /// The intended new leader.
        node: String,
        /// Why.
        reason: String,
    },
    /// The coordinator could not be asked or refused.
    #[error(transparent)]
    Coordinator(#[from] crate::coordinator::CoordinatorError),
    /// The embedder could not apply the log's records before this node led: it does not
    /// lead with a state missing records.
    #[error("applying the record at {lsn} before leading: {reason}")]
    Apply {
        /// Where applying stopped.
        lsn: walship_engine::Lsn,
        /// Why.
        reason: String,
    },
    /// A node did not take the awaited role in time.
    #[error("node {node} is still {role} after {after:?}")]
    RoleTimeout {
        /// The node.
        node: String,
        /// The role it holds.
        role: &'static str,
        /// How long was waited.
        after: Duration,
    },
    /// A peer claimed an epoch the coordinator never granted (or that could not be
    /// verified): it is not believed.
    #[error("{peer}: {reason}")]
    UnverifiedEpoch {
        /// The peer.
        peer: SocketAddr,
        /// What was claimed and why it is not believed.
        reason: String,
    },
    /// Only the leader can do this.
    #[error("node {node} is {role}: only the leader keeps retention slots; ask the leader")]
    NotLeading {
        /// This node.
        node: String,
        /// The role it holds.
        role: &'static str,
    },
    /// The node is shutting down or has stopped.
    #[error("node {node} has stopped")]
    Stopped {
        /// The node.
        node: String,
    },
    /// A state file could not be read or written.
    #[error("{op} {path}: {reason}")]
    File {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// What went wrong.
        reason: String,
    },
}

/// The end-entity certificate the peer presented, if any.
pub(crate) fn peer_certificate(
    conn: &quinn::Connection,
) -> Option<rustls::pki_types::CertificateDer<'static>> {
    conn.peer_identity()?
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()?
        .first()
        .cloned()
}

/// Microseconds since the Unix epoch, for heartbeats.
pub(crate) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// An endpoint on `socket` if given, else bound to `addr`, sending datagrams of at most
/// `max_udp_payload` bytes.
pub(crate) fn endpoint(
    server: Option<quinn::ServerConfig>,
    addr: SocketAddr,
    socket: Option<std::net::UdpSocket>,
    max_udp_payload: u16,
) -> Result<quinn::Endpoint, TransportError> {
    let io = |op| move |source| TransportError::Io { op, addr, source };
    let socket = match socket {
        Some(s) => s,
        None => std::net::UdpSocket::bind(addr).map_err(io("bind"))?,
    };
    let runtime = crate::udp::runtime(max_udp_payload);
    let config = crate::tls::endpoint_config_for(max_udp_payload);
    quinn::Endpoint::new(config, server, socket, runtime).map_err(io("start QUIC endpoint on"))
}

/// Whether work that may block (a disk wait) can run in place on this task's thread:
/// only on a multi-thread runtime, where [`tokio::task::block_in_place`] moves the
/// worker's other tasks to another worker (on a current-thread runtime it would panic).
pub(crate) fn in_place_allowed() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
}

/// Runs `f`, which may block on the disk, without a hop to another thread where the
/// runtime allows ([`in_place_allowed`]), else on the blocking pool. `what` names the
/// work in the error if the pool's task fails.
pub(crate) async fn blocking<T: Send + 'static>(
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, TransportError> {
    if in_place_allowed() {
        Ok(tokio::task::block_in_place(f))
    } else {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| TransportError::InvalidOptions(format!("{what}: {e}")))
    }
}
