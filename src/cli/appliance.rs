//! `pcietun appliance`: run the appliance — the cards it fronts (NVMe controllers, DMA engines,
//! replays) behind one endpoint proxy, reachable over the tunnel's listen addresses.
//!
//! This file only parses flags and prints; the runtime is `pcietun::appliance`
//! (configuration schema and behaviour in docs/appliance.md). Everything is validated and every
//! device is built before anything listens: a bad configuration is an error naming the file,
//! the line and what is wrong, and nothing starts half-configured.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;

use pcietun::appliance::config::{ApiSettings, AssignSpec, DeviceConfig};
use pcietun::appliance::inventory::FunctionId;
use pcietun::appliance::{
    Appliance, ApplianceConfig, ConfigFlags, Inventory, Ready, StartAssignments,
};
use pcietun::mgmt;
use pcietun::mgmt::store::{self, AssignmentRecord, DeviceRecord, Table};
use pcietun::tlp::slot::VmName;
use pcietun::tlp::Bdf;

/// Arguments of `pcietun appliance`.
#[derive(Debug, clap::Args)]
pub struct ApplianceArgs {
    /// Configuration file (TOML, see docs/appliance.md).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Listen address: udp:IP:PORT or eth:IFACE (repeatable).
    #[arg(long, value_name = "ADDR")]
    listen: Vec<String>,
    /// Device: nvme=PATH, dma, replay=DUMP[,bar0=SIZE,...] or
    /// vfio-user=SOCKET_PATH[,connect_timeout=SECONDS] (repeatable).
    #[arg(long, value_name = "SPEC")]
    device: Vec<String>,
    /// Our private key file (from `pcietun keygen`; else $PCIETUN_PRIVATE_KEY; else the
    /// development key, loopback only).
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
    /// A host we accept: NAME=PUBLIC_KEY[,psk=FILE] (repeatable).
    #[arg(long, value_name = "NAME=PUBKEY")]
    host: Vec<String>,
    /// Drop this percentage of sent frames (testing).
    #[arg(long, value_name = "PCT")]
    inject_loss: Option<f64>,
    /// Serve the management API (Redfish, /metrics) on IP:PORT (default with [api] or
    /// --api-admin: 127.0.0.1:8443, loopback only).
    #[arg(long, value_name = "ADDR")]
    api: Option<String>,
    /// The API's first administrator: NAME:PASSWORD_FILE (the file's first line is the
    /// password; mode 0600). There is no default password.
    #[arg(long, value_name = "NAME:PASSWORD_FILE")]
    api_admin: Option<String>,
    /// The management API's state file (accounts, acknowledged assignments): overrides
    /// `[api] state`; default `pcietun-state.redb` beside the configuration file, or memory
    /// only (nothing survives a restart) without one.
    #[arg(long, value_name = "PATH")]
    state: Option<PathBuf>,
    /// Validate the configuration, build the devices, print what would run, and exit.
    #[arg(long)]
    check: bool,
    #[command(flatten)]
    log: super::log::LogArgs,
}

static STOP: AtomicBool = AtomicBool::new(false);

fn install_signal_handlers() {
    if let Err(e) = pcietun::sys::process::on_terminate(&STOP) {
        tracing::warn!(error = %e, "cannot install the SIGINT/SIGTERM handlers");
    }
}

/// The configuration from the file (if any), the flags on top, then the defaults.
fn resolve(args: &ApplianceArgs) -> Result<ApplianceConfig, Box<dyn std::error::Error>> {
    let mut cfg = match &args.config {
        Some(path) => ApplianceConfig::load(path)?,
        None => ApplianceConfig::default(),
    };
    cfg.apply_flags(&ConfigFlags {
        listen: args.listen.clone(),
        device: args.device.clone(),
        key: args.key.clone(),
        host: args.host.clone(),
        inject_loss: args.inject_loss,
        api: args.api.clone(),
        api_admin: args.api_admin.clone(),
    })?;
    cfg.check_api()?;
    if let Some(state) = &args.state {
        match cfg.api.as_mut() {
            Some(api) => api.state = Some(state.clone()),
            None => {
                return Err(
                    "--state needs the management API ([api] in the configuration, --api or \
                     --api-admin)"
                        .into(),
                )
            }
        }
    }
    cfg.fill_defaults();
    Ok(cfg)
}

