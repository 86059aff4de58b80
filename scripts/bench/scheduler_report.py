"""Turning scripts/bench-scheduler's raw phase results into figures, a table and JSON (pure code).

The six headline figures and their goals (issue 4): placements/s when the notebooks are
submitted at once, heartbeats ingested/s, and p50/p99 latency in ms of ``GET`` and ``POST``
``/v1/notebooks`` under the concurrent clients. Latencies have no goal; they are reported.
The details under the table say what was measured: the database (kind, server version) and
how many scheduler replicas shared the load, and quote the schedulers' ERROR log lines.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

HEADLINE = (
    "placements_per_s",
    "heartbeats_per_s",
    "get_p50_ms",
    "get_p99_ms",
    "post_p50_ms",
    "post_p99_ms",
)

GOALS: dict[str, float] = {"placements_per_s": 500.0, "heartbeats_per_s": 5000.0}

TITLES = {
    "placements_per_s": "placements/s ({notebooks} notebooks submitted at once)",
    "heartbeats_per_s": "heartbeats ingested/s ({hosts} agents)",
    "get_p50_ms": "GET /v1/notebooks/{{id}} p50 ms ({clients} clients)",
    "get_p99_ms": "GET /v1/notebooks/{{id}} p99 ms ({clients} clients)",
    "post_p50_ms": "POST /v1/notebooks p50 ms ({clients} clients)",
    "post_p99_ms": "POST /v1/notebooks p99 ms ({clients} clients)",
}


def percentile(samples: Sequence[float], pct: float) -> float | None:
    """Nearest-rank percentile (the smallest sample with at least ``pct``% of samples at or
    below it); None without samples."""
    if not samples:
        return None
    ordered = sorted(samples)
    rank = max(1, math.ceil(pct / 100.0 * len(ordered)))
    return ordered[rank - 1]


def merge_statuses(parts: Iterable[Mapping[Any, int]]) -> dict[str, int]:
    """Sum per-status counts from several load processes; keys as strings (JSON-ready)."""
    total: Counter[str] = Counter()
    for part in parts:
        for status, count in part.items():
            total[str(status)] += count
    return dict(sorted(total.items()))


def placement_rate(placed_at: Sequence[float], started: float) -> tuple[float, float]:
    """``(placements per second, seconds)`` from the first submit to the last placement."""
    if not placed_at:
        return 0.0, 0.0
    elapsed = max(placed_at) - started
    return (len(placed_at) / elapsed if elapsed > 0 else 0.0), elapsed


def ratios(figures: Mapping[str, Any]) -> dict[str, float | None]:
    """Figure / goal for every figure that has a goal (above 1 means the goal is met)."""
    out: dict[str, float | None] = {}
    for key, goal in GOALS.items():
        value = figures.get(key)
        out[key] = None if value is None else value / goal
    return out


def _number(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}"


def format_table(figures: Mapping[str, Any]) -> str:
    """The headline figures as a fixed-width table: figure, measured, goal, measured / goal."""
    context = {k: figures.get(k, "?") for k in ("notebooks", "hosts", "clients")}
    rows = [("figure", "measured", "goal", "ratio")]
    for key in HEADLINE:
        goal = GOALS.get(key)
        value = figures.get(key)
        ratio = None if goal is None or value is None else value / goal
        rows.append(
            (
                TITLES[key].format(**{k: _number(v) for k, v in context.items()}),
                _number(value),
                _number(goal, 0),
                "-" if ratio is None else f"{ratio:.2f}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = []
    for n, row in enumerate(rows):
        numbers = zip(row[1:], widths[1:], strict=True)
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in numbers]
        lines.append("  ".join(cells))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_details(figures: Mapping[str, Any]) -> str:
    """The run's context under the table: database and replicas, scale, processes, CPU use,
    non-2xx replies, scheduler errors."""
    replicas = figures.get("replicas", 1)
    lines = [
        f"scheduler: {replicas} process{'es' if replicas != 1 else ''} on "
        f"{figures.get('database', 'sqlite')} {figures.get('database_version', '?')} "
        f"({figures.get('database_source', '?')})",
        f"hosts {figures['hosts']} x {figures['gpus_per_host']} GPUs, "
        f"notebooks {figures['notebooks']} (placed {figures['notebooks_placed']}, "
        f"{figures['gpus_reserved']} GPUs reserved) in {figures.get('projects', '?')} "
        f"project(s), clients {figures['clients']}, "
        f"phase duration {figures['duration_s']}s",
        f"load generator: {figures['load_processes']} process(es) + the parent "
        f"(background fleet: heartbeat every {figures['heartbeat_interval_s']}s per host"
        f"{', assignments long-polls' if figures.get('long_poll') else ''}); "
        f"machine: {figures['cpus']} CPUs",
        f"registration: {_number(figures['registrations_per_s'])} hosts/s; placement phase "
        f"{_number(figures['placement_s'], 2)}s; GET {figures['get_requests']:,} and POST "
        f"{figures['post_requests']:,} requests timed",
    ]
    cpu = figures.get("scheduler_cpu_s") or {}
    if cpu:
        lines.append(
            "scheduler CPU seconds per phase: "
            + ", ".join(f"{phase} {seconds:.1f}" for phase, seconds in cpu.items())
        )
    database_cpu = figures.get("database_cpu_s") or {}
    if database_cpu:
        lines.append(
            "database server CPU seconds per phase: "
            + ", ".join(f"{phase} {seconds:.1f}" for phase, seconds in database_cpu.items())
        )
    load_cpu = figures.get("loadgen_cpu_s") or {}
    if load_cpu:
        lines.append(
            "load-generator CPU seconds per phase: "
            + ", ".join(f"{phase} {seconds:.1f}" for phase, seconds in load_cpu.items())
        )
    others = figures.get("other_cpu_s") or {}
    if any(seconds > 0.1 * figures["duration_s"] for seconds in others.values()):
        lines.append(
            "other processes' CPU seconds per phase (a busy machine skews the figures): "
            + ", ".join(f"{phase} {seconds:.1f}" for phase, seconds in others.items())
        )
    for phase, statuses in (figures.get("statuses") or {}).items():
        odd = {s: n for s, n in statuses.items() if not s.startswith("2")}
        if odd:
            lines.append(f"{phase}: non-2xx replies {odd}")
    for log_name, errors in (figures.get("scheduler_log_errors") or {}).items():
        lines.append(f"{log_name}: {sum(errors.values())} ERROR line(s), e.g.:")
        for text, count in sorted(errors.items(), key=lambda item: -item[1])[:3]:
            lines.append(f"  {count}x {text if len(text) <= 200 else text[:197] + '...'}")
    for problem in figures.get("problems") or []:
        lines.append(f"PROBLEM: {problem}")
    return "\n".join(lines)


def to_json(figures: Mapping[str, Any]) -> str:
    return json.dumps({**figures, "ratios": ratios(figures)}, sort_keys=True)
