//! The sales analytics projection on its real sinks: ClickHouse (with its checkpoints in
//! PostgreSQL) and SQLite.
//!
//! A deterministic shop history (orders in two currencies over four days, some still pending,
//! some cancelled with or without a reason code, some delivered, a product renamed on the way,
//! and their payments: authorized, captured, partly or fully refunded, declined, voided, none)
//! is applied in batches; every query must equal the same question answered by folding the
//! events in Rust. Then the history is replayed, in whole and overlapping batches, after a crash
//! between the sink's write and the checkpoint: the answers must not move.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Duration, TimeZone, Utc};
use event_schemas::{
    Currency, CustomerSnapshot, DomainEvent, Money, OrderCancelled, OrderConfirmed, OrderDelivered, OrderEvent,
    OrderLine, OrderPlaced, OrderShipped, PaymentAuthorized, PaymentCaptured, PaymentDeclined, PaymentEvent,
    PaymentRefunded, PaymentVoided, Service,
};
use projections::analytics::{Bucket, Durations, Funnel, NAME, RevenueBucket, SalesAnalytics, TopProduct};
use projections::{Batch, Checkpoint, DeadLetter, Origin, ProjectedEvent, Projection, ReadDb};
use sqlx::Row;
use uuid::Uuid;

const VERSION: u32 = 1;

// ---------------------------------------------------------------------------------------------
// The shop's history and the answers folded from it.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Product {
    id: Uuid,
    sku: String,
    name: String,
    price_minor: i64,
}

#[derive(Debug, Clone)]
struct Order {
    id: Uuid,
    currency: Currency,
    lines: Vec<OrderLine>,
    total_minor: i64,
    placed_at: DateTime<Utc>,
    /// Later events with their times: confirmed, shipped, delivered or cancelled.
    then: Vec<(OrderEvent, DateTime<Utc>)>,
    /// Its payments, each a stream of the payments service's, with their times.
    payments: Vec<Vec<(PaymentEvent, DateTime<Utc>)>>,
}

/// A payment's status after its events: the last one's, a refund leaving it captured while
/// the refunds are less than the captures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PayStatus {
    Authorized,
    Captured,
    Refunded,
    Declined,
    Voided,
}

impl Order {
    fn cancelled(&self) -> bool {
        self.then.iter().any(|(e, _)| matches!(e, OrderEvent::Cancelled(_)))
    }

    /// The reason code of its first cancellation, if cancelled.
    fn reason_code(&self) -> Option<&str> {
        self.then.iter().find_map(|(e, _)| match e {
            OrderEvent::Cancelled(c) => Some(c.reason_code.as_str()),
            _ => None,
        })
    }

    /// Each payment's status, captured and refunded amounts.
    fn payment_states(&self) -> Vec<(PayStatus, i64, i64)> {
        self.payments
            .iter()
            .map(|events| {
                let (mut status, mut captured, mut refunded) = (PayStatus::Voided, 0, 0);
                for (event, _) in events {
                    match event {
                        PaymentEvent::Authorized(_) => status = PayStatus::Authorized,
                        PaymentEvent::Captured(e) => {
                            status = PayStatus::Captured;
                            captured += e.amount.amount_minor;
                        }
                        PaymentEvent::Refunded(e) => {
                            refunded += e.amount.amount_minor;
                            if refunded >= captured {
                                status = PayStatus::Refunded;
                            }
                        }
                        PaymentEvent::Declined(_) => status = PayStatus::Declined,
                        PaymentEvent::Voided(_) => status = PayStatus::Voided,
                    }
                }
                (status, captured, refunded)
            })
            .collect()
    }

    /// What the order counts in revenue: `None` unless it was confirmed, is not cancelled, and
    /// has a payment that is authorized or captured; then its total net of those payments'
    /// refunds.
    fn revenue(&self) -> Option<i64> {
        if self.reached("order.confirmed").is_none() || self.cancelled() {
            return None;
        }
        let live: Vec<(PayStatus, i64, i64)> = self
            .payment_states()
            .into_iter()
            .filter(|(status, _, _)| matches!(status, PayStatus::Authorized | PayStatus::Captured))
            .collect();
        if live.is_empty() {
            return None;
        }
        Some(self.total_minor - live.iter().map(|(_, _, refunded)| refunded).sum::<i64>())
    }

    fn reached(&self, event_type: &str) -> Option<DateTime<Utc>> {
        self.then
            .iter()
            .find(|(e, _)| e.event_type() == event_type)
            .map(|(_, at)| *at)
    }
}

/// A small deterministic generator (no dependency on `rand`).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % below
    }
}

fn base() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 3, 10, 0, 0, 0).unwrap()
}

struct History {
    orders: Vec<Order>,
    /// Every event in position order (positions from 1).
    events: Vec<ProjectedEvent>,
}

