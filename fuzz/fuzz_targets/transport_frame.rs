//! Fuzz the frame parsers (docs/protocol.md §2, §4): header, ACK block, TLP records. What
//! parses must emit back to the same bytes (reserved bytes and padding aside).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pcietun::transport::frame::{
    emit_record, record_len, AckBlock, AckView, FrameHeader, Records, ACK_LEN, HEADER_LEN,
    RECORD_HDR_LEN,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = FrameHeader::parse(data) {
        let mut out = [0u8; HEADER_LEN];
        h.emit(&mut out);
        assert_eq!(&out[..], &data[..HEADER_LEN]);
        let body = &data[HEADER_LEN..HEADER_LEN + usize::from(h.body_len)];
        let recs = if body.len() >= ACK_LEN && AckBlock::parse(body).is_ok() {
            &body[ACK_LEN..]
        } else {
            body
        };
        for r in Records::new(recs, h.n_records).flatten() {
            assert!(r.range.end <= recs.len());
        }
    }
    if let Ok(a) = AckBlock::parse(data) {
        let mut out = [0u8; ACK_LEN];
        a.emit(&mut out);
        assert_eq!(AckBlock::parse(&out), Ok(a));
        // Every field but the unused SACK slots and the reserved bytes is as received.
        let v = AckView::new_checked(data).unwrap();
        assert_eq!(&out[..33], &data[..33]);
        let used = 36 + 8 * usize::from(v.n_sack());
        assert_eq!(&out[36..used], &data[36..used]);
    }
    for r in Records::new(data, data.first().copied().unwrap_or(0)).flatten() {
        assert!(r.range.end <= data.len());
        let start = r.range.start - RECORD_HDR_LEN;
        let tlp = &data[r.range.clone()];
        let mut out = vec![0u8; record_len(tlp.len())];
        emit_record(&mut out, r.seq, r.class, tlp);
        assert_eq!(
            &out[..RECORD_HDR_LEN + tlp.len()],
            &data[start..r.range.end]
        );
    }
});
