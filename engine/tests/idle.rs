//! An idle log costs no CPU: its threads sleep until there is work or a timer is due.
//! (The flusher once spun with a zero timeout once the log had been idle for an
//! `async_flush_interval`: 13–30 % of a core on every idle node.) Alone in its binary,
//! so the threads counted are this log's.

mod common;

use std::time::{Duration, Instant};

use common::{backends, small};
use walship_engine::{Durability, Log};

/// CPU time (clock ticks) of this process's threads whose name starts with `walship-`.
fn log_thread_ticks() -> u64 {
    let mut ticks = 0;
    for t in std::fs::read_dir("/proc/self/task").expect("/proc/self/task") {
        let dir = t.expect("task").path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if !comm.starts_with("walship-") {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("stat")).unwrap_or_default();
        // After the command's closing parenthesis: fields 3.., utime and stime are 14 and 15.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        ticks += f[11].parse::<u64>().unwrap_or(0) + f[12].parse::<u64>().unwrap_or(0);
    }
    ticks
}

#[test]
fn an_idle_log_sleeps_and_still_flushes_async_writes_within_the_interval() {
    for b in backends() {
        let dir = tempfile::tempdir().unwrap();
        let opts = small(b);
        let interval = opts.async_flush_interval;
        let log = Log::open(dir.path(), opts).unwrap();
        let lsn = log.append(b"first").unwrap();
        log.commit(lsn, Durability::Local).wait().unwrap();
        // Idle for many intervals, then measured for one second.
        std::thread::sleep(interval * 10);
        let before = log_thread_ticks();
        std::thread::sleep(Duration::from_secs(1));
        let spent = log_thread_ticks() - before;
        // A tick is 10 ms: waking every 20 ms to find nothing costs well under one.
        assert!(
            spent <= 5,
            "{b:?}: the idle log's threads used {spent} ticks (10 ms each) of CPU in 1 s"
        );
        // An async write after the idle spell is still flushed by the flusher's timer.
        let lsn = log.append(b"after idle").unwrap();
        let start = Instant::now();
        while log.watermarks().flushed < lsn {
            assert!(
                start.elapsed() < interval * 10,
                "{b:?}: an async write not flushed {:?} after it",
                start.elapsed()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        log.close().unwrap();
    }
}
