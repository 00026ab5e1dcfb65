//! `/v1/analytics/...`: the `sales_analytics` projection (ClickHouse, or SQLite embedded).
//! Ranges are half-open `[from, to)` on the placement time (delivery time for durations);
//! without them, the last 30 days.

use axum::Json;
use axum::extract::{RawQuery, State};
use chrono::{DateTime, Duration, Utc};
use projections::analytics::{self, Bucket, Durations, Funnel, RevenueBucket, TopProduct};
use serde::Serialize;

use crate::consistency::read;
use crate::params::Params;
use crate::{ApiError, ReadState};

#[derive(Debug, Serialize)]
pub(crate) struct Revenue {
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    bucket: &'static str,
    buckets: Vec<RevenueBucket>,
}

#[derive(Debug, Serialize)]
pub(crate) struct TopProducts {
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    products: Vec<TopProduct>,
}

/// `from` and `to`, defaulting to the 30 days up to now; `from` must come before `to`.
fn range(params: &Params) -> Result<(DateTime<Utc>, DateTime<Utc>), ApiError> {
    let to = params.time("to")?.unwrap_or_else(Utc::now);
    let from = params.time("from")?.unwrap_or(to - Duration::days(30));
    if from >= to {
        return Err(ApiError::bad_parameter("from", "from must be before to"));
    }
    Ok((from, to))
}

/// Revenue per hour or day of placement, per currency; cancelled orders leave it.
#[utoipa::path(get, path = "/v1/analytics/revenue", tag = "analytics",
    params(("from" = Option<String>, Query, description = "RFC 3339, inclusive (default: to - 30 days)"),
        ("to" = Option<String>, Query, description = "RFC 3339, exclusive (default: now)"),
        ("bucket" = Option<String>, Query, description = "hour | day (default)"),
        ("min_position" = Option<u64>, Query, description = "wait until this position is applied")),
    responses((status = 200, description = "revenue buckets", body = Object),
              (status = 400, description = "bad parameter", body = service_kit::http::ErrorBody)))]
pub(crate) async fn revenue(
    State(state): State<ReadState>,
    RawQuery(query): RawQuery,
) -> Result<Json<Revenue>, ApiError> {
    let params = Params::parse(query.as_deref(), &["from", "to", "bucket", "min_position"])?;
    let (from, to) = range(&params)?;
    let (label, bucket) = params
        .choice(
            "bucket",
            &[("hour", ("hour", Bucket::Hour)), ("day", ("day", Bucket::Day))],
        )?
        .unwrap_or(("day", Bucket::Day));
    let buckets = read(&state, analytics::NAME, params.min_position()?, |version| {
        let state = &state;
        async move { Ok(state.analytics(version).revenue(from, to, bucket).await?) }
    })
    .await?;
    Ok(Json(Revenue {
        from,
        to,
        bucket: label,
        buckets,
    }))
}

/// The products sold most (by quantity) in the range; cancelled orders excluded.
#[utoipa::path(get, path = "/v1/analytics/top-products", tag = "analytics",
    params(("from" = Option<String>, Query, description = "RFC 3339, inclusive"),
        ("to" = Option<String>, Query, description = "RFC 3339, exclusive"),
        ("limit" = Option<u32>, Query, description = "1..=100, default 10"),
        ("min_position" = Option<u64>, Query, description = "wait until this position is applied")),
    responses((status = 200, description = "top products", body = Object)))]
pub(crate) async fn top_products(
    State(state): State<ReadState>,
    RawQuery(query): RawQuery,
) -> Result<Json<TopProducts>, ApiError> {
    let params = Params::parse(query.as_deref(), &["from", "to", "limit", "min_position"])?;
    let (from, to) = range(&params)?;
    let limit = params.integer("limit", 1, 100)?.unwrap_or(10) as u32;
    let products = read(&state, analytics::NAME, params.min_position()?, |version| {
        let state = &state;
        async move { Ok(state.analytics(version).top_products(from, to, limit).await?) }
    })
    .await?;
    Ok(Json(TopProducts { from, to, products }))
}

/// How many of the orders placed in the range (all time without one) reached each status, and
/// the share delivered.
#[utoipa::path(get, path = "/v1/analytics/order-funnel", tag = "analytics",
    params(("from" = Option<String>, Query, description = "RFC 3339, inclusive"),
        ("to" = Option<String>, Query, description = "RFC 3339, exclusive"),
        ("min_position" = Option<u64>, Query, description = "wait until this position is applied")),
    responses((status = 200, description = "the funnel", body = Object)))]
pub(crate) async fn order_funnel(
    State(state): State<ReadState>,
    RawQuery(query): RawQuery,
) -> Result<Json<Funnel>, ApiError> {
    let params = Params::parse(query.as_deref(), &["from", "to", "min_position"])?;
    let (from, to) = (params.time("from")?, params.time("to")?);
    if let (Some(from), Some(to)) = (from, to)
        && from >= to
    {
        return Err(ApiError::bad_parameter("from", "from must be before to"));
    }
    let funnel = read(&state, analytics::NAME, params.min_position()?, |version| {
        let state = &state;
        async move { Ok(state.analytics(version).order_funnel(from, to).await?) }
    })
    .await?;
    Ok(Json(funnel))
}

/// Placed → delivered durations (p50, p90) of the orders delivered in the range.
#[utoipa::path(get, path = "/v1/analytics/delivery-durations", tag = "analytics",
    params(("from" = Option<String>, Query, description = "RFC 3339, inclusive"),
        ("to" = Option<String>, Query, description = "RFC 3339, exclusive"),
        ("min_position" = Option<u64>, Query, description = "wait until this position is applied")),
    responses((status = 200, description = "durations", body = Object)))]
pub(crate) async fn delivery_durations(
    State(state): State<ReadState>,
    RawQuery(query): RawQuery,
) -> Result<Json<Durations>, ApiError> {
    let params = Params::parse(query.as_deref(), &["from", "to", "min_position"])?;
    let (from, to) = range(&params)?;
    let durations = read(&state, analytics::NAME, params.min_position()?, |version| {
        let state = &state;
        async move { Ok(state.analytics(version).delivery_durations(from, to).await?) }
    })
    .await?;
    Ok(Json(durations))
}
