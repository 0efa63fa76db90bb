//! The portable backend: `pwritev` on the writer thread and `fdatasync` on a flusher
//! thread, so a write can proceed while the previous flush is in flight.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::{advance_iovecs, iovecs, Backend, WriterWake, IOV_MAX};
use crate::segment::SegmentFile;

pub(crate) struct Portable {
    jobs: Option<Sender<Vec<SegmentFile>>>,
    done: Receiver<io::Result<()>>,
    in_flight: bool,
    /// Set by the flusher before it notifies, so a writer about to sleep sees it.
    completed: Arc<AtomicBool>,
    wake: Arc<WriterWake>,
    flusher: Option<JoinHandle<()>>,
}

impl Portable {
    pub(crate) fn new() -> io::Result<Portable> {
        let (jobs_tx, jobs_rx) = channel::<Vec<SegmentFile>>();
        let (done_tx, done_rx) = channel();
        let wake = Arc::new(WriterWake::with_thread());
        let w = Arc::clone(&wake);
        let completed = Arc::new(AtomicBool::new(false));
        let c = Arc::clone(&completed);
        let flusher = std::thread::Builder::new()
            .name("walship-flusher".into())
            .spawn(move || {
                for files in jobs_rx {
                    let mut res = Ok(());
                    for f in &files {
                        if let Err(e) = f.sync_data() {
                            res = Err(e);
                            break;
                        }
                    }
                    // Let go of the files before saying the flush is done: a truncation
                    // that waited for it replaces a segment's file next, and no
                    // descriptor of the old one may outlive that (the model test saw
                    // this thread still holding one, once in a few hundred cases).
                    drop(files);
                    if done_tx.send(res).is_err() {
                        return;
                    }
                    c.store(true, Ordering::SeqCst);
                    w.notify();
                }
            })?;
        Ok(Portable {
            jobs: Some(jobs_tx),
            done: done_rx,
            in_flight: false,
            completed,
            wake,
            flusher: Some(flusher),
        })
    }
}

/// `pwritev` until everything is written.
pub(crate) fn pwritev_all(fd: i32, mut offset: u64, bufs: &[&[u8]]) -> io::Result<()> {
    let mut iov = iovecs(bufs);
    while !iov.is_empty() {
        let n = iov.len().min(IOV_MAX);
        // SAFETY: every iovec points into a live slice of `bufs` (or a suffix of one, after
        // `advance_iovecs`), borrowed for the whole call.
        let r = unsafe { libc::pwritev(fd, iov.as_ptr(), n as i32, offset as libc::off_t) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if r == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "pwritev wrote nothing",
            ));
        }
        offset += r as u64;
        advance_iovecs(&mut iov, r as usize);
    }
    Ok(())
}

impl Backend for Portable {
    fn name(&self) -> &'static str {
        "portable"
    }

    fn start_flush(&mut self, files: Vec<SegmentFile>) -> io::Result<()> {
        let jobs = self
            .jobs
            .as_ref()
            .ok_or_else(|| io::Error::other("flusher stopped"))?;
        jobs.send(files)
            .map_err(|_| io::Error::other("flusher thread exited"))?;
        self.in_flight = true;
        Ok(())
    }

    fn flush_in_flight(&self) -> bool {
        self.in_flight
    }

    fn poll_flush(&mut self) -> Option<io::Result<()>> {
        if !self.in_flight {
            return None;
        }
        match self.done.try_recv() {
            Ok(r) => {
                self.completed.store(false, Ordering::SeqCst);
                self.in_flight = false;
                Some(r)
            }
            Err(std::sync::mpsc::TryRecvError::Empty) => None,
            Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                self.in_flight = false;
                Some(Err(io::Error::other("flusher thread exited")))
            }
        }
    }

    fn wait(&mut self, timeout: Option<Duration>, has_work: &dyn Fn() -> bool) {
        self.wake.bind_current_thread();
        let flush_done = || self.completed.load(Ordering::SeqCst);
        if !self.wake.prepare_sleep(&|| has_work() || flush_done()) {
            return;
        }
        match timeout {
            Some(t) => std::thread::park_timeout(t),
            None => std::thread::park(),
        }
        self.wake.woke();
    }

    fn wake(&self) -> Arc<WriterWake> {
        Arc::clone(&self.wake)
    }
}

impl Drop for Portable {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(h) = self.flusher.take() {
            let _ = h.join();
        }
    }
}
