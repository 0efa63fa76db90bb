//! Peers of walship in the `latency` harness: other embedded write-ahead logs, and the
//! bare device, driven through one trait, [`DurableLog`], in the same closed loop as
//! walship's own cells.
//!
//! Each implementation opens a fresh directory, and [`DurableLog::append_durable`] appends
//! one record and returns once it is durable (fdatasync'd):
//!
//! | peer | one append |
//! | --- | --- |
//! | [`WalshipPeer`] | `Log::append` + `commit(lsn, Durability::Local).wait()` |
//! | [`OkayWalPeer`] | okaywal 0.3.1, default `Configuration`: `begin_entry`, `write_chunk`, `commit` (returns once the segment is fsynced; okaywal batches fsyncs across threads) |
//! | [`RaftEnginePeer`] | raft-engine 0.4.2, `Config { dir, ..Default }`: a `LogBatch` with one `put` for the writer's own raft group, `Engine::write(batch, sync = true)` (its write barrier groups concurrent writers under one fdatasync) |
//! | [`DevicePeer`] | one `pwrite` of the record at an advancing offset of a preallocated file + `fdatasync`, writers serialized by a mutex: the "pwrite + fdatasync per commit" baseline |
//!
//! The harness's walship cells keep their own loop (append; commit(level).wait, with a
//! checkpoint thread); [`WalshipPeer`] wraps the same calls for code that wants every
//! system behind the one trait.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use walship_engine::{Durability, Log, Options};

/// A log that makes one record durable per call.
pub trait DurableLog: Send + Sync {
    /// Short name for tables, legends and file names.
    fn name(&self) -> &'static str;

    /// Appends `record` on behalf of closed-loop writer `writer` (0-based; implementations
    /// may use it to keep writers apart, as raft-engine's raft groups) and returns once
    /// the record is durable.
    ///
    /// # Errors
    /// The implementation's error, as text.
    fn append_durable(&self, writer: usize, record: &[u8]) -> Result<(), String>;

    /// Shuts the log down (background threads joined, files closed).
    ///
    /// # Errors
    /// The implementation's error, as text.
    fn close(self: Box<Self>) -> Result<(), String>;
}

/// The peers the harness can run next to walship.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerKind {
    /// okaywal 0.3.1.
    OkayWal,
    /// raft-engine 0.4.2 (TiKV's).
    RaftEngine,
    /// `pwrite` + `fdatasync` per commit on a preallocated file.
    Device,
}

impl PeerKind {
    /// Every peer, in the harness's default order.
    pub const ALL: [PeerKind; 3] = [PeerKind::OkayWal, PeerKind::RaftEngine, PeerKind::Device];

    /// The name used on the command line, in tables and in file names.
    pub fn name(self) -> &'static str {
        match self {
            PeerKind::OkayWal => "okaywal",
            PeerKind::RaftEngine => "raft-engine",
            PeerKind::Device => "device",
        }
    }

    /// Opens this peer in `dir` (created if missing; it should be new and empty).
    ///
    /// # Errors
    /// The peer's open error, naming the directory.
    pub fn open(self, dir: &Path, opts: &PeerOptions) -> Result<Box<dyn DurableLog>, String> {
        Ok(match self {
            PeerKind::OkayWal => Box::new(OkayWalPeer::open(dir)?),
            PeerKind::RaftEngine => Box::new(RaftEnginePeer::open(dir)?),
            PeerKind::Device => Box::new(DevicePeer::open(dir, opts.device_file_bytes)?),
        })
    }
}

impl fmt::Display for PeerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for PeerKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "okaywal" => Ok(PeerKind::OkayWal),
            "raft-engine" | "raft_engine" | "raftengine" => Ok(PeerKind::RaftEngine),
            "device" => Ok(PeerKind::Device),
            other => Err(format!(
                "unknown peer {other:?} (expected okaywal, raft-engine or device)"
            )),
        }
    }
}

/// Parses a `--peers` list: peer names, or the single word `none` for no peers.
/// Duplicates are dropped, the order kept.
///
/// # Errors
/// An unknown name, or `none` next to a peer.
pub fn parse_peer_list(items: &[String]) -> Result<Vec<PeerKind>, String> {
    let items: Vec<&str> = items
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .collect();
    if items.iter().any(|s| s.eq_ignore_ascii_case("none")) {
        return if items.len() == 1 {
            Ok(Vec::new())
        } else {
            Err("--peers: `none` cannot be combined with peer names".into())
        };
    }
    let mut out = Vec::new();
    for s in items {
        let k: PeerKind = s.parse()?;
        if !out.contains(&k) {
            out.push(k);
        }
    }
    Ok(out)
}

