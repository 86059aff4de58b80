-- Listings order by creation time, then insertion order (`ORDER BY created_at, rowid`): SQLite's
-- rowid. PostgreSQL has none, so there `rowid` is a column of its own, numbered in insertion
-- order by a sequence, and the same statements read alike on both. SQLite needs nothing.
-- dialect: postgresql
ALTER TABLE notebooks ADD COLUMN rowid BIGSERIAL;
ALTER TABLE tokens ADD COLUMN rowid BIGSERIAL;
