//! orderflow's read API: HTTP queries over the read databases only.
//!
//! It connects to the projections' databases (PostgreSQL `orderflow_read` and ClickHouse in the
//! distributed deployment, SQLite embedded) with read-only credentials, never to the event store,
//! and every answer comes from one projection's tables: no join across services.
//!
//! # Map
//! - [`router`] builds the axum `Router` over a [`ReadState`]; [`serve`] runs it until shutdown.
//!   [`query_routes`] is the `/v1/...` part alone, to merge into another service's router.
//! - `dashboard`: `/v1/dashboard/orders` (filters, among them the cancellation's `reason_code`,
//!   sort, keyset pagination, `as_of`), one order (with its payment, its saga's state and its
//!   cancellation's reason code), one customer's summary, `/v1/dashboard/customers` (every
//!   customer's summary by name, keyset pagination), from the `order_dashboard` projection.
//! - `analytics`: revenue (confirmed, paid orders net of refunds), top products, the order
//!   funnel (with pending orders and cancellations per reason code), delivery durations, from
//!   `sales_analytics`.
//! - `status`: `/v1/projections`: versions, rebuild progress, applied position, lag, dead letters.
//! - `consistency`: read-your-writes. Every endpoint takes `min_position` (the `position` a
//!   command answered) and waits, up to [`ReadConfig::wait`], until the projection it reads has
//!   applied it (see [`projections::applied_position`] for what "applied" means with several
//!   partitions), else answers 503 `not_caught_up` with the position reached.
//! - `params`: strict query parameters. Errors are the service kit's [`ApiError`].
//! - `ops`: `/health`, `/ready`, `/metrics` (request latency per route), `/openapi.json`. The
//!   edge every request passes (correlation and request ids, span, timeout, metrics) is the
//!   service kit's.
//! - Authentication: the `/v1/...` routes need a bearer token with scope `read`
//!   ([`ReadState::with_auth`], the service kit's `auth`), as the write side's do; the
//!   operations endpoints stay open, for probes and scrapers. The dashboard holds customers'
//!   names and e-mails: the binary refuses to start without a token unless told `--no-auth`.

mod analytics;
mod consistency;
mod dashboard;
mod ops;
mod params;
mod status;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::middleware::from_fn_with_state;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use projections::ReadDb;
use projections::analytics::SalesAnalytics;
use service_kit::auth::{Auth, Guard, Scope};
use service_kit::http::{Edge, InFlightLimit};
use tokio_util::sync::CancellationToken;

pub use ops::api_doc;
pub use service_kit::http::{ApiError, ErrorBody, ErrorObject, REQUEST_DURATION, REQUESTS_TOTAL};
pub use service_kit::metrics::prometheus_handle;

/// Settings of the read API.
#[derive(Debug, Clone)]
pub struct ReadConfig {
    /// The longest a request waits for `min_position` (default 2 s).
    pub wait: Duration,
    /// The longest a request may take in all (default 10 s).
    pub timeout: Duration,
    /// The bound on `/v1` requests in flight: past it, 503 `overloaded` at once. A read waiting
    /// for `min_position` holds its place while it waits. The binary sets it
    /// (`--max-in-flight`); `None`, the default, is unbounded.
    pub in_flight: Option<InFlightLimit>,
}

impl Default for ReadConfig {
    fn default() -> Self {
        ReadConfig {
            wait: Duration::from_secs(2),
            timeout: Duration::from_secs(10),
            in_flight: None,
        }
    }
}

/// A service's store's head position, when the process has the stores at hand (embedded mode):
/// it makes the lag in events exact. Distributed, the lag comes from the Kafka partitions' ends.
pub type HeadFn = Arc<dyn Fn(event_schemas::Service) -> u64 + Send + Sync>;

/// What the handlers share.
#[derive(Clone)]
pub struct ReadState {
    db: ReadDb,
    clickhouse: Option<clickhouse::Client>,
    config: ReadConfig,
    head: Option<HeadFn>,
    auth: Auth,
    /// `/openapi.json`, rendered once: it depends on `auth`.
    openapi: Arc<std::sync::OnceLock<String>>,
    metrics: PrometheusHandle,
    live: Arc<consistency::LiveVersions>,
    progress: Arc<consistency::ProgressWatches>,
}