/// Settings of the peers that have any.
#[derive(Debug, Clone, Copy)]
pub struct PeerOptions {
    /// Size of the device peer's preallocated file; its offsets wrap around at the end.
    pub device_file_bytes: u64,
}

impl Default for PeerOptions {
    fn default() -> Self {
        PeerOptions {
            device_file_bytes: 64 << 20,
        }
    }
}

fn create_dir(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))
}

/// walship-engine: `append` + `commit(Local).wait`, the checkpoint advanced every 1024
/// appends so retired segments are recycled.
pub struct WalshipPeer {
    log: Log,
    appends: AtomicU64,
}

impl WalshipPeer {
    /// Opens a log in `dir` with `opts`.
    ///
    /// # Errors
    /// `Log::open`'s error, naming the directory.
    pub fn open(dir: &Path, opts: Options) -> Result<WalshipPeer, String> {
        let log = Log::open(dir, opts)
            .map_err(|e| format!("open walship log in {}: {e}", dir.display()))?;
        Ok(WalshipPeer {
            log,
            appends: AtomicU64::new(0),
        })
    }
}

impl DurableLog for WalshipPeer {
    fn name(&self) -> &'static str {
        "walship"
    }

    fn append_durable(&self, _writer: usize, record: &[u8]) -> Result<(), String> {
        let lsn = self
            .log
            .append(record)
            .map_err(|e| format!("walship append: {e}"))?;
        self.log
            .commit(lsn, Durability::Local)
            .timeout(Duration::from_secs(30))
            .wait()
            .map_err(|e| format!("walship commit: {e}"))?;
        if self.appends.fetch_add(1, Ordering::Relaxed) % 1024 == 1023 {
            self.log.set_checkpoint(self.log.watermarks().flushed);
        }
        Ok(())
    }

    fn close(self: Box<Self>) -> Result<(), String> {
        self.log
            .close()
            .map_err(|e| format!("close walship log: {e}"))
    }
}

/// okaywal's log manager for the bench: nothing to recover into, nothing to persist on a
/// checkpoint (as okaywal's basic example), so segments are recycled once checkpointed.
#[derive(Debug)]
struct NoStore;

impl okaywal::LogManager for NoStore {
    fn recover(&mut self, _entry: &mut okaywal::Entry<'_>) -> io::Result<()> {
        Ok(())
    }

    fn checkpoint_to(
        &mut self,
        _last_checkpointed_id: okaywal::EntryId,
        _checkpointed_entries: &mut okaywal::SegmentReader,
        _wal: &okaywal::WriteAheadLog,
    ) -> io::Result<()> {
        Ok(())
    }
}

/// okaywal 0.3.1 with its default configuration (1 MiB preallocated segments,
/// checkpoint after 768 KiB, 16 KiB buffers).
pub struct OkayWalPeer {
    wal: okaywal::WriteAheadLog,
}

impl OkayWalPeer {
    /// Opens (creates) a log in `dir`.
    ///
    /// # Errors
    /// okaywal's open error, naming the directory.
    pub fn open(dir: &Path) -> Result<OkayWalPeer, String> {
        create_dir(dir)?;
        let wal = okaywal::WriteAheadLog::recover(dir, NoStore)
            .map_err(|e| format!("open okaywal in {}: {e}", dir.display()))?;
        Ok(OkayWalPeer { wal })
    }
}

impl DurableLog for OkayWalPeer {
    fn name(&self) -> &'static str {
        PeerKind::OkayWal.name()
    }

    fn append_durable(&self, _writer: usize, record: &[u8]) -> Result<(), String> {
        let mut entry = self
            .wal
            .begin_entry()
            .map_err(|e| format!("okaywal begin_entry: {e}"))?;
        entry
            .write_chunk(record)
            .map_err(|e| format!("okaywal write_chunk: {e}"))?;
        entry.commit().map_err(|e| format!("okaywal commit: {e}"))?;
        Ok(())
    }

    fn close(self: Box<Self>) -> Result<(), String> {
        self.wal
            .shutdown()
            .map_err(|e| format!("okaywal shutdown: {e}"))
    }
}

/// raft-engine 0.4.2 with `Config { dir, ..Default::default() }`; writer `i` writes raft
/// group `i + 1`, so concurrent writers touch different groups.
pub struct RaftEnginePeer {
    engine: raft_engine::Engine,
}

impl RaftEnginePeer {
    /// The key each append puts (overwritten, so the memtable stays one value per group).
    const KEY: &'static [u8] = b"record";

    /// Opens (creates) an engine in `dir`.
    ///
    /// # Errors
    /// raft-engine's open error, naming the directory.
    pub fn open(dir: &Path) -> Result<RaftEnginePeer, String> {
        create_dir(dir)?;
        let cfg = raft_engine::Config {
            dir: dir.to_string_lossy().into_owned(),
            ..Default::default()
        };
        let engine = raft_engine::Engine::open(cfg)
            .map_err(|e| format!("open raft-engine in {}: {e}", dir.display()))?;
        Ok(RaftEnginePeer { engine })
    }
}