/// Where the API's state lives: `--state` / `[api] state`, else beside the configuration
/// file, else nowhere (memory).
fn state_path(s: &ApiSettings, config: Option<&Path>) -> Option<PathBuf> {
    s.state.clone().or_else(|| {
        config.map(|c| {
            c.parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .join(DEFAULT_STATE_FILE)
        })
    })
}

/// The state file's name beside the configuration file.
const DEFAULT_STATE_FILE: &str = "pcietun-state.redb";

/// The start assignments: the store's acknowledged ones first, then the configuration's for
/// the functions the store does not mention ([`mgmt::store::plan_restore`]).
/// Queue the stored policies (`Policies` table, docs/api.md "Policy") for the serving loop.
/// A stored policy of a function the appliance no longer has is logged and kept.
fn restore_policies(
    store: &dyn store::Store,
    app: &pcietun::appliance::Appliance,
) -> Result<(), Box<dyn std::error::Error>> {
    let stored = store::load_records::<mgmt::pool::PolicySettings>(store, Table::Policies)?;
    let control = app.control();
    for (function, p) in stored {
        let Some(id) = inventory_id(app, &function) else {
            tracing::warn!(%function, "management API: stored policy of an unknown function; ignored (kept in the store)");
            continue;
        };
        let policy = pcietun::appliance::Policy {
            max_bytes_per_sec_up: p.max_bytes_per_sec_up,
            max_bytes_per_sec_down: p.max_bytes_per_sec_down,
            max_iops: p.max_iops,
            priority: p.priority,
        };
        tracing::info!(%function, ?policy, "management API: stored policy restored");
        control.set_policy(id, policy, move |r| {
            if let Err(e) = r {
                tracing::warn!(%function, "management API: stored policy not applied: {e}");
            }
        });
    }
    Ok(())
}

/// The inventory id of the function a stored record names, if the appliance still has it.
fn inventory_id(
    app: &pcietun::appliance::Appliance,
    function: &str,
) -> Option<pcietun::appliance::inventory::FunctionId> {
    app.inventory()
        .functions()
        .iter()
        .find(|e| e.id.as_str() == function)
        .map(|e| e.id.clone())
}

/// Queue the VF counts set over the API in an earlier run (`VfCounts` table, docs/api.md
/// "Persistence") for the serving loop, which applies them before any host's TLP — after the
/// start assignments, so a count whose PF has a VF assigned at start is refused and logged
/// (kept in the store), as is one of a function the appliance no longer has.
fn restore_vf_counts(
    store: &dyn store::Store,
    app: &pcietun::appliance::Appliance,
) -> Result<(), Box<dyn std::error::Error>> {
    let control = app.control();
    for (function, n) in store::load_records::<u16>(store, Table::VfCounts)? {
        let Some(id) = inventory_id(app, &function) else {
            tracing::warn!(%function, "management API: stored VF count of an unknown function; ignored (kept in the store)");
            continue;
        };
        tracing::info!(%function, vfs = n, "management API: stored VF count restored");
        control.set_vf_count(id, n, move |r| {
            if let Err(e) = r {
                tracing::warn!(%function, "management API: stored VF count not applied: {e}");
            }
        });
    }
    Ok(())
}

