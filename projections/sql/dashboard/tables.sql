-- The order dashboard's tables for one version. `{prefix}` is `order_dashboard_v{N}_`, generated
-- from the version number (never from input). One dialect for PostgreSQL and SQLite: BIGINT and
-- TEXT only, times in microseconds since the Unix epoch (UTC), ids as lower-case uuid text.
--
-- Tables and their primary keys only: the secondary indexes are in indexes.sql, which `prepare`
-- runs right after this file, and a bulk load (a rebuild's build phase) only after loading the
-- rows (building an index once from sorted rows is much cheaper than maintaining it row by row).

-- One row, upserted first by every apply: a write lock that serializes the appliers of this
-- version (a PostgreSQL row lock; SQLite's write lock), so that each batch reads the rows it
-- folds after the previous batch committed and no update is lost between workers.
CREATE TABLE IF NOT EXISTS {prefix}writer (
    id BIGINT PRIMARY KEY
);

-- The current state of every order. customer_name/customer_email follow the customer's stream
-- (see dashboard.rs); snapshot_name/snapshot_email are what the order captured when placed.
CREATE TABLE IF NOT EXISTS {prefix}orders (
    order_id        TEXT   PRIMARY KEY,
    customer_id     TEXT   NOT NULL,
    customer_name   TEXT   NOT NULL,
    customer_email  TEXT   NOT NULL,
    snapshot_name   TEXT   NOT NULL,
    snapshot_email  TEXT   NOT NULL,
    status          TEXT   NOT NULL,
    item_count      BIGINT NOT NULL,
    total_minor     BIGINT NOT NULL,
    currency        TEXT   NOT NULL,
    placed_at_us    BIGINT NOT NULL,
    confirmed_at_us BIGINT,
    shipped_at_us   BIGINT,
    delivered_at_us BIGINT,
    cancelled_at_us BIGINT,
    cancel_reason   TEXT,
    carrier         TEXT,
    tracking        TEXT,
    -- The last applied event of the order's stream: the guard against applying one twice.
    stream_version  BIGINT NOT NULL,
    last_position   BIGINT NOT NULL,
    updated_at_us   BIGINT NOT NULL,
    -- The cancellation's stable reason code (requested, out_of_stock, payment_declined,
    -- payment_unavailable, timed_out, abandoned); NULL when not cancelled or recorded without
    -- one. Last: a version made before it got it by `ALTER TABLE ... ADD COLUMN` (dashboard.rs).
    cancel_reason_code TEXT
);

-- The projection's own copy of every customer it has seen (event-driven data sync).
-- stream_version is 0 while the customer is only known from order snapshots; last_position is
-- then the position of the snapshot's order.placed event (the latest one wins), and otherwise
-- the position of the last applied customer event.
CREATE TABLE IF NOT EXISTS {prefix}customers (
    customer_id         TEXT   PRIMARY KEY,
    name                TEXT   NOT NULL,
    email               TEXT   NOT NULL,
    stream_version      BIGINT NOT NULL,
    last_position       BIGINT NOT NULL,
    -- Every placed order, cancelled or not.
    order_count         BIGINT NOT NULL,
    -- The placed order with the highest global position.
    last_order_id       TEXT,
    last_order_at_us    BIGINT,
    last_order_position BIGINT
);

-- Per customer and currency: placed orders, and the sum of the totals of those not cancelled.
CREATE TABLE IF NOT EXISTS {prefix}customer_totals (
    customer_id          TEXT   NOT NULL,
    currency             TEXT   NOT NULL,
    order_count          BIGINT NOT NULL,
    lifetime_value_minor BIGINT NOT NULL,
    PRIMARY KEY (customer_id, currency)
);

-- Every version of every order, for "as of" reads: version N is valid from its event's position
-- and recorded time up to (excluding) those of version N + 1; the latest has NULL valid_to.
CREATE TABLE IF NOT EXISTS {prefix}order_history (
    order_id            TEXT   NOT NULL,
    stream_version      BIGINT NOT NULL,
    valid_from_position BIGINT NOT NULL,
    valid_from_us       BIGINT NOT NULL,
    valid_to_position   BIGINT,
    valid_to_us         BIGINT,
    customer_id         TEXT   NOT NULL,
    snapshot_name       TEXT   NOT NULL,
    snapshot_email      TEXT   NOT NULL,
    status              TEXT   NOT NULL,
    item_count          BIGINT NOT NULL,
    total_minor         BIGINT NOT NULL,
    currency            TEXT   NOT NULL,
    placed_at_us        BIGINT NOT NULL,
    confirmed_at_us     BIGINT,
    shipped_at_us       BIGINT,
    delivered_at_us     BIGINT,
    cancelled_at_us     BIGINT,
    cancel_reason       TEXT,
    carrier             TEXT,
    tracking            TEXT,
    cancel_reason_code  TEXT,
    PRIMARY KEY (order_id, stream_version)
);

-- Every version of every customer's name and email (customer events only, never snapshots).
CREATE TABLE IF NOT EXISTS {prefix}customer_history (
    customer_id         TEXT   NOT NULL,
    stream_version      BIGINT NOT NULL,
    valid_from_position BIGINT NOT NULL,
    valid_from_us       BIGINT NOT NULL,
    valid_to_position   BIGINT,
    valid_to_us         BIGINT,
    name                TEXT   NOT NULL,
    email               TEXT   NOT NULL,
    PRIMARY KEY (customer_id, stream_version)
);

-- The current state of every payment (payments' own streams, one attempt to pay for one order
-- each), keyed by payment id whether or not its order has been seen: an order's payment is
-- joined to it when read (query.rs), so payment and order events converge in any interleaving.
-- Amounts are integer minor units of `currency` (the authorization's; NULL until authorized).
CREATE TABLE IF NOT EXISTS {prefix}payments (
    payment_id       TEXT   PRIMARY KEY,
    order_id         TEXT   NOT NULL,
    -- authorized | captured (possibly partly refunded) | refunded (all of the capture) |
    -- declined | voided
    status           TEXT   NOT NULL,
    currency         TEXT,
    authorized_minor BIGINT NOT NULL,
    captured_minor   BIGINT NOT NULL,
    refunded_minor   BIGINT NOT NULL,
    -- Why the payment was declined or voided (the latest of those events); NULL otherwise.
    reason           TEXT,
    -- The position of the payment's first event in the payments log: of an order's payments,
    -- the one started latest is shown (see query.rs).
    started_position BIGINT NOT NULL,
    -- The last applied event of the payment's stream: the guard against applying one twice.
    stream_version   BIGINT NOT NULL,
    last_position    BIGINT NOT NULL,
    updated_at_us    BIGINT NOT NULL
);

-- Every version of every payment, for "as of" reads (valid_from/valid_to as order_history,
-- with positions and times of the payments log).
CREATE TABLE IF NOT EXISTS {prefix}payment_history (
    payment_id          TEXT   NOT NULL,
    stream_version      BIGINT NOT NULL,
    valid_from_position BIGINT NOT NULL,
    valid_from_us       BIGINT NOT NULL,
    valid_to_position   BIGINT,
    valid_to_us         BIGINT,
    order_id            TEXT   NOT NULL,
    status              TEXT   NOT NULL,
    currency            TEXT,
    authorized_minor    BIGINT NOT NULL,
    captured_minor      BIGINT NOT NULL,
    refunded_minor      BIGINT NOT NULL,
    reason              TEXT,
    started_position    BIGINT NOT NULL,
    PRIMARY KEY (payment_id, stream_version)
);

-- The current state of every order's place-order saga (the orders service's `saga-{order id}`
-- streams, ADR 0010), keyed by the order's id whether or not the order has been seen: it is
-- joined to the order when read (query.rs), so saga and order events (two topics) converge in
-- any interleaving. `state` is derived from the other columns after every event (see
-- `SagaState` for the mapping); flags are 0 or 1.
CREATE TABLE IF NOT EXISTS {prefix}sagas (
    order_id        TEXT   PRIMARY KEY,
    -- reserving | authorizing | confirming | awaiting_shipment | compensating | parked | completed
    state           TEXT   NOT NULL,
    -- The lines saga.started listed (0 when its start was not applied to this version), and the
    -- saga.stock_reserved events applied.
    line_count      BIGINT NOT NULL,
    lines_reserved  BIGINT NOT NULL,
    authorized      BIGINT NOT NULL,
    confirmed       BIGINT NOT NULL,
    failed          BIGINT NOT NULL,
    parked          BIGINT NOT NULL,
    completed       BIGINT NOT NULL,
    -- The last applied event of the saga's stream: the guard against applying one twice.
    stream_version  BIGINT NOT NULL,
    last_position   BIGINT NOT NULL,
    updated_at_us   BIGINT NOT NULL
);

-- Every version of every saga's state, for "as of" reads (valid_from/valid_to as order_history;
-- the saga is in the orders log, so its positions are the orders log's).
CREATE TABLE IF NOT EXISTS {prefix}saga_history (
    order_id            TEXT   NOT NULL,
    stream_version      BIGINT NOT NULL,
    valid_from_position BIGINT NOT NULL,
    valid_from_us       BIGINT NOT NULL,
    valid_to_position   BIGINT,
    valid_to_us         BIGINT,
    state               TEXT   NOT NULL,
    PRIMARY KEY (order_id, stream_version)
);
