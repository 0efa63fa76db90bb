//! The database one node serves: its key space, its log, and the one path by which a
//! write enters both.
//!
//! **Writes** (leader only) go through [`Db::write`]: under one lock, the command's
//! effects are decided against the state ([`Tx`]), encoded as one record with a fresh
//! HLC timestamp, appended to the log, and only then applied to the key space. The lock
//! makes the log's order the order in which writes were decided and applied, so every
//! replica that applies the log in order reaches the same state. An append the log
//! refuses (it is sealed: this node no longer leads) leaves the state untouched. The
//! caller then waits for the record's commit at the connection's durability before it
//! replies; other connections may read the write before that, as in Redis.
//!
//! **Replicas** apply records through [`KvApply`], the transport's `Apply`; a divergent
//! tail cut after a failover is undone by rebuilding the key space: from the newest
//! snapshot, if there is one, and the log after it.
//!
//! **Snapshots** ([`crate::snapshot`], taken by [`crate::snapshotter`]): the key space
//! is copied under the write lock in O(1) ([`Db::capture`]), written out off the lock,
//! and installed ([`Db::install`]) only if no rebuild happened since: a snapshot of a
//! state that a truncation undid is thrown away, never put in place. Restart loads the
//! newest valid snapshot and replays the log after it.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use walship_engine::{Log, Lsn, Record};
use walship_transport::ApplyError;

use crate::exec::Tx;
use crate::hlc::{Clock, Timestamp};
use crate::record::{Op, WriteRecord};
use crate::snapshot::{Pending, SnapshotDir, SnapshotError};
use crate::store::Store;

/// Wall-clock milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Runs `f`, which may block, without stalling a multi-threaded runtime's worker.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Why a write did not enter the log.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The log takes no appends: this node does not lead.
    #[error("READONLY You can't write against a read only replica.")]
    ReadOnly,
    /// The record could not be encoded or appended.
    #[error("ERR {0}")]
    Failed(String),
}

/// A node's database: see the [module docs](self).
#[derive(Debug)]
pub struct Db {
    log: Arc<Log>,
    origin: String,
    store: RwLock<Store>,
    clock: Mutex<Clock>,
    snapshots: Option<SnapshotDir>,
    /// Counts rebuilds; changed only under the store's write lock, so a [`Capture`]
    /// knows which state it copied.
    generation: AtomicU64,
    /// Held while a snapshot is checked and put in place, and while a truncation
    /// removes the snapshots it undoes: the two never interleave.
    installing: Mutex<()>,
    snapshot_status: Mutex<crate::snapshotter::Status>,
    /// `BGSAVE` asked for a snapshot; the snapshotter takes one at its next look.
    snapshot_requested: std::sync::atomic::AtomicBool,
}

/// The key space as of one moment ([`Db::capture`]).
#[derive(Debug)]
pub struct Capture {
    /// The copy (its position is the snapshot's LSN).
    pub store: Store,
    /// The clock then.
    pub clock: Timestamp,
    generation: u64,
}

impl Db {
    /// A database over `log` whose writes name `origin`, with the key space rebuilt
    /// from the whole log. Takes no snapshots: the log is never checkpointed.
    ///
    /// # Errors
    /// A record in the log that is not a walship-kv record, or a read error.
    pub fn open(log: Arc<Log>, origin: impl Into<String>) -> Result<Db, String> {
        Db::open_inner(log, origin.into(), None)
    }

    /// A database over `log` whose writes name `origin`, with snapshots in `snapshots`:
    /// the key space is the newest valid snapshot's plus the log after it, and the log
    /// is checkpointed behind that snapshot.
    ///
    /// # Errors
    /// As [`Db::open`]; a snapshot past the log's end; a log that starts after its
    /// first record (recycled) with no valid snapshot to cover what came before.
    pub fn open_with_snapshots(
        log: Arc<Log>,
        origin: impl Into<String>,
        snapshots: SnapshotDir,
    ) -> Result<Db, String> {
        Db::open_inner(log, origin.into(), Some(snapshots))
    }

