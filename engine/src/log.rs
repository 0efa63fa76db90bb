//! The [`Log`] handle: the engine's public API, and the state its threads share.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::commit::Commit;
use crate::epoch::EpochHistory;
use crate::error::{Error, Result};
use crate::format::{self, Geometry, BATCH_HEADER_LEN, RECORD_PREFIX_LEN};
use crate::group_commit::Assembler;
use crate::io;
use crate::options::Options;
use crate::preparer::Preparer;
use crate::reader::{Reader, RecordReader};
use crate::recovery;
use crate::segment::{self, Segment};
use crate::storage::{LockGuard, Storage};
use crate::timer::Timer;
use crate::types::{Durability, Epoch, Lsn};
use crate::watermark::{block_on, Watermark};
use crate::writer;

use crate::layout::{LOCK_FILE, META_FILE};

use crate::shared::{Shared, Truncations};
use crate::sync::{lock, read};

/// A write-ahead log in one directory: segmented, memory-mapped for reads, written with
/// committer-driven group commit (a blocking commit flushes its group on its own thread;
/// a writer and a flusher thread serve readers and async commits).
///
/// # Threading
/// `Log` is `Send + Sync`; share it (e.g. in an `Arc`) between appending threads.
/// [`Commit`] futures and [`Reader`]s are `'static` and may outlive the borrow they
/// came from; after [`close`](Log::close) they fail with [`Error::Closed`].
///
/// # Example
/// ```
/// use walship_engine::{Durability, Log, Options};
/// let dir = tempfile::tempdir()?;
/// let log = Log::open(dir.path(), Options { segment_capacity: 1 << 20, ..Options::default() })?;
/// let lsn = log.append(b"hello")?;
/// log.commit(lsn, Durability::Local).wait()?;
/// let mut records = log.record_reader(log.start_lsn())?;
/// let rec = records.try_next()?.expect("one record");
/// assert_eq!((&rec.data[..], rec.lsn), (&b"hello"[..], lsn));
/// log.close()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Log {
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// The writer, when the caller drives the log ([`Drive::Manual`](crate::Drive)).
    manual: Mutex<Option<writer::Manual>>,
    _lock: LockGuard,
}

/// A consistent-enough snapshot of a log's positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watermarks {
    /// First retained position.
    pub start: Lsn,
    /// Just past the last appended byte.
    pub end: Lsn,
    /// Everything before is in the OS.
    pub written: Lsn,
    /// Everything before is on local disk.
    pub flushed: Lsn,
    /// The sync quorum has everything before in its OS.
    pub remote_written: Lsn,
    /// The sync quorum has flushed everything before.
    pub remote_flushed: Lsn,
    /// The sync quorum has applied everything before.
    pub remote_applied: Lsn,
    /// The embedder's checkpoint.
    pub checkpoint: Lsn,
    /// The retention floor, if one is set.
    pub retention_floor: Option<Lsn>,
}

/// What opening the log found and did, for logs and tools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenReport {
    /// Bytes of torn tail zeroed.
    pub zeroed_tail_bytes: u64,
    /// Where repair cut the log, if it did.
    pub repaired_at: Option<Lsn>,
    /// Where an unflushed tail that a power loss left out of order was cut, if one was:
    /// valid batches after an invalid one, none of them written after it had been
    /// flushed, so none acknowledged. The default open does this by itself.
    pub unflushed_cut: Option<crate::UnflushedCut>,
    /// Whether the log was created by this open.
    pub created: bool,
}

impl Log {
    /// Opens the log in `dir`, creating the directory and log if needed, recovering
    /// after a crash otherwise.
    ///
    /// # Errors
    /// [`Error::Locked`] if the directory is in use; [`Error::Corruption`] for damage that
    /// is not a torn tail (see [`RecoveryMode`](crate::RecoveryMode)); I/O errors.
    pub fn open(dir: impl AsRef<Path>, opts: Options) -> Result<Log> {
        Log::open_with_report(dir, opts).map(|(l, _)| l)
    }

