//! The orders service placing orders across services over real HTTP on loopback: the customers
//! and inventory services each serve their own store on a socket of their own, the orders
//! service calls them through the service kit's client and keeps its copy of customers and
//! products in a database of its own.
//!
//! - The race: a customer registered a moment ago, not in the copy yet, is asked of the
//!   customers service; the order is placed with the owner's answer.
//! - The owner down: not in the copy and the customers service unreachable is a 503 naming it,
//!   with nothing reserved and nothing appended; once the copy has the customer, orders go on
//!   while the customers service stays down.
//! - Inventory is the authority for the price, whatever the copy says.
//! - Inventory down: 503 naming it, nothing appended; a line refused releases the lines
//!   reserved before it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use event_schemas::Service;
use event_store::EventStore;
use projections::{ReadDb, RunOptions, ServiceLog};
use service_kit::client::{BreakerSettings, CallContext, ClientError, ClientSettings, ServiceClient, Target};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use write_side::domain::{CustomerCommand, DomainError, PlaceOrder, PlaceOrderLine, Product, ProductCommand};
use write_side::http::{Auth, HttpConfig, HttpState};
use write_side::orders::replica::{self, LiveReplica};
use write_side::orders::{CustomerDirectory, Orders, OrdersError};
use write_side::{CommandContext, CommandHandler, HandlerOptions, Services};

/// One service on a socket of its own, until dropped.
struct Served {
    address: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Served {
    async fn start(service: Service, handler: CommandHandler) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let state = HttpState::new(Services::single(service, handler), HttpConfig::new(Auth::Disabled));
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
    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap().unwrap();
    }
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

struct Shop {
    customers: CommandHandler,
    inventory: CommandHandler,
    orders_store: Arc<dyn EventStore>,
    orders: Orders,
    customers_served: Option<Served>,
    inventory_served: Option<Served>,
    replica_db: ReadDb,
    logs: Vec<ServiceLog>,
}

async fn store(name: &str) -> Arc<dyn EventStore> {
    Arc::new(testkit::sqlite::store(name).await)
}

impl Shop {
    async fn new() -> Shop {
        let (customers_store, inventory_store, orders_store) = (
            store("orders_test_customers").await,
            store("orders_test_inventory").await,
            store("orders_test_orders").await,
        );
        let customers = CommandHandler::new(customers_store.clone(), HandlerOptions::default());
        let inventory = CommandHandler::new(inventory_store.clone(), HandlerOptions::default());
        let customers_served = Served::start(Service::Customers, customers.clone()).await;
        let inventory_served = Served::start(Service::Inventory, inventory.clone()).await;
        let path = std::env::temp_dir().join(format!("{}.db", testkit::unique_name("orders_test_replica")));
        let replica_db = ReadDb::connect(&format!("sqlite://{}", path.display()), 2)
            .await
            .unwrap();
        replica_db.migrate().await.unwrap();
        let version = replica_db.ensure_live(replica::NAME, 1).await.unwrap();
        projections::Projection::prepare(&replica::Replica::new(replica_db.clone(), version))
            .await
            .unwrap();
        let directory = CustomerDirectory::new(
            LiveReplica::new(replica_db.clone()),
            client("customers", customers_served.address),
        );
        let orders = Orders::new(
            CommandHandler::new(orders_store.clone(), HandlerOptions::default()),
            client("inventory", inventory_served.address),
            directory,
        );
        Shop {
            customers,
            inventory,
            orders_store,
            orders,
            customers_served: Some(customers_served),
            inventory_served: Some(inventory_served),
            replica_db,
            logs: vec![
                ServiceLog::new(Service::Customers, customers_store),
                ServiceLog::new(Service::Inventory, inventory_store),
            ],
        }
    }

    async fn customer(&self, name: &str) -> Uuid {
        let id = Uuid::now_v7();
        let register = CustomerCommand::Register {
            customer_id: id,
            name: name.into(),
            email: "someone@example.com".into(),
        };
        self.customers
            .customer(&CommandContext::default(), id, register)
            .await
            .unwrap();
        id
    }

    async fn product(&self, price_minor: i64, stock: i64) -> Uuid {
        let id = Uuid::now_v7();
        let add = ProductCommand::Add {
            product_id: id,
            sku: format!("SKU-{}", &id.simple().to_string()[24..]),
            name: "Teapot".into(),
            price_minor,
            currency: "EUR".into(),
            stock,
        };
        self.inventory
            .product(&CommandContext::default(), id, add)
            .await
            .unwrap();
        id
    }

