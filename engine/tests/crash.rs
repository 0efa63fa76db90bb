//! Crash safety under SIGKILL: no acknowledged commit is ever lost.
//!
//! The test re-runs its own binary as a child process that appends records with `Local`
//! durability and prints every acknowledged `(sequence, LSN)`; the parent kills it with
//! SIGKILL at random moments, at least 50 times over the same directory, and after each
//! kill reopens the log (checking every batch) and verifies that every acknowledged
//! record is present byte for byte, in order, with nothing else in between.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{backends, payload, verified, Rng};
use walship_engine::{BackendKind, Durability, Log, Lsn};

const CHILD_ENV: &str = "WALSHIP_CRASH_CHILD_DIR";
const BACKEND_ENV: &str = "WALSHIP_CRASH_CHILD_BACKEND";
const MAX_LEN: usize = 3000;

/// The child: continues the sequence from what the log holds and appends until killed.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let b = if std::env::var(BACKEND_ENV).as_deref() == Ok("io_uring") {
        BackendKind::IoUring
    } else {
        BackendKind::Portable
    };
    let log = std::sync::Arc::new(Log::open(&dir, verified(b)).expect("child opens the log"));
    let mut next = 0u64;
    let mut r = log.record_reader(log.start_lsn()).expect("reader");
    while r.try_next().expect("read").is_some() {
        next += 1;
    }
    println!("START {next}");
    // Several appenders so group commit and pipelining are exercised under the kill;
    // the sequence is assigned under a lock so records stay in sequence order.
    let seq = std::sync::Arc::new(std::sync::Mutex::new(next));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let log = std::sync::Arc::clone(&log);
            let seq = std::sync::Arc::clone(&seq);
            std::thread::spawn(move || loop {
                let (s, lsn) = {
                    let mut g = seq.lock().expect("lock");
                    let s = *g;
                    let lsn = log.append(&payload(s, MAX_LEN)).expect("append");
                    *g += 1;
                    (s, lsn)
                };
                log.commit(lsn, Durability::Local).wait().expect("commit");
                println!("ACK {s} {}", lsn.get());
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}

fn verify(dir: &Path, b: BackendKind, acked: &[(u64, Lsn)]) -> u64 {
    let log = Log::open(dir, verified(b)).expect("reopen after SIGKILL: the log must be valid");
    if std::env::var_os("WALSHIP_CRASH_VERBOSE").is_some() {
        eprintln!(
            "reopened: {:?}, {} segments",
            log.watermarks(),
            log.segment_count()
        );
    }
    let mut r = log.record_reader(log.start_lsn()).unwrap();
    let mut found = Vec::new();
    while let Some(rec) = r.try_next().unwrap() {
        let seq = found.len() as u64;
        assert_eq!(
            &rec.data[..],
            &payload(seq, MAX_LEN)[..],
            "record {seq} intact, in order"
        );
        found.push(rec.lsn);
    }
    for (seq, lsn) in acked {
        let got = found.get(*seq as usize);
        assert_eq!(
            got,
            Some(lsn),
            "acknowledged record {seq} at {lsn} lost ({} records survive)",
            found.len()
        );
    }
    log.close().unwrap();
    found.len() as u64
}

#[test]
fn sigkill_never_loses_an_acknowledged_commit() {
    let exe = std::env::current_exe().unwrap();
    let seed = std::env::var("WALSHIP_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    // CI runs 50 kill rounds per backend; WALSHIP_CRASH_KILLS=1000 is the long run.
    let rounds: u32 = std::env::var("WALSHIP_CRASH_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    eprintln!("crash test seed {seed} (set WALSHIP_SEED to replay the kill timings), {rounds} kills per backend");
    let mut rng = Rng::new(seed);
    for b in backends()
        .into_iter()
        .filter(|b| std::env::var("WALSHIP_CRASH_ONLY").map_or(true, |o| format!("{b:?}") == o))
    {
        let dir = tempfile::tempdir().unwrap();
        let mut acked: Vec<(u64, Lsn)> = Vec::new();
        let mut kills = 0;
        let mut total = 0;
        let started = Instant::now();
        while kills < rounds {
            let mut child = Command::new(&exe)
                .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
                .env(CHILD_ENV, dir.path())
                .env(
                    BACKEND_ENV,
                    if b == BackendKind::IoUring {
                        "io_uring"
                    } else {
                        "portable"
                    },
                )
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let mut out = BufReader::new(child.stdout.take().unwrap());
            // Wait until the child has reopened the log, then let it run a random while.
            let mut line = String::new();
            loop {
                line.clear();
                if out.read_line(&mut line).unwrap() == 0 {
                    let mut err = String::new();
                    child
                        .stderr
                        .take()
                        .unwrap()
                        .read_to_string(&mut err)
                        .unwrap();
                    panic!("child exited before starting: {err}");
                }
                // libtest prints "test crash_child ... " without a newline first.
                if let Some(n) = line.trim().split("START ").nth(1) {
                    assert_eq!(
                        n.parse::<u64>().unwrap(),
                        total,
                        "child sees every record that survived"
                    );
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(5 + rng.below(120)));
            child.kill().unwrap();
            child.wait().unwrap();
            kills += 1;
            let mut rest = String::new();
            out.read_to_string(&mut rest).unwrap();
            for l in rest.lines() {
                let mut it = l.split_whitespace();
                if it.next() != Some("ACK") {
                    continue;
                }
                let (Some(s), Some(lsn), None) = (it.next(), it.next(), it.next()) else {
                    continue;
                };
                let (Ok(s), Ok(lsn)) = (s.parse::<u64>(), lsn.parse::<u64>()) else {
                    continue;
                };
                acked.push((s, Lsn::new(lsn)));
            }
            total = verify(dir.path(), b, &acked);
        }
        assert!(
            acked.len() > 100,
            "{b:?}: the child acknowledged {} commits",
            acked.len()
        );
        eprintln!(
            "{b:?}: {kills} kills, {} acknowledged commits, {total} records survive, {:?}",
            acked.len(),
            started.elapsed()
        );
    }
}
