//! DMTF's Redfish Service Validator against the live management API (in-process server on
//! 127.0.0.1 over the in-memory pool, one assignment and one event subscription made so every
//! kind of resource exists),
//! through scripts/redfish-validate.sh: 0 errors. Skips loudly when the validator cannot be
//! installed (no python3 venv or no PyPI), and fails instead under `PCIETUN_REQUIRE_ALL=1`.

mod mgmt_common;
mod prereq;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use mgmt_common::*;

#[test]
fn redfish_service_validator_reports_no_error() {
    let api = start();
    let admin = api.admin();
    // The assignment names a VM and carries a lease, so its Connection carries
    // Oem.Pcietun.Vm and Oem.Pcietun.Lease for the validator.
    let body = serde_json::json!({
        "Endpoint": {"@odata.id": "/redfish/v1/Fabrics/PCIe/Endpoints/fn-nvme0"},
        "Oem": {"Pcietun": {"Vm": {"Name": "web1"}, "LeaseSeconds": 86400}},
    });
    assert_eq!(
        api.post(ADD_ALPHA, Auth::Token(&admin), &body.to_string())
            .status,
        202
    );
    // The Fabric's rules with something in every list: the rule set, a function of the
    // disconnected host beta (a pending reclaim), a lease (above), a schedule.
    let rules = serde_json::json!({"Oem": {"Pcietun": {"Rules": {"ReclaimAfterSeconds": 86400}}}});
    assert_eq!(
        api.patch(
            "/redfish/v1/Fabrics/PCIe",
            Auth::Token(&admin),
            &[],
            &rules.to_string()
        )
        .status,
        200
    );
    assert_eq!(
        api.post(
            "/redfish/v1/Fabrics/PCIe/Zones/beta/Actions/Zone.AddEndpoint",
            Auth::Token(&admin),
            &add_endpoint_body("dma0.vf1")
        )
        .status,
        202
    );
    let schedule = serde_json::json!({
        "Function": "dma0.vf2", "Host": "beta", "Start": "01:00", "End": "03:00", "Then": null,
    });
    let r = api.post(
        "/redfish/v1/Fabrics/PCIe/Actions/Oem/Pcietun.AddSchedule",
        Auth::Token(&admin),
        &schedule.to_string(),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        r.json["Oem"]["Pcietun"]["PendingReclaims"][0]["Function"], "dma0.vf1",
        "{}",
        r.text
    );
    api.user(&admin, "viewer", "ReadOnly");
    // A push subscription with every filter it can carry (its destination refuses nothing
    // and listens nowhere: the validator reads the resource, delivery does not matter).
    let sub = serde_json::json!({
        "Destination": "http://127.0.0.1:9/events", "Protocol": "Redfish", "Context": "validator",
        "EventTypes": ["StatusChange"], "RegistryPrefixes": ["ResourceEvent"],
        "MessageIds": ["ResourceEvent.ResourceStateChanged"],
        "OriginResources": [{"@odata.id": "/redfish/v1/Systems"}], "SubordinateResources": true,
    });
    let r = api.post(
        "/redfish/v1/EventService/Subscriptions",
        Auth::Token(&admin),
        &sub.to_string(),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, format!("{ADMIN_PW}\n")).unwrap();
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/redfish-validate.sh");
    let logdir = dir.path().join("logs");
    let out = Command::new("bash")
        .arg(script)
        .args(["--url", &api.url, "--user", ADMIN])
        .arg("--password-file")
        .arg(&pw)
        .arg("--logdir")
        .arg(&logdir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(77) {
        prereq::skip("redfish_service_validator_reports_no_error", stderr.trim());
        return;
    }
    assert!(
        out.status.success(),
        "the validator reported errors:\n{stdout}\n{stderr}\n{}",
        std::fs::read_to_string(logdir.join("stdout.txt")).unwrap_or_default()
    );
}
