//! Snapshot files: the key space as of one log position, so the log before it can be
//! recycled and a restart replays only what came after.
//!
//! A snapshot directory holds `snap-<lsn, 16 hex digits>.kv` files, each written whole to
//! a `.tmp` file, fsynced, renamed into place and the directory fsynced: a crash leaves
//! either the old set or the new one, never a partial file under a snapshot's name.
//! Leftover `.tmp` files are removed. What a file holds, all integers little-endian:
//!
//! | bytes | field |
//! | --- | --- |
//! | 8 | magic `WSKVSNAP` |
//! | 4 | format version (1) |
//! | 8 | LSN: the state is the log's up to here (the end of the last record applied) |
//! | 8 | the node's HLC when it was taken (raw) |
//! | 8 | keys expired before it (`INFO`'s `expired_keys`) |
//! | 8 | entry count |
//! | 2 + n | the node that wrote it (length, UTF-8) |
//! | per entry | key length (4), key, value length (4), value, expiry flag (1) and ms (8), HLC of the write (8) |
//! | 4 | CRC32C of every byte before it |
//!
//! Reading trusts nothing: every length is bounded ([`MAX_FIELD`]) and checked against
//! the bytes the file has left before anything is allocated, entries must come in the
//! key space's order (no key twice), the name's LSN must be the header's, and the CRC
//! covers the whole file. A file that fails any check is refused, naming the file, the
//! offset and the reason; the key space is only built from one that passes.

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use walship_engine::Lsn;

use crate::hlc::Timestamp;
use crate::store::{Entry, Store};

const MAGIC: &[u8; 8] = b"WSKVSNAP";
const VERSION: u32 = 1;
/// The fixed part of the header, before the origin's bytes.
const HEADER_LEN: u64 = 8 + 4 + 8 + 8 + 8 + 8 + 2;
/// The smallest entry: empty key and value.
const MIN_ENTRY: u64 = 4 + 4 + 1 + 8 + 8;
const TRAILER_LEN: u64 = 4;
/// The longest key or value a snapshot may hold: Redis's `proto-max-bulk-len` default.
pub const MAX_FIELD: u64 = 512 << 20;
const PREFIX: &str = "snap-";
const SUFFIX: &str = ".kv";

/// Why a snapshot could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The file system refused.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The file is not a whole, valid snapshot.
    #[error("snapshot {} is invalid at byte {offset}: {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Where reading stopped.
        offset: u64,
        /// What was wrong.
        reason: String,
    },
}

/// What a snapshot holds besides the entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    /// The state is the log's up to here.
    pub lsn: Lsn,
    /// The writing node's HLC.
    pub clock: Timestamp,
    /// The node that wrote it.
    pub origin: String,
}

/// A snapshot read back.
#[derive(Debug)]
pub struct Loaded {
    /// Its header.
    pub meta: Meta,
    /// The key space it holds (its position is `meta.lsn`).
    pub store: Store,
    /// The file.
    pub path: PathBuf,
}

/// A directory of snapshots (see the [module docs](self)).
#[derive(Debug, Clone)]
pub struct SnapshotDir {
    dir: PathBuf,
}

impl SnapshotDir {
    /// The directory `dir`, created (mode 0700) if missing.
    ///
    /// # Errors
    /// [`SnapshotError::Io`] if it cannot be created.
    pub fn open(dir: impl Into<PathBuf>) -> Result<SnapshotDir, SnapshotError> {
        let dir = dir.into();
        let mut b = fs::DirBuilder::new();
        b.recursive(true);
        std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
        b.create(&dir).map_err(|source| SnapshotError::Io {
            what: "create snapshot directory",
            path: dir.clone(),
            source,
        })?;
        Ok(SnapshotDir { dir })
    }

