-- Indexes for the placement transaction, measured with scripts/bench-scheduler (on PostgreSQL
-- with pg_stat_statements: the statements below were the placement's costliest).
--
-- Placement's host choice (scheduler/placement.py) orders by free GPUs, then host id: with the
-- id in the index the first entry past the range start is the answer. Without it, every host
-- with as many free GPUs as the best one (in an empty fleet: all of them) was read and sorted.
DROP INDEX hosts_placeable;
CREATE INDEX hosts_placeable ON hosts(state, intent, gpus_free, id);
-- A host's free GPUs in index order: placement's pick and refresh_hosts' free count read
-- exactly these entries. Lookups by notebook only ever ask for one notebook's GPUs, so free
-- GPUs (most of them) stay out of that index; with them in it, PostgreSQL on a young database
-- (no statistics yet) read every free GPU's entry to find one host's.
CREATE INDEX gpus_free ON gpus(host_id, idx) WHERE notebook_id IS NULL AND present = 1;
DROP INDEX gpus_notebook;
CREATE INDEX gpus_notebook ON gpus(notebook_id) WHERE notebook_id IS NOT NULL;
-- The quota check reads the per-project counters of 0012, no longer a sum over this index;
-- every change of a notebook's state paid for keeping it.
DROP INDEX notebooks_quota;
