//! Run-time control of a serving appliance (docs/appliance.md "Control API"): a cloneable
//! [`Control`] handle that lists the pool (functions, hosts), assigns and unassigns functions
//! with the orderly slot protocol (docs/protocol.md §10), and streams [`PoolEvent`]s.
//!
//! The serving loop owns the pool's state (the routing core, `router.rs`); a `Control` only
//! sends it [`Command`]s over a channel and wakes it (the same wake-up the endpoint's device
//! threads use), so the TLP path takes no lock. Outcomes are reported asynchronously: every
//! operation takes a [`Done`] callback, called exactly once — with `Ok` once the new owner's
//! slot shows the function (assign) or once the function is detached, reset and back in the pool
//! (unassign), or with a typed [`ControlError`]. Snapshots ([`Control::functions`],
//! [`Control::hosts`]) are what the loop last published (on every change, and every 100 ms for
//! the sessions' round-trip times).
//!
//! The shape follows the management plane's `Pool` trait one to one (functions, hosts,
//! assign(fn, host, done), unassign(fn, done), subscribe); the appliance never imports the
//! management layer — an adapter there maps one onto the other.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam::channel::{self, Receiver, Sender};

use super::config::DeviceSpec;
use super::devices::{self, HealthProbe, Scratch};
use super::inventory::{FunctionEntry, FunctionId, InventoryError};
use super::policy::{Policy, PolicyError};
use super::traffic::{FunctionTraffic, HostTraffic};
use crate::endpoint::Device;
use crate::sync::MutexExt;
use crate::tlp::slot::{ConsumerEvent, VmName};
use crate::transport::{HostId, HostKey, PublicKey};

/// Why a control operation was refused or failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// No function with this id in the pool.
    #[error("unknown function {0}")]
    UnknownFunction(FunctionId),
    /// No host with this id is configured.
    #[error("unknown host {0}")]
    UnknownHost(HostId),
    /// The function (or another function of its card, which moves with it) belongs to a host.
    #[error("function {function} is already assigned to {owner}")]
    AlreadyAssigned {
        /// The function.
        function: FunctionId,
        /// Its owner.
        owner: HostId,
    },
    /// The function belongs to no host.
    #[error("function {0} is not assigned")]
    NotAssigned(FunctionId),
    /// The function is being removed from its host or reset; try again when it settles.
    #[error("function {0} is changing owner (being removed or reset)")]
    Busy(FunctionId),
    /// The function failed and is out of service.
    #[error("function {0} failed")]
    Failed(FunctionId),
    /// The host already shows 32 slots.
    #[error("host {0} has no free slot")]
    NoFreeSlot(HostId),
    /// The card of a [`Control::add_function`] could not be built (its backing file, dump
    /// or server is not usable, or its spec is out of range).
    #[error("cannot add the device: {0}")]
    BadDevice(String),
    /// Every device number (0 to 31) already holds a card.
    #[error("no free device number for another card")]
    NoFreeDevice,
    /// A virtual function cannot be removed on its own; it goes with its physical function.
    #[error("function {0} is a virtual function: remove its physical function")]
    VirtualFunction(FunctionId),
    /// A physical function whose virtual functions the appliance pools: it holds their life
    /// (a reset or a VF Enable write by a host would pull them from their owners), so it is
    /// never given to a host; its VFs are.
    #[error("function {0} is the physical function of pooled virtual functions: assign its VFs ({0}.vf0, ...)")]
    PooledVfs(FunctionId),
    /// [`Control::set_vf_count`] on a function without the SR-IOV capability (or a VF).
    #[error("function {0} is not an SR-IOV physical function")]
    NotSriov(FunctionId),
    /// [`Control::set_vf_count`] asked for more VFs than the physical function has.
    #[error(
        "function {function} has at most {total} virtual functions (TotalVFs); {requested} asked"
    )]
    TooManyVfs {
        /// The physical function.
        function: FunctionId,
        /// The count asked for.
        requested: u16,
        /// Its TotalVFs.
        total: u16,
    },
    /// [`Control::set_vf_count`] while one of the PF's VFs belongs to a host or is being
    /// reset: changing NumVFs tears every VF down (VF Enable cleared first, PCIe r5.0
    /// §9.3.3.3), so each must be free.
    #[error("function {function}'s virtual function {vf} {why}: unassign it before changing the VF count")]
    VfInUse {
        /// The physical function.
        function: FunctionId,
        /// The VF in use.
        vf: FunctionId,
        /// "is assigned to HOST" or "is being reset".
        why: String,
    },
    /// A policy value that is not one (a zero cap).
    #[error(transparent)]
    BadPolicy(PolicyError),
    /// A host with this id is already accepted.
    #[error("host {0} already exists")]
    HostExists(HostId),
    /// The key is already the key of a host (named): one key, one host.
    #[error("this public key is already the key of host {0}")]
    KeyInUse(HostId),
    /// A host is removed only once it owns nothing.
    #[error("host {0} owns functions: unassign them first")]
    HostOwnsFunctions(HostId),
    /// Another refusal of the inventory.
    #[error(transparent)]
    Inventory(InventoryError),
    /// The appliance stopped before the operation finished.
    #[error("the appliance is not serving")]
    Stopped,
}

