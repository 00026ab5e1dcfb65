//! End to end through `scripts/dev-up`, the distributed deployment as local processes: an
//! instance of its own (databases, roles, topics, consumer groups, ClickHouse database and user,
//! ports, state folder) beside the rest of the suite, driven over HTTP only. It starts a whole
//! deployment (four write services, two projection workers, read-api, the console), once, and
//! checks on it:
//!
//! - commands go to the service that owns them (customers, inventory, orders) with the
//!   instance's bearer token; every answer names its service and its consistency token, and
//!   read-api answers a read that waits for any service's token (read-your-writes);
//! - the place-order saga (ADR 0010): an order is placed `pending` and confirmed by its saga
//!   (stock reserved at inventory, the payment authorized at payments under the id derived
//!   from the order's), a client's confirm is refused, shipping captures, cancelling voids and
//!   releases; only the orders service's token has the `service` scope payments and
//!   reservations need;
//! - the dashboard and the analytics are read back from read-api (PostgreSQL and ClickHouse,
//!   through read-only credentials); an as-of read is compared with the orders service's fold;
//!   a rebuild (`scripts/dev-up orderflow`, every service's store through one `{service}`
//!   template) changes no answer; a projection worker killed with SIGKILL and restarted by
//!   `scripts/dev-up restart` lets new orders through;
//! - database per service: no service's role can connect to another's database;
//! - the console (one origin in front of read-api, the services and projections-1's rebuild
//!   endpoint): its page and compiled-in script (gzipped when asked); the dashboard through it
//!   is read-api's own answer; a service's log and a stream's events through it need a token,
//!   and the read-only one (scope `read`) is enough; a command is refused (405); a rebuild
//!   needs `admin` (the read-only token: 403), and one started through it goes live;
//! - isolation: with the payments service stopped, and then with its database refusing
//!   connections, orders are still taken and wait `pending` (stock reserved) and the dashboard
//!   answers; once payments is back they are confirmed, a capture that waited is made, and
//!   nothing was lost;
//! - `down` stops every process (a guard runs it when the test fails) and `down --purge` drops
//!   the instance.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use sqlx::Connection as _;
use uuid::Uuid;
use write_side::orders::saga;

mod support;

use support::free_port;

/// The write services, each a `write-side --service <name>` process of the instance.
const WRITE_SERVICES: [&str; 4] = ["customers", "inventory", "orders", "payments"];
/// The projection workers' Kafka session: tansu hands a killed member's partitions over only
/// when a member joins after its session expired (ADR 0004); a short one keeps the restart
/// below quick.
const SESSION_TIMEOUT: Duration = Duration::from_secs(6);

/// The repository: `scripts/dev-up` lives there.
fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The folder of the `orderflow` binary under test, with `write-side`, `projections`, `read-api`
/// and `console` beside it.
///
/// `write-side`, `projections`, `read-api` and `console` (package `web-console`) are binaries of
/// other workspace packages, so a test of this package cannot name them with `CARGO_BIN_EXE_*`. `cargo nextest run --workspace`
/// (what `scripts/test` runs) builds every package's binaries into this same folder; a run of
/// this package alone (`-p orderflow`) does not, and may find them there but older than the
/// code, so cargo is asked for them here every time, with the profile of the folder (nothing
/// to do when they are current).
fn binaries() -> PathBuf {
    let dir = Path::new(env!("CARGO_BIN_EXE_orderflow"))
        .parent()
        .expect("the binary's folder")
        .to_path_buf();
    {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = std::process::Command::new(cargo);
        build
            .args([
                "build",
                "-p",
                "write-side",
                "-p",
                "projections",
                "-p",
                "read-api",
                "-p",
                "web-console",
                "--bins",
            ])
            .current_dir(repo());
        if dir.file_name().is_some_and(|name| name == "release") {
            build.arg("--release");
        }
        let status = build.status().expect("run cargo build");
        assert!(
            status.success(),
            "cargo build -p write-side -p projections -p read-api -p web-console --bins: {status}"
        );
    }
    dir
}

/// `host:port` of each server of `scripts/services`, as testkit finds them.
fn server_ports() -> (u16, u16, u16) {
    let pg: sqlx::postgres::PgConnectOptions = testkit::postgres::admin_url()
        .parse()
        .expect("ORDERFLOW_TEST_PG_URL is a PostgreSQL URL");
    let port_of = |address: &str| -> u16 {
        address
            .trim_end_matches('/')
            .rsplit(':')
            .next()
            .and_then(|port| port.parse().ok())
            .unwrap_or_else(|| panic!("no port in {address}"))
    };
    (
        pg.get_port(),
        port_of(&testkit::clickhouse::url()),
        port_of(&testkit::kafka::bootstrap_servers()),
    )
}

/// Fails the test, naming the script that starts them, when a server does not accept
/// connections (dev-up would fail too, later and less clearly).
async fn servers_answer(ports: (u16, u16, u16)) {
    for (server, port) in [("PostgreSQL", ports.0), ("ClickHouse", ports.1), ("Kafka", ports.2)] {
        let connect = tokio::net::TcpStream::connect(("127.0.0.1", port));
        match tokio::time::timeout(Duration::from_secs(5), connect).await {
            Ok(Ok(_)) => {}
            _ => panic!(
                "cannot reach {server} on 127.0.0.1:{port}\nstart it with `{}`",
                testkit::START_SERVICES
            ),
        }
    }
}

/// Is `pid` a process that still runs (not gone, not a zombie nobody reaped)?
fn running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// `count` free ports, all different.
fn free_ports(count: usize) -> Vec<u16> {
    let mut ports = BTreeSet::new();
    while ports.len() < count {
        ports.insert(free_port());
    }
    ports.into_iter().collect()
}

/// One isolated `scripts/dev-up` instance. Dropping it runs `scripts/dev-up down`, so a failed
/// test leaves no process behind (its databases and logs stay, to be read).
struct DevUp {
    dir: PathBuf,
    /// ORDERFLOW_DEV_PREFIX: before every database, role, topic and group name.
    prefix: String,
    env: Vec<(String, String)>,
    customers: Http,
    inventory: Http,
    orders: Http,
    payments: Http,
    read: Http,
    /// The console, without a token (each check gives it the one it needs).
    console: Http,
    /// Each service's port: the four write services, read-api, the console, and projections-1's
    /// rebuild endpoint (`projections`).
    ports: BTreeMap<&'static str, u16>,
    stopped: bool,
}

impl DevUp {
    fn new(bin_dir: &Path) -> DevUp {
        let id = Uuid::new_v4().simple().to_string();
        // Named as testkit names test databases (`orderflow_test_<unix seconds>_...`), so that
        // `scripts/clean-test-databases` drops the databases and roles a failed run leaves once
        // they are old (its ClickHouse user stays). Short enough for PostgreSQL's 63-character
        // names: the longest, `<prefix>orderflow_orders_replica`, is 63.
        let prefix = format!("{}_dev_{}_", testkit::database_prefix(), &id[..8]);
        let dir = std::env::temp_dir().join(format!("orderflow-dev-up-test-{id}"));
        let free = free_ports(7);
        let ports: BTreeMap<&'static str, u16> = [
            "orders",
            "read-api",
            "customers",
            "inventory",
            "payments",
            "console",
            "projections",
        ]
        .into_iter()
        .zip(free)
        .collect();
        let (pg, clickhouse, kafka) = server_ports();
        let env = [
            ("ORDERFLOW_DEV_DIR", dir.display().to_string()),
            ("ORDERFLOW_DEV_PREFIX", prefix.clone()),
            ("ORDERFLOW_ORDERS_PORT", ports["orders"].to_string()),
            ("ORDERFLOW_READ_PORT", ports["read-api"].to_string()),
            ("ORDERFLOW_CUSTOMERS_PORT", ports["customers"].to_string()),
            ("ORDERFLOW_INVENTORY_PORT", ports["inventory"].to_string()),
            ("ORDERFLOW_PAYMENTS_PORT", ports["payments"].to_string()),
            ("ORDERFLOW_CONSOLE_PORT", ports["console"].to_string()),
            ("ORDERFLOW_PROJECTIONS_PORT", ports["projections"].to_string()),
            // scripts/test brought the servers up; a missing one fails dev-up, naming the script.
            ("ORDERFLOW_DEV_SKIP_SERVICES", "1".into()),
            ("ORDERFLOW_BIN_DIR", bin_dir.display().to_string()),
            ("ORDERFLOW_SERVICES_PG_PORT", pg.to_string()),
            ("ORDERFLOW_SERVICES_CLICKHOUSE_PORT", clickhouse.to_string()),
            ("ORDERFLOW_SERVICES_KAFKA_PORT", kafka.to_string()),
            ("ORDERFLOW_SESSION_TIMEOUT_MS", SESSION_TIMEOUT.as_millis().to_string()),
            ("ORDERFLOW_LOG", "info".into()),
        ]
        .into_iter()
        .map(|(key, value)| (key.to_owned(), value))
        .collect();
        DevUp {
            dir,
            prefix,
            env,
            customers: Http::new(ports["customers"]),
            inventory: Http::new(ports["inventory"]),
            orders: Http::new(ports["orders"]),
            payments: Http::new(ports["payments"]),
            read: Http::new(ports["read-api"]),
            console: Http::new(ports["console"]),
            ports,
            stopped: false,
        }
    }

    /// The client of a write service.
    fn service(&self, name: &str) -> &Http {
        match name {
            "customers" => &self.customers,
            "inventory" => &self.inventory,
            "orders" => &self.orders,
            "payments" => &self.payments,
            other => panic!("no write service {other}"),
        }
    }

    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(repo().join("scripts/dev-up"));
        // Only this test's settings: none of the caller's ORDERFLOW_* (a developer's shell).
        for (key, _) in std::env::vars() {
            if key.starts_with("ORDERFLOW_") && !key.starts_with("ORDERFLOW_TEST_") {
                command.env_remove(key);
            }
        }
        command
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(repo())
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        command
    }

    /// Runs `scripts/dev-up ARGS`; its stdout, or an error with everything it printed.
    async fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = tokio::time::timeout(Duration::from_secs(180), self.command(args).output())
            .await
            .with_context(|| format!("scripts/dev-up {} ran for 180 s", args.join(" ")))?
            .with_context(|| format!("run scripts/dev-up {}", args.join(" ")))?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        ensure!(
            output.status.success(),
            "scripts/dev-up {}: {}\n--- stdout ---\n{stdout}\n--- stderr ---\n{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(stdout)
    }

    /// `scripts/dev-up status`, which must fail (a service is down): what it printed.
    async fn status_fails(&self) -> anyhow::Result<String> {
        let status = self.command(&["status"]).output().await?;
        let said = String::from_utf8_lossy(&status.stdout).into_owned();
        ensure!(
            !status.status.success(),
            "status says all is well with a service down:\n{said}"
        );
        Ok(said)
    }

    /// The pid `scripts/dev-up` recorded for `service`.
    fn pid(&self, service: &str) -> anyhow::Result<u32> {
        let file = self.dir.join("pids").join(format!("{service}.pid"));
        let text = std::fs::read_to_string(&file).with_context(|| format!("read {}", file.display()))?;
        text.trim()
            .parse()
            .with_context(|| format!("{}: not a pid: {text:?}", file.display()))
    }

    fn pids(&self) -> anyhow::Result<BTreeMap<String, u32>> {
        let mut pids = BTreeMap::new();
        for service in WRITE_SERVICES
            .into_iter()
            .chain(["projections-1", "projections-2", "read-api", "console"])
        {
            pids.insert(service.to_owned(), self.pid(service)?);
        }
        Ok(pids)
    }

    /// A secret file of the state folder, trimmed.
    fn secret(&self, file: &str) -> anyhow::Result<String> {
        let text = std::fs::read_to_string(self.dir.join(file)).with_context(|| format!("read the {file} file"))?;
        Ok(text.trim().to_owned())
    }

    /// Every secret of the instance: the three bearer tokens and each password.
    fn secrets(&self) -> anyhow::Result<Vec<String>> {
        let mut secrets = vec![
            self.secret("token")?,
            self.secret("read-token")?,
            self.secret("service-token")?,
        ];
        for line in self.secret("secrets.env")?.lines() {
            if let Some((_, value)) = line.split_once('=').filter(|_| !line.starts_with('#')) {
                secrets.push(value.to_owned());
            }
        }
        ensure!(
            secrets.len() >= 10 && secrets.iter().all(|s| s.len() >= 32),
            "fewer or shorter secrets than expected"
        );
        Ok(secrets)
    }

    /// The end of every service's log, for a failure message.
    fn logs(&self) -> String {
        let mut out = String::new();
        let Ok(entries) = std::fs::read_dir(self.dir.join("logs")) else {
            return "(no logs)".into();
        };
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for path in paths {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(25)..].join("\n");
            out.push_str(&format!("--- {} ---\n{tail}\n", path.display()));
        }
        out
    }

    /// No log of the instance shows a secret.
    fn logs_keep_secrets(&self) -> anyhow::Result<()> {
        let secrets = self.secrets()?;
        for log in std::fs::read_dir(self.dir.join("logs"))? {
            let path = log?.path();
            let text = std::fs::read_to_string(&path)?;
            ensure!(
                !secrets.iter().any(|secret| text.contains(secret.as_str())),
                "{} shows a secret",
                path.display()
            );
        }
        Ok(())
    }
}

