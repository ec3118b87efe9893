//! The management plane's view of the appliance's pool: the narrow seam between the Redfish
//! service and whatever owns the cards.
//!
//! [`Pool`] is all the API needs from the appliance: an inventory snapshot (functions with stable
//! ids, PCI ids and class, state and owner, health), the hosts (session state, RTT), assign and
//! unassign as *operations* whose outcome the pool reports later through a [`Completer`], and a
//! stream of [`PoolEvent`]s. The appliance runtime is bound to it by an adapter in the CLI
//! (mgmt and the appliance never import each other); tests and demos use
//! [`crate::mgmt::fake::FakePool`].
//!
//! The function states follow the pool's life cycle (issue 11): unassigned, attaching to a host,
//! assigned, detaching (orderly removal with a grace period), resetting (FLR between owners) and
//! failed. The management API maps them onto Redfish resources (PCIeFunction, Zone membership,
//! Connection state) in [`crate::mgmt::redfish`].
//!
//! [`Pool::metrics`] is the counters behind `/metrics` ([`crate::mgmt::metrics`]): per function
//! and per host session, read from the appliance's counters at scrape time.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// The appliance itself: the Chassis that holds the cards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplianceInfo {
    /// Stable id, used in URIs (`/redfish/v1/Chassis/{id}`).
    pub id: String,
    /// Human-readable name.
    pub name: String,
    /// Serial number, if one is known.
    pub serial: Option<String>,
}

/// Whether a function is a physical function or an SR-IOV virtual function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FunctionKind {
    /// A physical function (a card or one function of a multi-function card).
    Physical,
    /// An SR-IOV virtual function of the physical function with this id.
    Virtual {
        /// Id of the parent physical function.
        physical: String,
    },
}

/// Where a function is in its life cycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FunctionState {
    /// Visible to no host.
    Unassigned,
    /// Being presented to `host` (slot event sent, not yet enumerated).
    Attaching {
        /// The new owner.
        host: String,
    },
    /// Owned by `host`.
    Assigned {
        /// The owner.
        host: String,
    },
    /// Being withdrawn from `host` (removal requested, grace period running).
    Detaching {
        /// The owner being left.
        host: String,
    },
    /// Reset between owners (FLR or a model reset; volatile state wiped).
    Resetting,
    /// Out of service.
    Failed {
        /// What went wrong, for the operator.
        reason: String,
    },
}

impl FunctionState {
    /// The host the function belongs to (or is moving to/from), if any.
    pub fn host(&self) -> Option<&str> {
        match self {
            FunctionState::Attaching { host }
            | FunctionState::Assigned { host }
            | FunctionState::Detaching { host } => Some(host),
            _ => None,
        }
    }

    /// The stable lower-case name used in the API's OEM properties and `ctl --json`.
    pub fn name(&self) -> &'static str {
        match self {
            FunctionState::Unassigned => "unassigned",
            FunctionState::Attaching { .. } => "attaching",
            FunctionState::Assigned { .. } => "assigned",
            FunctionState::Detaching { .. } => "detaching",
            FunctionState::Resetting => "resetting",
            FunctionState::Failed { .. } => "failed",
        }
    }
}

/// Health as Redfish reports it (`Resource.Health`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Normal.
    Ok,
    /// A condition requires attention.
    Warning,
    /// A critical condition requires immediate attention.
    Critical,
}

impl Health {
    /// The Redfish enum member.
    pub fn as_redfish(self) -> &'static str {
        match self {
            Health::Ok => "OK",
            Health::Warning => "Warning",
            Health::Critical => "Critical",
        }
    }
}

/// What the VM that consumes a function on its owner last did (its owner's agent reports each
/// attach and detach, docs/vms.md "Events").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmState {
    /// The assignment names the VM; its host has reported nothing yet.
    Pending,
    /// The function's device is in the VM.
    Attached,
    /// Attaching failed (the host has no such VM, it is unreachable, or QEMU refused).
    Failed,
    /// The guest did not let go within the host's grace period (or refused the eject).
    EjectRefused,
    /// The guest ejected it.
    Detached,
    /// It was withdrawn under the guest (a surprise removal).
    SurpriseRemoved,
    /// The VM is gone (its QEMU exited).
    Gone,
}

