//! System calls, in one place: small safe wrappers over the Linux interfaces the crate uses.
//!
//! * [`deadline`] — a per-thread timer signal that ends a system call blocked too long
//!   (timer_create(2) `SIGEV_THREAD_ID`), for writes to descriptors a client controls.
//! * [`fd`] — eventfd(2) ([`EventFd`]), timerfd_create(2) ([`TimerFd`]), ppoll(2)
//!   ([`fd::wait_readable`]), fallocate(2) hole punching.
//! * [`file`](mod@file) — what a descriptor really is: fstat(2) type and size, memfd seals
//!   (`F_GET_SEALS`), fstatfs(2) for hugetlbfs, the proc link that names an eventfd.
//! * [`mmap`] — shared mmap(2) of a file ([`SharedMapping`]), copied in and out with bounds and
//!   protection checked; through process_vm_readv(2)/process_vm_writev(2) when the file may
//!   lose pages under the mapping, so that never raises SIGBUS.
//! * [`socket`] — `SCM_RIGHTS` descriptor passing on AF_UNIX sockets (unix(7)), socket buffer
//!   sizes (socket(7)).
//! * [`packet`] — AF_PACKET raw sockets bound to one interface and EtherType (packet(7)).
//! * [`process`] — termination signals, SIGTERM to a child, entering a network namespace.
//!
//! Most calls go through [`rustix`], which already gives them a safe, typed API; where it has
//! none (sockaddr_ll, PACKET_IGNORE_OUTGOING, ppoll on descriptor numbers, signals, namespaces)
//! `libc` is called directly. This module is the only place in the crate allowed `unsafe`
//! (the crate root denies it elsewhere); every `unsafe` block has its `// SAFETY:` argument.
//! Errors are [`std::io::Error`]: the errno when the kernel refused, otherwise a [`SysError`]
//! inside it (`get_ref()` downcasts to it), with the kind that fits.
//!
//! A leaf utility: it imports nothing from the crate, and every layer may use it.

#![allow(unsafe_code)]

pub mod deadline;
pub mod fd;
pub mod file;
pub mod mmap;
pub mod packet;
pub mod process;
pub mod socket;

pub use fd::{EventFd, TimerFd};

use std::io;

/// What went wrong in a call when it is not an errno: an argument the call cannot take, or
/// an answer from the kernel that breaks the call's contract.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SysError {
    /// An eventfd or timerfd read gave a counter of another size.
    #[error("counter read returned {0} bytes, not 8")]
    ShortCounterRead(usize),
    /// An eventfd write took another number of bytes.
    #[error("eventfd write took {0} bytes, not 8")]
    ShortCounterWrite(usize),
    /// A timer deadline beyond what a timespec holds.
    #[error("timer too far away")]
    TimerRange,
    /// A zero-length mapping.
    #[error("empty mapping")]
    EmptyMapping,
    /// mmap(2) succeeded with a null address.
    #[error("mmap returned a null mapping")]
    NullMapping,
    /// A volatile mapping where the guarded copy (process_vm_readv/writev) is refused.
    #[error(
        "process_vm_readv/writev are not available (seccomp?): cannot copy safely from a file \
         that may shrink"
    )]
    NoGuardedCopy,
    /// An access the mapping's protection forbids.
    #[error("mapping protection forbids this access")]
    Protection,
    /// An access outside the mapping.
    #[error("{len} bytes at offset {offset:#x} do not fit a {size:#x}-byte mapping")]
    OutsideMapping {
        /// Bytes asked for.
        len: usize,
        /// Where.
        offset: usize,
        /// The mapping's length.
        size: usize,
    },
    /// An interface name with a NUL byte.
    #[error("NUL in interface name")]
    NulInName,
    /// No network interface of this name.
    #[error("no interface {0}")]
    NoInterface(String),
    /// EtherType 0 (it names no protocol).
    #[error("EtherType 0")]
    EtherTypeZero,
    /// An interface index beyond a C int.
    #[error("interface index {0} out of range")]
    InterfaceIndex(u32),
    /// A process id beyond a pid_t.
    #[error("pid {0} out of range")]
    PidRange(u32),
}

impl SysError {
    /// As the [`io::Error`] of kind `kind` the calls return.
    pub(crate) fn io(self, kind: io::ErrorKind) -> io::Error {
        io::Error::new(kind, self)
    }
}
pub use mmap::{Backing, Protection, SharedMapping};
pub use packet::PacketSocket;
