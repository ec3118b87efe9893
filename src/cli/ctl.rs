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
    Client, ClientError, CtlFile, DeviceTask, FunctionRow, HostRow, Settings, TaskOutcome,
};

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
    /// Follow the event stream: one line per event (--json: the Redfish Event, one per line)
    /// until interrupted or the appliance ends the stream.
    Events,
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
            no_wait,
            timeout,
        } => {
            let started = client.assign_to_vm(&function, &host, vm.as_deref())?;
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
        CtlCommand::Events => follow_events(&client, args.json)?,
    }
    Ok(())
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
