//! `/v1/dashboard/...`: the `order_dashboard` projection.

mod schema;

use axum::Json;
use axum::extract::{FromRequestParts, Path, RawQuery, State};
use axum::http::request::Parts;
use projections::dashboard::{
    self, Cursor, CustomerCursor, CustomerPage, CustomerSummary, Direction, OrderFilter, OrderRow, OrderStatus, Page,
    Sort, SortKey,
};
use uuid::Uuid;

use utoipa::IntoParams;
use utoipa::openapi::path::{Parameter, ParameterIn};

use self::schema::{DashboardCustomer, DashboardCustomerPage, DashboardOrder, DashboardOrderPage};
use crate::consistency::read;
use crate::params::{Params, doc};
use crate::{ApiError, ReadState};

/// Default and largest page sizes.
const DEFAULT_LIMIT: u64 = 50;
const MAX_LIMIT: u64 = 500;
/// The largest page of customers (the default is the orders list's).
const MAX_CUSTOMER_LIMIT: u64 = dashboard::MAX_PAGE_LIMIT as u64;

const SORTS: &[(&str, Sort)] = &[
    (
        "placed_at_desc",
        Sort {
            key: SortKey::PlacedAt,
            direction: Direction::Desc,
        },
    ),
    (
        "placed_at_asc",
        Sort {
            key: SortKey::PlacedAt,
            direction: Direction::Asc,
        },
    ),
    (
        "total_desc",
        Sort {
            key: SortKey::Total,
            direction: Direction::Desc,
        },
    ),
    (
        "total_asc",
        Sort {
            key: SortKey::Total,
            direction: Direction::Asc,
        },
    ),
];

const STATUSES: &[(&str, OrderStatus)] = &[
    ("pending", OrderStatus::Pending),
    ("confirmed", OrderStatus::Confirmed),
    ("shipped", OrderStatus::Shipped),
    ("delivered", OrderStatus::Delivered),
    ("cancelled", OrderStatus::Cancelled),
];

/// The fewest and most bytes of an orders cursor (`pa:1:` and an order id; at most 256 hex
/// digits, [`Cursor::decode`]), and the fewest of a customers cursor (`n:`, a customer id, `:`).
const CURSOR_BYTES: (usize, usize) = (37, 128);
const CUSTOMER_CURSOR_MIN_BYTES: usize = 35;

const LIST_PARAMS: &[&str] = &[
    "status",
    "reason_code",
    "customer_id",
    "placed_from",
    "placed_to",
    "sort",
    "cursor",
    "limit",
    "as_of",
    "at_position",
    "min_position",
];

/// The query parameters of [`list`], as [`Params`] parses them.
pub(crate) struct ListParams;

impl IntoParams for ListParams {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        let [as_of, at_position] = doc::as_of("the dashboard");
        vec![
            doc::choice(
                "status",
                STATUSES.iter().map(|(label, _)| *label),
                "Orders in this status.",
            ),
            doc::choice(
                "reason_code",
                projections::REASON_CODES,
                "Orders cancelled for this reason (see the `DashboardReasonCode` schema).",
            ),
            doc::uuid("customer_id", "One customer's orders."),
            doc::time("placed_from", "Orders placed at or after this time (inclusive)"),
            doc::time(
                "placed_to",
                "Orders placed before this time (exclusive; 400 when before `placed_from`)",
            ),
            doc::choice(
                "sort",
                SORTS.iter().map(|(label, _)| *label),
                "The order of the rows (default `placed_at_desc`).",
            ),
            doc::cursor(
                "cursor",
                "The `next_cursor` of the previous page, with the same `sort` (an opaque token this API issued; any other value is a 400).",
                CURSOR_BYTES.0,
                Some(CURSOR_BYTES.1),
            ),
            doc::limit(MAX_LIMIT, DEFAULT_LIMIT),
            as_of,
            at_position,
            doc::min_position(),
            doc::correlation_id(),
        ]
    }
}

/// The parameters of [`one`].
pub(crate) struct OneParams;

impl IntoParams for OneParams {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        let [as_of, at_position] = doc::as_of("the order");
        vec![
            doc::path_id("The order's id."),
            as_of,
            at_position,
            doc::min_position(),
            doc::correlation_id(),
        ]
    }
}

