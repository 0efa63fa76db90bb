//! The portable backend: `pwritev` through the storage, on whichever thread writes.

use std::io;

use super::{advance_iovecs, iovecs, Backend, IOV_MAX};

pub(crate) struct Portable;

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
}
