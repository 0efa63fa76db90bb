//! Model-based test of the engine (issue 10): random sequences of `append`,
//! `append_batch` (records sized to end exactly at a segment's end, or to leave padding),
//! `commit` at every level, `set_checkpoint`, `set_retention_floor`, `truncate_suffix`,
//! `begin_epoch`, concurrent appenders, `close` and reopen, and crashes, run against a real
//! log and checked against a simple in-memory model.
//!
//! The log lives in a worker process (this test binary in worker mode, driven over its
//! stdin and stdout), so a crash is real: the worker exits without closing the log
//! ("drop without close"), or is killed with SIGKILL while an operation is in flight, at
//! a random moment. A power loss (`PowerLoss`) makes the worker wait until the writer is
//! idle, report its flushed watermark and exit; the test then tears the bytes that were
//! never flushed, page by page, as a disk whose cache reaches the platter out of order
//! would: some pages keep their new bytes, some lose them, some keep only their first
//! sectors, some hold garbage.
//!
//! Checked after every operation:
//! - the directory holds exactly the segments the log believes it has, each the very file
//!   it maps and writes ([`Log::check_files`]), and no descriptor of the worker points at
//!   an unlinked segment that the log still uses;
//! - retirement never passes `min(checkpoint, retention floor)`.
//!
//! Checked after every reopen (and every few operations):
//! - without a crash, the log holds exactly the records appended, at their LSNs;
//! - after a crash or power loss, the log is a prefix of what was appended (records of an
//!   operation cut short may or may not be there) that contains every record
//!   acknowledged at `Local` or stronger;
//! - an epoch begun durably is still there if the log reaches its start.
//!
//! Failures shrink to a short sequence (proptest). `WALSHIP_MODEL_CASES` sets the number
//! of cases (default 96, half as many on io_uring), `WALSHIP_MODEL_VERBOSE=1` prints each case's operations.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use walship_engine::format::{BATCH_HEADER_LEN, RECORD_PREFIX_LEN, SEGMENT_HEADER_LEN};
use walship_engine::{BackendKind, Durability, Epoch, Log, Lsn, Options};

const WORKER_ENV: &str = "WALSHIP_MODEL_WORKER";
const CONFIG_ENV: &str = "WALSHIP_MODEL_CONFIG";
const CAP: u64 = 64 * 1024;
/// Marks the worker's protocol lines (libtest prints its own lines on the same stdout).
const TAG: &str = "@@ ";

/// The payload of record `seq` with `len` bytes: deterministic, so the worker reports
/// a CRC and the model recomputes it.
use common::exact_payload as payload;

fn crc_of(seq: u64, len: usize) -> u32 {
    crc32c::crc32c(&payload(seq, len))
}

/// How a case opens its log.
#[derive(Debug, Clone, Copy)]
struct Config {
    io_uring: bool,
    recycle_pool: usize,
    max_batch_bytes: usize,
}

impl Config {
    fn options(&self) -> Options {
        Options {
            segment_capacity: CAP,
            backend: if self.io_uring {
                BackendKind::IoUring
            } else {
                BackendKind::Portable
            },
            recycle_pool: self.recycle_pool,
            max_batch_bytes: self.max_batch_bytes,
            // The writer flushes only when asked (or at a segment switch), so what is
            // unflushed at a power loss is what the operations left unflushed.
            async_flush_interval: Duration::from_secs(3600),
            async_flush_after_bytes: 1 << 40,
            verify_all_on_open: true,
            ..Options::default()
        }
    }

    fn encode(&self) -> String {
        format!(
            "{} {} {}",
            u8::from(self.io_uring),
            self.recycle_pool,
            self.max_batch_bytes
        )
    }

    fn decode(s: &str) -> Config {
        let v: Vec<usize> = s.split_whitespace().map(|x| x.parse().unwrap()).collect();
        Config {
            io_uring: v[0] == 1,
            recycle_pool: v[1],
            max_batch_bytes: v[2],
        }
    }
}

// ---------------------------------------------------------------------------------
// The worker: owns the log, executes one command per line.

#[test]
fn model_worker() {
    let Ok(dir) = std::env::var(WORKER_ENV) else {
        return;
    };
    let cfg = Config::decode(&std::env::var(CONFIG_ENV).unwrap());
    worker(Path::new(&dir), cfg);
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    // The leading newline keeps the tag off libtest's "test model_worker ... " line.
    let _ = writeln!(out, "\n{TAG}{line}");
    let _ = out.flush();
}

fn level(n: u8) -> Durability {
    Durability::ALL[n as usize % Durability::ALL.len()]
}

fn worker(dir: &Path, cfg: Config) {
    let (log, report) = match Log::open_with_report(dir, cfg.options()) {
        Ok(x) => x,
        Err(e) => {
            say(&format!("openerr {e}"));
            std::process::exit(3);
        }
    };
    say(&format!(
        "ready {} {} {} {} {}",
        log.start_lsn().get(),
        log.end_lsn().get(),
        epoch_now(&log),
        report.repaired_at.map_or(0, Lsn::get),
        report.unflushed_cut.map_or(0, |c| c.discarded_batches)
    ));
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let mut it = line.split_whitespace();
        let cmd = it.next().unwrap_or("");
        let args: Vec<u64> = it.filter_map(|x| x.parse().ok()).collect();
        match execute(&log, cmd, &args, &line) {
            Ok(Some(reply)) => say(&format!("ok {reply}")),
            Ok(None) => {}
            Err(e) => say(&format!("err {cmd}: {e}")),
        }
    }
}

