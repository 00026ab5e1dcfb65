//! [`ServiceClient`]: how one orderflow service calls another (the orders service calling
//! inventory and customers, a saga calling payments), with JSON in and out, the caller's
//! correlation, a bearer token, retries of what is safe to repeat, and a circuit breaker per
//! target.
//!
//! # One client per target
//!
//! A [`ServiceClient`] is built once per target service from [`ClientSettings`] and cloned
//! freely (an `Arc` inside): the clones share the connection pool and the circuit breaker. The
//! target is either [`Target::Http`] (a base URL; hyper-util's pooled client, keep-alive, plain
//! HTTP/1.1) or [`Target::InProcess`] (the other service's `axum::Router`, called with
//! `tower::ServiceExt::oneshot`, as the embedded deployment does: the same middleware and
//! handlers run, without a socket).
//!
//! # What a call sends
//!
//! `Accept: application/json`, `Content-Type: application/json` with a body, `Authorization:
//! Bearer ...` when a token is set, and from the [`CallContext`]: `X-Correlation-Id`,
//! `X-Causation-Id` and, if set, `Idempotency-Key`.
//!
//! # Retries
//!
//! An attempt fails *transiently* when it cannot connect or the connection breaks, when it takes
//! longer than [`ClientSettings::timeout`] (sending and reading the whole answer), or when the
//! target answers 429, 502, 503 or 504. Only such a failure is retried, and only when the call is
//! safe to repeat: a GET always, a POST only with an `Idempotency-Key`. Before retry `n` (0-based)
//! the client sleeps a uniformly random time in `[0, min(backoff_max, backoff_base * 2^n)]` ("full
//! jitter"). Every other answer is final at once: a 2xx (decoded), a 4xx, a 500 or any other
//! status. So a call takes at most `(retries + 1) * timeout + retries * backoff_max`.
//! `Retry-After` is not read.
//!
//! # Circuit breaker
//!
//! One per client, i.e. per target, from the `failsafe` crate (its state machine and its
//! consecutive-failures policy). Every *attempt* asks it for permission and reports to it: a
//! transient failure (as above) is a failure; any other answer (2xx, 4xx, 500, an answer that does
//! not decode) is a success, because the target did answer. After
//! [`BreakerSettings::failures`] consecutive failures it opens for
//! [`BreakerSettings::open_for`]; every failed trial doubles the open period, up to
//! [`BreakerSettings::max_open_for`]; a successful trial closes it and resets the period.
//!
//! While it is open a call fails at once with [`ClientError::CircuitOpen`] without sending
//! anything. If it opens between the attempts of one call, the remaining retries are not made and
//! the call ends [`ClientError::Unavailable`] (it did reach the target).
//!
//! failsafe moves from open to half-open lazily, on the first call asked for after the open
//! period, and while half-open it lets every call through (not a single trial) until one reports.
//! failsafe has no public state getter, so [`ServiceClient::breaker_state`] is derived from the
//! transitions failsafe reports (its `Instrument` hooks) plus the open period the policy handed
//! out: it reports [`BreakerState::HalfOpen`] as soon as the open period has passed (the next
//! call is let through as a trial), even if failsafe itself flips only when that call comes.
//!
//! # Metrics and logs
//!
//! - counter [`REQUESTS_TOTAL`] `{service, outcome}`, one per call (not per attempt); outcome is
//!   `ok`, `rejected`, `failed`, `unavailable` or `circuit_open` ([`ClientError::outcome`]);
//! - histogram [`REQUEST_DURATION`] `{service}`: a call's whole duration, retries and backoff
//!   included; calls refused by the open circuit are not recorded (they take no time);
//! - counter [`RETRIES_TOTAL`] `{service}`: attempts repeated after a transient failure;
//! - gauge [`BREAKER_OPEN`] `{service}`: 1 from the moment failsafe opens the circuit until it
//!   lets a trial through (half-open, see above), 0 otherwise.
//!
//! Each call runs in a `client` span with `service`, `method`, `path` and `correlation_id`;
//! failed attempts are logged at debug, breaker transitions at warn and info. The token is never
//! logged, shown in `Debug` or put into an error; a base URL with credentials is refused.

