//! `orderflow serve`: the embedded deployment, the whole platform in one process with no server
//! to install (docs/design.md, "Two deployments").
//!
//! - Every service has its own event store, a SQLite file: `<data-dir>/customers.db`,
//!   `inventory.db`, `orders.db`, `payments.db`; the orders service's copy of customers and
//!   products is a database of that service's own, `orders-replica.db` (its tables and
//!   migrations are a projection's, kept apart from the event store's). The read models (the order
//!   dashboard, sales analytics and the projections' control tables) are another,
//!   `<data-dir>/read.db`: a database per service, even here.
//! - The services are [`write_side::Local`]: the orders service calls the inventory and
//!   customers services through their own routers in-process, the code paths of the
//!   distributed deployment without sockets.
//! - Fan-out is the in-process subscription to each service's log: per projection, one
//!   [`projections::run_from_stores`] runner per service, each resuming from the position it
//!   checkpointed with its rows (so a restart continues where it stopped, and applies nothing
//!   twice).
//! - One HTTP port serves the services' router (commands, the stores' reads, and the operations
//!   endpoints `/health`, `/ready`, `/metrics`, `/openapi.json`), the read API's `/v1/...`
//!   queries ([`read_api::query_routes`]), and the admin endpoint
//!   `POST /v1/projections/{name}/rebuild` (`admin`), and the operations console's pages at `/`
//!   ([`web_console::assets`]), whose requests all land on this same port. Each path is served once:
//!   the operations endpoints are the services', `/ready` therefore checks the event stores.
//! - A data directory from before every service had its own store (one `events.db`) is not
//!   served: `serve` refuses to start and names the command that splits it.
//! - The place-order saga (ADR 0010) is driven in the process ([`Local::run_sagas`], beside the
//!   runners): placing an order answers at once with a pending order, and the driver reserves
//!   its stock, authorizes its payment at the simulated payment provider (`--gateway-*`) and
//!   confirms it, or cancels it (at the latest at `--saga-deadline`).
//! - Authentication is off: the embedded mode is a demo and a development tool on loopback.
//! - One Prometheus recorder for the process (the service kit's), rendered by both routers.
//! - Shutdown is one [`CancellationToken`]: the HTTP server stops accepting and drains the
//!   requests in flight (a read waiting for its `min_position` still gets it), then the runners
//!   and rebuilds stop, then the databases are closed.
//! - `--demo` (and `orderflow demo`) seeds an empty store with a simulated shop before serving
//!   ([`shop_sim::demo`]), and `--rate` keeps commands coming through the command handler while
//!   it serves ([`shop_sim::live`]).

mod catch_up;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use event_schemas::Service;
use event_store::Position;
use projections::catalog::{self, Sinks};
use projections::{ReadDb, RunOptions, ServiceLog};
use read_api::{ReadConfig, ReadState};
use service_kit::db::{self, DatabaseUrl, Migrate, PoolSettings, ServiceStoreUrls};
use service_kit::http::InFlightLimit;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use write_side::gateway::GatewaySettings;
use write_side::http::{Auth, HttpConfig};
use write_side::orders::{SagaOptions, replica};
use write_side::{HandlerOptions, Local, LocalOptions};

