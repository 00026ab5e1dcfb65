//! Sales analytics: order facts for revenue, top products, the order funnel and delivery times,
//! in ClickHouse (distributed deployment) or in the embedded SQL read database (SQLite).
//!
//! # Facts
//!
//! Four fact tables per version, named `sales_analytics_v{N}_*` (DDL in
//! `projections/sql/analytics/`):
//! - `order_lines`: one row per line of a placed order, keyed by `(order_id, line_no)`;
//! - `order_status`: one row per order per status it reached (placed, confirmed, shipped,
//!   delivered, cancelled), keyed by `(order_id, status)`, with the order's total and currency;
//! - `cancellations`: one row per cancellation, with its reason code, keyed by
//!   `(order_id, position)`;
//! - `payments`: one row per event of a payment's stream (the payments service's `payment-{id}`,
//!   which names its order), keyed by `(payment_id, seq)` (the event's stream version), with
//!   its kind (authorized, captured, refunded, declined, voided) and amount.
//!
//! The place-order saga's own events (`saga-{order id}`) produce no facts: what the analytics
//! count of it is in the order and payment events it causes.
//!
//! Rows are a pure function of the event (see `facts`), so writing an event again writes the
//! same rows with the same keys. Times are the events' `occurred_at`, in microseconds since the
//! epoch (UTC), on both sinks.
//!
//! # Upgrading
//!
//! `prepare` creates the tables a version made before lacks (`cancellations`, `payments`:
//! `CREATE TABLE IF NOT EXISTS`), so the queries work on it at once; but it skipped the payment
//! events it applied before, so its revenue leaves out the orders paid before the upgrade, and
//! its cancellations before then are `unspecified`, until a rebuild (`projections rebuild
//! sales_analytics`) builds the next version from the logs.
//!
//! # Exactly-once effect
//!
//! - **ClickHouse** has no transactions. [`Projection::apply`] first inserts the batch's rows into
//!   `ReplacingMergeTree` tables whose sorting key is the natural key above, and only after the
//!   insert succeeded stores the checkpoints and dead letters in the control database (one SQL
//!   transaction). A crash in between replays the batch: the same rows are inserted again, merges
//!   collapse them, and every query reads through `FINAL`, which collapses the copies that are not
//!   merged yet. So a replay never double counts. (`FINAL` costs a merge at read time, single
//!   threaded on old servers; the tables are small facts, and correctness comes first.)
//! - **SQLite** (and any [`ReadDb`]): the rows (`INSERT ... ON CONFLICT DO NOTHING` on the same
//!   keys), the checkpoints and the dead letters are written in one transaction: either the batch
//!   and its checkpoint are stored, or neither; a replay of an applied event changes nothing.
//!
//! # Definitions the queries share (both sinks answer the same, to the unit)
//!
//! - Ranges are half-open, `[from, to)`, on the placement time, except
//!   [`SalesAnalytics::delivery_durations`], whose range is on the delivery time.
//! - **A payment's status** is that of its last event (by stream version): `authorized`,
//!   `captured`, `declined`, `voided`; after a refund, `refunded` once the refunds reach what was
//!   captured, `captured` while they are less (the payments service's own fold, and the
//!   dashboard's).
//! - **Revenue** of a set of orders: per currency (the order's, never mixed), the orders that
//!   were **confirmed**, are **not cancelled**, and have a payment whose status is
//!   **authorized or captured** (a partly refunded capture is captured); each counts its placed
//!   total (`total_minor`, which the write side computes as Σ quantity × unit price over the
//!   lines) **net of refunds**: minus the refunded amounts of those payments. A confirmed order
//!   without such a payment (none yet, declined, voided, refunded in full) is not revenue; an
//!   order that is cancelled (at any time, as far as the projection has read) leaves revenue at
//!   once, before its payment is voided or refunded. Buckets are UTC hours or days of the
//!   placement time, and `orders` counts the orders that made the bucket's revenue.
//! - **Top products**: the lines of the orders placed in the range that are not cancelled.
//! - **The funnel** of a placement cohort: how many of its orders reached each status, how many
//!   are still `pending` (neither confirmed nor cancelled), and the cancelled ones per reason
//!   code (an order's first cancellation's; a cancellation without a code, recorded before codes
//!   existed or before this version had the `cancellations` table, counts as `unspecified`, so
//!   the reasons always add up to `cancelled`).
//! - **Percentiles** (delivery durations): of the n durations sorted ascending, the p-quantile is
//!   the one at 0-based index ⌊p·n⌋ (p50: ⌊n/2⌋, the upper median; p90: ⌊9n/10⌋). This is exactly
//!   ClickHouse's `quantileExact`, and the SQL sink computes the same index.

