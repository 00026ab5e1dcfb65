-- The order dashboard's secondary indexes for one version (see tables.sql). `prepare` runs this
-- right after tables.sql; a bulk load runs it after loading the rows.

-- The read API's filters and keyset pagination on (sort key, order_id).
CREATE INDEX IF NOT EXISTS {prefix}orders_by_placed ON {prefix}orders (placed_at_us, order_id);
CREATE INDEX IF NOT EXISTS {prefix}orders_by_status ON {prefix}orders (status, placed_at_us, order_id);
CREATE INDEX IF NOT EXISTS {prefix}orders_by_customer ON {prefix}orders (customer_id, placed_at_us, order_id);
CREATE INDEX IF NOT EXISTS {prefix}orders_by_total ON {prefix}orders (total_minor, order_id);
-- The reason_code filter: cancelled orders only (partial), so the other orders cost it nothing.
CREATE INDEX IF NOT EXISTS {prefix}orders_by_reason_code ON {prefix}orders (cancel_reason_code, placed_at_us, order_id) WHERE cancel_reason_code IS NOT NULL;

-- "As of" lists.
CREATE INDEX IF NOT EXISTS {prefix}order_history_by_placed ON {prefix}order_history (placed_at_us, order_id);
-- "As of a position" of the orders log: the commit time of the newest order or saga version at
-- or below it, which the other services' versions are taken at.
CREATE INDEX IF NOT EXISTS {prefix}order_history_by_position ON {prefix}order_history (valid_from_position);
CREATE INDEX IF NOT EXISTS {prefix}saga_history_by_position ON {prefix}saga_history (valid_from_position);

-- An order's payments, joined to its row when read (now and "as of").
CREATE INDEX IF NOT EXISTS {prefix}payments_by_order ON {prefix}payments (order_id);
CREATE INDEX IF NOT EXISTS {prefix}payment_history_by_order ON {prefix}payment_history (order_id, valid_from_us);