impl Drop for DevUp {
    fn drop(&mut self) {
        if !self.stopped {
            let mut down = self.command(&["down"]).into_std();
            down.stdout(std::process::Stdio::null());
            let _ = down.status();
        }
    }
}

/// JSON over HTTP/1.1 to one service, with a bearer token when given one.
struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
    token: Option<String>,
}

impl Http {
    fn new(port: u16) -> Http {
        Http {
            client: Client::builder(TokioExecutor::new()).build_http(),
            base: format!("http://127.0.0.1:{port}"),
            token: None,
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<(StatusCode, Value)> {
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("content-type", "application/json");
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let body = body.map_or_else(Vec::new, |b| b.to_string().into_bytes());
        let response = tokio::time::timeout(
            Duration::from_secs(30),
            self.client.request(request.body(Full::new(Bytes::from(body)))?),
        )
        .await
        .with_context(|| format!("{path}: no answer in 30 s"))??;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        let value =
            serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        Ok((status, value))
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> anyhow::Result<(StatusCode, Value)> {
        self.send(method, path, body, &[]).await
    }

    async fn get(&self, path: &str) -> anyhow::Result<(StatusCode, Value)> {
        self.call(Method::GET, path, None).await
    }

    /// GET that must answer 200.
    async fn ok(&self, path: &str) -> anyhow::Result<Value> {
        let (status, body) = self.get(path).await?;
        ensure!(status == StatusCode::OK, "GET {path}: {status} {body}");
        Ok(body)
    }

    /// GET that must answer 200 within 30 s: a read with `min_position` answers 503
    /// `not_caught_up` while the projection is behind (e.g. during a rebalance), and is retried.
    async fn caught_up(&self, path: &str) -> anyhow::Result<Value> {
        eventually(&format!("GET {path}"), Duration::from_secs(30), async || {
            self.ok(path).await
        })
        .await
    }

    /// POSTs a command to the `service` that owns it; its answer's consistency token
    /// (`orders:12`), once the answer names that service and that token.
    async fn command(&self, service: &str, path: &str, body: Value, expected: StatusCode) -> anyhow::Result<String> {
        self.command_with(service, path, body, expected, &[]).await
    }

    async fn command_with(
        &self,
        service: &str,
        path: &str,
        body: Value,
        expected: StatusCode,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<String> {
        let (status, answer) = self.send(Method::POST, path, Some(body), headers).await?;
        ensure!(status == expected, "POST {path}: {status} {answer}");
        let position = answer["position"]
            .as_u64()
            .with_context(|| format!("POST {path}: no position in {answer}"))?;
        ensure!(
            answer["service"] == service && answer["token"] == format!("{service}:{position}"),
            "POST {path}: the answer does not name {service} and its token: {answer}"
        );
        Ok(format!("{service}:{position}"))
    }
}

/// Retries `check` until it succeeds, at most `within`; the last failure otherwise.
async fn eventually<T>(what: &str, within: Duration, check: impl AsyncFn() -> anyhow::Result<T>) -> anyhow::Result<T> {
    let deadline = Instant::now() + within;
    loop {
        match check().await {
            Ok(value) => return Ok(value),
            Err(e) if Instant::now() >= deadline => return Err(e.context(format!("{what}: not within {within:?}"))),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// The position of a consistency token (`orders:12` → 12).
fn position_of(token: &str) -> u64 {
    token
        .rsplit_once(':')
        .and_then(|(_, position)| position.parse().ok())
        .unwrap_or_else(|| panic!("not a token: {token}"))
}

/// An order the test placed, and what the read side must say about it.
#[derive(Debug, Clone)]
struct Placed {
    id: Uuid,
    customer: &'static str,
    total: i64,
    items: i64,
    /// Its status now: `pending` until its saga confirms it.
    status: &'static str,
    /// Every status it reached (the funnel counts an order under each).
    reached: BTreeSet<&'static str>,
    /// Why it was cancelled (`requested` for the test's own cancellations).
    reason_code: Option<&'static str>,
}

impl Placed {
    /// What the dashboard must say of its place-order saga (`saga_state`) and its payment
    /// (`payment_status`), given where the test left it: a pending order's saga waits for a
    /// service (reserving or authorizing, nothing paid); a confirmed one awaits its shipment
    /// (authorized); a shipped one captured and completed; a cancelled one (always cancelled
    /// after its confirmation here) voided its authorization and completed.
    fn saga_and_payment(&self) -> (&'static [&'static str], &'static str) {
        match self.status {
            "pending" => (&["reserving", "authorizing"], "none"),
            "confirmed" => (&["awaiting_shipment"], "authorized"),
            "shipped" | "delivered" => (&["completed"], "captured"),
            "cancelled" => (&["completed"], "voided"),
            other => panic!("no status {other}"),
        }
    }
}

struct Shop {
    customers: BTreeMap<&'static str, Uuid>,
    products: Vec<(Uuid, i64)>,
    orders: Vec<Placed>,
    /// The latest token each service answered.
    tokens: BTreeMap<String, String>,
}

impl Shop {
    fn new() -> Shop {
        Shop {
            customers: BTreeMap::new(),
            products: Vec::new(),
            orders: Vec::new(),
            tokens: BTreeMap::new(),
        }
    }

    /// Keeps `token` if it is its service's latest.
    fn note(&mut self, token: &str) -> String {
        let (service, _) = token.split_once(':').expect("a token");
        let latest = self
            .tokens
            .entry(service.to_owned())
            .or_insert_with(|| token.to_owned());
        if position_of(token) > position_of(latest) {
            *latest = token.to_owned();
        }
        token.to_owned()
    }

    /// The latest token of `service`'s log.
    fn token(&self, service: &str) -> String {
        self.tokens
            .get(service)
            .cloned()
            .unwrap_or_else(|| panic!("no command went to {service}"))
    }

    fn order_mut(&mut self, order: Uuid) -> &mut Placed {
        self.orders
            .iter_mut()
            .find(|o| o.id == order)
            .unwrap_or_else(|| panic!("the test did not place {order}"))
    }

    async fn register(&mut self, dev: &DevUp, name: &'static str) -> anyhow::Result<String> {
        let id = Uuid::now_v7();
        let email = format!("{}@example.com", name.to_lowercase());
        let token = dev
            .customers
            .command(
                "customers",
                "/v1/customers",
                json!({"customer_id": id, "name": name, "email": email}),
                StatusCode::CREATED,
            )
            .await?;
        self.customers.insert(name, id);
        Ok(self.note(&token))
    }

    async fn add_product(&mut self, dev: &DevUp, price: i64) -> anyhow::Result<String> {
        let id = Uuid::now_v7();
        let n = self.products.len();
        let token = dev
            .inventory
            .command(
                "inventory",
                "/v1/products",
                json!({"product_id": id, "sku": format!("SKU-{n}"), "name": format!("Product {n}"),
                       "price_minor": price, "currency": "EUR", "stock": 100}),
                StatusCode::CREATED,
            )
            .await?;
        self.products.push((id, price));
        Ok(self.note(&token))
    }

    /// Places an order at the orders service: accepted at once, `pending` (its saga reserves
    /// the stock, authorizes the payment and confirms it afterwards).
    async fn place(&mut self, dev: &DevUp, customer: &'static str, lines: &[(usize, i64)]) -> anyhow::Result<Placed> {
        let id = Uuid::now_v7();
        let body_lines: Vec<Value> = lines
            .iter()
            .map(|&(product, quantity)| json!({"product_id": self.products[product].0, "quantity": quantity}))
            .collect();
        let token = dev
            .orders
            .command_with(
                "orders",
                "/v1/orders",
                json!({"order_id": id, "customer_id": self.customers[customer], "lines": body_lines}),
                StatusCode::CREATED,
                &[("idempotency-key", &format!("dev-up-test-place-{id}"))],
            )
            .await?;
        self.note(&token);
        let placed = Placed {
            id,
            customer,
            total: lines.iter().map(|&(p, q)| self.products[p].1 * q).sum(),
            items: lines.iter().map(|&(_, q)| q).sum(),
            status: "pending",
            reached: BTreeSet::from(["placed"]),
            reason_code: None,
        };
        self.orders.push(placed.clone());
        Ok(placed)
    }

    /// Places an order and waits until its saga has confirmed it.
    async fn place_confirmed(
        &mut self,
        dev: &DevUp,
        customer: &'static str,
        lines: &[(usize, i64)],
    ) -> anyhow::Result<Placed> {
        let placed = self.place(dev, customer, lines).await?;
        self.confirmed(dev, placed.id).await?;
        Ok(self.order_mut(placed.id).clone())
    }

    /// Waits (60 s at most) until the saga of `order` has reserved its stock, authorized its
    /// payment and confirmed it; notes the confirmation's token and the payment's.
    async fn confirmed(&mut self, dev: &DevUp, order: Uuid) -> anyhow::Result<String> {
        let state = eventually("the saga confirms the order", Duration::from_secs(60), async || {
            let state = dev.orders.ok(&format!("/v1/orders/{order}/state")).await?;
            ensure!(state["status"] == "confirmed", "the order: {state}");
            let saga = dev.orders.ok(&format!("/v1/sagas/{order}")).await?;
            ensure!(
                saga["phase"] == "awaiting_shipment"
                    && saga["authorized"] == true
                    && saga["confirmed"] == true
                    && saga["outcome"].is_null()
                    && saga["payment_id"] == saga::payment_id(order).to_string(),
                "its saga: {saga}"
            );
            Ok(state)
        })
        .await?;
        let placed = self.order_mut(order);
        placed.status = "confirmed";
        placed.reached.insert("confirmed");
        let total = placed.total;
        let payment = self.payment(dev, order).await?;
        ensure!(
            payment["status"] == "authorized" && payment["authorized_minor"] == total,
            "the payment the saga authorized for {order} ({total}): {payment}"
        );
        Ok(self.note(&state_token(&state)?))
    }

    /// `step` is ship, deliver or cancel (confirm is the saga's); the orders service's token.
    /// Shipping and cancelling give the saga work: this waits (60 s at most) until it has done
    /// it (captured the payment; voided it and released the stock) and completed.
    async fn step(&mut self, dev: &DevUp, order: Uuid, step: &str) -> anyhow::Result<String> {
        let (body, status) = match step {
            "ship" => (json!({"carrier": "DHL", "tracking": format!("T-{order}")}), "shipped"),
            "deliver" => (json!({}), "delivered"),
            "cancel" => (json!({"reason": "changed mind"}), "cancelled"),
            other => bail!("no step {other}"),
        };
        let token = dev
            .orders
            .command("orders", &format!("/v1/orders/{order}/{step}"), body, StatusCode::OK)
            .await?;
        let placed = self.order_mut(order);
        placed.status = status;
        placed.reached.insert(status);
        if step == "cancel" {
            placed.reason_code = Some("requested");
        }
        let total = placed.total;
        let token = self.note(&token);
        match step {
            "ship" => {
                self.saga_completes(dev, order, "captured").await?;
                let payment = self.payment(dev, order).await?;
                ensure!(
                    payment["status"] == "captured" && payment["captured_minor"] == total,
                    "the payment once {order} shipped: {payment}"
                );
            }
            "cancel" => {
                let saga = self.saga_completes(dev, order, "cancelled").await?;
                ensure!(
                    saga["reason_code"] == "requested" && saga["voided"] == true,
                    "the saga of {order}, cancelled by its client: {saga}"
                );
                let payment = self.payment(dev, order).await?;
                ensure!(
                    payment["status"] == "voided",
                    "the payment once {order} was cancelled: {payment}"
                );
                let state = dev.orders.ok(&format!("/v1/orders/{order}/state")).await?;
                ensure!(
                    state["status"] == "cancelled" && state["cancellation_reason_code"] == "requested",
                    "{state}"
                );
            }
            _ => {}
        }
        Ok(token)
    }

    /// Waits (60 s at most) until the saga of `order` completed with `outcome`; the saga.
    async fn saga_completes(&mut self, dev: &DevUp, order: Uuid, outcome: &str) -> anyhow::Result<Value> {
        let saga = eventually(
            &format!("the saga of {order} completes ({outcome})"),
            Duration::from_secs(60),
            async || {
                let saga = dev.orders.ok(&format!("/v1/sagas/{order}")).await?;
                ensure!(saga["phase"] == "completed" && saga["outcome"] == outcome, "{saga}");
                Ok(saga)
            },
        )
        .await?;
        // The saga's last event is in the orders log: a later read waits for its position.
        let version = saga["version"]
            .as_u64()
            .with_context(|| format!("no version in {saga}"))?;
        let page = dev
            .orders
            .ok(&format!(
                "/v1/streams/saga-{order}/events?from_version={version}&limit=1"
            ))
            .await?;
        let position = page["events"][0]["position"]
            .as_u64()
            .with_context(|| format!("no position in {page}"))?;
        self.note(&format!("orders:{position}"));
        Ok(saga)
    }

    /// The payment the saga made for `order` (its id derived from the order's), as the payments
    /// service tells it; notes its token.
    async fn payment(&mut self, dev: &DevUp, order: Uuid) -> anyhow::Result<Value> {
        let payment = dev
            .payments
            .ok(&format!("/v1/payments/{}", saga::payment_id(order)))
            .await?;
        ensure!(payment["order_id"] == order.to_string(), "{payment}");
        let position = payment["position"]
            .as_u64()
            .with_context(|| format!("no position in {payment}"))?;
        self.note(&format!("payments:{position}"));
        Ok(payment)
    }
}

/// The consistency token of an order's state (`GET /v1/orders/{id}/state`): its position in
/// the orders log.
fn state_token(state: &Value) -> anyhow::Result<String> {
    let position = state["position"]
        .as_u64()
        .with_context(|| format!("no position in {state}"))?;
    Ok(format!("orders:{position}"))
}

/// The dashboard's rows by order id, once read-api (after `min_position`, if given) shows every
/// order of `shop` as the test expects it: its status, total, items and customer, and where
/// its saga and its payment are.
async fn dashboard_matches(
    read: &Http,
    shop: &Shop,
    min_position: Option<&str>,
) -> anyhow::Result<BTreeMap<String, Value>> {
    let wait = min_position.map_or_else(String::new, |token| format!("&min_position={token}"));
    eventually("the dashboard shows every order", Duration::from_secs(60), async || {
        let page = read.ok(&format!("/v1/dashboard/orders?limit=500{wait}")).await?;
        let rows: BTreeMap<String, Value> = page["rows"]
            .as_array()
            .context("no rows")?
            .iter()
            .map(|row| (row["order_id"].as_str().unwrap_or_default().to_owned(), row.clone()))
            .collect();
        ensure!(
            rows.len() == shop.orders.len(),
            "{} rows for {} orders",
            rows.len(),
            shop.orders.len()
        );
        for order in &shop.orders {
            let row = rows
                .get(&order.id.to_string())
                .with_context(|| format!("no row for {}", order.id))?;
            ensure!(row["status"] == order.status, "{order:?}: {row}");
            ensure!(
                row["total_minor"] == order.total && row["currency"] == "EUR",
                "{order:?}: {row}"
            );
            ensure!(row["item_count"] == order.items, "{order:?}: {row}");
            ensure!(row["customer_name"] == order.customer, "{order:?}: {row}");
            let (sagas, payment) = order.saga_and_payment();
            ensure!(
                row["saga_state"].as_str().is_some_and(|state| sagas.contains(&state)),
                "{order:?}: saga_state {} (expected one of {sagas:?}): {row}",
                row["saga_state"]
            );
            ensure!(
                row["payment_status"] == payment,
                "{order:?}: payment_status {} (expected {payment}): {row}",
                row["payment_status"]
            );
            if payment != "none" {
                ensure!(
                    row["payment_id"] == saga::payment_id(order.id).to_string(),
                    "{order:?}: not the saga's payment: {row}"
                );
            }
            ensure!(
                row["reason_code"].as_str() == order.reason_code,
                "{order:?}: reason_code {}: {row}",
                row["reason_code"]
            );
        }
        Ok(rows)
    })
    .await
}

/// ClickHouse's revenue and funnel, through read-api, once they equal what the orders say:
/// revenue is the orders confirmed (by their saga), not cancelled, whose payment is authorized
/// or captured; the funnel counts each order under every status it reached, the ones still
/// pending, and the cancellations per reason code.
async fn analytics_match(read: &Http, shop: &Shop) -> anyhow::Result<(Value, Value)> {
    let reached = |status: &str| shop.orders.iter().filter(|o| o.reached.contains(status)).count();
    let kept: Vec<&Placed> = shop
        .orders
        .iter()
        .filter(|o| ["confirmed", "shipped", "delivered"].contains(&o.status))
        .collect();
    let revenue: i64 = kept.iter().map(|o| o.total).sum();
    let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
    for order in &shop.orders {
        if let Some(code) = order.reason_code {
            *reasons.entry(code).or_default() += 1;
        }
    }
    let from = (chrono::Utc::now() - chrono::Duration::days(1)).format("%Y-%m-%dT%H:%M:%SZ");
    let to = (chrono::Utc::now() + chrono::Duration::days(1)).format("%Y-%m-%dT%H:%M:%SZ");
    let orders = shop.token("orders");
    eventually("the analytics equal the orders", Duration::from_secs(60), async || {
        let answer = read
            .ok(&format!(
                "/v1/analytics/revenue?from={from}&to={to}&bucket=hour&min_position={orders}"
            ))
            .await?;
        let buckets = answer["buckets"].as_array().context("no buckets")?;
        let seen: i64 = buckets.iter().filter_map(|b| b["revenue_minor"].as_i64()).sum();
        let counted: u64 = buckets.iter().filter_map(|b| b["orders"].as_u64()).sum();
        ensure!(
            seen == revenue && counted == kept.len() as u64,
            "revenue {seen} over {counted} orders, the orders say {revenue} over {}: {answer}",
            kept.len()
        );
        let funnel = read
            .ok(&format!("/v1/analytics/order-funnel?min_position={orders}"))
            .await?;
        let expected = json!({
            "placed": shop.orders.len(),
            "pending": shop.orders.iter().filter(|o| o.status == "pending").count(),
            "confirmed": reached("confirmed"),
            "shipped": reached("shipped"),
            "delivered": reached("delivered"),
            "cancelled": reached("cancelled"),
        });
        for (status, n) in expected.as_object().context("an object")? {
            ensure!(funnel[status] == *n, "funnel {funnel}, expected {expected}");
        }
        let by_reason = funnel["cancellation_reasons"]
            .as_object()
            .with_context(|| format!("no cancellation_reasons in the funnel {funnel}"))?;
        for (code, n) in by_reason {
            let expected = reasons.get(code.as_str()).copied().unwrap_or(0);
            ensure!(
                n.as_u64() == Some(expected as u64),
                "funnel: {n} cancelled with {code}, expected {expected}: {funnel}"
            );
        }
        ensure!(
            reasons.keys().all(|code| by_reason.contains_key(*code)),
            "funnel: reasons {by_reason:?}, expected {reasons:?}"
        );
        Ok((answer, funnel))
    })
    .await
}

/// What a service runs with: the variables of its process.
fn environment_of(pid: u32) -> anyhow::Result<BTreeMap<String, String>> {
    let raw =
        std::fs::read(format!("/proc/{pid}/environ")).with_context(|| format!("read the environment of {pid}"))?;
    Ok(raw
        .split(|&b| b == 0)
        .filter_map(|entry| {
            let entry = String::from_utf8_lossy(entry);
            entry.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned()))
        })
        .collect())
}

/// The value of `variable` in the environment of `service`'s process.
fn variable_of(dev: &DevUp, service: &str, variable: &str) -> anyhow::Result<String> {
    environment_of(dev.pid(service)?)?
        .remove(variable)
        .with_context(|| format!("{service} runs without {variable}"))
}

/// read-api's credentials can read and cannot write, in PostgreSQL and in ClickHouse.
async fn read_api_is_read_only(dev: &DevUp) -> anyhow::Result<()> {
    let env = environment_of(dev.pid("read-api")?)?;
    let url = env
        .get("ORDERFLOW_READ_API_DB_URL")
        .context("read-api has no read database URL")?;
    let mut conn = sqlx::PgConnection::connect(url).await.context("connect as read-api")?;
    let versions: i64 = sqlx::query_scalar("SELECT count(*) FROM projection_versions")
        .fetch_one(&mut conn)
        .await
        .context("read-api's role reads the control tables")?;
    ensure!(versions > 0, "no projection versions");
    let write = sqlx::query("CREATE TABLE dev_up_probe (a integer)")
        .execute(&mut conn)
        .await;
    ensure!(write.is_err(), "read-api's PostgreSQL role could create a table");
    let write = sqlx::query("DELETE FROM projection_versions").execute(&mut conn).await;
    ensure!(write.is_err(), "read-api's PostgreSQL role could delete rows");
    conn.close().await.ok();

    let user = env
        .get("ORDERFLOW_READ_API_CLICKHOUSE_USER")
        .context("no ClickHouse user")?;
    let password = env
        .get("ORDERFLOW_READ_API_CLICKHOUSE_PASSWORD")
        .context("no ClickHouse password")?;
    ensure!(user != "default", "read-api reads ClickHouse as `default`");
    let database = env
        .get("ORDERFLOW_CLICKHOUSE_DATABASE")
        .context("no ClickHouse database")?;
    let clickhouse = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let statement = async |sql: String| -> anyhow::Result<(StatusCode, String)> {
        let request = hyper::Request::post(format!("{}/", testkit::clickhouse::url().trim_end_matches('/')))
            .header("X-ClickHouse-User", user)
            .header("X-ClickHouse-Key", password)
            .body(Full::new(Bytes::from(sql)))?;
        let response = clickhouse.request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    let (status, body) = statement(format!(
        "SELECT count() FROM system.tables WHERE database = '{database}'"
    ))
    .await?;
    ensure!(
        status == StatusCode::OK,
        "read-api's ClickHouse user cannot read: {status} {body}"
    );
    let (status, body) = statement(format!(
        "CREATE TABLE {database}.dev_up_probe (a UInt64) ENGINE = ReplacingMergeTree ORDER BY a"
    ))
    .await?;
    ensure!(
        status != StatusCode::OK,
        "read-api's ClickHouse user could create a table: {body}"
    );
    Ok(())
}

/// Database per service: each role of the instance, with the credentials its process runs with,
/// connects to its own databases and is refused by every other (`permission denied for
/// database`): the four services' event stores, the orders service's copy, the read database.
async fn roles_reach_their_own_databases_only(dev: &DevUp) -> anyhow::Result<()> {
    // (who, the URL its process has, the databases it may connect to)
    let mut roles: Vec<(String, String)> = Vec::new();
    for service in WRITE_SERVICES {
        roles.push((
            service.to_owned(),
            variable_of(dev, service, "ORDERFLOW_EVENT_STORE_URL")?,
        ));
    }
    let replica = variable_of(dev, "orders", "ORDERFLOW_REPLICA_DB_URL")?;
    roles.push((
        "projections".into(),
        variable_of(dev, "projections-1", "ORDERFLOW_READ_DB_URL")?,
    ));
    roles.push((
        "read-api".into(),
        variable_of(dev, "read-api", "ORDERFLOW_READ_API_DB_URL")?,
    ));
    let options =
        |url: &str| -> anyhow::Result<sqlx::postgres::PgConnectOptions> { url.parse().context("a PostgreSQL URL") };
    let database_of = |url: &str| -> anyhow::Result<String> {
        options(url)?
            .get_database()
            .map(str::to_owned)
            .context("a URL with a database")
    };
    let mut allowed: BTreeSet<(String, String)> = BTreeSet::new();
    let mut databases = BTreeSet::new();
    for (who, url) in &roles {
        let database = database_of(url)?;
        allowed.insert((who.clone(), database.clone()));
        databases.insert(database);
    }
    let replica_db = database_of(&replica)?;
    ensure!(
        options(&replica)?.get_username() == options(&roles[2].1)?.get_username(),
        "the orders service's copy is not its own role's"
    );
    allowed.insert(("orders".into(), replica_db.clone()));
    databases.insert(replica_db);
    for service in WRITE_SERVICES {
        ensure!(
            databases.contains(&format!("{}orderflow_{service}", dev.prefix)),
            "no event store named for {service} in {databases:?}"
        );
    }
    ensure!(databases.len() == 6, "six databases: {databases:?}");

    for (who, url) in &roles {
        for database in &databases {
            let connected = sqlx::PgConnection::connect_with(&options(url)?.database(database)).await;
            let may = allowed.contains(&(who.clone(), database.clone()));
            match connected {
                Ok(mut conn) => {
                    ensure!(may, "{who}'s role connected to {database}, not its own");
                    let on: String = sqlx::query_scalar("SELECT current_database()::text")
                        .fetch_one(&mut conn)
                        .await?;
                    ensure!(on == *database, "{who}: on {on}, not {database}");
                    conn.close().await.ok();
                }
                Err(e) => {
                    ensure!(!may, "{who}'s role cannot connect to its own {database}: {e}");
                    ensure!(
                        e.to_string().contains("permission denied for database"),
                        "{who} on {database}: refused for another reason: {e}"
                    );
                }
            }
        }
    }
    Ok(())
}

/// A database made to refuse connections (as an outage), its sessions ended; reopened by
/// [`ClosedDatabase::reopen`], or when dropped (a failed test leaves it usable).
struct ClosedDatabase {
    name: String,
    open: bool,
}

impl ClosedDatabase {
    async fn close(name: &str) -> anyhow::Result<ClosedDatabase> {
        let mut admin = sqlx::PgConnection::connect(&testkit::postgres::admin_url())
            .await
            .with_context(|| {
                format!(
                    "connect as the superuser; start PostgreSQL with `{}`",
                    testkit::START_SERVICES
                )
            })?;
        let closed = ClosedDatabase {
            name: name.to_owned(),
            open: false,
        };
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS false"
        )))
        .execute(&mut admin)
        .await?;
        sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
            .bind(name)
            .execute(&mut admin)
            .await?;
        admin.close().await.ok();
        Ok(closed)
    }

    fn reopen_statement(&self) -> String {
        format!("ALTER DATABASE \"{}\" ALLOW_CONNECTIONS true", self.name)
    }

    async fn reopen(mut self) -> anyhow::Result<()> {
        let mut admin = sqlx::PgConnection::connect(&testkit::postgres::admin_url()).await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(self.reopen_statement()))
            .execute(&mut admin)
            .await?;
        admin.close().await.ok();
        self.open = true;
        Ok(())
    }
}

impl Drop for ClosedDatabase {
    fn drop(&mut self) {
        if !self.open {
            let _ = std::process::Command::new("psql")
                .arg(testkit::postgres::admin_url())
                .args(["-XAtqc", &self.reopen_statement()])
                .status();
        }
    }
}

/// With payments out of the way (its process stopped, or its database refusing connections),
/// the orders service still takes an order: a new customer, a new product, the order placed
/// (201 at once) and its stock reserved at inventory by its saga, which then waits for payments
/// (`authorizing`), the order `pending`; the dashboard shows it so. Its id.
async fn orders_wait_for_payments(dev: &DevUp, shop: &mut Shop, name: &'static str) -> anyhow::Result<Uuid> {
    shop.register(dev, name).await?;
    shop.add_product(dev, 700).await?;
    let product = shop.products.len() - 1;
    let order = shop.place(dev, name, &[(product, 2)]).await?;
    eventually(
        "the saga reserves the stock and waits for payments",
        Duration::from_secs(30),
        async || {
            let saga = dev.orders.ok(&format!("/v1/sagas/{}", order.id)).await?;
            ensure!(
                saga["phase"] == "authorizing" && saga["lines"][0]["reserved"] == true,
                "{saga}"
            );
            Ok(())
        },
    )
    .await?;
    let (product_id, _) = shop.products[product];
    let held = dev
        .inventory
        .ok(&format!("/v1/products/{product_id}/reservations/{}", order.id))
        .await;
    // The operator's token has no `service` scope: the reservation is read with the orders
    // service's own token below.
    ensure!(held.is_err(), "the operator's token read a reservation: {held:?}");
    let mut as_orders = Http::new(dev.ports["inventory"]);
    as_orders.token = Some(dev.secret("service-token")?);
    let held = as_orders
        .ok(&format!("/v1/products/{product_id}/reservations/{}", order.id))
        .await?;
    ensure!(held["quantity"] == 2, "{held}");
    // Still pending a while later: nothing confirms an order whose payment is not authorized.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let state = dev.orders.ok(&format!("/v1/orders/{}/state", order.id)).await?;
    ensure!(state["status"] == "pending", "without payments: {state}");
    let token = shop.note(&state_token(&state)?);
    let row = dev
        .read
        .caught_up(&format!("/v1/dashboard/orders/{}?min_position={token}", order.id))
        .await?;
    ensure!(
        row["status"] == "pending" && row["customer_name"] == name && row["total_minor"] == 1400,
        "{row}"
    );
    dashboard_matches(&dev.read, shop, Some(&token)).await?;
    Ok(order.id)
}

/// The order (of `orders_wait_for_payments`) waiting for payments is confirmed once payments is
/// back, its payment the saga's, authorized, and that payment's only event.
async fn confirmed_once_payments_is_back(dev: &DevUp, shop: &mut Shop, order: Uuid) -> anyhow::Result<()> {
    shop.confirmed(dev, order).await?;
    ensure!(
        payment_events(dev, saga::payment_id(order)).await? == ["payment.authorized"],
        "the payment of {order}: authorized once"
    );
    Ok(())
}

/// The orders service's view of the services it calls (`GET /v1/services`, admin): whether
/// `service` answers.
async fn orders_sees(dev: &DevUp, service: &str, healthy: bool) -> anyhow::Result<()> {
    eventually(
        &format!("the orders service sees {service} healthy: {healthy}"),
        Duration::from_secs(30),
        async || {
            let seen = dev.orders.ok("/v1/services").await?;
            let entry = seen["services"]
                .as_array()
                .and_then(|all| all.iter().find(|s| s["service"] == service))
                .with_context(|| format!("no {service} in {seen}"))?;
            ensure!(entry["healthy"] == healthy, "{entry}");
            Ok(())
        },
    )
    .await
}

/// A payment's events, as the payments service tells them: their types.
async fn payment_events(dev: &DevUp, payment: Uuid) -> anyhow::Result<Vec<String>> {
    let page = dev
        .payments
        .ok(&format!("/v1/streams/payment-{payment}/events"))
        .await?;
    Ok(page["events"]
        .as_array()
        .context("no events")?
        .iter()
        .map(|event| event["event_type"].as_str().unwrap_or_default().to_owned())
        .collect())
}

/// `orderflow_relay_errors_total` of a service's `/metrics`: how often its relay failed (0
/// before the first failure, when the counter is not there yet).
async fn relay_errors(api: &Http) -> anyhow::Result<f64> {
    let (status, body) = api.get("/metrics").await?;
    ensure!(status == StatusCode::OK, "/metrics: {status}");
    let text = body.as_str().context("/metrics is text")?;
    Ok(text
        .lines()
        .find_map(|line| line.strip_prefix("orderflow_relay_errors_total "))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0.0))
}

