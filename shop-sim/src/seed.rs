//! A realistic, valid shop history, written straight to the services' event stores (each
//! stream to the store of the service that owns its category): what benchmarks and demos need
//! when "a million events" must look like a real back office rather than noise.
//!
//! The seeder simulates a shop over `days` of simulated time. Customers register (a few rename
//! themselves or change their email later), products are added with a stock and a price in
//! integer minor units (EUR mostly, some USD), restocked when they run low and repriced now and
//! then. Orders of 1 to 4 lines are placed (more in the evening than at night) and go through
//! the place-order saga (ADR 0010): their stock reserved and their payment authorized within
//! seconds, then confirmed, shipped and delivered over the following simulated days. About 8%
//! are cancelled by the customer or the shop while confirmed (reason code `requested`), 3% more
//! because their payment is declined (`payment_declined`), and a few because a line was sold
//! out by the time the saga reserved it (`out_of_stock`). Confirmed orders at the end of the
//! window stay confirmed, as they would in a live shop; no order is left pending.
//!
//! # The saga
//!
//! Every order has its saga (`saga-{order id}`, in the orders service's store), recorded as
//! the saga's runner records it: every step is what [`Saga::next`] decides, every record what
//! [`Saga`]'s `decide` appends, and every call's effect (a reservation, a payment) is decided
//! by the owning service's domain, under the placement's correlation id (the saga's steps carry
//! their idempotency key `saga-{order id}-{step}` as causation).
//!
//! - **Placed**: `OrderPlaced` (status `pending`) and `SagaStarted` (its lines, its total, the
//!   payment id derived from the order id, [`saga::payment_id`], and its deadline, 15 minutes
//!   later), then each line reserved at inventory (`StockReserved` in the product's stream and
//!   in the saga's) in the same simulated action. A line the stock no longer covers fails the
//!   saga (`out_of_stock`): what was reserved is released and the order cancelled at once.
//! - **Authorized** a few seconds later (1.5 s plus an exponential wait of 12 s on average, at
//!   most 10 minutes: the provider's round trip, now and then a 3-D Secure challenge), for the
//!   order's total, and the order **confirmed** in the same action (`OrderConfirmed` with
//!   `SagaConfirmed`). Or **declined** for 3% of orders (insufficient funds most often, then an
//!   expired card, "do not honor", ...): the saga fails (`payment_declined`), releases the stock
//!   and cancels the order with the provider's reason.
//! - **Captured** in full when the order ships: the shipment is the shop's (a correlation id of
//!   its own), the capture the saga's, in the same action, and the saga completes (`captured`).
//!   Card schemes expect a merchant to capture when the goods are on their way, and an order
//!   can only be cancelled while pending or confirmed, so a cancellable order's money is always
//!   an authorization, which a void releases.
//! - **Cancelled** by the customer or the shop (10 minutes to 2 days after confirmation, with a
//!   correlation id of its own): the saga voids the authorization (`order cancelled:
//!   requested`), releases the stock and completes (`cancelled`), in the same action.
//! - **Refunded** for 5% of delivered orders (a return or a complaint), 2 days plus an
//!   exponential wait of 5 days on average after delivery, at the payments service by an
//!   operator (a correlation id of its own), outside the saga, which completed at the capture:
//!   60% in full, the rest in part (one line sent back when the order has several, some units
//!   of its one line, or a 10 to 30% goodwill gesture on a single item).
//!
//! No order is placed in the last 10 minutes of the window, and when the event budget runs out
//! the authorizations still due are answered first: no saga is left with work to do. When the
//! orders store was empty, the saga driver's checkpoint ([`saga::CHECKPOINT`]) is set to its
//! head, as a driver that had followed the history would have left it: a driver started on the
//! seeded stores does not read the history again.
//!
//! # Valid by construction
//!
//! Every event comes out of the write side's own decisions ([`write_side::domain`]): `decide` for
//! customers, products, payments, order transitions and sagas, [`place_reserved_order`] for the
//! placement (priced from the products as they are at that moment). So lines capture the
//! product's current sku, name and price, an order records its customer's current name and
//! email, totals are computed by the domain, stock never goes below zero (a reservation the
//! stock does not cover is refused by the product, and the saga fails), a payment is authorized
//! for the order's total, captured only once authorized, refunded only what was captured. A
//! refused decision is a bug of the seeder, reported as an error.
//!
//! # Fast
//!
//! Going through the command handler would cost one load and one commit per command. The
//! seeder keeps every aggregate's state in memory instead and writes many commands' events in
//! one [`Commit`] per service (`batch_events` events in all): each stream appears once per
//! commit, with the version the seeder knows it is at, so the store still checks every expected
//! version. The decisions that span services (a saga's steps and their effects) are taken
//! together in memory, as the services would take them, and their events go to each owning
//! service's store. An order's state (its saga's, its payment's) is dropped once nothing more
//! can happen to it.
//!
//! # Deterministic
//!
//! The same options give the same events, ids included (a splitmix64 generator, no clock). The
//! simulated clock only moves forward and each simulated action happens at its own millisecond,
//! so sorting the log by `occurred_at` gives back the order in which the shop decided things.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::time::Instant;

use chrono::{DateTime, TimeZone, Timelike, Utc};
use event_schemas::Service;
use event_schemas::{Currency, DomainEvent, OrderLine};
use event_store::{Commit, EventMetadata, ExpectedVersion, NewEvent, StreamAppend};
use projections::ServiceLog;
use uuid::Uuid;
use write_side::domain::saga::{Next, OrderView, ReasonCode, Saga, SagaCommand};
use write_side::domain::{
    Aggregate, Customer, CustomerCommand, DomainError, MAX_REASON_CHARS, Order, OrderCommand, Payment, PaymentCommand,
    PlaceOrder, PlaceOrderLine, Product, ProductCommand, ReservedLine, place_reserved_order,
};
use write_side::orders::{DEFAULT_SAGA_DEADLINE, saga};

use crate::Rng;

/// Why the seeder stopped. Nothing but [`SeedError::Invalid`] is the caller's doing: a refused
/// decision is a bug of the seeder (it only asks for what the state allows).
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    /// The options cannot describe a shop.
    #[error("{0}")]
    Invalid(&'static str),
    /// The domain refused a command the seeder made.
    #[error("the seeder {what} the domain refuses (a bug)")]
    Refused {
        what: &'static str,
        #[source]
        source: DomainError,
    },
    /// The domain decided something the seeder did not expect.
    #[error("the domain {0} (a bug of the seeder)")]
    Unexpected(String),
    /// The event store refused or failed a commit.
    #[error("the event store refused a seeded commit")]
    Store(#[source] event_store::AppendError),
}

fn refused(what: &'static str) -> impl FnOnce(DomainError) -> SeedError {
    move |source| SeedError::Refused { what, source }
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct SeedOptions {
    /// Approximate number of events: the simulation stops once it has written this many (or at
    /// the end of the simulated window, whichever comes first).
    pub events: u64,
    /// Length of the simulated window, in days.
    pub days: u32,
    /// Seed of the generator: the same seed and options give the same history.
    pub seed: u64,
    /// Customers registering over the window (a tenth of them on the first morning).
    pub customers: usize,
    /// Products in the catalogue (most on the first morning, the rest added during the window).
    pub products: usize,
    /// When the simulated window starts.
    pub start: DateTime<Utc>,
    /// Events per commit (a commit may exceed it by the events of one simulated action).
    pub batch_events: usize,
}

impl Default for SeedOptions {
    fn default() -> Self {
        SeedOptions {
            events: 1_000_000,
            days: 30,
            seed: 42,
            customers: 20_000,
            products: 2_000,
            start: default_start(),
            batch_events: 5_000,
        }
    }
}

/// 2025-01-06T00:00:00Z, a Monday: a fixed start keeps seeded histories identical across runs.
pub fn default_start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 1, 6, 0, 0, 0)
        .single()
        .unwrap_or(DateTime::UNIX_EPOCH)
}

/// What the seeder wrote.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct SeedReport {
    pub events: u64,
    pub commits: u64,
    pub orders: u64,
    pub customers: u64,
    pub products: u64,
    /// Orders that reached each end of their life inside the window.
    pub delivered: u64,
    pub cancelled: u64,
    /// Payments started (one per order whose saga reached the authorization), and what became
    /// of them: declined at authorization, captured (at shipment), voided (the order
    /// cancelled), refunded (in full or in part, after delivery).
    pub payments: u64,
    pub declined: u64,
    pub captured: u64,
    pub voided: u64,
    pub refunded: u64,
    /// Simulated time the history covers, from the first to the last event.
    pub simulated_days: f64,
    pub seconds: f64,
    pub events_per_second: f64,
}

/// Writes a simulated shop history to the services' stores of `logs` (one per service); see the
/// module doc. `progress` is called after
/// each commit with the number of events written so far.
pub async fn seed(
    logs: &[ServiceLog],
    options: &SeedOptions,
    mut progress: impl FnMut(u64),
) -> Result<SeedReport, SeedError> {
    if options.events == 0 {
        return Err(SeedError::Invalid("the seeder needs a positive number of events"));
    }
    if options.days == 0 {
        return Err(SeedError::Invalid("the seeder needs at least one simulated day"));
    }
    if options.customers == 0 || options.products == 0 {
        return Err(SeedError::Invalid(
            "the seeder needs at least one customer and one product",
        ));
    }
    let started = Instant::now();
    let orders_log = logs.iter().find(|log| log.service == Service::Orders);
    let orders_were_empty = match orders_log {
        Some(log) => {
            log.store
                .head_position()
                .await
                .map_err(|e| SeedError::Store(e.into()))?
                == 0
        }
        None => false,
    };
    let mut shop = Shop::new(options);
    let mut commits = 0_u64;
    shop.open();
    loop {
        if shop.out.total >= options.events {
            break;
        }
        let Some(next) = shop.next_step() else {
            break;
        };
        shop.step(next)?;
        if shop.out.in_commit >= options.batch_events.max(1) {
            shop.out.flush(logs).await?;
            commits += 1;
            progress(shop.out.total);
        }
    }
    shop.finish_sagas()?;
    if shop.out.in_commit > 0 {
        shop.out.flush(logs).await?;
        commits += 1;
    }
    // No seeded saga has work left: a driver that had followed the history would stand at the
    // head (only when the seeder wrote the whole orders store: older sagas may have work).
    if let Some(log) = orders_log.filter(|_| orders_were_empty) {
        let head = log
            .store
            .head_position()
            .await
            .map_err(|e| SeedError::Store(e.into()))?;
        log.store
            .save_checkpoint(saga::CHECKPOINT, head)
            .await
            .map_err(|e| SeedError::Store(e.into()))?;
    }
    progress(shop.out.total);
    let seconds = started.elapsed().as_secs_f64();
    Ok(SeedReport {
        events: shop.out.total,
        commits,
        orders: shop.stats.orders,
        customers: shop.customers.len() as u64,
        products: shop.products.len() as u64,
        delivered: shop.stats.delivered,
        cancelled: shop.stats.cancelled,
        payments: shop.stats.payments,
        declined: shop.stats.declined,
        captured: shop.stats.captured,
        voided: shop.stats.voided,
        refunded: shop.stats.refunded,
        simulated_days: (shop.now - options.start).num_milliseconds() as f64 / DAY_MS as f64,
        seconds,
        events_per_second: shop.out.total as f64 / seconds.max(1e-9),
    })
}

