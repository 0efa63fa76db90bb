//! The adaptive zstd level: a sender moves its level up while the link is what it waits
//! on, and down (to shipping raw, if the floor allows) while it waits on compression,
//! and keeps a move only if more log was acknowledged per busy second.
//!
//! The idea is zstd's own `--adapt` (its CLI raises the level while output is blocked
//! and lowers it while compression starves the output), with two guards it needs here:
//! - a sender blocked by a follower that applies slowly looks like one blocked by the
//!   link, and a higher level cannot help it;
//! - a sender whose receiver shares its cores (loopback, a small machine) sees the link
//!   while its own compression is what slows the receiver.
//!
//! So the wait only says which way to try first (up while the sender waited mostly on the
//! link, down otherwise); the other way is tried when the first is held back. Every move
//! is a **trial** of [`TRIAL_WINDOWS`] windows that alternate between the candidate and the
//! current level (a paired comparison: a trend, such as a writer that stops, favours
//! neither), judged by raw log acknowledged per busy second. A move up must gain [`UP_GAIN`]
//! (it costs CPU); a move down must not lose. A move that fails is undone, and that
//! direction is tried again only after twice as many windows as the last time (up to
//! [`MAX_HOLD`]). A window in which the sender waited on neither the link nor compression
//! for half its time (it had nothing to send) ends a trial unjudged and moves nothing:
//! the level does not matter to a sender the writers cannot keep busy.
//!
//! A window starts only once the bytes compressed at the previous level are through
//! (what was in flight at the change, at the measured acknowledgement rate, up to
//! [`MAX_SETTLE`]): acknowledgements credit bytes compressed some time ago, and a window
//! shorter than that delay would judge the level before it.
//!
//! Sans-I/O: the sender reports what it waited on, what was acknowledged and what is in
//! flight, with `now`; the controller answers with the level to use.

use std::time::{Duration, Instant};

/// The range an adaptive level moves in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Adapt {
    /// The lowest level, or `None` to allow shipping uncompressed (below every level).
    pub floor: Option<i32>,
    /// The highest level.
    pub ceiling: i32,
}

impl Default for Adapt {
    /// From shipping raw up to level 6: raw where the CPU is the limit (loopback, fast
    /// networks), up to where one core still compresses ~150 MB/s of WAL-like rows.
    fn default() -> Self {
        Adapt {
            floor: None,
            ceiling: 6,
        }
    }
}

/// What a sender spent a stretch of time on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Sending, or waiting for room to send: the link (or the follower behind it).
    Link,
    /// Compressing, or waiting for frames being compressed.
    Cpu,
    /// Nothing to send.
    Idle,
}

/// The levels an adaptive range steps through, between its floor and ceiling: each one
/// compresses more and slower than the one below it on WAL-like rows in 256 KiB frames
/// (`zstd_levels` in bench/RESULTS.md). Levels that a neighbour matches in speed and
/// beats in ratio (-5 against -3, -1 against 1, 2 against 3) are left out, and so is 4
/// (half the speed of 3 for 5 % more ratio), so that a step down saves CPU and a step up
/// gains ratio: a hill climb over them has no false summit.
pub const LADDER: [i32; 10] = [-50, -20, -10, -3, 1, 3, 6, 9, 13, 19];

/// How long one window lasts: long enough to ship several frames at any rate worth
/// adapting to, short enough to follow a link that changes.
pub const WINDOW: Duration = Duration::from_millis(200);

/// A move up is kept if the next window shipped at least this many times the one before.
pub const UP_GAIN: f64 = 1.02;

/// Windows a trial takes: the candidate level, the current one, the candidate again
/// (the window before the trial counts for the current level too). One window's rate is
/// noisy (a writer that pauses, a segment being created); alternating makes the
/// comparison paired.
pub const TRIAL_WINDOWS: u32 = 3;

/// Longest wait after a change of level for the bytes compressed at the old one to be
/// acknowledged.
pub const MAX_SETTLE: Duration = Duration::from_secs(1);

/// Most windows a direction that did not pay is held back.
pub const MAX_HOLD: u32 = 64;