mod clickhouse_sink;
mod facts;
mod sql_sink;

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tracing::instrument;

use crate::{Batch, Checkpoint, Projection, ProjectionError, ReadDb};

use self::clickhouse_sink::ClickHouseSink;
use self::sql_sink::SqlSink;

/// The projection's name: part of table names and checkpoints. Never rename it.
pub const NAME: &str = "sales_analytics";

/// The ClickHouse DDL of one version (`{prefix}` placeholder).
const CLICKHOUSE_DDL: &str = include_str!("../sql/analytics/clickhouse.sql");
/// The SQL read database DDL of one version (`{prefix}` placeholder).
const SQLITE_DDL: &str = include_str!("../sql/analytics/sqlite.sql");
/// Drops one version's tables, on either sink.
const DROP_DDL: &str = include_str!("../sql/analytics/drop.sql");

/// The sales analytics projection over one of its two sinks.
#[derive(Debug, Clone)]
pub struct SalesAnalytics {
    version: u32,
    tables: Tables,
    sink: Sink,
}

#[derive(Debug, Clone)]
enum Sink {
    /// Boxed: the ClickHouse client is much larger than a pool handle.
    ClickHouse(Box<ClickHouseSink>),
    Sql(SqlSink),
}

/// The names of one version's tables. Made from the version number only, so they are safe to
/// splice into SQL.
#[derive(Debug, Clone)]
struct Tables {
    prefix: String,
    lines: String,
    status: String,
    cancellations: String,
    payments: String,
}

impl Tables {
    fn new(version: u32) -> Self {
        let prefix = format!("{NAME}_v{version}_");
        Tables {
            lines: format!("{prefix}order_lines"),
            status: format!("{prefix}order_status"),
            cancellations: format!("{prefix}cancellations"),
            payments: format!("{prefix}payments"),
            prefix,
        }
    }

    /// The statements of a DDL file for this version: `{prefix}` replaced, comments dropped,
    /// split at `;` (ClickHouse takes one statement per request).
    fn statements(&self, ddl: &str) -> Vec<String> {
        let code: String = ddl
            .lines()
            .filter(|line| !line.trim_start().starts_with("--"))
            .collect::<Vec<_>>()
            .join("\n");
        code.split(';')
            .map(str::trim)
            .filter(|statement| !statement.is_empty())
            .map(|statement| statement.replace("{prefix}", &self.prefix))
            .collect()
    }
}

impl SalesAnalytics {
    /// The distributed deployment: facts in ClickHouse (the client's database), checkpoints and
    /// dead letters in the `control` SQL database (already migrated). The client's row
    /// validation is turned off here, whatever the caller set: it needs the
    /// `RowBinaryWithNamesAndTypes` format, which old servers (Debian's 18.16) do not know. The
    /// row types are checked against the real tables by `tests/analytics.rs` instead.
    pub fn clickhouse(client: clickhouse::Client, control: ReadDb, version: u32) -> Self {
        SalesAnalytics {
            version,
            tables: Tables::new(version),
            sink: Sink::ClickHouse(Box::new(ClickHouseSink::new(client.with_validation(false), control))),
        }
    }

    /// The embedded mode: facts, checkpoints and dead letters in one SQL read database
    /// (SQLite; the SQL is also valid PostgreSQL), the control tables already migrated.
    pub fn sqlite(db: ReadDb, version: u32) -> Self {
        SalesAnalytics {
            version,
            tables: Tables::new(version),
            sink: Sink::Sql(SqlSink::new(db)),
        }
    }

