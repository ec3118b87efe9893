//! [`VmService`]: the agent's VM worker. One thread runs every attach and detach in order, so
//! two operations on one function never overlap and a slow guest never blocks the agent's
//! event loop.
//!
//! What drives it:
//! * the agent's [`HostEvent`]s ([`VmService::on_host_event`]): `FunctionAdded` attaches the
//!   function to the VM configured for it, `FunctionRemoved` detaches it. A `FunctionRemoved`
//!   that follows `LinkDown` is a lost session, not an unassignment: the function stays in the
//!   VM (its reads fail until the session is back, then it revives) — only a removal while the
//!   link is up takes it out. These events come from (re)enumeration and from the pool's slot
//!   events (assign / unassign). `SlotOccupied` (a new session names a slot the host has, and
//!   its generation) makes the worker report the VM that holds the slot's functions again
//!   (`Attached`): after the appliance restarted, the assignment's Connection shows its VM
//!   again although nothing was plugged anew.
//! * the local control socket ([`VmService::serve_control`]), one request per line:
//!   `attach FUNCTION [VM]`, `detach FUNCTION`, `list`; one JSON object per reply line
//!   (`{"ok": true, ...}` or `{"ok": false, "error": "..."}`). It is the operator's and the
//!   tests' handle on the same path until `pcietun ctl assign` exists.
//!
//! An attach for a VM that cannot be reached (not started yet, restarting) is retried every
//! [`RETRY`] until it succeeds or the function is removed.

use crate::sync::MutexExt;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::json;

use super::attach::{Attachment, DetachOutcome, VmAttacher, VmError};
use super::FunctionRef;
use crate::host::agent::{Agent, Released, RemovalGate};
use crate::host::sockfile::{bind_socket, remove_if_ours, BindError, SocketId};
use crate::host::{Host, HostEvent};
use crate::tlp::Bdf;

/// How often an attach to an unreachable VM is tried again.
pub const RETRY: Duration = Duration::from_secs(2);
/// The appliance's default removal grace (`[options] removal_grace_ms`): an orderly unassign
/// waits that long for the agent's acknowledgement, which follows the VM's eject (docs/vms.md).
pub const APPLIANCE_REMOVAL_GRACE: Duration = crate::tlp::slot::DEFAULT_REMOVAL_GRACE;
/// What the agent needs on top of the VM grace before it acknowledges (QMP commands, fencing).
const GRACE_MARGIN: Duration = Duration::from_secs(5);
/// Longest control request line.
const MAX_REQUEST: usize = 1024;

/// The vfio-user sockets of the agent's functions, as the VM layer needs them.
pub trait FunctionSockets: Send + Sync {
    /// Serve `function`'s vfio-user socket (if it is not served yet); its path.
    fn serve(&self, function: &FunctionRef) -> Result<PathBuf, String>;
    /// Close the connection of `function`'s current consumer, if any (the consumer sees the
    /// device vanish: a surprise removal). The socket stays, for the next consumer.
    fn withdraw(&self, function: &FunctionRef) -> bool;
}

/// [`FunctionSockets`] of a running [`Agent`] whose sockets live in one directory.
#[derive(Debug, Clone)]
pub struct AgentSockets {
    agent: Arc<Agent>,
    dir: PathBuf,
}

impl AgentSockets {
    /// Sockets of `agent` in `dir` (`DIR/<bb>:<dd>.<f>.sock`).
    pub fn new(agent: Arc<Agent>, dir: PathBuf) -> Self {
        Self { agent, dir }
    }
}

impl FunctionSockets for AgentSockets {
    fn serve(&self, function: &FunctionRef) -> Result<PathBuf, String> {
        self.agent
            .serve_function(&self.dir, function.bdf)
            .map_err(|e| e.to_string())
    }
    fn withdraw(&self, function: &FunctionRef) -> bool {
        self.agent.withdraw_vfio_user(function.bdf)
    }
}

/// A request to the worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Attach (to `vm`, or the configured VM).
    Attach {
        /// The function.
        function: FunctionRef,
        /// The VM (None: by configuration).
        vm: Option<String>,
    },
    /// Detach from whichever VM holds it.
    Detach {
        /// The function.
        function: FunctionRef,
    },
    /// List the attachments.
    List,
}

/// Why a control line is not a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Not `attach FUNCTION [VM]`, `detach FUNCTION` or `list`.
    #[error("expected `attach BDF [VM]`, `detach BDF` or `list`, got {0:?}")]
    Syntax(String),
    /// The function is not a BDF.
    #[error("{0:?} is not a bus:device.function like 01:00.0")]
    BadFunction(String),
}

