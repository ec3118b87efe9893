//! Byte-exact TLP vectors, one or more per TLP kind: built by hand from the header layouts of
//! the PCIe Base Specification (§2.2.7–§2.2.10) and from real TLP headers that Linux AER logged
//! on real hardware (public kernel bug reports). Each is decoded field by field and then
//! encoded back to the identical bytes.

use pcietun::tlp::json::parse_hex;
use pcietun::tlp::message::code;
use pcietun::tlp::{
    Bdf, CplStatus, Error, Kind, MemOp, MsgRouting, OrderingClass, Prefix, Tlp, TlpHeader,
};

/// The bytes of a hex test vector (leaked: test vectors live for the whole test run).
fn bytes(hex: &str) -> &'static [u8] {
    Box::leak(
        parse_hex(hex)
            .expect("test vector is valid hex")
            .into_boxed_slice(),
    )
}

fn roundtrip(b: &[u8]) -> Tlp<'_> {
    let t = Tlp::parse(b).unwrap_or_else(|e| panic!("{e} for {:02x?}", b));
    let mut out = vec![0u8; t.buffer_len()];
    assert_eq!(t.emit(&mut out), Ok(b.len()));
    assert_eq!(out, b, "re-encoding changed the bytes of {t}");
    t
}

fn mem(t: &Tlp<'_>) -> pcietun::tlp::MemRequest {
    match t.header {
        TlpHeader::Mem(m) => m,
        other => panic!("not a memory request: {other:?}"),
    }
}

#[test]
fn mrd32_one_dw() {
    let b = bytes("00000001 0100010f f7e00010");
    let t = roundtrip(b);
    assert_eq!(t.name(), "MRd32");
    let m = mem(&t);
    assert_eq!(m.op, MemOp::Read);
    assert_eq!(m.requester_id, Bdf::new(1, 0, 0));
    assert_eq!((m.tag, m.first_be, m.last_be), (1, 0xf, 0));
    assert_eq!(m.address, 0xf7e0_0010);
    assert_eq!(t.length_dw, 1);
    assert_eq!(t.ordering_class(), OrderingClass::NonPosted);
    assert_eq!(t.credits().data, 0);
}

#[test]
fn mrd64_with_10_bit_tag() {
    // T9 and T8 set (byte 1 = 0x88): tag 0x3ab.
    let b = bytes("20880010 0100abff 00000001 00002000");
    let t = roundtrip(b);
    assert_eq!(t.name(), "MRd64");
    let m = mem(&t);
    assert_eq!(m.tag, 0x3ab);
    assert_eq!(m.address, 0x1_0000_2000);
    assert_eq!(t.length_dw, 16);
    assert!(m.addr64);
}

#[test]
fn mrdlk32() {
    let t = roundtrip(bytes("01000001 0000050f 000a0000"));
    assert_eq!(t.name(), "MRdLk32");
    assert_eq!(t.kind(), Kind::MRdLk);
}

#[test]
fn length_zero_means_1024_dw() {
    // MRd32 of 4096 bytes at a page boundary, Length field 0.
    let t = roundtrip(bytes("00000000 010002ff 80000000"));
    assert_eq!(t.length_dw, 1024);
}

#[test]
fn mwr32_with_tph() {
    // TH set, PH = 2 in address bits 1:0, ST[7:0] = 0x08 in the Tag field of a posted write.
    let t = roundtrip(bytes("40010001 0100080f c0000002 12345678"));
    let m = mem(&t);
    assert!(t.th);
    assert_eq!(m.ph, 2);
    assert_eq!(m.address, 0xc000_0000);
    assert_eq!(m.tag, 0x08);
    assert_eq!(t.data, &[0x12, 0x34, 0x56, 0x78]);
    assert_eq!(t.ordering_class(), OrderingClass::Posted);
}

#[test]
fn dmwr64() {
    let t = roundtrip(bytes(
        "7b000002 010001ff 00000002 00000000 11223344 55667788",
    ));
    assert_eq!(t.name(), "DMWr64");
    assert_eq!(mem(&t).address, 0x2_0000_0000);
    assert_eq!(t.ordering_class(), OrderingClass::NonPosted);
}