use std::collections::HashSet;
use std::error::Error as StdError;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::HttpBody;
use axum::http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};
use bytes::Bytes;
use failsafe::StateMachine;
use failsafe::backoff::{GenRange as _, ThreadLocalGenRange};
use failsafe::failure_policy::{ConsecutiveFailures, consecutive_failures};
use http_body_util::{BodyExt as _, Full, LengthLimitError, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tower::ServiceExt as _;
use tracing::Instrument as _;
use utoipa::ToSchema;

use crate::http::{ApiError, CORRELATION_ID, ErrorBody, ErrorObject, HttpError, RequestContext, chain};

/// Counter of calls, labelled `service` and `outcome` ([`ClientError::outcome`], or `ok`).
pub const REQUESTS_TOTAL: &str = "orderflow_client_requests_total";
/// Histogram of a call's duration in seconds (retries and backoff included), labelled `service`.
pub const REQUEST_DURATION: &str = "orderflow_client_request_duration_seconds";
/// Counter of attempts repeated after a transient failure, labelled `service`.
pub const RETRIES_TOTAL: &str = "orderflow_client_retries_total";
/// Gauge per `service`: 1 while its circuit breaker is open, 0 otherwise.
pub const BREAKER_OPEN: &str = "orderflow_client_breaker_open";

/// `X-Causation-Id`: what caused this call (the calling request's id, a saga step's event id).
pub const CAUSATION_ID: HeaderName = HeaderName::from_static("x-causation-id");
/// `Idempotency-Key`: the target applies a command once per key; with it a POST is retried.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// The most an answer's body may hold; a larger answer is [`ClientError::Failed`].
pub const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;

/// A secret (a bearer token): its `Debug` shows `Secret(***)`, and it has no `Display`.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself: to send it, never to log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Why a client cannot be built. The reason never quotes the base URL or the token.
#[derive(Debug, thiserror::Error)]
#[error("invalid client settings: {reason}")]
pub struct SettingsError {
    reason: String,
}

impl SettingsError {
    fn new(reason: impl Into<String>) -> Self {
        SettingsError { reason: reason.into() }
    }
}

/// A target's base URL: `http://host:port`, optionally with a path prefix
/// (`http://gateway/inventory`), without credentials, query or fragment. Plain HTTP only: the
/// client has no TLS.
#[derive(Clone, PartialEq, Eq)]
pub struct HttpBase {
    /// `http://authority` and the prefix, without a trailing `/`.
    base: String,
}

impl HttpBase {
    pub fn as_str(&self) -> &str {
        &self.base
    }
}

impl FromStr for HttpBase {
    type Err = SettingsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let uri: Uri = s
            .parse()
            .map_err(|_| SettingsError::new("the base URL is not a valid URL"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(SettingsError::new(
                    "the base URL must be http://: the client has no TLS",
                ));
            }
            _ => return Err(SettingsError::new("the base URL must start with http://")),
        }
        let authority = uri
            .authority()
            .ok_or_else(|| SettingsError::new("the base URL has no host"))?;
        if authority.as_str().contains('@') {
            return Err(SettingsError::new(
                "the base URL must not carry credentials (user:password@); set the token instead",
            ));
        }
        if uri.query().is_some() {
            return Err(SettingsError::new("the base URL must not have a query"));
        }
        let prefix = uri.path().trim_end_matches('/');
        Ok(HttpBase {
            base: format!("http://{authority}{prefix}"),
        })
    }
}

impl fmt::Display for HttpBase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.base)
    }
}

impl fmt::Debug for HttpBase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HttpBase({})", self.base)
    }
}

/// Where the target service is.
#[derive(Debug, Clone)]
pub enum Target {
    /// Over HTTP/1.1 with keep-alive, at this base URL.
    Http(HttpBase),
    /// In this process: the target's own router (with its own middleware), called without a
    /// socket. A call that times out drops the handler's future, as a closed connection would.
    InProcess(Router),
}

impl Target {
    /// [`Target::Http`] from a base URL like `http://127.0.0.1:8081`.
    pub fn http(base: &str) -> Result<Target, SettingsError> {
        base.parse().map(Target::Http)
    }
}

/// When the circuit opens and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSettings {
    /// Consecutive failed attempts that open the circuit (at least 1). Default 5.
    pub failures: u32,
    /// The first open period. Default 5 s.
    pub open_for: Duration,
    /// The longest open period: each failed trial doubles the last one up to this. Default 60 s.
    pub max_open_for: Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings {
            failures: 5,
            open_for: Duration::from_secs(5),
            max_open_for: Duration::from_secs(60),
        }
    }
}

/// How to reach one target service. [`ClientSettings::new`] gives the defaults; change fields
/// with struct update syntax.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// The target's name (`inventory`): in errors, metrics and logs.
    pub name: String,
    pub base: Target,
    /// Sent as `Authorization: Bearer ...`; never logged.
    pub token: Option<Secret>,
    /// Longest one attempt may take, answer body included. Default 2 s.
    pub timeout: Duration,
    /// Attempts after the first, for transient failures of calls safe to repeat. Default 2.
    pub retries: u32,
    /// The first retry's backoff cap (full jitter below it). Default 50 ms.
    pub backoff_base: Duration,
    /// The largest backoff cap. Default 1 s.
    pub backoff_max: Duration,
    pub breaker: BreakerSettings,
}

