//! Properties of the handshake: snow against the published vector of this exact pattern,
//! byte layouts, identity hiding, tamper and downgrade resistance, forward secrecy, and
//! parsers that never panic.

use super::*;
use crate::transport::cookie::MacKeys;
use proptest::prelude::*;

fn hex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

/// The `Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s` vector from the cacophony suite that snow ships
/// in its tests (tests/vectors/cacophony.txt): fixed statics, ephemerals, prologue and PSK;
/// the first two messages and the handshake hash must match byte for byte, so the library we
/// rely on implements this pattern exactly as the reference implementation does.
#[test]
fn snow_matches_the_cacophony_vector_for_our_pattern() {
    let prologue = hex("4a6f686e2047616c74");
    let psk: [u8; 32] = hex("54686973206973206d7920417573747269616e20706572737065637469766521")
        .try_into()
        .unwrap();
    let init_static = hex("e61ef9919cde45dd5f82166404bd08e38bceb5dfdfded0a34c8df7ed542214d1");
    let init_eph = hex("893e28b9dc6ca8d611ab664754b8ceb7bac5117349a4439a6b0569da977c464a");
    let resp_static = hex("4a3acbfdb163dec651dfa3194dece676d437029c62a408b4c5ea9114246e4893");
    let resp_eph = hex("bbdb4cdbd309f1a1f2e1456967fe288cadd6f712d65dc7b7793d5e63da6b375b");
    let remote = hex("31e0303fd6418d2f8c0e78b91f22e8caed0fbe48656dcf4767e4834f701b8f62");
    let mut i = snow::Builder::new(PARAMS.clone())
        .local_private_key(&init_static)
        .unwrap()
        .remote_public_key(&remote)
        .unwrap()
        .prologue(&prologue)
        .unwrap()
        .psk(2, &psk)
        .unwrap()
        .fixed_ephemeral_key_for_testing_only(&init_eph)
        .build_initiator()
        .unwrap();
    let mut r = snow::Builder::new(PARAMS.clone())
        .local_private_key(&resp_static)
        .unwrap()
        .prologue(&prologue)
        .unwrap()
        .psk(2, &psk)
        .unwrap()
        .fixed_ephemeral_key_for_testing_only(&resp_eph)
        .build_responder()
        .unwrap();
    let mut m = [0u8; 200];
    let mut p = [0u8; 200];
    let n = i
        .write_message(&hex("4c756477696720766f6e204d69736573"), &mut m)
        .unwrap();
    assert_eq!(
        m[..n],
        hex("ca35def5ae56cec33dc2036731ab14896bc4c75dbb07a61f879f8e3afa4c7944001e21de9f98ddd8e2ad57527207feb56253c9c94a9e496782ecfcb2a75fbcaf1b52948cc48daefe660c62119ab5000980c84831215f2441eba616548e832985464cf17e51ee93109008399a21f7e13f")[..]
    );
    r.read_message(&m[..n], &mut p).unwrap();
    let n = r
        .write_message(&hex("4d757272617920526f746862617264"), &mut m)
        .unwrap();
    assert_eq!(
        m[..n],
        hex("95ebc60d2b1fa672c1f46a8aa265ef51bfe38e7ccb39ec5be34069f144808843cb765f2caef0751b8f007572dab0322217755c0632f365717edbf34d33e87a")[..]
    );
    i.read_message(&m[..n], &mut p).unwrap();
    assert_eq!(
        i.get_handshake_hash(),
        &hex("f5191b875290abcd41347ac3622d9679688a7e980229cb937ef748336cfde0e5")[..]
    );
    assert_eq!(i.get_handshake_hash(), r.get_handshake_hash());
    // And the raw split agrees on both sides, crosswise.
    let (a1, a2) = i.dangerously_get_raw_split();
    let (b1, b2) = r.dangerously_get_raw_split();
    assert_eq!((a1, a2), (b1, b2));
    assert_ne!(a1, a2);
}

struct Pair {
    host: SecretKey,
    app: SecretKey,
    psk: Option<Psk>,
}

fn pair() -> Pair {
    Pair {
        host: SecretKey::generate(),
        app: SecretKey::generate(),
        psk: Some(Psk::generate()),
    }
}

fn payload() -> InitPayload {
    InitPayload {
        timestamp: Tai64N::from_unix(1_700_000_000, 5),
        epoch: 7,
        min_version: 1,
        max_version: 1,
        mtu: 1472,
        encrypt: true,
        rekey: false,
        ciphers: 3,
        credits: [1, 2, 3, 4, 5, 6],
    }
}

