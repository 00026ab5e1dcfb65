//! esrs 0.18 (feature `postgres`): the order and the product as `Aggregate`s (pure, synchronous
//! `handle_command` and `apply_event`), each command through an `AggregateManager`: `load` (every
//! event of the aggregate: esrs has no snapshots) then `handle_command` (persist in one
//! transaction; a lost race is a unique-index violation). Optimistic, as the other peers; its
//! pessimistic `lock_and_load` (an advisory lock per aggregate) is not used. No global log: its
//! events have no global position (`stream_events` orders by the app's clock), so no catch-up
//! figure.

use std::sync::OnceLock;

use esrs::manager::AggregateManager;
use esrs::store::postgres::{PgStore, PgStoreBuilder, PgStoreError};
use esrs::{Aggregate, AggregateState};
use serde::{Deserialize, Serialize};
use sqlx08::postgres::{PgPool, PgPoolOptions};
use uuid::Uuid;

use crate::cqrs_es::outcome;
use crate::harness::{Outcome, retrying};
use crate::model::{self, DomainError, OrderCommand, Placement, SAMPLE_ID, Status, padding};
use crate::pg::Scratch;
use crate::system::{Settings, System, Workload};

#[derive(Debug, Default)]
pub(crate) struct OrderState {
    status: Status,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
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

/// Pads to [`model::EVENT_BYTES`] of the event's serde JSON (esrs stores it as `jsonb`, the
/// aggregate id in a column of its own).
fn notes() -> &'static [String; 5] {
    static NOTES: OnceLock<[String; 5]> = OnceLock::new();
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
            padding(product_added),
            padding(|note| ProductEvent::Restocked { quantity: 1, note }),
        ]
    })
}

pub(crate) struct Order;

impl Aggregate for Order {
    const NAME: &'static str = "order";
    type State = OrderState;
    type Command = OrderCommand;
    type Event = OrderEvent;
    type Error = DomainError;

    fn handle_command(state: &OrderState, command: OrderCommand) -> Result<Vec<OrderEvent>, DomainError> {
        let notes = notes();
        match (state.status, command) {
            (Status::New, OrderCommand::Place(p)) => Ok(vec![OrderEvent::Placed {
                customer_id: p.customer_id,
                product_id: p.product_id,
                total_minor: p.total_minor(),
                sku: p.sku,
                quantity: p.quantity,
                unit_price_minor: p.unit_price_minor,
                currency: model::CURRENCY.to_owned(),
                note: notes[0].clone(),
            }]),
            (Status::Placed, OrderCommand::Confirm) => Ok(vec![OrderEvent::Confirmed {
                confirmed_by: model::CONFIRMED_BY.to_owned(),
                note: notes[1].clone(),
            }]),
            (Status::Confirmed, OrderCommand::Ship) => Ok(vec![OrderEvent::Shipped {
                carrier: model::CARRIER.to_owned(),
                tracking: model::TRACKING.to_owned(),
                note: notes[2].clone(),
            }]),
            (status, _) => Err(DomainError::InvalidTransition(status)),
        }
    }

