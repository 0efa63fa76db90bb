//! A simulated disk for tests: [`SimDisk`] is the machine's disk, which outlives the
//! processes that use it; [`SimStorage`] is one process's view of it ([`SimDisk::boot`]).
//!
//! The model is the strict reading of POSIX that a power-loss bug hides behind:
//! - **Page cache.** Writes land in a file's cache; `fdatasync`/`fsync` make its bytes
//!   and length durable. A [`SimDisk::power_loss`] keeps, of every 512-byte sector written
//!   since the file's last sync, the new bytes or the old ones, each sector on its own
//!   (seeded): an unsynced write may be lost, kept, torn at sector granularity, or
//!   persisted out of order. An unsynced length change may or may not survive; bytes
//!   beyond the durable length that were not kept read as zeros.
//! - **Directory entries.** Creating, renaming or removing a name changes the directory
//!   as the running process sees it; only [`Storage::sync_dir`] makes the change durable.
//!   After a power loss each directory holds exactly its names as of its last fsync, a
//!   directory whose own name was never made durable is gone with everything in it, and a
//!   file that no durable name refers to is gone.
//! - **Processes.** [`SimDisk::crash`] ends the process (the page cache survives, as after
//!   SIGKILL); a power loss ends it too. Every handle and every view of a process that
//!   ended fails with `EIO` from then on (a thread of the dead process can change nothing),
//!   its locks are released, and the next [`boot`](SimDisk::boot) sees the disk as it is
//!   now.
//!
//! Mappings are views of the file's cache (as a shared `mmap` is of the page cache): a
//! write through any handle is seen through them at once. The cache of a file lives in a
//! fixed allocation while mapped; a mapped file cannot grow past it (the engine never
//! grows a mapped file: segments are written to full size before they are mapped).
//!
//! Everything is deterministic given the seed and the order of operations.

use std::cell::UnsafeCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsString;
use std::fmt;
use std::io;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{Create, FileKind, LockGuard, Mapped, Stat, Storage, StorageFile};

/// Bytes a power loss keeps or loses together.
pub const SECTOR: u64 = 512;

/// Device number the simulated files report.
const DEV: u64 = 0x5157;

/// What the simulated disk has seen, for reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Processes started ([`SimDisk::boot`]).
    pub boots: u64,
    /// Processes ended by [`SimDisk::crash`].
    pub crashes: u64,
    /// Power losses.
    pub power_losses: u64,
    /// `fdatasync` and `fsync` calls on files.
    pub file_syncs: u64,
    /// `fsync` calls on directories.
    pub dir_syncs: u64,
    /// Sectors written but not synced when the power went, over all power losses.
    pub unsynced_sectors: u64,
    /// Of those, the ones whose new bytes a power loss kept.
    pub kept_sectors: u64,
    /// Names created, renamed or removed but not made durable when the power went.
    pub undone_names: u64,
    /// File syncs slowed down by [`SimDisk::slow_syncs`].
    pub slowed_syncs: u64,
}

/// What one power loss did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PowerLoss {
    /// Sectors written since their file's last sync.
    pub unsynced_sectors: u64,
    /// Of those, the ones that kept their new bytes.
    pub kept_sectors: u64,
    /// Directory changes that were not durable and were undone.
    pub undone_names: u64,
}

/// The file bytes behind a cache: a fixed allocation whose address never changes, so a
/// mapping can point into it while writes land elsewhere in it.
struct Buf {
    cells: Box<[UnsafeCell<u8>]>,
}

// SAFETY: the cells are written only under the owning inode's lock, and only at
// positions no live mapped reference covers (the engine's mapping rules, `mmap.rs`);
// reads of other positions through mappings may run concurrently, as with `mmap`.
unsafe impl Sync for Buf {}
// SAFETY: as above; the allocation has no thread affinity.
unsafe impl Send for Buf {}

impl Buf {
    fn new(len: usize) -> Arc<Buf> {
        Arc::new(Buf {
            cells: (0..len).map(|_| UnsafeCell::new(0)).collect(),
        })
    }

    fn cap(&self) -> usize {
        self.cells.len()
    }

    fn ptr(&self) -> *mut u8 {
        UnsafeCell::raw_get(self.cells.as_ptr())
    }

    /// Copies `src` to `at` (in bounds: checked by the caller).
    fn write(&self, at: usize, src: &[u8]) {
        debug_assert!(at + src.len() <= self.cap());
        // SAFETY: in bounds (callers grow the buffer first); the caller holds the inode's
        // lock, so no other write races; readers through mappings never look at bytes
        // being written (see the `Sync` impl).
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr().add(at), src.len()) }
    }

    /// Copies `dst.len()` bytes from `at` (in bounds: checked by the caller).
    fn read(&self, at: usize, dst: &mut [u8]) {
        debug_assert!(at + dst.len() <= self.cap());
        // SAFETY: in bounds; the caller holds the inode's lock, so no write races.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr().add(at), dst.as_mut_ptr(), dst.len()) }
    }

    fn fill_zero(&self, at: usize, len: usize) {
        debug_assert!(at + len <= self.cap());
        // SAFETY: as for `write`.
        unsafe { std::ptr::write_bytes(self.ptr().add(at), 0, len) }
    }
}