impl ClientSettings {
    /// The defaults for target `name` at `base`, without a token.
    pub fn new(name: impl Into<String>, base: Target) -> Self {
        ClientSettings {
            name: name.into(),
            base,
            token: None,
            timeout: Duration::from_secs(2),
            retries: 2,
            backoff_base: Duration::from_millis(50),
            backoff_max: Duration::from_secs(1),
            breaker: BreakerSettings::default(),
        }
    }
}

fn non_empty(value: &str) -> Option<&str> {
    (!value.is_empty()).then_some(value)
}

/// Who is calling, sent with every attempt of a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallContext {
    /// `X-Correlation-Id`: the id of the whole flow, passed on unchanged (not sent when empty).
    pub correlation_id: String,
    /// `X-Causation-Id`: what caused this call, e.g. the calling request's id (not sent when
    /// empty).
    pub causation_id: String,
    /// `Idempotency-Key`: with it a POST is retried; the same key for every attempt.
    pub idempotency_key: Option<String>,
}

impl CallContext {
    pub fn new(correlation_id: impl Into<String>, causation_id: impl Into<String>) -> Self {
        CallContext {
            correlation_id: correlation_id.into(),
            causation_id: causation_id.into(),
            idempotency_key: None,
        }
    }

    /// A call made while handling `request`: its correlation id, and its request id as the
    /// causation id.
    pub fn caused_by(request: &RequestContext) -> Self {
        Self::new(request.correlation_id.clone(), request.request_id.to_string())
    }

    #[must_use]
    pub fn with_idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }
}

/// A circuit breaker's state, as [`ServiceClient::breaker_state`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls fail at once with [`ClientError::CircuitOpen`].
    Open,
    /// The open period has passed: the next calls are let through as trials; the first to end
    /// closes the circuit (a success) or opens it again for longer (a transient failure).
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// Why a call failed, by how the caller reacts.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Transient failures until the retries ran out (or a POST without `Idempotency-Key`, not
    /// retried): answer 503. A POST may have been applied all the same.
    #[error("the {service} service is unavailable: {reason}")]
    Unavailable { service: String, reason: String },
    /// The circuit breaker is open: nothing was sent. Answer 503 at once.
    #[error("the {service} service is unavailable: its circuit breaker is open, the call was not sent")]
    CircuitOpen { service: String },
    /// The target answered 4xx (other than 429) in the error format: the caller may pass it on
    /// (e.g. a 409 `insufficient_stock`) or act on `body.error.code`.
    #[error("the {service} service refused the request: {} {}: {}", .status.as_u16(), .body.error.code, .body.error.message)]
    Rejected {
        service: String,
        status: StatusCode,
        body: ErrorBody,
    },
    /// A bug on one side: the target answered a 500 or another status that is neither success
    /// nor transient, or an answer that does not decode (a 2xx not of the expected type, a 4xx
    /// not in the error format, one larger than [`MAX_ANSWER_BYTES`]); or, with no status, the
    /// request could not be made (a path that is no URI path, a header value that is not
    /// visible ASCII, a body that does not serialize). `reason` is for the log.
    #[error("the call to the {service} service failed{}: {reason}", status_suffix(*.status))]
    Failed {
        service: String,
        status: Option<StatusCode>,
        reason: String,
    },
}

fn status_suffix(status: Option<StatusCode>) -> String {
    status.map_or_else(String::new, |s| format!(" (answer {})", s.as_u16()))
}

impl ClientError {
    /// The target service's name.
    pub fn service(&self) -> &str {
        match self {
            ClientError::Unavailable { service, .. }
            | ClientError::CircuitOpen { service }
            | ClientError::Rejected { service, .. }
            | ClientError::Failed { service, .. } => service,
        }
    }

    /// The `outcome` label of [`REQUESTS_TOTAL`]: `unavailable`, `circuit_open`, `rejected` or
    /// `failed`.
    pub fn outcome(&self) -> &'static str {
        match self {
            ClientError::Unavailable { .. } => "unavailable",
            ClientError::CircuitOpen { .. } => "circuit_open",
            ClientError::Rejected { .. } => "rejected",
            ClientError::Failed { .. } => "failed",
        }
    }
}