impl std::str::FromStr for Request {
    type Err = RequestError;
    fn from_str(line: &str) -> Result<Self, RequestError> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let function = |s: &str| {
            s.parse::<Bdf>()
                .map(FunctionRef::from_bdf)
                .map_err(|_| RequestError::BadFunction(s.to_string()))
        };
        match words.as_slice() {
            ["attach", f] => Ok(Self::Attach {
                function: function(f)?,
                vm: None,
            }),
            ["attach", f, vm] => Ok(Self::Attach {
                function: function(f)?,
                vm: Some(vm.to_string()),
            }),
            ["detach", f] => Ok(Self::Detach {
                function: function(f)?,
            }),
            ["list"] => Ok(Self::List),
            _ => Err(RequestError::Syntax(line.chars().take(80).collect())),
        }
    }
}

/// The answer to a [`Request`].
#[derive(Debug)]
pub enum Response {
    /// Attached (or already was).
    Attached(Attachment, Duration),
    /// Detached, or `None`: it was in no VM.
    Detached(Option<DetachOutcome>, Duration),
    /// The attachments.
    List(Vec<Attachment>),
}

impl Response {
    /// The reply line's JSON.
    pub fn to_json(r: &Result<Response, VmError>) -> serde_json::Value {
        match r {
            Ok(Response::Attached(a, took)) => {
                json!({"ok": true, "attachment": a, "took_us": took.as_micros() as u64})
            }
            Ok(Response::Detached(o, took)) => {
                json!({"ok": true, "outcome": o, "took_us": took.as_micros() as u64})
            }
            Ok(Response::List(l)) => json!({"ok": true, "attachments": l}),
            Err(e) => json!({"ok": false, "error": e.to_string()}),
        }
    }
}

type Reply = mpsc::Sender<Result<Response, VmError>>;

enum Job {
    Run(Request, Option<Reply>),
    /// An orderly removal: detach (the guest ejects it), then let the agent fence and
    /// acknowledge (dropping the handle).
    Release(FunctionRef, Released),
    /// The agent lost the function (detach unless the link is down).
    Removed(FunctionRef),
    /// New sessions named slots (the bits of [`VmService`]'s `announce` mask): report the VMs
    /// holding their functions again.
    Announce,
    LinkDown,
    LinkUp,
    Stop,
}

/// The VM worker.
pub struct VmService {
    tx: Mutex<mpsc::Sender<Job>>,
    /// Where the VM an assignment names is looked up, and where reports go
    /// ([`VmService::names_from`]).
    names: Names,
    /// Slots whose VMs are to be reported again (bit N: slot N), taken by the worker on
    /// `Job::Announce`.
    announce: Arc<AtomicU32>,
    attacher: Arc<VmAttacher>,
    worker: Mutex<Option<JoinHandle<()>>>,
    stop: Arc<AtomicBool>,
    /// The control socket being served ([`VmService::serve_control`]).
    control: Mutex<Option<ControlSocket>>,
}

/// How long closing the control socket waits for its thread (which may be answering a client).
const CONTROL_EXIT: Duration = Duration::from_secs(2);

/// A served control socket; dropping it stops accepting and removes the file.
#[derive(Debug)]
struct ControlSocket {
    path: PathBuf,
    id: SocketId,
    stop: Arc<AtomicBool>,
    /// A duplicate of the listening socket, to wake `accept`.
    wake: UnixListener,
    thread: Option<JoinHandle<()>>,
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wakes accept(2) on the same socket (Linux: it fails with EINVAL).
        let _ = rustix::net::shutdown(&self.wake, rustix::net::Shutdown::Both);
        remove_if_ours(&self.path, self.id);
        if let Some(t) = self.thread.take() {
            // Not from the thread itself (it may drop the last handle on the service), and not
            // forever: a client being answered finishes on its own.
            if t.thread().id() != std::thread::current().id() {
                let deadline = Instant::now() + CONTROL_EXIT;
                while !t.is_finished() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
                if t.is_finished() {
                    let _ = t.join();
                }
            }
        }
    }
}

impl std::fmt::Debug for VmService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmService")
            .field("attacher", &self.attacher)
            .finish_non_exhaustive()
    }
}

type Names = Arc<Mutex<Option<std::sync::Weak<Host>>>>;

struct Worker {
    attacher: Arc<VmAttacher>,
    names: Names,
    sockets: Arc<dyn FunctionSockets>,
    link_up: bool,
    /// Attaches waiting for an unreachable VM: (function, vm, next try).
    retry: Vec<(FunctionRef, String, Instant)>,
}

