//! [`VmAttacher`]: puts a tunnelled function into a running QEMU VM and takes it out again,
//! through the VM's QMP monitor.
//!
//! Attach (QEMU `qapi/qdev.json` `device_add`, `qapi/qom.json` `qom-list`/`qom-get`,
//! `qapi/pci.json` `query-pci`):
//! 1. find a free hot-plug-capable port: the `pcie-root-port`s under `/machine/peripheral`
//!    whose `hotplug` property is on and whose secondary bus (the QOM child named like the
//!    port) has no `child[N]` device link;
//! 2. `device_add {"driver": "vfio-user-pci", "id": "pcietun-<function id>", "bus": PORT,
//!    "socket": {"type": "unix", "path": SOCKET}}` — QEMU connects to the function's
//!    vfio-user socket and realizes the device (the guest then sees a slot hot-add);
//! 3. confirm: the device is in `query-pci` (or, before the guest numbered that bus, its
//!    `realized` property is true).
//!
//! Detach: `device_del`, then wait for `DEVICE_DELETED` of that id until the grace period
//! ends (a guest that refuses reports `DEVICE_UNPLUG_GUEST_ERROR`; a guest mid-operation makes
//! `device_del` fail with "guest is busy", which is retried). When the guest has not let go by
//! then, the agent reports [`VmEvent::GuestDidNotRelease`] and withdraws the function anyway:
//! its vfio-user connection is closed, so the guest sees a surprise removal (its reads fail)
//! and the function is free for its next consumer. Every step has a deadline: a stuck guest or
//! monitor never hangs the agent.

use crate::sync::MutexExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{json, Value};

use super::{EventSink, FunctionRef, FunctionSelector, VmConfigError, VmEvent, VmSettings, VmSpec};
use crate::host::qmp::{Event, Qmp, QmpError};

/// Errors attaching or detaching.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// No VM of that name is configured.
    #[error("no VM named {0:?} is configured")]
    UnknownVm(String),
    /// No configured VM takes this function.
    #[error("no configured VM takes function {0}")]
    NoVmFor(FunctionRef),
    /// Talking to the VM's monitor failed.
    #[error("VM {vm}: {source}")]
    Qmp {
        /// VM name.
        vm: String,
        /// Cause.
        #[source]
        source: QmpError,
    },
    /// Every hot-plug-capable root port of the VM is occupied (or it has none).
    #[error(
        "VM {vm} has no free hot-plug-capable pcie-root-port ({ports} root port(s) with an id, \
         all occupied or with hotplug=off); start it with spare ports (pcietun host qemu-args)"
    )]
    NoFreePort {
        /// VM name.
        vm: String,
        /// Root ports seen.
        ports: usize,
    },
    /// `device_add` returned but the device is not in the VM.
    #[error("VM {vm}: device {device} was added but is neither in query-pci nor realized")]
    NotConfirmed {
        /// VM name.
        vm: String,
        /// Device id.
        device: String,
    },
    /// The function's vfio-user socket could not be served.
    #[error("function {function}: vfio-user socket: {reason}")]
    Socket {
        /// The function.
        function: FunctionRef,
        /// Why.
        reason: String,
    },
    /// The function is attached to another VM.
    #[error("function {function} is attached to VM {vm}")]
    Busy {
        /// The function.
        function: FunctionRef,
        /// Where it is.
        vm: String,
    },
    /// The VM worker is not running (it stopped, or did not answer in time).
    #[error("the VM worker is not running or did not answer within {0:?}")]
    Worker(Duration),
}

impl VmError {
    /// Whether the VM could not be reached at all (worth retrying later: it may not run yet).
    pub fn unreachable(&self) -> bool {
        matches!(
            self,
            Self::Qmp {
                source: QmpError::Connect { .. }
                    | QmpError::Disconnected { .. }
                    | QmpError::Timeout { .. },
                ..
            }
        )
    }
}

/// A function in a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Attachment {
    /// VM name.
    pub vm: String,
    /// The function.
    pub function: FunctionRef,
    /// QEMU device id.
    pub device: String,
    /// The root port it sits in.
    pub port: String,
    /// The vfio-user socket QEMU connected to.
    pub socket: PathBuf,
}