impl From<InventoryError> for ControlError {
    fn from(e: InventoryError) -> ControlError {
        match e {
            InventoryError::UnknownFunction(f) => ControlError::UnknownFunction(f),
            InventoryError::UnknownHost(h) => ControlError::UnknownHost(h),
            InventoryError::AlreadyAssigned { function, owner } => {
                ControlError::AlreadyAssigned { function, owner }
            }
            InventoryError::NotAssigned(f) => ControlError::NotAssigned(f),
            InventoryError::Resetting(f) => ControlError::Busy(f),
            InventoryError::Failed(f) => ControlError::Failed(f),
            other => ControlError::Inventory(other),
        }
    }
}

/// The outcome callback of an operation, called exactly once (on the serving thread: keep it
/// short — send on a channel).
pub type Done = Box<dyn FnOnce(Result<(), ControlError>) + Send>;

/// The outcome callback of [`Control::add_function`]: the new card's id.
pub type AddDone = Box<dyn FnOnce(Result<FunctionId, ControlError>) + Send>;

/// A card built by [`Control::add_function`], on its way to the serving loop.
pub(crate) struct NewCard {
    pub(crate) name: Option<String>,
    pub(crate) device: Box<dyn Device>,
    /// How the serving loop learns that its backing went away (a vfio-user server).
    pub(crate) probe: Option<HealthProbe>,
    /// Its temporary backing file (a scratch NVMe), kept as long as the appliance serves.
    pub(crate) scratch: Scratch,
    /// SR-IOV virtual functions to enable and pool (0: none).
    pub(crate) vfs: u16,
}

/// What the serving loop is asked to do.
pub(crate) enum Command {
    Assign {
        function: FunctionId,
        host: HostId,
        /// The VM on the host that is to take it (sent to the host before `Present`).
        vm: Option<VmName>,
        done: Done,
    },
    Unassign {
        function: FunctionId,
        done: Done,
    },
    Add {
        card: NewCard,
        done: AddDone,
    },
    Remove {
        function: FunctionId,
        done: Done,
    },
    SetPolicy {
        function: FunctionId,
        policy: Policy,
        done: Done,
    },
    SetVfs {
        function: FunctionId,
        n: u16,
        done: Done,
    },
    AddHost {
        key: HostKey,
        done: Done,
    },
    RemoveHost {
        host: HostId,
        done: Done,
    },
    SetHostKey {
        host: HostId,
        public: PublicKey,
        done: Done,
    },
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Assign { function, host, .. } => write!(f, "Assign({function}, {host})"),
            Command::Unassign { function, .. } => write!(f, "Unassign({function})"),
            Command::Add { card, .. } => write!(f, "Add({})", card.device.name()),
            Command::Remove { function, .. } => write!(f, "Remove({function})"),
            Command::SetPolicy {
                function, policy, ..
            } => write!(f, "SetPolicy({function}, {policy:?})"),
            Command::SetVfs { function, n, .. } => write!(f, "SetVfs({function}, {n})"),
            // Never the PSK.
            Command::AddHost { key, .. } => write!(f, "AddHost({})", key.host),
            Command::RemoveHost { host, .. } => write!(f, "RemoveHost({host})"),
            Command::SetHostKey { host, .. } => write!(f, "SetHostKey({host})"),
        }
    }
}

