//! The orders service and its place-order saga across services over real HTTP on loopback: the
//! customers, inventory and payments services each serve their own store on a socket of their
//! own; the orders service calls them through the service kit's client (timeouts, retries, a
//! circuit breaker per target), keeps its copy of customers and products in a database of its
//! own, and drives its sagas from its own store's log (ADR 0010).
//!
//! - Placing: a customer or product the copy has not seen is asked of its owner; an owner down
//!   is a 503 naming it with nothing appended; the copy's price is the order's.
//! - The saga: the happy path to the capture; out of stock on the second line; a declined
//!   payment; a provider slower than the client's timeout; payments down for 30 s then back;
//!   a cancellation while the saga runs; 32 orders for the last 10 units; a parked saga retried
//!   and another abandoned; two drivers side by side; every event read again, in another order.
//!
//! Every test ends with [`Shop::assert_at_rest`]: the invariant over all the services' stores
//! (no stock leaked or released twice, no authorization left open, no capture without a
//! shipment, every order confirmed or cancelled).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use event_schemas::Service;
use event_store::EventStore;
use projections::{ReadDb, RunOptions, ServiceLog};
use service_kit::client::{BreakerSettings, CallContext, ClientError, ClientSettings, ServiceClient, Target};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use write_side::domain::saga::Saga;
use write_side::domain::{
    CancelOrder, CustomerCommand, DomainError, Order, OrderCommand, OrderStatus, Payment, PaymentCommand,
    PaymentStatus, PlaceOrder, PlaceOrderLine, Product, ProductCommand,
};
use write_side::gateway::{GatewaySettings, SimulatedGateway};
use write_side::http::{Auth, HttpConfig, HttpState};
use write_side::orders::replica::{self, LiveReplica};
use write_side::orders::saga::{self as sagas, DriverOptions};
use write_side::orders::{Directory, Orders, OrdersError, Peers, SagaOptions};
use write_side::{CommandContext, CommandHandler, HandlerOptions, Services};

/// One service on a socket of its own, until stopped.
struct Served {
    address: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Served {
    async fn start(state: HttpState, address: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind(address).await.unwrap();
        let address = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn(write_side::http::serve_on(
            listener,
            write_side::http::router(state),
            Duration::from_secs(1),
            stop.clone().cancelled_owned(),
        ));
        Served { address, stop, task }
    }

    /// Stops serving: the port refuses connections afterwards.
    async fn stop(self) -> SocketAddr {
        self.stop.cancel();
        self.task.await.unwrap().unwrap();
        self.address
    }
}

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// A client of `name` at `address` that fails fast.
fn client(name: &str, address: SocketAddr) -> ServiceClient {
    let settings = ClientSettings {
        timeout: Duration::from_millis(500),
        retries: 1,
        breaker: BreakerSettings {
            failures: 3,
            open_for: Duration::from_millis(200),
            max_open_for: Duration::from_secs(1),
        },
        ..ClientSettings::new(name, Target::http(&format!("http://{address}")).unwrap())
    };
    ServiceClient::new(settings).unwrap()
}

/// One process of the orders service: its handler (cache included) over the shared orders
/// store, and its saga driver, running until the shop is dropped or [`Process::stop`].
struct Process {
    orders: Orders,
    stop: CancellationToken,
    driver: tokio::task::JoinHandle<()>,
}

impl Process {
    async fn stop(self) {
        self.stop.cancel();
        self.driver.await.unwrap();
    }
}

struct Shop {
    customers: CommandHandler,
    inventory: CommandHandler,
    payments: CommandHandler,
    orders_store: Arc<dyn EventStore>,
    gateway: SimulatedGateway,
    /// The orders service's first process (set once the other services listen).
    process: Option<Process>,
    customers_served: Option<Served>,
    inventory_served: Option<Served>,
    payments_served: Option<Served>,
    replica_db: ReadDb,
    logs: Vec<ServiceLog>,
    deadline: Duration,
    /// The processes' bound on sagas waiting for their driver.
    max_backlog: usize,
    /// Each product's stock as added.
    stock: HashMap<Uuid, i64>,
}

async fn store(name: &str) -> Arc<dyn EventStore> {
    Arc::new(testkit::sqlite::store(name).await)
}

fn ctx() -> CommandContext {
    CommandContext::default()
}

impl Shop {
    /// A shop whose sagas have `deadline`.
    async fn new(deadline: Duration) -> Shop {
        let (customers_store, inventory_store, payments_store, orders_store) = (
            store("saga_test_customers").await,
            store("saga_test_inventory").await,
            store("saga_test_payments").await,
            store("saga_test_orders").await,
        );
        let customers = CommandHandler::new(customers_store.clone(), HandlerOptions::default());
        let inventory = CommandHandler::new(inventory_store.clone(), HandlerOptions::default());
        let payments = CommandHandler::new(payments_store.clone(), HandlerOptions::default());
        let gateway = SimulatedGateway::default();
        let state = |service: Service, handler: &CommandHandler| {
            HttpState::new(
                Services::single(service, handler.clone()),
                HttpConfig::new(Auth::Disabled),
            )
            .with_simulated_gateway(gateway.clone())
        };
        let customers_served = Served::start(state(Service::Customers, &customers), any_port()).await;
        let inventory_served = Served::start(state(Service::Inventory, &inventory), any_port()).await;
        let payments_served = Served::start(state(Service::Payments, &payments), any_port()).await;
        let path = std::env::temp_dir().join(format!("{}.db", testkit::unique_name("saga_test_replica")));
        let replica_db = ReadDb::connect(&format!("sqlite://{}", path.display()), 2)
            .await
            .unwrap();
        replica_db.migrate().await.unwrap();
        let version = replica_db.ensure_live(replica::NAME, 1).await.unwrap();
        projections::Projection::prepare(&replica::Replica::new(replica_db.clone(), version))
            .await
            .unwrap();
        let mut shop = Shop {
            customers,
            inventory,
            payments,
            orders_store,
            gateway,
            process: None,
            customers_served: Some(customers_served),
            inventory_served: Some(inventory_served),
            payments_served: Some(payments_served),
            replica_db,
            logs: vec![
                ServiceLog::new(Service::Customers, customers_store),
                ServiceLog::new(Service::Inventory, inventory_store),
            ],
            deadline,
            max_backlog: write_side::orders::DEFAULT_MAX_SAGA_BACKLOG,
            stock: HashMap::new(),
        };
        shop.process = Some(shop.start_process());
        shop
    }

