-- Drops one version of the order dashboard (a rebuilt version replaced it). Indexes go with
-- their tables.
DROP TABLE IF EXISTS {prefix}saga_history;
DROP TABLE IF EXISTS {prefix}sagas;
DROP TABLE IF EXISTS {prefix}payment_history;
DROP TABLE IF EXISTS {prefix}payments;
DROP TABLE IF EXISTS {prefix}customer_history;
DROP TABLE IF EXISTS {prefix}order_history;
DROP TABLE IF EXISTS {prefix}customer_totals;
DROP TABLE IF EXISTS {prefix}customers;
DROP TABLE IF EXISTS {prefix}orders;
DROP TABLE IF EXISTS {prefix}writer;