/// The query parameters of [`customers`].
pub(crate) struct CustomersParams;

impl IntoParams for CustomersParams {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![
            doc::cursor(
                "after",
                "The `next_after` of the previous page (an opaque token this API issued; any other value is a 400).",
                CUSTOMER_CURSOR_MIN_BYTES,
                None,
            ),
            doc::limit(MAX_CUSTOMER_LIMIT, DEFAULT_LIMIT),
            doc::min_position(),
            doc::correlation_id(),
        ]
    }
}

/// The parameters of [`customer`].
pub(crate) struct CustomerParams;

impl IntoParams for CustomerParams {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![
            doc::path_id("The customer's id."),
            doc::min_position(),
            doc::correlation_id(),
        ]
    }
}

/// A page of orders: filters `status`, `reason_code` (the cancellation's), `customer_id`,
/// `placed_from` (inclusive), `placed_to` (exclusive); `sort` (`placed_at_desc` by default,
/// `placed_at_asc`, `total_desc`, `total_asc`); keyset pagination with `cursor` (from the
/// previous page's `next_cursor`) and `limit` (1..=500, 50); `as_of` (RFC 3339) or
/// `at_position` for the dashboard as it stood then; `min_position` for read-your-writes. Each
/// row carries the order's cancellation `reason_code`, its place-order saga's `saga_state` and
/// its payment (`payment_status`, the authorized, captured and refunded amounts, ...: see the
/// `DashboardOrder` schema).
#[utoipa::path(get, path = "/v1/dashboard/orders", tag = "dashboard", operation_id = "dashboard_orders",
    params(ListParams),
    responses((status = 200, description = "a page of orders, each with its payment", body = DashboardOrderPage),
              crate::params::doc::QueryErrors))]
pub(crate) async fn list(State(state): State<ReadState>, RawQuery(query): RawQuery) -> Result<Json<Page>, ApiError> {
    let params = Params::parse(query.as_deref(), LIST_PARAMS)?;
    let filter = OrderFilter {
        status: params.choice("status", STATUSES)?,
        reason_code: params
            .choice("reason_code", &projections::REASON_CODES.map(|code| (code, code)))?
            .map(str::to_owned),
        customer_id: params.uuid("customer_id")?,
        placed_from: params.time("placed_from")?,
        placed_to: params.time("placed_to")?,
    };
    if let (Some(from), Some(to)) = (filter.placed_from, filter.placed_to)
        && from > to
    {
        return Err(ApiError::conflicting_parameters(
            &["placed_from", "placed_to"],
            "placed_to is before placed_from",
        ));
    }
    let sort = params.choice("sort", SORTS)?.unwrap_or_default();
    let cursor = params.hex("cursor")?.map(Cursor::decode).transpose()?;
    if cursor.is_some_and(|c| c.sort != sort) {
        return Err(ApiError::conflicting_parameters(
            &["cursor", "sort"],
            "the cursor belongs to another sort",
        ));
    }
    let limit = params.integer("limit", 1, MAX_LIMIT)?.unwrap_or(DEFAULT_LIMIT) as u32;
    let as_of = params.as_of()?;
    let page = read(&state, dashboard::NAME, params.min_position()?, |version| {
        let (state, filter) = (&state, &filter);
        async move {
            let db = state.db();
            Ok(match as_of {
                Some(as_of) => {
                    dashboard::list_orders_as_of(db, version, as_of, filter, sort, cursor.as_ref(), limit).await?
                }
                None => dashboard::list_orders(db, version, filter, sort, cursor.as_ref(), limit).await?,
            })
        }
    })
    .await?;
    Ok(Json(page))
}

/// One order with its cancellation's reason code, its saga's state and its payment, now or
/// `as_of` / `at_position` (all as they were then).
#[utoipa::path(get, path = "/v1/dashboard/orders/{id}", tag = "dashboard", operation_id = "dashboard_order",
    params(OneParams),
    responses((status = 200, description = "the order's dashboard row, with its payment", body = DashboardOrder),
              (status = 404, description = "`not_found`: no such order (then)", body = service_kit::http::ErrorBody),
              crate::params::doc::QueryErrors))]
