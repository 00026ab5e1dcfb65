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

-- One row per cancellation of an order, with its reason code (requested, out_of_stock,
-- payment_declined, payment_unavailable, timed_out, abandoned; empty when recorded before codes
-- existed). Key: (order_id, position): a replay writes the same row again; an order's first
-- cancellation (lowest position) is the one counted.
CREATE TABLE IF NOT EXISTS {prefix}cancellations (
    order_id    String,
    reason_code String,
    at          DateTime,
    at_us       Int64,
    position    UInt64,
    event_id    String
) ENGINE = ReplacingMergeTree(position)
PARTITION BY toYYYYMM(at)
ORDER BY (order_id, position);

-- One row per event of a payment's stream (the payments service's): kind is authorized,
-- captured, refunded, declined or voided; amount_minor the amount it names (0 for a decline or
-- a void before any authorization). Key: (payment_id, seq), seq the event's stream version. A
-- payment's status is its last event's kind, a refund leaving it captured while less than the
-- captures was refunded (what the payments service's fold says).
CREATE TABLE IF NOT EXISTS {prefix}payments (
    payment_id   String,
    seq          UInt64,
    order_id     String,
    kind         String,
    amount_minor Int64,
    currency     String,
    at           DateTime,
    at_us        Int64,
    position     UInt64,
    event_id     String
) ENGINE = ReplacingMergeTree(position)
PARTITION BY toYYYYMM(at)
ORDER BY (payment_id, seq);
