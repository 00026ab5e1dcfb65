//! The dashboard's reads, for the read API: order lists with keyset pagination, one order, a
//! customer's summary, and the same "as of" a past position or time, answered from the history
//! tables; the list of customers, keyset-paginated by name. SELECT only; every value is a bound
//! parameter, only the generated table prefix (and fixed SQL text) is spliced in.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use sqlx::any::{AnyArguments, AnyRow};
use sqlx::{Any, AssertSqlSafe, Row};
use uuid::Uuid;

use super::table_prefix;
use super::write::{parse_payment_status, parse_saga_state, parse_status, parse_uuid};
use crate::{DbKind, ProjectionError, ReadDb, from_i64, from_micros, micros, to_i64};

/// The largest page [`list_orders`] answers.
pub const MAX_PAGE_LIMIT: u32 = 1_000;

/// What a read can fail with, and how the read API should answer.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// A request parameter is invalid (a malformed or foreign cursor, a limit out of range):
    /// the client's fault, 400.
    #[error("invalid {parameter}: {message}")]
    Invalid { parameter: &'static str, message: String },
    /// The read database failed: 503, the detail logged.
    #[error("read database")]
    Database(#[from] sqlx::Error),
    /// A stored row breaks the dashboard's assumptions (a bug or a hand edit): 500.
    #[error("inconsistent stored data: {0}")]
    Inconsistent(String),
}

impl From<ProjectionError> for QueryError {
    fn from(error: ProjectionError) -> Self {
        match error {
            ProjectionError::Database(e) => QueryError::Database(e),
            other => QueryError::Inconsistent(other.to_string()),
        }
    }
}

/// An order's lifecycle state. Stored as its lower-case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OrderStatus {
    /// Placed, not confirmed yet (the place-order saga confirms it, ADR 0010). Stored as
    /// `placed` by builds before the saga: such rows read as pending (see
    /// [`stored_names`](Self::stored_names)).
    Pending,
    Confirmed,
    Shipped,
    Delivered,
    Cancelled,
}

impl OrderStatus {
    pub const ALL: [Self; 5] = [
        Self::Pending,
        Self::Confirmed,
        Self::Shipped,
        Self::Delivered,
        Self::Cancelled,
    ];

    /// The stored and serialized name: never rename.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Confirmed => "confirmed",
            Self::Shipped => "shipped",
            Self::Delivered => "delivered",
            Self::Cancelled => "cancelled",
        }
    }
}

/// What builds before the place-order saga stored for [`OrderStatus::Pending`]: rows they wrote
/// may still hold it, until the order's next event or a rebuild.
pub(crate) const LEGACY_PENDING: &str = "placed";

impl OrderStatus {
    /// Every name a stored row of this status may hold: [`as_str`](Self::as_str), and for
    /// `Pending` also [`LEGACY_PENDING`]. A filter matches all of them.
    pub(crate) const fn stored_names(self) -> &'static [&'static str] {
        match self {
            Self::Pending => &["pending", LEGACY_PENDING],
            Self::Confirmed => &["confirmed"],
            Self::Shipped => &["shipped"],
            Self::Delivered => &["delivered"],
            Self::Cancelled => &["cancelled"],
        }
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no [`OrderStatus`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an order status (pending, confirmed, shipped, delivered, cancelled)")]
pub struct UnknownStatus(pub String);

impl FromStr for OrderStatus {
    type Err = UnknownStatus;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == name)
            .ok_or_else(|| UnknownStatus(name.to_owned()))
    }
}

/// Where an order's payment stands: the status of the payment the dashboard shows for it (see
/// [`OrderRow::payment_status`]). Stored as its lower-case name (`none` is never stored: it is
/// an order without any payment).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PaymentStatus {
    /// No payment recorded for the order (yet).
    None,
    /// An amount is reserved, nothing collected yet.
    Authorized,
    /// Collected; possibly partly refunded (`refunded_minor` > 0 but less than
    /// `captured_minor`).
    Captured,
    /// Everything captured was paid back.
    Refunded,
    /// The provider refused the payment.
    Declined,
    /// The authorization was released without collecting it (or the payment was voided before
    /// any authorization).
    Voided,
}

impl PaymentStatus {
    pub const ALL: [Self; 6] = [
        Self::None,
        Self::Authorized,
        Self::Captured,
        Self::Refunded,
        Self::Declined,
        Self::Voided,
    ];

    /// The stored and serialized name: never rename.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Authorized => "authorized",
            Self::Captured => "captured",
            Self::Refunded => "refunded",
            Self::Declined => "declined",
            Self::Voided => "voided",
        }
    }
}

impl fmt::Display for PaymentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PaymentStatus {
    type Err = UnknownStatus;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == name)
            .ok_or_else(|| UnknownStatus(name.to_owned()))
    }
}