/// The cards added over the API in an earlier run ([`Table::Devices`], docs/api.md
/// "Persistence"), as devices to build after the configured ones: each at the device number it
/// had (so ids derived from it and its `card-DD` stay the same) unless a configured card now
/// takes it (then the lowest free one, with a warning), with its name. A record whose spec the
/// API may no longer use (`[api] device_dirs` changed), whose name a configured card has, or
/// that does not fit is logged and skipped (kept in the store).
fn stored_cards(
    store: &dyn store::Store,
    cfg: &ApplianceConfig,
    device_dirs: &[PathBuf],
) -> Result<Vec<DeviceConfig>, Box<dyn std::error::Error>> {
    let mut all = cfg.clone();
    let mut out = Vec::new();
    for (key, rec) in store::load_records::<DeviceRecord>(store, Table::Devices)? {
        let skip = |why: String| {
            tracing::warn!(card = %rec.card, function = %key, spec = %rec.spec, "management API: stored card not restored: {why}; ignored (kept in the store)");
        };
        let spec = match super::pool::api_spec(&rec.spec, device_dirs) {
            Ok(s) => s,
            Err(e) => {
                skip(e.to_string());
                continue;
            }
        };
        let wanted = super::pool::card_device(&rec.card);
        let taken = |n: u8| all.devices.iter().any(|d| d.bdf.device() == n);
        let bdf = match wanted.filter(|n| !taken(*n)) {
            Some(n) => Bdf::new(0, n, 0),
            None => match all.free_slot() {
                Some(b) => {
                    tracing::warn!(card = %rec.card, "management API: a stored card's device number is taken; it moves to card-{:02x}", b.device());
                    b
                }
                None => {
                    skip("no free device number".into());
                    continue;
                }
            },
        };
        let id = |d: &DeviceConfig| {
            d.name
                .clone()
                .unwrap_or_else(|| FunctionId::derived(d.bdf).to_string())
        };
        let dev = DeviceConfig {
            bdf,
            name: rec.name.clone(),
            spec,
        };
        if all.devices.iter().any(|d| id(d) == id(&dev)) {
            skip(format!("a configured card has the id {:?}", id(&dev)));
            continue;
        }
        tracing::info!(card = %rec.card, function = %id(&dev), "management API: stored card restored");
        all.devices.push(dev.clone());
        out.push(dev);
    }
    Ok(out)
}

fn restore_plan(
    stored: &[(String, AssignmentRecord)],
    inv: &Inventory,
    configured: Vec<AssignSpec>,
) -> StartAssignments {
    let functions: Vec<String> = inv.functions().iter().map(|f| f.id.to_string()).collect();
    let hosts: Vec<String> = inv.hosts().iter().map(ToString::to_string).collect();
    let conf: Vec<(String, String)> = configured
        .iter()
        .map(|a| (a.function.to_string(), a.host.to_string()))
        .collect();
    let plan = store::plan_restore(stored, &conf, &functions, &hosts);
    for why in &plan.ignored {
        tracing::warn!("management API: {why}; ignored (kept in the store)");
    }
    let spec = |(f, h): &(String, String)| -> Option<AssignSpec> {
        let function = inv
            .functions()
            .iter()
            .find(|e| e.id.as_str() == f)?
            .id
            .clone();
        let host = *inv.hosts().iter().find(|x| x.to_string() == *h)?;
        // The VM the assignment named, if the record has one the slot message can carry (the
        // API checked it when it was stored; a record edited since is restored without it).
        let vm = stored
            .iter()
            .find(|(sf, r)| sf == f && r.host.as_deref() == Some(h.as_str()))
            .and_then(|(_, r)| r.vm.as_deref())
            .and_then(|v| match VmName::new(v) {
                Ok(n) => Some(n),
                Err(e) => {
                    tracing::warn!(function = %f, vm = %v, "management API: stored VM name not restored: {e}");
                    None
                }
            });
        Some(AssignSpec { function, host, vm })
    };
    let restored: Vec<AssignSpec> = plan.stored.iter().filter_map(spec).collect();
    // The configured entries kept, in their order (as AssignSpec, unchanged).
    let configured: Vec<AssignSpec> = configured
        .into_iter()
        .filter(|a| {
            plan.configured
                .iter()
                .any(|(f, _)| a.function.as_str() == f)
        })
        .collect();
    if !stored.is_empty() {
        tracing::info!(
            restored = restored.len(),
            configured = configured.len(),
            "management API: assignments restored from the state store"
        );
    }
    StartAssignments {
        restored,
        configured,
    }
}

/// The management API server's configuration from the appliance's `[api]` settings (the
/// appliance and `mgmt` do not know each other; this is where they meet).
fn api_config(s: &ApiSettings, config: Option<&Path>) -> mgmt::ApiConfig {
    let mut c = mgmt::ApiConfig {
        listen: s.listen,
        tls: s.tls.as_ref().map(|t| mgmt::TlsFiles {
            cert: t.cert.clone(),
            key: t.key.clone(),
        }),
        admin: s.admin.clone(),
        admin_password_file: s.admin_password_file.clone(),
        ..mgmt::ApiConfig::default()
    };
    if let Some(t) = s.session_timeout {
        c.session_timeout = t;
    }
    c.reclaim_after = s.reclaim_after;
    c.state = state_path(s, config);
    c
}