/// How long the projection runners and rebuilds get to stop once the HTTP server has drained.
const STOP_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Where the embedded databases live (created if missing): `<service>.db`, each service's
    /// event store, and `read.db`, the read models. Keep it to keep the data across restarts.
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
    /// store's customers and products (their saga confirms or cancels them), orders shipped,
    /// delivered or cancelled, all through the services. Rejections are logged at debug.
    #[arg(long, env = "ORDERFLOW_DEMO_RATE", default_value_t = 0.0)]
    rate: f64,
    /// How long an order may stay pending before its saga cancels it (`timed_out`, or
    /// `payment_unavailable`): e.g. 15m, 30s. Recorded in each saga when it starts.
    #[arg(long, env = "ORDERFLOW_SAGA_DEADLINE", default_value = "15m", value_parser = service_kit::cli::parse_duration)]
    saga_deadline: Duration,
    /// The share of authorizations the simulated payment provider declines, from 0 to 1 (which
    /// ones is a function of the payment id). Default: 0.05 while the demo shop runs (--demo
    /// or --rate), 0 otherwise.
    #[arg(long, env = "ORDERFLOW_GATEWAY_DECLINE_RATE")]
    gateway_decline_rate: Option<f64>,
    /// How long each call to the simulated payment provider takes, in milliseconds.
    #[arg(long, env = "ORDERFLOW_GATEWAY_LATENCY_MS", default_value_t = 0)]
    gateway_latency_ms: u64,
    /// Start with the simulated payment provider down (every call fails until changed with
    /// `PUT /v1/gateway`): orders stay pending, then their saga cancels them at the deadline.
    #[arg(long, env = "ORDERFLOW_GATEWAY_UNAVAILABLE")]
    gateway_unavailable: bool,
    /// Aggregates each service keeps in memory between commands (0: load every aggregate from
    /// its store for every command). Each of the four services has a cache of this many
    /// entries, so the process's memory grows with the orders until they are full.
    #[arg(long, env = "ORDERFLOW_AGGREGATE_CACHE_ENTRIES", default_value_t = HandlerOptions::default().cache_capacity)]
    aggregate_cache_entries: usize,
    /// One bound for the whole port: commands and queries share it.
    #[command(flatten)]
    load: service_kit::http::LoadArgs,
}

/// The simulated payment provider's decline rate while the demo shop runs, unless
/// `--gateway-decline-rate` says otherwise.
pub const DEMO_DECLINE_RATE: f64 = 0.05;

impl ServeArgs {
    /// The same arguments with `--demo` on (`orderflow demo`).
    pub fn with_demo(mut self) -> Self {
        self.demo = true;
        self
    }

    /// How the services run: the saga's deadline, the simulated payment provider's settings.
    fn local_options(&self) -> anyhow::Result<LocalOptions> {
        let demo_shop = self.demo || self.rate > 0.0;
        let gateway = GatewaySettings {
            decline_rate: self
                .gateway_decline_rate
                .unwrap_or(if demo_shop { DEMO_DECLINE_RATE } else { 0.0 }),
            latency_ms: self.gateway_latency_ms,
            unavailable: self.gateway_unavailable,
        };
        gateway.validate().map_err(|e| anyhow::anyhow!("--gateway-*: {e}"))?;
        Ok(LocalOptions {
            handler: HandlerOptions {
                cache_capacity: self.aggregate_cache_entries,
                ..HandlerOptions::default()
            },
            saga: SagaOptions {
                deadline: self.saga_deadline,
                ..SagaOptions::default()
            },
            gateway,
        })
    }
}

/// Runs the embedded platform until `shutdown` is cancelled (Ctrl-C, SIGTERM).
pub async fn run(args: ServeArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.rate.is_finite() && args.rate >= 0.0,
        "--rate must be a number of commands per second, 0 or more"
    );
    anyhow::ensure!(!args.demo || args.demo_events > 0, "--demo-events must be at least 1");
    let options = args.local_options()?;
    tracing::info!(
        saga_deadline_secs = options.saga.deadline.as_secs(),
        gateway_decline_rate = options.gateway.decline_rate,
        gateway_latency_ms = options.gateway.latency_ms,
        gateway_unavailable = options.gateway.unavailable,
        "the place-order saga and the simulated payment provider"
    );
    let data_dir = data_dir(&args.data_dir)?;
    let Opened {
        stores: opened,
        logs,
        local,
        replica_db,
    } = open_with(&data_dir, options).await?;
    let seeded = if args.demo {
        shop_sim::demo::seed_if_empty(&logs, args.demo_events, &shutdown).await?
    } else {
        None
    };
    if shutdown.is_cancelled() {
        close_stores(&opened).await;
        replica_db.pool().close().await;
        tracing::info!("stopped");
        return Ok(());
    }
    let read_db = open_read_db(&DatabaseUrl::Sqlite(data_dir.join("read.db"))).await?;
    let sinks = Sinks {
        read_db: read_db.clone(),
        clickhouse: None,
    };

    // The runners, rebuilds and the demo stop once the HTTP server has drained, not with it: a
    // read in flight may be waiting for a runner to apply its `min_position`.
    let workers = CancellationToken::new();
    let mut runners = start_runners(&local, &sinks, &workers)?;
    let demo_tasks = start_demo(&args, seeded, &local, &read_db, &workers);
    let admin = projections::admin::Admin::new(logs.clone(), sinks, workers.clone());
    let (app, grace) = router(&local, &logs, &read_db, admin.clone(), args.load.limit());

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let address = listener.local_addr()?;
    banner(address, &data_dir);
    let server = service_kit::http::serve_on(listener, app, grace, shutdown.clone().cancelled_owned());
    let mut server = std::pin::pin!(server);
    let mut runner_failed = false;
    let served = tokio::select! {
        served = &mut server => served,
        Some(stopped) = runners.join_next() => {
            // A runner only returns once cancelled: before that, it panicked. Reads would go
            // stale (or orders stay pending, for the saga driver) without saying so; stop the
            // whole process instead.
            runner_stopped(stopped);
            runner_failed = true;
            shutdown.cancel();
            server.await
        }
    };
    shutdown.cancel();
    workers.cancel();
    stop(runners, demo_tasks, &admin).await;
    close_stores(&opened).await;
    read_db.pool().close().await;
    replica_db.pool().close().await;
    served.with_context(|| format!("cannot serve on {address}"))?;
    anyhow::ensure!(
        !runner_failed,
        "a projection runner or the saga driver failed; see the log above"
    );
    tracing::info!("stopped");
    Ok(())
}

