//! The Unix sockets the agent binds — its control socket, the VM control socket and every
//! function's vfio-user socket — all go through [`bind_socket`], so they follow one rule
//! (docs/host.md "Sockets"): a live socket at the path (somebody accepts) is refused, so is
//! anything that is not a socket, and only a stale socket (nobody listens) is replaced. The
//! socket appears at its path with its final mode already set, and is removed on the way out
//! only if the file is still the one bound ([`remove_if_ours`]).

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Identifies the socket file one bind created: (device, inode).
pub type SocketId = (u64, u64);

/// Why a socket could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// Another process answers on the path.
    #[error("{} is in use: another agent answers on it", .0.display())]
    Live(PathBuf),
    /// Something other than a socket is in the way.
    #[error("{} exists and is not a socket", .0.display())]
    NotASocket(PathBuf),
    /// Creating the directory, probing, binding, or renaming failed.
    #[error("{}: {what}: {source}", path.display())]
    Io {
        /// The socket path.
        path: PathBuf,
        /// What we were doing.
        what: &'static str,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// Whether somebody listens on the socket file at `path`: a non-blocking connect, so a live
/// server with a full backlog (`EAGAIN`) counts as live instead of hanging us. Only
/// `ECONNREFUSED` (bound by nobody) is stale; a failure we cannot read (`EACCES`: someone
/// else's socket) is an error, never a licence to replace it.
fn listening(path: &Path) -> std::io::Result<bool> {
    use rustix::io::Errno;
    use rustix::net::{AddressFamily, SocketFlags, SocketType};
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
        None,
    )?;
    let addr = rustix::net::SocketAddrUnix::new(path)?;
    match rustix::net::connect(&fd, &addr) {
        Ok(()) | Err(Errno::AGAIN) | Err(Errno::INPROGRESS) => Ok(true),
        Err(Errno::CONNREFUSED) | Err(Errno::NOENT) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Bind a Unix listening socket at `path` with permission bits `mode` (0600 for the control
/// sockets; 0660 for vfio-user sockets, which a QEMU of the agent's group must reach), with no
/// moment at which anyone else could connect or find it with other bits: bound inside a fresh
/// private (0700) directory next to `path`, chmodded, then renamed into place. A stale socket
/// at `path` is replaced; a live one is refused ([`BindError::Live`]), and so is anything that
/// is not a socket ([`BindError::NotASocket`]; left alone). Returns the listener and the
/// socket file's [`SocketId`], for [`remove_if_ours`].
pub fn bind_socket(path: &Path, mode: u32) -> Result<(UnixListener, SocketId), BindError> {
    let io = |what: &'static str| {
        let path = path.to_path_buf();
        move |source| BindError::Io { path, what, source }
    };
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if !m.file_type().is_socket() {
            return Err(BindError::NotASocket(path.to_path_buf()));
        }
        if listening(path).map_err(io("probing the socket already there"))? {
            return Err(BindError::Live(path.to_path_buf()));
        }
        // Stale: the rename below replaces it.
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(io("creating its directory"))?;
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let tmp_dir = dir.join(format!(
        ".pcietun-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&tmp_dir)
            .map_err(io("creating a private temporary directory"))?;
    }
    let tmp = tmp_dir.join("s");
    let result = (|| -> Result<(UnixListener, SocketId), BindError> {
        let l = UnixListener::bind(&tmp).map_err(io("binding"))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
            .map_err(io("setting its mode"))?;
        std::fs::rename(&tmp, path).map_err(io("renaming into place"))?;
        let m = std::fs::symlink_metadata(path).map_err(io("reading it back"))?;
        Ok((l, (m.dev(), m.ino())))
    })();
    let _ = std::fs::remove_file(&tmp);
    let _ = std::fs::remove_dir(&tmp_dir);
    result
}

/// Remove `path` if it is still the socket file `id` (not one another agent bound since).
pub fn remove_if_ours(path: &Path, id: SocketId) {
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if (m.dev(), m.ino()) == id {
            let _ = std::fs::remove_file(path);
        }
    }
}