/// The dashboard has applied `token` (of any service's log): a read that waits for it answers.
async fn read_waits_for(dev: &DevUp, token: &str) -> anyhow::Result<()> {
    let page = dev
        .read
        .caught_up(&format!("/v1/dashboard/orders?limit=1&min_position={token}"))
        .await?;
    ensure!(page["rows"].is_array(), "{page}");
    Ok(())
}

/// Authentication is on at every write service. The operators' token (commands+admin) places
/// orders and reads everything, but has no `service` scope: it cannot make a payment or
/// reserve stock, which only the orders service's saga does. The orders service's own token is
/// granted at inventory and payments (commands+service) and at customers (commands), nowhere
/// else, and is no operator's (no admin).
async fn authentication_is_on(dev: &DevUp) -> anyhow::Result<()> {
    for (service, path) in [
        ("customers", "/v1/customers"),
        ("inventory", "/v1/products"),
        ("orders", "/v1/orders"),
        ("payments", "/v1/payments"),
    ] {
        let (status, body) = dev.service(service).call(Method::POST, path, Some(json!({}))).await?;
        ensure!(
            status == StatusCode::UNAUTHORIZED,
            "{service}: a command without a token: {status} {body}"
        );
    }
    let (product, order) = (Uuid::now_v7(), Uuid::now_v7());
    let service_token = dev.secret("service-token")?;
    for (service, path, expected) in [
        (
            "customers",
            format!("/v1/customers/{}", Uuid::now_v7()),
            StatusCode::NOT_FOUND,
        ),
        ("inventory", format!("/v1/products/{product}"), StatusCode::NOT_FOUND),
        (
            "inventory",
            format!("/v1/products/{product}/reservations/{order}"),
            StatusCode::NOT_FOUND,
        ),
        ("customers", "/v1/log".to_owned(), StatusCode::FORBIDDEN),
        ("inventory", "/v1/log".to_owned(), StatusCode::FORBIDDEN),
        (
            "payments",
            format!("/v1/payments/{}", Uuid::now_v7()),
            StatusCode::NOT_FOUND,
        ),
        ("payments", "/v1/gateway".to_owned(), StatusCode::FORBIDDEN),
        ("orders", format!("/v1/orders/{order}/state"), StatusCode::UNAUTHORIZED),
    ] {
        let mut client = Http::new(dev.ports[service]);
        client.token = Some(service_token.clone());
        let (status, body) = client.get(&path).await?;
        ensure!(
            status == expected,
            "{service} {path} with the orders service's token: {status} {body}, expected {expected}"
        );
    }
    let operator = |service: &str| {
        let mut client = Http::new(dev.ports[service]);
        client.token = dev.secret("token").ok();
        client
    };
    for (service, path, body) in [
        (
            "payments",
            "/v1/payments".to_owned(),
            json!({"order_id": order, "amount_minor": 100, "currency": "EUR"}),
        ),
        (
            "payments",
            format!("/v1/payments/{}/void", saga::payment_id(order)),
            json!({"order_id": order, "reason": "test"}),
        ),
        (
            "inventory",
            format!("/v1/products/{product}/reservations"),
            json!({"order_id": order, "quantity": 1}),
        ),
    ] {
        let (status, answer) = operator(service).call(Method::POST, &path, Some(body)).await?;
        ensure!(
            status == StatusCode::FORBIDDEN,
            "{service} {path} with the operators' token (no `service` scope): {status} {answer}"
        );
    }
    for (service, path) in [("orders", "/v1/sagas/parked"), ("payments", "/v1/gateway")] {
        let (status, answer) = operator(service).get(path).await?;
        ensure!(
            status == StatusCode::OK,
            "{service} {path} with the operators' token: {status} {answer}"
        );
    }
    for service in WRITE_SERVICES {
        let (status, body) = dev.service(service).get("/v1/log").await?;
        ensure!(
            status == StatusCode::UNAUTHORIZED,
            "{service}: the log without a token: {status} {body}"
        );
    }
    // The operators' read-only token (scope `read`, the console's viewers'): every GET, no
    // command.
    for (service, path) in [("customers", "/v1/customers"), ("orders", "/v1/orders")] {
        let mut reader = Http::new(dev.ports[service]);
        reader.token = Some(dev.secret("read-token")?);
        let (status, body) = reader.call(Method::POST, path, Some(json!({}))).await?;
        ensure!(
            status == StatusCode::FORBIDDEN,
            "{service}: a command with the read-only token: {status} {body}"
        );
        let (status, body) = reader.get("/v1/log").await?;
        ensure!(
            status == StatusCode::OK,
            "{service}: the log with the read-only token: {status} {body}"
        );
    }
    read_api_needs_a_read_token(dev).await
}

