//! `pcietun ctl`: the management API's command-line client — parsing and printing only; the
//! requests, response decoding and settings live in `pcietun::mgmt::client`.
//!
//! Exit codes: 0 success, 1 refused (the API's message on one line), 2 usage or local
//! configuration, 3 the appliance cannot be reached. `--json` prints the stable documented
//! keys of docs/api.md (and `{"error": …, "exit_code": N}` on failure).

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use pcietun::mgmt::client::{
    Client, ClientError, CtlFile, DeviceTask, FunctionRow, HostRow, PolicyChange, PolicyRow,
    RulesRow, ScheduleRow, Settings, TaskOutcome, VfCount,
};
use pcietun::mgmt::watch::Frame;

/// Arguments of `pcietun ctl`.
#[derive(Debug, clap::Args)]
pub struct CtlArgs {
    /// API URL [default: $PCIETUN_API, the settings file, or http://127.0.0.1:8443].
    #[arg(long, global = true, value_name = "URL")]
    api: Option<String>,
    /// Session token [default: $PCIETUN_TOKEN or the settings file]; prefer those, a flag is
    /// visible to other users in the process list.
    #[arg(long, global = true, value_name = "TOKEN")]
    token: Option<String>,
    /// CA certificate (PEM) to trust for an https:// API.
    #[arg(long, global = true, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Settings file [default: $PCIETUN_CTL_CONFIG or ~/.config/pcietun/ctl.toml].
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print JSON with stable keys (docs/api.md).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Debug, clap::Subcommand)]
enum CtlCommand {
    /// Log in and keep the session token in the settings file (mode 0600).
    Login {
        /// Account name.
        #[arg(long)]
        user: String,
        /// Read the password from this file (first line) instead of standard input.
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
    },
    /// End the stored session and forget its token.
    Logout,
    /// List the functions of the pool: ids, PCI ids, class, state, owner, health.
    Devices,
    /// List the hosts: session state, RTT, functions.
    Hosts,
    /// Assign FUNCTION to HOST; waits until the host has it unless --no-wait.
    Assign {
        /// Function id (see `ctl devices`).
        function: String,
        /// Host id (see `ctl hosts`).
        host: String,
        /// The VM on the host that is to take the function (a VM its agent has configured;
        /// otherwise the agent's own selectors pick one).
        #[arg(long, value_name = "NAME")]
        vm: Option<String>,
        /// A maximum hold time (1s to 366d: 90s, 2h, 1d 12h); when it ends the appliance
        /// returns the function to the pool (docs/api.md "Rules").
        #[arg(long, value_name = "DURATION", value_parser = parse_lease)]
        lease: Option<Duration>,
        /// Return once the task is started.
        #[arg(long)]
        no_wait: bool,
        /// How long to wait for the task, in seconds.
        #[arg(long, default_value_t = 60, value_name = "SECS")]
        timeout: u64,
    },
    /// Add a card to the running appliance (Administrator): SPEC as in `pcietun appliance
    /// --device` (dma[,buffer=SIZE][,vfs=N] | nvme=PATH[,size=SIZE][,vfs=N[,vf_size=SIZE]] | replay=DUMP[,barN=SIZE]
    /// | vfio-user=SOCKET[,connect_timeout=S]; paths only under the appliance's [api]
    /// device_dirs); waits until it is in the inventory unless --no-wait.
    AddDevice {
        /// The card.
        spec: String,
        /// Stable id of its function 0 [default: derived from where it lands].
        #[arg(long)]
        name: Option<String>,
        /// Return once the task is started.
        #[arg(long)]
        no_wait: bool,
        /// How long to wait for the task, in seconds.
        #[arg(long, default_value_t = 60, value_name = "SECS")]
        timeout: u64,
    },
    /// Remove the card of FUNCTION (unassigned; Administrator); waits until it is gone unless
    /// --no-wait.
    RemoveDevice {
        /// Function id (or card id) as `ctl devices` shows it.
        function: String,
        /// Return once the task is started.
        #[arg(long)]
        no_wait: bool,
        /// How long to wait for the task, in seconds.
        #[arg(long, default_value_t = 60, value_name = "SECS")]
        timeout: u64,
    },
    /// Show the SR-IOV VF count of physical function FUNCTION, or set it to N (0 to its
    /// TotalVFs; Administrator): every VF of it must be unassigned; VF i keeps its id. Waits
    /// until the inventory shows the change unless --no-wait.
    Vfs {
        /// Physical function id as `ctl devices` shows it.
        function: String,
        /// The new number of VFs [default: show the current one].
        n: Option<u16>,
        /// Return once the task is started.
        #[arg(long)]
        no_wait: bool,
        /// How long to wait for the task, in seconds.
        #[arg(long, default_value_t = 60, value_name = "SECS")]
        timeout: u64,
    },
    /// Follow the event stream: one line per event (--json: the Redfish Event, one per line)
    /// until interrupted or the appliance ends the stream.
    Events,
    /// Show or change the caps and priority of assigned FUNCTION (docs/api.md "Policy"),
    /// enforced on the appliance. With no option it prints them. Rates take SI or binary
    /// units: 2GB/s, 500M, 1.5GiB/s, 100000 (bytes per second); IOPS 100k, 2M, 5000. "none"
    /// lifts one cap.
    Policy {
        /// Function id (it must be assigned: the caps live on its Connection).
        function: String,
        /// Cap both directions at RATE.
        #[arg(long, value_name = "RATE", value_parser = parse_cap_rate)]
        max_bw: Option<Cap>,
        /// Cap data function → host at RATE (what a disk read or a DMA write delivers).
        #[arg(long, value_name = "RATE", value_parser = parse_cap_rate)]
        max_up_bw: Option<Cap>,
        /// Cap data host → function at RATE (what the function's DMA reads fetch: a disk write).
        #[arg(long, value_name = "RATE", value_parser = parse_cap_rate)]
        max_down_bw: Option<Cap>,
        /// Cap the non-posted requests the function issues per second.
        #[arg(long, value_name = "N", value_parser = parse_cap_count)]
        max_iops: Option<Cap>,
        /// Its share of a saturated link relative to the other functions': 1..=100 (10 by
        /// default; "default" sets that back).
        #[arg(long, value_name = "N", value_parser = parse_priority)]
        priority: Option<Cap>,
        /// Lift every cap and give the default priority.
        #[arg(long, conflicts_with_all = ["max_bw", "max_up_bw", "max_down_bw", "max_iops", "priority"])]
        clear: bool,
    },
    /// Show the rules (docs/api.md "Rules"): the lost-session rule, the functions of lost
    /// hosts it will take and when, and every lease; with --reclaim-after, change the rule
    /// (Administrator).
    Rules {
        /// Return a host's functions to the pool once its session has been lost this long
        /// (1s to 30d: 10m, 1h); "never" turns the rule off.
        #[arg(long, value_name = "DURATION", value_parser = parse_reclaim_after)]
        reclaim_after: Option<Reclaim>,
    },
    /// Show, add or remove schedules (docs/api.md "Schedules"): a function goes to HOST in a
    /// daily UTC window and to --then HOST (or the pool) outside it. Without a subcommand it
    /// lists them.
    Schedule {
        #[command(subcommand)]
        action: Option<ScheduleCommand>,
    },
    /// A live table, from the appliance's /metrics, of throughput, TLPs per second, errors and
    /// RTT per function and per host, refreshed every --interval seconds until interrupted
    /// (--json: one frame per line; docs/api.md "ctl watch").
    Watch {
        /// Seconds between refreshes (0.1 to 3600).
        #[arg(long, default_value_t = 1.0, value_name = "SECS", value_parser = parse_interval)]
        interval: f64,
        /// Stop after N refreshes.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        count: Option<u64>,
    },
    /// Take FUNCTION away from its host; waits until it is free unless --no-wait.
    Unassign {
        /// Function id.
        function: String,
        /// Return once the task is started.
        #[arg(long)]
        no_wait: bool,
        /// How long to wait for the task, in seconds.
        #[arg(long, default_value_t = 60, value_name = "SECS")]
        timeout: u64,
    },
}

