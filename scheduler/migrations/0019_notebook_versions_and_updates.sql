-- Issue 17: frameworks have versions. A notebook keeps the version it was created with (its
-- image holds it) until its owner changes it; '' for notebooks made before versions, whose
-- version is their image's tag.
ALTER TABLE notebooks ADD COLUMN framework_version TEXT NOT NULL DEFAULT '';
-- The catalog images each host has and what their labels say they hold (JSON list of
-- wire.HostImage), as its agent last registered them.
ALTER TABLE hosts ADD COLUMN images TEXT NOT NULL DEFAULT '[]';
-- Settings changed while the notebook ran that its container gets at its next start (JSON list
-- of field names, e.g. ["envvars"]); emptied when it enters STARTING.
ALTER TABLE notebooks ADD COLUMN pending_restart TEXT NOT NULL DEFAULT '[]';