/// The four services of a data directory, ready to take commands.
pub struct Opened {
    /// Each service's event store (`<service>.db`), migrated.
    pub stores: Vec<(Service, db::OpenStore)>,
    /// Each service's log, for projections.
    pub logs: Vec<ServiceLog>,
    /// The services over their stores.
    pub local: Local,
    /// The orders service's copy of customers and products, in `orders-replica.db`.
    pub replica_db: ReadDb,
}

/// Opens the services of `data_dir` (an existing directory) as `serve` runs them: each
/// service's store created or migrated, the orders service's copy of customers and products
/// prepared. A data directory from before every service had its own store is refused. The
/// services run with their default options; the saga driver is not started
/// ([`Local::run_sagas`]).
pub async fn open(data_dir: &Path) -> anyhow::Result<Opened> {
    open_with(data_dir, LocalOptions::default()).await
}

/// As [`open`], the services running with `options`.
pub async fn open_with(data_dir: &Path, options: LocalOptions) -> anyhow::Result<Opened> {
    refuse_a_single_store(data_dir)?;
    let urls = ServiceStoreUrls::embedded(data_dir);
    let stores = db::open_service_stores(&urls, PoolSettings::READ_DB, Migrate::Yes)
        .await
        .context("cannot open the services' event stores")?;
    let logs: Vec<ServiceLog> = stores
        .iter()
        .map(|(service, store)| ServiceLog::new(*service, store.shared()))
        .collect();
    let replica_db = open_read_db(&DatabaseUrl::Sqlite(data_dir.join(REPLICA_FILE))).await?;
    let local = Local::with_options(
        logs.iter().map(|log| (log.service, log.store.clone())).collect(),
        replica_db.clone(),
        options,
    )
    .await
    .context("cannot prepare the orders service's copy of customers and products")?;
    Ok(Opened {
        stores,
        logs,
        local,
        replica_db,
    })
}

/// The data directory, created if missing, as an absolute path.
fn data_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create the data directory {}", dir.display()))?;
    std::fs::canonicalize(dir).with_context(|| format!("cannot resolve the data directory {}", dir.display()))
}

/// `events.db` is the one store of a data directory from before every service had its own:
/// serving would start the services empty beside it, so `serve` refuses and names the command
/// that splits it into the services' stores.
pub fn refuse_a_single_store(data_dir: &Path) -> anyhow::Result<()> {
    let single = data_dir.join(SINGLE_STORE_FILE);
    anyhow::ensure!(
        !single.exists(),
        "{} holds the events of every service in one store, from before every service had its own; \
         split it into the services' stores first: `orderflow split-store --data-dir {}` \
         (it keeps every event, and can be run again)",
        single.display(),
        data_dir.display()
    );
    Ok(())
}

/// The orders service's copy of customers and products in a data directory.
pub const REPLICA_FILE: &str = "orders-replica.db";

