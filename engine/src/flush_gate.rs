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
//! waiters of one flush sleep on one condition variable (one `FUTEX_WAKE` for all of
//! them), and one waiter of the next flush is woken to lead it, before the finished
//! group is woken, so the next flush's write overlaps the wake-ups. The leader's own
//! commit returns without any hand-off to another thread.
//!
//! The gate is pure coordination: what leading means (write, then `fdatasync`) is the
//! caller's closure, so the rules are unit-tested here without a disk.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Instant;

use crate::error::Error;
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

#[derive(Debug, Clone, Copy)]
struct Running {
    /// Flushes begun so far, this one included minus one: its slot is `gen % 2`.
    gen: u64,
    /// Everything appended before the leader was chosen: its write takes all of it.
    covers: Lsn,
}

#[derive(Debug, Default)]
struct State {
    /// Flushes finished.
    gen: u64,
    running: Option<Running>,
    /// Threads asleep on each condition variable.
    sleepers: [u32; 2],
}

/// The one place committers meet; see the module documentation.
#[derive(Debug, Default)]
pub(crate) struct FlushGate {
    state: Mutex<State>,
    /// `ends[g % 2]`: waiters for the end of flush `g`.
    ends: [Condvar; 2],
}

struct Leading<'a>(&'a FlushGate, u64);

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
    /// Returns once everything before `lsn` is durable, leading flushes (`lead`: write
    /// what is appended and flush it, raising `durable`) when nobody else is; gives up at
    /// `deadline`. A leader's flush is never abandoned at the deadline (it cannot be
    /// interrupted); only waiting is.
    pub(crate) fn wait_durable(
        &self,
        log: &Log<'_>,
        lsn: Lsn,
        deadline: Option<Instant>,
        lead: &mut dyn FnMut() -> Result<(), Error>,
    ) -> Outcome {
        let mut st = lock(&self.state);
        loop {
            if (log.durable)() >= lsn {
                return Outcome::Durable;
            }
            if let Some(e) = (log.refused)() {
                return Outcome::Refused(e);
            }
            let Some(run) = st.running else {
                let gen = st.gen;
                st.running = Some(Running {
                    gen,
                    covers: (log.appended)(),
                });
                drop(st);
                let led = {
                    // Ends the flush even if `lead` panics, so no waiter sleeps forever.
                    let _leading = Leading(self, gen);
                    lead()
                };
                if let Err(e) = led {
                    return Outcome::Refused(e);
                }
                // Durable now, unless a truncation cut what was appended: the loop's
                // checks (`refused` names a truncation below `lsn`) decide.
                st = lock(&self.state);
                continue;
            };
            // The running flush covers `lsn`, or the next one will.
            let slot = if run.covers >= lsn {
                run.gen
            } else {
                run.gen + 1
            };
            let i = (slot % 2) as usize;
            st.sleepers[i] += 1;
            st = match deadline {
                None => self.ends[i].wait(st).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        st.sleepers[i] -= 1;
                        return if (log.durable)() >= lsn {
                            Outcome::Durable
                        } else {
                            Outcome::TimedOut
                        };
                    }
                    self.ends[i]
                        .wait_timeout(st, d - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
            st.sleepers[i] -= 1;
        }
    }

    /// Ends flush `gen`: one waiter of the next flush is woken first, to lead it, then
    /// everyone the finished flush covered.
    fn finish(&self, gen: u64) {
        let mut st = lock(&self.state);
        st.running = None;
        st.gen = gen + 1;
        let (cur, next) = ((gen % 2) as usize, ((gen + 1) % 2) as usize);
        let wake_next = st.sleepers[next] > 0;
        let wake_cur = st.sleepers[cur] > 0;
        drop(st);
        if wake_next {
            self.ends[next].notify_one();
        }
        if wake_cur {
            self.ends[cur].notify_all();
        }
    }

    /// Wakes every waiter so each re-examines the log (poisoned, closed, truncated).
    pub(crate) fn wake_all(&self) {
        let st: MutexGuard<'_, State> = lock(&self.state);
        drop(st);
        for cv in &self.ends {
            cv.notify_all();
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
            Arc::new(Fake {
                appended: AtomicU64::new(0),
                durable: AtomicU64::new(0),
                leads: AtomicUsize::new(0),
                concurrent: AtomicUsize::new(0),
                max_concurrent: AtomicUsize::new(0),
                poisoned: Default::default(),
                gate: FlushGate::default(),
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
