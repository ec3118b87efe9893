//! Tunnelled functions in running VMs: which VM consumes which function, and hot-adding /
//! removing the function's `vfio-user-pci` device through the VM's QMP monitor (docs/vms.md).
//!
//! * this file — configuration ([`VmSpec`], [`FunctionSelector`], the `[[vm]]` table and
//!   `--vm NAME=QMP[,function=SEL]` flags) and the [`VmEvent`]s every attach/detach reports;
//! * [`attach`] — [`VmAttacher`]: `device_add` onto a free hot-plug-capable `pcie-root-port`,
//!   confirmation with `query-pci`, `device_del` with a bounded wait for `DEVICE_DELETED` and a
//!   surprise removal (the vfio-user connection withdrawn) when the guest does not let go;
//! * [`qemu`] — the QEMU options a VM needs to take functions (`pcietun host qemu-args`);
//! * [`service`] — [`VmService`], the worker that turns the agent's
//!   `FunctionAdded`/`FunctionRemoved` (and the local control socket's `attach`/`detach`
//!   lines) into attacher calls, one at a time, with retries while a VM is unreachable.
//!
//! QEMU facts this follows: `hw/pci/pcie.c` (native PCIe slot hot-plug: `device_del` presses
//! the slot's attention button, the guest powers the slot off, QEMU unrealizes the device and
//! emits `DEVICE_DELETED`), `hw/acpi/pcihp.c` (ACPI hot-plug: the guest ejects with `_EJ0`),
//! `qapi/qdev.json` (`device_add`, `device_del`, `DEVICE_DELETED`,
//! `DEVICE_UNPLUG_GUEST_ERROR`) and `qapi/pci.json` (`query-pci`).

pub mod attach;
pub mod qemu;
pub mod service;

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use attach::{Attachment, DetachOutcome, VmAttacher, VmError};
pub use service::{AgentSockets, FunctionSockets, VmService, APPLIANCE_REMOVAL_GRACE};

use crate::tlp::slot::ConsumerEvent;
use crate::tlp::Bdf;

/// A function as the VM layer names it: a stable id (today the BDF text; the pool's inventory
/// id once assignments carry one) and the BDF where the agent reaches it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct FunctionRef {
    /// Stable id (the QEMU device id is derived from it).
    pub id: String,
    /// Where the function sits below the agent's root port.
    #[serde(serialize_with = "ser_display")]
    pub bdf: Bdf,
}

fn ser_display<S: serde::Serializer, T: std::fmt::Display>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

impl FunctionRef {
    /// A function known only by its BDF (its id is the BDF text).
    pub fn from_bdf(bdf: Bdf) -> Self {
        Self {
            id: bdf.to_string(),
            bdf,
        }
    }
}

impl std::fmt::Display for FunctionRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.id == self.bdf.to_string() {
            write!(f, "{}", self.bdf)
        } else {
            write!(f, "{} ({})", self.id, self.bdf)
        }
    }
}

/// Which functions a VM takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FunctionSelector {
    /// The function at this BDF.
    Bdf(Bdf),
    /// The function with this stable id.
    Id(String),
    /// Every function assigned to this host that no other VM names explicitly.
    Next,
}

impl std::str::FromStr for FunctionSelector {
    type Err = VmConfigError;
    fn from_str(s: &str) -> Result<Self, VmConfigError> {
        if s == "next" {
            return Ok(Self::Next);
        }
        if let Ok(b) = s.parse::<Bdf>() {
            return Ok(Self::Bdf(b));
        }
        if !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
        {
            return Ok(Self::Id(s.to_string()));
        }
        Err(VmConfigError::BadSelector(s.to_string()))
    }
}

impl FunctionSelector {
    /// Whether this selector names `f` explicitly (`Next` never does).
    pub fn names(&self, f: &FunctionRef) -> bool {
        match self {
            Self::Bdf(b) => *b == f.bdf,
            Self::Id(id) => *id == f.id || *id == f.bdf.to_string(),
            Self::Next => false,
        }
    }
}

/// One VM that takes tunnelled functions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    /// Name (for logs, events and the control socket).
    pub name: String,
    /// The VM's QMP socket (`-qmp unix:PATH,server=on,wait=off`).
    pub qmp: PathBuf,
    /// The functions it takes (default: [`FunctionSelector::Next`]).
    pub functions: Vec<FunctionSelector>,
}

impl std::str::FromStr for VmSpec {
    type Err = VmConfigError;
    /// `NAME=QMP_SOCKET[,function=SEL]...` (SEL: a BDF, a function id or `next`).
    fn from_str(s: &str) -> Result<Self, VmConfigError> {
        let bad = || VmConfigError::BadVmFlag(s.to_string());
        let (name, rest) = s.split_once('=').ok_or_else(bad)?;
        let mut parts = rest.split(',');
        let qmp = parts.next().filter(|p| !p.is_empty()).ok_or_else(bad)?;
        let mut functions = Vec::new();
        for p in parts {
            let sel = p.strip_prefix("function=").ok_or_else(bad)?;
            functions.push(sel.parse()?);
        }
        VmSpec::new(name, qmp.into(), functions)
    }
}