fn history() -> History {
    let mut rng = Lcg(42);
    let mut products: Vec<Product> = (0..6)
        .map(|i| Product {
            id: Uuid::from_u128(0x1000 + i),
            sku: format!("SKU-{i}"),
            name: format!("Product {i}"),
            price_minor: 199 + 250 * i64::try_from(i).unwrap(),
        })
        .collect();
    let mut orders = Vec::new();
    // 60 orders over ~4 days, at irregular times with microseconds.
    let mut at = base() + Duration::minutes(7);
    for i in 0..60u64 {
        at += Duration::minutes(40 + i64::try_from(rng.next(150)).unwrap())
            + Duration::microseconds(i64::try_from(rng.next(1_000_000)).unwrap());
        if i == 30 {
            // Product 2 is renamed: orders from now on capture the new name.
            products[2].name = "Product 2 (new)".to_owned();
            products[2].sku = "SKU-2B".to_owned();
        }
        let currency = if rng.next(3) == 0 { Currency::USD } else { Currency::EUR };
        let lines: Vec<OrderLine> = (0..1 + rng.next(3))
            .map(|_| {
                let product = &products[usize::try_from(rng.next(6)).unwrap()];
                OrderLine {
                    product_id: product.id,
                    sku: product.sku.clone(),
                    name: product.name.clone(),
                    quantity: 1 + i64::try_from(rng.next(4)).unwrap(),
                    unit_price_minor: product.price_minor,
                }
            })
            .collect();
        let total_minor = lines.iter().map(|l| l.quantity * l.unit_price_minor).sum();
        let id = Uuid::from_u128(0xA000 + u128::from(i));
        let mut then = Vec::new();
        let mut t = at;
        let fate = rng.next(10);
        let step = |t: &mut DateTime<Utc>, rng: &mut Lcg| {
            *t += Duration::seconds(60 + i64::try_from(rng.next(20_000)).unwrap())
                + Duration::microseconds(i64::try_from(rng.next(1_000_000)).unwrap());
            *t
        };
        if i % 9 == 4 {
            // Still pending: its saga has not confirmed it yet.
        } else if fate == 0 {
            then.push((
                OrderEvent::Cancelled(OrderCancelled {
                    order_id: id,
                    reason: "changed mind".to_owned(),
                    // Before the saga, cancellations had no code.
                    reason_code: if i % 3 == 0 {
                        String::new()
                    } else {
                        "requested".to_owned()
                    },
                }),
                step(&mut t, &mut rng),
            ));
        } else {
            then.push((
                OrderEvent::Confirmed(OrderConfirmed { order_id: id }),
                step(&mut t, &mut rng),
            ));
            if fate == 1 {
                let reason_code = if i % 2 == 0 { "out_of_stock" } else { "payment_declined" };
                then.push((
                    OrderEvent::Cancelled(OrderCancelled {
                        order_id: id,
                        reason: reason_code.replace('_', " "),
                        reason_code: reason_code.to_owned(),
                    }),
                    step(&mut t, &mut rng),
                ));
            } else if fate >= 3 {
                then.push((
                    OrderEvent::Shipped(OrderShipped {
                        order_id: id,
                        carrier: "DHL".to_owned(),
                        tracking: format!("T{i}"),
                    }),
                    step(&mut t, &mut rng),
                ));
                if fate >= 5 {
                    then.push((
                        OrderEvent::Delivered(OrderDelivered { order_id: id }),
                        step(&mut t, &mut rng),
                    ));
                }
            }
        }
        // Its payments, a few seconds after the placement (their own streams: they interleave
        // with the order's events).
        let mut pay_t = at;
        let mut pay = |rng: &mut Lcg| {
            pay_t += Duration::seconds(1 + i64::try_from(rng.next(30)).unwrap())
                + Duration::microseconds(i64::try_from(rng.next(1_000_000)).unwrap());
            pay_t
        };
        let money = Money::new(total_minor, currency);
        let part = Money::new(total_minor / 4, currency);
        let payment_id = |n: u128| Uuid::from_u128(0xB000 + u128::from(i) * 4 + n);
        let authorized = |n| {
            PaymentEvent::Authorized(PaymentAuthorized {
                payment_id: payment_id(n),
                order_id: id,
                amount: money,
            })
        };
        let captured = |n| {
            PaymentEvent::Captured(PaymentCaptured {
                payment_id: payment_id(n),
                order_id: id,
                amount: money,
            })
        };
        let refunded = |n, amount| {
            PaymentEvent::Refunded(PaymentRefunded {
                payment_id: payment_id(n),
                order_id: id,
                amount,
            })
        };
        let declined = |n| {
            PaymentEvent::Declined(PaymentDeclined {
                payment_id: payment_id(n),
                order_id: id,
                reason: "card expired".to_owned(),
            })
        };
        let voided = |n| {
            PaymentEvent::Voided(PaymentVoided {
                payment_id: payment_id(n),
                order_id: id,
                amount: Some(money),
                reason: "order cancelled".to_owned(),
            })
        };
        let streams: Vec<Vec<PaymentEvent>> = match i % 8 {
            0 => vec![],
            1 => vec![vec![authorized(0)]],
            2 => vec![vec![authorized(0), captured(0)]],
            3 => vec![vec![authorized(0), captured(0), refunded(0, part), refunded(0, part)]],
            4 => vec![vec![authorized(0), captured(0), refunded(0, money)]],
            5 => vec![vec![declined(0)]],
            6 => vec![vec![declined(0)], vec![authorized(1), captured(1), refunded(1, part)]],
            _ => vec![vec![authorized(0), voided(0)]],
        };
        let payments = streams
            .into_iter()
            .map(|events| events.into_iter().map(|e| (e, pay(&mut rng))).collect())
            .collect();
        orders.push(Order {
            id,
            currency,
            lines,
            total_minor,
            placed_at: at,
            then,
            payments,
        });
    }

    let mut timeline: Vec<(DateTime<Utc>, DomainEvent)> = Vec::new();
    for order in &orders {
        timeline.push((
            order.placed_at,
            DomainEvent::Order(OrderEvent::Placed(OrderPlaced {
                order_id: order.id,
                customer_id: Uuid::from_u128(7),
                customer: CustomerSnapshot {
                    name: "Ada".to_owned(),
                    email: "ada@example.com".to_owned(),
                },
                lines: order.lines.clone(),
                currency: order.currency,
                total_minor: order.total_minor,
            })),
        ));
        timeline.extend(order.then.iter().map(|(e, at)| (*at, DomainEvent::Order(e.clone()))));
        for payment in &order.payments {
            timeline.extend(payment.iter().map(|(e, at)| (*at, DomainEvent::Payment(e.clone()))));
        }
    }
    timeline.sort_by_key(|(at, _)| *at);
    // Positions count across the two services' logs (each log's positions increase, with
    // holes), stream versions per stream.
    let mut versions: HashMap<String, u64> = HashMap::new();
    let events = timeline
        .into_iter()
        .enumerate()
        .map(|(index, (at, event))| {
            let position = u64::try_from(index).unwrap() + 1;
            let stream_id = event.stream_id();
            let version = versions.entry(stream_id.clone()).or_default();
            *version += 1;
            ProjectedEvent {
                event_id: Uuid::from_u128(0xE000_0000 + u128::from(position)),
                stream_id,
                stream_version: *version,
                position,
                occurred_at: at,
                recorded_at: at,
                correlation_id: String::new(),
                origin: Origin::store(Service::owning(event.category()), position),
                event,
            }
        })
        .collect();
    History { orders, events }
}

