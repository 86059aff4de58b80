-- Workspace snapshots as agents report them. Rows are kept after retention drops a snapshot
-- (retained = 0): storage billing needs the size history.
CREATE TABLE snapshots (
    notebook_id     TEXT NOT NULL REFERENCES notebooks(id),
    id              TEXT NOT NULL,
    created_at      REAL NOT NULL,
    kind            TEXT NOT NULL,
    files           INTEGER NOT NULL,
    logical_bytes   INTEGER NOT NULL,
    stored_bytes    INTEGER NOT NULL,
    generation      INTEGER NOT NULL,
    reported_at     REAL NOT NULL,
    retained        INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (notebook_id, id)
);
CREATE INDEX snapshots_latest ON snapshots(notebook_id, retained, created_at);

-- A fork's first start restores another notebook's snapshot.
ALTER TABLE notebooks ADD COLUMN fork_notebook TEXT REFERENCES notebooks(id);
ALTER TABLE notebooks ADD COLUMN fork_snapshot TEXT;
