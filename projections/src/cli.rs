//! The projections' command line, `projections ...` (this crate's binary) and `orderflow
//! projections ...` (the same flags): run projection workers from Kafka, rebuild a projection
//! from the event store, list versions and show status.

use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use event_schemas::ConsistencyToken;
use service_kit::auth::{AuthArgs, Scope};
use service_kit::cli::{progress_bar, write_line};
use service_kit::db::{self, DatabaseUrl, Migrate, PoolSettings, ServiceStoreUrls};
use tokio_util::sync::CancellationToken;

use crate::catalog::{self, Sinks};
use crate::{KafkaOptions, ReadDb, RebuildOptions, RunOptions, ServiceLog, UntilPoint};

#[derive(Debug, Subcommand)]
pub enum ProjectionsCommand {
    /// Run projection workers: each joins its projection's Kafka consumer group and applies
    /// what it is assigned to the read databases (start several processes to scale out).
    Run(RunArgs),
    /// Build the next version of a projection from the event store beside the live one, then
    /// switch reads to it atomically (or, with --until, build a view of a past point).
    Rebuild(RebuildArgs),
    /// List every projection's versions and their state.
    List(SinkArgs),
    /// Show each projection's live version, checkpoints and dead letters, as JSON.
    Status(SinkArgs),
}

/// Where the projections write.
#[derive(Debug, Args, Clone)]
pub struct SinkArgs {
    /// The read database: `postgres://...` (distributed) or `sqlite://path` (embedded). Holds the
    /// dashboard, the control tables and, without ClickHouse, the analytics.
    #[arg(long, env = "ORDERFLOW_READ_DB_URL", hide_env_values = true)]
    read_db_url: String,
    #[command(flatten)]
    clickhouse: ClickHouseArgs,
}

/// Where the analytics live when they are in ClickHouse: the flags of every command that
/// writes them (`projections run|rebuild`, `migrate`).
#[derive(Debug, Clone, Args)]
pub struct ClickHouseArgs {
    /// ClickHouse's HTTP URL for the analytics; without it the analytics live in the read database.
    #[arg(long, env = "ORDERFLOW_CLICKHOUSE_URL", hide_env_values = true, value_name = "URL")]
    pub clickhouse_url: Option<String>,
    /// ClickHouse database of the analytics (it must exist).
    #[arg(long, env = "ORDERFLOW_CLICKHOUSE_DATABASE", default_value = "orderflow")]
    pub clickhouse_database: String,
    /// ClickHouse user.
    #[arg(long, env = "ORDERFLOW_CLICKHOUSE_USER", default_value = "default")]
    clickhouse_user: String,
    /// ClickHouse password (never logged).
    #[arg(
        long,
        env = "ORDERFLOW_CLICKHOUSE_PASSWORD",
        hide_env_values = true,
        default_value = ""
    )]
    clickhouse_password: String,
}