/// The current epoch and where it started: `"epoch start"`.
fn epoch_now(log: &Log) -> String {
    let (e, start) = log
        .epoch_history()
        .current()
        .map_or((0, 0), |(e, s)| (e.get(), s.get()));
    format!("{e} {start}")
}

/// Waits until everything appended is written (the writer has taken the open batch).
fn settle(log: &Log) -> walship_engine::Result<()> {
    let end = log.end_lsn();
    log.written(end).wait_timeout(Duration::from_secs(30))
}

/// The payload length that makes a one-record batch appended at the log's end leave
/// `slack` bytes before the segment's end (after the writer took the open batch), within
/// the record size limit (an empty segment cannot be filled exactly by one record).
fn fill_len(log: &Log, slack: u64) -> usize {
    let mut pos = log.end_lsn().get();
    if pos % CAP == 0 {
        pos += SEGMENT_HEADER_LEN as u64;
    }
    let seg_end = (pos / CAP + 1) * CAP;
    let overhead = (BATCH_HEADER_LEN + RECORD_PREFIX_LEN) as u64;
    let max =
        log.segment_capacity() - SEGMENT_HEADER_LEN as u64 - overhead - BATCH_HEADER_LEN as u64;
    seg_end.saturating_sub(pos + slack + overhead).min(max) as usize
}

fn execute(log: &Log, cmd: &str, a: &[u64], line: &str) -> walship_engine::Result<Option<String>> {
    Ok(Some(match cmd {
        "append" => log.append(&payload(a[0], a[1] as usize))?.get().to_string(),
        "fill" => {
            settle(log)?;
            let len = fill_len(log, a[1]);
            let lsn = log.append(&payload(a[0], len))?;
            format!("{} {len}", lsn.get())
        }
        "batch" => {
            let recs: Vec<Vec<u8>> = a[1..]
                .iter()
                .enumerate()
                .map(|(i, &len)| payload(a[0] + i as u64, len as usize))
                .collect();
            let lsns = log.append_batch(&recs)?;
            lsns.iter()
                .map(|l| l.get().to_string())
                .collect::<Vec<_>>()
                .join(" ")
        }
        "commit" => {
            let (lvl, lsn) = (level(a[0] as u8), Lsn::new(a[1]));
            if lvl.is_remote() {
                // The test plays the replication layer's quorum.
                log.advance_remote_written(lsn);
                log.advance_remote_flushed(lsn);
                log.advance_remote_applied(lsn);
            }
            log.commit(lsn, lvl).wait_timeout(Duration::from_secs(30))?;
            String::new()
        }
        "checkpoint" => {
            log.set_checkpoint(Lsn::new(a[0]));
            String::new()
        }
        "floor" => {
            log.set_retention_floor(a.first().map(|&l| Lsn::new(l)));
            String::new()
        }
        "boundaries" => {
            settle(log)?;
            retained(log, |log| {
                let mut r = log.reader(log.start_lsn())?;
                let mut out = vec![log.start_lsn().get().to_string()];
                while let Some(b) = r.try_next()? {
                    out.push(b.end().get().to_string());
                }
                Ok(out.join(" "))
            })?
        }
        "truncate" => match log.truncate_suffix(Lsn::new(a[0])) {
            // Retirement moved the start past the point after the test picked it.
            Err(walship_engine::Error::NotRetained { .. }) => "skipped".to_string(),
            r => {
                r?;
                epoch_now(log)
            }
        },
        "epoch" => {
            let e = Epoch::new(log.epoch().get() + 1);
            let start = log.begin_epoch(e)?;
            format!("{} {}", e.get(), start.get())
        }
        "concurrent" => concurrent(log, a[0], a[1], a[2], a[3] as usize)?,
        "check" => {
            let files = log.check_files()?;
            let live: BTreeSet<u64> = files.segments.iter().map(|l| l.get()).collect();
            if let Some(fd) = unlinked_live_segment(log.dir(), &live) {
                return Err(walship_engine::Error::FileMismatch {
                    path: PathBuf::from(fd),
                    reason: "the log still uses this unlinked segment".into(),
                });
            }
            let w = log.watermarks();
            format!("{} {} {}", w.start.get(), w.end.get(), w.flushed.get())
        }
        "read" => {
            // Readers see only what the writer has written.
            settle(log)?;
            let (start, recs) = retained(log, |log| {
                let start = log.start_lsn();
                let mut r = log.record_reader(start)?;
                let mut recs = Vec::new();
                while let Some(rec) = r.try_next()? {
                    recs.push(format!(
                        "rec {} {} {}",
                        rec.lsn.get(),
                        rec.data.len(),
                        crc32c::crc32c(&rec.data)
                    ));
                }
                Ok((start, recs))
            })?;
            for r in &recs {
                say(r);
            }
            format!("{} {}", start.get(), recs.len())
        }
        "quiesce" => {
            settle(log)?;
            let w = log.watermarks();
            format!("{} {}", w.flushed.get(), w.end.get())
        }
        "close" => {
            log.close()?;
            say("ok ");
            std::process::exit(0);
        }
        "exit" => {
            // A crash at a quiet moment: the log is neither closed nor dropped.
            say("ok ");
            std::process::exit(0);
        }
        _ => panic!("unknown command {line:?}"),
    }))
}

