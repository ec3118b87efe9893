//! Interrupt delivery to a vfio-user client: the eventfds of `VFIO_USER_DEVICE_SET_IRQS`
//! (vfio-user.rst "VFIO_USER_DEVICE_SET_IRQS", Linux `struct vfio_irq_set` semantics).
//!
//! The device side calls [`Interrupts::trigger`] (MSI / MSI-X vector, or INTx assert) from any
//! thread; the client side configures eventfds, masks and unmasks through SET_IRQS. INTx is
//! level-triggered and automasked as in Linux VFIO: a delivered INTx masks itself until the
//! client unmasks it, and an unmask while the line is still asserted delivers again.
//!
//! The client is not trusted (docs/security.md, "The host agent and its consumers"):
//!
//! * SET_IRQS takes **only eventfds**: every descriptor is checked (its `/proc` link names an
//!   eventfd) before any is used, and a request with anything else (a pipe, a socket, a file)
//!   is refused whole with `EINVAL`.
//! * **Delivery never blocks the caller.** An eventfd write blocks when its counter is full,
//!   and both the counter and the descriptor's `O_NONBLOCK` flag belong to the client, which
//!   can fill the one and clear the other at any time. So [`Interrupts::trigger`] only marks
//!   the vector ready; the function's own delivery thread writes the eventfds, under a
//!   [`CallDeadline`] that ends a write blocked for [`Interrupts::WRITE_DEADLINE`]. A write that
//!   would block loses nothing — the counter is already non-zero, the client already has an
//!   interrupt to read — so it is counted ([`Interrupts::full`]) and skipped. A vector already
//!   waiting to be written is not queued twice, so the queue holds at most one entry per
//!   vector however fast the card fires.

use crate::sync::{CondvarExt, MutexExt};
use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::ratelimit::LogLimiter;
use crate::sys::deadline::CallDeadline;
use crate::warn_limited;

/// A Linux eventfd, for tests and for API users that wait for interrupts.
pub use crate::sys::EventFd;

/// `VFIO_PCI_*_IRQ_INDEX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IrqIndex {
    /// Legacy INTx (index 0).
    Intx = 0,
    /// MSI (index 1).
    Msi = 1,
    /// MSI-X (index 2).
    Msix = 2,
    /// Error reporting (index 3).
    Err = 3,
    /// Device request (index 4).
    Req = 4,
}

impl IrqIndex {
    /// Number of IRQ indexes a vfio PCI device has.
    pub const COUNT: usize = 5;

    /// From the wire value.
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            0 => Self::Intx,
            1 => Self::Msi,
            2 => Self::Msix,
            3 => Self::Err,
            4 => Self::Req,
            _ => return None,
        })
    }
}

/// `VFIO_IRQ_INFO_*` flags.
pub mod info_flags {
    /// Eventfd signalling is supported.
    pub const EVENTFD: u32 = 1 << 0;
    /// MASK/UNMASK are supported.
    pub const MASKABLE: u32 = 1 << 1;
    /// The interrupt masks itself when it fires.
    pub const AUTOMASKED: u32 = 1 << 2;
    /// Vectors are set up as a set.
    pub const NORESIZE: u32 = 1 << 3;
}

/// `VFIO_IRQ_SET_*` flags.
pub mod set_flags {
    /// No data.
    pub const DATA_NONE: u32 = 1 << 0;
    /// One bool byte per vector.
    pub const DATA_BOOL: u32 = 1 << 1;
    /// Eventfds in the ancillary data.
    pub const DATA_EVENTFD: u32 = 1 << 2;
    /// Mask.
    pub const ACTION_MASK: u32 = 1 << 3;
    /// Unmask.
    pub const ACTION_UNMASK: u32 = 1 << 4;
    /// Trigger.
    pub const ACTION_TRIGGER: u32 = 1 << 5;
    /// All data bits.
    pub const DATA_MASK: u32 = DATA_NONE | DATA_BOOL | DATA_EVENTFD;
    /// All action bits.
    pub const ACTION_MASK_ALL: u32 = ACTION_MASK | ACTION_UNMASK | ACTION_TRIGGER;
}

