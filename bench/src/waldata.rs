//! WAL-like test data for the replication benchmark: deterministic, seeded rows that
//! look like a database's change log (JSON-ish rows with repeated field names, random
//! ids, amounts and short notes from a small vocabulary), and the same rows grouped
//! into append batches and encoded exactly as the engine stores them.
//!
//! The data is made to compress like a real WAL does, not like zeros or noise: zstd
//! level 1 on 256 KiB chunks gives about 3–5× (see the unit test), inside the range
//! measured on this machine for WAL-like JSON rows.
//!
//! No `rand` crate: a 64-bit xorshift generator, so the bytes depend on the seed alone.

use std::io::Write as _;

use walship_engine::format::encode_batch;
use walship_engine::{Epoch, Lsn};

/// Marsaglia's xorshift64* generator: tiny, fast, and deterministic for a seed.
#[derive(Debug, Clone)]
pub struct XorShift64(u64);

impl XorShift64 {
    /// A generator for `seed` (any value; zero is remapped, xorshift must not start at 0).
    pub fn new(seed: u64) -> XorShift64 {
        // SplitMix64 finaliser so that nearby seeds give unrelated streams.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        XorShift64(if z == 0 { 0x2545_F491_4F6C_DD1D } else { z })
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A uniform value in `0..n` (`n > 0`; 0 for `n == 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// A uniformly chosen element of a non-empty slice.
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

const TABLES: &[&str] = &[
    "orders",
    "order_items",
    "customers",
    "payments",
    "shipments",
    "inventory",
    "sessions",
    "audit_log",
];
const OPS: &[&str] = &["insert", "update", "update", "update", "delete"];
const STATUSES: &[&str] = &[
    "pending",
    "paid",
    "packed",
    "shipped",
    "delivered",
    "cancelled",
    "refunded",
];
const CURRENCIES: &[&str] = &["EUR", "USD", "GBP", "CHF"];
const REGIONS: &[&str] = &["eu-west", "eu-central", "us-east", "us-west", "ap-south"];
/// Words for the free-text `note` field: a small vocabulary, as real notes repeat.
const WORDS: &[&str] = &[
    "please",
    "leave",
    "at",
    "door",
    "call",
    "before",
    "delivery",
    "gift",
    "wrap",
    "fragile",
    "handle",
    "with",
    "care",
    "back",
    "entrance",
    "ring",
    "bell",
    "twice",
    "no",
    "signature",
    "required",
    "customer",
    "requested",
    "express",
    "shipping",
    "address",
    "changed",
    "by",
    "support",
    "refund",
    "issued",
    "partial",
    "item",
    "out",
    "of",
    "stock",
    "replaced",
    "size",
    "colour",
    "blue",
    "red",
    "green",
    "large",
    "small",
    "medium",
    "return",
    "label",
    "printed",
    "warehouse",
    "north",
    "south",
    "east",
    "west",
    "priority",
    "low",
    "high",
    "normal",
    "retry",
    "payment",
    "declined",
    "card",
    "expired",
    "invoice",
    "sent",
    "email",
    "sms",
    "confirmed",
    "pickup",
    "point",
    "locker",
    "neighbour",
    "office",
    "hours",
    "weekend",
    "only",
    "morning",
    "evening",
    "the",
    "and",
    "for",
    "to",
    "from",
    "on",
    "in",
    "order",
    "box",
    "damaged",
    "courier",
    "delayed",
    "customs",
    "cleared",
    "held",
    "tracking",
    "updated",
    "manual",
    "check",
];

/// Deterministic WAL-like rows, 160–400 bytes each; see [`rows`].
#[derive(Debug, Clone)]
pub struct Rows {
    rng: XorShift64,
    /// Per-table next primary key: ids grow, as in a real table.
    next_id: [u64; 8],
    /// Transaction id, incremented every few rows.
    txid: u64,
    /// Wall clock of the rows, milliseconds since the Unix epoch; advances slowly.
    clock_ms: u64,
    buf: Vec<u8>,
}

/// An endless stream of WAL-like rows for `seed`: a common header (transaction id,
/// table, operation, primary key, timestamp), fields that depend on the table, and a
/// free-text note of 0–23 words, for example:
///
/// ```text
/// {"txid":900001,"table":"order_items","op":"insert","id":2000844,
///  "updated_at":"2026-11-21T00:00:00.000Z","order_id":990493,"sku":"SKU-7BBD2F",
///  "qty":1,"unit_cents":2293,"note":"care support from confirmed evening"}
/// ```
///
/// Rows are 160–400 bytes, 270 on average.
pub fn rows(seed: u64) -> Rows {
    let mut rng = XorShift64::new(seed);
    let next_id = std::array::from_fn(|i| 1_000_000 * (i as u64 + 1) + rng.below(1000));
    Rows {
        rng,
        next_id,
        txid: 900_000 + seed % 1000,
        // 2026-11-21T00:00:00Z
        clock_ms: 1_795_219_200_000,
        buf: Vec::with_capacity(512),
    }
}

impl Iterator for Rows {
    type Item = Vec<u8>;

    fn next(&mut self) -> Option<Vec<u8>> {
        let r = &mut self.rng;
        if r.below(4) == 0 {
            self.txid += 1;
        }
        self.clock_ms += r.below(7);
        let t = r.below(TABLES.len() as u64) as usize;
        let op = r.pick(OPS);
        let id = if op == "insert" {
            self.next_id[t] += 1;
            self.next_id[t]
        } else {
            // Updates and deletes touch a recent row.
            self.next_id[t].saturating_sub(r.below(5000))
        };
        let b = &mut self.buf;
        b.clear();
        // Writing into a Vec cannot fail; the results are ignored for that reason.
        let _ = write!(
            b,
            "{{\"txid\":{},\"table\":\"{}\",\"op\":\"{}\",\"id\":{},\"updated_at\":\"",
            self.txid, TABLES[t], op, id,
        );
        push_iso8601(b, self.clock_ms);
        b.push(b'"');
        let customer = 1_000_000 + r.below(9_000_000);
        let order = self.next_id[0].saturating_sub(r.below(20_000));
        let _ = match TABLES[t] {
            "orders" => write!(
                b,
                ",\"customer_id\":{customer},\"status\":\"{}\",\"amount_cents\":{},\
                 \"currency\":\"{}\",\"region\":\"{}\"",
                r.pick(STATUSES),
                r.below(250_000),
                r.pick(CURRENCIES),
                r.pick(REGIONS),
            ),
            "order_items" => write!(
                b,
                ",\"order_id\":{order},\"sku\":\"SKU-{:06X}\",\"qty\":{},\"unit_cents\":{}",
                r.below(1 << 24),
                1 + r.below(5),
                r.below(20_000),
            ),
            "customers" => write!(
                b,
                ",\"customer_id\":{customer},\"email\":\"{}.{}@example.com\",\"region\":\"{}\",\
                 \"tier\":\"{}\"",
                r.pick(WORDS),
                r.below(10_000),
                r.pick(REGIONS),
                r.pick(&["free", "silver", "gold"]),
            ),
            "payments" => write!(
                b,
                ",\"order_id\":{order},\"amount_cents\":{},\"currency\":\"{}\",\
                 \"status\":\"{}\",\"card_last4\":\"{:04}\"",
                r.below(250_000),
                r.pick(CURRENCIES),
                r.pick(STATUSES),
                r.below(10_000),
            ),
            "shipments" => write!(
                b,
                ",\"order_id\":{order},\"status\":\"{}\",\"carrier\":\"{}\",\
                 \"tracking\":\"1Z{:012X}\",\"region\":\"{}\"",
                r.pick(STATUSES),
                r.pick(&["ups", "dhl", "fedex", "postnl", "colissimo"]),
                r.below(1 << 48),
                r.pick(REGIONS),
            ),
            "inventory" => write!(
                b,
                ",\"sku\":\"SKU-{:06X}\",\"warehouse\":\"{}\",\"on_hand\":{},\"reserved\":{}",
                r.below(1 << 24),
                r.pick(REGIONS),
                r.below(5_000),
                r.below(100),
            ),
            "sessions" => write!(
                b,
                ",\"customer_id\":{customer},\"ip\":\"{}.{}.{}.{}\",\"agent\":\"{}\"",
                r.below(224),
                r.below(256),
                r.below(256),
                r.below(256),
                r.pick(&[
                    "Mozilla/5.0 (X11; Linux x86_64) Firefox/140.0",
                    "Mozilla/5.0 (Macintosh) Safari/605.1.15",
                    "Mozilla/5.0 (Windows NT 10.0) Chrome/141.0",
                    "okhttp/4.12.0",
                ]),
            ),
            _ => write!(
                b,
                ",\"actor\":\"{}\",\"action\":\"{}\",\"customer_id\":{customer}",
                r.pick(&["system", "support", "batch-job", "admin"]),
                r.pick(&["login", "export", "role_change", "password_reset", "merge"]),
            ),
        };
        b.extend_from_slice(b",\"note\":\"");
        let words = r.below(24);
        for i in 0..words {
            if i > 0 {
                b.push(b' ');
            }
            b.extend_from_slice(r.pick(WORDS).as_bytes());
        }
        b.extend_from_slice(b"\"}");
        Some(b.clone())
    }
}

/// Appends `ms` since the Unix epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
fn push_iso8601(b: &mut Vec<u8>, ms: u64) {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = crate::civil_from_days(days);
    let _ = write!(
        b,
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60,
        ms % 1000
    );
}

/// Rows grouped into append batches: what a writer hands to `Log::append_batch`.
#[derive(Debug, Clone, Default)]
pub struct Batches {
    /// The batches, each a list of rows.
    pub batches: Vec<Vec<Vec<u8>>>,
    /// Row bytes over all batches (without any framing).
    pub payload_bytes: u64,
    /// Number of rows.
    pub rows: u64,
}

/// At least `total_bytes` of rows from `seed`, in batches of about `batch_bytes` each
/// (a batch ends with the first row that reaches `batch_bytes`).
pub fn batches(seed: u64, total_bytes: u64, batch_bytes: usize) -> Batches {
    let mut out = Batches::default();
    let mut gen = rows(seed);
    while out.payload_bytes < total_bytes {
        let mut batch = Vec::new();
        let mut size = 0;
        while size < batch_bytes && out.payload_bytes < total_bytes {
            let Some(row) = gen.next() else { break };
            size += row.len();
            out.payload_bytes += row.len() as u64;
            out.rows += 1;
            batch.push(row);
        }
        out.batches.push(batch);
    }
    out
}

/// The batches encoded back to back in the engine's on-disk batch format (header with
/// CRC32C, length-prefixed records), starting at LSN 64: the bytes a leader ships, minus
/// segment headers and padding.
pub fn encode_stream(batches: &Batches) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        usize::try_from(batches.payload_bytes).unwrap_or(0) + batches.batches.len() * 64,
    );
    let mut ts = 1_795_219_200_000_000u64;
    for batch in &batches.batches {
        let base = Lsn::new(64 + out.len() as u64);
        out.extend_from_slice(&encode_batch(base, Epoch::new(1), ts, batch));
        ts += 50;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_seed_dependent() {
        let a: Vec<Vec<u8>> = rows(7).take(100).collect();
        let b: Vec<Vec<u8>> = rows(7).take(100).collect();
        let c: Vec<Vec<u8>> = rows(8).take(100).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn rows_look_like_wal_records() {
        let mut total = 0;
        let n = 20_000;
        for row in rows(1).take(n) {
            assert!(
                (100..=400).contains(&row.len()),
                "row of {} bytes",
                row.len()
            );
            assert!(row.starts_with(b"{\"txid\":") && row.ends_with(b"\"}"));
            assert!(row.is_ascii());
            total += row.len();
        }
        let mean = total / n;
        assert!((220..=320).contains(&mean), "mean row {mean} bytes");
        let first = String::from_utf8(rows(1).next().unwrap_or_default()).unwrap_or_default();
        assert!(
            first.contains("\"updated_at\":\"2026-11-21T00:00:00."),
            "{first}"
        );
    }

    #[test]
    fn batches_cover_the_requested_bytes() {
        let b = batches(3, 1 << 20, 64 << 10);
        assert!(b.payload_bytes >= 1 << 20);
        assert!(b.payload_bytes < (1 << 20) + 512);
        let counted: usize = b.batches.iter().flatten().map(Vec::len).sum();
        assert_eq!(counted as u64, b.payload_bytes);
        assert_eq!(b.batches.iter().map(Vec::len).sum::<usize>() as u64, b.rows);
        assert!(b.batches.len() >= 16 && b.batches.len() <= 17);
        let stream = encode_stream(&b);
        assert_eq!(
            stream.len() as u64,
            b.payload_bytes
                + 4 * b.rows
                + walship_engine::format::BATCH_HEADER_LEN as u64 * b.batches.len() as u64
        );
    }

    /// The property the benchmark relies on: zstd level 1 on 256 KiB chunks compresses
    /// this data about as much as real WAL-like JSON rows (3–5.5×), not more.
    #[test]
    fn compresses_like_a_wal() {
        let stream = encode_stream(&batches(11, 4 << 20, 64 << 10));
        let mut raw = 0;
        let mut packed = 0;
        for chunk in stream.chunks(256 << 10) {
            let z = zstd::bulk::compress(chunk, 1).unwrap_or_default();
            assert!(!z.is_empty());
            raw += chunk.len();
            packed += z.len();
        }
        let ratio = raw as f64 / packed as f64;
        assert!((3.0..=5.5).contains(&ratio), "zstd-1 ratio {ratio:.2}");
    }
}
