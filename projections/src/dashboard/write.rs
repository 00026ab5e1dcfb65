//! The IO of [`super::OrderDashboard::apply`]: loading the rows a batch touches and writing back
//! what the fold produced, with multi-row statements chunked under both servers' parameter
//! limits (SQLite 32766, PostgreSQL 65535).

use std::fmt::Write as _;

use sqlx::any::{AnyArguments, AnyRow};
use sqlx::{Any, AnyConnection, AssertSqlSafe, Row};
use uuid::Uuid;

use super::OrderStatus;
use super::fold::{CustomerState, CustomerVersion, Fold, OrderState, OrderVersion, TotalKey};
use crate::ProjectionError;

type Query = sqlx::query::Query<'static, Any, AnyArguments>;

/// The most parameters one statement binds: under SQLite's limit of 32766.
const MAX_PARAMS: usize = 30_000;
/// The most rows one statement writes, so that the few statement shapes stay in sqlx's cache.
const MAX_ROWS: usize = 500;
/// The most ids one `IN (...)` list holds.
const MAX_IDS: usize = 1_000;

pub(super) const ORDER_COLUMNS: &str = "order_id, customer_id, customer_name, customer_email, snapshot_name, snapshot_email, \
     status, item_count, total_minor, currency, placed_at_us, confirmed_at_us, shipped_at_us, delivered_at_us, \
     cancelled_at_us, cancel_reason, carrier, tracking, stream_version, last_position, updated_at_us";
const ORDER_WIDTH: usize = 21;

pub(super) const ORDER_HISTORY_COLUMNS: &str = "order_id, stream_version, valid_from_position, valid_from_us, valid_to_position, \
     valid_to_us, customer_id, snapshot_name, snapshot_email, status, item_count, total_minor, currency, placed_at_us, \
     confirmed_at_us, shipped_at_us, delivered_at_us, cancelled_at_us, cancel_reason, carrier, tracking";
const ORDER_HISTORY_WIDTH: usize = 21;

pub(super) const CUSTOMER_COLUMNS: &str = "customer_id, name, email, stream_version, last_position, order_count, last_order_id, \
     last_order_at_us, last_order_position";
const CUSTOMER_WIDTH: usize = 9;

pub(super) const CUSTOMER_HISTORY_COLUMNS: &str =
    "customer_id, stream_version, valid_from_position, valid_from_us, valid_to_position, valid_to_us, name, email";
const CUSTOMER_HISTORY_WIDTH: usize = 8;

pub(super) const TOTALS_COLUMNS: &str = "customer_id, currency, order_count, lifetime_value_minor";

fn query(sql: String) -> Query {
    sqlx::query(AssertSqlSafe(sql))
}

/// The parameter marks of a generated statement, in the order of its text (and of its binds):
/// `$1, $2, ...` for PostgreSQL, anonymous `?` for SQLite. SQLite keeps numbered and named
/// parameters in a list that `sqlite3_bind_parameter_name` (called by sqlx for every bind)
/// searches linearly, which makes binding a multi-row statement quadratic; `?` is not in it.
struct Marks {
    anonymous: bool,
    n: usize,
}

impl Marks {
    fn new(conn: &AnyConnection) -> Self {
        Marks {
            anonymous: conn.backend_name() == "SQLite",
            n: 0,
        }
    }

    fn next(&mut self) -> String {
        self.n += 1;
        if self.anonymous {
            "?".to_owned()
        } else {
            format!("${}", self.n)
        }
    }

    /// `(a, b), (c, d)`: `rows` tuples of `width` parameters.
    fn values(&mut self, rows: usize, width: usize) -> String {
        let mut sql = String::with_capacity(rows * width * 6);
        for row in 0..rows {
            sql.push_str(if row == 0 { "(" } else { ", (" });
            for column in 0..width {
                if column > 0 {
                    sql.push_str(", ");
                }
                sql.push_str(&self.next());
            }
            sql.push(')');
        }
        sql
    }

    /// `a, b, ...`: a list of `n` parameters.
    fn list(&mut self, n: usize) -> String {
        (0..n).map(|_| self.next()).collect::<Vec<_>>().join(", ")
    }

    /// ` WHEN a THEN b ...`: `n` pairs.
    fn cases(&mut self, n: usize) -> String {
        let mut sql = String::new();
        for _ in 0..n {
            let (when, then) = (self.next(), self.next());
            let _ = write!(sql, " WHEN {when} THEN {then}");
        }
        sql
    }
}

fn rows_per_statement(width: usize) -> usize {
    (MAX_PARAMS / width).min(MAX_ROWS)
}

