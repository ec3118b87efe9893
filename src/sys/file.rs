//! What a descriptor really is: the questions the host agent asks of every descriptor a
//! vfio-user client hands it, before trusting it — fstat(2) (type, size), fcntl(2)
//! `F_GET_SEALS` (memfd_create(2) file seals), fstatfs(2) (hugetlbfs or not), the
//! `/proc/thread-self/fd/N` link (an eventfd's is `anon_inode:[eventfd]`, proc(5)), and the
//! kernel's overcommit policy (`/proc/sys/vm/overcommit_memory`, proc_sys_vm(5)).

use std::io;
use std::os::fd::{AsFd, AsRawFd};

use rustix::fs::{fcntl_get_seals, fstat, fstatfs, FileType, SealFlags};

/// `HUGETLBFS_MAGIC` of `<linux/magic.h>`: the `f_type` of a hugetlbfs file (and of a
/// `MFD_HUGETLB` memfd).
const HUGETLBFS_MAGIC: u64 = 0x9584_58f6;

/// The seals of a file (memfd_create(2) "File sealing").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Seals {
    /// `F_SEAL_SEAL`: the set cannot change any more.
    pub seal: bool,
    /// `F_SEAL_SHRINK`: the file cannot become smaller.
    pub shrink: bool,
    /// `F_SEAL_GROW`: the file cannot become larger.
    pub grow: bool,
    /// `F_SEAL_WRITE`: the contents cannot change.
    pub write: bool,
    /// `F_SEAL_FUTURE_WRITE`: no new writable mapping or write.
    pub future_write: bool,
}

