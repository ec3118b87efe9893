//! Register semantics done once: a byte image with per-byte write masks.
//!
//! Every configuration register in PCI (Local Bus 3.0 §6.2, PCIe Base 4.0 §7.4 "Configuration
//! Register Types") is a mix of read-only / hardwired bits (`RO`, `HwInit`), read-write bits
//! (`RW`, `RWS`) and write-one-to-clear bits (`RW1C`, `RW1CS`). [`RegisterBlock`] keeps, for
//! every byte, the current value, the reset default, the RW mask and the RW1C mask, so the
//! header, each capability and the replay device all get the same semantics from one place.
//! BAR sizing falls out of the masks: a BAR's RW mask holds only its address bits, so writing
//! all-ones reads back the size mask.

/// A byte-addressed block of registers with per-byte masks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegisterBlock {
    value: Vec<u8>,
    default: Vec<u8>,
    rw: Vec<u8>,
    w1c: Vec<u8>,
}

/// The write semantics of one byte: bits in `rw` take the written value, bits in `w1c` are
/// cleared by writing one, every other bit is read-only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ByteMask {
    /// Read-write bits.
    pub rw: u8,
    /// Write-one-to-clear bits.
    pub w1c: u8,
}

impl ByteMask {
    /// Bits a configuration write can never change.
    pub fn read_only(self) -> u8 {
        !(self.rw | self.w1c)
    }
}

impl RegisterBlock {
    /// `len` zero bytes, all read-only.
    pub fn new(len: usize) -> Self {
        Self {
            value: vec![0; len],
            default: vec![0; len],
            rw: vec![0; len],
            w1c: vec![0; len],
        }
    }

    /// A read-only block presenting `image` (its reset default too).
    pub fn from_image(image: &[u8]) -> Self {
        Self {
            value: image.to_vec(),
            default: image.to_vec(),
            rw: vec![0; image.len()],
            w1c: vec![0; image.len()],
        }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.value.len()
    }

    /// True when the block has no bytes.
    pub fn is_empty(&self) -> bool {
        self.value.is_empty()
    }

