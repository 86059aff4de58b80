"""The scheduler's Prometheus metrics: ``GET /metrics`` (:func:`scheduler.api.admin.metrics`).

Two kinds of series, named after JupyterHub's and dstack's where they overlap:

* **What this process saw** (counters and histograms it keeps in memory, reset when it
  restarts; with several replicas, scrape each and sum): HTTP requests by handler, method and
  status code (``nbfleet_request_duration_seconds``, as ``jupyterhub_request_duration_seconds``);
  placements by where they came from; how long a placed notebook took to run
  (``nbfleet_notebook_start_duration_seconds``: STARTING to RUNNING, the host's part) and how
  long a queued one waited for its host (``nbfleet_queue_wait_seconds``); the process's own CPU
  and memory (``process_*``).
* **What the database holds** (read at each scrape, the same on every replica): notebooks by
  project and state, the queue's length and its oldest wait, hosts by state and intent, GPUs
  and free GPUs by model, billed GPU-minutes by project and model (from the usage ledger, so a
  counter that only grows).

Scrapes need the admin token or the scrape token (``metrics_token_file``, created beside the
admin token when absent, ``nbfleet-scheduler metrics-token`` prints it): a read-only
credential for a Prometheus server that can do nothing else.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from common.states import HostIntent, HostState, NotebookState
from scheduler.db import Database

#: The registry every series of this process is in (one scheduler per process).
REGISTRY = CollectorRegistry(auto_describe=False)
ProcessCollector(registry=REGISTRY)

#: Request durations: from 1 ms (a heartbeat) to a long-poll's 30 s.
_REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
#: Start and queue durations: from a second to an hour.
_START_BUCKETS = (0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 45, 60, 120, 300, 600, 1800, 3600)

REQUESTS = Histogram(
    "nbfleet_request_duration_seconds",
    "Time the scheduler took to answer an HTTP request",
    ["code", "handler", "method"],
    buckets=_REQUEST_BUCKETS,
    registry=REGISTRY,
)
PLACEMENTS = Counter(
    "nbfleet_placements",
    "Notebooks placed on a host (STARTING): at once when run or started, or from the queue",
    ["source"],
    registry=REGISTRY,
)
START_DURATION = Histogram(
    "nbfleet_notebook_start_duration_seconds",
    "Time from a notebook's placement (STARTING) to RUNNING, or to FAILED or ERROR",
    ["status"],
    buckets=_START_BUCKETS,
    registry=REGISTRY,
)
QUEUE_WAIT = Histogram(
    "nbfleet_queue_wait_seconds",
    "Time a queued notebook waited for a host, observed when it is placed",
    buckets=_START_BUCKETS,
    registry=REGISTRY,
)

#: ``(handler, method, code)`` → the histogram's child: ``labels()`` takes a lock and builds a
#: key each call, which a heartbeat's few hundred microseconds should not pay.
_children: dict[tuple[str, str, int], object] = {}


def observe_request(handler: str, method: str, code: int, seconds: float) -> None:
    key = (handler, method, code)
    child = _children.get(key)
    if child is None:
        child = _children[key] = REQUESTS.labels(code=str(code), handler=handler, method=method)
    child.observe(seconds)  # type: ignore[attr-defined]


def count_moves(moves: list[tuple[NotebookState, NotebookState, float]]) -> None:
    """Count committed changes of state (:func:`scheduler.lifecycle.change_states`), each
    ``(from, to, seconds spent in the state left)``: placements, queue waits, start
    durations."""
    for before, after, seconds in moves:
        if after == NotebookState.STARTING:
            PLACEMENTS.labels(source="queue" if before == NotebookState.QUEUED else "request").inc()
            if before == NotebookState.QUEUED:
                QUEUE_WAIT.observe(seconds)
        elif before == NotebookState.STARTING and after in _START_ENDS:
            START_DURATION.labels(status=_START_ENDS[after]).observe(seconds)


_START_ENDS = {
    NotebookState.RUNNING: "running",
    NotebookState.FAILED: "failed",
    NotebookState.ERROR: "error",
}


class _Snapshot:
    """A collector that yields what :func:`render` read from the database just before."""

    def __init__(self) -> None:
        self.families: list[Metric] = []

    def collect(self) -> Iterator[Metric]:
        yield from self.families


_snapshot = _Snapshot()
REGISTRY.register(_snapshot)


async def render(db: Database, *, now: float | None = None) -> tuple[bytes, str]:
    """The exposition text of every series, and its content type."""
    now = time.time() if now is None else now
    families = await _fleet(db, now)
    # No await between setting the snapshot and rendering it: a concurrent scrape cannot mix.
    _snapshot.families = families
    try:
        return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
    finally:
        _snapshot.families = []


async def _fleet(db: Database, now: float) -> list[Metric]:
    """The fleet as the database has it. Each query names its columns after the series'
    labels, and its figure ``value``."""
    async with db.read() as tx:
        notebooks = await tx.all(
            "SELECT project, state, COUNT(*) AS value FROM notebooks WHERE state != 'DELETED' "
            "GROUP BY project, state ORDER BY project, state"
        )
        queue = await tx.one(
            "SELECT COUNT(*) AS n, MIN(queued_at) AS oldest FROM notebooks WHERE state = 'QUEUED'"
        )
        hosts = await tx.all(
            "SELECT state, intent, COUNT(*) AS value FROM hosts GROUP BY state, intent "
            "ORDER BY state, intent"
        )
        gpus = await tx.all(
            "SELECT g.model, COUNT(*) AS total, "
            "SUM(CASE WHEN g.notebook_id IS NULL AND h.state = ? AND h.intent = ? "
            "THEN 1 ELSE 0 END) AS free "
            "FROM gpus g JOIN hosts h ON h.id = g.host_id WHERE g.present = 1 "
            "GROUP BY g.model ORDER BY g.model",
            (HostState.READY.value, HostIntent.OPEN.value),
        )
        billed = await tx.all(
            "SELECT COALESCE(u.project, n.project) AS project, u.gpu_model AS model, "
            "SUM(u.billed_minutes * u.gpus) AS value FROM usage u "
            "JOIN notebooks n ON n.id = u.notebook_id WHERE u.gpus > 0 "
            "GROUP BY COALESCE(u.project, n.project), u.gpu_model ORDER BY 1, 2"
        )
    oldest_at = queue["oldest"] if queue else None
    return [
        _family(
            GaugeMetricFamily,
            "nbfleet_notebooks",
            "Notebooks by project and state",
            ("project", "state"),
            notebooks,
        ),
        _family(
            GaugeMetricFamily,
            "nbfleet_queue_length",
            "Notebooks waiting in the queue",
            (),
            [{"value": queue["n"] if queue else 0}],
        ),
        _family(
            GaugeMetricFamily,
            "nbfleet_queue_oldest_wait_seconds",
            "How long the notebook waiting longest has waited (0 when none waits)",
            (),
            [{"value": max(0.0, now - oldest_at) if oldest_at is not None else 0.0}],
        ),
        _family(
            GaugeMetricFamily,
            "nbfleet_hosts",
            "Hosts by state (ready, lost) and intent (open, cordoned, draining)",
            ("state", "intent"),
            hosts,
        ),
        _family(
            GaugeMetricFamily,
            "nbfleet_gpus",
            "GPUs the hosts report, by model",
            ("model",),
            [{"model": row["model"], "value": row["total"]} for row in gpus],
        ),
        _family(
            GaugeMetricFamily,
            "nbfleet_gpus_free",
            "GPUs a notebook could be placed on now (unreserved, on a ready, open host), by model",
            ("model",),
            [{"model": row["model"], "value": row["free"] or 0} for row in gpus],
        ),
        _family(
            CounterMetricFamily,
            "nbfleet_billed_gpu_minutes",
            "GPU-minutes billed (each run's minutes times its GPUs), by project and GPU model",
            ("project", "model"),
            billed,
        ),
    ]


def _family(
    kind: type[GaugeMetricFamily] | type[CounterMetricFamily],
    name: str,
    documentation: str,
    labels: tuple[str, ...],
    rows: Iterable[Mapping[str, Any]],
) -> Metric:
    """A series of ``kind``: one sample per row, labelled by its ``labels`` columns, valued
    by its ``value``."""
    family = kind(name, documentation, labels=list(labels))
    for row in rows:
        family.add_metric([row[label] for label in labels], row["value"])
    return family
