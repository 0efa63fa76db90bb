//! The io_uring backend (the `io-uring` crate): a batch is one `Writev` submission,
//! waited for before `write_all_at` returns.
//!
//! Registered files and buffers are not used: measured here, the submission path is not
//! where time goes, and one vectored write is already a single SQE.
//!
//! The kernel reads the iovecs and the buffers they point into until the write's CQE is
//! posted, so `write_all_at` never returns, on any path, errors included, while its SQE
//! may still be in flight: once the SQE is queued, a failed `io_uring_enter` is retried
//! until the CQE is reaped (`reap_write`), and only then is the error reported. A ring
//! that can no longer be entered at all is polled for the CQE, which the kernel posts
//! whether or not anyone enters. The first error is what the caller sees (it poisons the
//! log).

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use io_uring::{opcode, types, IoUring};

use crate::storage::StorageFile;

use super::{advance_iovecs, iovecs, Backend, IOV_MAX};

const TOKEN_WRITE: u64 = 1;

pub(crate) struct Uring {
    ring: IoUring,
    /// Makes the next `io_uring_enter` that waits for a write fail as if the kernel had
    /// refused it (tests of the error path).
    #[cfg(test)]
    fail_next_enter: Option<i32>,
}

/// The OS descriptor of `file`: io_uring submits system calls itself, so it runs only on
/// the OS's storage.
fn os_fd(file: &dyn StorageFile) -> io::Result<RawFd> {
    file.raw_fd().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::Unsupported,
            "the io_uring backend needs files of the OS's storage",
        )
    })
}

impl Uring {
    pub(crate) fn new() -> io::Result<Uring> {
        let ring = IoUring::new(8)?;
        let mut u = Uring {
            ring,
            #[cfg(test)]
            fail_next_enter: None,
        };
        // A no-op round trip: some seccomp profiles allow io_uring_setup but refuse
        // io_uring_enter, and this is where to find out, not on the first commit.
        let nop = opcode::Nop::new().build().user_data(TOKEN_WRITE);
        // SAFETY: a no-op refers to no memory.
        unsafe { u.ring.submission().push(&nop) }
            .map_err(|_| io::Error::other("io_uring submission queue full at start"))?;
        u.ring.submit_and_wait(1)?;
        if u.take_write_cqe().is_none() {
            return Err(io::Error::other("io_uring no-op did not complete"));
        }
        Ok(u)
    }

    fn take_write_cqe(&mut self) -> Option<i32> {
        let mut res = None;
        for c in self.ring.completion() {
            if c.user_data() == TOKEN_WRITE {
                res = Some(c.result());
            }
        }
        res
    }

    fn enter_and_wait(&mut self) -> io::Result<()> {
        #[cfg(test)]
        if let Some(errno) = self.fail_next_enter.take() {
            // Submitted, as a real enter that then fails would have done.
            self.ring.submit()?;
            return Err(io::Error::from_raw_os_error(errno));
        }
        self.ring.submit_and_wait(1).map(|_| ())
    }

    /// Waits for the write's CQE, whatever `io_uring_enter` does: the SQE may be in
    /// flight and the caller's buffers must outlive it. Returns the CQE's result and the
    /// first enter error, if any.
    fn reap_write(&mut self) -> (i32, Option<io::Error>) {
        let mut first_err = None;
        let mut failures = 0u32;
        loop {
            if let Some(res) = self.take_write_cqe() {
                return (res, first_err);
            }
            match self.enter_and_wait() {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    failures = failures.saturating_add(1);
                    if first_err.is_none() {
                        tracing::error!(error = %e, "io_uring_enter failed with a write in flight; waiting for its completion before the buffers go");
                        first_err = Some(e);
                    }
                    // The kernel posts the CQE without being entered; poll for it.
                    if failures > 3 {
                        std::thread::sleep(Duration::from_micros(100));
                    }
                }
            }
        }
    }
}

impl Backend for Uring {
    fn name(&self) -> &'static str {
        "io_uring"
    }

    fn write_all_at(
        &mut self,
        file: &dyn StorageFile,
        mut offset: u64,
        bufs: &[&[u8]],
    ) -> io::Result<()> {
        let fd = os_fd(file)?;
        let mut iov = iovecs(bufs);
        while !iov.is_empty() {
            let n = iov.len().min(IOV_MAX);
            let sqe = opcode::Writev::new(types::Fd(fd), iov.as_ptr(), n as u32)
                .offset(offset)
                .build()
                .user_data(TOKEN_WRITE);
            // SAFETY: the SQE points at `iov` and, through it, into `bufs`; both outlive
            // this iteration, which does not end before `reap_write` has reaped the CQE
            // (on every path: `reap_write` returns only with it). `fd` is held open by
            // `file`, borrowed for the whole call. The queue is empty (one write at a
            // time, each reaped), so the push cannot fail for lack of room.
            let pushed = unsafe { self.ring.submission().push(&sqe) };
            if pushed.is_err() {
                return Err(io::Error::other("io_uring submission queue full"));
            }
            let (res, enter_err) = self.reap_write();
            if let Some(e) = enter_err {
                return Err(e);
            }
            if res < 0 {
                if res == -libc::EINTR || res == -libc::EAGAIN {
                    continue;
                }
                return Err(io::Error::from_raw_os_error(-res));
            }
            if res == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "io_uring writev wrote nothing",
                ));
            }
            offset += res as u64;
            advance_iovecs(&mut iov, res as usize);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn a_failed_enter_returns_only_after_the_write_completed() {
        let Ok(mut u) = Uring::new() else {
            eprintln!("SKIPPED: io_uring unavailable here");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let file = crate::storage::os()
            .open(&dir.path().join("f"), true, crate::storage::Create::New)
            .unwrap();
        let data: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
        u.fail_next_enter = Some(libc::EBUSY);
        let r = u.write_all_at(&*file, 0, &[&data]);
        let e = r.expect_err("the injected enter failure is reported");
        assert_eq!(e.raw_os_error(), Some(libc::EBUSY));
        // The write was in flight when enter failed, and was waited for: its CQE is gone
        // from the ring and its bytes are in the file, all of them, from the buffer
        // that was alive throughout.
        assert!(u.take_write_cqe().is_none());
        let mut got = Vec::new();
        std::fs::File::open(dir.path().join("f"))
            .unwrap()
            .read_to_end(&mut got)
            .unwrap();
        assert_eq!(got, data);
        drop(data);
        // The ring still works afterwards.
        u.write_all_at(&*file, 0, &[b"again"]).unwrap();
    }
}
