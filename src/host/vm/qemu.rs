//! The QEMU options a VM needs to take tunnelled functions at run time
//! (`pcietun host qemu-args`, docs/vms.md):
//!
//! * guest RAM the agent can map: `memory-backend-memfd,share=on` as the machine's memory
//!   (vfio-user hands guest RAM to the device server as file descriptors, vfio-user.rst
//!   "DMA_MAP");
//! * a q35 machine with N `pcie-root-port`s, each a hot-plug slot (`hotplug=on`) with bus
//!   bridge windows reserved by the firmware for the device that arrives later
//!   (`mem-reserve`, `pref64-reserve`, `io-reserve`: QEMU's
//!   `hw/pci-bridge/gen_pcie_root_port.c`, passed to the firmware in the Red Hat bridge
//!   resource-reserve capability);
//! * native PCIe hot-plug (the guest's pciehp drives the slot) instead of q35's default ACPI
//!   hot-plug of bridges, unless asked for ACPI;
//! * the QMP socket the agent drives.
//!
//! `vfio-user-pci` exists from QEMU 10.1 on ([`MIN_QEMU`]).

use std::path::PathBuf;

use serde::Serialize;

/// The first QEMU with the `vfio-user-pci` client.
pub const MIN_QEMU: &str = "10.1";
/// Id prefix of the ports we lay out (`pcietun-rp1` …).
pub const PORT_PREFIX: &str = "pcietun-rp";

/// How the guest learns of a hot-plug.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HotplugMode {
    /// PCIe native (pciehp in Linux): presence detect / attention button on the root port.
    Native,
    /// ACPI (acpiphp in Linux): q35's default for ports since QEMU 6.1.
    Acpi,
}

impl std::str::FromStr for HotplugMode {
    type Err = QemuArgsError;
    fn from_str(s: &str) -> Result<Self, QemuArgsError> {
        match s {
            "native" | "pcie" => Ok(Self::Native),
            "acpi" => Ok(Self::Acpi),
            _ => Err(QemuArgsError::BadHotplug(s.to_string())),
        }
    }
}

/// What `qemu-args` lays out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuArgs {
    /// Free hot-plug root ports.
    pub ports: u8,
    /// Guest RAM in bytes.
    pub memory: u64,
    /// QMP socket path.
    pub qmp: PathBuf,
    /// Hot-plug signalling.
    pub hotplug: HotplugMode,
    /// 32-bit non-prefetchable window reserved per port (BARs of hot-added devices).
    pub mem_reserve: u64,
    /// 64-bit prefetchable window reserved per port.
    pub pref64_reserve: u64,
    /// I/O window reserved per port (0: none; I/O space is 64 KiB for the whole machine).
    pub io_reserve: u64,
    /// First chassis number to use (libvirt and other ports must not collide).
    pub first_chassis: u8,
}

impl Default for QemuArgs {
    fn default() -> Self {
        Self {
            ports: 4,
            memory: 1 << 30,
            qmp: PathBuf::from("/run/pcietun/vm.qmp"),
            hotplug: HotplugMode::Native,
            mem_reserve: 64 << 20,
            pref64_reserve: 256 << 20,
            io_reserve: 0,
            first_chassis: 1,
        }
    }
}

/// Errors in `qemu-args` options.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QemuArgsError {
    /// A size QEMU would not take.
    #[error("bad size {0:?}: use a number with an optional K, M, G or T suffix (e.g. 2G)")]
    BadSize(String),
    /// Not `native` or `acpi`.
    #[error("bad hot-plug mode {0:?}: use native or acpi")]
    BadHotplug(String),
    /// More ports than chassis numbers, or none.
    #[error("{0} ports: use 1 to 32")]
    BadPorts(u32),
    /// A path QEMU's option syntax cannot carry (a comma).
    #[error("{0:?}: QEMU option values cannot contain ','")]
    BadPath(PathBuf),
}

/// Parse a QEMU-style size: `512M`, `2G`, `4096`, `64K`, `1T` (binary units).
pub fn parse_size(s: &str) -> Result<u64, QemuArgsError> {
    let bad = || QemuArgsError::BadSize(s.to_string());
    let t = s.trim();
    let (num, shift) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(bad()),
            };
            (&t[..i], shift)
        }
        _ => (t, 0),
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    n.checked_mul(1u64 << shift).ok_or_else(bad)
}

/// A size as QEMU prints it (the largest exact binary unit).
pub fn format_size(n: u64) -> String {
    for (shift, unit) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
        if n != 0 && n % (1u64 << shift) == 0 {
            return format!("{}{unit}", n >> shift);
        }
    }
    n.to_string()
}

