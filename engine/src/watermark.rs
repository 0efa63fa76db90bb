//! Monotonic watermarks (`written`, `flushed`, and the remote ones a replication layer
//! advances) and the waiters parked on them.
//!
//! A waiter registers a target and a [`Waker`]; advancing the watermark past the target
//! wakes it. Registration re-checks the value under the waiter lock and advancing takes
//! that lock after publishing the value, so no wake-up is lost. Works for async tasks and,
//! through [`block_on`], for plain threads, without any runtime.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::sync::lock;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;
use std::time::Instant;

use crate::types::Lsn;

struct Waiter {
    target: u64,
    id: u64,
    waker: Waker,
}

/// One monotonic LSN with its waiters.
pub(crate) struct Watermark {
    value: AtomicU64,
    waiters: Mutex<Vec<Waiter>>,
    /// Whether `waiters` is non-empty, readable without the lock (stored under it,
    /// sequentially consistent: see `Shared::want_written`).
    waited: AtomicBool,
}

/// Waiter ids, unique per process, so a future can find and replace its registration.
pub(crate) fn next_waiter_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

impl Watermark {
    pub(crate) fn new(value: Lsn) -> Watermark {
        Watermark {
            value: AtomicU64::new(value.get()),
            waiters: Mutex::new(Vec::new()),
            waited: AtomicBool::new(false),
        }
    }

    pub(crate) fn get(&self) -> Lsn {
        Lsn::new(self.value.load(Ordering::Acquire))
    }

    /// Whether anybody waits on this watermark.
    pub(crate) fn has_waiters(&self) -> bool {
        self.waited.load(Ordering::SeqCst)
    }

    fn note_waiters(&self, w: &[Waiter]) {
        self.waited.store(!w.is_empty(), Ordering::SeqCst);
    }

    /// Raises the watermark to `to` (never lowers it) and wakes waiters it satisfies.
    pub(crate) fn advance(&self, to: Lsn) {
        let old = self.value.fetch_max(to.get(), Ordering::AcqRel);
        if to.get() > old {
            let ready: Vec<Waker> = {
                let mut w = lock(&self.waiters);
                if w.is_empty() {
                    return;
                }
                let mut ready = Vec::new();
                w.retain(|x| {
                    if x.target <= to.get() {
                        ready.push(x.waker.clone());
                        false
                    } else {
                        true
                    }
                });
                self.note_waiters(&w);
                ready
            };
            ready.into_iter().for_each(Waker::wake);
        }
    }

    /// Lowers the watermark to at most `to` (truncation) and wakes every waiter so each
    /// can re-examine why it waits.
    pub(crate) fn lower_to(&self, to: Lsn) {
        self.value.fetch_min(to.get(), Ordering::AcqRel);
        self.wake_all();
    }

    /// Wakes every waiter (close, poison, fencing, truncation).
    pub(crate) fn wake_all(&self) {
        let ready: Vec<Waiter> = {
            let mut w = lock(&self.waiters);
            self.waited.store(false, Ordering::SeqCst);
            std::mem::take(&mut *w)
        };
        ready.into_iter().for_each(|w| w.waker.wake());
    }

    /// Whether the watermark has reached `target`; if not, registers (or refreshes) the
    /// waiter `id` to be woken when it does.
    pub(crate) fn poll_reached(&self, target: Lsn, id: u64, waker: &Waker) -> bool {
        if self.value.load(Ordering::Acquire) >= target.get() {
            return true;
        }
        let mut w = lock(&self.waiters);
        if self.value.load(Ordering::Acquire) >= target.get() {
            w.retain(|x| x.id != id);
            self.note_waiters(&w);
            return true;
        }
        match w.iter_mut().find(|x| x.id == id) {
            Some(x) => {
                x.target = target.get();
                if !x.waker.will_wake(waker) {
                    x.waker = waker.clone();
                }
            }
            None => w.push(Waiter {
                target: target.get(),
                id,
                waker: waker.clone(),
            }),
        }
        self.note_waiters(&w);
        false
    }

    /// Removes waiter `id`, if registered.
    pub(crate) fn cancel(&self, id: u64) {
        let mut w = lock(&self.waiters);
        if !w.is_empty() {
            w.retain(|x| x.id != id);
            self.note_waiters(&w);
        }
    }
}

struct ThreadWaker(Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Drives a future to completion on the current thread, parking between polls. Returns
/// `None` if `deadline` passes first (the future is dropped, which deregisters it).
pub(crate) fn block_on<F: Future>(fut: F, deadline: Option<Instant>) -> Option<F::Output> {
    thread_local! {
        // One waker per thread: blocking commits are the hot path of many embedders.
        static WAKER: Waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    }
    let waker = WAKER.with(Waker::clone);
    let mut cx = Context::from_waker(&waker);
    let mut fut = pin!(fut);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return Some(v);
        }
        match deadline {
            None => std::thread::park(),
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    return None;
                }
                std::thread::park_timeout(d - now);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    struct Reach<'a>(&'a Watermark, Lsn, u64);
    impl Future for Reach<'_> {
        type Output = ();
        fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            if self.0.poll_reached(self.1, self.2, cx.waker()) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }
    }

    #[test]
    fn advance_wakes_only_satisfied_waiters() {
        let w = Arc::new(Watermark::new(Lsn::new(10)));
        assert!(block_on(Reach(&w, Lsn::new(5), next_waiter_id()), None).is_some());
        let w2 = Arc::clone(&w);
        let t = std::thread::spawn(move || {
            block_on(
                Reach(&w2, Lsn::new(100), next_waiter_id()),
                Some(Instant::now() + Duration::from_secs(10)),
            )
        });
        std::thread::sleep(Duration::from_millis(20));
        w.advance(Lsn::new(50));
        assert!(!t.is_finished());
        w.advance(Lsn::new(100));
        assert!(t.join().unwrap().is_some());
        w.advance(Lsn::new(3));
        assert_eq!(w.get(), Lsn::new(100), "never goes backwards");
        w.lower_to(Lsn::new(40));
        assert_eq!(w.get(), Lsn::new(40));
    }

    #[test]
    fn deadline_and_cancel() {
        let w = Watermark::new(Lsn::ZERO);
        let id = next_waiter_id();
        assert!(block_on(
            Reach(&w, Lsn::new(1), id),
            Some(Instant::now() + Duration::from_millis(10))
        )
        .is_none());
        w.cancel(id);
        assert!(lock(&w.waiters).is_empty());
    }
}
