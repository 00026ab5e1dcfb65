//! The PostgreSQL adapter: the production event store.
//!
//! Writes go through group commit (`group_commit`): one writer task per store takes the advisory
//! lock [`APPEND_LOCK`], decides the queued commits (`plan`) and inserts all their events with one
//! `INSERT ... SELECT FROM UNNEST(...)`. Holding the lock until commit makes positions visible in
//! order, which is what makes the global log gap-safe (see the migration). A batch costs four
//! round trips on the writer's own connection: begin and lock, the versions it is decided
//! against, the insert (which also notifies), commit; six when it carries idempotency keys. Readers use the pool; a `LISTEN`
//! connection turns other processes' commits into change signals.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnection, PgListener, PgPool, PgRow};
use sqlx::{Connection, Postgres, Row, Transaction};
use tokio::sync::watch;
use uuid::Uuid;

use crate::group_commit::{BatchLimits, BatchWriter, GroupCommit};
use crate::plan::{self, BatchState};
use crate::transfer::{self, LogState};
use crate::{
    AppendError, Commit, Committed, EventMetadata, EventStore, IdempotencyRecord, IdempotentResult, LogTransfer,
    Position, RecordedEvent, Snapshot, StoreError, StoreOptions, Until,
};

/// The advisory lock every writer holds from its insert to its commit ("orderflo" as an i64).
pub const APPEND_LOCK: i64 = 8_030_591_472_428_805_231;

/// The `NOTIFY` channel on which writers announce their last position.
pub const NOTIFY_CHANNEL: &str = "orderflow_events";

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The event store on PostgreSQL. Cheap to clone; clones share the writer.
#[derive(Clone)]
pub struct PgEventStore {
    pool: PgPool,
    writer: GroupCommit,
    changes: watch::Receiver<Position>,
    /// The sender of `changes`, for what is written outside group commit (imports).
    head: watch::Sender<Position>,
    _listener: Arc<AbortOnDrop>,
}

impl PgEventStore {
    /// Creates or upgrades the store's tables in the pool's database.
    pub async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
        MIGRATOR.run(pool).await?;
        Ok(())
    }

    /// A store on a migrated database. Starts the writer task and the `LISTEN` task, so it must
    /// be called inside a Tokio runtime.
    pub async fn open(pool: PgPool, options: StoreOptions) -> Result<Self, StoreError> {
        let head: i64 = sqlx::query_scalar("SELECT coalesce(max(position), 0) FROM events")
            .fetch_one(&pool)
            .await?;
        let (head_tx, changes) = watch::channel(to_u64(head));
        let limits = BatchLimits {
            max_commits: options.max_batch_commits,
            max_events: options.max_batch_events,
        };
        let writer = PgWriter {
            pool: pool.clone(),
            conn: tokio::sync::Mutex::new(None),
            begin_timeout: options.begin_timeout,
        };
        let writer = GroupCommit::spawn(Arc::new(writer), head_tx.clone(), limits);
        let listener = tokio::spawn(listen(pool.clone(), head_tx.clone()));
        Ok(PgEventStore {
            pool,
            writer,
            changes,
            head: head_tx,
            _listener: Arc::new(AbortOnDrop(listener)),
        })
    }

    /// The pool this store reads with.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// Aborts the `LISTEN` task when the last clone of the store is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Turns `NOTIFY`s from every writer (this process's and others') into change signals.
