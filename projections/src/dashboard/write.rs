//! The IO of [`super::OrderDashboard::apply`]: loading the rows a batch touches and writing back
//! what the fold produced.
//!
//! Every multi-row statement takes its rows as one JSON parameter (`crate::json_rows`), so each
//! has one text, prepared once per connection: the applies of all workers serialize on the
//! `writer` lock, and the round trips inside it bound how many batches per second they apply.

use sqlx::any::{AnyArguments, AnyRow};
use sqlx::{Any, AnyConnection, AssertSqlSafe, Row};
use uuid::Uuid;

use super::OrderStatus;
use super::fold::{CustomerState, CustomerVersion, Fold, OrderState, OrderVersion, TotalKey};
use crate::ProjectionError;
use crate::json_rows::{Dialect, JsonRows, insert_rows, json_ids, json_strings, names, typed_rows};

type Query = sqlx::query::Query<'static, Any, AnyArguments>;

/// The most rows one statement writes: bounds the JSON text of one parameter (a bulk load on
/// SQLite writes thousands of rows per transaction).
const MAX_ROWS: usize = 1_000;

pub(super) const ORDER_COLUMNS: &str = "order_id, customer_id, customer_name, customer_email, snapshot_name, snapshot_email, \
     status, item_count, total_minor, currency, placed_at_us, confirmed_at_us, shipped_at_us, delivered_at_us, \
     cancelled_at_us, cancel_reason, carrier, tracking, stream_version, last_position, updated_at_us";

pub(super) const ORDER_HISTORY_COLUMNS: &str = "order_id, stream_version, valid_from_position, valid_from_us, valid_to_position, \
     valid_to_us, customer_id, snapshot_name, snapshot_email, status, item_count, total_minor, currency, placed_at_us, \
     confirmed_at_us, shipped_at_us, delivered_at_us, cancelled_at_us, cancel_reason, carrier, tracking";

pub(super) const CUSTOMER_COLUMNS: &str = "customer_id, name, email, stream_version, last_position, order_count, last_order_id, \
     last_order_at_us, last_order_position";

pub(super) const CUSTOMER_HISTORY_COLUMNS: &str =
    "customer_id, stream_version, valid_from_position, valid_from_us, valid_to_position, valid_to_us, name, email";

pub(super) const TOTALS_COLUMNS: &str = "customer_id, currency, order_count, lifetime_value_minor";

fn query(sql: String) -> Query {
    sqlx::query(AssertSqlSafe(sql))
}

