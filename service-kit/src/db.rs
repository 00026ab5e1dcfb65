//! Typed connection settings: where a database is ([`DatabaseUrl`]), how large its pool is
//! ([`PoolSettings`]), and the one place where every program builds its pools and opens an event
//! store ([`open_event_store`]) or a read database's pool ([`read_pool`]).
//!
//! A URL may hold a password, so none is ever shown: [`DatabaseUrl`]'s `Display` (and `Debug`)
//! is the host, port and database of a PostgreSQL URL, or the file of a SQLite one, and errors
//! name the flag a bad URL came from, never the URL.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use event_schemas::Service;
use event_store::{EventStore, LogTransfer, PgEventStore, SqliteEventStore, StoreError, StoreOptions};
use sqlx::AnyPool;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};

/// A database location: a PostgreSQL server's database, or a SQLite file.
#[derive(Clone)]
pub enum DatabaseUrl {
    Postgres(PostgresUrl),
    Sqlite(PathBuf),
}

/// A PostgreSQL URL, parsed. Opaque: it holds the password.
#[derive(Clone)]
pub struct PostgresUrl {
    /// Boxed: far larger than a path.
    options: Box<PgConnectOptions>,
    /// As given, for sqlx's `Any` driver, which takes a URL.
    url: Arc<str>,
}

impl PostgresUrl {
    pub fn options(&self) -> &PgConnectOptions {
        &self.options
    }

    /// The same server and credentials, another database.
    pub fn with_database(&self, database: &str) -> Self {
        let url = replace_database(&self.url, database);
        PostgresUrl {
            options: Box::new((*self.options).clone().database(database)),
            url: Arc::from(url.as_str()),
        }
    }
}

/// Host, port and database: never the password.
impl fmt::Debug for PostgresUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PostgresUrl({}:{}/{})",
            self.options.get_host(),
            self.options.get_port(),
            self.options.get_database().unwrap_or_default()
        )
    }
}

/// Why a URL was refused. Names the flag (or setting) it came from, never the URL.
#[derive(Debug, thiserror::Error)]
#[error("{flag}: {reason}")]
pub struct UrlError {
    flag: String,
    reason: String,
}

impl DatabaseUrl {
    /// Reads `url` given to `flag` (named in errors; the URL itself never is): a `postgres://`
    /// or `postgresql://` URL, a `sqlite://` URL, or a file path (SQLite).
    pub fn parse(flag: &str, url: &str) -> Result<Self, UrlError> {
        let error = |reason: String| UrlError {
            flag: flag.to_owned(),
            reason,
        };
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let options = url
                .parse::<PgConnectOptions>()
                .map_err(|_| error("not a valid PostgreSQL URL".into()))?;
            return Ok(DatabaseUrl::Postgres(PostgresUrl {
                options: Box::new(options),
                url: Arc::from(url),
            }));
        }
        if url.starts_with("sqlite:") {
            let rest = url.trim_start_matches("sqlite://").trim_start_matches("sqlite:");
            let (database, query) = rest.split_once('?').unwrap_or((rest, ""));
            if database.is_empty() || database == ":memory:" || query.contains("mode=memory") {
                return Err(error(
                    "names no file: an in-memory SQLite database holds no data to keep".into(),
                ));
            }
            let options = SqliteConnectOptions::from_str(url)
                .map_err(|_| error("not a valid SQLite URL (sqlite://path)".into()))?;
            return Ok(DatabaseUrl::Sqlite(options.get_filename().to_owned()));
        }
        if let Some((scheme, _)) = url.split_once("://") {
            return Err(error(format!(
                "`{scheme}://` is not supported; give a postgres:// URL, a sqlite:// URL or a file path"
            )));
        }
        if url.is_empty() {
            return Err(error("is empty".into()));
        }
        Ok(DatabaseUrl::Sqlite(PathBuf::from(url)))
    }

    /// The PostgreSQL connection options, if it is one.
    pub fn postgres(&self) -> Option<&PostgresUrl> {
        match self {
            DatabaseUrl::Postgres(url) => Some(url),
            DatabaseUrl::Sqlite(_) => None,
        }
    }

    /// The SQLite file, if it is one.
    pub fn sqlite_path(&self) -> Option<&Path> {
        match self {
            DatabaseUrl::Postgres(_) => None,
            DatabaseUrl::Sqlite(path) => Some(path),
        }
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DatabaseUrl::Postgres(url) => write!(
                f,
                "PostgreSQL {}:{}/{}",
                url.options.get_host(),
                url.options.get_port(),
                url.options.get_database().unwrap_or_default()
            ),
            DatabaseUrl::Sqlite(path) => write!(f, "SQLite {}", path.display()),
        }
    }
}

