//! A rebuild of the order dashboard on PostgreSQL while commands keep flowing and readers keep
//! reading (invariant 8 of docs/design.md; issue 22).
//!
//! Every service has its own PostgreSQL event store (as deployed), the read database is
//! PostgreSQL, and version 1 is kept live by the embedded runner (`run_from_stores`). Then
//! `projections::rebuild` builds version 2 while
//! - a writer appends commands' events to the services' stores the whole time (new customers and
//!   products, new orders, confirmations, shipments, deliveries, cancellations, renames, email
//!   changes), one commit per command;
//! - readers read the dashboard continuously through the dashboard's read functions on the live
//!   version they look up per read (retrying once on the new version when the one they picked
//!   went away under them, as the read API does), recording each read's version and answer.
//!
//! It proves that the readers overlapped the switch (reads served by version 1 while version 2
//! was being built, reads served by version 2 before the rebuild returned, every reader saw
//! both), that every read succeeded with a whole answer (the probed order placed before the
//! rebuild is always there, a reader's count of orders and the versions of the rows it sees
//! never go backwards), that version 1 is retired and dropped, and, once the writer stopped and
//! version 2 caught up with the logs' heads, that version 2's orders and customers equal a fold
//! of the logs written here (decoded with `event_schemas::decode`), not by projection code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use event_schemas::{
    Currency, CustomerEmailChanged, CustomerEvent, CustomerRegistered, CustomerRenamed, CustomerSnapshot, DomainEvent,
    Money, OrderCancelled, OrderConfirmed, OrderDelivered, OrderEvent, OrderLine, OrderPlaced, OrderShipped,
    ProductAdded, ProductEvent, Service,
};
use event_store::{
    Commit, EventMetadata, EventStore, ExpectedVersion, NewEvent, PgEventStore, RecordedEvent, StoreOptions,
    StreamAppend,
};
use projections::catalog::{self, Sinks};
use projections::dashboard::{
    self, CurrencyTotal, Cursor, CustomerSummary, Direction, LastOrder, OrderFilter, OrderRow, OrderStatus,
    PaymentStatus, Sort, SortKey,
};
use projections::{ReadDb, RebuildOptions, RunOptions, ServiceLog, run_from_stores, store_source};
use sqlx::Row;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const SEED_CUSTOMERS: usize = 40;
const SEED_PRODUCTS: usize = 12;
const SEED_ORDERS: usize = 1_500;
/// Status changes, renames and email changes of the seeded history.
const SEED_CHANGES: usize = 2_500;
const READERS: usize = 3;
/// Reads each reader makes on a version before the test moves on (before the rebuild on
/// version 1, after it on version 2).
const READS_PER_PHASE: usize = 3;
/// Connections of the read database's pool; a rebuild's bulk load opens two more of its own.
const READ_POOL: u32 = 6;
/// Connections of each store's pool (its writer and `LISTEN` connections come out of it).
const STORE_POOL: u32 = 4;

/// xorshift64*: deterministic choices without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// True with probability `percent` / 100.
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

fn new_event(event: &DomainEvent) -> NewEvent {
    let encoded = event.encode();
    NewEvent {
        event_id: Uuid::now_v7(),
        event_type: encoded.event_type.to_owned(),
        schema_version: encoded.schema_version,
        payload: encoded.payload,
        occurred_at: Utc::now(),
        metadata: EventMetadata {
            correlation_id: "rebuild_live".to_owned(),
            causation_id: "rebuild_live".to_owned(),
            actor: String::new(),
        },
    }
}

struct Customer {
    id: Uuid,
    name: String,
    email: String,
}

struct Product {
    id: Uuid,
    sku: String,
    name: String,
    price_minor: i64,
    currency: Currency,
}

#[derive(Clone, Copy)]
enum Stage {
    Pending,
    Confirmed,
    Shipped,
}

/// The write side as far as this test needs it: it decides the events of commands from what it
/// wrote (one writer, so it knows every stream's version) and appends them to the owning
/// service's store. While seeding, events are gathered and committed many streams at a time;
/// live, each command is one commit.
struct Shop {
    stores: BTreeMap<Service, Arc<dyn EventStore>>,
    versions: HashMap<String, u64>,
    pending: BTreeMap<Service, Vec<StreamAppend>>,
    rng: Rng,
    customers: Vec<Customer>,
    products: Vec<Product>,
    /// Orders not delivered nor cancelled yet.
    open: Vec<(Uuid, Stage)>,
    /// Every order placed, with its customer.
    placed: Vec<(Uuid, Uuid)>,
    events: usize,
    /// Renames and email changes so far (their names and emails are unique).
    changes: usize,
}

impl Shop {
    fn new(stores: BTreeMap<Service, Arc<dyn EventStore>>, seed: u64) -> Self {
        Shop {
            stores,
            versions: HashMap::new(),
            pending: BTreeMap::new(),
            rng: Rng(seed),
            customers: Vec::new(),
            products: Vec::new(),
            open: Vec::new(),
            placed: Vec::new(),
            events: 0,
            changes: 0,
        }
    }

    /// Queues `event` on its stream, at the stream's next version; a stream already queued is
    /// committed first (one append per stream and commit).
    async fn emit(&mut self, event: DomainEvent) {
        let service = Service::owning(event.category());
        let stream_id = event.stream_id();
        let queued = self
            .pending
            .get(&service)
            .is_some_and(|appends| appends.len() >= 300 || appends.iter().any(|append| append.stream_id == stream_id));
        if queued {
            self.flush_service(service).await;
        }
        let version = self.versions.entry(stream_id.clone()).or_insert(0);
        let expected = ExpectedVersion::Exact(*version);
        *version += 1;
        self.pending.entry(service).or_default().push(StreamAppend {
            stream_id,
            expected,
            events: vec![new_event(&event)],
        });
        self.events += 1;
    }

