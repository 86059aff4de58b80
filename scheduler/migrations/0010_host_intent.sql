-- Hosts: two small state machines (common/states.py). `state` stays the liveness ('ready',
-- 'lost'); `intent` is what an operator wants of the host ('open', 'cordoned', 'draining') and
-- replaces the `cordoned` and `draining` flags; `state_at` and `state_reason` say when and why
-- either last changed (scheduler/host_states.py), NULL and '' for changes before this migration.
ALTER TABLE hosts ADD COLUMN intent TEXT NOT NULL DEFAULT 'open';
ALTER TABLE hosts ADD COLUMN state_at REAL;
ALTER TABLE hosts ADD COLUMN state_reason TEXT NOT NULL DEFAULT '';
-- A draining host was always cordoned as well; a row that was not cordoned took new notebooks,
-- so it stays open whatever its drain flag said.
UPDATE hosts SET intent = CASE
    WHEN cordoned = 0 THEN 'open'
    WHEN draining = 1 THEN 'draining'
    ELSE 'cordoned'
END;
ALTER TABLE hosts DROP COLUMN cordoned;
ALTER TABLE hosts DROP COLUMN draining;
-- Placement's host filter (scheduler/placement.py) is `state = 'ready' AND intent = 'open'`
-- and then free GPUs: one index serves the equalities and the range and order on gpus_free.
DROP INDEX hosts_gpus_free;
CREATE INDEX hosts_placeable ON hosts(state, intent, gpus_free);
