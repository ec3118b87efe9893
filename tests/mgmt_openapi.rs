//! Holds the service to docs/api.yaml (OpenAPI 3.1): every documented path answers with the
//! documented methods (and no others, per its `Allow` header), and every resource the service
//! links to from its root is a documented path.

mod mgmt_common;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use mgmt_common::*;
use serde_json::Value;

/// `paths:` of the document: template → documented methods (upper case).
fn documented() -> BTreeMap<String, BTreeSet<String>> {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/api.yaml")).unwrap();
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut in_paths = false;
    let mut current: Option<String> = None;
    for line in text.lines() {
        if !line.starts_with(' ') {
            in_paths = line == "paths:";
            current = None;
            continue;
        }
        if !in_paths {
            continue;
        }
        if let Some(p) = line.strip_prefix("  /").and_then(|l| l.strip_suffix(':')) {
            current = Some(format!("/{p}"));
            out.entry(format!("/{p}")).or_default();
        } else if let (Some(cur), Some(op)) = (&current, line.strip_prefix("    ")) {
            for m in ["get", "post", "patch", "delete", "put"] {
                if op.starts_with(&format!("{m}:")) {
                    out.get_mut(cur).unwrap().insert(m.to_uppercase());
                }
            }
        }
    }
    assert!(out.len() > 30, "parsed {} paths", out.len());
    out
}

fn matches(template: &str, uri: &str) -> bool {
    let t: Vec<&str> = template.trim_end_matches('/').split('/').collect();
    let u: Vec<&str> = uri.trim_end_matches('/').split('/').collect();
    t.len() == u.len()
        && t.iter()
            .zip(&u)
            .all(|(a, b)| (a.starts_with('{') && a.ends_with('}')) || a == b)
}

fn collect_links(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            for (k, x) in o {
                if k == "@odata.id" {
                    out.extend(x.as_str().map(str::to_string));
                } else {
                    collect_links(x, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| collect_links(x, out)),
        _ => {}
    }
}

#[test]
fn the_service_is_what_api_yaml_says() {
    let api = start();
    let admin = api.admin();
    assert_eq!(
        api.post(ADD_ALPHA, Auth::Token(&admin), &add_endpoint_body("nvme0"))
            .status,
        202
    );
    let sub = api.post(
        "/redfish/v1/EventService/Subscriptions",
        Auth::Token(&admin),
        r#"{"Destination": "http://127.0.0.1:9/events", "Protocol": "Redfish"}"#,
    );
    assert_eq!(sub.status, 201, "{}", sub.text);
    let docs = documented();
    let sessions = api.get("/redfish/v1/SessionService/Sessions", Auth::Token(&admin));
    let session = sessions.json["Members"][0]["@odata.id"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    let example = |name: &str| -> String {
        match name {
            "appliance" => "appliance".into(),
            "device" | "function" => "nvme0".into(),
            "host" => "alpha".into(),
            "fabric" => "PCIe".into(),
            "endpoint" => "fn-nvme0".into(),
            "task" | "account" | "subscription" => "1".into(),
            "session" => session.clone(),
            "role" => "Operator".into(),
            other => panic!("no example for {{{other}}}"),
        }
    };

    for (template, methods) in &docs {
        let uri: String = template
            .split('/')
            .map(
                |s| match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                    Some(name) => example(name),
                    None => s.to_string(),
                },
            )
            .collect::<Vec<_>>()
            .join("/");
        if template.ends_with("/EventService/SSE") {
            // A live stream never ends; that it streams is tests/mgmt_events.rs's job. Here:
            // it exists with exactly the documented methods.
            let r = api.post(&uri, Auth::Token(&admin), "{}");
            assert_eq!(r.status, 405, "POST {uri}: {}", r.text);
            assert_eq!(r.header("Allow"), Some("GET, HEAD"), "{template}");
            assert_eq!(methods, &BTreeSet::from(["GET".to_string()]));
        } else if methods.contains("GET") {
            let r = api.get(&uri, Auth::Token(&admin));
            assert_eq!(
                r.status, 200,
                "GET {uri} (documented as {template}): {}",
                r.text
            );
            let allow: BTreeSet<String> = r
                .header("Allow")
                .unwrap_or_else(|| panic!("{uri}: no Allow"))
                .split(',')
                .map(|m| m.trim().to_string())
                .filter(|m| m != "HEAD")
                .collect();
            assert_eq!(
                &allow, methods,
                "{template}: the service allows {allow:?}, the document says {methods:?}"
            );
        } else {
            // Action targets: POST-only, and they exist (a GET is 405, not 404).
            let r = api.get(&uri, Auth::Token(&admin));
            assert_eq!(r.status, 405, "GET {uri}: {}", r.text);
            let allow: BTreeSet<String> = r
                .header("Allow")
                .unwrap()
                .split(',')
                .map(|m| m.trim().to_string())
                .collect();
            assert_eq!(&allow, methods, "{template}");
        }
    }

    // Everything reachable from the root is documented.
    let mut seen = BTreeSet::new();
    let mut queue = VecDeque::from(["/redfish/v1/".to_string()]);
    while let Some(uri) = queue.pop_front() {
        if !seen.insert(uri.clone()) {
            continue;
        }
        assert!(
            docs.keys().any(|t| matches(t, &uri)),
            "{uri} is not in docs/api.yaml"
        );
        let r = api.get(&uri, Auth::Token(&admin));
        let mut links = Vec::new();
        collect_links(&r.json, &mut links);
        queue.extend(links);
    }
    assert!(seen.len() > 30, "crawled only {seen:?}");
}