/// A window counts only if the sender waited on the link or compression this much of it.
const MIN_BUSY: f64 = 0.5;

/// See the [module docs](self).
#[derive(Debug, Clone)]
pub struct LevelControl {
    ladder: Vec<Option<i32>>,
    at: usize,
    window: Window,
    since: Instant,
    trial: Option<Trial>,
    up: Backoff,
    down: Backoff,
    /// Raw bytes gathered and not yet acknowledged, as last reported.
    in_flight: u64,
    /// Acknowledged raw bytes per second, over the last windows.
    ack_rate: Option<f64>,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    link: Duration,
    cpu: Duration,
    raw: u64,
}

impl Window {
    fn new(start: Instant) -> Window {
        Window {
            start,
            link: Duration::ZERO,
            cpu: Duration::ZERO,
            raw: 0,
        }
    }
}

/// A move being judged: the two levels and what each shipped (bytes, busy time) in its
/// windows so far.
#[derive(Debug, Clone, Copy)]
struct Trial {
    from: usize,
    to: usize,
    up: bool,
    to_run: (u64, Duration),
    from_run: (u64, Duration),
    windows: u32,
}

#[derive(Debug, Clone, Copy, Default)]
struct Backoff {
    /// Windows to wait before this direction is tried again.
    hold: u32,
    /// Moves in this direction undone since the last one kept.
    misses: u32,
}

impl LevelControl {
    /// A controller in `range`, starting at `start` (`None`: uncompressed).
    ///
    /// # Errors
    /// A description of the problem if the floor is above the ceiling, a level is
    /// outside zstd's range, or `start` is outside the range.
    pub fn new(range: Adapt, start: Option<i32>, now: Instant) -> Result<LevelControl, String> {
        let zstd = super::levels();
        let (lo, hi) = (*zstd.start(), *zstd.end());
        let in_zstd = |l: i32| zstd.contains(&l);
        if !in_zstd(range.ceiling) || range.floor.is_some_and(|f| !in_zstd(f)) {
            return Err(format!(
                "adaptive levels {:?}..={} are outside zstd's {lo}..={hi}",
                range.floor, range.ceiling
            ));
        }
        if range.floor.is_some_and(|f| f > range.ceiling) {
            return Err(format!(
                "adaptive floor {:?} is above the ceiling {}",
                range.floor, range.ceiling
            ));
        }
        let floor = range.floor.unwrap_or(i32::MIN);
        let ok = match start {
            None => range.floor.is_none(),
            Some(s) => s >= floor && s <= range.ceiling,
        };
        if !ok {
            return Err(format!(
                "starting level {start:?} is outside the adaptive range {:?}..={}",
                range.floor, range.ceiling
            ));
        }
        let mut levels: Vec<i32> = LADDER
            .iter()
            .copied()
            .filter(|l| *l > floor && *l < range.ceiling)
            .chain(range.floor)
            .chain([range.ceiling])
            .chain(start)
            .collect();
        levels.sort_unstable();
        levels.dedup();
        let mut ladder: Vec<Option<i32>> = Vec::with_capacity(levels.len() + 1);
        if range.floor.is_none() {
            ladder.push(None);
        }
        ladder.extend(levels.into_iter().map(Some));
        let at = ladder.iter().position(|l| *l == start).unwrap_or(0);
        Ok(LevelControl {
            ladder,
            at,
            window: Window::new(now),
            since: now,
            trial: None,
            up: Backoff::default(),
            down: Backoff::default(),
            in_flight: 0,
            ack_rate: None,
        })
    }

    /// The level to compress at now (`None`: ship uncompressed).
    pub fn level(&self) -> Option<i32> {
        self.ladder[self.at]
    }

    /// The time since the last call went to `wait`.
    pub fn account(&mut self, now: Instant, wait: Wait) {
        // Time before the window starts (the previous level still settling) is not counted.
        let d = now.saturating_duration_since(self.since.max(self.window.start));
        self.since = now;
        match wait {
            Wait::Link => self.window.link += d,
            Wait::Cpu => self.window.cpu += d,
            Wait::Idle => {}
        }
    }

