//! `orderflow serve`: the embedded deployment, the whole platform in one process with no server
//! to install (DESIGN.md, "Two deployments").
//!
//! - The event store is a SQLite file, `<data-dir>/events.db`; the read models (the order
//!   dashboard, sales analytics and the projections' control tables) are another,
//!   `<data-dir>/read.db`: a database per service, even here.
//! - Fan-out is the in-process subscription to the store's global log: one
//!   [`projections::run_from_store`] runner per projection, each resuming from the store position
//!   it checkpointed with its rows (so a restart continues where it stopped, and applies nothing
//!   twice).
//! - One HTTP port serves the write side's router (commands, the store's reads, and the
//!   operations endpoints `/health`, `/ready`, `/metrics`, `/openapi.json`), the read API's
//!   `/v1/...` queries ([`read_api::query_routes`]), and the admin endpoint
//!   `POST /v1/projections/{name}/rebuild`. Each path is served once: the operations endpoints
//!   are the write side's, `/ready` therefore checks the event store.
//! - Authentication is off: the embedded mode is a demo and a development tool on loopback.
//! - One Prometheus recorder for the process (the write side's), shared by both routers.
//! - Shutdown is one [`CancellationToken`]: the HTTP server stops accepting and drains the
//!   requests in flight (a read waiting for its `min_position` still gets it), then the runners
//!   and rebuilds stop, then the databases are closed.
//! - `--demo` (and `orderflow demo`) seeds an empty store with a simulated shop before serving,
//!   and `--rate` keeps commands coming through the command handler while it serves ([`demo`]).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::post;
use clap::Args;
use event_store::{EventStore, SqliteEventStore, StoreOptions};
use projections::catalog::{self, Sinks};
use projections::{ProjectionFactory, ReadDb, RebuildOptions, RunOptions};
use read_api::{ApiError, ReadConfig, ReadState};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use write_side::http::{Auth, HttpConfig, HttpState};
use write_side::{CommandHandler, HandlerOptions};

mod demo;

/// How long the projection runners and rebuilds get to stop once the HTTP server has drained.
const STOP_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Where the embedded databases live (created if missing): `events.db`, the event store, and
    /// `read.db`, the read models. Keep it to keep the data across restarts.
    #[arg(long, env = "ORDERFLOW_DATA_DIR", default_value = "orderflow-data")]
    data_dir: PathBuf,
    /// The one HTTP address: commands, queries, admin and operations endpoints. Authentication
    /// is off, so keep it on loopback.
    #[arg(long, env = "ORDERFLOW_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Seed an EMPTY event store with a simulated shop (customers, products, orders through
    /// their lifecycle over four simulated weeks) before serving. A store that holds events is
    /// left as it is, so restarting with --demo never seeds twice.
    #[arg(long, env = "ORDERFLOW_DEMO")]
    demo: bool,
    /// About how many events --demo seeds.
    #[arg(long, env = "ORDERFLOW_DEMO_EVENTS", default_value_t = 50_000)]
    demo_events: u64,
    /// Keep a live shop going at this many commands per second (0: off): new orders for the
    /// store's customers and products, orders confirmed, shipped, delivered or cancelled, all
    /// through the command handler. Rejections (out of stock) are logged at debug.
    #[arg(long, env = "ORDERFLOW_DEMO_RATE", default_value_t = 0.0)]
    rate: f64,
}

impl ServeArgs {
    /// The same arguments with `--demo` on (`orderflow demo`).
    pub(crate) fn with_demo(mut self) -> Self {
        self.demo = true;
        self
    }
}

