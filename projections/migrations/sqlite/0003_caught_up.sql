-- When a rebuild's version had caught up with the store after its switch (see
-- `ReadDb::hand_over_to_kafka`): from then on Kafka workers may turn its store checkpoint into
-- a floor, even when they start after the rebuild ended.
ALTER TABLE projection_versions ADD COLUMN caught_up_at_us BIGINT;
