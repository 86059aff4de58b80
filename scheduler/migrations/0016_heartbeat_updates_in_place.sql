-- Heartbeats rewrite every host's row and every GPU's figures once per tick (scheduler/hosts.py:
-- last_heartbeat, disk space, memory used, utilization), columns no index covers. PostgreSQL
-- then keeps the new version of a row on its page without touching any index (a HOT update),
-- but only when the page has room: with full pages, measured with scripts/bench-scheduler,
-- every such update wrote the row to another page and an entry into each index, about twice
-- the work. Half-full pages leave room for it. Rows written before this migration move as
-- they are updated. SQLite updates rows in place and needs nothing.
-- dialect: postgresql
ALTER TABLE gpus SET (fillfactor = 50);
ALTER TABLE hosts SET (fillfactor = 50);
