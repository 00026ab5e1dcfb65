//! The console of the distributed deployment: one origin for the browser, in front of the read
//! API, the four services and the projections worker.
//!
//! The page's requests go where their data lives: the dashboard, the analytics and the
//! projections' status to the read API; a stream's events to the service that owns its category
//! (`order-…` and `saga-…` to orders, `customer-…` to customers, …); a service's global log to
//! the service named by `?service=`; orders, sagas and the peers' health to orders; payments and
//! the gateway to payments; a rebuild to the projections worker. Only reads (`GET`) and the
//! rebuild (`POST /v1/projections/{name}/rebuild`) pass: the console operates the read side, it
//! sends no commands.
//!
//! The proxy holds no credential. The browser's `Authorization` header goes to the upstream as
//! it came, so each upstream decides with its own tokens; the proxy never logs it.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use event_schemas::Service;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use service_kit::http::ApiError;

/// Where each upstream listens: base URLs such as `http://127.0.0.1:8082`.
#[derive(Debug, Clone)]
pub struct Upstreams {
    pub read_api: String,
    /// The projections worker that serves rebuilds; `None`: rebuilds answer 503.
    pub projections: Option<String>,
    pub customers: String,
    pub inventory: String,
    pub orders: String,
    pub payments: String,
}

impl Upstreams {
    fn service(&self, service: Service) -> &str {
        match service {
            Service::Customers => &self.customers,
            Service::Inventory => &self.inventory,
            Service::Orders => &self.orders,
            Service::Payments => &self.payments,
        }
    }
}

/// Which upstream serves a request, by method and path (and `?service=` for the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    ReadApi,
    Projections,
    Service(Service),
}

fn target(method: &Method, uri: &Uri) -> Result<Target, ApiError> {
    let path = uri.path();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let refused = || ApiError::method_not_allowed(method.as_str(), path);
    // A browser resolves dot segments before it sends a URL: one that still has them (or hides
    // them, or a slash, percent-encoded) was made by hand, and is not forwarded to be read
    // differently upstream.
    let suspicious = |segment: &&str| {
        let lower = segment.to_ascii_lowercase();
        segment.is_empty() || *segment == "." || *segment == ".." || lower.contains("%2e") || lower.contains("%2f")
    };
    if segments.iter().any(suspicious) {
        return Err(ApiError::no_route(path));
    }
    if *method == Method::POST {
        return match segments.as_slice() {
            ["v1", "projections", _, "rebuild"] => Ok(Target::Projections),
            _ => Err(refused()),
        };
    }
    if *method != Method::GET && *method != Method::HEAD {
        return Err(refused());
    }
    let target = match segments.as_slice() {
        ["v1", "dashboard" | "analytics", ..] | ["v1", "projections"] => Target::ReadApi,
        ["v1", "customers", ..] => Target::Service(Service::Customers),
        ["v1", "products", ..] => Target::Service(Service::Inventory),
        ["v1", "orders" | "sagas" | "services", ..] => Target::Service(Service::Orders),
        ["v1", "payments" | "gateway", ..] => Target::Service(Service::Payments),
        ["v1", "streams", stream_id, "events"] => Target::Service(
            Service::of_stream(stream_id).map_err(|e| ApiError::bad_parameter("stream_id", e.to_string()))?,
        ),
        ["v1", "log"] => {
            let service = uri
                .query()
                .into_iter()
                .flat_map(|q| q.split('&'))
                .find_map(|pair| pair.strip_prefix("service="))
                .ok_or_else(|| ApiError::bad_parameter("service", "the console needs the service whose log to read"))?;
            Target::Service(
                Service::from_name(service).ok_or_else(|| {
                    ApiError::bad_parameter("service", "one of customers, inventory, orders, payments")
                })?,
            )
        }
        _ => return Err(ApiError::no_route(path)),
    };
    Ok(target)
}

/// The headers a request keeps on its way up, and an answer on its way down; the rest (hop by
/// hop, cookies, anything the browser adds) stays here.
const REQUEST_HEADERS: [HeaderName; 4] = [
    header::AUTHORIZATION,
    header::ACCEPT,
    header::CONTENT_TYPE,
    HeaderName::from_static("idempotency-key"),
];
/// The upstream's correlation and request ids are not among them: the console's edge answers
/// its own, and the correlation id is the one sent upstream, so the ids a user sees are found
/// in every log.
const RESPONSE_HEADERS: [HeaderName; 3] = [header::CONTENT_TYPE, header::RETRY_AFTER, header::WWW_AUTHENTICATE];

#[derive(Clone)]
struct Proxy {
    upstreams: Upstreams,
    client: Client<HttpConnector, Body>,
}

