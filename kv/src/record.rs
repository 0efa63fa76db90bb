//! The log record of one write: what every node applies, in LSN order, to reach the same
//! state.
//!
//! A record holds the *effects* of a command, decided by the leader against its state at
//! that moment: `INCR` logs the new value, `SET key v EX 10` logs an absolute expiry time,
//! an expired key is deleted by an `Expired` op the leader logs. Replaying a record never
//! reads a clock or the state, so every replica applies it identically. One command is one
//! record; a `MULTI`/`EXEC` block is one record, applied whole.
//!
//! Every record carries its origin node and a [hybrid logical clock](crate::hlc) timestamp,
//! so a multi-leader mode can order conflicting writes by last-write-wins later.
//!
//! Format 1, little-endian:
//!
//! ```text
//! u8   format (1)
//! u8   origin length n (1..=255)       n bytes: the origin node's id (UTF-8)
//! u64  HLC timestamp
//! u32  op count
//! op:  u8 tag, u32 key length, key,
//!      tag 1 Set:     u64 expire-at ms (0: none), u32 value length, value
//!      tag 2 Del
//!      tag 3 Expire:  u64 expire-at ms
//!      tag 4 Persist
//!      tag 5 Expired (a deletion the leader's expiry decided)
//! ```
//!
//! Decoding trusts nothing: every length is checked against what is left and against the
//! limits below, unknown tags and formats are refused with what and where.

use bytes::{BufMut, Bytes};

use crate::hlc::Timestamp;

/// The record format written.
pub const FORMAT: u8 = 1;
/// Largest key, as Redis's 512 MB would not fit a log record: 1 MiB.
pub const MAX_KEY_BYTES: usize = 1 << 20;
/// Most ops in one record (a `MULTI` block or `MSET`).
pub const MAX_OPS: usize = 1 << 20;

/// One effect on the key space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// The key holds `value`, expiring at `expire_at` (ms since the Unix epoch) if set.
    Set {
        /// The key.
        key: Bytes,
        /// Its value.
        value: Bytes,
        /// When it expires.
        expire_at: Option<u64>,
    },
    /// The key is deleted (`DEL`, `GETDEL`).
    Del {
        /// The key.
        key: Bytes,
    },
    /// The key expires at `at` (ms since the Unix epoch).
    Expire {
        /// The key.
        key: Bytes,
        /// When.
        at: u64,
    },
    /// The key no longer expires.
    Persist {
        /// The key.
        key: Bytes,
    },
    /// The key expired: deleted by the leader's expiry, counted as expired, not deleted.
    Expired {
        /// The key.
        key: Bytes,
    },
}

impl Op {
    /// The key the op is about.
    pub fn key(&self) -> &Bytes {
        match self {
            Op::Set { key, .. }
            | Op::Del { key }
            | Op::Expire { key, .. }
            | Op::Persist { key }
            | Op::Expired { key } => key,
        }
    }

    fn tag(&self) -> u8 {
        match self {
            Op::Set { .. } => 1,
            Op::Del { .. } => 2,
            Op::Expire { .. } => 3,
            Op::Persist { .. } => 4,
            Op::Expired { .. } => 5,
        }
    }
}

/// One record: who wrote it, when, and what it does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteRecord {
    /// The node that decided the write.
    pub origin: String,
    /// Its hybrid logical clock timestamp.
    pub ts: Timestamp,
    /// Its effects, in order.
    pub ops: Vec<Op>,
}

/// Why bytes are not a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The bytes end before the field.
    #[error("record truncated: {field} needs {need} bytes at offset {at}, {left} left")]
    Truncated {
        /// The field being read.
        field: &'static str,
        /// Where.
        at: usize,
        /// Bytes it needs.
        need: usize,
        /// Bytes left.
        left: usize,
    },
    /// A field holds a value the format does not allow.
    #[error("bad record: {what} at offset {at}")]
    Invalid {
        /// What is wrong.
        what: String,
        /// Where.
        at: usize,
    },
    /// A record to encode breaks a limit.
    #[error("record too large: {what}")]
    TooLarge {
        /// Which limit.
        what: String,
    },
}

