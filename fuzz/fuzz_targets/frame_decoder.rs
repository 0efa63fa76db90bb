//! The transport's frame decoder over arbitrary bytes, fed in arbitrary chunks.
//!
//! It must never panic, never return a frame that fails to re-encode to the same bytes,
//! and, once it has refused the stream, never be asked again (the connection closes).
//! The data of every accepted `Ship` frame also goes through the follower's decompressor,
//! which must either fail or produce exactly the declared length.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use walship_engine::Lsn;
use walship_transport::compress::Decompressor;
use walship_transport::wire::{Decoder, Frame};

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    // First byte: chunk size for feeding; second: whether an expected LSN is set.
    let chunk = usize::from(data[0]).max(1);
    let mut dec = Decoder::new(1 << 16);
    if data[1] & 1 == 1 {
        dec.expect_lsn(Lsn::new(u64::from(data[2]) * 64));
    }
    let input = &data[3..];
    let mut buf = BytesMut::new();
    let mut fed = 0;
    let mut consumed_frames: Vec<Frame> = Vec::new();
    'outer: while fed < input.len() {
        let n = chunk.min(input.len() - fed);
        buf.extend_from_slice(&input[fed..fed + n]);
        fed += n;
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(f)) => consumed_frames.push(f),
                Ok(None) => break,
                Err(_) => break 'outer,
            }
        }
    }
    let mut z = Decompressor::new().expect("zstd context");
    for f in &consumed_frames {
        if let Frame::Ship(s) = f {
            if let Ok(raw) = z.decode(s.compression, s.raw_len, s.data.clone()) {
                assert_eq!(raw.len(), s.raw_len as usize);
            }
        }
    }
    // Every accepted frame re-encodes to bytes that decode to the same frame.
    for f in consumed_frames {
        let mut out = BytesMut::new();
        f.encode(&mut out).expect("a decoded frame re-encodes");
        let mut fresh = Decoder::new(1 << 16);
        match fresh.decode(&mut out) {
            Ok(Some(again)) => assert_eq!(again, f),
            // A fresh decoder lacks the stream context (expected LSN, epoch) of the first
            // one, which can only make it accept more, never less.
            other => panic!("re-encoded frame not decoded: {other:?}"),
        }
        assert!(out.is_empty());
    }
});