/// The seals of `fd`, or `None` when its file system does not support sealing (only shmem and
/// hugetlbfs files do; a memfd created without `MFD_ALLOW_SEALING` reports `F_SEAL_SEAL`).
pub fn seals(fd: impl AsFd) -> io::Result<Option<Seals>> {
    match fcntl_get_seals(fd) {
        Ok(s) => Ok(Some(Seals {
            seal: s.contains(SealFlags::SEAL),
            shrink: s.contains(SealFlags::SHRINK),
            grow: s.contains(SealFlags::GROW),
            write: s.contains(SealFlags::WRITE),
            future_write: s.contains(SealFlags::FUTURE_WRITE),
        })),
        Err(rustix::io::Errno::INVAL) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// What kind of file a descriptor refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// A regular file (also a memfd, a tmpfs or hugetlbfs file) of this many bytes.
    Regular {
        /// `st_size`.
        size: u64,
    },
    /// Anything else: "directory", "character device", "block device", "fifo", "socket",
    /// "symlink", or "unknown" (anonymous inodes such as eventfds).
    Other(&'static str),
}

/// The kind (and for a regular file the size) of `fd`, from fstat(2).
pub fn kind(fd: impl AsFd) -> io::Result<FileKind> {
    let st = fstat(fd)?;
    Ok(match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile => FileKind::Regular {
            // st_size of a regular file is never negative.
            size: u64::try_from(st.st_size).unwrap_or(0),
        },
        FileType::Directory => FileKind::Other("directory"),
        FileType::CharacterDevice => FileKind::Other("character device"),
        FileType::BlockDevice => FileKind::Other("block device"),
        FileType::Fifo => FileKind::Other("fifo"),
        FileType::Socket => FileKind::Other("socket"),
        FileType::Symlink => FileKind::Other("symlink"),
        FileType::Unknown => FileKind::Other("unknown"),
    })
}

/// Whether `fd` is a file on hugetlbfs (a hugetlbfs mount or an `MFD_HUGETLB` memfd), from
/// fstatfs(2).
pub fn on_hugetlbfs(fd: impl AsFd) -> io::Result<bool> {
    let s = fstatfs(fd)?;
    // f_type is a signed word on some ABIs; the magic number is compared as its bit pattern.
    Ok(s.f_type as u64 & 0xffff_ffff == HUGETLBFS_MAGIC)
}

/// The target of `/proc/thread-self/fd/N`: `anon_inode:[eventfd]`, `pipe:[1234]`,
/// `/memfd:guest (deleted)`…
pub fn fd_link(fd: impl AsFd) -> io::Result<std::path::PathBuf> {
    let n = fd.as_fd().as_raw_fd();
    std::fs::read_link(format!("/proc/thread-self/fd/{n}"))
}

/// Whether `fd` is an eventfd (eventfd(2)). An anonymous inode has no file type of its own,
/// so the proc link's name is the one reliable test; without `/proc` the answer is an error.
pub fn is_eventfd(fd: impl AsFd) -> io::Result<bool> {
    Ok(fd_link(fd)?.as_os_str() == "anon_inode:[eventfd]")
}

/// Whether the kernel refuses to overcommit memory (`vm.overcommit_memory = 2`). Then even
/// refilling a punched hole in a shmem file can fail with `ENOSPC`, which a page fault turns
/// into SIGBUS. An unreadable setting counts as strict (the careful answer).
pub fn strict_overcommit() -> bool {
    match std::fs::read_to_string("/proc/sys/vm/overcommit_memory") {
        Ok(s) => s.trim() == "2",
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::OwnedFd;

    fn memfd(flags: rustix::fs::MemfdFlags) -> std::fs::File {
        std::fs::File::from(rustix::fs::memfd_create("t", flags).unwrap())
    }

    fn pipe() -> (OwnedFd, OwnedFd) {
        use std::os::fd::FromRawFd;
        let mut p = [0; 2];
        // SAFETY: pipe2(2) writes two new descriptors into the array, which we then own.
        assert_eq!(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: both were just created and are owned by nothing else.
        unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) }
    }

    #[test]
    fn seals_of_memfds_and_other_files() {
        use rustix::fs::{fcntl_add_seals, MemfdFlags};
        let f = memfd(MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING);
        assert_eq!(seals(&f).unwrap(), Some(Seals::default()));
        fcntl_add_seals(&f, SealFlags::SHRINK | SealFlags::GROW).unwrap();
        let s = seals(&f).unwrap().unwrap();
        assert!(s.shrink && s.grow && !s.seal && !s.write);
        // Without MFD_ALLOW_SEALING the set is frozen empty.
        let g = memfd(MemfdFlags::CLOEXEC);
        let s = seals(&g).unwrap().unwrap();
        assert!(s.seal && !s.shrink);
        // A pipe cannot be sealed at all.
        let (r, _w) = pipe();
        assert_eq!(seals(&r).unwrap(), None);
    }

    #[test]
    fn kinds_and_sizes() {
        let f = memfd(rustix::fs::MemfdFlags::CLOEXEC);
        f.set_len(12345).unwrap();
        assert_eq!(kind(&f).unwrap(), FileKind::Regular { size: 12345 });
        assert!(!on_hugetlbfs(&f).unwrap());
        let (r, _w) = pipe();
        assert_eq!(kind(&r).unwrap(), FileKind::Other("fifo"));
        let e = crate::sys::EventFd::new().unwrap();
        assert_eq!(kind(&e).unwrap(), FileKind::Other("unknown"));
    }

    #[test]
    fn only_an_eventfd_is_an_eventfd() {
        let e = crate::sys::EventFd::new().unwrap();
        assert!(is_eventfd(&e).unwrap());
        let t = crate::sys::TimerFd::new().unwrap();
        assert!(!is_eventfd(&t).unwrap());
        let (r, w) = pipe();
        assert!(!is_eventfd(&r).unwrap() && !is_eventfd(&w).unwrap());
        let f = memfd(rustix::fs::MemfdFlags::CLOEXEC);
        assert!(!is_eventfd(&f).unwrap());
        assert!(fd_link(&f).unwrap().to_string_lossy().contains("memfd:t"));
    }
}
