//! disintegrate 4 with disintegrate-postgres 4: one events enum with an order stream and a
//! product stream, a `StateQuery` state per aggregate and a `Decision` per command, each command
//! through `DecisionMaker::make` (query the state's events, decide, append in a SERIALIZABLE
//! transaction that checks nothing newer matches the query), snapshots on (`PgSnapshotter`, every
//! N events, N = orderflow's snapshot frequency). Its `event.event_id` is a global log: the
//! catch-up reads it through the library's own `EventStore::stream`.
//!
//! On PostgreSQL 15 its migrator fails (a hex literal only PostgreSQL 16 parses): [`PG15_SCHEMA`]
//! is the same SQL with the literal in decimal, created by hand there.

use std::sync::OnceLock;
use std::time::Instant;

use disintegrate::serde::json::Json;
use disintegrate::{
    Decision, DecisionError, Event, EventStore as _, StateMutate, StateQuery, StreamItem, WithSnapshot,
};
use disintegrate_postgres::{PgDecisionMaker, PgEventStore, PgSnapshotter, WithPgSnapshot};
use futures::TryStreamExt as _;
use serde::{Deserialize, Serialize};
use sqlx08::postgres::{PgPool, PgPoolOptions};
use uuid::Uuid;

use crate::cqrs_es::outcome;
use crate::harness::{Outcome, retrying};
use crate::model::{self, DomainError, Placement, SAMPLE_ID, Status, padding};
use crate::pg::Scratch;
use crate::system::{CatchUp, Settings, System, Workload};

#[derive(Debug, Clone, PartialEq, Eq, Event, Serialize, Deserialize)]
#[stream(OrderEvent, [OrderPlaced, OrderConfirmed, OrderShipped])]
#[stream(ProductEvent, [ProductAdded, ProductRestocked])]
pub(crate) enum DomainEvent {
    OrderPlaced {
        #[id]
        order_id: Uuid,
        customer_id: Uuid,
        product_id: Uuid,
        sku: String,
        quantity: i64,
        unit_price_minor: i64,
        total_minor: i64,
        currency: String,
        note: String,
    },
    OrderConfirmed {
        #[id]
        order_id: Uuid,
        confirmed_by: String,
        note: String,
    },
    OrderShipped {
        #[id]
        order_id: Uuid,
        carrier: String,
        tracking: String,
        note: String,
    },
    ProductAdded {
        #[id]
        product_id: Uuid,
        sku: String,
        name: String,
        price_minor: i64,
        currency: String,
        stock: i64,
        note: String,
    },
    ProductRestocked {
        #[id]
        product_id: Uuid,
        quantity: i64,
        note: String,
    },
}

/// Pads to [`model::EVENT_BYTES`] as disintegrate stores the payload: the serde JSON of the
/// whole `DomainEvent` (externally tagged, the id inside).
fn notes() -> &'static [String; 5] {
    static NOTES: OnceLock<[String; 5]> = OnceLock::new();
    NOTES.get_or_init(|| {
        [
            padding(|note| placed(SAMPLE_ID, &Placement::of(0, 0), note)),
            padding(|note| DomainEvent::OrderConfirmed {
                order_id: SAMPLE_ID,
                confirmed_by: model::CONFIRMED_BY.to_owned(),
                note,
            }),
            padding(|note| DomainEvent::OrderShipped {
                order_id: SAMPLE_ID,
                carrier: model::CARRIER.to_owned(),
                tracking: model::TRACKING.to_owned(),
                note,
            }),
            padding(|note| product_added(SAMPLE_ID, note)),
            padding(|note| DomainEvent::ProductRestocked {
                product_id: SAMPLE_ID,
                quantity: 1,
                note,
            }),
        ]
    })
}

fn placed(order_id: Uuid, p: &Placement, note: String) -> DomainEvent {
    DomainEvent::OrderPlaced {
        order_id,
        customer_id: p.customer_id,
        product_id: p.product_id,
        sku: p.sku.clone(),
        quantity: p.quantity,
        unit_price_minor: p.unit_price_minor,
        total_minor: p.total_minor(),
        currency: model::CURRENCY.to_owned(),
        note,
    }
}

fn product_added(product_id: Uuid, note: String) -> DomainEvent {
    DomainEvent::ProductAdded {
        product_id,
        sku: "SKU-HOT".to_owned(),
        name: "Hot product".to_owned(),
        price_minor: 450,
        currency: model::CURRENCY.to_owned(),
        stock: 0,
        note,
    }
}

#[derive(Debug, Default, Clone, StateQuery, Serialize, Deserialize)]
#[state_query(OrderEvent)]
pub(crate) struct Order {
    #[id]
    order_id: Uuid,
    status: Status,
    total_minor: i64,
}

