//! The running agent's control socket (docs/host.md "Control socket"): `pcietun host
//! lspci|read|write` ask the agent that holds the session instead of opening a second session
//! with the same host key — which would replace the agent's session on the appliance and reset
//! every function.
//!
//! * [`Request`] — the typed request, parsed from one line (`status`, `lspci [-x|-xxx|-xxxx]
//!   [FUNC]`, `config FUNC OFFSET WIDTH`, `read FUNC BAR OFFSET WIDTH`, `write FUNC BAR OFFSET
//!   WIDTH VALUE`) and printed back to the same line ([`std::fmt::Display`]); a function is
//!   an [`Addr`], `[SSSS:]BB:DD.F` — the PCI segment names the appliance (docs/host.md
//!   "Several appliances"), none means segment 0;
//! * [`execute`] — runs a request against a [`Fabric`] (the agent's appliances, one
//!   [`Segment`] each); the CLI's own-session fallback runs the same function, so both print
//!   the same text ([`lspci_text`] is its one copy);
//! * [`ControlServer`] — the Unix-socket server: mode 0600, bound under a private temporary
//!   name and renamed into place ([`bind_socket`](super::sockfile::bind_socket)), one request line (at most
//!   [`MAX_REQUEST`] bytes, [`READ_TIMEOUT`]) in, one JSON line out, at most [`MAX_CLIENTS`]
//!   clients at once;
//! * [`request`] — the client side (also used for the VM control socket).

use std::io::{BufRead, BufReader, Read, Write};

use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::json;

use super::requester::RequestError;
use super::root::Host;
use crate::pci::lspci;
use crate::tlp::Bdf;

/// Longest request line, newline excluded; a longer one gets an error reply and the
/// connection is closed.
pub const MAX_REQUEST: usize = 256;
/// How long a client may take to send a request line (and to take a reply).
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Clients served at once; one more is answered with an error and closed.
pub const MAX_CLIENTS: usize = 8;
/// Where agents put their control socket unless `--control PATH` says otherwise.
pub const DEFAULT_DIR: &str = "/run/pcietun";

/// The default control socket of the agent with host id `host_id`:
/// `/run/pcietun/host-<id>.sock`, the id made safe by [`safe_name`](super::names::safe_name).
pub fn default_path(host_id: &str) -> PathBuf {
    let id = super::names::safe_name(host_id);
    Path::new(DEFAULT_DIR).join(format!("host-{id}.sock"))
}

/// An access width: 1, 2, 4 or 8 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Width(u8);

impl Width {
    /// `bytes` if it is 1, 2, 4 or 8.
    pub fn new(bytes: usize) -> Option<Width> {
        matches!(bytes, 1 | 2 | 4 | 8).then_some(Width(bytes as u8))
    }
    /// In bytes.
    pub fn bytes(self) -> usize {
        self.0 as usize
    }
    /// Whether `v` fits.
    pub fn fits(self, v: u64) -> bool {
        self.0 == 8 || v >> (8 * u32::from(self.0)) == 0
    }
}

/// A function as the control socket names it: `[SSSS:]BB:DD.F` (hex). The segment (PCI
/// domain) picks the appliance; without one it is segment 0, the first appliance, so a
/// one-appliance agent's addresses are plain BDFs as before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Addr {
    /// The PCI segment: which appliance.
    pub segment: u16,
    /// The function below that appliance's root port.
    pub bdf: Bdf,
}

impl Addr {
    /// Function `bdf` of segment `segment`.
    pub fn new(segment: u16, bdf: Bdf) -> Addr {
        Addr { segment, bdf }
    }
}

impl From<Bdf> for Addr {
    /// Segment 0.
    fn from(bdf: Bdf) -> Addr {
        Addr { segment: 0, bdf }
    }
}

impl std::fmt::Display for Addr {
    /// `BB:DD.F` in segment 0, else `SSSS:BB:DD.F` — what [`address`] reads back.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.segment != 0 {
            write!(f, "{:04x}:", self.segment)?;
        }
        write!(f, "{}", self.bdf)
    }
}

impl std::str::FromStr for Addr {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Addr, ParseError> {
        address(s)
    }
}

