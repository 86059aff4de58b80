-- Issue 16: where the time of a start or stop goes. The seconds each step took on the agent
-- (JSON: {"restore": 0.4, "container": 0.5, "editor": 1.6}), kept with the state the start or
-- stop ended in.
ALTER TABLE state_history ADD COLUMN phases TEXT NOT NULL DEFAULT '{}';
