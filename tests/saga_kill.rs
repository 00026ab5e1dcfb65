//! The place-order saga survives crashes (ADR 0010), end to end with the real `write-side`
//! binaries: the four services on fresh PostgreSQL databases of their own and a Kafka topic
//! prefix of this test's own, authentication on (the orders service calls the others with a
//! token of scope `service`), the simulated payment gateway declining a tenth of the payments.
//!
//! Traffic at more than 50 orders per second for a minute: a few products with little stock
//! (some orders go out of stock), some confirmed orders shipped (the saga captures) and some
//! cancelled (it voids and releases), a few cancelled while still pending (racing the saga).
//! Meanwhile the orders service's process, the only one that runs sagas, is killed with SIGKILL
//! at least ten times and started again each time; the traffic retries a placement with its
//! `Idempotency-Key` while it is down. Between those kills, the inventory and payments services
//! the sagas call are killed in turn too (the sagas retry them), and the inventory service's
//! relay, which dies with it, must resume from its checkpoint: every event of its store reaches
//! Kafka.
//!
//! Once every saga has settled (completed, or confirmed and waiting for its order to ship),
//! the invariant is checked over every service's own store, read through their HTTP APIs (each
//! service's log, its folds, the orders service's overview):
//! - stock: per product, available + reserved = the initial stock, reserved = the quantities of
//!   the confirmed and shipped orders, a cancelled order holds nothing, and every release
//!   returns exactly what its order held (none twice);
//! - payments: every payment is the saga's (its id derived from the order's); a cancelled order
//!   left no authorization neither captured nor voided; a confirmed one is authorized for its
//!   total; no capture without a shipped order, no refund without a capture;
//! - orders: every order placed is confirmed, shipped or cancelled (none pending, none parked),
//!   by its deadline, with the reason its saga recorded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use event_schemas::{Category, Envelope, Service};
use event_store::{EventStore, PgEventStore, StoreOptions};
use http_body_util::{BodyExt, Full};
use hyper::{Method, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use serde_json::{Value, json};
use tokio::process::{Child, Command};
use uuid::Uuid;
use write_side::orders::saga::payment_id;

mod support;

/// Orders offered per second, and for how long.
const RATE: f64 = 70.0;
const TRAFFIC: Duration = Duration::from_secs(62);
/// What the run must reach: accepted orders per second over the traffic, and kills.
const MIN_RATE: f64 = 50.0;
const MIN_KILLS: u32 = 10;
/// Placements in flight at most (each retried until accepted holds its place).
const IN_FLIGHT: usize = 48;
/// Each order's saga deadline: longer than any outage a kill causes, short enough that a saga
/// the driver lost would be cancelled (`timed_out`) within the settling wait.
const SAGA_DEADLINE: Duration = Duration::from_secs(60);
/// How long the sagas may take to settle once the traffic stopped: past the last deadline.
const SETTLE: Duration = Duration::from_secs(80);
/// How late after its deadline a saga may record that it confirmed or failed: the driver acts
/// on an expired deadline at its next look (retries wait at most 5 s).
const DEADLINE_SLACK: chrono::TimeDelta = chrono::TimeDelta::seconds(10);
/// The gateway declines this share of the payments.
const DECLINE_RATE: f64 = 0.1;
/// Of the confirmed orders, per hundred: shipped below SHIP, cancelled from SHIP to CANCEL.
const SHIP: u128 = 35;
const CANCEL: u128 = 45;
/// Of the orders placed, per hundred: cancelled at once (while pending) from 95 to 98.
const CANCEL_PENDING: std::ops::Range<u128> = 95..98;

/// `(stock, price)` of each product: the first ones run out during the traffic.
const PRODUCTS: [(i64, i64); 6] = [
    (300, 1200),
    (800, 350),
    (1500, 4999),
    (2000, 800),
    (20_000, 150),
    (20_000, 2500),
];
const CUSTOMERS: usize = 20;

const WRITE_SERVICES: [&str; 4] = ["customers", "inventory", "payments", "orders"];

/// The repository.
fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `write-side` binary, built for this test's profile (it is another
/// package's binary: no `CARGO_BIN_EXE_*`; see tests/dev_up.rs).
fn write_side_binary() -> PathBuf {
    let dir = Path::new(env!("CARGO_BIN_EXE_orderflow"))
        .parent()
        .expect("the binary's folder")
        .to_path_buf();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = std::process::Command::new(cargo);
    build.args(["build", "-p", "write-side", "--bins"]).current_dir(repo());
    if dir.file_name().is_some_and(|name| name == "release") {
        build.arg("--release");
    }
    let status = build.status().expect("run cargo build");
    assert!(status.success(), "cargo build -p write-side --bins: {status}");
    dir.join("write-side")
}

/// Fails the test, naming the script that starts them, when PostgreSQL or Kafka does not
/// accept connections.
async fn servers_answer() {
    let pg: sqlx::postgres::PgConnectOptions = testkit::postgres::admin_url()
        .parse()
        .expect("ORDERFLOW_TEST_PG_URL is a PostgreSQL URL");
    let kafka = testkit::kafka::bootstrap_servers();
    let kafka_port: u16 = kafka
        .split(',')
        .next()
        .and_then(|address| address.rsplit(':').next())
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("no port in {kafka}"));
    for (server, host, port) in [
        ("PostgreSQL", pg.get_host().to_owned(), pg.get_port()),
        ("Kafka", "127.0.0.1".to_owned(), kafka_port),
    ] {
        let connect = tokio::net::TcpStream::connect((host.as_str(), port));
        match tokio::time::timeout(Duration::from_secs(5), connect).await {
            Ok(Ok(_)) => {}
            _ => panic!(
                "cannot reach {server} on {host}:{port}\nstart it with `{}`",
                testkit::START_SERVICES
            ),
        }
    }
}

/// A small deterministic generator (SplitMix64): the traffic's choices.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// In `[0, n)`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Uniform in `[low, high)`.
    fn between(&mut self, low: Duration, high: Duration) -> Duration {
        let span = (high - low).as_millis().max(1) as u64;
        low + Duration::from_millis(self.below(span))
    }
}

/// Per hundred, from the random bits of an order's id (UUID v7: the low bits are random).
fn percentile(order: Uuid) -> u128 {
    (order.as_u128() & 0xffff_ffff) % 100
}

