"""The scheduler's database on SQLite: one file, serialized transactions, two connections.

* **On the event loop** (:meth:`SqliteDatabase.transaction`, :meth:`~SqliteDatabase.read`,
  :meth:`~SqliteDatabase.query_one`): a plain ``sqlite3`` connection used from the loop's own
  thread. The scheduler's statements are keyed lookups and small writes of tens of
  microseconds; a trip to a worker thread and back costs more than that, and a placement makes
  about ten of them (scripts/bench-scheduler measured the trips, with the GIL hand-offs they
  bring, as the largest part of a placement). WAL with ``synchronous=NORMAL`` means a commit
  does not wait for the disk.
* **Off the loop** (:meth:`SqliteDatabase.read_offloop`): an ``aiosqlite`` connection for reads
  that scan a lot (usage reports), so a big report never stalls heartbeats or placements.

Both kinds of block hold one :class:`asyncio.Lock`, so handlers never interleave statements or
see each other's uncommitted writes; a write transaction is ``BEGIN IMMEDIATE``, so another
process on the same file waits for it (``busy_timeout``). Off-loop reads run in their own
snapshot of the WAL and do not take the lock.

Migrations (:mod:`scheduler.schema`, their SQLite sections) are applied at :meth:`open`.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite

from scheduler.db import Database, IntegrityError, Row, Tx
from scheduler.schema import SCHEMA_MIGRATIONS_TABLE, for_dialect, migration_files

log = logging.getLogger(__name__)

_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA foreign_keys=ON",
    "PRAGMA busy_timeout=5000",
    "PRAGMA synchronous=NORMAL",
)


class SqliteTx(Tx):
    """The methods are coroutines so callers read the same either way; on the loop's connection
    they run at once, on the off-loop connection each is one trip to aiosqlite's thread."""

    dialect = "sqlite"

    def __init__(self, conn: sqlite3.Connection | aiosqlite.Connection) -> None:
        super().__init__()
        self._conn = conn
        self._sync = isinstance(conn, sqlite3.Connection)

    async def one(self, sql: str, params: Iterable[Any] = ()) -> Row | None:
        try:
            if self._sync:
                return self._conn.execute(sql, tuple(params)).fetchone()
            rows = await self._conn.execute_fetchall(sql, tuple(params))
        except sqlite3.IntegrityError as exc:
            raise IntegrityError(str(exc)) from exc
        return next(iter(rows), None)

    async def all(self, sql: str, params: Iterable[Any] = ()) -> list[Row]:
        try:
            if self._sync:
                return self._conn.execute(sql, tuple(params)).fetchall()
            return list(await self._conn.execute_fetchall(sql, tuple(params)))
        except sqlite3.IntegrityError as exc:
            raise IntegrityError(str(exc)) from exc

    async def run(self, sql: str, params: Iterable[Any] = ()) -> int:
        try:
            if self._sync:
                return self._conn.execute(sql, tuple(params)).rowcount
            cursor = await self._conn.execute(sql, tuple(params))
        except sqlite3.IntegrityError as exc:
            raise IntegrityError(str(exc)) from exc
        return cursor.rowcount

    async def run_many(self, sql: str, rows: Iterable[Iterable[Any]]) -> None:
        try:
            if self._sync:
                self._conn.executemany(sql, [tuple(r) for r in rows])
                return
            await self._conn.executemany(sql, [tuple(r) for r in rows])
        except sqlite3.IntegrityError as exc:
            raise IntegrityError(str(exc)) from exc


class SqliteDatabase(Database):
    dialect = "sqlite"

    def __init__(self, path: str) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._offloop: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        self._offloop_lock = asyncio.Lock()
        self._applied_at_open: list[str] = []

    @property
    def where(self) -> str:
        return f"sqlite://{Path(self.path).resolve()}" if self.path != ":memory:" else ":memory:"

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

    async def migrate(self) -> list[str]:
        """Open (which applies what is pending) and close again."""
        if self._conn is not None:
            return self._migrate()
        await self.open()
        try:
            return self._applied_at_open
        finally:
            await self.close()

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("database is not open")
        return self._conn

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        async with self._block("BEGIN IMMEDIATE") as tx:
            yield tx

    @asynccontextmanager
    async def read(self) -> AsyncIterator[Tx]:
        async with self._block("BEGIN") as tx:
            yield tx

    @asynccontextmanager
    async def read_offloop(self) -> AsyncIterator[Tx]:
        """A read-only snapshot on aiosqlite's thread."""
        if self._offloop is None:  # an in-memory database has only one connection
            async with self.read() as tx:
                yield tx
            return
        async with self._offloop_lock:
            await self._offloop.execute("BEGIN")
            try:
                yield SqliteTx(self._offloop)
            finally:
                await self._offloop.execute("COMMIT")

    async def query_one(self, sql: str, params: Iterable[Any] = ()) -> Row | None:
        async with self._lock:
            return self.conn.execute(sql, tuple(params)).fetchone()

    async def notify(self, channel: str, payload: str) -> None:
        """One process on a SQLite file: nobody else to tell."""

    async def listen(self, handlers: dict[str, Callable[[str], None]]) -> None:
        """One process on a SQLite file: nothing to listen to."""

    @asynccontextmanager
    async def _block(self, begin: str) -> AsyncIterator[Tx]:
        async with self._lock:
            conn = self.conn
            conn.execute(begin)
            tx = SqliteTx(conn)
            try:
                yield tx
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        tx.committed()

    def _migrate(self) -> list[str]:
        conn = self.conn
        conn.execute(SCHEMA_MIGRATIONS_TABLE)
        applied = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
        done = []
        for name, script in migration_files():
            if name in applied:
                continue
            log.info("database=%s applying migration %s", self.path, name)
            # executescript commits first; the explicit BEGIN/COMMIT makes the migration and
            # its schema_migrations row one transaction.
            escaped = name.replace("'", "''")
            try:
                conn.executescript(
                    "BEGIN IMMEDIATE;\n"
                    f"{for_dialect(script, self.dialect)}\n;"
                    f"INSERT INTO schema_migrations VALUES ('{escaped}', {time.time()});\n"
                    "COMMIT;"
                )
            except Exception:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            done.append(name)
        self._applied_at_open = done
        return done
