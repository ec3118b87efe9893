//! The HTTP(S) server of the management API: axum on hyper, served by `axum-server` over plain
//! TCP or rustls (ring provider), on a small multi-thread tokio runtime of its own thread, so
//! the appliance's synchronous pumps never share a thread with it.
//!
//! The server only carries bytes: it bounds and times the request body (413 beyond
//! [`Service::max_body`], after reading and discarding up to 1 MiB so the client sees the
//! answer; 408 when it trickles), hands the request to the synchronous
//! [`Service`] on the runtime's blocking pool (password hashing is slow by design and must not
//! stall the I/O workers), and sends back the response.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{Request, Response};
use axum::Router;
use axum_server::tls_rustls::RustlsConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::auth::{hash_password, AuthError};
use super::config::{ApiConfig, ConfigError, TlsFiles};
use super::pool::Pool;
use super::redfish::{events, Service, ServiceOptions, StartError, StreamCredential};
use super::store::{Store, StoreError};

/// How long a client may take to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a client may take to send a request body.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// How often the rules are applied ([`Service::tick`]).
const RULES_TICK: Duration = Duration::from_secs(1);

/// How long shutdown waits for requests in flight.
const GRACE: Duration = Duration::from_secs(2);

/// Why the server did not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The first administrator cannot be created.
    #[error("first administrator: {0}")]
    Admin(#[from] AuthError),
    /// The service could not load or seed its state.
    #[error(transparent)]
    Start(#[from] StartError),
    /// The state store cannot be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The listen address cannot be bound.
    #[error("API listen address {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The TLS certificate or key cannot be used.
    #[error("API TLS {what} {path}: {reason}")]
    Tls {
        /// "certificate" or "key".
        what: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        reason: String,
    },
    /// The runtime or its thread could not be created.
    #[error("API runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

/// A running API server; dropping it shuts it down.
#[derive(Debug)]
pub struct ServerHandle {
    addr: SocketAddr,
    tls: bool,
    handle: axum_server::Handle<SocketAddr>,
    thread: Option<JoinHandle<()>>,
}

impl ServerHandle {
    /// The address the server listens on (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL, e.g. `http://127.0.0.1:8443`.
    pub fn url(&self) -> String {
        format!(
            "{}://{}",
            if self.tls { "https" } else { "http" },
            self.addr
        )
    }

    /// Stop accepting, let requests in flight finish (bounded), and join the thread.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.handle.graceful_shutdown(Some(GRACE));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The management API server.
#[derive(Debug)]
pub struct Server;

impl Server {
    /// Check a configuration without serving anything: the administrator's password file and
    /// the TLS files are read and checked as [`Server::start`] reads them, so a caller can
    /// refuse a bad configuration before it starts anything else.
    pub fn check(config: &ApiConfig) -> Result<(), ServerError> {
        let (_, password) = config.admin_credentials()?;
        drop(password);
        if let Some(tls) = &config.tls {
            load_tls(tls)?;
        }
        Ok(())
    }

    /// Start serving `pool` as configured: reads the administrator's password file, loads the
    /// TLS files, binds, and returns once the socket listens. Any [`Pool`] will do (the
    /// appliance's, through the CLI's adapter; [`super::fake::FakePool`] in tests and demos);
    /// the server runs until the handle is dropped or shut down.
    pub fn start(config: &ApiConfig, pool: Arc<dyn Pool>) -> Result<ServerHandle, ServerError> {
        let (store, name) = config.open_state()?;
        Self::start_with_store(config, pool, store, name)
    }

    /// [`Server::start`] with an already opened state store (`pcietun appliance` opens it
    /// first, to restore the acknowledged assignments before the appliance serves); `name`
    /// names it in logs.
    pub fn start_with_store(
        config: &ApiConfig,
        pool: Arc<dyn Pool>,
        store: Arc<dyn Store>,
        name: String,
    ) -> Result<ServerHandle, ServerError> {
        let (admin, password) = config.admin_credentials()?;
        let hash = hash_password(&password)?;
        let mut opts = ServiceOptions::new(admin, hash);
        opts.session_timeout = config.session_timeout;
        opts.max_body = config.max_body;
        opts.store = store;
        opts.store_name = name;
        opts.reclaim_after = config.reclaim_after;
        let service = Arc::new(Service::new(pool, opts)?);
        Self::start_service(service, config.listen, config.tls.as_ref())
    }

    /// Serve an already built [`Service`] (tests use this to choose its clock).
    pub fn start_service(
        service: Arc<Service>,
        listen: SocketAddr,
        tls: Option<&TlsFiles>,
    ) -> Result<ServerHandle, ServerError> {
        let tls_config = tls.map(load_tls).transpose()?;
        let listener = std::net::TcpListener::bind(listen).map_err(|source| ServerError::Bind {
            addr: listen,
            source,
        })?;
        let addr = listener.local_addr().map_err(|source| ServerError::Bind {
            addr: listen,
            source,
        })?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .max_blocking_threads(8)
            .thread_name("pcietun-api")
            .enable_all()
            .build()
            .map_err(ServerError::Runtime)?;
        let handle = axum_server::Handle::new();
        let ticking = service.clone();
        let app = Router::new()
            .route(events::SSE_URI, axum::routing::any(stream_events))
            .fallback(serve)
            .with_state(service);
        let h = handle.clone();
        let is_tls = tls_config.is_some();
        let thread = std::thread::Builder::new()
            .name("pcietun-api".into())
            .spawn(move || {
                runtime.block_on(async move {
                    // The rules (docs/api.md "Rules") are applied once a second, on the
                    // blocking pool like requests; the task ends with the runtime.
                    tokio::spawn(async move {
                        let mut every = tokio::time::interval(RULES_TICK);
                        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                        loop {
                            every.tick().await;
                            let s = ticking.clone();
                            let _ = tokio::task::spawn_blocking(move || s.tick()).await;
                        }
                    });
                    // HTTP/1.1 only (ALPN says so too); a client gets HEADER_TIMEOUT to send
                    // each request's headers, so idle or trickling connections do not pile up.
                    let result = match tls_config {
                        Some(cfg) => match axum_server::from_tcp_rustls(listener, cfg) {
                            Ok(mut s) => {
                                s.http_builder()
                                    .http1()
                                    .header_read_timeout(Some(HEADER_TIMEOUT));
                                s.http1_only()
                                    .first_request_timeout(HEADER_TIMEOUT)
                                    .handle(h)
                                    .serve(app.into_make_service())
                                    .await
                            }
                            Err(e) => Err(e),
                        },
                        None => match axum_server::from_tcp(listener) {
                            Ok(mut s) => {
                                s.http_builder()
                                    .http1()
                                    .header_read_timeout(Some(HEADER_TIMEOUT));
                                s.http1_only()
                                    .first_request_timeout(HEADER_TIMEOUT)
                                    .handle(h)
                                    .serve(app.into_make_service())
                                    .await
                            }
                            Err(e) => Err(e),
                        },
                    };
                    if let Err(e) = result {
                        tracing::error!("management API server stopped: {e}");
                    }
                });
            })
            .map_err(ServerError::Runtime)?;
        tracing::info!(%addr, tls = is_tls, "management API listening");
        Ok(ServerHandle {
            addr,
            tls: is_tls,
            handle,
            thread: Some(thread),
        })
    }
}

/// How much of an oversized body is read and discarded before answering 413, so that an
/// ordinary client gets the answer instead of a connection reset mid-upload.
const DRAIN_CAP: u64 = 1 << 20;

/// Why a request body was not collected.
enum BodyError {
    /// Larger than the limit.
    TooLarge,
    /// The connection failed or the body did not arrive in time.
    Broken,
}

/// Collect at most `limit` bytes; beyond that, discard up to [`DRAIN_CAP`] and report
/// [`BodyError::TooLarge`].
async fn read_body(mut body: Body, limit: usize) -> Result<bytes::Bytes, BodyError> {
    use http_body_util::BodyExt;
    let mut buf = bytes::BytesMut::new();
    let mut seen: u64 = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| BodyError::Broken)?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        seen += data.len() as u64;
        if seen > limit as u64 {
            if seen > DRAIN_CAP {
                return Err(BodyError::TooLarge);
            }
            buf.clear();
            continue;
        }
        buf.extend_from_slice(data);
    }
    if seen > limit as u64 {
        Err(BodyError::TooLarge)
    } else {
        Ok(buf.freeze())
    }
}

async fn serve(State(service): State<Arc<Service>>, req: Request<Body>) -> Response<Body> {
    use super::redfish::error::ApiError;
    let (parts, body) = req.into_parts();
    let limit = service.max_body();
    let declared = parts
        .headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > DRAIN_CAP) {
        return service.payload_too_large().map(Body::from);
    }
    let bytes = match tokio::time::timeout(BODY_TIMEOUT, read_body(body, limit)).await {
        Ok(Ok(b)) => b,
        Ok(Err(BodyError::TooLarge)) => return service.payload_too_large().map(Body::from),
        Ok(Err(BodyError::Broken)) | Err(_) => {
            return service.error(ApiError::body_timeout()).map(Body::from)
        }
    };
    let req = Request::from_parts(parts, bytes);
    let svc = service.clone();
    match tokio::task::spawn_blocking(move || svc.handle(req)).await {
        Ok(resp) => resp.map(Body::from),
        Err(e) => service
            .error(ApiError::internal(format!("request handler failed: {e}")))
            .map(Body::from),
    }
}

