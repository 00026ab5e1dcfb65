-- Named positions in the global log kept by its tailing readers (e.g. the relay). Times in UTC
-- microseconds.
CREATE TABLE checkpoints (
    name       TEXT    PRIMARY KEY,
    position   INTEGER NOT NULL CHECK (position >= 0),
    updated_at INTEGER NOT NULL
);
