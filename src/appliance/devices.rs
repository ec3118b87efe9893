//! Building the cards a configuration names: NVMe controllers on a file or block device (or
//! a temporary file), DMA engines (optionally SR-IOV physical functions), replays of a real
//! card's `lspci -xxxx` dump, and devices of vfio-user servers (connected to, or started and
//! supervised) — each added to one [`Proxy`] at its device/function number
//! (same device number, other function: a multi-function card, PCIe r5.0 §7.5.1.1.9).
//!
//! Everything is built before anything listens: a backing file that cannot be opened, a dump
//! that does not parse or two devices at one number are an [`ApplianceError`], and nothing
//! runs half-configured.

use crossbeam::channel::Receiver;

use super::config::{ApplianceConfig, DeviceSpec, MAX_DMA_BUFFER};
use super::inventory::{FunctionEntry, FunctionId, FunctionState, Inventory, PciIdentity};
use super::ApplianceError;
use crate::endpoint::device::ResetKind;
use crate::endpoint::dma_engine::DmaEngine;
use crate::endpoint::nvme::{Backend, NvmeController, NvmeOptions};
use crate::endpoint::replay::ReplayDevice;
use crate::endpoint::vfio_user_client::{ClientConfig, ClientError, Health, VfioUserClient};
use crate::endpoint::{Device, Proxy, ProxyConfig};
use crate::pci::replay::ReplaySizes;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Something worth telling the operator about a device that was built anyway.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildWarning {
    /// A replayed BAR whose size was not configured; its size was guessed from the address.
    #[error(
        "{}: BAR {index} size not given, guessed {size} bytes (give bar{index}=SIZE)",
        dump.display()
    )]
    GuessedBarSize {
        /// The dump.
        dump: PathBuf,
        /// BAR index.
        index: usize,
        /// Guessed size in bytes.
        size: u64,
    },
}

/// Temporary backing files, deleted when this is dropped (after the devices on them).
#[derive(Debug, Default)]
pub struct Scratch(Vec<tempfile::TempDir>);

impl Scratch {
    /// Keep `other`'s files as long as these.
    pub(crate) fn append(&mut self, mut other: Scratch) {
        self.0.append(&mut other.0);
    }
}

/// The devices of a configuration, built and added to an endpoint.
#[derive(Debug)]
pub struct Built {
    /// The endpoint proxy holding every function.
    pub endpoint: Proxy,
    /// Its outbound TLP queue (completions, DMA requests, interrupts, in wire order).
    pub outbound: Receiver<Vec<u8>>,
    /// One entry per function built (all unassigned), and the configured hosts.
    pub inventory: Inventory,
    /// What the operator should know.
    pub warnings: Vec<BuildWarning>,
    /// How to tell whether each function backed by another process (a vfio-user server) is
    /// still served: the router watches these and fails a function whose server is gone.
    pub probes: Vec<(FunctionId, HealthProbe)>,
    scratch: Scratch,
}

/// Whether a function's backing is still there: `None` while it serves, else why it failed
/// (cheap; polled by the serving loop) — and, for a backing that can come back (a vfio-user
/// server the appliance starts, or whose socket may reappear), how to bring it back.
#[derive(Clone)]
pub struct HealthProbe {
    check: Arc<dyn Fn() -> Option<String> + Send + Sync>,
    revive: Option<Reviver>,
}

/// One attempt to bring a failed function's backing back: a new device model at power-on
/// state and its probe, or why not. It blocks (it starts a process, connects, reads config
/// space), so the router runs it on a thread of its own, never on the serving thread.
pub type ReviveFn = dyn Fn() -> Result<(Box<dyn Device>, HealthProbe), String> + Send + Sync;

/// How to bring a failed function back (see [`ReviveFn`]).
#[derive(Clone)]
pub struct Reviver(pub Arc<ReviveFn>);

impl std::fmt::Debug for Reviver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reviver")
    }
}

impl HealthProbe {
    /// A probe: `check` returns `None` while the backing serves, else why it failed.
    pub fn new(check: impl Fn() -> Option<String> + Send + Sync + 'static) -> Self {
        HealthProbe {
            check: Arc::new(check),
            revive: None,
        }
    }

    /// The same probe, with a way to bring the backing back once it failed.
    pub fn with_reviver(
        mut self,
        revive: impl Fn() -> Result<(Box<dyn Device>, HealthProbe), String> + Send + Sync + 'static,
    ) -> Self {
        self.revive = Some(Reviver(Arc::new(revive)));
        self
    }

    /// `None` while the backing serves, else why it failed.
    pub fn check(&self) -> Option<String> {
        (self.check)()
    }

