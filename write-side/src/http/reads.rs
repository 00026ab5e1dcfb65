//! The write services' own reads, straight from their event stores: a stream's events (from the
//! store of the service that owns its category), a service's log (admin) and an order folded as
//! it is now or as it was at a time or a position of the orders log.
//!
//! Events are shown with their envelope fields and the decoded event as JSON (`data`), a view
//! made here so that `event-schemas` stays free of JSON concerns. An event this build cannot
//! decode is still listed, with `data: null` and the reason in `data_error`.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use event_schemas::{CustomerEvent, DomainEvent, Money, OrderEvent, PaymentEvent, ProductEvent, SagaEvent, Service};
use event_store::{RecordedEvent, Until};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::HttpState;
use super::extract::{ApiQuery, IdPath, StreamIdPath};
use crate::domain::Order;
use service_kit::http::{ApiError, ErrorBody};

/// Events per page when `limit` is not given.
pub const DEFAULT_PAGE: u64 = 100;
/// Most events per page.
pub const MAX_PAGE: u64 = 1000;

/// One stored event.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EventView {
    /// Global position in the log.
    pub position: u64,
    pub stream_id: String,
    /// 1 for the stream's first event.
    pub stream_version: u64,
    pub event_id: Uuid,
    /// Stable type name, e.g. `order.placed`.
    pub event_type: String,
    pub schema_version: u32,
    /// When the command that caused it ran.
    pub occurred_at: DateTime<Utc>,
    /// When the store committed it (non-decreasing along the log).
    pub recorded_at: DateTime<Utc>,
    pub correlation_id: String,
    pub causation_id: String,
    pub actor: String,
    /// The decoded event (upcast to the current schema version), or `null` if it could not be
    /// decoded.
    #[schema(value_type = Object)]
    pub data: Value,
    /// Why `data` is `null`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_error: Option<String>,
}

impl EventView {
    pub fn from_recorded(event: &RecordedEvent) -> Self {
        let (data, data_error) = match event_schemas::decode(&event.event_type, event.schema_version, &event.payload) {
            Ok(decoded) => (event_data(&decoded), None),
            Err(e) => {
                tracing::warn!(
                    position = event.position,
                    event_type = %event.event_type,
                    error = %e,
                    "stored event does not decode"
                );
                (Value::Null, Some(e.to_string()))
            }
        };
        EventView {
            position: event.position,
            stream_id: event.stream_id.clone(),
            stream_version: event.stream_version,
            event_id: event.event_id,
            event_type: event.event_type.clone(),
            schema_version: event.schema_version,
            occurred_at: event.occurred_at,
            recorded_at: event.recorded_at,
            correlation_id: event.metadata.correlation_id.clone(),
            causation_id: event.metadata.causation_id.clone(),
            actor: event.metadata.actor.clone(),
            data,
            data_error,
        }
    }
}

fn money(m: &Money) -> Value {
    json!({ "amount_minor": m.amount_minor, "currency": m.currency.as_str() })
}

