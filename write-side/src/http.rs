//! The command HTTP API (axum): docs/design.md's command table, the write side's reads from the
//! event store, and the operations endpoints.
//!
//! # Routes
//!
//! | route | scope | answer |
//! |---|---|---|
//! | `POST /v1/customers` `{customer_id?, name, email}` | `commands` | 201 `{stream_id, version, position}` |
//! | `POST /v1/customers/{id}/rename` `{name}` | `commands` | 200 |
//! | `POST /v1/customers/{id}/change-email` `{email}` | `commands` | 200 |
//! | `POST /v1/products` `{product_id?, sku, name, price_minor, currency, stock}` | `commands` | 201 |
//! | `POST /v1/products/{id}/restock` `{quantity}` | `commands` | 200 |
//! | `POST /v1/products/{id}/change-price` `{price_minor}` | `commands` | 200 |
//! | `POST /v1/orders` `{order_id?, customer_id, lines: [{product_id, quantity}]}` | `commands` | 201 |
//! | `POST /v1/orders/{id}/confirm` `{}` · `/cancel` `{reason}` · `/ship` `{carrier, tracking}` · `/deliver` `{}` | `commands` | 200 |
//! | `GET /v1/streams/{stream_id}/events?from_version=&limit=` | `commands` | the stream's events |
//! | `GET /v1/orders/{id}/state?as_of=<RFC 3339>` or `?at_position=N` | `commands` | the order folded up to that point |
//! | `GET /v1/log?from_position=&limit=` | `admin` | the global log, `from_position` inclusive |
//! | `GET /health`, `/ready`, `/metrics`, `/openapi.json` | none | operations |
//!
//! Missing ids of creates are made up (UUID v7). Commands take `Idempotency-Key` (safe
//! retries: a repeat answers the first result and appends nothing) and `If-Match: <version>`
//! (conditional: a stale version is 409 and appends nothing); every request takes
//! `X-Correlation-Id` (made up when absent) and gets it back, with its own `X-Request-Id`,
//! which is the causation id of the events it appends. The token's name is their actor.
//!
//! # Modules
//!
//! - `error`: how [`DomainError`](crate::domain::DomainError) and [`CommandError`](crate::CommandError)
//!   answer as the service kit's [`ApiError`] (whose doc has the table of codes).
//! - `extract`: extractors for JSON bodies, queries, path ids and command headers that answer
//!   [`ApiError`] (bad input is 4xx and never reaches the store).
//! - `auth`: bearer tokens stored as SHA-256 hashes, scopes `commands` and `admin`.
//! - `commands`, `reads`: the handlers.
//! - `ops`: `/health`, `/ready`, `/metrics`, `/openapi.json`. The edge middleware (correlation
//!   and request ids, span, timeout, metrics) is the service kit's.
//! - `openapi`: the generated OpenAPI document.
//!
//! Everything that is bad input answers 4xx before the command handler runs, so it appends
//! nothing (docs/design.md invariant 9); the handler's own refusals append nothing either.

mod auth;
mod commands;
mod error;
mod extract;
mod openapi;
mod ops;
mod reads;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware::from_fn_with_state;
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use service_kit::http::Edge;
use tokio::net::TcpListener;

pub use auth::{Auth, InvalidTokenSpec, Principal, Scope, TokenSpec, hash_token};
pub use commands::{
    AddProduct, CancelOrderBody, ChangeCustomerEmail, ChangeProductPrice, CommandAnswerBody, OrderLineInput,
    PlaceOrderBody, RegisterCustomer, RenameCustomer, RestockProduct, ShipOrderBody,
};
pub use extract::EmptyBody;
pub use openapi::ApiDoc;
pub use reads::{
    CustomerView, DEFAULT_PAGE, EventView, LogPage, LogQuery, MAX_PAGE, OrderLineView, OrderStateQuery, OrderStateView,
    ShipmentView, StreamEventsPage, StreamEventsQuery, event_data,
};
pub use service_kit::http::{ApiError, ErrorBody, ErrorObject, Health, REQUEST_DURATION, REQUESTS_TOTAL, serve_on};
pub use service_kit::metrics::prometheus_handle;

use crate::CommandHandler;

/// Default [`HttpConfig::body_limit_bytes`]: 64 KiB.
pub const DEFAULT_BODY_LIMIT_BYTES: usize = 64 * 1024;
/// Default [`HttpConfig::request_timeout`]: 10 s.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How the API behaves: authentication and limits.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Bearer tokens, or [`Auth::Disabled`] for the embedded demo. No default on purpose: a
    /// caller says which.
    pub auth: Auth,
    /// Largest request body; a larger one is 413.
    pub body_limit_bytes: usize,
    /// Longest a request may take; a slower one is 503 `timeout` (a command may still have
    /// been applied: retry it with its `Idempotency-Key`).
    pub request_timeout: Duration,
    /// Where `/metrics` reads from; `None`: the process's recorder ([`prometheus_handle`]).
    pub metrics: Option<PrometheusHandle>,
    /// The relay running in this process, if any: `/ready` fails while it leads but the broker
    /// does not acknowledge. A relay on standby (another process leads) does not count.
    pub relay: Option<tokio::sync::watch::Receiver<relay::RelayStatus>>,
}

