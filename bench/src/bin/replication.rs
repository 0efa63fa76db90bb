//! `replication`: replication throughput of walship's QUIC driver, next to the two
//! ceilings it is judged against, measured in one run on the same data.
//!
//! ```text
//! cargo run --release -p walship-bench --bin replication -- --quick
//! cargo run --release -p walship-bench --bin replication            # 512 MiB, 3 reps
//! cargo run --release -p walship-bench --bin replication -- --link-rate 500mbit --no-loopback
//! ```
//!
//! The data is deterministic WAL-like JSON rows (`walship_bench::waldata`), appended in
//! ~64 KiB batches. In order:
//!
//! 1. **zstd, one core**: compression and decompression speed and ratio of the same data,
//!    as engine-encoded batches cut into frames of `--frame-bytes` (the driver's frame
//!    size), at `--zstd-level` (`walship_bench::zstd_speed`).
//! 2. **Loopback**, repeated `--reps` times, variants interleaved (A B A B):
//!    raw quinn (one stream, `write_chunk` of frame-sized `Bytes`, the project's mutual-TLS
//!    configs; `walship_bench::rawquic`), then replication leader → follower with zstd off
//!    and on, "live" (follower connected, writer appending as fast as the leader's log
//!    accepts; timed from the first append until the follower has applied the leader's
//!    end) and "catch-up" (everything written first, then the follower started; timed
//!    from its start until it has applied the end).
//! 3. **A shaped link** (`--link-rate`, default 1 Gbit/s) between two network namespaces
//!    (`walship_bench::netns`; root only, skipped with the reason otherwise): raw quinn
//!    and the same replication variants.
//! 4. Ratios against the issue's targets, PASS/MISS.
//!
//! Output: Markdown on stdout (progress on stderr), also written to
//! `<workspace>/target/replication/<unix seconds>/results.md` (or `--out`).
//! Logs live in a temporary directory under `--dir` that is removed at the end; the
//! namespaces are deleted at the end. A run killed by a signal cannot clean up: the next
//! run removes the namespaces and work directories of runs whose process is gone.

use std::fmt::Write as _;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::Parser;
use walship_bench::median;
use walship_bench::netns::{self, Link, Shaper, Side};
use walship_bench::rawquic::{self, Cluster, RawQuic};
use walship_bench::sys::{MachineCpu, ThreadTimes, Usage};
use walship_bench::waldata::{self, Batches};
use walship_bench::zstd_speed::{self, ZstdSpeed};
use walship_bench::MB;
use walship_engine::{Durability, Log, Lsn, Options};

use walship_bench::{BoxError, Res};

/// Replication throughput (zstd on/off, loopback and a shaped link) against single-core
/// zstd speed and raw quinn throughput, on the same WAL-like data, in one run.
#[derive(Parser, Debug)]
#[command(name = "replication", version)]
struct Args {
    /// Short run: 64 MiB per measurement, one repetition.
    #[arg(long)]
    quick: bool,
    /// MiB of rows per measurement [default: 512, 64 with --quick].
    #[arg(long)]
    mib: Option<u64>,
    /// Repetitions of every network measurement [default: 3, 1 with --quick].
    #[arg(long)]
    reps: Option<usize>,
    /// zstd level of the compressed variants and of the single-core measurement.
    #[arg(long, default_value_t = 1, allow_negative_numbers = true)]
    zstd_level: i32,
    /// Raw bytes per replication frame (the driver's `frame_bytes`), also the zstd and
    /// raw quinn frame size.
    #[arg(long, default_value_t = 256 << 10)]
    frame_bytes: usize,
    /// Row bytes per `append_batch` call.
    #[arg(long, default_value_t = 64 << 10)]
    batch_bytes: usize,
    /// Segment capacity of both logs, MiB.
    #[arg(long, default_value_t = 64)]
    segment_mib: u64,
    /// Seed of the generated rows.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where the logs go: a temporary directory is made inside it and removed at the end
    /// [default: the system temporary directory].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Output directory for results.md [default: <workspace>/target/replication/<unix seconds>].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Rate of the shaped link, as tc writes it (e.g. 1gbit, 500mbit).
    #[arg(long, default_value = "1gbit")]
    link_rate: String,
    /// Qdisc that enforces the rate on both veth ends: tbf or netem.
    #[arg(long, default_value = "tbf")]
    link_shaper: Shaper,
    /// Skip the shaped link.
    #[arg(long)]
    no_link: bool,
    /// Skip the loopback measurements (raw quinn and replication).
    #[arg(long)]
    no_loopback: bool,
    /// Skip the catch-up variant.
    #[arg(long)]
    no_catchup: bool,
}