/// Why a SET_IRQS request is refused (maps to an errno in the reply).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IrqError {
    /// Unknown IRQ index.
    #[error("no IRQ index {0}")]
    BadIndex(u32),
    /// Vectors beyond the index's count.
    #[error("vectors {start}..{start}+{count} exceed the {have} vectors of IRQ index {index}")]
    BadRange {
        /// Index.
        index: u32,
        /// First vector.
        start: u32,
        /// Count.
        count: u32,
        /// Vectors the index has.
        have: u32,
    },
    /// Not exactly one data flag and one action flag.
    #[error("SET_IRQS flags {0:#x} need exactly one data and one action flag")]
    BadFlags(u32),
    /// Eventfd count does not match the vector count.
    #[error("SET_IRQS passed {fds} eventfds for {count} vectors")]
    FdCount {
        /// Fds received.
        fds: usize,
        /// Vectors named.
        count: u32,
    },
    /// DATA_BOOL without one byte per vector.
    #[error("SET_IRQS bool data has {got} bytes for {count} vectors")]
    BoolData {
        /// Bytes received.
        got: usize,
        /// Vectors named.
        count: u32,
    },
    /// A combination this server does not implement (mask/unmask eventfds).
    #[error("SET_IRQS flags {0:#x} are not supported")]
    Unsupported(u32),
    /// A descriptor that is not an eventfd (a pipe, a socket, a file…).
    #[error("SET_IRQS descriptor for vector {vector} is not an eventfd")]
    NotEventfd {
        /// The vector it was meant for.
        vector: u32,
    },
    /// The descriptor could not be examined (`/proc` unavailable?): refused, not trusted.
    #[error("SET_IRQS descriptor for vector {vector} could not be checked: errno {errno}")]
    Unverifiable {
        /// The vector it was meant for.
        vector: u32,
        /// Why.
        errno: i32,
    },
}

/// An eventfd the client handed over, and whether it waits in the delivery queue.
#[derive(Debug)]
struct Notifier {
    fd: OwnedFd,
    queued: AtomicBool,
}

#[derive(Debug, Default)]
struct Vector {
    fd: Option<Arc<Notifier>>,
    masked: bool,
    pending: bool,
}

/// Eventfds ready to be written, and the delivery thread's state.
#[derive(Debug, Default)]
struct OutboxState {
    ready: VecDeque<Arc<Notifier>>,
    started: bool,
    closed: bool,
}

/// What the triggering side shares with the delivery thread.
#[derive(Debug, Default)]
struct Outbox {
    state: Mutex<OutboxState>,
    wake: Condvar,
    delivered: AtomicU64,
    full: AtomicU64,
    failed: AtomicU64,
    limit: LogLimiter,
}

impl Outbox {
    /// Queue `n` for a write, unless it already waits; start the thread on first use.
    fn post(self: &Arc<Self>, n: &Arc<Notifier>) {
        if n.queued.swap(true, Ordering::AcqRel) {
            return;
        }
        let mut st = self.state.lock_or_recover();
        if st.closed {
            return;
        }
        st.ready.push_back(n.clone());
        if !st.started {
            st.started = true;
            let me = self.clone();
            let spawned = std::thread::Builder::new()
                .name("vfio-user irq".into())
                .stack_size(64 << 10)
                .spawn(move || me.run());
            if let Err(e) = spawned {
                st.started = false;
                st.ready.clear();
                n.queued.store(false, Ordering::Release);
                self.failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "cannot start the interrupt delivery thread");
                return;
            }
        }
        drop(st);
        self.wake.notify_one();
    }

    /// The delivery thread: write every ready eventfd, a batch at a time, each write bounded.
    fn run(self: Arc<Self>) {
        let deadline = match CallDeadline::for_this_thread() {
            Ok(d) => Some(d),
            Err(e) => {
                tracing::error!(error = %e,
                    "no deadline for eventfd writes: a client's full eventfd may stall its interrupts");
                None
            }
        };
        let mut batch = VecDeque::new();
        loop {
            {
                let mut st = self.state.lock_or_recover();
                while st.ready.is_empty() && !st.closed {
                    st = self.wake.wait_or_recover(st);
                }
                if st.closed {
                    return;
                }
                std::mem::swap(&mut st.ready, &mut batch);
            }
            if let Some(d) = &deadline {
                let _ = d.arm(Interrupts::WRITE_DEADLINE);
            }
            for n in batch.drain(..) {
                // Cleared before the write: a trigger during it queues the vector again.
                n.queued.store(false, Ordering::Release);
                self.delivered.fetch_add(1, Ordering::Release);
                match crate::sys::fd::signal_eventfd(&n.fd) {
                    Ok(()) => {}
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock
                        ) =>
                    {
                        // The counter is full: the client has an interrupt to read already.
                        self.delivered.fetch_sub(1, Ordering::Relaxed);
                        self.full.fetch_add(1, Ordering::Relaxed);
                        warn_limited!(
                            self.limit,
                            "interrupt eventfd full (the client does not read it): write skipped"
                        );
                    }
                    Err(e) => {
                        self.delivered.fetch_sub(1, Ordering::Relaxed);
                        self.failed.fetch_add(1, Ordering::Relaxed);
                        warn_limited!(self.limit, error = %e, "interrupt eventfd write failed");
                    }
                }
            }
            if let Some(d) = &deadline {
                let _ = d.disarm();
            }
        }
    }
}

