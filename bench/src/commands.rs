//! `orderflow bench commands`: C concurrent HTTP clients placing orders on the write side (an
//! in-process server on loopback over a PostgreSQL store, auth off), and `--floor`: the same
//! load against a server that only parses and answers, what HTTP, JSON and the load generator
//! alone cost on the machine.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use uuid::Uuid;

use crate::load::{HttpClient, print_json};
use crate::scratch::{Adapter, Target, add_products};

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
    /// Products in the catalogue the orders draw from (fewer means more contention on stock).
    #[arg(long, default_value_t = 200, env = "ORDERFLOW_BENCH_PRODUCTS")]
    products: usize,
    /// Customers placing the orders.
    #[arg(long, default_value_t = 100, env = "ORDERFLOW_BENCH_CUSTOMERS")]
    customers: usize,
    /// A PostgreSQL server URL; the benchmark creates its own database there and drops it after.
    #[arg(
        long,
        default_value = "postgres://postgres@127.0.0.1:5432/postgres",
        env = "ORDERFLOW_BENCH_PG_URL"
    )]
    pg_url: String,
    /// Measure the floor instead: the same clients and orders against a server that parses each
    /// order and answers 201 without deciding or storing it. What HTTP, JSON and the load
    /// generator alone cost on this machine, which no store can go below.
    #[arg(long, env = "ORDERFLOW_BENCH_FLOOR")]
    floor: bool,
}

#[derive(Debug, Serialize)]
struct CommandsRun {
    clients: usize,
    seconds: f64,
    commands: u64,
    /// Answers other than 201 (e.g. 409 after the handler's conflict retries ran out).
    rejected: u64,
    commands_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

pub(crate) async fn run(b: CommandsBench) -> anyhow::Result<()> {
    use write_side::domain::CustomerCommand;
    use write_side::http::{Auth, HttpConfig, HttpState};
    use write_side::{CommandContext, CommandHandler, HandlerOptions};

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
            "[{}/{}] {clients} HTTP clients placing orders, {}s …",
            n + 1,
            b.clients.len(),
            b.seconds
        );
        let target = Target::create(Adapter::Postgres, &b.pg_url).await?;
        let store = target.open().await?;
        let handler = CommandHandler::new(store, HandlerOptions::default());
        eprintln!("      seeding {} customers and {} products …", b.customers, b.products);
        let ctx = CommandContext::default();
        let mut customers = Vec::with_capacity(b.customers);
        for i in 0..b.customers {
            let id = Uuid::now_v7();
            let c = CustomerCommand::Register {
                customer_id: id,
                name: format!("Customer {i}"),
                email: format!("c{i}@example.com"),
            };
            handler.customer(&ctx, id, c).await?;
            customers.push(id);
        }
        let products = add_products(&handler, b.products).await?;
        let app = write_side::http::router(HttpState::new(handler, HttpConfig::new(Auth::Disabled)));
        let run = serve_and_drive(app, clients, &customers, &products, b.seconds).await;
        target.drop_all().await;
        let run = run?;
        eprintln!(
            "      {:>8.0} commands/s  p50 {:.2} ms  p99 {:.2} ms  ({} not 201)",
            run.commands_per_sec, run.p50_ms, run.p99_ms, run.rejected
        );
        runs.push(run);
    }
    let out = serde_json::json!({ "benchmark": "commands", "command": "POST /v1/orders (1-3 lines)", "runs": runs });
    print_json(&out)
}

/// `bench commands --floor`: the same load against a server that only parses and answers.
async fn commands_floor(b: CommandsBench) -> anyhow::Result<()> {
    use axum::Json;
    use axum::http::StatusCode;
    use write_side::http::{CommandAnswerBody, PlaceOrderBody};

    let next_position = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let answer = move |Json(body): Json<PlaceOrderBody>| {
        let position = next_position.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let order_id = body.order_id.unwrap_or_else(Uuid::now_v7);
        let answer = CommandAnswerBody {
            stream_id: event_schemas::Category::Order.stream_id(order_id),
            version: 1,
            position,
        };
        // What the write side answers with: 201, the body and the stream's version as ETag.
        std::future::ready((StatusCode::CREATED, [(axum::http::header::ETAG, "\"1\"")], Json(answer)))
    };
    let app = axum::Router::new().route("/v1/orders", axum::routing::post(answer));
    let customers: Vec<Uuid> = (0..b.customers).map(|_| Uuid::now_v7()).collect();
    let products: Vec<Uuid> = (0..b.products).map(|_| Uuid::now_v7()).collect();
    let mut runs = Vec::new();
    for (n, &clients) in b.clients.iter().enumerate() {
        eprintln!(
            "[{}/{}] floor: {clients} HTTP clients, nothing decided or stored, {}s …",
            n + 1,
            b.clients.len(),
            b.seconds
        );
        let run = serve_and_drive(app.clone(), clients, &customers, &products, b.seconds).await?;
        eprintln!(
            "      {:>8.0} answers/s  p50 {:.2} ms  p99 {:.2} ms",
            run.commands_per_sec, run.p50_ms, run.p99_ms
        );
        runs.push(run);
    }
    let out = serde_json::json!({
        "benchmark": "commands-floor",
        "command": "POST /v1/orders (1-3 lines), parsed and answered, nothing decided or stored",
        "runs": runs,
    });
    print_json(&out)
}

/// Serves `app` on a loopback port for one run of [`drive`], then stops it.
async fn serve_and_drive(
    app: axum::Router,
    clients: usize,
    customers: &[Uuid],
    products: &[Uuid],
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
    let run = drive(clients, address, customers, products, seconds).await;
    let _ = stop.send(());
    let _ = server.await;
    run
}

/// C clients, each posting orders in a loop until the deadline; one keep-alive connection each.
async fn drive(
    clients: usize,
    address: std::net::SocketAddr,
    customers: &[Uuid],
    products: &[Uuid],
    seconds: u64,
) -> anyhow::Result<CommandsRun> {
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let uri: hyper::Uri = format!("http://{address}/v1/orders").parse()?;
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(clients);
    for c in 0..clients {
        let (client, uri) = (client.clone(), uri.clone());
        let (customers, products) = (customers.to_vec(), products.to_vec());
        tasks.push(tokio::spawn(post_orders(client, uri, customers, products, deadline, c)));
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

/// Client `c` of [`drive`]: posts orders one after the other until `deadline`. Answers the
/// orders created (201), the other answers, and the latency of every answer.
async fn post_orders(
    client: HttpClient,
    uri: hyper::Uri,
    customers: Vec<Uuid>,
    products: Vec<Uuid>,
    deadline: Instant,
    c: usize,
) -> anyhow::Result<(u64, u64, Histogram<u64>)> {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut ok, mut rejected) = (0_u64, 0_u64);
    let mut next = xorshift(c);
    while Instant::now() < deadline {
        let body = order_body(&mut next, &customers, &products);
        let request = hyper::Request::post(uri.clone())
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