fn us(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn expected_revenue(h: &History, from: DateTime<Utc>, to: DateTime<Utc>, bucket: Bucket) -> Vec<RevenueBucket> {
    let width = match bucket {
        Bucket::Hour => 3_600_000_000,
        Bucket::Day => 86_400_000_000,
    };
    let mut buckets: BTreeMap<(i64, String), (i64, u64)> = BTreeMap::new();
    for o in h.orders.iter().filter(|o| o.placed_at >= from && o.placed_at < to) {
        let Some(revenue) = o.revenue() else {
            continue;
        };
        let entry = buckets
            .entry((us(o.placed_at) / width * width, o.currency.as_str().to_owned()))
            .or_default();
        entry.0 += revenue;
        entry.1 += 1;
    }
    buckets
        .into_iter()
        .map(|((start, currency), (revenue_minor, orders))| RevenueBucket {
            bucket_start: DateTime::from_timestamp_micros(start).unwrap(),
            currency,
            revenue_minor,
            orders,
        })
        .collect()
}

fn expected_top(h: &History, from: DateTime<Utc>, to: DateTime<Utc>, limit: usize) -> Vec<TopProduct> {
    // (product, currency) -> its sales, and when it was last sold (whose sku and name it shows)
    let mut sold: BTreeMap<(String, String), (TopProduct, DateTime<Utc>)> = BTreeMap::new();
    for o in h
        .orders
        .iter()
        .filter(|o| o.placed_at >= from && o.placed_at < to && !o.cancelled())
    {
        for line in &o.lines {
            let (product, last_sold) = sold
                .entry((line.product_id.to_string(), o.currency.as_str().to_owned()))
                .or_insert_with(|| {
                    let product = TopProduct {
                        product_id: line.product_id.to_string(),
                        sku: line.sku.clone(),
                        name: line.name.clone(),
                        quantity: 0,
                        revenue_minor: 0,
                        currency: o.currency.as_str().to_owned(),
                    };
                    (product, o.placed_at)
                });
            product.quantity += line.quantity;
            product.revenue_minor += line.quantity * line.unit_price_minor;
            if o.placed_at >= *last_sold {
                *last_sold = o.placed_at;
                product.sku.clone_from(&line.sku);
                product.name.clone_from(&line.name);
            }
        }
    }
    let mut top: Vec<TopProduct> = sold.into_values().map(|(product, _)| product).collect();
    top.sort_by(|a, b| {
        b.quantity
            .cmp(&a.quantity)
            .then(b.revenue_minor.cmp(&a.revenue_minor))
            .then(a.product_id.cmp(&b.product_id))
            .then(a.currency.cmp(&b.currency))
    });
    top.truncate(limit);
    top
}

fn expected_funnel(h: &History, from: Option<DateTime<Utc>>, to: Option<DateTime<Utc>>) -> Funnel {
    let cohort: Vec<&Order> = h
        .orders
        .iter()
        .filter(|o| from.is_none_or(|f| o.placed_at >= f) && to.is_none_or(|t| o.placed_at < t))
        .collect();
    let count = |t: &str| cohort.iter().filter(|o| o.reached(t).is_some()).count() as u64;
    let placed = cohort.len() as u64;
    let delivered = count("order.delivered");
    let mut reasons: BTreeMap<String, u64> = projections::REASON_CODES
        .iter()
        .chain(&["unspecified"])
        .map(|code| ((*code).to_owned(), 0))
        .collect();
    for code in cohort.iter().filter_map(|o| o.reason_code()) {
        let code = if code.is_empty() { "unspecified" } else { code };
        *reasons.entry(code.to_owned()).or_default() += 1;
    }
    Funnel {
        placed,
        pending: cohort
            .iter()
            .filter(|o| o.reached("order.confirmed").is_none() && !o.cancelled())
            .count() as u64,
        confirmed: count("order.confirmed"),
        shipped: count("order.shipped"),
        delivered,
        cancelled: count("order.cancelled"),
        cancellation_reasons: reasons,
        placed_to_delivered_conversion: if placed == 0 {
            0.0
        } else {
            delivered as f64 / placed as f64
        },
    }
}

/// The documented percentile: the value at 0-based index ⌊p·n⌋ of the sorted durations.
fn expected_durations(h: &History, from: DateTime<Utc>, to: DateTime<Utc>) -> Durations {
    let mut durations: Vec<i64> = h
        .orders
        .iter()
        .filter_map(|o| o.reached("order.delivered").map(|d| (o, d)))
        .filter(|(_, d)| *d >= from && *d < to)
        .map(|(o, d)| us(d) - us(o.placed_at))
        .collect();
    durations.sort_unstable();
    let n = durations.len();
    if n == 0 {
        return Durations {
            count: 0,
            p50_seconds: None,
            p90_seconds: None,
        };
    }
    Durations {
        count: n as u64,
        p50_seconds: Some(durations[n / 2] as f64 / 1e6),
        p90_seconds: Some(durations[n * 9 / 10] as f64 / 1e6),
    }
}

// ---------------------------------------------------------------------------------------------
// The sinks under test.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sink {
    ClickHouse,
    Sqlite,
    /// The SQL sink on PostgreSQL: its SQL is written in the subset both databases accept.
    Postgres,
}

