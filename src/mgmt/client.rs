//! The client of the management API, behind `pcietun ctl`: request building, response
//! decoding, task waiting, and the ctl settings file. The CLI only parses arguments and prints
//! what this returns, so tests reach all of it without a child process.
//!
//! HTTP is `ureq` (blocking: a command-line client needs no async runtime; small; rustls for
//! `https://` with a private CA given by `--ca`).
//!
//! Every result type here is `serde::Serialize` with stable, documented keys; they are what
//! `ctl --json` prints (docs/api.md lists them):
//!
//! * [`FunctionRow`] (`ctl devices`): `id`, `device`, `function`, `kind` (`physical` |
//!   `virtual`), `physical_function`, `vendor_id`, `device_id`, `subsystem_vendor_id`,
//!   `subsystem_id`, `class_code` (hex strings), `class`, `model`, `state` (`unassigned` |
//!   `attaching` | `assigned` | `detaching` | `resetting` | `failed`), `host`, `health`.
//! * [`HostRow`] (`ctl hosts`): `id`, `session` (`connected` | `disconnected`), `rtt_us`,
//!   `functions`.
//! * [`TaskOutcome`] (`ctl assign` / `ctl unassign`): `function`, `host`, `task`, `state`
//!   (`Running` | `Completed` | `Exception`), `messages`.
//!
//! * [`DeviceTask`] (`ctl add-device` / `ctl remove-device`): `action` (`add` | `remove`),
//!   `device` (the card id; for an add, known once the task completed), `functions` (its
//!   functions), `spec`, `name`, `task`, `state`, `messages`.
//! * [`EventLine`] (`ctl events`): the Redfish Event the stream carried, as sent (one JSON
//!   object per line).
//! * [`crate::mgmt::watch::Frame`] (`ctl watch`, one per line): `interval_s`, `functions`,
//!   `hosts` (the keys of [`crate::mgmt::watch`]).
//!
//! [`ClientError::exit_code`] gives `ctl`'s exit status: 1 refused (the API's one-line
//! message), 2 usage or local configuration, 3 cannot reach the appliance.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::exposition;
use super::metrics;
use super::pool::valid_id;
use super::watch::Counters;

/// Where `ctl` talks to by default.
pub const DEFAULT_API: &str = "http://127.0.0.1:8443";

/// Largest response body the client reads.
const MAX_RESPONSE: u64 = 4 << 20;
/// Largest `/metrics` body the client reads (thousands of functions and hosts fit).
const MAX_METRICS: u64 = 16 << 20;

/// Why a `ctl` command did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No connection to the API (refused, unresolvable, timed out, TLS failure).
    #[error("cannot reach the appliance at {api}: {reason}")]
    Unreachable {
        /// The API URL.
        api: String,
        /// Why.
        reason: String,
    },
    /// The API refused the request; `message` is its one-line reason.
    #[error("{message}")]
    Refused {
        /// HTTP status (0 when refused before sending).
        status: u16,
        /// The API's `error.message`.
        message: String,
    },
    /// The task of an operation failed.
    #[error("{message}")]
    TaskFailed {
        /// The task URI.
        task: String,
        /// The failure reasons, joined.
        message: String,
    },
    /// The task did not finish in time (it may still finish).
    #[error("task {task} did not finish within {secs} s (it may still finish; see ctl task)")]
    TaskTimeout {
        /// The task URI.
        task: String,
        /// The wait.
        secs: u64,
    },
    /// The API answered something this client does not understand.
    #[error("unexpected answer from {uri}: {what}")]
    Protocol {
        /// The resource.
        uri: String,
        /// What was wrong.
        what: String,
    },
    /// The API URL is not usable.
    #[error("bad API URL {0:?} (want http://HOST:PORT or https://HOST:PORT)")]
    BadUrl(String),
    /// A local file (settings, CA, password) cannot be used.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

impl ClientError {
    /// The exit status of `pcietun ctl` for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Refused { .. }
            | ClientError::TaskFailed { .. }
            | ClientError::TaskTimeout { .. }
            | ClientError::Protocol { .. } => 1,
            ClientError::BadUrl(_) | ClientError::File { .. } => 2,
            ClientError::Unreachable { .. } => 3,
        }
    }
}

fn file_error(path: &Path, reason: impl ToString) -> ClientError {
    ClientError::File {
        path: path.into(),
        reason: reason.to_string(),
    }
}

/// The settings file of `ctl` (`~/.config/pcietun/ctl.toml`): where the API is and the
/// session token of the last `ctl login`. It holds a secret, so it is written 0600 and refused
/// when group or others can read it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CtlFile {
    /// API base URL.
    pub api: Option<String>,
    /// Session token.
    pub token: Option<String>,
    /// URI of the session the token belongs to (for `ctl logout`).
    pub session: Option<String>,
    /// CA certificate (PEM) for `https://`.
    pub ca: Option<PathBuf>,
}

impl CtlFile {
    /// The default location: `$PCIETUN_CTL_CONFIG`, else `$XDG_CONFIG_HOME/pcietun/ctl.toml`,
    /// else `$HOME/.config/pcietun/ctl.toml`.
    pub fn default_path(env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
        if let Some(p) = env("PCIETUN_CTL_CONFIG").filter(|s| !s.is_empty()) {
            return Some(p.into());
        }
        let base = env("XDG_CONFIG_HOME")
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
            .or_else(|| env("HOME").map(|h| Path::new(&h).join(".config")))?;
        Some(base.join("pcietun").join("ctl.toml"))
    }

