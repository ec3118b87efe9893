//! Shared harness of the management API tests: an in-process server on 127.0.0.1:0 over the
//! in-memory pool, a manual clock, and a raw HTTP helper that shows every status and header.
#![allow(dead_code)]

use std::sync::Arc;

use pcietun::mgmt::auth::hash_password;
use pcietun::mgmt::clock::ManualClock;
use pcietun::mgmt::fake::FakePool;
use pcietun::mgmt::redfish::{Service, ServiceOptions};
use pcietun::mgmt::{Server, ServerHandle};
use serde_json::Value;

pub const ADMIN: &str = "admin";
pub const ADMIN_PW: &str = "admin-password-1";

pub struct Api {
    pub server: ServerHandle,
    pub service: Arc<Service>,
    pub pool: Arc<FakePool>,
    pub clock: Arc<ManualClock>,
    pub url: String,
    agent: ureq::Agent,
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub text: String,
    pub json: Value,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The Redfish error code (`Base.1.22.X`).
    pub fn code(&self) -> &str {
        self.json
            .pointer("/error/code")
            .and_then(Value::as_str)
            .unwrap_or("")
    }

    pub fn message(&self) -> &str {
        self.json
            .pointer("/error/message")
            .and_then(Value::as_str)
            .unwrap_or("")
    }
}

/// How a request authenticates.
#[derive(Clone, Copy)]
pub enum Auth<'a> {
    None,
    Token(&'a str),
    Basic(&'a str, &'a str),
}

pub fn start() -> Api {
    start_with(FakePool::sample())
}

pub fn start_with(pool: FakePool) -> Api {
    start_custom(Arc::new(pool), |_| {})
}

/// A server over `pool` whose options `tune` adjusts (its store, the configured rules); the
/// clock is the harness's manual one.
pub fn start_custom(pool: Arc<FakePool>, tune: impl FnOnce(&mut ServiceOptions)) -> Api {
    let clock = Arc::new(ManualClock::new());
    let mut opts = ServiceOptions::new(ADMIN, hash_password(ADMIN_PW).unwrap());
    opts.clock = clock.clone();
    tune(&mut opts);
    let service = Arc::new(Service::new(pool.clone(), opts).unwrap());
    let server =
        Server::start_service(service.clone(), "127.0.0.1:0".parse().unwrap(), None).unwrap();
    let url = server.url();
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into();
    Api {
        server,
        service,
        pool,
        clock,
        url,
        agent,
    }
}

impl Api {
    pub fn req(
        &self,
        method: &str,
        path: &str,
        auth: Auth<'_>,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Resp {
        use base64::Engine;
        let mut b = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.url));
        match auth {
            Auth::None => {}
            Auth::Token(t) => b = b.header("X-Auth-Token", t),
            Auth::Basic(u, p) => {
                let v = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
                b = b.header("Authorization", format!("Basic {v}"));
            }
        }
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        if body.is_some()
            && !headers
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case("content-type"))
        {
            b = b.header("Content-Type", "application/json");
        }
        let req = b.body(body.unwrap_or_default().to_vec()).unwrap();
        let mut resp = self.agent.run(req).expect("request reaches the server");
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Resp {
            status,
            headers,
            text,
            json,
        }
    }

    pub fn get(&self, path: &str, auth: Auth<'_>) -> Resp {
        self.req("GET", path, auth, &[], None)
    }

    pub fn post(&self, path: &str, auth: Auth<'_>, body: &str) -> Resp {
        self.req("POST", path, auth, &[], Some(body.as_bytes()))
    }

    pub fn patch(&self, path: &str, auth: Auth<'_>, headers: &[(&str, &str)], body: &str) -> Resp {
        self.req("PATCH", path, auth, headers, Some(body.as_bytes()))
    }

    pub fn delete(&self, path: &str, auth: Auth<'_>) -> Resp {
        self.req("DELETE", path, auth, &[], None)
    }

    /// Log in; returns (token, session URI).
    pub fn login(&self, user: &str, password: &str) -> (String, String) {
        let r = self.post(
            "/redfish/v1/SessionService/Sessions",
            Auth::None,
            &serde_json::json!({"UserName": user, "Password": password}).to_string(),
        );
        assert_eq!(r.status, 201, "{}", r.text);
        (
            r.header("X-Auth-Token").unwrap().to_string(),
            r.header("Location").unwrap().to_string(),
        )
    }

    pub fn admin(&self) -> String {
        self.login(ADMIN, ADMIN_PW).0
    }

    /// Create an account with `role` and log it in.
    pub fn user(&self, admin: &str, name: &str, role: &str) -> String {
        let pw = format!("{name}-password");
        let r = self.post(
            "/redfish/v1/AccountService/Accounts",
            Auth::Token(admin),
            &serde_json::json!({"UserName": name, "Password": pw, "RoleId": role}).to_string(),
        );
        assert_eq!(r.status, 201, "{}", r.text);
        self.login(name, &pw).0
    }

    /// The state name of a function in the pool.
    pub fn state(&self, function: &str) -> String {
        use pcietun::mgmt::Pool;
        self.pool
            .functions()
            .into_iter()
            .find(|f| f.id == function)
            .map(|f| f.state.name().to_string())
            .unwrap()
    }
}

pub fn add_endpoint_body(function: &str) -> String {
    serde_json::json!({"Endpoint": {"@odata.id": format!("/redfish/v1/Fabrics/PCIe/Endpoints/fn-{function}")}})
        .to_string()
}

pub const ZONE_ALPHA: &str = "/redfish/v1/Fabrics/PCIe/Zones/alpha";
pub const ADD_ALPHA: &str = "/redfish/v1/Fabrics/PCIe/Zones/alpha/Actions/Zone.AddEndpoint";
pub const REMOVE_ALPHA: &str = "/redfish/v1/Fabrics/PCIe/Zones/alpha/Actions/Zone.RemoveEndpoint";