impl ClickHouseArgs {
    /// The client, when a URL is given.
    pub fn client(&self) -> Option<clickhouse::Client> {
        self.clickhouse_url.as_ref().map(|url| {
            clickhouse::Client::default()
                .with_url(url)
                .with_database(&self.clickhouse_database)
                .with_user(&self.clickhouse_user)
                .with_password(&self.clickhouse_password)
                .with_validation(false)
        })
    }
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    sinks: SinkArgs,
    /// Kafka bootstrap servers.
    #[arg(long, env = "ORDERFLOW_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    kafka_brokers: String,
    /// Put before every topic name (as the relay's --topic-prefix).
    #[arg(long, env = "ORDERFLOW_TOPIC_PREFIX", default_value = "")]
    topic_prefix: String,
    /// Consumer groups are named this + the projection's name.
    #[arg(long, env = "ORDERFLOW_GROUP_PREFIX", default_value = "orderflow.projections.")]
    group_prefix: String,
    /// Run only these projections (repeat the flag); all by default.
    #[arg(long = "only", env = "ORDERFLOW_PROJECTIONS", value_delimiter = ',')]
    only: Vec<String>,
    /// Most events applied per transaction.
    #[arg(long, env = "ORDERFLOW_PROJECTION_BATCH_SIZE", default_value_t = 2000)]
    batch_size: usize,
    /// How long (ms) a batch waits for more events before it is applied, for every projection
    /// run (0: apply what the broker delivered together as soon as it is taken). Default: 0
    /// for the dashboard, 500 for the analytics (ClickHouse wants few large inserts).
    #[arg(long, env = "ORDERFLOW_PROJECTION_LINGER_MS")]
    linger_ms: Option<u64>,
    /// How soon (ms) the group gives a dead worker's partitions to the others.
    #[arg(long, env = "ORDERFLOW_SESSION_TIMEOUT_MS", default_value_t = 10_000)]
    session_timeout_ms: u64,
    /// Serve `/health`, `/metrics` and the rebuild endpoint (`POST
    /// /v1/projections/{name}/rebuild`, scope `admin`) on this address; needs
    /// --event-store-url. Give it to one worker: the console sends rebuilds there.
    #[arg(long, env = "ORDERFLOW_PROJECTIONS_LISTEN", requires = "event_store_url")]
    listen: Option<std::net::SocketAddr>,
    /// The services' event stores a rebuild reads, as for `projections rebuild` (with --listen).
    #[arg(long, env = "ORDERFLOW_EVENT_STORE_URL", hide_env_values = true)]
    event_store_url: Option<String>,
    /// The rebuild endpoint's tokens (it needs scope `admin`), or `--no-auth` (loopback only).
    #[command(flatten)]
    auth: AuthArgs,
}

#[derive(Debug, Args)]
pub struct RebuildArgs {
    /// The projection: order_dashboard or sales_analytics.
    name: String,
    #[command(flatten)]
    sinks: SinkArgs,
    /// The services' event stores (read through the store's API only): a template with
    /// `{service}` where each service's name goes (`postgres://projections@db/orderflow_{service}`,
    /// `orderflow-data/{service}.db`), or one store that holds every service's streams.
    #[arg(long, env = "ORDERFLOW_EVENT_STORE_URL", hide_env_values = true)]
    event_store_url: String,
    /// Build the view as it stood at a past point: a position of one service's log
    /// (`orders:12345`; the other services' logs stop at that event's time) or an RFC 3339 time
    /// (`2026-11-01T12:00:00Z`). The result is a separate, historical version; the live version
    /// is not replaced.
    #[arg(long)]
    until: Option<String>,
    /// Events per batch.
    #[arg(long, default_value_t = 10_000)]
    batch_size: usize,
}

/// Runs one of the projections' commands until it is done or `shutdown` is cancelled.
pub async fn run(command: ProjectionsCommand, shutdown: CancellationToken) -> anyhow::Result<()> {
    match command {
        ProjectionsCommand::Run(args) => run_workers(args, shutdown).await,
        ProjectionsCommand::Rebuild(args) => rebuild(args, shutdown).await,
        ProjectionsCommand::List(args) => list(args).await,
        ProjectionsCommand::Status(args) => status(args).await,
    }
}

/// Connects to the read database (migrated) and, with a URL, ClickHouse.
pub async fn sinks(args: &SinkArgs) -> anyhow::Result<Sinks> {
    let url = DatabaseUrl::parse("--read-db-url", &args.read_db_url)?;
    let read_db = ReadDb::open(&url, PoolSettings::READ_DB)
        .await
        .context("cannot connect to the read database")?;
    read_db.migrate().await.context("cannot migrate the read database")?;
    Ok(Sinks {
        read_db,
        clickhouse: args.clickhouse.client(),
    })
}