/// Its `Display`: sqlx's connect options print their password.
impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// `url` without its user and password (`http://user:secret@host:8123` → `http://host:8123`),
/// for URLs that are not databases' (ClickHouse's HTTP URL).
pub fn without_credentials(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let rest = match rest[..authority_end].rfind('@') {
        Some(at) => &rest[at + 1..],
        None => rest,
    };
    // A query may carry them too (`?user=...&password=...`): shown without its query.
    let rest = rest.split(['?', '#']).next().unwrap_or(rest);
    format!("{scheme}://{rest}")
}

/// `url` with its path (the database) replaced by `database`, its query kept.
fn replace_database(url: &str, database: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, after) = rest.split_at(authority_end);
    let query = after.find('?').map_or("", |q| &after[q..]);
    format!("{scheme}://{authority}/{database}{query}")
}

/// How large a pool is, and how long a caller waits for one of its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSettings {
    pub max_connections: u32,
    /// Past it, asking for a connection fails (the database is down or the pool too small).
    pub acquire_timeout: Duration,
}

impl PoolSettings {
    /// `max_connections`, with the 10 s acquire timeout every program uses.
    pub const fn new(max_connections: u32) -> Self {
        PoolSettings {
            max_connections,
            acquire_timeout: Duration::from_secs(10),
        }
    }

    /// A command-line tool's one-off reads and writes (`migrate`, `state`, `events`).
    pub const TOOL: PoolSettings = PoolSettings::new(2);
    /// A worker's (the relay's, a rebuild's reads of a store).
    pub const WORKER: PoolSettings = PoolSettings::new(4);
    /// A read database's: the projections' writers and the read API's queries.
    pub const READ_DB: PoolSettings = PoolSettings::new(8);
    /// An HTTP service's reads of its event store.
    pub const SERVICE: PoolSettings = PoolSettings::new(16);
}

/// Why a database could not be opened. Names it by its `Display` (no password).
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot connect to {target}")]
    Connect {
        target: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot migrate {target}")]
    Migrate {
        target: String,
        #[source]
        source: StoreError,
    },
    #[error("cannot open the event store {target}; is it migrated (`orderflow migrate`)?")]
    Open {
        target: String,
        #[source]
        source: StoreError,
    },
}

/// A PostgreSQL pool.
pub async fn pg_pool(url: &PostgresUrl, settings: PoolSettings) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(settings.acquire_timeout)
        .connect_with((*url.options).clone())
        .await
}

/// A pool on an event store's SQLite file (created if missing), with the settings the store
/// relies on ([`SqliteEventStore::connect_options`]).
pub async fn sqlite_store_pool(path: &Path, settings: PoolSettings) -> Result<SqlitePool, sqlx::Error> {
    SqlitePoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(settings.acquire_timeout)
        .connect_with(SqliteEventStore::connect_options(path))
        .await
}

/// An event store's pool, on either adapter.
#[derive(Clone)]
pub enum StorePool {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

impl StorePool {
    /// Connects to the store's database (a SQLite file is created if missing).
    pub async fn connect(url: &DatabaseUrl, settings: PoolSettings) -> Result<Self, DbError> {
        let connect_error = |source| DbError::Connect {
            target: url.to_string(),
            source,
        };
        match url {
            DatabaseUrl::Postgres(pg) => Ok(StorePool::Postgres(pg_pool(pg, settings).await.map_err(connect_error)?)),
            DatabaseUrl::Sqlite(path) => Ok(StorePool::Sqlite(
                sqlite_store_pool(path, settings).await.map_err(connect_error)?,
            )),
        }
    }

