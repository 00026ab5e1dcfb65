//! The SQLite adapter: the embedded default, one file, no server.
//!
//! The same group commit as PostgreSQL: one writer task, one `BEGIN IMMEDIATE` transaction per
//! batch, so one fsync covers many commits. SQLite runs one write transaction at a time, which is
//! what makes the global log gap-safe here. The file is opened in WAL mode with
//! `synchronous = FULL`: a commit that was answered survives a crash or power loss.

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqliteRow, SqliteSynchronous};
use sqlx::{QueryBuilder, Row, Sqlite, Transaction};
use std::sync::Arc;
use tokio::sync::watch;
use uuid::Uuid;

use crate::group_commit::{BatchLimits, BatchWriter, GroupCommit};
use crate::plan::{self, BatchState};
use crate::transfer::{self, LogState};
use crate::{
    AppendError, Commit, Committed, EventMetadata, EventStore, IdempotencyRecord, IdempotentResult, LogTransfer,
    Position, RecordedEvent, Snapshot, StoreError, StoreOptions, Until,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Rows per multi-row `INSERT`: 12 parameters each (an import's) stays far below SQLite's
/// variable limit.
const ROWS_PER_INSERT: usize = 500;
/// Values per `IN (...)` list.
const IDS_PER_QUERY: usize = 900;

/// The event store in one SQLite file. Cheap to clone; clones share the writer.
#[derive(Clone)]
pub struct SqliteEventStore {
    pool: SqlitePool,
    writer: GroupCommit,
    changes: watch::Receiver<Position>,
    /// The sender of `changes`, for what is written outside group commit (imports).
    head: watch::Sender<Position>,
    /// The writer's clock, which an import moves past the times it brings.
    clock: Arc<SqliteWriter>,
}

impl SqliteEventStore {
    /// The connection settings the store relies on, for the file at `path` (created if
    /// missing): WAL, so readers never wait for the writer; `synchronous = FULL`, so a commit
    /// survives a power cut; a 10 s busy timeout.
    pub fn connect_options(path: &Path) -> SqliteConnectOptions {
        SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
    }

    /// Creates or upgrades the store's tables.
    pub async fn migrate(pool: &SqlitePool) -> Result<(), StoreError> {
        MIGRATOR.run(pool).await?;
        Ok(())
    }

    /// A store on a migrated database; starts its writer task (call inside a Tokio runtime).
    pub async fn open(pool: SqlitePool, options: StoreOptions) -> Result<Self, StoreError> {
        let head: i64 = sqlx::query_scalar("SELECT coalesce(max(position), 0) FROM events")
            .fetch_one(&pool)
            .await?;
        let last_recorded: Option<i64> = sqlx::query_scalar("SELECT max(recorded_at) FROM events")
            .fetch_one(&pool)
            .await?;
        let (head_tx, changes) = watch::channel(to_u64(head));
        let limits = BatchLimits {
            max_commits: options.max_batch_commits,
            max_events: options.max_batch_events,
        };
        let clock = Arc::new(SqliteWriter {
            pool: pool.clone(),
            last_recorded: std::sync::Mutex::new(last_recorded.unwrap_or(0)),
        });
        let writer = GroupCommit::spawn(clock.clone(), head_tx.clone(), limits);
        Ok(SqliteEventStore {
            pool,
            writer,
            changes,
            head: head_tx,
            clock,
        })
    }

    /// The pool this store reads with.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

struct SqliteWriter {
    pool: SqlitePool,
    /// `recorded_at` of the last commit: the next one is never earlier, even if the clock steps back.
    last_recorded: std::sync::Mutex<i64>,
}

impl SqliteWriter {
    fn next_recorded_at(&self) -> i64 {
        let now = Utc::now().timestamp_micros();
        let mut last = self.last_recorded.lock().unwrap_or_else(|p| p.into_inner());
        *last = now.max(*last);
        *last
    }

    /// No later commit is recorded before `micros` (an imported event's time).
    fn not_before(&self, micros: i64) {
        let mut last = self.last_recorded.lock().unwrap_or_else(|p| p.into_inner());
        *last = micros.max(*last);
    }
}

#[async_trait]
impl BatchWriter for SqliteWriter {
    async fn write_batch(&self, batch: &[&Commit]) -> Result<Vec<Result<Committed, AppendError>>, StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let recorded_at = self.next_recorded_at();
        let snapshot = snapshot(&mut tx, batch).await?;
        let plan = plan::plan(batch, &snapshot);
        let positions = insert_events(&mut tx, &plan, recorded_at).await?;
        let answers = plan::results(batch, plan, &positions, from_micros(recorded_at)?);
        for (key, result) in plan::new_keys(batch, &answers)? {
            sqlx::query("INSERT INTO idempotency_keys (key, request_hash, result, created_at) VALUES (?, ?, ?, ?)")
                .bind(&key.key)
                .bind(&key.request_hash)
                .bind(result)
                .bind(recorded_at)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(answers)
    }
}

async fn snapshot(tx: &mut Transaction<'_, Sqlite>, batch: &[&Commit]) -> Result<BatchState, StoreError> {
    let mut snapshot = BatchState::default();
    for stream in plan::streams_of(batch) {
        let v: Option<i64> = sqlx::query_scalar("SELECT max(stream_version) FROM events WHERE stream_id = ?")
            .bind(stream)
            .fetch_one(&mut **tx)
            .await?;
        if let Some(v) = v {
            snapshot.versions.insert(stream.to_owned(), to_u64(v));
        }
    }
    for key in plan::keys_of(batch) {
        let row = sqlx::query("SELECT request_hash, result FROM idempotency_keys WHERE key = ?")
            .bind(key)
            .fetch_optional(&mut **tx)
            .await?;
        if let Some(row) = row {
            let stored = plan::stored_key(row.try_get(0)?, &row.try_get::<String, _>(1)?)?;
            snapshot.keys.insert(key.to_owned(), stored);
        }
    }
    for ids in plan::event_ids_of(batch).chunks(IDS_PER_QUERY) {
        let mut q = QueryBuilder::<Sqlite>::new("SELECT event_id FROM events WHERE event_id IN (");
        let mut list = q.separated(", ");
        for id in ids {
            list.push_bind(*id);
        }
        q.push(")");
        let existing: Vec<Uuid> = q.build_query_scalar().fetch_all(&mut **tx).await?;
        snapshot.existing_event_ids.extend(existing);
    }
    Ok(snapshot)
}

async fn insert_events(
    tx: &mut Transaction<'_, Sqlite>,
    plan: &plan::Plan<'_>,
    recorded_at: i64,
) -> Result<Vec<Position>, StoreError> {
    let mut positions = Vec::with_capacity(plan.rows.len());
    for rows in plan.rows.chunks(ROWS_PER_INSERT) {
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO events (stream_id, stream_version, event_id, event_type, schema_version, payload, \
             occurred_at, recorded_at, correlation_id, causation_id, actor) ",
        );
        q.push_values(rows, |mut b, row| {
            let e = row.event;
            b.push_bind(row.stream_id.to_owned())
                .push_bind(i64::try_from(row.stream_version).unwrap_or(i64::MAX))
                .push_bind(e.event_id)
                .push_bind(e.event_type.clone())
                .push_bind(i64::from(e.schema_version))
                .push_bind(e.payload.clone())
                .push_bind(e.occurred_at.timestamp_micros())
                .push_bind(recorded_at)
                .push_bind(e.metadata.correlation_id.clone())
                .push_bind(e.metadata.causation_id.clone())
                .push_bind(e.metadata.actor.clone());
        });
        // One writer at a time and rows in VALUES order: positions follow the plan's order.
        q.push(" RETURNING position");
        let returned: Vec<i64> = q.build_query_scalar().fetch_all(&mut **tx).await?;
        if returned.len() != rows.len() {
            return Err(StoreError::Corrupt("insert returned fewer positions than rows".into()));
        }
        positions.extend(returned.into_iter().map(to_u64));
    }
    Ok(positions)
}

const COLUMNS: &str = "position, stream_id, stream_version, event_id, event_type, schema_version, payload, \
                       occurred_at, recorded_at, correlation_id, causation_id, actor";

fn recorded(row: &SqliteRow) -> Result<RecordedEvent, StoreError> {
    let schema_version: i64 = row.try_get(5)?;
    Ok(RecordedEvent {
        position: to_u64(row.try_get(0)?),
        stream_id: row.try_get(1)?,
        stream_version: to_u64(row.try_get(2)?),
        event_id: row.try_get(3)?,
        event_type: row.try_get(4)?,
        schema_version: u32::try_from(schema_version)
            .map_err(|_| StoreError::Corrupt(format!("bad schema version {schema_version}")))?,
        payload: row.try_get(6)?,
        occurred_at: from_micros(row.try_get(7)?)?,
        recorded_at: from_micros(row.try_get(8)?)?,
        metadata: EventMetadata {
            correlation_id: row.try_get(9)?,
            causation_id: row.try_get(10)?,
            actor: row.try_get(11)?,
        },
    })
}

#[async_trait]
impl EventStore for SqliteEventStore {
    async fn commit(&self, commit: Commit) -> Result<Committed, AppendError> {
        self.writer.commit(commit).await
    }

    async fn read_stream(
        &self,
        stream_id: &str,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM events WHERE stream_id = ? AND stream_version >= ? ORDER BY stream_version LIMIT ?"
        );
        let query = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(stream_id)
            .bind(clamp(from_version))
            .bind(clamp(limit as u64));
        query.fetch_all(&self.pool).await?.iter().map(recorded).collect()
    }

    async fn read_stream_until(
        &self,
        stream_id: &str,
        from_version: u64,
        until: Until,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let (column, bound) = match until {
            Until::Position(p) => ("position", clamp(p)),
            Until::RecordedAt(t) => ("recorded_at", t.timestamp_micros()),
        };
        let sql = format!(
            "SELECT {COLUMNS} FROM events WHERE stream_id = ? AND stream_version >= ? AND {column} <= ? \
             ORDER BY stream_version"
        );
        let query = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(stream_id)
            .bind(clamp(from_version))
            .bind(bound);
        query.fetch_all(&self.pool).await?.iter().map(recorded).collect()
    }

    async fn read_all(&self, after: Position, limit: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM events WHERE position > ? ORDER BY position LIMIT ?");
        let query = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(clamp(after))
            .bind(clamp(limit as u64));
        query.fetch_all(&self.pool).await?.iter().map(recorded).collect()
    }

    async fn head_position(&self) -> Result<Position, StoreError> {
        let head: i64 = sqlx::query_scalar("SELECT coalesce(max(position), 0) FROM events")
            .fetch_one(&self.pool)
            .await?;
        Ok(to_u64(head))
    }

    async fn stream_version(&self, stream_id: &str) -> Result<u64, StoreError> {
        let v: i64 = sqlx::query_scalar("SELECT coalesce(max(stream_version), 0) FROM events WHERE stream_id = ?")
            .bind(stream_id)
            .fetch_one(&self.pool)
            .await?;
        Ok(to_u64(v))
    }

    fn changes(&self) -> watch::Receiver<Position> {
        self.changes.clone()
    }

    async fn idempotent_result(&self, key: &str) -> Result<Option<IdempotentResult>, StoreError> {
        let row = sqlx::query("SELECT request_hash, result FROM idempotency_keys WHERE key = ?")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| plan::stored_key(row.try_get(0)?, &row.try_get::<String, _>(1)?))
            .transpose()
    }

    async fn load_checkpoint(&self, name: &str) -> Result<Position, StoreError> {
        let p: Option<i64> = sqlx::query_scalar("SELECT position FROM checkpoints WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(p.map_or(0, to_u64))
    }

    async fn save_checkpoint(&self, name: &str, position: Position) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO checkpoints (name, position, updated_at) VALUES (?, ?, ?)
             ON CONFLICT (name) DO UPDATE SET position = excluded.position, updated_at = excluded.updated_at
             WHERE checkpoints.position < excluded.position",
        )
        .bind(name)
        .bind(clamp(position))
        .bind(chrono::Utc::now().timestamp_micros())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn save_snapshot(&self, s: &Snapshot) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO snapshots (stream_id, version, position, recorded_at, state_type, state_version, state)
             VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (stream_id, version) DO NOTHING",
        )
        .bind(&s.stream_id)
        .bind(clamp(s.version))
        .bind(clamp(s.position))
        .bind(s.recorded_at.timestamp_micros())
        .bind(&s.state_type)
        .bind(i64::from(s.state_version))
        .bind(&s.state)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn load_snapshot(&self, stream_id: &str, until: Option<Until>) -> Result<Option<Snapshot>, StoreError> {
        let (filter, bound) = match until {
            None => ("", 0),
            Some(Until::Position(p)) => (" AND position <= ?", clamp(p)),
            Some(Until::RecordedAt(t)) => (" AND recorded_at <= ?", t.timestamp_micros()),
        };
        let sql = format!(
            "SELECT stream_id, version, position, recorded_at, state_type, state_version, state \
             FROM snapshots WHERE stream_id = ?{filter} ORDER BY version DESC LIMIT 1"
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(stream_id);
        if until.is_some() {
            query = query.bind(bound);
        }
        let Some(row) = query.fetch_optional(&self.pool).await? else {
            return Ok(None);
        };
        let state_version: i64 = row.try_get(5)?;
        Ok(Some(Snapshot {
            stream_id: row.try_get(0)?,
            version: to_u64(row.try_get(1)?),
            position: to_u64(row.try_get(2)?),
            recorded_at: from_micros(row.try_get(3)?)?,
            state_type: row.try_get(4)?,
            state_version: u32::try_from(state_version).unwrap_or(0),
            state: row.try_get(6)?,
        }))
    }

    async fn delete_snapshots(&self, stream_id: Option<&str>) -> Result<u64, StoreError> {
        let done = match stream_id {
            Some(s) => {
                sqlx::query("DELETE FROM snapshots WHERE stream_id = ?")
                    .bind(s)
                    .execute(&self.pool)
                    .await?
            }
            None => sqlx::query("DELETE FROM snapshots").execute(&self.pool).await?,
        };
        Ok(done.rows_affected())
    }
}