async fn run_workers(args: RunArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let sinks = sinks(&args.sinks).await?;
    let rebuilds = match args.listen {
        Some(listen) => Some(serve_rebuilds(&args, listen, &sinks, &shutdown).await?),
        None => None,
    };
    let names: Vec<String> = if args.only.is_empty() {
        catalog::NAMES.iter().map(|n| (*n).to_owned()).collect()
    } else {
        args.only.clone()
    };
    let mut workers = tokio::task::JoinSet::new();
    for name in names {
        let factory = catalog::factory(&name, &sinks)?;
        let run = RunOptions {
            batch_size: args.batch_size.max(1),
            linger: args
                .linger_ms
                .map_or_else(|| catalog::default_linger(&name), Duration::from_millis),
            ..RunOptions::default()
        };
        let options = KafkaOptions {
            brokers: args.kafka_brokers.clone(),
            group_id: format!("{}{name}", args.group_prefix),
            topics: catalog::categories(&name)
                .iter()
                .map(|c| format!("{}{}", args.topic_prefix, c.topic()))
                .collect(),
            run,
            session_timeout: Duration::from_millis(args.session_timeout_ms),
        };
        workers.spawn(crate::run_from_kafka(
            sinks.read_db.clone(),
            factory,
            options,
            shutdown.clone(),
        ));
    }
    // A worker that fails takes the others down with it (the process exits and is restarted by
    // its supervisor) rather than leaving a half-running process behind.
    let mut outcome = Ok(());
    while let Some(done) = workers.join_next().await {
        let result = done.context("a projection worker panicked").and_then(|r| Ok(r?));
        if let Err(e) = result {
            shutdown.cancel();
            if outcome.is_ok() {
                outcome = Err(e);
            }
        }
    }
    if let Some((server, admin)) = rebuilds {
        shutdown.cancel();
        // The server first: once it has drained, no request can start a rebuild (a request
        // arriving after the cancel is answered 503), so the rebuilds taken next are all there
        // will be.
        match server.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "the rebuild endpoint failed"),
            Err(e) => tracing::error!(error = %e, "the rebuild endpoint panicked"),
        }
        let mut tasks = admin.take_tasks();
        while tasks.join_next().await.is_some() {}
    }
    outcome
}

/// Serves the rebuild endpoint (behind the `admin` scope unless --no-auth), `/health` and
/// `/metrics` until `shutdown`.
async fn serve_rebuilds(
    args: &RunArgs,
    listen: std::net::SocketAddr,
    sinks: &Sinks,
    shutdown: &CancellationToken,
) -> anyhow::Result<(tokio::task::JoinHandle<std::io::Result<()>>, crate::admin::Admin)> {
    use axum::middleware::from_fn_with_state;
    let auth = args.auth.auth()?;
    let url = args
        .event_store_url
        .as_deref()
        .context("--listen needs --event-store-url")?;
    let logs = open_logs(url).await?;
    let admin = crate::admin::Admin::new(logs, sinks.clone(), shutdown.clone());
    let metrics = service_kit::metrics::prometheus_handle();
    let timeout = Duration::from_secs(10);
    let app = crate::admin::routes(admin.clone())
        .route_layer(from_fn_with_state(
            service_kit::auth::Guard {
                auth,
                scope: Scope::Admin,
            },
            service_kit::auth::require,
        ))
        .route("/health", axum::routing::get(service_kit::http::health))
        .route(
            "/metrics",
            axum::routing::get(move || std::future::ready(service_kit::http::metrics(&metrics))),
        )
        .fallback(service_kit::http::no_route)
        .layer(from_fn_with_state(
            service_kit::http::Edge {
                request_timeout: timeout,
                // One rebuild at a time per projection is all this endpoint does: the default
                // bound is far above its load, and there is no flag for it.
                in_flight: Some(service_kit::http::InFlightLimit::new(
                    service_kit::http::DEFAULT_MAX_IN_FLIGHT as usize,
                )),
            },
            service_kit::http::edge,
        ));
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let stop = shutdown.clone();
    let server = tokio::spawn(async move {
        service_kit::http::serve_on(listener, app, timeout + Duration::from_secs(1), stop.cancelled_owned()).await
    });
    Ok((server, admin))
}

