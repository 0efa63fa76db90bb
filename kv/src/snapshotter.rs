//! The background snapshotter: when enough log has been applied since the last snapshot
//! (`snapshot_log_bytes`) or enough time has passed with changes (`snapshot_interval`),
//! it captures the key space, writes it out, waits until the LSN it covers is committed,
//! puts it in place and checkpoints the log behind it, so segments before it recycle.
//!
//! **Why wait for the commit.** A snapshot past the committed point holds records a
//! failover may cut; restarting from it would bring them back. The committed point
//! ([`walship_transport::Node::committed`]) is what no failover cuts; a node with no
//! peers (`Bound::Flushed`) is never cut, so its bound is what it flushed. A snapshot
//! whose LSN does not become committed within `commit_wait` is thrown away and taken
//! again at the next trigger; one whose state a truncation undid meanwhile is thrown
//! away by [`Db::install`].
//!
//! Decisions are a pure function ([`due`]) of the position, the last snapshot and the
//! time; the thread around it only sleeps, captures and writes.

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use walship_engine::Lsn;

use crate::db::Db;

/// When snapshots are taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Take one once this much log was applied since the last (0: never for size).
    pub log_bytes: u64,
    /// Take one this long after the last if anything changed (zero: never for time).
    pub interval: Duration,
    /// How long a written snapshot may wait for its LSN to be committed.
    pub commit_wait: Duration,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            log_bytes: 64 << 20,
            interval: Duration::from_secs(300),
            commit_wait: Duration::from_secs(10),
        }
    }
}

impl Policy {
    /// Whether it takes snapshots at all.
    pub fn enabled(&self) -> bool {
        self.log_bytes > 0 || !self.interval.is_zero()
    }
}

/// Whether a snapshot is due: the key space reflects the log up to `applied`, the last
/// snapshot covered `last` and was taken (or last tried) `since` ago.
pub fn due(policy: &Policy, applied: Lsn, last: Lsn, since: Duration) -> bool {
    if applied <= last {
        return false;
    }
    let bytes = applied.get() - last.get();
    (policy.log_bytes > 0 && bytes >= policy.log_bytes)
        || (!policy.interval.is_zero() && since >= policy.interval)
}

/// What bounds a snapshot's LSN.
pub enum Bound {
    /// What the log flushed: a node without peers, which no failover cuts.
    Flushed,
    /// What this function says is committed (a replicated node's
    /// [`Node::committed`](walship_transport::Node::committed)).
    Committed(Box<dyn Fn() -> Lsn + Send + Sync>),
}

impl std::fmt::Debug for Bound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Bound::Flushed => "Flushed",
            Bound::Committed(_) => "Committed",
        })
    }
}

/// What the snapshotter last did, for `INFO persistence`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// The LSN of the snapshot in place (the one loaded at start, or the last taken).
    pub lsn: Lsn,
    /// When it was put in place, seconds since the Unix epoch (0: none this run).
    pub saved_at: u64,
    /// Snapshots put in place this run.
    pub taken: u64,
    /// A snapshot is being written or waits for its commit.
    pub in_progress: bool,
    /// Why the last attempt failed, if it did.
    pub last_error: Option<String>,
    /// How long the last snapshot put in place took, capture to rename.
    pub last_took: Duration,
}

impl Status {
    fn taken_lsn(&self) -> Option<Lsn> {
        (self.taken > 0).then_some(self.lsn)
    }
}

struct Shared {
    stop: Mutex<bool>,
    wake: Condvar,
}

/// The running snapshotter; stops when [`Snapshotter::stop`] is called or it is dropped.
/// Its status is the database's ([`Db::snapshot_status`]).
pub struct Snapshotter {
    db: Arc<Db>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Snapshotter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshotter")
            .field("status", &self.db.snapshot_status())
            .finish()
    }
}

impl Snapshotter {
    /// Starts snapshotting `db` (which must have a snapshot directory) under `policy`.
    /// With a disabled policy it takes snapshots only when asked
    /// ([`Db::request_snapshot`]).
    ///
    /// # Errors
    /// The thread could not be started.
    pub fn start(db: Arc<Db>, policy: Policy, bound: Bound) -> std::io::Result<Snapshotter> {
        let loaded = db.snapshot_status().lsn;
        let shared = Arc::new(Shared {
            stop: Mutex::new(false),
            wake: Condvar::new(),
        });
        let (s, d) = (Arc::clone(&shared), Arc::clone(&db));
        let thread = std::thread::Builder::new()
            .name("kv-snapshot".into())
            .spawn(move || run(&d, &policy, &bound, &s, loaded))?;
        Ok(Snapshotter {
            db,
            shared,
            thread: Some(thread),
        })
    }