    fn open_inner(
        log: Arc<Log>,
        origin: String,
        snapshots: Option<SnapshotDir>,
    ) -> Result<Db, String> {
        let db = Db {
            log,
            origin,
            store: RwLock::new(Store::new()),
            clock: Mutex::new(Clock::default()),
            snapshots,
            generation: AtomicU64::new(0),
            installing: Mutex::new(()),
            snapshot_status: Mutex::new(crate::snapshotter::Status::default()),
            snapshot_requested: std::sync::atomic::AtomicBool::new(false),
        };
        if let Some(d) = &db.snapshots {
            // Half-written snapshots of a run that crashed.
            d.remove_leftovers().map_err(|e| e.to_string())?;
        }
        let end = db.log.end_lsn();
        // A log restarted empty for a bootstrap, with the leader's snapshot already in
        // place: the key space is the snapshot's, ahead of the log (the node bootstraps
        // again before it streams, since its log does not continue it).
        let mut to = end;
        if let Some(d) = &db.snapshots {
            if db.log.start_lsn() == end {
                if let Some((lsn, _)) = d.newest_file().map_err(|e| e.to_string())? {
                    to = to.max(lsn);
                }
            }
        }
        db.rebuild(to)?;
        Ok(db)
    }

    /// Where the key space is: the log position its state is as of.
    pub fn applied(&self) -> Lsn {
        self.read().applied()
    }

