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