/// Something that changed in the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolEvent {
    /// A function joined the pool.
    FunctionAdded(FunctionId),
    /// A function left the pool.
    FunctionRemoved(FunctionId),
    /// A function failed (its reset did not complete, its backing store broke).
    FunctionFailed(FunctionId),
    /// A failed function is back in service (its vfio-user server restarted and serves the
    /// same device): unassigned, or given back to its previous owner (then an
    /// `AssignmentChanged` follows).
    FunctionRecovered(FunctionId),
    /// A host's session came up (`epoch`: its incarnation).
    HostConnected {
        /// The host.
        host: HostId,
        /// Its epoch.
        epoch: u32,
    },
    /// A host's session went down (its functions were reset, as after a surprise-down).
    HostLost(HostId),
    /// A function's owner changed (`None`: back in the pool).
    AssignmentChanged {
        /// The function.
        function: FunctionId,
        /// Its new owner.
        host: Option<HostId>,
    },
    /// A function started being held by its policy's caps (`throttled`), or has not been for
    /// a second (docs/api.md "Policy"); at most one change per function per second.
    Throttling {
        /// The function.
        function: FunctionId,
        /// The cap it was (first) held by.
        limit: super::policy::Limit,
        /// That cap's value (bytes or requests per second).
        cap: u64,
        /// Held now, or no longer.
        throttled: bool,
    },
    /// The owner's agent reported what one of its VMs did with the function (a slot consumer
    /// report, docs/protocol.md §10; accepted only from the owner, for the current
    /// assignment, within the host's report rate).
    VmConsumer {
        /// The function (the first of its slot's unit).
        function: FunctionId,
        /// The owner that reported it.
        host: HostId,
        /// The VM.
        vm: VmName,
        /// What happened.
        event: ConsumerEvent,
    },
}

/// The VM that consumes a function on its owner, as the last consumer report (or the
/// assignment's own VM name, before any report) says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct VmConsumer {
    /// The VM.
    #[serde(serialize_with = "display_str")]
    pub vm: VmName,
    /// The last reported event (`None`: the assignment named the VM, the host reported nothing
    /// yet).
    #[serde(serialize_with = "event_str")]
    pub event: Option<ConsumerEvent>,
    /// When the appliance learnt it.
    pub since: std::time::SystemTime,
}

fn display_str<S: serde::Serializer>(v: &VmName, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

fn event_str<S: serde::Serializer>(e: &Option<ConsumerEvent>, s: S) -> Result<S::Ok, S::Error> {
    match e {
        Some(e) => s.serialize_str(e.name()),
        None => s.serialize_none(),
    }
}

/// Where a function is, as the control API shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FunctionStatus {
    /// The inventory entry (id, PCI identity, state with the owner).
    #[serde(flatten)]
    pub entry: FunctionEntry,
    /// The device number the owner sees it at.
    pub slot: Option<u8>,
    /// An orderly removal from its owner is under way (grace period running).
    pub detaching: bool,
    /// Its traffic since it joined the pool.
    pub traffic: FunctionTraffic,
    /// The VM on its owner that consumes it (cleared when it leaves that owner).
    pub vm: Option<VmConsumer>,
    /// Its caps ([`Control::set_policy`]; unlimited by default).
    pub policy: Policy,
}

