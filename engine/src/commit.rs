//! [`Commit`]: waiting for a record to reach a [`Durability`] level.
//!
//! A commit waits on at most one watermark at a time, first local (`flushed`, asking
//! the writer for a flush), then the remote ones the level needs. A follower's
//! replication layer also waits for `written` alone (no flush asked for), to acknowledge
//! what is in its OS before it is on its disk. It is a plain
//! `Future` with no runtime behind it: a deadline is served by the engine's timer
//! thread when awaited, and by a parked thread when waited on with
//! [`Commit::wait_timeout`].

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::flush_gate::Outcome;
use crate::shared::Shared;
use crate::types::{Durability, Lsn};
use crate::watermark::{block_on, next_waiter_id, Watermark};

/// Resolves when a record reaches its durability level; see [`Log::commit`](crate::Log::commit).
///
/// Dropping it cancels the wait (the record stays appended).
///
/// ```
/// # use walship_engine::{Durability, Log, Options, Error};
/// # use std::time::Duration;
/// # let dir = tempfile::tempdir()?;
/// # let log = Log::open(dir.path(), Options { segment_capacity: 1 << 20, ..Options::default() })?;
/// let lsn = log.append(b"x")?;
/// // No replica advances the remote watermarks here, so RemoteFlush times out,
/// // reporting that the record is durable locally.
/// let r = log.commit(lsn, Durability::RemoteFlush).timeout(Duration::from_millis(20)).wait();
/// assert!(matches!(r, Err(Error::RemoteUnconfirmed { .. })));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use = "a commit does nothing unless awaited or waited on"]
pub struct Commit {
    shared: Arc<Shared>,
    lsn: Lsn,
    level: Durability,
    id: u64,
    gen: u64,
    deadline: Option<Instant>,
    timer_armed: Option<Instant>,
    flush_requested: bool,
    registered: Option<usize>,
    checked_end: bool,
    written_only: bool,
}

/// Stage index of the `written` watermark.
const WRITTEN: usize = 4;

impl Commit {
    pub(crate) fn new(shared: Arc<Shared>, lsn: Lsn, level: Durability) -> Commit {
        let gen = shared.trunc_gen.load(Ordering::Acquire);
        Commit {
            shared,
            lsn,
            level,
            id: next_waiter_id(),
            gen,
            deadline: None,
            timer_armed: None,
            flush_requested: false,
            registered: None,
            checked_end: false,
            written_only: false,
        }
    }

    /// A wait for `lsn` to be written to the OS, without asking for a flush.
    pub(crate) fn written(shared: Arc<Shared>, lsn: Lsn) -> Commit {
        let mut c = Commit::new(shared, lsn, Durability::Async);
        c.written_only = true;
        c
    }

    /// The commit token waited on.
    pub fn lsn(&self) -> Lsn {
        self.lsn
    }

    /// The level waited for.
    pub fn level(&self) -> Durability {
        self.level
    }

    /// Gives up after `timeout` from now.
    pub fn timeout(self, timeout: Duration) -> Commit {
        self.deadline(Instant::now() + timeout)
    }

    /// Gives up at `deadline`.
    pub fn deadline(mut self, deadline: Instant) -> Commit {
        self.deadline = Some(deadline);
        self
    }

    /// Polls once, without blocking: `Some` once the commit resolved, `None` while it
    /// waits (a flush it needs has been asked for). For a log its caller drives
    /// ([`Drive::Manual`](crate::Drive)): poll, [`Log::step`](crate::Log::step), poll.
    pub fn poll_now(&mut self) -> Option<Result<()>> {
        let mut cx = Context::from_waker(Waker::noop());
        match Pin::new(self).poll(&mut cx) {
            Poll::Ready(r) => Some(r),
            Poll::Pending => None,
        }
    }

    /// Blocks the calling thread until the commit resolves.
    ///
    /// # Errors
    /// See [`Log::wait`](crate::Log::wait).
    pub fn wait(self) -> Result<()> {
        let deadline = self.deadline;
        self.run_blocking(deadline)
    }

    /// Blocks for at most `timeout`.
    ///
    /// # Errors
    /// See [`Log::wait`](crate::Log::wait).
    pub fn wait_timeout(self, timeout: Duration) -> Result<()> {
        let d = Instant::now() + timeout;
        let deadline = Some(self.deadline.map_or(d, |x| x.min(d)));
        self.run_blocking(deadline)
    }

    fn run_blocking(mut self, deadline: Option<Instant>) -> Result<()> {
        self.deadline = deadline;
        if self.stages().first() == Some(&0)
            && self.shared.opts.drive != crate::options::Drive::Manual
        {
            self.flush_here(deadline)?;
        }
        // Parking with a timeout serves the deadline; no timer thread is involved.
        let mut fut = Blocking(self);
        loop {
            match block_on(&mut fut, deadline) {
                Some(r) => return r,
                None => {
                    // Deadline passed: one last poll reports which error applies.
                    let waker = Waker::noop();
                    if let Poll::Ready(r) = fut.0.poll_inner(&Context::from_waker(waker), false) {
                        return r;
                    }
                }
            }
        }
    }

