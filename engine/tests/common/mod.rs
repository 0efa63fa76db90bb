//! Helpers shared by the engine's integration tests.
#![allow(dead_code)]

use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use walship_engine::{BackendKind, Log, Lsn, Options};

/// Every backend this machine supports: the whole suite runs against each.
pub fn backends() -> Vec<BackendKind> {
    let mut v = vec![BackendKind::Portable];
    let probe = tempfile::tempdir().expect("tempdir");
    match Log::open(probe.path(), small(BackendKind::IoUring)) {
        Ok(l) => {
            drop(l);
            v.push(BackendKind::IoUring);
        }
        Err(e) => eprintln!("NOTE: io_uring unavailable, testing the portable backend only: {e}"),
    }
    v
}

/// Options with 64 KiB segments, so tests cross segment boundaries often.
pub fn small(backend: BackendKind) -> Options {
    Options {
        segment_capacity: 64 * 1024,
        backend,
        async_flush_interval: Duration::from_millis(20),
        ..Options::default()
    }
}

/// As [`small`], checking every batch of every segment on open.
pub fn verified(backend: BackendKind) -> Options {
    Options {
        verify_all_on_open: true,
        ..small(backend)
    }
}

/// A deterministic PRNG (splitmix64) so failing seeds replay.
#[allow(unused_imports)]
pub use walship_engine::storage::SimRng as Rng;

/// The payload of record `seq`: self-describing, of a length that varies with `seq`.
pub fn payload(seq: u64, max_len: usize) -> Vec<u8> {
    let head = format!("rec-{seq:08}:");
    let len = head.len() + (seq.wrapping_mul(2_654_435_761) % max_len as u64) as usize;
    let mut v = head.into_bytes();
    while v.len() < len {
        v.push(b'a' + (v.len() % 26) as u8);
    }
    v
}

/// A payload of exactly `len` bytes, different for every `seq` (xorshift from it):
/// for tests that choose record sizes to the byte.
pub fn exact_payload(seq: u64, len: usize) -> Vec<u8> {
    let mut x = (seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ len as u64) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

struct CountingWaker(std::sync::atomic::AtomicUsize, std::thread::Thread);

impl Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.1.unpark();
    }
}

/// A minimal executor: polls `fut` on this thread, parking until woken; fails the test
/// if it has not finished after `limit`.
pub fn run_async<F: std::future::Future>(fut: F, limit: Duration) -> F::Output {
    let w = Arc::new(CountingWaker(Default::default(), std::thread::current()));
    let waker = Waker::from(Arc::clone(&w));
    let mut cx = Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        let now = std::time::Instant::now();
        assert!(now < deadline, "future did not complete within {limit:?}");
        std::thread::park_timeout(deadline - now);
    }
}

/// Every record of `log` from its start: `(commit token, payload)`.
pub fn read_all(log: &Log) -> Vec<(Lsn, Vec<u8>)> {
    let mut r = log.record_reader(log.start_lsn()).unwrap();
    let mut out = Vec::new();
    while let Some(rec) = r.try_next().unwrap() {
        out.push((rec.lsn, rec.data.to_vec()));
    }
    out
}
