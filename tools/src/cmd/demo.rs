//! `walship demo`: a three-node cluster inside this process, writers at every durability
//! level in turn, and what each level costs.
//!
//! This module owns the whole demo: the throw-away cluster CA and log directories, the
//! three [`Node`]s sharing one [`StaticCoordinator`], the stand-in embedder (no-op apply,
//! checkpoints as it goes), the writer tasks and their latency histograms, progress on
//! standard error, the report (tables or `--json`), and taking it all down again. It uses
//! only the public APIs an embedder would, so what it shows is what an embedder gets.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Serialize, Serializer};
use tokio::task::JoinHandle;
use walship_engine::{Durability, Epoch, Log, Lsn, Options};
use walship_tools::outcome::Failure;
use walship_tools::text::{Align, Table};
use walship_tools::view::NodeView;
use walship_transport::coordinator::{LeaderInfo, StaticCoordinator};
use walship_transport::status::{LeaderStatus, StreamState};
use walship_transport::tls::ClusterCa;
use walship_transport::{LeaderOptions, Node, NodeOptions, NodeRole, Security, SyncPolicy};

/// The nodes, the first the leader.
const NODES: [&str; 3] = ["n1", "n2", "n3"];
/// How long the nodes may take to take their roles and start streaming.
const STARTUP: Duration = Duration::from_secs(30);
/// How long the followers may take to apply what a level wrote once its writers stop.
const CATCH_UP: Duration = Duration::from_secs(60);
/// How often progress is redrawn, follower lag sampled and checkpoints advanced.
const TICK: Duration = Duration::from_millis(100);
/// The largest latency the histograms hold: beyond the remote commit timeout.
const MAX_LATENCY: Duration = Duration::from_secs(60);
/// The largest `--record-bytes`: above the log's default limit, so that the log's own
/// refusal can be seen, without letting a typo allocate gigabytes.
const MAX_RECORD_BYTES: i64 = 64 << 20;

/// Run a 3-node cluster in this process and measure commits at every durability level
///
/// Starts a leader (n1) and two followers (n2, n3) as walship nodes in this process, on
/// loopback QUIC with mutual TLS (a new cluster CA), each with its own log under a new
/// temporary directory, sync policy ANY 1 (*). Then, for each durability level in turn
/// (async, local, remote-write, remote-flush, remote-apply), --writers concurrent
/// writers append --record-bytes records to the leader and commit each at that level,
/// for --seconds-per-level. After each level the followers catch up before the next one
/// starts, so no level pays for an earlier one's backlog.
///
/// Prints, per level: commits, commits/s, commit latency percentiles (from the append to
/// the commit's acknowledgement), the largest follower flush lag seen while it ran, and
/// how long the followers then took to catch up. Then the followers as the leader saw
/// them when the last level's writers stopped, as `walship lag` shows them
/// (pg_stat_replication's columns).
/// Progress goes to standard error when that is a terminal. The directory is removed at
/// the end unless --keep is given.
///
/// --json prints one document:
///   { "format": "walship-demo/1", "dir", "kept", "sync_policy", "writers",
///     "record_bytes", "seconds_per_level",
///     "levels": [ { "level", "seconds", "commits", "commits_per_s",
///                   "latency_us": { "p50", "p90", "p99", "p99_9", "max", "mean" },
///                   "max_flush_lag_bytes", "catch_up_ms" } ],
///     "leader": the leader's status when the last level's writers stopped, the
///               walship-status/1 document its admin endpoint serves (`/status`), with
///               its followers under "leading" }
/// LSNs are strings in PostgreSQL's HI/LO hex form.
///
/// Exits 0 when every level ran; 2 when anything failed (a node that did not start, an
/// append or commit that failed or timed out), with the reason on standard error.
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub(crate) struct Args {
    /// How long the writers run at each level, in seconds (fractions allowed)
    #[arg(long, value_name = "SECONDS", default_value_t = 3.0, value_parser = parse_seconds)]
    seconds_per_level: f64,
    /// Concurrent writers, each appending and committing one record at a time
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1024))]
    writers: u32,
    /// Size of each record (the log's own limit, 8 MiB by default, applies)
    #[arg(long, value_name = "BYTES", default_value_t = 128, value_parser = clap::value_parser!(u32).range(0..=MAX_RECORD_BYTES))]
    record_bytes: u32,
    /// Keep the data directory (one log per node) and print where it is
    #[arg(long)]
    keep: bool,
    /// Print one JSON document instead of tables
    #[arg(long)]
    json: bool,
}