    /// Creates or upgrades the store's tables.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match self {
            StorePool::Postgres(pool) => PgEventStore::migrate(pool).await,
            StorePool::Sqlite(pool) => SqliteEventStore::migrate(pool).await,
        }
    }

    pub async fn close(&self) {
        match self {
            StorePool::Postgres(pool) => pool.close().await,
            StorePool::Sqlite(pool) => pool.close().await,
        }
    }
}

/// An open event store, on either adapter.
#[derive(Clone)]
pub enum OpenStore {
    Postgres(PgEventStore),
    Sqlite(SqliteEventStore),
}

impl OpenStore {
    /// The store behind the adapter-independent contract.
    pub fn shared(&self) -> Arc<dyn EventStore> {
        match self {
            OpenStore::Postgres(store) => Arc::new(store.clone()),
            OpenStore::Sqlite(store) => Arc::new(store.clone()),
        }
    }

    /// The PostgreSQL store (what the relay's lease needs), if it is one.
    pub fn postgres(&self) -> Option<&PgEventStore> {
        match self {
            OpenStore::Postgres(store) => Some(store),
            OpenStore::Sqlite(_) => None,
        }
    }

    /// The store with the primitives that copy a log between stores.
    pub fn transfer(&self) -> Arc<dyn LogTransfer> {
        match self {
            OpenStore::Postgres(store) => Arc::new(store.clone()),
            OpenStore::Sqlite(store) => Arc::new(store.clone()),
        }
    }

    /// The first stream of the store that is not `service`'s, if any: a store shared by every
    /// service, from before each had its own (or another service's store given by mistake).
    pub async fn foreign_stream(&self, service: Service) -> Result<Option<String>, StoreError> {
        let prefixes: Vec<String> = service
            .categories()
            .iter()
            .map(|category| format!("{}-", category.name()))
            .collect();
        let prefixes: Vec<&str> = prefixes.iter().map(String::as_str).collect();
        self.transfer().first_stream_outside(&prefixes).await
    }

    /// Closes the pool: waits for the connections in use to be returned.
    pub async fn close(&self) {
        match self {
            OpenStore::Postgres(store) => store.pool().close().await,
            OpenStore::Sqlite(store) => store.pool().close().await,
        }
    }
}

/// Whether [`open_event_store`] creates or upgrades the store's tables first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Migrate {
    /// Create or upgrade them (a service at start, `serve`).
    Yes,
    /// Only read what is there (an inspection, a relay that is not the store's owner).
    No,
}

/// Opens the event store at `url`: connects, migrates if asked, and starts the store's writer.
pub async fn open_event_store(
    url: &DatabaseUrl,
    settings: PoolSettings,
    migrate: Migrate,
) -> Result<OpenStore, DbError> {
    let pool = StorePool::connect(url, settings).await?;
    if migrate == Migrate::Yes {
        pool.migrate().await.map_err(|source| DbError::Migrate {
            target: url.to_string(),
            source,
        })?;
    }
    let open_error = |source| DbError::Open {
        target: url.to_string(),
        source,
    };
    let options = StoreOptions::default();
    Ok(match pool {
        StorePool::Postgres(pool) => OpenStore::Postgres(PgEventStore::open(pool, options).await.map_err(open_error)?),
        StorePool::Sqlite(pool) => OpenStore::Sqlite(SqliteEventStore::open(pool, options).await.map_err(open_error)?),
    })
}

/// A read database's pool through sqlx's `Any` driver (one SQL dialect for both servers). A
/// SQLite file is created when missing and opened in WAL mode, so readers never wait for the
/// projection's writer.
pub async fn read_pool(url: &DatabaseUrl, settings: PoolSettings) -> Result<AnyPool, DbError> {
    sqlx::any::install_default_drivers();
    let connect_error = |source| DbError::Connect {
        target: url.to_string(),
        source,
    };
    let (options, sqlite) = match url {
        DatabaseUrl::Postgres(pg) => (AnyConnectOptions::from_str(&pg.url).map_err(connect_error)?, false),
        DatabaseUrl::Sqlite(path) => {
            let url = format!("{}?mode=rwc", sqlite_url(path));
            (AnyConnectOptions::from_str(&url).map_err(connect_error)?, true)
        }
    };
    AnyPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(settings.acquire_timeout)
        .after_connect(move |conn, _| {
            Box::pin(async move {
                if sqlite {
                    sqlx::query("PRAGMA journal_mode = WAL").execute(&mut *conn).await?;
                    sqlx::query("PRAGMA synchronous = NORMAL").execute(&mut *conn).await?;
                    sqlx::query("PRAGMA busy_timeout = 10000").execute(&mut *conn).await?;
                    sqlx::query("PRAGMA foreign_keys = ON").execute(&mut *conn).await?;
                }
                Ok(())
            })
        })
        .connect_with(options)
        .await
        .map_err(connect_error)
}