impl StateMutate for Order {
    fn mutate(&mut self, event: OrderEvent) {
        match event {
            OrderEvent::OrderPlaced { total_minor, .. } => {
                self.status = Status::Placed;
                self.total_minor = total_minor;
            }
            OrderEvent::OrderConfirmed { .. } => self.status = Status::Confirmed,
            OrderEvent::OrderShipped { .. } => self.status = Status::Shipped,
        }
    }
}

#[derive(Debug, Default, Clone, StateQuery, Serialize, Deserialize)]
#[state_query(ProductEvent)]
pub(crate) struct Product {
    #[id]
    product_id: Uuid,
    exists: bool,
    available: i64,
}

impl StateMutate for Product {
    fn mutate(&mut self, event: ProductEvent) {
        match event {
            ProductEvent::ProductAdded { stock, .. } => {
                self.exists = true;
                self.available = stock;
            }
            ProductEvent::ProductRestocked { quantity, .. } => self.available += quantity,
        }
    }
}

struct PlaceOrder(Uuid, Placement);
struct ConfirmOrder(Uuid);
struct ShipOrder(Uuid);
struct AddProduct(Uuid);
struct Restock(Uuid);

fn order(id: Uuid) -> Order {
    Order {
        order_id: id,
        ..Order::default()
    }
}

fn require(state: &Order, status: Status) -> Result<(), DomainError> {
    if state.status == status {
        Ok(())
    } else {
        Err(DomainError::InvalidTransition(state.status))
    }
}

impl Decision for PlaceOrder {
    type Event = DomainEvent;
    type StateQuery = Order;
    type Error = DomainError;

    fn state_query(&self) -> Order {
        order(self.0)
    }

    fn process(&self, state: &Order) -> Result<Vec<DomainEvent>, DomainError> {
        require(state, Status::New)?;
        Ok(vec![placed(self.0, &self.1, notes()[0].clone())])
    }
}

impl Decision for ConfirmOrder {
    type Event = DomainEvent;
    type StateQuery = Order;
    type Error = DomainError;

    fn state_query(&self) -> Order {
        order(self.0)
    }

    fn process(&self, state: &Order) -> Result<Vec<DomainEvent>, DomainError> {
        require(state, Status::Placed)?;
        Ok(vec![DomainEvent::OrderConfirmed {
            order_id: self.0,
            confirmed_by: model::CONFIRMED_BY.to_owned(),
            note: notes()[1].clone(),
        }])
    }
}

impl Decision for ShipOrder {
    type Event = DomainEvent;
    type StateQuery = Order;
    type Error = DomainError;

    fn state_query(&self) -> Order {
        order(self.0)
    }

    fn process(&self, state: &Order) -> Result<Vec<DomainEvent>, DomainError> {
        require(state, Status::Confirmed)?;
        Ok(vec![DomainEvent::OrderShipped {
            order_id: self.0,
            carrier: model::CARRIER.to_owned(),
            tracking: model::TRACKING.to_owned(),
            note: notes()[2].clone(),
        }])
    }
}

fn product(id: Uuid) -> Product {
    Product {
        product_id: id,
        ..Product::default()
    }
}

impl Decision for AddProduct {
    type Event = DomainEvent;
    type StateQuery = Product;
    type Error = DomainError;

    fn state_query(&self) -> Product {
        product(self.0)
    }

    fn process(&self, state: &Product) -> Result<Vec<DomainEvent>, DomainError> {
        if state.exists {
            return Err(DomainError::ProductExists);
        }
        Ok(vec![product_added(self.0, notes()[3].clone())])
    }
}

impl Decision for Restock {
    type Event = DomainEvent;
    type StateQuery = Product;
    type Error = DomainError;

    fn state_query(&self) -> Product {
        product(self.0)
    }

    fn process(&self, state: &Product) -> Result<Vec<DomainEvent>, DomainError> {
        if !state.exists {
            return Err(DomainError::NoProduct);
        }
        Ok(vec![DomainEvent::ProductRestocked {
            product_id: self.0,
            quantity: 1,
            note: notes()[4].clone(),
        }])
    }
}

type Serde = Json<DomainEvent>;
type Dm = PgDecisionMaker<DomainEvent, Serde, WithPgSnapshot>;