struct Harness {
    projection: SalesAnalytics,
    /// Where the checkpoints are: PostgreSQL for ClickHouse, the SQLite file itself otherwise.
    control: ReadDb,
    /// The ClickHouse database, for the ClickHouse sink.
    clickhouse_db: Option<String>,
    sink: Sink,
}

fn clickhouse_client(database: &str) -> clickhouse::Client {
    clickhouse::Client::default()
        .with_url(testkit::clickhouse::url())
        .with_database(database)
}

async fn postgres_control() -> ReadDb {
    let pg = testkit::postgres::fresh_database().await;
    let control = ReadDb::connect(&pg.url, 4).await.unwrap();
    control.migrate().await.unwrap();
    control
}

async fn harness(sink: Sink) -> Harness {
    let harness = match sink {
        Sink::ClickHouse => {
            let database = testkit::clickhouse::fresh_database().await;
            let control = postgres_control().await;
            Harness {
                projection: SalesAnalytics::clickhouse(clickhouse_client(&database), control.clone(), VERSION),
                control,
                clickhouse_db: Some(database),
                sink,
            }
        }
        Sink::Postgres => {
            let db = postgres_control().await;
            Harness {
                projection: SalesAnalytics::sqlite(db.clone(), VERSION),
                control: db,
                clickhouse_db: None,
                sink,
            }
        }
        Sink::Sqlite => {
            let path = std::env::temp_dir().join(format!("{}.db", testkit::unique_name("analytics")));
            let db = ReadDb::connect(&format!("sqlite://{}", path.display()), 4)
                .await
                .unwrap();
            db.migrate().await.unwrap();
            Harness {
                projection: SalesAnalytics::sqlite(db.clone(), VERSION),
                control: db,
                clickhouse_db: None,
                sink,
            }
        }
    };
    harness.projection.prepare().await.unwrap();
    // Twice: the DDL is idempotent.
    harness.projection.prepare().await.unwrap();
    if let Some(db) = &harness.clickhouse_db {
        // No background merges: a replayed insert's copies stay, as they may in production for
        // as long as the server pleases, and the queries must count each fact once regardless.
        for table in ["order_status", "order_lines", "cancellations", "payments"] {
            testkit::clickhouse::query(&format!("SYSTEM STOP MERGES {db}.{NAME}_v{VERSION}_{table}")).await;
        }
    }
    harness
}

