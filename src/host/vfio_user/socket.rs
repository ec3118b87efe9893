//! The vfio-user UNIX socket: message framing, file descriptors as `SCM_RIGHTS` ancillary data
//! (unix(7)), the per-connection serve loop, and the server-to-client `VFIO_USER_DMA_READ` /
//! `VFIO_USER_DMA_WRITE` requests for client memory shared without a file descriptor
//! (vfio-user.rst "Read and Write Operations").
//!
//! Framing is the 16-byte header's message size. A header that cannot be parsed loses the
//! framing, so the connection is answered with an error and closed; an oversized message is
//! answered with `E2BIG` and its body discarded; everything else goes to [`Connection`].

use crate::sync::MutexExt;
use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::server::{Connection, ServerConfig};
use super::VfioDevice;
use crate::host::dma::{check_range, DmaMemory, DmaWindowError, Unreachable};
use crate::host::sockfile::{bind_socket, remove_if_ours, BindError, SocketId};
use crate::pci::vfio_user::{
    Command, DmaAccessRepr, MessageHeader, MessageHeaderRepr, MessageType, WireError, HEADER_LEN,
};
use crate::ratelimit::LogLimiter;
use crate::sys::socket::{recv_exact_with_fds as recv_exact, recv_with_fds};
use crate::{info_limited, warn_limited};

/// Errors of the socket layer.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// The socket could not be bound: a live socket or another file is in the way, or the
    /// bind failed ([`bind_socket`]).
    #[error("vfio-user socket: {0}")]
    Bind(#[from] BindError),
    /// Binding, accepting, reading or writing failed.
    #[error("vfio-user socket {path}: {source}")]
    Io {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The client sent a header we cannot frame; the connection was closed.
    #[error("unframeable message from client: {0}")]
    Framing(WireError),
}

/// The write half shared by the serve loop (replies) and DMA requests.
///
/// The socket has a send timeout ([`ServerConfig::client_send_timeout`]): a client that stops
/// reading blocks a sender for at most that long. Then, or after any other failed send, part
/// of a message may have gone out and the framing is lost, so the socket is shut down: the
/// serve loop ends and the client's state is dropped.
#[derive(Debug)]
struct Writer {
    stream: Mutex<UnixStream>,
}

impl Writer {
    fn send(&self, bytes: &[u8]) -> io::Result<()> {
        use std::io::Write;
        let mut s = self.stream.lock_or_recover();
        let r = s.write_all(bytes);
        if r.is_err() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        r
    }
}

type Waiter = mpsc::Sender<Result<Vec<u8>, Unreachable>>;

/// Server-to-client requests (DMA_READ/DMA_WRITE) waiting for their replies.
///
/// Every request waits at most [`ServerConfig::client_reply_timeout`]. A client that lets one
/// go unanswered is *unresponsive* until it sends any reply again: later requests fail at once
/// ([`Unreachable::Unresponsive`]) instead of each waiting out the limit, so a client that
/// never answers costs its function one time limit, then nothing.
#[derive(Debug)]
struct ClientChannel {
    writer: Arc<Writer>,
    pending: Mutex<HashMap<u16, Waiter>>,
    next_id: AtomicU16,
    max_xfer: AtomicUsize,
    timeout: Duration,
    unresponsive: AtomicBool,
    closed: AtomicBool,
    limit: LogLimiter,
}

impl ClientChannel {
    fn request(
        &self,
        cmd: Command,
        access: DmaAccessRepr,
        data: &[u8],
    ) -> Result<Vec<u8>, DmaWindowError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Unreachable::Disconnected.into());
        }
        if self.unresponsive.load(Ordering::Acquire) {
            return Err(Unreachable::Unresponsive.into());
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel();
        self.pending.lock_or_recover().insert(id, tx);
        let forget = || {
            self.pending.lock_or_recover().remove(&id);
        };
        let size = HEADER_LEN + DmaAccessRepr::LEN + data.len();
        let mut msg = vec![0u8; size];
        MessageHeaderRepr {
            id,
            command: cmd,
            size: size as u32,
            kind: MessageType::Command,
            no_reply: false,
            error: None,
        }
        .emit_bytes(&mut msg);
        access.emit(&mut msg[HEADER_LEN..]);
        msg[HEADER_LEN + DmaAccessRepr::LEN..].copy_from_slice(data);
        if let Err(e) = self.writer.send(&msg) {
            forget();
            warn_limited!(self.limit, command = ?cmd, error = %e,
                "cannot send a DMA request to the vfio-user client; connection closed");
            return Err(Unreachable::Send(e.kind()).into());
        }
        match rx.recv_timeout(self.timeout) {
            Ok(Ok(body)) => Ok(body),
            Ok(Err(e)) => Err(e.into()),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                forget();
                self.unresponsive.store(true, Ordering::Release);
                warn_limited!(self.limit, command = ?cmd, address = access.address,
                    timeout = ?self.timeout,
                    "vfio-user client did not answer a DMA request; failing its DMA until it answers");
                Err(Unreachable::NoReply(self.timeout).into())
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(Unreachable::Disconnected.into()),
        }
    }

    fn deliver(&self, hdr: &MessageHeaderRepr, body: &[u8]) {
        // Any reply shows the client is alive again.
        self.unresponsive.store(false, Ordering::Release);
        let waiter = self.pending.lock_or_recover().remove(&hdr.id);
        match waiter {
            Some(w) => {
                let r = match hdr.error {
                    Some(e) => Err(Unreachable::Errno(e)),
                    None => Ok(body.to_vec()),
                };
                let _ = w.send(r);
            }
            None => tracing::debug!(%hdr, "reply to no pending request"),
        }
    }

    /// The client is gone: every waiter and every later request fails at once.
    fn fail_all(&self) {
        self.closed.store(true, Ordering::Release);
        let waiters = std::mem::take(&mut *self.pending.lock_or_recover());
        for (_, w) in waiters {
            let _ = w.send(Err(Unreachable::Disconnected));
        }
    }
}

