-- Issue 14: idle notebooks stop themselves.

-- What showed the notebook's last activity (`last_activity_at`), as the agent named it:
-- "editor traffic", "SSH", "kernel busy", "GPU 87%", ...
ALTER TABLE notebooks ADD COLUMN activity_signal TEXT NOT NULL DEFAULT '';
-- The idle timeout the user asked for at `run` (seconds; NULL: the project's). Never longer
-- than the project's: the shorter of the two applies, so an operator who shortens the
-- project's later shortens this one too.
ALTER TABLE notebooks ADD COLUMN idle_timeout_s REAL;
-- A project's own idle timeout (seconds; 0: never; NULL: the scheduler's [quota] default).
ALTER TABLE quotas ADD COLUMN idle_timeout_s REAL;
