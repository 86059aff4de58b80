-- Initial schema. Times are unix seconds (REAL) from the scheduler's clock.

CREATE TABLE projects (
    name        TEXT PRIMARY KEY,
    created_at  REAL NOT NULL
);

-- Bearer tokens: only the sha256 digest is stored.
CREATE TABLE tokens (
    id          TEXT PRIMARY KEY,
    project     TEXT NOT NULL REFERENCES projects(name),
    role        TEXT NOT NULL CHECK (role IN ('read', 'operator')),
    digest      TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL DEFAULT '',
    created_at  REAL NOT NULL
);

CREATE TABLE hosts (
    id                  TEXT PRIMARY KEY,
    agent_url           TEXT NOT NULL,
    cpus                INTEGER NOT NULL,
    memory_mb           INTEGER NOT NULL,
    nvidia_runtime      INTEGER NOT NULL DEFAULT 0,
    state               TEXT NOT NULL DEFAULT 'ready',
    last_heartbeat      REAL NOT NULL,
    registered_at       REAL NOT NULL,
    gpu_note            TEXT NOT NULL DEFAULT '',
    agent_version       TEXT NOT NULL DEFAULT '',
    -- Bumped by every change to the host's assignments; agents long-poll on it.
    assignments_version INTEGER NOT NULL DEFAULT 1
);

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
    desired         TEXT NOT NULL CHECK (desired IN ('running', 'stopped', 'deleted')),
    -- Set while the notebook holds resources on a host; last_host_id survives release.
    host_id         TEXT REFERENCES hosts(id),
    last_host_id    TEXT REFERENCES hosts(id),
    generation      INTEGER NOT NULL,
    initialized     INTEGER NOT NULL DEFAULT 0,
    access_token    TEXT NOT NULL,
    url             TEXT,
    running_since   REAL,
    created_at      REAL NOT NULL,
    -- Optimistic guard: every change is `WHERE id = ? AND version = ?`.
    version         INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX notebooks_project ON notebooks(project, state);
CREATE INDEX notebooks_host ON notebooks(host_id);
CREATE INDEX notebooks_last_host ON notebooks(last_host_id);

CREATE TABLE gpus (
    uuid              TEXT PRIMARY KEY,
    host_id           TEXT NOT NULL REFERENCES hosts(id),
    idx               INTEGER NOT NULL,
    model             TEXT NOT NULL,
    memory_total_mb   INTEGER NOT NULL,
    memory_used_mb    INTEGER NOT NULL DEFAULT 0,
    utilization_pct   INTEGER NOT NULL DEFAULT 0,
    -- 0 when the host's last register no longer listed it; kept only while still reserved.
    present           INTEGER NOT NULL DEFAULT 1,
    -- NULL means free; reservations are guarded by `notebook_id IS NULL`.
    notebook_id       TEXT REFERENCES notebooks(id)
);
CREATE INDEX gpus_host ON gpus(host_id, idx);
CREATE INDEX gpus_notebook ON gpus(notebook_id);

CREATE TABLE state_history (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    notebook_id  TEXT NOT NULL REFERENCES notebooks(id),
    state        TEXT NOT NULL,
    reason       TEXT NOT NULL,
    at           REAL NOT NULL,
    generation   INTEGER NOT NULL
);
CREATE INDEX state_history_notebook ON state_history(notebook_id, id);

-- Billed minutes per run (generation); agents report cumulative values, the maximum is kept.
CREATE TABLE usage (
    notebook_id     TEXT NOT NULL REFERENCES notebooks(id),
    generation      INTEGER NOT NULL,
    billed_minutes  INTEGER NOT NULL,
    PRIMARY KEY (notebook_id, generation)
);