/// Client memory reached with DMA_READ/DMA_WRITE (a DMA_MAP without a descriptor).
#[derive(Debug)]
struct RemoteWindow {
    chan: Arc<ClientChannel>,
    iova: u64,
    len: u64,
}

impl DmaMemory for RemoteWindow {
    fn len(&self) -> u64 {
        self.len
    }

    fn may_block(&self) -> bool {
        true
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), DmaWindowError> {
        check_range("read", offset, buf.len(), self.len)?;
        // In range, so `iova + offset + buf.len()` is inside the mapped window: no overflow.
        let mut done = 0;
        for chunk in buf.chunks_mut(self.chan.max_xfer.load(Ordering::Relaxed)) {
            let address = self.iova + offset + done as u64;
            let req = DmaAccessRepr {
                address,
                count: chunk.len() as u64,
            };
            let body = self.chan.request(Command::DmaRead, req, &[])?;
            let data = body.get(DmaAccessRepr::LEN..).unwrap_or(&[]);
            if data.len() != chunk.len() {
                return Err(Unreachable::ShortReply {
                    got: data.len(),
                    wanted: chunk.len(),
                }
                .into());
            }
            chunk.copy_from_slice(data);
            done += chunk.len();
        }
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), DmaWindowError> {
        check_range("write", offset, data.len(), self.len)?;
        let mut done = 0;
        for chunk in data.chunks(self.chan.max_xfer.load(Ordering::Relaxed)) {
            let req = DmaAccessRepr {
                address: self.iova + offset + done as u64,
                count: chunk.len() as u64,
            };
            self.chan.request(Command::DmaWrite, req, chunk)?;
            done += chunk.len();
        }
        Ok(())
    }
}

/// One framed message from the reader thread to the worker.
struct Frame {
    msg: Vec<u8>,
    fds: Vec<OwnedFd>,
    /// Descriptors were lost in transit (control buffer too small).
    truncated: bool,
    /// The message exceeded the size limit and its body was discarded.
    oversized: Option<MessageHeaderRepr>,
}

