//! The host's requester: tag allocation, outstanding non-posted requests, completion
//! reassembly and the completion timeout (PCIe Base Spec §2.2.6.2 tags, §2.3.1.1 completion
//! data and byte count / lower address, §2.8 completion timeout).
//!
//! Sans-I/O with explicit time (quinn-proto shape): [`Requester::start`] hands out a tag and a
//! deadline, [`Requester::on_completion`] says where the bytes of a completion belong,
//! [`Requester::poll_timeout`] / [`Requester::handle_timeout`] expire requests, and
//! [`Requester::link_down`] fails every outstanding request at once — the surprise-down
//! behaviour of a real root port (the caller returns all-ones data and raises an error event).
//!
//! Freed tags go to the back of a FIFO, so a tag is reused as late as possible and a stray
//! completion for a timed-out request is very unlikely to meet a new request with its tag.
//! After construction nothing allocates.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Completion status (PCIe §2.2.9): the codec's own type.
pub use crate::tlp::CplStatus;

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// No completion before the completion timeout.
    #[error("completion timeout")]
    Timeout,
    /// The link went down with the request outstanding.
    #[error("link down")]
    LinkDown,
    /// The completer answered Unsupported Request.
    #[error("unsupported request")]
    UnsupportedRequest,
    /// The completer answered Completer Abort.
    #[error("completer abort")]
    CompleterAbort,
    /// Configuration Request Retry Status (the function is not ready yet).
    #[error("configuration retry status")]
    RetryStatus,
    /// A completion inconsistent with its request (length, byte count).
    #[error("malformed completion")]
    Malformed,
}

impl RequestError {
    /// Map to the vfio-user device error the consumer sees.
    pub fn to_device_error(self) -> crate::host::vfio_user::DeviceError {
        use crate::host::vfio_user::DeviceError as D;
        match self {
            Self::Timeout => D::Timeout,
            Self::LinkDown => D::LinkDown,
            Self::UnsupportedRequest => D::Completion("Unsupported Request"),
            Self::CompleterAbort => D::Completion("Completer Abort"),
            Self::RetryStatus => D::Completion("Configuration Retry Status"),
            Self::Malformed => D::Completion("malformed completion"),
        }
    }
}

/// No tag is free (too many requests outstanding).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("all {0} tags are in use")]
pub struct TagsExhausted(pub usize);

/// Requester settings.
#[derive(Debug, Clone, Copy)]
pub struct RequesterConfig {
    /// Completion timeout.
    pub timeout: Duration,
    /// Use 10-bit tags (768 usable: 256..1024 per §2.2.6.2) instead of 8-bit (256).
    pub ten_bit_tags: bool,
}

impl Default for RequesterConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_millis(1000),
            ten_bit_tags: false,
        }
    }
}

/// Counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RequesterStats {
    /// Requests started.
    pub started: u64,
    /// Requests completed successfully.
    pub completed: u64,
    /// Requests that timed out.
    pub timeouts: u64,
    /// Requests failed by link down.
    pub link_down: u64,
    /// Requests failed by an error completion.
    pub error_completions: u64,
    /// Completions matching no outstanding request.
    pub unexpected: u64,
}

#[derive(Debug, Clone, Copy)]
struct Slot<T> {
    token: T,
    deadline: Instant,
    /// Bytes the request asked for.
    len: u32,
    /// Bytes delivered so far.
    got: u32,
}

/// What the caller does with one completion.
#[derive(Debug, PartialEq, Eq)]
pub enum CplAction<'d, T> {
    /// No request has this tag (late, duplicate or bogus): count and drop.
    Unexpected,
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
    /// A completion without data finished the request (a configuration write).
    Done(T),
    /// The request failed; its tag is free again.
    Failed(T, RequestError),
}

/// The completion fields the requester needs (PCIe §2.2.9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CplInfo {
    /// Tag of the request.
    pub tag: u16,
    /// Status.
    pub status: CplStatus,
    /// Bytes remaining including this completion's.
    pub byte_count: u16,
    /// Lower 7 bits of the address of this completion's first byte.
    pub lower_address: u8,
}

/// Tag pool and outstanding-request table.
#[derive(Debug)]
pub struct Requester<T: Copy> {
    slots: Vec<Option<Slot<T>>>,
    free: VecDeque<u16>,
    cfg: RequesterConfig,
    stats: RequesterStats,
}

