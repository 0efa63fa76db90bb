//! Writes the seed corpora: `cargo run --release --example seed` from `fuzz/`.
//!
//! - `corpus/batch_decoder/seed-*`: valid batches (several record counts and sizes),
//!   padding headers, batches restamped with a lag (one whose lag exceeds its base), a
//!   segment header, and LSN-prefixed batches and segment bodies for the expected-LSN
//!   and scan paths of the target;
//! - `corpus/recovery/seed-*`: damage operations (see `walship_fuzz::parse_ops`) that
//!   put valid, torn, misplaced and bit-flipped batches into the template log's tail,
//!   previous, spare and new segments, flip bits of flush stamps, damage its epoch
//!   history and meta file, and delete or damage the clean-close marker. With the marker
//!   gone, damage in the tail after the split of the template (see
//!   `walship_fuzz::template_split`) is an unflushed tail (cut), damage before it is
//!   proven flushed by the stamps after it (corruption); with the marker kept, both are
//!   corruption.
//!
//! - `corpus/frame_decoder/seed-*`: one valid frame of each kind, a zstd-compressed Ship,
//!   and a Welcome followed by two contiguous Ship frames, behind the target's 3-byte prefix (chunk size, flags,
//!   expected LSN).
//!
//! Deterministic: rerunning rewrites the same files.

use std::fs;
use std::path::Path;

use walship_engine::format::{
    check_batch, encode_batch, encode_padding, restamp, Expect, SegmentHeader, BATCH_HEADER_LEN,
    STAMP_RANGE,
};
use walship_engine::{Epoch, Lsn};
use walship_fuzz::{encode_ops, template_batches, template_split, Mode, Op, Rng, Target, CAP};

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    fs::write(dir.join(format!("seed-{name}")), bytes).expect("write seed");
}

fn recs(rng: &mut Rng, sizes: &[usize]) -> Vec<Vec<u8>> {
    sizes.iter().map(|&n| rng.bytes(n)).collect()
}

fn prefixed(lsn: u64, bytes: &[u8]) -> Vec<u8> {
    let mut v = lsn.to_le_bytes().to_vec();
    v.extend_from_slice(bytes);
    v
}