/// read-api: every query route it describes answers 401 without a token and to the orders
/// service's (unknown there), and is read with either operators' token (scope `read`); its
/// operations endpoints stay open.
async fn read_api_needs_a_read_token(dev: &DevUp) -> anyhow::Result<()> {
    let anonymous = Http::new(dev.ports["read-api"]);
    let document = anonymous.ok("/openapi.json").await?;
    ensure!(
        document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer",
        "read-api's document does not declare the token it enforces"
    );
    let routes: Vec<String> = document["paths"]
        .as_object()
        .context("no paths in read-api's document")?
        .keys()
        .filter(|path| path.starts_with("/v1/"))
        .map(|path| path.replace("{id}", &Uuid::now_v7().to_string()))
        .collect();
    ensure!(routes.len() >= 9, "read-api describes {routes:?}");
    let with = |file: &str| -> anyhow::Result<Http> {
        let mut client = Http::new(dev.ports["read-api"]);
        client.token = Some(dev.secret(file)?);
        Ok(client)
    };
    let (service, operator, reader) = (with("service-token")?, with("token")?, with("read-token")?);
    for route in &routes {
        for (who, client) in [("no token", &anonymous), ("the orders service's token", &service)] {
            let (status, body) = client.get(route).await?;
            ensure!(
                status == StatusCode::UNAUTHORIZED && body["error"]["code"] == "unauthorized",
                "read-api {route} with {who}: {status} {body}"
            );
        }
        for (who, client) in [("the operators' token", &operator), ("the read-only token", &reader)] {
            let (status, body) = client.get(route).await?;
            ensure!(
                !matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) && !status.is_server_error(),
                "read-api {route} with {who}: {status} {body}"
            );
        }
    }
    for open in ["/health", "/ready", "/metrics"] {
        let (status, body) = anonymous.get(open).await?;
        ensure!(
            status == StatusCode::OK,
            "read-api {open} without a token: {status} {body}"
        );
    }
    Ok(())
}

