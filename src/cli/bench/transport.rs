//! `pcietun bench transport`: the transport against the raw network path, in one run, on the
//! same kind of sockets (docs/transport.md "Benchmark"). Raw baseline: ping-pong RTT and a
//! one-way blast of MTU-sized datagrams straight through the link port (mio UDP socket,
//! AF_PACKET socket or in-memory channel). Ours: one TLP echoed through two transport
//! endpoints, and a stream of posted writes (AEAD on and off, and with injected loss).

use super::error::BenchError;
use super::link::{ports, ports_with, raw_blast_best, raw_rtt, Blast, LinkKind, Veth};
use super::stats::{ratio, Latency, Throughput};
use bytes::Bytes;
use pcietun::transport::driver::{Direct, DriverConfig, TransportHandle, Upcall};
use pcietun::transport::{ConnId, Event, HostId};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// on / off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnOff {
    /// Enabled.
    On,
    /// Disabled.
    Off,
}

/// Arguments of `pcietun bench transport`.
#[derive(Debug, clap::Args)]
pub struct TransportArgs {
    /// Link to measure.
    #[arg(long, value_enum, default_value = "udp")]
    link: LinkKind,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Injected loss (percent of sent frames) for the goodput-under-loss run; 0 skips it.
    #[arg(long, default_value_t = 1.0)]
    loss: f64,
    /// Frame encryption for the echo and loss runs (the stream runs both ways regardless).
    #[arg(long, value_enum, default_value = "on")]
    aead: OnOff,
    /// Spin on non-blocking sockets instead of sleeping (both raw and ours).
    #[arg(long)]
    busy_poll: bool,
    /// Round trips per latency measurement.
    #[arg(long, default_value_t = 20_000)]
    iters: usize,
    /// Seconds per throughput measurement.
    #[arg(long, default_value_t = 1.0)]
    secs: f64,
    /// Bytes of the echoed TLP (a MWr64: 16-byte header + payload) and of the raw ping.
    #[arg(long, default_value_t = 64)]
    tlp_size: usize,
    /// Payload bytes of each streamed posted write.
    #[arg(long, default_value_t = 256)]
    payload: usize,
}

/// Everything measured, for `--json`.
#[derive(Debug, Default, serde::Serialize)]
struct Report {
    link: Option<LinkKind>,
    busy_poll: bool,
    aead: bool,
    frame_bytes: usize,
    raw_rtt: Latency,
    ours_echo: Latency,
    ours_echo_direct: Latency,
    echo_direct_p50_ratio: f64,
    echo_direct_p99_ratio: f64,
    echo_p50_ratio: f64,
    echo_p99_ratio: f64,
    raw_blast: Throughput,
    /// The raw blast variants (plain, GSO/GRO) and which was the baseline.
    raw_blast_variants: Blast,
    ours_stream_aead_on: Throughput,
    ours_stream_aead_off: Throughput,
    stream_ratio: f64,
    aead_cost: f64,
    loss_pct: f64,
    ours_stream_lossy: Throughput,
    goodput_ratio_at_loss: f64,
    retransmits_lossy: u64,
}

fn handles(
    kind: LinkKind,
    veth: Option<&Veth>,
    encrypt: bool,
    loss: f64,
) -> Res<(TransportHandle, ConnId, TransportHandle, ConnId)> {
    let (c, s) = ports(kind, veth)?;
    // Fresh keys every run (both ends live in this process).
    let (mut sc, mut cc) = DriverConfig::pair(HostId::new("bench")?, s.local_addr());
    for (cfg, seed) in [(&mut sc, 1), (&mut cc, 2)] {
        cfg.transport.encrypt = encrypt;
        cfg.inject_loss = loss;
        cfg.seed = seed;
        if kind == LinkKind::Mem {
            cfg.transport.mtu = 1472; // same frame size as the UDP runs
        }
    }
    let server = TransportHandle::spawn(s, sc)?;
    let client = TransportHandle::spawn(c, cc)?;
    let wait = |h: &TransportHandle| -> Res<ConnId> {
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if let Some(Upcall::Event {
                conn,
                event: Event::Connected { .. },
            }) = h.recv_timeout(Duration::from_millis(50))
            {
                return Ok(conn);
            }
        }
        Err(BenchError::NoSession("transport session").into())
    };
    let cc = wait(&client)?;
    let sc = wait(&server)?;
    Ok((client, cc, server, sc))
}

