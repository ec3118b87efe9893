//! Strict parsing of request bodies (PATCH, POST, actions) into typed requests.
//!
//! Every body is bounded before it gets here (the server refuses larger ones with 413). A body
//! is parsed as JSON (`MalformedJSON`), must be an object, may carry OData annotations
//! (`@odata.*`, which are ignored), and may contain only the properties the request defines:
//! an unknown property is `PropertyUnknown` (`ActionParameterUnknown` for actions), a read-only
//! one `PropertyNotWritable`, a wrong JSON type `PropertyValueTypeError`, a missing required one
//! `PropertyMissing` — each naming the property by its JSON pointer. Parsing either yields a
//! complete typed request or an error; nothing is half-applied. Passwords are never echoed in
//! error messages.

use serde_json::{Map, Value};
use zeroize::Zeroizing;

use super::error::{ApiError, ApiResult};
use crate::mgmt::auth::Role;
use crate::mgmt::pool::{PRIORITY_DEFAULT, PRIORITY_MAX, PRIORITY_MIN};

/// Nesting deeper than this is refused before it can cost anything.
const MAX_DEPTH: usize = 16;

/// What a body belongs to, which decides the messages used.
#[derive(Debug, Clone, Copy)]
enum Ctx {
    /// PATCH or POST of a resource.
    Resource,
    /// A POST to an action.
    Action(&'static str),
}

/// A JSON object being read, with the pointer of where it sits in the body.
struct Obj<'a> {
    map: &'a Map<String, Value>,
    pointer: String,
    ctx: Ctx,
}

/// Show a value in an error message (secrets are hidden, long values cut).
fn show(value: &Value, secret: bool) -> String {
    if secret {
        return "(hidden)".into();
    }
    let s = match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if s.chars().count() > 64 {
        let cut: String = s.chars().take(64).collect();
        format!("{cut}…")
    } else {
        s
    }
}

fn depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Parse a body that must be a JSON object.
fn parse(bytes: &[u8]) -> ApiResult<Map<String, Value>> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        ApiError::malformed_json(&format!("line {}, column {}: {e}", e.line(), e.column()))
    })?;
    if depth(&value) > MAX_DEPTH {
        return Err(ApiError::malformed_json("nested too deeply"));
    }
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(ApiError::not_an_object()),
    }
}

impl<'a> Obj<'a> {
    fn root(map: &'a Map<String, Value>, ctx: Ctx) -> Self {
        Obj {
            map,
            pointer: String::new(),
            ctx,
        }
    }

    fn ptr(&self, name: &str) -> String {
        format!("{}/{name}", self.pointer)
    }

    /// Refuse any member that is neither in `writable` nor an annotation; members in
    /// `read_only` get `PropertyNotWritable`.
    fn only(&self, writable: &[&str], read_only: &[&str]) -> ApiResult<()> {
        for key in self.map.keys() {
            if key.starts_with('@') || writable.contains(&key.as_str()) {
                continue;
            }
            return Err(match self.ctx {
                Ctx::Action(action) => ApiError::action_parameter_unknown(action, key),
                Ctx::Resource if read_only.contains(&key.as_str()) => {
                    ApiError::property_not_writable(&self.ptr(key))
                }
                Ctx::Resource => ApiError::property_unknown(&self.ptr(key)),
            });
        }
        Ok(())
    }

    fn type_error(&self, name: &str, value: &Value, want: &str, secret: bool) -> ApiError {
        match self.ctx {
            Ctx::Action(action) => {
                ApiError::action_parameter_type(action, name, &show(value, secret), want)
            }
            Ctx::Resource => ApiError::property_type(&self.ptr(name), &show(value, secret), want),
        }
    }

    fn missing(&self, name: &str) -> ApiError {
        match self.ctx {
            Ctx::Action(action) => ApiError::action_parameter_missing(action, name),
            Ctx::Resource => ApiError::property_missing(&self.ptr(name)),
        }
    }

    fn get(&self, name: &str) -> Option<&'a Value> {
        self.map.get(name)
    }

    fn string(&self, name: &str) -> ApiResult<Option<&'a str>> {
        self.string_inner(name, false)
    }

    fn secret(&self, name: &str) -> ApiResult<Option<&'a str>> {
        self.string_inner(name, true)
    }

    fn string_inner(&self, name: &str, secret: bool) -> ApiResult<Option<&'a str>> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.type_error(name, v, "a string", secret)),
        }
    }

    fn boolean(&self, name: &str) -> ApiResult<Option<bool>> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.type_error(name, v, "true or false", false)),
        }
    }

    fn integer(&self, name: &str) -> ApiResult<Option<i64>> {
        match self.get(name) {
            None => Ok(None),
            Some(v @ Value::Number(n)) => n
                .as_i64()
                .map(Some)
                .ok_or_else(|| self.type_error(name, v, "an integer", false)),
            Some(v) => Err(self.type_error(name, v, "an integer", false)),
        }
    }

    fn object(&self, name: &str) -> ApiResult<Option<Obj<'a>>> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Object(map)) => Ok(Some(Obj {
                map,
                pointer: self.ptr(name),
                ctx: self.ctx,
            })),
            Some(v) => Err(self.type_error(name, v, "an object", false)),
        }
    }

    /// A navigation link: `{"@odata.id": "/redfish/v1/…"}` and nothing else.
    fn link(&self, name: &str) -> ApiResult<Option<&'a str>> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => link_value(v)
                .map(Some)
                .ok_or_else(|| self.type_error(name, v, "a link {\"@odata.id\": URI}", false)),
        }
    }

    /// An array of navigation links.
    fn links(&self, name: &str) -> ApiResult<Option<Vec<&'a str>>> {
        match self.get(name) {
            None => Ok(None),
            Some(v @ Value::Array(items)) => items
                .iter()
                .map(link_value)
                .collect::<Option<Vec<_>>>()
                .map(Some)
                .ok_or_else(|| self.type_error(name, v, "an array of links", false)),
            Some(v) => Err(self.type_error(name, v, "an array of links", false)),
        }
    }
}

