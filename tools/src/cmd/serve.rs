//! `walship serve`: runs one node from a configuration file until SIGINT or SIGTERM.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use walship_engine::{Log, Lsn};
use walship_tools::config::NodeConfig;
use walship_tools::outcome::Failure;
use walship_tools::serve::Embedder;
use walship_transport::Node;

/// Run one node (leader or follower, as the coordinator says) from a TOML file
///
/// The node replicates its log over QUIC with mutual TLS and serves its admin endpoint
/// over HTTPS with mutual TLS (GET /status, GET /metrics with any certificate of the
/// cluster; POST /append, /promote, /step-down, /leader, DELETE /slots/NODE with an
/// operator certificate; see tools/README.md). Only the configured members replicate.
/// SIGINT or SIGTERM shut it down cleanly: a leader resigns and tells its followers,
/// the log is flushed and closed.
///
/// A configuration problem is refused before anything starts, with the key named:
///   walship: node.toml: `replication.sync`: invalid sync policy ...
///
/// Logs go to standard error (RUST_LOG filters them; default info).
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub(crate) struct Args {
    /// The node's configuration file
    #[arg(long, short)]
    config: PathBuf,
}

pub(crate) fn run(args: &Args, out: &mut dyn Write) -> Result<(), Failure> {
    let cfg = NodeConfig::load(&args.config).map_err(|e| Failure::Error(e.to_string()))?;
    walship_tools::serve::run(cfg, Plain, out)
}

/// `walship serve`'s embedder: the log alone, nothing served but replication and admin.
struct Plain;

impl Embedder for Plain {
    type Apply = super::Stateless;
    type Running = ();

    fn name(&self) -> &'static str {
        "walship"
    }

    fn prepare(&mut self, log: &Arc<Log>) -> Result<(super::Stateless, Lsn), String> {
        // The node has no state of its own to rebuild: what it holds is its log.
        Ok((super::Stateless, log.end_lsn()))
    }

    async fn start(&mut self, _node: Arc<Node>) -> Result<((), String), String> {
        Ok(((), String::new()))
    }

    async fn stop(_running: ()) {}
}