#[test]
fn io_read_and_write() {
    let t = roundtrip(bytes("02000001 0000030f 00000cf8"));
    assert_eq!(t.name(), "IORd");
    let TlpHeader::Io(io) = t.header else {
        panic!()
    };
    assert_eq!((io.address, io.tag, io.first_be), (0xcf8, 3, 0xf));
    let t = roundtrip(bytes("42000001 00000403 00000080 000000aa"));
    assert_eq!(t.name(), "IOWr");
    assert_eq!(t.data, &[0, 0, 0, 0xaa]);
}

#[test]
fn config_requests() {
    // CfgRd0 of register 0x104 (Extended Register Number 1, Register Number 0x01) of 01:01.0.
    let t = roundtrip(bytes("04000001 00000a0f 01080104"));
    assert_eq!(t.name(), "CfgRd0");
    let TlpHeader::Cfg(c) = t.header else {
        panic!()
    };
    assert_eq!(c.target, Bdf::new(1, 1, 0));
    assert_eq!(c.register, 0x104);
    assert_eq!(c.tag, 0x0a);
    // CfgWr1 to bus 2, register 0x10 (BAR0).
    let t = roundtrip(bytes("45000001 0000020f 02000010 12345678"));
    assert_eq!(t.name(), "CfgWr1");
    let TlpHeader::Cfg(c) = t.header else {
        panic!()
    };
    assert_eq!(
        (c.target, c.register, c.write, c.type1),
        (Bdf::new(2, 0, 0), 0x10, true, true)
    );
}

#[test]
fn completions_with_every_status() {
    for (hex, status, name) in [
        ("0a000000 00002004 01000500", CplStatus::Ur, "Cpl"),
        ("0a000000 01004004 00000100", CplStatus::Crs, "Cpl"),
        ("0a000000 01008004 00000100", CplStatus::Ca, "Cpl"),
        ("0b000000 01002004 00001000", CplStatus::Ur, "CplLk"),
        (
            "4b000001 01000004 00001000 deadbeef",
            CplStatus::Sc,
            "CplDLk",
        ),
    ] {
        let b = bytes(hex);
        let t = roundtrip(b);
        let TlpHeader::Cpl(c) = t.header else {
            panic!()
        };
        assert_eq!((c.status, t.name()), (status, name), "{hex}");
        assert_eq!(t.ordering_class(), OrderingClass::Completion);
    }
}

#[test]
fn cpld_byte_count_zero_means_4096_and_lower_address() {
    let mut hex = String::from("4a000020 01001000 00000a40");
    for i in 0..32 {
        hex.push_str(&format!(" {i:08x}"));
    }
    let b = bytes(&hex);
    let t = roundtrip(b);
    let TlpHeader::Cpl(c) = t.header else {
        panic!()
    };
    assert_eq!(c.byte_count, 4096);
    assert_eq!(c.lower_address, 0x40);
    assert_eq!(c.completer_id, Bdf::new(1, 0, 0));
    assert_eq!(c.tag, 0x0a);
    assert!(c.bcm);
    assert_eq!(t.data.len(), 128);
    assert_eq!(t.credits().data, 8);
}

#[test]
fn messages_with_every_routing() {
    let cases: &[(&str, MsgRouting, u8)] = &[
        (
            "30000000 01000033 00000000 00000000",
            MsgRouting::ToRc,
            code::ERR_FATAL,
        ),
        // No message the specification defines routes by address (Table 2-20 note 27); a
        // code it leaves undefined may.
        (
            "31000000 01000060 00000000 fee01000",
            MsgRouting::ByAddress,
            0x60,
        ),
        (
            "32000000 0100007e 02000000 00011234",
            MsgRouting::ById,
            code::VENDOR_DEFINED_0,
        ),
        (
            "33000000 00000019 00000000 00000000",
            MsgRouting::Broadcast,
            code::PME_TURN_OFF,
        ),
        (
            "34000000 01000027 00000000 00000000",
            MsgRouting::Local,
            0x27,
        ),
        (
            "35000000 0100001b 00000000 00000000",
            MsgRouting::Gathered,
            code::PME_TO_ACK,
        ),
    ];
    for &(hex, routing, c) in cases {
        let b = bytes(hex);
        let t = roundtrip(b);
        let TlpHeader::Msg(m) = t.header else {
            panic!()
        };
        assert_eq!((m.routing, m.code), (routing, c), "{hex}");
        assert_eq!(t.ordering_class(), OrderingClass::Posted);
    }
    let t = roundtrip(bytes("32000000 0100007e 02000000 00011234"));
    let TlpHeader::Msg(m) = t.header else {
        panic!()
    };
    assert_eq!(m.target_id(), Bdf::new(2, 0, 0));
}

