"""Where the scheduler's time goes during scripts/bench-scheduler's phases.

Two ways, both optional and both for the scheduler process only:

* ``--py-spy DIR``: a ``py-spy record`` attached to the scheduler for each timed phase (sampling,
  so the scheduler runs at full speed), collapsed stacks in ``DIR/<phase>.txt`` and a summary of
  the hottest functions per phase. py-spy is a developer tool, not a project dependency
  (``pip install py-spy``).
* ``--profile FILE``: the whole run under cProfile (deterministic, slower), summarised at the end.

Also the machine-wide CPU accounting that tells whether something else was running during a
phase (other people's tests on a shared machine skew every figure), and the CPU use of a
process tree (the bench's own PostgreSQL server).
"""

from __future__ import annotations

import os
import pstats
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.+?) \((?P<file>[^():]+\.py)(?::\d+)?\)$")


def machine_busy_seconds() -> float:
    """CPU seconds all processes have used so far, summed over CPUs (Linux /proc/stat)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return 0.0
    ticks = [int(v) for v in fields[:8]]
    idle = ticks[3] + ticks[4]  # idle, iowait
    return (sum(ticks) - idle) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(root_pid: int) -> float | None:
    """CPU seconds a process and its children have used so far, the children that exited
    included (Linux /proc; None when ``root_pid`` is gone). For a server that forks a process
    per connection, as PostgreSQL does: its children are one level deep."""
    tick = os.sysconf("SC_CLK_TCK")
    root = _stat_fields(root_pid)
    if root is None:
        return None
    # utime, stime, cutime, cstime: fields 14-17 of stat(5), counted after the ")".
    total = sum(int(v) for v in root[11:15])
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None and fields[1] == str(root_pid):  # field 4, ppid
            total += int(fields[11]) + int(fields[12])
    return total / tick


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat from its 3rd field (state) on; None when the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None


class PySpy:
    """One ``py-spy record`` per phase, writing collapsed stacks."""

    def __init__(self, directory: Path, exe: str | None = None) -> None:
        found = exe or shutil.which("py-spy")
        if found is None:
            raise SystemExit(
                "bench-scheduler: --py-spy needs the py-spy program "
                "(pip install py-spy, a developer tool, in any venv on PATH)"
            )
        self.exe = found
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self._proc: subprocess.Popen[bytes] | None = None
        self.outputs: dict[str, Path] = {}

    def start(self, pid: int, phase: str) -> None:
        out = self.directory / f"{phase}.txt"
        self.outputs[phase] = out
        self._proc = subprocess.Popen(
            [
                self.exe,
                "record",
                "--pid",
                str(pid),
                "--rate",
                "200",
                "--format",
                "raw",
                "--nonblocking",
                "--output",
                str(out),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=open(self.directory / f"{phase}.log", "wb"),  # noqa: SIM115
        )

    def stop(self) -> None:
        """SIGINT makes py-spy write its file."""
        if self._proc is None:
            return
        self._proc.send_signal(signal.SIGINT)
        try:
            self._proc.wait(30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None


def summarize_collapsed(path: Path, top: int = 20) -> str:
    """The functions with the most samples in a collapsed-stacks file: own samples (the
    frame on top) and inclusive ones (anywhere on the stack, counted once per stack)."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short(f) for f in stack.split(";") if _FRAME.match(f)]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if not total:
        return f"{path}: no samples"
    lines = [f"{path.name}: {total} samples", "  own time:"]
    lines += [f"    {100 * n / total:5.1f}%  {f}" for f, n in own.most_common(top)]
    lines.append("  inclusive (scheduler and aiohttp/aiosqlite frames):")
    ours = [
        (f, n)
        for f, n in inclusive.most_common()
        if any(p in f for p in ("scheduler/", "common/", "aiohttp/", "aiosqlite/"))
    ]
    lines += [f"    {100 * n / total:5.1f}%  {f}" for f, n in ours[:top]]
    return "\n".join(lines)


def summarize_sql(phase: str, stats: dict[str, list[float]], top: int = 15) -> str:
    """The statements that took the most sqlite time in a phase (bench/scheduler_sqltrace.py)."""
    total = sum(seconds for _, seconds in stats.values())
    lines = [f"SQL during {phase}: {total:.2f}s in sqlite, top statements by time:"]
    ranked = sorted(stats.items(), key=lambda item: -item[1][1])[:top]
    for sql, (count, seconds) in ranked:
        text = " ".join(sql.split())
        text = text if len(text) <= 110 else text[:107] + "..."
        lines.append(
            f"  {seconds:7.2f}s {int(count):7d}x {1e6 * seconds / max(count, 1):8.0f}us  {text}"
        )
    return "\n".join(lines)


def _short(frame: str) -> str:
    """``func (file:line)`` with the file shortened to its last two path parts."""
    match = _FRAME.match(frame)
    assert match is not None
    parts = match["file"].split("/")
    return f"{match['func']} ({'/'.join(parts[-2:])})"


def print_cprofile(path: Path) -> None:
    if not path.exists():
        print(f"bench-scheduler: no profile was written to {path}", file=sys.stderr)
        return
    print(f"\nscheduler profile ({path}), top functions by own time:", file=sys.stderr)
    stats = pstats.Stats(str(path), stream=sys.stderr)
    stats.sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats(40)
