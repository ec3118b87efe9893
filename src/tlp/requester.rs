//! The requester of non-posted transactions, shared by the host's root port and the
//! appliance's functions: tag allocation (PCIe Base 6.x §2.2.6.2, 5-, 8- and 10-bit tags),
//! outstanding requests, completion checking and reassembly (§2.2.9; §2.3.1.1 Byte Count and
//! Lower Address), the Completion Timeout (§2.8) and link-down failure, plus [`Reads`], which
//! splits memory reads of any length at Max_Read_Request_Size and 4 KiB (§2.2.7) into requests
//! issued as tags allow.
//!
//! Sans-I/O with explicit time (quinn-proto shape): nothing here reads a clock, sends a TLP or
//! blocks. [`Requester::start`] hands out a tag and records the request's deadline,
//! [`Requester::on_completion`] says where the bytes of a completion belong,
//! [`Requester::poll_timeout`] / [`Requester::handle_timeout`] expire requests, and
//! [`Requester::link_down`] fails every outstanding request at once — the surprise-down
//! behaviour of a real root port or requester.
//!
//! Tags. The tag space follows the Device Control registers: 5-bit tags (0..32) without
//! Extended Tag Field Enable, 8-bit (0..256) with it, and 10-bit tags with 10-Bit Tag
//! Requester Enable — 256..1024 only, since a 10-bit tag with Tag\[9:8\] = 00b must not be
//! generated (§2.2.6.2). The space may change between requests; freed tags return to their own
//! range and are reused first-freed-first (FIFO across the ranges a space allows), so a tag is
//! reused as late as possible.
//!
//! Quarantine. A request that times out (or that the caller abandons) keeps its tag out of use
//! until its late final completion arrives or [`RequesterConfig::quarantine`] passes, so a late
//! completion is never taken for a newer request's data. Link down frees tags at once: nothing
//! sent before it can still be answered.
//!
//! After construction nothing allocates.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::split::{RequestChunk, SplitRequest};
pub use super::CplStatus;

/// Highest tag value plus one (10-bit tags).
const TAGS: usize = 1024;

/// Which tags a requester may use (§2.2.6.2, Device Control / Device Control 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum TagSpace {
    /// 5-bit tags, 0..32 (Extended Tag Field Enable clear).
    Five,
    /// 8-bit tags, 0..256 (Extended Tag Field Enable set).
    #[default]
    Eight,
    /// 10-bit tags, 256..1024 (10-Bit Tag Requester Enable set; Tag\[9:8\] = 00b is not used).
    Ten,
}

impl TagSpace {
    /// The space the Device Control registers select.
    pub const fn from_device_control(
        extended_tag_enable: bool,
        ten_bit_requester_enable: bool,
    ) -> TagSpace {
        if ten_bit_requester_enable {
            TagSpace::Ten
        } else if extended_tag_enable {
            TagSpace::Eight
        } else {
            TagSpace::Five
        }
    }

    /// How many tags the space has.
    pub const fn capacity(self) -> usize {
        match self {
            TagSpace::Five => 32,
            TagSpace::Eight => 256,
            TagSpace::Ten => 768,
        }
    }

    /// Whether `tag` belongs to the space.
    pub const fn contains(self, tag: u16) -> bool {
        match self {
            TagSpace::Five => tag < 32,
            TagSpace::Eight => tag < 256,
            TagSpace::Ten => tag >= 256 && tag < 1024,
        }
    }

    /// The tag ranges (pools) the space draws from: 0 = 0..32, 1 = 32..256, 2 = 256..1024.
    const fn pools(self) -> &'static [usize] {
        match self {
            TagSpace::Five => &[0],
            TagSpace::Eight => &[0, 1],
            TagSpace::Ten => &[2],
        }
    }
}

/// The pool a tag returns to.
const fn pool_of(tag: u16) -> usize {
    if tag < 32 {
        0
    } else if tag < 256 {
        1
    } else {
        2
    }
}

/// What a request expects back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// A Memory Read of `len` bytes (1..=4096, within one 4 KiB page) at `addr`: every
    /// completion must carry the Byte Count still outstanding and the Lower Address of the
    /// next byte expected (§2.3.1.1).
    MemRead {
        /// Address of the first byte.
        addr: u64,
        /// Bytes requested.
        len: u32,
    },
    /// A configuration or I/O request (Lower Address is not checked) expecting `len` bytes
    /// of completion data: 4 for a read, 0 for a write.
    Other {
        /// Bytes of completion data expected.
        len: u32,
    },
}

impl Expect {
    fn len(self) -> u32 {
        match self {
            Expect::MemRead { len, .. } | Expect::Other { len } => len,
        }
    }
}

/// How a completion broke the rules of §2.2.9 / §2.3.1.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CplFault {
    /// Byte Count is not the number of bytes still outstanding.
    #[error("byte count does not match the bytes still expected")]
    ByteCount,
    /// Lower Address is not the address of the next byte expected.
    #[error("lower address does not match the next expected byte")]
    LowerAddress,
    /// A successful completion of a read carries no data.
    #[error("completion carries no data")]
    NoData,
}

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// No completion before the completion timeout.
    #[error("completion timeout")]
    Timeout,
    /// The link went down with the request outstanding.
    #[error("link down")]
    LinkDown,
    /// The requester was reset (Function Level Reset) with the request outstanding.
    #[error("requester reset")]
    Reset,
    /// The completer answered Unsupported Request.
    #[error("unsupported request")]
    UnsupportedRequest,
    /// The completer answered Completer Abort.
    #[error("completer abort")]
    CompleterAbort,
    /// Configuration Request Retry Status (the function is not ready yet).
    #[error("configuration retry status")]
    RetryStatus,
    /// The completion's data is poisoned (EP set, §2.7.2.2).
    #[error("poisoned completion")]
    Poisoned,
    /// A completion inconsistent with its request.
    #[error("malformed completion: {0}")]
    Malformed(CplFault),
    /// The request itself could not be built (address, length or register out of range).
    #[error("invalid request")]
    InvalidRequest,
}

/// A request could not be started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    /// No tag of the space is free (too many requests outstanding or quarantined).
    #[error("all {0} tags are in use")]
    TagsExhausted(usize),
    /// A memory read of 0 or more than 4096 bytes, or one crossing a 4 KiB boundary (§2.2.7).
    #[error("memory read of {len} bytes at {addr:#x} is not one valid request")]
    BadRead {
        /// Address.
        addr: u64,
        /// Length.
        len: u32,
    },
}

/// Requester settings.
#[derive(Debug, Clone, Copy)]
pub struct RequesterConfig {
    /// Completion timeout (§2.8).
    pub timeout: Duration,
    /// Tags to draw from.
    pub tag_space: TagSpace,
    /// How long the tag of a timed-out request stays out of use when no late completion
    /// frees it earlier. Zero frees it at once.
    pub quarantine: Duration,
}

impl RequesterConfig {
    /// Settings with completion timeout `timeout`, 8-bit tags and a quarantine of four
    /// timeouts.
    pub fn with_timeout(timeout: Duration) -> Self {
        Self {
            timeout,
            tag_space: TagSpace::Eight,
            quarantine: timeout.saturating_mul(4),
        }
    }
}

impl Default for RequesterConfig {
    fn default() -> Self {
        Self::with_timeout(Duration::from_millis(1000))
    }
}

/// Counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RequesterStats {
    /// Requests started.
    pub started: u64,
    /// Requests completed successfully.
    pub completed: u64,
    /// Requests that timed out (or that the caller abandoned after its own deadline).
    pub timeouts: u64,
    /// Requests failed by link down.
    pub link_down: u64,
    /// Requests failed by a reset of the requester.
    pub reset: u64,
    /// Requests cancelled before they were sent.
    pub cancelled: u64,
    /// Requests failed by an error completion (status, poison or malformed).
    pub error_completions: u64,
    /// Completions matching no outstanding or quarantined request.
    pub unexpected: u64,
    /// Late completions for a quarantined tag (absorbed).
    pub late: u64,
    /// Quarantined tags freed because the quarantine passed.
    pub quarantine_expired: u64,
}

#[derive(Debug, Clone, Copy)]
struct Busy<T> {
    token: T,
    deadline: Instant,
    /// Address of the first byte for a memory read; `None` for other requests.
    addr: Option<u64>,
    /// Bytes the request asked for.
    len: u32,
    /// Bytes delivered so far.
    got: u32,
}

#[derive(Debug, Clone, Copy)]
enum Slot<T> {
    Free,
    Busy(Busy<T>),
    /// Timed out or abandoned: out of use until a late final completion or `until`.
    Quarantined {
        until: Instant,
    },
}

/// What the caller does with one completion.
#[derive(Debug, PartialEq, Eq)]
pub enum CplAction<'d, T> {
    /// No request has this tag (duplicate or bogus): count and drop.
    Unexpected,
    /// A late completion of a request that timed out: dropped; its tag is free again once
    /// the final completion of the request came.
    Late,
    /// Copy `bytes` to `offset` of the request's buffer; `done` when it was the last part.
    Data {
        /// The request's token.
        token: T,
        /// Where the bytes go in the request's buffer.
        offset: u32,
        /// The useful bytes of this completion.
        bytes: &'d [u8],
        /// The request is complete (its tag is free again).
        done: bool,
    },
    /// A completion without data finished the request (a configuration or I/O write).
    Done(T),
    /// The request failed; its tag is free again.
    Failed(T, RequestError),
}

/// The completion fields the requester needs (§2.2.9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CplInfo {
    /// Tag of the request.
    pub tag: u16,
    /// Status.
    pub status: CplStatus,
    /// Bytes remaining including this completion's (0 encodes 4096).
    pub byte_count: u16,
    /// Lower 7 bits of the address of this completion's first byte.
    pub lower_address: u8,
    /// EP: the data is poisoned.
    pub poisoned: bool,
}

/// Tag pool and outstanding-request table.
#[derive(Debug)]
pub struct Requester<T: Copy> {
    slots: Box<[Slot<T>]>,
    /// Free tags per range, each with the sequence number of its release (FIFO order).
    pools: [VecDeque<(u16, u64)>; 3],
    released: u64,
    outstanding: usize,
    quarantined: usize,
    /// Lower bound of the earliest deadline of an outstanding request.
    deadline_bound: Option<Instant>,
    /// Lower bound of the earliest end of a quarantine.
    release_bound: Option<Instant>,
    cfg: RequesterConfig,
    stats: RequesterStats,
}

fn min_opt(a: Option<Instant>, b: Instant) -> Option<Instant> {
    Some(a.map_or(b, |a| a.min(b)))
}

impl<T: Copy> Requester<T> {
    /// A requester with all tags free.
    pub fn new(cfg: RequesterConfig) -> Self {
        let pool = |r: core::ops::Range<u16>| {
            let mut q = VecDeque::with_capacity(r.len());
            q.extend(r.map(|t| (t, 0)));
            q
        };
        Self {
            slots: vec![Slot::Free; TAGS].into_boxed_slice(),
            pools: [pool(0..32), pool(32..256), pool(256..1024)],
            released: 0,
            outstanding: 0,
            quarantined: 0,
            deadline_bound: None,
            release_bound: None,
            cfg,
            stats: RequesterStats::default(),
        }
    }

    /// Settings.
    pub fn config(&self) -> &RequesterConfig {
        &self.cfg
    }

    /// Change the completion timeout (applies to new requests).
    pub fn set_timeout(&mut self, t: Duration) {
        self.cfg.timeout = t;
    }

    /// Change the tag space (applies to new requests; outstanding ones keep their tags).
    pub fn set_tag_space(&mut self, space: TagSpace) {
        self.cfg.tag_space = space;
    }

    /// Counters.
    pub fn stats(&self) -> RequesterStats {
        self.stats
    }

    /// Requests outstanding.
    pub fn outstanding(&self) -> usize {
        self.outstanding
    }

    /// Tags held by quarantine.
    pub fn quarantined(&self) -> usize {
        self.quarantined
    }

    /// Free tags in the current space.
    pub fn available(&self) -> usize {
        self.cfg
            .tag_space
            .pools()
            .iter()
            .map(|&p| self.pools[p].len())
            .sum()
    }

    /// Start a non-posted request. Returns the tag to put in the TLP.
    pub fn start(&mut self, now: Instant, expect: Expect, token: T) -> Result<u16, StartError> {
        self.start_with(now, expect, |_| token)
    }

    /// [`Requester::start`] with the tag itself as the token.
    pub fn start_tagged(&mut self, now: Instant, expect: Expect) -> Result<u16, StartError>
    where
        T: From<u16>,
    {
        self.start_with(now, expect, T::from)
    }

    fn start_with(
        &mut self,
        now: Instant,
        expect: Expect,
        token: impl FnOnce(u16) -> T,
    ) -> Result<u16, StartError> {
        let addr = match expect {
            Expect::MemRead { addr, len } => {
                let page_left = 4096 - (addr & 0xfff);
                if len == 0 || u64::from(len) > page_left {
                    return Err(StartError::BadRead { addr, len });
                }
                Some(addr)
            }
            Expect::Other { .. } => None,
        };
        if self.release_bound.is_some_and(|b| b <= now) {
            self.release_quarantined(now);
        }
        let space = self.cfg.tag_space;
        let pool = space
            .pools()
            .iter()
            .copied()
            .filter_map(|p| self.pools[p].front().map(|&(_, seq)| (seq, p)))
            .min()
            .map(|(_, p)| p)
            .ok_or(StartError::TagsExhausted(space.capacity()))?;
        let (tag, _) = self.pools[pool]
            .pop_front()
            .ok_or(StartError::TagsExhausted(space.capacity()))?;
        let deadline = now + self.cfg.timeout;
        self.slots[usize::from(tag)] = Slot::Busy(Busy {
            token: token(tag),
            deadline,
            addr,
            len: expect.len(),
            got: 0,
        });
        self.outstanding += 1;
        self.deadline_bound = min_opt(self.deadline_bound, deadline);
        self.stats.started += 1;
        Ok(tag)
    }

    /// Return a tag to its pool.
    fn free(&mut self, tag: u16) {
        self.released += 1;
        self.slots[usize::from(tag)] = Slot::Free;
        self.pools[pool_of(tag)].push_back((tag, self.released));
    }

    /// End an outstanding request: its tag is free again.
    fn release(&mut self, tag: u16) -> Option<Busy<T>> {
        let Some(Slot::Busy(b)) = self.slots.get(usize::from(tag)).copied() else {
            return None;
        };
        self.outstanding -= 1;
        if self.outstanding == 0 {
            self.deadline_bound = None;
        }
        self.free(tag);
        Some(b)
    }