#[test]
fn base_spec_messages() {
    let t = roundtrip(bytes("34000000 01000020 00000000 00000000"));
    let TlpHeader::Msg(m) = t.header else {
        panic!()
    };
    assert_eq!(
        (m.code, m.with_data, m.routing),
        (0x20, false, MsgRouting::Local)
    );
    for (hex, c) in [
        ("33000000 00000000 00000000 00000000", code::UNLOCK),
        ("30000000 01000030 00000000 00000000", code::ERR_COR),
        ("30000000 01000031 00000000 00000000", code::ERR_NONFATAL),
        ("30000000 01000018 00000000 00000000", code::PM_PME),
        (
            "34000000 00000014 00000000 00000000",
            code::PM_ACTIVE_STATE_NAK,
        ),
        ("34000000 01000010 00000000 88018802", code::LTR),
        ("34000000 00000012 00000000 0000000f", code::OBFF),
        ("34000000 0a000052 00000000 00000000", code::PTM_REQUEST),
        ("30000000 01000004 00000000 00001003", code::PAGE_REQUEST),
        ("32000000 00000005 01000000 00001000", code::PRG_RESPONSE),
        (
            "32000000 01000002 00000000 00000001",
            code::ATS_INVALIDATE_COMPLETION,
        ),
    ] {
        let t = roundtrip(bytes(hex));
        let TlpHeader::Msg(m) = t.header else {
            panic!()
        };
        assert_eq!(m.code, c, "{hex}");
        assert!(!m.with_data);
    }
    // MsgD: Set_Slot_Power_Limit (1 DW), PTM ResponseD (Master Time in bytes 8..16, 1 DW of
    // Propagation Delay), ATS Invalidate Request (2 DW).
    for (hex, c, dws) in [
        (
            "74000001 00000050 00000000 00000000 0000012c",
            code::SET_SLOT_POWER_LIMIT,
            1,
        ),
        (
            "74000001 00000053 00000001 23456789 00000100",
            code::PTM_RESPONSE,
            1,
        ),
        (
            "72000002 00000001 01000000 00000000 00000012 34500000",
            code::ATS_INVALIDATE_REQUEST,
            2,
        ),
    ] {
        let t = roundtrip(bytes(hex));
        let TlpHeader::Msg(m) = t.header else {
            panic!()
        };
        assert_eq!(
            (m.code, m.with_data, t.data.len()),
            (c, true, dws * 4),
            "{hex}"
        );
    }
}

