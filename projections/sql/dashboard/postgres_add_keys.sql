-- PostgreSQL only: the primary keys postgres_drop_keys.sql took off for a bulk load, built once
-- from the loaded rows (a duplicate would fail the load here rather than go unnoticed).
ALTER TABLE {prefix}orders ADD CONSTRAINT {prefix}orders_pkey PRIMARY KEY (order_id);
ALTER TABLE {prefix}customers ADD CONSTRAINT {prefix}customers_pkey PRIMARY KEY (customer_id);
ALTER TABLE {prefix}customer_totals ADD CONSTRAINT {prefix}customer_totals_pkey PRIMARY KEY (customer_id, currency);
ALTER TABLE {prefix}order_history ADD CONSTRAINT {prefix}order_history_pkey PRIMARY KEY (order_id, stream_version);
ALTER TABLE {prefix}customer_history ADD CONSTRAINT {prefix}customer_history_pkey PRIMARY KEY (customer_id, stream_version);
ALTER TABLE {prefix}payments ADD CONSTRAINT {prefix}payments_pkey PRIMARY KEY (payment_id);
ALTER TABLE {prefix}payment_history ADD CONSTRAINT {prefix}payment_history_pkey PRIMARY KEY (payment_id, stream_version);
ALTER TABLE {prefix}sagas ADD CONSTRAINT {prefix}sagas_pkey PRIMARY KEY (order_id);
ALTER TABLE {prefix}saga_history ADD CONSTRAINT {prefix}saga_history_pkey PRIMARY KEY (order_id, stream_version);