impl Harness {
    /// Applies `events` in batches of `size`.
    async fn apply(&self, events: &[ProjectedEvent], size: usize) {
        for chunk in events.chunks(size) {
            let batch = Batch {
                events: chunk.to_vec(),
                dead_letters: Vec::new(),
                unknown: Vec::new(),
            };
            self.projection.apply(&batch).await.unwrap();
        }
    }

    /// Counts rows of one of the projection's tables whose `column` is empty (`FINAL` on
    /// ClickHouse).
    async fn count_where_empty(&self, table: &str, column: &str) -> u64 {
        let table = format!("{NAME}_v{VERSION}_{table}");
        match self.sink {
            Sink::ClickHouse => {
                let db = self.clickhouse_db.as_deref().unwrap();
                let answer =
                    testkit::clickhouse::query(&format!("SELECT count() FROM {db}.{table} FINAL WHERE {column} = ''"))
                        .await;
                answer.trim().parse().unwrap()
            }
            Sink::Sqlite | Sink::Postgres => {
                let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT COUNT(*) FROM {table} WHERE {column} = ''"
                )))
                .fetch_one(self.control.pool())
                .await
                .unwrap();
                u64::try_from(row.get::<i64, _>(0)).unwrap()
            }
        }
    }

    /// The names of the projection's tables that exist.
    async fn tables(&self) -> Vec<String> {
        let prefix = format!("{NAME}_v{VERSION}_");
        match self.sink {
            Sink::ClickHouse => {
                let db = self.clickhouse_db.as_deref().unwrap();
                testkit::clickhouse::query(&format!(
                    "SELECT name FROM system.tables WHERE database = '{db}' AND startsWith(name, '{prefix}') ORDER BY name"
                ))
                .await
                .lines()
                .map(str::to_owned)
                .collect()
            }
            Sink::Sqlite | Sink::Postgres => sqlx::query(sqlx::AssertSqlSafe(match self.sink {
                Sink::Postgres => format!(
                    "SELECT CAST(table_name AS TEXT) FROM information_schema.tables
                      WHERE table_schema = current_schema() AND table_name LIKE '{prefix}%' ORDER BY table_name"
                ),
                _ => format!(
                    "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE '{prefix}%' ORDER BY name"
                ),
            }))
            .fetch_all(self.control.pool())
            .await
            .unwrap()
            .into_iter()
            .map(|row| row.get::<String, _>(0))
            .collect(),
        }
    }

    /// Every query over a few ranges must equal the fold of the history.
    async fn assert_answers(&self, h: &History, context: &str) {
        let p = &self.projection;
        let all = (base() - Duration::days(1), base() + Duration::days(10));
        // A narrow range whose bounds are exact placement times: `from` is in, `to` is out.
        let narrow = (h.orders[10].placed_at, h.orders[25].placed_at);
        for (from, to) in [all, narrow] {
            for bucket in [Bucket::Hour, Bucket::Day] {
                assert_eq!(
                    p.revenue(from, to, bucket).await.unwrap(),
                    expected_revenue(h, from, to, bucket),
                    "{context}: revenue per {bucket:?} in [{from}, {to})"
                );
            }
            for limit in [3, 100] {
                assert_eq!(
                    p.top_products(from, to, limit).await.unwrap(),
                    expected_top(h, from, to, limit as usize),
                    "{context}: top {limit} products in [{from}, {to})"
                );
            }
            assert_eq!(
                p.order_funnel(Some(from), Some(to)).await.unwrap(),
                expected_funnel(h, Some(from), Some(to)),
                "{context}: funnel of [{from}, {to})"
            );
            assert_eq!(
                p.delivery_durations(from, to).await.unwrap(),
                expected_durations(h, from, to),
                "{context}: delivery durations in [{from}, {to})"
            );
        }
        assert_eq!(
            p.order_funnel(None, None).await.unwrap(),
            expected_funnel(h, None, None),
            "{context}: funnel of every order"
        );
        assert_eq!(
            p.order_funnel(Some(narrow.0), None).await.unwrap(),
            expected_funnel(h, Some(narrow.0), None),
            "{context}: funnel from a time on"
        );
        let empty = (base() + Duration::days(100), base() + Duration::days(101));
        assert_eq!(p.revenue(empty.0, empty.1, Bucket::Day).await.unwrap(), vec![]);
        assert_eq!(
            p.delivery_durations(empty.0, empty.1).await.unwrap(),
            expected_durations(h, empty.0, empty.1)
        );
    }

    /// The checkpoints are those of `applied`'s last event of each service's log.
    async fn assert_checkpoints_after(&self, applied: &[ProjectedEvent]) {
        let mut at: Vec<(String, i32, i64, u64)> = self
            .projection
            .checkpoints()
            .await
            .unwrap()
            .into_iter()
            .map(|c| (c.source, c.partition, c.offset, c.position))
            .collect();
        at.sort();
        let mut expected: BTreeMap<String, (String, i32, i64, u64)> = BTreeMap::new();
        for event in applied {
            expected.insert(
                event.origin.source.clone(),
                (event.origin.source.clone(), 0, event.origin.offset, event.position),
            );
        }
        assert_eq!(
            at,
            expected.into_values().collect::<Vec<_>>(),
            "one partition per service's log"
        );
    }
}