/// One valid vector for every Message Code of the base specification and every PCI-SIG-Defined
/// VDM, with the routings r[2:0] the specification's tables allow it (written down here from
/// the tables, independently of `message::RULES`).
const MESSAGE_VECTORS: &[(&str, &str, &[u8])] = &[
    // §2.2.8.4 Table 2-26
    ("Unlock", "33000000 00000000 00000000 00000000", &[0b011]),
    // §10.3.1, §10.3.2, §10.4.1, §10.4.2
    (
        "ATS_Invalidate_Request",
        "72000002 00000001 01000000 00000000 00000012 34500000",
        &[0b010],
    ),
    (
        "ATS_Invalidate_Completion",
        "32000000 01000002 00000000 00000001",
        &[0b010],
    ),
    (
        "Page_Request",
        "30000000 01000004 00000000 00001003",
        &[0b000],
    ),
    (
        "PRG_Response",
        "32000000 00000005 01000000 00001000",
        &[0b010],
    ),
    // §2.2.8.8 Table 2-33, §2.2.8.9 Table 2-34
    ("LTR", "34000000 01000010 00000000 88018802", &[0b100]),
    ("OBFF", "34000000 00000012 00000000 0000000f", &[0b100]),
    // §2.2.8.2 Table 2-23
    (
        "PM_Active_State_Nak",
        "34000000 00000014 00000000 00000000",
        &[0b100],
    ),
    ("PM_PME", "30000000 01000018 00000000 00000000", &[0b000]),
    (
        "PME_Turn_Off",
        "33000000 00000019 00000000 00000000",
        &[0b011],
    ),
    (
        "PME_TO_Ack",
        "35000000 0100001b 00000000 00000000",
        &[0b101],
    ),
    // §2.2.8.1 Table 2-21
    (
        "Assert_INTA",
        "34000000 01000020 00000000 00000000",
        &[0b100],
    ),
    (
        "Assert_INTB",
        "34000000 01000021 00000000 00000000",
        &[0b100],
    ),
    (
        "Assert_INTC",
        "34000000 01000022 00000000 00000000",
        &[0b100],
    ),
    (
        "Assert_INTD",
        "34000000 01000023 00000000 00000000",
        &[0b100],
    ),
    (
        "Deassert_INTA",
        "34000000 01000024 00000000 00000000",
        &[0b100],
    ),
    (
        "Deassert_INTB",
        "34000000 01000025 00000000 00000000",
        &[0b100],
    ),
    (
        "Deassert_INTC",
        "34000000 01000026 00000000 00000000",
        &[0b100],
    ),
    (
        "Deassert_INTD",
        "34000000 01000027 00000000 00000000",
        &[0b100],
    ),
    // §2.2.8.3 Table 2-24
    ("ERR_COR", "30000000 01000030 00000000 00000000", &[0b000]),
    (
        "ERR_NONFATAL",
        "30000000 01000031 00000000 00000000",
        &[0b000],
    ),
    ("ERR_FATAL", "30000000 01000033 00000000 00000000", &[0b000]),
    // §2.2.8.7 Table 2-32
    (
        "Ignored_Attention_Indicator_Off",
        "34000000 01000040 00000000 00000000",
        &[0b100],
    ),
    (
        "Ignored_Attention_Indicator_On",
        "34000000 01000041 00000000 00000000",
        &[0b100],
    ),
    (
        "Ignored_Attention_Indicator_Blink",
        "34000000 01000043 00000000 00000000",
        &[0b100],
    ),
    (
        "Ignored_Power_Indicator_Off",
        "34000000 01000044 00000000 00000000",
        &[0b100],
    ),
    (
        "Ignored_Power_Indicator_On",
        "34000000 01000045 00000000 00000000",
        &[0b100],
    ),
    (
        "Ignored_Power_Indicator_Blink",
        "34000000 01000047 00000000 00000000",
        &[0b100],
    ),
    (
        "Ignored_Attention_Button_Pressed",
        "34000000 01000048 00000000 00000000",
        &[0b100],
    ),
    // §2.2.8.5 Table 2-27
    (
        "Set_Slot_Power_Limit",
        "74000001 00000050 00000000 00000000 0000012c",
        &[0b100],
    ),
    // §2.2.8.10 Table 2-35: PTM Request, Response (Msg) and ResponseD (MsgD, 1 DW)
    (
        "PTM_Request",
        "34000000 0a000052 00000000 00000000",
        &[0b100],
    ),
    (
        "PTM_Response",
        "34000000 00000053 00000000 00000000",
        &[0b100],
    ),
    (
        "PTM_Response",
        "74000001 00000053 00000001 23456789 00000100",
        &[0b100],
    ),
    // §2.2.8.11 Table 2-36: Local for Link IDE, by ID for Selective IDE
    (
        "IDE_Sync",
        "34000000 01000054 00000000 00000000",
        &[0b010, 0b100],
    ),
    (
        "IDE_Fail",
        "34000000 01000055 00000000 00000000",
        &[0b010, 0b100],
    ),
    // §2.2.8.6 Table 2-28
    (
        "Vendor_Defined_Type_0",
        "32000000 0100007e 02001af4 00011234",
        &[0b000, 0b010, 0b011, 0b100],
    ),
    (
        "Vendor_Defined_Type_1",
        "70000001 0100007f 00001af4 00000000 deadbeef",
        &[0b000, 0b010, 0b011, 0b100],
    ),
    // §2.2.8.6.2–§2.2.8.6.4: PCI-SIG-Defined VDMs (Vendor ID 0001h, Subtype in byte 12)
    (
        "Hierarchy_ID",
        "73000004 0000007f 00000001 01000000 00000000 00000001 89abcdef 01234567",
        &[0b011],
    ),
    ("DRS", "34000000 0100007f 00000001 08000000", &[0b100]),
    ("FRS", "30000000 0100007f 00000001 09000001", &[0b000]),
];

