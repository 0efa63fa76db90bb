//! `latency`: closed-loop commit latency and throughput of walship-engine, next to a
//! baseline of the device under the log, in one run.
//!
//! ```text
//! cargo run --release -p walship-bench --bin latency -- --quick
//! cargo run --release -p walship-bench --bin latency -- --writers 1,64 --sizes 128 --levels local
//! # walship against its peers (okaywal, raft-engine, pwrite + fdatasync per commit):
//! cargo run --release -p walship-bench --bin latency -- --levels local --writers 1,64 --sizes 128,4096
//! ```
//!
//! 1. Device baseline on the file system of `--dir`: 4 KiB `pwrite` + `fdatasync`
//!    latency, and buffered sequential write bandwidth (see `walship_bench::device`).
//! 2. The matrix: writers × durability × record size × backend. Each cell opens a fresh
//!    log in a fresh directory; every writer thread loops { append; commit(level).wait }
//!    and records each round trip in its own HDR histogram; after a warm-up, the cell is
//!    measured for a fixed time. A checkpoint thread calls `set_checkpoint(flushed)`
//!    every few milliseconds so retired segments are recycled, as an embedding database
//!    would. Repetitions of a cell alternate backends (A B A B) so both see the same
//!    machine conditions.
//! 3. The device fsync latency again, to show drift over the run.
//!
//! Peers (`--peers`, default `okaywal,raft-engine,device`; `none` skips them): every
//! local cell (`Durability::Local`, 0 followers) also runs the same closed loop — same
//! writers × record size, warm-up and measured time, a fresh directory per repetition,
//! an HDR histogram of its own — through `walship_bench::peers::DurableLog` for okaywal
//! 0.3.1, raft-engine 0.4.2 and the bare device (one `pwrite` + `fdatasync` per commit),
//! interleaved with walship's repetitions of that cell (A B C D A B C D). Peer rows join
//! the results table, and each walship Local cell is given as ratios to each peer
//! (throughput, p50, p99, p99.9: "1.23× okaywal").
//!
//! Remote levels (`remote-write`, `remote-flush`, `remote-apply`) run the same closed loop
//! against a leader with 1 and 2 followers (`--followers`) in this process, over loopback
//! QUIC with mutual TLS (walship-transport), each follower with its own log on the same
//! file system; the sync policy is `ANY k (*)` with `--quorum-k` (default 1). Remote cells
//! use the first backend only: the backend comparison is in the local cells.
//!
//! Output: Markdown on stdout (progress on stderr), and in `--out` one `.hgrm` file per
//! cell and per peer of a local cell, the device baseline, one SVG chart per local cell
//! (`local-<writers>w-<size>B.svg`: latency percentile curves drawn as HdrHistogram's
//! plotter does, one line per walship backend and per peer), `table.md` (the results
//! table) and `report.md` (all of stdout).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use clap::Parser;
use hdrhistogram::Histogram;
use std::sync::Arc;
use walship_bench::device::{self, Bandwidth, FsyncLatency};
use walship_bench::peers::{self, PeerKind, PeerOptions};
use walship_bench::svg;
use walship_bench::sys::{BlockDevice, DiskCounters, MachineCpu, ThreadTimes, Usage};
use walship_bench::{hgrm, us, utc_timestamp, MB};
use walship_engine::{BackendKind, Durability, Log, Options};
use walship_transport::tls::ClusterCa;
use walship_transport::{Follower, FollowerOptions, Leader, LeaderOptions, Security, SyncPolicy};

use walship_bench::Res;

/// Closed-loop commit latency/throughput matrix of walship-engine against a device
/// baseline measured in the same run.
#[derive(Parser, Debug)]
#[command(name = "latency", version)]
struct Args {
    /// Short run (well under a minute): 0.6 s per cell, 16 MiB segments, smaller device tests.
    #[arg(long)]
    quick: bool,
    /// Where to put the device test files and the logs: a new directory is made inside it
    /// and removed at the end [default: the system temporary directory].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Output directory for .hgrm files, device.md, table.md and report.md
    /// [default: <workspace>/target/latency/<UTC timestamp>].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Measured time per cell and repetition, ms [default: 3000, 600 with --quick].
    #[arg(long)]
    duration_ms: Option<u64>,
    /// Warm-up per cell and repetition before measuring, ms [default: 500, 200 with --quick].
    #[arg(long)]
    warmup_ms: Option<u64>,
    /// Repetitions per cell, alternating backends [default: 2, 1 with --quick].
    #[arg(long)]
    reps: Option<usize>,
    /// I/O backends, comma-separated (io_uring is skipped with a note if unavailable).
    #[arg(long, value_delimiter = ',', default_value = "io_uring,portable")]
    backends: Vec<BackendKind>,
    /// Closed-loop writer thread counts.
    #[arg(long, value_delimiter = ',', default_value = "1,8,64")]
    writers: Vec<usize>,
    /// Record sizes in bytes.
    #[arg(long, value_delimiter = ',', default_value = "128,4096")]
    sizes: Vec<usize>,
    /// Durability levels; remote ones run with a leader and followers over loopback QUIC.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "async,local,remote-write,remote-flush,remote-apply"
    )]
    levels: Vec<Durability>,
    /// Follower counts for the remote levels.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    followers: Vec<usize>,
    /// Remote commits wait for ANY k of the followers (cells with fewer are skipped).
    #[arg(long, default_value_t = 1)]
    quorum_k: usize,
    /// Segment capacity, MiB [default: 64, 16 with --quick].
    #[arg(long)]
    segment_mib: Option<u64>,
    /// Engine option `async_flush_interval`, ms [default: the engine's default].
    #[arg(long)]
    async_flush_ms: Option<u64>,
    /// Engine option `max_pending_bytes`, MiB [default: the engine's default].
    #[arg(long)]
    max_pending_mib: Option<u64>,
    /// Async task counts for the `commit(..).await` section (2-worker tokio runtime,
    /// Local, 128 B); 0 skips it.
    #[arg(long, value_delimiter = ',', default_value = "64,256,1024")]
    tasks: Vec<usize>,
    /// How often the checkpoint thread advances the checkpoint to `flushed`, ms; 0 runs
    /// no checkpoint thread (nothing is retired: every segment is new, zero-filled).
    #[arg(long, default_value_t = 10)]
    checkpoint_ms: u64,
    /// Peers run in the same closed loop as every local cell (0 followers), their
    /// repetitions interleaved with walship's: okaywal, raft-engine, device (one pwrite +
    /// fdatasync per commit), comma-separated, or `none`.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "okaywal,raft-engine,device"
    )]
    peers: Vec<String>,
    /// Where the followers' logs of the remote cells go [default: next to the leader's,
    /// on the same file system]; e.g. a file system on another device, so the leader's
    /// and the followers' flushes do not queue on one disk.
    #[arg(long)]
    follower_dir: Option<PathBuf>,
}

/// Settings after defaults.
#[derive(Debug, Clone)]
struct Config {
    quick: bool,
    duration: Duration,
    warmup: Duration,
    reps: usize,
    segment_capacity: u64,
    async_flush_interval: Option<Duration>,
    max_pending_bytes: Option<u64>,
    checkpoint_every: Duration,
    quorum_k: usize,
    follower_dir: Option<PathBuf>,
    fsync_iterations: usize,
    bandwidth_bytes: u64,
    bandwidth_reps: usize,
    peer_opts: PeerOptions,
}

impl Config {
    fn from(args: &Args) -> Config {
        let q = args.quick;
        Config {
            quick: q,
            duration: Duration::from_millis(args.duration_ms.unwrap_or(if q {
                600
            } else {
                3_000
            })),
            warmup: Duration::from_millis(args.warmup_ms.unwrap_or(if q { 200 } else { 500 })),
            reps: args.reps.unwrap_or(if q { 1 } else { 2 }).max(1),
            segment_capacity: args.segment_mib.unwrap_or(if q { 16 } else { 64 }) << 20,
            async_flush_interval: args
                .async_flush_ms
                .map(|ms| Duration::from_millis(ms.max(1))),
            max_pending_bytes: args.max_pending_mib.map(|m| m.max(1) << 20),
            checkpoint_every: Duration::from_millis(args.checkpoint_ms),
            quorum_k: args.quorum_k,
            follower_dir: args.follower_dir.clone(),
            fsync_iterations: if q { 1_000 } else { 5_000 },
            bandwidth_bytes: if q { 64 << 20 } else { 256 << 20 },
            bandwidth_reps: if q { 2 } else { 3 },
            peer_opts: PeerOptions {
                device_file_bytes: if q { 16 << 20 } else { 64 << 20 },
            },
        }
    }
}

fn backend_label(kind: BackendKind) -> &'static str {
    match kind {
        BackendKind::Auto => "auto",
        BackendKind::IoUring => "io_uring",
        BackendKind::Portable => "portable",
    }
}

/// One cell of the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cell {
    backend: BackendKind,
    level: Durability,
    /// Followers streaming from the log (0 for local levels).
    followers: usize,
    writers: usize,
    size: usize,
}

impl Cell {
    fn name(&self) -> String {
        format!(
            "{}-{}-{}f-{}w-{}B",
            backend_label(self.backend),
            self.level,
            self.followers,
            self.writers,
            self.size
        )
    }
}

