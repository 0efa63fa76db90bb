//! `walship promote`: makes a node the leader in a new epoch (manual failover).

use std::io::Write;
use std::time::Duration;

use walship_tools::admin::client::{Client, ClientTls};
use walship_tools::admin::Leadership;
use walship_tools::outcome::Failure;

/// Make a node the leader, in a new epoch
///
/// Asks the node's admin endpoint (POST /promote) with an operator certificate (--cert,
/// --key, --ca or WALSHIP_CERT, WALSHIP_KEY, WALSHIP_CA). The node takes leadership through
/// its coordinator in an epoch above every epoch granted, and leads from the end of its
/// log; the old leader steps down as soon as it learns of the new epoch (from the
/// coordinator or from a follower), and a returning old leader is truncated to the
/// divergence point. Promote the most caught-up follower (see `walship status`): with
/// a static coordinator, acknowledged writes only the old leader and another follower
/// hold would be truncated away.
///
/// With a static coordinator the other nodes must be told too: --followers lists their
/// admin addresses, and each is pointed at the new leader (POST /leader). With etcd they
/// learn it from etcd.
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub(crate) struct Args {
    /// The admin address of the node to promote (host:port)
    admin: String,
    /// Admin addresses of the other nodes to point at the new leader (static coordinator)
    #[arg(long, value_delimiter = ',')]
    followers: Vec<String>,
    #[command(flatten)]
    tls: ClientTls,
}

pub(crate) fn run(args: &Args, out: &mut dyn Write) -> Result<(), Failure> {
    let client = Client::new(&args.tls).map_err(Failure::Error)?;
    let l: Leadership = client
        .post(&args.admin, "/promote", b"", Duration::from_secs(30))
        .map_err(Failure::Error)?;
    writeln!(
        out,
        "{} is the leader in epoch {} (replication address {})",
        l.node_id, l.epoch, l.addr
    )?;
    let body = serde_json::to_vec(&l).map_err(|e| Failure::Error(e.to_string()))?;
    for f in &args.followers {
        let _: Leadership = client
            .post(f, "/leader", &body, Duration::from_secs(10))
            .map_err(Failure::Error)?;
        writeln!(out, "{f}: now follows {}", l.node_id)?;
    }
    Ok(())
}
