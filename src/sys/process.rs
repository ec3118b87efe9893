//! Process-level calls: SIGINT/SIGTERM as a stop flag (sigaction(2)), SIGTERM to a child
//! (kill(2)), and moving a thread into a network namespace the way `ip netns exec` does
//! (setns(2), unshare(2), mount(2)).

use super::SysError;
use std::io;
use std::os::fd::AsRawFd;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};

/// The flag the termination handler sets (null: none installed).
static STOP_FLAG: AtomicPtr<AtomicBool> = AtomicPtr::new(ptr::null_mut());

extern "C" fn on_terminate_signal(_: libc::c_int) {
    // Async-signal-safe: one atomic load and one atomic store.
    let flag = STOP_FLAG.load(Ordering::SeqCst);
    // SAFETY: the pointer is null or came from a `&'static AtomicBool` in `on_terminate`, so
    // it is valid for the whole program.
    if let Some(flag) = unsafe { flag.as_ref() } {
        flag.store(true, Ordering::SeqCst);
    }
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// On SIGINT or SIGTERM, set `flag` (and nothing else: the program polls it and shuts down
/// cleanly). A later call replaces the flag. Interrupted system calls restart (`SA_RESTART`,
/// as signal(3) does on Linux).
pub fn on_terminate(flag: &'static AtomicBool) -> io::Result<()> {
    STOP_FLAG.store(ptr::from_ref(flag).cast_mut(), Ordering::SeqCst);
    let handler: extern "C" fn(libc::c_int) = on_terminate_signal;
    // SAFETY: sigaction is plain old data, for which all zero bytes are valid (an empty mask,
    // no flags); we then set a handler that is async-signal-safe (it touches two atomics only).
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = handler as libc::sighandler_t;
    sa.sa_flags = libc::SA_RESTART;
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: `sa` is a valid sigaction that outlives the call; a null old-action pointer
        // is allowed.
        check(unsafe { libc::sigaction(sig, &sa, ptr::null_mut()) })?;
    }
    Ok(())
}

/// Ask a child process to terminate (SIGTERM).
pub fn terminate(child: &std::process::Child) -> io::Result<()> {
    let pid = libc::pid_t::try_from(child.id())
        .map_err(|_| SysError::PidRange(child.id()).io(io::ErrorKind::InvalidInput))?;
    // SAFETY: kill(2) only takes numbers and touches no memory of ours. The pid is our own
    // child's, which stays reserved for us until we reap it.
    check(unsafe { libc::kill(pid, libc::SIGTERM) })
}

/// Move the calling thread into network namespace `netns` (a file under `/run/netns`) with a
/// mount namespace of its own in which `/sys` is a fresh sysfs, as `ip netns exec` does, so
/// `/sys/class/net` lists the namespace's interfaces. Sockets the thread creates afterwards
/// live in that namespace. Only this thread changes: it stops sharing its filesystem
/// attributes (`CLONE_FS`) before its mounts change. Needs `CAP_SYS_ADMIN`.
pub fn enter_netns(netns: &std::fs::File) -> io::Result<()> {
    // SAFETY: setns(2) on a descriptor we hold open; it changes this thread's namespace only.
    check(unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) })?;
    // SAFETY: plain flags; it detaches this thread's fs attributes and mount namespace.
    check(unsafe { libc::unshare(libc::CLONE_FS | libc::CLONE_NEWNS) })?;
    // SAFETY: the path is a NUL-terminated literal and the null arguments are allowed for a
    // propagation change (make every mount a slave, so nothing we do leaks out).
    check(unsafe {
        libc::mount(
            ptr::null(),
            c"/".as_ptr(),
            ptr::null(),
            libc::MS_SLAVE | libc::MS_REC,
            ptr::null(),
        )
    })?;
    // SAFETY: a NUL-terminated literal path; a lazy unmount in our private mount namespace.
    check(unsafe { libc::umount2(c"/sys".as_ptr(), libc::MNT_DETACH) })?;
    // SAFETY: NUL-terminated literals for source, target and type; no mount data.
    check(unsafe {
        libc::mount(
            c"sysfs".as_ptr(),
            c"/sys".as_ptr(),
            c"sysfs".as_ptr(),
            0,
            ptr::null(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn termination_signal_sets_the_flag() {
        static FLAG: AtomicBool = AtomicBool::new(false);
        on_terminate(&FLAG).unwrap();
        assert!(!FLAG.load(Ordering::SeqCst));
        // SAFETY: raise(3) only takes a number; the handler installed above catches it.
        assert_eq!(unsafe { libc::raise(libc::SIGTERM) }, 0);
        assert!(FLAG.load(Ordering::SeqCst));
    }

    #[test]
    fn terminate_stops_a_child() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        terminate(&child).unwrap();
        let t0 = Instant::now();
        let status = child.wait().unwrap();
        assert!(t0.elapsed() < Duration::from_secs(10));
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGTERM));
    }
}