/// Which replication variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Follower connected first; timed from the first append.
    Live,
    /// Everything written first; timed from the follower's start.
    CatchUp,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Live => "live",
            Mode::CatchUp => "catch-up from disk",
        }
    }
}

/// One replication run's figures.
#[derive(Debug, Clone)]
struct ReplRun {
    /// Log bytes applied on the follower during the timed interval.
    log_bytes: u64,
    /// Frame bytes the leader sent (after compression).
    wire_bytes: u64,
    /// Raw log bytes the leader shipped (before compression).
    raw_bytes: u64,
    /// Timed interval.
    secs: f64,
    /// Seconds the leader's writer took to append everything (live only).
    append_secs: Option<f64>,
    /// Seconds until the follower's log had everything appended (before flush and
    /// apply), from the same start; polled every millisecond.
    received_secs: f64,
    /// CPU use during the timed interval.
    cpu: Cpu,
    /// The same, by component.
    threads: Threads,
}

/// CPU use by component over an interval, in CPUs (from `/proc/self/task/*/schedstat`).
#[derive(Debug, Clone, Copy, Default)]
struct Threads {
    /// The leader's tokio runtime: reading the log, compressing, QUIC and TLS.
    leader_rt: f64,
    /// The follower's tokio runtime: QUIC and TLS, decompressing, appending.
    follower_rt: f64,
    /// The thread appending rows to the leader's log (live runs only).
    writer: f64,
    /// The leader log's engine threads (writer, preparer, flusher, timer) and their
    /// io_uring workers.
    leader_log: f64,
    /// The follower log's engine threads.
    follower_log: f64,
    /// The follower's apply thread.
    apply: f64,
    /// Every other thread of this process.
    rest: f64,
}

/// CPU use over an interval, in CPUs (1.0 = one core busy throughout).
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    /// This process.
    own: f64,
    /// Every other process on the machine (busy minus ours), and what the hypervisor stole.
    others: f64,
}

/// Measures CPU use from `start` to `end`.
struct CpuMeter {
    wall: Instant,
    usage: Option<Usage>,
    machine: Option<MachineCpu>,
    threads: ThreadTimes,
}

impl CpuMeter {
    fn start() -> CpuMeter {
        CpuMeter {
            wall: Instant::now(),
            usage: Usage::now(),
            machine: MachineCpu::now(),
            threads: ThreadTimes::now(),
        }
    }

    /// CPU use by component since `start`; threads started since count from zero.
    fn threads(&self, leader_log: &[u64], follower_log: &[u64]) -> Threads {
        let wall_ns = self.wall.elapsed().as_nanos().max(1) as f64;
        let now = ThreadTimes::now();
        let mut t = Threads::default();
        for (tid, name, run, _) in &now.threads {
            let base = self
                .threads
                .threads
                .iter()
                .find(|(t0, n0, _, _)| t0 == tid && n0 == name)
                .map_or(0, |b| b.2);
            let cpus = run.saturating_sub(base) as f64 / wall_ns;
            // io_uring's workers are threads of the process named after the thread whose
            // ring they serve: count them with that log.
            let owner = name
                .strip_prefix("iou-wrk-")
                .and_then(|t| t.parse::<u64>().ok())
                .unwrap_or(*tid);
            let slot = if leader_log.contains(&owner) {
                &mut t.leader_log
            } else if follower_log.contains(&owner) {
                &mut t.follower_log
            } else if name.starts_with(LEADER_RT) {
                &mut t.leader_rt
            } else if name.starts_with(FOLLOWER_RT) {
                &mut t.follower_rt
            } else if name.starts_with("walship-apply") {
                &mut t.apply
            } else {
                &mut t.rest
            };
            *slot += cpus;
        }
        t
    }

    fn end(&self) -> Cpu {
        let wall = self.wall.elapsed().as_secs_f64().max(1e-9);
        let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let own = match (self.usage, Usage::now()) {
            (Some(a), Some(b)) => b.since(&a).cpu.as_secs_f64() / wall,
            _ => f64::NAN,
        };
        let busy = match (self.machine, MachineCpu::now()) {
            (Some(a), Some(b)) => {
                let d = b.since(&a);
                (d.busy_fraction() + d.steal_fraction()) * ncpu
            }
            _ => f64::NAN,
        };
        Cpu {
            own,
            others: (busy - own).max(0.0),
        }
    }
}

fn cpu_note<T>(xs: &[T], f: impl Fn(&T) -> Cpu) -> String {
    let own = stats(xs, |x| f(x).own).map_or(f64::NAN, |s| s.0);
    let others = stats(xs, |x| f(x).others).map_or(f64::NAN, |s| s.0);
    if own.is_nan() {
        return String::new();
    }
    format!("CPUs: this process {own:.1}, others {others:.1}")
}