impl HttpConfig {
    /// The defaults (64 KiB bodies, 10 s timeout, the process-wide recorder) with `auth`.
    pub fn new(auth: Auth) -> Self {
        HttpConfig {
            auth,
            body_limit_bytes: DEFAULT_BODY_LIMIT_BYTES,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            metrics: None,
            relay: None,
        }
    }
}

/// What the handlers share. Cheap to clone.
#[derive(Clone)]
pub struct HttpState {
    handler: CommandHandler,
    auth: Auth,
    body_limit_bytes: usize,
    request_timeout: Duration,
    metrics: PrometheusHandle,
    relay: Option<tokio::sync::watch::Receiver<relay::RelayStatus>>,
}

impl HttpState {
    pub fn new(handler: CommandHandler, config: HttpConfig) -> Self {
        HttpState {
            handler,
            auth: config.auth,
            body_limit_bytes: config.body_limit_bytes,
            request_timeout: config.request_timeout,
            metrics: config.metrics.unwrap_or_else(prometheus_handle),
            relay: config.relay,
        }
    }

    pub fn handler(&self) -> &CommandHandler {
        &self.handler
    }

    /// Why the in-process relay makes this process unready, if it does.
    pub(crate) fn relay_trouble(&self) -> Option<String> {
        let status = self.relay.as_ref()?.borrow().clone();
        (status.leader && !status.ready).then(|| {
            status
                .last_error
                .unwrap_or_else(|| "the relay is not publishing".into())
        })
    }

    pub(crate) fn body_limit_bytes(&self) -> usize {
        self.body_limit_bytes
    }
}

/// The API as a [`Router`], ready to serve or to call with `tower::ServiceExt::oneshot`.
pub fn router(state: HttpState) -> Router {
    let guard = |scope| auth::Guard {
        auth: state.auth.clone(),
        scope,
    };
    let commands = Router::new()
        .route("/v1/customers", post(commands::register_customer))
        .route("/v1/customers/{id}/rename", post(commands::rename_customer))
        .route("/v1/customers/{id}/change-email", post(commands::change_customer_email))
        .route("/v1/products", post(commands::add_product))
        .route("/v1/products/{id}/restock", post(commands::restock_product))
        .route("/v1/products/{id}/change-price", post(commands::change_product_price))
        .route("/v1/orders", post(commands::place_order))
        .route("/v1/orders/{id}/confirm", post(commands::confirm_order))
        .route("/v1/orders/{id}/cancel", post(commands::cancel_order))
        .route("/v1/orders/{id}/ship", post(commands::ship_order))
        .route("/v1/orders/{id}/deliver", post(commands::deliver_order))
        .route("/v1/streams/{stream_id}/events", get(reads::stream_events))
        .route("/v1/orders/{id}/state", get(reads::order_state))
        .route_layer(from_fn_with_state(guard(Scope::Commands), auth::require));
    let admin = Router::new()
        .route("/v1/log", get(reads::log))
        .route_layer(from_fn_with_state(guard(Scope::Admin), auth::require));
    let operations = Router::new()
        .route("/health", get(ops::health))
        .route("/ready", get(ops::ready))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(ops::openapi));
    Router::new()
        .merge(commands)
        .merge(admin)
        .merge(operations)
        .fallback(service_kit::http::no_route)
        .method_not_allowed_fallback(service_kit::http::method_not_allowed)
        .layer(DefaultBodyLimit::max(state.body_limit_bytes))
        .layer(from_fn_with_state(
            Edge {
                request_timeout: state.request_timeout,
            },
            service_kit::http::edge,
        ))
        .with_state(state)
}

/// What [`serve`] needs.
#[derive(Clone)]
pub struct ServeConfig {
    /// Address to listen on, e.g. `127.0.0.1:8081`.
    pub listen: SocketAddr,
    /// The command handler over the event store.
    pub handler: CommandHandler,
    pub http: HttpConfig,
}

/// Binds `config.listen` and serves the API until `shutdown` completes, then drains (see
/// [`serve_on`]).
pub async fn serve(config: ServeConfig, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
    let listener = TcpListener::bind(config.listen).await?;
    let grace = config.http.request_timeout + Duration::from_secs(1);
    let app = router(HttpState::new(config.handler, config.http));
    serve_on(listener, app, grace, shutdown).await
}
