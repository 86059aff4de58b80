"""Rendering for the CLI: aligned tables for people, JSON for scripts."""

from __future__ import annotations

import sys
import time
from collections.abc import Collection, Sequence
from typing import Any, TextIO

import msgspec

from common import durations, wire
from common.notebook_text import (  # noqa: F401 (the CLI's modules take them from here)
    PHASES,
    idle_text,
    notebook_gpu,
    progress,
    queue_text,
    size,
    took,
)
from common.states import NotebookState


def print_json(obj: Any, out: TextIO | None = None) -> None:
    out = out or sys.stdout
    out.write(msgspec.json.format(wire.encode(obj), indent=2).decode() + "\n")


def table(
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    out: TextIO | None = None,
    *,
    numeric: Collection[int] = (),
) -> None:
    """Aligned columns; those whose index is in ``numeric`` are right-aligned."""
    out = out or sys.stdout
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        line = "  ".join(
            c.rjust(w) if i in numeric else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        out.write(line.rstrip() + "\n")


def when(ts: float | None) -> str:
    if ts is None:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def ago(ts: float, now: float | None = None) -> str:
    # A clock a little ahead of ours is "0s ago", not "-2s ago".
    seconds = max(0, int((time.time() if now is None else now) - ts))
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


def list_state(nb: wire.Notebook) -> str:
    """The STATE cell: a queued notebook also shows its place in the queue."""
    if nb.state == NotebookState.QUEUED and nb.queue is not None:
        return f"{nb.state} #{nb.queue.position}"
    return str(nb.state)


def notebook_rows(items: Sequence[wire.Notebook]) -> list[list[Any]]:
    return [
        [
            nb.id,
            nb.name,
            list_state(nb),
            f"{nb.framework}/{nb.editor}",
            resources(nb),
            nb.host or "-",
            ago(nb.state_at),
        ]
        for nb in items
    ]


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


def access(nb: wire.Notebook) -> str:
    if nb.unsecure_http:
        return "public (--unsecure-http): anyone with the URL, no token"
    return "project token (read or operator; `nbfleet token create`)"


def activity(nb: wire.Notebook, now: float | None = None) -> str:
    """While RUNNING, the idle signal (:func:`common.notebook_text.idle_text`); otherwise when
    it was last used. Then the traffic its proxy carried."""
    proxied = f"{size(nb.proxied_bytes)} proxied"
    if nb.idle is not None:
        return f"{idle_text(nb.idle)}; {proxied}"
    if nb.last_activity_at is None:
        return "none yet"
    return f"last active {ago(nb.last_activity_at, now)}, {proxied}"


def disk_use(nb: wire.Notebook, now: float | None = None) -> str | None:
    """What the workspace takes on the disk of the host running it; ``None`` off a host."""
    if nb.host is None:
        return None
    if nb.workspace_used_bytes is None or nb.workspace_used_at is None:
        return f"not measured yet on {nb.host}"
    used = size(nb.workspace_used_bytes)
    return f"{used} on {nb.host} (measured {ago(nb.workspace_used_at, now)})"


def ssh_access(nb: wire.Notebook) -> str:
    """The SSH address and how to use it, or why there is none."""
    if nb.ssh is not None:
        return f"{nb.ssh} (`nbfleet notebook ssh {nb.id}`)"
    if not nb.ssh_keys:
        return "- (no keys: `nbfleet notebook ssh-keys ID --ssh-public-keys FILE`)"
    if nb.state != NotebookState.RUNNING:
        return "- (while RUNNING)"
    return f"- (host {nb.host} offers no SSH)"


NOTEBOOK_HEADERS = ["ID", "NAME", "STATE", "FRAMEWORK/EDITOR", "RESOURCES", "HOST", "SINCE"]


def notebook_detail(nb: wire.Notebook, out: TextIO | None = None) -> None:
    out = out or sys.stdout
    labels = ", ".join(f"{k}={v}" for k, v in sorted(nb.labels.items())) or "-"
    gpus = "; ".join(notebook_gpu(g) for g in nb.gpus) or "-"
    if nb.queue is not None:
        state = f"{queue_text(nb)} (queued since {when(nb.queue.queued_at)})"
    else:
        state = f"{nb.state} since {when(nb.state_at)} ({nb.state_reason})"
    resources = f"{nb.gpu} GPU, {nb.cpu} CPU, {nb.memory_mb} MiB"
    if nb.disk_gb:
        resources += f", {nb.disk_gb} GB disk"
    fields = [
        ("ID", nb.id),
        ("Name", nb.name),
        ("Project", nb.project),
        ("State", state),
        ("Framework", f"{nb.framework} {nb.framework_version} ({nb.image})"),
        ("Editor", nb.editor),
        ("Flavor", nb.flavor or "-"),
        ("Resources", resources),
        ("Restart on timeout", "yes" if nb.restart_on_timeout else "no"),
        (
            "Waiting for a restart",
            f"{', '.join(nb.pending_restart)} (changed while it ran; applied at its next start)"
            if nb.pending_restart
            else None,
        ),
        (
            "Idle timeout",
            None if nb.idle_timeout_s is None else f"{durations.human(nb.idle_timeout_s)} (asked)",
        ),
        ("Host", nb.host or "-"),
        ("GPUs", gpus),
        ("URL", nb.url or "-"),
        ("Access", access(nb)),
        ("SSH", ssh_access(nb)),
        ("Activity", activity(nb)),
        ("Last start", took(nb.history or [], "RUNNING", "STARTING", "started")),
        ("Last stop", took(nb.history or [], "STOPPED", "STOPPING", "stopped")),
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
        ("Disk use", disk_use(nb)),
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
    fields = [(key, value) for key, value in fields if value is not None]
    if nb.progress is not None:
        fields.insert(4, ("Progress", progress(nb.progress)))
    if nb.forked_from is not None:
        fields.append(
            ("Forked from", f"{nb.forked_from.notebook} backup {nb.forked_from.snapshot}")
        )
    width = max(len(k) for k, _ in fields)
    for key, value in fields:
        out.write(f"{key + ':':<{width + 1}} {value}\n")
    if nb.ssh_keys:
        out.write("\nSSH keys:\n")
        table(
            ["TYPE", "FINGERPRINT", "COMMENT"],
            [[k.type, k.fingerprint, k.comment] for k in nb.ssh_keys],
            out,
        )
    if nb.history:
        out.write("\nHistory:\n")
        table(
            ["TIME", "STATE", "RUN", "REASON"],
            [[when(h.at), h.state, h.generation, h.reason] for h in nb.history],
            out,
        )


# ---------------------------------------------------------------- quotas and hosts


def used_of(used: int | None, limit: int | None) -> str:
    """``2/4``; ``-`` stands for a side the scheduler did not report."""
    return f"{'-' if used is None else used}/{'-' if limit is None else limit}"


def quota_detail(project: wire.Project, out: TextIO | None = None) -> None:
    """A project's limits next to what its STARTING and RUNNING notebooks use."""
    out = out or sys.stdout
    out.write(f"Project: {project.name}\n")
    if project.quota is None:
        out.write("Quota:   not reported by the scheduler\n")
        return
    q, u = project.quota, project.used

    def use(what: str) -> Any:
        return "-" if u is None else getattr(u, what)

    table(
        ["RESOURCE", "USED", "QUOTA"],
        [
            ["GPUs", use("gpus"), q.gpus],
            ["CPUs", use("cpus"), q.cpus],
            ["Notebooks", use("notebooks"), q.notebooks],
            ["GPUs per notebook", "", q.gpus_per_notebook],
            ["CPUs per notebook", "", q.cpus_per_notebook],
        ],
        out,
        numeric={1, 2},
    )
    idle = durations.human(q.idle_timeout_s) if q.idle_timeout_s else "never"
    out.write(f"Idle notebooks stop after: {idle}\n")
    out.write(f"Queued notebooks: {project.queued}\n")


PROJECT_HEADERS = ["PROJECT", "GPUS", "CPUS", "NOTEBOOKS", "QUEUED", "CREATED"]


def project_rows(items: Sequence[wire.Project]) -> list[list[Any]]:
    rows = []
    for p in items:
        rows.append(
            [
                p.name,
                *(
                    used_of(
                        None if p.used is None else getattr(p.used, what),
                        None if p.quota is None else getattr(p.quota, what),
                    )
                    for what in ("gpus", "cpus", "notebooks")
                ),
                p.queued,
                when(p.created_at),
            ]
        )
    return rows


def host_gpus(h: wire.Host) -> str:
    """Free/total per model, ``H100 6/8, L4 2/2``; the reason when the host reports none."""
    models = [(m.model, m.free, m.total) for m in h.gpu_models]
    if not models and h.gpus:
        # A scheduler that predates gpu_models: count from the GPU list.
        for model in sorted({g.model for g in h.gpus}):
            of_model = [g for g in h.gpus if g.model == model]
            free = sum(1 for g in of_model if g.notebook is None)
            models.append((model, free, len(of_model)))
    if not models:
        return f"- ({h.gpu_note})" if h.gpu_note else "-"
    return ", ".join(f"{model} {free}/{total}" for model, free, total in models)


def host_utilization(h: wire.Host) -> str:
    """The host's GPUs' utilization as its last heartbeat reported it: the mean, and the
    busiest when they differ (``41% (max 97%)``); ``-`` without GPUs."""
    if not h.gpus:
        return "-"
    figures = [g.utilization_pct for g in h.gpus]
    mean = round(sum(figures) / len(figures))
    return f"{mean}%" if max(figures) == mean else f"{mean}% (max {max(figures)}%)"


def host_disk(h: wire.Host) -> str:
    """Free/total of the workspace disk, ``412.3 GB/1.9 TB``; ``-`` when not reported."""
    if h.disk is None:
        return "-"
    return f"{size(h.disk.free_bytes)}/{size(h.disk.total_bytes)}"


def host_state(h: wire.Host) -> str:
    """A ready host that takes no new notebooks anyway says so (why: :func:`host_notes`)."""
    if h.state == "ready" and h.placement_blocked:
        return "ready (blocked)"
    return h.state


HOST_HEADERS = [
    "HOST",
    "STATE",
    "FLAVOR",
    "GPUS FREE",
    "GPU UTIL",
    "CPUS FREE",
    "DISK FREE",
    "NOTEBOOKS",
    "SSH",
    "HEARTBEAT",
]


def host_rows(items: Sequence[wire.Host], now: float | None = None) -> list[list[Any]]:
    return [
        [
            h.id,
            host_state(h),
            h.flavor or "-",
            host_gpus(h),
            host_utilization(h),
            f"{h.cpus_free}/{h.cpus}",
            host_disk(h),
            h.notebooks,
            h.ssh_address or "-",
            ago(h.last_heartbeat, now),
        ]
        for h in items
    ]


def host_notes(items: Sequence[wire.Host]) -> list[str]:
    """One line per host that takes no new notebooks for a reason besides its state."""
    return [
        f"{h.id}: no new notebooks: {h.placement_blocked}" for h in items if h.placement_blocked
    ]


#: What a catalog version's contents list first; the rest follow in name order.
_CONTENTS_FIRST = ("python",)
_EDITORS_LAST = ("jupyterlab", "code-server")


def contents_text(contents: dict[str, str], width: int = 0) -> list[str]:
    """``python 3.11.2, torch 2.13.0+cpu, jupyterlab 4.6.6, code-server 4.89.1``: Python
    first, the editors last, the framework's packages between; in lines of at most ``width``
    characters (0: one line), never splitting a name from its version."""

    def rank(name: str) -> tuple[int, int, str]:
        if name in _CONTENTS_FIRST:
            return (0, 0, name)
        if name in _EDITORS_LAST:
            return (2, _EDITORS_LAST.index(name), name)
        return (1, 0, name)

    lines: list[str] = []
    for item in (f"{name} {contents[name]}" for name in sorted(contents, key=rank)):
        if lines and (not width or len(lines[-1]) + len(item) + 2 <= width):
            lines[-1] += f", {item}"
        else:
            lines.append(item)
    return [line + "," for line in lines[:-1]] + lines[-1:]


#: How wide the catalog's contents column gets before it goes on in the next line.
CONTENTS_WIDTH = 64


def catalog_rows(frameworks: list[wire.CatalogFramework]) -> list[list[str]]:
    """One row per framework version, newest first, the default marked; what the image holds
    last, going on in rows of its own when long."""
    rows = []
    for f in frameworks:
        for i, v in enumerate(f.versions):
            contents = contents_text(v.contents, CONTENTS_WIDTH) or [
                "(no host has reported this image)"
            ]
            rows.append(
                [
                    f.name if i == 0 else "",
                    v.version + (" (default)" if i == 0 and len(f.versions) > 1 else ""),
                    ", ".join(f.editors) if i == 0 else "",
                    v.image,
                    str(v.hosts),
                    contents[0],
                ]
            )
            rows += [["", "", "", "", "", more] for more in contents[1:]]
    return rows
