//! Redfish error responses (DSP0266 §"Error responses"): an HTTP status, and a body
//! `{"error": {"code", "message", "@Message.ExtendedInfo": [Message…]}}` whose messages come
//! from the DMTF Base message registry (Base.1.22, DSP8011).
//!
//! `code` is the MessageId of the first message, `message` says in one line what exactly is
//! wrong (it names the property, resource or function), and each ExtendedInfo entry is a
//! registry message with its arguments substituted. Values that are secrets (passwords) are
//! never echoed back.

use axum::http::{header, HeaderValue, Method, Response, StatusCode};
use bytes::Bytes;
use serde_json::{json, Value};

/// The registry prefix of every standard message we send.
pub const BASE: &str = "Base.1.22";

/// One message of the Base registry: (id, template with `%1`…, severity, resolution).
struct Entry {
    id: &'static str,
    text: &'static str,
    severity: &'static str,
    resolution: &'static str,
}

const fn e(
    id: &'static str,
    text: &'static str,
    severity: &'static str,
    resolution: &'static str,
) -> Entry {
    Entry {
        id,
        text,
        severity,
        resolution,
    }
}

/// The Base messages this service uses (texts as DSP8011 defines them).
const REGISTRY: &[Entry] = &[
    e("Success", "The request completed successfully.", "OK", "None."),
    e("Created", "The resource was created successfully.", "OK", "None."),
    e("GeneralError", "A general error has occurred.  See Resolution for information on how to resolve the error, or @Message.ExtendedInfo if Resolution is not provided.", "Critical", "None."),
    e("MalformedJSON", "The request body submitted was malformed JSON and could not be parsed by the receiving service.", "Critical", "Ensure that the request body is valid JSON and resubmit the request."),
    e("EmptyJSON", "The request body submitted contained an empty JSON object and the service is unable to process it.", "Warning", "Add properties in the JSON object and resubmit the request."),
    e("UnrecognizedRequestBody", "The service detected a malformed request body that it was unable to interpret.", "Warning", "Correct the request body and resubmit the request if it failed."),
    e("PropertyUnknown", "The property %1 is not in the list of valid properties for the resource.", "Warning", "Remove the unknown property from the request body and resubmit the request if the operation failed."),
    e("PropertyValueTypeError", "The value '%1' for the property %2 is not a type that the property can accept.", "Warning", "Correct the value for the property in the request body and resubmit the request if the operation failed."),
    e("PropertyValueFormatError", "The value '%1' for the property %2 is not a format that the property can accept.", "Warning", "Correct the value for the property in the request body and resubmit the request if the operation failed."),
    e("PropertyValueNotInList", "The value '%1' for the property %2 is not in the list of acceptable values.", "Warning", "Choose a value from the enumeration list that the implementation can support and resubmit the request if the operation failed."),
    e("PropertyValueOutOfRange", "The value '%1' for the property %2 is not in the supported range of acceptable values.", "Warning", "Correct the value for the property in the request body and resubmit the request if the operation failed."),
    e("PropertyValueIncorrect", "The property '%1' with the requested value of '%2' could not be written because the value is not acceptable for the property.", "Warning", "Correct the value for the property in the request body and resubmit the request if the operation failed."),
    e("PropertyNotWritable", "The property %1 is a read-only property and cannot be assigned a value.", "Warning", "Remove the property from the request body and resubmit the request if the operation failed."),
    e("PropertyMissing", "The property %1 is a required property and must be included in the request.", "Warning", "Ensure that the property is in the request body and has a valid value and resubmit the request if the operation failed."),
    e("ActionNotSupported", "The action %1 is not supported by the resource.", "Critical", "The action supplied cannot be resubmitted to the implementation.  Perhaps the action was invalid, the wrong resource was the target or the implementation documentation may be of assistance."),
    e("ActionParameterMissing", "The action %1 requires the parameter %2 to be present in the request body.", "Critical", "Supply the action with the required parameter in the request body when the request is resubmitted."),
    e("ActionParameterUnknown", "The action %1 was submitted with the invalid parameter %2.", "Warning", "Correct the invalid action parameter and resubmit the request if the operation failed."),
    e("ActionParameterValueTypeError", "The value '%1' for the parameter %2 in the action %3 is not a type that the parameter can accept.", "Warning", "Correct the value for the parameter in the request body and resubmit the request if the operation failed."),
    e("ActionParameterValueFormatError", "The value '%1' for the parameter %2 in the action %3 is not a format that the parameter can accept.", "Warning", "Correct the value for the parameter in the request body and resubmit the request if the operation failed."),
    e("ActionParameterValueConflict", "The parameter '%1' with the requested value of '%2' does not meet the constraints of the implementation.", "Warning", "No resolution is required."),
    e("ResourceNotFound", "The requested resource of type %1 named '%2' was not found.", "Critical", "Provide a valid resource identifier and resubmit the request."),
    e("ResourceMissingAtURI", "The resource at the URI '%1' was not found.", "Critical", "Place a valid resource at the URI or correct the URI and resubmit the request."),
    e("ResourceInUse", "The change to the requested resource failed because the resource is in use or in transition.", "Warning", "Remove the condition and resubmit the request if the operation failed."),
    e("ResourceAlreadyExists", "The requested resource of type %1 with the property %2 with the value '%3' already exists.", "Critical", "Do not repeat the create operation as the resource has already been created."),
    e("ResourceCannotBeDeleted", "The delete request failed because the resource requested cannot be deleted.", "Critical", "Do not attempt to delete a non-deletable resource."),
    e("PayloadTooLarge", "The supplied payload exceeds the maximum size supported by the service.", "Critical", "Correct the request body and resubmit the request."),
    e("NoValidSession", "There is no valid session established with the implementation.", "Critical", "Establish a session before attempting any operations."),
    e("InsufficientPrivilege", "There are insufficient privileges for the account or credentials associated with the current session to perform the requested operation.", "Critical", "Either abandon the operation or change the associated access rights and resubmit the request if the operation failed."),
    e("SessionLimitExceeded", "The session establishment failed due to the number of simultaneous sessions exceeding the limit of the implementation.", "Critical", "Reduce the number of other sessions before trying to establish the session or increase the limit of simultaneous sessions, if supported."),
    e("PreconditionFailed", "The ETag supplied did not match the ETag required to change this resource.", "Critical", "Try the operation again using the appropriate ETag."),
    e("PreconditionRequired", "A precondition header or annotation is required to change this resource.", "Critical", "Try the operation again using an If-Match or If-None-Match header and appropriate ETag."),
    e("OperationNotAllowed", "The HTTP method is not allowed on this resource.", "Critical", "None."),
    e("QueryParameterUnsupported", "Query parameter '%1' is not supported.", "Warning", "Correct or remove the query parameter and resubmit the request."),
    e("HeaderInvalid", "Header '%1' is invalid.", "Critical", "Resubmit the request with a valid value for the header."),
    e("PasswordIncorrectLength", "The password provided for this account does not meet the password length requirements of the service.", "Critical", "Choose a password that meets the length requirements of the service and retry the operation."),
    e("OperationFailed", "An error occurred internal to the service as part of the overall request.  Partial results may have been returned.", "Warning", "Resubmit the request.  If the problem persists, consider resetting the service or provider."),
    e("InternalError", "The request failed due to an internal service error.  The service is still operational.", "Critical", "Resubmit the request.  If the problem persists, consider resetting the service."),
    e("ServiceShuttingDown", "The operation failed because the service is shutting down and can no longer take incoming requests.", "Critical", "When the service becomes available, resubmit the request if the operation failed."),
];