/// How a detach ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DetachOutcome {
    /// The guest released the device (`DEVICE_DELETED`).
    Ejected,
    /// The guest did not release it within the grace period (or refused): the vfio-user
    /// connection was withdrawn under it (surprise removal). The QEMU device stays until the
    /// guest ejects it.
    Withdrawn,
    /// The device was not in the VM any more (QEMU restarted or exited, or it was removed by
    /// someone else); the connection was closed all the same.
    Gone,
}

#[derive(Debug)]
struct VmState {
    qmp: Option<Qmp>,
    attached: Vec<Attachment>,
}

#[derive(Debug)]
struct Vm {
    spec: VmSpec,
    state: Mutex<VmState>,
}

/// Attaches functions to and detaches them from the configured VMs.
pub struct VmAttacher {
    vms: Vec<Vm>,
    settings: VmSettings,
    sink: EventSink,
}

impl std::fmt::Debug for VmAttacher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmAttacher")
            .field("vms", &self.vms)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Device ids QEMU accepts (`[A-Za-z][A-Za-z0-9_.-]*`) derived from a function id
/// ([`safe_name`](crate::host::names::safe_name) behind `pcietun-`).
pub fn device_id(function: &FunctionRef) -> String {
    format!("pcietun-{}", crate::host::names::safe_name(&function.id))
}

fn us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Whether `query-pci`'s answer lists a device with this qdev id (on any bus).
fn in_query_pci(v: &Value, id: &str) -> bool {
    fn devices(list: &Value, id: &str) -> bool {
        list.as_array().is_some_and(|ds| {
            ds.iter().any(|d| {
                d.get("qdev_id").and_then(Value::as_str) == Some(id)
                    || d.get("pci_bridge")
                        .and_then(|b| b.get("devices"))
                        .is_some_and(|l| devices(l, id))
            })
        })
    }
    v.as_array().is_some_and(|buses| {
        buses
            .iter()
            .any(|b| b.get("devices").is_some_and(|l| devices(l, id)))
    })
}

