//! Lock helpers shared by the engine's threads.
//!
//! A poisoned lock is taken anyway: every critical section in the engine leaves its data
//! consistent before anything that can panic (pushes, retains, swaps of whole values), so
//! the data behind a poisoned lock is valid, and refusing it would turn one panic into a
//! stuck log.

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn read<T>(m: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn write<T>(m: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|p| p.into_inner())
}