impl Worker {
    fn run(&mut self, req: Request) -> Result<Response, VmError> {
        let t0 = Instant::now();
        match req {
            Request::Attach { function, vm } => {
                let vm = match vm {
                    Some(v) => v,
                    None => self
                        .attacher
                        .vm_for(&function)
                        .ok_or_else(|| VmError::NoVmFor(function.clone()))?
                        .to_string(),
                };
                self.retry.retain(|(f, _, _)| *f != function);
                let socket = self
                    .sockets
                    .serve(&function)
                    .map_err(|reason| VmError::Socket {
                        function: function.clone(),
                        reason,
                    })?;
                let r = self.attacher.attach(&function, &socket, &vm);
                if let Err(e) = &r {
                    if e.unreachable() {
                        self.retry
                            .push((function.clone(), vm, Instant::now() + RETRY));
                    }
                }
                r.map(|a| Response::Attached(a, t0.elapsed()))
            }
            Request::Detach { function } => {
                self.retry.retain(|(f, _, _)| *f != function);
                let sockets = self.sockets.clone();
                let f2 = function.clone();
                let out = self.attacher.detach(&function, &move || {
                    sockets.withdraw(&f2);
                })?;
                Ok(Response::Detached(out, t0.elapsed()))
            }
            Request::List => Ok(Response::List(self.attacher.attachments())),
        }
    }

    /// Report every VM holding a function of `slot` to the appliance again (the session is
    /// new; the attachment is not).
    fn announce(&self, slot: u8) {
        let Some(host) = self
            .names
            .lock_or_recover()
            .as_ref()
            .and_then(|h| h.upgrade())
        else {
            return;
        };
        for a in self.attacher.attachments() {
            if a.function.bdf.device() != slot {
                continue;
            }
            match host.report_consumer(slot, crate::tlp::slot::ConsumerEvent::Attached, &a.vm) {
                Ok(true) => tracing::info!(function = %a.function, vm = %a.vm,
                    "VM consumer reported again to the new session"),
                Ok(false) => tracing::debug!(slot, "VM consumer not reported: no assignment known"),
                Err(e) => tracing::info!(slot, error = %e, "VM consumer not reported"),
            }
        }
    }

    fn next_retry(&self) -> Option<Instant> {
        self.retry.iter().map(|r| r.2).min()
    }

    fn retry_due(&mut self) {
        let now = Instant::now();
        let due: Vec<(FunctionRef, String)> = self
            .retry
            .iter()
            .filter(|r| r.2 <= now)
            .map(|r| (r.0.clone(), r.1.clone()))
            .collect();
        self.retry.retain(|r| r.2 > now);
        for (function, vm) in due {
            // Failures re-queue themselves (unreachable) or are reported as events.
            let _ = self.run(Request::Attach {
                function,
                vm: Some(vm),
            });
        }
    }
}

impl VmService {
    /// Start the worker over `attacher`, serving and withdrawing through `sockets`.
    pub fn start(
        attacher: Arc<VmAttacher>,
        sockets: Arc<dyn FunctionSockets>,
    ) -> std::io::Result<VmService> {
        let grace = attacher.settings().grace;
        if grace + GRACE_MARGIN > APPLIANCE_REMOVAL_GRACE {
            tracing::warn!(
                vm_grace = ?grace,
                appliance_default = ?APPLIANCE_REMOVAL_GRACE,
                "the VM detach grace does not fit in the appliance's default removal grace: \
                 unless its [options] removal_grace_ms is above the VM grace plus a few \
                 seconds, a guest that ejects slowly loses the function with surprise-removal \
                 semantics"
            );
        }
        let (tx, rx) = mpsc::channel::<Job>();
        let names: Names = Arc::default();
        let announce = Arc::new(AtomicU32::new(0));
        let announce2 = announce.clone();
        let mut w = Worker {
            attacher: attacher.clone(),
            names: names.clone(),
            sockets,
            link_up: true,
            retry: Vec::new(),
        };
        let worker = std::thread::Builder::new()
            .name("host-vms".into())
            .spawn(move || loop {
                let job = match w.next_retry() {
                    Some(at) => {
                        match rx.recv_timeout(at.saturating_duration_since(Instant::now())) {
                            Ok(j) => j,
                            Err(mpsc::RecvTimeoutError::Timeout) => {
                                w.retry_due();
                                continue;
                            }
                            Err(mpsc::RecvTimeoutError::Disconnected) => return,
                        }
                    }
                    None => match rx.recv() {
                        Ok(j) => j,
                        Err(_) => return,
                    },
                };
                match job {
                    Job::Run(req, reply) => {
                        let r = w.run(req);
                        if let Some(tx) = reply {
                            let _ = tx.send(r);
                        }
                    }
                    Job::Release(function, done) => {
                        match w.run(Request::Detach {
                            function: function.clone(),
                        }) {
                            Ok(Response::Detached(outcome, took)) => tracing::info!(
                                %function, ?outcome, ?took,
                                "released for an orderly removal"
                            ),
                            Ok(_) => {}
                            Err(e) => tracing::warn!(%function, error = %e,
                                "detach for an orderly removal failed; fencing it anyway"),
                        }
                        done.done();
                    }
                    Job::Removed(function) if w.link_up => {
                        let _ = w.run(Request::Detach { function });
                    }
                    Job::Removed(function) => {
                        tracing::debug!(%function, "function lost with the link; it stays in its VM")
                    }
                    Job::Announce => {
                        let slots = announce2.swap(0, Ordering::AcqRel);
                        for slot in (0..32u8).filter(|s| slots & (1 << s) != 0) {
                            w.announce(slot);
                        }
                    }
                    Job::LinkDown => w.link_up = false,
                    Job::LinkUp => w.link_up = true,
                    Job::Stop => return,
                }
            })?;
        Ok(VmService {
            tx: Mutex::new(tx),
            names,
            announce,
            attacher,
            worker: Mutex::new(Some(worker)),
            stop: Arc::new(AtomicBool::new(false)),
            control: Mutex::new(None),
        })
    }

