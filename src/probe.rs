//! Event probes for latency breakdowns: where one NVMe command or DMA transfer spends its time,
//! counted and time-stamped at the hand-offs between threads (docs/bench.md "Where the
//! remaining gap goes").
//!
//! Off by default: a probe is one relaxed load of a flag and a not-taken branch. While a
//! recording runs ([`start`] … [`stop`]) each probe counts its event and writes one 64-bit
//! slot (event, thread, nanoseconds since [`start`]) into a ring allocated by `start`, so the
//! probed paths allocate nothing. Counting is robust to the machine's load (how many round
//! trips, wake-ups and TLPs a command takes); the time stamps are not, and say only in which
//! order and on which thread things happened.
//!
//! This module is a leaf: it imports only `std`, and every layer may use it.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

/// What happened. The names say on which side and in which step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Ev {
    /// NVMe driver: an SQ tail doorbell write is sent (commands become visible).
    DrvSqDoorbell,
    /// NVMe driver: a CQ head doorbell write is sent.
    DrvCqDoorbell,
    /// NVMe driver: starts waiting on the interrupt eventfd.
    DrvIrqWait,
    /// NVMe driver: the eventfd wait returned.
    DrvIrqWake,
    /// NVMe driver: a completion entry was reaped.
    DrvReaped,
    /// Host: a TLP handed to the link.
    HostTlpOut,
    /// Host: a TLP arrived from the link.
    HostTlpIn,
    /// A link thread goes to sleep in the kernel (socket, eventfd).
    LinkSleep,
    /// A link thread woke up.
    LinkWake,
    /// A frame (or GSO run) left through the port; counted once per send call.
    FrameOut,
    /// A frame arrived at the port.
    FrameIn,
    /// Endpoint: a TLP from the host is handled.
    EpTlpIn,
    /// Endpoint: a TLP queued for the host (completion, DMA request or write, MSI-X).
    EpTlpOut,
    /// NVMe controller: an SQ tail doorbell (register file, TLP thread).
    NvmeSqDoorbell,
    /// NVMe controller: a CQ head doorbell.
    NvmeCqDoorbell,
    /// NVMe worker: waits on its condition variable for work.
    WorkerWait,
    /// NVMe worker: woke from that wait.
    WorkerWake,
    /// NVMe controller: a submission-queue fetch is started.
    NvmeFetch,
    /// Device DMA read queued for the TLP thread.
    DmaReadQueued,
    /// A Memory Read request emitted by the requester.
    DmaMrd,
    /// A completion for a device DMA read arrived.
    DmaCpl,
    /// A device DMA read is complete (TLP thread).
    DmaReadDone,
    /// The device thread waiting for a DMA read woke up.
    DmaReadWoken,
    /// A posted DMA write TLP queued.
    DmaMwr,
    /// An MSI-X message queued.
    Msi,
    /// A device thread woke the thread that drains the outbound queue.
    OutboundWake,
}

/// Number of event kinds.
pub const EVENTS: usize = Ev::OutboundWake as usize + 1;

impl Ev {
    /// Every event kind, in order.
    pub const ALL: [Ev; EVENTS] = [
        Ev::DrvSqDoorbell,
        Ev::DrvCqDoorbell,
        Ev::DrvIrqWait,
        Ev::DrvIrqWake,
        Ev::DrvReaped,
        Ev::HostTlpOut,
        Ev::HostTlpIn,
        Ev::LinkSleep,
        Ev::LinkWake,
        Ev::FrameOut,
        Ev::FrameIn,
        Ev::EpTlpIn,
        Ev::EpTlpOut,
        Ev::NvmeSqDoorbell,
        Ev::NvmeCqDoorbell,
        Ev::WorkerWait,
        Ev::WorkerWake,
        Ev::NvmeFetch,
        Ev::DmaReadQueued,
        Ev::DmaMrd,
        Ev::DmaCpl,
        Ev::DmaReadDone,
        Ev::DmaReadWoken,
        Ev::DmaMwr,
        Ev::Msi,
        Ev::OutboundWake,
    ];