#[test]
fn every_message_code_decodes_with_its_routings_and_no_other() {
    for &(name, hex, allowed) in MESSAGE_VECTORS {
        let b = bytes(hex);
        let t = roundtrip(b);
        let TlpHeader::Msg(m) = t.header else {
            panic!("{hex}")
        };
        assert!(allowed.contains(&(m.routing as u8)), "{name}: {hex}");
        assert!(t.to_string().contains(name), "{name}: {t}");
        // Every other routing r[2:0] of the same bytes: decodes if and only if the table
        // allows it, and then re-encodes byte for byte.
        for r in 0..=5u8 {
            let mut v = b.to_vec();
            v[0] = v[0] & !7 | r;
            match Tlp::parse(&v) {
                Ok(_) if allowed.contains(&r) => {
                    roundtrip(&v);
                }
                Ok(t) => panic!("{name} with routing {r:03b} decoded: {t}"),
                Err(e) if allowed.contains(&r) => panic!("{name} with routing {r:03b}: {e}"),
                Err(e) => {
                    assert!(
                        matches!(
                            e,
                            Error::Message {
                                violation: pcietun::tlp::message::Violation::Routing { .. },
                                ..
                            }
                        ),
                        "{name} with routing {r:03b}: {e:?}"
                    );
                    let msg = e.to_string();
                    assert!(msg.contains(name) && msg.contains("routing"), "{msg}");
                }
            }
        }
    }
    // The vectors cover every rule the codec knows.
    let named: Vec<&str> = MESSAGE_VECTORS.iter().map(|v| v.0).collect();
    for r in pcietun::tlp::message::RULES
        .iter()
        .chain(pcietun::tlp::message::PCI_SIG_VDMS)
    {
        assert!(named.contains(&r.name), "no vector for {}", r.name);
    }
}

#[test]
fn messages_with_the_wrong_payload_or_traffic_class_are_rejected() {
    use pcietun::tlp::message::Violation;
    for (hex, why) in [
        // Set_Slot_Power_Limit is a MsgD with 1 DW: not a Msg, not 2 DW.
        ("34000000 00000050 00000000 00000000", "Msg"),
        (
            "74000002 00000050 00000000 00000000 0000012c 00000000",
            "MsgD 2 DW",
        ),
        // LTR carries no data.
        ("74000001 01000010 00000000 88018802 00000000", "LTR MsgD"),
        // PTM ResponseD carries exactly 1 DW.
        (
            "74000002 00000053 00000001 23456789 00000100 00000000",
            "ResponseD 2 DW",
        ),
        // Hierarchy ID carries 4 DW.
        (
            "73000001 0000007f 00000001 01000000 00000000",
            "Hierarchy ID 1 DW",
        ),
        // ATS Invalidate Request is a MsgD with 2 DW.
        ("32000000 00000001 01000000 00000000", "Invalidate as Msg"),
    ] {
        let e = Tlp::parse(bytes(hex)).unwrap_err();
        assert!(
            matches!(
                e,
                Error::Message {
                    violation: Violation::Payload { .. },
                    ..
                }
            ),
            "{why}: {e:?}"
        );
    }
    // INTx, ERR_*, PM, LTR, Unlock must use TC0; Vendor-Defined messages need not.
    for hex in [
        "34100000 01000020 00000000 00000000",
        "30700000 01000033 00000000 00000000",
        "34200000 01000010 00000000 88018802",
        "33100000 00000000 00000000 00000000",
    ] {
        let e = Tlp::parse(bytes(hex)).unwrap_err();
        assert!(
            matches!(
                e,
                Error::Message {
                    violation: Violation::TrafficClass(_),
                    ..
                }
            ),
            "{hex}: {e:?}"
        );
        assert!(e.to_string().contains("TC0"), "{e}");
    }
    roundtrip(bytes("32700000 0100007e 02001af4 00011234"));
    // A Vendor-Defined message routed by address or gathered is malformed (Table 2-28).
    for hex in [
        "31000000 0100007f fee00000 00001000",
        "35000000 0100007e 00001af4 00000000",
    ] {
        assert!(matches!(
            Tlp::parse(bytes(hex)),
            Err(Error::Message {
                violation: Violation::Routing { .. },
                ..
            })
        ));
    }
}

