"""The agent's Prometheus metrics: ``GET /metrics`` on its ``listen`` address (issue 14).

Per notebook on this host (labels ``notebook`` and ``project``, and for a GPU its ``gpu`` UUID
and ``model``), read when scraped: each of its GPUs' utilization, memory used and power (NVML,
by UUID), its container's CPU time and memory working set (Docker's stats of its cgroup), and
its workspace's size on the host's disk (as last measured, every ``disk_usage_interval_s``).
Per GPU of the host, whether a notebook holds it or not: the same three, so an operator sees
idle and stray use too. Names follow dstack's where they overlap (``dstack_job_gpu_usage_ratio``:
a ratio, not a percentage).

Scrapes need the metrics token (``metrics_token_file``, a copy of the scheduler's, which
``nbfleet-scheduler metrics-token`` prints); without one configured, ``/metrics`` is off (404),
and any other token gets 401.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from agent.disk import WorkspaceMeter
from agent.gpus import GpuSnapshot
from agent.runtime import ContainerUsage
from common.wire import Assignment

#: Sync durations: from a no-change push (a fraction of a second) to a large restore.
_SYNC_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


class SyncMeter:
    """The workspace and volume syncs of this agent since it started, for ``/metrics``: how
    long each took and how many bytes it moved to or from the object store, by kind
    (``restore``, ``stop``: the push at the end of a run, ``checkpoint``; ``volume-pull`` and
    ``volume-push``, one per volume)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._seconds = Histogram(
            "nbfleet_sync_duration_seconds",
            "Time a workspace or volume sync took, by kind (restore, stop, checkpoint, "
            "volume-pull, volume-push)",
            ["kind"],
            buckets=_SYNC_BUCKETS,
            registry=self.registry,
        )
        self._bytes = Counter(
            "nbfleet_sync_bytes",
            "Bytes a workspace or volume sync moved to or from the object store, by kind",
            ["kind"],
            registry=self.registry,
        )

    def synced(self, kind: str, seconds: float, moved_bytes: int) -> None:
        self._seconds.labels(kind=kind).observe(seconds)
        self._bytes.labels(kind=kind).inc(moved_bytes)


class _Families:
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        yield from self.families


def render(
    gpus: GpuSnapshot,
    assignments: dict[str, Assignment],
    workspaces: WorkspaceMeter,
    usage: dict[str, ContainerUsage],
    *,
    saved_ago: dict[str, float],
    syncs: SyncMeter,
) -> tuple[bytes, str]:
    """The exposition text for what the host's GPUs do now and its notebooks hold
    (``usage``: the running containers' CPU and memory; ``saved_ago``: seconds since each
    running notebook's workspace was last saved; both by notebook), and the syncs so far."""
    holders = {uuid: a for a in assignments.values() for uuid in a.gpus}
    labels = ["notebook", "project", "gpu", "model"]
    used = GaugeMetricFamily(
        "nbfleet_notebook_gpu_utilization_ratio",
        "Utilization of a notebook's GPU (0 to 1), as NVML reports it",
        labels=labels,
    )
    memory = GaugeMetricFamily(
        "nbfleet_notebook_gpu_memory_used_bytes", "Memory used on a notebook's GPU", labels=labels
    )
    power = GaugeMetricFamily(
        "nbfleet_notebook_gpu_power_watts", "Power drawn by a notebook's GPU", labels=labels
    )
    host_used = GaugeMetricFamily(
        "nbfleet_gpu_utilization_ratio",
        "Utilization of each GPU of the host (0 to 1), held by a notebook or not",
        labels=["gpu", "model"],
    )
    host_memory = GaugeMetricFamily(
        "nbfleet_gpu_memory_used_bytes",
        "Memory used on each GPU of the host",
        labels=["gpu", "model"],
    )
    host_power = GaugeMetricFamily(
        "nbfleet_gpu_power_watts", "Power drawn by each GPU of the host", labels=["gpu", "model"]
    )
    for gpu in gpus.gpus:
        figures = (gpu.utilization_pct / 100, gpu.memory_used_mb * 1024 * 1024, gpu.power_w)
        for family, value in zip((host_used, host_memory, host_power), figures, strict=True):
            if value is not None:
                family.add_metric([gpu.uuid, gpu.model], value)
        holder = holders.get(gpu.uuid)
        if holder is None:
            continue
        names = [holder.notebook, holder.project, gpu.uuid, gpu.model]
        for family, value in zip((used, memory, power), figures, strict=True):
            if value is not None:
                family.add_metric(names, value)
    projects = {notebook: a.project for notebook, a in assignments.items()}
    measured = {n: m.used_bytes for n in projects if (m := workspaces.get(n)) is not None}
    per_notebook = [
        _per_notebook(
            GaugeMetricFamily,
            "nbfleet_notebook_workspace_bytes",
            "Disk space a notebook's /workspace takes on the host, as last measured",
            projects,
            measured,
        ),
        _per_notebook(
            CounterMetricFamily,
            "nbfleet_notebook_cpu_seconds",
            "CPU time of every process in a notebook's container since it started",
            projects,
            {n: u.cpu_seconds for n, u in usage.items()},
        ),
        _per_notebook(
            GaugeMetricFamily,
            "nbfleet_notebook_memory_working_set_bytes",
            "Memory a notebook's container holds, less the file cache the kernel could drop",
            projects,
            {n: u.memory_working_set_bytes for n, u in usage.items()},
        ),
        _per_notebook(
            GaugeMetricFamily,
            "nbfleet_notebook_seconds_since_checkpoint",
            "Seconds since a running notebook's workspace was last saved to the object store "
            "(a checkpoint, or since it started when none has been taken yet)",
            projects,
            saved_ago,
        ),
    ]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(
        _Families([used, memory, power, *per_notebook, host_used, host_memory, host_power])
    )
    return generate_latest(registry) + generate_latest(syncs.registry), CONTENT_TYPE_LATEST


def _per_notebook(
    kind: type[GaugeMetricFamily] | type[CounterMetricFamily],
    name: str,
    documentation: str,
    projects: dict[str, str],
    values: dict[str, float],
) -> Metric:
    """A series labelled ``notebook`` and ``project``: one sample per notebook of ``values``
    still assigned here (``projects``: the assigned notebooks' projects)."""
    family = kind(name, documentation, labels=["notebook", "project"])
    for notebook, value in sorted(values.items()):
        if notebook in projects:
            family.add_metric([notebook, projects[notebook]], value)
    return family
