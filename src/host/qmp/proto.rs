//! The QMP protocol engine, sans I/O: bytes from the monitor in, greeting / replies / events
//! out; commands in, bytes for the monitor out. No sockets, threads or clocks.
//!
//! Specification: QEMU `docs/interop/qmp-spec.rst` (QEMU Machine Protocol):
//! * 2.2 Server greeting — `{"QMP": {"version": {...}, "capabilities": [...]}}`;
//! * 2.3 Issuing commands — `{"execute": NAME, "arguments": {...}, "id": ID}`;
//! * 2.4 Command responses — `{"return": VALUE, "id": ID}` or
//!   `{"error": {"class": CLASS, "desc": TEXT}, "id": ID}`;
//! * 2.5 Asynchronous events — `{"event": NAME, "data": {...}, "timestamp": {...}}`;
//! * 4 Capabilities negotiation — `qmp_capabilities` moves the monitor from negotiation to
//!   command mode.
//!
//! QEMU ends every message with a newline (`\r\n`); this engine frames on `\n`, drops a
//! trailing `\r`, and bounds a line at [`MAX_LINE`] bytes: a longer line is discarded up to its
//! newline and reported, so a monitor that never sends a newline cannot grow our memory. A line
//! that is not a QMP message (bad JSON, no known key) is reported and skipped; the stream goes
//! on. Events are queued (at most [`MAX_QUEUED`]; the oldest is dropped and counted beyond it).

use std::collections::{HashSet, VecDeque};

use serde_json::{Map, Value};

/// Longest message line accepted (QEMU's largest replies, e.g. `query-pci` of a big machine or
/// `qom-list-types`, stay well below this).
pub const MAX_LINE: usize = 1 << 20;
/// Most outputs (replies and events) held before the oldest event is dropped.
pub const MAX_QUEUED: usize = 1024;

/// QEMU's version from the greeting (`version.qemu`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct QemuVersion {
    /// Major.
    pub major: u64,
    /// Minor.
    pub minor: u64,
    /// Micro.
    pub micro: u64,
}

impl std::fmt::Display for QemuVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.micro)
    }
}

/// The monitor's greeting.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Greeting {
    /// `version.qemu`.
    pub version: QemuVersion,
    /// `version.package` (e.g. a distribution's build tag).
    pub package: String,
    /// Capabilities the monitor offers (e.g. `oob`); we enable none.
    pub capabilities: Vec<String>,
}

/// An error reply (qmp-spec.rst 2.4.2): QEMU's error class and its human-readable text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{class}: {desc}")]
pub struct CommandError {
    /// `error.class`, e.g. `GenericError`, `DeviceNotFound`, `CommandNotFound`.
    pub class: String,
    /// `error.desc`.
    pub desc: String,
}

/// An asynchronous event (qmp-spec.rst 2.5).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// `event`, e.g. `DEVICE_DELETED`.
    pub name: String,
    /// `data` (an empty object when absent).
    pub data: Value,
    /// `timestamp` as microseconds since the epoch (0 when absent or malformed).
    pub timestamp_us: u64,
}

impl Event {
    /// `data.<key>` as a string.
    pub fn str(&self, key: &str) -> Option<&str> {
        self.data.get(key).and_then(Value::as_str)
    }
}

/// What the engine produced from the monitor's bytes.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Negotiation finished: the monitor accepts commands.
    Ready(Greeting),
    /// The reply to command `id`.
    Reply {
        /// The id [`Protocol::command`] returned.
        id: u64,
        /// `return` or `error`.
        result: Result<Value, CommandError>,
    },
    /// An asynchronous event.
    Event(Event),
}

/// Something the monitor sent that is not what QMP allows. None of these stops the engine;
/// [`ProtocolError::Refused`] means the monitor will not accept commands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// A line longer than [`MAX_LINE`] was discarded.
    #[error("monitor sent a line of more than {limit} bytes; discarded")]
    LineTooLong {
        /// The limit.
        limit: usize,
    },
    /// A line that is not JSON, or not a JSON object.
    #[error("monitor sent a line that is not a JSON object ({error}): {excerpt:?}")]
    NotJson {
        /// What the parser said.
        error: String,
        /// The line's first bytes.
        excerpt: String,
    },
    /// A JSON object with none of `QMP`, `return`, `error`, `event`, or with the wrong types.
    #[error("monitor sent an object that is no QMP message: {excerpt:?}")]
    NotQmp {
        /// The line's first bytes.
        excerpt: String,
    },
    /// A reply or event before the greeting, or a second greeting.
    #[error("monitor sent {what} out of sequence")]
    OutOfSequence {
        /// What it was.
        what: &'static str,
    },
    /// A reply whose id is none of ours (or that has no id).
    #[error("monitor replied to id {id:?}, which is no outstanding command")]
    UnknownReply {
        /// The id it carried, as JSON text.
        id: String,
    },
    /// `qmp_capabilities` was refused: the monitor stays in negotiation mode.
    #[error("monitor refused qmp_capabilities: {0}")]
    Refused(CommandError),
}

