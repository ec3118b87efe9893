//! Prerequisites of the tests that need something from the machine (root, iproute2, pciutils,
//! IPv6 loopback). A missing one prints a loud `SKIPPED:` line — or fails the test when
//! `PCIETUN_REQUIRE_ALL=1` (CI sets it, so nothing is silently skipped there).
#![allow(dead_code)] // each test binary uses its own subset

use std::process::Command;

/// `what` cannot run because of `why`: fail under `PCIETUN_REQUIRE_ALL=1`, else say SKIPPED.
pub fn skip(what: &str, why: &str) {
    if std::env::var("PCIETUN_REQUIRE_ALL").as_deref() == Ok("1") {
        panic!("{what} is required (PCIETUN_REQUIRE_ALL=1) but cannot run: {why}");
    }
    eprintln!("SKIPPED: {what}: {why}");
}

/// Whether we run as root (network namespaces, raw sockets).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// Whether iproute2's `ip` is installed.
pub fn have_ip() -> bool {
    Command::new("ip").arg("-V").output().is_ok()
}

/// Root and `ip`, for `what` (skips and returns false otherwise).
pub fn root_and_ip(what: &str) -> bool {
    let (root, ip) = (is_root(), have_ip());
    if !root || !ip {
        let why = if root { "no `ip` command" } else { "not root" };
        skip(what, &format!("needs root and iproute2 ({why})"));
        return false;
    }
    true
}

/// Whether pciutils' `lspci` is installed (skips and returns false otherwise).
pub fn lspci_or_skip(what: &str) -> bool {
    let ok = Command::new("lspci")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        skip(what, "lspci not installed (apt-get install pciutils)");
    }
    ok
}

/// `lspci -F FILE -vvv` of an `lspci -xxxx`-format dump.
pub fn lspci_vvv(text: &str) -> String {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut f, text.as_bytes()).unwrap();
    let out = Command::new("lspci")
        .arg("-F")
        .arg(f.path())
        .arg("-vvv")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "lspci failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `lspci -vvv` text with every BAR / ROM address replaced by `<addr>` (what an OS that moved
/// the BARs may change).
pub fn normalise_addresses(s: &str) -> String {
    s.lines()
        .map(|l| {
            for key in ["Memory at ", "I/O ports at ", "Expansion ROM at "] {
                if let Some(i) = l.find(key) {
                    let start = i + key.len();
                    let end = l[start..].find(' ').map_or(l.len(), |e| start + e);
                    return format!("{}<addr>{}", &l[..start], &l[end..]);
                }
            }
            l.to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A libvfio-user sample server (`server`, `gpio-pci-idio-16`, …) built by
/// tests/vfio_user_peers/build-libvfio-user.sh: `$PCIETUN_LIBVFIO_USER/<name>` or the newest
/// under `/var/cache/pcietun/libvfio-user/*/samples/`. Skips (loudly) and returns None when
/// it is not built.
pub fn libvfio_user_sample(what: &str, name: &str) -> Option<std::path::PathBuf> {
    let found = if let Ok(dir) = std::env::var("PCIETUN_LIBVFIO_USER") {
        Some(std::path::PathBuf::from(dir).join(name))
    } else {
        let cache = std::env::var("PCIETUN_CACHE").unwrap_or_else(|_| "/var/cache/pcietun".into());
        let mut dirs: Vec<_> = std::fs::read_dir(std::path::Path::new(&cache).join("libvfio-user"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path().join("samples").join(name))
            .filter(|p| p.is_file())
            .collect();
        dirs.sort();
        dirs.pop()
    };
    match found.filter(|p| p.is_file()) {
        Some(p) => Some(p),
        None => {
            skip(
                what,
                &format!("libvfio-user sample `{name}` not built (run tests/vfio_user_peers/build-libvfio-user.sh)"),
            );
            None
        }
    }
}
