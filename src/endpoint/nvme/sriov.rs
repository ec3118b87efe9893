//! SR-IOV for the NVMe controller: one backing store behind a physical function and up to
//! [`MAX_VFS`] virtual functions, each a controller of its own whose namespace is its own
//! slice of the store — how SR-IOV SSDs share one drive between virtual machines or, here,
//! between servers (PCIe r5.0 §9 Single Root I/O Virtualization; each VF is a separate NVMe
//! controller per NVMe 1.4c §7.6.1, with its own registers, queues, MSI-X and Identify data).
//!
//! The slices are fixed when the controller is built ([`SliceLayout`]), from TotalVFs and the
//! store's size or a configured per-VF size, and laid out in order: the PF keeps slice 0 (the
//! first blocks, everything the VFs do not take), VF *n* (1-based, Routing ID PF + *n*) gets
//! slice *n*. A VF's slice is the same whatever NumVFs is, so its data stays where it is when
//! VFs are disabled and enabled again with another count. The namespaces never overlap and
//! every access is bounds-checked against its own slice (`namespace.rs`), so nothing a VF's
//! host submits can reach another function's blocks.
//!
//! Every controller is its own NVM subsystem: serial numbers differ (the PF's with `V<n>`
//! appended for VF *n*), so do the subsystem NQNs derived from them and the namespace
//! identifiers (NGUID, EUI-64, UUID), and CNTLID is 1 for the PF and 1 + *n* for VF *n*. A host
//! that is given two VFs therefore sees two independent drives, not two paths to one. The
//! Virtualization Management command of NVMe's virtualization enhancements (flexible
//! resources moved between controllers at run time) is not implemented.

use std::path::PathBuf;
use std::sync::Arc;

use thiserror::Error;

use super::backend::Backend;
use super::namespace::Namespace;
use super::{bars, config_space, identity, NvmeController, NvmeOptions};
use crate::pci::SriovConfig;

/// Most virtual functions one NVMe physical function offers (TotalVFs). Their Routing IDs
/// (PF + 1 … PF + TotalVFs) must also fit the bus and miss every other function there; the
/// endpoint skips, with a warning, a VF whose Routing ID is taken.
pub const MAX_VFS: u16 = 255;

/// Serial number length of Identify Controller (SN, ASCII).
const SERIAL_LEN: usize = 20;

/// System page sizes offered (4, 8 and 16 KiB): every one divides the 16 KiB VF BAR0, so
/// VF *n*'s BAR0 at VF BAR0 + *n* × 16 KiB is always page-aligned (PCIe r5.0 §9.3.3.13).
const SUPPORTED_PAGE_SIZES: u32 = 0x7;

/// SR-IOV parameters of an NVMe physical function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NvmeSriov {
    /// TotalVFs: how many virtual functions the PF offers, 1..=[`MAX_VFS`].
    pub vfs: u16,
    /// Bytes of each VF's namespace (a multiple of the block size); `None` cuts the store
    /// into `vfs + 1` equal slices.
    pub vf_size: Option<u64>,
}

/// Why a backing store cannot be cut into the slices asked for.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SliceError {
    /// TotalVFs out of range.
    #[error("vfs = {vfs}: an NVMe SR-IOV physical function offers 1 to {MAX_VFS} VFs")]
    VfCount {
        /// What was asked for.
        vfs: u16,
    },
    /// The per-VF size is not a positive multiple of the block size.
    #[error("vf_size = {size} bytes is not a positive multiple of the {block}-byte block")]
    VfSize {
        /// What was asked for.
        size: u64,
        /// The store's logical block size.
        block: u32,
    },
    /// The store cannot hold the VF slices and a non-empty PF slice.
    #[error(
        "NVMe backing store {path} ({blocks} blocks) cannot hold {vfs} VF namespaces of \
         {vf_blocks} blocks and keep at least one block for the physical function"
    )]
    TooSmall {
        /// The store.
        path: PathBuf,
        /// Its size in blocks.
        blocks: u64,
        /// TotalVFs.
        vfs: u16,
        /// Blocks per VF (0 when the equal split leaves less than one block each).
        vf_blocks: u64,
    },
}