impl DurableLog for RaftEnginePeer {
    fn name(&self) -> &'static str {
        PeerKind::RaftEngine.name()
    }

    fn append_durable(&self, writer: usize, record: &[u8]) -> Result<(), String> {
        let mut batch = raft_engine::LogBatch::with_capacity(1);
        batch
            .put(writer as u64 + 1, Self::KEY.to_vec(), record.to_vec())
            .map_err(|e| format!("raft-engine LogBatch::put: {e}"))?;
        self.engine
            .write(&mut batch, true)
            .map_err(|e| format!("raft-engine write: {e}"))?;
        Ok(())
    }

    fn close(self: Box<Self>) -> Result<(), String> {
        // Dropping the engine stops its threads and closes its files.
        drop(self);
        Ok(())
    }
}

/// The bare device: `pwrite` of each record at the next offset of a preallocated file
/// (written in full and fsynced first, wrapping at its end) and `fdatasync`, one commit
/// at a time under a mutex.
pub struct DevicePeer {
    file: Mutex<(File, u64)>,
    capacity: u64,
    path: std::path::PathBuf,
}

impl DevicePeer {
    /// Creates `dir` and a preallocated file of `file_bytes` in it.
    ///
    /// # Errors
    /// I/O errors, naming the file.
    pub fn open(dir: &Path, file_bytes: u64) -> Result<DevicePeer, String> {
        create_dir(dir)?;
        let path = dir.join("device-peer.dat");
        let file =
            crate::device::preallocate(&path, file_bytes.max(4096)).map_err(|e| e.to_string())?;
        Ok(DevicePeer {
            file: Mutex::new((file, 0)),
            capacity: file_bytes.max(4096),
            path,
        })
    }
}

impl DurableLog for DevicePeer {
    fn name(&self) -> &'static str {
        PeerKind::Device.name()
    }

    fn append_durable(&self, _writer: usize, record: &[u8]) -> Result<(), String> {
        let mut g = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let len = record.len() as u64;
        if g.1 + len > self.capacity {
            g.1 = 0;
        }
        let off = g.1;
        g.0.write_all_at(record, off)
            .map_err(|e| format!("pwrite {}: {e}", self.path.display()))?;
        g.0.sync_data()
            .map_err(|e| format!("fdatasync {}: {e}", self.path.display()))?;
        g.1 = off + len;
        Ok(())
    }

    fn close(self: Box<Self>) -> Result<(), String> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exercise(log: Box<dyn DurableLog>, name: &str) {
        assert_eq!(log.name(), name);
        let record = vec![7u8; 300];
        std::thread::scope(|s| {
            for w in 0..3 {
                let log = &log;
                let record = &record;
                s.spawn(move || {
                    for _ in 0..20 {
                        log.append_durable(w, record).unwrap();
                    }
                });
            }
        });
        log.close().unwrap();
    }

    #[test]
    fn every_peer_appends_from_several_writers() {
        let dir = tempfile::tempdir().unwrap();
        let opts = PeerOptions {
            device_file_bytes: 8 << 10,
        };
        for k in PeerKind::ALL {
            let d = dir.path().join(k.name());
            exercise(k.open(&d, &opts).unwrap(), k.name());
            assert!(d.is_dir());
        }
        let w = WalshipPeer::open(
            &dir.path().join("walship"),
            Options {
                segment_capacity: 1 << 20,
                ..Options::default()
            },
        )
        .unwrap();
        exercise(Box::new(w), "walship");
    }

    #[test]
    fn device_peer_wraps_at_the_end_of_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = DevicePeer::open(dir.path(), 4096).unwrap();
        for _ in 0..5 {
            p.append_durable(0, &[1u8; 1000]).unwrap();
        }
        assert_eq!(p.file.lock().unwrap().1, 1000);
        let len = std::fs::metadata(dir.path().join("device-peer.dat"))
            .unwrap()
            .len();
        assert_eq!(len, 4096, "the file does not grow");
    }

    #[test]
    fn peer_lists() {
        let l = |v: &[&str]| parse_peer_list(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(
            l(&["okaywal", "raft-engine", "device"]).unwrap(),
            PeerKind::ALL
        );
        assert_eq!(l(&["none"]).unwrap(), vec![]);
        assert_eq!(l(&["device", "device"]).unwrap(), vec![PeerKind::Device]);
        assert!(l(&["none", "device"]).is_err());
        assert!(l(&["sqlite"]).is_err());
    }
}