    /// The local stage of a blocking commit, on the committer's own thread: write and
    /// flush as the leader of a group, or wait for the flush that covers this record
    /// (`flush_gate.rs`). The later stages (remote watermarks) are waited for as before.
    fn flush_here(&mut self, deadline: Option<Instant>) -> Result<()> {
        let sh = Arc::clone(&self.shared);
        if let Some(t) = sh.truncated_since(self.gen).filter(|t| self.lsn > *t) {
            return Err(Error::Truncated {
                lsn: self.lsn,
                truncated_to: t,
            });
        }
        let end = sh.end();
        if self.lsn > end {
            return Err(Error::BeyondEnd { lsn: self.lsn, end });
        }
        self.checked_end = true;
        match crate::writer::flush_through(&sh, self.lsn, deadline, self.gen) {
            Outcome::Durable => {
                // Nothing to ask the flusher for: the stage is done.
                self.flush_requested = true;
                Ok(())
            }
            Outcome::TimedOut => Err(Error::Timeout {
                lsn: self.lsn,
                level: self.level,
            }),
            Outcome::Refused(e) => Err(e),
        }
    }

    fn watermark(&self, idx: usize) -> &Watermark {
        let s = &self.shared;
        match idx {
            0 => &s.flushed,
            1 => &s.remote_written,
            2 => &s.remote_flushed,
            3 => &s.remote_applied,
            _ => &s.written,
        }
    }

    fn stages(&self) -> &'static [usize] {
        if self.written_only {
            return &[WRITTEN];
        }
        match self.level {
            Durability::Async => &[],
            Durability::Local => &[0],
            Durability::RemoteWrite => &[0, 1],
            Durability::RemoteFlush => &[0, 2],
            Durability::RemoteApply => &[0, 2, 3],
        }
    }

    fn poll_inner(&mut self, cx: &Context<'_>, use_timer: bool) -> Poll<Result<()>> {
        let sh = Arc::clone(&self.shared);
        if let Some(t) = sh.truncated_since(self.gen) {
            if self.lsn > t {
                return Poll::Ready(Err(Error::Truncated {
                    lsn: self.lsn,
                    truncated_to: t,
                }));
            }
        }
        if !self.checked_end {
            let end = sh.end();
            if self.lsn > end {
                return Poll::Ready(Err(Error::BeyondEnd { lsn: self.lsn, end }));
            }
            self.checked_end = true;
        }
        if let Some(e) = sh.life.poisoned() {
            return Poll::Ready(Err(e));
        }
        let now_past = || self.deadline.is_some_and(|d| Instant::now() >= d);
        for &idx in self.stages() {
            if idx == 0 && !self.flush_requested {
                sh.request_flush(self.lsn);
                self.flush_requested = true;
            }
            let wm = self.watermark(idx);
            if wm.poll_reached(self.lsn, self.id, cx.waker()) {
                if self.registered == Some(idx) {
                    self.registered = None;
                }
                continue;
            }
            if idx == WRITTEN {
                sh.want_written();
            }
            if let Some(prev) = self.registered.replace(idx) {
                if prev != idx {
                    self.watermark(prev).cancel(self.id);
                }
            }
            // Registered first, then flags checked: whoever sets a flag wakes all waiters
            // afterwards, so this poll either sees the flag or is woken.
            if (1..WRITTEN).contains(&idx) {
                if let Some(reason) = sh.life.fenced() {
                    return Poll::Ready(Err(Error::RemoteFenced {
                        lsn: self.lsn,
                        level: self.level,
                        reason,
                    }));
                }
            }
            if let Some(e) = sh.life.poisoned() {
                return Poll::Ready(Err(e));
            }
            if sh.life.is_closed() {
                return Poll::Ready(Err(Error::Closed {
                    path: sh.dir.clone(),
                }));
            }
            if now_past() {
                return Poll::Ready(Err(if idx == 0 || idx == WRITTEN {
                    Error::Timeout {
                        lsn: self.lsn,
                        level: self.level,
                    }
                } else {
                    Error::RemoteUnconfirmed {
                        lsn: self.lsn,
                        level: self.level,
                    }
                }));
            }
            if use_timer {
                if let Some(d) = self.deadline {
                    if self.timer_armed != Some(d) {
                        sh.timer.register(d, self.id, cx.waker());
                        self.timer_armed = Some(d);
                    }
                }
            }
            return Poll::Pending;
        }
        Poll::Ready(Ok(()))
    }
}

impl Future for Commit {
    type Output = Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.get_mut().poll_inner(cx, true)
    }
}

impl Drop for Commit {
    fn drop(&mut self) {
        if let Some(idx) = self.registered.take() {
            self.watermark(idx).cancel(self.id);
        }
        if let Some(d) = self.timer_armed.take() {
            self.shared.timer.cancel(d, self.id);
        }
    }
}

impl std::fmt::Debug for Commit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Commit")
            .field("lsn", &self.lsn)
            .field("level", &self.level)
            .field("deadline", &self.deadline)
            .finish()
    }
}

/// Polls a commit without the timer thread.
struct Blocking(Commit);

impl Future for &mut Blocking {
    type Output = Result<()>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.get_mut().0.poll_inner(cx, false)
    }
}

/// A future that resolves when `wm` reaches `target`.
pub(crate) fn reach(wm: &Watermark, target: Lsn) -> impl Future<Output = ()> + '_ {
    let id = next_waiter_id();
    std::future::poll_fn(move |cx| {
        if wm.poll_reached(target, id, cx.waker()) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
}
