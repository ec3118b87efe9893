//! The host agent over the real transport (UDP on loopback, authenticated session) against a
//! fake appliance: a transport server whose single card answers config and memory TLPs.
//!
//! Shows the whole host path end to end: session → enumeration → vfio-user socket → the
//! rust-vmm client reading IDs and BARs and receiving an interrupt; the same with 1 % injected
//! frame loss; and the `pcietun host lspci -xxxx` / `read` / `write` operator tools, whose dump
//! the real `lspci -F` decodes.

mod prereq;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use pcietun::host::agent::{Agent, AgentConfig, Target};
use pcietun::host::tlpio::{self, ROOT_PORT};
use pcietun::host::vfio_user::irq::set_flags;
use pcietun::host::vfio_user::{EventFd, CONFIG_REGION};
use pcietun::host::HostConfig;
use pcietun::pci::{Bar, ConfigSpace, ExpressConfig, FunctionIds, MsixCap, PciExpressCap};
use pcietun::tlp::build::{self, Cpl};
use pcietun::tlp::{Bdf, CplStatus, MemOp, Tlp, TlpHeader};
use pcietun::transport::driver::{udp::UdpPort, DriverConfig, Peers, TransportHandle, Upcall};
use pcietun::transport::{Event, HostId, HostKey, SecretKey};

const BAR0: usize = 0x4000;
const TABLE: usize = 0x2000;

struct Appliance {
    addr: SocketAddr,
    bar0: Arc<Mutex<Vec<u8>>>,
    handle: Arc<TransportHandle>,
    conn: Arc<Mutex<Option<pcietun::transport::ConnId>>>,
}

fn card() -> ConfigSpace {
    let mut c = ConfigSpace::endpoint(FunctionIds {
        vendor_id: 0x1b36,
        device_id: 0x0010,
        class_code: 0x010802,
        revision: 2,
        interrupt_pin: 1,
        ..Default::default()
    });
    c.set_bar(
        0,
        Bar::Memory64 {
            size: BAR0 as u64,
            prefetchable: false,
        },
    )
    .unwrap();
    c.add_capability(Box::new(PciExpressCap::new(ExpressConfig::default())))
        .unwrap();
    c.add_capability(Box::new(MsixCap::new(4, 0, TABLE as u32, 0, 0x3000)))
        .unwrap();
    c
}

