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


def size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError


PHASES = {
    "image": "preparing image",
    "restore": "restoring workspace",
    "volumes-pull": "pulling volumes",
    "push": "saving workspace",
    "volumes-push": "pushing volumes",
    "checkpoint": "checkpointing workspace",
}


def progress(p: wire.Progress) -> str:
    """``restoring workspace 40% (412 of 1,030 files, 40.1 MB of 100.2 MB)``."""
    text = PHASES.get(p.phase, p.phase)
    if p.bytes_total:
        text += f" {100 * p.bytes_done // p.bytes_total}%"
    if p.files_total:
        text += f" ({p.files_done:,} of {p.files_total:,} files, "
        text += f"{size(p.bytes_done)} of {size(p.bytes_total)})"
    if p.detail:
        text += f": {p.detail}"
    return text


SNAPSHOT_HEADERS = ["BACKUP", "TIME", "KIND", "FILES", "SIZE", "STORED"]


def snapshot_rows(items: Sequence[wire.SnapshotInfo]) -> list[list[Any]]:
    return [
        [
            s.id,
            when(s.created_at),
            s.kind,
            f"{s.files:,}",
            size(s.logical_bytes),
            size(s.stored_bytes),
        ]
        for s in items
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
        (
            "Workspace",
            (
                f"{size(nb.workspace.logical_bytes)} in {nb.workspace.files:,} files, "
                f"{size(nb.workspace.stored_bytes)} stored (backup {nb.workspace.id}, "
                f"{when(nb.workspace.created_at)})"
            )
            if nb.workspace
            else "no backup yet",
        ),
        ("Labels", labels),
        (
            "Volumes",
            "; ".join(
                f"{v.container}@{v.alias}{'/' + v.prefix if v.prefix else ''}:{v.mount_path}:"
                f"{v.permission}"
                for v in nb.volumes
            )
            or "-",
        ),
        ("Billed", f"{nb.billed_minutes} min"),
        ("Created", when(nb.created_at)),
    ]
    if nb.progress is not None:
        fields.insert(4, ("Progress", progress(nb.progress)))
    if nb.forked_from is not None:
        fields.append(
            ("Forked from", f"{nb.forked_from.notebook} backup {nb.forked_from.snapshot}")
        )
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