/// [`seed`] with a progress bar on stderr (events written, events/s, ETA), labelled `message`.
pub async fn seed_with_progress(
    logs: &[ServiceLog],
    options: &SeedOptions,
    message: &str,
) -> Result<SeedReport, SeedError> {
    let bar = service_kit::cli::progress_bar(options.events, message, "events");
    let report = seed(logs, options, |written| {
        bar.set_length(bar.length().unwrap_or(0).max(written));
        bar.set_position(written);
    })
    .await;
    bar.finish_and_clear();
    report
}

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;

/// Share of orders the customer or the shop cancels (while confirmed).
const CANCEL: f64 = 0.08;
/// Share of orders whose payment the provider declines (the saga then cancels the order).
const DECLINE: f64 = 0.03;
/// Share of the lines on a sold-out product that the customer orders all the same (the shop
/// showed it in stock a moment ago): the saga cannot reserve it and cancels the order
/// (`out_of_stock`). The other such lines are dropped from the order.
const ORDER_SOLD_OUT: f64 = 0.2;
/// Ms from placement to the provider's answer: this, plus an exponential wait of `AUTH_MEAN_MS`,
/// at most `AUTH_MAX_MS` in all (well before the saga's deadline). No order is placed in the last
/// `AUTH_MAX_MS` of the window, so that every provider answers inside it.
const AUTH_MIN_MS: i64 = 1_500;
const AUTH_MEAN_MS: f64 = 12_000.0;
const AUTH_MAX_MS: i64 = 10 * 60_000;
/// Who records the saga's steps (and makes its calls).
const SAGA_ACTOR: &str = "saga";
/// Share of delivered orders refunded, and of those the share refunded in full.
const REFUND: f64 = 0.05;
const REFUND_FULL: f64 = 0.6;
/// A product with fewer units available than this gets a restock scheduled.
const LOW_STOCK: i64 = 15;
/// Mean days from placement to the last lifecycle event of a delivered order.
const LIFECYCLE_DAYS: f64 = 3.6;
/// Relative order rate per hour of the day (UTC): quiet nights, busy evenings.
const HOURLY: [f64; 24] = [
    0.25, 0.15, 0.1, 0.08, 0.08, 0.12, 0.25, 0.45, 0.6, 0.7, 0.75, 0.8, 0.85, 0.8, 0.75, 0.75, 0.8, 0.85, 0.9, 1.0,
    1.0, 0.9, 0.7, 0.45,
];

/// An aggregate the seeder owns: its id, its state and its stream's version.
#[derive(Debug)]
struct Sim<A> {
    id: Uuid,
    state: A,
    version: u64,
}

impl<A: Default> Sim<A> {
    fn new(id: Uuid) -> Self {
        Sim {
            id,
            state: A::default(),
            version: 0,
        }
    }
}

/// How an order's life will go, drawn when it is placed (a sold-out line cancels it first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Delivered,
    /// The provider declines the payment, and the saga cancels the order.
    Declined,
    /// The customer or the shop cancels it once confirmed.
    Cancelled,
}

#[derive(Debug)]
struct OrderSim {
    sim: Sim<Order>,
    /// Its place-order saga (`saga-{order id}`).
    saga: Sim<Saga>,
    /// Index in `Shop::products` of each line's product.
    products: Vec<usize>,
    fate: Fate,
    /// The placement's correlation id, which every step of the saga continues.
    placed_by: String,
    /// The order's payment, once the saga asked for it.
    payment: Option<Sim<Payment>>,
}

/// What the payment provider answers to an authorization.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Authorized,
    Declined(&'static str),
}

/// Something due at a simulated time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    /// The first morning's catalogue and customers.
    AddProduct,
    Register,
    /// The provider's answer to the payment of an order just placed: the saga goes on.
    Authorize(usize),
    Ship(usize),
    Deliver(usize),
    Cancel(usize),
    /// A delivered order's payment refunded (a return, a complaint).
    Refund(usize),
    Restock(usize),
}

/// What happens next: a scheduled action, or an arrival of one of the random processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Due(Action),
    Arrival(Arrival),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arrival {
    Order,
    Customer,
    Product,
    Rename,
    EmailChange,
    PriceChange,
    /// Recompute the order rate from what is left of the event budget.
    Calibrate,
}

const ARRIVALS: [Arrival; 7] = [
    Arrival::Order,
    Arrival::Customer,
    Arrival::Product,
    Arrival::Rename,
    Arrival::EmailChange,
    Arrival::PriceChange,
    Arrival::Calibrate,
];

/// A scheduled action, ordered for a min-heap on (time, sequence).
#[derive(Debug, PartialEq, Eq)]
struct Scheduled {
    at: i64,
    seq: u64,
    action: Action,
}

impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The commit being filled, and the ids of the events that go into it.
struct Out {
    rng: Rng,
    appends: Vec<StreamAppend>,
    /// Index in `appends` of each stream already in this commit.
    streams: HashMap<String, usize>,
    in_commit: usize,
    total: u64,
}

impl Out {
    /// Adds `events` to `sim`'s stream in the current commit and folds them into its state: a
    /// command of the shop's, whose correlation id is its causation too.
    fn append<A: Aggregate>(&mut self, sim: &mut Sim<A>, events: Vec<A::Event>, at: DateTime<Utc>, correlation: &str) {
        if events.is_empty() {
            return;
        }
        let metadata = EventMetadata {
            correlation_id: correlation.to_owned(),
            causation_id: correlation.to_owned(),
            actor: "seed".to_owned(),
        };
        self.append_as(sim, events, at, &metadata);
    }

    /// As [`Out::append`], with the events' `metadata`.
    fn append_as<A: Aggregate>(
        &mut self,
        sim: &mut Sim<A>,
        events: Vec<A::Event>,
        at: DateTime<Utc>,
        metadata: &EventMetadata,
    ) {
        if events.is_empty() {
            return;
        }
        let stream_id = A::CATEGORY.stream_id(sim.id);
        let encoded: Vec<NewEvent> = events
            .iter()
            .map(|event| {
                let encoded = Into::<DomainEvent>::into(event.clone()).encode();
                NewEvent {
                    event_id: self.rng.uuid_at(at),
                    event_type: encoded.event_type.to_owned(),
                    schema_version: encoded.schema_version,
                    payload: encoded.payload,
                    occurred_at: at,
                    metadata: metadata.clone(),
                }
            })
            .collect();
        let n = encoded.len();
        match self.streams.get(&stream_id) {
            Some(&i) => self.appends[i].events.extend(encoded),
            None => {
                // First time in this commit: the version the seeder knows is the stored one.
                let expected = match sim.version {
                    0 => ExpectedVersion::NoStream,
                    v => ExpectedVersion::Exact(v),
                };
                self.streams.insert(stream_id.clone(), self.appends.len());
                self.appends.push(StreamAppend {
                    stream_id,
                    expected,
                    events: encoded,
                });
            }
        }
        sim.state = std::mem::take(&mut sim.state).evolve_all(&events);
        sim.version += n as u64;
        self.in_commit += n;
        self.total += n as u64;
    }

    /// Commits what was filled, one commit per service to its own store.
    async fn flush(&mut self, logs: &[ServiceLog]) -> Result<(), SeedError> {
        let appends = std::mem::take(&mut self.appends);
        self.streams.clear();
        self.in_commit = 0;
        // Each append moved to its service's pile (no copy), in the order it was made.
        let mut piles: [(Service, Vec<StreamAppend>); 4] = Service::ALL.map(|service| (service, Vec::new()));
        for append in appends {
            if let Some(pile) = owner(&append.stream_id).and_then(|s| piles.iter_mut().find(|(p, _)| *p == s)) {
                pile.1.push(append);
            }
        }
        for log in logs {
            let Some(mine) = piles
                .iter_mut()
                .find(|(service, _)| *service == log.service)
                .map(|(_, pile)| std::mem::take(pile))
            else {
                continue;
            };
            if mine.is_empty() {
                continue;
            }
            log.store
                .commit(Commit {
                    appends: mine,
                    idempotency: None,
                })
                .await
                .map_err(SeedError::Store)?;
        }
        Ok(())
    }
}

/// The service that owns a stream id the seeder made.
fn owner(stream_id: &str) -> Option<Service> {
    event_schemas::parse_stream_id(stream_id)
        .ok()
        .map(|(category, _)| Service::owning(category))
}

#[derive(Debug, Default)]
struct Stats {
    orders: u64,
    lines: u64,
    restocks: u64,
    delivered: u64,
    cancelled: u64,
    payments: u64,
    declined: u64,
    captured: u64,
    voided: u64,
    refunded: u64,
}

/// The simulated shop.
struct Shop {
    rng: Rng,
    out: Out,
    start: DateTime<Utc>,
    end: i64,
    /// The simulated time, in milliseconds since the epoch; strictly increasing per action.
    now: DateTime<Utc>,
    now_ms: i64,
    target: u64,
    customers_total: usize,
    products_total: usize,
    customers: Vec<Sim<Customer>>,
    products: Vec<Sim<Product>>,
    /// Products by currency: an order's lines share one currency.
    eur: Vec<usize>,
    usd: Vec<usize>,
    restock_due: Vec<bool>,
    sold_since_restock: Vec<i64>,
    /// Every order placed, by index; `None` once nothing more can happen to it (boxed, so that
    /// a finished order costs a pointer).
    orders: Vec<Option<Box<OrderSim>>>,
    heap: BinaryHeap<Scheduled>,
    seq: u64,
    /// When each arrival process fires next (ms), in `ARRIVALS` order.
    next_arrival: [i64; 7],
    /// Mean ms between order candidates (before the hour-of-day thinning).
    order_gap_ms: f64,
    stats: Stats,
}

impl Shop {
    fn new(options: &SeedOptions) -> Self {
        let start_ms = options.start.timestamp_millis();
        Shop {
            rng: Rng::new(options.seed),
            out: Out {
                rng: Rng::new(options.seed ^ 0x0005_eed0_f1d5),
                appends: Vec::new(),
                streams: HashMap::new(),
                in_commit: 0,
                total: 0,
            },
            start: options.start,
            end: start_ms + i64::from(options.days) * DAY_MS,
            now: options.start,
            now_ms: start_ms,
            target: options.events,
            customers_total: options.customers,
            products_total: options.products,
            customers: Vec::with_capacity(options.customers),
            products: Vec::with_capacity(options.products),
            eur: Vec::new(),
            usd: Vec::new(),
            restock_due: Vec::new(),
            sold_since_restock: Vec::new(),
            orders: Vec::new(),
            heap: BinaryHeap::new(),
            seq: 0,
            next_arrival: [i64::MAX; 7],
            order_gap_ms: f64::INFINITY,
            stats: Stats::default(),
        }
    }

    fn days(&self) -> f64 {
        (self.end - self.start.timestamp_millis()) as f64 / DAY_MS as f64
    }

    /// The first morning: most of the catalogue and a tenth of the customers arrive one every
    /// second or so (scheduled, so that they go through the commits like everything else), and
    /// the random processes start.
    fn open(&mut self) {
        let products = (self.products_total * 7 / 10).max(1);
        let customers = (self.customers_total / 10).max(1);
        let mut after = 0;
        for _ in 0..products {
            after += self.rng.range(100, 2_000);
            self.schedule(after, Action::AddProduct);
        }
        for _ in 0..customers {
            after += self.rng.range(100, 2_000);
            self.schedule(after, Action::Register);
        }
        let days = self.days();
        for (i, arrival) in ARRIVALS.iter().enumerate() {
            self.next_arrival[i] = self.now_ms;
            if let Some(gap) = self.mean_gap(*arrival, days) {
                self.next_arrival[i] += self.rng.exp(gap) as i64;
            }
        }
        self.calibrate();
    }

