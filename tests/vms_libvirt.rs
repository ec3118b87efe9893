//! The libvirt domain XML that docs/vms.md documents (contrib/libvirt/pcietun-vm.xml) is valid
//! for libvirt's own schema (`virt-xml-validate`, Debian package libvirt-clients with
//! libxml2-utils' xmllint), carries what a VM needs to take tunnelled functions, and agrees with
//! `pcietun host qemu-args`. A missing validator is a loud SKIPPED (a failure under
//! PCIETUN_REQUIRE_ALL=1).

mod prereq;

use std::path::PathBuf;
use std::process::Command;

use pcietun::host::vm::qemu::QemuArgs;

fn xml_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("contrib/libvirt/pcietun-vm.xml")
}

fn validator() -> bool {
    let have = |cmd: &str, arg: &str| {
        Command::new(cmd)
            .arg(arg)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !have("xmllint", "--version") || Command::new("virt-xml-validate").output().is_err() {
        prereq::skip(
            "libvirt domain XML validation",
            "virt-xml-validate or xmllint missing (apt-get install libvirt-clients libxml2-utils)",
        );
        return false;
    }
    true
}

fn validate(path: &std::path::Path) -> (bool, String) {
    let o = Command::new("virt-xml-validate")
        .arg(path)
        .arg("domain")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.success(), text)
}

#[test]
fn the_documented_domain_validates() {
    if !validator() {
        return;
    }
    let (ok, text) = validate(&xml_path());
    assert!(
        ok,
        "virt-xml-validate rejects {}: {text}",
        xml_path().display()
    );
    // The validator is not a rubber stamp: the same file with an element libvirt does not
    // know must fail.
    let xml = std::fs::read_to_string(xml_path()).unwrap();
    let broken = xml.replace("<memoryBacking>", "<memoryBacking><frobnicate/>");
    let f = tempfile::Builder::new().suffix(".xml").tempfile().unwrap();
    std::fs::write(f.path(), broken).unwrap();
    let (ok, text) = validate(f.path());
    assert!(!ok, "a broken domain validated: {text}");
}

#[test]
fn the_domain_has_what_a_tunnelled_card_needs_and_matches_qemu_args() {
    let xml = std::fs::read_to_string(xml_path()).unwrap();
    for needle in [
        "<source type='memfd'/>",
        "<access mode='shared'/>",
        "machine='q35'",
        "model='pcie-root-port'",
        "hotplug='on'",
        "<qemu:arg value='-qmp'/>",
        "server=on,wait=off'/>",
        "name='mem-reserve'",
        "name='pref64-reserve'",
    ] {
        assert!(xml.contains(needle), "pcietun-vm.xml lacks {needle}");
    }
    let ports = xml.matches("model='pcie-root-port'>").count();
    assert!(ports >= 2, "only {ports} spare root port(s)");
    // The -global that qemu-args prints for native hot-plug is the one the XML passes.
    let args = QemuArgs::default().args();
    let global = args
        .iter()
        .find(|a| a.starts_with("ICH9-LPC."))
        .expect("qemu-args sets native hot-plug");
    assert!(xml.contains(&format!("<qemu:arg value='{global}'/>")));
    // Reserves: the XML's bytes are qemu-args' defaults.
    let d = QemuArgs::default();
    assert!(xml.contains(&format!(
        "name='mem-reserve' type='unsigned' value='{}'",
        d.mem_reserve
    )));
    assert!(xml.contains(&format!(
        "name='pref64-reserve' type='unsigned' value='{}'",
        d.pref64_reserve
    )));
}
