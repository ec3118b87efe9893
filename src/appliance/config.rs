//! The appliance's configuration: what it listens on, which hosts may connect and with which
//! key, and which cards it fronts at which device/function numbers.
//!
//! Three sources, merged in this order: a TOML file ([`ApplianceConfig::from_toml`], schema in
//! docs/appliance.md), command-line flags on top ([`ApplianceConfig::apply_flags`]), then the
//! defaults for what is still missing ([`ApplianceConfig::fill_defaults`]). Everything is
//! validated here, before any device is built or anything listens; every error is a
//! [`ConfigError`] that names where the bad value came from (file, line and column, or the
//! flag) and a [`ConfigProblem`] saying what is wrong with it.
//!
//! Host identities and keys are handled in one place, the "Hosts and keys" section below
//! ([`parse_public_key`], [`parse_host_flag`], [`HostSpec`], [`ApplianceConfig::identity`],
//! [`ApplianceConfig::accepted_host_ids`]); nothing else in the appliance looks at a key. The
//! key types and key files themselves are `crate::transport::keys` (docs/security.md "Key
//! management").
//!
//! The management API's settings (`[api]`, `--api`, `--api-admin`) are parsed and checked here
//! too, into the plain [`ApiSettings`]; the appliance does not serve the API itself (`mgmt`
//! does, and `mgmt` and the appliance do not import each other: `pcietun appliance` converts).

use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::inventory::FunctionId;
use super::ApplianceError;
use crate::endpoint::nvme::NvmeSriov;
use crate::endpoint::Bdf;
use crate::tlp::slot::VmName;
use crate::transport::keys::{self, KeyError, DEVELOPMENT_HOST_NAME};
use crate::transport::{HostId, HostKey, PublicKey, SecretKey};

/// Where the appliance listens when nothing is configured.
pub const DEFAULT_LISTEN: &str = "udp:127.0.0.1:7470";
/// Size of the NVMe namespace on a temporary file that the appliance fronts when no device is
/// configured.
pub const DEFAULT_SCRATCH_NVME_BYTES: u64 = 64 << 20;
/// Largest DMA engine buffer.
pub const MAX_DMA_BUFFER: u64 = 1 << 30;
/// Most SR-IOV virtual functions a DMA engine offers.
pub const MAX_DMA_VFS: u16 = 7;
/// Most virtual functions the appliance enables and pools for one physical function: its VFs
/// sit at the functions after it on its device number (First VF Offset 1, VF Stride 1), and a
/// device number has eight.
pub const MAX_POOLED_VFS: u16 = 7;
/// DMA engine buffer when none is given.
pub const DEFAULT_DMA_BUFFER: u64 = 1 << 20;
/// Where the management API listens when `[api]` or `--api-admin` enables it without an
/// address: loopback only.
pub const DEFAULT_API_LISTEN: &str = "127.0.0.1:8443";
/// Session idle timeouts the management API accepts, in seconds (the same range its
/// `SessionService.SessionTimeout` takes).
pub const API_SESSION_TIMEOUT_S: std::ops::RangeInclusive<u64> = 30..=86400;

/// What is wrong with one configuration value (the message, without its location).
#[derive(Debug, thiserror::Error)]
pub enum ConfigProblem {
    /// The TOML itself does not parse, or does not fit the schema (unknown key, wrong type).
    #[error("{}", .0.message())]
    Syntax(Box<toml::de::Error>),
    /// Not a size (`4096`, `0x1000`, `64K`, `16M`, `2G`, `1T`).
    #[error("invalid size {0:?}")]
    InvalidSize(String),
    /// A size beyond 2^64 bytes.
    #[error("size {0:?} overflows")]
    SizeOverflow(String),
    /// `udp:` followed by something that is not IP:PORT.
    #[error("invalid UDP address {0:?} (want udp:IP:PORT)")]
    BadUdpAddress(String),
    /// `eth:` followed by something that is not an interface name.
    #[error("invalid interface name {0:?}")]
    BadInterface(String),
    /// A listen address of neither kind.
    #[error("listen address {0:?} must start with udp: or eth:")]
    BadListenScheme(String),
    /// A host id that is empty or longer than 16 bytes.
    #[error("host id {0:?} must be 1 to 16 bytes")]
    BadHostId(String),
    /// A public key that is not 32 bytes of base64.
    #[error("{0}")]
    BadKey(KeyError),
    /// `--host` not of the form `NAME=PUBLIC_KEY[,psk=FILE]`.
    #[error("want NAME=PUBLIC_KEY[,psk=FILE]")]
    BadHostFlag,
    /// A device kind we do not know.
    #[error("unknown device kind {0:?} (known: nvme, dma, replay, vfio-user)")]
    UnknownKind(String),
    /// `--device nvme` without a path.
    #[error("nvme needs a backing path: nvme=PATH")]
    NvmeNeedsPath,
    /// `--device vfio-user` without a socket path.
    #[error(
        "vfio-user needs the server's socket: vfio-user=SOCKET_PATH[,connect_timeout=SECONDS]"
    )]
    VfioUserNeedsSocket,
    /// A `--device vfio-user=…` option we do not know.
    #[error("unknown vfio-user option {0:?} (want connect_timeout=SECONDS)")]
    UnknownVfioUserOption(String),
    /// A connect timeout that is not a number of seconds in 0.001..=3600.
    #[error("connect_timeout {0:?} must be seconds between 0.001 and 3600")]
    ConnectTimeout(String),
    /// `start = []`.
    #[error("start must name the server program: start = [\"PROGRAM\", \"ARG\", ...]")]
    EmptyStart,
    /// `--device replay` without a dump.
    #[error("replay needs a dump file: replay=DUMP[,bar0=SIZE,...]")]
    ReplayNeedsDump,
    /// An option of `--device nvme=…` we do not know.
    #[error("unknown nvme option {0:?} (known: size=SIZE, vfs=N, vf_size=SIZE)")]
    UnknownNvmeOption(String),
    /// An option of `--device dma…` we do not know.
    #[error("unknown dma option {0:?} (known: buffer=SIZE, vfs=N)")]
    UnknownDmaOption(String),
    /// A `--device replay=…` option without `=`.
    #[error("replay option {0:?} is not barN=SIZE")]
    ReplayOptionShape(String),
    /// A `--device replay=…` option that names no BAR.
    #[error("unknown replay option {0:?} (want bar0..bar5)")]
    UnknownReplayOption(String),
    /// A `bars` key in the file that names no BAR.
    #[error("unknown BAR {0:?} (want bar0..bar5)")]
    UnknownBar(String),
    /// `--device dma,vfs=N` out of range.
    #[error("vfs={0:?}: want 0..=7")]
    VfsFlag(String),
    /// `vfs = N` out of range.
    #[error("vfs must be 0..=7")]
    VfsRange,
    /// `vf_size` without `vfs`.
    #[error("vf_size needs vfs = N (the number of SR-IOV virtual functions to cut the store for)")]
    VfSizeWithoutVfs,
    /// A physical function's pooled VFs would run past function 7 of its slot.
    #[error("device #{index} at slot {slot} function {function} has vfs = {vfs}: its VFs would need functions up to {last}, and a slot has 0..=7 (use fewer VFs or function 0)")]
    VfsPastSlot {
        /// 1-based position in the file.
        index: usize,
        /// Its slot.
        slot: u8,
        /// Its function.
        function: u8,
        /// Its VFs.
        vfs: u16,
        /// The function number the last VF would need.
        last: u16,
    },
    /// A physical function's pooled VFs would sit where another device is.
    #[error("device #{index} at slot {slot} function {function} has vfs = {vfs}: VF {vf} would be function {taken} of slot {slot}, which another device has")]
    VfsCollide {
        /// 1-based position in the file.
        index: usize,
        /// Its slot.
        slot: u8,
        /// Its function.
        function: u8,
        /// Its VFs.
        vfs: u16,
        /// The 0-based VF index that collides.
        vf: u16,
        /// The function number both want.
        taken: u8,
    },
    /// A device entry without a key its kind needs.
    #[error("device #{index} ({kind}) needs `{key}`")]
    MissingKey {
        /// 1-based position in the file.
        index: usize,
        /// Its kind.
        kind: String,
        /// The key.
        key: &'static str,
    },
    /// `slot` out of range.
    #[error("slot must be 0..=31")]
    SlotRange,
    /// `function` out of range.
    #[error("function must be 0..=7")]
    FunctionRange,
    /// Two devices at the same device/function number.
    #[error("device #{index} uses slot {slot} function {function}, already taken")]
    SlotTaken {
        /// 1-based position in the file.
        index: usize,
        /// Device number.
        slot: u8,
        /// Function number.
        function: u8,
    },
    /// A `name` that cannot be a function id.
    #[error(transparent)]
    BadName(super::inventory::InventoryError),
    /// Two devices with one `name`.
    #[error("device #{index} is named {name:?} like an earlier device")]
    DuplicateName {
        /// 1-based position in the file.
        index: usize,
        /// The name.
        name: String,
    },
    /// No free device number left for a `--device`.
    #[error("all 32 slots are taken")]
    SlotsFull,
    /// `inject_loss` out of range.
    #[error("inject_loss must be 0..=100 (percent)")]
    LossRange,
    /// `--inject-loss` out of range.
    #[error("must be 0..=100")]
    LossFlagRange,
    /// `dma_timeout_ms = 0`.
    #[error("dma_timeout_ms must be positive")]
    DmaTimeoutZero,
    /// `removal_grace_ms` outside 1 s..=1 h.
    #[error("removal_grace_ms must be 1000..=3600000 (1 s to 1 h)")]
    RemovalGraceRange,
    /// An assignment names a host that is not a `[[host]]`.
    #[error("assignment to host {0:?}, which is not a [[host]]")]
    AssignUnknownHost(String),
    /// A function assigned twice (a function has at most one owner).
    #[error("function {0} is assigned twice")]
    AssignedTwice(String),
    /// A management API listen address that is not IP:PORT.
    #[error("API listen address {0:?} is not IP:PORT (e.g. 127.0.0.1:8443)")]
    ApiListen(String),
    /// Only one of `tls_cert` / `tls_key`.
    #[error("[api] TLS needs both tls_cert and tls_key")]
    ApiTlsPair,
    /// An administrator name the API would refuse.
    #[error("API administrator name {0:?} must be 1 to 32 of A-Z a-z 0-9 . _ -")]
    ApiAdminName(String),
    /// `admin` without `admin_password_file`, or the other way round.
    #[error("[api] needs both admin and admin_password_file")]
    ApiAdminPair,
    /// The API is enabled without a first administrator.
    #[error("the management API needs a first administrator: [api] admin = \"NAME\" and admin_password_file = \"PATH\", or --api-admin NAME:PASSWORD_FILE (there is no default password)")]
    ApiNoAdmin,
    /// `--api-admin` not of the form `NAME:PASSWORD_FILE`.
    #[error("want NAME:PASSWORD_FILE")]
    ApiAdminFlag,
    /// `session_timeout_s` out of range.
    #[error("session_timeout_s must be 30..=86400")]
    ApiSessionTimeout,
    /// `reclaim_after_s` out of range.
    #[error("reclaim_after_s must be 1..=2592000 (30 days)")]
    ApiReclaimAfter,
}