    /// The attacher (configuration, attachments).
    pub fn attacher(&self) -> &Arc<VmAttacher> {
        &self.attacher
    }

    fn send(&self, job: Job) -> bool {
        self.tx.lock_or_recover().send(job).is_ok()
    }

    /// Feed one of the agent's events (see the module doc for what each does).
    pub fn on_host_event(&self, ev: &HostEvent) {
        match ev {
            HostEvent::LinkDown => {
                self.send(Job::LinkDown);
            }
            HostEvent::LinkUp => {
                self.send(Job::LinkUp);
            }
            HostEvent::FunctionAdded(b) => {
                let function = FunctionRef::from_bdf(*b);
                // The VM the assignment names (the appliance's `VmTarget`) wins over the
                // configured selectors; a name this agent does not have fails the attach,
                // which is reported back (never a silent fallback to another VM).
                let named = self
                    .names
                    .lock_or_recover()
                    .as_ref()
                    .and_then(|h| h.upgrade())
                    .and_then(|h| h.slot_vm(b.device()));
                if let Some(vm) = named {
                    let vm = Some(vm.to_string());
                    self.send(Job::Run(Request::Attach { function, vm }, None));
                } else if self.attacher.vm_for(&function).is_some() {
                    self.send(Job::Run(Request::Attach { function, vm: None }, None));
                }
            }
            HostEvent::FunctionRemoved(b) => {
                // Whether the link is down is the worker's to judge, in event order.
                self.send(Job::Removed(FunctionRef::from_bdf(*b)));
            }
            HostEvent::SlotOccupied { slot, .. } => {
                // One job for however many arrive before the worker gets to it: an appliance
                // that floods `Occupied` cannot grow the queue.
                let bit = 1u32.checked_shl(u32::from(*slot)).unwrap_or(0);
                if bit != 0 && self.announce.fetch_or(bit, Ordering::AcqRel) == 0 {
                    self.send(Job::Announce);
                }
            }
            _ => {}
        }
    }

    /// Take the VM an assignment names from `host`'s slot messages (`Host::slot_vm`): a
    /// function whose assignment names a VM is attached to that VM, not by the selectors. Also
    /// where [`HostEvent::SlotOccupied`] reports the VMs again (`Host::report_consumer`).
    pub fn names_from(&self, host: &Arc<Host>) {
        *self.names.lock_or_recover() = Some(Arc::downgrade(host));
    }

    /// Hold removals of this service's functions until their guests ejected them:
    /// [`Agent::set_removal_gate`] with this service.
    pub fn gate(self: &Arc<Self>, agent: &Agent) {
        let me: Arc<dyn RemovalGate> = self.clone();
        agent.set_removal_gate(Arc::downgrade(&me));
    }

    /// Run `req` and wait at most `timeout` for the answer.
    pub fn request(&self, req: Request, timeout: Duration) -> Result<Response, VmError> {
        let (tx, rx) = mpsc::channel();
        if !self.send(Job::Run(req, Some(tx))) {
            return Err(VmError::Worker(timeout));
        }
        rx.recv_timeout(timeout)
            .map_err(|_| VmError::Worker(timeout))?
    }