/// Runs `f` from the log's start, again if retirement moved the start meanwhile.
fn retained<T>(
    log: &Log,
    f: impl Fn(&Log) -> walship_engine::Result<T>,
) -> walship_engine::Result<T> {
    loop {
        match f(log) {
            Err(walship_engine::Error::NotRetained { .. }) => continue,
            r => return r,
        }
    }
}

/// `threads` appenders, `per` records each, every one committed at `Local`; replies
/// `seq:lsn:len` for each.
fn concurrent(
    log: &Log,
    threads: u64,
    per: u64,
    seq0: u64,
    max_len: usize,
) -> walship_engine::Result<String> {
    let results = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || -> walship_engine::Result<Vec<String>> {
                    let mut out = Vec::new();
                    for i in 0..per {
                        let seq = seq0 + t * per + i;
                        let len = (seq as usize * 7919) % max_len.max(1);
                        let lsn = log.append(&payload(seq, len))?;
                        log.commit(lsn, Durability::Local)
                            .wait_timeout(Duration::from_secs(30))?;
                        out.push(format!("{seq}:{}:{len}", lsn.get()));
                    }
                    Ok(out)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("appender thread"))
            .collect::<Vec<_>>()
    });
    let mut all = Vec::new();
    for r in results {
        all.extend(r?);
    }
    Ok(all.join(" "))
}

/// A descriptor of this process on an unlinked segment file of `dir` whose base the log
/// still uses.
fn unlinked_live_segment(dir: &Path, live: &BTreeSet<u64>) -> Option<String> {
    let prefix = format!("{}/", dir.display());
    std::fs::read_dir("/proc/self/fd")
        .ok()?
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|t| t.to_string_lossy().into_owned())
        .find(|t| {
            t.strip_prefix(&prefix)
                .and_then(|n| n.strip_suffix(".wal (deleted)"))
                .and_then(|hex| u64::from_str_radix(hex, 16).ok())
                .is_some_and(|base| live.contains(&base))
        })
}

// ---------------------------------------------------------------------------------
// The driver side: a worker process and the model.

/// A record as the worker reports it: `(lsn, len, crc)`.
type ReadRecord = (u64, usize, u32);

struct Worker {
    child: Child,
    stdin: ChildStdin,
    out: BufReader<ChildStdout>,
    stderr: PathBuf,
}

struct Ready {
    end: u64,
    epoch: u64,
    epoch_start: u64,
    /// Where the open cut a damaged log, if it did (`RecoveryMode::TruncateCorrupt`).
    repaired_at: u64,
    /// Valid batches of an unflushed tail the open cut.
    unflushed_cut: u64,
}

impl Worker {
    fn spawn(dir: &Path, cfg: Config, scratch: &Path) -> Result<(Worker, Ready), String> {
        let stderr = scratch.join("worker.stderr");
        let err_file = std::fs::File::create(&stderr).map_err(|e| e.to_string())?;
        let mut child = Command::new(std::env::current_exe().map_err(|e| e.to_string())?)
            .args(["--exact", "model_worker", "--nocapture", "--test-threads=1"])
            .env(WORKER_ENV, dir)
            .env(CONFIG_ENV, cfg.encode())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(err_file)
            .spawn()
            .map_err(|e| e.to_string())?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let out = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        let mut w = Worker {
            child,
            stdin,
            out,
            stderr,
        };
        let line = w.recv().ok_or_else(|| w.died("opening the log"))?;
        let v: Vec<&str> = line.split_whitespace().collect();
        if v.first() != Some(&"ready") {
            return Err(format!("the log does not open: {line}"));
        }
        let n = |i: usize| v[i].parse::<u64>().unwrap_or(0);
        let ready = Ready {
            end: n(2),
            epoch: n(3),
            epoch_start: n(4),
            repaired_at: n(5),
            unflushed_cut: n(6),
        };
        Ok((w, ready))
    }

    fn died(&mut self, what: &str) -> String {
        let _ = self.child.wait();
        let err = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        format!("the worker died while {what}: {err}")
    }

    fn send(&mut self, cmd: &str) -> Result<(), String> {
        writeln!(self.stdin, "{cmd}")
            .and_then(|()| self.stdin.flush())
            .map_err(|e| format!("sending {cmd:?}: {e}"))
    }

    /// The next protocol line, without its tag; `None` at end of output.
    fn recv(&mut self) -> Option<String> {
        let mut line = String::new();
        loop {
            line.clear();
            if self.out.read_line(&mut line).ok()? == 0 {
                return None;
            }
            if let Some(at) = line.find(TAG) {
                return Some(line[at + TAG.len()..].trim_end().to_string());
            }
        }
    }

