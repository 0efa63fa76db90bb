//! Fuzz target `batch_decoder`: the format decoders on arbitrary bytes.
//!
//! - `check_batch` (with `Expect::default()`, with an expected LSN taken from the first
//!   8 input bytes over the rest, and with `max_len` = the input length),
//!   `BatchHeader::decode`, `SegmentHeader::decode` and `internals::scan_segment` never
//!   panic;
//! - on every batch `check_batch` accepts, `records` yields exactly `record_count`
//!   records that tile the body, with increasing end LSNs ending at `header.end()`;
//! - a non-padding batch re-encodes byte for byte with `encode_batch`; a padding header
//!   with a zero timestamp re-encodes with `encode_padding`; a segment header's fields
//!   re-encode (its reserved bytes need not be zero).

#![no_main]

use libfuzzer_sys::fuzz_target;
use walship_engine::format::{
    check_batch, encode_batch, encode_padding, records, BatchHeader, Expect, SegmentHeader,
    BATCH_HEADER_LEN, MAX_SEGMENT_CAPACITY, RECORD_PREFIX_LEN,
};
use walship_engine::internals::scan_segment;
use walship_engine::{Epoch, Lsn};

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
                let again = encode_padding(h.base, end, h.epoch);
                assert_eq!(
                    &again[..],
                    &buf[..BATCH_HEADER_LEN],
                    "padding header does not re-encode"
                );
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
    let again = encode_batch(h.base, h.epoch, h.timestamp_us, &recs);
    assert_eq!(
        &again[..],
        &buf[..len],
        "a checked batch does not re-encode to its bytes"
    );
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