/// The JSON view of a decoded event: its fields, ids as strings, money as
/// `{amount_minor, currency}`.
pub fn event_data(event: &DomainEvent) -> Value {
    match event {
        DomainEvent::Customer(e) => match e {
            CustomerEvent::Registered(e) => {
                json!({ "customer_id": e.customer_id, "name": e.name, "email": e.email })
            }
            CustomerEvent::Renamed(e) => json!({ "customer_id": e.customer_id, "name": e.name }),
            CustomerEvent::EmailChanged(e) => json!({ "customer_id": e.customer_id, "email": e.email }),
        },
        DomainEvent::Product(e) => match e {
            ProductEvent::Added(e) => json!({
                "product_id": e.product_id,
                "sku": e.sku,
                "name": e.name,
                "price": money(&e.price),
                "stock": e.stock,
            }),
            ProductEvent::PriceChanged(e) => json!({ "product_id": e.product_id, "price": money(&e.price) }),
            ProductEvent::Restocked(e) => json!({ "product_id": e.product_id, "quantity": e.quantity }),
            ProductEvent::StockReserved(e) => {
                json!({ "product_id": e.product_id, "order_id": e.order_id, "quantity": e.quantity })
            }
            ProductEvent::StockReleased(e) => {
                json!({ "product_id": e.product_id, "order_id": e.order_id, "quantity": e.quantity })
            }
        },
        DomainEvent::Order(e) => match e {
            OrderEvent::Placed(e) => json!({
                "order_id": e.order_id,
                "customer_id": e.customer_id,
                "customer": e.customer,
                "lines": e.lines,
                "currency": e.currency.as_str(),
                "total_minor": e.total_minor,
            }),
            OrderEvent::Confirmed(e) => json!({ "order_id": e.order_id }),
            OrderEvent::Shipped(e) => {
                json!({ "order_id": e.order_id, "carrier": e.carrier, "tracking": e.tracking })
            }
            OrderEvent::Delivered(e) => json!({ "order_id": e.order_id }),
            OrderEvent::Cancelled(e) => {
                json!({ "order_id": e.order_id, "reason": e.reason, "reason_code": e.reason_code })
            }
        },
        DomainEvent::Payment(e) => match e {
            PaymentEvent::Authorized(e) => {
                json!({ "payment_id": e.payment_id, "order_id": e.order_id, "amount": money(&e.amount) })
            }
            PaymentEvent::Captured(e) => {
                json!({ "payment_id": e.payment_id, "order_id": e.order_id, "amount": money(&e.amount) })
            }
            PaymentEvent::Declined(e) => {
                json!({ "payment_id": e.payment_id, "order_id": e.order_id, "reason": e.reason })
            }
            PaymentEvent::Refunded(e) => {
                json!({ "payment_id": e.payment_id, "order_id": e.order_id, "amount": money(&e.amount) })
            }
            PaymentEvent::Voided(e) => json!({
                "payment_id": e.payment_id,
                "order_id": e.order_id,
                // `null` when the void came before any authorization.
                "amount": e.amount.as_ref().map(money),
                "reason": e.reason,
            }),
        },
        DomainEvent::Saga(e) => match e {
            SagaEvent::Started(e) => json!({
                "order_id": e.order_id,
                "payment_id": e.payment_id,
                "lines": e.lines.iter().map(|l| json!({ "product_id": l.product_id, "quantity": l.quantity })).collect::<Vec<_>>(),
                "amount": money(&e.amount),
                "deadline": e.deadline,
                "correlation_id": e.correlation_id,
            }),
            SagaEvent::StockReserved(e) => json!({
                "order_id": e.order_id,
                "line": e.line,
                "product_id": e.product_id,
                "quantity": e.quantity,
            }),
            SagaEvent::PaymentAuthorized(e) => {
                json!({ "order_id": e.order_id, "payment_id": e.payment_id, "amount": money(&e.amount) })
            }
            SagaEvent::Confirmed(e) => json!({ "order_id": e.order_id }),
            SagaEvent::Failed(e) => json!({
                "order_id": e.order_id,
                "reason_code": e.reason_code,
                "reason": e.reason,
                "step": e.step,
            }),
            SagaEvent::StockReleased(e) => {
                json!({ "order_id": e.order_id, "line": e.line, "product_id": e.product_id })
            }
            SagaEvent::PaymentVoided(e) => json!({ "order_id": e.order_id, "payment_id": e.payment_id }),
            SagaEvent::PaymentCaptured(e) => {
                json!({ "order_id": e.order_id, "payment_id": e.payment_id, "amount": money(&e.amount) })
            }
            SagaEvent::PaymentRefunded(e) => {
                json!({ "order_id": e.order_id, "payment_id": e.payment_id, "amount": money(&e.amount) })
            }
            SagaEvent::OrderCancelled(e) => json!({ "order_id": e.order_id, "reason_code": e.reason_code }),
            SagaEvent::Completed(e) => json!({ "order_id": e.order_id, "outcome": e.outcome }),
            SagaEvent::Parked(e) => json!({ "order_id": e.order_id, "step": e.step, "error": e.error }),
            SagaEvent::Resumed(e) => json!({ "order_id": e.order_id, "actor": e.actor }),
        },
    }
}

/// `limit` checked: 1 to [`MAX_PAGE`], [`DEFAULT_PAGE`] when absent.
fn page_size(limit: Option<u64>) -> Result<usize, ApiError> {
    match limit.unwrap_or(DEFAULT_PAGE) {
        0 => Err(ApiError::bad_field("limit", "must be at least 1")),
        n if n > MAX_PAGE => Err(ApiError::bad_field("limit", format!("must be at most {MAX_PAGE}"))),
        // At most MAX_PAGE, so it fits any usize.
        n => Ok(usize::try_from(n).unwrap_or(usize::MAX)),
    }
}

/// Query of `GET /v1/streams/{stream_id}/events`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StreamEventsQuery {
    /// First stream version to return (1-based, default 1).
    #[param(minimum = 1)]
    #[serde(default, deserialize_with = "super::extract::stored_number")]
    pub from_version: Option<u64>,
    /// Most events to return: 1 to 1000, default 100.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u64>,
}

/// A page of one stream's events.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StreamEventsPage {
    pub stream_id: String,
    pub events: Vec<EventView>,
    /// `from_version` of the next page, when this page is full.
    pub next_from_version: Option<u64>,
}