    fn call(&mut self, cmd: &str) -> Result<String, String> {
        self.send(cmd)?;
        let line = self.recv().ok_or_else(|| self.died(cmd))?;
        match line.strip_prefix("ok") {
            Some(rest) => Ok(rest.trim().to_string()),
            None => Err(format!("{cmd}: {line}")),
        }
    }

    /// Reads every record: the log's start, and `(lsn, len, crc)` of each record.
    fn read(&mut self) -> Result<(u64, Vec<ReadRecord>), String> {
        self.send("read")?;
        let mut recs = Vec::new();
        loop {
            let line = self.recv().ok_or_else(|| self.died("reading"))?;
            if let Some(r) = line.strip_prefix("rec ") {
                let v: Vec<u64> = r.split_whitespace().map(|x| x.parse().unwrap()).collect();
                recs.push((v[0], v[1] as usize, v[2] as u32));
            } else if let Some(rest) = line.strip_prefix("ok") {
                let start = rest.split_whitespace().next().and_then(|x| x.parse().ok());
                return Ok((start.ok_or("read: no start")?, recs));
            } else {
                return Err(format!("read: {line}"));
            }
        }
    }

    /// Waits for a worker that is exiting by itself.
    fn finish(mut self) {
        drop(self.stdin);
        let _ = self.child.wait();
    }

    /// SIGKILL; returns the protocol lines the worker got out before dying.
    fn kill(mut self) -> Vec<String> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        drop(self.stdin);
        let mut lines = Vec::new();
        let mut line = String::new();
        while self.out.read_line(&mut line).unwrap_or(0) > 0 {
            if let Some(at) = line.find(TAG) {
                lines.push(line[at + TAG.len()..].trim_end().to_string());
            }
            line.clear();
        }
        lines
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rec {
    lsn: u64,
    seq: u64,
    len: usize,
    /// Acknowledged at `Local` or stronger: must survive any crash.
    durable: bool,
}

/// What an operation cut short by a kill may or may not have done.
#[derive(Debug, Clone, Default)]
struct Pending {
    /// Records it may have appended: `(seq, len if known)`.
    appends: Vec<(u64, Option<usize>)>,
    /// A truncation point it may have applied.
    truncate: Option<u64>,
}

#[derive(Debug, Default)]
struct Model {
    /// Every record the log holds, ascending (retired ones included: they stay
    /// readable unless retirement removed their segment).
    recs: Vec<Rec>,
    next_seq: u64,
    checkpoint: u64,
    floor: Option<u64>,
    /// The start observed last: retirement may move it up to the floor, no further.
    start: u64,
    /// How far retirement may have moved the start (see [`Model::max_start`]).
    allowed_start: u64,
    epoch: u64,
    epoch_start: u64,
}

impl Model {
    fn seq(&mut self, n: u64) -> u64 {
        let s = self.next_seq;
        self.next_seq += n;
        s
    }

    fn push(&mut self, lsn: u64, seq: u64, len: usize) -> Result<(), String> {
        if let Some(last) = self.recs.last() {
            if lsn <= last.lsn {
                return Err(format!(
                    "append returned LSN {lsn:#x}, not after the last record's {:#x}",
                    last.lsn
                ));
            }
        }
        self.recs.push(Rec {
            lsn,
            seq,
            len,
            durable: false,
        });
        Ok(())
    }

    fn acknowledge(&mut self, upto: u64) {
        for r in self.recs.iter_mut().filter(|r| r.lsn <= upto) {
            r.durable = true;
        }
    }

    /// The highest start retirement may have reached: no segment holding a byte at or
    /// after `min(checkpoint, floor)` is retired. Retirement runs in the background with
    /// the values it read when it started, so a lowered floor does not lower the bound.
    fn max_start(&self) -> u64 {
        self.start.max(self.allowed_start)
    }

    /// Records a new checkpoint or retention floor.
    fn retention_changed(&mut self) {
        let m = self.checkpoint.min(self.floor.unwrap_or(u64::MAX));
        let bound = m / CAP * CAP + SEGMENT_HEADER_LEN as u64;
        self.allowed_start = self.allowed_start.max(bound);
    }

