//! `orderflow bench commands`: C concurrent HTTP clients sending one service's command to the
//! write services (all four in-process on loopback, each over its own PostgreSQL database, the
//! orders service calling inventory in-process; auth off), and `--floor`: the same load against
//! a server that only parses and answers, what HTTP, JSON and the load generator alone cost on
//! the machine.

use std::time::{Duration, Instant};

use clap::Args;
use event_schemas::Service;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::load::{HttpClient, print_json};
use crate::scratch::{Adapter, Target, add_customers, add_products};

#[derive(Debug, Args)]
pub struct CommandsBench {
    /// Concurrent HTTP clients, one run per value.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1,16,64",
        env = "ORDERFLOW_BENCH_CLIENTS"
    )]
    clients: Vec<usize>,
    /// Seconds each run lasts.
    #[arg(long, default_value_t = 10, env = "ORDERFLOW_BENCH_SECONDS")]
    seconds: u64,
    /// The service whose command the clients send: customers (register a customer), inventory
    /// (reserve stock for an order), orders (place an order of 1 to 3 lines: priced from the
    /// orders service's copy, appended pending with its saga's start; no saga driver runs, so
    /// this is the placement alone: `bench saga` measures the whole saga) or payments
    /// (authorize a payment at the simulated provider).
    #[arg(long, default_value = "orders", env = "ORDERFLOW_BENCH_SERVICE")]
    service: Service,
    /// Products in the catalogue the orders draw from (fewer means more contention on stock).
    #[arg(long, default_value_t = 200, env = "ORDERFLOW_BENCH_PRODUCTS")]
    products: usize,
    /// Customers placing the orders.
    #[arg(long, default_value_t = 100, env = "ORDERFLOW_BENCH_CUSTOMERS")]
    customers: usize,
    /// A PostgreSQL server URL; the benchmark creates a database per service there and drops
    /// them after.
    #[arg(
        long,
        default_value = "postgres://postgres@127.0.0.1:5432/postgres",
        env = "ORDERFLOW_BENCH_PG_URL"
    )]
    pg_url: String,
    /// Measure the floor instead: the same clients and commands against a server that parses
    /// each command and answers 201 without deciding or storing it. What HTTP, JSON and the
    /// load generator alone cost on this machine, which no store can go below.
    #[arg(long, env = "ORDERFLOW_BENCH_FLOOR")]
    floor: bool,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct CommandsRun {
    pub(crate) clients: usize,
    pub(crate) seconds: f64,
    pub(crate) commands: u64,
    /// Answers other than 201 (e.g. 409 after the handler's conflict retries ran out).
    pub(crate) rejected: u64,
    pub(crate) commands_per_sec: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) max_ms: f64,
}

/// The command each service is measured with, as the report names it.
fn command_name(service: Service) -> &'static str {
    match service {
        Service::Customers => "POST /v1/customers",
        Service::Inventory => "POST /v1/products/{id}/reservations",
        Service::Orders => "POST /v1/orders (1-3 lines, placement alone: no saga driver)",
        Service::Payments => "POST /v1/payments (authorize)",
    }
}

pub(crate) async fn run(b: CommandsBench) -> anyhow::Result<()> {
    anyhow::ensure!(
        b.seconds > 0 && b.products > 0 && b.customers > 0,
        "--seconds, --products and --customers must be positive"
    );
    anyhow::ensure!(b.clients.iter().all(|&c| c > 0), "--clients must be positive");
    if b.floor {
        return commands_floor(b).await;
    }
    let mut runs = Vec::new();
    for (n, &clients) in b.clients.iter().enumerate() {
        eprintln!(
            "[{}/{}] {clients} HTTP clients sending {}, {}s …",
            n + 1,
            b.clients.len(),
            command_name(b.service),
            b.seconds
        );
        // A database per service, and the orders service's for its copy of customers and
        // products.
        let mut targets = Vec::new();
        for _ in 0..=Service::ALL.len() {
            targets.push(Target::create(Adapter::Postgres, &b.pg_url).await?);
        }
        let run = run_once(&b, clients, &targets).await;
        for target in &targets {
            target.drop_all().await;
        }
        let run = run?;
        eprintln!(
            "      {:>8.0} commands/s  p50 {:.2} ms  p99 {:.2} ms  ({} not 201)",
            run.commands_per_sec, run.p50_ms, run.p99_ms, run.rejected
        );
        runs.push(run);
    }
    let out = serde_json::json!({
        "benchmark": "commands",
        "service": b.service.name(),
        "command": command_name(b.service),
        "runs": runs,
    });
    print_json(&out)
}

