//! The SQL sink (the embedded SQLite read database): facts, checkpoints and dead letters in one
//! transaction, rows inserted with `ON CONFLICT DO NOTHING` on their natural keys.
//!
//! Dynamic statements are marked `AssertSqlSafe`: what is spliced into them is only table names
//! made from the version number and fixed fragments; every value is bound.
//!
//! The statements stay in the subset sqlx's `Any` driver, SQLite and PostgreSQL share (`$N`
//! parameters, `BIGINT`, sums cast back to `BIGINT`, window functions), like the control tables.

use std::collections::HashMap;

use std::sync::Arc;

use sqlx::{AssertSqlSafe, Row};

use super::facts::Facts;
use super::{Bucket, Durations, FunnelCounts, NAME, Range, RevenueBucket, Tables, TopProduct};
use crate::{Batch, ProjectionError, ReadDb, from_i64, from_micros, save_checkpoints, save_dead_letters, to_i64};

#[derive(Debug, Clone)]
pub(super) struct SqlSink {
    db: ReadDb,
}

impl SqlSink {
    pub(super) fn new(db: ReadDb) -> Self {
        SqlSink { db }
    }

    pub(super) fn db(&self) -> &ReadDb {
        &self.db
    }

    pub(super) async fn execute_all(&self, statements: &[String]) -> Result<(), ProjectionError> {
        let mut tx = self.db.begin_write().await?;
        for statement in statements {
            sqlx::query(AssertSqlSafe(statement.as_str())).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn healthy(&self) -> bool {
        let probe = sqlx::query("SELECT 1").execute(self.db.pool());
        matches!(
            tokio::time::timeout(std::time::Duration::from_secs(5), probe).await,
            Ok(Ok(_))
        )
    }

    /// Writes the batch's facts, checkpoints and dead letters in one transaction.
    pub(super) async fn apply(&self, tables: &Tables, version: u32, batch: &Batch) -> Result<(), ProjectionError> {
        let mut facts = Facts::of(batch);
        let mut tx = self.db.begin_write().await?;

        let mut placed = HashMap::new();
        for order_id in facts.orders_to_look_up() {
            let row = sqlx::query(AssertSqlSafe(format!(
                "SELECT total_minor, currency FROM {status} WHERE order_id = $1 AND status = 'placed'",
                status = tables.status
            )))
            .bind(order_id.as_str())
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(row) = row {
                placed.insert(order_id, (row.try_get::<i64, _>(0)?, row.try_get::<String, _>(1)?));
            }
        }
        facts.fill_totals(&placed);

        let insert_line: Arc<str> = format!(
            "INSERT INTO {lines} (order_id, line_no, product_id, sku, name, quantity, unit_price_minor, amount_minor,
                                  currency, placed_at_us, position, event_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
             ON CONFLICT (order_id, line_no) DO NOTHING",
            lines = tables.lines
        )
        .into();
        for line in &facts.lines {
            sqlx::query(AssertSqlSafe(Arc::clone(&insert_line)))
                .bind(line.order_id.as_str())
                .bind(i64::from(line.line_no))
                .bind(line.product_id.as_str())
                .bind(line.sku.as_str())
                .bind(line.name.as_str())
                .bind(line.quantity)
                .bind(line.unit_price_minor)
                .bind(line.amount_minor)
                .bind(line.currency.as_str())
                .bind(line.placed_at_us)
                .bind(to_i64(line.position))
                .bind(line.event_id.as_str())
                .execute(&mut *tx)
                .await?;
        }
        let insert_status: Arc<str> = format!(
            "INSERT INTO {status} (order_id, status, at_us, position, total_minor, currency, event_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (order_id, status) DO NOTHING",
            status = tables.status
        )
        .into();
        for status in &facts.statuses {
            sqlx::query(AssertSqlSafe(Arc::clone(&insert_status)))
                .bind(status.order_id.as_str())
                .bind(status.status.as_str())
                .bind(status.at_us)
                .bind(to_i64(status.position))
                .bind(status.total_minor)
                .bind(status.currency.as_str())
                .bind(status.event_id.as_str())
                .execute(&mut *tx)
                .await?;
        }

        let insert_cancellation: Arc<str> = format!(
            "INSERT INTO {cancellations} (order_id, reason_code, at_us, position, event_id)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (order_id, position) DO NOTHING",
            cancellations = tables.cancellations
        )
        .into();
        for cancellation in &facts.cancellations {
            sqlx::query(AssertSqlSafe(Arc::clone(&insert_cancellation)))
                .bind(cancellation.order_id.as_str())
                .bind(cancellation.reason_code.as_str())
                .bind(cancellation.at_us)
                .bind(to_i64(cancellation.position))
                .bind(cancellation.event_id.as_str())
                .execute(&mut *tx)
                .await?;
        }
        let insert_payment: Arc<str> = format!(
            "INSERT INTO {payments} (payment_id, seq, order_id, kind, amount_minor, currency, at_us, position, event_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (payment_id, seq) DO NOTHING",
            payments = tables.payments
        )
        .into();
        for payment in &facts.payments {
            sqlx::query(AssertSqlSafe(Arc::clone(&insert_payment)))
                .bind(payment.payment_id.as_str())
                .bind(to_i64(payment.seq))
                .bind(payment.order_id.as_str())
                .bind(payment.kind.as_str())
                .bind(payment.amount_minor)
                .bind(payment.currency.as_str())
                .bind(payment.at_us)
                .bind(to_i64(payment.position))
                .bind(payment.event_id.as_str())
                .execute(&mut *tx)
                .await?;
        }

        save_checkpoints(&mut tx, NAME, version, &batch.checkpoints()).await?;
        save_dead_letters(&mut tx, NAME, version, &batch.dead_letters).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Revenue per bucket: see the module doc of `analytics` for the definition, and the
    /// ClickHouse sink's for the same query there.
    pub(super) async fn revenue(
        &self,
        tables: &Tables,
        range: Range,
        bucket: Bucket,
    ) -> Result<Vec<RevenueBucket>, ProjectionError> {
        let (from_us, to_us) = range.bounds();
        // `cohort`: the orders placed in the range, whose payments are looked at. `last`: each
        // payment's last event; `amounts`: what it captured and refunded; `paid`: per order, the
        // refunds of its payments that are authorized or captured. Integer division truncates
        // towards zero like ClickHouse's intDiv (times are after 1970).
        let rows = sqlx::query(AssertSqlSafe(format!(
            "WITH cohort AS (
                SELECT order_id FROM {status} WHERE status = 'placed' AND at_us >= $1 AND at_us < $2
             ), last AS (
                SELECT f.payment_id, f.order_id, f.kind
                  FROM {payments} f
                 WHERE f.order_id IN (SELECT order_id FROM cohort)
                   AND f.seq = (SELECT MAX(g.seq) FROM {payments} g WHERE g.payment_id = f.payment_id)
             ), amounts AS (
                SELECT a.payment_id,
                       CAST(SUM(CASE WHEN a.kind = 'captured' THEN a.amount_minor ELSE 0 END) AS BIGINT) AS captured,
                       CAST(SUM(CASE WHEN a.kind = 'refunded' THEN a.amount_minor ELSE 0 END) AS BIGINT) AS refunded
                  FROM {payments} a
                 WHERE a.order_id IN (SELECT order_id FROM cohort)
                 GROUP BY a.payment_id
             ), paid AS (
                SELECT l.order_id, CAST(SUM(m.refunded) AS BIGINT) AS refunded
                  FROM last l JOIN amounts m ON m.payment_id = l.payment_id
                 WHERE l.kind IN ('authorized', 'captured') OR (l.kind = 'refunded' AND m.refunded < m.captured)
                 GROUP BY l.order_id
             )
             SELECT (s.at_us / $3) * $3 AS bucket_us, s.currency, CAST(SUM(s.total_minor - p.refunded) AS BIGINT),
                    COUNT(*)
               FROM {status} s
               JOIN paid p ON p.order_id = s.order_id
              WHERE s.status = 'placed' AND s.at_us >= $1 AND s.at_us < $2
                AND EXISTS (SELECT 1 FROM {status} c WHERE c.order_id = s.order_id AND c.status = 'confirmed')
                AND NOT EXISTS (SELECT 1 FROM {status} c WHERE c.order_id = s.order_id AND c.status = 'cancelled')
              GROUP BY (s.at_us / $3) * $3, s.currency
              ORDER BY bucket_us, s.currency",
            status = tables.status,
            payments = tables.payments,
        )))
        .bind(from_us)
        .bind(to_us)
        .bind(bucket.micros())
        .fetch_all(self.db.pool())
        .await?;
        rows.into_iter()
            .map(|row| {
                let bucket_us: i64 = row.try_get(0)?;
                Ok(RevenueBucket {
                    bucket_start: from_micros(bucket_us)
                        .ok_or_else(|| ProjectionError::Inconsistent(format!("bucket {bucket_us} µs")))?,
                    currency: row.try_get(1)?,
                    revenue_minor: row.try_get(2)?,
                    orders: from_i64(row.try_get(3)?),
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
        // Sku and name come from the product's line with the highest position (its latest sale
        // in the range), like ClickHouse's argMax(·, position); lines of one event share them.
        let rows = sqlx::query(AssertSqlSafe(format!(
            "WITH sold AS (
                SELECT l.product_id, l.currency, CAST(SUM(l.quantity) AS BIGINT) AS units,
                       CAST(SUM(l.amount_minor) AS BIGINT) AS revenue, MAX(l.position) AS last_position
                  FROM {lines} l
                 WHERE l.placed_at_us >= $1 AND l.placed_at_us < $2
                   AND NOT EXISTS (SELECT 1 FROM {status} c WHERE c.order_id = l.order_id AND c.status = 'cancelled')
                 GROUP BY l.product_id, l.currency
             )
             SELECT s.product_id,
                    (SELECT n.sku FROM {lines} n
                      WHERE n.product_id = s.product_id AND n.position = s.last_position
                      ORDER BY n.order_id, n.line_no LIMIT 1),
                    (SELECT n.name FROM {lines} n
                      WHERE n.product_id = s.product_id AND n.position = s.last_position
                      ORDER BY n.order_id, n.line_no LIMIT 1),
                    s.units, s.revenue, s.currency
               FROM sold s
              ORDER BY s.units DESC, s.revenue DESC, s.product_id, s.currency
              LIMIT $3",
            lines = tables.lines,
            status = tables.status
        )))
        .bind(from_us)
        .bind(to_us)
        .bind(i64::from(limit))
        .fetch_all(self.db.pool())
        .await?;
        rows.into_iter()
            .map(|row| {
                Ok(TopProduct {
                    product_id: row.try_get(0)?,
                    sku: row.try_get(1)?,
                    name: row.try_get(2)?,
                    quantity: row.try_get(3)?,
                    revenue_minor: row.try_get(4)?,
                    currency: row.try_get(5)?,
                })
            })
            .collect()
    }

    /// Of the orders placed in the range: per status, how many reached it; how many are
    /// pending; per reason code of their first cancellation, how many were cancelled. One
    /// statement, so one snapshot: rows `(kind, key, count)`.
    pub(super) async fn funnel_counts(&self, tables: &Tables, range: Range) -> Result<FunnelCounts, ProjectionError> {
        let mut cohort = String::new();
        let mut n = 0;
        for (bound, op) in [(range.from_us, ">="), (range.to_us, "<")] {
            if bound.is_some() {
                n += 1;
                cohort.push_str(&format!(" AND p.at_us {op} ${n}"));
            }
        }
        let sql = format!(
            "SELECT 'status', s.status, COUNT(*)
               FROM {status} s
               JOIN {status} p ON p.order_id = s.order_id AND p.status = 'placed'{cohort}
              GROUP BY s.status
             UNION ALL
             SELECT 'pending', '', COUNT(*)
               FROM {status} p
              WHERE p.status = 'placed'{cohort}
                AND NOT EXISTS (SELECT 1 FROM {status} c
                                 WHERE c.order_id = p.order_id AND c.status IN ('confirmed', 'cancelled'))
             UNION ALL
             SELECT 'reason', c.reason_code, COUNT(*)
               FROM {cancellations} c
               JOIN {status} p ON p.order_id = c.order_id AND p.status = 'placed'{cohort}
              WHERE c.position = (SELECT MIN(f.position) FROM {cancellations} f WHERE f.order_id = c.order_id)
              GROUP BY c.reason_code",
            status = tables.status,
            cancellations = tables.cancellations,
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for bound in [range.from_us, range.to_us].into_iter().flatten() {
            query = query.bind(bound);
        }
        let mut counts = FunnelCounts::default();
        for row in query.fetch_all(self.db.pool()).await? {
            let (kind, key, count): (String, String, u64) =
                (row.try_get(0)?, row.try_get(1)?, from_i64(row.try_get(2)?));
            match kind.as_str() {
                "status" => counts.statuses.push((key, count)),
                "pending" => counts.pending = count,
                _ => counts.reasons.push((key, count)),
            }
        }
        Ok(counts)
    }

    pub(super) async fn delivery_durations(&self, tables: &Tables, range: Range) -> Result<Durations, ProjectionError> {
        let (from_us, to_us) = range.bounds();
        // One statement (one snapshot): rank the sorted durations and keep the ranks ⌊n/2⌋ and
        // ⌊9n/10⌋ (0-based), ClickHouse's quantileExact.
        let rows = sqlx::query(AssertSqlSafe(format!(
            "WITH d AS (
                SELECT dl.at_us - p.at_us AS duration_us
                  FROM {status} dl
                  JOIN {status} p ON p.order_id = dl.order_id AND p.status = 'placed'
                 WHERE dl.status = 'delivered' AND dl.at_us >= $1 AND dl.at_us < $2
             ), ranked AS (
                SELECT duration_us, ROW_NUMBER() OVER (ORDER BY duration_us) - 1 AS idx, COUNT(*) OVER () AS n
                  FROM d
             )
             SELECT n, idx, duration_us FROM ranked WHERE idx = n / 2 OR idx = (n * 9) / 10",
            status = tables.status
        )))
        .bind(from_us)
        .bind(to_us)
        .fetch_all(self.db.pool())
        .await?;
        let mut count = 0;
        let mut ranked = Vec::with_capacity(2);
        for row in rows {
            count = from_i64(row.try_get(0)?);
            ranked.push((from_i64(row.try_get(1)?), row.try_get::<i64, _>(2)?));
        }
        let (p50, p90) = Durations::percentile_indexes(count);
        let at = |index: u64| ranked.iter().find(|(i, _)| *i == index).map(|(_, d)| *d);
        Ok(Durations::new(count, at(p50), at(p90)))
    }
}
