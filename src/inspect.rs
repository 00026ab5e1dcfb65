//! `orderflow state` and `orderflow events`: one stream read straight from the event store, with
//! no server running, through the write side's own code.
//!
//! - `state` folds the stream with [`CommandHandler::load`] (the newest snapshot at or before
//!   the point, then the events after it): the fold `GET /v1/orders/{id}/state` serves. An order
//!   prints as that endpoint answers it ([`OrderStateView`]); the other aggregates, which have
//!   no endpoint, as `{stream_id, version, position, recorded_at, state}` with the aggregate in
//!   the form its snapshots are stored in.
//! - `events` prints what `GET /v1/streams/{id}/events` answers ([`StreamEventsPage`] of
//!   [`EventView`]: envelope fields and the decoded event), all of the stream's events by
//!   default rather than one page.
//!
//! Both only read: the store is neither created nor migrated (that is `orderflow migrate`).

use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use clap::Args;
use event_schemas::{Category, Service};
use event_store::{EventStore, Until};
use serde_json::{Value, json};
use service_kit::db::{self, DatabaseUrl, Migrate, PoolSettings, ServiceStoreUrls};
use uuid::Uuid;
use write_side::domain::saga::Saga;
use write_side::domain::{Customer, Order, Payment, Product};
use write_side::http::{EventView, OrderStateView, StreamEventsPage};
use write_side::{CommandHandler, HandlerOptions, Loaded, Snapshottable};

/// Events read per round trip.
const PAGE: usize = 1000;

/// Which event store to read: the one of the service that owns the stream.
#[derive(Debug, Args)]
pub(crate) struct StoreArgs {
    /// The services' event stores: a PostgreSQL URL or a SQLite file (a path, or sqlite://path),
    /// with `{service}` where the service's name goes (postgres://orders@host/orderflow_{service});
    /// without it, one store holds every service's streams. Its password is never shown. Without
    /// it, the embedded stores of `orderflow serve`: <DATA_DIR>/<service>.db.
    #[arg(long, env = "ORDERFLOW_EVENT_STORE_URL", hide_env_values = true, value_name = "URL")]
    event_store_url: Option<String>,
    /// The embedded deployment's data directory (as `orderflow serve --data-dir`), read when
    /// --event-store-url is not given.
    #[arg(long, env = "ORDERFLOW_DATA_DIR", default_value = "orderflow-data")]
    data_dir: PathBuf,
}

/// A stream id: `{category}-{uuid}`.
#[derive(Debug, Clone)]
pub(crate) struct Stream {
    id: String,
    category: Category,
    aggregate: Uuid,
}

fn parse_stream(stream_id: &str) -> Result<Stream, String> {
    let (category, aggregate) = event_schemas::parse_stream_id(stream_id).map_err(|_| {
        "not a stream id: expected <category>-<uuid> with a lower-case hyphenated UUID, e.g. \
         order-67e55044-10b1-426f-9247-bb680e5fe0c8 (categories: customer, product, order, payment)"
            .to_owned()
    })?;
    Ok(Stream {
        id: stream_id.to_owned(),
        category,
        aggregate,
    })
}

fn parse_time(time: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(time)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("not an RFC 3339 time like 2026-01-31T12:00:00Z ({e})"))
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  orderflow state order-0195f0a0-0000-7000-8000-000000000003
  orderflow state order-0195f0a0-0000-7000-8000-000000000003 --at 4
  orderflow state product-0195f0a0-0000-7000-8000-000000000002 --as-of 2026-01-31T12:00:00Z
  orderflow state order-… --event-store-url postgres://write_side@127.0.0.1:5432/orderflow")]
pub(crate) struct StateArgs {
    /// The stream: order-<uuid>, customer-<uuid>, product-<uuid> or payment-<uuid>.
    #[arg(value_parser = parse_stream)]
    stream: Stream,
    /// Fold only the events recorded at or before this time (RFC 3339, e.g. 2026-01-31T12:00:00Z).
    #[arg(long, env = "ORDERFLOW_STATE_AS_OF", value_name = "RFC3339", value_parser = parse_time, conflicts_with = "at")]
    as_of: Option<DateTime<Utc>>,
    /// Fold only the events at or below this position of the stream's service's log (a
    /// command's answer carries one).
    #[arg(long, env = "ORDERFLOW_STATE_AT", value_name = "POSITION")]
    at: Option<u64>,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  orderflow events order-0195f0a0-0000-7000-8000-000000000003
  orderflow events product-0195f0a0-0000-7000-8000-000000000002 --from-version 10 --limit 5")]
pub(crate) struct EventsArgs {
    /// The stream: order-<uuid>, customer-<uuid>, product-<uuid> or payment-<uuid>.
    #[arg(value_parser = parse_stream)]
    stream: Stream,
    /// First stream version to print (1: the stream's first event).
    #[arg(long, env = "ORDERFLOW_EVENTS_FROM_VERSION", default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(1..))]
    from_version: u64,
    /// Most events to print (default: every event from --from-version on).
    #[arg(long, env = "ORDERFLOW_EVENTS_LIMIT", value_parser = clap::value_parser!(u64).range(1..))]
    limit: Option<u64>,
    #[command(flatten)]
    store: StoreArgs,
}

/// `orderflow state`.
pub(crate) async fn state(args: StateArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.as_of.is_none() || args.at.is_none(),
        "give at most one of --as-of and --at"
    );
    let until = match (args.as_of, args.at) {
        (Some(time), _) => Some(Until::RecordedAt(time)),
        (None, Some(position)) => Some(Until::Position(position)),
        (None, None) => None,
    };
    let (store, location) = open(&args.store, &args.stream).await?;
    let handler = CommandHandler::new(Arc::clone(&store), HandlerOptions::default());
    let Stream {
        id: stream_id,
        category,
        aggregate: id,
    } = &args.stream;
    let (version, answer) = match category {
        Category::Order => {
            let loaded = handler.load::<Order>(*id, until).await?;
            (loaded.version, serde_json::to_value(order_view(&loaded))?)
        }
        Category::Customer => folded::<Customer>(&handler, *id, until).await?,
        Category::Product => folded::<Product>(&handler, *id, until).await?,
        Category::Payment => folded::<Payment>(&handler, *id, until).await?,
        Category::Saga => folded::<Saga>(&handler, *id, until).await?,
    };
    if version == 0 {
        let exists = store.stream_version(stream_id).await? > 0;
        return Err(match until {
            Some(point) if exists => anyhow::anyhow!(
                "stream {stream_id} has no event at or before {}: its first event is later",
                describe(point)
            ),
            _ => anyhow::anyhow!("no stream {stream_id} in the event store ({location})"),
        });
    }
    print_json(&answer)
}