    async fn place(
        &self,
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
        let placed = self
            .orders
            .place(&CommandContext::default(), &CallContext::new("test", "test"), command)
            .await;
        (order_id, placed)
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

    async fn available(&self, product: Uuid) -> (i64, i64) {
        let p: Product = self.inventory.load::<Product>(product, None).await.unwrap().state;
        (p.available, p.reserved())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_the_copy_has_not_seen_is_asked_of_the_customers_service() {
    let mut shop = Shop::new().await;
    let teapot = shop.product(2_500, 10).await;

    // Registered a moment ago: the copy has not seen it (its runner is not even running).
    let ada = shop.customer("Ada").await;
    let (order, placed) = shop.place(ada, &[(teapot, 2)]).await;
    placed.expect("placed with the customers service's answer");
    let state = shop
        .orders
        .handler()
        .load::<write_side::domain::Order>(order, None)
        .await
        .unwrap()
        .state;
    assert_eq!(state.customer.map(|c| c.name).as_deref(), Some("Ada"));

    // Unknown to the copy and to its owner: 404, nothing reserved.
    let (_, unknown) = shop.place(Uuid::now_v7(), &[(teapot, 1)]).await;
    assert!(
        matches!(
            unknown,
            Err(OrdersError::Rejected(DomainError::NotFound { what: "customer", .. }))
        ),
        "{unknown:?}"
    );
    assert_eq!(shop.available(teapot).await, (8, 2));

    // The customers service down, the customer not in the copy: 503 naming it; nothing
    // reserved, nothing appended.
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
    assert_eq!(shop.available(teapot).await, (8, 2), "nothing reserved");
    assert_eq!(
        shop.orders_store.head_position().await.unwrap(),
        head,
        "nothing appended"
    );

    // Once the copy has the customer, orders go on while the customers service stays down.
    shop.catch_up_the_copy().await;
    let (_, placed) = shop.place(grace, &[(teapot, 1)]).await;
    placed.expect("placed from the copy, the customers service still down");
    assert_eq!(shop.available(teapot).await, (7, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inventory_prices_the_order_and_releases_what_a_refused_order_reserved() {
    let mut shop = Shop::new().await;
    let ada = shop.customer("Ada").await;
    let (teapot, cup) = (shop.product(2_500, 10).await, shop.product(800, 1).await);
    shop.catch_up_the_copy().await;

    // The price changes after the copy saw the product: inventory's answer is the price.
    let change = ProductCommand::ChangePrice {
        product_id: teapot,
        price_minor: 3_000,
    };
    shop.inventory
        .product(&CommandContext::default(), teapot, change)
        .await
        .unwrap();
    let (order, placed) = shop.place(ada, &[(teapot, 1)]).await;
    placed.unwrap();
    let state = shop
        .orders
        .handler()
        .load::<write_side::domain::Order>(order, None)
        .await
        .unwrap()
        .state;
    assert_eq!(state.lines[0].unit_price_minor, 3_000);
    assert_eq!(state.total_minor, 3_000);

    // The second line is beyond the stock: 409 from inventory, and the first line's
    // reservation is released.
    let head = shop.orders_store.head_position().await.unwrap();
    let (refused_order, refused) = shop.place(ada, &[(teapot, 2), (cup, 5)]).await;
    match refused {
        Err(OrdersError::Dependency(ClientError::Rejected {
            status, ref service, ..
        })) => {
            assert_eq!((status.as_u16(), service.as_str()), (409, "inventory"));
        }
        other => panic!("expected inventory's 409: {other:?}"),
    }
    let teapot_now = shop.inventory.load::<Product>(teapot, None).await.unwrap().state;
    assert_eq!(teapot_now.reserved_for(refused_order), 0, "released");
    assert_eq!(shop.available(teapot).await, (9, 1));
    assert_eq!(
        shop.orders_store.head_position().await.unwrap(),
        head,
        "no order appended"
    );

    // Inventory down: 503 naming it, nothing appended.
    shop.inventory_served.take().unwrap().stop().await;
    let (_, down) = shop.place(ada, &[(cup, 1)]).await;
    match down {
        Err(OrdersError::Dependency(
            ClientError::Unavailable { ref service, .. } | ClientError::CircuitOpen { ref service, .. },
        )) => {
            assert_eq!(service, "inventory");
        }
        other => panic!("expected the inventory service unavailable: {other:?}"),
    }
    assert_eq!(shop.orders_store.head_position().await.unwrap(), head);
}