/// Runs the embedded platform until `shutdown` is cancelled (Ctrl-C, SIGTERM).
pub(crate) async fn run(args: ServeArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.rate.is_finite() && args.rate >= 0.0,
        "--rate must be a number of commands per second, 0 or more"
    );
    anyhow::ensure!(!args.demo || args.demo_events > 0, "--demo-events must be at least 1");
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create the data directory {}", args.data_dir.display()))?;
    let data_dir = std::fs::canonicalize(&args.data_dir)
        .with_context(|| format!("cannot resolve the data directory {}", args.data_dir.display()))?;

    let events_path = data_dir.join("events.db");
    let pool = SqliteEventStore::connect(&events_path)
        .await
        .with_context(|| format!("cannot open the event store {}", events_path.display()))?;
    SqliteEventStore::migrate(&pool)
        .await
        .context("cannot migrate the event store")?;
    let sqlite_store = SqliteEventStore::open(pool, StoreOptions::default())
        .await
        .context("cannot open the event store")?;
    let store: Arc<dyn EventStore> = Arc::new(sqlite_store.clone());
    let seeded = if args.demo {
        demo::seed_if_empty(&*store, args.demo_events, &shutdown).await?
    } else {
        None
    };
    if shutdown.is_cancelled() {
        sqlite_store.pool().close().await;
        tracing::info!("stopped");
        return Ok(());
    }

    let read_path = data_dir.join("read.db");
    let read_db = ReadDb::connect(&sqlite_url(&read_path)?, 8)
        .await
        .with_context(|| format!("cannot open the read database {}", read_path.display()))?;
    read_db.migrate().await.context("cannot migrate the read database")?;
    let sinks = Sinks {
        read_db: read_db.clone(),
        clickhouse: None,
    };

    // One recorder for the process: the write side installs it; the read API renders it too.
    let metrics = write_side::http::prometheus_handle();
    // `ReadState::new` asks read-api's own `prometheus_handle` first, which finds the recorder
    // above installed and warns that its `/metrics` would show only its own. That does not apply
    // here (`with_metrics` below hands it the process's handle), so it is asked once in silence.
    tracing::subscriber::with_default(tracing::subscriber::NoSubscriber::default(), || {
        let _ = read_api::prometheus_handle();
    });

    // The runners and rebuilds stop once the HTTP server has drained, not with it: a read in
    // flight may be waiting for a runner to apply its `min_position`.
    let workers = CancellationToken::new();
    let mut runners = JoinSet::new();
    for name in catalog::NAMES {
        let factory = catalog::factory(name, &sinks)?;
        let (store, db, cancel) = (Arc::clone(&store), read_db.clone(), workers.clone());
        runners.spawn(async move {
            (
                name,
                projections::run_from_store(store, db, factory, RunOptions::default(), cancel).await,
            )
        });
    }

    let handler = CommandHandler::new(Arc::clone(&store), HandlerOptions::default());
    // The demo's tasks stop with the runners, before the databases close.
    let mut demo_tasks = JoinSet::new();
    if let Some(target) = seeded {
        demo_tasks.spawn(demo::report_catch_up(read_db.clone(), target, workers.clone()));
    }
    if args.rate > 0.0 {
        demo_tasks.spawn(demo::trickle(handler.clone(), args.rate, workers.clone()));
    }

    let mut http = HttpConfig::new(Auth::Disabled);
    http.metrics = Some(metrics.clone());
    let grace = http.request_timeout + Duration::from_secs(1);
    let commands = write_side::http::router(HttpState::new(handler, http));
    let head = store.changes();
    let queries = read_api::query_routes(
        ReadState::new(read_db.clone(), None, ReadConfig::default())
            .with_head(Arc::new(move || *head.borrow()))
            .with_metrics(metrics),
    );
    let admin = Admin {
        store: Arc::clone(&store),
        sinks,
        rebuilds: Arc::new(Mutex::new(Rebuilds::default())),
        stop: workers.clone(),
    };
    let app = commands.merge(queries).merge(admin_routes(admin.clone()));

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let address = listener.local_addr()?;
    banner(address, &data_dir);

    let server = write_side::http::serve_on(listener, app, grace, shutdown.clone().cancelled_owned());
    let mut server = std::pin::pin!(server);
    let mut runner_failed = false;
    let served = tokio::select! {
        served = &mut server => served,
        Some(stopped) = runners.join_next() => {
            // A runner only returns once cancelled: before that, it panicked. Reads would go
            // stale without saying so; stop the whole process instead.
            runner_stopped(stopped);
            runner_failed = true;
            shutdown.cancel();
            server.await
        }
    };
    shutdown.cancel();
    workers.cancel();

    let stop = async {
        while let Some(stopped) = runners.join_next().await {
            runner_stopped(stopped);
        }
        while demo_tasks.join_next().await.is_some() {}
    };
    if tokio::time::timeout(STOP_GRACE, stop).await.is_err() {
        tracing::warn!(
            "projection runners (or the demo) did not stop within {} s",
            STOP_GRACE.as_secs()
        );
    }
    let mut rebuilds = std::mem::take(&mut admin.lock().tasks);
    if tokio::time::timeout(STOP_GRACE, async { while rebuilds.join_next().await.is_some() {} })
        .await
        .is_err()
    {
        tracing::warn!("rebuilds did not stop within {} s", STOP_GRACE.as_secs());
    }
    sqlite_store.pool().close().await;
    read_db.pool().close().await;
    served.with_context(|| format!("cannot serve on {address}"))?;
    anyhow::ensure!(!runner_failed, "a projection runner failed; see the log above");
    tracing::info!("stopped");
    Ok(())
}

