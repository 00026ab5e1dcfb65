//! The IO of [`super::OrderDashboard::apply`]: loading the rows a batch touches and writing back
//! what the fold produced.
//!
//! Every multi-row statement takes its rows as one JSON parameter (`crate::json_rows`), so each
//! has one text, prepared once per connection: the applies of all workers serialize on the
//! `writer` lock, and the round trips inside it bound how many batches per second they apply.

use sqlx::any::{AnyArguments, AnyRow};
use sqlx::{Any, AnyConnection, AssertSqlSafe, Row};
use uuid::Uuid;

use super::fold::{
    CustomerState, CustomerVersion, Fold, OrderState, OrderVersion, PaymentState, PaymentVersion, SagaProgress,
    SagaVersion, TotalKey,
};
use super::{OrderStatus, PaymentStatus, SagaState};
use crate::ProjectionError;
use crate::json_rows::{Dialect, Json, and_id_in_rows, insert_rows, json_ids, json_rows, key_in, names, typed_rows};

type Query = sqlx::query::Query<'static, Any, AnyArguments>;

/// The most rows one statement writes: bounds the JSON text of one parameter (a bulk load on
/// SQLite writes thousands of rows per transaction).
const MAX_ROWS: usize = 1_000;

pub(super) const ORDER_COLUMNS: &str = "order_id, customer_id, customer_name, customer_email, snapshot_name, snapshot_email, \
     status, item_count, total_minor, currency, placed_at_us, confirmed_at_us, shipped_at_us, delivered_at_us, \
     cancelled_at_us, cancel_reason, carrier, tracking, stream_version, last_position, updated_at_us, cancel_reason_code";

pub(super) const ORDER_HISTORY_COLUMNS: &str = "order_id, stream_version, valid_from_position, valid_from_us, valid_to_position, \
     valid_to_us, customer_id, snapshot_name, snapshot_email, status, item_count, total_minor, currency, placed_at_us, \
     confirmed_at_us, shipped_at_us, delivered_at_us, cancelled_at_us, cancel_reason, carrier, tracking, cancel_reason_code";

pub(super) const CUSTOMER_COLUMNS: &str = "customer_id, name, email, stream_version, last_position, order_count, last_order_id, \
     last_order_at_us, last_order_position";

pub(super) const CUSTOMER_HISTORY_COLUMNS: &str =
    "customer_id, stream_version, valid_from_position, valid_from_us, valid_to_position, valid_to_us, name, email";

pub(super) const PAYMENT_COLUMNS: &str = "payment_id, order_id, status, currency, authorized_minor, captured_minor, \
     refunded_minor, reason, started_position, stream_version, last_position, updated_at_us";

pub(super) const PAYMENT_HISTORY_COLUMNS: &str = "payment_id, stream_version, valid_from_position, valid_from_us, \
     valid_to_position, valid_to_us, order_id, status, currency, authorized_minor, captured_minor, refunded_minor, reason, \
     started_position";

pub(super) const TOTALS_COLUMNS: &str = "customer_id, currency, order_count, lifetime_value_minor";

pub(super) const SAGA_COLUMNS: &str = "order_id, state, line_count, lines_reserved, authorized, confirmed, failed, \
     parked, completed, stream_version, last_position, updated_at_us";

pub(super) const SAGA_HISTORY_COLUMNS: &str =
    "order_id, stream_version, valid_from_position, valid_from_us, valid_to_position, valid_to_us, state";

fn query(sql: String) -> Query {
    sqlx::query(AssertSqlSafe(sql))
}

/// The statements that take this version's write lock (see `writer` in tables.sql) until the
/// transaction ends: the first of the transaction, in one round trip
/// ([`crate::ReadDb::begin_write_with`]).
///
/// On PostgreSQL they also turn sequential scans off for the transaction: every statement of an
/// apply finds its rows by key, but the planner cannot see how many rows a JSON parameter holds
/// (it assumes 100), and for tables of up to some ten thousand rows it would rather scan them
/// whole than probe an index 100 times (measured at 12,000 orders: 3–7 ms a statement by
/// scanning, 0.2 ms by index). For the same reason each statement also names its keys as an
/// index condition on every table it reads ([`key_in`], [`and_id_in_rows`]): with only a join to the
/// JSON rows, a plan made while a table was small read a whole index of it instead, and
/// kept doing so as it grew (`apply_statements_reach_rows_by_key`).
pub(super) fn lock_sql(postgres: bool, prefix: &str) -> String {
    let upsert = format!("INSERT INTO {prefix}writer (id) VALUES (1) ON CONFLICT (id) DO UPDATE SET id = excluded.id");
    if postgres {
        format!("SET LOCAL enable_seqscan = off; {upsert}")
    } else {
        upsert
    }
}

pub(super) async fn load_orders(
    conn: &mut AnyConnection,
    prefix: &str,
    ids: &[Uuid],
) -> Result<Vec<OrderState>, ProjectionError> {
    load_by_ids(conn, &load_orders_sql(Dialect::of(conn), prefix), ids, order_from_row).await
}

pub(super) async fn load_customers(
    conn: &mut AnyConnection,
    prefix: &str,
    ids: &[Uuid],
) -> Result<Vec<CustomerState>, ProjectionError> {
    load_by_ids(
        conn,
        &load_customers_sql(Dialect::of(conn), prefix),
        ids,
        customer_from_row,
    )
    .await
}

