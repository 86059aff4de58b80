"""How a notebook reads to people, the same in the CLI and the web console: sizes, sync
progress, a place in the queue, a GPU's figures, the idle signal."""

from __future__ import annotations

from common import durations, wire


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
    "container": "starting the container",
    "editor": "starting the editor",
    "push": "saving workspace",
    "volumes-push": "pushing volumes",
    "checkpoint": "checkpointing workspace",
}


def progress(p: wire.Progress) -> str:
    """``restoring workspace 40% (412 of 1,030 files, 40.1 MB of 100.2 MB)``, ``starting
    jupyterlab``."""
    if p.phase == "editor" and p.detail:
        return f"starting {p.detail}"
    text = PHASES.get(p.phase, p.phase)
    if p.bytes_total:
        text += f" {100 * p.bytes_done // p.bytes_total}%"
    if p.files_total:
        text += f" ({p.files_done:,} of {p.files_total:,} files, "
        text += f"{size(p.bytes_done)} of {size(p.bytes_total)})"
    if p.detail:
        text += f": {p.detail}"
    return text


def queue_text(nb: wire.Notebook) -> str:
    """``QUEUED: waiting for 2 × H100, position 3`` (and what blocks it, if its quota)."""
    q = nb.queue
    if q is None:
        return f"{nb.state}: {nb.state_reason}"
    text = f"{nb.state}: waiting for {q.waiting_for}, position {q.position}"
    if q.blocked_by == "quota":
        text += ", blocked by project quota"
    return text


def notebook_gpu(g: wire.GpuRef) -> str:
    """``GPU-... (H100): 87% busy, 31.2/80.0 GiB used``, as its host's last heartbeat said."""
    text = f"{g.uuid} ({g.model})"
    figures = []
    if g.utilization_pct is not None:
        figures.append(f"{g.utilization_pct}% busy")
    if g.memory_used_mb is not None and g.memory_total_mb:
        figures.append(f"{g.memory_used_mb / 1024:.1f}/{g.memory_total_mb / 1024:.1f} GiB used")
    return f"{text}: {', '.join(figures)}" if figures else text


#: Last active within this long (and within half its idle timeout), a notebook reads "active".
ACTIVE_S = 300.0


def idle_text(status: wire.IdleStatus) -> str:
    """A RUNNING notebook's idle signal: "active 2 min ago (kernel busy), stops after 60 min
    idle" or "idle for 42 min (last: kernel), stops at 60 min"."""
    quiet, limit = status.idle_s, status.timeout_s
    active_within = ACTIVE_S if limit is None else min(ACTIVE_S, limit / 2)
    if quiet < active_within:
        said = f"active {durations.human(quiet)} ago ({status.signal})"
        stops = "" if limit is None else f", stops after {durations.human(limit)} idle"
    else:
        said = f"idle for {durations.human(quiet)} (last: {status.signal})"
        stops = "" if limit is None else f", stops at {durations.human(limit)}"
    return said + (stops or ", no idle timeout")


#: The order a start's and a stop's steps happen in (others after, by name).
_STEP_ORDER = ("wait", "restore", "volumes", "container", "editor", "push")


def took(history: list[wire.StateChange], ends: str, began: str, verb: str) -> str | None:
    """How long the last start (``ends="RUNNING"``, ``began="STARTING"``) or stop
    (``STOPPED``, ``STOPPING``) took, from the history, with the agent's steps: "started in
    2.6 s (restore 0.4, container 0.5, editor 1.6, other 0.1)"; ``None`` when there is none."""
    for index in range(len(history) - 1, 0, -1):
        end = history[index]
        if end.state != ends:
            continue
        start = next(
            (
                h
                for h in reversed(history[:index])
                if h.state == began and h.generation == end.generation
            ),
            None,
        )
        if start is None:
            return None
        total = max(0.0, end.at - start.at)
        steps = sorted(
            end.phases.items(),
            key=lambda kv: (_STEP_ORDER.index(kv[0]) if kv[0] in _STEP_ORDER else 99, kv[0]),
        )
        shown = [f"{name} {seconds:.1f}" for name, seconds in steps if seconds >= 0.05]
        other = total - sum(end.phases.values())
        if shown and other >= 0.05:
            shown.append(f"other {other:.1f}")
        return f"{verb} in {total:.1f} s" + (f" ({', '.join(shown)})" if shown else "")
    return None