impl VmSpec {
    /// A checked spec (a name QEMU ids and logs can carry, an absolute socket path).
    pub fn new(
        name: &str,
        qmp: PathBuf,
        mut functions: Vec<FunctionSelector>,
    ) -> Result<Self, VmConfigError> {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(VmConfigError::BadName(name.to_string()));
        }
        if functions.is_empty() {
            functions.push(FunctionSelector::Next);
        }
        Ok(Self {
            name: name.to_string(),
            qmp,
            functions,
        })
    }
}

/// Timing of attach and detach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmSettings {
    /// How long the guest may take to let go of a function after `device_del` before the
    /// agent withdraws it (surprise removal). Native PCIe hot-plug alone costs the guest 5 s
    /// (pciehp's attention-button delay).
    pub grace: Duration,
    /// Longest wait for one QMP reply (`device_add` realizes the device through the tunnel:
    /// config space and region queries, so allow seconds).
    pub command_timeout: Duration,
    /// Longest wait to connect to a monitor and negotiate.
    pub connect_timeout: Duration,
}

impl Default for VmSettings {
    fn default() -> Self {
        Self {
            grace: Duration::from_secs(15),
            command_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// The VM part of a host agent configuration file:
///
/// ```toml
/// detach_grace_ms = 15000
///
/// [[vm]]
/// name = "web1"
/// qmp = "/run/pcietun/web1.qmp"
/// functions = ["01:00.0"]      # BDFs, function ids, or "next" (the default)
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmFileConfig {
    /// [`VmSettings::grace`] in milliseconds.
    pub detach_grace_ms: Option<u64>,
    /// [`VmSettings::command_timeout`] in milliseconds.
    pub qmp_timeout_ms: Option<u64>,
    /// The VMs.
    #[serde(default)]
    pub vm: Vec<VmEntry>,
}

/// One `[[vm]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmEntry {
    /// VM name.
    pub name: String,
    /// QMP socket path.
    pub qmp: PathBuf,
    /// Function selectors.
    #[serde(default)]
    pub functions: Vec<String>,
}

impl VmFileConfig {
    /// Parse TOML text.
    pub fn parse(text: &str) -> Result<Self, VmConfigError> {
        toml::from_str(text).map_err(|e| VmConfigError::Toml(e.to_string()))
    }

    /// The checked VM specs.
    pub fn specs(&self) -> Result<Vec<VmSpec>, VmConfigError> {
        self.vm
            .iter()
            .map(|e| {
                let sels = e
                    .functions
                    .iter()
                    .map(|s| s.parse())
                    .collect::<Result<Vec<_>, _>>()?;
                VmSpec::new(&e.name, e.qmp.clone(), sels)
            })
            .collect()
    }

    /// Settings, defaults where the file says nothing.
    pub fn settings(&self) -> VmSettings {
        let mut s = VmSettings::default();
        if let Some(ms) = self.detach_grace_ms {
            s.grace = Duration::from_millis(ms);
        }
        if let Some(ms) = self.qmp_timeout_ms {
            s.command_timeout = Duration::from_millis(ms.max(1));
        }
        s
    }
}

/// Errors in the VM configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VmConfigError {
    /// `--vm` is not `NAME=QMP_SOCKET[,function=SEL]...`.
    #[error("bad --vm {0:?}: expected NAME=QMP_SOCKET[,function=BDF|ID|next]...")]
    BadVmFlag(String),
    /// A function selector that is neither a BDF, an id nor `next`.
    #[error("bad function selector {0:?}: expected a BDF (01:00.0), a function id or \"next\"")]
    BadSelector(String),
    /// A VM name with characters QEMU ids and logs cannot carry.
    #[error("bad VM name {0:?}: use letters, digits, '-', '_' and '.'")]
    BadName(String),
    /// Two VMs with one name.
    #[error("VM {0:?} is configured twice")]
    Duplicate(String),
    /// The configuration file is not valid TOML for this schema.
    #[error("VM configuration: {0}")]
    Toml(String),
}

/// What happened to a function in a VM; every attach and detach reports one (`pcietun host`
/// prints it and sends it to the appliance as a slot consumer report, [`VmEvent::consumer_event`],
/// which shows it on the assignment's Connection and in its event stream).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum VmEvent {
    /// The function's device is in the VM (`device_add` returned and `query-pci` shows it).
    Attached {
        /// VM name.
        vm: String,
        /// The function.
        function: FunctionRef,
        /// QEMU device id.
        device: String,
        /// The root port it was plugged into.
        port: String,
        /// From the attach call to the device being confirmed, in microseconds.
        took_us: u64,
    },
    /// Attaching failed; the function is not in the VM.
    AttachFailed {
        /// VM name.
        vm: String,
        /// The function.
        function: FunctionRef,
        /// Why.
        error: String,
    },
    /// The guest did not release the function within the grace period (or refused): the agent
    /// withdraws it, the guest sees a surprise removal.
    GuestDidNotRelease {
        /// VM name.
        vm: String,
        /// The function.
        function: FunctionRef,
        /// QEMU device id (still present in the VM).
        device: String,
        /// What we saw.
        reason: String,
    },
    /// The function left the VM and its vfio-user connection is closed.
    Detached {
        /// VM name.
        vm: String,
        /// The function.
        function: FunctionRef,
        /// QEMU device id.
        device: String,
        /// How: the guest ejected it, or it was withdrawn under the guest.
        outcome: DetachOutcome,
        /// From the detach call to the function being free, in microseconds.
        took_us: u64,
    },
}

