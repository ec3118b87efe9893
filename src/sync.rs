//! Poison-tolerant locking: the one place that decides what a poisoned lock means in pcietun.
//!
//! A `std::sync` lock is *poisoned* when a thread panics while holding it; `lock()` then returns
//! `Err(PoisonError)` in every other thread. This crate recovers the guard instead
//! ([`PoisonError::into_inner`]), through the three extension traits below, for these reasons:
//!
//! * A panic here is a bug, and it already ends the thread it happened in (a device worker, a
//!   link thread, a vfio-user serve loop). Propagating poison would turn that one failure into a
//!   panic in every thread sharing the lock — the host's requester, a function's state, the
//!   appliance's session table — and take down every VM and card behind it.
//! * What our locks guard stays usable after a panic: counters and statistics snapshots (a torn
//!   update is a stale number), queues and slot tables whose entries are pushed or taken whole,
//!   shadow registers written whole, DMA window lists replaced whole. The worst a half-finished
//!   operation leaves behind is a request that never completes — a tag, a DMA read, an NVMe
//!   command — and each of those already has a timeout path (completion timeout, the NVMe
//!   driver's abort and controller reset), the same as for a completion lost on the wire.
//! * Nothing behind these locks is `unsafe` to observe half-updated: the shared guest memory of
//!   a DMA window is accessed through raw pointers outside any lock.
//!
//! A lock whose data could be left in a state where carrying on is worse than stopping (none
//! today) must not use these helpers: call `lock()` and handle the `PoisonError` there, and say
//! why next to it.
//!
//! This module is a leaf: it imports only `std`, and every layer may use it.

use std::sync::{
    Condvar, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard,
    TryLockError, WaitTimeoutResult,
};
use std::time::Duration;

/// [`Mutex`] locking that recovers a poisoned lock (see the module documentation).
pub trait MutexExt<T: ?Sized> {
    /// Lock, blocking; a poisoned lock is taken as it is.
    fn lock_or_recover(&self) -> MutexGuard<'_, T>;
    /// Lock if free; `None` when another thread holds it. A poisoned lock is taken as it is.
    fn try_lock_or_recover(&self) -> Option<MutexGuard<'_, T>>;
}

impl<T: ?Sized> MutexExt<T> for Mutex<T> {
    fn lock_or_recover(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn try_lock_or_recover(&self) -> Option<MutexGuard<'_, T>> {
        match self.try_lock() {
            Ok(g) => Some(g),
            Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }
}

/// [`RwLock`] locking that recovers a poisoned lock (see the module documentation).
pub trait RwLockExt<T: ?Sized> {
    /// Shared lock; a poisoned lock is taken as it is.
    fn read_or_recover(&self) -> RwLockReadGuard<'_, T>;
    /// Exclusive lock; a poisoned lock is taken as it is.
    fn write_or_recover(&self) -> RwLockWriteGuard<'_, T>;
}

impl<T: ?Sized> RwLockExt<T> for RwLock<T> {
    fn read_or_recover(&self) -> RwLockReadGuard<'_, T> {
        self.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_or_recover(&self) -> RwLockWriteGuard<'_, T> {
        self.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// [`Condvar`] waits that recover a poisoned mutex (see the module documentation).
pub trait CondvarExt {
    /// Wait for a notification; the guard comes back even if the mutex was poisoned.
    fn wait_or_recover<'a, T>(&self, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T>;
    /// Wait for a notification or `timeout`; the guard comes back even if the mutex was poisoned.
    fn wait_timeout_or_recover<'a, T>(
        &self,
        guard: MutexGuard<'a, T>,
        timeout: Duration,
    ) -> (MutexGuard<'a, T>, WaitTimeoutResult);
}

impl CondvarExt for Condvar {
    fn wait_or_recover<'a, T>(&self, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
        self.wait(guard).unwrap_or_else(PoisonError::into_inner)
    }

    fn wait_timeout_or_recover<'a, T>(
        &self,
        guard: MutexGuard<'a, T>,
        timeout: Duration,
    ) -> (MutexGuard<'a, T>, WaitTimeoutResult) {
        self.wait_timeout(guard, timeout)
            .unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::thread;

    /// Panics while holding `m`, leaving it poisoned.
    fn poison<T: Send + Sync + 'static>(m: &Arc<Mutex<T>>) {
        let m2 = Arc::clone(m);
        let r = thread::spawn(move || {
            let _g = m2.lock().unwrap();
            panic!("poisoning the lock on purpose");
        })
        .join();
        assert!(r.is_err());
        assert!(m.is_poisoned());
    }

    #[test]
    fn mutex_recovers_poisoned_data() {
        let m = Arc::new(Mutex::new(41));
        poison(&m);
        assert!(m.lock().is_err(), "std reports the poison");
        *m.lock_or_recover() += 1;
        assert_eq!(*m.lock_or_recover(), 42);
        assert_eq!(m.try_lock_or_recover().map(|g| *g), Some(42));
    }

    #[test]
    fn try_lock_reports_a_held_lock() {
        let m = Mutex::new(());
        let g = m.lock_or_recover();
        assert!(m.try_lock_or_recover().is_none());
        drop(g);
        assert!(m.try_lock_or_recover().is_some());
    }

    #[test]
    fn rwlock_recovers_poisoned_data() {
        let l = Arc::new(RwLock::new(vec![1]));
        let l2 = Arc::clone(&l);
        let r = thread::spawn(move || {
            let mut g = l2.write().unwrap();
            g.push(2);
            panic!("poisoning the lock on purpose");
        })
        .join();
        assert!(r.is_err() && l.is_poisoned());
        assert_eq!(*l.read_or_recover(), [1, 2]);
        l.write_or_recover().push(3);
        assert_eq!(*l.read_or_recover(), [1, 2, 3]);
    }

    #[test]
    fn condvar_waits_on_a_poisoned_mutex() {
        let m = Arc::new(Mutex::new(false));
        poison(&m);
        let cv = Arc::new(Condvar::new());
        let (m2, cv2) = (Arc::clone(&m), Arc::clone(&cv));
        let t = thread::spawn(move || {
            *m2.lock_or_recover() = true;
            cv2.notify_all();
        });
        let mut g = m.lock_or_recover();
        while !*g {
            g = cv.wait_timeout_or_recover(g, Duration::from_secs(5)).0;
        }
        drop(g);
        t.join().unwrap();
        let (g, res) = cv.wait_timeout_or_recover(m.lock_or_recover(), Duration::from_millis(1));
        assert!(*g && res.timed_out());
        drop(g);
        let (m3, cv3) = (Arc::clone(&m), Arc::clone(&cv));
        let t = thread::spawn(move || {
            *m3.lock_or_recover() = false;
            cv3.notify_all();
        });
        let mut g = m.lock_or_recover();
        while *g {
            g = cv.wait_or_recover(g);
        }
        t.join().unwrap();
    }
}