/// Run `pcietun ctl`.
pub fn run(args: CtlArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let json = args.json;
    match execute(args) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            let code = e.exit_code();
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "error": e.to_string(), "exit_code": code })
                );
            }
            eprintln!(
                "pcietun ctl: {}",
                e.to_string().lines().next().unwrap_or("")
            );
            Ok(ExitCode::from(code))
        }
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

fn execute(args: CtlArgs) -> Result<(), ClientError> {
    let path = args.config.clone().or_else(|| CtlFile::default_path(&env));
    let file = match &path {
        Some(p) => CtlFile::load(p)?,
        None => CtlFile::default(),
    };
    let settings = Settings::resolve(
        args.api.as_deref(),
        args.token.as_deref(),
        args.ca.as_deref(),
        &env,
        &file,
    );
    let client = Client::new(&settings)?;
    match args.command {
        CtlCommand::Login {
            user,
            password_file,
        } => {
            let password = read_password(password_file.as_deref())?;
            let login = client.login(&user, &password)?;
            let path = path.ok_or_else(|| ClientError::File {
                path: PathBuf::from("~/.config/pcietun/ctl.toml"),
                reason:
                    "no settings file location (set HOME or PCIETUN_CTL_CONFIG, or pass --config)"
                        .into(),
            })?;
            let saved = CtlFile {
                api: Some(client.api().to_string()),
                token: Some(login.token),
                session: Some(login.session.clone()),
                ca: settings.ca.clone(),
            };
            saved.save(&path)?;
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({ "api": client.api(), "user": user, "session": login.session, "config": path })
                );
            } else {
                println!(
                    "logged in to {} as {user}; token saved in {}",
                    client.api(),
                    path.display()
                );
            }
        }
        CtlCommand::Logout => {
            let session = file.session.clone().ok_or_else(|| ClientError::Refused {
                status: 0,
                message: "no stored session (ctl login first)".into(),
            })?;
            let result = client.logout(&session);
            if let Some(p) = &path {
                let mut f = file.clone();
                f.token = None;
                f.session = None;
                f.save(p)?;
            }
            result?;
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({ "session": session, "logged_out": true })
                );
            } else {
                println!("logged out of {}", client.api());
            }
        }
        CtlCommand::Devices => {
            let rows = client.devices()?;
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&rows).unwrap_or_default()
                );
            } else {
                print_devices(&rows);
            }
        }
        CtlCommand::Hosts => {
            let rows = client.hosts()?;
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&rows).unwrap_or_default()
                );
            } else {
                print_hosts(&rows);
            }
        }
        CtlCommand::Assign {
            function,
            host,
            vm,
            lease,
            no_wait,
            timeout,
        } => {
            let started = client.assign_leased(&function, &host, vm.as_deref(), lease)?;
            let done = finish(&client, started, no_wait, timeout)?;
            report(&done, args.json, "assigned to", "assigning to");
        }
        CtlCommand::Unassign {
            function,
            no_wait,
            timeout,
        } => {
            let started = client.unassign(&function)?;
            let done = finish(&client, started, no_wait, timeout)?;
            report(&done, args.json, "unassigned from", "unassigning from");
        }
        CtlCommand::AddDevice {
            spec,
            name,
            no_wait,
            timeout,
        } => {
            let started = client.add_device(&spec, name.as_deref())?;
            let done = finish_device(&client, started, no_wait, timeout)?;
            report_device(&done, args.json);
        }
        CtlCommand::RemoveDevice {
            function,
            no_wait,
            timeout,
        } => {
            let started = client.remove_device(&function)?;
            let done = finish_device(&client, started, no_wait, timeout)?;
            report_device(&done, args.json);
        }
        CtlCommand::Vfs {
            function,
            n,
            no_wait,
            timeout,
        } => {
            let v = match n {
                None => client.vf_count(&function)?,
                Some(n) => client.set_vf_count(
                    &function,
                    n,
                    (!no_wait).then(|| Duration::from_secs(timeout)),
                )?,
            };
            report_vfs(&v, args.json);
        }
        CtlCommand::Events => follow_events(&client, args.json)?,
        CtlCommand::Watch { interval, count } => watch(&client, interval, count, args.json)?,
        CtlCommand::Schedule { action } => {
            let rows = match action {
                None => client.schedules()?,
                Some(ScheduleCommand::Add {
                    function,
                    host,
                    window,
                    then,
                }) => client.add_schedule(
                    &function,
                    &host,
                    (&window.0, &window.1),
                    then.as_deref(),
                )?,
                Some(ScheduleCommand::Remove { id }) => client.remove_schedule(&id)?,
            };
            print_schedules(&rows, args.json);
        }
        CtlCommand::Rules { reclaim_after } => {
            let row = match reclaim_after {
                Some(r) => client.set_rules(Some(r.0))?,
                None => client.rules()?,
            };
            print_rules(&row, args.json);
        }
        CtlCommand::Policy {
            function,
            max_bw,
            max_up_bw,
            max_down_bw,
            max_iops,
            priority,
            clear,
        } => {
            let change = if clear {
                PolicyChange {
                    max_bytes_per_sec_up: Some(None),
                    max_bytes_per_sec_down: Some(None),
                    max_iops: Some(None),
                    priority: Some(None),
                }
            } else {
                PolicyChange {
                    max_bytes_per_sec_up: max_up_bw.or(max_bw).map(|c| c.0),
                    max_bytes_per_sec_down: max_down_bw.or(max_bw).map(|c| c.0),
                    max_iops: max_iops.map(|c| c.0),
                    priority: priority.map(|c| c.0),
                }
            };
            let row = if change.is_empty() {
                client.policy(&function)?
            } else {
                client.set_policy(&function, &change)?
            };
            print_policy(&row, args.json);
        }
    }
    Ok(())
}