/// What one repetition of a cell measured.
#[derive(Debug, Clone)]
struct Rep {
    commits: u64,
    elapsed: Duration,
    /// Log bytes written (`written` watermark advance), headers and padding included.
    log_written: u64,
    disk: Option<DiskCounters>,
    usage: Option<Usage>,
    machine: Option<MachineCpu>,
    threads: ThreadGroups,
    open_time: Duration,
    close_time: Duration,
    /// The log's own counters over the measured window.
    stats: walship_engine::Stats,
}

impl Rep {
    fn commits_per_sec(&self) -> f64 {
        self.commits as f64 / self.elapsed.as_secs_f64()
    }
}

/// Figures of repetitions and their merged latency histogram (ns): a walship cell's or a
/// peer's.
trait Measured {
    fn reps(&self) -> &[Rep];
    fn hist(&self) -> &Histogram<u64>;
    /// Record size, bytes.
    fn size(&self) -> usize;

    fn elapsed(&self) -> f64 {
        self.reps().iter().map(|r| r.elapsed.as_secs_f64()).sum()
    }

    fn commits(&self) -> u64 {
        self.reps().iter().map(|r| r.commits).sum()
    }

    fn commits_per_sec(&self) -> f64 {
        self.commits() as f64 / self.elapsed()
    }

    /// Appended payload, MB/s.
    fn mb_s(&self) -> f64 {
        self.commits() as f64 * self.size() as f64 / MB / self.elapsed()
    }

    fn p(&self, q: f64) -> u64 {
        self.hist().value_at_quantile(q)
    }

    /// (max − min) / mean of per-repetition throughput, percent.
    fn spread_pct(&self) -> Option<f64> {
        if self.reps().len() < 2 {
            return None;
        }
        let v: Vec<f64> = self.reps().iter().map(Rep::commits_per_sec).collect();
        let (lo, hi) = v
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        Some((hi - lo) / mean * 100.0)
    }
}

/// A cell's repetitions and merged latency histogram (ns).
#[derive(Debug, Clone)]
struct CellResult {
    cell: Cell,
    backend_name: &'static str,
    reps: Vec<Rep>,
    hist: Histogram<u64>,
}

impl Measured for CellResult {
    fn reps(&self) -> &[Rep] {
        &self.reps
    }
    fn hist(&self) -> &Histogram<u64> {
        &self.hist
    }
    fn size(&self) -> usize {
        self.cell.size
    }
}

/// A peer's repetitions in one local cell (writers × record size) and its merged latency
/// histogram (ns).
#[derive(Debug, Clone)]
struct PeerResult {
    kind: PeerKind,
    writers: usize,
    size: usize,
    reps: Vec<Rep>,
    hist: Histogram<u64>,
}

impl PeerResult {
    /// As [`Cell::name`], with the peer in place of the backend.
    fn name(&self) -> String {
        format!(
            "{}-{}-0f-{}w-{}B",
            self.kind,
            Durability::Local,
            self.writers,
            self.size
        )
    }
}

impl Measured for PeerResult {
    fn reps(&self) -> &[Rep] {
        &self.reps
    }
    fn hist(&self) -> &Histogram<u64> {
        &self.hist
    }
    fn size(&self) -> usize {
        self.size
    }
}

impl CellResult {
    fn sum_disk(&self) -> Option<DiskCounters> {
        let mut t = DiskCounters::default();
        for r in &self.reps {
            let d = r.disk?;
            t.writes += d.writes;
            t.sectors_written += d.sectors_written;
            t.write_ms += d.write_ms;
            t.flushes += d.flushes;
            t.flush_ms += d.flush_ms;
        }
        Some(t)
    }

    fn sum_usage(&self) -> Option<Usage> {
        let mut t = Usage::default();
        for r in &self.reps {
            let u = r.usage?;
            t.cpu += u.cpu;
            t.voluntary_switches += u.voluntary_switches;
            t.involuntary_switches += u.involuntary_switches;
        }
        Some(t)
    }
}

/// Scheduler time of the threads that matter over a measured window, per group:
/// (ns running, ns runnable but waiting for a CPU, number of threads).
#[derive(Debug, Clone, Copy, Default)]
struct ThreadGroups {
    writer: (u64, u64, usize),
    flusher: (u64, u64, usize),
    preparer: (u64, u64, usize),
    appenders: (u64, u64, usize),
}

impl ThreadGroups {
    fn between(a: &ThreadTimes, b: &ThreadTimes) -> ThreadGroups {
        ThreadGroups {
            writer: b.since(a, "walship-writer"),
            // The portable backend's flusher thread, or io_uring's kernel io-wq workers,
            // which run the fsync (and writes that cannot complete without blocking).
            flusher: {
                let (f, u) = (b.since(a, "walship-flusher"), b.since(a, "iou-wrk"));
                (f.0 + u.0, f.1 + u.1, f.2 + u.2)
            },
            // Thread names are cut to 15 bytes: "walship-prepare".
            preparer: b.since(a, "walship-prep"),
            appenders: b.since(a, "writer-"),
        }
    }

    fn add(&mut self, o: &ThreadGroups) {
        for (x, y) in [
            (&mut self.writer, o.writer),
            (&mut self.flusher, o.flusher),
            (&mut self.preparer, o.preparer),
            (&mut self.appenders, o.appenders),
        ] {
            x.0 += y.0;
            x.1 += y.1;
            x.2 = x.2.max(y.2);
        }
    }
}

/// `commit(..).await` from many tokio tasks on a two-worker runtime.
fn tasks_section(runs: &[walship_bench::tasks::TaskRun]) -> String {
    let mut s = String::from(
        "## Async tasks\n\n`commit(lsn, Local).await` from N tokio tasks on a runtime of 2 worker threads, 128 B records, portable backend, one fresh log per repetition. CPU and context switches are the whole process's (runtime workers and the log's threads) over the measured window, per commit: they should not grow with N.\n\n| tasks | rep | commits/s | p50 µs | p99 µs | p99.9 µs | max µs | CPU µs / commit | context switches / commit | commits / flush |\n| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    let mut rep = 0;
    let mut last = 0;
    for r in runs {
        rep = if r.tasks == last { rep + 1 } else { 1 };
        last = r.tasks;
        let opt = |v: Option<f64>, d: usize| v.map_or("n/a".to_string(), |x| format!("{x:.d$}"));
        let _ = writeln!(
            s,
            "| {} | {rep} | {} | {} | {} | {} | {} | {} | {} | {:.1} |",
            r.tasks,
            fmt_rate(r.rate()),
            fmt_us(r.hist.value_at_quantile(0.5)),
            fmt_us(r.hist.value_at_quantile(0.99)),
            fmt_us(r.hist.value_at_quantile(0.999)),
            fmt_us(r.hist.max()),
            opt(r.cpu_us_per_commit(), 2),
            opt(r.switches_per_commit(), 3),
            r.commits as f64 / r.flushes.max(1) as f64,
        );
    }
    let best = runs
        .iter()
        .filter(|r| r.tasks == 1024)
        .map(walship_bench::tasks::TaskRun::rate)
        .fold(None, |a: Option<f64>, x| Some(a.map_or(x, |a| a.max(x))));
    if let Some(b) = best {
        let _ = writeln!(
            s,
            "\nTarget: Local from 1024 async tasks × 128 B ≥ 250 K commits/s: **{}** — best repetition {} commits/s.",
            verdict(b >= 250_000.0),
            fmt_rate(b)
        );
    }
    s.push('\n');
    s
}

/// The engine counters that moved between two snapshots.
fn stats_since(a: &walship_engine::Stats, b: &walship_engine::Stats) -> walship_engine::Stats {
    walship_engine::Stats {
        flushes: b.flushes - a.flushes,
        flush_micros: b.flush_micros - a.flush_micros,
        segments_created: b.segments_created - a.segments_created,
        segments_recycled: b.segments_recycled - a.segments_recycled,
        segment_waits: b.segment_waits - a.segment_waits,
        segment_wait_micros: b.segment_wait_micros - a.segment_wait_micros,
        back_pressure_waits: b.back_pressure_waits - a.back_pressure_waits,
        ..*b
    }
}

fn delta<T>(a: Option<T>, b: Option<T>, f: impl Fn(&T, &T) -> T) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(f(&b, &a)),
        _ => None,
    }
}

const WARMUP: u8 = 0;
const MEASURE: u8 = 1;
const STOP: u8 = 2;

/// A writer thread: closed loop until the phase is `STOP`; records only operations that
/// started while measuring.
fn writer_loop(
    log: &Log,
    record: &[u8],
    level: Durability,
    phase: &AtomicU8,
) -> Res<(Histogram<u64>, u64)> {
    let mut hist = hgrm::latency_histogram();
    let mut count = 0u64;
    loop {
        let p = phase.load(Ordering::Acquire);
        if p == STOP {
            return Ok((hist, count));
        }
        let t0 = Instant::now();
        let lsn = log.append(record)?;
        // A generous deadline so an engine that loses a wake-up fails the run instead of
        // hanging it.
        log.commit(lsn, level)
            .timeout(Duration::from_secs(30))
            .wait()?;
        let dt = t0.elapsed();
        if p == MEASURE {
            hist.saturating_record(dt.as_nanos() as u64);
            count += 1;
        }
    }
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(167).wrapping_add(13))
        .collect()
}

