//! The ClickHouse sink: facts in `ReplacingMergeTree` tables; checkpoints and dead letters in
//! the control SQL database, written after the insert succeeded.
//!
//! Reads never use `FINAL`. A replayed insert writes the very same row again, so until a merge
//! the table may hold identical copies of a fact, and every query is written to count each fact
//! once whatever the copies: sums read a `LIMIT 1 BY <key>` subquery, counts are `uniqExact`
//! of the order (or `count()` over rows made unique), and `IN`/`NOT IN` sets, `maxIf`,
//! `argMax` and `argMin` ignore repeats. `FINAL` gave the same
//! answers but merges on the fly in one thread, and on 18.16 scans the whole table: `bench
//! reads` saw revenue by day take seconds per request.
//!
//! Inserts use the client's `RowBinary` insert (validation off), which Debian's 18.16 server
//! accepts as well as current ones. Query results are read as `RowBinary` too, which is
//! positional and untyped on the wire: every selected expression is wrapped in an explicit
//! conversion (`toInt64`, `toUInt64`, `toString`) so that the types the structs below decode
//! do not depend on the server version's type inference.
//!
//! Query values are bound with the client's `?` binding (escaped by the client; old servers
//! lack server-side `{name:Type}` parameters); table names come from the version number only.

use std::collections::HashMap;
use std::time::Duration;

use clickhouse::Client;

use super::facts::{CancellationFact, Facts, LineFact, PaymentFact, StatusFact};
use super::{Bucket, Durations, FunnelCounts, NAME, Range, RevenueBucket, Tables, TopProduct};
use crate::{Batch, ProjectionError, ReadDb, from_micros, save_checkpoints, save_dead_letters};

/// How long [`ClickHouseSink::healthy`] waits for each `SELECT 1`.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub(super) struct ClickHouseSink {
    client: Client,
    /// Where the checkpoints and dead letters go: ClickHouse cannot store them atomically.
    control: ReadDb,
}

#[derive(clickhouse::Row, serde::Serialize)]
struct LineRow<'a> {
    order_id: &'a str,
    line_no: u32,
    product_id: &'a str,
    sku: &'a str,
    name: &'a str,
    quantity: i64,
    unit_price_minor: i64,
    amount_minor: i64,
    currency: &'a str,
    placed_at: u32,
    placed_at_us: i64,
    position: u64,
    event_id: &'a str,
}

impl<'a> LineRow<'a> {
    fn new(line: &'a LineFact) -> Self {
        LineRow {
            order_id: &line.order_id,
            line_no: line.line_no,
            product_id: &line.product_id,
            sku: &line.sku,
            name: &line.name,
            quantity: line.quantity,
            unit_price_minor: line.unit_price_minor,
            amount_minor: line.amount_minor,
            currency: &line.currency,
            placed_at: datetime(line.placed_at_us),
            placed_at_us: line.placed_at_us,
            position: line.position,
            event_id: &line.event_id,
        }
    }
}

#[derive(clickhouse::Row, serde::Serialize)]
struct StatusRow<'a> {
    order_id: &'a str,
    status: &'a str,
    at: u32,
    at_us: i64,
    position: u64,
    total_minor: i64,
    currency: &'a str,
    event_id: &'a str,
}

impl<'a> StatusRow<'a> {
    fn new(status: &'a StatusFact) -> Self {
        StatusRow {
            order_id: &status.order_id,
            status: status.status.as_str(),
            at: datetime(status.at_us),
            at_us: status.at_us,
            position: status.position,
            total_minor: status.total_minor,
            currency: &status.currency,
            event_id: &status.event_id,
        }
    }
}

#[derive(clickhouse::Row, serde::Serialize)]
struct CancellationRow<'a> {
    order_id: &'a str,
    reason_code: &'a str,
    at: u32,
    at_us: i64,
    position: u64,
    event_id: &'a str,
}

impl<'a> CancellationRow<'a> {
    fn new(fact: &'a CancellationFact) -> Self {
        CancellationRow {
            order_id: &fact.order_id,
            reason_code: &fact.reason_code,
            at: datetime(fact.at_us),
            at_us: fact.at_us,
            position: fact.position,
            event_id: &fact.event_id,
        }
    }
}

#[derive(clickhouse::Row, serde::Serialize)]
struct PaymentRow<'a> {
    payment_id: &'a str,
    seq: u64,
    order_id: &'a str,
    kind: &'a str,
    amount_minor: i64,
    currency: &'a str,
    at: u32,
    at_us: i64,
    position: u64,
    event_id: &'a str,
}

