//! Small text files beside the log that must survive a crash whole or not at all: the
//! engine's [`atomic_write_in`](walship_engine::atomic_write_in) replaces them, on the
//! log's own storage, and each carries a CRC32C of its text, checked on load.

use std::path::Path;

use walship_engine::storage::Storage;

/// Replaces `dir/name` with `text` plus a checksum line, atomically and durably.
pub(crate) fn store(
    fs: &dyn Storage,
    dir: &Path,
    name: &str,
    text: &str,
) -> walship_engine::Result<()> {
    let crc = crc32c::crc32c(text.as_bytes());
    walship_engine::atomic_write_in(
        fs,
        dir,
        name,
        format!("{text}crc32c {crc:08x}\n").as_bytes(),
    )
}

/// What [`load`] found wrong.
#[derive(Debug)]
pub(crate) enum LoadError {
    Io(std::io::Error),
    /// 1-based line and what is wrong.
    Corrupt(usize, String),
}

/// The largest such file read: a slot line is under 100 bytes, so this holds the slots of
/// far more followers than any cluster has, and a link to `/dev/zero` is an error.
pub(crate) const MAX_BYTES: u64 = 4 << 20;

/// The text stored by [`store`] (without its checksum line), `None` if there is no file.
/// Only a regular file is read, and at most [`MAX_BYTES`] of it.
pub(crate) fn load(fs: &dyn Storage, path: &Path) -> Result<Option<String>, LoadError> {
    let bytes = match walship_engine::read_small_file_in(fs, path, MAX_BYTES) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(LoadError::Io(e)),
    };
    let text = String::from_utf8(bytes).map_err(|_| LoadError::Corrupt(1, "not UTF-8".into()))?;
    let Some(at) = text.trim_end_matches('\n').rfind('\n').map(|i| i + 1).or(
        // A file of one line is only a checksum line: the stored text was empty.
        text.starts_with("crc32c ").then_some(0),
    ) else {
        return Err(LoadError::Corrupt(1, "no checksum line".into()));
    };
    let (body, crc_line) = text.split_at(at);
    let line = body.lines().count() + 1;
    let want = crc_line
        .trim_end()
        .strip_prefix("crc32c ")
        .and_then(|h| u32::from_str_radix(h, 16).ok())
        .ok_or_else(|| LoadError::Corrupt(line, "expected `crc32c <hex>`".into()))?;
    let got = crc32c::crc32c(body.as_bytes());
    if got != want {
        return Err(LoadError::Corrupt(
            line,
            format!("checksum {got:08x} does not match {want:08x}"),
        ));
    }
    Ok(Some(body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use walship_engine::storage::OsStorage;

    #[test]
    fn round_trip_and_damage() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        assert!(load(&OsStorage, &p).unwrap().is_none());
        store(&OsStorage, dir.path(), "f", "a 1\nb 2\n").unwrap();
        assert_eq!(load(&OsStorage, &p).unwrap().as_deref(), Some("a 1\nb 2\n"));
        store(&OsStorage, dir.path(), "f", "").unwrap();
        assert_eq!(load(&OsStorage, &p).unwrap().as_deref(), Some(""));
        store(&OsStorage, dir.path(), "f", "x 5\n").unwrap();
        let t = fs::read_to_string(&p).unwrap();
        fs::write(&p, t.replace("x 5", "x 6")).unwrap();
        assert!(matches!(
            load(&OsStorage, &p),
            Err(LoadError::Corrupt(2, _))
        ));
        fs::write(&p, "junk").unwrap();
        assert!(matches!(load(&OsStorage, &p), Err(LoadError::Corrupt(..))));
    }
}