/// A sanity check of the history itself, so that the tests below exercise what they claim.
#[test]
fn the_history_has_every_case() {
    let h = history();
    let cancelled = h.orders.iter().filter(|o| o.cancelled()).count();
    let delivered = h
        .orders
        .iter()
        .filter(|o| o.reached("order.delivered").is_some())
        .count();
    let usd = h.orders.iter().filter(|o| o.currency == Currency::USD).count();
    assert!(
        cancelled >= 3 && delivered >= 10 && usd >= 5,
        "{cancelled} {delivered} {usd}"
    );
    // Revenue is not every order kept: some confirmed ones are not paid, some are refunded.
    let confirmed_kept: Vec<&Order> = h
        .orders
        .iter()
        .filter(|o| o.reached("order.confirmed").is_some() && !o.cancelled())
        .collect();
    let unpaid = confirmed_kept.iter().filter(|o| o.revenue().is_none()).count();
    let netted = confirmed_kept
        .iter()
        .filter(|o| o.revenue().is_some_and(|r| r < o.total_minor))
        .count();
    let pending = h
        .orders
        .iter()
        .filter(|o| o.reached("order.confirmed").is_none() && !o.cancelled())
        .count();
    let codes: Vec<&str> = h.orders.iter().filter_map(Order::reason_code).collect();
    assert!(
        unpaid >= 5 && netted >= 3 && pending >= 3,
        "{unpaid} unpaid, {netted} netted, {pending} pending"
    );
    for code in ["", "requested", "out_of_stock", "payment_declined"] {
        assert!(codes.contains(&code), "{code:?} in {codes:?}");
    }
    assert!(h.orders.last().unwrap().placed_at - h.orders[0].placed_at > Duration::days(2));
    let mut placed_days: Vec<i64> = h.orders.iter().map(|o| us(o.placed_at) / 86_400_000_000).collect();
    placed_days.dedup();
    assert!(placed_days.len() >= 3);
}

// ---------------------------------------------------------------------------------------------
// Scenarios, run on both sinks.
// ---------------------------------------------------------------------------------------------

async fn queries_equal_a_fold_of_the_events(sink: Sink) {
    let h = history();
    let harness = harness(sink).await;
    assert!(harness.projection.healthy().await);
    assert_eq!(harness.projection.checkpoints().await.unwrap(), vec![]);
    // Empty tables answer empty.
    assert_eq!(harness.projection.order_funnel(None, None).await.unwrap().placed, 0);
    assert_eq!(
        harness
            .projection
            .delivery_durations(base(), base() + Duration::days(9))
            .await
            .unwrap(),
        Durations {
            count: 0,
            p50_seconds: None,
            p90_seconds: None
        }
    );

    harness.apply(&h.events, 7).await;

    harness.assert_answers(&h, "applied once").await;
    harness.assert_checkpoints_after(&h.events).await;
    // Status rows carry the order's total even when the placement came in an earlier batch.
    assert_eq!(harness.count_where_empty("order_status", "currency").await, 0);
    assert_eq!(harness.count_where_empty("order_lines", "sku").await, 0);
}