/// Where an order's place-order saga stands (ADR 0010), as the saga's own events
/// (`saga-{order id}`) tell it; [`OrderRow::saga_state`] is `None` for an order without a saga
/// (placed before the saga existed, or whose saga's events the version has not seen).
/// Stored and serialized as its snake_case name.
///
/// The mapping from the events (the write side's `Saga::phase`), first match wins:
/// - `completed`: `saga.completed` recorded (nothing left to do), and no stock reservation or
///   payment authorization recorded after a failure since (that gives the compensation work
///   again);
/// - `parked`: `saga.parked` recorded, and neither `saga.resumed` nor `saga.failed` since (an
///   operator's abandon fails it);
/// - `compensating`: `saga.failed` recorded (a refusal, a deadline, a client's cancellation, an
///   operator's abandon): it voids or refunds, releases the stock, cancels the order;
/// - `reserving`: fewer `saga.stock_reserved` than the lines of `saga.started`;
/// - `authorizing`: every line reserved, no `saga.payment_authorized` yet;
/// - `confirming`: authorized, no `saga.confirmed` yet;
/// - `awaiting_shipment`: confirmed; it captures the payment once the order ships, then
///   completes.
///
/// The other events (`saga.stock_released`, `saga.payment_voided`, `saga.payment_captured`,
/// `saga.payment_refunded`, `saga.order_cancelled`) are steps within a phase and change none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SagaState {
    Reserving,
    Authorizing,
    Confirming,
    AwaitingShipment,
    Compensating,
    Parked,
    Completed,
}

impl SagaState {
    pub const ALL: [Self; 7] = [
        Self::Reserving,
        Self::Authorizing,
        Self::Confirming,
        Self::AwaitingShipment,
        Self::Compensating,
        Self::Parked,
        Self::Completed,
    ];

    /// The stored and serialized name: never rename.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Reserving => "reserving",
            Self::Authorizing => "authorizing",
            Self::Confirming => "confirming",
            Self::AwaitingShipment => "awaiting_shipment",
            Self::Compensating => "compensating",
            Self::Parked => "parked",
            Self::Completed => "completed",
        }
    }

    /// The state stored as `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.as_str() == name)
    }
}

impl fmt::Display for SagaState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One order as the dashboard shows it. Money is integer minor units of `currency`.
///
/// The `payment_*` fields and the amounts are those of the order's payment: of the payments
/// recorded for the order (each a payment stream of the payments service), the one that holds
/// or held money (authorized, captured or refunded) before one that failed (declined or
/// voided), and among those the one started latest in the payments log. With no payment they
/// are `none`, null and 0. They come from the payments' own streams: `stream_version`,
/// `last_position` and `updated_at` stay the order's.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OrderRow {
    pub order_id: Uuid,
    pub customer_id: Uuid,
    /// The customer's current name (or, as of a past point, the name then); the order's own
    /// snapshot while the customer's stream has not been seen.
    pub customer_name: String,
    pub customer_email: String,
    pub status: OrderStatus,
    /// The sum of the lines' quantities.
    pub item_count: i64,
    pub total_minor: i64,
    pub currency: String,
    pub placed_at: DateTime<Utc>,
    pub confirmed_at: Option<DateTime<Utc>>,
    pub shipped_at: Option<DateTime<Utc>>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub cancelled_at: Option<DateTime<Utc>>,
    pub cancel_reason: Option<String>,
    /// Why the order was cancelled, stable (one of [`crate::REASON_CODES`]: `requested`,
    /// `out_of_stock`, `payment_declined`, `payment_unavailable`, `timed_out`, `abandoned`);
    /// `None` when it is not cancelled, or its cancellation was recorded without a code (before
    /// the saga). Beside `cancel_reason`, the free text for people.
    pub reason_code: Option<String>,
    pub carrier: Option<String>,
    pub tracking: Option<String>,
    /// Where the order's place-order saga stands ([`SagaState`]); `None` without a saga.
    pub saga_state: Option<SagaState>,
    /// When the store recorded the saga's last event; `None` without a saga.
    pub saga_updated_at: Option<DateTime<Utc>>,
    /// The status of the order's payment; `none` without any.
    pub payment_status: PaymentStatus,
    /// The payment shown (a payment stream's id); null without any.
    pub payment_id: Option<Uuid>,
    /// The currency of the payment's amounts (its authorization's); null without any payment or
    /// before an authorization (declined, or voided before it).
    pub payment_currency: Option<String>,
    /// The amount the payment's authorization reserved (kept once captured or voided).
    pub authorized_minor: i64,
    /// The amount collected.
    pub captured_minor: i64,
    /// The amount paid back, in one or more refunds.
    pub refunded_minor: i64,
    /// Why the payment was declined or voided; null in the other statuses.
    pub payment_reason: Option<String>,
    /// When the store recorded the payment's last event; null without any payment.
    pub payment_updated_at: Option<DateTime<Utc>>,
    /// How many payments were recorded for the order (failed attempts included).
    pub payment_count: u64,
    /// The order stream's version this row reflects.
    pub stream_version: u64,
    /// The global position of that version's event.
    pub last_position: u64,
    /// When the store recorded that event.
    pub updated_at: DateTime<Utc>,
}

