//! The management API's configuration on `pcietun appliance`: the `[api]` table and the
//! `--api` / `--api-admin` flags are parsed and checked before anything is built (`--check`),
//! there is no default administrator, and a password file or TLS key that group or others can
//! read is refused, naming the file.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

fn appliance(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pcietun"))
        .arg("appliance")
        .arg("--check")
        .args(args)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn password_file(dir: &Path, mode: u32) -> String {
    let p = dir.join(format!("pw-{mode:o}"));
    std::fs::write(&p, "a-long-enough-password\n").unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    p.display().to_string()
}

#[test]
fn the_api_needs_an_administrator() {
    let o = appliance(&["--api", "127.0.0.1:0"]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("no default password"), "{}", text(&o));
}

#[test]
fn flags_enable_the_api_with_a_private_password_file() {
    let d = tempfile::tempdir().unwrap();
    let good = password_file(d.path(), 0o600);
    let o = appliance(&["--api-admin", &format!("ops:{good}")]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("management API: http://127.0.0.1:8443 (administrator ops)"),
        "loopback by default: {}",
        text(&o)
    );

    let open = password_file(d.path(), 0o644);
    let o = appliance(&[
        "--api",
        "127.0.0.1:0",
        "--api-admin",
        &format!("ops:{open}"),
    ]);
    assert!(!o.status.success(), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains(&open) && t.contains("readable by group or others") && t.contains("chmod 600"),
        "{t}"
    );

    for bad in ["ops", "bad name:/x", ":/x"] {
        let o = appliance(&["--api-admin", bad]);
        assert!(!o.status.success(), "{bad}: {}", text(&o));
        assert!(text(&o).contains("--api-admin"), "{bad}: {}", text(&o));
    }
    let o = appliance(&[
        "--api",
        "localhost:8443",
        "--api-admin",
        &format!("ops:{good}"),
    ]);
    assert!(!o.status.success());
    assert!(text(&o).contains("is not IP:PORT"), "{}", text(&o));
}

#[test]
fn the_api_table_in_the_config_file() {
    let d = tempfile::tempdir().unwrap();
    let pw = password_file(d.path(), 0o600);
    let cfg = d.path().join("appliance.toml");
    let write = |extra: &str| {
        std::fs::write(
            &cfg,
            format!(
                "[api]\nlisten = \"127.0.0.1:9443\"\nadmin = \"root\"\nadmin_password_file = \"{pw}\"\n{extra}"
            ),
        )
        .unwrap();
    };
    write("");
    let o = appliance(&["--config", cfg.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("management API: http://127.0.0.1:9443 (administrator root)"),
        "{}",
        text(&o)
    );
    // The flag overrides the file's address.
    let o = appliance(&["--config", cfg.to_str().unwrap(), "--api", "127.0.0.1:9444"]);
    assert!(text(&o).contains("http://127.0.0.1:9444"), "{}", text(&o));

    // TLS files are loaded before anything starts: a missing certificate is named.
    write("tls_cert = \"missing.pem\"\ntls_key = \"missing-key.pem\"\n");
    let o = appliance(&["--config", cfg.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(text(&o).contains("missing-key.pem"), "{}", text(&o));

    write("tls_cert = \"c.pem\"\n");
    let o = appliance(&["--config", cfg.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("appliance.toml:1:1: [api] TLS needs both tls_cert and tls_key"),
        "{}",
        text(&o)
    );
    write("password = \"hunter2\"\n");
    let o = appliance(&["--config", cfg.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("unknown field `password`"),
        "{}",
        text(&o)
    );
}

/// The appliance's range of session timeouts is the API's.
#[test]
fn session_timeout_ranges_agree() {
    assert_eq!(
        pcietun::appliance::config::API_SESSION_TIMEOUT_S,
        pcietun::mgmt::redfish::body::SESSION_TIMEOUT_RANGE
    );
    assert_eq!(
        pcietun::appliance::config::DEFAULT_API_LISTEN,
        pcietun::mgmt::config::DEFAULT_LISTEN
    );
}