fn link_value(v: &Value) -> Option<&str> {
    let obj = v.as_object()?;
    if obj.len() != 1 {
        return None;
    }
    obj.get("@odata.id")?.as_str()
}

fn required<T>(obj: &Obj<'_>, name: &str, v: Option<T>) -> ApiResult<T> {
    v.ok_or_else(|| obj.missing(name))
}

/// PATCH of a Zone: its new endpoint membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZonePatch {
    /// `@odata.id`s of every endpoint that should be in the zone.
    pub endpoints: Vec<String>,
}

/// Properties of a Zone that exist but cannot be written.
const ZONE_READ_ONLY: &[&str] = &[
    "Id",
    "Name",
    "Description",
    "Status",
    "ZoneType",
    "Actions",
    "Oem",
    "DefaultRoutingEnabled",
    "Identifiers",
    "ExternalAccessibility",
    "RoutingEnabled",
];

/// Parse a Zone PATCH (`{"Links": {"Endpoints": [{"@odata.id": …}, …]}}`).
pub fn zone_patch(bytes: &[u8]) -> ApiResult<ZonePatch> {
    let map = parse(bytes)?;
    let root = Obj::root(&map, Ctx::Resource);
    if map.keys().all(|k| k.starts_with('@')) {
        return Err(ApiError::empty_json());
    }
    root.only(&["Links"], ZONE_READ_ONLY)?;
    let links = required(&root, "Links", root.object("Links")?)?;
    links.only(
        &["Endpoints"],
        &[
            "AddressPools",
            "ContainedByZones",
            "ContainsZones",
            "InvolvedSwitches",
            "Oem",
        ],
    )?;
    let endpoints = required(&links, "Endpoints", links.links("Endpoints")?)?;
    Ok(ZonePatch {
        endpoints: endpoints.into_iter().map(str::to_string).collect(),
    })
}

/// Parameters of `#Zone.AddEndpoint` / `#Zone.RemoveEndpoint`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointAction {
    /// `@odata.id` of the endpoint.
    pub endpoint: String,
    /// The client's view of the endpoint's ETag, if given.
    pub endpoint_etag: Option<String>,
    /// The client's view of the zone's ETag, if given.
    pub zone_etag: Option<String>,
    /// `Oem.Pcietun.Vm.Name` of `#Zone.AddEndpoint`: the VM on the host that is to take the
    /// function (checked: 1 to 64 characters of `[A-Za-z0-9._-]`).
    pub vm: Option<String>,
    /// `Oem.Pcietun.LeaseSeconds` of `#Zone.AddEndpoint`: the assignment's maximum hold time
    /// (1 s to [`crate::mgmt::rules::MAX_LEASE`]).
    pub lease: Option<std::time::Duration>,
}

/// Parse the body of a Zone endpoint action (`action` is e.g. `Zone.AddEndpoint`).
pub fn endpoint_action(bytes: &[u8], action: &'static str) -> ApiResult<EndpointAction> {
    let map = parse(bytes)?;
    let root = Obj::root(&map, Ctx::Action(action));
    let add = action == "Zone.AddEndpoint";
    if add {
        root.only(&["Endpoint", "EndpointETag", "ZoneETag", "Oem"], &[])?;
    } else {
        root.only(&["Endpoint", "EndpointETag", "ZoneETag"], &[])?;
    }
    let endpoint = required(&root, "Endpoint", root.link("Endpoint")?)?;
    let mut vm = None;
    let mut lease = None;
    if let Some(oem) = root.object("Oem")? {
        oem.only(&["Pcietun"], &[])?;
        if let Some(p) = oem.object("Pcietun")? {
            p.only(&["Vm", "LeaseSeconds"], &[])?;
            if let Some(secs) = p.integer("LeaseSeconds")? {
                let max = crate::mgmt::rules::MAX_LEASE.as_secs();
                if secs < 1 || secs as u64 > max {
                    return Err(ApiError::action_parameter_format(
                        action,
                        "Oem/Pcietun/LeaseSeconds",
                        &secs.to_string(),
                        &format!("a lease of 1 to {max} seconds"),
                    ));
                }
                lease = Some(std::time::Duration::from_secs(secs as u64));
            }
            if let Some(v) = p.object("Vm")? {
                v.only(&["Name"], &[])?;
                let name = required(&v, "Name", v.string("Name")?)?;
                if !crate::mgmt::pool::valid_vm_name(name) {
                    return Err(ApiError::action_parameter_format(
                        action,
                        "Oem/Pcietun/Vm/Name",
                        &show(&Value::String(name.into()), false),
                        "a VM name of 1 to 64 characters of [A-Za-z0-9._-]",
                    ));
                }
                vm = Some(name.to_string());
            }
        }
    }
    Ok(EndpointAction {
        endpoint: endpoint.to_string(),
        endpoint_etag: root.string("EndpointETag")?.map(str::to_string),
        zone_etag: root.string("ZoneETag")?.map(str::to_string),
        vm,
        lease,
    })
}

/// The parameters of `#Pcietun.AddDevice`: a card to add.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceCreate {
    /// The stable id of its function 0 (`Name`; `None`: derived from where it lands).
    pub name: Option<String>,
    /// The card in the appliance's `--device` grammar (`Spec`).
    pub spec: String,
}

