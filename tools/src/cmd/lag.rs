//! `walship lag`: the leader's per-follower replication table, as `pg_stat_replication`.

use std::io::Write;
use std::time::Duration;

use walship_tools::admin::client::{Client, ClientTls};
use walship_tools::outcome::Failure;
use walship_tools::text::{size, Align, Table};
use walship_tools::view::{FollowerRow, NodeView};

/// Show the leader's followers: positions, lag in bytes and time, sync state
///
/// One row per follower, as PostgreSQL's pg_stat_replication: its state (catchup,
/// streaming, disconnected), sync state (sync, quorum, potential, async), the sent,
/// write, flush and apply LSNs, how many bytes each is behind the leader's end, and the
/// write/flush/apply lag in time for recent data, and the QUIC path's round-trip time
/// and MTU (the largest datagram it carries). --watch redraws it in place every
/// --interval until interrupted (or --count times).
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub(crate) struct Args {
    /// The leader's admin address (host:port for HTTPS, http://host:port for a plain
    /// read-only listener)
    admin: String,
    /// Refresh in place
    #[arg(long)]
    watch: bool,
    /// Seconds between refreshes with --watch
    #[arg(long, default_value_t = 1.0)]
    interval: f64,
    /// Stop after this many refreshes with --watch
    #[arg(long)]
    count: Option<u64>,
    #[command(flatten)]
    tls: ClientTls,
}

fn ms(s: Option<f64>) -> String {
    s.map_or("-".into(), |s| format!("{:.3} ms", s * 1000.0))
}

fn table(v: &NodeView) -> Table {
    let mut t = Table::new(&[
        ("follower", Align::Left),
        ("state", Align::Left),
        ("sync", Align::Left),
        ("sent_lsn", Align::Right),
        ("write_lsn", Align::Right),
        ("flush_lsn", Align::Right),
        ("apply_lsn", Align::Right),
        ("write_lag", Align::Right),
        ("flush_lag", Align::Right),
        ("apply_lag", Align::Right),
        ("write_time", Align::Right),
        ("flush_time", Align::Right),
        ("apply_time", Align::Right),
        ("rtt", Align::Right),
        ("mtu", Align::Right),
    ]);
    let rows: &[FollowerRow] = v.leading.as_ref().map_or(&[], |l| &l.followers);
    for f in rows {
        t.row([
            f.node_id.clone(),
            if f.slot_lost {
                "slot lost".into()
            } else {
                f.state.clone()
            },
            f.sync_state.clone(),
            f.sent_lsn.clone(),
            f.write_lsn.clone(),
            f.flush_lsn.clone(),
            f.apply_lsn.clone(),
            size(f.write_lag_bytes),
            size(f.flush_lag_bytes),
            size(f.apply_lag_bytes),
            ms(f.write_lag_s),
            ms(f.flush_lag_s),
            ms(f.apply_lag_s),
            f.rtt_ms.map_or("-".into(), |r| format!("{r:.3} ms")),
            f.path_mtu.map_or("-".into(), |m| m.to_string()),
        ]);
    }
    t
}

/// The leader's line and its followers' table; `walship demo` prints it too.
pub(crate) fn draw(v: &NodeView, out: &mut dyn Write) -> Result<(), Failure> {
    let Some(l) = &v.leading else {
        return Err(Failure::Error(format!(
            "{} is a {}, not the leader{}",
            v.node_id,
            v.role,
            v.leader
                .as_ref()
                .map_or(String::new(), |l| format!("; ask {l}'s admin endpoint"))
        )));
    };
    let end = v.watermarks.as_ref().map_or("-".into(), |w| w.end.clone());
    writeln!(
        out,
        "leader {} epoch {}  end {end}  sync {}",
        v.node_id,
        v.epoch.unwrap_or(0),
        l.sync_policy
    )?;
    if l.followers.is_empty() {
        writeln!(out, "(no followers)")?;
    } else {
        table(v).write(out)?;
    }
    Ok(())
}

pub(crate) fn run(args: &Args, out: &mut dyn Write) -> Result<(), Failure> {
    let client = Client::new(&args.tls).map_err(Failure::Error)?;
    if !args.watch {
        return draw(&super::status::fetch(&client, &args.admin)?, out);
    }
    let every = Duration::from_secs_f64(args.interval.max(0.05));
    let mut n = 0;
    loop {
        let v = super::status::fetch(&client, &args.admin)?;
        // Home the cursor and clear the screen, as `watch` does.
        write!(out, "\x1b[H\x1b[2J")?;
        draw(&v, out)?;
        out.flush()?;
        n += 1;
        if args.count.is_some_and(|c| n >= c) {
            return Ok(());
        }
        std::thread::sleep(every);
    }
}