pub(super) async fn load_payments(
    conn: &mut AnyConnection,
    prefix: &str,
    ids: &[Uuid],
) -> Result<Vec<PaymentState>, ProjectionError> {
    load_by_ids(
        conn,
        &load_payments_sql(Dialect::of(conn), prefix),
        ids,
        payment_from_row,
    )
    .await
}

/// Sagas by their order's id.
pub(super) async fn load_sagas(
    conn: &mut AnyConnection,
    prefix: &str,
    ids: &[Uuid],
) -> Result<Vec<SagaProgress>, ProjectionError> {
    load_by_ids(conn, &load_sagas_sql(Dialect::of(conn), prefix), ids, saga_from_row).await
}

fn load_sagas_sql(d: Dialect, prefix: &str) -> String {
    format!(
        "SELECT {SAGA_COLUMNS} FROM {prefix}sagas WHERE {}",
        key_in(d, "order_id")
    )
}

fn load_payments_sql(d: Dialect, prefix: &str) -> String {
    format!(
        "SELECT {PAYMENT_COLUMNS} FROM {prefix}payments WHERE {}",
        key_in(d, "payment_id")
    )
}

fn load_orders_sql(d: Dialect, prefix: &str) -> String {
    format!(
        "SELECT {ORDER_COLUMNS} FROM {prefix}orders WHERE {}",
        key_in(d, "order_id")
    )
}

fn load_customers_sql(d: Dialect, prefix: &str) -> String {
    format!(
        "SELECT {CUSTOMER_COLUMNS} FROM {prefix}customers WHERE {}",
        key_in(d, "customer_id")
    )
}

/// Runs `sql` (one parameter: a JSON array of ids, [`json_ids`]) per chunk of [`MAX_ROWS`] ids.
async fn load_by_ids<T>(
    conn: &mut AnyConnection,
    sql: &str,
    ids: &[Uuid],
    from_row: fn(&AnyRow) -> Result<T, ProjectionError>,
) -> Result<Vec<T>, ProjectionError> {
    let mut loaded = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(MAX_ROWS) {
        for row in query(sql.to_owned())
            .bind(json_ids(chunk))
            .fetch_all(&mut *conn)
            .await?
        {
            loaded.push(from_row(&row)?);
        }
    }
    Ok(loaded)
}

pub(super) fn parse_uuid(text: &str) -> Result<Uuid, ProjectionError> {
    Uuid::try_parse(text).map_err(|_| ProjectionError::Inconsistent(format!("stored id {text:?} is not a uuid")))
}

pub(super) fn parse_status(text: &str) -> Result<OrderStatus, ProjectionError> {
    if text == super::query::LEGACY_PENDING {
        return Ok(OrderStatus::Pending);
    }
    text.parse()
        .map_err(|_| ProjectionError::Inconsistent(format!("stored order status {text:?} is unknown")))
}

pub(super) fn parse_payment_status(text: &str) -> Result<PaymentStatus, ProjectionError> {
    match text.parse() {
        Ok(PaymentStatus::None) | Err(_) => Err(ProjectionError::Inconsistent(format!(
            "stored payment status {text:?} is unknown"
        ))),
        Ok(status) => Ok(status),
    }
}

pub(super) fn parse_saga_state(text: &str) -> Result<SagaState, ProjectionError> {
    SagaState::from_name(text)
        .ok_or_else(|| ProjectionError::Inconsistent(format!("stored saga state {text:?} is unknown")))
}

fn flag(row: &AnyRow, index: usize) -> Result<bool, ProjectionError> {
    Ok(row.try_get::<i64, _>(index)? != 0)
}

fn saga_from_row(row: &AnyRow) -> Result<SagaProgress, ProjectionError> {
    Ok(SagaProgress {
        order_id: parse_uuid(&row.try_get::<String, _>(0)?)?,
        state: parse_saga_state(&row.try_get::<String, _>(1)?)?,
        line_count: row.try_get(2)?,
        lines_reserved: row.try_get(3)?,
        authorized: flag(row, 4)?,
        confirmed: flag(row, 5)?,
        failed: flag(row, 6)?,
        parked: flag(row, 7)?,
        completed: flag(row, 8)?,
        stream_version: row.try_get(9)?,
        last_position: row.try_get(10)?,
        updated_at_us: row.try_get(11)?,
    })
}

fn payment_from_row(row: &AnyRow) -> Result<PaymentState, ProjectionError> {
    Ok(PaymentState {
        payment_id: parse_uuid(&row.try_get::<String, _>(0)?)?,
        order_id: parse_uuid(&row.try_get::<String, _>(1)?)?,
        status: parse_payment_status(&row.try_get::<String, _>(2)?)?,
        currency: row.try_get(3)?,
        authorized_minor: row.try_get(4)?,
        captured_minor: row.try_get(5)?,
        refunded_minor: row.try_get(6)?,
        reason: row.try_get(7)?,
        started_position: row.try_get(8)?,
        stream_version: row.try_get(9)?,
        last_position: row.try_get(10)?,
        updated_at_us: row.try_get(11)?,
    })
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
        cancel_reason_code: row.try_get(21)?,
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

/// What the fold produced, to write.
struct Writes<'f> {
    close_orders: &'f [(Uuid, (i64, i64))],
    close_customers: &'f [(Uuid, (i64, i64))],
    close_payments: &'f [(Uuid, (i64, i64))],
    close_sagas: &'f [(Uuid, (i64, i64))],
    order_versions: &'f [OrderVersion],
    customer_versions: &'f [CustomerVersion],
    payment_versions: &'f [PaymentVersion],
    saga_versions: &'f [SagaVersion],
    orders: Vec<&'f OrderState>,
    customers: Vec<&'f CustomerState>,
    payments: Vec<&'f PaymentState>,
    sagas: Vec<&'f SagaProgress>,
    totals: Vec<(&'f TotalKey, &'f (i64, i64))>,
    /// Customers that were stored before this batch and whose events changed what their
    /// stored orders must show. (Orders the batch holds in memory were given them by the fold;
    /// customers the batch created have no stored orders.)
    renamed: Vec<&'f CustomerState>,
}