/// Longest `Spec` accepted (paths and a few options).
pub const MAX_SPEC_LEN: usize = 4096;

/// Parse the body of `#Pcietun.AddDevice` (`{"Spec": "dma,buffer=64K", "Name": "dma1"}`).
pub fn device_create(bytes: &[u8], action: &'static str) -> ApiResult<DeviceCreate> {
    let map = parse(bytes)?;
    let root = Obj::root(&map, Ctx::Action(action));
    root.only(&["Spec", "Name"], &[])?;
    let spec = required(&root, "Spec", root.string("Spec")?)?;
    if spec.trim().is_empty() || spec.len() > MAX_SPEC_LEN || spec.chars().any(char::is_control) {
        return Err(ApiError::action_parameter_format(
            action,
            "Spec",
            &show(&Value::String(spec.into()), false),
            &format!(
                "a device spec of 1 to {MAX_SPEC_LEN} printable characters, e.g. \"dma,buffer=64K\""
            ),
        ));
    }
    Ok(DeviceCreate {
        name: root.string("Name")?.map(str::to_string),
        spec: spec.to_string(),
    })
}

/// Most virtual functions a `#Pcietun.SetVfCount` may ask for (PCIe's NumVFs is 16 bits).
pub const MAX_NUM_VFS: i64 = u16::MAX as i64;

/// Parse the body of `#Pcietun.SetVfCount` (`{"NumVFs": 2}`).
pub fn vf_count(bytes: &[u8], action: &'static str) -> ApiResult<u16> {
    let map = parse(bytes)?;
    let root = Obj::root(&map, Ctx::Action(action));
    root.only(&["NumVFs"], &[])?;
    let n = required(&root, "NumVFs", root.integer("NumVFs")?)?;
    u16::try_from(n).map_err(|_| {
        ApiError::action_parameter_format(
            action,
            "NumVFs",
            &n.to_string(),
            &format!("an integer from 0 to {MAX_NUM_VFS} (at most the function's TotalVFs)"),
        )
    })
}

/// `UserName` and `Password` of a login (POST to Sessions).
pub struct Credentials {
    /// Account name.
    pub user: String,
    /// Password (wiped from memory when dropped).
    pub password: Zeroizing<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"(hidden)")
            .finish()
    }
}

/// Parse a POST to the Sessions collection.
pub fn session_create(bytes: &[u8]) -> ApiResult<Credentials> {
    let map = parse(bytes)?;
    let root = Obj::root(&map, Ctx::Resource);
    root.only(
        &["UserName", "Password"],
        &[
            "Id",
            "Name",
            "Description",
            "CreatedTime",
            "SessionType",
            "Oem",
        ],
    )?;
    let user = required(&root, "UserName", root.string("UserName")?)?;
    let password = required(&root, "Password", root.secret("Password")?)?;
    Ok(Credentials {
        user: user.to_string(),
        password: Zeroizing::new(password.to_string()),
    })
}

/// A POST to the Accounts collection.
pub struct AccountCreate {
    /// Account name.
    pub user: String,
    /// Initial password.
    pub password: Zeroizing<String>,
    /// Role.
    pub role: Role,
    /// Whether it may log in (default true).
    pub enabled: bool,
}

impl std::fmt::Debug for AccountCreate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountCreate")
            .field("user", &self.user)
            .field("role", &self.role)
            .field("enabled", &self.enabled)
            .finish_non_exhaustive()
    }
}

const ACCOUNT_READ_ONLY: &[&str] = &[
    "Id",
    "Name",
    "Description",
    "Links",
    "Locked",
    "AccountTypes",
    "Oem",
    "Status",
];

fn role(obj: &Obj<'_>, name: &str) -> ApiResult<Option<Role>> {
    match obj.string(name)? {
        None => Ok(None),
        Some(s) => Role::parse(s).map(Some).ok_or_else(|| {
            ApiError::property_not_in_list(&obj.ptr(name), s, &Role::ALL.map(Role::id))
        }),
    }
}

/// Parse a POST to the Accounts collection.
pub fn account_create(bytes: &[u8]) -> ApiResult<AccountCreate> {
    let map = parse(bytes)?;
    let root = Obj::root(&map, Ctx::Resource);
    root.only(
        &["UserName", "Password", "RoleId", "Enabled"],
        ACCOUNT_READ_ONLY,
    )?;
    let user = required(&root, "UserName", root.string("UserName")?)?;
    let password = required(&root, "Password", root.secret("Password")?)?;
    let role = required(&root, "RoleId", role(&root, "RoleId")?)?;
    Ok(AccountCreate {
        user: user.to_string(),
        password: Zeroizing::new(password.to_string()),
        role,
        enabled: root.boolean("Enabled")?.unwrap_or(true),
    })
}

/// A PATCH of an account.
#[derive(Default)]
pub struct AccountPatch {
    /// New password.
    pub password: Option<Zeroizing<String>>,
    /// New role.
    pub role: Option<Role>,
    /// Enable or disable logins.
    pub enabled: Option<bool>,
}

impl std::fmt::Debug for AccountPatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountPatch")
            .field("password", &self.password.as_ref().map(|_| "(hidden)"))
            .field("role", &self.role)
            .field("enabled", &self.enabled)
            .finish()
    }
}