/// A known host, as the control API shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HostStatus {
    /// Its id.
    #[serde(serialize_with = "host_str")]
    pub id: HostId,
    /// Whether its session is up.
    pub connected: bool,
    /// The epoch (incarnation) it last connected with.
    pub epoch: Option<u32>,
    /// Smoothed round-trip time of its session, when connected and measured.
    pub rtt: Option<Duration>,
    /// Its transport traffic over all its sessions.
    pub traffic: HostTraffic,
    /// The functions it owns.
    pub functions: Vec<FunctionId>,
}

fn host_str<S: serde::Serializer>(h: &HostId, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(h)
}

/// The pool as last published by the serving loop.
#[derive(Debug, Clone, Default)]
pub(crate) struct Snapshot {
    pub(crate) functions: Vec<FunctionStatus>,
    pub(crate) hosts: Vec<HostStatus>,
}

/// The shared half of a control channel: the loop's end.
#[derive(Debug)]
pub(crate) struct ControlPort {
    pub(crate) commands: Receiver<Command>,
    pub(crate) snapshot: Arc<Mutex<Snapshot>>,
    pub(crate) subscribers: Arc<Mutex<Vec<Sender<PoolEvent>>>>,
}

impl ControlPort {
    /// Publish the pool's state for [`Control`]'s snapshots.
    pub(crate) fn publish(&self, s: Snapshot) {
        *self.snapshot.lock_or_recover() = s;
    }

    /// Hand events to every subscriber (dropping those that went away).
    pub(crate) fn notify(&self, events: &mut Vec<PoolEvent>) {
        if events.is_empty() {
            return;
        }
        let mut subs = self.subscribers.lock_or_recover();
        for e in events.drain(..) {
            subs.retain(|s| s.send(e.clone()).is_ok());
        }
    }
}

/// The wake-up of the serving loop.
pub(crate) type Wake = Arc<dyn Fn() + Send + Sync>;

/// A handle on a serving appliance's pool. Cheap to clone; usable from any thread.
#[derive(Clone)]
pub struct Control {
    commands: Sender<Command>,
    wake: Arc<Mutex<Option<Wake>>>,
    snapshot: Arc<Mutex<Snapshot>>,
    subscribers: Arc<Mutex<Vec<Sender<PoolEvent>>>>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("queued", &self.commands.len())
            .finish()
    }
}

impl Control {
    /// A control handle and the loop's end of it.
    pub(crate) fn new() -> (Control, ControlPort) {
        let (tx, rx) = channel::unbounded();
        let snapshot = Arc::new(Mutex::new(Snapshot::default()));
        let subscribers = Arc::new(Mutex::new(Vec::new()));
        (
            Control {
                commands: tx,
                wake: Arc::new(Mutex::new(None)),
                snapshot: snapshot.clone(),
                subscribers: subscribers.clone(),
            },
            ControlPort {
                commands: rx,
                snapshot,
                subscribers,
            },
        )
    }

    /// Install the serving loop's wake-up.
    pub(crate) fn set_wake(&self, wake: Wake) {
        *self.wake.lock_or_recover() = Some(wake);
    }

    fn submit(&self, c: Command) {
        match self.commands.send(c) {
            Ok(()) => {
                if let Some(w) = self.wake.lock_or_recover().as_ref() {
                    w();
                }
            }
            Err(channel::SendError(c)) => match c {
                Command::Assign { done, .. }
                | Command::Unassign { done, .. }
                | Command::Remove { done, .. }
                | Command::SetPolicy { done, .. }
                | Command::SetVfs { done, .. }
                | Command::AddHost { done, .. }
                | Command::RemoveHost { done, .. }
                | Command::SetHostKey { done, .. } => done(Err(ControlError::Stopped)),
                Command::Add { done, .. } => done(Err(ControlError::Stopped)),
            },
        }
    }

    /// Every function of the pool, in inventory order.
    pub fn functions(&self) -> Vec<FunctionStatus> {
        self.snapshot.lock_or_recover().functions.clone()
    }