#[test]
fn atomic_ops() {
    for (hex, name) in [
        ("4c000001 0100010f 00001000 00000001", "FetchAdd32"),
        ("6c000002 010001ff 00000001 00000008 00000000 00000001", "FetchAdd64"),
        ("4d000001 0100020f 00001004 cafef00d", "Swap32"),
        ("6d000002 010002ff 00000001 00000008 00000000 00000002", "Swap64"),
        ("4e000002 0100030f 00002000 00000000 00000001", "CAS32"),
        ("4e000004 010003ff 00002008 00000000 00000000 00000001 00000001", "CAS64"),
        (
            "6e000008 010003ff 00000001 00000010 00000000 00000000 00000000 00000001 00000000 00000000 00000000 00000002",
            "CAS128",
        ),
    ] {
        let b = bytes(hex);
        let t = roundtrip(b);
        assert_eq!(t.name(), name, "{hex}");
        assert_eq!(t.ordering_class(), OrderingClass::NonPosted);
    }
}

#[test]
fn prefixes_local_and_end_to_end() {
    // MR-IOV local prefix, PASID 0x12345 with Privileged Mode Requested, Extended TPH
    // ST[15:8] = 0xab, then an MRd64.
    let b = bytes("80000001 91212345 90ab0000 20000001 0100010f 00000001 00000000");
    let t = roundtrip(b);
    let p: Vec<Prefix> = t.prefixes.iter().collect();
    assert_eq!(
        p,
        vec![
            Prefix::MrIov(1),
            Prefix::Pasid {
                pasid: 0x12345,
                privileged: true,
                execute: false
            },
            Prefix::ExtendedTph { st_hi: 0xab },
        ]
    );
    assert_eq!(t.prefixes.st_hi(), Some(0xab));
    assert_eq!(t.name(), "MRd64");
}

#[test]
fn ecrc_is_computed_and_verified() {
    // Digests computed independently (Python zlib.crc32 over the bytes with the variant bits
    // Type[0] and EP set, stored little-endian).
    let b = bytes("00008001 0100010f f7e00010 d23af6a5");
    let t = roundtrip(b);
    assert!(t.td);
    assert_eq!(t.ecrc(), [0xd2, 0x3a, 0xf6, 0xa5]);
    // Local prefixes are not covered, End-End prefixes are.
    let b = bytes("80000001 91012345 20008001 0100010f 00000001 00000000 facdfa18");
    roundtrip(b);
    // One flipped bit anywhere is caught.
    let mut bad = bytes("00008001 0100010f f7e00010 d23af6a5").to_vec();
    bad[10] ^= 0x10;
    assert!(matches!(Tlp::parse(&bad), Err(Error::Ecrc { .. })));
    // The variant bits do not matter: poisoning on the way keeps the digest valid.
    let mut poisoned = bytes("00008001 0100010f f7e00010 d23af6a5").to_vec();
    poisoned[2] |= 0x40;
    assert!(Tlp::parse(&poisoned).unwrap().ep);
}

