//! The host's downlink copy does not allocate per TLP (issue 12): `Downlink::send_tlp` hands
//! the session a `&[u8]`, which the transport needs as `Bytes` it can keep until the peer
//! acknowledges it. The session's `TlpArena` cuts those copies off shared chunks, so a steady
//! stream allocates about once per chunk, not once per TLP as `Bytes::copy_from_slice` did.

mod alloc_common;

use pcietun::host::tlpio::TlpArena;
use std::collections::VecDeque;

/// Push `n` TLPs of `len` bytes through `arena`, keeping the last `window` alive (what the
/// transport holds unacknowledged); returns the allocations it took and checks every copy.
fn stream(arena: &TlpArena, n: usize, len: usize, window: usize) -> u64 {
    let mut held = VecDeque::with_capacity(window + 1);
    let mut tlp = vec![0u8; len];
    let before = alloc_common::allocations();
    for i in 0..n {
        tlp[0] = i as u8;
        tlp[len - 1] = (i >> 8) as u8;
        let b = arena.copy(&tlp);
        assert_eq!(b.len(), len);
        assert_eq!((b[0], b[len - 1]), (i as u8, (i >> 8) as u8), "copy {i}");
        held.push_back(b);
        if held.len() > window {
            held.pop_front();
        }
    }
    let after = alloc_common::allocations();
    drop(held);
    after - before
}

#[test]
fn a_stream_of_host_tlps_allocates_per_chunk_not_per_tlp() {
    let arena = TlpArena::default();
    // Warm up: the first chunks.
    stream(&arena, 1000, 4112, 64);
    // 20 000 completions of 4 KiB (80 MiB) with 64 in flight, then 20 000 small writes.
    let big = stream(&arena, 20_000, 4112, 64);
    let small = stream(&arena, 20_000, 20, 256);
    // A chunk holds 63 such TLPs and costs two allocations (the buffer and its shared
    // header); one per TLP (`Bytes::copy_from_slice`) would be 20 000.
    assert!(
        big <= 20_000 / 16,
        "{big} allocations for 20 000 TLPs of 4 KiB"
    );
    assert!(small <= 4, "{small} allocations for 20 000 small TLPs");
}