/// A duration of whole seconds between 1 s and `max`.
fn parse_seconds(s: &str, max: Duration) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("{s:?} is not a duration like 90s, 10m, 2h or 1d: {e}"))?;
    if d.subsec_nanos() != 0 || d < Duration::from_secs(1) || d > max {
        return Err(format!(
            "{s:?}: want whole seconds from 1s to {}",
            humantime::format_duration(max)
        ));
    }
    Ok(d)
}

fn parse_lease(s: &str) -> Result<Duration, String> {
    parse_seconds(s, pcietun::mgmt::rules::MAX_LEASE)
}

/// `ctl schedule add|remove`.
#[derive(Debug, clap::Subcommand)]
enum ScheduleCommand {
    /// Give FUNCTION to HOST every day in WINDOW (UTC), to --then outside it (Operator).
    Add {
        /// Function id (not assigned by hand).
        function: String,
        /// Host id that has it during the window.
        host: String,
        /// The daily window, START-END in UTC (`01:00-03:00`; `23:00-01:00` wraps midnight).
        #[arg(value_parser = parse_window)]
        window: Span,
        /// The host that has it outside the window [default: the pool].
        #[arg(long, value_name = "HOST")]
        then: Option<String>,
    },
    /// Remove schedule ID (as `ctl schedule` lists it); the function stays where it is.
    Remove {
        /// Schedule id.
        id: String,
    },
}

