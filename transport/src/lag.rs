//! Replication lag in time, as `pg_stat_replication`'s `write_lag`, `flush_lag` and
//! `replay_lag`.
//!
//! The leader records when each shipped position left it; when an acknowledgement shows
//! a follower has written, flushed or applied up to a position, the lag of that level is
//! the time since the newest sample at or below it was sent. As in PostgreSQL's
//! `LagTracker`, the sample buffer is bounded: when it is full the newest sample is
//! overwritten, which can only overstate lag, never understate it. No clock inside.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use walship_engine::Lsn;

use crate::quorum::Progress;

/// Samples kept per level.
const CAPACITY: usize = 4096;

/// The three lags of one follower; see the [module docs](self).
#[derive(Debug, Clone, Default)]
pub struct LagTracker {
    levels: [Level; 3],
}

#[derive(Debug, Clone, Default)]
struct Level {
    samples: VecDeque<(Lsn, Instant)>,
    lag: Option<Duration>,
}

impl Level {
    fn shipped(&mut self, end: Lsn, at: Instant) {
        if self.samples.len() == CAPACITY {
            self.samples.pop_back();
        }
        self.samples.push_back((end, at));
    }

    fn reached(&mut self, pos: Lsn, now: Instant) {
        let mut newest = None;
        while let Some(&(lsn, at)) = self.samples.front() {
            if lsn > pos {
                break;
            }
            newest = Some(at);
            self.samples.pop_front();
        }
        if let Some(at) = newest {
            self.lag = Some(now.saturating_duration_since(at));
        }
    }
}

/// A follower's lag per level.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lags {
    /// Until written to the follower's OS (`write_lag`).
    pub write: Option<Duration>,
    /// Until flushed to its disk (`flush_lag`).
    pub flush: Option<Duration>,
    /// Until applied by its embedder (`replay_lag`).
    pub apply: Option<Duration>,
}

impl LagTracker {
    /// Data up to `end` left the leader at `at`.
    pub fn shipped(&mut self, end: Lsn, at: Instant) {
        for l in &mut self.levels {
            l.shipped(end, at);
        }
    }

    /// The follower acknowledged `p` at `now`.
    pub fn acked(&mut self, p: Progress, now: Instant) {
        self.levels[0].reached(p.written, now);
        self.levels[1].reached(p.flushed, now);
        self.levels[2].reached(p.applied, now);
    }

    /// The latest measured lags (`None` until a level has been measured once).
    pub fn lags(&self) -> Lags {
        Lags {
            write: self.levels[0].lag,
            flush: self.levels[1].lag,
            apply: self.levels[2].lag,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_level_measures_from_the_newest_sample_it_covers() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut t = LagTracker::default();
        t.shipped(Lsn::new(100), t0);
        t.shipped(Lsn::new(200), t0 + ms(10));
        t.shipped(Lsn::new(300), t0 + ms(20));
        let p = |w, f, a| Progress {
            written: Lsn::new(w),
            flushed: Lsn::new(f),
            applied: Lsn::new(a),
        };
        t.acked(p(200, 100, 0), t0 + ms(25));
        assert_eq!(t.lags().write, Some(ms(15)));
        assert_eq!(t.lags().flush, Some(ms(25)));
        assert_eq!(t.lags().apply, None);
        t.acked(p(300, 300, 250), t0 + ms(40));
        assert_eq!(
            t.lags(),
            Lags {
                write: Some(ms(20)),
                flush: Some(ms(20)),
                apply: Some(ms(30)),
            }
        );
        // Nothing new covered: the last measurement stays.
        t.acked(p(300, 300, 250), t0 + ms(90));
        assert_eq!(t.lags().write, Some(ms(20)));
    }

    #[test]
    fn a_full_buffer_overwrites_the_newest_sample() {
        let t0 = Instant::now();
        let mut t = LagTracker::default();
        for i in 0..(CAPACITY as u64 + 10) {
            t.shipped(Lsn::new(i + 1), t0 + Duration::from_micros(i));
        }
        assert_eq!(t.levels[0].samples.len(), CAPACITY);
        t.acked(
            Progress {
                written: Lsn::new(u64::MAX),
                ..Progress::default()
            },
            t0 + Duration::from_secs(1),
        );
        assert!(t.lags().write.is_some());
    }
}