    /// The receiver acknowledged `raw` more bytes of log.
    pub fn acked(&mut self, now: Instant, raw: u64) {
        if now >= self.window.start {
            self.window.raw = self.window.raw.saturating_add(raw);
        }
    }

    /// `raw` bytes of log are gathered and not yet acknowledged: after a change of level,
    /// acknowledgements go on counting bytes compressed at the old one until these are
    /// through, so the next window starts only then.
    pub fn in_flight(&mut self, raw: u64) {
        self.in_flight = raw;
    }

    /// At the end of a window, the new level if it changes.
    pub fn poll(&mut self, now: Instant) -> Option<Option<i32>> {
        let elapsed = now.saturating_duration_since(self.window.start);
        if now < self.window.start || elapsed < WINDOW {
            return None;
        }
        let rate = self.window.raw as f64 / elapsed.as_secs_f64();
        self.ack_rate = Some(self.ack_rate.map_or(rate, |r| (r + rate) / 2.0));
        let change = self.decide(now, elapsed);
        if change.is_some() {
            let settle = match self.ack_rate {
                Some(r) if r > 0.0 => (self.in_flight as f64 / r).min(MAX_SETTLE.as_secs_f64()),
                _ => MAX_SETTLE.as_secs_f64(),
            };
            self.window = Window::new(now + Duration::from_secs_f64(settle));
        }
        change
    }

