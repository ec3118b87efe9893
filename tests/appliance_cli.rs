//! `pcietun appliance` as a process: configuration errors name the file and line and nothing
//! starts; a valid configuration builds every device (`--check`).

use std::process::Command;

fn pcietun() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pcietun"))
}

#[test]
fn bad_config_names_file_line_and_problem() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("appliance.toml");
    std::fs::write(
        &cfg,
        "listen = [\"udp:127.0.0.1:7470\"]\n\n[[device]]\nkind = \"nvme\"\npath = \"d.img\"\n\n[[device]]\nkind = \"dma\"\nbuffer = \"lots\"\n",
    )
    .unwrap();
    let out = pcietun()
        .args(["appliance", "--check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}:9:10: invalid size \"lots\"", cfg.display())),
        "{err}"
    );
    assert!(out.stdout.is_empty(), "nothing started");
}

#[test]
fn missing_backing_file_is_refused_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("appliance.toml");
    std::fs::write(
        &cfg,
        "[[device]]\nkind = \"dma\"\n\n[[device]]\nkind = \"nvme\"\npath = \"missing.img\"\n",
    )
    .unwrap();
    let out = pcietun()
        .args(["appliance", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("missing.img"), "{err}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("appliance ready"));
}

#[test]
fn check_builds_every_device() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    let out = pcietun()
        .args(["appliance", "--check", "--device"])
        .arg(format!("nvme={},size=8M", img.display()))
        .args(["--device", "dma,buffer=64K", "--listen", "udp:127.0.0.1:0"])
        .arg("--device")
        .arg(concat!(
            "replay=",
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/lspci/vmware-nvme.txt,bar0=16K"
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        s.contains("3 function(s): 00.0 nvme, 01.0 dma, 02.0 replay"),
        "{s}"
    );
    assert_eq!(
        std::fs::metadata(&img).unwrap().len(),
        8 << 20,
        "backing file created"
    );
}

/// The development key is public: without `--key` the appliance refuses to listen anywhere but
/// loopback (issue 13 item 4) — and says what to do instead.
#[test]
fn development_key_refused_off_loopback() {
    for listen in ["udp:0.0.0.0:0", "udp:[::]:0", "eth:lo"] {
        let out = pcietun()
            .args([
                "appliance",
                "--check",
                "--device",
                "dma",
                "--listen",
                listen,
            ])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{listen} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("only allowed on loopback") && err.contains("pcietun keygen"),
            "{err}"
        );
        assert!(out.stdout.is_empty());
    }
    // With a key of its own and a host listed, the same listen address is fine.
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("appliance.key");
    let host = dir.path().join("host.key");
    for k in [&key, &host] {
        assert!(pcietun()
            .arg("keygen")
            .arg(k)
            .output()
            .unwrap()
            .status
            .success());
    }
    let hpub = pcietun().arg("pubkey").arg(&host).output().unwrap().stdout;
    let hpub = String::from_utf8(hpub).unwrap();
    let out = pcietun()
        .args([
            "appliance",
            "--check",
            "--device",
            "dma",
            "--listen",
            "udp:0.0.0.0:0",
        ])
        .arg("--key")
        .arg(&key)
        .arg("--host")
        .arg(format!("web1={}", hpub.trim()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The key may come from the environment instead of a file.
    let secret = std::fs::read_to_string(&key).unwrap();
    let out = pcietun()
        .args([
            "appliance",
            "--check",
            "--device",
            "dma",
            "--listen",
            "udp:0.0.0.0:0",
        ])
        .arg("--host")
        .arg(format!("web1={}", hpub.trim()))
        .env("PCIETUN_PRIVATE_KEY", secret.trim())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains(secret.trim()));
    // A key file others can read is refused.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
    let out = pcietun()
        .args(["appliance", "--check", "--device", "dma"])
        .arg("--key")
        .arg(&key)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("readable by group or others"));
}