    /// Checks `read` (the log's records after a reopen or operation) against the model
    /// and adopts it. `crashed`: the log may have lost what was not acknowledged, and
    /// `pending` is what an interrupted operation may have done.
    fn verify(
        &mut self,
        read: &[(u64, usize, u32)],
        start: u64,
        crashed: bool,
        pending: &Pending,
    ) -> Result<(), String> {
        if start > self.max_start() {
            return Err(format!(
                "start {start:#x} is past what checkpoint {:#x} and floor {:?} allow ({:#x})",
                self.checkpoint,
                self.floor,
                self.max_start()
            ));
        }
        let (retired, known): (Vec<Rec>, Vec<Rec>) = self.recs.iter().partition(|r| r.lsn <= start);
        let required = known
            .iter()
            .rposition(|r| r.durable && pending.truncate.is_none_or(|t| r.lsn <= t))
            .map_or(0, |i| i + 1);
        let mut adopted = retired;
        let mut extra: Vec<(u64, Option<usize>)> = pending.appends.clone();
        for (i, &(lsn, len, crc)) in read.iter().enumerate() {
            if let Some(k) = known.get(i) {
                if (k.lsn, k.len) != (lsn, len) || crc_of(k.seq, k.len) != crc {
                    return Err(format!(
                        "record {i}: found {len} bytes at {lsn:#x} (crc {crc:#x}), expected record {} of {} bytes at {:#x}",
                        k.seq, k.len, k.lsn
                    ));
                }
                adopted.push(*k);
                continue;
            }
            // Beyond what the model knows: only an interrupted operation's records.
            let pos = extra
                .iter()
                .position(|&(seq, l)| l.is_none_or(|l| l == len) && crc_of(seq, len) == crc);
            let Some(pos) = pos else {
                return Err(format!(
                    "unexpected record of {len} bytes at {lsn:#x} after the {} known ones",
                    known.len()
                ));
            };
            let (seq, _) = extra.remove(pos);
            adopted.push(Rec {
                lsn,
                seq,
                len,
                durable: false,
            });
        }
        if read.len() < required {
            let lost = &known[read.len()];
            return Err(format!(
                "acknowledged record {} at {:#x} lost: {} of {} known records survive{}",
                lost.seq,
                lost.lsn,
                read.len(),
                known.len(),
                if crashed { " the crash" } else { "" }
            ));
        }
        if !crashed && pending.appends.is_empty() && read.len() != known.len() {
            return Err(format!(
                "{} records read, {} appended (no crash)",
                read.len(),
                known.len()
            ));
        }
        self.recs = adopted;
        self.start = start;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------
// Operations.

#[derive(Debug, Clone)]
enum Op {
    Append(usize),
    /// A record leaving this many bytes before its segment's end (0: exactly full).
    Fill(u64),
    /// `append_batch`, after an optional [`Op::Fill`] (so it can start at a boundary).
    Batch(Option<u64>, Vec<usize>),
    Commit(u8),
    /// At the record this many percent into the log.
    Checkpoint(u8),
    Floor(Option<u8>),
    /// At one of the log's batch boundaries, picked by index.
    Truncate(u16),
    Epoch,
    Concurrent(u8, u8),
    Close,
    Exit,
    /// SIGKILL `delay` µs after sending the operation.
    Kill(u16, Box<Op>),
    /// Exit once the writer is idle, then tear the unflushed bytes as a power loss
    /// would, from this seed.
    PowerLoss(u64),
}

fn size() -> impl Strategy<Value = usize> {
    prop_oneof![4 => 0usize..64, 4 => 64usize..2_000, 2 => 2_000usize..20_000]
}

fn slack() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => Just(0u64),
        1 => Just(1u64),
        1 => Just(BATCH_HEADER_LEN as u64 - 1),
        1 => Just(BATCH_HEADER_LEN as u64),
        1 => Just(BATCH_HEADER_LEN as u64 + 1),
        1 => 0u64..200,
    ]
}

/// Operations that can be interrupted by a kill.
fn killable() -> impl Strategy<Value = Op> {
    prop_oneof![
        size().prop_map(Op::Append),
        slack().prop_map(Op::Fill),
        (
            proptest::option::of(slack()),
            prop::collection::vec(size(), 1..6)
        )
            .prop_map(|(f, s)| Op::Batch(f, s)),
        (0u8..5).prop_map(Op::Commit),
        any::<u16>().prop_map(Op::Truncate),
        (2u8..5, 1u8..12).prop_map(|(t, p)| Op::Concurrent(t, p)),
        (0u8..=100).prop_map(Op::Checkpoint),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        20 => size().prop_map(Op::Append),
        6 => slack().prop_map(Op::Fill),
        14 => (proptest::option::of(slack()), prop::collection::vec(size(), 1..6))
            .prop_map(|(f, s)| Op::Batch(f, s)),
        14 => (0u8..5).prop_map(Op::Commit),
        5 => (0u8..=100).prop_map(Op::Checkpoint),
        2 => proptest::option::of(0u8..=100).prop_map(Op::Floor),
        4 => any::<u16>().prop_map(Op::Truncate),
        2 => Just(Op::Epoch),
        4 => (2u8..5, 1u8..12).prop_map(|(t, p)| Op::Concurrent(t, p)),
        3 => Just(Op::Close),
        3 => Just(Op::Exit),
        4 => (0u16..3_000, killable()).prop_map(|(d, o)| Op::Kill(d, Box::new(o))),
        3 => any::<u64>().prop_map(Op::PowerLoss),
    ]
}

#[derive(Debug, Clone)]
struct Case {
    config: Config,
    ops: Vec<Op>,
}

fn case(io_uring: bool) -> impl Strategy<Value = Case> {
    (
        0usize..=2,
        prop_oneof![Just(1usize << 20), Just(4096usize), Just(300usize)],
        prop::collection::vec(op(), 1..48),
    )
        .prop_map(move |(recycle_pool, max_batch_bytes, ops)| Case {
            config: Config {
                io_uring,
                recycle_pool,
                max_batch_bytes,
            },
            ops,
        })
}

/// One case: a fresh log, the operations, then a final close, reopen and full check.
struct Run {
    cfg: Config,
    dir: tempfile::TempDir,
    model: Model,
    worker: Option<Worker>,
    ops_since_read: usize,
}

impl Run {
    fn worker(&mut self) -> &mut Worker {
        self.worker.as_mut().expect("a worker runs")
    }

