//! A withdrawn function's vfio-user server ends (issue 15): assign / serve / connect /
//! unassign the same function many times and the agent's process keeps the same number of
//! threads (`/proc/self/task`) and open descriptors (`/proc/self/fd`). Its own test binary:
//! other tests' threads would blur the counts.

use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use pcietun::appliance::inventory::FunctionId;
use pcietun::appliance::{Appliance, ApplianceConfig};
use pcietun::host::agent::{Agent, AgentConfig, Target};
use pcietun::host::HostConfig;

fn count(dir: &str) -> usize {
    std::fs::read_dir(dir).unwrap().count()
}

#[test]
fn assign_unassign_cycles_leak_no_thread_and_no_descriptor() {
    let dir = tempfile::tempdir().unwrap();
    let text = "listen = [\"udp:127.0.0.1:0\"]\n\
                [[device]]\nkind = \"dma\"\nname = \"dma-a\"\nbuffer = \"64K\"\n";
    let cfg = ApplianceConfig::from_toml(text, "leak.toml", dir.path()).unwrap();
    let app = Appliance::build(cfg).unwrap().start().unwrap();
    let ctl = app.control();
    let a = Agent::connect(
        AgentConfig {
            target: Target::Udp(app.ready().udp_addr().unwrap()),
            host_id: "dev".into(),
            key: None,
            appliance_key: None,
            psk: None,
            inject_loss: 0.0,
            host: HostConfig::default(),
        },
        Duration::from_secs(20),
    )
    .unwrap();
    let host = ctl.hosts()[0].id;
    let f: FunctionId = "dma-a".parse().unwrap();
    let socks = dir.path().join("sock");
    let cycle = |i: usize| {
        if i > 0 {
            ctl.assign_wait(f.clone(), host, Duration::from_secs(5))
                .unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let bdf = loop {
            if let Some(info) = a.host().functions().into_iter().next() {
                break info.bdf;
            }
            assert!(
                Instant::now() < deadline,
                "cycle {i}: function not presented"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        let path = a.serve_function(&socks, bdf).unwrap();
        // A consumer connected while the function is withdrawn.
        let client = UnixStream::connect(&path).unwrap();
        ctl.unassign_wait(f.clone(), Duration::from_secs(10))
            .unwrap();
        assert!(!path.exists(), "cycle {i}: socket file left");
        assert!(a.vfio_user_socket(bdf).is_none());
        drop(client);
    };
    cycle(0);
    cycle(1);
    // Settle: the appliance's and the transport's threads are all up by now.
    std::thread::sleep(Duration::from_millis(300));
    let (threads, fds) = (count("/proc/self/task"), count("/proc/self/fd"));
    for i in 2..12 {
        cycle(i);
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let now = (count("/proc/self/task"), count("/proc/self/fd"));
        if now.0 <= threads && now.1 <= fds {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after 10 more cycles: threads {threads} -> {}, fds {fds} -> {}",
            now.0,
            now.1
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    a.stop();
    app.shutdown().unwrap();
}
