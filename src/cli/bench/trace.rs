//! `pcietun bench nvme --trace N`: where one QD1 command's time goes, from the event probes
//! (`pcietun::probe`) on both sides of the tunnel in this one process. Per command (the
//! events between its SQ doorbell and the reaping of its completion): how many TLPs, frames,
//! DMA round trips and thread wake-ups it took (medians over the commands — robust to the
//! machine's load), the median time between the steps of the protocol, and the event-by-event
//! timeline of the median command with the thread each event ran on.

use pcietun::probe::{self, Ev, Event, Trace, EVENTS};

/// The steps of one command, in protocol order: (event, what the time up to it is).
const READ_STEPS: &[(Ev, &str)] = &[
    (Ev::DrvSqDoorbell, "driver rings the SQ doorbell"),
    (
        Ev::NvmeSqDoorbell,
        "doorbell MWr crosses to the appliance's register file",
    ),
    (Ev::NvmeFetch, "NVMe worker wakes and starts the SQE fetch"),
    (
        Ev::DmaMrd,
        "fetch MRd emitted by the appliance's TLP thread",
    ),
    (
        Ev::DmaCpl,
        "MRd to the host and its CplD back (one round trip)",
    ),
    (Ev::DmaReadWoken, "worker wakes with the SQE"),
    (Ev::DmaMwr, "media read, first data MWr queued"),
    (Ev::Msi, "rest of the data, CQE, MSI-X queued"),
    (
        Ev::DrvIrqWake,
        "posted TLPs to the host, MSI-X wakes the driver",
    ),
    (Ev::DrvReaped, "completion reaped"),
];

/// The events of one command.
struct Cmd<'a> {
    events: &'a [Event],
}

impl Cmd<'_> {
    fn latency(&self) -> u64 {
        let (a, b) = (self.events[0].ns, self.events[self.events.len() - 1].ns);
        b - a
    }

    fn count(&self, ev: Ev) -> usize {
        self.events.iter().filter(|e| e.ev == ev).count()
    }

    /// Offsets (ns from the doorbell) of each step: the first occurrence after the previous.
    fn steps(&self, steps: &[(Ev, &str)]) -> Vec<Option<u64>> {
        let t0 = self.events[0].ns;
        let mut at = 0;
        let mut out = Vec::with_capacity(steps.len());
        for (ev, _) in steps {
            match self.events[at..].iter().position(|e| e.ev == *ev) {
                Some(k) => {
                    at += k;
                    out.push(Some(self.events[at].ns - t0));
                }
                None => out.push(None),
            }
        }
        out
    }
}

/// Split a QD1 trace into commands: from each SQ doorbell to the next reaped completion.
fn commands(t: &Trace) -> Vec<Cmd<'_>> {
    let e = &t.events;
    let mut out = Vec::new();
    let mut i = 0;
    while i < e.len() {
        if e[i].ev != Ev::DrvSqDoorbell {
            i += 1;
            continue;
        }
        let Some(k) = e[i..].iter().position(|x| x.ev == Ev::DrvReaped) else {
            break;
        };
        let end = i + k;
        // A second doorbell inside the window: not a QD1 command; skip it.
        if !e[i + 1..end].iter().any(|x| x.ev == Ev::DrvSqDoorbell) {
            out.push(Cmd {
                events: &e[i..=end],
            });
        }
        i = end + 1;
    }
    out
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Print the breakdown of the QD1 commands recorded in `t` (`what`: the workload's name).
pub fn report(what: &str, t: &Trace) {
    let cmds = commands(t);
    println!();
    println!(
        "== {what} QD1: {} commands traced ({} events, {} past the ring) ==",
        cmds.len(),
        t.events.len(),
        t.dropped
    );
    if cmds.is_empty() {
        println!("no complete command in the trace");
        return;
    }
    let per = |ev: Ev| median(cmds.iter().map(|c| c.count(ev) as f64).collect());
    let mean = |ev: Ev| cmds.iter().map(|c| c.count(ev)).sum::<usize>() as f64 / cmds.len() as f64;
    println!("per command (median / mean over commands):");
    for ev in Ev::ALL.iter().take(EVENTS) {
        let m = mean(*ev);
        if m > 0.0 {
            println!("  {:<34} {:>5.0} / {:>6.2}", ev.name(), per(*ev), m);
        }
    }
    let wakes = |c: &Cmd| {
        c.count(Ev::LinkWake)
            + c.count(Ev::WorkerWake)
            + c.count(Ev::DmaReadWoken)
            + c.count(Ev::DrvIrqWake)
    };
    println!(
        "  {:<34} {:>5.0} / {:>6.2}",
        "thread wake-ups (all kinds)",
        median(cmds.iter().map(|c| wakes(c) as f64).collect()),
        cmds.iter().map(wakes).sum::<usize>() as f64 / cmds.len() as f64
    );
    let lat = median(cmds.iter().map(|c| c.latency() as f64).collect());
    println!("latency p50 {:.1} µs", lat / 1e3);
    println!("median time per step (µs from the previous step; step missing: —):");
    let steps: Vec<Vec<Option<u64>>> = cmds.iter().map(|c| c.steps(READ_STEPS)).collect();
    for (k, (ev, what)) in READ_STEPS.iter().enumerate().skip(1) {
        let d: Vec<f64> = steps
            .iter()
            .filter_map(|s| Some(s[k]?.saturating_sub(s[..k].iter().rev().find_map(|x| *x)?)))
            .map(|x| x as f64)
            .collect();
        if d.is_empty() {
            println!("  {:>8} {:<28} {what}", "—", ev.name());
        } else {
            println!("  {:>8.1} {:<28} {what}", median(d) / 1e3, ev.name());
        }
    }
    // The command whose latency is the median: its whole timeline.
    let mut by_lat: Vec<&Cmd> = cmds.iter().collect();
    by_lat.sort_by_key(|c| c.latency());
    let c = by_lat[by_lat.len() / 2];
    println!(
        "timeline of the median command ({:.1} µs):",
        c.latency() as f64 / 1e3
    );
    let t0 = c.events[0].ns;
    let mut i = 0;
    while i < c.events.len() {
        let e = c.events[i];
        let mut n = 1;
        while i + n < c.events.len()
            && c.events[i + n].ev == e.ev
            && c.events[i + n].thread == e.thread
        {
            n += 1;
        }
        let last = c.events[i + n - 1].ns;
        let times = if n > 1 {
            format!(" ×{n} (to +{:.1})", (last - t0) as f64 / 1e3)
        } else {
            String::new()
        };
        println!(
            "  +{:>7.1} µs  {:<16} {}{times}",
            (e.ns - t0) as f64 / 1e3,
            t.thread(e.thread),
            e.ev.name()
        );
        i += n;
    }
}

/// Record the events of `f` (a QD1 workload); ring sized for `commands` commands.
pub fn record(commands: usize, f: impl FnOnce() -> super::raw::Res<()>) -> super::raw::Res<Trace> {
    probe::start(commands.saturating_mul(400).max(4096));
    let r = f();
    let t = probe::stop();
    r.map(|()| t)
}