/// How much config space `lspci` dumps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dump {
    /// No dump: one line per function.
    None,
    /// `-x`: 64 bytes.
    Header,
    /// `-xxx`: 256 bytes.
    Config,
    /// `-xxxx`: 4096 bytes.
    Extended,
}

impl Dump {
    /// From the count of `-x` flags as `lspci` takes them (1-2: 64 bytes, 3: 256, 4+: 4096).
    pub fn from_count(x: u8) -> Dump {
        match x {
            0 => Dump::None,
            1 | 2 => Dump::Header,
            3 => Dump::Config,
            _ => Dump::Extended,
        }
    }
    /// Bytes dumped per function.
    pub fn bytes(self) -> usize {
        match self {
            Dump::None => 0,
            Dump::Header => 64,
            Dump::Config => 256,
            Dump::Extended => 4096,
        }
    }
    fn flag(self) -> Option<&'static str> {
        match self {
            Dump::None => None,
            Dump::Header => Some("-x"),
            Dump::Config => Some("-xxx"),
            Dump::Extended => Some("-xxxx"),
        }
    }
}

/// One control request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// The agent's host id, target, session state and functions.
    Status,
    /// The listing `pcietun host lspci` prints (only `bdf` when given).
    Lspci {
        /// Config space dump length.
        dump: Dump,
        /// One function only.
        bdf: Option<Addr>,
    },
    /// A config space read (`offset` a multiple of `width`, below 4096; width 1, 2 or 4).
    Config {
        /// The function.
        bdf: Addr,
        /// Byte offset.
        offset: u16,
        /// 1, 2 or 4.
        width: Width,
    },
    /// A BAR read.
    Read {
        /// The function.
        bdf: Addr,
        /// BAR 0-5.
        bar: u8,
        /// Byte offset in the BAR.
        offset: u64,
        /// Access width.
        width: Width,
    },
    /// A BAR write, confirmed by a read behind it.
    Write {
        /// The function.
        bdf: Addr,
        /// BAR 0-5.
        bar: u8,
        /// Byte offset in the BAR.
        offset: u64,
        /// Access width.
        width: Width,
        /// The value (fits in `width`).
        value: u64,
    },
}

/// Why a line is not a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Nothing but blanks.
    #[error("empty request; expected status, lspci, config, read or write")]
    Empty,
    /// The first word is no request.
    #[error("unknown request {0:?}; expected status, lspci, config, read or write")]
    UnknownVerb(String),
    /// Wrong number of words for the verb.
    #[error("usage: {0}")]
    Usage(&'static str),
    /// Not a `[segment:]bus:device.function`.
    #[error("{0:?} is not a [segment:]bus:device.function like 01:00.0 or 0001:01:00.0")]
    BadBdf(String),
    /// Not a number.
    #[error("{0:?} is not a number (use 0x for hex)")]
    NotANumber(String),
    /// A width other than 1, 2, 4, 8 (config: 1, 2, 4).
    #[error("width {0:?}: use 1, 2, 4 or 8 (config space: 1, 2 or 4)")]
    BadWidth(String),
    /// A BAR index other than 0-5.
    #[error("BAR {0:?}: use 0-5")]
    BadBar(String),
    /// A value wider than the access.
    #[error("{value} does not fit in {width} bytes")]
    TooWide {
        /// The value as given.
        value: String,
        /// The width.
        width: usize,
    },
    /// A config offset outside 0..4096 or not a multiple of the width.
    #[error("config offset {0:?}: below 0x1000 and a multiple of the width")]
    BadOffset(String),
    /// An lspci flag other than -x, -xxx, -xxxx.
    #[error("lspci flag {0:?}: use -x, -xxx or -xxxx")]
    BadFlag(String),
}

const USAGE_STATUS: &str = "status";
const USAGE_LSPCI: &str = "lspci [-x|-xxx|-xxxx] [FUNC]";
const USAGE_CONFIG: &str = "config FUNC OFFSET WIDTH";
const USAGE_READ: &str = "read FUNC BAR OFFSET WIDTH";
const USAGE_WRITE: &str = "write FUNC BAR OFFSET WIDTH VALUE";

