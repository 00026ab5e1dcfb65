//! The order dashboard: one row per order with its customer's current name and email, its
//! cancellation's reason code, its payment and its place-order saga's state, a local copy of
//! every customer with its order count and lifetime value, every payment, every saga, and the
//! history of all four for "as of" reads. PostgreSQL in the distributed deployment, SQLite
//! embedded: one code path through [`ReadDb`]'s sqlx `Any` pool.
//!
//! # Tables
//!
//! Each version has its own tables, prefixed `order_dashboard_v{N}_` (`projections/sql/dashboard/`
//! holds their DDL): `orders`, `customers`, `customer_totals`, `order_history`, `customer_history`,
//! `payments`, `payment_history`, `sagas`, `saga_history` and `writer` (a one-row write lock).
//!
//! # Exactly-once effect
//!
//! Events arrive at least once (a worker killed after its commit but before it moved its Kafka
//! offset reads them again). [`OrderDashboard::apply`] writes a batch's rows, its checkpoints
//! ([`save_checkpoints`]) and its dead letters in **one transaction**, so the stored checkpoint
//! never claims more or less than the rows hold. On top of that every order, customer and
//! payment row keeps the stream version of the last event applied to it, and an event applies only if its
//! `stream_version` is greater: a replayed event (a whole batch again, or one overlapping an
//! applied one) changes nothing, history included. The transaction starts by upserting the
//! `writer` row, which serializes concurrent appliers of the same version, so that each batch
//! folds rows as the previous one committed them.
//!
//! # Convergence (invariant 6)
//!
//! Customer, order and payment events come from different services' logs (and partitions) in
//! any interleaving. The result does not depend on it:
//! - an order shows its customer's name and email from the local copy once the copy has a real
//!   stream version (> 0), and the order's own placement snapshot until then;
//! - a customer event updates the copy (version-guarded) and every order of that customer;
//! - a customer only known from snapshots (version 0) holds the snapshot of its order placed
//!   latest in the log (highest position), and its last order is the one placed latest;
//! - order counts and lifetime values are sums, the same in any order;
//! - payments are rows of their own, keyed by payment id whether or not their order is known
//!   yet, and joined to their order only when read (`query`): a payment that arrives before its
//!   order's placement shows on the order's row as soon as the order is there. Which of an
//!   order's payments the row shows is a rule over the payments' rows alone ([`OrderRow`]);
//! - sagas likewise: rows of their own keyed by the order's id (the `saga-{order id}` streams
//!   come through a topic of their own, before or after the order's events), joined when read;
//!   an order's `saga_state` is a function of its saga's events alone ([`SagaState`]).
//!
//! # Speed
//!
//! A batch is folded in memory: its orders, customers, payments and sagas are loaded with one
//! `SELECT ... IN` per table (chunked; none for payments or sagas when the batch has no event
//! of theirs),
//! the events applied in batch order, and the result written back with multi-row `INSERT ... ON CONFLICT DO UPDATE` statements and multi-row history inserts.
//!
//! A rebuild's build phase does not go batch by batch: [`OrderDashboard::bulk_load`] folds the
//! whole log in memory, streams history versions out as soon as they are closed and writes the
//! current tables at the end, with COPY on PostgreSQL, indexes built after loading (`bulk`).
//! The rows are the same (`bulk`'s module doc says why, `tests/dashboard.rs` checks it).
//!
//! # Reads
//!
//! [`list_orders`], [`get_order`], [`customer_summary`], and "as of" a position or time
//! ([`get_order_as_of`], [`list_orders_as_of`]) from the history tables: the order's version
//! valid then, with the customer's name and email valid then (or the order's snapshot), the
//! order's payments' versions valid then and its saga's version valid then (a position is one
//! of the orders log, which also holds the sagas; the customers' and payments' logs are taken
//! as of its commit time). Lists filter by status, customer, placement time and cancellation
//! reason code ([`OrderFilter`]). [`list_customers`] pages through the customers' summaries by
//! name then id ([`CustomerCursor`]), current rows only.
//!
//! # Upgrading
//!
//! Tables and columns came after the first tables; `prepare` adds what a version made before
//! lacks, in place: the payment tables and the saga tables (`CREATE TABLE IF NOT EXISTS`), the
//! `cancel_reason_code` column of `orders` and `order_history` ([`UPGRADE_COLUMNS`], `ALTER
//! TABLE ... ADD COLUMN`), and the indexes. Reads and writes work on such a version at once,
//! but it skipped the events it applied before: their payments show `none`, their sagas no
//! state, their cancellations no reason code, until a rebuild (`projections rebuild
//! order_dashboard`), which builds the next version with all of it from the logs. (A saga whose
//! start such a version skipped still gets a row from its next events; it is never an error.)

