-- What each project uses now (its STARTING and RUNNING notebooks: GPUs, CPUs of CPU notebooks,
-- notebooks), kept by scheduler/lifecycle.change_state as notebooks enter and leave those
-- states, so a placement's quota check reads one row instead of summing the project's
-- notebooks.
ALTER TABLE projects ADD COLUMN gpus_used INTEGER NOT NULL DEFAULT 0;
ALTER TABLE projects ADD COLUMN cpus_used INTEGER NOT NULL DEFAULT 0;
ALTER TABLE projects ADD COLUMN notebooks_active INTEGER NOT NULL DEFAULT 0;
UPDATE projects SET
    gpus_used = (
        SELECT COALESCE(SUM(n.gpu), 0) FROM notebooks n
        WHERE n.project = projects.name AND n.state IN ('STARTING', 'RUNNING')
    ),
    cpus_used = (
        SELECT COALESCE(SUM(CASE WHEN n.gpu = 0 THEN n.cpu ELSE 0 END), 0) FROM notebooks n
        WHERE n.project = projects.name AND n.state IN ('STARTING', 'RUNNING')
    ),
    notebooks_active = (
        SELECT COUNT(*) FROM notebooks n
        WHERE n.project = projects.name AND n.state IN ('STARTING', 'RUNNING')
    );