/// A stream's events, in version order.
#[utoipa::path(
    get,
    path = "/v1/streams/{stream_id}/events",
    tag = "reads",
    params(("stream_id" = String, Path, description = "a category and a lower-case hyphenated UUID, e.g. `order-67e55044-10b1-426f-9247-bb680e5fe0c8`",
            pattern = r"^(customer|product|order|payment|saga)-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"), StreamEventsQuery),
    responses(
        (status = 200, description = "a page of the stream's events", body = StreamEventsPage),
        (status = 404, description = "the stream has no events", body = ErrorBody),
    ),
    security(("bearer" = ["commands"]))
)]
pub(crate) async fn stream_events(
    State(state): State<HttpState>,
    StreamIdPath(stream_id): StreamIdPath,
    ApiQuery(query): ApiQuery<StreamEventsQuery>,
) -> Result<Json<StreamEventsPage>, ApiError> {
    let from_version = match query.from_version {
        Some(0) => return Err(ApiError::bad_field("from_version", "must be at least 1")),
        Some(v) => v,
        None => 1,
    };
    let limit = page_size(query.limit)?;
    let (category, _) =
        event_schemas::parse_stream_id(&stream_id).map_err(|_| ApiError::bad_field("stream_id", "not a stream id"))?;
    let handler = state.handler(Service::owning(category))?;
    let events = handler.stream_events(&stream_id, from_version, limit).await?;
    if events.is_empty() {
        let version = handler
            .store()
            .stream_version(&stream_id)
            .await
            .map_err(crate::CommandError::from)?;
        if version == 0 {
            return Err(ApiError::not_found("stream", &stream_id));
        }
    }
    let next_from_version = (events.len() == limit)
        .then(|| events.last().map(|e| e.stream_version + 1))
        .flatten();
    Ok(Json(StreamEventsPage {
        stream_id,
        events: events.iter().map(EventView::from_recorded).collect(),
        next_from_version,
    }))
}

/// Query of `GET /v1/log`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LogQuery {
    /// Whose log: `customers`, `inventory`, `orders` or `payments`. Optional when the process
    /// hosts one service.
    #[param(pattern = "^(customers|inventory|orders|payments)$")]
    pub service: Option<String>,
    /// First global position to return (inclusive, default: the start of the log).
    #[serde(default, deserialize_with = "super::extract::stored_number")]
    pub from_position: Option<u64>,
    /// Most events to return: 1 to 1000, default 100.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u64>,
}

/// A page of a service's log.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LogPage {
    /// Whose log it is.
    pub service: String,
    pub events: Vec<EventView>,
    /// `from_position` of the next page, when this page is full.
    pub next_from_position: Option<u64>,
}

/// A service's log in position order (admin scope).
#[utoipa::path(
    get,
    path = "/v1/log",
    tag = "reads",
    params(LogQuery),
    responses(
        (status = 200, description = "a page of the service's log", body = LogPage),
        (status = 400, description = "no `service` when the process hosts several, or an unknown one", body = ErrorBody),
        (status = 404, description = "a service this process does not host", body = ErrorBody),
    ),
    security(("bearer" = ["admin"]))
)]
pub(crate) async fn log(
    State(state): State<HttpState>,
    ApiQuery(query): ApiQuery<LogQuery>,
) -> Result<Json<LogPage>, ApiError> {
    let after = query.from_position.unwrap_or(0).saturating_sub(1);
    let limit = page_size(query.limit)?;
    let service = log_service(&state, query.service.as_deref())?;
    let events = state.handler(service)?.log(after, limit).await?;
    let next_from_position = (events.len() == limit)
        .then(|| events.last().map(|e| e.position + 1))
        .flatten();
    Ok(Json(LogPage {
        service: service.name().to_owned(),
        events: events.iter().map(EventView::from_recorded).collect(),
        next_from_position,
    }))
}

/// The service whose log `GET /v1/log` reads: `service`, or the one hosted when there is one.
fn log_service(state: &HttpState, service: Option<&str>) -> Result<Service, ApiError> {
    let hosted: Vec<&str> = state.services().hosted().map(Service::name).collect();
    match service {
        Some(name) => name
            .parse::<Service>()
            .map_err(|e| ApiError::bad_field("service", e.to_string()).with_detail("hosted", hosted)),
        None => match state.services().hosted().collect::<Vec<_>>()[..] {
            [one] => Ok(one),
            _ => Err(ApiError::bad_field(
                "service",
                "this process hosts several services: give ?service= (customers, inventory, orders or payments)",
            )
            .with_detail("hosted", hosted)),
        },
    }
}

/// Query of `GET /v1/orders/{id}/state`: at most one of the two.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct OrderStateQuery {
    /// RFC 3339 time, e.g. `2026-01-31T12:00:00Z` (encode a `+` offset as `%2B`): the state
    /// from the events recorded at or before it. Not with `at_position`.
    #[param(format = DateTime)]
    pub as_of: Option<String>,
    /// A position of the orders log: the state from the events at or below it. Not with
    /// `as_of`.
    #[serde(default, deserialize_with = "super::extract::stored_number")]
    pub at_position: Option<u64>,
}