fn mwr(total: usize) -> Bytes {
    let total = total.max(20) / 4 * 4;
    let dws = (total - 16) / 4;
    let mut v = vec![0x60, 0, (dws >> 8) as u8 & 3, dws as u8];
    v.resize(total, 0x3c);
    Bytes::from(v)
}

fn recv_tlp(h: &TransportHandle, deadline: Instant) -> Option<Bytes> {
    loop {
        let u = h.recv_timeout(Duration::from_millis(20));
        if let Some(Upcall::Tlp { tlp, .. }) = u {
            return Some(tlp);
        }
        if Instant::now() > deadline {
            return None;
        }
    }
}

fn ours_echo(a: &TransportArgs, veth: Option<&Veth>) -> Res<Latency> {
    // Threads that hand off to each other are measured blocking: four spinning threads on
    // two cores would measure the scheduler, not the transport. --busy-poll applies to the
    // raw baseline and to the Direct echo.
    let (client, cc, server, _) = handles(a.link, veth, a.aead == OnOff::On, 0.0)?;
    let server = Arc::new(server);
    let stop = Arc::new(AtomicBool::new(false));
    let (s2, st) = (server.clone(), stop.clone());
    let echo = std::thread::spawn(move || {
        while !st.load(Ordering::Relaxed) {
            let u = s2.recv_timeout(Duration::from_millis(20));
            if let Some(Upcall::Tlp { conn, tlp, .. }) = u {
                let _ = s2.send(conn, tlp);
            }
        }
    });
    let tlp = mwr(a.tlp_size);
    let mut samples = Vec::with_capacity(a.iters);
    for i in 0..a.iters + a.iters / 10 {
        let t0 = Instant::now();
        client.send(cc, tlp.clone())?;
        if recv_tlp(&client, t0 + Duration::from_secs(2)).is_none() {
            return Err(BenchError::EchoLost("echo").into());
        }
        if i >= a.iters / 10 {
            samples.push(t0.elapsed());
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = echo.join();
    Ok(Latency::from_samples(&mut samples))
}

/// One TLP echoed with both ends driven in their own thread by [`Direct`] (no handoffs).
fn ours_echo_direct(a: &TransportArgs, veth: Option<&Veth>) -> Res<Latency> {
    let (c, s) = ports(a.link, veth)?;
    let (mut sc, mut cc) = DriverConfig::pair(HostId::new("bench")?, s.local_addr());
    for cfg in [&mut sc, &mut cc] {
        cfg.transport.encrypt = a.aead == OnOff::On;
        cfg.busy_poll = a.busy_poll;
        cfg.seed = 3;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let st = stop.clone();
    let echo = std::thread::spawn(move || {
        let mut d = Direct::new(s, sc);
        while !st.load(Ordering::Relaxed) {
            if let Ok(Some(Upcall::Tlp { conn, tlp, .. })) = d.poll(Some(Duration::from_millis(20)))
            {
                let _ = d.send(conn, tlp);
            }
        }
    });
    let mut d = Direct::new(c, cc);
    let end = Instant::now() + Duration::from_secs(5);
    let conn = loop {
        if Instant::now() > end {
            return Err(BenchError::NoSession("direct session").into());
        }
        if let Some(Upcall::Event {
            conn,
            event: Event::Connected { .. },
        }) = d.poll(Some(Duration::from_millis(50)))?
        {
            break conn;
        }
    };
    // let the server see the confirmation before timing
    let _ = d.poll(Some(Duration::from_millis(20)))?;
    let tlp = mwr(a.tlp_size);
    let mut samples = Vec::with_capacity(a.iters);
    for i in 0..a.iters + a.iters / 10 {
        let t0 = Instant::now();
        d.send(conn, tlp.clone())?;
        loop {
            match d.poll(Some(Duration::from_secs(2)))? {
                Some(Upcall::Tlp { .. }) => break,
                Some(_) => {}
                None => return Err(BenchError::EchoLost("direct echo").into()),
            }
        }
        if i >= a.iters / 10 {
            samples.push(t0.elapsed());
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = echo.join();
    if std::env::var_os("PCIETUN_BENCH_DEBUG").is_some() {
        let mut v = samples.clone();
        v.sort_unstable();
        let q = |x: f64| v[((v.len() - 1) as f64 * x) as usize];
        eprintln!(
            "p90 {:?} p95 {:?} p98 {:?} p99 {:?} p99.9 {:?}",
            q(0.9),
            q(0.95),
            q(0.98),
            q(0.99),
            q(0.999)
        );
        let slow: Vec<usize> = samples
            .iter()
            .enumerate()
            .filter(|(_, d)| d.as_micros() > 500)
            .map(|(i, _)| i)
            .collect();
        eprintln!("slow at {:?}", &slow[..slow.len().min(40)]);
    }
    let st = d.stats();
    if let Some((_, s)) = st.sessions.first() {
        eprintln!(
            "bench transport: Direct echo: {} frames, {} retransmits ({} on timeout), srtt {:?}",
            s.frames_sent, s.retransmits, s.rto_expirations, s.srtt
        );
    }
    Ok(Latency::from_samples(&mut samples))
}

/// Stream posted writes for `secs`; returns TLP-byte throughput and retransmissions.
fn ours_stream(
    a: &TransportArgs,
    veth: Option<&Veth>,
    encrypt: bool,
    loss: f64,
) -> Res<(Throughput, u64)> {
    let (client, cc, server, _) = handles(a.link, veth, encrypt, loss)?;
    let tlp = mwr(16 + a.payload);
    let sent = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let (s2, d2) = (sent.clone(), done.clone());
    let secs = a.secs;
    let t_send = tlp.clone();
    let client = Arc::new(client);
    let c2 = client.clone();
    let t0 = Instant::now();
    let tx = std::thread::spawn(move || {
        while t0.elapsed().as_secs_f64() < secs {
            if c2.send(cc, t_send.clone()).is_err() {
                break;
            }
            s2.fetch_add(1, Ordering::Relaxed);
        }
        d2.store(true, Ordering::Relaxed);
    });
    let (mut n, mut bytes) = (0u64, 0u64);
    let mut last = t0;
    loop {
        if done.load(Ordering::Relaxed) && n >= sent.load(Ordering::Relaxed) {
            break;
        }
        match server.recv_timeout(Duration::from_millis(100)) {
            Some(Upcall::Tlp { tlp, .. }) => {
                n += 1;
                bytes += tlp.len() as u64;
                last = Instant::now();
            }
            Some(_) => {}
            None => {
                if last.elapsed() > Duration::from_secs(5) {
                    return Err(BenchError::Stalled(n).into());
                }
            }
        }
    }
    let _ = tx.join();
    let st = client.stats()?;
    if std::env::var_os("PCIETUN_BENCH_DEBUG").is_some() {
        for (_, s) in &st.sessions {
            eprintln!(
                "bench transport: stream sender: cwnd {} B, srtt {:?}, base delay {:?}, \
                 frames {}, retransmits {}, credit stalls {}",
                s.cwnd, s.srtt, s.min_rtt, s.frames_sent, s.retransmits, s.credit_stalls
            );
        }
    }
    let retx = st.sessions.iter().map(|s| s.1.retransmits).sum();
    Ok((Throughput::new(bytes, n, last.duration_since(t0)), retx))
}

pub fn run(a: TransportArgs) -> Res<ExitCode> {
    let veth = if a.link == LinkKind::Eth {
        Some(Veth::create()?)
    } else {
        None
    };
    let v = veth.as_ref();
    let mut r = Report {
        link: Some(a.link),
        busy_poll: a.busy_poll,
        aead: a.aead == OnOff::On,
        loss_pct: a.loss,
        ..Report::default()
    };
    eprintln!("bench transport: raw ping-pong ({} B)…", a.tlp_size);
    let (c, s) = ports_with(a.link, v, false)?;
    let frame = 1472.min(c.mtu());
    r.frame_bytes = frame;
    r.raw_rtt = raw_rtt(c, s, a.tlp_size, a.iters, a.busy_poll);
    eprintln!("bench transport: ours, one {} B TLP echoed…", a.tlp_size);
    r.ours_echo = ours_echo(&a, v)?;
    r.ours_echo_direct = ours_echo_direct(&a, v)?;
    eprintln!("bench transport: raw blast ({frame} B datagrams)…");
    r.raw_blast_variants =
        raw_blast_best(|o| ports_with(a.link, v, o), frame, a.secs, a.busy_poll)?;
    r.raw_blast = r.raw_blast_variants.best;
    eprintln!("bench transport: ours, posted-write stream…");
    r.ours_stream_aead_on = ours_stream(&a, v, true, 0.0)?.0;
    r.ours_stream_aead_off = ours_stream(&a, v, false, 0.0)?.0;
    let lossless = if r.aead {
        r.ours_stream_aead_on
    } else {
        r.ours_stream_aead_off
    };
    if a.loss > 0.0 {
        eprintln!(
            "bench transport: ours, stream at {} % injected loss…",
            a.loss
        );
        let (t, retx) = ours_stream(&a, v, r.aead, a.loss / 100.0)?;
        r.ours_stream_lossy = t;
        r.retransmits_lossy = retx;
        r.goodput_ratio_at_loss = ratio(t.gbit_s, lossless.gbit_s);
    }
    r.echo_p50_ratio = ratio(r.ours_echo.p50_us, r.raw_rtt.p50_us);
    r.echo_p99_ratio = ratio(r.ours_echo.p99_us, r.raw_rtt.p99_us);
    r.echo_direct_p50_ratio = ratio(r.ours_echo_direct.p50_us, r.raw_rtt.p50_us);
    r.echo_direct_p99_ratio = ratio(r.ours_echo_direct.p99_us, r.raw_rtt.p99_us);
    r.stream_ratio = ratio(lossless.gbit_s, r.raw_blast.gbit_s);
    r.aead_cost = 1.0 - ratio(r.ours_stream_aead_on.gbit_s, r.ours_stream_aead_off.gbit_s);
    print_table(&r, &a);
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_string_pretty(&r)?)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn print_table(r: &Report, a: &TransportArgs) {
    println!(
        "pcietun bench transport — link {:?}, {}, aead {}, frames ≤ {} B",
        a.link,
        if a.busy_poll {
            "busy-poll (raw and Direct; threaded runs block)"
        } else {
            "blocking"
        },
        if r.aead { "on" } else { "off" },
        r.frame_bytes
    );
    println!("{:<40} {:>12} {:>12} {:>8}", "", "raw", "ours", "ratio");
    println!(
        "{:<40} {:>12.1} {:>12.1} {:>8.2}  (goal ≤ 1.2)",
        format!("echo p50, µs ({} B), Direct", a.tlp_size),
        r.raw_rtt.p50_us,
        r.ours_echo_direct.p50_us,
        r.echo_direct_p50_ratio
    );
    println!(
        "{:<40} {:>12.1} {:>12.1} {:>8.2}  (goal ≤ 1.5)",
        "echo p99, µs, Direct",
        r.raw_rtt.p99_us,
        r.ours_echo_direct.p99_us,
        r.echo_direct_p99_ratio
    );
    println!(
        "{:<40} {:>12.1} {:>12.1} {:>8.2}",
        "echo p50, µs, TransportHandle", r.raw_rtt.p50_us, r.ours_echo.p50_us, r.echo_p50_ratio
    );
    println!(
        "{:<40} {:>12.1} {:>12.1} {:>8.2}",
        "echo p99, µs, TransportHandle", r.raw_rtt.p99_us, r.ours_echo.p99_us, r.echo_p99_ratio
    );
    let lossless = if r.aead {
        r.ours_stream_aead_on
    } else {
        r.ours_stream_aead_off
    };
    println!(
        "{:<40} {:>12.3} {:>12.3} {:>8.2}  (goal ≥ 0.9)",
        "stream payload, Gbit/s", r.raw_blast.gbit_s, lossless.gbit_s, r.stream_ratio
    );
    println!(
        "{:<40} {:>12} {:>12.3} {:>8.2}  (AEAD cost {:.0} %, goal ≤ 15 %)",
        "stream, AEAD on vs off",
        format!("{:.3}", r.ours_stream_aead_off.gbit_s),
        r.ours_stream_aead_on.gbit_s,
        ratio(r.ours_stream_aead_on.gbit_s, r.ours_stream_aead_off.gbit_s),
        r.aead_cost * 100.0
    );
    if r.loss_pct > 0.0 {
        println!(
            "{:<40} {:>12.3} {:>12.3} {:>8.2}  (goal ≥ 0.9; {} retransmits)",
            format!("stream at {} % loss vs lossless", r.loss_pct),
            lossless.gbit_s,
            r.ours_stream_lossy.gbit_s,
            r.goodput_ratio_at_loss,
            r.retransmits_lossy
        );
    }
    println!(
        "raw baseline: ping-pong on plain sockets ({}); blast {}",
        if a.busy_poll { "busy-poll" } else { "blocking" },
        r.raw_blast_variants.describe()
    );
    println!(
        "TLPs/s streamed: {:.0} ({} B each); raw datagrams/s: {:.0}",
        lossless.msgs_per_s,
        16 + a.payload,
        r.raw_blast.msgs_per_s
    );
}
