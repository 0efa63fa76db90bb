//! `replication`: replication throughput of walship's QUIC driver, leader and followers
//! in separate processes, next to the ceilings it is judged against, measured in one run
//! on the same data between the same two processes.
//!
//! ```text
//! cargo run --release -p walship-bench --bin replication -- --quick
//! cargo run --release -p walship-bench --bin replication            # 512 MiB, 3 reps
//! cargo run --release -p walship-bench --bin replication -- --link-rate 500mbit --no-loopback
//! ```
//!
//! The data is deterministic WAL-like JSON rows (`walship_bench::waldata`), appended in
//! ~64 KiB batches. This process is always the sending end (the leader); every receiving
//! end is a child process of its own (`roles`: this binary started as `replication
//! child <role> …`), so each figure, CPU time included, belongs to one process, as in a
//! deployment. In order:
//!
//! 1. **zstd, one core**: compression and decompression speed and ratio of the same data,
//!    as engine-encoded batches cut into frames of `--frame-bytes` (the driver's frame
//!    size), at `--zstd-level` (`walship_bench::zstd_speed`).
//! 2. **Loopback**, repeated `--reps` times, variants interleaved (A B A B): the
//!    references (`refs`: raw quinn, one stream of frame-sized `Bytes` with the project's
//!    endpoint, transport and mutual-TLS configs; one TCP connection), then replication
//!    leader → follower(s) with each `--zstd` variant (off, fixed at `--zstd-level`,
//!    adaptive), "live" (followers connected, writer
//!    appending as fast as the leader's log accepts; timed from the first append until
//!    the last follower has applied the leader's end) and "catch-up" (everything written
//!    first, then the followers started; timed from their start until the last applied
//!    the end), with each count of `--followers`.
//! 3. **A shaped link** (`--link-rate`, default 1 Gbit/s) between two network namespaces
//!    (`walship_bench::netns`; root only, skipped with the reason otherwise): the
//!    receivers run in the follower's namespace (`ip netns exec`), the same variants with
//!    one follower.
//! 4. Ratios against the issue's targets, PASS/MISS.
//!
//! Output: Markdown on stdout (progress on stderr), also written to
//! `<workspace>/target/replication/<unix seconds>/results.md` (or `--out`).
//! Logs live in a temporary directory under `--dir` that is removed at the end; the
//! namespaces are deleted at the end and child processes are killed when their run ends
//! or fails. A run killed by a signal cannot clean up: the next run removes the
//! namespaces and work directories of runs whose process is gone.

mod refs;
mod replicate;
mod report;
mod roles;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::Parser;
use walship_bench::netns::{self, Link, Shaper, Side};
use walship_bench::rawquic::Cluster;
use walship_bench::sys::MachineCpu;
use walship_bench::waldata::{self, Batches};
use walship_bench::zstd_speed::{self, ZstdSpeed};
use walship_bench::Res;
use walship_bench::MB;

use refs::{Kind, RefRun};
use replicate::ReplRun;

/// Replication throughput (zstd on/off, loopback and a shaped link) against single-core
/// zstd speed and raw quinn throughput, on the same WAL-like data, in one run.
#[derive(Parser, Debug)]
#[command(name = "replication", version)]
pub struct Args {
    /// Short run: 64 MiB per measurement, one repetition.
    #[arg(long)]
    pub quick: bool,
    /// MiB of rows per measurement [default: 512, 64 with --quick].
    #[arg(long)]
    pub mib: Option<u64>,
    /// Repetitions of every network measurement [default: 3, 1 with --quick].
    #[arg(long)]
    pub reps: Option<usize>,
    /// zstd level of the compressed variants and of the single-core measurement.
    #[arg(long, default_value_t = 1, allow_negative_numbers = true)]
    pub zstd_level: i32,
    /// Raw bytes per replication frame (the driver's `frame_bytes`), also the zstd and
    /// raw quinn frame size.
    #[arg(long, default_value_t = 256 << 10)]
    pub frame_bytes: usize,
    /// Row bytes per `append_batch` call.
    #[arg(long, default_value_t = 64 << 10)]
    pub batch_bytes: usize,
    /// Segment capacity of both logs, MiB.
    #[arg(long, default_value_t = 64)]
    pub segment_mib: u64,
    /// Seed of the generated rows.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Where the logs go: a temporary directory is made inside it and removed at the end
    /// [default: the system temporary directory].
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Output directory for results.md [default: <workspace>/target/replication/<unix seconds>].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Rate of the shaped link, as tc writes it (e.g. 1gbit, 500mbit).
    #[arg(long, default_value = "1gbit")]
    pub link_rate: String,
    /// Qdisc that enforces the rate on both veth ends: tbf or netem.
    #[arg(long, default_value = "tbf")]
    pub link_shaper: Shaper,
    /// Skip the shaped link.
    #[arg(long)]
    pub no_link: bool,
    /// Skip the loopback measurements (raw quinn and replication).
    #[arg(long)]
    pub no_loopback: bool,
    /// Follower counts to run on loopback, comma-separated (the link runs one).
    #[arg(long, default_value = "1,2")]
    pub followers: String,
    /// Skip the catch-up variant.
    #[arg(long)]
    pub no_catchup: bool,
    /// Compression variants of every replication cell: off, fixed (at --zstd-level),
    /// adaptive (starting at --zstd-level, from raw to level 6).
    #[arg(long, value_delimiter = ',', default_value = "off,fixed,adaptive")]
    pub zstd: Vec<Zstd>,
}