/// JSON over HTTP/1.1 to one service, with the test's bearer token.
#[derive(Clone)]
struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
    token: String,
}

impl Http {
    fn new(port: u16, token: &str) -> Http {
        Http {
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(5))
                .build_http(),
            base: format!("http://127.0.0.1:{port}"),
            token: token.to_owned(),
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        idempotency_key: Option<&str>,
    ) -> anyhow::Result<(StatusCode, Value)> {
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {}", self.token));
        if let Some(key) = idempotency_key {
            request = request.header("idempotency-key", key);
        }
        let body = body.map_or_else(Vec::new, |b| b.to_string().into_bytes());
        let exchange = async {
            let response = self.client.request(request.body(Full::new(Bytes::from(body)))?).await?;
            let status = response.status();
            let bytes = response.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(Duration::from_secs(15), exchange)
            .await
            .with_context(|| format!("{path}: no answer in 15 s"))??;
        let value =
            serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        Ok((status, value))
    }

    /// GET that must answer 200.
    async fn ok(&self, path: &str) -> anyhow::Result<Value> {
        let (status, body) = self.send(Method::GET, path, None, None).await?;
        ensure!(status == StatusCode::OK, "GET {path}: {status} {body}");
        Ok(body)
    }

    /// A command that must answer `expected`, retried (same idempotency key) while the service
    /// does not answer or answers 5xx, at most `within`.
    async fn command(
        &self,
        path: &str,
        body: &Value,
        key: &str,
        expected: StatusCode,
        within: Duration,
    ) -> anyhow::Result<Value> {
        let deadline = Instant::now() + within;
        loop {
            match self.send(Method::POST, path, Some(body), Some(key)).await {
                Ok((status, answer)) if status == expected => return Ok(answer),
                Ok((status, answer)) if !status.is_server_error() => bail!("POST {path}: {status} {answer}"),
                Ok((status, answer)) if Instant::now() >= deadline => {
                    bail!("POST {path}: still {status} {answer} after {within:?}")
                }
                Err(e) if Instant::now() >= deadline => {
                    return Err(e.context(format!("POST {path}: no answer for {within:?}")));
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Every event of the service's log from `from` (inclusive), page by page.
    async fn log(&self, from: u64) -> anyhow::Result<Vec<Value>> {
        let mut events = Vec::new();
        let mut next = from;
        loop {
            let page = self.ok(&format!("/v1/log?from_position={next}&limit=1000")).await?;
            let batch = page["events"].as_array().context("no events")?;
            events.extend(batch.iter().cloned());
            match page["next_from_position"].as_u64() {
                Some(position) if !batch.is_empty() => next = position,
                _ => return Ok(events),
            }
        }
    }
}

/// One `write-side --service <name>` process, started again after each kill with the same
/// command line, its output appended to its log.
struct Process {
    name: &'static str,
    binary: PathBuf,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
    http: Http,
}

impl Process {
    fn start(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let mut command = Command::new(&self.binary);
        // Only this test's settings: none of the caller's ORDERFLOW_* (a developer's shell).
        for (key, _) in std::env::vars() {
            if key.starts_with("ORDERFLOW_") {
                command.env_remove(key);
            }
        }
        let child = command
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {}", self.binary.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL: no drain, no goodbye. Reaped before it returns.
    async fn kill9(&mut self) -> anyhow::Result<()> {
        let mut child = self.child.take().context("not running")?;
        child.start_kill()?;
        child.wait().await?;
        Ok(())
    }

    /// Waits until `path` answers 200, at most `within`, failing early if the process exits.
    async fn wait_for(&mut self, path: &str, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(child) = &mut self.child
                && let Some(status) = child.try_wait()?
            {
                bail!("{} exited ({status}) before {path} answered", self.name);
            }
            if let Ok((StatusCode::OK, _)) = self.http.send(Method::GET, path, None, None).await {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "{}: {path} not 200 within {within:?}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// CPU seconds the running process used so far.
    fn cpu_seconds(&self) -> f64 {
        self.child
            .as_ref()
            .and_then(Child::id)
            .map_or(0.0, |pid| cpu_seconds(&pid.to_string()))
    }

    fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "--- {} ---\n{}\n",
            self.log.display(),
            lines[lines.len().saturating_sub(30)..].join("\n")
        )
    }
}

/// CPU seconds (user + system) process `pid` (or `self`) used so far, from `/proc` (in clock
/// ticks of 1/100 s).
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // utime and stime: the 14th and 15th fields, the 12th and 13th after the name.
    let ticks: f64 = stat
        .rsplit_once(')')
        .map(|(_, rest)| {
            rest.split_whitespace()
                .skip(11)
                .take(2)
                .filter_map(|t| t.parse::<f64>().ok())
                .sum()
        })
        .unwrap_or_default();
    ticks / 100.0
}

/// The deployment: the four services, each with its own database.
struct Deployment {
    processes: BTreeMap<&'static str, Process>,
    /// Each service's event store (left behind for a post-mortem).
    stores: BTreeMap<&'static str, String>,
    /// Put before every topic name by the services' relays.
    prefix: String,
    dir: PathBuf,
}

impl Deployment {
    /// The deployment's processes, not started yet: a fresh database each (and one for the orders
    /// service's copy), free ports, a topic prefix and a consumer group of their own.
    async fn new(binary: &Path) -> Deployment {
        // The test's token, an operator's (commands+admin: no `service`), and the orders
        // service's own, which it sends to the others (commands+service), as in compose.yaml.
        let (secret, service_secret) = (Uuid::new_v4().simple().to_string(), Uuid::new_v4().simple().to_string());
        let tokens = format!(
            "operator:commands+admin:{},orders:commands+service:{}",
            write_side::http::hash_token(&secret),
            write_side::http::hash_token(&service_secret)
        );
        let prefix = format!("{}.", testkit::unique_name("saga_kill"));
        let dir = support::scratch("saga-kill");
        let mut ports = BTreeMap::new();
        while ports.len() < WRITE_SERVICES.len() {
            let port = support::free_port();
            if !ports.values().any(|p| *p == port) {
                ports.insert(WRITE_SERVICES[ports.len()], port);
            }
        }
        let url = |service: &str| format!("http://127.0.0.1:{}", ports[service]);
        let (mut processes, mut stores) = (BTreeMap::new(), BTreeMap::new());
        for service in WRITE_SERVICES {
            let database = testkit::postgres::fresh_database().await;
            stores.insert(service, database.url.clone());
            let mut env: Vec<(String, String)> = [
                ("ORDERFLOW_SERVICE", service.to_owned()),
                ("ORDERFLOW_WRITE_LISTEN", format!("127.0.0.1:{}", ports[service])),
                ("ORDERFLOW_EVENT_STORE_URL", database.url.clone()),
                ("ORDERFLOW_TOKENS", tokens.clone()),
                ("ORDERFLOW_KAFKA_BROKERS", testkit::kafka::bootstrap_servers()),
                ("ORDERFLOW_TOPIC_PREFIX", prefix.clone()),
                ("ORDERFLOW_RELAY_PARTITIONS", "2".to_owned()),
                ("RUST_LOG", "warn".to_owned()),
                ("NO_COLOR", "1".to_owned()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
            // Nothing here reads the orders' and payments' topics: their relays stay off (the
            // CPU is the traffic's). Customers' and inventory's feed the orders service's copy.
            if service == "orders" || service == "payments" {
                env.push(("ORDERFLOW_NO_RELAY".to_owned(), "true".to_owned()));
            }
            if service == "orders" {
                let replica = testkit::postgres::fresh_database().await;
                env.extend(
                    [
                        ("ORDERFLOW_INVENTORY_URL", url("inventory")),
                        ("ORDERFLOW_CUSTOMERS_URL", url("customers")),
                        ("ORDERFLOW_PAYMENTS_URL", url("payments")),
                        ("ORDERFLOW_SERVICE_TOKEN", service_secret.clone()),
                        ("ORDERFLOW_REPLICA_DB_URL", replica.url.clone()),
                        (
                            "ORDERFLOW_REPLICA_GROUP",
                            testkit::kafka::unique_group("saga_kill_replica"),
                        ),
                        ("ORDERFLOW_SAGA_DEADLINE", format!("{}s", SAGA_DEADLINE.as_secs())),
                    ]
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v)),
                );
            }
            processes.insert(
                service,
                Process {
                    name: service,
                    binary: binary.to_path_buf(),
                    env,
                    log: dir.join(format!("{service}.log")),
                    child: None,
                    http: Http::new(ports[service], &secret),
                },
            );
        }
        Deployment {
            processes,
            stores,
            prefix,
            dir,
        }
    }

    /// Starts the services as compose and scripts/dev-up do: orders once the services it calls
    /// are ready.
    async fn up(&mut self) -> anyhow::Result<()> {
        for service in ["customers", "inventory", "payments"] {
            self.process(service).start()?;
        }
        for service in ["customers", "inventory", "payments"] {
            self.process(service)
                .wait_for("/ready", Duration::from_secs(60))
                .await?;
        }
        self.process("orders").start()?;
        self.process("orders").wait_for("/ready", Duration::from_secs(60)).await
    }

    fn process(&mut self, name: &str) -> &mut Process {
        self.processes.get_mut(name).expect("a service")
    }

    fn http(&self, name: &str) -> Http {
        self.processes[name].http.clone()
    }

    /// The end of each service's log, and where its store is: a stream's events are read with
    /// `orderflow events --event-store-url <store> saga-<order id>` (or `order-`, `product-`,
    /// `payment-`).
    fn logs(&self) -> String {
        let mut out = format!("(logs in {})\n", self.dir.display());
        for (service, store) in &self.stores {
            out.push_str(&format!("{service}'s event store: {store}\n"));
        }
        for process in self.processes.values() {
            out.push_str(&process.tail());
        }
        out
    }
}

/// An order the traffic placed: its id and lines `(product index, quantity)`.
type Placement = (Uuid, Vec<(usize, i64)>);

/// What the traffic did, shared by its tasks.
#[derive(Default)]
struct Traffic {
    /// Every order accepted (201): its id and lines `(product index, quantity)`.
    placed: Mutex<Vec<Placement>>,
    /// When the last one was accepted.
    last_placed: Mutex<Option<Instant>>,
    /// Placements sent again after an error or a 5xx (the same Idempotency-Key).
    retries: AtomicU64,
    shipped: AtomicU64,
    cancelled_confirmed: AtomicU64,
    cancelled_pending: AtomicU64,
    /// Cancellations of a pending order refused because its saga had cancelled it first.
    cancel_too_late: AtomicU64,
    /// Anything the traffic did not expect, for the failure message.
    failures: Mutex<Vec<String>>,
}

impl Traffic {
    fn fail(&self, what: String) {
        self.failures.lock().unwrap().push(what);
    }
}

/// An answer or the error instead, for a message.
fn describe(outcome: &anyhow::Result<(StatusCode, Value)>) -> String {
    match outcome {
        Ok((status, body)) => format!("{status} {body}"),
        Err(e) => format!("{e:#}"),
    }
}

/// Places one order, retrying with its Idempotency-Key until the orders service takes it (it
/// may be down, killed, or restarting), at most 60 s; then cancels it at once if it is one of
/// the few cancelled while pending. Whether it was placed.
async fn place(
    orders: &Http,
    traffic: &Traffic,
    order: Uuid,
    customer: Uuid,
    lines: Vec<(usize, i64)>,
    products: &[Uuid],
) -> bool {
    let body = json!({
        "order_id": order,
        "customer_id": customer,
        "lines": lines.iter().map(|&(p, q)| json!({"product_id": products[p], "quantity": q})).collect::<Vec<_>>(),
    });
    let key = format!("saga-kill-place-{order}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let outcome = orders.send(Method::POST, "/v1/orders", Some(&body), Some(&key)).await;
        match &outcome {
            Ok((StatusCode::CREATED, _)) => break,
            Ok((status, answer)) if !status.is_server_error() => {
                traffic.fail(format!("placing {order}: {status} {answer}"));
                return false;
            }
            _ if Instant::now() >= deadline => {
                traffic.fail(format!(
                    "placing {order}: not accepted in 60 s, last {}",
                    describe(&outcome)
                ));
                return false;
            }
            _ => {
                traffic.retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    traffic.placed.lock().unwrap().push((order, lines));
    *traffic.last_placed.lock().unwrap() = Some(Instant::now());
    if !CANCEL_PENDING.contains(&percentile(order)) {
        return true;
    }
    let body = json!({"reason": "changed my mind at once"});
    let path = format!("/v1/orders/{order}/cancel");
    let key = format!("saga-kill-cancel-{order}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let outcome = orders.send(Method::POST, &path, Some(&body), Some(&key)).await;
        match &outcome {
            Ok((StatusCode::OK, _)) => {
                traffic.cancelled_pending.fetch_add(1, Ordering::Relaxed);
                return true;
            }
            // Its saga cancelled it first (out of stock, declined): a race the client loses.
            Ok((StatusCode::CONFLICT, answer)) if answer["error"]["code"] == "rejected" => {
                traffic.cancel_too_late.fetch_add(1, Ordering::Relaxed);
                return true;
            }
            Ok((status, answer)) if !status.is_server_error() => {
                traffic.fail(format!("cancelling pending {order}: {status} {answer}"));
                return true;
            }
            _ if Instant::now() >= deadline => {
                traffic.fail(format!(
                    "cancelling pending {order}: no answer in 60 s, last {}",
                    describe(&outcome)
                ));
                return true;
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// For the orders chosen (by their id) to be shipped or cancelled once confirmed: waits until
/// its saga has confirmed `order` (asking the orders service every second; it may be down),
/// then ships or cancels it, retrying with its Idempotency-Key while the orders service is
/// down. Nothing to do for an order its saga cancelled (out of stock, declined).
async fn ship_or_cancel(orders: Http, traffic: Arc<Traffic>, order: Uuid) {
    let (step, body) = match percentile(order) {
        p if p < SHIP => ("ship", json!({"carrier": "DHL", "tracking": format!("T-{order}")})),
        p if p < CANCEL => ("cancel", json!({"reason": "changed my mind"})),
        _ => return,
    };
    let deadline = Instant::now() + SAGA_DEADLINE + Duration::from_secs(15);
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        match orders.ok(&format!("/v1/orders/{order}/state")).await {
            Ok(state) if state["status"] == "confirmed" => break,
            Ok(state) if state["status"] == "cancelled" => return,
            outcome => {
                if Instant::now() >= deadline {
                    let outcome = outcome.map(|state| (StatusCode::OK, state));
                    traffic.fail(format!("{order}: not confirmed nor cancelled, {}", describe(&outcome)));
                    return;
                }
            }
        }
    }
    let path = format!("/v1/orders/{order}/{step}");
    let key = format!("saga-kill-{step}-{order}");
    match orders
        .command(&path, &body, &key, StatusCode::OK, Duration::from_secs(60))
        .await
    {
        Ok(_) if step == "ship" => {
            traffic.shipped.fetch_add(1, Ordering::Relaxed);
        }
        Ok(_) => {
            traffic.cancelled_confirmed.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => traffic.fail(format!("{step} {order}: {e:#}")),
    }
}

/// An order as the orders service's log tells it, with its saga.
#[derive(Debug, Default, Clone)]
struct OrderFold {
    status: String,
    total: i64,
    reason_code: Option<String>,
    /// `(product, quantity)` of each line, as its saga started.
    lines: Vec<(Uuid, i64)>,
    deadline: Option<DateTime<Utc>>,
    saga_started: bool,
    saga_confirmed_at: Option<DateTime<Utc>>,
    /// The first failure: its reason code and when.
    saga_failed: Option<(String, DateTime<Utc>)>,
    saga_outcome: Option<String>,
    saga_parked: Option<String>,
    saga_captured: i64,
}

impl OrderFold {
    /// Nothing left for its saga to do now: completed, or confirmed and waiting for its order
    /// to ship.
    fn settled(&self) -> bool {
        self.saga_outcome.is_some()
            || (self.status == "confirmed" && self.saga_confirmed_at.is_some() && self.saga_failed.is_none())
    }
}

fn time_of(event: &Value) -> anyhow::Result<DateTime<Utc>> {
    event["recorded_at"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .with_context(|| format!("no recorded_at in {event}"))
}

fn uuid_of(value: &Value) -> anyhow::Result<Uuid> {
    value
        .as_str()
        .and_then(|id| id.parse().ok())
        .with_context(|| format!("not a uuid: {value}"))
}

/// The orders service's log, folded as it is read (orders and sagas).
#[derive(Default)]
struct OrdersLog {
    next: u64,
    orders: HashMap<Uuid, OrderFold>,
    events: u64,
}

impl OrdersLog {
    async fn catch_up(&mut self, orders: &Http) -> anyhow::Result<()> {
        for event in orders.log(self.next.max(1)).await? {
            self.apply(&event)?;
            self.next = event["position"].as_u64().context("no position")? + 1;
            self.events += 1;
        }
        Ok(())
    }

    fn apply(&mut self, event: &Value) -> anyhow::Result<()> {
        let data = &event["data"];
        let kind = event["event_type"].as_str().context("no event type")?;
        if !(kind.starts_with("order.") || kind.starts_with("saga.")) {
            bail!("the orders log holds {event}");
        }
        let order = uuid_of(&data["order_id"])?;
        let fold = self.orders.entry(order).or_default();
        let at = time_of(event)?;
        match kind {
            "order.placed" => {
                fold.status = "pending".into();
                fold.total = data["total_minor"].as_i64().context("no total")?;
            }
            "order.confirmed" => fold.status = "confirmed".into(),
            "order.shipped" => fold.status = "shipped".into(),
            "order.delivered" => fold.status = "delivered".into(),
            "order.cancelled" => {
                fold.status = "cancelled".into();
                fold.reason_code = data["reason_code"].as_str().map(str::to_owned);
            }
            "saga.started" => {
                fold.saga_started = true;
                ensure!(
                    uuid_of(&data["payment_id"])? == payment_id(order),
                    "saga of {order}: payment id {} is not the derived one",
                    data["payment_id"]
                );
                fold.deadline = data["deadline"].as_str().and_then(|t| t.parse().ok());
                fold.lines = data["lines"]
                    .as_array()
                    .context("no lines")?
                    .iter()
                    .map(|line| {
                        Ok((
                            uuid_of(&line["product_id"])?,
                            line["quantity"].as_i64().context("no quantity")?,
                        ))
                    })
                    .collect::<anyhow::Result<_>>()?;
            }
            "saga.confirmed" => fold.saga_confirmed_at = Some(at),
            "saga.failed" => {
                if fold.saga_failed.is_none() {
                    let code = data["reason_code"].as_str().unwrap_or_default().to_owned();
                    fold.saga_failed = Some((code, at));
                }
                fold.saga_parked = None;
            }
            "saga.completed" => fold.saga_outcome = data["outcome"].as_str().map(str::to_owned),
            "saga.parked" => fold.saga_parked = Some(format!("{data}")),
            "saga.resumed" => fold.saga_parked = None,
            "saga.payment_captured" => {
                fold.saga_captured += data["amount"]["amount_minor"].as_i64().unwrap_or_default();
            }
            _ => {}
        }
        Ok(())
    }
}

/// A payment as the payments service's log tells it.
#[derive(Debug, Default)]
struct PaymentFold {
    order: Uuid,
    authorized: i64,
    captured: i64,
    refunded: i64,
    declined: bool,
    voided: bool,
}

impl PaymentFold {
    /// Holds money reserved for its order: authorized, neither captured nor voided.
    fn open_authorization(&self) -> bool {
        self.authorized > 0 && self.captured == 0 && !self.voided
    }
}

async fn payments_fold(payments: &Http) -> anyhow::Result<(BTreeMap<Uuid, PaymentFold>, Vec<String>)> {
    let mut folds: BTreeMap<Uuid, PaymentFold> = BTreeMap::new();
    let mut violations = Vec::new();
    for event in payments.log(1).await? {
        let data = &event["data"];
        let kind = event["event_type"].as_str().unwrap_or_default();
        let id = uuid_of(&data["payment_id"])?;
        let order = uuid_of(&data["order_id"])?;
        let amount = data["amount"]["amount_minor"].as_i64().unwrap_or(0);
        let fold = folds.entry(id).or_default();
        fold.order = order;
        match kind {
            "payment.authorized" => fold.authorized += amount,
            "payment.declined" => fold.declined = true,
            "payment.voided" => fold.voided = true,
            "payment.captured" => {
                if fold.authorized == 0 || fold.voided {
                    violations.push(format!("payment {id}: captured without an open authorization"));
                }
                fold.captured += amount;
            }
            "payment.refunded" => {
                if fold.captured < fold.refunded + amount {
                    violations.push(format!(
                        "payment {id}: refund of {amount} beyond its captures ({} captured, {} refunded)",
                        fold.captured, fold.refunded
                    ));
                }
                fold.refunded += amount;
            }
            other => bail!("the payments log holds {other}: {event}"),
        }
    }
    Ok((folds, violations))
}

/// Per product: its stock when added, and what each order holds, folded from the inventory
/// log; releases that did not return exactly what their order held.
async fn inventory_fold(inventory: &Http) -> anyhow::Result<(BTreeMap<Uuid, (i64, BTreeMap<Uuid, i64>)>, Vec<String>)> {
    let mut products: BTreeMap<Uuid, (i64, BTreeMap<Uuid, i64>)> = BTreeMap::new();
    let mut violations = Vec::new();
    for event in inventory.log(1).await? {
        let data = &event["data"];
        let product = uuid_of(&data["product_id"])?;
        let entry = products.entry(product).or_default();
        match event["event_type"].as_str().unwrap_or_default() {
            "product.added" => entry.0 = data["stock"].as_i64().context("no stock")?,
            "product.stock_reserved" => {
                let order = uuid_of(&data["order_id"])?;
                let quantity = data["quantity"].as_i64().context("no quantity")?;
                if let Some(held) = entry.1.insert(order, quantity) {
                    violations.push(format!(
                        "product {product}: reserved twice for {order} ({held}, {quantity})"
                    ));
                }
            }
            "product.stock_released" => {
                let order = uuid_of(&data["order_id"])?;
                let quantity = data["quantity"].as_i64().context("no quantity")?;
                match entry.1.remove(&order) {
                    Some(held) if held == quantity => {}
                    held => violations.push(format!(
                        "product {product}: released {quantity} for {order}, which held {held:?} (a double or partial release)"
                    )),
                }
            }
            other => bail!("unexpected inventory event {other}: {event}"),
        }
    }
    Ok((products, violations))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_orders_service_loses_no_stock_and_no_money() {
    let started = Instant::now();
    servers_answer().await;
    let binary = write_side_binary();
    let mut deployment = Deployment::new(&binary).await;
    if let Err(e) = deployment.up().await {
        panic!("starting the services: {e:#}\n{}", deployment.logs());
    }
    if let Err(e) = run(&mut deployment, started).await {
        panic!("{e:#}\n{}", deployment.logs());
    }
}

/// The traffic, the kills, the checks; `started`: when the test started (the build of the
/// binary and the deployment's start included).
async fn run(deployment: &mut Deployment, started: Instant) -> anyhow::Result<()> {
    let (customers_api, inventory, payments, orders) = (
        deployment.http("customers"),
        deployment.http("inventory"),
        deployment.http("payments"),
        deployment.http("orders"),
    );
    let gateway = json!({"decline_rate": DECLINE_RATE, "latency_ms": 5, "unavailable": false});
    let (status, answer) = payments.send(Method::PUT, "/v1/gateway", Some(&gateway), None).await?;
    ensure!(status == StatusCode::OK, "PUT /v1/gateway: {status} {answer}");

    let mut customers = Vec::new();
    for n in 0..CUSTOMERS {
        let id = Uuid::now_v7();
        let body = json!({"customer_id": id, "name": format!("Customer {n}"), "email": format!("c{n}@example.com")});
        customers_api
            .command(
                "/v1/customers",
                &body,
                &format!("c-{id}"),
                StatusCode::CREATED,
                Duration::from_secs(10),
            )
            .await?;
        customers.push(id);
    }
    let mut products = Vec::new();
    for (n, (stock, price)) in PRODUCTS.iter().enumerate() {
        let id = Uuid::now_v7();
        let body = json!({"product_id": id, "sku": format!("KILL-{n}"), "name": format!("Product {n}"),
                          "price_minor": price, "currency": "EUR", "stock": stock});
        inventory
            .command(
                "/v1/products",
                &body,
                &format!("p-{id}"),
                StatusCode::CREATED,
                Duration::from_secs(10),
            )
            .await?;
        products.push(id);
    }
    let products = Arc::new(products);
    let setup = started.elapsed();

    // The traffic (with its shipments and cancellations) and the killer, for TRAFFIC.
    let traffic = Arc::new(Traffic::default());
    let mut rng = Rng(0x5a6a_4b11 ^ u64::from(std::process::id()));
    let traffic_started = Instant::now();
    let placing = tokio::spawn({
        let (orders, traffic, products) = (orders.clone(), traffic.clone(), products.clone());
        let mut rng = Rng(rng.next());
        async move {
            let mut placements = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / RATE));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let in_flight = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
            while traffic_started.elapsed() < TRAFFIC {
                tick.tick().await;
                // Backpressure, as a shop's front end has: a bounded number of requests in
                // flight (a slower service gets fewer orders, never a retry storm).
                let permit = in_flight.clone().acquire_owned().await.expect("the semaphore");
                let customer = customers[rng.below(customers.len() as u64) as usize];
                let mut lines = Vec::new();
                let count = 1 + rng.below(2) as usize;
                while lines.len() < count {
                    let product = rng.below(products.len() as u64) as usize;
                    if !lines.iter().any(|&(p, _)| p == product) {
                        lines.push((product, 1 + rng.below(3) as i64));
                    }
                }
                let (orders, traffic, products) = (orders.clone(), traffic.clone(), products.clone());
                placements.push(tokio::spawn(async move {
                    let order = Uuid::now_v7();
                    let placed = place(&orders, &traffic, order, customer, lines, &products).await;
                    drop(permit);
                    if placed {
                        ship_or_cancel(orders, traffic, order).await;
                    }
                }));
            }
            let offered = placements.len();
            for placement in placements {
                placement.await.expect("a placement task");
            }
            offered
        }
    });
    // The killer: SIGKILL to the orders service every 4.5 to 6.5 s once it answers again, and
    // every third time again half a second after its restart (killed while it recovers); every
    // other time, first to one of the services its sagas call, in turn.
    let mut kills = 0u32;
    let mut others_killed: BTreeMap<&str, u32> = BTreeMap::new();
    let mut down_for = Duration::ZERO;
    let mut cycle = 0;
    while traffic_started.elapsed() < TRAFFIC {
        tokio::time::sleep(rng.between(Duration::from_millis(4500), Duration::from_millis(6500))).await;
        if traffic_started.elapsed() >= TRAFFIC {
            break;
        }
        cycle += 1;
        if cycle % 2 == 0 {
            let other = ["inventory", "payments"][(cycle / 2) % 2];
            let process = deployment.process(other);
            process.kill9().await?;
            *others_killed.entry(other).or_default() += 1;
            process.start()?;
            process
                .wait_for("/health", Duration::from_secs(60))
                .await
                .with_context(|| format!("the {other} service after a kill"))?;
        }
        let killed_at = Instant::now();
        let process = deployment.process("orders");
        process.kill9().await?;
        kills += 1;
        process.start()?;
        if kills.is_multiple_of(3) {
            tokio::time::sleep(Duration::from_millis(500)).await;
            process.kill9().await?;
            kills += 1;
            process.start()?;
        }
        process
            .wait_for("/health", Duration::from_secs(60))
            .await
            .context("the orders service after a kill")?;
        down_for += killed_at.elapsed();
    }
    // Every placement done, and every shipment and cancellation of a confirmed order.
    let offered = placing.await?;
    let placed: Vec<Placement> = traffic.placed.lock().unwrap().clone();
    let last_placed = traffic.last_placed.lock().unwrap().unwrap_or(traffic_started);
    let traffic_took = last_placed - traffic_started;
    let rate = placed.len() as f64 / traffic_took.as_secs_f64().max(1.0);
    let cpu: Vec<String> = deployment
        .processes
        .values()
        .map(|p| format!("{} {:.1}s", p.name, p.cpu_seconds()))
        .collect();
    eprintln!(
        "saga_kill: CPU used (the orders service since its last start): {}, the test {:.1}s",
        cpu.join(", "),
        cpu_seconds("self")
    );
    eprintln!(
        "saga_kill: traffic: {} of {offered} orders accepted in {:.1}s ({rate:.1}/s; {} placements retried); \
         the orders service killed {kills} times, down {:.1}s in all; also killed: {others_killed:?}",
        placed.len(),
        traffic_took.as_secs_f64(),
        traffic.retries.load(Ordering::Relaxed),
        down_for.as_secs_f64(),
    );
    {
        let failures = traffic.failures.lock().unwrap();
        ensure!(
            failures.is_empty(),
            "the traffic met {} unexpected answers, e.g. {:?}",
            failures.len(),
            &failures[..failures.len().min(5)]
        );
    }
    ensure!(
        placed.len() == offered,
        "{} of {offered} orders were placed",
        placed.len()
    );

    // Every saga settles: completed, or confirmed and waiting for its order to ship.
    let settling = Instant::now();
    let mut log = OrdersLog::default();
    loop {
        log.catch_up(&orders).await.context("reading the orders log")?;
        let parked: Vec<(&Uuid, &OrderFold)> = log.orders.iter().filter(|(_, o)| o.saga_parked.is_some()).collect();
        ensure!(parked.is_empty(), "parked sagas: {:?}", &parked[..parked.len().min(5)]);
        let open: Vec<(&Uuid, &OrderFold)> = log.orders.iter().filter(|(_, o)| !o.settled()).collect();
        if open.is_empty() {
            break;
        }
        ensure!(
            settling.elapsed() < SETTLE,
            "{} sagas not settled {SETTLE:?} after the traffic, e.g. {:?}",
            open.len(),
            &open[..open.len().min(5)]
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let settled_in = settling.elapsed();

    // The invariant, over every service's store.
    let mut violations: Vec<String> = Vec::new();
    let ids: BTreeSet<Uuid> = placed.iter().map(|(id, _)| *id).collect();
    let logged: BTreeSet<Uuid> = log.orders.keys().copied().collect();
    ensure!(
        ids == logged,
        "the orders log has {} orders, the traffic placed {} ({} not logged, {} unknown)",
        logged.len(),
        ids.len(),
        ids.difference(&logged).count(),
        logged.difference(&ids).count()
    );
    for (id, lines) in &placed {
        let order = &log.orders[id];
        let expected: Vec<(Uuid, i64)> = lines.iter().map(|&(p, q)| (products[p], q)).collect();
        if !order.saga_started || order.lines != expected {
            violations.push(format!("{id}: its saga's lines {:?}, placed {expected:?}", order.lines));
        }
        match order.status.as_str() {
            "confirmed" | "shipped" | "delivered" | "cancelled" => {}
            other => violations.push(format!("{id}: {other}")),
        }
        if ["shipped", "delivered"].contains(&order.status.as_str())
            && (order.saga_outcome.as_deref() != Some("captured") || order.saga_captured != order.total)
        {
            violations.push(format!("{id}: shipped, its saga {order:?}"));
        }
        // Cancelled: by its saga, for the reason it failed; or by its client (`requested`),
        // which may come first while the saga compensates for a failure of its own.
        if order.status == "cancelled" {
            let failed = order.saga_failed.as_ref().map(|(code, _)| code.as_str());
            if order.saga_outcome.as_deref() != Some("cancelled")
                || failed.is_none()
                || (failed != order.reason_code.as_deref() && order.reason_code.as_deref() != Some("requested"))
            {
                violations.push(format!("{id}: cancelled, its saga {order:?}"));
            }
        }
        // Ended (confirmed, or failed) by its deadline.
        let ended = match (order.saga_confirmed_at, &order.saga_failed) {
            (Some(confirmed), Some((_, failed))) => Some(confirmed.min(*failed)),
            (Some(confirmed), None) => Some(confirmed),
            (None, Some((_, failed))) => Some(*failed),
            (None, None) => None,
        };
        match (ended, order.deadline) {
            (Some(ended), Some(deadline)) if ended <= deadline + DEADLINE_SLACK => {}
            _ => violations.push(format!("{id}: not ended by its deadline: {order:?}")),
        }
    }

    // Stock: the inventory's own fold (GET) and its log agree; nothing leaked, nothing released
    // twice.
    let (stock, stock_violations) = inventory_fold(&inventory).await?;
    violations.extend(stock_violations);
    for (n, product) in products.iter().enumerate() {
        let (initial, holds) = stock.get(product).cloned().unwrap_or_default();
        if initial != PRODUCTS[n].0 {
            violations.push(format!("product {n}: added with {initial}, not {}", PRODUCTS[n].0));
        }
        let reserved: i64 = holds.values().sum();
        let available = inventory.ok(&format!("/v1/products/{product}")).await?["available"]
            .as_i64()
            .context("no available")?;
        if available + reserved != initial {
            violations.push(format!(
                "product {n}: {available} available + {reserved} reserved ≠ its stock {initial}"
            ));
        }
        let kept: i64 = log
            .orders
            .values()
            .filter(|o| ["confirmed", "shipped", "delivered"].contains(&o.status.as_str()))
            .flat_map(|o| o.lines.iter())
            .filter(|(p, _)| p == product)
            .map(|(_, q)| q)
            .sum();
        if reserved != kept {
            violations.push(format!(
                "product {n}: {reserved} reserved, the confirmed and shipped orders hold {kept}"
            ));
        }
        for (id, order) in &log.orders {
            if !["confirmed", "shipped", "delivered"].contains(&order.status.as_str()) {
                continue;
            }
            for (_, quantity) in order.lines.iter().filter(|(p, _)| p == product) {
                if holds.get(id) != Some(quantity) {
                    violations.push(format!(
                        "product {n}: {} order {id} holds {:?} of its {quantity}",
                        order.status,
                        holds.get(id)
                    ));
                }
            }
        }
        for (order, held) in &holds {
            match log.orders.get(order) {
                Some(o) if o.status == "cancelled" => {
                    violations.push(format!("product {n}: cancelled order {order} still holds {held}"));
                }
                Some(o) if !o.lines.contains(&(*product, *held)) => {
                    violations.push(format!("product {n}: {order} holds {held}, its lines {:?}", o.lines));
                }
                Some(_) => {}
                None => violations.push(format!("product {n}: unknown order {order} holds {held}")),
            }
        }
    }

    // Money: every payment the saga's; none left open for a cancelled order; captures only of
    // shipped orders; refunds only of captures.
    let (payments_by_id, payment_violations) = payments_fold(&payments).await?;
    violations.extend(payment_violations);
    for (id, payment) in &payments_by_id {
        let Some(order) = log.orders.get(&payment.order) else {
            violations.push(format!("payment {id} of unknown order {}", payment.order));
            continue;
        };
        if *id != payment_id(payment.order) {
            violations.push(format!("payment {id} of {} is not the saga's", payment.order));
        }
        if payment.captured > 0 && !["shipped", "delivered"].contains(&order.status.as_str()) {
            violations.push(format!("payment {id}: captured, its order {}", order.status));
        }
        if order.status == "cancelled" && payment.open_authorization() {
            violations.push(format!(
                "payment {id}: authorized, neither captured nor voided, for cancelled order {}",
                payment.order
            ));
        }
        // Declined: the order never confirmed (cancelled `payment_declined`, or by its client
        // while the provider was being asked).
        if payment.declined && (order.status != "cancelled" || order.saga_confirmed_at.is_some()) {
            violations.push(format!("payment {id}: declined, its order {order:?}"));
        }
    }
    for (id, order) in &log.orders {
        let payment = payments_by_id.get(&payment_id(*id));
        let total = order.total;
        match order.status.as_str() {
            "confirmed" if !payment.is_some_and(|p| p.open_authorization() && p.authorized == total) => {
                violations.push(format!("{id}: confirmed, its payment {payment:?}"));
            }
            "shipped" | "delivered"
                if !payment.is_some_and(|p| p.captured == total && p.refunded == 0 && !p.voided) =>
            {
                violations.push(format!("{id}: shipped, its payment {payment:?}"));
            }
            _ => {}
        }
    }

    // The services' own views agree: nothing parked, and a sample of orders' overviews (the
    // order, its saga, its reservations, its payment, each from its owner) match the logs.
    let parked = orders.ok("/v1/sagas/parked").await?;
    if parked["order_ids"] != json!([]) {
        violations.push(format!("parked: {parked}"));
    }
    for (id, _) in placed.iter().step_by((placed.len() / 60).max(1)) {
        let overview = orders.ok(&format!("/v1/orders/{id}/overview")).await?;
        let order = &log.orders[id];
        let held: Vec<i64> = overview["reservations"]
            .as_array()
            .map(|all| all.iter().map(|r| r["quantity"].as_i64().unwrap_or(-1)).collect())
            .unwrap_or_default();
        let expected_held: Vec<i64> = order
            .lines
            .iter()
            .map(|(_, q)| if order.status == "cancelled" { 0 } else { *q })
            .collect();
        if overview["order"]["status"] != order.status.as_str()
            || overview["saga"]["outcome"].as_str() != order.saga_outcome.as_deref()
            || held != expected_held
            || overview["missing"] != json!([])
        {
            violations.push(format!("{id}: the overview {overview} ≠ the logs' {order:?}"));
        }
    }

    // What happened.
    let mut statuses: BTreeMap<&str, usize> = BTreeMap::new();
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let (mut reached_confirmed, mut overtaken) = (0, 0);
    for order in log.orders.values() {
        // A client's cancellation that reached the order while its saga compensated for a
        // failure of its own (the order says `requested`, the saga its own reason).
        if order.reason_code.as_deref() == Some("requested")
            && order.saga_failed.as_ref().is_some_and(|(code, _)| code != "requested")
        {
            overtaken += 1;
        }
        *statuses.entry(order.status.as_str()).or_default() += 1;
        if let Some(code) = &order.reason_code {
            *reasons.entry(code.clone()).or_default() += 1;
        }
        if order.saga_confirmed_at.is_some() {
            reached_confirmed += 1;
        }
    }
    let payment_states = payments_by_id
        .values()
        .fold(BTreeMap::<&str, usize>::new(), |mut counts, p| {
            let state = if p.refunded > 0 {
                "refunded"
            } else if p.captured > 0 {
                "captured"
            } else if p.declined {
                "declined"
            } else if p.voided {
                "voided"
            } else {
                "authorized"
            };
            *counts.entry(state).or_default() += 1;
            counts
        });
    eprintln!(
        "saga_kill: {} orders placed in {:.1}s ({rate:.1}/s accepted, {RATE}/s offered, {} placements retried), \
         the orders service killed {kills} times (down {:.1}s in all); settled {:.1}s after the traffic; \
         {reached_confirmed} confirmed by their saga; now {statuses:?}; cancelled per reason {reasons:?}; \
         shipped {}, cancelled once confirmed {}, cancelled while pending {} (and {} too late; {overtaken} while \
         their saga compensated already); payments {payment_states:?}; \
         orders log {} events; setup {:.1}s, total {:.1}s",
        placed.len(),
        traffic_took.as_secs_f64(),
        traffic.retries.load(Ordering::Relaxed),
        down_for.as_secs_f64(),
        settled_in.as_secs_f64(),
        traffic.shipped.load(Ordering::Relaxed),
        traffic.cancelled_confirmed.load(Ordering::Relaxed),
        traffic.cancelled_pending.load(Ordering::Relaxed),
        traffic.cancel_too_late.load(Ordering::Relaxed),
        log.events,
        setup.as_secs_f64(),
        started.elapsed().as_secs_f64(),
    );
    ensure!(
        violations.is_empty(),
        "{} violations of the saga's invariant, e.g.:\n{}",
        violations.len(),
        violations[..violations.len().min(20)].join("\n")
    );
    ensure!(
        kills >= MIN_KILLS,
        "the orders service was killed {kills} times, fewer than {MIN_KILLS}"
    );
    ensure!(
        others_killed.len() == 2,
        "the inventory and payments services should each have been killed: {others_killed:?}"
    );
    let (published, head) = relay_published_everything(deployment, Service::Inventory).await?;
    eprintln!(
        "saga_kill: the inventory relay published all {published} events of its store, across its kills \
         (positions up to {head}: {} left unused by commits killed halfway)",
        head - published
    );
    ensure!(
        rate >= MIN_RATE,
        "{rate:.1} orders/s accepted ({} in {:.1}s), fewer than {MIN_RATE}",
        placed.len(),
        (last_placed - traffic_started).as_secs_f64()
    );
    ensure!(
        reasons.get("out_of_stock").is_some_and(|&n| n > 0) && reasons.get("payment_declined").is_some_and(|&n| n > 0),
        "the traffic should have met both refusals: {reasons:?}"
    );
    Ok(())
}

/// Reads every topic of `service`'s categories (this deployment's prefix) until each event of its
/// store has arrived (at least once: a kill between the broker's acknowledgement and the
/// checkpoint republishes); answers how many events that is, and the last position. The store's positions are read
/// from it, not counted up to its head: a commit killed halfway leaves its positions unused.
async fn relay_published_everything(deployment: &Deployment, service: Service) -> anyhow::Result<(u64, u64)> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&deployment.stores[service.name()])
        .await?;
    let store = PgEventStore::open(pool, StoreOptions::default()).await?;
    let mut stored = BTreeSet::new();
    loop {
        let page = store.read_all(stored.last().copied().unwrap_or(0), 1000).await?;
        if page.is_empty() {
            break;
        }
        stored.extend(page.iter().map(|e| e.position));
    }
    ensure!(!stored.is_empty(), "the {service:?} store is empty");
    let topics: Vec<String> = Category::ALL
        .into_iter()
        .filter(|c| Service::owning(*c) == service)
        .map(|c| format!("{}{}", deployment.prefix, c.topic()))
        .collect();
    let consumer: StreamConsumer = testkit::kafka::client_config()
        .set("group.id", testkit::kafka::unique_group("saga_kill_relay_check"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()?;
    consumer.subscribe(&topics.iter().map(String::as_str).collect::<Vec<_>>())?;
    let mut seen = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while seen.len() < stored.len() {
        ensure!(
            Instant::now() < deadline,
            "{} of the {} events of the {service:?} store reached {topics:?}; missing e.g. {:?}",
            seen.len(),
            stored.len(),
            stored.difference(&seen).take(5).collect::<Vec<_>>()
        );
        let Ok(Ok(message)) = tokio::time::timeout(Duration::from_secs(5), consumer.recv()).await else {
            continue;
        };
        let envelope = Envelope::decode(message.payload().context("a record without a value")?)?;
        if stored.contains(&envelope.global_position) {
            seen.insert(envelope.global_position);
        }
    }
    Ok((stored.len() as u64, stored.last().copied().unwrap_or(0)))
}
