//! zstd for `Ship` frames: the leader compresses runs of batches when it pays, the
//! follower decompresses into a buffer bounded by the frame's declared raw length.
//!
//! Compression is skipped for frames under [`CompressionOptions::min_bytes`] and whenever
//! it saves less than an eighth; after a frame where it did not pay, the next
//! [`BACKOFF_FRAMES`] go out uncompressed without trying, so incompressible data (already
//! compressed or encrypted payloads) costs almost no CPU.
//!
//! With [`CompressionOptions::adapt`] the level moves with what the sender waits on
//! ([`adapt`]): up on a slow link, down to shipping raw where the CPU is the limit.

use bytes::Bytes;

use crate::wire::Compression;

pub mod adapt;
pub use adapt::Adapt;

/// The levels zstd accepts (negative ones are faster); outside them it clamps silently,
/// so settings are checked against this.
pub fn levels() -> std::ops::RangeInclusive<i32> {
    zstd::zstd_safe::min_c_level()..=zstd::zstd_safe::max_c_level()
}

/// Frames sent uncompressed without trying after one where compression did not pay.
pub const BACKOFF_FRAMES: u32 = 16;

/// How the leader compresses log data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompressionOptions {
    /// The zstd level (negative levels are faster), or `None` to ship data as stored;
    /// with `adapt`, the level a session starts at.
    pub level: Option<i32>,
    /// Move the level within this range by what the link is measured to carry
    /// ([`adapt`]); `None` keeps `level` fixed.
    pub adapt: Option<Adapt>,
    /// Frames with less raw data than this are sent uncompressed.
    pub min_bytes: usize,
}

impl Default for CompressionOptions {
    /// Starting at level 1 (MACHINE.md: 3–5× on WAL-like rows at 350–530 MB/s on one
    /// core) and adapting between shipping raw and level 6 ([`Adapt::default`]); frames
    /// of 1 KiB and more. Adaptive is the default because it shipped more than a fixed
    /// level 1 on every path measured (bench/RESULTS.md, "the adaptive level").
    fn default() -> Self {
        CompressionOptions {
            level: Some(1),
            adapt: Some(Adapt::default()),
            min_bytes: 1024,
        }
    }
}

/// Why compressed data was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// zstd could not compress (only on resource exhaustion).
    #[error("zstd compression failed: {0}")]
    Compress(String),
    /// The data is not a valid zstd frame or decompresses to more than declared.
    #[error("zstd data does not decompress within {raw_len} bytes: {reason}")]
    Decompress {
        /// The declared raw length.
        raw_len: u32,
        /// zstd's explanation.
        reason: String,
    },
    /// The data decompressed to fewer bytes than declared.
    #[error("zstd data decompressed to {found} bytes, {raw_len} declared")]
    Length {
        /// The declared raw length.
        raw_len: u32,
        /// What came out.
        found: usize,
    },
}

/// The leader's side: one per sender, reusing its zstd context.
pub struct Compressor {
    opts: CompressionOptions,
    ctx: Option<zstd::bulk::Compressor<'static>>,
    /// The level `ctx` is set to; `None` ships raw.
    level: Option<i32>,
    skip: u32,
}

impl std::fmt::Debug for Compressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compressor")
            .field("opts", &self.opts)
            .field("level", &self.level)
            .field("skip", &self.skip)
            .finish()
    }
}

impl Compressor {
    /// A compressor for `opts`.
    ///
    /// # Errors
    /// [`CodecError::Compress`] if zstd cannot create a context at that level.
    pub fn new(opts: CompressionOptions) -> Result<Compressor, CodecError> {
        let ctx = match opts.level {
            Some(level) => Some(
                zstd::bulk::Compressor::new(level)
                    .map_err(|e| CodecError::Compress(e.to_string()))?,
            ),
            None => None,
        };
        Ok(Compressor {
            opts,
            ctx,
            level: opts.level,
            skip: 0,
        })
    }

    /// The level frames are compressed at now (`None`: shipped raw).
    pub fn level(&self) -> Option<i32> {
        self.level
    }

    /// Compresses the next frames at `level` (`None`: ships them raw).
    ///
    /// # Errors
    /// [`CodecError::Compress`] if zstd refuses the level; the old one stays.
    pub fn set_level(&mut self, level: Option<i32>) -> Result<(), CodecError> {
        if level == self.level {
            return Ok(());
        }
        if let Some(l) = level {
            let err = |e: std::io::Error| CodecError::Compress(format!("level {l}: {e}"));
            match self.ctx.as_mut() {
                Some(ctx) => ctx.set_compression_level(l).map_err(err)?,
                None => self.ctx = Some(zstd::bulk::Compressor::new(l).map_err(err)?),
            }
        }
        self.level = level;
        Ok(())
    }

    /// Encodes `raw` for a `Ship` frame: compressed if that is on, the frame is large
    /// enough, and it saves at least an eighth; otherwise `raw` itself.
    pub fn encode(&mut self, raw: Bytes) -> (Compression, Bytes) {
        if self.level.is_none() {
            return (Compression::None, raw);
        }
        let Some(ctx) = self.ctx.as_mut() else {
            return (Compression::None, raw);
        };
        if raw.len() < self.opts.min_bytes {
            return (Compression::None, raw);
        }
        if self.skip > 0 {
            self.skip -= 1;
            return (Compression::None, raw);
        }
        match ctx.compress(&raw) {
            Ok(c) if c.len() <= raw.len() - raw.len() / 8 => (Compression::Zstd, Bytes::from(c)),
            Ok(_) => {
                self.skip = BACKOFF_FRAMES;
                (Compression::None, raw)
            }
            Err(e) => {
                tracing::warn!(error = %e, "zstd compression failed; shipping uncompressed");
                self.skip = BACKOFF_FRAMES;
                (Compression::None, raw)
            }
        }
    }
}