#[derive(Debug, Default)]
struct Lines {
    vectors: [Vec<Vector>; IrqIndex::COUNT],
    intx_asserted: bool,
}

/// The interrupt state of one function: per index, per vector, an eventfd and mask bits.
#[derive(Debug)]
pub struct Interrupts {
    lines: Mutex<Lines>,
    counts: [u32; IrqIndex::COUNT],
    outbox: Arc<Outbox>,
    held: AtomicU64,
}

impl Drop for Interrupts {
    fn drop(&mut self) {
        self.outbox.state.lock_or_recover().closed = true;
        self.outbox.wake.notify_all();
    }
}

/// Check that every descriptor is an eventfd (vector `start + i` for the `i`-th).
fn check_eventfds(start: u32, fds: &[OwnedFd]) -> Result<(), IrqError> {
    for (i, fd) in fds.iter().enumerate() {
        let vector = start.saturating_add(i as u32);
        match crate::sys::file::is_eventfd(fd) {
            Ok(true) => {}
            Ok(false) => return Err(IrqError::NotEventfd { vector }),
            Err(e) => {
                return Err(IrqError::Unverifiable {
                    vector,
                    errno: e.raw_os_error().unwrap_or(libc::EIO),
                })
            }
        }
    }
    Ok(())
}

impl Interrupts {
    /// A table with `counts[index]` vectors per index (e.g. `[1, 1, 16, 0, 0]`).
    pub fn new(counts: [u32; IrqIndex::COUNT]) -> Self {
        let mut lines = Lines::default();
        for (i, &c) in counts.iter().enumerate() {
            lines.vectors[i] = (0..c).map(|_| Vector::default()).collect();
        }
        Self {
            lines: Mutex::new(lines),
            counts,
            outbox: Arc::new(Outbox::default()),
            held: AtomicU64::new(0),
        }
    }

    /// How long the delivery thread lets one eventfd write block before giving up on it.
    pub const WRITE_DEADLINE: Duration = Duration::from_millis(10);

    /// Vectors of an index.
    pub fn count(&self, index: IrqIndex) -> u32 {
        self.counts[index as usize]
    }

    /// Interrupts signalled to an eventfd so far (counted as the write is made, so by the
    /// time the client sees one it is counted).
    pub fn delivered(&self) -> u64 {
        self.outbox.delivered.load(Ordering::Acquire)
    }

    /// Eventfd writes skipped because the client's counter was full (it does not read its
    /// eventfd; it has an interrupt pending already).
    pub fn full(&self) -> u64 {
        self.outbox.full.load(Ordering::Relaxed)
    }

    /// Eventfd writes that failed otherwise.
    pub fn failed(&self) -> u64 {
        self.outbox.failed.load(Ordering::Relaxed)
    }