fn entry(id: &str) -> &'static Entry {
    REGISTRY.iter().find(|e| e.id == id).unwrap_or(&REGISTRY[2]) // GeneralError
}

/// One registry message with its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Id within the Base registry (`PropertyUnknown`).
    pub id: &'static str,
    /// Arguments for `%1`, `%2`, ….
    pub args: Vec<String>,
    /// JSON pointers of the properties concerned.
    pub related: Vec<String>,
    /// Overrides the registry's resolution (used to carry a failure's reason).
    pub resolution: Option<String>,
}

impl Message {
    /// A message with arguments.
    pub fn new(id: &'static str, args: &[&str]) -> Self {
        Message {
            id,
            args: args.iter().map(|s| s.to_string()).collect(),
            related: Vec::new(),
            resolution: None,
        }
    }

    /// Name the property the message is about (`/Links/Endpoints`).
    pub fn related(mut self, pointer: &str) -> Self {
        self.related.push(pointer.to_string());
        self
    }

    /// The full MessageId (`Base.1.22.PropertyUnknown`).
    pub fn message_id(&self) -> String {
        format!("{BASE}.{}", self.id)
    }

    /// The message text with its arguments substituted.
    pub fn text(&self) -> String {
        let mut out = entry(self.id).text.to_string();
        // Highest first so %1 does not eat the start of %10.
        for (i, arg) in self.args.iter().enumerate().rev() {
            out = out.replace(&format!("%{}", i + 1), arg);
        }
        out
    }

