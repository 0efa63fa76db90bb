//! The device baseline: what the file system under the log directory can do, measured in
//! the same run as the log so that ratios compare like with like on a noisy machine.
//!
//! - [`fsync_latency`]: one 4 KiB `pwrite` + `fdatasync` at a time, overwriting a file
//!   that was written in full and fsynced first (the case a recycled or zero-filled WAL
//!   segment is in);
//! - [`buffered_bandwidth`]: sequential 1 MiB `write` calls through the page cache, into
//!   an already-written file and into a new one, each with and without a final
//!   `fdatasync`, warm-up repetition first and the variants interleaved (A B A B).

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::hgrm::latency_histogram;
use crate::{median, MB};

const CHUNK: usize = 1 << 20;

fn ctx(op: &str, path: &Path) -> impl FnOnce(io::Error) -> io::Error {
    let what = format!("{op} {}", path.display());
    move |e| io::Error::new(e.kind(), format!("{what}: {e}"))
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Writes `bytes` of zeros to a new file at `path` in 1 MiB writes and fsyncs it.
pub(crate) fn preallocate(path: &Path, bytes: u64) -> io::Result<File> {
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(ctx("create", path))?;
    let zeros = vec![0u8; CHUNK];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        f.write_all(&zeros[..n])
            .map_err(ctx("write zeros to", path))?;
        left -= n as u64;
    }
    f.sync_all().map_err(ctx("fsync", path))?;
    Ok(f)
}

/// Single-writer 4 KiB `pwrite` + `fdatasync` latency.
#[derive(Debug, Clone)]
pub struct FsyncLatency {
    /// Latency of each write + flush, nanoseconds.
    pub hist: Histogram<u64>,
    /// Wall time of the measured iterations.
    pub elapsed: Duration,
}

impl FsyncLatency {
    /// Write + flush operations per second, back to back.
    pub fn ops_per_sec(&self) -> f64 {
        self.hist.len() as f64 / self.elapsed.as_secs_f64()
    }

    /// Latency at quantile `q`, nanoseconds.
    pub fn at(&self, q: f64) -> u64 {
        self.hist.value_at_quantile(q)
    }
}

/// Measures `iterations` × (4 KiB `pwrite` at the next offset + `fdatasync`) into a file
/// of `file_bytes` written in full and fsynced first, after `warmup` unrecorded ones.
/// Offsets increase and wrap around at the end of the file. The file is removed after.
///
/// # Errors
/// I/O errors, naming the file.
pub fn fsync_latency(
    dir: &Path,
    file_bytes: u64,
    warmup: usize,
    iterations: usize,
) -> io::Result<FsyncLatency> {
    const BLOCK: u64 = 4096;
    let path = dir.join("device-fsync.dat");
    let f = preallocate(&path, file_bytes)?;
    let blocks = (file_bytes / BLOCK).max(1);
    let buf = pattern(BLOCK as usize, 7);
    let mut hist = latency_histogram();
    let mut i = 0u64;
    let mut one = |f: &File| -> io::Result<Duration> {
        let off = (i % blocks) * BLOCK;
        i += 1;
        let t0 = Instant::now();
        f.write_all_at(&buf, off).map_err(ctx("pwrite", &path))?;
        f.sync_data().map_err(ctx("fdatasync", &path))?;
        Ok(t0.elapsed())
    };
    for _ in 0..warmup {
        one(&f)?;
    }
    let start = Instant::now();
    for _ in 0..iterations {
        let d = one(&f)?;
        hist.saturating_record(d.as_nanos() as u64);
    }
    let elapsed = start.elapsed();
    drop(f);
    std::fs::remove_file(&path).map_err(ctx("remove", &path))?;
    Ok(FsyncLatency { hist, elapsed })
}

/// One timed pass of sequential buffered writes.
#[derive(Debug, Clone, Copy)]
pub struct Pass {
    /// Time for the `write` calls.
    pub write: Duration,
    /// Time for the `fdatasync` after them.
    pub sync: Duration,
}

