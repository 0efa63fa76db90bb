//! Criterion micro-benchmarks of walship-engine.
//!
//! - `format`: `encode_batch`, and `check_batch` + iterating `records`, for 64 × 128 B
//!   and 16 × 4 KiB batches;
//! - `crc32c`: 4 KiB and 1 MiB buffers;
//! - `append`: per backend and record size, N appends then a commit of the last record
//!   with `Async` (append + queueing) or `Local` (append + write + fdatasync).
//!
//! Run: `cargo bench -p walship-bench --bench engine` (about 2 minutes). Sample counts
//! and times are kept small; the latency binary is the place for long, careful runs.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use walship_engine::format::{self, Expect};
use walship_engine::{BackendKind, Durability, Epoch, Log, Lsn, Options};

fn records(count: usize, size: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|r| (0..size).map(|i| (i ^ r) as u8).collect())
        .collect()
}

fn format_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("format");
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    for (count, size) in [(64usize, 128usize), (16, 4096)] {
        let recs = records(count, size);
        let batch =
            format::encode_batch(Lsn::new(4096), Epoch::new(3), 1_700_000_000_000_000, &recs);
        let label = format!("{count}x{size}B");
        g.throughput(Throughput::Bytes(batch.len() as u64));
        g.bench_with_input(
            BenchmarkId::new("encode_batch", &label),
            &recs,
            |b, recs| {
                b.iter(|| {
                    format::encode_batch(
                        Lsn::new(4096),
                        Epoch::new(3),
                        1_700_000_000_000_000,
                        black_box(recs),
                    )
                })
            },
        );
        g.bench_with_input(
            BenchmarkId::new("check_batch+records", &label),
            &batch,
            |b, batch| {
                b.iter(|| {
                    let checked = format::check_batch(black_box(batch), Expect::default())
                        .expect("valid batch");
                    let mut n = 0usize;
                    for (lsn, data) in format::records(batch, &checked.header) {
                        n = n.wrapping_add(data.len()).wrapping_add(lsn.get() as usize);
                    }
                    n
                })
            },
        );
    }
    g.finish();
}

fn crc_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("crc32c");
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    for (label, len) in [("4KiB", 4096usize), ("1MiB", 1 << 20)] {
        let buf: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_with_input(BenchmarkId::from_parameter(label), &buf, |b, buf| {
            b.iter(|| crc32c::crc32c(black_box(buf)))
        });
    }
    g.finish();
}

/// Where the append benchmarks put their logs: the target directory's tmp, which is on
/// the same file system as the repository.
fn scratch() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

fn backend_name(kind: BackendKind) -> &'static str {
    match kind {
        BackendKind::IoUring => "io_uring",
        BackendKind::Portable => "portable",
        BackendKind::Auto => "auto",
    }
}

fn append_benches(c: &mut Criterion) {
    let base = scratch();
    if let Err(e) = std::fs::create_dir_all(&base) {
        eprintln!(
            "SKIPPED append benchmarks: cannot create {}: {e}",
            base.display()
        );
        return;
    }
    let mut g = c.benchmark_group("append");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for backend in [BackendKind::IoUring, BackendKind::Portable] {
        for (size, per_iter) in [(128usize, 256usize), (4096, 64)] {
            for level in [Durability::Async, Durability::Local] {
                let dir = match tempfile::Builder::new().prefix("append-").tempdir_in(&base) {
                    Ok(d) => d,
                    Err(e) => {
                        eprintln!(
                            "SKIPPED append benchmarks: cannot create a directory in {}: {e}",
                            base.display()
                        );
                        return;
                    }
                };
                let opts = Options {
                    segment_capacity: 64 << 20,
                    backend,
                    ..Options::default()
                };
                let log = match Log::open(dir.path(), opts) {
                    Ok(l) => l,
                    Err(e) if backend == BackendKind::IoUring => {
                        eprintln!(
                            "SKIPPED append/{}: Log::open with io_uring failed: {e}",
                            backend_name(backend)
                        );
                        continue;
                    }
                    Err(e) => panic!(
                        "Log::open with {} in {}: {e}",
                        backend_name(backend),
                        dir.path().display()
                    ),
                };
                let rec = vec![0xA5u8; size];
                let id = format!("{}/{level}/{per_iter}x{size}B", backend_name(backend));
                g.throughput(Throughput::Bytes((size * per_iter) as u64));
                let mut iters = 0u64;
                g.bench_function(&id, |b| {
                    b.iter(|| {
                        let mut last = Lsn::ZERO;
                        for _ in 0..per_iter {
                            last = log.append(black_box(&rec)).expect("append");
                        }
                        log.commit(last, level).wait().expect("commit");
                        iters += 1;
                        // Let retired segments recycle, as an embedding database's
                        // checkpoints would, instead of growing the log without bound.
                        if iters % 64 == 0 {
                            log.set_checkpoint(log.watermarks().flushed);
                        }
                    })
                });
                if let Err(e) = log.close() {
                    panic!("close log in {}: {e}", dir.path().display());
                }
            }
        }
    }
    g.finish();
}

criterion_group!(benches, format_benches, crc_benches, append_benches);
criterion_main!(benches);