    /// Stops the thread (a snapshot being written is finished or thrown away first).
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        *self
            .shared
            .stop
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Snapshotter {
    fn drop(&mut self) {
        self.halt();
    }
}

impl Shared {
    /// Sleeps up to `d`; true if asked to stop.
    fn sleep(&self, d: Duration) -> bool {
        let stop = self.stop.lock().unwrap_or_else(PoisonError::into_inner);
        let (stop, _) = self
            .wake
            .wait_timeout_while(stop, d, |s| !*s)
            .unwrap_or_else(PoisonError::into_inner);
        *stop
    }
}

/// How often the snapshotter looks at the position.
const TICK: Duration = Duration::from_millis(100);

fn run(db: &Db, policy: &Policy, bound: &Bound, shared: &Shared, mut last: Lsn) {
    if db.snapshot_dir().is_none() {
        while !shared.sleep(Duration::from_secs(3600)) {}
        return;
    }
    let mut last_at = Instant::now();
    loop {
        if shared.sleep(TICK) {
            return;
        }
        let applied = db.read().applied();
        // `BGSAVE` takes one even under a policy that takes none.
        let asked = db.take_snapshot_request() && applied > last;
        if !asked && !due(policy, applied, last, last_at.elapsed()) {
            continue;
        }
        db.snapshot_status_update(|st| st.in_progress = true);
        let began = Instant::now();
        let result = take(db, policy, bound, shared);
        last_at = Instant::now();
        db.snapshot_status_update(|st| {
        st.in_progress = false;
        match result {
            Ok(Some((lsn, path))) => {
                st.lsn = lsn;
                st.saved_at = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                st.taken += 1;
                st.last_error = None;
                st.last_took = began.elapsed();
                tracing::info!(%lsn, path = %path.display(), took = ?st.last_took, "snapshot in place; the log is checkpointed behind it");
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = e.as_str(), "snapshot not taken");
                st.last_error = Some(e);
            }
        }
        });
        if let Some(lsn) = db.snapshot_status().taken_lsn() {
            last = last.max(lsn);
        }
    }
}

/// One snapshot: capture, write, wait for the commit, install. `None`: thrown away
/// (stopping, a truncation, or the commit did not come in time, said in the status).
fn take(
    db: &Db,
    policy: &Policy,
    bound: &Bound,
    shared: &Shared,
) -> Result<Option<(Lsn, PathBuf)>, String> {
    let Some(dir) = db.snapshot_dir() else {
        return Ok(None);
    };
    let capture = db.capture();
    let lsn = capture.store.applied();
    let pending = dir
        .write(&capture.store, capture.clock, db.origin())
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + policy.commit_wait;
    loop {
        let reached = match bound {
            Bound::Flushed => db.log().watermarks().flushed,
            Bound::Committed(f) => f(),
        };
        if reached >= lsn {
            break;
        }
        if Instant::now() >= deadline {
            pending.discard();
            return Err(format!(
                "the snapshot at {lsn} was not committed within {:?} (committed: {reached}); thrown away, taken again later",
                policy.commit_wait
            ));
        }
        if shared.sleep(Duration::from_millis(5)) {
            pending.discard();
            return Ok(None);
        }
    }
    db.install(pending, &capture)
        .map(|p| p.map(|p| (lsn, p)))
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_by_size_or_by_time_with_changes() {
        let p = Policy {
            log_bytes: 1000,
            interval: Duration::from_secs(60),
            commit_wait: Duration::from_secs(1),
        };
        let at = |n| Lsn::new(n);
        assert!(!due(&p, at(999), at(0), Duration::ZERO));
        assert!(due(&p, at(1000), at(0), Duration::ZERO));
        assert!(due(&p, at(1), at(0), Duration::from_secs(60)));
        // Nothing changed: never, however long.
        assert!(!due(&p, at(5), at(5), Duration::from_secs(3600)));
        let off = Policy {
            log_bytes: 0,
            interval: Duration::ZERO,
            ..p.clone()
        };
        assert!(!off.enabled());
        assert!(!due(&off, at(1 << 40), at(0), Duration::from_secs(1 << 20)));
    }
}