/// Isolation, 1: the payments service stopped. Orders are still taken and wait `pending`, the
/// saga's reservations made, and the dashboard answers; an order shipped meanwhile waits for its
/// capture. `up` starts payments again (and nothing else); then the waiting order is confirmed,
/// the shipped one's payment captured, and `o1`'s payment has exactly its two events.
async fn payments_stopped(dev: &DevUp, shop: &mut Shop, o1: &Placed) -> anyhow::Result<()> {
    let before = dev.pids()?;
    let stopped = std::process::Command::new("kill")
        .args(["-TERM", &before["payments"].to_string()])
        .status()?;
    ensure!(stopped.success(), "kill -TERM payments");
    eventually("payments is stopped", Duration::from_secs(30), async || {
        ensure!(!running(before["payments"]), "payments still runs");
        Ok(())
    })
    .await?;
    let said = dev.status_fails().await?;
    ensure!(
        said.lines()
            .any(|line| line.starts_with("[dev-up] payments ") && line.contains("DOWN")),
        "{said}"
    );
    let waiting = orders_wait_for_payments(dev, shop, "Lin").await?;
    orders_sees(dev, "payments", false).await?;
    let overview = dev.orders.ok(&format!("/v1/orders/{waiting}/overview")).await?;
    ensure!(
        overview["missing"] == json!(["payments"]) && overview["payment"].is_null(),
        "the overview of an order without payments: {overview}"
    );
    // o1 ships while payments is down: the order ships, its saga captures once payments is back.
    let shipped = dev
        .orders
        .command(
            "orders",
            &format!("/v1/orders/{}/ship", o1.id),
            json!({"carrier": "DHL", "tracking": format!("T-{}", o1.id)}),
            StatusCode::OK,
        )
        .await?;
    shop.note(&shipped);
    let placed = shop.order_mut(o1.id);
    placed.status = "shipped";
    placed.reached.insert("shipped");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let saga = dev.orders.ok(&format!("/v1/sagas/{}", o1.id)).await?;
    ensure!(
        saga["outcome"].is_null() && saga["captured_minor"] == 0,
        "o1's saga captured without payments: {saga}"
    );
    ensure!(
        dev.payments
            .get(&format!("/v1/payments/{}", saga::payment_id(o1.id)))
            .await
            .is_err(),
        "payments answers while stopped"
    );
    let again = dev.run(&["up"]).await?;
    let after_up = dev.pids()?;
    for (service, pid) in &before {
        ensure!(
            (service == "payments") != (after_up[service] == *pid),
            "`up` with payments stopped: {service} went from pid {pid} to {}:\n{again}",
            after_up[service]
        );
    }
    orders_sees(dev, "payments", true).await?;
    confirmed_once_payments_is_back(dev, shop, waiting).await?;
    shop.saga_completes(dev, o1.id, "captured").await?;
    let payment = shop.payment(dev, o1.id).await?;
    ensure!(
        payment["status"] == "captured" && payment["captured_minor"] == o1.total,
        "o1's payment once payments is back: {payment}"
    );
    ensure!(
        payment_events(dev, saga::payment_id(o1.id)).await? == ["payment.authorized", "payment.captured"],
        "o1's payment's events after the restart"
    );
    read_waits_for(dev, &shop.token("payments")).await?;
    Ok(())
}