    /// End an outstanding request whose completion may still come: quarantine its tag.
    fn quarantine(&mut self, now: Instant, tag: u16) -> Option<Busy<T>> {
        let Some(Slot::Busy(b)) = self.slots.get(usize::from(tag)).copied() else {
            return None;
        };
        self.outstanding -= 1;
        if self.outstanding == 0 {
            self.deadline_bound = None;
        }
        if self.cfg.quarantine.is_zero() {
            self.free(tag);
        } else {
            let until = now + self.cfg.quarantine;
            self.slots[usize::from(tag)] = Slot::Quarantined { until };
            self.quarantined += 1;
            self.release_bound = min_opt(self.release_bound, until);
        }
        Some(b)
    }

    fn release_quarantined(&mut self, now: Instant) {
        let mut bound = None;
        for tag in 0..TAGS as u16 {
            if let Slot::Quarantined { until } = self.slots[usize::from(tag)] {
                if until <= now {
                    self.quarantined -= 1;
                    self.stats.quarantine_expired += 1;
                    self.free(tag);
                } else {
                    bound = min_opt(bound, until);
                }
            }
        }
        self.release_bound = bound;
    }

    /// The caller gave up on a request (its own deadline passed): the tag is quarantined.
    /// Returns the token if the request was still outstanding.
    pub fn abandon(&mut self, now: Instant, tag: u16) -> Option<T> {
        let b = self.quarantine(now, tag)?;
        self.stats.timeouts += 1;
        Some(b.token)
    }

    /// A request that was never sent (the link refused it): its tag is free at once.
    /// Returns the token if the request was still outstanding.
    pub fn cancel(&mut self, tag: u16) -> Option<T> {
        let b = self.release(tag)?;
        self.stats.cancelled += 1;
        Some(b.token)
    }

    /// A completion arrived. `data` is its payload (DW-aligned, as on the wire).
    pub fn on_completion<'d>(&mut self, cpl: CplInfo, data: &'d [u8]) -> CplAction<'d, T> {
        let b = match self.slots.get(usize::from(cpl.tag)) {
            Some(Slot::Busy(b)) => *b,
            Some(Slot::Quarantined { .. }) => {
                self.stats.late += 1;
                let skip = usize::from(cpl.lower_address & 3);
                let carried = data.len().saturating_sub(skip);
                let bc = if cpl.byte_count == 0 {
                    4096
                } else {
                    usize::from(cpl.byte_count)
                };
                // The request's last completion frees the tag: an error status, or data
                // reaching the end of Byte Count.
                if cpl.status != CplStatus::Sc || carried >= bc {
                    self.quarantined -= 1;
                    if self.quarantined == 0 {
                        self.release_bound = None;
                    }
                    self.free(cpl.tag);
                }
                return CplAction::Late;
            }
            _ => {
                self.stats.unexpected += 1;
                return CplAction::Unexpected;
            }
        };
        let fail = |r: &mut Self, e| {
            r.release(cpl.tag);
            r.stats.error_completions += 1;
            CplAction::Failed(b.token, e)
        };
        match cpl.status {
            CplStatus::Sc => {}
            CplStatus::Ur => return fail(self, RequestError::UnsupportedRequest),
            CplStatus::Ca => return fail(self, RequestError::CompleterAbort),
            CplStatus::Crs => return fail(self, RequestError::RetryStatus),
        }
        if cpl.poisoned {
            return fail(self, RequestError::Poisoned);
        }
        if b.len == 0 {
            self.release(cpl.tag);
            self.stats.completed += 1;
            return CplAction::Done(b.token);
        }
        // Byte Count counts the bytes still to come, this completion's included (§2.3.1.1);
        // the first useful byte sits at Lower Address within the first DW of the payload.
        let remaining = b.len - b.got;
        let bc = if cpl.byte_count == 0 {
            4096
        } else {
            u32::from(cpl.byte_count)
        };
        if bc != remaining {
            return fail(self, RequestError::Malformed(CplFault::ByteCount));
        }
        let skip = match b.addr {
            Some(addr) => {
                let next = addr.wrapping_add(u64::from(b.got));
                if u64::from(cpl.lower_address & 0x7f) != next & 0x7f {
                    return fail(self, RequestError::Malformed(CplFault::LowerAddress));
                }
                usize::from(cpl.lower_address & 3)
            }
            None => 0,
        };
        let useful = data.len().saturating_sub(skip).min(remaining as usize);
        if useful == 0 {
            return fail(self, RequestError::Malformed(CplFault::NoData));
        }
        let offset = b.got;
        let got = b.got + useful as u32;
        let done = got == b.len;
        if done {
            self.release(cpl.tag);
            self.stats.completed += 1;
        } else if let Slot::Busy(s) = &mut self.slots[usize::from(cpl.tag)] {
            s.got = got;
        }
        CplAction::Data {
            token: b.token,
            offset,
            bytes: &data[skip..skip + useful],
            done,
        }
    }

    /// When [`Requester::handle_timeout`] next has something to do (a request's deadline or
    /// the end of a quarantine; possibly early, never late). `None` with nothing outstanding
    /// or quarantined.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.deadline_bound, self.release_bound) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Expire every request whose deadline is at or before `now` (its tag is quarantined)
    /// and free the tags whose quarantine has passed; `f(token)` for each expired request.
    pub fn handle_timeout(&mut self, now: Instant, mut f: impl FnMut(T)) {
        if self.release_bound.is_some_and(|b| b <= now) {
            self.release_quarantined(now);
        }
        if self.deadline_bound.is_none_or(|b| b > now) {
            return;
        }
        let mut bound = None;
        for tag in 0..TAGS as u16 {
            if let Slot::Busy(b) = self.slots[usize::from(tag)] {
                if b.deadline <= now {
                    self.quarantine(now, tag);
                    self.stats.timeouts += 1;
                    f(b.token);
                } else {
                    bound = min_opt(bound, b.deadline);
                }
            }
        }
        self.deadline_bound = bound;
    }

    /// The requester was reset (Function Level Reset): every outstanding request fails and
    /// its tag is quarantined (the completer may still answer); `f(token)` for each.
    pub fn reset(&mut self, now: Instant, mut f: impl FnMut(T)) {
        for tag in 0..TAGS as u16 {
            if let Some(b) = self.quarantine(now, tag) {
                self.stats.reset += 1;
                f(b.token);
            }
        }
        self.deadline_bound = None;
    }

    /// The link went down: every outstanding request fails, every tag is free again (nothing
    /// sent before can still be answered); `f(token)` for each failed request.
    pub fn link_down(&mut self, mut f: impl FnMut(T)) {
        for tag in 0..TAGS as u16 {
            match self.slots[usize::from(tag)] {
                Slot::Busy(b) => {
                    self.release(tag);
                    self.stats.link_down += 1;
                    f(b.token);
                }
                Slot::Quarantined { .. } => {
                    self.quarantined -= 1;
                    self.free(tag);
                }
                Slot::Free => {}
            }
        }
        self.deadline_bound = None;
        self.release_bound = None;
    }
}

/// One piece of a split read, as the [`Requester`] under [`Reads`] tracks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    /// Index of the read in the [`Reads`] table.
    read: u16,
    /// Offset of the piece's first byte in the read.
    offset: u32,
}

#[derive(Debug, Clone)]
struct ReadState<J> {
    job: J,
    /// Host address of the read's first byte.
    addr: u64,
    /// The pieces not issued yet.
    split: SplitRequest,
    /// A piece taken from `split` that found no tag.
    next: Option<RequestChunk>,
    /// Pieces issued and not yet resolved.
    in_flight: u32,
    /// The read failed: its remaining completions are absorbed.
    failed: bool,
    /// Fails with a timeout if no further piece could be issued by then.
    stall_deadline: Instant,
}

