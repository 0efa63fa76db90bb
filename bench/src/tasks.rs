//! Commits from many async tasks: `commit(..).await` from N tokio tasks on a runtime
//! of two worker threads, as a database server commits from its connections' tasks.
//!
//! Each task loops { append; `commit(lsn, level).await` } and records the round trip in
//! its own HDR histogram. Process CPU time and context switches over the measured
//! window, divided by the commits, show whether the cost of a commit grows with the
//! number of waiters.

use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use walship_engine::{Durability, Log, Options};

use crate::sys::Usage;
use crate::{hgrm, Res};

/// What one run measured.
#[derive(Debug, Clone)]
pub struct TaskRun {
    /// Concurrent tasks.
    pub tasks: usize,
    /// Commits completed in the measured window.
    pub commits: u64,
    /// Length of the measured window.
    pub elapsed: Duration,
    /// Round trip of append + commit, ns.
    pub hist: Histogram<u64>,
    /// Process usage over the window (all threads: the runtime's and the log's).
    pub usage: Option<Usage>,
    /// The log's flushes over the window.
    pub flushes: u64,
}

impl TaskRun {
    /// Commits per second.
    pub fn rate(&self) -> f64 {
        self.commits as f64 / self.elapsed.as_secs_f64()
    }

    /// CPU per commit, µs.
    pub fn cpu_us_per_commit(&self) -> Option<f64> {
        let u = self.usage?;
        (self.commits > 0).then(|| u.cpu.as_secs_f64() * 1e6 / self.commits as f64)
    }

    /// Context switches (voluntary + involuntary) per commit.
    pub fn switches_per_commit(&self) -> Option<f64> {
        let u = self.usage?;
        (self.commits > 0)
            .then(|| (u.voluntary_switches + u.involuntary_switches) as f64 / self.commits as f64)
    }
}

const WARMUP: u8 = 0;
const MEASURE: u8 = 1;
const STOP: u8 = 2;

/// Opens a log in `dir` (which should be new) with `opts` and runs `tasks` closed-loop
/// async committers at `level` with records of `size` bytes on a two-worker runtime.
///
/// # Errors
/// Opening the log or the runtime, or any append or commit failing.
pub fn run(
    dir: &Path,
    opts: Options,
    tasks: usize,
    size: usize,
    level: Durability,
    warmup: Duration,
    duration: Duration,
) -> Res<TaskRun> {
    let log = Arc::new(Log::open(dir, opts)?);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()?;
    let phase = Arc::new(AtomicU8::new(WARMUP));
    let record: Arc<[u8]> = (0..size).map(|i| i as u8).collect::<Vec<u8>>().into();
    let result = rt.block_on(async {
        let mut handles = Vec::with_capacity(tasks);
        for _ in 0..tasks {
            let (log, phase, record) = (Arc::clone(&log), Arc::clone(&phase), Arc::clone(&record));
            handles.push(tokio::spawn(async move {
                let mut hist = hgrm::latency_histogram();
                let mut n = 0u64;
                loop {
                    let p = phase.load(Ordering::Acquire);
                    if p == STOP {
                        return Ok::<_, String>((hist, n));
                    }
                    let t0 = Instant::now();
                    let lsn = log.append(&record).map_err(|e| e.to_string())?;
                    log.commit(lsn, level)
                        .timeout(Duration::from_secs(30))
                        .await
                        .map_err(|e| e.to_string())?;
                    if p == MEASURE {
                        hist.saturating_record(t0.elapsed().as_nanos() as u64);
                        n += 1;
                    }
                }
            }));
        }
        tokio::time::sleep(warmup).await;
        let (u0, s0) = (Usage::now(), log.stats());
        let start = Instant::now();
        phase.store(MEASURE, Ordering::Release);
        tokio::time::sleep(duration).await;
        phase.store(STOP, Ordering::Release);
        let elapsed = start.elapsed();
        let (u1, s1) = (Usage::now(), log.stats());
        let mut hist = hgrm::latency_histogram();
        let mut commits = 0;
        for h in handles {
            let (hh, n) = h.await.map_err(|e| format!("task: {e}"))??;
            hist.add(&hh)
                .map_err(|e| format!("merge histograms: {e:?}"))?;
            commits += n;
        }
        Ok::<_, crate::BoxError>(TaskRun {
            tasks,
            commits,
            elapsed,
            hist,
            usage: match (u0, u1) {
                (Some(a), Some(b)) => Some(b.since(&a)),
                _ => None,
            },
            flushes: s1.flushes - s0.flushes,
        })
    });
    drop(rt);
    let closed = log.close();
    let run = result?;
    closed?;
    Ok(run)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_commit_and_are_counted() {
        let d = tempfile::tempdir().unwrap();
        let opts = Options {
            segment_capacity: 1 << 20,
            ..Options::default()
        };
        let r = run(
            &d.path().join("log"),
            opts,
            16,
            64,
            Durability::Local,
            Duration::from_millis(20),
            Duration::from_millis(100),
        )
        .unwrap();
        assert!(r.commits > 0, "{r:?}");
        assert_eq!(r.hist.len(), r.commits);
        assert!(r.flushes > 0 && r.flushes <= r.commits, "{r:?}");
    }
}