fn resp_payload() -> RespPayload {
    RespPayload {
        session: 0x2222,
        epoch: 9,
        version: 1,
        encrypt: true,
        cipher: Cipher::Aes256Gcm,
        mtu: 1400,
        credits: [6, 5, 4, 3, 2, 1],
    }
}

/// INIT from the host.
fn init(p: &Pair, out: &mut [u8; INIT_LEN]) -> Initiator {
    let jar = CookieJar::new(&p.app.public_key());
    Initiator::start(
        &p.host,
        &p.app.public_key(),
        p.psk.as_ref(),
        0x1111,
        &payload(),
        &jar,
        Instant::ZERO,
        out,
    )
    .unwrap()
}

#[test]
fn full_handshake_agrees_on_keys_and_parameters() {
    let p = pair();
    let mut f = [0u8; INIT_LEN];
    let mut i = init(&p, &mut f);
    let v = InitFrame::new_checked(&f).unwrap();
    assert_eq!(v.sender(), 0x1111);
    assert!(MacKeys::new(&p.app.public_key()).verify_mac1(v.mac1_input(), v.mac1()));
    assert_eq!(v.mac2(), &[0; 16], "no cookie, no mac2");
    let r = Responder::read(&p.app, v).unwrap();
    assert_eq!(
        r.remote(),
        &p.host.public_key(),
        "the appliance learns who it is"
    );
    assert_eq!(r.payload(), &payload());
    let mut g = [0u8; RESP_LEN];
    let rk = r.respond(p.psk.as_ref(), &resp_payload(), &mut g).unwrap();
    assert_eq!(FrameHeader::parse(&g).unwrap().dst_session, 0x1111);
    let (rp, ik) = i.finish(&g, &MacKeys::new(&p.host.public_key())).unwrap();
    assert_eq!(rp, resp_payload());
    assert_eq!(*ik.initiator_to_responder, *rk.initiator_to_responder);
    assert_eq!(*ik.responder_to_initiator, *rk.responder_to_initiator);
    assert_ne!(*ik.initiator_to_responder, *ik.responder_to_initiator);
    assert_eq!(format!("{ik:?}"), "SessionKeys(..)");
}

#[test]
fn layout_is_byte_exact() {
    assert_eq!((INIT_LEN, RESP_LEN), (204, 128));
    assert_eq!(init_field::MAC2.end, 180);
    assert_eq!(init_field::PAYLOAD.len(), INIT_PAYLOAD_LEN + 16);
    assert_eq!(resp_field::PAYLOAD.len(), RESP_PAYLOAD_LEN + 16);
    let p = pair();
    let mut f = [0u8; INIT_LEN];
    init(&p, &mut f);
    // header: magic, version 1, type 1, no flags, body 180, dst/epoch/pn zero
    assert_eq!(&f[..8], &[0x50, 0x54, 1, 1, 0, 0, 0, 180]);
    assert_eq!(&f[8..24], &[0; 16]);
    assert_eq!(&f[24..28], &0x1111u32.to_be_bytes());
    let mut pl = [0u8; INIT_PAYLOAD_LEN];
    payload().emit(&mut pl);
    assert_eq!(&pl[..12], &Tai64N::from_unix(1_700_000_000, 5).0);
    assert_eq!(&pl[12..16], &[0, 0, 0, 7]);
    assert_eq!(&pl[16..24], &[1, 1, 0x05, 0xc0, 1, 3, 0, 0]);
    assert_eq!(&pl[24..28], &[0, 0, 0, 1]);
    let mut rp = [0u8; RESP_PAYLOAD_LEN];
    resp_payload().emit(&mut rp);
    assert_eq!(
        &rp[..16],
        &[0, 0, 0x22, 0x22, 0, 0, 0, 9, 1, 1, 2, 0, 0x05, 0x78, 0, 0]
    );
}

/// Nothing in an INIT names the host: neither its static key (any 8-byte window of it) nor
/// its name, which does not even reach this layer.
#[test]
fn init_hides_the_host_identity() {
    for _ in 0..20 {
        let p = pair();
        let mut f = [0u8; INIT_LEN];
        init(&p, &mut f);
        let key = p.host.public_key();
        for w in key.as_bytes().windows(8) {
            assert!(
                !f.windows(8).any(|x| x == w),
                "static key bytes visible in INIT"
            );
        }
    }
}