/// Opens the services' event stores a rebuild reads (through the store's API only; never
/// migrated here), from a `{service}` template or one URL for every service.
pub async fn open_logs(url: &str) -> anyhow::Result<Vec<ServiceLog>> {
    let urls = ServiceStoreUrls::parse("--event-store-url", url)?;
    let opened = db::open_service_stores(&urls, PoolSettings::WORKER, Migrate::No).await?;
    Ok(opened
        .into_iter()
        .map(|(service, store)| ServiceLog::new(service, store.shared()))
        .collect())
}

fn parse_until(until: &str) -> anyhow::Result<UntilPoint> {
    if let Ok(token) = until.parse::<ConsistencyToken>() {
        return Ok(UntilPoint::Position(token));
    }
    let time = chrono::DateTime::parse_from_rfc3339(until).with_context(|| {
        format!("--until {until:?} is neither a position of a service's log (orders:12345) nor an RFC 3339 time")
    })?;
    Ok(UntilPoint::Time(time.with_timezone(&chrono::Utc)))
}

async fn rebuild(args: RebuildArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let until = args.until.as_deref().map(parse_until).transpose()?;
    let sinks = sinks(&args.sinks).await?;
    let factory = catalog::factory(&args.name, &sinks)?;
    let logs = open_logs(&args.event_store_url).await?;
    let mut heads = 0;
    for log in &logs {
        heads += log.store.head_position().await?;
    }
    let bar = progress_bar(heads, &format!("rebuilding {}", args.name), "positions");
    let report = crate::rebuild(
        logs,
        &sinks.read_db,
        factory,
        RebuildOptions {
            batch_size: args.batch_size.max(1),
            until,
            ..RebuildOptions::default()
        },
        shutdown,
        |progress| {
            bar.set_length(progress.target.max(progress.position));
            bar.set_position(progress.position);
        },
    )
    .await?;
    bar.finish_and_clear();
    let line = serde_json::json!({
        "projection": report.name,
        "version": report.version,
        "replaced": report.replaced,
        "historical": report.historical,
        "events": report.events_applied,
        "positions": report.positions.iter().map(|(service, position)| (service.name(), *position)).collect::<std::collections::BTreeMap<_, _>>(),
        "seconds": report.seconds,
        "events_per_second": report.events_per_second.round(),
    });
    Ok(write_line(&line.to_string())?)
}

async fn list(args: SinkArgs) -> anyhow::Result<()> {
    let sinks = sinks(&args).await?;
    let mut out = String::from("projection        version  state       events     until\n");
    for name in catalog::NAMES {
        for v in sinks.read_db.versions(name).await? {
            let until = match (v.until_position, v.until_time) {
                (_, Some(time)) => time.to_rfc3339(),
                (Some(position), None) => position.to_string(),
                _ => String::new(),
            };
            out.push_str(&format!(
                "{:<17} {:>7}  {:<10} {:>7}     {until}\n",
                v.name, v.version, v.state, v.events_applied
            ));
        }
    }
    Ok(write_line(out.trim_end())?)
}

async fn status(args: SinkArgs) -> anyhow::Result<()> {
    let sinks = sinks(&args).await?;
    let mut projections = Vec::new();
    for name in catalog::NAMES {
        let live = sinks.read_db.live_version(name).await?;
        let (checkpoints, dead_letters) = match live {
            Some(version) => (
                sinks.read_db.checkpoints(name, version).await?,
                sinks.read_db.dead_letter_count(name, version).await?,
            ),
            None => (Vec::new(), 0),
        };
        projections.push(serde_json::json!({
            "name": name,
            "live_version": live,
            "position": checkpoints.iter().map(|c| c.position).max().unwrap_or(0),
            "checkpoints": checkpoints.iter().map(|c| serde_json::json!({
                "source": c.source, "partition": c.partition, "offset": c.offset, "position": c.position,
            })).collect::<Vec<_>>(),
            "dead_letters": dead_letters,
        }));
    }
    Ok(write_line(&serde_json::to_string_pretty(&projections)?)?)
}