mod bulk;
mod fold;
mod query;
mod write;

use async_trait::async_trait;
use chrono::Utc;
use event_schemas::DomainEvent;
use sqlx::AssertSqlSafe;

pub use query::{
    AsOf, CurrencyTotal, Cursor, CustomerCursor, CustomerPage, CustomerSummary, Direction, LastOrder, MAX_PAGE_LIMIT,
    OrderFilter, OrderRow, OrderStatus, Page, PaymentStatus, QueryError, SagaState, Sort, SortKey, UnknownStatus,
    customer_summary, get_order, get_order_as_of, list_customers, list_orders, list_orders_as_of,
};

pub use bulk::DEFAULT_MEMORY_ROWS;

use crate::control::checkpoint_rows;
use crate::{
    Batch, BulkLoad, Checkpoint, DbKind, Projection, ProjectionError, ReadDb, micros, save_checkpoints,
    save_dead_letters,
};

/// The projection's name: in table names and checkpoints. Never rename.
pub const NAME: &str = "order_dashboard";

/// The tables of one version (after the prefix), the `writer` lock aside.
pub const TABLES: [&str; 9] = [
    "orders",
    "customers",
    "customer_totals",
    "order_history",
    "customer_history",
    "payments",
    "payment_history",
    "sagas",
    "saga_history",
];

/// The columns added to tables of versions made before them: (table, column, type). New
/// versions get them from `tables.sql` (where they come last, so that an upgraded table and a
/// new one have the same columns in the same order); `prepare` adds them to an older version.
pub const UPGRADE_COLUMNS: [(&str, &str, &str); 2] = [
    ("orders", "cancel_reason_code", "TEXT"),
    ("order_history", "cancel_reason_code", "TEXT"),
];

const TABLES_SQL: &str = include_str!("../sql/dashboard/tables.sql");
const INDEXES_SQL: &str = include_str!("../sql/dashboard/indexes.sql");
const DROP_SQL: &str = include_str!("../sql/dashboard/drop.sql");

/// The table-name prefix of one version: `order_dashboard_v{N}_`. Made from a number only, so it
/// is safe to splice into SQL.
pub fn table_prefix(version: u32) -> String {
    format!("{NAME}_v{version}_")
}

/// The order dashboard projection, one version of it.
#[derive(Debug, Clone)]
pub struct OrderDashboard {
    db: ReadDb,
    version: u32,
    prefix: String,
    /// The orders, customers and payments a bulk load may hold in memory; 0: no bulk load.
    bulk_memory_rows: usize,
}

impl OrderDashboard {
    pub fn new(db: ReadDb, version: u32) -> Self {
        OrderDashboard {
            db,
            version,
            prefix: table_prefix(version),
            bulk_memory_rows: DEFAULT_MEMORY_ROWS,
        }
    }

    /// Bounds what a bulk load holds in memory (orders, customers and payments,
    /// [`DEFAULT_MEMORY_ROWS`] by default): a rebuild reaching it finishes the bulk load there and applies the rest
    /// batch by batch. 0 turns bulk loads off.
    pub fn with_bulk_memory_rows(mut self, rows: usize) -> Self {
        self.bulk_memory_rows = rows;
        self
    }

    /// Runs one of the `.sql` files with this version's prefix.
    async fn run_script(&self, script: &str) -> Result<(), ProjectionError> {
        let sql = script.replace("{prefix}", &self.prefix);
        sqlx::raw_sql(AssertSqlSafe(sql)).execute(self.db.pool()).await?;
        Ok(())
    }