/// How the leader compresses in a replication run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Zstd {
    /// Shipped as stored.
    Off,
    /// At `--zstd-level`.
    Fixed,
    /// The transport's adaptive level (`walship_transport::compress::adapt`).
    Adaptive,
}

impl Zstd {
    /// The column text: `off`, the level, or `adaptive`.
    pub fn label(self, args: &Args) -> String {
        match self {
            Zstd::Off => "off".into(),
            Zstd::Fixed => args.zstd_level.to_string(),
            Zstd::Adaptive => "adaptive".into(),
        }
    }

    /// The leader's compression settings for this variant.
    pub fn options(self, args: &Args) -> walship_transport::CompressionOptions {
        let base = walship_transport::CompressionOptions::default();
        match self {
            Zstd::Off => walship_transport::CompressionOptions {
                level: None,
                adapt: None,
                ..base
            },
            Zstd::Fixed => walship_transport::CompressionOptions {
                level: Some(args.zstd_level),
                adapt: None,
                ..base
            },
            Zstd::Adaptive => walship_transport::CompressionOptions {
                level: Some(args.zstd_level),
                adapt: Some(walship_transport::compress::Adapt::default()),
                ..base
            },
        }
    }
}

/// Which replication variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Followers connected first; timed from the first append.
    Live,
    /// Everything written first; timed from the followers' start.
    CatchUp,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Live => "live",
            Mode::CatchUp => "catch-up from disk",
        }
    }
}

/// Machine-wide CPU use over an interval, to tell how much other processes took.
pub struct MachineMeter {
    wall: Instant,
    machine: Option<MachineCpu>,
}

impl MachineMeter {
    pub fn start() -> MachineMeter {
        MachineMeter {
            wall: Instant::now(),
            machine: MachineCpu::now(),
        }
    }

    /// CPUs (1.0 = one core throughout) that processes other than ours used since the
    /// start, steal included, given the CPU seconds ours used.
    pub fn others(&self, ours_cpu_seconds: f64) -> f64 {
        let wall = self.wall.elapsed().as_secs_f64().max(1e-9);
        let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        match (self.machine, MachineCpu::now()) {
            (Some(a), Some(b)) => {
                let d = b.since(&a);
                let busy = (d.busy_fraction() + d.steal_fraction()) * ncpu;
                (busy - ours_cpu_seconds / wall).max(0.0)
            }
            _ => f64::NAN,
        }
    }
}

/// Where a run's two ends live.
pub enum Net<'a> {
    Loopback,
    Link(&'a Link),
}

impl Net<'_> {
    /// A UDP socket for the leader's end.
    pub fn leader_udp(&self) -> Res<UdpSocket> {
        Ok(match self {
            Net::Loopback => UdpSocket::bind("127.0.0.1:0")?,
            Net::Link(link) => link.bind_udp(Side::Leader)?,
        })
    }

    /// The address the receiving end binds.
    pub fn follower_ip(&self) -> IpAddr {
        match self {
            Net::Loopback => IpAddr::V4(Ipv4Addr::LOCALHOST),
            Net::Link(link) => IpAddr::V4(link.ip(Side::Follower)),
        }
    }

    /// The namespace a receiving child runs in.
    pub fn follower_ns(&self) -> Option<&str> {
        match self {
            Net::Loopback => None,
            Net::Link(link) => Some(link.namespace(Side::Follower)),
        }
    }

    /// A TCP connection from the leader's end to `to`.
    pub fn tcp_connect(&self, to: SocketAddr) -> Res<TcpStream> {
        Ok(match self {
            Net::Loopback => TcpStream::connect(to)?,
            Net::Link(link) => link.connect_tcp(Side::Leader, to)?,
        })
    }
}