/// Where the conversation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for `{"QMP": ...}`.
    Greeting,
    /// `qmp_capabilities` sent, waiting for its reply.
    Negotiating,
    /// Commands may be issued.
    Command,
    /// `qmp_capabilities` failed.
    Refused,
}

/// Counters (for operators and tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Lines received (complete or discarded).
    pub lines: u64,
    /// Lines reported as [`ProtocolError`].
    pub bad_lines: u64,
    /// Events dropped because [`MAX_QUEUED`] outputs were waiting.
    pub events_dropped: u64,
}

/// The id we put on `qmp_capabilities`.
const CAPABILITIES_ID: u64 = 0;

/// The QMP client protocol engine.
#[derive(Debug)]
pub struct Protocol {
    phase: Phase,
    greeting: Option<Greeting>,
    /// Bytes of the current, unfinished line.
    line: Vec<u8>,
    /// The current line exceeded [`MAX_LINE`]: drop bytes up to its newline.
    discarding: bool,
    /// Bytes for the monitor, not yet taken by [`Protocol::take_transmit`].
    transmit: Vec<u8>,
    outputs: VecDeque<Output>,
    errors: VecDeque<ProtocolError>,
    pending: HashSet<u64>,
    next_id: u64,
    stats: Stats,
}

impl Default for Protocol {
    fn default() -> Self {
        Self::new()
    }
}

fn excerpt(line: &[u8]) -> String {
    let n = line.len().min(120);
    String::from_utf8_lossy(&line[..n]).into_owned()
}

impl Protocol {
    /// A fresh engine, waiting for the greeting.
    pub fn new() -> Self {
        Self {
            phase: Phase::Greeting,
            greeting: None,
            line: Vec::new(),
            discarding: false,
            transmit: Vec::new(),
            outputs: VecDeque::new(),
            errors: VecDeque::new(),
            pending: HashSet::new(),
            next_id: CAPABILITIES_ID + 1,
            stats: Stats::default(),
        }
    }

    /// Where the conversation is.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The greeting, once received.
    pub fn greeting(&self) -> Option<&Greeting> {
        self.greeting.as_ref()
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Commands sent and not answered yet.
    pub fn outstanding(&self) -> usize {
        self.pending.len()
    }

    /// Queue command `name` with optional `arguments` (a JSON object) for the monitor; the id
    /// its [`Output::Reply`] will carry. Commands may be queued before negotiation ends; they
    /// go out behind `qmp_capabilities`.
    pub fn command(&mut self, name: &str, arguments: Option<Value>) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.emit(name, arguments, id);
        id
    }

    fn emit(&mut self, name: &str, arguments: Option<Value>, id: u64) {
        let mut m = Map::new();
        m.insert("execute".into(), Value::String(name.into()));
        if let Some(a) = arguments {
            m.insert("arguments".into(), a);
        }
        m.insert("id".into(), Value::from(id));
        // Serialising a Value into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut self.transmit, &Value::Object(m));
        self.transmit.extend_from_slice(b"\r\n");
        self.pending.insert(id);
    }

    /// Stop waiting for command `id` (its caller gave up): a late reply is then reported as
    /// [`ProtocolError::UnknownReply`] instead of being queued.
    pub fn forget(&mut self, id: u64) {
        self.pending.remove(&id);
    }