/// The follower's side: one per connection, reusing its zstd context.
pub struct Decompressor {
    ctx: zstd::bulk::Decompressor<'static>,
}

impl std::fmt::Debug for Decompressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Decompressor")
    }
}

impl Decompressor {
    /// A decompressor.
    ///
    /// # Errors
    /// [`CodecError::Decompress`] if zstd cannot create a context.
    pub fn new() -> Result<Decompressor, CodecError> {
        let ctx = zstd::bulk::Decompressor::new().map_err(|e| CodecError::Decompress {
            raw_len: 0,
            reason: e.to_string(),
        })?;
        Ok(Decompressor { ctx })
    }

    /// The raw bytes of `data` encoded as `compression`, which must be exactly
    /// `raw_len` long. At most `raw_len` bytes are allocated (the wire decoder has
    /// already bounded `raw_len`), whatever the data claims.
    ///
    /// # Errors
    /// [`CodecError`] for data that is not valid zstd or not exactly `raw_len` bytes.
    pub fn decode(
        &mut self,
        compression: Compression,
        raw_len: u32,
        data: Bytes,
    ) -> Result<Bytes, CodecError> {
        match compression {
            Compression::None if data.len() == raw_len as usize => Ok(data),
            Compression::None => Err(CodecError::Length {
                raw_len,
                found: data.len(),
            }),
            Compression::Zstd => {
                let out = self.ctx.decompress(&data, raw_len as usize).map_err(|e| {
                    CodecError::Decompress {
                        raw_len,
                        reason: e.to_string(),
                    }
                })?;
                if out.len() != raw_len as usize {
                    return Err(CodecError::Length {
                        raw_len,
                        found: out.len(),
                    });
                }
                Ok(Bytes::from(out))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rows(n: usize) -> Bytes {
        let mut v = Vec::new();
        for i in 0..n {
            v.extend_from_slice(
                format!("{{\"table\":\"orders\",\"id\":{i},\"status\":\"shipped\"}}\n").as_bytes(),
            );
        }
        Bytes::from(v)
    }

    #[test]
    fn compressible_data_is_compressed_and_restored() {
        let mut c = Compressor::new(CompressionOptions::default()).unwrap();
        let raw = rows(2000);
        let (how, data) = c.encode(raw.clone());
        assert_eq!(how, Compression::Zstd);
        assert!(
            data.len() * 3 < raw.len(),
            "{} of {}",
            data.len(),
            raw.len()
        );
        let mut d = Decompressor::new().unwrap();
        assert_eq!(d.decode(how, raw.len() as u32, data).unwrap(), raw);
    }

    #[test]
    fn small_off_and_incompressible_frames_go_out_as_stored() {
        let mut off = Compressor::new(CompressionOptions {
            level: None,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(off.encode(rows(2000)).0, Compression::None);
        let mut c = Compressor::new(CompressionOptions::default()).unwrap();
        assert_eq!(c.encode(rows(3)).0, Compression::None);
        // Pseudo-random bytes do not compress: shipped raw, then not even tried for a while.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let noise: Vec<u8> = (0..8192)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let noise = Bytes::from(noise);
        assert_eq!(c.encode(noise.clone()), (Compression::None, noise));
        assert_eq!(c.skip, BACKOFF_FRAMES);
        assert_eq!(c.encode(rows(2000)).0, Compression::None);
    }

    #[test]
    fn the_level_changes_between_frames_and_off_ships_raw() {
        let mut c = Compressor::new(CompressionOptions {
            level: None,
            ..Default::default()
        })
        .unwrap();
        let raw = rows(2000);
        assert_eq!(c.encode(raw.clone()).0, Compression::None);
        c.set_level(Some(-5)).unwrap();
        let (how, fast) = c.encode(raw.clone());
        assert_eq!((how, c.level()), (Compression::Zstd, Some(-5)));
        c.set_level(Some(9)).unwrap();
        let (_, small) = c.encode(raw.clone());
        assert!(
            small.len() < fast.len(),
            "level 9 {} vs -5 {}",
            small.len(),
            fast.len()
        );
        let mut d = Decompressor::new().unwrap();
        assert_eq!(d.decode(how, raw.len() as u32, small).unwrap(), raw);
        c.set_level(None).unwrap();
        assert_eq!(c.encode(raw.clone()), (Compression::None, raw));
    }

    #[test]
    fn wrong_lengths_and_garbage_are_refused() {
        let mut c = Compressor::new(CompressionOptions::default()).unwrap();
        let raw = rows(2000);
        let (_, z) = c.encode(raw.clone());
        let mut d = Decompressor::new().unwrap();
        let n = raw.len() as u32;
        // Declared shorter than the data: refused without writing past the bound.
        assert!(matches!(
            d.decode(Compression::Zstd, n - 1, z.clone()),
            Err(CodecError::Decompress { .. })
        ));
        assert!(matches!(
            d.decode(Compression::Zstd, n + 1, z.clone()),
            Err(CodecError::Length { .. })
        ));
        assert!(d
            .decode(Compression::Zstd, n, Bytes::from_static(b"not zstd"))
            .is_err());
        assert!(matches!(
            d.decode(Compression::None, 5, Bytes::from_static(b"1234")),
            Err(CodecError::Length { .. })
        ));
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(data in prop::collection::vec(any::<u8>(), 0..512), raw_len in 0u32..4096) {
            let mut d = Decompressor::new().unwrap();
            if let Ok(out) = d.decode(Compression::Zstd, raw_len, Bytes::from(data)) {
                prop_assert_eq!(out.len(), raw_len as usize);
            }
        }
    }
}
