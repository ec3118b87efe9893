//! The `lspci -x` / `-xxx` / `-xxxx` text format: read and write it exactly as pciutils
//! prints it, so `lspci -F FILE -vvv` decodes what we write.
//!
//! Format (pciutils `lspci.c` `show_hex_dump`, read back by `lib/dump.c`): per function a
//! header line `[dddd:]bb:dd.f Description`, then rows `OFF: xx xx … xx` of 16 bytes with the
//! offset printed as `%02x` below 0x100 and `%03x` above, then a blank line. Lines indented
//! with whitespace (the `-vvv` decode when `-vvv -xxxx` were combined) are skipped, as lspci
//! does.

use std::fmt;
use std::str::FromStr;

use super::spec::CONFIG_SPACE_SIZE;

/// A PCI address as lspci prints it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct PciAddress {
    /// PCI domain (segment), when printed.
    pub domain: Option<u32>,
    /// Bus number.
    pub bus: u8,
    /// Device number (0..32).
    pub device: u8,
    /// Function number (0..8).
    pub function: u8,
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(d) = self.domain {
            write!(f, "{d:04x}:")?;
        }
        write!(f, "{:02x}:{:02x}.{}", self.bus, self.device, self.function)
    }
}

impl FromStr for PciAddress {
    type Err = ();
    /// Parses `[dddd:]bb:dd.f` (hexadecimal; device < 0x20, function < 8).
    fn from_str(s: &str) -> Result<Self, ()> {
        let (rest, func) = s.rsplit_once('.').ok_or(())?;
        let parts: Vec<&str> = rest.split(':').collect();
        let (domain, bus, dev) = match parts.as_slice() {
            [b, d] => (None, *b, *d),
            [dom, b, d] => (Some(*dom), *b, *d),
            _ => return Err(()),
        };
        let hex = |t: &str, max_len: usize| -> Result<u32, ()> {
            if t.is_empty() || t.len() > max_len || !t.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(());
            }
            u32::from_str_radix(t, 16).map_err(|_| ())
        };
        let domain = domain.map(|d| hex(d, 8)).transpose()?;
        let bus = hex(bus, 2)? as u8;
        let device = hex(dev, 2)?;
        let function = if func.len() == 1 {
            hex(func, 1)?
        } else {
            return Err(());
        };
        if device >= 32 || function >= 8 {
            return Err(());
        }
        Ok(PciAddress {
            domain,
            bus,
            device: device as u8,
            function: function as u8,
        })
    }
}

/// One function of a dump.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DumpFunction {
    /// Its address.
    pub address: PciAddress,
    /// The rest of the header line (lspci's description; ignored by `lspci -F`).
    pub description: String,
    /// The configuration bytes (64, 256 or 4096 for real dumps; any multiple of the rows
    /// present).
    pub config: Vec<u8>,
    /// 1-based line number of the header line.
    pub line: usize,
}

/// Why a dump could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LspciError {
    /// Hex rows appear before the first `bb:dd.f` header line.
    #[error("line {line}: hex rows before any device line (expected `bb:dd.f Description` first)")]
    DataBeforeHeader {
        /// Line number.
        line: usize,
    },
    /// A line that is neither a device line, a hex row, blank, nor indented decode text.
    #[error("line {line}: not an lspci -x line: {text:?}")]
    UnexpectedLine {
        /// Line number.
        line: usize,
        /// The line (truncated to 80 characters).
        text: String,
    },
    /// A row offset that is not hex, not a multiple of 16, or past 4 KiB.
    #[error("line {line}: bad row offset {text:?} (expected a multiple of 0x10 below 0x1000)")]
    BadOffset {
        /// Line number.
        line: usize,
        /// The offset token.
        text: String,
    },
    /// A token that is not two hex digits.
    #[error("line {line}: byte {column} is {text:?}, expected two hex digits")]
    BadByte {
        /// Line number.
        line: usize,
        /// 1-based byte position on the row.
        column: usize,
        /// The token (truncated).
        text: String,
    },
    /// More than 16 bytes on a row, or a row running past 4 KiB.
    #[error("line {line}: {count} bytes on one row (at most 16, ending below 0x1000)")]
    TooManyBytes {
        /// Line number.
        line: usize,
        /// Bytes found.
        count: usize,
    },
    /// The same row twice for one function.
    #[error("line {line}: row {offset:#x} of {address} appears twice")]
    DuplicateRow {
        /// Line number.
        line: usize,
        /// Row offset.
        offset: usize,
        /// Function.
        address: PciAddress,
    },
    /// A hole in the rows of one function.
    #[error("{address} (line {line}): byte {offset:#x} is missing (rows must be complete and contiguous from 0)")]
    MissingRow {
        /// Line of the function's header.
        line: usize,
        /// Function.
        address: PciAddress,
        /// First missing byte.
        offset: usize,
    },
    /// A device line without any rows.
    #[error("{address} (line {line}): no hex rows (was the dump taken without -x?)")]
    NoData {
        /// Line of the function's header.
        line: usize,
        /// Function.
        address: PciAddress,
    },
    /// Nothing in the input.
    #[error("no device in the input")]
    Empty,
}

