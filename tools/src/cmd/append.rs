//! `walship append`: writes records through a node's admin endpoint.

use std::io::Write;
use std::time::Duration;

use walship_tools::admin::client::{Client, ClientTls};
use walship_tools::admin::Appended;
use walship_tools::outcome::Failure;

/// Append records through the leader and commit them at a durability level
///
/// Each DATA argument is one record (POST /append?durability=LEVEL), sent with an
/// operator certificate (--cert, --key, --ca or WALSHIP_CERT, WALSHIP_KEY, WALSHIP_CA). Prints each
/// record's LSN — its read-your-writes token — and the commit latency. For smoke tests
/// and operators; applications embed walship-engine and walship-transport instead.
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub(crate) struct Args {
    /// The leader's admin address (host:port)
    admin: String,
    /// The records
    #[arg(required = true)]
    data: Vec<String>,
    /// async, local, remote-write, remote-flush or remote-apply
    #[arg(long, short, default_value = "remote-flush")]
    durability: walship_engine::Durability,
    #[command(flatten)]
    tls: ClientTls,
}

pub(crate) fn run(args: &Args, out: &mut dyn Write) -> Result<(), Failure> {
    let client = Client::new(&args.tls).map_err(Failure::Error)?;
    let path = format!("/append?durability={}", args.durability);
    for d in &args.data {
        let a: Appended = client
            .post(&args.admin, &path, d.as_bytes(), Duration::from_secs(30))
            .map_err(Failure::Error)?;
        writeln!(out, "{}  {}  {} µs", a.lsn, a.durability, a.latency_us)?;
    }
    Ok(())
}