/// Where every service's event store is, from one URL: a template with `{service}` where the
/// service's name goes (`postgres://projections@db/orderflow_{service}`,
/// `orderflow-data/{service}.db`), or, without it, one store that holds every service's streams
/// (a database from before every service had its own, or a test's).
#[derive(Clone, Debug)]
pub struct ServiceStoreUrls {
    urls: Vec<(Service, DatabaseUrl)>,
}

impl ServiceStoreUrls {
    /// The placeholder of a service's name in a template.
    pub const PLACEHOLDER: &'static str = "{service}";

    /// Reads `template` given to `flag` (named in errors; the URL never is).
    pub fn parse(flag: &str, template: &str) -> Result<Self, UrlError> {
        let urls = Service::ALL
            .into_iter()
            .map(|service| {
                let url = template.replace(Self::PLACEHOLDER, service.name());
                DatabaseUrl::parse(flag, &url).map(|url| (service, url))
            })
            .collect::<Result<_, _>>()?;
        Ok(ServiceStoreUrls { urls })
    }

    /// The store of every service in `data_dir` of the embedded deployment: `<service>.db`.
    pub fn embedded(data_dir: &Path) -> Self {
        let urls = Service::ALL
            .into_iter()
            .map(|service| (service, DatabaseUrl::Sqlite(data_dir.join(format!("{service}.db")))))
            .collect();
        ServiceStoreUrls { urls }
    }

    /// Each service with its store's URL, in [`Service::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (Service, &DatabaseUrl)> {
        self.urls.iter().map(|(service, url)| (*service, url))
    }

    /// `service`'s store.
    pub fn get(&self, service: Service) -> &DatabaseUrl {
        self.urls
            .iter()
            .find(|(s, _)| *s == service)
            .map(|(_, url)| url)
            .unwrap_or(&self.urls[0].1)
    }
}

/// Opens every service's event store of `urls` (one store open once, when several services share
/// it), each with `settings`.
pub async fn open_service_stores(
    urls: &ServiceStoreUrls,
    settings: PoolSettings,
    migrate: Migrate,
) -> Result<Vec<(Service, OpenStore)>, DbError> {
    let mut opened: Vec<(Service, OpenStore)> = Vec::new();
    let mut by_url: Vec<(String, OpenStore)> = Vec::new();
    for (service, url) in urls.iter() {
        let key = url_key(url);
        let store = match by_url.iter().find(|(k, _)| *k == key) {
            Some((_, store)) => store.clone(),
            None => {
                let store = open_event_store(url, settings, migrate).await?;
                by_url.push((key, store.clone()));
                store
            }
        };
        opened.push((service, store));
    }
    Ok(opened)
}

impl DatabaseUrl {
    /// Whether `self` and `other` name the same database (the same server, port and database,
    /// or the same file as written).
    pub fn same_database(&self, other: &DatabaseUrl) -> bool {
        match (self, other) {
            (DatabaseUrl::Postgres(a), DatabaseUrl::Postgres(b)) => {
                (a.options.get_host(), a.options.get_port(), a.options.get_database())
                    == (b.options.get_host(), b.options.get_port(), b.options.get_database())
            }
            (DatabaseUrl::Sqlite(a), DatabaseUrl::Sqlite(b)) => a == b,
            _ => false,
        }
    }
}

/// What tells two URLs' databases apart (never shown: it may hold the password).
fn url_key(url: &DatabaseUrl) -> String {
    match url {
        DatabaseUrl::Postgres(pg) => pg.url.to_string(),
        DatabaseUrl::Sqlite(path) => path.display().to_string(),
    }
}