/// The engine options of every cell's log.
fn log_options(cfg: &Config, backend: BackendKind) -> Options {
    let defaults = Options::default();
    Options {
        segment_capacity: cfg.segment_capacity,
        backend,
        async_flush_interval: cfg
            .async_flush_interval
            .unwrap_or(defaults.async_flush_interval),
        max_pending_bytes: cfg.max_pending_bytes.unwrap_or(defaults.max_pending_bytes),
        ..defaults
    }
}

/// A leader on a cell's log and its followers, over loopback QUIC with mutual TLS, for
/// the remote levels. Each follower has its own log next to the leader's.
struct Replicas {
    rt: tokio::runtime::Runtime,
    leader: Option<Leader>,
    followers: Vec<Follower>,
    dirs: Vec<PathBuf>,
}

impl Replicas {
    fn start(
        cfg: &Config,
        cell: Cell,
        dir: &Path,
        log: &Arc<Log>,
        ca: &ClusterCa,
    ) -> Res<Replicas> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("walship-net")
            .enable_all()
            .build()
            .map_err(|e| format!("start the tokio runtime: {e}"))?;
        let _guard = rt.enter();
        let node = |n: &str| -> Res<Security> {
            Ok(Security::mutual_tls(ca.issue_node(n)?, ca.cert_pem()))
        };
        let leader = Leader::start(
            Arc::clone(log),
            node("leader")?,
            LeaderOptions {
                sync: SyncPolicy::Any {
                    k: cfg.quorum_k,
                    of: vec!["*".into()],
                },
                remote_commit_timeout: Duration::from_secs(30),
                ..LeaderOptions::default()
            },
        )?;
        let addr = leader.local_addr()?;
        let mut r = Replicas {
            leader: Some(leader),
            followers: Vec::new(),
            dirs: Vec::new(),
            rt,
        };
        for i in 0..cell.followers {
            let name = format!(
                "{}-f{i}",
                dir.file_name()
                    .map_or("log".into(), |n| n.to_string_lossy())
            );
            let fdir = match &cfg.follower_dir {
                Some(base) => base.join(name),
                None => dir.with_file_name(name),
            };
            r.dirs.push(fdir.clone());
            let flog = Log::open(&fdir, log_options(cfg, cell.backend))
                .map_err(|e| format!("open follower log in {}: {e}", fdir.display()))?;
            let f = Follower::start(
                Arc::new(flog),
                node(&format!("f{i}"))?,
                FollowerOptions {
                    leader: addr,
                    leader_node_id: "leader".into(),
                    ..FollowerOptions::default()
                },
                |_: &walship_engine::Record| {},
            )?;
            r.followers.push(f);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while r.streaming() < cell.followers {
            if Instant::now() > deadline {
                return Err(format!(
                    "only {} of {} followers streaming after 30 s",
                    r.streaming(),
                    cell.followers
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(r)
    }

    fn streaming(&self) -> usize {
        self.leader.as_ref().map_or(0, |l| {
            l.status()
                .followers
                .iter()
                .filter(|f| f.state == walship_transport::status::StreamState::Streaming)
                .count()
        })
    }

    fn logs(&self) -> Vec<Arc<Log>> {
        self.followers.iter().map(|f| Arc::clone(f.log())).collect()
    }

    /// Stops the sessions, closes the followers' logs and removes their directories.
    fn stop(mut self) -> Res<()> {
        let followers = std::mem::take(&mut self.followers);
        let logs: Vec<Arc<Log>> = followers.iter().map(|f| Arc::clone(f.log())).collect();
        let leader = self.leader.take();
        self.rt.block_on(async move {
            for f in followers {
                f.shutdown().await;
            }
            if let Some(l) = leader {
                l.shutdown().await;
            }
        });
        for l in logs {
            l.close()?;
        }
        for d in &self.dirs {
            std::fs::remove_dir_all(d).map_err(|e| format!("remove {}: {e}", d.display()))?;
        }
        Ok(())
    }
}

/// Runs one repetition of `cell` in a fresh log under `root`.
fn run_rep(
    cfg: &Config,
    cell: Cell,
    root: &Path,
    rep: usize,
    dev: Option<&BlockDevice>,
    ca: &ClusterCa,
) -> Res<(Rep, Histogram<u64>, &'static str)> {
    let dir = root.join(format!("{}-r{rep}", cell.name()));
    let opts = log_options(cfg, cell.backend);
    let t_open = Instant::now();
    let log =
        Arc::new(Log::open(&dir, opts).map_err(|e| format!("open log in {}: {e}", dir.display()))?);
    let open_time = t_open.elapsed();
    let backend_name = log.backend_name();
    let replicas = if cell.level.is_remote() {
        Some(Replicas::start(cfg, cell, &dir, &log, ca)?)
    } else {
        None
    };
    let follower_logs = replicas.as_ref().map(Replicas::logs).unwrap_or_default();
    let record = pattern(cell.size);
    let phase = AtomicU8::new(WARMUP);
    let first_error: Mutex<Option<String>> = Mutex::new(None);

    let measured = std::thread::scope(|s| -> Res<_> {
        let (log, record, phase, first_error) = (&*log, &record, &phase, &first_error);
        let follower_logs = &follower_logs;
        s.spawn(move || {
            while !cfg.checkpoint_every.is_zero() && phase.load(Ordering::Acquire) != STOP {
                std::thread::sleep(cfg.checkpoint_every);
                log.set_checkpoint(log.watermarks().flushed);
                for f in follower_logs {
                    f.set_checkpoint(f.watermarks().flushed);
                }
            }
        });
        let handles = spawn_writers(s, cell.writers, phase, first_error, move |_| {
            writer_loop(log, record, cell.level, phase)
        })?;
        sleep_unless_stopped(phase, cfg.warmup);
        let (w0, d0, u0) = (
            log.watermarks(),
            dev.and_then(BlockDevice::counters),
            Usage::now(),
        );
        let (m0, t0) = (MachineCpu::now(), ThreadTimes::now());
        let s0 = log.stats();
        let start = Instant::now();
        // Only a running cell enters the measurement phase; a failed one stays stopped.
        let _ = phase.compare_exchange(WARMUP, MEASURE, Ordering::AcqRel, Ordering::Acquire);
        sleep_unless_stopped(phase, cfg.duration);
        phase.store(STOP, Ordering::Release);
        let elapsed = start.elapsed();
        let (w1, d1, u1) = (
            log.watermarks(),
            dev.and_then(BlockDevice::counters),
            Usage::now(),
        );
        let (m1, t1) = (MachineCpu::now(), ThreadTimes::now());
        let s1 = log.stats();
        let (hist, commits) = join_writers(handles, first_error)?;
        let rep = Rep {
            commits,
            elapsed,
            log_written: w1.written.bytes_after(w0.written),
            disk: delta(d0, d1, DiskCounters::since),
            usage: delta(u0, u1, Usage::since),
            machine: delta(m0, m1, MachineCpu::since),
            threads: ThreadGroups::between(&t0, &t1),
            open_time,
            close_time: Duration::ZERO,
            stats: stats_since(&s0, &s1),
        };
        Ok((rep, hist))
    });
    let stopped = replicas.map_or(Ok(()), Replicas::stop);
    let t_close = Instant::now();
    let closed = log.close();
    drop(log);
    let close_time = t_close.elapsed();
    let removed = std::fs::remove_dir_all(&dir);
    let (mut rep_result, hist) =
        measured.map_err(|e| format!("cell {} repetition {rep}: {e}", cell.name()))?;
    stopped.map_err(|e| format!("stop the replicas of cell {}: {e}", cell.name()))?;
    closed.map_err(|e| format!("close log of cell {}: {e}", cell.name()))?;
    removed.map_err(|e| format!("remove {}: {e}", dir.display()))?;
    rep_result.close_time = close_time;
    Ok((rep_result, hist, backend_name))
}

/// Starts `n` closed-loop writer threads named `writer-<i>` running `body(i)`; the first
/// to fail records its error and stops the others.
fn spawn_writers<'scope, F>(
    s: &'scope std::thread::Scope<'scope, '_>,
    n: usize,
    phase: &'scope AtomicU8,
    first_error: &'scope Mutex<Option<String>>,
    body: F,
) -> Res<Vec<std::thread::ScopedJoinHandle<'scope, WriterResult>>>
where
    F: Fn(usize) -> WriterResult + Send + Copy + 'scope,
{
    let mut handles = Vec::with_capacity(n);
    for i in 0..n {
        let h = std::thread::Builder::new()
            .name(format!("writer-{i}"))
            .spawn_scoped(s, move || {
                let r = body(i);
                if let Err(e) = &r {
                    let mut f = first_error.lock().unwrap_or_else(|p| p.into_inner());
                    f.get_or_insert_with(|| format!("writer {i}: {e}"));
                    phase.store(STOP, Ordering::Release);
                }
                r
            });
        match h {
            Ok(h) => handles.push(h),
            Err(e) => {
                phase.store(STOP, Ordering::Release);
                return Err(format!("spawn writer thread {i}: {e}").into());
            }
        }
    }
    Ok(handles)
}

/// What a writer thread returns: its histogram and commit count.
type WriterResult = Res<(Histogram<u64>, u64)>;

/// Joins a cell's writer threads: their merged histogram and commit count, or the first
/// writer's error.
fn join_writers(
    handles: Vec<std::thread::ScopedJoinHandle<'_, WriterResult>>,
    first_error: &Mutex<Option<String>>,
) -> Res<(Histogram<u64>, u64)> {
    let mut hist = hgrm::latency_histogram();
    let mut commits = 0;
    for h in handles {
        match h.join() {
            Ok(Ok((hh, n))) => {
                hist.add(&hh)
                    .map_err(|e| format!("merge histograms: {e:?}"))?;
                commits += n;
            }
            Ok(Err(_)) => {} // reported through first_error
            Err(_) => return Err("a writer thread panicked".into()),
        }
    }
    if let Some(e) = first_error.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(e.into());
    }
    Ok((hist, commits))
}

/// A peer's writer thread: the same closed loop as [`writer_loop`], through the peer's
/// [`peers::DurableLog`].
fn peer_writer_loop(
    log: &dyn peers::DurableLog,
    writer: usize,
    record: &[u8],
    phase: &AtomicU8,
) -> Res<(Histogram<u64>, u64)> {
    let mut hist = hgrm::latency_histogram();
    let mut count = 0u64;
    loop {
        let p = phase.load(Ordering::Acquire);
        if p == STOP {
            return Ok((hist, count));
        }
        let t0 = Instant::now();
        log.append_durable(writer, record)?;
        let dt = t0.elapsed();
        if p == MEASURE {
            hist.saturating_record(dt.as_nanos() as u64);
            count += 1;
        }
    }
}

/// Sleeps for `d` or until the phase is `STOP`.
fn sleep_unless_stopped(phase: &AtomicU8, d: Duration) {
    let until = Instant::now() + d;
    while phase.load(Ordering::Acquire) != STOP {
        let now = Instant::now();
        if now >= until {
            break;
        }
        std::thread::sleep((until - now).min(Duration::from_millis(20)));
    }
}

/// Runs one repetition of `kind` with `writers` closed-loop writers of `size`-byte
/// records in a fresh directory under `root`: the warm-up and measured time of the
/// walship cells.
fn run_peer_rep(
    cfg: &Config,
    kind: PeerKind,
    writers: usize,
    size: usize,
    root: &Path,
    rep: usize,
    dev: Option<&BlockDevice>,
) -> Res<(Rep, Histogram<u64>)> {
    let dir = root.join(format!(
        "{kind}-{}-0f-{writers}w-{size}B-r{rep}",
        Durability::Local
    ));
    let t_open = Instant::now();
    let log = kind.open(&dir, &cfg.peer_opts)?;
    let open_time = t_open.elapsed();
    let record = pattern(size);
    let phase = AtomicU8::new(WARMUP);
    let first_error: Mutex<Option<String>> = Mutex::new(None);
    let measured = std::thread::scope(|s| -> Res<_> {
        let (log, record, phase, first_error) = (&*log, &record, &phase, &first_error);
        let handles = spawn_writers(s, writers, phase, first_error, move |i| {
            peer_writer_loop(log, i, record, phase)
        })?;
        sleep_unless_stopped(phase, cfg.warmup);
        let (d0, u0) = (dev.and_then(BlockDevice::counters), Usage::now());
        let (m0, t0) = (MachineCpu::now(), ThreadTimes::now());
        let start = Instant::now();
        let _ = phase.compare_exchange(WARMUP, MEASURE, Ordering::AcqRel, Ordering::Acquire);
        sleep_unless_stopped(phase, cfg.duration);
        phase.store(STOP, Ordering::Release);
        let elapsed = start.elapsed();
        let (d1, u1) = (dev.and_then(BlockDevice::counters), Usage::now());
        let (m1, t1) = (MachineCpu::now(), ThreadTimes::now());
        let (hist, commits) = join_writers(handles, first_error)?;
        Ok((
            Rep {
                commits,
                elapsed,
                log_written: 0,
                disk: delta(d0, d1, DiskCounters::since),
                usage: delta(u0, u1, Usage::since),
                machine: delta(m0, m1, MachineCpu::since),
                threads: ThreadGroups::between(&t0, &t1),
                open_time,
                close_time: Duration::ZERO,
                stats: walship_engine::Stats::default(),
            },
            hist,
        ))
    });
    let t_close = Instant::now();
    let closed = log.close();
    let close_time = t_close.elapsed();
    let removed = std::fs::remove_dir_all(&dir);
    let (mut rep_result, hist) = measured
        .map_err(|e| format!("peer {kind} {writers} writers × {size} B repetition {rep}: {e}"))?;
    closed.map_err(|e| format!("close peer {kind}: {e}"))?;
    removed.map_err(|e| format!("remove {}: {e}", dir.display()))?;
    rep_result.close_time = close_time;
    Ok((rep_result, hist))
}

/// Whether a log opens with `kind` here; the error text if not.
fn probe_backend(root: &Path, kind: BackendKind) -> Result<(), String> {
    let dir = root.join(format!("probe-{}", backend_label(kind)));
    let opts = Options {
        segment_capacity: 64 << 10,
        backend: kind,
        ..Options::default()
    };
    let r = match Log::open(&dir, opts) {
        Ok(log) => log.close().map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    let _ = std::fs::remove_dir_all(&dir);
    r
}

fn fmt_us(ns: u64) -> String {
    let v = us(ns);
    if v < 10.0 {
        format!("{v:.2}")
    } else if v < 1_000.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

fn fmt_rate(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn fmt_ratio(v: f64) -> String {
    if v >= 10.0 {
        format!("{v:.1}×")
    } else if v < 0.1 {
        format!("{v:.3}×")
    } else {
        format!("{v:.2}×")
    }
}

/// The device figures the ratios are taken against.
struct Baseline {
    fsync: FsyncLatency,
    bandwidth: Bandwidth,
}

impl Baseline {
    fn p99(&self) -> u64 {
        self.fsync.at(0.99)
    }

    /// The buffered sequential write bandwidth targets compare with: already-written file,
    /// no final fdatasync.
    fn bw(&self) -> f64 {
        self.bandwidth.overwrite_mb_s(false)
    }
}

fn fsync_row(label: &str, f: &FsyncLatency) -> String {
    format!(
        "| {label} | {} | {} | {} | {} | {} | {} | {:.0} |\n",
        f.hist.len(),
        fmt_us(f.at(0.5)),
        fmt_us(f.at(0.9)),
        fmt_us(f.at(0.99)),
        fmt_us(f.at(0.999)),
        fmt_us(f.hist.max()),
        f.ops_per_sec()
    )
}

fn device_section(base: &Baseline) -> String {
    let mut s = String::new();
    let f = &base.fsync;
    let b = &base.bandwidth;
    let _ = writeln!(s, "## Device baseline (same file system, same run)\n");
    let _ = writeln!(
        s,
        "4 KiB `pwrite` + `fdatasync`, one at a time, increasing offsets in a 64 MiB file written and fsynced first (200 warm-up ops unrecorded):\n"
    );
    s.push_str("| run | ops | p50 µs | p90 µs | p99 µs | p99.9 µs | max µs | ops/s |\n");
    s.push_str("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    s.push_str(&fsync_row("before the matrix", f));
    let _ = writeln!(
        s,
        "\nBuffered sequential `write` of {} MiB in 1 MiB calls; median of {} passes after one warm-up pass, variants interleaved (MB = 10^6 B):\n",
        b.bytes >> 20,
        b.overwrite.len()
    );
    s.push_str("| variant | MB/s, writes only | MB/s, incl. final fdatasync | warm-up pass: writes only / incl. fdatasync |\n");
    s.push_str("| --- | ---: | ---: | ---: |\n");
    let _ = writeln!(
        s,
        "| already-written file (overwrite) | {:.0} | {:.0} | {:.0} / {:.0} |",
        b.overwrite_mb_s(false),
        b.overwrite_mb_s(true),
        b.warmup_overwrite.mb_s(b.bytes, false),
        b.warmup_overwrite.mb_s(b.bytes, true)
    );
    let _ = writeln!(
        s,
        "| new file | {:.0} | {:.0} | {:.0} / {:.0} |",
        b.new_file_mb_s(false),
        b.new_file_mb_s(true),
        b.warmup_new.mb_s(b.bytes, false),
        b.warmup_new.mb_s(b.bytes, true)
    );
    let _ = writeln!(
        s,
        "\nRatios below use the device p99 {} µs and the buffered bandwidth {:.0} MB/s (already-written file, writes only).\n",
        fmt_us(base.p99()),
        base.bw()
    );
    s
}

fn find(
    results: &[CellResult],
    backend: BackendKind,
    level: Durability,
    writers: usize,
    size: usize,
) -> Option<&CellResult> {
    find_f(results, backend, level, 0, writers, size)
}

fn find_f(
    results: &[CellResult],
    backend: BackendKind,
    level: Durability,
    followers: usize,
    writers: usize,
    size: usize,
) -> Option<&CellResult> {
    results.iter().find(|r| {
        r.cell
            == Cell {
                backend,
                level,
                followers,
                writers,
                size,
            }
    })
}

fn find_peer(
    peers: &[PeerResult],
    kind: PeerKind,
    writers: usize,
    size: usize,
) -> Option<&PeerResult> {
    peers
        .iter()
        .find(|p| p.kind == kind && p.writers == writers && p.size == size)
}

/// A results-table row of a peer: the columns that only mean something for walship
/// (Local p99 of remote levels, async bandwidth) are "–".
fn peer_row(p: &PeerResult, peers: &[PeerResult], base: &Baseline) -> String {
    let vs1 = find_peer(peers, p.kind, 1, p.size).map_or("–".to_string(), |one| {
        fmt_ratio(p.commits_per_sec() / one.commits_per_sec())
    });
    format!(
        "| {} (peer) | {} | 0 | {} | {} | {} | {} | {} | {} | {} | {} | {} | {vs1} | {} | – | – | {} |\n",
        p.kind,
        Durability::Local,
        p.writers,
        p.size,
        fmt_rate(p.commits_per_sec()),
        fmt_rate(p.mb_s()),
        fmt_us(p.p(0.5)),
        fmt_us(p.p(0.9)),
        fmt_us(p.p(0.99)),
        fmt_us(p.p(0.999)),
        fmt_us(p.hist.max()),
        fmt_ratio(us(p.p(0.99)) / us(base.p99())),
        p.spread_pct().map_or("–".to_string(), |x| format!("{x:.0}%"))
    )
}

fn results_table(results: &[CellResult], peers: &[PeerResult], base: &Baseline) -> String {
    let mut s = String::new();
    s.push_str("| backend | durability | followers | writers | record B | commits/s | MB/s | p50 µs | p90 µs | p99 µs | p99.9 µs | max µs | thr vs 1 writer | p99 / device p99 | p99 / Local p99 | MB/s / device bw | rep spread |\n");
    s.push_str("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    for (i, r) in results.iter().enumerate() {
        let c = r.cell;
        let vs1 = find_f(results, c.backend, c.level, c.followers, 1, c.size)
            .map_or("–".to_string(), |one| {
                fmt_ratio(r.commits_per_sec() / one.commits_per_sec())
            });
        let vs_local = match find(results, c.backend, Durability::Local, c.writers, c.size) {
            Some(l) if c.level.is_remote() => fmt_ratio(r.p(0.99) as f64 / l.p(0.99).max(1) as f64),
            _ => "–".to_string(),
        };
        let bw = if c.level == Durability::Async {
            format!("{:.0}%", r.mb_s() / base.bw() * 100.0)
        } else {
            "–".to_string()
        };
        let spread = r
            .spread_pct()
            .map_or("–".to_string(), |p| format!("{p:.0}%"));
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.backend_name,
            c.level,
            c.followers,
            c.writers,
            c.size,
            fmt_rate(r.commits_per_sec()),
            fmt_rate(r.mb_s()),
            fmt_us(r.p(0.5)),
            fmt_us(r.p(0.9)),
            fmt_us(r.p(0.99)),
            fmt_us(r.p(0.999)),
            fmt_us(r.hist.max()),
            vs1,
            fmt_ratio(us(r.p(0.99)) / us(base.p99())),
            vs_local,
            bw,
            spread
        );
        // The peers of a local cell follow its last backend's row.
        let same_cell = |o: &CellResult| {
            (o.cell.level, o.cell.followers, o.cell.writers, o.cell.size)
                == (c.level, c.followers, c.writers, c.size)
        };
        if c.level == Durability::Local && !results.get(i + 1).is_some_and(same_cell) {
            for p in peers
                .iter()
                .filter(|p| p.writers == c.writers && p.size == c.size)
            {
                s.push_str(&peer_row(p, peers, base));
            }
        }
    }
    s
}

/// "1.23× okaywal, 0.80× raft-engine" for walship's `mine` over each peer's `theirs`.
fn peer_ratios(mine: f64, peers: &[&PeerResult], theirs: impl Fn(&PeerResult) -> f64) -> String {
    peers
        .iter()
        .map(|p| {
            format!(
                "{} {}",
                fmt_ratio(mine / theirs(p).max(f64::MIN_POSITIVE)),
                p.kind
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every walship Local cell against each peer of the same cell and run.
fn peers_section(results: &[CellResult], peers: &[PeerResult]) -> String {
    let mut s = String::new();
    s.push_str("## walship vs peers (Local, 0 followers; same cells, same run, repetitions interleaved)\n\n");
    s.push_str("Ratios are walship / peer: throughput > 1× means walship commits more per second, latency < 1× means walship's percentile is lower. Peers: okaywal 0.3.1 (`begin_entry`, `write_chunk`, `commit`; default configuration), raft-engine 0.4.2 (one `LogBatch::put` per commit in the writer's own raft group, `Engine::write(batch, sync = true)`; default `Config`), device (one `pwrite` at the next offset of a preallocated file + `fdatasync` per commit, writers serialized by a mutex). Each in a fresh directory per repetition, the same writers, record size, warm-up and measured time.\n\n");
    s.push_str("| backend | writers | record B | commits/s | throughput vs peers | p50 µs | p50 vs peers | p99 µs | p99 vs peers | p99.9 µs | p99.9 vs peers |\n");
    s.push_str("| --- | ---: | ---: | ---: | --- | ---: | --- | ---: | --- | ---: | --- |\n");
    let mut any = false;
    for r in results.iter().filter(|r| r.cell.level == Durability::Local) {
        let c = r.cell;
        let ps: Vec<&PeerResult> = peers
            .iter()
            .filter(|p| p.writers == c.writers && p.size == c.size)
            .collect();
        if ps.is_empty() {
            continue;
        }
        any = true;
        let lat = |q: f64| peer_ratios(r.p(q) as f64, &ps, |p| p.p(q) as f64);
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.backend_name,
            c.writers,
            c.size,
            fmt_rate(r.commits_per_sec()),
            peer_ratios(r.commits_per_sec(), &ps, |p| p.commits_per_sec()),
            fmt_us(r.p(0.5)),
            lat(0.5),
            fmt_us(r.p(0.99)),
            lat(0.99),
            fmt_us(r.p(0.999)),
            lat(0.999)
        );
    }
    if !any {
        s.push_str("| (no local cell with peers in this run) | | | | | | | | | | |\n");
    }
    s.push('\n');
    s
}

fn diagnostics_tables(
    results: &[CellResult],
    dev: Option<&BlockDevice>,
    flushes_per_fdatasync: Option<f64>,
) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "## Where the time goes (counters over the measured windows)\n\n\
         I/O: device counters are from /proc/diskstats for `{}` (all I/O on that disk, other tenants' too). \
         In the device fsync test one 4 KiB pwrite + fdatasync cost {} device flushes, so 'commits / fdatasync' = commits / (device flushes / that). \
         'log written' is the advance of the `written` watermark (batch headers and padding included).\n",
        dev.map_or("n/a", |d| d.name.as_str()),
        flushes_per_fdatasync.map_or("n/a".to_string(), |f| format!("{f:.2}"))
    );
    s.push_str("| backend | durability | writers | record B | log written MB/s | device flushes/s | commits / fdatasync (est.) | device ms / flush | device write MB/s | device writes/s | commits ≥ 100 ms | log flushes/s | segments new / recycled | appends waiting for a segment: times, ms | open ms | close ms |\n");
    s.push_str(
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for r in results {
        let c = r.cell;
        let t = r.elapsed();
        let written: u64 = r.reps.iter().map(|x| x.log_written).sum();
        let (fl, per_fl, ms_fl, dw, dws) = match r.sum_disk() {
            Some(d) => (
                format!("{:.0}", d.flushes as f64 / t),
                match (d.flushes, flushes_per_fdatasync) {
                    // Async commits do not wait for a flush.
                    _ if c.level == Durability::Async => "–".into(),
                    (n, Some(k)) if n > 0 && k > 0.0 => {
                        format!("{:.1}", r.commits() as f64 / (n as f64 / k))
                    }
                    _ => "–".into(),
                },
                if d.flushes > 0 {
                    format!("{:.2}", d.flush_ms as f64 / d.flushes as f64)
                } else {
                    "–".into()
                },
                format!("{:.0}", d.bytes_written() as f64 / MB / t),
                format!("{:.0}", d.writes as f64 / t),
            ),
            None => (
                "n/a".into(),
                "n/a".into(),
                "n/a".into(),
                "n/a".into(),
                "n/a".into(),
            ),
        };
        let n = r.reps.len() as f64;
        let open_ms = r
            .reps
            .iter()
            .map(|x| x.open_time.as_secs_f64())
            .sum::<f64>()
            / n
            * 1e3;
        let close_ms = r
            .reps
            .iter()
            .map(|x| x.close_time.as_secs_f64())
            .sum::<f64>()
            / n
            * 1e3;
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {:.1} | {fl} | {per_fl} | {ms_fl} | {dw} | {dws} | {} | {:.0} | {} / {} | {}, {:.0} | {open_ms:.0} | {close_ms:.0} |",
            r.backend_name,
            level_label(&c),
            c.writers,
            c.size,
            written as f64 / MB / t,
            r.hist.count_between(100_000_000, u64::MAX),
            r.reps.iter().map(|x| x.stats.flushes).sum::<u64>() as f64 / t,
            r.reps.iter().map(|x| x.stats.segments_created).sum::<u64>(),
            r.reps.iter().map(|x| x.stats.segments_recycled).sum::<u64>(),
            r.reps.iter().map(|x| x.stats.segment_waits).sum::<u64>(),
            r.reps.iter().map(|x| x.stats.segment_wait_micros).sum::<u64>() as f64 / 1e3,
        );
    }
    s.push_str(
        "\nCPU: 'cores' = CPU time / wall time (this VM has 2 vCPUs); 'wait' = time runnable but \
         waiting for a CPU (/proc/self/task/*/schedstat), as a share of wall time for single \
         threads and in µs per commit for the appender threads. Machine busy/steal from /proc/stat; 'other processes' = machine busy × CPUs − this process (other tenants of this shared machine).\n\n",
    );
    s.push_str("| backend | durability | writers | record B | process cores | other processes cores | machine busy | steal | log-writer thread cores / wait | flusher / iou-wrk threads cores | preparer thread cores | appenders cores | appender wait µs / commit | voluntary csw / commit | involuntary csw/s |\n");
    s.push_str("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    for r in results {
        let c = r.cell;
        let t = r.elapsed();
        let ns = t * 1e9;
        let mut g = ThreadGroups::default();
        for x in &r.reps {
            g.add(&x.threads);
        }
        let cores = |v: (u64, u64, usize)| {
            if v.2 == 0 {
                "–".to_string()
            } else {
                format!("{:.2}", v.0 as f64 / ns)
            }
        };
        let (cpu, vcsw, icsw) = match r.sum_usage() {
            Some(u) => (
                format!("{:.2}", u.cpu.as_secs_f64() / t),
                format!(
                    "{:.2}",
                    u.voluntary_switches as f64 / r.commits().max(1) as f64
                ),
                format!("{:.0}", u.involuntary_switches as f64 / t),
            ),
            None => ("n/a".into(), "n/a".into(), "n/a".into()),
        };
        let mut m = MachineCpu::default();
        let mut have_m = true;
        for x in &r.reps {
            match x.machine {
                Some(v) => {
                    m.total += v.total;
                    m.idle += v.idle;
                    m.steal += v.steal;
                }
                None => have_m = false,
            }
        }
        let (busy, steal, others) = match (have_m, r.sum_usage()) {
            (true, Some(u)) => (
                format!("{:.0}%", m.busy_fraction() * 100.0),
                format!("{:.1}%", m.steal_fraction() * 100.0),
                format!(
                    "{:.2}",
                    (m.busy_fraction() * ncpu - u.cpu.as_secs_f64() / t).max(0.0)
                ),
            ),
            _ => ("n/a".into(), "n/a".into(), "n/a".into()),
        };
        let writer = if g.writer.2 == 0 {
            "–".to_string()
        } else {
            format!(
                "{:.2} / {:.0}%",
                g.writer.0 as f64 / ns,
                g.writer.1 as f64 / ns * 100.0
            )
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {cpu} | {others} | {busy} | {steal} | {writer} | {} | {} | {} | {:.1} | {vcsw} | {icsw} |",
            r.backend_name,
            level_label(&c),
            c.writers,
            c.size,
            cores(g.flusher),
            cores(g.preparer),
            cores(g.appenders),
            g.appenders.1 as f64 / 1e3 / r.commits().max(1) as f64,
        );
    }
    s
}

/// The level, with the follower count for remote levels.
fn level_label(c: &Cell) -> String {
    if c.level.is_remote() {
        format!("{} ({}f)", c.level, c.followers)
    } else {
        c.level.to_string()
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "MET"
    } else {
        "MISSED"
    }
}

fn targets_section(
    results: &[CellResult],
    peers: &[PeerResult],
    base: &Baseline,
    backends: &[BackendKind],
) -> String {
    let mut s = String::new();
    s.push_str("## Targets\n\n");
    let local = Durability::Local;
    for &b in backends {
        let label = backend_label(b);
        let _ = writeln!(s, "### {label}\n");
        // (1) group commit scaling.
        match (
            find(results, b, local, 64, 128),
            find(results, b, local, 1, 128),
        ) {
            (Some(r64), Some(r1)) => {
                let ratio = r64.commits_per_sec() / r1.commits_per_sec();
                let ok = ratio >= 30.0;
                let _ = write!(
                    s,
                    "1. Local, 64 writers × 128 B throughput ≥ 30× 1 writer: **{}** — {} commits/s vs {} commits/s = {}",
                    verdict(ok),
                    fmt_rate(r64.commits_per_sec()),
                    fmt_rate(r1.commits_per_sec()),
                    fmt_ratio(ratio)
                );
                if !ok {
                    let _ = write!(
                        s,
                        " (short by {:.0}%: 30× would be {} commits/s)",
                        (1.0 - ratio / 30.0) * 100.0,
                        fmt_rate(30.0 * r1.commits_per_sec())
                    );
                }
                s.push('\n');
            }
            _ => s.push_str("1. Local, 64 × 128 B vs 1 × 128 B: n/a (cells not in this run)\n"),
        }
        // (2) tail latency under load vs the bare device.
        match find(results, b, local, 64, 128) {
            Some(r64) => {
                let p99 = us(r64.p(0.99));
                let dev = us(base.p99());
                let ok = p99 <= 3.0 * dev;
                let _ = write!(
                    s,
                    "2. Local, 64 writers × 128 B p99 ≤ 3× device p99 (4 KiB write + fdatasync): **{}** — p99 {p99:.0} µs vs device p99 {dev:.0} µs = {}",
                    verdict(ok),
                    fmt_ratio(p99 / dev)
                );
                if !ok {
                    let _ = write!(
                        s,
                        " (over by {:.0}%: the limit is {:.0} µs)",
                        (p99 / (3.0 * dev) - 1.0) * 100.0,
                        3.0 * dev
                    );
                }
                s.push('\n');
            }
            None => s.push_str("2. Local, 64 × 128 B p99: n/a (cell not in this run)\n"),
        }
        // (3) async bandwidth vs the device's buffered writes, final fdatasync included
        // (issue 13: what an async log must also make durable in the end).
        let best = results
            .iter()
            .filter(|r| {
                r.cell.backend == b && r.cell.level == Durability::Async && r.cell.size == 4096
            })
            .max_by(|x, y| x.mb_s().total_cmp(&y.mb_s()));
        match best {
            Some(r) => {
                let bw = base.bandwidth.overwrite_mb_s(true);
                let frac = r.mb_s() / bw;
                let ok = frac >= 0.8;
                let _ = write!(
                    s,
                    "3. Async 4 KiB sustained ≥ 80% of the device's buffered write bandwidth including a final fdatasync: **{}** — best {} writers: {:.0} MB/s = {:.0}% of {bw:.0} MB/s",
                    verdict(ok),
                    r.cell.writers,
                    r.mb_s(),
                    frac * 100.0
                );
                if !ok {
                    let _ = write!(
                        s,
                        " (short by {:.0}%: 80% is {:.0} MB/s)",
                        (1.0 - frac / 0.8) * 100.0,
                        0.8 * bw
                    );
                }
                let _ = writeln!(
                    s,
                    "; for context {:.0}% of {:.0} MB/s into a new file",
                    r.mb_s() / base.bandwidth.new_file_mb_s(false) * 100.0,
                    base.bandwidth.new_file_mb_s(false)
                );
            }
            None => s.push_str("3. Async 4 KiB: n/a (no such cell in this run)\n"),
        }
        // (4) remote flush vs local flush, same run.
        if let (Some(rf), Some(l)) = (
            find_f(results, b, Durability::RemoteFlush, 1, 64, 128),
            find(results, b, local, 64, 128),
        ) {
            let ratio = rf.p(0.99) as f64 / l.p(0.99).max(1) as f64;
            let ok = ratio <= 3.0;
            let _ = writeln!(
                s,
                "4. RemoteFlush, 1 follower, 64 writers × 128 B p99 ≤ 3× Local p99 of the same run: **{}** — p99 {} µs vs {} µs = {}",
                verdict(ok),
                fmt_us(rf.p(0.99)),
                fmt_us(l.p(0.99)),
                fmt_ratio(ratio)
            );
        }
        // (5) the peers, same cells and run: figures only, no goal is set for them.
        // (6–8) issue 13: against the peers, same cells, same run.
        s.push_str(&peer_targets(results, peers, b));
        s.push('\n');
    }
    s
}

/// Issue 13's targets against the peers measured in the same run, for backend `b`.
fn peer_targets(results: &[CellResult], peers: &[PeerResult], b: BackendKind) -> String {
    let local = Durability::Local;
    let peer = |kind: PeerKind, w: usize, size: usize| {
        peers
            .iter()
            .find(|p| p.kind == kind && p.writers == w && p.size == size)
    };
    let mut s = String::new();
    for size in [128, 4096] {
        let (Some(r), Some(ok), Some(dev)) = (
            find(results, b, local, 1, size),
            peer(PeerKind::OkayWal, 1, size),
            peer(PeerKind::Device, 1, size),
        ) else {
            let _ = writeln!(s, "6. Local 1 × {size} B vs okaywal and the device: n/a (cells or peers not in this run)");
            continue;
        };
        let (a, d) = (
            r.commits_per_sec() / ok.commits_per_sec(),
            r.commits_per_sec() / dev.commits_per_sec(),
        );
        let _ = writeln!(
            s,
            "6. Local 1 × {size} B ≥ 1.0× okaywal and ≥ 0.9× the device: **{}** — {} commits/s = {} okaywal ({}), {} the device ({})",
            verdict(a >= 1.0 && d >= 0.9),
            fmt_rate(r.commits_per_sec()),
            fmt_ratio(a),
            fmt_rate(ok.commits_per_sec()),
            fmt_ratio(d),
            fmt_rate(dev.commits_per_sec())
        );
    }
    match (
        find(results, b, local, 64, 128),
        peer(PeerKind::RaftEngine, 64, 128),
    ) {
        (Some(r), Some(re)) => {
            let t = r.commits_per_sec() / re.commits_per_sec();
            let _ = writeln!(
                s,
                "7. Local 64 × 128 B ≥ 3× raft-engine, p99 ≤ raft-engine's: **{}** — {} raft-engine; p99 {} vs {} µs",
                verdict(t >= 3.0 && r.p(0.99) <= re.p(0.99)),
                fmt_ratio(t),
                fmt_us(r.p(0.99)),
                fmt_us(re.p(0.99))
            );
        }
        _ => s.push_str("7. Local 64 × 128 B vs raft-engine: n/a (cell or peer not in this run)\n"),
    }
    match (
        find(results, b, local, 64, 4096),
        peer(PeerKind::RaftEngine, 64, 4096),
    ) {
        (Some(r), Some(re)) => {
            let t = r.commits_per_sec() / re.commits_per_sec();
            let tail = r.p(0.999) as f64 / r.p(0.99).max(1) as f64;
            let max = r.hist.max();
            let _ = writeln!(
                s,
                "8. Local 64 × 4 KiB ≥ 2× raft-engine, p99.9 ≤ 3× its own p99, no commit over 20 ms: **{}** — {} raft-engine; p99.9 / p99 = {tail:.2}×; max {} µs",
                verdict(t >= 2.0 && tail <= 3.0 && max <= 20_000_000),
                fmt_ratio(t),
                fmt_us(max)
            );
        }
        _ => s.push_str("8. Local 64 × 4 KiB vs raft-engine: n/a (cell or peer not in this run)\n"),
    }
    s
}

fn side_by_side(
    results: &[CellResult],
    levels: &[Durability],
    sizes: &[usize],
    writers: &[usize],
) -> String {
    let mut s = String::new();
    s.push_str(
        "## io_uring vs portable (same cell, same run; ratio > 1 means io_uring is higher)\n\n",
    );
    s.push_str("| durability | writers | record B | io_uring commits/s | portable commits/s | throughput io_uring / portable | io_uring p99 µs | portable p99 µs | p99 io_uring / portable |\n");
    s.push_str("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    let mut any = false;
    for &l in levels {
        for &z in sizes {
            for &w in writers {
                let (Some(u), Some(p)) = (
                    find(results, BackendKind::IoUring, l, w, z),
                    find(results, BackendKind::Portable, l, w, z),
                ) else {
                    continue;
                };
                any = true;
                let _ = writeln!(
                    s,
                    "| {l} | {w} | {z} | {} | {} | {} | {} | {} | {} |",
                    fmt_rate(u.commits_per_sec()),
                    fmt_rate(p.commits_per_sec()),
                    fmt_ratio(u.commits_per_sec() / p.commits_per_sec()),
                    fmt_us(u.p(0.99)),
                    fmt_us(p.p(0.99)),
                    fmt_ratio(u.p(0.99) as f64 / p.p(0.99).max(1) as f64)
                );
            }
        }
    }
    if !any {
        s.push_str("| (needs both backends in the run) | | | | | | | | |\n");
    }
    s.push('\n');
    s
}

/// The percentile chart of one Local cell: walship per backend, then each peer.
fn local_chart(
    cfg: &Config,
    writers: usize,
    size: usize,
    walship: &[CellResult],
    peers: &[PeerResult],
) -> String {
    let mut series: Vec<svg::Series> = walship
        .iter()
        .map(|r| svg::Series::from_histogram(format!("walship {}", r.backend_name), &r.hist))
        .collect();
    series.extend(
        peers
            .iter()
            .map(|p| svg::Series::from_histogram(p.kind.name(), &p.hist)),
    );
    svg::percentile_chart(
        &format!(
            "Local commit latency: {writers} writer{} × {size} B ({} × {} ms measured)",
            if writers == 1 { "" } else { "s" },
            cfg.reps,
            cfg.duration.as_millis()
        ),
        &series,
    )
}

fn default_out() -> PathBuf {
    let target = walship_bench::target_dir();
    target
        .join("latency")
        .join(utc_timestamp(SystemTime::now()))
}

fn write_out(path: &Path, text: &str) -> Res<()> {
    std::fs::write(path, text).map_err(|e| format!("write {}: {e}", path.display()).into())
}

fn validate(args: &Args) -> Res<()> {
    if args.backends.is_empty()
        || args.writers.is_empty()
        || args.sizes.is_empty()
        || args.levels.is_empty()
    {
        return Err(
            "--backends, --writers, --sizes and --levels must each name at least one value".into(),
        );
    }
    if args.writers.contains(&0) {
        return Err("--writers: a cell needs at least one writer".into());
    }
    if args.sizes.contains(&0) {
        return Err("--sizes: record sizes must be at least 1 byte".into());
    }
    if args.levels.iter().any(|l| l.is_remote()) {
        if args.quorum_k == 0 {
            return Err("--quorum-k must be at least 1".into());
        }
        if !args.followers.iter().any(|&f| f >= args.quorum_k) {
            return Err(format!(
                "--followers: remote levels need a follower count of at least --quorum-k = {}",
                args.quorum_k
            )
            .into());
        }
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("latency: error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Res<()> {
    validate(args)?;
    let peer_kinds = peers::parse_peer_list(&args.peers)?;
    let cfg = Config::from(args);
    let opts = log_options(&cfg, BackendKind::Portable);
    opts.validate()
        .map_err(|e| format!("engine options from the command line: {e}"))?;
    let max_record = opts.effective_max_record(cfg.segment_capacity);
    if let Some(z) = args.sizes.iter().find(|&&z| z > max_record) {
        return Err(format!(
            "--sizes: {z} B is larger than the largest record the log accepts ({max_record} B)"
        )
        .into());
    }
    let started = Instant::now();

    let base_dir = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&base_dir)
        .map_err(|e| format!("create --dir {}: {e}", base_dir.display()))?;
    let work = tempfile::Builder::new()
        .prefix("walship-latency-")
        .tempdir_in(&base_dir)
        .map_err(|e| format!("create a work directory in {}: {e}", base_dir.display()))?;
    let root = work.path().to_path_buf();
    let out = args.out.clone().unwrap_or_else(default_out);
    std::fs::create_dir_all(&out).map_err(|e| format!("create --out {}: {e}", out.display()))?;
    let dev = BlockDevice::of(&root);

    let mut backends = Vec::new();
    let mut notes = Vec::new();
    for &b in &args.backends {
        if backends.contains(&b) {
            continue;
        }
        match probe_backend(&root, b) {
            Ok(()) => backends.push(b),
            Err(e) if b == BackendKind::IoUring => {
                let note = format!(
                    "io_uring skipped: Log::open with BackendKind::IoUring failed here: {e}"
                );
                eprintln!("NOTE: {note}");
                notes.push(note);
            }
            Err(e) => {
                return Err(
                    format!("Log::open with backend {} failed: {e}", backend_label(b)).into(),
                )
            }
        }
    }
    if backends.is_empty() {
        return Err("no usable I/O backend".into());
    }

    eprintln!(
        "device baseline in {} ({})…",
        root.display(),
        dev.as_ref().map_or("device n/a", |d| d.name.as_str())
    );
    let d0 = dev.as_ref().and_then(BlockDevice::counters);
    let fsync = device::fsync_latency(&root, 64 << 20, 200, cfg.fsync_iterations)?;
    let d1 = dev.as_ref().and_then(BlockDevice::counters);
    // Device flushes per pwrite + fdatasync (the preallocation's own fsync adds ~1).
    let flushes_per_fdatasync = delta(d0, d1, DiskCounters::since)
        .filter(|d| d.flushes > 0)
        .map(|d| d.flushes as f64 / (200 + cfg.fsync_iterations) as f64);
    let bandwidth = device::buffered_bandwidth(&root, cfg.bandwidth_bytes, cfg.bandwidth_reps)?;
    let base = Baseline { fsync, bandwidth };
    hgrm::write_file(&out.join("device-fsync-4k.hgrm"), &base.fsync.hist)?;
    eprintln!(
        "device: 4 KiB write+fdatasync p50 {} µs p99 {} µs, {:.0} ops/s; buffered write {:.0} MB/s (overwrite), {:.0} MB/s (new file)",
        fmt_us(base.fsync.at(0.5)),
        fmt_us(base.p99()),
        base.fsync.ops_per_sec(),
        base.bw(),
        base.bandwidth.new_file_mb_s(false)
    );

    // The matrix; repetitions alternate backends so each pair shares machine conditions.
    let mut results: Vec<CellResult> = Vec::new();
    // Remote levels: each follower count (at least k), on the first backend only.
    let variants = |level: Durability| -> Vec<(usize, Vec<BackendKind>)> {
        if level.is_remote() {
            args.followers
                .iter()
                .filter(|&&f| f >= cfg.quorum_k)
                .map(|&f| (f, backends[..1].to_vec()))
                .collect()
        } else {
            vec![(0, backends.clone())]
        }
    };
    let total: usize = args
        .levels
        .iter()
        .map(|&l| variants(l).iter().map(|v| v.1.len()).sum::<usize>())
        .sum::<usize>()
        * args.sizes.len()
        * args.writers.len();
    let mut done = 0;
    let ca = ClusterCa::generate("latency-bench")?;
    let mut peer_results: Vec<PeerResult> = Vec::new();
    let mut pictures: Vec<PathBuf> = Vec::new();
    for &level in &args.levels {
        for (followers, cell_backends) in variants(level) {
            for &size in &args.sizes {
                for &writers in &args.writers {
                    let mut group: Vec<CellResult> = cell_backends
                        .iter()
                        .map(|&backend| CellResult {
                            cell: Cell {
                                backend,
                                level,
                                followers,
                                writers,
                                size,
                            },
                            backend_name: backend_label(backend),
                            reps: Vec::new(),
                            hist: hgrm::latency_histogram(),
                        })
                        .collect();
                    // Local cells get the peers, interleaved: A B C D A B C D.
                    let mut peer_group: Vec<PeerResult> = if level == Durability::Local {
                        peer_kinds
                            .iter()
                            .map(|&kind| PeerResult {
                                kind,
                                writers,
                                size,
                                reps: Vec::new(),
                                hist: hgrm::latency_histogram(),
                            })
                            .collect()
                    } else {
                        Vec::new()
                    };
                    for rep in 0..cfg.reps {
                        for r in group.iter_mut() {
                            let (m, h, name) =
                                run_rep(&cfg, r.cell, &root, rep, dev.as_ref(), &ca)?;
                            r.backend_name = name;
                            r.hist
                                .add(&h)
                                .map_err(|e| format!("merge histograms: {e:?}"))?;
                            eprintln!(
                                "  {} rep {rep}: {:.0} commits/s, p99 {} µs",
                                r.cell.name(),
                                m.commits_per_sec(),
                                fmt_us(h.value_at_quantile(0.99))
                            );
                            r.reps.push(m);
                        }
                        for p in peer_group.iter_mut() {
                            let (m, h) = run_peer_rep(
                                &cfg,
                                p.kind,
                                writers,
                                size,
                                &root,
                                rep,
                                dev.as_ref(),
                            )?;
                            p.hist
                                .add(&h)
                                .map_err(|e| format!("merge histograms: {e:?}"))?;
                            eprintln!(
                                "  {} rep {rep}: {:.0} commits/s, p99 {} µs",
                                p.name(),
                                m.commits_per_sec(),
                                fmt_us(h.value_at_quantile(0.99))
                            );
                            p.reps.push(m);
                        }
                    }
                    if level == Durability::Local {
                        let path =
                            out.join(format!("{}-{writers}w-{size}B.svg", Durability::Local));
                        write_out(
                            &path,
                            &local_chart(&cfg, writers, size, &group, &peer_group),
                        )?;
                        pictures.push(path);
                    }
                    for p in peer_group {
                        hgrm::write_file(&out.join(format!("{}.hgrm", p.name())), &p.hist)?;
                        peer_results.push(p);
                    }
                    for r in group {
                        hgrm::write_file(&out.join(format!("{}.hgrm", r.cell.name())), &r.hist)?;
                        done += 1;
                        results.push(r);
                    }
                    eprintln!(
                        "[{done}/{total} cells, {:.0} s]",
                        started.elapsed().as_secs_f64()
                    );
                }
            }
        }
    }

    let mut task_runs = Vec::new();
    for &tasks in args.tasks.iter().filter(|&&t| t > 0) {
        for rep in 0..cfg.reps {
            eprintln!("async tasks: {tasks} tasks × 128 B, local, rep {}", rep + 1);
            let dir = root.join(format!("tasks-{tasks}-{rep}"));
            let r = walship_bench::tasks::run(
                &dir,
                log_options(&cfg, BackendKind::Portable),
                tasks,
                128,
                Durability::Local,
                cfg.warmup,
                cfg.duration,
            )?;
            hgrm::write_file(&out.join(format!("tasks-{tasks}-{rep}.hgrm")), &r.hist)?;
            let _ = std::fs::remove_dir_all(&dir);
            task_runs.push(r);
        }
    }

    let post = device::fsync_latency(&root, 64 << 20, 200, cfg.fsync_iterations)?;
    hgrm::write_file(&out.join("device-fsync-4k-after.hgrm"), &post.hist)?;

    // Report.
    let mut md = String::new();
    let _ = writeln!(md, "# walship-engine commit latency\n");
    let _ = writeln!(
        md,
        "Run {} UTC, {} mode: {} ms measured + {} ms warm-up per cell and repetition, {} repetition(s) alternating backends, segment capacity {} MiB, async_flush_interval {} ms, max_pending_bytes {} MiB, {}; logs and device tests in {} (block device {}). Latency = append + commit(level).wait() round trip of one closed-loop writer thread. Command: `{}`\n",
        utc_timestamp(SystemTime::now()),
        if cfg.quick { "quick" } else { "full" },
        cfg.duration.as_millis(),
        cfg.warmup.as_millis(),
        cfg.reps,
        cfg.segment_capacity >> 20,
        cfg.async_flush_interval
            .unwrap_or(Options::default().async_flush_interval)
            .as_millis(),
        cfg.max_pending_bytes
            .unwrap_or(Options::default().max_pending_bytes)
            >> 20,
        if cfg.checkpoint_every.is_zero() {
            "no checkpoint thread".to_string()
        } else {
            format!("checkpoint every {} ms", cfg.checkpoint_every.as_millis())
        },
        base_dir.display(),
        dev.as_ref().map_or("n/a", |d| d.name.as_str()),
        std::env::args().collect::<Vec<_>>().join(" ")
    );
    if args.levels.iter().any(|l| l.is_remote()) {
        let _ = writeln!(
            md,
            "Remote levels: a walship-transport leader on the cell's log and 'followers' followers in this process, over loopback QUIC with mutual TLS (default LeaderOptions: zstd level 1, 256 KiB frames), each follower with its own log on the same file system and a no-op apply callback; sync policy ANY {} (*); backend {} only. The 2-vCPU machine runs leader, followers and writers at once.\n",
            cfg.quorum_k,
            backend_label(backends[0])
        );
    }
    for n in &notes {
        let _ = writeln!(md, "> NOTE: {n}\n");
    }
    let mut dev_md = device_section(&base);
    if let Some(k) = flushes_per_fdatasync {
        let _ = writeln!(
            dev_md,
            "Each 4 KiB pwrite + fdatasync above cost {k:.2} flush requests at the block device (/proc/diskstats).\n"
        );
    }
    dev_md.push_str("The same fsync test after the matrix (drift over the run):\n\n");
    dev_md.push_str("| run | ops | p50 µs | p90 µs | p99 µs | p99.9 µs | max µs | ops/s |\n");
    dev_md.push_str("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    dev_md.push_str(&fsync_row("before the matrix", &base.fsync));
    dev_md.push_str(&fsync_row("after the matrix", &post));
    dev_md.push('\n');
    md.push_str(&dev_md);
    let table = results_table(&results, &peer_results, &base);
    let _ = writeln!(md, "## Results\n");
    md.push_str(&table);
    md.push('\n');
    if !peer_results.is_empty() {
        md.push_str(&peers_section(&results, &peer_results));
    }
    md.push_str(&targets_section(&results, &peer_results, &base, &backends));
    if !task_runs.is_empty() {
        md.push_str(&tasks_section(&task_runs));
    }
    md.push_str(&side_by_side(
        &results,
        &args.levels,
        &args.sizes,
        &args.writers,
    ));
    md.push_str(&diagnostics_tables(
        &results,
        dev.as_ref(),
        flushes_per_fdatasync,
    ));
    if !pictures.is_empty() {
        let _ = writeln!(
            md,
            "\n## Pictures\n\nLatency percentile curves (x: percentile, log scale of 1/(1−q) as HdrHistogram's plotter; y: latency, linear), one line per system, one file per Local cell:\n"
        );
        for p in &pictures {
            let _ = writeln!(md, "- `{}`", p.display());
        }
    }
    let _ = writeln!(
        md,
        "\nTotal run time {:.0} s. Histograms (.hgrm, µs) and this report: {}",
        started.elapsed().as_secs_f64(),
        out.display()
    );

    write_out(&out.join("device.md"), &dev_md)?;
    write_out(&out.join("table.md"), &table)?;
    write_out(&out.join("report.md"), &md)?;
    print!("{md}");
    drop(work);
    Ok(())
}