fn parse_seconds(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if v.is_finite() && v > 0.0 && v <= 3600.0 {
        Ok(v)
    } else {
        Err("must be more than 0 and at most 3600".into())
    }
}

pub(crate) fn run(args: &Args, out: &mut dyn Write) -> Result<(), Failure> {
    let dir = tempfile::Builder::new()
        .prefix("walship-demo-")
        .tempdir()
        .map_err(|e| Failure::Error(format!("create a temporary directory: {e}")))?;
    let path = dir.path().to_path_buf();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("walship-demo")
        .build()
        .map_err(|e| Failure::Error(format!("start the tokio runtime: {e}")))?;
    if !args.json {
        write_intro(args, &path, out)?;
        // Before the progress bars start drawing on standard error.
        out.flush()?;
    }
    let outcome = runtime.block_on(demo(args, &path));
    if std::io::stderr().is_terminal() {
        // indicatif leaves the cursor at the end of the last bar.
        eprintln!();
    }
    // After a failure, tasks may still hold logs open: they go with the runtime, before
    // their directories do.
    drop(runtime);
    let removed = if args.keep {
        // Its path is `path`.
        let _ = dir.keep();
        Ok(())
    } else {
        dir.close()
            .map_err(|e| Failure::Error(format!("remove {}: {e}", path.display())))
    };
    let mut report = match outcome {
        Ok(report) => report,
        Err(Failure::Error(m)) if args.keep => {
            return Err(Failure::Error(format!(
                "{m} (data kept in {})",
                path.display()
            )))
        }
        Err(f) => return Err(f),
    };
    removed?;
    report.dir = path.display().to_string();
    report.kept = args.keep;
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &report)
            .map_err(|e| Failure::from(std::io::Error::from(e)))?;
        writeln!(out)?;
    } else {
        write_text(&report, out)?;
    }
    Ok(())
}

/// Starts the cluster, runs every level, and stops the cluster whatever happened.
async fn demo(args: &Args, root: &Path) -> Result<Report, Failure> {
    let cluster = Cluster::start(root).await?;
    let ran = cluster.run_levels(args).await;
    let stopped = cluster.shutdown().await;
    let (levels, leader) = ran?;
    stopped?;
    Ok(Report {
        format: "walship-demo/1",
        dir: String::new(),
        kept: false,
        sync_policy: sync_policy().to_string(),
        writers: args.writers,
        record_bytes: args.record_bytes,
        seconds_per_level: args.seconds_per_level,
        levels,
        leader,
    })
}

/// The sync policy: any one streaming follower confirms the remote levels.
fn sync_policy() -> SyncPolicy {
    SyncPolicy::Any {
        k: 1,
        of: vec!["*".into()],
    }
}

fn node_options() -> NodeOptions {
    NodeOptions {
        leader: LeaderOptions {
            sync: sync_policy(),
            ..LeaderOptions::default()
        },
        // The coordinator is in this process: asking it often costs nothing and gets the
        // nodes into their roles sooner.
        check_interval: Duration::from_millis(50),
        ..NodeOptions::default()
    }
}

/// The three nodes, the leader first, and the stand-in embedder's checkpointer.
struct Cluster {
    nodes: Vec<Arc<Node>>,
    checkpointer: JoinHandle<()>,
}