impl<'f> Writes<'f> {
    fn of(fold: &'f Fold) -> Self {
        Writes {
            close_orders: &fold.close_orders,
            close_customers: &fold.close_customers,
            close_payments: &fold.close_payments,
            close_sagas: &fold.close_sagas,
            order_versions: &fold.order_versions,
            customer_versions: &fold.customer_versions,
            payment_versions: &fold.payment_versions,
            saga_versions: &fold.saga_versions,
            orders: fold.orders.values().filter(|e| e.dirty).map(|e| &e.state).collect(),
            customers: fold.customers.values().filter(|e| e.dirty).map(|e| &e.state).collect(),
            payments: fold.payments.values().filter(|e| e.dirty).map(|e| &e.state).collect(),
            sagas: fold.sagas.values().filter(|e| e.dirty).map(|e| &e.state).collect(),
            totals: fold.totals.iter().filter(|(_, delta)| **delta != (0, 0)).collect(),
            renamed: fold
                .customers
                .values()
                .filter(|entry| {
                    entry.advanced
                        && entry.loaded.as_ref().is_some_and(|loaded| {
                            loaded.stream_version == 0
                                || loaded.name != entry.state.name
                                || loaded.email != entry.state.email
                        })
                })
                .map(|entry| &entry.state)
                .collect(),
        }
    }
}

/// Writes everything the fold produced, and the batch's checkpoints (`checkpoints`: the rows of
/// [`crate::control::save_checkpoints_sql`]). History first: the stored latest versions are
/// closed before the new ones (with an open `valid_to`) are inserted.
///
/// On PostgreSQL in one statement, one round trip inside the writer lock ([`write_postgres`]);
/// on SQLite statement by statement (SQLite has no data-modifying `WITH`, and no round trips).
pub(super) async fn write(
    conn: &mut AnyConnection,
    prefix: &str,
    fold: &Fold,
    checkpoints: String,
) -> Result<(), ProjectionError> {
    let writes = Writes::of(fold);
    match Dialect::of(conn) {
        Dialect::Postgres => write_postgres(conn, prefix, &writes, checkpoints).await,
        Dialect::Sqlite => {
            let d = Dialect::Sqlite;
            for (table, id_column, closes) in [
                ("order_history", "order_id", writes.close_orders),
                ("customer_history", "customer_id", writes.close_customers),
                ("payment_history", "payment_id", writes.close_payments),
                ("saga_history", "order_id", writes.close_sagas),
            ] {
                let sql = close_sql(d, &format!("{prefix}{table}"), id_column, 1);
                run_chunked(conn, &sql, closes, close_rows).await?;
            }
            insert_order_versions(conn, prefix, writes.order_versions).await?;
            insert_customer_versions(conn, prefix, writes.customer_versions).await?;
            insert_payment_versions(conn, prefix, writes.payment_versions).await?;
            insert_saga_versions(conn, prefix, writes.saga_versions).await?;
            upsert_orders(conn, prefix, &writes.orders).await?;
            upsert_customers(conn, prefix, &writes.customers).await?;
            upsert_payments(conn, prefix, &writes.payments).await?;
            upsert_sagas(conn, prefix, &writes.sagas).await?;
            add_totals(conn, prefix, &writes.totals).await?;
            run_chunked(conn, &renamed_sql(d, prefix, 1, None), &writes.renamed, renamed_rows).await?;
            query(crate::control::save_checkpoints_sql(d, 1))
                .bind(checkpoints)
                .execute(&mut *conn)
                .await?;
            Ok(())
        }
    }
}