    /// The Redfish `Message` object.
    pub fn to_json(&self) -> Value {
        let e = entry(self.id);
        let mut v = json!({
            "@odata.type": "#Message.v1_3_0.Message",
            "MessageId": self.message_id(),
            "Message": self.text(),
            "MessageArgs": self.args,
            "MessageSeverity": e.severity,
            "Resolution": self.resolution.as_deref().unwrap_or(e.resolution),
        });
        if !self.related.is_empty() {
            v["RelatedProperties"] = json!(self.related);
        }
        v
    }
}

/// A request the service refuses, as a Redfish error response.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{status}: {message}")]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// One line naming what is wrong.
    pub message: String,
    /// Registry messages.
    pub info: Vec<Message>,
    /// Methods the resource allows (sent as `Allow` on 405).
    pub allow: Option<&'static [Method]>,
    /// Ask for HTTP Basic credentials (`WWW-Authenticate`, on 401).
    pub challenge: bool,
}

/// Short for a result whose error is a Redfish error response.
pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    /// An error with one registry message.
    pub fn new(status: StatusCode, message: impl Into<String>, info: Message) -> Self {
        ApiError {
            status,
            message: message.into(),
            info: vec![info],
            allow: None,
            challenge: false,
        }
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        let code = self
            .info
            .first()
            .map(Message::message_id)
            .unwrap_or_else(|| format!("{BASE}.GeneralError"));
        json!({
            "error": {
                "code": code,
                "message": self.message,
                "@Message.ExtendedInfo": self.info.iter().map(Message::to_json).collect::<Vec<_>>(),
            }
        })
    }

    /// The HTTP response.
    pub fn into_response(self) -> Response<Bytes> {
        let body = serde_json::to_vec(&self.body()).unwrap_or_default();
        let mut resp = Response::new(Bytes::from(body));
        *resp.status_mut() = self.status;
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        if let Some(allow) = self.allow {
            h.insert(header::ALLOW, allow_header(allow));
        }
        if self.challenge {
            h.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"pcietun\", charset=\"UTF-8\""),
            );
        }
        resp
    }

    // --- Constructors, one per situation. -----------------------------------------------------

    /// The body is not JSON.
    pub fn malformed_json(detail: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            format!("the request body is not valid JSON: {detail}"),
            Message::new("MalformedJSON", &[]),
        )
    }

    /// The body is JSON but not an object.
    pub fn not_an_object() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "the request body must be a JSON object",
            Message::new("UnrecognizedRequestBody", &[]),
        )
    }

    /// `{}` where something to do was expected.
    pub fn empty_json() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "the request body is an empty JSON object",
            Message::new("EmptyJSON", &[]),
        )
    }

    /// A property the resource does not have.
    pub fn property_unknown(pointer: &str) -> Self {
        let name = leaf(pointer);
        Self::new(
            StatusCode::BAD_REQUEST,
            format!("unknown property {pointer}"),
            Message::new("PropertyUnknown", &[name]).related(pointer),
        )
    }

    /// A property whose value has the wrong JSON type.
    pub fn property_type(pointer: &str, value: &str, want: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            format!("property {pointer} must be {want}"),
            Message::new("PropertyValueTypeError", &[value, leaf(pointer)]).related(pointer),
        )
    }

    /// A string property whose value has the wrong format.
    pub fn property_format(pointer: &str, value: &str, why: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            format!("property {pointer}: {why}"),
            Message::new("PropertyValueFormatError", &[value, leaf(pointer)]).related(pointer),
        )
    }

    /// An enum property with a value outside its list.
    pub fn property_not_in_list(pointer: &str, value: &str, allowed: &[&str]) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            format!("property {pointer} must be one of {}", allowed.join(", ")),
            Message::new("PropertyValueNotInList", &[value, leaf(pointer)]).related(pointer),
        )
    }

    /// A number outside its range.
    pub fn property_out_of_range(pointer: &str, value: &str, range: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            format!("property {pointer} must be in {range}"),
            Message::new("PropertyValueOutOfRange", &[value, leaf(pointer)]).related(pointer),
        )
    }

    /// A value that is well-formed but not acceptable here.
    pub fn property_incorrect(pointer: &str, value: &str, why: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            why,
            Message::new("PropertyValueIncorrect", &[leaf(pointer), value]).related(pointer),
        )
    }

    /// A read-only property in a PATCH or POST.
    pub fn property_not_writable(pointer: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            format!("property {pointer} is read-only"),
            Message::new("PropertyNotWritable", &[leaf(pointer)]).related(pointer),
        )
    }

    /// A required property is missing.
    pub fn property_missing(pointer: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            format!("property {pointer} is required"),
            Message::new("PropertyMissing", &[leaf(pointer)]).related(pointer),
        )
    }

    /// An action this resource does not have.
    pub fn action_not_supported(action: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            format!("action {action} is not supported here"),
            Message::new("ActionNotSupported", &[action]),
        )
    }

    /// A required action parameter is missing.
    pub fn action_parameter_missing(action: &str, param: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            format!("action {action} requires parameter {param}"),
            Message::new("ActionParameterMissing", &[action, param]),
        )
    }

    /// An action parameter the action does not take.
    pub fn action_parameter_unknown(action: &str, param: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            format!("action {action} has no parameter {param}"),
            Message::new("ActionParameterUnknown", &[action, param]),
        )
    }

    /// An action parameter of the wrong JSON type.
    pub fn action_parameter_type(action: &str, param: &str, value: &str, want: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            format!("parameter {param} of action {action} must be {want}"),
            Message::new("ActionParameterValueTypeError", &[value, param, action]),
        )
    }

    /// An action parameter with a badly formed value.
    pub fn action_parameter_format(action: &str, param: &str, value: &str, why: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            format!("parameter {param} of action {action}: {why}"),
            Message::new("ActionParameterValueFormatError", &[value, param, action]),
        )
    }

    /// An action parameter whose value conflicts with the service's state.
    pub fn action_parameter_conflict(param: &str, value: &str, why: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            why,
            Message::new("ActionParameterValueConflict", &[param, value]),
        )
    }

    /// A resource named in a request (not in the URI) does not exist.
    pub fn referenced_not_found(kind: &str, id: &str, what: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            what,
            Message::new("ResourceNotFound", &[kind, id]),
        )
    }

    /// The resource in the URI does not exist (known kind, unknown id).
    pub fn not_found(kind: &str, id: &str, what: impl Into<String>) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            what,
            Message::new("ResourceNotFound", &[kind, id]),
        )
    }

    /// Nothing lives at this URI.
    pub fn missing_at_uri(uri: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            format!("no resource at {uri}"),
            Message::new("ResourceMissingAtURI", &[uri]),
        )
    }

    /// The method is not allowed on the resource.
    pub fn method_not_allowed(method: &Method, uri: &str, allow: &'static [Method]) -> Self {
        let mut e = Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} is not allowed on {uri}"),
            Message::new("OperationNotAllowed", &[]),
        );
        e.allow = Some(allow);
        e
    }

    /// No or bad credentials.
    pub fn no_valid_session(why: &str) -> Self {
        let mut e = Self::new(
            StatusCode::UNAUTHORIZED,
            format!("authentication required: {why}"),
            Message::new("NoValidSession", &[]),
        );
        e.challenge = true;
        e
    }

    /// The caller's role lacks the privilege.
    pub fn insufficient_privilege(user: &str, role: &str, privilege: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            format!("{user} (role {role}) lacks the {privilege} privilege this request needs"),
            Message::new("InsufficientPrivilege", &[]),
        )
    }

    /// `If-Match` did not match.
    pub fn precondition_failed(uri: &str, current: &str) -> Self {
        Self::new(
            StatusCode::PRECONDITION_FAILED,
            format!("{uri} has changed (its ETag is now {current}); read it again and retry"),
            Message::new("PreconditionFailed", &[]),
        )
    }

    /// An ETag action parameter did not match (Zone schema: 428 Precondition Required).
    pub fn etag_parameter_mismatch(param: &str, uri: &str, current: &str) -> Self {
        Self::new(
            StatusCode::PRECONDITION_REQUIRED,
            format!("{param} does not match {uri} (its ETag is now {current})"),
            Message::new("PreconditionRequired", &[]),
        )
    }

    /// The body is larger than the service accepts.
    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body exceeds {limit} bytes"),
            Message::new("PayloadTooLarge", &[]),
        )
    }

    /// A resource is in use or changing.
    pub fn in_use(what: impl Into<String>) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            what,
            Message::new("ResourceInUse", &[]),
        )
    }

    /// A resource to be created already exists.
    pub fn already_exists(kind: &str, property: &str, value: &str) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            format!("a {kind} with {property} {value:?} already exists"),
            Message::new("ResourceAlreadyExists", &[kind, property, value]),
        )
    }

    /// A resource that must stay.
    pub fn cannot_delete(what: impl Into<String>) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            what,
            Message::new("ResourceCannotBeDeleted", &[]),
        )
    }

    /// A `$` query parameter we do not implement.
    pub fn query_unsupported(param: &str) -> Self {
        Self::new(
            StatusCode::NOT_IMPLEMENTED,
            format!("query parameter {param} is not supported"),
            Message::new("QueryParameterUnsupported", &[param]),
        )
    }

    /// A header with an unusable value.
    pub fn header_invalid(name: &str, why: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            format!("header {name}: {why}"),
            Message::new("HeaderInvalid", &[name]),
        )
    }

    /// A body that is not JSON by its Content-Type.
    pub fn unsupported_media_type(got: &str) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Type {got:?} is not accepted; send application/json"),
            Message::new("UnrecognizedRequestBody", &[]),
        )
    }

    /// Too many sessions.
    pub fn session_limit(limit: usize) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the service already has {limit} sessions; log out of one first"),
            Message::new("SessionLimitExceeded", &[]),
        )
    }

    /// A password outside the length policy.
    pub fn password_length(min: usize, max: usize) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            format!("passwords must be {min} to {max} characters long"),
            Message::new("PasswordIncorrectLength", &[]),
        )
    }

    /// A failure inside the service.
    pub fn internal(what: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            what,
            Message::new("InternalError", &[]),
        )
    }

    /// The request body did not arrive in time.
    pub fn body_timeout() -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "the request body did not arrive in time",
            Message::new("UnrecognizedRequestBody", &[]),
        )
    }
}

