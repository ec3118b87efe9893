//! Names from outside (a host id, a function id the appliance sent, a VM name) made safe to
//! put into a file name or a QEMU device id: [`safe_name`] is the one sanitizer the agent
//! uses for both (its control socket path, `host/control.rs`; QEMU device ids,
//! `host/vm/attach.rs`).

/// Longest [`safe_name`] (characters): a socket path must fit `sun_path` (108 bytes) with
/// its directory, and a hostile id must not make one name a megabyte.
pub const MAX_NAME: usize = 64;

/// `s` with every character other than an ASCII letter, digit, `-`, `_` or `.` replaced by
/// `_`, a leading `.` replaced by `_` (never `.`, `..` or a hidden file), cut to
/// [`MAX_NAME`] characters, and `_` for an empty `s`. The result is a valid file name
/// component and, behind a letter, a valid QEMU id (`[A-Za-z][A-Za-z0-9_.-]*`); a name that
/// already follows these rules is unchanged.
pub fn safe_name(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(MAX_NAME)
        .enumerate()
        .map(|(i, c)| {
            let ok = c.is_ascii_alphanumeric() || c == '-' || c == '_' || (c == '.' && i > 0);
            if ok {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() {
        out.push('_');
    }
    out
}
