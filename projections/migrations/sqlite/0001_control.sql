-- The projections' control tables: which version of each projection is live, how far each
-- version has read each source partition, and the messages it could not apply.
-- Times are microseconds since the Unix epoch (UTC): one portable type for PostgreSQL and SQLite.

-- One row per (projection, version). state: 'building' (a rebuild fills it), 'live' (reads go
-- here; at most one per name), 'retired' (replaced; its tables are dropped), 'historical' (built
-- with --until, kept for reads of that past point).
CREATE TABLE projection_versions (
    name              TEXT    NOT NULL,
    version           BIGINT  NOT NULL,
    state             TEXT    NOT NULL,
    until_position    BIGINT,
    until_time_us     BIGINT,
    target_position   BIGINT  NOT NULL DEFAULT 0,
    events_applied    BIGINT  NOT NULL DEFAULT 0,
    events_per_second DOUBLE PRECISION NOT NULL DEFAULT 0,
    started_at_us     BIGINT  NOT NULL,
    switched_at_us    BIGINT,
    PRIMARY KEY (name, version)
);

CREATE UNIQUE INDEX projection_versions_one_live ON projection_versions (name) WHERE state = 'live';

-- Written in the same transaction as the rows the events produced (see projection.rs).
-- `drained` and `high_watermark` are reported by Kafka workers between batches: whether the
-- worker found the partition empty at its last poll, and the partition's end as the last fetch
-- saw it (for lag). A partition a worker was assigned but never got a record from has a row
-- with last_offset -1.
CREATE TABLE projection_checkpoints (
    name           TEXT   NOT NULL,
    version        BIGINT NOT NULL,
    source         TEXT   NOT NULL,
    partition_no   BIGINT NOT NULL,
    last_offset    BIGINT NOT NULL,
    last_position  BIGINT NOT NULL,
    last_recorded_at_us BIGINT,
    drained        BIGINT NOT NULL DEFAULT 0,
    high_watermark BIGINT,
    updated_at_us  BIGINT NOT NULL,
    PRIMARY KEY (name, version, source, partition_no)
);

CREATE TABLE projection_dead_letters (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    name           TEXT   NOT NULL,
    version        BIGINT NOT NULL,
    source         TEXT   NOT NULL,
    partition_no   BIGINT NOT NULL,
    message_offset BIGINT NOT NULL,
    position       BIGINT NOT NULL,
    event_type     TEXT   NOT NULL,
    reason         TEXT   NOT NULL,
    payload        BLOB  NOT NULL,
    recorded_at_us BIGINT NOT NULL
);

CREATE INDEX projection_dead_letters_by_name ON projection_dead_letters (name, version);