/// TLP headers that Linux AER printed on real machines (public kernel bug reports), completed
/// with a payload where the header says there is one.
#[test]
fn headers_captured_by_linux_aer() {
    // Dell PowerEdge: MWr32 1 DW from 00:00.0 to 0x90028090.
    let t = roundtrip(bytes("40000001 0000000f 90028090 00000000"));
    assert_eq!(mem(&t).address, 0x9002_8090);
    // igb: MWr32 with tag 4.
    let t = roundtrip(bytes("40000001 0000040f cdbfc00c 00000000"));
    assert_eq!(mem(&t).tag, 4);
    // amdgpu: MWr32 4 DW from 0a:00.0.
    let t = roundtrip(bytes(
        "40000004 0a0000ff fffc0e80 00000000 00000000 00000000 00000000",
    ));
    assert_eq!(mem(&t).requester_id, Bdf::new(0x0a, 0, 0));
    // vfio-pci / AMD GPU: MWr64 with No Snoop, 4 DW.
    let t = roundtrip(bytes(
        "60001004 000000ff 0000007d fe7eb000 00000000 00000000 00000000 00000000",
    ));
    assert!(t.attr.ns);
    assert_eq!(mem(&t).address, 0x7d_fe7e_b000);
    // NVMe behind a0:10.0: MWr64 of 122 DW from ab:00.0.
    let mut hex = String::from("6000007a ab0000ff 00000001 629d4318");
    hex.push_str(&" 00000000".repeat(122));
    let t = roundtrip(bytes(&hex));
    assert_eq!((t.length_dw, mem(&t).address), (122, 0x1_629d_4318));
    // mlx4: CplD 1 DW, byte count 4.
    let t = roundtrip(bytes("4a000001 01000004 00000000 00000000"));
    assert_eq!(t.name(), "CplD");
    // vfio-pci: a poisoned CplD of 16 DW for 01:00.0.
    let mut hex = String::from("4a004010 00000040 01000000");
    hex.push_str(&" ffffffff".repeat(16));
    let t = roundtrip(bytes(&hex));
    let TlpHeader::Cpl(c) = t.header else {
        panic!()
    };
    assert!(t.ep);
    assert_eq!((c.byte_count, c.requester_id), (64, Bdf::new(1, 0, 0)));
    // thunderbolt: PTM Request from 0a:00.0.
    let t = roundtrip(bytes("34000000 0a000052 00000000 00000000"));
    let TlpHeader::Msg(m) = t.header else {
        panic!()
    };
    assert_eq!(m.code, code::PTM_REQUEST);
    // mlx5: MWr64 with TD set (digest computed here, the log has none).
    let mut hex = String::from("60008010 010000ff 00001000 9c4c0000");
    hex.push_str(&" 00000000".repeat(16));
    hex.push_str(" 9542ef5b");
    let t = roundtrip(bytes(&hex));
    assert!(t.td);
    // A header logged with MalfTLP: MRd32 of 192 DW with First BE 0 and reserved address
    // bits set — malformed, and we say so.
    assert!(matches!(
        Tlp::parse(bytes("000000c0 01010000 00000001")),
        Err(Error::ReservedBits(_))
    ));
    assert!(matches!(
        Tlp::parse(bytes("000000c0 01010000 00000000")),
        Err(Error::ByteEnables { .. })
    ));
}

