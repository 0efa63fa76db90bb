//! The engine on a simulated disk (issue 12, part 2): seeded runs of appends, `Local`
//! commits, checkpoints (so segments retire and recycle), truncations, clean closes,
//! process crashes and power losses, over [`SimDisk`], which keeps unsynced writes in a
//! page cache, loses or keeps each unsynced 512-byte sector at a power loss, and keeps a
//! created, renamed or removed name only once its directory was fsynced. So unlike the
//! real-disk tests it sees a missing or misordered fsync, of a file or of a directory.
//!
//! Checked at every reopen:
//! - the log is a prefix of what was appended and truncated, every record with the bytes
//!   it was appended with;
//! - it holds every record acknowledged at `Local` (or made durable by a clean close,
//!   a truncation or a recovery) that no checkpoint retired, and nothing a durable
//!   truncation removed;
//! - a clean close loses nothing at all;
//! - the files are what the log believes ([`Log::check_files`]).
//!
//! Every seed runs twice. Stepped by the test ([`Drive::Manual`]): one thread, one order
//! of events, so a failing seed replays exactly. Then on the log's own threads (the
//! writer, the flusher, the preparer), which race the steps: before every fault the test
//! lets them go idle, so the seed replays the same steps, though thread timing may
//! differ (a race between a checkpoint's retirement and a truncation was found this way,
//! and is pinned down by a unit test in `src/truncate.rs`). The whole run from one seed
//! is printed when it fails. `WALSHIP_SIM_SEEDS` sets the number of seeds
//! (default 200), `WALSHIP_SIM_SEED` the first; `WALSHIP_SIM_VERBOSE=1` prints each step.
//! With the `mutations` feature and `WALSHIP_MUTATION` set, the known-bad change it names
//! is in force (see `src/mutation.rs` and sim/README.md).

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{exact_payload as payload, Rng};
use walship_engine::storage::{SimDisk, Storage};
use walship_engine::{BackendKind, Commit, Drive, Durability, Log, Lsn, Options};

const CAP: u64 = 64 * 1024;
const DIR: &str = "/data/node/log";

#[derive(Debug, Clone, Copy)]
struct Rec {
    /// End LSN (the commit token).
    lsn: u64,
    seq: u64,
    len: usize,
    /// Must survive: acknowledged at `Local`, or made durable by a close, a truncation
    /// or a recovery.
    durable: bool,
}

fn options(fs: Arc<dyn Storage>, recycle_pool: usize, drive: Drive) -> Options {
    Options {
        drive,
        // On the log's threads, little room: appenders wait for the writer when the disk
        // is slow (the seal step). Stepped, an append never waits (it would fail).
        max_pending_bytes: if drive == Drive::Threads {
            256 << 10
        } else {
            Options::default().max_pending_bytes
        },
        segment_capacity: CAP,
        backend: BackendKind::Auto,
        recycle_pool,
        // Flushes happen when a commit asks, never on a timer: what is unsynced at a
        // fault is what the steps left unsynced.
        async_flush_interval: Duration::from_secs(3600),
        async_flush_after_bytes: u64::MAX / 2,
        storage: fs,
        ..Options::default()
    }
}

struct Run {
    rng: Rng,
    disk: SimDisk,
    log: Option<Log>,
    recs: Vec<Rec>,
    seq: u64,
    recycle_pool: usize,
    drive: Drive,
    trace: Vec<String>,
    faults: u64,
}

impl Run {
    fn say(&mut self, s: String) {
        if std::env::var_os("WALSHIP_SIM_VERBOSE").is_some() {
            eprintln!("{s}");
        }
        self.trace.push(s);
    }

    fn log(&self) -> &Log {
        self.log.as_ref().expect("the log is open between steps")
    }

    fn open(&mut self) -> Result<(), String> {
        let fs: Arc<dyn Storage> = self.disk.boot();
        let (log, report) = Log::open_with_report(DIR, options(fs, self.recycle_pool, self.drive))
            .map_err(|e| format!("open: {e}"))?;
        self.say(format!(
            "  opened: start {} end {} unflushed cut {:?}",
            log.start_lsn(),
            log.watermarks().end,
            report.unflushed_cut.map(|c| c.at)
        ));
        self.log = Some(log);
        self.verify()
    }