    fn address(served: &Option<Served>, fallback: SocketAddr) -> SocketAddr {
        served.as_ref().map_or(fallback, |s| s.address)
    }

    /// Another process of the orders service over the same store, its driver running.
    fn start_process(&self) -> Process {
        let down: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let peers = Peers {
            customers: client("customers", Self::address(&self.customers_served, down)),
            inventory: client("inventory", Self::address(&self.inventory_served, down)),
            payments: client("payments", Self::address(&self.payments_served, down)),
        };
        let directory = Directory::new(
            LiveReplica::new(self.replica_db.clone()),
            peers.customers.clone(),
            peers.inventory.clone(),
        );
        let options = SagaOptions {
            deadline: self.deadline,
            driver: DriverOptions {
                retry_base: Duration::from_millis(50),
                retry_max: Duration::from_millis(500),
                ..DriverOptions::default()
            },
            max_backlog: self.max_backlog,
        };
        let handler = CommandHandler::new(self.orders_store.clone(), HandlerOptions::default());
        let (orders, driver) = Orders::new(handler, directory, peers, options);
        let stop = CancellationToken::new();
        let driver = tokio::spawn(driver.run(stop.clone()));
        Process { orders, stop, driver }
    }

    fn orders(&self) -> &Orders {
        &self.process.as_ref().expect("started in Shop::new").orders
    }

    async fn customer(&self, name: &str) -> Uuid {
        let id = Uuid::now_v7();
        let register = CustomerCommand::Register {
            customer_id: id,
            name: name.into(),
            email: "someone@example.com".into(),
        };
        self.customers.customer(&ctx(), id, register).await.unwrap();
        id
    }

    async fn product(&mut self, price_minor: i64, stock: i64) -> Uuid {
        let id = Uuid::now_v7();
        let add = ProductCommand::Add {
            product_id: id,
            sku: format!("SKU-{}", &id.simple().to_string()[24..]),
            name: "Teapot".into(),
            price_minor,
            currency: "EUR".into(),
            stock,
        };
        self.inventory.product(&ctx(), id, add).await.unwrap();
        self.stock.insert(id, stock);
        id
    }

    async fn place_with(
        &self,
        orders: &Orders,
        customer_id: Uuid,
        lines: &[(Uuid, i64)],
    ) -> (Uuid, Result<write_side::CommandAnswer, OrdersError>) {
        let order_id = Uuid::now_v7();
        let command = PlaceOrder {
            order_id,
            customer_id,
            lines: lines
                .iter()
                .map(|&(product_id, quantity)| PlaceOrderLine { product_id, quantity })
                .collect(),
        };
        let placed = orders.place(&ctx(), &CallContext::new("test", "test"), command).await;
        (order_id, placed)
    }

    async fn place(
        &self,
        customer_id: Uuid,
        lines: &[(Uuid, i64)],
    ) -> (Uuid, Result<write_side::CommandAnswer, OrdersError>) {
        self.place_with(self.orders(), customer_id, lines).await
    }

