//! `orderflow export`, `orderflow import` and `orderflow split-store`: a service's log moved
//! between stores with nothing lost ([`service_kit::archive`] does the work; this reads the
//! flags, opens the stores, shows progress and says what happened).
//!
//! - `export` writes one service's log to a file: the move from the embedded SQLite stores to
//!   PostgreSQL (or back), and the per-service backup.
//! - `import` checks the whole file, then adds it to a service's store; running it again adds
//!   nothing twice.
//! - `split-store` splits the one store of old (every service's streams in one database, from
//!   before each service had its own) into the services' stores: a data directory's
//!   `events.db` into its `<service>.db` files (then renamed `events.db.before-split`, so that
//!   `serve` starts), or a PostgreSQL database into the databases a `{service}` URL names (the
//!   old database is left as it is). Safe to run again.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Args;
use event_schemas::Service;
use service_kit::archive::{self, Moved};
use service_kit::cli::{progress_bar, write_line};
use service_kit::db::{self, DatabaseUrl, Migrate, OpenStore, PoolSettings, ServiceStoreUrls};

/// Which service's store: its URL, or the embedded one.
#[derive(Debug, Args)]
pub(crate) struct ServiceStore {
    /// The service: customers, inventory, orders or payments.
    #[arg(long, env = "ORDERFLOW_SERVICE", value_name = "SERVICE")]
    service: Service,
    /// The service's event store: a PostgreSQL URL or a SQLite file (a path, or sqlite://path),
    /// or a URL with `{service}` where the service's name goes. Its password is never shown.
    /// Without it, the embedded store <DATA_DIR>/<service>.db.
    #[arg(long, env = "ORDERFLOW_EVENT_STORE_URL", hide_env_values = true, value_name = "URL")]
    event_store_url: Option<String>,
    /// The embedded deployment's data directory, used when --event-store-url is not given.
    #[arg(long, env = "ORDERFLOW_DATA_DIR", default_value = "orderflow-data")]
    data_dir: PathBuf,
}

impl ServiceStore {
    fn url(&self) -> anyhow::Result<DatabaseUrl> {
        Ok(match &self.event_store_url {
            Some(url) => ServiceStoreUrls::parse("--event-store-url", url)?
                .get(self.service)
                .clone(),
            None => ServiceStoreUrls::embedded(&self.data_dir).get(self.service).clone(),
        })
    }
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  orderflow export --service orders --output orders.log.jsonl
  orderflow export --service orders --event-store-url postgres://orders@127.0.0.1:5432/orderflow_orders \\
                   --output orders.log.jsonl")]
pub(crate) struct ExportArgs {
    #[command(flatten)]
    store: ServiceStore,
    /// The file to write (a new one; it appears only once complete).
    #[arg(long, short, value_name = "FILE")]
    output: PathBuf,
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  orderflow import --service orders --event-store-url postgres://orders@127.0.0.1:5432/orderflow_orders \\
                   orders.log.jsonl
  orderflow import --service orders --data-dir orderflow-data orders.log.jsonl")]
pub(crate) struct ImportArgs {
    #[command(flatten)]
    store: ServiceStore,
    /// A file `orderflow export` wrote.
    #[arg(value_name = "FILE")]
    input: PathBuf,
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  orderflow split-store --data-dir orderflow-data
  orderflow split-store --from postgres://postgres@127.0.0.1:5432/orderflow \\
                        --to 'postgres://postgres@127.0.0.1:5432/orderflow_{service}'")]
pub(crate) struct SplitArgs {
    /// The data directory whose `events.db` to split into its services' stores.
    #[arg(
        long,
        env = "ORDERFLOW_DATA_DIR",
        default_value = "orderflow-data",
        conflicts_with = "from"
    )]
    data_dir: PathBuf,
    /// The one store to split (PostgreSQL or SQLite); needs --to. Its password is never shown.
    #[arg(long, value_name = "URL", requires = "to", hide_env_values = true)]
    from: Option<String>,
    /// Where each service's store goes: a URL with `{service}` in it.
    #[arg(long, value_name = "URL", requires = "from", hide_env_values = true)]
    to: Option<String>,
}

/// `orderflow export`.
pub(crate) async fn export(args: ExportArgs) -> anyhow::Result<()> {
    let service = args.store.service;
    let url = args.store.url()?;
    let store = open_existing(&url).await?;
    let bar = progress_bar(0, &format!("exporting the {service} log"), "events");
    let moved = archive::export(&*store.transfer(), service, &args.output, |n| bar.set_position(n)).await;
    bar.finish_and_clear();
    store.close().await;
    let moved = moved?;
    write_line(&format!(
        "exported the {service} log of {url} to {}: {} events, {} idempotency records{}",
        args.output.display(),
        moved.events,
        moved.idempotency_records,
        others(&moved)
    ))?;
    Ok(())
}

/// `orderflow import`.
pub(crate) async fn import(args: ImportArgs) -> anyhow::Result<()> {
    let service = args.store.service;
    let url = args.store.url()?;
    // Bad input is refused before the target is opened (or a SQLite file created).
    let checked = archive::check(&args.input, service).await?;
    if let Some(path) = url.sqlite_path()
        && let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty())
    {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create the directory {}", dir.display()))?;
    }
    let store = db::open_event_store(&url, PoolSettings::TOOL, Migrate::Yes).await?;
    refuse_foreign(&store, service, &url).await?;
    let bar = progress_bar(checked.events, &format!("importing into the {service} store"), "events");
    let moved = archive::import(&args.input, service, &*store.transfer(), |n| bar.set_position(n)).await;
    bar.finish_and_clear();
    store.close().await;
    let moved = moved?;
    write_line(&format!(
        "imported {} into the {service} store of {url}: {} events added, {} there already; {} idempotency \
         records added, {} there already",
        args.input.display(),
        moved.events,
        moved.events_already_there,
        moved.idempotency_records,
        moved.idempotency_records_already_there
    ))?;
    Ok(())
}