fn clip(s: &str) -> String {
    s.chars().take(80).collect()
}

struct Building {
    f: DumpFunction,
    covered: Vec<bool>,
    buf: Vec<u8>,
}

impl Building {
    fn finish(self) -> Result<DumpFunction, LspciError> {
        let Building {
            mut f,
            covered,
            buf,
        } = self;
        let Some(end) = covered.iter().rposition(|&c| c).map(|p| p + 1) else {
            return Err(LspciError::NoData {
                line: f.line,
                address: f.address,
            });
        };
        if let Some(hole) = covered[..end].iter().position(|&c| !c) {
            return Err(LspciError::MissingRow {
                line: f.line,
                address: f.address,
                offset: hole,
            });
        }
        f.config = buf[..end].to_vec();
        Ok(f)
    }
}

/// Parses a dump holding one or more functions.
pub fn parse(text: &str) -> Result<Vec<DumpFunction>, LspciError> {
    let mut out = Vec::new();
    let mut cur: Option<Building> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() || raw.starts_with([' ', '\t']) {
            continue;
        }
        let raw = raw.trim_end();
        let (first, rest) = raw.split_once(' ').unwrap_or((raw, ""));
        if let Some(off) = first.strip_suffix(':') {
            let b = cur.as_mut().ok_or(LspciError::DataBeforeHeader { line })?;
            let bad_off = || LspciError::BadOffset {
                line,
                text: clip(first),
            };
            if off.is_empty() || off.len() > 3 || !off.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(bad_off());
            }
            let offset = usize::from_str_radix(off, 16).map_err(|_| bad_off())?;
            if offset % 16 != 0 || offset >= CONFIG_SPACE_SIZE {
                return Err(bad_off());
            }
            let mut count = 0;
            for (col, tok) in rest.split_ascii_whitespace().enumerate() {
                if tok.len() != 2 || !tok.bytes().all(|c| c.is_ascii_hexdigit()) {
                    return Err(LspciError::BadByte {
                        line,
                        column: col + 1,
                        text: clip(tok),
                    });
                }
                let o = offset + col;
                if col >= 16 || o >= CONFIG_SPACE_SIZE {
                    return Err(LspciError::TooManyBytes {
                        line,
                        count: rest.split_ascii_whitespace().count(),
                    });
                }
                if b.covered[o] {
                    return Err(LspciError::DuplicateRow {
                        line,
                        offset,
                        address: b.f.address,
                    });
                }
                b.buf[o] = u8::from_str_radix(tok, 16).map_err(|_| LspciError::BadByte {
                    line,
                    column: col + 1,
                    text: clip(tok),
                })?;
                b.covered[o] = true;
                count += 1;
            }
            if count == 0 {
                return Err(LspciError::BadByte {
                    line,
                    column: 1,
                    text: String::new(),
                });
            }
        } else if let Ok(address) = first.parse::<PciAddress>() {
            if let Some(b) = cur.take() {
                out.push(b.finish()?);
            }
            cur = Some(Building {
                f: DumpFunction {
                    address,
                    description: rest.trim().to_string(),
                    config: Vec::new(),
                    line,
                },
                covered: vec![false; CONFIG_SPACE_SIZE],
                buf: vec![0; CONFIG_SPACE_SIZE],
            });
        } else {
            return Err(LspciError::UnexpectedLine {
                line,
                text: clip(raw),
            });
        }
    }
    if let Some(b) = cur.take() {
        out.push(b.finish()?);
    }
    if out.is_empty() {
        return Err(LspciError::Empty);
    }
    Ok(out)
}