/// A window `START-END` from the command line (checked as `HH:MM` by the API).
#[derive(Debug, Clone)]
struct Span(String, String);

fn parse_window(s: &str) -> Result<Span, String> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("{s:?}: want START-END, e.g. 01:00-03:00 (UTC)"))?;
    for t in [a, b] {
        if pcietun::mgmt::schedule::parse_minute(t).is_none() {
            return Err(format!("{t:?} is not a time of day HH:MM (00:00 to 23:59)"));
        }
    }
    Ok(Span(a.to_string(), b.to_string()))
}

fn print_schedules(rows: &[ScheduleRow], json: bool) {
    if json {
        println!("{}", serde_json::to_string(rows).unwrap_or_default());
        return;
    }
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.id.clone(),
                r.function.clone(),
                r.host.clone(),
                format!("{}-{} UTC", r.start, r.end),
                r.then.clone().unwrap_or_else(|| "(pool)".into()),
                if r.active { "yes" } else { "no" }.into(),
            ]
        })
        .collect();
    print_table(
        &["ID", "FUNCTION", "HOST", "WINDOW", "THEN", "ACTIVE"],
        &rows,
    );
}

/// `--reclaim-after`: a duration, or `None` for "never".
#[derive(Debug, Clone, Copy)]
struct Reclaim(Option<u64>);