/// A file's contents: what the running processes see, and what survives a power loss.
struct Data {
    cache: Arc<Buf>,
    len: u64,
    durable: Vec<u8>,
    /// Sectors written (or cut by a length change) since the last sync.
    dirty: BTreeSet<u64>,
}

struct Inode {
    ino: u64,
    data: Mutex<Data>,
}

impl Inode {
    fn new(ino: u64, bytes: Vec<u8>) -> Arc<Inode> {
        let cache = Buf::new(bytes.len());
        cache.write(0, &bytes);
        Arc::new(Inode {
            ino,
            data: Mutex::new(Data {
                cache,
                len: bytes.len() as u64,
                durable: bytes,
                dirty: BTreeSet::new(),
            }),
        })
    }

    fn data(&self) -> MutexGuard<'_, Data> {
        crate::sync::lock(&self.data)
    }
}

impl Data {
    /// Makes room for `len` bytes; a mapped cache cannot move.
    fn reserve(&mut self, len: u64) -> io::Result<()> {
        let len = usize::try_from(len).map_err(|_| too_big())?;
        if len <= self.cache.cap() {
            return Ok(());
        }
        if Arc::strong_count(&self.cache) > 1 {
            return Err(io::Error::other(
                "simulated storage: a mapped file cannot grow past its allocation",
            ));
        }
        let cap = len.max(self.cache.cap() * 2).next_multiple_of(4096);
        let bigger = Buf::new(cap);
        let mut old = vec![0u8; self.len as usize];
        self.cache.read(0, &mut old);
        bigger.write(0, &old);
        self.cache = bigger;
        Ok(())
    }

    fn mark(&mut self, from: u64, to: u64) {
        if to > from {
            self.dirty.extend(from / SECTOR..to.div_ceil(SECTOR));
        }
    }

    fn write(&mut self, offset: u64, bufs: &[&[u8]]) -> io::Result<()> {
        let total: u64 = bufs.iter().map(|b| b.len() as u64).sum();
        let end = offset.checked_add(total).ok_or_else(too_big)?;
        self.reserve(end)?;
        if offset > self.len {
            self.cache
                .fill_zero(self.len as usize, (offset - self.len) as usize);
            self.mark(self.len, offset);
        }
        let mut at = offset as usize;
        for b in bufs {
            self.cache.write(at, b);
            at += b.len();
        }
        self.mark(offset, end);
        self.len = self.len.max(end);
        Ok(())
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.reserve(len)?;
        if len > self.len {
            self.cache
                .fill_zero(self.len as usize, (len - self.len) as usize);
            self.mark(self.len, len);
        } else {
            // Keep the cut bytes zero, so growing again reads zeros.
            self.cache
                .fill_zero(len as usize, (self.len - len) as usize);
            self.mark(len, self.len);
        }
        self.len = len;
        Ok(())
    }

    fn sync(&mut self) {
        let len = self.len as usize;
        self.durable.resize(len, 0);
        for s in std::mem::take(&mut self.dirty) {
            let from = (s * SECTOR) as usize;
            if from >= len {
                continue;
            }
            let to = (from + SECTOR as usize).min(len);
            let mut bytes = vec![0u8; to - from];
            self.cache.read(from, &mut bytes);
            self.durable[from..to].copy_from_slice(&bytes);
        }
    }

    /// What a power loss leaves of this file.
    fn after_power_loss(&self, rng: &mut SimRng, report: &mut PowerLoss) -> Vec<u8> {
        let durable_len = self.durable.len() as u64;
        let len = if self.len != durable_len && rng.coin() {
            self.len
        } else {
            durable_len
        };
        let mut out = self.durable.clone();
        out.resize(len as usize, 0);
        for &s in &self.dirty {
            let from = s * SECTOR;
            if from >= len {
                continue;
            }
            report.unsynced_sectors += 1;
            if rng.coin() {
                report.kept_sectors += 1;
                let to = (from + SECTOR).min(len).min(self.len);
                if to > from {
                    self.cache
                        .read(from as usize, &mut out[from as usize..to as usize]);
                }
            }
        }
        out
    }
}

fn too_big() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, "file offset out of range")
}

fn dead() -> io::Error {
    io::Error::other("simulated storage: the process that opened this ended (crash or power loss)")
}

fn not_found() -> io::Error {
    io::Error::from(io::ErrorKind::NotFound)
}

/// What a directory entry names.
#[derive(Clone)]
enum Node {
    File(Arc<Inode>),
    Dir,
}