/// A lost connection loses signals, never events: subscribers also poll.
async fn listen(pool: PgPool, head: watch::Sender<Position>) {
    loop {
        // Closed by its owner (the store is being shut down): nothing left to listen for.
        if pool.is_closed() {
            return;
        }
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(_) if pool.is_closed() => return,
            Err(e) => {
                tracing::warn!(error = %e, "event store LISTEN connection failed; retrying in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if let Err(e) = listener.listen(NOTIFY_CHANNEL).await {
            tracing::warn!(error = %e, "LISTEN {NOTIFY_CHANNEL} failed; retrying in 1 s");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        loop {
            match listener.recv().await {
                Ok(n) => {
                    if let Ok(p) = n.payload().parse::<Position>() {
                        head.send_if_modified(|h| {
                            let moved = p > *h;
                            if moved {
                                *h = p;
                            }
                            moved
                        });
                    }
                }
                Err(_) if pool.is_closed() => return,
                Err(e) => {
                    tracing::warn!(error = %e, "event store LISTEN connection lost; reconnecting");
                    break;
                }
            }
        }
    }
}

/// The group-commit writer. It writes on a connection of its own, outside the pool: a pooled
/// connection costs a ping on every acquire and another on every release, two round trips per
/// batch for nothing, since the writer is the only user of its connection.
struct PgWriter {
    pool: PgPool,
    conn: tokio::sync::Mutex<Option<PgConnection>>,
    /// The longest `BEGIN` (with the lock) may take ([`StoreOptions::begin_timeout`], 10 s by
    /// default) before the writer gives up on the connection and opens a new one. A connection
    /// the server closed fails at once; one whose peer vanished without a word (a failover, a
    /// dropped idle flow) would otherwise block the writer, and every commit queued behind it,
    /// until the kernel gives up retransmitting (~15 minutes). Another writer holds the lock
    /// for one batch: milliseconds.
    begin_timeout: Duration,
}

/// Opens the writer's transaction, takes the append lock and forces index access, in one round
/// trip (a simple query may hold several statements). Every query of the batch is a point
/// lookup or an insert. Prepared statements are planned once per connection, often while
/// `events` is still small; a plan that chose a sequential scan then would stay and slow every
/// batch as the table grows (measured: 9 ms instead of 3 ms per batch of 64 commits). So index
/// access is forced for this transaction, whatever the statistics say.
///
/// The isolation level is stated, not inherited: the lookups after the lock must each see what
/// was committed before the lock was granted, which only READ COMMITTED gives (under REPEATABLE
/// READ, set as a default for the database or role, the snapshot would be taken by the lock
/// statement itself, before it waited).
fn begin_batch_sql() -> String {
    format!(
        "BEGIN ISOLATION LEVEL READ COMMITTED; SELECT pg_advisory_xact_lock({APPEND_LOCK}); \
         SET LOCAL enable_seqscan = off"
    )
}

/// The writer's connection shows up under this name in `pg_stat_activity`.
pub const WRITER_APPLICATION_NAME: &str = "orderflow-event-writer";

impl PgWriter {
    async fn connect(&self) -> Result<PgConnection, StoreError> {
        let mut conn = self.pool.acquire().await?.detach();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SET application_name = '{WRITER_APPLICATION_NAME}'"
        )))
        .execute(&mut conn)
        .await?;
        Ok(conn)
    }
}

#[async_trait]
impl BatchWriter for PgWriter {
    async fn write_batch(&self, batch: &[&Commit]) -> Result<Vec<Result<Committed, AppendError>>, StoreError> {
        let mut kept = self.conn.lock().await;
        let (mut conn, fresh) = match kept.take() {
            Some(conn) => (conn, false),
            None => (self.connect().await?, true),
        };
        let mut written = write_batch_on(&mut conn, batch, self.begin_timeout).await;
        if let (Err(Failed::Begin(e)), false) = (&written, fresh) {
            // The server closed the kept connection while it was idle (a restart, a terminated
            // backend). Nothing of this batch was written: begin again on a new connection.
            tracing::info!(error = %e, "the event writer's connection was lost; reconnecting");
            conn = self.connect().await?;
            written = write_batch_on(&mut conn, batch, self.begin_timeout).await;
        }
        match written {
            Ok(answers) => {
                *kept = Some(conn);
                Ok(answers)
            }
            // The connection may be broken: the next batch opens a new one. Failures are rare
            // (the lock serializes writers, the plan refuses what would violate a constraint).
            Err(Failed::Begin(e) | Failed::Batch(e)) => Err(e),
        }
    }
}

/// Where a batch failed: a failure to begin wrote nothing and may be retried on a new connection.
enum Failed {
    Begin(StoreError),
    Batch(StoreError),
}