    /// Bytes to write to the monitor (empties the buffer).
    pub fn take_transmit(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.transmit)
    }

    /// Whether bytes wait for [`Protocol::take_transmit`].
    pub fn wants_transmit(&self) -> bool {
        !self.transmit.is_empty()
    }

    /// Bytes read from the monitor.
    pub fn receive(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let nl = data.iter().position(|&b| b == b'\n');
            let (chunk, rest, complete) = match nl {
                Some(i) => (&data[..i], &data[i + 1..], true),
                None => (data, &[][..], false),
            };
            data = rest;
            if !self.discarding {
                if self.line.len() + chunk.len() > MAX_LINE {
                    self.line.clear();
                    self.discarding = true;
                } else {
                    self.line.extend_from_slice(chunk);
                }
            }
            if complete {
                self.stats.lines += 1;
                if self.discarding {
                    self.discarding = false;
                    self.error(ProtocolError::LineTooLong { limit: MAX_LINE });
                } else {
                    let line = std::mem::take(&mut self.line);
                    self.line_complete(&line);
                    // Keep the allocation for the next line.
                    self.line = line;
                    self.line.clear();
                }
            }
        }
    }

    /// The next reply, event or readiness notice.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// The next protocol complaint.
    pub fn poll_error(&mut self) -> Option<ProtocolError> {
        self.errors.pop_front()
    }

    fn error(&mut self, e: ProtocolError) {
        self.stats.bad_lines += 1;
        if self.errors.len() >= MAX_QUEUED {
            self.errors.pop_front();
        }
        self.errors.push_back(e);
    }

    fn output(&mut self, o: Output) {
        if self.outputs.len() >= MAX_QUEUED {
            // Replies are what callers wait for; shed the oldest event instead.
            if let Some(i) = self
                .outputs
                .iter()
                .position(|o| matches!(o, Output::Event(_)))
            {
                self.outputs.remove(i);
                self.stats.events_dropped += 1;
            } else if matches!(o, Output::Event(_)) {
                self.stats.events_dropped += 1;
                return;
            }
        }
        self.outputs.push_back(o);
    }

    fn line_complete(&mut self, raw: &[u8]) {
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        if line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        let obj = match serde_json::from_slice::<Value>(line) {
            Ok(Value::Object(m)) => m,
            Ok(_) => {
                return self.error(ProtocolError::NotJson {
                    error: "not an object".into(),
                    excerpt: excerpt(line),
                })
            }
            Err(e) => {
                return self.error(ProtocolError::NotJson {
                    error: e.to_string(),
                    excerpt: excerpt(line),
                })
            }
        };
        let not_qmp = |line: &[u8]| ProtocolError::NotQmp {
            excerpt: excerpt(line),
        };
        if let Some(g) = obj.get("QMP") {
            let Some(greeting) = parse_greeting(g) else {
                return self.error(not_qmp(line));
            };
            if self.phase != Phase::Greeting {
                return self.error(ProtocolError::OutOfSequence {
                    what: "a second greeting",
                });
            }
            self.greeting = Some(greeting);
            self.phase = Phase::Negotiating;
            // Our commands queued before the greeting must follow qmp_capabilities.
            let queued = std::mem::take(&mut self.transmit);
            self.emit("qmp_capabilities", None, CAPABILITIES_ID);
            self.transmit.extend_from_slice(&queued);
            return;
        }
        if let Some(name) = obj.get("event") {
            let Some(name) = name.as_str() else {
                return self.error(not_qmp(line));
            };
            if self.phase == Phase::Greeting {
                return self.error(ProtocolError::OutOfSequence {
                    what: "an event before the greeting",
                });
            }
            let timestamp_us = obj
                .get("timestamp")
                .and_then(|t| {
                    let s = t.get("seconds")?.as_u64()?;
                    let us = t.get("microseconds")?.as_u64()?;
                    s.checked_mul(1_000_000)?.checked_add(us)
                })
                .unwrap_or(0);
            let data = obj
                .get("data")
                .cloned()
                .unwrap_or(Value::Object(Map::new()));
            return self.output(Output::Event(Event {
                name: name.to_string(),
                data,
                timestamp_us,
            }));
        }
        let result = if let Some(v) = obj.get("return") {
            Ok(v.clone())
        } else if let Some(e) = obj.get("error") {
            let class = e.get("class").and_then(Value::as_str);
            let desc = e.get("desc").and_then(Value::as_str);
            match (class, desc) {
                (Some(c), Some(d)) => Err(CommandError {
                    class: c.to_string(),
                    desc: d.to_string(),
                }),
                _ => return self.error(not_qmp(line)),
            }
        } else {
            return self.error(not_qmp(line));
        };
        if self.phase == Phase::Greeting {
            return self.error(ProtocolError::OutOfSequence {
                what: "a reply before the greeting",
            });
        }
        let id = obj.get("id").and_then(Value::as_u64);
        let Some(id) = id.filter(|i| self.pending.remove(i)) else {
            let id = obj.get("id").map_or("none".to_string(), Value::to_string);
            return self.error(ProtocolError::UnknownReply { id });
        };
        if id == CAPABILITIES_ID {
            match result {
                Ok(_) => {
                    self.phase = Phase::Command;
                    let g = self.greeting.clone().unwrap_or_default();
                    self.output(Output::Ready(g));
                }
                Err(e) => {
                    self.phase = Phase::Refused;
                    self.error(ProtocolError::Refused(e));
                }
            }
            return;
        }
        self.output(Output::Reply { id, result });
    }
}