/// The last path element of a JSON pointer (`/Links/Endpoints` → `Endpoints`).
fn leaf(pointer: &str) -> &str {
    pointer.rsplit('/').next().unwrap_or(pointer)
}

/// The `Allow` header value for a list of methods.
pub fn allow_header(methods: &[Method]) -> HeaderValue {
    let s = methods
        .iter()
        .map(Method::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    HeaderValue::from_str(&s).unwrap_or_else(|_| HeaderValue::from_static("GET"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_shape() {
        let e = ApiError::property_unknown("/Links/Foo");
        let b = e.body();
        assert_eq!(b["error"]["code"], "Base.1.22.PropertyUnknown");
        let info = &b["error"]["@Message.ExtendedInfo"][0];
        assert_eq!(info["MessageId"], "Base.1.22.PropertyUnknown");
        assert_eq!(
            info["Message"],
            "The property Foo is not in the list of valid properties for the resource."
        );
        assert_eq!(info["MessageArgs"][0], "Foo");
        assert_eq!(info["RelatedProperties"][0], "/Links/Foo");
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn substitution_and_unknown_ids() {
        let m = Message::new(
            "ActionParameterValueTypeError",
            &["1", "Endpoint", "Zone.AddEndpoint"],
        );
        assert_eq!(
            m.text(),
            "The value '1' for the parameter Endpoint in the action Zone.AddEndpoint is not a type that the parameter can accept."
        );
        // Every message id used by a constructor is in the registry table.
        for id in [
            "MalformedJSON",
            "PropertyUnknown",
            "NoValidSession",
            "InsufficientPrivilege",
            "PreconditionFailed",
            "PayloadTooLarge",
            "ResourceMissingAtURI",
            "OperationNotAllowed",
        ] {
            assert_eq!(entry(id).id, id);
        }
    }

    #[test]
    fn challenge_and_allow_headers() {
        let r = ApiError::no_valid_session("no credentials").into_response();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert!(r.headers().contains_key(header::WWW_AUTHENTICATE));
        const M: &[Method] = &[Method::GET, Method::PATCH];
        let r = ApiError::method_not_allowed(&Method::POST, "/x", M).into_response();
        assert_eq!(r.headers()[header::ALLOW], "GET, PATCH");
    }
}