impl Node {
    fn same(&self, other: &Node) -> bool {
        match (self, other) {
            (Node::File(a), Node::File(b)) => Arc::ptr_eq(a, b),
            (Node::Dir, Node::Dir) => true,
            _ => false,
        }
    }
}

#[derive(Clone)]
struct Dir {
    mode: u32,
    ino: u64,
    /// Names as processes see them.
    entries: BTreeMap<OsString, Node>,
    /// Names as of the directory's last fsync.
    durable: BTreeMap<OsString, Node>,
}

impl Dir {
    fn new(mode: u32, ino: u64) -> Dir {
        Dir {
            mode,
            ino,
            entries: BTreeMap::new(),
            durable: BTreeMap::new(),
        }
    }
}

/// A seeded generator (splitmix64: small, and the same everywhere): what the simulated
/// disk decides a power loss with, and what simulations built on it draw from.
///
/// ```
/// let mut a = walship_engine::storage::SimRng::new(7);
/// let mut b = walship_engine::storage::SimRng::new(7);
/// assert_eq!(a.next_u64(), b.next_u64());
/// assert!(a.below(10) < 10);
/// ```
#[derive(Debug, Clone)]
pub struct SimRng(u64);

impl SimRng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> SimRng {
        SimRng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`0` for `n == 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// True once in `n` times on average.
    pub fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }

    /// Uniform in `lo..=hi`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo) + 1)
    }

    /// `n` random bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }

    fn coin(&mut self) -> bool {
        self.next_u64() & 1 == 1
    }
}

struct World {
    /// The running process; views and handles of earlier ones are dead.
    generation: u64,
    rng: SimRng,
    next_ino: u64,
    /// Every directory, by path; `/` always exists.
    dirs: BTreeMap<PathBuf, Dir>,
    locks: BTreeSet<PathBuf>,
    stats: SimStats,
    /// Real-time delays of file syncs, by a part of the path a file was opened under.
    slow_syncs: Vec<(String, std::time::Duration)>,
    /// A real-time delay of every file write, from now on ([`SimDisk::slow_writes`]).
    write_delay: std::time::Duration,
    /// Operations left before the power goes by itself ([`SimDisk::power_loss_after`]).
    cut_after: Option<u64>,
}

impl World {
    fn ino(&mut self) -> u64 {
        self.next_ino += 1;
        self.next_ino
    }

    fn split(path: &Path) -> io::Result<(PathBuf, OsString)> {
        let name = path
            .file_name()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path names no file"))?;
        let parent = path
            .parent()
            .map_or_else(|| PathBuf::from("/"), Path::to_path_buf);
        let parent = if parent.as_os_str().is_empty() {
            PathBuf::from("/")
        } else {
            parent
        };
        Ok((parent, name.to_owned()))
    }

    fn lookup(&self, path: &Path) -> io::Result<Node> {
        if self.dirs.contains_key(path) {
            return Ok(Node::Dir);
        }
        let (parent, name) = World::split(path)?;
        let dir = self.dirs.get(&parent).ok_or_else(not_found)?;
        dir.entries.get(&name).cloned().ok_or_else(not_found)
    }

    fn dir_mut(&mut self, path: &Path) -> io::Result<&mut Dir> {
        self.dirs.get_mut(path).ok_or_else(not_found)
    }

    /// Rebuilds the tree from the durable names down from `/`: what no durable name
    /// reaches is gone, and every file keeps what [`Data::after_power_loss`] chooses.
    /// Ends every process and keeps what a power loss keeps ([`SimDisk::power_loss`]).
    fn cut_power(&mut self) -> PowerLoss {
        self.generation += 1;
        self.locks.clear();
        self.cut_after = None;
        let report = self.power_loss();
        self.stats.power_losses += 1;
        self.stats.unsynced_sectors += report.unsynced_sectors;
        self.stats.kept_sectors += report.kept_sectors;
        self.stats.undone_names += report.undone_names;
        report
    }

    /// Counts one operation of the process `generation`; `false` once the power is gone.
    fn tick(&mut self, generation: u64) -> bool {
        if self.generation != generation {
            return false;
        }
        match self.cut_after {
            Some(0) => {
                self.cut_power();
                false
            }
            Some(n) => {
                self.cut_after = Some(n - 1);
                true
            }
            None => true,
        }
    }

    fn power_loss(&mut self) -> PowerLoss {
        let mut report = PowerLoss::default();
        let mut rebuilt: HashMap<u64, Arc<Inode>> = HashMap::new();
        let mut dirs = BTreeMap::new();
        let mut stack = vec![PathBuf::from("/")];
        while let Some(path) = stack.pop() {
            let Some(old) = self.dirs.get(&path) else {
                continue;
            };
            let changed = old.entries.len() != old.durable.len()
                || old
                    .entries
                    .iter()
                    .any(|(n, e)| !old.durable.get(n).is_some_and(|d| d.same(e)))
                || old.durable.keys().any(|n| !old.entries.contains_key(n));
            if changed {
                let mut names: BTreeSet<&OsString> = old.entries.keys().collect();
                names.extend(old.durable.keys());
                report.undone_names += names
                    .into_iter()
                    .filter(|n| match (old.entries.get(*n), old.durable.get(*n)) {
                        (Some(a), Some(b)) => !a.same(b),
                        _ => true,
                    })
                    .count() as u64;
            }
            let mut dir = Dir::new(old.mode, old.ino);
            for (name, node) in &old.durable {
                let node = match node {
                    Node::Dir => {
                        stack.push(path.join(name));
                        Node::Dir
                    }
                    Node::File(inode) => {
                        let fresh = match rebuilt.get(&inode.ino) {
                            Some(f) => Arc::clone(f),
                            None => {
                                let bytes =
                                    inode.data().after_power_loss(&mut self.rng, &mut report);
                                let f = Inode::new(inode.ino, bytes);
                                rebuilt.insert(inode.ino, Arc::clone(&f));
                                f
                            }
                        };
                        Node::File(fresh)
                    }
                };
                dir.entries.insert(name.clone(), node.clone());
                dir.durable.insert(name.clone(), node);
            }
            dirs.insert(path, dir);
        }
        self.dirs = dirs;
        report
    }
}

struct DiskInner {
    world: Mutex<World>,
}

impl DiskInner {
    fn world(&self) -> MutexGuard<'_, World> {
        crate::sync::lock(&self.world)
    }
}

/// A simulated disk shared by the processes that boot on it, one at a time.
///
/// ```
/// use std::path::Path;
/// use walship_engine::storage::{Create, SimDisk, Storage};
///
/// let disk = SimDisk::new(1);
/// let fs = disk.boot();
/// let f = fs.open(Path::new("/a"), true, Create::New)?;
/// fs.sync_dir(Path::new("/"))?;
/// f.write_all_at(&[b"acknowledged"], 0)?;
/// f.sync_data()?;
/// f.write_all_at(&[b"in the cache only"], 4096)?;
/// disk.power_loss();
/// assert!(f.sync_data().is_err(), "the process that held it is gone");
/// let f = disk.boot().open(Path::new("/a"), false, Create::No)?;
/// let mut buf = [0u8; 12];
/// f.read_at(&mut buf, 0)?;
/// assert_eq!(&buf, b"acknowledged");
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone)]
pub struct SimDisk {
    inner: Arc<DiskInner>,
}