/// Names of `qom-list` entries (`[{"name": ..., "type": ...}]`) whose type satisfies `want`.
fn qom_names(v: &Value, want: impl Fn(&str) -> bool) -> Vec<String> {
    v.as_array()
        .map(|l| {
            l.iter()
                .filter(|e| e.get("type").and_then(Value::as_str).is_some_and(&want))
                .filter_map(|e| e.get("name").and_then(Value::as_str).map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Sort port names so `rp2` comes before `rp10` (and libvirt's `pci.2` before `pci.10`).
fn natural_key(s: &str) -> (String, u64, String) {
    let cut = s.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    let (head, digits) = s.split_at(cut);
    (head.to_string(), digits.parse().unwrap_or(0), s.to_string())
}

impl VmAttacher {
    /// An attacher for `vms`; every event goes to `sink`.
    pub fn new(
        vms: Vec<VmSpec>,
        settings: VmSettings,
        sink: EventSink,
    ) -> Result<Self, VmConfigError> {
        for (i, v) in vms.iter().enumerate() {
            if vms[..i].iter().any(|w| w.name == v.name) {
                return Err(VmConfigError::Duplicate(v.name.clone()));
            }
        }
        Ok(Self {
            vms: vms
                .into_iter()
                .map(|spec| Vm {
                    spec,
                    state: Mutex::new(VmState {
                        qmp: None,
                        attached: Vec::new(),
                    }),
                })
                .collect(),
            settings,
            sink,
        })
    }

    /// The timing in force.
    pub fn settings(&self) -> VmSettings {
        self.settings
    }

    /// The configured VMs.
    pub fn vms(&self) -> impl Iterator<Item = &VmSpec> {
        self.vms.iter().map(|v| &v.spec)
    }

    /// The VM that takes `function` by configuration: one that names it explicitly, else one
    /// with `next` (the first that holds no function yet, else the first).
    pub fn vm_for(&self, function: &FunctionRef) -> Option<&str> {
        if let Some(v) = self
            .vms
            .iter()
            .find(|v| v.spec.functions.iter().any(|s| s.names(function)))
        {
            return Some(&v.spec.name);
        }
        let next: Vec<&Vm> = self
            .vms
            .iter()
            .filter(|v| v.spec.functions.contains(&FunctionSelector::Next))
            .collect();
        next.iter()
            .find(|v| v.state.lock_or_recover().attached.is_empty())
            .or(next.first())
            .map(|v| v.spec.name.as_str())
    }

    /// Every function in a VM now.
    pub fn attachments(&self) -> Vec<Attachment> {
        self.vms
            .iter()
            .flat_map(|v| v.state.lock_or_recover().attached.clone())
            .collect()
    }

    /// Where `function` is attached, if anywhere.
    pub fn attachment(&self, function: &FunctionRef) -> Option<Attachment> {
        self.attachments()
            .into_iter()
            .find(|a| a.function == *function)
    }

    fn vm(&self, name: &str) -> Result<&Vm, VmError> {
        self.vms
            .iter()
            .find(|v| v.spec.name == name)
            .ok_or_else(|| VmError::UnknownVm(name.to_string()))
    }

    fn emit(&self, e: VmEvent) {
        (self.sink)(&e);
    }

    /// Hot-add `function`, served at `socket`, to VM `vm`. Attaching a function that is
    /// already in that VM returns the existing attachment.
    pub fn attach(
        &self,
        function: &FunctionRef,
        socket: &Path,
        vm: &str,
    ) -> Result<Attachment, VmError> {
        let t0 = Instant::now();
        if let Some(a) = self.attachment(function) {
            if a.vm == vm {
                return Ok(a);
            }
            return Err(VmError::Busy {
                function: function.clone(),
                vm: a.vm,
            });
        }
        let v = match self.vm(vm) {
            Ok(v) => v,
            Err(e) => {
                // A VM the appliance (or an operator) named that this agent does not have:
                // reported like any failed attach, so the assignment shows it.
                tracing::warn!(vm, function = %function, error = %e, "attaching to VM failed");
                self.emit(VmEvent::AttachFailed {
                    vm: vm.to_string(),
                    function: function.clone(),
                    error: e.to_string(),
                });
                return Err(e);
            }
        };
        let mut st = v.state.lock_or_recover();
        let r = self.attach_locked(v, &mut st, function, socket);
        match r {
            Ok(a) => {
                tracing::info!(vm, function = %function, device = %a.device, port = %a.port,
                    took = ?t0.elapsed(), "function attached to VM");
                st.attached.push(a.clone());
                self.emit(VmEvent::Attached {
                    vm: vm.to_string(),
                    function: function.clone(),
                    device: a.device.clone(),
                    port: a.port.clone(),
                    took_us: us(t0.elapsed()),
                });
                Ok(a)
            }
            Err(e) => {
                tracing::warn!(vm, function = %function, error = %e, "attaching to VM failed");
                self.emit(VmEvent::AttachFailed {
                    vm: vm.to_string(),
                    function: function.clone(),
                    error: e.to_string(),
                });
                Err(e)
            }
        }
    }

    /// Run `f` on the VM's monitor, connecting first if needed; a connection that failed is
    /// dropped so the next call reconnects (QEMU may have restarted).
    fn with_qmp<T>(
        &self,
        v: &Vm,
        st: &mut VmState,
        f: impl FnOnce(&mut Qmp, &VmSettings) -> Result<T, QmpError>,
    ) -> Result<T, VmError> {
        let wrap = |source| VmError::Qmp {
            vm: v.spec.name.clone(),
            source,
        };
        if st.qmp.is_none() {
            let q = Qmp::connect(&v.spec.qmp, self.settings.connect_timeout).map_err(wrap)?;
            let ver = q.greeting().version;
            if (ver.major, ver.minor) < (10, 1) {
                tracing::warn!(vm = %v.spec.name, version = %ver,
                    "QEMU older than 10.1 has no vfio-user-pci; attaching will fail");
            }
            st.qmp = Some(q);
        }
        let Some(q) = st.qmp.as_mut() else {
            unreachable!("connected above")
        };
        let r = f(q, &self.settings);
        if let Err(e) = &r {
            if e.is_fatal() {
                st.qmp = None;
            }
        }
        r.map_err(wrap)
    }

    fn attach_locked(
        &self,
        v: &Vm,
        st: &mut VmState,
        function: &FunctionRef,
        socket: &Path,
    ) -> Result<Attachment, VmError> {
        let socket = std::path::absolute(socket).map_err(|e| VmError::Socket {
            function: function.clone(),
            reason: e.to_string(),
        })?;
        let ours: Vec<String> = st.attached.iter().map(|a| a.port.clone()).collect();
        let base = device_id(function);
        let vm = v.spec.name.clone();
        let found = self.with_qmp(v, st, |q, s| {
            let t = s.command_timeout;
            let peripheral =
                q.execute("qom-list", Some(json!({"path": "/machine/peripheral"})), t)?;
            let mut ports = qom_names(&peripheral, |ty| ty == "child<pcie-root-port>");
            ports.sort_by_key(|p| natural_key(p));
            let existing = qom_names(&peripheral, |ty| ty.starts_with("child<"));
            // A device the guest never released keeps its id: take the next free one.
            let mut id = base.clone();
            let mut n = 2;
            while existing.contains(&id) {
                id = format!("{base}-{n}");
                n += 1;
            }
            let mut free = None;
            for p in &ports {
                if ours.contains(p) {
                    continue;
                }
                let path = format!("/machine/peripheral/{p}");
                let hp = q.execute(
                    "qom-get",
                    Some(json!({"path": path, "property": "hotplug"})),
                    t,
                );
                match hp {
                    Ok(Value::Bool(true)) => {}
                    Ok(_) => continue,
                    Err(e) if e.is_fatal() => return Err(e),
                    Err(_) => continue,
                }
                let bus = q.execute("qom-list", Some(json!({"path": format!("{path}/{p}")})), t);
                let occupied = match bus {
                    Ok(l) => qom_names(&l, |ty| ty.starts_with("link<"))
                        .iter()
                        .any(|n| n.starts_with("child[")),
                    Err(e) if e.is_fatal() => return Err(e),
                    Err(_) => true,
                };
                if !occupied {
                    free = Some(p.clone());
                    break;
                }
            }
            Ok((ports.len(), free, id))
        })?;
        let (nports, port, id) = found;
        let port = port.ok_or(VmError::NoFreePort {
            vm: vm.clone(),
            ports: nports,
        })?;
        let args = json!({
            "driver": "vfio-user-pci",
            "id": id,
            "bus": port,
            "socket": {"type": "unix", "path": socket.to_string_lossy()},
        });
        self.with_qmp(v, st, |q, s| {
            q.execute("device_add", Some(args), s.command_timeout)
        })?;
        let confirmed = self.with_qmp(v, st, |q, s| {
            let t = s.command_timeout;
            let pci = q.execute("query-pci", None, t)?;
            if in_query_pci(&pci, &id) {
                return Ok(true);
            }
            // The guest has not numbered the port's bus yet (still in firmware): QEMU's own
            // word that the device is realized is the confirmation left.
            let path = format!("/machine/peripheral/{id}");
            match q.execute(
                "qom-get",
                Some(json!({"path": path, "property": "realized"})),
                t,
            ) {
                Ok(Value::Bool(r)) => Ok(r),
                Ok(_) => Ok(false),
                Err(e) if e.is_fatal() => Err(e),
                Err(_) => Ok(false),
            }
        })?;
        if !confirmed {
            let _ = self.with_qmp(v, st, |q, s| {
                q.execute("device_del", Some(json!({"id": id})), s.command_timeout)
            });
            return Err(VmError::NotConfirmed { vm, device: id });
        }
        Ok(Attachment {
            vm,
            function: function.clone(),
            device: id,
            port,
            socket,
        })
    }

    /// Take `function` out of its VM: `device_del`, wait for the guest's release within the
    /// grace period, then `withdraw` (close the function's vfio-user connection) in every case.
    /// `Ok(None)` when the function is in no VM.
    pub fn detach(
        &self,
        function: &FunctionRef,
        withdraw: &dyn Fn(),
    ) -> Result<Option<DetachOutcome>, VmError> {
        let t0 = Instant::now();
        let Some(a) = self.attachment(function) else {
            return Ok(None);
        };
        let v = self.vm(&a.vm)?;
        let mut st = v.state.lock_or_recover();
        let deadline = t0 + self.settings.grace;
        let dev = a.device.clone();
        let mut released = self.with_qmp(v, &mut st, |q, s| {
            release(q, &dev, deadline, s.command_timeout)
        });
        if hung_up(&released) {
            // The monitor went away mid-detach. QEMU may have exited — a guest that powers off
            // right after its pciehp unconfigured the card does that before QEMU unplugs the
            // device (QEMU waits for the slot's power indicator to go off, which pciehp writes
            // a second after the power controller) — or just this connection broke. A new
            // connection tells which; its events start afresh, so it asks about the device.
            // A QEMU on its way out may still accept that connection and then drop it (its
            // listening socket closes after the old connection did): a hang-up is asked again,
            // a few times and within the grace period, until the monitor answers or is gone.
            for attempt in 0..RECONNECTS {
                if attempt > 0 {
                    std::thread::sleep(RECONNECT_PAUSE);
                }
                released = self.with_qmp(v, &mut st, |q, s| {
                    if device_present(q, &dev, s.command_timeout)? {
                        wait_deleted(q, &dev, deadline, Instant::now(), s.command_timeout)
                    } else {
                        Ok(Release::Absent)
                    }
                });
                if !hung_up(&released) || Instant::now() + RECONNECT_PAUSE >= deadline {
                    break;
                }
            }
        }
        let outcome = match released {
            Ok(Release::Deleted) => DetachOutcome::Ejected,
            Ok(Release::Absent) => DetachOutcome::Gone,
            Ok(Release::Refused(reason)) => {
                self.did_not_release(&a, reason);
                DetachOutcome::Withdrawn
            }
            Err(VmError::Qmp {
                source: QmpError::Connect { source, .. },
                ..
            }) if matches!(
                source.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound
            ) =>
            {
                // Nobody listens on the monitor any more: QEMU exited, and its devices with it.
                tracing::warn!(vm = %a.vm, function = %function, error = %source,
                    "VM monitor gone while detaching (QEMU exited?); the device went with it");
                DetachOutcome::Gone
            }
            Err(e) if e.unreachable() => {
                // The monitor does not answer (or another client holds it): whether the guest
                // let go is unknown, and the function must come back.
                tracing::warn!(vm = %a.vm, function = %function, error = %e,
                    "VM monitor unreachable while detaching; withdrawing the function");
                self.did_not_release(&a, format!("monitor unreachable: {e}"));
                DetachOutcome::Withdrawn
            }
            Err(e) => {
                self.did_not_release(&a, e.to_string());
                DetachOutcome::Withdrawn
            }
        };
        withdraw();
        st.attached.retain(|x| x.function != *function);
        let took = t0.elapsed();
        tracing::info!(vm = %a.vm, function = %function, device = %a.device, ?outcome, ?took,
            "function detached from VM");
        self.emit(VmEvent::Detached {
            vm: a.vm.clone(),
            function: function.clone(),
            device: a.device.clone(),
            outcome,
            took_us: us(took),
        });
        Ok(Some(outcome))
    }

    fn did_not_release(&self, a: &Attachment, reason: String) {
        tracing::warn!(vm = %a.vm, function = %a.function, device = %a.device, %reason,
            "guest did not release the function; withdrawing it (surprise removal)");
        self.emit(VmEvent::GuestDidNotRelease {
            vm: a.vm.clone(),
            function: a.function.clone(),
            device: a.device.clone(),
            reason,
        });
    }
}

/// Whether the monitor hung up on a detach step.
fn hung_up<T>(r: &Result<T, VmError>) -> bool {
    matches!(
        r,
        Err(VmError::Qmp {
            source: QmpError::Disconnected { .. },
            ..
        })
    )
}

/// How often a detach asks a monitor that hung up on it again, and how long it waits between.
const RECONNECTS: usize = 5;
const RECONNECT_PAUSE: Duration = Duration::from_millis(50);

enum Release {
    /// `DEVICE_DELETED` arrived.
    Deleted,
    /// QEMU does not know the device (any more).
    Absent,
    /// Not released in time, or refused; why.
    Refused(String),
}

fn is_unplug_event(e: &Event, dev: &str) -> bool {
    matches!(
        e.name.as_str(),
        "DEVICE_DELETED" | "DEVICE_UNPLUG_GUEST_ERROR"
    ) && e.str("device") == Some(dev)
}

/// `device_del` (retried while the guest is busy) and the wait for `DEVICE_DELETED`, all by
/// `deadline`.
fn release(
    q: &mut Qmp,
    dev: &str,
    deadline: Instant,
    command_timeout: Duration,
) -> Result<Release, QmpError> {
    // An old event about this id (an earlier device of the same name) must not count.
    q.discard_events(|e| is_unplug_event(e, dev))?;
    let asked = Instant::now();
    loop {
        let t = command_timeout.min(
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_secs(1)),
        );
        match q.execute("device_del", Some(json!({"id": dev})), t) {
            Ok(_) => break,
            Err(QmpError::Command { error, .. }) if error.class == "DeviceNotFound" => {
                return Ok(Release::Absent)
            }
            // A second device_del while the first is pending: keep waiting for the event.
            Err(QmpError::Command { error, .. }) if error.desc.contains("in progress") => break,
            Err(QmpError::Command { error, .. }) => {
                // "guest is busy (power indicator blinking)": the guest is mid hot-plug
                // operation; ask again until the deadline.
                if Instant::now() + Duration::from_millis(250) >= deadline {
                    return Ok(Release::Refused(format!("device_del refused: {error}")));
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            Err(e) => return Err(e),
        }
    }
    wait_deleted(q, dev, deadline, asked, command_timeout)
}

/// Whether QEMU still has a device `dev` (`qom-list /machine/peripheral`).
fn device_present(q: &mut Qmp, dev: &str, command_timeout: Duration) -> Result<bool, QmpError> {
    let l = q.execute(
        "qom-list",
        Some(json!({"path": "/machine/peripheral"})),
        command_timeout,
    )?;
    Ok(qom_names(&l, |ty| ty.starts_with("child<"))
        .iter()
        .any(|n| n == dev))
}

/// Wait for `DEVICE_DELETED` (or the guest's refusal) of `dev` until `deadline`. When none
/// came, QEMU is asked whether the device is still there before the guest is called
/// unwilling: an event can be lost with a monitor connection, the device's absence cannot.
fn wait_deleted(
    q: &mut Qmp,
    dev: &str,
    deadline: Instant,
    asked: Instant,
    command_timeout: Duration,
) -> Result<Release, QmpError> {
    match q.wait_event(deadline, |e| is_unplug_event(e, dev))? {
        Some(e) if e.name == "DEVICE_DELETED" => Ok(Release::Deleted),
        Some(_) => Ok(Release::Refused(
            "the guest refused the unplug (DEVICE_UNPLUG_GUEST_ERROR)".into(),
        )),
        None => {
            if !device_present(q, dev, command_timeout.min(Duration::from_secs(5)))? {
                tracing::info!(
                    device = dev,
                    "no DEVICE_DELETED seen, but the device is gone"
                );
                return Ok(Release::Deleted);
            }
            Ok(Release::Refused(format!(
                "no DEVICE_DELETED within the grace period ({:.1} s after device_del)",
                asked.elapsed().as_secs_f64()
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids_are_qemu_ids() {
        let f = FunctionRef::from_bdf("01:00.0".parse().unwrap());
        assert_eq!(device_id(&f), "pcietun-01_00.0");
        let g = FunctionRef {
            id: "nvme a/1".into(),
            bdf: f.bdf,
        };
        assert_eq!(device_id(&g), "pcietun-nvme_a_1");
    }

    #[test]
    fn natural_port_order() {
        let mut v = vec!["rp10", "rp2", "pci.1", "rp1", "pci.12", "pci.3"];
        v.sort_by_key(|p| natural_key(p));
        assert_eq!(v, ["pci.1", "pci.3", "pci.12", "rp1", "rp2", "rp10"]);
    }

    #[test]
    fn query_pci_search_descends_bridges() {
        let v = json!([{"bus": 0, "devices": [
            {"qdev_id": "", "slot": 0},
            {"qdev_id": "rp0", "pci_bridge": {"bus": {}, "devices": [{"qdev_id": "pcietun-01_00.0"}]}}
        ]}]);
        assert!(in_query_pci(&v, "pcietun-01_00.0"));
        assert!(in_query_pci(&v, "rp0"));
        assert!(!in_query_pci(&v, "pcietun-02_00.0"));
        assert!(!in_query_pci(&json!({"x": 1}), "rp0"));
    }
}