    /// Read the file; a missing file is empty settings.
    pub fn load(path: &Path) -> Result<Self, ClientError> {
        use std::os::unix::fs::PermissionsExt;
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(CtlFile::default()),
            Err(e) => return Err(file_error(path, e)),
        };
        let text = std::fs::read_to_string(path).map_err(|e| file_error(path, e))?;
        let file: CtlFile = toml::from_str(&text).map_err(|e| file_error(path, e.message()))?;
        let mode = meta.permissions().mode() & 0o777;
        if file.token.is_some() && mode & 0o077 != 0 {
            return Err(file_error(
                path,
                format!("holds a token but is readable by group or others (mode {mode:o}); chmod 600 it"),
            ));
        }
        Ok(file)
    }

    /// Write the file atomically with mode 0600 (its directory is created 0700).
    pub fn save(&self, path: &Path) -> Result<(), ClientError> {
        use std::io::Write;
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| file_error(dir, e))?;
        let text = toml::to_string(self).map_err(|e| file_error(path, e))?;
        let tmp = path.with_extension("toml.tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| file_error(&tmp, e))?;
        f.write_all(text.as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(|e| file_error(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| file_error(path, e))
    }
}

/// Where and how to talk to the API.
#[derive(Clone, Default)]
pub struct Settings {
    /// API base URL (`http://127.0.0.1:8443`).
    pub api: String,
    /// Session token.
    pub token: Option<String>,
    /// CA certificate for `https://`.
    pub ca: Option<PathBuf>,
    /// Timeout of one HTTP request.
    pub timeout: Duration,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("api", &self.api)
            .field("token", &self.token.as_ref().map(|_| "(hidden)"))
            .field("ca", &self.ca)
            .finish()
    }
}

impl Settings {
    /// Resolve settings: a command-line value wins over the environment (`PCIETUN_API`,
    /// `PCIETUN_TOKEN`), which wins over the settings file, which wins over the default.
    pub fn resolve(
        api: Option<&str>,
        token: Option<&str>,
        ca: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
        file: &CtlFile,
    ) -> Self {
        let nonempty = |s: Option<String>| s.filter(|s| !s.is_empty());
        Settings {
            api: api
                .map(str::to_string)
                .or_else(|| nonempty(env("PCIETUN_API")))
                .or_else(|| file.api.clone())
                .unwrap_or_else(|| DEFAULT_API.to_string()),
            token: token
                .map(str::to_string)
                .or_else(|| nonempty(env("PCIETUN_TOKEN")))
                .or_else(|| file.token.clone()),
            ca: ca.map(Path::to_path_buf).or_else(|| file.ca.clone()),
            timeout: Duration::from_secs(10),
        }
    }
}

/// One function of the inventory (`ctl devices`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionRow {
    /// Stable function id.
    pub id: String,
    /// Card id.
    pub device: String,
    /// Function number.
    pub function: u64,
    /// `physical` or `virtual`.
    pub kind: String,
    /// For a VF, its PF's id.
    pub physical_function: Option<String>,
    /// PCI vendor id, `0x1b36`.
    pub vendor_id: String,
    /// PCI device id.
    pub device_id: String,
    /// PCI subsystem vendor id.
    pub subsystem_vendor_id: String,
    /// PCI subsystem id.
    pub subsystem_id: String,
    /// Class code, `0x010802`.
    pub class_code: String,
    /// Redfish DeviceClass, `MassStorageController`.
    pub class: String,
    /// The card's model.
    pub model: String,
    /// Pool state.
    pub state: String,
    /// Owner (or host being attached to / detached from).
    pub host: Option<String>,
    /// `OK`, `Warning` or `Critical`.
    pub health: String,
}

/// One host (`ctl hosts`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRow {
    /// Host id.
    pub id: String,
    /// `connected` or `disconnected`.
    pub session: String,
    /// Session RTT in microseconds.
    pub rtt_us: Option<u64>,
    /// Functions the host has or is getting.
    pub functions: Vec<String>,
}

/// The caps and priority of a function (`ctl policy`); `None` is no cap.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRow {
    /// Function id.
    pub function: String,
    /// Data bytes per second function → host.
    pub max_bytes_per_sec_up: Option<u64>,
    /// Data bytes per second host → function.
    pub max_bytes_per_sec_down: Option<u64>,
    /// Non-posted requests per second the function issues.
    pub max_iops: Option<u64>,
    /// Its weight on a saturated link (1..=100; `None` only from a service that has none).
    pub priority: Option<u64>,
}

/// A change of caps: `None` leaves a cap, `Some(None)` lifts it, `Some(Some(v))` sets it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PolicyChange {
    /// Data bytes per second function → host.
    pub max_bytes_per_sec_up: Option<Option<u64>>,
    /// Data bytes per second host → function.
    pub max_bytes_per_sec_down: Option<Option<u64>>,
    /// Non-posted requests per second.
    pub max_iops: Option<Option<u64>>,
    /// The priority: `Some(None)` is back to the default.
    pub priority: Option<Option<u64>>,
}

impl PolicyChange {
    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        *self == PolicyChange::default()
    }
}

/// The caps a Connection shows.
fn policy_row(function: &str, conn: &Value, uri: &str) -> Result<PolicyRow, ClientError> {
    let p = conn
        .pointer("/Oem/Pcietun/Policy")
        .ok_or_else(|| ClientError::Protocol {
            uri: uri.into(),
            what: "no Oem.Pcietun.Policy".into(),
        })?;
    let cap = |k: &str| p.get(k).and_then(Value::as_u64);
    Ok(PolicyRow {
        function: function.to_string(),
        max_bytes_per_sec_up: cap("MaxBytesPerSecondUp"),
        max_bytes_per_sec_down: cap("MaxBytesPerSecondDown"),
        max_iops: cap("MaxIOPS"),
        priority: cap("Priority"),
    })
}

/// The rules of the appliance and what they are doing (`ctl rules`; docs/api.md "Rules").
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RulesRow {
    /// Seconds a host's session may be lost before its functions return to the pool; `None`
    /// for never.
    pub reclaim_after_s: Option<u64>,
    /// Functions of lost hosts not returned yet.
    pub pending: Vec<PendingRow>,
    /// Assignments that have a lease.
    pub leases: Vec<LeaseRow>,
}

/// A function of a lost host that the lost-session rule has not taken yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingRow {
    /// The function.
    pub function: String,
    /// Its owner, whose session is lost.
    pub host: String,
    /// When the session was lost (RFC 3339, UTC).
    pub lost_since: String,
    /// When the rule takes the function unless the host comes back (`None`: no rule).
    pub reclaim_at: Option<String>,
}

/// An assignment's lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRow {
    /// The function.
    pub function: String,
    /// The host holding it.
    pub host: String,
    /// The hold time granted, in seconds.
    pub seconds: u64,
    /// When it ends (RFC 3339, UTC).
    pub expires_at: String,
}