/// A customer's lifetime value in one currency.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CurrencyTotal {
    pub currency: String,
    /// Orders placed in this currency, cancelled or not.
    pub order_count: u64,
    /// The totals of those orders that are not cancelled, in minor units.
    pub lifetime_value_minor: i64,
}

/// A customer's most recent order (by global position).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LastOrder {
    pub order_id: Uuid,
    pub placed_at: DateTime<Utc>,
}

/// What the dashboard knows about a customer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CustomerSummary {
    pub customer_id: Uuid,
    pub name: String,
    pub email: String,
    /// The customer stream's version applied; 0 while the customer is only known from the
    /// snapshots of its orders.
    pub stream_version: u64,
    /// Every order placed, cancelled or not.
    pub order_count: u64,
    /// Per currency, sorted by currency code.
    pub lifetime_value: Vec<CurrencyTotal>,
    pub last_order: Option<LastOrder>,
}

/// Which orders a list holds. `placed_from` is inclusive, `placed_to` exclusive.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrderFilter {
    pub status: Option<OrderStatus>,
    /// Orders cancelled with this reason code ([`OrderRow::reason_code`]).
    pub reason_code: Option<String>,
    pub customer_id: Option<Uuid>,
    pub placed_from: Option<DateTime<Utc>>,
    pub placed_to: Option<DateTime<Utc>>,
}

/// The key a list is sorted by; ties are broken by order id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SortKey {
    PlacedAt,
    Total,
}

impl SortKey {
    const fn column(self) -> &'static str {
        match self {
            SortKey::PlacedAt => "placed_at_us",
            SortKey::Total => "total_minor",
        }
    }

    /// The row's value of this key, as stored.
    fn value(self, row: &OrderRow) -> i64 {
        match self {
            SortKey::PlacedAt => micros(row.placed_at),
            SortKey::Total => row.total_minor,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    Asc,
    Desc,
}

/// How a list is sorted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sort {
    pub key: SortKey,
    pub direction: Direction,
}

impl Default for Sort {
    /// Newest first.
    fn default() -> Self {
        Sort {
            key: SortKey::PlacedAt,
            direction: Direction::Desc,
        }
    }
}

/// Where the next page starts: after the row with this sort value and order id. Opaque to
/// clients: [`Cursor::encode`] gives a URL-safe string that [`Cursor::decode`] reads back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cursor {
    pub sort: Sort,
    pub value: i64,
    pub order_id: Uuid,
}

impl Cursor {
    /// Hex of `{key}{direction}:{value}:{order id}`, e.g. `pd:1700000000000000:67e5...`.
    pub fn encode(&self) -> String {
        let key = match self.sort.key {
            SortKey::PlacedAt => 'p',
            SortKey::Total => 't',
        };
        let direction = match self.sort.direction {
            Direction::Asc => 'a',
            Direction::Desc => 'd',
        };
        let plain = format!("{key}{direction}:{}:{}", self.value, self.order_id.simple());
        plain.bytes().map(|byte| format!("{byte:02x}")).collect()
    }

    /// Reads a cursor made by [`encode`](Self::encode); anything else is
    /// [`QueryError::Invalid`].
    pub fn decode(text: &str) -> Result<Self, QueryError> {
        let invalid = |message: &str| QueryError::Invalid {
            parameter: "cursor",
            message: message.to_owned(),
        };
        if text.len() > 256 || !text.len().is_multiple_of(2) {
            return Err(invalid("not a cursor from this API"));
        }
        let bytes = (0..text.len())
            .step_by(2)
            .map(|i| text.get(i..i + 2).and_then(|pair| u8::from_str_radix(pair, 16).ok()))
            .collect::<Option<Vec<u8>>>()
            .ok_or_else(|| invalid("not a cursor from this API"))?;
        let plain = String::from_utf8(bytes).map_err(|_| invalid("not a cursor from this API"))?;
        let mut parts = plain.split(':');
        let (Some(sort), Some(value), Some(order_id), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid("not a cursor from this API"));
        };
        let key = match sort.get(..1) {
            Some("p") => SortKey::PlacedAt,
            Some("t") => SortKey::Total,
            _ => return Err(invalid("unknown sort")),
        };
        let direction = match sort.get(1..) {
            Some("a") => Direction::Asc,
            Some("d") => Direction::Desc,
            _ => return Err(invalid("unknown sort direction")),
        };
        Ok(Cursor {
            sort: Sort { key, direction },
            value: value.parse().map_err(|_| invalid("bad sort value"))?,
            order_id: Uuid::try_parse(order_id).map_err(|_| invalid("bad order id"))?,
        })
    }
}