pub(crate) async fn one(
    State(state): State<ReadState>,
    PathId(id): PathId,
    RawQuery(query): RawQuery,
) -> Result<Json<OrderRow>, ApiError> {
    let params = Params::parse(query.as_deref(), &["as_of", "at_position", "min_position"])?;
    let order_id = path_uuid(&id)?;
    let as_of = params.as_of()?;
    let row = read(&state, dashboard::NAME, params.min_position()?, |version| {
        let state = &state;
        async move {
            Ok(match as_of {
                Some(as_of) => dashboard::get_order_as_of(state.db(), version, order_id, as_of).await?,
                None => dashboard::get_order(state.db(), version, order_id).await?,
            })
        }
    })
    .await?;
    row.map(Json).ok_or_else(|| ApiError::not_found("order", id))
}

/// A page of the customers, each with what `/v1/dashboard/customers/{id}` answers for it (name,
/// email, order count, lifetime value per currency, last order), sorted by name (byte-wise: case
/// as stored, `B` before `a`) then customer id. Keyset pagination with `after` (the previous
/// page's `next_after`) and `limit` (1..=1000, 50); `min_position` for read-your-writes.
#[utoipa::path(get, path = "/v1/dashboard/customers", tag = "dashboard", operation_id = "dashboard_customers",
    params(CustomersParams),
    responses((status = 200, description = "a page of customers, by name then id", body = DashboardCustomerPage),
              crate::params::doc::QueryErrors))]
pub(crate) async fn customers(
    State(state): State<ReadState>,
    RawQuery(query): RawQuery,
) -> Result<Json<CustomerPage>, ApiError> {
    let params = Params::parse(query.as_deref(), &["after", "limit", "min_position"])?;
    let after = params.hex("after")?.map(CustomerCursor::decode).transpose()?;
    let limit = params.integer("limit", 1, MAX_CUSTOMER_LIMIT)?.unwrap_or(DEFAULT_LIMIT) as u32;
    let page = read(&state, dashboard::NAME, params.min_position()?, |version| {
        let (state, after) = (&state, &after);
        async move { Ok(dashboard::list_customers(state.db(), version, after.as_ref(), limit).await?) }
    })
    .await?;
    Ok(Json(page))
}

/// A customer's name, email, order count, lifetime value per currency and last order.
#[utoipa::path(get, path = "/v1/dashboard/customers/{id}", tag = "dashboard", operation_id = "dashboard_customer",
    params(CustomerParams),
    responses((status = 200, description = "the customer's summary", body = DashboardCustomer),
              (status = 404, description = "`not_found`: no such customer", body = service_kit::http::ErrorBody),
              crate::params::doc::QueryErrors))]
pub(crate) async fn customer(
    State(state): State<ReadState>,
    PathId(id): PathId,
    RawQuery(query): RawQuery,
) -> Result<Json<CustomerSummary>, ApiError> {
    let params = Params::parse(query.as_deref(), &["min_position"])?;
    let customer_id = path_uuid(&id)?;
    let summary = read(&state, dashboard::NAME, params.min_position()?, |version| {
        let state = &state;
        async move { Ok(dashboard::customer_summary(state.db(), version, customer_id).await?) }
    })
    .await?;
    summary.map(Json).ok_or_else(|| ApiError::not_found("customer", id))
}

/// The path's id: a hyphenated UUID, as the document's `format: uuid` says.
fn path_uuid(id: &str) -> Result<Uuid, ApiError> {
    crate::params::hyphenated_uuid(id).ok_or_else(not_a_uuid)
}

fn not_a_uuid() -> ApiError {
    ApiError::bad_parameter("id", "the id in the path must be a UUID")
}

/// The path's `{id}`, as text. A segment that is not UTF-8 once percent-decoded is refused as
/// any other id that is not a UUID, in the error format (axum's own rejection is plain text).
pub(crate) struct PathId(String);

impl<S: Send + Sync> FromRequestParts<S> for PathId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(id) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| not_a_uuid())?;
        Ok(PathId(id))
    }
}