/// A `sqlite://` URL for `path`, with the characters SQLite URLs give a meaning escaped.
pub fn sqlite_url(path: &Path) -> String {
    let path = path.to_string_lossy();
    let escaped = path.replace('%', "%25").replace('?', "%3F").replace('#', "%23");
    format!("sqlite://{escaped}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_shown_without_passwords() {
        let url = DatabaseUrl::parse(
            "--event-store-url",
            "postgres://write_side:hunter2@db.local:5433/orderflow",
        )
        .expect("a PostgreSQL URL");
        assert_eq!(url.to_string(), "PostgreSQL db.local:5433/orderflow");
        let e = DatabaseUrl::parse("--event-store-url", "postgres://u:hunter2@db:notaport/x").expect_err("bad port");
        assert!(!format!("{e:#}").contains("hunter2"), "{e:#}");
        assert_eq!(
            without_credentials("http://reader:hunter2@ch:8123/?database=x"),
            "http://ch:8123/"
        );
        assert_eq!(
            without_credentials("http://ch:8123/?user=reader&password=hunter2"),
            "http://ch:8123/"
        );
        assert!(!format!("{url:?}").contains("hunter2"), "{url:?}");
        assert_eq!(without_credentials("http://ch:8123"), "http://ch:8123");
    }

    #[test]
    fn sqlite_urls_and_paths_name_a_file() {
        for (given, path) in [
            ("sqlite://data/events.db", "data/events.db"),
            ("sqlite:///abs/events.db", "/abs/events.db"),
            ("sqlite:events.db", "events.db"),
            ("orderflow-data/events.db", "orderflow-data/events.db"),
        ] {
            match DatabaseUrl::parse("--event-store-url", given) {
                Ok(DatabaseUrl::Sqlite(p)) => assert_eq!(p, Path::new(path), "{given}"),
                other => panic!("{given}: {other:?}"),
            }
        }
        assert!(DatabaseUrl::parse("--event-store-url", "sqlite::memory:").is_err());
        let e = DatabaseUrl::parse("--event-store-url", "kurrentdb://127.0.0.1:2113").expect_err("not supported");
        assert!(e.to_string().contains("kurrentdb://"), "{e}");
    }

    #[test]
    fn a_template_names_every_service_s_store_and_a_plain_url_one_store_for_all() {
        let urls = ServiceStoreUrls::parse("--x", "postgres://p:pw@db/orderflow_{service}").expect("a template");
        let shown: Vec<String> = urls.iter().map(|(_, url)| url.to_string()).collect();
        assert_eq!(
            shown,
            [
                "PostgreSQL db:5432/orderflow_customers",
                "PostgreSQL db:5432/orderflow_inventory",
                "PostgreSQL db:5432/orderflow_orders",
                "PostgreSQL db:5432/orderflow_payments"
            ]
        );
        let one = ServiceStoreUrls::parse("--x", "orderflow-data/events.db").expect("a path");
        assert!(
            one.iter()
                .all(|(_, url)| url.to_string() == "SQLite orderflow-data/events.db")
        );
        let embedded = ServiceStoreUrls::embedded(Path::new("/data"));
        assert_eq!(embedded.get(Service::Payments).to_string(), "SQLite /data/payments.db");
        assert!(ServiceStoreUrls::parse("--x", "kurrentdb://h/{service}").is_err());
    }

    #[test]
    fn another_database_keeps_everything_but_the_database() {
        let cases = [
            (
                "postgres://postgres@127.0.0.1:5432/postgres",
                "postgres://postgres@127.0.0.1:5432/x",
            ),
            (
                "postgres://u:p@h/db?sslmode=disable",
                "postgres://u:p@h/x?sslmode=disable",
            ),
            ("postgresql://h:5432", "postgresql://h:5432/x"),
        ];
        for (url, expected) in cases {
            assert_eq!(replace_database(url, "x"), expected);
        }
    }

    #[test]
    fn another_database_on_the_same_server_keeps_the_credentials_and_the_query() {
        let url = DatabaseUrl::parse("--x", "postgres://u:pw@h:5432/a?sslmode=disable").expect("a URL");
        let other = url.postgres().expect("PostgreSQL").with_database("b");
        assert_eq!(&*other.url, "postgres://u:pw@h:5432/b?sslmode=disable");
        assert_eq!(other.options().get_database(), Some("b"));
    }
}