/// Parse a PATCH of an account (`UserName` cannot be changed: ids and names stay stable).
pub fn account_patch(bytes: &[u8]) -> ApiResult<AccountPatch> {
    let map = parse(bytes)?;
    let root = Obj::root(&map, Ctx::Resource);
    if map.keys().all(|k| k.starts_with('@')) {
        return Err(ApiError::empty_json());
    }
    let mut read_only = ACCOUNT_READ_ONLY.to_vec();
    read_only.push("UserName");
    root.only(&["Password", "RoleId", "Enabled"], &read_only)?;
    Ok(AccountPatch {
        password: root
            .secret("Password")?
            .map(|p| Zeroizing::new(p.to_string())),
        role: role(&root, "RoleId")?,
        enabled: root.boolean("Enabled")?,
    })
}

/// A PATCH of the SessionService: the idle timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionServicePatch {
    /// New idle timeout in seconds.
    pub timeout_s: u64,
}

/// Idle timeouts the SessionService accepts (Redfish: 30 s to 86400 s).
pub const SESSION_TIMEOUT_RANGE: std::ops::RangeInclusive<u64> = 30..=86400;

/// Parse a PATCH of the SessionService.
pub fn session_service_patch(bytes: &[u8]) -> ApiResult<SessionServicePatch> {
    let map = parse(bytes)?;
    let root = Obj::root(&map, Ctx::Resource);
    if map.keys().all(|k| k.starts_with('@')) {
        return Err(ApiError::empty_json());
    }
    root.only(
        &["SessionTimeout"],
        &[
            "Id",
            "Name",
            "Description",
            "Sessions",
            "Status",
            "ServiceEnabled",
            "Oem",
        ],
    )?;
    let t = required(&root, "SessionTimeout", root.integer("SessionTimeout")?)?;
    match u64::try_from(t) {
        Ok(t) if SESSION_TIMEOUT_RANGE.contains(&t) => Ok(SessionServicePatch { timeout_s: t }),
        _ => Err(ApiError::property_out_of_range(
            "/SessionTimeout",
            &t.to_string(),
            "30..=86400 seconds",
        )),
    }
}

/// A PATCH of a Connection's policy (`Oem.Pcietun.Policy`): for each cap, `None` leaves it
/// as it is, `Some(None)` lifts it (JSON `null`), `Some(Some(n))` sets it (n ≥ 1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PolicyPatch {
    /// `MaxBytesPerSecondUp`.
    pub up: Option<Option<u64>>,
    /// `MaxBytesPerSecondDown`.
    pub down: Option<Option<u64>>,
    /// `MaxIOPS`.
    pub iops: Option<Option<u64>>,
    /// `Priority`: `Some(None)` (JSON `null`) is back to the default.
    pub priority: Option<Option<u32>>,
}

/// The writable caps of `Oem.Pcietun.Policy`.
pub const POLICY_CAPS: [&str; 3] = ["MaxBytesPerSecondUp", "MaxBytesPerSecondDown", "MaxIOPS"];

/// The writable properties of `Oem.Pcietun.Policy`: the caps and `Priority`.
const POLICY_PROPERTIES: [&str; 4] = [
    "MaxBytesPerSecondUp",
    "MaxBytesPerSecondDown",
    "MaxIOPS",
    "Priority",
];

/// Properties of a Connection that exist but cannot be written.
const CONNECTION_READ_ONLY: &[&str] = &[
    "Id",
    "Name",
    "Description",
    "Status",
    "Links",
    "ConnectionType",
    "VolumeInfo",
    "MemoryChunkInfo",
    "Actions",
];

/// Parse a PATCH of a Connection (`{"Oem": {"Pcietun": {"Policy": {"MaxIOPS": 1000}}}}`).
pub fn connection_patch(bytes: &[u8]) -> ApiResult<PolicyPatch> {
    let map = parse(bytes)?;
    let root = Obj::root(&map, Ctx::Resource);
    if map.keys().all(|k| k.starts_with('@')) {
        return Err(ApiError::empty_json());
    }
    root.only(&["Oem"], CONNECTION_READ_ONLY)?;
    let oem = required(&root, "Oem", root.object("Oem")?)?;
    oem.only(&["Pcietun"], &[])?;
    let ours = required(&oem, "Pcietun", oem.object("Pcietun")?)?;
    ours.only(&["Policy"], &["State", "Function", "Host"])?;
    let policy = required(&ours, "Policy", ours.object("Policy")?)?;
    policy.only(&POLICY_PROPERTIES, &[])?;
    let cap = |name: &str| -> ApiResult<Option<Option<u64>>> {
        match policy.get(name) {
            None => Ok(None),
            Some(Value::Null) => Ok(Some(None)),
            Some(v @ Value::Number(n)) => match n.as_u64() {
                Some(0) => Err(ApiError::property_out_of_range(
                    &policy.ptr(name),
                    "0",
                    "at least 1 (null for no limit)",
                )),
                Some(x) => Ok(Some(Some(x))),
                None if n.as_i64().is_some() => Err(ApiError::property_out_of_range(
                    &policy.ptr(name),
                    &n.to_string(),
                    "at least 1 (null for no limit)",
                )),
                None => Err(policy.type_error(name, v, "an integer or null", false)),
            },
            Some(v) => Err(policy.type_error(name, v, "an integer or null", false)),
        }
    };
    let range = || {
        format!(
            "an integer within {PRIORITY_MIN}..={PRIORITY_MAX} (null for the default, \
             {PRIORITY_DEFAULT})"
        )
    };
    let priority = match policy.get("Priority") {
        None => None,
        Some(Value::Null) => Some(None),
        Some(v @ Value::Number(n)) => match n.as_u64() {
            Some(x) if (u64::from(PRIORITY_MIN)..=u64::from(PRIORITY_MAX)).contains(&x) => {
                Some(Some(x as u32))
            }
            Some(_) => {
                return Err(ApiError::property_out_of_range(
                    &policy.ptr("Priority"),
                    &n.to_string(),
                    &range(),
                ))
            }
            None if n.as_i64().is_some() => {
                return Err(ApiError::property_out_of_range(
                    &policy.ptr("Priority"),
                    &n.to_string(),
                    &range(),
                ))
            }
            None => return Err(policy.type_error("Priority", v, "an integer or null", false)),
        },
        Some(v) => return Err(policy.type_error("Priority", v, "an integer or null", false)),
    };
    let p = PolicyPatch {
        up: cap(POLICY_CAPS[0])?,
        down: cap(POLICY_CAPS[1])?,
        iops: cap(POLICY_CAPS[2])?,
        priority,
    };
    if p == PolicyPatch::default() {
        return Err(ApiError::empty_json());
    }
    Ok(p)
}

