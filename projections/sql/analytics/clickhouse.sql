-- sales_analytics facts in ClickHouse. `{prefix}` is `sales_analytics_v{N}_`.
--
-- ClickHouse has no transactions, so a batch may be inserted again after a crash (the checkpoint
-- in the control database is written after the insert). Every table is a ReplacingMergeTree whose
-- sorting key is the fact's natural key, and a replayed insert writes the very same row again:
-- merges keep one of them, and every query is written to count each fact once whatever the
-- unmerged copies (see clickhouse_sink.rs; no `FINAL`, which is slow on old servers). Partitions are derived from the fact's own time, so copies of a row always
-- land in the same partition (ReplacingMergeTree deduplicates within a partition only).
--
-- Only SQL that Debian's old 18.16 server and current releases both accept: the
-- `ReplacingMergeTree(ver) PARTITION BY ... ORDER BY ...` form, plain Int64/UInt64/String/DateTime
-- columns (no LowCardinality, no DateTime64, no Nullable). Ids are the canonical UUID text.
-- Times are kept twice: `*_us` (Int64 microseconds since the epoch, UTC) is what the queries
-- use, so that ClickHouse and SQLite answer the same to the microsecond; the DateTime beside it
-- is for partitioning and for people reading the table.

-- One row per line of a placed order. Key: (order_id, line_no); line_no counts from 1.
CREATE TABLE IF NOT EXISTS {prefix}order_lines (
    order_id         String,
    line_no          UInt32,
    product_id       String,
    sku              String,
    name             String,
    quantity         Int64,
    unit_price_minor Int64,
    amount_minor     Int64,
    currency         String,
    placed_at        DateTime,
    placed_at_us     Int64,
    position         UInt64,
    event_id         String
) ENGINE = ReplacingMergeTree(position)
PARTITION BY toYYYYMM(placed_at)
ORDER BY (order_id, line_no);

-- One row per order per status it reached: placed, confirmed, shipped, delivered, cancelled.
-- Key: (order_id, status). total_minor and currency are the order's, as placed.
CREATE TABLE IF NOT EXISTS {prefix}order_status (
    order_id    String,
    status      String,
    at          DateTime,
    at_us       Int64,
    position    UInt64,
    total_minor Int64,
    currency    String,
    event_id    String
) ENGINE = ReplacingMergeTree(position)
PARTITION BY toYYYYMM(at)
ORDER BY (order_id, status);
