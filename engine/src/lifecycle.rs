//! What a log accepts, as one value ([`Lifecycle`]): local appends (open or sealed),
//! confirmation of remote durability (confirming or fenced), and the log itself (running,
//! poisoned, closing, closed).
//!
//! Before, each was a flag beside a mutex holding its reason, read at different moments
//! by different paths; an appender checked the seal once and then waited for room under
//! back-pressure, during which `seal` could return while that appender went on to append
//! (issue 12). Now every transition goes through one lock, a summary of bits is published
//! for lock-free reads on hot paths, and an appender asks [`refuse_local`] each time it
//! wakes, under the append lock that `seal` also takes.
//!
//! [`refuse_local`]: Lifecycle::refuse_local

use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;

use crate::error::Error;
use crate::sync::lock;

const SEALED: u8 = 1;
const FENCED: u8 = 1 << 1;
const POISONED: u8 = 1 << 2;
const CLOSING: u8 = 1 << 3;
const CLOSED: u8 = 1 << 4;

/// Whether local appends are taken.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
enum Appends {
    #[default]
    Open,
    /// Refused, for this reason (verbatim appends from a leader still go on).
    Sealed(String),
}

/// Whether remote durability can be confirmed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
enum Remote {
    #[default]
    Confirming,
    /// Not any more, for this reason.
    Fenced(String),
}

/// The log itself.
#[derive(Debug, Clone, Default)]
enum Run {
    #[default]
    Running,
    /// A write or flush failed: nothing more is done until the log is reopened.
    Poisoned(Error),
    /// `close` has begun: the writer drains, nothing new is taken.
    Closing,
    /// `close` has finished.
    Closed,
}

#[derive(Debug, Default)]
struct State {
    appends: Appends,
    remote: Remote,
    run: Run,
}

impl State {
    fn bits(&self) -> u8 {
        let mut b = 0;
        if matches!(self.appends, Appends::Sealed(_)) {
            b |= SEALED;
        }
        if matches!(self.remote, Remote::Fenced(_)) {
            b |= FENCED;
        }
        match self.run {
            Run::Running => {}
            Run::Poisoned(_) => b |= POISONED,
            Run::Closing => b |= CLOSING,
            Run::Closed => b |= CLOSING | CLOSED,
        }
        b
    }
}

/// See the [module docs](self).
#[derive(Debug, Default)]
pub(crate) struct Lifecycle {
    state: Mutex<State>,
    bits: AtomicU8,
}

