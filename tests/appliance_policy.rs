//! Per-function policy through a real host session (docs/api.md "Policy"): an in-process
//! appliance with a DMA engine, this crate's host agent over real UDP on loopback, and the
//! project's DMA engine driver. The function is run uncapped, capped at a quarter of what it
//! reached (upstream for DMA writes, downstream for DMA reads), and uncapped again: under the
//! cap it stays at the cap (loose bounds: the machine is shared, and this is no benchmark —
//! `pcietun bench policy` is), the data arrives intact and in order, nothing is dropped, the
//! throttle time is counted, and without the cap it is fast again.

use std::path::Path;
use std::time::{Duration, Instant};

use pcietun::appliance::policy::PolicyError;
use pcietun::appliance::{Appliance, ApplianceConfig, Control, ControlError, Policy, Running};
use pcietun::drivers::dma_engine::{Direction, DmaEngineDriver};
use pcietun::drivers::CompletionMode;
use pcietun::host::agent::{Agent, AgentConfig, Target};
use pcietun::host::HostConfig;
use pcietun::transport::SecretKey;

const CHUNK: u32 = 64 << 10;

fn key() -> SecretKey {
    SecretKey::from_bytes([0x31; 32])
}

fn appliance_key() -> SecretKey {
    SecretKey::from_bytes([0x32; 32])
}

fn config(dir: &Path) -> ApplianceConfig {
    appliance_key()
        .write_new(&dir.join("appliance.key"))
        .unwrap();
    let text = format!(
        r#"
listen = ["udp:127.0.0.1:0"]
key_file = "appliance.key"

[[host]]
id = "web1"
public_key = "{}"

[[device]]
kind = "dma"
name = "dma-a"
buffer = "1M"
"#,
        key().public_key()
    );
    ApplianceConfig::from_toml(&text, "test.toml", dir).unwrap()
}

fn agent(app: &Running) -> Agent {
    let addr = app.ready().udp_addr().expect("UDP");
    Agent::connect(
        AgentConfig {
            target: Target::Udp(addr),
            host_id: "web1".into(),
            key: Some(key()),
            appliance_key: Some(appliance_key().public_key()),
            psk: None,
            inject_loss: 0.0,
            host: HostConfig::default(),
        },
        Duration::from_secs(20),
    )
    .unwrap()
}

/// Bytes per second moved in `dir` for `secs`.
fn rate(d: &DmaEngineDriver, dir: Direction, secs: f64) -> f64 {
    let t0 = Instant::now();
    let mut bytes = 0u64;
    while t0.elapsed().as_secs_f64() < secs {
        d.transfer(dir, 0, 0, CHUNK).unwrap();
        bytes += u64::from(CHUNK);
    }
    bytes as f64 / t0.elapsed().as_secs_f64()
}

fn traffic(ctl: &Control) -> pcietun::appliance::FunctionTraffic {
    // Snapshots are published every 100 ms.
    std::thread::sleep(Duration::from_millis(250));
    ctl.functions()
        .into_iter()
        .find(|f| f.entry.id.as_str() == "dma-a")
        .unwrap()
        .traffic
}

