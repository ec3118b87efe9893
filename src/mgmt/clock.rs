//! Time for the management plane: monotonic time for session idle expiry, wall-clock time for
//! the timestamps Redfish resources carry. Behind a trait so tests can move time explicitly
//! (as the transport's sans-I/O core does).

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use crate::sync::MutexExt;

/// A source of time.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// Monotonic now.
    fn now(&self) -> Instant;
    /// Wall-clock now.
    fn wall(&self) -> SystemTime;
}

/// The operating system's clocks.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
    fn wall(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that moves only when told to (tests).
#[derive(Debug)]
pub struct ManualClock {
    start: Instant,
    wall_start: SystemTime,
    offset: Mutex<Duration>,
}

impl ManualClock {
    /// A clock at the present moment.
    pub fn new() -> Self {
        ManualClock {
            start: Instant::now(),
            wall_start: SystemTime::now(),
            offset: Mutex::new(Duration::ZERO),
        }
    }

    /// Move time forward.
    pub fn advance(&self, by: Duration) {
        *self.offset.lock_or_recover() += by;
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.start + *self.offset.lock_or_recover()
    }
    fn wall(&self) -> SystemTime {
        self.wall_start + *self.offset.lock_or_recover()
    }
}