async fn write_batch_on(
    conn: &mut PgConnection,
    batch: &[&Commit],
    begin_timeout: Duration,
) -> Result<Vec<Result<Committed, AppendError>>, Failed> {
    let mut tx =
        match tokio::time::timeout(begin_timeout, conn.begin_with(sqlx::AssertSqlSafe(begin_batch_sql()))).await {
            Ok(began) => began.map_err(|e| Failed::Begin(e.into()))?,
            Err(_) => {
                let late = std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("BEGIN on the event writer's connection took over {begin_timeout:?}"),
                );
                return Err(Failed::Begin(StoreError::Database(sqlx::Error::Io(late))));
            }
        };
    let written = async {
        let (snapshot, recorded_at) = snapshot(&mut tx, batch).await?;
        let plan = plan::plan(batch, &snapshot);
        let positions = insert_events(&mut tx, &plan, recorded_at).await?;
        let answers = plan::results(batch, plan, &positions, recorded_at);
        insert_keys(&mut tx, batch, &answers, recorded_at).await?;
        Ok::<_, StoreError>(answers)
    }
    .await
    .map_err(Failed::Batch)?;
    tx.commit().await.map_err(|e| Failed::Batch(e.into()))?;
    Ok(written)
}

/// What the batch is decided against, read under the append lock in one statement: each
/// stream's version (in the order of `streams_of`), the event ids that already exist, and the
/// time the batch is recorded at. Stored idempotency keys take a second query, only when the
/// batch carries keys.
///
/// The time is the server's clock, but never earlier than the last event's `recorded_at`, so
/// `recorded_at` does not decrease along the log even when the clock steps back or an import
/// brought events recorded by a clock ahead of this one (one more index probe, on the last
/// position).
async fn snapshot(
    tx: &mut Transaction<'_, Postgres>,
    batch: &[&Commit],
) -> Result<(BatchState, DateTime<Utc>), StoreError> {
    let streams: Vec<&str> = plan::streams_of(batch);
    let ids = plan::event_ids_of(batch);
    let row = sqlx::query(
        "SELECT greatest(clock_timestamp(), (SELECT recorded_at FROM events ORDER BY position DESC LIMIT 1)),
                ARRAY(SELECT coalesce((SELECT stream_version FROM events
                                       WHERE events.stream_id = s.stream_id
                                       ORDER BY stream_version DESC LIMIT 1), 0)
                      FROM unnest($1::text[]) WITH ORDINALITY AS s(stream_id, ord)
                      ORDER BY ord),
                ARRAY(SELECT event_id FROM events WHERE event_id = ANY($2))",
    )
    .bind(&streams)
    .bind(&ids)
    .fetch_one(&mut **tx)
    .await?;
    let recorded_at: DateTime<Utc> = row.try_get(0)?;
    let versions: Vec<i64> = row.try_get(1)?;
    let existing: Vec<Uuid> = row.try_get(2)?;
    if versions.len() != streams.len() {
        return Err(StoreError::Corrupt(format!(
            "the version lookup returned {} versions for {} streams",
            versions.len(),
            streams.len()
        )));
    }
    let mut snapshot = BatchState::default();
    for (stream, version) in streams.into_iter().zip(versions) {
        // A stream without events is at version 0, which is what a missing entry means.
        if version > 0 {
            snapshot.versions.insert(stream.to_owned(), to_u64(version));
        }
    }
    snapshot.existing_event_ids.extend(existing);

    let keys: Vec<&str> = plan::keys_of(batch);
    if !keys.is_empty() {
        let rows = sqlx::query("SELECT key, request_hash, result::text FROM idempotency_keys WHERE key = ANY($1)")
            .bind(&keys)
            .fetch_all(&mut **tx)
            .await?;
        for row in rows {
            let stored = plan::stored_key(row.try_get(1)?, &row.try_get::<String, _>(2)?)?;
            snapshot.keys.insert(row.try_get(0)?, stored);
        }
    }
    Ok((snapshot, recorded_at))
}