/// Thread name of the leader's tokio runtime (at most 15 bytes: Linux truncates).
pub const LEADER_RT: &str = "wsb-leader-rt";

/// Everything the runs share.
pub struct Ctx {
    pub args: Args,
    pub mib: u64,
    pub reps: usize,
    pub followers: Vec<usize>,
    pub data: Arc<Batches>,
    /// The batches encoded as the engine stores them, back to back.
    pub encoded: Bytes,
    /// `encoded` cut into frames of `--frame-bytes`.
    pub frames: Vec<Bytes>,
    pub cluster: Cluster,
    /// Node ids of the followers, each with its certificate in `certs`.
    pub follower_nodes: Vec<String>,
    /// The CA certificate and the followers' identities, for the child processes.
    pub certs: tempfile::TempDir,
    pub work: tempfile::TempDir,
    runs: std::sync::atomic::AtomicUsize,
}

impl Ctx {
    /// A fresh directory for one run's logs, removed when dropped.
    pub fn run_dir(&self) -> Res<tempfile::TempDir> {
        let n = self.runs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(tempfile::Builder::new()
            .prefix(&format!("run{n}-"))
            .tempdir_in(self.work.path())?)
    }
}

/// What a replication result is keyed by: (net: 0 loopback, 1 link; mode; zstd; followers).
pub type ReplKey = (u8, Mode, Zstd, usize);

/// Every measurement, kept for the tables.
#[derive(Default)]
pub struct Results {
    pub zstd: Option<ZstdSpeed>,
    /// Every pass of the single-core zstd measurement (one before the network runs,
    /// one more in every repetition), merged.
    pub zstd_passes: Vec<ZstdSpeed>,
    /// (net, kind) → transfers.
    pub refs: Vec<((u8, Kind), Vec<RefRun>)>,
    pub repl: Vec<(ReplKey, Vec<ReplRun>)>,
    /// Replication could not be measured: why (skipped rows say so).
    pub repl_error: Option<String>,
    pub link_skipped: Option<String>,
    pub link_desc: String,
    pub notes: Vec<String>,
}

