-- orderflow's databases and roles on the one PostgreSQL server of compose.yaml.
--
-- Run once by the postgres image's entrypoint, as the superuser, when the data volume is first
-- created (a later change here needs a fresh volume or the same statements run by hand).
-- Passwords come from the container's environment (psql's \getenv, PostgreSQL 15 or later), so
-- no secret is written in this file.
--
-- Database per service, enforced by roles (docs/design.md, "Ownership"): each role owns one
-- database (two for orders) and can connect to no other.
--   customers    owns `orderflow_customers`, the customers service's event store
--   inventory    owns `orderflow_inventory`, the inventory service's event store (products, stock)
--   orders       owns `orderflow_orders`, the orders service's event store, and
--                `orderflow_orders_replica`, its copy of customers and products (from their events)
--   payments     owns `orderflow_payments`, the payments service's event store
--   projections  owns `orderflow_read`, the order dashboard and the projections' control tables
--   reader       read-api: may connect to `orderflow_read` and SELECT, nothing else
-- A rebuild (`orderflow projections rebuild`) reads the event stores through the event-store API
-- with each service's URL (`--event-store-url` with `{service}`): an operator's action, not a
-- standing grant.

\set ON_ERROR_STOP on

\getenv customers_password ORDERFLOW_CUSTOMERS_DB_PASSWORD
\getenv inventory_password ORDERFLOW_INVENTORY_DB_PASSWORD
\getenv orders_password ORDERFLOW_ORDERS_DB_PASSWORD
\getenv payments_password ORDERFLOW_PAYMENTS_DB_PASSWORD
\getenv projections_password ORDERFLOW_PROJECTIONS_DB_PASSWORD
\getenv reader_password ORDERFLOW_READER_DB_PASSWORD

CREATE ROLE customers LOGIN PASSWORD :'customers_password';
CREATE ROLE inventory LOGIN PASSWORD :'inventory_password';
CREATE ROLE orders LOGIN PASSWORD :'orders_password';
CREATE ROLE payments LOGIN PASSWORD :'payments_password';
CREATE ROLE projections LOGIN PASSWORD :'projections_password';
CREATE ROLE reader LOGIN PASSWORD :'reader_password';

-- Defence in depth: even a table that reader could write by mistake is refused.
ALTER ROLE reader SET default_transaction_read_only = on;

-- The owner of a database owns its `public` schema too (PostgreSQL 15 or later), so each
-- service can create and migrate its own tables and no other role can create any there.
CREATE DATABASE orderflow_customers OWNER customers;
CREATE DATABASE orderflow_inventory OWNER inventory;
CREATE DATABASE orderflow_orders OWNER orders;
CREATE DATABASE orderflow_orders_replica OWNER orders;
CREATE DATABASE orderflow_payments OWNER payments;
CREATE DATABASE orderflow_read OWNER projections;

-- PUBLIC may connect to a new database: taken away, so that only its owner can.
REVOKE ALL ON DATABASE orderflow_customers FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE orderflow_customers TO customers;

REVOKE ALL ON DATABASE orderflow_inventory FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE orderflow_inventory TO inventory;

REVOKE ALL ON DATABASE orderflow_orders FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE orderflow_orders TO orders;

REVOKE ALL ON DATABASE orderflow_orders_replica FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE orderflow_orders_replica TO orders;

REVOKE ALL ON DATABASE orderflow_payments FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE orderflow_payments TO payments;

REVOKE ALL ON DATABASE orderflow_read FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE orderflow_read TO projections;
GRANT CONNECT ON DATABASE orderflow_read TO reader;

\connect orderflow_read

GRANT USAGE ON SCHEMA public TO reader;
-- Every table and view the projections create (now or by a later migration or rebuild) is
-- readable by reader, and only readable.
ALTER DEFAULT PRIVILEGES FOR ROLE projections IN SCHEMA public GRANT SELECT ON TABLES TO reader;