/// A schedule (`ctl schedule`; docs/api.md "Schedules").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleRow {
    /// Its id.
    pub id: String,
    /// The function.
    pub function: String,
    /// Its host during the window.
    pub host: String,
    /// Window start, `HH:MM` UTC.
    pub start: String,
    /// Window end, `HH:MM` UTC.
    pub end: String,
    /// Its host outside the window (`None`: the pool).
    pub then: Option<String>,
    /// Whether the window is open now.
    pub active: bool,
}

/// The schedules the Fabric shows (`Oem.Pcietun.Schedules`).
fn schedule_rows(fabric: &Value) -> Vec<ScheduleRow> {
    let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    fabric
        .pointer("/Oem/Pcietun/Schedules")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|x| ScheduleRow {
                    id: s(x, "Id"),
                    function: s(x, "Function"),
                    host: s(x, "Host"),
                    start: s(x, "Start"),
                    end: s(x, "End"),
                    then: x.get("Then").and_then(Value::as_str).map(str::to_string),
                    active: x.get("Active").and_then(Value::as_bool).unwrap_or(false),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The rules the Fabric shows (`Oem.Pcietun`).
fn rules_row(fabric: &Value, uri: &str) -> Result<RulesRow, ClientError> {
    let oem = fabric
        .pointer("/Oem/Pcietun")
        .ok_or_else(|| ClientError::Protocol {
            uri: uri.into(),
            what: "no Oem.Pcietun rules on the Fabric".into(),
        })?;
    let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let list = |k: &str| {
        oem.get(k)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    Ok(RulesRow {
        reclaim_after_s: oem
            .pointer("/Rules/ReclaimAfterSeconds")
            .and_then(Value::as_u64),
        pending: list("PendingReclaims")
            .iter()
            .map(|p| PendingRow {
                function: s(p, "Function"),
                host: s(p, "Host"),
                lost_since: s(p, "LostSince"),
                reclaim_at: p
                    .get("ReclaimAt")
                    .and_then(Value::as_str)
                    .map(str::to_string),
            })
            .collect(),
        leases: list("Leases")
            .iter()
            .map(|l| LeaseRow {
                function: s(l, "Function"),
                host: s(l, "Host"),
                seconds: l.get("Seconds").and_then(Value::as_u64).unwrap_or(0),
                expires_at: s(l, "ExpiresAt"),
            })
            .collect(),
    })
}

/// The URI of the fabric whose `Oem.Pcietun` holds the rules.
const FABRIC: &str = "/redfish/v1/Fabrics/PCIe";

/// The result of `ctl assign` / `ctl unassign`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskOutcome {
    /// The function.
    pub function: String,
    /// The host.
    pub host: Option<String>,
    /// The task URI.
    pub task: String,
    /// `Running`, `Completed` or `Exception`.
    pub state: String,
    /// The task's messages (failure reasons).
    pub messages: Vec<String>,
}

/// The result of `ctl add-device` / `ctl remove-device`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceTask {
    /// `add` or `remove`.
    pub action: String,
    /// The card (PCIeDevice) id; for an add, `None` until the task completed.
    pub device: Option<String>,
    /// Its functions' ids (for an add, once the task completed).
    pub functions: Vec<String>,
    /// The spec of an add.
    pub spec: Option<String>,
    /// The name asked for in an add.
    pub name: Option<String>,
    /// The task URI.
    pub task: String,
    /// `Running`, `Completed` or `Exception`.
    pub state: String,
    /// The task's messages (failure reasons).
    pub messages: Vec<String>,
}

/// An SR-IOV physical function's VF count (`ctl vfs`), with the task that changed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VfCount {
    /// The physical function.
    pub function: String,
    /// VFs enabled and pooled.
    pub num_vfs: u64,
    /// The most it can have.
    pub total_vfs: u64,
    /// The ids of its VFs.
    pub vfs: Vec<String>,
    /// The task of a change (`None`: only shown).
    pub task: Option<String>,
    /// That task's state (`Running`, `Completed`, ...).
    pub state: Option<String>,
}

/// One event of the stream (`ctl events`): the `data:` JSON of one SSE frame.
pub type EventLine = Value;

/// A logged-in session (`ctl login`).
#[derive(Debug, Clone)]
pub struct Login {
    /// The session token (a secret).
    pub token: String,
    /// The session's URI (DELETE it to log out).
    pub session: String,
}

/// The API client.
pub struct Client {
    agent: ureq::Agent,
    api: String,
    token: Option<String>,
    /// The TLS settings, for the event stream's own connection.
    tls: ureq::tls::TlsConfig,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("api", &self.api)
            .finish_non_exhaustive()
    }
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

