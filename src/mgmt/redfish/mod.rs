//! The Redfish service (DSP0266): a synchronous core that turns one HTTP request into one
//! HTTP response, with no sockets, threads or runtime inside.
//!
//! [`Service::handle`] does, in this order: path parsing and percent-decoding;
//! authentication (every URI but `/redfish`, `/redfish/v1/`, `/redfish/v1/$metadata`,
//! `/redfish/v1/odata` and the login POST needs an `X-Auth-Token` session or HTTP Basic
//! credentials: 401); routing (404 for no resource, 405 for a method the resource does not
//! allow); the privilege the method needs on that resource (403); strict body parsing
//! ([`body`], 400); `If-Match` against the resource's current ETag (412); and only then the
//! change. Every refusal is a Redfish error body ([`error`]) and changes nothing.
//!
//! The HTTP stack ([`crate::mgmt::server`]) only carries bytes to and from this core, which is
//! why tests and the fuzz target can drive the whole service without a socket.
//!
//! Resource tree (the DMTF schemas' shape; `Oem.Pcietun` only where the standard has no
//! property, described by the OEM CSDL at `/redfish/v1/Schemas/Pcietun_v1.xml`):
//!
//! * `Chassis/{appliance}/PCIeDevices/{card}/PCIeFunctions/{function}` — the inventory (the
//!   OEM actions `Chassis/{appliance}/Actions/Oem/Pcietun.AddDevice` and
//!   `PCIeDevices/{card}/Actions/Oem/Pcietun.RemoveDevice` add and remove cards; the DMTF
//!   schemas make the PCIeDevice collection neither insertable nor deletable).
//! * `Fabrics/PCIe/Endpoints/{host-H | fn-F}` — one Initiator per host, one Target per function.
//! * `Fabrics/PCIe/Zones/{H}` — one ZoneOfEndpoints per host; membership *is* the assignment
//!   (`#Zone.AddEndpoint`, `#Zone.RemoveEndpoint`, PATCH of `Links/Endpoints`).
//! * `Fabrics/PCIe/Connections/{F}` — one per assignment (DELETE unassigns).
//! * `Systems/{H}` — the hosts.
//! * `TaskService/Tasks/{n}`, `SessionService/Sessions/{id}`, `AccountService/{Accounts,Roles}`.

pub mod body;
pub mod error;
pub mod events;
mod fabric;
mod inventory;
mod root;
mod rules;
mod schedules;
mod security;
mod subscriptions;
pub mod tasks;
mod uri;

pub use security::StartError;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use bytes::Bytes;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::mgmt::auth::{AccountView, Privilege, Sessions};
use crate::mgmt::clock::{Clock, SystemClock};
use crate::mgmt::pool::{valid_id, ApplianceInfo, EventSink, FunctionInfo, HostInfo, Pool};
use crate::mgmt::store::{Durable, MemoryStore, Store};
use crate::sync::MutexExt;
use error::{allow_header, ApiError, ApiResult};
use tasks::TaskTable;

/// The one fabric this service exposes.
pub const FABRIC: &str = "PCIe";

/// Default largest request body.
pub const DEFAULT_MAX_BODY: usize = 64 * 1024;

/// Default session idle timeout.
pub const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// How the service starts.
#[derive(Debug)]
pub struct ServiceOptions {
    /// Name of the first administrator.
    pub admin: String,
    /// Argon2 PHC hash of its password ([`crate::mgmt::auth::hash_password`]).
    pub admin_hash: String,
    /// Session idle timeout.
    pub session_timeout: Duration,
    /// Largest request body accepted.
    pub max_body: usize,
    /// Time source.
    pub clock: Arc<dyn Clock>,
    /// Where accounts and acknowledged assignments persist ([`crate::mgmt::store`]).
    pub store: Arc<dyn Store>,
    /// The store's name in logs (its path, or "memory").
    pub store_name: String,
    /// The lost-session rule of the configuration (`[api] reclaim_after_s`; docs/api.md
    /// "Rules"); rules stored by the API win over it.
    pub reclaim_after: Option<Duration>,
    /// How event subscriptions retry a failed delivery (`DeliveryRetryAttempts`,
    /// `DeliveryRetryIntervalSeconds` of the EventService).
    pub delivery_retry: crate::mgmt::push::RetryPolicy,
}

