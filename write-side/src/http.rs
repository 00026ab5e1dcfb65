//! The write services' HTTP API (axum): the command table of docs/design.md, the services' reads
//! from their own stores, and the operations endpoints.
//!
//! One router serves the services a process hosts ([`crate::Services`]): one service in the
//! distributed deployment (`write-side --service orders`), all four in the embedded one. Only the
//! hosted services' routes exist; the routes every service has (a stream's events, the log) pick
//! the service by the stream's category or by `?service=`.
//!
//! # Routes
//!
//! | route | service | scope | answer |
//! |---|---|---|---|
//! | `POST /v1/customers` `{customer_id?, name, email}` | customers | `commands` | 201 `{stream_id, version, position, service, token}` |
//! | `POST /v1/customers/{id}/rename` `{name}` · `/change-email` `{email}` | customers | `commands` | 200 |
//! | `GET /v1/customers/{id}` | customers | `commands` | the customer |
//! | `POST /v1/products` `{product_id?, sku, name, price_minor, currency, stock}` | inventory | `commands` | 201 |
//! | `POST /v1/products/{id}/restock` `{quantity}` · `/change-price` `{price_minor}` | inventory | `commands` | 200 |
//! | `GET /v1/products/{id}` | inventory | `commands` | the product |
//! | `POST /v1/products/{id}/reservations` `{order_id, quantity}` | inventory | `service` | 201, with the reserved price |
//! | `GET /v1/products/{id}/reservations/{order_id}` | inventory | `service` | the units held for the order |
//! | `POST /v1/products/{id}/reservations/{order_id}/release` | inventory | `service` | 200 |
//! | `POST /v1/orders` `{order_id?, customer_id, lines}` | orders | `commands` | 201, `pending`: the saga takes it from there |
//! | `POST /v1/orders/{id}/cancel` `{reason}` · `/ship` `{carrier, tracking}` · `/deliver` | orders | `commands` | 200 |
//! | `POST /v1/orders/{id}/confirm` | orders | `commands` | always 409 `confirmed_by_saga` |
//! | `GET /v1/orders/{id}/state?as_of=` or `?at_position=` | orders | `commands` | the order folded up to that point |
//! | `GET /v1/orders/{id}/overview` | orders | `commands` | the order, its reservations and payment, asked live |
//! | `GET /v1/sagas/{id}` · `/v1/sagas/parked` · `POST /v1/sagas/{id}/retry` · `/abandon` `{reason}` | orders | `admin` | a saga; the parked ones; operator actions |
//! | `GET /v1/services` | orders | `admin` | the services it calls: health and circuit breaker |
//! | `POST /v1/payments` `{payment_id?, order_id, amount_minor, currency}` | payments | `service` | 201, with `payment_status` (the provider's answer) |
//! | `POST /v1/payments/{id}/capture` · `/refund` `{amount_minor}` · `/void` · `/decline` `{order_id, reason}` | payments | `service` | 200 |
//! | `GET /v1/payments/{id}` | payments | `commands` | the payment |
//! | `GET /v1/gateway` · `PUT /v1/gateway` `{decline_rate, latency_ms, unavailable}` | payments | `admin` | the simulated provider's settings |
//! | `GET /v1/streams/{stream_id}/events?from_version=&limit=` | by category | `commands` | the stream's events |
//! | `GET /v1/log?service=&from_position=&limit=` | by `service` | `admin` | a service's log |
//! | `GET /health`, `/ready`, `/metrics`, `/openapi.json` | all | none | operations |
//!
//! Missing ids of creates are made up (UUID v7). Commands take `Idempotency-Key` (safe
//! retries: a repeat answers the first result and appends nothing) and `If-Match: <version>`
//! (conditional: a stale version is 409 and appends nothing); every request takes
//! `X-Correlation-Id` (made up when absent) and gets it back, with its own `X-Request-Id`,
//! which is the causation id of the events it appends (a call from another service passes its
//! own request id as `X-Causation-Id`). The token's name is their actor.
//!
//! # Modules
//!
//! - `answer`: every command's answer, with its consistency token.
//! - `customers`, `inventory`, `orders`, `payments`: each service's routes; `sagas`: the
//!   orders service's saga operations, its peers' health and an order's overview; `reads`: the
//!   stream and log reads every service has, and an order's state.
//! - `error`: how [`DomainError`](crate::domain::DomainError) and [`CommandError`](crate::CommandError)
//!   answer as the service kit's [`ApiError`] (whose doc has the table of codes).
//! - `extract`: extractors for JSON bodies, queries, path ids and command headers that answer
//!   [`ApiError`] (bad input is 4xx and never reaches the store).
//! - authentication is the service kit's (`service_kit::auth`): bearer tokens stored as SHA-256
//!   hashes; scopes `read` (every `GET`), `commands`, `admin` and `service`.
//! - `ops`: `/health`, `/ready`, `/metrics`, `/openapi.json`. The edge middleware (correlation
//!   and request ids, span, timeout, metrics) is the service kit's.
//! - `openapi`: the OpenAPI document of the hosted services.
//!
//! Everything that is bad input answers 4xx before the command handler runs, so it appends
//! nothing (docs/design.md invariant 9); the handler's own refusals append nothing either.