impl ReplRun {
    fn log_mb_s(&self) -> f64 {
        self.log_bytes as f64 / MB / self.secs.max(1e-9)
    }
    fn wire_mb_s(&self) -> f64 {
        self.wire_bytes as f64 / MB / self.secs.max(1e-9)
    }
    fn wire_per_log(&self) -> f64 {
        self.wire_bytes as f64 / self.raw_bytes.max(1) as f64
    }
}

/// Where a run's two endpoints live.
enum Net<'a> {
    Loopback,
    Link(&'a Link),
}

impl Net<'_> {
    fn sockets(&self) -> Res<(UdpSocket, UdpSocket)> {
        match self {
            Net::Loopback => Ok((
                UdpSocket::bind("127.0.0.1:0")?,
                UdpSocket::bind("127.0.0.1:0")?,
            )),
            Net::Link(link) => Ok((link.bind_udp(Side::Leader)?, link.bind_udp(Side::Follower)?)),
        }
    }
}

/// Thread name of the leader's tokio runtime (at most 15 bytes: Linux truncates).
const LEADER_RT: &str = "wsb-leader-rt";
/// Thread name of the follower's tokio runtime.
const FOLLOWER_RT: &str = "wsb-follower-rt";

/// The leader's and the follower's tokio runtimes: separate, as in two processes, so
/// their CPU time can be told apart. Raw quinn runs both ends on the leader's.
struct Runtimes {
    leader: tokio::runtime::Runtime,
    follower: tokio::runtime::Runtime,
}

impl Runtimes {
    fn new() -> Res<Runtimes> {
        let rt = |name: &str| {
            tokio::runtime::Builder::new_multi_thread()
                .thread_name(name)
                .enable_all()
                .build()
        };
        Ok(Runtimes {
            leader: rt(LEADER_RT)?,
            follower: rt(FOLLOWER_RT)?,
        })
    }

    fn shutdown(self) {
        self.follower.shutdown_timeout(Duration::from_secs(5));
        self.leader.shutdown_timeout(Duration::from_secs(5));
    }
}

/// Everything the runs share.
struct Ctx {
    args: Args,
    mib: u64,
    reps: usize,
    data: Arc<Batches>,
    /// The batches encoded as the engine stores them, back to back.
    encoded: Bytes,
    /// `encoded` cut into frames of `--frame-bytes`.
    frames: Vec<Bytes>,
    cluster: Cluster,
    work: tempfile::TempDir,
    runs: std::sync::atomic::AtomicUsize,
}

/// Medians of a measurement over its repetitions, kept for the table.
#[derive(Default)]
struct Results {
    zstd: Option<ZstdSpeed>,
    /// Every pass of the single-core zstd measurement (one before the network runs,
    /// one more in every repetition), merged.
    zstd_passes: Vec<ZstdSpeed>,
    raw_loop: Vec<(RawQuic, Cpu)>,
    raw_link: Vec<(RawQuic, Cpu)>,
    /// (net, mode, zstd) → runs. net: 0 loopback, 1 link.
    repl: Vec<((u8, Mode, bool), Vec<ReplRun>)>,
    /// Replication could not be measured: why (skipped rows say so).
    repl_error: Option<String>,
    link_skipped: Option<String>,
    link_desc: String,
    notes: Vec<String>,
}

impl Results {
    fn repl_runs(&self, net: u8, mode: Mode, zstd: bool) -> Option<&Vec<ReplRun>> {
        self.repl
            .iter()
            .find(|(k, _)| *k == (net, mode, zstd))
            .map(|(_, v)| v)
    }
    fn push_repl(&mut self, key: (u8, Mode, bool), run: ReplRun) {
        match self.repl.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => v.push(run),
            None => self.repl.push((key, vec![run])),
        }
    }
}

