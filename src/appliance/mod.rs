//! The appliance runtime: the cards an appliance fronts, served over the tunnel to the hosts
//! allowed to connect — the counterpart of the host agent (`host::agent::Agent`) on
//! the other end of the wire.
//!
//! * [`config`] — the configuration (TOML file, flags, defaults) with located errors;
//! * [`devices`] — building the cards a configuration names into an endpoint;
//! * [`inventory`] — every function under a stable id, its PCI identity and its owner;
//! * [`view`] — each host's view of the pool: slots, slot messages, orderly removal;
//! * [`router`] — the sans-I/O routing core: per-host isolation in both directions, sessions,
//!   epochs and per-host resets, assignment and orderly unassignment;
//! * [`control`] — [`Control`], the run-time handle on the pool (list, assign, unassign,
//!   events);
//! * [`policy`] — per-function bandwidth and IOPS caps, enforced in the function's TLP path;
//! * [`arbiter`] — per-function priority: weighted sharing of a saturated link;
//! * [`pump`] — the endpoint served on the thread that drives its link;
//! * [`runtime`] — [`Appliance`]: build, serve or start, counters, orderly stop;
//! * [`traffic`] — per-function and per-host traffic, as the snapshots and `/metrics` show it.
//!
//! `pcietun appliance` is a thin front-end over this module; tests, the bench rig and the demo
//! run the same [`Appliance`] in-process. Layering: this module sits above `endpoint` and
//! `transport` and never imports `host` (the two halves meet only on the wire).
//! docs/appliance.md describes the runtime and the pool (inventory, assignment, per-host
//! views and isolation, the control API).

pub mod arbiter;
pub mod config;
pub mod control;
pub mod counters;
pub mod devices;
pub mod inventory;
pub mod policy;
pub mod pump;
pub mod router;
pub mod runtime;
pub mod traffic;
pub mod view;

pub use config::{
    ApplianceConfig, AssignSpec, ConfigError, ConfigFlags, ConfigProblem, DeviceConfig, DeviceSpec,
    HostSpec, LinkOptions, Listen,
};
pub use control::{Control, ControlError, FunctionStatus, HostStatus, PoolEvent};
pub use counters::{ApplianceStats, Counters};
pub use devices::BuildWarning;
pub use inventory::{FunctionEntry, FunctionId, FunctionState, Inventory, InventoryError};
pub use policy::Policy;
pub use router::{Router, RouterStats};
pub use runtime::{Appliance, Ready, Running, StartAssignments};
pub use traffic::{FunctionTraffic, HostTraffic};
pub use view::{Detached, HostView, SlotEntry, SlotState, Target, ViewError, ViewStats, Views};

use std::path::PathBuf;

/// Why the appliance could not be configured, built or served.
#[derive(Debug, thiserror::Error)]
pub enum ApplianceError {
    /// A configuration value is wrong (located: file and line, or the flag).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A key file cannot be read or is not a key, a host is configured twice, or a
    /// development key would serve a non-loopback address.
    #[error(transparent)]
    Key(#[from] crate::transport::keys::KeyError),
    /// The configuration file cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    ReadConfig {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// An NVMe backing store cannot be opened or created (the message names it).
    #[error(transparent)]
    Nvme(#[from] crate::endpoint::nvme::BackendError),
    /// A replay dump cannot be read or does not describe one function (the message names it).
    #[error(transparent)]
    Replay(#[from] crate::endpoint::replay::ReplayDeviceError),
    /// A vfio-user device server could not be started or reached, or its device presented.
    #[error("vfio-user device: {0}")]
    VfioUser(#[from] crate::endpoint::vfio_user_client::ClientError),
    /// An NVMe store cannot be cut into the slices its SR-IOV virtual functions ask for.
    #[error("{}: {source}", path.display())]
    NvmeSlices {
        /// The backing store.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: crate::endpoint::nvme::SliceError,
    },
    /// The virtual functions of a physical function could not be enabled or presented.
    #[error("{function}: cannot pool its virtual functions: {source}")]
    Vfs {
        /// The physical function.
        function: inventory::FunctionId,
        /// Why.
        #[source]
        source: crate::endpoint::VfError,
    },
    /// A DMA engine buffer over [`config::MAX_DMA_BUFFER`].
    #[error("DMA engine buffer of {0} bytes is over the 1 GiB limit")]
    DmaBufferTooLarge(u64),
    /// The temporary directory of a scratch NVMe backing file cannot be created.
    #[error("cannot create a temporary NVMe backing file: {0}")]
    Scratch(#[source] std::io::Error),
    /// The endpoint refused a function (two at one device/function number).
    #[error(transparent)]
    Endpoint(#[from] crate::endpoint::ProxyError),
    /// The inventory refused a function (a bad or duplicate id).
    #[error(transparent)]
    Inventory(#[from] inventory::InventoryError),
    /// A configured assignment cannot be made (a function of one card assigned to two hosts).
    #[error("configured assignment: {0}")]
    Assign(#[from] control::ControlError),
    /// Serving was asked for with no listen address and no port.
    #[error("nothing to listen on: no listen address configured")]
    NoListener,
    /// A listen address cannot be opened.
    #[error("cannot listen on {listen}: {source}")]
    Listen {
        /// The address.
        listen: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A link's transport thread cannot be started.
    #[error("{listen}: {source}")]
    StartLink {
        /// The address.
        listen: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A link failed while serving.
    #[error("transport on {listen}: {source}")]
    Transport {
        /// The address.
        listen: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A link's transport thread stopped while serving.
    #[error("transport on {listen} stopped")]
    LinkStopped {
        /// The address.
        listen: String,
    },
    /// A thread of the appliance cannot be started.
    #[error("cannot start the {what} thread: {source}")]
    Thread {
        /// Which.
        what: &'static str,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The readiness announcement failed (e.g. stdout closed).
    #[error("cannot announce readiness: {0}")]
    Announce(#[source] std::io::Error),
    /// The serving thread panicked.
    #[error("the appliance's serving thread panicked")]
    Panicked,
}