/// A PATCH of the Fabric's rules (`Oem.Pcietun.Rules`): `Some(None)` turns the lost-session
/// rule off (JSON `null`), `Some(Some(d))` sets it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RulesPatch {
    /// `ReclaimAfterSeconds`.
    pub reclaim_after: Option<Option<std::time::Duration>>,
}

/// Properties of a Fabric that exist but cannot be written.
const FABRIC_READ_ONLY: &[&str] = &[
    "Id",
    "Name",
    "Description",
    "Status",
    "FabricType",
    "Endpoints",
    "Zones",
    "Connections",
    "Links",
    "Actions",
    "MaxZones",
    "Switches",
    "AddressPools",
    "FabricAdapters",
];

/// Parse a PATCH of the Fabric (`{"Oem": {"Pcietun": {"Rules": {"ReclaimAfterSeconds": 600}}}}`).
pub fn fabric_patch(bytes: &[u8]) -> ApiResult<RulesPatch> {
    let map = parse(bytes)?;
    let root = Obj::root(&map, Ctx::Resource);
    if map.keys().all(|k| k.starts_with('@')) {
        return Err(ApiError::empty_json());
    }
    root.only(&["Oem"], FABRIC_READ_ONLY)?;
    let oem = required(&root, "Oem", root.object("Oem")?)?;
    oem.only(&["Pcietun"], &[])?;
    let ours = required(&oem, "Pcietun", oem.object("Pcietun")?)?;
    ours.only(&["Rules"], &["PendingReclaims", "Leases", "Schedules"])?;
    let rules = required(&ours, "Rules", ours.object("Rules")?)?;
    rules.only(&["ReclaimAfterSeconds"], &[])?;
    let name = "ReclaimAfterSeconds";
    let max = crate::mgmt::rules::MAX_RECLAIM_AFTER.as_secs();
    let range = format!("1 to {max} seconds (null for never)");
    let reclaim_after = match rules.get(name) {
        None => None,
        Some(Value::Null) => Some(None),
        Some(v @ Value::Number(n)) => match (n.as_u64(), n.as_i64()) {
            (Some(x), _) if (1..=max).contains(&x) => Some(Some(std::time::Duration::from_secs(x))),
            (Some(_), _) | (None, Some(_)) => {
                return Err(ApiError::property_out_of_range(
                    &rules.ptr(name),
                    &n.to_string(),
                    &range,
                ))
            }
            (None, None) => return Err(rules.type_error(name, v, "an integer or null", false)),
        },
        Some(v) => return Err(rules.type_error(name, v, "an integer or null", false)),
    };
    let p = RulesPatch { reclaim_after };
    if p == RulesPatch::default() {
        return Err(ApiError::empty_json());
    }
    Ok(p)
}

/// The parameters of `#Pcietun.AddSchedule` (docs/api.md "Schedules").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleCreate {
    /// `Function`: the function it moves (checked against the inventory by the caller).
    pub function: String,
    /// `Host`: its owner during the window.
    pub host: String,
    /// `Start` and `End` (`HH:MM` UTC).
    pub window: crate::mgmt::schedule::Window,
    /// `Then`: its owner outside the window (`null` or absent: the pool).
    pub then: Option<String>,
}

/// Parse the body of `#Pcietun.AddSchedule`
/// (`{"Function": "nvme0", "Host": "alpha", "Start": "01:00", "End": "03:00", "Then": "beta"}`).
pub fn schedule_create(bytes: &[u8], action: &'static str) -> ApiResult<ScheduleCreate> {
    use crate::mgmt::schedule::{parse_minute, Window};
    let map = parse(bytes)?;
    let root = Obj::root(&map, Ctx::Action(action));
    root.only(&["Function", "Host", "Start", "End", "Then"], &[])?;
    let function = required(&root, "Function", root.string("Function")?)?;
    let host = required(&root, "Host", root.string("Host")?)?;
    let minute = |name: &str| -> ApiResult<u16> {
        let v = required(&root, name, root.string(name)?)?;
        parse_minute(v).ok_or_else(|| {
            ApiError::action_parameter_format(
                action,
                name,
                &show(&Value::String(v.into()), false),
                "a time of day HH:MM, 00:00 to 23:59 (UTC)",
            )
        })
    };
    let (start, end) = (minute("Start")?, minute("End")?);
    let window = Window::new(start, end).ok_or_else(|| {
        ApiError::action_parameter_conflict(
            "End",
            &crate::mgmt::schedule::format_minute(end),
            "Start and End must differ (a window of the whole day is an assignment)",
        )
    })?;
    let then = match root.get("Then") {
        None | Some(Value::Null) => None,
        Some(_) => root.string("Then")?.map(str::to_string),
    };
    Ok(ScheduleCreate {
        function: function.to_string(),
        host: host.to_string(),
        window,
        then,
    })
}