/// Logs how a runner ended.
fn runner_stopped(stopped: Result<(&'static str, Result<(), projections::ProjectionError>), tokio::task::JoinError>) {
    match stopped {
        Ok((name, Ok(()))) => tracing::debug!(projection = name, "runner stopped"),
        Ok((name, Err(e))) => tracing::error!(projection = name, error = %e, "projection runner failed"),
        Err(e) => tracing::error!(error = %e, "a projection runner panicked"),
    }
}

/// A `sqlite://` URL for `path`, with the characters SQLite URLs give a meaning escaped.
fn sqlite_url(path: &Path) -> anyhow::Result<String> {
    let path = path
        .to_str()
        .with_context(|| format!("the data directory {} is not valid UTF-8", path.display()))?;
    let escaped = path.replace('%', "%25").replace('?', "%3F").replace('#', "%23");
    Ok(format!("sqlite://{escaped}"))
}

/// What a newcomer needs to start: where it listens, where the data is, what to try.
fn banner(address: SocketAddr, data_dir: &Path) {
    let url = format!("http://{address}");
    if !address.ip().is_loopback() {
        tracing::warn!(%address, "listening beyond loopback with authentication off: anyone who reaches it can write");
    }
    tracing::info!(
        "orderflow is serving at {url} (embedded: SQLite in {dir}, authentication off)\n\
         \n  register a customer:  curl -s -X POST {url}/v1/customers -H 'content-type: application/json' \
         -d '{{\"name\":\"Ada\",\"email\":\"ada@example.com\"}}'\
         \n  see the orders:       curl -s {url}/v1/dashboard/orders\
         \n  projections' status:  curl -s {url}/v1/projections\
         \n  the API:              curl -s {url}/openapi.json",
        dir = data_dir.display(),
    );
}

/// The admin endpoints' state.
#[derive(Clone)]
struct Admin {
    store: Arc<dyn EventStore>,
    sinks: Sinks,
    rebuilds: Arc<Mutex<Rebuilds>>,
    /// Stops the rebuilds with the projection runners.
    stop: CancellationToken,
}

/// The rebuilds this process runs.
#[derive(Default)]
struct Rebuilds {
    /// Projections being rebuilt: one rebuild at a time per projection, so that the version a
    /// request answers is the one its rebuild registers.
    running: HashSet<&'static str>,
    tasks: JoinSet<()>,
}

impl Admin {
    fn lock(&self) -> std::sync::MutexGuard<'_, Rebuilds> {
        self.rebuilds.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Takes a projection off [`Rebuilds::running`] when dropped (the rebuild ended, failed to
/// start, or panicked).
struct Running {
    admin: Admin,
    name: &'static str,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.admin.lock().running.remove(self.name);
    }
}

fn admin_routes(admin: Admin) -> Router {
    Router::new()
        .route("/v1/projections/{name}/rebuild", post(rebuild))
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(admin)
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::method_not_allowed(method.as_str(), uri.path())
}

/// `POST /v1/projections/{name}/rebuild`: builds the next version of a projection from the event
/// store beside the live one, in the background, and switches reads to it when it has caught up.
/// 202 `{projection, version, state: "building"}`; `GET /v1/projections` shows the progress.
/// 404 for an unknown projection, 409 while one of it is already running.
async fn rebuild(State(admin): State<Admin>, UrlPath(name): UrlPath<String>) -> Result<Response, ApiError> {
    let Some(name) = catalog::NAMES.into_iter().find(|known| *known == name) else {
        return Err(ApiError::not_found("projection", name));
    };
    let factory = catalog::factory(name, &admin.sinks)?;
    if !admin.lock().running.insert(name) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            "a rebuild of this projection is running",
        )
        .with("projection", name));
    }
    let running = Running {
        admin: admin.clone(),
        name,
    };
    // The number `projections::rebuild` gives the new version; nothing else registers versions
    // in the embedded read database while this process holds `running`.
    let version = admin
        .sinks
        .read_db
        .versions(name)
        .await?
        .iter()
        .map(|v| v.version)
        .max()
        .unwrap_or(0)
        + 1;
    tracing::info!(projection = name, version, "rebuild requested");
    admin
        .lock()
        .tasks
        .spawn(rebuild_in_background(admin.clone(), factory, version, running));
    let answer = serde_json::json!({"projection": name, "version": version, "state": "building"});
    Ok((StatusCode::ACCEPTED, Json(answer)).into_response())
}