/// Where each function's namespace lies in the backing store, in blocks: the PF's slice
/// first, then one slice of [`SliceLayout::vf_blocks`] per VF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SliceLayout {
    pf_blocks: u64,
    vf_blocks: u64,
    vfs: u16,
}

impl SliceLayout {
    /// Cut `backend` for `sriov`.
    pub fn new(backend: &Backend, sriov: NvmeSriov) -> Result<SliceLayout, SliceError> {
        let NvmeSriov { vfs, vf_size } = sriov;
        if vfs == 0 || vfs > MAX_VFS {
            return Err(SliceError::VfCount { vfs });
        }
        let total = backend.blocks();
        let bs = u64::from(backend.block_size());
        let vf_blocks = match vf_size {
            Some(size) if size == 0 || size % bs != 0 => {
                return Err(SliceError::VfSize {
                    size,
                    block: backend.block_size(),
                })
            }
            Some(size) => size / bs,
            None => total / (u64::from(vfs) + 1),
        };
        let taken = vf_blocks.checked_mul(u64::from(vfs));
        match taken {
            Some(t) if vf_blocks > 0 && t < total => Ok(SliceLayout {
                pf_blocks: total - t,
                vf_blocks,
                vfs,
            }),
            _ => Err(SliceError::TooSmall {
                path: backend.path().to_path_buf(),
                blocks: total,
                vfs,
                vf_blocks,
            }),
        }
    }

    /// The PF's slice: first block and length (at least one block).
    pub fn pf(&self) -> (u64, u64) {
        (0, self.pf_blocks)
    }

    /// VF `index`'s (0-based: VF *index + 1*) slice: first block and length.
    pub fn vf(&self, index: u16) -> Option<(u64, u64)> {
        (index < self.vfs).then(|| {
            (
                self.pf_blocks + u64::from(index) * self.vf_blocks,
                self.vf_blocks,
            )
        })
    }

    /// Blocks of each VF's namespace.
    pub fn vf_blocks(&self) -> u64 {
        self.vf_blocks
    }

    /// TotalVFs.
    pub fn vfs(&self) -> u16 {
        self.vfs
    }
}

/// What a physical function needs to build its virtual functions.
#[derive(Debug)]
pub(super) struct VfPlan {
    backend: Arc<Backend>,
    layout: SliceLayout,
    opts: NvmeOptions,
    /// The PF's serial number, which the VFs' extend.
    serial: String,
    /// The PF's identifier seed, which the VFs' extend.
    seed: String,
}

impl VfPlan {
    pub(super) fn new(
        backend: Arc<Backend>,
        layout: SliceLayout,
        opts: &NvmeOptions,
        serial: &str,
        seed: String,
    ) -> VfPlan {
        VfPlan {
            backend,
            layout,
            opts: opts.clone(),
            serial: serial.to_string(),
            seed,
        }
    }

    fn namespace(&self, (first, blocks): (u64, u64)) -> Namespace {
        Namespace::slice(self.backend.clone(), first, blocks)
            .expect("SliceLayout::new checked that every slice fits the store")
    }

    /// The PF's namespace: slice 0.
    pub(super) fn pf_namespace(&self) -> Namespace {
        self.namespace(self.layout.pf())
    }

    /// The PF's SR-IOV capability: TotalVFs = InitialVFs, VF *n* at Routing ID PF + *n*, VF
    /// BAR0 as the PF's BAR0.
    pub(super) fn sriov_config(&self) -> SriovConfig {
        SriovConfig {
            initial_vfs: self.layout.vfs,
            total_vfs: self.layout.vfs,
            first_vf_offset: 1,
            vf_stride: 1,
            vf_device_id: self.opts.vf_device_id,
            supported_page_sizes: SUPPORTED_PAGE_SIZES,
            vf_bars: bars(),
        }
    }

