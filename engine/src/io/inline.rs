//! The inline backend, for a log its caller drives ([`Drive::Manual`](crate::Drive)):
//! writes through the storage on the calling thread, and a flush that completes when it
//! starts (each file's `fdatasync` runs inside `start_flush`, and `poll_flush` returns
//! its outcome). No thread, nothing to wait for: a simulation steps it.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use super::{Backend, WriterWake};
use crate::segment::SegmentFile;

pub(crate) struct Inline {
    done: Option<io::Result<()>>,
    wake: Arc<WriterWake>,
}

impl Inline {
    pub(crate) fn new() -> Inline {
        Inline {
            done: None,
            wake: Arc::new(WriterWake::with_thread()),
        }
    }
}

impl Backend for Inline {
    fn name(&self) -> &'static str {
        "inline"
    }

    fn start_flush(&mut self, files: Vec<SegmentFile>) -> io::Result<()> {
        let mut result = Ok(());
        for f in &files {
            if let Err(e) = f.sync_data() {
                result = Err(e);
                break;
            }
        }
        self.done = Some(result);
        Ok(())
    }

    fn flush_in_flight(&self) -> bool {
        self.done.is_some()
    }

    fn poll_flush(&mut self) -> Option<io::Result<()>> {
        self.done.take()
    }

    fn wait(&mut self, _timeout: Option<Duration>, _has_work: &dyn Fn() -> bool) {}

    fn wake(&self) -> Arc<WriterWake> {
        Arc::clone(&self.wake)
    }
}