/// A transport server on loopback whose card (device 0) answers the host's TLPs.
fn appliance(loss: f64) -> Appliance {
    let port = UdpPort::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = port.addr();
    // The development keys: allowed because everything is on loopback.
    let mut cfg = DriverConfig::new(
        SecretKey::development_appliance(),
        Peers::Accept(vec![HostKey {
            host: HostId::new("test-host").unwrap(),
            public: SecretKey::development_host().public_key(),
            psk: None,
        }]),
    );
    cfg.inject_loss = loss;
    cfg.seed = 7;
    let handle = Arc::new(TransportHandle::spawn(Box::new(port), cfg).unwrap());
    let bar0 = Arc::new(Mutex::new(vec![0u8; BAR0]));
    let conn = Arc::new(Mutex::new(None));
    let (h, b, c) = (handle.clone(), bar0.clone(), conn.clone());
    std::thread::spawn(move || {
        let mut cs = card();
        let me = Bdf::new(1, 0, 0);
        let mut out = vec![0u8; tlpio::MAX_TLP];
        while let Some(up) = h.recv() {
            let (conn, tlp) = match up {
                Upcall::Tlp { conn, tlp, .. } => (conn, tlp),
                Upcall::Event {
                    conn,
                    event: Event::Connected { .. },
                } => {
                    *c.lock().unwrap() = Some(conn);
                    continue;
                }
                _ => continue,
            };
            let t = Tlp::parse(&tlp).unwrap();
            let n = match t.header {
                TlpHeader::Cfg(q) if q.target.device() == 0 && q.target.function() == 0 => {
                    let mut data = [0u8; 4];
                    if q.write {
                        for i in 0..4 {
                            if q.first_be & (1 << i) != 0 {
                                cs.write(q.register as usize + i, &t.data[i..i + 1]);
                            }
                        }
                    } else {
                        cs.read(q.register as usize, &mut data);
                    }
                    let payload: &[u8] = if q.write { &[] } else { &data };
                    Cpl::new(me, ROOT_PORT, q.tag, CplStatus::Sc).emit(&mut out, 4, 0, payload)
                }
                TlpHeader::Cfg(q) => {
                    Cpl::new(me, ROOT_PORT, q.tag, CplStatus::Ur).emit(&mut out, 4, 0, &[])
                }
                TlpHeader::Mem(m) => {
                    let r = pcietun::tlp::split::covered_bytes(
                        m.address,
                        t.length_dw,
                        m.first_be,
                        m.last_be,
                    );
                    match (m.op, cs.decode(r.address, false)) {
                        (MemOp::Write, Some((0, off))) => {
                            let skip = (r.address & 3) as usize;
                            let o = off as usize;
                            b.lock().unwrap()[o..o + r.len as usize]
                                .copy_from_slice(&t.data[skip..skip + r.len as usize]);
                            continue;
                        }
                        (MemOp::Read, Some((0, off))) => {
                            let dw = off as usize & !3;
                            let payload =
                                b.lock().unwrap()[dw..dw + t.length_dw as usize * 4].to_vec();
                            Cpl::new(me, ROOT_PORT, m.tag, CplStatus::Sc).emit(
                                &mut out,
                                r.len as u16,
                                (r.address & 0x7f) as u8,
                                &payload,
                            )
                        }
                        _ => continue,
                    }
                }
                _ => continue,
            };
            let n = n.unwrap();
            let _ = h.send(conn, Bytes::copy_from_slice(&out[..n]));
        }
    });
    Appliance {
        addr,
        bar0,
        handle,
        conn,
    }
}

impl Appliance {
    /// The card fires MSI-X `vector` from its table, over the transport.
    fn msix(&self, vector: usize) {
        let (addr, data) = {
            let b = self.bar0.lock().unwrap();
            let e = TABLE + 16 * vector;
            let u = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
            assert_eq!(
                u(e + 12) & 1,
                0,
                "vector {vector} masked in the card's table"
            );
            (u64::from(u(e)) | u64::from(u(e + 4)) << 32, u(e + 8))
        };
        let mut out = vec![0u8; tlpio::MAX_TLP];
        let n = build::mem_write(&mut out, Bdf::new(1, 0, 0), addr, &data.to_le_bytes()).unwrap();
        let conn = self.conn.lock().unwrap().expect("session");
        self.handle
            .send(conn, Bytes::copy_from_slice(&out[..n]))
            .unwrap();
    }
}

fn agent_cfg(addr: SocketAddr, loss: f64) -> AgentConfig {
    AgentConfig {
        target: Target::Udp(addr),
        host_id: "test-host".into(),
        key: None,
        appliance_key: None,
        psk: None,
        inject_loss: loss,
        host: HostConfig::default(),
    }
}

fn vfio_user_round_trip(loss: f64) {
    let app = appliance(loss);
    let agent = Agent::start(agent_cfg(app.addr, loss)).unwrap();
    let found = agent.wait_scan(Duration::from_secs(20)).unwrap();
    assert_eq!(found, vec![Bdf::new(1, 0, 0)]);
    let dir = tempfile::tempdir().unwrap();
    let paths = agent.serve_vfio_user(dir.path()).unwrap();
    assert_eq!(paths, vec![dir.path().join("01:00.0.sock")]);

    let mut c = vfio_user::Client::new(&paths[0]).unwrap();
    let mut id = [0u8; 4];
    c.region_read(CONFIG_REGION, 0, &mut id).unwrap();
    assert_eq!(u32::from_le_bytes(id), 0x0010_1b36);
    assert_eq!(c.region(0).map(|r| r.size), Some(BAR0 as u64));
    for i in 0..50u32 {
        c.region_write(0, u64::from(i) * 8, &(i * 7).to_le_bytes())
            .unwrap();
    }
    for i in 0..50u32 {
        let mut v = [0u8; 4];
        c.region_read(0, u64::from(i) * 8, &mut v).unwrap();
        assert_eq!(u32::from_le_bytes(v), i * 7, "BAR word {i}");
    }
    let efd = EventFd::new().unwrap();
    c.set_irqs(
        2,
        set_flags::DATA_EVENTFD | set_flags::ACTION_TRIGGER,
        3,
        1,
        &[efd.as_raw_fd()],
    )
    .unwrap();
    c.region_read(0, 0, &mut id).unwrap(); // behind the MSI-X table write
    app.msix(3);
    assert_eq!(efd.wait_timeout(Duration::from_secs(10)).unwrap(), 1);
}

