//! Fuzz what the appliance's vfio-user client parses from a server (a hostile server must not
//! crash the appliance): arbitrary bytes as a whole server message (`parse_server_message`,
//! whose checked DMA requests must be self-consistent), as a VERSION reply body, and as a
//! config region with region sizes (`present_config`, whose BARs must cover the regions).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pcietun::endpoint::vfio_user_client::{
    parse_server_message, parse_version_reply, present_config, ServerInfo, ServerMessage,
    MAX_DATA_XFER,
};
use pcietun::pci::vfio_user::{RegionInfoRepr, HEADER_LEN};

fuzz_target!(|data: &[u8]| {
    match parse_server_message(data) {
        Ok(ServerMessage::Reply { body, .. }) => assert_eq!(body, &data[HEADER_LEN..]),
        Ok(ServerMessage::DmaWrite {
            access, data: d, ..
        }) => {
            assert_eq!(d.len() as u64, access.count);
            assert!(access.count <= MAX_DATA_XFER as u64);
            assert!(access.address.checked_add(access.count).is_some());
        }
        Ok(ServerMessage::DmaRead { access, .. }) => {
            assert!(access.count > 0 && access.count <= MAX_DATA_XFER as u64);
        }
        _ => {}
    }
    if let Ok((_, _, fds, xfer)) = parse_version_reply(data) {
        assert!(fds <= 64 && (4..=MAX_DATA_XFER).contains(&xfer));
    }
    // The first 48 bytes are six region sizes (bounded as the handshake bounds them), the
    // rest the config region.
    if data.len() >= 48 + 64 {
        let mut regions: Vec<RegionInfoRepr> = (0..6)
            .map(|i| {
                let mut s = [0u8; 8];
                s.copy_from_slice(&data[8 * i..8 * i + 8]);
                RegionInfoRepr {
                    index: i as u32,
                    size: u64::from_le_bytes(s) & ((1 << 40) - 1),
                    ..Default::default()
                }
            })
            .collect();
        let config = data[48..data.len().min(48 + 4096)].to_vec();
        regions.push(RegionInfoRepr::default());
        regions.push(RegionInfoRepr {
            index: 7,
            size: config.len() as u64,
            ..Default::default()
        });
        let info = ServerInfo {
            version: (0, 1),
            max_msg_fds: 1,
            max_data_xfer: MAX_DATA_XFER,
            regions: regions.clone(),
            irqs: [u32::from(data[0] & 1), 0, 0],
            config,
        };
        if let Ok((_, bars)) = present_config(&info) {
            for b in bars {
                assert!(b.size.is_power_of_two() && b.size >= regions[b.index].size);
            }
        }
    }
});