fn parse_greeting(g: &Value) -> Option<Greeting> {
    let v = g.get("version")?;
    let q = v.get("qemu")?;
    let version = QemuVersion {
        major: q.get("major")?.as_u64()?,
        minor: q.get("minor")?.as_u64()?,
        micro: q.get("micro")?.as_u64()?,
    };
    let package = v
        .get("package")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let capabilities = g
        .get("capabilities")?
        .as_array()?
        .iter()
        .filter_map(|c| c.as_str().map(str::to_string))
        .collect();
    Some(Greeting {
        version,
        package,
        capabilities,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    /// QEMU 10.2.2's greeting, as `socat - UNIX:qmp.sock` prints it.
    static GREETING: &[u8] = b"{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 2, \"minor\": 2, \"major\": 10}, \"package\": \"\"}, \"capabilities\": [\"oob\"]}}\r\n";

    fn ready() -> Protocol {
        let mut p = Protocol::new();
        p.receive(GREETING);
        let tx = p.take_transmit();
        assert_eq!(tx, b"{\"execute\":\"qmp_capabilities\",\"id\":0}\r\n");
        p.receive(b"{\"return\": {}, \"id\": 0}\r\n");
        match p.poll_output() {
            Some(Output::Ready(g)) => {
                assert_eq!(
                    g.version,
                    QemuVersion {
                        major: 10,
                        minor: 2,
                        micro: 2
                    }
                );
                assert_eq!(g.capabilities, vec!["oob".to_string()]);
            }
            o => panic!("expected Ready, got {o:?}"),
        }
        assert_eq!(p.phase(), Phase::Command);
        p
    }

    #[test]
    fn greeting_negotiation_and_a_command() {
        let mut p = ready();
        let id = p.command("query-pci", None);
        assert_eq!(
            p.take_transmit(),
            format!("{{\"execute\":\"query-pci\",\"id\":{id}}}\r\n").into_bytes()
        );
        let id2 = p.command("device_del", Some(json!({"id": "pcietun-01_00.0"})));
        let tx = String::from_utf8(p.take_transmit()).unwrap();
        let v: Value = serde_json::from_str(tx.trim_end()).unwrap();
        assert_eq!(v["arguments"]["id"], "pcietun-01_00.0");
        assert_eq!(v["id"], id2);
        assert_eq!(p.outstanding(), 2);
        p.receive(format!("{{\"return\": [], \"id\": {id}}}\r\n").as_bytes());
        p.receive(
            format!(
                "{{\"id\": {id2}, \"error\": {{\"class\": \"DeviceNotFound\", \"desc\": \"Device 'x' not found\"}}}}\r\n"
            )
            .as_bytes(),
        );
        assert_eq!(
            p.poll_output(),
            Some(Output::Reply {
                id,
                result: Ok(json!([]))
            })
        );
        assert_eq!(
            p.poll_output(),
            Some(Output::Reply {
                id: id2,
                result: Err(CommandError {
                    class: "DeviceNotFound".into(),
                    desc: "Device 'x' not found".into()
                })
            })
        );
        assert_eq!(p.outstanding(), 0);
        assert_eq!(p.poll_error(), None);
    }

    #[test]
    fn commands_queued_before_the_greeting_follow_qmp_capabilities() {
        let mut p = Protocol::new();
        let id = p.command("query-status", None);
        let id2 = p.command("query-version", None);
        p.receive(GREETING);
        let tx = String::from_utf8(p.take_transmit()).unwrap();
        let lines: Vec<&str> = tx.split("\r\n").filter(|l| !l.is_empty()).collect();
        assert_eq!(lines.len(), 3, "{tx}");
        assert!(lines[0].contains("qmp_capabilities"));
        assert!(lines[1].contains(&format!("\"id\":{id}")));
        assert!(lines[2].contains(&format!("\"id\":{id2}")));
    }

    #[test]
    fn a_forgotten_command_reply_is_unknown() {
        let mut p = ready();
        let id = p.command("query-pci", None);
        p.forget(id);
        p.receive(format!("{{\"return\": 1, \"id\": {id}}}\r\n").as_bytes());
        assert_eq!(p.poll_output(), None);
        assert_eq!(
            p.poll_error(),
            Some(ProtocolError::UnknownReply { id: id.to_string() })
        );
    }

    #[test]
    fn events_interleave_with_replies_in_any_order() {
        let mut p = ready();
        let id = p.command("device_del", Some(json!({"id": "d"})));
        // QEMU may emit DEVICE_DELETED before the command's return (the slot was powered off).
        p.receive(b"{\"timestamp\": {\"seconds\": 1700000000, \"microseconds\": 5}, \"event\": \"DEVICE_DELETED\", \"data\": {\"device\": \"d\", \"path\": \"/machine/peripheral/d\"}}\r\n");
        p.receive(format!("{{\"return\": {{}}, \"id\": {id}}}\n").as_bytes());
        match p.poll_output() {
            Some(Output::Event(e)) => {
                assert_eq!(e.name, "DEVICE_DELETED");
                assert_eq!(e.str("device"), Some("d"));
                assert_eq!(e.timestamp_us, 1_700_000_000_000_005);
            }
            o => panic!("{o:?}"),
        }
        assert!(matches!(p.poll_output(), Some(Output::Reply { id: i, result: Ok(_) }) if i == id));
    }

    #[test]
    fn bad_lines_are_reported_and_skipped() {
        let mut p = ready();
        let id = p.command("query-pci", None);
        p.receive(
            b"this is not json\r\n[1,2]\r\n{\"hello\": 1}\r\n{\"error\": {\"class\": 3}}\r\n\r\n",
        );
        p.receive(b"{\"return\": 1, \"id\": 999}\r\n{\"return\": 1}\r\n");
        p.receive(format!("{{\"return\": true, \"id\": {id}}}\r\n").as_bytes());
        let errs: Vec<_> = std::iter::from_fn(|| p.poll_error()).collect();
        assert!(matches!(errs[0], ProtocolError::NotJson { .. }), "{errs:?}");
        assert!(matches!(errs[1], ProtocolError::NotJson { .. }), "{errs:?}");
        assert!(matches!(errs[2], ProtocolError::NotQmp { .. }), "{errs:?}");
        assert!(matches!(errs[3], ProtocolError::NotQmp { .. }), "{errs:?}");
        assert_eq!(errs[4], ProtocolError::UnknownReply { id: "999".into() });
        assert_eq!(errs[5], ProtocolError::UnknownReply { id: "none".into() });
        assert_eq!(errs.len(), 6);
        assert_eq!(
            p.poll_output(),
            Some(Output::Reply {
                id,
                result: Ok(json!(true))
            })
        );
        assert_eq!(p.stats().bad_lines, 6);
    }

    #[test]
    fn out_of_sequence_messages() {
        let mut p = Protocol::new();
        p.receive(b"{\"return\": {}, \"id\": 0}\r\n{\"event\": \"STOP\"}\r\n");
        assert_eq!(
            p.poll_error(),
            Some(ProtocolError::OutOfSequence {
                what: "a reply before the greeting"
            })
        );
        assert_eq!(
            p.poll_error(),
            Some(ProtocolError::OutOfSequence {
                what: "an event before the greeting"
            })
        );
        assert_eq!(p.phase(), Phase::Greeting);
        p.receive(GREETING);
        p.receive(GREETING);
        assert_eq!(
            p.poll_error(),
            Some(ProtocolError::OutOfSequence {
                what: "a second greeting"
            })
        );
        assert_eq!(p.phase(), Phase::Negotiating);
    }

    #[test]
    fn refused_capabilities() {
        let mut p = Protocol::new();
        p.receive(GREETING);
        p.receive(b"{\"error\": {\"class\": \"GenericError\", \"desc\": \"no\"}, \"id\": 0}\r\n");
        assert_eq!(p.phase(), Phase::Refused);
        assert!(matches!(p.poll_error(), Some(ProtocolError::Refused(_))));
        assert_eq!(p.poll_output(), None);
    }

    #[test]
    fn oversized_lines_are_bounded_and_discarded() {
        let mut p = ready();
        let id = p.command("query-pci", None);
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..(MAX_LINE / chunk.len() + 4) {
            p.receive(&chunk);
            assert!(p.line.len() <= MAX_LINE);
        }
        p.receive(format!("\r\n{{\"return\": 7, \"id\": {id}}}\r\n").as_bytes());
        assert_eq!(
            p.poll_error(),
            Some(ProtocolError::LineTooLong { limit: MAX_LINE })
        );
        assert_eq!(
            p.poll_output(),
            Some(Output::Reply {
                id,
                result: Ok(json!(7))
            })
        );
    }

    #[test]
    fn event_flood_is_bounded_and_replies_survive() {
        let mut p = ready();
        let id = p.command("query-pci", None);
        for _ in 0..(MAX_QUEUED + 10) {
            p.receive(b"{\"event\": \"RTC_CHANGE\", \"data\": {\"offset\": 1}}\r\n");
        }
        p.receive(format!("{{\"return\": 1, \"id\": {id}}}\r\n").as_bytes());
        for _ in 0..20 {
            p.receive(b"{\"event\": \"RTC_CHANGE\", \"data\": {\"offset\": 1}}\r\n");
        }
        let outs: Vec<_> = std::iter::from_fn(|| p.poll_output()).collect();
        assert_eq!(outs.len(), MAX_QUEUED);
        assert!(outs
            .iter()
            .any(|o| matches!(o, Output::Reply { id: i, .. } if *i == id)));
        // 10 over the limit, 1 to make room for the reply, 20 more afterwards.
        assert_eq!(p.stats().events_dropped, 31);
    }

    /// What one engine makes of a byte stream, for comparing splits.
    fn digest(p: &mut Protocol) -> (Vec<Output>, Vec<ProtocolError>, Phase) {
        (
            std::iter::from_fn(|| p.poll_output()).collect(),
            std::iter::from_fn(|| p.poll_error()).collect(),
            p.phase(),
        )
    }

    fn message() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            Just(GREETING.to_vec()),
            (0u64..5).prop_map(|id| format!("{{\"return\": {{}}, \"id\": {id}}}\r\n").into_bytes()),
            (0u64..5, "[A-Za-z]{1,12}").prop_map(|(id, c)| format!(
                "{{\"error\": {{\"class\": \"{c}\", \"desc\": \"d\"}}, \"id\": {id}}}\n"
            )
            .into_bytes()),
            "[A-Z_]{1,16}".prop_map(|e| format!(
                "{{\"event\": \"{e}\", \"data\": {{\"device\": \"x\"}}}}\r\n"
            )
            .into_bytes()),
            proptest::collection::vec(any::<u8>(), 0..64),
        ]
    }

    proptest! {
        /// However the stream is cut into reads, the engine sees the same messages, and
        /// arbitrary bytes never panic it.
        #[test]
        fn framing_is_independent_of_read_boundaries(
            msgs in proptest::collection::vec(message(), 0..24),
            cuts in proptest::collection::vec(1usize..40, 0..64),
            pending in 0u64..5,
        ) {
            let stream: Vec<u8> = msgs.concat();
            let mut whole = Protocol::new();
            let mut split = Protocol::new();
            for _ in 0..pending {
                whole.command("x", None);
                split.command("x", None);
            }
            whole.receive(&stream);
            let mut at = 0;
            let mut cuts = cuts.into_iter();
            while at < stream.len() {
                let n = cuts.next().unwrap_or(usize::MAX).min(stream.len() - at);
                split.receive(&stream[at..at + n]);
                at += n;
            }
            prop_assert_eq!(digest(&mut whole), digest(&mut split));
            prop_assert_eq!(whole.take_transmit(), split.take_transmit());
        }

        /// Every reply we get names a command we sent, at most once.
        #[test]
        fn replies_match_sent_commands(msgs in proptest::collection::vec(message(), 0..32)) {
            let mut p = Protocol::new();
            let sent: Vec<u64> = (0..4).map(|_| p.command("x", None)).collect();
            for m in &msgs {
                p.receive(m);
            }
            let mut seen = HashSet::new();
            while let Some(o) = p.poll_output() {
                if let Output::Reply { id, .. } = o {
                    prop_assert!(sent.contains(&id));
                    prop_assert!(seen.insert(id));
                }
            }
        }
    }
}