    /// Reads `buf.len()` bytes at `offset`; bytes past the end read as zero.
    pub fn read(&self, offset: usize, buf: &mut [u8]) {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = offset
                .checked_add(i)
                .and_then(|o| self.value.get(o))
                .copied()
                .unwrap_or(0);
        }
    }

    /// A configuration (software) write: applies the RW and RW1C masks byte by byte. Bytes
    /// past the end are ignored.
    pub fn write(&mut self, offset: usize, data: &[u8]) {
        for (i, &d) in data.iter().enumerate() {
            let Some(o) = offset.checked_add(i).filter(|&o| o < self.value.len()) else {
                break;
            };
            let (rw, w1c) = (self.rw[o], self.w1c[o]);
            let old = self.value[o];
            self.value[o] = ((old & !rw) | (d & rw)) & !(d & w1c);
        }
    }

    /// The masks of the byte at `offset` (all read-only past the end).
    pub fn mask(&self, offset: usize) -> ByteMask {
        ByteMask {
            rw: self.rw.get(offset).copied().unwrap_or(0),
            w1c: self.w1c.get(offset).copied().unwrap_or(0),
        }
    }

    /// Restores every byte to its reset default.
    pub fn reset(&mut self) {
        self.value.copy_from_slice(&self.default);
    }

    fn range(&self, offset: usize, width: usize) -> Option<std::ops::Range<usize>> {
        let end = offset.checked_add(width)?;
        (end <= self.value.len()).then_some(offset..end)
    }

    /// Little-endian read of `width` (1, 2, 4 or 8) bytes; zero when out of range.
    pub fn get(&self, offset: usize, width: usize) -> u64 {
        let Some(r) = self.range(offset, width) else {
            return 0;
        };
        self.value[r]
            .iter()
            .rev()
            .fold(0u64, |acc, &b| (acc << 8) | b as u64)
    }

    /// 8-bit value.
    pub fn u8(&self, offset: usize) -> u8 {
        self.get(offset, 1) as u8
    }
    /// 16-bit value.
    pub fn u16(&self, offset: usize) -> u16 {
        self.get(offset, 2) as u16
    }
    /// 32-bit value.
    pub fn u32(&self, offset: usize) -> u32 {
        self.get(offset, 4) as u32
    }

    fn put(bytes: &mut [u8], offset: usize, width: usize, v: u64) {
        for i in 0..width {
            if let Some(b) = bytes.get_mut(offset + i) {
                *b = (v >> (8 * i)) as u8;
            }
        }
    }

    /// Hardware-side store of the current value, ignoring masks (a device updating its own
    /// status, the link coming up…). Out-of-range bytes are ignored.
    pub fn set(&mut self, offset: usize, width: usize, v: u64) {
        Self::put(&mut self.value, offset, width, v);
    }

    /// Hardware-side: sets `bits` in a 16-bit register.
    pub fn set_bits16(&mut self, offset: usize, bits: u16) {
        let v = self.u16(offset) | bits;
        self.set(offset, 2, v as u64);
    }

    /// Hardware-side: clears `bits` in a 16-bit register.
    pub fn clear_bits16(&mut self, offset: usize, bits: u16) {
        let v = self.u16(offset) & !bits;
        self.set(offset, 2, v as u64);
    }

    /// Hardware-side: sets `bits` in a 32-bit register.
    pub fn set_bits32(&mut self, offset: usize, bits: u32) {
        let v = self.u32(offset) | bits;
        self.set(offset, 4, v as u64);
    }

    /// Sets both the current value and the reset default (device construction).
    pub fn init(&mut self, offset: usize, width: usize, v: u64) {
        Self::put(&mut self.value, offset, width, v);
        Self::put(&mut self.default, offset, width, v);
    }

    /// Declares the read-write bits of a `width`-byte register.
    pub fn set_rw(&mut self, offset: usize, width: usize, mask: u64) {
        Self::put(&mut self.rw, offset, width, mask);
        let w1c = self.get_mask(&self.w1c, offset, width) & !mask;
        Self::put(&mut self.w1c, offset, width, w1c);
    }

    /// Declares the write-one-to-clear bits of a `width`-byte register.
    pub fn set_w1c(&mut self, offset: usize, width: usize, mask: u64) {
        Self::put(&mut self.w1c, offset, width, mask);
        let rw = self.get_mask(&self.rw, offset, width) & !mask;
        Self::put(&mut self.rw, offset, width, rw);
    }

    fn get_mask(&self, bytes: &[u8], offset: usize, width: usize) -> u64 {
        (0..width).rev().fold(0u64, |acc, i| {
            (acc << 8) | bytes.get(offset + i).copied().unwrap_or(0) as u64
        })
    }

    /// The read-write mask of a `width`-byte register.
    pub fn rw_mask(&self, offset: usize, width: usize) -> u64 {
        self.get_mask(&self.rw, offset, width)
    }

    /// Copies `image` into value and default at `offset` (replay).
    pub fn load(&mut self, offset: usize, image: &[u8]) {
        for (i, &b) in image.iter().enumerate() {
            if let Some(v) = self.value.get_mut(offset + i) {
                *v = b;
                self.default[offset + i] = b;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rw_rw1c_and_read_only_bits_follow_their_masks() {
        let mut r = RegisterBlock::new(4);
        r.init(0, 4, 0xa5a5_00ff);
        r.set_rw(0, 2, 0x0f0f);
        r.set_w1c(2, 2, 0x00f0);
        r.write(0, &[0xff, 0xff, 0xff, 0xff]);
        // byte 0: 0xff stays (RO high nibble was 0xf already, low nibble written 1s).
        assert_eq!(r.u8(0), 0xff);
        // byte 1: RO high nibble 0, RW low nibble now f.
        assert_eq!(r.u8(1), 0x0f);
        // byte 2: 0xa5 with 0xf0 W1C -> 0x05.
        assert_eq!(r.u8(2), 0x05);
        // byte 3: read-only.
        assert_eq!(r.u8(3), 0xa5);
        r.reset();
        assert_eq!(r.u32(0), 0xa5a5_00ff);
        assert_eq!(r.mask(2), ByteMask { rw: 0, w1c: 0xf0 });
        assert_eq!(r.mask(99).read_only(), 0xff);
    }
}
