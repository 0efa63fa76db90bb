//! A hybrid logical clock (Kulkarni et al., "Logical Physical Clocks", 2014): timestamps
//! that follow wall-clock milliseconds, never go backwards on one node, and order every
//! write after those it could have seen. Every record walship-kv logs carries one with
//! its origin node, so a later multi-leader mode can resolve conflicting writes by
//! last-write-wins on (timestamp, origin) without a format change.
//!
//! Sans-I/O: the caller passes the wall clock in.

/// A timestamp: wall-clock milliseconds in the high 48 bits, a logical counter in the low
/// 16. Ordered as an integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(u64);

const LOGICAL_BITS: u32 = 16;
const LOGICAL_MASK: u64 = (1 << LOGICAL_BITS) - 1;

impl Timestamp {
    /// The timestamp of wall-clock `ms` with logical counter `logical`.
    pub fn new(ms: u64, logical: u16) -> Timestamp {
        Timestamp((ms << LOGICAL_BITS) | u64::from(logical))
    }

    /// From its 64-bit encoding.
    pub fn from_raw(raw: u64) -> Timestamp {
        Timestamp(raw)
    }

    /// Its 64-bit encoding.
    pub fn raw(self) -> u64 {
        self.0
    }

    /// The wall-clock part, milliseconds since the Unix epoch.
    pub fn millis(self) -> u64 {
        self.0 >> LOGICAL_BITS
    }

    /// The logical part.
    pub fn logical(self) -> u16 {
        // Masked to 16 bits: the cast cannot lose anything.
        (self.0 & LOGICAL_MASK) as u16
    }
}

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.millis(), self.logical())
    }
}

/// One node's clock.
///
/// ```
/// use walship_kv::hlc::{Clock, Timestamp};
/// let mut c = Clock::default();
/// let a = c.tick(1000);
/// let b = c.tick(1000); // same millisecond: the logical part moves
/// assert!(b > a && b.millis() == 1000);
/// let c2 = c.tick(900); // the wall clock went back: the clock does not
/// assert!(c2 > b);
/// c.observe(Timestamp::new(5000, 3)); // a write from a node ahead of us
/// assert!(c.tick(1000) > Timestamp::new(5000, 3));
/// ```
#[derive(Debug, Clone, Default)]
pub struct Clock {
    last: Timestamp,
}

impl Clock {
    /// A timestamp for a new event at wall-clock `now_ms`: after every timestamp this
    /// clock issued or observed.
    pub fn tick(&mut self, now_ms: u64) -> Timestamp {
        let wall = Timestamp::new(now_ms.min(u64::MAX >> LOGICAL_BITS), 0);
        self.last = if wall > self.last {
            wall
        } else {
            // Same or earlier millisecond: count on; a full counter carries into the
            // millisecond (the clock runs a little ahead rather than repeating).
            Timestamp(self.last.0.saturating_add(1))
        };
        self.last
    }

    /// Takes in a timestamp seen in a record from elsewhere: later ticks order after it.
    pub fn observe(&mut self, seen: Timestamp) {
        self.last = self.last.max(seen);
    }

    /// The last timestamp issued or observed.
    pub fn last(&self) -> Timestamp {
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_strictly_increasing_whatever_the_wall_clock_does() {
        let mut c = Clock::default();
        let mut prev = Timestamp::default();
        for now in [10, 10, 10, 9, 0, 11, 11, 5, 1_000_000] {
            let t = c.tick(now);
            assert!(t > prev, "{t} after {prev}");
            prev = t;
        }
        assert_eq!(c.tick(2_000_000), Timestamp::new(2_000_000, 0));
    }

    #[test]
    fn a_full_logical_counter_carries_into_the_millisecond() {
        let mut c = Clock::default();
        c.observe(Timestamp::new(7, u16::MAX));
        let t = c.tick(7);
        assert_eq!((t.millis(), t.logical()), (8, 0));
    }

    #[test]
    fn the_encoding_round_trips() {
        let t = Timestamp::new(1_733_000_000_000, 42);
        assert_eq!(Timestamp::from_raw(t.raw()), t);
        assert_eq!(t.to_string(), "1733000000000.42");
    }
}