/// One page of a list, and the cursor of the next one (`None`: this is the last page).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Page {
    pub rows: Vec<OrderRow>,
    pub next_cursor: Option<String>,
}

/// A past point of the log: everything up to and including this global position, or
/// everything the store had recorded at this time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsOf {
    /// A position of the orders log.
    Position(u64),
    Time(DateTime<Utc>),
}

/// A statement being built: its text and its bound values.
#[derive(Default)]
struct Statement {
    sql: String,
    binds: Vec<Bind>,
}

enum Bind {
    Int(i64),
    Text(String),
}

impl Statement {
    /// Binds a value and answers its placeholder.
    fn param(&mut self, bind: Bind) -> String {
        self.binds.push(bind);
        format!("${}", self.binds.len())
    }

    async fn fetch_all(self, db: &ReadDb) -> Result<Vec<AnyRow>, sqlx::Error> {
        let mut query: sqlx::query::Query<'static, Any, AnyArguments> = sqlx::query(AssertSqlSafe(self.sql));
        for bind in self.binds {
            query = match bind {
                Bind::Int(value) => query.bind(value),
                Bind::Text(value) => query.bind(value),
            };
        }
        query.fetch_all(db.pool()).await
    }
}

/// The order columns in the order [`order_from_row`] reads them, from the current table `o`.
const CURRENT_SELECT: &str = "o.order_id, o.customer_id, o.customer_name, o.customer_email, o.status, o.item_count, \
     o.total_minor, o.currency, o.placed_at_us, o.confirmed_at_us, o.shipped_at_us, o.delivered_at_us, \
     o.cancelled_at_us, o.cancel_reason, o.carrier, o.tracking, o.stream_version, o.last_position, o.updated_at_us, \
     o.cancel_reason_code";

/// The same from the history table `o` joined with the customer's version `c` at that point,
/// named as [`CURRENT_SELECT`]'s columns.
const HISTORY_SELECT: &str = "o.order_id, o.customer_id, COALESCE(c.name, o.snapshot_name) AS customer_name, \
     COALESCE(c.email, o.snapshot_email) AS customer_email, o.status, o.item_count, o.total_minor, o.currency, \
     o.placed_at_us, o.confirmed_at_us, o.shipped_at_us, o.delivered_at_us, o.cancelled_at_us, o.cancel_reason, \
     o.carrier, o.tracking, o.stream_version, o.valid_from_position AS last_position, \
     o.valid_from_us AS updated_at_us, o.cancel_reason_code";

/// The payment columns in the order [`order_from_row`] reads them (after the order's), from
/// the chosen payment `p` (its current row, or its version then).
const PAYMENT_SELECT: &str =
    "p.payment_id, p.status, p.currency, p.authorized_minor, p.captured_minor, p.refunded_minor, p.reason";

fn time(micros: i64) -> Result<DateTime<Utc>, QueryError> {
    from_micros(micros).ok_or_else(|| QueryError::Inconsistent(format!("stored time {micros} out of range")))
}

fn optional_time(micros: Option<i64>) -> Result<Option<DateTime<Utc>>, QueryError> {
    micros.map(time).transpose()
}

fn order_from_row(row: &AnyRow) -> Result<OrderRow, QueryError> {
    // After the order's columns (CURRENT_SELECT): the payment's (PAYMENT_SELECT, its time and
    // the count), then the saga's state and time (`with_joins`).
    const PAYMENT: usize = 20;
    const SAGA: usize = PAYMENT + 9;
    let payment_id = row
        .try_get::<Option<String>, _>(PAYMENT)?
        .map(|id| parse_uuid(&id))
        .transpose()?;
    let payment_status = match row.try_get::<Option<String>, _>(PAYMENT + 1)? {
        _ if payment_id.is_none() => PaymentStatus::None,
        Some(status) => parse_payment_status(&status)?,
        None => return Err(QueryError::Inconsistent("stored payment without a status".to_owned())),
    };
    let saga_state = row
        .try_get::<Option<String>, _>(SAGA)?
        .map(|state| parse_saga_state(&state))
        .transpose()?;
    Ok(OrderRow {
        order_id: parse_uuid(&row.try_get::<String, _>(0)?)?,
        customer_id: parse_uuid(&row.try_get::<String, _>(1)?)?,
        customer_name: row.try_get(2)?,
        customer_email: row.try_get(3)?,
        status: parse_status(&row.try_get::<String, _>(4)?)?,
        item_count: row.try_get(5)?,
        total_minor: row.try_get(6)?,
        currency: row.try_get(7)?,
        placed_at: time(row.try_get(8)?)?,
        confirmed_at: optional_time(row.try_get(9)?)?,
        shipped_at: optional_time(row.try_get(10)?)?,
        delivered_at: optional_time(row.try_get(11)?)?,
        cancelled_at: optional_time(row.try_get(12)?)?,
        cancel_reason: row.try_get(13)?,
        carrier: row.try_get(14)?,
        tracking: row.try_get(15)?,
        stream_version: from_i64(row.try_get(16)?),
        last_position: from_i64(row.try_get(17)?),
        updated_at: time(row.try_get(18)?)?,
        reason_code: row.try_get(19)?,
        saga_state,
        saga_updated_at: optional_time(row.try_get(SAGA + 1)?)?,
        payment_status,
        payment_id,
        payment_currency: row.try_get(PAYMENT + 2)?,
        authorized_minor: row.try_get::<Option<i64>, _>(PAYMENT + 3)?.unwrap_or(0),
        captured_minor: row.try_get::<Option<i64>, _>(PAYMENT + 4)?.unwrap_or(0),
        refunded_minor: row.try_get::<Option<i64>, _>(PAYMENT + 5)?.unwrap_or(0),
        payment_reason: row.try_get(PAYMENT + 6)?,
        payment_updated_at: optional_time(row.try_get(PAYMENT + 7)?)?,
        payment_count: from_i64(row.try_get(PAYMENT + 8)?),
    })
}