/// Log transfer (see `transfer`). An import is one `BEGIN IMMEDIATE` transaction, SQLite's one
/// writer at a time, like the writer's batches. Positions are inserted as given; `AUTOINCREMENT`
/// keeps the largest position ever inserted in `sqlite_sequence`, explicit ones included, so the
/// next commit lands above the imported head with nothing more to do.
#[async_trait]
impl LogTransfer for SqliteEventStore {
    async fn idempotency_records(
        &self,
        after_key: Option<&str>,
        limit: usize,
    ) -> Result<Vec<IdempotencyRecord>, StoreError> {
        const COLS: &str = "key, request_hash, result, created_at";
        let query = match after_key {
            None => sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {COLS} FROM idempotency_keys ORDER BY key LIMIT ?"
            )))
            .bind(clamp(limit as u64)),
            Some(after) => sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {COLS} FROM idempotency_keys WHERE key > ? ORDER BY key LIMIT ?"
            )))
            .bind(after)
            .bind(clamp(limit as u64)),
        };
        query
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|row| {
                Ok(IdempotencyRecord {
                    key: row.try_get(0)?,
                    request_hash: row.try_get(1)?,
                    result: row.try_get(2)?,
                    created_at: from_micros(row.try_get(3)?)?,
                })
            })
            .collect()
    }

    async fn import_events(&self, events: &[RecordedEvent]) -> Result<(), StoreError> {
        let Some(last) = events.last() else {
            return Ok(());
        };
        transfer::check_events(events)?;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        match import_on(&mut tx, events).await {
            Ok(()) => {
                // Still under the write lock, so no commit can be recorded in between.
                self.clock.not_before(last.recorded_at.timestamp_micros());
                tx.commit().await?;
            }
            Err(e) => {
                // At once: the rollback ends the write transaction the writer is waiting for.
                if let Err(rollback) = tx.rollback().await {
                    tracing::warn!(error = %rollback, "rolling back a refused import failed");
                }
                return Err(e);
            }
        }
        self.head.send_if_modified(|h| {
            let moved = last.position > *h;
            if moved {
                *h = last.position;
            }
            moved
        });
        Ok(())
    }

    async fn import_idempotency(&self, records: &[IdempotencyRecord]) -> Result<u64, StoreError> {
        if records.is_empty() {
            return Ok(0);
        }
        transfer::check_records(records)?;
        // In a write transaction like the writer's keys, which it reads and inserts in one.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let mut new = 0;
        for chunk in records.chunks(ROWS_PER_INSERT) {
            let mut q =
                QueryBuilder::<Sqlite>::new("INSERT INTO idempotency_keys (key, request_hash, result, created_at) ");
            q.push_values(chunk, |mut b, r| {
                b.push_bind(r.key.clone())
                    .push_bind(r.request_hash.clone())
                    .push_bind(r.result.clone())
                    .push_bind(r.created_at.timestamp_micros());
            });
            q.push(" ON CONFLICT (key) DO NOTHING");
            new += q.build().execute(&mut *tx).await?.rows_affected();
        }
        tx.commit().await?;
        Ok(new)
    }

    async fn first_stream_outside(&self, prefixes: &[&str]) -> Result<Option<String>, StoreError> {
        // Not `LIKE`, which in SQLite ignores the case of ASCII letters: `instr(...) = 1` is a
        // literal, case-sensitive "starts with".
        let mut q = QueryBuilder::<Sqlite>::new("SELECT stream_id FROM events");
        if !prefixes.is_empty() {
            q.push(" WHERE NOT (");
            for (i, prefix) in prefixes.iter().enumerate() {
                if i > 0 {
                    q.push(" OR ");
                }
                q.push("instr(stream_id, ").push_bind(*prefix).push(") = 1");
            }
            q.push(")");
        }
        q.push(" ORDER BY position LIMIT 1");
        Ok(q.build_query_scalar().fetch_optional(&self.pool).await?)
    }
}

