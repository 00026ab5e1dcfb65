//! The read database and the projections' control tables in it: which version of each
//! projection is live ([`VersionInfo`]), the checkpoints, and the dead letters.
//!
//! Both read databases (PostgreSQL in the distributed deployment, SQLite embedded) are reached
//! through sqlx's `Any` driver, so every projection's SQL is written once in the subset both
//! accept: `$N` parameters, `BIGINT` and `TEXT`, `INSERT ... ON CONFLICT ... DO UPDATE`, times as
//! integer microseconds since the epoch (UTC), ids as text.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use event_schemas::Service;
use service_kit::db::{self, DatabaseUrl, PoolSettings, PostgresUrl};
use sqlx::{AnyConnection, AnyPool, AssertSqlSafe, ConnectOptions, PgConnection, Row};

use crate::json_rows::{Dialect, insert_rows, json_rows};
use crate::{Checkpoint, DeadLetter, ProjectionError};

/// A switch of a projection's live version begun by [`ReadDb::begin_switch`].
pub struct PendingSwitch {
    tx: sqlx::Transaction<'static, sqlx::Any>,
    /// The highest position the live version has applied of each service's log.
    pub live: BTreeMap<Service, u64>,
}

impl PendingSwitch {
    /// A service whose log the live version applied past what `holds` says of it (every event
    /// up to that position).
    pub fn ahead_of(&self, holds: &BTreeMap<Service, u64>) -> Option<Service> {
        self.live
            .iter()
            .find(|(service, position)| **position > holds.get(service).copied().unwrap_or(0))
            .map(|(service, _)| *service)
    }

    /// Switches reads of `name` to `version` as [`ReadDb::switch_live`] does; answers the
    /// version that was live.
    pub async fn commit(mut self, name: &str, version: u32) -> Result<Option<u32>, ProjectionError> {
        let old = ReadDb::switch_in(&mut self.tx, name, version).await?;
        self.tx.commit().await?;
        Ok(old)
    }

    /// Leaves everything as it was.
    pub async fn abandon(self) -> Result<(), ProjectionError> {
        self.tx.rollback().await?;
        Ok(())
    }
}

/// `LIKE` patterns of the sources of the services' stores and of the floors rebuilds leave
/// (`store:<service>`, `store-rebuild:<service>`; `_` and `%` do not occur in the prefixes).
const STORE_PATTERN: &str = "store:%";
const REBUILT_PATTERN: &str = "store-rebuild:%";
// A store source's `:<service>` starts at character 6 (after `store`): the `substr(source, 6)`
// of the statements that turn `store:<service>` into `store-rebuild:<service>`.

/// Which SQL server a [`ReadDb`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbKind {
    Postgres,
    Sqlite,
}

/// A connection pool to a read database (`postgres://...` or `sqlite://path`).
#[derive(Debug, Clone)]
pub struct ReadDb {
    pool: AnyPool,
    kind: DbKind,
    /// Kept to open a PostgreSQL connection of its own for what the `Any` driver cannot do
    /// (COPY, in a rebuild's bulk load: `connect_postgres`).
    postgres: Option<PostgresUrl>,
}

impl ReadDb {
    /// Connects to the read database at `url` (`postgres://...`, `sqlite://path` or a path),
    /// with the service kit's read-database pool settings: a SQLite file is created when missing
    /// and opened in WAL mode (readers never wait for the projection's writer).
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, ProjectionError> {
        let url =
            DatabaseUrl::parse("the read database URL", url).map_err(|e| ProjectionError::Invalid(e.to_string()))?;
        Self::open(&url, PoolSettings::new(max_connections)).await
    }

    /// [`Self::connect`] to a parsed URL.
    pub async fn open(url: &DatabaseUrl, pool: PoolSettings) -> Result<Self, ProjectionError> {
        let kind = match url {
            DatabaseUrl::Postgres(_) => DbKind::Postgres,
            DatabaseUrl::Sqlite(_) => DbKind::Sqlite,
        };
        let pool = db::read_pool(url, pool).await.map_err(|e| match e {
            db::DbError::Connect { source, .. } => ProjectionError::Database(source),
            other => ProjectionError::Invalid(other.to_string()),
        })?;
        Ok(ReadDb {
            pool,
            kind,
            postgres: url.postgres().cloned(),
        })
    }

