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
//! group is woken, so the next flush's write overlaps the wake-ups; the rest of the next
//! group stays asleep until the flush that covers them ends. The leader's own commit
//! returns without any hand-off to another thread. (Waiters sleeping on raw futex words,
//! which return without re-taking the mutex, measured no different here: same commits
//! per second, CPU and context switches per commit, bench/RESULTS.md; so no `unsafe`.)
//!
//! The gate is pure coordination: what leading means (write, then `fdatasync`) is the
//! caller's closure, so the rules are unit-tested here without a disk.

use std::sync::{Condvar, Mutex};
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

/// The most flushes in flight at once (`Options::flushes_in_flight`, default 1). A flush
/// covers what was written before it began (`fdatasync` writes back and waits for every
/// dirty page of the file, those a concurrent flush started included), so a second
/// leader may start while the first waits for the device. On this machine's disk two to
/// eight concurrent `fdatasync`s complete 1.5–3× as many per second as one, yet one
/// flush at a time committed more: its groups are larger (bench/RESULTS.md, issue 13).
pub(crate) const MAX_IN_FLIGHT: usize = 4;

/// Condition variables: one per flush in flight, plus the one the *next* flush's
/// waiters sleep on.
const WORDS: usize = MAX_IN_FLIGHT + 1;

#[derive(Debug, Clone, Copy)]
struct Running {
    /// Everything appended before its leader was chosen (its write takes all of it).
    covers: Lsn,
    /// The condition variable its waiters sleep on.
    word: usize,
}

#[derive(Debug)]
struct State {
    /// Per slot, the flush in flight there.
    running: [Option<Running>; MAX_IN_FLIGHT],
    /// The condition variable of waiters that no running flush covers, all slots being
    /// busy: the next flush to start adopts it (it covers them all), and a free one takes
    /// its place.
    next: usize,
    /// Threads asleep on each condition variable, so nobody notifies an empty one.
    sleepers: [u32; WORDS],
}

/// The one place committers meet; see the module documentation.
#[derive(Debug)]
pub(crate) struct FlushGate {
    /// Who leads and who sleeps where: taken briefly, never while flushing.
    state: Mutex<State>,
    /// How many flushes may be in flight (at most `MAX_IN_FLIGHT`).
    limit: usize,
    /// Notified when the flush they belong to ends (or, for the next flush's, when one
    /// of its waiters is called to lead).
    words: [Condvar; WORDS],
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
            state: Mutex::new(State {
                running: [None; MAX_IN_FLIGHT],
                next: 0,
                sleepers: [0; WORDS],
            }),
            limit: limit.clamp(1, MAX_IN_FLIGHT),
            words: Default::default(),
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
        let mut st = lock(&self.state);
        // The condition variable this waiter last slept on.
        let mut slept_on = None;
        loop {
            if (log.durable)() >= lsn {
                // Called to lead the next flush but already durable (the flush that ended
                // wrote more than it was chosen to cover): pass the call on, or the rest
                // of the next group would sleep with no flush running to wake them.
                self.pass_call(&st, slept_on);
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
                        // As above: a waiter called to lead that gives up passes it on.
                        self.pass_call(&st, slept_on);
                        return Outcome::TimedOut;
                    }
                    Some(d - now)
                }
            };
            // The running flush that covers `lsn` and began first, if any.
            let covering = st.running[..self.limit]
                .iter()
                .flatten()
                .filter(|r| r.covers >= lsn)
                .min_by_key(|r| r.covers)
                .map(|r| r.word);
            let word = match covering {
                Some(w) => w,
                None => match st.running[..self.limit].iter().position(Option::is_none) {
                    Some(slot) => {
                        // Lead, adopting the next flush's waiters (appended before now,
                        // so covered), and give the next flush a condition variable no
                        // flush uses.
                        let word = st.next;
                        st.running[slot] = Some(Running {
                            covers: (log.appended)(),
                            word,
                        });
                        st.next = (0..WORDS)
                            .find(|w| st.running.iter().flatten().all(|r| r.word != *w))
                            .unwrap_or(word);
                        drop(st);
                        let led = {
                            // Ends the flush even if `lead` panics, so no waiter sleeps
                            // forever.
                            let _leading = Leading(self, slot);
                            lead()
                        };
                        if let Err(e) = led {
                            return Outcome::Refused(e);
                        }
                        // Durable now, unless a truncation cut what was appended: the
                        // loop's checks (`refused` names a truncation below `lsn`) decide.
                        st = lock(&self.state);
                        continue;
                    }
                    None => st.next,
                },
            };
            st.sleepers[word] += 1;
            st = match timeout {
                None => self.words[word].wait(st).unwrap_or_else(|p| p.into_inner()),
                Some(t) => {
                    self.words[word]
                        .wait_timeout(st, t)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
            st.sleepers[word] -= 1;
            slept_on = Some(word);
        }
    }

    /// A waiter leaving that may have been the one called to lead the next flush (it
    /// slept on the next flush's condition variable) calls another in its place.
    fn pass_call(&self, st: &State, slept_on: Option<usize>) {
        if slept_on == Some(st.next) && st.sleepers[st.next] > 0 {
            self.words[st.next].notify_one();
        }
    }

    /// Ends the flush in `slot`: one waiter of the next flush is called first, to lead
    /// it (the others stay asleep: the flush it leads covers them and wakes them when it
    /// ends), then everyone this flush covered, each group with one notification.
    fn finish(&self, slot: usize) {
        let mut st = lock(&self.state);
        let Some(run) = st.running[slot].take() else {
            return;
        };
        let wake_covered = st.sleepers[run.word] > 0;
        let next = st.next;
        let call_next = st.sleepers[next] > 0;
        drop(st);
        if call_next {
            self.words[next].notify_one();
        }
        if wake_covered {
            self.words[run.word].notify_all();
        }
    }

    /// Wakes every waiter so each re-examines the log (poisoned, closed, truncated).
    pub(crate) fn wake_all(&self) {
        // Taking the lock orders this after any waiter's check of the log.
        drop(lock(&self.state));
        for w in &self.words {
            w.notify_all();
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