fn main() {
    if let Err(e) = run() {
        eprintln!("replication: error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Res<()> {
    let args = Args::parse();
    let mib = args.mib.unwrap_or(if args.quick { 64 } else { 512 });
    let reps = args.reps.unwrap_or(if args.quick { 1 } else { 3 }).max(1);
    if args.frame_bytes == 0 || args.batch_bytes == 0 || mib == 0 {
        return Err("--frame-bytes, --batch-bytes and --mib must be positive".into());
    }
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
    let ctx = Ctx {
        mib,
        reps,
        data: Arc::new(data),
        encoded,
        frames,
        cluster,
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

    let rts = Runtimes::new()?;

    // 2. Loopback.
    if !ctx.args.no_loopback {
        for rep in 0..ctx.reps {
            eprintln!("loopback, repetition {}/{} ...", rep + 1, ctx.reps);
            measure_net(&ctx, &rts, &Net::Loopback, 0, &mut res)?;
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
                    measure_net(&ctx, &rts, &Net::Link(&link), 1, &mut res)?;
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
    rts.shutdown();
    res.zstd = merge_zstd(&res.zstd_passes);

    let report = render(&ctx, &res, started.elapsed());
    print!("{report}");
    let path = out.join("results.md");
    std::fs::write(&path, &report).map_err(|e| format!("write {}: {e}", path.display()))?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

/// One repetition of every measurement on `net`, variants interleaved.
fn measure_net(ctx: &Ctx, rts: &Runtimes, net: &Net<'_>, net_id: u8, res: &mut Results) -> Res<()> {
    let z = zstd_speed::measure(&ctx.encoded, ctx.args.frame_bytes, ctx.args.zstd_level, 1)?;
    eprintln!("  zstd: compress {:.0} MB/s", z.compress_mb_s());
    res.zstd_passes.push(z);
    let (a, b) = net.sockets()?;
    let meter = CpuMeter::start();
    let raw = rts
        .leader
        .block_on(rawquic::measure(&ctx.cluster, &ctx.frames, a, b))?;
    let cpu = meter.end();
    eprintln!(
        "  raw quinn: {:.0} MB/s ({} lost packets, MTU {})",
        raw.mb_s(),
        raw.lost_packets,
        raw.mtu
    );
    if net_id == 0 {
        res.raw_loop.push((raw, cpu));
    } else {
        res.raw_link.push((raw, cpu));
    }
    if res.repl_error.is_some() {
        return Ok(());
    }
    let mut modes = vec![Mode::Live];
    if !ctx.args.no_catchup {
        modes.push(Mode::CatchUp);
    }
    for mode in modes {
        for zstd in [false, true] {
            let (ls, fs) = net.sockets()?;
            match replicate(ctx, rts, ls, fs, mode, zstd) {
                Ok(r) => {
                    eprintln!(
                        "  replication {}, zstd {}: {:.0} MB/s of log, wire/log {:.3}",
                        mode.name(),
                        if zstd { "on" } else { "off" },
                        r.log_mb_s(),
                        r.wire_per_log()
                    );
                    res.push_repl((net_id, mode, zstd), r);
                }
                Err(e) => {
                    eprintln!("  replication {}: error: {e}", mode.name());
                    res.repl_error = Some(e.to_string());
                    return Ok(());
                }
            }
        }
    }
    Ok(())
}

/// Fresh leader and follower logs in the work directory; removed when dropped.
struct LogDirs {
    leader: PathBuf,
    follower: PathBuf,
}

impl LogDirs {
    fn new(ctx: &Ctx) -> Res<LogDirs> {
        let n = ctx.runs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dirs = LogDirs {
            leader: ctx.work.path().join(format!("run{n}-leader")),
            follower: ctx.work.path().join(format!("run{n}-follower")),
        };
        std::fs::create_dir_all(&dirs.leader)?;
        std::fs::create_dir_all(&dirs.follower)?;
        Ok(dirs)
    }
}

impl Drop for LogDirs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.leader);
        let _ = std::fs::remove_dir_all(&self.follower);
    }
}

fn open_log(ctx: &Ctx, dir: &Path) -> Res<Arc<Log>> {
    let opts = Options {
        segment_capacity: ctx.args.segment_mib << 20,
        ..Options::default()
    };
    Ok(Arc::new(Log::open(dir, opts)?))
}

/// What [`write_all`] returns: the end LSN, the time taken and the CPU time used.
type Written = (Lsn, Duration, Duration);

/// Appends every batch of `data` to `log` as fast as it accepts them (`Async` commits);
/// returns the end LSN, the time taken, and the calling thread's CPU time.
fn write_all(log: &Log, data: &Batches) -> Res<Written> {
    let cpu0 = thread_cpu();
    let start = Instant::now();
    let mut last = log.end_lsn();
    for batch in &data.batches {
        if let Some(&lsn) = log.append_batch(batch)?.last() {
            last = lsn;
        }
    }
    log.commit(last, Durability::Async).wait()?;
    Ok((last, start.elapsed(), thread_cpu().saturating_sub(cpu0)))
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec that outlives the call; the clock id is a constant.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// How long to wait for a follower to apply `bytes`: generous (8 MB/s), at least 60 s.
fn apply_timeout(bytes: u64) -> Duration {
    Duration::from_secs(60).max(Duration::from_secs_f64(bytes as f64 / 8e6))
}

/// One replication run: a fresh leader on `leader_socket` and follower on
/// `follower_socket`, zstd at the configured level or off, `mode` as documented in
/// [`Mode`].
///
/// Everything the driver API is used for is in this function.
fn replicate(
    ctx: &Ctx,
    rts: &Runtimes,
    leader_socket: UdpSocket,
    follower_socket: UdpSocket,
    mode: Mode,
    zstd: bool,
) -> Res<ReplRun> {
    use walship_transport::{
        CompressionOptions, Follower, FollowerOptions, Leader, LeaderOptions, Security,
    };

    let dirs = LogDirs::new(ctx)?;
    let before = ThreadTimes::now();
    let leader_log = open_log(ctx, &dirs.leader)?;
    let leader_tids = new_engine_threads(&before, &ThreadTimes::now());
    let before = ThreadTimes::now();
    let follower_log = open_log(ctx, &dirs.follower)?;
    let follower_tids = new_engine_threads(&before, &ThreadTimes::now());
    let cluster = &ctx.cluster;
    let data = Arc::clone(&ctx.data);
    let bytes_hint = ctx.mib << 20;

    let leader = {
        let _in_leader_runtime = rts.leader.enter();
        Leader::start(
            Arc::clone(&leader_log),
            Security::mutual_tls(cluster.leader.clone(), cluster.ca.cert_pem()),
            LeaderOptions {
                socket: Some(leader_socket),
                compression: CompressionOptions {
                    level: zstd.then_some(ctx.args.zstd_level),
                    ..CompressionOptions::default()
                },
                frame_bytes: ctx.args.frame_bytes,
                ..LeaderOptions::default()
            },
        )?
    };
    let leader_addr: SocketAddr = leader.local_addr()?;
    let start_follower = |socket: UdpSocket| {
        let _in_follower_runtime = rts.follower.enter();
        Follower::start(
            Arc::clone(&follower_log),
            Security::mutual_tls(cluster.follower.clone(), cluster.ca.cert_pem()),
            FollowerOptions {
                leader: leader_addr,
                leader_node_id: "leader".into(),
                socket: Some(socket),
                ..FollowerOptions::default()
            },
            |_: &walship_engine::Record| {},
        )
    };

    // Both embedders checkpoint what is flushed every 10 ms, as the latency harness does,
    // so retired segments are recycled instead of new ones being zero-filled. The leader
    // starts only once the follower has connected: from then on its retention slot holds
    // what the follower needs (a follower that never connected has no slot, and in the
    // catch-up variant it connects after the writing).
    let checkpointing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let leader_checkpoints = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let checkpointer = {
        let (l, f, on, lc) = (
            Arc::clone(&leader_log),
            Arc::clone(&follower_log),
            Arc::clone(&checkpointing),
            Arc::clone(&leader_checkpoints),
        );
        std::thread::Builder::new()
            .name("wsb-checkpoint".into())
            .spawn(move || {
                while on.load(std::sync::atomic::Ordering::Acquire) {
                    std::thread::sleep(Duration::from_millis(10));
                    if lc.load(std::sync::atomic::Ordering::Acquire) {
                        l.set_checkpoint(l.watermarks().flushed);
                    }
                    f.set_checkpoint(f.watermarks().flushed);
                }
            })?
    };
    let stop_checkpointer = move || {
        checkpointing.store(false, std::sync::atomic::Ordering::Release);
        let _ = checkpointer.join();
    };

    // The main thread drives the run; the leader's and the follower's tasks run on their
    // own runtimes, as they would in two processes.
    let result = rts.leader.block_on(async {
        let (follower, meter, start, first, end, append_secs) = match mode {
            Mode::Live => {
                let follower = start_follower(follower_socket)?;
                // Connected and caught up with the epoch start before the clock starts.
                let first = leader.log().end_lsn();
                follower
                    .wait_for_applied(first, Duration::from_secs(30))
                    .await?;
                leader_checkpoints.store(true, std::sync::atomic::Ordering::Release);
                let meter = CpuMeter::start();
                let start = Instant::now();
                let (end, took, cpu) = spawn_writer(Arc::clone(leader.log()), data)?.await??;
                (follower, meter, start, first, end, Some((took, cpu)))
            }
            Mode::CatchUp => {
                let (end, _, _) = spawn_writer(Arc::clone(leader.log()), data)?.await??;
                leader.log().commit(end, Durability::Local).wait()?;
                let first = follower_log.end_lsn();
                let meter = CpuMeter::start();
                let start = Instant::now();
                let follower = start_follower(follower_socket)?;
                let f = Arc::clone(follower.log());
                let lc = Arc::clone(&leader_checkpoints);
                tokio::spawn(async move {
                    // The slot exists once the follower is accepted (it has then acked).
                    while f.end_lsn() == first {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    lc.store(true, std::sync::atomic::Ordering::Release);
                });
                (follower, meter, start, first, end, None)
            }
        };
        let received = {
            let flog = Arc::clone(follower.log());
            tokio::spawn(async move {
                let deadline = Instant::now() + apply_timeout(bytes_hint);
                while flog.end_lsn() < end && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                start.elapsed().as_secs_f64()
            })
        };
        let waited = follower
            .wait_for_applied(end, apply_timeout(bytes_hint))
            .await;
        let secs = start.elapsed().as_secs_f64();
        let cpu = meter.end();
        let mut threads = meter.threads(&leader_tids, &follower_tids);
        // The writer thread has exited by now: it measured itself.
        threads.writer = append_secs.map_or(0.0, |(_, cpu)| cpu.as_secs_f64() / secs.max(1e-9));
        let received_secs = received.await?.min(secs);
        let status = leader.status();
        let fstatus = follower.status();
        follower.shutdown().await;
        leader.shutdown().await;
        if let Err(e) = waited {
            return Err(format!(
                "follower did not apply {end} in time: applied {}, connected {}, last error {:?}, \
                 apply error {:?}: {e}",
                fstatus.applied, fstatus.connected, fstatus.last_error, fstatus.apply_error
            )
            .into());
        }
        let info = status
            .followers
            .iter()
            .find(|f| f.node_id == "follower")
            .ok_or("the leader's status lists no follower \"follower\"")?;
        Ok::<_, BoxError>(ReplRun {
            log_bytes: end.bytes_after(first),
            wire_bytes: info.bytes_wire,
            raw_bytes: info.bytes_raw,
            secs,
            append_secs: append_secs.map(|(took, _)| took.as_secs_f64()),
            received_secs,
            cpu,
            threads,
        })
    });
    stop_checkpointer();
    result
}

/// Runs [`write_all`] on a thread of its own; the receiver gets the result.
fn spawn_writer(
    log: Arc<Log>,
    data: Arc<Batches>,
) -> Res<tokio::sync::oneshot::Receiver<Res<Written>>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("wsb-writer".into())
        .spawn(move || {
            let _ = tx.send(write_all(&log, &data));
        })?;
    Ok(rx)
}

/// The threads in `after` but not in `before`: those of the log opened in between (by
/// id: a new thread may not have set its name yet).
fn new_engine_threads(before: &ThreadTimes, after: &ThreadTimes) -> Vec<u64> {
    after
        .threads
        .iter()
        .filter(|(tid, _, _, _)| !before.threads.iter().any(|t| t.0 == *tid))
        .map(|t| t.0)
        .collect()
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
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("target")
        });
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

/// Median, minimum and maximum of `f` over `xs`, or `None` for an empty list.
fn stats<T>(xs: &[T], f: impl Fn(&T) -> f64) -> Option<(f64, f64, f64)> {
    if xs.is_empty() {
        return None;
    }
    let v: Vec<f64> = xs.iter().map(f).collect();
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    Some((median(&v), lo, hi))
}

fn spread(s: Option<(f64, f64, f64)>, n: usize) -> String {
    match s {
        Some((_, lo, hi)) if n > 1 => format!("{lo:.0}–{hi:.0} over {n} reps"),
        _ => String::new(),
    }
}

fn render(ctx: &Ctx, res: &Results, took: Duration) -> String {
    let mut s = String::new();
    let a = &ctx.args;
    let data = &ctx.data;
    let _ = writeln!(s, "# walship replication throughput\n");
    let _ = writeln!(
        s,
        "{} MiB of WAL-like JSON rows per measurement ({} rows, mean {:.0} B, seed {}, \
         appended in ~{} KiB batches); zstd level {}; {} KiB frames; {} MiB segments; \
         {} repetition(s), medians (A B A B interleaved); run took {:.0} s.\n",
        ctx.mib,
        data.rows,
        data.payload_bytes as f64 / data.rows.max(1) as f64,
        a.seed,
        a.batch_bytes >> 10,
        a.zstd_level,
        a.frame_bytes >> 10,
        a.segment_mib,
        ctx.reps,
        took.as_secs_f64()
    );
    let _ = writeln!(
        s,
        "| measurement | path | zstd | log MB/s | wire MB/s | wire / log | notes |"
    );
    let _ = writeln!(s, "| --- | --- | --- | ---: | ---: | ---: | --- |");
    if let Some(z) = &res.zstd {
        let mb = |t: &f64| z.input_bytes as f64 / MB / t;
        let range = stats(&z.compress_secs, mb);
        let _ = writeln!(
            s,
            "| zstd compress, 1 core | memory | {} | {:.0} | {:.0} | {:.3} | {} |",
            z.level,
            z.compress_mb_s(),
            z.compress_mb_s() / z.ratio(),
            1.0 / z.ratio(),
            join_notes(vec![
                format!(
                    "ratio {:.2}×; decompress {:.0} MB/s; {} KiB frames",
                    z.ratio(),
                    z.decompress_mb_s(),
                    z.frame_bytes >> 10
                ),
                spread(range, z.compress_secs.len()).replace("reps", "passes"),
            ])
        );
    }
    let link_path = format!("{} link", res.link_desc);
    for (net, path, raws) in [
        (0u8, "loopback".to_string(), &res.raw_loop),
        (1u8, link_path, &res.raw_link),
    ] {
        if net == 0 && a.no_loopback {
            continue;
        }
        if net == 1 {
            if let Some(reason) = &res.link_skipped {
                let _ = writeln!(
                    s,
                    "| raw quinn and replication | {path} | | skipped | | | {reason} |"
                );
                continue;
            }
        }
        if let Some(st) = stats(raws, |r| r.0.mb_s()) {
            let wire = stats(raws, |(r, _)| r.wire_bytes as f64 / MB / r.secs.max(1e-9));
            let lost: u64 = raws.iter().map(|r| r.0.lost_packets).sum();
            let mtu = raws.last().map_or(0, |r| r.0.mtu);
            let _ = writeln!(
                s,
                "| raw quinn, 1 stream | {path} | off | {:.0} | {:.0} | {:.3} | {} |",
                st.0,
                wire.map_or(0.0, |w| w.0),
                raws.iter()
                    .map(|(r, _)| r.wire_bytes as f64 / r.bytes.max(1) as f64)
                    .sum::<f64>()
                    / raws.len() as f64,
                join_notes(vec![
                    format!("wire = UDP bytes; MTU {mtu}; {lost} packets lost in all"),
                    cpu_note(raws, |r| r.1),
                    spread(Some(st), raws.len())
                ])
            );
        }
        for mode in [Mode::Live, Mode::CatchUp] {
            if mode == Mode::CatchUp && a.no_catchup {
                continue;
            }
            for zstd in [false, true] {
                let z = if zstd {
                    a.zstd_level.to_string()
                } else {
                    "off".into()
                };
                match res.repl_runs(net, mode, zstd) {
                    Some(runs) => {
                        let st = stats(runs, ReplRun::log_mb_s);
                        let wire = stats(runs, ReplRun::wire_mb_s).map_or(0.0, |w| w.0);
                        let ratio = stats(runs, ReplRun::wire_per_log).map_or(0.0, |w| w.0);
                        let append = stats(runs, |r| {
                            r.append_secs
                                .map_or(f64::NAN, |t| r.log_bytes as f64 / MB / t)
                        });
                        let received = stats(runs, |r| {
                            r.log_bytes as f64 / MB / r.received_secs.max(1e-9)
                        });
                        let mut notes = vec![];
                        if let Some((m, _, _)) = received {
                            notes.push(format!("received (appended on the follower) {m:.0} MB/s"));
                        }
                        if let Some((m, _, _)) = append.filter(|a| a.0.is_finite()) {
                            notes.push(format!("leader appended at {m:.0} MB/s"));
                        }
                        notes.push(cpu_note(runs, |r| r.cpu));
                        notes.push(spread(st, runs.len()));
                        let note = join_notes(notes);
                        let _ = writeln!(
                            s,
                            "| replication, {} | {path} | {z} | {:.0} | {wire:.0} | {ratio:.3} | {note} |",
                            mode.name(),
                            st.map_or(0.0, |x| x.0),
                        );
                    }
                    None => {
                        let why = res.repl_error.as_deref().unwrap_or("not measured");
                        let _ = writeln!(
                            s,
                            "| replication, {} | {path} | {z} | not measured | | | {} |",
                            mode.name(),
                            why.replace('|', "/")
                        );
                    }
                }
            }
        }
    }

    if !res.repl.is_empty() {
        let _ = writeln!(
            s,
            "\n## CPU by component\n\nCPUs busy during the timed interval (1.0 = one core \
             throughout; the machine has {}), medians over repetitions.\n",
            std::thread::available_parallelism().map_or(1, |n| n.get())
        );
        let _ = writeln!(
            s,
            "| replication | path | zstd | leader runtime | follower runtime | writer | \
             leader log | follower log | apply | rest | this process | other processes |"
        );
        let _ = writeln!(
            s,
            "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        );
        for ((net, mode, zstd), runs) in &res.repl {
            let m = |f: fn(&ReplRun) -> f64| stats(runs, f).map_or(f64::NAN, |x| x.0);
            let path = if *net == 0 {
                "loopback".to_string()
            } else {
                link_path_short(res)
            };
            let z = if *zstd {
                a.zstd_level.to_string()
            } else {
                "off".into()
            };
            let _ = writeln!(
                s,
                "| {} | {path} | {z} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
                mode.name(),
                m(|r| r.threads.leader_rt),
                m(|r| r.threads.follower_rt),
                m(|r| r.threads.writer),
                m(|r| r.threads.leader_log),
                m(|r| r.threads.follower_log),
                m(|r| r.threads.apply),
                m(|r| r.threads.rest),
                m(|r| r.cpu.own),
                m(|r| r.cpu.others),
            );
        }
    }

    let _ = writeln!(s, "\n## Targets\n");
    let _ = writeln!(s, "| target | mode | value | goal | result |");
    let _ = writeln!(s, "| --- | --- | ---: | --- | --- |");
    let med = |net, mode, zstd, f: fn(&ReplRun) -> f64| {
        res.repl_runs(net, mode, zstd)
            .and_then(|r| stats(r, f))
            .map(|x| x.0)
    };
    let raw_loop = stats(&res.raw_loop, |r| r.0.mb_s()).map(|x| x.0);
    let zc = res.zstd.as_ref().map(ZstdSpeed::compress_mb_s);
    for mode in [Mode::Live, Mode::CatchUp] {
        if mode == Mode::CatchUp && a.no_catchup {
            continue;
        }
        let rows: [(String, Option<f64>, &str, bool); 4] = [
            (
                "replication without zstd / raw quinn (loopback)".into(),
                ratio(med(0, mode, false, ReplRun::log_mb_s), raw_loop),
                "≥ 0.70",
                true,
            ),
            (
                "replication with zstd / 1-core zstd compression (loopback)".into(),
                ratio(med(0, mode, true, ReplRun::log_mb_s), zc),
                "≥ 0.80",
                true,
            ),
            (
                "wire bytes / log bytes with zstd (loopback)".into(),
                med(0, mode, true, ReplRun::wire_per_log),
                "≤ 0.333",
                false,
            ),
            (
                format!("{}: zstd / no-zstd log throughput", link_path_short(res)),
                ratio(
                    med(1, mode, true, ReplRun::log_mb_s),
                    med(1, mode, false, ReplRun::log_mb_s),
                ),
                "≥ 2.5",
                true,
            ),
        ];
        for (what, value, goal, at_least) in rows {
            let (v, verdict) = match value {
                Some(v) => {
                    let bound: f64 = goal
                        .trim_start_matches(['≥', '≤', ' '])
                        .parse()
                        .unwrap_or(f64::NAN);
                    let pass = if at_least {
                        v >= bound
                    } else {
                        v <= 1.0 / 3.0 + 1e-9
                    };
                    (
                        format!("{v:.3}"),
                        if pass { "PASS" } else { "MISS" }.to_string(),
                    )
                }
                None => ("—".into(), "not measured".into()),
            };
            let _ = writeln!(s, "| {what} | {} | {v} | {goal} | {verdict} |", mode.name());
        }
    }
    let others = res
        .raw_loop
        .iter()
        .chain(&res.raw_link)
        .map(|r| r.1.others)
        .chain(
            res.repl
                .iter()
                .flat_map(|(_, v)| v.iter().map(|r| r.cpu.others)),
        )
        .fold(0.0, f64::max);
    let mut notes = res.notes.clone();
    if others > 0.25 {
        let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());
        notes.insert(
            0,
            format!(
                "**other processes used up to {others:.1} of the machine's {ncpu} CPUs during \
                 some runs** (see the CPUs notes): those runs are depressed; re-run on a \
                 quieter machine or with more --reps"
            ),
        );
    }
    if !notes.is_empty() || res.repl_error.is_some() {
        let _ = writeln!(s, "\nNotes:");
        if let Some(e) = &res.repl_error {
            let _ = writeln!(s, "- replication stopped at an error: {e}");
        }
        for n in &notes {
            let _ = writeln!(s, "- {n}");
        }
    }
    let _ = writeln!(
        s,
        "\nlog MB/s: log bytes (LSN distance) applied on the follower per second, timed for \
         \"live\" from the first append (follower connected) and for \"catch-up\" from the \
         follower's start until it applied the leader's end; wire: `Ship` frame bytes the \
         leader sent (raw quinn: UDP bytes); MB = 10^6 bytes."
    );
    s
}

/// The non-empty notes, joined with "; ".
fn join_notes(notes: Vec<String>) -> String {
    notes
        .into_iter()
        .filter(|n| !n.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

fn link_path_short(res: &Results) -> String {
    format!("{} link", res.link_desc)
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}