fn members(v: &Value) -> Vec<String> {
    v.get("Members")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|m| str_at(m, "/@odata.id").map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

impl Client {
    /// A client for `settings`.
    pub fn new(settings: &Settings) -> Result<Self, ClientError> {
        let api = settings.api.trim_end_matches('/').to_string();
        let rest = api
            .strip_prefix("http://")
            .or_else(|| api.strip_prefix("https://"))
            .ok_or_else(|| ClientError::BadUrl(settings.api.clone()))?;
        if rest.is_empty() || rest.contains('/') {
            return Err(ClientError::BadUrl(settings.api.clone()));
        }
        let mut tls = ureq::tls::TlsConfig::builder();
        if let Some(ca) = &settings.ca {
            let pem = std::fs::read(ca).map_err(|e| file_error(ca, e))?;
            let certs: Vec<_> = ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect();
            if certs.is_empty() {
                return Err(file_error(ca, "no PEM certificate in the file"));
            }
            tls = tls.root_certs(ureq::tls::RootCerts::Specific(Arc::new(certs)));
        }
        let tls = tls.build();
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_global(Some(settings.timeout))
            .tls_config(tls.clone())
            .user_agent(concat!("pcietun-ctl/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Ok(Client {
            agent,
            api,
            token: settings.token.clone(),
            tls,
        })
    }

    /// The API base URL.
    pub fn api(&self) -> &str {
        &self.api
    }

    fn unreachable(&self, e: ureq::Error) -> ClientError {
        match e {
            ureq::Error::BadUri(_) => ClientError::BadUrl(self.api.clone()),
            other => ClientError::Unreachable {
                api: self.api.clone(),
                reason: other.to_string(),
            },
        }
    }

    /// Send one request and read its body (at most `limit` bytes); returns (status, Location,
    /// X-Auth-Token, body).
    fn send(
        &self,
        method: &str,
        uri: &str,
        accept: &str,
        body: Option<&Value>,
        limit: u64,
    ) -> Result<(u16, Option<String>, Option<String>, String), ClientError> {
        let url = format!("{}{uri}", self.api);
        let mut builder = ureq::http::Request::builder()
            .method(method)
            .uri(&url)
            .header("Accept", accept)
            .header("OData-Version", "4.0");
        if let Some(t) = &self.token {
            builder = builder.header("X-Auth-Token", t);
        }
        let data = match body {
            Some(b) => {
                builder = builder.header("Content-Type", "application/json");
                serde_json::to_vec(b).unwrap_or_default()
            }
            None => Vec::new(),
        };
        let req = builder
            .body(data)
            .map_err(|_| ClientError::BadUrl(self.api.clone()))?;
        let mut resp = self.agent.run(req).map_err(|e| self.unreachable(e))?;
        let status = resp.status().as_u16();
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let (location, token) = (header("Location"), header("X-Auth-Token"));
        let text = resp
            .body_mut()
            .with_config()
            .limit(limit)
            .read_to_string()
            .map_err(|e| self.unreachable(e))?;
        Ok((status, location, token, text))
    }

    /// The error of a response that is not a success: the API's one-line `error.message`.
    fn refusal(status: u16, uri: &str, body: &Value) -> ClientError {
        let message = str_at(body, "/error/message")
            .map(|m| m.lines().next().unwrap_or("").to_string())
            .unwrap_or_else(|| format!("HTTP {status} from {uri}"));
        ClientError::Refused { status, message }
    }

    /// Send one request; returns (status, Location, JSON body).
    fn request(
        &self,
        method: &str,
        uri: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Option<String>, Value), ClientError> {
        let (status, location, token, text) =
            self.send(method, uri, "application/json", body, MAX_RESPONSE)?;
        let mut value: Value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).map_err(|e| ClientError::Protocol {
                uri: uri.into(),
                what: format!("not JSON ({e})"),
            })?
        };
        if !(200..300).contains(&status) {
            return Err(Self::refusal(status, uri, &value));
        }
        if let (Some(t), Value::Object(o)) = (token, &mut value) {
            o.insert("X-Auth-Token".into(), Value::String(t));
        }
        Ok((status, location, value))
    }

    /// One scrape of the appliance's `/metrics` (the Prometheus text format), reduced to what
    /// `ctl watch` shows ([`crate::mgmt::watch`]). A body that is not the format is a
    /// [`ClientError::Protocol`] naming the line.
    pub fn scrape(&self) -> Result<Counters, ClientError> {
        let uri = "/metrics";
        let (status, _, _, text) =
            self.send("GET", uri, metrics::PROMETHEUS_TEXT, None, MAX_METRICS)?;
        if !(200..300).contains(&status) {
            let body = serde_json::from_str(&text).unwrap_or(Value::Null);
            return Err(Self::refusal(status, uri, &body));
        }
        let samples = exposition::parse(&text).map_err(|e| ClientError::Protocol {
            uri: uri.into(),
            what: format!("not the Prometheus text format ({e})"),
        })?;
        Ok(Counters::from_samples(&samples))
    }

    /// GET a resource.
    pub fn get(&self, uri: &str) -> Result<Value, ClientError> {
        self.request("GET", uri, None).map(|(_, _, v)| v)
    }

    /// Log in; the token is returned, not stored (see [`CtlFile::save`]).
    pub fn login(&self, user: &str, password: &str) -> Result<Login, ClientError> {
        let body = json!({ "UserName": user, "Password": password });
        let uri = "/redfish/v1/SessionService/Sessions";
        let (_, location, v) = self.request("POST", uri, Some(&body))?;
        let token = str_at(&v, "/X-Auth-Token").ok_or_else(|| ClientError::Protocol {
            uri: uri.into(),
            what: "no X-Auth-Token header".into(),
        })?;
        let session = location
            .or_else(|| str_at(&v, "/@odata.id").map(str::to_string))
            .ok_or_else(|| ClientError::Protocol {
                uri: uri.into(),
                what: "no Location header".into(),
            })?;
        Ok(Login {
            token: token.to_string(),
            session,
        })
    }

    /// End a session (the one `ctl login` stored).
    pub fn logout(&self, session: &str) -> Result<(), ClientError> {
        self.request("DELETE", session, None).map(|_| ())
    }

    /// The inventory: every function of every card.
    pub fn devices(&self) -> Result<Vec<FunctionRow>, ClientError> {
        let mut rows = Vec::new();
        for chassis in members(&self.get("/redfish/v1/Chassis")?) {
            let c = self.get(&chassis)?;
            let Some(devs) = str_at(&c, "/PCIeDevices/@odata.id") else {
                continue;
            };
            for dev_uri in members(&self.get(devs)?) {
                let dev = self.get(&dev_uri)?;
                let model = str_at(&dev, "/Model").unwrap_or("").to_string();
                let device = str_at(&dev, "/Id").unwrap_or("").to_string();
                let Some(fns) = str_at(&dev, "/PCIeFunctions/@odata.id") else {
                    continue;
                };
                for fn_uri in members(&self.get(fns)?) {
                    let f = self.get(&fn_uri)?;
                    rows.push(function_row(&f, &device, &model, &fn_uri)?);
                }
            }
        }
        Ok(rows)
    }

    /// The hosts.
    pub fn hosts(&self) -> Result<Vec<HostRow>, ClientError> {
        let mut rows = Vec::new();
        for uri in members(&self.get("/redfish/v1/Systems")?) {
            let h = self.get(&uri)?;
            let oem = h.pointer("/Oem/Pcietun").cloned().unwrap_or(Value::Null);
            rows.push(HostRow {
                id: str_at(&h, "/Id")
                    .ok_or_else(|| ClientError::Protocol {
                        uri: uri.clone(),
                        what: "no Id".into(),
                    })?
                    .to_string(),
                session: str_at(&oem, "/Session").unwrap_or("unknown").to_string(),
                rtt_us: oem.get("RttMicroseconds").and_then(Value::as_u64),
                functions: oem
                    .get("Functions")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(|s| s.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default(),
            });
        }
        Ok(rows)
    }

    fn check_id(kind: &str, id: &str) -> Result<(), ClientError> {
        if valid_id(id) {
            Ok(())
        } else {
            Err(ClientError::Refused {
                status: 0,
                message: format!("unknown {kind} {id:?} (ids are A-Z a-z 0-9 . _ -)"),
            })
        }
    }

    /// Start assigning `function` to `host` (`#Zone.AddEndpoint`); returns the task.
    pub fn assign(&self, function: &str, host: &str) -> Result<TaskOutcome, ClientError> {
        self.assign_to_vm(function, host, None)
    }

    /// [`assign`](Self::assign), naming the VM on the host that is to take the function
    /// (`Oem.Pcietun.Vm.Name` of `#Zone.AddEndpoint`).
    pub fn assign_to_vm(
        &self,
        function: &str,
        host: &str,
        vm: Option<&str>,
    ) -> Result<TaskOutcome, ClientError> {
        self.assign_leased(function, host, vm, None)
    }

    /// [`assign_to_vm`](Self::assign_to_vm) with a maximum hold time: at its end the appliance
    /// returns the function to the pool (`Oem.Pcietun.LeaseSeconds`, whole seconds).
    pub fn assign_leased(
        &self,
        function: &str,
        host: &str,
        vm: Option<&str>,
        lease: Option<Duration>,
    ) -> Result<TaskOutcome, ClientError> {
        Self::check_id("function", function)?;
        Self::check_id("host", host)?;
        if let Some(v) = vm {
            Self::check_id("VM", v)?;
        }
        let uri = format!("/redfish/v1/Fabrics/PCIe/Zones/{host}/Actions/Zone.AddEndpoint");
        let mut body = json!({ "Endpoint": { "@odata.id": format!("/redfish/v1/Fabrics/PCIe/Endpoints/fn-{function}") } });
        let mut oem = serde_json::Map::new();
        if let Some(v) = vm {
            oem.insert("Vm".into(), json!({ "Name": v }));
        }
        if let Some(l) = lease {
            oem.insert("LeaseSeconds".into(), json!(l.as_secs()));
        }
        if !oem.is_empty() {
            body["Oem"] = json!({ "Pcietun": oem });
        }
        let (_, location, task) = self.request("POST", &uri, Some(&body))?;
        self.outcome(function, Some(host), location, &task, &uri)
    }

    /// Start unassigning `function` (DELETE of its Connection); returns the task.
    pub fn unassign(&self, function: &str) -> Result<TaskOutcome, ClientError> {
        Self::check_id("function", function)?;
        let uri = format!("/redfish/v1/Fabrics/PCIe/Connections/{function}");
        let conn = self.get(&uri)?;
        let host = str_at(&conn, "/Oem/Pcietun/Host").map(str::to_string);
        let (_, location, task) = self.request("DELETE", &uri, None)?;
        self.outcome(function, host.as_deref(), location, &task, &uri)
    }

    /// The caps of assigned `function` (`Oem.Pcietun.Policy` of its Connection).
    pub fn policy(&self, function: &str) -> Result<PolicyRow, ClientError> {
        Self::check_id("function", function)?;
        let uri = format!("/redfish/v1/Fabrics/PCIe/Connections/{function}");
        let conn = self.get(&uri)?;
        policy_row(function, &conn, &uri)
    }

    /// Change the caps of assigned `function`: each `Some(Some(v))` sets a cap (or the
    /// priority), `Some(None)` lifts it (the default priority), `None` leaves it (a PATCH of
    /// `Oem.Pcietun.Policy`); returns the policy now.
    pub fn set_policy(
        &self,
        function: &str,
        change: &PolicyChange,
    ) -> Result<PolicyRow, ClientError> {
        Self::check_id("function", function)?;
        let uri = format!("/redfish/v1/Fabrics/PCIe/Connections/{function}");
        let mut policy = serde_json::Map::new();
        for (key, v) in [
            ("MaxBytesPerSecondUp", change.max_bytes_per_sec_up),
            ("MaxBytesPerSecondDown", change.max_bytes_per_sec_down),
            ("MaxIOPS", change.max_iops),
            ("Priority", change.priority),
        ] {
            if let Some(v) = v {
                policy.insert(key.into(), v.map_or(Value::Null, Value::from));
            }
        }
        let body = json!({ "Oem": { "Pcietun": { "Policy": policy } } });
        let (_, _, conn) = self.request("PATCH", &uri, Some(&body))?;
        policy_row(function, &conn, &uri)
    }

    /// The rules and what they are doing (`Oem.Pcietun` of the Fabric).
    pub fn rules(&self) -> Result<RulesRow, ClientError> {
        let fabric = self.get(FABRIC)?;
        rules_row(&fabric, FABRIC)
    }

    /// Change the lost-session rule (`Some(None)`: never reclaim; a PATCH of the Fabric's
    /// `Oem.Pcietun.Rules`, Administrator); returns the rules now.
    pub fn set_rules(&self, reclaim_after_s: Option<Option<u64>>) -> Result<RulesRow, ClientError> {
        let mut rules = serde_json::Map::new();
        if let Some(v) = reclaim_after_s {
            rules.insert(
                "ReclaimAfterSeconds".into(),
                v.map_or(Value::Null, Value::from),
            );
        }
        let body = json!({ "Oem": { "Pcietun": { "Rules": rules } } });
        let (_, _, fabric) = self.request("PATCH", FABRIC, Some(&body))?;
        rules_row(&fabric, FABRIC)
    }

    /// Every schedule (`Oem.Pcietun.Schedules` of the Fabric).
    pub fn schedules(&self) -> Result<Vec<ScheduleRow>, ClientError> {
        Ok(schedule_rows(&self.get(FABRIC)?))
    }

    /// Add a schedule (`#Pcietun.AddSchedule`, Operator): `function` to `host` from `start`
    /// to `end` (`HH:MM` UTC, daily), to `then` (or the pool) outside; the schedules now.
    pub fn add_schedule(
        &self,
        function: &str,
        host: &str,
        (start, end): (&str, &str),
        then: Option<&str>,
    ) -> Result<Vec<ScheduleRow>, ClientError> {
        Self::check_id("function", function)?;
        Self::check_id("host", host)?;
        if let Some(t) = then {
            Self::check_id("host", t)?;
        }
        let body = json!({
            "Function": function, "Host": host, "Start": start, "End": end, "Then": then,
        });
        let uri = format!("{FABRIC}/Actions/Oem/Pcietun.AddSchedule");
        let (_, _, fabric) = self.request("POST", &uri, Some(&body))?;
        Ok(schedule_rows(&fabric))
    }

    /// Remove schedule `id` (`#Pcietun.RemoveSchedule`); the schedules now.
    pub fn remove_schedule(&self, id: &str) -> Result<Vec<ScheduleRow>, ClientError> {
        let uri = format!("{FABRIC}/Actions/Oem/Pcietun.RemoveSchedule");
        let (_, _, fabric) = self.request("POST", &uri, Some(&json!({ "Id": id })))?;
        Ok(schedule_rows(&fabric))
    }

    /// The URI of the appliance's Chassis (the first, and only, member of the collection).
    fn chassis(&self) -> Result<String, ClientError> {
        members(&self.get("/redfish/v1/Chassis")?)
            .into_iter()
            .next()
            .ok_or_else(|| ClientError::Protocol {
                uri: "/redfish/v1/Chassis".into(),
                what: "no Chassis".into(),
            })
    }

    /// Start adding a card (`spec`: the appliance's `--device` grammar) with `name` as its
    /// function 0's id; returns the task (the Chassis' `#Pcietun.AddDevice` action).
    pub fn add_device(&self, spec: &str, name: Option<&str>) -> Result<DeviceTask, ClientError> {
        if let Some(n) = name {
            if !valid_id(n) {
                return Err(ClientError::Refused {
                    status: 0,
                    message: format!("bad name {n:?} (ids are A-Z a-z 0-9 . _ -)"),
                });
            }
        }
        let chassis = self.chassis()?;
        let uri = action_target(&self.get(&chassis)?, "#Pcietun.AddDevice", &chassis)?;
        let mut body = json!({ "Spec": spec });
        if let Some(n) = name {
            body["Name"] = json!(n);
        }
        let (_, location, task) = self.request("POST", &uri, Some(&body))?;
        let mut t = DeviceTask {
            action: "add".into(),
            device: None,
            functions: Vec::new(),
            spec: Some(spec.into()),
            name: name.map(str::to_string),
            task: task_location(location, &task, &uri)?,
            state: String::new(),
            messages: Vec::new(),
        };
        t.update(&task);
        Ok(t)
    }

    /// Start removing the card of `function` (a function id, or a card id as `ctl devices`
    /// shows them); returns the task. A virtual function is refused
    /// here: it goes with its physical function. (The card's `#Pcietun.RemoveDevice` action.)
    pub fn remove_device(&self, function: &str) -> Result<DeviceTask, ClientError> {
        Self::check_id("function", function)?;
        let rows = self.devices()?;
        let row = rows
            .iter()
            .find(|r| r.id == function)
            .or_else(|| rows.iter().find(|r| r.device == function))
            .ok_or_else(|| ClientError::Refused {
                status: 404,
                message: format!("unknown function {function:?}"),
            })?;
        if row.kind == "virtual" {
            return Err(ClientError::Refused {
                status: 0,
                message: format!(
                    "function {function:?} is a virtual function: remove its physical function {:?}",
                    row.physical_function.as_deref().unwrap_or("?")
                ),
            });
        }
        let device = row.device.clone();
        let functions = rows
            .iter()
            .filter(|r| r.device == device)
            .map(|r| r.id.clone())
            .collect();
        let dev_uri = format!("{}/PCIeDevices/{device}", self.chassis()?);
        let uri = action_target(&self.get(&dev_uri)?, "#Pcietun.RemoveDevice", &dev_uri)?;
        let (_, location, task) = self.request("POST", &uri, Some(&json!({})))?;
        let mut t = DeviceTask {
            action: "remove".into(),
            device: Some(device),
            functions,
            spec: None,
            name: None,
            task: task_location(location, &task, &uri)?,
            state: String::new(),
            messages: Vec::new(),
        };
        t.update(&task);
        Ok(t)
    }

    /// The SR-IOV VF count of the physical function `function` (`Oem.Pcietun.NumVFs`,
    /// `TotalVFs`) and the ids of its VFs.
    pub fn vf_count(&self, function: &str) -> Result<VfCount, ClientError> {
        Self::check_id("function", function)?;
        let (_, f) = self.function_resource(function)?;
        let num = f.pointer("/Oem/Pcietun/NumVFs").and_then(Value::as_u64);
        let total = f.pointer("/Oem/Pcietun/TotalVFs").and_then(Value::as_u64);
        let (Some(num_vfs), Some(total_vfs)) = (num, total) else {
            return Err(ClientError::Refused {
                status: 0,
                message: format!("function {function:?} is not an SR-IOV physical function"),
            });
        };
        let vfs = self
            .devices()?
            .into_iter()
            .filter(|r| r.physical_function.as_deref() == Some(function))
            .map(|r| r.id)
            .collect();
        Ok(VfCount {
            function: function.into(),
            num_vfs,
            total_vfs,
            vfs,
            task: None,
            state: None,
        })
    }

    /// Start changing the VF count of the physical function `function` to `n`
    /// (`#Pcietun.SetVfCount`, Administrator); with `wait`, poll its task until it finishes
    /// (a failed task is an error) and return the new count.
    pub fn set_vf_count(
        &self,
        function: &str,
        n: u16,
        wait: Option<Duration>,
    ) -> Result<VfCount, ClientError> {
        Self::check_id("function", function)?;
        let (uri, f) = self.function_resource(function)?;
        let target =
            action_target(&f, "#Pcietun.SetVfCount", &uri).map_err(|_| ClientError::Refused {
                status: 0,
                message: format!("function {function:?} is not an SR-IOV physical function"),
            })?;
        let (_, location, task) = self.request("POST", &target, Some(&json!({ "NumVFs": n })))?;
        let mut t = DeviceTask {
            action: "vfs".into(),
            device: None,
            functions: Vec::new(),
            spec: None,
            name: None,
            task: task_location(location, &task, &target)?,
            state: String::new(),
            messages: Vec::new(),
        };
        t.update(&task);
        let t = match wait {
            Some(timeout) => self.wait_device(t, timeout)?,
            None => t,
        };
        let mut out = if t.state == "Completed" {
            self.vf_count(function)?
        } else {
            VfCount {
                function: function.into(),
                num_vfs: f
                    .pointer("/Oem/Pcietun/NumVFs")
                    .and_then(Value::as_u64)
                    .unwrap_or(0),
                total_vfs: f
                    .pointer("/Oem/Pcietun/TotalVFs")
                    .and_then(Value::as_u64)
                    .unwrap_or(0),
                vfs: Vec::new(),
                task: None,
                state: None,
            }
        };
        out.task = Some(t.task);
        out.state = Some(t.state);
        Ok(out)
    }

    /// The URI and body of the PCIeFunction `function`.
    fn function_resource(&self, function: &str) -> Result<(String, Value), ClientError> {
        let rows = self.devices()?;
        let row = rows
            .iter()
            .find(|r| r.id == function)
            .ok_or_else(|| ClientError::Refused {
                status: 404,
                message: format!("unknown function {function:?}"),
            })?;
        let uri = format!(
            "{}/PCIeDevices/{}/PCIeFunctions/{}",
            self.chassis()?,
            row.device,
            row.id
        );
        let f = self.get(&uri)?;
        Ok((uri, f))
    }

    /// Poll the task of an add or remove until it finishes or `timeout` passes; a failed task
    /// is an error. A completed add learns its card from the task.
    pub fn wait_device(
        &self,
        mut t: DeviceTask,
        timeout: Duration,
    ) -> Result<DeviceTask, ClientError> {
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_millis(20);
        loop {
            match t.state.as_str() {
                "Completed" => return Ok(t),
                "Exception" | "Killed" | "Cancelled" => {
                    return Err(ClientError::TaskFailed {
                        message: if t.messages.is_empty() {
                            format!("task {} ended in {}", t.task, t.state)
                        } else {
                            t.messages.join("; ")
                        },
                        task: t.task,
                    })
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err(ClientError::TaskTimeout {
                    task: t.task,
                    secs: timeout.as_secs(),
                });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(250));
            let v = self.get(&t.task)?;
            t.update(&v);
        }
    }

    /// Follow the event stream: call `each` with every event (the JSON of one SSE `data:`
    /// line) until the server ends the stream (`Ok`), or `each` returns false. Keep-alive
    /// comments are skipped; the connection has no overall timeout.
    pub fn events(&self, mut each: impl FnMut(EventLine) -> bool) -> Result<(), ClientError> {
        use std::io::BufRead;
        let uri = "/redfish/v1/EventService/SSE";
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_connect(Some(Duration::from_secs(10)))
            .tls_config(self.tls.clone())
            .user_agent(concat!("pcietun-ctl/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        let mut builder = ureq::http::Request::builder()
            .method("GET")
            .uri(format!("{}{uri}", self.api))
            .header("Accept", "text/event-stream");
        if let Some(t) = &self.token {
            builder = builder.header("X-Auth-Token", t);
        }
        let req = builder
            .body(())
            .map_err(|_| ClientError::BadUrl(self.api.clone()))?;
        let resp = agent.run(req).map_err(|e| self.unreachable(e))?;
        let status = resp.status().as_u16();
        if !(200..300).contains(&status) {
            let text = resp
                .into_body()
                .with_config()
                .limit(MAX_RESPONSE)
                .read_to_string()
                .unwrap_or_default();
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| str_at(&v, "/error/message").map(str::to_string))
                .map(|m| m.lines().next().unwrap_or("").to_string())
                .unwrap_or_else(|| format!("HTTP {status} from {uri}"));
            return Err(ClientError::Refused { status, message });
        }
        let reader = std::io::BufReader::new(resp.into_body().into_reader());
        // One event is one `data:` line here (the service never splits its JSON); a line is
        // bounded so a hostile server cannot make it grow without end.
        for line in reader.split(b'\n') {
            let line = line.map_err(|e| ClientError::Unreachable {
                api: self.api.clone(),
                reason: format!("the event stream broke: {e}"),
            })?;
            if line.len() > MAX_EVENT_LINE {
                return Err(ClientError::Protocol {
                    uri: uri.into(),
                    what: format!("an event line over {MAX_EVENT_LINE} bytes"),
                });
            }
            let Some(data) = line.strip_prefix(b"data:") else {
                continue;
            };
            let event: Value =
                serde_json::from_slice(data.trim_ascii()).map_err(|e| ClientError::Protocol {
                    uri: uri.into(),
                    what: format!("an event that is not JSON ({e})"),
                })?;
            if !each(event) {
                return Ok(());
            }
        }
        Ok(())
    }

    fn outcome(
        &self,
        function: &str,
        host: Option<&str>,
        location: Option<String>,
        task: &Value,
        uri: &str,
    ) -> Result<TaskOutcome, ClientError> {
        let task_uri = location
            .or_else(|| str_at(task, "/@odata.id").map(str::to_string))
            .ok_or_else(|| ClientError::Protocol {
                uri: uri.into(),
                what: "202 without a task Location".into(),
            })?;
        Ok(TaskOutcome {
            function: function.into(),
            host: host.map(str::to_string),
            state: str_at(task, "/TaskState").unwrap_or("Running").to_string(),
            messages: task_messages(task),
            task: task_uri,
        })
    }

    /// Poll a task until it finishes or `timeout` passes; a failed task is an error.
    pub fn wait(
        &self,
        mut outcome: TaskOutcome,
        timeout: Duration,
    ) -> Result<TaskOutcome, ClientError> {
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_millis(20);
        loop {
            match outcome.state.as_str() {
                "Completed" => return Ok(outcome),
                "Exception" | "Killed" | "Cancelled" => {
                    return Err(ClientError::TaskFailed {
                        message: if outcome.messages.is_empty() {
                            format!("task {} ended in {}", outcome.task, outcome.state)
                        } else {
                            outcome.messages.join("; ")
                        },
                        task: outcome.task,
                    })
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err(ClientError::TaskTimeout {
                    task: outcome.task,
                    secs: timeout.as_secs(),
                });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(250));
            let t = self.get(&outcome.task)?;
            outcome.state = str_at(&t, "/TaskState").unwrap_or("Running").to_string();
            outcome.messages = task_messages(&t);
        }
    }
}

/// Longest SSE line `ctl events` accepts.
const MAX_EVENT_LINE: usize = 1 << 20;

/// The `target` of OEM action `name` of `resource` (at `uri`).
fn action_target(resource: &Value, name: &str, uri: &str) -> Result<String, ClientError> {
    resource
        .pointer("/Actions/Oem")
        .and_then(|a| a.get(name))
        .and_then(|a| a.get("target"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| ClientError::Protocol {
            uri: uri.into(),
            what: format!("no {name} action (an appliance without adding and removing cards?)"),
        })
}

fn task_location(location: Option<String>, task: &Value, uri: &str) -> Result<String, ClientError> {
    location
        .or_else(|| str_at(task, "/@odata.id").map(str::to_string))
        .ok_or_else(|| ClientError::Protocol {
            uri: uri.into(),
            what: "202 without a task Location".into(),
        })
}

impl DeviceTask {
    /// Take the state, messages and (for an add) the created card from a Task resource.
    fn update(&mut self, task: &Value) {
        self.state = str_at(task, "/TaskState").unwrap_or("Running").to_string();
        self.messages = task_messages(task);
        if self.action == "add" {
            if let Some(dev) = str_at(task, "/Oem/Pcietun/Device/@odata.id") {
                self.device = dev.rsplit('/').next().map(str::to_string);
            }
            if let Some(fns) = task
                .pointer("/Oem/Pcietun/Functions")
                .and_then(Value::as_array)
            {
                self.functions = fns
                    .iter()
                    .filter_map(|f| f.as_str().map(str::to_string))
                    .collect();
            }
        }
    }
}

fn task_messages(task: &Value) -> Vec<String> {
    if str_at(task, "/TaskState") == Some("Completed") {
        return Vec::new();
    }
    task.get("Messages")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|m| str_at(m, "/Resolution").or_else(|| str_at(m, "/Message")))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

fn function_row(
    f: &Value,
    device: &str,
    model: &str,
    uri: &str,
) -> Result<FunctionRow, ClientError> {
    let s = |p: &str| str_at(f, p).unwrap_or("").to_string();
    let id = str_at(f, "/Id").ok_or_else(|| ClientError::Protocol {
        uri: uri.into(),
        what: "no Id".into(),
    })?;
    Ok(FunctionRow {
        id: id.to_string(),
        device: device.to_string(),
        function: f.get("FunctionId").and_then(Value::as_u64).unwrap_or(0),
        kind: s("/FunctionType").to_ascii_lowercase(),
        physical_function: str_at(f, "/Oem/Pcietun/PhysicalFunction").map(str::to_string),
        vendor_id: s("/VendorId"),
        device_id: s("/DeviceId"),
        subsystem_vendor_id: s("/SubsystemVendorId"),
        subsystem_id: s("/SubsystemId"),
        class_code: s("/ClassCode"),
        class: s("/DeviceClass"),
        model: model.to_string(),
        state: str_at(f, "/Oem/Pcietun/State")
            .unwrap_or("unknown")
            .to_string(),
        host: str_at(f, "/Oem/Pcietun/Owner").map(str::to_string),
        health: s("/Status/Health"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn settings_precedence() {
        let env: HashMap<&str, &str> =
            [("PCIETUN_API", "http://env:1"), ("PCIETUN_TOKEN", "envtok")].into();
        let env_fn = |k: &str| env.get(k).map(|s| s.to_string());
        let file = CtlFile {
            api: Some("http://file:1".into()),
            token: Some("filetok".into()),
            session: None,
            ca: None,
        };
        let s = Settings::resolve(Some("http://cli:1"), Some("clitok"), None, &env_fn, &file);
        assert_eq!(
            (s.api.as_str(), s.token.as_deref()),
            ("http://cli:1", Some("clitok"))
        );
        let s = Settings::resolve(None, None, None, &env_fn, &file);
        assert_eq!(
            (s.api.as_str(), s.token.as_deref()),
            ("http://env:1", Some("envtok"))
        );
        let none = |_: &str| None;
        let s = Settings::resolve(None, None, None, &none, &file);
        assert_eq!(
            (s.api.as_str(), s.token.as_deref()),
            ("http://file:1", Some("filetok"))
        );
        let s = Settings::resolve(None, None, None, &none, &CtlFile::default());
        assert_eq!((s.api.as_str(), s.token.as_deref()), (DEFAULT_API, None));
        let s = Settings::resolve(None, None, None, &env_fn, &file);
        assert!(!format!("{s:?}").contains("envtok"));
    }

    #[test]
    fn ctl_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sub/ctl.toml");
        assert_eq!(CtlFile::load(&p).unwrap(), CtlFile::default());
        let f = CtlFile {
            api: Some("http://x:1".into()),
            token: Some("t".into()),
            session: Some("/redfish/v1/SessionService/Sessions/x".into()),
            ca: None,
        };
        f.save(&p).unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(CtlFile::load(&p).unwrap(), f);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = CtlFile::load(&p).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("chmod 600"), "{e}");
    }

    #[test]
    fn default_path() {
        let env: HashMap<&str, &str> = [("HOME", "/home/u")].into();
        assert_eq!(
            CtlFile::default_path(&|k| env.get(k).map(|s| s.to_string())),
            Some(PathBuf::from("/home/u/.config/pcietun/ctl.toml"))
        );
    }

    #[test]
    fn bad_urls_are_usage_errors() {
        for url in ["127.0.0.1:8443", "ftp://x", "http://", "http://x/redfish"] {
            let s = Settings {
                api: url.into(),
                ..Settings::default()
            };
            let e = Client::new(&s).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{url}");
        }
    }

    #[test]
    fn unreachable_is_exit_3() {
        // A port nothing listens on: bind, note the port, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let s = Settings {
            api: format!("http://127.0.0.1:{port}"),
            timeout: Duration::from_secs(2),
            ..Settings::default()
        };
        let e = Client::new(&s).unwrap().devices().unwrap_err();
        assert_eq!(e.exit_code(), 3, "{e}");
    }
}
