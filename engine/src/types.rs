//! Vocabulary types that cross module and crate boundaries: [`Lsn`], [`Epoch`],
//! [`Durability`]. They are distinct types so that a byte count cannot be passed where a
//! log position is meant, nor an epoch where an LSN is.

use std::fmt;
use std::str::FromStr;

/// A log sequence number: a byte position in the logical log, as in PostgreSQL.
///
/// LSN space maps one to one onto segment bytes (segment headers and padding included),
/// so the distance between two LSNs is a byte count: lag in bytes is a subtraction.
/// [`Log::append`](crate::Log::append) returns the LSN just past the record, which is the
/// token a client carries to wait for durability or for a replica to have applied it.
///
/// Displayed as PostgreSQL does, two 32-bit halves in hex: `0/1A2B3C`.
///
/// ```
/// use walship_engine::Lsn;
/// let a = Lsn::new(0x1_0000_0040);
/// assert_eq!(a.to_string(), "1/40");
/// assert_eq!(a.bytes_after(Lsn::new(0x40)), 0x1_0000_0000);
/// assert_eq!("1/40".parse::<Lsn>().unwrap(), a);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(u64);

impl Lsn {
    /// The position before any byte of any log.
    pub const ZERO: Lsn = Lsn(0);

    /// Wraps a raw byte position.
    pub const fn new(raw: u64) -> Lsn {
        Lsn(raw)
    }

    /// The raw byte position.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// How many bytes `self` lies after `earlier` (0 if it does not).
    pub const fn bytes_after(self, earlier: Lsn) -> u64 {
        self.0.saturating_sub(earlier.0)
    }

