//! End to end through `scripts/dev-up`, the distributed deployment as local processes: an
//! instance of its own (databases, roles, topics, consumer groups, ClickHouse database and user,
//! ports, state folder) beside the rest of the suite, driven over HTTP only. Commands go to
//! write-side with the instance's bearer token; the dashboard and the analytics are read back
//! from read-api (PostgreSQL and ClickHouse, through read-only credentials); an as-of read is
//! compared with write-side's fold; a rebuild changes no answer; a projection worker killed with
//! SIGKILL and restarted by `scripts/dev-up restart` lets new orders through; `down` stops
//! every process (a guard runs it when the test fails).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
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

mod support;

use support::free_port;

/// The repository: `scripts/dev-up` lives there.
fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The folder of the `orderflow` binary under test, with `write-side` and `read-api` beside it.
///
/// `write-side`, `relay`, `projections` and `read-api` are binaries of other workspace packages, so a test of this
/// package cannot name them with `CARGO_BIN_EXE_*`. `cargo nextest run --workspace` (what
/// `scripts/test` runs) builds every package's binaries into this same folder; a run of this
/// package alone (`-p orderflow`) does not, so they are built here when missing, with the
/// profile of the folder.
fn binaries() -> PathBuf {
    let dir = Path::new(env!("CARGO_BIN_EXE_orderflow"))
        .parent()
        .expect("the binary's folder")
        .to_path_buf();
    let others = ["write-side", "relay", "projections", "read-api"];
    if !others.iter().all(|binary| dir.join(binary).is_file()) {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = std::process::Command::new(cargo);
        build
            .args([
                "build",
                "-p",
                "write-side",
                "-p",
                "relay",
                "-p",
                "projections",
                "-p",
                "read-api",
                "--bins",
            ])
            .current_dir(repo());
        if dir.file_name().is_some_and(|name| name == "release") {
            build.arg("--release");
        }
        let status = build.status().expect("run cargo build");
        assert!(
            status.success(),
            "cargo build -p write-side -p relay -p projections -p read-api --bins: {status}"
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

/// One isolated `scripts/dev-up` instance. Dropping it runs `scripts/dev-up down`, so a failed
/// test leaves no process behind (its databases and logs stay, to be read).
struct DevUp {
    dir: PathBuf,
    env: Vec<(String, String)>,
    write: Http,
    read: Http,
    read_port: u16,
    write_port: u16,
    stopped: bool,
}

impl DevUp {
    fn new(bin_dir: &Path) -> DevUp {
        let id = Uuid::new_v4().simple().to_string();
        // Named as testkit names test databases (`orderflow_test_<unix seconds>_...`), so that
        // `scripts/clean-test-databases` drops the databases a failed run leaves once they are
        // old (its roles and ClickHouse user stay). Short enough for PostgreSQL's 63-character
        // names.
        let prefix = format!("{}_dev_{}_", testkit::database_prefix(), &id[..8]);
        let dir = std::env::temp_dir().join(format!("orderflow-dev-up-test-{id}"));
        let (write_port, read_port) = (free_port(), free_port());
        let (pg, clickhouse, kafka) = server_ports();
        let env = [
            ("ORDERFLOW_DEV_DIR", dir.display().to_string()),
            ("ORDERFLOW_DEV_PREFIX", prefix),
            ("ORDERFLOW_WRITE_PORT", write_port.to_string()),
            ("ORDERFLOW_READ_PORT", read_port.to_string()),
            // scripts/test brought the servers up; a missing one fails dev-up, naming the script.
            ("ORDERFLOW_DEV_SKIP_SERVICES", "1".into()),
            ("ORDERFLOW_BIN_DIR", bin_dir.display().to_string()),
            ("ORDERFLOW_SERVICES_PG_PORT", pg.to_string()),
            ("ORDERFLOW_SERVICES_CLICKHOUSE_PORT", clickhouse.to_string()),
            ("ORDERFLOW_SERVICES_KAFKA_PORT", kafka.to_string()),
            // tansu hands a killed member's partitions over only when a member joins after its
            // session expired (ADR 0004): a short session keeps the restart below quick.
            ("ORDERFLOW_SESSION_TIMEOUT_MS", "6000".into()),
            ("ORDERFLOW_LOG", "info".into()),
        ]
        .into_iter()
        .map(|(key, value)| (key.to_owned(), value))
        .collect();
        DevUp {
            dir,
            env,
            write: Http::new(write_port),
            read: Http::new(read_port),
            read_port,
            write_port,
            stopped: false,
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
        for service in ["write-side", "relay", "projections-1", "projections-2", "read-api"] {
            pids.insert(service.to_owned(), self.pid(service)?);
        }
        Ok(pids)
    }

    fn token(&self) -> anyhow::Result<String> {
        let token = std::fs::read_to_string(self.dir.join("token")).context("read the token file")?;
        Ok(token.trim().to_owned())
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

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> anyhow::Result<(StatusCode, Value)> {
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("content-type", "application/json");
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {token}"));
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

    /// POST a command; its answer's `position` (the consistency token).
    async fn command(&self, path: &str, body: Value, expected: StatusCode) -> anyhow::Result<u64> {
        let (status, answer) = self.call(Method::POST, path, Some(body)).await?;
        ensure!(status == expected, "POST {path}: {status} {answer}");
        answer["position"]
            .as_u64()
            .with_context(|| format!("POST {path}: no position in {answer}"))
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

/// An order the test placed, and what the read side must say about it.
#[derive(Debug, Clone)]
struct Placed {
    id: Uuid,
    customer: &'static str,
    total: i64,
    items: i64,
    status: &'static str,
}

struct Shop {
    customers: BTreeMap<&'static str, Uuid>,
    products: Vec<(Uuid, i64)>,
    orders: Vec<Placed>,
    /// The highest position a command answered.
    last: u64,
}

impl Shop {
    async fn place(&mut self, api: &Http, customer: &'static str, lines: &[(usize, i64)]) -> anyhow::Result<Placed> {
        let id = Uuid::now_v7();
        let body_lines: Vec<Value> = lines
            .iter()
            .map(|&(product, quantity)| json!({"product_id": self.products[product].0, "quantity": quantity}))
            .collect();
        let position = api
            .command(
                "/v1/orders",
                json!({"order_id": id, "customer_id": self.customers[customer], "lines": body_lines}),
                StatusCode::CREATED,
            )
            .await?;
        self.last = self.last.max(position);
        let placed = Placed {
            id,
            customer,
            total: lines.iter().map(|&(p, q)| self.products[p].1 * q).sum(),
            items: lines.iter().map(|&(_, q)| q).sum(),
            status: "placed",
        };
        self.orders.push(placed.clone());
        Ok(placed)
    }

    /// `step` is confirm, ship, deliver or cancel.
    async fn step(&mut self, api: &Http, order: Uuid, step: &str) -> anyhow::Result<u64> {
        let (body, status) = match step {
            "confirm" => (json!({}), "confirmed"),
            "ship" => (json!({"carrier": "DHL", "tracking": format!("T-{order}")}), "shipped"),
            "deliver" => (json!({}), "delivered"),
            "cancel" => (json!({"reason": "changed mind"}), "cancelled"),
            other => bail!("no step {other}"),
        };
        let position = api
            .command(&format!("/v1/orders/{order}/{step}"), body, StatusCode::OK)
            .await?;
        self.last = self.last.max(position);
        if let Some(placed) = self.orders.iter_mut().find(|o| o.id == order) {
            placed.status = status;
        }
        Ok(position)
    }
}

/// The dashboard's rows by order id, once read-api (after `min_position`, if given) shows every
/// order of `shop` as the test expects it.
async fn dashboard_matches(
    read: &Http,
    shop: &Shop,
    min_position: Option<u64>,
) -> anyhow::Result<BTreeMap<String, Value>> {
    let wait = min_position.map_or_else(String::new, |p| format!("&min_position={p}"));
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
        }
        Ok(rows)
    })
    .await
}

/// ClickHouse's revenue and funnel, through read-api, once they equal what the orders say.
async fn analytics_match(read: &Http, shop: &Shop) -> anyhow::Result<(Value, Value)> {
    let count = |statuses: &[&str]| shop.orders.iter().filter(|o| statuses.contains(&o.status)).count();
    let kept: Vec<&Placed> = shop.orders.iter().filter(|o| o.status != "cancelled").collect();
    let revenue: i64 = kept.iter().map(|o| o.total).sum();
    let from = (chrono::Utc::now() - chrono::Duration::days(1)).format("%Y-%m-%dT%H:%M:%SZ");
    let to = (chrono::Utc::now() + chrono::Duration::days(1)).format("%Y-%m-%dT%H:%M:%SZ");
    eventually("the analytics equal the orders", Duration::from_secs(60), async || {
        let answer = read
            .ok(&format!(
                "/v1/analytics/revenue?from={from}&to={to}&bucket=hour&min_position={}",
                shop.last
            ))
            .await?;
        let buckets = answer["buckets"].as_array().context("no buckets")?;
        let seen: i64 = buckets.iter().filter_map(|b| b["revenue_minor"].as_i64()).sum();
        let orders: u64 = buckets.iter().filter_map(|b| b["orders"].as_u64()).sum();
        ensure!(
            seen == revenue && orders == kept.len() as u64,
            "revenue {seen} over {orders} orders, the orders say {revenue} over {}: {answer}",
            kept.len()
        );
        let funnel = read
            .ok(&format!("/v1/analytics/order-funnel?min_position={}", shop.last))
            .await?;
        // Each order counts under every status it reached.
        let expected = json!({
            "placed": shop.orders.len(),
            "confirmed": count(&["confirmed", "shipped", "delivered"]),
            "shipped": count(&["shipped", "delivered"]),
            "delivered": count(&["delivered"]),
            "cancelled": count(&["cancelled"]),
        });
        for (status, n) in expected.as_object().context("an object")? {
            ensure!(funnel[status] == *n, "funnel {funnel}, expected {expected}");
        }
        Ok((answer, funnel))
    })
    .await
}

/// What read-api runs with: the variables of its process.
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

async fn scenario(dev: &mut DevUp) -> anyhow::Result<()> {
    let started = Instant::now();
    // Up, as a newcomer would run it.
    let banner = dev.run(&["up"]).await?;
    let token = dev.token()?;
    ensure!(token.len() >= 32, "a short token");
    for expected in [
        format!("http://127.0.0.1:{}", dev.write_port),
        format!("http://127.0.0.1:{}", dev.read_port),
        dev.dir.join("token").display().to_string(),
        "down".to_owned(),
    ] {
        ensure!(banner.contains(&expected), "the banner lacks {expected}:\n{banner}");
    }
    ensure!(!banner.contains(&token), "the banner shows the token");
    for log in std::fs::read_dir(dev.dir.join("logs"))? {
        let text = std::fs::read_to_string(log?.path())?;
        ensure!(!text.contains(&token), "a log shows the token");
    }
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(dev.dir.join("token"))?.permissions().mode();
    ensure!(mode & 0o077 == 0, "the token file is readable by others: {mode:o}");
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

    // Authentication is on.
    let (status, body) = dev
        .write
        .call(
            Method::POST,
            "/v1/customers",
            Some(json!({"name": "Eve", "email": "eve@example.com"})),
        )
        .await?;
    ensure!(
        status == StatusCode::UNAUTHORIZED,
        "a command without a token: {status} {body}"
    );
    dev.write.token = Some(token);
    let before_everything = chrono::Utc::now();

    // The shop.
    let mut shop = Shop {
        customers: BTreeMap::new(),
        products: Vec::new(),
        orders: Vec::new(),
        last: 0,
    };
    for name in ["Ada", "Grace"] {
        let id = Uuid::now_v7();
        let email = format!("{}@example.com", name.to_lowercase());
        let position = dev
            .write
            .command(
                "/v1/customers",
                json!({"customer_id": id, "name": name, "email": email}),
                StatusCode::CREATED,
            )
            .await?;
        shop.last = shop.last.max(position);
        shop.customers.insert(name, id);
    }
    for (n, price) in [1250, 800, 4999].into_iter().enumerate() {
        let id = Uuid::now_v7();
        let position = dev
            .write
            .command(
                "/v1/products",
                json!({"product_id": id, "sku": format!("SKU-{n}"), "name": format!("Product {n}"),
                       "price_minor": price, "currency": "EUR", "stock": 100}),
                StatusCode::CREATED,
            )
            .await?;
        shop.last = shop.last.max(position);
        shop.products.push((id, price));
    }
    let o1 = shop.place(&dev.write, "Ada", &[(0, 2)]).await?;
    shop.step(&dev.write, o1.id, "confirm").await?;
    let o2 = shop.place(&dev.write, "Ada", &[(1, 1), (2, 1)]).await?;
    for step in ["confirm", "ship", "deliver"] {
        shop.step(&dev.write, o2.id, step).await?;
    }
    let o2_delivered = shop.last;
    let o3 = shop.place(&dev.write, "Grace", &[(0, 1)]).await?;
    shop.step(&dev.write, o3.id, "cancel").await?;
    let o4 = shop.place(&dev.write, "Grace", &[(2, 2)]).await?;
    shop.step(&dev.write, o4.id, "confirm").await?;
    // A point between o4's confirmation and its shipping, for the as-of reads.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let between = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(50)).await;
    shop.step(&dev.write, o4.id, "ship").await?;

    // Read-your-writes: one order, with the position its last command answered.
    let row = dev
        .read
        .caught_up(&format!("/v1/dashboard/orders/{}?min_position={o2_delivered}", o2.id))
        .await?;
    ensure!(
        row["status"] == "delivered" && row["total_minor"] == 5799 && row["customer_name"] == "Ada",
        "{row}"
    );
    ensure!(row["carrier"] == "DHL" && row["item_count"] == 2, "{row}");
    dashboard_matches(&dev.read, &shop, Some(shop.last)).await?;
    let ada = dev
        .read
        .caught_up(&format!(
            "/v1/dashboard/customers/{}?min_position={}",
            shop.customers["Ada"], shop.last
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
            "/v1/dashboard/customers/{}?min_position={}",
            shop.customers["Grace"], shop.last
        ))
        .await?;
    ensure!(grace["order_count"] == 2, "{grace}");
    ensure!(
        grace["lifetime_value"][0]["lifetime_value_minor"] == 9998,
        "the cancelled order left it: {grace}"
    );
    let (_, funnel) = analytics_match(&dev.read, &shop).await?;
    ensure!(funnel["placed_to_delivered_conversion"] == 0.25, "{funnel}");

    // As of a past time: read-api's dashboard history equals write-side's fold of the stream.
    let at = between.format("%Y-%m-%dT%H:%M:%S%.6fZ");
    let past = dev
        .read
        .caught_up(&format!(
            "/v1/dashboard/orders/{}?as_of={at}&min_position={}",
            o4.id, shop.last
        ))
        .await?;
    let folded = dev.write.ok(&format!("/v1/orders/{}/state?as_of={at}", o4.id)).await?;
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
            "as of {at}: read-api {read_field} {} ≠ write-side {write_field} {}",
            past[read_field],
            folded[write_field]
        );
    }
    ensure!(
        past["customer_name"] == folded["customer"]["name"],
        "read {past}\nwrite {folded}"
    );
    let now = dev.write.ok(&format!("/v1/orders/{}/state", o4.id)).await?;
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
        .write
        .get(&format!("/v1/orders/{}/state?as_of={early}", o4.id))
        .await?;
    ensure!(
        status == StatusCode::NOT_FOUND,
        "write-side as of before the order: {status} {body}"
    );

    read_api_is_read_only(dev).await?;

    // A worker killed with SIGKILL; orders placed while it is dead and after its restart appear.
    let victim = dev.pid("projections-1")?;
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &victim.to_string()])
        .status()?;
    ensure!(killed.success(), "kill -KILL {victim}");
    eventually("the killed worker is gone", Duration::from_secs(10), async || {
        ensure!(!running(victim), "{victim} still runs");
        Ok(())
    })
    .await?;
    let status = dev.command(&["status"]).output().await?;
    let said = String::from_utf8_lossy(&status.stdout);
    ensure!(
        !status.status.success(),
        "status says all is well with a dead worker:\n{said}"
    );
    ensure!(said.contains("projections-1  DOWN"), "{said}");
    let o5 = shop.place(&dev.write, "Ada", &[(1, 3)]).await?;
    // The dead member's session (6 s here) must have expired when its successor joins: tansu
    // hands a dead member's partitions over only then (ADR 0004).
    tokio::time::sleep(Duration::from_secs(8)).await;
    let restarted = dev.run(&["restart", "projections-1"]).await?;
    ensure!(restarted.contains("projections-1: restarted"), "{restarted}");
    let successor = dev.pid("projections-1")?;
    ensure!(
        successor != victim && running(successor),
        "projections-1 is not running again"
    );
    let o6 = shop.place(&dev.write, "Grace", &[(0, 1), (1, 1)]).await?;
    shop.step(&dev.write, o6.id, "confirm").await?;
    let dashboard = dashboard_matches(&dev.read, &shop, Some(shop.last)).await?;
    ensure!(dashboard.contains_key(&o5.id.to_string()) && dashboard.contains_key(&o6.id.to_string()));
    let (revenue, _) = analytics_match(&dev.read, &shop).await?;
    dev.run(&["status"]).await?;

    // A rebuild: version 2 of the dashboard, from the event store, and the same answers.
    let ada = dev
        .read
        .caught_up(&format!(
            "/v1/dashboard/customers/{}?min_position={}",
            shop.customers["Ada"], shop.last
        ))
        .await?;
    let rebuilt = dev
        .run(&["orderflow", "projections", "rebuild", "order_dashboard"])
        .await?;
    let report: Value = serde_json::from_str(rebuilt.trim()).with_context(|| format!("rebuild's report: {rebuilt}"))?;
    ensure!(
        report["projection"] == "order_dashboard"
            && report["version"] == 2
            && report["replaced"] == 1
            && report["position"].as_u64() >= Some(shop.last),
        "{report}"
    );
    let live = dev.read.ok("/v1/projections").await?;
    let dashboard_status = live["projections"]
        .as_array()
        .and_then(|all| all.iter().find(|p| p["name"] == "order_dashboard"))
        .with_context(|| format!("no order_dashboard in {live}"))?;
    ensure!(dashboard_status["live_version"] == 2, "{live}");
    ensure!(
        dashboard_matches(&dev.read, &shop, Some(shop.last)).await? == dashboard,
        "the rebuild changed the dashboard"
    );
    let ada_after = dev
        .read
        .caught_up(&format!(
            "/v1/dashboard/customers/{}?min_position={}",
            shop.customers["Ada"], shop.last
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
    let o7 = shop.place(&dev.write, "Ada", &[(0, 1)]).await?;
    dashboard_matches(&dev.read, &shop, Some(shop.last)).await?;
    let after = analytics_match(&dev.read, &shop).await?.0;
    ensure!(
        after["buckets"] != revenue["buckets"],
        "o7 {o7:?} is not in the revenue: {after}"
    );

    // `bench freshness` measures this deployment over HTTP: every order it places is answered
    // and found, mostly in the dashboard list from its `placed_from`. (Its lookup of single
    // orders also counts one that appeared between a probe's list and its lookup, so on a slow
    // run a few may be looked up; a wrong `placed_from` sends all of them there.) The figures
    // themselves are BENCHMARKS.md's business.
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_orderflow"))
        .args([
            "bench",
            "freshness",
            "--rate",
            "40",
            "--seconds",
            "1",
            "--products",
            "4",
            "--customers",
            "2",
        ])
        .arg("--write-url")
        .arg(format!("http://127.0.0.1:{}", dev.write_port))
        .arg("--read-url")
        .arg(format!("http://127.0.0.1:{}", dev.read_port))
        .arg("--token-file")
        .arg(dev.dir.join("token"))
        .env_remove("ORDERFLOW_CONFIG")
        .output()
        .await?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(output.status.success(), "bench freshness failed: {stderr}");
    ensure!(!stderr.contains(&dev.token()?), "bench freshness printed the token");
    let report: Value = serde_json::from_slice(&output.stdout).context("bench freshness prints JSON")?;
    ensure!(
        report["placed"] == 40
            && report["failed"] == 0
            && report["never_seen"] == 0
            && report["looked_up"].as_u64().is_some_and(|n| n <= 20),
        "bench freshness: {report}"
    );
    let (p50, p99) = (report["p50_ms"].as_f64(), report["p99_ms"].as_f64());
    ensure!(
        p50.zip(p99).is_some_and(|(p50, p99)| 0.0 < p50 && p50 <= p99),
        "bench freshness: {report}"
    );
    let scenario_at = started.elapsed();

    // Down: every process stops, the ports close.
    let pids = dev.pids()?;
    dev.run(&["down"]).await?;
    dev.stopped = true;
    for (service, pid) in &pids {
        ensure!(!running(*pid), "{service} (pid {pid}) still runs after down");
    }
    for port in [dev.write_port, dev.read_port] {
        ensure!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "port {port} still answers after down"
        );
    }
    let status = dev.command(&["status"]).output().await?;
    ensure!(!status.status.success(), "status after down exits 0");
    dev.run(&["down", "--purge"]).await?;
    ensure!(!dev.dir.exists(), "down --purge left {}", dev.dir.display());
    eprintln!(
        "dev-up: up twice in {:.1}s, scenario done at {:.1}s, down at {:.1}s",
        up_at.as_secs_f64(),
        scenario_at.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_up_runs_the_distributed_deployment_as_local_processes() {
    let ports = server_ports();
    servers_answer(ports).await;
    let mut dev = DevUp::new(&binaries());
    if let Err(e) = scenario(&mut dev).await {
        panic!("{e:#}\n{}", dev.logs());
    }
}
