//! Descriptors that count and wait: eventfd(2), timerfd_create(2), ppoll(2) (on a fixed array
//! or a reusable [`PollSet`]), and hole
//! punching with fallocate(2).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::Duration;

use super::SysError;

use rustix::event::{eventfd, EventfdFlags};
use rustix::fs::{fallocate, FallocateFlags};
use rustix::time::{
    timerfd_create, timerfd_settime, Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags,
    Timespec,
};

/// Read the 8-byte counter of an eventfd or timerfd. `Ok(0)` when a non-blocking one has
/// nothing to read.
fn read_counter(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let mut b = [0u8; 8];
    match rustix::io::read(fd, &mut b) {
        Ok(8) => Ok(u64::from_ne_bytes(b)),
        Ok(n) => Err(SysError::ShortCounterRead(n).io(io::ErrorKind::InvalidData)),
        Err(rustix::io::Errno::AGAIN) => Ok(0),
        Err(e) => Err(e.into()),
    }
}

/// Add 1 to the counter of an eventfd (eventfd(2)): signal whoever waits on it. Used for the
/// eventfds a vfio-user client hands over as well as for our own.
pub fn signal_eventfd(fd: impl AsFd) -> io::Result<()> {
    match rustix::io::write(fd, &1u64.to_ne_bytes())? {
        8 => Ok(()),
        n => Err(SysError::ShortCounterWrite(n).io(io::ErrorKind::WriteZero)),
    }
}

/// A Linux eventfd (close-on-exec; non-semaphore).
#[derive(Debug)]
pub struct EventFd(OwnedFd);

impl EventFd {
    /// A blocking eventfd with counter 0.
    pub fn new() -> io::Result<Self> {
        Ok(Self(eventfd(0, EventfdFlags::CLOEXEC)?))
    }

    /// A non-blocking eventfd with counter 0 ([`drain`](Self::drain) never waits).
    pub fn new_nonblocking() -> io::Result<Self> {
        Ok(Self(eventfd(
            0,
            EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK,
        )?))
    }

    /// Add 1 to the counter.
    pub fn signal(&self) -> io::Result<()> {
        signal_eventfd(&self.0)
    }

    /// Read and reset the counter. On a non-blocking eventfd, `Ok(0)` if it was zero; on a
    /// blocking one this waits for a signal.
    pub fn drain(&self) -> io::Result<u64> {
        read_counter(self.0.as_fd())
    }

    /// Wait up to `timeout` for the counter to become non-zero; return and reset it (0 if the
    /// time ran out).
    pub fn wait_timeout(&self, timeout: Duration) -> io::Result<u64> {
        let [ready] = wait_readable([self.0.as_raw_fd()], timeout)?;
        if !ready {
            return Ok(0);
        }
        self.drain()
    }

    /// Duplicate the descriptor (to hand one copy away).
    pub fn try_clone_fd(&self) -> io::Result<OwnedFd> {
        self.0.try_clone()
    }
}

impl AsFd for EventFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl AsRawFd for EventFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// A one-shot CLOCK_MONOTONIC timerfd (non-blocking, close-on-exec): nanosecond timeouts in
/// an epoll set, whose own timeout has millisecond granularity.
#[derive(Debug)]
pub struct TimerFd(OwnedFd);

impl TimerFd {
    /// A disarmed timer.
    pub fn new() -> io::Result<Self> {
        Ok(Self(timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
        )?))
    }

    /// Fire once, `after` from now (at least 1 ns: a zero value would disarm it).
    pub fn arm_once(&self, after: Duration) -> io::Result<()> {
        let after = after.max(Duration::from_nanos(1));
        let value = Timespec::try_from(after)
            .map_err(|_| SysError::TimerRange.io(io::ErrorKind::InvalidInput))?;
        let spec = Itimerspec {
            it_interval: Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: value,
        };
        timerfd_settime(&self.0, TimerfdTimerFlags::empty(), &spec)?;
        Ok(())
    }

    /// Consume the expirations (0 if it has not fired), so it stops being readable.
    pub fn clear(&self) -> io::Result<u64> {
        read_counter(self.0.as_fd())
    }
}

impl AsFd for TimerFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl AsRawFd for TimerFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// ppoll(2): wait up to `timeout` (nanosecond precision) until one of `fds` is readable.
/// Returns, per descriptor, whether it is ready: readable, or an error or hang-up condition
/// that its next read reports. A signal ends the wait early with nothing ready.
///
/// Takes descriptor numbers rather than borrowed descriptors because the socket drivers hand
/// their readiness descriptors around as numbers; the kernel only looks the numbers up, and a
/// closed one is reported ready (POLLNVAL) rather than touched.
pub fn wait_readable<const N: usize>(fds: [RawFd; N], timeout: Duration) -> io::Result<[bool; N]> {
    let mut pfds = fds.map(|fd| libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    });
    let ts = libc::timespec {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `pfds` is a live array of exactly N pollfd structures, which the kernel reads
    // and whose `revents` it writes; `ts` is a valid timespec that outlives the call; a null
    // signal mask leaves the thread's mask alone.
    let r = unsafe { libc::ppoll(pfds.as_mut_ptr(), N as libc::nfds_t, &ts, std::ptr::null()) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok([false; N]);
        }
        return Err(e);
    }
    Ok(pfds.map(|p| p.revents != 0))
}

/// A reusable ppoll(2) set over any number of descriptors: [`PollSet::wait`] reports which are
/// readable without allocating (for a thread that waits on many eventfds, e.g. one per MSI-X
/// vector). The set holds descriptor numbers; the caller keeps the descriptors open while it
/// uses the set (a closed one is reported ready, POLLNVAL, never touched).
#[derive(Debug)]
pub struct PollSet {
    pfds: Vec<libc::pollfd>,
}

