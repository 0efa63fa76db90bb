//! The io_uring backend (the `io-uring` crate).
//!
//! One ring per log writer. A batch is one `Writev` SQE; the flush is `Fsync` with
//! `DATASYNC`, one SQE per dirty file, left in flight while the writer thread goes on.
//! The writer sleeps in `io_uring_enter`, woken by a flush CQE, a timeout, or a `PollAdd`
//! on an eventfd that appenders signal through [`WriterWake`]. Registered files and
//! buffers are not used: measured here, the submission path is not where time goes
//! (`fdatasync` dominates), and one vectored write is already a single SQE.
//!
//! Every buffer and file descriptor an in-flight SQE refers to is kept alive until its
//! CQE has been reaped: writes are waited for before `write_all_at` returns, flushed
//! files are held in `flush_files`, and `Drop` drains the flush in flight.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use io_uring::{opcode, types, IoUring};

use crate::segment::SegmentFile;
use crate::storage::StorageFile;

use super::{advance_iovecs, iovecs, Backend, WriterWake, IOV_MAX};

const TOKEN_WRITE: u64 = 1;
const TOKEN_FLUSH: u64 = 2;
const TOKEN_WAKE: u64 = 3;

pub(crate) struct Uring {
    ring: IoUring,
    wake: Arc<WriterWake>,
    wake_fd: RawFd,
    poll_armed: bool,
    /// Files of the flush in flight, and how many of their CQEs are still due.
    flush_files: Vec<SegmentFile>,
    flush_due: usize,
    flush_error: Option<io::Error>,
    flush_done: Option<io::Result<()>>,
    write_result: Option<i32>,
}

/// The OS descriptor of `file`: io_uring submits system calls itself, so it runs only on
/// the OS's storage (on any other, `Auto` picks the portable backend).
fn os_fd(file: &dyn StorageFile) -> io::Result<RawFd> {
    file.raw_fd().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::Unsupported,
            "the io_uring backend needs files of the OS's storage",
        )
    })
}

/// Adds 1 to an eventfd, waking a ring that polls it.
pub(crate) fn signal_eventfd(fd: RawFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live local to a file descriptor the caller owns.
    // A failure (counter overflow, impossible here) only loses a wake-up that a timeout
    // recovers, so the result is deliberately ignored.
    let _ = unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
}

impl Uring {
    pub(crate) fn new() -> io::Result<Uring> {
        let ring = IoUring::new(64)?;
        // A no-op round trip: some seccomp profiles allow io_uring_setup but refuse
        // io_uring_enter, and this is where to find out, not on the first commit.
        let mut u = Uring {
            ring,
            wake: Arc::new(WriterWake::with_thread()),
            wake_fd: -1,
            poll_armed: false,
            flush_files: Vec::new(),
            flush_due: 0,
            flush_error: None,
            flush_done: None,
            write_result: None,
        };
        u.push(opcode::Nop::new().build().user_data(TOKEN_WRITE))?;
        u.ring.submit_and_wait(1)?;
        u.reap();
        if u.write_result.take().is_none() {
            return Err(io::Error::other("io_uring no-op did not complete"));
        }
        // SAFETY: plain syscall creating a new descriptor; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nobody else.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        u.wake_fd = owned.as_raw_fd();
        u.wake = Arc::new(WriterWake::with_eventfd(owned));
        Ok(u)
    }