impl fmt::Debug for SimDisk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimDisk")
            .field("stats", &self.stats())
            .finish()
    }
}

impl SimDisk {
    /// An empty disk (only `/`); `seed` decides what power losses keep.
    pub fn new(seed: u64) -> SimDisk {
        let mut dirs = BTreeMap::new();
        dirs.insert(PathBuf::from("/"), Dir::new(0o755, 1));
        SimDisk {
            inner: Arc::new(DiskInner {
                world: Mutex::new(World {
                    generation: 0,
                    rng: SimRng::new(seed),
                    next_ino: 1,
                    dirs,
                    locks: BTreeSet::new(),
                    stats: SimStats::default(),
                    slow_syncs: Vec::new(),
                    write_delay: std::time::Duration::ZERO,
                    cut_after: None,
                }),
            }),
        }
    }

    /// Starts a process on the disk: a view of it as it is now. Views of earlier
    /// processes keep working until [`crash`](SimDisk::crash) or
    /// [`power_loss`](SimDisk::power_loss) ends them.
    pub fn boot(&self) -> Arc<SimStorage> {
        let mut w = self.inner.world();
        w.stats.boots += 1;
        Arc::new(SimStorage {
            disk: Arc::clone(&self.inner),
            generation: w.generation,
        })
    }

    /// Ends every process using the disk, as SIGKILL would: the page cache (every write,
    /// synced or not, and every name change) survives; handles and views of the ended
    /// processes fail from now on; their locks are released.
    pub fn crash(&self) {
        let mut w = self.inner.world();
        w.generation += 1;
        w.locks.clear();
        w.stats.crashes += 1;
    }

    /// Cuts the power: every process ends (as for [`crash`](SimDisk::crash)) and the disk
    /// keeps only what was durable, plus, sector by sector, a seeded choice of what was
    /// written but not synced.
    pub fn power_loss(&self) -> PowerLoss {
        self.inner.world().cut_power()
    }

    /// Cuts the power by itself once `ops` more storage operations have run (every call
    /// on a [`SimStorage`] or one of its files counts, reads too): the operation after
    /// them fails as on a dead process, and the disk is as after
    /// [`power_loss`](SimDisk::power_loss). Stepping `ops` from zero up puts a power
    /// loss between every two operations of the code under test.
    pub fn power_loss_after(&self, ops: u64) {
        self.inner.world().cut_after = Some(ops);
    }

