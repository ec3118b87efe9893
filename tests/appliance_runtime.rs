//! The appliance runtime as a library, in-process (no child process): an `Appliance` built
//! from a TOML configuration string, started on 127.0.0.1:0, and this crate's host agent
//! connected to it over real UDP — enumeration, configuration space and MMIO through the
//! tunnel, the inventory, host keys enforced, PCIe's reset when the host restarts, several links, counters,
//! and errors that say what went wrong.

use std::path::Path;
use std::time::Duration;

use pcietun::appliance::{Appliance, ApplianceConfig, ApplianceError, FunctionState, Running};
use pcietun::host::agent::{Agent, AgentConfig, AgentError, Target};
use pcietun::host::HostConfig;
use pcietun::pci::class::dma_engine::{reg, ID_VALUE};
use pcietun::transport::{HostId, SecretKey};

/// The host's static key (what `pcietun keygen` would write on the host).
fn key() -> SecretKey {
    SecretKey::from_bytes([0x11; 32])
}

/// The appliance's static key (written to `appliance.key` beside the configuration).
fn appliance_key() -> SecretKey {
    SecretKey::from_bytes([0x22; 32])
}

/// One card with two functions: an NVMe controller (00.0) and a DMA engine (00.1).
fn config(dir: &Path, listen: &[&str]) -> ApplianceConfig {
    let key_file = dir.join("appliance.key");
    if !key_file.exists() {
        appliance_key().write_new(&key_file).unwrap();
    }
    let listen: Vec<String> = listen.iter().map(|l| format!("{l:?}")).collect();
    let host_public = key().public_key();
    let text = format!(
        r#"
listen = [{}]
key_file = "appliance.key"

[[host]]
id = "web1"
public_key = "{host_public}"

[[device]]
kind = "nvme"
path = "ns0.img"
size = "1M"
slot = 0

[[device]]
kind = "dma"
name = "dma-a"
buffer = "64K"
slot = 0
function = 1
"#,
        listen.join(", ")
    );
    ApplianceConfig::from_toml(&text, "test.toml", dir).unwrap()
}

fn agent(
    app: &Running,
    addr_index: usize,
    key: SecretKey,
    timeout: Duration,
) -> Result<Agent, AgentError> {
    let addr = match app.ready().listen[addr_index] {
        pcietun::transport::PeerAddr::Udp(a) => a,
        other => panic!("not UDP: {other}"),
    };
    Agent::connect(
        AgentConfig {
            target: Target::Udp(addr),
            host_id: "web1".into(),
            key: Some(key),
            appliance_key: Some(appliance_key().public_key()),
            psk: None,
            inject_loss: 0.0,
            host: HostConfig::default(),
        },
        timeout,
    )
}

#[test]
fn a_host_agent_enumerates_and_drives_an_in_process_appliance() {
    let dir = tempfile::tempdir().unwrap();
    let app = Appliance::build(config(dir.path(), &["udp:127.0.0.1:0"])).unwrap();
    assert!(app.warnings().is_empty());
    let fns: Vec<String> = app.functions().iter().map(ToString::to_string).collect();
    assert_eq!(fns, ["00.0 nvme", "00.1 dma (dma-a)"]);
    // The inventory: stable ids (derived, or the configured name), identity from config space.
    let inv = app.inventory();
    let ids: Vec<&str> = inv.functions().iter().map(|f| f.id.as_str()).collect();
    assert_eq!(ids, ["00.0", "dma-a"]);
    assert_eq!(inv.functions()[0].ids.class, 0x01_08_02);
    assert_eq!(
        (inv.functions()[1].ids.vendor, inv.functions()[1].ids.device),
        (0x1b36, 0x0e02)
    );
    // One host and no [[assign]]: the single-host appliance gives it every function.
    let web1 = HostId::new("web1").unwrap();
    assert!(inv
        .functions()
        .iter()
        .all(|f| f.state == FunctionState::Assigned(web1)));
    assert_eq!(inv.hosts(), [HostId::new("web1").unwrap()]);
    let app = app.start().unwrap();
    let addr = app.ready().udp_addr().expect("a UDP listener");
    assert_ne!(addr.port(), 0, "the bound port is announced");
    assert_eq!(app.ready().functions.len(), 2);

    let a = agent(&app, 0, key(), Duration::from_secs(20)).unwrap();
    let found = a.host().functions();
    assert_eq!(found.len(), 2, "{found:?}");
    let nvme = found.iter().find(|f| f.class == 0x01_08_02).expect("NVMe");
    let dma = found
        .iter()
        .find(|f| f.class >> 8 == 0x0880)
        .expect("DMA engine");
    assert_eq!((dma.vendor, dma.device), (0x1b36, 0x0e02));
    assert_eq!(
        nvme.bdf.device(),
        dma.bdf.device(),
        "one multi-function card"
    );

    // Configuration space through the tunnel: Vendor/Device ID and the multi-function bit.
    let f = a.host().open(dma.bdf).unwrap();
    assert_eq!(f.config_read(0).unwrap(), 0x0e02_1b36);
    let n = a.host().open(nvme.bdf).unwrap();
    assert_ne!(
        n.config_read(0x0c).unwrap() & (0x80 << 16),
        0,
        "multi-function"
    );
    // MMIO: the DMA engine's ID register, and a register that is written and read back.
    assert_eq!(f.bar_read32(0, reg::ID).unwrap(), ID_VALUE);
    f.bar_write32(0, reg::HOST_ADDR_LO, 0x1234_5000).unwrap();
    assert_eq!(f.bar_read32(0, reg::HOST_ADDR_LO).unwrap(), 0x1234_5000);
    // NVMe VS register: 1.x.
    assert_eq!(n.bar_read32(0, 0x08).unwrap() >> 16, 1);

    // The counters saw it all.
    std::thread::sleep(Duration::from_millis(250));
    let live = app.stats();
    assert!(live.endpoint.tlps_in >= 6, "{live:?}");
    let stats = app.shutdown().unwrap();
    assert_eq!(stats.links.len(), 1);
    let delivered: u64 = stats.links[0]
        .sessions
        .iter()
        .map(|(_, s)| s.tlps_delivered)
        .sum();
    assert!(delivered >= stats.endpoint.tlps_in, "{stats:?}");
    assert_eq!(stats.endpoint.malformed, 0);
    assert!(
        dir.path().join("ns0.img").exists(),
        "backing file created beside the configuration"
    );
}