/// Flip any bit of an INIT and recompute mac1 (as an attacker who knows the appliance's
/// public key can): the Noise layer still refuses it, so version, flags, cipher offer, MTU,
/// timestamp, sender id — everything — is authenticated.
#[test]
fn every_bit_of_init_is_authenticated() {
    let p = pair();
    let mut f = [0u8; INIT_LEN];
    init(&p, &mut f);
    let macs = MacKeys::new(&p.app.public_key());
    for bit in 0..(HEADER_LEN + init_field::MAC1.start) * 8 {
        let mut g = f;
        g[bit / 8] ^= 1 << (bit % 8);
        let m = macs.mac1(&g[..HEADER_LEN + init_field::MAC1.start]);
        g[HEADER_LEN + init_field::MAC1.start..HEADER_LEN + init_field::MAC1.end]
            .copy_from_slice(&m);
        let ok = InitFrame::new_checked(&g).and_then(|v| Responder::read(&p.app, v));
        assert!(ok.is_err(), "INIT bit {bit} flipped and accepted");
    }
}

/// The same for RESP: any flipped bit (mac1 recomputed with the host's public key) fails,
/// so the appliance's choice of cipher, encryption and version cannot be downgraded.
#[test]
fn every_bit_of_resp_is_authenticated() {
    let p = pair();
    let own = MacKeys::new(&p.host.public_key());
    let mut f = [0u8; INIT_LEN];
    let mut i = init(&p, &mut f);
    let r = Responder::read(&p.app, InitFrame::new_checked(&f).unwrap()).unwrap();
    let mut g = [0u8; RESP_LEN];
    r.respond(p.psk.as_ref(), &resp_payload(), &mut g).unwrap();
    for bit in 0..(HEADER_LEN + resp_field::MAC1.start) * 8 {
        let mut h = g;
        h[bit / 8] ^= 1 << (bit % 8);
        let m = own.mac1(&h[..HEADER_LEN + resp_field::MAC1.start]);
        h[HEADER_LEN + resp_field::MAC1.start..].copy_from_slice(&m);
        assert!(
            i.finish(&h, &own).is_err(),
            "RESP bit {bit} flipped and accepted"
        );
    }
    // mac1 itself, and a RESP for someone else
    let mut h = g;
    h[RESP_LEN - 1] ^= 1;
    assert_eq!(i.finish(&h, &own).unwrap_err(), HandshakeError::BadMac1);
    // …and after all those forgeries the genuine RESP still completes the handshake.
    assert!(i.finish(&g, &own).is_ok());
}

#[test]
fn wrong_keys_fail() {
    let p = pair();
    let mut f = [0u8; INIT_LEN];
    let mut i = init(&p, &mut f);
    // another appliance cannot read it
    assert_eq!(
        Responder::read(&SecretKey::generate(), InitFrame::new_checked(&f).unwrap()).unwrap_err(),
        HandshakeError::Decrypt
    );
    // the right appliance with the wrong PSK answers something the host refuses
    let r = Responder::read(&p.app, InitFrame::new_checked(&f).unwrap()).unwrap();
    let mut g = [0u8; RESP_LEN];
    r.respond(Some(&Psk::generate()), &resp_payload(), &mut g)
        .unwrap();
    assert_eq!(
        i.finish(&g, &MacKeys::new(&p.host.public_key()))
            .unwrap_err(),
        HandshakeError::Decrypt
    );
    // no PSK on one side, a PSK on the other
    let r = Responder::read(&p.app, InitFrame::new_checked(&f).unwrap()).unwrap();
    r.respond(None, &resp_payload(), &mut g).unwrap();
    assert!(i.finish(&g, &MacKeys::new(&p.host.public_key())).is_err());
}

