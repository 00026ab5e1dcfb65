//! `orderflow serve` (this binary) as a child process on a folder of its own: for the
//! benchmarks that measure a whole process from outside (its memory under a soak, its answers
//! under overload), where the process's resident memory must be the server's alone.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};

use crate::load::HttpClient;

const HOST: &str = "127.0.0.1";
/// How long a new server gets to answer `/ready`.
const READY_WITHIN: Duration = Duration::from_secs(60);
/// How long a server gets to exit after SIGTERM before it is killed.
const STOP_WITHIN: Duration = Duration::from_secs(20);

pub(crate) struct ServeChild {
    child: Option<Child>,
    pub(crate) pid: u32,
    /// `http://127.0.0.1:<port>`.
    pub(crate) base: String,
    /// Its standard error (`RUST_LOG=warn`).
    log: PathBuf,
}

impl ServeChild {
    /// Starts `serve` on a free port with its data in `data_dir`, its standard error in `log`
    /// and `extra_args`; answers once `/ready` says 200.
    pub(crate) async fn start(
        data_dir: &Path,
        log: &Path,
        extra_args: &[String],
        client: &HttpClient,
    ) -> anyhow::Result<ServeChild> {
        let port = std::net::TcpListener::bind((HOST, 0))?.local_addr()?.port();
        let name = data_dir
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let child = Command::new(std::env::current_exe().context("the orderflow binary")?)
            .args(["serve", "--listen", &format!("{HOST}:{port}"), "--data-dir"])
            .arg(data_dir)
            .args(extra_args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log)?)
            .spawn()
            .context("start orderflow serve")?;
        let mut server = ServeChild {
            pid: child.id(),
            child: Some(child),
            base: format!("http://{HOST}:{port}"),
            log: log.to_owned(),
        };
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if !server.alive() {
                let tail = std::fs::read_to_string(&server.log).unwrap_or_default();
                anyhow::bail!("serve ({name}) exited: {}", tail.trim());
            }
            if server.ready(client).await {
                return Ok(server);
            }
            ensure!(
                Instant::now() < deadline,
                "serve ({name}) was not ready within {} s",
                READY_WITHIN.as_secs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn ready(&self, client: &HttpClient) -> bool {
        let Ok(request) = hyper::Request::get(format!("{}/ready", self.base)).body(Full::new(Bytes::new())) else {
            return false;
        };
        match tokio::time::timeout(Duration::from_secs(5), client.request(request)).await {
            Ok(Ok(response)) => {
                let ok = response.status() == 200;
                ok && response.into_body().collect().await.is_ok()
            }
            _ => false,
        }
    }

    /// Whether the process is still running.
    pub(crate) fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// Resident memory now and at its peak (`VmRSS`, `VmHWM`), in MB.
    pub(crate) fn memory_mb(&self) -> (f64, f64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
                .map_or(0.0, |kb| kb / 1024.0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// SIGTERM, then SIGKILL if it has not exited within 20 s. Fails if it had already exited:
    /// a server that died under the benchmark invalidates its figures.
    pub(crate) fn stop(&mut self) -> anyhow::Result<()> {
        let alive = self.alive();
        if let Some(mut child) = self.child.take() {
            if alive {
                let _ = Command::new("kill").args(["-TERM", &self.pid.to_string()]).status();
                let deadline = Instant::now() + STOP_WITHIN;
                while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        ensure!(alive, "serve died during the benchmark: see {}", self.log.display());
        Ok(())
    }
}

/// A benchmark that fails half-way leaves no server behind.
impl Drop for ServeChild {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