    /// As [`open`](Log::open), also reporting what recovery did.
    ///
    /// # Errors
    /// As [`open`](Log::open).
    pub fn open_with_report(dir: impl AsRef<Path>, opts: Options) -> Result<(Log, OpenReport)> {
        let dir = dir.as_ref().to_path_buf();
        opts.validate()?;
        let fs = Arc::clone(&opts.storage);
        // Before anything is created in it: a directory that is not ours is refused.
        crate::layout::prepare(&*fs, &dir)?;
        let lock_file = lock_dir(&*fs, &dir)?;
        let meta_path = dir.join(META_FILE);
        let (capacity, created, identity) = match crate::layout::read_state_file(
            &*fs,
            &meta_path,
            format::META_LEN as u64,
            "read the log's meta file",
        )? {
            Some(b) => {
                let capacity = format::decode_meta(&b).map_err(|e| Error::meta(&meta_path, e))?;
                // An existing log is checked before recovery changes a byte of it.
                let identity = crate::identity::check(&*fs, &dir, opts.identity.as_ref())?;
                (capacity, false, identity)
            }
            None => {
                if has_segments(&*fs, &dir)? {
                    return Err(Error::corruption(
                        &meta_path,
                        0,
                        "missing, but the directory holds segments",
                    ));
                }
                // The identity first: the meta file's existence says the log is complete.
                let identity = crate::identity::check(&*fs, &dir, opts.identity.as_ref())?;
                crate::fsutil::atomic_write_in(
                    &*fs,
                    &dir,
                    META_FILE,
                    &format::encode_meta(opts.segment_capacity),
                )?;
                (opts.segment_capacity, true, identity)
            }
        };
        opts.validate_for(capacity)?;
        let geometry = Geometry::new(capacity);
        let mut epochs = EpochHistory::load(&*fs, &dir)?;
        let rec = recovery::recover(
            &fs,
            &dir,
            geometry,
            opts.recovery,
            opts.verify_all_on_open,
            opts.create_at,
            crate::marker::read(&*fs, &dir),
        )?;
        // From here on the log is written again: the marker no longer holds (recovery
        // removed it already if it changed anything).
        crate::marker::forget(&*fs, &dir)?;
        if epochs.truncate_after(rec.end) {
            epochs.store(&*fs, &dir)?;
        }
        let epoch = epochs
            .current()
            .map_or(Epoch::ZERO, |(e, _)| e)
            .max(rec.last_epoch);
        // Recovered bytes may still be only in the page cache (the process died, the OS
        // did not): flush them so `flushed` starts out true.
        for seg in rec.segments.iter().rev().take(2) {
            seg.file()?
                .sync_data()
                .map_err(|e| Error::io("fsync recovered segment", &seg.path, e))?;
        }
        let keep_open = rec.segments.len().saturating_sub(2);
        rec.segments
            .iter()
            .take(keep_open)
            .for_each(Segment::release_file);
        let tail_base = rec.segments.last().map_or(opts.create_at, |s| s.base);
        let next_base = Lsn::new(tail_base.get() + capacity);
        let mut ready = None;
        let mut removed = false;
        for path in rec.spares {
            if path == segment::segment_path(&dir, next_base) && ready.is_none() {
                ready = Some(Segment::open(&fs, &path, next_base, geometry)?);
            } else {
                fs.remove_file(&path)
                    .map_err(|e| Error::io("remove spare segment", &path, e))?;
                removed = true;
            }
        }
        if removed {
            crate::fsutil::fsync_dir(&*fs, &dir)?;
        }
        let manual = opts.drive == crate::options::Drive::Manual;
        let backend: Box<dyn io::Backend> = if manual {
            Box::new(io::inline::Inline)
        } else {
            io::open(opts.backend, &*fs).map_err(|e| Error::io("open I/O backend", &dir, e))?
        };
        let backend_name = backend.name();
        let end = rec.end;
        let segments = rec
            .segments
            .into_iter()
            .map(|s| (s.base.get(), Arc::new(s)))
            .collect();
        let shared = Arc::new(Shared {
            geometry,
            append: Mutex::new(Assembler::new(geometry, opts.max_batch_bytes, end, epoch)),
            space: Condvar::new(),
            space_waiters: AtomicUsize::new(0),
            has_pending: AtomicBool::new(false),
            segments: RwLock::new(segments),
            start: AtomicU64::new(rec.start.get()),
            end: AtomicU64::new(end.get()),
            written: Watermark::new(end),
            flushed: Watermark::new(end),
            remote_written: Watermark::new(Lsn::ZERO),
            remote_flushed: Watermark::new(Lsn::ZERO),
            remote_applied: Watermark::new(Lsn::ZERO),
            flush_requested: AtomicU64::new(end.get()),
            writing: Mutex::new(writer::WriteState::new(backend)),
            gate: crate::flush_gate::FlushGate::new(opts.flushes_in_flight),
            wake: io::WriterWake::new(),
            flush_wake: io::WriterWake::new(),
            life: crate::lifecycle::Lifecycle::default(),
            truncations: Mutex::new(Truncations::default()),
            trunc_gen: AtomicU64::new(0),
            timer: Timer::default(),
            epochs: Mutex::new(epochs),
            prep: Preparer::new(ready, next_base),
            checkpoint: AtomicU64::new(0),
            retention_floor: AtomicU64::new(u64::MAX),
            backend_name,
            counters: crate::stats::Counters::default(),
            retire_error: Mutex::new(None),
            identity,
            dir: dir.clone(),
            fs,
            opts,
        });
        let mut threads = Vec::new();
        let mut manual_writer = None;
        if manual {
            manual_writer = Some(writer::Manual::new());
        } else {
            Log::spawn_threads(&shared, &mut threads)?;
        }
        tracing::info!(dir = %dir.display(), start = %rec.start, end = %end, epoch = %epoch, backend = backend_name, zeroed = rec.zeroed, "log opened");
        let report = OpenReport {
            zeroed_tail_bytes: rec.zeroed,
            repaired_at: rec.repaired_at,
            unflushed_cut: rec.unflushed.clone(),
            created,
        };
        Ok((
            Log {
                shared,
                threads: Mutex::new(threads),
                manual: Mutex::new(manual_writer),
                _lock: lock_file,
            },
            report,
        ))
    }