impl ReadState {
    /// Reads the dashboard and the control tables from `db`, and the analytics from `clickhouse`
    /// (or from `db` when `None`, the embedded mode).
    pub fn new(db: ReadDb, clickhouse: Option<clickhouse::Client>, config: ReadConfig) -> Self {
        ReadState {
            db,
            clickhouse: clickhouse.map(|c| c.with_validation(false)),
            config,
            head: None,
            auth: Auth::Disabled,
            openapi: Arc::default(),
            metrics: prometheus_handle(),
            live: Arc::default(),
            progress: Arc::default(),
        }
    }

    /// Gives the stores' heads, for exact lag in events (embedded mode).
    pub fn with_head(mut self, head: HeadFn) -> Self {
        self.head = Some(head);
        self
    }

    /// Requires a bearer token with scope `read` on every `/v1/...` route (without it, every
    /// request is allowed: the embedded demo).
    pub fn with_auth(mut self, auth: Auth) -> Self {
        self.auth = auth;
        self.openapi = Arc::default();
        self
    }

    fn edge(&self) -> Edge {
        Edge {
            request_timeout: self.config.timeout,
            in_flight: self.config.in_flight.clone(),
        }
    }

    pub(crate) fn db(&self) -> &ReadDb {
        &self.db
    }

    /// The analytics of one version, on whichever sink this deployment uses.
    pub(crate) fn analytics(&self, version: u32) -> SalesAnalytics {
        match &self.clickhouse {
            Some(client) => SalesAnalytics::clickhouse(client.clone(), self.db.clone(), version),
            None => SalesAnalytics::sqlite(self.db.clone(), version),
        }
    }
}

/// The `/v1/...` query routes behind the `read` scope, without edge or fallback.
fn v1_routes(state: &ReadState) -> Router<ReadState> {
    let guard = Guard {
        auth: state.auth.clone(),
        scope: Scope::Read,
    };
    Router::new()
        .route("/v1/dashboard/orders", get(dashboard::list))
        .route("/v1/dashboard/orders/{id}", get(dashboard::one))
        .route("/v1/dashboard/customers", get(dashboard::customers))
        .route("/v1/dashboard/customers/{id}", get(dashboard::customer))
        .route("/v1/analytics/revenue", get(analytics::revenue))
        .route("/v1/analytics/top-products", get(analytics::top_products))
        .route("/v1/analytics/order-funnel", get(analytics::order_funnel))
        .route("/v1/analytics/delivery-durations", get(analytics::delivery_durations))
        .route("/v1/projections", get(status::projections))
        .route_layer(from_fn_with_state(guard, service_kit::auth::require))
}

/// Only the `/v1/...` query routes, behind the same edge middleware as [`router`], without the
/// operations endpoints and without a fallback: for a process that merges them into a router
/// which serves `/health`, `/ready`, `/metrics`, `/openapi.json` and unknown paths itself (the
/// embedded `orderflow serve`, one port for commands and queries).
pub fn query_routes(state: ReadState) -> Router {
    v1_routes(&state)
        .method_not_allowed_fallback(service_kit::http::method_not_allowed)
        .layer(from_fn_with_state(state.edge(), service_kit::http::edge))
        .with_state(state)
}

/// Every route of the read API.
pub fn router(state: ReadState) -> Router {
    v1_routes(&state)
        .route("/health", get(ops::health))
        .route("/ready", get(ops::ready))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(ops::openapi))
        .fallback(service_kit::http::no_route)
        .method_not_allowed_fallback(service_kit::http::method_not_allowed)
        .layer(from_fn_with_state(state.edge(), service_kit::http::edge))
        .with_state(state)
}

/// Serves `router` on `listener` until `shutdown`, then drains the requests in flight (at most
/// the request timeout and a second).
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    config: &ReadConfig,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let grace = config.timeout + Duration::from_secs(1);
    service_kit::http::serve_on(listener, router, grace, shutdown.cancelled_owned()).await
}