impl ServiceOptions {
    /// Defaults with the given first administrator.
    pub fn new(admin: impl Into<String>, admin_hash: String) -> Self {
        ServiceOptions {
            admin: admin.into(),
            admin_hash,
            session_timeout: DEFAULT_SESSION_TIMEOUT,
            max_body: DEFAULT_MAX_BODY,
            clock: Arc::new(SystemClock),
            store: Arc::new(MemoryStore::new()),
            store_name: "memory".into(),
            reclaim_after: None,
            delivery_retry: crate::mgmt::push::RetryPolicy::default(),
        }
    }
}

struct AuthState {
    accounts: crate::mgmt::auth::Accounts,
    sessions: Sessions,
}

/// The Redfish service.
pub struct Service {
    pool: Arc<dyn Pool>,
    clock: Arc<dyn Clock>,
    auth: Mutex<AuthState>,
    tasks: Arc<TaskTable>,
    /// Serialises check-then-change sequences (If-Match, then the pool call).
    change: Mutex<()>,
    uuid: String,
    max_body: usize,
    events: Arc<events::EventLog>,
    /// The store every acknowledged change is committed to first.
    durable: Arc<Durable>,
    /// The lost-session rule and the leases ([`crate::mgmt::rules`]).
    rules: Arc<Mutex<crate::mgmt::rules::Rules>>,
    /// The schedules ([`crate::mgmt::schedule`]).
    schedules: Mutex<crate::mgmt::schedule::Schedules>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("uuid", &self.uuid)
            .field("max_body", &self.max_body)
            .finish_non_exhaustive()
    }
}

/// What an open event stream was authorised with.
#[derive(Clone)]
pub enum StreamCredential {
    /// A session token.
    Token(String),
    /// HTTP Basic credentials of this account.
    Account(String),
}

impl std::fmt::Debug for StreamCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StreamCredential::Token(_) => f.write_str("Token(hidden)"),
            StreamCredential::Account(a) => write!(f, "Account({a})"),
        }
    }
}

/// The `Last-Event-ID` of a request, if it has a usable one.
pub fn last_event_id(headers: &HeaderMap) -> Option<u64> {
    headers
        .get("Last-Event-ID")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// Who is making a request.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    pub account: AccountView,
    /// The session used, if the request came with a token.
    pub session: Option<String>,
}

impl Caller {
    pub fn require(&self, p: Privilege) -> ApiResult<()> {
        if self.account.role.has(p) {
            Ok(())
        } else {
            Err(ApiError::insufficient_privilege(
                &self.account.user,
                self.account.role.id(),
                p.name(),
            ))
        }
    }

    pub fn has(&self, p: Privilege) -> bool {
        self.account.role.has(p)
    }
}

/// A consistent view of the pool for one request.
pub(crate) struct Snapshot {
    pub appliance: ApplianceInfo,
    pub functions: Vec<FunctionInfo>,
    pub hosts: Vec<HostInfo>,
}

impl Snapshot {
    pub fn function(&self, id: &str) -> Option<&FunctionInfo> {
        self.functions.iter().find(|f| f.id == id)
    }

    pub fn host(&self, id: &str) -> Option<&HostInfo> {
        self.hosts.iter().find(|h| h.id == id)
    }

    /// Card ids, in inventory order.
    pub fn devices(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for f in &self.functions {
            if !out.contains(&f.device.as_str()) {
                out.push(&f.device);
            }
        }
        out
    }
}

/// A successful response body and how to send it.
pub(crate) struct Reply {
    pub status: StatusCode,
    pub body: Option<Value>,
    /// A non-JSON body and its content type (the CSDL documents, the event backlog).
    pub raw: Option<(&'static str, String)>,
    pub headers: Vec<(header::HeaderName, HeaderValue)>,
}

impl Reply {
    /// 200 with a resource.
    pub fn ok(body: Value) -> Self {
        Reply {
            status: StatusCode::OK,
            body: Some(body),
            raw: None,
            headers: Vec::new(),
        }
    }

    /// 200 with an XML document.
    pub fn xml(doc: String) -> Self {
        Reply::raw("application/xml; charset=utf-8", doc)
    }

