//! orderflow measured in this process: its real command handling without HTTP.
//!
//! - `place` and `lifecycle` run on `write_side::Local` as `orderflow bench commands` builds it:
//!   a PostgreSQL database per service (customers, inventory, orders, payments) plus the orders
//!   service's copy of customers and products, seeded with 100 customers and 200 products through
//!   their handlers and the copy caught up before the run. Placing is `Local::place_order` (what
//!   `POST /v1/orders` calls): the line priced from the copy, then `OrderPlaced` and the saga's
//!   `SagaStarted` appended in one commit: two events on two streams, where each peer appends
//!   one. No saga driver runs (as in `bench commands`), so nothing else is appended; its backlog
//!   bound (load shedding, 512 sagas) is lifted for that reason. Confirm and ship go through the
//!   orders service's `CommandHandler` (`OrderCommand::Confirm`, `OrderCommand::Ship`), served
//!   from its aggregate cache where the peers replay.
//! - `contention` restocks one product through the inventory service's `CommandHandler`
//!   (`ProductCommand::Restock`, one `ProductRestocked` per command). The handler serializes one
//!   process's commands per stream (`stream_locks`), so its writers queue instead of colliding:
//!   conflicts are counted where they would happen, at the store (a wrapper counts
//!   `WrongExpectedVersion`), and are reported as they are.
//! - `appends`: the store alone, `PgEventStore` through its `EventStore::append`, one event of
//!   250 bytes per commit on a new stream: what group commit gives beside the one-row ceiling.
//! - `catch-up`: `EventStore::read_all` in pages over a seeded log, each event decoded.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_trait::async_trait;
use chrono::Utc;
use event_schemas::{Currency, CustomerSnapshot, DomainEvent, OrderEvent, OrderLine, OrderPlaced, Service};
use event_store::{
    AppendError, Commit, Committed, EventMetadata, EventStore, ExpectedVersion, IdempotentResult, NewEvent, Position,
    RecordedEvent, Snapshot, StoreError, Until,
};
use projections::ReadDb;
use service_kit::db::{self, DatabaseUrl, Migrate, OpenStore, PoolSettings};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use write_side::domain::{CustomerCommand, OrderCommand, PlaceOrder, PlaceOrderLine, ProductCommand};
use write_side::orders::{OrdersError, SagaOptions};
use write_side::{CommandContext, CommandError, CommandHandler, HandlerOptions, Local, LocalOptions};

use crate::harness::{ConflictProbe, Outcome};
use crate::pg::{Scratch, Server};
use crate::system::{CatchUp, Settings, System, Workload};

/// The catalogue `place` and `lifecycle` draw from, as `bench commands` seeds it.
const CUSTOMERS: usize = 100;
const PRODUCTS: usize = 200;

/// The event store with its commits' version conflicts counted: orderflow's handler retries
/// them inside, where the harness cannot see them.
struct Counting {
    inner: Arc<dyn EventStore>,
    conflicts: Arc<AtomicU64>,
}