/// The rows of the orders (`SELECT ... FROM ... [WHERE ...]`, to which the caller adds its
/// conditions, order and limit): the current orders, or the order versions valid at `as_of`
/// with the customer's version valid then. Positions are per service: `AsOf::Position` is one
/// of the orders log, and the customers' log is taken as of that position's commit time: the
/// start of the newest order or saga version at or below it (the orders log holds both kinds of
/// stream, and its commit times never decrease; the newest order version alone is too early
/// when the position is a saga's event). Every row has [`CURRENT_SELECT`]'s columns, and "as of" also `as_of_us`, the
/// time the other services' logs are taken at ([`with_joins`]), and as of a position
/// `as_of_position`, the position itself (the place-order saga is in the orders log: its
/// versions are taken at the position). Ends with a `WHERE` clause when `as_of` is given.
fn from_clause(statement: &mut Statement, prefix: &str, as_of: Option<AsOf>) -> String {
    let Some(as_of) = as_of else {
        return format!("SELECT {CURRENT_SELECT} FROM {prefix}orders o");
    };
    let (from, to, point) = match as_of {
        AsOf::Position(position) => ("valid_from_position", "valid_to_position", Bind::Int(to_i64(position))),
        AsOf::Time(time) => ("valid_from_us", "valid_to_us", Bind::Int(micros(time))),
    };
    let point = statement.param(point);
    let at = match as_of {
        AsOf::Time(_) => point.clone(),
        AsOf::Position(_) => format!(
            "(SELECT MAX(t.us) FROM ( \
               SELECT (SELECT h.valid_from_us FROM {prefix}order_history h WHERE h.valid_from_position <= {point} \
                        ORDER BY h.valid_from_position DESC LIMIT 1) AS us \
               UNION ALL \
               SELECT (SELECT h.valid_from_us FROM {prefix}saga_history h WHERE h.valid_from_position <= {point} \
                        ORDER BY h.valid_from_position DESC LIMIT 1) AS us) t)"
        ),
    };
    let position = match as_of {
        AsOf::Position(_) => format!(", CAST({point} AS BIGINT) AS as_of_position"),
        AsOf::Time(_) => String::new(),
    };
    format!(
        "SELECT {HISTORY_SELECT}, CAST({at} AS BIGINT) AS as_of_us{position} FROM {prefix}order_history o \
           LEFT JOIN {prefix}customer_history c ON c.customer_id = o.customer_id \
                 AND c.valid_from_us <= {at} AND (c.valid_to_us IS NULL OR c.valid_to_us > {at}) \
          WHERE o.{from} <= {point} AND (o.{to} IS NULL OR o.{to} > {point})"
    )
}