/// `orderflow split-store`.
pub(crate) async fn split(args: SplitArgs) -> anyhow::Result<()> {
    match (&args.from, &args.to) {
        (Some(from), Some(to)) => {
            anyhow::ensure!(
                to.contains(ServiceStoreUrls::PLACEHOLDER),
                "--to must name each service's store: put {} where the service's name goes",
                ServiceStoreUrls::PLACEHOLDER
            );
            let from = DatabaseUrl::parse("--from", from)?;
            let to = ServiceStoreUrls::parse("--to", to)?;
            split_stores(&from, &to).await?;
            write_line(&format!(
                "{from} is left as it was; the services now use their own stores"
            ))?;
            Ok(())
        }
        _ => split_data_dir(&args.data_dir).await,
    }
}

/// Splits `<data_dir>/events.db`, then moves it aside.
async fn split_data_dir(data_dir: &Path) -> anyhow::Result<()> {
    let single = data_dir.join(embedded::SINGLE_STORE_FILE);
    if !single.exists() {
        write_line(&format!(
            "nothing to split: {} holds no {} (its services have their own stores already)",
            data_dir.display(),
            embedded::SINGLE_STORE_FILE
        ))?;
        return Ok(());
    }
    split_stores(
        &DatabaseUrl::Sqlite(single.clone()),
        &ServiceStoreUrls::embedded(data_dir),
    )
    .await?;
    let aside = data_dir.join(format!("{}.before-split", embedded::SINGLE_STORE_FILE));
    for suffix in ["", "-wal", "-shm"] {
        let (mut from, mut to) = (single.clone().into_os_string(), aside.clone().into_os_string());
        from.push(suffix);
        to.push(suffix);
        if Path::new(&from).exists() {
            std::fs::rename(&from, &to).with_context(|| format!("cannot move {} aside", single.display()))?;
        }
    }
    write_line(&format!(
        "moved {} to {}: `orderflow serve --data-dir {}` serves the services' stores; the read models catch \
         up with them",
        single.display(),
        aside.display(),
        data_dir.display()
    ))?;
    Ok(())
}

/// Copies each service's streams of the store at `from` into its store of `to`.
async fn split_stores(from: &DatabaseUrl, to: &ServiceStoreUrls) -> anyhow::Result<()> {
    let source = open_existing(from).await?;
    let head = source.shared().head_position().await?;
    for (service, url) in to.iter() {
        anyhow::ensure!(
            !url.same_database(from),
            "--to names the store being split for the {service} service: give each service a store of its own"
        );
        if let Some(path) = url.sqlite_path()
            && let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty())
        {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create the directory {}", dir.display()))?;
        }
        let target = db::open_event_store(url, PoolSettings::TOOL, Migrate::Yes).await?;
        refuse_foreign(&target, service, url).await?;
        let bar = progress_bar(head, &format!("splitting out the {service} log"), "positions");
        let moved = archive::copy_service(&*source.transfer(), service, &*target.transfer(), |p| {
            bar.set_position(p)
        })
        .await;
        bar.finish_and_clear();
        target.close().await;
        let moved = moved?;
        write_line(&format!(
            "{service}: {} events copied to {url}, {} there already; {} idempotency records copied, {} there already",
            moved.events,
            moved.events_already_there,
            moved.idempotency_records,
            moved.idempotency_records_already_there
        ))?;
    }
    source.close().await;
    Ok(())
}

/// Opens a store that must exist (an export never creates one).
async fn open_existing(url: &DatabaseUrl) -> anyhow::Result<OpenStore> {
    if let Some(path) = url.sqlite_path() {
        anyhow::ensure!(path.is_file(), "no event store at {}", path.display());
    }
    Ok(db::open_event_store(url, PoolSettings::TOOL, Migrate::No).await?)
}

/// Refuses a target that holds another service's streams.
async fn refuse_foreign(store: &OpenStore, service: Service, url: &DatabaseUrl) -> anyhow::Result<()> {
    if let Some(stream) = store.foreign_stream(service).await? {
        store.close().await;
        anyhow::bail!(
            "{url} holds {stream}, which is not the {service} service's: it is not the {service} service's store"
        );
    }
    Ok(())
}

fn others(moved: &Moved) -> String {
    match moved.events_of_other_services {
        0 => String::new(),
        n => format!(" ({n} events of other services in the same store left out)"),
    }
}