    fn spawn_threads(shared: &Arc<Shared>, threads: &mut Vec<JoinHandle<()>>) -> Result<()> {
        let dir = &shared.dir;
        type Body = fn(Arc<Shared>);
        let bodies: [(&str, &'static str, Body); 3] = [
            ("walship-writer", "log writer thread", writer::run_writer),
            ("walship-flusher", "log flusher thread", writer::run_flusher),
            ("walship-preparer", "segment preparer thread", |s| {
                crate::preparer::run(&s)
            }),
        ];
        for (name, what, body) in bodies {
            let s = Arc::clone(shared);
            threads.push(
                std::thread::Builder::new()
                    .name(name.into())
                    .spawn(move || poison_on_panic(&Arc::clone(&s), what, || body(s)))
                    .map_err(|e| Error::io("spawn a log thread", dir, e))?,
            );
        }
        Ok(())
    }

    /// Does the log's pending background work on the calling thread, for a log opened
    /// with [`Drive::Manual`](crate::Drive): writes what was appended, starts and
    /// completes the flushes commits asked for (or that are due), prepares the next
    /// segment and retires old ones. Returns whether anything was done. A log driven by
    /// its own threads does nothing here and returns `false`.
    ///
    /// ```
    /// use walship_engine::storage::SimDisk;
    /// use walship_engine::{Drive, Durability, Log, Options};
    /// let disk = SimDisk::new(1);
    /// let log = Log::open("/log", Options { drive: Drive::Manual, storage: disk.boot(), ..Options::default() })?;
    /// let lsn = log.append(b"hello")?;
    /// assert!(log.watermarks().written < lsn, "nothing runs until stepped");
    /// let mut commit = log.commit(lsn, Durability::Local);
    /// assert!(commit.poll_now().is_none(), "asks for a flush");
    /// log.step()?;
    /// assert!(matches!(commit.poll_now(), Some(Ok(()))));
    /// # Ok::<(), walship_engine::Error>(())
    /// ```
    ///
    /// # Errors
    /// The error that poisoned the log, if its work failed.
    pub fn step(&self) -> Result<bool> {
        let mut w = lock(&self.manual);
        let Some(w) = w.as_mut() else {
            return Ok(false);
        };
        let mut did = false;
        loop {
            let wrote = w.step(&self.shared);
            let prepared = crate::preparer::step(&self.shared);
            if !wrote && !prepared {
                break;
            }
            did = true;
        }
        match self.shared.unusable() {
            Some(e) if self.shared.life.is_poisoned() => Err(e),
            _ => Ok(did),
        }
    }

    /// Steps a manually driven log until everything appended is flushed (or it fails).
    fn drain_manual(&self) {
        if lock(&self.manual).is_none() {
            return;
        }
        let end = self.shared.end();
        self.shared.request_flush(end);
        while self.shared.flushed.get() < end && !self.shared.life.is_poisoned() {
            match self.step() {
                Ok(true) => {}
                _ => break,
            }
        }
    }

    /// Appends one record and returns the LSN just past it (its commit token). Blocks
    /// while more than `max_pending_bytes` wait for the writer.
    ///
    /// The record is queued, not yet durable: pass the LSN to [`commit`](Log::commit).
    ///
    /// # Errors
    /// [`Error::RecordTooLarge`]; [`Error::NoSpace`] if a new segment could not be made
    /// (nothing was appended; retry once space is freed); [`Error::Poisoned`] or
    /// [`Error::Closed`].
    pub fn append(&self, record: &[u8]) -> Result<Lsn> {
        let mut out = Lsn::ZERO;
        self.reserve(&[record], true, &mut |l| out = l)?;
        Ok(out)
    }

    /// As [`append`](Log::append), but returns [`Error::WouldBlock`] instead of blocking.
    ///
    /// # Errors
    /// As [`append`](Log::append), plus [`Error::WouldBlock`].
    pub fn try_append(&self, record: &[u8]) -> Result<Lsn> {
        let mut out = Lsn::ZERO;
        self.reserve(&[record], false, &mut |l| out = l)?;
        Ok(out)
    }

    /// Appends records contiguously and returns each one's LSN. Either all are appended
    /// or none.
    ///
    /// # Errors
    /// As [`append`](Log::append).
    pub fn append_batch<R: AsRef<[u8]>>(&self, records: &[R]) -> Result<Vec<Lsn>> {
        let refs: Vec<&[u8]> = records.iter().map(AsRef::as_ref).collect();
        let mut out = Vec::with_capacity(refs.len());
        self.reserve(&refs, true, &mut |l| out.push(l))?;
        Ok(out)
    }

    fn check_sizes(&self, records: &[&[u8]]) -> Result<u64> {
        let max = self.max_record_bytes();
        let mut total = BATCH_HEADER_LEN as u64;
        for r in records {
            if r.len() > max {
                return Err(Error::RecordTooLarge { len: r.len(), max });
            }
            total += (RECORD_PREFIX_LEN + r.len()) as u64;
        }
        Ok(total)
    }

    /// Waits (or refuses, if `!block`) until `bytes` more fit under the pending limit.
    fn admit<'a>(
        &'a self,
        mut st: MutexGuard<'a, Assembler>,
        bytes: u64,
        block: bool,
        local: bool,
    ) -> Result<MutexGuard<'a, Assembler>> {
        let sh = &self.shared;
        let limit = sh.opts.max_pending_bytes;
        let mut first = true;
        loop {
            // Asked each time the append lock is held again: waiting for room below
            // releases it, and a seal (which takes it) may have come meanwhile.
            let asked = first || !crate::mutation::active(crate::mutation::SEAL_BYPASS);
            first = false;
            let refused = if !asked {
                None
            } else if local {
                sh.life.refuse_local(&sh.dir)
            } else {
                sh.unusable()
            };
            if let Some(e) = refused {
                return Err(e);
            }
            let pending = st.end().bytes_after(sh.written.get());
            if pending == 0 || pending + bytes <= limit {
                // Pass the baton: wake one more blocked appender if there is room left,
                // rather than the writer waking all of them at once.
                if block
                    && sh.space_waiters.load(Ordering::Acquire) > 0
                    && pending + 2 * bytes <= limit
                {
                    sh.space.notify_one();
                }
                return Ok(st);
            }
            if !block || self.shared.opts.drive == crate::options::Drive::Manual {
                // Nobody but the caller would make room in a manually driven log.
                return Err(Error::WouldBlock { pending, limit });
            }
            crate::stats::Counters::add(&sh.counters.back_pressure_waits, 1);
            sh.space_waiters.fetch_add(1, Ordering::AcqRel);
            sh.wake.notify();
            st = sh
                .space
                .wait_timeout(st, Duration::from_millis(100))
                .unwrap_or_else(|p| p.into_inner())
                .0;
            sh.space_waiters.fetch_sub(1, Ordering::AcqRel);
        }
    }

    fn reserve(&self, records: &[&[u8]], block: bool, out: &mut dyn FnMut(Lsn)) -> Result<()> {
        let bytes = self.check_sizes(records)?;
        let sh = &*self.shared;
        let mut st = self.admit(lock(&sh.append), bytes, block, true)?;
        let before = st.end();
        if records.len() > 1 {
            // Make every segment the records could reach exist first, so that a failure
            // (ENOSPC) leaves nothing appended. Each crossing wastes at most one record's
            // worth of padding, hence the factor of two. Start with the segment holding
            // `before`: when `before` is exactly a boundary, that is where the first
            // record goes, and it may not exist yet.
            let g = sh.geometry;
            let reach = before.get().saturating_add(2 * bytes + g.capacity());
            let mut base = g.base_of(before);
            if crate::mutation::active(crate::mutation::PROVISION_PAST_BOUNDARY) {
                base = Lsn::new(base.get() + g.capacity());
            }
            while base.get() < reach {
                sh.provision(base)?;
                base = Lsn::new(base.get() + g.capacity());
            }
        }
        let mut ensure = |b: Lsn| sh.provision(b);
        let mut appended = 0;
        for r in records {
            match st.append(r, &mut ensure) {
                Ok(l) => {
                    appended += 1;
                    out(l);
                }
                Err(e) if appended == 0 => return Err(e),
                Err(e) => {
                    // Unreachable in practice: the segments were provisioned above. Should it
                    // happen, the appended part stays queued (the caller gets an error, not
                    // the LSNs) and is written like any other.
                    sh.end.store(st.end().get(), Ordering::Release);
                    sh.has_pending.store(true, Ordering::SeqCst);
                    drop(st);
                    sh.appended();
                    tracing::warn!(from = %before, error = %e, "multi-record append failed part-way");
                    return Err(e);
                }
            }
        }
        sh.end.store(st.end().get(), Ordering::Release);
        sh.has_pending.store(true, Ordering::SeqCst);
        drop(st);
        sh.appended();
        crate::stats::Counters::add(&sh.counters.records_appended, appended);
        Ok(())
    }

    /// Appends batches received verbatim from a leader (a follower's path): `bytes` holds
    /// one or more consecutive encoded batches, possibly including padding. Every batch is
    /// checked (CRC, framing, LSN continuity from this log's end, segment placement,
    /// non-decreasing epoch) before anything is queued; new epochs are recorded in the
    /// epoch history. Returns the new end of the log. The bytes are written as given but
    /// for each batch's flush stamp, which this log writes for itself (what it had flushed
    /// when it wrote the batch), so the two logs stay identical batch for batch
    /// ([`format::same_batch`](crate::format::same_batch)).
    ///
    /// # Errors
    /// [`Error::BadBatch`] (nothing appended), [`Error::InvalidState`] if local records
    /// are pending, and the errors of [`append`](Log::append).
    pub fn append_encoded(&self, bytes: Bytes) -> Result<Lsn> {
        let sh = &*self.shared;
        let mut st = self.admit(lock(&sh.append), bytes.len() as u64, true, false)?;
        let plan = st.plan_encoded(&bytes)?;
        for base in &plan.provision {
            sh.provision(*base)?;
        }
        if !plan.epochs.is_empty() {
            let mut h = lock(&sh.epochs);
            let mut next = h.clone();
            for e in &plan.epochs {
                next.push(e.epoch, e.start)?;
            }
            next.store(&*sh.fs, &sh.dir)?;
            *h = next;
        }
        st.apply_encoded(plan);
        let end = st.end();
        sh.end.store(end.get(), Ordering::Release);
        sh.has_pending.store(true, Ordering::SeqCst);
        drop(st);
        sh.appended();
        Ok(end)
    }

    /// A future that resolves when the record ending at `lsn` reaches `level`.
    ///
    /// Runtime-agnostic: await it from any executor, or call [`Commit::wait`] /
    /// [`Commit::wait_timeout`] from a plain thread. Set a deadline with
    /// [`Commit::timeout`]; on expiry a remote level reports
    /// [`Error::RemoteUnconfirmed`] once the record is durable locally.
    pub fn commit(&self, lsn: Lsn, level: Durability) -> Commit {
        if level == Durability::Async {
            // An async commit asks for nothing but to be written soon: the writer thread
            // does that (a `Local` committer writes its own records instead).
            self.shared.want_written();
        }
        Commit::new(Arc::clone(&self.shared), lsn, level)
    }

    /// A future that resolves when everything before `lsn` is written to the OS (not
    /// necessarily flushed), without asking for a flush: how a follower knows what to
    /// acknowledge as written. Errors and deadlines as [`commit`](Log::commit).
    ///
    /// ```
    /// # use walship_engine::{Log, Options};
    /// # let dir = tempfile::tempdir()?;
    /// # let log = Log::open(dir.path(), Options { segment_capacity: 1 << 20, ..Options::default() })?;
    /// let lsn = log.append(b"x")?;
    /// log.written(lsn).wait()?;
    /// assert!(log.watermarks().written >= lsn);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn written(&self, lsn: Lsn) -> Commit {
        Commit::written(Arc::clone(&self.shared), lsn)
    }

    /// Blocks until `lsn` reaches `level` or `timeout` passes.
    ///
    /// # Errors
    /// [`Error::Timeout`], [`Error::RemoteUnconfirmed`], [`Error::RemoteFenced`],
    /// [`Error::Truncated`], [`Error::Poisoned`], [`Error::Closed`], [`Error::BeyondEnd`].
    pub fn wait(&self, lsn: Lsn, level: Durability, timeout: Duration) -> Result<()> {
        self.commit(lsn, level).wait_timeout(timeout)
    }

    /// A reader of whole batches (padding included) from the batch boundary `from`.
    ///
    /// # Errors
    /// [`Error::NotRetained`], [`Error::BeyondEnd`], [`Error::NotBoundary`].
    pub fn reader(&self, from: Lsn) -> Result<Reader> {
        Reader::new(Arc::clone(&self.shared), from, false).map(|(r, _)| r)
    }

    /// A reader of records after the record boundary `from` (a commit token, or a batch
    /// boundary such as [`start_lsn`](Log::start_lsn)).
    ///
    /// # Errors
    /// As [`reader`](Log::reader).
    pub fn record_reader(&self, from: Lsn) -> Result<RecordReader> {
        let (r, skip) = Reader::new(Arc::clone(&self.shared), from, true)?;
        Ok(RecordReader::new(r, skip))
    }

    /// Starts `epoch` at the current end of the log (a node becoming leader) and records
    /// it durably in the epoch history. Later local batches carry it. Returns its start.
    ///
    /// # Errors
    /// [`Error::EpochRegression`] if `epoch` is not greater than the current epoch.
    pub fn begin_epoch(&self, epoch: Epoch) -> Result<Lsn> {
        let sh = &*self.shared;
        let mut st = lock(&sh.append);
        if let Some(e) = sh.unusable() {
            return Err(e);
        }
        let current = st
            .epoch()
            .max(lock(&sh.epochs).current().map_or(Epoch::ZERO, |(e, _)| e));
        if epoch <= current {
            return Err(Error::EpochRegression {
                current,
                new: epoch,
            });
        }
        let start = st.end();
        {
            let mut h = lock(&sh.epochs);
            let mut next = h.clone();
            next.push(epoch, start)?;
            next.store(&*sh.fs, &sh.dir)?;
            *h = next;
        }
        st.set_epoch(epoch);
        if st.has_pending() {
            sh.has_pending.store(true, Ordering::SeqCst);
            drop(st);
            sh.appended();
        }
        Ok(start)
    }

    /// The current epoch: the latest begun or received.
    pub fn epoch(&self) -> Epoch {
        lock(&self.shared.append).epoch()
    }

    /// A copy of the epoch history.
    pub fn epoch_history(&self) -> EpochHistory {
        lock(&self.shared.epochs).clone()
    }

    /// Where `epoch` began in this log, if it did; unlike
    /// [`epoch_history`](Log::epoch_history), copies nothing (a replication driver asks
    /// on every turn).
    pub fn epoch_start(&self, epoch: Epoch) -> Option<Lsn> {
        lock(&self.shared.epochs).start_of(epoch)
    }

    /// Removes everything after `lsn`, durably, as a follower must to undo a divergent
    /// tail after failover. `lsn` must be a batch boundary between the start and the end.
    /// Waits for pending appends to be written first. Commits and readers waiting beyond
    /// `lsn` fail with [`Error::Truncated`]; the epoch history forgets epochs that started
    /// at or after `lsn` (they hold nothing any more; a follower learns its leader's
    /// epochs again from the batches it is sent).
    ///
    /// Crash-safe: the segment holding `lsn` is rewritten to a new file renamed over the
    /// old one and later segments are removed newest first, so after a crash the log is
    /// either as before or a valid prefix no shorter than `lsn`.
    ///
    /// # Errors
    /// [`Error::NotRetained`], [`Error::BeyondEnd`], [`Error::NotBoundary`], I/O errors.
    pub fn truncate_suffix(&self, lsn: Lsn) -> Result<()> {
        // A manually driven log is drained here: no thread would do it for the wait
        // inside.
        self.drain_manual();
        crate::truncate::truncate_suffix(&self.shared, lsn)
    }

    /// Throws the whole log away and starts it again, empty, at the segment boundary
    /// `base`, in `epoch` (`Epoch::ZERO` for none): what a follower does before it
    /// installs a snapshot of its leader's state, when the leader no longer retains the
    /// log this one ends at. The log then starts and ends at the first batch of `base`,
    /// its epoch history holds `epoch` from there, and the checkpoint is back at zero.
    /// Commits of the old log fail with [`Error::Truncated`]; its readers with that or
    /// [`Error::NotRetained`].
    ///
    /// Crash-safe: the epoch history is emptied first, then the segments are removed
    /// newest first, then the new segment is created; a crash leaves an old prefix that
    /// claims no epoch, an empty log, or the new one. None holds a record the old log did
    /// not, so a caller that finds its embedder's state outside the log after a crash
    /// starts over.
    ///
    /// ```
    /// use walship_engine::storage::SimDisk;
    /// use walship_engine::{Durability, Epoch, Log, Lsn, Options};
    /// let disk = SimDisk::new(1);
    /// let opts = || Options { segment_capacity: 64 << 10, storage: disk.boot(), ..Options::default() };
    /// let log = Log::open("/log", opts())?;
    /// let lsn = log.append(b"old")?;
    /// log.commit(lsn, Durability::Local).wait()?;
    /// let base = Lsn::new(10 * (64 << 10));
    /// log.restart_at(base, Epoch::new(4))?;
    /// assert_eq!(log.start_lsn(), log.end_lsn());
    /// assert_eq!(log.epoch_history().entries(), &[(Epoch::new(4), log.start_lsn())]);
    /// drop(log);
    /// let log = Log::open("/log", opts())?;
    /// assert!(log.start_lsn() > base && log.start_lsn() == log.end_lsn());
    /// # Ok::<(), walship_engine::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::NotBoundary`] if `base` is not a multiple of the segment capacity; I/O
    /// errors (the log is then in one of the crash states above and should be reopened).
    pub fn restart_at(&self, base: Lsn, epoch: Epoch) -> Result<()> {
        self.drain_manual();
        crate::restart::restart_at(&self.shared, base, epoch)
    }

    /// Reports the embedder's checkpoint: segments entirely before it may be recycled.
    pub fn set_checkpoint(&self, lsn: Lsn) {
        self.shared
            .checkpoint
            .fetch_max(lsn.get(), Ordering::AcqRel);
        self.shared.prep.request_retention();
    }

    /// Keeps every segment holding bytes at or after `floor`, whatever the checkpoint says:
    /// the replication layer sets it to the lowest position its followers' slots still
    /// need. `None` lifts the hold. Retirement honours `min(checkpoint, floor)`.
    pub fn set_retention_floor(&self, floor: Option<Lsn>) {
        let v = floor.map_or(u64::MAX, Lsn::get);
        let old = self.shared.retention_floor.swap(v, Ordering::AcqRel);
        if v > old {
            self.shared.prep.request_retention();
        }
    }

    /// Raises the remote-written watermark (called by the replication layer's quorum
    /// tracker).
    pub fn advance_remote_written(&self, lsn: Lsn) {
        self.shared.remote_written.advance(lsn);
    }

    /// Raises the remote-flushed watermark.
    pub fn advance_remote_flushed(&self, lsn: Lsn) {
        self.shared.remote_flushed.advance(lsn);
    }

    /// Raises the remote-applied watermark.
    pub fn advance_remote_applied(&self, lsn: Lsn) {
        self.shared.remote_applied.advance(lsn);
    }

    /// Declares that this node can no longer confirm remote durability (it stepped down
    /// or was fenced): commits waiting on remote levels fail at once with
    /// [`Error::RemoteFenced`], and so do new ones until [`unfence_remote`](Log::unfence_remote).
    pub fn fence_remote(&self, reason: impl Into<String>) {
        self.shared.life.fence(reason.into());
        for w in [
            &self.shared.remote_written,
            &self.shared.remote_flushed,
            &self.shared.remote_applied,
        ] {
            w.wake_all();
        }
    }

    /// Refuses local appends from now on (`append`, `try_append`, `append_batch` fail with
    /// [`Error::Sealed`]); verbatim appends from a leader (`append_encoded`) still work.
    /// When it returns, no local append is in progress, so the end of the log is final
    /// until [`unseal`](Log::unseal): what a leader that steps down, or hands over in a
    /// planned switchover, needs.
    ///
    /// ```
    /// # use walship_engine::{Error, Log, Options};
    /// # let dir = tempfile::tempdir()?;
    /// # let log = Log::open(dir.path(), Options { segment_capacity: 1 << 20, ..Options::default() })?;
    /// log.seal("switching over to n2");
    /// assert!(matches!(log.append(b"x"), Err(Error::Sealed { .. })));
    /// log.unseal();
    /// log.append(b"x")?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn seal(&self, reason: impl Into<String>) {
        // Taken under the append lock: an append that already holds it finishes first.
        let _append = lock(&self.shared.append);
        self.shared.life.seal(reason.into());
    }

    /// Lifts [`seal`](Log::seal).
    pub fn unseal(&self) {
        let _append = lock(&self.shared.append);
        self.shared.life.unseal();
    }

    /// Why local appends are refused, if they are.
    pub fn sealed(&self) -> Option<String> {
        self.shared.life.sealed()
    }

    /// Lifts [`fence_remote`](Log::fence_remote).
    pub fn unfence_remote(&self) {
        self.shared.life.unfence();
    }

    /// Why segment retirement last stopped, if it ever did: an I/O error renaming or
    /// removing a retired segment (retirement then stops at that segment, the log stays
    /// consistent, and the next [`set_checkpoint`](Log::set_checkpoint) retries), or a
    /// segment file that had vanished. Also counted in [`Stats::retire_errors`](crate::Stats).
    pub fn last_retire_error(&self) -> Option<Error> {
        lock(&self.shared.retire_error).clone()
    }

    /// Checks that the log's files are exactly the ones it believes it has: every
    /// segment it reads and writes is the file under that segment's name (same inode,
    /// so nothing replaced or unlinked it), every segment file in the directory is one
    /// of its segments or the prepared next one, and the recycle pool is what is on disk.
    /// Waits for segment preparation or retirement in progress to finish, and holds
    /// appends meanwhile: a consistency check for tests, tools and health endpoints.
    ///
    /// ```
    /// # use walship_engine::{Log, Options};
    /// # let dir = tempfile::tempdir()?;
    /// let log = Log::open(dir.path(), Options { segment_capacity: 1 << 16, ..Options::default() })?;
    /// for _ in 0..100 {
    ///     log.append(&[7u8; 2000])?;
    /// }
    /// let files = log.check_files()?;
    /// assert_eq!(files.segments.len(), log.segment_count());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::FileMismatch`] naming the file and what disagrees; I/O errors listing the
    /// directory; [`Error::Poisoned`] or [`Error::Closed`].
    pub fn check_files(&self) -> Result<crate::SegmentFiles> {
        crate::audit::check_files(&self.shared)
    }

    /// Counters of what the log has done since it was opened.
    ///
    /// ```
    /// # use walship_engine::{Durability, Log, Options};
    /// # let dir = tempfile::tempdir()?;
    /// # let log = Log::open(dir.path(), Options { segment_capacity: 1 << 20, ..Options::default() })?;
    /// let lsn = log.append_batch(&[b"a".as_slice(), b"b"])?[1];
    /// log.commit(lsn, Durability::Local).wait()?;
    /// let s = log.stats();
    /// assert_eq!(s.records_appended, 2);
    /// assert!(s.flushes >= 1 && s.batches_written >= 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn stats(&self) -> crate::Stats {
        self.shared.counters.snapshot()
    }

    /// The sync quorum's flushed watermark ([`Watermarks::remote_flushed`]), read alone.
    pub fn remote_flushed(&self) -> Lsn {
        self.shared.remote_flushed.get()
    }

    /// This log's own flushed watermark ([`Watermarks::flushed`]), read alone.
    pub fn flushed(&self) -> Lsn {
        self.shared.flushed.get()
    }

    /// The positions of the log.
    pub fn watermarks(&self) -> Watermarks {
        let s = &self.shared;
        Watermarks {
            start: s.start(),
            end: s.end(),
            written: s.written.get(),
            flushed: s.flushed.get(),
            remote_written: s.remote_written.get(),
            remote_flushed: s.remote_flushed.get(),
            remote_applied: s.remote_applied.get(),
            checkpoint: Lsn::new(s.checkpoint.load(Ordering::Acquire)),
            retention_floor: match s.retention_floor.load(Ordering::Acquire) {
                u64::MAX => None,
                v => Some(Lsn::new(v)),
            },
        }
    }

    /// First retained position.
    pub fn start_lsn(&self) -> Lsn {
        self.shared.start()
    }

    /// Just past the last appended byte.
    pub fn end_lsn(&self) -> Lsn {
        self.shared.end()
    }

    /// The segment capacity recorded in the log.
    pub fn segment_capacity(&self) -> u64 {
        self.shared.geometry.capacity()
    }

    /// The largest record this log accepts: `Options::max_record_bytes`, capped by what
    /// its segments can hold. What an endpoint that takes records should bound input by.
    pub fn max_record_bytes(&self) -> usize {
        self.shared
            .opts
            .effective_max_record(self.shared.geometry.capacity())
    }

    /// The I/O backend in use ("io_uring" or "portable").
    pub fn backend_name(&self) -> &'static str {
        self.shared.backend_name
    }

    /// The log directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// The storage the log's files live on ([`Options::storage`]): where state files kept
    /// beside the log belong too ([`atomic_write_in`](crate::atomic_write_in),
    /// [`read_small_file_in`](crate::read_small_file_in)).
    pub fn storage(&self) -> &std::sync::Arc<dyn Storage> {
        &self.shared.fs
    }

    /// The cluster and node this log belongs to, if it records them (see
    /// [`Options::identity`]).
    pub fn identity(&self) -> Option<&crate::LogIdentity> {
        self.shared.identity.as_ref()
    }

    /// Number of segment files in the log.
    pub fn segment_count(&self) -> usize {
        read(&self.shared.segments).len()
    }

    /// Writes and flushes everything appended, stops the threads and fails every waiter
    /// still pending with [`Error::Closed`]. Idempotent; also done on drop.
    ///
    /// # Errors
    /// The error that poisoned the log, if one did.
    pub fn close(&self) -> Result<()> {
        let sh = &*self.shared;
        let end = sh.end();
        let manual = lock(&self.manual).is_some();
        if manual && !sh.life.is_closed() && !sh.life.is_poisoned() {
            self.drain_manual();
        } else if !sh.life.is_closed() && !sh.life.is_poisoned() {
            // Let the writer drain: everything appended gets written and flushed.
            sh.request_flush(end);
            // Until flushed, or until the writer fails (it then never will: a close after
            // the disk went away used to wait out the whole minute).
            let id = crate::watermark::next_waiter_id();
            let _ = block_on(
                std::future::poll_fn(|cx| {
                    // Registered first, then the lifecycle read: a poisoning after the
                    // read wakes the registered waiter.
                    if sh.flushed.poll_reached(end, id, cx.waker()) || sh.life.is_poisoned() {
                        std::task::Poll::Ready(())
                    } else {
                        std::task::Poll::Pending
                    }
                }),
                Some(Instant::now() + Duration::from_secs(60)),
            );
        }
        sh.life.begin_close();
        sh.prep.shutdown();
        sh.wake_everyone();
        let threads: Vec<_> = lock(&self.threads).drain(..).collect();
        // A manual log's writer goes with its first close, as the threads do.
        let first_close = !threads.is_empty() || lock(&self.manual).take().is_some();
        for t in threads {
            let _ = t.join();
        }
        sh.timer.shutdown();
        if first_close && !sh.life.is_poisoned() && sh.flushed.get() >= sh.end() {
            // Everything is durable: a later open may treat any invalid batch before the
            // end as damage, not as an unflushed tail.
            crate::marker::write(&*sh.fs, &sh.dir, sh.flushed.get())?;
        }
        sh.life.finish_close();
        sh.wake_everyone();
        match sh.life.poisoned() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log")
            .field("dir", &self.shared.dir)
            .field("backend", &self.shared.backend_name)
            .field("watermarks", &self.watermarks())
            .finish()
    }
}

/// Runs a log thread's body; if it panics (a bug), the log is poisoned so that every
/// waiter fails at once instead of waiting for a thread that is gone.
fn poison_on_panic(shared: &Shared, thread: &'static str, body: impl FnOnce()) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)).is_err() {
        shared.poison(
            thread,
            &std::io::Error::other("the thread panicked (a bug; the panic message is above)"),
        );
    }
}

fn has_segments(fs: &dyn Storage, dir: &Path) -> Result<bool> {
    let names = fs
        .list_dir(dir)
        .map_err(|e| Error::io("list log directory", dir, e))?;
    for name in names {
        if name
            .to_str()
            .and_then(segment::parse_segment_name)
            .is_some()
        {
            return Ok(true);
        }
    }
    Ok(false)
}

fn lock_dir(fs: &dyn Storage, dir: &Path) -> Result<LockGuard> {
    let path = dir.join(LOCK_FILE);
    match fs.lock(&path) {
        Ok(Some(guard)) => Ok(guard),
        Ok(None) => Err(Error::Locked {
            path: dir.to_path_buf(),
        }),
        Err(e) => Err(Error::io("lock log directory", &path, e)),
    }
}