impl QemuArgs {
    /// Check the options.
    pub fn validate(&self) -> Result<(), QemuArgsError> {
        if self.ports == 0 || self.ports > 32 {
            return Err(QemuArgsError::BadPorts(self.ports.into()));
        }
        if self.qmp.to_string_lossy().contains(',') {
            return Err(QemuArgsError::BadPath(self.qmp.clone()));
        }
        Ok(())
    }

    /// The ids of the ports laid out.
    pub fn port_ids(&self) -> Vec<String> {
        (1..=self.ports)
            .map(|i| format!("{PORT_PREFIX}{i}"))
            .collect()
    }

    /// The options, one argument per element (ready for `Command::args` or shell quoting).
    pub fn args(&self) -> Vec<String> {
        let mem = format_size(self.memory);
        let mut a = vec![
            "-machine".to_string(),
            "q35,memory-backend=pcietun-mem".to_string(),
            "-m".to_string(),
            mem.clone(),
            "-object".to_string(),
            format!("memory-backend-memfd,id=pcietun-mem,size={mem},share=on"),
        ];
        if self.hotplug == HotplugMode::Native {
            a.push("-global".into());
            a.push("ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off".into());
        }
        for (i, id) in self.port_ids().into_iter().enumerate() {
            let n = u32::from(self.first_chassis) + i as u32;
            a.push("-device".into());
            a.push(format!(
                "pcie-root-port,id={id},bus=pcie.0,chassis={n},slot={n},hotplug=on,\
                 mem-reserve={},pref64-reserve={},io-reserve={}",
                format_size(self.mem_reserve),
                format_size(self.pref64_reserve),
                format_size(self.io_reserve)
            ));
        }
        a.push("-qmp".into());
        a.push(format!("unix:{},server=on,wait=off", self.qmp.display()));
        a
    }

    /// The options as one shell-quoted line.
    pub fn shell_line(&self) -> String {
        self.args()
            .iter()
            .map(|s| {
                if s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.,=:/+@".contains(c))
                {
                    s.clone()
                } else {
                    format!("'{}'", s.replace('\'', "'\\''"))
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The JSON `qemu-args --json` prints.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "min_qemu": MIN_QEMU,
            "args": self.args(),
            "ports": self.port_ids(),
            "qmp": self.qmp,
            "hotplug": self.hotplug,
            "memory": self.memory,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        for bad in ["", "G", "1.5G", "12X", "-1M", "99999999999T"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
        assert_eq!(format_size(1 << 30), "1G");
        assert_eq!(format_size(64 << 20), "64M");
        assert_eq!(format_size(0), "0");
        assert_eq!(format_size(1536 << 20), "1536M");
        assert_eq!(format_size(1000), "1000");
    }

    #[test]
    fn layout() {
        let q = QemuArgs {
            ports: 2,
            qmp: "/tmp/v m.qmp".into(),
            ..QemuArgs::default()
        };
        q.validate().unwrap();
        let a = q.args();
        assert_eq!(a[0..2], ["-machine", "q35,memory-backend=pcietun-mem"]);
        assert!(a.contains(&"memory-backend-memfd,id=pcietun-mem,size=1G,share=on".to_string()));
        assert!(a.contains(&"ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off".to_string()));
        let ports: Vec<&String> = a
            .iter()
            .filter(|s| s.starts_with("pcie-root-port"))
            .collect();
        assert_eq!(ports.len(), 2);
        assert!(ports[1].contains("id=pcietun-rp2,bus=pcie.0,chassis=2,slot=2,hotplug=on"));
        assert!(ports[0].contains("mem-reserve=64M,pref64-reserve=256M,io-reserve=0"));
        assert_eq!(a[a.len() - 1], "unix:/tmp/v m.qmp,server=on,wait=off");
        assert!(q
            .shell_line()
            .ends_with("-qmp 'unix:/tmp/v m.qmp,server=on,wait=off'"));
        let acpi = QemuArgs {
            hotplug: HotplugMode::Acpi,
            ..q.clone()
        };
        assert!(!acpi.args().iter().any(|s| s.contains("ICH9-LPC")));
        assert!(QemuArgs {
            ports: 0,
            ..QemuArgs::default()
        }
        .validate()
        .is_err());
        assert!(QemuArgs {
            qmp: "/a,b".into(),
            ..QemuArgs::default()
        }
        .validate()
        .is_err());
        assert_eq!(q.to_json()["min_qemu"], "10.1");
    }
}
