-- Aggregate snapshots: a cache beside the events, never required. Times in UTC microseconds.
CREATE TABLE snapshots (
    stream_id     TEXT    NOT NULL,
    version       INTEGER NOT NULL,
    position      INTEGER NOT NULL,
    recorded_at   INTEGER NOT NULL,
    state_type    TEXT    NOT NULL,
    state_version INTEGER NOT NULL,
    state         BLOB    NOT NULL,
    PRIMARY KEY (stream_id, version)
);