/// `0x` hex or decimal.
pub fn number(s: &str) -> Result<u64, ParseError> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse(),
    };
    r.map_err(|_| ParseError::NotANumber(s.to_string()))
}

/// A function as the operator tools take it: `[SSSS:]BB:DD.F` (segment at most `ffff`).
pub fn address(s: &str) -> Result<Addr, ParseError> {
    let bad = || ParseError::BadBdf(s.chars().take(32).collect());
    let a: lspci::PciAddress = s.parse().map_err(|_| bad())?;
    let segment = match a.domain {
        None => 0,
        Some(d) => u16::try_from(d).map_err(|_| bad())?,
    };
    Ok(Addr::new(segment, Bdf::new(a.bus, a.device, a.function)))
}

/// A BAR index 0-5.
pub fn bar(s: &str) -> Result<u8, ParseError> {
    match s.parse::<u8>() {
        Ok(b) if b < 6 => Ok(b),
        _ => Err(ParseError::BadBar(s.to_string())),
    }
}

/// An access width.
pub fn width(s: &str) -> Result<Width, ParseError> {
    s.parse::<usize>()
        .ok()
        .and_then(Width::new)
        .ok_or_else(|| ParseError::BadWidth(s.to_string()))
}

/// A value that fits in `w`.
pub fn value(s: &str, w: Width) -> Result<u64, ParseError> {
    let v = number(s)?;
    if !w.fits(v) {
        return Err(ParseError::TooWide {
            value: s.to_string(),
            width: w.bytes(),
        });
    }
    Ok(v)
}

impl std::str::FromStr for Request {
    type Err = ParseError;
    fn from_str(line: &str) -> Result<Request, ParseError> {
        let words: Vec<&str> = line.split_ascii_whitespace().collect();
        let Some((&verb, args)) = words.split_first() else {
            return Err(ParseError::Empty);
        };
        match verb {
            "status" => match args {
                [] => Ok(Request::Status),
                _ => Err(ParseError::Usage(USAGE_STATUS)),
            },
            "lspci" => {
                let mut dump = Dump::None;
                let mut only = None;
                let mut flag_seen = false;
                for (i, a) in args.iter().enumerate() {
                    if let Some(xs) = a.strip_prefix('-') {
                        if flag_seen || only.is_some() {
                            return Err(ParseError::Usage(USAGE_LSPCI));
                        }
                        dump = match xs {
                            "x" => Dump::Header,
                            "xxx" => Dump::Config,
                            "xxxx" => Dump::Extended,
                            _ => return Err(ParseError::BadFlag(a.to_string())),
                        };
                        flag_seen = true;
                    } else if only.is_none() && i + 1 == args.len() {
                        only = Some(address(a)?);
                    } else {
                        return Err(ParseError::Usage(USAGE_LSPCI));
                    }
                }
                Ok(Request::Lspci { dump, bdf: only })
            }
            "config" => {
                let [b, o, w] = args else {
                    return Err(ParseError::Usage(USAGE_CONFIG));
                };
                let b = address(b)?;
                let wd = width(w)?;
                if wd.bytes() == 8 {
                    return Err(ParseError::BadWidth(w.to_string()));
                }
                let off = number(o)?;
                if off >= 4096 || off % wd.bytes() as u64 != 0 {
                    return Err(ParseError::BadOffset(o.to_string()));
                }
                Ok(Request::Config {
                    bdf: b,
                    offset: off as u16,
                    width: wd,
                })
            }
            "read" => {
                let [b, r, o, w] = args else {
                    return Err(ParseError::Usage(USAGE_READ));
                };
                Ok(Request::Read {
                    bdf: address(b)?,
                    bar: bar(r)?,
                    offset: number(o)?,
                    width: width(w)?,
                })
            }
            "write" => {
                let [b, r, o, w, v] = args else {
                    return Err(ParseError::Usage(USAGE_WRITE));
                };
                let (b, r, o, w) = (address(b)?, bar(r)?, number(o)?, width(w)?);
                Ok(Request::Write {
                    bdf: b,
                    bar: r,
                    offset: o,
                    width: w,
                    value: value(v, w)?,
                })
            }
            _ => Err(ParseError::UnknownVerb(verb.chars().take(32).collect())),
        }
    }
}

