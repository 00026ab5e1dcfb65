-- PostgreSQL only, part of a bulk load (a rebuild's build phase, see dashboard/bulk.rs): inside
-- the load's transaction, the empty tables lose their primary keys while COPY fills them, and
-- postgres_add_keys.sql puts them back before the transaction commits. Nobody else sees the
-- tables meanwhile (the version is `building`, and the transaction is not committed). The keys
-- are the ones tables.sql declares; the names are PostgreSQL's for them (`{table}_pkey`), so the
-- finished tables are the ones `prepare` makes (the bulk test compares their definitions).
ALTER TABLE {prefix}orders DROP CONSTRAINT {prefix}orders_pkey;
ALTER TABLE {prefix}customers DROP CONSTRAINT {prefix}customers_pkey;
ALTER TABLE {prefix}customer_totals DROP CONSTRAINT {prefix}customer_totals_pkey;
ALTER TABLE {prefix}order_history DROP CONSTRAINT {prefix}order_history_pkey;
ALTER TABLE {prefix}customer_history DROP CONSTRAINT {prefix}customer_history_pkey;
ALTER TABLE {prefix}payments DROP CONSTRAINT {prefix}payments_pkey;
ALTER TABLE {prefix}payment_history DROP CONSTRAINT {prefix}payment_history_pkey;
ALTER TABLE {prefix}sagas DROP CONSTRAINT {prefix}sagas_pkey;
ALTER TABLE {prefix}saga_history DROP CONSTRAINT {prefix}saga_history_pkey;