#[async_trait]
impl EventStore for Counting {
    async fn commit(&self, commit: Commit) -> Result<Committed, AppendError> {
        let result = self.inner.commit(commit).await;
        if matches!(result, Err(AppendError::WrongExpectedVersion { .. })) {
            self.conflicts.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    async fn read_stream(
        &self,
        stream_id: &str,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner.read_stream(stream_id, from_version, limit).await
    }

    async fn read_stream_until(
        &self,
        stream_id: &str,
        from_version: u64,
        until: Until,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner.read_stream_until(stream_id, from_version, until).await
    }

    async fn read_all(&self, after: Position, limit: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner.read_all(after, limit).await
    }

    async fn head_position(&self) -> Result<Position, StoreError> {
        self.inner.head_position().await
    }

    async fn stream_version(&self, stream_id: &str) -> Result<u64, StoreError> {
        self.inner.stream_version(stream_id).await
    }

    fn changes(&self) -> tokio::sync::watch::Receiver<Position> {
        self.inner.changes()
    }

    async fn idempotent_result(&self, key: &str) -> Result<Option<IdempotentResult>, StoreError> {
        self.inner.idempotent_result(key).await
    }

    async fn load_checkpoint(&self, name: &str) -> Result<Position, StoreError> {
        self.inner.load_checkpoint(name).await
    }

    async fn save_checkpoint(&self, name: &str, position: Position) -> Result<(), StoreError> {
        self.inner.save_checkpoint(name, position).await
    }

    async fn save_snapshot(&self, snapshot: &Snapshot) -> Result<(), StoreError> {
        self.inner.save_snapshot(snapshot).await
    }

    async fn load_snapshot(&self, stream_id: &str, until: Option<Until>) -> Result<Option<Snapshot>, StoreError> {
        self.inner.load_snapshot(stream_id, until).await
    }

    async fn delete_snapshots(&self, stream_id: Option<&str>) -> Result<u64, StoreError> {
        self.inner.delete_snapshots(stream_id).await
    }
}

/// A PostgreSQL URL of database `name` as service-kit takes it.
fn database_url(server: &Server, name: &str) -> anyhow::Result<DatabaseUrl> {
    Ok(DatabaseUrl::parse("--pg-url", &server.url_of(name))?)
}

/// A migrated store on database `name`, with `connections` for reads (the writer has its own).
async fn open_store(server: &Server, name: &str, connections: u32) -> anyhow::Result<OpenStore> {
    let url = database_url(server, name)?;
    Ok(db::open_event_store(&url, PoolSettings::new(connections), Migrate::Yes).await?)
}

enum Kind {
    /// The four services and the orders service's copy (`place`, `lifecycle`).
    Local {
        local: Box<Local>,
        customers: Vec<Uuid>,
        products: Vec<Uuid>,
        stop: CancellationToken,
        replica: tokio::task::JoinHandle<Result<(), projections::ProjectionError>>,
    },
    /// The inventory service's handler and its hot product (`contention`).
    Inventory { handler: CommandHandler, product: Uuid },
}

pub(crate) struct Orderflow {
    kind: Kind,
    stores: Vec<OpenStore>,
    conflicts: Arc<AtomicU64>,
    /// Where the workload's events go (the orders or the inventory store).
    counted: String,
    databases: Vec<String>,
    seeded: u64,
}

/// The answer to an orderflow command as an outcome of `events` events.
fn answered<T, E: std::fmt::Display>(result: Result<T, E>, events: u64, conflict: impl Fn(&E) -> bool) -> Outcome {
    match result {
        Ok(_) => Outcome::ok(events),
        Err(e) => {
            let mut o = Outcome::failed(0, &e);
            o.gave_up = conflict(&e);
            o
        }
    }
}

fn command_conflict(e: &CommandError) -> bool {
    matches!(e, CommandError::Conflict { .. })
}

fn orders_conflict(e: &OrdersError) -> bool {
    matches!(e, OrdersError::Command(CommandError::Conflict { .. }))
}

impl Orderflow {
    fn place_command(&self, writer: usize, seq: u64) -> Option<(PlaceOrder, &Local)> {
        let Kind::Local {
            local,
            customers,
            products,
            ..
        } = &self.kind
        else {
            return None;
        };
        let n = (writer as u64).wrapping_mul(7919).wrapping_add(seq);
        let command = PlaceOrder {
            order_id: Uuid::now_v7(),
            customer_id: customers[(n % customers.len() as u64) as usize],
            lines: vec![PlaceOrderLine {
                product_id: products[(n % products.len() as u64) as usize],
                quantity: 1 + (n % 3) as i64,
            }],
        };
        Some((command, local))
    }
}

impl System for Orderflow {
    async fn open(
        scratch: &mut Scratch,
        workload: Workload,
        writers: usize,
        settings: Settings,
    ) -> anyhow::Result<Self> {
        let conflicts = Arc::new(AtomicU64::new(0));
        let options = HandlerOptions {
            snapshot_every: settings.snapshot_every,
            ..HandlerOptions::default()
        };
        let ctx = CommandContext::default();
        if workload == Workload::Contention {
            let name = scratch.create("orderflow_inventory").await?;
            let (pool, _) = pools(writers);
            let opened = open_store(&scratch.server, &name, pool).await?;
            let store: Arc<dyn EventStore> = Arc::new(Counting {
                inner: opened.shared(),
                conflicts: Arc::clone(&conflicts),
            });
            let handler = CommandHandler::new(store, options);
            let product = Uuid::now_v7();
            handler
                .product(&ctx, product, add_product(product, 0, 0))
                .await
                .context("adding the hot product")?;
            return Ok(Orderflow {
                kind: Kind::Inventory { handler, product },
                stores: vec![opened],
                conflicts,
                counted: name.clone(),
                databases: vec![name],
                seeded: 1,
            });
        }
        // A database per service, and the orders service's copy of customers and products: as
        // deployed, and as `bench commands` runs them. The pools that placing reads from as the
        // binaries size them (16 connections for the orders store's reads, 4 for the copy) or,
        // like the peers', writers + 2, within the benchmark's 70 connections: at most 30 and
        // 20. The other stores only serve the seeding and the copy: 4.
        let (orders_pool, replica_pool) = pools(writers);
        let mut stores = Vec::new();
        let mut shared = Vec::new();
        let mut databases = Vec::new();
        let mut counted = String::new();
        for service in Service::ALL {
            let name = scratch.create(&format!("orderflow_{}", service.name())).await?;
            let connections = if service == Service::Orders { orders_pool } else { 4 };
            let opened = open_store(&scratch.server, &name, connections).await?;
            let store: Arc<dyn EventStore> = Arc::new(Counting {
                inner: opened.shared(),
                conflicts: Arc::clone(&conflicts),
            });
            if service == Service::Orders {
                counted.clone_from(&name);
            }
            shared.push((service, store));
            stores.push(opened);
            databases.push(name);
        }
        let replica_name = scratch.create("orderflow_replica").await?;
        let replica_db = ReadDb::open(
            &database_url(&scratch.server, &replica_name)?,
            PoolSettings::new(replica_pool),
        )
        .await?;
        databases.push(replica_name);
        let local = Local::with_options(
            shared,
            replica_db,
            LocalOptions {
                handler: options,
                // No saga driver runs: its backlog only grows, and past the bound every placement
                // would be shed (503). The benchmark measures the placement alone.
                saga: SagaOptions {
                    max_backlog: usize::MAX,
                    ..SagaOptions::default()
                },
                ..LocalOptions::default()
            },
        )
        .await?;
        let mut customers = Vec::with_capacity(CUSTOMERS);
        for i in 0..CUSTOMERS {
            let id = Uuid::now_v7();
            let register = CustomerCommand::Register {
                customer_id: id,
                name: format!("Customer {i}"),
                email: format!("c{i}@example.com"),
            };
            local.handler(Service::Customers).customer(&ctx, id, register).await?;
            customers.push(id);
        }
        let mut products = Vec::with_capacity(PRODUCTS);
        for i in 0..PRODUCTS {
            let id = Uuid::now_v7();
            local
                .handler(Service::Inventory)
                .product(&ctx, id, add_product(id, i, 1_000_000_000))
                .await?;
            products.push(id);
        }
        let stop = CancellationToken::new();
        let replica = tokio::spawn({
            let (local, stop) = (local.clone(), stop.clone());
            async move { local.run_replica(stop).await }
        });
        // Measured with the copy caught up, as in steady state.
        let deadline = Instant::now() + Duration::from_secs(60);
        while !local.replica_caught_up().await? {
            anyhow::ensure!(
                Instant::now() < deadline,
                "the orders service's copy did not catch up in 60 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Orderflow {
            kind: Kind::Local {
                local: Box::new(local),
                customers,
                products,
                stop,
                replica,
            },
            stores,
            conflicts,
            counted,
            databases,
            seeded: 0,
        })
    }

    async fn place(&self, writer: usize, seq: u64) -> Outcome {
        let Some((command, local)) = self.place_command(writer, seq) else {
            return Outcome::failed(0, "opened for another workload");
        };
        // OrderPlaced and SagaStarted, one commit.
        answered(
            local.place_order(&CommandContext::default(), command).await,
            2,
            orders_conflict,
        )
    }

    async fn lifecycle(&self, writer: usize, seq: u64) -> Outcome {
        let Some((command, local)) = self.place_command(writer, seq) else {
            return Outcome::failed(0, "opened for another workload");
        };
        let ctx = CommandContext::default();
        let order_id = command.order_id;
        let placed = answered(local.place_order(&ctx, command).await, 2, orders_conflict);
        if !placed.ok {
            return placed;
        }
        let orders = local.handler(Service::Orders);
        let confirmed = answered(
            orders.order(&ctx, order_id, OrderCommand::Confirm { order_id }).await,
            1,
            command_conflict,
        );
        if !confirmed.ok {
            return Outcome { events: 2, ..confirmed };
        }
        let ship = OrderCommand::Ship {
            order_id,
            carrier: crate::model::CARRIER.to_owned(),
            tracking: crate::model::TRACKING.to_owned(),
        };
        let shipped = answered(orders.order(&ctx, order_id, ship).await, 1, command_conflict);
        Outcome {
            events: 3 + shipped.events,
            ..shipped
        }
    }

    async fn restock(&self, _writer: usize, _seq: u64) -> Outcome {
        let Kind::Inventory { handler, product } = &self.kind else {
            return Outcome::failed(0, "opened for another workload");
        };
        let restock = ProductCommand::Restock {
            product_id: *product,
            quantity: 1,
        };
        answered(
            handler.product(&CommandContext::default(), *product, restock).await,
            1,
            command_conflict,
        )
    }

    fn probe(&self) -> ConflictProbe {
        Some(Arc::clone(&self.conflicts))
    }

    fn databases(&self) -> Vec<String> {
        self.databases.clone()
    }

    fn seeded_events(&self) -> u64 {
        self.seeded
    }

    fn count_query(&self) -> (String, String) {
        (self.counted.clone(), "SELECT count(*) FROM events".to_owned())
    }

    fn payload_query(&self) -> (String, String) {
        (
            self.counted.clone(),
            "SELECT avg(octet_length(payload))::float8 FROM events".to_owned(),
        )
    }

    fn events_per_op(&self, workload: Workload) -> u64 {
        match workload {
            Workload::Place => 2,
            Workload::Lifecycle => 4,
            _ => 1,
        }
    }

    async fn close(self) {
        if let Kind::Local { stop, replica, .. } = self.kind {
            stop.cancel();
            let _ = replica.await;
        }
        for store in &self.stores {
            store.close().await;
        }
    }
}

/// The orders store's and the catalogue copy's pools for `writers`: as deployed (16 and 4), or
/// writers + 2 like the peers', at most 30 and 20 (the benchmark keeps to 70 connections).
pub(crate) fn pools(writers: usize) -> (u32, u32) {
    let wanted = writers as u32 + 2;
    (wanted.clamp(16, 30), wanted.clamp(4, 20))
}

fn add_product(id: Uuid, i: usize, stock: i64) -> ProductCommand {
    ProductCommand::Add {
        product_id: id,
        sku: format!("SKU-{i:05}"),
        name: format!("Product {i}"),
        price_minor: 100 + (i as i64 * 37) % 10_000,
        currency: "EUR".into(),
        stock,
    }
}

/// The store alone: `writers` appending one event of `payload_bytes` per commit, each on a new
/// stream. Answers the database (for the row count) and the store.
pub(crate) async fn open_raw_store(scratch: &mut Scratch) -> anyhow::Result<(String, OpenStore)> {
    let name = scratch.create("orderflow_appends").await?;
    let store = open_store(&scratch.server, &name, 16).await?;
    Ok((name, store))
}

/// One append of one event of `payload` bytes on a new stream.
pub(crate) async fn append_one(store: &Arc<dyn EventStore>, payload: &[u8]) -> Outcome {
    let event = NewEvent {
        event_id: Uuid::now_v7(),
        event_type: "bench.appended".to_owned(),
        schema_version: 1,
        payload: payload.to_vec(),
        occurred_at: Utc::now(),
        metadata: EventMetadata::default(),
    };
    let stream = format!("bench-{}", Uuid::now_v7());
    match store.append(&stream, ExpectedVersion::NoStream, vec![event]).await {
        Ok(_) => Outcome::ok(1),
        Err(e) => Outcome::failed(0, e),
    }
}

/// An `OrderPlaced` of one line as orderflow encodes it (protobuf): the catch-up's event.
fn sample_placed() -> event_schemas::EncodedEvent {
    let placed = OrderPlaced {
        order_id: Uuid::now_v7(),
        customer_id: Uuid::now_v7(),
        customer: CustomerSnapshot {
            name: "Customer 42".to_owned(),
            email: "c42@example.com".to_owned(),
        },
        lines: vec![OrderLine {
            product_id: Uuid::now_v7(),
            sku: "SKU-00042".to_owned(),
            name: "Product 42".to_owned(),
            quantity: 2,
            unit_price_minor: 1654,
        }],
        currency: Currency::EUR,
        total_minor: 3308,
    };
    DomainEvent::Order(OrderEvent::Placed(placed)).encode()
}

/// Seeds `events` order events into a fresh store (one `INSERT … SELECT generate_series` into
/// its `events` table: a stream each, the same encoded `OrderPlaced`), then reads them all in
/// global order through `EventStore::read_all`, `page` at a time, decoding each.
pub(crate) async fn catch_up(scratch: &mut Scratch, events: u64, page: usize) -> anyhow::Result<CatchUp> {
    let name = scratch.create("orderflow_catch_up").await?;
    let opened = open_store(&scratch.server, &name, 4).await?;
    let result = async {
        let store = opened.postgres().context("a PostgreSQL store")?.clone();
        let sample = sample_placed();
        let seeded = Instant::now();
        sqlx::query(
            "INSERT INTO events (stream_id, stream_version, event_id, event_type, schema_version, payload, \
             occurred_at, recorded_at) \
             SELECT 'order-' || md5(g::text)::uuid, 1, md5('e' || g::text)::uuid, $1, $2, $3, now(), now() \
             FROM generate_series(1, $4) AS g",
        )
        .bind(sample.event_type)
        .bind(sample.schema_version as i32)
        .bind(&sample.payload)
        .bind(events as i64)
        .execute(store.pool())
        .await?;
        sqlx::query("ANALYZE events").execute(store.pool()).await?;
        let seed_seconds = seeded.elapsed().as_secs_f64();
        let started = Instant::now();
        let mut after = 0;
        let mut read = 0_u64;
        loop {
            let batch = store.read_all(after, page).await?;
            let Some(last) = batch.last() else { break };
            after = last.position;
            for e in &batch {
                event_schemas::decode(&e.event_type, e.schema_version, &e.payload)?;
            }
            read += batch.len() as u64;
        }
        let read_seconds = started.elapsed().as_secs_f64();
        anyhow::Ok(CatchUp {
            database: name.clone(),
            seeded: events,
            seed_seconds,
            read,
            read_seconds,
        })
    }
    .await;
    opened.close().await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_grow_with_the_writers_within_the_budget() {
        assert_eq!(pools(1), (16, 4));
        assert_eq!(pools(16), (18, 18));
        assert_eq!(pools(64), (30, 20));
    }
}
