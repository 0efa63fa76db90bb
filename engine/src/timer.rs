//! One background thread that wakes futures at their deadlines, so that commit
//! timeouts work from any async runtime (or none). Blocking waits do not use it: they
//! park with a timeout instead.

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex};

use crate::sync::lock;
use std::task::Waker;
use std::thread::JoinHandle;
use std::time::Instant;

#[derive(Default)]
struct State {
    deadlines: BTreeMap<(Instant, u64), Waker>,
    shutdown: bool,
}

#[derive(Default)]
struct Inner {
    state: Mutex<State>,
    cv: Condvar,
}

/// Handle to the timer thread, started on first use.
#[derive(Default)]
pub(crate) struct Timer {
    inner: Arc<Inner>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Timer {
    /// Wakes `waker` at `at` unless cancelled first. Re-registering the same `(at, id)`
    /// replaces the waker.
    pub(crate) fn register(&self, at: Instant, id: u64, waker: &Waker) {
        {
            let mut st = lock(&self.inner.state);
            if st.shutdown {
                waker.wake_by_ref();
                return;
            }
            st.deadlines.insert((at, id), waker.clone());
        }
        self.inner.cv.notify_one();
        let mut t = lock(&self.thread);
        if t.is_none() {
            let inner = Arc::clone(&self.inner);
            match std::thread::Builder::new()
                .name("walship-timer".into())
                .spawn(move || run(&inner))
            {
                Ok(h) => *t = Some(h),
                Err(e) => {
                    // Without a timer thread deadlines cannot fire; wake now so the future
                    // observes its deadline on a later poll rather than hanging.
                    tracing::error!(error = %e, "cannot start the walship timer thread");
                    waker.wake_by_ref();
                }
            }
        }
    }

    /// Forgets the deadline `(at, id)`.
    pub(crate) fn cancel(&self, at: Instant, id: u64) {
        lock(&self.inner.state).deadlines.remove(&(at, id));
    }

    /// Stops the thread, waking everything still registered.
    pub(crate) fn shutdown(&self) {
        let pending = {
            let mut st = lock(&self.inner.state);
            st.shutdown = true;
            std::mem::take(&mut st.deadlines)
        };
        self.inner.cv.notify_all();
        pending.into_values().for_each(Waker::wake);
        if let Some(h) = lock(&self.thread).take() {
            let _ = h.join();
        }
    }
}

fn run(inner: &Inner) {
    let mut st = lock(&inner.state);
    loop {
        if st.shutdown {
            return;
        }
        let now = Instant::now();
        let due: Vec<(Instant, u64)> = st
            .deadlines
            .range(..=(now, u64::MAX))
            .map(|(k, _)| *k)
            .collect();
        for k in due {
            if let Some(w) = st.deadlines.remove(&k) {
                w.wake();
            }
        }
        st = match st.deadlines.keys().next().map(|(at, _)| *at) {
            Some(at) => {
                let wait = at.saturating_duration_since(Instant::now());
                inner
                    .cv
                    .wait_timeout(st, wait)
                    .unwrap_or_else(|p| p.into_inner())
                    .0
            }
            None => inner.cv.wait(st).unwrap_or_else(|p| p.into_inner()),
        };
    }
}