#[test]
fn a_host_with_the_wrong_key_gets_no_session() {
    let dir = tempfile::tempdir().unwrap();
    let app = Appliance::build(config(dir.path(), &["udp:127.0.0.1:0"]))
        .unwrap()
        .start()
        .unwrap();
    let e = agent(
        &app,
        0,
        SecretKey::from_bytes([0x33; 32]),
        Duration::from_millis(1500),
    )
    .unwrap_err();
    assert!(matches!(e, AgentError::NotConnected(_)), "{e}");
    let stats = app.shutdown().unwrap();
    assert_eq!(stats.endpoint.tlps_in, 0, "nothing reached a device");
    assert!(stats.links[0]
        .sessions
        .iter()
        .all(|(_, s)| s.tlps_delivered == 0));
}

#[test]
fn a_restarted_host_finds_its_functions_reset() {
    let dir = tempfile::tempdir().unwrap();
    let app = Appliance::build(config(dir.path(), &["udp:127.0.0.1:0"]))
        .unwrap()
        .start()
        .unwrap();
    let dma_of = |a: &Agent| {
        let info = a
            .host()
            .functions()
            .into_iter()
            .find(|f| f.class >> 8 == 0x0880)
            .expect("DMA engine");
        a.host().open(info.bdf).unwrap()
    };
    let first = agent(&app, 0, key(), Duration::from_secs(20)).unwrap();
    let f = dma_of(&first);
    f.bar_write32(0, reg::HOST_ADDR_LO, 0xabcd_0000).unwrap();
    assert_eq!(f.bar_read32(0, reg::HOST_ADDR_LO).unwrap(), 0xabcd_0000);
    drop(f);
    first.stop();
    // The same host id comes back with a new epoch: a hot reset of every function.
    let second = agent(&app, 0, key(), Duration::from_secs(20)).unwrap();
    let f = dma_of(&second);
    assert_eq!(f.bar_read32(0, reg::ID).unwrap(), ID_VALUE);
    assert_eq!(
        f.bar_read32(0, reg::HOST_ADDR_LO).unwrap(),
        0,
        "the first incarnation's register state is gone"
    );
    app.shutdown().unwrap();
}

#[test]
fn several_links_serve_the_same_functions() {
    let dir = tempfile::tempdir().unwrap();
    let app = Appliance::build(config(dir.path(), &["udp:127.0.0.1:0", "udp:127.0.0.1:0"]))
        .unwrap()
        .start()
        .unwrap();
    assert_eq!(app.ready().listen.len(), 2);
    assert_ne!(app.ready().listen[0], app.ready().listen[1]);
    let a = agent(&app, 1, key(), Duration::from_secs(20)).unwrap();
    let dma = a
        .host()
        .functions()
        .into_iter()
        .find(|f| f.class >> 8 == 0x0880)
        .expect("DMA engine through the second link");
    let f = a.host().open(dma.bdf).unwrap();
    assert_eq!(f.bar_read32(0, reg::ID).unwrap(), ID_VALUE);
    std::thread::sleep(Duration::from_millis(250));
    let stats = app.shutdown().unwrap();
    assert_eq!(stats.links.len(), 2);
    let per_link: Vec<u64> = stats
        .links
        .iter()
        .map(|l| l.sessions.iter().map(|(_, s)| s.tlps_delivered).sum())
        .collect();
    assert_eq!(per_link[0], 0, "{per_link:?}");
    assert!(per_link[1] > 0, "{per_link:?}");
    assert!(stats.endpoint.tlps_in > 0);
}

#[test]
fn errors_say_what_went_wrong_and_nothing_starts() {
    let dir = tempfile::tempdir().unwrap();
    // A backing file that does not exist (no size to create it with).
    let cfg = ApplianceConfig::from_toml(
        "[[device]]\nkind = \"nvme\"\npath = \"missing.img\"\n",
        "t.toml",
        dir.path(),
    )
    .unwrap();
    let e = Appliance::build(cfg).unwrap_err();
    assert!(matches!(e, ApplianceError::Nvme(_)), "{e}");
    assert!(e.to_string().contains("missing.img"), "{e}");
    // A listen address that is taken.
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let listen = format!("udp:127.0.0.1:{port}");
    let e = Appliance::build(config(dir.path(), &[&listen]))
        .unwrap()
        .start()
        .unwrap_err();
    assert!(matches!(e, ApplianceError::Listen { .. }), "{e}");
    assert!(
        e.to_string()
            .starts_with(&format!("cannot listen on {listen}: ")),
        "{e}"
    );
    // No listen address at all.
    let e = Appliance::build(config(dir.path(), &[]))
        .unwrap()
        .start()
        .unwrap_err();
    assert!(matches!(e, ApplianceError::NoListener), "{e}");
    // A configuration file that is not there.
    let e = ApplianceConfig::load(&dir.path().join("nope.toml")).unwrap_err();
    assert!(matches!(e, ApplianceError::ReadConfig { .. }), "{e}");
    assert!(e.to_string().contains("nope.toml"), "{e}");
}