    /// Whether a [`power_loss_after`](SimDisk::power_loss_after) cut has happened (and
    /// is no longer pending).
    pub fn power_cut_pending(&self) -> bool {
        self.inner.world().cut_after.is_some()
    }

    /// Makes every `fdatasync`/`fsync` of a file opened under a path containing `part`
    /// take `delay` longer, in real time (for tests of threaded code that a slow disk
    /// must not stall; the wait holds no lock of the disk).
    pub fn slow_syncs(&self, part: &str, delay: std::time::Duration) {
        self.inner.world().slow_syncs.push((part.to_owned(), delay));
    }

    /// Makes every file write from now on take `delay` longer, in real time (zero ends
    /// it): for tests of threaded code that must meet a writer that cannot keep up, such
    /// as appenders waiting for room. The wait holds no lock of the disk.
    pub fn slow_writes(&self, delay: std::time::Duration) {
        self.inner.world().write_delay = delay;
    }

    /// What the disk has seen so far.
    pub fn stats(&self) -> SimStats {
        self.inner.world().stats
    }

    /// The bytes of file `path` as processes see them now (for test assertions).
    ///
    /// # Errors
    /// `NotFound`, or `InvalidInput` for a directory.
    pub fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let w = self.inner.world();
        match w.lookup(path)? {
            Node::File(inode) => {
                let d = inode.data();
                let mut out = vec![0u8; d.len as usize];
                d.cache.read(0, &mut out);
                Ok(out)
            }
            Node::Dir => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "is a directory",
            )),
        }
    }
}

/// One process's view of a [`SimDisk`]; a [`Storage`].
pub struct SimStorage {
    disk: Arc<DiskInner>,
    generation: u64,
}

impl fmt::Debug for SimStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimStorage")
            .field("generation", &self.generation)
            .finish()
    }
}

impl SimStorage {
    /// The world, if this view's process is still running.
    fn world(&self) -> io::Result<MutexGuard<'_, World>> {
        let mut w = self.disk.world();
        if !w.tick(self.generation) {
            return Err(dead());
        }
        Ok(w)
    }

    fn rename_inner(&self, from: &Path, to: &Path, replace: bool) -> io::Result<()> {
        let mut w = self.world()?;
        let node = w.lookup(from)?;
        if matches!(node, Node::Dir) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "simulated storage renames files only",
            ));
        }
        match w.lookup(to) {
            Ok(Node::Dir) => return Err(io::Error::from(io::ErrorKind::IsADirectory)),
            Ok(Node::File(_)) if !replace => {
                return Err(io::Error::from(io::ErrorKind::AlreadyExists))
            }
            Ok(Node::File(_)) | Err(_) => {}
        }
        let (tp, tn) = World::split(to)?;
        w.dir_mut(&tp)?;
        let (fp, f_name) = World::split(from)?;
        w.dir_mut(&fp)?.entries.remove(&f_name);
        w.dir_mut(&tp)?.entries.insert(tn, node);
        Ok(())
    }
}

