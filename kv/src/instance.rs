//! One walship-kv node assembled: its database rebuilt from its newest snapshot and its
//! log, the replication [`Node`] applying into it, the RESP [`Server`] in front and the
//! [`Snapshotter`] behind. What an embedder or a test starts (the binary assembles the
//! same parts through `walship_tools::serve`).

use std::net::SocketAddr;
use std::sync::Arc;

use walship_engine::Log;
use walship_transport::coordinator::Coordinator;
use walship_transport::{Node, NodeOptions, Security};

use crate::config::SnapshotConfig;
use crate::db::{Db, KvApply};
use crate::server::{Server, ServerError, Settings};
use crate::snapshot::SnapshotDir;
use crate::snapshotter::{Bound, Snapshotter};

/// Why a node did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The key space could not be rebuilt from the log.
    #[error("rebuilding the key space from the log: {0}")]
    Rebuild(String),
    /// Replication did not start.
    #[error("starting replication: {0}")]
    Node(#[from] walship_transport::TransportError),
    /// The RESP server did not start.
    #[error("starting the RESP server: {0}")]
    Server(#[from] ServerError),
    /// The snapshotter did not start.
    #[error("starting the snapshotter: {0}")]
    Snapshotter(String),
}

/// The snapshotter of a node's database: bounded by what `node` knows is committed, or,
/// for a node `alone`, by what it flushed.
///
/// # Errors
/// The thread could not be started.
pub fn start_snapshotter(
    db: &Arc<Db>,
    node: &Arc<Node>,
    config: &SnapshotConfig,
) -> std::io::Result<Snapshotter> {
    let bound = if config.alone {
        Bound::Flushed
    } else {
        let node = Arc::clone(node);
        Bound::Committed(Box::new(move || node.committed()))
    };
    Snapshotter::start(Arc::clone(db), config.policy.clone(), bound)
}

/// A running walship-kv node.
pub struct Instance {
    db: Arc<Db>,
    node: Arc<Node>,
    server: Server,
    snapshotter: Option<Snapshotter>,
}

impl Instance {
    /// Rebuilds the key space (from the newest snapshot in `snapshots.dir` and the log
    /// after it; with no `snapshots`, from the whole log, and none is taken), starts
    /// replication under `coordinator`, the RESP server and the snapshotter.
    /// `opts.apply_from` is set here (where the key space is), and with snapshots the
    /// leader serves them to followers it no longer retains the log for. Must be called
    /// inside a Tokio runtime.
    ///
    /// # Errors
    /// [`StartError`]; whatever started is stopped again.
    pub async fn start<C: Coordinator + 'static>(
        log: Arc<Log>,
        security: Security,
        coordinator: C,
        mut opts: NodeOptions,
        settings: Settings,
        snapshots: Option<SnapshotConfig>,
    ) -> Result<Instance, StartError> {
        let origin = security.node_id().to_owned();
        let db = {
            let log = Arc::clone(&log);
            let dir = snapshots.as_ref().map(|s| s.dir.clone());
            tokio::task::spawn_blocking(move || match dir {
                None => Db::open(log, origin),
                Some(dir) => {
                    let dir = SnapshotDir::open(dir).map_err(|e| e.to_string())?;
                    Db::open_with_snapshots(log, origin, dir)
                }
            })
            .await
            .map_err(|e| StartError::Rebuild(e.to_string()))?
            .map_err(StartError::Rebuild)?
        };
        let db = Arc::new(db);
        // Where the key space is (the whole log, or a bootstrap's snapshot ahead of it).
        opts.apply_from = Some(db.applied().max(log.end_lsn()));
        if let Some(d) = db.snapshot_dir() {
            opts.leader.snapshots = Some(Arc::new(crate::db::KvSnapshots(d.clone())));
        }
        let node = Arc::new(Node::start(
            log,
            security,
            coordinator,
            opts,
            KvApply(Arc::clone(&db)),
        )?);
        let started = match Server::start(Arc::clone(&db), Arc::clone(&node), settings).await {
            Err(e) => Err(StartError::from(e)),
            Ok(server) => match &snapshots {
                None => Ok((server, None)),
                Some(config) => match start_snapshotter(&db, &node, config) {
                    Ok(s) => Ok((server, Some(s))),
                    Err(e) => {
                        server.shutdown().await;
                        Err(StartError::Snapshotter(e.to_string()))
                    }
                },
            },
        };
        match started {
            Ok((server, snapshotter)) => Ok(Instance {
                db,
                node,
                server,
                snapshotter,
            }),
            Err(e) => {
                if let Ok(node) = Arc::try_unwrap(node) {
                    node.shutdown().await;
                }
                Err(e)
            }
        }
    }

    /// The database.
    pub fn db(&self) -> &Arc<Db> {
        &self.db
    }

    /// The replication node.
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// Where Redis clients connect.
    pub fn resp_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Stops the RESP server (closing every client connection), the snapshotter, then
    /// the node (a leader resigns and tells its followers), then closes the log.
    pub async fn shutdown(self) {
        self.server.shutdown().await;
        if let Some(s) = self.snapshotter {
            let _ = tokio::task::spawn_blocking(move || s.stop()).await;
        }
        let log = Arc::clone(self.db.log());
        match Arc::try_unwrap(self.node) {
            Ok(node) => node.shutdown().await,
            Err(node) => tracing::error!(
                references = Arc::strong_count(&node),
                "the node is still referenced at shutdown; stopping without resigning"
            ),
        }
        drop(self.db);
        if let Err(e) = log.close() {
            tracing::error!(error = %e, "closing the log");
        }
    }
}