impl VmState {
    /// The value of `Oem.Pcietun.Vm.State`.
    pub fn as_redfish(self) -> &'static str {
        match self {
            VmState::Pending => "Pending",
            VmState::Attached => "Attached",
            VmState::Failed => "Failed",
            VmState::EjectRefused => "EjectRefused",
            VmState::Detached => "Detached",
            VmState::SurpriseRemoved => "SurpriseRemoved",
            VmState::Gone => "Gone",
        }
    }

    /// What it means, for people (`Oem.Pcietun.Vm.Message`, `ctl events`).
    pub fn message(self) -> &'static str {
        match self {
            VmState::Pending => "the host has not reported the VM yet",
            VmState::Attached => "the function's device is in the VM",
            VmState::Failed => {
                "the host could not attach the function to the VM (see the host agent's log)"
            }
            VmState::EjectRefused => {
                "the guest did not release the function in time; the host withdraws it"
            }
            VmState::Detached => "the guest ejected the function",
            VmState::SurpriseRemoved => {
                "the function was withdrawn under the guest (surprise removal)"
            }
            VmState::Gone => "the VM is gone",
        }
    }
}

/// The VM that consumes a function on its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConsumer {
    /// The VM's name on the host (`[A-Za-z0-9._-]`, at most 64 characters).
    pub name: String,
    /// What it last did.
    pub state: VmState,
    /// When the appliance learnt it.
    pub since: std::time::SystemTime,
}

/// Whether `name` is a VM name an assignment can carry to a host (1 to 64 characters of
/// `[A-Za-z0-9._-]`, what `pcietun host --vm NAME=...` accepts).
pub fn valid_vm_name(name: &str) -> bool {
    valid_id(name)
}

/// One inventory entry: a function the appliance fronts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionInfo {
    /// Stable id that survives restarts (`[A-Za-z0-9._-]`, used in URIs).
    pub id: String,
    /// Id of the card (PCIeDevice) this function belongs to.
    pub device: String,
    /// Function number on the card (for a VF: its index among the PF's VFs, from 1).
    pub function_number: u16,
    /// Physical or virtual function.
    pub kind: FunctionKind,
    /// PCI vendor id.
    pub vendor_id: u16,
    /// PCI device id.
    pub device_id: u16,
    /// PCI subsystem vendor id.
    pub subsystem_vendor_id: u16,
    /// PCI subsystem id.
    pub subsystem_id: u16,
    /// 24-bit class code (base class, subclass, programming interface).
    pub class_code: u32,
    /// Revision id.
    pub revision_id: u8,
    /// What the function is, for people ("NVMe controller", "DMA engine").
    pub model: String,
    /// Life-cycle state, including the owner.
    pub state: FunctionState,
    /// Health.
    pub health: Health,
    /// The VM consuming it on its owner, named by the assignment or reported by the owner's
    /// agent (`None`: no VM known; cleared when it leaves that owner).
    pub vm: Option<VmConsumer>,
    /// For an SR-IOV physical function, how many virtual functions it can have (its
    /// TotalVFs; 0: not an SR-IOV PF). How many are enabled is how many VFs of it the
    /// inventory holds.
    pub total_vfs: u16,
}

/// Whether a host's session with the appliance is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostSession {
    /// Authenticated session established.
    Connected,
    /// Known host without a live session.
    Disconnected,
}

impl HostSession {
    /// The stable lower-case name used in the API's OEM properties and `ctl --json`.
    pub fn name(self) -> &'static str {
        match self {
            HostSession::Connected => "connected",
            HostSession::Disconnected => "disconnected",
        }
    }
}

/// A host known to the appliance (by id and key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostInfo {
    /// Host id (`[A-Za-z0-9._-]`, used in URIs).
    pub id: String,
    /// Session state.
    pub session: HostSession,
    /// Smoothed round-trip time of the session, when connected.
    pub rtt: Option<Duration>,
}

