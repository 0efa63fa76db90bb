//! Committer-driven group commit: who flushes, and who waits for whom.
//!
//! A committer that needs its record durable does the work itself when nobody else is
//! flushing, on its own thread, as PostgreSQL's `XLogFlush` under `WALWriteLock`,
//! RocksDB's write groups and raft-engine's `WriteBarrier` do: it becomes the *leader*,
//! writes everything appended so far and flushes it. A committer that arrives while a
//! flush runs waits for it if the flush covers its record, and otherwise for the one after
//! it; of those, the first to be woken leads that next flush, which starts as soon as the
//! running one ends. The background flusher thread (async commits, the async flush
//! interval, close) is just another committer here.
//!
//! Waking costs the waker two system calls per flush, whatever the group's size: all
//! waiters of one flush sleep on one futex word (one `FUTEX_WAKE` for all of them, and
//! each returns without taking a lock: it only reads the durable position), and one
//! waiter of the next flush is woken to lead it, before the finished group is woken, so
//! the next flush's write overlaps the wake-ups. The leader's own commit returns without
//! any hand-off to another thread.
//!
//! The gate is pure coordination: what leading means (write, then `fdatasync`) is the
//! caller's closure, so the rules are unit-tested here without a disk.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use crate::error::Error;
use crate::futex;
use crate::sync::lock;
use crate::types::Lsn;

/// How a wait at the gate ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Durable through the requested position.
    Durable,
    /// The deadline passed first.
    TimedOut,
    /// The log refused (poisoned or closed), or leading failed.
    Refused(Error),
}

/// The most flushes in flight at once (`Options::flushes_in_flight`, default 1). A flush
/// covers what was written before it began (`fdatasync` writes back and waits for every
/// dirty page of the file, those a concurrent flush started included), so a second
/// leader may start while the first waits for the device. On this machine's disk two to
/// eight concurrent `fdatasync`s complete 1.5–3× as many per second as one, yet one
/// flush at a time committed more: its groups are larger (bench/RESULTS.md, issue 13).
pub(crate) const MAX_IN_FLIGHT: usize = 4;

#[derive(Debug, Default)]
struct State {
    /// Per slot, the flush in flight there: everything appended before its leader was
    /// chosen (its write takes all of it).
    running: [Option<Lsn>; MAX_IN_FLIGHT],
}

/// The one place committers meet; see the module documentation.
#[derive(Debug)]
pub(crate) struct FlushGate {
    /// Who leads: taken briefly to choose a leader or a slot, never while flushing and
    /// never by a waiter whose flush is done.
    state: Mutex<State>,
    /// How many flushes may be in flight (at most `MAX_IN_FLIGHT`).
    limit: usize,
    /// `ends[i]` changes when the flush in slot `i` ends; waiters it covers sleep on it.
    ends: [AtomicU32; MAX_IN_FLIGHT],
    /// Threads asleep, or about to be, on each word (counted under `state`, so a
    /// finisher that reads zero under it knows nobody can be missed).
    sleepers: [AtomicU32; MAX_IN_FLIGHT],
    /// Changes when any flush ends while waiters no running flush covers wait (all slots
    /// were busy): one of them will lead.
    freed: AtomicU32,
    freed_sleepers: AtomicU32,
}

struct Leading<'a>(&'a FlushGate, usize);

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        self.0.finish(self.1);
    }
}

/// What the gate needs to know about the log, as closures so tests can fake it.
pub(crate) struct Log<'a> {
    /// Everything before this is durable.
    pub(crate) durable: &'a dyn Fn() -> Lsn,
    /// Everything appended so far ends here (what a leader chosen now will write).
    pub(crate) appended: &'a dyn Fn() -> Lsn,
    /// Why the log takes no more work, if it does not.
    pub(crate) refused: &'a dyn Fn() -> Option<Error>,
}

impl FlushGate {
    /// A gate letting `limit` flushes run at once (1 to `MAX_IN_FLIGHT`).
    pub(crate) fn new(limit: usize) -> FlushGate {
        FlushGate {
            state: Mutex::new(State::default()),
            limit: limit.clamp(1, MAX_IN_FLIGHT),
            ends: Default::default(),
            sleepers: Default::default(),
            freed: AtomicU32::new(0),
            freed_sleepers: AtomicU32::new(0),
        }
    }

