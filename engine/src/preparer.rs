//! The segment preparer thread: makes the next segment ready before the log needs it,
//! and retires segments the embedder's checkpoint no longer needs.
//!
//! - Preparing prefers a retired file (recycling: rename, rewrite the header, fsync)
//!   over a new zero-filled one, because writing into already-written blocks is the
//!   fastest write this file system offers.
//! - Appenders call [`Preparer::take`] under the append lock when they cross into a new
//!   segment; if preparation failed (e.g. `ENOSPC`) they get the error and nothing is
//!   appended; the next crossing asks again, so appends resume once space is freed.
//! - Retirement removes whole segments below the checkpoint from the front of the log,
//!   never the one being written. A retired segment that no reader or `Bytes` still maps
//!   goes to the recycle pool (renamed to a `.tmp` name, so a crash simply deletes it);
//!   one still mapped is unlinked, and the mapping keeps its bytes alive.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::log::{lock, write, Shared};
use crate::segment::{self, Segment, TMP_SUFFIX};
use crate::stats::Counters;
use crate::types::Lsn;

struct State {
    /// The segment wanted next.
    want: Option<Lsn>,
    ready: Option<Result<Segment>>,
    pool: VecDeque<PathBuf>,
    retention: bool,
    shutdown: bool,
}

pub(crate) struct Preparer {
    state: Mutex<State>,
    cv: Condvar,
}

impl Preparer {
    pub(crate) fn new(ready: Option<Segment>, next: Lsn) -> Preparer {
        let want = if ready.is_some() { None } else { Some(next) };
        Preparer {
            state: Mutex::new(State {
                want,
                ready: ready.map(Ok),
                pool: VecDeque::new(),
                retention: false,
                shutdown: false,
            }),
            cv: Condvar::new(),
        }
    }

    pub(crate) fn notify(&self) {
        drop(lock(&self.state));
        self.cv.notify_all();
    }

    pub(crate) fn shutdown(&self) {
        lock(&self.state).shutdown = true;
        self.cv.notify_all();
    }

    pub(crate) fn request_retention(&self) {
        lock(&self.state).retention = true;
        self.cv.notify_all();
    }