/// Why the pool refused or failed an operation.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// No function with that id.
    #[error("unknown function {function:?}")]
    UnknownFunction {
        /// The id asked for.
        function: String,
    },
    /// No host with that id.
    #[error("unknown host {host:?}")]
    UnknownHost {
        /// The id asked for.
        host: String,
    },
    /// The function already belongs to a host.
    #[error("function {function:?} is already assigned to host {host:?}")]
    AlreadyAssigned {
        /// The function.
        function: String,
        /// Its owner.
        host: String,
    },
    /// The function belongs to no host.
    #[error("function {function:?} is not assigned")]
    NotAssigned {
        /// The function.
        function: String,
    },
    /// The function is attaching, detaching or resetting; try again when it settles.
    #[error("function {function:?} is {state} and cannot change owner now")]
    InTransition {
        /// The function.
        function: String,
        /// Its state name.
        state: &'static str,
    },
    /// The function is out of service.
    #[error("function {function:?} failed: {reason}")]
    FunctionFailed {
        /// The function.
        function: String,
        /// What went wrong.
        reason: String,
    },
    /// The operation was dropped without its outcome being reported (a bug in the pool, or the
    /// appliance shutting down).
    #[error("the appliance abandoned the operation without reporting its outcome")]
    Abandoned,
    /// A card to add is not described well (`Pool::add_function`): the spec does not parse,
    /// its name is not usable, or the card it names cannot be built.
    #[error("bad device: {reason}")]
    BadDevice {
        /// What is wrong, for the operator.
        reason: String,
    },
    /// The spec is well formed but the management API may not do it: a path outside
    /// `[api] device_dirs`, a path-bearing kind with no `device_dirs` configured, a server
    /// process to start.
    #[error("not allowed over the management API: {reason}")]
    NotAllowed {
        /// What is refused and how to allow it.
        reason: String,
    },
    /// A card or function with this name is already in the inventory.
    #[error("a function named {name:?} already exists")]
    NameTaken {
        /// The name.
        name: String,
    },
    /// Every device number of the appliance holds a card.
    #[error("no free device number for another card")]
    NoFreeDevice,
    /// A virtual function cannot be removed on its own: it goes with its physical function.
    #[error(
        "function {function:?} is a virtual function: remove its physical function {physical:?}"
    )]
    VirtualFunction {
        /// The VF.
        function: String,
        /// Its PF.
        physical: String,
    },
    /// A physical function whose virtual functions the appliance pools is never given to a
    /// host (it holds every VF's life); its VFs are.
    #[error("function {function:?} is the physical function of pooled virtual functions: assign its VFs")]
    PooledVfs {
        /// The PF.
        function: String,
    },
    /// [`Pool::set_vf_count`] on a function that is not an SR-IOV physical function.
    #[error("function {function:?} is not an SR-IOV physical function")]
    NotSriov {
        /// The function.
        function: String,
    },
    /// [`Pool::set_vf_count`] above the PF's TotalVFs.
    #[error(
        "function {function:?} has at most {total} virtual functions (TotalVFs); {requested} asked"
    )]
    TooManyVfs {
        /// The PF.
        function: String,
        /// The count asked for.
        requested: u16,
        /// Its TotalVFs.
        total: u16,
    },
    /// [`Pool::set_vf_count`] while a VF of the PF is in use: changing the count tears every
    /// VF down (NumVFs only changes while VF Enable is clear), so each must be unassigned.
    #[error("function {function:?}'s virtual function {vf:?} {why}: unassign it before changing the VF count")]
    VfInUse {
        /// The PF.
        function: String,
        /// The VF in use.
        vf: String,
        /// "is assigned to HOST", "is being reset", ...
        why: String,
    },
    /// An error of the appliance that has no variant here.
    #[error("appliance error: {0}")]
    Appliance(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Reports the outcome of one accepted operation (assign or unassign) exactly once.
///
/// The pool keeps it until the operation is done (the host has the function, or has let it go)
/// and then calls [`Completer::finish`]. Dropping it unfinished reports
/// [`PoolError::Abandoned`], so a task can never be left running forever by a lost handle.
pub struct Completer {
    report: Option<Report>,
}

/// What a [`Completer`] calls with the outcome.
type Report = Box<dyn FnOnce(Result<(), PoolError>) + Send>;

impl Completer {
    /// A completer that calls `report` with the outcome.
    pub fn new(report: impl FnOnce(Result<(), PoolError>) + Send + 'static) -> Self {
        Completer {
            report: Some(Box::new(report)),
        }
    }

    /// A completer whose outcome nobody waits for.
    pub fn ignored() -> Self {
        Completer::new(|_| {})
    }

    /// Report the outcome.
    pub fn finish(mut self, outcome: Result<(), PoolError>) {
        if let Some(report) = self.report.take() {
            report(outcome);
        }
    }
}

impl Drop for Completer {
    fn drop(&mut self) {
        if let Some(report) = self.report.take() {
            report(Err(PoolError::Abandoned));
        }
    }
}

impl fmt::Debug for Completer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Completer")
            .field("finished", &self.report.is_none())
            .finish()
    }
}