/// - `Rejected`: the target's status, code, message and details, with `details.service` added;
///   except a 401 or 403, which says that *this* service's token is wrong or lacks a scope (the
///   caller can do nothing about it): 502 `bad_gateway`, logged.
/// - `Unavailable`, `CircuitOpen`: 503 `unavailable` naming the service (`details.service`).
/// - `Failed` with a status: 502 `bad_gateway`, generic, the reason logged; without a status
///   (the request could not be made, a bug here): 500 `internal`, logged.
impl HttpError for ClientError {
    fn into_api_error(self) -> ApiError {
        match self {
            ClientError::Unavailable { service, reason } => {
                tracing::warn!(%service, %reason, "service unavailable");
                unavailable(service)
            }
            ClientError::CircuitOpen { service } => {
                tracing::debug!(%service, "circuit open: call not sent");
                unavailable(service)
            }
            ClientError::Rejected { service, status, body }
                if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN =>
            {
                tracing::error!(
                    %service,
                    status = status.as_u16(),
                    code = %body.error.code,
                    message = %body.error.message,
                    "the service refused this service's credentials"
                );
                bad_gateway(service)
            }
            ClientError::Rejected { service, status, body } => {
                let ErrorObject { code, message, details } = body.error;
                let mut error = match static_code(&code) {
                    Some(code) => ApiError::new(status, code, message),
                    None => ApiError::new(status, "rejected", message).with_detail("upstream_code", code),
                };
                for (key, value) in details {
                    error = error.with_detail(&key, value);
                }
                error.with_detail("service", service)
            }
            ClientError::Failed {
                service,
                status: Some(status),
                reason,
            } => {
                tracing::error!(%service, status = status.as_u16(), %reason, "unexpected answer from a service");
                bad_gateway(service)
            }
            ClientError::Failed {
                service,
                status: None,
                reason,
            } => {
                tracing::error!(%service, %reason, "could not make the request to a service");
                ApiError::internal()
            }
        }
    }
}

fn unavailable(service: String) -> ApiError {
    ApiError::unavailable(&format!("the {service} service")).with_detail("service", service)
}

fn bad_gateway(service: String) -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "bad_gateway",
        format!("the {service} service answered unexpectedly; it has been logged"),
    )
    .with_detail("service", service)
}

/// Most distinct error codes of other services kept as `&'static str` ([`ApiError`]'s code
/// type); a code beyond them is passed on as `rejected` with `details.upstream_code`.
const MAX_INTERNED_CODES: usize = 128;

/// `code` as a `&'static str`: one of [`ApiError`]'s own codes, or a well-formed code
/// (`[a-z][a-z0-9_]*`, at most 64 bytes) leaked once and kept, up to [`MAX_INTERNED_CODES`].
fn static_code(code: &str) -> Option<&'static str> {
    const KNOWN: &[&str] = &[
        "invalid_json",
        "bad_request",
        "unauthorized",
        "forbidden",
        "not_found",
        "method_not_allowed",
        "conflict",
        "already_exists",
        "rejected",
        "insufficient_stock",
        "payload_too_large",
        "unsupported_media_type",
        "invalid",
        "idempotency_key_reused",
        "internal",
        "not_supported",
        "unavailable",
        "not_caught_up",
        "timeout",
        "bad_gateway",
    ];
    if let Some(known) = KNOWN.iter().find(|k| **k == code) {
        return Some(known);
    }
    let well_formed = !code.is_empty()
        && code.len() <= 64
        && code.as_bytes()[0].is_ascii_lowercase()
        && code
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !well_formed {
        return None;
    }
    static INTERNED: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut interned = INTERNED
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some(code) = interned.get(code) {
        return Some(code);
    }
    if interned.len() >= MAX_INTERNED_CODES {
        return None;
    }
    let code: &'static str = Box::leak(code.to_owned().into_boxed_str());
    interned.insert(code);
    Some(code)
}

/// The client of one target service; see the module doc. Cheap to clone: clones share the
/// connection pool and the circuit breaker.
#[derive(Clone)]
pub struct ServiceClient {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    transport: Transport,
    /// `Bearer <token>`, marked sensitive.
    authorization: Option<HeaderValue>,
    timeout: Duration,
    retries: u32,
    backoff_base: Duration,
    backoff_max: Duration,
    breaker: StateMachine<ConsecutiveFailures<OpenPeriods>, BreakerWatch>,
    watch: BreakerWatch,
}

enum Transport {
    Http {
        client: Client<HttpConnector, Full<Bytes>>,
        base: HttpBase,
    },
    InProcess(Router),
}

impl fmt::Debug for ServiceClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let target = match &self.inner.transport {
            Transport::Http { base, .. } => base.as_str(),
            Transport::InProcess(_) => "in-process",
        };
        f.debug_struct("ServiceClient")
            .field("name", &self.inner.name)
            .field("target", &target)
            .field("breaker", &self.breaker_state())
            .finish_non_exhaustive()
    }
}