    /// Longest a control request may take: a detach's grace period plus its commands.
    pub fn request_timeout(&self) -> Duration {
        let s = self.attacher.settings();
        s.grace + s.command_timeout * 3 + s.connect_timeout
    }

    /// Serve the control socket at `path` on its own thread: bound by
    /// [`bind_socket`] (mode 0600; a stale socket is replaced, a live one — another agent's —
    /// or a file that is not a socket is refused). Replaces the control socket this service
    /// served before; [`VmService::stop`] closes it and removes the file (if still ours).
    pub fn serve_control(self: &Arc<Self>, path: &Path) -> Result<PathBuf, BindError> {
        let (listener, id) = bind_socket(path, 0o600)?;
        let io = |what: &'static str| {
            let path = path.to_path_buf();
            move |source| BindError::Io { path, what, source }
        };
        let wake = listener.try_clone();
        let wake = match wake {
            Ok(w) => w,
            Err(e) => {
                remove_if_ours(path, id);
                return Err(io("duplicating the listening socket")(e));
            }
        };
        let me = Arc::downgrade(self);
        let stop = Arc::new(AtomicBool::new(false));
        let halt = stop.clone();
        let thread = std::thread::Builder::new()
            .name("host-vm-control".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    if halt.load(Ordering::Acquire) {
                        return;
                    }
                    let (Ok(stream), Some(svc)) = (stream, me.upgrade()) else {
                        continue;
                    };
                    // One client at a time: requests are serialised by the worker anyway.
                    if let Err(e) = svc.control_client(stream) {
                        tracing::debug!(error = %e, "VM control client");
                    }
                }
            });
        let thread = match thread {
            Ok(t) => t,
            Err(e) => {
                remove_if_ours(path, id);
                return Err(io("starting its thread")(e));
            }
        };
        let old = self.control.lock_or_recover().replace(ControlSocket {
            path: path.to_path_buf(),
            id,
            stop,
            wake,
            thread: Some(thread),
        });
        drop(old);
        Ok(path.to_path_buf())
    }

    fn control_client(&self, stream: UnixStream) -> std::io::Result<()> {
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        let mut out = stream.try_clone()?;
        let mut reader = BufReader::new(stream.take(1 << 20));
        let mut line = String::new();
        loop {
            line.clear();
            let n = (&mut reader)
                .take(MAX_REQUEST as u64)
                .read_line(&mut line)?;
            if n == 0 {
                return Ok(());
            }
            let reply = match line.trim().parse::<Request>() {
                Ok(req) => Response::to_json(&self.request(req, self.request_timeout())),
                Err(e) => json!({"ok": false, "error": e.to_string()}),
            };
            writeln!(out, "{reply}")?;
            if !line.ends_with('\n') {
                return Ok(()); // over-long line or EOF without newline: one answer, then close
            }
        }
    }

    /// Stop the worker (after the jobs queued before this call).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let control = self.control.lock_or_recover().take();
        drop(control);
        self.send(Job::Stop);
        if let Some(w) = self.worker.lock_or_recover().take() {
            let _ = w.join();
        }
    }
}

impl RemovalGate for VmService {
    fn release(&self, bdf: Bdf, done: Released) {
        let function = FunctionRef::from_bdf(bdf);
        // In a VM, or on its way there (an attach queued or waiting to be retried): the worker
        // detaches it after what is queued, then lets the agent go on. Otherwise (or if the
        // worker is gone: the job comes back and is dropped) `done` drops here.
        if self.attacher.attachment(&function).is_some()
            || self.attacher.vm_for(&function).is_some()
        {
            self.send(Job::Release(function, done));
        }
    }
}

impl Drop for VmService {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_requests() {
        let f = FunctionRef::from_bdf("01:00.0".parse().unwrap());
        assert_eq!(
            "attach 01:00.0".parse(),
            Ok(Request::Attach {
                function: f.clone(),
                vm: None
            })
        );
        assert_eq!(
            "  attach 01:00.0 web1 \n".parse(),
            Ok(Request::Attach {
                function: f.clone(),
                vm: Some("web1".into())
            })
        );
        assert_eq!(
            "detach 01:00.0".parse(),
            Ok(Request::Detach { function: f })
        );
        assert_eq!("list".parse(), Ok(Request::List));
        assert!(matches!(
            "detach 1:2".parse::<Request>(),
            Err(RequestError::BadFunction(_))
        ));
        for bad in ["", "attach", "detach 01:00.0 x", "frob 01:00.0", "list all"] {
            assert!(
                matches!(bad.parse::<Request>(), Err(RequestError::Syntax(_))),
                "{bad:?}"
            );
        }
    }
}