    /// A PostgreSQL connection of its own to this read database, outside the pool, for what
    /// sqlx's `Any` driver cannot do (`COPY ... FROM STDIN`, a rebuild's bulk load). Its
    /// statements are long by design, so sqlx's slow-statement warnings are off on it (the bulk
    /// load logs its own timings). `None` on SQLite.
    pub(crate) async fn connect_postgres(&self) -> Result<Option<PgConnection>, ProjectionError> {
        let Some(url) = &self.postgres else {
            return Ok(None);
        };
        let options = url.options().clone().disable_statement_logging();
        Ok(Some(options.connect().await?))
    }

    /// Creates or updates the control tables.
    pub async fn migrate(&self) -> Result<(), ProjectionError> {
        let migrator = match self.kind {
            DbKind::Postgres => sqlx::migrate!("./migrations/postgres"),
            DbKind::Sqlite => sqlx::migrate!("./migrations/sqlite"),
        };
        migrator
            .run(&self.pool)
            .await
            .map_err(|e| ProjectionError::Database(e.into()))
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn kind(&self) -> DbKind {
        self.kind
    }

    /// Begins a transaction that will write. On SQLite it takes the write lock at once
    /// (`BEGIN IMMEDIATE`): a deferred transaction that reads and then writes fails with
    /// `SQLITE_BUSY_SNAPSHOT` when another writer (the other projection, a rebuild) committed in
    /// between, and no busy timeout can help with that. Waiting for the lock up front can.
    pub async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, ProjectionError> {
        Ok(match self.kind {
            DbKind::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            DbKind::Postgres => self.pool.begin().await?,
        })
    }

    /// [`begin_write`](Self::begin_write), then `first` (statements without parameters, one round
    /// trip) inside the transaction.
    ///
    /// Not in `BEGIN`'s own round trip: sqlx counts a transaction as begun only once its whole
    /// begin statement succeeded, so if `first` failed there (a lock timeout, a cancel) the
    /// connection would go back to the pool inside an aborted transaction, failing everything
    /// its next users send.
    pub(crate) async fn begin_write_with(
        &self,
        first: &str,
    ) -> Result<sqlx::Transaction<'static, sqlx::Any>, ProjectionError> {
        let mut tx = self.begin_write().await?;
        sqlx::raw_sql(AssertSqlSafe(first.to_owned())).execute(&mut *tx).await?;
        Ok(tx)
    }

