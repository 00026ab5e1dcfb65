//! The OpenAPI schemas of the analytics answers that changed with the place-order saga: revenue
//! and the funnel. They only document (the handlers answer their own types); a test checks
//! that they name exactly the fields those types serialize.

#![allow(dead_code)] // Read by the OpenAPI derive only.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

/// Revenue per bucket of placement time, per currency (never mixed). An order is revenue when
/// it was confirmed, is not cancelled, and has a payment that is authorized or captured (a
/// partly refunded capture is still captured); it counts its total net of that payment's
/// refunds. A confirmed order without such a payment (none yet, declined, voided, refunded in
/// full) is not revenue; a cancelled one leaves revenue at once. Money is integer minor units.
#[derive(Serialize, ToSchema)]
pub(crate) struct AnalyticsRevenue {
    /// The range's start, inclusive (placement time).
    pub(crate) from: DateTime<Utc>,
    /// The range's end, exclusive.
    pub(crate) to: DateTime<Utc>,
    /// `hour` or `day` (UTC).
    pub(crate) bucket: String,
    /// The buckets with revenue, by start then currency; empty buckets are left out.
    pub(crate) buckets: Vec<AnalyticsRevenueBucket>,
}

/// The revenue of one bucket in one currency.
#[derive(Serialize, ToSchema)]
pub(crate) struct AnalyticsRevenueBucket {
    /// The start of the hour or day (UTC) the orders were placed in.
    pub(crate) bucket_start: DateTime<Utc>,
    /// ISO 4217 code of the orders.
    pub(crate) currency: String,
    /// The revenue orders' totals minus their payments' refunds, in minor units of `currency`.
    pub(crate) revenue_minor: i64,
    /// How many orders placed in the bucket are revenue.
    pub(crate) orders: u64,
}

/// Of the orders placed in the range (all of them without one): how many reached each status,
/// how many are still pending, and the cancelled ones per reason code.
#[derive(Serialize, ToSchema)]
pub(crate) struct AnalyticsFunnel {
    /// Every order placed in the range.
    pub(crate) placed: u64,
    /// Still pending: neither confirmed nor cancelled (its saga is reserving, authorizing or
    /// confirming).
    pub(crate) pending: u64,
    /// Confirmed at some point (cancelled later or not).
    pub(crate) confirmed: u64,
    pub(crate) shipped: u64,
    pub(crate) delivered: u64,
    pub(crate) cancelled: u64,
    /// The cancelled orders per reason code of their cancellation: `requested`, `out_of_stock`,
    /// `payment_declined`, `payment_unavailable`, `timed_out`, `abandoned` (always there, 0
    /// when none), any other code met, and `unspecified` for cancellations recorded without a
    /// code (before the saga). They add up to `cancelled`.
    pub(crate) cancellation_reasons: BTreeMap<String, u64>,
    /// `delivered / placed`; 0 when nothing was placed.
    pub(crate) placed_to_delivered_conversion: f64,
}
