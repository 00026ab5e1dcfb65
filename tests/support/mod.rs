//! What the end-to-end tests of `orderflow serve` and `orderflow demo` share: the binary started
//! on a free port with its log in a file, stopped with SIGTERM, and JSON over HTTP/1.1 to it.
#![allow(dead_code)] // each test binary uses part of it

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// A running `orderflow` (`args`, then `--listen` and `--data-dir`), its stderr going to a file.
pub(crate) struct Server {
    child: Child,
    log: PathBuf,
}

impl Server {
    pub(crate) fn start(args: &[&str], data_dir: &Path, port: u16, log: PathBuf) -> Server {
        let stderr = std::fs::File::create(&log).expect("create the log file");
        let child = Command::new(env!("CARGO_BIN_EXE_orderflow"))
            .args(args)
            .args(["--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
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
    pub(crate) fn terminate(&mut self, within: Duration) -> anyhow::Result<ExitStatus> {
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

    /// SIGKILL: no drain, no goodbye; reaped before it returns.
    pub(crate) fn kill9(&mut self) -> anyhow::Result<()> {
        self.child.kill().context("SIGKILL")?;
        self.child.wait().context("reap")?;
        Ok(())
    }

    /// Whether the process still runs.
    pub(crate) fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub(crate) fn log(&self) -> String {
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

/// JSON over HTTP/1.1 to the server's one port.
pub(crate) struct Api {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
}

impl Api {
    pub(crate) fn new(port: u16) -> Api {
        Api {
            client: Client::builder(TokioExecutor::new()).build_http(),
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    /// `http://127.0.0.1:{port}`.
    pub(crate) fn base(&self) -> &str {
        &self.base
    }

    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(StatusCode, Value)> {
        let (status, _, value) = self.send(method, path, body).await?;
        Ok((status, value))
    }

    /// As [`Api::call`], with the answer's headers.
    pub(crate) async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(StatusCode, hyper::HeaderMap, Value)> {
        self.send_with(method, path, body, &[]).await
    }

    /// As [`Api::send`], with `headers` on the request.
    pub(crate) async fn send_with(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<(StatusCode, hyper::HeaderMap, Value)> {
        let body = body.map_or_else(Vec::new, |b| b.to_string().into_bytes());
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("content-type", "application/json");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::new(Bytes::from(body)))?;
        let response = self.client.request(request).await?;
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await?.to_bytes();
        let value =
            serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        Ok((status, headers, value))
    }

    /// `/metrics` as text.
    pub(crate) async fn metrics(&self) -> anyhow::Result<String> {
        let (status, _, body) = self.send(Method::GET, "/metrics", None).await?;
        ensure!(status == StatusCode::OK, "/metrics: {status}");
        Ok(body.as_str().map(str::to_owned).unwrap_or_default())
    }

    pub(crate) async fn get(&self, path: &str) -> anyhow::Result<(StatusCode, Value)> {
        self.call(Method::GET, path, None).await
    }

    /// POST a command; its answer's `position` (the consistency token).
    /// POSTs a command; answers its consistency token (`orders:12`), after checking that it is
    /// the service's and the position's the answer names.
    pub(crate) async fn command_token(&self, path: &str, body: Value, expected: StatusCode) -> anyhow::Result<String> {
        let (status, answer) = self.call(Method::POST, path, Some(body)).await?;
        ensure!(status == expected, "POST {path}: {status} {answer}");
        let (service, position, token) = (
            answer["service"].as_str(),
            answer["position"].as_u64(),
            answer["token"].as_str(),
        );
        let (Some(service), Some(position), Some(token)) = (service, position, token) else {
            bail!("POST {path}: no service, position and token in {answer}");
        };
        ensure!(token == format!("{service}:{position}"), "POST {path}: {answer}");
        Ok(token.to_owned())
    }

    pub(crate) async fn command(&self, path: &str, body: Value, expected: StatusCode) -> anyhow::Result<u64> {
        let (status, answer) = self.call(Method::POST, path, Some(body)).await?;
        ensure!(status == expected, "POST {path}: {status} {answer}");
        answer["position"]
            .as_u64()
            .with_context(|| format!("POST {path}: no position in {answer}"))
    }

    /// Waits up to `within` until `/ready` answers 200 (the server may still be starting or
    /// seeding).
    pub(crate) async fn wait_ready(&self, server: &mut Server, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = server.child.try_wait()? {
                bail!("`orderflow` exited before it was ready: {status}");
            }
            if let Ok((StatusCode::OK, _)) = self.get("/ready").await {
                return Ok(());
            }
            ensure!(Instant::now() < deadline, "not ready within {within:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A directory of its own for one test.
pub(crate) fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("orderflow-{name}-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).expect("create a scratch directory");
    dir
}

/// `orderflow args...` in `dir`, run to its end, with no `ORDERFLOW_*` variable but `env`.
pub(crate) fn orderflow(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_orderflow"))
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .output()
        .expect("run orderflow")
}

pub(crate) fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub(crate) fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs `scripts/api-fuzz run BASE_URL args...`; fails with its output unless it passes.
pub(crate) fn fuzz(base: &str, args: &[&str]) -> anyhow::Result<String> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/api-fuzz");
    let output = std::process::Command::new(&script)
        .arg("run")
        .arg(base)
        .args(args)
        .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    ensure!(
        !text.contains("schemathesis is not installed"),
        "schemathesis is missing: run `scripts/api-fuzz install` (scripts/test does)"
    );
    ensure!(
        output.status.success(),
        "schemathesis found failures at {base}:\n{text}"
    );
    Ok(text)
}

/// `Tested: N` and the total of `Selected: N/M` from schemathesis's summary.
pub(crate) fn operations_tested(report: &str) -> anyhow::Result<(u32, u32)> {
    let after = |label: &str| {
        report
            .lines()
            .find_map(|line| line.trim().strip_prefix(label).map(str::trim))
            .map(str::to_owned)
    };
    let tested = after("Tested:").and_then(|n| n.parse().ok());
    let total = after("Selected:").and_then(|s| s.split('/').nth(1)?.parse().ok());
    match (tested, total) {
        (Some(tested), Some(total)) => Ok((tested, total)),
        _ => anyhow::bail!("no operation counts in schemathesis's summary:\n{report}"),
    }
}
