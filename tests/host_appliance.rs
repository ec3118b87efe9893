//! The two halves meet only on the wire: a real `pcietun appliance` process (its default NVMe
//! controller) and this crate's host agent, over UDP on loopback. The agent enumerates the
//! controller through the root port, serves it over vfio-user, and the rust-vmm client reads
//! the NVMe registers through the tunnel; `pcietun host read` sees the same.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use pcietun::host::agent::{Agent, AgentConfig, Target};
use pcietun::host::vfio_user::CONFIG_REGION;
use pcietun::host::HostConfig;

struct Appliance(Child);

impl Drop for Appliance {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_appliance(port: u16) -> Appliance {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pcietun"))
        .args(["appliance", "--listen", &format!("udp:127.0.0.1:{port}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(out).read_line(&mut line).unwrap();
    assert!(line.starts_with("appliance ready:"), "{line}");
    Appliance(child)
}

#[test]
fn nvme_controller_of_a_real_appliance_through_vfio_user() {
    let port = free_udp_port();
    let _app = start_appliance(port);
    let agent = Agent::connect(
        AgentConfig {
            target: Target::Udp(format!("127.0.0.1:{port}").parse().unwrap()),
            host_id: "host".into(),
            key: None,
            appliance_key: None,
            psk: None,
            inject_loss: 0.0,
            host: HostConfig::default(),
        },
        Duration::from_secs(20),
    )
    .unwrap();
    let fns = agent.host().functions();
    assert_eq!(fns.len(), 1);
    assert_eq!(fns[0].class, 0x010802, "an NVMe controller");
    assert!(fns[0].msix.is_some());

    let dir = tempfile::tempdir().unwrap();
    let paths = agent.serve_vfio_user(dir.path()).unwrap();
    let mut c = vfio_user::Client::new(&paths[0]).unwrap();
    let mut b = [0u8; 4];
    c.region_read(CONFIG_REGION, 8, &mut b).unwrap();
    assert_eq!(u32::from_le_bytes(b) >> 8, 0x010802);
    // NVMe VS register (BAR0 + 0x08): 1.x.
    c.region_read(0, 0x08, &mut b).unwrap();
    let vs = u32::from_le_bytes(b);
    assert_eq!(vs >> 16, 1, "NVMe major version 1, got {vs:#x}");
    // CC (0x14) is writable and reads back; CSTS.RDY follows CC.EN = 0.
    c.region_write(0, 0x14, &0x0046_0000u32.to_le_bytes())
        .unwrap();
    c.region_read(0, 0x14, &mut b).unwrap();
    assert_eq!(u32::from_le_bytes(b), 0x0046_0000);
    c.region_read(0, 0x1c, &mut b).unwrap();
    assert_eq!(u32::from_le_bytes(b) & 1, 0);

    // The operator tool opens its own session and sees the same register.
    let o = Command::new(env!("CARGO_BIN_EXE_pcietun"))
        .args(["host", "read", "01:00.0", "0", "0x8"])
        .args(["--connect", &format!("udp:127.0.0.1:{port}")])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        format!("{vs:#010x}")
    );
}
