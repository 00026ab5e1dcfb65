//! Headless Chromium driven through WebDriver: what the console's browser tests
//! (`tests/console.rs`) and `bench console` share.
//!
//! - [`Driver`]: a `chromedriver` of our own on a free loopback port, started as a child in a
//!   process group of its own and killed with the browsers it started when dropped.
//! - [`Browser`]: one WebDriver session, a fresh Chromium profile (so a cold cache) in a
//!   temporary directory, headless at 1280×800, with the browser console's log kept
//!   (`goog:loggingPrefs`).
//! - Waits are conditions polled until a deadline ([`Browser::wait_for`],
//!   [`Browser::wait_until`]), never fixed sleeps.
//! - The browser console's entries ([`Browser::console_log`]) come from chromedriver's
//!   `POST /session/{id}/se/log`; [`Browser::no_severe`] fails on a `SEVERE` one (a JavaScript
//!   error, a failed request).
//!
//! Debian's `chromium` and `chromium-driver` packages (`/usr/bin/chromium`,
//! `/usr/bin/chromedriver`), which `scripts/services up` installs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use bytes::Bytes;
use fantoccini::elements::Element;
use fantoccini::wd::{Capabilities, WebDriverCompatibleCommand};
use fantoccini::{Client, ClientBuilder, Locator};
use http_body_util::{BodyExt as _, Empty};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use serde_json::{Value, json};

/// The WebDriver client, for what this module does not wrap (keys, actions, elements).
pub use fantoccini;

/// The browser (Debian's `chromium`).
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// Its WebDriver server (Debian's `chromium-driver`).
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The viewport every session starts with.
pub const WINDOW: (u32, u32) = (1280, 800);
/// How long chromedriver gets to answer `/status`, and a new session to open.
const START_WITHIN: Duration = Duration::from_secs(30);
/// How often a wait looks again.
const POLL: Duration = Duration::from_millis(50);

/// A `chromedriver` child on a free loopback port. Dropping it kills it and the browsers it
/// started (its process group), and deletes the profiles of its sessions.
pub struct Driver {
    child: Child,
    url: String,
    /// The sessions' profiles and chromedriver's log live here.
    root: PathBuf,
}

