//! Hosts added, re-keyed and removed while the appliance serves (issue 14, docs/api.md
//! "Hosts"): the real `Appliance` in-process on 127.0.0.1:0 and this crate's host agents over
//! real UDP, on both serving shapes (one link: the endpoint on the link's thread; two links: a
//! threaded driver per link). An agent whose key is unknown is refused; once added (and given
//! a function) it connects and sees it; re-keyed, the old key's session is closed and the old
//! key refused while the new key connects and finds the same function; a host that owns
//! functions is not removed; once they are unassigned it is, its session is closed, and the
//! function is back in the pool.

use std::path::Path;
use std::time::{Duration, Instant};

use pcietun::appliance::inventory::FunctionId;
use pcietun::appliance::{
    Appliance, ApplianceConfig, ControlError, FunctionState, PoolEvent, Running,
};
use pcietun::host::agent::{Agent, AgentConfig, Target};
use pcietun::host::HostConfig;
use pcietun::transport::{HostId, HostKey, SecretKey};

fn key_a() -> SecretKey {
    SecretKey::from_bytes([0x11; 32])
}
fn appliance_key() -> SecretKey {
    SecretKey::from_bytes([0x22; 32])
}
fn web1() -> HostId {
    HostId::new("web1").unwrap()
}
fn web2() -> HostId {
    HostId::new("web2").unwrap()
}
fn fid(s: &str) -> FunctionId {
    s.parse().unwrap()
}

const DMA_CLASS: u32 = 0x08_80_00;
const T: Duration = Duration::from_secs(10);

/// web1 is configured and owns `dma-a`; `dma-b` is in the pool. `links` UDP listeners.
fn config(dir: &Path, links: usize) -> ApplianceConfig {
    let key_file = dir.join("appliance.key");
    if !key_file.exists() {
        appliance_key().write_new(&key_file).unwrap();
    }
    let listen = vec!["\"udp:127.0.0.1:0\""; links].join(", ");
    let text = format!(
        r#"
listen = [{listen}]
key_file = "appliance.key"

[[host]]
id = "web1"
public_key = "{a}"

[[device]]
kind = "dma"
name = "dma-a"
buffer = "64K"
assign = "web1"

[[device]]
kind = "dma"
name = "dma-b"
buffer = "64K"
"#,
        a = key_a().public_key(),
    );
    ApplianceConfig::from_toml(&text, "pool.toml", dir).unwrap()
}

fn agent(app: &Running, host: &str, key: &SecretKey, timeout: Duration) -> Option<Agent> {
    Agent::connect(
        AgentConfig {
            target: Target::Udp(app.ready().udp_addr().unwrap()),
            host_id: host.into(),
            key: Some(key.clone()),
            appliance_key: Some(appliance_key().public_key()),
            psk: None,
            inject_loss: 0.0,
            host: HostConfig::default(),
        },
        timeout,
    )
    .ok()
}

fn classes(a: &Agent) -> Vec<(u8, u32)> {
    let mut v: Vec<(u8, u32)> = a
        .host()
        .functions()
        .iter()
        .map(|f| (f.bdf.device(), f.class))
        .collect();
    v.sort();
    v
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn connected(app: &Running, host: HostId) -> Option<bool> {
    app.control()
        .hosts()
        .iter()
        .find(|h| h.id == host)
        .map(|h| h.connected)
}

fn scenario(links: usize) {
    let dir = tempfile::tempdir().unwrap();
    let app = Appliance::build(config(dir.path(), links))
        .unwrap()
        .start()
        .unwrap();
    let c = app.control();
    let events = c.subscribe();
    let key_b = SecretKey::generate();

    // Unknown key: refused.
    assert!(
        agent(&app, "web2", &key_b, Duration::from_secs(2)).is_none(),
        "an agent whose key the appliance does not know connects"
    );
    assert_eq!(connected(&app, web2()), None);

    // Added, given dma-b: it connects and sees it.
    let k2 = HostKey {
        host: web2(),
        public: key_b.public_key(),
        psk: None,
    };
    c.add_host_wait(k2.clone(), T).unwrap();
    assert_eq!(
        c.add_host_wait(k2, T),
        Err(ControlError::HostExists(web2()))
    );
    let dup = HostKey {
        host: HostId::new("web3").unwrap(),
        public: key_a().public_key(),
        psk: None,
    };
    assert_eq!(c.add_host_wait(dup, T), Err(ControlError::KeyInUse(web1())));
    assert_eq!(connected(&app, web2()), Some(false));
    c.assign_wait(fid("dma-b"), web2(), T).unwrap();
    let old = agent(&app, "web2", &key_b, T).expect("the added host connects");
    assert_eq!(classes(&old), vec![(0, DMA_CLASS)]);
    wait_for("web2 connected", T, || {
        connected(&app, web2()) == Some(true)
    });

    // Re-keyed: the old key's session is closed at once, the old key refused.
    let key_c = SecretKey::generate();
    c.set_host_key_wait(web2(), key_c.public_key(), T).unwrap();
    wait_for("web2's old session closed", T, || {
        connected(&app, web2()) == Some(false)
    });
    let deadline = Instant::now() + T;
    loop {
        let e = events.recv_deadline(deadline).expect("a HostLost event");
        if e == PoolEvent::HostLost(web2()) {
            break;
        }
    }
    drop(old);
    assert!(
        agent(&app, "web2", &key_b, Duration::from_secs(2)).is_none(),
        "the old key connects after the re-key"
    );
    // The new key connects and gets the same function.
    let new = agent(&app, "web2", &key_c, T).expect("the new key connects");
    assert_eq!(classes(&new), vec![(0, DMA_CLASS)]);
    wait_for("web2 connected", T, || {
        connected(&app, web2()) == Some(true)
    });
    // web1 was never disturbed.
    let owner = |f: &str| {
        c.functions()
            .into_iter()
            .find(|s| s.entry.id == fid(f))
            .map(|s| s.entry.state)
    };
    assert_eq!(owner("dma-a"), Some(FunctionState::Assigned(web1())));

    // Removal: refused while web2 owns dma-b; once unassigned, web2 is gone and disconnected.
    assert_eq!(
        c.remove_host_wait(web2(), T),
        Err(ControlError::HostOwnsFunctions(web2()))
    );
    assert_eq!(connected(&app, web2()), Some(true));
    c.unassign_wait(fid("dma-b"), T).unwrap();
    c.remove_host_wait(web2(), T).unwrap();
    assert_eq!(
        connected(&app, web2()),
        None,
        "a removed host is not listed"
    );
    assert_eq!(owner("dma-b"), Some(FunctionState::Unassigned));
    assert_eq!(
        c.assign_wait(fid("dma-b"), web2(), T),
        Err(ControlError::UnknownHost(web2()))
    );
    assert_eq!(
        c.remove_host_wait(web2(), T),
        Err(ControlError::UnknownHost(web2()))
    );
    drop(new);
    assert!(
        agent(&app, "web2", &key_c, Duration::from_secs(2)).is_none(),
        "a removed host's key connects"
    );
    let s = app.shutdown().unwrap();
    let _ = s;
}

#[test]
fn hosts_added_rekeyed_and_removed_while_serving_one_link() {
    scenario(1);
}

#[test]
fn hosts_added_rekeyed_and_removed_while_serving_two_links() {
    scenario(2);
}
