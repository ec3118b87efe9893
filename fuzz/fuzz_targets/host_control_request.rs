//! Fuzz the host agent's control-socket request parser and line reader: arbitrary bytes must
//! never panic; whatever parses must print to a line that parses to the same request.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pcietun::host::control::{read_line, Request, MAX_REQUEST};

fuzz_target!(|data: &[u8]| {
    let _ = read_line(&mut &data[..], MAX_REQUEST);
    let text = String::from_utf8_lossy(data);
    if let Ok(r) = text.parse::<Request>() {
        let line = r.to_string();
        assert!(line.len() <= MAX_REQUEST, "{line}");
        assert_eq!(line.parse::<Request>(), Ok(r));
    }
});
