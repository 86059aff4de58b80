"""The scheduler's SQLite database: migrations, serialized transactions, and two connections.

* **On the event loop** (:meth:`Database.transaction`, :meth:`Database.read`,
  :meth:`Database.query_one`): a plain ``sqlite3`` connection used from the loop's own thread.
  The scheduler's statements are keyed lookups and small writes of tens of microseconds; a trip
  to a worker thread and back costs more than that, and a placement makes about twenty of them
  (scripts/bench-scheduler measured the trips, with the GIL hand-offs they bring, as the largest
  part of a placement). WAL with ``synchronous=NORMAL`` means a commit does not wait for the disk.
* **Off the loop** (:meth:`Database.read_offloop`): an ``aiosqlite`` connection for reads that
  scan a lot (usage reports), so a big report never stalls heartbeats or placements.

Both kinds of block hold one :class:`asyncio.Lock`, so handlers never interleave statements or
see each other's uncommitted writes; callers must not await anything but the database inside a
block: no Docker, no network, no sleeping. Off-loop reads run in their own snapshot of the WAL
and do not take the lock.

Migrations are the files ``migrations/NNNN_*.sql``, applied in name order at :meth:`open` and
recorded in ``schema_migrations``.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any

import aiosqlite

log = logging.getLogger(__name__)

Row = sqlite3.Row

_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA foreign_keys=ON",
    "PRAGMA busy_timeout=5000",
    "PRAGMA synchronous=NORMAL",
)


class Tx:
    """Statements inside one transaction, plus callbacks to run once it has committed.

    The methods are coroutines so callers read the same either way; on the loop's connection
    they run at once, on the off-loop connection each is one trip to aiosqlite's thread."""

    def __init__(self, conn: sqlite3.Connection | aiosqlite.Connection) -> None:
        self._conn = conn
        self._sync = isinstance(conn, sqlite3.Connection)
        self._after_commit: list[Callable[[], None]] = []

    async def one(self, sql: str, params: Iterable[Any] = ()) -> Row | None:
        if self._sync:
            return self._conn.execute(sql, tuple(params)).fetchone()
        rows = await self._conn.execute_fetchall(sql, tuple(params))
        return next(iter(rows), None)

    async def all(self, sql: str, params: Iterable[Any] = ()) -> list[Row]:
        if self._sync:
            return self._conn.execute(sql, tuple(params)).fetchall()
        return list(await self._conn.execute_fetchall(sql, tuple(params)))

    async def run(self, sql: str, params: Iterable[Any] = ()) -> int:
        """Execute a write; returns the number of rows it changed."""
        if self._sync:
            return self._conn.execute(sql, tuple(params)).rowcount
        cursor = await self._conn.execute(sql, tuple(params))
        return cursor.rowcount

    async def run_many(self, sql: str, rows: Iterable[Iterable[Any]]) -> None:
        """Execute one write for each parameter tuple of ``rows``."""
        if self._sync:
            self._conn.executemany(sql, [tuple(r) for r in rows])
            return
        await self._conn.executemany(sql, [tuple(r) for r in rows])

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` after a successful commit (e.g. wake long-polls); never on rollback."""
        self._after_commit.append(callback)


class WriteBehind:
    """Reports held in memory as they arrive (``_pending``, keyed so the latest wins) and
    written together in one transaction by :meth:`flush`: a busy fleet costs one write per
    flush, not one per report. Subclasses set ``db`` and ``_pending`` and write in ``_write``."""

    db: Database
    _pending: dict[str, Any]

    async def _write(self, tx: Tx, pending: dict[str, Any]) -> None:
        raise NotImplementedError

    async def flush(self, tx: Tx | None = None) -> int:
        """Write what is pending, in ``tx`` or a transaction of its own; returns how many."""
        if not self._pending:
            return 0
        pending, self._pending = self._pending, {}
        if tx is None:
            async with self.db.transaction() as own:
                await self._write(own, pending)
        else:
            await self._write(tx, pending)
        return len(pending)


class Database:
    def __init__(self, path: str) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._offloop: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        self._offloop_lock = asyncio.Lock()

    async def open(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        for pragma in _PRAGMAS:
            conn.execute(pragma)
        self._conn = conn
        self._migrate()
        if self.path != ":memory:":
            offloop = await aiosqlite.connect(self.path, isolation_level=None)
            offloop.row_factory = sqlite3.Row
            for pragma in _PRAGMAS:
                await offloop.execute(pragma)
            await offloop.execute("PRAGMA query_only=ON")
            self._offloop = offloop

    async def close(self) -> None:
        if self._offloop is not None:
            await self._offloop.close()
            self._offloop = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("database is not open")
        return self._conn

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        """A write transaction: commits on normal exit, rolls back on any exception."""
        async with self._block("BEGIN IMMEDIATE") as tx:
            yield tx

    @asynccontextmanager
    async def read(self) -> AsyncIterator[Tx]:
        """A read-only snapshot (it must not write)."""
        async with self._block("BEGIN") as tx:
            yield tx

    @asynccontextmanager
    async def read_offloop(self) -> AsyncIterator[Tx]:
        """A read-only snapshot on aiosqlite's thread, for reads that scan many rows."""
        if self._offloop is None:  # an in-memory database has only one connection
            async with self.read() as tx:
                yield tx
            return
        async with self._offloop_lock:
            await self._offloop.execute("BEGIN")
            try:
                yield Tx(self._offloop)
            finally:
                await self._offloop.execute("COMMIT")

    async def query_one(self, sql: str, params: Iterable[Any] = ()) -> Row | None:
        """One single-statement read (atomic by itself): no BEGIN/COMMIT."""
        async with self._lock:
            return self.conn.execute(sql, tuple(params)).fetchone()

    @asynccontextmanager
    async def _block(self, begin: str) -> AsyncIterator[Tx]:
        async with self._lock:
            conn = self.conn
            conn.execute(begin)
            tx = Tx(conn)
            try:
                yield tx
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        for callback in tx._after_commit:
            try:
                callback()
            except Exception:
                log.exception("after-commit callback %r failed; the commit stands", callback)

    def _migrate(self) -> None:
        conn = self.conn
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version TEXT PRIMARY KEY, applied_at REAL NOT NULL)"
        )
        applied = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
        for name, script in _migration_files():
            if name in applied:
                continue
            log.info("database=%s applying migration %s", self.path, name)
            # executescript commits first; the explicit BEGIN/COMMIT makes the migration and
            # its schema_migrations row one transaction.
            escaped = name.replace("'", "''")
            try:
                conn.executescript(
                    "BEGIN IMMEDIATE;\n"
                    f"{script}\n;"
                    f"INSERT INTO schema_migrations VALUES ('{escaped}', {time.time()});\n"
                    "COMMIT;"
                )
            except Exception:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise


def _migration_files() -> list[tuple[str, str]]:
    folder = resources.files("scheduler") / "migrations"
    found = [
        (entry.name.removesuffix(".sql"), entry.read_text(encoding="utf-8"))
        for entry in folder.iterdir()
        if entry.name.endswith(".sql")
    ]
    return sorted(found)