/// The console's whole router: the pages, `/health`, and the proxied API.
pub fn router(upstreams: Upstreams) -> Router {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(Duration::from_secs(2)));
    connector.set_nodelay(true);
    let proxy = Proxy {
        upstreams,
        client: Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector),
    };
    crate::assets::routes()
        .route("/health", axum::routing::get(service_kit::http::health))
        .route("/v1/{*rest}", axum::routing::any(forward).with_state(proxy))
        .fallback(service_kit::http::no_route)
}

async fn forward(State(proxy): State<Proxy>, request: Request) -> Response {
    match forward_inner(&proxy, request).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn forward_inner(proxy: &Proxy, request: Request) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let target = target(&parts.method, &parts.uri)?;
    let (name, base) = match target {
        Target::ReadApi => ("read-api", proxy.upstreams.read_api.as_str()),
        Target::Projections => (
            "projections",
            proxy.upstreams.projections.as_deref().ok_or_else(|| {
                ApiError::unavailable("the projections worker (the console has no --projections-url)")
            })?,
        ),
        Target::Service(service) => (service.name(), proxy.upstreams.service(service)),
    };
    let path_and_query = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let uri: Uri = format!("{}{}", base.trim_end_matches('/'), path_and_query)
        .parse()
        .map_err(|_| ApiError::bad_request("the path cannot be forwarded"))?;
    let mut upstream = hyper::Request::builder().method(parts.method).uri(uri);
    for name in &REQUEST_HEADERS {
        for value in parts.headers.get_all(name) {
            upstream = upstream.header(name, value);
        }
    }
    // The request's correlation id as the console's edge settled it (the browser's, or a new
    // one), so one id follows the request into the upstream's log.
    if let Some(context) = parts.extensions.get::<service_kit::http::RequestContext>() {
        upstream = upstream.header(service_kit::http::CORRELATION_ID, context.correlation_id.as_str());
    }
    let upstream = upstream
        .body(body)
        .map_err(|_| ApiError::bad_request("the request cannot be forwarded"))?;
    let answer = proxy.client.request(upstream).await.map_err(|error| {
        tracing::warn!(upstream = name, error = %service_kit::http::chain(&error), "upstream unreachable");
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "upstream_unavailable",
            format!("{name} did not answer"),
        )
        .with_detail("upstream", name)
    })?;
    let (parts, body) = answer.into_parts();
    let mut response = Response::new(Body::new(body));
    *response.status_mut() = parts.status;
    for name in &RESPONSE_HEADERS {
        for value in parts.headers.get_all(name) {
            response.headers_mut().append(name, value.clone());
        }
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn to(method: Method, uri: &str) -> Result<Target, u16> {
        target(&method, &uri.parse().expect("uri")).map_err(|e| e.status().as_u16())
    }

    #[test]
    fn each_request_goes_where_its_data_lives() {
        let id = "0193a5c0-0000-7000-8000-000000000001";
        assert_eq!(to(Method::GET, "/v1/dashboard/orders?limit=50"), Ok(Target::ReadApi));
        assert_eq!(to(Method::GET, "/v1/analytics/revenue"), Ok(Target::ReadApi));
        assert_eq!(to(Method::GET, "/v1/projections"), Ok(Target::ReadApi));
        assert_eq!(
            to(Method::POST, "/v1/projections/order_dashboard/rebuild"),
            Ok(Target::Projections)
        );
        assert_eq!(
            to(Method::GET, &format!("/v1/streams/saga-{id}/events")),
            Ok(Target::Service(Service::Orders))
        );
        assert_eq!(
            to(Method::GET, &format!("/v1/streams/product-{id}/events")),
            Ok(Target::Service(Service::Inventory))
        );
        assert_eq!(
            to(Method::GET, "/v1/log?from_position=3&service=payments"),
            Ok(Target::Service(Service::Payments))
        );
        assert_eq!(to(Method::GET, "/v1/services"), Ok(Target::Service(Service::Orders)));
        assert_eq!(
            to(Method::GET, &format!("/v1/customers/{id}")),
            Ok(Target::Service(Service::Customers))
        );
    }

    #[test]
    fn commands_and_unknown_places_are_refused_here() {
        assert_eq!(to(Method::POST, "/v1/orders"), Err(405));
        assert_eq!(to(Method::PUT, "/v1/gateway"), Err(405));
        assert_eq!(to(Method::DELETE, "/v1/dashboard/orders"), Err(405));
        assert_eq!(to(Method::GET, "/v1/log"), Err(400));
        assert_eq!(to(Method::GET, "/v1/log?service=billing"), Err(400));
        assert_eq!(to(Method::GET, "/v1/streams/nonsense/events"), Err(400));
        assert_eq!(to(Method::GET, "/v1/elsewhere"), Err(404));
        assert_eq!(to(Method::GET, "/v1/dashboard/../../admin"), Err(404));
        assert_eq!(to(Method::GET, "/v1/dashboard/%2e%2e/x"), Err(404));
        assert_eq!(to(Method::GET, "/v1/dashboard//orders"), Err(404));
    }
}