/// Inserts the plan's rows and returns their positions, in row order.
async fn insert_events(
    tx: &mut Transaction<'_, Postgres>,
    plan: &plan::Plan<'_>,
    recorded_at: DateTime<Utc>,
) -> Result<Vec<Position>, StoreError> {
    if plan.rows.is_empty() {
        return Ok(Vec::new());
    }
    let n = plan.rows.len();
    let mut stream_ids = Vec::with_capacity(n);
    let mut versions = Vec::with_capacity(n);
    let mut event_ids = Vec::with_capacity(n);
    let mut types = Vec::with_capacity(n);
    let mut schema_versions = Vec::with_capacity(n);
    let mut payloads: Vec<&[u8]> = Vec::with_capacity(n);
    let mut occurred = Vec::with_capacity(n);
    let mut correlation = Vec::with_capacity(n);
    let mut causation = Vec::with_capacity(n);
    let mut actors = Vec::with_capacity(n);
    for row in &plan.rows {
        let e = row.event;
        stream_ids.push(row.stream_id);
        versions.push(to_i64(row.stream_version)?);
        event_ids.push(e.event_id);
        types.push(e.event_type.as_str());
        schema_versions.push(i32::try_from(e.schema_version).map_err(|_| too_big("schema version"))?);
        payloads.push(&e.payload);
        occurred.push(e.occurred_at);
        correlation.push(e.metadata.correlation_id.as_str());
        causation.push(e.metadata.causation_id.as_str());
        actors.push(e.metadata.actor.as_str());
    }
    // Rows are inserted in ordinality order, so identities follow the plan's order. The same
    // statement announces the last position to listeners (delivered at commit): one round trip.
    let returned = sqlx::query(
        "WITH inserted AS (
             INSERT INTO events (stream_id, stream_version, event_id, event_type, schema_version, payload,
                                 occurred_at, recorded_at, correlation_id, causation_id, actor)
             SELECT stream_id, stream_version, event_id, event_type, schema_version, payload,
                    occurred_at, $11, correlation_id, causation_id, actor
             FROM unnest($1::text[], $2::bigint[], $3::uuid[], $4::text[], $5::int[], $6::bytea[],
                         $7::timestamptz[], $8::text[], $9::text[], $10::text[])
                  WITH ORDINALITY AS t(stream_id, stream_version, event_id, event_type, schema_version, payload,
                                       occurred_at, correlation_id, causation_id, actor, ord)
             ORDER BY ord
             RETURNING position, stream_id, stream_version
         ),
         announced AS (SELECT pg_notify($12, (SELECT max(position) FROM inserted)::text))
         SELECT position, stream_id, stream_version FROM inserted
         WHERE EXISTS (SELECT FROM announced)",
    )
    .bind(&stream_ids)
    .bind(&versions)
    .bind(&event_ids)
    .bind(&types)
    .bind(&schema_versions)
    .bind(&payloads)
    .bind(&occurred)
    .bind(&correlation)
    .bind(&causation)
    .bind(&actors)
    .bind(recorded_at)
    .bind(NOTIFY_CHANNEL)
    .fetch_all(&mut **tx)
    .await?;
    let mut by_key: HashMap<(String, i64), i64> = HashMap::with_capacity(returned.len());
    for row in returned {
        by_key.insert((row.try_get(1)?, row.try_get(2)?), row.try_get(0)?);
    }
    plan.rows
        .iter()
        .map(|row| {
            let key = (row.stream_id.to_owned(), to_i64(row.stream_version)?);
            by_key
                .get(&key)
                .map(|&p| to_u64(p))
                .ok_or_else(|| StoreError::Corrupt(format!("insert returned no position for {}@{}", key.0, key.1)))
        })
        .collect()
}