async fn replays_never_double_count(sink: Sink) {
    let h = history();
    let harness = harness(sink).await;
    let (first, rest) = h.events.split_at(h.events.len() / 2);
    harness.apply(first, 10).await;
    harness.assert_checkpoints_after(first).await;

    // A crash between the sink's write and the checkpoint, for the next 15 events.
    let crashed = &rest[..15];
    let batch = Batch {
        events: crashed.to_vec(),
        dead_letters: vec![DeadLetter {
            origin: Origin::store(event_schemas::Service::Orders, 0),
            position: 0,
            event_type: String::new(),
            reason: "undecodable".to_owned(),
            payload: vec![1, 2, 3],
        }],
        unknown: Vec::new(),
    };
    match sink {
        Sink::ClickHouse => {
            // The same ClickHouse tables, but a control database without the control tables:
            // the rows are inserted, then storing the checkpoint fails.
            let unmigrated = testkit::postgres::fresh_database().await;
            let broken = ReadDb::connect(&unmigrated.url, 1).await.unwrap();
            let crashing = SalesAnalytics::clickhouse(
                clickhouse_client(harness.clickhouse_db.as_deref().unwrap()),
                broken,
                VERSION,
            );
            assert!(crashing.apply(&batch).await.is_err(), "the checkpoint cannot be stored");
        }
        Sink::Sqlite | Sink::Postgres => {
            // Storing the checkpoint fails inside the transaction: the rows must go with it.
            let create: &[&'static str] = if sink == Sink::Postgres {
                &[
                    "CREATE FUNCTION crash() RETURNS trigger LANGUAGE plpgsql
                     AS $$ BEGIN RAISE EXCEPTION 'simulated crash'; END $$",
                    "CREATE TRIGGER crash BEFORE INSERT ON projection_checkpoints
                     FOR EACH ROW EXECUTE FUNCTION crash()",
                ]
            } else {
                &["CREATE TRIGGER crash BEFORE INSERT ON projection_checkpoints
                   BEGIN SELECT RAISE(ABORT, 'simulated crash'); END"]
            };
            for statement in create {
                sqlx::query(*statement).execute(harness.control.pool()).await.unwrap();
            }
            assert!(
                harness.projection.apply(&batch).await.is_err(),
                "the checkpoint cannot be stored"
            );
            let drop = if sink == Sink::Postgres {
                "DROP TRIGGER crash ON projection_checkpoints"
            } else {
                "DROP TRIGGER crash"
            };
            sqlx::query(drop).execute(harness.control.pool()).await.unwrap();
            // Nothing of the failed batch is visible: the answers are those of `first`.
            let funnel = harness.projection.order_funnel(None, None).await.unwrap();
            let placed_in_first = first
                .iter()
                .filter(|e| matches!(e.event, DomainEvent::Order(OrderEvent::Placed(_))))
                .count() as u64;
            assert_eq!(funnel.placed, placed_in_first, "a rolled back batch left rows behind");
        }
    }
    harness.assert_checkpoints_after(first).await;
    assert_eq!(
        harness.control.dead_letters(NAME, VERSION).await.unwrap(),
        vec![],
        "the dead letters go with the checkpoint"
    );

    // The restart replays from the checkpoint, in batches of another size, and the runtime
    // re-delivers a little more than needed (an overlap of 5 already applied events).
    let overlap = &h.events[first.len() - 5..];
    harness.apply(overlap, 9).await;
    harness.assert_checkpoints_after(&h.events).await;
    harness
        .assert_answers(&h, "after a crash and an overlapping replay")
        .await;
    if let Some(db) = &harness.clickhouse_db {
        // The crashed batch's facts are now in the tables twice (merges are stopped): the
        // answers above were computed over those copies.
        let copies = testkit::clickhouse::query(&format!(
            "SELECT count() - uniqExact(order_id, status) FROM {db}.{NAME}_v{VERSION}_order_status"
        ))
        .await;
        assert!(
            copies.trim().parse::<u64>().unwrap() > 0,
            "the replay left no copies to count once"
        );
    }

    // The whole history again, in one batch, with the dead letter this time.
    harness
        .projection
        .apply(&Batch {
            events: h.events.clone(),
            dead_letters: batch.dead_letters.clone(),
            unknown: Vec::new(),
        })
        .await
        .unwrap();
    harness.assert_answers(&h, "after replaying everything").await;
    assert_eq!(harness.control.dead_letters(NAME, VERSION).await.unwrap().len(), 1);
    harness.assert_checkpoints_after(&h.events).await;
}

async fn drop_version_drops_the_tables(sink: Sink) {
    let h = history();
    let harness = harness(sink).await;
    assert_eq!(
        harness.tables().await,
        vec![
            format!("{NAME}_v{VERSION}_cancellations"),
            format!("{NAME}_v{VERSION}_order_lines"),
            format!("{NAME}_v{VERSION}_order_status"),
            format!("{NAME}_v{VERSION}_payments"),
        ]
    );
    harness.apply(&h.events[..20], 20).await;
    harness.projection.drop_version().await.unwrap();
    assert_eq!(harness.tables().await, Vec::<String>::new());
    assert!(harness.projection.order_funnel(None, None).await.is_err());
    // Dropping twice is harmless, and a version can be prepared again from scratch.
    harness.projection.drop_version().await.unwrap();
    harness.projection.prepare().await.unwrap();
    assert_eq!(harness.projection.order_funnel(None, None).await.unwrap().placed, 0);
}

/// A version made before the saga had neither `cancellations` nor `payments`: `prepare` adds
/// them and the queries answer at once. What it applied before has no facts there: its
/// cancellations count as `unspecified` (the reasons still add up to the cancellations), its
/// payments are unknown (those orders are not revenue) until a rebuild; what it applies after
/// counts in full.
async fn a_version_made_before_the_saga_gains_its_tables(sink: Sink) {
    let h = history();
    let harness = harness(sink).await;
    let (first, rest) = h.events.split_at(h.events.len() / 2);
    harness.apply(first, 10).await;
    // What the build before the saga left: no such tables (and so no facts of `first` there).
    let statements = [
        format!("DROP TABLE {NAME}_v{VERSION}_cancellations"),
        format!("DROP TABLE {NAME}_v{VERSION}_payments"),
    ];
    for statement in &statements {
        match &harness.clickhouse_db {
            Some(db) => {
                testkit::clickhouse::query(&statement.replace("DROP TABLE ", &format!("DROP TABLE {db}."))).await;
            }
            None => {
                sqlx::query(sqlx::AssertSqlSafe(statement.as_str()))
                    .execute(harness.control.pool())
                    .await
                    .unwrap();
            }
        }
    }
    assert!(
        harness.projection.order_funnel(None, None).await.is_err(),
        "the tables are missing"
    );
    harness.projection.prepare().await.unwrap();
    harness.apply(rest, 10).await;

    let funnel = harness.projection.order_funnel(None, None).await.unwrap();
    let expected = expected_funnel(&h, None, None);
    assert_eq!(
        (funnel.placed, funnel.pending, funnel.cancelled),
        (expected.placed, expected.pending, expected.cancelled)
    );
    assert_eq!(
        funnel.cancellation_reasons.values().sum::<u64>(),
        funnel.cancelled,
        "{funnel:?}"
    );
    let cancelled_before: u64 = first
        .iter()
        .filter(|e| matches!(e.event, DomainEvent::Order(OrderEvent::Cancelled(_))))
        .count() as u64;
    assert!(
        funnel.cancellation_reasons["unspecified"] >= cancelled_before,
        "the cancellations applied before the upgrade: {funnel:?}"
    );
    // Revenue counts only the orders whose payment events it saw (after the upgrade).
    let all = (base() - Duration::days(1), base() + Duration::days(10));
    let revenue: i64 = harness
        .projection
        .revenue(all.0, all.1, Bucket::Day)
        .await
        .unwrap()
        .iter()
        .map(|b| b.revenue_minor)
        .sum();
    let full: i64 = expected_revenue(&h, all.0, all.1, Bucket::Day)
        .iter()
        .map(|b| b.revenue_minor)
        .sum();
    assert!(revenue > 0 && revenue < full, "{revenue} of {full}");
}

#[tokio::test]
async fn clickhouse_version_made_before_the_saga_gains_its_tables() {
    a_version_made_before_the_saga_gains_its_tables(Sink::ClickHouse).await;
}

#[tokio::test]
async fn sqlite_version_made_before_the_saga_gains_its_tables() {
    a_version_made_before_the_saga_gains_its_tables(Sink::Sqlite).await;
}

#[tokio::test]
async fn postgres_version_made_before_the_saga_gains_its_tables() {
    a_version_made_before_the_saga_gains_its_tables(Sink::Postgres).await;
}

#[tokio::test]
async fn clickhouse_queries_equal_a_fold_of_the_events() {
    queries_equal_a_fold_of_the_events(Sink::ClickHouse).await;
}

#[tokio::test]
async fn sqlite_queries_equal_a_fold_of_the_events() {
    queries_equal_a_fold_of_the_events(Sink::Sqlite).await;
}

#[tokio::test]
async fn clickhouse_replays_never_double_count() {
    replays_never_double_count(Sink::ClickHouse).await;
}

#[tokio::test]
async fn sqlite_replays_never_double_count() {
    replays_never_double_count(Sink::Sqlite).await;
}

#[tokio::test]
async fn clickhouse_drop_version_drops_the_tables() {
    drop_version_drops_the_tables(Sink::ClickHouse).await;
}

#[tokio::test]
async fn sqlite_drop_version_drops_the_tables() {
    drop_version_drops_the_tables(Sink::Sqlite).await;
}

#[tokio::test]
async fn postgres_queries_equal_a_fold_of_the_events() {
    queries_equal_a_fold_of_the_events(Sink::Postgres).await;
}

#[tokio::test]
async fn postgres_replays_never_double_count() {
    replays_never_double_count(Sink::Postgres).await;
}

#[tokio::test]
async fn postgres_drop_version_drops_the_tables() {
    drop_version_drops_the_tables(Sink::Postgres).await;
}

#[tokio::test]
async fn clickhouse_is_unhealthy_when_its_server_is_unreachable() {
    let control = postgres_control().await;
    let down = clickhouse::Client::default().with_url("http://127.0.0.1:9");
    let projection = SalesAnalytics::clickhouse(down, control, VERSION);
    assert!(!projection.healthy().await);
    assert!(projection.prepare().await.is_err());
}

#[tokio::test]
async fn checkpoints_follow_each_source_partition() {
    let h = history();
    let harness = harness(Sink::Sqlite).await;
    // The same events as if read from two Kafka partitions.
    let events: Vec<ProjectedEvent> = h.events[..12]
        .iter()
        .enumerate()
        .map(|(i, e)| ProjectedEvent {
            origin: Origin {
                source: "orderflow.orders.v1".to_owned(),
                partition: i32::try_from(i % 2).unwrap(),
                offset: i64::try_from(i / 2).unwrap(),
            },
            ..e.clone()
        })
        .collect();
    harness.apply(&events, 12).await;
    let at: Vec<Checkpoint> = harness.projection.checkpoints().await.unwrap();
    assert_eq!(
        at.iter()
            .map(|c| (c.source.as_str(), c.partition, c.offset, c.position))
            .collect::<Vec<_>>(),
        vec![("orderflow.orders.v1", 0, 5, 11), ("orderflow.orders.v1", 1, 5, 12)]
    );
}
