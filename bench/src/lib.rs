//! # walship-bench
//!
//! Benchmarks for walship-engine:
//!
//! - `benches/engine.rs`: criterion micro-benchmarks (batch encode/decode, CRC32C,
//!   append throughput per I/O backend);
//! - `src/bin/latency.rs`: the closed-loop commit latency harness, which first measures
//!   the device under the log directory ([`device`]) and then a matrix of writer counts ×
//!   durability levels × record sizes × backends, reported as Markdown tables and `.hgrm`
//!   percentile files, next to peers (okaywal, raft-engine and the bare device, [`peers`])
//!   run in the same closed loop, with one percentile chart per local cell ([`svg`]).
//!
//! This library holds the parts that are not specific to one binary: the device
//! baseline, HDR histogram output, and the OS counters used to explain results.

#![warn(missing_docs, unreachable_pub)]

pub mod child;
pub mod device;
pub mod hgrm;
pub mod netns;
pub mod peers;
pub mod rawquic;
pub mod rawtcp;
pub mod svg;
pub mod sys;
pub mod tasks;
pub mod waldata;
pub mod zstd_speed;

/// The error type of the benchmark binaries' top level.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Result with [`BoxError`].
pub type Res<T> = Result<T, BoxError>;

/// The workspace's target directory (`CARGO_TARGET_DIR` if set), where the benchmark
/// binaries write their reports by default.
pub fn target_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("target")
        })
}

/// The median of `xs` (mean of the middle two for an even count; 0 when empty).
pub fn median(xs: impl AsRef<[f64]>) -> f64 {
    let mut v = xs.as_ref().to_vec();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Bytes per megabyte in every MB/s figure printed here (10^6, as `dd` and `fio` do).
pub const MB: f64 = 1_000_000.0;

/// Nanoseconds to microseconds, for printing.
pub fn us(ns: u64) -> f64 {
    ns as f64 / 1_000.0
}

/// A UTC timestamp for directory names, `YYYYMMDDTHHMMSSZ`, without a date crate.
pub fn utc_timestamp(now: std::time::SystemTime) -> String {
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn timestamps() {
        assert_eq!(utc_timestamp(UNIX_EPOCH), "19700101T000000Z");
        // 2026-11-21 20:33:07 UTC
        let t = UNIX_EPOCH + Duration::from_secs(1_795_293_187);
        assert_eq!(utc_timestamp(t), "20261121T203307Z");
        // 2000-02-29 (leap day) 12:00:00 UTC
        let t = UNIX_EPOCH + Duration::from_secs(951_825_600);
        assert_eq!(utc_timestamp(t), "20000229T120000Z");
    }
}