impl WriteRecord {
    /// The encoded record.
    ///
    /// # Errors
    /// [`RecordError::TooLarge`] if the origin, a key or the op count breaks a limit.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use walship_kv::hlc::Timestamp;
    /// use walship_kv::record::{Op, WriteRecord};
    /// let r = WriteRecord {
    ///     origin: "n1".into(),
    ///     ts: Timestamp::new(1_700_000_000_000, 0),
    ///     ops: vec![Op::Set { key: Bytes::from("k"), value: Bytes::from("v"), expire_at: None }],
    /// };
    /// let bytes = Bytes::from(r.encode()?);
    /// assert_eq!(WriteRecord::decode(&bytes)?, r);
    /// # Ok::<(), walship_kv::record::RecordError>(())
    /// ```
    pub fn encode(&self) -> Result<Vec<u8>, RecordError> {
        let too_large = |what: String| RecordError::TooLarge { what };
        let origin = self.origin.as_bytes();
        if origin.is_empty() || origin.len() > usize::from(u8::MAX) {
            return Err(too_large(format!(
                "origin {:?} must be 1 to 255 bytes",
                self.origin
            )));
        }
        if self.ops.len() > MAX_OPS {
            return Err(too_large(format!(
                "{} ops, at most {MAX_OPS}",
                self.ops.len()
            )));
        }
        let size = 2
            + origin.len()
            + 12
            + self
                .ops
                .iter()
                .map(|op| {
                    5 + op.key().len()
                        + match op {
                            Op::Set { value, .. } => 12 + value.len(),
                            Op::Expire { .. } => 8,
                            _ => 0,
                        }
                })
                .sum::<usize>();
        let mut out = Vec::with_capacity(size);
        out.put_u8(FORMAT);
        // Checked above: at most 255.
        out.put_u8(origin.len() as u8);
        out.put_slice(origin);
        out.put_u64_le(self.ts.raw());
        out.put_u32_le(self.ops.len() as u32);
        for op in &self.ops {
            let key = op.key();
            if key.len() > MAX_KEY_BYTES {
                return Err(too_large(format!(
                    "a key of {} bytes, at most {MAX_KEY_BYTES}",
                    key.len()
                )));
            }
            out.put_u8(op.tag());
            out.put_u32_le(key.len() as u32);
            out.put_slice(key);
            match op {
                Op::Set {
                    value, expire_at, ..
                } => {
                    let len = u32::try_from(value.len())
                        .map_err(|_| too_large(format!("a value of {} bytes", value.len())))?;
                    out.put_u64_le(expire_at.unwrap_or(0));
                    out.put_u32_le(len);
                    out.put_slice(value);
                }
                Op::Expire { at, .. } => out.put_u64_le(*at),
                Op::Del { .. } | Op::Persist { .. } | Op::Expired { .. } => {}
            }
        }
        Ok(out)
    }

    /// Decodes a record; keys and values are views into `bytes`, not copies.
    ///
    /// # Errors
    /// [`RecordError`] naming the field and offset that is wrong.
    pub fn decode(bytes: &Bytes) -> Result<WriteRecord, RecordError> {
        let mut r = Cursor { bytes, at: 0 };
        let format = r.u8("format")?;
        if format != FORMAT {
            return Err(RecordError::Invalid {
                what: format!("unknown record format {format} (this build reads {FORMAT})"),
                at: 0,
            });
        }
        let n = usize::from(r.u8("origin length")?);
        if n == 0 {
            return Err(r.invalid("empty origin".into(), 1));
        }
        let at = r.at;
        let origin = std::str::from_utf8(&r.take("origin", n)?)
            .map_err(|e| r.invalid(format!("origin is not UTF-8: {e}"), at))?
            .to_owned();
        let ts = Timestamp::from_raw(r.u64("timestamp")?);
        let count = r.u32("op count")? as usize;
        if count > MAX_OPS {
            return Err(r.invalid(format!("{count} ops, at most {MAX_OPS}"), r.at - 4));
        }
        // Each op takes at least 5 bytes: a count beyond what is left is a lie.
        if count > (bytes.len() - r.at) / 5 {
            return Err(r.invalid(
                format!("{count} ops cannot fit in {} bytes", bytes.len() - r.at),
                r.at - 4,
            ));
        }
        let mut ops = Vec::with_capacity(count);
        for _ in 0..count {
            let at = r.at;
            let tag = r.u8("op tag")?;
            let klen = r.u32("key length")? as usize;
            if klen > MAX_KEY_BYTES {
                return Err(r.invalid(
                    format!("key of {klen} bytes, at most {MAX_KEY_BYTES}"),
                    at + 1,
                ));
            }
            let key = r.take("key", klen)?;
            ops.push(match tag {
                1 => {
                    let expire_at = Some(r.u64("expire-at")?).filter(|&t| t != 0);
                    let vlen = r.u32("value length")? as usize;
                    let value = r.take("value", vlen)?;
                    Op::Set {
                        key,
                        value,
                        expire_at,
                    }
                }
                2 => Op::Del { key },
                3 => Op::Expire {
                    key,
                    at: r.u64("expire-at")?,
                },
                4 => Op::Persist { key },
                5 => Op::Expired { key },
                t => return Err(r.invalid(format!("unknown op tag {t}"), at)),
            });
        }
        if r.at != bytes.len() {
            return Err(r.invalid(
                format!("{} bytes after the last op", bytes.len() - r.at),
                r.at,
            ));
        }
        Ok(WriteRecord { origin, ts, ops })
    }
}