    /// The live version of a projection, if one is live.
    pub async fn live_version(&self, name: &str) -> Result<Option<u32>, ProjectionError> {
        let row = sqlx::query("SELECT version FROM projection_versions WHERE name = $1 AND state = 'live'")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| version_from(row.try_get::<i64, _>(0)?)).transpose()
    }

    /// Every version of a projection, newest first.
    pub async fn versions(&self, name: &str) -> Result<Vec<VersionInfo>, ProjectionError> {
        let rows = sqlx::query(
            "SELECT name, version, state, until_position, until_time_us, target_position, events_applied,
                    events_per_second, started_at_us, switched_at_us
               FROM projection_versions WHERE name = $1 ORDER BY version DESC",
        )
        .bind(name)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(VersionInfo::from_row).collect()
    }

    /// Makes `version` live when no version of `name` is: the first start of a projection.
    /// Answers the live version (the given one, or the one that already was).
    pub async fn ensure_live(&self, name: &str, version: u32) -> Result<u32, ProjectionError> {
        if let Some(live) = self.live_version(name).await? {
            return Ok(live);
        }
        sqlx::query(
            "INSERT INTO projection_versions (name, version, state, started_at_us, switched_at_us)
             VALUES ($1, $2, 'live', $3, $3)
             ON CONFLICT (name, version) DO NOTHING",
        )
        .bind(name)
        .bind(i64::from(version))
        .bind(micros(Utc::now()))
        .execute(&self.pool)
        .await?;
        self.live_version(name)
            .await?
            .ok_or_else(|| ProjectionError::Inconsistent(format!("{name} v{version} exists but is not live")))
    }

    /// Registers a version being built (a rebuild, or a `--until` build when `until` is set).
    pub async fn register_building(
        &self,
        name: &str,
        version: u32,
        target_position: u64,
        until: Option<(u64, Option<DateTime<Utc>>)>,
    ) -> Result<(), ProjectionError> {
        sqlx::query(
            "INSERT INTO projection_versions (name, version, state, until_position, until_time_us, target_position, started_at_us)
             VALUES ($1, $2, 'building', $3, $4, $5, $6)",
        )
        .bind(name)
        .bind(i64::from(version))
        .bind(until.map(|(position, _)| to_i64(position)))
        .bind(until.and_then(|(_, time)| time.map(micros)))
        .bind(to_i64(target_position))
        .bind(micros(Utc::now()))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records a building version's progress, for `/v1/projections` and the CLI.
    pub async fn report_progress(
        &self,
        name: &str,
        version: u32,
        events_applied: u64,
        events_per_second: f64,
        target_position: u64,
    ) -> Result<(), ProjectionError> {
        sqlx::query(
            "UPDATE projection_versions SET events_applied = $3, events_per_second = $4, target_position = $5
              WHERE name = $1 AND version = $2",
        )
        .bind(name)
        .bind(i64::from(version))
        .bind(to_i64(events_applied))
        .bind(events_per_second)
        .bind(to_i64(target_position))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Sets a version's state (`historical` when a `--until` build finishes, `retired` when a
    /// failed build is abandoned).
    pub async fn set_state(&self, name: &str, version: u32, state: &str) -> Result<(), ProjectionError> {
        sqlx::query("UPDATE projection_versions SET state = $3 WHERE name = $1 AND version = $2")
            .bind(name)
            .bind(i64::from(version))
            .bind(state)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Switches reads of `name` to `version` in one transaction: the old live version becomes
    /// `retired`, and the new one inherits its Kafka checkpoints, so that the workers, which
    /// follow the live version, go on from where they were (whatever the new version already
    /// holds from the store is guarded by stream version, so a replay applies nothing twice).
    /// Answers the version that was live.
    pub async fn switch_live(&self, name: &str, version: u32) -> Result<Option<u32>, ProjectionError> {
        let mut tx = self.begin_write().await?;
        let old = Self::switch_in(&mut tx, name, version).await?;
        tx.commit().await?;
        Ok(old)
    }

    /// Begins a switch of `name`'s reads: a write transaction that has read how far the live
    /// version has applied each service's log ([`PendingSwitch::live`]), for a rebuild to compare
    /// with what the new version holds before it commits ([`PendingSwitch::commit`]). On
    /// PostgreSQL the transaction holds the live version's checkpoint rows, which every apply of
    /// that version updates: a projection whose rows commit with its checkpoints (the dashboard)
    /// shows nothing more until the switch commits or is abandoned; one whose rows are written
    /// before (analytics in ClickHouse) may show a batch more meanwhile. On SQLite the
    /// transaction is the database's one writer, which holds every apply off as well, and any
    /// other write too.
    pub async fn begin_switch(&self, name: &str) -> Result<PendingSwitch, ProjectionError> {
        let mut tx = self.begin_write().await?;
        // In the order the applies lock them (a batch's checkpoints are sorted by source, bytewise,
        // and partition), so that the two never wait for each other in a cycle.
        let lock = match self.kind {
            DbKind::Postgres => r#" ORDER BY c.source COLLATE "C", c.partition_no FOR UPDATE OF c"#,
            DbKind::Sqlite => "",
        };
        let live = Self::live_positions(&mut tx, name, lock).await?;
        Ok(PendingSwitch { tx, live })
    }

    /// The highest position the live version of `name` has applied of each service's log,
    /// from its checkpoints (`lock` is appended to the query).
    async fn live_positions(
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        name: &str,
        lock: &str,
    ) -> Result<BTreeMap<Service, u64>, ProjectionError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT c.source, c.last_position FROM projection_checkpoints c
               JOIN projection_versions v ON v.name = c.name AND v.version = c.version
              WHERE c.name = $1 AND v.state = 'live'{lock}"
        )))
        .bind(name)
        .fetch_all(&mut **tx)
        .await?;
        let mut positions = BTreeMap::new();
        for row in rows {
            let source: String = row.try_get(0)?;
            let position = u64::try_from(row.try_get::<Option<i64>, _>(1)?.unwrap_or(0)).unwrap_or(0);
            if let Some(service) = crate::source_service(&source) {
                let highest = positions.entry(service).or_insert(0);
                *highest = position.max(*highest);
            }
        }
        Ok(positions)
    }

    async fn switch_in(
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        name: &str,
        version: u32,
    ) -> Result<Option<u32>, ProjectionError> {
        let old = sqlx::query("SELECT version FROM projection_versions WHERE name = $1 AND state = 'live'")
            .bind(name)
            .fetch_optional(&mut **tx)
            .await?
            .map(|row| version_from(row.try_get::<i64, _>(0)?))
            .transpose()?;
        if let Some(old) = old {
            sqlx::query("UPDATE projection_versions SET state = 'retired' WHERE name = $1 AND version = $2")
                .bind(name)
                .bind(i64::from(old))
                .execute(&mut **tx)
                .await?;
            sqlx::query(
                "INSERT INTO projection_checkpoints
                    (name, version, source, partition_no, last_offset, last_position, last_recorded_at_us, updated_at_us)
                 SELECT name, $3, source, partition_no, last_offset, last_position, last_recorded_at_us, updated_at_us
                   FROM projection_checkpoints
                  WHERE name = $1 AND version = $2 AND source NOT LIKE $4 AND source NOT LIKE $5
                 ON CONFLICT (name, version, source, partition_no) DO NOTHING",
            )
            .bind(name)
            .bind(i64::from(old))
            .bind(i64::from(version))
            .bind(STORE_PATTERN)
            .bind(REBUILT_PATTERN)
            .execute(&mut **tx)
            .await?;
        }
        let switched = sqlx::query(
            "UPDATE projection_versions SET state = 'live', switched_at_us = $3 WHERE name = $1 AND version = $2",
        )
        .bind(name)
        .bind(i64::from(version))
        .bind(micros(Utc::now()))
        .execute(&mut **tx)
        .await?;
        if switched.rows_affected() != 1 {
            return Err(ProjectionError::Invalid(format!("{name} has no version {version}")));
        }
        Ok(old)
    }

    /// After a rebuild's switch and its catch-up from the store: records that the version has
    /// caught up, and when Kafka workers carry the version on (it has Kafka checkpoints), turns
    /// its store checkpoint into a [`crate::REBUILT_SOURCE`] floor, so that the applied position
    /// follows the workers' progress from then on instead of staying at the rebuild's last
    /// position (which made every later `min_position` wait in vain). Not before the catch-up:
    /// until then the Kafka checkpoints it inherited at the switch vouch for events the old
    /// version applied and this one may lack. Workers that start later hand over themselves
    /// ([`ReadDb::hand_over_once_caught_up`]). In the embedded mode (no Kafka workers) the store
    /// checkpoint stays what the runner reads. Answers whether it handed over.
    pub async fn hand_over_to_kafka(&self, name: &str, version: u32) -> Result<bool, ProjectionError> {
        let mut tx = self.begin_write().await?;
        sqlx::query("UPDATE projection_versions SET caught_up_at_us = $3 WHERE name = $1 AND version = $2")
            .bind(name)
            .bind(i64::from(version))
            .bind(micros(Utc::now()))
            .execute(&mut *tx)
            .await?;
        let done = sqlx::query(
            "UPDATE projection_checkpoints SET source = $5 || substr(source, 6)
              WHERE name = $1 AND version = $2 AND source LIKE $3
                AND EXISTS (SELECT 1 FROM projection_checkpoints k
                             WHERE k.name = $1 AND k.version = $2 AND k.source NOT LIKE $3 AND k.source NOT LIKE $4)",
        )
        .bind(name)
        .bind(i64::from(version))
        .bind(STORE_PATTERN)
        .bind(REBUILT_PATTERN)
        .bind(crate::REBUILT_SOURCE)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            > 0;
        tx.commit().await?;
        Ok(done)
    }

    /// A Kafka worker's half of [`ReadDb::hand_over_to_kafka`], for a version that a rebuild
    /// made before any worker ran (so it inherited no Kafka checkpoint and the rebuild could not
    /// hand over): once the rebuild has caught up, the worker, which applies the version from
    /// Kafka from then on, turns the store checkpoint into the floor. Its own partition
    /// checkpoints vouch only for what it applied to this version, so the floor's rule holds.
    pub async fn hand_over_once_caught_up(&self, name: &str, version: u32) -> Result<HandOver, ProjectionError> {
        let row = sqlx::query(
            "SELECT CASE WHEN caught_up_at_us IS NULL THEN 0 ELSE 1 END,
                    CASE WHEN EXISTS (SELECT 1 FROM projection_checkpoints
                                       WHERE name = $1 AND version = $2 AND source LIKE $3) THEN 1 ELSE 0 END
               FROM projection_versions WHERE name = $1 AND version = $2",
        )
        .bind(name)
        .bind(i64::from(version))
        .bind(STORE_PATTERN)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(HandOver::NothingToHandOver);
        };
        let (caught_up, store) = (row.try_get::<i64, _>(0)? != 0, row.try_get::<i64, _>(1)? != 0);
        if !store {
            return Ok(HandOver::NothingToHandOver);
        }
        if !caught_up {
            return Ok(HandOver::NotCaughtUp);
        }
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "UPDATE projection_checkpoints SET source = $4 || substr(source, 6)
              WHERE name = $1 AND version = $2 AND source LIKE $3
                AND NOT EXISTS (SELECT 1 FROM projection_checkpoints r
                                 WHERE r.name = $1 AND r.version = $2
                                   AND r.source = $4 || substr(projection_checkpoints.source, 6))",
        )
        .bind(name)
        .bind(i64::from(version))
        .bind(STORE_PATTERN)
        .bind(crate::REBUILT_SOURCE)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(HandOver::HandedOver)
    }

    /// The checkpoints stored for one version.
    pub async fn checkpoints(&self, name: &str, version: u32) -> Result<Vec<Checkpoint>, ProjectionError> {
        // The checkpoint is the progress row without what workers reported about it.
        Ok(self
            .progress(name, version)
            .await?
            .into_iter()
            .map(|p| Checkpoint {
                source: p.source,
                partition: p.partition,
                offset: p.offset,
                position: p.position,
                recorded_at: p.recorded_at,
            })
            .collect())
    }

    /// Every partition's progress for one version: checkpoints with what workers reported. A
    /// partition counts as drained only if its worker said so within the last
    /// [`DRAINED_FRESH_US`]: workers repeat the report every second while idle, so a dead
    /// worker's last word expires instead of vouching for a partition nobody reads.
    pub async fn progress(&self, name: &str, version: u32) -> Result<Vec<PartitionProgress>, ProjectionError> {
        let rows = sqlx::query(
            "SELECT source, partition_no, last_offset, last_position, last_recorded_at_us,
                    CASE WHEN drained = 1 AND drained_at_us >= $3 THEN 1 ELSE 0 END, high_watermark
               FROM projection_checkpoints WHERE name = $1 AND version = $2 ORDER BY source, partition_no",
        )
        .bind(name)
        .bind(i64::from(version))
        .bind(micros(Utc::now()) - DRAINED_FRESH_US)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|row| {
                Ok(PartitionProgress {
                    source: row.try_get(0)?,
                    partition: i32::try_from(row.try_get::<i64, _>(1)?).unwrap_or(i32::MAX),
                    offset: row.try_get(2)?,
                    position: from_i64(row.try_get(3)?),
                    recorded_at: row.try_get::<Option<i64>, _>(4)?.and_then(from_micros),
                    drained: row.try_get::<i64, _>(5)? != 0,
                    high_watermark: row.try_get(6)?,
                })
            })
            .collect()
    }

    /// Makes sure every `(topic, partition)` has a checkpoint row (offset -1, position 0, not
    /// drained): a partition nobody has read must count in [`applied_position`].
    pub async fn register_partitions(
        &self,
        name: &str,
        version: u32,
        partitions: &[(String, i32)],
    ) -> Result<(), ProjectionError> {
        let now = micros(Utc::now());
        for (source, partition) in partitions {
            sqlx::query(
                "INSERT INTO projection_checkpoints
                    (name, version, source, partition_no, last_offset, last_position, updated_at_us)
                 VALUES ($1, $2, $3, $4, -1, 0, $5)
                 ON CONFLICT (name, version, source, partition_no) DO NOTHING",
            )
            .bind(name)
            .bind(i64::from(version))
            .bind(source.as_str())
            .bind(i64::from(*partition))
            .bind(now)
            .execute(&self.pool)
            .await?;
        }
        Ok(())
    }

    /// Records what a Kafka worker saw of its partitions between batches (whether it found them
    /// empty, their end offset). Never moves a checkpoint.
    pub async fn report_partitions(
        &self,
        name: &str,
        version: u32,
        reports: &[PartitionReport],
    ) -> Result<(), ProjectionError> {
        let now = micros(Utc::now());
        for report in reports {
            sqlx::query(
                "INSERT INTO projection_checkpoints
                    (name, version, source, partition_no, last_offset, last_position, drained, high_watermark,
                     updated_at_us, drained_at_us)
                 VALUES ($1, $2, $3, $4, -1, 0, $5, $6, $7, $7)
                 ON CONFLICT (name, version, source, partition_no) DO UPDATE SET
                    drained = excluded.drained,
                    drained_at_us = excluded.drained_at_us,
                    high_watermark = coalesce(excluded.high_watermark, projection_checkpoints.high_watermark)",
            )
            .bind(name)
            .bind(i64::from(version))
            .bind(report.source.as_str())
            .bind(i64::from(report.partition))
            .bind(i64::from(report.drained))
            .bind(report.high_watermark)
            .bind(now)
            .execute(&self.pool)
            .await?;
        }
        Ok(())
    }

    /// How many dead letters one version has (without loading them).
    pub async fn dead_letter_count(&self, name: &str, version: u32) -> Result<u64, ProjectionError> {
        let count: i64 = sqlx::query("SELECT count(*) FROM projection_dead_letters WHERE name = $1 AND version = $2")
            .bind(name)
            .bind(i64::from(version))
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?;
        Ok(from_i64(count))
    }

    /// The dead letters of one version, oldest first.
    pub async fn dead_letters(&self, name: &str, version: u32) -> Result<Vec<DeadLetter>, ProjectionError> {
        let rows = sqlx::query(
            "SELECT source, partition_no, message_offset, position, event_type, reason, payload
               FROM projection_dead_letters WHERE name = $1 AND version = $2 ORDER BY id",
        )
        .bind(name)
        .bind(i64::from(version))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|row| {
                Ok(DeadLetter {
                    origin: crate::Origin {
                        source: row.try_get(0)?,
                        partition: i32::try_from(row.try_get::<i64, _>(1)?).unwrap_or(i32::MAX),
                        offset: row.try_get(2)?,
                    },
                    position: from_i64(row.try_get(3)?),
                    event_type: row.try_get(4)?,
                    reason: row.try_get(5)?,
                    payload: row.try_get(6)?,
                })
            })
            .collect()
    }
}