impl Cluster {
    /// Starts the nodes in `root/<node>` and waits until the leader leads and both
    /// followers stream from it.
    async fn start(root: &Path) -> Result<Cluster, Failure> {
        let ca = ClusterCa::generate("walship-demo")
            .map_err(|e| Failure::Error(format!("generate the cluster CA: {e}")))?;
        let coordinator = StaticCoordinator::new(Some(LeaderInfo {
            node_id: NODES[0].into(),
            addr: String::new(),
            epoch: Epoch::ZERO,
        }));
        let mut nodes = Vec::with_capacity(NODES.len());
        for id in NODES {
            let dir = root.join(id);
            let log = Log::open(&dir, Options::default()).map_err(|e| {
                Failure::Error(format!("open the log of {id} in {}: {e}", dir.display()))
            })?;
            let identity = ca
                .issue_node(id)
                .map_err(|e| Failure::Error(format!("issue the certificate of {id}: {e}")))?;
            let node = Node::start(
                Arc::new(log),
                Security::mutual_tls(identity, ca.cert_pem()),
                coordinator.clone(),
                node_options(),
                super::Stateless,
            )
            .map_err(|e| Failure::Error(format!("start node {id}: {e}")))?;
            nodes.push(Arc::new(node));
        }
        let checkpointer = tokio::spawn(checkpoint_loop(nodes.clone()));
        let cluster = Cluster {
            nodes,
            checkpointer,
        };
        cluster.wait_until_streaming().await?;
        Ok(cluster)
    }

    fn leader(&self) -> &Node {
        &self.nodes[0]
    }

    async fn wait_until_streaming(&self) -> Result<(), Failure> {
        let leader_id = NODES[0];
        self.leader()
            .wait_for_role(|r| matches!(r, NodeRole::Leader { .. }), STARTUP)
            .await
            .map_err(|e| Failure::Error(format!("{leader_id} did not become the leader: {e}")))?;
        for follower in &self.nodes[1..] {
            follower
                .wait_for_role(
                    |r| matches!(r, NodeRole::Follower { leader, .. } if leader == leader_id),
                    STARTUP,
                )
                .await
                .map_err(|e| {
                    Failure::Error(format!(
                        "{} did not start following {leader_id}: {e}",
                        follower.node_id()
                    ))
                })?;
        }
        let followers = self.nodes.len() - 1;
        let streaming = poll_until(STARTUP, || {
            self.leader().status().leading.is_some_and(|s| {
                s.followers
                    .iter()
                    .filter(|f| f.state == StreamState::Streaming)
                    .count()
                    == followers
            })
        })
        .await;
        if !streaming {
            return Err(Failure::Error(format!(
                "the followers were not streaming from {leader_id} within {STARTUP:?}: {}",
                self.describe_followers()
            )));
        }
        Ok(())
    }

    /// Runs every level in turn; returns their results and the leader's status when the
    /// last level's writers stopped.
    async fn run_levels(&self, args: &Args) -> Result<(Vec<LevelResult>, NodeView), Failure> {
        let mut results = Vec::with_capacity(Durability::ALL.len());
        let mut last = None;
        for level in Durability::ALL {
            let (result, status) = self.run_level(level, args).await?;
            results.push(result);
            last = Some(status);
        }
        let status = last.ok_or_else(|| Failure::Error("no durability level ran".into()))?;
        Ok((results, status))
    }

