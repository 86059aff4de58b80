-- Issue 4: the queue, quotas, flavors, the usage ledger, host states, scoped tokens.

-- Per-project quota overrides; a NULL column means the scheduler config's default.
CREATE TABLE quotas (
    project             TEXT PRIMARY KEY REFERENCES projects(name),
    gpus                INTEGER,
    cpus                INTEGER,
    notebooks           INTEGER,
    gpus_per_notebook   INTEGER,
    cpus_per_notebook   INTEGER
);

-- When the project last had a notebook placed: the queue serves the least recently served first.
ALTER TABLE projects ADD COLUMN last_placed_at REAL;

ALTER TABLE notebooks ADD COLUMN flavor TEXT;
-- The GPU model a flavor asks for ('' = any).
ALTER TABLE notebooks ADD COLUMN gpu_model TEXT NOT NULL DEFAULT '';
ALTER TABLE notebooks ADD COLUMN disk_gb INTEGER NOT NULL DEFAULT 0;
ALTER TABLE notebooks ADD COLUMN restart_on_timeout INTEGER NOT NULL DEFAULT 0;
-- Set when the scheduler stopped the notebook (runtime limit, drain, lost host) and will start
-- it again once it has settled; cleared by any user start or stop.
ALTER TABLE notebooks ADD COLUMN restart_pending INTEGER NOT NULL DEFAULT 0;
-- When it entered QUEUED; the queue is ordered by each project's turn, then by this.
ALTER TABLE notebooks ADD COLUMN queued_at REAL;
CREATE INDEX notebooks_state ON notebooks(state, queued_at);

ALTER TABLE hosts ADD COLUMN flavor TEXT NOT NULL DEFAULT '';
ALTER TABLE hosts ADD COLUMN labels TEXT NOT NULL DEFAULT '{}';
ALTER TABLE hosts ADD COLUMN cordoned INTEGER NOT NULL DEFAULT 0;
ALTER TABLE hosts ADD COLUMN draining INTEGER NOT NULL DEFAULT 0;
-- Capacity counters, recomputed from gpus/notebooks for every host a transaction touches
-- (scheduler/placement.py refresh_hosts), so placement reads one row per host.
ALTER TABLE hosts ADD COLUMN gpus_total INTEGER NOT NULL DEFAULT 0;
ALTER TABLE hosts ADD COLUMN gpus_free INTEGER NOT NULL DEFAULT 0;
ALTER TABLE hosts ADD COLUMN cpus_used INTEGER NOT NULL DEFAULT 0;
UPDATE hosts SET
    gpus_total = (SELECT COUNT(*) FROM gpus g WHERE g.host_id = hosts.id AND g.present = 1),
    gpus_free = (SELECT COUNT(*) FROM gpus g
                 WHERE g.host_id = hosts.id AND g.notebook_id IS NULL AND g.present = 1),
    cpus_used = COALESCE((SELECT SUM(n.cpu) FROM notebooks n
                          WHERE n.host_id = hosts.id AND n.gpu = 0), 0);
CREATE INDEX hosts_gpus_free ON hosts(state, gpus_free);

ALTER TABLE tokens ADD COLUMN label_selector TEXT NOT NULL DEFAULT '{}';

-- The usage ledger: one row per run (generation), with what it was billed as.
ALTER TABLE usage ADD COLUMN project TEXT;
ALTER TABLE usage ADD COLUMN started_at REAL;
ALTER TABLE usage ADD COLUMN gpu_model TEXT NOT NULL DEFAULT '';
ALTER TABLE usage ADD COLUMN gpus INTEGER NOT NULL DEFAULT 0;
ALTER TABLE usage ADD COLUMN cpus INTEGER NOT NULL DEFAULT 0;
ALTER TABLE usage ADD COLUMN flavor TEXT;
ALTER TABLE usage ADD COLUMN labels TEXT NOT NULL DEFAULT '{}';
CREATE INDEX usage_project ON usage(project, started_at);
