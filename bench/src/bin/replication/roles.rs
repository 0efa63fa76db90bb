//! The receiving ends of the replication benchmark, each run as a child process of the
//! benchmark (`replication child <role> …`, see `walship_bench::child`): a walship
//! follower, a raw quinn receiver and a TCP receiver. The parent is always the sending
//! end (the leader), so every figure is one process's own.
//!
//! Roles and their commands (one line in, one `ok …`/`err …` line out):
//!
//! - `follower <log dir> <certs dir> <node id> <bind ip> <segment MiB>`: opens a log and
//!   binds a UDP socket, then `ok`. `start <leader addr>` starts the follower driver;
//!   `mark` records the CPU baseline and starts sampling the log's end every millisecond
//!   (reply: the log's end LSN); `wait <lsn>` waits until the follower has applied `lsn`
//!   and replies `<applied ns> <received ns> <cpu ns> <runtime ns> <log ns> <apply ns>
//!   <rest ns>` (times on `CLOCK_MONOTONIC`; "received" is the first sample at which the
//!   log's end reached `lsn`); `stop` shuts it down and exits.
//! - `quic-recv <certs dir> <node id> <bind ip>`: binds, `ok`; `connect <server addr>`
//!   receives one stream and replies `<bytes> <start ns> <end ns> <cpu ns>`, then exits.
//! - `tcp-recv <bind ip>`: listens, `ok <port>`; `wait` accepts one connection, reads it
//!   to its end and replies as `quic-recv`, then exits.

use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use walship_bench::child::{self, mono_ns, process_cpu_ns};
use walship_bench::sys::ThreadTimes;
use walship_bench::{rawquic, rawtcp, Res};
use walship_engine::{Log, Lsn, Options};

/// Thread name of the follower process's tokio runtime (at most 15 bytes).
pub const FOLLOWER_RT: &str = "wsb-follower-rt";

/// Runs the role named by `args[0]`; never returns to the benchmark's own `main` logic.
pub fn run(args: &[String]) -> Res<()> {
    let arg = |i: usize, what: &str| -> Res<&str> {
        args.get(i)
            .map(String::as_str)
            .ok_or_else(|| format!("child {}: missing argument {i} ({what})", args[0]).into())
    };
    match arg(0, "role")? {
        "follower" => follower(
            Path::new(arg(1, "log dir")?),
            Path::new(arg(2, "certs dir")?),
            arg(3, "node id")?,
            arg(4, "bind ip")?.parse()?,
            arg(5, "segment MiB")?.parse()?,
        ),
        "quic-recv" => quic_recv(
            Path::new(arg(1, "certs dir")?),
            arg(2, "node id")?,
            arg(3, "bind ip")?.parse()?,
        ),
        "tcp-recv" => tcp_recv(arg(1, "bind ip")?.parse()?),
        other => Err(format!("unknown child role {other:?}").into()),
    }
}

fn runtime(name: &str) -> Res<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .thread_name(name)
        .enable_all()
        .build()?)
}

/// Opens a benchmark log: default options but the segment capacity.
pub fn open_log(dir: &Path, segment_mib: u64) -> Res<Arc<Log>> {
    let opts = Options {
        segment_capacity: segment_mib << 20,
        ..Options::default()
    };
    Ok(Arc::new(Log::open(dir, opts)?))
}

/// The threads in `after` but not in `before`: those of the log opened in between (by
/// id: a new thread may not have set its name yet).
pub fn new_threads(before: &ThreadTimes, after: &ThreadTimes) -> Vec<u64> {
    after
        .threads
        .iter()
        .filter(|(tid, _, _, _)| !before.threads.iter().any(|t| t.0 == *tid))
        .map(|t| t.0)
        .collect()
}