impl ServiceClient {
    /// A client of `settings.name`. Fails on settings that cannot work (an empty name, a zero
    /// timeout, a breaker opening after 0 failures or for no time, a token that is not a valid
    /// header value); connects lazily, on the first call.
    pub fn new(settings: ClientSettings) -> Result<ServiceClient, SettingsError> {
        let ClientSettings {
            name,
            base,
            token,
            timeout,
            retries,
            backoff_base,
            backoff_max,
            breaker,
        } = settings;
        if name.is_empty() {
            return Err(SettingsError::new("the target's name is empty"));
        }
        if timeout.is_zero() {
            return Err(SettingsError::new(format!("the timeout of {name} is zero")));
        }
        if breaker.failures == 0 {
            return Err(SettingsError::new(format!(
                "the breaker of {name} must open after at least 1 failure"
            )));
        }
        if breaker.open_for.is_zero() || breaker.max_open_for < breaker.open_for {
            return Err(SettingsError::new(format!(
                "the breaker of {name} needs 0 < open_for <= max_open_for"
            )));
        }
        let authorization = match token {
            None => None,
            Some(token) => {
                let mut value = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
                    .map_err(|_| SettingsError::new(format!("the token for {name} is not a valid header value")))?;
                value.set_sensitive(true);
                Some(value)
            }
        };
        let transport = match base {
            Target::Http(base) => {
                let mut connector = HttpConnector::new();
                connector.set_nodelay(true);
                let client = Client::builder(TokioExecutor::new())
                    .pool_timer(TokioTimer::new())
                    .timer(TokioTimer::new())
                    .build(connector);
                Transport::Http { client, base }
            }
            Target::InProcess(router) => Transport::InProcess(router),
        };
        let last_open_for = Arc::new(AtomicU64::new(0));
        let watch = BreakerWatch(Arc::new(WatchInner {
            service: name.clone(),
            state: Mutex::new(Tracked::Closed),
            last_open_for: last_open_for.clone(),
        }));
        let periods = OpenPeriods {
            next: breaker.open_for,
            max: breaker.max_open_for,
            last: last_open_for,
        };
        let breaker = StateMachine::new(consecutive_failures(breaker.failures, periods), watch.clone());
        Ok(ServiceClient {
            inner: Arc::new(Inner {
                name,
                transport,
                authorization,
                timeout,
                retries,
                backoff_base,
                backoff_max,
                breaker,
                watch,
            }),
        })
    }

    /// The target's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The circuit breaker's state; see the module doc for how half-open is derived.
    pub fn breaker_state(&self) -> BreakerState {
        self.inner.watch.state()
    }

    /// `GET path` (`/v1/stock/{sku}`, after the base URL's prefix), decoding a 2xx answer as
    /// `T` (an empty body decodes as `null`, so `()` and `Option<_>` accept it).
    pub async fn get_json<T: DeserializeOwned>(&self, path: &str, call: &CallContext) -> Result<T, ClientError> {
        self.call(Method::GET, path, None, call).await
    }