    fn apply_event(_state: OrderState, event: OrderEvent) -> OrderState {
        match event {
            OrderEvent::Placed { .. } => OrderState { status: Status::Placed },
            OrderEvent::Confirmed { .. } => OrderState {
                status: Status::Confirmed,
            },
            OrderEvent::Shipped { .. } => OrderState {
                status: Status::Shipped,
            },
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct ProductState {
    exists: bool,
    available: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
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

fn product_added(note: String) -> ProductEvent {
    ProductEvent::Added {
        sku: "SKU-HOT".to_owned(),
        name: "Hot product".to_owned(),
        price_minor: 450,
        currency: model::CURRENCY.to_owned(),
        stock: 0,
        note,
    }
}

pub(crate) enum ProductCommand {
    Add,
    Restock { quantity: i64 },
}

pub(crate) struct Product;

impl Aggregate for Product {
    const NAME: &'static str = "product";
    type State = ProductState;
    type Command = ProductCommand;
    type Event = ProductEvent;
    type Error = DomainError;

    fn handle_command(state: &ProductState, command: ProductCommand) -> Result<Vec<ProductEvent>, DomainError> {
        match command {
            ProductCommand::Add if state.exists => Err(DomainError::ProductExists),
            ProductCommand::Add => Ok(vec![product_added(notes()[3].clone())]),
            ProductCommand::Restock { .. } if !state.exists => Err(DomainError::NoProduct),
            ProductCommand::Restock { quantity } => Ok(vec![ProductEvent::Restocked {
                quantity,
                note: notes()[4].clone(),
            }]),
        }
    }

    fn apply_event(state: ProductState, event: ProductEvent) -> ProductState {
        match event {
            ProductEvent::Added { stock, .. } => ProductState {
                exists: true,
                available: stock,
            },
            ProductEvent::Restocked { quantity, .. } => ProductState {
                available: state.available + quantity,
                ..state
            },
        }
    }
}

/// The loser of a race violates the unique (aggregate_id, sequence_number) index: 23505.
fn is_conflict(e: &str) -> bool {
    e.starts_with(CONFLICT)
}

const CONFLICT: &str = "conflict: ";

/// A store error as text, conflicts marked.
fn store_error(e: PgStoreError) -> String {
    match &e {
        PgStoreError::Sqlx(sqlx08::Error::Database(db)) if db.code().as_deref() == Some("23505") => {
            format!("{CONFLICT}{e}")
        }
        _ => e.to_string(),
    }
}

/// Load (or start, for an id with no events) then handle: what every esrs command is.
macro_rules! execute {
    ($manager:expr, $id:expr, $command:expr) => {{
        let (manager, id, command) = (&$manager, $id, $command);
        async move {
            // `with_id` for a missing aggregate: `unwrap_or_default` would give it a random id.
            let state = manager
                .load(id)
                .await
                .map_err(store_error)?
                .unwrap_or_else(|| AggregateState::with_id(id));
            match manager.handle_command(state, command).await {
                Ok(Ok(_)) => Ok::<(), String>(()),
                Ok(Err(domain)) => Err(domain.to_string()),
                Err(e) => Err(store_error(e)),
            }
        }
    }};
}

pub(crate) struct Esrs {
    pool: PgPool,
    database: String,
    orders: AggregateManager<PgStore<Order>>,
    products: AggregateManager<PgStore<Product>>,
    hot_product: Option<Uuid>,
}

impl System for Esrs {
    async fn open(scratch: &mut Scratch, workload: Workload, writers: usize, _: Settings) -> anyhow::Result<Self> {
        let database = scratch.create("esrs").await?;
        let pool = PgPoolOptions::new()
            .max_connections(writers as u32 + 2)
            .connect(&scratch.server.url_of(&database))
            .await?;
        // try_build runs esrs's migrations: table `<name>_events` per aggregate.
        let orders: PgStore<Order> = PgStoreBuilder::new(pool.clone()).try_build().await?;
        let products: PgStore<Product> = PgStoreBuilder::new(pool.clone()).try_build().await?;
        let orders = AggregateManager::new(orders);
        let products = AggregateManager::new(products);
        let hot_product = if workload == Workload::Contention {
            let id = model::new_id();
            execute!(products, id, ProductCommand::Add)
                .await
                .map_err(|e| anyhow::anyhow!(e))?;
            Some(id)
        } else {
            None
        };
        Ok(Esrs {
            pool,
            database,
            orders,
            products,
            hot_product,
        })
    }

    async fn place(&self, writer: usize, seq: u64) -> Outcome {
        let id = model::new_id();
        let p = Placement::of(writer, seq);
        let (result, conflicts, retries) = retrying(
            || execute!(self.orders, id, OrderCommand::Place(p.clone())),
            |e: &String| is_conflict(e),
        )
        .await;
        outcome(result, 1, conflicts, retries)
    }

    async fn lifecycle(&self, writer: usize, seq: u64) -> Outcome {
        let id = model::new_id();
        let p = Placement::of(writer, seq);
        let mut done = Outcome::ok(0);
        for step in 0..3 {
            let command = || match step {
                0 => OrderCommand::Place(p.clone()),
                1 => OrderCommand::Confirm,
                _ => OrderCommand::Ship,
            };
            let (result, conflicts, retries) =
                retrying(|| execute!(self.orders, id, command()), |e: &String| is_conflict(e)).await;
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
        let (result, conflicts, retries) = retrying(
            || execute!(self.products, id, ProductCommand::Restock { quantity: 1 }),
            |e: &String| is_conflict(e),
        )
        .await;
        outcome(result, 1, conflicts, retries)
    }

    fn databases(&self) -> Vec<String> {
        vec![self.database.clone()]
    }

    fn seeded_events(&self) -> u64 {
        u64::from(self.hot_product.is_some())
    }

    fn count_query(&self) -> (String, String) {
        (
            self.database.clone(),
            "SELECT (SELECT count(*) FROM order_events) + (SELECT count(*) FROM product_events)".to_owned(),
        )
    }

    fn payload_query(&self) -> (String, String) {
        (
            self.database.clone(),
            "SELECT avg(n)::float8 FROM (SELECT octet_length(payload::text) AS n FROM order_events \
             UNION ALL SELECT octet_length(payload::text) FROM product_events) AS e"
                .to_owned(),
        )
    }

    async fn close(self) {
        drop(self.orders);
        drop(self.products);
        self.pool.close().await;
    }
}
