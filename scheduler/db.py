"""The scheduler's SQLite database: one aiosqlite connection, migrations, serialized transactions.

All access goes through :meth:`Database.transaction` (writes, ``BEGIN IMMEDIATE``) or
:meth:`Database.read` (a consistent snapshot). Both hold one :class:`asyncio.Lock`, so handlers
sharing the single connection never interleave statements or see each other's uncommitted
writes. Callers must not await anything but the database inside either block: no Docker, no
network, no sleeping.

Migrations are the files ``migrations/NNNN_*.sql``, applied in name order at :meth:`open` and
recorded in ``schema_migrations``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any

import aiosqlite

log = logging.getLogger(__name__)

Row = aiosqlite.Row


class Tx:
    """Statements inside one transaction, plus callbacks to run once it has committed."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn
        self._after_commit: list[Callable[[], None]] = []

    # Each statement is one trip to aiosqlite's thread (execute and fetch together, no cursor
    # to close afterwards): the trip, not SQLite, is most of a statement's time, and every
    # transaction holds the database lock for all of its trips.

    async def one(self, sql: str, params: Iterable[Any] = ()) -> Row | None:
        rows = await self._conn.execute_fetchall(sql, tuple(params))
        return next(iter(rows), None)

    async def all(self, sql: str, params: Iterable[Any] = ()) -> list[Row]:
        return list(await self._conn.execute_fetchall(sql, tuple(params)))

    async def run(self, sql: str, params: Iterable[Any] = ()) -> int:
        """Execute a write; returns the number of rows it changed."""
        cursor = await self._conn.execute(sql, tuple(params))
        return cursor.rowcount

    async def run_many(self, sql: str, rows: Iterable[Iterable[Any]]) -> None:
        """Execute one write for each parameter tuple of ``rows``."""
        await self._conn.executemany(sql, [tuple(r) for r in rows])

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` after a successful commit (e.g. wake long-polls); never on rollback."""
        self._after_commit.append(callback)


class Database:
    def __init__(self, path: str) -> None:
        self.path = path
        self._conn: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = await aiosqlite.connect(self.path, isolation_level=None)
        conn.row_factory = aiosqlite.Row
        await conn.execute("PRAGMA journal_mode=WAL")
        await conn.execute("PRAGMA foreign_keys=ON")
        await conn.execute("PRAGMA busy_timeout=5000")
        await conn.execute("PRAGMA synchronous=NORMAL")
        self._conn = conn
        await self._migrate()

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    @property
    def conn(self) -> aiosqlite.Connection:
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

    async def query_one(self, sql: str, params: Iterable[Any] = ()) -> Row | None:
        """One single-statement read (atomic by itself): no BEGIN/COMMIT round trips."""
        async with self._lock:
            rows = await self.conn.execute_fetchall(sql, tuple(params))
        return next(iter(rows), None)

    @asynccontextmanager
    async def _block(self, begin: str) -> AsyncIterator[Tx]:
        async with self._lock:
            conn = self.conn
            await conn.execute(begin)
            tx = Tx(conn)
            try:
                yield tx
            except BaseException:
                await conn.execute("ROLLBACK")
                raise
            await conn.execute("COMMIT")
        for callback in tx._after_commit:
            try:
                callback()
            except Exception:
                log.exception("after-commit callback %r failed; the commit stands", callback)

    async def _migrate(self) -> None:
        conn = self.conn
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version TEXT PRIMARY KEY, applied_at REAL NOT NULL)"
        )
        async with conn.execute("SELECT version FROM schema_migrations") as cursor:
            applied = {row[0] for row in await cursor.fetchall()}
        for name, script in _migration_files():
            if name in applied:
                continue
            log.info("database=%s applying migration %s", self.path, name)
            # executescript commits first; the explicit BEGIN/COMMIT makes the migration and
            # its schema_migrations row one transaction.
            escaped = name.replace("'", "''")
            try:
                await conn.executescript(
                    "BEGIN IMMEDIATE;\n"
                    f"{script}\n;"
                    f"INSERT INTO schema_migrations VALUES ('{escaped}', {time.time()});\n"
                    "COMMIT;"
                )
            except Exception:
                if conn.in_transaction:
                    await conn.execute("ROLLBACK")
                raise


def _migration_files() -> list[tuple[str, str]]:
    folder = resources.files("scheduler") / "migrations"
    found = [
        (entry.name.removesuffix(".sql"), entry.read_text(encoding="utf-8"))
        for entry in folder.iterdir()
        if entry.name.endswith(".sql")
    ]
    return sorted(found)