impl<'a> PaymentRow<'a> {
    fn new(fact: &'a PaymentFact) -> Self {
        PaymentRow {
            payment_id: &fact.payment_id,
            seq: fact.seq,
            order_id: &fact.order_id,
            kind: fact.kind.as_str(),
            amount_minor: fact.amount_minor,
            currency: &fact.currency,
            at: datetime(fact.at_us),
            at_us: fact.at_us,
            position: fact.position,
            event_id: &fact.event_id,
        }
    }
}

/// A ClickHouse `DateTime` (seconds since the epoch, `UInt32`), clamped to its range.
fn datetime(micros: i64) -> u32 {
    u32::try_from(micros.div_euclid(1_000_000).max(0)).unwrap_or(u32::MAX)
}

#[derive(clickhouse::Row, serde::Deserialize)]
struct PlacedTotal {
    order_id: String,
    total_minor: i64,
    currency: String,
}

#[derive(clickhouse::Row, serde::Deserialize)]
struct RevenueRow {
    bucket_us: i64,
    currency: String,
    revenue_minor: i64,
    orders: u64,
}

#[derive(clickhouse::Row, serde::Deserialize)]
struct TopProductRow {
    product_id: String,
    sku: String,
    name: String,
    quantity: i64,
    revenue_minor: i64,
    currency: String,
}

#[derive(clickhouse::Row, serde::Deserialize)]
struct StatusCount {
    status: String,
    orders: u64,
}

#[derive(clickhouse::Row, serde::Deserialize)]
struct DurationsRow {
    count: u64,
    p50_us: i64,
    p90_us: i64,
}

impl ClickHouseSink {
    pub(super) fn new(client: Client, control: ReadDb) -> Self {
        ClickHouseSink { client, control }
    }

    pub(super) fn control(&self) -> &ReadDb {
        &self.control
    }

    pub(super) async fn execute_all(&self, statements: &[String]) -> Result<(), ProjectionError> {
        for statement in statements {
            self.client.query_raw(statement).execute().await?;
        }
        Ok(())
    }

    pub(super) async fn healthy(&self) -> bool {
        let clickhouse = tokio::time::timeout(HEALTH_TIMEOUT, self.client.query_raw("SELECT 1").fetch_one::<u8>());
        let control = tokio::time::timeout(HEALTH_TIMEOUT, sqlx::query("SELECT 1").execute(self.control.pool()));
        matches!(clickhouse.await, Ok(Ok(1))) && matches!(control.await, Ok(Ok(_)))
    }