/// lspci's description for a function whose names it does not know:
/// `Class 0108: Device 1b36:0010 (rev 02)`.
pub fn default_description(config: &[u8]) -> String {
    let g = |o: usize| config.get(o).copied().unwrap_or(0) as u32;
    let vendor = g(0) | g(1) << 8;
    let device = g(2) | g(3) << 8;
    let class = g(0x0a) | g(0x0b) << 8;
    let mut s = format!("Class {class:04x}: Device {vendor:04x}:{device:04x}");
    if g(8) != 0 {
        s.push_str(&format!(" (rev {:02x})", g(8)));
    }
    s
}

/// Writes one function in lspci's format (header line, rows of 16 bytes, blank line), at most
/// 4 KiB of `config`; a length that is not a multiple of 16 ends in a short row.
pub fn format_function(address: &PciAddress, description: &str, config: &[u8]) -> String {
    let desc: String = description
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let len = config.len().min(CONFIG_SPACE_SIZE);
    let mut s = String::with_capacity(len * 3 + len / 16 * 6 + 80);
    s.push_str(&address.to_string());
    if !desc.is_empty() {
        s.push(' ');
        s.push_str(&desc);
    }
    s.push('\n');
    for (row, chunk) in config[..len].chunks(16).enumerate() {
        let off = row * 16;
        if off < 0x100 {
            s.push_str(&format!("{off:02x}:"));
        } else {
            s.push_str(&format!("{off:03x}:"));
        }
        for b in chunk {
            s.push_str(&format!(" {b:02x}"));
        }
        s.push('\n');
    }
    s.push('\n');
    s
}

/// Writes several functions.
pub fn write(functions: &[DumpFunction]) -> String {
    functions
        .iter()
        .map(|f| format_function(&f.address, &f.description, &f.config))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip_and_reject_nonsense() {
        let a: PciAddress = "0000:3b:1f.7".parse().unwrap();
        assert_eq!(a.domain, Some(0));
        assert_eq!((a.bus, a.device, a.function), (0x3b, 0x1f, 7));
        assert_eq!(a.to_string(), "0000:3b:1f.7");
        for bad in [
            "00:20.0",
            "00:00.8",
            "0:0",
            "xx:00.0",
            "00:00.00",
            "1:2:3:4.0",
        ] {
            assert!(bad.parse::<PciAddress>().is_err(), "{bad}");
        }
    }

    #[test]
    fn verbose_decode_lines_and_domains_are_handled() {
        let row = " 11".repeat(16);
        let text = format!(
            "0000:09:00.0 Class 0200: Device 8086:10c9 (rev 01)\n\tControl: I/O+ Mem+\n\
             \t\tDevCap:\tMaxPayload 512 bytes\n00:{row}\n10:{row}\n20:{row}\n30:{row}\n\
             \tKernel driver in use: igb\n\n0000:09:00.1 Second\n00:{row}\n"
        );
        let f = parse(&text).unwrap();
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].address.to_string(), "0000:09:00.0");
        assert_eq!(f[0].config, vec![0x11; 64]);
        assert_eq!(
            (f[1].line, f[1].description.as_str(), f[1].config.len()),
            (10, "Second", 16)
        );
        assert_eq!(
            write(&f[..1]),
            format!("0000:09:00.0 Class 0200: Device 8086:10c9 (rev 01)\n00:{row}\n10:{row}\n20:{row}\n30:{row}\n\n")
        );
        assert_eq!(
            default_description(&f[0].config),
            "Class 1111: Device 1111:1111 (rev 11)"
        );
    }

    #[test]
    fn errors_name_the_line() {
        let e = parse("00:00.0 Host bridge\n00: 86 80\n10: 8g\n").unwrap_err();
        assert_eq!(
            e,
            LspciError::BadByte {
                line: 3,
                column: 1,
                text: "8g".into()
            }
        );
        assert_eq!(
            parse("00: 11\n"),
            Err(LspciError::DataBeforeHeader { line: 1 })
        );
        assert!(matches!(
            parse("hello\n"),
            Err(LspciError::UnexpectedLine { line: 1, .. })
        ));
        assert_eq!(parse("00:00.0 X\n00: 00\n").unwrap()[0].config, vec![0]);
        let row = " 00".repeat(16);
        assert!(matches!(
            parse(&format!("00:00.0 X\n00:{row}\n20:{row}\n")),
            Err(LspciError::MissingRow { offset: 0x10, .. })
        ));
        assert!(matches!(
            parse("00:00.0 X\n\n"),
            Err(LspciError::NoData { line: 1, .. })
        ));
        assert!(matches!(
            parse("00:00.0 X\n1008: 00\n"),
            Err(LspciError::BadOffset { line: 2, .. })
        ));
        assert_eq!(parse(""), Err(LspciError::Empty));
    }
}
