-- Issue 5: public notebooks, editor proxy activity, project tokens managed by their project.

-- 1: the editor is open without a token (`nbfleet notebook run --unsecure-http`).
ALTER TABLE notebooks ADD COLUMN unsecure_http INTEGER NOT NULL DEFAULT 0;
-- What the agent's editor proxy last reported (heartbeats, written in batches): the time of the
-- last proxied request, and the bytes carried both ways since the agent began proxying it.
ALTER TABLE notebooks ADD COLUMN last_activity_at REAL;
ALTER TABLE notebooks ADD COLUMN proxied_bytes INTEGER NOT NULL DEFAULT 0;

-- `GET /v1/tokens` lists one project's tokens.
CREATE INDEX tokens_project ON tokens(project, created_at);