/// `orders` (a whole statement of [`from_clause`]'s rows, named `o` here) with each order's
/// payment ([`OrderRow`] says which one) and payment count, and its saga's state, ordered by
/// `order_by` (orders' columns). The payments and sagas are joined after the orders' own
/// conditions, order and limit made the page: they are looked up for the rows answered only.
/// "As of", each payment's version valid at the row's `as_of_us`, and the saga's version valid
/// at the position (`as_of_position`) or time asked for.
fn with_joins(prefix: &str, orders: &str, as_of: Option<AsOf>, order_by: &str) -> String {
    let (table, updated) = if as_of.is_some() {
        ("payment_history", "valid_from_us")
    } else {
        ("payments", "updated_at_us")
    };
    let valid = |alias: &str| {
        if as_of.is_some() {
            format!(
                " AND {alias}.valid_from_us <= o.as_of_us AND ({alias}.valid_to_us IS NULL OR {alias}.valid_to_us > o.as_of_us)"
            )
        } else {
            String::new()
        }
    };
    let (sagas, saga_updated, saga_valid) = match as_of {
        None => ("sagas", "updated_at_us", String::new()),
        Some(AsOf::Position(_)) => (
            "saga_history",
            "valid_from_us",
            " AND s.valid_from_position <= o.as_of_position \
              AND (s.valid_to_position IS NULL OR s.valid_to_position > o.as_of_position)"
                .to_owned(),
        ),
        Some(AsOf::Time(_)) => ("saga_history", "valid_from_us", valid("s")),
    };
    format!(
        "SELECT {CURRENT_SELECT}, {PAYMENT_SELECT}, p.{updated}, \
                (SELECT count(*) FROM {prefix}{table} n WHERE n.order_id = o.order_id{}), \
                s.state, s.{saga_updated} \
           FROM ({orders}) o \
           LEFT JOIN {prefix}{table} p ON p.payment_id = ( \
                SELECT q.payment_id FROM {prefix}{table} q WHERE q.order_id = o.order_id{} \
                 ORDER BY CASE WHEN q.status IN ('declined', 'voided') THEN 1 ELSE 0 END, \
                          q.started_position DESC, q.payment_id DESC \
                 LIMIT 1){} \
           LEFT JOIN {prefix}{sagas} s ON s.order_id = o.order_id{saga_valid}{order_by}",
        valid("n"),
        valid("q"),
        valid("p"),
    )
}

/// The current row of an order.
pub async fn get_order(db: &ReadDb, version: u32, order_id: Uuid) -> Result<Option<OrderRow>, QueryError> {
    get(db, version, order_id, None).await
}

/// An order as it was at `as_of` (`None`: not placed yet then).
pub async fn get_order_as_of(
    db: &ReadDb,
    version: u32,
    order_id: Uuid,
    as_of: AsOf,
) -> Result<Option<OrderRow>, QueryError> {
    get(db, version, order_id, Some(as_of)).await
}

async fn get(db: &ReadDb, version: u32, order_id: Uuid, as_of: Option<AsOf>) -> Result<Option<OrderRow>, QueryError> {
    let prefix = table_prefix(version);
    let mut statement = Statement::default();
    let select = from_clause(&mut statement, &prefix, as_of);
    let id = statement.param(Bind::Text(order_id.to_string()));
    let joiner = if as_of.is_some() { "AND" } else { "WHERE" };
    let orders = format!("{select} {joiner} o.order_id = {id}");
    statement.sql = with_joins(&prefix, &orders, as_of, "");
    let rows = statement.fetch_all(db).await?;
    rows.first().map(order_from_row).transpose()
}

/// A page of the current orders matching `filter`, sorted by `sort` then order id, starting
/// after `cursor`. Keyset pagination: a row inserted between two page reads shows up on a later
/// page if it sorts after the cursor and never makes another row skip or repeat.
pub async fn list_orders(
    db: &ReadDb,
    version: u32,
    filter: &OrderFilter,
    sort: Sort,
    cursor: Option<&Cursor>,
    limit: u32,
) -> Result<Page, QueryError> {
    list(db, version, None, filter, sort, cursor, limit).await
}

/// [`list_orders`] over the orders as they were at `as_of`.
pub async fn list_orders_as_of(
    db: &ReadDb,
    version: u32,
    as_of: AsOf,
    filter: &OrderFilter,
    sort: Sort,
    cursor: Option<&Cursor>,
    limit: u32,
) -> Result<Page, QueryError> {
    list(db, version, Some(as_of), filter, sort, cursor, limit).await
}

