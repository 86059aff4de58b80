"""Run the scheduler with every SQL statement timed: scripts/bench-scheduler ``--sql-stats DIR``.

    python -m bench.scheduler_sqltrace DIR run --config FILE [--log-level L]

A measuring aid, not part of the scheduler: it starts ``scheduler.main.main`` unchanged, with
``sqlite3.connect`` handing out a connection class that times each ``execute`` and the fetches
of its cursor (the sqlite work aiosqlite runs in its thread), keyed by the statement's text.
Each SIGUSR1 writes what was counted since the previous one to ``DIR/<n>.json`` (n = 0, 1, ...)
as ``{sql: [executions, seconds]}`` and starts counting afresh, so the bench gets one file
per phase. Py-spy cannot tell which statement the sqlite thread is in; this can.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import Any

_lock = threading.Lock()
_stats: dict[str, list[float]] = {}


def _count(sql: str, seconds: float, executions: int = 0) -> None:
    """Add ``seconds`` to the statement; fetches add time, not executions."""
    with _lock:
        entry = _stats.get(sql)
        if entry is None:
            _stats[sql] = [executions, seconds]
        else:
            entry[0] += executions
            entry[1] += seconds


class _TimedCursor(sqlite3.Cursor):
    sql = ""

    def fetchone(self) -> Any:
        started = time.perf_counter()
        try:
            return super().fetchone()
        finally:
            _count(self.sql, time.perf_counter() - started)

    def fetchall(self) -> list[Any]:
        started = time.perf_counter()
        try:
            return super().fetchall()
        finally:
            _count(self.sql, time.perf_counter() - started)


class _TimedConnection(sqlite3.Connection):
    def execute(self, sql: str, parameters: Any = ()) -> sqlite3.Cursor:  # type: ignore[override]
        started = time.perf_counter()
        cursor = self.cursor(_TimedCursor)
        cursor.sql = sql
        try:
            return cursor.execute(sql, parameters)
        finally:
            _count(sql, time.perf_counter() - started, executions=1)


def _install(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    real_connect = sqlite3.connect
    sequence = iter(range(1_000_000))

    def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        kwargs.setdefault("factory", _TimedConnection)
        return real_connect(*args, **kwargs)

    def dump(signum: int, frame: Any) -> None:
        with _lock:
            snapshot = dict(_stats)
            _stats.clear()
        target = out / f"{next(sequence)}.json"
        partial = target.with_suffix(".tmp")
        partial.write_text(json.dumps(snapshot))
        partial.rename(target)

    sqlite3.connect = connect  # type: ignore[assignment]
    signal.signal(signal.SIGUSR1, dump)


def main() -> int:
    out, argv = Path(sys.argv[1]), sys.argv[2:]
    _install(out)
    from scheduler.main import main as scheduler_main

    return scheduler_main(argv)


if __name__ == "__main__":
    sys.exit(main())
