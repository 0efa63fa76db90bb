//! Small files that must survive a crash whole or not at all: written to a new file,
//! fsynced, renamed over the old one, and the directory fsynced. Each carries a CRC32C of
//! its text, checked on load.

use std::fs::{self, File};
use std::io::Write as _;
use std::path::Path;

/// Replaces `path` with `text` plus a checksum line, atomically and durably.
pub(crate) fn store(path: &Path, text: &str) -> Result<(), (&'static str, std::io::Error)> {
    let crc = crc32c::crc32c(text.as_bytes());
    let body = format!("{text}crc32c {crc:08x}\n");
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".new");
    let tmp = path.with_file_name(name);
    let mut f = File::create(&tmp).map_err(|e| ("create", e))?;
    f.write_all(body.as_bytes()).map_err(|e| ("write", e))?;
    f.sync_all().map_err(|e| ("fsync", e))?;
    drop(f);
    fs::rename(&tmp, path).map_err(|e| ("rename", e))?;
    if let Some(dir) = path.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| ("fsync the directory of", e))?;
    }
    Ok(())
}

/// What [`load`] found wrong.
#[derive(Debug)]
pub(crate) enum LoadError {
    Io(std::io::Error),
    /// 1-based line and what is wrong.
    Corrupt(usize, String),
}

/// The text stored by [`store`] (without its checksum line), `None` if there is no file.
pub(crate) fn load(path: &Path) -> Result<Option<String>, LoadError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(LoadError::Io(e)),
    };
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

    #[test]
    fn round_trip_and_damage() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        assert!(load(&p).unwrap().is_none());
        store(&p, "a 1\nb 2\n").unwrap();
        assert_eq!(load(&p).unwrap().as_deref(), Some("a 1\nb 2\n"));
        store(&p, "").unwrap();
        assert_eq!(load(&p).unwrap().as_deref(), Some(""));
        store(&p, "x 5\n").unwrap();
        let t = fs::read_to_string(&p).unwrap();
        fs::write(&p, t.replace("x 5", "x 6")).unwrap();
        assert!(matches!(load(&p), Err(LoadError::Corrupt(2, _))));
        fs::write(&p, "junk").unwrap();
        assert!(matches!(load(&p), Err(LoadError::Corrupt(..))));
    }
}