    /// 200 with a non-JSON body.
    pub fn raw(content_type: &'static str, text: String) -> Self {
        Reply {
            status: StatusCode::OK,
            body: None,
            raw: Some((content_type, text)),
            headers: Vec::new(),
        }
    }

    /// A status without a body.
    pub fn empty(status: StatusCode) -> Self {
        Reply {
            status,
            body: None,
            raw: None,
            headers: Vec::new(),
        }
    }

    /// 202 with task `id` of `tasks` and its `Location` (how every long operation answers:
    /// assign, unassign, adding and removing a card).
    pub fn accepted_task(tasks: &tasks::TaskTable, id: u64) -> ApiResult<Self> {
        let task = tasks
            .get(id)
            .ok_or_else(|| ApiError::internal("the task vanished"))?;
        Ok(Reply::ok(tasks::task_json(&task))
            .status(StatusCode::ACCEPTED)
            .header(header::LOCATION, &tasks::task_uri(id)))
    }

    pub fn status(mut self, s: StatusCode) -> Self {
        self.status = s;
        self
    }

    pub fn header(mut self, name: header::HeaderName, value: &str) -> Self {
        if let Ok(v) = HeaderValue::from_str(value) {
            self.headers.push((name, v));
        }
        self
    }
}

/// The weak ETag of a resource: a hash of its JSON without `@odata.etag`.
pub(crate) fn etag_of(v: &Value) -> String {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("@odata.etag");
    }
    let digest = Sha256::digest(serde_json::to_vec(&v).unwrap_or_default());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("W/\"{hex}\"")
}

/// Add `@odata.etag` to a resource.
pub(crate) fn with_etag(mut v: Value) -> Value {
    let tag = etag_of(&v);
    if let Some(o) = v.as_object_mut() {
        o.insert("@odata.etag".into(), Value::String(tag));
    }
    v
}

/// Whether an `If-Match` header value (a list of ETags or `*`) accepts `current`.
pub(crate) fn if_match_accepts(header: &str, current: &str) -> bool {
    let weak = |s: &str| s.trim().trim_start_matches("W/").to_string();
    header
        .split(',')
        .any(|t| t.trim() == "*" || weak(t) == weak(current))
}

/// Check the request's `If-Match` (if any) against a resource's current ETag.
pub(crate) fn check_if_match(headers: &HeaderMap, uri: &str, current: &str) -> ApiResult<()> {
    let Some(v) = headers.get(header::IF_MATCH) else {
        return Ok(());
    };
    let v = v
        .to_str()
        .map_err(|_| ApiError::header_invalid("If-Match", "not ASCII"))?;
    if if_match_accepts(v, current) {
        Ok(())
    } else {
        Err(ApiError::precondition_failed(uri, current))
    }
}