    /// The event's name as the reports print it.
    pub fn name(self) -> &'static str {
        match self {
            Ev::DrvSqDoorbell => "driver: SQ doorbell sent",
            Ev::DrvCqDoorbell => "driver: CQ doorbell sent",
            Ev::DrvIrqWait => "driver: waits for MSI-X",
            Ev::DrvIrqWake => "driver: woken by MSI-X",
            Ev::DrvReaped => "driver: completion reaped",
            Ev::HostTlpOut => "host: TLP to link",
            Ev::HostTlpIn => "host: TLP from link",
            Ev::LinkSleep => "link thread sleeps",
            Ev::LinkWake => "link thread wakes",
            Ev::FrameOut => "frame(s) sent",
            Ev::FrameIn => "frame received",
            Ev::EpTlpIn => "endpoint: TLP in",
            Ev::EpTlpOut => "endpoint: TLP out",
            Ev::NvmeSqDoorbell => "nvme: SQ doorbell",
            Ev::NvmeCqDoorbell => "nvme: CQ doorbell",
            Ev::WorkerWait => "nvme worker sleeps",
            Ev::WorkerWake => "nvme worker wakes",
            Ev::NvmeFetch => "nvme: SQ fetch started",
            Ev::DmaReadQueued => "DMA read queued",
            Ev::DmaMrd => "DMA MRd emitted",
            Ev::DmaCpl => "DMA CplD in",
            Ev::DmaReadDone => "DMA read done",
            Ev::DmaReadWoken => "DMA reader wakes",
            Ev::DmaMwr => "DMA MWr queued",
            Ev::Msi => "MSI-X queued",
            Ev::OutboundWake => "outbound wake-up",
        }
    }
}

static ON: AtomicBool = AtomicBool::new(false);
static COUNTS: [AtomicU64; EVENTS] = [const { AtomicU64::new(0) }; EVENTS];
static POS: AtomicUsize = AtomicUsize::new(0);
static SLOTS: OnceLock<Box<[AtomicU64]>> = OnceLock::new();
/// The clock's origin (first [`start`]) and where the running recording began on it.
static EPOCH: OnceLock<Instant> = OnceLock::new();
static START_NS: AtomicU64 = AtomicU64::new(0);
static THREADS: Mutex<Vec<String>> = Mutex::new(Vec::new());
static NEXT_THREAD: AtomicUsize = AtomicUsize::new(1);

thread_local! {
    /// This thread's number in [`THREADS`] (0: not yet named).
    static TID: Cell<u8> = const { Cell::new(0) };
}

/// Record `ev` (a no-op unless a recording runs).
#[inline]
pub fn hit(ev: Ev) {
    if ON.load(Ordering::Relaxed) {
        record(ev);
    }
}

#[cold]
fn record(ev: Ev) {
    COUNTS[ev as usize].fetch_add(1, Ordering::Relaxed);
    let (Some(slots), Some(epoch)) = (SLOTS.get(), EPOCH.get()) else {
        return;
    };
    let i = POS.fetch_add(1, Ordering::Relaxed);
    if i >= slots.len() {
        return;
    }
    let now = epoch.elapsed().as_nanos() as u64;
    let ns = now.saturating_sub(START_NS.load(Ordering::Relaxed)) & ((1 << 48) - 1);
    let tid = thread_id();
    slots[i].store(
        (u64::from(ev as u8) << 56) | (u64::from(tid) << 48) | ns,
        Ordering::Relaxed,
    );
}

fn thread_id() -> u8 {
    TID.with(|t| {
        if t.get() == 0 {
            let n = NEXT_THREAD.fetch_add(1, Ordering::Relaxed).min(255) as u8;
            let name = std::thread::current()
                .name()
                .map_or_else(|| format!("thread-{n}"), str::to_owned);
            let mut names = THREADS.lock().unwrap_or_else(|e| e.into_inner());
            if names.len() < usize::from(n) {
                names.resize(usize::from(n), String::new());
            }
            names[usize::from(n) - 1] = name;
            t.set(n);
        }
        t.get()
    })
}

