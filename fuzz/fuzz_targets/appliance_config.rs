//! Fuzz the appliance's configuration parsers with arbitrary text: the TOML configuration
//! (`ApplianceConfig::from_toml`), `--device` flag values and function ids. Nothing may panic;
//! a configuration that parses has every device at a distinct device/function number, and a
//! function id that parses prints back as the same text.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use pcietun::appliance::config::parse_device_flag;
use pcietun::appliance::{ApplianceConfig, FunctionId};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cfg) = ApplianceConfig::from_toml(text, "fuzz.toml", Path::new("/nonexistent")) {
        for (i, a) in cfg.devices.iter().enumerate() {
            assert!(
                cfg.devices[..i].iter().all(|b| b.bdf != a.bdf),
                "two devices at {}",
                a.bdf
            );
        }
    }
    let _ = parse_device_flag(text);
    if let Ok(id) = text.parse::<FunctionId>() {
        assert_eq!(id.as_str(), text);
    }
});