async fn insert_keys(
    tx: &mut Transaction<'_, Postgres>,
    batch: &[&Commit],
    answers: &[Result<Committed, AppendError>],
    created_at: DateTime<Utc>,
) -> Result<(), StoreError> {
    let new = plan::new_keys(batch, answers)?;
    let keys: Vec<&str> = new.iter().map(|(k, _)| k.key.as_str()).collect();
    let hashes: Vec<&[u8]> = new.iter().map(|(k, _)| k.request_hash.as_slice()).collect();
    let results: Vec<&str> = new.iter().map(|(_, json)| json.as_str()).collect();
    if keys.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO idempotency_keys (key, request_hash, result, created_at)
         SELECT key, request_hash, result::jsonb, $4
         FROM unnest($1::text[], $2::bytea[], $3::text[]) AS t(key, request_hash, result)",
    )
    .bind(&keys)
    .bind(&hashes)
    .bind(&results)
    .bind(created_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

const COLUMNS: &str = "position, stream_id, stream_version, event_id, event_type, schema_version, payload, \
                       occurred_at, recorded_at, correlation_id, causation_id, actor";

fn recorded(row: &PgRow) -> Result<RecordedEvent, StoreError> {
    let schema_version: i32 = row.try_get(5)?;
    Ok(RecordedEvent {
        position: to_u64(row.try_get(0)?),
        stream_id: row.try_get(1)?,
        stream_version: to_u64(row.try_get(2)?),
        event_id: row.try_get(3)?,
        event_type: row.try_get(4)?,
        schema_version: u32::try_from(schema_version)
            .map_err(|_| StoreError::Corrupt(format!("negative schema version {schema_version}")))?,
        payload: row.try_get(6)?,
        occurred_at: row.try_get(7)?,
        recorded_at: row.try_get(8)?,
        metadata: EventMetadata {
            correlation_id: row.try_get(9)?,
            causation_id: row.try_get(10)?,
            actor: row.try_get(11)?,
        },
    })
}

#[async_trait]
impl EventStore for PgEventStore {
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
            "SELECT {COLUMNS} FROM events WHERE stream_id = $1 AND stream_version >= $2 ORDER BY stream_version LIMIT $3"
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
        let query = match until {
            Until::Position(p) => sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {COLUMNS} FROM events WHERE stream_id = $1 AND stream_version >= $2 AND position <= $3 \
                 ORDER BY stream_version"
            )))
            .bind(stream_id)
            .bind(clamp(from_version))
            .bind(clamp(p)),
            Until::RecordedAt(t) => sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {COLUMNS} FROM events WHERE stream_id = $1 AND stream_version >= $2 AND recorded_at <= $3 \
                 ORDER BY stream_version"
            )))
            .bind(stream_id)
            .bind(clamp(from_version))
            .bind(t),
        };
        query.fetch_all(&self.pool).await?.iter().map(recorded).collect()
    }

    async fn read_all(&self, after: Position, limit: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM events WHERE position > $1 ORDER BY position LIMIT $2");
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
        let v: i64 = sqlx::query_scalar("SELECT coalesce(max(stream_version), 0) FROM events WHERE stream_id = $1")
            .bind(stream_id)
            .fetch_one(&self.pool)
            .await?;
        Ok(to_u64(v))
    }

    fn changes(&self) -> watch::Receiver<Position> {
        self.changes.clone()
    }

    async fn idempotent_result(&self, key: &str) -> Result<Option<IdempotentResult>, StoreError> {
        let row = sqlx::query("SELECT request_hash, result::text FROM idempotency_keys WHERE key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| plan::stored_key(row.try_get(0)?, &row.try_get::<String, _>(1)?))
            .transpose()
    }

    async fn load_checkpoint(&self, name: &str) -> Result<Position, StoreError> {
        let p: Option<i64> = sqlx::query_scalar("SELECT position FROM checkpoints WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(p.map_or(0, to_u64))
    }

    async fn save_checkpoint(&self, name: &str, position: Position) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO checkpoints (name, position, updated_at) VALUES ($1, $2, now())
             ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position, updated_at = EXCLUDED.updated_at
             WHERE checkpoints.position < EXCLUDED.position",
        )
        .bind(name)
        .bind(to_i64(position)?)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn save_snapshot(&self, s: &Snapshot) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO snapshots (stream_id, version, position, recorded_at, state_type, state_version, state)
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (stream_id, version) DO NOTHING",
        )
        .bind(&s.stream_id)
        .bind(to_i64(s.version)?)
        .bind(to_i64(s.position)?)
        .bind(s.recorded_at)
        .bind(&s.state_type)
        .bind(i32::try_from(s.state_version).map_err(|_| too_big("state version"))?)
        .bind(&s.state)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn load_snapshot(&self, stream_id: &str, until: Option<Until>) -> Result<Option<Snapshot>, StoreError> {
        const COLS: &str = "stream_id, version, position, recorded_at, state_type, state_version, state";
        let query = match until {
            None => sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {COLS} FROM snapshots WHERE stream_id = $1 ORDER BY version DESC LIMIT 1"
            )))
            .bind(stream_id),
            Some(Until::Position(p)) => sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {COLS} FROM snapshots WHERE stream_id = $1 AND position <= $2 ORDER BY version DESC LIMIT 1"
            )))
            .bind(stream_id)
            .bind(clamp(p)),
            Some(Until::RecordedAt(t)) => sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {COLS} FROM snapshots WHERE stream_id = $1 AND recorded_at <= $2 ORDER BY version DESC LIMIT 1"
            )))
            .bind(stream_id)
            .bind(t),
        };
        let Some(row) = query.fetch_optional(&self.pool).await? else {
            return Ok(None);
        };
        let state_version: i32 = row.try_get(5)?;
        Ok(Some(Snapshot {
            stream_id: row.try_get(0)?,
            version: to_u64(row.try_get(1)?),
            position: to_u64(row.try_get(2)?),
            recorded_at: row.try_get(3)?,
            state_type: row.try_get(4)?,
            state_version: u32::try_from(state_version).unwrap_or(0),
            state: row.try_get(6)?,
        }))
    }

    async fn delete_snapshots(&self, stream_id: Option<&str>) -> Result<u64, StoreError> {
        let done = match stream_id {
            Some(s) => {
                sqlx::query("DELETE FROM snapshots WHERE stream_id = $1")
                    .bind(s)
                    .execute(&self.pool)
                    .await?
            }
            None => sqlx::query("DELETE FROM snapshots").execute(&self.pool).await?,
        };
        Ok(done.rows_affected())
    }
}

