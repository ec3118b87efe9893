//! Fuzz the frame parsers (docs/protocol.md §2, §4): header, ACK block, TLP records.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pcietun::transport::frame::{AckBlock, Header, Records, ACK_LEN, HEADER_LEN};

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = Header::parse(data) {
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
    }
    for r in Records::new(data, data.first().copied().unwrap_or(0)).flatten() {
        assert!(r.range.end <= data.len());
    }
});