    /// `POST path` with `body` as JSON, decoding a 2xx answer as `T`. Retried only when `call`
    /// has an idempotency key.
    pub async fn post_json<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        call: &CallContext,
    ) -> Result<T, ClientError> {
        let body = match serde_json::to_vec(body) {
            Ok(body) => Bytes::from(body),
            Err(e) => {
                return Err(self.failed(None, format!("the request body does not serialize: {e}")));
            }
        };
        self.call(Method::POST, path, Some(body), call).await
    }

    fn failed(&self, status: Option<StatusCode>, reason: String) -> ClientError {
        ClientError::Failed {
            service: self.inner.name.clone(),
            status,
            reason,
        }
    }

    /// One call: its span, its attempts and its metrics.
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        call: &CallContext,
    ) -> Result<T, ClientError> {
        let service = self.inner.name.as_str();
        let span = tracing::info_span!(
            "client",
            service = %service,
            %method,
            path = %path,
            correlation_id = %call.correlation_id,
        );
        async {
            let started = Instant::now();
            let result = self.attempts(&method, path, body, call).await;
            let outcome = match &result {
                Ok(_) => "ok",
                Err(e) => e.outcome(),
            };
            metrics::counter!(REQUESTS_TOTAL, "service" => service.to_owned(), "outcome" => outcome).increment(1);
            if !matches!(result, Err(ClientError::CircuitOpen { .. })) {
                metrics::histogram!(REQUEST_DURATION, "service" => service.to_owned())
                    .record(started.elapsed().as_secs_f64());
            }
            tracing::debug!(outcome, elapsed_ms = started.elapsed().as_millis() as u64, "call ended");
            result
        }
        .instrument(span)
        .await
    }

    /// The attempts of one call, with the breaker's permission and report for each.
    async fn attempts<T: DeserializeOwned>(
        &self,
        method: &Method,
        path: &str,
        body: Option<Bytes>,
        call: &CallContext,
    ) -> Result<T, ClientError> {
        let inner = &*self.inner;
        let (uri, headers) = self.prepare(path, body.is_some(), call)?;
        let repeatable = *method == Method::GET || call.idempotency_key.is_some();
        let mut last_failure: Option<String> = None;
        let mut attempt: u32 = 0;
        loop {
            if !inner.breaker.is_call_permitted() {
                return Err(match last_failure {
                    None => ClientError::CircuitOpen {
                        service: inner.name.clone(),
                    },
                    Some(reason) => ClientError::Unavailable {
                        service: inner.name.clone(),
                        reason: format!("{reason}; the circuit opened after {attempt} attempts, no more retries"),
                    },
                });
            }
            attempt += 1;
            let reason = match self.attempt::<T>(method, &uri, &headers, body.as_ref()).await {
                Attempt::Final(result) => {
                    inner.breaker.on_success();
                    return result;
                }
                Attempt::Transient(reason) => reason,
            };
            inner.breaker.on_error();
            tracing::debug!(attempt, %reason, "attempt failed");
            if !repeatable {
                return Err(ClientError::Unavailable {
                    service: inner.name.clone(),
                    reason: format!("{reason} (not retried: a POST without an Idempotency-Key)"),
                });
            }
            if attempt > inner.retries {
                return Err(ClientError::Unavailable {
                    service: inner.name.clone(),
                    reason: format!("{reason} ({attempt} attempts)"),
                });
            }
            metrics::counter!(RETRIES_TOTAL, "service" => inner.name.clone()).increment(1);
            tokio::time::sleep(full_jitter(backoff_cap(
                inner.backoff_base,
                inner.backoff_max,
                attempt - 1,
            )))
            .await;
            last_failure = Some(reason);
        }
    }

    /// The request's URI and headers, the same for every attempt.
    fn prepare(&self, path: &str, has_body: bool, call: &CallContext) -> Result<(Uri, HeaderMap), ClientError> {
        if !path.starts_with('/') {
            return Err(self.failed(None, format!("the path {path:?} does not start with `/`")));
        }
        let uri = match &self.inner.transport {
            Transport::Http { base, .. } => format!("{base}{path}"),
            Transport::InProcess(_) => path.to_owned(),
        };
        let uri: Uri = uri
            .parse()
            .map_err(|_| self.failed(None, format!("the path {path:?} is not a valid URI path")))?;
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        if has_body {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        if let Some(authorization) = &self.inner.authorization {
            headers.insert(AUTHORIZATION, authorization.clone());
        }
        // An empty id is no id: the callee makes up a correlation id of its own.
        let ids = [
            (CORRELATION_ID, non_empty(&call.correlation_id)),
            (CAUSATION_ID, non_empty(&call.causation_id)),
            (IDEMPOTENCY_KEY, call.idempotency_key.as_deref()),
        ];
        for (name, value) in ids {
            let Some(value) = value else { continue };
            let value = HeaderValue::from_str(value)
                .map_err(|_| self.failed(None, format!("the {name} value is not a valid header value")))?;
            headers.insert(name, value);
        }
        Ok((uri, headers))
    }

    /// One attempt, within the timeout.
    async fn attempt<T: DeserializeOwned>(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: Option<&Bytes>,
    ) -> Attempt<T> {
        let body = body.cloned().unwrap_or_default();
        let exchange = async {
            match &self.inner.transport {
                Transport::Http { client, .. } => {
                    let request = request(method, uri, headers, Full::new(body));
                    match client.request(request).await {
                        Ok(response) => read(response).await,
                        Err(e) => Err(Exchange::Transient(format!("the connection failed: {}", chain(&e)))),
                    }
                }
                Transport::InProcess(router) => {
                    let request = request(method, uri, headers, axum::body::Body::from(body));
                    match router.clone().oneshot(request).await {
                        Ok(response) => read(response).await,
                        Err(never) => match never {},
                    }
                }
            }
        };
        match tokio::time::timeout(self.inner.timeout, exchange).await {
            Err(_) => Attempt::Transient(format!("no answer within {} ms", self.inner.timeout.as_millis())),
            Ok(Err(Exchange::Transient(reason))) => Attempt::Transient(reason),
            Ok(Err(Exchange::TooLarge(status))) => Attempt::Final(Err(self.failed(
                Some(status),
                format!("the answer is larger than {MAX_ANSWER_BYTES} bytes"),
            ))),
            Ok(Ok((status, bytes))) => self.classify(status, &bytes),
        }
    }

    /// What an answer means; see the module doc.
    fn classify<T: DeserializeOwned>(&self, status: StatusCode, bytes: &[u8]) -> Attempt<T> {
        let error_code = || {
            serde_json::from_slice::<ErrorBody>(bytes)
                .map(|b| format!(" ({})", b.error.code))
                .unwrap_or_default()
        };
        if status.is_success() {
            let bytes = if bytes.is_empty() { b"null".as_slice() } else { bytes };
            return Attempt::Final(serde_json::from_slice(bytes).map_err(|e| {
                self.failed(
                    Some(status),
                    format!("the answer does not decode as {}: {e}", std::any::type_name::<T>()),
                )
            }));
        }
        if matches!(status.as_u16(), 429 | 502 | 503 | 504) {
            return Attempt::Transient(format!("answered {}{}", status.as_u16(), error_code()));
        }
        if status.is_client_error() {
            return Attempt::Final(Err(match serde_json::from_slice::<ErrorBody>(bytes) {
                Ok(body) => ClientError::Rejected {
                    service: self.inner.name.clone(),
                    status,
                    body,
                },
                Err(_) => self.failed(
                    Some(status),
                    format!("answered {} without the error format", status.as_u16()),
                ),
            }));
        }
        Attempt::Final(Err(
            self.failed(Some(status), format!("answered {}{}", status.as_u16(), error_code()))
        ))
    }
}

