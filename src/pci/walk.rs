//! Walking the capability lists of a configuration image the way an operating system does
//! (PCI Local Bus 3.0 §6.7, PCIe Base 4.0 §7.6.1): used on dumps and on emulated spaces.

use super::caps::CapabilityId;
use super::spec::{self, header as h, status};

/// A capability found by walking a configuration image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FoundCapability {
    /// Offset of its header.
    pub offset: u16,
    /// Its ID (for extended ones, with the version from the header).
    pub id: CapabilityId,
}

/// Walks the standard and extended capability lists of a configuration image (a dump, or a
/// [`ConfigSpace::snapshot`](super::ConfigSpace::snapshot)) the way an OS does: pointers masked to dword alignment, loops
/// and out-of-range pointers end the walk. The extended list is only walked when the image
/// is longer than 256 bytes.
pub fn walk_capabilities(image: &[u8]) -> Vec<FoundCapability> {
    let get = |o: usize| image.get(o).copied().unwrap_or(0);
    let mut out = Vec::new();
    if get(h::STATUS) as u16 & status::CAPABILITIES_LIST != 0 {
        let mut ptr = (get(h::CAPABILITIES_POINTER) & 0xfc) as usize;
        let mut seen = [false; 64];
        while (spec::CAP_START..spec::LEGACY_CONFIG_SIZE).contains(&ptr) && !seen[ptr / 4] {
            seen[ptr / 4] = true;
            out.push(FoundCapability {
                offset: ptr as u16,
                id: CapabilityId::Standard(get(ptr)),
            });
            ptr = (get(ptr + 1) & 0xfc) as usize;
        }
    }
    if image.len() > spec::LEGACY_CONFIG_SIZE {
        let mut ptr = spec::EXT_CAP_START;
        let mut seen = [false; 1024];
        while ptr >= spec::EXT_CAP_START
            && ptr + 4 <= image.len().min(spec::CONFIG_SPACE_SIZE)
            && !seen[ptr / 4]
        {
            seen[ptr / 4] = true;
            let hdr = u32::from_le_bytes([get(ptr), get(ptr + 1), get(ptr + 2), get(ptr + 3)]);
            if hdr == 0 || hdr == u32::MAX {
                break;
            }
            out.push(FoundCapability {
                offset: ptr as u16,
                id: CapabilityId::Extended {
                    id: hdr as u16,
                    version: ((hdr >> 16) & 0xf) as u8,
                },
            });
            ptr = ((hdr >> 20) & 0xffc) as usize;
        }
    }
    out
}