mod answer;
mod customers;
mod error;
mod extract;
mod inventory;
mod objects_only;
mod openapi;
mod ops;
mod orders;
mod payments;
mod reads;
mod sagas;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware::from_fn_with_state;
use axum::routing::{get, post};
use event_schemas::Service;
use metrics_exporter_prometheus::PrometheusHandle;
use service_kit::http::Edge;
use tokio::net::TcpListener;

pub use answer::CommandAnswerBody;
pub use customers::{ChangeCustomerEmail, CustomerStateView, RegisterCustomer, RenameCustomer};
pub use extract::EmptyBody;
pub(crate) use extract::non_negative;
pub use inventory::HeldView;
pub use inventory::{
    AddProduct, ChangeProductPrice, ProductStateView, ReservationView, ReserveStockBody, RestockProduct,
};
pub use openapi::api_doc;
pub use orders::{CancelOrderBody, OrderLineInput, PlaceOrderBody, ShipOrderBody};
pub use payments::AuthorizationAnswerBody;
pub use payments::{AuthorizePaymentBody, PaymentAmountBody, PaymentReasonBody, PaymentStateView};
pub use reads::{
    CustomerView, DEFAULT_PAGE, EventView, LogPage, LogQuery, MAX_PAGE, OrderLineView, OrderStateQuery, OrderStateView,
    ShipmentView, StreamEventsPage, StreamEventsQuery, event_data,
};
pub use sagas::{AbandonSagaBody, ParkedSagas, ServicesView};
use service_kit::auth;
pub use service_kit::auth::{Auth, InvalidTokenSpec, Principal, Scope, TokenSpec, hash_token};
use service_kit::http::InFlightLimit;
pub use service_kit::http::{ApiError, ErrorBody, ErrorObject, Health, REQUEST_DURATION, REQUESTS_TOTAL, serve_on};
pub use service_kit::metrics::prometheus_handle;

use crate::gateway::{PaymentGateway, SimulatedGateway};
use crate::orders::Orders;
use crate::{CommandHandler, Services};

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
    /// The bound on `/v1` requests in flight: past it, 503 `overloaded` at once (the service
    /// kit's load shedding); the binaries set it (`--max-in-flight`). `None`, the default:
    /// unbounded, for routers called in-process (the embedded saga's calls to inventory and
    /// payments are not the clients' load).
    pub in_flight: Option<InFlightLimit>,
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
            in_flight: None,
            metrics: None,
            relay: None,
        }
    }
}

/// What the handlers share. Cheap to clone.
#[derive(Clone)]
pub struct HttpState {
    services: Services,
    /// The orders service's commands that call other services, when orders is hosted.
    orders: Option<Orders>,
    auth: Auth,
    body_limit_bytes: usize,
    request_timeout: Duration,
    in_flight: Option<InFlightLimit>,
    metrics: PrometheusHandle,
    relay: Option<tokio::sync::watch::Receiver<relay::RelayStatus>>,
    /// The hosted services' OpenAPI document, rendered on first use.
    openapi: std::sync::Arc<std::sync::OnceLock<String>>,
    /// What else this process serves on the same port, for its document (the embedded `serve`:
    /// the read API, the rebuild endpoint). Shared: the state is cloned for every request, and
    /// a copy of these documents per request in flight was most of `serve`'s memory under load.
    openapi_parts: std::sync::Arc<Vec<utoipa::openapi::OpenApi>>,
    /// The payments service's provider.
    gateway: std::sync::Arc<dyn PaymentGateway>,
    /// The same provider when it is the simulated one (`/v1/gateway` changes it).
    simulated: Option<SimulatedGateway>,
}