/// Serve one connected client until it disconnects.
///
/// Two threads: a reader frames messages, routes replies to server-initiated DMA_READ/WRITE
/// requests straight to their waiters and queues commands (bounded) for this thread, which runs
/// them through `conn` and writes the replies. So a device access that needs client memory
/// while a command is in progress never waits for itself. Buffers circulate between the two
/// threads, so steady-state traffic does not allocate. On return the client's DMA windows and
/// eventfds are gone ([`Connection::disconnected`]).
pub fn serve_connection<D: VfioDevice>(
    stream: UnixStream,
    conn: &mut Connection<D>,
) -> Result<(), SocketError> {
    let path = PathBuf::from("<connected>");
    let io_err = |source| SocketError::Io {
        path: path.clone(),
        source,
    };
    let cfg: ServerConfig = *conn.config();
    // The send timeout is a socket option, shared by every clone of the stream.
    stream
        .set_write_timeout(Some(cfg.client_send_timeout.max(Duration::from_millis(1))))
        .map_err(io_err)?;
    let writer = Arc::new(Writer {
        stream: Mutex::new(stream.try_clone().map_err(io_err)?),
    });
    let chan = Arc::new(ClientChannel {
        writer: writer.clone(),
        pending: Mutex::new(HashMap::new()),
        next_id: AtomicU16::new(0),
        max_xfer: AtomicUsize::new(4096),
        timeout: cfg.client_reply_timeout,
        unresponsive: AtomicBool::new(false),
        closed: AtomicBool::new(false),
        limit: LogLimiter::warnings(),
    });
    let (cmd_tx, cmd_rx) = mpsc::sync_channel::<Frame>(4);
    let (free_tx, free_rx) = mpsc::channel::<Vec<u8>>();
    let max_message = conn.max_message();
    let reader_stream = stream.try_clone().map_err(io_err)?;
    let reader_chan = chan.clone();
    let reader = std::thread::Builder::new()
        .name("vfio-user-rx".into())
        .spawn(move || read_frames(&reader_stream, max_message, &reader_chan, &cmd_tx, &free_rx))
        .map_err(io_err)?;
    let r = work(conn, &writer, &chan, &cmd_rx, &free_tx);
    // Stop the reader (it may be blocked in recvmsg) and collect its verdict.
    let _ = stream.shutdown(std::net::Shutdown::Both);
    drop(cmd_rx);
    let read_result = reader.join().unwrap_or(Ok(()));
    chan.fail_all();
    conn.disconnected();
    r.and(read_result).map_err(|e| match e {
        LoopError::Io(e) => io_err(e),
        LoopError::Framing(w) => SocketError::Framing(w),
    })
}

enum LoopError {
    Io(io::Error),
    Framing(WireError),
}

/// The reader thread: frame messages until EOF, an I/O error or lost framing.
fn read_frames(
    stream: &UnixStream,
    max_message: usize,
    chan: &ClientChannel,
    cmd_tx: &mpsc::SyncSender<Frame>,
    free_rx: &mpsc::Receiver<Vec<u8>>,
) -> Result<(), LoopError> {
    let fd = stream.as_fd();
    loop {
        let mut msg = free_rx.try_recv().unwrap_or_default();
        let mut fds = Vec::new();
        let mut truncated = false;
        msg.clear();
        msg.resize(HEADER_LEN, 0);
        match recv_exact(fd, &mut msg[..HEADER_LEN], &mut fds, &mut truncated) {
            Ok(true) => {}
            Ok(false) => return Ok(()),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionReset | io::ErrorKind::UnexpectedEof
                ) =>
            {
                return Ok(())
            }
            Err(e) => return Err(LoopError::Io(e)),
        }
        let hdr = match MessageHeaderRepr::parse(&MessageHeader::new_unchecked(&msg[..HEADER_LEN]))
        {
            Ok(h) => h,
            Err(e) => {
                // Framing is lost: let the worker answer (it echoes id/command), then close.
                let _ = cmd_tx.send(Frame {
                    msg,
                    fds,
                    truncated,
                    oversized: None,
                });
                return Err(LoopError::Framing(e));
            }
        };
        let size = hdr.size as usize;
        if size > max_message {
            warn_limited!(chan.limit, %hdr, "vfio-user message too large, discarded");
            discard(fd, size - HEADER_LEN).map_err(LoopError::Io)?;
            msg.truncate(HEADER_LEN);
            let frame = Frame {
                msg,
                fds,
                truncated,
                oversized: Some(hdr),
            };
            if cmd_tx.send(frame).is_err() {
                return Ok(());
            }
            continue;
        }
        msg.resize(size, 0);
        match recv_exact(fd, &mut msg[HEADER_LEN..], &mut fds, &mut truncated) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(LoopError::Io(e)),
        }
        if hdr.kind == MessageType::Reply {
            chan.deliver(&hdr, &msg[HEADER_LEN..]);
            continue;
        }
        let frame = Frame {
            msg,
            fds,
            truncated,
            oversized: None,
        };
        if cmd_tx.send(frame).is_err() {
            return Ok(());
        }
    }
}