/// The parsed route of a request path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route<'a> {
    Version,
    Root,
    OData,
    Metadata,
    OemSchema,
    ChassisCollection,
    Chassis(&'a str),
    PcieDevices(&'a str),
    PcieDevice(&'a str, &'a str),
    PcieFunctions(&'a str, &'a str),
    PcieFunction(&'a str, &'a str, &'a str),
    Systems,
    System(&'a str),
    Fabrics,
    Fabric(&'a str),
    Endpoints(&'a str),
    Endpoint(&'a str, &'a str),
    Zones(&'a str),
    Zone(&'a str, &'a str),
    ZoneAction(&'a str, &'a str, &'a str),
    /// `Fabrics/{f}/Actions/Oem/{action}` (`Pcietun.AddSchedule`, `Pcietun.RemoveSchedule`).
    FabricAction(&'a str, &'a str),
    /// `Chassis/{c}/Actions/Oem/{action}` (`Pcietun.AddDevice`).
    ChassisAction(&'a str, &'a str),
    /// `Chassis/{c}/PCIeDevices/{d}/Actions/Oem/{action}` (`Pcietun.RemoveDevice`).
    DeviceAction(&'a str, &'a str, &'a str),
    /// `Chassis/{c}/PCIeDevices/{d}/PCIeFunctions/{f}/Actions/Oem/{action}`
    /// (`Pcietun.SetVfCount`).
    FunctionAction(&'a str, &'a str, &'a str, &'a str),
    Connections(&'a str),
    Connection(&'a str, &'a str),
    TaskService,
    Tasks,
    Task(&'a str),
    SessionService,
    Sessions,
    Session(&'a str),
    AccountService,
    Accounts,
    Account(&'a str),
    Roles,
    Role(&'a str),
    EventService,
    Subscriptions,
    Subscription(&'a str),
    EventStream,
    /// `/metrics`, the Prometheus exposition (beside the Redfish tree, authenticated like it).
    Metrics,
}

const GET: &[Method] = &[Method::GET, Method::HEAD];
const GET_PATCH: &[Method] = &[Method::GET, Method::HEAD, Method::PATCH];
const GET_POST: &[Method] = &[Method::GET, Method::HEAD, Method::POST];
const GET_DELETE: &[Method] = &[Method::GET, Method::HEAD, Method::DELETE];
const GET_PATCH_DELETE: &[Method] = &[Method::GET, Method::HEAD, Method::PATCH, Method::DELETE];
const POST: &[Method] = &[Method::POST];

impl<'a> Route<'a> {
    fn parse(segs: &[&'a str]) -> Option<Self> {
        use Route::*;
        Some(match segs {
            ["redfish"] => Version,
            ["redfish", "v1"] => Root,
            ["redfish", "v1", "odata"] => OData,
            ["redfish", "v1", "$metadata"] => Metadata,
            ["redfish", "v1", "Schemas", "Pcietun_v1.xml"] => OemSchema,
            ["redfish", "v1", "Chassis"] => ChassisCollection,
            ["redfish", "v1", "Chassis", c] => Chassis(c),
            ["redfish", "v1", "Chassis", c, "Actions", "Oem", a] => ChassisAction(c, a),
            ["redfish", "v1", "Chassis", c, "PCIeDevices"] => PcieDevices(c),
            ["redfish", "v1", "Chassis", c, "PCIeDevices", d, "Actions", "Oem", a] => {
                DeviceAction(c, d, a)
            }
            ["redfish", "v1", "Chassis", c, "PCIeDevices", d] => PcieDevice(c, d),
            ["redfish", "v1", "Chassis", c, "PCIeDevices", d, "PCIeFunctions"] => {
                PcieFunctions(c, d)
            }
            ["redfish", "v1", "Chassis", c, "PCIeDevices", d, "PCIeFunctions", f] => {
                PcieFunction(c, d, f)
            }
            ["redfish", "v1", "Chassis", c, "PCIeDevices", d, "PCIeFunctions", f, "Actions", "Oem", a] => {
                FunctionAction(c, d, f, a)
            }
            ["redfish", "v1", "Systems"] => Systems,
            ["redfish", "v1", "Systems", h] => System(h),
            ["redfish", "v1", "Fabrics"] => Fabrics,
            ["redfish", "v1", "Fabrics", f] => Fabric(f),
            ["redfish", "v1", "Fabrics", f, "Actions", "Oem", a] => FabricAction(f, a),
            ["redfish", "v1", "Fabrics", f, "Endpoints"] => Endpoints(f),
            ["redfish", "v1", "Fabrics", f, "Endpoints", e] => Endpoint(f, e),
            ["redfish", "v1", "Fabrics", f, "Zones"] => Zones(f),
            ["redfish", "v1", "Fabrics", f, "Zones", z] => Zone(f, z),
            ["redfish", "v1", "Fabrics", f, "Zones", z, "Actions", a] => ZoneAction(f, z, a),
            ["redfish", "v1", "Fabrics", f, "Connections"] => Connections(f),
            ["redfish", "v1", "Fabrics", f, "Connections", c] => Connection(f, c),
            ["redfish", "v1", "TaskService"] => TaskService,
            ["redfish", "v1", "TaskService", "Tasks"] => Tasks,
            ["redfish", "v1", "TaskService", "Tasks", t] => Task(t),
            ["redfish", "v1", "SessionService"] => SessionService,
            ["redfish", "v1", "SessionService", "Sessions"] => Sessions,
            ["redfish", "v1", "SessionService", "Sessions", s] => Session(s),
            ["redfish", "v1", "AccountService"] => AccountService,
            ["redfish", "v1", "AccountService", "Accounts"] => Accounts,
            ["redfish", "v1", "AccountService", "Accounts", a] => Account(a),
            ["redfish", "v1", "AccountService", "Roles"] => Roles,
            ["redfish", "v1", "AccountService", "Roles", r] => Role(r),
            ["redfish", "v1", "EventService"] => EventService,
            ["redfish", "v1", "EventService", "Subscriptions"] => Subscriptions,
            ["redfish", "v1", "EventService", "Subscriptions", s] => Subscription(s),
            ["redfish", "v1", "EventService", "SSE"] => EventStream,
            ["metrics"] => Metrics,
            _ => return None,
        })
    }

    /// The methods the resource allows.
    fn methods(self) -> &'static [Method] {
        use Route::*;
        match self {
            Zone(..) | Account(..) => {
                if matches!(self, Account(..)) {
                    GET_PATCH_DELETE
                } else {
                    GET_PATCH
                }
            }
            SessionService | Fabric(..) => GET_PATCH,
            ZoneAction(..) | ChassisAction(..) | DeviceAction(..) | FabricAction(..) => POST,
            FunctionAction(..) => POST,
            Sessions | Accounts | Subscriptions => GET_POST,
            Connection(..) => GET_PATCH_DELETE,
            Session(..) | Subscription(..) => GET_DELETE,
            _ => GET,
        }
    }

    /// Whether the request needs no credentials.
    fn public(self, method: &Method) -> bool {
        match self {
            Route::Version | Route::Root | Route::OData | Route::Metadata => {
                method == Method::GET || method == Method::HEAD
            }
            Route::Sessions => method == Method::POST,
            _ => false,
        }
    }
}

/// Split and percent-decode a request path; `None` for paths that cannot name a resource.
fn segments(path: &str) -> Option<Vec<String>> {
    let trimmed = path.strip_prefix('/')?;
    let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
    trimmed
        .split('/')
        .map(|s| {
            let d = percent_encoding::percent_decode_str(s).decode_utf8().ok()?;
            (!d.is_empty() && !d.contains('/')).then(|| d.into_owned())
        })
        .collect()
}

impl Service {
    /// A service over `pool`, its accounts loaded from `opts.store` (seeded with the first
    /// administrator of `opts` when the store has none).
    pub fn new(pool: Arc<dyn Pool>, opts: ServiceOptions) -> Result<Self, StartError> {
        let durable = Durable::new(opts.store.clone(), opts.store_name.clone())?;
        let accounts = security::load_accounts(&durable, &opts.admin, opts.admin_hash)?;
        let rules = rules::load_rules(&durable, opts.reclaim_after)?;
        let schedules = schedules::load_schedules(&durable)?;
        let appliance = pool.appliance();
        // A stable UUID derived from the appliance id (RFC 9562 version 8 layout).
        let d = Sha256::digest(format!("pcietun-redfish:{}", appliance.id));
        let mut b = [0u8; 16];
        b.copy_from_slice(&d[..16]);
        b[6] = (b[6] & 0x0f) | 0x80;
        b[8] = (b[8] & 0x3f) | 0x80;
        let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
        let uuid = format!(
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        );
        let events = events::EventLog::with_retry(opts.delivery_retry);
        subscriptions::load_subscriptions(&events, &durable)?;
        let (log, clock) = (events.clone(), opts.clock.clone());
        pool.subscribe(EventSink::new(move |e| log.push(&e, clock.wall())));
        let service = Service {
            events,
            pool,
            tasks: TaskTable::new(opts.clock.clone()),
            clock: opts.clock,
            auth: Mutex::new(AuthState {
                accounts,
                sessions: Sessions::new(opts.session_timeout),
            }),
            change: Mutex::new(()),
            uuid,
            max_body: opts.max_body,
            durable,
            rules: Arc::new(Mutex::new(rules)),
            schedules: Mutex::new(schedules),
        };
        service.watch_sessions();
        Ok(service)
    }

    /// The event log (the HTTP layer streams it).
    pub fn events(&self) -> &Arc<events::EventLog> {
        &self.events
    }

    /// Authenticate a request for the event stream (Login privilege); the credential to
    /// re-check while the stream is open, or the error response.
    pub fn authorize_stream(
        &self,
        headers: &HeaderMap,
    ) -> Result<StreamCredential, Box<Response<Bytes>>> {
        let caller = self
            .authenticate(headers)
            .and_then(|c| c.require(Privilege::Login).map(|_| c))
            .map_err(|e| Box::new(self.error(e)))?;
        Ok(match caller.session {
            Some(_) => StreamCredential::Token(
                headers
                    .get("X-Auth-Token")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string(),
            ),
            None => StreamCredential::Account(caller.account.id),
        })
    }

    /// Whether a stream's credential is still good (the session alive, the account enabled).
    pub fn still_authorized(&self, cred: &StreamCredential) -> bool {
        let now = self.clock.now();
        let mut auth = self.auth.lock_or_recover();
        let account = match cred {
            StreamCredential::Token(t) => match auth.sessions.authenticate(t, now) {
                Some(s) => s.account,
                None => return false,
            },
            StreamCredential::Account(a) => a.clone(),
        };
        auth.accounts.get(&account).is_some_and(|a| a.enabled)
    }

    /// The largest request body the service accepts.
    pub fn max_body(&self) -> usize {
        self.max_body
    }

    /// The response for a body over [`Service::max_body`] (the HTTP layer detects it).
    pub fn payload_too_large(&self) -> Response<Bytes> {
        self.error(ApiError::payload_too_large(self.max_body))
    }

    /// An error response with the headers every response carries (for the HTTP layer's own
    /// refusals: body timeouts, failed handlers).
    pub fn error(&self, e: ApiError) -> Response<Bytes> {
        finish(e.into_response(), false)
    }

    /// Handle one request.
    pub fn handle(&self, req: Request<Bytes>) -> Response<Bytes> {
        let head = req.method() == Method::HEAD;
        let resp = match self.dispatch(&req) {
            Ok(reply) => reply_response(reply),
            Err(e) => e.into_response(),
        };
        finish(resp, head)
    }

    pub(crate) fn snapshot(&self) -> Snapshot {
        let mut functions = self.pool.functions();
        functions.retain(|f| valid_id(&f.id) && valid_id(&f.device));
        let mut hosts = self.pool.hosts();
        hosts.retain(|h| valid_id(&h.id));
        Snapshot {
            appliance: self.pool.appliance(),
            functions,
            hosts,
        }
    }

    fn dispatch(&self, req: &Request<Bytes>) -> ApiResult<Reply> {
        let path = req.uri().path();
        let segs = segments(path).ok_or_else(|| ApiError::missing_at_uri(path))?;
        let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
        let route = Route::parse(&segs);
        let method = req.method();
        let caller = match route {
            Some(r) if r.public(method) => None,
            _ => Some(self.authenticate(req.headers())?),
        };
        let route = route.ok_or_else(|| ApiError::missing_at_uri(path))?;
        let allowed = route.methods();
        if !allowed.contains(method) {
            return Err(ApiError::method_not_allowed(method, path, allowed));
        }
        if let Some(q) = req.uri().query() {
            for pair in q.split('&') {
                let name = pair.split('=').next().unwrap_or("");
                if name.starts_with('$') || name == "only" || name == "excerpt" {
                    return Err(ApiError::query_unsupported(name));
                }
            }
        }
        if matches!(*method, Method::POST | Method::PATCH) {
            if let Some(ct) = req.headers().get(header::CONTENT_TYPE) {
                let ct = ct.to_str().unwrap_or("");
                let mime = ct.split(';').next().unwrap_or("").trim();
                if !mime.eq_ignore_ascii_case("application/json") {
                    return Err(ApiError::unsupported_media_type(ct));
                }
            }
        }
        let mut reply = match caller {
            None => self.public(route, req)?,
            Some(caller) => self.authenticated(route, req, &caller)?,
        };
        if reply.status == StatusCode::OK && !reply.headers.iter().any(|(n, _)| n == header::ALLOW)
        {
            reply.headers.push((header::ALLOW, allow_header(allowed)));
        }
        Ok(reply)
    }

    fn public(&self, route: Route<'_>, req: &Request<Bytes>) -> ApiResult<Reply> {
        match route {
            Route::Version => Ok(Reply::ok(root::version())),
            Route::Root => Ok(Reply::ok(root::service_root(
                &self.uuid,
                &self.snapshot().appliance,
            ))),
            Route::OData => Ok(Reply::ok(root::odata())),
            Route::Metadata => Ok(Reply::xml(root::metadata())),
            Route::Sessions => self.login(req.body()),
            _ => Err(ApiError::missing_at_uri(req.uri().path())),
        }
    }

    fn authenticated(
        &self,
        route: Route<'_>,
        req: &Request<Bytes>,
        caller: &Caller,
    ) -> ApiResult<Reply> {
        use Route::*;
        let method = req.method().clone();
        let get = method == Method::GET || method == Method::HEAD;
        match route {
            Version | Root | OData | Metadata => self.public(route, req),
            OemSchema => Ok(Reply::xml(root::OEM_SCHEMA.to_string())),
            ChassisCollection => Ok(Reply::ok(inventory::chassis_collection(&self.snapshot()))),
            Chassis(c) => inventory::chassis(&self.snapshot(), c).map(Reply::ok),
            ChassisAction(c, a) => self.add_device(caller, req, c, a),
            PcieDevices(c) => inventory::devices(&self.snapshot(), c).map(Reply::ok),
            PcieDevice(c, d) => inventory::device(&self.snapshot(), c, d).map(Reply::ok),
            DeviceAction(c, d, a) => self.remove_device(caller, req, c, d, a),
            FunctionAction(c, d, f, a) => self.set_vf_count(caller, req, c, d, f, a),
            PcieFunctions(c, d) => inventory::functions(&self.snapshot(), c, d).map(Reply::ok),
            PcieFunction(c, d, f) => inventory::function(&self.snapshot(), c, d, f).map(Reply::ok),
            Systems => Ok(Reply::ok(inventory::systems(&self.snapshot()))),
            System(h) => inventory::system(&self.snapshot(), h).map(Reply::ok),
            Fabrics => Ok(Reply::ok(fabric::fabrics())),
            Fabric(f) if get => self.get_fabric(f).map(Reply::ok),
            Fabric(f) => self.patch_fabric(caller, req, f),
            FabricAction(f, a) => self.fabric_action(caller, req, f, a),
            Endpoints(f) => fabric::endpoints(&self.snapshot(), f).map(Reply::ok),
            Endpoint(f, e) => fabric::endpoint(&self.snapshot(), f, e).map(Reply::ok),
            Zones(f) => fabric::zones(&self.snapshot(), f).map(Reply::ok),
            Zone(f, z) if get => fabric::zone(&self.snapshot(), f, z).map(Reply::ok),
            Zone(f, z) => self.patch_zone(caller, req, f, z),
            ZoneAction(f, z, a) => self.zone_action(caller, req, f, z, a),
            Connections(f) => fabric::connections(&self.snapshot(), f).map(Reply::ok),
            Connection(f, c) if get => self.get_connection(f, c).map(Reply::ok),
            Connection(f, c) if method == Method::PATCH => self.patch_connection(caller, req, f, c),
            Connection(f, c) => self.delete_connection(caller, req, f, c),
            TaskService => Ok(Reply::ok(root::task_service(self.clock.wall()))),
            Tasks => Ok(Reply::ok(root::tasks(&self.tasks))),
            Task(t) => {
                // Commits already queued land first: a Task reads as its commit left it.
                self.durable.flush(fabric::FLUSH_WAIT);
                root::task(&self.tasks, t).map(Reply::ok)
            }
            SessionService if get => Ok(Reply::ok(self.session_service())),
            SessionService => self.patch_session_service(caller, req),
            Sessions if get => Ok(Reply::ok(self.sessions(caller))),
            Sessions => self.login(req.body()),
            Session(s) if get => self.session(caller, s).map(Reply::ok),
            Session(s) => self.logout(caller, s),
            AccountService => Ok(Reply::ok(security::account_service())),
            Accounts if get => Ok(Reply::ok(self.accounts(caller))),
            Accounts => self.create_account(caller, req.body()),
            Account(a) if get => self.account(caller, a).map(Reply::ok),
            Account(a) if method == Method::PATCH => self.patch_account(caller, req, a),
            Account(a) => self.delete_account(caller, req, a),
            Roles => Ok(Reply::ok(security::roles())),
            Role(r) => security::role(r).map(Reply::ok),
            EventService => Ok(Reply::ok(events::event_service(&self.events.retry))),
            Subscriptions if get => Ok(Reply::ok(events::subscriptions(&self.events))),
            Subscriptions => self.create_subscription(caller, req.body()),
            Subscription(s) if get => self.subscription(s),
            Subscription(s) => self.delete_subscription(caller, req, s),
            EventStream => Ok(Reply::raw(
                "text/event-stream",
                self.events
                    .backlog_after(last_event_id(req.headers()).unwrap_or(u64::MAX))
                    .iter()
                    .map(|r| r.sse_frame())
                    .collect(),
            )),
            Metrics => {
                let accept = req
                    .headers()
                    .get(header::ACCEPT)
                    .and_then(|v| v.to_str().ok());
                let format = crate::mgmt::metrics::Format::negotiate(accept);
                Ok(Reply::raw(
                    format.content_type(),
                    crate::mgmt::metrics::render(&*self.pool, format),
                ))
            }
        }
    }
}

/// Turn a reply into a response: JSON body with `@odata.etag` and an `ETag` header.
fn reply_response(reply: Reply) -> Response<Bytes> {
    let mut resp = Response::new(Bytes::new());
    *resp.status_mut() = reply.status;
    if let Some(body) = reply.body {
        let body = if body.get("@odata.id").is_some() {
            let tagged = with_etag(body);
            if let Some(Value::String(tag)) = tagged.get("@odata.etag") {
                if let Ok(v) = HeaderValue::from_str(tag) {
                    resp.headers_mut().insert(header::ETAG, v);
                }
            }
            tagged
        } else {
            body
        };
        *resp.body_mut() = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
    } else if let Some((content_type, text)) = reply.raw {
        *resp.body_mut() = Bytes::from(text);
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    }
    for (n, v) in reply.headers {
        resp.headers_mut().insert(n, v);
    }
    resp
}

/// Headers every response carries; HEAD responses lose their body.
fn finish(mut resp: Response<Bytes>, head: bool) -> Response<Bytes> {
    let h = resp.headers_mut();
    h.insert("OData-Version", HeaderValue::from_static("4.0"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if head {
        *resp.body_mut() = Bytes::new();
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let p = |s: &str| {
            let segs = segments(s)?;
            let v: Vec<&str> = segs.iter().map(String::as_str).collect();
            Route::parse(&v).map(|r| format!("{r:?}"))
        };
        assert_eq!(p("/redfish/v1/").as_deref(), Some("Root"));
        assert_eq!(p("/redfish/v1").as_deref(), Some("Root"));
        assert_eq!(p("/redfish/v1/%24metadata").as_deref(), Some("Metadata"));
        assert_eq!(
            p("/redfish/v1/Fabrics/PCIe/Zones/alpha/Actions/Zone.AddEndpoint").as_deref(),
            Some("ZoneAction(\"PCIe\", \"alpha\", \"Zone.AddEndpoint\")")
        );
        assert_eq!(p("/redfish/v1//Chassis"), None);
        assert_eq!(p("/redfish/v1/Chassis/a%2Fb"), None);
        assert_eq!(p("/redfish/v1/Nope"), None);
        assert_eq!(p("relative"), None);
    }

    #[test]
    fn if_match() {
        assert!(if_match_accepts("*", "W/\"ab\""));
        assert!(if_match_accepts("W/\"ab\"", "W/\"ab\""));
        assert!(if_match_accepts("\"ab\"", "W/\"ab\""));
        assert!(if_match_accepts("W/\"x\", W/\"ab\"", "W/\"ab\""));
        assert!(!if_match_accepts("W/\"x\"", "W/\"ab\""));
    }

    #[test]
    fn etags_follow_content() {
        let a = serde_json::json!({"@odata.id": "/x", "A": 1});
        let b = serde_json::json!({"@odata.id": "/x", "A": 2});
        assert_ne!(etag_of(&a), etag_of(&b));
        assert_eq!(etag_of(&a), etag_of(&with_etag(a.clone())));
    }
}
