//! I/O backends: how the write path puts a batch into the page cache.
//!
//! - [`portable`]: `pwritev` through the storage (the default).
//! - [`uring`]: one `Writev` submission to an io_uring, waited for.
//! - [`inline`]: a manually driven log's (the storage's write, on the caller's thread).
//!
//! Flushes are not the backend's: whoever leads a flush (`flush_gate.rs`) calls
//! `fdatasync` on its own thread, since a committer waiting for its own flush gains
//! nothing from handing it to a ring or another thread (bench/RESULTS.md, issue 13).
//! [`BackendKind::IoUring`] stays for comparison; [`BackendKind::Auto`] is the portable
//! backend, because io_uring measured no faster for a synchronous write (issue 13).

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::thread::Thread;

use crate::storage::{Storage, StorageFile};

pub(crate) mod inline;
pub(crate) mod portable;
pub(crate) mod uring;

/// Which I/O backend the log writer uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendKind {
    /// The best measured here: portable (see the module documentation).
    #[default]
    Auto,
    /// io_uring; opening the log fails if it is unavailable.
    IoUring,
    /// `pwritev` through the storage.
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

/// How a background thread (writer or flusher) is woken. Only the first notification after the
/// writer announced it is going to sleep costs a system call.
pub(crate) struct WriterWake {
    sleeping: AtomicBool,
    thread: OnceLock<Thread>,
}

impl WriterWake {
    pub(crate) fn new() -> WriterWake {
        WriterWake {
            sleeping: AtomicBool::new(false),
            thread: OnceLock::new(),
        }
    }

    /// Called on the writer thread before it first sleeps.
    pub(crate) fn bind_current_thread(&self) {
        let _ = self.thread.set(std::thread::current());
    }

    /// Wakes the writer if it is asleep or about to sleep.
    pub(crate) fn notify(&self) {
        if self.sleeping.swap(false, Ordering::SeqCst) {
            if let Some(t) = self.thread.get() {
                t.unpark();
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

/// How the write path writes a batch.
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
            BackendKind::Auto | BackendKind::Portable => Ok(Box::new(portable::Portable)),
        };
    }
    match kind {
        BackendKind::Auto | BackendKind::Portable => Ok(Box::new(portable::Portable)),
        BackendKind::IoUring => Ok(Box::new(uring::Uring::new()?)),
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
    use crate::segment::SegmentFile;
    use std::io::Read;

    fn exercise(mut b: Box<dyn Backend>) {
        let dir = tempfile::tempdir().unwrap();
        let file: SegmentFile = crate::storage::os()
            .open(&dir.path().join("f"), true, crate::storage::Create::New)
            .unwrap();
        let mut f = std::fs::File::open(dir.path().join("f")).unwrap();
        // More slices than one system call takes.
        let many: Vec<Vec<u8>> = (0..2000u32).map(|i| i.to_le_bytes().to_vec()).collect();
        let refs: Vec<&[u8]> = many.iter().map(|v| v.as_slice()).collect();
        b.write_all_at(&*file, 10, &refs).unwrap();
        b.write_all_at(&*file, 0, &[b"0123456789"]).unwrap();
        let mut all = Vec::new();
        f.read_to_end(&mut all).unwrap();
        assert_eq!(&all[..10], b"0123456789");
        assert_eq!(all.len(), 10 + 8000);
        assert_eq!(&all[10 + 4 * 1999..], &1999u32.to_le_bytes());
    }

    #[test]
    fn portable_backend_writes() {
        exercise(open(BackendKind::Portable, &crate::storage::OsStorage).unwrap());
    }

    #[test]
    fn uring_backend_writes() {
        match open(BackendKind::IoUring, &crate::storage::OsStorage) {
            Ok(b) => exercise(b),
            Err(e) => eprintln!("SKIPPED: io_uring unavailable here: {e}"),
        }
    }

    #[test]
    fn wake_unparks_a_sleeping_thread() {
        let wake = std::sync::Arc::new(WriterWake::new());
        let w2 = std::sync::Arc::clone(&wake);
        let t = std::thread::spawn(move || {
            w2.bind_current_thread();
            assert!(w2.prepare_sleep(&|| false));
            std::thread::park_timeout(std::time::Duration::from_secs(10));
            w2.woke();
        });
        let start = std::time::Instant::now();
        while !t.is_finished() {
            wake.notify();
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        t.join().unwrap();
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
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
