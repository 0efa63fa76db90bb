//! Failpoints at I/O boundaries, for tests: make a write, flush or file operation of one
//! log directory fail with a chosen errno. Compiled to nothing outside `cfg(test)`.

use std::io;
use std::path::Path;

#[cfg(test)]
struct Armed {
    name: &'static str,
    dir: std::path::PathBuf,
    errno: i32,
    /// Hits that still pass before the failures start.
    pass: usize,
}

#[cfg(test)]
static ACTIVE: std::sync::Mutex<Vec<Armed>> = std::sync::Mutex::new(Vec::new());

/// Fails with the errno armed for `name` in `dir`, if any.
#[cfg_attr(not(test), inline(always))]
pub(crate) fn hit(name: &'static str, dir: &Path) -> io::Result<()> {
    #[cfg(test)]
    {
        let mut active = crate::sync::lock(&ACTIVE);
        if let Some(a) = active.iter_mut().find(|a| a.name == name && a.dir == dir) {
            if a.pass > 0 {
                a.pass -= 1;
            } else {
                return Err(io::Error::from_raw_os_error(a.errno));
            }
        }
    }
    let _ = (name, dir);
    Ok(())
}

/// Arms `name` for `dir`: every hit fails with `errno` until [`clear`].
#[cfg(test)]
pub(crate) fn set(name: &'static str, dir: &Path, errno: i32) {
    set_after(name, dir, errno, 0);
}

/// Arms `name` for `dir`: the first `pass` hits succeed, every later one fails with
/// `errno` until [`clear`].
#[cfg(test)]
pub(crate) fn set_after(name: &'static str, dir: &Path, errno: i32, pass: usize) {
    crate::sync::lock(&ACTIVE).push(Armed {
        name,
        dir: dir.to_path_buf(),
        errno,
        pass,
    });
}

#[cfg(test)]
static PAUSED: std::sync::Mutex<Vec<(&'static str, std::path::PathBuf)>> =
    std::sync::Mutex::new(Vec::new());
#[cfg(test)]
static RESUMED: std::sync::Condvar = std::sync::Condvar::new();

/// Waits while `name` is paused for `dir` ([`pause`]).
#[cfg_attr(not(test), inline(always))]
pub(crate) fn wait_if_paused(name: &'static str, dir: &Path) {
    #[cfg(test)]
    {
        let mut p = crate::sync::lock(&PAUSED);
        let mut held = false;
        while p.iter().any(|(n, d)| *n == name && d == dir) {
            if !held {
                held = true;
                crate::sync::lock(&HELD).push((name, dir.to_path_buf()));
            }
            p = RESUMED
                .wait(p)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        if held {
            let mut h = crate::sync::lock(&HELD);
            if let Some(i) = h.iter().position(|(n, d)| *n == name && d == dir) {
                h.swap_remove(i);
            }
        }
    }
    let _ = (name, dir);
}

#[cfg(test)]
static HELD: std::sync::Mutex<Vec<(&'static str, std::path::PathBuf)>> =
    std::sync::Mutex::new(Vec::new());

/// Whether a thread is being held at `name` for `dir` right now.
#[cfg(test)]
pub(crate) fn is_held(name: &'static str, dir: &Path) -> bool {
    crate::sync::lock(&HELD)
        .iter()
        .any(|(n, d)| *n == name && d == dir)
}

/// Holds every thread that reaches `name` for `dir` until [`resume`].
#[cfg(test)]
pub(crate) fn pause(name: &'static str, dir: &Path) {
    crate::sync::lock(&PAUSED).push((name, dir.to_path_buf()));
}

/// Lets the threads held for `dir` go.
#[cfg(test)]
pub(crate) fn resume(dir: &Path) {
    crate::sync::lock(&PAUSED).retain(|(_, d)| d != dir);
    RESUMED.notify_all();
}

/// Disarms every failpoint of `dir`.
#[cfg(test)]
pub(crate) fn clear(dir: &Path) {
    crate::sync::lock(&ACTIVE).retain(|a| a.dir != dir);
}