    /// Replaces the key space with the leader's snapshot covering `lsn`, read from
    /// `bytes` (a follower's bootstrap; its log was just restarted empty): received and
    /// checked whole first, then put in place, snapshots of the old history removed, the
    /// log checkpointed behind it.
    ///
    /// # Errors
    /// Without a snapshot directory; a transfer or file that fails (nothing changes).
    pub fn bootstrap(&self, lsn: Lsn, bytes: &mut dyn std::io::Read) -> Result<(), String> {
        let d = self
            .snapshots
            .as_ref()
            .ok_or("this node keeps no snapshots, so it cannot install one")?;
        let (pending, loaded) = d.receive(lsn, bytes).map_err(|e| e.to_string())?;
        let _guard = self
            .installing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        d.remove_after(lsn).map_err(|e| e.to_string())?;
        let path = pending.install().map_err(|e| e.to_string())?;
        let mut store = loaded.store;
        store.set_applied(lsn);
        let keys = store.len();
        {
            let mut s = self.store_mut();
            *s = store;
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        self.clock().observe(loaded.meta.clock);
        self.log.set_checkpoint(lsn);
        self.snapshot_status_update(|st| {
            st.lsn = lsn;
            st.saved_at = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
        });
        tracing::info!(snapshot = %path.display(), %lsn, keys, "key space replaced by the leader's snapshot");
        Ok(())
    }

    /// What the snapshots are: the one in place and the last attempt.
    pub fn snapshot_status(&self) -> crate::snapshotter::Status {
        self.snapshot_status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Asks for a snapshot now, whatever the policy says (`BGSAVE`).
    pub fn request_snapshot(&self) {
        self.snapshot_requested.store(true, Ordering::Release);
    }

    /// Whether a snapshot was asked for since the last call.
    pub(crate) fn take_snapshot_request(&self) -> bool {
        self.snapshot_requested.swap(false, Ordering::AcqRel)
    }

    pub(crate) fn snapshot_status_update(&self, f: impl FnOnce(&mut crate::snapshotter::Status)) {
        f(&mut self
            .snapshot_status
            .lock()
            .unwrap_or_else(PoisonError::into_inner));
    }

    /// Where snapshots go, if this database takes them.
    pub fn snapshot_dir(&self) -> Option<&SnapshotDir> {
        self.snapshots.as_ref()
    }

    /// The node whose writes this database logs.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// A copy of the key space and the clock, in O(1) under the write lock.
    pub fn capture(&self) -> Capture {
        let clock = self.clock().last();
        let store = self.read();
        Capture {
            store: store.clone(),
            clock,
            generation: self.generation.load(Ordering::Acquire),
        }
    }

    /// Puts `pending`, written from `capture`, in place, unless the key space was
    /// rebuilt since it was captured (a truncation undid some of what it holds: it is
    /// discarded). Checkpoints the log behind it. Returns where it was put.
    ///
    /// # Errors
    /// [`SnapshotError`] from putting it in place.
    pub fn install(
        &self,
        pending: Pending,
        capture: &Capture,
    ) -> Result<Option<PathBuf>, SnapshotError> {
        let _guard = self
            .installing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if self.generation.load(Ordering::Acquire) != capture.generation {
            pending.discard();
            return Ok(None);
        }
        let lsn = pending.lsn();
        let path = pending.install()?;
        self.log.set_checkpoint(lsn);
        Ok(Some(path))
    }

    /// The log.
    pub fn log(&self) -> &Arc<Log> {
        &self.log
    }

    /// The key space, for reading.
    pub fn read(&self) -> RwLockReadGuard<'_, Store> {
        self.store.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn store_mut(&self) -> RwLockWriteGuard<'_, Store> {
        self.store.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn clock(&self) -> MutexGuard<'_, Clock> {
        self.clock.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Decides a write with `decide` against the state at `now_ms`, logs its effects as
    /// one record and applies them. Returns `decide`'s result and the record's LSN (its
    /// commit token), or `None` if it decided no effect.
    ///
    /// # Errors
    /// [`WriteError::ReadOnly`] if the log is sealed (this node does not lead);
    /// [`WriteError::Failed`] if the record cannot be encoded or appended. Nothing is
    /// applied then.
    pub fn write<R>(
        &self,
        now_ms: u64,
        decide: impl FnOnce(&mut Tx<'_>) -> R,
    ) -> Result<(R, Option<Lsn>), WriteError> {
        // The clock's lock is the write lock: one write decided and logged at a time.
        let mut clock = self.clock();
        let mut store = self.store_mut();
        let mut tx = Tx::new(&store, now_ms);
        let out = decide(&mut tx);
        let ops = tx.into_ops();
        if ops.is_empty() {
            return Ok((out, None));
        }
        let lsn = self.log_and_apply(&mut clock, &mut store, now_ms, ops)?;
        Ok((out, Some(lsn)))
    }

    /// Logs `Expired` for up to `limit` keys due at `now_ms` (the leader's expiry), and
    /// returns how many. Replicas never expire keys themselves: they hide them once due
    /// and remove them when this record arrives, so all nodes agree on what expired.
    ///
    /// # Errors
    /// As [`write`](Db::write).
    pub fn expire_due(&self, now_ms: u64, limit: usize) -> Result<usize, WriteError> {
        let mut clock = self.clock();
        let mut store = self.store_mut();
        let ops: Vec<Op> = store
            .due(now_ms, limit)
            .into_iter()
            .map(|key| Op::Expired { key })
            .collect();
        let n = ops.len();
        if n > 0 {
            self.log_and_apply(&mut clock, &mut store, now_ms, ops)?;
        }
        Ok(n)
    }

    /// Encodes `ops` as one record, appends it, and applies it: the one way a write
    /// enters the log and the key space (callers hold both locks).
    fn log_and_apply(
        &self,
        clock: &mut Clock,
        store: &mut Store,
        now_ms: u64,
        ops: Vec<Op>,
    ) -> Result<Lsn, WriteError> {
        let record = WriteRecord {
            origin: self.origin.clone(),
            ts: clock.tick(now_ms),
            ops,
        };
        let bytes = record
            .encode()
            .map_err(|e| WriteError::Failed(e.to_string()))?;
        // An append blocks only while the log's writer is behind (back-pressure); on a
        // runtime worker that would stall every task on it, so the blocking append then
        // runs with the worker handed over (`block_in_place`).
        let appended = match self.log.try_append(&bytes) {
            Err(walship_engine::Error::WouldBlock { .. }) => blocking(|| self.log.append(&bytes)),
            other => other,
        };
        let lsn = appended.map_err(|e| match e {
            walship_engine::Error::Sealed { .. } => WriteError::ReadOnly,
            e => WriteError::Failed(e.to_string()),
        })?;
        store.apply(&record);
        store.set_applied(lsn);
        Ok(lsn)
    }

    /// Applies a replicated record.
    ///
    /// # Errors
    /// If the record is not a walship-kv record.
    pub fn apply(&self, record: &Record) -> Result<(), String> {
        let r = WriteRecord::decode(&record.data)
            .map_err(|e| format!("the record ending at {}: {e}", record.lsn))?;
        self.clock().observe(r.ts);
        let mut store = self.store_mut();
        store.apply(&r);
        store.set_applied(record.lsn);
        Ok(())
    }

    /// Undoes a divergent tail: the log was cut at `to`. Snapshots past it are removed
    /// (none should be: a snapshot is put in place only once what it covers is
    /// committed, and no failover cuts that), then the key space is rebuilt.
    ///
    /// # Errors
    /// As [`Db::rebuild`], or the snapshots past `to` cannot be removed.
    pub fn truncated(&self, to: Lsn) -> Result<(), String> {
        if let Some(d) = &self.snapshots {
            let _guard = self
                .installing
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let n = d.remove_after(to).map_err(|e| e.to_string())?;
            if n > 0 {
                tracing::error!(%to, removed = n, "snapshots past a truncation point were removed: the committed point was not respected");
            }
            // Within the lock: a capture from before the cut can no longer be installed.
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        self.rebuild(to)
    }

    /// Where rebuilding up to `to` starts: the newest valid snapshot at or before it,
    /// or an empty key space at the log's start.
    fn base(&self, to: Lsn) -> Result<(Store, Timestamp), String> {
        let start = self.log.start_lsn();
        let Some(d) = &self.snapshots else {
            let mut s = Store::new();
            s.set_applied(start);
            return Ok((s, Timestamp::default()));
        };
        let (loaded, skipped) = d.newest(to).map_err(|e| e.to_string())?;
        let why = || {
            skipped
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        };
        match loaded {
            Some(l) if l.meta.lsn >= start => {
                tracing::info!(snapshot = %l.path.display(), lsn = %l.meta.lsn, keys = l.store.len(), "key space loaded from a snapshot");
                self.log.set_checkpoint(l.meta.lsn);
                let saved_at = std::fs::metadata(&l.path)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_secs());
                self.snapshot_status_update(|st| {
                    st.lsn = l.meta.lsn;
                    st.saved_at = saved_at;
                });
                Ok((l.store, l.meta.clock))
            }
            Some(l) => Err(format!(
                "the newest valid snapshot ({}) holds the state up to {}, but the log starts at {start}: the records between are gone{}",
                l.path.display(),
                l.meta.lsn,
                if skipped.is_empty() { String::new() } else { format!(" (newer ones are invalid: {})", why()) }
            )),
            // A log that was never recycled starts at its first segment's first batch.
            None if start.get() > walship_engine::format::SEGMENT_HEADER_LEN as u64 => Err(format!(
                "the log starts at {start} (its earlier segments were recycled behind a snapshot) and no valid snapshot is in {}{}",
                d.path().display(),
                if skipped.is_empty() { String::new() } else { format!(": {}", why()) }
            )),
            None => {
                let mut s = Store::new();
                s.set_applied(start);
                Ok((s, Timestamp::default()))
            }
        }
    }

    /// Rebuilds the key space up to `to`: the newest snapshot at or before it, then the
    /// log's records after the snapshot.
    ///
    /// # Errors
    /// As [`Db::open`].
    pub fn rebuild(&self, to: Lsn) -> Result<(), String> {
        let (mut store, snapshot_clock) = self.base(to)?;
        let mut clock = Clock::default();
        clock.observe(snapshot_clock);
        let from = store.applied();
        let mut reader = if from < to {
            Some(
                self.log
                    .record_reader(from)
                    .map_err(|e| format!("reading the log from {from}: {e}"))?,
            )
        } else {
            None
        };
        while let Some(reader) = reader.as_mut().filter(|r| r.position() < to) {
            // Everything up to `to` is in the log; waiting covers bytes appended but not
            // yet handed to the OS.
            let at = reader.position();
            let Some(rec) = reader
                .next_blocking(Some(std::time::Duration::from_secs(10)))
                .map_err(|e| format!("reading the log at {at}: {e}"))?
            else {
                return Err(format!("the log ends at {at}, before {to}"));
            };
            if rec.lsn > to {
                break;
            }
            let r = WriteRecord::decode(&rec.data)
                .map_err(|e| format!("the record ending at {}: {e}", rec.lsn))?;
            clock.observe(r.ts);
            store.apply(&r);
            store.set_applied(rec.lsn);
        }
        {
            let mut s = self.store_mut();
            *s = store;
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        let mut c = self.clock();
        let last = clock.last();
        c.observe(last);
        Ok(())
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// The value of `key` now, for tests and tools.
    pub fn get(&self, key: &[u8]) -> Option<Bytes> {
        self.read()
            .live(&Bytes::copy_from_slice(key), now_ms())
            .map(|e| e.value.clone())
    }
}

/// The transport's `Apply` for walship-kv: replicated records into the key space.
#[derive(Debug, Clone)]
pub struct KvApply(pub Arc<Db>);

impl walship_transport::Apply for KvApply {
    fn apply(&mut self, record: &Record) -> Result<(), ApplyError> {
        self.0.apply(record).map_err(ApplyError::from)
    }

    fn truncated(&mut self, to: Lsn) -> Result<(), ApplyError> {
        tracing::warn!(%to, "a divergent tail was cut: rebuilding the key space");
        self.0.truncated(to).map_err(ApplyError::from)
    }

    fn installs_snapshots(&self) -> bool {
        self.0.snapshots.is_some()
    }

    fn install_snapshot(
        &mut self,
        lsn: Lsn,
        snapshot: &mut dyn std::io::Read,
    ) -> Result<(), ApplyError> {
        self.0.bootstrap(lsn, snapshot).map_err(ApplyError::from)
    }
}

/// The leader's side of a bootstrap: serves the newest snapshot file as it is (the
/// follower checks it whole, [`SnapshotDir::receive`]).
#[derive(Debug, Clone)]
pub struct KvSnapshots(pub SnapshotDir);

impl walship_transport::snapshot::SnapshotSource for KvSnapshots {
    fn newest(&self) -> Result<Option<walship_transport::snapshot::SnapshotFile>, String> {
        let Some((lsn, path)) = self.0.newest_file().map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        // Opened before its length is read: a newer snapshot removing it meanwhile
        // leaves this handle whole.
        let f = std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let len = f
            .metadata()
            .map_err(|e| format!("{}: {e}", path.display()))?
            .len();
        Ok(Some(walship_transport::snapshot::SnapshotFile {
            lsn,
            len,
            reader: Box::new(std::io::BufReader::new(f)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Data;
    use walship_transport::Apply;

    fn set(db: &Db, k: &str, v: &str) -> Lsn {
        let cmd = Data::Set {
            key: Bytes::copy_from_slice(k.as_bytes()),
            value: Bytes::copy_from_slice(v.as_bytes()),
            cond: None,
            get: false,
            expiry: crate::command::SetExpiry::None,
        };
        let (_, lsn) = db.write(now_ms(), |tx| tx.run(&cmd)).unwrap();
        let lsn = lsn.unwrap();
        // Flushed one by one: each in a batch of its own, so the log can be cut after any.
        db.log()
            .commit(lsn, walship_engine::Durability::Local)
            .wait()
            .unwrap();
        lsn
    }

    /// A snapshot captured before a truncation is never put in place (it holds what the
    /// cut undid); one captured after is, and the log is checkpointed behind it. A restart
    /// loads it and replays the log after it.
    #[test]
    fn a_capture_from_before_a_truncation_is_thrown_away() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(
            Log::open(dir.path().join("log"), walship_engine::Options::default()).unwrap(),
        );
        let snaps = SnapshotDir::open(dir.path().join("snaps")).unwrap();
        let db = Db::open_with_snapshots(Arc::clone(&log), "n1", snaps.clone()).unwrap();
        let a = set(&db, "a", "1");
        set(&db, "b", "2");
        let before = db.capture();
        let pending = snaps.write(&before.store, before.clock, "n1").unwrap();
        log.truncate_suffix(a).unwrap();
        db.truncated(a).unwrap();
        assert_eq!(db.install(pending, &before).unwrap(), None);
        assert!(snaps.list().unwrap().is_empty(), "nothing put in place");
        assert_eq!(log.watermarks().checkpoint, Lsn::ZERO);
        let c = set(&db, "c", "3");
        let after = db.capture();
        assert_eq!(after.store.applied(), c);
        let pending = snaps.write(&after.store, after.clock, "n1").unwrap();
        assert!(db.install(pending, &after).unwrap().is_some());
        assert_eq!(log.watermarks().checkpoint, c);
        let d = set(&db, "d", "4");
        drop(db);
        let db = Db::open_with_snapshots(Arc::clone(&log), "n1", snaps).unwrap();
        assert_eq!(db.snapshot_status().lsn, c);
        assert_eq!(db.read().applied(), d);
        let got: Vec<_> = ["a", "b", "c", "d"]
            .iter()
            .map(|k| db.get(k.as_bytes()))
            .collect();
        assert_eq!(
            got,
            vec![
                Some(Bytes::from("1")),
                None,
                Some(Bytes::from("3")),
                Some(Bytes::from("4"))
            ]
        );
    }

    /// A divergent tail cut after a failover is undone: the key space is rebuilt from
    /// what the log keeps, and replicated records apply on top of it.
    #[test]
    fn a_truncation_rebuilds_the_key_space_from_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(Log::open(dir.path(), walship_engine::Options::default()).unwrap());
        let db = Arc::new(Db::open(Arc::clone(&log), "n1").unwrap());
        let a = set(&db, "a", "1");
        set(&db, "b", "2");
        set(&db, "a", "3");
        log.truncate_suffix(a).unwrap();
        let mut apply = KvApply(Arc::clone(&db));
        apply.truncated(a).unwrap();
        assert_eq!(
            (db.get(b"a").as_deref(), db.get(b"b")),
            (Some(&b"1"[..]), None)
        );
        // A record from the new leader applies over the rebuilt state.
        let rec = WriteRecord {
            origin: "n2".into(),
            ts: crate::hlc::Timestamp::new(now_ms(), 0),
            ops: vec![Op::Del {
                key: Bytes::from("a"),
            }],
        };
        let lsn = log.append(&rec.encode().unwrap()).unwrap();
        apply
            .apply(&Record {
                lsn,
                epoch: walship_engine::Epoch::ZERO,
                data: Bytes::from(rec.encode().unwrap()),
            })
            .unwrap();
        assert!(db.is_empty());
        // A record that is not walship-kv's stops applying, naming where.
        let bad = Record {
            lsn,
            epoch: walship_engine::Epoch::ZERO,
            data: Bytes::from_static(b"raw"),
        };
        let e = apply.apply(&bad).unwrap_err().to_string();
        assert!(e.contains(&format!("the record ending at {lsn}")), "{e}");
    }
}