    async fn flush_service(&mut self, service: Service) {
        let Some(appends) = self.pending.remove(&service) else {
            return;
        };
        if appends.is_empty() {
            return;
        }
        self.stores[&service]
            .commit(Commit {
                appends,
                idempotency: None,
            })
            .await
            .unwrap_or_else(|e| panic!("commit to the {service} store: {e}"));
    }

    async fn flush(&mut self) {
        for service in Service::ALL {
            self.flush_service(service).await;
        }
    }

    async fn register_customer(&mut self) {
        let n = self.customers.len();
        let customer = Customer {
            id: Uuid::now_v7(),
            name: format!("Customer {n}"),
            email: format!("customer{n}@example.com"),
        };
        let event = DomainEvent::Customer(CustomerEvent::Registered(CustomerRegistered {
            customer_id: customer.id,
            name: customer.name.clone(),
            email: customer.email.clone(),
        }));
        self.customers.push(customer);
        self.emit(event).await;
    }

    async fn rename_customer(&mut self) {
        self.changes += 1;
        let index = self.rng.below(self.customers.len());
        let customer = &mut self.customers[index];
        customer.name = format!("Customer {index} (renamed {})", self.changes);
        let event = DomainEvent::Customer(CustomerEvent::Renamed(CustomerRenamed {
            customer_id: customer.id,
            name: customer.name.clone(),
        }));
        self.emit(event).await;
    }

    async fn change_email(&mut self) {
        self.changes += 1;
        let index = self.rng.below(self.customers.len());
        let customer = &mut self.customers[index];
        customer.email = format!("customer{index}.{}@example.org", self.changes);
        let event = DomainEvent::Customer(CustomerEvent::EmailChanged(CustomerEmailChanged {
            customer_id: customer.id,
            email: customer.email.clone(),
        }));
        self.emit(event).await;
    }

    async fn add_product(&mut self) {
        let n = self.products.len();
        let product = Product {
            id: Uuid::now_v7(),
            sku: format!("SKU-{n}"),
            name: format!("Product {n}"),
            price_minor: 150 + 37 * n as i64,
            currency: if n.is_multiple_of(2) {
                Currency::EUR
            } else {
                Currency::USD
            },
        };
        let event = DomainEvent::Product(ProductEvent::Added(ProductAdded {
            product_id: product.id,
            sku: product.sku.clone(),
            name: product.name.clone(),
            price: Money::new(product.price_minor, product.currency),
            stock: 1_000_000,
        }));
        self.products.push(product);
        self.emit(event).await;
    }

    async fn place_order(&mut self) {
        let customer = &self.customers[self.rng.below(self.customers.len())];
        let currency = if self.rng.chance(50) {
            Currency::EUR
        } else {
            Currency::USD
        };
        let candidates: Vec<&Product> = self.products.iter().filter(|p| p.currency == currency).collect();
        let wanted = 1 + self.rng.below(3.min(candidates.len()));
        let first = self.rng.below(candidates.len());
        let lines: Vec<OrderLine> = (0..wanted)
            .map(|k| {
                let product = candidates[(first + k) % candidates.len()];
                OrderLine {
                    product_id: product.id,
                    sku: product.sku.clone(),
                    name: product.name.clone(),
                    quantity: 1 + self.rng.below(4) as i64,
                    unit_price_minor: product.price_minor,
                }
            })
            .collect();
        let order_id = Uuid::now_v7();
        let event = DomainEvent::Order(OrderEvent::Placed(OrderPlaced {
            order_id,
            customer_id: customer.id,
            customer: CustomerSnapshot {
                name: customer.name.clone(),
                email: customer.email.clone(),
            },
            total_minor: lines.iter().map(|l| l.quantity * l.unit_price_minor).sum(),
            lines,
            currency,
        }));
        self.placed.push((order_id, customer.id));
        self.open.push((order_id, Stage::Pending));
        self.emit(event).await;
    }

    /// Moves a random open order one step: pending → confirmed or cancelled, confirmed →
    /// shipped or cancelled, shipped → delivered.
    async fn advance_order(&mut self) {
        if self.open.is_empty() {
            return self.place_order().await;
        }
        let index = self.rng.below(self.open.len());
        let (order_id, stage) = self.open[index];
        let cancel = |reason: &str, code: &str| {
            DomainEvent::Order(OrderEvent::Cancelled(OrderCancelled {
                order_id,
                reason: reason.to_owned(),
                reason_code: code.to_owned(),
            }))
        };
        let (event, next) = match stage {
            Stage::Pending if self.rng.chance(75) => (
                DomainEvent::Order(OrderEvent::Confirmed(OrderConfirmed { order_id })),
                Some(Stage::Confirmed),
            ),
            Stage::Pending if self.rng.chance(50) => (cancel("customer asked", "requested"), None),
            Stage::Pending => (cancel("not enough stock", "out_of_stock"), None),
            Stage::Confirmed if self.rng.chance(70) => {
                let tracking = format!("TRK{}", self.rng.next() % 1_000_000);
                (
                    DomainEvent::Order(OrderEvent::Shipped(OrderShipped {
                        order_id,
                        carrier: "DHL".to_owned(),
                        tracking,
                    })),
                    Some(Stage::Shipped),
                )
            }
            Stage::Confirmed => (cancel("", "payment_declined"), None),
            Stage::Shipped => (
                DomainEvent::Order(OrderEvent::Delivered(OrderDelivered { order_id })),
                None,
            ),
        };
        match next {
            Some(stage) => self.open[index].1 = stage,
            None => {
                self.open.swap_remove(index);
            }
        }
        self.emit(event).await;
    }

