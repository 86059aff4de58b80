-- Data volumes (issue 3): datastore aliases per project, and the volumes a notebook mounts.

-- S3 endpoints and credentials registered under an alias. The keys are only ever sent to
-- agents inside assignments; the user API never returns them.
CREATE TABLE datastores (
    project     TEXT NOT NULL REFERENCES projects(name),
    alias       TEXT NOT NULL,
    endpoint    TEXT NOT NULL,
    region      TEXT NOT NULL,
    access_key  TEXT NOT NULL,
    secret_key  TEXT NOT NULL,
    created_at  REAL NOT NULL,
    PRIMARY KEY (project, alias)
);

-- The notebook's volumes as a JSON list of wire.Volume (aliases, never credentials).
ALTER TABLE notebooks ADD COLUMN volumes TEXT NOT NULL DEFAULT '[]';
