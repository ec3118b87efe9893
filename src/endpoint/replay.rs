//! The replay device: a real card's configuration space, from its `lspci -xxxx` dump, presented
//! exactly (header, capability chain, vendor-specific bytes) through `crate::pci::replay`, with
//! BARs of the given sizes backed by plain memory. For enumeration fidelity: drivers probe it
//! and see the real card's identity and capabilities; it has no behaviour behind its BARs.

use std::collections::HashMap;
use std::path::Path;

use thiserror::Error;

use super::device::{
    apply_atomic, AtomicOp, Decode, Device, DeviceContext, DeviceError, ResetKind,
};
use super::pcicfg::{self, pci_decode};
use crate::pci::replay::{replay, ReplayBar, ReplayError, ReplaySizes};
use crate::pci::{lspci, ConfigSpace};

/// Why a replay device could not be built.
#[derive(Debug, Error)]
pub enum ReplayDeviceError {
    /// The dump file could not be read.
    #[error("cannot read dump {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The dump text does not parse.
    #[error("dump {path}: {source}")]
    Parse {
        /// The file.
        path: String,
        /// What is wrong, with its line.
        source: lspci::LspciError,
    },
    /// The dump holds no function, or more than one.
    #[error("dump {path} holds {count} functions; a replay device takes exactly one")]
    Count {
        /// The file.
        path: String,
        /// Functions found.
        count: usize,
    },
    /// The sizes or the dump cannot make a configuration space.
    #[error("dump {path}: {source}")]
    Replay {
        /// The file.
        path: String,
        /// Why.
        source: ReplayError,
    },
}

const PAGE: u64 = 4096;

/// A BAR backed by sparse memory: pages appear when first written, reads elsewhere are 0.
#[derive(Debug)]
struct BarMemory {
    info: ReplayBar,
    pages: HashMap<u64, Box<[u8; PAGE as usize]>>,
}

impl BarMemory {
    fn read(&self, off: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let a = off + i as u64;
            *b = self
                .pages
                .get(&(a / PAGE))
                .map_or(0, |p| p[(a % PAGE) as usize]);
        }
    }

    fn write(&mut self, off: u64, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            let a = off + i as u64;
            self.pages
                .entry(a / PAGE)
                .or_insert_with(|| Box::new([0; PAGE as usize]))[(a % PAGE) as usize] = *b;
        }
    }
}

/// A replayed card.
#[derive(Debug)]
pub struct ReplayDevice {
    name: String,
    cfg: ConfigSpace,
    bars: Vec<BarMemory>,
}

impl ReplayDevice {
    /// From the raw configuration bytes of one function and `barN=SIZE,…` options.
    pub fn from_config(
        name: &str,
        config: &[u8],
        sizes: &ReplaySizes,
    ) -> Result<Self, ReplayError> {
        let r = replay(config, sizes)?;
        Ok(ReplayDevice {
            name: name.to_string(),
            cfg: r.config,
            bars: r
                .bars
                .into_iter()
                .map(|info| BarMemory {
                    info,
                    pages: HashMap::new(),
                })
                .collect(),
        })
    }

    /// From an `lspci -xxxx` dump file holding one function, with `barN=SIZE` sizes.
    pub fn from_file(path: &Path, sizes: &ReplaySizes) -> Result<Self, ReplayDeviceError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ReplayDeviceError::Read {
            path: p.clone(),
            source,
        })?;
        let funcs = lspci::parse(&text).map_err(|source| ReplayDeviceError::Parse {
            path: p.clone(),
            source,
        })?;
        if funcs.len() != 1 {
            return Err(ReplayDeviceError::Count {
                path: p,
                count: funcs.len(),
            });
        }
        Self::from_config("replay", &funcs[0].config, sizes)
            .map_err(|source| ReplayDeviceError::Replay { path: p, source })
    }

    /// The BARs it implements, with their sizes (and whether a size was guessed).
    pub fn bars(&self) -> Vec<ReplayBar> {
        self.bars.iter().map(|b| b.info).collect()
    }

    fn bar_mut(&mut self, bar: u8) -> Result<&mut BarMemory, DeviceError> {
        self.bars
            .iter_mut()
            .find(|b| b.info.index == usize::from(bar))
            .ok_or(DeviceError::Unsupported("no such BAR"))
    }
}

impl Device for ReplayDevice {
    fn name(&self) -> &str {
        &self.name
    }

    fn attach(&mut self, _ctx: DeviceContext) {
        // No behaviour: a replayed card never masters DMA or raises interrupts.
    }

    fn config_read(&mut self, reg: u16) -> u32 {
        pcicfg::config_read(&self.cfg, reg)
    }

    fn config_write(&mut self, reg: u16, value: u32, be: u8) -> bool {
        pcicfg::config_write(&mut self.cfg, reg, value, be)
    }

    fn decode(&self) -> Decode {
        let sizes: Vec<ReplayBar> = self.bars.iter().map(|b| b.info).collect();
        pci_decode(&self.cfg, &sizes)
    }

    fn bar_read(&mut self, bar: u8, offset: u64, data: &mut [u8]) -> Result<(), DeviceError> {
        self.bar_mut(bar)?.read(offset, data);
        Ok(())
    }

    fn bar_write(&mut self, bar: u8, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        self.bar_mut(bar)?.write(offset, data);
        Ok(())
    }

    fn bar_atomic(&mut self, bar: u8, offset: u64, op: AtomicOp) -> Result<u64, DeviceError> {
        let m = self.bar_mut(bar)?;
        let mut cur = [0u8; 8];
        m.read(offset, &mut cur);
        let old = apply_atomic(&mut cur, op)?;
        m.write(offset, &cur);
        Ok(old)
    }

    fn reset(&mut self, _kind: ResetKind) {
        self.cfg.reset();
        for b in &mut self.bars {
            b.pages.clear();
        }
    }
}
