"""Workspace snapshots (backups), sync progress, and where a fork restores from.

Agents report every committed snapshot with the ids retention kept; the scheduler keeps one row
per snapshot (``retained = 0`` once retention dropped it, since storage billing needs the size
history) and answers ``nbfleet notebook backup list`` from them. Progress reports describe the
sync happening now: held in memory as they arrive and written once per loop tick
(:class:`ProgressBoard`), so whichever replica a user asks shows them; a crash loses at most one
tick of them, and the next report arrives within a second.
"""

from __future__ import annotations

from collections.abc import Callable

from common import wire
from common.errors import not_found
from common.states import ON_HOST, NotebookState
from scheduler.db import Database, Row, Tx, WriteBehind, run_values

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


class ProgressBoard(WriteBehind):
    """The latest sync progress per notebook run, from agents' reports (latest wins; ``None``
    clears it). Held in memory and written once per loop tick (one transaction for all), so
    every replica shows it, not only the one the report reached; :meth:`get` gives what this
    replica holds and has not written yet, which is newer than the stored figure."""

    def __init__(self, db: Database) -> None:
        self.db = db
        #: notebook → (generation, progress or None to clear).
        self._pending: dict[str, tuple[int, wire.Progress | None]] = {}

    def update(self, notebook: str, generation: int, progress: wire.Progress | None) -> None:
        held = self._pending.get(notebook)
        if held is not None and held[0] > generation:
            return  # a late report from an older run
        self._pending[notebook] = (generation, progress)

    def get(
        self, notebook: str, generation: int, state: NotebookState, stored: wire.Progress | None
    ) -> wire.Progress | None:
        """What to show: the report held here if any, else ``stored`` (the database's)."""
        if state not in ON_HOST:
            return None
        held = self._pending.get(notebook)
        if held is None or held[0] != generation:
            return stored
        return held[1]

    async def _write(self, tx: Tx, pending: dict[str, tuple[int, wire.Progress | None]]) -> None:
        await run_values(
            tx,
            "UPDATE notebooks SET progress = v.column1, progress_generation = v.column2 "
            "FROM (VALUES {values}) AS v "
            "WHERE notebooks.id = v.column3 AND notebooks.generation = v.column2",
            "(?, CAST(? AS BIGINT), ?)",
            (
                (None if p is None else wire.encode(p).decode(), generation, notebook)
                for notebook, (generation, p) in pending.items()
            ),
        )


def stored_progress(row: Row) -> wire.Progress | None:
    """The progress written for the notebook's current run, if any."""
    if row["progress"] is None or row["progress_generation"] != row["generation"]:
        return None
    return wire.decode(row["progress"].encode(), wire.Progress)


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