impl Storage for SimStorage {
    fn name(&self) -> &'static str {
        "sim"
    }

    fn create_dir(&self, path: &Path, mode: u32) -> io::Result<()> {
        let mut w = self.world()?;
        if w.lookup(path).is_ok() {
            return Err(io::Error::from(io::ErrorKind::AlreadyExists));
        }
        let (parent, name) = World::split(path)?;
        w.dir_mut(&parent)?.entries.insert(name, Node::Dir);
        let ino = w.ino();
        w.dirs
            .insert(path.to_path_buf(), Dir::new(mode & 0o7777, ino));
        Ok(())
    }

    fn stat(&self, path: &Path) -> io::Result<Stat> {
        let w = self.world()?;
        match w.lookup(path)? {
            Node::Dir => {
                let d = w.dirs.get(path).ok_or_else(not_found)?;
                Ok(Stat {
                    kind: FileKind::Dir,
                    len: 4096,
                    mode: d.mode,
                    id: (DEV, d.ino),
                })
            }
            Node::File(inode) => Ok(file_stat(&inode)),
        }
    }

    fn set_mode(&self, path: &Path, mode: u32) -> io::Result<()> {
        let mut w = self.world()?;
        match w.lookup(path)? {
            Node::Dir => w.dir_mut(path)?.mode = mode & 0o7777,
            // Files are always 0600 here; the engine never changes a file's mode.
            Node::File(_) => {}
        }
        Ok(())
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<OsString>> {
        let w = self.world()?;
        let d = w.dirs.get(dir).ok_or_else(not_found)?;
        Ok(d.entries.keys().cloned().collect())
    }

    fn open(&self, path: &Path, write: bool, create: Create) -> io::Result<Arc<dyn StorageFile>> {
        let mut w = self.world()?;
        let existing = match w.lookup(path) {
            Ok(Node::Dir) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "is not a regular file",
                ))
            }
            Ok(Node::File(inode)) => Some(inode),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let inode = match (existing, create) {
            (Some(_), Create::New) => return Err(io::Error::from(io::ErrorKind::AlreadyExists)),
            (Some(inode), Create::Truncate) => {
                inode.data().set_len(0)?;
                inode
            }
            (Some(inode), _) => inode,
            (None, Create::No) => return Err(not_found()),
            (None, _) => {
                let (parent, name) = World::split(path)?;
                w.dir_mut(&parent)?;
                let ino = w.ino();
                let inode = Inode::new(ino, Vec::new());
                w.dir_mut(&parent)?
                    .entries
                    .insert(name, Node::File(Arc::clone(&inode)));
                inode
            }
        };
        let shown = path.to_string_lossy();
        let sync_delay = w
            .slow_syncs
            .iter()
            .filter(|(part, _)| shown.contains(part.as_str()))
            .map(|&(_, d)| d)
            .sum();
        Ok(Arc::new(SimFile {
            disk: Arc::clone(&self.disk),
            generation: self.generation,
            inode,
            write: write || create != Create::No,
            sync_delay,
        }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.rename_inner(from, to, true)
    }

    fn rename_noreplace(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.rename_inner(from, to, false)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut w = self.world()?;
        if let Node::Dir = w.lookup(path)? {
            return Err(io::Error::from(io::ErrorKind::IsADirectory));
        }
        let (parent, name) = World::split(path)?;
        w.dir_mut(&parent)?.entries.remove(&name);
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut w = self.world()?;
        w.stats.dir_syncs += 1;
        let d = w.dir_mut(dir)?;
        d.durable = d.entries.clone();
        Ok(())
    }

    fn lock(&self, path: &Path) -> io::Result<Option<LockGuard>> {
        drop(self.open(path, true, Create::Keep)?);
        let mut w = self.world()?;
        if !w.locks.insert(path.to_path_buf()) {
            return Ok(None);
        }
        Ok(Some(LockGuard::new(SimLock {
            disk: Arc::clone(&self.disk),
            generation: self.generation,
            path: path.to_path_buf(),
        })))
    }
}

fn file_stat(inode: &Inode) -> Stat {
    Stat {
        kind: FileKind::File,
        len: inode.data().len,
        mode: crate::layout::FILE_MODE,
        id: (DEV, inode.ino),
    }
}

struct SimLock {
    disk: Arc<DiskInner>,
    generation: u64,
    path: PathBuf,
}

impl Drop for SimLock {
    fn drop(&mut self) {
        let mut w = self.disk.world();
        // A lock of an ended process was released when it ended; a new process may
        // hold one under the same name now.
        if w.generation == self.generation {
            w.locks.remove(&self.path);
        }
    }
}

/// An open simulated file.
struct SimFile {
    disk: Arc<DiskInner>,
    generation: u64,
    inode: Arc<Inode>,
    write: bool,
    /// Added to every sync ([`SimDisk::slow_syncs`]).
    sync_delay: std::time::Duration,
}

impl fmt::Debug for SimFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimFile")
            .field("ino", &self.inode.ino)
            .finish()
    }
}

impl SimFile {
    /// The file's data, if its process still runs. The world lock is held only to check,
    /// then the inode's lock is taken: a process that ends after the check has its
    /// operation ordered before the end.
    fn data(&self) -> io::Result<MutexGuard<'_, Data>> {
        let mut w = self.disk.world();
        if !w.tick(self.generation) {
            return Err(dead());
        }
        let d = self.inode.data();
        drop(w);
        Ok(d)
    }

    fn writable(&self) -> io::Result<()> {
        if self.write {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(libc::EBADF))
        }
    }

    fn sync(&self) -> io::Result<()> {
        if !self.sync_delay.is_zero() {
            std::thread::sleep(self.sync_delay);
            self.disk.world().stats.slowed_syncs += 1;
        }
        let mut d = self.data()?;
        d.sync();
        drop(d);
        self.disk.world().stats.file_syncs += 1;
        Ok(())
    }
}

impl StorageFile for SimFile {
    fn write_all_at(&self, bufs: &[&[u8]], offset: u64) -> io::Result<()> {
        self.writable()?;
        let delay = self.disk.world().write_delay;
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        self.data()?.write(offset, bufs)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let d = self.data()?;
        if offset >= d.len {
            return Ok(0);
        }
        let n = ((d.len - offset) as usize).min(buf.len());
        d.cache.read(offset as usize, &mut buf[..n]);
        Ok(n)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.sync()
    }

    fn sync_all(&self) -> io::Result<()> {
        self.sync()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.writable()?;
        self.data()?.set_len(len)
    }

    fn stat(&self) -> io::Result<Stat> {
        drop(self.data()?);
        Ok(file_stat(&self.inode))
    }