async fn list(
    db: &ReadDb,
    version: u32,
    as_of: Option<AsOf>,
    filter: &OrderFilter,
    sort: Sort,
    cursor: Option<&Cursor>,
    limit: u32,
) -> Result<Page, QueryError> {
    if limit == 0 || limit > MAX_PAGE_LIMIT {
        return Err(QueryError::Invalid {
            parameter: "limit",
            message: format!("between 1 and {MAX_PAGE_LIMIT}"),
        });
    }
    if let Some(cursor) = cursor
        && cursor.sort != sort
    {
        return Err(QueryError::Invalid {
            parameter: "cursor",
            message: "the cursor belongs to a list with another sort".to_owned(),
        });
    }
    let prefix = table_prefix(version);
    let mut statement = Statement::default();
    let select = from_clause(&mut statement, &prefix, as_of);
    let mut conditions = Vec::new();
    if let Some(status) = filter.status {
        let names: Vec<String> = status
            .stored_names()
            .iter()
            .map(|name| statement.param(Bind::Text((*name).to_owned())))
            .collect();
        conditions.push(format!("o.status IN ({})", names.join(", ")));
    }
    if let Some(code) = &filter.reason_code {
        conditions.push(format!(
            "o.cancel_reason_code = {}",
            statement.param(Bind::Text(code.clone()))
        ));
    }
    if let Some(customer_id) = filter.customer_id {
        conditions.push(format!(
            "o.customer_id = {}",
            statement.param(Bind::Text(customer_id.to_string()))
        ));
    }
    if let Some(from) = filter.placed_from {
        conditions.push(format!(
            "o.placed_at_us >= {}",
            statement.param(Bind::Int(micros(from)))
        ));
    }
    if let Some(to) = filter.placed_to {
        conditions.push(format!("o.placed_at_us < {}", statement.param(Bind::Int(micros(to)))));
    }
    let column = sort.key.column();
    let (compare, order) = match sort.direction {
        Direction::Asc => (">", "ASC"),
        Direction::Desc => ("<", "DESC"),
    };
    if let Some(cursor) = cursor {
        let value = statement.param(Bind::Int(cursor.value));
        let id = statement.param(Bind::Text(cursor.order_id.to_string()));
        conditions.push(format!("(o.{column}, o.order_id) {compare} ({value}, {id})"));
    }
    let mut sql = select;
    for (i, condition) in conditions.iter().enumerate() {
        let joiner = if i == 0 && as_of.is_none() { "WHERE" } else { "AND" };
        sql.push_str(&format!(" {joiner} {condition}"));
    }
    let fetch = statement.param(Bind::Int(i64::from(limit) + 1));
    let order_by = format!(" ORDER BY o.{column} {order}, o.order_id {order}");
    sql.push_str(&format!("{order_by} LIMIT {fetch}"));
    statement.sql = with_joins(&prefix, &sql, as_of, &order_by);
    let mut rows = statement
        .fetch_all(db)
        .await?
        .iter()
        .map(order_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next_cursor = match rows.last() {
        Some(last) if more => Some(
            Cursor {
                sort,
                value: sort.key.value(last),
                order_id: last.order_id,
            }
            .encode(),
        ),
        _ => None,
    };
    Ok(Page { rows, next_cursor })
}

/// A customer's name, email, order count, lifetime value per currency and last order.
pub async fn customer_summary(
    db: &ReadDb,
    version: u32,
    customer_id: Uuid,
) -> Result<Option<CustomerSummary>, QueryError> {
    let prefix = table_prefix(version);
    let id = customer_id.to_string();
    let sql = format!("SELECT {CUSTOMER_SELECT} FROM {prefix}customers c WHERE c.customer_id = $1");
    let Some(row) = sqlx::query(AssertSqlSafe(sql))
        .bind(id.clone())
        .fetch_optional(db.pool())
        .await?
    else {
        return Ok(None);
    };
    let mut summary = customer_from_row(&row)?;
    let sql = format!(
        "SELECT currency, order_count, lifetime_value_minor FROM {prefix}customer_totals
          WHERE customer_id = $1 ORDER BY currency"
    );
    summary.lifetime_value = sqlx::query(AssertSqlSafe(sql))
        .bind(id)
        .fetch_all(db.pool())
        .await?
        .iter()
        .map(|row| currency_total_from_row(row, 0))
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    Ok(Some(summary))
}

/// The customer columns in the order [`customer_from_row`] reads them, from the table `c`.
const CUSTOMER_SELECT: &str =
    "c.customer_id, c.name, c.email, c.stream_version, c.order_count, c.last_order_id, c.last_order_at_us";

/// A customer's summary from [`CUSTOMER_SELECT`]'s columns, without its lifetime value (the
/// caller reads `customer_totals`).
fn customer_from_row(row: &AnyRow) -> Result<CustomerSummary, QueryError> {
    let last_order = match (row.try_get::<Option<String>, _>(5)?, row.try_get::<Option<i64>, _>(6)?) {
        (Some(order_id), Some(at)) => Some(LastOrder {
            order_id: parse_uuid(&order_id)?,
            placed_at: time(at)?,
        }),
        _ => None,
    };
    Ok(CustomerSummary {
        customer_id: parse_uuid(&row.try_get::<String, _>(0)?)?,
        name: row.try_get(1)?,
        email: row.try_get(2)?,
        stream_version: from_i64(row.try_get(3)?),
        order_count: from_i64(row.try_get(4)?),
        lifetime_value: Vec::new(),
        last_order,
    })
}

/// One `customer_totals` row: its currency, order count and lifetime value from column `first`.
fn currency_total_from_row(row: &AnyRow, first: usize) -> Result<CurrencyTotal, sqlx::Error> {
    Ok(CurrencyTotal {
        currency: row.try_get(first)?,
        order_count: from_i64(row.try_get(first + 1)?),
        lifetime_value_minor: row.try_get(first + 2)?,
    })
}

/// Where the next page of [`list_customers`] starts: after the customer with this name and id.
/// Opaque to clients: [`CustomerCursor::encode`] gives a URL-safe string (the read API's
/// `next_after`) that [`CustomerCursor::decode`] reads back.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CustomerCursor {
    pub name: String,
    pub customer_id: Uuid,
}

