//! The JSON form of a TLP: one object per TLP, with the stable field names documented in
//! docs/tlp.md (used by `pcietun tlp decode --json` / `pcietun tlp encode`). Not on the hot
//! path: this module allocates freely.

use super::prefix::Prefixes;
use super::repr::{
    Attr, CfgRequest, Completion, CplStatus, IoRequest, MemOp, MemRequest, Message, Tlp, TlpHeader,
};
use super::{Bdf, Error, MsgRouting};
use serde::{Deserialize, Serialize};

/// One TLP as JSON. Fields a TLP kind does not have are absent (`None`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlpJson {
    /// `MRd32`, `MWr64`, `CplD`, `Msg`, `CAS128`, … (see docs/tlp.md).
    pub kind: String,
    /// Fmt\[2:0\].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fmt: Option<u8>,
    /// Type\[4:0\].
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub ty: Option<u8>,
    /// Traffic Class.
    #[serde(default)]
    pub tc: u8,
    /// Attr\[0\] No Snoop.
    #[serde(default)]
    pub attr_ns: bool,
    /// Attr\[1\] Relaxed Ordering.
    #[serde(default)]
    pub attr_ro: bool,
    /// Attr\[2\] ID-Based Ordering.
    #[serde(default)]
    pub attr_ido: bool,
    /// TLP Processing Hints present.
    #[serde(default)]
    pub th: bool,
    /// Digest (ECRC) present.
    #[serde(default)]
    pub td: bool,
    /// Poisoned.
    #[serde(default)]
    pub ep: bool,
    /// Address Type.
    #[serde(default)]
    pub at: u8,
    /// LN bit.
    #[serde(default)]
    pub ln: bool,
    /// Length in DW (1..=1024); derived from `data` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length_dw: Option<u16>,
    /// Requester ID `"bb:dd.f"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requester_id: Option<String>,
    /// Completer ID `"bb:dd.f"` (completions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completer_id: Option<String>,
    /// 10-bit tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<u16>,
    /// First DW BE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_be: Option<u8>,
    /// Last DW BE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_be: Option<u8>,
    /// Address `"0x…"` (memory, IO, AtomicOp requests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Processing Hints (memory requests with TH).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ph: Option<u8>,
    /// Target `"bb:dd.f"` of a configuration request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_id: Option<String>,
    /// Register byte offset of a configuration request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub register: Option<u16>,
    /// Completion status `"SC"|"UR"|"CRS"|"CA"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Byte Count Modified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bcm: Option<bool>,
    /// Byte Count 1..=4096.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub byte_count: Option<u16>,
    /// Lower Address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lower_address: Option<u8>,
    /// Message Code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub msg_code: Option<u8>,
    /// Message routing: `RC`, `Address`, `ID`, `Broadcast`, `Local`, `Gathered`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub msg_routing: Option<String>,
    /// Message header bytes 8..16 as 16 hex digits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub msg_fields: Option<String>,
    /// Payload as hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// Prefix DWs, each as 8 hex digits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefixes: Option<Vec<String>>,
    /// The digest as 8 hex digits in wire order (when TD is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ecrc: Option<String>,
}