impl Lifecycle {
    fn update<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut s = lock(&self.state);
        let out = f(&mut s);
        self.bits.store(s.bits(), Ordering::Release);
        out
    }

    fn has(&self, bit: u8) -> bool {
        self.bits.load(Ordering::Acquire) & bit != 0
    }

    /// Refuses local appends from now on (the caller holds the append lock).
    pub(crate) fn seal(&self, reason: String) {
        self.update(|s| s.appends = Appends::Sealed(reason));
    }

    /// Takes local appends again.
    pub(crate) fn unseal(&self) {
        self.update(|s| s.appends = Appends::Open);
    }

    /// Why local appends are refused, if they are.
    pub(crate) fn sealed(&self) -> Option<String> {
        if !self.has(SEALED) {
            return None;
        }
        match &lock(&self.state).appends {
            Appends::Sealed(r) => Some(r.clone()),
            Appends::Open => None,
        }
    }

    /// Remote durability can no longer be confirmed.
    pub(crate) fn fence(&self, reason: String) {
        self.update(|s| s.remote = Remote::Fenced(reason));
    }

    /// It can again.
    pub(crate) fn unfence(&self) {
        self.update(|s| s.remote = Remote::Confirming);
    }

    /// Why remote durability cannot be confirmed, if it cannot.
    pub(crate) fn fenced(&self) -> Option<String> {
        if !self.has(FENCED) {
            return None;
        }
        match &lock(&self.state).remote {
            Remote::Fenced(r) => Some(r.clone()),
            Remote::Confirming => None,
        }
    }

    /// Poisons the log with `e`, unless it already was (the first failure is kept).
    pub(crate) fn poison(&self, e: Error) {
        self.update(|s| {
            if !matches!(s.run, Run::Poisoned(_)) {
                s.run = Run::Poisoned(e);
            }
        });
    }

    /// The error that poisoned the log, if one did.
    pub(crate) fn poisoned(&self) -> Option<Error> {
        if !self.has(POISONED) {
            return None;
        }
        match &lock(&self.state).run {
            Run::Poisoned(e) => Some(e.clone()),
            _ => None,
        }
    }

    /// Whether the log failed.
    pub(crate) fn is_poisoned(&self) -> bool {
        self.has(POISONED)
    }

    /// `close` begins (a poisoned log stays poisoned: its error is what close returns).
    pub(crate) fn begin_close(&self) {
        self.update(|s| {
            if matches!(s.run, Run::Running) {
                s.run = Run::Closing;
            }
        });
    }

    /// `close` is done.
    pub(crate) fn finish_close(&self) {
        self.update(|s| {
            if !matches!(s.run, Run::Poisoned(_)) {
                s.run = Run::Closed;
            }
        });
    }

    /// Whether `close` has begun (or the log is poisoned, which also stops the writer).
    pub(crate) fn is_stopping(&self) -> bool {
        self.has(CLOSING | POISONED)
    }

    /// Whether `close` has begun.
    pub(crate) fn is_closing(&self) -> bool {
        self.has(CLOSING)
    }

    /// Whether `close` has finished.
    pub(crate) fn is_closed(&self) -> bool {
        self.has(CLOSED)
    }

    /// The error for any operation on a log that can no longer be used: poisoned, or
    /// closing.
    pub(crate) fn unusable(&self, dir: &Path) -> Option<Error> {
        if let Some(e) = self.poisoned() {
            return Some(e);
        }
        self.is_closing().then(|| Error::Closed {
            path: dir.to_path_buf(),
        })
    }

    /// Why a local append must be refused now, if it must: the log is unusable, or
    /// sealed. Asked by an appender each time it holds the append lock, so a seal that
    /// returned is never followed by a local append.
    pub(crate) fn refuse_local(&self, dir: &Path) -> Option<Error> {
        self.unusable(dir)
            .or_else(|| self.sealed().map(|reason| Error::Sealed { reason }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BackendKind, Durability, Log, Options};
    use std::time::Duration;

    /// The seal bypass of issue 12: an appender waiting for room (back-pressure) released
    /// the append lock, `seal` took it and returned, and the appender then appended,
    /// breaking the switchover promise that nothing is appended once `seal` returned.
    #[test]
    fn a_seal_refuses_an_appender_that_was_waiting_for_room() {
        for backend in [BackendKind::Portable, BackendKind::Auto] {
            let dir = tempfile::tempdir().unwrap();
            let log = std::sync::Arc::new(
                Log::open(
                    dir.path(),
                    Options {
                        segment_capacity: 1 << 20,
                        max_pending_bytes: 64 << 10,
                        backend,
                        ..Options::default()
                    },
                )
                .unwrap(),
            );
            // The writer takes nothing more: pending bytes pile up to the limit.
            crate::failpoint::pause("writer::write", dir.path());
            let record = vec![7u8; 1000];
            let mut appended = 0;
            while log.try_append(&record).is_ok() {
                appended += 1;
            }
            assert!(appended > 0);
            let waiting = std::thread::spawn({
                let log = std::sync::Arc::clone(&log);
                let record = record.clone();
                move || log.append(&record)
            });
            // Until it waits for room.
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while log.stats().back_pressure_waits == 0 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the appender never waited"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            log.seal("switching over");
            let end_at_seal = log.end_lsn();
            crate::failpoint::resume(dir.path());
            let result = waiting.join().unwrap();
            assert!(
                matches!(result, Err(Error::Sealed { ref reason }) if reason == "switching over"),
                "{backend:?}: an appender waiting when the seal came appended: {result:?}"
            );
            assert_eq!(
                log.end_lsn(),
                end_at_seal,
                "nothing appended after the seal"
            );
            log.unseal();
            let lsn = log.append(b"after").unwrap();
            log.commit(lsn, Durability::Local).wait().unwrap();
        }
    }

    #[test]
    fn one_value_and_its_summary_agree() {
        let l = Lifecycle::default();
        let dir = Path::new("/x");
        assert!(l.refuse_local(dir).is_none() && l.fenced().is_none());
        l.seal("stepped down".into());
        assert!(
            matches!(l.refuse_local(dir), Some(Error::Sealed { reason }) if reason == "stepped down")
        );
        l.fence("newer epoch".into());
        assert_eq!(l.fenced().as_deref(), Some("newer epoch"));
        l.unseal();
        l.unfence();
        assert!(l.refuse_local(dir).is_none() && l.fenced().is_none());
        l.poison(Error::Closed {
            path: "/first".into(),
        });
        l.poison(Error::Closed {
            path: "/second".into(),
        });
        assert!(
            matches!(l.poisoned(), Some(Error::Closed { path }) if path == Path::new("/first"))
        );
        // Closing a poisoned log keeps its error; closing a healthy one ends in Closed.
        l.begin_close();
        l.finish_close();
        assert!(l.is_poisoned() && !l.is_closed());
        let m = Lifecycle::default();
        m.begin_close();
        assert!(m.is_closing() && !m.is_closed());
        assert!(matches!(m.unusable(dir), Some(Error::Closed { .. })));
        m.finish_close();
        assert!(m.is_closed() && m.is_stopping());
    }
}