/// Isolation, 2: the payments database refuses connections (its sessions ended). Payments is
/// unready and records nothing; the others stay ready, an order is taken and waits `pending`
/// (the saga's authorization refused, retried), and the dashboard answers. Once the database is
/// back, the order is confirmed (the same payment, authorized once), `o1`'s payment's events
/// are all there, and the dashboard applies the new payment's token (the relay of payments
/// publishes again).
async fn payments_database_closed(dev: &DevUp, shop: &mut Shop, o1: &Placed) -> anyhow::Result<()> {
    let payments_db = format!("{}orderflow_payments", dev.prefix);
    let relay_failed = relay_errors(&dev.payments).await?;
    let closed = ClosedDatabase::close(&payments_db).await?;
    eventually("payments is unready", Duration::from_secs(30), async || {
        let (status, body) = dev.payments.get("/ready").await?;
        ensure!(status == StatusCode::SERVICE_UNAVAILABLE, "/ready: {status} {body}");
        Ok(())
    })
    .await?;
    // The outage lasts until the relay of payments has met it (it reads the store's log at
    // least every 500 ms), so that what follows shows how the relay comes back from it.
    eventually(
        "the relay of payments meets the outage",
        Duration::from_secs(30),
        async || {
            let errors = relay_errors(&dev.payments).await?;
            ensure!(errors > relay_failed, "orderflow_relay_errors_total {errors}");
            Ok(())
        },
    )
    .await?;
    let waiting = orders_wait_for_payments(dev, shop, "Noor").await?;
    for service in ["customers", "inventory", "orders"] {
        let (status, body) = dev.service(service).get("/ready").await?;
        ensure!(
            status == StatusCode::OK,
            "{service} is unready while payments' database is closed: {body}"
        );
    }
    closed.reopen().await?;
    confirmed_once_payments_is_back(dev, shop, waiting).await?;
    ensure!(
        payment_events(dev, saga::payment_id(o1.id)).await? == ["payment.authorized", "payment.captured"],
        "o1's payment's events after the outage"
    );
    read_waits_for(dev, &shop.token("payments"))
        .await
        .context("the relay of payments does not publish after its database came back")?;
    eventually("payments is ready", Duration::from_secs(30), async || {
        dev.payments.ok("/ready").await
    })
    .await?;
    dev.logs_keep_secrets()?;
    Ok(())
}

/// One request to `port`, its answer as sent: status, headers and the body's bytes (not
/// decoded, not decompressed).
async fn raw(
    port: u16,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<(StatusCode, hyper::HeaderMap, Bytes)> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(format!("http://127.0.0.1:{port}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = tokio::time::timeout(
        Duration::from_secs(30),
        client.request(request.body(Full::new(Bytes::new()))?),
    )
    .await
    .with_context(|| format!("{path}: no answer in 30 s"))??;
    let (parts, body) = response.into_parts();
    Ok((parts.status, parts.headers, body.collect().await?.to_bytes()))
}

/// A header's value, empty when absent.
fn header<'a>(headers: &'a hyper::HeaderMap, name: &str) -> &'a str {
    headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default()
}

/// `bytes` decompressed by `gzip -d`.
fn gunzip(bytes: &[u8]) -> anyhow::Result<Vec<u8>> {
    use std::io::Write as _;
    let mut gzip = std::process::Command::new("gzip")
        .arg("-dc")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("run gzip -dc")?;
    // Written from a thread while the output is read: an asset larger than the pipes' buffers
    // would block a write made first.
    let mut stdin = gzip.stdin.take().context("gzip's stdin")?;
    let input = bytes.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let output = gzip.wait_with_output()?;
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("the writer to gzip panicked"))??;
    ensure!(output.status.success(), "gzip -dc: {}", output.status);
    Ok(output.stdout)
}

/// order_dashboard's live version, as `/v1/projections` through `api` says.
async fn live_version(api: &Http) -> anyhow::Result<u64> {
    let status = api.ok("/v1/projections").await?;
    status["projections"]
        .as_array()
        .and_then(|all| all.iter().find(|p| p["name"] == "order_dashboard"))
        .and_then(|p| p["live_version"].as_u64())
        .with_context(|| format!("no live version of order_dashboard in {status}"))
}

/// The console, one origin in front of read-api, the four services and projections-1's rebuild
/// endpoint, holding no credential of its own: its page and script; the dashboard as read-api
/// answers it; a service's log and `order`'s stream with the read-only token (and not without
/// one); no command; a rebuild with the operators' token (admin) only, which goes live and
/// changes no row.
async fn console_forwards(dev: &DevUp, shop: &Shop, order: &Placed) -> anyhow::Result<()> {
    let port = dev.ports["console"];
    let with = |token: &str| -> anyhow::Result<Http> {
        let mut client = Http::new(port);
        client.token = Some(dev.secret(token)?);
        Ok(client)
    };
    let reader = with("read-token")?;
    let operator = with("token")?;
    // It holds no token nor password: whoever calls it brings theirs.
    let secrets = dev.secrets()?;
    let console_env = environment_of(dev.pid("console")?)?;
    ensure!(
        !console_env
            .values()
            .any(|value| secrets.iter().any(|secret| value.contains(secret.as_str()))),
        "the console's process has a secret in its environment"
    );

    // The page, and its script compiled in: gzipped when the client accepts it, the same bytes.
    let (status, headers, page) = raw(port, Method::GET, "/", &[]).await?;
    let page = String::from_utf8_lossy(&page);
    ensure!(
        status == StatusCode::OK
            && header(&headers, "content-type").starts_with("text/html")
            && page.contains("<html")
            && page.contains("/assets/app.js"),
        "GET / through the console: {status} {headers:?}\n{page}"
    );
    let (status, headers, gzipped) = raw(port, Method::GET, "/assets/app.js", &[("accept-encoding", "gzip")]).await?;
    ensure!(
        status == StatusCode::OK
            && header(&headers, "content-encoding") == "gzip"
            && header(&headers, "content-type").contains("javascript")
            && gzipped.starts_with(&[0x1f, 0x8b]),
        "GET /assets/app.js accepting gzip: {status} {headers:?}"
    );
    let (status, headers, plain) = raw(port, Method::GET, "/assets/app.js", &[]).await?;
    ensure!(
        status == StatusCode::OK && header(&headers, "content-encoding").is_empty() && !plain.is_empty(),
        "GET /assets/app.js: {status} {headers:?}"
    );
    ensure!(gunzip(&gzipped)? == plain, "the gzipped app.js is not the plain one");

    // The dashboard through the console is read-api's own answer, with the read-only token the
    // console passes on; without a token, read-api's 401 comes back through it.
    let path = format!("/v1/dashboard/orders?limit=500&min_position={}", shop.token("orders"));
    eventually(
        "the console's dashboard equals read-api's",
        Duration::from_secs(30),
        async || {
            let direct = dev.read.ok(&path).await?;
            let through = reader.ok(&path).await?;
            ensure!(
                through == direct,
                "through the console:\n{through}\nread-api:\n{direct}"
            );
            ensure!(
                direct["rows"].as_array().map(Vec::len) == Some(shop.orders.len()),
                "{direct}"
            );
            Ok(())
        },
    )
    .await?;

    let (status, body) = dev.console.get(&path).await?;
    ensure!(
        status == StatusCode::UNAUTHORIZED,
        "the dashboard through the console without a token: {status} {body}"
    );

    // A service's log and a stream's events, at the service that owns them: the service wants a
    // token, and the read-only one may read.
    let (status, body) = dev.console.get("/v1/log?service=orders").await?;
    ensure!(
        status == StatusCode::UNAUTHORIZED,
        "the orders log through the console without a token: {status} {body}"
    );
    let log = reader.ok("/v1/log?service=orders&limit=5").await?;
    ensure!(
        log["service"] == "orders" && log["events"].as_array().is_some_and(|e| !e.is_empty()),
        "the orders log through the console with the read-only token: {log}"
    );
    let stream = format!("/v1/streams/order-{}/events", order.id);
    let events = reader.ok(&stream).await?;
    let own = dev.orders.ok(&stream).await?;
    ensure!(
        events == own,
        "{stream} through the console:\n{events}\nthe orders service's:\n{own}"
    );
    let listed = events["events"].as_array().context("no events")?;
    ensure!(
        listed.len() >= 2
            && listed[0]["event_type"] == "order.placed"
            && listed.iter().enumerate().all(|(n, event)| {
                event["stream_id"] == format!("order-{}", order.id) && event["stream_version"] == n as u64 + 1
            }),
        "{stream}: {events}"
    );

    // No command passes, whatever the token.
    let (status, body) = operator
        .call(Method::POST, "/v1/orders", Some(json!({"order_id": Uuid::now_v7()})))
        .await?;
    ensure!(
        status == StatusCode::METHOD_NOT_ALLOWED,
        "a command through the console: {status} {body}"
    );

    // A rebuild needs `admin`: refused with the read-only token, started with the operators'
    // (at projections-1), and it goes live.
    let rebuild = "/v1/projections/order_dashboard/rebuild";
    let (status, body) = reader.call(Method::POST, rebuild, None).await?;
    ensure!(
        status == StatusCode::FORBIDDEN,
        "a rebuild through the console with the read-only token: {status} {body}"
    );
    let before = dashboard_matches(&dev.read, shop, Some(&shop.token("orders"))).await?;
    let live = live_version(&reader).await?;
    let (status, started) = operator.call(Method::POST, rebuild, None).await?;
    ensure!(
        status == StatusCode::ACCEPTED && started["projection"] == "order_dashboard" && started["version"] == live + 1,
        "a rebuild through the console with the operators' token (live version {live}): {status} {started}"
    );
    eventually(
        "the rebuild started through the console goes live",
        Duration::from_secs(60),
        async || {
            let now = live_version(&reader).await?;
            ensure!(now == live + 1, "live version {now}, the rebuild's {}", live + 1);
            Ok(())
        },
    )
    .await?;
    ensure!(
        dashboard_matches(&dev.read, shop, Some(&shop.token("orders"))).await? == before,
        "the rebuild through the console changed the dashboard"
    );
    sign_in_in_a_browser(port, &dev.secret("read-token")?).await
}

