//! The QMP client over a UNIX socket: a thin blocking driver around [`Protocol`].
//!
//! One [`Qmp`] owns one monitor connection and is used from one thread at a time (`&mut self`);
//! every wait has a deadline (socket read timeouts), so a monitor that stops answering turns
//! into [`QmpError::Timeout`], never a hung caller. Events that arrive while a command waits
//! for its reply are kept (bounded) for [`Qmp::wait_event`] / [`Qmp::take_events`], so an event
//! that QEMU emits before a command's reply (e.g. `DEVICE_DELETED` before `device_del`
//! returns) is not lost.
//!
//! A QEMU monitor (`-qmp unix:PATH,server=on,wait=off`) serves one client at a time; a second
//! client is accepted by the kernel but gets no greeting until the first leaves, which shows up
//! here as a greeting timeout.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::proto::{CommandError, Event, Greeting, Output, Phase, Protocol, ProtocolError};

/// Errors talking to a QMP monitor.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The socket cannot be connected (no such file, nobody listening, no permission).
    #[error("cannot connect to the QMP monitor {path}: {source}")]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Reading or writing the socket failed.
    #[error("QMP monitor {path}: {source}")]
    Io {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The monitor closed the connection (QEMU exited, or another client took over).
    #[error("QMP monitor {path} disconnected {during}")]
    Disconnected {
        /// Socket path.
        path: PathBuf,
        /// What we were doing, e.g. "while waiting for the reply to device_add".
        during: String,
    },
    /// Nothing in time.
    #[error("QMP monitor {path}: no {what} within {after:?}")]
    Timeout {
        /// Socket path.
        path: PathBuf,
        /// What we waited for.
        what: String,
        /// How long.
        after: Duration,
    },
    /// QEMU answered the command with an error.
    #[error("QMP {command} failed: {error}")]
    Command {
        /// The command.
        command: String,
        /// QEMU's class and description.
        #[source]
        error: CommandError,
    },
    /// The monitor does not speak QMP the way we need (e.g. it refused `qmp_capabilities`).
    #[error("QMP monitor {path}: {error}")]
    Protocol {
        /// Socket path.
        path: PathBuf,
        /// What went wrong.
        #[source]
        error: ProtocolError,
    },
}

impl QmpError {
    /// The error class QEMU gave, for a command error.
    pub fn class(&self) -> Option<&str> {
        match self {
            Self::Command { error, .. } => Some(&error.class),
            _ => None,
        }
    }

    /// Whether the connection is gone (the caller should reconnect before trying again).
    pub fn is_fatal(&self) -> bool {
        !matches!(self, Self::Command { .. } | Self::Timeout { .. })
    }
}

/// Size of one socket read.
const READ_CHUNK: usize = 64 * 1024;

/// A connection to one QMP monitor, negotiated and in command mode.
#[derive(Debug)]
pub struct Qmp {
    stream: UnixStream,
    path: PathBuf,
    proto: Protocol,
    events: VecDeque<Event>,
    buf: Box<[u8]>,
    closed: bool,
}

impl Qmp {
    /// Connect to the monitor at `path` and negotiate, all within `timeout`.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Qmp, QmpError> {
        let stream = UnixStream::connect(path).map_err(|source| QmpError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
        Self::handshake(stream, path, timeout)
    }

    /// Negotiate on an already connected stream (tests hand one end of a socket pair).
    pub fn handshake(stream: UnixStream, path: &Path, timeout: Duration) -> Result<Qmp, QmpError> {
        let mut q = Qmp {
            stream,
            path: path.to_path_buf(),
            proto: Protocol::new(),
            events: VecDeque::new(),
            buf: vec![0u8; READ_CHUNK].into_boxed_slice(),
            closed: false,
        };
        let deadline = Instant::now() + timeout;
        loop {
            if q.proto.phase() == Phase::Negotiating && q.proto.wants_transmit() {
                q.flush(deadline)?;
            }
            while let Some(o) = q.proto.poll_output() {
                match o {
                    Output::Ready(g) => {
                        tracing::debug!(path = %q.path.display(), version = %g.version, "QMP ready");
                        return Ok(q);
                    }
                    Output::Event(e) => q.keep_event(e),
                    Output::Reply { .. } => {}
                }
            }
            q.drain_errors()?;
            let what = match q.proto.phase() {
                Phase::Greeting => "greeting (is another client connected to this monitor?)",
                _ => "reply to qmp_capabilities",
            };
            q.read_some(deadline, what, timeout)?;
        }
    }

