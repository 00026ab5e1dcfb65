//! Where a database is, from a `--event-store-url` or `--read-db-url`: a PostgreSQL URL, a
//! `sqlite:` URL or a plain file path. Shown only through [`Display`](fmt::Display), which
//! never includes a password: PostgreSQL as host, port and database (as the write-side binary
//! logs it), SQLite as its file.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use anyhow::Context as _;
use sqlx::postgres::PgConnectOptions;
use sqlx::sqlite::SqliteConnectOptions;

/// A database location. Its `Debug` is its `Display`: sqlx's connect options print their
/// password.
#[derive(Clone)]
pub(crate) enum StoreUrl {
    /// Boxed: far larger than a path, and made once per command.
    Postgres(Box<PgConnectOptions>),
    Sqlite(PathBuf),
}

impl std::fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl StoreUrl {
    /// Reads `url` given to `flag` (named in errors; the URL itself never is).
    pub(crate) fn parse(flag: &str, url: &str) -> anyhow::Result<Self> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let options = url
                .parse::<PgConnectOptions>()
                .with_context(|| format!("{flag} is not a valid PostgreSQL URL"))?;
            return Ok(StoreUrl::Postgres(Box::new(options)));
        }
        if url.starts_with("sqlite:") {
            let rest = url.trim_start_matches("sqlite://").trim_start_matches("sqlite:");
            let (database, query) = rest.split_once('?').unwrap_or((rest, ""));
            anyhow::ensure!(
                !database.is_empty() && database != ":memory:" && !query.contains("mode=memory"),
                "{flag} names no file: an in-memory SQLite database holds no data to keep"
            );
            let options = SqliteConnectOptions::from_str(url)
                .with_context(|| format!("{flag} is not a valid SQLite URL (sqlite://path)"))?;
            return Ok(StoreUrl::Sqlite(options.get_filename().to_owned()));
        }
        if let Some((scheme, _)) = url.split_once("://") {
            anyhow::bail!(
                "{flag}: `{scheme}://` is not supported; give a postgres:// URL, a sqlite:// URL or a file path"
            );
        }
        anyhow::ensure!(!url.is_empty(), "{flag} is empty");
        Ok(StoreUrl::Sqlite(PathBuf::from(url)))
    }
}

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreUrl::Postgres(options) => write!(
                f,
                "PostgreSQL {}:{}/{}",
                options.get_host(),
                options.get_port(),
                options.get_database().unwrap_or_default()
            ),
            StoreUrl::Sqlite(path) => write!(f, "SQLite {}", path.display()),
        }
    }
}

/// `url` without its user and password (`http://user:secret@host:8123` → `http://host:8123`).
pub(crate) fn without_credentials(url: &str) -> String {
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn urls_are_shown_without_passwords() {
        let url = StoreUrl::parse(
            "--event-store-url",
            "postgres://write_side:hunter2@db.local:5433/orderflow",
        )
        .expect("a PostgreSQL URL");
        assert_eq!(url.to_string(), "PostgreSQL db.local:5433/orderflow");
        let e = StoreUrl::parse("--event-store-url", "postgres://u:hunter2@db:notaport/x").expect_err("bad port");
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
            match StoreUrl::parse("--event-store-url", given) {
                Ok(StoreUrl::Sqlite(p)) => assert_eq!(p, Path::new(path), "{given}"),
                other => panic!("{given}: {other:?}"),
            }
        }
        assert!(StoreUrl::parse("--event-store-url", "sqlite::memory:").is_err());
        let e = StoreUrl::parse("--event-store-url", "kurrentdb://127.0.0.1:2113").expect_err("not supported");
        assert!(e.to_string().contains("kurrentdb://"), "{e}");
    }
}