/// The file of the one store of old, which `orderflow split-store` splits.
pub const SINGLE_STORE_FILE: &str = "events.db";

async fn open_read_db(url: &DatabaseUrl) -> anyhow::Result<ReadDb> {
    let db = ReadDb::open(url, PoolSettings::READ_DB)
        .await
        .with_context(|| format!("cannot open the read database {url}"))?;
    db.migrate().await.context("cannot migrate the read database")?;
    Ok(db)
}

async fn close_stores(opened: &[(Service, db::OpenStore)]) {
    for (_, store) in opened {
        store.close().await;
    }
}

type Runners = JoinSet<(&'static str, Result<(), projections::ProjectionError>)>;

/// The name the saga driver goes by among the runners.
const SAGA_DRIVER: &str = "saga driver";

/// Per projection, the runners that follow every service's log in-process, the runner of the
/// orders service's copy of customers and products, and the place-order saga's driver (which
/// tails the orders store from its checkpoint). Like the runners, the driver only returns once
/// cancelled.
fn start_runners(local: &Local, sinks: &Sinks, stop: &CancellationToken) -> anyhow::Result<Runners> {
    let mut runners = JoinSet::new();
    for name in catalog::NAMES {
        let factory = catalog::factory(name, sinks)?;
        let (logs, db, cancel) = (local.logs(), sinks.read_db.clone(), stop.clone());
        runners.spawn(async move {
            (
                name,
                projections::run_from_stores(logs, db, factory, RunOptions::default(), cancel).await,
            )
        });
    }
    let (replica_local, cancel) = (local.clone(), stop.clone());
    runners.spawn(async move { (replica::NAME, replica_local.run_replica(cancel).await) });
    let (saga_local, cancel) = (local.clone(), stop.clone());
    runners.spawn(async move {
        saga_local.run_sagas(cancel).await;
        (SAGA_DRIVER, Ok(()))
    });
    Ok(runners)
}

/// The demo's tasks: the catch-up report after seeding, and the live shop of `--rate`.
fn start_demo(
    args: &ServeArgs,
    seeded: Option<BTreeMap<Service, Position>>,
    local: &Local,
    read_db: &ReadDb,
    stop: &CancellationToken,
) -> JoinSet<()> {
    let mut tasks = JoinSet::new();
    if let Some(targets) = seeded {
        tasks.spawn(catch_up::report(read_db.clone(), targets, stop.clone()));
    }
    if args.rate > 0.0 {
        tasks.spawn(shop_sim::live::trickle(local.clone(), args.rate, stop.clone()));
    }
    tasks
}

/// The one router: commands, queries, admin and the console, with the services' operations
/// endpoints.
/// Answers it with the grace period the server drains within.
fn router(
    local: &Local,
    logs: &[ServiceLog],
    read_db: &ReadDb,
    admin: projections::admin::Admin,
    in_flight: InFlightLimit,
) -> (axum::Router, Duration) {
    let mut http = HttpConfig::new(Auth::Disabled);
    http.in_flight = Some(in_flight.clone());
    let grace = http.request_timeout + Duration::from_secs(1);
    // One document for the one port: the read API's and the rebuild endpoint's routes too.
    let state = local
        .http_state(http)
        .with_openapi(read_api::api_doc(&Auth::Disabled))
        .with_openapi(projections::admin::api_doc());
    let commands = write_side::http::router(state);
    let heads: BTreeMap<Service, watch::Receiver<Position>> =
        logs.iter().map(|log| (log.service, log.store.changes())).collect();
    let head = move |service: Service| heads.get(&service).map_or(0, |changes| *changes.borrow());
    let reads = ReadConfig {
        in_flight: Some(in_flight),
        ..ReadConfig::default()
    };
    let queries = read_api::query_routes(ReadState::new(read_db.clone(), None, reads).with_head(Arc::new(head)));
    let app = commands
        .merge(queries)
        .merge(projections::admin::routes(admin))
        .merge(web_console::assets());
    (app, grace)
}

/// Waits for the runners, the demo and the rebuilds to stop, each at most [`STOP_GRACE`].
async fn stop(mut runners: Runners, mut demo_tasks: JoinSet<()>, admin: &projections::admin::Admin) {
    let stopping = async {
        while let Some(stopped) = runners.join_next().await {
            runner_stopped(stopped);
        }
        while demo_tasks.join_next().await.is_some() {}
    };
    if tokio::time::timeout(STOP_GRACE, stopping).await.is_err() {
        tracing::warn!(
            "the runners (projections, the saga driver) or the demo did not stop within {} s",
            STOP_GRACE.as_secs()
        );
    }
    let mut rebuilds = admin.take_tasks();
    if tokio::time::timeout(STOP_GRACE, async { while rebuilds.join_next().await.is_some() {} })
        .await
        .is_err()
    {
        tracing::warn!("rebuilds did not stop within {} s", STOP_GRACE.as_secs());
    }
}

/// Logs how a runner ended.
fn runner_stopped(stopped: Result<(&'static str, Result<(), projections::ProjectionError>), tokio::task::JoinError>) {
    match stopped {
        Ok((name, Ok(()))) => tracing::debug!(projection = name, "runner stopped"),
        Ok((name, Err(e))) => tracing::error!(projection = name, error = %e, "projection runner failed"),
        Err(e) => tracing::error!(error = %e, "a projection runner or the saga driver panicked"),
    }
}

/// What a newcomer needs to start: where it listens, where the data is, what to try.
fn banner(address: SocketAddr, data_dir: &Path) {
    let url = format!("http://{address}");
    if !address.ip().is_loopback() {
        tracing::warn!(%address, "listening beyond loopback with authentication off: anyone who reaches it can write");
    }
    tracing::info!(
        "orderflow is serving at {url} (embedded: SQLite in {dir}, authentication off)\n\
         \n  the console:          open {url}/ in a browser\
         \n  register a customer:  curl -s -X POST {url}/v1/customers -H 'content-type: application/json' \
         -d '{{\"name\":\"Ada\",\"email\":\"ada@example.com\"}}'\
         \n  see the orders:       curl -s {url}/v1/dashboard/orders\
         \n  projections' status:  curl -s {url}/v1/projections\
         \n  the API:              curl -s {url}/openapi.json",
        dir = data_dir.display(),
    );
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn parse(args: &[&str]) -> Result<ServeArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("serve").chain(args.iter().copied())).map(|cli| cli.serve)
    }

    fn options(args: &[&str]) -> anyhow::Result<LocalOptions> {
        parse(args)?.local_options()
    }

    #[test]
    fn the_saga_and_the_simulated_provider_take_their_flags() {
        let plain = options(&[]).expect("valid flags");
        assert_eq!(plain.saga.deadline, Duration::from_secs(15 * 60));
        assert_eq!(plain.gateway, GatewaySettings::default());
        // The demo shop declines its share unless told otherwise.
        assert_eq!(
            options(&["--demo"]).expect("valid flags").gateway.decline_rate,
            DEMO_DECLINE_RATE
        );
        assert_eq!(
            options(&["--rate", "2"]).expect("valid flags").gateway.decline_rate,
            DEMO_DECLINE_RATE
        );
        let demo = parse(&[])
            .expect("no flags")
            .with_demo()
            .local_options()
            .expect("valid flags");
        assert_eq!(demo.gateway.decline_rate, DEMO_DECLINE_RATE);
        let none = options(&["--demo", "--gateway-decline-rate", "0"]).expect("valid flags");
        assert_eq!(none.gateway.decline_rate, 0.0);
        let custom = options(&[
            "--saga-deadline",
            "30s",
            "--gateway-decline-rate",
            "0.25",
            "--gateway-latency-ms",
            "250",
            "--gateway-unavailable",
        ])
        .expect("valid flags");
        assert_eq!(custom.saga.deadline, Duration::from_secs(30));
        assert_eq!(
            custom.gateway,
            GatewaySettings {
                decline_rate: 0.25,
                latency_ms: 250,
                unavailable: true,
            }
        );
        assert!(options(&["--gateway-decline-rate", "1.5"]).is_err());
        assert!(options(&["--gateway-latency-ms", "60001"]).is_err());
        assert!(parse(&["--saga-deadline", "0s"]).is_err());
        assert!(parse(&["--saga-deadline", "soon"]).is_err());
    }
}
