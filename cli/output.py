"""Rendering for the CLI: aligned tables for people, JSON for scripts."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

import msgspec

from common import wire


def print_json(obj: Any, out: TextIO | None = None) -> None:
    out = out or sys.stdout
    out.write(msgspec.json.format(wire.encode(obj), indent=2).decode() + "\n")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], out: TextIO | None = None) -> None:
    out = out or sys.stdout
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        out.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n")


def when(ts: float | None) -> str:
    if ts is None:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def ago(ts: float, now: float | None = None) -> str:
    seconds = int((time.time() if now is None else now) - ts)
    if seconds < 60:
        return f"{seconds}s ago"
    if seconds < 3600:
        return f"{seconds // 60}m ago"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m ago"
    return f"{seconds // 86400}d ago"


def resources(nb: wire.Notebook) -> str:
    if nb.gpu:
        return f"{nb.gpu} GPU"
    return f"{nb.cpu} CPU"


def notebook_rows(items: Sequence[wire.Notebook]) -> list[list[Any]]:
    return [
        [
            nb.id,
            nb.name,
            nb.state,
            f"{nb.framework}/{nb.editor}",
            resources(nb),
            nb.host or "-",
            ago(nb.state_at),
        ]
        for nb in items
    ]


NOTEBOOK_HEADERS = ["ID", "NAME", "STATE", "FRAMEWORK/EDITOR", "RESOURCES", "HOST", "SINCE"]


def notebook_detail(nb: wire.Notebook, out: TextIO | None = None) -> None:
    out = out or sys.stdout
    labels = ", ".join(f"{k}={v}" for k, v in sorted(nb.labels.items())) or "-"
    gpus = ", ".join(f"{g.uuid} ({g.model})" for g in nb.gpus) or "-"
    fields = [
        ("ID", nb.id),
        ("Name", nb.name),
        ("Project", nb.project),
        ("State", f"{nb.state} since {when(nb.state_at)} ({nb.state_reason})"),
        ("Framework", f"{nb.framework} ({nb.image})"),
        ("Editor", nb.editor),
        ("Resources", f"{nb.gpu} GPU, {nb.cpu} CPU, {nb.memory_mb} MiB"),
        ("Host", nb.host or "-"),
        ("GPUs", gpus),
        ("URL", nb.url or "-"),
        ("Labels", labels),
        ("Billed", f"{nb.billed_minutes} min"),
        ("Created", when(nb.created_at)),
    ]
    width = max(len(k) for k, _ in fields)
    for key, value in fields:
        out.write(f"{key + ':':<{width + 1}} {value}\n")
    if nb.history:
        out.write("\nHistory:\n")
        table(
            ["TIME", "STATE", "RUN", "REASON"],
            [[when(h.at), h.state, h.generation, h.reason] for h in nb.history],
            out,
        )