/// Nanoseconds on a CPU since `base`, summed by component: those of `log_tids` (and
/// their io_uring workers, named `iou-wrk-<owner tid>`), those named with each prefix
/// in `prefixes`, and the rest. Threads started since `base` count from zero.
pub fn components(base: &ThreadTimes, log_tids: &[u64], prefixes: &[&str]) -> Vec<u64> {
    let now = ThreadTimes::now();
    let mut out = vec![0u64; prefixes.len() + 2];
    for (tid, name, run, _) in &now.threads {
        let base_run = base
            .threads
            .iter()
            .find(|(t0, n0, _, _)| t0 == tid && n0 == name)
            .map_or(0, |b| b.2);
        let ns = run.saturating_sub(base_run);
        let owner = name
            .strip_prefix("iou-wrk-")
            .and_then(|t| t.parse::<u64>().ok())
            .unwrap_or(*tid);
        let slot = if log_tids.contains(&owner) {
            0
        } else if let Some(i) = prefixes.iter().position(|p| name.starts_with(p)) {
            i + 1
        } else {
            prefixes.len() + 1
        };
        out[slot] += ns;
    }
    out
}

/// Checkpoints what `log` has flushed every 10 ms until `on` is cleared, as an embedder
/// does, so retired segments are recycled instead of new ones zero-filled.
pub fn spawn_checkpointer(log: Arc<Log>, on: Arc<AtomicBool>) -> Res<std::thread::JoinHandle<()>> {
    Ok(std::thread::Builder::new()
        .name("wsb-checkpoint".into())
        .spawn(move || {
            while on.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(10));
                log.set_checkpoint(log.watermarks().flushed);
            }
        })?)
}

/// How long to wait for a follower to apply `bytes`: generous (8 MB/s), at least 60 s.
pub fn apply_timeout(bytes: u64) -> Duration {
    Duration::from_secs(60).max(Duration::from_secs_f64(bytes as f64 / 8e6))
}

/// What `mark` recorded: the threads' times, the process's CPU nanoseconds, the samples
/// of `(time, log end)` and the sampler's stop flag.
type Mark = (
    ThreadTimes,
    u64,
    Arc<Mutex<Vec<(u64, u64)>>>,
    Arc<AtomicBool>,
);

fn follower(dir: &Path, certs: &Path, node: &str, ip: IpAddr, segment_mib: u64) -> Res<()> {
    use walship_transport::{Follower, FollowerOptions, Security};

    let (ca, identity) = rawquic::load_node(certs, node)?;
    let before = ThreadTimes::now();
    let log = open_log(dir, segment_mib)?;
    let log_tids = new_threads(&before, &ThreadTimes::now());
    let rt = runtime(FOLLOWER_RT)?;
    let mut socket = Some(UdpSocket::bind(SocketAddr::new(ip, 0))?);
    let on = Arc::new(AtomicBool::new(true));
    let checkpointer = spawn_checkpointer(Arc::clone(&log), Arc::clone(&on))?;
    let mut driver: Option<Follower> = None;
    let mut mark: Option<Mark> = None;
    child::reply(format_args!("ok"));
    while let Some(cmd) = child::next_command() {
        let mut words = cmd.split_whitespace();
        let result: Res<String> = match (words.next(), words.next()) {
            (Some("start"), Some(addr)) => (|| {
                let socket = socket.take().ok_or("already started")?;
                let _in_rt = rt.enter();
                driver = Some(Follower::start(
                    Arc::clone(&log),
                    Security::mutual_tls(identity.clone(), &ca),
                    FollowerOptions {
                        leader: addr.parse()?,
                        leader_node_id: "leader".into(),
                        socket: Some(socket),
                        ..FollowerOptions::default()
                    },
                    |_: &walship_engine::Record| {},
                )?);
                Ok(String::new())
            })(),
            (Some("mark"), None) => (|| {
                let samples = Arc::new(Mutex::new(Vec::with_capacity(1 << 16)));
                let stop = Arc::new(AtomicBool::new(false));
                let (s, st, l) = (Arc::clone(&samples), Arc::clone(&stop), Arc::clone(&log));
                std::thread::Builder::new()
                    .name("wsb-sampler".into())
                    .spawn(move || {
                        while !st.load(Ordering::Acquire) {
                            let end = l.end_lsn().get();
                            if let Ok(mut v) = s.lock() {
                                v.push((mono_ns(), end));
                            }
                            std::thread::sleep(Duration::from_millis(1));
                        }
                    })?;
                let end = log.end_lsn();
                mark = Some((ThreadTimes::now(), process_cpu_ns(), samples, stop));
                Ok(end.get().to_string())
            })(),
            (Some("wait"), Some(lsn)) => (|| {
                let lsn = Lsn::new(lsn.parse()?);
                let d = driver.as_ref().ok_or("not started")?;
                let (base, cpu0, samples, stop) = mark.take().ok_or("no mark")?;
                let bytes = lsn.get().saturating_sub(log.start_lsn().get());
                let waited = rt.block_on(d.wait_for_applied(lsn, apply_timeout(bytes)));
                let applied_ns = mono_ns();
                let cpu = process_cpu_ns().saturating_sub(cpu0);
                let parts = components(&base, &log_tids, &[FOLLOWER_RT, "walship-apply"]);
                stop.store(true, Ordering::Release);
                if let Err(e) = waited {
                    let st = d.status();
                    return Err(format!(
                        "did not apply {lsn}: applied {}, connected {}, last error {:?}, \
                         apply error {:?}: {e}",
                        st.applied, st.connected, st.last_error, st.apply_error
                    )
                    .into());
                }
                let received_ns = samples
                    .lock()
                    .map_err(|_| "sampler poisoned")?
                    .iter()
                    .find(|(_, end)| *end >= lsn.get())
                    .map_or(applied_ns, |(t, _)| *t);
                Ok(format!(
                    "{applied_ns} {received_ns} {cpu} {} {} {} {}",
                    parts[1], parts[0], parts[2], parts[3]
                ))
            })(),
            (Some("stop"), None) => {
                if let Some(d) = driver.take() {
                    rt.block_on(d.shutdown());
                }
                on.store(false, Ordering::Release);
                let _ = checkpointer.join();
                child::reply(format_args!("ok"));
                break;
            }
            _ => Err(format!("unknown command {cmd:?}").into()),
        };
        match result {
            Ok(r) => child::reply(format_args!("ok {r}")),
            Err(e) => child::reply(format_args!("err {}", one_line(&e.to_string()))),
        }
    }
    rt.shutdown_timeout(Duration::from_secs(5));
    Ok(())
}

