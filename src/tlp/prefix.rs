//! TLP prefixes, non-Flit mode (PCIe Base Specification §2.2.10): Local prefixes (MR-IOV,
//! vendor-defined) and End-End prefixes (Extended TPH §2.2.7.1.1, PASID §6.20, vendor-defined).
//!
//! Prefixes are kept as the raw DWs borrowed from the TLP; [`Prefix`] interprets one DW.

use super::packet::{MAX_E2E_PREFIXES, MAX_LOCAL_PREFIXES};
use core::fmt;

/// One prefix DW, interpreted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefix {
    /// Local prefix L\[3:0\]=0000: MR-IOV (24 bits of content).
    MrIov(u32),
    /// Local vendor-defined prefix VendPrefixL0 (1110) or L1 (1111).
    LocalVendor {
        /// 0 or 1.
        which: u8,
        /// Bits 23:0.
        content: u32,
    },
    /// End-End prefix 0000: Extended TPH, carrying ST\[15:8\].
    ExtendedTph {
        /// Steering Tag bits 15:8.
        st_hi: u8,
    },
    /// End-End prefix 0001: PASID (§6.20.2.1).
    Pasid {
        /// 20-bit Process Address Space ID.
        pasid: u32,
        /// Privileged Mode Requested.
        privileged: bool,
        /// Execute Requested.
        execute: bool,
    },
    /// End-End vendor-defined prefix VendPrefixE0 (1110) or E1 (1111).
    E2eVendor {
        /// 0 or 1.
        which: u8,
        /// Bits 23:0.
        content: u32,
    },
    /// A prefix type this codec does not name; carried through unchanged.
    Other(u32),
}

impl Prefix {
    /// Interpret one prefix DW (big-endian as on the wire).
    pub const fn from_dw(dw: u32) -> Prefix {
        let ty = (dw >> 24) as u8 & 0x1f;
        let content = dw & 0x00ff_ffff;
        match ty {
            0b0_0000 => Prefix::MrIov(content),
            0b0_1110 | 0b0_1111 => Prefix::LocalVendor {
                which: ty & 1,
                content,
            },
            0b1_0000 => Prefix::ExtendedTph {
                st_hi: (dw >> 16) as u8,
            },
            0b1_0001 => Prefix::Pasid {
                pasid: dw & 0xf_ffff,
                privileged: dw & (1 << 21) != 0,
                execute: dw & (1 << 22) != 0,
            },
            0b1_1110 | 0b1_1111 => Prefix::E2eVendor {
                which: ty & 1,
                content,
            },
            _ => Prefix::Other(dw),
        }
    }

    /// Encode back to a DW.
    pub const fn to_dw(self) -> u32 {
        match self {
            Prefix::MrIov(c) => 0x8000_0000 | (c & 0xff_ffff),
            Prefix::LocalVendor { which, content } => {
                0x8e00_0000 | ((which as u32 & 1) << 24) | (content & 0xff_ffff)
            }
            Prefix::ExtendedTph { st_hi } => 0x9000_0000 | ((st_hi as u32) << 16),
            Prefix::Pasid {
                pasid,
                privileged,
                execute,
            } => {
                0x9100_0000
                    | ((execute as u32) << 22)
                    | ((privileged as u32) << 21)
                    | (pasid & 0xf_ffff)
            }
            Prefix::E2eVendor { which, content } => {
                0x9e00_0000 | ((which as u32 & 1) << 24) | (content & 0xff_ffff)
            }
            Prefix::Other(dw) => dw,
        }
    }

    /// Whether this is an End-End prefix (Type bit 4).
    pub const fn is_end_to_end(dw: u32) -> bool {
        dw & 0x1000_0000 != 0
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Prefix::MrIov(c) => write!(f, "MR-IOV({c:06x})"),
            Prefix::LocalVendor { which, content } => {
                write!(f, "VendPrefixL{which}({content:06x})")
            }
            Prefix::ExtendedTph { st_hi } => write!(f, "ExtTPH(ST[15:8]={st_hi:02x})"),
            Prefix::Pasid {
                pasid,
                privileged,
                execute,
            } => {
                write!(f, "PASID({pasid:05x}")?;
                if privileged {
                    f.write_str(" PMR")?;
                }
                if execute {
                    f.write_str(" ER")?;
                }
                f.write_str(")")
            }
            Prefix::E2eVendor { which, content } => write!(f, "VendPrefixE{which}({content:06x})"),
            Prefix::Other(dw) => write!(f, "Prefix({dw:08x})"),
        }
    }
}

/// The prefix DWs in front of a TLP header, borrowed from the TLP bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Prefixes<'a>(&'a [u8]);

impl<'a> Prefixes<'a> {
    /// No prefixes.
    pub const NONE: Prefixes<'static> = Prefixes(&[]);

    /// Wrap raw prefix bytes. Returns `None` unless the length is a multiple of 4, every DW
    /// has Fmt = 100b (the prefix encoding), Local prefixes come before End-End ones, and
    /// there are at most [`MAX_E2E_PREFIXES`] End-End and [`MAX_LOCAL_PREFIXES`] Local ones.
    #[inline]
    pub fn new(bytes: &'a [u8]) -> Option<Prefixes<'a>> {
        if bytes.len() % 4 != 0 {
            return None;
        }
        let (mut local, mut e2e) = (0, 0);
        for dw in bytes.chunks_exact(4) {
            if dw[0] >> 5 != 0b100 {
                return None;
            }
            if dw[0] & 0x10 != 0 {
                e2e += 1;
            } else if e2e > 0 {
                return None;
            } else {
                local += 1;
            }
        }
        if local > MAX_LOCAL_PREFIXES || e2e > MAX_E2E_PREFIXES {
            return None;
        }
        Some(Prefixes(bytes))
    }

    /// Wrap prefix bytes already checked by [`crate::tlp::packet::layout`].
    #[inline]
    pub(crate) const fn new_unchecked(bytes: &'a [u8]) -> Prefixes<'a> {
        Prefixes(bytes)
    }

    /// The raw bytes.
    pub const fn as_bytes(&self) -> &'a [u8] {
        self.0
    }

    /// Number of prefix DWs.
    pub const fn len(&self) -> usize {
        self.0.len() / 4
    }

    /// Whether there are none.
    pub const fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The prefix DWs as integers.
    pub fn dws(&self) -> impl Iterator<Item = u32> + 'a {
        self.0
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
    }

    /// The prefixes, interpreted.
    pub fn iter(&self) -> impl Iterator<Item = Prefix> + 'a {
        self.dws().map(Prefix::from_dw)
    }

    /// The End-End prefixes only (covered by ECRC).
    #[inline]
    pub fn end_to_end_bytes(&self) -> &'a [u8] {
        let first = self
            .0
            .chunks_exact(4)
            .position(|c| c[0] & 0x10 != 0)
            .unwrap_or(self.len());
        &self.0[first * 4..]
    }

    /// The PASID prefix, if present.
    pub fn pasid(&self) -> Option<Prefix> {
        self.iter().find(|p| matches!(p, Prefix::Pasid { .. }))
    }

    /// ST\[15:8\] from an Extended TPH prefix, if present.
    pub fn st_hi(&self) -> Option<u8> {
        self.iter().find_map(|p| match p {
            Prefix::ExtendedTph { st_hi } => Some(st_hi),
            _ => None,
        })
    }
}