/// The card a [`Pool::add_function`] put into the inventory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddedCard {
    /// Its card (PCIeDevice) id ([`FunctionInfo::device`]).
    pub device: String,
    /// Its functions' ids, function 0 first (VFs appear when they are enabled).
    pub functions: Vec<String>,
}

/// What an [`AddCompleter`] calls with the outcome.
type AddReport = Box<dyn FnOnce(Result<AddedCard, PoolError>) + Send>;

/// Reports the outcome of one accepted [`Pool::add_function`] exactly once: the new card, once
/// it is in the inventory ([`Pool::functions`] shows it), or why it could not be added.
/// Dropping it unfinished reports [`PoolError::Abandoned`], like [`Completer`].
pub struct AddCompleter {
    report: Option<AddReport>,
}

impl AddCompleter {
    /// A completer that calls `report` with the outcome.
    pub fn new(report: impl FnOnce(Result<AddedCard, PoolError>) + Send + 'static) -> Self {
        AddCompleter {
            report: Some(Box::new(report)),
        }
    }

    /// Report the outcome.
    pub fn finish(mut self, outcome: Result<AddedCard, PoolError>) {
        if let Some(report) = self.report.take() {
            report(outcome);
        }
    }
}

impl Drop for AddCompleter {
    fn drop(&mut self) {
        if let Some(report) = self.report.take() {
            report(Err(PoolError::Abandoned));
        }
    }
}

impl fmt::Debug for AddCompleter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AddCompleter")
            .field("finished", &self.report.is_none())
            .finish()
    }
}

/// Something that happened in the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolEvent {
    /// A function joined the inventory.
    FunctionAdded {
        /// Its id.
        function: String,
    },
    /// A function left the inventory.
    FunctionRemoved {
        /// Its id.
        function: String,
    },
    /// A function changed state (including owner changes and failures).
    FunctionStateChanged {
        /// Its id.
        function: String,
        /// The new state.
        state: FunctionState,
    },
    /// A failed function is back in service (its backing, a vfio-user server, restarted and
    /// serves the same device); its state follows in a `FunctionStateChanged`.
    FunctionRecovered {
        /// Its id.
        function: String,
    },
    /// A host's session came up.
    HostConnected {
        /// Host id.
        host: String,
    },
    /// A host's session went down.
    HostLost {
        /// Host id.
        host: String,
    },
    /// A function started being held by its policy's caps (`throttled`), or has not been for
    /// a second; the pool reports at most one change per function per second.
    PolicyThrottling {
        /// The function.
        function: String,
        /// The cap's property in `Oem.Pcietun.Policy` (`MaxBytesPerSecondUp`, …).
        property: &'static str,
        /// The cap's value.
        cap: u64,
        /// Held now, or no longer.
        throttled: bool,
    },
    /// The owner's agent reported what one of its VMs did with the function.
    VmConsumer {
        /// The function.
        function: String,
        /// The owner.
        host: String,
        /// The VM.
        vm: String,
        /// What it did.
        state: VmState,
    },
}

/// Where the pool sends its events; cheap to clone, callable from any thread, never blocks.
#[derive(Clone)]
pub struct EventSink(Arc<dyn Fn(PoolEvent) + Send + Sync>);

impl EventSink {
    /// A sink that calls `f` for every event.
    pub fn new(f: impl Fn(PoolEvent) + Send + Sync + 'static) -> Self {
        EventSink(Arc::new(f))
    }

    /// Deliver one event.
    pub fn emit(&self, event: PoolEvent) {
        (self.0)(event)
    }
}

impl fmt::Debug for EventSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EventSink")
    }
}

/// A count in each direction of the tunnel, named as PCIe names them: *downstream* is from the
/// host towards the function (a driver's MMIO reads and writes, completions of the function's
/// DMA reads), *upstream* from the function towards the host (completions of MMIO reads, DMA
/// reads and writes, interrupt messages).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Directions {
    /// Host → function.
    pub downstream: u64,
    /// Function → host.
    pub upstream: u64,
}