impl<J> ReadState<J> {
    /// Whether pieces are left to issue.
    fn unissued(&mut self) -> bool {
        if self.next.is_none() {
            self.next = self.split.next();
        }
        self.next.is_some()
    }
}

/// The reads in progress.
#[derive(Debug)]
struct Table<J> {
    reads: Vec<Option<ReadState<J>>>,
    free: Vec<u16>,
}

impl<J: Copy> Table<J> {
    fn get(&mut self, i: u16) -> Option<&mut ReadState<J>> {
        self.reads.get_mut(usize::from(i))?.as_mut()
    }

    /// Free the slot of a read with nothing in flight and nothing left to issue.
    fn retire_if_idle(&mut self, i: u16) {
        let Some(r) = self.get(i) else { return };
        if r.in_flight == 0 && (r.failed || !r.unissued()) {
            self.reads[usize::from(i)] = None;
            self.free.push(i);
        }
    }

    /// A piece in flight failed. The read's job and the piece's address when this is the
    /// read's first failure (the caller reports it), `None` when the read had failed already.
    fn piece_failed(&mut self, p: Piece) -> Option<(J, u64)> {
        let r = self.get(p.read)?;
        r.in_flight = r.in_flight.saturating_sub(1);
        let first = !r.failed;
        r.failed = true;
        let (job, addr) = (r.job, r.addr.wrapping_add(u64::from(p.offset)));
        self.retire_if_idle(p.read);
        first.then_some((job, addr))
    }
}

/// What a completion or a timeout means for a read.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadEvent<'d, J> {
    /// No request has this tag: count and drop.
    Unexpected,
    /// A late completion of a timed-out request, or one for a read that already failed:
    /// dropped.
    Absorbed,
    /// Copy `bytes` to `offset` of the read's buffer; `done`: the read is complete and
    /// `job` will not be named again.
    Data {
        /// The read.
        job: J,
        /// Where the bytes go in the read's buffer.
        offset: u32,
        /// The bytes.
        bytes: &'d [u8],
        /// The whole read has arrived.
        done: bool,
    },
    /// The read failed at host address `addr`; `job` will not be named again.
    Failed {
        /// The read.
        job: J,
        /// Why.
        error: RequestError,
        /// Address of the piece that failed.
        addr: u64,
    },
}

/// A read could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// As many reads are in progress as the table holds.
    #[error("all {0} read slots are in use")]
    Full(usize),
    /// Max_Read_Request_Size is not a power of two in 128..=4096.
    #[error("Max Read Request Size {0} is not a power of two in 128..=4096")]
    BadMrrs(u32),
    /// A zero-length read.
    #[error("zero-length read")]
    Empty,
}

/// Memory reads of any length on top of a [`Requester`]: each read is split at
/// Max_Read_Request_Size and 4 KiB boundaries (§2.2.7) into requests issued, in submission
/// order, as tags allow; it completes when every piece has arrived and fails at the first
/// piece that fails (later completions of its other pieces are absorbed). A read that cannot
/// issue its next piece for a whole completion timeout (every tag busy or quarantined) fails
/// with [`RequestError::Timeout`].
///
/// `J` names a read for the caller (an index into its own table of buffers). Sans-I/O like
/// the requester; nothing allocates after construction.
#[derive(Debug)]
pub struct Reads<J: Copy> {
    req: Requester<Piece>,
    table: Table<J>,
    /// Reads with pieces left to issue, oldest first.
    waiting: VecDeque<u16>,
    /// Whether a slot's index is in `waiting` (a slot reused before its old entry was
    /// popped is not queued twice, so `waiting` never outgrows its capacity).
    queued: Vec<bool>,
}

impl<J: Copy> Reads<J> {
    /// A table for up to `max_reads` reads in progress (1..=65536).
    pub fn new(cfg: RequesterConfig, max_reads: usize) -> Self {
        let n = max_reads.clamp(1, 1 << 16);
        Self {
            req: Requester::new(cfg),
            table: Table {
                reads: vec![None; n],
                free: (0..n).rev().map(|i| i as u16).collect(),
            },
            waiting: VecDeque::with_capacity(n),
            queued: vec![false; n],
        }
    }

    /// Take the oldest entry of `waiting`.
    fn pop_waiting(&mut self) -> Option<u16> {
        let i = self.waiting.pop_front()?;
        self.queued[usize::from(i)] = false;
        Some(i)
    }

    fn push_waiting(&mut self, i: u16) {
        if !std::mem::replace(&mut self.queued[usize::from(i)], true) {
            self.waiting.push_back(i);
        }
    }

    /// The requester underneath (settings, counters).
    pub fn requester(&self) -> &Requester<Piece> {
        &self.req
    }

    /// Change the tag space for pieces issued from now on.
    pub fn set_tag_space(&mut self, space: TagSpace) {
        self.req.set_tag_space(space);
    }

    /// Reads in progress (queued or with pieces in flight).
    pub fn in_progress(&self) -> usize {
        self.table.reads.len() - self.table.free.len()
    }

    /// Whether another read can be submitted.
    pub fn has_room(&self) -> bool {
        !self.table.free.is_empty()
    }

    /// Queue a read of `len` bytes at `addr`, in requests of at most `mrrs` bytes. Its pieces
    /// go out from [`Reads::poll_transmit`].
    pub fn submit(
        &mut self,
        now: Instant,
        job: J,
        addr: u64,
        len: u32,
        mrrs: u32,
    ) -> Result<(), SubmitError> {
        if len == 0 {
            return Err(SubmitError::Empty);
        }
        let split = SplitRequest::new(addr, u64::from(len), mrrs)
            .map_err(|_| SubmitError::BadMrrs(mrrs))?;
        let cap = self.table.reads.len();
        let i = self.table.free.pop().ok_or(SubmitError::Full(cap))?;
        self.table.reads[usize::from(i)] = Some(ReadState {
            job,
            addr,
            split,
            next: None,
            in_flight: 0,
            failed: false,
            stall_deadline: now + self.req.config().timeout,
        });
        self.push_waiting(i);
        Ok(())
    }

    /// Issue every piece that has a tag now, oldest read first: `emit(tag, addr, len)` sends
    /// one Memory Read request.
    pub fn poll_transmit(&mut self, now: Instant, mut emit: impl FnMut(u16, u64, u32)) {
        let timeout = self.req.config().timeout;
        while let Some(&i) = self.waiting.front() {
            if let Some(r) = self.table.get(i).filter(|r| !r.failed) {
                while r.unissued() {
                    let Some(c) = r.next else { break };
                    let piece = Piece {
                        read: i,
                        offset: c.offset,
                    };
                    let expect = Expect::MemRead {
                        addr: c.bytes.address,
                        len: c.bytes.len,
                    };
                    match self.req.start(now, expect, piece) {
                        Ok(tag) => {
                            r.next = None;
                            r.in_flight += 1;
                            r.stall_deadline = now + timeout;
                            emit(tag, c.bytes.address, c.bytes.len);
                        }
                        // Out of tags: this read, and every later one, waits for a tag.
                        Err(_) => return,
                    }
                }
            }
            self.pop_waiting();
        }
    }

