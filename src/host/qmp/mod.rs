//! QMP, the QEMU Machine Protocol: how the host agent drives a running VM's hot-plug
//! (QEMU `docs/interop/qmp-spec.rst`; the commands are in QEMU's `qapi/*.json` schema).
//!
//! * [`proto`] — the sans-I/O engine: framing, greeting, `qmp_capabilities`, command ids,
//!   replies and asynchronous events, with bounded buffers. Fuzzed (`fuzz/fuzz_targets/
//!   qmp_stream.rs`) and property-tested.
//! * [`client`] — [`Qmp`], the blocking driver over a UNIX socket, with a deadline on every wait.
//!
//! Why our own: the maintained Rust QMP crates did not fit. `qapi` (arcnmx/qapi-rs) reads lines
//! with an unbounded `BufRead::read_line`, has no deadlines of its own and brings the whole
//! generated QMP schema (`qapi-qmp`) for the four commands we use; `qmp` is tokio-only and
//! young. The protocol is a few lines of JSON framing on top of `serde_json`; this layer is
//! small, bounded, sans-I/O and fuzzed, like the project's other parsers.

pub mod client;
pub mod proto;

pub use client::{Qmp, QmpError};
pub use proto::{CommandError, Event, Greeting, Output, Protocol, ProtocolError, QemuVersion};