fn error_reply(hdr: &MessageHeaderRepr, errno: i32, out: &mut Vec<u8>) -> bool {
    if hdr.no_reply || hdr.kind != MessageType::Command {
        return false;
    }
    let mut r = hdr.reply(HEADER_LEN as u32);
    r.error = Some(errno as u32);
    out.clear();
    out.resize(HEADER_LEN, 0);
    r.emit_bytes(out);
    true
}

/// The worker: run commands through the engine and write the replies.
fn work<D: VfioDevice>(
    conn: &mut Connection<D>,
    writer: &Writer,
    chan: &Arc<ClientChannel>,
    cmd_rx: &mpsc::Receiver<Frame>,
    free_tx: &mpsc::Sender<Vec<u8>>,
) -> Result<(), LoopError> {
    let mut out: Vec<u8> = Vec::with_capacity(4096);
    while let Ok(frame) = cmd_rx.recv() {
        let Frame {
            msg,
            fds,
            truncated,
            oversized,
        } = frame;
        let header = MessageHeaderRepr::parse(&MessageHeader::new_unchecked(&msg[..HEADER_LEN]));
        let reply = match (&header, oversized) {
            (_, Some(hdr)) => error_reply(&hdr, libc::E2BIG, &mut out),
            // Descriptors were lost in transit: refuse rather than act on a partial set.
            (Ok(hdr), None) if truncated => error_reply(hdr, libc::EINVAL, &mut out),
            _ => conn.handle(&msg, fds, &mut out),
        };
        if reply {
            writer.send(&out).map_err(LoopError::Io)?;
        }
        if let Ok(hdr) = &header {
            if hdr.command == Command::Version {
                if let Some(c) = conn.client_caps() {
                    // Our DMA_READ/WRITE chunks respect the client's transfer limit.
                    let max = (c.max_data_xfer_size as usize).clamp(1, 1 << 20);
                    chan.max_xfer.store(max, Ordering::Relaxed);
                    let shared = chan.clone();
                    conn.set_remote_memory(Some(Box::new(move |iova, len| {
                        Arc::new(RemoteWindow {
                            chan: shared.clone(),
                            iova,
                            len,
                        }) as Arc<dyn DmaMemory>
                    })));
                }
            }
        }
        let _ = free_tx.send(msg);
    }
    Ok(())
}

fn discard(fd: BorrowedFd<'_>, mut n: usize) -> io::Result<()> {
    let mut buf = [0u8; 4096];
    let mut fds = Vec::new();
    while n > 0 {
        let want = n.min(buf.len());
        let (got, _) = recv_with_fds(fd, &mut buf[..want], &mut fds)?;
        fds.clear();
        if got == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        n -= got;
    }
    Ok(())
}

/// Closes the connection a [`FunctionServer`] is serving, from any thread: the consumer sees
/// the device vanish (a surprise removal) and the server waits for the next consumer.
#[derive(Debug, Clone, Default)]
pub struct Withdraw(Arc<Mutex<Option<UnixStream>>>);

impl Withdraw {
    /// Shut the current connection down. False when no consumer was connected.
    pub fn withdraw(&self) -> bool {
        let s = self.0.lock_or_recover().take();
        s.is_some_and(|s| s.shutdown(std::net::Shutdown::Both).is_ok())
    }