impl std::fmt::Display for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Request::Status => f.write_str("status"),
            Request::Lspci { dump, bdf } => {
                f.write_str("lspci")?;
                if let Some(x) = dump.flag() {
                    write!(f, " {x}")?;
                }
                if let Some(b) = bdf {
                    write!(f, " {b}")?;
                }
                Ok(())
            }
            Request::Config { bdf, offset, width } => {
                write!(f, "config {bdf} {offset:#x} {}", width.bytes())
            }
            Request::Read {
                bdf,
                bar,
                offset,
                width,
            } => write!(f, "read {bdf} {bar} {offset:#x} {}", width.bytes()),
            Request::Write {
                bdf,
                bar,
                offset,
                width,
                value,
            } => write!(
                f,
                "write {bdf} {bar} {offset:#x} {} {value:#x}",
                width.bytes()
            ),
        }
    }
}

/// Who the agent is, for `status` (and for a client to check it asks the right agent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlInfo {
    /// `--host-id`.
    pub host_id: String,
    /// The appliance, as `--connect` names it (`udp:IP:PORT`, `eth:…`).
    pub target: String,
}

/// One appliance behind a control socket: its PCI segment, how it is named, and the root
/// complex of its session.
#[derive(Debug, Clone)]
pub struct Segment {
    /// The PCI segment (domain) its functions appear under.
    pub segment: u16,
    /// Its name (`--appliance NAME=…`, `[[appliance]] name`).
    pub name: String,
    /// Where it is, as `--connect` names it.
    pub target: String,
    /// The root complex of the session with it.
    pub host: Arc<Host>,
}

/// What a control socket serves: the agent's host id and its appliances, one [`Segment`]
/// each, segment 0 first.
#[derive(Debug, Clone)]
pub struct Fabric {
    /// `--host-id`.
    pub host_id: String,
    /// The appliances (segments 0, 1, … in order).
    pub segments: Vec<Segment>,
}

impl Fabric {
    /// An agent with one appliance: segment 0, named `appliance` (as `pcietun host
    /// --connect` names it).
    pub fn single(host: Arc<Host>, info: &ControlInfo) -> Fabric {
        Fabric {
            host_id: info.host_id.clone(),
            segments: vec![Segment {
                segment: 0,
                name: "appliance".into(),
                target: info.target.clone(),
                host,
            }],
        }
    }

    /// The appliance of segment `segment`.
    pub fn segment(&self, segment: u16) -> Result<&Segment, ExecError> {
        self.segments
            .iter()
            .find(|s| s.segment == segment)
            .ok_or(ExecError::NoSegment {
                segment,
                known: self.segments.len(),
            })
    }

    /// Whether addresses print with their segment (more than one appliance).
    fn several(&self) -> bool {
        self.segments.len() > 1
    }
}

/// Why a request could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// Nothing tunnelled at that address.
    #[error("no tunnelled function at {0}")]
    NoFunction(Addr),
    /// No appliance has that segment.
    #[error(
        "no appliance at segment {segment:04x}: this agent has {known} (segments 0000 and up)"
    )]
    NoSegment {
        /// The segment asked for.
        segment: u16,
        /// How many appliances the agent has.
        known: usize,
    },
    /// A BAR access failed.
    #[error("{op} {bdf} BAR{bar}+{offset:#x}: {source}")]
    Access {
        /// `read`, `write` or `write (not confirmed)`.
        op: &'static str,
        /// The function.
        bdf: Addr,
        /// The BAR.
        bar: u8,
        /// The offset.
        offset: u64,
        /// Why.
        #[source]
        source: RequestError,
    },
    /// A config read failed.
    #[error("config {bdf}+{offset:#x}: {source}")]
    Config {
        /// The function.
        bdf: Addr,
        /// The offset.
        offset: u16,
        /// Why.
        #[source]
        source: RequestError,
    },
}

/// What a request produced: the text `pcietun host …` prints on stdout, and the same as data
/// for the JSON reply.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// Exactly what the CLI prints (newline-terminated, or empty).
    pub output: String,
    /// Structured fields of the reply (an object).
    pub data: serde_json::Value,
}