/// Log transfer (see `transfer`). An import is one transaction on a pooled connection that takes
/// the append lock first, exactly as the writer's batches do, so imports and commits take turns.
/// Positions are inserted as given (`OVERRIDING SYSTEM VALUE`: the column is an identity
/// `GENERATED ALWAYS`), then the identity's sequence is moved to the imported head, never back,
/// so the next commit draws a position above it.
#[async_trait]
impl LogTransfer for PgEventStore {
    async fn idempotency_records(
        &self,
        after_key: Option<&str>,
        limit: usize,
    ) -> Result<Vec<IdempotencyRecord>, StoreError> {
        // Two statements rather than `$1 IS NULL OR key > $1`, which a generic plan could not
        // answer with a range scan of the primary key.
        const COLS: &str = "key, request_hash, result::text, created_at";
        let query = match after_key {
            None => sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {COLS} FROM idempotency_keys ORDER BY key LIMIT $1"
            )))
            .bind(clamp(limit as u64)),
            Some(after) => sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {COLS} FROM idempotency_keys WHERE key > $1 ORDER BY key LIMIT $2"
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
                    created_at: row.try_get(3)?,
                })
            })
            .collect()
    }

    async fn import_events(&self, events: &[RecordedEvent]) -> Result<(), StoreError> {
        let Some(last) = events.last() else {
            return Ok(());
        };
        transfer::check_events(events)?;
        let rows = ImportRows::of(events)?;
        let mut tx = self.pool.begin_with(sqlx::AssertSqlSafe(begin_batch_sql())).await?;
        match import_on(&mut tx, events, &rows).await {
            Ok(()) => tx.commit().await?,
            Err(e) => {
                // At once rather than when the pool gets the connection back: the rollback
                // releases the append lock that every writer is waiting for.
                if let Err(rollback) = tx.rollback().await {
                    tracing::warn!(error = %rollback, "rolling back a refused import failed");
                }
                return Err(e);
            }
        }
        // The NOTIFY told every listener, this store's included, but only once its LISTEN
        // connection delivers it: this store's own readers hear at once.
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
        let keys: Vec<&str> = records.iter().map(|r| r.key.as_str()).collect();
        let hashes: Vec<&[u8]> = records.iter().map(|r| r.request_hash.as_slice()).collect();
        let results: Vec<&str> = records.iter().map(|r| r.result.as_str()).collect();
        let created: Vec<DateTime<Utc>> = records.iter().map(|r| r.created_at).collect();
        // Under the append lock like the writer's own keys: the writer reads the keys of its
        // batch and inserts the new ones in one transaction, which an insert between the two
        // would make fail.
        let mut tx = self.pool.begin_with(sqlx::AssertSqlSafe(begin_batch_sql())).await?;
        let inserted = sqlx::query(
            "INSERT INTO idempotency_keys (key, request_hash, result, created_at)
             SELECT key, request_hash, result::jsonb, created_at
             FROM unnest($1::text[], $2::bytea[], $3::text[], $4::timestamptz[]) AS t(key, request_hash, result, created_at)
             ON CONFLICT (key) DO NOTHING",
        )
        .bind(&keys)
        .bind(&hashes)
        .bind(&results)
        .bind(&created)
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(done) => {
                tx.commit().await?;
                Ok(done.rows_affected())
            }
            Err(e) => {
                if let Err(rollback) = tx.rollback().await {
                    tracing::warn!(error = %rollback, "rolling back a refused import failed");
                }
                Err(refused_json(e))
            }
        }
    }

    async fn first_stream_outside(&self, prefixes: &[&str]) -> Result<Option<String>, StoreError> {
        // `LIKE ANY` of no pattern is false: with no prefixes every stream is outside.
        let patterns: Vec<String> = prefixes.iter().map(|p| transfer::like_prefix(p)).collect();
        let first = sqlx::query_scalar(
            "SELECT stream_id FROM events WHERE NOT (stream_id LIKE ANY ($1::text[])) ORDER BY position LIMIT 1",
        )
        .bind(&patterns)
        .fetch_optional(&self.pool)
        .await?;
        Ok(first)
    }
}

