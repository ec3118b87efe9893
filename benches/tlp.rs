//! TLP codec benchmarks (criterion): decode and encode of a realistic mix — MRd with 3 and
//! 4 DW headers, MWr of 64 and 256 bytes, CplD of 64 bytes — in ns per TLP, and the same inputs
//! decoded by `rtlp-lib` 0.5 in the same run (the goal: ours at least 5× faster).
//!
//! Each benchmark decodes the whole header: type, IDs, tag, address / completion fields and
//! the payload slice, and folds them into a value so nothing is optimised away.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use pcietun::tlp::json::parse_hex;
use pcietun::tlp::{Tlp, TlpHeader};
use rtlp_lib::{new_cmpl_req, new_mem_req, TlpMode, TlpPacket, TlpType};

fn mix() -> Vec<(&'static str, Vec<u8>)> {
    let with_payload = |hdr: &str, n: usize| {
        let mut v = parse_hex(hdr).expect("valid hex");
        v.extend((0..n).map(|i| i as u8));
        v
    };
    vec![
        (
            "MRd32",
            parse_hex("00000001 0100010f f7e00010").expect("valid hex"),
        ),
        (
            "MRd64",
            parse_hex("20000010 0100abff 00000001 00002000").expect("valid hex"),
        ),
        (
            "MWr64_64B",
            with_payload("60000010 010000ff 00000001 7fe0c000", 64),
        ),
        (
            "MWr64_256B",
            with_payload("60000040 010000ff 00000001 7fe0c000", 256),
        ),
        ("CplD_64B", with_payload("4a000010 01000040 00000a00", 64)),
    ]
}

fn ours(b: &[u8]) -> u64 {
    let t = Tlp::parse(b).expect("valid TLP");
    let mut acc = u64::from(t.length_dw) + t.data.len() as u64;
    match t.header {
        TlpHeader::Mem(m) => acc += m.address + u64::from(m.requester_id.0) + u64::from(m.tag),
        TlpHeader::Cpl(c) => {
            acc += u64::from(c.byte_count) + u64::from(c.lower_address) + u64::from(c.tag)
        }
        _ => {}
    }
    acc
}

fn rtlp(b: &[u8]) -> u64 {
    let pkt = TlpPacket::new(b.to_vec(), TlpMode::NonFlit).expect("rtlp-lib decodes");
    let fmt = pkt.tlp_format().expect("format");
    let ty = pkt.tlp_type().expect("type");
    let mut acc = u64::from(pkt.header().get_tc()) + pkt.data().len() as u64;
    match ty {
        TlpType::CplData => {
            let c = new_cmpl_req(pkt.data()).expect("completion");
            acc += u64::from(c.byte_cnt()) + u64::from(c.laddr()) + u64::from(c.tag());
        }
        _ => {
            let m = new_mem_req(pkt.data(), &fmt).expect("memory request");
            acc += m.address() + u64::from(m.req_id()) + u64::from(m.tag());
        }
    }
    acc
}

fn bench(c: &mut Criterion) {
    let mix = mix();
    let mut g = c.benchmark_group("tlp_decode");
    g.throughput(Throughput::Elements(1));
    for (name, bytes) in &mix {
        assert_eq!(ours(bytes) != 0, rtlp(bytes) != 0);
        g.bench_with_input(BenchmarkId::new("pcietun", name), bytes, |b, bytes| {
            b.iter(|| ours(black_box(bytes)))
        });
        g.bench_with_input(BenchmarkId::new("rtlp-lib", name), bytes, |b, bytes| {
            b.iter(|| rtlp(black_box(bytes)))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("tlp_encode");
    g.throughput(Throughput::Elements(1));
    let mut out = vec![0u8; 4200];
    for (name, bytes) in &mix {
        let t = Tlp::parse(bytes).expect("valid TLP");
        g.bench_function(BenchmarkId::new("pcietun", name), |b| {
            b.iter(|| black_box(&t).emit(black_box(&mut out)).expect("fits"))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("tlp_mix");
    g.throughput(Throughput::Elements(mix.len() as u64));
    g.bench_function("decode/pcietun", |b| {
        b.iter(|| mix.iter().map(|(_, t)| ours(black_box(t))).sum::<u64>())
    });
    g.bench_function("decode/rtlp-lib", |b| {
        b.iter(|| mix.iter().map(|(_, t)| rtlp(black_box(t))).sum::<u64>())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
