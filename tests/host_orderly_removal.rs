//! Orderly unassign at the host agent (issue 15, docs/host.md "Hot-plug"): the real
//! `Appliance` in-process on 127.0.0.1 and the crate's host agent over real UDP.
//!
//! * With a consumer that must let go first (a [`RemovalGate`], the VM service in the agent):
//!   after the appliance's `RemovalRequest` the function keeps answering and its vfio-user
//!   socket stays; the unassign completes only once the gate released it, well inside the
//!   appliance's removal grace (so by the acknowledgement, not the grace), and then the
//!   function is fenced and its socket gone.
//! * Without a gate: withdrawn, fenced and acknowledged at once, as before.
//! * A gate that never lets go while the appliance's grace is short: the appliance detaches
//!   the function with surprise semantics when its grace ends; nothing hangs at the agent and
//!   the late release is harmless.

use std::path::Path;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use pcietun::appliance::inventory::FunctionId;
use pcietun::appliance::{Appliance, ApplianceConfig, ControlError, Running};
use pcietun::host::agent::{Agent, AgentConfig, Released, RemovalGate, Target};
use pcietun::host::{HostConfig, RemoteFunction};
use pcietun::tlp::Bdf;

fn start(dir: &Path, grace_ms: u64) -> Running {
    let text = format!(
        "listen = [\"udp:127.0.0.1:0\"]\n\
         [[device]]\nkind = \"dma\"\nname = \"dma-a\"\nbuffer = \"64K\"\n\
         [options]\nremoval_grace_ms = {grace_ms}\n"
    );
    let cfg = ApplianceConfig::from_toml(&text, "orderly.toml", dir).unwrap();
    Appliance::build(cfg).unwrap().start().unwrap()
}

fn agent(app: &Running) -> Agent {
    Agent::connect(
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
    .unwrap()
}

fn fid() -> FunctionId {
    "dma-a".parse().unwrap()
}

/// The DMA engine's function: its address and an open handle.
fn function(a: &Agent) -> (Bdf, RemoteFunction) {
    let info = a.host().functions().into_iter().next().expect("a function");
    (info.bdf, a.host().open(info.bdf).unwrap())
}

/// A gate that holds every release until the test lets go.
#[derive(Default)]
struct HoldingGate {
    held: Mutex<Vec<(Bdf, Released)>>,
}

impl RemovalGate for HoldingGate {
    fn release(&self, bdf: Bdf, done: Released) {
        self.held.lock().unwrap().push((bdf, done));
    }
}

impl HoldingGate {
    fn held(&self) -> Vec<Bdf> {
        self.held.lock().unwrap().iter().map(|h| h.0).collect()
    }
    fn let_go(&self) {
        self.held.lock().unwrap().clear();
    }
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

type Done = mpsc::Receiver<Result<(), ControlError>>;

fn unassign(app: &Running) -> Done {
    let (tx, rx) = mpsc::channel();
    app.control().unassign(fid(), move |r| {
        let _ = tx.send(r);
    });
    rx
}

#[test]
fn with_a_consumer_the_function_answers_until_it_let_go_then_the_ack_follows() {
    let dir = tempfile::tempdir().unwrap();
    let app = start(dir.path(), 20_000);
    let a = agent(&app);
    let gate = Arc::new(HoldingGate::default());
    let g: Arc<dyn RemovalGate> = gate.clone();
    a.set_removal_gate(Arc::downgrade(&g));
    let (bdf, f) = function(&a);
    let id = f.bar_read32(0, 0).unwrap();
    let sock = a.serve_function(&dir.path().join("sock"), bdf).unwrap();
    assert!(sock.exists());

    let done = unassign(&app);
    wait_for("the release request", Duration::from_secs(5), || {
        gate.held() == [bdf]
    });
    assert_eq!(a.pending_removals().len(), 1);
    assert_eq!(a.pending_removals()[0].0, bdf.device());
    // While the consumer flushes: the card answers, the socket stays, the unassign waits.
    for _ in 0..20 {
        assert_eq!(f.bar_read32(0, 0).unwrap(), id);
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!f.is_removed());
    assert!(sock.exists());
    assert!(a.host().open(bdf).is_some());
    assert!(matches!(done.try_recv(), Err(mpsc::TryRecvError::Empty)));
    let st = app.control().functions();
    assert!(st[0].detaching, "{st:?}");

    // It lets go: fenced, socket gone, acknowledged (long before the 20 s grace).
    let t0 = Instant::now();
    gate.let_go();
    done.recv_timeout(Duration::from_secs(5))
        .expect("the unassign completes after the release")
        .unwrap();
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert!(f.is_removed());
    assert!(f.bar_read32(0, 0).is_err());
    assert!(!sock.exists());
    assert!(a.vfio_user_socket(bdf).is_none());
    assert!(a.pending_removals().is_empty());
    wait_for(
        "the pool to show it unassigned",
        Duration::from_secs(2),
        || app.control().functions()[0].entry.owner().is_none(),
    );
    a.stop();
    app.shutdown().unwrap();
}

#[test]
fn without_a_consumer_the_function_is_withdrawn_and_acknowledged_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let app = start(dir.path(), 20_000);
    let a = agent(&app);
    let (bdf, f) = function(&a);
    let sock = a.serve_function(&dir.path().join("sock"), bdf).unwrap();
    let t0 = Instant::now();
    unassign(&app)
        .recv_timeout(Duration::from_secs(5))
        .expect("unassign completes")
        .unwrap();
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert!(f.is_removed());
    assert!(!sock.exists());
    assert!(a.pending_removals().is_empty());
    a.stop();
    app.shutdown().unwrap();
}

#[test]
fn a_consumer_that_never_lets_go_loses_the_function_when_the_appliance_grace_ends() {
    let dir = tempfile::tempdir().unwrap();
    let app = start(dir.path(), 1_500);
    let a = agent(&app);
    let gate = Arc::new(HoldingGate::default());
    let g: Arc<dyn RemovalGate> = gate.clone();
    a.set_removal_gate(Arc::downgrade(&g));
    let (bdf, f) = function(&a);
    let sock = a.serve_function(&dir.path().join("sock"), bdf).unwrap();
    let t0 = Instant::now();
    let done = unassign(&app);
    done.recv_timeout(Duration::from_secs(10))
        .expect("the grace period ends the unassign")
        .unwrap();
    assert!(
        t0.elapsed() >= Duration::from_millis(1_400),
        "{:?}",
        t0.elapsed()
    );
    // The appliance's `Removed`: surprise semantics at the agent, the wait abandoned.
    wait_for("the surprise removal", Duration::from_secs(5), || {
        f.is_removed() && !sock.exists() && a.pending_removals().is_empty()
    });
    assert_eq!(gate.held(), [bdf]);
    gate.let_go(); // late: nothing to acknowledge any more
    std::thread::sleep(Duration::from_millis(200));
    assert!(a.pending_removals().is_empty());
    a.stop();
    app.shutdown().unwrap();
}
