//! VmAttacher against a real QEMU (the project's build, >= 10.1) started with the options of
//! `pcietun host qemu-args`, paused before firmware (`-S`, no guest): the agent's QMP client
//! negotiates with the real monitor, finds the free root ports, hot-adds a `vfio-user-pci`
//! device that connects to an in-process vfio-user server (the in-memory test function), and
//! removes it again (an empty, powered-off slot lets QEMU unplug without the guest: the real
//! DEVICE_DELETED path). Withdrawing the connection of a device QEMU still holds leaves QEMU
//! answering. The guest-side hot-plug is tests/guest/hotplug.sh.
//!
//! Needs a qemu-system-x86_64 with vfio-user-pci: PCIETUN_QEMU, or the one tests/guest/
//! build-qemu.sh cached under /var/cache/pcietun/qemu/; else a loud SKIPPED.

mod prereq;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pcietun::host::vfio_user::memdev::MemDevice;
use pcietun::host::vfio_user::{Connection, FunctionContext, FunctionServer, ServerConfig};
use pcietun::host::vm::qemu::QemuArgs;
use pcietun::host::vm::{DetachOutcome, FunctionRef, VmAttacher, VmEvent, VmSettings, VmSpec};

fn find_qemu() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("PCIETUN_QEMU") {
        return Some(PathBuf::from(p));
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/var/cache/pcietun/qemu")
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("qemu-system-x86_64"))
        .filter(|p| p.exists())
        .collect();
    found.sort();
    found.pop()
}

struct Vm {
    child: Child,
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_vm(qemu: &Path, dir: &Path) -> Option<(Vm, PathBuf)> {
    let qmp = dir.join("vm.qmp");
    let args = QemuArgs {
        ports: 2,
        memory: 256 << 20,
        qmp: qmp.clone(),
        ..QemuArgs::default()
    };
    let child = Command::new(qemu)
        .args(["-L", "/usr/share/qemu", "-L", "/usr/share/seabios"])
        .args(["-accel", "tcg", "-S", "-nodefaults", "-display", "none"])
        .args(args.args())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("qemu.log")).ok()?)
        .spawn()
        .ok()?;
    let vm = Vm { child };
    let t0 = Instant::now();
    while !qmp.exists() {
        if t0.elapsed() > Duration::from_secs(20) {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Some((vm, qmp))
}

#[test]
fn attach_and_detach_against_real_qemu() {
    let Some(qemu) = find_qemu() else {
        prereq::skip(
            "VM attach against real QEMU",
            "no qemu-system-x86_64 >= 10.1 (run tests/guest/build-qemu.sh or set PCIETUN_QEMU)",
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (mut vm, qmp) = start_vm(&qemu, dir.path()).expect("QEMU started with qemu-args' options");

    // The function: an in-memory PCI function behind a real vfio-user socket.
    let sock = dir.path().join("01:00.0.sock");
    let ctx = FunctionContext::new("t", MemDevice::irq_counts());
    let dev = MemDevice::new(0x1b36, 0x0010, ctx.clone());
    let mut conn = Connection::new(dev, ctx, ServerConfig::default());
    let server = FunctionServer::bind(&sock).unwrap();
    let withdraw = server.withdrawer();
    std::thread::spawn(move || server.serve_forever(&mut conn));

    let events: Arc<Mutex<Vec<VmEvent>>> = Arc::default();
    let ev2 = events.clone();
    let settings = VmSettings {
        grace: Duration::from_secs(10),
        command_timeout: Duration::from_secs(30),
        connect_timeout: Duration::from_secs(10),
    };
    let a = VmAttacher::new(
        vec![VmSpec::new("t", qmp.clone(), vec![]).unwrap()],
        settings,
        Arc::new(move |e: &VmEvent| ev2.lock().unwrap().push(e.clone())),
    )
    .unwrap();
    let f = FunctionRef::from_bdf("01:00.0".parse().unwrap());

    let att = a
        .attach(&f, &sock, "t")
        .expect("device_add of vfio-user-pci");
    assert_eq!(att.port, "pcietun-rp1");
    assert_eq!(att.device, "pcietun-01_00.0");
    let out = a.detach(&f, &|| {
        withdraw.withdraw();
    });
    let log = || std::fs::read_to_string(dir.path().join("qemu.log")).unwrap_or_default();
    assert_eq!(
        out.unwrap(),
        Some(DetachOutcome::Ejected),
        "{:?}\nQEMU ({:?}): {}",
        events.lock().unwrap(),
        vm.child.try_wait(),
        log()
    );
    let again = a.attach(&f, &sock, "t").expect("the port is free again");
    assert_eq!(again.port, "pcietun-rp1");

    // Withdrawing the connection under a device QEMU still holds: QEMU carries on, and the
    // device still unplugs.
    assert!(
        withdraw.withdraw(),
        "QEMU was connected to the function's socket"
    );
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        a.detach(&f, &|| {}).unwrap(),
        Some(DetachOutcome::Ejected),
        "a device whose server went away still unplugs"
    );
    assert!(vm.child.try_wait().unwrap().is_none(), "QEMU still runs");
    let ev = events.lock().unwrap();
    assert_eq!(ev.len(), 4, "{ev:?}");
    assert!(ev
        .iter()
        .all(|e| matches!(e, VmEvent::Attached { .. } | VmEvent::Detached { .. })));
}
