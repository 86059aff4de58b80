"""Turning scripts/bench-access's measurements into figures, a table, the verdict and JSON
(pure code).

Samples are ``{path: {figure: [one value per repetition]}}`` for the two paths, ``direct`` (the
agent's ``/notebooks/{id}/``) and ``stable`` (the scheduler's, which forwards there). A figure
is the median of its repetitions; its ratio is stable / direct, for times and throughputs
alike: above 1 the stable URL takes longer (times), below 1 it carries less (throughputs).
Issue 11's goal: a download through the stable URL at least half as fast as direct.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from bench.scheduler_report import percentile

PATHS = ("direct", "stable")
#: (key, title, unit); ``{...}`` in a title is filled from the run's settings.
FIGURES = (
    ("small_get_p50_ms", "small GET p50 ({requests} sequential)", "ms"),
    ("small_get_p99_ms", "small GET p99", "ms"),
    ("download_mb_per_s", "download {download_mib:g} MiB ({download_client})", "MB/s"),
    ("download_cpu_s_per_gb", "  CPU of scheduler + agent for it", "s/GB"),
    ("ws_small_round_trips_per_s", "WebSocket {ws_small_bytes} B echo", "round trips/s"),
    ("ws_large_mb_per_s", "WebSocket {ws_large_mib:g} MiB echo", "MB/s"),
)
#: Download through the stable URL / direct, at least (issue 11).
DOWNLOAD_GOAL = 0.5
MB = 1_000_000
GB = 1_000_000_000

Samples = Mapping[str, Mapping[str, Sequence[float]]]


def latency_ms(seconds: Sequence[float]) -> dict[str, float | None]:
    """p50 and p99 (nearest rank) of one repetition's request times, in milliseconds."""
    p50, p99 = percentile(seconds, 50), percentile(seconds, 99)
    return {
        "small_get_p50_ms": None if p50 is None else p50 * 1000,
        "small_get_p99_ms": None if p99 is None else p99 * 1000,
    }


def mb_per_s(nbytes: int, seconds: float) -> float:
    """Throughput in MB/s (10^6 bytes)."""
    return nbytes / seconds / MB if seconds > 0 else 0.0


def summarize(samples: Samples) -> dict[str, dict[str, float | None]]:
    """``{figure: {"direct", "stable", "ratio"}}``: medians of the repetitions, and
    stable / direct (None when either is missing or direct is 0)."""
    out: dict[str, dict[str, float | None]] = {}
    for key, _, _ in FIGURES:
        medians: dict[str, float | None] = {}
        for path in PATHS:
            values = [v for v in samples.get(path, {}).get(key, []) if v is not None]
            medians[path] = statistics.median(values) if values else None
        direct, stable = medians["direct"], medians["stable"]
        ratio = stable / direct if direct and stable is not None else None
        out[key] = {**medians, "ratio": ratio}
    return out


def download_at_least_half(summary: Mapping[str, Mapping[str, float | None]]) -> bool | None:
    """Whether the stable URL's download was at least half as fast as direct; None unmeasured."""
    ratio = summary.get("download_mb_per_s", {}).get("ratio")
    return None if ratio is None else ratio >= DOWNLOAD_GOAL


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}"


def format_table(summary: Mapping[str, Mapping[str, float | None]], settings: Mapping) -> str:
    """One row per figure: direct, stable URL, stable/direct; the verdict below."""
    header = ["figure", "unit", "direct", "stable URL", "stable/direct"]
    rows = [header]
    for key, title, unit in FIGURES:
        figure = summary.get(key, {})
        ratio = figure.get("ratio")
        rows.append(
            [
                title.format(**settings),
                unit,
                _number(figure.get("direct")),
                _number(figure.get("stable")),
                "-" if ratio is None else f"{ratio:.2f}",
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = []
    for n, row in enumerate(rows):
        cells = [
            cell.ljust(w) if i < 2 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("")
    lines.append(verdict_line(summary))
    return "\n".join(lines)


def verdict_line(summary: Mapping[str, Mapping[str, float | None]]) -> str:
    ratio = summary.get("download_mb_per_s", {}).get("ratio")
    if ratio is None:
        return "download through the stable URL: not measured"
    ok = download_at_least_half(summary)
    return (
        f"download through the stable URL: {ratio:.2f} x direct, "
        f"{'at least' if ok else 'LESS THAN'} half as fast (goal: >= {DOWNLOAD_GOAL:.2f})"
    )


def to_json(samples: Samples, settings: Mapping[str, Any], context: Mapping[str, Any]) -> str:
    """One object: ``figures`` (``{figure: {direct, stable, ratio}}``),
    ``download_at_least_half``, ``repetitions`` (the samples), ``settings`` and ``context``."""
    summary = summarize(samples)
    return json.dumps(
        {
            "figures": summary,
            "download_at_least_half": download_at_least_half(summary),
            "download_goal_ratio": DOWNLOAD_GOAL,
            "repetitions": {path: dict(samples.get(path, {})) for path in PATHS},
            "settings": dict(settings),
            **context,
        },
        indent=2,
    )