    /// VF `index` (0-based) as a controller of its own over its slice.
    pub(super) fn controller(&self, index: u16) -> Option<NvmeController> {
        let slice = self.layout.vf(index)?;
        let n = index + 1;
        let id = identity(
            &self.opts,
            &format!("{}#vf{n}", self.seed),
            Some(vf_serial(&self.serial, n)),
            1 + n,
        );
        let cfg = config_space(&self.opts, None, true);
        Some(NvmeController::build(cfg, self.namespace(slice), id, None))
    }
}

/// VF `n`'s serial number: the PF's with `V<n>` appended, the PF's part shortened so the
/// whole fits the 20 bytes of Identify Controller SN.
fn vf_serial(pf: &str, n: u16) -> String {
    let suffix = format!("V{n}");
    let keep = SERIAL_LEN - suffix.len();
    let base: String = pf
        .trim()
        .chars()
        .filter(char::is_ascii)
        .take(keep)
        .collect();
    format!("{base}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(blocks: u64) -> (tempfile::TempDir, Backend) {
        let dir = tempfile::tempdir().unwrap();
        let b = Backend::create(&dir.path().join("ns.img"), blocks * 512).unwrap();
        (dir, b)
    }

    #[test]
    fn equal_split_gives_the_pf_the_first_slice_and_the_remainder() {
        let (_d, b) = store(1003);
        let l = SliceLayout::new(
            &b,
            NvmeSriov {
                vfs: 3,
                vf_size: None,
            },
        )
        .unwrap();
        assert_eq!(l.vf_blocks(), 250);
        assert_eq!(l.pf(), (0, 253), "PF: 250 blocks and the 3 left over");
        assert_eq!(l.vf(0), Some((253, 250)));
        assert_eq!(l.vf(2), Some((753, 250)));
        assert_eq!(
            l.vf(2).map(|(f, n)| f + n),
            Some(1003),
            "ends at the store's end"
        );
        assert_eq!(l.vf(3), None);
    }

    #[test]
    fn a_configured_vf_size_leaves_the_rest_to_the_pf() {
        let (_d, b) = store(1000);
        let l = SliceLayout::new(
            &b,
            NvmeSriov {
                vfs: 2,
                vf_size: Some(100 * 512),
            },
        )
        .unwrap();
        assert_eq!(
            (l.pf(), l.vf(0), l.vf(1)),
            ((0, 800), Some((800, 100)), Some((900, 100)))
        );
    }

    #[test]
    fn bad_layouts_are_refused_with_their_reason() {
        let (_d, b) = store(10);
        let mk = |vfs, vf_size| SliceLayout::new(&b, NvmeSriov { vfs, vf_size });
        assert_eq!(mk(0, None), Err(SliceError::VfCount { vfs: 0 }));
        assert_eq!(mk(256, None), Err(SliceError::VfCount { vfs: 256 }));
        assert_eq!(
            mk(1, Some(1000)),
            Err(SliceError::VfSize {
                size: 1000,
                block: 512
            })
        );
        assert!(matches!(mk(1, Some(0)), Err(SliceError::VfSize { .. })));
        assert!(matches!(
            mk(2, Some(5 * 512)),
            Err(SliceError::TooSmall { vf_blocks: 5, .. })
        ));
        assert!(matches!(
            mk(10, None),
            Err(SliceError::TooSmall { vf_blocks: 0, .. })
        ));
        assert!(mk(9, None).is_ok(), "one block each");
        let msg = mk(2, Some(5 * 512)).unwrap_err().to_string();
        assert!(msg.contains("ns.img") && msg.contains("10 blocks"), "{msg}");
    }

    #[test]
    fn vf_serials_are_distinct_and_fit() {
        assert_eq!(vf_serial("PT0001", 1), "PT0001V1");
        let long = "ABCDEFGHIJKLMNOPQRST";
        assert_eq!(vf_serial(long, 7), "ABCDEFGHIJKLMNOPQRV7");
        assert_eq!(vf_serial(long, 255), "ABCDEFGHIJKLMNOPV255");
        assert_ne!(vf_serial(long, 1), vf_serial(long, 2));
        assert!(vf_serial(long, 100).len() <= SERIAL_LEN);
    }
}