fn parse_reclaim_after(s: &str) -> Result<Reclaim, String> {
    if s.trim().eq_ignore_ascii_case("never") {
        return Ok(Reclaim(None));
    }
    parse_seconds(s, pcietun::mgmt::rules::MAX_RECLAIM_AFTER).map(|d| Reclaim(Some(d.as_secs())))
}

fn print_rules(row: &RulesRow, json: bool) {
    if json {
        println!("{}", serde_json::to_string(row).unwrap_or_default());
        return;
    }
    match row.reclaim_after_s {
        Some(s) => println!(
            "reclaim after: {} (functions of a host whose session is lost that long return to the pool)",
            humantime::format_duration(Duration::from_secs(s))
        ),
        None => println!("reclaim after: never (functions of lost hosts stay with them)"),
    }
    if !row.pending.is_empty() {
        println!("\npending reclaims:");
        let rows: Vec<Vec<String>> = row
            .pending
            .iter()
            .map(|p| {
                vec![
                    p.function.clone(),
                    p.host.clone(),
                    p.lost_since.clone(),
                    p.reclaim_at.clone().unwrap_or_else(|| "never".into()),
                ]
            })
            .collect();
        print_table(&["FUNCTION", "HOST", "LOST SINCE", "RECLAIM AT"], &rows);
    }
    if !row.leases.is_empty() {
        println!("\nleases:");
        let rows: Vec<Vec<String>> = row
            .leases
            .iter()
            .map(|l| {
                vec![
                    l.function.clone(),
                    l.host.clone(),
                    humantime::format_duration(Duration::from_secs(l.seconds)).to_string(),
                    l.expires_at.clone(),
                ]
            })
            .collect();
        print_table(&["FUNCTION", "HOST", "LEASE", "EXPIRES AT"], &rows);
    }
}

fn parse_interval(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.1..=3600.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a number of seconds from 0.1 to 3600")),
    }
}

/// `ctl watch`: scrape, wait, scrape, print the rates between the two; repeat. A failed scrape
/// ends it with that error's exit code (an appliance that went away is exit 3).
fn watch(
    client: &Client,
    interval: f64,
    count: Option<u64>,
    json: bool,
) -> Result<(), ClientError> {
    use std::io::IsTerminal;
    let live = !json && std::io::stdout().is_terminal();
    let mut before = client.scrape()?;
    let mut at = std::time::Instant::now();
    let mut shown = 0u64;
    while count.is_none_or(|n| shown < n) {
        std::thread::sleep(Duration::from_secs_f64(interval));
        let after = client.scrape()?;
        let now = std::time::Instant::now();
        let frame = Frame::between(&before, &after, now.duration_since(at).as_secs_f64());
        (before, at) = (after, now);
        shown += 1;
        if json {
            println!("{}", serde_json::to_string(&frame).unwrap_or_default());
            continue;
        }
        if live {
            // Home and clear: the table replaces the last one.
            print!("\x1b[H\x1b[2J");
        } else if shown > 1 {
            println!();
        }
        println!(
            "{} — every {interval} s — rates over the last {:.2} s",
            client.api(),
            frame.interval_s
        );
        print_watch(&frame);
    }
    Ok(())
}

/// A rate with an SI prefix: `12.3 M`.
fn si(v: f64) -> String {
    let (v, p) = match v {
        v if v >= 1e9 => (v / 1e9, "G"),
        v if v >= 1e6 => (v / 1e6, "M"),
        v if v >= 1e3 => (v / 1e3, "k"),
        v => (v, ""),
    };
    if p.is_empty() {
        format!("{v:.0}")
    } else {
        format!("{v:.1}{p}")
    }
}