    /// Where the snapshots are.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn io(&self, what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> SnapshotError {
        let path = path.to_path_buf();
        move |source| SnapshotError::Io { what, path, source }
    }

    /// The snapshots present, by LSN, newest first.
    ///
    /// # Errors
    /// [`SnapshotError::Io`] if the directory cannot be listed.
    pub fn list(&self) -> Result<Vec<(Lsn, PathBuf)>, SnapshotError> {
        let mut out = Vec::new();
        let rd = fs::read_dir(&self.dir).map_err(self.io("list", &self.dir))?;
        for e in rd {
            let e = e.map_err(self.io("list", &self.dir))?;
            if let Some(lsn) = e.file_name().to_str().and_then(parse_name) {
                out.push((lsn, e.path()));
            }
        }
        out.sort_by_key(|e| std::cmp::Reverse(e.0));
        Ok(out)
    }

    /// Writes `store` (whose position is the snapshot's LSN) to a temporary file and
    /// makes it durable; [`Pending::install`] then puts it in place.
    ///
    /// # Errors
    /// [`SnapshotError::Io`]; the temporary file is removed.
    pub fn write(
        &self,
        store: &Store,
        clock: Timestamp,
        origin: &str,
    ) -> Result<Pending, SnapshotError> {
        let lsn = store.applied();
        let tmp = self.dir.join(format!("{PREFIX}{:016x}.tmp", lsn.get()));
        let result = write_file(&tmp, store, clock, origin);
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        Ok(Pending {
            dir: self.clone(),
            tmp,
            lsn,
        })
    }

    /// The newest valid snapshot at or before `max`. Invalid files are skipped with a
    /// warning (an older one may still be replayable); the errors of those skipped are
    /// returned with the result, so a caller that needed one can say why it had none.
    ///
    /// # Errors
    /// [`SnapshotError::Io`] if the directory cannot be listed, or a snapshot lies past
    /// `max` (`Invalid`: the log lost records a snapshot holds).
    pub fn newest(&self, max: Lsn) -> Result<(Option<Loaded>, Vec<SnapshotError>), SnapshotError> {
        let mut skipped = Vec::new();
        for (lsn, path) in self.list()? {
            if lsn > max {
                return Err(SnapshotError::Invalid {
                    path,
                    offset: 0,
                    reason: format!(
                        "it holds the state up to {lsn}, past {max} where the log ends: the log lost records this snapshot covers"
                    ),
                });
            }
            match read_file(&path) {
                Ok(l) if l.meta.lsn == lsn => return Ok((Some(l), skipped)),
                Ok(l) => skipped.push(SnapshotError::Invalid {
                    path,
                    offset: 12,
                    reason: format!("its name says {lsn}, its header {}", l.meta.lsn),
                }),
                Err(e) => {
                    tracing::warn!(error = %e, "skipping an invalid snapshot");
                    skipped.push(e);
                }
            }
        }
        Ok((None, skipped))
    }

    /// The newest snapshot by name (not read back): what a leader serves a follower,
    /// which checks it whole before using it.
    ///
    /// # Errors
    /// [`SnapshotError::Io`] if the directory cannot be listed.
    pub fn newest_file(&self) -> Result<Option<(Lsn, PathBuf)>, SnapshotError> {
        Ok(self.list()?.into_iter().next())
    }

    /// Receives a snapshot covering `lsn` from `bytes` (a leader's, for a bootstrap):
    /// writes it to a temporary file, makes it durable, then reads it back with every
    /// check [`read_file`] makes and requires it to cover `lsn`. Nothing is in place
    /// until [`Pending::install`].
    ///
    /// # Errors
    /// [`SnapshotError::Io`] if the bytes cannot be read or written (a failed transfer
    /// surfaces here), [`SnapshotError::Invalid`] for a file that fails a check; the
    /// temporary file is removed.
    pub fn receive(
        &self,
        lsn: Lsn,
        bytes: &mut dyn Read,
    ) -> Result<(Pending, Loaded), SnapshotError> {
        let tmp = self
            .dir
            .join(format!("{PREFIX}{:016x}.bootstrap.tmp", lsn.get()));
        let result = (|| {
            let mut f = File::create(&tmp).map_err(self.io("create", &tmp))?;
            io::copy(bytes, &mut f).map_err(self.io("receive into", &tmp))?;
            f.sync_all().map_err(self.io("fsync", &tmp))?;
            drop(f);
            let loaded = read_file(&tmp)?;
            if loaded.meta.lsn != lsn {
                return Err(SnapshotError::Invalid {
                    path: tmp.clone(),
                    offset: 12,
                    reason: format!("it covers {}, the leader said {lsn}", loaded.meta.lsn),
                });
            }
            Ok(loaded)
        })();
        match result {
            Ok(loaded) => Ok((
                Pending {
                    dir: self.clone(),
                    tmp,
                    lsn,
                },
                loaded,
            )),
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    /// Removes every snapshot after `lsn` (a truncation undid what they hold). Returns
    /// how many were removed.
    ///
    /// # Errors
    /// [`SnapshotError::Io`].
    pub fn remove_after(&self, lsn: Lsn) -> Result<usize, SnapshotError> {
        let mut n = 0;
        for (l, path) in self.list()? {
            if l > lsn {
                fs::remove_file(&path).map_err(self.io("remove", &path))?;
                n += 1;
            }
        }
        if n > 0 {
            self.sync()?;
        }
        Ok(n)
    }

    /// Removes the temporary files of snapshots never put in place (a crash while one
    /// was written): at start, when nothing writes one.
    ///
    /// # Errors
    /// [`SnapshotError::Io`].
    pub fn remove_leftovers(&self) -> Result<(), SnapshotError> {
        let rd = fs::read_dir(&self.dir).map_err(self.io("list", &self.dir))?;
        for e in rd {
            let e = e.map_err(self.io("list", &self.dir))?;
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(PREFIX) && name.ends_with(".tmp") {
                let path = e.path();
                fs::remove_file(&path).map_err(self.io("remove", &path))?;
            }
        }
        Ok(())
    }

    fn sync(&self) -> Result<(), SnapshotError> {
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(self.io("fsync directory", &self.dir))
    }
}

/// A snapshot written and durable under its temporary name, not yet in place.
#[derive(Debug)]
pub struct Pending {
    dir: SnapshotDir,
    tmp: PathBuf,
    lsn: Lsn,
}

impl Pending {
    /// The LSN it covers.
    pub fn lsn(&self) -> Lsn {
        self.lsn
    }

    /// Renames it into place, makes the rename durable, and removes older snapshots.
    /// Returns its path.
    ///
    /// # Errors
    /// [`SnapshotError::Io`]; a snapshot whose rename is not durable is not reported as
    /// installed.
    pub fn install(self) -> Result<PathBuf, SnapshotError> {
        let path = self.dir.dir.join(name_of(self.lsn));
        fs::rename(&self.tmp, &path).map_err(self.dir.io("rename", &self.tmp))?;
        self.dir.sync()?;
        for (l, old) in self.dir.list()? {
            if l < self.lsn {
                fs::remove_file(&old).map_err(self.dir.io("remove", &old))?;
            }
        }
        Ok(path)
    }

    /// Throws it away.
    pub fn discard(self) {
        let _ = fs::remove_file(&self.tmp);
    }
}

fn name_of(lsn: Lsn) -> String {
    format!("{PREFIX}{:016x}{SUFFIX}", lsn.get())
}

fn parse_name(name: &str) -> Option<Lsn> {
    let hex = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok().map(Lsn::new)
}

/// Writes and CRCs everything that goes through it.
struct CrcWriter<W> {
    inner: W,
    crc: u32,
}

impl<W: Write> CrcWriter<W> {
    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.crc = crc32c::crc32c_append(self.crc, bytes);
        self.inner.write_all(bytes)
    }
}

