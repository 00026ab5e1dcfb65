//! cqrs-es 0.5 with postgres-es 0.5: the order and the product as `Aggregate`s, each command
//! through `CqrsFramework::execute` (load: snapshot then events, handle, commit), snapshots on
//! (`postgres_snapshot_cqrs`, every N events, N = orderflow's snapshot frequency). postgres-es
//! does not create its tables: [`SCHEMA`] is its `db/init.sql` (without the sample view).
//! No global log: its events have no global position (`stream_all_events` orders by the
//! per-aggregate sequence), so no catch-up figure.

use std::sync::{Arc, OnceLock};

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, AggregateError, DomainEvent};
use postgres_es::PostgresCqrs;
use serde::{Deserialize, Serialize};
use sqlx08::postgres::{PgPool, PgPoolOptions};
use uuid::Uuid;

use crate::harness::{Outcome, retrying};
use crate::model::{self, DomainError, OrderCommand, Placement, SAMPLE_ID, Status, padding};
use crate::pg::Scratch;
use crate::system::{Settings, System, Workload};

/// The order: the aggregate is its own state (snapshots store it as JSON).
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Order {
    status: Status,
    total_minor: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum OrderEvent {
    Placed {
        customer_id: Uuid,
        product_id: Uuid,
        sku: String,
        quantity: i64,
        unit_price_minor: i64,
        total_minor: i64,
        currency: String,
        note: String,
    },
    Confirmed {
        confirmed_by: String,
        note: String,
    },
    Shipped {
        carrier: String,
        tracking: String,
        note: String,
    },
}

impl DomainEvent for OrderEvent {
    fn event_type(&self) -> String {
        match self {
            OrderEvent::Placed { .. } => "OrderPlaced",
            OrderEvent::Confirmed { .. } => "OrderConfirmed",
            OrderEvent::Shipped { .. } => "OrderShipped",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

/// Pads to [`model::EVENT_BYTES`] as postgres-es stores the payload: the serde JSON of the
/// event (externally tagged), the aggregate id in a column of its own.
fn notes() -> &'static [String; 3] {
    static NOTES: OnceLock<[String; 3]> = OnceLock::new();
    NOTES.get_or_init(|| {
        let p = Placement::of(0, 0);
        [
            padding(|note| OrderEvent::Placed {
                customer_id: SAMPLE_ID,
                product_id: SAMPLE_ID,
                sku: p.sku.clone(),
                quantity: 2,
                unit_price_minor: 1234,
                total_minor: 2468,
                currency: model::CURRENCY.to_owned(),
                note,
            }),
            padding(|note| OrderEvent::Confirmed {
                confirmed_by: model::CONFIRMED_BY.to_owned(),
                note,
            }),
            padding(|note| OrderEvent::Shipped {
                carrier: model::CARRIER.to_owned(),
                tracking: model::TRACKING.to_owned(),
                note,
            }),
        ]
    })
}

impl Aggregate for Order {
    const TYPE: &'static str = "order";
    type Command = OrderCommand;
    type Event = OrderEvent;
    type Error = DomainError;
    type Services = ();

    async fn handle(&mut self, command: OrderCommand, _: &(), sink: &EventSink<Self>) -> Result<(), DomainError> {
        let [placed, confirmed, shipped] = notes();
        let event = match (self.status, command) {
            (Status::New, OrderCommand::Place(p)) => OrderEvent::Placed {
                customer_id: p.customer_id,
                product_id: p.product_id,
                total_minor: p.total_minor(),
                sku: p.sku,
                quantity: p.quantity,
                unit_price_minor: p.unit_price_minor,
                currency: model::CURRENCY.to_owned(),
                note: placed.clone(),
            },
            (Status::Placed, OrderCommand::Confirm) => OrderEvent::Confirmed {
                confirmed_by: model::CONFIRMED_BY.to_owned(),
                note: confirmed.clone(),
            },
            (Status::Confirmed, OrderCommand::Ship) => OrderEvent::Shipped {
                carrier: model::CARRIER.to_owned(),
                tracking: model::TRACKING.to_owned(),
                note: shipped.clone(),
            },
            (status, _) => return Err(DomainError::InvalidTransition(status)),
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: OrderEvent) {
        match event {
            OrderEvent::Placed { total_minor, .. } => {
                self.status = Status::Placed;
                self.total_minor = total_minor;
            }
            OrderEvent::Confirmed { .. } => self.status = Status::Confirmed,
            OrderEvent::Shipped { .. } => self.status = Status::Shipped,
        }
    }
}

/// The product whose stock the contention workload restocks.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Product {
    exists: bool,
    available: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum ProductEvent {
    Added {
        sku: String,
        name: String,
        price_minor: i64,
        currency: String,
        stock: i64,
        note: String,
    },
    Restocked {
        quantity: i64,
        note: String,
    },
}

impl DomainEvent for ProductEvent {
    fn event_type(&self) -> String {
        match self {
            ProductEvent::Added { .. } => "ProductAdded",
            ProductEvent::Restocked { .. } => "ProductRestocked",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

#[derive(Debug)]
pub(crate) enum ProductCommand {
    Add,
    Restock { quantity: i64 },
}

fn product_notes() -> &'static [String; 2] {
    static NOTES: OnceLock<[String; 2]> = OnceLock::new();
    NOTES.get_or_init(|| {
        [
            padding(|note| ProductEvent::Added {
                sku: "SKU-HOT".to_owned(),
                name: "Hot product".to_owned(),
                price_minor: 450,
                currency: model::CURRENCY.to_owned(),
                stock: 0,
                note,
            }),
            padding(|note| ProductEvent::Restocked { quantity: 1, note }),
        ]
    })
}

impl Aggregate for Product {
    const TYPE: &'static str = "product";
    type Command = ProductCommand;
    type Event = ProductEvent;
    type Error = DomainError;
    type Services = ();

    async fn handle(&mut self, command: ProductCommand, _: &(), sink: &EventSink<Self>) -> Result<(), DomainError> {
        let [added, restocked] = product_notes();
        let event = match command {
            ProductCommand::Add if self.exists => return Err(DomainError::ProductExists),
            ProductCommand::Add => ProductEvent::Added {
                sku: "SKU-HOT".to_owned(),
                name: "Hot product".to_owned(),
                price_minor: 450,
                currency: model::CURRENCY.to_owned(),
                stock: 0,
                note: added.clone(),
            },
            ProductCommand::Restock { .. } if !self.exists => return Err(DomainError::NoProduct),
            ProductCommand::Restock { quantity } => ProductEvent::Restocked {
                quantity,
                note: restocked.clone(),
            },
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: ProductEvent) {
        match event {
            ProductEvent::Added { stock, .. } => {
                self.exists = true;
                self.available = stock;
            }
            ProductEvent::Restocked { quantity, .. } => self.available += quantity,
        }
    }
}

/// postgres-es's `db/init.sql`: it does not create its tables.
const SCHEMA: &str = "
CREATE TABLE events (
    aggregate_type text NOT NULL,
    aggregate_id   text NOT NULL,
    sequence       bigint CHECK (sequence >= 0) NOT NULL,
    event_type     text NOT NULL,
    event_version  text NOT NULL,
    payload        json NOT NULL,
    metadata       json NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
);
CREATE TABLE snapshots (
    aggregate_type   text NOT NULL,
    aggregate_id     text NOT NULL,
    last_sequence    bigint CHECK (last_sequence >= 0) NOT NULL,
    current_snapshot bigint CHECK (current_snapshot >= 0) NOT NULL,
    payload          json NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, last_sequence)
);";

/// postgres-es turns a duplicate (type, id, sequence) into `AggregateConflict`.
fn is_conflict(e: &AggregateError<DomainError>) -> bool {
    matches!(e, AggregateError::AggregateConflict)
}

pub(crate) struct CqrsEs {
    pool: PgPool,
    database: String,
    orders: Arc<PostgresCqrs<Order>>,
    products: Arc<PostgresCqrs<Product>>,
    hot_product: Option<String>,
}

impl CqrsEs {
    async fn execute_order(
        &self,
        id: &str,
        command: impl Fn() -> OrderCommand + Sync,
    ) -> (Result<(), String>, u64, u64) {
        let (result, conflicts, retries) = retrying(|| self.orders.execute(id, command()), is_conflict).await;
        (result.map_err(|e| e.to_string()), conflicts, retries)
    }
}

impl System for CqrsEs {
    async fn open(
        scratch: &mut Scratch,
        workload: Workload,
        writers: usize,
        settings: Settings,
    ) -> anyhow::Result<Self> {
        let database = scratch.create("cqrs_es").await?;
        let pool = PgPoolOptions::new()
            .max_connections(writers as u32 + 2)
            .connect(&scratch.server.url_of(&database))
            .await?;
        sqlx08::raw_sql(SCHEMA).execute(&pool).await?;
        let every = settings.snapshot_every as usize;
        let orders = Arc::new(postgres_es::postgres_snapshot_cqrs(pool.clone(), vec![], every, ()));
        let products = Arc::new(postgres_es::postgres_snapshot_cqrs(pool.clone(), vec![], every, ()));
        let hot_product = if workload == Workload::Contention {
            let id = model::new_id().to_string();
            products.execute(&id, ProductCommand::Add).await?;
            Some(id)
        } else {
            None
        };
        Ok(CqrsEs {
            pool,
            database,
            orders,
            products,
            hot_product,
        })
    }

    async fn place(&self, writer: usize, seq: u64) -> Outcome {
        let id = model::new_id().to_string();
        let p = Placement::of(writer, seq);
        let (result, conflicts, retries) = self.execute_order(&id, || OrderCommand::Place(p.clone())).await;
        outcome(result, 1, conflicts, retries)
    }

    async fn lifecycle(&self, writer: usize, seq: u64) -> Outcome {
        let id = model::new_id().to_string();
        let p = Placement::of(writer, seq);
        let mut done = Outcome::ok(0);
        let steps: [&(dyn Fn() -> OrderCommand + Sync); 3] =
            [&|| OrderCommand::Place(p.clone()), &|| OrderCommand::Confirm, &|| {
                OrderCommand::Ship
            }];
        for step in steps {
            let (result, conflicts, retries) = self.execute_order(&id, step).await;
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
        let Some(id) = &self.hot_product else {
            return Outcome::failed(0, "no hot product: opened for another workload");
        };
        let (result, conflicts, retries) = retrying(
            || self.products.execute(id, ProductCommand::Restock { quantity: 1 }),
            is_conflict,
        )
        .await;
        outcome(result.map_err(|e| e.to_string()), 1, conflicts, retries)
    }

    fn databases(&self) -> Vec<String> {
        vec![self.database.clone()]
    }

    fn seeded_events(&self) -> u64 {
        u64::from(self.hot_product.is_some())
    }

    fn count_query(&self) -> (String, String) {
        (self.database.clone(), "SELECT count(*) FROM events".to_owned())
    }

    fn payload_query(&self) -> (String, String) {
        (
            self.database.clone(),
            "SELECT avg(octet_length(payload::text))::float8 FROM events".to_owned(),
        )
    }

    async fn close(self) {
        drop(self.orders);
        drop(self.products);
        self.pool.close().await;
    }
}

/// An operation of `events` events that succeeded, or not.
pub(crate) fn outcome(result: Result<(), String>, events: u64, conflicts: u64, retries: u64) -> Outcome {
    let mut o = match result {
        Ok(()) => Outcome::ok(events),
        Err(e) => Outcome::failed(0, e),
    };
    o.conflicts = conflicts;
    o.retries = retries;
    o
}