    /// Mean ms between two arrivals of a process with a constant rate (None: not constant).
    fn mean_gap(&self, arrival: Arrival, days: f64) -> Option<f64> {
        let per_window = |n: f64| {
            if n > 0.0 {
                days * DAY_MS as f64 / n
            } else {
                f64::INFINITY
            }
        };
        let c = self.customers_total as f64;
        let p = self.products_total as f64;
        match arrival {
            Arrival::Customer => Some(per_window(c - (self.customers_total / 10).max(1) as f64)),
            // The rest of the catalogue arrives during the first two thirds of the window.
            Arrival::Product => Some(per_window(p - (self.products_total * 7 / 10).max(1) as f64) * 2.0 / 3.0),
            Arrival::Rename => Some(per_window(c * 0.10)),
            Arrival::EmailChange => Some(per_window(c * 0.12)),
            // Each product is repriced about every 40 days.
            Arrival::PriceChange => Some(per_window(p * days / 40.0)),
            Arrival::Calibrate => Some(DAY_MS as f64 / 4.0),
            Arrival::Order => None,
        }
    }

    /// Sets the order rate so that the events still to come fill the budget by the end of the
    /// window: the other processes' events and the scheduled actions are subtracted, and each
    /// order counts its placement, its reservations, restocks, and the lifecycle events that will
    /// happen before the end.
    fn calibrate(&mut self) {
        let left_days = ((self.end - self.now_ms) as f64 / DAY_MS as f64).max(1.0 / 24.0);
        let c = self.customers_total as f64;
        let p = self.products_total as f64;
        let others = (c - self.customers.len() as f64).max(0.0)
            + (p - self.products.len() as f64).max(0.0)
            + (c * 0.22 + p * self.days() / 40.0) * left_days / self.days();
        let scheduled = self
            .heap
            .iter()
            .filter(|s| s.at < self.end && !matches!(s.action, Action::AddProduct | Action::Register))
            .count() as f64;
        let budget = self.target as f64 - self.out.total as f64 - others - scheduled;
        let lines = if self.stats.orders > 50 {
            self.stats.lines as f64 / self.stats.orders as f64
        } else {
            2.0
        };
        let restocks = if self.stats.orders > 50 {
            self.stats.restocks as f64 / self.stats.orders as f64
        } else {
            0.05
        };
        let delivered = 1.0 - DECLINE - CANCEL;
        // The placement: the order and its saga, each line reserved (the product's event and
        // the saga's).
        let placement = 2.0 + 2.0 * lines;
        // The provider's answer, seconds later: authorized and confirmed (the payment's, the
        // order's and the saga's two), or declined: the saga fails, releases the lines, cancels
        // the order and completes.
        let payment = (1.0 - DECLINE) * 4.0 + DECLINE * (5.0 + 2.0 * lines);
        // Ship, capture (the payment's and the saga's) and complete, deliver, now and then a
        // refund; or cancel, and the saga fails, voids, releases and completes.
        let lifecycle = delivered * (5.0 + REFUND) + CANCEL * (5.0 + 2.0 * lines);
        // Share of the lifecycle that happens before the end, on average over the orders still
        // to place.
        let done = if left_days >= LIFECYCLE_DAYS {
            1.0 - LIFECYCLE_DAYS / (2.0 * left_days)
        } else {
            left_days / (2.0 * LIFECYCLE_DAYS)
        };
        let per_order = placement + restocks + payment + lifecycle * done;
        let orders_per_day = (budget / per_order / left_days).max(0.0);
        let mean_weight = HOURLY.iter().sum::<f64>() / HOURLY.len() as f64;
        // Candidates arrive at the peak rate; the hour of the day thins them.
        let candidates_per_day = orders_per_day / mean_weight;
        self.order_gap_ms = if candidates_per_day > 0.0 {
            DAY_MS as f64 / candidates_per_day
        } else {
            f64::INFINITY
        };
        let i = arrival_index(Arrival::Order);
        self.next_arrival[i] = self.now_ms.saturating_add(self.gap(self.order_gap_ms));
    }

    fn gap(&mut self, mean: f64) -> i64 {
        if mean.is_finite() {
            (self.rng.exp(mean) as i64).max(1)
        } else {
            i64::MAX / 4
        }
    }

    /// The next thing to happen inside the window, if any.
    fn next_step(&mut self) -> Option<(i64, Step)> {
        let (i, &at) = self.next_arrival.iter().enumerate().min_by_key(|(_, at)| **at)?;
        let arrival = (at, Step::Arrival(ARRIVALS[i]));
        let next = match self.heap.peek() {
            Some(s) if s.at <= at => (s.at, Step::Due(s.action)),
            _ => arrival,
        };
        (next.0 < self.end).then_some(next)
    }

    fn advance(&mut self, at: i64) {
        // Every action at its own millisecond: the log sorted by occurred_at is the order of
        // the shop's decisions.
        self.now_ms = at.max(self.now_ms + 1);
        self.now = DateTime::from_timestamp_millis(self.now_ms).unwrap_or(self.now);
    }

    fn schedule(&mut self, after_ms: i64, action: Action) {
        self.seq += 1;
        self.heap.push(Scheduled {
            at: self.now_ms + after_ms.max(1),
            seq: self.seq,
            action,
        });
    }

    fn step(&mut self, (at, step): (i64, Step)) -> Result<(), SeedError> {
        self.advance(at);
        match step {
            Step::Due(action) => {
                self.heap.pop();
                match action {
                    Action::AddProduct if self.products.len() < self.products_total => self.add_product()?,
                    Action::Register if self.customers.len() < self.customers_total => self.register()?,
                    Action::AddProduct | Action::Register => {}
                    Action::Authorize(o) => self.authorize(o)?,
                    Action::Ship(o) => self.ship(o)?,
                    Action::Deliver(o) => self.deliver(o)?,
                    Action::Cancel(o) => self.cancel(o)?,
                    Action::Refund(o) => self.refund(o)?,
                    Action::Restock(p) => self.restock(p)?,
                }
            }
            Step::Arrival(arrival) => {
                let i = arrival_index(arrival);
                let days = self.days();
                let gap = match self.mean_gap(arrival, days) {
                    Some(mean) => self.gap(mean),
                    None => self.gap(self.order_gap_ms),
                };
                self.next_arrival[i] = self.now_ms.saturating_add(gap);
                match arrival {
                    Arrival::Order => {
                        let hour = self.now.hour() as usize;
                        // The provider answers every order placed before the window's end.
                        if self.rng.chance(HOURLY[hour]) && self.now_ms < self.end - AUTH_MAX_MS {
                            self.place()?;
                        }
                    }
                    Arrival::Customer => {
                        if self.customers.len() < self.customers_total {
                            self.register()?;
                        }
                    }
                    Arrival::Product => {
                        if self.products.len() < self.products_total {
                            self.add_product()?;
                        }
                    }
                    Arrival::Rename => self.rename()?,
                    Arrival::EmailChange => self.change_email()?,
                    Arrival::PriceChange => self.change_price()?,
                    Arrival::Calibrate => self.calibrate(),
                }
            }
        }
        Ok(())
    }

    fn correlation(&mut self) -> String {
        self.rng.uuid_at(self.now).to_string()
    }

    fn register(&mut self) -> Result<(), SeedError> {
        let n = self.customers.len();
        let (first, last) = (*self.rng.pick(FIRST_NAMES), *self.rng.pick(LAST_NAMES));
        let domain = *self.rng.pick(EMAIL_DOMAINS);
        let customer_id = self.rng.uuid_at(self.now);
        let mut sim = Sim::<Customer>::new(customer_id);
        let events = sim
            .state
            .decide(CustomerCommand::Register {
                customer_id,
                name: format!("{first} {last}"),
                email: format!("{}.{}{n}@{domain}", handle(first), handle(last)),
            })
            .map_err(refused("registered a customer"))?;
        let correlation = self.correlation();
        self.out.append(&mut sim, events, self.now, &correlation);
        self.customers.push(sim);
        Ok(())
    }

    fn rename(&mut self) -> Result<(), SeedError> {
        if self.customers.is_empty() {
            return Ok(());
        }
        let c = self.rng.below(self.customers.len());
        let current = self.customers[c].state.name.clone();
        let first = current.split(' ').next().unwrap_or("Alex").to_owned();
        let name = if self.rng.chance(0.7) {
            format!("{first} {}", self.rng.pick(LAST_NAMES))
        } else {
            format!(
                "{} {}",
                self.rng.pick(FIRST_NAMES),
                current.split(' ').nth(1).unwrap_or("Smith")
            )
        };
        let customer_id = self.customers[c].id;
        let events = self.customers[c]
            .state
            .decide(CustomerCommand::Rename { customer_id, name })
            .map_err(refused("renamed a customer"))?;
        let correlation = self.correlation();
        self.out.append(&mut self.customers[c], events, self.now, &correlation);
        Ok(())
    }

    fn change_email(&mut self) -> Result<(), SeedError> {
        if self.customers.is_empty() {
            return Ok(());
        }
        let c = self.rng.below(self.customers.len());
        let customer = &self.customers[c].state;
        let mut parts = customer.name.split(' ');
        let (first, last) = (parts.next().unwrap_or("alex"), parts.next().unwrap_or("smith"));
        let email = format!(
            "{}.{}{}.{}@{}",
            handle(first),
            handle(last),
            c,
            self.rng.range(1, 99),
            self.rng.pick(EMAIL_DOMAINS)
        );
        let customer_id = self.customers[c].id;
        let events = self.customers[c]
            .state
            .decide(CustomerCommand::ChangeEmail { customer_id, email })
            .map_err(refused("changed an email"))?;
        let correlation = self.correlation();
        self.out.append(&mut self.customers[c], events, self.now, &correlation);
        Ok(())
    }

    fn add_product(&mut self) -> Result<(), SeedError> {
        let n = self.products.len();
        let (adjective, noun) = (*self.rng.pick(ADJECTIVES), *self.rng.pick(NOUNS));
        let usd = self.rng.chance(0.15);
        // Log-uniform between 2.99 and 499.99, ending in .99.
        let major = (3.0_f64 * (500.0_f64 / 3.0).powf(self.rng.unit())).round() as i64;
        let product_id = self.rng.uuid_at(self.now);
        let mut sim = Sim::<Product>::new(product_id);
        let sku_prefix: String = noun.chars().filter(char::is_ascii_alphabetic).take(3).collect();
        let events = sim
            .state
            .decide(ProductCommand::Add {
                product_id,
                sku: format!("{}-{n:05}", sku_prefix.to_ascii_uppercase()),
                name: format!("{adjective} {noun}"),
                price_minor: (major * 100 - 1).max(99),
                currency: if usd { "USD" } else { "EUR" }.to_owned(),
                stock: self.rng.range(2, 40) * 10,
            })
            .map_err(refused("added a product"))?;
        let correlation = self.correlation();
        self.out.append(&mut sim, events, self.now, &correlation);
        if usd { &mut self.usd } else { &mut self.eur }.push(n);
        self.products.push(sim);
        self.restock_due.push(false);
        self.sold_since_restock.push(0);
        Ok(())
    }

    fn change_price(&mut self) -> Result<(), SeedError> {
        if self.products.is_empty() {
            return Ok(());
        }
        let p = self.rng.below(self.products.len());
        let Some(price) = self.products[p].state.price else {
            return Ok(());
        };
        let factor = 0.85 + 0.35 * self.rng.unit();
        let major = ((price.amount_minor as f64 / 100.0) * factor).round() as i64;
        let price_minor = (major * 100 - 1).max(99);
        let product_id = self.products[p].id;
        let events = self.products[p]
            .state
            .decide(ProductCommand::ChangePrice {
                product_id,
                price_minor,
            })
            .map_err(refused("changed a price"))?;
        let correlation = self.correlation();
        self.out.append(&mut self.products[p], events, self.now, &correlation);
        Ok(())
    }