    /// Revenue and order count per UTC hour or day of placement, per currency, for orders placed
    /// in `[from, to)`: those confirmed, not cancelled, with an authorized or captured payment,
    /// each its total net of that payment's refunds (see the module doc); ordered by bucket,
    /// then currency. Empty buckets are left out.
    #[instrument(skip_all, fields(projection = NAME, version = self.version), err)]
    pub async fn revenue(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        bucket: Bucket,
    ) -> Result<Vec<RevenueBucket>, ProjectionError> {
        let range = Range::new(Some(from), Some(to));
        match &self.sink {
            Sink::ClickHouse(sink) => sink.revenue(&self.tables, range, bucket).await,
            Sink::Sql(sink) => sink.revenue(&self.tables, range, bucket).await,
        }
    }

    /// The `limit` products sold most (by quantity, then revenue, then product id) in orders
    /// placed in `[from, to)` and not cancelled. A product sold in several currencies has one
    /// row per currency. Sku and name are those of its latest sale in the range.
    #[instrument(skip_all, fields(projection = NAME, version = self.version), err)]
    pub async fn top_products(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<TopProduct>, ProjectionError> {
        let range = Range::new(Some(from), Some(to));
        match &self.sink {
            Sink::ClickHouse(sink) => sink.top_products(&self.tables, range, limit).await,
            Sink::Sql(sink) => sink.top_products(&self.tables, range, limit).await,
        }
    }

    /// Of the orders placed in `[from, to)` (unbounded on a side that is `None`), how many
    /// reached each status, how many are still pending, and the cancelled ones per reason code.
    #[instrument(skip_all, fields(projection = NAME, version = self.version), err)]
    pub async fn order_funnel(
        &self,
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
    ) -> Result<Funnel, ProjectionError> {
        let range = Range::new(from, to);
        let counts = match &self.sink {
            Sink::ClickHouse(sink) => sink.funnel_counts(&self.tables, range).await?,
            Sink::Sql(sink) => sink.funnel_counts(&self.tables, range).await?,
        };
        Ok(Funnel::from_counts(&counts))
    }

    /// How long orders delivered in `[from, to)` took from placement to delivery (see the
    /// module doc for the percentile definition).
    #[instrument(skip_all, fields(projection = NAME, version = self.version), err)]
    pub async fn delivery_durations(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Durations, ProjectionError> {
        let range = Range::new(Some(from), Some(to));
        match &self.sink {
            Sink::ClickHouse(sink) => sink.delivery_durations(&self.tables, range).await,
            Sink::Sql(sink) => sink.delivery_durations(&self.tables, range).await,
        }
    }
}

#[async_trait]
impl Projection for SalesAnalytics {
    fn name(&self) -> &'static str {
        NAME
    }

    fn version(&self) -> u32 {
        self.version
    }

    #[instrument(skip_all, fields(projection = NAME, version = self.version), err)]
    async fn prepare(&self) -> Result<(), ProjectionError> {
        match &self.sink {
            Sink::ClickHouse(sink) => sink.execute_all(&self.tables.statements(CLICKHOUSE_DDL)).await,
            Sink::Sql(sink) => sink.execute_all(&self.tables.statements(SQLITE_DDL)).await,
        }
    }

    /// Drops the fact tables. The version's checkpoints and dead letters stay in the control
    /// tables (which `control` owns): a dropped version is retired and never applied again.
    #[instrument(skip_all, fields(projection = NAME, version = self.version), err)]
    async fn drop_version(&self) -> Result<(), ProjectionError> {
        let statements = self.tables.statements(DROP_DDL);
        match &self.sink {
            Sink::ClickHouse(sink) => sink.execute_all(&statements).await,
            Sink::Sql(sink) => sink.execute_all(&statements).await,
        }
    }

    async fn checkpoints(&self) -> Result<Vec<Checkpoint>, ProjectionError> {
        let control = match &self.sink {
            Sink::ClickHouse(sink) => sink.control(),
            Sink::Sql(sink) => sink.db(),
        };
        control.checkpoints(NAME, self.version).await
    }

    #[instrument(skip_all, fields(projection = NAME, version = self.version, events = batch.events.len()), err)]
    async fn apply(&self, batch: &Batch) -> Result<(), ProjectionError> {
        match &self.sink {
            Sink::ClickHouse(sink) => sink.apply(&self.tables, self.version, batch).await,
            Sink::Sql(sink) => sink.apply(&self.tables, self.version, batch).await,
        }
    }

    async fn healthy(&self) -> bool {
        match &self.sink {
            Sink::ClickHouse(sink) => sink.healthy().await,
            Sink::Sql(sink) => sink.healthy().await,
        }
    }
}

/// The width of a revenue bucket (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Bucket {
    Hour,
    Day,
}