/// How one attempt ended.
enum Attempt<T> {
    /// An answer that ends the call: the breaker counts it a success.
    Final(Result<T, ClientError>),
    /// A transient failure: the breaker counts it; retried if the call may be repeated.
    Transient(String),
}

/// Why an exchange gave no whole answer.
enum Exchange {
    Transient(String),
    TooLarge(StatusCode),
}

fn request<B>(method: &Method, uri: &Uri, headers: &HeaderMap, body: B) -> Request<B> {
    let mut request = Request::new(body);
    *request.method_mut() = method.clone();
    *request.uri_mut() = uri.clone();
    *request.headers_mut() = headers.clone();
    request
}

/// The answer's status and whole body, at most [`MAX_ANSWER_BYTES`].
async fn read<B>(response: Response<B>) -> Result<(StatusCode, Bytes), Exchange>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let status = response.status();
    match Limited::new(response.into_body(), MAX_ANSWER_BYTES).collect().await {
        Ok(body) => Ok((status, body.to_bytes())),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(Exchange::TooLarge(status)),
        Err(e) => Err(Exchange::Transient(format!(
            "the answer's body broke off: {}",
            chain(e.as_ref())
        ))),
    }
}

/// The cap of the backoff before retry `retry` (0-based): `min(max, base * 2^retry)`.
fn backoff_cap(base: Duration, max: Duration, retry: u32) -> Duration {
    1u32.checked_shl(retry)
        .and_then(|factor| base.checked_mul(factor))
        .map_or(max, |cap| cap.min(max))
}

/// A uniformly random duration in `[0, cap]`, to the microsecond.
fn full_jitter(cap: Duration) -> Duration {
    let cap = u64::try_from(cap.as_micros()).unwrap_or(u64::MAX - 1);
    Duration::from_micros(ThreadLocalGenRange.gen_range(0, cap + 1))
}

/// The breaker's open periods: `open_for`, then doubling up to `max_open_for` (failsafe's own
/// backoffs count in whole seconds). Each period handed out is written to `last`, for
/// [`BreakerWatch`]. failsafe restarts the sequence from a fresh clone when the circuit closes.
#[derive(Debug, Clone)]
struct OpenPeriods {
    next: Duration,
    max: Duration,
    /// Nanoseconds of the last period handed out.
    last: Arc<AtomicU64>,
}

impl Iterator for OpenPeriods {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let period = self.next.min(self.max);
        self.next = period.saturating_mul(2).min(self.max);
        self.last
            .store(u64::try_from(period.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
        Some(period)
    }
}

/// Follows failsafe's transitions (its `Instrument` hooks): for [`ServiceClient::breaker_state`],
/// the [`BREAKER_OPEN`] gauge and the log.
#[derive(Clone)]
struct BreakerWatch(Arc<WatchInner>);

struct WatchInner {
    service: String,
    state: Mutex<Tracked>,
    /// Shared with [`OpenPeriods`]: the period failsafe opened the circuit for.
    last_open_for: Arc<AtomicU64>,
}

#[derive(Debug, Clone, Copy)]
enum Tracked {
    Closed,
    Open { since: Instant, open_for: Duration },
    HalfOpen,
}

impl BreakerWatch {
    fn set(&self, state: Tracked) -> Tracked {
        let mut tracked = self.0.state.lock().unwrap_or_else(PoisonError::into_inner);
        std::mem::replace(&mut *tracked, state)
    }