/// CRC32C (Castagnoli, reflected), bit by bit: enough for a few seeds.
fn crc32c(parts: &[&[u8]]) -> u32 {
    let mut c = !0u32;
    for &b in parts.iter().flat_map(|p| p.iter()) {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 == 1 {
                (c >> 1) ^ 0x82F6_3B78
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// Writes a raw lag into a batch's flush stamp with a valid stamp CRC (over header bytes
/// 4..16 and 40..44), even one that `restamp` cannot produce (a lag beyond the base).
fn force_lag(batch: &mut [u8], lag: u32) {
    let s = STAMP_RANGE.start;
    batch[s..s + 4].copy_from_slice(&lag.to_le_bytes());
    let crc = crc32c(&[&batch[4..16], &batch[s..s + 4]]);
    batch[s + 4..s + 8].copy_from_slice(&crc.to_le_bytes());
}

fn batch_decoder(dir: &Path) {
    let mut rng = Rng::new(7);
    let e = Epoch::new(3);
    let cases: &[(&str, &[usize])] = &[
        ("empty", &[]),
        ("one", &[5]),
        ("one-empty-record", &[0]),
        ("three", &[1, 0, 33]),
        ("twenty-small", &[3; 20]),
        ("large", &[2000]),
        ("mixed", &[0, 7, 300, 1, 64]),
    ];
    for (i, (name, sizes)) in cases.iter().enumerate() {
        let r = recs(&mut rng, sizes);
        let base = 64 + 1000 * i as u64;
        write(
            dir,
            name,
            &encode_batch(Lsn::new(base), e, 1_700_000_000_000_000 + i as u64, &r),
        );
    }
    // The top of LSN space: a batch whose records end past u64::MAX must be refused.
    let r = recs(&mut rng, &[5, 6]);
    write(
        dir,
        "lsn-near-max",
        &encode_batch(Lsn::new(u64::MAX - 45), e, 10, &r),
    );
    write(
        dir,
        "padding",
        &encode_padding(Lsn::new(1000), Lsn::new(CAP), e),
    );
    write(dir, "padding-zero-body", &{
        let mut v = encode_padding(Lsn::new(CAP - 100), Lsn::new(CAP), e).to_vec();
        v.resize(100, 0);
        v
    });
    write(
        dir,
        "segment-header",
        &SegmentHeader {
            base: Lsn::new(3 * CAP),
            capacity: CAP,
        }
        .encode(),
    );
    // Non-zero reserved bytes (32..60) under a valid CRC: only the fields re-encode (the
    // format-2 form of regressions/batch_decoder/segment-header-nonzero-reserved, which
    // is a format-1 header that is now refused for its version).
    write(dir, "segment-header-nonzero-reserved", &{
        let mut h = SegmentHeader {
            base: Lsn::new(7 * CAP),
            capacity: CAP,
        }
        .encode();
        h[40] = 0x7c;
        h[55] = 1;
        let crc = crc32c(&[&h[..60]]);
        h[60..].copy_from_slice(&crc.to_le_bytes());
        assert!(
            SegmentHeader::decode(&h).is_ok(),
            "reserved bytes are allowed"
        );
        h
    });
    // LSN-prefixed: the target checks `data[8..]` against the LSN in `data[..8]`.
    let r = recs(&mut rng, &[10, 20]);
    write(
        dir,
        "lsn-batch",
        &prefixed(4096, &encode_batch(Lsn::new(4096), e, 9, &r)),
    );
    let pad_at = CAP - BATCH_HEADER_LEN as u64;
    write(
        dir,
        "lsn-padding",
        &prefixed(pad_at, &encode_padding(Lsn::new(pad_at), Lsn::new(CAP), e)),
    );
    // Flush stamps with a lag: written by a log that had flushed less than everything
    // before the batch. The lag round-trips through `BatchHeader::flushed` ...
    let mut restamped = encode_batch(Lsn::new(70_000), e, 11, &recs(&mut rng, &[12, 0, 3]));
    restamp(&mut restamped, Lsn::new(1000));
    let mut check = restamped.clone();
    force_lag(&mut check, 69_000);
    assert_eq!(
        check, restamped,
        "the seed's CRC32C agrees with the engine's stamp"
    );
    write(dir, "restamped", &restamped);
    let mut pad = encode_padding(Lsn::new(CAP - 500), Lsn::new(CAP), e);
    restamp(&mut pad, Lsn::new(CAP / 2));
    write(dir, "padding-restamped", &pad);
    // ... unless it reaches back past LSN 0 (`flushed` saturates at 0): only the stamp
    // CRC makes such a batch valid, and it is the same batch, not the same bytes.
    let mut beyond = encode_batch(Lsn::new(4096), e, 12, &recs(&mut rng, &[7]));
    force_lag(&mut beyond, 10_000);
    assert_eq!(
        check_batch(&beyond, Expect::default()).map(|c| c.header.flushed),
        Ok(Lsn::ZERO),
        "a lag beyond the base decodes to flushed = 0"
    );
    write(dir, "lag-beyond-base", &beyond);
    let mut pad = encode_padding(Lsn::new(CAP - 64), Lsn::new(CAP), e);
    force_lag(&mut pad, u32::MAX);
    write(dir, "padding-lag-beyond-base", &pad);
    // A segment body: LSN ≡ 64 (mod 64 KiB) selects the scan path.
    let first = 5 * CAP + 64;
    let b1 = encode_batch(
        Lsn::new(first),
        Epoch::new(1),
        1,
        &recs(&mut rng, &[100, 3]),
    );
    let second = first + b1.len() as u64;
    let b2 = encode_batch(Lsn::new(second), Epoch::new(2), 2, &recs(&mut rng, &[0]));
    let third = second + b2.len() as u64;
    let pad = encode_padding(Lsn::new(third), Lsn::new(6 * CAP), Epoch::new(2));
    let mut body = b1.clone();
    body.extend_from_slice(&b2);
    body.extend_from_slice(&pad);
    write(dir, "lsn-segment-body", &prefixed(first, &body));
    let mut torn = b1;
    torn.extend_from_slice(&b2[..b2.len() / 2]);
    write(dir, "lsn-segment-torn", &prefixed(first, &torn));
}

fn recovery(dir: &Path) {
    let batches = template_batches();
    let (last_base, last) = batches.last().expect("template has batches").clone();
    let end = last_base.get() + last.len() as u64;
    let tail = end / CAP * CAP;
    let spare = tail + CAP;
    let new_seg = spare + CAP;
    let epoch = Epoch::new(u64::from_le_bytes(
        last[16..24].try_into().expect("8 bytes"),
    ));
    let tail_off = |lsn: u64| (lsn - tail) as u16;
    let mut rng = Rng::new(11);
    let op = |mode, target, offset: u16, payload: Vec<u8>| Op {
        mode,
        target,
        offset,
        payload,
    };
    let next = encode_batch(Lsn::new(end), epoch, 42, &recs(&mut rng, &[17, 0, 200]));
    let after = encode_batch(
        Lsn::new(end + next.len() as u64),
        Epoch::new(epoch.get() + 1),
        43,
        &recs(&mut rng, &[5]),
    );
    let hole = end + 128;
    let misplaced = encode_batch(Lsn::new(hole), epoch, 44, &recs(&mut rng, &[9]));
    let old_epoch = encode_batch(
        Lsn::new(end),
        Epoch::new(epoch.get() - 1),
        45,
        &recs(&mut rng, &[9]),
    );
    let first_tail_batch = tail + 64;
    // The template's tail is written in two appends (see `template_split`): batches from
    // `split` on are stamped with `flushed = split`, the ones before with the tail's base.
    let split = template_split(&batches).get();
    // A data batch of the tail with a payload and at least two valid batches after it,
    // before the split (damage there is proven flushed by the stamps after the split)
    // and after it (damage there is an unflushed tail once the marker is gone).
    let tail_batch = |from: u64, to: u64| {
        let i = batches
            .iter()
            .position(|(base, b)| {
                base.get() >= from && base.get() < to && b.len() > BATCH_HEADER_LEN + 8
            })
            .expect("a tail batch with a payload");
        assert!(i + 2 < batches.len(), "valid batches follow it");
        batches[i].0.get()
    };
    let before_split = tail_batch(tail + 1000, split);
    let after_split = tail_batch(split + 1, end);
    // A bit in the first record's payload.
    let body_flip = |base: u64| {
        op(
            Mode::FlipBits,
            Target::Tail,
            tail_off(base + BATCH_HEADER_LEN as u64 + 5),
            vec![0x04],
        )
    };
    // An empty marker is an invalid one: the log is left as a crash would leave it.
    let no_marker = || op(Mode::TruncateAt, Target::Closed, 0, vec![0]);
    // Makes the segment file exist (empty, valid header) without changing a byte.
    let same_byte = |target| op(Mode::Overwrite, target, 0, b"W".to_vec());
    let prev_batch = batches[3].0.get();

    let mut seeds: Vec<(&str, Vec<Op>)> = vec![
        ("clean", vec![op(Mode::Overwrite, Target::Tail, 0, vec![])]),
        (
            "next-batch",
            vec![op(
                Mode::Overwrite,
                Target::Tail,
                tail_off(end),
                next.clone(),
            )],
        ),
        (
            "next-two-batches",
            vec![op(
                Mode::Overwrite,
                Target::Tail,
                tail_off(end),
                [next.clone(), after].concat(),
            )],
        ),
        (
            "torn-next-batch",
            vec![op(
                Mode::Overwrite,
                Target::Tail,
                tail_off(end),
                next[..next.len() / 2].to_vec(),
            )],
        ),
        (
            "valid-after-hole",
            vec![op(
                Mode::Overwrite,
                Target::Tail,
                tail_off(hole),
                misplaced.clone(),
            )],
        ),
        (
            "epoch-regression",
            vec![op(Mode::Overwrite, Target::Tail, tail_off(end), old_epoch)],
        ),
        (
            "flip-last-batch",
            vec![op(
                Mode::FlipBits,
                Target::Tail,
                tail_off(last_base.get() + 20),
                vec![0x10],
            )],
        ),
        (
            "flip-first-tail-batch",
            vec![op(
                Mode::FlipBits,
                Target::Tail,
                tail_off(first_tail_batch + BATCH_HEADER_LEN as u64 + 5),
                vec![1],
            )],
        ),
        (
            "flip-tail-header",
            vec![op(Mode::FlipBits, Target::Tail, 17, vec![4])],
        ),
        (
            "flip-prev-batch",
            vec![op(
                Mode::FlipBits,
                Target::Prev,
                (prev_batch + BATCH_HEADER_LEN as u64 + 1) as u16,
                vec![0x80],
            )],
        ),
        (
            "garbage-prev-padding",
            vec![op(Mode::AppendGarbage, Target::Prev, 50, rng.bytes(30))],
        ),
        (
            "garbage-at-end",
            vec![op(Mode::AppendGarbage, Target::Tail, 0, rng.bytes(64))],
        ),
        (
            "garbage-grows-file",
            vec![op(Mode::AppendGarbage, Target::Tail, 0x8000, rng.bytes(8))],
        ),
        (
            "lost-tail",
            vec![op(
                Mode::TruncateAt,
                Target::Tail,
                tail_off(last_base.get() + 10),
                vec![1],
            )],
        ),
        (
            "short-tail-file",
            vec![op(Mode::TruncateAt, Target::Tail, tail_off(end), vec![2])],
        ),
        (
            "spare-first-batch",
            vec![op(
                Mode::Overwrite,
                Target::Spare,
                64,
                encode_batch(Lsn::new(spare + 64), epoch, 46, &recs(&mut rng, &[3])),
            )],
        ),
        (
            "spare-later-batch",
            vec![op(
                Mode::Overwrite,
                Target::Spare,
                1000,
                encode_batch(Lsn::new(spare + 1000), epoch, 47, &recs(&mut rng, &[3])),
            )],
        ),
        (
            "new-segment-batch",
            vec![
                same_byte(Target::Spare),
                op(
                    Mode::Overwrite,
                    Target::NewSegment,
                    64,
                    encode_batch(Lsn::new(new_seg + 64), epoch, 48, &recs(&mut rng, &[3])),
                ),
            ],
        ),
        (
            "spare-empty",
            vec![op(Mode::Overwrite, Target::Spare, 0, vec![])],
        ),
        (
            "spare-and-new-segment",
            vec![same_byte(Target::Spare), same_byte(Target::NewSegment)],
        ),
        (
            "delete-spare-new-segment",
            vec![
                same_byte(Target::Spare),
                same_byte(Target::NewSegment),
                op(Mode::Overwrite, Target::DeleteSpare, 0, vec![]),
            ],
        ),
        (
            "tail-padded-to-end",
            vec![op(
                Mode::Overwrite,
                Target::Tail,
                tail_off(end),
                encode_padding(Lsn::new(end), Lsn::new(tail + CAP), epoch).to_vec(),
            )],
        ),
        (
            "tail-padded-then-spare-batch",
            vec![
                op(
                    Mode::Overwrite,
                    Target::Tail,
                    tail_off(end),
                    encode_padding(Lsn::new(end), Lsn::new(tail + CAP), epoch).to_vec(),
                ),
                op(
                    Mode::Overwrite,
                    Target::Spare,
                    64,
                    encode_batch(Lsn::new(spare + 64), epoch, 49, &recs(&mut rng, &[30, 1])),
                ),
            ],
        ),
        (
            "epochs-flip",
            vec![op(Mode::FlipBits, Target::Epochs, 20, vec![2])],
        ),
        (
            "epochs-garbage",
            vec![op(
                Mode::Overwrite,
                Target::Epochs,
                0,
                b"WALSHEPO garbage".to_vec(),
            )],
        ),
        (
            "epochs-truncated",
            vec![op(Mode::TruncateAt, Target::Epochs, 10, vec![0])],
        ),
        (
            "meta-flip",
            vec![op(Mode::FlipBits, Target::Meta, 17, vec![1])],
        ),
        // The clean-close marker and the flush stamps.
        ("closed-deleted", vec![no_marker()]),
        (
            "closed-flip",
            vec![op(Mode::FlipBits, Target::Closed, 17, vec![0x01])],
        ),
        (
            "closed-garbage",
            vec![op(Mode::AppendGarbage, Target::Closed, 0, rng.bytes(5))],
        ),
        (
            // Valid batches after the damage, none stamped past it, no marker: an
            // unflushed tail, cut (`OpenReport::unflushed_cut`).
            "unflushed-tail-no-marker",
            vec![no_marker(), body_flip(after_split)],
        ),
        (
            // The same damage, but the marker says the log was closed with more flushed.
            "unflushed-tail-closed-marker",
            vec![body_flip(after_split)],
        ),
        (
            // Damage before the split: the batches after the split prove it was flushed.
            "flushed-proof-in-tail-no-marker",
            vec![no_marker(), body_flip(before_split)],
        ),
        (
            // Damage in the previous segment: the tail's stamps prove it was flushed.
            "flip-prev-batch-no-marker",
            vec![
                no_marker(),
                op(
                    Mode::FlipBits,
                    Target::Prev,
                    (prev_batch + BATCH_HEADER_LEN as u64 + 1) as u16,
                    vec![0x80],
                ),
            ],
        ),
        (
            "lost-tail-no-marker",
            vec![
                no_marker(),
                op(
                    Mode::TruncateAt,
                    Target::Tail,
                    tail_off(last_base.get() + 10),
                    vec![1],
                ),
            ],
        ),
        (
            "flip-stamp-lag",
            vec![op(
                Mode::FlipBits,
                Target::Tail,
                tail_off(after_split + STAMP_RANGE.start as u64 + 1),
                vec![0x20],
            )],
        ),
        (
            "flip-stamp-crc-no-marker",
            vec![
                no_marker(),
                op(
                    Mode::FlipBits,
                    Target::Tail,
                    tail_off(after_split + STAMP_RANGE.start as u64 + 6),
                    vec![0x01],
                ),
            ],
        ),
        (
            "flip-last-stamp-no-marker",
            vec![
                no_marker(),
                op(
                    Mode::FlipBits,
                    Target::Tail,
                    tail_off(last_base.get() + STAMP_RANGE.start as u64),
                    vec![0x01],
                ),
            ],
        ),
        (
            // A valid first batch in the spare whose stamp does not reach the tail's end
            // (no honest writer makes one: it flushes a segment before writing into the
            // next): recovery judges the tail's end by stamps alone.
            "spare-first-batch-low-stamp",
            vec![op(Mode::Overwrite, Target::Spare, 64, {
                let mut b = encode_batch(Lsn::new(spare + 64), epoch, 50, &recs(&mut rng, &[3]));
                restamp(&mut b, Lsn::new(64));
                b
            })],
        ),
        (
            "hole-and-next",
            vec![
                op(
                    Mode::Overwrite,
                    Target::Tail,
                    tail_off(end),
                    next[..BATCH_HEADER_LEN].to_vec(),
                ),
                op(Mode::Overwrite, Target::Tail, tail_off(hole), misplaced),
            ],
        ),
    ];
    for (name, ops) in seeds.drain(..) {
        write(dir, name, &encode_ops(&ops));
    }
}

fn frame_decoder(dir: &Path) {
    use bytes::{Bytes, BytesMut};
    use walship_transport::wire::*;
    let e = Epoch::new(2);
    let ship = |base: u64, data: &[u8]| {
        Frame::Ship(Ship {
            epoch: e,
            base: Lsn::new(base),
            end: Lsn::new(base + data.len() as u64),
            committed: Lsn::new(base),
            raw_len: data.len() as u32,
            compression: Compression::None,
            data: Bytes::copy_from_slice(data),
        })
    };
    let frames: Vec<(&str, Vec<Frame>)> = vec![
        (
            "hello",
            vec![Frame::Hello(Hello {
                cluster_id: "prod".into(),
                node_id: "b".into(),
                last_epoch: e,
                seen_epoch: e,
                end_lsn: Lsn::new(4096),
                written_lsn: Lsn::new(4000),
                flushed_lsn: Lsn::new(2048),
                segment_capacity: 1 << 26,
                epochs: vec![(Epoch::new(1), Lsn::new(64)), (e, Lsn::new(2000))],
            })],
        ),
        (
            "welcome-then-ships",
            vec![
                Frame::Welcome(Welcome {
                    epoch: e,
                    truncate_to: Some(Lsn::new(64)),
                    start_lsn: Lsn::new(64),
                    leader_id: "a".into(),
                }),
                ship(64, &encode_batch(Lsn::new(64), e, 1, &[b"k=v".as_slice()])),
                ship(111, b"more"),
            ],
        ),
        ("zstd-ship", {
            let raw: Vec<u8> = (0..40)
                .flat_map(|i| format!("{{\"id\":{i},\"status\":\"shipped\"}}").into_bytes())
                .collect();
            let mut z = walship_transport::compress::Compressor::new(
                walship_transport::CompressionOptions {
                    level: Some(1),
                    min_bytes: 0,
                    ..Default::default()
                },
            )
            .expect("zstd context");
            let (compression, data) = z.encode(Bytes::from(raw.clone()));
            vec![Frame::Ship(Ship {
                epoch: e,
                base: Lsn::new(64),
                end: Lsn::new(64 + raw.len() as u64),
                committed: Lsn::new(64),
                raw_len: raw.len() as u32,
                compression,
                data,
            })]
        }),
        (
            "reject",
            vec![Frame::Reject(Reject {
                code: RejectCode::NotRetained,
                epoch: e,
                lsn: Lsn::new(1 << 26),
                reason: "needs a snapshot".into(),
            })],
        ),
        (
            "ack",
            vec![Frame::Ack(Ack {
                epoch: e,
                written: Lsn::new(300),
                flushed: Lsn::new(200),
                applied: Lsn::new(100),
            })],
        ),
        (
            "heartbeat",
            vec![Frame::Heartbeat(Heartbeat {
                epoch: e,
                end_lsn: Lsn::new(9),
                committed: Lsn::new(5),
                timestamp_us: 1,
                reply_requested: true,
            })],
        ),
    ];
    for (name, fs_) in frames {
        let mut out = BytesMut::new();
        for f in &fs_ {
            f.encode(&mut out).expect("encode seed frame");
        }
        for (prefix, tag) in [([255u8, 0, 0], "whole"), ([7u8, 1, 1], "chunked")] {
            let mut v = prefix.to_vec();
            v.extend_from_slice(&out);
            write(dir, &format!("{name}-{tag}"), &v);
        }
    }
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for (target, f) in [
        ("batch_decoder", batch_decoder as fn(&Path)),
        ("recovery", recovery),
        ("frame_decoder", frame_decoder),
    ] {
        let dir = root.join(target);
        fs::create_dir_all(&dir).expect("create corpus dir");
        for entry in fs::read_dir(&dir).expect("list corpus") {
            let p = entry.expect("list corpus").path();
            if p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("seed-"))
            {
                fs::remove_file(&p).expect("remove old seed");
            }
        }
        f(&dir);
    }
}