/// In a real browser, the console where authentication is on: a page whose API answers 401
/// asks for a token; the read-only token entered there lets it show a service's log; the
/// token is kept in the tab's `sessionStorage`, never in the URL.
async fn sign_in_in_a_browser(port: u16, read_token: &str) -> anyhow::Result<()> {
    let driver = bench::browser::Driver::start().await?;
    let browser = driver.session().await?;
    let within = Duration::from_secs(20);
    browser.goto(&format!("http://127.0.0.1:{port}/#/events")).await?;
    browser
        .wait_js("document.querySelector('#token-dialog')?.open === true", within)
        .await
        .context("the console asks for a token when the log answers 401")?;
    let input = browser.wait_for("#token-input", within).await?;
    input.send_keys(read_token).await?;
    browser.wait_for("#token-submit", within).await?.click().await?;
    browser
        .wait_for("#events-table tr[data-position]", within)
        .await
        .context("with the read-only token, the console shows the log")?;
    let kept = browser
        .js(
            "return [sessionStorage.getItem('orderflow.token'), location.href];",
            vec![],
        )
        .await?;
    ensure!(
        kept[0] == read_token && !kept[1].as_str().unwrap_or_default().contains(read_token),
        "the token is kept in sessionStorage and never put in the URL: {}",
        kept[1]
    );
    // The 401 that asked for the token is the only error the browser reports.
    let unexpected: Vec<String> = browser
        .console_log()
        .await?
        .into_iter()
        .filter(|e| e.level == "SEVERE" && !e.message.contains("401"))
        .map(|e| e.to_string())
        .collect();
    ensure!(unexpected.is_empty(), "browser console errors: {unexpected:?}");
    browser.close().await
}