#[test]
fn malformed_inputs_are_typed_errors() {
    type Check = fn(&Error) -> bool;
    let cases: &[(&str, Check)] = &[
        ("", |e| matches!(e, Error::Truncated { .. })),
        ("000000", |e| matches!(e, Error::Truncated { .. })),
        ("00000001 0100010f", |e| {
            matches!(e, Error::Truncated { .. })
        }),
        ("03000001 0100010f 00000000", |e| {
            matches!(e, Error::ReservedFmtType { .. })
        }),
        ("a0000001 0100010f 00000000", |e| {
            matches!(e, Error::ReservedFmtType { .. })
        }),
        ("36000000 01000000 00000000 00000000", |e| {
            matches!(e, Error::ReservedFmtType { .. })
        }),
        ("30000000 01000000 00000000", |e| {
            matches!(e, Error::Truncated { .. })
        }),
        ("40000002 0100000f 00001000 00000000", |e| {
            matches!(e, Error::LengthMismatch { .. })
        }),
        ("00000001 0100000f 00001000 00000000", |e| {
            matches!(e, Error::LengthMismatch { .. })
        }),
        ("00000001 010001ff 00001000", |e| {
            matches!(e, Error::ByteEnables { .. })
        }),
        ("00000003 0100015f 00001000", |e| {
            matches!(e, Error::ByteEnables { .. })
        }),
        ("00000003 01000109 00001000", |e| {
            matches!(e, Error::ByteEnables { .. })
        }),
        ("00000002 010001ff 00000ffc", |e| {
            matches!(e, Error::Crosses4K { .. })
        }),
        ("0a000000 0100e004 00000000", |e| {
            matches!(e, Error::InvalidField { .. })
        }),
        ("0a000000 01000004 00000080", |e| {
            matches!(e, Error::ReservedBits(_))
        }),
        ("04000002 0000000f 01000000", |e| {
            matches!(e, Error::InvalidField { .. })
        }),
        ("04000001 000000ff 01000000", |e| {
            matches!(e, Error::ByteEnables { .. })
        }),
        ("04000001 0000000f 0100f000", |e| {
            matches!(e, Error::ReservedBits(_))
        }),
        ("04100001 0000000f 01000000", |e| {
            matches!(e, Error::InvalidField { .. })
        }),
        ("02000001 0000000f 00000cf9", |e| {
            matches!(e, Error::ReservedBits(_))
        }),
        ("00000001 0100000f 00001001", |e| {
            matches!(e, Error::ReservedBits(_))
        }),
        (
            "4c000003 0100000f 00001000 00000000 00000000 00000000",
            |e| matches!(e, Error::InvalidField { .. }),
        ),
        ("4c000002 010000ff 00001004 00000000 00000000", |e| {
            matches!(e, Error::InvalidField { .. })
        }),
        ("30000000 01000020 00000000 00000000", |e| {
            matches!(e, Error::Message { code: 0x20, .. })
        }),
        (
            "90000000 90000000 90000000 90000000 90000000 00000001 0100000f 00000000",
            |e| matches!(e, Error::TooManyPrefixes { end_to_end: true }),
        ),
        ("91000000 80000000 00000001 0100000f 00000000", |e| {
            matches!(e, Error::PrefixOrder)
        }),
        ("00008001 0100010f f7e00010 00000000", |e| {
            matches!(e, Error::Ecrc { .. })
        }),
    ];
    for (hex, check) in cases {
        let b = bytes(hex);
        match Tlp::parse(b) {
            Ok(t) => panic!("{hex} decoded as {t}"),
            Err(e) => assert!(check(&e), "{hex}: unexpected error {e:?}"),
        }
    }
}

#[test]
fn display_reads_like_an_analyser() {
    let b = bytes("20880010 0100abff 00000001 00002000");
    let s = Tlp::parse(b).unwrap().to_string();
    assert!(s.starts_with("MRd64"), "{s}");
    for part in ["RID 01:00.0", "Tag 3ab", "Addr 0x100002000", "Len 16"] {
        assert!(s.contains(part), "{s} lacks {part}");
    }
    let b = bytes("34000000 01000020 00000000 00000000");
    let s = Tlp::parse(b).unwrap().to_string();
    assert!(s.contains("Assert_INTA") && s.contains("Local"), "{s}");
    let b = bytes("32000000 0100007e 02001af4 00011234");
    let s = Tlp::parse(b).unwrap().to_string();
    assert!(
        s.contains("Vendor_Defined_Type_0") && s.contains("Vendor 1af4"),
        "{s}"
    );
    assert!(s.contains("Target 02:00.0"), "{s}");
    let b = bytes("34000000 01000010 00000000 88018802");
    let s = Tlp::parse(b).unwrap().to_string();
    assert!(
        s.contains("LTR") && s.contains("NoSnoop 8801 Snoop 8802"),
        "{s}"
    );
}

#[test]
fn emit_rejects_a_short_buffer_and_inconsistent_values() {
    let b = bytes("40000001 0100000f fee00000 00000041");
    let t = Tlp::parse(b).unwrap();
    let mut small = [0u8; 15];
    assert_eq!(
        t.emit(&mut small),
        Err(Error::BufferTooSmall { need: 16, have: 15 })
    );
    let mut wrong = t;
    wrong.length_dw = 2;
    assert!(matches!(
        wrong.emit(&mut [0u8; 64]),
        Err(Error::PayloadMismatch { .. })
    ));
    let mut wrong = t;
    wrong.tc = 9;
    assert!(matches!(
        wrong.emit(&mut [0u8; 64]),
        Err(Error::InvalidField { .. })
    ));
}