struct Cursor<'a> {
    bytes: &'a Bytes,
    at: usize,
}

impl Cursor<'_> {
    fn invalid(&self, what: String, at: usize) -> RecordError {
        RecordError::Invalid { what, at }
    }

    fn take(&mut self, field: &'static str, n: usize) -> Result<Bytes, RecordError> {
        let left = self.bytes.len() - self.at;
        if n > left {
            return Err(RecordError::Truncated {
                field,
                at: self.at,
                need: n,
                left,
            });
        }
        let b = self.bytes.slice(self.at..self.at + n);
        self.at += n;
        Ok(b)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], RecordError> {
        let b = self.take(field, N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(&b);
        Ok(a)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, RecordError> {
        Ok(self.array::<1>(field)?[0])
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, RecordError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, RecordError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn op() -> impl Strategy<Value = Op> {
        let key = proptest::collection::vec(any::<u8>(), 0..40).prop_map(Bytes::from);
        let value = proptest::collection::vec(any::<u8>(), 0..200).prop_map(Bytes::from);
        prop_oneof![
            (key.clone(), value, proptest::option::of(1u64..)).prop_map(
                |(key, value, expire_at)| Op::Set {
                    key,
                    value,
                    expire_at
                }
            ),
            key.clone().prop_map(|key| Op::Del { key }),
            (key.clone(), any::<u64>()).prop_map(|(key, at)| Op::Expire { key, at }),
            key.clone().prop_map(|key| Op::Persist { key }),
            key.prop_map(|key| Op::Expired { key }),
        ]
    }

    proptest! {
        #[test]
        fn records_round_trip(origin in "[a-z0-9-]{1,40}", ts in any::<u64>(), ops in proptest::collection::vec(op(), 0..20)) {
            let r = WriteRecord { origin, ts: Timestamp::from_raw(ts), ops };
            let bytes = Bytes::from(r.encode().unwrap());
            prop_assert_eq!(WriteRecord::decode(&bytes).unwrap(), r);
        }

        /// Any bytes: an error or a record, never a panic; and a decoded record encodes
        /// back to the same bytes (one encoding per record).
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let bytes = Bytes::from(data);
            if let Ok(r) = WriteRecord::decode(&bytes) {
                prop_assert_eq!(Bytes::from(r.encode().unwrap()), bytes);
            }
        }

        /// Every cut of a valid record is refused.
        #[test]
        fn every_truncation_is_refused(ops in proptest::collection::vec(op(), 1..5), cut in any::<prop::sample::Index>()) {
            let r = WriteRecord { origin: "n1".into(), ts: Timestamp::new(1, 2), ops };
            let full = r.encode().unwrap();
            let n = cut.index(full.len());
            prop_assert!(WriteRecord::decode(&Bytes::copy_from_slice(&full[..n])).is_err());
        }
    }

    #[test]
    fn errors_name_the_field_and_offset() {
        let r = WriteRecord {
            origin: "n1".into(),
            ts: Timestamp::new(5, 0),
            ops: vec![Op::Del {
                key: Bytes::from("k"),
            }],
        };
        let mut b = r.encode().unwrap();
        b[0] = 9;
        let e = WriteRecord::decode(&Bytes::from(b.clone())).unwrap_err();
        assert!(e.to_string().contains("unknown record format 9"), "{e}");
        b[0] = FORMAT;
        // The op tag, after format, origin (1 + 2), timestamp and count.
        let tag_at = 2 + 2 + 8 + 4;
        b[tag_at] = 77;
        let e = WriteRecord::decode(&Bytes::from(b.clone())).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("bad record: unknown op tag 77 at offset {tag_at}")
        );
        // A count of ops that cannot fit is refused before anything is allocated for it.
        b[tag_at] = 2;
        b[tag_at - 4..tag_at].copy_from_slice(&u32::MAX.to_le_bytes());
        let e = WriteRecord::decode(&Bytes::from(b)).unwrap_err();
        assert!(e.to_string().contains("ops"), "{e}");
        let long = WriteRecord {
            origin: "x".repeat(256),
            ..r
        };
        assert!(matches!(long.encode(), Err(RecordError::TooLarge { .. })));
    }
}