    /// Takes the prepared segment at `base`, waiting for it if necessary; asks for the
    /// one after it next.
    pub(crate) fn take(&self, shared: &Shared, base: Lsn) -> Result<Segment> {
        let cap = shared.geometry.capacity();
        let mut st = lock(&self.state);
        loop {
            if st.shutdown {
                return Err(Error::Closed {
                    path: shared.dir.clone(),
                });
            }
            match st.ready.take() {
                Some(Ok(seg)) if seg.base == base => {
                    st.want = Some(Lsn::new(base.get() + cap));
                    drop(st);
                    self.cv.notify_all();
                    return Ok(seg);
                }
                Some(Ok(stale)) => {
                    // Prepared for a position the log no longer continues at (after a
                    // truncation): it must not stay under a segment name.
                    let path = stale.path.clone();
                    drop(stale);
                    std::fs::remove_file(&path)
                        .map_err(|e| Error::io("remove stale prepared segment", &path, e))?;
                }
                Some(Err(e)) => {
                    st.want = None;
                    return Err(e);
                }
                None => {}
            }
            if st.want != Some(base) {
                st.want = Some(base);
                self.cv.notify_all();
            }
            st = self
                .cv
                .wait_timeout(st, Duration::from_millis(100))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Forgets any prepared segment (deleting its file) and asks for `next` instead.
    pub(crate) fn reset(&self, next: Lsn) -> Result<()> {
        let mut st = lock(&self.state);
        if let Some(Ok(seg)) = st.ready.take() {
            let path = seg.path.clone();
            drop(seg);
            if path.exists() {
                std::fs::remove_file(&path)
                    .map_err(|e| Error::io("remove prepared segment", &path, e))?;
            }
        }
        st.want = Some(next);
        drop(st);
        self.cv.notify_all();
        Ok(())
    }
}

pub(crate) fn run(shared: &Arc<Shared>) {
    let prep = &shared.prep;
    let mut st = lock(&prep.state);
    loop {
        if st.shutdown {
            return;
        }
        if st.retention {
            st.retention = false;
            drop(st);
            let retired = retire(shared);
            st = lock(&prep.state);
            match retired {
                Ok(paths) => {
                    for p in paths {
                        if st.pool.len() < shared.opts.recycle_pool {
                            st.pool.push_back(p);
                        } else if let Err(e) = std::fs::remove_file(&p) {
                            tracing::warn!(path = %p.display(), error = %e, "cannot remove retired segment");
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "segment retirement failed; will retry at the next checkpoint")
                }
            }
            continue;
        }
        if let (Some(base), None) = (st.want, st.ready.as_ref()) {
            let recycled = st.pool.pop_front();
            drop(st);
            let c = &shared.counters;
            let create = || {
                let r = segment::create(&shared.dir, base, shared.geometry);
                if r.is_ok() {
                    Counters::add(&c.segments_created, 1);
                }
                r
            };
            let result = match &recycled {
                Some(old) => match segment::recycle(&shared.dir, old, base, shared.geometry) {
                    Ok(seg) => {
                        Counters::add(&c.segments_recycled, 1);
                        Ok(seg)
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "recycling failed; creating a new segment");
                        create()
                    }
                },
                None => create(),
            };
            if let Err(e) = &result {
                tracing::warn!(base = %base, error = %e, "cannot prepare the next segment");
            }
            st = lock(&prep.state);
            if st.want == Some(base) {
                st.want = None;
                st.ready = Some(result);
            } else if let Ok(seg) = result {
                // The log moved on (truncation) while this was prepared.
                let _ = std::fs::remove_file(&seg.path);
            }
            prep.cv.notify_all();
            continue;
        }
        st = prep.cv.wait(st).unwrap_or_else(|p| p.into_inner());
    }
}

/// Removes segments wholly below the checkpoint from the front of the log. Returns the
/// paths of those that can be recycled (renamed to temporary names).
fn retire(shared: &Shared) -> Result<Vec<PathBuf>> {
    let g = shared.geometry;
    let checkpoint = Lsn::new(shared.checkpoint.load(Ordering::Acquire));
    let held = Lsn::new(shared.retention_floor.load(Ordering::Acquire));
    let written = shared.written.get();
    let floor = checkpoint.min(held).min(written);
    let mut removed = Vec::new();
    {
        let mut segs = write(&shared.segments);
        while segs.len() > 1 {
            let Some((&base, _)) = segs.first_key_value() else {
                break;
            };
            if base + g.capacity() > floor.get() || g.base_of(written).get() == base {
                break;
            }
            if let Some((_, seg)) = segs.pop_first() {
                removed.push(seg);
            }
        }
        if let Some((&first, _)) = segs.first_key_value() {
            shared
                .start
                .store(g.first_batch(Lsn::new(first)).get(), Ordering::Release);
        }
    }
    if removed.is_empty() {
        return Ok(Vec::new());
    }
    let mut recyclable = Vec::new();
    for seg in removed {
        let path = seg.path.clone();
        if seg.is_referenced() {
            drop(seg);
            std::fs::remove_file(&path)
                .map_err(|e| Error::io("remove retired segment", &path, e))?;
        } else {
            drop(seg);
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("segment");
            let tmp = shared.dir.join(format!("recycle-{name}{TMP_SUFFIX}"));
            std::fs::rename(&path, &tmp)
                .map_err(|e| Error::io("rename retired segment", &path, e))?;
            recyclable.push(tmp);
        }
    }
    crate::fsutil::fsync_dir(&shared.dir)?;
    tracing::debug!(start = %shared.start(), recyclable = recyclable.len(), "retired segments below the checkpoint");
    Ok(recyclable)
}