fn joined<T: ToString>(items: &[T], sep: &str) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(sep)
}

/// The one line that says the appliance serves (tests and the demo wait for it).
fn announce(r: &Ready) -> std::io::Result<()> {
    println!(
        "appliance ready: listen {}; {} function(s): {}",
        joined(&r.listen, " "),
        r.functions.len(),
        joined(&r.functions, ", ")
    );
    std::io::stdout().flush()
}

/// Run `pcietun appliance`.
pub fn run(args: ApplianceArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    super::log::init(&args.log);
    let cfg = resolve(&args)?;
    if cfg.uses_development_key() {
        eprintln!(
            "pcietun appliance: warning: no --key/--host given; using the built-in development \
             keys (loopback only) — the link is NOT secure"
        );
    }
    let listen = joined(&cfg.listen, " ");
    // The API's password and TLS files are checked before any device is built.
    let api = cfg
        .api
        .as_ref()
        .map(|s| api_config(s, args.config.as_deref()));
    let device_dirs = cfg
        .api
        .as_ref()
        .map(|a| a.device_dirs.clone())
        .unwrap_or_default();
    if let Some(api) = &api {
        mgmt::Server::check(api)?;
    }
    // The state store is opened (and its assignments read) before any device is built: a
    // store that cannot be opened is an error naming its file, and nothing starts.
    let mut cfg = cfg;
    let mut without_stored_cards = None;
    let state = match &api {
        Some(api) if !args.check => {
            let (store, name) = api.open_state()?;
            let cards = stored_cards(&*store, &cfg, &device_dirs)?;
            if !cards.is_empty() {
                without_stored_cards = Some(cfg.clone());
                cfg.devices.extend(cards);
            }
            let stored = store::load_records::<AssignmentRecord>(&*store, Table::Assignments)?;
            tracing::info!(
                store = %name,
                generation = store::generation(&*store)?,
                assignments = stored.len(),
                "management API state loaded"
            );
            Some((store, name, stored))
        }
        _ => None,
    };
    let app = match &state {
        Some((_, _, stored)) => {
            match Appliance::build_with(cfg, |inv, configured| {
                restore_plan(stored, inv, configured)
            }) {
                Ok(app) => app,
                // A card the API added that cannot be built now (its backing file gone, its
                // vfio-user server not running) does not keep the configured ones from
                // serving: they start without the stored cards, which stay in the store.
                Err(e) => match without_stored_cards {
                    Some(cfg) => {
                        tracing::error!(error = %e, "management API: the cards added over the API cannot be built; starting without them (kept in the store)");
                        eprintln!("pcietun appliance: warning: the cards added over the API were not restored: {e}");
                        Appliance::build_with(cfg, |inv, configured| {
                            restore_plan(stored, inv, configured)
                        })?
                    }
                    None => return Err(e.into()),
                },
            }
        }
        None => Appliance::build(cfg)?,
    };
    for w in app.warnings() {
        eprintln!("pcietun appliance: warning: {w}");
    }
    if args.check {
        let fns = app.functions();
        println!(
            "appliance configuration ok: listen {listen}; {} function(s): {}",
            fns.len(),
            joined(fns, ", ")
        );
        if let Some(api) = &api {
            println!(
                "management API: {}://{} (administrator {})",
                if api.tls.is_some() { "https" } else { "http" },
                api.listen,
                api.admin.as_deref().unwrap_or("-"),
            );
            println!(
                "management API state: {}",
                api.state.as_deref().map_or(
                    "in memory only (nothing survives a restart)".to_string(),
                    |p| p.display().to_string()
                )
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    // The stored policies go to the serving loop first: it applies them before it handles
    // any host's TLP.
    if let Some((store, _, _)) = &state {
        restore_policies(&**store, &app)?;
        restore_vf_counts(&**store, &app)?;
    }
    // The management API serves this appliance's pool; it stops when the appliance does.
    let _api = match (&api, state) {
        (Some(api), Some((store, name, _))) => {
            let pool = super::pool::shared(app.control(), "appliance", &device_dirs);
            let server = mgmt::Server::start_with_store(api, pool, store, name)?;
            eprintln!("pcietun appliance: management API on {}", server.url());
            Some(server)
        }
        _ => None,
    };
    install_signal_handlers();
    let counters = app.counters();
    let mut served = false;
    let result = app.serve(&STOP, |r| {
        served = true;
        announce(r)
    });
    if served {
        for l in counters.snapshot().links {
            eprintln!("pcietun appliance: transport {}", l.summary());
        }
        eprintln!("pcietun appliance: stopped");
    }
    result?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pcietun::appliance::config::parse_device_flag;
    use pcietun::appliance::inventory::FunctionEntry;
    use pcietun::endpoint::dma_engine::DmaEngine;
    use pcietun::mgmt::store::{Change, MemoryStore, Store};
    use pcietun::transport::HostId;

    #[test]
    fn stored_cards_come_back_at_their_place_or_are_skipped_with_a_reason() {
        let store = MemoryStore::new();
        let put = |key: &str, spec: &str, name: Option<&str>, card: &str| Change::Put {
            table: Table::Devices,
            key: key.into(),
            value: serde_json::to_vec(&DeviceRecord {
                spec: spec.into(),
                name: name.map(str::to_string),
                card: card.into(),
                functions: vec![key.into()],
            })
            .unwrap(),
        };
        store
            .commit(&[
                // At its own device number, with its name.
                put("dma-b", "dma,buffer=4K", Some("dma-b"), "card-05"),
                // Unnamed: its id derives from the device number it keeps.
                put("07.0", "dma", None, "card-07"),
                // Its device number is a configured card's now: the lowest free one.
                put("dma-c", "dma", Some("dma-c"), "card-00"),
                // A configured card has its name.
                put("dma-a", "dma", Some("dma-a"), "card-09"),
                // A path the API may not use without device_dirs.
                put("disk", "nvme=/srv/x.img", Some("disk"), "card-0a"),
                Change::Put {
                    table: Table::Devices,
                    key: "junk".into(),
                    value: b"not json".to_vec(),
                },
            ])
            .unwrap();
        let mut cfg = ApplianceConfig::default();
        cfg.devices.push(DeviceConfig {
            bdf: Bdf::new(0, 0, 0),
            name: Some("dma-a".into()),
            spec: parse_device_flag("dma,buffer=4K").unwrap(),
        });
        let got: Vec<(u8, Option<String>)> = stored_cards(&store, &cfg, &[])
            .unwrap()
            .iter()
            .map(|d| (d.bdf.device(), d.name.clone()))
            .collect();
        assert_eq!(
            got,
            // In key order: "07.0", then "dma-b", then "dma-c" (moved to the lowest free one).
            vec![
                (7, None),
                (5, Some("dma-b".into())),
                (1, Some("dma-c".into())),
            ]
        );
        assert_eq!(FunctionId::derived(Bdf::new(0, 7, 0)).to_string(), "07.0");
    }

    #[test]
    fn restored_assignments_keep_the_vm_their_record_names() {
        let (a, b) = (HostId::new("web1").unwrap(), HostId::new("web2").unwrap());
        let mut inv = Inventory::new([a, b]);
        let mut ids: Vec<FunctionId> = Vec::new();
        for d in 0..3u8 {
            let mut dev = DmaEngine::new(4096);
            let e = FunctionEntry::describe(Bdf::new(0, d, 0), None, &mut dev).unwrap();
            ids.push(e.id.clone());
            inv.add(e).unwrap();
        }
        let record = |host: &str, vm: Option<&str>| AssignmentRecord {
            host: Some(host.into()),
            vm: vm.map(str::to_string),
            lease: None,
        };
        let stored = vec![
            (ids[0].to_string(), record("web1", Some("db-vm"))),
            (ids[1].to_string(), record("web2", None)),
            // Not a name a slot message can carry (edited by hand): restored without it.
            (ids[2].to_string(), record("web1", Some("no spaces"))),
        ];
        let plan = restore_plan(&stored, &inv, Vec::new());
        let got: Vec<(String, String, Option<String>)> = plan
            .restored
            .iter()
            .map(|s| {
                (
                    s.function.to_string(),
                    s.host.to_string(),
                    s.vm.map(|v| v.to_string()),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (ids[0].to_string(), "web1".into(), Some("db-vm".into())),
                (ids[1].to_string(), "web2".into(), None),
                (ids[2].to_string(), "web1".into(), None),
            ]
        );
    }
}