    /// Writers at `level` for the configured time, then the followers' catch-up.
    async fn run_level(
        &self,
        level: Durability,
        args: &Args,
    ) -> Result<(LevelResult, NodeView), Failure> {
        let length = Duration::from_secs_f64(args.seconds_per_level);
        let mut latencies = latency_histogram()?;
        let bar = progress_bar(level, length);
        let counts: Arc<[AtomicU64]> = (0..args.writers).map(|_| AtomicU64::new(0)).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let start = Instant::now();
        let deadline = start + length;
        let record = record(level, args.record_bytes);
        let writers: Vec<JoinHandle<Result<Histogram<u64>, String>>> = (0..args.writers)
            .map(|i| {
                tokio::spawn(write_loop(Writer {
                    node: Arc::clone(&self.nodes[0]),
                    level,
                    record: Arc::clone(&record),
                    deadline,
                    stop: Arc::clone(&stop),
                    counts: Arc::clone(&counts),
                    index: i as usize,
                }))
            })
            .collect();

        let mut max_lag = 0;
        loop {
            let now = Instant::now();
            if now >= deadline || stop.load(Ordering::Relaxed) {
                break;
            }
            tokio::time::sleep(TICK.min(deadline - now)).await;
            let commits = total(&counts);
            let elapsed = start.elapsed();
            bar.set_position(millis(elapsed));
            bar.set_message(rate(commits, elapsed));
            max_lag = max_lag.max(self.flush_lag());
        }

        let mut failed = None;
        for (i, writer) in writers.into_iter().enumerate() {
            let error = match writer.await {
                Ok(Ok(h)) => latencies.add(&h).err().map(|e| e.to_string()),
                Ok(Err(e)) => Some(e),
                Err(e) => Some(format!("the task failed: {e}")),
            };
            if let Some(e) = error {
                failed.get_or_insert(format!("{level}: writer {i}: {e}"));
            }
        }
        let elapsed = start.elapsed();
        let snapshot = match failed {
            Some(e) => Err(Failure::Error(e)),
            None => self.leader_status(),
        };
        let (status, lag) = match snapshot {
            Ok(s) => s,
            Err(e) => {
                bar.abandon_with_message("failed");
                return Err(e);
            }
        };
        max_lag = max_lag.max(lag);

        let commits = latencies.len();
        bar.set_position(millis(length));
        bar.set_message(format!("{}; followers catching up", rate(commits, elapsed)));
        let catch_up = match self.catch_up(level).await {
            Ok(d) => d,
            Err(e) => {
                bar.abandon_with_message("followers did not catch up");
                return Err(e);
            }
        };
        let result = LevelResult {
            level: level.as_str(),
            seconds: elapsed.as_secs_f64(),
            commits,
            commits_per_s: per_second(commits, elapsed),
            latency_us: LatencyNs::of(&latencies),
            max_flush_lag_bytes: max_lag,
            catch_up,
        };
        bar.finish_with_message(format!(
            "{} commits, {}/s, p99 {}",
            thousands(commits),
            thousands(result.commits_per_s as u64),
            latency(result.latency_us.p99)
        ));
        Ok((result, status))
    }

    /// Waits until both followers have applied everything the leader has; returns how
    /// long that took.
    async fn catch_up(&self, level: Durability) -> Result<Duration, Failure> {
        let start = Instant::now();
        let end = self.leader().log().end_lsn();
        let followers = self.nodes.len() - 1;
        let caught_up = poll_until(CATCH_UP, || {
            self.leader()
                .status()
                .leading
                .is_some_and(|s| s.followers.iter().filter(|f| f.apply >= end).count() == followers)
        })
        .await;
        if !caught_up {
            return Err(Failure::Error(format!(
                "after {level}: the followers had not applied the log up to {end} within \
                 {CATCH_UP:?}: {}",
                self.describe_followers()
            )));
        }
        Ok(start.elapsed())
    }

    /// The leader's status, as its admin endpoint would serve it, and its followers'
    /// largest flush lag.
    fn leader_status(&self) -> Result<(NodeView, u64), Failure> {
        let leader = self.leader();
        let status = leader.status();
        let Some(leading) = &status.leading else {
            return Err(Failure::Error(format!(
                "{} is no longer leading (now {}{})",
                status.node_id,
                status.role.as_str(),
                status
                    .last_error
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            )));
        };
        let view = NodeView::new(&status, &leader.log().watermarks());
        Ok((view, max_flush_lag(leading)))
    }

    /// The largest follower flush lag now, in bytes.
    fn flush_lag(&self) -> u64 {
        self.leader()
            .status()
            .leading
            .map_or(0, |s| max_flush_lag(&s))
    }