impl<T: Copy> Requester<T> {
    /// A requester with all tags free.
    pub fn new(cfg: RequesterConfig) -> Self {
        // 10-bit tags: 256..1024 (tags below 256 with the 10-bit bits clear stay usable for
        // completers without 10-bit support; we keep it simple and use the upper range).
        let range = if cfg.ten_bit_tags { 256..1024 } else { 0..256 };
        Self {
            slots: vec![None; 1024],
            free: range.collect(),
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

    /// Counters.
    pub fn stats(&self) -> RequesterStats {
        self.stats
    }

    /// Requests outstanding.
    pub fn outstanding(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }

    /// Start a non-posted request expecting `len` bytes of completion data (0 for a
    /// configuration or I/O write). Returns the tag to put in the TLP.
    pub fn start(&mut self, now: Instant, len: u32, token: T) -> Result<u16, TagsExhausted> {
        let tag = self
            .free
            .pop_front()
            .ok_or(TagsExhausted(self.capacity()))?;
        self.slots[tag as usize] = Some(Slot {
            token,
            deadline: now + self.cfg.timeout,
            len,
            got: 0,
        });
        self.stats.started += 1;
        Ok(tag)
    }

    /// [`Requester::start`] with the tag itself as the token.
    pub fn start_tagged(&mut self, now: Instant, len: u32) -> Result<u16, TagsExhausted>
    where
        T: From<u16>,
    {
        let tag = self
            .free
            .pop_front()
            .ok_or(TagsExhausted(self.capacity()))?;
        self.slots[tag as usize] = Some(Slot {
            token: T::from(tag),
            deadline: now + self.cfg.timeout,
            len,
            got: 0,
        });
        self.stats.started += 1;
        Ok(tag)
    }

    /// Switch between 8-bit and 10-bit tags (after enumeration found whether every
    /// completer supports 10-bit tags). Only possible with nothing outstanding; returns
    /// whether the setting now matches `on`.
    pub fn set_ten_bit_tags(&mut self, on: bool) -> bool {
        if on == self.cfg.ten_bit_tags {
            return true;
        }
        if self.outstanding() != 0 {
            return false;
        }
        self.cfg.ten_bit_tags = on;
        self.free.clear();
        let range = if on { 256..1024 } else { 0..256 };
        self.free.extend(range);
        true
    }

    fn capacity(&self) -> usize {
        if self.cfg.ten_bit_tags {
            768
        } else {
            256
        }
    }

    fn release(&mut self, tag: u16) -> Option<Slot<T>> {
        let s = self.slots.get_mut(tag as usize)?.take()?;
        self.free.push_back(tag);
        Some(s)
    }

    /// Give up on a request the caller no longer waits for (its own deadline passed).
    /// Returns its token if it was still outstanding.
    pub fn abandon(&mut self, tag: u16) -> Option<T> {
        let s = self.release(tag)?;
        self.stats.timeouts += 1;
        Some(s.token)
    }

    /// A completion arrived. `data` is its payload (DW-aligned, as on the wire).
    pub fn on_completion<'d>(&mut self, cpl: CplInfo, data: &'d [u8]) -> CplAction<'d, T> {
        let Some(Some(slot)) = self.slots.get_mut(cpl.tag as usize) else {
            self.stats.unexpected += 1;
            return CplAction::Unexpected;
        };
        let token = slot.token;
        let err = match cpl.status {
            CplStatus::Sc => None,
            CplStatus::Ur => Some(RequestError::UnsupportedRequest),
            CplStatus::Ca => Some(RequestError::CompleterAbort),
            CplStatus::Crs => Some(RequestError::RetryStatus),
        };
        if let Some(e) = err {
            self.release(cpl.tag);
            self.stats.error_completions += 1;
            return CplAction::Failed(token, e);
        }
        if slot.len == 0 {
            self.release(cpl.tag);
            self.stats.completed += 1;
            return CplAction::Done(token);
        }
        // Byte count counts the bytes still to come, this completion's included (§2.2.9);
        // the first useful byte sits at lower_address within the first DW of the payload.
        let remaining = u32::from(cpl.byte_count);
        let remaining = if remaining == 0 { 4096 } else { remaining };
        let skip = (cpl.lower_address & 3) as usize;
        let offset = slot.len.checked_sub(remaining);
        let useful = data.len().saturating_sub(skip).min(remaining as usize);
        match offset {
            Some(offset) if offset == slot.got && useful > 0 => {
                slot.got += useful as u32;
                let done = slot.got >= slot.len;
                if done {
                    self.release(cpl.tag);
                    self.stats.completed += 1;
                }
                CplAction::Data {
                    token,
                    offset,
                    bytes: &data[skip..skip + useful],
                    done,
                }
            }
            _ => {
                self.release(cpl.tag);
                self.stats.error_completions += 1;
                CplAction::Failed(token, RequestError::Malformed)
            }
        }
    }

