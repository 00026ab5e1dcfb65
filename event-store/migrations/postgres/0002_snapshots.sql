-- Aggregate snapshots: a cache beside the events, never required. Several per stream are kept
-- so "state as of" a past point can start from the newest snapshot before it.
CREATE TABLE snapshots (
    stream_id     text        NOT NULL,
    version       bigint      NOT NULL,
    position      bigint      NOT NULL,
    recorded_at   timestamptz NOT NULL,
    state_type    text        NOT NULL,
    state_version integer     NOT NULL,
    state         bytea       NOT NULL,
    PRIMARY KEY (stream_id, version)
);