/// A checkpoint's columns: the keys of [`checkpoint_rows`]' objects.
const CHECKPOINT_COLUMNS: &str =
    "name, version, source, partition_no, last_offset, last_position, last_recorded_at_us, updated_at_us";

/// Stores checkpoints, parameter `param` their rows ([`checkpoint_rows`]), in one statement (see
/// `json_rows`). Never moves a checkpoint backwards. Also run on a PostgreSQL connection by a
/// rebuild's bulk load (dashboard/bulk.rs), and by the dashboard's apply on PostgreSQL inside its
/// one write statement.
pub(crate) fn save_checkpoints_sql(dialect: Dialect, param: usize) -> String {
    insert_rows(
        dialect,
        "projection_checkpoints",
        CHECKPOINT_COLUMNS,
        param,
        "WHERE true ON CONFLICT (name, version, source, partition_no) DO UPDATE SET
            last_offset = excluded.last_offset,
            last_position = excluded.last_position,
            last_recorded_at_us = excluded.last_recorded_at_us,
            drained = 0,
            updated_at_us = excluded.updated_at_us
         WHERE projection_checkpoints.last_offset < excluded.last_offset",
    )
}

/// The parameter of [`save_checkpoints_sql`]; `now` in µs.
pub(crate) fn checkpoint_rows(name: &str, version: u32, checkpoints: &[Checkpoint], now: i64) -> String {
    json_rows(checkpoints, |c| {
        [
            ("name", name.into()),
            ("version", i64::from(version).into()),
            ("source", c.source.as_str().into()),
            ("partition_no", i64::from(c.partition).into()),
            ("last_offset", c.offset.into()),
            ("last_position", to_i64(c.position).into()),
            ("last_recorded_at_us", c.recorded_at.map(micros).into()),
            ("updated_at_us", now.into()),
        ]
    })
}

