-- When a Kafka worker last found the partition empty. A "drained" report counts only while it
-- is fresh (see `ReadDb::progress`): a worker that dies keeps no claim on its partitions.
ALTER TABLE projection_checkpoints ADD COLUMN drained_at_us BIGINT;