    fn set(&self, s: Option<UnixStream>) {
        *self.0.lock_or_recover() = s;
    }
}

/// Ends a [`FunctionServer`]'s [`serve_forever`](FunctionServer::serve_forever) from any
/// thread: the current consumer's connection is shut down, the blocked `accept` is woken
/// (`shutdown(2)` on the listening socket), and the loop returns `Ok` — the server is then
/// dropped, which removes its socket file.
#[derive(Debug)]
pub struct Closer {
    listener: UnixListener,
    closing: Arc<AtomicBool>,
    current: Withdraw,
}

impl Closer {
    /// Stop serving (idempotent).
    pub fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
        self.current.withdraw();
        // Wakes accept(2) on the same socket (Linux: it fails with EINVAL).
        let _ = rustix::net::shutdown(&self.listener, rustix::net::Shutdown::Both);
    }
}

/// Permission bits of a vfio-user socket: the agent's user and group (a QEMU running as
/// another user, libvirt's, reaches it through the group; docs/vms.md).
pub const SOCKET_MODE: u32 = 0o660;

/// The listening socket of one function (`DIR/<bb>:<dd>.<f>.sock`).
#[derive(Debug)]
pub struct FunctionServer {
    listener: UnixListener,
    path: PathBuf,
    id: SocketId,
    log: LogLimiter,
    current: Withdraw,
    closing: Arc<AtomicBool>,
}

impl FunctionServer {
    /// Bind `path` ([`bind_socket`], mode [`SOCKET_MODE`]): a stale socket file left by an
    /// earlier run is replaced; a live one (another agent serves it) or any other file is
    /// refused.
    pub fn bind(path: &Path) -> Result<Self, SocketError> {
        let (listener, id) = bind_socket(path, SOCKET_MODE)?;
        Ok(Self {
            listener,
            path: path.to_path_buf(),
            id,
            log: LogLimiter::warnings(),
            current: Withdraw::default(),
            closing: Arc::default(),
        })
    }

    /// The socket file this server bound (for [`remove_if_ours`] by whoever outlives it).
    pub fn socket_id(&self) -> SocketId {
        self.id
    }

    /// A handle that ends [`serve_forever`](Self::serve_forever) (holds a duplicate of the
    /// listening descriptor until it is dropped).
    pub fn closer(&self) -> io::Result<Closer> {
        Ok(Closer {
            listener: self.listener.try_clone()?,
            closing: self.closing.clone(),
            current: self.current.clone(),
        })
    }

    /// A handle that closes the connection being served.
    pub fn withdrawer(&self) -> Withdraw {
        self.current.clone()
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serve clients one after another, forever (a function has one consumer at a time).
    /// Returns `Ok` once a [`Closer`] closed it, an error if accepting fails otherwise.
    pub fn serve_forever<D: VfioDevice>(
        &self,
        conn: &mut Connection<D>,
    ) -> Result<(), SocketError> {
        loop {
            let accepted = self.listener.accept();
            if self.closing.load(Ordering::SeqCst) {
                return Ok(());
            }
            let (stream, _) = accepted.map_err(|source| SocketError::Io {
                path: self.path.clone(),
                source,
            })?;
            info_limited!(self.log, path = %self.path.display(), "vfio-user client connected");
            self.current.set(stream.try_clone().ok());
            if self.closing.load(Ordering::SeqCst) {
                // Closed between the accept and here: the closer may have missed this one.
                self.current.set(None);
                return Ok(());
            }
            if let Err(e) = serve_connection(stream, conn) {
                warn_limited!(self.log, path = %self.path.display(), error = %e,
                    "vfio-user connection ended");
            }
            self.current.set(None);
            if self.closing.load(Ordering::SeqCst) {
                return Ok(());
            }
        }
    }
}

impl Drop for FunctionServer {
    /// Removes the socket file — unless another agent's socket replaced it since.
    fn drop(&mut self) {
        remove_if_ours(&self.path, self.id);
    }
}