/// Records one dead letter: `$1` name, `$2` version, `$3` source, `$4` partition, `$5` offset,
/// `$6` position, `$7` event type, `$8` reason, `$9` payload, `$10` now (µs). Also run on a
/// PostgreSQL connection by a rebuild's bulk load, with the same binds.
pub(crate) const SAVE_DEAD_LETTER_SQL: &str = "INSERT INTO projection_dead_letters
        (name, version, source, partition_no, message_offset, position, event_type, reason, payload, recorded_at_us)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";

/// Stores a batch's checkpoints; call it inside the transaction that writes the batch's rows.
/// A checkpoint never moves backwards (a replayed batch leaves a newer one as it is).
pub async fn save_checkpoints(
    conn: &mut AnyConnection,
    name: &str,
    version: u32,
    checkpoints: &[Checkpoint],
) -> Result<(), ProjectionError> {
    if checkpoints.is_empty() {
        return Ok(());
    }
    let rows = checkpoint_rows(name, version, checkpoints, micros(Utc::now()));
    sqlx::query(AssertSqlSafe(save_checkpoints_sql(Dialect::of(conn), 1)))
        .bind(rows)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Records dead letters; call it inside the transaction that stores the batch's checkpoints.
pub async fn save_dead_letters(
    conn: &mut AnyConnection,
    name: &str,
    version: u32,
    letters: &[DeadLetter],
) -> Result<(), ProjectionError> {
    let now = micros(Utc::now());
    for letter in letters {
        sqlx::query(SAVE_DEAD_LETTER_SQL)
            .bind(name)
            .bind(i64::from(version))
            .bind(letter.origin.source.as_str())
            .bind(i64::from(letter.origin.partition))
            .bind(letter.origin.offset)
            .bind(to_i64(letter.position))
            .bind(letter.event_type.as_str())
            .bind(letter.reason.as_str())
            .bind(letter.payload.as_slice())
            .bind(now)
            .execute(&mut *conn)
            .await?;
        metrics::counter!("orderflow_projection_dead_letters_total", "projection" => name.to_owned()).increment(1);
    }
    Ok(())
}

/// How long a worker's "partition drained" report counts (3 s; workers repeat it every second).
pub const DRAINED_FRESH_US: i64 = 3_000_000;

/// What a Kafka worker reports about one of its partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionReport {
    pub source: String,
    pub partition: i32,
    /// The worker's last poll found nothing to read.
    pub drained: bool,
    /// The partition's end offset as the consumer's last fetch saw it.
    pub high_watermark: Option<i64>,
}