    /// Returns once everything before `lsn` is durable, leading flushes (`lead`: write
    /// what is appended and flush it, raising `durable`) when no running flush covers
    /// `lsn` and a slot is free; gives up at `deadline`. A leader's flush is never
    /// abandoned at the deadline (it cannot be interrupted); only waiting is.
    pub(crate) fn wait_durable(
        &self,
        log: &Log<'_>,
        lsn: Lsn,
        deadline: Option<Instant>,
        lead: &mut dyn FnMut() -> Result<(), Error>,
    ) -> Outcome {
        loop {
            // A woken waiter whose flush is done returns here, without the lock.
            if (log.durable)() >= lsn {
                return Outcome::Durable;
            }
            if let Some(e) = (log.refused)() {
                return Outcome::Refused(e);
            }
            let timeout = match deadline {
                None => None,
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Outcome::TimedOut;
                    }
                    Some(d - now)
                }
            };
            let mut st = lock(&self.state);
            if (log.durable)() >= lsn {
                return Outcome::Durable;
            }
            // The running flush that covers `lsn` and began first, if any.
            let covering = (0..self.limit)
                .filter_map(|i| st.running[i].filter(|c| *c >= lsn).map(|c| (c, i)))
                .min()
                .map(|(_, i)| i);
            let (word, sleepers) = match covering {
                Some(i) => (&self.ends[i], &self.sleepers[i]),
                None => match (0..self.limit).find(|&i| st.running[i].is_none()) {
                    Some(i) => {
                        st.running[i] = Some((log.appended)());
                        drop(st);
                        let led = {
                            // Ends the flush even if `lead` panics, so no waiter sleeps
                            // forever.
                            let _leading = Leading(self, i);
                            lead()
                        };
                        if let Err(e) = led {
                            return Outcome::Refused(e);
                        }
                        // Durable now, unless a truncation cut what was appended: the
                        // loop's checks (`refused` names a truncation below `lsn`) decide.
                        continue;
                    }
                    None => (&self.freed, &self.freed_sleepers),
                },
            };
            let seen = word.load(Ordering::SeqCst);
            sleepers.fetch_add(1, Ordering::SeqCst);
            drop(st);
            futex::wait(word, seen, timeout);
            sleepers.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Ends the flush in slot `i`: the waiters no flush covered are woken first (one of
    /// them leads the next), then everyone this flush covered, each group with one
    /// system call.
    fn finish(&self, i: usize) {
        let mut st = lock(&self.state);
        st.running[i] = None;
        // Changed under the lock, so a waiter that read a word before cannot sleep
        // through this end, and one that reads it after sees the slot free.
        self.ends[i].fetch_add(1, Ordering::SeqCst);
        let wake_freed = self.freed_sleepers.load(Ordering::SeqCst) > 0;
        if wake_freed {
            self.freed.fetch_add(1, Ordering::SeqCst);
        }
        let wake_covered = self.sleepers[i].load(Ordering::SeqCst) > 0;
        drop(st);
        if wake_freed {
            // All of them: the first to get the lock leads, and the rest find that flush
            // covering them (waking one would leave the others asleep here while a
            // flush that covers them runs and ends).
            futex::wake_all(&self.freed);
        }
        if wake_covered {
            futex::wake_all(&self.ends[i]);
        }
    }

    /// Wakes every waiter so each re-examines the log (poisoned, closed, truncated).
    pub(crate) fn wake_all(&self) {
        let st = lock(&self.state);
        for w in self.ends.iter().chain([&self.freed]) {
            w.fetch_add(1, Ordering::SeqCst);
        }
        drop(st);
        for w in self.ends.iter().chain([&self.freed]) {
            futex::wake_all(w);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    /// A fake log: `appended` grows as committers append; a lead "writes and flushes"
    /// everything appended when it started, after a pause that lets others pile up.
    struct Fake {
        appended: AtomicU64,
        durable: AtomicU64,
        leads: AtomicUsize,
        concurrent: AtomicUsize,
        max_concurrent: AtomicUsize,
        poisoned: std::sync::atomic::AtomicBool,
        gate: FlushGate,
    }

    impl Fake {
        fn new() -> Arc<Fake> {
            Fake::with_limit(1)
        }

        fn with_limit(limit: usize) -> Arc<Fake> {
            Arc::new(Fake {
                appended: AtomicU64::new(0),
                durable: AtomicU64::new(0),
                leads: AtomicUsize::new(0),
                concurrent: AtomicUsize::new(0),
                max_concurrent: AtomicUsize::new(0),
                poisoned: Default::default(),
                gate: FlushGate::new(limit),
            })
        }

        fn commit(&self, deadline: Option<Instant>, pause: Duration) -> Outcome {
            let lsn = Lsn::new(self.appended.fetch_add(1, Ordering::SeqCst) + 1);
            let durable = || Lsn::new(self.durable.load(Ordering::SeqCst));
            let appended = || Lsn::new(self.appended.load(Ordering::SeqCst));
            let refused = || {
                self.poisoned.load(Ordering::SeqCst).then(|| Error::Closed {
                    path: "fake".into(),
                })
            };
            let log = Log {
                durable: &durable,
                appended: &appended,
                refused: &refused,
            };
            self.gate.wait_durable(&log, lsn, deadline, &mut || {
                let n = self.concurrent.fetch_add(1, Ordering::SeqCst) + 1;
                self.max_concurrent.fetch_max(n, Ordering::SeqCst);
                self.leads.fetch_add(1, Ordering::SeqCst);
                let upto = self.appended.load(Ordering::SeqCst);
                std::thread::sleep(pause);
                self.concurrent.fetch_sub(1, Ordering::SeqCst);
                if self.poisoned.load(Ordering::SeqCst) {
                    self.gate.wake_all();
                    return Err(Error::Closed {
                        path: "fake".into(),
                    });
                }
                self.durable.fetch_max(upto, Ordering::SeqCst);
                Ok(())
            })
        }
    }

    #[test]
    fn a_lone_committer_leads_its_own_flush() {
        let f = Fake::new();
        for _ in 0..3 {
            assert!(matches!(f.commit(None, Duration::ZERO), Outcome::Durable));
        }
        assert_eq!(f.leads.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn concurrent_committers_share_flushes_one_at_a_time_and_all_return_durable() {
        let f = Fake::new();
        let threads: Vec<_> = (0..32)
            .map(|_| {
                let f = Arc::clone(&f);
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        let r = f.commit(None, Duration::from_micros(300));
                        assert!(matches!(r, Outcome::Durable), "{r:?}");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(
            f.max_concurrent.load(Ordering::SeqCst),
            1,
            "one flush at a time"
        );
        let leads = f.leads.load(Ordering::SeqCst);
        assert!(
            leads < 32 * 50 / 2,
            "commits were grouped: {leads} flushes for 1600"
        );
        assert_eq!(f.durable.load(Ordering::SeqCst), 32 * 50);
    }

    #[test]
    fn with_two_in_flight_at_most_two_flushes_overlap_and_all_commits_return_durable() {
        let f = Fake::with_limit(2);
        let threads: Vec<_> = (0..16)
            .map(|_| {
                let f = Arc::clone(&f);
                std::thread::spawn(move || {
                    for _ in 0..40 {
                        let r = f.commit(None, Duration::from_micros(300));
                        assert!(matches!(r, Outcome::Durable), "{r:?}");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(f.max_concurrent.load(Ordering::SeqCst), 2);
        assert_eq!(f.durable.load(Ordering::SeqCst), 16 * 40);
    }

    #[test]
    fn a_deadline_ends_waiting_but_not_the_running_flush() {
        let f = Fake::new();
        let g = Arc::clone(&f);
        let leader = std::thread::spawn(move || g.commit(None, Duration::from_millis(300)));
        while f.leads.load(Ordering::SeqCst) == 0 {
            std::thread::yield_now();
        }
        let t0 = Instant::now();
        let r = f.commit(
            Some(Instant::now() + Duration::from_millis(30)),
            Duration::ZERO,
        );
        assert!(matches!(r, Outcome::TimedOut), "{r:?}");
        assert!(t0.elapsed() < Duration::from_millis(250));
        assert!(matches!(leader.join().unwrap(), Outcome::Durable));
    }

    #[test]
    fn a_failed_flush_refuses_everyone_waiting() {
        let f = Fake::new();
        let g = Arc::clone(&f);
        let leader = std::thread::spawn(move || g.commit(None, Duration::from_millis(100)));
        while f.leads.load(Ordering::SeqCst) == 0 {
            std::thread::yield_now();
        }
        let waiters: Vec<_> = (0..4)
            .map(|_| {
                let f = Arc::clone(&f);
                std::thread::spawn(move || f.commit(None, Duration::ZERO))
            })
            .collect();
        f.poisoned.store(true, Ordering::SeqCst);
        assert!(matches!(leader.join().unwrap(), Outcome::Refused(_)));
        for w in waiters {
            assert!(matches!(w.join().unwrap(), Outcome::Refused(_)));
        }
    }
}