impl Answer {
    /// The reply line's object: `{"ok": true, "output": …, <data fields>}`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = json!({"ok": true, "output": self.output});
        if let (Some(o), serde_json::Value::Object(d)) = (v.as_object_mut(), &self.data) {
            for (k, x) in d {
                o.insert(k.clone(), x.clone());
            }
        }
        v
    }
}

/// An error reply line's object.
pub fn error_json(e: &dyn std::fmt::Display) -> serde_json::Value {
    json!({"ok": false, "error": e.to_string()})
}

fn hex(v: u64, w: Width) -> String {
    format!("{v:#0n$x}", n = 2 + 2 * w.bytes())
}

/// Run `req` against `fabric` (the agent's appliances, or a session of the CLI's own).
pub fn execute(fabric: &Fabric, req: &Request) -> Result<Answer, ExecError> {
    match *req {
        Request::Status => Ok(status(fabric)),
        Request::Lspci { dump, bdf } => {
            if let Some(a) = bdf {
                let host = &fabric.segment(a.segment)?.host;
                let root = Bdf::new(0, 0, 0);
                if a.bdf != root && !host.functions().iter().any(|f| f.bdf == a.bdf) {
                    return Err(ExecError::NoFunction(a));
                }
            }
            Ok(Answer {
                output: lspci_text(fabric, dump, bdf),
                data: json!({}),
            })
        }
        Request::Config { bdf, offset, width } => {
            let host = &fabric.segment(bdf.segment)?.host;
            if !host.functions().iter().any(|f| f.bdf == bdf.bdf) {
                return Err(ExecError::NoFunction(bdf));
            }
            let dw = host
                .cfg_read(bdf.bdf, offset & !3)
                .map_err(|source| ExecError::Config {
                    bdf,
                    offset,
                    source,
                })?;
            let shifted = u64::from(dw >> (8 * u32::from(offset & 3)));
            let v = if width.bytes() == 4 {
                shifted
            } else {
                shifted & ((1u64 << (8 * width.bytes())) - 1)
            };
            Ok(Answer {
                output: format!("{}\n", hex(v, width)),
                data: json!({"value": v}),
            })
        }
        Request::Read {
            bdf,
            bar,
            offset,
            width,
        } => {
            let host = &fabric.segment(bdf.segment)?.host;
            let f = host.open(bdf.bdf).ok_or(ExecError::NoFunction(bdf))?;
            let mut b = [0u8; 8];
            f.bar_read(usize::from(bar), offset, &mut b[..width.bytes()])
                .map_err(|source| ExecError::Access {
                    op: "read",
                    bdf,
                    bar,
                    offset,
                    source,
                })?;
            let v = u64::from_le_bytes(b);
            Ok(Answer {
                output: format!("{}\n", hex(v, width)),
                data: json!({"value": v}),
            })
        }
        Request::Write {
            bdf,
            bar,
            offset,
            width,
            value,
        } => {
            let host = &fabric.segment(bdf.segment)?.host;
            let f = host.open(bdf.bdf).ok_or(ExecError::NoFunction(bdf))?;
            let access = |op, source| ExecError::Access {
                op,
                bdf,
                bar,
                offset,
                source,
            };
            f.bar_write(
                usize::from(bar),
                offset,
                &value.to_le_bytes()[..width.bytes()],
            )
            .map_err(|e| access("write", e))?;
            // A read behind the posted write on the same link: it has arrived when this returns.
            f.config_read(0)
                .map_err(|e| access("write (not confirmed)", e))?;
            Ok(Answer {
                output: String::new(),
                data: json!({}),
            })
        }
    }
}

