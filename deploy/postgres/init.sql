-- orderflow's databases and roles on the one PostgreSQL server of compose.yaml.
--
-- Run once by the postgres image's entrypoint, as the superuser, when the data volume is first
-- created (a later change here needs a fresh volume or the same statements run by hand).
-- Passwords come from the container's environment (psql's \getenv, PostgreSQL 15 or later), so
-- no secret is written in this file.
--
-- Database per service, enforced by roles (docs/design.md, "Ownership"):
--   write_side   owns `orderflow`, the event store; nobody else can connect to it
--   projections  owns `orderflow_read`, the order dashboard and the projections' control tables
--   reader       read-api: may connect to `orderflow_read` and SELECT, nothing else
-- A rebuild (`orderflow projections rebuild`) reads the event store through the event-store API
-- with the event store's URL: an operator's action, not a standing grant.

\set ON_ERROR_STOP on

\getenv write_side_password ORDERFLOW_WRITE_DB_PASSWORD
\getenv projections_password ORDERFLOW_PROJECTIONS_DB_PASSWORD
\getenv reader_password ORDERFLOW_READER_DB_PASSWORD

CREATE ROLE write_side LOGIN PASSWORD :'write_side_password';
CREATE ROLE projections LOGIN PASSWORD :'projections_password';
CREATE ROLE reader LOGIN PASSWORD :'reader_password';

-- Defence in depth: even a table that reader could write by mistake is refused.
ALTER ROLE reader SET default_transaction_read_only = on;

-- The owner of a database owns its `public` schema too (PostgreSQL 15 or later), so each
-- service can create and migrate its own tables and no other role can create any there.
CREATE DATABASE orderflow OWNER write_side;
CREATE DATABASE orderflow_read OWNER projections;

REVOKE ALL ON DATABASE orderflow FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE orderflow TO write_side;

REVOKE ALL ON DATABASE orderflow_read FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE orderflow_read TO projections;
GRANT CONNECT ON DATABASE orderflow_read TO reader;

\connect orderflow_read

GRANT USAGE ON SCHEMA public TO reader;
-- Every table and view the projections create (now or by a later migration or rebuild) is
-- readable by reader, and only readable.
ALTER DEFAULT PRIVILEGES FOR ROLE projections IN SCHEMA public GRANT SELECT ON TABLES TO reader;
