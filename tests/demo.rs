//! End to end, with the real binary: `orderflow serve --demo` seeds an empty store with a shop
//! whose orders went through their lifecycle, the in-process projections show it, and a restart
//! with `--demo` on the same data directory does not seed it again.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::StatusCode;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use uuid::Uuid;

/// About how many events the test seeds: enough for delivered orders, quick in a debug build.
const DEMO_EVENTS: &str = "5000";

/// A running `orderflow <subcommand> --demo ...`, its stderr going to a file.
struct Server {
    child: Child,
    log: PathBuf,
}

impl Server {
    fn start(subcommand: &[&str], data_dir: &Path, port: u16, log: PathBuf) -> Server {
        let stderr = std::fs::File::create(&log).expect("create the log file");
        let child = Command::new(env!("CARGO_BIN_EXE_orderflow"))
            .args(subcommand)
            .args(["--demo-events", DEMO_EVENTS, "--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(data_dir)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start `orderflow`");
        Server { child, log }
    }

    /// SIGTERM, then the exit status (at most `within`).
    fn terminate(&mut self, within: Duration) -> anyhow::Result<ExitStatus> {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .context("run kill")?;
        ensure!(sent.success(), "kill -TERM failed");
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            ensure!(Instant::now() < deadline, "still running {within:?} after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// GETs JSON from the server's one port.
struct Api {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
}

impl Api {
    async fn get(&self, path: &str) -> anyhow::Result<(StatusCode, Value)> {
        let request = hyper::Request::builder()
            .uri(format!("{}{path}", self.base))
            .body(Full::new(Bytes::new()))?;
        let response = self.client.request(request).await?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        let value =
            serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        Ok((status, value))
    }

    /// Waits until `/ready` answers 200: the server seeds before it listens.
    async fn wait_ready(&self, server: &mut Server) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(status) = server.child.try_wait()? {
                bail!("`orderflow` exited before it was ready: {status}");
            }
            if let Ok((StatusCode::OK, _)) = self.get("/ready").await {
                return Ok(());
            }
            ensure!(Instant::now() < deadline, "not ready within 120 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The funnel once the projections show a shop with placed and delivered orders and at
    /// least one row on the dashboard.
    async fn wait_for_the_shop(&self) -> anyhow::Result<Value> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let (status, page) = self.get("/v1/dashboard/orders?limit=5").await?;
            ensure!(status == StatusCode::OK, "dashboard: {status} {page}");
            let rows = page["rows"].as_array().map_or(0, Vec::len);
            let (status, funnel) = self.get("/v1/analytics/order-funnel").await?;
            ensure!(status == StatusCode::OK, "funnel: {status} {funnel}");
            let count = |key: &str| funnel[key].as_u64().unwrap_or(0);
            if rows > 0 && count("placed") > 0 && count("delivered") > 0 {
                return Ok(funnel);
            }
            ensure!(
                Instant::now() < deadline,
                "no shop on the read side within 120 s: {rows} rows, funnel {funnel}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The funnel once the projections have applied every event up to `position` (a read waits
    /// a little for its `min_position`, then answers 503 `not_caught_up`: ask again).
    async fn funnel_at(&self, position: u64) -> anyhow::Result<Value> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let (status, funnel) = self
                .get(&format!("/v1/analytics/order-funnel?min_position={position}"))
                .await?;
            if status == StatusCode::OK {
                return Ok(funnel);
            }
            ensure!(
                status == StatusCode::SERVICE_UNAVAILABLE && Instant::now() < deadline,
                "funnel at {position}: {status} {funnel}"
            );
        }
    }

    /// Every event in the store, counted through `GET /v1/log` page by page.
    async fn events_in_the_store(&self) -> anyhow::Result<u64> {
        let (mut total, mut from) = (0, 1);
        loop {
            let (status, page) = self.get(&format!("/v1/log?from_position={from}&limit=1000")).await?;
            ensure!(status == StatusCode::OK, "log: {status} {page}");
            total += page["events"].as_array().map_or(0, Vec::len) as u64;
            match page["next_from_position"].as_u64() {
                Some(next) => from = next,
                None => return Ok(total),
            }
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// The first start: seeds, serves, and the read side shows orders through their whole life.
async fn first_run(api: &Api, server: &mut Server) -> anyhow::Result<(Value, u64)> {
    api.wait_ready(server).await?;
    ensure!(server.log().contains("seeded the demo shop"), "no seeding logged");
    api.wait_for_the_shop().await?;
    let events = api.events_in_the_store().await?;
    ensure!(events >= 5000, "{events} events seeded, asked for about {DEMO_EVENTS}");
    // Positions are 1..=events: the whole seeded history, projected.
    let funnel = api.funnel_at(events).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !server.log().contains("caught up with the demo shop") {
        ensure!(Instant::now() < deadline, "no catch-up logged within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok((funnel, events))
}

/// The restart: nothing seeded again, the shop is the same.
async fn second_run(api: &Api, server: &mut Server, funnel: &Value, events: u64) -> anyhow::Result<()> {
    api.wait_ready(server).await?;
    let log = server.log();
    ensure!(
        log.contains("not seeding the demo shop again"),
        "the restart does not say it skipped seeding"
    );
    ensure!(!log.contains("seeded the demo shop"), "seeded again on restart");
    let now = api.events_in_the_store().await?;
    ensure!(now == events, "the store went from {events} to {now} events on restart");
    let again = api.funnel_at(events).await?;
    ensure!(again == *funnel, "the funnel changed: {funnel} then {again}");
    Ok(())
}

fn stop(server: &mut Server) {
    match server.terminate(Duration::from_secs(20)) {
        Ok(status) => assert!(status.success(), "exit {status} after SIGTERM\n{}", server.log()),
        Err(e) => panic!("{e:#}\n{}", server.log()),
    }
    assert!(
        server.log().contains("stopped"),
        "no clean stop logged:\n{}",
        server.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_seeds_an_empty_store_once_and_the_dashboard_shows_it() {
    let root = std::env::temp_dir().join(format!("orderflow-demo-test-{}", Uuid::now_v7()));
    let data_dir = root.join("data");
    std::fs::create_dir_all(&root).expect("create the test directory");
    let port = free_port();
    let api = Api {
        client: Client::builder(TokioExecutor::new()).build_http(),
        base: format!("http://127.0.0.1:{port}"),
    };

    let mut first = Server::start(&["serve", "--demo"], &data_dir, port, root.join("first.log"));
    let (funnel, events) = match first_run(&api, &mut first).await {
        Ok(seen) => seen,
        Err(e) => panic!("first run: {e:#}\n--- orderflow's log ---\n{}", first.log()),
    };
    stop(&mut first);

    // `orderflow demo` is `serve --demo`.
    let mut second = Server::start(&["demo"], &data_dir, port, root.join("second.log"));
    if let Err(e) = second_run(&api, &mut second, &funnel, events).await {
        panic!("second run: {e:#}\n--- orderflow's log ---\n{}", second.log());
    }
    stop(&mut second);
    drop((first, second));
    let _ = std::fs::remove_dir_all(&root);
}
