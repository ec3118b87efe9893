//! A withdrawn function's vfio-user server ends (issue 15): assign / serve / connect /
//! unassign the same function many times — alternately an orderly removal (the consumer lets
//! go at once) and a surprise removal (it never lets go; the appliance's grace ends) — and
//! each time the connected consumer sees EOF or an error (never a hang), the socket file is
//! gone and nobody can connect any more, and the agent's process keeps the same number of
//! threads (`/proc/self/task`) and open descriptors (`/proc/self/fd`). Its own test binary:
//! other tests' threads would blur the counts.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pcietun::appliance::inventory::FunctionId;
use pcietun::appliance::{Appliance, ApplianceConfig};
use pcietun::host::agent::{Agent, AgentConfig, Released, RemovalGate, Target};
use pcietun::host::HostConfig;
use pcietun::tlp::Bdf;

fn count(dir: &str) -> usize {
    std::fs::read_dir(dir).unwrap().count()
}

/// Lets go at once, or (while `hold` is set) never: the removal becomes a surprise one when
/// the appliance's grace ends.
#[derive(Default)]
struct Gate {
    hold: AtomicBool,
    held: Mutex<Vec<Released>>,
}

impl RemovalGate for Gate {
    fn release(&self, _: Bdf, done: Released) {
        if self.hold.load(Ordering::SeqCst) {
            self.held.lock().unwrap().push(done);
        }
    }
}

#[test]
fn assign_unassign_cycles_leak_no_thread_and_no_descriptor() {
    let dir = tempfile::tempdir().unwrap();
    let text = "listen = [\"udp:127.0.0.1:0\"]\n\
                [[device]]\nkind = \"dma\"\nname = \"dma-a\"\nbuffer = \"64K\"\n\
                [options]\nremoval_grace_ms = 1000\n";
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
    let gate = Arc::new(Gate::default());
    let g: Arc<dyn RemovalGate> = gate.clone();
    a.set_removal_gate(Arc::downgrade(&g));
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
        let mut client = UnixStream::connect(&path).unwrap();
        let surprise = i % 2 == 1;
        gate.hold.store(surprise, Ordering::SeqCst);
        ctl.unassign_wait(f.clone(), Duration::from_secs(10))
            .unwrap();
        // A surprise removal reaches the agent just after the appliance gave up waiting.
        let deadline = Instant::now() + Duration::from_secs(5);
        while path.exists() || a.vfio_user_socket(bdf).is_some() {
            assert!(
                Instant::now() < deadline,
                "cycle {i} (surprise: {surprise}): socket file left"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 64];
        match client.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => panic!("cycle {i}: {n} bytes from a withdrawn function's server"),
            Err(e) => assert!(
                !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
                "cycle {i} (surprise: {surprise}): the consumer hangs: {e}"
            ),
        }
        assert!(
            UnixStream::connect(&path).is_err(),
            "cycle {i}: a withdrawn function still accepts"
        );
        drop(client);
        gate.held.lock().unwrap().clear(); // late: nothing to acknowledge any more
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
