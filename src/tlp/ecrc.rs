//! End-to-end CRC, the TLP digest (PCIe Base Specification §2.7.1, §2.2.3).
//!
//! ECRC uses the same CRC-32 as LCRC (§3.6.2.1): polynomial 04C1_1DB7h, seed FFFF_FFFFh, the
//! bits of each byte fed least-significant first, the remainder complemented and sent with
//! remainder bit 31 in bit 0 of the first digest byte — which is exactly the reflected
//! CRC-32 of IEEE 802.3 (`CRC_32_ISO_HDLC`) with its value sent little-endian. It covers every
//! End-End prefix, the header and the payload; Local prefixes are not covered. The two
//! *variant* bits, Type\[0\] and EP, are taken as 1 so that the digest survives a Type 1 → 0
//! configuration conversion and poisoning on the way.

use super::packet::field;
use crc::{Crc, CRC_32_ISO_HDLC};

const CRC32: Crc<u32> = Crc::<u32>::new(&CRC_32_ISO_HDLC);

/// The digest bytes, in wire order, for a TLP whose End-End prefixes are `e2e_prefixes`,
/// whose header is `header` (12 or 16 bytes) and whose payload is `payload`.
pub fn compute(e2e_prefixes: &[u8], header: &[u8], payload: &[u8]) -> [u8; 4] {
    let mut d = CRC32.digest();
    d.update(e2e_prefixes);
    if header.len() >= 3 {
        // The variant bits Type[0] and EP, taken as 1.
        let mut dw0 = [header[0], header[1], header[2]];
        let ty = field::TYPE.get(&dw0);
        field::TYPE.put(&mut dw0, ty | 1);
        field::EP.put(&mut dw0, 1);
        d.update(&dw0);
        d.update(&header[3..]);
    } else {
        d.update(header);
    }
    d.update(payload);
    d.finalize().to_le_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_matches_published_check_values() {
        // The CRC-32 catalogue check value for "123456789".
        let mut d = CRC32.digest();
        d.update(b"123456789");
        assert_eq!(d.finalize(), 0xcbf4_3926);
        // LCRC vector from antmicro/warp-pipe's test_crc.cc (same algorithm, sent
        // little-endian): sequence number 0 + an all-zero MRd32 header -> c7 79 bb d1.
        let mut d = CRC32.digest();
        d.update(&[0u8; 14]);
        assert_eq!(d.finalize().to_le_bytes(), [0xc7, 0x79, 0xbb, 0xd1]);
    }

    #[test]
    fn variant_bits_do_not_change_the_digest() {
        let cfg1 = [0x05u8, 0, 0x80, 1, 0, 0, 0, 0x0f, 1, 0, 0, 0];
        let mut cfg0 = cfg1;
        cfg0[0] = 0x04; // Type 1 -> Type 0 conversion at the last bridge
        cfg0[2] |= 0x40; // poisoned on the way
        assert_eq!(compute(&[], &cfg1, &[]), compute(&[], &cfg0, &[]));
        let mut other = cfg1;
        other[11] = 4; // an invariant field
        assert_ne!(compute(&[], &cfg1, &[]), compute(&[], &other, &[]));
    }
}