fn len_u32(n: usize, what: &str) -> io::Result<[u8; 4]> {
    match u32::try_from(n) {
        Ok(n) if u64::from(n) <= MAX_FIELD => Ok(n.to_le_bytes()),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("a {what} of {n} bytes is over the snapshot's bound of {MAX_FIELD}"),
        )),
    }
}

fn write_file(
    path: &Path,
    store: &Store,
    clock: Timestamp,
    origin: &str,
) -> Result<(), SnapshotError> {
    let io = |what| {
        let path = path.to_path_buf();
        move |source| SnapshotError::Io { what, path, source }
    };
    let file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(io("create"))?;
    let mut w = CrcWriter {
        inner: BufWriter::with_capacity(1 << 20, file),
        crc: 0,
    };
    let origin = origin.as_bytes();
    let origin_len = u16::try_from(origin.len()).map_err(|_| SnapshotError::Io {
        what: "write",
        path: path.to_path_buf(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "origin over 65535 bytes"),
    })?;
    let mut body = || -> io::Result<()> {
        w.put(MAGIC)?;
        w.put(&VERSION.to_le_bytes())?;
        w.put(&store.applied().get().to_le_bytes())?;
        w.put(&clock.raw().to_le_bytes())?;
        w.put(&store.expired_count().to_le_bytes())?;
        w.put(&(store.len() as u64).to_le_bytes())?;
        w.put(&origin_len.to_le_bytes())?;
        w.put(origin)?;
        for (key, e) in store.entries() {
            w.put(&len_u32(key.len(), "key")?)?;
            w.put(key)?;
            w.put(&len_u32(e.value.len(), "value")?)?;
            w.put(&e.value)?;
            match e.expire_at {
                Some(at) => {
                    w.put(&[1])?;
                    w.put(&at.to_le_bytes())?;
                }
                None => w.put(&[0; 9])?,
            }
            w.put(&e.ts.raw().to_le_bytes())?;
        }
        let crc = w.crc;
        w.inner.write_all(&crc.to_le_bytes())?;
        w.inner.flush()
    };
    body().map_err(io("write"))?;
    let file = w.inner.into_inner().map_err(|e| SnapshotError::Io {
        what: "write",
        path: path.to_path_buf(),
        source: e.into_error(),
    })?;
    file.sync_all().map_err(io("fsync"))
}