/// The parameter of `#Pcietun.RemoveSchedule`: the schedule's `Id`.
pub fn schedule_remove(bytes: &[u8], action: &'static str) -> ApiResult<u64> {
    let map = parse(bytes)?;
    let root = Obj::root(&map, Ctx::Action(action));
    root.only(&["Id"], &[])?;
    let id = required(&root, "Id", root.string("Id")?)?;
    id.parse::<u64>()
        .ok()
        .filter(|_| !id.starts_with('+'))
        .ok_or_else(|| {
            ApiError::action_parameter_format(
                action,
                "Id",
                &show(&Value::String(id.into()), false),
                "a schedule id (decimal), as Oem.Pcietun.Schedules lists it",
            )
        })
}

/// The longest `Context` of a subscription, and of each filter entry.
pub const MAX_SUBSCRIPTION_STRING: usize = 256;

/// The most entries of one subscription filter list.
pub const MAX_FILTER_ENTRIES: usize = 32;

const SUBSCRIPTION_READ_ONLY: &[&str] = &[
    "Id",
    "Name",
    "Description",
    "Status",
    "Actions",
    "Oem",
    "EventFormatType",
];

/// Properties of EventDestination this service does not offer: refused with a reason rather
/// than ignored, so a client never believes a filter or a header is applied when it is not.
const SUBSCRIPTION_UNSUPPORTED: &[(&str, &str)] = &[
    ("ResourceTypes", "filtering by ResourceTypes is not supported; use OriginResources with SubordinateResources"),
    ("HttpHeaders", "custom HTTP headers on deliveries are not supported"),
    ("ExcludeRegistryPrefixes", "ExcludeRegistryPrefixes is not supported; list the RegistryPrefixes wanted"),
    ("ExcludeMessageIds", "ExcludeMessageIds is not supported; list the MessageIds wanted"),
    ("Severities", "filtering by Severities is not supported"),
    ("MetricReportDefinitions", "this service has no metric reports"),
    ("IncludeOriginOfCondition", "OriginOfCondition is always a link; IncludeOriginOfCondition is not supported"),
    ("SendHeartbeat", "heartbeat events are not supported"),
    ("HeartbeatIntervalMinutes", "heartbeat events are not supported"),
    ("VerifyCertificate", "https destinations are always verified against the WebPKI roots"),
    ("BackupDestinations", "backup destinations are not supported"),
    ("SNMP", "only the Redfish protocol is supported"),
    ("SyslogFilters", "only the Redfish protocol is supported"),
    ("OEMProtocol", "only the Redfish protocol is supported"),
    ("OEMSubscriptionType", "only RedfishEvent subscriptions are supported"),
];

/// A POST to `EventService/Subscriptions` (EventDestination), checked: the destination is an
/// `http(s)` URL ([`crate::mgmt::push::check_destination`]) and every filter names what this
/// service can send.
pub fn subscription_create(bytes: &[u8]) -> ApiResult<crate::mgmt::store::SubscriptionRecord> {
    use super::events::EVENT_TYPES;
    let map = parse(bytes)?;
    let root = Obj::root(&map, Ctx::Resource);
    for (name, why) in SUBSCRIPTION_UNSUPPORTED {
        if let Some(v) = root.get(name) {
            return Err(ApiError::property_incorrect(
                &root.ptr(name),
                &show(v, name == &"HttpHeaders"),
                *why,
            ));
        }
    }
    root.only(
        &[
            "Destination",
            "Protocol",
            "Context",
            "SubscriptionType",
            "EventTypes",
            "RegistryPrefixes",
            "MessageIds",
            "OriginResources",
            "SubordinateResources",
            "DeliveryRetryPolicy",
            "EventFormatType",
        ],
        SUBSCRIPTION_READ_ONLY,
    )?;
    let destination = required(&root, "Destination", root.string("Destination")?)?;
    crate::mgmt::push::check_destination(destination).map_err(|e| {
        ApiError::property_incorrect(
            "/Destination",
            &show(&Value::String(destination.into()), false),
            e.to_string(),
        )
    })?;
    let one_of = |name: &str, allowed: &[&str]| -> ApiResult<Option<&str>> {
        match root.string(name)? {
            Some(v) if !allowed.contains(&v) => Err(ApiError::property_not_in_list(
                &root.ptr(name),
                &show(&Value::String(v.into()), false),
                allowed,
            )),
            other => Ok(other),
        }
    };
    required(&root, "Protocol", one_of("Protocol", &["Redfish"])?)?;
    one_of("SubscriptionType", &["RedfishEvent"])?;
    one_of("EventFormatType", &["Event"])?;
    let policy = one_of(
        "DeliveryRetryPolicy",
        &["SuspendRetries", "TerminateAfterRetries"],
    )?
    .unwrap_or("SuspendRetries");
    let context = match root.get("Context") {
        None | Some(Value::Null) => "",
        Some(_) => root.string("Context")?.unwrap_or(""),
    };
    if context.chars().count() > MAX_SUBSCRIPTION_STRING {
        return Err(ApiError::property_incorrect(
            "/Context",
            &show(&Value::String(context.into()), false),
            format!("Context is longer than {MAX_SUBSCRIPTION_STRING} characters"),
        ));
    }
    let strings = |name: &str| -> ApiResult<Vec<String>> {
        let Some(v) = root.get(name) else {
            return Ok(Vec::new());
        };
        let items = match v {
            Value::Array(items) if items.len() <= MAX_FILTER_ENTRIES => items,
            Value::Array(_) => {
                return Err(ApiError::property_incorrect(
                    &root.ptr(name),
                    &show(v, false),
                    format!("{name} has more than {MAX_FILTER_ENTRIES} entries"),
                ))
            }
            _ => return Err(root.type_error(name, v, "an array of strings", false)),
        };
        items
            .iter()
            .map(|i| match i {
                Value::String(s) if s.chars().count() <= MAX_SUBSCRIPTION_STRING => Ok(s.clone()),
                _ => Err(root.type_error(
                    name,
                    v,
                    "an array of strings (each at most 256 characters)",
                    false,
                )),
            })
            .collect()
    };
    let event_types = strings("EventTypes")?;
    for t in &event_types {
        if !EVENT_TYPES.contains(&t.as_str()) {
            return Err(ApiError::property_not_in_list(
                "/EventTypes",
                &show(&Value::String(t.clone()), false),
                &EVENT_TYPES,
            ));
        }
    }
    let registry_prefixes = strings("RegistryPrefixes")?;
    for p in &registry_prefixes {
        if p != "ResourceEvent" {
            return Err(ApiError::property_not_in_list(
                "/RegistryPrefixes",
                &show(&Value::String(p.clone()), false),
                &["ResourceEvent"],
            ));
        }
    }
    let message_ids = strings("MessageIds")?;
    for m in &message_ids {
        if !m.starts_with("ResourceEvent.") {
            return Err(ApiError::property_incorrect(
                "/MessageIds",
                &show(&Value::String(m.clone()), false),
                "events carry ResourceEvent messages only (ResourceEvent.MessageKey or \
                 ResourceEvent.1.4.MessageKey)",
            ));
        }
    }
    let origin_resources = match root.links("OriginResources")? {
        None => Vec::new(),
        Some(links) if links.len() > MAX_FILTER_ENTRIES => {
            return Err(ApiError::property_incorrect(
                "/OriginResources",
                &links.len().to_string(),
                format!("OriginResources has more than {MAX_FILTER_ENTRIES} entries"),
            ))
        }
        Some(links) => {
            for l in &links {
                if !l.starts_with("/redfish/v1/") || l.len() > MAX_SUBSCRIPTION_STRING {
                    return Err(ApiError::property_incorrect(
                        "/OriginResources",
                        &show(&Value::String((*l).into()), false),
                        "each OriginResources entry must be a resource of this service \
                         (/redfish/v1/…)",
                    ));
                }
            }
            links
                .into_iter()
                .map(|l| l.trim_end_matches('/').to_string())
                .collect()
        }
    };
    Ok(crate::mgmt::store::SubscriptionRecord {
        destination: destination.to_string(),
        context: context.to_string(),
        event_types,
        registry_prefixes,
        message_ids,
        origin_resources,
        subordinate_resources: root.boolean("SubordinateResources")?.unwrap_or(false),
        retry_policy: policy.to_string(),
        suspended: false,
    })
}