    /// Interrupts that found no eventfd or a masked vector (held pending).
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }

    /// Whether `vector` of `index` has an eventfd.
    pub fn is_armed(&self, index: IrqIndex, vector: u32) -> bool {
        let l = self.lines.lock_or_recover();
        l.vectors[index as usize]
            .get(vector as usize)
            .is_some_and(|v| v.fd.is_some())
    }

    fn fire(&self, v: &mut Vector, automask: bool) -> bool {
        match &v.fd {
            Some(n) if !v.masked => {
                self.outbox.post(n);
                v.pending = false;
                if automask {
                    v.masked = true;
                }
                true
            }
            _ => {
                v.pending = true;
                self.held.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Raise `vector` of `index` (an MSI/MSI-X write from the card, or INTx assert).
    /// Returns whether it goes to an eventfd (written by the delivery thread, at once unless
    /// the client's eventfd is full); `false` if it is held (masked or no eventfd). Never
    /// blocks.
    pub fn trigger(&self, index: IrqIndex, vector: u32) -> bool {
        let mut l = self.lines.lock_or_recover();
        if index == IrqIndex::Intx {
            l.intx_asserted = true;
        }
        match l.vectors[index as usize].get_mut(vector as usize) {
            Some(v) => self.fire(v, index == IrqIndex::Intx),
            None => false,
        }
    }

    /// An INTx Assert/Deassert message from the card.
    pub fn set_intx(&self, asserted: bool) -> bool {
        if asserted {
            self.trigger(IrqIndex::Intx, 0)
        } else {
            let mut l = self.lines.lock_or_recover();
            l.intx_asserted = false;
            if let Some(v) = l.vectors[0].get_mut(0) {
                v.pending = false;
            }
            false
        }
    }

    /// Apply a `VFIO_USER_DEVICE_SET_IRQS` request. `data` is the optional bool array.
    pub fn set_irqs(
        &self,
        flags: u32,
        index: u32,
        start: u32,
        count: u32,
        data: &[u8],
        fds: Vec<OwnedFd>,
    ) -> Result<(), IrqError> {
        use set_flags::*;
        let idx = IrqIndex::from_u32(index).ok_or(IrqError::BadIndex(index))?;
        let data_flag = flags & DATA_MASK;
        let action = flags & ACTION_MASK_ALL;
        if data_flag.count_ones() != 1 || action.count_ones() != 1 || flags & !0x3f != 0 {
            return Err(IrqError::BadFlags(flags));
        }
        let have = self.counts[idx as usize];
        let end = start.checked_add(count).filter(|&e| e <= have);
        let end = match end {
            Some(e) => e,
            None => {
                return Err(IrqError::BadRange {
                    index,
                    start,
                    count,
                    have,
                })
            }
        };
        // Every descriptor is checked before any is used: refused as a whole.
        check_eventfds(start, &fds)?;
        let mut l = self.lines.lock_or_recover();
        let intx_asserted = l.intx_asserted;
        let automask = idx == IrqIndex::Intx;
        let vectors = &mut l.vectors[idx as usize];
        let selected = |i: u32| -> Result<bool, IrqError> {
            match data_flag {
                DATA_BOOL => {
                    data.get((i - start) as usize)
                        .map(|&b| b != 0)
                        .ok_or(IrqError::BoolData {
                            got: data.len(),
                            count,
                        })
                }
                _ => Ok(true),
            }
        };
        match (data_flag, action) {
            (DATA_EVENTFD, ACTION_TRIGGER) => {
                if fds.is_empty() {
                    for v in &mut vectors[start as usize..end as usize] {
                        v.fd = None;
                    }
                } else if fds.len() == count as usize {
                    for (v, fd) in vectors[start as usize..end as usize].iter_mut().zip(fds) {
                        v.fd = Some(Arc::new(Notifier {
                            fd,
                            queued: AtomicBool::new(false),
                        }));
                        v.masked = false;
                    }
                    for v in &mut vectors[start as usize..end as usize] {
                        if v.pending {
                            self.fire(v, automask);
                        }
                    }
                } else {
                    return Err(IrqError::FdCount {
                        fds: fds.len(),
                        count,
                    });
                }
            }
            (DATA_EVENTFD, _) => return Err(IrqError::Unsupported(flags)),
            (DATA_NONE, ACTION_TRIGGER) if count == 0 => {
                for v in vectors.iter_mut() {
                    *v = Vector::default();
                }
            }
            (_, ACTION_TRIGGER) => {
                for i in start..end {
                    if selected(i)? {
                        self.fire(&mut vectors[i as usize], automask);
                    }
                }
            }
            (_, ACTION_MASK) => {
                for i in start..end {
                    if selected(i)? {
                        vectors[i as usize].masked = true;
                    }
                }
            }
            (_, _) => {
                for i in start..end {
                    if selected(i)? {
                        let v = &mut vectors[i as usize];
                        v.masked = false;
                        let level = automask && intx_asserted;
                        if v.pending || level {
                            self.fire(v, automask);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Drop every eventfd and mask state (device reset, client gone).
    pub fn reset(&self) {
        let mut l = self.lines.lock_or_recover();
        for vs in l.vectors.iter_mut() {
            for v in vs.iter_mut() {
                *v = Vector::default();
            }
        }
        l.intx_asserted = false;
    }
}

#[cfg(test)]
mod tests {
    use super::set_flags::*;
    use super::*;

    /// Delivery is asynchronous (the delivery thread writes the eventfd): wait this long for
    /// one that is due.
    const SOON: Duration = Duration::from_secs(5);
    /// And this long to be sure one that is not due does not come.
    const NEVER: Duration = Duration::from_millis(50);

    #[test]
    fn msix_vector_signals_its_eventfd() {
        let irqs = Interrupts::new([1, 1, 4, 0, 0]);
        let (a, b) = (EventFd::new().unwrap(), EventFd::new().unwrap());
        irqs.set_irqs(
            DATA_EVENTFD | ACTION_TRIGGER,
            2,
            1,
            2,
            &[],
            vec![a.try_clone_fd().unwrap(), b.try_clone_fd().unwrap()],
        )
        .unwrap();
        assert!(irqs.trigger(IrqIndex::Msix, 2));
        assert_eq!(b.wait_timeout(SOON).unwrap(), 1);
        assert_eq!(a.wait_timeout(NEVER).unwrap(), 0);
        // Vector 0 has no eventfd: held, delivered once one is set.
        assert!(!irqs.trigger(IrqIndex::Msix, 0));
        let c = EventFd::new().unwrap();
        irqs.set_irqs(
            DATA_EVENTFD | ACTION_TRIGGER,
            2,
            0,
            1,
            &[],
            vec![c.try_clone_fd().unwrap()],
        )
        .unwrap();
        assert_eq!(c.wait_timeout(SOON).unwrap(), 1);
    }

    #[test]
    fn intx_is_automasked_and_level_triggered() {
        let irqs = Interrupts::new([1, 0, 0, 0, 0]);
        let e = EventFd::new().unwrap();
        irqs.set_irqs(
            DATA_EVENTFD | ACTION_TRIGGER,
            0,
            0,
            1,
            &[],
            vec![e.try_clone_fd().unwrap()],
        )
        .unwrap();
        assert!(irqs.set_intx(true));
        assert_eq!(e.wait_timeout(SOON).unwrap(), 1);
        // Masked now: a second assert is held.
        assert!(!irqs.set_intx(true));
        // Unmask while still asserted: delivered again.
        irqs.set_irqs(DATA_NONE | ACTION_UNMASK, 0, 0, 1, &[], vec![])
            .unwrap();
        assert_eq!(e.wait_timeout(SOON).unwrap(), 1);
        irqs.set_intx(false);
        irqs.set_irqs(DATA_NONE | ACTION_UNMASK, 0, 0, 1, &[], vec![])
            .unwrap();
        assert_eq!(e.wait_timeout(NEVER).unwrap(), 0);
    }

    #[test]
    fn bad_requests_are_refused() {
        let irqs = Interrupts::new([1, 1, 4, 0, 0]);
        assert_eq!(
            irqs.set_irqs(DATA_NONE | ACTION_TRIGGER, 9, 0, 1, &[], vec![]),
            Err(IrqError::BadIndex(9))
        );
        assert!(matches!(
            irqs.set_irqs(DATA_NONE | ACTION_TRIGGER, 2, 3, 2, &[], vec![]),
            Err(IrqError::BadRange { .. })
        ));
        assert!(matches!(
            irqs.set_irqs(DATA_NONE | DATA_BOOL | ACTION_TRIGGER, 2, 0, 1, &[], vec![]),
            Err(IrqError::BadFlags(_))
        ));
        assert!(matches!(
            irqs.set_irqs(DATA_BOOL | ACTION_TRIGGER, 2, 0, 2, &[1], vec![]),
            Err(IrqError::BoolData { .. })
        ));
        let e = EventFd::new().unwrap();
        assert!(matches!(
            irqs.set_irqs(
                DATA_EVENTFD | ACTION_TRIGGER,
                2,
                0,
                2,
                &[],
                vec![e.try_clone_fd().unwrap()]
            ),
            Err(IrqError::FdCount { fds: 1, count: 2 })
        ));
        assert!(matches!(
            irqs.set_irqs(u32::MAX, 2, 0, 2, &[], vec![]),
            Err(IrqError::BadFlags(_))
        ));
    }

    #[test]
    fn disable_all_drops_eventfds() {
        let irqs = Interrupts::new([0, 0, 2, 0, 0]);
        let e = EventFd::new().unwrap();
        irqs.set_irqs(
            DATA_EVENTFD | ACTION_TRIGGER,
            2,
            0,
            1,
            &[],
            vec![e.try_clone_fd().unwrap()],
        )
        .unwrap();
        assert!(irqs.is_armed(IrqIndex::Msix, 0));
        irqs.set_irqs(DATA_NONE | ACTION_TRIGGER, 2, 0, 0, &[], vec![])
            .unwrap();
        assert!(!irqs.is_armed(IrqIndex::Msix, 0));
        assert!(!irqs.trigger(IrqIndex::Msix, 0));
    }

    /// Anything but an eventfd is refused, and a request with one bad descriptor among good
    /// ones changes nothing.
    #[test]
    fn only_eventfds_are_taken() {
        let irqs = Interrupts::new([0, 0, 4, 0, 0]);
        let (sock, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
        let file = tempfile::tempfile().unwrap();
        let good = EventFd::new().unwrap();
        for bad in [OwnedFd::from(sock), OwnedFd::from(file)] {
            let r = irqs.set_irqs(
                DATA_EVENTFD | ACTION_TRIGGER,
                2,
                0,
                2,
                &[],
                vec![good.try_clone_fd().unwrap(), bad],
            );
            assert_eq!(r, Err(IrqError::NotEventfd { vector: 1 }));
        }
        assert!(!irqs.is_armed(IrqIndex::Msix, 0), "nothing was armed");
        let timer = crate::sys::TimerFd::new().unwrap();
        let t = OwnedFd::from(std::fs::File::from(rustix::io::dup(&timer).unwrap()));
        assert_eq!(
            irqs.set_irqs(DATA_EVENTFD | ACTION_TRIGGER, 2, 3, 1, &[], vec![t]),
            Err(IrqError::NotEventfd { vector: 3 })
        );
    }

    /// A client that fills its eventfd's counter (so a write would block) stalls neither the
    /// card's side nor its own later interrupts: triggers return at once, the writes that
    /// would block are skipped and counted, and once the client reads, delivery goes on.
    #[test]
    fn a_full_eventfd_never_blocks_the_trigger() {
        let irqs = Interrupts::new([0, 0, 2, 0, 0]);
        let full = EventFd::new().unwrap();
        let other = EventFd::new().unwrap();
        irqs.set_irqs(
            DATA_EVENTFD | ACTION_TRIGGER,
            2,
            0,
            2,
            &[],
            vec![full.try_clone_fd().unwrap(), other.try_clone_fd().unwrap()],
        )
        .unwrap();
        rustix::io::write(&full, &(u64::MAX - 1).to_ne_bytes()).unwrap();
        let t0 = std::time::Instant::now();
        for _ in 0..1000 {
            assert!(irqs.trigger(IrqIndex::Msix, 0));
        }
        assert!(
            t0.elapsed() < Duration::from_millis(500),
            "{:?}",
            t0.elapsed()
        );
        // The other vector, behind the stuck one in the same delivery thread, still arrives.
        assert!(irqs.trigger(IrqIndex::Msix, 1));
        assert_eq!(other.wait_timeout(SOON).unwrap(), 1);
        assert!(irqs.full() >= 1, "the blocked write was cut short");
        // The client reads its counter; the next interrupt is delivered normally (and a write
        // still waiting for room when it read completes then too).
        assert_eq!(full.drain().unwrap(), u64::MAX - 1);
        assert!(irqs.trigger(IrqIndex::Msix, 0));
        let n = full.wait_timeout(SOON).unwrap();
        assert!((1..=2).contains(&n), "{n}");
        assert_eq!(irqs.failed(), 0);
    }
}