    fn push(&mut self, entry: io_uring::squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: every pointer in `entry` (iovecs, fds) stays valid until its CQE is
            // reaped; see the module documentation for how each kind is kept alive.
            let pushed = unsafe { self.ring.submission().push(&entry) };
            if pushed.is_ok() {
                return Ok(());
            }
            // Submission queue full: hand what is queued to the kernel and retry.
            self.ring.submit()?;
        }
    }

    fn reap(&mut self) {
        let cqes: Vec<(u64, i32)> = self
            .ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        for (token, res) in cqes {
            match token {
                TOKEN_WRITE => self.write_result = Some(res),
                TOKEN_FLUSH => {
                    if res < 0 && self.flush_error.is_none() {
                        self.flush_error = Some(io::Error::from_raw_os_error(-res));
                    }
                    self.flush_due = self.flush_due.saturating_sub(1);
                    if self.flush_due == 0 && !self.flush_files.is_empty() {
                        self.flush_files.clear();
                        self.flush_done = Some(match self.flush_error.take() {
                            Some(e) => Err(e),
                            None => Ok(()),
                        });
                    }
                }
                TOKEN_WAKE => {
                    self.poll_armed = false;
                    let mut buf = 0u64;
                    // SAFETY: reads 8 bytes into a live local from our own non-blocking
                    // eventfd; EAGAIN (already drained) is fine.
                    let _ = unsafe { libc::read(self.wake_fd, (&mut buf as *mut u64).cast(), 8) };
                }
                _ => {}
            }
        }
    }

    fn enter(&mut self, want: usize, timeout: Option<Duration>) -> io::Result<()> {
        let r = match timeout {
            Some(t) => {
                let ts = types::Timespec::new()
                    .sec(t.as_secs())
                    .nsec(t.subsec_nanos());
                let args = types::SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(want, &args)
            }
            None => self.ring.submit_and_wait(want),
        };
        match r {
            Ok(_) => Ok(()),
            Err(e)
                if e.raw_os_error() == Some(libc::ETIME)
                    || e.kind() == io::ErrorKind::Interrupted =>
            {
                Ok(())
            }
            Err(e) => Err(e),
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
            self.write_result = None;
            self.push(sqe)?;
            // `iov` and the buffers it points into outlive this loop iteration, which
            // does not end before the write's CQE is reaped.
            while self.write_result.is_none() {
                self.enter(1, None)?;
                self.reap();
            }
            let res = self.write_result.take().unwrap_or(-libc::EIO);
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

    fn start_flush(&mut self, files: Vec<SegmentFile>) -> io::Result<()> {
        if files.is_empty() {
            self.flush_done = Some(Ok(()));
            return Ok(());
        }
        let fds = files
            .iter()
            .map(|f| os_fd(&**f))
            .collect::<io::Result<Vec<_>>>()?;
        self.flush_due = files.len();
        self.flush_error = None;
        for fd in fds {
            let sqe = opcode::Fsync::new(types::Fd(fd))
                .flags(types::FsyncFlags::DATASYNC)
                .build()
                .user_data(TOKEN_FLUSH);
            self.push(sqe)?;
        }
        self.flush_files = files;
        self.ring.submit()?;
        Ok(())
    }

    fn flush_in_flight(&self) -> bool {
        !self.flush_files.is_empty() || self.flush_done.is_some()
    }

    fn poll_flush(&mut self) -> Option<io::Result<()>> {
        if self.flush_done.is_none() && !self.flush_files.is_empty() {
            self.reap();
        }
        self.flush_done.take()
    }

    fn wait(&mut self, timeout: Option<Duration>, has_work: &dyn Fn() -> bool) {
        self.reap();
        if self.flush_done.is_some() {
            return;
        }
        if !self.poll_armed {
            let sqe = opcode::PollAdd::new(types::Fd(self.wake_fd), libc::POLLIN as u32)
                .build()
                .user_data(TOKEN_WAKE);
            if self.push(sqe).is_err() {
                return;
            }
            self.poll_armed = true;
        }
        if !self.wake.prepare_sleep(has_work) {
            return;
        }
        if let Err(e) = self.enter(1, timeout) {
            tracing::warn!(error = %e, "io_uring_enter failed while waiting");
        }
        self.wake.woke();
        self.reap();
    }

    fn wake(&self) -> Arc<WriterWake> {
        Arc::clone(&self.wake)
    }
}

impl Drop for Uring {
    fn drop(&mut self) {
        // The kernel may still use the fds of a flush in flight: wait for it.
        while !self.flush_files.is_empty() {
            if self.enter(1, Some(Duration::from_secs(1))).is_err() {
                break;
            }
            self.reap();
        }
    }
}