/// A body that must be empty or `{}` (DELETE, actions without parameters).
pub fn no_parameters(bytes: &[u8], action: &'static str) -> ApiResult<()> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    let map = parse(bytes)?;
    Obj::root(&map, Ctx::Action(action)).only(&[], &[])
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;
    use proptest::prelude::*;

    fn id(e: &ApiError) -> String {
        e.info[0].message_id()
    }

    #[test]
    fn zone_patch_ok() {
        let p = zone_patch(br#"{"Links":{"Endpoints":[{"@odata.id":"/a"},{"@odata.id":"/b"}]},"@odata.etag":"W/\"x\""}"#).unwrap();
        assert_eq!(p.endpoints, ["/a", "/b"]);
    }

    #[test]
    fn zone_patch_errors() {
        let cases: &[(&[u8], &str, &str)] = &[
            (b"{", "MalformedJSON", ""),
            (b"[]", "UnrecognizedRequestBody", ""),
            (b"{}", "EmptyJSON", ""),
            (
                br#"{"Links":{"Endpoints":[]},"Foo":1}"#,
                "PropertyUnknown",
                "/Foo",
            ),
            (br#"{"Name":"x"}"#, "PropertyNotWritable", "/Name"),
            (
                br#"{"Links":{"Endpoints":[],"Bar":1}}"#,
                "PropertyUnknown",
                "/Links/Bar",
            ),
            (br#"{"Links":[]}"#, "PropertyValueTypeError", "/Links"),
            (
                br#"{"Links":{"Endpoints":"x"}}"#,
                "PropertyValueTypeError",
                "/Links/Endpoints",
            ),
            (
                br#"{"Links":{"Endpoints":[{"@odata.id":1}]}}"#,
                "PropertyValueTypeError",
                "/Links/Endpoints",
            ),
            (
                br#"{"Links":{"Endpoints":[{"@odata.id":"/a","x":1}]}}"#,
                "PropertyValueTypeError",
                "/Links/Endpoints",
            ),
            (br#"{"Links":{}}"#, "PropertyMissing", "/Links/Endpoints"),
        ];
        for (body, want, pointer) in cases {
            let e = zone_patch(body).unwrap_err();
            assert_eq!(
                id(&e),
                format!("Base.1.22.{want}"),
                "{}",
                String::from_utf8_lossy(body)
            );
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
            if !pointer.is_empty() {
                assert_eq!(e.info[0].related, [pointer.to_string()]);
                assert!(e.message.contains(pointer), "{}", e.message);
            }
        }
    }

    #[test]
    fn action_errors() {
        let a = "Zone.AddEndpoint";
        assert_eq!(
            endpoint_action(
                br#"{"Endpoint":{"@odata.id":"/e"},"ZoneETag":"W/\"1\""}"#,
                a
            )
            .unwrap(),
            EndpointAction {
                endpoint: "/e".into(),
                endpoint_etag: None,
                zone_etag: Some("W/\"1\"".into()),
                vm: None,
                lease: None,
            }
        );
        let leased =
            br#"{"Endpoint": {"@odata.id": "/e"}, "Oem": {"Pcietun": {"LeaseSeconds": 90}}}"#;
        assert_eq!(
            endpoint_action(leased, a).unwrap().lease,
            Some(std::time::Duration::from_secs(90))
        );
        assert_eq!(
            id(&endpoint_action(leased, "Zone.RemoveEndpoint").unwrap_err()),
            "Base.1.22.ActionParameterUnknown"
        );
        let with_vm =
            br#"{"Endpoint": {"@odata.id": "/e"}, "Oem": {"Pcietun": {"Vm": {"Name": "web1"}}}}"#;
        assert_eq!(
            endpoint_action(with_vm, a).unwrap().vm.as_deref(),
            Some("web1")
        );
        // Only an assignment names a VM; a name must be one a host can carry.
        let e = endpoint_action(with_vm, "Zone.RemoveEndpoint").unwrap_err();
        assert_eq!(id(&e), "Base.1.22.ActionParameterUnknown");
        for bad in [
            &br#"{"Endpoint": {"@odata.id": "/e"}, "Oem": {"Pcietun": {"Vm": {"Name": "a b"}}}}"#[..],
            br#"{"Endpoint": {"@odata.id": "/e"}, "Oem": {"Pcietun": {"Vm": {"Name": ""}}}}"#,
        ] {
            let e = endpoint_action(bad, a).unwrap_err();
            assert_eq!(id(&e), "Base.1.22.ActionParameterValueFormatError");
        }
        let e = endpoint_action(
            br#"{"Endpoint": {"@odata.id": "/e"}, "Oem": {"Pcietun": {"Vm": {"Nam": "x"}}}}"#,
            a,
        )
        .unwrap_err();
        assert_eq!(id(&e), "Base.1.22.ActionParameterUnknown");
        let e = endpoint_action(b"{}", a).unwrap_err();
        assert_eq!(id(&e), "Base.1.22.ActionParameterMissing");
        assert_eq!(e.info[0].args, [a, "Endpoint"]);
        let e = endpoint_action(br#"{"Endpoint":{"@odata.id":"/e"},"Force":true}"#, a).unwrap_err();
        assert_eq!(id(&e), "Base.1.22.ActionParameterUnknown");
        let e = endpoint_action(br#"{"Endpoint":"/e"}"#, a).unwrap_err();
        assert_eq!(id(&e), "Base.1.22.ActionParameterValueTypeError");
        assert_eq!(e.info[0].args, ["/e", "Endpoint", a]);
    }

    #[test]
    fn passwords_are_not_echoed() {
        let e = session_create(br#"{"UserName":"a","Password":12345678}"#).unwrap_err();
        assert_eq!(id(&e), "Base.1.22.PropertyValueTypeError");
        assert!(!e.body().to_string().contains("12345678"));
        let e = account_patch(br#"{"Password":["hunter22"]}"#).unwrap_err();
        assert!(!e.body().to_string().contains("hunter22"));
        assert!(!format!(
            "{:?}",
            session_create(br#"{"UserName":"a","Password":"hunter22"}"#).unwrap()
        )
        .contains("hunter22"));
    }

    #[test]
    fn accounts() {
        let c = account_create(br#"{"UserName":"op","Password":"pw123456","RoleId":"Operator"}"#)
            .unwrap();
        assert_eq!(
            (c.user.as_str(), c.role, c.enabled),
            ("op", Role::Operator, true)
        );
        let e = account_create(br#"{"UserName":"op","Password":"pw123456","RoleId":"Root"}"#)
            .unwrap_err();
        assert_eq!(id(&e), "Base.1.22.PropertyValueNotInList");
        let e = account_patch(br#"{"UserName":"x"}"#).unwrap_err();
        assert_eq!(id(&e), "Base.1.22.PropertyNotWritable");
        let p = account_patch(br#"{"Enabled":false}"#).unwrap();
        assert_eq!(p.enabled, Some(false));
    }

    #[test]
    fn session_timeout_range() {
        assert_eq!(
            session_service_patch(br#"{"SessionTimeout":600}"#)
                .unwrap()
                .timeout_s,
            600
        );
        for bad in [
            &br#"{"SessionTimeout":5}"#[..],
            br#"{"SessionTimeout":-1}"#,
            br#"{"SessionTimeout":1e99}"#,
        ] {
            assert!(session_service_patch(bad).is_err());
        }
    }

    #[test]
    fn deep_nesting_is_refused() {
        let body = format!("{{\"Links\":{}{}}}", "[".repeat(100), "]".repeat(100));
        assert_eq!(
            id(&zone_patch(body.as_bytes()).unwrap_err()),
            "Base.1.22.MalformedJSON"
        );
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = zone_patch(&bytes);
            let _ = endpoint_action(&bytes, "Zone.AddEndpoint");
            let _ = session_create(&bytes);
            let _ = account_create(&bytes);
            let _ = account_patch(&bytes);
            let _ = session_service_patch(&bytes);
            let _ = no_parameters(&bytes, "X");
        }

        #[test]
        fn zone_patch_roundtrip(ids in proptest::collection::vec("[a-z0-9/._-]{1,20}", 0..8)) {
            let body = serde_json::json!({"Links": {"Endpoints": ids.iter().map(|i| serde_json::json!({"@odata.id": i})).collect::<Vec<_>>()}});
            let p = zone_patch(body.to_string().as_bytes()).unwrap();
            prop_assert_eq!(p.endpoints, ids);
        }
    }
}
