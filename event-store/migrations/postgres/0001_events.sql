-- The event store (PostgreSQL). Owned by the write side; nobody else writes these tables.
--
-- Gap safety: positions come from an identity column, and every writer takes the advisory lock
-- `orderflow_append` (pg_advisory_xact_lock(8030591472428805231), see postgres.rs) before its
-- insert and holds it until its transaction ends. Positions are therefore assigned in commit
-- order: when a reader sees position p, every transaction that drew a lower position has already
-- committed or rolled back, so a tailing reader can move past p without ever missing an event.
-- Holes left by rolled-back transactions are never filled. Any code that inserts into `events`
-- without that lock breaks this guarantee.

CREATE TABLE events (
    position       bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    stream_id      text        NOT NULL,
    stream_version bigint      NOT NULL CHECK (stream_version > 0),
    event_id       uuid        NOT NULL,
    event_type     text        NOT NULL,
    schema_version integer     NOT NULL,
    payload        bytea       NOT NULL,
    occurred_at    timestamptz NOT NULL,
    recorded_at    timestamptz NOT NULL,
    correlation_id text        NOT NULL DEFAULT '',
    causation_id   text        NOT NULL DEFAULT '',
    actor          text        NOT NULL DEFAULT '',
    -- The optimistic-concurrency backstop: two writers can never both add version n.
    CONSTRAINT events_stream_version_key UNIQUE (stream_id, stream_version),
    CONSTRAINT events_event_id_key UNIQUE (event_id)
);

-- A repeated command with the same key appends nothing and gets the first answer back.
CREATE TABLE idempotency_keys (
    key          text        PRIMARY KEY,
    request_hash bytea       NOT NULL,
    result       jsonb       NOT NULL,
    created_at   timestamptz NOT NULL
);
