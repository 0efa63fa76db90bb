//! `zstd_levels`: what each zstd level costs and gives on WAL-like data, frame by frame,
//! on one core; and what a trained dictionary adds.
//!
//! ```text
//! cargo run --release -p walship-bench --bin zstd_levels
//! cargo run --release -p walship-bench --bin zstd_levels -- --mb 64 --levels -20,-5,-1,1,3 --frames 4,256
//! ```
//!
//! For every frame size and level: the ratio (raw / compressed), compression and
//! decompression speed in MB/s of raw data, and the CPU seconds per GB of log that the
//! leader (compression) and each follower (decompression) spend. These are the costs the
//! adaptive level of `walship_transport::compress` trades against the link's rate: a
//! level pays while the link, not the CPU, is the limit.
//!
//! The dictionary rows train a zstd dictionary (`zstd::dict::from_samples`) on rows of a
//! *different* seed than the measured data, as a leader would train on an earlier part of
//! its log, and compress the same frames with it.

use clap::Parser;
use walship_bench::zstd_speed::{measure_with, ZstdSpeed};
use walship_bench::{waldata, Res};

#[derive(Parser, Debug)]
struct Args {
    /// MB of encoded WAL-like batches to compress per pass.
    #[arg(long, default_value_t = 32)]
    mb: u64,
    /// zstd levels to measure (negative levels are faster).
    #[arg(
        long,
        value_delimiter = ',',
        allow_hyphen_values = true,
        default_value = "-50,-20,-10,-5,-3,-1,1,2,3,4,6,9"
    )]
    levels: Vec<i32>,
    /// Frame sizes in KiB (the driver's `frame_bytes` is 256 KiB; live frames of a few
    /// commits are a few KiB).
    #[arg(long, value_delimiter = ',', default_value = "4,64,256")]
    frames: Vec<usize>,
    /// Repetitions per measurement (the median is reported).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Levels measured with a trained dictionary too.
    #[arg(
        long,
        value_delimiter = ',',
        allow_hyphen_values = true,
        default_value = "-5,1,3"
    )]
    dict_levels: Vec<i32>,
    /// Dictionary size in KiB.
    #[arg(long, default_value_t = 112)]
    dict_kib: usize,
}

fn main() -> Res<()> {
    let args = Args::parse();
    let data = waldata::encode_stream(&waldata::batches(11, args.mb * 1_000_000, 64 << 10));
    eprintln!("{:.0} MB of encoded batches", data.len() as f64 / 1e6);
    // Samples from another part of the "log": rows of another seed, cut like small frames.
    let training = waldata::encode_stream(&waldata::batches(12, 8_000_000, 64 << 10));
    let samples: Vec<&[u8]> = training.chunks(4 << 10).collect();
    let dict = zstd::dict::from_samples(&samples, args.dict_kib << 10)?;
    eprintln!(
        "dictionary: {} KiB from {} samples",
        dict.len() >> 10,
        samples.len()
    );

    println!(
        "| frame | level | dictionary | ratio | compress MB/s | decompress MB/s | \
         leader s/GB | follower s/GB |"
    );
    println!("| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |");
    for &kib in &args.frames {
        for &level in &args.levels {
            let s = measure_with(&data, kib << 10, level, args.reps, None)?;
            row(kib, level, "–", &s);
        }
        for &level in &args.dict_levels {
            let s = measure_with(&data, kib << 10, level, args.reps, Some(&dict))?;
            row(kib, level, &format!("{} KiB", dict.len() >> 10), &s);
        }
    }
    Ok(())
}

fn row(kib: usize, level: i32, dict: &str, s: &ZstdSpeed) {
    let (c, d) = (s.compress_mb_s(), s.decompress_mb_s());
    println!(
        "| {kib} KiB | {level} | {dict} | {:.2} | {c:.0} | {d:.0} | {:.2} | {:.2} |",
        s.ratio(),
        1000.0 / c,
        1000.0 / d,
    );
}