/// Buffered sequential write bandwidth, per variant: one warm-up pass and the measured
/// passes, interleaved overwrite / new file.
#[derive(Debug, Clone)]
pub struct Bandwidth {
    /// Bytes per pass.
    pub bytes: u64,
    /// Warm-up pass into the already-written file (not in the medians).
    pub warmup_overwrite: Pass,
    /// Warm-up pass into a new file (not in the medians).
    pub warmup_new: Pass,
    /// Measured passes into the already-written file.
    pub overwrite: Vec<Pass>,
    /// Measured passes into a new file (created, written, flushed, removed each pass).
    pub new_file: Vec<Pass>,
}

impl Pass {
    /// MB/s of the `write` calls alone, or including the final `fdatasync`.
    pub fn mb_s(&self, bytes: u64, with_sync: bool) -> f64 {
        let t = if with_sync {
            self.write + self.sync
        } else {
            self.write
        };
        bytes as f64 / MB / t.as_secs_f64()
    }
}

impl Bandwidth {
    /// Median MB/s writing into the already-written file.
    pub fn overwrite_mb_s(&self, with_sync: bool) -> f64 {
        median(
            self.overwrite
                .iter()
                .map(|p| p.mb_s(self.bytes, with_sync))
                .collect::<Vec<f64>>(),
        )
    }

    /// Median MB/s writing a new file.
    pub fn new_file_mb_s(&self, with_sync: bool) -> f64 {
        median(
            self.new_file
                .iter()
                .map(|p| p.mb_s(self.bytes, with_sync))
                .collect::<Vec<f64>>(),
        )
    }
}

fn write_pass(f: &mut File, path: &Path, bytes: u64, buf: &[u8]) -> io::Result<Pass> {
    f.rewind().map_err(ctx("seek", path))?;
    let t0 = Instant::now();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n]).map_err(ctx("write", path))?;
        left -= n as u64;
    }
    let write = t0.elapsed();
    let t1 = Instant::now();
    f.sync_data().map_err(ctx("fdatasync", path))?;
    Ok(Pass {
        write,
        sync: t1.elapsed(),
    })
}

fn new_file_pass(path: &PathBuf, bytes: u64, buf: &[u8]) -> io::Result<Pass> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(ctx("create", path))?;
    let p = write_pass(&mut f, path, bytes, buf);
    drop(f);
    std::fs::remove_file(path).map_err(ctx("remove", path))?;
    p
}

/// Measures buffered sequential write bandwidth with 1 MiB `write` calls, `bytes` per
/// pass: a warm-up pass of each variant, then `reps` passes of each, interleaved.
///
/// # Errors
/// I/O errors, naming the file.
pub fn buffered_bandwidth(dir: &Path, bytes: u64, reps: usize) -> io::Result<Bandwidth> {
    let over_path = dir.join("device-bw-overwrite.dat");
    let new_path = dir.join("device-bw-new.dat");
    let _ = std::fs::remove_file(&new_path);
    let buf = pattern(CHUNK, 3);
    let mut over = preallocate(&over_path, bytes)?;
    let warmup_overwrite = write_pass(&mut over, &over_path, bytes, &buf)?;
    let warmup_new = new_file_pass(&new_path, bytes, &buf)?;
    let mut overwrite = Vec::with_capacity(reps);
    let mut new_file = Vec::with_capacity(reps);
    for _ in 0..reps {
        overwrite.push(write_pass(&mut over, &over_path, bytes, &buf)?);
        new_file.push(new_file_pass(&new_path, bytes, &buf)?);
    }
    drop(over);
    std::fs::remove_file(&over_path).map_err(ctx("remove", &over_path))?;
    Ok(Bandwidth {
        bytes,
        warmup_overwrite,
        warmup_new,
        overwrite,
        new_file,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_device_runs() {
        let dir = tempfile::tempdir().unwrap();
        let l = fsync_latency(dir.path(), 1 << 20, 2, 10).unwrap();
        assert_eq!(l.hist.len(), 10);
        assert!(l.ops_per_sec() > 0.0);
        let b = buffered_bandwidth(dir.path(), 2 << 20, 2).unwrap();
        assert_eq!((b.overwrite.len(), b.new_file.len()), (2, 2));
        assert!(b.overwrite_mb_s(false) > 0.0 && b.new_file_mb_s(true) > 0.0);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "files removed"
        );
    }

    #[test]
    fn medians() {
        assert_eq!(median(vec![]), 0.0);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
