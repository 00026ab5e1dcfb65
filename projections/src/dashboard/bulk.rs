//! The dashboard's bulk load: the build phase of a rebuild ([`crate::Projection::bulk_load`]),
//! where batch-by-batch apply spends its time reading back the rows it is about to change,
//! closing history versions with UPDATEs and maintaining five indexes row by row.
//!
//! # What it does
//!
//! - **Folds the log in memory**: every order's, customer's, payment's and saga's current state
//!   and every customer's totals, with the very functions the batch fold uses (`fold.rs`:
//!   placing an order, applying an order, customer, payment or saga event, the replay guards),
//!   so that both make the same rows by construction.
//! - **Streams history out as soon as it is final**: an order's (customer's, payment's, saga's) version gets its
//!   `valid_to` from the next event of its stream, so when that event applies, the version it
//!   supersedes is written out, closed, and never touched again. Open versions (`valid_to`
//!   NULL) and the current tables are written at the end, from memory.
//! - **Writes in bulk on tasks of their own**, so that folding and writing overlap:
//!   PostgreSQL gets `COPY ... FROM STDIN` (text format) in chunks of a few MiB on two
//!   connections of its own, one for the history tables (busy while the log is read) and one
//!   for the current tables (busy at the end), so that the last COPYs and index builds of the
//!   two run side by side. Each writer works in **one transaction** that starts by dropping its
//!   (empty) tables' primary keys and ends by adding them back and building their secondary
//!   indexes (`indexes.sql`); the current tables' writer commits last, after the history
//!   writer has committed, with the checkpoint and dead letters: a stored checkpoint means
//!   complete tables, and a failure before it leaves the version without one (a failed
//!   rebuild's version is abandoned anyway). SQLite gets multi-row INSERTs, one transaction
//!   per chunk, so that the embedded deployment's live writers are never locked out for long
//!   (they wait for SQLite's one write lock, and a live runner that waits too long retries and
//!   may end up dead-lettering); its last transaction builds the indexes and stores the
//!   checkpoint.
//!
//! # Why the rows are exactly those of batch-by-batch apply
//!
//! For a log applied in position order, batch by batch, the rows do not depend on where the
//! batches are cut (`tests/dashboard.rs` proves it for one event per batch). Folding the whole
//! log at once is one such cut, and what the batch path spreads over several statements per
//! batch collapses into values known at the end:
//! - an order's version `k` is valid from its event's position and recorded time (its
//!   `last_position`, `updated_at_us`) up to those of the order's next applied event; the
//!   latest is open. Customers the same (for customers with events of their own; snapshots
//!   make no customer versions), with `since_us` keeping the version's start time; payments and
//!   sagas as orders;
//! - an order shows its customer's name and email once the customer's stream has been seen
//!   (`stream_version > 0`), its own placement snapshot otherwise: this is what the batch
//!   path's in-batch override and `propagate_customers` converge to;
//! - totals are sums: a batch adds its deltas, the bulk load adds them all;
//! - an event the batch path would dead-letter (it fails alone: an order never placed, a
//!   customer never registered, a second placement, a capture or refund of a payment never
//!   started) changes nothing and becomes a dead letter
//!   with the same reason; undecodable events too;
//! - the checkpoint is the last batch's, kept with `save_checkpoints`' rule (it only moves
//!   forward).
//!
//! `tests/dashboard.rs` checks every table, history included, against batch-by-batch apply of
//! random workloads on both servers.
//!
//! # Memory
//!
//! One [`OrderState`] per order, one [`CustomerState`] per customer, one [`PaymentState`]
//! per payment and one [`SagaProgress`] per saga (a few hundred bytes each), the totals, plus a
//! few chunks in flight; never the history. When the orders, customers, payments and sagas in
//! memory reach the load's limit, [`BulkLoad::full`] says so and the rebuild
//! finishes the load there and applies the rest of the log batch by batch, so memory stays
//! bounded whatever the size of the log.

use std::collections::HashMap;
use std::time::Instant;

use chrono::Utc;
use event_schemas::{CustomerEvent, DomainEvent, OrderEvent, PaymentEvent, SagaEvent};
use sqlx::{AssertSqlSafe, Connection, PgConnection};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, error, info};
use uuid::Uuid;

use super::fold::{
    CustomerState, CustomerVersion, OrderState, OrderVersion, PaymentState, PaymentVersion, SagaProgress, SagaVersion,
    TotalKey, Totals, apply_customer_event, apply_order_event, apply_payment_event, apply_saga_event, at_of,
    blank_customer, blank_payment, blank_saga, customer_event_applies, never_placed, order_event_applies,
    payment_event_applies, place_order, saga_event_applies, snapshot_customer,
};
use super::write::{
    CUSTOMER_COLUMNS, CUSTOMER_HISTORY_COLUMNS, ORDER_COLUMNS, ORDER_HISTORY_COLUMNS, PAYMENT_COLUMNS,
    PAYMENT_HISTORY_COLUMNS, SAGA_COLUMNS, SAGA_HISTORY_COLUMNS, TOTALS_COLUMNS, add_totals, insert_customer_versions,
    insert_order_versions, insert_payment_versions, insert_saga_versions, upsert_customers, upsert_orders,
    upsert_payments, upsert_sagas,
};
use super::{INDEXES_SQL, NAME, TABLES};
use crate::control::{SAVE_DEAD_LETTER_SQL, checkpoint_rows, save_checkpoints_sql};
use crate::json_rows::Dialect;
use crate::{
    Batch, BulkLoad, BulkReport, Checkpoint, DeadLetter, ProjectedEvent, ProjectionError, ReadDb, micros,
    save_checkpoints, save_dead_letters, to_i64,
};
use service_kit::error_chain;

const DROP_KEYS_SQL: &str = include_str!("../../sql/dashboard/postgres_drop_keys.sql");
const ADD_KEYS_SQL: &str = include_str!("../../sql/dashboard/postgres_add_keys.sql");