    /// Every known host and its session.
    pub fn hosts(&self) -> Vec<HostStatus> {
        self.snapshot.lock_or_recover().hosts.clone()
    }

    /// Give `function` (and the other functions of its card, which share its slot; a VF
    /// alone) to `host`: its slot shows it at once if the host's session is up (a `Present`
    /// slot message), else at the host's next enumeration. `done` gets the outcome.
    pub fn assign(
        &self,
        function: FunctionId,
        host: HostId,
        done: impl FnOnce(Result<(), ControlError>) + Send + 'static,
    ) {
        self.assign_to_vm(function, host, None, done)
    }

    /// [`assign`](Self::assign), naming the VM on `host` that is to take the function: the
    /// host's agent is told (a `VmTarget` slot message before the `Present`) and attaches the
    /// function to that VM instead of the one its configuration picks.
    pub fn assign_to_vm(
        &self,
        function: FunctionId,
        host: HostId,
        vm: Option<VmName>,
        done: impl FnOnce(Result<(), ControlError>) + Send + 'static,
    ) {
        self.submit(Command::Assign {
            function,
            host,
            vm,
            done: Box::new(done),
        });
    }

    /// Take `function` (with its card) from its owner in order: `RemovalRequest` to the
    /// owner, then after its `RemovalAck` or the grace period the function is detached
    /// (`Removed`; its outstanding requests fail), reset and wiped, and back in the pool.
    /// `done` gets the outcome once it is unassigned.
    pub fn unassign(
        &self,
        function: FunctionId,
        done: impl FnOnce(Result<(), ControlError>) + Send + 'static,
    ) {
        self.submit(Command::Unassign {
            function,
            done: Box::new(done),
        });
    }

    /// Plug a new card into the running pool: `spec` is what a `[[device]]` table (or a
    /// `--device` flag, [`parse_device_flag`](super::config::parse_device_flag)) describes,
    /// `name` its stable inventory name (`None`: the id derived from where it lands). The card
    /// is built on the calling thread (backing file opened or created, dump parsed, server
    /// connected to), then the serving loop puts it at the lowest free device number,
    /// unassigned; no other function's I/O waits for it. `done` gets its id, or why not
    /// (the build failed, the name is taken, every device number is used).
    pub fn add_function(
        &self,
        spec: &DeviceSpec,
        name: Option<&str>,
        done: impl FnOnce(Result<FunctionId, ControlError>) + Send + 'static,
    ) {
        if let Some(n) = name {
            if let Err(e) = FunctionId::named(n) {
                return done(Err(e.into()));
            }
        }
        let mut scratch = Scratch::default();
        let mut warnings = Vec::new();
        let (device, probe) = match devices::build_device(spec, &mut warnings, &mut scratch) {
            Ok(d) => d,
            Err(e) => return done(Err(ControlError::BadDevice(e.to_string()))),
        };
        for w in warnings {
            tracing::warn!("appliance: added device: {w}");
        }
        let card = NewCard {
            name: name.map(str::to_string),
            device,
            probe,
            scratch,
            vfs: spec.pooled_vfs(),
        };
        self.submit(Command::Add {
            card,
            done: Box::new(done),
        });
    }

    /// Take an unassigned card out of the running pool (every function at its device
    /// number): its device model is dropped and its device number is free again. Refused
    /// while any function of the card belongs to a host ([`ControlError::AlreadyAssigned`]:
    /// unassign it first) or is being reset, and for a virtual function.
    pub fn remove_function(
        &self,
        function: FunctionId,
        done: impl FnOnce(Result<(), ControlError>) + Send + 'static,
    ) {
        self.submit(Command::Remove {
            function,
            done: Box::new(done),
        });
    }

