//! Single-core zstd speed on the replication benchmark's data: what one core can
//! compress and decompress, frame by frame, at a given level and frame size. This is the
//! ceiling for a replication stream compressed by one thread, and the denominator of the
//! "replication with zstd / single-core compression" ratio.

use std::io;
use std::time::{Duration, Instant};

use crate::median;

/// The result of [`measure`].
#[derive(Debug, Clone)]
pub struct ZstdSpeed {
    /// zstd level.
    pub level: i32,
    /// Raw bytes per frame (the last frame may be shorter).
    pub frame_bytes: usize,
    /// Frames per pass.
    pub frames: usize,
    /// Raw bytes per pass.
    pub input_bytes: u64,
    /// Compressed bytes per pass.
    pub compressed_bytes: u64,
    /// Seconds per compression pass, one entry per repetition.
    pub compress_secs: Vec<f64>,
    /// Seconds per decompression pass, one entry per repetition.
    pub decompress_secs: Vec<f64>,
}

impl ZstdSpeed {
    /// Raw bytes / compressed bytes.
    pub fn ratio(&self) -> f64 {
        self.input_bytes as f64 / self.compressed_bytes.max(1) as f64
    }

    /// Median compression speed, MB/s of raw input.
    pub fn compress_mb_s(&self) -> f64 {
        self.input_bytes as f64 / crate::MB / median(&self.compress_secs)
    }

    /// Median decompression speed, MB/s of raw output.
    pub fn decompress_mb_s(&self) -> f64 {
        self.input_bytes as f64 / crate::MB / median(&self.decompress_secs)
    }
}

/// Compresses `data` cut into `frame_bytes` frames, each an independent zstd frame at
/// `level` with one reused context on the calling thread, `reps` times (after a warm-up
/// pass over up to 8 MiB); then decompresses the frames `reps` times, checking the first
/// pass's output against the input.
pub fn measure(data: &[u8], frame_bytes: usize, level: i32, reps: usize) -> io::Result<ZstdSpeed> {
    measure_with(data, frame_bytes, level, reps, None)
}

/// [`measure`] with every frame compressed (and decompressed) against `dictionary`.
pub fn measure_with(
    data: &[u8],
    frame_bytes: usize,
    level: i32,
    reps: usize,
    dictionary: Option<&[u8]>,
) -> io::Result<ZstdSpeed> {
    if frame_bytes == 0 || data.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "zstd speed: empty data or zero frame size",
        ));
    }
    let reps = reps.max(1);
    let mut cctx = match dictionary {
        Some(d) => zstd::bulk::Compressor::with_dictionary(level, d)?,
        None => zstd::bulk::Compressor::new(level)?,
    };
    let bound = zstd::compress_bound(frame_bytes);
    let mut out = Vec::with_capacity(bound);
    // Warm-up: page in the input and settle the CPU frequency.
    for frame in data.chunks(frame_bytes).take((8 << 20) / frame_bytes + 1) {
        out.clear();
        cctx.compress_to_buffer(frame, &mut out)?;
    }
    let frames = data.chunks(frame_bytes).count();
    let mut compressed: Vec<Vec<u8>> = Vec::with_capacity(frames);
    let mut compress_secs = Vec::with_capacity(reps);
    for rep in 0..reps {
        let start = Instant::now();
        if rep == 0 {
            for frame in data.chunks(frame_bytes) {
                let mut z = Vec::with_capacity(bound);
                cctx.compress_to_buffer(frame, &mut z)?;
                compressed.push(z);
            }
        } else {
            for frame in data.chunks(frame_bytes) {
                out.clear();
                cctx.compress_to_buffer(frame, &mut out)?;
            }
        }
        compress_secs.push(secs(start.elapsed()));
    }
    let compressed_bytes = compressed.iter().map(|z| z.len() as u64).sum();

    let mut dctx = match dictionary {
        Some(d) => zstd::bulk::Decompressor::with_dictionary(d)?,
        None => zstd::bulk::Decompressor::new()?,
    };
    let mut plain = Vec::with_capacity(frame_bytes);
    let mut decompress_secs = Vec::with_capacity(reps);
    for rep in 0..reps {
        let start = Instant::now();
        for (i, z) in compressed.iter().enumerate() {
            plain.clear();
            dctx.decompress_to_buffer(z.as_slice(), &mut plain)?;
            if rep == 0 {
                let lo = i * frame_bytes;
                let hi = (lo + frame_bytes).min(data.len());
                if plain.as_slice() != &data[lo..hi] {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("zstd round trip differs in frame {i}"),
                    ));
                }
            }
        }
        decompress_secs.push(secs(start.elapsed()));
    }
    Ok(ZstdSpeed {
        level,
        frame_bytes,
        frames,
        input_bytes: data.len() as u64,
        compressed_bytes,
        compress_secs,
        decompress_secs,
    })
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64().max(1e-9)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    // The medians are taken of borrowed slices, as the binaries' callers do.
    #[allow(clippy::needless_borrows_for_generic_args)]
    fn measures_wal_data() {
        let data = crate::waldata::encode_stream(&crate::waldata::batches(5, 2 << 20, 64 << 10));
        let s = measure(&data, 256 << 10, 1, 2).map_err(|e| e.to_string());
        let s = s.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.frames, data.len().div_ceil(256 << 10));
        assert!(s.ratio() > 2.0, "ratio {}", s.ratio());
        assert!(s.compress_mb_s() > 0.0 && s.decompress_mb_s() > s.compress_mb_s() / 4.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn refuses_empty_input() {
        assert!(measure(&[], 1024, 1, 1).is_err());
        assert!(measure(b"abc", 0, 1, 1).is_err());
    }
}
