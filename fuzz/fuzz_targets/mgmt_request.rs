//! Fuzz the management API's request handling: the strict JSON body parsers (PATCH, POST,
//! actions) directly, and whole requests (method, path, headers, body) through the Redfish
//! service core over the in-memory pool, authenticated by a session token. Nothing may panic;
//! every answer has a real status, and every JSON answer parses.
#![no_main]

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use pcietun::mgmt::auth::hash_password;
use pcietun::mgmt::fake::FakePool;
use pcietun::mgmt::redfish::{body, Service, ServiceOptions};

const PATHS: &[&str] = &[
    "/redfish/v1/Fabrics/PCIe/Zones/alpha",
    "/redfish/v1/Fabrics/PCIe/Zones/alpha/Actions/Zone.AddEndpoint",
    "/redfish/v1/Fabrics/PCIe/Zones/beta/Actions/Zone.RemoveEndpoint",
    "/redfish/v1/Fabrics/PCIe/Connections/nvme0",
    "/redfish/v1/SessionService",
    "/redfish/v1/SessionService/Sessions",
    "/redfish/v1/AccountService/Accounts",
    "/redfish/v1/AccountService/Accounts/2",
    "/redfish/v1/EventService/Subscriptions",
    "/redfish/v1/EventService/Subscriptions/1",
    "/redfish/v1/Chassis/appliance/PCIeDevices/dma0/PCIeFunctions/dma0/Actions/Oem/Pcietun.SetVfCount",
    "/redfish/v1/Chassis/appliance/PCIeDevices/dma0/PCIeFunctions/dma0.vf1",
    "/redfish/v1/Chassis/appliance/Actions/Oem/Pcietun.AddDevice",
    "/redfish/v1/Chassis/appliance/PCIeDevices/dma0/Actions/Oem/Pcietun.RemoveDevice",
    "/redfish/v1/",
];
const METHODS: &[&str] = &["GET", "POST", "PATCH", "DELETE", "HEAD", "PUT"];

fn service() -> &'static (Service, String) {
    static S: OnceLock<(Service, String)> = OnceLock::new();
    S.get_or_init(|| {
        let opts = ServiceOptions::new("admin", hash_password("admin-password").unwrap());
        let svc = Service::new(Arc::new(FakePool::sample()), opts).unwrap();
        let login = http::Request::builder()
            .method("POST")
            .uri("/redfish/v1/SessionService/Sessions")
            .body(Bytes::from_static(
                br#"{"UserName":"admin","Password":"admin-password"}"#,
            ))
            .unwrap();
        let resp = svc.handle(login);
        let token = resp.headers()["x-auth-token"].to_str().unwrap().to_string();
        (svc, token)
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = body::zone_patch(data);
    let _ = body::endpoint_action(data, "Zone.AddEndpoint");
    let _ = body::session_create(data);
    let _ = body::account_create(data);
    let _ = body::account_patch(data);
    let _ = body::session_service_patch(data);
    let _ = body::device_create(data, "Pcietun.AddDevice");

    let [m, p, flags, rest @ ..] = data else {
        return;
    };
    let (svc, token) = service();
    // With flag bit 0 the path comes from the input (up to the first newline).
    let (path, body) = if flags & 1 == 1 {
        let end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
        (
            String::from_utf8_lossy(&rest[..end]).into_owned(),
            &rest[(end + 1).min(rest.len())..],
        )
    } else {
        (PATHS[usize::from(*p) % PATHS.len()].to_string(), rest)
    };
    let method = METHODS[usize::from(*m) % METHODS.len()];
    let mut req = http::Request::builder()
        .method(method)
        .header("X-Auth-Token", token.as_str());
    if flags & 2 == 2 {
        req = req.header("If-Match", "W/\"0123456789abcdef\"");
    }
    let Ok(req) = req.uri(path.as_str()).body(Bytes::copy_from_slice(body)) else {
        return;
    };
    let resp = svc.handle(req);
    let status = resp.status().as_u16();
    assert!((200..600).contains(&status));
    // HEAD answers carry the headers of the GET, without its body.
    let json = method != "HEAD"
        && resp
            .headers()
            .get("content-type")
            .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if json {
        assert!(serde_json::from_slice::<serde_json::Value>(resp.body()).is_ok());
    }
});