    /// Cap `function`'s traffic (bytes per second each way, non-posted requests per second;
    /// `Policy::UNLIMITED` lifts every cap). Applied by the serving loop between two TLPs,
    /// at run time, without disturbing I/O: what the old caps held goes, in order, as the new
    /// ones allow. The policy belongs to the function (whoever owns it) until changed; a zero
    /// cap is refused ([`ControlError::BadPolicy`]). `done` gets the outcome.
    pub fn set_policy(
        &self,
        function: FunctionId,
        policy: Policy,
        done: impl FnOnce(Result<(), ControlError>) + Send + 'static,
    ) {
        if let Err(e) = policy.check() {
            return done(Err(ControlError::BadPolicy(e)));
        }
        self.submit(Command::SetPolicy {
            function,
            policy,
            done: Box::new(done),
        });
    }

    /// [`set_policy`](Self::set_policy), waiting up to `timeout` for the outcome.
    pub fn set_policy_wait(
        &self,
        function: FunctionId,
        policy: Policy,
        timeout: Duration,
    ) -> Result<(), ControlError> {
        let (tx, rx) = channel::bounded(1);
        self.set_policy(function, policy, move |r| {
            let _ = tx.send(r);
        });
        wait(&rx, timeout)
    }

    /// Change how many SR-IOV virtual functions of the physical function `function` the
    /// appliance enables and pools, at run time: 0 to its TotalVFs. The appliance, as the
    /// PF's driver, clears VF Enable, writes NumVFs and sets VF Enable and VF MSE again
    /// (PCIe r5.0 §9.3.3.3, §9.3.3.7: NumVFs only changes while VF Enable is clear), so every
    /// VF of the PF is torn down and the new set created: VF *i* keeps its id (`PF.vfI`, the
    /// one `vfs = N` gives) and, for NVMe, its slice of the backing store; new VFs join the
    /// pool unassigned (`FunctionAdded`), removed ones leave it (`FunctionRemoved`, their
    /// caps forgotten). Refused while any VF of the PF belongs to a host or is being reset
    /// ([`ControlError::VfInUse`]: unassign it first), while the PF itself is assigned (its
    /// owner is its driver), and for a function that is not an SR-IOV PF
    /// ([`ControlError::NotSriov`]) or a count above TotalVFs ([`ControlError::TooManyVfs`]).
    /// No other function's I/O waits. `done` gets the outcome once the inventory shows it.
    pub fn set_vf_count(
        &self,
        function: FunctionId,
        n: u16,
        done: impl FnOnce(Result<(), ControlError>) + Send + 'static,
    ) {
        self.submit(Command::SetVfs {
            function,
            n,
            done: Box::new(done),
        });
    }

    /// [`set_vf_count`](Self::set_vf_count), waiting up to `timeout` for the outcome.
    pub fn set_vf_count_wait(
        &self,
        function: FunctionId,
        n: u16,
        timeout: Duration,
    ) -> Result<(), ControlError> {
        let (tx, rx) = channel::bounded(1);
        self.set_vf_count(function, n, move |r| {
            let _ = tx.send(r);
        });
        wait(&rx, timeout)
    }

    /// [`add_function`](Self::add_function), waiting up to `timeout` for the outcome.
    pub fn add_function_wait(
        &self,
        spec: &DeviceSpec,
        name: Option<&str>,
        timeout: Duration,
    ) -> Result<FunctionId, ControlError> {
        let (tx, rx) = channel::bounded(1);
        self.add_function(spec, name, move |r| {
            let _ = tx.send(r);
        });
        rx.recv_deadline(Instant::now() + timeout)
            .unwrap_or(Err(ControlError::Stopped))
    }

    /// [`remove_function`](Self::remove_function), waiting up to `timeout` for the outcome.
    pub fn remove_function_wait(
        &self,
        function: FunctionId,
        timeout: Duration,
    ) -> Result<(), ControlError> {
        let (tx, rx) = channel::bounded(1);
        self.remove_function(function, move |r| {
            let _ = tx.send(r);
        });
        wait(&rx, timeout)
    }