    /// Starts a worker on the log and checks what it recovered.
    fn reopen(&mut self, crashed: bool, pending: &Pending) -> Result<(), String> {
        let scratch = self.dir.path().to_path_buf();
        let (mut w, ready) = Worker::spawn(&self.dir.path().join("log"), self.cfg, &scratch)?;
        let (start, read) = w.read()?;
        self.worker = Some(w);
        self.model.verify(&read, start, crashed, pending)?;
        // Checkpoint and retention floor are not persistent.
        self.model.checkpoint = 0;
        self.model.floor = None;
        self.model.allowed_start = 0;
        // A truncation to exactly the epoch's start empties the epoch, and a completed
        // one drops it from the history (`EpochHistory::truncate_from`); one cut short
        // between its data cut and its history store leaves it, empty.
        let dropped_by_truncation = pending.truncate == Some(self.model.epoch_start)
            && ready.end == self.model.epoch_start
            && ready.epoch_start < self.model.epoch_start;
        if ready.end >= self.model.epoch_start
            && ready.epoch < self.model.epoch
            && !dropped_by_truncation
        {
            return Err(format!(
                "epoch {} began durably at {:#x}, but the reopened log (end {:#x}) is in epoch {}",
                self.model.epoch, self.model.epoch_start, ready.end, ready.epoch
            ));
        }
        if ready.unflushed_cut > 0 {
            UNFLUSHED_CUTS.fetch_add(1, Ordering::Relaxed);
        }
        if ready.repaired_at != 0 {
            return Err(format!(
                "the open repaired the log at {:#x}",
                ready.repaired_at
            ));
        }
        self.model.epoch = ready.epoch;
        self.model.epoch_start = ready.epoch_start;
        self.ops_since_read = 0;
        self.check()
    }

    fn check(&mut self) -> Result<(), String> {
        let reply = self.worker().call("check")?;
        let v: Vec<u64> = reply
            .split_whitespace()
            .map(|x| x.parse().unwrap())
            .collect();
        let start = v[0];
        if start > self.model.max_start() {
            return Err(format!(
                "start {start:#x} is past what checkpoint {:#x} and floor {:?} allow",
                self.model.checkpoint, self.model.floor
            ));
        }
        self.model.start = start;
        Ok(())
    }

    fn full_read(&mut self) -> Result<(), String> {
        let (start, read) = self.worker().read()?;
        self.model
            .verify(&read, start, false, &Pending::default())?;
        self.ops_since_read = 0;
        Ok(())
    }

    /// The command for `op` (and what it may do if interrupted), or `None` for the
    /// operations handled by [`Run::step`] itself.
    fn command(&mut self, op: &Op) -> Result<Option<(String, Pending)>, String> {
        let appends = |v: Vec<(u64, Option<usize>)>| Pending {
            appends: v,
            truncate: None,
        };
        Ok(Some(match op {
            Op::Append(len) => {
                let s = self.model.seq(1);
                (format!("append {s} {len}"), appends(vec![(s, Some(*len))]))
            }
            Op::Fill(slack) => {
                let s = self.model.seq(1);
                (format!("fill {s} {slack}"), appends(vec![(s, None)]))
            }
            Op::Batch(fill, sizes) => {
                if let Some(slack) = fill {
                    let s = self.model.seq(1);
                    let reply = self.worker().call(&format!("fill {s} {slack}"))?;
                    let v: Vec<u64> = reply
                        .split_whitespace()
                        .map(|x| x.parse().unwrap())
                        .collect();
                    self.model.push(v[0], s, v[1] as usize)?;
                }
                let m = &mut self.model;
                let s = m.seq(sizes.len() as u64);
                let lens: Vec<String> = sizes.iter().map(usize::to_string).collect();
                (
                    format!("batch {s} {}", lens.join(" ")),
                    appends(
                        sizes
                            .iter()
                            .enumerate()
                            .map(|(i, &l)| (s + i as u64, Some(l)))
                            .collect(),
                    ),
                )
            }
            Op::Commit(lvl) => {
                let Some(last) = self.model.recs.last() else {
                    return Ok(None);
                };
                (format!("commit {lvl} {}", last.lsn), Pending::default())
            }
            Op::Checkpoint(pct) => {
                let lsn = pick(&self.model.recs, *pct);
                (format!("checkpoint {lsn}"), Pending::default())
            }
            Op::Truncate(i) => {
                let reply = self.worker().call("boundaries")?;
                let b: Vec<u64> = reply
                    .split_whitespace()
                    .map(|x| x.parse().unwrap())
                    .collect();
                let t = b[*i as usize % b.len()];
                (
                    format!("truncate {t}"),
                    Pending {
                        appends: Vec::new(),
                        truncate: Some(t),
                    },
                )
            }
            Op::Concurrent(threads, per) => {
                let n = u64::from(*threads) * u64::from(*per);
                let s = self.model.seq(n);
                (
                    format!("concurrent {threads} {per} {s} 3000"),
                    appends((s..s + n).map(|q| (q, None)).collect()),
                )
            }
            _ => return Ok(None),
        }))
    }

