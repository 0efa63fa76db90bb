//! One replication run, the leader's side: a fresh leader log and driver in this
//! process, and one follower child process per follower (`roles::follower`), each with
//! its own log, all on the same WAL-like data.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use walship_bench::child::{mono_ns, process_cpu_ns, Child};
use walship_bench::sys::ThreadTimes;
use walship_bench::waldata::Batches;
use walship_bench::Res;
use walship_engine::{Durability, Log, Lsn};
use walship_transport::{Leader, LeaderOptions, Security};

use crate::roles::{self, components, new_threads, open_log, spawn_checkpointer};
use crate::{Ctx, MachineMeter, Mode, Net, Zstd, LEADER_RT};

/// CPU seconds one process spent during a run, by component.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcCpu {
    /// The whole process (getrusage).
    pub total: f64,
    /// Its tokio runtime: QUIC and TLS, reading the log and compressing (leader) or
    /// decompressing and appending (follower).
    pub runtime: f64,
    /// Its log's engine threads (writer, preparer, flusher) and their io_uring workers.
    pub log: f64,
    /// The leader's appending thread (live runs), or the follower's apply thread.
    pub extra: f64,
    /// Every other thread.
    pub rest: f64,
}

/// One replication run's figures.
#[derive(Debug, Clone)]
pub struct ReplRun {
    /// Log bytes applied on every follower during the timed interval.
    pub log_bytes: u64,
    /// Frame bytes the leader sent to the first follower (after compression).
    pub wire_bytes: u64,
    /// Raw log bytes the leader shipped to the first follower (before compression).
    pub raw_bytes: u64,
    /// Timed interval: until the last follower applied the end.
    pub secs: f64,
    /// Seconds the leader's writer took to append everything (live only).
    pub append_secs: Option<f64>,
    /// Seconds until the last follower's log had everything appended (before flush and
    /// apply), from the same start; sampled every millisecond.
    pub received_secs: f64,
    /// The leader process.
    pub leader: ProcCpu,
    /// Each follower process.
    pub followers: Vec<ProcCpu>,
    /// CPUs that other processes of the machine used during the interval (and steal).
    pub others: f64,
    /// Segments the leader's log created (zero-filled) and recycled during the interval.
    pub leader_segments: (u64, u64),
}

impl ReplRun {
    pub fn log_mb_s(&self) -> f64 {
        self.log_bytes as f64 / walship_bench::MB / self.secs.max(1e-9)
    }
    pub fn wire_mb_s(&self) -> f64 {
        self.wire_bytes as f64 / walship_bench::MB / self.secs.max(1e-9)
    }
    pub fn wire_per_log(&self) -> f64 {
        self.wire_bytes as f64 / self.raw_bytes.max(1) as f64
    }
    fn gb(&self) -> f64 {
        (self.log_bytes as f64 / 1e9).max(1e-12)
    }
    /// Leader CPU seconds per GB of log shipped (to all followers).
    pub fn leader_s_per_gb(&self) -> f64 {
        self.leader.total / self.gb()
    }
    /// Mean follower CPU seconds per GB of log applied.
    pub fn follower_s_per_gb(&self) -> f64 {
        let n = self.followers.len().max(1) as f64;
        self.followers.iter().map(|f| f.total).sum::<f64>() / n / self.gb()
    }
}

/// A follower child process, started and not yet stopped.
struct FollowerProc {
    child: Child,
}

impl FollowerProc {
    fn spawn(ctx: &Ctx, net: &Net<'_>, dir: &std::path::Path, node: &str) -> Res<FollowerProc> {
        let args = roles::follower_args(
            dir,
            ctx.certs.path(),
            node,
            net.follower_ip(),
            ctx.args.segment_mib,
        );
        let (child, _) = Child::spawn(&format!("follower {node}"), net.follower_ns(), &args)?;
        Ok(FollowerProc { child })
    }
}

/// Parsed reply of a follower's `wait`.
struct Applied {
    applied_ns: u64,
    received_ns: u64,
    cpu: ProcCpu,
}

fn parse_applied(reply: &str) -> Res<Applied> {
    let v = walship_bench::child::numbers(reply, 7, "follower's wait reply")?;
    let s = |ns: u64| ns as f64 / 1e9;
    Ok(Applied {
        applied_ns: v[0],
        received_ns: v[1],
        cpu: ProcCpu {
            total: s(v[2]),
            runtime: s(v[3]),
            log: s(v[4]),
            extra: s(v[5]),
            rest: s(v[6]),
        },
    })
}

/// What [`write_all`] returns: the end LSN, the time taken and the CPU time used.
type Written = (Lsn, Duration, Duration);

