//! `walship slot`: the leader's retention slots (`pg_replication_slots`), and dropping one.

use std::io::Write;
use std::time::Duration;

use walship_tools::admin::client::{Client, ClientTls};
use walship_tools::admin::SlotDropped;
use walship_tools::outcome::Failure;
use walship_tools::text::{size, Align, Table};

/// List or drop the leader's retention slots
///
/// A slot holds the log a follower still needs, up to max_retained_bytes; a slot that
/// fell further behind is lost and its follower refused until the slot is dropped (and
/// the follower rebuilt). A slot of a node that is no longer a member keeps holding the
/// log until it is dropped.
///
///   walship slot list 127.0.0.1:7480          (a monitor certificate is enough)
///   walship slot drop 127.0.0.1:7480 n3       (an operator certificate)
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub(crate) struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Show each slot: its follower, restart LSN, how much log it holds, whether lost
    List {
        /// The leader's admin address (host:port)
        admin: String,
        #[command(flatten)]
        tls: ClientTls,
    },
    /// Drop a follower's slot (DELETE /slots/NODE): the log it held may be recycled
    Drop {
        /// The leader's admin address (host:port)
        admin: String,
        /// The follower whose slot goes
        node: String,
        #[command(flatten)]
        tls: ClientTls,
    },
}

pub(crate) fn run(args: &Args, out: &mut dyn Write) -> Result<(), Failure> {
    match &args.action {
        Action::List { admin, tls } => {
            let client = Client::new(tls).map_err(Failure::Error)?;
            let v = super::status::fetch(&client, admin)?;
            let Some(leading) = &v.leading else {
                return Err(Failure::Error(format!(
                    "{admin}: node {} is {}; only the leader keeps slots{}",
                    v.node_id,
                    v.role,
                    v.leader
                        .as_ref()
                        .map_or(String::new(), |l| format!(" (ask {l})"))
                )));
            };
            let end = v
                .watermarks
                .as_ref()
                .and_then(|w| w.end.parse::<walship_engine::Lsn>().ok())
                .unwrap_or_default();
            let mut t = Table::new(&[
                ("follower", Align::Left),
                ("restart", Align::Right),
                ("holds", Align::Right),
                ("state", Align::Left),
                ("lost", Align::Left),
            ]);
            let mut any = false;
            for f in &leading.followers {
                let Some(restart) = &f.slot_restart_lsn else {
                    continue;
                };
                any = true;
                let held = restart
                    .parse::<walship_engine::Lsn>()
                    .map_or(0, |r| end.bytes_after(r));
                t.row([
                    f.node_id.clone(),
                    restart.clone(),
                    size(held),
                    f.state.clone(),
                    if f.slot_lost { "lost" } else { "no" }.to_string(),
                ]);
            }
            if any {
                t.write(out)?;
            } else {
                writeln!(out, "(no slots)")?;
            }
            Ok(())
        }
        Action::Drop { admin, node, tls } => {
            let client = Client::new(tls).map_err(Failure::Error)?;
            let d: SlotDropped = client
                .delete(admin, &format!("/slots/{node}"), Duration::from_secs(10))
                .map_err(Failure::Error)?;
            if d.dropped {
                writeln!(out, "dropped the slot of {}", d.node_id)?;
            } else {
                writeln!(out, "{} had no slot", d.node_id)?;
            }
            Ok(())
        }
    }
}