#[test]
fn agent_serves_vfio_user_over_udp_transport() {
    vfio_user_round_trip(0.0);
}

#[test]
fn agent_serves_vfio_user_with_one_percent_loss() {
    vfio_user_round_trip(0.01);
}

#[test]
fn operator_tools_lspci_read_write() {
    let app = appliance(0.0);
    let bin = env!("CARGO_BIN_EXE_pcietun");
    let connect = format!("udp:{}", app.addr);
    let run = |args: &[&str]| {
        let o = Command::new(bin)
            .arg("host")
            .args(args)
            .args(["--connect", &connect, "--host-id", "test-host"])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "pcietun host {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    };
    let list = run(&["lspci"]);
    assert!(
        list.contains("00:00.0 Class 0604: Device 1b36:0e00"),
        "{list}"
    );
    assert!(
        list.contains("01:00.0 Class 0108: Device 1b36:0010 (rev 02)"),
        "{list}"
    );

    let dump = run(&["lspci", "-xxxx"]);
    let parsed = pcietun::pci::lspci::parse(&dump).unwrap();
    assert_eq!(parsed.len(), 2);
    assert_eq!(parsed[1].config.len(), 4096);
    assert_eq!(&parsed[1].config[..4], &[0x36, 0x1b, 0x10, 0x00]);
    // The real lspci decodes our dump.
    if Command::new("lspci").arg("--version").output().is_ok() {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), &dump).unwrap();
        let o = Command::new("lspci")
            .arg("-F")
            .arg(f.path())
            .arg("-vv")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success());
        assert!(text.contains("01:00.0"), "{text}");
        assert!(
            text.contains("Express"),
            "lspci decodes the PCIe capability: {text}"
        );
        assert!(text.contains("MSI-X: Enable"), "and MSI-X: {text}");
        assert!(text.contains("PCI bridge"), "and the root port: {text}");
    } else {
        prereq::skip(
            "lspci decoding of the host's dump",
            "lspci not installed; the dump was only checked with our parser",
        );
    }

    run(&["write", "01:00.0", "0", "0x10", "0xcafef00d"]);
    assert_eq!(run(&["read", "01:00.0", "0", "0x10"]).trim(), "0xcafef00d");
    assert_eq!(
        &app.bar0.lock().unwrap()[0x10..0x14],
        &0xcafe_f00du32.to_le_bytes()
    );
}

/// The development keys are public: the agent refuses them toward an appliance that is not on
/// loopback (issue 13 item 4), before it opens anything.
#[test]
fn development_key_refused_off_loopback() {
    for target in ["192.0.2.1:7470", "[2001:db8::1]:7470", "0.0.0.0:7470"] {
        let e = Agent::start(agent_cfg(target.parse().unwrap(), 0.0)).unwrap_err();
        assert!(
            e.to_string().contains("only allowed on loopback"),
            "{target}: {e}"
        );
    }
    // With real keys the same target is accepted as far as keys go (no appliance answers).
    let mut cfg = agent_cfg("192.0.2.1:7470".parse().unwrap(), 0.0);
    cfg.key = Some(SecretKey::generate());
    cfg.appliance_key = Some(SecretKey::generate().public_key());
    assert!(matches!(
        Agent::connect(cfg, Duration::from_millis(200)),
        Err(pcietun::host::agent::AgentError::NotConnected(_))
    ));
}