/// Start a recording of up to `capacity` time-stamped events (counts are kept beyond it);
/// counters and the ring start from zero. One recording at a time per process; the ring is
/// allocated by the first call and keeps that capacity.
pub fn start(capacity: usize) {
    ON.store(false, Ordering::SeqCst);
    let slots = SLOTS.get_or_init(|| (0..capacity).map(|_| AtomicU64::new(0)).collect());
    for c in &COUNTS {
        c.store(0, Ordering::Relaxed);
    }
    for s in slots.iter() {
        s.store(u64::MAX, Ordering::Relaxed);
    }
    POS.store(0, Ordering::SeqCst);
    let epoch = EPOCH.get_or_init(Instant::now);
    START_NS.store(epoch.elapsed().as_nanos() as u64, Ordering::SeqCst);
    ON.store(true, Ordering::SeqCst);
}

/// Stop recording and return what was recorded.
pub fn stop() -> Trace {
    ON.store(false, Ordering::SeqCst);
    let mut counts = [0u64; EVENTS];
    for (c, a) in counts.iter_mut().zip(&COUNTS) {
        *c = a.load(Ordering::Relaxed);
    }
    let n = POS.load(Ordering::SeqCst);
    let mut events = Vec::new();
    if let Some(slots) = SLOTS.get() {
        for s in slots.iter().take(n.min(slots.len())) {
            let v = s.load(Ordering::Relaxed);
            let ev = (v >> 56) as usize;
            if ev < EVENTS {
                events.push(Event {
                    ev: Ev::ALL[ev],
                    thread: ((v >> 48) & 0xff) as u8,
                    ns: v & ((1 << 48) - 1),
                });
            }
        }
    }
    // Slots are claimed in order but written a moment later: order by time.
    events.sort_by_key(|e| e.ns);
    let threads = THREADS.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Trace {
        counts,
        events,
        threads,
        dropped: n.saturating_sub(SLOTS.get().map_or(0, |s| s.len())),
    }
}

/// One recorded event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    /// What.
    pub ev: Ev,
    /// Which thread (1-based index into [`Trace::threads`]).
    pub thread: u8,
    /// Nanoseconds since [`start`].
    pub ns: u64,
}

/// A finished recording.
#[derive(Debug, Clone)]
pub struct Trace {
    /// How often each event happened (by `Ev as usize`), including past the ring's end.
    pub counts: [u64; EVENTS],
    /// The time-stamped events, oldest first.
    pub events: Vec<Event>,
    /// Thread names, by thread number − 1.
    pub threads: Vec<String>,
    /// Events that found the ring full.
    pub dropped: usize,
}

impl Trace {
    /// How often `ev` happened.
    pub fn count(&self, ev: Ev) -> u64 {
        self.counts[ev as usize]
    }

    /// The name of thread `t`.
    pub fn thread(&self, t: u8) -> &str {
        usize::from(t)
            .checked_sub(1)
            .and_then(|i| self.threads.get(i))
            .map_or("?", String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_counts_and_order_only_while_on() {
        hit(Ev::Msi);
        start(64);
        hit(Ev::DmaMrd);
        hit(Ev::DmaCpl);
        hit(Ev::DmaCpl);
        let t = stop();
        hit(Ev::DmaCpl);
        assert_eq!(t.count(Ev::Msi), 0, "off before start");
        assert_eq!(t.count(Ev::DmaMrd), 1);
        assert_eq!(t.count(Ev::DmaCpl), 2, "off after stop");
        let evs: Vec<Ev> = t.events.iter().map(|e| e.ev).collect();
        assert_eq!(evs, vec![Ev::DmaMrd, Ev::DmaCpl, Ev::DmaCpl]);
        assert!(t.events.windows(2).all(|w| w[0].ns <= w[1].ns));
        assert!(!t.thread(t.events[0].thread).is_empty());
    }
}