/// One partition's checkpoint and reported state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionProgress {
    pub source: String,
    pub partition: i32,
    /// The last offset applied; -1 when none yet.
    pub offset: i64,
    /// The highest global position applied from this partition.
    pub position: u64,
    pub recorded_at: Option<DateTime<Utc>>,
    pub drained: bool,
    pub high_watermark: Option<i64>,
}

/// What [`ReadDb::hand_over_once_caught_up`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandOver {
    /// The store checkpoint is a floor now.
    HandedOver,
    /// The version has no store checkpoint (or no longer exists): nothing to do, ever.
    NothingToHandOver,
    /// Its rebuild is still catching up: ask again later.
    NotCaughtUp,
}

/// The position a projection version has applied: the largest N such that every event with a
/// global position up to N is applied (see `docs/adr/0005-projection-runtime.md`).
///
/// - From the store (embedded, or a rebuild in progress), the one checkpoint is exact: the global
///   log is read in position order and gap-safe.
/// - After a distributed rebuild handed over to Kafka ([`ReadDb::hand_over_to_kafka`]), its
///   [`crate::REBUILT_SOURCE`] checkpoint is a floor: every event up to it is applied, and the
///   answer is the larger of it and the partitions' answer below.
/// - From Kafka, each partition holds its events in position order (the relay publishes in
///   order), so a partition whose applied position is p has applied every one of its events up
///   to p. A partition whose worker found it empty at its last poll has nothing older waiting,
///   so it counts as far as the furthest partition. The answer is the minimum over partitions.
///
/// Positions are per service (every service has its own log): the answer is for `service`'s
/// log, from the sources that carry it ([`crate::source_service`]).
pub fn applied_position(progress: &[PartitionProgress], service: Service) -> u64 {
    let progress: Vec<&PartitionProgress> = progress
        .iter()
        .filter(|p| crate::source_service(&p.source) == Some(service))
        .collect();
    let (store, rebuilt) = (crate::store_source(service), crate::rebuilt_source(service));
    if let Some(store) = progress.iter().find(|p| p.source == store) {
        return store.position;
    }
    let floor = progress.iter().find(|p| p.source == rebuilt).map_or(0, |p| p.position);
    let partitions = || progress.iter().filter(|p| p.source != rebuilt);
    let furthest = partitions().map(|p| p.position).max().unwrap_or(0);
    let kafka = partitions()
        .map(|p| if p.drained { furthest } else { p.position })
        .min()
        .unwrap_or(0);
    floor.max(kafka)
}