impl PollSet {
    /// A set over `fds`, in that order.
    pub fn new(fds: &[RawFd]) -> Self {
        Self {
            pfds: fds
                .iter()
                .map(|&fd| libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect(),
        }
    }

    /// Wait up to `timeout` until one of the descriptors is readable (or in error or hang-up).
    /// Afterwards [`ready`](Self::ready) tells which. A signal ends the wait with none ready.
    pub fn wait(&mut self, timeout: Duration) -> io::Result<()> {
        for p in &mut self.pfds {
            p.revents = 0;
        }
        let ts = libc::timespec {
            tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        // SAFETY: `pfds` is a live, exclusively borrowed vector of exactly `len()` pollfd
        // structures, which the kernel reads and whose `revents` it writes; `ts` is a valid
        // timespec that outlives the call; a null signal mask leaves the thread's mask alone.
        let r = unsafe {
            libc::ppoll(
                self.pfds.as_mut_ptr(),
                self.pfds.len() as libc::nfds_t,
                &ts,
                std::ptr::null(),
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        Ok(())
    }

    /// Whether descriptor `i` (its position in [`new`](Self::new)) was ready at the last wait.
    pub fn ready(&self, i: usize) -> bool {
        self.pfds.get(i).is_some_and(|p| p.revents != 0)
    }

    /// Number of descriptors in the set.
    pub fn len(&self) -> usize {
        self.pfds.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.pfds.is_empty()
    }
}

/// Deallocate `len` bytes at `offset` of a file (fallocate(2) `FALLOC_FL_PUNCH_HOLE`, keeping
/// the size): the range reads back as zeroes. Filesystems without hole punching answer
/// `EOPNOTSUPP`.
pub fn punch_hole(file: &std::fs::File, offset: u64, len: u64) -> io::Result<()> {
    fallocate(
        file,
        FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
        offset,
        len,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn eventfd_counts_and_wakes() {
        let e = EventFd::new_nonblocking().unwrap();
        assert_eq!(e.drain().unwrap(), 0);
        e.signal().unwrap();
        e.signal().unwrap();
        assert_eq!(
            wait_readable([e.as_raw_fd()], Duration::ZERO).unwrap(),
            [true]
        );
        assert_eq!(e.drain().unwrap(), 2);
        assert_eq!(e.wait_timeout(Duration::from_millis(1)).unwrap(), 0);
        // A copy handed away signals the same counter.
        signal_eventfd(e.try_clone_fd().unwrap()).unwrap();
        assert_eq!(e.wait_timeout(Duration::from_secs(1)).unwrap(), 1);
    }

    #[test]
    fn poll_set_reports_exactly_the_ready_descriptors() {
        let fds: Vec<EventFd> = (0..5)
            .map(|_| EventFd::new_nonblocking().unwrap())
            .collect();
        let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        let mut set = PollSet::new(&raw);
        assert_eq!(set.len(), 5);
        set.wait(Duration::from_millis(1)).unwrap();
        assert!((0..5).all(|i| !set.ready(i)));
        fds[1].signal().unwrap();
        fds[4].signal().unwrap();
        set.wait(Duration::from_secs(1)).unwrap();
        let ready: Vec<usize> = (0..5).filter(|&i| set.ready(i)).collect();
        assert_eq!(ready, [1, 4]);
        assert!(!set.ready(99));
    }

    #[test]
    fn timer_fires_once_after_its_delay() {
        let t = TimerFd::new().unwrap();
        assert_eq!(t.clear().unwrap(), 0);
        let t0 = Instant::now();
        t.arm_once(Duration::from_micros(300)).unwrap();
        let [ready] = wait_readable([t.as_raw_fd()], Duration::from_secs(1)).unwrap();
        assert!(ready);
        assert!(t0.elapsed() >= Duration::from_micros(300));
        assert_eq!(t.clear().unwrap(), 1);
        assert_eq!(
            wait_readable([t.as_raw_fd()], Duration::ZERO).unwrap(),
            [false]
        );
    }

    #[test]
    fn wait_reports_which_descriptor_is_ready() {
        let (a, b) = (
            EventFd::new_nonblocking().unwrap(),
            EventFd::new_nonblocking().unwrap(),
        );
        b.signal().unwrap();
        let t0 = Instant::now();
        assert_eq!(
            wait_readable([a.as_raw_fd(), b.as_raw_fd()], Duration::from_secs(1)).unwrap(),
            [false, true]
        );
        assert!(t0.elapsed() < Duration::from_millis(500));
        // Nothing ready: the timeout runs out.
        b.drain().unwrap();
        let t0 = Instant::now();
        assert_eq!(
            wait_readable([a.as_raw_fd(), b.as_raw_fd()], Duration::from_millis(5)).unwrap(),
            [false, false]
        );
        assert!(t0.elapsed() >= Duration::from_millis(5));
    }

    #[test]
    fn punched_hole_reads_back_as_zeroes() {
        use std::os::unix::fs::FileExt;
        let f = tempfile::tempfile().unwrap();
        f.write_all_at(&[0xab; 16384], 0).unwrap();
        match punch_hole(&f, 4096, 4096) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                eprintln!("SKIP: the temp directory's filesystem cannot punch holes");
                return;
            }
            Err(e) => panic!("{e}"),
        }
        let mut b = vec![0u8; 16384];
        f.read_exact_at(&mut b, 0).unwrap();
        assert!(b[..4096].iter().all(|&x| x == 0xab));
        assert!(b[4096..8192].iter().all(|&x| x == 0));
        assert!(b[8192..].iter().all(|&x| x == 0xab));
        assert_eq!(f.metadata().unwrap().len(), 16384);
    }
}