impl Results {
    pub fn repl_runs(&self, key: ReplKey) -> Option<&Vec<ReplRun>> {
        self.repl.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }
    pub fn ref_runs(&self, net: u8, kind: Kind) -> Option<&Vec<RefRun>> {
        self.refs
            .iter()
            .find(|(k, _)| *k == (net, kind))
            .map(|(_, v)| v)
    }
    fn push_repl(&mut self, key: ReplKey, run: ReplRun) {
        match self.repl.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => v.push(run),
            None => self.repl.push((key, vec![run])),
        }
    }
    fn push_ref(&mut self, key: (u8, Kind), run: RefRun) {
        match self.refs.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => v.push(run),
            None => self.refs.push((key, vec![run])),
        }
    }
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    let result = if argv.get(1).map(String::as_str) == Some("child") {
        roles::run(&argv[2..])
    } else {
        run()
    };
    if let Err(e) = result {
        eprintln!("replication: error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Res<()> {
    let args = Args::parse();
    // The transport's own log, to stderr, when asked for (e.g. RUST_LOG=walship_transport=debug
    // shows the adaptive level's moves).
    if let Ok(filter) = std::env::var("RUST_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .init();
    }
    let mib = args.mib.unwrap_or(if args.quick { 64 } else { 512 });
    let reps = args.reps.unwrap_or(if args.quick { 1 } else { 3 }).max(1);
    if args.frame_bytes == 0 || args.batch_bytes == 0 || mib == 0 {
        return Err("--frame-bytes, --batch-bytes and --mib must be positive".into());
    }
    let followers = parse_followers(&args.followers)?;
    let started = Instant::now();
    let out = args.out.clone().unwrap_or_else(default_out);
    std::fs::create_dir_all(&out).map_err(|e| format!("create --out {}: {e}", out.display()))?;
    let out = out.canonicalize().unwrap_or(out);
    let base_dir = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&base_dir)
        .map_err(|e| format!("create --dir {}: {e}", base_dir.display()))?;
    let stale_dirs = reap_stale_work_dirs(&base_dir);
    let work = tempfile::Builder::new()
        .prefix(&format!("{WORK_PREFIX}{}-", std::process::id()))
        .tempdir_in(&base_dir)
        .map_err(|e| format!("create a work directory in {}: {e}", base_dir.display()))?;

    eprintln!(
        "generating {mib} MiB of WAL-like rows (seed {}) ...",
        args.seed
    );
    let t = Instant::now();
    let data = waldata::batches(args.seed, mib << 20, args.batch_bytes);
    let stream = waldata::encode_stream(&data);
    let encoded = Bytes::from(stream);
    let frames: Vec<Bytes> = (0..encoded.len())
        .step_by(args.frame_bytes)
        .map(|lo| encoded.slice(lo..(lo + args.frame_bytes).min(encoded.len())))
        .collect();
    eprintln!(
        "  {} rows, {} batches, {:.0} MB encoded, in {:.1} s",
        data.rows,
        data.batches.len(),
        frames.iter().map(Bytes::len).sum::<usize>() as f64 / MB,
        t.elapsed().as_secs_f64()
    );
    let cluster = Cluster::generate("bench")?;
    let max_followers = followers.iter().copied().max().unwrap_or(1);
    let certs = tempfile::Builder::new()
        .prefix("certs-")
        .tempdir_in(work.path())?;
    let mut follower_nodes = Vec::with_capacity(max_followers);
    for i in 0..max_followers {
        let id = if i == 0 {
            cluster.follower.clone()
        } else {
            cluster.ca.issue_node(&format!("follower{}", i + 1))?
        };
        cluster.save_node(certs.path(), &id)?;
        follower_nodes.push(id.node_id().to_owned());
    }
    let ctx = Ctx {
        mib,
        reps,
        followers,
        data: Arc::new(data),
        encoded,
        frames,
        cluster,
        follower_nodes,
        certs,
        work,
        runs: Default::default(),
        args,
    };
    let mut res = Results::default();
    for d in stale_dirs {
        res.notes.push(format!(
            "removed stale work directory {} of a dead run",
            d.display()
        ));
    }

    // 1. zstd on one core.
    eprintln!("zstd level {} on one core ...", ctx.args.zstd_level);
    let z = zstd_speed::measure(&ctx.encoded, ctx.args.frame_bytes, ctx.args.zstd_level, 3)?;
    eprintln!(
        "  compress {:.0} MB/s, decompress {:.0} MB/s, ratio {:.2}",
        z.compress_mb_s(),
        z.decompress_mb_s(),
        z.ratio()
    );
    res.zstd_passes.push(z);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .thread_name(LEADER_RT)
        .enable_all()
        .build()?;

    // 2. Loopback.
    if !ctx.args.no_loopback {
        for rep in 0..ctx.reps {
            eprintln!("loopback, repetition {}/{} ...", rep + 1, ctx.reps);
            measure_net(&ctx, &rt, &Net::Loopback, 0, &mut res)?;
        }
    }

    // 3. The shaped link.
    res.link_desc = format!("{} {}", ctx.args.link_rate, ctx.args.link_shaper);
    if ctx.args.no_link {
        res.link_skipped = Some("--no-link".into());
    } else if let Some(reason) = netns::unavailable_reason() {
        res.link_skipped = Some(reason);
    } else {
        for name in netns::reap_stale()? {
            res.notes
                .push(format!("removed stale namespace {name} of a dead run"));
        }
        match Link::create(&ctx.args.link_rate, ctx.args.link_shaper) {
            Err(e) => res.link_skipped = Some(format!("could not create the link: {e}")),
            Ok(link) => {
                for rep in 0..ctx.reps {
                    eprintln!(
                        "{} link, repetition {}/{} ...",
                        res.link_desc,
                        rep + 1,
                        ctx.reps
                    );
                    measure_net(&ctx, &rt, &Net::Link(&link), 1, &mut res)?;
                }
                for side in [Side::Leader, Side::Follower] {
                    if let Ok(s) = link.qdisc_stats(side) {
                        let s = s.split_whitespace().collect::<Vec<_>>().join(" ");
                        res.notes.push(format!("qdisc, {side:?} end: {s}"));
                    }
                }
            }
        }
    }
    if let Some(reason) = &res.link_skipped {
        eprintln!("{} link: skipped ({reason})", res.link_desc);
    }
    rt.shutdown_timeout(std::time::Duration::from_secs(5));
    res.zstd = merge_zstd(&res.zstd_passes);

    let report = report::render(&ctx, &res, started.elapsed());
    print!("{report}");
    let path = out.join("results.md");
    std::fs::write(&path, &report).map_err(|e| format!("write {}: {e}", path.display()))?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

/// `--followers`: a comma-separated list of counts, 1 to 8.
fn parse_followers(s: &str) -> Res<Vec<usize>> {
    let v: Vec<usize> = s
        .split(',')
        .map(|x| x.trim().parse::<usize>())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("--followers {s:?}: {e}"))?;
    if v.is_empty() || v.iter().any(|&n| n == 0 || n > 8) {
        return Err(format!("--followers {s:?}: each count must be 1 to 8").into());
    }
    Ok(v)
}

