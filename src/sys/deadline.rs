//! A deadline for the blocking system calls of one thread, for descriptors whose blocking
//! behaviour someone else controls (an eventfd a vfio-user client handed over: its counter and
//! its `O_NONBLOCK` flag are the client's, so a write to it may block for as long as the
//! client likes).
//!
//! [`CallDeadline`] is a POSIX timer (timer_create(2) with `SIGEV_THREAD_ID`) that sends the
//! thread that made it [`deadline_signal`], whose handler does nothing and is installed
//! without `SA_RESTART`. A system call still blocked when the timer fires therefore returns
//! `EINTR` (signal(7), "Interruption of system call and library functions by signal
//! handlers"); one that does not block never sees it. The signal is sent only to that thread,
//! never to the process.

use std::io;
use std::marker::PhantomData;
use std::ptr;
use std::sync::OnceLock;
use std::time::Duration;

/// The real-time signal the deadlines use (`SIGRTMIN + 4`; glibc keeps the first two
/// real-time signals for itself and reports the first free one as `SIGRTMIN`).
pub fn deadline_signal() -> libc::c_int {
    libc::SIGRTMIN() + 4
}

extern "C" fn on_deadline(_: libc::c_int) {
    // Nothing: the signal's only job is to end the blocked call with EINTR.
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Install the do-nothing handler once for the process.
fn install_handler() -> io::Result<()> {
    static INSTALLED: OnceLock<Result<(), i32>> = OnceLock::new();
    let r = INSTALLED.get_or_init(|| {
        let handler: extern "C" fn(libc::c_int) = on_deadline;
        // SAFETY: sigaction is plain old data, valid when zeroed (empty mask, no flags, in
        // particular no SA_RESTART); the handler is async-signal-safe (it does nothing).
        let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
        sa.sa_sigaction = handler as libc::sighandler_t;
        // SAFETY: a valid sigaction that outlives the call; a null old-action pointer.
        let rc = unsafe { libc::sigaction(deadline_signal(), &sa, ptr::null_mut()) };
        check(rc).map_err(|e| e.raw_os_error().unwrap_or(libc::EINVAL))
    });
    r.map_err(io::Error::from_raw_os_error)
}

/// A timer that interrupts this thread's blocking system calls: [`arm`](Self::arm) it before
/// calls that must not block for long, [`disarm`](Self::disarm) it after. Bound to the thread
/// that created it (not `Send`).
#[derive(Debug)]
pub struct CallDeadline {
    timer: libc::timer_t,
    _this_thread: PhantomData<*const ()>,
}

impl CallDeadline {
    /// A disarmed deadline for the calling thread (which gets [`deadline_signal`] unblocked).
    pub fn for_this_thread() -> io::Result<Self> {
        install_handler()?;
        // SAFETY: sigset_t is plain old data; sigemptyset/sigaddset initialise it fully.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a valid sigset_t; unblocking a signal in this thread only.
        unsafe {
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, deadline_signal());
            let rc = libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, ptr::null_mut());
            if rc != 0 {
                return Err(io::Error::from_raw_os_error(rc));
            }
        }
        // SAFETY: sigevent is plain old data, valid when zeroed; we fill in the fields that
        // SIGEV_THREAD_ID reads.
        let mut ev: libc::sigevent = unsafe { std::mem::zeroed() };
        ev.sigev_notify = libc::SIGEV_THREAD_ID;
        ev.sigev_signo = deadline_signal();
        // SAFETY: gettid(2) has no preconditions.
        ev.sigev_notify_thread_id = unsafe { libc::gettid() };
        let mut timer: libc::timer_t = ptr::null_mut();
        // SAFETY: valid pointers to a filled sigevent and to the timer id the kernel writes;
        // the timer is deleted exactly once, in Drop.
        check(unsafe { libc::timer_create(libc::CLOCK_MONOTONIC, &mut ev, &mut timer) })?;
        Ok(Self {
            timer,
            _this_thread: PhantomData,
        })
    }

    fn set(&self, first: Duration, every: Duration) -> io::Result<()> {
        let ts = |d: Duration| libc::timespec {
            tv_sec: libc::time_t::try_from(d.as_secs()).unwrap_or(libc::time_t::MAX),
            tv_nsec: d.subsec_nanos() as libc::c_long,
        };
        let spec = libc::itimerspec {
            it_interval: ts(every),
            it_value: ts(first),
        };
        // SAFETY: our live timer and a valid itimerspec; a null old-value pointer is allowed.
        check(unsafe { libc::timer_settime(self.timer, 0, &spec, ptr::null_mut()) })
    }

    /// Interrupt a call that is still blocked `period` from now, and every `period` after that
    /// until disarmed (at least 1 µs).
    pub fn arm(&self, period: Duration) -> io::Result<()> {
        let p = period.max(Duration::from_micros(1));
        self.set(p, p)
    }

    /// Stop interrupting.
    pub fn disarm(&self) -> io::Result<()> {
        self.set(Duration::ZERO, Duration::ZERO)
    }
}

impl Drop for CallDeadline {
    fn drop(&mut self) {
        // SAFETY: deleting the timer created in `for_this_thread`, once.
        let _ = unsafe { libc::timer_delete(self.timer) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::EventFd;
    use std::time::Instant;

    /// An eventfd whose counter is full blocks a writer for good; the deadline ends the write
    /// with EINTR instead, and does not disturb a write that does not block.
    #[test]
    fn a_blocked_eventfd_write_is_interrupted() {
        let e = EventFd::new().unwrap();
        // A value of u64::MAX - 1 fills the counter: the next write of 1 would block.
        rustix::io::write(&e, &(u64::MAX - 1).to_ne_bytes()).unwrap();
        let d = CallDeadline::for_this_thread().unwrap();
        d.arm(Duration::from_millis(20)).unwrap();
        let t0 = Instant::now();
        let r = crate::sys::fd::signal_eventfd(&e);
        let took = t0.elapsed();
        d.disarm().unwrap();
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::Interrupted);
        assert!(took >= Duration::from_millis(15), "{took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
        // Drained, the same eventfd takes writes again, armed or not.
        assert_eq!(e.drain().unwrap(), u64::MAX - 1);
        d.arm(Duration::from_millis(20)).unwrap();
        crate::sys::fd::signal_eventfd(&e).unwrap();
        d.disarm().unwrap();
        assert_eq!(e.drain().unwrap(), 1);
    }
}