    /// Where each follower is, for error messages.
    fn describe_followers(&self) -> String {
        let Some(status) = self.leader().status().leading else {
            return format!("{} is not leading", NODES[0]);
        };
        if status.followers.is_empty() {
            return "none has connected".into();
        }
        let followers: Vec<String> = status
            .followers
            .iter()
            .map(|f| {
                format!(
                    "{} {} applied up to {}{}",
                    f.node_id,
                    f.state.as_str(),
                    f.apply,
                    f.last_error
                        .as_ref()
                        .map(|e| format!(" (last error: {e})"))
                        .unwrap_or_default()
                )
            })
            .collect();
        followers.join(", ")
    }

    /// Stops the followers, then the leader, and closes the logs.
    async fn shutdown(self) -> Result<(), Failure> {
        self.checkpointer.abort();
        // Aborted: its outcome says nothing about the demo.
        let _ = self.checkpointer.await;
        let logs: Vec<Arc<Log>> = self.nodes.iter().map(|n| Arc::clone(n.log())).collect();
        // Followers first, so that none is left trying to reconnect to a stopped leader.
        for node in self.nodes.into_iter().rev() {
            // Every writer and the checkpointer have finished, so this is the last
            // handle; were it not, dropping it stops the node too, only without waiting.
            if let Ok(node) = Arc::try_unwrap(node) {
                node.shutdown().await;
            }
        }
        for (id, log) in NODES.iter().zip(logs) {
            log.close()
                .map_err(|e| Failure::Error(format!("close the log of {id}: {e}")))?;
        }
        Ok(())
    }
}

fn max_flush_lag(status: &LeaderStatus) -> u64 {
    status
        .followers
        .iter()
        .map(|f| f.flush_lag_bytes)
        .max()
        .unwrap_or(0)
}

/// Checks `cond` every few milliseconds until it holds (true) or `timeout` passes.
async fn poll_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// What an embedder does as its state absorbs the log: it reports a checkpoint, so the
/// segments before it can be recycled. Without it, the async level alone would leave
/// gigabytes in the temporary directory. A leader still keeps what its followers'
/// retention slots need.
async fn checkpoint_loop(nodes: Vec<Arc<Node>>) {
    let mut tick = tokio::time::interval(TICK);
    loop {
        tick.tick().await;
        for node in &nodes {
            let status = node.status();
            // The leader's embedder applied its records as it wrote them; a follower's
            // has applied what the follower reports.
            let done = match (status.leading, status.following) {
                (Some(_), _) => node.log().watermarks().flushed,
                (None, Some(f)) => f.applied,
                (None, None) => continue,
            };
            node.log().set_checkpoint(done);
        }
    }
}

/// One writer task's share of a level.
struct Writer {
    node: Arc<Node>,
    level: Durability,
    record: Arc<[u8]>,
    deadline: Instant,
    /// Set by the first writer that fails, so that the others stop too.
    stop: Arc<AtomicBool>,
    counts: Arc<[AtomicU64]>,
    index: usize,
}

/// Appends and commits one record at a time until the deadline; returns the latencies.
/// Commits at least once, even when the task first runs after the deadline (on a loaded
/// machine), so that every level has figures.
async fn write_loop(w: Writer) -> Result<Histogram<u64>, String> {
    let mut latencies = latency_histogram().map_err(|_| "create a histogram".to_string())?;
    loop {
        let t0 = Instant::now();
        let committed = match append(w.node.log(), &w.record).await {
            Ok(lsn) => w
                .node
                .commit(lsn, w.level)
                .await
                .map_err(|e| format!("commit of {lsn} failed: {e}")),
            Err(e) => Err(e),
        };
        if let Err(e) = committed {
            w.stop.store(true, Ordering::Relaxed);
            return Err(e);
        }
        latencies.saturating_record(nanos(t0.elapsed()));
        w.counts[w.index].fetch_add(1, Ordering::Relaxed);
        if w.stop.load(Ordering::Relaxed) || Instant::now() >= w.deadline {
            return Ok(latencies);
        }
        // Async commits resolve without ever waiting, so without this a writer would
        // hold its worker thread for the whole level, starving the nodes' own tasks.
        tokio::task::yield_now().await;
    }
}