/// Records waiting in Kafka for the projection from `service`'s topics (from the ends the
/// workers reported), if known.
pub fn lag_records(progress: &[PartitionProgress], service: Service) -> Option<u64> {
    let mut total = 0u64;
    let mut known = false;
    for p in progress
        .iter()
        .filter(|p| crate::source_service(&p.source) == Some(service))
    {
        if let Some(end) = p.high_watermark {
            known = true;
            total += u64::try_from(end - (p.offset + 1)).unwrap_or(0);
        }
    }
    known.then_some(total)
}

/// A projection version as the registry holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct VersionInfo {
    pub name: String,
    pub version: u32,
    /// `building`, `live`, `retired` or `historical`.
    pub state: String,
    /// A `--until` build: the last position it includes.
    pub until_position: Option<u64>,
    pub until_time: Option<DateTime<Utc>>,
    /// A build's goal: the store's head when it started (moves as it catches up).
    pub target_position: u64,
    pub events_applied: u64,
    pub events_per_second: f64,
    pub started_at: Option<DateTime<Utc>>,
    pub switched_at: Option<DateTime<Utc>>,
}

impl VersionInfo {
    fn from_row(row: sqlx::any::AnyRow) -> Result<Self, ProjectionError> {
        Ok(VersionInfo {
            name: row.try_get(0)?,
            version: version_from(row.try_get(1)?)?,
            state: row.try_get(2)?,
            until_position: row.try_get::<Option<i64>, _>(3)?.map(from_i64),
            until_time: row.try_get::<Option<i64>, _>(4)?.and_then(from_micros),
            target_position: from_i64(row.try_get(5)?),
            events_applied: from_i64(row.try_get(6)?),
            events_per_second: row.try_get(7)?,
            started_at: from_micros(row.try_get(8)?),
            switched_at: row.try_get::<Option<i64>, _>(9)?.and_then(from_micros),
        })
    }
}

