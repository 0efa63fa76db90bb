//! The one place the engine calls `futex(2)` itself: sleeping on a 32-bit word and waking
//! every sleeper of it with one system call.
//!
//! The flush gate needs what `std::sync::Condvar` cannot give: a whole group of committers
//! woken by one `FUTEX_WAKE`, each of which returns without taking a lock again (a
//! condition variable hands every woken waiter its mutex in turn, a convoy of 64 threads
//! on two cores). Spurious returns are possible; callers re-check their condition.

use std::sync::atomic::AtomicU32;
use std::time::Duration;

/// Sleeps while `word` holds `expected`, at most `timeout` (forever if `None`). Returns
/// on a wake-up, a timeout, a signal, or at once if `word` no longer holds `expected`.
pub(crate) fn wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
    let ts = timeout.map(|d| libc::timespec {
        tv_sec: d.as_secs().min(i32::MAX as u64) as libc::time_t,
        tv_nsec: d.subsec_nanos() as libc::c_long,
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `word` is a live, aligned 32-bit atomic borrowed for the whole call; the
    // kernel only reads it (compare with `expected`). `ts_ptr` is null or points to a
    // local that outlives the call (a relative timeout, as FUTEX_WAIT takes). Every
    // outcome (0, EAGAIN, ETIMEDOUT, EINTR) means "re-check", so the result is not needed.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            expected,
            ts_ptr,
        );
    }
}

/// Wakes up to `n` threads sleeping on `word`.
pub(crate) fn wake(word: &AtomicU32, n: i32) {
    // SAFETY: the address of a live atomic is only used by the kernel as the key of its
    // wait queue; FUTEX_WAKE reads no memory through it.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            n,
        );
    }
}

/// Wakes every thread sleeping on `word`.
pub(crate) fn wake_all(word: &AtomicU32) {
    wake(word, i32::MAX);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn a_changed_word_returns_at_once_and_a_timeout_ends_the_wait() {
        let w = AtomicU32::new(1);
        let t0 = Instant::now();
        wait(&w, 0, Some(Duration::from_secs(5)));
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "word differs: no sleep"
        );
        let t0 = Instant::now();
        wait(&w, 1, Some(Duration::from_millis(30)));
        let dt = t0.elapsed();
        assert!(
            dt >= Duration::from_millis(25) && dt < Duration::from_secs(2),
            "{dt:?}"
        );
    }

    #[test]
    fn one_wake_all_wakes_every_sleeper_and_wake_one_wakes_one() {
        let w = Arc::new(AtomicU32::new(0));
        let woke = Arc::new(AtomicU32::new(0));
        let sleepers: Vec<_> = (0..8)
            .map(|_| {
                let (w, woke) = (Arc::clone(&w), Arc::clone(&woke));
                std::thread::spawn(move || {
                    while w.load(Ordering::SeqCst) == 0 {
                        wait(&w, 0, Some(Duration::from_secs(10)));
                    }
                    woke.fetch_add(1, Ordering::SeqCst);
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(50));
        // Woken without the word changing, a sleeper goes back to sleep: count none.
        wake(&w, 1);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(woke.load(Ordering::SeqCst), 0);
        let t0 = Instant::now();
        w.store(1, Ordering::SeqCst);
        wake_all(&w);
        for s in sleepers {
            s.join().unwrap();
        }
        assert_eq!(woke.load(Ordering::SeqCst), 8);
        assert!(t0.elapsed() < Duration::from_secs(5));
    }
}