    /// A completion arrived for this requester.
    pub fn on_completion<'d>(&mut self, cpl: CplInfo, data: &'d [u8]) -> ReadEvent<'d, J> {
        let (p, error) = match self.req.on_completion(cpl, data) {
            CplAction::Unexpected => return ReadEvent::Unexpected,
            CplAction::Late => return ReadEvent::Absorbed,
            CplAction::Data {
                token,
                offset,
                bytes,
                done,
            } => {
                let Some(r) = self.table.get(token.read) else {
                    return ReadEvent::Absorbed;
                };
                if done {
                    r.in_flight -= 1;
                }
                let (failed, job) = (r.failed, r.job);
                let finished = done && !failed && r.in_flight == 0 && !r.unissued();
                if done {
                    self.table.retire_if_idle(token.read);
                }
                if failed {
                    return ReadEvent::Absorbed;
                }
                return ReadEvent::Data {
                    job,
                    offset: token.offset + offset,
                    bytes,
                    done: finished,
                };
            }
            // Reads never start a request without data.
            CplAction::Done(p) => (p, RequestError::Malformed(CplFault::NoData)),
            CplAction::Failed(p, e) => (p, e),
        };
        match self.table.piece_failed(p) {
            Some((job, addr)) => ReadEvent::Failed { job, error, addr },
            None => ReadEvent::Absorbed,
        }
    }

    /// When [`Reads::handle_timeout`] next has something to do (possibly early, never late).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let stall = self
            .waiting
            .iter()
            .filter_map(|&i| self.table.reads[usize::from(i)].as_ref())
            .map(|r| r.stall_deadline)
            .min();
        match (self.req.poll_timeout(), stall) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Expire timed-out pieces, and reads that found no tag for a whole completion timeout;
    /// `f(job, addr)` for each read that fails (with [`RequestError::Timeout`]).
    pub fn handle_timeout(&mut self, now: Instant, mut f: impl FnMut(J, u64)) {
        let table = &mut self.table;
        self.req.handle_timeout(now, |p| {
            if let Some((job, addr)) = table.piece_failed(p) {
                f(job, addr);
            }
        });
        for _ in 0..self.waiting.len() {
            let Some(i) = self.pop_waiting() else {
                break;
            };
            let Some(r) = self.table.get(i) else { continue };
            if r.failed {
                self.table.retire_if_idle(i);
                continue;
            }
            if r.stall_deadline <= now && r.unissued() {
                r.failed = true;
                let addr = r.next.map_or(r.addr, |c| c.bytes.address);
                let job = r.job;
                self.table.retire_if_idle(i);
                f(job, addr);
                continue;
            }
            self.push_waiting(i);
        }
    }

    /// The requester was reset (Function Level Reset): every read fails, `f(job)` for each
    /// not failed yet; tags in flight are quarantined (the completer may still answer).
    pub fn reset(&mut self, now: Instant, f: impl FnMut(J)) {
        self.req.reset(now, |_| {});
        self.forget_all(f);
    }

    /// The link went down: every read fails, `f(job)` for each not failed yet; every tag is
    /// free again.
    pub fn link_down(&mut self, f: impl FnMut(J)) {
        self.req.link_down(|_| {});
        self.forget_all(f);
    }

    fn forget_all(&mut self, mut f: impl FnMut(J)) {
        while self.pop_waiting().is_some() {}
        for i in 0..self.table.reads.len() {
            if let Some(r) = self.table.reads[i].take() {
                self.table.free.push(i as u16);
                if !r.failed {
                    f(r.job);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ok(tag: u16, byte_count: u16, lower_address: u8) -> CplInfo {
        CplInfo {
            tag,
            status: CplStatus::Sc,
            byte_count,
            lower_address,
            poisoned: false,
        }
    }

    fn read(addr: u64, len: u32) -> Expect {
        Expect::MemRead { addr, len }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn read_split_at_rcb_is_reassembled_in_order() {
        let t0 = Instant::now();
        let mut r = Requester::new(RequesterConfig::default());
        // 200 bytes from address 0x1038: the first completion ends at the 64-byte RCB (0x1040).
        let tag = r.start(t0, read(0x1038, 200), 7usize).unwrap();
        let first = [0xaau8; 8];
        match r.on_completion(ok(tag, 200, 0x38), &first) {
            CplAction::Data {
                token: 7,
                offset: 0,
                bytes,
                done: false,
            } => assert_eq!(bytes.len(), 8),
            other => panic!("{other:?}"),
        }
        let rest = [0xbbu8; 192];
        match r.on_completion(ok(tag, 192, 0x40), &rest) {
            CplAction::Data {
                offset: 8,
                bytes,
                done: true,
                ..
            } => assert_eq!(bytes.len(), 192),
            other => panic!("{other:?}"),
        }
        assert_eq!(r.outstanding(), 0);
        assert_eq!(
            r.on_completion(ok(tag, 4, 0), &[0; 4]),
            CplAction::Unexpected
        );
    }

    #[test]
    fn unaligned_small_read_skips_lower_address_bytes() {
        let t0 = Instant::now();
        let mut r = Requester::new(RequesterConfig::default());
        let tag = r.start(t0, read(0x2006, 2), ()).unwrap();
        match r.on_completion(ok(tag, 2, 0x06), &[1, 2, 3, 4]) {
            CplAction::Data { bytes, done, .. } => {
                assert_eq!(bytes, &[3, 4]);
                assert!(done);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn config_completions_ignore_lower_address() {
        let t0 = Instant::now();
        let mut r = Requester::new(RequesterConfig::default());
        let tag = r.start(t0, Expect::Other { len: 4 }, ()).unwrap();
        // Lower Address is reserved for configuration completions: not checked, not skipped.
        match r.on_completion(ok(tag, 4, 0x13), &[1, 2, 3, 4]) {
            CplAction::Data { bytes, done, .. } => {
                assert_eq!(bytes, &[1, 2, 3, 4]);
                assert!(done);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn timeout_quarantines_until_the_late_completion() {
        let t0 = Instant::now();
        let mut r = Requester::new(RequesterConfig {
            timeout: ms(10),
            tag_space: TagSpace::Five,
            quarantine: ms(1000),
        });
        let a = r.start(t0, read(0, 4), 1).unwrap();
        let _b = r.start(t0 + ms(5), read(0, 4), 2).unwrap();
        assert_eq!(r.poll_timeout(), Some(t0 + ms(10)));
        let mut expired = vec![];
        r.handle_timeout(t0 + ms(9), |t| expired.push(t));
        assert!(expired.is_empty());
        r.handle_timeout(t0 + ms(10), |t| expired.push(t));
        assert_eq!(expired, vec![1]);
        assert_eq!((r.outstanding(), r.quarantined()), (1, 1));
        assert_eq!(r.available(), 30, "the timed-out tag is not reusable yet");
        // The late completion is absorbed, not delivered, and frees the tag.
        assert_eq!(r.on_completion(ok(a, 4, 0), &[0; 4]), CplAction::Late);
        assert_eq!((r.quarantined(), r.available()), (0, 31));
        // A second copy of it is just unexpected.
        assert_eq!(r.on_completion(ok(a, 4, 0), &[0; 4]), CplAction::Unexpected);
        let mut down = vec![];
        r.link_down(|t| down.push(t));
        assert_eq!(down, vec![2]);
        assert_eq!(r.poll_timeout(), None);
        let s = r.stats();
        assert_eq!(
            (s.timeouts, s.link_down, s.late, s.unexpected),
            (1, 1, 1, 1)
        );
    }

    #[test]
    fn a_quarantined_split_read_frees_its_tag_only_at_its_last_completion() {
        let t0 = Instant::now();
        let mut r = Requester::new(RequesterConfig {
            timeout: ms(10),
            tag_space: TagSpace::Five,
            quarantine: ms(1000),
        });
        let tag = r.start(t0, read(0x1000, 128), ()).unwrap();
        r.handle_timeout(t0 + ms(10), |_| {});
        assert_eq!(r.on_completion(ok(tag, 128, 0), &[0; 64]), CplAction::Late);
        assert_eq!(r.quarantined(), 1, "more of the late read is still to come");
        assert_eq!(
            r.on_completion(ok(tag, 64, 0x40), &[0; 64]),
            CplAction::Late
        );
        assert_eq!(r.quarantined(), 0);
    }

    #[test]
    fn quarantine_passes_without_a_late_completion() {
        let t0 = Instant::now();
        let mut r = Requester::new(RequesterConfig {
            timeout: ms(10),
            tag_space: TagSpace::Five,
            quarantine: ms(40),
        });
        let tags: Vec<u16> = (0..32)
            .map(|i| r.start(t0, read(0, 4), i).unwrap())
            .collect();
        r.handle_timeout(t0 + ms(10), |_| {});
        assert_eq!(r.quarantined(), 32);
        assert_eq!(
            r.start(t0 + ms(49), read(0, 4), 99),
            Err(StartError::TagsExhausted(32))
        );
        assert_eq!(r.poll_timeout(), Some(t0 + ms(50)));
        // `start` itself frees what has passed quarantine (callers need not poll).
        let t = r.start(t0 + ms(50), read(0, 4), 100).unwrap();
        assert_eq!(t, tags[0], "oldest freed first");
        assert_eq!(r.stats().quarantine_expired, 32);
    }

    #[test]
    fn abandon_quarantines_and_cancel_frees() {
        let t0 = Instant::now();
        let mut r = Requester::new(RequesterConfig {
            tag_space: TagSpace::Five,
            ..RequesterConfig::default()
        });
        let a = r.start(t0, read(0, 4), 'a').unwrap();
        let b = r.start(t0, read(0, 4), 'b').unwrap();
        assert_eq!(r.abandon(t0, a), Some('a'));
        assert_eq!(r.abandon(t0, a), None);
        assert_eq!(r.cancel(b), Some('b'));
        assert_eq!(
            (r.outstanding(), r.quarantined(), r.available()),
            (0, 1, 31)
        );
    }

    #[test]
    fn reset_quarantines_every_outstanding_request() {
        let t0 = Instant::now();
        let mut r = Requester::new(RequesterConfig::default());
        for i in 0..3 {
            r.start(t0, read(0, 4), i).unwrap();
        }
        let mut failed = vec![];
        r.reset(t0, |t| failed.push(t));
        assert_eq!(failed, vec![0, 1, 2]);
        assert_eq!((r.outstanding(), r.quarantined()), (0, 3));
        r.link_down(|_| panic!("nothing outstanding"));
        assert_eq!(r.quarantined(), 0, "link down frees quarantined tags");
    }

    #[test]
    fn error_status_poison_and_malformed_completions_fail() {
        let t0 = Instant::now();
        let mut r = Requester::new(RequesterConfig::default());
        let a = r.start(t0, read(0, 4), 'a').unwrap();
        let ur = CplInfo {
            status: CplStatus::Ur,
            ..ok(a, 4, 0)
        };
        assert_eq!(
            r.on_completion(ur, &[]),
            CplAction::Failed('a', RequestError::UnsupportedRequest)
        );
        let b = r.start(t0, read(0, 8), 'b').unwrap();
        assert_eq!(
            r.on_completion(ok(b, 16, 0), &[0; 16]),
            CplAction::Failed('b', RequestError::Malformed(CplFault::ByteCount))
        );
        let c = r.start(t0, read(0x40, 8), 'c').unwrap();
        assert_eq!(
            r.on_completion(ok(c, 8, 0x44), &[0; 8]),
            CplAction::Failed('c', RequestError::Malformed(CplFault::LowerAddress))
        );
        let d = r.start(t0, read(0x40, 8), 'd').unwrap();
        assert_eq!(
            r.on_completion(ok(d, 8, 0x40), &[]),
            CplAction::Failed('d', RequestError::Malformed(CplFault::NoData))
        );
        let e = r.start(t0, read(0x40, 8), 'e').unwrap();
        let poisoned = CplInfo {
            poisoned: true,
            ..ok(e, 8, 0x40)
        };
        assert_eq!(
            r.on_completion(poisoned, &[0; 8]),
            CplAction::Failed('e', RequestError::Poisoned)
        );
        let w = r.start(t0, Expect::Other { len: 0 }, 'w').unwrap();
        assert_eq!(r.on_completion(ok(w, 4, 0), &[]), CplAction::Done('w'));
        assert_eq!(r.outstanding(), 0);
        assert_eq!(r.stats().error_completions, 5);
    }

    #[test]
    fn bad_memory_reads_are_refused() {
        let t0 = Instant::now();
        let mut r = Requester::<()>::new(RequesterConfig::default());
        for (addr, len) in [(0, 0), (0, 4097), (0xff8, 16)] {
            assert_eq!(
                r.start(t0, read(addr, len), ()),
                Err(StartError::BadRead { addr, len })
            );
        }
        assert!(r.start(t0, read(0, 4096), ()).is_ok());
        // Byte Count 0 encodes 4096.
        let t = r.start(t0, read(0x3000, 4096), ()).unwrap();
        assert!(matches!(
            r.on_completion(ok(t, 0, 0), &[0; 4096]),
            CplAction::Data { done: true, .. }
        ));
    }

    #[test]
    fn tag_spaces_follow_device_control() {
        let t0 = Instant::now();
        for (ext, ten, space, lo, hi) in [
            (false, false, TagSpace::Five, 0, 32),
            (true, false, TagSpace::Eight, 0, 256),
            (true, true, TagSpace::Ten, 256, 1024),
            (false, true, TagSpace::Ten, 256, 1024),
        ] {
            assert_eq!(TagSpace::from_device_control(ext, ten), space);
            let mut r = Requester::new(RequesterConfig {
                tag_space: space,
                ..RequesterConfig::default()
            });
            let mut seen = std::collections::HashSet::new();
            for i in 0..space.capacity() {
                let t = r.start(t0, Expect::Other { len: 0 }, i).unwrap();
                assert!(
                    (lo..hi).contains(&t) && space.contains(t),
                    "{space:?} gave {t}"
                );
                assert!(seen.insert(t), "tag {t} handed out twice");
            }
            assert_eq!(
                r.start(t0, Expect::Other { len: 0 }, 0),
                Err(StartError::TagsExhausted(space.capacity()))
            );
        }
    }

    #[test]
    fn tags_run_out_and_come_back_fifo() {
        let t0 = Instant::now();
        let mut r = Requester::new(RequesterConfig::default());
        let none = Expect::Other { len: 0 };
        let tags: Vec<u16> = (0..256).map(|i| r.start(t0, none, i).unwrap()).collect();
        assert_eq!(r.start(t0, none, 999), Err(StartError::TagsExhausted(256)));
        r.on_completion(ok(tags[3], 4, 0), &[]);
        r.on_completion(ok(tags[9], 4, 0), &[]);
        // Only the tags just released are free, in the order they were released, across
        // the 5-bit and 8-bit ranges.
        assert_eq!(r.start(t0, none, 1000), Ok(tags[3]));
        assert_eq!(r.start(t0, none, 1001), Ok(tags[9]));
        // Narrowing the space leaves outstanding tags alone; they come back to their range.
        r.set_tag_space(TagSpace::Five);
        r.on_completion(ok(200, 4, 0), &[]);
        assert_eq!(r.available(), 0, "tag 200 is not a 5-bit tag");
        r.on_completion(ok(7, 4, 0), &[]);
        assert_eq!(r.start(t0, none, 1002), Ok(7));
    }

    /// Drive `Reads` to the end, answering every request at once with completions cut at
    /// the 64-byte RCB, and return the reassembled bytes of job 0.
    fn serve_all(reads: &mut Reads<u8>, now: Instant, mem: &dyn Fn(u64) -> u8, out: &mut [u8]) {
        let mut reqs = Vec::new();
        let mut finished = false;
        while !finished {
            reqs.clear();
            reads.poll_transmit(now, |tag, addr, len| reqs.push((tag, addr, len)));
            assert!(!reqs.is_empty(), "stalled");
            for &(tag, addr, len) in &reqs {
                let mut at = addr;
                let end = addr + u64::from(len);
                while at < end {
                    let next = ((at / 64) + 1) * 64;
                    let n = (next.min(end) - at) as usize;
                    let lead = (at & 3) as usize;
                    let mut p = vec![0u8; (lead + n).div_ceil(4) * 4];
                    for (k, b) in p[lead..lead + n].iter_mut().enumerate() {
                        *b = mem(at + k as u64);
                    }
                    let info = ok(tag, (end - at) as u16, (at & 0x7f) as u8);
                    match reads.on_completion(info, &p) {
                        ReadEvent::Data {
                            job: 0,
                            offset,
                            bytes,
                            done,
                        } => {
                            out[offset as usize..offset as usize + bytes.len()]
                                .copy_from_slice(bytes);
                            finished |= done;
                        }
                        other => panic!("{other:?}"),
                    }
                    at += n as u64;
                }
            }
        }
    }

    #[test]
    fn reads_split_at_mrrs_and_4k_and_wait_for_tags() {
        let t0 = Instant::now();
        let mut reads = Reads::new(
            RequesterConfig {
                tag_space: TagSpace::Five,
                ..RequesterConfig::default()
            },
            4,
        );
        let (addr, len) = (0x1_0000_0f00u64, 65536u32);
        reads.submit(t0, 0u8, addr, len, 128).unwrap();
        let mut reqs = Vec::new();
        reads.poll_transmit(t0, |tag, a, n| reqs.push((tag, a, n)));
        assert_eq!(reqs.len(), 32, "one request per free 5-bit tag");
        for &(_, a, n) in &reqs {
            assert!(n <= 128 && a / 4096 == (a + u64::from(n) - 1) / 4096);
        }
        let mut out = vec![0u8; len as usize];
        let mem = |a: u64| (a % 251) as u8;
        // Answer the first batch, then let serve_all finish.
        for &(tag, a, n) in &reqs {
            let lead = (a & 3) as usize;
            let mut p = vec![0u8; (lead + n as usize).div_ceil(4) * 4];
            for k in 0..n as usize {
                p[lead + k] = mem(a + k as u64);
            }
            match reads.on_completion(ok(tag, n as u16, (a & 0x7f) as u8), &p) {
                ReadEvent::Data {
                    offset,
                    bytes,
                    done,
                    ..
                } => {
                    assert!(!done);
                    out[offset as usize..][..bytes.len()].copy_from_slice(bytes);
                }
                other => panic!("{other:?}"),
            }
        }
        serve_all(&mut reads, t0, &mem, &mut out);
        assert!(out
            .iter()
            .enumerate()
            .all(|(i, &b)| b == mem(addr + i as u64)));
        assert_eq!(reads.in_progress(), 0);
        assert_eq!(reads.requester().outstanding(), 0);
    }

    #[test]
    fn a_failed_piece_fails_the_read_once_and_absorbs_the_rest() {
        let t0 = Instant::now();
        let mut reads = Reads::new(RequesterConfig::default(), 2);
        reads.submit(t0, 5u8, 0x2000, 512, 128).unwrap();
        let mut reqs = Vec::new();
        reads.poll_transmit(t0, |tag, a, n| reqs.push((tag, a, n)));
        assert_eq!(reqs.len(), 4);
        let (t1, a1, _) = reqs[1];
        let ca = CplInfo {
            status: CplStatus::Ca,
            ..ok(t1, 128, (a1 & 0x7f) as u8)
        };
        assert_eq!(
            reads.on_completion(ca, &[]),
            ReadEvent::Failed {
                job: 5,
                error: RequestError::CompleterAbort,
                addr: 0x2080
            }
        );
        assert_eq!(
            reads.in_progress(),
            1,
            "pieces still in flight hold the slot"
        );
        for &(tag, a, n) in [reqs[0], reqs[2], reqs[3]].iter() {
            let e = reads.on_completion(ok(tag, n as u16, (a & 0x7f) as u8), &[0; 128]);
            assert_eq!(e, ReadEvent::Absorbed);
        }
        assert_eq!(reads.in_progress(), 0);
        assert_eq!(reads.requester().outstanding(), 0);
    }

    #[test]
    fn reads_time_out_by_piece_and_by_stall() {
        let t0 = Instant::now();
        let mut reads = Reads::new(
            RequesterConfig {
                timeout: ms(100),
                tag_space: TagSpace::Five,
                quarantine: ms(1000),
            },
            4,
        );
        // Job 1 takes every tag; job 2 finds none.
        reads.submit(t0, 1u8, 0, 32 * 128, 128).unwrap();
        let mut n = 0;
        reads.poll_transmit(t0, |_, _, _| n += 1);
        assert_eq!(n, 32);
        reads.submit(t0 + ms(10), 2u8, 0x10_0000, 128, 128).unwrap();
        reads.poll_transmit(t0 + ms(10), |_, _, _| panic!("no tag is free"));
        assert_eq!(reads.poll_timeout(), Some(t0 + ms(100)));
        let mut failed = vec![];
        reads.handle_timeout(t0 + ms(100), |j, a| failed.push((j, a)));
        // Job 1's pieces all expire (one failure reported); their tags are quarantined, so
        // job 2 still has none.
        assert_eq!(failed, vec![(1, 0)]);
        reads.poll_transmit(t0 + ms(100), |_, _, _| panic!("no tag is free"));
        reads.handle_timeout(t0 + ms(109), |j, a| failed.push((j, a)));
        assert_eq!(failed.len(), 1);
        reads.handle_timeout(t0 + ms(110), |j, a| failed.push((j, a)));
        assert_eq!(failed, vec![(1, 0), (2, 0x10_0000)]);
        assert_eq!(reads.in_progress(), 0);
    }

    #[test]
    fn reset_and_link_down_fail_every_read() {
        let t0 = Instant::now();
        let mut reads = Reads::new(RequesterConfig::default(), 4);
        reads.submit(t0, 1u8, 0, 256, 128).unwrap();
        reads.submit(t0, 2u8, 0x1000, 128, 128).unwrap();
        let mut reqs = Vec::new();
        reads.poll_transmit(t0, |tag, a, n| reqs.push((tag, a, n)));
        let mut failed = vec![];
        reads.reset(t0, |j| failed.push(j));
        assert_eq!(failed, vec![1, 2]);
        assert_eq!(reads.requester().quarantined(), 3);
        let (tag, a, n) = reqs[0];
        assert_eq!(
            reads.on_completion(ok(tag, n as u16, (a & 0x7f) as u8), &[0; 128]),
            ReadEvent::Absorbed
        );
        reads.submit(t0, 3u8, 0, 128, 128).unwrap();
        reads.poll_transmit(t0, |_, _, _| {});
        failed.clear();
        reads.link_down(|j| failed.push(j));
        assert_eq!(failed, vec![3]);
        assert_eq!(reads.requester().quarantined(), 0);
        assert_eq!(reads.requester().outstanding(), 0);
        assert!(reads.has_room());
    }

    proptest! {
        /// A read split into any number of in-order completions, with any garbage completions
        /// for unknown tags interleaved, reassembles to exactly the original bytes.
        #[test]
        fn reassembly_of_arbitrary_splits(
            addr_lo in 0u8..128, len in 1u32..600, cuts in proptest::collection::vec(1u32..200, 0..8),
            seed: u64
        ) {
            let t0 = Instant::now();
            let mut r = Requester::new(RequesterConfig::default());
            let base = 0x4000 + u64::from(addr_lo);
            let tag = r.start(t0, read(base, len), 0u8).unwrap();
            let src: Vec<u8> = (0..len).map(|i| (i as u64 ^ seed) as u8).collect();
            let mut dst = vec![0u8; len as usize];
            let mut at = 0u32;
            let mut cut_iter = cuts.into_iter();
            let mut done = false;
            while at < len {
                let chunk = cut_iter.next().unwrap_or(len).min(len - at);
                let a = base + u64::from(at);
                let skip = (a & 3) as usize;
                let mut payload = vec![0xeeu8; skip];
                payload.extend_from_slice(&src[at as usize..(at + chunk) as usize]);
                while payload.len() % 4 != 0 { payload.push(0xee); }
                prop_assert_eq!(r.on_completion(ok(tag ^ 0x80, 4, 0), &[0; 4]), CplAction::Unexpected);
                let info = ok(tag, (len - at) as u16, (a & 0x7f) as u8);
                match r.on_completion(info, &payload[..skip + chunk as usize]) {
                    CplAction::Data { offset, bytes, done: d, .. } => {
                        dst[offset as usize..offset as usize + bytes.len()].copy_from_slice(bytes);
                        done = d;
                    }
                    other => prop_assert!(false, "{:?}", other),
                }
                at += chunk;
            }
            prop_assert!(done);
            prop_assert_eq!(dst, src);
            prop_assert_eq!(r.outstanding(), 0);
        }

        /// Any mix of starts, completions (right or wrong), timeouts, abandons, resets and
        /// link downs keeps the books: no tag is ever handed out twice while outstanding or
        /// quarantined, outside the space asked for, and every tag is accounted for.
        #[test]
        fn tags_are_never_shared(
            ops in proptest::collection::vec((0u8..8, any::<u16>(), 0u64..50), 1..400),
        ) {
            let t0 = Instant::now();
            let mut r = Requester::new(RequesterConfig {
                timeout: ms(20),
                tag_space: TagSpace::Five,
                quarantine: ms(60),
            });
            let mut now = t0;
            let mut held: std::collections::HashMap<u16, u32> = Default::default();
            let mut next = 0u32;
            for (op, x, dt) in ops {
                now += ms(dt);
                match op {
                    0..=2 => {
                        let space = [TagSpace::Five, TagSpace::Eight, TagSpace::Ten][x as usize % 3];
                        r.set_tag_space(space);
                        if let Ok(t) = r.start(now, read(u64::from(x) & 0xfc0, 64), next) {
                            prop_assert!(space.contains(t));
                            prop_assert!(held.insert(t, next).is_none(), "tag {} shared", t);
                            next += 1;
                        }
                    }
                    3 => {
                        let tag = held.keys().copied().nth(x as usize % held.len().max(1));
                        if let Some(tag) = tag {
                            let good = x & 1 == 0;
                            let bc = if good { 64 } else { 60 };
                            match r.on_completion(ok(tag, bc, 0), &[0; 64]) {
                                CplAction::Data { token, done: true, .. } if good => {
                                    prop_assert_eq!(held.remove(&tag), Some(token));
                                }
                                CplAction::Failed(token, _) if !good => {
                                    prop_assert_eq!(held.remove(&tag), Some(token));
                                }
                                // Lower Address may not match this request's address.
                                CplAction::Failed(token, RequestError::Malformed(CplFault::LowerAddress)) => {
                                    prop_assert_eq!(held.remove(&tag), Some(token));
                                }
                                other => prop_assert!(false, "{:?}", other),
                            }
                        } else {
                            let a = r.on_completion(ok(x % 1024, 64, 0), &[0; 64]);
                            prop_assert!(matches!(a, CplAction::Unexpected | CplAction::Late));
                        }
                    }
                    4 => r.handle_timeout(now, |t| { held.retain(|_, v| *v != t); }),
                    5 => {
                        let tag = held.keys().copied().next();
                        if let Some(tag) = tag {
                            prop_assert!(r.abandon(now, tag).is_some());
                            held.remove(&tag);
                        }
                    }
                    6 => r.reset(now, |t| { held.retain(|_, v| *v != t); }),
                    _ => if x % 8 == 0 { r.link_down(|t| { held.retain(|_, v| *v != t); }) },
                }
                prop_assert_eq!(r.outstanding(), held.len());
                let free: usize = r.pools.iter().map(VecDeque::len).sum();
                prop_assert_eq!(free + r.outstanding() + r.quarantined(), TAGS);
                if r.outstanding() + r.quarantined() == 0 {
                    prop_assert_eq!(r.poll_timeout(), None, "an idle requester has no timer");
                }
            }
        }

        /// Reads of any address, length and MRRS, answered out of order across requests with
        /// any completion cuts, reassemble exactly, through a small tag space.
        #[test]
        fn reads_reassemble_out_of_order(
            addr in 0u64..0x3000, len in 1u32..9000, mrrs_log in 7u32..13,
            order_seed: u64, cut in 1u32..300,
        ) {
            let t0 = Instant::now();
            let mut reads = Reads::new(RequesterConfig {
                tag_space: TagSpace::Five,
                ..RequesterConfig::default()
            }, 2);
            reads.submit(t0, 0u8, addr, len, 1 << mrrs_log).unwrap();
            let mem = |a: u64| (a.wrapping_mul(31) >> 3) as u8;
            let mut out = vec![0u8; len as usize];
            let mut finished = false;
            let mut rng = order_seed;
            while !finished {
                let mut reqs = Vec::new();
                reads.poll_transmit(t0, |tag, a, n| reqs.push((tag, a, n, a)));
                prop_assert!(!reqs.is_empty(), "stalled");
                // Serve requests in a shuffled order, each in completions of `cut` bytes.
                while !reqs.is_empty() {
                    rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    let k = (rng >> 33) as usize % reqs.len();
                    let (tag, a, n, at) = reqs[k];
                    let end = a + u64::from(n);
                    // Every completion but a request's last ends on a DW boundary.
                    let m = ((at + u64::from(cut) + 3) & !3).min(end) - at;
                    let m = m as usize;
                    let lead = (at & 3) as usize;
                    let mut p = vec![0u8; (lead + m).div_ceil(4) * 4];
                    for (i, b) in p[lead..lead + m].iter_mut().enumerate() {
                        *b = mem(at + i as u64);
                    }
                    match reads.on_completion(ok(tag, (end - at) as u16, (at & 0x7f) as u8), &p) {
                        ReadEvent::Data { offset, bytes, done, .. } => {
                            out[offset as usize..offset as usize + bytes.len()].copy_from_slice(bytes);
                            finished |= done;
                        }
                        other => prop_assert!(false, "{:?}", other),
                    }
                    if at + m as u64 == end { reqs.swap_remove(k); } else { reqs[k].3 = at + m as u64; }
                }
            }
            prop_assert!(out.iter().enumerate().all(|(i, &b)| b == mem(addr + i as u64)));
            prop_assert_eq!(reads.in_progress(), 0);
            prop_assert_eq!(reads.requester().outstanding(), 0);
        }
    }
}