/// An imported batch as the column arrays of one `INSERT ... SELECT FROM unnest(...)`.
struct ImportRows<'a> {
    positions: Vec<i64>,
    stream_ids: Vec<&'a str>,
    versions: Vec<i64>,
    event_ids: Vec<Uuid>,
    types: Vec<&'a str>,
    schema_versions: Vec<i32>,
    payloads: Vec<&'a [u8]>,
    occurred: Vec<DateTime<Utc>>,
    recorded: Vec<DateTime<Utc>>,
    correlation: Vec<&'a str>,
    causation: Vec<&'a str>,
    actors: Vec<&'a str>,
}

impl<'a> ImportRows<'a> {
    fn of(events: &'a [RecordedEvent]) -> Result<Self, StoreError> {
        let n = events.len();
        let mut rows = ImportRows {
            positions: Vec::with_capacity(n),
            stream_ids: Vec::with_capacity(n),
            versions: Vec::with_capacity(n),
            event_ids: Vec::with_capacity(n),
            types: Vec::with_capacity(n),
            schema_versions: Vec::with_capacity(n),
            payloads: Vec::with_capacity(n),
            occurred: Vec::with_capacity(n),
            recorded: Vec::with_capacity(n),
            correlation: Vec::with_capacity(n),
            causation: Vec::with_capacity(n),
            actors: Vec::with_capacity(n),
        };
        for e in events {
            // `check_events` bounded positions and versions by i64::MAX already.
            rows.positions.push(to_i64(e.position)?);
            rows.stream_ids.push(&e.stream_id);
            rows.versions.push(to_i64(e.stream_version)?);
            rows.event_ids.push(e.event_id);
            rows.types.push(&e.event_type);
            rows.schema_versions.push(i32::try_from(e.schema_version).map_err(|_| {
                StoreError::Invalid(format!(
                    "the event at position {}: schema version {} does not fit PostgreSQL's integer column",
                    e.position, e.schema_version
                ))
            })?);
            rows.payloads.push(&e.payload);
            rows.occurred.push(e.occurred_at);
            rows.recorded.push(e.recorded_at);
            rows.correlation.push(&e.metadata.correlation_id);
            rows.causation.push(&e.metadata.causation_id);
            rows.actors.push(&e.metadata.actor);
        }
        Ok(rows)
    }
}