    fn request_restock(&mut self, p: usize, soon: bool) {
        if !self.restock_due[p] {
            self.restock_due[p] = true;
            let after = if soon {
                self.rng.range(HOUR_MS, DAY_MS)
            } else {
                self.rng.range(4 * HOUR_MS, 2 * DAY_MS)
            };
            self.schedule(after, Action::Restock(p));
        }
    }

    fn restock(&mut self, p: usize) -> Result<(), SeedError> {
        self.restock_due[p] = false;
        // At least what sold since the last delivery from the supplier, rounded up to tens.
        let sold = self.sold_since_restock[p];
        let quantity = (self.rng.range(5, 50).max((sold + 9) / 10)) * 10;
        let product_id = self.products[p].id;
        let events = self.products[p]
            .state
            .decide(ProductCommand::Restock { product_id, quantity })
            .map_err(refused("restocked a product"))?;
        self.sold_since_restock[p] = 0;
        self.stats.restocks += events.len() as u64;
        let correlation = self.correlation();
        self.out.append(&mut self.products[p], events, self.now, &correlation);
        Ok(())
    }

    /// A customer places an order of 1 to 4 lines in one currency, each line on a product with
    /// enough stock: a line whose product is sold out is dropped (and a restock requested), or
    /// now and then ordered all the same (the saga will not reserve it). The order and its saga
    /// are appended, and the saga takes its first turn: it reserves the lines and waits for the
    /// provider's answer.
    fn place(&mut self) -> Result<(), SeedError> {
        if self.customers.is_empty() || self.products.is_empty() {
            return Ok(());
        }
        let c = self.rng.skewed(self.customers.len(), 1.6);
        let wanted = match self.rng.unit() {
            x if x < 0.45 => 1,
            x if x < 0.75 => 2,
            x if x < 0.90 => 3,
            _ => 4,
        };
        let first = self.rng.skewed(self.products.len(), 2.0);
        let usd = self.products[first]
            .state
            .price
            .is_some_and(|p| p.currency == Currency::USD);
        let pool = if usd { &self.usd } else { &self.eur };
        let mut picked: Vec<(usize, i64)> = Vec::with_capacity(wanted);
        let mut sold_out = Vec::new();
        let mut candidate = first;
        for _ in 0..wanted * 3 {
            if picked.len() == wanted {
                break;
            }
            if picked.iter().all(|&(p, _)| p != candidate) && !sold_out.contains(&candidate) {
                let quantity = match self.rng.unit() {
                    x if x < 0.6 => 1,
                    x if x < 0.85 => 2,
                    x if x < 0.95 => 3,
                    _ => self.rng.range(4, 6),
                };
                if self.products[candidate].state.available >= quantity || self.rng.chance(ORDER_SOLD_OUT) {
                    picked.push((candidate, quantity));
                } else {
                    sold_out.push(candidate);
                }
            }
            candidate = pool[self.rng.skewed(pool.len(), 2.0)];
        }
        for p in sold_out {
            self.request_restock(p, true);
        }
        if picked.is_empty() {
            return Ok(()); // a lost sale: everything the customer wanted was sold out
        }

        let order_id = self.rng.uuid_at(self.now);
        let customer_id = self.customers[c].id;
        let command = PlaceOrder {
            order_id,
            customer_id,
            lines: picked
                .iter()
                .map(|&(p, quantity)| PlaceOrderLine {
                    product_id: self.products[p].id,
                    quantity,
                })
                .collect(),
        };
        // Priced from the catalogue as it is now (the orders service's copy of it).
        let mut priced = Vec::with_capacity(picked.len());
        for &(p, quantity) in &picked {
            let product = &self.products[p];
            let Some(unit_price) = product.state.price else {
                return Err(SeedError::Unexpected(format!("product {} has no price", product.id)));
            };
            priced.push(ReservedLine {
                product_id: product.id,
                quantity,
                sku: product.state.sku.clone(),
                name: product.state.name.clone(),
                unit_price,
            });
        }
        let placed = place_reserved_order(&Order::default(), &command, self.customers[c].state.snapshot(), &priced)
            .map_err(refused("placed an order"))?;

        let placed_by = self.rng.uuid_at(self.now).to_string();
        let mut order = Sim::<Order>::new(order_id);
        self.out.append(&mut order, placed, self.now, &placed_by);
        let Some(amount) = order.state.total() else {
            return Err(SeedError::Unexpected(format!(
                "placed order {order_id} without a total"
            )));
        };
        let deadline = chrono::Duration::from_std(DEFAULT_SAGA_DEADLINE).unwrap_or(chrono::Duration::minutes(15));
        let mut saga = Sim::<Saga>::new(order_id);
        let started = saga
            .state
            .decide(SagaCommand::Start {
                order_id,
                payment_id: saga::payment_id(order_id),
                lines: command.lines.iter().map(|l| (l.product_id, l.quantity)).collect(),
                amount,
                deadline: self.now + deadline,
                correlation_id: placed_by.clone(),
            })
            .map_err(refused("started a saga"))?;
        self.out.append(&mut saga, started, self.now, &placed_by);
        self.stats.orders += 1;
        self.stats.lines += picked.len() as u64;

        let fate = match self.rng.unit() {
            x if x < DECLINE => Fate::Declined,
            x if x < DECLINE + CANCEL => Fate::Cancelled,
            _ => Fate::Delivered,
        };
        let o = self.orders.len();
        self.orders.push(Some(Box::new(OrderSim {
            sim: order,
            saga,
            products: picked.iter().map(|&(p, _)| p).collect(),
            fate,
            placed_by,
            payment: None,
        })));
        if self.run_saga(o, None)? {
            return Ok(()); // a line the stock no longer covered: cancelled already
        }
        let after = (AUTH_MIN_MS + self.rng.exp(AUTH_MEAN_MS) as i64).min(AUTH_MAX_MS);
        self.schedule(after, Action::Authorize(o));
        Ok(())
    }

    /// The payment provider answers for order `o`, placed seconds ago: it authorizes the
    /// order's total and the saga confirms the order, whose life goes on; or it declines, and
    /// the saga releases the stock and cancels the order.
    fn authorize(&mut self, o: usize) -> Result<(), SeedError> {
        let Some(fate) = self.orders.get(o).and_then(Option::as_ref).map(|order| order.fate) else {
            return Ok(());
        };
        let answer = if fate == Fate::Declined {
            Answer::Declined(DECLINE_REASONS[self.rng.skewed(DECLINE_REASONS.len(), 1.8)])
        } else {
            Answer::Authorized
        };
        if self.run_saga(o, Some(answer))? {
            return Ok(());
        }
        if fate == Fate::Cancelled {
            let after = self.rng.range(10 * 60_000, 2 * DAY_MS);
            self.schedule(after, Action::Cancel(o));
        } else {
            let after = 4 * HOUR_MS + self.rng.exp(22.0 * HOUR_MS as f64) as i64;
            self.schedule(after, Action::Ship(o));
        }
        Ok(())
    }

    /// The authorizations still due when the event budget ran out are answered (in the order
    /// they are due, all inside the window): no saga is left waiting for the provider. Nothing
    /// else that is due happens.
    fn finish_sagas(&mut self) -> Result<(), SeedError> {
        while let Some(Scheduled { at, action, .. }) = self.heap.pop() {
            if let Action::Authorize(o) = action {
                self.advance(at);
                self.authorize(o)?;
            }
        }
        Ok(())
    }

    /// Decides `command` on order `o` and appends the result under `correlation`.
    fn transition(
        &mut self,
        o: usize,
        correlation: &str,
        command: impl FnOnce(Uuid) -> OrderCommand,
    ) -> Result<Option<Fate>, SeedError> {
        let Some(order) = self.orders.get_mut(o).and_then(Option::as_mut) else {
            return Ok(None);
        };
        let events = order
            .sim
            .state
            .decide(command(order.sim.id))
            .map_err(refused("moved an order"))?;
        self.out.append(&mut order.sim, events, self.now, correlation);
        Ok(Some(order.fate))
    }

    /// Ships order `o`; its saga captures the payment in full and completes, in the same action.
    fn ship(&mut self, o: usize) -> Result<(), SeedError> {
        let (carrier, tracking) = shipping_label(&mut self.rng);
        let correlation = self.correlation();
        let shipped = self.transition(o, &correlation, |order_id| OrderCommand::Ship {
            order_id,
            carrier,
            tracking,
        })?;
        if shipped.is_some() {
            self.run_saga(o, None)?;
            let after = DAY_MS + self.rng.exp(1.5 * DAY_MS as f64) as i64;
            self.schedule(after, Action::Deliver(o));
        }
        Ok(())
    }

    fn deliver(&mut self, o: usize) -> Result<(), SeedError> {
        let correlation = self.correlation();
        let delivered = self
            .transition(o, &correlation, |order_id| OrderCommand::Deliver { order_id })?
            .is_some();
        if delivered {
            self.stats.delivered += 1;
            if self.rng.chance(REFUND) {
                let after = 2 * DAY_MS + self.rng.exp(5.0 * DAY_MS as f64) as i64;
                self.schedule(after, Action::Refund(o));
                return Ok(());
            }
        }
        // Nothing happens to a delivered order any more: free its state.
        if let Some(slot) = self.orders.get_mut(o) {
            *slot = None;
        }
        Ok(())
    }

    /// Refunds delivered order `o`'s payment, in full or in part (see the module doc), and
    /// frees the order's state.
    fn refund(&mut self, o: usize) -> Result<(), SeedError> {
        let Some(order) = self.orders.get_mut(o).and_then(Option::take) else {
            return Ok(());
        };
        let OrderSim { sim, payment, .. } = *order;
        let Some(mut payment) = payment else {
            return Err(SeedError::Unexpected(format!(
                "let order {} be delivered without a payment",
                sim.id
            )));
        };
        let amount_minor = if self.rng.chance(REFUND_FULL) {
            payment.state.refundable_minor()
        } else {
            partial_refund(&mut self.rng, &sim.state.lines, sim.state.total_minor)
        };
        let events = payment
            .state
            .decide(PaymentCommand::Refund {
                payment_id: payment.id,
                amount_minor,
            })
            .map_err(refused("refunded a payment"))?;
        let correlation = self.correlation();
        self.out.append(&mut payment, events, self.now, &correlation);
        self.stats.refunded += 1;
        Ok(())
    }

    /// The customer or the shop cancels confirmed order `o` (reason code `requested`); its saga
    /// voids the authorization, releases the stock and completes, in the same action.
    fn cancel(&mut self, o: usize) -> Result<(), SeedError> {
        let reason = *self.rng.pick(CANCEL_REASONS);
        let correlation = self.correlation();
        let cancelled = self.transition(o, &correlation, |order_id| OrderCommand::Cancel {
            order_id,
            reason: reason.to_owned(),
            reason_code: Some(ReasonCode::Requested.as_str().to_owned()),
        })?;
        if cancelled.is_some() {
            self.stats.cancelled += 1;
            self.run_saga(o, None)?;
        }
        Ok(())
    }

