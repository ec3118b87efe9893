//! Interrupt delivery to a vfio-user client: the eventfds of `VFIO_USER_DEVICE_SET_IRQS`
//! (vfio-user.rst "VFIO_USER_DEVICE_SET_IRQS", Linux `struct vfio_irq_set` semantics).
//!
//! The device side calls [`Interrupts::trigger`] (MSI / MSI-X vector, or INTx assert) from any
//! thread; the client side configures eventfds, masks and unmasks through SET_IRQS. INTx is
//! level-triggered and automasked as in Linux VFIO: a delivered INTx masks itself until the
//! client unmasks it, and an unmask while the line is still asserted delivers again.

use crate::sync::MutexExt;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

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
}

#[derive(Debug, Default)]
struct Vector {
    fd: Option<OwnedFd>,
    masked: bool,
    pending: bool,
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
    delivered: AtomicU64,
    held: AtomicU64,
}

fn signal(fd: &OwnedFd) -> bool {
    crate::sys::fd::signal_eventfd(fd).is_ok()
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
            delivered: AtomicU64::new(0),
            held: AtomicU64::new(0),
        }
    }

    /// Vectors of an index.
    pub fn count(&self, index: IrqIndex) -> u32 {
        self.counts[index as usize]
    }

    /// Interrupts delivered to an eventfd so far.
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
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
        if v.masked || v.fd.is_none() {
            v.pending = true;
            self.held.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let ok = v.fd.as_ref().is_some_and(signal);
        if ok {
            self.delivered.fetch_add(1, Ordering::Relaxed);
            v.pending = false;
            if automask {
                v.masked = true;
            }
        }
        ok
    }

    /// Raise `vector` of `index` (an MSI/MSI-X write from the card, or INTx assert).
    /// Returns whether an eventfd was signalled now.
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
                        v.fd = Some(fd);
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
    use std::time::Duration;

    const NOW: Duration = Duration::from_millis(0);

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
        assert_eq!(a.wait_timeout(NOW).unwrap(), 0);
        assert_eq!(b.wait_timeout(NOW).unwrap(), 1);
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
        assert_eq!(c.wait_timeout(NOW).unwrap(), 1);
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
        assert_eq!(e.wait_timeout(NOW).unwrap(), 1);
        // Masked now: a second assert is held.
        assert!(!irqs.set_intx(true));
        // Unmask while still asserted: delivered again.
        irqs.set_irqs(DATA_NONE | ACTION_UNMASK, 0, 0, 1, &[], vec![])
            .unwrap();
        assert_eq!(e.wait_timeout(NOW).unwrap(), 1);
        irqs.set_intx(false);
        irqs.set_irqs(DATA_NONE | ACTION_UNMASK, 0, 0, 1, &[], vec![])
            .unwrap();
        assert_eq!(e.wait_timeout(NOW).unwrap(), 0);
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
}