/// The traffic and error counters of one function since the appliance started (monotonic).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FunctionMetrics {
    /// The function's id ([`FunctionInfo::id`]).
    pub function: String,
    /// TLPs to and from the function.
    pub tlps: Directions,
    /// Bytes of those TLPs (header and data).
    pub bytes: Directions,
    /// Data bytes the function read from host memory (DMA reads, completed).
    pub dma_read_bytes: u64,
    /// Data bytes the function wrote to host memory (DMA writes).
    pub dma_write_bytes: u64,
    /// Interrupt messages (MSI / MSI-X) the function sent.
    pub interrupts: u64,
    /// Requests to the function answered with Unsupported Request.
    pub unsupported_requests: u64,
    /// Requests to the function answered with Completer Abort.
    pub completer_aborts: u64,
    /// The function's non-posted requests (DMA reads) that got no completion in time.
    pub completion_timeouts: u64,
    /// Time its TLPs waited for its policy's caps (docs/api.md "Policy").
    pub throttled: Throttled,
}

/// Nanoseconds a function's TLPs waited for each cap of its policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Throttled {
    /// For the upstream (function → host) bandwidth cap.
    pub bandwidth_up_nanos: u64,
    /// For the downstream (host → function) bandwidth cap.
    pub bandwidth_down_nanos: u64,
    /// For the IOPS cap.
    pub iops_nanos: u64,
}

/// The transport counters of one host's session since the appliance started (monotonic; a
/// reconnect continues them). Session state and RTT are in [`HostInfo`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostMetrics {
    /// The host's id ([`HostInfo::id`]).
    pub host: String,
    /// TLPs received from the host (downstream) and sent to it (upstream), each counted once.
    pub tlps: Directions,
    /// Frame bytes on the wire, each way.
    pub bytes: Directions,
    /// TLP retransmissions to the host.
    pub retransmits: u64,
    /// Times the appliance had TLPs for the host but no credits to send them.
    pub credit_stalls: u64,
}

/// Everything [`Pool::metrics`] reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// One entry per function of the inventory.
    pub functions: Vec<FunctionMetrics>,
    /// One entry per known host.
    pub hosts: Vec<HostMetrics>,
}

/// The caps and priority of one function (docs/api.md "Policy"); `None` is no cap (or the
/// default priority), and a cap is at least 1. Up is function → host (DMA writes,
/// completions of the host's reads), down host → function (the data of the function's DMA
/// reads), both in data bytes per second; IOPS are the non-posted requests the function
/// issues per second. The priority ([`PRIORITY_MIN`]..=[`PRIORITY_MAX`], default
/// [`PRIORITY_DEFAULT`]) is its weight when functions share a saturated link.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySettings {
    /// Data bytes per second function → host.
    pub max_bytes_per_sec_up: Option<u64>,
    /// Data bytes per second host → function.
    pub max_bytes_per_sec_down: Option<u64>,
    /// Non-posted requests per second the function issues.
    pub max_iops: Option<u64>,
    /// Its share of a saturated link, relative to the others' (a stored record from before
    /// priorities has none: the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
}

/// The lowest priority.
pub const PRIORITY_MIN: u32 = 1;
/// The highest priority.
pub const PRIORITY_MAX: u32 = 100;
/// The priority of a function whose policy sets none.
pub const PRIORITY_DEFAULT: u32 = 10;

impl PolicySettings {
    /// Whether nothing is capped and the priority is the default (nothing to store).
    pub fn is_unlimited(&self) -> bool {
        self.max_bytes_per_sec_up.is_none()
            && self.max_bytes_per_sec_down.is_none()
            && self.max_iops.is_none()
            && self.priority() == PRIORITY_DEFAULT
    }

    /// The priority in force.
    pub fn priority(&self) -> u32 {
        self.priority.unwrap_or(PRIORITY_DEFAULT)
    }
}

