-- Issue 12: the restart intent becomes a desired state, and the editor URL agents reported with
-- RUNNING (stored, never read) goes.
--
-- `desired` gains 'restarted': stop this run, then run the notebook again once it has settled
-- (scheduler/lifecycle.py). It replaces the `restart_pending` flag: a flagged notebook that is
-- still stopping or has settled as STOPPED or ERROR is one the maintenance loop would restart;
-- a flagged one in any other state is one it would have cleared the flag of.
--
-- PostgreSQL changes the CHECK constraint in place and drops the two columns.
-- dialect: postgresql
ALTER TABLE notebooks DROP CONSTRAINT notebooks_desired_check;
ALTER TABLE notebooks ADD CONSTRAINT notebooks_desired_check
    CHECK (desired IN ('running', 'stopped', 'deleted', 'restarted'));
UPDATE notebooks SET desired = 'restarted'
    WHERE restart_pending = 1 AND state IN ('STOPPING', 'STOPPED', 'ERROR');
ALTER TABLE notebooks DROP COLUMN restart_pending, DROP COLUMN url;
-- The maintenance loop's restarts: the few notebooks to be restarted, without a scan.
CREATE INDEX notebooks_restarts ON notebooks(state) WHERE desired = 'restarted';

-- SQLite cannot change a CHECK constraint in place, so the table is rebuilt. The migration is
-- one transaction with foreign keys on: they are checked at the commit instead, the rows are
-- copied aside, the table dropped and created again, and the rows put back, which satisfies
-- again every reference (state history, usage, GPUs, snapshots, forks) the drop left dangling.
-- Rowids are kept: listings order by creation time, then rowid.
-- dialect: sqlite
PRAGMA defer_foreign_keys = ON;

CREATE TEMP TABLE notebooks_0009 AS SELECT rowid AS old_rowid, * FROM notebooks;
DROP TABLE notebooks;

CREATE TABLE notebooks (
    id              TEXT PRIMARY KEY,
    project         TEXT NOT NULL REFERENCES projects(name),
    name            TEXT NOT NULL,
    framework       TEXT NOT NULL,
    editor          TEXT NOT NULL,
    image           TEXT NOT NULL,
    -- The editor's command and url_path as templates ({token}, {port} filled per assignment).
    command         TEXT NOT NULL,
    editor_port     INTEGER NOT NULL,
    url_path        TEXT NOT NULL,
    "user"          TEXT NOT NULL,
    gpu             INTEGER NOT NULL,
    cpu             INTEGER NOT NULL,
    memory_mb       INTEGER NOT NULL,
    labels          TEXT NOT NULL DEFAULT '{}',
    envvars         TEXT NOT NULL DEFAULT '{}',
    state           TEXT NOT NULL,
    state_reason    TEXT NOT NULL,
    state_at        REAL NOT NULL,
    -- What the scheduler wants of the notebook; agents are told 'restarted' as 'stopped'.
    desired         TEXT NOT NULL
                    CHECK (desired IN ('running', 'stopped', 'deleted', 'restarted')),
    -- Set while the notebook holds resources on a host; last_host_id survives release.
    host_id         TEXT REFERENCES hosts(id),
    last_host_id    TEXT REFERENCES hosts(id),
    generation      INTEGER NOT NULL,
    initialized     INTEGER NOT NULL DEFAULT 0,
    access_token    TEXT NOT NULL,
    running_since   REAL,
    created_at      REAL NOT NULL,
    -- Optimistic guard: every change is `WHERE id = ? AND version = ?`.
    version         INTEGER NOT NULL DEFAULT 1,
    -- The notebook's volumes as a JSON list of wire.Volume (aliases, never credentials).
    volumes         TEXT NOT NULL DEFAULT '[]',
    -- A fork's first start restores another notebook's snapshot.
    fork_notebook   TEXT REFERENCES notebooks(id),
    fork_snapshot   TEXT,
    flavor          TEXT,
    -- The GPU model a flavor asks for ('' = any).
    gpu_model       TEXT NOT NULL DEFAULT '',
    disk_gb         INTEGER NOT NULL DEFAULT 0,
    restart_on_timeout INTEGER NOT NULL DEFAULT 0,
    -- When it entered QUEUED; the queue is ordered by each project's turn, then by this.
    queued_at       REAL,
    -- 1: the editor is open without a token (`nbfleet notebook run --unsecure-http`).
    unsecure_http   INTEGER NOT NULL DEFAULT 0,
    -- What the agent's editor proxy last reported (heartbeats, written in batches): the time of
    -- the last proxied request, and the bytes carried both ways since the agent began proxying.
    last_activity_at REAL,
    proxied_bytes   INTEGER NOT NULL DEFAULT 0,
    -- Disk the notebook's workspace takes on its host, as last measured there, and when;
    -- cleared when the notebook gives its host back.
    workspace_used_bytes INTEGER,
    workspace_used_at REAL,
    -- The notebook's OpenSSH public keys (a JSON list of key lines, checked and normalized);
    -- sent only to the agent running it, shown by the API as fingerprints.
    ssh_public_keys TEXT NOT NULL DEFAULT '[]'
);

INSERT INTO notebooks (
    rowid, id, project, name, framework, editor, image, command, editor_port, url_path, "user",
    gpu, cpu, memory_mb, labels, envvars, state, state_reason, state_at, desired, host_id,
    last_host_id, generation, initialized, access_token, running_since, created_at, version,
    volumes, fork_notebook, fork_snapshot, flavor, gpu_model, disk_gb, restart_on_timeout,
    queued_at, unsecure_http, last_activity_at, proxied_bytes, workspace_used_bytes,
    workspace_used_at, ssh_public_keys
)
SELECT
    old_rowid, id, project, name, framework, editor, image, command, editor_port, url_path,
    "user",
    gpu, cpu, memory_mb, labels, envvars, state, state_reason, state_at,
    CASE
        WHEN restart_pending = 1 AND state IN ('STOPPING', 'STOPPED', 'ERROR') THEN 'restarted'
        ELSE desired
    END,
    host_id, last_host_id, generation, initialized, access_token, running_since, created_at,
    version, volumes, fork_notebook, fork_snapshot, flavor, gpu_model, disk_gb,
    restart_on_timeout, queued_at, unsecure_http, last_activity_at, proxied_bytes,
    workspace_used_bytes, workspace_used_at, ssh_public_keys
FROM notebooks_0009 ORDER BY old_rowid;

DROP TABLE notebooks_0009;

CREATE INDEX notebooks_project ON notebooks(project, state);
CREATE INDEX notebooks_host ON notebooks(host_id);
CREATE INDEX notebooks_last_host ON notebooks(last_host_id);
CREATE INDEX notebooks_state ON notebooks(state, queued_at);
-- Placement: a project's quota use is read from the index alone.
CREATE INDEX notebooks_quota ON notebooks(project, state, gpu, cpu);
-- The maintenance loop's restarts: the few notebooks to be restarted, without a scan.
CREATE INDEX notebooks_restarts ON notebooks(state) WHERE desired = 'restarted';