fn print_watch(frame: &Frame) {
    let functions: Vec<Vec<String>> = frame
        .functions
        .iter()
        .map(|r| {
            vec![
                r.function.clone(),
                r.state.clone(),
                r.host.clone().unwrap_or_else(|| "-".into()),
                format!("{}B/s", si(r.down_bytes_per_s)),
                format!("{}B/s", si(r.up_bytes_per_s)),
                si(r.down_tlps_per_s),
                si(r.up_tlps_per_s),
                si(r.errors_per_s),
                format!("{:.0}%", r.throttled * 100.0),
            ]
        })
        .collect();
    print_table(
        &[
            "FUNCTION",
            "STATE",
            "HOST",
            "DOWN",
            "UP",
            "TLP/S DOWN",
            "TLP/S UP",
            "ERR/S",
            "HELD",
        ],
        &functions,
    );
    println!();
    let hosts: Vec<Vec<String>> = frame
        .hosts
        .iter()
        .map(|r| {
            vec![
                r.host.clone(),
                if r.connected {
                    "connected"
                } else {
                    "disconnected"
                }
                .into(),
                r.rtt_us
                    .map_or_else(|| "-".into(), |us| format!("{us:.0} us")),
                format!("{}B/s", si(r.down_bytes_per_s)),
                format!("{}B/s", si(r.up_bytes_per_s)),
                si(r.down_tlps_per_s),
                si(r.up_tlps_per_s),
                si(r.retransmits_per_s),
                si(r.credit_stalls_per_s),
            ]
        })
        .collect();
    print_table(
        &[
            "HOST",
            "SESSION",
            "RTT",
            "DOWN",
            "UP",
            "TLP/S DOWN",
            "TLP/S UP",
            "RETX/S",
            "STALLS/S",
        ],
        &hosts,
    );
}

/// A cap from the command line: `Some(n)`, or `None` for "none" (lift it).
#[derive(Debug, Clone, Copy)]
struct Cap(Option<u64>);

/// A rate in bytes per second: a number with an optional SI (k, M, G, T: powers of 1000) or
/// binary (Ki, Mi, Gi, Ti) prefix, an optional `B` and an optional `/s`; or "none".
fn parse_cap_rate(s: &str) -> Result<Cap, String> {
    parse_cap(s, true)
}

/// A count per second: a number with an optional k, M or G (powers of 1000); or "none".
fn parse_cap_count(s: &str) -> Result<Cap, String> {
    parse_cap(s, false)
}

fn parse_cap(s: &str, bytes: bool) -> Result<Cap, String> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("none") {
        return Ok(Cap(None));
    }
    let t = t.strip_suffix("/s").unwrap_or(t);
    let t = if bytes {
        t.strip_suffix(['B', 'b']).unwrap_or(t)
    } else {
        t
    };
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: f64 = match unit {
        "" => 1.0,
        "k" | "K" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" if bytes => 1e12,
        "Ki" if bytes => 1024.0,
        "Mi" if bytes => 1024.0 * 1024.0,
        "Gi" if bytes => 1024.0 * 1024.0 * 1024.0,
        "Ti" if bytes => 1024.0f64.powi(4),
        _ => {
            return Err(format!(
                "{s:?}: unknown unit {unit:?} ({})",
                if bytes {
                    "use k, M, G, T, Ki, Mi, Gi or Ti, e.g. 2GB/s"
                } else {
                    "use k, M or G, e.g. 100k"
                }
            ))
        }
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a number with an optional unit"))?;
    let v = (n * mult).round();
    if !(1.0..1.8e19).contains(&v) {
        return Err(format!(
            "{s:?}: a cap is at least 1 per second (\"none\" lifts it)"
        ));
    }
    Ok(Cap(Some(v as u64)))
}

fn print_policy(row: &PolicyRow, json: bool) {
    if json {
        println!("{}", serde_json::to_string(row).unwrap_or_default());
        return;
    }
    let show = |v: Option<u64>, unit: &str| {
        v.map_or_else(|| "none".to_string(), |v| format!("{v} {unit}"))
    };
    println!("{}:", row.function);
    println!(
        "  max up (function → host)   {}",
        show(row.max_bytes_per_sec_up, "B/s")
    );
    println!(
        "  max down (host → function) {}",
        show(row.max_bytes_per_sec_down, "B/s")
    );
    println!("  max IOPS                   {}", show(row.max_iops, "/s"));
    if let Some(p) = row.priority {
        println!("  priority                   {p}");
    }
}

/// `--priority`: 1..=100, or `default`.
fn parse_priority(s: &str) -> Result<Cap, String> {
    if s == "default" {
        return Ok(Cap(None));
    }
    use pcietun::mgmt::pool::{PRIORITY_DEFAULT, PRIORITY_MAX, PRIORITY_MIN};
    match s.parse::<u64>() {
        Ok(n) if (u64::from(PRIORITY_MIN)..=u64::from(PRIORITY_MAX)).contains(&n) => {
            Ok(Cap(Some(n)))
        }
        _ => Err(format!(
            "{s:?} is not a priority: an integer from {PRIORITY_MIN} to {PRIORITY_MAX} \
             ({PRIORITY_DEFAULT} is the default), or \"default\""
        )),
    }
}

