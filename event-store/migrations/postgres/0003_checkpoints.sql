-- Named positions in the global log kept by its tailing readers inside the store's database,
-- e.g. the Kafka relay's "last position the broker acknowledged". A checkpoint only moves
-- forward (see save_checkpoint).
CREATE TABLE checkpoints (
    name       text        PRIMARY KEY,
    position   bigint      NOT NULL CHECK (position >= 0),
    updated_at timestamptz NOT NULL
);
