-- sales_analytics facts in the embedded SQL read database (SQLite; the statements are also valid
-- PostgreSQL). `{prefix}` is `sales_analytics_v{N}_`.
--
-- The same facts and keys as clickhouse.sql. Rows are inserted with `ON CONFLICT DO NOTHING` in
-- the transaction that stores the batch's checkpoints, so a replayed event changes nothing.
-- Times are Int64 microseconds since the epoch (UTC); ids are the canonical UUID text.

-- One row per line of a placed order; line_no counts from 1.
CREATE TABLE IF NOT EXISTS {prefix}order_lines (
    order_id         TEXT   NOT NULL,
    line_no          BIGINT NOT NULL,
    product_id       TEXT   NOT NULL,
    sku              TEXT   NOT NULL,
    name             TEXT   NOT NULL,
    quantity         BIGINT NOT NULL,
    unit_price_minor BIGINT NOT NULL,
    amount_minor     BIGINT NOT NULL,
    currency         TEXT   NOT NULL,
    placed_at_us     BIGINT NOT NULL,
    position         BIGINT NOT NULL,
    event_id         TEXT   NOT NULL,
    PRIMARY KEY (order_id, line_no)
);

CREATE INDEX IF NOT EXISTS {prefix}order_lines_by_time ON {prefix}order_lines (placed_at_us);

-- One row per order per status it reached: placed, confirmed, shipped, delivered, cancelled.
-- total_minor and currency are the order's, as placed.
CREATE TABLE IF NOT EXISTS {prefix}order_status (
    order_id    TEXT   NOT NULL,
    status      TEXT   NOT NULL,
    at_us       BIGINT NOT NULL,
    position    BIGINT NOT NULL,
    total_minor BIGINT NOT NULL,
    currency    TEXT   NOT NULL,
    event_id    TEXT   NOT NULL,
    PRIMARY KEY (order_id, status)
);

CREATE INDEX IF NOT EXISTS {prefix}order_status_by_time ON {prefix}order_status (status, at_us);

-- One row per cancellation of an order, with its reason code (empty when recorded before codes
-- existed); an order's first cancellation (lowest position) is the one counted.
CREATE TABLE IF NOT EXISTS {prefix}cancellations (
    order_id    TEXT   NOT NULL,
    reason_code TEXT   NOT NULL,
    at_us       BIGINT NOT NULL,
    position    BIGINT NOT NULL,
    event_id    TEXT   NOT NULL,
    PRIMARY KEY (order_id, position)
);

-- One row per event of a payment's stream: kind is authorized, captured, refunded, declined or
-- voided; seq the event's stream version.
CREATE TABLE IF NOT EXISTS {prefix}payments (
    payment_id   TEXT   NOT NULL,
    seq          BIGINT NOT NULL,
    order_id     TEXT   NOT NULL,
    kind         TEXT   NOT NULL,
    amount_minor BIGINT NOT NULL,
    currency     TEXT   NOT NULL,
    at_us        BIGINT NOT NULL,
    position     BIGINT NOT NULL,
    event_id     TEXT   NOT NULL,
    PRIMARY KEY (payment_id, seq)
);

CREATE INDEX IF NOT EXISTS {prefix}payments_by_order ON {prefix}payments (order_id);