/// Appends every batch of `data` to `log` as fast as it accepts them (`Async` commits);
/// returns the end LSN, the time taken, and the calling thread's CPU time.
fn write_all(log: &Log, data: &Batches) -> Res<Written> {
    let cpu0 = thread_cpu();
    let start = std::time::Instant::now();
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

/// Runs [`write_all`] on a thread of its own.
fn spawn_writer(log: Arc<Log>, data: Arc<Batches>) -> Res<std::thread::JoinHandle<Res<Written>>> {
    Ok(std::thread::Builder::new()
        .name("wsb-writer".into())
        .spawn(move || write_all(&log, &data))?)
}

/// One replication run with `followers` follower processes, zstd at the configured
/// level or off, `mode` as documented in [`Mode`].
pub fn replicate(
    ctx: &Ctx,
    rt: &tokio::runtime::Runtime,
    net: &Net<'_>,
    mode: Mode,
    zstd: Zstd,
    followers: usize,
) -> Res<ReplRun> {
    let run_dir = ctx.run_dir()?;
    let before = ThreadTimes::now();
    let leader_log = open_log(&run_dir.path().join("leader"), ctx.args.segment_mib)?;
    let leader_tids = new_threads(&before, &ThreadTimes::now());
    let leader = {
        let _in_rt = rt.enter();
        Leader::start(
            Arc::clone(&leader_log),
            Security::mutual_tls(ctx.cluster.leader.clone(), ctx.cluster.ca.cert_pem()),
            LeaderOptions {
                socket: Some(net.leader_udp()?),
                compression: zstd.options(&ctx.args),
                frame_bytes: ctx.args.frame_bytes,
                ..LeaderOptions::default()
            },
        )?
    };
    let leader_addr: SocketAddr = leader.local_addr()?;
    let mut procs = Vec::with_capacity(followers);
    for i in 0..followers {
        let dir = run_dir.path().join(format!("follower{i}"));
        procs.push(FollowerProc::spawn(ctx, net, &dir, &ctx.follower_nodes[i])?);
    }
    let start_all = |procs: &mut Vec<FollowerProc>| -> Res<()> {
        for p in procs.iter_mut() {
            p.child.call(&format!("start {leader_addr}"))?;
        }
        Ok(())
    };

    // The leader checkpoints what it flushed every 10 ms in live runs, as an embedder
    // does; its retention slots keep what the followers still need. (In catch-up runs
    // everything is written before the followers start, so nothing may be retired.)
    let checkpointing = Arc::new(AtomicBool::new(mode == Mode::Live));
    let checkpointer = spawn_checkpointer(Arc::clone(&leader_log), Arc::clone(&checkpointing))?;

    let result = (|| -> Res<ReplRun> {
        let stats0;
        let (first, end, start_ns, meter, base, cpu0, append) = match mode {
            Mode::Live => {
                start_all(&mut procs)?;
                // Connected and caught up with the epoch start before the clock starts.
                let first = leader_log.end_lsn();
                for p in procs.iter_mut() {
                    p.child.call("mark")?;
                    parse_applied(&p.child.call(&format!("wait {}", first.get()))?)?;
                    p.child.call("mark")?;
                }
                let (meter, base, cpu0) =
                    (MachineMeter::start(), ThreadTimes::now(), process_cpu_ns());
                stats0 = leader_log.stats();
                let start_ns = mono_ns();
                let (end, took, cpu) =
                    spawn_writer(Arc::clone(&leader_log), Arc::clone(&ctx.data))?
                        .join()
                        .map_err(|_| "the writer thread panicked")??;
                (first, end, start_ns, meter, base, cpu0, Some((took, cpu)))
            }
            Mode::CatchUp => {
                let (end, _, _) = spawn_writer(Arc::clone(&leader_log), Arc::clone(&ctx.data))?
                    .join()
                    .map_err(|_| "the writer thread panicked")??;
                leader_log.commit(end, Durability::Local).wait()?;
                let mut first = Lsn::new(0);
                for p in procs.iter_mut() {
                    first = Lsn::new(p.child.call("mark")?.parse()?);
                }
                let (meter, base, cpu0) =
                    (MachineMeter::start(), ThreadTimes::now(), process_cpu_ns());
                stats0 = leader_log.stats();
                let start_ns = mono_ns();
                start_all(&mut procs)?;
                (first, end, start_ns, meter, base, cpu0, None)
            }
        };
        let mut applied = Vec::with_capacity(procs.len());
        for p in procs.iter_mut() {
            applied.push(parse_applied(
                &p.child.call(&format!("wait {}", end.get()))?,
            )?);
        }
        let leader_total = process_cpu_ns().saturating_sub(cpu0) as f64 / 1e9;
        let stats1 = leader_log.stats();
        let leader_segments = (
            stats1
                .segments_created
                .saturating_sub(stats0.segments_created),
            stats1
                .segments_recycled
                .saturating_sub(stats0.segments_recycled),
        );
        let parts = components(&base, &leader_tids, &[LEADER_RT]);
        let end_ns = applied
            .iter()
            .map(|a| a.applied_ns)
            .max()
            .unwrap_or(start_ns);
        let received_ns = applied
            .iter()
            .map(|a| a.received_ns)
            .max()
            .unwrap_or(end_ns);
        let secs = end_ns.saturating_sub(start_ns) as f64 / 1e9;
        let writer = append.map_or(0.0, |(_, cpu)| cpu.as_secs_f64());
        let leader_cpu = ProcCpu {
            total: leader_total,
            runtime: parts[1] as f64 / 1e9,
            log: parts[0] as f64 / 1e9,
            // The writer thread has exited, so the snapshot misses it: it measured itself.
            extra: writer,
            rest: parts[2] as f64 / 1e9,
        };
        let followers: Vec<ProcCpu> = applied.iter().map(|a| a.cpu).collect();
        let ours = leader_cpu.total + followers.iter().map(|f| f.total).sum::<f64>();
        let status = leader.status();
        let info = status
            .followers
            .iter()
            .find(|f| f.node_id == ctx.follower_nodes[0])
            .ok_or("the leader's status lists no first follower")?;
        Ok(ReplRun {
            log_bytes: end.bytes_after(first),
            wire_bytes: info.bytes_wire,
            raw_bytes: info.bytes_raw,
            secs,
            append_secs: append.map(|(took, _)| took.as_secs_f64()),
            received_secs: (received_ns.saturating_sub(start_ns) as f64 / 1e9).min(secs),
            leader: leader_cpu,
            followers,
            others: meter.others(ours),
            leader_segments,
        })
    })();
    for mut p in procs {
        let _ = p.child.call("stop");
        let _ = p.child.finish(Duration::from_secs(10));
    }
    rt.block_on(leader.shutdown());
    checkpointing.store(false, Ordering::Release);
    let _ = checkpointer.join();
    result
}