/// Takes this version's write lock (see `writer` in tables.sql) until the transaction ends.
pub(super) async fn lock(conn: &mut AnyConnection, prefix: &str) -> Result<(), ProjectionError> {
    query(format!(
        "INSERT INTO {prefix}writer (id) VALUES (1) ON CONFLICT (id) DO UPDATE SET id = excluded.id"
    ))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub(super) async fn load_orders(
    conn: &mut AnyConnection,
    prefix: &str,
    ids: &[Uuid],
) -> Result<Vec<OrderState>, ProjectionError> {
    let select = format!("SELECT {ORDER_COLUMNS} FROM {prefix}orders WHERE order_id IN");
    load_by_ids(conn, &select, ids, order_from_row).await
}

pub(super) async fn load_customers(
    conn: &mut AnyConnection,
    prefix: &str,
    ids: &[Uuid],
) -> Result<Vec<CustomerState>, ProjectionError> {
    let select = format!("SELECT {CUSTOMER_COLUMNS} FROM {prefix}customers WHERE customer_id IN");
    load_by_ids(conn, &select, ids, customer_from_row).await
}

/// Runs `select ( ids )` in chunks that stay under the servers' parameter limits.
async fn load_by_ids<T>(
    conn: &mut AnyConnection,
    select: &str,
    ids: &[Uuid],
    from_row: fn(&AnyRow) -> Result<T, ProjectionError>,
) -> Result<Vec<T>, ProjectionError> {
    let mut loaded = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(MAX_IDS) {
        let sql = format!("{select} ({})", Marks::new(conn).list(chunk.len()));
        let mut q = query(sql);
        for id in chunk {
            q = q.bind(id.to_string());
        }
        for row in q.fetch_all(&mut *conn).await? {
            loaded.push(from_row(&row)?);
        }
    }
    Ok(loaded)
}

pub(super) fn parse_uuid(text: &str) -> Result<Uuid, ProjectionError> {
    Uuid::try_parse(text).map_err(|_| ProjectionError::Inconsistent(format!("stored id {text:?} is not a uuid")))
}

pub(super) fn parse_status(text: &str) -> Result<OrderStatus, ProjectionError> {
    text.parse()
        .map_err(|_| ProjectionError::Inconsistent(format!("stored order status {text:?} is unknown")))
}

fn order_from_row(row: &AnyRow) -> Result<OrderState, ProjectionError> {
    Ok(OrderState {
        order_id: parse_uuid(&row.try_get::<String, _>(0)?)?,
        customer_id: parse_uuid(&row.try_get::<String, _>(1)?)?,
        customer_name: row.try_get(2)?,
        customer_email: row.try_get(3)?,
        snapshot_name: row.try_get(4)?,
        snapshot_email: row.try_get(5)?,
        status: parse_status(&row.try_get::<String, _>(6)?)?,
        item_count: row.try_get(7)?,
        total_minor: row.try_get(8)?,
        currency: row.try_get(9)?,
        placed_at_us: row.try_get(10)?,
        confirmed_at_us: row.try_get(11)?,
        shipped_at_us: row.try_get(12)?,
        delivered_at_us: row.try_get(13)?,
        cancelled_at_us: row.try_get(14)?,
        cancel_reason: row.try_get(15)?,
        carrier: row.try_get(16)?,
        tracking: row.try_get(17)?,
        stream_version: row.try_get(18)?,
        last_position: row.try_get(19)?,
        updated_at_us: row.try_get(20)?,
    })
}

fn customer_from_row(row: &AnyRow) -> Result<CustomerState, ProjectionError> {
    Ok(CustomerState {
        customer_id: parse_uuid(&row.try_get::<String, _>(0)?)?,
        name: row.try_get(1)?,
        email: row.try_get(2)?,
        stream_version: row.try_get(3)?,
        last_position: row.try_get(4)?,
        order_count: row.try_get(5)?,
        last_order_id: row
            .try_get::<Option<String>, _>(6)?
            .map(|id| parse_uuid(&id))
            .transpose()?,
        last_order_at_us: row.try_get(7)?,
        last_order_position: row.try_get(8)?,
    })
}

/// Writes everything the fold produced. History first: the stored latest versions are closed
/// before the new ones (with an open `valid_to`) are inserted.
pub(super) async fn write(conn: &mut AnyConnection, prefix: &str, fold: &Fold) -> Result<(), ProjectionError> {
    close_versions(conn, &format!("{prefix}order_history"), "order_id", &fold.close_orders).await?;
    close_versions(
        conn,
        &format!("{prefix}customer_history"),
        "customer_id",
        &fold.close_customers,
    )
    .await?;
    insert_order_versions(conn, prefix, &fold.order_versions).await?;
    insert_customer_versions(conn, prefix, &fold.customer_versions).await?;
    let orders: Vec<&OrderState> = fold
        .orders
        .values()
        .filter(|entry| entry.dirty)
        .map(|entry| &entry.state)
        .collect();
    upsert_orders(conn, prefix, &orders).await?;
    let customers: Vec<&CustomerState> = fold
        .customers
        .values()
        .filter(|entry| entry.dirty)
        .map(|entry| &entry.state)
        .collect();
    upsert_customers(conn, prefix, &customers).await?;
    let deltas: Vec<_> = fold.totals.iter().filter(|(_, delta)| **delta != (0, 0)).collect();
    add_totals(conn, prefix, &deltas).await?;
    propagate_customers(conn, prefix, fold).await?;
    Ok(())
}

/// Closes the open version of each id: `valid_to` = the position and time of the event that
/// superseded it.
async fn close_versions(
    conn: &mut AnyConnection,
    table: &str,
    id_column: &str,
    closes: &[(Uuid, (i64, i64))],
) -> Result<(), ProjectionError> {
    for chunk in closes.chunks(MAX_ROWS) {
        let mut marks = Marks::new(conn);
        let sql = format!(
            "UPDATE {table} SET valid_to_position = CASE {id_column}{} END, valid_to_us = CASE {id_column}{} END \
              WHERE valid_to_position IS NULL AND {id_column} IN ({})",
            marks.cases(chunk.len()),
            marks.cases(chunk.len()),
            marks.list(chunk.len())
        );
        let mut q = query(sql);
        for (id, (position, _)) in chunk {
            q = q.bind(id.to_string()).bind(*position);
        }
        for (id, (_, time)) in chunk {
            q = q.bind(id.to_string()).bind(*time);
        }
        for (id, _) in chunk {
            q = q.bind(id.to_string());
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

pub(super) async fn insert_order_versions(
    conn: &mut AnyConnection,
    prefix: &str,
    versions: &[OrderVersion],
) -> Result<(), ProjectionError> {
    for chunk in versions.chunks(rows_per_statement(ORDER_HISTORY_WIDTH)) {
        let sql = format!(
            "INSERT INTO {prefix}order_history ({ORDER_HISTORY_COLUMNS}) VALUES {}",
            Marks::new(conn).values(chunk.len(), ORDER_HISTORY_WIDTH)
        );
        let mut q = query(sql);
        for version in chunk {
            let o = &version.order;
            q = q
                .bind(o.order_id.to_string())
                .bind(o.stream_version)
                .bind(version.valid_from.0)
                .bind(version.valid_from.1)
                .bind(version.valid_to.map(|to| to.0))
                .bind(version.valid_to.map(|to| to.1))
                .bind(o.customer_id.to_string())
                .bind(o.snapshot_name.clone())
                .bind(o.snapshot_email.clone())
                .bind(o.status.as_str())
                .bind(o.item_count)
                .bind(o.total_minor)
                .bind(o.currency.clone())
                .bind(o.placed_at_us)
                .bind(o.confirmed_at_us)
                .bind(o.shipped_at_us)
                .bind(o.delivered_at_us)
                .bind(o.cancelled_at_us)
                .bind(o.cancel_reason.clone())
                .bind(o.carrier.clone())
                .bind(o.tracking.clone());
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

pub(super) async fn insert_customer_versions(
    conn: &mut AnyConnection,
    prefix: &str,
    versions: &[CustomerVersion],
) -> Result<(), ProjectionError> {
    for chunk in versions.chunks(rows_per_statement(CUSTOMER_HISTORY_WIDTH)) {
        let sql = format!(
            "INSERT INTO {prefix}customer_history ({CUSTOMER_HISTORY_COLUMNS}) VALUES {}",
            Marks::new(conn).values(chunk.len(), CUSTOMER_HISTORY_WIDTH)
        );
        let mut q = query(sql);
        for version in chunk {
            q = q
                .bind(version.customer_id.to_string())
                .bind(version.stream_version)
                .bind(version.valid_from.0)
                .bind(version.valid_from.1)
                .bind(version.valid_to.map(|to| to.0))
                .bind(version.valid_to.map(|to| to.1))
                .bind(version.name.clone())
                .bind(version.email.clone());
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

/// `col = excluded.col` for every column but the key.
fn set_excluded(columns: &str) -> String {
    columns
        .split(", ")
        .skip(1)
        .map(|column| format!("{column} = excluded.{column}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) async fn upsert_orders(
    conn: &mut AnyConnection,
    prefix: &str,
    orders: &[&OrderState],
) -> Result<(), ProjectionError> {
    let set = set_excluded(ORDER_COLUMNS);
    for chunk in orders.chunks(rows_per_statement(ORDER_WIDTH)) {
        let sql = format!(
            "INSERT INTO {prefix}orders ({ORDER_COLUMNS}) VALUES {} ON CONFLICT (order_id) DO UPDATE SET {set}",
            Marks::new(conn).values(chunk.len(), ORDER_WIDTH)
        );
        let mut q = query(sql);
        for o in chunk {
            q = q
                .bind(o.order_id.to_string())
                .bind(o.customer_id.to_string())
                .bind(o.customer_name.clone())
                .bind(o.customer_email.clone())
                .bind(o.snapshot_name.clone())
                .bind(o.snapshot_email.clone())
                .bind(o.status.as_str())
                .bind(o.item_count)
                .bind(o.total_minor)
                .bind(o.currency.clone())
                .bind(o.placed_at_us)
                .bind(o.confirmed_at_us)
                .bind(o.shipped_at_us)
                .bind(o.delivered_at_us)
                .bind(o.cancelled_at_us)
                .bind(o.cancel_reason.clone())
                .bind(o.carrier.clone())
                .bind(o.tracking.clone())
                .bind(o.stream_version)
                .bind(o.last_position)
                .bind(o.updated_at_us);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

pub(super) async fn upsert_customers(
    conn: &mut AnyConnection,
    prefix: &str,
    customers: &[&CustomerState],
) -> Result<(), ProjectionError> {
    let set = set_excluded(CUSTOMER_COLUMNS);
    for chunk in customers.chunks(rows_per_statement(CUSTOMER_WIDTH)) {
        let sql = format!(
            "INSERT INTO {prefix}customers ({CUSTOMER_COLUMNS}) VALUES {} ON CONFLICT (customer_id) DO UPDATE SET {set}",
            Marks::new(conn).values(chunk.len(), CUSTOMER_WIDTH)
        );
        let mut q = query(sql);
        for c in chunk {
            q = q
                .bind(c.customer_id.to_string())
                .bind(c.name.clone())
                .bind(c.email.clone())
                .bind(c.stream_version)
                .bind(c.last_position)
                .bind(c.order_count)
                .bind(c.last_order_id.map(|id| id.to_string()))
                .bind(c.last_order_at_us)
                .bind(c.last_order_position);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Adds the batch's deltas to `customer_totals`. Deltas, not values: each event that produced
/// one applied exactly once (the stream-version guard), so adding is safe and needs no read.
pub(super) async fn add_totals(
    conn: &mut AnyConnection,
    prefix: &str,
    deltas: &[(&TotalKey, &(i64, i64))],
) -> Result<(), ProjectionError> {
    for chunk in deltas.chunks(rows_per_statement(4)) {
        let sql = format!(
            "INSERT INTO {prefix}customer_totals ({TOTALS_COLUMNS}) \
             VALUES {} ON CONFLICT (customer_id, currency) DO UPDATE SET \
                order_count = {prefix}customer_totals.order_count + excluded.order_count, \
                lifetime_value_minor = {prefix}customer_totals.lifetime_value_minor + excluded.lifetime_value_minor",
            Marks::new(conn).values(chunk.len(), 4)
        );
        let mut q = query(sql);
        for ((customer_id, currency), (count, value)) in chunk {
            q = q
                .bind(customer_id.to_string())
                .bind(currency.clone())
                .bind(*count)
                .bind(*value);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Sets the current name and email on the stored orders of every customer that was stored
/// before this batch and whose events changed what its orders must show. (Orders the batch
/// holds in memory were given them by the fold; customers the batch created have no stored
/// orders.)
async fn propagate_customers(conn: &mut AnyConnection, prefix: &str, fold: &Fold) -> Result<(), ProjectionError> {
    let changed: Vec<&CustomerState> = fold
        .customers
        .values()
        .filter(|entry| {
            entry.advanced
                && entry.loaded.as_ref().is_some_and(|loaded| {
                    loaded.stream_version == 0 || loaded.name != entry.state.name || loaded.email != entry.state.email
                })
        })
        .map(|entry| &entry.state)
        .collect();
    for chunk in changed.chunks(MAX_ROWS) {
        let mut marks = Marks::new(conn);
        let sql = format!(
            "UPDATE {prefix}orders SET customer_name = CASE customer_id{} END, customer_email = CASE customer_id{} END \
              WHERE customer_id IN ({})",
            marks.cases(chunk.len()),
            marks.cases(chunk.len()),
            marks.list(chunk.len())
        );
        let mut q = query(sql);
        for c in chunk {
            q = q.bind(c.customer_id.to_string()).bind(c.name.clone());
        }
        for c in chunk {
            q = q.bind(c.customer_id.to_string()).bind(c.email.clone());
        }
        for c in chunk {
            q = q.bind(c.customer_id.to_string());
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}