impl HttpState {
    /// The API of `services`. Hosting orders needs [`Self::with_orders`] too.
    pub fn new(services: Services, config: HttpConfig) -> Self {
        HttpState {
            services,
            orders: None,
            auth: config.auth,
            body_limit_bytes: config.body_limit_bytes,
            request_timeout: config.request_timeout,
            in_flight: config.in_flight,
            metrics: config.metrics.unwrap_or_else(prometheus_handle),
            relay: config.relay,
            openapi: std::sync::Arc::default(),
            openapi_parts: std::sync::Arc::default(),
            gateway: std::sync::Arc::new(SimulatedGateway::default()),
            simulated: None,
        }
        .with_simulated_gateway(SimulatedGateway::default())
    }

    /// With the simulated payment provider `gateway` (the default: one that authorizes every
    /// payment at once), whose settings `/v1/gateway` reads and changes.
    #[must_use]
    pub fn with_simulated_gateway(mut self, gateway: SimulatedGateway) -> Self {
        self.gateway = std::sync::Arc::new(gateway.clone());
        self.simulated = Some(gateway);
        self
    }

    /// With a payment provider of another kind (a real one).
    #[must_use]
    pub fn with_payment_gateway(mut self, gateway: std::sync::Arc<dyn PaymentGateway>) -> Self {
        self.gateway = gateway;
        self.simulated = None;
        self
    }

    pub(crate) fn gateway(&self) -> &dyn PaymentGateway {
        self.gateway.as_ref()
    }

    pub(crate) fn simulated_gateway(&self) -> Option<&SimulatedGateway> {
        self.simulated.as_ref()
    }

    /// With the orders service's cross-service commands (placing, cancelling).
    #[must_use]
    pub fn with_orders(mut self, orders: Orders) -> Self {
        self.orders = Some(orders);
        self
    }

    pub fn services(&self) -> &Services {
        &self.services
    }

    /// The handler of `service`, or 404 when this process does not host it.
    pub(crate) fn handler(&self, service: Service) -> Result<&CommandHandler, ApiError> {
        self.services.get(service).ok_or_else(|| not_hosted(service))
    }

