"""Workspace snapshots (backups), sync progress, and where a fork restores from.

Agents report every committed snapshot with the ids retention kept; the scheduler keeps one row
per snapshot (``retained = 0`` once retention dropped it, since storage billing needs the size
history) and answers ``nbfleet notebook backup list`` from them. Progress reports are held in
memory only: they describe the sync happening now, and a scheduler restart loses nothing a user
needs (the next report arrives within a second).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from common import wire
from common.errors import not_found
from common.states import ON_HOST, NotebookState
from scheduler.db import Database, Row, Tx

S = NotebookState


def _info(row: Row) -> wire.SnapshotInfo:
    return wire.SnapshotInfo(
        id=row["id"],
        created_at=row["created_at"],
        kind=row["kind"],
        files=row["files"],
        logical_bytes=row["logical_bytes"],
        stored_bytes=row["stored_bytes"],
    )


async def latest_snapshot(tx: Tx, notebook_id: str) -> wire.SnapshotInfo | None:
    row = await tx.one(
        "SELECT * FROM snapshots WHERE notebook_id = ? AND retained = 1 "
        "ORDER BY created_at DESC, id DESC LIMIT 1",
        (notebook_id,),
    )
    return None if row is None else _info(row)


async def retained_snapshot(tx: Tx, notebook_id: str, snapshot_id: str) -> wire.SnapshotInfo:
    row = await tx.one(
        "SELECT * FROM snapshots WHERE notebook_id = ? AND id = ? AND retained = 1",
        (notebook_id, snapshot_id),
    )
    if row is None:
        raise not_found("backup", f"{snapshot_id} of notebook {notebook_id}")
    return _info(row)


async def restore_source(tx: Tx, row: Row) -> wire.RestoreSource | None:
    """Where the agent restores a fork's workspace from: the source snapshot until the fork has
    a snapshot of its own, then nothing (its own latest snapshot, as for any notebook)."""
    if not row["fork_notebook"]:
        return None
    own = await tx.one("SELECT 1 FROM snapshots WHERE notebook_id = ? LIMIT 1", (row["id"],))
    if own is not None:
        return None
    return wire.RestoreSource(notebook=row["fork_notebook"], snapshot=row["fork_snapshot"])


@dataclass
class _Current:
    generation: int
    progress: wire.Progress


class ProgressBoard:
    """The latest sync progress per notebook run; cleared when the agent reports ``None``."""

    def __init__(self) -> None:
        self._latest: dict[str, _Current] = {}

    def update(self, notebook: str, generation: int, progress: wire.Progress | None) -> None:
        current = self._latest.get(notebook)
        if current is not None and current.generation > generation:
            return  # a late report from an older run
        if progress is None:
            self._latest.pop(notebook, None)
        else:
            self._latest[notebook] = _Current(generation, progress)

    def get(self, notebook: str, generation: int, state: NotebookState) -> wire.Progress | None:
        current = self._latest.get(notebook)
        if current is None or current.generation != generation or state not in ON_HOST:
            return None
        return current.progress


class SnapshotService:
    def __init__(self, db: Database, clock: Callable[[], float], progress: ProgressBoard) -> None:
        self.db = db
        self.clock = clock
        self.progress = progress

    async def record(self, host_id: str, report: wire.SnapshotReport) -> None:
        """Store a snapshot an agent committed. Replays are harmless (same primary key); a
        report from a host that does not hold the notebook is ignored, as for transitions."""
        snap = report.snapshot
        async with self.db.transaction() as tx:
            row = await tx.one(
                "SELECT host_id, last_host_id FROM notebooks WHERE id = ?", (report.notebook,)
            )
            if row is None or host_id not in (row["host_id"], row["last_host_id"]):
                return
            await tx.run(
                "INSERT INTO snapshots (notebook_id, id, created_at, kind, files, logical_bytes, "
                "stored_bytes, generation, reported_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (notebook_id, id) DO NOTHING",
                (
                    report.notebook,
                    snap.id,
                    snap.created_at,
                    snap.kind,
                    snap.files,
                    snap.logical_bytes,
                    snap.stored_bytes,
                    report.generation,
                    self.clock(),
                ),
            )
            if report.retained is not None:
                kept = set(report.retained) | {snap.id}
                marks = ", ".join("?" for _ in kept)
                await tx.run(
                    f"UPDATE snapshots SET retained = 0 WHERE notebook_id = ? "
                    f"AND id NOT IN ({marks})",
                    (report.notebook, *sorted(kept)),
                )

    async def backups(self, notebook_id: str) -> wire.SnapshotList:
        async with self.db.read() as tx:
            rows = await tx.all(
                "SELECT * FROM snapshots WHERE notebook_id = ? AND retained = 1 "
                "ORDER BY created_at DESC, id DESC",
                (notebook_id,),
            )
            return wire.SnapshotList(items=[_info(r) for r in rows])

    async def report_progress(self, host_id: str, report: wire.ProgressReport) -> None:
        async with self.db.read() as tx:
            row = await tx.one(
                "SELECT host_id, generation FROM notebooks WHERE id = ?", (report.notebook,)
            )
        if row is None or row["host_id"] != host_id or row["generation"] != report.generation:
            return
        self.progress.update(report.notebook, report.generation, report.progress)