/// One run over the four services' databases `targets` (in [`Service::ALL`] order), then the
/// orders service's database for its copy of customers and products, as deployed.
async fn run_once(b: &CommandsBench, clients: usize, targets: &[Target]) -> anyhow::Result<CommandsRun> {
    use write_side::http::{Auth, HttpConfig};
    use write_side::{HandlerOptions, Local};

    let mut stores = Vec::new();
    for (service, target) in Service::ALL.into_iter().zip(targets) {
        stores.push((service, target.open().await?));
    }
    let replica_db = projections::ReadDb::open(
        &targets[Service::ALL.len()].url(),
        service_kit::db::PoolSettings::READ_DB,
    )
    .await?;
    let local = Local::new(stores, replica_db, HandlerOptions::default()).await?;
    eprintln!("      seeding {} customers and {} products …", b.customers, b.products);
    let customers = add_customers(local.handler(Service::Customers), b.customers).await?;
    let products = add_products(local.handler(Service::Inventory), b.products).await?;
    let stop = CancellationToken::new();
    let replica = tokio::spawn({
        let (local, stop) = (local.clone(), stop.clone());
        async move { local.run_replica(stop).await }
    });
    let _stop = stop.clone().drop_guard();
    // Measured with the copy caught up, as in steady state (a miss costs a call to customers).
    let deadline = Instant::now() + Duration::from_secs(60);
    while !local.replica_caught_up().await? {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the orders service's copy did not catch up in 60s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let app = write_side::http::router(local.http_state(HttpConfig::new(Auth::Disabled)));
    let load = Load {
        service: b.service,
        customers,
        products,
    };
    let run = serve_and_drive(app, clients, &load, b.seconds).await;
    stop.cancel();
    replica.await??;
    run
}

/// `bench commands --floor`: the same load against a server that only parses and answers.
async fn commands_floor(b: CommandsBench) -> anyhow::Result<()> {
    use axum::Json;
    use axum::http::StatusCode;
    use write_side::http::CommandAnswerBody;

    let next_position = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let service = b.service;
    let answer = move |Json(_): Json<serde_json::Value>| {
        let position = next_position.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let category = service.categories()[0];
        let answer = CommandAnswerBody::new(write_side::CommandAnswer {
            stream_id: category.stream_id(Uuid::now_v7()),
            version: 1,
            position,
            replayed: false,
        });
        // What the write side answers with: 201, the body and the stream's version as ETag.
        std::future::ready((StatusCode::CREATED, [(axum::http::header::ETAG, "\"1\"")], Json(answer)))
    };
    let app = axum::Router::new()
        .route("/v1/customers", axum::routing::post(answer.clone()))
        .route("/v1/products/{id}/reservations", axum::routing::post(answer.clone()))
        .route("/v1/orders", axum::routing::post(answer.clone()))
        .route("/v1/payments", axum::routing::post(answer));
    let load = Load {
        service: b.service,
        customers: (0..b.customers).map(|_| Uuid::now_v7()).collect(),
        products: (0..b.products).map(|_| Uuid::now_v7()).collect(),
    };
    let mut runs = Vec::new();
    for (n, &clients) in b.clients.iter().enumerate() {
        eprintln!(
            "[{}/{}] floor: {clients} HTTP clients, nothing decided or stored, {}s …",
            n + 1,
            b.clients.len(),
            b.seconds
        );
        let run = serve_and_drive(app.clone(), clients, &load, b.seconds).await?;
        eprintln!(
            "      {:>8.0} answers/s  p50 {:.2} ms  p99 {:.2} ms",
            run.commands_per_sec, run.p50_ms, run.p99_ms
        );
        runs.push(run);
    }
    let out = serde_json::json!({
        "benchmark": "commands-floor",
        "service": b.service.name(),
        "command": format!("{}, parsed and answered, nothing decided or stored", command_name(b.service)),
        "runs": runs,
    });
    print_json(&out)
}

/// What the clients send: commands of `service`, on these customers and products.
#[derive(Clone)]
pub(crate) struct Load {
    service: Service,
    customers: Vec<Uuid>,
    products: Vec<Uuid>,
}

impl Load {
    /// Orders of 1 to 3 lines by these customers on these products.
    pub(crate) fn orders(customers: Vec<Uuid>, products: Vec<Uuid>) -> Self {
        Load {
            service: Service::Orders,
            customers,
            products,
        }
    }

    /// The next request's path and body. Every command creates something new (a customer, a
    /// reservation for a new order, an order, a payment), so none is a replay.
    fn request(&self, next: &mut impl FnMut(usize) -> usize) -> (String, serde_json::Value) {
        match self.service {
            Service::Customers => {
                let id = Uuid::now_v7();
                let body = serde_json::json!({ "customer_id": id, "name": "Bench Customer", "email": format!("{}@example.com", id.simple()) });
                ("/v1/customers".to_owned(), body)
            }
            Service::Inventory => {
                let product = self.products[next(self.products.len())];
                let body = serde_json::json!({ "order_id": Uuid::now_v7(), "quantity": 1 + next(3) });
                (format!("/v1/products/{product}/reservations"), body)
            }
            Service::Orders => (
                "/v1/orders".to_owned(),
                order_body(next, &self.customers, &self.products),
            ),
            Service::Payments => {
                let body = serde_json::json!({ "order_id": Uuid::now_v7(), "amount_minor": 100 + next(10_000), "currency": "EUR" });
                ("/v1/payments".to_owned(), body)
            }
        }
    }
}

/// Serves `app` on a loopback port for one run of [`drive`], then stops it.
pub(crate) async fn serve_and_drive(
    app: axum::Router,
    clients: usize,
    load: &Load,
    seconds: u64,
) -> anyhow::Result<CommandsRun> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(write_side::http::serve_on(
        listener,
        app,
        Duration::from_secs(5),
        async {
            let _ = stopped.await;
        },
    ));
    let run = drive(clients, address, load, seconds).await;
    let _ = stop.send(());
    let _ = server.await;
    run
}