    /// Judges the window that just ended (`elapsed` long).
    fn decide(&mut self, now: Instant, elapsed: Duration) -> Option<Option<i32>> {
        let w = std::mem::replace(&mut self.window, Window::new(now));
        let busy = w.link + w.cpu;
        if busy.as_secs_f64() < elapsed.as_secs_f64() * MIN_BUSY {
            // Nothing to judge a trial by, nor a reason to move.
            return self.trial.take().map(|t| {
                self.at = t.from;
                self.level()
            });
        }
        tracing::trace!(
            level = ?self.level(),
            link_ms = w.link.as_millis() as u64,
            cpu_ms = w.cpu.as_millis() as u64,
            elapsed_ms = elapsed.as_millis() as u64,
            mb_s = w.raw as f64 / busy.as_secs_f64() / 1e6,
            "adaptive zstd window"
        );
        self.up.hold = self.up.hold.saturating_sub(1);
        self.down.hold = self.down.hold.saturating_sub(1);
        if let Some(mut t) = self.trial.take() {
            let run = if self.at == t.to {
                &mut t.to_run
            } else {
                &mut t.from_run
            };
            run.0 = run.0.saturating_add(w.raw);
            run.1 += busy;
            t.windows += 1;
            if t.windows < TRIAL_WINDOWS {
                // Alternate: the candidate and the current level take turns, so a trend
                // (a writer that stops, a link that frees up) favours neither.
                self.at = if self.at == t.to { t.from } else { t.to };
                self.trial = Some(t);
                return Some(self.level());
            }
            let rate = |r: (u64, Duration)| r.0 as f64 / r.1.as_secs_f64().max(1e-9);
            let (to, from) = (rate(t.to_run), rate(t.from_run));
            let dir = if t.up { &mut self.up } else { &mut self.down };
            let gain = if t.up { UP_GAIN } else { 1.0 };
            let kept = to >= from * gain;
            tracing::debug!(
                from = ?self.ladder[t.from],
                to = ?self.ladder[t.to],
                from_mb_s = from / 1e6,
                to_mb_s = to / 1e6,
                kept,
                "adaptive zstd trial"
            );
            if !kept {
                dir.misses = dir.misses.saturating_add(1);
                dir.hold = 1u32
                    .checked_shl(dir.misses)
                    .unwrap_or(MAX_HOLD)
                    .min(MAX_HOLD);
                self.at = t.from;
                return Some(self.level());
            }
            // Kept: this window ran at the new level, so it is the next trial's base.
            dir.misses = 0;
        }
        // The wait says which way to try first; the other way is tried too when the first
        // is held back, because a sender that shares its cores with the receiver (or
        // whose receiver applies slowly) sees the link while its own CPU is what a lower
        // level would free.
        let can_up = self.at + 1 < self.ladder.len() && self.up.hold == 0;
        let can_down = self.at > 0 && self.down.hold == 0;
        let up = if w.link > w.cpu * 2 {
            can_up
        } else {
            can_up && !can_down
        };
        if !up && !can_down {
            return None;
        }
        let to = if up { self.at + 1 } else { self.at - 1 };
        self.trial = Some(Trial {
            from: self.at,
            to,
            up,
            to_run: (0, Duration::ZERO),
            from_run: (w.raw, busy),
            windows: 0,
        });
        self.at = to;
        Some(self.level())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sender whose rate at each level is the smaller of what its CPU compresses and
    /// what the link carries times the level's ratio, waiting on whichever is smaller.
    struct Model {
        cpu: fn(Option<i32>) -> f64,
        link: f64,
        ratio: fn(Option<i32>) -> f64,
        /// The follower's apply rate (raw), a limit no level changes.
        apply: f64,
    }

    /// WAL-like: ratio grows and speed falls with the level (shapes from MACHINE.md).
    fn ratio(l: Option<i32>) -> f64 {
        match l {
            None => 1.0,
            Some(l) if l < 1 => 3.0 + f64::from(l.max(-50)) / 50.0,
            Some(l) => 4.0 + f64::from(l - 1) * 0.15,
        }
    }
    fn cpu(l: Option<i32>) -> f64 {
        match l {
            None => 2000.0,
            Some(l) if l < 1 => 600.0 - f64::from(l.max(-50)) * 8.0,
            Some(l) => 450.0 / (1.0 + f64::from(l - 1) * 0.25),
        }
    }

    impl Model {
        fn rate(&self, l: Option<i32>) -> f64 {
            (self.cpu)(l)
                .min(self.link * (self.ratio)(l))
                .min(self.apply)
        }
        fn best(&self, ladder: &[Option<i32>]) -> Option<i32> {
            let mut best = ladder[0];
            for l in ladder {
                if self.rate(*l) > self.rate(best) {
                    best = *l;
                }
            }
            best
        }
        /// Runs `windows` windows and returns the level of each.
        fn run(&self, c: &mut LevelControl, mut now: Instant, windows: usize) -> Vec<Option<i32>> {
            let mut seen = Vec::new();
            for _ in 0..windows {
                let l = c.level();
                seen.push(l);
                let r = self.rate(l);
                let wait = if (self.cpu)(l) <= r * 1.001 && self.apply > r {
                    Wait::Cpu
                } else {
                    Wait::Link
                };
                now += WINDOW;
                c.account(now, wait);
                c.acked(now, (r * 1e6 * WINDOW.as_secs_f64()) as u64);
                c.poll(now);
            }
            seen
        }
    }

    /// The WAL-like sender over a link of `link` MB/s, with a follower that keeps up.
    fn over(link: f64) -> Model {
        Model {
            cpu,
            link,
            ratio,
            apply: f64::MAX,
        }
    }

    fn control(range: Adapt, start: Option<i32>) -> (LevelControl, Instant) {
        let now = Instant::now();
        (LevelControl::new(range, start, now).unwrap(), now)
    }

    fn settles(m: &Model, start: Option<i32>) -> (Option<i32>, Vec<Option<i32>>) {
        let (mut c, now) = control(Adapt::default(), start);
        let best = m.best(&c.ladder);
        let seen = m.run(&mut c, now, 400);
        (best, seen)
    }

    /// Of the last 200 windows, the share spent at `level`.
    fn share(seen: &[Option<i32>], level: Option<i32>) -> f64 {
        let tail = &seen[seen.len() - 200..];
        tail.iter().filter(|l| **l == level).count() as f64 / tail.len() as f64
    }

    #[test]
    fn a_slow_link_climbs_to_the_level_where_the_cpu_becomes_the_limit() {
        let m = over(60.0);
        let (best, seen) = settles(&m, Some(1));
        assert!(best > Some(1), "the model's best is {best:?}");
        assert!(
            share(&seen, best) > 0.9,
            "best {best:?}, seen {:?}",
            &seen[200..]
        );
    }

    #[test]
    fn a_fast_link_turns_compression_off() {
        let m = over(2000.0);
        let (best, seen) = settles(&m, Some(1));
        assert_eq!(best, None);
        assert!(share(&seen, None) > 0.9, "seen {:?}", &seen[200..]);
    }

    #[test]
    fn a_middling_link_settles_on_a_negative_level() {
        let m = over(250.0);
        let (best, seen) = settles(&m, None);
        assert!(best.is_some_and(|l| l < 1), "best {best:?}");
        assert!(
            share(&seen, best) > 0.85,
            "best {best:?}, seen {:?}",
            &seen[200..]
        );
    }

    #[test]
    fn a_slow_follower_gets_no_higher_level_and_the_cpu_is_saved() {
        // The sender waits on the link, but only because the follower applies slowly: a
        // higher level cannot help and is tried ever more rarely, a lower one costs
        // nothing and is kept.
        let m = Model {
            cpu,
            link: 10_000.0,
            ratio,
            apply: 100.0,
        };
        let (_, seen) = settles(&m, Some(1));
        assert!(share(&seen, None) > 0.95, "seen {:?}", &seen[200..]);
        let above = seen.iter().filter(|l| **l > Some(1)).count();
        assert!(
            above < 20,
            "{above} of {} windows above level 1",
            seen.len()
        );
    }

    #[test]
    fn a_sender_sharing_cores_with_its_receiver_finds_the_lower_level() {
        // It waits on the link throughout, yet every level down frees CPU that the
        // receiver on the same cores runs faster with (loopback on a small machine).
        let rate = |l: Option<i32>| 300.0 - f64::from(l.unwrap_or(-60));
        let (mut c, mut now) = control(Adapt::default(), Some(1));
        let mut seen = Vec::new();
        for _ in 0..400 {
            let l = c.level();
            seen.push(l);
            now += WINDOW;
            c.account(now, Wait::Link);
            c.acked(now, (rate(l) * 1e6 * WINDOW.as_secs_f64()) as u64);
            c.poll(now);
        }
        assert!(share(&seen, None) > 0.9, "seen {:?}", &seen[200..]);
    }

    #[test]
    fn a_sender_with_nothing_to_send_keeps_its_level() {
        let (mut c, mut now) = control(Adapt::default(), Some(1));
        for _ in 0..100 {
            now += WINDOW;
            c.account(now, Wait::Idle);
            c.acked(now, 1000);
            assert_eq!(c.poll(now), None);
        }
        assert_eq!(c.level(), Some(1));
    }

    #[test]
    fn the_floor_and_the_ceiling_hold() {
        let range = Adapt {
            floor: Some(-3),
            ceiling: 3,
        };
        let (mut c, now) = control(range, Some(1));
        assert_eq!(c.ladder.first(), Some(&Some(-3)));
        assert_eq!(c.ladder.last(), Some(&Some(3)));
        let seen = over(2000.0).run(&mut c, now, 100);
        assert!(seen
            .iter()
            .all(|l| l.is_some_and(|l| (-3..=3).contains(&l))));
        assert_eq!(c.level(), Some(-3));
        let (mut c, now) = control(range, Some(1));
        let seen = over(1.0).run(&mut c, now, 100);
        assert!(seen
            .iter()
            .all(|l| l.is_some_and(|l| (-3..=3).contains(&l))));
        assert_eq!(c.level(), Some(3));
    }

    #[test]
    fn bad_ranges_are_refused() {
        let now = Instant::now();
        let new = |floor, ceiling, start| LevelControl::new(Adapt { floor, ceiling }, start, now);
        assert!(new(Some(5), 3, Some(4))
            .unwrap_err()
            .contains("above the ceiling"));
        assert!(new(Some(1), 3, Some(9))
            .unwrap_err()
            .contains("outside the adaptive range"));
        assert!(new(Some(1), 3, None)
            .unwrap_err()
            .contains("outside the adaptive range"));
        assert!(new(None, 1000, Some(1))
            .unwrap_err()
            .contains("outside zstd's"));
        assert_eq!(new(None, 3, None).map(|c| c.level()), Ok(None));
    }
}