impl Bucket {
    /// The bucket's width in microseconds: buckets start at multiples of it since the epoch.
    const fn micros(self) -> i64 {
        match self {
            Bucket::Hour => 3_600_000_000,
            Bucket::Day => 86_400_000_000,
        }
    }
}

/// Revenue of one bucket in one currency.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RevenueBucket {
    pub bucket_start: DateTime<Utc>,
    pub currency: String,
    /// Σ of the revenue orders' totals net of their payments' refunds, in minor units of
    /// `currency`.
    pub revenue_minor: i64,
    /// How many orders placed in the bucket are revenue (confirmed, not cancelled, with an
    /// authorized or captured payment).
    pub orders: u64,
}

/// A product's sales in one currency.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TopProduct {
    pub product_id: String,
    pub sku: String,
    pub name: String,
    /// Units sold.
    pub quantity: i64,
    /// Σ quantity × unit price, in minor units of `currency`.
    pub revenue_minor: i64,
    pub currency: String,
}

/// The key of [`Funnel::cancellation_reasons`] for cancellations without a reason code.
pub const UNSPECIFIED_REASON: &str = "unspecified";

/// How many orders of a placement cohort reached each status.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Funnel {
    /// Every order of the cohort.
    pub placed: u64,
    /// Still pending: neither confirmed nor cancelled (yet).
    pub pending: u64,
    pub confirmed: u64,
    pub shipped: u64,
    pub delivered: u64,
    pub cancelled: u64,
    /// The cancelled orders per reason code: every code of [`crate::REASON_CODES`] (0 when
    /// none), any other code met, and [`UNSPECIFIED_REASON`] for those without one. They add up
    /// to `cancelled`.
    pub cancellation_reasons: BTreeMap<String, u64>,
    /// `delivered / placed`, 0 when nothing was placed.
    pub placed_to_delivered_conversion: f64,
}

/// What a sink counts for a [`Funnel`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct FunnelCounts {
    /// Orders of the cohort per status reached.
    statuses: Vec<(String, u64)>,
    /// Orders of the cohort neither confirmed nor cancelled.
    pending: u64,
    /// Cancelled orders of the cohort per reason code of their first cancellation (empty: none).
    reasons: Vec<(String, u64)>,
}

impl Funnel {
    fn from_counts(counts: &FunnelCounts) -> Self {
        let count = |status: facts::Status| {
            counts
                .statuses
                .iter()
                .filter(|(name, _)| name == status.as_str())
                .map(|(_, n)| *n)
                .sum::<u64>()
        };
        let placed = count(facts::Status::Placed);
        let delivered = count(facts::Status::Delivered);
        let cancelled = count(facts::Status::Cancelled);
        let mut reasons: BTreeMap<String, u64> = crate::REASON_CODES
            .iter()
            .chain([&UNSPECIFIED_REASON])
            .map(|code| ((*code).to_owned(), 0))
            .collect();
        let mut coded = 0;
        for (code, n) in counts.reasons.iter().filter(|(code, _)| !code.is_empty()) {
            *reasons.entry(code.clone()).or_default() += n;
            coded += n;
        }
        // Without a code, or without a cancellation row (a version upgraded in place).
        reasons.insert(UNSPECIFIED_REASON.to_owned(), cancelled.saturating_sub(coded));
        Funnel {
            placed,
            pending: counts.pending,
            confirmed: count(facts::Status::Confirmed),
            shipped: count(facts::Status::Shipped),
            delivered,
            cancelled,
            cancellation_reasons: reasons,
            // Counts are far below 2^53: the conversion to f64 is exact.
            placed_to_delivered_conversion: if placed == 0 {
                0.0
            } else {
                delivered as f64 / placed as f64
            },
        }
    }
}

/// Placement-to-delivery durations of the orders delivered in a range.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Durations {
    pub count: u64,
    /// `None` when no order was delivered in the range.
    pub p50_seconds: Option<f64>,
    pub p90_seconds: Option<f64>,
}