impl Driver {
    /// Starts chromedriver and waits (at most 30 s) until `/status` says it is ready. Fails,
    /// naming `scripts/services up`, when Chromium or chromedriver is not installed.
    pub async fn start() -> anyhow::Result<Driver> {
        for (binary, package) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")] {
            ensure!(
                Path::new(binary).exists(),
                "{binary} is missing: install Debian's {package} package with `scripts/services up`"
            );
        }
        let root = std::env::temp_dir().join(format!("orderflow-chromium-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&root).with_context(|| format!("create {}", root.display()))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let log = root.join("chromedriver.log");
        let child = {
            use std::os::unix::process::CommandExt as _;
            Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .arg(format!("--log-path={}", log.display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                // A group of its own: the browsers it starts are killed with it.
                .process_group(0)
                .spawn()
                .with_context(|| format!("start {CHROMEDRIVER} (install it with `scripts/services up`)"))?
        };
        let mut driver = Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
            root,
        };
        driver.wait_ready().await?;
        Ok(driver)
    }

    /// chromedriver's address, `http://127.0.0.1:{port}`.
    pub fn url(&self) -> &str {
        &self.url
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let http = HttpClient::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
        let status: hyper::Uri = format!("{}/status", self.url).parse()?;
        let deadline = Instant::now() + START_WITHIN;
        let mut seen = String::from("no answer");
        loop {
            if let Some(exit) = self.child.try_wait()? {
                bail!("{CHROMEDRIVER} exited before it was ready: {exit}; {}", self.log_tail());
            }
            if let Ok(Ok(response)) = tokio::time::timeout(Duration::from_secs(2), http.get(status.clone())).await {
                let body = response.into_body().collect().await?.to_bytes();
                let answer: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                if answer["value"]["ready"] == true {
                    return Ok(());
                }
                seen = answer.to_string();
            }
            ensure!(
                Instant::now() < deadline,
                "{CHROMEDRIVER} not ready within {START_WITHIN:?} (last /status: {seen}); {}",
                self.log_tail()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// The last lines of chromedriver's log, for an error's message.
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.root.join("chromedriver.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        format!(
            "chromedriver's log ends with:\n{}",
            lines[lines.len().saturating_sub(20)..].join("\n")
        )
    }

    /// A new session: headless Chromium with a fresh profile (nothing cached), a 1280×800
    /// viewport, and its console's log kept.
    pub async fn session(&self) -> anyhow::Result<Browser> {
        let profile = self.root.join(format!("profile-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&profile)?;
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--no-first-run",
                    format!("--user-data-dir={}", profile.display()),
                    format!("--window-size={},{}", WINDOW.0, WINDOW.1),
                ],
            },
            "goog:loggingPrefs": { "browser": "ALL" },
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!("a JSON object")
        };
        let mut builder = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new());
        builder.capabilities(Capabilities::from(capabilities));
        let connect = builder.connect(&self.url);
        let client = match tokio::time::timeout(START_WITHIN, connect).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => bail!("cannot open a Chromium session: {e}; {}", self.log_tail()),
            Err(_) => bail!("no Chromium session within {START_WITHIN:?}; {}", self.log_tail()),
        };
        let browser = Browser { client, profile };
        browser.set_window_size(WINDOW.0, WINDOW.1).await?;
        Ok(browser)
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The whole group: chromedriver and the browsers of sessions never closed.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// One entry of the browser's console (chromedriver's log entry).
#[derive(Debug, Clone, Deserialize)]
pub struct LogEntry {
    /// `SEVERE`, `WARNING`, `INFO`, `DEBUG`.
    pub level: String,
    pub message: String,
    #[serde(default)]
    pub source: Option<String>,
    /// Milliseconds since the epoch.
    #[serde(default)]
    pub timestamp: f64,
}

impl std::fmt::Display for LogEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}] {}", self.level, self.message)
    }
}

/// chromedriver's `POST /session/{id}/se/log` `{"type": "browser"}`: the browser console's
/// entries since the last call (the call empties the buffer).
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(&self, base_url: &url::Url, session_id: Option<&str>) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!("session/{}/se/log", session_id.unwrap_or_default()))
    }

    fn method_and_body(&self, _: &url::Url) -> (hyper::Method, Option<String>) {
        (hyper::Method::POST, Some(json!({ "type": "browser" }).to_string()))
    }
}

/// One WebDriver session of headless Chromium. Close it with [`Browser::close`]; one dropped
/// instead ends with its [`Driver`].
pub struct Browser {
    client: Client,
    profile: PathBuf,
}