async fn rebuild_in_background(admin: Admin, factory: ProjectionFactory, version: u32, running: Running) {
    let name = running.name;
    let db = &admin.sinks.read_db;
    let build = projections::rebuild(
        Arc::clone(&admin.store),
        db,
        Arc::clone(&factory),
        RebuildOptions::default(),
        admin.stop.clone(),
        |_| {},
    );
    let mut build = std::pin::pin!(build);
    // While building, the rebuild reads the whole log before it looks at its token again:
    // shutdown does not wait for that, it drops the build (its open transaction rolls back).
    // Once switched live, what is left is short (catch up to the head, then drop the replaced
    // version's tables at once since the token is cancelled): that is let finish.
    let outcome = tokio::select! {
        outcome = &mut build => Some(outcome),
        () = admin.stop.cancelled() => match state_of(db, name, version).await.as_deref() {
            Some("live") => Some(build.await),
            _ => None,
        },
    };
    match outcome {
        Some(Ok(report)) => {
            tracing::info!(projection = name, version = report.version, replaced = ?report.replaced,
                events = report.events_applied, seconds = report.seconds, "rebuild done");
            return;
        }
        Some(Err(e)) => tracing::error!(projection = name, version, error = %e, "rebuild failed"),
        None => tracing::warn!(
            projection = name,
            version,
            "rebuild interrupted by shutdown; request it again"
        ),
    }
    // A version left `building` would show as a rebuild in progress forever: retire it and drop
    // its tables. One that was switched live already stays.
    if state_of(db, name, version).await.as_deref() == Some("building") {
        if let Err(e) = db.set_state(name, version, "retired").await {
            tracing::error!(projection = name, version, error = %e, "cannot retire the abandoned version");
        } else if let Err(e) = factory(version).drop_version().await {
            tracing::error!(projection = name, version, error = %e, "cannot drop the abandoned version's tables");
        }
    }
    drop(running);
}

/// The state of one version of a projection (`None`: not registered, or unreadable, logged).
async fn state_of(db: &ReadDb, name: &str, version: u32) -> Option<String> {
    match db.versions(name).await {
        Ok(versions) => versions.into_iter().find(|v| v.version == version).map(|v| v.state),
        Err(e) => {
            tracing::error!(projection = name, version, error = %e, "cannot read the versions");
            None
        }
    }
}