    fn map(&self, len: usize) -> io::Result<Box<dyn Mapped>> {
        let d = self.data()?;
        if len as u64 > d.len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "mapping past the end of the file",
            ));
        }
        Ok(Box::new(SimMap {
            buf: Arc::clone(&d.cache),
            len,
        }))
    }

    fn raw_fd(&self) -> Option<RawFd> {
        None
    }
}

/// A mapping: the file's cache allocation, pinned.
struct SimMap {
    buf: Arc<Buf>,
    len: usize,
}

impl fmt::Debug for SimMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimMap").field("len", &self.len).finish()
    }
}

// SAFETY: the pointer is the start of an allocation of at least `len` bytes (checked
// when mapped) that this value keeps alive and that never moves (a mapped cache is never
// reallocated, `Data::reserve`); its bytes change only through writes to the file.
unsafe impl Mapped for SimMap {
    fn as_ptr(&self) -> *const u8 {
        self.buf.ptr()
    }
    fn len(&self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> &Path {
        Path::new(s)
    }

    fn read_all(fs: &dyn Storage, path: &str) -> Vec<u8> {
        let f = fs.open(p(path), false, Create::No).unwrap();
        crate::storage::read_bounded(&*f, 1 << 20).unwrap()
    }

    #[test]
    fn synced_bytes_and_names_survive_power_loss_and_the_rest_may_not() {
        let disk = SimDisk::new(3);
        let fs = disk.boot();
        fs.create_dir(p("/d"), 0o700).unwrap();
        fs.sync_dir(p("/")).unwrap();
        let a = fs.open(p("/d/a"), true, Create::New).unwrap();
        a.write_all_at(&[&[1u8; 1024]], 0).unwrap();
        a.sync_data().unwrap();
        fs.sync_dir(p("/d")).unwrap();
        a.write_all_at(&[&[2u8; 4096]], 1024).unwrap();
        let b = fs.open(p("/d/b"), true, Create::New).unwrap();
        b.write_all_at(&[b"never named durably"], 0).unwrap();
        b.sync_data().unwrap();
        let report = disk.power_loss();
        assert!(report.undone_names >= 1);
        let fs = disk.boot();
        assert_eq!(fs.list_dir(p("/d")).unwrap(), vec![OsString::from("a")]);
        let bytes = read_all(&*fs, "/d/a");
        assert_eq!(&bytes[..1024], &[1u8; 1024][..]);
        assert!(bytes.len() == 1024 || bytes.len() == 5120);
        assert!(
            a.write_all_at(&[b"x"], 0).is_err(),
            "a dead process writes nothing"
        );
    }

    #[test]
    fn power_loss_keeps_or_drops_each_sector_and_every_seed_replays() {
        let outcome = |seed| {
            let disk = SimDisk::new(seed);
            let fs = disk.boot();
            let f = fs.open(p("/f"), true, Create::New).unwrap();
            fs.sync_dir(p("/")).unwrap();
            f.write_all_at(&[&vec![0u8; 64 * 512]], 0).unwrap();
            f.sync_data().unwrap();
            f.write_all_at(&[&vec![7u8; 64 * 512]], 0).unwrap();
            let r = disk.power_loss();
            let bytes = read_all(&*disk.boot(), "/f");
            let kept: Vec<bool> = bytes.chunks(512).map(|s| s[0] == 7).collect();
            for s in bytes.chunks(512) {
                assert!(
                    s.iter().all(|&b| b == s[0]),
                    "a sector is kept or lost whole"
                );
            }
            assert_eq!(r.unsynced_sectors, 64);
            assert_eq!(r.kept_sectors, kept.iter().filter(|k| **k).count() as u64);
            kept
        };
        let a = outcome(11);
        assert_eq!(a, outcome(11), "the same seed keeps the same sectors");
        assert!(a.iter().any(|k| *k) && a.iter().any(|k| !*k), "{a:?}");
        assert_ne!(a, outcome(12));
    }

    #[test]
    fn a_crash_keeps_the_page_cache_and_ends_the_process() {
        let disk = SimDisk::new(1);
        let fs = disk.boot();
        let f = fs.open(p("/f"), true, Create::New).unwrap();
        f.write_all_at(&[b"cached"], 0).unwrap();
        let lock = fs.lock(p("/LOCK")).unwrap().expect("free");
        assert!(fs.lock(p("/LOCK")).unwrap().is_none(), "exclusive");
        disk.crash();
        assert!(f.read_at(&mut [0u8; 1], 0).is_err());
        assert!(fs.stat(p("/f")).is_err());
        let fs = disk.boot();
        assert_eq!(read_all(&*fs, "/f"), b"cached");
        let again = fs.lock(p("/LOCK")).unwrap();
        assert!(again.is_some(), "an ended process's lock is released");
        drop(lock);
        assert!(
            fs.lock(p("/LOCK")).unwrap().is_none(),
            "dropping a dead lock frees nothing"
        );
    }

    #[test]
    fn renames_and_unlinks_are_undone_unless_the_directory_was_synced() {
        let disk = SimDisk::new(5);
        let fs = disk.boot();
        for name in ["/old", "/gone"] {
            let f = fs.open(p(name), true, Create::New).unwrap();
            f.write_all_at(&[name.as_bytes()], 0).unwrap();
            f.sync_all().unwrap();
        }
        fs.sync_dir(p("/")).unwrap();
        let t = fs.open(p("/new.tmp"), true, Create::New).unwrap();
        t.write_all_at(&[b"replacement"], 0).unwrap();
        t.sync_all().unwrap();
        fs.rename(p("/new.tmp"), p("/old")).unwrap();
        fs.remove_file(p("/gone")).unwrap();
        assert_eq!(
            fs.rename_noreplace(p("/old"), p("/old"))
                .unwrap_err()
                .kind(),
            io::ErrorKind::AlreadyExists
        );
        assert_eq!(read_all(&*fs, "/old"), b"replacement");
        disk.power_loss();
        let fs = disk.boot();
        assert_eq!(read_all(&*fs, "/old"), b"/old");
        assert_eq!(read_all(&*fs, "/gone"), b"/gone");
        assert!(fs.stat(p("/new.tmp")).is_err());
        // The same, made durable.
        let t = fs.open(p("/new.tmp"), true, Create::New).unwrap();
        t.write_all_at(&[b"replacement"], 0).unwrap();
        t.sync_all().unwrap();
        fs.rename(p("/new.tmp"), p("/old")).unwrap();
        fs.remove_file(p("/gone")).unwrap();
        fs.sync_dir(p("/")).unwrap();
        disk.power_loss();
        let fs = disk.boot();
        assert_eq!(read_all(&*fs, "/old"), b"replacement");
        assert!(fs.stat(p("/gone")).is_err());
    }

    #[test]
    fn a_directory_never_named_durably_is_lost_with_its_files() {
        let disk = SimDisk::new(9);
        let fs = disk.boot();
        fs.create_dir(p("/log"), 0o700).unwrap();
        let f = fs.open(p("/log/seg"), true, Create::New).unwrap();
        f.write_all_at(&[b"data"], 0).unwrap();
        f.sync_all().unwrap();
        fs.sync_dir(p("/log")).unwrap();
        disk.power_loss();
        let fs = disk.boot();
        assert_eq!(
            fs.stat(p("/log")).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        assert!(fs.list_dir(p("/")).unwrap().is_empty());
    }

    #[test]
    fn mappings_see_writes_and_pin_their_allocation() {
        let disk = SimDisk::new(2);
        let fs = disk.boot();
        let f = fs.open(p("/seg"), true, Create::New).unwrap();
        f.set_len(8192).unwrap();
        let m = f.map(8192).unwrap();
        f.write_all_at(&[b"hello"], 100).unwrap();
        // SAFETY: in bounds of the mapping; nothing writes these bytes meanwhile.
        let seen = unsafe { std::slice::from_raw_parts(m.as_ptr().add(100), 5) };
        assert_eq!(seen, b"hello");
        assert!(
            f.write_all_at(&[&[0u8; 1]], 1 << 20).is_err(),
            "a mapped file cannot move"
        );
        assert!(f.map(8193).is_err());
        drop(m);
        f.write_all_at(&[&[1u8; 1]], 1 << 20).unwrap();
        assert_eq!(f.stat().unwrap().len, (1 << 20) + 1);
        let ro = fs.open(p("/seg"), false, Create::No).unwrap();
        assert!(ro.write_all_at(&[b"x"], 0).is_err(), "read-only handle");
        assert!(ro.set_len(0).is_err());
    }

    #[test]
    fn open_refuses_what_the_real_one_refuses() {
        let disk = SimDisk::new(4);
        let fs = disk.boot();
        fs.create_dir(p("/d"), 0o700).unwrap();
        assert_eq!(
            fs.open(p("/d"), false, Create::No).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        assert_eq!(
            fs.open(p("/missing"), false, Create::No)
                .unwrap_err()
                .kind(),
            io::ErrorKind::NotFound
        );
        assert_eq!(
            fs.open(p("/nodir/x"), true, Create::New)
                .unwrap_err()
                .kind(),
            io::ErrorKind::NotFound
        );
        fs.open(p("/d/x"), true, Create::New).unwrap();
        assert_eq!(
            fs.open(p("/d/x"), true, Create::New).unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
        assert_eq!(fs.stat(p("/d")).unwrap().mode, 0o700);
        fs.set_mode(p("/d"), 0o755).unwrap();
        assert_eq!(fs.stat(p("/d")).unwrap().kind, FileKind::Dir);
        assert_eq!(fs.stat(p("/d")).unwrap().mode, 0o755);
    }
}