/// How often an idle event stream sends a keep-alive comment (and re-checks its credential).
const KEEPALIVE: Duration = Duration::from_secs(15);

/// Counts an open event stream; uncounts it when the stream ends.
struct StreamSlot(Arc<Service>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0
            .events()
            .streams
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

struct StreamState {
    replay: std::collections::VecDeque<Arc<events::EventRecord>>,
    rx: tokio::sync::broadcast::Receiver<Arc<events::EventRecord>>,
    credential: StreamCredential,
    slot: StreamSlot,
}

/// `GET /redfish/v1/EventService/SSE`: the live event stream (text/event-stream), starting
/// after `Last-Event-ID` when the client sends one. It ends when the client goes, the
/// server shuts down, or the session that opened it ends. Any other method goes to the
/// service, which answers 405.
async fn stream_events(State(service): State<Arc<Service>>, req: Request<Body>) -> Response<Body> {
    use std::sync::atomic::Ordering;
    use tokio::sync::broadcast::error::RecvError;
    if req.method() != axum::http::Method::GET || req.uri().query().is_some() {
        return serve(State(service), req).await;
    }
    let headers = req.headers().clone();
    let svc = service.clone();
    let credential = match tokio::task::spawn_blocking(move || svc.authorize_stream(&headers)).await
    {
        Ok(Ok(c)) => c,
        Ok(Err(resp)) => return (*resp).map(Body::from),
        Err(e) => {
            return service
                .error(super::redfish::error::ApiError::internal(format!(
                    "authorisation failed: {e}"
                )))
                .map(Body::from)
        }
    };
    if service.events().streams.fetch_add(1, Ordering::SeqCst) >= events::MAX_STREAMS {
        service.events().streams.fetch_sub(1, Ordering::SeqCst);
        return service
            .error(super::redfish::error::ApiError::in_use(format!(
                "{} event streams are open already; close one first",
                events::MAX_STREAMS
            )))
            .map(Body::from);
    }
    let (replay, rx) = service
        .events()
        .subscribe(super::redfish::last_event_id(req.headers()));
    let state = StreamState {
        replay: replay.into(),
        rx,
        credential,
        slot: StreamSlot(service.clone()),
    };
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        if let Some(r) = st.replay.pop_front() {
            return Some((
                Ok::<_, std::convert::Infallible>(bytes::Bytes::from(r.sse_frame())),
                st,
            ));
        }
        let next = tokio::time::timeout(KEEPALIVE, st.rx.recv()).await;
        let svc = st.slot.0.clone();
        let cred = st.credential.clone();
        let ok = tokio::task::spawn_blocking(move || svc.still_authorized(&cred))
            .await
            .unwrap_or(false);
        if !ok {
            return None;
        }
        let chunk = match next {
            Ok(Ok(r)) => r.sse_frame(),
            Ok(Err(RecvError::Lagged(n))) => {
                format!(": {n} events were dropped for this slow stream\n\n")
            }
            Ok(Err(RecvError::Closed)) => return None,
            Err(_) => ": keep-alive\n\n".to_string(),
        };
        Some((Ok(bytes::Bytes::from(chunk)), st))
    });
    let mut resp = Response::new(Body::from_stream(stream));
    let h = resp.headers_mut();
    h.insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("text/event-stream"),
    );
    h.insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    h.insert("OData-Version", axum::http::HeaderValue::from_static("4.0"));
    resp
}

fn tls_error(what: &'static str, path: &Path, reason: impl ToString) -> ServerError {
    ServerError::Tls {
        what,
        path: path.into(),
        reason: reason.to_string(),
    }
}

/// Load the certificate chain and key into a rustls server configuration (ring provider,
/// TLS 1.2 and 1.3, HTTP/1.1 by ALPN). The key file must not be readable by group or others.
fn load_tls(files: &TlsFiles) -> Result<RustlsConfig, ServerError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&files.key)
        .map_err(|e| tls_error("key", &files.key, e))?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        return Err(tls_error(
            "key",
            &files.key,
            format!("readable by group or others (mode {mode:o}); chmod 600 it"),
        ));
    }
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| tls_error("certificate", &files.cert, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| tls_error("certificate", &files.cert, e))?;
    if certs.is_empty() {
        return Err(tls_error(
            "certificate",
            &files.cert,
            "no certificate in the file",
        ));
    }
    let key =
        PrivateKeyDer::from_pem_file(&files.key).map_err(|e| tls_error("key", &files.key, e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error("certificate", &files.cert, e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| tls_error("key", &files.key, e))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(RustlsConfig::from_config(Arc::new(config)))
}