    /// One random command (its events, uncommitted).
    async fn command(&mut self) {
        match self.rng.below(100) {
            0..35 => self.place_order().await,
            35..75 => self.advance_order().await,
            75..88 => self.rename_customer().await,
            88..94 => self.change_email().await,
            94..97 => self.register_customer().await,
            _ => self.add_product().await,
        }
    }
}

/// One read of a reader: the version it was served by and what it saw.
#[derive(Debug)]
struct ReadRecord {
    reader: usize,
    version: u32,
    started: DateTime<Utc>,
    finished: DateTime<Utc>,
    /// It failed on the version it picked first and was read again on the new live version.
    retried: bool,
    outcome: Result<Seen, String>,
}

#[derive(Debug)]
struct Seen {
    probe_order: Uuid,
    /// The probed order's stream version, when found.
    probe_order_version: Option<u64>,
    probe_customer: Uuid,
    /// The probed customer's stream version, when found.
    probe_customer_version: Option<u64>,
    /// Orders placed since the writer started (one statement).
    recent: usize,
    /// Orders in the whole list, page by page (every [`FULL_LIST_EVERY`]th read).
    orders: Option<usize>,
    /// Order ids listed twice.
    duplicates: usize,
}

/// How often a reader lists every order (a few tens of ms) rather than only the recent ones (a
/// few ms): the cheap reads make the readers sample the moments around the switch densely.
const FULL_LIST_EVERY: usize = 6;

/// All orders placed at or after `since` on `version`, page by page: their ids and how many rows
/// were listed.
async fn list_all(
    db: &ReadDb,
    version: u32,
    since: Option<DateTime<Utc>>,
) -> Result<(std::collections::HashSet<Uuid>, usize), String> {
    let sort = Sort {
        key: SortKey::PlacedAt,
        direction: Direction::Asc,
    };
    let filter = OrderFilter {
        placed_from: since,
        ..OrderFilter::default()
    };
    let mut ids = std::collections::HashSet::new();
    let mut listed = 0;
    let mut cursor: Option<Cursor> = None;
    loop {
        let page = dashboard::list_orders(db, version, &filter, sort, cursor.as_ref(), dashboard::MAX_PAGE_LIMIT)
            .await
            .map_err(|e| format!("list_orders on v{version}: {e:?}"))?;
        listed += page.rows.len();
        ids.extend(page.rows.iter().map(|row| row.order_id));
        match page.next_cursor {
            Some(next) => cursor = Some(Cursor::decode(&next).map_err(|e| format!("cursor: {e:?}"))?),
            None => return Ok((ids, listed)),
        }
    }
}

/// What one read on `version` sees: one order placed before the rebuild, its customer's summary,
/// the orders placed since `since`, and with `full` the whole list of orders.
async fn read_once(
    db: &ReadDb,
    version: u32,
    probe: (Uuid, Uuid),
    since: DateTime<Utc>,
    full: bool,
) -> Result<Seen, String> {
    let (order_id, customer_id) = probe;
    let order = dashboard::get_order(db, version, order_id)
        .await
        .map_err(|e| format!("get_order on v{version}: {e:?}"))?;
    let customer = dashboard::customer_summary(db, version, customer_id)
        .await
        .map_err(|e| format!("customer_summary on v{version}: {e:?}"))?;
    let (recent, mut duplicates) = list_all(db, version, Some(since))
        .await
        .map(|(ids, listed)| (ids.len(), listed - ids.len()))?;
    let orders = if full {
        let (ids, listed) = list_all(db, version, None).await?;
        duplicates += listed - ids.len();
        Some(ids.len())
    } else {
        None
    };
    Ok(Seen {
        probe_order: order_id,
        probe_order_version: order.map(|row| row.stream_version),
        probe_customer: customer_id,
        probe_customer_version: customer.map(|summary| summary.stream_version),
        recent,
        orders,
        duplicates,
    })
}

/// Reads until `stop`: each read looks up the live version, reads on it, and when that fails
/// reads once more on the version live now if it changed (the read API's rule: the version it
/// picked was dropped under it). Counts reads per version in `counts[version - 1]`.
async fn reader(
    reader: usize,
    db: ReadDb,
    probes: Arc<Vec<(Uuid, Uuid)>>,
    since: DateTime<Utc>,
    stop: Arc<AtomicBool>,
    counts: Arc<[AtomicUsize; 2]>,
) -> Vec<ReadRecord> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (reader as u64 + 1));
    let mut records = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let started = Utc::now();
        let probe = probes[rng.below(probes.len())];
        let full = records.len() % FULL_LIST_EVERY == reader % FULL_LIST_EVERY;
        let picked = match db.live_version(dashboard::NAME).await {
            Ok(Some(version)) => version,
            other => {
                records.push(ReadRecord {
                    reader,
                    version: 0,
                    started,
                    finished: Utc::now(),
                    retried: false,
                    outcome: Err(format!("looking up the live version: {other:?}")),
                });
                continue;
            }
        };
        let (version, retried, outcome) = match read_once(&db, picked, probe, since, full).await {
            Ok(seen) => (picked, false, Ok(seen)),
            Err(first) => match db.live_version(dashboard::NAME).await {
                Ok(Some(now)) if now != picked => (now, true, read_once(&db, now, probe, since, full).await),
                other => (picked, false, Err(format!("{first} (live version now: {other:?})"))),
            },
        };
        if let Some(count) = version.checked_sub(1).and_then(|i| counts.get(i as usize)) {
            count.fetch_add(1, Ordering::Relaxed);
        }
        records.push(ReadRecord {
            reader,
            version,
            started,
            finished: Utc::now(),
            retried,
            outcome,
        });
    }
    records
}