    /// The writer and the preparer idle, so a fault finds the disk in a state the steps
    /// alone decided.
    fn settle(&self) -> Result<(), String> {
        let log = self.log();
        if self.drive == Drive::Manual {
            while log.step().map_err(|e| format!("step: {e}"))? {}
        }
        // Appends nobody committed are written when somebody waits for them.
        let end = log.watermarks().end;
        log.written(end)
            .wait_timeout(Duration::from_secs(30))
            .map_err(|e| format!("the writer did not go idle: {e}: {:?}", log.watermarks()))?;
        log.check_files()
            .map(drop)
            .map_err(|e| format!("check_files: {e}"))
    }

    fn verify(&mut self) -> Result<(), String> {
        let log = self.log();
        let start = log.start_lsn().get();
        let mut rr = log
            .record_reader(log.start_lsn())
            .map_err(|e| format!("record reader: {e}"))?;
        let mut got = Vec::new();
        while let Some(r) = rr.try_next().map_err(|e| format!("read: {e}"))? {
            got.push(r);
        }
        let expect: Vec<Rec> = self
            .recs
            .iter()
            .copied()
            .filter(|r| r.lsn > start)
            .collect();
        if got.len() > expect.len() {
            return Err(format!(
                "the log holds {} records after {start}, only {} were appended and kept (a truncated or never-appended record came back: LSN {})",
                got.len(),
                expect.len(),
                got[expect.len()].lsn
            ));
        }
        for (i, r) in got.iter().enumerate() {
            let e = expect[i];
            if r.lsn.get() != e.lsn
                || r.data.len() != e.len
                || r.data[..] != payload(e.seq, e.len)[..]
            {
                return Err(format!(
                    "record {i} after {start}: got LSN {} ({} bytes), expected LSN {} ({} bytes, seq {}){}",
                    r.lsn,
                    r.data.len(),
                    e.lsn,
                    e.len,
                    e.seq,
                    if r.lsn.get() == e.lsn { ": different bytes" } else { "" }
                ));
            }
        }
        if let Some(lost) = expect[got.len()..].iter().find(|r| r.durable) {
            return Err(format!(
                "lost a durable record: LSN {} (seq {}, {} bytes); the log ends at {} after {} records",
                lost.lsn,
                lost.seq,
                lost.len,
                got.last().map_or(start, |r| r.lsn.get()),
                got.len()
            ));
        }
        // What was read is now the log, flushed by recovery: it must survive from here.
        let end = log.watermarks().flushed.get();
        let kept: std::collections::HashSet<u64> = got.iter().map(|g| g.lsn.get()).collect();
        self.recs
            .retain(|r| r.lsn <= start || kept.contains(&r.lsn));
        for r in &mut self.recs {
            if r.lsn <= end {
                r.durable = true;
            }
        }
        Ok(())
    }

    fn size(&mut self) -> usize {
        match self.rng.below(10) {
            0 => 12_000 + self.rng.below(20_000) as usize,
            1..=3 => 1 + self.rng.below(8) as usize,
            _ => 16 + self.rng.below(3000) as usize,
        }
    }

    /// `n` records, one `append` each or (`batch`) in one `append_batch`.
    fn append(&mut self, n: u64, commit: bool, batch: bool) -> Result<(), String> {
        let recs: Vec<(u64, usize)> = (0..n)
            .map(|_| {
                self.seq += 1;
                (self.seq, self.size())
            })
            .collect();
        let lsns = if batch {
            let bodies: Vec<Vec<u8>> = recs.iter().map(|&(q, l)| payload(q, l)).collect();
            self.log()
                .append_batch(&bodies)
                .map_err(|e| format!("append_batch: {e}"))?
        } else {
            let mut lsns = Vec::new();
            for &(q, l) in &recs {
                lsns.push(
                    self.log()
                        .append(&payload(q, l))
                        .map_err(|e| format!("append: {e}"))?,
                );
            }
            lsns
        };
        let mut last = 0;
        for (&(seq, len), lsn) in recs.iter().zip(lsns) {
            self.recs.push(Rec {
                lsn: lsn.get(),
                seq,
                len,
                durable: false,
            });
            last = lsn.get();
        }
        if commit && last > 0 {
            self.wait(self.log().commit(Lsn::new(last), Durability::Local))
                .map_err(|e| format!("commit {last}: {e}"))?;
            for r in &mut self.recs {
                if r.lsn <= last {
                    r.durable = true;
                }
            }
        }
        self.say(format!(
            "{} {n} {}-> end {}",
            if batch { "append_batch" } else { "append" },
            if commit { "commit local " } else { "" },
            last
        ));
        Ok(())
    }