/// Forward secrecy: someone holding both static keys, the PSK and the whole transcript still
/// cannot compute the session keys — they depend on the ephemeral secrets, which were never
/// sent and are gone. (With the appliance's static key the INIT *payload* is readable, as in
/// any IK handshake; it carries no secret.)
#[test]
fn static_keys_and_transcript_do_not_give_the_session_keys() {
    let p = pair();
    let mut f = [0u8; INIT_LEN];
    let mut i = init(&p, &mut f);
    let r = Responder::read(&p.app, InitFrame::new_checked(&f).unwrap()).unwrap();
    let mut g = [0u8; RESP_LEN];
    let real = r.respond(p.psk.as_ref(), &resp_payload(), &mut g).unwrap();
    i.finish(&g, &MacKeys::new(&p.host.public_key())).unwrap();
    // 1. Replay the appliance's side from its static key: reading INIT works, but the RESP
    // it can write uses a new ephemeral, so its keys differ from the real ones.
    let r2 = Responder::read(&p.app, InitFrame::new_checked(&f).unwrap()).unwrap();
    let mut g2 = [0u8; RESP_LEN];
    let k2 = r2
        .respond(p.psk.as_ref(), &resp_payload(), &mut g2)
        .unwrap();
    assert_ne!(*k2.initiator_to_responder, *real.initiator_to_responder);
    assert_ne!(*k2.responder_to_initiator, *real.responder_to_initiator);
    // 2. Replay the host's side from its static key: a new INIT has a new ephemeral, and the
    // recorded RESP does not even decrypt against it.
    let mut f3 = [0u8; INIT_LEN];
    let mut i3 = Initiator::start(
        &p.host,
        &p.app.public_key(),
        p.psk.as_ref(),
        0x1111,
        &payload(),
        &CookieJar::new(&p.app.public_key()),
        Instant::ZERO,
        &mut f3,
    )
    .unwrap();
    assert_ne!(f3[28..60], f[28..60], "a fresh ephemeral every time");
    assert!(i3.finish(&g, &MacKeys::new(&p.host.public_key())).is_err());
}

#[test]
fn payload_fields_are_range_checked() {
    let mut b = [0u8; INIT_PAYLOAD_LEN];
    payload().emit(&mut b);
    assert_eq!(InitPayload::parse(&b).unwrap(), payload());
    for (at, v) in [(12, 0u8), (20, 0x80), (22, 1)] {
        let mut c = b;
        if at == 12 {
            c[12..16].fill(0);
        } else {
            c[at] = v;
        }
        assert_eq!(
            InitPayload::parse(&c),
            Err(HandshakeError::Field),
            "byte {at}"
        );
    }
    let mut c = b;
    c[18..20].copy_from_slice(&255u16.to_be_bytes());
    assert!(InitPayload::parse(&c).is_err(), "MTU below 256");
    let mut r = [0u8; RESP_PAYLOAD_LEN];
    resp_payload().emit(&mut r);
    assert_eq!(RespPayload::parse(&r).unwrap(), resp_payload());
    let mut c = r;
    c[10] = 7;
    assert_eq!(RespPayload::parse(&c), Err(HandshakeError::Version));
    let mut c = r;
    c[0..4].fill(0);
    assert_eq!(RespPayload::parse(&c), Err(HandshakeError::Field));
    let mut c = r;
    c[9] = 2;
    assert_eq!(RespPayload::parse(&c), Err(HandshakeError::Field));
}

#[test]
fn timestamps_order_as_time() {
    let a = Tai64N::from_unix(100, 999_999_999);
    let b = Tai64N::from_unix(101, 0);
    assert!(a < b && a.next() == b);
    assert!(Tai64N::now() > Tai64N::from_unix(1_600_000_000, 0));
    assert_eq!(
        a.after(std::time::Duration::from_millis(1500)),
        Tai64N::from_unix(102, 499_999_999)
    );
    assert_eq!(&b.0[..8], &(0x4000_0000_0000_000a_u64 + 101).to_be_bytes());
}

proptest! {
    #[test]
    fn parsers_never_panic(data in proptest::collection::vec(any::<u8>(), 0..260)) {
        let _ = InitPayload::parse(&data);
        let _ = RespPayload::parse(&data);
        if let Ok(v) = InitFrame::new_checked(&data) {
            let _ = (v.sender(), v.mac1(), v.mac2(), v.mac1_input(), v.mac2_input());
            prop_assert!(Responder::read(&SecretKey::from_bytes([1; 32]), v).is_err());
        }
    }

    #[test]
    fn payload_roundtrip(e in 1u32.., mtu in 256u16.., enc: bool, rekey: bool, c in any::<u8>(),
                         cr in any::<[u32; 6]>(), s in any::<u64>(), n in 0u32..1_000_000_000) {
        let p = InitPayload { timestamp: Tai64N::from_unix(s >> 2, n), epoch: e, mtu, encrypt: enc,
                              rekey, ciphers: c, credits: cr, ..payload() };
        let mut b = [0u8; INIT_PAYLOAD_LEN];
        p.emit(&mut b);
        prop_assert_eq!(InitPayload::parse(&b), Ok(p));
    }
}