    /// Advances order `o`'s saga as its runner would, in the current action: each step is what
    /// [`Saga::next`] decides, the effect of its call is decided by the owning service's domain,
    /// and both are appended, under the placement's correlation id with the step's key as
    /// causation. Stops once the saga waits: for the provider's answer (`answer`, used at most
    /// once), for its order to ship or be cancelled, or completed. `true` when the saga
    /// cancelled the order or completed its cancellation: nothing more can happen to the order,
    /// and its state is freed.
    fn run_saga(&mut self, o: usize, mut answer: Option<Answer>) -> Result<bool, SeedError> {
        let now = self.now;
        let Some(order) = self.orders.get_mut(o).and_then(Option::as_mut) else {
            return Ok(false);
        };
        let order: &mut OrderSim = order;
        let (products, out, stats) = (&mut self.products, &mut self.out, &mut self.stats);
        let sold_since_restock = &mut self.sold_since_restock;
        let order_id = order.sim.id;
        // Products to restock once the saga is done: (index, soon).
        let mut restock: Vec<(usize, bool)> = Vec::new();
        // A saga takes a handful of steps; the bound only stops a bug from looping for ever.
        let mut steps = 0;
        loop {
            steps += 1;
            if steps > 64 {
                return Err(SeedError::Unexpected(format!(
                    "saga of order {order_id} took 64 steps in one turn"
                )));
            }
            let view = OrderView {
                status: order.sim.state.status,
                cancellation_reason: order.sim.state.cancellation_reason.clone(),
            };
            let next = order.saga.state.next(&view, now);
            let key = match &next {
                Next::Wait => break,
                Next::Authorize if answer.is_none() => break, // the provider answers later
                Next::Reserve { line } => format!("reserve-{line}"),
                Next::Release { line, frontier: false } => format!("release-{line}"),
                Next::Release { line, frontier: true } => format!("release-{line}-frontier"),
                Next::Authorize => "authorize".to_owned(),
                Next::Confirm => "confirm".to_owned(),
                Next::Capture => "capture".to_owned(),
                Next::Refund => "refund".to_owned(),
                Next::Void => "void".to_owned(),
                Next::CancelOrder => "cancel".to_owned(),
                Next::Fail { .. } => "fail".to_owned(),
                Next::Complete { .. } => "complete".to_owned(),
            };
            let metadata = EventMetadata {
                correlation_id: order.placed_by.clone(),
                causation_id: order.saga.state.key(&key),
                actor: SAGA_ACTOR.to_owned(),
            };
            let saga_state = &order.saga.state;
            let record = match next {
                Next::Wait => break,
                Next::Reserve { line } => {
                    let (product_id, quantity) = saga_line(saga_state, line)?;
                    let p = order.products[line];
                    let reserve = ProductCommand::ReserveStock {
                        product_id,
                        order_id,
                        quantity,
                    };
                    match products[p].state.decide(reserve) {
                        Ok(events) => {
                            out.append_as(&mut products[p], events, now, &metadata);
                            sold_since_restock[p] += quantity;
                            if products[p].state.available < LOW_STOCK {
                                restock.push((p, false));
                            }
                            SagaCommand::Reserved { line }
                        }
                        Err(e @ DomainError::InsufficientStock { .. }) => {
                            restock.push((p, true));
                            SagaCommand::Fail {
                                reason_code: ReasonCode::OutOfStock,
                                reason: e.to_string(),
                                step: format!("reserve {line}"),
                            }
                        }
                        Err(e) => return Err(refused("reserved stock for a saga")(e)),
                    }
                }
                Next::Authorize => {
                    let Some(amount) = saga_state.amount else {
                        return Err(SeedError::Unexpected(format!(
                            "started saga {order_id} without an amount"
                        )));
                    };
                    let payment_id = saga_state.payment_id;
                    let payment = order.payment.insert(Sim::new(payment_id));
                    stats.payments += 1;
                    match answer.take() {
                        Some(Answer::Declined(reason)) => {
                            let events = payment
                                .state
                                .decide(PaymentCommand::Decline {
                                    payment_id,
                                    order_id,
                                    reason: reason.to_owned(),
                                })
                                .map_err(refused("declined a payment"))?;
                            out.append_as(payment, events, now, &metadata);
                            stats.declined += 1;
                            SagaCommand::Fail {
                                reason_code: ReasonCode::PaymentDeclined,
                                reason: reason.to_owned(),
                                step: "authorize".to_owned(),
                            }
                        }
                        _ => {
                            let events = payment
                                .state
                                .decide(PaymentCommand::Authorize {
                                    payment_id,
                                    order_id,
                                    amount_minor: amount.amount_minor,
                                    currency: amount.currency.as_str().to_owned(),
                                })
                                .map_err(refused("authorized a payment"))?;
                            out.append_as(payment, events, now, &metadata);
                            SagaCommand::Authorized
                        }
                    }
                }
                Next::Confirm => {
                    let events = order
                        .sim
                        .state
                        .decide(OrderCommand::Confirm { order_id })
                        .map_err(refused("confirmed an order"))?;
                    out.append_as(&mut order.sim, events, now, &metadata);
                    SagaCommand::Confirmed
                }
                Next::Capture => {
                    let amount_minor = saga_state.amount.map_or(0, |a| a.amount_minor);
                    let payment = paid(&mut order.payment, order_id)?;
                    let events = payment
                        .state
                        .decide(PaymentCommand::Capture {
                            payment_id: payment.id,
                            amount_minor,
                        })
                        .map_err(refused("captured a payment"))?;
                    out.append_as(payment, events, now, &metadata);
                    stats.captured += 1;
                    SagaCommand::Captured { amount_minor }
                }
                Next::Refund => {
                    let amount_minor = saga_state.captured_minor;
                    let payment = paid(&mut order.payment, order_id)?;
                    let events = payment
                        .state
                        .decide(PaymentCommand::Refund {
                            payment_id: payment.id,
                            amount_minor,
                        })
                        .map_err(refused("refunded a payment"))?;
                    out.append_as(payment, events, now, &metadata);
                    stats.refunded += 1;
                    SagaCommand::Refunded { amount_minor }
                }
                Next::Void => {
                    let payment_id = saga_state.payment_id;
                    let code = saga_state
                        .failure
                        .as_ref()
                        .map_or("cancelled", |f| f.reason_code.as_str());
                    let reason = format!("order cancelled: {code}");
                    let payment = order.payment.get_or_insert_with(|| Sim::new(payment_id));
                    let events = payment
                        .state
                        .decide(PaymentCommand::Void {
                            payment_id,
                            order_id,
                            reason,
                        })
                        .map_err(refused("voided a payment"))?;
                    if !events.is_empty() {
                        stats.voided += 1;
                    }
                    out.append_as(payment, events, now, &metadata);
                    SagaCommand::Voided
                }
                Next::Release { line, .. } => {
                    let (product_id, _) = saga_line(saga_state, line)?;
                    let p = order.products[line];
                    let events = products[p]
                        .state
                        .decide(ProductCommand::ReleaseStock { product_id, order_id })
                        .map_err(refused("released stock for a saga"))?;
                    out.append_as(&mut products[p], events, now, &metadata);
                    SagaCommand::Released { line }
                }
                Next::CancelOrder => {
                    let (reason, reason_code) = saga_state.failure.as_ref().map_or_else(
                        || ("cancelled".to_owned(), ReasonCode::Requested),
                        |f| (f.reason.clone(), f.reason_code),
                    );
                    let events = order
                        .sim
                        .state
                        .decide(OrderCommand::Cancel {
                            order_id,
                            reason: trimmed_reason(&reason),
                            reason_code: Some(reason_code.as_str().to_owned()),
                        })
                        .map_err(refused("cancelled an order for its saga"))?;
                    out.append_as(&mut order.sim, events, now, &metadata);
                    stats.cancelled += 1;
                    SagaCommand::OrderCancelled
                }
                Next::Fail {
                    reason_code,
                    reason,
                    step,
                } => SagaCommand::Fail {
                    reason_code,
                    reason,
                    step,
                },
                Next::Complete { outcome } => SagaCommand::Complete {
                    outcome: outcome.to_owned(),
                },
            };
            // The runner records a failure's reason as the domain accepts it.
            let record = match record {
                SagaCommand::Fail {
                    reason_code,
                    reason,
                    step,
                } => SagaCommand::Fail {
                    reason_code,
                    reason: trimmed_reason(&reason),
                    step,
                },
                other => other,
            };
            let events = order
                .saga
                .state
                .decide(record)
                .map_err(refused("recorded a saga step"))?;
            out.append_as(&mut order.saga, events, now, &metadata);
        }
        let cancelled = order.saga.state.outcome.as_deref() == Some("cancelled");
        for (p, soon) in restock {
            self.request_restock(p, soon);
        }
        if cancelled && let Some(slot) = self.orders.get_mut(o) {
            *slot = None;
        }
        Ok(cancelled)
    }
}

/// Line `line` of a saga: its product and quantity.
fn saga_line(saga: &Saga, line: usize) -> Result<(Uuid, i64), SeedError> {
    saga.lines
        .get(line)
        .map(|l| (l.product_id, l.quantity))
        .ok_or_else(|| SeedError::Unexpected(format!("decided a step on line {line} of saga {}", saga.order_id)))
}

/// The payment an order's saga captures or refunds: authorized before.
fn paid(payment: &mut Option<Sim<Payment>>, order_id: Uuid) -> Result<&mut Sim<Payment>, SeedError> {
    payment
        .as_mut()
        .ok_or_else(|| SeedError::Unexpected(format!("saga of order {order_id} captures a payment never authorized")))
}

/// A reason the domain accepts, as the saga's runner trims it.
fn trimmed_reason(reason: &str) -> String {
    let trimmed: String = reason.trim().chars().take(MAX_REASON_CHARS).collect();
    if trimmed.is_empty() {
        "cancelled".to_owned()
    } else {
        trimmed
    }
}

/// A partial refund of an order of `total_minor`: one line sent back when it has several, some
/// units of its one line, or a goodwill gesture of 10 to 30% on a single item. Always less than
/// the total, and more than zero.
fn partial_refund(rng: &mut Rng, lines: &[OrderLine], total_minor: i64) -> i64 {
    match lines {
        [line] if line.quantity > 1 => rng.range(1, line.quantity - 1) * line.unit_price_minor,
        [_] | [] => (total_minor * rng.range(10, 30) / 100).max(1),
        lines => {
            let line = rng.pick(lines);
            line.quantity * line.unit_price_minor
        }
    }
}

fn arrival_index(arrival: Arrival) -> usize {
    ARRIVALS.iter().position(|a| *a == arrival).unwrap_or(0)
}

/// The ASCII, lower-case form of a name for an email address (`"Zoë"` → `"zo"`).
fn handle(name: &str) -> String {
    let handle: String = name
        .chars()
        .filter(char::is_ascii_alphabetic)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if handle.is_empty() {
        "customer".to_owned()
    } else {
        handle
    }
}

const FIRST_NAMES: &[&str] = &[
    "Ada",
    "Alan",
    "Amélie",
    "Anna",
    "Ben",
    "Carla",
    "Chen",
    "Chloé",
    "Daniel",
    "Elena",
    "Emil",
    "Fatima",
    "Felix",
    "Grace",
    "Hannah",
    "Hugo",
    "Ines",
    "Isaac",
    "Jana",
    "João",
    "Jonas",
    "Karim",
    "Katarzyna",
    "Lea",
    "Leon",
    "Lucía",
    "Marco",
    "Maria",
    "Mateo",
    "Mia",
    "Noah",
    "Nora",
    "Olga",
    "Omar",
    "Paul",
    "Priya",
    "Rosa",
    "Sami",
    "Sofia",
    "Tom",
    "Yuki",
    "Zoë",
];

