-- Indexes for the placement transaction (measured with scripts/bench-scheduler):
-- a project's quota use is read from the index alone, and the largest host of a flavor is one
-- index lookup instead of a scan of every host.
CREATE INDEX notebooks_quota ON notebooks(project, state, gpu, cpu);
CREATE INDEX hosts_flavor_gpus ON hosts(flavor, gpus_total);
CREATE INDEX hosts_flavor_cpus ON hosts(flavor, cpus);
CREATE INDEX hosts_gpus_total ON hosts(gpus_total);
CREATE INDEX hosts_cpus ON hosts(cpus);
