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
//! tail cut after a failover is undone by rebuilding the key space from the log.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use walship_engine::{Log, Lsn, Record};
use walship_transport::ApplyError;

use crate::exec::Tx;
use crate::hlc::Clock;
use crate::record::{Op, WriteRecord};
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
}

impl Db {
    /// A database over `log` whose writes name `origin`, with the key space rebuilt
    /// from the log.
    ///
    /// # Errors
    /// A record in the log that is not a walship-kv record, or a read error.
    pub fn open(log: Arc<Log>, origin: impl Into<String>) -> Result<Db, String> {
        let db = Db {
            log,
            origin: origin.into(),
            store: RwLock::new(Store::new()),
            clock: Mutex::new(Clock::default()),
        };
        let end = db.log.end_lsn();
        db.rebuild(end)?;
        Ok(db)
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
        self.store_mut().apply(&r);
        Ok(())
    }

    /// Rebuilds the key space from the log's records up to `to`.
    ///
    /// # Errors
    /// As [`Db::open`].
    pub fn rebuild(&self, to: Lsn) -> Result<(), String> {
        let mut store = Store::new();
        let mut clock = Clock::default();
        let start = self.log.start_lsn();
        let mut reader = self
            .log
            .record_reader(start)
            .map_err(|e| format!("reading the log from {start}: {e}"))?;
        while reader.position() < to {
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
        }
        *self.store_mut() = store;
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
        tracing::warn!(%to, "a divergent tail was cut: rebuilding the key space from the log");
        self.0.rebuild(to).map_err(ApplyError::from)
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