/// Every event of a store, in position order.
async fn read_log(store: &dyn EventStore) -> Vec<RecordedEvent> {
    let mut all: Vec<RecordedEvent> = Vec::new();
    loop {
        let after = all.last().map_or(0, |e| e.position);
        let page = store.read_all(after, 1_000).await.unwrap();
        if page.is_empty() {
            return all;
        }
        all.extend(page);
    }
}

fn micros(time: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(time.timestamp_micros()).unwrap()
}

/// The dashboard's orders and customers as the logs say they must be, folded here from the
/// decoded events (no projection code): orders show their customer's current name and email,
/// their status, amounts, times (the events' `occurred_at`), cancellation, shipment, and the
/// version, position and commit time of their last event; customers their name, email, stream
/// version, order count, lifetime value per currency (cancelled orders count as orders, not as
/// value) and last order.
struct Expected {
    orders: BTreeMap<Uuid, OrderRow>,
    customers: BTreeMap<Uuid, CustomerSummary>,
    events: usize,
}

fn decoded(recorded: &RecordedEvent) -> DomainEvent {
    event_schemas::decode(&recorded.event_type, recorded.schema_version, &recorded.payload).unwrap_or_else(|e| {
        panic!(
            "event {} at {} does not decode: {e}",
            recorded.event_type, recorded.position
        )
    })
}

fn fold(logs: &BTreeMap<Service, Vec<RecordedEvent>>) -> Expected {
    let mut customers: BTreeMap<Uuid, CustomerSummary> = BTreeMap::new();
    let mut totals: BTreeMap<(Uuid, String), (u64, i64)> = BTreeMap::new();
    let mut orders: BTreeMap<Uuid, OrderRow> = BTreeMap::new();
    let mut events = 0;
    for recorded in &logs[&Service::Customers] {
        events += 1;
        let DomainEvent::Customer(event) = decoded(recorded) else {
            panic!("a {} event in the customers' log", recorded.event_type);
        };
        let customer = customers.entry(event.customer_id()).or_insert_with(|| CustomerSummary {
            customer_id: event.customer_id(),
            name: String::new(),
            email: String::new(),
            stream_version: 0,
            order_count: 0,
            lifetime_value: Vec::new(),
            last_order: None,
        });
        assert_eq!(
            recorded.stream_version,
            customer.stream_version + 1,
            "customer stream versions"
        );
        customer.stream_version = recorded.stream_version;
        match event {
            CustomerEvent::Registered(e) => {
                customer.name = e.name;
                customer.email = e.email;
            }
            CustomerEvent::Renamed(e) => customer.name = e.name,
            CustomerEvent::EmailChanged(e) => customer.email = e.email,
        }
    }
    for recorded in &logs[&Service::Orders] {
        events += 1;
        let DomainEvent::Order(event) = decoded(recorded) else {
            panic!("a {} event in the orders' log", recorded.event_type);
        };
        let at = micros(recorded.occurred_at);
        if let OrderEvent::Placed(placed) = &event {
            assert_eq!(recorded.stream_version, 1, "an order placed at a later version");
            let currency = placed.currency.as_str().to_owned();
            let customer = customers
                .get_mut(&placed.customer_id)
                .expect("every order's customer is registered");
            customer.order_count += 1;
            customer.last_order = Some(LastOrder {
                order_id: placed.order_id,
                placed_at: at,
            });
            let total = totals.entry((placed.customer_id, currency.clone())).or_default();
            total.0 += 1;
            total.1 += placed.total_minor;
            orders.insert(
                placed.order_id,
                OrderRow {
                    order_id: placed.order_id,
                    customer_id: placed.customer_id,
                    customer_name: customer.name.clone(),
                    customer_email: customer.email.clone(),
                    status: OrderStatus::Pending,
                    item_count: placed.lines.iter().map(|line| line.quantity).sum(),
                    total_minor: placed.total_minor,
                    currency,
                    placed_at: at,
                    confirmed_at: None,
                    shipped_at: None,
                    delivered_at: None,
                    cancelled_at: None,
                    cancel_reason: None,
                    reason_code: None,
                    carrier: None,
                    tracking: None,
                    saga_state: None,
                    saga_updated_at: None,
                    payment_status: PaymentStatus::None,
                    payment_id: None,
                    payment_currency: None,
                    authorized_minor: 0,
                    captured_minor: 0,
                    refunded_minor: 0,
                    payment_reason: None,
                    payment_updated_at: None,
                    payment_count: 0,
                    stream_version: 1,
                    last_position: recorded.position,
                    updated_at: micros(recorded.recorded_at),
                },
            );
            continue;
        }
        let order = orders
            .get_mut(&event.order_id())
            .expect("every order event follows its placement");
        assert_eq!(
            recorded.stream_version,
            order.stream_version + 1,
            "order stream versions"
        );
        order.stream_version = recorded.stream_version;
        order.last_position = recorded.position;
        order.updated_at = micros(recorded.recorded_at);
        match event {
            OrderEvent::Placed(_) => unreachable!(),
            OrderEvent::Confirmed(_) => {
                order.status = OrderStatus::Confirmed;
                order.confirmed_at = Some(at);
            }
            OrderEvent::Shipped(e) => {
                order.status = OrderStatus::Shipped;
                order.shipped_at = Some(at);
                order.carrier = Some(e.carrier);
                order.tracking = Some(e.tracking);
            }
            OrderEvent::Delivered(_) => {
                order.status = OrderStatus::Delivered;
                order.delivered_at = Some(at);
            }
            OrderEvent::Cancelled(e) => {
                assert_ne!(order.status, OrderStatus::Cancelled, "cancelled twice");
                totals
                    .get_mut(&(order.customer_id, order.currency.clone()))
                    .expect("the order's totals")
                    .1 -= order.total_minor;
                order.status = OrderStatus::Cancelled;
                order.cancelled_at = Some(at);
                order.cancel_reason = Some(e.reason);
                order.reason_code = (!e.reason_code.is_empty()).then_some(e.reason_code);
            }
        }
    }
    // Names and emails: the customer's current ones, whenever the order was placed.
    for order in orders.values_mut() {
        let customer = &customers[&order.customer_id];
        order.customer_name.clone_from(&customer.name);
        order.customer_email.clone_from(&customer.email);
    }
    for ((customer_id, currency), (order_count, value)) in totals {
        if let Some(customer) = customers.get_mut(&customer_id) {
            customer.lifetime_value.push(CurrencyTotal {
                currency,
                order_count,
                lifetime_value_minor: value,
            });
        }
    }
    for recorded in logs[&Service::Inventory].iter().chain(&logs[&Service::Payments]) {
        events += 1;
        // Nothing of the dashboard comes from them, but they must be events of this build.
        decoded(recorded);
    }
    Expected {
        orders,
        customers,
        events,
    }
}

