-- Multi-tenant hosts: disk figures that heartbeats bring (written in batches with them).

-- The filesystem holding the host's workspaces; placement skips a host whose disk is nearly
-- full (the threshold is scheduler config, so it is applied when placing, not stored).
-- NULL: not reported (an older agent), which never blocks placement.
ALTER TABLE hosts ADD COLUMN disk_free_bytes INTEGER;
ALTER TABLE hosts ADD COLUMN disk_total_bytes INTEGER;
-- Disk the notebook's workspace takes on its host, as last measured there, and when; cleared
-- when the notebook gives its host back.
ALTER TABLE notebooks ADD COLUMN workspace_used_bytes INTEGER;
ALTER TABLE notebooks ADD COLUMN workspace_used_at REAL;