    /// How to bring the backing back, if it can come back.
    pub fn reviver(&self) -> Option<&Reviver> {
        self.revive.as_ref()
    }
}

impl std::fmt::Debug for HealthProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthProbe")
            .field("failed", &self.check())
            .field("revivable", &self.revive.is_some())
            .finish()
    }
}

impl Built {
    /// The parts; keep the [`Scratch`] alive as long as the endpoint.
    pub fn into_parts(self) -> (Proxy, Receiver<Vec<u8>>, Scratch) {
        (self.endpoint, self.outbound, self.scratch)
    }
}

/// Build every device of `cfg` (backing files opened or created) into a new endpoint.
pub fn build(cfg: &ApplianceConfig) -> Result<Built, ApplianceError> {
    let (mut endpoint, outbound) = Proxy::new(ProxyConfig {
        dma_timeout: cfg.dma_timeout,
        ..ProxyConfig::default()
    });
    let mut warnings = Vec::new();
    let mut scratch = Scratch::default();
    let mut inventory = Inventory::new(cfg.accepted_host_ids());
    let mut probes = Vec::new();
    for d in &cfg.devices {
        let (mut dev, probe) = build_device(&d.spec, &mut warnings, &mut scratch)?;
        // Read its identity before the endpoint owns it (nothing has touched its registers).
        let entry = FunctionEntry::describe(d.bdf, d.name.as_deref(), &mut *dev)?;
        if let Some(p) = probe {
            probes.push((entry.id.clone(), p));
        }
        endpoint.add_function(d.bdf, dev)?;
        let vfs = pool_vfs(&mut endpoint, &entry, d.spec.pooled_vfs())?;
        inventory.add(entry)?;
        for vf in vfs {
            inventory.add(vf)?;
        }
    }
    Ok(Built {
        endpoint,
        outbound,
        inventory,
        warnings,
        probes,
        scratch,
    })
}

/// Be the driver of the physical function `pf` (already in `endpoint`): enable `n` of its
/// virtual functions and present each standalone (`Proxy::attach_vf_view`), so that each is a
/// function of the pool a host can be given on its own. Returns their inventory entries
/// (`PF-ID.vfI`, unassigned); none when `n` is 0.
pub(crate) fn pool_vfs(
    endpoint: &mut Proxy,
    pf: &FunctionEntry,
    n: u16,
) -> Result<Vec<FunctionEntry>, ApplianceError> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let vf_err = |source| ApplianceError::Vfs {
        function: pf.id.clone(),
        source,
    };
    let enabled = endpoint.enable_vfs(pf.bdf, n).map_err(vf_err)?;
    let mut out = Vec::with_capacity(enabled.len());
    for index in 0..n {
        let bdf = endpoint.attach_vf_view(pf.bdf, index).map_err(vf_err)?;
        let mut dword = |reg| endpoint.config_read(bdf, reg).unwrap_or(u32::MAX);
        let ids = PciIdentity::from_dwords(dword(0x00), dword(0x08), dword(0x2c));
        out.push(FunctionEntry {
            id: pf.id.vf(index),
            bdf,
            vf_of: Some((pf.id.clone(), index)),
            model: pf.model.clone(),
            ids,
            total_vfs: 0,
            state: FunctionState::Unassigned,
            failure: None,
        });
    }
    Ok(out)
}

pub(crate) fn build_device(
    spec: &DeviceSpec,
    warnings: &mut Vec<BuildWarning>,
    scratch: &mut Scratch,
) -> Result<(Box<dyn Device>, Option<HealthProbe>), ApplianceError> {
    let dev: Box<dyn Device> = match spec {
        DeviceSpec::Nvme {
            path,
            create_size,
            serial,
            sriov,
        } => {
            let backend = match create_size {
                Some(size) if !path.exists() => Backend::create(path, *size),
                _ => Backend::open(path),
            }?;
            let opts = NvmeOptions {
                serial: serial.clone(),
                ..NvmeOptions::default()
            };
            match sriov {
                None => Box::new(NvmeController::new(backend, opts)),
                Some(s) => Box::new(NvmeController::with_vfs(backend, opts, *s).map_err(
                    |source| ApplianceError::NvmeSlices {
                        path: path.clone(),
                        source,
                    },
                )?),
            }
        }
        DeviceSpec::ScratchNvme { size } => {
            let dir = tempfile::tempdir().map_err(ApplianceError::Scratch)?;
            let backend = Backend::create(&dir.path().join("nvme0n1.img"), *size)?;
            scratch.0.push(dir);
            Box::new(NvmeController::new(backend, NvmeOptions::default()))
        }
        DeviceSpec::Dma { buffer, vfs } => {
            if *buffer > MAX_DMA_BUFFER {
                return Err(ApplianceError::DmaBufferTooLarge(*buffer));
            }
            let buffer =
                usize::try_from(*buffer).map_err(|_| ApplianceError::DmaBufferTooLarge(*buffer))?;
            Box::new(DmaEngine::with_vfs(buffer, *vfs))
        }
        DeviceSpec::Replay { dump, bars } => {
            let mut sizes = ReplaySizes::default();
            for (i, size) in bars {
                if let Some(slot) = sizes.bars.get_mut(usize::from(*i)) {
                    *slot = Some(*size);
                }
            }
            let dev = ReplayDevice::from_file(dump, &sizes)?;
            for b in dev.bars().iter().filter(|b| b.inferred) {
                warnings.push(BuildWarning::GuessedBarSize {
                    dump: dump.clone(),
                    index: b.index,
                    size: b.size,
                });
            }
            Box::new(dev)
        }
        DeviceSpec::VfioUser {
            socket,
            connect_timeout,
            start,
        } => {
            let mut c = ClientConfig::new(socket);
            if let Some(t) = connect_timeout {
                c.connect_timeout = *t;
            }
            let (client, probe) = vfio_user_function(&c, start)?;
            return Ok((Box::new(client), Some(probe)));
        }
    };
    Ok((dev, None))
}