/// The checkpoint `version` holds for each service's log (0 without one).
async fn store_checkpoints(db: &ReadDb, version: u32) -> BTreeMap<Service, u64> {
    let checkpoints = db.checkpoints(dashboard::NAME, version).await.unwrap();
    Service::ALL
        .into_iter()
        .map(|service| {
            let source = store_source(service);
            let position = checkpoints
                .iter()
                .filter(|c| c.source == source)
                .map(|c| u64::try_from(c.offset).unwrap_or(0))
                .max()
                .unwrap_or(0);
            (service, position)
        })
        .collect()
}

async fn heads(stores: &BTreeMap<Service, Arc<dyn EventStore>>) -> BTreeMap<Service, u64> {
    let mut heads = BTreeMap::new();
    for (service, store) in stores {
        heads.insert(*service, store.head_position().await.unwrap());
    }
    heads
}

/// Waits (polling, up to `within`) until `version` is live and has applied every log up to its
/// head.
async fn wait_caught_up(db: &ReadDb, stores: &BTreeMap<Service, Arc<dyn EventStore>>, version: u32, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let heads = heads(stores).await;
        let live = db.live_version(dashboard::NAME).await.unwrap();
        let applied = store_checkpoints(db, version).await;
        if live == Some(version) && heads.iter().all(|(service, head)| applied[service] >= *head) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "v{version} did not catch up within {within:?}: live {live:?}, heads {heads:?}, applied {applied:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits (polling, up to `within`) until every reader has made `reads` reads on `version`.
async fn wait_reads(counts: &[Arc<[AtomicUsize; 2]>], version: u32, reads: usize, within: Duration) {
    let deadline = Instant::now() + within;
    let index = version as usize - 1;
    loop {
        let done: Vec<usize> = counts.iter().map(|c| c[index].load(Ordering::Relaxed)).collect();
        if done.iter().all(|&n| n >= reads) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the readers did not read v{version} {reads} times each within {within:?}: {done:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rebuild_switches_under_commands_and_readers_postgres() {
    let test_started = Instant::now();
    // One store per service, each in a database of its own, as deployed.
    let mut stores: BTreeMap<Service, Arc<dyn EventStore>> = BTreeMap::new();
    for service in Service::ALL {
        let database = testkit::postgres::fresh_database().await;
        let pool = database.pool(STORE_POOL).await;
        PgEventStore::migrate(&pool).await.unwrap();
        let store = PgEventStore::open(pool, StoreOptions::default()).await.unwrap();
        stores.insert(service, Arc::new(store));
    }
    let logs: Vec<ServiceLog> = stores
        .iter()
        .map(|(service, store)| ServiceLog::new(*service, Arc::clone(store)))
        .collect();
    let read_database = testkit::postgres::fresh_database().await;
    let db = ReadDb::connect(&read_database.url, READ_POOL).await.unwrap();
    db.migrate().await.unwrap();

    // The history before the rebuild.
    let mut shop = Shop::new(stores.clone(), 0x5eed_2022);
    for _ in 0..SEED_CUSTOMERS {
        shop.register_customer().await;
    }
    for _ in 0..SEED_PRODUCTS {
        shop.add_product().await;
    }
    shop.flush().await;
    for n in 0..SEED_ORDERS {
        shop.place_order().await;
        if n % 25 == 0 {
            shop.rename_customer().await;
        }
    }
    shop.flush().await;
    for n in 0..SEED_CHANGES {
        shop.advance_order().await;
        if n % 40 == 0 {
            shop.rename_customer().await;
        }
        if n % 90 == 0 {
            shop.change_email().await;
        }
    }
    shop.flush().await;
    let seeded_events = shop.events;
    let probes = Arc::new(shop.placed.clone());
    let seeded_orders = probes.len();

    // Version 1, kept live by the embedded runner.
    let factory = catalog::factory(
        dashboard::NAME,
        &Sinks {
            read_db: db.clone(),
            clickhouse: None,
        },
    )
    .unwrap();
    let stop_runner = CancellationToken::new();
    let runner = tokio::spawn(run_from_stores(
        logs.clone(),
        db.clone(),
        Arc::clone(&factory),
        RunOptions::default(),
        stop_runner.clone(),
    ));
    wait_caught_up(&db, &stores, 1, Duration::from_secs(20)).await;
    let seeded_at = test_started.elapsed();

    // Readers, then the writer; the rebuild starts once both are under way.
    let stop_readers = Arc::new(AtomicBool::new(false));
    let counts: Vec<Arc<[AtomicUsize; 2]>> = (0..READERS)
        .map(|_| Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]))
        .collect();
    // Every order the writer places is placed from now on; every seeded one before.
    let since = Utc::now();
    let readers: Vec<_> = (0..READERS)
        .map(|i| {
            tokio::spawn(reader(
                i,
                db.clone(),
                Arc::clone(&probes),
                since,
                Arc::clone(&stop_readers),
                Arc::clone(&counts[i]),
            ))
        })
        .collect();
    let stop_writer = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (stop, written) = (Arc::clone(&stop_writer), Arc::clone(&written));
        let mut shop = Shop {
            rng: Rng(0x1173_2022),
            ..shop
        };
        tokio::spawn(async move {
            // (commit time, events of the command)
            let mut commits: Vec<(DateTime<Utc>, usize)> = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let before = shop.events;
                shop.command().await;
                shop.flush().await;
                commits.push((Utc::now(), shop.events - before));
                written.fetch_add(shop.events - before, Ordering::Relaxed);
                // Pacing, not synchronization: at most a few hundred commands a second (each waits
                // for its commit, so fewer in practice).
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (commits, shop)
        })
    };
    wait_reads(&counts, 1, READS_PER_PHASE, Duration::from_secs(20)).await;
    {
        let deadline = Instant::now() + Duration::from_secs(10);
        while written.load(Ordering::Relaxed) < 20 {
            assert!(Instant::now() < deadline, "the writer is stuck");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    // The rebuild, the real one, while the writer writes and the readers read.
    let rebuild_started = Utc::now();
    let report = tokio::time::timeout(
        Duration::from_secs(30),
        projections::rebuild(
            logs.clone(),
            &db,
            Arc::clone(&factory),
            RebuildOptions {
                batch_size: 500,
                drop_after: Duration::from_secs(1),
                ..RebuildOptions::default()
            },
            CancellationToken::new(),
            |_| {},
        ),
    )
    .await
    .expect("the rebuild finishes within 30 s while commands flow")
    .expect("the rebuild succeeds");
    let rebuild_returned = Utc::now();
    assert_eq!((report.version, report.replaced), (2, Some(1)), "{report:?}");

    // Readers on version 2 for a while; then the writer stops and version 2 catches up.
    wait_reads(&counts, 2, READS_PER_PHASE, Duration::from_secs(20)).await;
    stop_writer.store(true, Ordering::Relaxed);
    let (commits, shop) = writer.await.expect("the writer failed");
    wait_caught_up(&db, &stores, 2, Duration::from_secs(20)).await;
    stop_readers.store(true, Ordering::Relaxed);
    let mut records: Vec<ReadRecord> = Vec::new();
    for reader in readers {
        records.extend(reader.await.expect("a reader panicked"));
    }

    // The registry: version 2 live, version 1 retired, its tables gone.
    let versions = db.versions(dashboard::NAME).await.unwrap();
    let state = |version: u32| {
        versions
            .iter()
            .find(|v| v.version == version)
            .unwrap_or_else(|| panic!("v{version} registered: {versions:?}"))
    };
    let (v1, v2) = (state(1), state(2));
    let built_from = v2.started_at.expect("v2's start");
    let switched_at = v2.switched_at.expect("v2's switch");

    // Figures.
    let mut logs_read: BTreeMap<Service, Vec<RecordedEvent>> = BTreeMap::new();
    for (service, store) in &stores {
        logs_read.insert(*service, read_log(&**store).await);
    }
    let written_between = |from: DateTime<Utc>, to: DateTime<Utc>| -> usize {
        commits
            .iter()
            .filter(|(at, _)| *at >= from && *at < to)
            .map(|(_, n)| n)
            .sum()
    };
    let during_build = written_between(built_from, switched_at);
    let after_switch = written_between(switched_at, rebuild_returned);
    let during_rebuild = written_between(rebuild_started, rebuild_returned);
    let total_written: usize = commits.iter().map(|(_, n)| n).sum();
    // The writer's orders the orders' log had committed by a time.
    let recent_committed_by = |time: DateTime<Utc>| {
        logs_read[&Service::Orders]
            .iter()
            .filter(|e| e.event_type == OrderPlaced::EVENT_TYPE && e.occurred_at >= since && e.recorded_at <= time)
            .count()
    };
    let reads_on = |version: u32| records.iter().filter(|r| r.version == version).count();
    let v1_while_building = records
        .iter()
        .filter(|r| r.version == 1 && r.outcome.is_ok() && r.started >= built_from)
        .count();
    let v2_before_return = records
        .iter()
        .filter(|r| r.version == 2 && r.outcome.is_ok() && r.started < rebuild_returned)
        .count();
    let last_v1_start = records.iter().filter(|r| r.version == 1).map(|r| r.started).max();
    let last_v1_end = records.iter().filter(|r| r.version == 1).map(|r| r.finished).max();
    let first_v2_start = records.iter().filter(|r| r.version == 2).map(|r| r.started).min();
    let recent_seen = |version: u32| -> Vec<usize> {
        records
            .iter()
            .filter(|r| r.version == version)
            .filter_map(|r| r.outcome.as_ref().ok().map(|seen| seen.recent))
            .collect()
    };
    let retried = records.iter().filter(|r| r.retried).count();
    let ms = |d: chrono::TimeDelta| d.num_microseconds().unwrap_or(0) as f64 / 1000.0;
    println!(
        "seeded {seeded_events} events ({seeded_orders} orders), v1 caught up after {seeded_at:?}; \
         rebuild: {} events applied, build {:.0} ms (registered to switch), switch to return {:.0} ms",
        report.events_applied,
        ms(switched_at - built_from),
        ms(rebuild_returned - switched_at),
    );
    println!(
        "events written by the writer: {total_written} in all, {during_rebuild} during the rebuild \
         ({during_build} while v2 was built, {after_switch} between the switch and the rebuild's return)"
    );
    println!(
        "reads: {} on v1 ({v1_while_building} started while v2 was built), {} on v2 \
         ({v2_before_return} started before the rebuild returned), {retried} read again after their version went",
        reads_on(1),
        reads_on(2),
    );
    if let (Some(last_v1_start), Some(last_v1_end), Some(first_v2_start)) = (last_v1_start, last_v1_end, first_v2_start)
    {
        println!(
            "around the switch: the last v1 read started {:.1} ms before it and ended {:.1} ms after it; \
             the first v2 read started {:.1} ms after it",
            ms(switched_at - last_v1_start),
            ms(last_v1_end - switched_at),
            ms(first_v2_start - switched_at),
        );
    }
    println!(
        "the writer's orders: {} committed when v2's build started, {} at the switch, {} in all; \
         the most a v1 read saw {:?}, the fewest a v2 read saw {:?}",
        recent_committed_by(built_from),
        recent_committed_by(switched_at),
        recent_committed_by(Utc::now()),
        recent_seen(1).into_iter().max(),
        recent_seen(2).into_iter().min(),
    );
    for r in 0..READERS {
        let mine: Vec<&ReadRecord> = records.iter().filter(|x| x.reader == r).collect();
        let recent: Vec<String> = mine
            .iter()
            .map(|x| match &x.outcome {
                Ok(seen) => format!("{}@v{}", seen.recent, x.version),
                Err(_) => format!("err@v{}", x.version),
            })
            .collect();
        println!(
            "reader {r}: {} reads on v1, {} on v2; the writer's orders seen, read by read: {}",
            mine.iter().filter(|x| x.version == 1).count(),
            mine.iter().filter(|x| x.version == 2).count(),
            recent.join(" "),
        );
    }

    // Every read succeeded.
    let failed: Vec<&ReadRecord> = records.iter().filter(|r| r.outcome.is_err()).collect();
    assert!(
        failed.is_empty(),
        "{} reads failed: {:#?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    // The readers overlapped the switch: each read both versions, some read v1 while v2 was
    // being built and some v2 while the rebuild was still catching up or waiting to drop v1.
    assert!(
        v1_while_building > 0,
        "no read was served by v1 while v2 was being built"
    );
    assert!(
        v2_before_return > 0,
        "no read was served by v2 before the rebuild returned"
    );
    for r in 0..READERS {
        let versions: Vec<u32> = records.iter().filter(|x| x.reader == r).map(|x| x.version).collect();
        assert!(
            versions.contains(&1) && versions.contains(&2),
            "reader {r} did not read both versions: {versions:?}"
        );
        assert!(
            versions.is_sorted(),
            "reader {r} was served by v1 after v2: {versions:?}"
        );
    }
    // Commands flowed during the rebuild, before and after its switch.
    assert!(during_build > 0, "no event was written while v2 was built");
    assert!(
        after_switch > 0,
        "no event was written between the switch and the rebuild's return"
    );

    // Version 1 retired, its tables dropped.
    assert_eq!(
        (v1.state.as_str(), v2.state.as_str()),
        ("retired", "live"),
        "{versions:?}"
    );
    let v1_orders = sqlx::query("SELECT 1 FROM order_dashboard_v1_orders LIMIT 1")
        .fetch_all(db.pool())
        .await;
    assert!(v1_orders.is_err(), "v1's tables are dropped after the switch");

    // Version 2, caught up, against the fold of the logs written here.
    let expected = fold(&logs_read);
    assert_eq!(
        expected.events,
        seeded_events + total_written,
        "the logs hold what was written"
    );
    assert!(
        expected.orders.keys().copied().eq(shop
            .placed
            .iter()
            .map(|(id, _)| *id)
            .collect::<std::collections::BTreeSet<_>>()),
        "the orders' log holds the orders placed"
    );
    let (listed, _) = list_all(&db, 2, None).await.unwrap();
    let mut actual: BTreeMap<Uuid, OrderRow> = BTreeMap::new();
    for id in &listed {
        let row = dashboard::get_order(&db, 2, *id)
            .await
            .unwrap()
            .expect("a listed order");
        actual.insert(*id, row);
    }
    let stored: i64 = sqlx::query("SELECT CAST(count(*) AS BIGINT) FROM order_dashboard_v2_orders")
        .fetch_one(db.pool())
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored as usize, actual.len(), "every stored order is listed");
    let missing: Vec<&Uuid> = expected.orders.keys().filter(|id| !actual.contains_key(id)).collect();
    let extra: Vec<&Uuid> = actual.keys().filter(|id| !expected.orders.contains_key(id)).collect();
    let differ: Vec<(&OrderRow, &OrderRow)> = expected
        .orders
        .iter()
        .filter_map(|(id, want)| actual.get(id).filter(|got| *got != want).map(|got| (want, got)))
        .collect();
    println!(
        "v2 against the fold of the logs: {} orders expected, {} in v2; {} missing, {} extra, {} differ",
        expected.orders.len(),
        actual.len(),
        missing.len(),
        extra.len(),
        differ.len()
    );
    assert!(
        missing.is_empty() && extra.is_empty(),
        "v2's orders: {} missing (first {:?}), {} not in the logs (first {:?})",
        missing.len(),
        missing.first(),
        extra.len(),
        extra.first()
    );
    assert!(
        differ.is_empty(),
        "{} of v2's orders differ from the fold of the logs; first (expected, actual): {:#?}",
        differ.len(),
        differ.first()
    );
    let mut customers_differ = Vec::new();
    for (id, want) in &expected.customers {
        let got = dashboard::customer_summary(&db, 2, *id).await.unwrap();
        if got.as_ref() != Some(want) {
            customers_differ.push((want.clone(), got));
        }
    }
    let stored_customers: i64 = sqlx::query("SELECT CAST(count(*) AS BIGINT) FROM order_dashboard_v2_customers")
        .fetch_one(db.pool())
        .await
        .unwrap()
        .get(0);
    println!(
        "v2 against the fold of the logs: {} customers expected, {} in v2, {} differ",
        expected.customers.len(),
        stored_customers,
        customers_differ.len()
    );
    assert_eq!(stored_customers as usize, expected.customers.len(), "v2's customers");
    assert!(
        customers_differ.is_empty(),
        "{} of v2's customers differ from the fold; first (expected, actual): {:#?}",
        customers_differ.len(),
        customers_differ.first()
    );
    assert_eq!(
        db.dead_letter_count(dashboard::NAME, 2).await.unwrap(),
        0,
        "v2's dead letters"
    );

    // Every answer was whole, and nothing a reader saw went backwards, across the switch
    // included: the order placed before the rebuild is there, the list holds at least every
    // seeded order, the orders placed since the writer started, the whole list and the probed
    // rows' stream versions never shrink from one read of a reader to its next.
    let mut regressions: Vec<String> = Vec::new();
    for r in 0..READERS {
        let mut last_recent: Option<(usize, &ReadRecord)> = None;
        let mut last_orders: Option<(usize, &ReadRecord)> = None;
        let mut row_versions: HashMap<Uuid, (u64, &ReadRecord)> = HashMap::new();
        for record in records.iter().filter(|x| x.reader == r) {
            let seen = record.outcome.as_ref().unwrap();
            let when = |read: &ReadRecord| {
                format!(
                    "v{} read started {:+.1} ms from the switch",
                    read.version,
                    ms(read.started - switched_at)
                )
            };
            let regressed = |what: String, before: &ReadRecord| {
                format!("reader {r}: {what} ({} then {})", when(before), when(record))
            };
            match (seen.probe_order_version, seen.probe_customer_version) {
                (Some(order_version), Some(customer_version)) => {
                    for (id, version) in [
                        (seen.probe_order, order_version),
                        (seen.probe_customer, customer_version),
                    ] {
                        if let Some((before, read)) = row_versions.get(&id)
                            && version < *before
                        {
                            regressions.push(regressed(
                                format!("stream {id} at version {before}, then {version}"),
                                read,
                            ));
                        }
                        row_versions.insert(id, (version, record));
                    }
                }
                (order, customer) => regressions.push(format!(
                    "reader {r}: order {} (placed before the rebuild) {order:?} / its customer {customer:?} on v{}",
                    seen.probe_order, record.version
                )),
            }
            if seen.duplicates > 0 {
                regressions.push(format!("reader {r}: {} orders listed twice", seen.duplicates));
            }
            if let Some((before, read)) = last_recent
                && seen.recent < before
            {
                regressions.push(regressed(
                    format!("{before} orders placed since the writer started, then {}", seen.recent),
                    read,
                ));
            }
            last_recent = Some((seen.recent, record));
            if let Some(orders) = seen.orders {
                if orders < seeded_orders {
                    regressions.push(format!(
                        "reader {r}: {orders} orders on v{}, fewer than the {seeded_orders} seeded",
                        record.version
                    ));
                }
                if let Some((before, read)) = last_orders
                    && orders < before
                {
                    regressions.push(regressed(format!("{before} orders in all, then {orders}"), read));
                }
                last_orders = Some((orders, record));
            }
        }
    }
    assert!(
        regressions.is_empty(),
        "{} reads saw less than the reader's read before (first 10): {:#?}",
        regressions.len(),
        &regressions[..regressions.len().min(10)]
    );

    stop_runner.cancel();
    runner.await.unwrap().unwrap();
    println!("done in {:?}", test_started.elapsed());
}