/// What the management API needs from the appliance's pool.
///
/// Calls are short and synchronous (they take the pool's locks, never wait for a host); the
/// slow part of assign and unassign happens after they return and is reported through the
/// [`Completer`]. An `Err` from `assign`/`unassign` means nothing was started and nothing
/// changed.
pub trait Pool: Send + Sync + 'static {
    /// The appliance (Chassis) identity.
    fn appliance(&self) -> ApplianceInfo;
    /// A snapshot of the inventory.
    fn functions(&self) -> Vec<FunctionInfo>;
    /// A snapshot of the known hosts.
    fn hosts(&self) -> Vec<HostInfo>;
    /// Start giving `function` to `host`; `done` reports when the host has it.
    fn assign(&self, function: &str, host: &str, done: Completer) -> Result<(), PoolError>;
    /// [`assign`](Self::assign), naming the VM on `host` that is to take the function (its
    /// agent attaches it there). A pool that cannot carry the name refuses it.
    fn assign_to_vm(
        &self,
        function: &str,
        host: &str,
        vm: Option<&str>,
        done: Completer,
    ) -> Result<(), PoolError> {
        match vm {
            None => self.assign(function, host, done),
            Some(_) => Err(PoolError::NotAllowed {
                reason: "this pool cannot name a VM for an assignment".into(),
            }),
        }
    }
    /// Start taking `function` away from its owner; `done` reports when it is free again.
    fn unassign(&self, function: &str, done: Completer) -> Result<(), PoolError>;
    /// Start adding a card to the running pool. `spec` is the `--device` grammar of the
    /// appliance (`dma[,buffer=SIZE][,vfs=N]`, `nvme=PATH[,size=SIZE][,vfs=N[,vf_size=SIZE]]`, `replay=DUMP[,barN=SIZE]`,
    /// `vfio-user=SOCKET[,connect_timeout=S]`; docs/api.md "Adding and removing cards"),
    /// `name` the stable id of its function 0 (`None`: derived from where it lands). An `Err`
    /// means nothing was started: the spec does not parse ([`PoolError::BadDevice`]), the API
    /// may not open what it names ([`PoolError::NotAllowed`]), the name is taken. `done`
    /// reports the card once it is in the inventory, or why it could not be built.
    fn add_function(
        &self,
        spec: &str,
        name: Option<&str>,
        done: AddCompleter,
    ) -> Result<(), PoolError>;
    /// Start taking the card of `function` (every function at its device number) out of the
    /// pool; refused while any of them belongs to a host or is changing owner, and for a
    /// virtual function. `done` reports when it is gone from the inventory.
    fn remove_function(&self, function: &str, done: Completer) -> Result<(), PoolError>;
    /// Start changing how many SR-IOV virtual functions of the physical function `function`
    /// are enabled and pooled (0 to its TotalVFs; VF *i* keeps its id). Refused — nothing
    /// started — for a function that is not an SR-IOV PF, above TotalVFs, while the PF is
    /// assigned or any of its VFs is in use. `done` reports once the inventory shows the new
    /// count.
    fn set_vf_count(&self, function: &str, n: u16, done: Completer) -> Result<(), PoolError> {
        let _ = (n, done);
        Err(PoolError::NotSriov {
            function: function.into(),
        })
    }
    /// Send every later event to `sink` (in addition to earlier subscribers).
    fn subscribe(&self, sink: EventSink);
    /// The counters, as of now (called on every scrape of `/metrics`).
    fn metrics(&self) -> MetricsSnapshot;
    /// The caps of `function` (a pool without policies has none).
    fn policy(&self, function: &str) -> Result<PolicySettings, PoolError> {
        let _ = function;
        Ok(PolicySettings::default())
    }
    /// Replace the caps of `function`, at run time (applied when this returns `Ok`).
    fn set_policy(&self, function: &str, policy: PolicySettings) -> Result<(), PoolError> {
        let _ = (function, policy);
        Err(PoolError::Appliance(
            "this pool does not enforce policies".into(),
        ))
    }
}

/// Whether `id` is acceptable as a function, device, host or appliance id in URIs.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn dropped_completer_reports_abandoned() {
        let seen = Arc::new(Mutex::new(None));
        let s = seen.clone();
        drop(Completer::new(move |r| {
            *s.lock().unwrap() = Some(r.is_err());
        }));
        assert_eq!(*seen.lock().unwrap(), Some(true));
    }

    #[test]
    fn finished_completer_reports_once() {
        let count = Arc::new(Mutex::new(0));
        let c = count.clone();
        Completer::new(move |r| {
            assert!(r.is_ok());
            *c.lock().unwrap() += 1;
        })
        .finish(Ok(()));
        assert_eq!(*count.lock().unwrap(), 1);
    }

    #[test]
    fn ids() {
        assert!(valid_id("nvme0.vf-1_x"));
        assert!(!valid_id(""));
        assert!(!valid_id("a/b"));
        assert!(!valid_id("a b"));
        assert!(!valid_id(&"x".repeat(65)));
    }
}
