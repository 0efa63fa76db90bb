//! Fuzz target `batch_decoder`: the format decoders on arbitrary bytes.
//!
//! - `check_batch` (with `Expect::default()`, with an expected LSN taken from the first
//!   8 input bytes over the rest, and with `max_len` = the input length),
//!   `BatchHeader::decode`, `SegmentHeader::decode` and `internals::scan_segment` never
//!   panic;
//! - on every batch `check_batch` accepts, `records` yields exactly `record_count`
//!   records that tile the body, with increasing end LSNs ending at `header.end()`;
//! - a non-padding batch re-encodes with `encode_batch`, a padding header with a zero
//!   timestamp with `encode_padding`: those stamp a lag of 0 (`flushed = base`), so the
//!   re-encoding is restamped with the decoded `header.flushed` (`restamp`), and then it
//!   is the same batch (`same_batch`: equal but for the flush stamp, bytes 40..48), and
//!   byte for byte equal when the stored lag (bytes 40..44) is at most the base. (A
//!   larger lag decodes to `flushed = 0`, saturated, and cannot round-trip; it still has
//!   to carry a valid stamp CRC, which `check_batch` verifies.) A segment header's
//!   fields re-encode (its reserved bytes need not be zero).

#![no_main]

use libfuzzer_sys::fuzz_target;
use walship_engine::format::{
    check_batch, encode_batch, encode_padding, records, restamp, same_batch, BatchHeader, Expect,
    SegmentHeader, BATCH_HEADER_LEN, MAX_SEGMENT_CAPACITY, RECORD_PREFIX_LEN, STAMP_RANGE,
};
use walship_engine::internals::scan_segment;
use walship_engine::{Epoch, Lsn};

/// Whether the stamp of the batch header at the start of `buf` round-trips through
/// `BatchHeader::flushed`: its lag (bytes 40..44) reaches no further back than LSN 0.
fn lag_round_trips(buf: &[u8], h: &BatchHeader) -> bool {
    let lag = u32::from_le_bytes(
        buf[STAMP_RANGE.start..STAMP_RANGE.start + 4]
            .try_into()
            .expect("4 bytes"),
    );
    u64::from(lag) <= h.base.get()
}

/// Checks that `again` (a re-encoding of the checked batch at the start of `buf`, with
/// `len` bytes, restamped with the decoded `flushed`) is the same batch, and the same
/// bytes when the stamp can round-trip.
fn check_reencoded(again: &[u8], buf: &[u8], len: usize, h: &BatchHeader, what: &str) {
    assert!(
        same_batch(again, &buf[..len]),
        "{what} does not re-encode to the same batch"
    );
    // The decoded stamp must be the one the re-encoding carries.
    assert_eq!(
        check_batch(again, Expect::default()).map(|c| c.header),
        Ok(*h),
        "{what}: the re-encoding decodes differently"
    );
    if lag_round_trips(buf, h) {
        assert_eq!(again, &buf[..len], "{what} does not re-encode to its bytes");
    } else {
        assert_eq!(
            h.flushed.get(),
            0,
            "{what}: an over-long lag saturates at 0"
        );
    }
}

fn check_accepted(buf: &[u8], expect: Expect) {
    let Ok(checked) = check_batch(buf, expect) else {
        return;
    };
    let h = checked.header;
    let len = h.len as usize;
    assert!(len >= BATCH_HEADER_LEN && (len as u64) <= expect.max_len);
    if let Some(lsn) = expect.lsn {
        assert_eq!(h.base, lsn);
    }
    // Decoding the header alone agrees with the full check.
    assert_eq!(BatchHeader::decode(buf, expect.max_len), Ok(h));
    if h.padding {
        assert_eq!(h.record_count, 0);
        assert_eq!(records(buf, &h).count(), 0, "padding yields no records");
        if h.timestamp_us == 0 {
            if let Some(end) = h.base.checked_add(u64::from(h.len)) {
                let mut again = encode_padding(h.base, end, h.epoch);
                restamp(&mut again, h.flushed);
                check_reencoded(&again, buf, BATCH_HEADER_LEN, &h, "a padding header");
            }
        }
        return;
    }
    assert!(
        buf.len() >= len,
        "accepted a data batch longer than its bytes"
    );
    let mut recs: Vec<&[u8]> = Vec::new();
    let mut at = BATCH_HEADER_LEN;
    for (end, data) in records(buf, &h) {
        at += RECORD_PREFIX_LEN + data.len();
        assert_eq!(
            end.get(),
            h.base.get().wrapping_add(at as u64),
            "record end LSN"
        );
        recs.push(data);
    }
    assert_eq!(
        recs.len(),
        h.record_count as usize,
        "records() lost records of a checked batch"
    );
    assert_eq!(at, len, "records do not tile the batch");
    let mut again = encode_batch(h.base, h.epoch, h.timestamp_us, &recs);
    restamp(&mut again, h.flushed);
    check_reencoded(&again, buf, len, &h, "a checked batch");
}

fuzz_target!(|data: &[u8]| {
    let _ = BatchHeader::decode(data, MAX_SEGMENT_CAPACITY);
    let _ = BatchHeader::decode(data, u64::MAX);
    if let Ok(h) = SegmentHeader::decode(data) {
        // The reserved bytes 32..60 are not required to be zero (only covered by the CRC),
        // so only the fields round-trip.
        assert_eq!(
            &h.encode()[..32],
            &data[..32],
            "segment header fields do not re-encode"
        );
        assert_eq!(SegmentHeader::decode(&h.encode()), Ok(h));
    }
    check_accepted(data, Expect::default());
    check_accepted(
        data,
        Expect {
            lsn: None,
            max_len: data.len() as u64,
        },
    );
    if data.len() >= 8 {
        let mut lsn = [0u8; 8];
        lsn.copy_from_slice(&data[..8]);
        let lsn = Lsn::new(u64::from_le_bytes(lsn));
        check_accepted(
            &data[8..],
            Expect {
                lsn: Some(lsn),
                max_len: MAX_SEGMENT_CAPACITY,
            },
        );
        // The same bytes as the body of a 64 KiB segment whose first batch is at `lsn`
        // (when `lsn` is a first-batch position): the recovery scan must not panic.
        let cap = 64 * 1024u64;
        if lsn.get() % cap == 64 && lsn.get() <= u64::MAX - 2 * cap {
            let mut seg = vec![0u8; cap as usize];
            let n = (data.len() - 8).min(seg.len() - 64);
            seg[64..64 + n].copy_from_slice(&data[8..8 + n]);
            let scan = scan_segment(&seg, Lsn::new(lsn.get() - 64), cap, Epoch::ZERO);
            assert!(scan.end >= lsn && scan.end.get() <= lsn.get() - 64 + cap);
        }
    }
});