/// The customer's name and email when the order was placed.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CustomerView {
    pub name: String,
    pub email: String,
}

/// One line of a placed order, with what was captured at placement.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OrderLineView {
    pub product_id: Uuid,
    pub sku: String,
    pub name: String,
    pub quantity: i64,
    pub unit_price_minor: i64,
}

/// How a shipped order travels.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ShipmentView {
    pub carrier: String,
    pub tracking: String,
}

/// An order folded from its stream.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OrderStateView {
    pub order_id: Uuid,
    /// `pending`, `confirmed`, `shipped`, `delivered` or `cancelled`.
    pub status: String,
    pub customer_id: Uuid,
    pub customer: Option<CustomerView>,
    pub lines: Vec<OrderLineView>,
    pub currency: Option<String>,
    pub total_minor: i64,
    pub shipment: Option<ShipmentView>,
    pub cancellation_reason: Option<String>,
    /// Why it was cancelled, as a stable name (`requested`, `out_of_stock`, ...); `null` when
    /// not cancelled, or cancelled before reason codes existed.
    pub cancellation_reason_code: Option<String>,
    /// Number of the order's events folded in.
    pub version: u64,
    /// Global position of the last event folded in.
    pub position: u64,
    /// When that event was recorded.
    pub recorded_at: Option<DateTime<Utc>>,
}

impl OrderStateView {
    /// The view of `order` folded up to its `version`th event (what the state endpoint answers).
    pub fn new(order: &Order, version: u64, position: u64, recorded_at: Option<DateTime<Utc>>) -> Self {
        OrderStateView {
            order_id: order.id,
            status: order.status.as_str().to_owned(),
            customer_id: order.customer_id,
            customer: order.customer.as_ref().map(|c| CustomerView {
                name: c.name.clone(),
                email: c.email.clone(),
            }),
            lines: order
                .lines
                .iter()
                .map(|l| OrderLineView {
                    product_id: l.product_id,
                    sku: l.sku.clone(),
                    name: l.name.clone(),
                    quantity: l.quantity,
                    unit_price_minor: l.unit_price_minor,
                })
                .collect(),
            currency: order.currency.map(|c| c.as_str().to_owned()),
            total_minor: order.total_minor,
            shipment: order.shipment.as_ref().map(|s| ShipmentView {
                carrier: s.carrier.clone(),
                tracking: s.tracking.clone(),
            }),
            cancellation_reason: order.cancellation_reason.clone(),
            cancellation_reason_code: order.cancellation_reason_code.clone(),
            version,
            position,
            recorded_at,
        }
    }
}

/// An order folded from the store: now, `as_of` a time, or `at_position` a global position.
#[utoipa::path(
    get,
    path = "/v1/orders/{id}/state",
    tag = "reads",
    params(("id" = Uuid, Path, description = "the order's id"), OrderStateQuery),
    responses(
        (status = 200, description = "the order folded up to that point", body = OrderStateView),
        (status = 400, description = "both `as_of` and `at_position`, or a malformed one", body = ErrorBody),
        (status = 404, description = "no such order (at that point)", body = ErrorBody),
    ),
    security(("bearer" = ["commands"]))
)]
pub(crate) async fn order_state(
    State(state): State<HttpState>,
    IdPath(id): IdPath,
    ApiQuery(query): ApiQuery<OrderStateQuery>,
) -> Result<Response, ApiError> {
    let until = match (query.as_of, query.at_position) {
        (Some(_), Some(_)) => {
            return Err(ApiError::conflicting_parameters(
                &["as_of", "at_position"],
                "give at most one of as_of and at_position",
            ));
        }
        (Some(as_of), None) => {
            let time = DateTime::parse_from_rfc3339(&as_of).map_err(|e| {
                ApiError::bad_field(
                    "as_of",
                    format!("{as_of:?} is not an RFC 3339 time like 2026-01-31T12:00:00Z ({e}); encode + as %2B"),
                )
            })?;
            Some(Until::RecordedAt(time.with_timezone(&Utc)))
        }
        (None, Some(position)) => Some(Until::Position(position)),
        (None, None) => None,
    };
    let loaded = state.handler(Service::Orders)?.load::<Order>(id, until).await?;
    if loaded.version == 0 {
        return Err(ApiError::not_found("order", id));
    }
    let view = OrderStateView::new(&loaded.state, loaded.version, loaded.position, loaded.recorded_at);
    let mut response = Json(view).into_response();
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{}\"", loaded.version)) {
        response.headers_mut().insert(header::ETAG, etag);
    }
    Ok(response)
}