/// One repetition of every measurement on `net`, variants interleaved.
fn measure_net(
    ctx: &Ctx,
    rt: &tokio::runtime::Runtime,
    net: &Net<'_>,
    net_id: u8,
    res: &mut Results,
) -> Res<()> {
    let z = zstd_speed::measure(&ctx.encoded, ctx.args.frame_bytes, ctx.args.zstd_level, 1)?;
    eprintln!("  zstd: compress {:.0} MB/s", z.compress_mb_s());
    res.zstd_passes.push(z);
    for kind in [Kind::Quic, Kind::Tcp] {
        let r = refs::measure(ctx, rt, net, kind)?;
        eprintln!(
            "  {}: {:.0} MB/s (sender {:.2} CPU s/GB, receiver {:.2}; {} lost packets, MTU {})",
            kind.name(),
            r.mb_s(),
            r.sender_s_per_gb(),
            r.receiver_s_per_gb(),
            r.lost_packets,
            r.mtu
        );
        res.push_ref((net_id, kind), r);
    }
    if res.repl_error.is_some() {
        return Ok(());
    }
    let mut modes = vec![Mode::Live];
    if !ctx.args.no_catchup {
        modes.push(Mode::CatchUp);
    }
    // More than one follower only on loopback: the link has two ends.
    let counts: Vec<usize> = if net_id == 0 {
        ctx.followers.clone()
    } else {
        vec![1]
    };
    for mode in modes {
        for &n in &counts {
            for &zstd in &ctx.args.zstd {
                match replicate::replicate(ctx, rt, net, mode, zstd, n) {
                    Ok(r) => {
                        eprintln!(
                            "  replication {}, zstd {}, {n} follower(s): {:.0} MB/s of log, \
                             wire/log {:.3}, leader {:.2} CPU s/GB, follower {:.2}",
                            mode.name(),
                            zstd.label(&ctx.args),
                            r.log_mb_s(),
                            r.wire_per_log(),
                            r.leader_s_per_gb(),
                            r.follower_s_per_gb()
                        );
                        res.push_repl((net_id, mode, zstd, n), r);
                    }
                    Err(e) => {
                        eprintln!("  replication {}: error: {e}", mode.name());
                        res.repl_error = Some(e.to_string());
                        return Ok(());
                    }
                }
            }
        }
    }
    Ok(())
}

/// Work directories are named `<WORK_PREFIX><pid>-<random>`.
const WORK_PREFIX: &str = "walship-replication-";

/// Removes work directories in `base` left by runs that were killed before their
/// `TempDir` was dropped (their pid no longer exists); returns them.
fn reap_stale_work_dirs(base: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(base) else {
        return Vec::new();
    };
    let mut reaped = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(WORK_PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id()
            && !Path::new(&format!("/proc/{pid}")).exists()
            && std::fs::remove_dir_all(e.path()).is_ok()
        {
            reaped.push(e.path());
        }
    }
    reaped
}

fn default_out() -> PathBuf {
    let target = walship_bench::target_dir();
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    target.join("replication").join(secs.to_string())
}

/// All passes of several zstd measurements of the same data as one.
fn merge_zstd(passes: &[ZstdSpeed]) -> Option<ZstdSpeed> {
    let mut merged = passes.first()?.clone();
    for p in &passes[1..] {
        merged.compress_secs.extend_from_slice(&p.compress_secs);
        merged.decompress_secs.extend_from_slice(&p.decompress_secs);
    }
    Some(merged)
}
