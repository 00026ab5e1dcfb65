//! The PostgreSQL server the benchmark runs on: a fresh database per system per run (created and
//! dropped here), `CHECKPOINT` between runs, waiting for a quiet server, and counting rows.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions as _, Connection as _};

/// Past this many sessions on the server (anyone's), a run waits: others are using it.
const BUSY_SESSIONS: i64 = 25;
/// How long a run waits for a busy server before it goes ahead anyway (and says so).
const MAX_WAIT: Duration = Duration::from_secs(600);
const POLL: Duration = Duration::from_secs(5);

/// The server, through a URL naming any database on it (`postgres` for the admin work).
#[derive(Clone)]
pub(crate) struct Server {
    url: String,
    options: PgConnectOptions,
}

impl Server {
    pub(crate) fn new(url: &str) -> anyhow::Result<Self> {
        let options: PgConnectOptions = url.parse().context("--pg-url is not a PostgreSQL URL")?;
        Ok(Server {
            url: url.to_owned(),
            options,
        })
    }

    /// The URL of database `name` on this server.
    pub(crate) fn url_of(&self, name: &str) -> String {
        with_database(&self.url, name)
    }

    async fn admin(&self) -> anyhow::Result<PgConnection> {
        self.options
            .connect()
            .await
            .context("cannot connect to PostgreSQL (is `scripts/services up` running?)")
    }

    /// Fails unless the server answers.
    pub(crate) async fn check(&self) -> anyhow::Result<String> {
        let mut conn = self.admin().await?;
        let version: String = sqlx::query_scalar("SHOW server_version").fetch_one(&mut conn).await?;
        conn.close().await.ok();
        Ok(version)
    }

    /// A new, empty database named `peerbench_<label>_<random>`.
    pub(crate) async fn create(&self, label: &str) -> anyhow::Result<String> {
        let name = format!(
            "peerbench_{}_{}",
            label.replace('-', "_"),
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let mut conn = self.admin().await?;
        // The name is ours: [a-z0-9_] only.
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .with_context(|| format!("CREATE DATABASE {name}"))?;
        conn.close().await.ok();
        Ok(name)
    }

    /// Drops `name`, whoever is still connected (best effort: a failure is printed, not fatal).
    pub(crate) async fn drop_database(&self, name: &str) {
        let dropped = async {
            let mut conn = self.admin().await?;
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .execute(&mut conn)
            .await?;
            conn.close().await.ok();
            anyhow::Ok(())
        }
        .await;
        if let Err(e) = dropped {
            eprintln!("warning: could not drop database {name}: {e:#}");
        }
    }

    /// Flushes every dirty page now, so that no run pays for the previous run's writes.
    pub(crate) async fn checkpoint(&self) -> anyhow::Result<()> {
        let mut conn = self.admin().await?;
        sqlx::raw_sql("CHECKPOINT")
            .execute(&mut conn)
            .await
            .context("CHECKPOINT (the URL's user must be a superuser or have pg_checkpoint)")?;
        conn.close().await.ok();
        Ok(())
    }

    /// Sessions on the server now, anyone's.
    pub(crate) async fn sessions(&self) -> anyhow::Result<i64> {
        let mut conn = self.admin().await?;
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity")
            .fetch_one(&mut conn)
            .await?;
        conn.close().await.ok();
        // Not counting this session.
        Ok(n - 1)
    }

    /// Waits (up to 10 minutes, polling every 5 s) while the server has more than 25 sessions.
    /// Answers a note when it had to wait, or gave up waiting.
    pub(crate) async fn wait_until_quiet(&self, say: &dyn Fn(String)) -> anyhow::Result<Option<String>> {
        let started = Instant::now();
        let mut waited = false;
        loop {
            let n = self.sessions().await?;
            if n <= BUSY_SESSIONS {
                return Ok(waited.then(|| {
                    format!(
                        "waited {:.0} s for the server to have at most {BUSY_SESSIONS} sessions",
                        started.elapsed().as_secs_f64()
                    )
                }));
            }
            if started.elapsed() >= MAX_WAIT {
                let note = format!(
                    "the server still had {n} sessions after waiting {} s; ran anyway",
                    MAX_WAIT.as_secs()
                );
                say(note.clone());
                return Ok(Some(note));
            }
            say(format!(
                "waiting: the server has {n} sessions (> {BUSY_SESSIONS}); polling every {} s",
                POLL.as_secs()
            ));
            waited = true;
            tokio::time::sleep(POLL).await;
        }
    }

    /// One number from database `name`: `sql` must answer one row of one `bigint` (or null).
    pub(crate) async fn scalar_i64(&self, name: &str, sql: &str) -> anyhow::Result<i64> {
        let mut conn = self.options.clone().database(name).connect().await?;
        let n: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_one(&mut conn)
            .await
            .with_context(|| format!("{sql} in {name}"))?;
        conn.close().await.ok();
        Ok(n.unwrap_or(0))
    }

    /// One number from database `name`: `sql` must answer one row of one `float8` (or null).
    pub(crate) async fn scalar_f64(&self, name: &str, sql: &str) -> anyhow::Result<Option<f64>> {
        let mut conn = self.options.clone().database(name).connect().await?;
        let n: Option<f64> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_one(&mut conn)
            .await
            .with_context(|| format!("{sql} in {name}"))?;
        conn.close().await.ok();
        Ok(n)
    }

    /// Runs `sql` (one or more statements) in database `name`.
    pub(crate) async fn execute(&self, name: &str, sql: &str) -> anyhow::Result<()> {
        let mut conn = self.options.clone().database(name).connect().await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(&mut conn)
            .await
            .with_context(|| format!("{sql} in {name}"))?;
        conn.close().await.ok();
        Ok(())
    }

    /// `ANALYZE` of database `name`: between warm-up and measurement, for every system alike,
    /// so that no planner decides on the statistics of an empty table.
    pub(crate) async fn analyze(&self, name: &str) -> anyhow::Result<()> {
        self.execute(name, "ANALYZE").await
    }
}

/// `url` with its database replaced by `name` (query parameters kept).
pub(crate) fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let after_scheme = base.find("://").map_or(0, |i| i + 3);
    let server = match base[after_scheme..].find('/') {
        Some(slash) => &base[..after_scheme + slash],
        None => base,
    };
    match query {
        Some(q) => format!("{server}/{name}?{q}"),
        None => format!("{server}/{name}"),
    }
}

/// A database made for one run, dropped by [`Server::drop_database`] after it.
pub(crate) struct Scratch {
    pub(crate) server: Server,
    pub(crate) names: Vec<String>,
}

impl Scratch {
    pub(crate) fn new(server: &Server) -> Self {
        Scratch {
            server: server.clone(),
            names: Vec::new(),
        }
    }

    /// A new database, remembered for [`Scratch::drop_all`].
    pub(crate) async fn create(&mut self, label: &str) -> anyhow::Result<String> {
        let name = self.server.create(label).await?;
        self.names.push(name.clone());
        Ok(name)
    }

    pub(crate) async fn drop_all(&mut self) {
        for name in self.names.drain(..) {
            self.server.drop_database(&name).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_database_and_keeps_the_rest() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            with_database("postgres://u:p@h:5432/db?sslmode=disable", "y"),
            "postgres://u:p@h:5432/y?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h:5432", "z"), "postgres://h:5432/z");
    }
}