async fn scenario(dev: &mut DevUp) -> anyhow::Result<()> {
    let started = Instant::now();
    // Up, as a newcomer would run it.
    let banner = dev.run(&["up"]).await?;
    let token = dev.secret("token")?;
    ensure!(token.len() >= 32, "a short token");
    for expected in dev
        .ports
        .values()
        .map(|port| format!("http://127.0.0.1:{port}"))
        .chain([
            dev.dir.join("token").display().to_string(),
            dev.dir.join("read-token").display().to_string(),
            "down".to_owned(),
        ])
    {
        ensure!(banner.contains(&expected), "the banner lacks {expected}:\n{banner}");
    }
    for secret in dev.secrets()? {
        ensure!(!banner.contains(&secret), "the banner shows a secret");
    }
    dev.logs_keep_secrets()?;
    use std::os::unix::fs::PermissionsExt as _;
    for file in ["token", "read-token", "service-token", "secrets.env", "pgpass"] {
        let mode = std::fs::metadata(dev.dir.join(file))?.permissions().mode();
        ensure!(mode & 0o077 == 0, "{file} is readable by others: {mode:o}");
    }
    let pids = dev.pids()?;
    ensure!(
        pids.values().all(|&pid| running(pid)),
        "not every process runs: {pids:?}"
    );

    // Up again: nothing restarted.
    let again = dev.run(&["up"]).await?;
    ensure!(dev.pids()? == pids, "a second `up` restarted processes:\n{again}");
    ensure!(again.contains("running (pid"), "{again}");
    dev.run(&["status"]).await?;
    let up_at = started.elapsed();

    authentication_is_on(dev).await?;
    dev.read.token = Some(token.clone());
    dev.customers.token = Some(token.clone());
    dev.inventory.token = Some(token.clone());
    dev.orders.token = Some(token.clone());
    dev.payments.token = Some(token);
    let before_everything = chrono::Utc::now();

    // The shop, each command at the service that owns it; read-your-writes on each service's
    // token.
    let mut shop = Shop::new();
    let ada_registered = shop.register(dev, "Ada").await?;
    shop.register(dev, "Grace").await?;
    let ada = dev
        .read
        .caught_up(&format!(
            "/v1/dashboard/customers/{}?min_position={ada_registered}",
            shop.customers["Ada"]
        ))
        .await?;
    ensure!(
        ada["name"] == "Ada" && ada["email"] == "ada@example.com" && ada["order_count"] == 0,
        "the customer summary after the customers service's token: {ada}"
    );
    let mut product_added = String::new();
    for price in [1250, 800, 4999] {
        product_added = shop.add_product(dev, price).await?;
    }
    // The dashboard keeps nothing of products, but it follows the inventory's log too: a read
    // waiting for an inventory token is answered.
    read_waits_for(dev, &product_added).await?;
    let (status, body) = dev.read.get("/v1/dashboard/orders?min_position=1").await?;
    ensure!(
        status == StatusCode::BAD_REQUEST && body.to_string().contains("orders:12"),
        "a bare position: {status} {body}"
    );
    // Orders are placed pending, and confirmed by their saga (stock reserved at inventory,
    // payment authorized at payments); a client's confirm is refused.
    let o1 = shop.place(dev, "Ada", &[(0, 2)]).await?;
    let (status, body) = dev
        .orders
        .call(Method::POST, &format!("/v1/orders/{}/confirm", o1.id), Some(json!({})))
        .await?;
    ensure!(
        status == StatusCode::CONFLICT && body["error"]["code"] == "confirmed_by_saga",
        "a client's confirm: {status} {body}"
    );
    shop.confirmed(dev, o1.id).await?;
    let o2 = shop.place_confirmed(dev, "Ada", &[(1, 1), (2, 1)]).await?;
    for step in ["ship", "deliver"] {
        shop.step(dev, o2.id, step).await?;
    }
    let o2_delivered = shop.token("orders");
    // Cancelled once confirmed: the saga voids the payment and releases the stock.
    let o3 = shop.place_confirmed(dev, "Grace", &[(0, 1)]).await?;
    shop.step(dev, o3.id, "cancel").await?;
    let mut as_orders = Http::new(dev.ports["inventory"]);
    as_orders.token = Some(dev.secret("service-token")?);
    for (order, held) in [(&o1, 2), (&o3, 0)] {
        let reservation = as_orders
            .ok(&format!(
                "/v1/products/{}/reservations/{}",
                shop.products[0].0, order.id
            ))
            .await?;
        ensure!(reservation["quantity"] == held, "{order:?}: {reservation}");
    }
    let product = dev
        .inventory
        .ok(&format!("/v1/products/{}", shop.products[0].0))
        .await?;
    ensure!(
        product["available"] == 100 - 2,
        "o1 holds 2, o3 released its 1: {product}"
    );
    let o4 = shop.place_confirmed(dev, "Grace", &[(2, 2)]).await?;
    // A point between o4's confirmation and its shipping, for the as-of reads.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let between = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(50)).await;
    shop.step(dev, o4.id, "ship").await?;
    // o1's payment, made by its saga (the payment id derived from the order's): the payments
    // service's token; the dashboard follows its log too.
    let authorized = shop.payment(dev, o1.id).await?;
    ensure!(authorized["status"] == "authorized", "{authorized}");
    read_waits_for(dev, &shop.token("payments")).await?;
    // Once a read has waited for each service's latest token, the projections' status shows
    // each service's log applied that far.
    for service in WRITE_SERVICES {
        read_waits_for(dev, &shop.token(service)).await?;
    }
    let status = dev.read.ok("/v1/projections").await?;
    let dashboard_status = status["projections"]
        .as_array()
        .and_then(|all| all.iter().find(|p| p["name"] == "order_dashboard"))
        .with_context(|| format!("no order_dashboard in {status}"))?;
    for service in WRITE_SERVICES {
        let source = dashboard_status["services"]
            .as_array()
            .and_then(|all| all.iter().find(|s| s["service"] == service))
            .with_context(|| format!("no {service} in {dashboard_status}"))?;
        let token = shop.token(service);
        ensure!(
            source["position"].as_u64() >= Some(position_of(&token))
                && source["token"] == format!("{service}:{}", source["position"]),
            "{service} at {token}: {source}"
        );
    }

    // Read-your-writes: one order, with the token its last command answered.
    let row = dev
        .read
        .caught_up(&format!("/v1/dashboard/orders/{}?min_position={o2_delivered}", o2.id))
        .await?;
    ensure!(
        row["status"] == "delivered" && row["total_minor"] == 5799 && row["customer_name"] == "Ada",
        "{row}"
    );
    ensure!(row["carrier"] == "DHL" && row["item_count"] == 2, "{row}");
    let orders_token = shop.token("orders");
    dashboard_matches(&dev.read, &shop, Some(&orders_token)).await?;
    let ada = dev
        .read
        .caught_up(&format!(
            "/v1/dashboard/customers/{}?min_position={orders_token}",
            shop.customers["Ada"]
        ))
        .await?;
    ensure!(ada["name"] == "Ada" && ada["email"] == "ada@example.com", "{ada}");
    ensure!(ada["order_count"] == 2, "{ada}");
    ensure!(
        ada["lifetime_value"] == json!([{"currency": "EUR", "order_count": 2, "lifetime_value_minor": 2500 + 5799}]),
        "{ada}"
    );
    let grace = dev
        .read
        .caught_up(&format!(
            "/v1/dashboard/customers/{}?min_position={orders_token}",
            shop.customers["Grace"]
        ))
        .await?;
    ensure!(grace["order_count"] == 2, "{grace}");
    ensure!(
        grace["lifetime_value"][0]["lifetime_value_minor"] == 9998,
        "the cancelled order left it: {grace}"
    );
    let (_, funnel) = analytics_match(&dev.read, &shop).await?;
    ensure!(funnel["placed_to_delivered_conversion"] == 0.25, "{funnel}");
    ensure!(
        funnel["pending"] == 0 && funnel["confirmed"] == 4 && funnel["cancellation_reasons"]["requested"] == 1,
        "o3 was confirmed, then cancelled by its client: {funnel}"
    );

    // As of a past time: read-api's dashboard history equals the orders service's fold.
    let at = between.format("%Y-%m-%dT%H:%M:%S%.6fZ");
    let past = dev
        .read
        .caught_up(&format!(
            "/v1/dashboard/orders/{}?as_of={at}&min_position={orders_token}",
            o4.id
        ))
        .await?;
    let folded = dev.orders.ok(&format!("/v1/orders/{}/state?as_of={at}", o4.id)).await?;
    ensure!(
        folded["status"] == "confirmed" && past["status"] == "confirmed",
        "read {past}\nwrite {folded}"
    );
    for (read_field, write_field) in [
        ("total_minor", "total_minor"),
        ("currency", "currency"),
        ("stream_version", "version"),
        ("last_position", "position"),
    ] {
        ensure!(
            past[read_field] == folded[write_field],
            "as of {at}: read-api {read_field} {} ≠ the orders service's {write_field} {}",
            past[read_field],
            folded[write_field]
        );
    }
    ensure!(
        past["customer_name"] == folded["customer"]["name"],
        "read {past}\nwrite {folded}"
    );
    let now = dev.orders.ok(&format!("/v1/orders/{}/state", o4.id)).await?;
    ensure!(now["status"] == "shipped", "{now}");
    let early = before_everything.format("%Y-%m-%dT%H:%M:%S%.6fZ");
    let (status, body) = dev
        .read
        .get(&format!("/v1/dashboard/orders/{}?as_of={early}", o4.id))
        .await?;
    ensure!(
        status == StatusCode::NOT_FOUND,
        "read-api as of before the order: {status} {body}"
    );
    let (status, body) = dev
        .orders
        .get(&format!("/v1/orders/{}/state?as_of={early}", o4.id))
        .await?;
    ensure!(
        status == StatusCode::NOT_FOUND,
        "the orders service as of before the order: {status} {body}"
    );

    read_api_is_read_only(dev).await?;
    roles_reach_their_own_databases_only(dev).await?;

    // A worker killed with SIGKILL; orders placed while it is dead and after its restart appear.
    let victim = dev.pid("projections-1")?;
    let killed_at = Instant::now();
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &victim.to_string()])
        .status()?;
    ensure!(killed.success(), "kill -KILL {victim}");
    eventually("the killed worker is gone", Duration::from_secs(10), async || {
        ensure!(!running(victim), "{victim} still runs");
        Ok(())
    })
    .await?;
    let said = dev.status_fails().await?;
    ensure!(said.contains("projections-1  DOWN"), "{said}");
    // The saga needs no projection: o5 is confirmed while the worker is dead.
    let o5 = shop.place_confirmed(dev, "Ada", &[(1, 3)]).await?;
    // The dead member's session must have expired when its successor joins: tansu hands a
    // dead member's partitions over only then (ADR 0004). No condition to wait on: the session
    // is counted from the kill, with a second's margin for the broker's clock.
    tokio::time::sleep_until((killed_at + SESSION_TIMEOUT + Duration::from_secs(1)).into()).await;
    let restarted = dev.run(&["restart", "projections-1"]).await?;
    ensure!(restarted.contains("projections-1: restarted"), "{restarted}");
    let successor = dev.pid("projections-1")?;
    ensure!(
        successor != victim && running(successor),
        "projections-1 is not running again"
    );
    let o6 = shop.place_confirmed(dev, "Grace", &[(0, 1), (1, 1)]).await?;
    let dashboard = dashboard_matches(&dev.read, &shop, Some(&shop.token("orders"))).await?;
    ensure!(dashboard.contains_key(&o5.id.to_string()) && dashboard.contains_key(&o6.id.to_string()));
    let (revenue, _) = analytics_match(&dev.read, &shop).await?;
    dev.run(&["status"]).await?;

    // A rebuild: version 2 of the dashboard, from every service's event store (one `{service}`
    // template, the passwords in the instance's pgpass), and the same answers.
    let orders_token = shop.token("orders");
    let ada = dev
        .read
        .caught_up(&format!(
            "/v1/dashboard/customers/{}?min_position={orders_token}",
            shop.customers["Ada"]
        ))
        .await?;
    let rebuilt = dev
        .run(&["orderflow", "projections", "rebuild", "order_dashboard"])
        .await?;
    let report: Value = serde_json::from_str(rebuilt.trim()).with_context(|| format!("rebuild's report: {rebuilt}"))?;
    ensure!(
        report["projection"] == "order_dashboard" && report["version"] == 2 && report["replaced"] == 1,
        "{report}"
    );
    for service in WRITE_SERVICES {
        ensure!(
            report["positions"][service].as_u64() >= Some(position_of(&shop.token(service))),
            "the rebuild did not read all of {service}'s log: {report}"
        );
    }
    let live = dev.read.ok("/v1/projections").await?;
    let dashboard_status = live["projections"]
        .as_array()
        .and_then(|all| all.iter().find(|p| p["name"] == "order_dashboard"))
        .with_context(|| format!("no order_dashboard in {live}"))?;
    ensure!(dashboard_status["live_version"] == 2, "{live}");
    ensure!(
        dashboard_matches(&dev.read, &shop, Some(&orders_token)).await? == dashboard,
        "the rebuild changed the dashboard"
    );
    let ada_after = dev
        .read
        .caught_up(&format!(
            "/v1/dashboard/customers/{}?min_position={orders_token}",
            shop.customers["Ada"]
        ))
        .await?;
    ensure!(ada_after == ada, "the rebuild changed a customer:\n{ada}\n{ada_after}");
    let past_after = dev
        .read
        .ok(&format!("/v1/dashboard/orders/{}?as_of={at}", o4.id))
        .await?;
    ensure!(
        past_after == past,
        "the rebuild changed the as-of answer:\n{past}\n{past_after}"
    );

    // The workers follow the new version: an order placed after the rebuild reaches it, and
    // read-your-writes works on it. (It did not: the new version's applied position stayed at
    // the rebuild's store checkpoint, so a min_position past the rebuild waited in vain.)
    let o7 = shop.place_confirmed(dev, "Ada", &[(0, 1)]).await?;
    dashboard_matches(&dev.read, &shop, Some(&shop.token("orders"))).await?;
    let after = analytics_match(&dev.read, &shop).await?.0;
    ensure!(
        after["buckets"] != revenue["buckets"],
        "o7 {o7:?} is not in the revenue: {after}"
    );
    console_forwards(dev, &shop, &o2).await?;
    let scenario_at = started.elapsed();

    // Isolation: without payments, stopped or without its database, orders are taken and wait
    // pending; they are confirmed once it is back.
    payments_stopped(dev, &mut shop, &o1).await?;
    payments_database_closed(dev, &mut shop, &o1).await?;
    dashboard_matches(&dev.read, &shop, Some(&shop.token("orders"))).await?;
    analytics_match(&dev.read, &shop).await?;
    let parked = dev.orders.ok("/v1/sagas/parked").await?;
    ensure!(parked["order_ids"] == json!([]), "parked sagas: {parked}");
    let isolation_at = started.elapsed();
    fuzzed(dev).await?;

    // Down: every process stops, the ports close.
    let pids = dev.pids()?;
    dev.run(&["down"]).await?;
    dev.stopped = true;
    for (service, pid) in &pids {
        ensure!(!running(*pid), "{service} (pid {pid}) still runs after down");
    }
    for port in dev.ports.values() {
        ensure!(
            std::net::TcpStream::connect(("127.0.0.1", *port)).is_err(),
            "port {port} still answers after down"
        );
    }
    let status = dev.command(&["status"]).output().await?;
    ensure!(!status.status.success(), "status after down exits 0");
    dev.run(&["down", "--purge"]).await?;
    ensure!(!dev.dir.exists(), "down --purge left {}", dev.dir.display());
    let mut admin = sqlx::PgConnection::connect(&testkit::postgres::admin_url()).await?;
    let left: Vec<String> = sqlx::query_scalar(
        "SELECT datname::text FROM pg_database WHERE starts_with(datname, $1)
         UNION ALL SELECT rolname::text FROM pg_roles WHERE starts_with(rolname, $1)",
    )
    .bind(&dev.prefix)
    .fetch_all(&mut admin)
    .await?;
    admin.close().await.ok();
    ensure!(left.is_empty(), "down --purge left {left:?}");
    eprintln!(
        "dev-up: up twice in {:.1}s, scenario done at {:.1}s, isolation at {:.1}s, down at {:.1}s",
        up_at.as_secs_f64(),
        scenario_at.as_secs_f64(),
        isolation_at.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Every service's API fuzzed against its own `/openapi.json` with authentication on, each with
/// the token an operator would use there (`scripts/api-fuzz`): besides the checks of the
/// embedded run (`tests/api_fuzz.rs`), no route answers without the token it requires. Last,
/// since it leaves the services' data full of generated customers and orders.
async fn fuzzed(dev: &DevUp) -> anyhow::Result<()> {
    for (service, token) in [
        ("customers", "token"),
        // The saga's reservations and payments need scope `service`: the orders service's token.
        ("inventory", "service-token"),
        ("orders", "token"),
        ("payments", "service-token"),
        ("read-api", "read-token"),
    ] {
        let base = format!("http://127.0.0.1:{}", dev.ports[service]);
        let token_file = dev.dir.join(token).display().to_string();
        let started = Instant::now();
        let report = tokio::task::spawn_blocking(move || {
            support::fuzz(
                &base,
                &["--token-file", &token_file, "--seconds", &FUZZ_SECONDS.to_string()],
            )
        })
        .await?
        .with_context(|| format!("fuzzing {service}"))?;
        let (tested, total) = support::operations_tested(&report)?;
        ensure!(
            tested == total && total >= 3,
            "{service}: schemathesis tested {tested} of {total} operations:\n{report}"
        );
        ensure!(
            !dev.secrets()?.iter().any(|secret| report.contains(secret.as_str())),
            "schemathesis's report on {service} shows a secret"
        );
        eprintln!(
            "dev-up: {service} fuzzed ({tested} operations) in {:.0}s",
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// Seconds each service is fuzzed for.
const FUZZ_SECONDS: u32 = 20;

/// Starts a whole deployment (`scripts/dev-up up`): not to run beside another test that does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_up_runs_the_distributed_deployment_as_local_processes() {
    let ports = server_ports();
    servers_answer(ports).await;
    let mut dev = DevUp::new(&binaries());
    if let Err(e) = scenario(&mut dev).await {
        panic!("{e:#}\n{}", dev.logs());
    }
}