/// disintegrate-postgres 4.0.1's migrator SQL with `0xFFFFFFFF` written `4294967295`, so that it
/// runs on PostgreSQL 15, and a column with a partial index per `#[id]` (`order_id`,
/// `product_id`), as its migrator adds them.
const PG15_SCHEMA: &str = r#"
CREATE SEQUENCE IF NOT EXISTS seq_event_event_id;
CREATE TABLE IF NOT EXISTS event (
    event_id BIGINT PRIMARY KEY DEFAULT nextval('seq_event_event_id'),
    event_type VARCHAR(255),
    payload BYTEA,
    inserted_at TIMESTAMP DEFAULT now()
);
CREATE INDEX IF NOT EXISTS idx_event_type_btree ON event(event_type);
CREATE OR REPLACE FUNCTION event_store_current_epoch()
RETURNS BIGINT AS $$
DECLARE
    persisted_event_id BIGINT;
    pending_event_id BIGINT;
    db_id INT;
BEGIN
    SELECT COALESCE(MAX(event_id), 0) INTO persisted_event_id FROM event;
    SELECT oid INTO db_id FROM pg_database WHERE datname = current_database();
    SELECT MIN((l3.objid::bigint << 32) + l2.objid::bigint)
    INTO pending_event_id
    FROM pg_locks l1
    INNER JOIN pg_locks l2 ON l1.pid = l2.pid
    INNER JOIN pg_locks l3 ON l1.pid = l3.pid
    WHERE l1.classid = db_id AND l2.classid = 1 AND l3.classid = 2 AND l1.locktype = 'advisory';
    RETURN LEAST(COALESCE(pending_event_id, persisted_event_id), persisted_event_id);
END;
$$ LANGUAGE plpgsql;
CREATE OR REPLACE FUNCTION event_store_begin_epoch()
RETURNS void AS $$
DECLARE
    id BIGINT;
    db_id INT;
BEGIN
    SELECT last_value INTO id FROM seq_event_event_id;
    SELECT oid INTO db_id FROM pg_database WHERE datname = current_database();
    PERFORM pg_try_advisory_xact_lock_shared(db_id, 0);
    PERFORM pg_try_advisory_xact_lock_shared(1, (id & 4294967295)::bit(32)::integer);
    PERFORM pg_try_advisory_xact_lock_shared(2, (id >> 32)::bit(32)::integer);
END;
$$ LANGUAGE plpgsql;
ALTER TABLE event ADD COLUMN IF NOT EXISTS order_id UUID;
CREATE INDEX IF NOT EXISTS idx_event_order_id ON event (order_id) WHERE order_id IS NOT NULL;
ALTER TABLE event ADD COLUMN IF NOT EXISTS product_id UUID;
CREATE INDEX IF NOT EXISTS idx_event_product_id ON event (product_id) WHERE product_id IS NOT NULL;
"#;

/// The event store on `pool`: its migrator, or on PostgreSQL 15 the same schema by hand.
async fn event_store(pool: &PgPool) -> anyhow::Result<(PgEventStore<DomainEvent, Serde>, bool)> {
    match PgEventStore::try_new(pool.clone(), Json::default()).await {
        Ok(es) => Ok((es, false)),
        Err(disintegrate_postgres::Error::Migration(e)) if format!("{e:?}").contains("42601") => {
            sqlx08::raw_sql(PG15_SCHEMA).execute(pool).await?;
            Ok((PgEventStore::new_uninitialized(pool.clone(), Json::default()), true))
        }
        Err(e) => Err(e.into()),
    }
}

/// A conflict: the append's check found a newer matching event (`Concurrency`), or the
/// SERIALIZABLE transaction was aborted (40001, also between different aggregates: SSI's
/// predicate locks) or deadlocked (40P01). All are retried.
fn is_conflict<E>(e: &DecisionError<E>) -> bool {
    let DecisionError::StateStore(b) = e else {
        return false;
    };
    match b.downcast_ref::<disintegrate_postgres::Error>() {
        Some(disintegrate_postgres::Error::Concurrency) => true,
        Some(disintegrate_postgres::Error::Database(sqlx08::Error::Database(db))) => {
            matches!(db.code().as_deref(), Some("40001" | "40P01"))
        }
        _ => false,
    }
}

pub(crate) struct Disintegrate {
    pool: PgPool,
    database: String,
    dm: Dm,
    hot_product: Option<Uuid>,
}

/// `make` of the decision `$decision` (an expression, built again for each attempt) with the
/// conflict retries.
macro_rules! make {
    ($self:expr, $decision:expr) => {{
        let (result, conflicts, retries) = retrying(|| $self.dm.make($decision), is_conflict).await;
        (result.map(|_| ()).map_err(|e| e.to_string()), conflicts, retries)
    }};
}