/// The import inside its transaction, after the append lock: the checks against the store,
/// the insert, the sequence moved past the imported head and the announcement (delivered at
/// commit).
async fn import_on(
    tx: &mut Transaction<'_, Postgres>,
    events: &[RecordedEvent],
    rows: &ImportRows<'_>,
) -> Result<(), StoreError> {
    let streams = transfer::streams_of(events);
    let ids = transfer::event_ids_of(events);
    let row = sqlx::query(
        "SELECT (SELECT position FROM events ORDER BY position DESC LIMIT 1),
                (SELECT recorded_at FROM events ORDER BY position DESC LIMIT 1),
                ARRAY(SELECT coalesce((SELECT stream_version FROM events
                                       WHERE events.stream_id = s.stream_id
                                       ORDER BY stream_version DESC LIMIT 1), 0)
                      FROM unnest($1::text[]) WITH ORDINALITY AS s(stream_id, ord)
                      ORDER BY ord),
                ARRAY(SELECT event_id FROM events WHERE event_id = ANY($2))",
    )
    .bind(&streams)
    .bind(&ids)
    .fetch_one(&mut **tx)
    .await?;
    let head: Option<i64> = row.try_get(0)?;
    let versions: Vec<i64> = row.try_get(2)?;
    if versions.len() != streams.len() {
        return Err(StoreError::Corrupt(format!(
            "the version lookup returned {} versions for {} streams",
            versions.len(),
            streams.len()
        )));
    }
    let existing: Vec<Uuid> = row.try_get(3)?;
    let state = LogState {
        head: head.map_or(0, to_u64),
        last_recorded_at: row.try_get(1)?,
        versions: streams
            .iter()
            .zip(versions)
            .map(|(s, v)| ((*s).to_owned(), to_u64(v)))
            .collect(),
        existing_event_ids: existing.into_iter().collect(),
    };
    transfer::check_against(events, &state)?;

    let inserted = sqlx::query(
        "INSERT INTO events (position, stream_id, stream_version, event_id, event_type, schema_version, payload,
                             occurred_at, recorded_at, correlation_id, causation_id, actor)
         OVERRIDING SYSTEM VALUE
         SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::uuid[], $5::text[], $6::int[],
                              $7::bytea[], $8::timestamptz[], $9::timestamptz[], $10::text[], $11::text[], $12::text[])",
    )
    .bind(&rows.positions)
    .bind(&rows.stream_ids)
    .bind(&rows.versions)
    .bind(&rows.event_ids)
    .bind(&rows.types)
    .bind(&rows.schema_versions)
    .bind(&rows.payloads)
    .bind(&rows.occurred)
    .bind(&rows.recorded)
    .bind(&rows.correlation)
    .bind(&rows.causation)
    .bind(&rows.actors)
    .execute(&mut **tx)
    .await
    .map_err(transfer::refused_by_constraint)?;
    if inserted.rows_affected() != events.len() as u64 {
        return Err(StoreError::Corrupt(format!(
            "the import inserted {} rows for {} events",
            inserted.rows_affected(),
            events.len()
        )));
    }

    // The sequence is not transactional: moved here, it stays moved even if the commit fails,
    // which only leaves a hole. `greatest` keeps it from going back below positions already
    // drawn (and rolled back) above the imported head.
    let head = rows.positions.last().copied().unwrap_or(0);
    sqlx::query(
        "SELECT setval(seq, greatest($1, coalesce(pg_sequence_last_value(seq), 0))), pg_notify($2, $1::text)
         FROM (SELECT pg_get_serial_sequence('events', 'position')::regclass AS seq) AS s",
    )
    .bind(head)
    .bind(NOTIFY_CHANNEL)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// PostgreSQL refused an idempotency result that `check_records` let through (`jsonb` is
/// stricter than JSON: no `\u0000` in strings): the caller's data, not a failure of the store.
fn refused_json(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.code().is_some_and(|c| c.starts_with("22")) => {
            StoreError::Invalid(format!("PostgreSQL refused an idempotency result: {}", db.message()))
        }
        _ => StoreError::Database(e),
    }
}

/// Database integers are never negative here (identities and versions start at 1).
fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// A read bound: past `i64::MAX` nothing is stored anyway, so it clamps (as in SQLite).
fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A value to store: one that does not fit is an error.
fn to_i64(v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| too_big("version or position"))
}

fn too_big(what: &str) -> StoreError {
    StoreError::Corrupt(format!("{what} does not fit the database's 64-bit integer"))
}