/// A configuration error: where the value came from, and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("{origin}{}: {problem}", .at.map(|(l, c)| format!(":{l}:{c}")).unwrap_or_default())]
pub struct ConfigError {
    /// The file (as the user named it) or `command line --FLAG VALUE`.
    pub origin: String,
    /// Line and column (1-based) in the file.
    pub at: Option<(usize, usize)>,
    /// What is wrong.
    pub problem: ConfigProblem,
}

/// Where a listener binds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// UDP/IP.
    Udp(SocketAddr),
    /// Raw Ethernet on an interface.
    Eth(String),
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listen::Udp(a) => write!(f, "udp:{a}"),
            Listen::Eth(i) => write!(f, "eth:{i}"),
        }
    }
}

/// One card (or one function of a card) to build.
#[derive(Debug, Clone, PartialEq)]
pub enum DeviceSpec {
    /// NVMe controller over a file or block device.
    Nvme {
        /// Backing path.
        path: PathBuf,
        /// Create the file with this size if it does not exist.
        create_size: Option<u64>,
        /// Serial number override.
        serial: Option<String>,
        /// SR-IOV: the appliance enables this many virtual functions, each a controller with
        /// its own slice of the store, and pools them (the physical function itself is then
        /// withheld from hosts: it holds every VF's life). `None`: not an SR-IOV device.
        sriov: Option<NvmeSriov>,
    },
    /// NVMe controller over a temporary sparse file that the appliance creates and deletes
    /// when it stops (the embedded default, the demo, tests and benchmarks).
    ScratchNvme {
        /// Namespace size in bytes.
        size: u64,
    },
    /// DMA engine test device.
    Dma {
        /// Buffer size.
        buffer: u64,
        /// SR-IOV virtual functions the appliance enables and pools (0 = not an SR-IOV
        /// device); the physical function is then withheld from hosts.
        vfs: u16,
    },
    /// Replay of a real card's config space.
    Replay {
        /// `lspci -xxxx` dump.
        dump: PathBuf,
        /// BAR sizes by index.
        bars: Vec<(u8, u64)>,
    },
    /// A card implemented by a vfio-user device server, the appliance its client
    /// ([`crate::endpoint::vfio_user_client`]).
    VfioUser {
        /// The server's UNIX socket.
        socket: PathBuf,
        /// How long to keep trying to connect (`None`: the client's default, 5 s).
        connect_timeout: Option<std::time::Duration>,
        /// Start and supervise this server process (argv) instead of connecting to a running
        /// one; empty: connect only.
        start: Vec<String>,
    },
}

impl DeviceSpec {
    /// How many virtual functions the appliance enables for this device and puts in the pool.
    pub fn pooled_vfs(&self) -> u16 {
        match self {
            DeviceSpec::Nvme { sriov: Some(s), .. } => s.vfs,
            DeviceSpec::Dma { vfs, .. } => *vfs,
            _ => 0,
        }
    }
}

/// A device and where it sits.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceConfig {
    /// Device and function number (bus 0: the bus is what the host's enumeration assigns).
    pub bdf: Bdf,
    /// Its stable inventory name (`None`: the id derived from `bdf`, see
    /// [`FunctionId`](super::inventory::FunctionId)).
    pub name: Option<String>,
    /// What to build.
    pub spec: DeviceSpec,
}

/// A function given to a host by the configuration (`[[assign]]`, or `assign =` on a device).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssignSpec {
    /// The function's inventory id (checked against the inventory when the appliance builds).
    pub function: FunctionId,
    /// Its owner; always one of [`ApplianceConfig::hosts`].
    pub host: HostId,
    /// The VM of the owner that is to take it, as an assignment restored from the state store
    /// named it (`Oem.Pcietun.Vm.Name`, `ctl assign --vm`): sent to the host again at its next
    /// session, as when it was assigned. The configuration file does not name VMs (a host
    /// agent's `[[vm]]` selectors do).
    pub vm: Option<VmName>,
}

/// A host allowed to connect, as the configuration names it: `[[host]] id, public_key,
/// psk_file` in a file, or `--host NAME=PUBLIC_KEY[,psk=FILE]` on the command line. Public
/// keys are not secret; the optional PSK, a secret, only ever comes from a file (read when the
/// appliance starts, [`ApplianceConfig::identity`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSpec {
    /// The host's name in logs, events and assignments.
    pub id: HostId,
    /// Its static public key (`pcietun pubkey` of the host's key file).
    pub public_key: PublicKey,
    /// File holding its optional pre-shared key (`pcietun keygen --psk`).
    pub psk_file: Option<PathBuf>,
}

impl HostSpec {
    /// Read the PSK file, if any: the transport's view of the host.
    pub fn load(&self) -> Result<HostKey, KeyError> {
        Ok(HostKey {
            host: self.id,
            public: self.public_key,
            psk: self
                .psk_file
                .as_deref()
                .map(crate::transport::Psk::from_file)
                .transpose()?,
        })
    }
}

/// Transport knobs of the appliance's links (not in the file yet: the rig and tests set them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkOptions {
    /// Frame encryption (AEAD); off still authenticates every frame.
    pub encrypt: bool,
    /// Largest frame; `None` keeps the transport's default.
    pub mtu: Option<usize>,
    /// Seed of injected loss and the transport's randomness (0: random).
    pub seed: u64,
    /// Spin instead of sleeping in the kernel (lowest latency, burns a core).
    pub busy_poll: bool,
}

impl Default for LinkOptions {
    fn default() -> Self {
        LinkOptions {
            encrypt: crate::transport::Config::default().encrypt,
            mtu: None,
            seed: 0,
            busy_poll: false,
        }
    }
}

/// The management API's TLS files (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiTls {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// Private key (must be readable by its owner only; checked when the API starts).
    pub key: PathBuf,
}

/// The management API's settings: `[api]` with `--api` / `--api-admin` on top. Plain data;
/// `pcietun appliance` hands it to the API server. The password file is read (and refused
/// when group or others can read it) when the server starts, before anything listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiSettings {
    /// Listen address ([`DEFAULT_API_LISTEN`] unless given).
    pub listen: SocketAddr,
    /// HTTPS, or plain HTTP when `None`.
    pub tls: Option<ApiTls>,
    /// The first administrator (without one, [`ApplianceConfig::check_api`] refuses the
    /// configuration).
    pub admin: Option<String>,
    /// The file whose first line is its password.
    pub admin_password_file: Option<PathBuf>,
    /// Session idle timeout (`None`: the API's default).
    pub session_timeout: Option<Duration>,
    /// Directories under which a card added over the API may have its backing file, dump or
    /// socket (`device_dirs`; empty: no path-bearing card over the API).
    pub device_dirs: Vec<PathBuf>,
    /// `[api] state`: the file where the API's accounts and acknowledged assignments persist
    /// (`None`: `pcietun appliance` picks the default, docs/api.md "Persistence").
    pub state: Option<PathBuf>,
    /// `[api] reclaim_after_s`: how long a host's session may be lost before the API returns
    /// its functions to the pool (docs/api.md "Rules"; `None`: never, unless set over the API).
    pub reclaim_after: Option<Duration>,
}

impl Default for ApiSettings {
    fn default() -> Self {
        ApiSettings {
            listen: DEFAULT_API_LISTEN
                .parse()
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 8443))),
            tls: None,
            admin: None,
            admin_password_file: None,
            session_timeout: None,
            device_dirs: Vec::new(),
            state: None,
            reclaim_after: None,
        }
    }
}

