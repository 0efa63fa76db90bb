//! HdrHistogram's percentile distribution text format (`.hgrm`), as written by Java's
//! `outputPercentileDistribution` and read by HdrHistogram's plotter: columns Value,
//! Percentile, TotalCount, 1/(1-Percentile), then a summary footer.
//!
//! hdrhistogram 7.6 without its `serialization` feature has no writer for it, so this is
//! one over [`Histogram::iter_quantiles`].

use std::io::{self, Write};

use hdrhistogram::Histogram;

/// New histogram for latencies in nanoseconds: 1 ns to 100 s, 3 significant digits.
///
/// # Panics
/// Never: the bounds are constants that hdrhistogram accepts.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("constant histogram bounds are valid")
}

/// Writes `hist` as a percentile distribution, dividing values by `scale` (1000.0 turns
/// nanoseconds into microseconds), with `ticks_per_half` percentile steps per halving of
/// the distance to 100% (Java's default is 5).
///
/// # Errors
/// Errors of `out`.
pub fn write_percentiles(
    out: &mut dyn Write,
    hist: &Histogram<u64>,
    scale: f64,
    ticks_per_half: u32,
) -> io::Result<()> {
    writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    )?;
    let mut total = 0u64;
    if !hist.is_empty() {
        for v in hist.iter_quantiles(ticks_per_half) {
            total += v.count_since_last_iteration();
            let q = v.quantile_iterated_to();
            let value = hist.highest_equivalent(v.value_iterated_to()) as f64 / scale;
            if q < 1.0 {
                writeln!(
                    out,
                    "{value:12.3} {q:2.12} {total:10} {:14.2}",
                    1.0 / (1.0 - q)
                )?;
            } else {
                writeln!(out, "{value:12.3} {q:2.12} {total:10}")?;
            }
        }
    }
    let (mean, stdev) = if hist.is_empty() {
        (0.0, 0.0)
    } else {
        (hist.mean() / scale, hist.stdev() / scale)
    };
    writeln!(
        out,
        "#[Mean    = {mean:12.3}, StdDeviation   = {stdev:12.3}]"
    )?;
    writeln!(
        out,
        "#[Max     = {:12.3}, Total count    = {:12}]",
        hist.max() as f64 / scale,
        hist.len()
    )?;
    writeln!(
        out,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        hist.buckets(),
        // HdrHistogram's sub-bucket count: the power of two covering 2 × 10^sigfig.
        (2 * 10u64.pow(u32::from(hist.sigfig()))).next_power_of_two()
    )?;
    Ok(())
}

/// Writes `hist` (nanoseconds) as a `.hgrm` file in microseconds.
///
/// # Errors
/// Creating or writing the file, with the path in the message.
pub fn write_file(path: &std::path::Path, hist: &Histogram<u64>) -> io::Result<()> {
    let wrap = |e: io::Error| io::Error::new(e.kind(), format!("write {}: {e}", path.display()));
    let file = std::fs::File::create(path).map_err(wrap)?;
    let mut w = io::BufWriter::new(file);
    write_percentiles(&mut w, hist, 1_000.0, 5).map_err(wrap)?;
    w.flush().map_err(wrap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_has_header_rows_and_footer() {
        let mut h = latency_histogram();
        for v in 1..=10_000u64 {
            h.record(v * 1_000).unwrap();
        }
        let mut out = Vec::new();
        write_percentiles(&mut out, &h, 1_000.0, 5).unwrap();
        let text = String::from_utf8(out).unwrap();
        let mut lines = text.lines();
        let header = lines.next().unwrap();
        assert!(header.contains("Value") && header.contains("1/(1-Percentile)"));
        assert_eq!(lines.next(), Some(""));
        let rows: Vec<Vec<&str>> = text
            .lines()
            .skip(2)
            .take_while(|l| !l.starts_with('#'))
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert!(rows.len() > 20);
        let last = rows.last().unwrap();
        assert_eq!(last.len(), 3, "the 100% row has no 1/(1-P)");
        assert_eq!(last[2], "10000");
        let p50: f64 = rows
            .iter()
            .find(|r| r[1].parse::<f64>().unwrap() >= 0.5)
            .unwrap()[0]
            .parse()
            .unwrap();
        assert!((4_990.0..=5_010.0).contains(&p50), "{p50}");
        assert!(text.contains("#[Max     ="));
        assert!(text.contains("Total count    =        10000]"));
        assert!(text.contains("SubBuckets     =         2048]"), "{text}");
    }

    #[test]
    fn empty_histogram_writes_footer_only() {
        let h = latency_histogram();
        let mut out = Vec::new();
        write_percentiles(&mut out, &h, 1_000.0, 5).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("Total count    =            0]"));
    }
}