    fn state(&self) -> BreakerState {
        match *self.0.state.lock().unwrap_or_else(PoisonError::into_inner) {
            Tracked::Closed => BreakerState::Closed,
            Tracked::HalfOpen => BreakerState::HalfOpen,
            // failsafe admits the next call once the period has passed (it set its deadline
            // just before telling us, so ours is never earlier than its own).
            Tracked::Open { since, open_for } if since.elapsed() > open_for => BreakerState::HalfOpen,
            Tracked::Open { .. } => BreakerState::Open,
        }
    }

    fn gauge(&self, value: f64) {
        metrics::gauge!(BREAKER_OPEN, "service" => self.0.service.clone()).set(value);
    }
}

impl failsafe::Instrument for BreakerWatch {
    fn on_call_rejected(&self) {}

    fn on_open(&self) {
        let open_for = Duration::from_nanos(self.0.last_open_for.load(Ordering::Relaxed));
        self.set(Tracked::Open {
            since: Instant::now(),
            open_for,
        });
        self.gauge(1.0);
        tracing::warn!(
            service = %self.0.service,
            open_ms = open_for.as_millis() as u64,
            "circuit breaker opened: calls fail at once until a trial"
        );
    }

    fn on_half_open(&self) {
        self.set(Tracked::HalfOpen);
        self.gauge(0.0);
        tracing::info!(service = %self.0.service, "circuit breaker half-open: letting a trial call through");
    }

    fn on_closed(&self) {
        let before = self.set(Tracked::Closed);
        self.gauge(0.0);
        if !matches!(before, Tracked::Closed) {
            tracing::info!(service = %self.0.service, "circuit breaker closed");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn open_periods_double_up_to_the_maximum() {
        let last = Arc::new(AtomicU64::new(0));
        let periods = OpenPeriods {
            next: Duration::from_millis(300),
            max: Duration::from_secs(2),
            last: last.clone(),
        };
        let got: Vec<u64> = periods.take(5).map(|d| d.as_millis() as u64).collect();
        assert_eq!(got, [300, 600, 1200, 2000, 2000]);
        assert_eq!(last.load(Ordering::Relaxed), 2_000_000_000);
    }

    #[test]
    fn backoff_caps_double_up_to_the_maximum_and_jitter_stays_below() {
        let (base, max) = (Duration::from_millis(50), Duration::from_secs(1));
        let caps: Vec<u64> = (0..7).map(|n| backoff_cap(base, max, n).as_millis() as u64).collect();
        assert_eq!(caps, [50, 100, 200, 400, 800, 1000, 1000]);
        assert_eq!(backoff_cap(base, max, 40), max);
        assert_eq!(full_jitter(Duration::ZERO), Duration::ZERO);
        for n in 0..7 {
            let cap = backoff_cap(base, max, n);
            for _ in 0..50 {
                assert!(full_jitter(cap) <= cap);
            }
        }
    }

    #[test]
    fn foreign_codes_are_interned_and_odd_ones_refused() {
        assert_eq!(static_code("insufficient_stock"), Some("insufficient_stock"));
        let first = static_code("card_declined");
        assert_eq!(first, Some("card_declined"));
        assert!(std::ptr::eq(first.unwrap(), static_code("card_declined").unwrap()));
        assert_eq!(static_code("Card Declined"), None);
        assert_eq!(static_code(""), None);
        assert_eq!(static_code(&"a".repeat(65)), None);
    }

    #[test]
    fn base_urls_without_credentials_only() {
        let base: HttpBase = "http://127.0.0.1:8081/".parse().unwrap();
        assert_eq!(base.as_str(), "http://127.0.0.1:8081");
        let prefixed: HttpBase = "http://gateway/inventory/".parse().unwrap();
        assert_eq!(prefixed.as_str(), "http://gateway/inventory");
        for bad in [
            "http://user:hunter2@inventory:8081",
            "https://inventory",
            "inventory:8081",
            "http://inventory/?a=b",
        ] {
            let error = bad.parse::<HttpBase>().unwrap_err().to_string();
            assert!(error.starts_with("invalid client settings"), "{bad}: {error}");
            assert!(!error.contains("hunter2") && !error.contains("inventory"), "{error}");
        }
    }
}