/// Why a JSON object does not describe an encodable TLP.
#[derive(Debug, Clone, thiserror::Error)]
pub enum JsonError {
    /// Not JSON, or not the schema (the parser's error says where and what).
    #[error("invalid JSON: {0}")]
    Syntax(#[source] std::sync::Arc<serde_json::Error>),
    /// `kind` is not a known name.
    #[error("unknown kind {0:?}")]
    UnknownKind(String),
    /// A field this kind needs is absent.
    #[error("{kind} needs field {field:?}")]
    Missing {
        /// The kind.
        kind: String,
        /// The field.
        field: &'static str,
    },
    /// A field's value does not parse.
    #[error("field {field:?}: bad value {value:?}")]
    BadValue {
        /// The field.
        field: &'static str,
        /// The value.
        value: String,
    },
    /// A field disagrees with what the rest of the object implies.
    #[error("field {field:?} is {given} but the TLP implies {implied}")]
    Inconsistent {
        /// The field.
        field: &'static str,
        /// As given.
        given: String,
        /// As implied.
        implied: String,
    },
    /// The TLP itself is not valid.
    #[error(transparent)]
    Tlp(#[from] Error),
}

/// Lowercase hex of bytes.
pub fn to_hex(bytes: &[u8]) -> String {
    use core::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Why text is not hex bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HexError {
    /// A character that is not a hex digit (nor whitespace, `_` or a `0x` prefix).
    #[error("{0:?} is not a hex digit")]
    NotHexDigit(char),
    /// Hex digits come in pairs, one per byte.
    #[error("odd number of hex digits ({0})")]
    OddDigits(usize),
}

/// Parse hex bytes, ignoring whitespace, `_` and `0x` prefixes of each group.
pub fn parse_hex(text: &str) -> Result<Vec<u8>, HexError> {
    let mut digits = Vec::with_capacity(text.len());
    for word in text.split_whitespace() {
        let w = word
            .strip_prefix("0x")
            .or_else(|| word.strip_prefix("0X"))
            .unwrap_or(word);
        for c in w.chars() {
            match c {
                '_' => {}
                c if c.is_ascii_hexdigit() => digits.push(c as u8),
                c => return Err(HexError::NotHexDigit(c)),
            }
        }
    }
    if digits.len() % 2 != 0 {
        return Err(HexError::OddDigits(digits.len()));
    }
    Ok(digits
        .chunks_exact(2)
        .map(|p| {
            let v = |d: u8| (d as char).to_digit(16).unwrap_or(0) as u8;
            v(p[0]) << 4 | v(p[1])
        })
        .collect())
}

impl TlpJson {
    /// The JSON form of a parsed TLP.
    pub fn from_tlp(t: &Tlp<'_>) -> TlpJson {
        let mut j = TlpJson {
            kind: t.name().to_string(),
            fmt: Some(t.fmt()),
            ty: Some(t.kind().type_bits()),
            tc: t.tc,
            attr_ns: t.attr.ns,
            attr_ro: t.attr.ro,
            attr_ido: t.attr.ido,
            th: t.th,
            td: t.td,
            ep: t.ep,
            at: t.at,
            ln: t.ln,
            // Length is reserved in completions and messages without data; a zero field is
            // left out rather than shown as 1024.
            length_dw: match t.header {
                TlpHeader::Cpl(_) | TlpHeader::Msg(_)
                    if !t.kind().has_data() && t.length_dw == 1024 =>
                {
                    None
                }
                _ => Some(t.length_dw),
            },
            ..TlpJson::default()
        };
        match &t.header {
            TlpHeader::Mem(m) => {
                j.requester_id = Some(m.requester_id.to_string());
                j.tag = Some(m.tag);
                j.first_be = Some(m.first_be);
                j.last_be = Some(m.last_be);
                j.address = Some(format!("{:#x}", m.address));
                if t.th {
                    j.ph = Some(m.ph);
                }
            }
            TlpHeader::Io(r) => {
                j.requester_id = Some(r.requester_id.to_string());
                j.tag = Some(r.tag);
                j.first_be = Some(r.first_be);
                j.last_be = Some(r.last_be);
                j.address = Some(format!("{:#x}", r.address));
            }
            TlpHeader::Cfg(c) => {
                j.requester_id = Some(c.requester_id.to_string());
                j.tag = Some(c.tag);
                j.first_be = Some(c.first_be);
                j.last_be = Some(c.last_be);
                j.target_id = Some(c.target.to_string());
                j.register = Some(c.register);
            }
            TlpHeader::Cpl(c) => {
                j.completer_id = Some(c.completer_id.to_string());
                j.requester_id = Some(c.requester_id.to_string());
                j.tag = Some(c.tag);
                j.status = Some(c.status.name().to_string());
                j.bcm = Some(c.bcm);
                j.byte_count = Some(c.byte_count);
                j.lower_address = Some(c.lower_address);
            }
            TlpHeader::Msg(m) => {
                j.requester_id = Some(m.requester_id.to_string());
                j.tag = Some(m.tag);
                j.msg_code = Some(m.code);
                j.msg_routing = Some(m.routing.name().to_string());
                j.msg_fields = Some(to_hex(&m.fields));
            }
        }
        if t.kind().has_data() {
            j.data = Some(to_hex(t.data));
        }
        if !t.prefixes.is_empty() {
            j.prefixes = Some(t.prefixes.dws().map(|d| format!("{d:08x}")).collect());
        }
        if t.td {
            j.ecrc = Some(to_hex(&t.ecrc()));
        }
        j
    }

    /// Parse one JSON line.
    pub fn from_line(line: &str) -> Result<TlpJson, JsonError> {
        serde_json::from_str(line).map_err(|e| JsonError::Syntax(e.into()))
    }

    /// One JSON line (no trailing newline).
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// Encode to TLP bytes (appended to `out`), checking everything the object states.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), JsonError> {
        let kind = self.kind.as_str();
        let missing = |field| JsonError::Missing {
            kind: self.kind.clone(),
            field,
        };
        let bdf = |field: &'static str, v: &Option<String>| -> Result<Bdf, JsonError> {
            let s = v.as_ref().ok_or_else(|| missing(field))?;
            s.parse().map_err(|_| JsonError::BadValue {
                field,
                value: s.clone(),
            })
        };
        let hexv = |field: &'static str, s: &str| -> Result<Vec<u8>, JsonError> {
            parse_hex(s).map_err(|_| JsonError::BadValue {
                field,
                value: s.to_string(),
            })
        };
        let address = || -> Result<u64, JsonError> {
            let s = self.address.as_ref().ok_or_else(|| missing("address"))?;
            let digits = s.strip_prefix("0x").unwrap_or(s);
            u64::from_str_radix(digits, 16).map_err(|_| JsonError::BadValue {
                field: "address",
                value: s.clone(),
            })
        };
        let tag = self.tag.unwrap_or(0);
        let first_be = self.first_be.unwrap_or(0);
        let last_be = self.last_be.unwrap_or(0);
        let data = match &self.data {
            Some(d) => hexv("data", d)?,
            None => Vec::new(),
        };
        let mut prefix_bytes = Vec::new();
        for p in self.prefixes.iter().flatten() {
            let dw = hexv("prefixes", p)?;
            if dw.len() != 4 {
                return Err(JsonError::BadValue {
                    field: "prefixes",
                    value: p.clone(),
                });
            }
            prefix_bytes.extend_from_slice(&dw);
        }
        let prefixes = Prefixes::new(&prefix_bytes).ok_or(JsonError::BadValue {
            field: "prefixes",
            value: format!("{:?}", self.prefixes),
        })?;
        let mem = |op, addr64: Option<bool>| -> Result<TlpHeader, JsonError> {
            let address = address()?;
            let addr64 = addr64
                .or(self.fmt.map(|f| f & 1 != 0))
                .unwrap_or(address > u64::from(u32::MAX));
            Ok(TlpHeader::Mem(MemRequest {
                op,
                addr64,
                requester_id: bdf("requester_id", &self.requester_id)?,
                tag,
                first_be,
                last_be,
                address,
                ph: self.ph.unwrap_or(0),
            }))
        };
        let cfg = |write, type1| -> Result<TlpHeader, JsonError> {
            Ok(TlpHeader::Cfg(CfgRequest {
                write,
                type1,
                requester_id: bdf("requester_id", &self.requester_id)?,
                tag,
                first_be,
                last_be,
                target: bdf("target_id", &self.target_id)?,
                register: self.register.ok_or_else(|| missing("register"))?,
            }))
        };
        let io = |write| -> Result<TlpHeader, JsonError> {
            Ok(TlpHeader::Io(IoRequest {
                write,
                requester_id: bdf("requester_id", &self.requester_id)?,
                tag,
                first_be,
                last_be,
                address: u32::try_from(address()?).map_err(|_| JsonError::BadValue {
                    field: "address",
                    value: self.address.clone().unwrap_or_default(),
                })?,
            }))
        };
        let cpl = |with_data, locked| -> Result<TlpHeader, JsonError> {
            let st = self.status.as_deref().unwrap_or("SC");
            Ok(TlpHeader::Cpl(Completion {
                with_data,
                locked,
                completer_id: bdf("completer_id", &self.completer_id)?,
                status: CplStatus::from_name(st).ok_or(JsonError::BadValue {
                    field: "status",
                    value: st.to_string(),
                })?,
                bcm: self.bcm.unwrap_or(false),
                byte_count: self.byte_count.ok_or_else(|| missing("byte_count"))?,
                requester_id: bdf("requester_id", &self.requester_id)?,
                tag,
                lower_address: self.lower_address.unwrap_or(0),
            }))
        };
        let msg = |with_data| -> Result<TlpHeader, JsonError> {
            let r = self
                .msg_routing
                .as_deref()
                .ok_or_else(|| missing("msg_routing"))?;
            let mut fields = [0u8; 8];
            if let Some(f) = &self.msg_fields {
                let v = hexv("msg_fields", f)?;
                if v.len() != 8 {
                    return Err(JsonError::BadValue {
                        field: "msg_fields",
                        value: f.clone(),
                    });
                }
                fields.copy_from_slice(&v);
            }
            Ok(TlpHeader::Msg(Message {
                with_data,
                routing: MsgRouting::from_name(r).ok_or(JsonError::BadValue {
                    field: "msg_routing",
                    value: r.to_string(),
                })?,
                requester_id: bdf("requester_id", &self.requester_id)?,
                tag,
                code: self.msg_code.ok_or_else(|| missing("msg_code"))?,
                fields,
            }))
        };
        let header = match kind {
            "MRd32" => mem(MemOp::Read, Some(false))?,
            "MRd64" => mem(MemOp::Read, Some(true))?,
            "MRdLk32" => mem(MemOp::ReadLocked, Some(false))?,
            "MRdLk64" => mem(MemOp::ReadLocked, Some(true))?,
            "MWr32" => mem(MemOp::Write, Some(false))?,
            "MWr64" => mem(MemOp::Write, Some(true))?,
            "DMWr32" => mem(MemOp::DeferrableWrite, Some(false))?,
            "DMWr64" => mem(MemOp::DeferrableWrite, Some(true))?,
            "FetchAdd32" | "FetchAdd64" => mem(MemOp::FetchAdd, None)?,
            "Swap32" | "Swap64" => mem(MemOp::Swap, None)?,
            "CAS32" | "CAS64" | "CAS128" => mem(MemOp::Cas, None)?,
            "IORd" => io(false)?,
            "IOWr" => io(true)?,
            "CfgRd0" => cfg(false, false)?,
            "CfgWr0" => cfg(true, false)?,
            "CfgRd1" => cfg(false, true)?,
            "CfgWr1" => cfg(true, true)?,
            "Cpl" => cpl(false, false)?,
            "CplD" => cpl(true, false)?,
            "CplLk" => cpl(false, true)?,
            "CplDLk" => cpl(true, true)?,
            "Msg" => msg(false)?,
            "MsgD" => msg(true)?,
            other => return Err(JsonError::UnknownKind(other.to_string())),
        };
        let length_dw = match self.length_dw {
            Some(l) => l,
            None if !data.is_empty() => data.len().div_ceil(4).min(1024) as u16,
            // Reserved Length of a completion or message without data: field 0.
            None if matches!(header, TlpHeader::Cpl(_) | TlpHeader::Msg(_)) => 1024,
            None => 1,
        };
        let tlp = Tlp {
            prefixes,
            tc: self.tc,
            attr: Attr {
                ns: self.attr_ns,
                ro: self.attr_ro,
                ido: self.attr_ido,
            },
            th: self.th,
            td: self.td,
            ep: self.ep,
            at: self.at,
            ln: self.ln,
            length_dw,
            header,
            data: &data,
        };
        tlp.validate()?;
        let inconsistent = |field, given: String, implied: String| JsonError::Inconsistent {
            field,
            given,
            implied,
        };
        if tlp.name() != kind {
            return Err(inconsistent(
                "kind",
                kind.to_string(),
                tlp.name().to_string(),
            ));
        }
        if let Some(f) = self.fmt {
            if f != tlp.fmt() {
                return Err(inconsistent("fmt", f.to_string(), tlp.fmt().to_string()));
            }
        }
        if let Some(t) = self.ty {
            if t != tlp.kind().type_bits() {
                let implied = tlp.kind().type_bits().to_string();
                return Err(inconsistent("type", t.to_string(), implied));
            }
        }
        if let Some(e) = &self.ecrc {
            let computed = to_hex(&tlp.ecrc());
            if !self.td || !e.eq_ignore_ascii_case(&computed) {
                return Err(inconsistent("ecrc", e.clone(), computed));
            }
        }
        let start = out.len();
        out.resize(start + tlp.buffer_len(), 0);
        tlp.emit(&mut out[start..])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_written_objects_encode() {
        // Only what is needed: DW0 flags default to 0, Length comes from the data.
        let j = TlpJson::from_line(
            r#"{"kind":"CplD","completer_id":"01:00.0","requester_id":"00:00.0","tag":10,"byte_count":4,"data":"4d1408a8"}"#,
        )
        .unwrap();
        let mut out = Vec::new();
        j.encode(&mut out).unwrap();
        assert_eq!(to_hex(&out), "4a0000010100000400000a004d1408a8");
        // A 64-bit address picks the 4 DW form of an AtomicOp.
        let j = TlpJson::from_line(
            r#"{"kind":"FetchAdd32","requester_id":"01:00.0","address":"0x100000000","data":"00000001"}"#,
        )
        .unwrap();
        out.clear();
        j.encode(&mut out).unwrap();
        assert_eq!(out[0], 0x6c);
    }

    #[test]
    fn bad_objects_are_explained() {
        let enc = |s: &str| {
            let mut out = Vec::new();
            TlpJson::from_line(s).and_then(|j| j.encode(&mut out))
        };
        assert!(matches!(
            enc(r#"{"kind":"MRd32"}"#),
            Err(JsonError::Missing {
                field: "address",
                ..
            })
        ));
        assert!(matches!(
            enc(r#"{"kind":"MRd32","address":"0x10","requester_id":"1:2"}"#),
            Err(JsonError::BadValue {
                field: "requester_id",
                ..
            })
        ));
        assert!(matches!(
            enc(r#"{"kind":"MRd32","bogus":1}"#),
            Err(JsonError::Syntax(_))
        ));
        assert!(matches!(
            enc(
                r#"{"kind":"MWr32","address":"0x10","requester_id":"01:00.0","first_be":15,"data":"00"}"#
            ),
            Err(JsonError::Tlp(Error::PayloadMismatch { .. }))
        ));
        assert!(matches!(
            enc(
                r#"{"kind":"MRd32","address":"0x10","requester_id":"01:00.0","first_be":15,"td":true,"ecrc":"00000000"}"#
            ),
            Err(JsonError::Inconsistent { field: "ecrc", .. })
        ));
    }

    #[test]
    fn hex_input_forms() {
        assert_eq!(
            parse_hex("0x0000_0001 0X0a\t0b").unwrap(),
            vec![0, 0, 0, 1, 0x0a, 0x0b]
        );
        assert!(parse_hex("abc").is_err());
        assert!(parse_hex("zz").is_err());
    }
}
