//! Output for operators, in the manner of `pg_waldump` and `kafka-dump-log`: aligned
//! columns, payloads as escaped text when they are text and as hex when they are not,
//! UTC timestamps. LSNs are printed with [`Lsn`](walship_engine::Lsn)'s own `Display`
//! (PostgreSQL's `HI/LO`) everywhere, so every tool shows the same position the same way.

use std::io::{self, Write};

/// How a table column is aligned: numbers right, everything else left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// Padded on the right.
    Left,
    /// Padded on the left.
    Right,
}

/// A table printed with aligned columns, two spaces apart, under a header row (none when
/// every header is empty: a list of keys and values).
///
/// ```
/// use walship_tools::text::{Align, Table};
/// let mut t = Table::new(&[("file", Align::Left), ("records", Align::Right)]);
/// t.row(["a.wal", "7"]);
/// t.row(["bb.wal", "120"]);
/// let mut out = Vec::new();
/// t.write(&mut out)?;
/// assert_eq!(String::from_utf8(out)?, "file    records\na.wal         7\nbb.wal      120\n");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct Table {
    columns: Vec<(String, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers and alignments.
    pub fn new(columns: &[(&str, Align)]) -> Table {
        Table {
            columns: columns.iter().map(|&(h, a)| (h.to_owned(), a)).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells are blank, extra cells are dropped.
    pub fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) {
        let mut row: Vec<String> = cells.into_iter().map(Into::into).collect();
        row.resize(self.columns.len(), String::new());
        self.rows.push(row);
    }

    /// Writes the header and the rows, without trailing spaces.
    ///
    /// # Errors
    /// Errors of `out`.
    pub fn write(&self, out: &mut dyn Write) -> io::Result<()> {
        let widths: Vec<usize> = self
            .columns
            .iter()
            .enumerate()
            .map(|(i, (h, _))| {
                self.rows
                    .iter()
                    .map(|r| r[i].chars().count())
                    .chain([h.chars().count()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let header: Vec<String> = self.columns.iter().map(|(h, _)| h.clone()).collect();
        let show_header = header.iter().any(|h| !h.is_empty());
        let header = show_header.then_some(&header);
        for row in header.into_iter().chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                let pad = " ".repeat(widths[i] - cell.chars().count());
                match self.columns[i].1 {
                    Align::Left => {
                        line.push_str(cell);
                        line.push_str(&pad);
                    }
                    Align::Right => {
                        line.push_str(&pad);
                        line.push_str(cell);
                    }
                }
            }
            writeln!(out, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

/// A record payload for a one-line display: quoted and escaped when it is text (UTF-8
/// without control characters other than tab, CR and LF), `0x…` hex otherwise; at most
/// `max` bytes of it, followed by how many more there are.
///
/// ```
/// use walship_tools::text::payload;
/// assert_eq!(payload(b"put k=\"v\"\n", 64), r#""put k=\"v\"\n""#);
/// assert_eq!(payload(&[0, 1, 0xfe], 64), "0x0001fe");
/// assert_eq!(payload(b"abcdef", 4), r#""abcd" +2 bytes"#);
/// ```
pub fn payload(data: &[u8], max: usize) -> String {
    let cut = &data[..data.len().min(max)];
    let (mut shown, len) = match as_text(cut) {
        Some(t) => (format!("{t:?}"), t.len()),
        None => {
            let hex: String = cut.iter().map(|b| format!("{b:02x}")).collect();
            (format!("0x{hex}"), cut.len())
        }
    };
    if len < data.len() {
        shown.push_str(&format!(" +{} bytes", data.len() - len));
    }
    shown
}

/// `bytes` as text, if it is: UTF-8 (a character cut off at the end is left out) with no
/// control characters but tab, CR and LF.
fn as_text(bytes: &[u8]) -> Option<&str> {
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        // Cut inside the last character: show what comes before it.
        Err(e) if e.error_len().is_none() => std::str::from_utf8(&bytes[..e.valid_up_to()]).ok()?,
        Err(_) => return None,
    };
    text.chars()
        .all(|c| !c.is_control() || matches!(c, '\t' | '\n' | '\r'))
        .then_some(text)
}

/// Microseconds since the Unix epoch as an ISO 8601 UTC timestamp.
///
/// ```
/// use walship_tools::text::timestamp_us;
/// assert_eq!(timestamp_us(0), "1970-01-01T00:00:00.000000Z");
/// assert_eq!(timestamp_us(1_700_000_000_123_456), "2023-11-14T22:13:20.123456Z");
/// ```
pub fn timestamp_us(us: u64) -> String {
    let secs = us / 1_000_000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        us % 1_000_000
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, for non-negative days).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// A byte count in the largest binary unit that divides it (`64 KiB`), else in bytes.
///
/// ```
/// use walship_tools::text::size;
/// assert_eq!(size(64 << 20), "64 MiB");
/// assert_eq!(size(1000), "1000 bytes");
/// ```
pub fn size(bytes: u64) -> String {
    for (shift, unit) in [(30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if bytes != 0 && bytes % (1 << shift) == 0 {
            return format!("{} {unit}", bytes >> shift);
        }
    }
    format!("{bytes} bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads() {
        assert_eq!(payload(b"", 64), "\"\"");
        assert_eq!(payload(b"tab\there", 64), r#""tab\there""#);
        assert_eq!(payload(b"bell\x07", 64), "0x62656c6c07");
        assert_eq!(payload(&[0xff; 10], 3), "0xffffff +7 bytes");
        // A cut inside a character shows the text before it and counts the rest.
        assert_eq!(payload("aé".as_bytes(), 2), r#""a" +2 bytes"#);
        assert_eq!(payload(b"abc", 0), r#""" +3 bytes"#);
    }

    #[test]
    fn dates_match_known_days() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(59), (1970, 3, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(20_453), (2025, 12, 31));
        assert_eq!(civil_from_days(20_454), (2026, 1, 1));
        assert_eq!(
            timestamp_us(951_782_400_000_001),
            "2000-02-29T00:00:00.000001Z"
        );
    }

    #[test]
    fn tables_align_and_trim() {
        let mut t = Table::new(&[("a", Align::Right), ("b", Align::Left)]);
        t.row(["1000", ""]);
        t.row(["2"]);
        let mut out = Vec::new();
        t.write(&mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "   a  b\n1000\n   2\n");
        let mut kv = Table::new(&[("", Align::Left), ("", Align::Left)]);
        kv.row(["end", "0/40"]);
        kv.row(["segment size", "64 KiB"]);
        let mut out = Vec::new();
        kv.write(&mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "end           0/40\nsegment size  64 KiB\n"
        );
        assert_eq!(size(0), "0 bytes");
        assert_eq!(size(3 << 10), "3 KiB");
    }
}
