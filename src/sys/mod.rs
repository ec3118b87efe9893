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
//! Errors are [`std::io::Error`].
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
pub use mmap::{Backing, Protection, SharedMapping};
pub use packet::PacketSocket;