/// Microseconds since the epoch: how the read databases store times.
pub fn micros(time: DateTime<Utc>) -> i64 {
    time.timestamp_micros()
}

/// The time of a stored microsecond count (`None` outside chrono's range).
pub fn from_micros(micros: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_micros(micros)
}

/// A position or count as stored (`BIGINT`); positions never reach `i64::MAX`.
pub fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A stored position or count; negative values (never written) read as 0.
pub fn from_i64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

fn version_from(value: i64) -> Result<u32, ProjectionError> {
    u32::try_from(value).map_err(|_| ProjectionError::Inconsistent(format!("version {value} out of range")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_rows_have_every_column() {
        let checkpoint = Checkpoint {
            source: "orders".to_owned(),
            partition: 3,
            offset: 7,
            position: 9,
            recorded_at: None,
        };
        let rows: serde_json::Value =
            serde_json::from_str(&checkpoint_rows("p", 1, &[checkpoint], 5)).expect("rows are JSON");
        let row = rows[0].as_object().expect("a row is an object");
        let missing: Vec<&str> = crate::json_rows::names(CHECKPOINT_COLUMNS)
            .filter(|c| !row.contains_key(*c))
            .collect();
        assert!(missing.is_empty(), "columns with no key: {missing:?}");
        assert_eq!((&row["partition_no"], &row["last_offset"]), (&3.into(), &7.into()));
    }

    fn partition(source: &str, partition: i32, position: u64, drained: bool) -> PartitionProgress {
        PartitionProgress {
            source: source.to_owned(),
            partition,
            offset: 0,
            position,
            recorded_at: None,
            drained,
            high_watermark: None,
        }
    }

    const ORDERS_TOPIC: &str = "orderflow.orders.v1";
    const ORDERS: Service = Service::Orders;

    #[test]
    fn the_store_checkpoint_is_exact_while_it_is_the_source() {
        let progress = [
            partition(&crate::store_source(ORDERS), 0, 40, false),
            partition(ORDERS_TOPIC, 0, 90, true),
        ];
        assert_eq!(applied_position(&progress, ORDERS), 40);
    }

    #[test]
    fn partitions_answer_their_minimum_and_drained_ones_count_as_the_furthest() {
        let progress = [
            partition(ORDERS_TOPIC, 0, 70, false),
            partition(ORDERS_TOPIC, 1, 90, false),
        ];
        assert_eq!(applied_position(&progress, ORDERS), 70);
        let progress = [
            partition(ORDERS_TOPIC, 0, 70, true),
            partition(ORDERS_TOPIC, 1, 90, false),
        ];
        assert_eq!(applied_position(&progress, ORDERS), 90);
        assert_eq!(applied_position(&[], ORDERS), 0);
    }

    /// Every service has its own log: another service's sources say nothing about this one's.
    #[test]
    fn each_service_is_answered_from_its_own_sources() {
        let progress = [
            partition(&crate::store_source(Service::Customers), 0, 500, false),
            partition(&crate::store_source(ORDERS), 0, 40, false),
            partition("orderflow.customers.v1", 0, 900, false),
        ];
        assert_eq!(applied_position(&progress, ORDERS), 40);
        assert_eq!(applied_position(&progress, Service::Customers), 500);
        assert_eq!(applied_position(&progress, Service::Payments), 0);
    }

    /// After a distributed rebuild: the rebuild's position is a floor, and the workers' progress
    /// counts beyond it (the bug: it stayed at the floor forever).
    #[test]
    fn a_handed_over_rebuild_is_a_floor_under_the_partitions() {
        let floor = partition(&crate::rebuilt_source(ORDERS), 0, 100, false);
        let behind = [
            floor.clone(),
            partition(ORDERS_TOPIC, 0, 60, false),
            partition(ORDERS_TOPIC, 1, 80, false),
        ];
        assert_eq!(applied_position(&behind, ORDERS), 100);
        let beyond = [
            floor,
            partition(ORDERS_TOPIC, 0, 120, false),
            partition(ORDERS_TOPIC, 1, 150, true),
        ];
        assert_eq!(applied_position(&beyond, ORDERS), 120);
    }
}