impl Durations {
    /// From the count and the two percentiles in microseconds.
    fn new(count: u64, p50_us: Option<i64>, p90_us: Option<i64>) -> Self {
        let seconds = |us: i64| {
            // Durations are far below 2^53 µs (285 years): the conversion is exact.
            let us = us as f64;
            us / 1e6
        };
        if count == 0 {
            return Durations {
                count,
                p50_seconds: None,
                p90_seconds: None,
            };
        }
        Durations {
            count,
            p50_seconds: p50_us.map(seconds),
            p90_seconds: p90_us.map(seconds),
        }
    }

    /// The 0-based indexes of p50 and p90 among `count` sorted values (see the module doc).
    const fn percentile_indexes(count: u64) -> (u64, u64) {
        (count / 2, count.saturating_mul(9) / 10)
    }
}

/// A half-open range of times in microseconds since the epoch; `None` is unbounded.
#[derive(Debug, Clone, Copy)]
struct Range {
    from_us: Option<i64>,
    to_us: Option<i64>,
}

impl Range {
    fn new(from: Option<DateTime<Utc>>, to: Option<DateTime<Utc>>) -> Self {
        Range {
            from_us: from.map(crate::micros),
            to_us: to.map(crate::micros),
        }
    }

    /// Both bounds, for queries whose public API always bounds both sides.
    fn bounds(self) -> (i64, i64) {
        (self.from_us.unwrap_or(i64::MIN), self.to_us.unwrap_or(i64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ddl_files_split_into_prefixed_statements() {
        let tables = Tables::new(3);
        let statements = tables.statements(CLICKHOUSE_DDL);
        assert_eq!(statements.len(), 4);
        assert!(statements[0].starts_with("CREATE TABLE IF NOT EXISTS sales_analytics_v3_order_lines ("));
        assert!(statements.iter().all(|s| !s.contains("{prefix}") && !s.contains("--")));
        assert_eq!(tables.statements(SQLITE_DDL).len(), 7);
        assert_eq!(
            tables.statements(DROP_DDL),
            vec![
                "DROP TABLE IF EXISTS sales_analytics_v3_order_lines",
                "DROP TABLE IF EXISTS sales_analytics_v3_order_status",
                "DROP TABLE IF EXISTS sales_analytics_v3_cancellations",
                "DROP TABLE IF EXISTS sales_analytics_v3_payments",
            ]
        );
    }

    #[test]
    fn percentiles_are_the_floor_index_of_quantile_exact() {
        assert_eq!(Durations::percentile_indexes(1), (0, 0));
        assert_eq!(Durations::percentile_indexes(4), (2, 3));
        assert_eq!(Durations::percentile_indexes(10), (5, 9));
        assert_eq!(Durations::percentile_indexes(11), (5, 9));
    }

    #[test]
    fn funnel_conversion() {
        let funnel = Funnel::from_counts(&FunnelCounts {
            statuses: vec![("placed".to_owned(), 4), ("delivered".to_owned(), 1)],
            ..FunnelCounts::default()
        });
        assert_eq!(funnel.placed_to_delivered_conversion, 0.25);
        assert_eq!(
            Funnel::from_counts(&FunnelCounts::default()).placed_to_delivered_conversion,
            0.0
        );
    }

    #[test]
    fn funnel_reasons_list_every_code_and_add_up_to_the_cancellations() {
        let funnel = Funnel::from_counts(&FunnelCounts {
            statuses: vec![("placed".to_owned(), 9), ("cancelled".to_owned(), 6)],
            pending: 2,
            reasons: vec![
                ("out_of_stock".to_owned(), 2),
                ("".to_owned(), 1),
                ("lost_in_space".to_owned(), 1),
            ],
        });
        assert_eq!((funnel.placed, funnel.pending, funnel.cancelled), (9, 2, 6));
        let reasons: Vec<(&str, u64)> = funnel
            .cancellation_reasons
            .iter()
            .map(|(code, n)| (code.as_str(), *n))
            .collect();
        assert_eq!(
            reasons,
            vec![
                ("abandoned", 0),
                ("lost_in_space", 1),
                ("out_of_stock", 2),
                ("payment_declined", 0),
                ("payment_unavailable", 0),
                ("requested", 0),
                ("timed_out", 0),
                // The one without a code, and the two without a cancellation row.
                ("unspecified", 3),
            ]
        );
        assert_eq!(funnel.cancellation_reasons.values().sum::<u64>(), funnel.cancelled);
    }
}