/// The orders, customers, payments and sagas a bulk load holds in memory at most. Measured (BENCHMARKS.md): about
/// 800 bytes of resident memory each, plus ~40 MiB of chunks and pages in flight, so this bound
/// is about 1.2 GiB (a log of ~8 million events of the benchmark's shop). Past it, the rebuild
/// finishes the bulk load and goes on batch by batch.
pub const DEFAULT_MEMORY_ROWS: usize = 1_500_000;

/// COPY text per statement (PostgreSQL).
const CHUNK_BYTES: usize = 4 << 20;
/// Rows per transaction (SQLite).
const CHUNK_ROWS: usize = 20_000;
/// Chunks that may wait for the writer: what bounds the rows in flight.
const CHUNKS_AHEAD: usize = 4;
/// PostgreSQL's memory for building the indexes after the load (per index build, this
/// transaction only): the sorts of a few hundred thousand rows stay in memory.
const INDEX_BUILD_MEMORY: &str = "SET LOCAL maintenance_work_mem = '256MB'";

/// Whether every table of a version is empty: a bulk load writes only into empty tables.
pub(super) async fn tables_empty(db: &ReadDb, prefix: &str) -> Result<bool, ProjectionError> {
    for table in TABLES {
        let sql = format!("SELECT 1 FROM {prefix}{table} LIMIT 1");
        if sqlx::query(AssertSqlSafe(sql))
            .fetch_optional(db.pool())
            .await?
            .is_some()
        {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The dashboard's [`BulkLoad`]: see the module doc.
pub(super) struct DashboardBulk {
    fold: BulkFold,
    out: Out,
    /// PostgreSQL: the history tables' writer, then the current tables' one (each a connection
    /// and a transaction of its own, so that the last COPYs and the index builds of the two
    /// groups run side by side); SQLite: one writer.
    writers: Vec<Writer>,
    memory_rows: usize,
}

/// A writer task and its queue.
struct Writer {
    jobs: mpsc::Sender<Job>,
    /// Taken when awaited (and aborted if the load is dropped unfinished, which rolls back its
    /// transaction).
    task: Option<JoinHandle<Result<u64, ProjectionError>>>,
}

impl Writer {
    fn spawn(
        task: impl Future<Output = Result<u64, ProjectionError>> + Send + 'static,
        jobs: mpsc::Sender<Job>,
    ) -> Self {
        Writer {
            jobs,
            task: Some(tokio::spawn(task)),
        }
    }

    /// Hands a job over (waiting while `CHUNKS_AHEAD` wait); the writer's error if it stopped.
    async fn send(&mut self, job: Job) -> Result<(), ProjectionError> {
        if self.jobs.send(job).await.is_ok() {
            return Ok(());
        }
        Err(match self.task.take() {
            Some(task) => match task.await {
                Ok(Err(cause)) => cause,
                Ok(Ok(_)) => ProjectionError::Inconsistent("a bulk writer stopped before the load finished".to_owned()),
                Err(cause) => ProjectionError::Inconsistent(format!("a bulk writer failed: {cause}")),
            },
            None => ProjectionError::Inconsistent("a bulk writer is gone".to_owned()),
        })
    }

    /// Waits for the writer's end: the rows it wrote.
    async fn join(&mut self) -> Result<u64, ProjectionError> {
        match self.task.take() {
            Some(task) => task
                .await
                .map_err(|cause| ProjectionError::Inconsistent(format!("a bulk writer failed: {cause}")))?,
            None => Err(ProjectionError::Inconsistent("a bulk writer is gone".to_owned())),
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl DashboardBulk {
    /// Starts the writers: on PostgreSQL two connections of their own, each with its
    /// transaction. The tables must exist and be empty (`tables.sql`, [`tables_empty`]).
    pub(super) async fn start(
        db: &ReadDb,
        version: u32,
        prefix: &str,
        memory_rows: usize,
    ) -> Result<Self, ProjectionError> {
        let (out, writers) = match db.connect_postgres().await? {
            Some(history) => {
                let current = db
                    .connect_postgres()
                    .await?
                    .ok_or_else(|| ProjectionError::Inconsistent("the read database changed kind".to_owned()))?;
                let mut writers = Vec::new();
                for (conn, tables) in [(history, &HISTORY_TABLES[..]), (current, &CURRENT_TABLES[..])] {
                    let (jobs, queue) = mpsc::channel(CHUNKS_AHEAD);
                    let task = copy_writer(conn, prefix.to_owned(), version, tables, queue);
                    writers.push(Writer::spawn(task, jobs));
                }
                (Out::Copy(CopyOut::default()), writers)
            }
            None => {
                let (jobs, queue) = mpsc::channel(CHUNKS_AHEAD);
                let task = insert_writer(db.clone(), prefix.to_owned(), version, queue);
                (Out::Insert(InsertOut::default()), vec![Writer::spawn(task, jobs)])
            }
        };
        Ok(DashboardBulk {
            fold: BulkFold::default(),
            out,
            writers,
            memory_rows,
        })
    }

    /// Hands the chunks that are ready (all of them with `all`) to their writers.
    async fn send(&mut self, all: bool) -> Result<(), ProjectionError> {
        for job in self.out.take(all) {
            let writer = match &job {
                Job::Copy { table, .. } if !HISTORY_TABLES.contains(table) => self.writers.len() - 1,
                _ => 0,
            };
            self.writers[writer].send(job).await?;
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl BulkLoad for DashboardBulk {
    async fn push(&mut self, batch: &Batch) -> Result<(), ProjectionError> {
        self.fold.batch(batch, &mut self.out);
        self.send(false).await
    }

    fn full(&self) -> bool {
        self.fold.rows() >= self.memory_rows
    }

    async fn finish(mut self: Box<Self>) -> Result<BulkReport, ProjectionError> {
        let started = Instant::now();
        let fold = std::mem::take(&mut self.fold);
        let rows_in_memory = fold.rows() as u64;
        let BulkFold {
            orders,
            customers,
            payments,
            sagas,
            totals,
            dead_letters,
            checkpoints,
        } = fold;
        for order in orders.into_values() {
            let (name, email) = match customers.get(&order.customer_id) {
                Some(customer) if customer.state.stream_version > 0 => {
                    (customer.state.name.as_str(), customer.state.email.as_str())
                }
                _ => (order.snapshot_name.as_str(), order.snapshot_email.as_str()),
            };
            self.out.order_version(&order, None);
            self.out.order(&order, name, email);
            self.send(false).await?;
        }
        for customer in customers.values() {
            if customer.state.stream_version > 0 {
                self.out.customer_version(&customer.state, customer.since_us, None);
            }
            self.out.customer(&customer.state);
            self.send(false).await?;
        }
        drop(customers);
        for payment in payments.into_values() {
            self.out.payment_version(&payment, None);
            self.out.payment(&payment);
            self.send(false).await?;
        }
        for saga in sagas.into_values() {
            self.out.saga_version(&saga, None);
            self.out.saga(&saga);
            self.send(false).await?;
        }
        for (key, value) in &totals {
            self.out.total(key, *value);
            self.send(false).await?;
        }
        self.send(true).await?;
        // Every writer builds its keys and indexes; the last one waits for the others to
        // commit, then stores the checkpoint and commits: a stored checkpoint means every table
        // is complete.
        let mut others = Vec::new();
        let last = self.writers.len() - 1;
        for writer in &mut self.writers[..last] {
            writer
                .send(Job::Finish {
                    checkpoints: Vec::new(),
                    dead_letters: Vec::new(),
                    after: Vec::new(),
                })
                .await?;
            others.extend(writer.task.take());
        }
        let writer = &mut self.writers[last];
        writer
            .send(Job::Finish {
                checkpoints,
                dead_letters,
                after: others,
            })
            .await?;
        let rows = writer.join().await?;
        Ok(BulkReport {
            rows,
            finish_seconds: started.elapsed().as_secs_f64(),
            rows_in_memory,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The fold

/// A customer's copy, with the start time of its open history version (its start position is
/// `state.last_position`).
#[derive(Debug)]
struct BulkCustomer {
    state: CustomerState,
    since_us: i64,
}

/// Everything the load holds in memory (see the module doc).
#[derive(Debug, Default)]
struct BulkFold {
    /// Boxed: the map's buckets stay small, so growing it never holds two copies of the states.
    orders: HashMap<Uuid, Box<OrderState>>,
    customers: HashMap<Uuid, BulkCustomer>,
    payments: HashMap<Uuid, Box<PaymentState>>,
    /// By their order's id.
    sagas: HashMap<Uuid, Box<SagaProgress>>,
    totals: Totals,
    dead_letters: Vec<DeadLetter>,
    /// As `save_checkpoints` would have left them after every batch so far.
    checkpoints: Vec<Checkpoint>,
}

impl BulkFold {
    /// The rows held in memory: what the load's bound counts.
    fn rows(&self) -> usize {
        self.orders.len() + self.customers.len() + self.payments.len() + self.sagas.len()
    }

    fn batch(&mut self, batch: &Batch, out: &mut Out) {
        let mut failed = Vec::new();
        for event in &batch.events {
            let applied = match &event.event {
                DomainEvent::Order(order) => self.order_event(event, order, out),
                DomainEvent::Customer(customer) => self.customer_event(event, customer, out),
                DomainEvent::Payment(payment) => self.payment_event(event, payment, out),
                DomainEvent::Saga(saga) => {
                    self.saga_event(event, saga, out);
                    Ok(())
                }
                DomainEvent::Product(_) => Ok(()),
            };
            failed.push(applied.is_err());
            if let Err(cause) = applied {
                // What batch-by-batch apply ends with for an event that fails alone (after its
                // retries, `apply_reliably` applies it by itself and records it).
                error!(projection = NAME, stream_id = %event.stream_id, position = event.position,
                    event_type = event.event.event_type(), error = %error_chain(&cause), "dead-lettering an event");
                self.dead_letters.push(DeadLetter {
                    origin: event.origin.clone(),
                    position: event.position,
                    event_type: event.event.event_type().to_owned(),
                    reason: error_chain(&cause),
                    payload: event.event.encode().payload,
                });
            }
        }
        self.dead_letters.extend(batch.dead_letters.iter().cloned());
        let checkpoints = if failed.contains(&true) {
            isolated_checkpoints(batch, &failed)
        } else {
            batch.checkpoints()
        };
        for checkpoint in checkpoints {
            match self
                .checkpoints
                .iter_mut()
                .find(|c| c.source == checkpoint.source && c.partition == checkpoint.partition)
            {
                Some(stored) if stored.offset < checkpoint.offset => *stored = checkpoint,
                Some(_) => {}
                None => self.checkpoints.push(checkpoint),
            }
        }
    }

    fn order_event(
        &mut self,
        event: &ProjectedEvent,
        order: &OrderEvent,
        out: &mut Out,
    ) -> Result<(), ProjectionError> {
        let id = order.order_id();
        let version = to_i64(event.stream_version);
        let at = at_of(event);
        let occurred_us = micros(event.occurred_at);
        if let OrderEvent::Placed(placed) = order
            && !self.orders.contains_key(&id)
        {
            let customer = self
                .customers
                .entry(placed.customer_id)
                .or_insert_with(|| BulkCustomer {
                    state: snapshot_customer(placed, at),
                    since_us: 0,
                });
            let mut state = place_order(&mut customer.state, &mut self.totals, placed, version, at, occurred_us);
            // What an order shows of its customer is settled at the end (`finish`): no need to
            // hold it meanwhile.
            state.customer_name = String::new();
            state.customer_email = String::new();
            self.orders.insert(id, Box::new(state));
            return Ok(());
        }
        let Some(state) = self.orders.get_mut(&id) else {
            return Err(never_placed(id, order));
        };
        if !order_event_applies(state, order, version)? {
            return Ok(());
        }
        // The version this event supersedes is final now.
        out.order_version(state, Some(at));
        apply_order_event(state, &mut self.totals, order, version, at, occurred_us);
        Ok(())
    }

    fn customer_event(
        &mut self,
        event: &ProjectedEvent,
        customer: &CustomerEvent,
        out: &mut Out,
    ) -> Result<(), ProjectionError> {
        let id = customer.customer_id();
        let version = to_i64(event.stream_version);
        let at = at_of(event);
        if !customer_event_applies(self.customers.get(&id).map(|c| &c.state), customer, version)? {
            return Ok(());
        }
        let copy = self.customers.entry(id).or_insert_with(|| BulkCustomer {
            state: blank_customer(id),
            since_us: 0,
        });
        // Customers known only from snapshots have no version to close.
        if copy.state.stream_version > 0 {
            out.customer_closed(copy, at);
        }
        apply_customer_event(&mut copy.state, customer, version, at);
        copy.since_us = at.1;
        Ok(())
    }

    fn payment_event(
        &mut self,
        event: &ProjectedEvent,
        payment: &PaymentEvent,
        out: &mut Out,
    ) -> Result<(), ProjectionError> {
        let id = payment.payment_id();
        let version = to_i64(event.stream_version);
        let at = at_of(event);
        let row = self.payments.get(&id).map(|row| &**row);
        if !payment_event_applies(row, payment, version)? {
            return Ok(());
        }
        let row = match self.payments.entry(id) {
            std::collections::hash_map::Entry::Occupied(entry) => {
                let row = entry.into_mut();
                // The version this event supersedes is final now.
                out.payment_version(row, Some(at));
                row
            }
            std::collections::hash_map::Entry::Vacant(entry) => entry.insert(Box::new(blank_payment(payment, at))),
        };
        apply_payment_event(row, payment, version, at);
        Ok(())
    }
}

impl BulkFold {
    fn saga_event(&mut self, event: &ProjectedEvent, saga: &SagaEvent, out: &mut Out) {
        let id = saga.order_id();
        let version = to_i64(event.stream_version);
        let at = at_of(event);
        if !saga_event_applies(self.sagas.get(&id).map(|row| &**row), version) {
            return;
        }
        let row = match self.sagas.entry(id) {
            std::collections::hash_map::Entry::Occupied(entry) => {
                let row = entry.into_mut();
                // The version this event supersedes is final now.
                out.saga_version(row, Some(at));
                row
            }
            std::collections::hash_map::Entry::Vacant(entry) => entry.insert(Box::new(blank_saga(id))),
        };
        apply_saga_event(row, saga, version, at);
    }
}

/// The checkpoints batch-by-batch apply leaves after a batch with events that fail: the batch
/// fails, `apply_reliably` applies its dead letters, then each event alone (recording those
/// that fail as dead letters), and the stored checkpoint of each partition ends up as the one
/// of its item with the highest offset, without a time if that item was dead-lettered.
fn isolated_checkpoints(batch: &Batch, failed: &[bool]) -> Vec<Checkpoint> {
    let mut by_partition: Vec<Checkpoint> = Vec::new();
    let items = batch
        .events
        .iter()
        .zip(failed)
        .map(|(event, failed)| (&event.origin, event.position, (!failed).then_some(event.recorded_at)))
        .chain(
            batch
                .dead_letters
                .iter()
                .map(|letter| (&letter.origin, letter.position, None)),
        );
    for (origin, position, recorded_at) in items {
        let checkpoint = Checkpoint {
            source: origin.source.clone(),
            partition: origin.partition,
            offset: origin.offset,
            position,
            recorded_at,
        };
        match by_partition
            .iter_mut()
            .find(|c| c.source == origin.source && c.partition == origin.partition)
        {
            Some(stored) if stored.offset < checkpoint.offset => *stored = checkpoint,
            Some(_) => {}
            None => by_partition.push(checkpoint),
        }
    }
    by_partition
}

// ---------------------------------------------------------------------------------------------
// Rows on their way out

/// The tables, in the order of [`super::TABLES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Table {
    Orders,
    Customers,
    CustomerTotals,
    OrderHistory,
    CustomerHistory,
    Payments,
    PaymentHistory,
    Sagas,
    SagaHistory,
}

/// What each PostgreSQL writer loads (see [`DashboardBulk`]).
const HISTORY_TABLES: [Table; 4] = [
    Table::OrderHistory,
    Table::CustomerHistory,
    Table::PaymentHistory,
    Table::SagaHistory,
];
const CURRENT_TABLES: [Table; 5] = [
    Table::Orders,
    Table::Customers,
    Table::CustomerTotals,
    Table::Payments,
    Table::Sagas,
];

impl Table {
    const ALL: [Table; 9] = [
        Table::Orders,
        Table::Customers,
        Table::CustomerTotals,
        Table::OrderHistory,
        Table::CustomerHistory,
        Table::Payments,
        Table::PaymentHistory,
        Table::Sagas,
        Table::SagaHistory,
    ];

    fn name(self) -> &'static str {
        TABLES[self as usize]
    }

    fn columns(self) -> &'static str {
        match self {
            Table::Orders => ORDER_COLUMNS,
            Table::Customers => CUSTOMER_COLUMNS,
            Table::CustomerTotals => TOTALS_COLUMNS,
            Table::OrderHistory => ORDER_HISTORY_COLUMNS,
            Table::CustomerHistory => CUSTOMER_HISTORY_COLUMNS,
            Table::Payments => PAYMENT_COLUMNS,
            Table::PaymentHistory => PAYMENT_HISTORY_COLUMNS,
            Table::Sagas => SAGA_COLUMNS,
            Table::SagaHistory => SAGA_HISTORY_COLUMNS,
        }
    }
}

/// What the writer task is handed.
enum Job {
    /// COPY text rows of one table (PostgreSQL).
    Copy { table: Table, data: Vec<u8> },
    /// Rows to insert (SQLite).
    Insert(Box<InsertOut>),
    /// The end: build the keys and indexes, wait for the writers in `after` to commit (their
    /// rows count as this one's), store checkpoints and dead letters, commit.
    Finish {
        checkpoints: Vec<Checkpoint>,
        dead_letters: Vec<DeadLetter>,
        after: Vec<JoinHandle<Result<u64, ProjectionError>>>,
    },
}

/// Finished rows not handed to the writer yet.
enum Out {
    Copy(CopyOut),
    Insert(InsertOut),
}

impl Out {
    /// An order's version, valid from its last event (`last_position`, `updated_at_us`) to
    /// `valid_to` (`None`: still valid).
    fn order_version(&mut self, order: &OrderState, valid_to: Option<(i64, i64)>) {
        match self {
            Out::Copy(copy) => copy.order_version(order, valid_to),
            Out::Insert(insert) => insert.order_versions.push(OrderVersion {
                order: order.clone(),
                valid_from: (order.last_position, order.updated_at_us),
                valid_to,
            }),
        }
    }

    /// The open version of a customer, closed at `at` by its next event.
    fn customer_closed(&mut self, customer: &BulkCustomer, at: (i64, i64)) {
        self.customer_version(&customer.state, customer.since_us, Some(at));
    }

    /// A customer's version, valid from its last event (`last_position`, `since_us`).
    fn customer_version(&mut self, customer: &CustomerState, since_us: i64, valid_to: Option<(i64, i64)>) {
        match self {
            Out::Copy(copy) => copy.customer_version(customer, since_us, valid_to),
            Out::Insert(insert) => insert.customer_versions.push(CustomerVersion {
                customer_id: customer.customer_id,
                stream_version: customer.stream_version,
                name: customer.name.clone(),
                email: customer.email.clone(),
                valid_from: (customer.last_position, since_us),
                valid_to,
            }),
        }
    }

    /// An order's current row, showing `name` and `email` for its customer.
    fn order(&mut self, order: &OrderState, name: &str, email: &str) {
        match self {
            Out::Copy(copy) => copy.order(order, name, email),
            Out::Insert(insert) => {
                let mut row = order.clone();
                name.clone_into(&mut row.customer_name);
                email.clone_into(&mut row.customer_email);
                insert.orders.push(row);
            }
        }
    }

    /// A payment's version, valid from its last event (`last_position`, `updated_at_us`) to
    /// `valid_to` (`None`: still valid).
    fn payment_version(&mut self, payment: &PaymentState, valid_to: Option<(i64, i64)>) {
        match self {
            Out::Copy(copy) => copy.payment_version(payment, valid_to),
            Out::Insert(insert) => insert.payment_versions.push(PaymentVersion {
                payment: payment.clone(),
                valid_from: (payment.last_position, payment.updated_at_us),
                valid_to,
            }),
        }
    }

    fn payment(&mut self, payment: &PaymentState) {
        match self {
            Out::Copy(copy) => copy.payment(payment),
            Out::Insert(insert) => insert.payments.push(payment.clone()),
        }
    }

    /// A saga's version, valid from its last event (`last_position`, `updated_at_us`) to
    /// `valid_to` (`None`: still valid).
    fn saga_version(&mut self, saga: &SagaProgress, valid_to: Option<(i64, i64)>) {
        match self {
            Out::Copy(copy) => copy.saga_version(saga, valid_to),
            Out::Insert(insert) => insert.saga_versions.push(SagaVersion::of(saga, valid_to)),
        }
    }

    fn saga(&mut self, saga: &SagaProgress) {
        match self {
            Out::Copy(copy) => copy.saga(saga),
            Out::Insert(insert) => insert.sagas.push(saga.clone()),
        }
    }

    fn customer(&mut self, customer: &CustomerState) {
        match self {
            Out::Copy(copy) => copy.customer(customer),
            Out::Insert(insert) => insert.customers.push(customer.clone()),
        }
    }

    fn total(&mut self, key: &TotalKey, value: (i64, i64)) {
        match self {
            Out::Copy(copy) => copy.total(key, value),
            Out::Insert(insert) => insert.totals.push((key.clone(), value)),
        }
    }

    /// The chunks that are full (or, with `all`, everything held).
    fn take(&mut self, all: bool) -> Vec<Job> {
        match self {
            Out::Copy(copy) => copy.take(all),
            Out::Insert(insert) => {
                if insert.rows() == 0 || (!all && insert.rows() < CHUNK_ROWS) {
                    return Vec::new();
                }
                vec![Job::Insert(Box::new(std::mem::take(insert)))]
            }
        }
    }
}

/// COPY text (PostgreSQL's `text` format: tab-separated, `\N` for NULL, backslash escapes),
/// one buffer per table.
#[derive(Default)]
struct CopyOut {
    buffers: [Vec<u8>; Table::ALL.len()],
}

impl CopyOut {
    fn buffer(&mut self, table: Table) -> Row<'_> {
        Row {
            buffer: &mut self.buffers[table as usize],
            first: true,
        }
    }

    fn order_version(&mut self, o: &OrderState, valid_to: Option<(i64, i64)>) {
        let mut row = self.buffer(Table::OrderHistory);
        row.uuid(&o.order_id);
        row.int(o.stream_version);
        row.int(o.last_position);
        row.int(o.updated_at_us);
        row.opt_int(valid_to.map(|to| to.0));
        row.opt_int(valid_to.map(|to| to.1));
        row.uuid(&o.customer_id);
        row.text(&o.snapshot_name);
        row.text(&o.snapshot_email);
        row.text(o.status.as_str());
        row.int(o.item_count);
        row.int(o.total_minor);
        row.text(&o.currency);
        row.int(o.placed_at_us);
        row.opt_int(o.confirmed_at_us);
        row.opt_int(o.shipped_at_us);
        row.opt_int(o.delivered_at_us);
        row.opt_int(o.cancelled_at_us);
        row.opt_text(o.cancel_reason.as_deref());
        row.opt_text(o.carrier.as_deref());
        row.opt_text(o.tracking.as_deref());
        row.opt_text(o.cancel_reason_code.as_deref());
        row.end();
    }

    fn customer_version(&mut self, c: &CustomerState, since_us: i64, valid_to: Option<(i64, i64)>) {
        let mut row = self.buffer(Table::CustomerHistory);
        row.uuid(&c.customer_id);
        row.int(c.stream_version);
        row.int(c.last_position);
        row.int(since_us);
        row.opt_int(valid_to.map(|to| to.0));
        row.opt_int(valid_to.map(|to| to.1));
        row.text(&c.name);
        row.text(&c.email);
        row.end();
    }

    fn order(&mut self, o: &OrderState, name: &str, email: &str) {
        let mut row = self.buffer(Table::Orders);
        row.uuid(&o.order_id);
        row.uuid(&o.customer_id);
        row.text(name);
        row.text(email);
        row.text(&o.snapshot_name);
        row.text(&o.snapshot_email);
        row.text(o.status.as_str());
        row.int(o.item_count);
        row.int(o.total_minor);
        row.text(&o.currency);
        row.int(o.placed_at_us);
        row.opt_int(o.confirmed_at_us);
        row.opt_int(o.shipped_at_us);
        row.opt_int(o.delivered_at_us);
        row.opt_int(o.cancelled_at_us);
        row.opt_text(o.cancel_reason.as_deref());
        row.opt_text(o.carrier.as_deref());
        row.opt_text(o.tracking.as_deref());
        row.int(o.stream_version);
        row.int(o.last_position);
        row.int(o.updated_at_us);
        row.opt_text(o.cancel_reason_code.as_deref());
        row.end();
    }

    fn customer(&mut self, c: &CustomerState) {
        let mut row = self.buffer(Table::Customers);
        row.uuid(&c.customer_id);
        row.text(&c.name);
        row.text(&c.email);
        row.int(c.stream_version);
        row.int(c.last_position);
        row.int(c.order_count);
        match &c.last_order_id {
            Some(id) => row.uuid(id),
            None => row.null(),
        }
        row.opt_int(c.last_order_at_us);
        row.opt_int(c.last_order_position);
        row.end();
    }

    fn payment_version(&mut self, p: &PaymentState, valid_to: Option<(i64, i64)>) {
        let mut row = self.buffer(Table::PaymentHistory);
        row.uuid(&p.payment_id);
        row.int(p.stream_version);
        row.int(p.last_position);
        row.int(p.updated_at_us);
        row.opt_int(valid_to.map(|to| to.0));
        row.opt_int(valid_to.map(|to| to.1));
        row.uuid(&p.order_id);
        row.text(p.status.as_str());
        row.opt_text(p.currency.as_deref());
        row.int(p.authorized_minor);
        row.int(p.captured_minor);
        row.int(p.refunded_minor);
        row.opt_text(p.reason.as_deref());
        row.int(p.started_position);
        row.end();
    }

    fn payment(&mut self, p: &PaymentState) {
        let mut row = self.buffer(Table::Payments);
        row.uuid(&p.payment_id);
        row.uuid(&p.order_id);
        row.text(p.status.as_str());
        row.opt_text(p.currency.as_deref());
        row.int(p.authorized_minor);
        row.int(p.captured_minor);
        row.int(p.refunded_minor);
        row.opt_text(p.reason.as_deref());
        row.int(p.started_position);
        row.int(p.stream_version);
        row.int(p.last_position);
        row.int(p.updated_at_us);
        row.end();
    }

    fn saga_version(&mut self, g: &SagaProgress, valid_to: Option<(i64, i64)>) {
        let mut row = self.buffer(Table::SagaHistory);
        row.uuid(&g.order_id);
        row.int(g.stream_version);
        row.int(g.last_position);
        row.int(g.updated_at_us);
        row.opt_int(valid_to.map(|to| to.0));
        row.opt_int(valid_to.map(|to| to.1));
        row.text(g.state.as_str());
        row.end();
    }

    fn saga(&mut self, g: &SagaProgress) {
        let mut row = self.buffer(Table::Sagas);
        row.uuid(&g.order_id);
        row.text(g.state.as_str());
        row.int(g.line_count);
        row.int(g.lines_reserved);
        for flag in [g.authorized, g.confirmed, g.failed, g.parked, g.completed] {
            row.int(i64::from(flag));
        }
        row.int(g.stream_version);
        row.int(g.last_position);
        row.int(g.updated_at_us);
        row.end();
    }

    fn total(&mut self, (customer_id, currency): &TotalKey, (count, value): (i64, i64)) {
        let mut row = self.buffer(Table::CustomerTotals);
        row.uuid(customer_id);
        row.text(currency);
        row.int(count);
        row.int(value);
        row.end();
    }

    fn take(&mut self, all: bool) -> Vec<Job> {
        let mut jobs = Vec::new();
        for table in Table::ALL {
            let buffer = &mut self.buffers[table as usize];
            if buffer.is_empty() || (!all && buffer.len() < CHUNK_BYTES) {
                continue;
            }
            let capacity = if all { 0 } else { CHUNK_BYTES + (CHUNK_BYTES >> 4) };
            let data = std::mem::replace(buffer, Vec::with_capacity(capacity));
            jobs.push(Job::Copy { table, data });
        }
        jobs
    }
}

/// One row being appended to a COPY text buffer: each value writes its separator before it
/// (but the first), [`Row::end`] ends the line.
struct Row<'a> {
    buffer: &'a mut Vec<u8>,
    first: bool,
}

impl Row<'_> {
    fn separator(&mut self) {
        if !std::mem::take(&mut self.first) {
            self.buffer.push(b'\t');
        }
    }

    fn end(&mut self) {
        self.buffer.push(b'\n');
    }

    fn null(&mut self) {
        self.separator();
        self.buffer.extend_from_slice(b"\\N");
    }

    fn int(&mut self, value: i64) {
        self.separator();
        if value < 0 {
            self.buffer.push(b'-');
        }
        let mut n = value.unsigned_abs();
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.buffer.extend_from_slice(&digits[i..]);
    }

    fn opt_int(&mut self, value: Option<i64>) {
        match value {
            Some(value) => self.int(value),
            None => self.null(),
        }
    }

    fn uuid(&mut self, id: &Uuid) {
        self.separator();
        let mut text = Uuid::encode_buffer();
        self.buffer
            .extend_from_slice(id.hyphenated().encode_lower(&mut text).as_bytes());
    }

    /// Text with COPY's escapes for the characters that would end a value or a row.
    fn text(&mut self, value: &str) {
        self.separator();
        let bytes = value.as_bytes();
        if !bytes.iter().any(|b| matches!(b, b'\\' | b'\t' | b'\n' | b'\r')) {
            self.buffer.extend_from_slice(bytes);
            return;
        }
        for &b in bytes {
            match b {
                b'\\' => self.buffer.extend_from_slice(b"\\\\"),
                b'\t' => self.buffer.extend_from_slice(b"\\t"),
                b'\n' => self.buffer.extend_from_slice(b"\\n"),
                b'\r' => self.buffer.extend_from_slice(b"\\r"),
                _ => self.buffer.push(b),
            }
        }
    }

    fn opt_text(&mut self, value: Option<&str>) {
        match value {
            Some(value) => self.text(value),
            None => self.null(),
        }
    }
}

/// Rows to insert with the batch path's own statements (SQLite).
#[derive(Default)]
struct InsertOut {
    order_versions: Vec<OrderVersion>,
    customer_versions: Vec<CustomerVersion>,
    payment_versions: Vec<PaymentVersion>,
    saga_versions: Vec<SagaVersion>,
    orders: Vec<OrderState>,
    customers: Vec<CustomerState>,
    payments: Vec<PaymentState>,
    sagas: Vec<SagaProgress>,
    totals: Vec<(TotalKey, (i64, i64))>,
}

impl InsertOut {
    fn rows(&self) -> usize {
        self.order_versions.len()
            + self.customer_versions.len()
            + self.payment_versions.len()
            + self.saga_versions.len()
            + self.orders.len()
            + self.customers.len()
            + self.payments.len()
            + self.sagas.len()
            + self.totals.len()
    }

    /// Inserts everything (into empty tables: the upserts only ever insert).
    async fn write(&self, conn: &mut sqlx::AnyConnection, prefix: &str) -> Result<u64, ProjectionError> {
        insert_order_versions(conn, prefix, &self.order_versions).await?;
        insert_customer_versions(conn, prefix, &self.customer_versions).await?;
        insert_payment_versions(conn, prefix, &self.payment_versions).await?;
        insert_saga_versions(conn, prefix, &self.saga_versions).await?;
        let orders: Vec<&OrderState> = self.orders.iter().collect();
        upsert_orders(conn, prefix, &orders).await?;
        let customers: Vec<&CustomerState> = self.customers.iter().collect();
        upsert_customers(conn, prefix, &customers).await?;
        let payments: Vec<&PaymentState> = self.payments.iter().collect();
        upsert_payments(conn, prefix, &payments).await?;
        let sagas: Vec<&SagaProgress> = self.sagas.iter().collect();
        upsert_sagas(conn, prefix, &sagas).await?;
        let totals: Vec<_> = self.totals.iter().map(|(key, value)| (key, value)).collect();
        add_totals(conn, prefix, &totals).await?;
        Ok(self.rows() as u64)
    }
}

// ---------------------------------------------------------------------------------------------
// The writers

/// PostgreSQL: one transaction for the whole load of `tables`, on a connection of its own.
/// It takes the keys off its tables first (an ACCESS EXCLUSIVE lock on each until it commits:
/// the writers never share a table) and puts them back at the end, with the indexes.
async fn copy_writer(
    mut conn: PgConnection,
    prefix: String,
    version: u32,
    tables: &'static [Table],
    mut jobs: mpsc::Receiver<Job>,
) -> Result<u64, ProjectionError> {
    let mut tx = conn.begin().await?;
    for statement in statements_on(DROP_KEYS_SQL, tables) {
        sqlx::raw_sql(AssertSqlSafe(statement.replace("{prefix}", &prefix)))
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query(INDEX_BUILD_MEMORY).execute(&mut *tx).await?;
    let mut rows = 0;
    while let Some(job) = jobs.recv().await {
        let (checkpoints, dead_letters, after) = match job {
            Job::Copy { table, data } if tables.contains(&table) => {
                let statement = format!("COPY {prefix}{} ({}) FROM STDIN", table.name(), table.columns());
                let mut copy = tx.copy_in_raw(&statement).await?;
                copy.send(data.as_slice()).await?;
                rows += copy.finish().await?;
                continue;
            }
            Job::Copy { table, .. } => {
                return Err(ProjectionError::Inconsistent(format!(
                    "{} rows sent to the writer of another table",
                    table.name()
                )));
            }
            Job::Insert(_) => {
                return Err(ProjectionError::Inconsistent(
                    "rows to insert sent to a COPY writer".to_owned(),
                ));
            }
            Job::Finish {
                checkpoints,
                dead_letters,
                after,
            } => (checkpoints, dead_letters, after),
        };
        let started = Instant::now();
        for statement in statements_on(ADD_KEYS_SQL, tables)
            .into_iter()
            .chain(statements_on(INDEXES_SQL, tables))
        {
            let one = Instant::now();
            sqlx::raw_sql(AssertSqlSafe(statement.replace("{prefix}", &prefix)))
                .execute(&mut *tx)
                .await?;
            debug!(
                projection = NAME,
                version,
                statement,
                seconds = one.elapsed().as_secs_f64(),
                "bulk load: key or index built"
            );
        }
        info!(projection = NAME, version, rows, seconds = started.elapsed().as_secs_f64(),
            tables = ?tables.iter().map(|t| t.name()).collect::<Vec<_>>(), "bulk load: keys and indexes built");
        // Statistics now, not whenever autovacuum gets to it: without them the planner guesses
        // (1,021 rows for any status) and, on the read API's status + customer list, intersected
        // two bitmap scans, one over every delivered order: 14-40 ms instead of < 1 ms
        // (`bench reads` at 200k orders, seen in PostgreSQL's slow-statement log).
        for table in tables {
            sqlx::raw_sql(AssertSqlSafe(format!("ANALYZE {prefix}{}", table.name())))
                .execute(&mut *tx)
                .await?;
        }
        for other in after {
            rows += other
                .await
                .map_err(|cause| ProjectionError::Inconsistent(format!("a bulk writer failed: {cause}")))??;
        }
        let now = micros(Utc::now());
        if !checkpoints.is_empty() {
            sqlx::query(AssertSqlSafe(save_checkpoints_sql(Dialect::Postgres, 1)))
                .bind(checkpoint_rows(NAME, version, &checkpoints, now))
                .execute(&mut *tx)
                .await?;
        }
        for letter in &dead_letters {
            sqlx::query(SAVE_DEAD_LETTER_SQL)
                .bind(NAME)
                .bind(i64::from(version))
                .bind(letter.origin.source.as_str())
                .bind(i64::from(letter.origin.partition))
                .bind(letter.origin.offset)
                .bind(to_i64(letter.position))
                .bind(letter.event_type.as_str())
                .bind(letter.reason.as_str())
                .bind(letter.payload.as_slice())
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        if !dead_letters.is_empty() {
            metrics::counter!("orderflow_projection_dead_letters_total", "projection" => NAME)
                .increment(dead_letters.len() as u64);
        }
        return Ok(rows);
    }
    Err(ProjectionError::Invalid(
        "the bulk load was abandoned before it finished".to_owned(),
    ))
}

/// The statements of one of the `.sql` files that work on `tables` (each statement names its
/// table first: `ALTER TABLE {prefix}t ...`, `CREATE INDEX ... ON {prefix}t ...`).
fn statements_on(script: &str, tables: &[Table]) -> Vec<String> {
    statements(script)
        .into_iter()
        .filter(|statement| {
            let table = match statement.split_once(" ON ") {
                Some((_, rest)) => rest,
                None => statement.strip_prefix("ALTER TABLE ").unwrap_or(statement),
            };
            let table = table.split_whitespace().next().unwrap_or_default();
            tables.iter().any(|t| table.strip_prefix("{prefix}") == Some(t.name()))
        })
        .collect()
}

/// The statements of a `.sql` file (each ends with `;` at the end of a line; comments dropped).
fn statements(script: &str) -> Vec<String> {
    let mut statements = Vec::new();
    let mut current = String::new();
    for line in script.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with("--") {
            continue;
        }
        current.push_str(line);
        current.push(' ');
        if line.ends_with(';') {
            statements.push(std::mem::take(&mut current));
        }
    }
    statements
}

/// SQLite: a transaction per chunk (see the module doc), the indexes and checkpoint last.
async fn insert_writer(
    db: ReadDb,
    prefix: String,
    version: u32,
    mut jobs: mpsc::Receiver<Job>,
) -> Result<u64, ProjectionError> {
    let mut rows = 0;
    while let Some(job) = jobs.recv().await {
        match job {
            Job::Insert(out) => {
                let mut tx = db.begin_write().await?;
                rows += out.write(&mut tx, &prefix).await?;
                tx.commit().await?;
            }
            Job::Copy { .. } => {
                return Err(ProjectionError::Inconsistent(
                    "COPY rows sent to the SQLite writer".to_owned(),
                ));
            }
            Job::Finish {
                checkpoints,
                dead_letters,
                after,
            } => {
                for other in after {
                    rows += other
                        .await
                        .map_err(|cause| ProjectionError::Inconsistent(format!("a bulk writer failed: {cause}")))??;
                }
                let mut tx = db.begin_write().await?;
                sqlx::raw_sql(AssertSqlSafe(INDEXES_SQL.replace("{prefix}", &prefix)))
                    .execute(&mut *tx)
                    .await?;
                save_checkpoints(&mut tx, NAME, version, &checkpoints).await?;
                save_dead_letters(&mut tx, NAME, version, &dead_letters).await?;
                tx.commit().await?;
                return Ok(rows);
            }
        }
    }
    Err(ProjectionError::Invalid(
        "the bulk load was abandoned before it finished".to_owned(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_and_index_statement_belongs_to_exactly_one_writer() {
        for script in [DROP_KEYS_SQL, ADD_KEYS_SQL, INDEXES_SQL] {
            let all = statements(script);
            let history = statements_on(script, &HISTORY_TABLES);
            let current = statements_on(script, &CURRENT_TABLES);
            assert!(!history.is_empty() && !current.is_empty(), "{all:?}");
            assert_eq!(history.len() + current.len(), all.len(), "{all:?}");
            assert!(history.iter().all(|s| !current.contains(s)));
        }
    }

    #[test]
    fn copy_text_escapes_what_would_end_a_value_and_writes_nulls_and_numbers() {
        let mut buffer = Vec::new();
        let mut row = Row {
            buffer: &mut buffer,
            first: true,
        };
        row.text("");
        row.text("a\tb\n\r\\ \\N é");
        row.opt_text(None);
        row.int(0);
        row.int(-42);
        row.int(i64::MIN);
        row.opt_int(Some(i64::MAX));
        row.uuid(&Uuid::nil());
        row.end();
        assert_eq!(
            String::from_utf8(buffer).unwrap_or_default(),
            "\ta\\tb\\n\\r\\\\ \\\\N é\t\\N\t0\t-42\t-9223372036854775808\t9223372036854775807\t\
             00000000-0000-0000-0000-000000000000\n"
        );
    }
}