/// Longest a reconnect attempt to a plain socket (no `start`) waits for it: the attempts
/// themselves are the retries, spaced by the router's backoff.
const RECONNECT_WAIT: Duration = Duration::from_millis(200);

/// Start (`start` non-empty) or connect to a vfio-user server, and the probe that watches it
/// and, once it has failed, starts it again (or reconnects when its socket is back).
fn vfio_user_function(
    c: &ClientConfig,
    start: &[String],
) -> Result<(VfioUserClient, HealthProbe), ClientError> {
    let client = if start.is_empty() {
        VfioUserClient::connect(c)?
    } else {
        VfioUserClient::start(start, c)?
    };
    let probe = vfio_user_probe(&client, c.clone(), start.to_vec());
    Ok((client, probe))
}

fn vfio_user_probe(client: &VfioUserClient, c: ClientConfig, start: Vec<String>) -> HealthProbe {
    let h = client.health_handle();
    HealthProbe::new(move || match h.health() {
        Health::Failed(why) => Some(why.to_string()),
        Health::Serving | Health::Unresponsive => None,
    })
    .with_reviver(move || {
        let mut c = c.clone();
        if start.is_empty() {
            c.connect_timeout = c.connect_timeout.min(RECONNECT_WAIT);
        }
        let (mut client, probe) = vfio_user_function(&c, &start).map_err(|e| e.to_string())?;
        // Power-on state, whatever the server kept from before (a server that survived its
        // client, reached again through a reappeared socket).
        client.reset(ResetKind::Conventional);
        Ok((Box::new(client) as Box<dyn Device>, probe))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::appliance::config::DeviceConfig;
    use crate::endpoint::nvme::NvmeSriov;
    use crate::endpoint::Bdf;

    fn cfg(devices: Vec<(Bdf, DeviceSpec)>) -> ApplianceConfig {
        ApplianceConfig {
            devices: devices
                .into_iter()
                .map(|(bdf, spec)| DeviceConfig {
                    bdf,
                    name: None,
                    spec,
                })
                .collect(),
            ..ApplianceConfig::default()
        }
    }

    #[test]
    fn builds_a_multi_function_card_in_order() {
        let b = build(&cfg(vec![
            (Bdf::new(0, 0, 0), DeviceSpec::ScratchNvme { size: 1 << 20 }),
            (
                Bdf::new(0, 0, 1),
                DeviceSpec::Dma {
                    buffer: 4096,
                    vfs: 2,
                },
            ),
        ]))
        .unwrap();
        // The DMA engine's two VFs are enabled by the appliance, at the functions after it.
        assert_eq!(
            b.endpoint.functions(),
            vec![
                Bdf::new(0, 0, 0),
                Bdf::new(0, 0, 1),
                Bdf::new(0, 0, 2),
                Bdf::new(0, 0, 3)
            ]
        );
        assert!(b.warnings.is_empty());
        let inv = b.inventory.functions();
        assert_eq!(inv.len(), 4);
        assert_eq!(inv[0].id.as_str(), "00.0");
        assert_eq!(
            inv[0].ids.class, 0x01_08_02,
            "NVMe class read from config space"
        );
        assert_eq!(inv[1].id.as_str(), "00.1");
        assert_eq!(inv[1].ids.vendor, 0x1b36);
        assert_eq!(inv[1].total_vfs, 2);
        // Each VF an entry of its own, read through its standalone view: the PF's vendor,
        // the VF Device ID, the PF's class.
        for (i, vf) in inv[2..].iter().enumerate() {
            assert_eq!(vf.id.as_str(), format!("00.1.vf{i}"));
            assert_eq!(vf.bdf, Bdf::new(0, 0, 2 + i as u8));
            assert_eq!(vf.vf_of, Some((inv[1].id.clone(), i as u16)));
            assert_eq!(vf.ids.vendor, 0x1b36);
            assert_ne!(vf.ids.device, 0xffff, "a view shows the VF Device ID");
            assert_eq!(vf.ids.class, inv[1].ids.class);
            assert_eq!(vf.state, FunctionState::Unassigned);
            assert_eq!(vf.total_vfs, 0);
        }
    }

    #[test]
    fn pools_the_virtual_functions_of_an_nvme_drive() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("ssd.img");
        let b = build(&cfg(vec![(
            Bdf::new(0, 3, 0),
            DeviceSpec::Nvme {
                path: img,
                create_size: Some(12 << 20),
                serial: Some("PT9".into()),
                sriov: Some(NvmeSriov {
                    vfs: 2,
                    vf_size: Some(4 << 20),
                }),
            },
        )]))
        .unwrap();
        let inv = b.inventory.functions();
        let ids: Vec<&str> = inv.iter().map(|f| f.id.as_str()).collect();
        assert_eq!(ids, ["03.0", "03.0.vf0", "03.0.vf1"]);
        for vf in &inv[1..] {
            assert_eq!(vf.ids.class, 0x01_08_02, "each VF is an NVMe controller");
            assert_eq!(vf.model, "nvme");
        }
        // A store too small for the slices asked for is refused, naming the file.
        let small = dir.path().join("small.img");
        let e = build(&cfg(vec![(
            Bdf::new(0, 0, 0),
            DeviceSpec::Nvme {
                path: small,
                create_size: Some(4 << 20),
                serial: None,
                sriov: Some(NvmeSriov {
                    vfs: 2,
                    vf_size: Some(4 << 20),
                }),
            },
        )]))
        .unwrap_err();
        assert!(matches!(e, ApplianceError::NvmeSlices { .. }), "{e}");
        assert!(e.to_string().contains("small.img"), "{e}");
    }

    #[test]
    fn refuses_what_cannot_be_built() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.img");
        let e = build(&cfg(vec![(
            Bdf::new(0, 0, 0),
            DeviceSpec::Nvme {
                path: missing.clone(),
                create_size: None,
                serial: None,
                sriov: None,
            },
        )]))
        .unwrap_err();
        assert!(matches!(e, ApplianceError::Nvme(_)), "{e}");
        assert!(e.to_string().contains("missing.img"), "{e}");
        let e = build(&cfg(vec![(
            Bdf::new(0, 0, 0),
            DeviceSpec::Dma {
                buffer: 2 << 30,
                vfs: 0,
            },
        )]))
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "DMA engine buffer of 2147483648 bytes is over the 1 GiB limit"
        );
        let dma = DeviceSpec::Dma {
            buffer: 4096,
            vfs: 0,
        };
        let e = build(&cfg(vec![
            (Bdf::new(0, 1, 0), dma.clone()),
            (Bdf::new(0, 1, 0), dma),
        ]))
        .unwrap_err();
        assert!(matches!(e, ApplianceError::Endpoint(_)), "{e}");
    }

    #[test]
    fn nvme_backing_file_is_created_with_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.img");
        build(&cfg(vec![(
            Bdf::new(0, 0, 0),
            DeviceSpec::Nvme {
                path: img.clone(),
                create_size: Some(8 << 20),
                serial: Some("S1".into()),
                sriov: None,
            },
        )]))
        .unwrap();
        assert_eq!(std::fs::metadata(&img).unwrap().len(), 8 << 20);
    }

    #[test]
    fn replay_without_bar_sizes_warns() {
        let dump = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/lspci/vmware-nvme.txt"
        );
        let b = build(&cfg(vec![(
            Bdf::new(0, 0, 0),
            DeviceSpec::Replay {
                dump: dump.into(),
                bars: vec![],
            },
        )]))
        .unwrap();
        assert!(!b.warnings.is_empty());
        assert!(
            b.warnings[0]
                .to_string()
                .contains("size not given, guessed"),
            "{}",
            b.warnings[0]
        );
        let b = build(&cfg(vec![(
            Bdf::new(0, 0, 0),
            DeviceSpec::Replay {
                dump: dump.into(),
                bars: vec![(0, 16 << 10), (2, 16)],
            },
        )]))
        .unwrap();
        assert!(b.warnings.is_empty(), "{:?}", b.warnings);
    }
}