/// Takes this version's write lock (see `writer` in tables.sql) until the transaction ends.
///
/// On PostgreSQL it also turns sequential scans off for the transaction, in the same round trip:
/// every statement of an apply finds its rows by key, but the planner cannot see how many rows a
/// JSON parameter holds (it assumes 100), and for tables of up to some ten thousand rows it
/// would rather scan them whole than probe an index 100 times (measured at 12,000 orders:
/// 3–7 ms a statement by scanning, 0.2 ms by index).
pub(super) async fn lock(conn: &mut AnyConnection, prefix: &str) -> Result<(), ProjectionError> {
    let upsert = format!("INSERT INTO {prefix}writer (id) VALUES (1) ON CONFLICT (id) DO UPDATE SET id = excluded.id");
    match Dialect::of(conn) {
        Dialect::Postgres => {
            sqlx::raw_sql(AssertSqlSafe(format!("SET LOCAL enable_seqscan = off; {upsert}")))
                .execute(&mut *conn)
                .await?;
        }
        Dialect::Sqlite => {
            query(upsert).execute(&mut *conn).await?;
        }
    }
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

/// Runs `select (ids)`, the ids as one JSON parameter, in chunks of [`MAX_ROWS`].
async fn load_by_ids<T>(
    conn: &mut AnyConnection,
    select: &str,
    ids: &[Uuid],
    from_row: fn(&AnyRow) -> Result<T, ProjectionError>,
) -> Result<Vec<T>, ProjectionError> {
    let mut loaded = Vec::with_capacity(ids.len());
    let sql = format!("{select} ({})", json_strings(Dialect::of(conn)));
    for chunk in ids.chunks(MAX_ROWS) {
        for row in query(sql.clone()).bind(json_ids(chunk)).fetch_all(&mut *conn).await? {
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
    let sql = format!(
        "UPDATE {table} SET valid_to_position = r.position, valid_to_us = r.at_us FROM {} \
          WHERE {table}.{id_column} = r.id AND {table}.valid_to_position IS NULL",
        typed_rows(Dialect::of(conn), &[("id", "TEXT"), ("position", "BIGINT"), ("at_us", "BIGINT")])
    );
    for chunk in closes.chunks(MAX_ROWS) {
        let mut rows = JsonRows::new("id, position, at_us");
        for (id, (position, at)) in chunk {
            rows.push([id.to_string().into(), (*position).into(), (*at).into()]);
        }
        query(sql.clone()).bind(rows.into_param()).execute(&mut *conn).await?;
    }
    Ok(())
}

pub(super) async fn insert_order_versions(
    conn: &mut AnyConnection,
    prefix: &str,
    versions: &[OrderVersion],
) -> Result<(), ProjectionError> {
    let sql = insert_rows(Dialect::of(conn), &format!("{prefix}order_history"), ORDER_HISTORY_COLUMNS, "");
    for chunk in versions.chunks(MAX_ROWS) {
        let mut rows = JsonRows::new(ORDER_HISTORY_COLUMNS);
        for version in chunk {
            let o = &version.order;
            rows.push([
                o.order_id.to_string().into(),
                o.stream_version.into(),
                version.valid_from.0.into(),
                version.valid_from.1.into(),
                version.valid_to.map(|to| to.0).into(),
                version.valid_to.map(|to| to.1).into(),
                o.customer_id.to_string().into(),
                o.snapshot_name.as_str().into(),
                o.snapshot_email.as_str().into(),
                o.status.as_str().into(),
                o.item_count.into(),
                o.total_minor.into(),
                o.currency.as_str().into(),
                o.placed_at_us.into(),
                o.confirmed_at_us.into(),
                o.shipped_at_us.into(),
                o.delivered_at_us.into(),
                o.cancelled_at_us.into(),
                o.cancel_reason.as_deref().into(),
                o.carrier.as_deref().into(),
                o.tracking.as_deref().into(),
            ]);
        }
        query(sql.clone()).bind(rows.into_param()).execute(&mut *conn).await?;
    }
    Ok(())
}

pub(super) async fn insert_customer_versions(
    conn: &mut AnyConnection,
    prefix: &str,
    versions: &[CustomerVersion],
) -> Result<(), ProjectionError> {
    let sql = insert_rows(Dialect::of(conn), &format!("{prefix}customer_history"), CUSTOMER_HISTORY_COLUMNS, "");
    for chunk in versions.chunks(MAX_ROWS) {
        let mut rows = JsonRows::new(CUSTOMER_HISTORY_COLUMNS);
        for version in chunk {
            rows.push([
                version.customer_id.to_string().into(),
                version.stream_version.into(),
                version.valid_from.0.into(),
                version.valid_from.1.into(),
                version.valid_to.map(|to| to.0).into(),
                version.valid_to.map(|to| to.1).into(),
                version.name.as_str().into(),
                version.email.as_str().into(),
            ]);
        }
        query(sql.clone()).bind(rows.into_param()).execute(&mut *conn).await?;
    }
    Ok(())
}

/// `col = excluded.col` for every column but the key.
fn set_excluded(columns: &str) -> String {
    names(columns)
        .skip(1)
        .map(|column| format!("{column} = excluded.{column}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// An upsert of parameter 1's rows.
fn upsert_rows(conn: &AnyConnection, table: &str, columns: &str, key: &str, set: &str) -> String {
    insert_rows(Dialect::of(conn), table, columns, &format!("WHERE true ON CONFLICT ({key}) DO UPDATE SET {set}"))
}

pub(super) async fn upsert_orders(
    conn: &mut AnyConnection,
    prefix: &str,
    orders: &[&OrderState],
) -> Result<(), ProjectionError> {
    let set = set_excluded(ORDER_COLUMNS);
    let sql = upsert_rows(conn, &format!("{prefix}orders"), ORDER_COLUMNS, "order_id", &set);
    for chunk in orders.chunks(MAX_ROWS) {
        let mut rows = JsonRows::new(ORDER_COLUMNS);
        for o in chunk {
            rows.push([
                o.order_id.to_string().into(),
                o.customer_id.to_string().into(),
                o.customer_name.as_str().into(),
                o.customer_email.as_str().into(),
                o.snapshot_name.as_str().into(),
                o.snapshot_email.as_str().into(),
                o.status.as_str().into(),
                o.item_count.into(),
                o.total_minor.into(),
                o.currency.as_str().into(),
                o.placed_at_us.into(),
                o.confirmed_at_us.into(),
                o.shipped_at_us.into(),
                o.delivered_at_us.into(),
                o.cancelled_at_us.into(),
                o.cancel_reason.as_deref().into(),
                o.carrier.as_deref().into(),
                o.tracking.as_deref().into(),
                o.stream_version.into(),
                o.last_position.into(),
                o.updated_at_us.into(),
            ]);
        }
        query(sql.clone()).bind(rows.into_param()).execute(&mut *conn).await?;
    }
    Ok(())
}

pub(super) async fn upsert_customers(
    conn: &mut AnyConnection,
    prefix: &str,
    customers: &[&CustomerState],
) -> Result<(), ProjectionError> {
    let set = set_excluded(CUSTOMER_COLUMNS);
    let sql = upsert_rows(conn, &format!("{prefix}customers"), CUSTOMER_COLUMNS, "customer_id", &set);
    for chunk in customers.chunks(MAX_ROWS) {
        let mut rows = JsonRows::new(CUSTOMER_COLUMNS);
        for c in chunk {
            rows.push([
                c.customer_id.to_string().into(),
                c.name.as_str().into(),
                c.email.as_str().into(),
                c.stream_version.into(),
                c.last_position.into(),
                c.order_count.into(),
                c.last_order_id.map(|id| id.to_string()).into(),
                c.last_order_at_us.into(),
                c.last_order_position.into(),
            ]);
        }
        query(sql.clone()).bind(rows.into_param()).execute(&mut *conn).await?;
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
    let table = format!("{prefix}customer_totals");
    let sql = upsert_rows(
        conn,
        &table,
        TOTALS_COLUMNS,
        "customer_id, currency",
        &format!(
            "order_count = {table}.order_count + excluded.order_count, \
             lifetime_value_minor = {table}.lifetime_value_minor + excluded.lifetime_value_minor"
        ),
    );
    for chunk in deltas.chunks(MAX_ROWS) {
        let mut rows = JsonRows::new(TOTALS_COLUMNS);
        for ((customer_id, currency), (count, value)) in chunk {
            rows.push([
                customer_id.to_string().into(),
                currency.as_str().into(),
                (*count).into(),
                (*value).into(),
            ]);
        }
        query(sql.clone()).bind(rows.into_param()).execute(&mut *conn).await?;
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
    let table = format!("{prefix}orders");
    let sql = format!(
        "UPDATE {table} SET customer_name = r.name, customer_email = r.email FROM {} WHERE {table}.customer_id = r.id",
        typed_rows(Dialect::of(conn), &[("id", "TEXT"), ("name", "TEXT"), ("email", "TEXT")])
    );
    for chunk in changed.chunks(MAX_ROWS) {
        let mut rows = JsonRows::new("id, name, email");
        for c in chunk {
            rows.push([
                c.customer_id.to_string().into(),
                c.name.as_str().into(),
                c.email.as_str().into(),
            ]);
        }
        query(sql.clone()).bind(rows.into_param()).execute(&mut *conn).await?;
    }
    Ok(())
}