    pub(crate) fn orders(&self) -> Result<&Orders, ApiError> {
        self.orders.as_ref().ok_or_else(|| not_hosted(Service::Orders))
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

    /// Adds what `part` describes to `/openapi.json`: routes merged into this router by the
    /// process that serves it. Their security is declared as this process enforces it.
    pub fn with_openapi(mut self, part: utoipa::openapi::OpenApi) -> Self {
        std::sync::Arc::make_mut(&mut self.openapi_parts).push(part);
        self
    }

    /// `/openapi.json`: the hosted services' document.
    pub(crate) fn openapi_json(&self) -> axum::response::Response {
        use axum::response::IntoResponse as _;
        let document = self.openapi.get_or_init(|| {
            let mut doc = openapi::api_doc(self.services.hosted(), &self.auth);
            for part in self.openapi_parts.iter() {
                doc.merge(part.clone());
            }
            service_kit::http::openapi::declare_security(&mut doc, &self.auth);
            doc.to_json().unwrap_or_else(|e| format!(r#"{{"error":"{e}"}}"#))
        });
        (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            document.clone(),
        )
            .into_response()
    }
}

/// 404 for a service this process does not host.
fn not_hosted(service: Service) -> ApiError {
    ApiError::not_found("service", service).with_detail("served_by", service.name())
}

/// The API as a [`Router`], ready to serve or to call with `tower::ServiceExt::oneshot`.
pub fn router(state: HttpState) -> Router {
    let guard = |scope| auth::Guard {
        auth: state.auth.clone(),
        scope,
    };
    let mut guarded = Router::new()
        .route("/v1/streams/{stream_id}/events", get(reads::stream_events))
        .route_layer(from_fn_with_state(guard(Scope::Commands), auth::require))
        .merge(
            Router::new()
                .route("/v1/log", get(reads::log))
                .route_layer(from_fn_with_state(guard(Scope::Admin), auth::require)),
        );
    for service in state.services.hosted() {
        for (scope, routes) in service_routes(service) {
            guarded = guarded.merge(routes.route_layer(from_fn_with_state(guard(scope), auth::require)));
        }
    }
    let operations = Router::new()
        .route("/health", get(ops::health))
        .route("/ready", get(ops::ready))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(ops::openapi));
    Router::new()
        .merge(guarded)
        .merge(operations)
        .fallback(service_kit::http::no_route)
        .method_not_allowed_fallback(service_kit::http::method_not_allowed)
        .layer(DefaultBodyLimit::max(state.body_limit_bytes))
        .layer(from_fn_with_state(
            Edge {
                request_timeout: state.request_timeout,
                in_flight: state.in_flight.clone(),
            },
            service_kit::http::edge,
        ))
        .with_state(state)
}

/// The routes of one service, by the scope each needs (none of the routers is empty).
fn service_routes(service: Service) -> Vec<(Scope, Router<HttpState>)> {
    match service {
        Service::Customers => vec![(
            Scope::Commands,
            Router::new()
                .route("/v1/customers", post(customers::register_customer))
                .route("/v1/customers/{id}", get(customers::customer))
                .route("/v1/customers/{id}/rename", post(customers::rename_customer))
                .route(
                    "/v1/customers/{id}/change-email",
                    post(customers::change_customer_email),
                ),
        )],
        Service::Inventory => vec![
            (
                Scope::Commands,
                Router::new()
                    .route("/v1/products", post(inventory::add_product))
                    .route("/v1/products/{id}", get(inventory::product))
                    .route("/v1/products/{id}/restock", post(inventory::restock_product))
                    .route("/v1/products/{id}/change-price", post(inventory::change_product_price)),
            ),
            (
                Scope::Service,
                Router::new()
                    .route("/v1/products/{id}/reservations", post(inventory::reserve_stock))
                    .route("/v1/products/{id}/reservations/{order_id}", get(inventory::reservation))
                    .route(
                        "/v1/products/{id}/reservations/{order_id}/release",
                        post(inventory::release_stock),
                    ),
            ),
        ],
        Service::Orders => vec![
            (
                Scope::Commands,
                Router::new()
                    .route("/v1/orders", post(orders::place_order))
                    .route("/v1/orders/{id}/confirm", post(orders::confirm_order))
                    .route("/v1/orders/{id}/cancel", post(orders::cancel_order))
                    .route("/v1/orders/{id}/ship", post(orders::ship_order))
                    .route("/v1/orders/{id}/deliver", post(orders::deliver_order))
                    .route("/v1/orders/{id}/state", get(reads::order_state))
                    .route("/v1/orders/{id}/overview", get(sagas::overview)),
            ),
            (
                Scope::Admin,
                Router::new()
                    .route("/v1/sagas/parked", get(sagas::parked))
                    .route("/v1/sagas/{id}", get(sagas::saga))
                    .route("/v1/sagas/{id}/retry", post(sagas::retry))
                    .route("/v1/sagas/{id}/abandon", post(sagas::abandon))
                    .route("/v1/services", get(sagas::services)),
            ),
        ],
        Service::Payments => vec![
            (
                Scope::Commands,
                Router::new().route("/v1/payments/{id}", get(payments::payment)),
            ),
            (
                Scope::Service,
                Router::new()
                    .route("/v1/payments", post(payments::authorize_payment))
                    .route("/v1/payments/{id}/capture", post(payments::capture_payment))
                    .route("/v1/payments/{id}/void", post(payments::void_payment))
                    .route("/v1/payments/{id}/refund", post(payments::refund_payment))
                    .route("/v1/payments/{id}/decline", post(payments::decline_payment)),
            ),
            (
                Scope::Admin,
                Router::new().route(
                    "/v1/gateway",
                    get(payments::gateway_settings).put(payments::set_gateway_settings),
                ),
            ),
        ],
    }
}

/// What [`serve`] needs.
#[derive(Clone)]
pub struct ServeConfig {
    /// Address to listen on, e.g. `127.0.0.1:8081`.
    pub listen: SocketAddr,
    pub state: HttpState,
}

/// Binds `config.listen` and serves the API until `shutdown` completes, then drains (see
/// [`serve_on`]).
pub async fn serve(config: ServeConfig, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
    let listener = TcpListener::bind(config.listen).await?;
    let grace = config.state.request_timeout + Duration::from_secs(1);
    let app = router(config.state);
    serve_on(listener, app, grace, shutdown).await
}