/// Set by SIGINT / SIGTERM: `ctl events` ends cleanly.
static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `ctl events`: the stream is read on its own thread so an interrupt ends the command at
/// once (exit 0, every line printed whole) even while the connection is idle.
fn follow_events(client: &Client, json: bool) -> Result<(), ClientError> {
    use std::io::Write;
    use std::sync::atomic::Ordering;
    if let Err(e) = pcietun::sys::process::on_terminate(&STOP) {
        tracing::warn!(error = %e, "cannot install the SIGINT/SIGTERM handlers");
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|scope| {
        let reader = scope
            .spawn(move || client.events(|e| tx.send(e).is_ok() && !STOP.load(Ordering::SeqCst)));
        let mut out = std::io::stdout().lock();
        loop {
            if STOP.load(Ordering::SeqCst) {
                let _ = out.flush();
                // The reader may be blocked on an idle stream; do not wait for it.
                std::process::exit(0);
            }
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(e) => {
                    let line = if json { e.to_string() } else { event_line(&e) };
                    if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
                        // Standard output closed (`ctl events | head`): done.
                        std::process::exit(0);
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        reader.join().unwrap_or(Ok(()))
    })
}

/// One event for people: `ID TIME SEVERITY MESSAGE-ID ORIGIN: MESSAGE`.
fn event_line(e: &serde_json::Value) -> String {
    let ev = e.pointer("/Events/0").unwrap_or(e);
    let s = |p: &str| ev.pointer(p).and_then(|v| v.as_str()).unwrap_or("-");
    let id = e.get("Id").and_then(|v| v.as_str()).unwrap_or("-");
    let message_id = s("/MessageId");
    let short = message_id.rsplit('.').next().unwrap_or(message_id);
    format!(
        "{id} {} {} {short} {}: {}",
        s("/EventTimestamp"),
        s("/MessageSeverity"),
        s("/OriginOfCondition/@odata.id"),
        s("/Message")
    )
}

fn finish_device(
    client: &Client,
    t: DeviceTask,
    no_wait: bool,
    timeout: u64,
) -> Result<DeviceTask, ClientError> {
    if no_wait {
        Ok(t)
    } else {
        client.wait_device(t, Duration::from_secs(timeout))
    }
}

fn report_vfs(v: &VfCount, json: bool) {
    if json {
        println!("{}", serde_json::to_string(v).unwrap_or_default());
        return;
    }
    match (&v.task, v.state.as_deref()) {
        (Some(task), Some(state)) if state != "Completed" => println!(
            "setting the VF count of {}: task {task} is {state}",
            v.function
        ),
        _ => println!(
            "{}: {} of {} virtual functions{}{}",
            v.function,
            v.num_vfs,
            v.total_vfs,
            if v.vfs.is_empty() { "" } else { ": " },
            v.vfs.join(",")
        ),
    }
}

fn report_device(t: &DeviceTask, json: bool) {
    if json {
        println!("{}", serde_json::to_string(t).unwrap_or_default());
        return;
    }
    let done = t.state == "Completed";
    match (t.action.as_str(), done) {
        ("add", true) => println!(
            "added card {} (functions {})",
            t.device.as_deref().unwrap_or("?"),
            t.functions.join(",")
        ),
        ("add", false) => println!(
            "adding card {}: task {} is {}",
            t.spec.as_deref().unwrap_or("?"),
            t.task,
            t.state
        ),
        (_, true) => println!(
            "removed card {} (functions {})",
            t.device.as_deref().unwrap_or("?"),
            t.functions.join(",")
        ),
        (_, false) => println!(
            "removing card {}: task {} is {}",
            t.device.as_deref().unwrap_or("?"),
            t.task,
            t.state
        ),
    }
}

fn finish(
    client: &Client,
    t: TaskOutcome,
    no_wait: bool,
    timeout: u64,
) -> Result<TaskOutcome, ClientError> {
    if no_wait {
        Ok(t)
    } else {
        client.wait(t, Duration::from_secs(timeout))
    }
}

fn report(t: &TaskOutcome, json: bool, done: &str, running: &str) {
    if json {
        println!("{}", serde_json::to_string(t).unwrap_or_default());
        return;
    }
    let host = t.host.as_deref().unwrap_or("?");
    if t.state == "Completed" {
        println!("{} {done} {host}", t.function);
    } else {
        println!(
            "{} {running} {host}: task {} is {}",
            t.function, t.task, t.state
        );
    }
}

fn read_password(
    file: Option<&std::path::Path>,
) -> Result<zeroize::Zeroizing<String>, ClientError> {
    match file {
        Some(p) => pcietun::mgmt::config::read_password_file(p).map_err(|e| ClientError::File {
            path: p.into(),
            reason: e.to_string(),
        }),
        None => {
            let mut line = zeroize::Zeroizing::new(String::new());
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .map_err(|e| ClientError::File {
                    path: "stdin".into(),
                    reason: e.to_string(),
                })?;
            Ok(zeroize::Zeroizing::new(
                line.trim_end_matches(['\r', '\n']).to_string(),
            ))
        }
    }
}

fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let s: Vec<String> = cells
            .iter()
            .zip(&width)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

fn print_devices(rows: &[FunctionRow]) {
    let hex = |s: &str| s.trim_start_matches("0x").to_string();
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.id.clone(),
                r.device.clone(),
                r.kind.clone(),
                format!("{}:{}", hex(&r.vendor_id), hex(&r.device_id)),
                r.class.clone(),
                r.state.clone(),
                r.host.clone().unwrap_or_else(|| "-".into()),
                r.health.clone(),
            ]
        })
        .collect();
    print_table(
        &[
            "FUNCTION", "DEVICE", "KIND", "ID", "CLASS", "STATE", "HOST", "HEALTH",
        ],
        &body,
    );
}

