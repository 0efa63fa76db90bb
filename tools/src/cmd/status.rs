//! `walship status`: one node's role, epoch and log positions, from its admin endpoint.

use std::io::Write;
use std::time::Duration;

use walship_tools::admin::client::{Client, ClientTls};
use walship_tools::outcome::Failure;
use walship_tools::view::NodeView;

/// Show a node's role, epoch, log positions and replication summary
///
/// Asks the node's admin endpoint (GET /status) with a monitor, operator or node
/// certificate (--cert, --key, --ca or WALSHIP_CERT, WALSHIP_KEY, WALSHIP_CA). With --json, prints its answer as is
/// (schema walship-status/1).
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub(crate) struct Args {
    /// The node's admin address (host:port for HTTPS, http://host:port for a plain read-only listener)
    admin: String,
    /// Print the JSON answer
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    tls: ClientTls,
}

pub(crate) fn fetch(client: &Client, admin: &str) -> Result<NodeView, Failure> {
    client
        .get(admin, "/status", Duration::from_secs(5))
        .map_err(Failure::Error)
}

pub(crate) fn run(args: &Args, out: &mut dyn Write) -> Result<(), Failure> {
    let v = fetch(
        &Client::new(&args.tls).map_err(Failure::Error)?,
        &args.admin,
    )?;
    if args.json {
        let text = serde_json::to_string_pretty(&v).map_err(|e| Failure::Error(e.to_string()))?;
        writeln!(out, "{text}")?;
        return Ok(());
    }
    let epoch = v.epoch.map_or(String::new(), |e| format!(" (epoch {e})"));
    writeln!(out, "node       {}", v.node_id)?;
    writeln!(out, "role       {}{epoch}", v.role)?;
    if let Some(l) = &v.leader {
        writeln!(out, "leader     {l}")?;
    }
    if let Some(w) = &v.watermarks {
        writeln!(out, "log        {} .. {}", w.start, w.end)?;
        writeln!(out, "written    {}", w.written)?;
        writeln!(out, "flushed    {}", w.flushed)?;
        if v.leading.is_some() {
            writeln!(
                out,
                "quorum     written {}  flushed {}  applied {}",
                w.remote_written, w.remote_flushed, w.remote_applied
            )?;
        }
    }
    if let Some(c) = &v.committed {
        writeln!(out, "committed  {c} (no failover cuts the log below it)")?;
    }
    if let Some(l) = &v.leading {
        writeln!(out, "sync       {}", l.sync_policy)?;
        if let Some(f) = &l.fenced {
            writeln!(out, "fenced     {f}")?;
        }
        let streaming = l
            .followers
            .iter()
            .filter(|f| f.state == "streaming")
            .count();
        writeln!(
            out,
            "followers  {} ({streaming} streaming){}",
            l.followers.len(),
            if l.followers.is_empty() {
                ""
            } else {
                "; see `walship lag`"
            }
        )?;
    }
    if let Some(f) = &v.following {
        writeln!(
            out,
            "receiver   {}, {} sessions, leader end {}, applied {}",
            if f.connected {
                "connected"
            } else {
                "disconnected"
            },
            f.connects,
            f.leader_end,
            f.applied
        )?;
        if let Some(e) = &f.last_error {
            writeln!(out, "last error {e}")?;
        }
        if let Some(e) = &f.apply_error {
            writeln!(out, "apply      stopped: {e}")?;
        }
    }
    if let Some(e) = &v.last_error {
        writeln!(out, "note       {e}")?;
    }
    Ok(())
}