    /// Inserts the batch's facts, then stores its checkpoints and dead letters (see the module
    /// doc of `analytics` for why this order gives an exactly-once effect).
    pub(super) async fn apply(&self, tables: &Tables, version: u32, batch: &Batch) -> Result<(), ProjectionError> {
        let mut facts = Facts::of(batch);
        let missing = facts.orders_to_look_up();
        if !missing.is_empty() {
            let placed = self
                .client
                // `IN (subquery)` lets the sorting key (order_id, status) narrow the read to
                // the orders asked for; `has(array, order_id)` scanned the whole table, which
                // made every batch slower than the one before (measured by `bench rebuild`).
                // No FINAL: unmerged copies of a row are identical, the map below keeps one.
                .query(&format!(
                    "SELECT toString(order_id), toInt64(total_minor), toString(currency)
                       FROM {status}
                      WHERE order_id IN (SELECT arrayJoin(?)) AND status = 'placed'",
                    status = tables.status
                ))
                .bind(missing.into_iter().collect::<Vec<_>>())
                .fetch_all::<PlacedTotal>()
                .await?;
            let placed: HashMap<String, (i64, String)> = placed
                .into_iter()
                .map(|row| (row.order_id, (row.total_minor, row.currency)))
                .collect();
            facts.fill_totals(&placed);
        }

        if !facts.lines.is_empty() {
            let mut insert = self.client.insert::<LineRow<'_>>(&tables.lines).await?;
            for line in &facts.lines {
                insert.write(&LineRow::new(line)).await?;
            }
            insert.end().await?;
        }
        if !facts.statuses.is_empty() {
            let mut insert = self.client.insert::<StatusRow<'_>>(&tables.status).await?;
            for status in &facts.statuses {
                insert.write(&StatusRow::new(status)).await?;
            }
            insert.end().await?;
        }
        if !facts.cancellations.is_empty() {
            let mut insert = self.client.insert::<CancellationRow<'_>>(&tables.cancellations).await?;
            for cancellation in &facts.cancellations {
                insert.write(&CancellationRow::new(cancellation)).await?;
            }
            insert.end().await?;
        }
        if !facts.payments.is_empty() {
            let mut insert = self.client.insert::<PaymentRow<'_>>(&tables.payments).await?;
            for payment in &facts.payments {
                insert.write(&PaymentRow::new(payment)).await?;
            }
            insert.end().await?;
        }

        // Only now that ClickHouse holds the rows may the checkpoint claim them.
        let mut tx = self.control.pool().begin().await?;
        save_checkpoints(&mut tx, NAME, version, &batch.checkpoints()).await?;
        save_dead_letters(&mut tx, NAME, version, &batch.dead_letters).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Revenue per bucket: see the module doc of `analytics` for the definition. The revenue
    /// orders (placed in the range, confirmed, not cancelled) are joined with the refunds of
    /// their payments whose status is authorized or captured; the join drops the orders without
    /// such a payment. Both sides have one row per order (`LIMIT 1 BY`, `GROUP BY`), so the
    /// join's strictness does not matter (`ALL`, which 18.16 and current servers read alike).
    /// For current servers: both joined subqueries have an alias (they refuse a join without),
    /// and no alias repeats a column's name (they would read the alias inside the aggregate).
    pub(super) async fn revenue(
        &self,
        tables: &Tables,
        range: Range,
        bucket: Bucket,
    ) -> Result<Vec<RevenueBucket>, ProjectionError> {
        let (from_us, to_us) = range.bounds();
        let rows = self
            .client
            .query(&format!(
                "SELECT toInt64(intDiv(placed_us, ?) * ?) AS bucket_us, toString(order_currency) AS cur,
                        toInt64(sum(total - refunded)), toUInt64(count())
                   FROM (SELECT order_id, at_us AS placed_us, total_minor AS total, currency AS order_currency
                           FROM {status}
                          WHERE status = 'placed' AND at_us >= ? AND at_us < ?
                            AND order_id IN (SELECT order_id FROM {status} WHERE status = 'confirmed')
                            AND order_id NOT IN (SELECT order_id FROM {status} WHERE status = 'cancelled')
                          LIMIT 1 BY order_id) AS revenue_orders
                   ALL INNER JOIN
                        (SELECT paid_order AS order_id, sum(refunded_minor) AS refunded
                           FROM ({payment_status})
                          WHERE last_kind IN ('authorized', 'captured')
                             OR (last_kind = 'refunded' AND refunded_minor < captured_minor)
                          GROUP BY paid_order) AS paid
                   USING order_id
                  GROUP BY bucket_us, cur
                  ORDER BY bucket_us, cur",
                status = tables.status,
                payment_status = payment_status_sql(tables),
            ))
            .bind(bucket.micros())
            .bind(bucket.micros())
            .bind(from_us)
            .bind(to_us)
            .bind(from_us)
            .bind(to_us)
            .fetch_all::<RevenueRow>()
            .await?;
        rows.into_iter()
            .map(|row| {
                Ok(RevenueBucket {
                    bucket_start: from_micros(row.bucket_us)
                        .ok_or_else(|| ProjectionError::Inconsistent(format!("bucket {} µs", row.bucket_us)))?,
                    currency: row.currency,
                    revenue_minor: row.revenue_minor,
                    orders: row.orders,
                })
            })
            .collect()
    }

    pub(super) async fn top_products(
        &self,
        tables: &Tables,
        range: Range,
        limit: u32,
    ) -> Result<Vec<TopProduct>, ProjectionError> {
        let (from_us, to_us) = range.bounds();
        let rows = self
            .client
            .query(&format!(
                "SELECT toString(product_id) AS product, toString(argMax(sku, position)),
                        toString(argMax(name, position)), toInt64(sum(quantity)) AS units,
                        toInt64(sum(amount_minor)) AS revenue, toString(currency) AS cur
                   FROM (SELECT order_id, line_no, product_id, sku, name, quantity, amount_minor, currency, position
                           FROM {lines}
                          WHERE placed_at_us >= ? AND placed_at_us < ?
                            AND order_id NOT IN (SELECT order_id FROM {status} WHERE status = 'cancelled')
                          LIMIT 1 BY order_id, line_no)
                  GROUP BY product_id, currency
                  ORDER BY units DESC, revenue DESC, product, cur
                  LIMIT ?",
                lines = tables.lines,
                status = tables.status
            ))
            .bind(from_us)
            .bind(to_us)
            .bind(limit)
            .fetch_all::<TopProductRow>()
            .await?;
        Ok(rows
            .into_iter()
            .map(|row| TopProduct {
                product_id: row.product_id,
                sku: row.sku,
                name: row.name,
                quantity: row.quantity,
                revenue_minor: row.revenue_minor,
                currency: row.currency,
            })
            .collect())
    }

    /// Of the orders placed in the range: per status, how many reached it; how many are
    /// pending; per reason code of their first cancellation, how many were cancelled.
    pub(super) async fn funnel_counts(&self, tables: &Tables, range: Range) -> Result<FunnelCounts, ProjectionError> {
        let mut cohort = String::new();
        if range.from_us.is_some() {
            cohort.push_str(" AND at_us >= ?");
        }
        if range.to_us.is_some() {
            cohort.push_str(" AND at_us < ?");
        }
        let bounds: Vec<i64> = [range.from_us, range.to_us].into_iter().flatten().collect();
        let status = &tables.status;
        let mut query = self.client.query(&format!(
            "SELECT toString(status), toUInt64(uniqExact(order_id))
               FROM {status}
              WHERE order_id IN (SELECT order_id FROM {status} WHERE status = 'placed'{cohort})
              GROUP BY status"
        ));
        for bound in &bounds {
            query = query.bind(bound);
        }
        let statuses = query.fetch_all::<StatusCount>().await?;
        let mut query = self.client.query(&format!(
            "SELECT toUInt64(uniqExact(order_id))
               FROM {status}
              WHERE status = 'placed'{cohort}
                AND order_id NOT IN (SELECT order_id FROM {status} WHERE status IN ('confirmed', 'cancelled'))"
        ));
        for bound in &bounds {
            query = query.bind(bound);
        }
        let pending = query.fetch_one::<u64>().await?;
        // Copies of a row are identical: argMin over them is the first cancellation's code.
        let mut query = self.client.query(&format!(
            "SELECT toString(code), toUInt64(count())
               FROM (SELECT order_id, argMin(reason_code, position) AS code
                       FROM {cancellations}
                      WHERE order_id IN (SELECT order_id FROM {status} WHERE status = 'placed'{cohort})
                      GROUP BY order_id)
              GROUP BY code",
            cancellations = tables.cancellations
        ));
        for bound in &bounds {
            query = query.bind(bound);
        }
        let reasons = query.fetch_all::<StatusCount>().await?;
        Ok(FunnelCounts {
            statuses: statuses.into_iter().map(|row| (row.status, row.orders)).collect(),
            pending,
            reasons: reasons.into_iter().map(|row| (row.status, row.orders)).collect(),
        })
    }

    pub(super) async fn delivery_durations(&self, tables: &Tables, range: Range) -> Result<Durations, ProjectionError> {
        let (from_us, to_us) = range.bounds();
        // `quantileExact(p)` is the value at 0-based index ⌊p·n⌋ of the sorted values: the
        // definition the SQL sink reproduces. On no rows it answers 0, and count is 0.
        let row = self
            .client
            .query(&format!(
                "SELECT toUInt64(count()), toInt64(quantileExact(0.5)(duration_us)),
                        toInt64(quantileExact(0.9)(duration_us))
                   FROM (
                        SELECT order_id,
                               maxIf(at_us, status = 'delivered') - maxIf(at_us, status = 'placed') AS duration_us
                          FROM {status}
                         WHERE status IN ('placed', 'delivered')
                           AND order_id IN (SELECT order_id FROM {status}
                                             WHERE status = 'delivered' AND at_us >= ? AND at_us < ?)
                         GROUP BY order_id
                        HAVING countIf(status = 'placed') > 0
                   )",
                status = tables.status
            ))
            .bind(from_us)
            .bind(to_us)
            .fetch_one::<DurationsRow>()
            .await?;
        Ok(Durations::new(row.count, Some(row.p50_us), Some(row.p90_us)))
    }
}

/// Per payment of an order placed in the range (the query binds its bounds, `from` then `to`):
/// `paid_order` (its last event's order), `last_kind` (its last event's kind), and what it
/// captured and refunded in all (`captured_minor`, `refunded_minor`). `LIMIT 1 BY` counts each
/// event once whatever the unmerged copies.
fn payment_status_sql(tables: &Tables) -> String {
    format!(
        "SELECT payment_id, argMax(order_id, seq) AS paid_order, argMax(kind, seq) AS last_kind,
                sumIf(amount_minor, kind = 'captured') AS captured_minor,
                sumIf(amount_minor, kind = 'refunded') AS refunded_minor
           FROM (SELECT payment_id, seq, order_id, kind, amount_minor
                   FROM {payments}
                  WHERE order_id IN (SELECT order_id FROM {status}
                                      WHERE status = 'placed' AND at_us >= ? AND at_us < ?)
                  LIMIT 1 BY payment_id, seq)
          GROUP BY payment_id",
        payments = tables.payments,
        status = tables.status,
    )
}