/// The resolved appliance configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct ApplianceConfig {
    /// Listen addresses.
    pub listen: Vec<Listen>,
    /// Devices, with their device/function numbers.
    pub devices: Vec<DeviceConfig>,
    /// Our private key file (`None`: `$PCIETUN_PRIVATE_KEY`, else the development key; see
    /// [`Self::identity`]).
    pub key_file: Option<PathBuf>,
    /// Hosts allowed to connect (none: the development host key, see [`Self::identity`]).
    pub hosts: Vec<HostSpec>,
    /// Functions given to hosts at start, in file order.
    pub assignments: Vec<AssignSpec>,
    /// Loss injection in percent (testing).
    pub inject_loss: f64,
    /// Completion timeout for device DMA.
    pub dma_timeout: Duration,
    /// How long an unassign waits for the owner's `RemovalAck` before the function is
    /// detached with surprise-removal semantics (`[options] removal_grace_ms`). Must exceed
    /// the longest VM eject an owner's agent waits for (its `detach_grace_ms`, docs/vms.md).
    pub removal_grace: Duration,
    /// Transport knobs.
    pub link: LinkOptions,
    /// The management API, when `[api]`, `--api` or `--api-admin` enables it.
    pub api: Option<ApiSettings>,
}

impl Default for ApplianceConfig {
    fn default() -> Self {
        ApplianceConfig {
            listen: Vec::new(),
            devices: Vec::new(),
            key_file: None,
            hosts: Vec::new(),
            assignments: Vec::new(),
            inject_loss: 0.0,
            dma_timeout: Duration::from_secs(2),
            removal_grace: super::view::DEFAULT_GRACE,
            link: LinkOptions::default(),
            api: None,
        }
    }
}