impl CustomerCursor {
    /// Hex of `n:{customer id}:{name}` (the name last: it may hold any character).
    pub fn encode(&self) -> String {
        let plain = format!("n:{}:{}", self.customer_id.simple(), self.name);
        plain.bytes().map(|byte| format!("{byte:02x}")).collect()
    }

    /// Reads a cursor made by [`encode`](Self::encode); anything else is
    /// [`QueryError::Invalid`] naming `after`.
    pub fn decode(text: &str) -> Result<Self, QueryError> {
        let invalid = || QueryError::Invalid {
            parameter: "after",
            message: "not a cursor from this API (give the next_after of the previous page)".to_owned(),
        };
        if text.is_empty() || !text.len().is_multiple_of(2) {
            return Err(invalid());
        }
        let bytes = (0..text.len())
            .step_by(2)
            .map(|i| text.get(i..i + 2).and_then(|pair| u8::from_str_radix(pair, 16).ok()))
            .collect::<Option<Vec<u8>>>()
            .ok_or_else(invalid)?;
        let plain = String::from_utf8(bytes).map_err(|_| invalid())?;
        let mut parts = plain.splitn(3, ':');
        let (Some("n"), Some(customer_id), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(invalid());
        };
        Ok(CustomerCursor {
            name: name.to_owned(),
            customer_id: Uuid::try_parse(customer_id).map_err(|_| invalid())?,
        })
    }
}

/// One page of [`list_customers`], and the cursor of the next one (`None`: this is the last
/// page).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CustomerPage {
    /// Each customer as [`customer_summary`] answers it.
    pub rows: Vec<CustomerSummary>,
    /// The `after` of the next page, [`CustomerCursor::encode`]d.
    pub next_after: Option<String>,
}

/// A page of the customers (each as [`customer_summary`] answers it), sorted by name then
/// customer id, byte-wise on both databases (case as stored: `B` before `a`), starting after
/// `after`. Keyset pagination on (name, customer id): names may repeat, and no customer repeats
/// or is skipped across pages; a customer renamed between two page reads shows where its new
/// name sorts (once, or not at all if it moved behind the cursor).
pub async fn list_customers(
    db: &ReadDb,
    version: u32,
    after: Option<&CustomerCursor>,
    limit: u32,
) -> Result<CustomerPage, QueryError> {
    if limit == 0 || limit > MAX_PAGE_LIMIT {
        return Err(QueryError::Invalid {
            parameter: "limit",
            message: format!("between 1 and {MAX_PAGE_LIMIT}"),
        });
    }
    let prefix = table_prefix(version);
    // Byte order: PostgreSQL's database collation may ignore case and punctuation, SQLite's
    // default (BINARY) does not; "C" makes both the same.
    let collate = match db.kind() {
        DbKind::Postgres => r#" COLLATE "C""#,
        DbKind::Sqlite => "",
    };
    let mut statement = Statement::default();
    let condition = match after {
        Some(after) => {
            let name = statement.param(Bind::Text(after.name.clone()));
            let id = statement.param(Bind::Text(after.customer_id.to_string()));
            format!(" WHERE (c.name{collate}, c.customer_id{collate}) > ({name}, {id})")
        }
        None => String::new(),
    };
    let fetch = statement.param(Bind::Int(i64::from(limit) + 1));
    // The page's customers first, then their totals joined: one row per customer and currency
    // (one with null totals for a customer without any), in the page's order.
    statement.sql = format!(
        "SELECT {CUSTOMER_SELECT}, t.currency, t.order_count, t.lifetime_value_minor \
           FROM (SELECT * FROM {prefix}customers c{condition} \
                  ORDER BY c.name{collate}, c.customer_id{collate} LIMIT {fetch}) c \
           LEFT JOIN {prefix}customer_totals t ON t.customer_id = c.customer_id \
          ORDER BY c.name{collate}, c.customer_id{collate}, t.currency"
    );
    let mut rows: Vec<CustomerSummary> = Vec::new();
    for row in statement.fetch_all(db).await? {
        let customer_id = parse_uuid(&row.try_get::<String, _>(0)?)?;
        if rows.last().is_none_or(|last| last.customer_id != customer_id) {
            rows.push(customer_from_row(&row)?);
        }
        if row.try_get::<Option<String>, _>(7)?.is_some()
            && let Some(last) = rows.last_mut()
        {
            last.lifetime_value.push(currency_total_from_row(&row, 7)?);
        }
    }
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next_after = match rows.last() {
        Some(last) if more => Some(
            CustomerCursor {
                name: last.name.clone(),
                customer_id: last.customer_id,
            }
            .encode(),
        ),
        _ => None,
    };
    Ok(CustomerPage { rows, next_after })
}