/// Appends `record` to `log` without blocking the runtime's worker threads.
async fn append(log: &Arc<Log>, record: &Arc<[u8]>) -> Result<Lsn, String> {
    match log.try_append(record) {
        Ok(lsn) => Ok(lsn),
        Err(walship_engine::Error::WouldBlock { .. }) => {
            // The log writer is behind (async commits can outrun the disk): wait for
            // room on a blocking thread, not on a worker the nodes' tasks need.
            let (log, record) = (Arc::clone(log), Arc::clone(record));
            tokio::task::spawn_blocking(move || log.append(&record))
                .await
                .map_err(|e| format!("append: the task failed: {e}"))?
                .map_err(|e| format!("append failed: {e}"))
        }
        Err(e) => Err(format!("append failed: {e}")),
    }
}

/// The record every writer of a level appends: text naming the level (so `walship dump`
/// of a kept log reads well), padded or cut to `len` bytes.
fn record(level: Durability, len: u32) -> Arc<[u8]> {
    let mut data = format!("walship demo {level} ").into_bytes();
    data.resize(len as usize, b'.');
    data.into()
}

/// Commit latencies in nanoseconds: async commits take well under a microsecond.
fn latency_histogram() -> Result<Histogram<u64>, Failure> {
    Histogram::new_with_bounds(1, nanos(MAX_LATENCY), 3)
        .map_err(|e| Failure::Error(format!("create a latency histogram: {e}")))
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn total(counts: &[AtomicU64]) -> u64 {
    counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
}

/// "N commits, R/s", for the progress bars.
fn rate(commits: u64, elapsed: Duration) -> String {
    format!(
        "{} commits, {}/s",
        thousands(commits),
        thousands(per_second(commits, elapsed) as u64)
    )
}

fn per_second(n: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

/// A bar over the level's time on standard error; indicatif hides it when standard
/// error is not a terminal.
fn progress_bar(level: Durability, length: Duration) -> ProgressBar {
    let bar = ProgressBar::new(millis(length));
    // `wide_msg` is cut at the terminal's width: a line that wrapped would be redrawn
    // one line lower at every tick.
    let style = ProgressStyle::with_template("{prefix:>12} [{bar:20}] {wide_msg}")
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_prefix(level.as_str());
    bar
}

/// The `--json` document; the text report is printed from it too.
#[derive(Serialize)]
struct Report {
    format: &'static str,
    dir: String,
    kept: bool,
    sync_policy: String,
    writers: u32,
    record_bytes: u32,
    seconds_per_level: f64,
    levels: Vec<LevelResult>,
    leader: NodeView,
}

#[derive(Serialize)]
struct LevelResult {
    level: &'static str,
    seconds: f64,
    commits: u64,
    commits_per_s: f64,
    latency_us: LatencyNs,
    max_flush_lag_bytes: u64,
    #[serde(rename = "catch_up_ms", serialize_with = "as_millis")]
    catch_up: Duration,
}

/// Latency figures, kept in nanoseconds and written to JSON in microseconds.
#[derive(Serialize)]
struct LatencyNs {
    #[serde(serialize_with = "as_micros")]
    p50: u64,
    #[serde(serialize_with = "as_micros")]
    p90: u64,
    #[serde(serialize_with = "as_micros")]
    p99: u64,
    #[serde(serialize_with = "as_micros")]
    p99_9: u64,
    #[serde(serialize_with = "as_micros")]
    max: u64,
    #[serde(serialize_with = "as_micros")]
    mean: u64,
}

impl LatencyNs {
    fn of(h: &Histogram<u64>) -> LatencyNs {
        LatencyNs {
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p99_9: h.value_at_quantile(0.999),
            max: h.max(),
            mean: h.mean().round() as u64,
        }
    }
}

fn as_micros<S: Serializer>(ns: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(*ns as f64 / 1e3)
}

fn as_millis<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1e3)
}

