//! `walship-kv`: a replicated key-value database that Redis clients use.

use std::io;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use walship_engine::{Log, Lsn};
use walship_kv::config::{KvConfig, SnapshotConfig};
use walship_kv::db::{Db, KvApply};
use walship_kv::server::{Server, Settings};
use walship_kv::snapshot::SnapshotDir;
use walship_kv::snapshotter::Snapshotter;
use walship_tools::outcome::Failure;
use walship_tools::serve::Embedder;
use walship_transport::Node;

/// walship-kv: a replicated key-value database on walship, spoken to in the Redis protocol
#[derive(Debug, Parser)]
#[command(name = "walship-kv", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one node from a configuration file until SIGINT or SIGTERM
    ///
    /// The file is a `walship serve` configuration with a `[kv]` table (RESP address,
    /// default durability, password). Replication, the admin endpoint and the operator
    /// CLI (`walship status`, `lag`, `promote`) work as for `walship serve`.
    Serve {
        /// The node's configuration file
        #[arg(long, short)]
        config: PathBuf,
    },
}

/// walship-kv on a node: the key space is rebuilt from the newest snapshot and the log,
/// replicated records are applied to it, the RESP server serves it and the snapshotter
/// saves it.
struct Kv {
    settings: Settings,
    snapshots: SnapshotConfig,
    db: Option<Arc<Db>>,
}

/// What runs beside the node.
struct Running {
    server: Server,
    snapshotter: Snapshotter,
}

impl Embedder for Kv {
    type Apply = KvApply;
    type Running = Running;

    fn name(&self) -> &'static str {
        "walship-kv"
    }

    fn prepare(&mut self, log: &Arc<Log>) -> Result<(KvApply, Lsn), String> {
        let node_id = log
            .identity()
            .map(|i| i.node_id.clone())
            .ok_or("the log has no identity")?;
        let dir = SnapshotDir::open(&self.snapshots.dir).map_err(|e| e.to_string())?;
        let db = Arc::new(
            Db::open_with_snapshots(Arc::clone(log), node_id, dir)
                .map_err(|e| format!("rebuilding the key space: {e}"))?,
        );
        self.db = Some(Arc::clone(&db));
        // The key space holds the whole log, or a bootstrap's snapshot ahead of it.
        let applied = db.applied().max(log.end_lsn());
        Ok((KvApply(db), applied))
    }

    fn snapshots(&self) -> Option<Arc<dyn walship_transport::snapshot::SnapshotSource>> {
        let d = self.db.as_ref()?.snapshot_dir()?.clone();
        Some(Arc::new(walship_kv::db::KvSnapshots(d)))
    }

    async fn start(&mut self, node: Arc<Node>) -> Result<(Running, String), String> {
        let db = self.db.take().ok_or("the key space was not prepared")?;
        let server = Server::start(Arc::clone(&db), Arc::clone(&node), self.settings.clone())
            .await
            .map_err(|e| format!("`kv.listen`: {e}"))?;
        let snapshotter = match walship_kv::instance::start_snapshotter(&db, &node, &self.snapshots)
        {
            Ok(s) => s,
            Err(e) => {
                server.shutdown().await;
                return Err(format!("starting the snapshotter: {e}"));
            }
        };
        // The RESP address last: scripts read it from the end of the line.
        let served = format!(
            ", snapshots in {}, RESP on {}",
            self.snapshots.dir.display(),
            server.local_addr()
        );
        Ok((
            Running {
                server,
                snapshotter,
            },
            served,
        ))
    }

    async fn stop(running: Running) {
        running.server.shutdown().await;
        let s = running.snapshotter;
        let _ = tokio::task::spawn_blocking(move || s.stop()).await;
    }

    fn raw_appends(&self) -> bool {
        false
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut out = io::BufWriter::new(io::stdout().lock());
    let result = match cli.command {
        Command::Serve { config } => KvConfig::load(&config)
            .map_err(|e| Failure::Error(e.to_string()))
            .and_then(|cfg| {
                walship_tools::serve::run(
                    cfg.node,
                    Kv {
                        settings: cfg.settings,
                        snapshots: cfg.snapshots,
                        db: None,
                    },
                    &mut out,
                )
            }),
    };
    walship_tools::outcome::finish("walship-kv", result, &mut out)
}