const LAST_NAMES: &[&str] = &[
    "Andersen",
    "Bauer",
    "Becker",
    "Costa",
    "Dubois",
    "Fischer",
    "García",
    "Hansen",
    "Hoffmann",
    "Ivanova",
    "Jansen",
    "Kowalski",
    "Lambert",
    "Lopez",
    "Martin",
    "Meyer",
    "Moreau",
    "Müller",
    "Nielsen",
    "Novak",
    "Peeters",
    "Petit",
    "Rossi",
    "Schmidt",
    "Schneider",
    "Silva",
    "Smith",
    "Svensson",
    "Wagner",
    "Weber",
    "Wójcik",
    "Yilmaz",
];

const EMAIL_DOMAINS: &[&str] = &[
    "example.com",
    "example.org",
    "example.net",
    "mail.example.com",
    "shop.example",
];

const ADJECTIVES: &[&str] = &[
    "Organic",
    "Classic",
    "Compact",
    "Deluxe",
    "Eco",
    "Everyday",
    "Handmade",
    "Large",
    "Lightweight",
    "Mini",
    "Premium",
    "Recycled",
    "Small",
    "Smart",
    "Sturdy",
    "Travel",
    "Vintage",
    "Waterproof",
    "Wireless",
    "Wooden",
];

const NOUNS: &[&str] = &[
    "Backpack",
    "Blanket",
    "Bottle",
    "Candle",
    "Chair",
    "Coffee",
    "Cup",
    "Desk Lamp",
    "Headphones",
    "Jacket",
    "Kettle",
    "Keyboard",
    "Lamp",
    "Mug",
    "Notebook",
    "Pan",
    "Pillow",
    "Plant Pot",
    "Scarf",
    "Sneakers",
    "Speaker",
    "Tea",
    "Teapot",
    "Towel",
    "Umbrella",
    "Wallet",
    "Watch",
];

/// A carrier and a tracking number of its form.
pub fn shipping_label(rng: &mut Rng) -> (String, String) {
    let &(carrier, prefix, digits) = rng.pick(CARRIERS);
    let mut tracking = prefix.to_owned();
    for _ in 0..digits {
        tracking.push(char::from(b'0' + rng.below(10) as u8));
    }
    (carrier.to_owned(), tracking)
}

/// Carrier, tracking prefix, digits after it.
const CARRIERS: &[(&str, &str, usize)] = &[
    ("DHL", "JJD", 12),
    ("UPS", "1Z", 16),
    ("DPD", "0", 13),
    ("GLS", "", 11),
    ("FedEx", "", 12),
    ("PostNL", "3S", 13),
    ("La Poste", "6A", 11),
];

/// Why the customer or the shop cancels an order (a declined payment has its own reason).
pub const CANCEL_REASONS: &[&str] = &[
    "customer changed their mind",
    "duplicate order",
    "delivery date too late",
    "address could not be verified",
    "ordered the wrong size",
    "found a better price elsewhere",
];