    /// [`assign`](Self::assign), waiting up to `timeout` for the outcome.
    pub fn assign_wait(
        &self,
        function: FunctionId,
        host: HostId,
        timeout: Duration,
    ) -> Result<(), ControlError> {
        let (tx, rx) = channel::bounded(1);
        self.assign(function, host, move |r| {
            let _ = tx.send(r);
        });
        wait(&rx, timeout)
    }

    /// [`unassign`](Self::unassign), waiting up to `timeout` for the outcome.
    pub fn unassign_wait(
        &self,
        function: FunctionId,
        timeout: Duration,
    ) -> Result<(), ControlError> {
        let (tx, rx) = channel::bounded(1);
        self.unassign(function, move |r| {
            let _ = tx.send(r);
        });
        wait(&rx, timeout)
    }

    /// Accept a new host at run time: its id, static public key and optional PSK. It owns
    /// nothing until assigned functions; it connects whenever its agent comes. Refused when
    /// the id exists ([`ControlError::HostExists`]) or the key is another host's
    /// ([`ControlError::KeyInUse`]).
    pub fn add_host(
        &self,
        key: HostKey,
        done: impl FnOnce(Result<(), ControlError>) + Send + 'static,
    ) {
        self.submit(Command::AddHost {
            key,
            done: Box::new(done),
        });
    }

    /// [`add_host`](Self::add_host), waiting up to `timeout` for the outcome.
    pub fn add_host_wait(&self, key: HostKey, timeout: Duration) -> Result<(), ControlError> {
        let (tx, rx) = channel::bounded(1);
        self.add_host(key, move |r| {
            let _ = tx.send(r);
        });
        wait(&rx, timeout)
    }

    /// Stop accepting `host`: its session is closed at once (a [`PoolEvent::HostLost`] if it
    /// was up), its key refused from then on. Refused while it owns functions
    /// ([`ControlError::HostOwnsFunctions`]: unassign them first, so each leaves in order).
    pub fn remove_host(
        &self,
        host: HostId,
        done: impl FnOnce(Result<(), ControlError>) + Send + 'static,
    ) {
        self.submit(Command::RemoveHost {
            host,
            done: Box::new(done),
        });
    }

    /// [`remove_host`](Self::remove_host), waiting up to `timeout` for the outcome.
    pub fn remove_host_wait(&self, host: HostId, timeout: Duration) -> Result<(), ControlError> {
        let (tx, rx) = channel::bounded(1);
        self.remove_host(host, move |r| {
            let _ = tx.send(r);
        });
        wait(&rx, timeout)
    }

    /// Give `host` a new static key (its PSK stays): the session under the old key is closed
    /// and the old key refused from then on; its functions stay its own (reset, as after a
    /// lost session) and its agent gets them back when it connects with the new key.
    pub fn set_host_key(
        &self,
        host: HostId,
        public: PublicKey,
        done: impl FnOnce(Result<(), ControlError>) + Send + 'static,
    ) {
        self.submit(Command::SetHostKey {
            host,
            public,
            done: Box::new(done),
        });
    }

    /// [`set_host_key`](Self::set_host_key), waiting up to `timeout` for the outcome.
    pub fn set_host_key_wait(
        &self,
        host: HostId,
        public: PublicKey,
        timeout: Duration,
    ) -> Result<(), ControlError> {
        let (tx, rx) = channel::bounded(1);
        self.set_host_key(host, public, move |r| {
            let _ = tx.send(r);
        });
        wait(&rx, timeout)
    }

    /// Every pool event from now on (functions added, removed or failed, hosts connected or
    /// lost, assignments changed), in the order they happened.
    pub fn subscribe(&self) -> Receiver<PoolEvent> {
        let (tx, rx) = channel::unbounded();
        self.subscribers.lock_or_recover().push(tx);
        rx
    }
}

fn wait(rx: &Receiver<Result<(), ControlError>>, timeout: Duration) -> Result<(), ControlError> {
    let deadline = Instant::now() + timeout;
    rx.recv_deadline(deadline)
        .unwrap_or(Err(ControlError::Stopped))
}