impl VmEvent {
    /// The VM it concerns.
    pub fn vm(&self) -> &str {
        match self {
            Self::Attached { vm, .. }
            | Self::AttachFailed { vm, .. }
            | Self::GuestDidNotRelease { vm, .. }
            | Self::Detached { vm, .. } => vm,
        }
    }

    /// The function it concerns.
    pub fn function(&self) -> &FunctionRef {
        match self {
            Self::Attached { function, .. }
            | Self::AttachFailed { function, .. }
            | Self::GuestDidNotRelease { function, .. }
            | Self::Detached { function, .. } => function,
        }
    }

    /// What the appliance is told ([`ConsumerEvent`] of a slot's consumer report).
    pub fn consumer_event(&self) -> ConsumerEvent {
        match self {
            Self::Attached { .. } => ConsumerEvent::Attached,
            Self::AttachFailed { .. } => ConsumerEvent::AttachFailed,
            Self::GuestDidNotRelease { .. } => ConsumerEvent::EjectRefused,
            Self::Detached { outcome, .. } => match outcome {
                DetachOutcome::Ejected => ConsumerEvent::Detached,
                DetachOutcome::Withdrawn => ConsumerEvent::SurpriseRemoved,
                DetachOutcome::Gone => ConsumerEvent::VmGone,
            },
        }
    }
}

/// Receives every [`VmEvent`].
pub type EventSink = std::sync::Arc<dyn Fn(&VmEvent) + Send + Sync>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_flags() {
        let v: VmSpec = "web1=/run/web1.qmp".parse().unwrap();
        assert_eq!(v.name, "web1");
        assert_eq!(v.qmp, PathBuf::from("/run/web1.qmp"));
        assert_eq!(v.functions, vec![FunctionSelector::Next]);
        let v: VmSpec = "db=/q.sock,function=01:00.0,function=nvme-a"
            .parse()
            .unwrap();
        assert_eq!(
            v.functions,
            vec![
                FunctionSelector::Bdf("01:00.0".parse().unwrap()),
                FunctionSelector::Id("nvme-a".into())
            ]
        );
        for bad in [
            "",
            "web1",
            "web1=",
            "=x",
            "a b=/x",
            "w=/x,fn=1",
            "w=/x,function=a b",
        ] {
            assert!(bad.parse::<VmSpec>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn file_config() {
        let c = VmFileConfig::parse(
            "detach_grace_ms = 2500\n[[vm]]\nname = \"a\"\nqmp = \"/a.qmp\"\nfunctions = [\"01:00.0\", \"next\"]\n[[vm]]\nname = \"b\"\nqmp = \"/b.qmp\"\n",
        )
        .unwrap();
        let specs = c.specs().unwrap();
        assert_eq!(specs.len(), 2);
        assert_eq!(specs[0].functions.len(), 2);
        assert_eq!(specs[1].functions, vec![FunctionSelector::Next]);
        assert_eq!(c.settings().grace, Duration::from_millis(2500));
        assert!(VmFileConfig::parse("[[vm]]\nname = \"a\"\nqmp = \"/a\"\nbogus = 1\n").is_err());
        assert!(
            VmFileConfig::parse("[[vm]]\nname = \"a\"\nqmp = \"/a\"\nfunctions = [\"a b\"]\n")
                .unwrap()
                .specs()
                .is_err()
        );
    }

    #[test]
    fn selectors() {
        let f = FunctionRef::from_bdf("01:00.0".parse().unwrap());
        assert!("01:00.0".parse::<FunctionSelector>().unwrap().names(&f));
        assert!(!"01:00.1".parse::<FunctionSelector>().unwrap().names(&f));
        assert!(!FunctionSelector::Next.names(&f));
        let g = FunctionRef {
            id: "nvme-a".into(),
            bdf: f.bdf,
        };
        assert!(FunctionSelector::Id("nvme-a".into()).names(&g));
        assert_eq!(g.to_string(), "nvme-a (01:00.0)");
    }

    #[test]
    fn events_serialise_with_their_kind() {
        let e = VmEvent::AttachFailed {
            vm: "a".into(),
            function: FunctionRef::from_bdf("01:00.0".parse().unwrap()),
            error: "x".into(),
        };
        let j = serde_json::to_value(&e).unwrap();
        assert_eq!(j["event"], "attach_failed");
        assert_eq!(j["function"]["bdf"], "01:00.0");
    }
}