/// PostgreSQL: every write of [`write`] as a part of one statement (data-modifying `WITH`), each
/// with its rows in a parameter of its own, so the statement has one text.
///
/// All parts see the same snapshot, the one before the statement, and none sees another's
/// changes. That is what the order of [`write`] is for: the closes touch only versions stored
/// before the batch, never the ones it inserts. A row must not be changed by two parts, so the
/// renamed customers' stored orders leave out the orders the batch upserts (the fold already
/// gave those the new name).
async fn write_postgres(
    conn: &mut AnyConnection,
    prefix: &str,
    w: &Writes<'_>,
    checkpoints: String,
) -> Result<(), ProjectionError> {
    query(write_postgres_sql(prefix))
        .bind(close_rows(w.close_orders))
        .bind(close_rows(w.close_customers))
        .bind(order_version_rows(w.order_versions))
        .bind(customer_version_rows(w.customer_versions))
        .bind(order_rows(&w.orders))
        .bind(customer_rows(&w.customers))
        .bind(total_rows(&w.totals))
        .bind(renamed_rows(&w.renamed))
        .bind(checkpoints)
        .bind(close_rows(w.close_payments))
        .bind(payment_version_rows(w.payment_versions))
        .bind(payment_rows(&w.payments))
        .bind(close_rows(w.close_sagas))
        .bind(saga_version_rows(w.saga_versions))
        .bind(saga_rows(&w.sagas))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The parameters of [`write_postgres_sql`].
const WRITE_POSTGRES_PARAMS: usize = 15;

/// The statement of [`write_postgres`]: [`WRITE_POSTGRES_PARAMS`] parameters, in the order of
/// its binds.
fn write_postgres_sql(prefix: &str) -> String {
    let d = Dialect::Postgres;
    let parts = [
        close_sql(d, &format!("{prefix}order_history"), "order_id", 1),
        close_sql(d, &format!("{prefix}customer_history"), "customer_id", 2),
        order_versions_sql(d, prefix, 3),
        customer_versions_sql(d, prefix, 4),
        orders_sql(d, prefix, 5),
        customers_sql(d, prefix, 6),
        totals_sql(d, prefix, 7),
        renamed_sql(d, prefix, 8, Some(5)),
        crate::control::save_checkpoints_sql(d, 9),
        close_sql(d, &format!("{prefix}payment_history"), "payment_id", 10),
        payment_versions_sql(d, prefix, 11),
        payments_sql(d, prefix, 12),
        close_sql(d, &format!("{prefix}saga_history"), "order_id", 13),
        saga_versions_sql(d, prefix, 14),
        sagas_sql(d, prefix, WRITE_POSTGRES_PARAMS),
    ];
    let with: Vec<String> = parts
        .iter()
        .enumerate()
        .map(|(i, part)| format!("w{i} AS ({part})"))
        .collect();
    format!("WITH {} SELECT 1", with.join(", "))
}

/// Runs `sql` once per chunk of [`MAX_ROWS`] items, bound to the chunk's rows.
async fn run_chunked<T>(
    conn: &mut AnyConnection,
    sql: &str,
    items: &[T],
    rows: impl Fn(&[T]) -> String,
) -> Result<(), ProjectionError> {
    for chunk in items.chunks(MAX_ROWS) {
        query(sql.to_owned()).bind(rows(chunk)).execute(&mut *conn).await?;
    }
    Ok(())
}

/// The fields of a close ([`close_rows`]) with their PostgreSQL types.
const CLOSE_FIELDS: &[(&str, &str)] = &[("id", "TEXT"), ("position", "BIGINT"), ("at_us", "BIGINT")];
/// The fields of a renamed customer ([`renamed_rows`]) with their PostgreSQL types.
const RENAMED_FIELDS: &[(&str, &str)] = &[("id", "TEXT"), ("name", "TEXT"), ("email", "TEXT")];

/// Closes the open version of each id: `valid_to` = the position and time of the event that
/// superseded it. Rows: [`close_rows`].
fn close_sql(d: Dialect, table: &str, id_column: &str, param: usize) -> String {
    format!(
        "UPDATE {table} SET valid_to_position = r.position, valid_to_us = r.at_us FROM {} \
          WHERE {table}.{id_column} = r.id AND {table}.valid_to_position IS NULL{}",
        typed_rows(d, CLOSE_FIELDS, param),
        and_id_in_rows(d, &format!("{table}.{id_column}"), param),
    )
}

fn close_rows(closes: &[(Uuid, (i64, i64))]) -> String {
    json_rows(closes, |(id, (position, at))| {
        [
            ("id", id.to_string().into()),
            ("position", (*position).into()),
            ("at_us", (*at).into()),
        ]
    })
}

fn order_versions_sql(d: Dialect, prefix: &str, param: usize) -> String {
    insert_rows(d, &format!("{prefix}order_history"), ORDER_HISTORY_COLUMNS, param, "")
}

/// An order's row in `orders`, keyed by column; with its validity, a row of `order_history`.
fn order_fields(o: &OrderState) -> [(&'static str, Json); 22] {
    [
        ("order_id", o.order_id.to_string().into()),
        ("customer_id", o.customer_id.to_string().into()),
        ("customer_name", o.customer_name.as_str().into()),
        ("customer_email", o.customer_email.as_str().into()),
        ("snapshot_name", o.snapshot_name.as_str().into()),
        ("snapshot_email", o.snapshot_email.as_str().into()),
        ("status", o.status.as_str().into()),
        ("item_count", o.item_count.into()),
        ("total_minor", o.total_minor.into()),
        ("currency", o.currency.as_str().into()),
        ("placed_at_us", o.placed_at_us.into()),
        ("confirmed_at_us", o.confirmed_at_us.into()),
        ("shipped_at_us", o.shipped_at_us.into()),
        ("delivered_at_us", o.delivered_at_us.into()),
        ("cancelled_at_us", o.cancelled_at_us.into()),
        ("cancel_reason", o.cancel_reason.as_deref().into()),
        ("carrier", o.carrier.as_deref().into()),
        ("tracking", o.tracking.as_deref().into()),
        ("stream_version", o.stream_version.into()),
        ("last_position", o.last_position.into()),
        ("updated_at_us", o.updated_at_us.into()),
        ("cancel_reason_code", o.cancel_reason_code.as_deref().into()),
    ]
}

/// `valid_from_*` and `valid_to_*` of a history row.
fn validity(from: (i64, i64), to: Option<(i64, i64)>) -> [(&'static str, Json); 4] {
    [
        ("valid_from_position", from.0.into()),
        ("valid_from_us", from.1.into()),
        ("valid_to_position", to.map(|to| to.0).into()),
        ("valid_to_us", to.map(|to| to.1).into()),
    ]
}

fn order_version_rows(versions: &[OrderVersion]) -> String {
    json_rows(versions, |version| {
        order_fields(&version.order)
            .into_iter()
            .chain(validity(version.valid_from, version.valid_to))
    })
}

pub(super) async fn insert_order_versions(
    conn: &mut AnyConnection,
    prefix: &str,
    versions: &[OrderVersion],
) -> Result<(), ProjectionError> {
    let sql = order_versions_sql(Dialect::of(conn), prefix, 1);
    run_chunked(conn, &sql, versions, order_version_rows).await
}

fn customer_versions_sql(d: Dialect, prefix: &str, param: usize) -> String {
    insert_rows(
        d,
        &format!("{prefix}customer_history"),
        CUSTOMER_HISTORY_COLUMNS,
        param,
        "",
    )
}

fn customer_version_rows(versions: &[CustomerVersion]) -> String {
    json_rows(versions, |version| {
        let fields = [
            ("customer_id", version.customer_id.to_string().into()),
            ("stream_version", version.stream_version.into()),
            ("name", version.name.as_str().into()),
            ("email", version.email.as_str().into()),
        ];
        fields.into_iter().chain(validity(version.valid_from, version.valid_to))
    })
}

pub(super) async fn insert_customer_versions(
    conn: &mut AnyConnection,
    prefix: &str,
    versions: &[CustomerVersion],
) -> Result<(), ProjectionError> {
    let sql = customer_versions_sql(Dialect::of(conn), prefix, 1);
    run_chunked(conn, &sql, versions, customer_version_rows).await
}

fn payment_versions_sql(d: Dialect, prefix: &str, param: usize) -> String {
    insert_rows(
        d,
        &format!("{prefix}payment_history"),
        PAYMENT_HISTORY_COLUMNS,
        param,
        "",
    )
}

/// A payment's row in `payments`, keyed by column (but its `stream_version`, `last_position`
/// and `updated_at_us`, which a history row has as its validity); with its validity, a row of
/// `payment_history`.
fn payment_fields(p: &PaymentState) -> [(&'static str, Json); 10] {
    [
        ("payment_id", p.payment_id.to_string().into()),
        ("order_id", p.order_id.to_string().into()),
        ("status", p.status.as_str().into()),
        ("currency", p.currency.as_deref().into()),
        ("authorized_minor", p.authorized_minor.into()),
        ("captured_minor", p.captured_minor.into()),
        ("refunded_minor", p.refunded_minor.into()),
        ("reason", p.reason.as_deref().into()),
        ("started_position", p.started_position.into()),
        ("stream_version", p.stream_version.into()),
    ]
}

fn payment_version_rows(versions: &[PaymentVersion]) -> String {
    json_rows(versions, |version| {
        payment_fields(&version.payment)
            .into_iter()
            .chain(validity(version.valid_from, version.valid_to))
    })
}

pub(super) async fn insert_payment_versions(
    conn: &mut AnyConnection,
    prefix: &str,
    versions: &[PaymentVersion],
) -> Result<(), ProjectionError> {
    let sql = payment_versions_sql(Dialect::of(conn), prefix, 1);
    run_chunked(conn, &sql, versions, payment_version_rows).await
}

fn saga_versions_sql(d: Dialect, prefix: &str, param: usize) -> String {
    insert_rows(d, &format!("{prefix}saga_history"), SAGA_HISTORY_COLUMNS, param, "")
}

fn saga_version_rows(versions: &[SagaVersion]) -> String {
    json_rows(versions, |version| {
        let fields = [
            ("order_id", version.order_id.to_string().into()),
            ("stream_version", version.stream_version.into()),
            ("state", version.state.as_str().into()),
        ];
        fields.into_iter().chain(validity(version.valid_from, version.valid_to))
    })
}

pub(super) async fn insert_saga_versions(
    conn: &mut AnyConnection,
    prefix: &str,
    versions: &[SagaVersion],
) -> Result<(), ProjectionError> {
    let sql = saga_versions_sql(Dialect::of(conn), prefix, 1);
    run_chunked(conn, &sql, versions, saga_version_rows).await
}

fn sagas_sql(d: Dialect, prefix: &str, param: usize) -> String {
    upsert_sql(d, &format!("{prefix}sagas"), SAGA_COLUMNS, param)
}

fn saga_rows(sagas: &[&SagaProgress]) -> String {
    json_rows(sagas, |g| {
        [
            ("order_id", g.order_id.to_string().into()),
            ("state", g.state.as_str().into()),
            ("line_count", g.line_count.into()),
            ("lines_reserved", g.lines_reserved.into()),
            ("authorized", i64::from(g.authorized).into()),
            ("confirmed", i64::from(g.confirmed).into()),
            ("failed", i64::from(g.failed).into()),
            ("parked", i64::from(g.parked).into()),
            ("completed", i64::from(g.completed).into()),
            ("stream_version", g.stream_version.into()),
            ("last_position", g.last_position.into()),
            ("updated_at_us", g.updated_at_us.into()),
        ]
    })
}

pub(super) async fn upsert_sagas(
    conn: &mut AnyConnection,
    prefix: &str,
    sagas: &[&SagaProgress],
) -> Result<(), ProjectionError> {
    let sql = sagas_sql(Dialect::of(conn), prefix, 1);
    run_chunked(conn, &sql, sagas, saga_rows).await
}

fn payments_sql(d: Dialect, prefix: &str, param: usize) -> String {
    upsert_sql(d, &format!("{prefix}payments"), PAYMENT_COLUMNS, param)
}

fn payment_rows(payments: &[&PaymentState]) -> String {
    json_rows(payments, |p| {
        payment_fields(p).into_iter().chain([
            ("last_position", p.last_position.into()),
            ("updated_at_us", p.updated_at_us.into()),
        ])
    })
}

pub(super) async fn upsert_payments(
    conn: &mut AnyConnection,
    prefix: &str,
    payments: &[&PaymentState],
) -> Result<(), ProjectionError> {
    let sql = payments_sql(Dialect::of(conn), prefix, 1);
    run_chunked(conn, &sql, payments, payment_rows).await
}

/// An upsert of parameter `param`'s rows that sets every column but the key.
fn upsert_sql(d: Dialect, table: &str, columns: &str, param: usize) -> String {
    let mut names = names(columns);
    let key = names.next().unwrap_or_default();
    let set: Vec<String> = names.map(|column| format!("{column} = excluded.{column}")).collect();
    insert_rows(
        d,
        table,
        columns,
        param,
        &format!("WHERE true ON CONFLICT ({key}) DO UPDATE SET {}", set.join(", ")),
    )
}

fn orders_sql(d: Dialect, prefix: &str, param: usize) -> String {
    upsert_sql(d, &format!("{prefix}orders"), ORDER_COLUMNS, param)
}

fn order_rows(orders: &[&OrderState]) -> String {
    json_rows(orders, |o| order_fields(o))
}

pub(super) async fn upsert_orders(
    conn: &mut AnyConnection,
    prefix: &str,
    orders: &[&OrderState],
) -> Result<(), ProjectionError> {
    let sql = orders_sql(Dialect::of(conn), prefix, 1);
    run_chunked(conn, &sql, orders, order_rows).await
}

fn customers_sql(d: Dialect, prefix: &str, param: usize) -> String {
    upsert_sql(d, &format!("{prefix}customers"), CUSTOMER_COLUMNS, param)
}

fn customer_rows(customers: &[&CustomerState]) -> String {
    json_rows(customers, |c| {
        [
            ("customer_id", c.customer_id.to_string().into()),
            ("name", c.name.as_str().into()),
            ("email", c.email.as_str().into()),
            ("stream_version", c.stream_version.into()),
            ("last_position", c.last_position.into()),
            ("order_count", c.order_count.into()),
            ("last_order_id", c.last_order_id.map(|id| id.to_string()).into()),
            ("last_order_at_us", c.last_order_at_us.into()),
            ("last_order_position", c.last_order_position.into()),
        ]
    })
}

pub(super) async fn upsert_customers(
    conn: &mut AnyConnection,
    prefix: &str,
    customers: &[&CustomerState],
) -> Result<(), ProjectionError> {
    let sql = customers_sql(Dialect::of(conn), prefix, 1);
    run_chunked(conn, &sql, customers, customer_rows).await
}

/// Adds the batch's deltas to `customer_totals`. Deltas, not values: each event that produced
/// one applied exactly once (the stream-version guard), so adding is safe and needs no read.
fn totals_sql(d: Dialect, prefix: &str, param: usize) -> String {
    let table = format!("{prefix}customer_totals");
    insert_rows(
        d,
        &table,
        TOTALS_COLUMNS,
        param,
        &format!(
            "WHERE true ON CONFLICT (customer_id, currency) DO UPDATE SET \
                order_count = {table}.order_count + excluded.order_count, \
                lifetime_value_minor = {table}.lifetime_value_minor + excluded.lifetime_value_minor"
        ),
    )
}

fn total_rows(deltas: &[(&TotalKey, &(i64, i64))]) -> String {
    json_rows(deltas, |((customer_id, currency), (count, value))| {
        [
            ("customer_id", customer_id.to_string().into()),
            ("currency", currency.as_str().into()),
            ("order_count", (*count).into()),
            ("lifetime_value_minor", (*value).into()),
        ]
    })
}

pub(super) async fn add_totals(
    conn: &mut AnyConnection,
    prefix: &str,
    deltas: &[(&TotalKey, &(i64, i64))],
) -> Result<(), ProjectionError> {
    let sql = totals_sql(Dialect::of(conn), prefix, 1);
    run_chunked(conn, &sql, deltas, total_rows).await
}

/// Sets the current name and email on the stored orders of each renamed customer ([`Writes`]),
/// but for the orders upserted from parameter `except` (PostgreSQL's one statement).
fn renamed_sql(d: Dialect, prefix: &str, param: usize, except: Option<usize>) -> String {
    let table = format!("{prefix}orders");
    let except = except.map_or(String::new(), |except| {
        format!(
            " AND {table}.order_id NOT IN (SELECT x.order_id FROM jsonb_populate_recordset(NULL::{table}, CAST(${except} AS JSONB)) AS x)"
        )
    });
    format!(
        "UPDATE {table} SET customer_name = r.name, customer_email = r.email FROM {} WHERE {table}.customer_id = r.id{}{except}",
        typed_rows(d, RENAMED_FIELDS, param),
        and_id_in_rows(d, &format!("{table}.customer_id"), param),
    )
}

fn renamed_rows(customers: &[&CustomerState]) -> String {
    json_rows(customers, |c| {
        [
            ("id", c.customer_id.to_string().into()),
            ("name", c.name.as_str().into()),
            ("email", c.email.as_str().into()),
        ]
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// The names of `columns` that the first row of `rows` has no key for: a statement takes its
    /// columns by name, and a missing one would be NULL.
    fn missing_columns(rows: &str, columns: &str) -> BTreeSet<String> {
        let parsed: serde_json::Value = serde_json::from_str(rows).expect("rows are JSON");
        let row = parsed[0].as_object().expect("a row is an object");
        names(columns)
            .filter(|c| !row.contains_key(*c))
            .map(str::to_owned)
            .collect()
    }

    fn field_names(fields: &[(&str, &str)]) -> String {
        fields.iter().map(|(name, _)| *name).collect::<Vec<_>>().join(", ")
    }

    fn order() -> OrderState {
        OrderState {
            order_id: Uuid::from_u128(1),
            customer_id: Uuid::from_u128(2),
            customer_name: "Ann".into(),
            customer_email: "ann@example.com".into(),
            snapshot_name: "Ann".into(),
            snapshot_email: "ann@example.com".into(),
            status: OrderStatus::Pending,
            item_count: 1,
            total_minor: 100,
            currency: "EUR".into(),
            placed_at_us: 1,
            confirmed_at_us: None,
            shipped_at_us: None,
            delivered_at_us: None,
            cancelled_at_us: None,
            cancel_reason: None,
            carrier: None,
            tracking: None,
            stream_version: 1,
            last_position: 1,
            updated_at_us: 1,
            cancel_reason_code: Some("requested".into()),
        }
    }

    fn saga() -> SagaProgress {
        SagaProgress {
            order_id: Uuid::from_u128(1),
            state: SagaState::Authorizing,
            line_count: 1,
            lines_reserved: 1,
            authorized: false,
            confirmed: false,
            failed: false,
            parked: false,
            completed: false,
            stream_version: 2,
            last_position: 2,
            updated_at_us: 2,
        }
    }

    fn customer() -> CustomerState {
        CustomerState {
            customer_id: Uuid::from_u128(2),
            name: "Ann".into(),
            email: "ann@example.com".into(),
            stream_version: 1,
            last_position: 1,
            order_count: 0,
            last_order_id: None,
            last_order_at_us: None,
            last_order_position: None,
        }
    }

    fn payment() -> PaymentState {
        PaymentState {
            payment_id: Uuid::from_u128(3),
            order_id: Uuid::from_u128(1),
            status: PaymentStatus::Captured,
            currency: Some("EUR".into()),
            authorized_minor: 100,
            captured_minor: 100,
            refunded_minor: 30,
            reason: None,
            started_position: 1,
            stream_version: 2,
            last_position: 2,
            updated_at_us: 2,
        }
    }

    /// What in a plan (PostgreSQL's `EXPLAIN (FORMAT JSON)`) reads a table or index whole: a
    /// sequential scan, or an index scan without an index condition.
    fn whole_reads(plan: &serde_json::Value, found: &mut Vec<String>) {
        let kind = plan["Node Type"].as_str().unwrap_or_default();
        let on = plan["Relation Name"]
            .as_str()
            .or(plan["Index Name"].as_str())
            .unwrap_or_default();
        let whole = match kind {
            "Seq Scan" => true,
            "Index Scan" | "Index Only Scan" | "Bitmap Index Scan" => plan.get("Index Cond").is_none(),
            _ => false,
        };
        if whole {
            found.push(format!("{kind} {on}"));
        }
        for child in plan["Plans"].as_array().into_iter().flatten() {
            whole_reads(child, found);
        }
    }

    /// Each statement of an apply is planned once per connection, maybe while the tables are
    /// small or empty; its plan must still read only the batch's rows once they have grown. So:
    /// the generic plan of every statement, made with the statistics of a few hundred orders
    /// and no customer history, inside an apply's transaction (after [`lock_sql`]), reads no
    /// table or index whole. (Without the index conditions it found five: both loads, both
    /// closes and the renamed customers' orders each read a whole index.)
    #[tokio::test]
    async fn apply_statements_reach_rows_by_key() -> anyhow::Result<()> {
        use crate::Projection;
        use crate::dashboard::{OrderDashboard, table_prefix};

        let database = testkit::postgres::fresh_database().await;
        let db = crate::ReadDb::connect(&database.url, 2).await?;
        db.migrate().await?;
        OrderDashboard::new(db.clone(), 1).prepare().await?;
        let prefix = table_prefix(1);

        let customers: Vec<CustomerState> = (0..30)
            .map(|i| CustomerState {
                customer_id: Uuid::from_u128(10_000 + i),
                ..customer()
            })
            .collect();
        let orders: Vec<OrderState> = (0..300)
            .map(|i| OrderState {
                order_id: Uuid::from_u128(i),
                customer_id: customers[i as usize % customers.len()].customer_id,
                ..order()
            })
            .collect();
        let versions: Vec<OrderVersion> = orders
            .iter()
            .map(|o| OrderVersion {
                order: o.clone(),
                valid_from: (1, 1),
                valid_to: None,
            })
            .collect();
        let payments: Vec<PaymentState> = orders
            .iter()
            .enumerate()
            .map(|(i, o)| PaymentState {
                payment_id: Uuid::from_u128(20_000 + i as u128),
                order_id: o.order_id,
                ..payment()
            })
            .collect();
        let payment_versions: Vec<PaymentVersion> = payments
            .iter()
            .map(|p| PaymentVersion {
                payment: p.clone(),
                valid_from: (1, 1),
                valid_to: None,
            })
            .collect();
        let sagas: Vec<SagaProgress> = orders
            .iter()
            .map(|o| SagaProgress {
                order_id: o.order_id,
                ..saga()
            })
            .collect();
        let saga_versions: Vec<SagaVersion> = sagas.iter().map(|g| SagaVersion::of(g, None)).collect();
        let mut tx = db.begin_write().await?;
        upsert_customers(&mut tx, &prefix, &customers.iter().collect::<Vec<_>>()).await?;
        upsert_orders(&mut tx, &prefix, &orders.iter().collect::<Vec<_>>()).await?;
        insert_order_versions(&mut tx, &prefix, &versions).await?;
        upsert_payments(&mut tx, &prefix, &payments.iter().collect::<Vec<_>>()).await?;
        insert_payment_versions(&mut tx, &prefix, &payment_versions).await?;
        upsert_sagas(&mut tx, &prefix, &sagas.iter().collect::<Vec<_>>()).await?;
        insert_saga_versions(&mut tx, &prefix, &saga_versions).await?;
        tx.commit().await?;
        sqlx::raw_sql("ANALYZE").execute(db.pool()).await?;

        let d = Dialect::Postgres;
        let statements = [
            ("load orders", load_orders_sql(d, &prefix), 1),
            ("load customers", load_customers_sql(d, &prefix), 1),
            ("load payments", load_payments_sql(d, &prefix), 1),
            ("load sagas", load_sagas_sql(d, &prefix), 1),
            ("write", write_postgres_sql(&prefix), WRITE_POSTGRES_PARAMS),
        ];
        let pool = database.pool(1).await;
        let mut tx = pool.begin().await?;
        sqlx::raw_sql(AssertSqlSafe(lock_sql(true, &prefix)))
            .execute(&mut *tx)
            .await?;
        sqlx::raw_sql("SET LOCAL plan_cache_mode = force_generic_plan")
            .execute(&mut *tx)
            .await?;
        let mut found = Vec::new();
        for (i, (name, sql, params)) in statements.iter().enumerate() {
            let types = vec!["text"; *params].join(", ");
            sqlx::raw_sql(AssertSqlSafe(format!("PREPARE s{i} ({types}) AS {sql}")))
                .execute(&mut *tx)
                .await?;
            let empty = vec!["'[]'"; *params].join(", ");
            let (plan,): (sqlx::types::Json<serde_json::Value>,) =
                sqlx::query_as(AssertSqlSafe(format!("EXPLAIN (FORMAT JSON) EXECUTE s{i} ({empty})")))
                    .fetch_one(&mut *tx)
                    .await?;
            let mut whole = Vec::new();
            whole_reads(&plan.0[0]["Plan"], &mut whole);
            found.extend(whole.into_iter().map(|w| format!("{name}: {w}")));
        }
        assert_eq!(
            found,
            Vec::<String>::new(),
            "statements of an apply that read a table or index whole"
        );
        Ok(())
    }

    #[test]
    fn every_row_has_every_column_of_its_statement() {
        let none = BTreeSet::new();
        let o = order();
        let c = customer();
        assert_eq!(missing_columns(&order_rows(&[&o]), ORDER_COLUMNS), none);
        let version = OrderVersion {
            order: o,
            valid_from: (1, 1),
            valid_to: None,
        };
        assert_eq!(
            missing_columns(&order_version_rows(&[version]), ORDER_HISTORY_COLUMNS),
            none
        );
        assert_eq!(missing_columns(&customer_rows(&[&c]), CUSTOMER_COLUMNS), none);
        let version = CustomerVersion {
            customer_id: c.customer_id,
            stream_version: 1,
            name: "Ann".into(),
            email: "ann@example.com".into(),
            valid_from: (1, 1),
            valid_to: Some((2, 2)),
        };
        assert_eq!(
            missing_columns(&customer_version_rows(&[version]), CUSTOMER_HISTORY_COLUMNS),
            none
        );
        let key = (c.customer_id, "EUR".to_owned());
        assert_eq!(missing_columns(&total_rows(&[(&key, &(1, 100))]), TOTALS_COLUMNS), none);
        assert_eq!(
            missing_columns(&close_rows(&[(c.customer_id, (1, 1))]), &field_names(CLOSE_FIELDS)),
            none
        );
        assert_eq!(
            missing_columns(&renamed_rows(&[&c]), &field_names(RENAMED_FIELDS)),
            none
        );
        let p = payment();
        assert_eq!(missing_columns(&payment_rows(&[&p]), PAYMENT_COLUMNS), none);
        let version = PaymentVersion {
            payment: p,
            valid_from: (1, 1),
            valid_to: Some((2, 2)),
        };
        assert_eq!(
            missing_columns(&payment_version_rows(&[version]), PAYMENT_HISTORY_COLUMNS),
            none
        );
        let g = saga();
        assert_eq!(missing_columns(&saga_rows(&[&g]), SAGA_COLUMNS), none);
        let version = SagaVersion::of(&g, Some((3, 3)));
        assert_eq!(
            missing_columns(&saga_version_rows(&[version]), SAGA_HISTORY_COLUMNS),
            none
        );
    }
}
