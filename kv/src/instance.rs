//! One walship-kv node assembled: its database rebuilt from its log, the replication
//! [`Node`] applying into it, and the RESP [`Server`] in front. What the binary runs and
//! what an embedder or a test starts.

use std::net::SocketAddr;
use std::sync::Arc;

use walship_engine::Log;
use walship_transport::coordinator::Coordinator;
use walship_transport::{Node, NodeOptions, Security};

use crate::db::{Db, KvApply};
use crate::server::{Server, ServerError, Settings};

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
}

/// A running walship-kv node.
pub struct Instance {
    db: Arc<Db>,
    node: Arc<Node>,
    server: Server,
}

impl Instance {
    /// Rebuilds the key space from `log`, starts replication under `coordinator` and the
    /// RESP server. `opts.apply_from` is set here: the key space holds the whole log.
    /// Must be called inside a Tokio runtime.
    ///
    /// # Errors
    /// [`StartError`]; whatever started is stopped again.
    pub async fn start<C: Coordinator + 'static>(
        log: Arc<Log>,
        security: Security,
        coordinator: C,
        mut opts: NodeOptions,
        settings: Settings,
    ) -> Result<Instance, StartError> {
        let origin = security.node_id().to_owned();
        let db = {
            let log = Arc::clone(&log);
            tokio::task::spawn_blocking(move || Db::open(log, origin))
                .await
                .map_err(|e| StartError::Rebuild(e.to_string()))?
                .map_err(StartError::Rebuild)?
        };
        let db = Arc::new(db);
        opts.apply_from = Some(log.end_lsn());
        let node = Arc::new(Node::start(
            log,
            security,
            coordinator,
            opts,
            KvApply(Arc::clone(&db)),
        )?);
        match Server::start(Arc::clone(&db), Arc::clone(&node), settings).await {
            Ok(server) => Ok(Instance { db, node, server }),
            Err(e) => {
                if let Ok(node) = Arc::try_unwrap(node) {
                    node.shutdown().await;
                }
                Err(e.into())
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

    /// Stops the RESP server (closing every client connection), then the node (a
    /// leader resigns and tells its followers), then closes the log.
    pub async fn shutdown(self) {
        self.server.shutdown().await;
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
