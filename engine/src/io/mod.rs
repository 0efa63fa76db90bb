//! I/O backends for the log writer: one trait, two implementations.
//!
//! - [`portable`]: `pwritev` on the writer thread, `fdatasync` on a flusher thread so
//!   the next write overlaps the flush in flight.
//! - [`uring`]: `io-uring`. The batch is one `Writev` submission (measured here: one
//!   vectored write beats many small SQEs by ~1.5×); the flush is an `Fsync(DATASYNC)`
//!   left in flight while the writer goes on gathering and writing the next batch on the
//!   same thread; the writer sleeps in `io_uring_enter`, woken by a flush completion or
//!   by an appender through an eventfd that the ring polls.
//!
//! [`BackendKind::Auto`] tries io_uring and falls back to portable with one log line
//! when the kernel or a seccomp profile refuses it.
//!
//! At most one flush is in flight; a flush covers everything written before it started.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::Thread;
use std::time::Duration;

use crate::segment::SegmentFile;
use crate::storage::{Storage, StorageFile};

pub(crate) mod inline;
pub(crate) mod portable;
pub(crate) mod uring;

/// Which I/O backend the log writer uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendKind {
    /// io_uring if the kernel allows it, else portable (logged once).
    #[default]
    Auto,
    /// io_uring; opening the log fails if it is unavailable.
    IoUring,
    /// `pwritev` + `fdatasync` on a flusher thread.
    Portable,
}

impl std::str::FromStr for BackendKind {
    type Err = String;
    fn from_str(s: &str) -> Result<BackendKind, String> {
        match s.to_ascii_lowercase().replace('-', "_").as_str() {
            "auto" => Ok(BackendKind::Auto),
            "io_uring" | "iouring" | "uring" => Ok(BackendKind::IoUring),
            "portable" => Ok(BackendKind::Portable),
            other => Err(format!(
                "unknown I/O backend {other:?}: expected auto, io_uring or portable"
            )),
        }
    }
}

/// How appenders wake a sleeping log writer. Only the first notification after the
/// writer announced it is going to sleep costs a system call.
pub(crate) struct WriterWake {
    sleeping: AtomicBool,
    thread: OnceLock<Thread>,
    eventfd: Option<OwnedFd>,
}

impl WriterWake {
    pub(crate) fn with_thread() -> WriterWake {
        WriterWake {
            sleeping: AtomicBool::new(false),
            thread: OnceLock::new(),
            eventfd: None,
        }
    }

    pub(crate) fn with_eventfd(fd: OwnedFd) -> WriterWake {
        WriterWake {
            sleeping: AtomicBool::new(false),
            thread: OnceLock::new(),
            eventfd: Some(fd),
        }
    }

    /// Called on the writer thread before it first sleeps.
    pub(crate) fn bind_current_thread(&self) {
        let _ = self.thread.set(std::thread::current());
    }

    /// Wakes the writer if it is asleep or about to sleep.
    pub(crate) fn notify(&self) {
        if self.sleeping.swap(false, Ordering::SeqCst) {
            match &self.eventfd {
                Some(fd) => uring::signal_eventfd(fd.as_raw_fd()),
                None => {
                    if let Some(t) = self.thread.get() {
                        t.unpark();
                    }
                }
            }
        }
    }

    /// Announces that the writer is going to sleep; returns `false` (and cancels the
    /// announcement) if `has_work` says there is something to do after all.
    pub(crate) fn prepare_sleep(&self, has_work: &dyn Fn() -> bool) -> bool {
        self.sleeping.store(true, Ordering::SeqCst);
        if has_work() {
            self.sleeping.store(false, Ordering::SeqCst);
            return false;
        }
        true
    }

    pub(crate) fn woke(&self) {
        self.sleeping.store(false, Ordering::SeqCst);
    }
}

/// What the log writer needs from the operating system.
pub(crate) trait Backend: Send {
    /// The backend's name, for logs and benchmarks.
    fn name(&self) -> &'static str;

    /// Writes all of `bufs` contiguously at `offset` of `file`; returns once the bytes
    /// are in the OS (page cache). Retries short writes and `EINTR`. The default is the
    /// storage's own write (`pwritev` for an OS file); io_uring submits its own.
    fn write_all_at(
        &mut self,
        file: &dyn StorageFile,
        offset: u64,
        bufs: &[&[u8]],
    ) -> io::Result<()> {
        file.write_all_at(bufs, offset)
    }

    /// Starts an `fdatasync` of every file in `files`. At most one flush is in flight.
    fn start_flush(&mut self, files: Vec<SegmentFile>) -> io::Result<()>;

    /// Whether a flush is in flight.
    fn flush_in_flight(&self) -> bool;

    /// The outcome of the flush in flight, if it has completed.
    fn poll_flush(&mut self) -> Option<io::Result<()>>;

    /// Sleeps until an appender notifies the writer, the flush in flight completes, or
    /// `timeout` passes. `has_work` is re-checked after announcing sleep, so no wake-up is
    /// lost.
    fn wait(&mut self, timeout: Option<Duration>, has_work: &dyn Fn() -> bool);