/// Reads and CRCs, counting bytes and refusing to read past the body's end.
struct CrcReader<R> {
    inner: R,
    crc: u32,
    offset: u64,
    /// Where the body ends (the trailer starts).
    body_end: u64,
    path: PathBuf,
}

impl<R: Read> CrcReader<R> {
    fn invalid(&self, reason: impl Into<String>) -> SnapshotError {
        SnapshotError::Invalid {
            path: self.path.clone(),
            offset: self.offset,
            reason: reason.into(),
        }
    }

    fn left(&self) -> u64 {
        self.body_end.saturating_sub(self.offset)
    }

    fn take(&mut self, buf: &mut [u8]) -> Result<(), SnapshotError> {
        if (buf.len() as u64) > self.left() {
            return Err(self.invalid(format!(
                "{} bytes wanted, {} left before the checksum",
                buf.len(),
                self.left()
            )));
        }
        self.inner
            .read_exact(buf)
            .map_err(|source| SnapshotError::Io {
                what: "read",
                path: self.path.clone(),
                source,
            })?;
        self.crc = crc32c::crc32c_append(self.crc, buf);
        self.offset += buf.len() as u64;
        Ok(())
    }

    fn u8(&mut self) -> Result<u8, SnapshotError> {
        let mut b = [0; 1];
        self.take(&mut b)?;
        Ok(b[0])
    }

    fn u16(&mut self) -> Result<u16, SnapshotError> {
        let mut b = [0; 2];
        self.take(&mut b)?;
        Ok(u16::from_le_bytes(b))
    }

