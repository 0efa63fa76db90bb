//! Failpoints at I/O boundaries, for tests: make the next write or flush of one log
//! directory fail with a chosen errno. Compiled to nothing outside `cfg(test)`.

use std::io;
use std::path::Path;

#[cfg(test)]
static ACTIVE: std::sync::Mutex<Vec<(&'static str, std::path::PathBuf, i32)>> =
    std::sync::Mutex::new(Vec::new());

/// Fails with the errno armed for `name` in `dir`, if any.
#[cfg_attr(not(test), inline(always))]
pub(crate) fn hit(name: &'static str, dir: &Path) -> io::Result<()> {
    #[cfg(test)]
    {
        let active = crate::sync::lock(&ACTIVE);
        if let Some((_, _, errno)) = active.iter().find(|(n, d, _)| *n == name && d == dir) {
            return Err(io::Error::from_raw_os_error(*errno));
        }
    }
    let _ = (name, dir);
    Ok(())
}

/// Arms `name` for `dir`: every hit fails with `errno` until [`clear`].
#[cfg(test)]
pub(crate) fn set(name: &'static str, dir: &Path, errno: i32) {
    crate::sync::lock(&ACTIVE).push((name, dir.to_path_buf(), errno));
}

/// Disarms every failpoint of `dir`.
#[cfg(test)]
pub(crate) fn clear(dir: &Path) {
    crate::sync::lock(&ACTIVE).retain(|(_, d, _)| d != dir);
}