    /// Waits for a commit: blocking on a threaded log, stepping a manual one.
    fn wait(&self, mut commit: Commit) -> Result<(), String> {
        if self.drive == Drive::Threads {
            return commit
                .wait_timeout(Duration::from_secs(30))
                .map_err(|e| e.to_string());
        }
        loop {
            if let Some(r) = commit.poll_now() {
                return r.map_err(|e| e.to_string());
            }
            if !self.log().step().map_err(|e| format!("step: {e}"))? {
                if let Some(r) = commit.poll_now() {
                    return r.map_err(|e| e.to_string());
                }
                return Err("the log has nothing left to do and the commit still waits".into());
            }
        }
    }

    /// The writer cannot keep up (slow writes), an appender thread waits for room, and
    /// the log is sealed meanwhile: nothing may be appended after the seal returned
    /// (the seal-bypass mutation lets the waiting appender through).
    fn seal_while_an_appender_waits(&mut self) -> Result<(), String> {
        self.settle()?;
        let log = self.log.take().ok_or("open")?;
        let base = self.seq;
        let waits = log.stats().back_pressure_waits;
        self.disk.slow_writes(Duration::from_millis(1));
        let outcome = std::thread::scope(|scope| {
            let appender = scope.spawn(|| {
                let mut done = Vec::new();
                for i in 1..=32u64 {
                    match log.append(&payload(base + i, 12_000)) {
                        Ok(lsn) => done.push((base + i, lsn.get())),
                        Err(e) => return (done, Some(e)),
                    }
                }
                (done, None)
            });
            let deadline = Instant::now() + Duration::from_secs(10);
            while log.stats().back_pressure_waits == waits && !appender.is_finished() {
                if Instant::now() > deadline {
                    break;
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            log.seal("a seal while an appender waits");
            let sealed_at = log.end_lsn();
            self.disk.slow_writes(Duration::ZERO);
            let (done, err) = appender.join().unwrap_or((Vec::new(), None));
            (sealed_at, done, err)
        });
        let (sealed_at, done, err) = outcome;
        let end = log.end_lsn();
        log.unseal();
        self.log = Some(log);
        for &(seq, lsn) in &done {
            self.recs.push(Rec {
                lsn,
                seq,
                len: 12_000,
                durable: false,
            });
        }
        self.seq = base + done.len() as u64;
        self.say(format!(
            "seal while an appender waits: {} appended before the seal at {sealed_at}, then {}",
            done.len(),
            err.as_ref()
                .map_or("none refused".to_string(), |e| e.to_string())
        ));
        if end != sealed_at {
            return Err(format!(
                "the log grew from {sealed_at} to {end} after the seal returned (an appender that waited for room appended)"
            ));
        }
        Ok(())
    }

    fn step(&mut self) -> Result<(), String> {
        match self.rng.below(20) {
            0..=7 => {
                let n = 1 + self.rng.below(6);
                let batch = self.rng.below(3) == 0;
                self.append(n, true, batch)
            }
            8..=10 => {
                let n = 1 + self.rng.below(4);
                self.append(n, false, false)
            }
            11 => {
                let durable: Vec<u64> = self
                    .recs
                    .iter()
                    .filter(|r| r.durable)
                    .map(|r| r.lsn)
                    .collect();
                if let Some(&cp) =
                    durable.get(durable.len().saturating_sub(1 + self.rng.below(3) as usize))
                {
                    self.log().set_checkpoint(Lsn::new(cp));
                    self.say(format!("checkpoint {cp}"));
                }
                Ok(())
            }
            12 => {
                self.settle()?;
                let pick = self.rng.below(4) as usize;
                // A checkpoint's retirement may move the start meanwhile (between reading
                // the start and opening the reader, or while reading): then again.
                let t = loop {
                    let log = self.log();
                    let mut reader = match log.reader(log.start_lsn()) {
                        Err(walship_engine::Error::NotRetained { .. }) => continue,
                        r => r.map_err(|e| format!("reader: {e}"))?,
                    };
                    let mut ends = Vec::new();
                    let read = loop {
                        match reader.try_next() {
                            Ok(Some(b)) => ends.push(b.end().get()),
                            Ok(None) => break Ok(()),
                            Err(e) => break Err(e),
                        }
                    };
                    drop(reader);
                    match read {
                        Err(walship_engine::Error::NotRetained { .. }) => continue,
                        Err(e) => return Err(format!("read: {e}")),
                        Ok(()) if ends.is_empty() => return Ok(()),
                        Ok(()) => {}
                    }
                    let t = ends[ends.len() - 1 - pick.min(ends.len() - 1)];
                    match log.truncate_suffix(Lsn::new(t)) {
                        Err(walship_engine::Error::NotRetained { .. }) => continue,
                        r => break r.map(|()| t).map_err(|e| format!("truncate {t}: {e}"))?,
                    }
                };
                self.recs.retain(|r| r.lsn <= t);
                // Durable once it returned: what it kept is flushed, what it cut is gone.
                for r in &mut self.recs {
                    r.durable = true;
                }
                self.say(format!("truncate {t}"));
                Ok(())
            }
            13 => {
                let log = self.log.take().expect("open");
                log.close().map_err(|e| format!("close: {e}"))?;
                drop(log);
                for r in &mut self.recs {
                    r.durable = true;
                }
                self.say("close".into());
                self.open()
            }
            14..=16 => {
                self.settle()?;
                self.disk.crash();
                drop(self.log.take());
                self.faults += 1;
                self.say("crash".into());
                self.open()
            }
            19 if self.drive == Drive::Threads => self.seal_while_an_appender_waits(),
            _ => {
                self.settle()?;
                let r = self.disk.power_loss();
                drop(self.log.take());
                self.faults += 1;
                self.say(format!(
                    "power loss: {} unsynced sectors, {} kept, {} names undone",
                    r.unsynced_sectors, r.kept_sectors, r.undone_names
                ));
                self.open()
            }
        }
    }
}

fn run_seed(seed: u64, steps: usize, drive: Drive) -> Result<u64, String> {
    let mut rng = Rng::new(seed);
    let recycle_pool = rng.below(3) as usize;
    let mut run = Run {
        disk: SimDisk::new(rng.next_u64()),
        rng,
        log: None,
        recs: Vec::new(),
        seq: 0,
        recycle_pool,
        drive,
        trace: vec![format!(
            "seed {seed}, {drive:?}: recycle pool {recycle_pool}"
        )],
        faults: 0,
    };
    let result = (|| {
        run.open()?;
        for _ in 0..steps {
            run.step()?;
        }
        // Always end with a power loss: whatever the last steps left must hold.
        run.settle()?;
        run.disk.power_loss();
        drop(run.log.take());
        run.say("final power loss".into());
        run.open()
    })();
    match result {
        Ok(()) => Ok(run.faults + 1),
        Err(e) => {
            drop(run.log.take());
            Err(format!(
                "seed {seed} failed ({drive:?}): {e}\n  replay: WALSHIP_SIM_SEED={seed} WALSHIP_SIM_SEEDS=1 WALSHIP_SIM_VERBOSE=1 cargo test -p walship-engine --test sim_power\n  ({})\n  steps:\n    {}",
                if drive == Drive::Manual {
                    "driven by the test on one thread: the replay is exact"
                } else {
                    "the log's own threads: the replay takes the same steps, but thread timing may differ"
                },
                run.trace.join("\n    ")
            ))
        }
    }
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn acknowledged_commits_survive_crashes_and_power_losses_on_the_simulated_disk() {
    let first = env("WALSHIP_SIM_SEED", 1);
    let seeds = env("WALSHIP_SIM_SEEDS", 200);
    let started = Instant::now();
    let mut faults = 0;
    for seed in first..first + seeds {
        // Each seed twice: stepped by the test (one order of events, replayed exactly)
        // and on the log's threads (the writer, flusher and preparer race the steps).
        for drive in [Drive::Manual, Drive::Threads] {
            match run_seed(seed, 40, drive) {
                Ok(f) => faults += f,
                Err(e) => panic!("{e}"),
            }
        }
    }
    eprintln!(
        "sim_power: seeds {first}..{} ({seeds}), {faults} crashes and power losses, {:.1} s",
        first + seeds,
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn a_new_log_directory_survives_a_power_loss() {
    let disk = SimDisk::new(1);
    let log = Log::open(DIR, options(disk.boot(), 1, Drive::Threads)).unwrap();
    let lsn = log.append(b"first").unwrap();
    log.commit(lsn, Durability::Local)
        .wait_timeout(Duration::from_secs(10))
        .unwrap();
    disk.power_loss();
    drop(log);
    let fs = disk.boot();
    assert!(
        fs.stat(Path::new(DIR)).is_ok(),
        "the directories the open created are durable in their parents"
    );
    let log = Log::open(DIR, options(fs, 1, Drive::Threads)).unwrap();
    let r = log
        .record_reader(log.start_lsn())
        .unwrap()
        .try_next()
        .unwrap()
        .expect("the acknowledged record");
    assert_eq!(&r.data[..], b"first");
}

/// Committer-driven group commit under a power loss (issue 13): 16 threads append and
/// commit `Local` concurrently on a simulated disk whose flushes are slow, so groups form
/// and records arrive while a leader flushes; the power goes at a random moment. Every
/// commit acknowledged before it must be in the log afterwards.
#[test]
fn concurrent_committers_lose_nothing_acknowledged_to_a_power_loss() {
    let rounds = env("WALSHIP_SIM_SEEDS", 200) / 10;
    for seed in 1..=rounds.max(1) {
        let disk = SimDisk::new(seed);
        disk.slow_syncs("", Duration::from_micros(300));
        let log = Arc::new(Log::open(DIR, options(disk.boot(), 1, Drive::Threads)).unwrap());
        let acked = Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let threads: Vec<_> = (0..16u64)
            .map(|t| {
                let (log, acked, stop) = (Arc::clone(&log), Arc::clone(&acked), Arc::clone(&stop));
                std::thread::spawn(move || {
                    let mut i = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                        let rec = format!("{t}:{i}:{}", "x".repeat((i % 300) as usize));
                        let Ok(lsn) = log.append(rec.as_bytes()) else {
                            return;
                        };
                        if log
                            .commit(lsn, Durability::Local)
                            .wait_timeout(Duration::from_secs(10))
                            .is_err()
                        {
                            return;
                        }
                        // Recorded only once acknowledged, before the fault can matter.
                        acked.lock().unwrap().push(rec);
                        i += 1;
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(20 + seed % 40));
        // The fault first: only what was acknowledged by now counts.
        let snapshot: Vec<String> = acked.lock().unwrap().clone();
        disk.power_loss();
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        for t in threads {
            let _ = t.join();
        }
        drop(log);
        let log = Log::open(DIR, options(disk.boot(), 1, Drive::Threads)).unwrap();
        let mut found = std::collections::HashSet::new();
        let mut r = log.record_reader(log.start_lsn()).unwrap();
        while let Some(rec) = r.try_next().unwrap() {
            found.insert(String::from_utf8(rec.data.to_vec()).unwrap());
        }
        assert!(
            snapshot.len() > 16,
            "seed {seed}: only {} commits acknowledged",
            snapshot.len()
        );
        for rec in &snapshot {
            assert!(
                found.contains(rec),
                "seed {seed}: acknowledged record {rec:?} lost to the power loss ({} acknowledged, {} survive)",
                snapshot.len(),
                found.len()
            );
        }
        log.close().unwrap();
    }
}