    fn u32(&mut self) -> Result<u32, SnapshotError> {
        let mut b = [0; 4];
        self.take(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn u64(&mut self) -> Result<u64, SnapshotError> {
        let mut b = [0; 8];
        self.take(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// A length-prefixed field, bounded by [`MAX_FIELD`] and the bytes left.
    fn field(&mut self, what: &str) -> Result<Bytes, SnapshotError> {
        let n = u64::from(self.u32()?);
        if n > MAX_FIELD || n > self.left() {
            return Err(self.invalid(format!(
                "a {what} of {n} bytes (bound {MAX_FIELD}, {} left)",
                self.left()
            )));
        }
        // Bounded by the file's own length just above.
        let mut v = vec![0; n as usize];
        self.take(&mut v)?;
        Ok(Bytes::from(v))
    }
}

/// Reads and checks the snapshot at `path`.
///
/// # Errors
/// [`SnapshotError`] naming the file, the offset and what was wrong.
pub fn read_file(path: &Path) -> Result<Loaded, SnapshotError> {
    let io = |what| {
        let path = path.to_path_buf();
        move |source| SnapshotError::Io { what, path, source }
    };
    let file = File::open(path).map_err(io("open"))?;
    let len = file.metadata().map_err(io("stat"))?.len();
    let invalid = |offset, reason: String| SnapshotError::Invalid {
        path: path.to_path_buf(),
        offset,
        reason,
    };
    if len < HEADER_LEN + TRAILER_LEN {
        return Err(invalid(
            0,
            format!("{len} bytes, shorter than a snapshot's header and checksum"),
        ));
    }
    let mut r = CrcReader {
        inner: BufReader::with_capacity(1 << 20, file),
        crc: 0,
        offset: 0,
        body_end: len - TRAILER_LEN,
        path: path.to_path_buf(),
    };
    let mut magic = [0; 8];
    r.take(&mut magic)?;
    if &magic != MAGIC {
        return Err(invalid(0, "not a walship-kv snapshot (bad magic)".into()));
    }
    let version = r.u32()?;
    if version != VERSION {
        return Err(invalid(
            8,
            format!("format version {version}; this build reads {VERSION}"),
        ));
    }
    let lsn = Lsn::new(r.u64()?);
    let clock = Timestamp::from_raw(r.u64()?);
    let expired = r.u64()?;
    let count = r.u64()?;
    if count > r.left() / MIN_ENTRY {
        return Err(r.invalid(format!(
            "{count} entries cannot fit in the {} bytes left",
            r.left()
        )));
    }
    let origin_len = usize::from(r.u16()?);
    let mut origin = vec![0; origin_len.min(usize::try_from(r.left()).unwrap_or(0))];
    r.take(&mut origin)?;
    if origin.len() != origin_len {
        return Err(r.invalid("the origin runs past the end"));
    }
    let origin = String::from_utf8(origin).map_err(|_| r.invalid("the origin is not UTF-8"))?;
    let mut entries = Vec::new();
    for _ in 0..count {
        let key = r.field("key")?;
        let value = r.field("value")?;
        let flag = r.u8()?;
        let at = r.u64()?;
        let expire_at = match flag {
            0 if at == 0 => None,
            1 => Some(at),
            _ => return Err(r.invalid(format!("expiry flag {flag} with {at}"))),
        };
        let ts = Timestamp::from_raw(r.u64()?);
        entries.push((
            key,
            Entry {
                value,
                expire_at,
                ts,
            },
        ));
    }
    if r.left() != 0 {
        return Err(r.invalid(format!(
            "{} bytes after the last entry, before the checksum",
            r.left()
        )));
    }
    let want = r.crc;
    let mut trailer = [0; 4];
    r.inner.read_exact(&mut trailer).map_err(io("read"))?;
    let got = u32::from_le_bytes(trailer);
    if got != want {
        return Err(invalid(
            r.offset,
            format!("checksum {got:08x}, the bytes give {want:08x}"),
        ));
    }
    let store = Store::restore(entries, expired, lsn)
        .map_err(|i| invalid(0, format!("entry {i} is out of the key space's order")))?;
    Ok(Loaded {
        meta: Meta { lsn, clock, origin },
        store,
        path: path.to_path_buf(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Op;

    fn store(n: usize) -> Store {
        let mut s = Store::new();
        for i in 0..n {
            s.apply_op(
                &Op::Set {
                    key: Bytes::from(format!("key:{i}")),
                    value: Bytes::from(vec![b'v'; i % 50]),
                    expire_at: (i % 3 == 0).then_some(1_000 + i as u64),
                },
                Timestamp::new(10 + i as u64, 1),
            );
        }
        s.set_applied(Lsn::new(4096 + n as u64));
        s
    }

    fn same(a: &Store, b: &Store) {
        let ea: Vec<_> = a.entries().collect();
        let eb: Vec<_> = b.entries().collect();
        assert_eq!(ea, eb);
        assert_eq!(
            (a.applied(), a.expired_count(), a.volatile()),
            (b.applied(), b.expired_count(), b.volatile())
        );
    }

    #[test]
    fn a_snapshot_round_trips_and_replaces_older_ones() {
        let dir = tempfile::tempdir().unwrap();
        let d = SnapshotDir::open(dir.path().join("snaps")).unwrap();
        let s1 = store(10);
        let p1 = d.write(&s1, Timestamp::new(5, 0), "n1").unwrap();
        // Not a snapshot until installed.
        assert!(d.list().unwrap().is_empty());
        p1.install().unwrap();
        let s2 = store(500);
        d.write(&s2, Timestamp::new(6, 0), "n1")
            .unwrap()
            .install()
            .unwrap();
        let names: Vec<_> = d.list().unwrap().into_iter().map(|(l, _)| l).collect();
        assert_eq!(names, vec![s2.applied()], "the older snapshot is removed");
        let (l, skipped) = d.newest(Lsn::new(u64::MAX)).unwrap();
        let l = l.unwrap();
        assert!(skipped.is_empty());
        same(&l.store, &s2);
        assert_eq!(
            l.meta,
            Meta {
                lsn: s2.applied(),
                clock: Timestamp::new(6, 0),
                origin: "n1".into()
            }
        );
        // A snapshot past where the log ends is an error, not skipped.
        let e = d.newest(Lsn::new(10)).unwrap_err().to_string();
        assert!(e.contains("lost records"), "{e}");
    }

    /// Every single-byte corruption, and every truncation, of a snapshot is refused with
    /// the file's name: none yields a key space.
    #[test]
    fn every_corrupted_or_cut_snapshot_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let d = SnapshotDir::open(dir.path()).unwrap();
        let path = d
            .write(&store(20), Timestamp::new(1, 0), "n1")
            .unwrap()
            .install()
            .unwrap();
        let good = fs::read(&path).unwrap();
        let bad = dir.path().join("bad");
        for i in 0..good.len() {
            let mut b = good.clone();
            b[i] ^= 0x41;
            fs::write(&bad, &b).unwrap();
            let e = read_file(&bad).expect_err(&format!("byte {i} flipped"));
            assert!(e.to_string().contains("bad"), "{e}");
        }
        for n in 0..good.len() {
            fs::write(&bad, &good[..n]).unwrap();
            read_file(&bad).expect_err(&format!("cut to {n}"));
        }
        // Lengths that claim more than the file has allocate nothing: refused at once.
        let mut b = good.clone();
        let first_key = (HEADER_LEN + 2) as usize;
        b[first_key..first_key + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        fs::write(&bad, &b).unwrap();
        let e = read_file(&bad).unwrap_err().to_string();
        assert!(e.contains("bound"), "{e}");
    }

    #[test]
    fn an_invalid_newest_snapshot_falls_back_to_an_older_one() {
        let dir = tempfile::tempdir().unwrap();
        let d = SnapshotDir::open(dir.path()).unwrap();
        let old = store(5);
        let old_path = d
            .write(&old, Timestamp::new(1, 0), "n1")
            .unwrap()
            .install()
            .unwrap();
        let kept = fs::read(&old_path).unwrap();
        let new = store(7);
        let new_path = d
            .write(&new, Timestamp::new(2, 0), "n1")
            .unwrap()
            .install()
            .unwrap();
        fs::write(&old_path, kept).unwrap();
        let mut b = fs::read(&new_path).unwrap();
        let last = b.len() - 1;
        b[last] ^= 1;
        fs::write(&new_path, b).unwrap();
        let (l, skipped) = d.newest(Lsn::new(u64::MAX)).unwrap();
        same(&l.unwrap().store, &old);
        assert_eq!(skipped.len(), 1);
        assert!(
            skipped[0].to_string().contains("checksum"),
            "{}",
            skipped[0]
        );
        // Snapshots past a truncation point go; leftover temporary files at start.
        fs::write(dir.path().join("snap-0000000000000001.tmp"), b"x").unwrap();
        assert_eq!(d.remove_after(old.applied()).unwrap(), 1);
        assert_eq!(d.list().unwrap().len(), 1);
        d.remove_leftovers().unwrap();
        assert!(!dir.path().join("snap-0000000000000001.tmp").exists());
    }
}