#[test]
fn a_capped_function_holds_its_cap_keeps_its_data_and_recovers_when_lifted() {
    let dir = tempfile::tempdir().unwrap();
    let app = Appliance::build(config(dir.path()))
        .unwrap()
        .start()
        .unwrap();
    let ctl = app.control();
    let a = agent(&app);
    let info = a
        .host()
        .functions()
        .into_iter()
        .find(|f| f.class >> 8 == 0x0880)
        .expect("DMA engine");
    let f = a.host().open(info.bdf).unwrap();
    let d = DmaEngineDriver::open(f, 1 << 20, CompletionMode::Interrupt).unwrap();
    let fid = ctl.functions()[0].entry.id.clone();

    let free_w = rate(&d, Direction::DmaWrite, 0.5);
    let cap_w = (free_w / 4.0) as u64;
    ctl.set_policy_wait(
        fid.clone(),
        Policy {
            max_bytes_per_sec_up: Some(cap_w),
            ..Policy::UNLIMITED
        },
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(
        ctl.functions()[0].policy.max_bytes_per_sec_up,
        Some(cap_w),
        "the snapshot shows the policy"
    );
    let capped_w = rate(&d, Direction::DmaWrite, 1.0);
    eprintln!("DMA write: free {free_w:.0} B/s, cap {cap_w}, capped {capped_w:.0} B/s");
    // At most the cap (plus its 10 ms burst and one transfer's rounding), and not stopped.
    assert!(
        capped_w <= cap_w as f64 * 1.10,
        "capped DMA writes at {capped_w:.0} B/s over a cap of {cap_w}"
    );
    assert!(
        capped_w >= cap_w as f64 * 0.5,
        "capped DMA writes at {capped_w:.0} B/s, far under a cap of {cap_w}"
    );
    let t = traffic(&ctl);
    assert!(t.throttled_nanos_up > 100_000_000, "{t:?}");
    assert_eq!(t.throttled_nanos_down, 0, "{t:?}");

    // Data under the cap: host → card → host unchanged, complete when the card says done.
    // Polling STATUS (no interrupt to wait for): the completion of the STATUS read must wait
    // behind the function's held writes, or DONE would be seen before the data is there.
    drop(d);
    let f = a.host().open(info.bdf).unwrap();
    let d = DmaEngineDriver::open(f, 1 << 20, CompletionMode::Poll).unwrap();
    // 8 MB/s: a burst of 80 kB, so that most of a 512 KiB transfer is held.
    ctl.set_policy_wait(
        fid.clone(),
        Policy {
            max_bytes_per_sec_up: Some(8_000_000),
            ..Policy::UNLIMITED
        },
        Duration::from_secs(5),
    )
    .unwrap();
    let len = 512u32 << 10;
    let pattern: Vec<u8> = (0..len).map(|i| (i * 7 + i / 251) as u8).collect();
    d.host_buffer().write_at(0, &pattern).unwrap();
    d.transfer(Direction::DmaRead, 0, 0, len).unwrap();
    d.host_buffer().zero(u64::from(len), len as usize).unwrap();
    d.transfer(Direction::DmaWrite, u64::from(len), 0, len)
        .unwrap();
    let mut back = vec![0u8; len as usize];
    d.host_buffer().read_at(u64::from(len), &mut back).unwrap();
    let first_bad = back.iter().zip(&pattern).position(|(a, b)| a != b);
    assert!(
        first_bad.is_none(),
        "data not all there when the card said done under a cap (first difference at {first_bad:?})"
    );

    // Downstream: DMA reads paced by their requests.
    let free_r = rate(&d, Direction::DmaRead, 0.5);
    let cap_r = (free_r / 4.0) as u64;
    ctl.set_policy_wait(
        fid.clone(),
        Policy {
            max_bytes_per_sec_down: Some(cap_r),
            ..Policy::UNLIMITED
        },
        Duration::from_secs(5),
    )
    .unwrap();
    let capped_r = rate(&d, Direction::DmaRead, 1.0);
    eprintln!("DMA read: free {free_r:.0} B/s, cap {cap_r}, capped {capped_r:.0} B/s");
    assert!(
        capped_r <= cap_r as f64 * 1.10 && capped_r >= cap_r as f64 * 0.5,
        "capped DMA reads at {capped_r:.0} B/s with a cap of {cap_r}"
    );
    assert!(traffic(&ctl).throttled_nanos_down > 100_000_000);

    // Lifted: fast again at once (more than twice the cap within the next half second).
    ctl.set_policy_wait(fid.clone(), Policy::UNLIMITED, Duration::from_secs(5))
        .unwrap();
    let lifted = rate(&d, Direction::DmaRead, 0.5);
    eprintln!("DMA read lifted: {lifted:.0} B/s");
    assert!(
        lifted > cap_r as f64 * 2.0,
        "after the cap was lifted: {lifted:.0} B/s, cap was {cap_r}"
    );
    assert!(ctl.functions()[0].policy.is_unlimited());

    // Refusals.
    assert_eq!(
        ctl.set_policy_wait(
            fid,
            Policy {
                max_iops: Some(0),
                ..Policy::UNLIMITED
            },
            Duration::from_secs(5)
        ),
        Err(ControlError::BadPolicy(PolicyError { field: "max_iops" }))
    );
    assert!(matches!(
        ctl.set_policy_wait(
            pcietun::appliance::FunctionId::named("nope").unwrap(),
            Policy::UNLIMITED,
            Duration::from_secs(5)
        ),
        Err(ControlError::UnknownFunction(_))
    ));
    let stats = app.shutdown().unwrap();
    assert_eq!(stats.routing.owner_offline, 0, "{stats:?}");
    assert_eq!(stats.routing.unowned_outbound, 0, "{stats:?}");
}