    /// The earliest deadline of an outstanding request.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.slots.iter().flatten().map(|s| s.deadline).min()
    }

    /// Expire every request whose deadline is at or before `now`; `f(token)` for each.
    pub fn handle_timeout(&mut self, now: Instant, mut f: impl FnMut(T)) {
        for tag in 0..self.slots.len() {
            if self.slots[tag].is_some_and(|s| s.deadline <= now) {
                if let Some(s) = self.release(tag as u16) {
                    self.stats.timeouts += 1;
                    f(s.token);
                }
            }
        }
    }

    /// The link went down: every outstanding request fails; `f(token)` for each.
    pub fn link_down(&mut self, mut f: impl FnMut(T)) {
        for tag in 0..self.slots.len() {
            if let Some(s) = self.release(tag as u16) {
                self.stats.link_down += 1;
                f(s.token);
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
        }
    }

    #[test]
    fn read_split_at_rcb_is_reassembled_in_order() {
        let t0 = Instant::now();
        let mut r = Requester::new(RequesterConfig::default());
        // 200 bytes from address 0x1038: the first completion ends at the 64-byte RCB (0x1040).
        let tag = r.start(t0, 200, 7usize).unwrap();
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
        let tag = r.start(t0, 2, ()).unwrap();
        match r.on_completion(ok(tag, 2, 0x06), &[1, 2, 3, 4]) {
            CplAction::Data { bytes, done, .. } => {
                assert_eq!(bytes, &[3, 4]);
                assert!(done);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn timeout_and_link_down_fail_requests() {
        let t0 = Instant::now();
        let cfg = RequesterConfig {
            timeout: Duration::from_millis(10),
            ..Default::default()
        };
        let mut r = Requester::new(cfg);
        let a = r.start(t0, 4, 1).unwrap();
        let _b = r.start(t0 + Duration::from_millis(5), 4, 2).unwrap();
        assert_eq!(r.poll_timeout(), Some(t0 + Duration::from_millis(10)));
        let mut expired = vec![];
        r.handle_timeout(t0 + Duration::from_millis(10), |t| expired.push(t));
        assert_eq!(expired, vec![1]);
        // A late completion for the expired tag is not delivered to anyone.
        assert_eq!(r.on_completion(ok(a, 4, 0), &[0; 4]), CplAction::Unexpected);
        let mut down = vec![];
        r.link_down(|t| down.push(t));
        assert_eq!(down, vec![2]);
        assert_eq!(r.poll_timeout(), None);
        assert_eq!(r.stats().timeouts, 1);
        assert_eq!(r.stats().link_down, 1);
    }

    #[test]
    fn error_status_and_malformed_completions_fail() {
        let t0 = Instant::now();
        let mut r = Requester::new(RequesterConfig::default());
        let a = r.start(t0, 4, 'a').unwrap();
        let ur = CplInfo {
            status: CplStatus::Ur,
            ..ok(a, 4, 0)
        };
        assert_eq!(
            r.on_completion(ur, &[]),
            CplAction::Failed('a', RequestError::UnsupportedRequest)
        );
        let b = r.start(t0, 8, 'b').unwrap();
        // Byte count larger than requested.
        assert_eq!(
            r.on_completion(ok(b, 16, 0), &[0; 16]),
            CplAction::Failed('b', RequestError::Malformed)
        );
        let w = r.start(t0, 0, 'w').unwrap();
        assert_eq!(r.on_completion(ok(w, 4, 0), &[]), CplAction::Done('w'));
    }

    #[test]
    fn tags_run_out_and_come_back_fifo() {
        let t0 = Instant::now();
        let mut r = Requester::new(RequesterConfig::default());
        let tags: Vec<u16> = (0..256).map(|i| r.start(t0, 0, i).unwrap()).collect();
        assert_eq!(r.start(t0, 0, 999), Err(TagsExhausted(256)));
        r.on_completion(ok(tags[3], 4, 0), &[]);
        // The only free tag is the one just released.
        assert_eq!(r.start(t0, 0, 1000), Ok(tags[3]));
        let mut r10 = Requester::new(RequesterConfig {
            ten_bit_tags: true,
            ..Default::default()
        });
        let t = r10.start(t0, 0, 0).unwrap();
        assert!((256..1024).contains(&t));
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
            let tag = r.start(t0, len, 0u8).unwrap();
            let src: Vec<u8> = (0..len).map(|i| (i as u64 ^ seed) as u8).collect();
            let mut dst = vec![0u8; len as usize];
            let mut at = 0u32;
            let mut cut_iter = cuts.into_iter();
            let mut done = false;
            while at < len {
                let chunk = cut_iter.next().unwrap_or(len).min(len - at);
                let a = addr_lo as u32 + at;
                let skip = (a & 3) as usize;
                let mut payload = vec![0xeeu8; skip];
                payload.extend_from_slice(&src[at as usize..(at + chunk) as usize]);
                while payload.len() % 4 != 0 { payload.push(0xee); }
                prop_assert_eq!(r.on_completion(ok(tag ^ 0x80, 4, 0), &[0; 4]), CplAction::Unexpected);
                let info = ok(tag, (len - at) as u16, (a & 0x7f) as u8);
                // Completions carry exactly their chunk: trim by giving a payload that ends
                // where the chunk does (the last DW's extra bytes are beyond byte_count only
                // on the final completion, so cap via byte_count there).
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
    }
}
