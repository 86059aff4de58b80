-- Several scheduler processes ("replicas") on one database share what used to live in one
-- process's memory.

-- Each running replica, stamped every loop tick. `flushed_at`: every heartbeat and report the
-- replica received before this time is written (its write-behind buffers were flushed in the
-- same transaction as the stamp). A host is judged lost only on what every live replica has
-- flushed (scheduler/replicas.py); a replica not seen for a while is dead and not waited for.
CREATE TABLE replicas (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    started_at REAL NOT NULL,
    seen_at REAL NOT NULL,
    flushed_at REAL NOT NULL
);

-- Background work claimed by one replica at a time: `holder` runs the job until `until`,
-- renewing it every tick; when it stops renewing, another replica takes it over.
CREATE TABLE leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    until REAL NOT NULL
);

-- Signed agent requests' nonces ("host:nonce") seen by any replica, until the request's
-- timestamp could no longer pass the skew check: a request replayed to another replica is
-- refused there too. Only PostgreSQL uses it; one SQLite process keeps them in memory.
CREATE TABLE request_nonces (
    nonce TEXT PRIMARY KEY,
    expires_at REAL NOT NULL
);
CREATE INDEX request_nonces_expiry ON request_nonces (expires_at);

-- The latest sync progress an agent reported for a notebook's run ("restoring 40%"), so every
-- replica shows it, not only the one the report reached; NULL when none is under way.
ALTER TABLE notebooks ADD COLUMN progress TEXT;
ALTER TABLE notebooks ADD COLUMN progress_generation INTEGER;