/// Command-line additions to a configuration, as the user typed them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConfigFlags {
    /// `--listen` values.
    pub listen: Vec<String>,
    /// `--device` values.
    pub device: Vec<String>,
    /// `--key FILE`: our private key file.
    pub key: Option<PathBuf>,
    /// `--host NAME=PUBLIC_KEY[,psk=FILE]` values.
    pub host: Vec<String>,
    /// `--inject-loss PCT`.
    pub inject_loss: Option<f64>,
    /// `--api ADDR`: serve the management API there.
    pub api: Option<String>,
    /// `--api-admin NAME:PASSWORD_FILE`: its first administrator.
    pub api_admin: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    listen: Vec<Spanned<String>>,
    key_file: Option<String>,
    #[serde(default)]
    host: Vec<FileHost>,
    #[serde(default)]
    device: Vec<FileDevice>,
    #[serde(default)]
    assign: Vec<FileAssign>,
    #[serde(default)]
    options: Option<FileOptions>,
    api: Option<Spanned<FileApi>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileApi {
    listen: Option<Spanned<String>>,
    tls_cert: Option<String>,
    tls_key: Option<String>,
    admin: Option<Spanned<String>>,
    admin_password_file: Option<String>,
    session_timeout_s: Option<Spanned<u64>>,
    #[serde(default)]
    device_dirs: Vec<String>,
    state: Option<String>,
    reclaim_after_s: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileHost {
    id: Spanned<String>,
    public_key: Spanned<String>,
    psk_file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAssign {
    function: Spanned<String>,
    host: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDevice {
    assign: Option<Spanned<String>>,
    kind: Spanned<String>,
    name: Option<Spanned<String>>,
    path: Option<Spanned<String>>,
    size: Option<Spanned<String>>,
    serial: Option<String>,
    buffer: Option<Spanned<String>>,
    vfs: Option<Spanned<u16>>,
    vf_size: Option<Spanned<String>>,
    dump: Option<Spanned<String>>,
    #[serde(default)]
    bars: std::collections::BTreeMap<String, Spanned<String>>,
    socket: Option<Spanned<String>>,
    connect_timeout: Option<Spanned<f64>>,
    start: Option<Spanned<Vec<String>>>,
    slot: Option<Spanned<u8>>,
    function: Option<Spanned<u8>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileOptions {
    inject_loss: Option<Spanned<f64>>,
    dma_timeout_ms: Option<Spanned<u64>>,
    removal_grace_ms: Option<Spanned<u64>>,
}

fn line_col(text: &str, span: &Range<usize>) -> (usize, usize) {
    let upto = text.get(..span.start.min(text.len())).unwrap_or(text);
    let line = upto.matches('\n').count() + 1;
    let col = upto.len() - upto.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, col)
}

/// Parse a size like `4096`, `0x1000`, `64K`, `16M`, `2G`, `1T` (binary units).
pub fn parse_size(s: &str) -> Result<u64, ConfigProblem> {
    let t = s.trim();
    let (num, mult) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M') => (&t[..t.len() - 1], 1 << 20),
        Some('G') => (&t[..t.len() - 1], 1 << 30),
        Some('T') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    let invalid = || ConfigProblem::InvalidSize(s.to_string());
    let n: u64 = if let Some(hex) = num.strip_prefix("0x") {
        u64::from_str_radix(hex, 16).map_err(|_| invalid())?
    } else {
        num.parse().map_err(|_| invalid())?
    };
    n.checked_mul(mult)
        .ok_or_else(|| ConfigProblem::SizeOverflow(s.to_string()))
}

/// Parse the management API's listen address (`IP:PORT`).
pub fn parse_api_listen(s: &str) -> Result<SocketAddr, ConfigProblem> {
    s.trim()
        .parse()
        .map_err(|_| ConfigProblem::ApiListen(s.to_string()))
}

/// Check an API administrator name (the rule of the API's account names).
pub fn parse_api_admin_name(s: &str) -> Result<String, ConfigProblem> {
    let ok = (1..=32).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(s.to_string())
    } else {
        Err(ConfigProblem::ApiAdminName(s.to_string()))
    }
}

/// Parse `--api-admin NAME:PASSWORD_FILE`.
pub fn parse_api_admin_flag(s: &str) -> Result<(String, PathBuf), ConfigProblem> {
    let (name, file) = s
        .split_once(':')
        .filter(|(_, f)| !f.is_empty())
        .ok_or(ConfigProblem::ApiAdminFlag)?;
    Ok((parse_api_admin_name(name)?, PathBuf::from(file)))
}

/// Parse `udp:IP:PORT` or `eth:IFACE`.
pub fn parse_listen(s: &str) -> Result<Listen, ConfigProblem> {
    if let Some(a) = s.strip_prefix("udp:") {
        a.parse()
            .map(Listen::Udp)
            .map_err(|_| ConfigProblem::BadUdpAddress(a.to_string()))
    } else if let Some(i) = s.strip_prefix("eth:") {
        if i.is_empty() || i.len() > 15 || i.contains('/') {
            Err(ConfigProblem::BadInterface(i.to_string()))
        } else {
            Ok(Listen::Eth(i.to_string()))
        }
    } else {
        Err(ConfigProblem::BadListenScheme(s.to_string()))
    }
}

// ---- Hosts and keys: the one place that knows what a host's credential looks like. ----

/// Parse a host id (1 to 16 bytes).
pub fn parse_host_id(id: &str) -> Result<HostId, ConfigProblem> {
    HostId::new(id).map_err(|_| ConfigProblem::BadHostId(id.to_string()))
}

/// Parse a public key (base64 of 32 bytes, as `pcietun keygen` and `pcietun pubkey` print it).
pub fn parse_public_key(s: &str) -> Result<PublicKey, ConfigProblem> {
    s.trim().parse().map_err(ConfigProblem::BadKey)
}

/// Parse a `--host NAME=PUBLIC_KEY[,psk=FILE]` flag value.
pub fn parse_host_flag(s: &str) -> Result<HostSpec, ConfigProblem> {
    let (id, rest) = s.split_once('=').ok_or(ConfigProblem::BadHostFlag)?;
    let mut parts = rest.split(',');
    let public_key = parse_public_key(parts.next().unwrap_or(""))?;
    let mut psk_file = None;
    for p in parts {
        match p.split_once('=') {
            Some(("psk", f)) if !f.is_empty() => psk_file = Some(PathBuf::from(f)),
            _ => return Err(ConfigProblem::BadHostFlag),
        }
    }
    Ok(HostSpec {
        id: parse_host_id(id)?,
        public_key,
        psk_file,
    })
}

impl ApplianceConfig {
    /// True when a development key is in use: no host is configured, or no private key is
    /// (neither [`Self::key_file`] nor `$PCIETUN_PRIVATE_KEY`). Not secure; only allowed on
    /// loopback listen addresses ([`Self::identity`] refuses anything else).
    pub fn uses_development_key(&self) -> bool {
        self.hosts.is_empty()
            || (self.key_file.is_none() && std::env::var_os(keys::KEY_ENV).is_none())
    }

    /// The host ids the appliance knows (for the inventory and assignments): the configured
    /// hosts, or [`DEVELOPMENT_HOST_NAME`] when none is.
    pub fn accepted_host_ids(&self) -> Vec<HostId> {
        if self.hosts.is_empty() {
            return HostId::new(DEVELOPMENT_HOST_NAME).into_iter().collect();
        }
        self.hosts.iter().map(|h| h.id).collect()
    }

    /// The appliance's identity, read now: its private key ([`Self::key_file`], else
    /// `$PCIETUN_PRIVATE_KEY`, else the development key) and the hosts the transport accepts
    /// (the configured ones with their PSK files read, else the development host key as
    /// [`DEVELOPMENT_HOST_NAME`]). Any development key is refused unless every listen address
    /// is loopback, and two hosts with one public key are refused.
    pub fn identity(&self) -> Result<(SecretKey, Vec<HostKey>), KeyError> {
        let key = keys::load_secret(self.key_file.as_deref())?;
        if key.is_none() || self.hosts.is_empty() {
            let listen: Vec<String> = self.listen.iter().map(ToString::to_string).collect();
            keys::require_loopback(listen.iter().map(String::as_str))?;
        }
        let key = key.unwrap_or_else(SecretKey::development_appliance);
        let mut out: Vec<HostKey> = Vec::with_capacity(self.hosts.len().max(1));
        for h in &self.hosts {
            if let Some(o) = out.iter().find(|o| o.public == h.public_key) {
                return Err(KeyError::DuplicateHost(
                    o.host.to_string(),
                    h.id.to_string(),
                ));
            }
            out.push(h.load()?);
        }
        if out.is_empty() {
            out.push(HostKey {
                host: HostId::new(DEVELOPMENT_HOST_NAME)?,
                public: SecretKey::development_host().public_key(),
                psk: None,
            });
        }
        Ok((key, out))
    }
}

// ---- Devices ----

/// A connect timeout in seconds (0.001..=3600).
fn connect_timeout(secs: f64) -> Option<std::time::Duration> {
    (0.001..=3600.0)
        .contains(&secs)
        .then(|| std::time::Duration::from_secs_f64(secs))
}

/// The functions a device's pooled VFs take: VF *i* (0-based) at function `function + 1 + i`
/// of its slot (First VF Offset 1, VF Stride 1, as the NVMe and DMA models set them).
fn vf_functions(bdf: Bdf, vfs: u16) -> impl Iterator<Item = (u16, u16)> {
    (0..vfs).map(move |i| (i, u16::from(bdf.function()) + 1 + i))
}

/// Whether a device at `bdf` with `spec` fits beside `devices` once pooled VFs are counted:
/// its VFs must stay within its slot and off every other device, and it must not sit on the
/// VFs of one placed before it.
fn vf_collision(
    devices: &[DeviceConfig],
    index: usize,
    bdf: Bdf,
    spec: &DeviceSpec,
) -> Result<(), ConfigProblem> {
    let (slot, function, vfs) = (bdf.device(), bdf.function(), spec.pooled_vfs());
    let taken = |f: u16| devices.iter().any(|d| d.bdf == Bdf::new(0, slot, f as u8));
    for (vf, f) in vf_functions(bdf, vfs) {
        if f > 7 {
            return Err(ConfigProblem::VfsPastSlot {
                index,
                slot,
                function,
                vfs,
                last: u16::from(function) + vfs,
            });
        }
        if taken(f) {
            return Err(ConfigProblem::VfsCollide {
                index,
                slot,
                function,
                vfs,
                vf,
                taken: f as u8,
            });
        }
    }
    for (j, other) in devices.iter().enumerate() {
        let n = other.spec.pooled_vfs();
        if other.bdf.device() != slot {
            continue;
        }
        if let Some((vf, _)) = vf_functions(other.bdf, n).find(|(_, f)| *f == u16::from(function)) {
            return Err(ConfigProblem::VfsCollide {
                index: j + 1,
                slot,
                function: other.bdf.function(),
                vfs: n,
                vf,
                taken: function,
            });
        }
    }
    Ok(())
}

/// The SR-IOV layout of an NVMe device from `vfs` and `vf_size` (`None` without VFs).
fn nvme_sriov(vfs: u16, vf_size: Option<u64>) -> Result<Option<NvmeSriov>, ConfigProblem> {
    match (vfs, vf_size) {
        (0, Some(_)) => Err(ConfigProblem::VfSizeWithoutVfs),
        (0, None) => Ok(None),
        (vfs, vf_size) => Ok(Some(NvmeSriov { vfs, vf_size })),
    }
}

/// Parse a `--device` flag value: `nvme=PATH[,size=SIZE][,vfs=N[,vf_size=SIZE]]`, `dma[,buffer=SIZE][,vfs=N]`,
/// `replay=DUMP[,barN=SIZE...]` or `vfio-user=SOCKET_PATH[,connect_timeout=SECONDS]`.
pub fn parse_device_flag(s: &str) -> Result<DeviceSpec, ConfigProblem> {
    let mut parts = s.split(',');
    let head = parts.next().unwrap_or("");
    let (kind, arg) = head.split_once('=').unwrap_or((head, ""));
    let rest: Vec<&str> = parts.collect();
    match kind {
        "nvme" => {
            if arg.is_empty() {
                return Err(ConfigProblem::NvmeNeedsPath);
            }
            let mut create_size = None;
            let (mut vfs, mut vf_size) = (0, None);
            for r in rest {
                match r.split_once('=') {
                    Some(("size", v)) => create_size = Some(parse_size(v)?),
                    Some(("vfs", v)) => {
                        vfs = v
                            .parse()
                            .ok()
                            .filter(|n| *n <= MAX_POOLED_VFS)
                            .ok_or_else(|| ConfigProblem::VfsFlag(v.to_string()))?
                    }
                    Some(("vf_size", v)) => vf_size = Some(parse_size(v)?),
                    _ => return Err(ConfigProblem::UnknownNvmeOption(r.to_string())),
                }
            }
            Ok(DeviceSpec::Nvme {
                path: arg.into(),
                create_size,
                serial: None,
                sriov: nvme_sriov(vfs, vf_size)?,
            })
        }
        "dma" => {
            let mut buffer = DEFAULT_DMA_BUFFER;
            let mut vfs = 0;
            for r in rest.iter().copied().chain((!arg.is_empty()).then_some(arg)) {
                match r.split_once('=') {
                    Some(("buffer", v)) => buffer = parse_size(v)?,
                    Some(("vfs", v)) => {
                        vfs = v
                            .parse()
                            .ok()
                            .filter(|n| *n <= MAX_DMA_VFS)
                            .ok_or_else(|| ConfigProblem::VfsFlag(v.to_string()))?
                    }
                    _ => return Err(ConfigProblem::UnknownDmaOption(r.to_string())),
                }
            }
            Ok(DeviceSpec::Dma { buffer, vfs })
        }
        "replay" => {
            if arg.is_empty() {
                return Err(ConfigProblem::ReplayNeedsDump);
            }
            let mut bars = Vec::new();
            for r in rest {
                let (k, v) = r
                    .split_once('=')
                    .ok_or_else(|| ConfigProblem::ReplayOptionShape(r.to_string()))?;
                let n: u8 = k
                    .strip_prefix("bar")
                    .and_then(|n| n.parse().ok())
                    .filter(|n| *n < 6)
                    .ok_or_else(|| ConfigProblem::UnknownReplayOption(k.to_string()))?;
                bars.push((n, parse_size(v)?));
            }
            Ok(DeviceSpec::Replay {
                dump: arg.into(),
                bars,
            })
        }
        "vfio-user" => {
            if arg.is_empty() {
                return Err(ConfigProblem::VfioUserNeedsSocket);
            }
            let mut timeout = None;
            for r in rest {
                match r.split_once('=') {
                    Some(("connect_timeout", v)) => {
                        timeout = Some(
                            v.parse()
                                .ok()
                                .and_then(connect_timeout)
                                .ok_or_else(|| ConfigProblem::ConnectTimeout(v.to_string()))?,
                        )
                    }
                    _ => return Err(ConfigProblem::UnknownVfioUserOption(r.to_string())),
                }
            }
            Ok(DeviceSpec::VfioUser {
                socket: arg.into(),
                connect_timeout: timeout,
                start: Vec::new(),
            })
        }
        other => Err(ConfigProblem::UnknownKind(other.to_string())),
    }
}

impl ApplianceConfig {
    /// Read and parse the TOML file at `path`; relative paths in it are relative to its
    /// directory.
    pub fn load(path: &Path) -> Result<Self, ApplianceError> {
        let text = std::fs::read_to_string(path).map_err(|source| ApplianceError::ReadConfig {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Ok(Self::from_toml(&text, &path.display().to_string(), base)?)
    }

    /// Parse a TOML configuration; `origin` names the file in errors, `base_dir` anchors
    /// relative paths.
    pub fn from_toml(text: &str, origin: &str, base_dir: &Path) -> Result<Self, ConfigError> {
        let err = |span: Option<Range<usize>>, problem: ConfigProblem| ConfigError {
            origin: origin.to_string(),
            at: span.map(|s| line_col(text, &s)),
            problem,
        };
        let file: FileConfig = toml::from_str(text).map_err(|e| {
            let span = e.span();
            err(span, ConfigProblem::Syntax(Box::new(e)))
        })?;
        let mut cfg = ApplianceConfig::default();
        for l in &file.listen {
            cfg.listen
                .push(parse_listen(l.get_ref()).map_err(|m| err(Some(l.span()), m))?);
        }
        let resolve = |p: &str| {
            let p = PathBuf::from(p);
            if p.is_relative() {
                base_dir.join(p)
            } else {
                p
            }
        };
        cfg.key_file = file.key_file.as_deref().map(resolve);
        for h in &file.host {
            let id = parse_host_id(h.id.get_ref()).map_err(|m| err(Some(h.id.span()), m))?;
            let public_key = parse_public_key(h.public_key.get_ref())
                .map_err(|m| err(Some(h.public_key.span()), m))?;
            cfg.hosts.push(HostSpec {
                id,
                public_key,
                psk_file: h.psk_file.as_deref().map(resolve),
            });
        }
        let mut assigns: Vec<(FunctionId, String, Range<usize>)> = Vec::new();
        for (i, d) in file.device.iter().enumerate() {
            let need = |f: &Option<Spanned<String>>, key: &'static str| {
                f.as_ref().map(|s| s.get_ref().clone()).ok_or_else(|| {
                    err(
                        Some(d.kind.span()),
                        ConfigProblem::MissingKey {
                            index: i + 1,
                            kind: d.kind.get_ref().clone(),
                            key,
                        },
                    )
                })
            };
            let size_of =
                |f: &Spanned<String>| parse_size(f.get_ref()).map_err(|m| err(Some(f.span()), m));
            let spec = match d.kind.get_ref().as_str() {
                "nvme" => DeviceSpec::Nvme {
                    path: resolve(&need(&d.path, "path")?),
                    create_size: d.size.as_ref().map(size_of).transpose()?,
                    serial: d.serial.clone(),
                    sriov: {
                        let vfs = match &d.vfs {
                            Some(v) if *v.get_ref() > MAX_POOLED_VFS => {
                                return Err(err(Some(v.span()), ConfigProblem::VfsRange))
                            }
                            Some(v) => *v.get_ref(),
                            None => 0,
                        };
                        let vf_size = d.vf_size.as_ref().map(size_of).transpose()?;
                        nvme_sriov(vfs, vf_size)
                            .map_err(|p| err(d.vf_size.as_ref().map(|v| v.span()), p))?
                    },
                },
                "dma" => DeviceSpec::Dma {
                    buffer: d
                        .buffer
                        .as_ref()
                        .map(size_of)
                        .transpose()?
                        .unwrap_or(DEFAULT_DMA_BUFFER),
                    vfs: match &d.vfs {
                        Some(v) if *v.get_ref() > MAX_DMA_VFS => {
                            return Err(err(Some(v.span()), ConfigProblem::VfsRange))
                        }
                        Some(v) => *v.get_ref(),
                        None => 0,
                    },
                },
                "replay" => {
                    let mut bars = Vec::new();
                    for (k, v) in &d.bars {
                        let n: u8 = k
                            .strip_prefix("bar")
                            .unwrap_or(k)
                            .parse()
                            .ok()
                            .filter(|n| *n < 6)
                            .ok_or_else(|| {
                                err(Some(v.span()), ConfigProblem::UnknownBar(k.clone()))
                            })?;
                        bars.push((n, size_of(v)?));
                    }
                    DeviceSpec::Replay {
                        dump: resolve(&need(&d.dump, "dump")?),
                        bars,
                    }
                }
                "vfio-user" => DeviceSpec::VfioUser {
                    socket: resolve(&need(&d.socket, "socket")?),
                    connect_timeout: match &d.connect_timeout {
                        None => None,
                        Some(t) => Some(connect_timeout(*t.get_ref()).ok_or_else(|| {
                            err(
                                Some(t.span()),
                                ConfigProblem::ConnectTimeout(t.get_ref().to_string()),
                            )
                        })?),
                    },
                    start: match &d.start {
                        None => Vec::new(),
                        Some(s) if s.get_ref().is_empty() => {
                            return Err(err(Some(s.span()), ConfigProblem::EmptyStart))
                        }
                        Some(s) => s.get_ref().clone(),
                    },
                },
                other => {
                    return Err(err(
                        Some(d.kind.span()),
                        ConfigProblem::UnknownKind(other.to_string()),
                    ))
                }
            };
            let slot = match &d.slot {
                None => u8::try_from(i)
                    .ok()
                    .filter(|s| *s < 32)
                    .ok_or_else(|| err(Some(d.kind.span()), ConfigProblem::SlotsFull))?,
                Some(s) if *s.get_ref() < 32 => *s.get_ref(),
                Some(s) => return Err(err(Some(s.span()), ConfigProblem::SlotRange)),
            };
            let function = match &d.function {
                None => 0,
                Some(f) if *f.get_ref() < 8 => *f.get_ref(),
                Some(f) => return Err(err(Some(f.span()), ConfigProblem::FunctionRange)),
            };
            let bdf = Bdf::new(0, slot, function);
            if cfg.devices.iter().any(|d| d.bdf == bdf) {
                return Err(err(
                    Some(d.kind.span()),
                    ConfigProblem::SlotTaken {
                        index: i + 1,
                        slot,
                        function,
                    },
                ));
            }
            let vf_span = d.vfs.as_ref().map(|v| v.span()).or(Some(d.kind.span()));
            vf_collision(&cfg.devices, i + 1, bdf, &spec).map_err(|p| err(vf_span, p))?;
            let name = match &d.name {
                None => None,
                Some(n) => {
                    let id = FunctionId::named(n.get_ref())
                        .map_err(|e| err(Some(n.span()), ConfigProblem::BadName(e)))?;
                    if cfg
                        .devices
                        .iter()
                        .any(|d| d.name.as_deref() == Some(id.as_str()))
                    {
                        return Err(err(
                            Some(n.span()),
                            ConfigProblem::DuplicateName {
                                index: i + 1,
                                name: id.to_string(),
                            },
                        ));
                    }
                    Some(id.to_string())
                }
            };
            if let Some(a) = &d.assign {
                let function = match &name {
                    Some(n) => FunctionId::named(n)
                        .map_err(|e| err(Some(a.span()), ConfigProblem::BadName(e)))?,
                    None => FunctionId::derived(bdf),
                };
                assigns.push((function, a.get_ref().clone(), a.span()));
            }
            cfg.devices.push(DeviceConfig { bdf, name, spec });
        }
        for a in &file.assign {
            let function = a
                .function
                .get_ref()
                .parse::<FunctionId>()
                .map_err(|e| err(Some(a.function.span()), ConfigProblem::BadName(e)))?;
            assigns.push((function, a.host.get_ref().clone(), a.host.span()));
        }
        for (function, host, span) in assigns {
            let id = parse_host_id(&host).map_err(|m| err(Some(span.clone()), m))?;
            if !cfg.hosts.iter().any(|h| h.id == id) {
                return Err(err(Some(span), ConfigProblem::AssignUnknownHost(host)));
            }
            if cfg.assignments.iter().any(|a| a.function == function) {
                return Err(err(
                    Some(span),
                    ConfigProblem::AssignedTwice(function.to_string()),
                ));
            }
            cfg.assignments.push(AssignSpec {
                function,
                host: id,
                vm: None,
            });
        }
        if let Some(o) = &file.options {
            if let Some(l) = &o.inject_loss {
                if !(0.0..=100.0).contains(l.get_ref()) {
                    return Err(err(Some(l.span()), ConfigProblem::LossRange));
                }
                cfg.inject_loss = *l.get_ref();
            }
            if let Some(t) = &o.dma_timeout_ms {
                if *t.get_ref() == 0 {
                    return Err(err(Some(t.span()), ConfigProblem::DmaTimeoutZero));
                }
                cfg.dma_timeout = Duration::from_millis(*t.get_ref());
            }
            if let Some(g) = &o.removal_grace_ms {
                if !(1000..=3_600_000).contains(g.get_ref()) {
                    return Err(err(Some(g.span()), ConfigProblem::RemovalGraceRange));
                }
                cfg.removal_grace = Duration::from_millis(*g.get_ref());
            }
        }
        if let Some(a) = &file.api {
            let table = a.get_ref();
            let mut api = ApiSettings::default();
            if let Some(l) = &table.listen {
                api.listen = parse_api_listen(l.get_ref()).map_err(|m| err(Some(l.span()), m))?;
            }
            api.tls = match (&table.tls_cert, &table.tls_key) {
                (Some(c), Some(k)) => Some(ApiTls {
                    cert: resolve(c),
                    key: resolve(k),
                }),
                (None, None) => None,
                _ => return Err(err(Some(a.span()), ConfigProblem::ApiTlsPair)),
            };
            match (&table.admin, &table.admin_password_file) {
                (Some(n), Some(f)) => {
                    api.admin = Some(
                        parse_api_admin_name(n.get_ref()).map_err(|m| err(Some(n.span()), m))?,
                    );
                    api.admin_password_file = Some(resolve(f));
                }
                (None, None) => {}
                _ => return Err(err(Some(a.span()), ConfigProblem::ApiAdminPair)),
            }
            if let Some(t) = &table.session_timeout_s {
                if !API_SESSION_TIMEOUT_S.contains(t.get_ref()) {
                    return Err(err(Some(t.span()), ConfigProblem::ApiSessionTimeout));
                }
                api.session_timeout = Some(Duration::from_secs(*t.get_ref()));
            }
            if let Some(t) = &table.reclaim_after_s {
                if !(1..=30 * 24 * 3600).contains(t.get_ref()) {
                    return Err(err(Some(t.span()), ConfigProblem::ApiReclaimAfter));
                }
                api.reclaim_after = Some(Duration::from_secs(*t.get_ref()));
            }
            api.device_dirs = table.device_dirs.iter().map(|d| resolve(d)).collect();
            api.state = table.state.as_deref().map(resolve);
            cfg.api = Some(api);
        }
        Ok(cfg)
    }

    /// Apply command-line flags on top: listeners, devices and hosts are added (each
    /// `--device` takes the next free device number, function 0); `--inject-loss` overrides.
    pub fn apply_flags(&mut self, flags: &ConfigFlags) -> Result<(), ConfigError> {
        let flag_err = |flag: &str, v: &str, problem: ConfigProblem| ConfigError {
            origin: format!("command line {flag} {v}"),
            at: None,
            problem,
        };
        for l in &flags.listen {
            self.listen
                .push(parse_listen(l).map_err(|m| flag_err("--listen", l, m))?);
        }
        for d in &flags.device {
            let spec = parse_device_flag(d).map_err(|m| flag_err("--device", d, m))?;
            let bdf = self
                .free_slot()
                .ok_or_else(|| flag_err("--device", d, ConfigProblem::SlotsFull))?;
            self.devices.push(DeviceConfig {
                bdf,
                name: None,
                spec,
            });
        }
        if let Some(k) = &flags.key {
            self.key_file = Some(k.clone());
        }
        for h in &flags.host {
            self.hosts
                .push(parse_host_flag(h).map_err(|m| flag_err("--host", h, m))?);
        }
        if let Some(l) = flags.inject_loss {
            if !(0.0..=100.0).contains(&l) {
                return Err(flag_err(
                    "--inject-loss",
                    &l.to_string(),
                    ConfigProblem::LossFlagRange,
                ));
            }
            self.inject_loss = l;
        }
        if let Some(a) = &flags.api {
            let listen = parse_api_listen(a).map_err(|m| flag_err("--api", a, m))?;
            self.api.get_or_insert_with(ApiSettings::default).listen = listen;
        }
        if let Some(a) = &flags.api_admin {
            let (name, file) =
                parse_api_admin_flag(a).map_err(|m| flag_err("--api-admin", a, m))?;
            let api = self.api.get_or_insert_with(ApiSettings::default);
            api.admin = Some(name);
            api.admin_password_file = Some(file);
        }
        Ok(())
    }

    /// Check what only the merged configuration can tell: an enabled management API has a
    /// first administrator (there is no default password). [`Self::fill_defaults`] does not
    /// call it, so a caller that serves no API is not refused; `pcietun appliance` does.
    pub fn check_api(&self) -> Result<(), ConfigError> {
        match &self.api {
            Some(a) if a.admin.is_none() || a.admin_password_file.is_none() => Err(ConfigError {
                origin: "configuration".into(),
                at: None,
                problem: ConfigProblem::ApiNoAdmin,
            }),
            _ => Ok(()),
        }
    }

    /// Fill in what is still missing: with no device, one NVMe controller on a 64 MiB
    /// temporary (sparse) file; with no listen address, [`DEFAULT_LISTEN`].
    pub fn fill_defaults(&mut self) {
        if self.devices.is_empty() {
            self.devices.push(DeviceConfig {
                bdf: Bdf::new(0, 0, 0),
                name: None,
                spec: DeviceSpec::ScratchNvme {
                    size: DEFAULT_SCRATCH_NVME_BYTES,
                },
            });
        }
        if self.listen.is_empty() {
            if let Ok(l) = parse_listen(DEFAULT_LISTEN) {
                self.listen.push(l);
            }
        }
    }

    /// The lowest device number no device uses yet, function 0.
    pub fn free_slot(&self) -> Option<Bdf> {
        (0..32u8)
            .find(|s| !self.devices.iter().any(|d| d.bdf.device() == *s))
            .map(|s| Bdf::new(0, s, 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_errors_name_file_line_and_problem() {
        let text = "listen = [\"udp:127.0.0.1:7470\"]\n\n[[device]]\nkind = \"nvme\"\n";
        let e = ApplianceConfig::from_toml(text, "a.toml", Path::new(".")).unwrap_err();
        assert_eq!(e.to_string(), "a.toml:4:8: device #1 (nvme) needs `path`");
        let text = "listen = [\"tcp:1.2.3.4:5\"]\n";
        let e = ApplianceConfig::from_toml(text, "a.toml", Path::new(".")).unwrap_err();
        assert!(
            e.to_string().starts_with("a.toml:1:11: listen address"),
            "{e}"
        );
        let text = "[[device]]\nkind = \"dma\"\nbufer = \"1M\"\n";
        let e = ApplianceConfig::from_toml(text, "b.toml", Path::new(".")).unwrap_err();
        assert!(e.to_string().starts_with("b.toml:3:1:"), "{e}");
        assert!(e.to_string().contains("bufer"), "{e}");
        assert!(matches!(e.problem, ConfigProblem::Syntax(_)));
    }

    #[test]
    fn assignments_from_device_keys_and_assign_tables() {
        let key = "qbwNFB0vWMgKxHS4j6E5lhLrNI0ZMHsE1SaNjgLCZGs=";
        let head = format!(
            "[[host]]\nid = \"web1\"\npublic_key = \"{key}\"\n\
             [[host]]\nid = \"web2\"\npublic_key = \"{key}\"\n"
        );
        let text = format!(
            "{head}[[device]]\nkind = \"dma\"\nname = \"dma-a\"\nassign = \"web1\"\n\
             [[device]]\nkind = \"dma\"\nvfs = 2\n\
             [[assign]]\nfunction = \"01.0.vf1\"\nhost = \"web2\"\n"
        );
        let c = ApplianceConfig::from_toml(&text, "a.toml", Path::new(".")).unwrap();
        let web = |n| HostId::new(n).unwrap();
        assert_eq!(
            c.assignments,
            vec![
                AssignSpec {
                    function: FunctionId::named("dma-a").unwrap(),
                    host: web("web1"),
                    vm: None,
                },
                AssignSpec {
                    function: FunctionId::derived(Bdf::new(0, 1, 0)).vf(1),
                    host: web("web2"),
                    vm: None,
                },
            ]
        );
        // A host that is not a [[host]], located at the value.
        let text = format!("{head}[[device]]\nkind = \"dma\"\nassign = \"db9\"\n");
        let e = ApplianceConfig::from_toml(&text, "a.toml", Path::new(".")).unwrap_err();
        assert!(matches!(e.problem, ConfigProblem::AssignUnknownHost(ref h) if h == "db9"));
        assert!(e.to_string().starts_with("a.toml:9:10:"), "{e}");
        // One function, two owners.
        let text = format!(
            "{head}[[device]]\nkind = \"dma\"\nassign = \"web1\"\n\
             [[assign]]\nfunction = \"00.0\"\nhost = \"web2\"\n"
        );
        let e = ApplianceConfig::from_toml(&text, "a.toml", Path::new(".")).unwrap_err();
        assert!(
            matches!(e.problem, ConfigProblem::AssignedTwice(ref f) if f == "00.0"),
            "{e}"
        );
        // Not a function id.
        let text = format!("{head}[[assign]]\nfunction = \"0x\"\nhost = \"web2\"\n");
        let e = ApplianceConfig::from_toml(&text, "a.toml", Path::new(".")).unwrap_err();
        assert!(matches!(e.problem, ConfigProblem::BadName(_)), "{e}");
    }

    #[test]
    fn toml_range_and_duplicate_errors() {
        let cases = [
            ("[[device]]\nkind = \"dma\"\nvfs = 8\n", "c.toml:3:7: vfs must be 0..=7"),
            (
                "[[device]]\nkind = \"dma\"\nslot = 32\n",
                "c.toml:3:8: slot must be 0..=31",
            ),
            (
                "[[device]]\nkind = \"dma\"\n[[device]]\nkind = \"dma\"\nslot = 0\n",
                "c.toml:4:8: device #2 uses slot 0 function 0, already taken",
            ),
            (
                "[[host]]\nid = \"a-host-id-that-is-too-long\"\npublic_key = \"qbwNFB0vWMgKxHS4j6E5lhLrNI0ZMHsE1SaNjgLCZGs=\"\n",
                "c.toml:2:6: host id \"a-host-id-that-is-too-long\" must be 1 to 16 bytes",
            ),
            (
                "[[host]]\nid = \"h\"\npublic_key = \"00\"\n",
                "c.toml:3:14: public key: not a key (want 32 bytes in base64, 44 characters)",
            ),
            (
                "[[device]]\nkind = \"dma\"\nname = \"9lives\"\n",
                "c.toml:3:8: function name \"9lives\" must be 1 to 32 letters, digits, '-' or '_', starting with a letter",
            ),
            (
                "[[device]]\nkind = \"dma\"\nname = \"x\"\n[[device]]\nkind = \"dma\"\nname = \"x\"\n",
                "c.toml:6:8: device #2 is named \"x\" like an earlier device",
            ),
            (
                "[options]\ndma_timeout_ms = 0\n",
                "c.toml:2:18: dma_timeout_ms must be positive",
            ),
            (
                "[options]\ninject_loss = 101.0\n",
                "c.toml:2:15: inject_loss must be 0..=100 (percent)",
            ),
            (
                "[options]\nremoval_grace_ms = 999\n",
                "c.toml:2:20: removal_grace_ms must be 1000..=3600000 (1 s to 1 h)",
            ),
            (
                "[options]\nremoval_grace_ms = 3600001\n",
                "c.toml:2:20: removal_grace_ms must be 1000..=3600000 (1 s to 1 h)",
            ),
            (
                "[[device]]\nkind = \"nvme\"\npath = \"a\"\nvf_size = \"1M\"\n",
                "c.toml:4:11: vf_size needs vfs = N (the number of SR-IOV virtual functions to cut the store for)",
            ),
            (
                "[[device]]\nkind = \"nvme\"\npath = \"a\"\nvfs = 8\n",
                "c.toml:4:7: vfs must be 0..=7",
            ),
            // VFs sit at the functions after their PF: past function 7 ...
            (
                "[[device]]\nkind = \"dma\"\nfunction = 2\nvfs = 6\n",
                "c.toml:4:7: device #1 at slot 0 function 2 has vfs = 6: its VFs would need functions up to 8, and a slot has 0..=7 (use fewer VFs or function 0)",
            ),
            // ... on a device placed before ...
            (
                "[[device]]\nkind = \"dma\"\nfunction = 3\n[[device]]\nkind = \"dma\"\nslot = 0\nvfs = 4\n",
                "c.toml:7:7: device #2 at slot 0 function 0 has vfs = 4: VF 2 would be function 3 of slot 0, which another device has",
            ),
            // ... or under a device placed after.
            (
                "[[device]]\nkind = \"nvme\"\npath = \"a\"\nvfs = 2\n[[device]]\nkind = \"dma\"\nslot = 0\nfunction = 2\n",
                "c.toml:6:8: device #1 at slot 0 function 0 has vfs = 2: VF 1 would be function 2 of slot 0, which another device has",
            ),
        ];
        for (text, want) in cases {
            let e = ApplianceConfig::from_toml(text, "c.toml", Path::new(".")).unwrap_err();
            assert_eq!(e.to_string(), want, "{text}");
        }
    }

    #[test]
    fn vfio_user_devices() {
        let text = r#"
[[device]]
kind = "vfio-user"
socket = "gpio.sock"

[[device]]
kind = "vfio-user"
socket = "/run/serial.sock"
connect_timeout = 2.5
start = ["qemu-system-x86_64", "-accel", "tcg"]
"#;
        let c = ApplianceConfig::from_toml(text, "c.toml", Path::new("/etc/pt")).unwrap();
        assert_eq!(
            c.devices[0].spec,
            DeviceSpec::VfioUser {
                socket: "/etc/pt/gpio.sock".into(),
                connect_timeout: None,
                start: vec![],
            }
        );
        assert_eq!(
            c.devices[1].spec,
            DeviceSpec::VfioUser {
                socket: "/run/serial.sock".into(),
                connect_timeout: Some(std::time::Duration::from_millis(2500)),
                start: vec!["qemu-system-x86_64".into(), "-accel".into(), "tcg".into()],
            }
        );
        for (text, want) in [
            (
                "[[device]]\nkind = \"vfio-user\"\n",
                "c.toml:2:8: device #1 (vfio-user) needs `socket`",
            ),
            (
                "[[device]]\nkind = \"vfio-user\"\nsocket = \"s\"\nconnect_timeout = 0.0\n",
                "c.toml:4:19: connect_timeout \"0\" must be seconds between 0.001 and 3600",
            ),
            (
                "[[device]]\nkind = \"vfio-user\"\nsocket = \"s\"\nstart = []\n",
                "c.toml:4:9: start must name the server program: start = [\"PROGRAM\", \"ARG\", ...]",
            ),
        ] {
            let e = ApplianceConfig::from_toml(text, "c.toml", Path::new(".")).unwrap_err();
            assert_eq!(e.to_string(), want, "{text}");
        }
        assert_eq!(
            parse_device_flag("vfio-user=/tmp/s.sock,connect_timeout=0.5").unwrap(),
            DeviceSpec::VfioUser {
                socket: "/tmp/s.sock".into(),
                connect_timeout: Some(std::time::Duration::from_millis(500)),
                start: vec![],
            }
        );
        assert!(matches!(
            parse_device_flag("vfio-user"),
            Err(ConfigProblem::VfioUserNeedsSocket)
        ));
        assert!(matches!(
            parse_device_flag("vfio-user=s,timeout=1"),
            Err(ConfigProblem::UnknownVfioUserOption(o)) if o == "timeout=1"
        ));
        assert!(matches!(
            parse_device_flag("vfio-user=s,connect_timeout=-1"),
            Err(ConfigProblem::ConnectTimeout(t)) if t == "-1"
        ));
    }

    #[test]
    fn toml_full_schema() {
        let text = r#"
listen = ["udp:0.0.0.0:7470", "eth:eth1"]
key_file = "appliance.key"

[[host]]
id = "web1"
public_key = "qbwNFB0vWMgKxHS4j6E5lhLrNI0ZMHsE1SaNjgLCZGs="
psk_file = "web1.psk"

[[device]]
kind = "nvme"
path = "disk.img"
size = "1G"
serial = "S1"

[[device]]
kind = "dma"
name = "dma-a"
buffer = "4M"
slot = 5

[[device]]
kind = "replay"
dump = "/tmp/x.lspci"
bars = { bar0 = "16K", bar2 = "1M" }

[options]
inject_loss = 1.0
dma_timeout_ms = 500
removal_grace_ms = 45000
"#;
        let c = ApplianceConfig::from_toml(text, "c.toml", Path::new("/etc/pt")).unwrap();
        assert_eq!(c.listen[1], Listen::Eth("eth1".into()));
        assert_eq!(c.hosts[0].id, HostId::new("web1").unwrap());
        assert_eq!(
            c.hosts[0].public_key.to_string(),
            "qbwNFB0vWMgKxHS4j6E5lhLrNI0ZMHsE1SaNjgLCZGs="
        );
        assert_eq!(
            c.key_file.as_deref(),
            Some(Path::new("/etc/pt/appliance.key"))
        );
        assert_eq!(
            c.hosts[0].psk_file.as_deref(),
            Some(Path::new("/etc/pt/web1.psk"))
        );
        // The PSK itself is never in the file (a secret), nor the old hex `psk`.
        let old = "[[host]]\nid = \"a\"\npsk = \"00\"\n";
        assert!(ApplianceConfig::from_toml(old, "o.toml", Path::new(".")).is_err());
        assert_eq!(
            c.devices[0].spec,
            DeviceSpec::Nvme {
                path: "/etc/pt/disk.img".into(),
                create_size: Some(1 << 30),
                serial: Some("S1".into()),
                sriov: None,
            }
        );
        assert_eq!(c.devices[1].bdf, Bdf::new(0, 5, 0));
        assert_eq!(c.devices[1].name.as_deref(), Some("dma-a"));
        assert_eq!(c.devices[0].name, None);
        assert_eq!(c.devices[2].bdf, Bdf::new(0, 2, 0));
        assert_eq!(
            c.devices[2].spec,
            DeviceSpec::Replay {
                dump: "/tmp/x.lspci".into(),
                bars: vec![(0, 16384), (2, 1 << 20)]
            }
        );
        assert_eq!(c.inject_loss, 1.0);
        assert_eq!(c.dma_timeout, Duration::from_millis(500));
        assert_eq!(c.removal_grace, Duration::from_secs(45));
    }

    #[test]
    fn device_flags() {
        assert_eq!(
            parse_device_flag("replay=card.txt,bar0=16K,bar2=0x100000").unwrap(),
            DeviceSpec::Replay {
                dump: "card.txt".into(),
                bars: vec![(0, 16384), (2, 1 << 20)]
            }
        );
        assert_eq!(
            parse_device_flag("dma").unwrap(),
            DeviceSpec::Dma {
                buffer: 1 << 20,
                vfs: 0
            }
        );
        assert_eq!(
            parse_device_flag("nvme=d.img,size=1G,vfs=2,vf_size=64M").unwrap(),
            DeviceSpec::Nvme {
                path: "d.img".into(),
                create_size: Some(1 << 30),
                serial: None,
                sriov: Some(NvmeSriov {
                    vfs: 2,
                    vf_size: Some(64 << 20)
                }),
            }
        );
        assert_eq!(
            parse_device_flag("nvme=d.img,vfs=3").unwrap().pooled_vfs(),
            3
        );
        assert!(matches!(
            parse_device_flag("nvme=d.img,vf_size=1M"),
            Err(ConfigProblem::VfSizeWithoutVfs)
        ));
        assert!(matches!(
            parse_device_flag("nvme=d.img,vfs=8"),
            Err(ConfigProblem::VfsFlag(v)) if v == "8"
        ));
        assert_eq!(
            parse_device_flag("dma,vfs=3").unwrap(),
            DeviceSpec::Dma {
                buffer: 1 << 20,
                vfs: 3
            }
        );
        assert!(matches!(
            parse_device_flag("nvme"),
            Err(ConfigProblem::NvmeNeedsPath)
        ));
        assert!(matches!(
            parse_device_flag("gpu=1"),
            Err(ConfigProblem::UnknownKind(k)) if k == "gpu"
        ));
        assert!(matches!(
            parse_device_flag("replay=x,bar7=1"),
            Err(ConfigProblem::UnknownReplayOption(_))
        ));
        assert!(matches!(
            parse_device_flag("dma,vfs=8"),
            Err(ConfigProblem::VfsFlag(_))
        ));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("0x1000").unwrap(), 4096);
        assert_eq!(parse_size("64k").unwrap(), 64 << 10);
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        assert!(matches!(
            parse_size("lots"),
            Err(ConfigProblem::InvalidSize(_))
        ));
        assert!(matches!(
            parse_size("99999999999T"),
            Err(ConfigProblem::SizeOverflow(_))
        ));
        assert!(parse_size("").is_err());
        assert!(parse_size("K").is_err());
    }

    #[test]
    fn flags_add_to_the_file_and_name_themselves_in_errors() {
        let mut c = ApplianceConfig::from_toml(
            "[[device]]\nkind = \"dma\"\nslot = 0\n",
            "f.toml",
            Path::new("."),
        )
        .unwrap();
        c.apply_flags(&ConfigFlags {
            listen: vec!["udp:127.0.0.1:0".into()],
            device: vec!["dma,buffer=64K".into()],
            key: Some("/etc/pt/appliance.key".into()),
            host: vec![format!("web1=qbwNFB0vWMgKxHS4j6E5lhLrNI0ZMHsE1SaNjgLCZGs=")],
            inject_loss: Some(2.5),
            ..ConfigFlags::default()
        })
        .unwrap();
        assert_eq!(c.devices[1].bdf, Bdf::new(0, 1, 0), "next free slot");
        assert_eq!(c.hosts.len(), 1);
        assert_eq!(c.inject_loss, 2.5);
        assert!(!c.uses_development_key());
        assert_eq!(c.accepted_host_ids(), [HostId::new("web1").unwrap()]);
        let e = c
            .apply_flags(&ConfigFlags {
                host: vec!["web2".into()],
                ..ConfigFlags::default()
            })
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "command line --host web2: want NAME=PUBLIC_KEY[,psk=FILE]"
        );
        let e = c
            .apply_flags(&ConfigFlags {
                inject_loss: Some(150.0),
                ..ConfigFlags::default()
            })
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "command line --inject-loss 150: must be 0..=100"
        );
    }

    #[test]
    fn api_table_and_flags() {
        let c = ApplianceConfig::from_toml("", "f.toml", Path::new("/etc/pt")).unwrap();
        assert_eq!(c.api, None, "no [api], no API");
        c.check_api().unwrap();

        let c = ApplianceConfig::from_toml(
            "[api]\nlisten = \"0.0.0.0:9443\"\nadmin = \"root\"\nadmin_password_file = \"admin.pw\"\n\
             tls_cert = \"/tls/c.pem\"\ntls_key = \"k.pem\"\nsession_timeout_s = 600\n\
             state = \"state/pt.redb\"\nreclaim_after_s = 600\n",
            "f.toml",
            Path::new("/etc/pt"),
        )
        .unwrap();
        let api = c.api.clone().unwrap();
        assert_eq!(api.listen, "0.0.0.0:9443".parse().unwrap());
        assert_eq!(api.admin.as_deref(), Some("root"));
        assert_eq!(
            api.admin_password_file.as_deref(),
            Some(Path::new("/etc/pt/admin.pw"))
        );
        assert_eq!(
            api.tls,
            Some(ApiTls {
                cert: "/tls/c.pem".into(),
                key: "/etc/pt/k.pem".into()
            })
        );
        assert_eq!(api.session_timeout, Some(Duration::from_secs(600)));
        assert_eq!(api.reclaim_after, Some(Duration::from_secs(600)));
        assert_eq!(
            api.state.as_deref(),
            Some(Path::new("/etc/pt/state/pt.redb"))
        );
        c.check_api().unwrap();
        // Unknown [api] keys stay errors.
        let e = ApplianceConfig::from_toml(
            "[api]
state_file = \"x\"\n",
            "f.toml",
            Path::new("."),
        )
        .unwrap_err();
        assert!(e.to_string().contains("state_file"), "{e}");
        assert!(api.device_dirs.is_empty(), "no device_dirs: none");
        c.check_api().unwrap();
        let c = ApplianceConfig::from_toml(
            "[api]\ndevice_dirs = [\"/srv/disks\", \"dumps\"]\n",
            "f.toml",
            Path::new("/etc/pt"),
        )
        .unwrap();
        assert_eq!(
            c.api.unwrap().device_dirs,
            vec![PathBuf::from("/srv/disks"), PathBuf::from("/etc/pt/dumps")]
        );

        // An empty table enables the API on loopback, but it needs an administrator.
        let mut c = ApplianceConfig::from_toml("[api]\n", "f.toml", Path::new(".")).unwrap();
        assert_eq!(
            c.api.as_ref().unwrap().listen.to_string(),
            DEFAULT_API_LISTEN
        );
        let e = c.check_api().unwrap_err();
        assert!(matches!(e.problem, ConfigProblem::ApiNoAdmin), "{e}");
        assert!(e.to_string().contains("no default password"), "{e}");
        c.apply_flags(&ConfigFlags {
            api: Some("127.0.0.1:0".into()),
            api_admin: Some("ops:/run/pw".into()),
            ..ConfigFlags::default()
        })
        .unwrap();
        let api = c.api.clone().unwrap();
        assert_eq!(api.listen.port(), 0);
        assert_eq!(api.admin.as_deref(), Some("ops"));
        assert_eq!(
            api.admin_password_file.as_deref(),
            Some(Path::new("/run/pw"))
        );
        c.check_api().unwrap();

        // --api alone enables it.
        let mut c = ApplianceConfig::default();
        c.apply_flags(&ConfigFlags {
            api: Some("[::1]:8443".into()),
            ..ConfigFlags::default()
        })
        .unwrap();
        assert!(c.api.is_some());
        assert!(c.check_api().is_err());

        for (text, want) in [
            (
                "[api]\nlisten = \"udp:1.2.3.4:5\"\n",
                "f.toml:2:10: API listen address",
            ),
            (
                "[api]\ntls_cert = \"c\"\n",
                "f.toml:1:1: [api] TLS needs both",
            ),
            (
                "[api]\nadmin = \"root\"\n",
                "f.toml:1:1: [api] needs both admin",
            ),
            (
                "[api]\nadmin = \"ro ot\"\nadmin_password_file = \"p\"\n",
                "f.toml:2:9: API administrator name",
            ),
            (
                "[api]\nsession_timeout_s = 5\n",
                "f.toml:2:21: session_timeout_s",
            ),
            (
                "[api]\nreclaim_after_s = 0\n",
                "f.toml:2:19: reclaim_after_s must be",
            ),
            (
                "[api]\npassword = \"x\"\n",
                "f.toml:2:1: unknown field `password`",
            ),
        ] {
            let e = ApplianceConfig::from_toml(text, "f.toml", Path::new(".")).unwrap_err();
            assert!(e.to_string().starts_with(want), "{text:?}: {e}");
        }
        for (flag, value, want) in [
            (
                "--api",
                "localhost",
                "command line --api localhost: API listen address",
            ),
            (
                "--api-admin",
                "root",
                "command line --api-admin root: want NAME:PASSWORD_FILE",
            ),
            (
                "--api-admin",
                "root:",
                "command line --api-admin root:: want NAME:PASSWORD_FILE",
            ),
            (
                "--api-admin",
                ":/pw",
                "command line --api-admin :/pw: API administrator name",
            ),
        ] {
            let mut flags = ConfigFlags::default();
            if flag == "--api" {
                flags.api = Some(value.into());
            } else {
                flags.api_admin = Some(value.into());
            }
            let e = ApplianceConfig::default().apply_flags(&flags).unwrap_err();
            assert!(e.to_string().starts_with(want), "{flag} {value}: {e}");
        }
    }

    #[test]
    fn defaults_fill_only_what_is_missing() {
        let mut c = ApplianceConfig::default();
        assert!(c.uses_development_key());
        assert_eq!(c.accepted_host_ids(), [HostId::new("host").unwrap()]);
        c.fill_defaults();
        assert_eq!(
            c.listen,
            vec![Listen::Udp("127.0.0.1:7470".parse().unwrap())]
        );
        assert_eq!(
            c.devices[0].spec,
            DeviceSpec::ScratchNvme {
                size: DEFAULT_SCRATCH_NVME_BYTES
            }
        );
        let mut c = ApplianceConfig {
            listen: vec![Listen::Eth("eth0".into())],
            devices: vec![DeviceConfig {
                bdf: Bdf::new(0, 3, 0),
                name: None,
                spec: DeviceSpec::Dma {
                    buffer: 4096,
                    vfs: 0,
                },
            }],
            ..ApplianceConfig::default()
        };
        let before = c.clone();
        c.fill_defaults();
        assert_eq!(c, before);
    }

    #[test]
    fn host_flags_and_identity() {
        let pk = SecretKey::generate().public_key();
        let h = parse_host_flag(&format!("web1={pk}")).unwrap();
        assert_eq!(
            (h.id, h.public_key, h.psk_file.clone()),
            (HostId::new("web1").unwrap(), pk, None)
        );
        let h2 = parse_host_flag(&format!("web2={pk},psk=/x/y")).unwrap();
        assert_eq!(h2.psk_file.as_deref(), Some(Path::new("/x/y")));
        for bad in [
            "web1",
            "web1=zz",
            &format!("{}={pk}", "x".repeat(17)),
            &format!("a={pk},hex=1"),
        ] {
            assert!(parse_host_flag(bad).is_err(), "{bad}");
        }
        let with =
            |key_file: Option<PathBuf>, hosts: Vec<HostSpec>, listen: &str| ApplianceConfig {
                listen: vec![parse_listen(listen).unwrap()],
                key_file,
                hosts,
                ..ApplianceConfig::default()
            };
        // No key, no hosts: the development pair, loopback only.
        let (k, hosts) = with(None, vec![], "udp:127.0.0.1:7470").identity().unwrap();
        assert!(k.is_development() || std::env::var_os(keys::KEY_ENV).is_some());
        assert_eq!(hosts[0].public, SecretKey::development_host().public_key());
        assert_eq!(
            with(None, vec![], "udp:127.0.0.1:7470").accepted_host_ids(),
            [HostId::new(DEVELOPMENT_HOST_NAME).unwrap()]
        );
        assert!(matches!(
            with(None, vec![], "udp:0.0.0.0:7470").identity(),
            Err(KeyError::DevelopmentKeyOffLoopback { .. })
        ));
        // A real key and real hosts: anywhere; the PSK file is read.
        let dir = tempfile::tempdir().unwrap();
        let kf = dir.path().join("appliance.key");
        SecretKey::generate().write_new(&kf).unwrap();
        let pf = dir.path().join("web1.psk");
        crate::transport::Psk::generate().write_new(&pf).unwrap();
        let hp = HostSpec {
            psk_file: Some(pf),
            ..h.clone()
        };
        let c = with(Some(kf.clone()), vec![hp], "eth:eth0");
        assert!(!c.uses_development_key());
        let (_, hosts) = c.identity().unwrap();
        assert_eq!(hosts.len(), 1);
        assert!(hosts[0].psk.is_some());
        // A missing PSK file is an error naming it.
        let missing = HostSpec {
            psk_file: Some(dir.path().join("nope.psk")),
            ..h.clone()
        };
        let e = with(Some(kf.clone()), vec![missing], "eth:eth0")
            .identity()
            .unwrap_err();
        assert!(e.to_string().contains("nope.psk"), "{e}");
        // A real key but no hosts means the development host: loopback only again.
        assert!(with(Some(kf.clone()), vec![], "eth:eth0")
            .identity()
            .is_err());
        // The same key twice is a configuration error.
        let twice = vec![
            h.clone(),
            HostSpec {
                id: HostId::new("other").unwrap(),
                ..h
            },
        ];
        assert!(matches!(
            with(Some(kf), twice, "udp:127.0.0.1:1").identity(),
            Err(KeyError::DuplicateHost(..))
        ));
    }

    proptest::proptest! {
        #[test]
        fn host_flag_parser_never_panics(t in ".{0,80}") {
            let _ = parse_host_flag(&t);
        }
    }
}
