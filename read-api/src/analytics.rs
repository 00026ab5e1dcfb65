//! `/v1/analytics/...`: the `sales_analytics` projection (ClickHouse, or SQLite embedded).
//! Ranges are half-open `[from, to)` on the placement time (delivery time for durations);
//! without them, the last 30 days. What revenue and the funnel count is in
//! [`projections::analytics`]'s module doc, and in the OpenAPI schemas (`schema`).

mod schema;

use axum::Json;
use axum::extract::{RawQuery, State};
use chrono::{DateTime, Duration, Utc};
use projections::analytics::{self, Bucket, Durations, Funnel, RevenueBucket, TopProduct};
use serde::Serialize;
use utoipa::IntoParams;
use utoipa::openapi::path::{Parameter, ParameterIn};

use crate::consistency::read;
use crate::params::{Params, doc};
use crate::{ApiError, ReadState};

const BUCKETS: &[(&str, (&str, Bucket))] = &[("hour", ("hour", Bucket::Hour)), ("day", ("day", Bucket::Day))];

/// The largest and default `limit` of top products.
const MAX_TOP_PRODUCTS: u64 = 100;
const DEFAULT_TOP_PRODUCTS: u64 = 10;

/// `from`, `to` and `min_position`; with `bucket` for revenue, `limit` for top products.
fn range_params(from: &str, to: &str) -> Vec<Parameter> {
    vec![
        doc::time("from", from),
        doc::time("to", to),
        doc::min_position(),
        doc::correlation_id(),
    ]
}

/// The query parameters of [`revenue`].
pub(crate) struct RevenueParams;

impl IntoParams for RevenueParams {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        let mut params = range_params(
            "The range's start, inclusive (default: `to` - 30 days; 400 unless before `to`)",
            "The range's end, exclusive (default: now)",
        );
        params.push(doc::choice(
            "bucket",
            BUCKETS.iter().map(|(label, _)| *label),
            "`hour` or `day` (UTC; default `day`).",
        ));
        params
    }
}

/// The query parameters of [`top_products`].
pub(crate) struct TopProductsParams;

impl IntoParams for TopProductsParams {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        let mut params = range_params(
            "The range's start, inclusive (default: `to` - 30 days; 400 unless before `to`)",
            "The range's end, exclusive (default: now)",
        );
        params.push(doc::limit(MAX_TOP_PRODUCTS, DEFAULT_TOP_PRODUCTS));
        params
    }
}

/// The query parameters of [`order_funnel`].
pub(crate) struct FunnelParams;

impl IntoParams for FunnelParams {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        range_params(
            "The range's start, inclusive (default: unbounded; 400 unless before `to`)",
            "The range's end, exclusive (default: unbounded)",
        )
    }
}

/// The query parameters of [`delivery_durations`].
pub(crate) struct DurationsParams;

impl IntoParams for DurationsParams {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        range_params(
            "The range's start, inclusive, on the delivery time (default: `to` - 30 days; 400 unless before `to`)",
            "The range's end, exclusive (default: now)",
        )
    }
}

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

/// The earliest and latest instants an answer shows: years 0000 to 9999 in UTC, what RFC 3339
/// (and the `date-time` the document declares for `from` and `to`) can write.
fn representable(time: DateTime<Utc>) -> DateTime<Utc> {
    let first = DateTime::parse_from_rfc3339("0000-01-01T00:00:00Z").map(|t| t.to_utc());
    let last = DateTime::parse_from_rfc3339("9999-12-31T23:59:59.999999999Z").map(|t| t.to_utc());
    match (first, last) {
        (Ok(first), Ok(last)) => time.clamp(first, last),
        _ => time,
    }
}

/// `from` and `to`, defaulting to the 30 days up to now; `from` must come before `to`. A time
/// whose UTC form falls outside the years 0000 to 9999 (`9999-12-31T23:00:00-05:00`) is taken
/// as the nearest one inside, so that the answer can show the range as RFC 3339.
///
/// Without `to`, a `from` in the future is an empty range (nothing has happened since), not an
/// error: only a range the client wrote backwards is refused.
fn range(params: &Params) -> Result<(DateTime<Utc>, DateTime<Utc>), ApiError> {
    let given_to = params.time("to")?;
    let to = representable(given_to.unwrap_or_else(Utc::now));
    let from = representable(params.time("from")?.unwrap_or(to - Duration::days(30)));
    if from >= to {
        if given_to.is_none() {
            return Ok((from, from));
        }
        return Err(ApiError::conflicting_parameters(
            &["from", "to"],
            "from must be before to",
        ));
    }
    Ok((from, to))
}

/// Revenue per hour or day of placement, per currency: the orders confirmed, not cancelled,
/// with an authorized or captured payment, each its total net of refunds (see the
/// `AnalyticsRevenue` schema).
#[utoipa::path(get, path = "/v1/analytics/revenue", tag = "analytics", operation_id = "analytics_revenue",
    params(RevenueParams),
    responses((status = 200, description = "revenue buckets", body = schema::AnalyticsRevenue),
              crate::params::doc::QueryErrors))]