/// Why a provider declines a payment, the most frequent first.
pub const DECLINE_REASONS: &[&str] = &[
    "insufficient funds",
    "card expired",
    "do not honor",
    "3-D Secure authentication failed",
    "incorrect card number",
    "suspected fraud",
    "card reported lost or stolen",
];

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::HashMap;
    use std::path::PathBuf;

    use event_schemas::{CustomerEvent, Money, OrderEvent, PaymentEvent, ProductEvent, SagaEvent, parse_stream_id};
    use event_store::{EventStore, RecordedEvent, SqliteEventStore, StoreOptions};
    use write_side::domain::saga::Phase;
    use write_side::domain::{DomainError, OrderStatus, PaymentStatus};

    use super::*;

    /// A SQLite store in a temporary file, deleted when dropped.
    pub(crate) struct TempStore {
        pub(crate) store: SqliteEventStore,
        path: PathBuf,
    }

    impl TempStore {
        pub(crate) async fn new() -> Self {
            let path = std::env::temp_dir().join(format!("orderflow-seed-{}.db", Uuid::new_v4().simple()));
            let pool = sqlx::SqlitePool::connect_with(SqliteEventStore::connect_options(&path))
                .await
                .expect("open SQLite");
            SqliteEventStore::migrate(&pool).await.expect("migrate");
            let store = SqliteEventStore::open(pool, StoreOptions::default())
                .await
                .expect("store");
            TempStore { store, path }
        }

        pub(crate) async fn everything(&self) -> Vec<RecordedEvent> {
            let mut all = Vec::new();
            loop {
                let after = all.last().map_or(0, |e: &RecordedEvent| e.position);
                let page = self.store.read_all(after, 5_000).await.expect("read_all");
                if page.is_empty() {
                    return all;
                }
                all.extend(page);
            }
        }
    }

    impl TempStore {
        /// The one store as every service's: the seeder's events all land in it, in commit
        /// order, as one log to check.
        pub(crate) fn logs(&self) -> Vec<ServiceLog> {
            let store: std::sync::Arc<dyn EventStore> = std::sync::Arc::new(self.store.clone());
            ServiceLog::shared(&store)
        }
    }

    impl Drop for TempStore {
        fn drop(&mut self) {
            for suffix in ["", "-wal", "-shm"] {
                let mut p = self.path.clone().into_os_string();
                p.push(suffix);
                let _ = std::fs::remove_file(p);
            }
        }
    }

    /// The command that decides payment event `e` (the domain must decide exactly `e` from the
    /// state before it).
    pub(crate) fn payment_command(e: &PaymentEvent) -> PaymentCommand {
        match e {
            PaymentEvent::Authorized(a) => PaymentCommand::Authorize {
                payment_id: a.payment_id,
                order_id: a.order_id,
                amount_minor: a.amount.amount_minor,
                currency: a.amount.currency.to_string(),
            },
            PaymentEvent::Declined(d) => PaymentCommand::Decline {
                payment_id: d.payment_id,
                order_id: d.order_id,
                reason: d.reason.clone(),
            },
            PaymentEvent::Captured(c) => PaymentCommand::Capture {
                payment_id: c.payment_id,
                amount_minor: c.amount.amount_minor,
            },
            PaymentEvent::Refunded(r) => PaymentCommand::Refund {
                payment_id: r.payment_id,
                amount_minor: r.amount.amount_minor,
            },
            PaymentEvent::Voided(v) => PaymentCommand::Void {
                payment_id: v.payment_id,
                order_id: v.order_id,
                reason: v.reason.clone(),
            },
        }
    }

    fn options(events: u64, seed: u64) -> SeedOptions {
        SeedOptions {
            events,
            days: 21,
            seed,
            customers: 600,
            products: 120,
            batch_events: 2_000,
            ..SeedOptions::default()
        }
    }

    /// The command that decides saga event `e` (the saga must decide exactly `e` from the state
    /// before it).
    pub(crate) fn saga_command(e: &SagaEvent) -> SagaCommand {
        match e {
            SagaEvent::Started(s) => SagaCommand::Start {
                order_id: s.order_id,
                payment_id: s.payment_id,
                lines: s.lines.iter().map(|l| (l.product_id, l.quantity)).collect(),
                amount: s.amount,
                deadline: s.deadline,
                correlation_id: s.correlation_id.clone(),
            },
            SagaEvent::StockReserved(r) => SagaCommand::Reserved { line: r.line as usize },
            SagaEvent::PaymentAuthorized(_) => SagaCommand::Authorized,
            SagaEvent::Confirmed(_) => SagaCommand::Confirmed,
            SagaEvent::Failed(f) => SagaCommand::Fail {
                reason_code: ReasonCode::from_name(&f.reason_code).expect("a known reason code"),
                reason: f.reason.clone(),
                step: f.step.clone(),
            },
            SagaEvent::StockReleased(r) => SagaCommand::Released { line: r.line as usize },
            SagaEvent::PaymentVoided(_) => SagaCommand::Voided,
            SagaEvent::PaymentCaptured(c) => SagaCommand::Captured {
                amount_minor: c.amount.amount_minor,
            },
            SagaEvent::PaymentRefunded(r) => SagaCommand::Refunded {
                amount_minor: r.amount.amount_minor,
            },
            SagaEvent::OrderCancelled(_) => SagaCommand::OrderCancelled,
            SagaEvent::Completed(c) => SagaCommand::Complete {
                outcome: c.outcome.clone(),
            },
            SagaEvent::Parked(p) => SagaCommand::Park {
                step: p.step.clone(),
                error: p.error.clone(),
            },
            SagaEvent::Resumed(r) => SagaCommand::Resume { actor: r.actor.clone() },
        }
    }

    /// Where stock moved at inventory: (product, order) → (quantity, simulated time). A saga's
    /// record and the effect of its call go to two services' stores, so they share the
    /// simulated action, not a commit.
    type Moves = HashMap<(Uuid, Uuid), (i64, DateTime<Utc>)>;

    /// A moment of an order's life as the log tells it: simulated time and correlation id.
    type Moment = (DateTime<Utc>, String);

    /// What the log says happened to one order, to check its saga and its payment against.
    #[derive(Debug, Default)]
    struct OrderFacts {
        placed: Option<Moment>,
        total: Option<Money>,
        confirmed: Option<Moment>,
        shipped: Option<Moment>,
        delivered: Option<Moment>,
        /// With the reason and the reason code.
        cancelled: Option<(Moment, String, String)>,
    }

    #[tokio::test]
    async fn twenty_thousand_events_are_a_valid_shop_history() {
        let temp = TempStore::new().await;
        let options = options(20_000, 7);
        let mut reported = Vec::new();
        let report = seed(&temp.logs(), &options, |n| reported.push(n)).await.expect("seed");
        let events = temp.everything().await;
        eprintln!("{report:?}");

        // The count is what was asked for, give or take one action (and the provider's answers
        // still due); progress only grows.
        assert_eq!(events.len() as u64, report.events);
        assert!(
            (20_000..20_100).contains(&report.events),
            "{} events for a target of 20000 ({report:?})",
            report.events
        );
        assert!(reported.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(reported.last(), Some(&report.events));
        assert!(report.commits >= 10, "{report:?}");
        // The budget lasts about the whole window.
        assert!(report.simulated_days > 18.0, "{report:?}");
        // The saga driver starts after the seeded history: none of its sagas has work.
        let head = events.last().map_or(0, |e| e.position);
        assert_eq!(
            temp.store.load_checkpoint(saga::CHECKPOINT).await.expect("checkpoint"),
            head
        );

        // Versions are contiguous per stream, simulated time never goes back within a stream and
        // stays inside the window.
        let end = options.start + chrono::Duration::days(i64::from(options.days));
        let mut versions: HashMap<&str, (u64, DateTime<Utc>)> = HashMap::new();
        for e in &events {
            let (version, at) = versions.entry(&e.stream_id).or_insert((0, options.start));
            assert_eq!(e.stream_version, *version + 1, "{} is not contiguous", e.stream_id);
            assert!(e.occurred_at >= *at, "{} goes back in time", e.stream_id);
            assert!(e.occurred_at < end);
            *version = e.stream_version;
            *at = e.occurred_at;
        }

        // Every event decodes and belongs to the stream it is in.
        let decoded: Vec<DomainEvent> = events
            .iter()
            .map(|e| {
                let event = event_schemas::decode(&e.event_type, e.schema_version, &e.payload).expect("decodes");
                assert_eq!(event.stream_id(), e.stream_id);
                parse_stream_id(&e.stream_id).expect("canonical stream id");
                event
            })
            .collect();

        // Reservations and releases, by (product, order).
        let mut reserved = Moves::new();
        let mut released = Moves::new();
        for (e, event) in events.iter().zip(&decoded) {
            match event {
                DomainEvent::Product(ProductEvent::StockReserved(r)) => {
                    let old = reserved.insert((r.product_id, r.order_id), (r.quantity, e.occurred_at));
                    assert!(old.is_none(), "reserved twice");
                }
                DomainEvent::Product(ProductEvent::StockReleased(r)) => {
                    let old = released.insert((r.product_id, r.order_id), (r.quantity, e.occurred_at));
                    assert!(old.is_none(), "released twice");
                }
                _ => {}
            }
        }

        // Replay the log in simulated order through the write side's own decisions: each stored
        // event must be exactly what the domain decides from the state before it.
        let mut order: Vec<usize> = (0..events.len()).collect();
        order.sort_by_key(|&i| (events[i].occurred_at, events[i].position));
        let mut customers: HashMap<Uuid, Customer> = HashMap::new();
        let mut products: HashMap<Uuid, Product> = HashMap::new();
        let mut orders: HashMap<Uuid, Order> = HashMap::new();
        let mut sagas: HashMap<Uuid, Saga> = HashMap::new();
        let mut stocked: HashMap<Uuid, i64> = HashMap::new();
        let (mut renames, mut email_changes, mut price_changes, mut restocks, mut usd) = (0, 0, 0, 0, 0_usize);
        let (mut placed, mut cancelled, mut delivered) = (0_u64, 0_u64, 0_u64);
        let mut payments: HashMap<Uuid, Payment> = HashMap::new();
        let mut facts: HashMap<Uuid, OrderFacts> = HashMap::new();
        // Each payment's and each saga's events in simulated order, with when and under which
        // correlation.
        let mut payment_events: HashMap<Uuid, Vec<(PaymentEvent, Moment)>> = HashMap::new();
        let mut saga_events: HashMap<Uuid, Vec<(SagaEvent, Moment)>> = HashMap::new();
        for i in order {
            let (recorded, event) = (&events[i], &decoded[i]);
            let moment = (recorded.occurred_at, recorded.metadata.correlation_id.clone());
            if let DomainEvent::Order(e) = event {
                let moment = moment.clone();
                let f = facts.entry(e.order_id()).or_default();
                match e {
                    OrderEvent::Placed(p) => {
                        f.placed = Some(moment);
                        f.total = Some(p.total());
                    }
                    OrderEvent::Confirmed(_) => f.confirmed = Some(moment),
                    OrderEvent::Shipped(_) => f.shipped = Some(moment),
                    OrderEvent::Delivered(_) => f.delivered = Some(moment),
                    OrderEvent::Cancelled(c) => f.cancelled = Some((moment, c.reason.clone(), c.reason_code.clone())),
                }
            }
            match event {
                DomainEvent::Customer(e) => {
                    let state = customers.entry(e.customer_id()).or_default();
                    let command = match e {
                        CustomerEvent::Registered(r) => CustomerCommand::Register {
                            customer_id: r.customer_id,
                            name: r.name.clone(),
                            email: r.email.clone(),
                        },
                        CustomerEvent::Renamed(r) => {
                            renames += 1;
                            CustomerCommand::Rename {
                                customer_id: r.customer_id,
                                name: r.name.clone(),
                            }
                        }
                        CustomerEvent::EmailChanged(r) => {
                            email_changes += 1;
                            CustomerCommand::ChangeEmail {
                                customer_id: r.customer_id,
                                email: r.email.clone(),
                            }
                        }
                    };
                    assert_eq!(state.decide(command), Ok(vec![e.clone()]));
                    *state = std::mem::take(state).evolve(e);
                }
                DomainEvent::Product(e) => {
                    let state = products.entry(e.product_id()).or_default();
                    let command = match e {
                        ProductEvent::Added(r) => {
                            usd += usize::from(r.price.currency == Currency::USD);
                            *stocked.entry(r.product_id).or_default() += r.stock;
                            ProductCommand::Add {
                                product_id: r.product_id,
                                sku: r.sku.clone(),
                                name: r.name.clone(),
                                price_minor: r.price.amount_minor,
                                currency: r.price.currency.to_string(),
                                stock: r.stock,
                            }
                        }
                        ProductEvent::PriceChanged(r) => {
                            price_changes += 1;
                            ProductCommand::ChangePrice {
                                product_id: r.product_id,
                                price_minor: r.price.amount_minor,
                            }
                        }
                        ProductEvent::Restocked(r) => {
                            restocks += 1;
                            *stocked.entry(r.product_id).or_default() += r.quantity;
                            ProductCommand::Restock {
                                product_id: r.product_id,
                                quantity: r.quantity,
                            }
                        }
                        ProductEvent::StockReserved(r) => ProductCommand::ReserveStock {
                            product_id: r.product_id,
                            order_id: r.order_id,
                            quantity: r.quantity,
                        },
                        ProductEvent::StockReleased(r) => ProductCommand::ReleaseStock {
                            product_id: r.product_id,
                            order_id: r.order_id,
                        },
                    };
                    // Reserving more than is available would be InsufficientStock here.
                    assert_eq!(state.decide(command), Ok(vec![e.clone()]));
                    *state = std::mem::take(state).evolve(e);
                    assert!(state.available >= 0, "negative stock: {state:?}");
                }
                DomainEvent::Order(OrderEvent::Placed(p)) => {
                    placed += 1;
                    assert!((1..=4).contains(&p.lines.len()));
                    let total: i64 = p.lines.iter().map(|l| l.quantity * l.unit_price_minor).sum();
                    assert_eq!(p.total_minor, total);
                    let customer = customers
                        .get(&p.customer_id)
                        .expect("customer registered before ordering");
                    // Priced from the products as they are at that moment.
                    let priced: Vec<ReservedLine> = p
                        .lines
                        .iter()
                        .map(|l| {
                            let product = products.get(&l.product_id).expect("product added");
                            ReservedLine {
                                product_id: l.product_id,
                                quantity: l.quantity,
                                sku: product.sku.clone(),
                                name: product.name.clone(),
                                unit_price: product.price.expect("priced"),
                            }
                        })
                        .collect();
                    let command = PlaceOrder {
                        order_id: p.order_id,
                        customer_id: p.customer_id,
                        lines: p
                            .lines
                            .iter()
                            .map(|l| PlaceOrderLine {
                                product_id: l.product_id,
                                quantity: l.quantity,
                            })
                            .collect(),
                    };
                    let state = orders.entry(p.order_id).or_default();
                    assert_eq!(
                        place_reserved_order(state, &command, customer.snapshot(), &priced),
                        Ok(vec![OrderEvent::Placed(p.clone())]),
                        "a legal placement"
                    );
                    *state = std::mem::take(state).evolve(&OrderEvent::Placed(p.clone()));
                }
                DomainEvent::Order(e) => {
                    let state = orders.get_mut(&e.order_id()).expect("placed before anything else");
                    let order_id = e.order_id();
                    let decided: Result<Vec<OrderEvent>, DomainError> = match e {
                        OrderEvent::Confirmed(_) => state.decide(OrderCommand::Confirm { order_id }),
                        OrderEvent::Shipped(s) => state.decide(OrderCommand::Ship {
                            order_id,
                            carrier: s.carrier.clone(),
                            tracking: s.tracking.clone(),
                        }),
                        OrderEvent::Delivered(_) => {
                            delivered += 1;
                            state.decide(OrderCommand::Deliver { order_id })
                        }
                        OrderEvent::Cancelled(c) => {
                            cancelled += 1;
                            state.decide(OrderCommand::Cancel {
                                order_id,
                                reason: c.reason.clone(),
                                reason_code: (!c.reason_code.is_empty()).then(|| c.reason_code.clone()),
                            })
                        }
                        OrderEvent::Placed(_) => unreachable!("handled above"),
                    };
                    assert_eq!(decided, Ok(vec![e.clone()]), "illegal transition of {order_id}");
                    *state = std::mem::take(state).evolve(e);
                }
                DomainEvent::Payment(e) => {
                    let state = payments.entry(e.payment_id()).or_default();
                    let command = payment_command(e);
                    // A capture without an authorization, a refund of more than was captured,
                    // a void of a captured payment... would be refused here.
                    assert_eq!(state.decide(command), Ok(vec![e.clone()]), "payment {}", e.payment_id());
                    *state = std::mem::take(state).evolve(e);
                    payment_events
                        .entry(e.payment_id())
                        .or_default()
                        .push((e.clone(), moment));
                }
                DomainEvent::Saga(e) => {
                    let state = sagas.entry(e.order_id()).or_default();
                    assert_eq!(
                        state.decide(saga_command(e)),
                        Ok(vec![e.clone()]),
                        "saga {}",
                        e.order_id()
                    );
                    *state = std::mem::take(state).evolve(e);
                    saga_events.entry(e.order_id()).or_default().push((e.clone(), moment));
                }
            }
        }

        // Sagas: one per order, started with it, every step under the placement's correlation
        // id, each call's effect in the same action as its record, and none with work left.
        let deadline = chrono::Duration::from_std(DEFAULT_SAGA_DEADLINE).expect("a deadline");
        let mut codes: HashMap<String, u64> = HashMap::new();
        assert_eq!(sagas.len(), facts.len(), "every order has its saga");
        for (order_id, f) in &facts {
            let order = &orders[order_id];
            let total = f.total.expect("placed");
            let (placed_at, placed_by) = f.placed.as_ref().expect("placed");
            let saga = &sagas[order_id];
            let history = &saga_events[order_id];
            let (SagaEvent::Started(started), started_moment) = &history[0] else {
                panic!("saga {order_id} does not start with saga.started")
            };
            assert_eq!(
                started_moment,
                f.placed.as_ref().expect("placed"),
                "started with the order"
            );
            assert_eq!(started.payment_id, saga::payment_id(*order_id));
            assert_eq!(started.amount, total);
            assert_eq!(started.deadline, *placed_at + deadline);
            assert_eq!(&started.correlation_id, placed_by);
            let lines: Vec<(Uuid, i64)> = order.lines.iter().map(|l| (l.product_id, l.quantity)).collect();
            let saga_lines: Vec<(Uuid, i64)> = started.lines.iter().map(|l| (l.product_id, l.quantity)).collect();
            assert_eq!(saga_lines, lines);
            let payment = payment_events.get(&started.payment_id);
            let payment_at = |wanted: fn(&PaymentEvent) -> bool| {
                payment
                    .and_then(|h| h.iter().find(|(e, _)| wanted(e)))
                    .map(|(_, (at, correlation))| (*at, correlation.clone()))
            };
            for (event, (at, correlation)) in history {
                assert_eq!(
                    correlation, placed_by,
                    "saga {order_id}: every step in the placement's flow"
                );
                match event {
                    SagaEvent::StockReserved(r) => {
                        assert_eq!(reserved.get(&(r.product_id, *order_id)), Some(&(r.quantity, *at)));
                    }
                    SagaEvent::StockReleased(r) => {
                        let held = reserved.get(&(r.product_id, *order_id)).map(|(quantity, _)| *quantity);
                        assert_eq!(
                            released.get(&(r.product_id, *order_id)),
                            held.map(|q| (q, *at)).as_ref()
                        );
                    }
                    SagaEvent::PaymentAuthorized(a) => {
                        assert_eq!(a.amount, total);
                        let authorized = payment_at(|e| matches!(e, PaymentEvent::Authorized(_)));
                        assert_eq!(authorized, Some((*at, placed_by.clone())));
                        // Within seconds of the placement, well before the deadline.
                        assert!(*at > *placed_at && *at - *placed_at <= chrono::Duration::minutes(10));
                    }
                    SagaEvent::Confirmed(_) => {
                        assert_eq!(f.confirmed, Some((*at, placed_by.clone())), "confirmed by the saga");
                    }
                    SagaEvent::PaymentCaptured(c) => {
                        assert_eq!(c.amount, total);
                        let shipped_at = f.shipped.as_ref().map(|(at, _)| *at);
                        assert_eq!(shipped_at, Some(*at), "captured on shipment");
                        let captured = payment_at(|e| matches!(e, PaymentEvent::Captured(_)));
                        assert_eq!(captured, Some((*at, placed_by.clone())));
                    }
                    SagaEvent::PaymentVoided(_) => {
                        let voided = payment_at(|e| matches!(e, PaymentEvent::Voided(_)));
                        assert_eq!(voided, Some((*at, placed_by.clone())));
                    }
                    SagaEvent::Failed(failed) if failed.reason_code == "payment_declined" => {
                        let declined = payment_at(|e| matches!(e, PaymentEvent::Declined(_)));
                        assert_eq!(declined, Some((*at, placed_by.clone())));
                    }
                    SagaEvent::OrderCancelled(c) => {
                        let (moment, _, code) = f.cancelled.as_ref().expect("cancelled by its saga");
                        assert_eq!(moment, &(*at, placed_by.clone()));
                        assert_eq!(code, &c.reason_code);
                    }
                    _ => {}
                }
            }
            // Nothing for a saga driver to do: it waits for a shipment, or is completed.
            let view = OrderView {
                status: order.status,
                cancellation_reason: order.cancellation_reason.clone(),
            };
            assert_eq!(saga.next(&view, end), Next::Wait, "order {order_id}: {saga:?}");
            match order.status {
                OrderStatus::Confirmed => assert_eq!(saga.phase(), Phase::AwaitingShipment),
                OrderStatus::Shipped | OrderStatus::Delivered => {
                    assert_eq!(saga.outcome.as_deref(), Some("captured"));
                    assert_eq!(saga.captured_minor, total.amount_minor);
                }
                OrderStatus::Cancelled => {
                    assert_eq!(saga.outcome.as_deref(), Some("cancelled"));
                    let code = saga.failure.as_ref().expect("a cancelled saga failed").reason_code;
                    assert_eq!(order.cancellation_reason_code.as_deref(), Some(code.as_str()));
                    *codes.entry(code.as_str().to_owned()).or_default() += 1;
                }
                other => panic!("order {order_id} left {other}: no order stays pending"),
            }
        }

        // Payments: one per order whose saga asked for it, in the saga's flow.
        let mut payment_of: HashMap<Uuid, Uuid> = HashMap::new();
        let (mut full_refunds, mut partial_refunds) = (0_usize, 0_usize);
        for (payment_id, history) in &payment_events {
            let order_id = history[0].0.order_id();
            assert_eq!(*payment_id, saga::payment_id(order_id), "the saga's payment id");
            assert!(
                payment_of.insert(order_id, *payment_id).is_none(),
                "order {order_id} has two payments"
            );
            let f = facts.get(&order_id).expect("a payment for an order placed");
            let total = f.total.expect("placed");
            for (event, (at, _)) in history {
                assert_eq!(event.order_id(), order_id);
                match event {
                    PaymentEvent::Authorized(a) => assert_eq!(a.amount, total, "authorized the order's total"),
                    PaymentEvent::Declined(d) => {
                        let ((cancelled_at, _), reason, code) = f.cancelled.as_ref().expect("declined: cancelled");
                        assert_eq!(cancelled_at, at, "cancelled in the same action");
                        assert_eq!(
                            (reason.as_str(), code.as_str()),
                            (d.reason.as_str(), "payment_declined")
                        );
                    }
                    PaymentEvent::Captured(c) => assert_eq!(c.amount, total, "captured the order's total"),
                    PaymentEvent::Voided(v) => {
                        assert_eq!(v.amount, Some(total), "voided the authorization");
                        let ((cancelled_at, _), _, code) = f.cancelled.as_ref().expect("voided: cancelled");
                        assert_eq!(cancelled_at, at, "voided on cancellation");
                        assert_eq!(code, "requested");
                        assert_eq!(v.reason, "order cancelled: requested");
                    }
                    PaymentEvent::Refunded(r) => {
                        let (delivered_at, _) = f.delivered.as_ref().expect("refunded: delivered");
                        assert!(at > delivered_at);
                        assert!(r.amount.amount_minor > 0 && r.amount.currency == total.currency);
                        if r.amount == total {
                            full_refunds += 1;
                        } else {
                            partial_refunds += 1;
                        }
                    }
                }
            }
        }
        for (order_id, f) in &facts {
            let payment = payment_of.get(order_id).map(|id| &payments[id]);
            if f.confirmed.is_some() {
                assert!(
                    payment.is_some_and(|p| p.authorized_minor == f.total.expect("placed").amount_minor),
                    "order {order_id} confirmed without its payment authorized"
                );
            }
            if let Some((_, _, code)) = &f.cancelled {
                let status = payment.map(|p| p.status);
                let expected = match code.as_str() {
                    "requested" => Some(PaymentStatus::Voided),
                    "payment_declined" => Some(PaymentStatus::Declined),
                    // The saga stopped before the authorization.
                    "out_of_stock" => None,
                    other => panic!("order {order_id} cancelled for {other}"),
                };
                assert_eq!(status, expected, "cancelled order {order_id} ({code})");
            }
            if f.shipped.is_some() {
                let payment = payment.expect("a shipped order is paid");
                assert!(matches!(
                    payment.status,
                    PaymentStatus::Captured | PaymentStatus::Refunded
                ));
                assert_eq!(payment.captured_minor, f.total.expect("placed").amount_minor);
            }
        }
        let count = |status: PaymentStatus| payments.values().filter(|p| p.status == status).count() as u64;
        let (declined, voided) = (count(PaymentStatus::Declined), count(PaymentStatus::Voided));
        let captured = payment_events
            .values()
            .filter(|h| h.iter().any(|(e, _)| matches!(e, PaymentEvent::Captured(_))))
            .count() as u64;
        let refunded = payments.values().filter(|p| p.refunded_minor > 0).count() as u64;
        assert_eq!(payments.len() as u64, report.payments);
        assert_eq!(
            (declined, captured, voided, refunded),
            (report.declined, report.captured, report.voided, report.refunded),
        );
        let code = |name: &str| codes.get(name).copied().unwrap_or(0);
        eprintln!(
            "payments: {} for {placed} orders; {declined} declined, {captured} captured, {voided} voided, \
             {refunded} refunded ({full_refunds} in full, {partial_refunds} in part); cancelled: {codes:?}",
            payments.len()
        );

        // Stock is conserved (what came in is available or held by an order), and only orders
        // confirmed or beyond hold any: every line of theirs, nothing of a cancelled one.
        for (id, product) in &products {
            assert_eq!(product.available + product.reserved(), stocked[id], "product {id}");
            for (order_id, held) in &product.reservations {
                let order = &orders[order_id];
                assert!(
                    matches!(
                        order.status,
                        OrderStatus::Confirmed | OrderStatus::Shipped | OrderStatus::Delivered
                    ),
                    "order {order_id}, {}, holds stock of product {id}",
                    order.status
                );
                let line = order.lines.iter().find(|l| l.product_id == *id).map(|l| l.quantity);
                assert_eq!(line, Some(*held));
            }
        }
        for (order_id, order) in &orders {
            if matches!(
                order.status,
                OrderStatus::Confirmed | OrderStatus::Shipped | OrderStatus::Delivered
            ) {
                for line in &order.lines {
                    let held = products[&line.product_id].reservations.get(order_id);
                    assert_eq!(held, Some(&line.quantity), "order {order_id}: a line not reserved");
                }
            }
        }

        // A shop, not noise: the counts the report gives, and a bit of everything.
        assert_eq!(placed, report.orders);
        assert_eq!(cancelled, report.cancelled);
        assert_eq!(delivered, report.delivered);
        assert_eq!(customers.len() as u64, report.customers);
        assert_eq!(products.len() as u64, report.products);
        assert_eq!(codes.values().sum::<u64>(), cancelled);
        let cancelled_share = cancelled as f64 / placed as f64;
        assert!(
            (0.07..0.16).contains(&cancelled_share),
            "{cancelled} of {placed} cancelled ({codes:?})"
        );
        assert!(
            code("requested") > 0 && code("payment_declined") > 0 && code("out_of_stock") > 0,
            "{codes:?}"
        );
        // Payments: every order whose stock was reserved has one, a realistic mix.
        assert_eq!(payments.len() as u64, placed - code("out_of_stock"));
        let declined_share = declined as f64 / payments.len() as f64;
        assert!(
            (0.015..0.05).contains(&declined_share),
            "{declined} of {} declined",
            payments.len()
        );
        assert_eq!(code("payment_declined"), declined);
        assert_eq!(code("requested"), voided);
        assert!(captured as f64 > 0.7 * placed as f64, "{captured} of {placed} captured");
        let refund_share = refunded as f64 / delivered as f64;
        assert!(
            (0.01..0.08).contains(&refund_share),
            "{refunded} of {delivered} delivered refunded"
        );
        assert!(
            full_refunds > 3 && partial_refunds > 3,
            "{full_refunds} full, {partial_refunds} partial"
        );
        assert!(
            delivered as f64 > 0.6 * placed as f64,
            "{delivered} of {placed} delivered"
        );
        assert!(
            renames > 10 && email_changes > 10 && price_changes > 10 && restocks > 5,
            "{renames} renames, {email_changes} email changes, {price_changes} price changes, {restocks} restocks"
        );
        assert!(usd > 0 && usd < products.len() / 2);
        assert!(released.len() < reserved.len());
    }

    #[tokio::test]
    async fn each_service_gets_its_own_events_in_its_own_store() {
        let stores = [
            TempStore::new().await,
            TempStore::new().await,
            TempStore::new().await,
            TempStore::new().await,
        ];
        let logs: Vec<ServiceLog> = Service::ALL
            .into_iter()
            .zip(&stores)
            .map(|(service, temp)| ServiceLog::new(service, std::sync::Arc::new(temp.store.clone())))
            .collect();
        let report = seed(&logs, &options(4_000, 5), |_| {}).await.expect("seed");
        let mut total = 0;
        for (service, temp) in Service::ALL.into_iter().zip(&stores) {
            let events = temp.everything().await;
            assert!(!events.is_empty(), "the {service} store is empty");
            for e in &events {
                assert_eq!(Service::of_stream(&e.stream_id).expect("stream id"), service);
            }
            total += events.len() as u64;
        }
        assert_eq!(total, report.events);
        assert!(report.payments > 0 && report.captured > 0, "{report:?}");
    }

    #[tokio::test]
    async fn the_same_seed_gives_the_same_history() {
        let (a, b, c) = (TempStore::new().await, TempStore::new().await, TempStore::new().await);
        seed(&a.logs(), &options(3_000, 11), |_| {}).await.expect("seed a");
        seed(&b.logs(), &options(3_000, 11), |_| {}).await.expect("seed b");
        seed(&c.logs(), &options(3_000, 12), |_| {}).await.expect("seed c");
        let key = |e: RecordedEvent| (e.stream_id, e.stream_version, e.event_id, e.payload, e.occurred_at);
        let a: Vec<_> = a.everything().await.into_iter().map(key).collect();
        let b: Vec<_> = b.everything().await.into_iter().map(key).collect();
        let c: Vec<_> = c.everything().await.into_iter().map(key).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