    async fn placed(&self, customer_id: Uuid, lines: &[(Uuid, i64)]) -> Uuid {
        let (order, placed) = self.place(customer_id, lines).await;
        placed.expect("placed");
        order
    }

    /// Runs the copy until it has every customer and product so far, then stops it.
    async fn catch_up_the_copy(&self) {
        let stop = CancellationToken::new();
        let runner = tokio::spawn(projections::run_from_stores(
            self.logs.clone(),
            self.replica_db.clone(),
            replica::factory(self.replica_db.clone()),
            RunOptions::default(),
            stop.clone(),
        ));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let progress = self.replica_db.progress(replica::NAME, 1).await.unwrap();
            let mut caught_up = true;
            for log in &self.logs {
                caught_up &=
                    projections::applied_position(&progress, log.service) >= log.store.head_position().await.unwrap();
            }
            if caught_up {
                break;
            }
            assert!(Instant::now() < deadline, "the copy did not catch up within 30 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop.cancel();
        runner.await.unwrap().unwrap();
    }

    async fn order(&self, id: Uuid) -> Order {
        self.orders().handler().load::<Order>(id, None).await.unwrap().state
    }

    async fn saga(&self, id: Uuid) -> Saga {
        self.orders().handler().load::<Saga>(id, None).await.unwrap().state
    }

    async fn payment(&self, order_id: Uuid) -> Payment {
        self.payments
            .load::<Payment>(sagas::payment_id(order_id), None)
            .await
            .unwrap()
            .state
    }

    /// (available, reserved) of a product.
    async fn stock_of(&self, product: Uuid) -> (i64, i64) {
        let p: Product = self.inventory.load::<Product>(product, None).await.unwrap().state;
        (p.available, p.reserved())
    }

    /// Waits until `order`'s saga is completed (`settled`: or waiting for the shipment), at most
    /// `within`.
    async fn settled(&self, order: Uuid, within: Duration) -> Saga {
        let deadline = Instant::now() + within;
        loop {
            let saga = self.saga(order).await;
            if saga.outcome.is_some() || (saga.confirmed && saga.failure.is_none()) || saga.parked.is_some() {
                return saga;
            }
            assert!(
                Instant::now() < deadline,
                "the saga of {order} did not settle within {within:?}: {saga:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `order`'s saga is completed (captured or cancelled).
    async fn completed(&self, order: Uuid) {
        eventually(async || {
            let saga = self.saga(order).await;
            saga.outcome
                .is_some()
                .then_some(())
                .ok_or(format!("not completed: {saga:?}"))
        })
        .await;
    }

    async fn ship(&self, order: Uuid) {
        let ship = OrderCommand::Ship {
            order_id: order,
            carrier: "DHL".into(),
            tracking: "JD0001".into(),
        };
        self.orders().change(&ctx(), order, ship).await.unwrap();
    }

    /// Every order of the orders store.
    async fn order_ids(&self) -> Vec<Uuid> {
        let mut ids = Vec::new();
        let mut after = 0;
        loop {
            let events = self.orders_store.read_all(after, 1000).await.unwrap();
            let Some(last) = events.last() else { break };
            after = last.position;
            for e in &events {
                if e.event_type == "order.placed" {
                    ids.push(event_schemas::parse_stream_id(&e.stream_id).unwrap().1);
                }
            }
        }
        ids
    }

    /// The invariant over every service's store once every saga has settled: each order is
    /// confirmed (or later) holding its lines' stock and an authorized (or, shipped, captured)
    /// payment of its total; or cancelled, holding no stock, its payment never captured
    /// without a refund and never left authorized; each product's stock is what was added,
    /// split between what is available and what the live orders hold.
    async fn assert_at_rest(&self) {
        let mut held: HashMap<Uuid, i64> = HashMap::new();
        for order_id in self.order_ids().await {
            let order = self.order(order_id).await;
            let saga = self.saga(order_id).await;
            let payment = self.payment(order_id).await;
            assert!(saga.exists(), "order {order_id} has no saga");
            assert!(saga.parked.is_none(), "order {order_id}: saga parked: {saga:?}");
            match order.status {
                OrderStatus::Confirmed | OrderStatus::Shipped | OrderStatus::Delivered => {
                    let shipped = order.status != OrderStatus::Confirmed;
                    let expected = if shipped {
                        PaymentStatus::Captured
                    } else {
                        PaymentStatus::Authorized
                    };
                    assert_eq!(payment.status, expected, "order {order_id} {:?}", order.status);
                    let total = order.total().unwrap().amount_minor;
                    assert_eq!(
                        payment.authorized_minor, total,
                        "order {order_id}: authorized its total"
                    );
                    if shipped {
                        assert_eq!(payment.captured_minor, total, "order {order_id}: captured its total");
                        assert_eq!(saga.outcome.as_deref(), Some("captured"), "order {order_id}");
                    }
                    for line in &order.lines {
                        let product = self
                            .inventory
                            .load::<Product>(line.product_id, None)
                            .await
                            .unwrap()
                            .state;
                        assert_eq!(
                            product.reserved_for(order_id),
                            line.quantity,
                            "order {order_id} holds its line of {}",
                            line.product_id
                        );
                        *held.entry(line.product_id).or_default() += line.quantity;
                    }
                }
                OrderStatus::Cancelled => {
                    assert!(
                        matches!(
                            payment.status,
                            PaymentStatus::NotStarted
                                | PaymentStatus::Voided
                                | PaymentStatus::Declined
                                | PaymentStatus::Refunded
                        ),
                        "cancelled order {order_id}: payment {:?}",
                        payment.status
                    );
                    assert_eq!(
                        payment.refunded_minor, payment.captured_minor,
                        "order {order_id}: refund = capture"
                    );
                    assert_eq!(saga.outcome.as_deref(), Some("cancelled"), "order {order_id}");
                    assert!(
                        order.cancellation_reason_code.is_some(),
                        "order {order_id}: no reason code"
                    );
                    for line in &order.lines {
                        let product = self
                            .inventory
                            .load::<Product>(line.product_id, None)
                            .await
                            .unwrap()
                            .state;
                        assert_eq!(
                            product.reserved_for(order_id),
                            0,
                            "cancelled order {order_id} holds stock"
                        );
                    }
                }
                other => panic!("order {order_id} is {other:?} at rest: {saga:?}"),
            }
        }
        for (&product, &stock) in &self.stock {
            let (available, reserved) = self.stock_of(product).await;
            assert_eq!(
                reserved,
                held.get(&product).copied().unwrap_or(0),
                "product {product}: reserved"
            );
            assert_eq!(
                available + reserved,
                stock,
                "product {product}: stock leaked or released twice"
            );
        }
    }
}

const SETTLE: Duration = Duration::from_secs(20);

/// Asks `check` every 20 ms until it answers `Ok`; fails with its last answer after [`SETTLE`].
async fn eventually(check: impl AsyncFn() -> Result<(), String>) {
    let deadline = Instant::now() + SETTLE;
    loop {
        let answer = check().await;
        match answer {
            Ok(()) => return,
            Err(last) => assert!(Instant::now() < deadline, "not within {SETTLE:?}: {last}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
const LONG: Duration = Duration::from_secs(600);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_the_copy_has_not_seen_is_asked_of_the_customers_service() {
    let mut shop = Shop::new(LONG).await;
    let teapot = shop.product(2_500, 10).await;

    // Registered a moment ago: the copy has not seen it (its runner is not even running).
    let ada = shop.customer("Ada").await;
    let order = shop.placed(ada, &[(teapot, 2)]).await;
    assert_eq!(shop.order(order).await.customer.map(|c| c.name).as_deref(), Some("Ada"));
    assert!(shop.settled(order, SETTLE).await.confirmed);

    // Unknown to the copy and to its owner: 404, nothing appended.
    let head = shop.orders_store.head_position().await.unwrap();
    let (_, unknown) = shop.place(Uuid::now_v7(), &[(teapot, 1)]).await;
    assert!(
        matches!(
            unknown,
            Err(OrdersError::Rejected(DomainError::NotFound { what: "customer", .. }))
        ),
        "{unknown:?}"
    );
    // An unknown product: 404 product, asked of inventory.
    let (_, unknown) = shop.place(ada, &[(Uuid::now_v7(), 1)]).await;
    assert!(
        matches!(
            unknown,
            Err(OrdersError::Rejected(DomainError::NotFound { what: "product", .. }))
        ),
        "{unknown:?}"
    );
    assert_eq!(
        shop.orders_store.head_position().await.unwrap(),
        head,
        "nothing appended"
    );

    // The customers service down, the customer not in the copy: 503 naming it; nothing
    // appended.
    let grace = shop.customer("Grace").await;
    let head = shop.orders_store.head_position().await.unwrap();
    shop.customers_served.take().unwrap().stop().await;
    let (_, down) = shop.place(grace, &[(teapot, 1)]).await;
    match down {
        Err(OrdersError::Dependency(
            ClientError::Unavailable { ref service, .. } | ClientError::CircuitOpen { ref service, .. },
        )) => {
            assert_eq!(service, "customers");
        }
        other => panic!("expected the customers service unavailable: {other:?}"),
    }
    assert_eq!(
        shop.orders_store.head_position().await.unwrap(),
        head,
        "nothing appended"
    );

    // Once the copy has the customer, orders go on while the customers service stays down.
    shop.catch_up_the_copy().await;
    let second = shop.placed(grace, &[(teapot, 1)]).await;
    assert!(shop.settled(second, SETTLE).await.confirmed);
    assert_eq!(shop.stock_of(teapot).await, (7, 3));
    shop.assert_at_rest().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_happy_path_reserves_authorizes_confirms_then_captures_when_shipped() {
    let mut shop = Shop::new(LONG).await;
    let ada = shop.customer("Ada").await;
    let (teapot, cup) = (shop.product(2_500, 10).await, shop.product(800, 5).await);
    shop.catch_up_the_copy().await;
    // A price changed after the copy saw it: the order shows, and the customer pays, the
    // price of the copy (ADR 0010).
    let change = ProductCommand::ChangePrice {
        product_id: teapot,
        price_minor: 3_000,
    };
    shop.inventory.product(&ctx(), teapot, change).await.unwrap();

    let order = shop.placed(ada, &[(teapot, 2), (cup, 3)]).await;
    // Answered before the saga ran far: the order exists, pending or further along.
    let saga = shop.settled(order, SETTLE).await;
    assert!(saga.confirmed && saga.authorized, "{saga:?}");
    let placed = shop.order(order).await;
    assert_eq!(placed.status, OrderStatus::Confirmed);
    assert_eq!(placed.total_minor, 2 * 2_500 + 3 * 800);
    let payment = shop.payment(order).await;
    assert_eq!(
        (payment.status, payment.authorized_minor, payment.order_id),
        (PaymentStatus::Authorized, 7_400, order)
    );
    assert_eq!(shop.stock_of(teapot).await, (8, 2));
    assert_eq!(shop.stock_of(cup).await, (2, 3));
    // Every event of the saga carries the placing request's correlation id.
    let events = shop
        .orders_store
        .read_stream(&format!("saga-{order}"), 1, 100)
        .await
        .unwrap();
    assert!(
        events
            .iter()
            .all(|e| e.metadata.correlation_id == events[0].metadata.correlation_id)
    );

    // A client cannot confirm: the saga does. Over HTTP it is 409 `confirmed_by_saga` (see
    // tests/http.rs); the saga's view says where it is.
    let view = shop.orders().saga(order).await.unwrap();
    assert_eq!(view.phase, "awaiting_shipment");

    shop.ship(order).await;
    shop.completed(order).await;
    let payment = shop.payment(order).await;
    assert_eq!(
        (payment.status, payment.captured_minor),
        (PaymentStatus::Captured, 7_400)
    );
    shop.assert_at_rest().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_stock_on_the_second_line_releases_the_first_and_declined_releases_all() {
    let mut shop = Shop::new(LONG).await;
    let ada = shop.customer("Ada").await;
    let (teapot, cup) = (shop.product(2_500, 10).await, shop.product(800, 1).await);

    // The second line is beyond the stock: the first line's reservation is released, the
    // order cancelled `out_of_stock`, and payments never asked.
    let order = shop.placed(ada, &[(teapot, 2), (cup, 5)]).await;
    let saga = shop.settled(order, SETTLE).await;
    assert_eq!(saga.outcome.as_deref(), Some("cancelled"));
    let cancelled = shop.order(order).await;
    assert_eq!(cancelled.status, OrderStatus::Cancelled);
    assert_eq!(cancelled.cancellation_reason_code.as_deref(), Some("out_of_stock"));
    assert_eq!(shop.stock_of(teapot).await, (10, 0));
    assert_eq!(shop.stock_of(cup).await, (1, 0));
    assert_eq!(shop.payment(order).await.status, PaymentStatus::NotStarted);

    // The provider declines: every line's stock released, nothing to void.
    shop.gateway.set(GatewaySettings {
        decline_rate: 1.0,
        ..GatewaySettings::default()
    });
    let order = shop.placed(ada, &[(teapot, 2), (cup, 1)]).await;
    shop.settled(order, SETTLE).await;
    let declined = shop.order(order).await;
    assert_eq!(declined.cancellation_reason_code.as_deref(), Some("payment_declined"));
    let payment = shop.payment(order).await;
    assert_eq!(payment.status, PaymentStatus::Declined);
    assert!(payment.decline_reason.is_some());
    assert_eq!(shop.stock_of(teapot).await, (10, 0));
    assert_eq!(shop.stock_of(cup).await, (1, 0));
    shop.assert_at_rest().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_its_saga_backlog_the_orders_service_refuses_new_orders_and_takes_them_again_after() {
    let mut shop = Shop::new(LONG).await;
    let ada = shop.customer("Ada").await;
    let teapot = shop.product(2_500, 100).await;
    shop.catch_up_the_copy().await;
    // A process whose driver takes at most 4 sagas' worth of waiting work, over a provider that
    // takes 400 ms per call (under the client's timeout: the sagas stay at work, not retrying).
    shop.max_backlog = 4;
    let process = shop.start_process();
    shop.gateway.set(GatewaySettings {
        latency_ms: 400,
        ..GatewaySettings::default()
    });
    let (mut admitted, mut refused) = (Vec::new(), Vec::new());
    for _ in 0..12 {
        match shop.place_with(&process.orders, ada, &[(teapot, 1)]).await {
            (order, Ok(_)) => admitted.push(order),
            (order, Err(OrdersError::Overloaded { backlog, max })) => {
                assert_eq!(max, 4);
                assert!(backlog >= 4, "refused at a backlog of {backlog}");
                refused.push(order);
            }
            (order, Err(e)) => panic!("{order}: {e}"),
        }
    }
    assert!(
        !refused.is_empty(),
        "12 orders placed at once past a backlog of 4: none refused"
    );
    assert!(admitted.len() >= 4, "only {} admitted", admitted.len());
    for order in &refused {
        let loaded = process.orders.handler().load::<Order>(*order, None).await.unwrap();
        assert_eq!(loaded.version, 0, "a refused order {order} was appended");
    }
    let error = service_kit::http::HttpError::into_api_error(OrdersError::Overloaded { backlog: 4, max: 4 });
    assert_eq!((error.status().as_u16(), error.code()), (503, "overloaded"));

    // Once the sagas are done, orders are taken again.
    shop.gateway.set(GatewaySettings::default());
    for order in &admitted {
        let saga = shop.settled(*order, SETTLE).await;
        assert!(saga.confirmed, "{saga:?}");
    }
    let (order, placed) = shop.place_with(&process.orders, ada, &[(teapot, 1)]).await;
    placed.unwrap_or_else(|e| panic!("{order} after the backlog drained: {e}"));
    process.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_slower_than_the_timeout_ends_in_payment_unavailable_at_the_deadline_and_voided() {
    let mut shop = Shop::new(Duration::from_secs(3)).await;
    let ada = shop.customer("Ada").await;
    let teapot = shop.product(2_500, 10).await;
    // Every authorization takes longer than the client waits (500 ms).
    shop.gateway.set(GatewaySettings {
        latency_ms: 1_500,
        ..GatewaySettings::default()
    });
    let order = shop.placed(ada, &[(teapot, 2)]).await;
    let saga = shop.settled(order, SETTLE).await;
    assert_eq!(saga.outcome.as_deref(), Some("cancelled"), "{saga:?}");
    let cancelled = shop.order(order).await;
    assert_eq!(
        cancelled.cancellation_reason_code.as_deref(),
        Some("payment_unavailable")
    );
    // The void went with the authorize step's payment id: whatever the provider did with the
    // slow authorizations, the payment ends voided (or was never recorded).
    shop.gateway.set(GatewaySettings::default());
    eventually(async || {
        let status = shop.payment(order).await.status;
        matches!(status, PaymentStatus::Voided | PaymentStatus::NotStarted)
            .then_some(())
            .ok_or(format!("payment left {status:?}"))
    })
    .await;
    assert_eq!(shop.stock_of(teapot).await, (10, 0));
    // A late authorization (the provider answered after all) is voided as soon as it comes.
    let late = PaymentCommand::Authorize {
        payment_id: sagas::payment_id(order),
        order_id: order,
        amount_minor: 5_000,
        currency: "EUR".into(),
    };
    if shop.payment(order).await.status == PaymentStatus::Voided && shop.payment(order).await.authorized_minor == 0 {
        shop.payments
            .payment(&ctx(), sagas::payment_id(order), late)
            .await
            .unwrap();
        assert_eq!(shop.payment(order).await.status, PaymentStatus::Voided);
    }
    shop.assert_at_rest().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_wait_pending_while_payments_is_down_for_30_s_and_complete_when_it_returns() {
    let mut shop = Shop::new(LONG).await;
    let ada = shop.customer("Ada").await;
    let teapot = shop.product(1_000, 100).await;
    let payments_at = shop.payments_served.take().unwrap().stop().await;
    let down_since = Instant::now();

    // Accepted while payments is down: pending, stock reserved, waiting.
    let mut orders = Vec::new();
    for _ in 0..5 {
        orders.push(shop.placed(ada, &[(teapot, 1)]).await);
    }
    eventually(async || {
        let stock = shop.stock_of(teapot).await;
        (stock == (95, 5))
            .then_some(())
            .ok_or(format!("stock not reserved: {stock:?}"))
    })
    .await;
    let breakers = shop.orders().services(&CallContext::new("test", "test")).await;
    let payments = breakers.iter().find(|s| s.service == "payments").unwrap();
    assert!(!payments.healthy, "{breakers:?}");
    tokio::time::sleep_until((down_since + Duration::from_secs(30)).into()).await;
    for &order in &orders {
        let saga = shop.saga(order).await;
        assert_eq!(shop.order(order).await.status, OrderStatus::Pending);
        assert!(!saga.authorized && saga.failure.is_none(), "{saga:?}");
    }

    // Back on the same address: every waiting order completes.
    let state = HttpState::new(
        Services::single(Service::Payments, shop.payments.clone()),
        HttpConfig::new(Auth::Disabled),
    )
    .with_simulated_gateway(shop.gateway.clone());
    shop.payments_served = Some(Served::start(state, payments_at).await);
    for &order in &orders {
        let saga = shop.settled(order, SETTLE).await;
        assert!(saga.confirmed, "{saga:?}");
    }
    shop.assert_at_rest().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancellation_while_the_saga_runs_compensates_whatever_it_had_done() {
    let mut shop = Shop::new(LONG).await;
    let ada = shop.customer("Ada").await;
    let teapot = shop.product(1_000, 10).await;
    shop.gateway.set(GatewaySettings {
        latency_ms: 300,
        ..GatewaySettings::default()
    });
    let order = shop.placed(ada, &[(teapot, 3)]).await;
    // Cancelled while it reserves or authorizes.
    let cancel = CancelOrder {
        order_id: order,
        reason: "changed my mind".into(),
        reason_code: Some("requested".into()),
    };
    shop.orders()
        .cancel(&ctx(), &CallContext::new("test", "test"), cancel)
        .await
        .unwrap();
    let saga = shop.settled(order, SETTLE).await;
    assert_eq!(saga.outcome.as_deref(), Some("cancelled"), "{saga:?}");
    assert_eq!(
        shop.order(order).await.cancellation_reason_code.as_deref(),
        Some("requested")
    );

    // Cancelled once confirmed: the authorization is voided, the stock released.
    let order = shop.placed(ada, &[(teapot, 2)]).await;
    assert!(shop.settled(order, SETTLE).await.confirmed);
    let cancel = CancelOrder {
        order_id: order,
        reason: "too late".into(),
        reason_code: Some("requested".into()),
    };
    shop.orders()
        .cancel(&ctx(), &CallContext::new("test", "test"), cancel)
        .await
        .unwrap();
    shop.completed(order).await;
    assert_eq!(shop.payment(order).await.status, PaymentStatus::Voided);
    assert_eq!(shop.stock_of(teapot).await, (10, 0));
    shop.assert_at_rest().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_orders_for_the_last_ten_units_confirm_exactly_ten() {
    let mut shop = Shop::new(LONG).await;
    let ada = shop.customer("Ada").await;
    let teapot = shop.product(1_000, 10).await;
    let line = [(teapot, 1)];
    let placed = futures::future::join_all((0..32).map(|_| shop.place(ada, &line))).await;
    let mut orders = Vec::new();
    for (order, answer) in placed {
        answer.unwrap();
        orders.push(order);
    }
    let mut confirmed = 0;
    for &order in &orders {
        let saga = shop.settled(order, SETTLE).await;
        if saga.confirmed {
            confirmed += 1;
        } else {
            assert_eq!(
                shop.order(order).await.cancellation_reason_code.as_deref(),
                Some("out_of_stock")
            );
        }
    }
    assert_eq!(confirmed, 10);
    assert_eq!(shop.stock_of(teapot).await, (0, 10));
    shop.assert_at_rest().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_saga_is_retried_by_an_operator_and_another_abandoned() {
    let mut shop = Shop::new(LONG).await;
    let ada = shop.customer("Ada").await;
    let teapot = shop.product(1_000, 10).await;
    // Someone else holds another quantity for these order ids at inventory: the reservation
    // answers 409 `rejected`, which the saga cannot act on. It parks.
    let (retried, abandoned) = (Uuid::now_v7(), Uuid::now_v7());
    for order in [retried, abandoned] {
        let hold = ProductCommand::ReserveStock {
            product_id: teapot,
            order_id: order,
            quantity: 1,
        };
        shop.inventory.product(&ctx(), teapot, hold).await.unwrap();
    }
    for order in [retried, abandoned] {
        let command = PlaceOrder {
            order_id: order,
            customer_id: ada,
            lines: vec![PlaceOrderLine {
                product_id: teapot,
                quantity: 2,
            }],
        };
        shop.orders()
            .place(&ctx(), &CallContext::new("test", "test"), command)
            .await
            .unwrap();
    }
    for order in [retried, abandoned] {
        let saga = shop.settled(order, SETTLE).await;
        let parked = saga.parked.expect("parked");
        assert_eq!(parked.step, "reserve 0");
        assert_eq!(shop.order(order).await.status, OrderStatus::Pending);
    }
    eventually(async || {
        let parked = shop.orders().parked();
        (parked.len() >= 2).then_some(()).ok_or(format!("{parked:?}"))
    })
    .await;
    let mut parked = vec![retried, abandoned];
    parked.sort();
    assert_eq!(shop.orders().parked(), parked);

    // Retrying a saga that is not parked is refused.
    let other = shop.placed(ada, &[(teapot, 1)]).await;
    shop.settled(other, SETTLE).await;
    assert!(matches!(
        shop.orders().retry_saga(&ctx(), other).await,
        Err(OrdersError::Rejected(DomainError::Rejected { .. }))
    ));

    // The operator clears the stray hold and retries: the saga goes on to the end.
    let clear = ProductCommand::ReleaseStock {
        product_id: teapot,
        order_id: retried,
    };
    shop.inventory.product(&ctx(), teapot, clear).await.unwrap();
    shop.stock.insert(teapot, 10);
    shop.orders().retry_saga(&ctx(), retried).await.unwrap();
    eventually(async || {
        let saga = shop.saga(retried).await;
        saga.confirmed.then_some(()).ok_or(format!("{saga:?}"))
    })
    .await;

    // The other is abandoned: it compensates (releasing what inventory holds for the order,
    // the stray hold included) and cancels the order `abandoned`.
    shop.orders()
        .abandon_saga(&ctx(), abandoned, "the stray hold is not ours to clear".into())
        .await
        .unwrap();
    let saga = shop.settled(abandoned, SETTLE).await;
    assert_eq!(saga.outcome.as_deref(), Some("cancelled"), "{saga:?}");
    assert_eq!(
        shop.order(abandoned).await.cancellation_reason_code.as_deref(),
        Some("abandoned")
    );
    eventually(async || {
        let parked = shop.orders().parked();
        parked.is_empty().then_some(()).ok_or(format!("{parked:?}"))
    })
    .await;
    shop.assert_at_rest().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_drivers_side_by_side_record_every_step_once_and_a_reread_changes_nothing() {
    let mut shop = Shop::new(LONG).await;
    let ada = shop.customer("Ada").await;
    let teapot = shop.product(1_000, 30).await;
    shop.gateway.set(GatewaySettings {
        decline_rate: 0.3,
        ..GatewaySettings::default()
    });
    let second = shop.start_process();
    // Half the orders placed through each process: each process's driver acts on its own at
    // once and finds the other's in the log.
    let mut orders = Vec::new();
    for n in 0..40 {
        let process = if n % 2 == 0 { shop.orders() } else { &second.orders };
        let (order, placed) = shop.place_with(process, ada, &[(teapot, 1)]).await;
        placed.unwrap();
        orders.push(order);
    }
    for &order in &orders {
        shop.settled(order, SETTLE).await;
    }
    // Each step recorded once, whichever driver made it.
    for &order in &orders {
        let events = shop
            .orders_store
            .read_stream(&format!("saga-{order}"), 1, 100)
            .await
            .unwrap();
        let mut types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
        let all = types.len();
        types.sort_unstable();
        types.dedup();
        assert_eq!(types.len(), all, "a step recorded twice for {order}: {events:?}");
    }
    second.stop().await;
    shop.assert_at_rest().await;

    // Redelivery: a driver that reads the whole log again (its checkpoint back at the start),
    // and every saga advanced twice more, concurrently, in reverse order: nothing changes in
    // any store.
    let heads = [
        shop.orders_store.head_position().await.unwrap(),
        shop.inventory.store().head_position().await.unwrap(),
        shop.payments.store().head_position().await.unwrap(),
    ];
    shop.orders_store.save_checkpoint(sagas::CHECKPOINT, 0).await.unwrap();
    let again = shop.start_process();
    let runner = sagas::Runner::new(
        CommandHandler::new(shop.orders_store.clone(), HandlerOptions::default()),
        client("inventory", shop.inventory_served.as_ref().unwrap().address),
        client("payments", shop.payments_served.as_ref().unwrap().address),
    );
    let reversed: Vec<Uuid> = orders.iter().rev().copied().collect();
    futures::future::join_all(
        reversed
            .iter()
            .chain(&orders)
            .map(|&order| runner.advance(order, chrono::Utc::now)),
    )
    .await
    .into_iter()
    .for_each(|turn| {
        turn.unwrap();
    });
    // The re-reading driver is past every event before the heads are compared.
    eventually(async || {
        let checkpoint = shop.orders_store.load_checkpoint(sagas::CHECKPOINT).await.unwrap();
        (checkpoint >= heads[0])
            .then_some(())
            .ok_or("the driver did not read the log again".to_owned())
    })
    .await;
    again.stop().await;
    assert_eq!(
        [
            shop.orders_store.head_position().await.unwrap(),
            shop.inventory.store().head_position().await.unwrap(),
            shop.payments.store().head_position().await.unwrap(),
        ],
        heads,
        "a step had a second effect"
    );
    shop.assert_at_rest().await;
}