/// The import inside its write transaction: the checks against the store, then the insert.
async fn import_on(tx: &mut Transaction<'_, Sqlite>, events: &[RecordedEvent]) -> Result<(), StoreError> {
    let mut state = LogState::default();
    let last = sqlx::query("SELECT position, recorded_at FROM events ORDER BY position DESC LIMIT 1")
        .fetch_optional(&mut **tx)
        .await?;
    if let Some(row) = last {
        state.head = to_u64(row.try_get(0)?);
        state.last_recorded_at = Some(from_micros(row.try_get(1)?)?);
    }
    for stream in transfer::streams_of(events) {
        let v: Option<i64> = sqlx::query_scalar("SELECT max(stream_version) FROM events WHERE stream_id = ?")
            .bind(stream)
            .fetch_one(&mut **tx)
            .await?;
        if let Some(v) = v {
            state.versions.insert(stream.to_owned(), to_u64(v));
        }
    }
    for ids in transfer::event_ids_of(events).chunks(IDS_PER_QUERY) {
        let mut q = QueryBuilder::<Sqlite>::new("SELECT event_id FROM events WHERE event_id IN (");
        let mut list = q.separated(", ");
        for id in ids {
            list.push_bind(*id);
        }
        q.push(")");
        let existing: Vec<Uuid> = q.build_query_scalar().fetch_all(&mut **tx).await?;
        state.existing_event_ids.extend(existing);
    }
    transfer::check_against(events, &state)?;

    for rows in events.chunks(ROWS_PER_INSERT) {
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO events (position, stream_id, stream_version, event_id, event_type, schema_version, payload, \
             occurred_at, recorded_at, correlation_id, causation_id, actor) ",
        );
        // `check_events` bounded positions and versions by i64::MAX.
        q.push_values(rows, |mut b, e| {
            b.push_bind(clamp(e.position))
                .push_bind(e.stream_id.clone())
                .push_bind(clamp(e.stream_version))
                .push_bind(e.event_id)
                .push_bind(e.event_type.clone())
                .push_bind(i64::from(e.schema_version))
                .push_bind(e.payload.clone())
                .push_bind(e.occurred_at.timestamp_micros())
                .push_bind(e.recorded_at.timestamp_micros())
                .push_bind(e.metadata.correlation_id.clone())
                .push_bind(e.metadata.causation_id.clone())
                .push_bind(e.metadata.actor.clone());
        });
        let done = q
            .build()
            .execute(&mut **tx)
            .await
            .map_err(transfer::refused_by_constraint)?;
        if done.rows_affected() != rows.len() as u64 {
            return Err(StoreError::Corrupt(format!(
                "the import inserted {} rows for {} events",
                done.rows_affected(),
                rows.len()
            )));
        }
    }
    Ok(())
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn from_micros(micros: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_micros(micros).ok_or_else(|| StoreError::Corrupt(format!("time {micros} out of range")))
}