/// `status`: with one appliance the lines it always printed (host id, appliance, session,
/// functions); with several, one `appliance SSSS NAME: TARGET session up|down` line per
/// segment and the functions with their segment. The JSON keeps `target`/`session` of
/// segment 0 and adds `appliances`.
fn status(fabric: &Fabric) -> Answer {
    let up = |s: &Segment| if s.host.is_link_up() { "up" } else { "down" };
    let several = fabric.several();
    let mut out = format!("host id: {}\n", fabric.host_id);
    let mut list = Vec::new();
    let mut appliances = Vec::new();
    for s in &fabric.segments {
        if several {
            out.push_str(&format!(
                "appliance {:04x} {}: {} session {}\n",
                s.segment,
                s.name,
                s.target,
                up(s)
            ));
        } else {
            out.push_str(&format!("appliance: {}\nsession: {}\n", s.target, up(s)));
        }
        appliances.push(json!({
            "segment": format!("{:04x}", s.segment),
            "name": s.name,
            "target": s.target,
            "session": up(s),
        }));
        for f in s.host.functions() {
            let a = Addr::new(s.segment, f.bdf);
            out.push_str(&format!(
                "function: {a} {:04x}:{:04x} class {:06x}\n",
                f.vendor, f.device, f.class
            ));
            list.push(json!({
                "bdf": a.to_string(),
                "segment": format!("{:04x}", s.segment),
                "vendor": format!("{:04x}", f.vendor),
                "device": format!("{:04x}", f.device),
                "class": format!("{:06x}", f.class),
            }));
        }
    }
    let first = fabric.segments.first();
    Answer {
        output: out,
        data: json!({
            "host_id": fabric.host_id,
            "target": first.map(|s| s.target.as_str()),
            "session": first.map(up),
            "functions": list,
            "appliances": appliances,
        }),
    }
}

/// The lspci listing: per appliance its root port (`00:00.0`) first, then the functions
/// below it (only `only` when given), with `dump`'s bytes of config space in the format
/// `lspci -F FILE` reads. With several appliances every address carries its segment, as
/// `lspci -D` prints them.
pub fn lspci_text(fabric: &Fabric, dump: Dump, only: Option<Addr>) -> String {
    let len = dump.bytes();
    let several = fabric.several();
    let mut out = String::new();
    let mut emit = |a: Addr, config: &[u8]| {
        let address = lspci::PciAddress {
            domain: several.then_some(u32::from(a.segment)),
            bus: a.bdf.bus(),
            device: a.bdf.device(),
            function: a.bdf.function(),
        };
        let desc = lspci::default_description(config);
        if len == 0 {
            out.push_str(&format!("{address} {desc}\n"));
        } else {
            out.push_str(&lspci::format_function(&address, &desc, &config[..len]));
        }
    };
    let wanted = |a: Addr| only.is_none_or(|o| o == a);
    for s in &fabric.segments {
        let host = &s.host;
        let root = Addr::new(s.segment, Bdf::new(0, 0, 0));
        if wanted(root) {
            emit(root, &host.root_port_snapshot());
        }
        for f in host.functions() {
            let a = Addr::new(s.segment, f.bdf);
            if !wanted(a) {
                continue;
            }
            let mut config = vec![0xffu8; 4096];
            let dwords = if len > 64 { len / 4 } else { 16 };
            for i in 0..dwords {
                if let Ok(v) = host.cfg_read(f.bdf, (i * 4) as u16) {
                    config[i * 4..i * 4 + 4].copy_from_slice(&v.to_le_bytes());
                }
            }
            emit(a, &config);
        }
    }
    out
}

use super::sockfile::bind_socket;
pub use super::sockfile::{remove_if_ours, BindError, SocketId};

/// Read one request line of at most `max` bytes (newline excluded). `Ok(None)`: the client
/// closed. `Err(reply)`: an error reply to send before closing (too long, not UTF-8, timed
/// out). The bool is whether the line ended with a newline (more may follow).
pub fn read_line<R: BufRead>(
    r: &mut R,
    max: usize,
) -> Result<Option<(String, bool)>, serde_json::Value> {
    let mut buf = Vec::new();
    match r.take(max as u64 + 1).read_until(b'\n', &mut buf) {
        Ok(0) => return Ok(None),
        Ok(_) => {}
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            return Err(error_json(&"no complete request line in time"));
        }
        Err(e) => return Err(error_json(&e)),
    }
    let newline = buf.last() == Some(&b'\n');
    if newline {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
    }
    if buf.len() > max {
        return Err(error_json(&format_args!("request longer than {max} bytes")));
    }
    match String::from_utf8(buf) {
        Ok(s) => Ok(Some((s, newline))),
        Err(_) => Err(error_json(&"request is not UTF-8")),
    }
}