impl System for Disintegrate {
    async fn open(
        scratch: &mut Scratch,
        workload: Workload,
        writers: usize,
        settings: Settings,
    ) -> anyhow::Result<Self> {
        let database = scratch.create("disintegrate").await?;
        let pool = PgPoolOptions::new()
            .max_connections(writers as u32 + 2)
            .connect(&scratch.server.url_of(&database))
            .await?;
        let (es, _) = event_store(&pool).await?;
        let snapshotter = PgSnapshotter::try_new(pool.clone(), settings.snapshot_every).await?;
        let dm = disintegrate_postgres::decision_maker(es, WithSnapshot::new(snapshotter));
        let hot_product = if workload == Workload::Contention {
            let id = model::new_id();
            dm.make(AddProduct(id)).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            Some(id)
        } else {
            None
        };
        Ok(Disintegrate {
            pool,
            database,
            dm,
            hot_product,
        })
    }

    async fn place(&self, writer: usize, seq: u64) -> Outcome {
        let id = model::new_id();
        let p = Placement::of(writer, seq);
        let (result, conflicts, retries) = make!(self, PlaceOrder(id, p.clone()));
        outcome(result, 1, conflicts, retries)
    }

    async fn lifecycle(&self, writer: usize, seq: u64) -> Outcome {
        let id = model::new_id();
        let p = Placement::of(writer, seq);
        let mut done = Outcome::ok(0);
        for step in 0..3 {
            let (result, conflicts, retries) = match step {
                0 => make!(self, PlaceOrder(id, p.clone())),
                1 => make!(self, ConfirmOrder(id)),
                _ => make!(self, ShipOrder(id)),
            };
            done.conflicts += conflicts;
            done.retries += retries;
            match result {
                Ok(()) => done.events += 1,
                Err(e) => {
                    done.ok = false;
                    done.error = Some(e);
                    return done;
                }
            }
        }
        done
    }

    async fn restock(&self, _writer: usize, _seq: u64) -> Outcome {
        let Some(id) = self.hot_product else {
            return Outcome::failed(0, "no hot product: opened for another workload");
        };
        let (result, conflicts, retries) = make!(self, Restock(id));
        outcome(result, 1, conflicts, retries)
    }

    fn databases(&self) -> Vec<String> {
        vec![self.database.clone()]
    }

    fn seeded_events(&self) -> u64 {
        u64::from(self.hot_product.is_some())
    }

    fn count_query(&self) -> (String, String) {
        (self.database.clone(), "SELECT count(*) FROM event".to_owned())
    }

    fn payload_query(&self) -> (String, String) {
        (
            self.database.clone(),
            "SELECT avg(octet_length(payload))::float8 FROM event".to_owned(),
        )
    }

    async fn close(self) {
        drop(self.dm);
        self.pool.close().await;
    }
}

/// Seeds `events` order events into a fresh store (one `INSERT … SELECT generate_series` in the
/// library's own table format: its payload, its `order_id` column, its sequence), then reads
/// them all in global order through the library's `EventStore::stream` over every event type,
/// deserializing each.
pub(crate) async fn catch_up(scratch: &mut Scratch, events: u64) -> anyhow::Result<CatchUp> {
    let database = scratch.create("disintegrate").await?;
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(&scratch.server.url_of(&database))
        .await?;
    let result = async {
        let (es, _) = event_store(&pool).await?;
        let placeholder = Uuid::nil();
        let sample = serde_json::to_string(&placed(placeholder, &Placement::of(0, 0), notes()[0].clone()))?;
        let seeded = Instant::now();
        sqlx08::query(
            "INSERT INTO event (event_type, payload, order_id) \
             SELECT 'OrderPlaced', convert_to(replace($1, $2, md5(g::text)::uuid::text), 'UTF8'), md5(g::text)::uuid \
             FROM generate_series(1, $3) AS g",
        )
        .bind(&sample)
        .bind(placeholder.to_string())
        .bind(events as i64)
        .execute(&pool)
        .await?;
        sqlx08::query("ANALYZE event").execute(&pool).await?;
        let seed_seconds = seeded.elapsed().as_secs_f64();
        let started = Instant::now();
        let all = disintegrate::query!(DomainEvent);
        let mut stream = es.stream(&all);
        let mut read = 0_u64;
        while let Some(item) = stream.try_next().await? {
            if let StreamItem::Event(e) = item {
                let _event: DomainEvent = e.into_inner();
                read += 1;
            }
        }
        let read_seconds = started.elapsed().as_secs_f64();
        anyhow::Ok(CatchUp {
            database: database.clone(),
            seeded: events,
            seed_seconds,
            read,
            read_seconds,
        })
    }
    .await;
    pool.close().await;
    result
}