    /// The monitor's greeting (QEMU's version).
    pub fn greeting(&self) -> &Greeting {
        // Ready implies a greeting; the default is never returned in practice.
        static NONE: std::sync::OnceLock<Greeting> = std::sync::OnceLock::new();
        self.proto
            .greeting()
            .unwrap_or_else(|| NONE.get_or_init(Greeting::default))
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Counters of the protocol engine.
    pub fn stats(&self) -> super::proto::Stats {
        self.proto.stats()
    }

    /// Run command `name` with `arguments` and wait at most `timeout` for its reply.
    pub fn execute(
        &mut self,
        name: &str,
        arguments: Option<Value>,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        if self.closed {
            return Err(self.disconnected(format!("before {name}")));
        }
        let deadline = Instant::now() + timeout;
        let id = self.proto.command(name, arguments);
        if let Err(e) = self.flush(deadline) {
            self.proto.forget(id);
            return Err(e);
        }
        let what = format!("reply to {name}");
        loop {
            let mut reply = None;
            while let Some(o) = self.proto.poll_output() {
                match o {
                    Output::Reply { id: i, result } if i == id => reply = Some(result),
                    Output::Reply { id: i, .. } => {
                        tracing::debug!(id = i, "QMP reply to a command nobody waits for")
                    }
                    Output::Event(e) => self.keep_event(e),
                    Output::Ready(_) => {}
                }
            }
            if let Some(r) = reply {
                return r.map_err(|error| QmpError::Command {
                    command: name.to_string(),
                    error,
                });
            }
            self.drain_errors()?;
            if let Err(e) = self.read_some(deadline, &what, timeout) {
                self.proto.forget(id);
                return Err(e);
            }
        }
    }

    /// Wait until `deadline` for an event that `want` accepts and return it (taken out of the
    /// queue); other events stay queued in order. `Ok(None)` when the deadline passes.
    pub fn wait_event(
        &mut self,
        deadline: Instant,
        mut want: impl FnMut(&Event) -> bool,
    ) -> Result<Option<Event>, QmpError> {
        let started = Instant::now();
        loop {
            self.pump_outputs();
            self.drain_errors()?;
            if let Some(i) = self.events.iter().position(&mut want) {
                return Ok(self.events.remove(i));
            }
            if self.closed {
                return Err(self.disconnected("while waiting for an event".into()));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            let waited = deadline.saturating_duration_since(started);
            match self.read_some(deadline, "event", waited) {
                Ok(()) | Err(QmpError::Timeout { .. }) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Every queued event, oldest first (the queue is emptied). Reads what the socket has
    /// already delivered first, without waiting.
    pub fn take_events(&mut self) -> Result<Vec<Event>, QmpError> {
        if !self.closed {
            match self.read_some(Instant::now(), "event", Duration::ZERO) {
                Ok(()) | Err(QmpError::Timeout { .. }) => {}
                Err(e) => return Err(e),
            }
            self.pump_outputs();
        }
        Ok(self.events.drain(..).collect())
    }

    /// Drop the queued events `unwanted` accepts (after reading what the socket already
    /// delivered, without waiting).
    pub fn discard_events(&mut self, unwanted: impl Fn(&Event) -> bool) -> Result<(), QmpError> {
        let kept: Vec<Event> = self.take_events()?;
        self.events = kept.into_iter().filter(|e| !unwanted(e)).collect();
        Ok(())
    }

    fn pump_outputs(&mut self) {
        while let Some(o) = self.proto.poll_output() {
            match o {
                Output::Event(e) => self.keep_event(e),
                Output::Reply { id, .. } => {
                    tracing::debug!(id, "QMP reply to a command nobody waits for")
                }
                Output::Ready(_) => {}
            }
        }
    }

    fn keep_event(&mut self, e: Event) {
        tracing::debug!(event = %e.name, data = %e.data, "QMP event");
        if self.events.len() >= super::proto::MAX_QUEUED {
            self.events.pop_front();
        }
        self.events.push_back(e);
    }

    /// Log the engine's complaints; a refused negotiation is fatal.
    fn drain_errors(&mut self) -> Result<(), QmpError> {
        while let Some(e) = self.proto.poll_error() {
            if let ProtocolError::Refused(_) = e {
                return Err(QmpError::Protocol {
                    path: self.path.clone(),
                    error: e,
                });
            }
            tracing::warn!(path = %self.path.display(), error = %e, "QMP monitor sent a bad message");
        }
        Ok(())
    }

    fn disconnected(&self, during: String) -> QmpError {
        QmpError::Disconnected {
            path: self.path.clone(),
            during,
        }
    }

    fn flush(&mut self, deadline: Instant) -> Result<(), QmpError> {
        let bytes = self.proto.take_transmit();
        if bytes.is_empty() {
            return Ok(());
        }
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        let io = |source| QmpError::Io {
            path: self.path.clone(),
            source,
        };
        self.stream.set_write_timeout(Some(left)).map_err(io)?;
        match self.stream.write_all(&bytes) {
            Ok(()) => Ok(()),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                ) =>
            {
                self.closed = true;
                Err(self.disconnected("while sending a command".into()))
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Err(QmpError::Timeout {
                    path: self.path.clone(),
                    what: "room in the socket to send a command".into(),
                    after: left,
                })
            }
            Err(e) => Err(QmpError::Io {
                path: self.path.clone(),
                source: e,
            }),
        }
    }

    /// One read (waiting at most until `deadline`), fed to the engine. `Timeout` when nothing
    /// came; `Disconnected` on EOF.
    fn read_some(
        &mut self,
        deadline: Instant,
        what: &str,
        after: Duration,
    ) -> Result<(), QmpError> {
        let left = deadline.saturating_duration_since(Instant::now());
        let timeout = || QmpError::Timeout {
            path: self.path.clone(),
            what: what.to_string(),
            after,
        };
        let set = if left.is_zero() {
            self.stream.set_nonblocking(true)
        } else {
            self.stream
                .set_nonblocking(false)
                .and_then(|()| self.stream.set_read_timeout(Some(left)))
        };
        set.map_err(|source| QmpError::Io {
            path: self.path.clone(),
            source,
        })?;
        let r = loop {
            match self.stream.read(&mut self.buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => break r,
            }
        };
        match r {
            Ok(0) => {
                self.closed = true;
                Err(self.disconnected(format!("while waiting for the {what}")))
            }
            Ok(n) => {
                self.proto.receive(&self.buf[..n]);
                Ok(())
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Err(timeout())
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                self.closed = true;
                Err(self.disconnected(format!("while waiting for the {what}")))
            }
            Err(source) => Err(QmpError::Io {
                path: self.path.clone(),
                source,
            }),
        }
    }
}