/// The agent's control socket server (one thread accepting, one per client).
#[derive(Debug)]
pub struct ControlServer {
    path: PathBuf,
    id: (u64, u64),
    stop: Arc<AtomicBool>,
    /// A duplicate of the listening socket, to wake `accept` on drop.
    wake: UnixListener,
    thread: Option<JoinHandle<()>>,
}

/// Decrements the client count when a client thread ends.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A control socket bound ([`bind_socket`], mode 0600) but not served yet: the agent binds before it
/// opens its session, so an agent refused the path never disturbs the one that holds it.
/// Connections made before [`ControlServer::start`] wait in the backlog.
#[derive(Debug)]
pub struct BoundSocket {
    listener: UnixListener,
    path: PathBuf,
    id: (u64, u64),
}

impl BoundSocket {
    /// Bind `path` ([`bind_socket`], mode 0600).
    pub fn bind(path: &Path) -> Result<BoundSocket, BindError> {
        let (listener, id) = bind_socket(path, 0o600)?;
        Ok(BoundSocket {
            listener,
            path: path.to_path_buf(),
            id,
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Give up the socket without serving it (the file is removed).
    pub fn abandon(self) {
        remove_if_ours(&self.path, self.id);
    }
}

impl ControlServer {
    /// Serve `host`'s control socket on `bound` (one appliance).
    pub fn start(
        bound: BoundSocket,
        host: Arc<Host>,
        info: ControlInfo,
    ) -> Result<ControlServer, BindError> {
        ControlServer::start_fabric(bound, Fabric::single(host, &info))
    }

    /// Serve the control socket of an agent with the appliances of `fabric` on `bound`.
    pub fn start_fabric(bound: BoundSocket, fabric: Fabric) -> Result<ControlServer, BindError> {
        let BoundSocket { listener, path, id } = bound;
        let path = path.as_path();
        let wake = listener.try_clone().map_err(|source| BindError::Io {
            path: path.to_path_buf(),
            what: "duplicating the listening socket",
            source,
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let clients = Arc::new(AtomicUsize::new(0));
        let st = stop.clone();
        let fabric = Arc::new(fabric);
        let thread = std::thread::Builder::new()
            .name("host-control".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    if st.load(Ordering::Acquire) {
                        return;
                    }
                    let stream = match stream {
                        Ok(s) => s,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            // EMFILE and the like: do not spin.
                            tracing::warn!(error = %e, "control socket: accept failed");
                            std::thread::sleep(Duration::from_millis(100));
                            continue;
                        }
                    };
                    let _ = stream.set_write_timeout(Some(READ_TIMEOUT));
                    if clients.fetch_add(1, Ordering::AcqRel) >= MAX_CLIENTS {
                        clients.fetch_sub(1, Ordering::AcqRel);
                        let mut s = &stream;
                        let _ = writeln!(
                            s,
                            "{}",
                            error_json(&format_args!(
                                "busy: {MAX_CLIENTS} clients are being served; try again"
                            ))
                        );
                        // What it sent already: read without waiting (the accept loop must
                        // not block), so closing does not reset the reply away.
                        let _ = stream.set_nonblocking(true);
                        close_after_error(&stream, &mut s);
                        continue;
                    }
                    let slot = Slot(clients.clone());
                    let fabric = fabric.clone();
                    let spawned = std::thread::Builder::new()
                        .name("host-control-client".into())
                        .spawn(move || {
                            let _slot = slot;
                            serve_client(stream, &fabric);
                        });
                    if let Err(e) = spawned {
                        tracing::warn!(error = %e, "control socket: cannot start a client thread");
                    }
                }
            })
            .map_err(|source| {
                remove_if_ours(path, id);
                BindError::Io {
                    path: path.to_path_buf(),
                    what: "starting its thread",
                    source,
                }
            })?;
        Ok(ControlServer {
            path: path.to_path_buf(),
            id,
            stop,
            wake,
            thread: Some(thread),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ControlServer {
    /// Stop accepting (clients being served finish on their own) and remove the socket file.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wakes accept(2) on the same socket (Linux: it fails with EINVAL).
        let _ = rustix::net::shutdown(&self.wake, rustix::net::Shutdown::Both);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        remove_if_ours(&self.path, self.id);
    }
}

/// How long a client that is being closed after an error may still send (discarded).
const DRAIN: Duration = Duration::from_millis(100);

/// Close a connection after an error reply: no more writes, then discard (a bounded amount
/// of) what the client still sends — a socket closed with unread input resets the
/// connection, and the client would lose the reply.
fn close_after_error(stream: &UnixStream, input: &mut impl Read) {
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let _ = std::io::copy(&mut input.take(64 << 10), &mut std::io::sink());
}

fn serve_client(stream: UnixStream, fabric: &Fabric) {
    if stream.set_read_timeout(Some(READ_TIMEOUT)).is_err() {
        return;
    }
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let (line, more) = match read_line(&mut reader, MAX_REQUEST) {
            Ok(Some(l)) => l,
            Ok(None) => return,
            Err(reply) => {
                let _ = writeln!(out, "{reply}");
                let _ = reader.get_ref().set_read_timeout(Some(DRAIN));
                close_after_error(&out, &mut reader);
                return;
            }
        };
        let reply = match line.parse::<Request>() {
            Ok(req) => match execute(fabric, &req) {
                Ok(a) => a.to_json(),
                Err(e) => error_json(&e),
            },
            Err(e) => error_json(&e),
        };
        if writeln!(out, "{reply}").is_err() || !more {
            return;
        }
    }
}

/// Why [`request`] got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nobody accepts on the path (no agent, or a stale socket).
    #[error("cannot connect to {}: {source}", path.display())]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Sending or receiving failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The socket.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The reply is not a JSON line.
    #[error("bad reply from {}: {reply:?}", path.display())]
    BadReply {
        /// The socket.
        path: PathBuf,
        /// What came (cut to 200 characters).
        reply: String,
    },
}

/// A connection to a control socket (the agent's, or its VM control socket).
#[derive(Debug)]
pub struct Client {
    path: PathBuf,
    out: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Client {
    /// Connect to `path`; every reply is waited for at most `timeout`.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Client, ClientError> {
        let s = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
        let io = |source| ClientError::Io {
            path: path.to_path_buf(),
            source,
        };
        s.set_read_timeout(Some(timeout)).map_err(io)?;
        s.set_write_timeout(Some(timeout)).map_err(io)?;
        let r = s.try_clone().map_err(io)?;
        Ok(Client {
            path: path.to_path_buf(),
            out: s,
            reader: BufReader::new(r),
        })
    }

    /// Send one request line, return the reply object.
    pub fn ask(&mut self, line: &str) -> Result<serde_json::Value, ClientError> {
        self.ask_line(line).map(|(_, v)| v)
    }

    /// Send one request line, return the reply line (without its newline) and its object.
    pub fn ask_line(&mut self, line: &str) -> Result<(String, serde_json::Value), ClientError> {
        let io = |source| ClientError::Io {
            path: self.path.clone(),
            source,
        };
        // A server that refused us (busy) may have closed already: its reply is still there
        // to read, so a failed send is reported only when no reply comes.
        let sent = writeln!(self.out, "{line}");
        let mut reply = String::new();
        let got = (&mut self.reader).take(64 << 20).read_line(&mut reply);
        match (sent, got) {
            (_, Ok(n)) if n > 0 => {}
            (Err(e), _) => return Err(io(e)),
            (Ok(()), Err(source)) => {
                return Err(ClientError::Io {
                    path: self.path.clone(),
                    source,
                })
            }
            (Ok(()), Ok(_)) => {}
        }
        let reply = reply.trim().to_string();
        match serde_json::from_str(&reply) {
            Ok(v) => Ok((reply, v)),
            Err(_) => Err(ClientError::BadReply {
                path: self.path.clone(),
                reply: reply.chars().take(200).collect(),
            }),
        }
    }
}

/// One request on a fresh connection to `path`.
pub fn request(
    path: &Path,
    line: &str,
    timeout: Duration,
) -> Result<serde_json::Value, ClientError> {
    Client::connect(path, timeout)?.ask(line)
}

#[cfg(test)]
mod tests;
