//! `hops`: where a remote commit's time goes, hop by hop.
//!
//! ```text
//! cargo run --release -p walship-bench --bin hops
//! cargo run --release -p walship-bench --bin hops -- --commits 20000 --reps 3 --size 4096
//! ```
//!
//! One closed-loop writer (`append`; `commit(RemoteFlush).wait()`) on a leader with one
//! follower over loopback QUIC with mutual TLS, both in this process with their logs in
//! a temporary directory, as the latency harness's remote cells run. The transport's hop
//! events (`walship_transport::hops`, `tracing` at TRACE level) are recorded with their
//! times; for every commit the first event of each hop at or beyond its LSN gives the
//! chain from the append to the committer's wake-up:
//!
//! append → leader.read → leader.sent → follower.received → follower.appended →
//! follower.flushed → follower.acked → leader.acked → leader.quorum → committer woken.
//!
//! (The leader's own flush runs in parallel, from the commit call, and is not a hop.)
//! Every repetition also runs the same writer at `Local` on a fresh log without
//! replication, and `RemoteFlush` with recording off, interleaved, so the table states
//! what the recording costs and how the remote commit compares with the local one.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use tracing::field::{Field, Visit};
use tracing::subscriber::Interest;
use tracing::{Event, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use walship_bench::{hgrm, us, Res};
use walship_engine::{Durability, Log, Lsn, Options};
use walship_transport::tls::ClusterCa;
use walship_transport::{
    hops, CompressionOptions, Follower, FollowerOptions, Leader, LeaderOptions, Security,
    SyncPolicy,
};

/// Per-hop latency of remote commits.
#[derive(Parser, Debug)]
#[command(name = "hops", version)]
struct Args {
    /// Measured commits per variant and repetition.
    #[arg(long, default_value_t = 5000)]
    commits: usize,
    /// Commits before measuring.
    #[arg(long, default_value_t = 500)]
    warmup: usize,
    /// Record bytes.
    #[arg(long, default_value_t = 128)]
    size: usize,
    /// Repetitions, variants interleaved.
    #[arg(long, default_value_t = 2)]
    reps: usize,
    /// zstd level of the leader's frames (the driver's default is 1); `off` for none.
    #[arg(long, default_value = "1")]
    zstd: String,
    /// Where the follower's log goes (default: next to the leader's, in a temporary
    /// directory); e.g. a tmpfs, to take the follower's disk out of the chain.
    #[arg(long)]
    follower_dir: Option<std::path::PathBuf>,
}

/// Hop events as recorded: (time, hop index in `hops::ALL`, lsn).
static EVENTS: Mutex<Vec<(Instant, u8, u64)>> = Mutex::new(Vec::new());
static RECORDING: AtomicBool = AtomicBool::new(false);

/// Records `walship::hop` events while [`RECORDING`] is set; ignores every other event.
struct HopLayer;

impl<S: Subscriber> Layer<S> for HopLayer {
    fn register_callsite(&self, m: &'static Metadata<'static>) -> Interest {
        if m.target() == hops::TARGET {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn enabled(&self, m: &Metadata<'_>, _: Context<'_, S>) -> bool {
        m.target() == hops::TARGET
    }

    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        if !RECORDING.load(Ordering::Relaxed) {
            return;
        }
        let now = Instant::now();
        let mut v = HopVisitor::default();
        event.record(&mut v);
        if let (Some(h), Some(lsn)) = (v.hop, v.lsn) {
            if let Ok(mut e) = EVENTS.lock() {
                e.push((now, h, lsn));
            }
        }
    }
}

#[derive(Default)]
struct HopVisitor {
    hop: Option<u8>,
    lsn: Option<u64>,
}

impl Visit for HopVisitor {
    fn record_str(&mut self, f: &Field, value: &str) {
        if f.name() == "hop" {
            self.hop = hops::ALL.iter().position(|h| *h == value).map(|i| i as u8);
        }
    }
    fn record_u64(&mut self, f: &Field, value: u64) {
        if f.name() == "lsn" {
            self.lsn = Some(value);
        }
    }
    fn record_debug(&mut self, _: &Field, _: &dyn std::fmt::Debug) {}
}

/// One commit as the writer saw it.
#[derive(Clone, Copy)]
struct Sample {
    start: Instant,
    lsn: Lsn,
    end: Instant,
}

/// The closed loop: `warmup` unrecorded commits, then `n` recorded ones.
fn write(log: &Log, level: Durability, size: usize, warmup: usize, n: usize) -> Res<Vec<Sample>> {
    let record: Vec<u8> = (0..size).map(|i| (i as u8).wrapping_mul(167)).collect();
    let mut out = Vec::with_capacity(n);
    for i in 0..warmup + n {
        let start = Instant::now();
        let lsn = log.append(&record)?;
        log.commit(lsn, level)
            .timeout(Duration::from_secs(30))
            .wait()?;
        if i >= warmup {
            out.push(Sample {
                start,
                lsn,
                end: Instant::now(),
            });
        }
    }
    Ok(out)
}

fn options() -> Options {
    Options::default()
}

/// A leader on a fresh log with one follower, streaming.
struct Pair {
    rt: tokio::runtime::Runtime,
    leader: Option<Leader>,
    follower: Option<Follower>,
    log: Arc<Log>,
}

impl Pair {
    fn start(dir: &Path, fdir: &Path, ca: &ClusterCa, zstd: Option<i32>) -> Res<Pair> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("walship-net")
            .enable_all()
            .build()?;
        let _in_rt = rt.enter();
        let node = |n: &str| -> Res<Security> {
            Ok(Security::mutual_tls(ca.issue_node(n)?, ca.cert_pem()))
        };
        let log = Arc::new(Log::open(dir.join("leader"), options())?);
        let leader = Leader::start(
            Arc::clone(&log),
            node("leader")?,
            LeaderOptions {
                sync: SyncPolicy::Any {
                    k: 1,
                    of: vec!["*".into()],
                },
                compression: CompressionOptions {
                    level: zstd,
                    adapt: None,
                    ..CompressionOptions::default()
                },
                remote_commit_timeout: Duration::from_secs(30),
                ..LeaderOptions::default()
            },
        )?;
        let flog = Arc::new(Log::open(fdir, options())?);
        let follower = Follower::start(
            flog,
            node("f0")?,
            FollowerOptions {
                leader: leader.local_addr()?,
                leader_node_id: "leader".into(),
                ..FollowerOptions::default()
            },
            |_: &walship_engine::Record| {},
        )?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while leader
            .status()
            .followers
            .iter()
            .all(|f| f.state != walship_transport::status::StreamState::Streaming)
        {
            if Instant::now() > deadline {
                return Err("the follower is not streaming after 30 s".into());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(Pair {
            rt,
            leader: Some(leader),
            follower: Some(follower),
            log,
        })
    }

    fn stop(mut self) {
        let (f, l) = (self.follower.take(), self.leader.take());
        self.rt.block_on(async move {
            if let Some(f) = f {
                f.shutdown().await;
            }
            if let Some(l) = l {
                l.shutdown().await;
            }
        });
    }
}

/// Per-hop histograms (nanoseconds) of the samples, from the recorded events; the last
/// entry is the committer's wake-up after the quorum advanced. Also how many samples
/// had every hop.
fn chains(samples: &[Sample], events: &[(Instant, u8, u64)]) -> (Vec<Histogram<u64>>, usize) {
    let mut by_hop: Vec<Vec<(Instant, u64)>> = vec![Vec::new(); hops::ALL.len()];
    for &(t, h, lsn) in events {
        by_hop[h as usize].push((t, lsn));
    }
    for v in &mut by_hop {
        v.sort_by_key(|e| e.0);
    }
    let mut hists: Vec<Histogram<u64>> = (0..=hops::ALL.len())
        .map(|_| hgrm::latency_histogram())
        .collect();
    let mut complete = 0;
    'samples: for s in samples {
        let mut prev = s.start;
        let mut times = Vec::with_capacity(hops::ALL.len());
        for v in &by_hop {
            let from = v.partition_point(|e| e.0 < prev);
            let Some(&(t, _)) = v[from..].iter().find(|e| e.1 >= s.lsn.get()) else {
                continue 'samples;
            };
            if t > s.end {
                continue 'samples;
            }
            times.push(t);
            prev = t;
        }
        let mut prev = s.start;
        for (i, t) in times.iter().enumerate() {
            hists[i].saturating_record(t.duration_since(prev).as_nanos() as u64);
            prev = *t;
        }
        hists[hops::ALL.len()].saturating_record(s.end.duration_since(prev).as_nanos() as u64);
        complete += 1;
    }
    (hists, complete)
}

fn histogram(samples: &[Sample]) -> Histogram<u64> {
    let mut h = hgrm::latency_histogram();
    for s in samples {
        h.saturating_record(s.end.duration_since(s.start).as_nanos() as u64);
    }
    h
}

fn rate(samples: &[Sample]) -> f64 {
    match (samples.first(), samples.last()) {
        (Some(a), Some(b)) if b.end > a.start => {
            samples.len() as f64 / b.end.duration_since(a.start).as_secs_f64()
        }
        _ => 0.0,
    }
}

fn main() {
    if let Err(e) = run() {
        eprintln!("hops: error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Res<()> {
    let args = Args::parse();
    let zstd = match args.zstd.as_str() {
        "off" => None,
        l => Some(l.parse::<i32>().map_err(|e| format!("--zstd {l:?}: {e}"))?),
    };
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(HopLayer))?;
    let ca = ClusterCa::generate("hops-bench")?;
    let work = tempfile::tempdir()?;
    let mut local_all = hgrm::latency_histogram();
    let mut remote_all = hgrm::latency_histogram();
    let mut quiet_all = hgrm::latency_histogram();
    let mut hop_all: Vec<Histogram<u64>> = (0..=hops::ALL.len())
        .map(|_| hgrm::latency_histogram())
        .collect();
    let (mut local_rates, mut remote_rates, mut quiet_rates) = (vec![], vec![], vec![]);
    let mut complete = 0;
    let mut measured = 0;
    for rep in 0..args.reps.max(1) {
        eprintln!("repetition {}/{} ...", rep + 1, args.reps.max(1));
        let dir = work.path().join(format!("r{rep}"));
        // Local, no replication.
        let local = {
            let log = Log::open(dir.join("local"), options())?;
            let s = write(
                &log,
                Durability::Local,
                args.size,
                args.warmup,
                args.commits,
            )?;
            log.close()?;
            s
        };
        // RemoteFlush, hops recorded.
        let fbase = args.follower_dir.clone().unwrap_or_else(|| dir.clone());
        let fwork = tempfile::tempdir_in(&fbase).or_else(|_| {
            std::fs::create_dir_all(&fbase).and_then(|()| tempfile::tempdir_in(&fbase))
        })?;
        let pair = Pair::start(&dir.join("rec"), &fwork.path().join("rec"), &ca, zstd)?;
        let warm = write(
            &pair.log,
            Durability::RemoteFlush,
            args.size,
            args.warmup,
            0,
        )?;
        drop(warm);
        EVENTS.lock().map_err(|_| "poisoned")?.clear();
        RECORDING.store(true, Ordering::Release);
        let remote = write(
            &pair.log,
            Durability::RemoteFlush,
            args.size,
            0,
            args.commits,
        );
        RECORDING.store(false, Ordering::Release);
        pair.stop();
        let remote = remote?;
        let events = std::mem::take(&mut *EVENTS.lock().map_err(|_| "poisoned")?);
        // RemoteFlush, nothing recorded.
        let pair = Pair::start(&dir.join("quiet"), &fwork.path().join("quiet"), &ca, zstd)?;
        let quiet = write(
            &pair.log,
            Durability::RemoteFlush,
            args.size,
            args.warmup,
            args.commits,
        );
        pair.stop();
        let quiet = quiet?;

        let (h, n) = chains(&remote, &events);
        for (a, b) in hop_all.iter_mut().zip(&h) {
            a.add(b)?;
        }
        complete += n;
        measured += remote.len();
        local_all.add(histogram(&local))?;
        remote_all.add(histogram(&remote))?;
        quiet_all.add(histogram(&quiet))?;
        local_rates.push(rate(&local));
        remote_rates.push(rate(&remote));
        quiet_rates.push(rate(&quiet));
        eprintln!(
            "  local {:.0}/s, remote-flush {:.0}/s (recorded), {:.0}/s (not recorded)",
            rate(&local),
            rate(&remote),
            rate(&quiet)
        );
    }

    let med = walship_bench::median;
    println!("# Remote commit hops\n");
    println!(
        "1 writer × {} B, {} measured commits per variant × {} repetition(s) (interleaved), \
         zstd {}, 1 follower over loopback QUIC in the same process; {} of {} recorded \
         commits had every hop.\n",
        args.size,
        args.commits,
        args.reps.max(1),
        args.zstd,
        complete,
        measured
    );
    println!("| variant | commits/s | p50 µs | p90 µs | p99 µs | p99.9 µs | vs Local commits/s |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    let local_rate = med(&local_rates);
    for (name, h, r) in [
        ("Local, no replication", &local_all, &local_rates),
        ("RemoteFlush, hops not recorded", &quiet_all, &quiet_rates),
        ("RemoteFlush, hops recorded", &remote_all, &remote_rates),
    ] {
        println!(
            "| {name} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2}× |",
            med(r),
            us(h.value_at_quantile(0.5)),
            us(h.value_at_quantile(0.9)),
            us(h.value_at_quantile(0.99)),
            us(h.value_at_quantile(0.999)),
            med(r) / local_rate.max(1e-9)
        );
    }
    println!("\n| hop (time since the previous one) | p50 µs | p90 µs | p99 µs | mean µs |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    let mut names: Vec<String> = vec![format!("append → {}", hops::ALL[0])];
    for w in hops::ALL.windows(2) {
        names.push(format!("{} → {}", w[0], w[1]));
    }
    names.push(format!(
        "{} → committer woken",
        hops::ALL[hops::ALL.len() - 1]
    ));
    let mut mean_sum = 0.0;
    for (name, h) in names.iter().zip(&hop_all) {
        mean_sum += h.mean() / 1e3;
        println!(
            "| {name} | {:.1} | {:.1} | {:.1} | {:.1} |",
            us(h.value_at_quantile(0.5)),
            us(h.value_at_quantile(0.9)),
            us(h.value_at_quantile(0.99)),
            h.mean() / 1e3
        );
    }
    println!("| **sum of means** | | | | **{mean_sum:.1}** |");
    Ok(())
}