    /// The position `bytes` further on, or `None` on overflow.
    pub const fn checked_add(self, bytes: u64) -> Option<Lsn> {
        match self.0.checked_add(bytes) {
            Some(v) => Some(Lsn(v)),
            None => None,
        }
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// Error parsing an [`Lsn`] or a [`Durability`] from text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot parse {what} from {input:?}: {expected}")]
pub struct ParseError {
    what: &'static str,
    input: String,
    expected: &'static str,
}

impl FromStr for Lsn {
    type Err = ParseError;

    /// Accepts PostgreSQL's `HI/LO` hex form or a plain decimal byte position.
    fn from_str(s: &str) -> Result<Lsn, ParseError> {
        let err = || ParseError {
            what: "LSN",
            input: s.to_string(),
            expected: "HI/LO in hex (e.g. 0/16B3740) or a decimal byte position",
        };
        if let Some((hi, lo)) = s.split_once('/') {
            let hi = u32::from_str_radix(hi, 16).map_err(|_| err())?;
            let lo = u32::from_str_radix(lo, 16).map_err(|_| err())?;
            Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
        } else {
            s.parse::<u64>().map(Lsn).map_err(|_| err())
        }
    }
}

/// A leadership term. Every time a node becomes leader, including a restart of the
/// same leader, it starts a new, strictly greater epoch (Kafka's leader epoch,
/// PostgreSQL's timeline). Every batch records the epoch it was written in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Epoch(u64);

impl Epoch {
    /// The epoch of a log that has never had a leader.
    pub const ZERO: Epoch = Epoch(0);

    /// Wraps a raw epoch number.
    pub const fn new(raw: u64) -> Epoch {
        Epoch(raw)
    }

    /// The raw epoch number.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The largest epoch. A cluster whose history reaches it can start no further epoch,
    /// so no arithmetic on epochs may wrap past it.
    pub const MAX: Epoch = Epoch(u64::MAX);

    /// The epoch after this one, or `None` at [`Epoch::MAX`] (never a wrap to zero).
    ///
    /// ```
    /// use walship_engine::Epoch;
    /// assert_eq!(Epoch::new(4).checked_next(), Some(Epoch::new(5)));
    /// assert_eq!(Epoch::MAX.checked_next(), None);
    /// ```
    pub const fn checked_next(self) -> Option<Epoch> {
        match self.0.checked_add(1) {
            Some(n) => Some(Epoch(n)),
            None => None,
        }
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// How durable a commit must be before [`Log::commit`](crate::Log::commit) resolves,
/// named after PostgreSQL's `synchronous_commit`. Levels are ordered: each implies the
/// ones before it.
///
/// | level | resolves when | lost on crash |
/// | --- | --- | --- |
/// | `Async` | the record is queued for the log writer | what the writer had not yet written |
/// | `Local` | flushed to local disk | nothing, unless the leader's disk is lost |
/// | `RemoteWrite` | `Local`, and the sync quorum has it in its OS | on simultaneous OS crash of leader and quorum |
/// | `RemoteFlush` | `Local`, and the quorum has flushed it | nothing while a quorum's disks survive |
/// | `RemoteApply` | `RemoteFlush`, and the quorum has applied it | nothing; read-your-writes on the quorum |
///
/// ```
/// use walship_engine::Durability;
/// assert!(Durability::RemoteFlush > Durability::Local);
/// assert_eq!("remote-apply".parse::<Durability>().unwrap(), Durability::RemoteApply);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Durability {
    /// Queued for the log writer; flushed within the async flush interval.
    Async,
    /// Flushed (fdatasync) on the local disk.
    Local,
    /// Local, and written (not necessarily flushed) by the sync quorum.
    RemoteWrite,
    /// Local, and flushed by the sync quorum.
    RemoteFlush,
    /// Remote flush, and applied by the sync quorum (visible to reads there).
    RemoteApply,
}

impl Durability {
    /// Every level, weakest first.
    pub const ALL: [Durability; 5] = [
        Durability::Async,
        Durability::Local,
        Durability::RemoteWrite,
        Durability::RemoteFlush,
        Durability::RemoteApply,
    ];

    /// Whether this level waits on replicas.
    pub const fn is_remote(self) -> bool {
        matches!(
            self,
            Durability::RemoteWrite | Durability::RemoteFlush | Durability::RemoteApply
        )
    }

    /// The kebab-case name used in configuration and output.
    pub const fn as_str(self) -> &'static str {
        match self {
            Durability::Async => "async",
            Durability::Local => "local",
            Durability::RemoteWrite => "remote-write",
            Durability::RemoteFlush => "remote-flush",
            Durability::RemoteApply => "remote-apply",
        }
    }
}

impl fmt::Display for Durability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Durability {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Durability, ParseError> {
        let norm = s.to_ascii_lowercase().replace('_', "-");
        Durability::ALL
            .into_iter()
            .find(|d| d.as_str() == norm || d.as_str().replace('-', "") == norm)
            .ok_or_else(|| ParseError {
                what: "durability",
                input: s.to_string(),
                expected: "one of async, local, remote-write, remote-flush, remote-apply",
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_parse_and_display_round_trip() {
        for raw in [0u64, 1, 0x40, 0xFFFF_FFFF, 0x1_0000_0000, u64::MAX] {
            let lsn = Lsn::new(raw);
            assert_eq!(lsn.to_string().parse::<Lsn>(), Ok(lsn));
        }
        assert_eq!("12345".parse::<Lsn>(), Ok(Lsn::new(12345)));
        assert!("x/1".parse::<Lsn>().is_err());
        assert!("".parse::<Lsn>().is_err());
    }

    #[test]
    fn durability_names() {
        for d in Durability::ALL {
            assert_eq!(d.as_str().parse::<Durability>(), Ok(d));
        }
        assert_eq!(
            "RemoteFlush".parse::<Durability>(),
            Ok(Durability::RemoteFlush)
        );
        assert!("sync".parse::<Durability>().is_err());
        assert!(!Durability::Local.is_remote());
        assert!(Durability::RemoteWrite.is_remote());
    }
}