fn quic_recv(certs: &Path, node: &str, ip: IpAddr) -> Res<()> {
    let (ca, identity) = rawquic::load_node(certs, node)?;
    let rt = runtime("wsb-recv-rt")?;
    let socket = UdpSocket::bind(SocketAddr::new(ip, 0))?;
    child::reply(format_args!("ok"));
    let cmd = child::next_command().unwrap_or_default();
    let Some(addr) = cmd.strip_prefix("connect ") else {
        return Err(format!("expected connect, got {cmd:?}").into());
    };
    let addr: SocketAddr = addr.trim().parse()?;
    let cpu0 = process_cpu_ns();
    reply_received(
        rt.block_on(rawquic::receive(&ca, &identity, socket, addr)),
        cpu0,
    );
    rt.shutdown_timeout(Duration::from_secs(5));
    Ok(())
}

fn tcp_recv(ip: IpAddr) -> Res<()> {
    let listener = TcpListener::bind(SocketAddr::new(ip, 0))?;
    child::reply(format_args!("ok {}", listener.local_addr()?.port()));
    let cmd = child::next_command().unwrap_or_default();
    if cmd != "wait" {
        return Err(format!("expected wait, got {cmd:?}").into());
    }
    let cpu0 = process_cpu_ns();
    reply_received(rawtcp::receive(&listener).map_err(Into::into), cpu0);
    Ok(())
}

/// Replies with what a receiver got and the CPU it used since `cpu0`, or its error.
fn reply_received(r: Res<rawquic::Received>, cpu0: u64) {
    match r {
        Ok(r) => child::reply(format_args!(
            "ok {} {} {} {}",
            r.bytes,
            r.start_ns,
            r.end_ns,
            process_cpu_ns().saturating_sub(cpu0)
        )),
        Err(e) => child::reply(format_args!("err {}", one_line(&e.to_string()))),
    }
}

fn one_line(s: &str) -> String {
    s.replace('\n', " ")
}

/// The arguments that start a follower child (see the module documentation).
pub fn follower_args(
    dir: &Path,
    certs: &Path,
    node: &str,
    ip: IpAddr,
    segment_mib: u64,
) -> Vec<String> {
    let p = |p: &Path| PathBuf::from(p).display().to_string();
    vec![
        "child".into(),
        "follower".into(),
        p(dir),
        p(certs),
        node.into(),
        ip.to_string(),
        segment_mib.to_string(),
    ]
}