pub(crate) async fn revenue(
    State(state): State<ReadState>,
    RawQuery(query): RawQuery,
) -> Result<Json<Revenue>, ApiError> {
    let params = Params::parse(query.as_deref(), &["from", "to", "bucket", "min_position"])?;
    let (from, to) = range(&params)?;
    let (label, bucket) = params.choice("bucket", BUCKETS)?.unwrap_or(("day", Bucket::Day));
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
#[utoipa::path(get, path = "/v1/analytics/top-products", tag = "analytics", operation_id = "analytics_top_products",
    params(TopProductsParams),
    responses((status = 200, description = "top products", body = Object),
              crate::params::doc::QueryErrors))]
pub(crate) async fn top_products(
    State(state): State<ReadState>,
    RawQuery(query): RawQuery,
) -> Result<Json<TopProducts>, ApiError> {
    let params = Params::parse(query.as_deref(), &["from", "to", "limit", "min_position"])?;
    let (from, to) = range(&params)?;
    let limit = params
        .integer("limit", 1, MAX_TOP_PRODUCTS)?
        .unwrap_or(DEFAULT_TOP_PRODUCTS) as u32;
    let products = read(&state, analytics::NAME, params.min_position()?, |version| {
        let state = &state;
        async move { Ok(state.analytics(version).top_products(from, to, limit).await?) }
    })
    .await?;
    Ok(Json(TopProducts { from, to, products }))
}

/// How many of the orders placed in the range (all time without one) reached each status, how
/// many are still pending, the cancelled ones per reason code, and the share delivered (see
/// the `AnalyticsFunnel` schema).
#[utoipa::path(get, path = "/v1/analytics/order-funnel", tag = "analytics", operation_id = "analytics_order_funnel",
    params(FunnelParams),
    responses((status = 200, description = "the funnel", body = schema::AnalyticsFunnel),
              crate::params::doc::QueryErrors))]
pub(crate) async fn order_funnel(
    State(state): State<ReadState>,
    RawQuery(query): RawQuery,
) -> Result<Json<Funnel>, ApiError> {
    let params = Params::parse(query.as_deref(), &["from", "to", "min_position"])?;
    let (from, to) = (params.time("from")?, params.time("to")?);
    if let (Some(from), Some(to)) = (from, to)
        && from >= to
    {
        return Err(ApiError::conflicting_parameters(
            &["from", "to"],
            "from must be before to",
        ));
    }
    let funnel = read(&state, analytics::NAME, params.min_position()?, |version| {
        let state = &state;
        async move { Ok(state.analytics(version).order_funnel(from, to).await?) }
    })
    .await?;
    Ok(Json(funnel))
}

/// Placed → delivered durations (p50, p90) of the orders delivered in the range.
#[utoipa::path(get, path = "/v1/analytics/delivery-durations", tag = "analytics", operation_id = "analytics_delivery_durations",
    params(DurationsParams),
    responses((status = 200, description = "durations", body = Object),
              crate::params::doc::QueryErrors))]
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeSet;

    use utoipa::OpenApi as _;

    use super::*;

    fn keys(value: &serde_json::Value) -> BTreeSet<String> {
        value.as_object().unwrap().keys().cloned().collect()
    }

    /// The documented schemas name exactly what the handlers serialize, and the endpoints
    /// answer with them.
    #[test]
    fn the_schemas_document_the_answers_exactly() {
        let document = serde_json::to_value(crate::ops::ApiDoc::openapi()).unwrap();
        let schemas = &document["components"]["schemas"];
        let bucket = RevenueBucket {
            bucket_start: DateTime::UNIX_EPOCH,
            currency: "EUR".to_owned(),
            revenue_minor: 1,
            orders: 1,
        };
        let revenue = serde_json::to_value(Revenue {
            from: DateTime::UNIX_EPOCH,
            to: DateTime::UNIX_EPOCH,
            bucket: "day",
            buckets: vec![bucket.clone()],
        })
        .unwrap();
        assert_eq!(keys(&schemas["AnalyticsRevenue"]["properties"]), keys(&revenue));
        assert_eq!(
            keys(&schemas["AnalyticsRevenueBucket"]["properties"]),
            keys(&serde_json::to_value(bucket).unwrap())
        );
        let funnel = serde_json::to_value(Funnel {
            placed: 0,
            pending: 0,
            confirmed: 0,
            shipped: 0,
            delivered: 0,
            cancelled: 0,
            cancellation_reasons: std::collections::BTreeMap::new(),
            placed_to_delivered_conversion: 0.0,
        })
        .unwrap();
        assert_eq!(keys(&schemas["AnalyticsFunnel"]["properties"]), keys(&funnel));
        for (path, schema) in [
            ("/v1/analytics/revenue", "AnalyticsRevenue"),
            ("/v1/analytics/order-funnel", "AnalyticsFunnel"),
        ] {
            let reference =
                &document["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]["$ref"];
            assert_eq!(reference, &format!("#/components/schemas/{schema}"), "{path}");
        }
        for (schema, field) in [
            ("AnalyticsFunnel", "pending"),
            ("AnalyticsFunnel", "cancellation_reasons"),
            ("AnalyticsRevenueBucket", "revenue_minor"),
        ] {
            assert!(
                schemas[schema]["properties"][field]["description"]
                    .as_str()
                    .is_some_and(|d| !d.is_empty()),
                "{schema}.{field}"
            );
        }
    }
}