/// `orderflow events`.
pub(crate) async fn events(args: EventsArgs) -> anyhow::Result<()> {
    let (store, location) = open(&args.store, &args.stream).await?;
    let handler = CommandHandler::new(Arc::clone(&store), HandlerOptions::default());
    let stream_id = &args.stream.id;
    let limit = args.limit.map(|limit| usize::try_from(limit).unwrap_or(usize::MAX));
    let mut events = Vec::new();
    let mut from = args.from_version;
    loop {
        let page = limit.map_or(PAGE, |limit| (limit - events.len()).min(PAGE));
        let read = handler.stream_events(stream_id, from, page).await?;
        events.extend(read.iter().map(EventView::from_recorded));
        match read.last() {
            Some(last) if read.len() == page && limit.is_none_or(|limit| events.len() < limit) => {
                from = last.stream_version + 1;
            }
            _ => break,
        }
    }
    if events.is_empty() && store.stream_version(stream_id).await? == 0 {
        anyhow::bail!("no stream {stream_id} in the event store ({location})");
    }
    // As the HTTP page: where the next one starts when this one is full.
    let next_from_version = (limit == Some(events.len()))
        .then(|| events.last().map(|e| e.stream_version + 1))
        .flatten();
    print_json(&serde_json::to_value(StreamEventsPage {
        stream_id: stream_id.clone(),
        events,
        next_from_version,
    })?)
}

/// An aggregate without an HTTP view: where its stream stands, and its state.
async fn folded<A: Snapshottable>(
    handler: &CommandHandler,
    id: Uuid,
    until: Option<Until>,
) -> anyhow::Result<(u64, Value)> {
    let loaded = handler.load::<A>(id, until).await?;
    let answer = json!({
        "stream_id": loaded.stream_id,
        "version": loaded.version,
        "position": loaded.position,
        "recorded_at": loaded.recorded_at,
        "state": loaded.state,
    });
    Ok((loaded.version, answer))
}

/// What `GET /v1/orders/{id}/state` answers for `loaded`.
fn order_view(loaded: &Loaded<Order>) -> OrderStateView {
    OrderStateView::new(&loaded.state, loaded.version, loaded.position, loaded.recorded_at)
}

fn describe(point: Until) -> String {
    match point {
        Until::RecordedAt(time) => time.to_rfc3339(),
        Until::Position(position) => format!("position {position}"),
    }
}

/// Opens the event store of the service that owns `stream`, to read, without creating or
/// migrating it. Answers it with where it is, for messages.
async fn open(args: &StoreArgs, stream: &Stream) -> anyhow::Result<(Arc<dyn EventStore>, DatabaseUrl)> {
    let service = Service::owning(stream.category);
    let url = match &args.event_store_url {
        Some(url) => ServiceStoreUrls::parse("--event-store-url", url)?.get(service).clone(),
        None => {
            embedded::refuse_a_single_store(&args.data_dir)?;
            ServiceStoreUrls::embedded(&args.data_dir).get(service).clone()
        }
    };
    tracing::info!(store = %url, %service, "reading the service's event store");
    if let Some(path) = url.sqlite_path() {
        anyhow::ensure!(
            path.is_file(),
            "no event store at {}: `orderflow serve` creates it (or `orderflow migrate --service {service} \
             --event-store-url {}`); to read another one, give --event-store-url",
            path.display(),
            path.display()
        );
    }
    let opened = db::open_event_store(&url, PoolSettings::TOOL, Migrate::No).await?;
    Ok((opened.shared(), url))
}

/// The CLI's output: pretty JSON on stdout.
fn print_json(value: &Value) -> anyhow::Result<()> {
    Ok(service_kit::cli::write_line(&serde_json::to_string_pretty(value)?)?)
}