impl Browser {
    /// The WebDriver client, for what is not wrapped here.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Navigates to `url` (WebDriver waits for the document's load).
    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.client
            .goto(url)
            .await
            .with_context(|| format!("navigate to {url}"))
    }

    /// Resizes the window so that its viewport (what the page lays out in, and a screenshot
    /// shows) is `width`×`height`: the window is made larger by what its frame takes.
    pub async fn set_window_size(&self, width: u32, height: u32) -> anyhow::Result<()> {
        let resize = async |w: u32, h: u32| {
            self.client
                .set_window_size(w, h)
                .await
                .with_context(|| format!("resize the window to {w}×{h}"))
        };
        resize(width, height).await?;
        let inner = self
            .js("return [window.innerWidth, window.innerHeight];", Vec::new())
            .await?;
        let (Some(inner_width), Some(inner_height)) = (inner[0].as_u64(), inner[1].as_u64()) else {
            bail!("the viewport's size is {inner}");
        };
        let grow = |want: u32, got: u64| (u64::from(want) * 2).saturating_sub(got) as u32;
        if (inner_width, inner_height) != (u64::from(width), u64::from(height)) {
            resize(grow(width, inner_width), grow(height, inner_height)).await?;
        }
        Ok(())
    }

    /// Runs `script` (a function body: `return ...`, `arguments[i]`) in the page; its result.
    pub async fn js(&self, script: &str, args: Vec<Value>) -> anyhow::Result<Value> {
        self.client
            .execute(script, args)
            .await
            .with_context(|| format!("run in the page: {script}"))
    }

    /// The first element matching the CSS selector `css`, once there is one (at most `within`).
    pub async fn wait_for(&self, css: &str, within: Duration) -> anyhow::Result<Element> {
        let what = format!("an element matching `{css}`");
        self.wait_until(&what, within, async || {
            match self.client.find(Locator::Css(css)).await {
                Ok(element) => Ok(Some(element)),
                Err(e) if e.is_no_such_element() => Ok(None),
                Err(e) => Err(e.into()),
            }
        })
        .await
    }

    /// Every element matching `css` now (none is not an error).
    pub async fn find_all(&self, css: &str) -> anyhow::Result<Vec<Element>> {
        self.client
            .find_all(Locator::Css(css))
            .await
            .with_context(|| format!("find `{css}`"))
    }

    /// Asks `check` every 50 ms until it answers `Some(value)`, at most `within`; an error of
    /// `check` fails at once. The failure names `what` and the page's URL.
    pub async fn wait_until<T>(
        &self,
        what: &str,
        within: Duration,
        mut check: impl AsyncFnMut() -> anyhow::Result<Option<T>>,
    ) -> anyhow::Result<T> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(value) = check().await? {
                return Ok(value);
            }
            if Instant::now() >= deadline {
                let url = self
                    .client
                    .current_url()
                    .await
                    .map(|u| u.to_string())
                    .unwrap_or_default();
                bail!("{what}: not within {within:?} (page {url})");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until the JavaScript expression `condition` is truthy (at most `within`); answers
    /// its value.
    pub async fn wait_js(&self, condition: &str, within: Duration) -> anyhow::Result<Value> {
        let script = format!("return ({condition});");
        self.wait_until(&format!("`{condition}`"), within, async || {
            let value = self.js(&script, Vec::new()).await?;
            let truthy = !matches!(&value, Value::Null | Value::Bool(false))
                && value.as_f64() != Some(0.0)
                && value.as_str() != Some("");
            Ok(truthy.then_some(value))
        })
        .await
    }

    /// The browser console's entries since the last call.
    pub async fn console_log(&self) -> anyhow::Result<Vec<LogEntry>> {
        let answer = self
            .client
            .issue_cmd(BrowserLog)
            .await
            .context("read the browser's console (POST /session/{id}/se/log)")?;
        serde_json::from_value(answer).context("the browser's console entries")
    }

    /// The console's entries since the last call; fails, listing them, if one is `SEVERE`.
    /// `context` names the page in the message.
    pub async fn no_severe(&self, context: &str) -> anyhow::Result<Vec<LogEntry>> {
        let entries = self.console_log().await?;
        let severe: Vec<String> = entries
            .iter()
            .filter(|e| e.level == "SEVERE")
            .map(ToString::to_string)
            .collect();
        ensure!(
            severe.is_empty(),
            "{context}: SEVERE entries in the browser console:\n  {}",
            severe.join("\n  ")
        );
        Ok(entries)
    }

    /// A PNG of the viewport written to `path` (its directory created).
    pub async fn screenshot(&self, path: &Path) -> anyhow::Result<()> {
        let png = self.client.screenshot().await.context("take a screenshot")?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        }
        std::fs::write(path, png).with_context(|| format!("write {}", path.display()))
    }

    /// Ends the session (Chromium quits) and deletes its profile.
    pub async fn close(self) -> anyhow::Result<()> {
        let closed = self.client.close().await;
        let _ = std::fs::remove_dir_all(&self.profile);
        closed.context("close the browser session")
    }
}