    /// Creates the tables that are missing and adds the [`UPGRADE_COLUMNS`] a version made
    /// before them lacks (see "Upgrading" in the module doc). A column is looked for first, so
    /// that starting a worker on an upgraded version takes no lock on its tables (PostgreSQL's
    /// `ALTER TABLE` would wait for the reads in flight, and every read after it for it).
    async fn create_tables(&self) -> Result<(), ProjectionError> {
        self.run_script(TABLES_SQL).await?;
        let exists_sql = match self.db.kind() {
            DbKind::Postgres => {
                "SELECT 1 FROM information_schema.columns
                  WHERE table_schema = current_schema() AND table_name = $1 AND column_name = $2"
            }
            DbKind::Sqlite => "SELECT 1 FROM pragma_table_info($1) WHERE name = $2",
        };
        for (table, column, kind) in UPGRADE_COLUMNS {
            let table = format!("{}{table}", self.prefix);
            let exists = sqlx::query(exists_sql)
                .bind(table.as_str())
                .bind(column)
                .fetch_optional(self.db.pool())
                .await?
                .is_some();
            if exists {
                continue;
            }
            let sql = match self.db.kind() {
                // Workers starting together may both get here: `IF NOT EXISTS` lets both pass.
                DbKind::Postgres => format!("ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {kind}"),
                // One process writes it (embedded); SQLite has no `IF NOT EXISTS` here.
                DbKind::Sqlite => format!("ALTER TABLE {table} ADD COLUMN {column} {kind}"),
            };
            sqlx::raw_sql(AssertSqlSafe(sql)).execute(self.db.pool()).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl Projection for OrderDashboard {
    fn name(&self) -> &'static str {
        NAME
    }

    fn version(&self) -> u32 {
        self.version
    }

    /// Creates this version's tables, or upgrades those of a version made before (see
    /// "Upgrading" in the module doc), and their indexes.
    async fn prepare(&self) -> Result<(), ProjectionError> {
        self.create_tables().await?;
        self.run_script(INDEXES_SQL).await
    }

    /// Creates the tables without their secondary indexes, and loads them as `bulk` describes
    /// (the indexes are built after loading). Declines when the tables hold rows already.
    async fn bulk_load(&self) -> Result<Option<Box<dyn BulkLoad>>, ProjectionError> {
        if self.bulk_memory_rows == 0 {
            return Ok(None);
        }
        self.create_tables().await?;
        if !bulk::tables_empty(&self.db, &self.prefix).await? {
            return Ok(None);
        }
        let load = bulk::DashboardBulk::start(&self.db, self.version, &self.prefix, self.bulk_memory_rows).await?;
        Ok(Some(Box::new(load)))
    }

    async fn drop_version(&self) -> Result<(), ProjectionError> {
        self.run_script(DROP_SQL).await
    }

    async fn checkpoints(&self) -> Result<Vec<Checkpoint>, ProjectionError> {
        self.db.checkpoints(NAME, self.version).await
    }

    #[tracing::instrument(skip_all, fields(projection = NAME, version = self.version, events = batch.events.len()), err)]
    async fn apply(&self, batch: &Batch) -> Result<(), ProjectionError> {
        let relevant = batch.events.iter().any(|event| {
            matches!(
                event.event,
                DomainEvent::Order(_) | DomainEvent::Customer(_) | DomainEvent::Payment(_) | DomainEvent::Saga(_)
            )
        });
        let mut tx = if relevant {
            // Round trips inside the writer lock are what all workers together wait for: the
            // lock, the two loads, every write and the checkpoints in one (on PostgreSQL), one
            // per dead letter (rare), and COMMIT.
            let lock = write::lock_sql(self.db.kind() == DbKind::Postgres, &self.prefix);
            let mut tx = self.db.begin_write_with(&lock).await?;
            let affected = fold::affected(&batch.events);
            let orders = write::load_orders(&mut tx, &self.prefix, &affected.orders).await?;
            let customers = write::load_customers(&mut tx, &self.prefix, &affected.customers).await?;
            // Payments come in batches of their own more often than not (another service's
            // log), sagas from a topic of their own: no round trip for them in the others.
            let payments = if affected.payments.is_empty() {
                Vec::new()
            } else {
                write::load_payments(&mut tx, &self.prefix, &affected.payments).await?
            };
            let sagas = if affected.sagas.is_empty() {
                Vec::new()
            } else {
                write::load_sagas(&mut tx, &self.prefix, &affected.sagas).await?
            };
            let fold = fold::Fold::run(orders, customers, payments, sagas, &batch.events)?;
            let checkpoints = checkpoint_rows(NAME, self.version, &batch.checkpoints(), micros(Utc::now()));
            write::write(&mut tx, &self.prefix, &fold, checkpoints).await?;
            tx
        } else {
            let mut tx = self.db.begin_write().await?;
            save_checkpoints(&mut tx, NAME, self.version, &batch.checkpoints()).await?;
            tx
        };
        save_dead_letters(&mut tx, NAME, self.version, &batch.dead_letters).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn healthy(&self) -> bool {
        sqlx::query("SELECT 1").execute(self.db.pool()).await.is_ok()
    }
}