/// Serves `app` on a loopback port and posts `rate` commands per second for `seconds`, each
/// on its own (open loop: a slow answer does not slow the next request), then stops it.
pub(crate) async fn serve_at_rate(
    app: axum::Router,
    rate: f64,
    load: &Load,
    seconds: u64,
) -> anyhow::Result<CommandsRun> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let stop = CancellationToken::new();
    let server = tokio::spawn(write_side::http::serve_on(
        listener,
        app,
        Duration::from_secs(5),
        stop.clone().cancelled_owned(),
    ));
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let mut next = xorshift(0);
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(0.1)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut requests = tokio::task::JoinSet::new();
    while Instant::now() < deadline {
        ticks.tick().await;
        let (path, body) = load.request(&mut next);
        let request = hyper::Request::post(format!("http://{address}{path}"))
            .header("content-type", "application/json")
            .body(Full::new(bytes::Bytes::from(serde_json::to_vec(&body)?)))?;
        let client = client.clone();
        requests.spawn(async move {
            let t = Instant::now();
            let response = client.request(request).await?;
            let status = response.status();
            response.into_body().collect().await?;
            anyhow::Ok((status == hyper::StatusCode::CREATED, t.elapsed()))
        });
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut commands, mut rejected) = (0, 0);
    while let Some(done) = requests.join_next().await {
        let (created, took) = done??;
        hist.record(took.as_micros().max(1) as u64)?;
        if created {
            commands += 1;
        } else {
            rejected += 1;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    stop.cancel();
    let _ = server.await;
    Ok(CommandsRun {
        clients: 0,
        seconds: secs,
        commands,
        rejected,
        commands_per_sec: commands as f64 / secs,
        p50_ms: hist.value_at_quantile(0.50) as f64 / 1000.0,
        p99_ms: hist.value_at_quantile(0.99) as f64 / 1000.0,
        max_ms: hist.max() as f64 / 1000.0,
    })
}

/// C clients, each posting commands in a loop until the deadline; one keep-alive connection
/// each.
async fn drive(
    clients: usize,
    address: std::net::SocketAddr,
    load: &Load,
    seconds: u64,
) -> anyhow::Result<CommandsRun> {
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(clients);
    for c in 0..clients {
        tasks.push(tokio::spawn(post_commands(
            client.clone(),
            address,
            load.clone(),
            deadline,
            c,
        )));
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut commands, mut rejected) = (0, 0);
    for t in tasks {
        let (ok, bad, h) = t.await??;
        commands += ok;
        rejected += bad;
        hist.add(h)?;
    }
    let secs = started.elapsed().as_secs_f64();
    Ok(CommandsRun {
        clients,
        seconds: secs,
        commands,
        rejected,
        commands_per_sec: commands as f64 / secs,
        p50_ms: hist.value_at_quantile(0.50) as f64 / 1000.0,
        p99_ms: hist.value_at_quantile(0.99) as f64 / 1000.0,
        max_ms: hist.max() as f64 / 1000.0,
    })
}

/// Client `c` of [`drive`]: posts commands one after the other until `deadline`. Answers the
/// commands accepted (201), the other answers, and the latency of every answer.
async fn post_commands(
    client: HttpClient,
    address: std::net::SocketAddr,
    load: Load,
    deadline: Instant,
    c: usize,
) -> anyhow::Result<(u64, u64, Histogram<u64>)> {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut ok, mut rejected) = (0_u64, 0_u64);
    let mut next = xorshift(c);
    while Instant::now() < deadline {
        let (path, body) = load.request(&mut next);
        let request = hyper::Request::post(format!("http://{address}{path}"))
            .header("content-type", "application/json")
            .body(Full::new(bytes::Bytes::from(serde_json::to_vec(&body)?)))?;
        let t = Instant::now();
        let response = client.request(request).await?;
        let status = response.status();
        response.into_body().collect().await?;
        hist.record(t.elapsed().as_micros().max(1) as u64)?;
        if status == hyper::StatusCode::CREATED {
            ok += 1;
        } else {
            rejected += 1;
        }
    }
    anyhow::Ok((ok, rejected, hist))
}

/// Client `c`'s random source: answers a number below its argument. xorshift: cheap, and
/// deterministic per client.
fn xorshift(c: usize) -> impl FnMut(usize) -> usize {
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64 ^ (c as u64 + 1);
    move |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    }
}

/// A `POST /v1/orders` body: a random customer, 1 to 3 lines on distinct products (the domain
/// refuses a product twice).
fn order_body(next: &mut impl FnMut(usize) -> usize, customers: &[Uuid], products: &[Uuid]) -> serde_json::Value {
    let wanted = (1 + next(3)).min(products.len());
    let mut picked: Vec<usize> = Vec::with_capacity(wanted);
    while picked.len() < wanted {
        let i = next(products.len());
        if !picked.contains(&i) {
            picked.push(i);
        }
    }
    let lines: Vec<_> = picked
        .iter()
        .map(|&i| serde_json::json!({ "product_id": products[i], "quantity": 1 + next(3) }))
        .collect();
    serde_json::json!({ "customer_id": customers[next(customers.len())], "lines": lines })
}