    /// How appenders wake this writer.
    fn wake(&self) -> Arc<WriterWake>;
}

/// Opens the backend `kind` for files of `storage`: on storage other than the OS's,
/// `Auto` is the portable backend (its writes and flushes go through the storage) and
/// `IoUring` an error.
pub(crate) fn open(kind: BackendKind, storage: &dyn Storage) -> io::Result<Box<dyn Backend>> {
    if !storage.os_files() {
        return match kind {
            BackendKind::IoUring => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "the io_uring backend needs the OS's storage, not {:?}",
                    storage.name()
                ),
            )),
            BackendKind::Auto | BackendKind::Portable => Ok(Box::new(portable::Portable::new()?)),
        };
    }
    match kind {
        BackendKind::Portable => Ok(Box::new(portable::Portable::new()?)),
        BackendKind::IoUring => Ok(Box::new(uring::Uring::new()?)),
        BackendKind::Auto => match uring::Uring::new() {
            Ok(u) => Ok(Box::new(u)),
            Err(e) => {
                tracing::warn!(error = %e, "io_uring unavailable (kernel or seccomp refused it); using the portable pwritev+fdatasync backend");
                Ok(Box::new(portable::Portable::new()?))
            }
        },
    }
}

/// Advances an iovec list past `n` written bytes.
pub(crate) fn advance_iovecs(iov: &mut Vec<libc::iovec>, mut n: usize) {
    let mut drop = 0;
    for v in iov.iter_mut() {
        if n >= v.iov_len {
            n -= v.iov_len;
            drop += 1;
        } else {
            // SAFETY: `n < iov_len`, so the new base stays inside the same buffer.
            v.iov_base = unsafe { (v.iov_base as *mut u8).add(n) } as *mut libc::c_void;
            v.iov_len -= n;
            break;
        }
    }
    iov.drain(..drop);
}

/// Builds iovecs over `bufs`, skipping empty ones.
pub(crate) fn iovecs(bufs: &[&[u8]]) -> Vec<libc::iovec> {
    bufs.iter()
        .filter(|b| !b.is_empty())
        .map(|b| libc::iovec {
            iov_base: b.as_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        })
        .collect()
}

/// The most iovecs one system call takes.
pub(crate) const IOV_MAX: usize = 1024;

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn exercise(mut b: Box<dyn Backend>) {
        let dir = tempfile::tempdir().unwrap();
        let file: SegmentFile = crate::storage::os()
            .open(&dir.path().join("f"), true, crate::storage::Create::New)
            .unwrap();
        let mut f = std::fs::File::open(dir.path().join("f")).unwrap();
        let many: Vec<Vec<u8>> = (0..2000u32).map(|i| i.to_le_bytes().to_vec()).collect();
        let refs: Vec<&[u8]> = many.iter().map(|v| v.as_slice()).collect();
        b.write_all_at(&*file, 10, &refs).unwrap();
        b.write_all_at(&*file, 0, &[b"0123456789"]).unwrap();
        b.start_flush(vec![Arc::clone(&file), file]).unwrap();
        assert!(b.flush_in_flight());
        let mut done = None;
        for _ in 0..1000 {
            if let Some(r) = b.poll_flush() {
                done = Some(r);
                break;
            }
            b.wait(Some(Duration::from_millis(10)), &|| false);
        }
        done.expect("flush completes").unwrap();
        assert!(!b.flush_in_flight());
        let mut all = Vec::new();
        f.read_to_end(&mut all).unwrap();
        assert_eq!(&all[..10], b"0123456789");
        assert_eq!(all.len(), 10 + 8000);
        assert_eq!(&all[10 + 4 * 1999..], &1999u32.to_le_bytes());
    }

    #[test]
    fn portable_backend_writes_and_flushes() {
        exercise(open(BackendKind::Portable, &crate::storage::OsStorage).unwrap());
    }

    #[test]
    fn uring_backend_writes_and_flushes() {
        match open(BackendKind::IoUring, &crate::storage::OsStorage) {
            Ok(b) => exercise(b),
            Err(e) => eprintln!("SKIPPED: io_uring unavailable here: {e}"),
        }
    }

    #[test]
    fn wake_interrupts_wait() {
        for kind in [BackendKind::Portable, BackendKind::IoUring] {
            let Ok(mut b) = open(kind, &crate::storage::OsStorage) else {
                continue;
            };
            let wake = b.wake();
            wake.bind_current_thread();
            let w2 = Arc::clone(&wake);
            let t = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                w2.notify();
            });
            let start = std::time::Instant::now();
            b.wait(Some(Duration::from_secs(10)), &|| false);
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "{kind:?} woke on notify"
            );
            t.join().unwrap();
        }
    }

    #[test]
    fn advance_iovecs_partial() {
        let a = [1u8; 5];
        let b = [2u8; 5];
        let mut v = iovecs(&[&a, &[], &b]);
        assert_eq!(v.len(), 2);
        advance_iovecs(&mut v, 7);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].iov_len, 3);
    }
}