    /// Applies the reply of `op`'s command to the model.
    fn apply(&mut self, op: &Op, cmd: &str, reply: &str) -> Result<(), String> {
        let nums = |s: &str| -> Vec<u64> {
            s.split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect()
        };
        let seq0 = || {
            cmd.split_whitespace()
                .nth(1)
                .and_then(|x| x.parse::<u64>().ok())
                .unwrap_or(0)
        };
        match op {
            Op::Append(len) => self.model.push(nums(reply)[0], seq0(), *len)?,
            Op::Fill(_) => {
                let v = nums(reply);
                self.model.push(v[0], seq0(), v[1] as usize)?;
            }
            Op::Batch(_, sizes) => {
                let v = nums(reply);
                if v.len() != sizes.len() {
                    return Err(format!(
                        "append_batch returned {} LSNs for {}",
                        v.len(),
                        sizes.len()
                    ));
                }
                for (i, (&lsn, &len)) in v.iter().zip(sizes).enumerate() {
                    self.model.push(lsn, seq0() + i as u64, len)?;
                }
            }
            Op::Commit(lvl) => {
                let lsn = nums(cmd)[1];
                if level(*lvl) != Durability::Async {
                    self.model.acknowledge(lsn);
                }
            }
            Op::Checkpoint(_) => {
                self.model.checkpoint = self.model.checkpoint.max(nums(cmd)[0]);
                self.model.retention_changed();
            }
            Op::Truncate(_) => {
                if reply.trim() == "skipped" {
                    return Ok(());
                }
                let t = nums(cmd)[0];
                self.model.recs.retain(|r| r.lsn <= t);
                let v = nums(reply);
                self.model.epoch = v[0];
                self.model.epoch_start = v[1];
                self.ops_since_read = usize::MAX / 2;
            }
            Op::Concurrent(..) => {
                let mut got: Vec<(u64, u64, usize)> = reply
                    .split_whitespace()
                    .map(|t| {
                        let v: Vec<u64> = t.split(':').map(|x| x.parse().unwrap()).collect();
                        (v[1], v[0], v[2] as usize)
                    })
                    .collect();
                got.sort_unstable();
                for (lsn, seq, len) in got {
                    self.model.push(lsn, seq, len)?;
                    self.model.acknowledge(lsn);
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn step(&mut self, op: &Op) -> Result<(), String> {
        match op {
            Op::Close => {
                self.worker().call("close")?;
                self.worker.take().expect("worker").finish();
                self.reopen(false, &Pending::default())?;
            }
            Op::Exit => {
                self.worker().call("exit")?;
                self.worker.take().expect("worker").finish();
                self.reopen(true, &Pending::default())?;
            }
            Op::PowerLoss(seed) => {
                POWER_LOSSES.fetch_add(1, Ordering::Relaxed);
                let reply = self.worker().call("quiesce")?;
                let v: Vec<u64> = reply
                    .split_whitespace()
                    .map(|x| x.parse().unwrap())
                    .collect();
                self.worker().call("exit")?;
                self.worker.take().expect("worker").finish();
                tear_unflushed(&self.dir.path().join("log"), v[0], v[1], *seed)?;
                self.reopen(true, &Pending::default())?;
            }
            Op::Epoch => {
                let reply = self.worker().call("epoch")?;
                let v: Vec<u64> = reply
                    .split_whitespace()
                    .map(|x| x.parse().unwrap())
                    .collect();
                self.model.epoch = v[0];
                self.model.epoch_start = v[1];
            }
            Op::Floor(pct) => {
                let floor = pct.map(|p| pick(&self.model.recs, p));
                let cmd = floor.map_or("floor".to_string(), |f| format!("floor {f}"));
                self.worker().call(&cmd)?;
                self.model.floor = floor;
                self.model.retention_changed();
            }
            Op::Kill(delay, inner) => {
                let Some((cmd, pending)) = self.command(inner)? else {
                    return Ok(());
                };
                self.worker().send(&cmd)?;
                std::thread::sleep(Duration::from_micros(u64::from(*delay)));
                let lines = self.worker.take().expect("worker").kill();
                let pending = match lines.iter().find(|l| l.starts_with("ok")) {
                    Some(reply) => {
                        self.apply(inner, &cmd, reply.trim_start_matches("ok"))?;
                        Pending::default()
                    }
                    None => {
                        if matches!(**inner, Op::Checkpoint(_)) {
                            // It may have been set, and retirement may have run.
                            self.apply(inner, &cmd, "")?;
                        }
                        pending
                    }
                };
                self.reopen(true, &pending)?;
            }
            _ => {
                let Some((cmd, _)) = self.command(op)? else {
                    return Ok(());
                };
                let reply = self.worker().call(&cmd)?;
                self.apply(op, &cmd, &reply)?;
            }
        }
        self.check()?;
        self.ops_since_read += 1;
        if self.ops_since_read >= 8 {
            self.full_read()?;
        }
        Ok(())
    }
}

/// The LSN of the record `pct` percent into `recs` (0 when there are none).
fn pick(recs: &[Rec], pct: u8) -> u64 {
    if recs.is_empty() {
        return 0;
    }
    recs[(recs.len() - 1) * usize::from(pct.min(100)) / 100].lsn
}

/// What a power loss does to bytes written but never flushed: each 4 KiB page of
/// `[flushed, end)` (in every segment file it spans) independently keeps its new bytes,
/// loses them (zeros: fresh segments are zero-filled), keeps only its first sectors, or
/// holds garbage. Bytes before `flushed` are never touched: they were on disk.
fn tear_unflushed(dir: &Path, flushed: u64, end: u64, seed: u64) -> Result<(), String> {
    const PAGE: u64 = 4096;
    const SECTOR: u64 = 512;
    let mut rng = common::Rng::new(seed);
    let mut pos = flushed;
    while pos < end {
        let base = pos / CAP * CAP;
        if pos - base < SEGMENT_HEADER_LEN as u64 {
            // Segment headers were written and fsynced when the segment was made.
            pos = base + SEGMENT_HEADER_LEN as u64;
            continue;
        }
        let page_end = ((pos / PAGE) + 1) * PAGE;
        let to = page_end.min(end).min(base + CAP);
        let path = dir.join(format!("{base:016x}.wal"));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| format!("power loss: open {}: {e}", path.display()))?;
        let (off, len) = (pos - base, (to - pos) as usize);
        let bytes: Option<Vec<u8>> = match rng.below(4) {
            0 => None,
            1 => Some(vec![0u8; len]),
            2 => {
                // The first k sectors of the page reached the disk.
                let keep_to = (pos / PAGE) * PAGE + SECTOR * rng.below(PAGE / SECTOR);
                let keep = keep_to.saturating_sub(pos).min(len as u64) as usize;
                file.write_all_at(&vec![0u8; len - keep], off + keep as u64)
                    .map_err(|e| e.to_string())?;
                None
            }
            _ => Some(rng.bytes(len)),
        };
        if let Some(b) = bytes {
            file.write_all_at(&b, off).map_err(|e| e.to_string())?;
        }
        pos = to.max(pos + 1);
    }
    Ok(())
}

fn run_case(case: &Case) -> Result<(), String> {
    let mut run = Run {
        cfg: case.config,
        dir: tempfile::tempdir().map_err(|e| e.to_string())?,
        model: Model {
            // A new log starts at the first batch of segment 0.
            allowed_start: SEGMENT_HEADER_LEN as u64,
            ..Model::default()
        },
        worker: None,
        ops_since_read: 0,
    };
    let result = (|| {
        run.reopen(false, &Pending::default())?;
        for (i, op) in case.ops.iter().enumerate() {
            run.step(op).map_err(|e| format!("op {i} ({op:?}): {e}"))?;
        }
        run.step(&Op::Close)
            .map_err(|e| format!("final close and reopen: {e}"))?;
        run.full_read()
    })();
    if let Some(w) = run.worker.take() {
        w.kill();
    }
    result
}

fn cases() -> u32 {
    std::env::var("WALSHIP_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(96)
}

/// Cases run so far (shrinking runs included), and the first that failed.
static CASE: AtomicUsize = AtomicUsize::new(0);
static FIRST_FAILURE: AtomicUsize = AtomicUsize::new(usize::MAX);
/// Power losses, and opens that cut an unflushed tail left out of order.
static POWER_LOSSES: AtomicUsize = AtomicUsize::new(0);
static UNFLUSHED_CUTS: AtomicUsize = AtomicUsize::new(0);

fn check_case(case: Case) -> Result<(), TestCaseError> {
    let n = CASE.fetch_add(1, Ordering::Relaxed);
    if std::env::var_os("WALSHIP_MODEL_VERBOSE").is_some() {
        eprintln!("case {n}: {:?} {} ops", case.config, case.ops.len());
    }
    run_case(&case).map_err(|e| {
        let first = FIRST_FAILURE.fetch_min(n, Ordering::Relaxed).min(n);
        TestCaseError::fail(format!(
            "case {n} (the first failure was case {first}; later ones shrink it): {e}"
        ))
    })
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        max_shrink_iters: 400,
        // Failing cases are kept in proptest-regressions/model.txt and replayed first.
        source_file: Some(file!()),
        ..ProptestConfig::default()
    }
}

fn report_coverage() {
    eprintln!(
        "model: {} cases, {} power losses, {} opens cut an unflushed tail",
        CASE.load(Ordering::Relaxed),
        POWER_LOSSES.load(Ordering::Relaxed),
        UNFLUSHED_CUTS.load(Ordering::Relaxed)
    );
}

#[test]
fn engine_matches_the_model() {
    if std::env::var_os(WORKER_ENV).is_some() {
        return;
    }
    let mut runner = proptest::test_runner::TestRunner::new(config());
    let result = runner.run(&case(false), check_case);
    report_coverage();
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// The same on io_uring, where this machine has it.
#[test]
fn engine_matches_the_model_on_io_uring() {
    if std::env::var_os(WORKER_ENV).is_some() {
        return;
    }
    if !common::backends().contains(&BackendKind::IoUring) {
        eprintln!("NOTE: io_uring unavailable; the portable run covers the model");
        return;
    }
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: cases().div_ceil(2),
        ..config()
    });
    let result = runner.run(&case(true), check_case);
    report_coverage();
    if let Err(e) = result {
        panic!("{e}");
    }
}