fn write_intro(args: &Args, dir: &Path, out: &mut dyn Write) -> Result<(), Failure> {
    writeln!(
        out,
        "walship demo: 3 nodes in this process, on loopback QUIC with mutual TLS"
    )?;
    writeln!(
        out,
        "  leader {}, followers {} and {}, sync policy {}",
        NODES[0],
        NODES[1],
        NODES[2],
        sync_policy()
    )?;
    writeln!(
        out,
        "  {}, {} B records, {} s at each durability level",
        writers(args.writers),
        args.record_bytes,
        args.seconds_per_level
    )?;
    writeln!(out, "  data in {}", dir.display())?;
    Ok(())
}

fn write_text(r: &Report, out: &mut dyn Write) -> Result<(), Failure> {
    writeln!(out)?;
    writeln!(
        out,
        "commit latency, from append to acknowledgement ({}, {} B records):",
        writers(r.writers),
        r.record_bytes
    )?;
    let mut levels = Table::new(&[
        ("level", Align::Left),
        ("commits", Align::Right),
        ("commits/s", Align::Right),
        ("p50", Align::Right),
        ("p90", Align::Right),
        ("p99", Align::Right),
        ("p99.9", Align::Right),
        ("max", Align::Right),
        ("max flush lag", Align::Right),
        ("catch-up", Align::Right),
    ]);
    for l in &r.levels {
        let lat = &l.latency_us;
        levels.row([
            l.level.to_string(),
            thousands(l.commits),
            thousands(l.commits_per_s as u64),
            latency(lat.p50),
            latency(lat.p90),
            latency(lat.p99),
            latency(lat.p99_9),
            latency(lat.max),
            bytes(l.max_flush_lag_bytes),
            duration(l.catch_up),
        ]);
    }
    levels.write(out)?;
    writeln!(out)?;
    writeln!(
        out,
        "replication when the last level's writers stopped, as `walship lag` shows it:"
    )?;
    super::lag::draw(&r.leader, out)?;
    writeln!(out)?;
    if r.kept {
        writeln!(
            out,
            "kept {}: one log directory per node ({}); look with `walship inspect {}/{}`",
            r.dir,
            NODES.join(", "),
            r.dir,
            NODES[0]
        )?;
    } else {
        writeln!(out, "removed {}", r.dir)?;
    }
    Ok(())
}

fn writers(n: u32) -> String {
    if n == 1 {
        "1 writer".into()
    } else {
        format!("{n} writers")
    }
}

/// A latency in nanoseconds, in µs below a millisecond and in ms above.
fn latency(ns: u64) -> String {
    let us = ns as f64 / 1e3;
    if us < 10.0 {
        format!("{us:.2} µs")
    } else if us < 1e3 {
        format!("{us:.1} µs")
    } else {
        format!("{:.2} ms", us / 1e3)
    }
}

fn duration(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

/// A byte count in the largest binary unit it reaches, one decimal.
fn bytes(n: u64) -> String {
    for (shift, unit) in [(30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if n >= 1 << shift {
            return format!("{:.1} {unit}", n as f64 / (1u64 << shift) as f64);
        }
    }
    format!("{n} B")
}

/// `1234567` as `1,234,567`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(latency(123), "0.12 µs");
        assert_eq!(latency(145_240), "145.2 µs");
        assert_eq!(latency(1_050_000), "1.05 ms");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 << 20), "3.0 MiB");
        assert_eq!(duration(Duration::from_millis(250)), "250 ms");
        assert_eq!(duration(Duration::from_millis(2500)), "2.5 s");
    }

    #[test]
    fn records_have_the_asked_size() {
        assert_eq!(record(Durability::Local, 128).len(), 128);
        assert_eq!(&record(Durability::Local, 12)[..], b"walship demo");
        assert!(record(Durability::Async, 0).is_empty());
    }

    #[test]
    fn seconds_must_be_positive_and_bounded() {
        assert_eq!(parse_seconds("0.5"), Ok(0.5));
        assert!(parse_seconds("0").is_err());
        assert!(parse_seconds("-1").is_err());
        assert!(parse_seconds("inf").is_err());
        assert!(parse_seconds("x").is_err());
    }
}
