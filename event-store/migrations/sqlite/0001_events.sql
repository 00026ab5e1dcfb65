-- The event store (SQLite, the embedded default). Owned by the write side.
--
-- Gap safety: SQLite runs one write transaction at a time (the store writes with
-- BEGIN IMMEDIATE), so positions become visible in the order they are assigned.
-- Times are integer microseconds since the Unix epoch, UTC.

CREATE TABLE events (
    position       INTEGER PRIMARY KEY AUTOINCREMENT,
    stream_id      TEXT    NOT NULL,
    stream_version INTEGER NOT NULL CHECK (stream_version > 0),
    event_id       BLOB    NOT NULL UNIQUE,
    event_type     TEXT    NOT NULL,
    schema_version INTEGER NOT NULL,
    payload        BLOB    NOT NULL,
    occurred_at    INTEGER NOT NULL,
    recorded_at    INTEGER NOT NULL,
    correlation_id TEXT    NOT NULL DEFAULT '',
    causation_id   TEXT    NOT NULL DEFAULT '',
    actor          TEXT    NOT NULL DEFAULT '',
    UNIQUE (stream_id, stream_version)
);

CREATE TABLE idempotency_keys (
    key          TEXT    PRIMARY KEY,
    request_hash BLOB    NOT NULL,
    result       TEXT    NOT NULL,
    created_at   INTEGER NOT NULL
);