fn print_hosts(rows: &[HostRow]) {
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.id.clone(),
                r.session.clone(),
                r.rtt_us.map_or_else(|| "-".into(), |us| format!("{us} us")),
                if r.functions.is_empty() {
                    "-".into()
                } else {
                    r.functions.join(",")
                },
            ]
        })
        .collect();
    print_table(&["HOST", "SESSION", "RTT", "FUNCTIONS"], &body);
}

#[cfg(test)]
mod policy_tests {
    use super::{parse_cap_count, parse_cap_rate, parse_priority};

    #[test]
    fn priorities_are_1_to_100_or_default() {
        let p = |s: &str| parse_priority(s).map(|c| c.0);
        assert_eq!(p("1"), Ok(Some(1)));
        assert_eq!(p("100"), Ok(Some(100)));
        assert_eq!(p("default"), Ok(None));
        for bad in ["0", "101", "-1", "high", "", "2.5"] {
            assert!(p(bad).is_err(), "{bad:?} accepted as a priority");
        }
    }

    #[test]
    fn rates_and_counts_parse_with_their_units() {
        let r = |s: &str| parse_cap_rate(s).map(|c| c.0);
        assert_eq!(r("2GB/s"), Ok(Some(2_000_000_000)));
        assert_eq!(r("500M"), Ok(Some(500_000_000)));
        assert_eq!(r("1.5GiB/s"), Ok(Some(1_610_612_736)));
        assert_eq!(r("64KiB"), Ok(Some(65_536)));
        assert_eq!(r("100000"), Ok(Some(100_000)));
        assert_eq!(r("none"), Ok(None));
        let c = |s: &str| parse_cap_count(s).map(|c| c.0);
        assert_eq!(c("100k"), Ok(Some(100_000)));
        assert_eq!(c("2M"), Ok(Some(2_000_000)));
        assert_eq!(c("5000"), Ok(Some(5000)));
        for bad in ["0", "-5", "abc", "2XB/s", "", "1e3", "0.4"] {
            assert!(r(bad).is_err(), "{bad:?} accepted as a rate");
        }
        for bad in ["10Ki", "2GB", "0"] {
            assert!(c(bad).is_err(), "{bad:?} accepted as a count");
        }
    }
}
