"""Fresh PostgreSQL databases for tests, on the throwaway cluster scripts/test starts.

API:

``POSTGRES_URL_ENV = "NBFLEET_TEST_POSTGRES_URL"``
    The environment variable holding a superuser's URL of that cluster
    (``postgresql://nbfleet@127.0.0.1:PORT/postgres``; scripts/test sets it).

``postgres_url() -> str``
    Its value; fails the test (never skips) with how to get one when it is unset.

``PostgresDatabases(admin_url)``: ``.fresh() -> str`` the URL of a new database copied
    from a template migrated once with ``nbfleet-scheduler migrate``'s code (the next one is
    made in the background while a test runs, so a test waits for none), ``.empty() -> str``
    the URL of a new database with no migration applied, ``.drop(url)``
    removes one in the background (closing what is still connected), ``.close()`` waits for
    that and drops the rest.

``committed_rows(database, sql, params) -> list[tuple]``, ``committed_tables(database)`` and
``committed_snapshot(database) -> {table: sorted rows}``
    What a database (a SQLite file or a PostgreSQL URL) holds as committed, read through a
    connection of its own; callable from sync code while a test's event loop runs.

``run_sync(coro)``
    Run a coroutine to its end on the background loop (a thread of its own), and return its
    result.

``postgres_databases``
    A module-scoped pytest fixture: one ``PostgresDatabases`` per test module, closed after
    it. A conftest exposes it by importing it (``tests/e2e``, ``tests/integration``).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sqlite3
import threading
from collections.abc import Coroutine, Iterable, Iterator
from concurrent.futures import Future
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from scheduler.db_postgres import PostgresDatabase
from scheduler.schema import postgres_params

POSTGRES_URL_ENV = "NBFLEET_TEST_POSTGRES_URL"

T = TypeVar("T")


def postgres_url() -> str:
    url = os.environ.get(POSTGRES_URL_ENV, "")
    if not url:
        pytest.fail(
            f"{POSTGRES_URL_ENV} is not set, and the scheduler's tests run against PostgreSQL "
            "as well as SQLite. scripts/test starts a throwaway cluster and sets it; to run "
            "pytest by hand, start one the same way (scripts/lib.sh: nbf_start_postgres DIR) "
            f"and export {POSTGRES_URL_ENV}=<its URL>",
            pytrace=False,
        )
    return url


class _Background:
    """An event loop in a daemon thread: sync code (fixtures, ``Harness.snapshot``) may run
    while a test's loop is running, and a loop cannot be re-entered."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name="postgres-tests", daemon=True).start()

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)


_background: _Background | None = None


def _submit(coro: Coroutine[Any, Any, T]) -> Future[T]:
    global _background
    if _background is None:
        _background = _Background()
    return _background.submit(coro)


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    return _submit(coro).result()


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, ""))


class PostgresDatabases:
    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        # One per pytest process, so runs on one cluster do not collide.
        self._template = f"nbfleet_template_{os.getpid()}_{secrets.token_hex(3)}"
        self._template_made: Future[None] | None = None
        self._next: Future[str] | None = None
        self._pending: list[Future[None]] = []
        self._admin_conn: asyncpg.Connection | None = None
        self._admin_lock: asyncio.Lock | None = None

    def fresh(self) -> str:
        if self._template_made is None:
            self._template_made = _submit(self._create_template())
        if self._next is None:
            self._next = _submit(self._create())
        url = self._next.result()
        self._next = _submit(self._create())
        return url

    def empty(self) -> str:
        """The URL of a new database without any migration (drop it with :meth:`drop`)."""
        name = f"nbfleet_test_{secrets.token_hex(6)}"
        run_sync(self._admin(f'CREATE DATABASE "{name}"'))
        return with_database(self.admin_url, name)

    def drop(self, url: str) -> None:
        self._pending.append(_submit(self._drop(urlsplit(url).path.lstrip("/"))))

    def close(self) -> None:
        if self._next is not None:
            self.drop(self._next.result())
            self._next = None
        for future in self._pending:
            future.result()
        self._pending.clear()
        if self._template_made is not None:
            self._template_made.result()
            run_sync(self._drop(self._template))
            self._template_made = None
        if self._admin_conn is not None:
            run_sync(self._admin_conn.close())
            self._admin_conn = None

    async def _create_template(self) -> None:
        await self._admin(f'DROP DATABASE IF EXISTS "{self._template}"')
        await self._admin(f'CREATE DATABASE "{self._template}"')
        await PostgresDatabase(with_database(self.admin_url, self._template)).migrate()

    async def _create(self) -> str:
        assert self._template_made is not None
        await asyncio.wrap_future(self._template_made)
        name = f"nbfleet_test_{secrets.token_hex(6)}"
        await self._admin(f'CREATE DATABASE "{name}" TEMPLATE "{self._template}"')
        return with_database(self.admin_url, name)

    async def _drop(self, name: str) -> None:
        await self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    async def _admin(self, statement: str) -> None:
        """On one connection, one statement at a time (the background loop runs several of
        these coroutines at once)."""
        if self._admin_lock is None:
            self._admin_lock = asyncio.Lock()
        async with self._admin_lock:
            if self._admin_conn is None:
                self._admin_conn = await asyncpg.connect(self.admin_url)
            await self._admin_conn.execute(statement)


@pytest.fixture(scope="session")
def postgres_databases() -> Iterator[PostgresDatabases]:
    """Every tier's databases, from one template migrated once per session."""
    databases = PostgresDatabases(postgres_url())
    yield databases
    databases.close()


def _is_postgres(database: str) -> bool:
    return database.startswith(("postgresql:", "postgres:"))


def committed_rows(database: str, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` (``?`` placeholders) as committed in ``database``."""
    if _is_postgres(database):
        return run_sync(_postgres_rows(database, [(sql, tuple(params))]))[0]
    with sqlite3.connect(database) as conn:
        return conn.execute(sql, tuple(params)).fetchall()


def committed_tables(database: str) -> list[str]:
    """The names of ``database``'s tables."""
    if _is_postgres(database):
        sql = "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
    else:
        sql = "SELECT name FROM sqlite_master WHERE type = 'table'"
    return [r[0] for r in committed_rows(database, sql)]


def committed_snapshot(database: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every committed row of every table, sorted."""
    tables = committed_tables(database)
    queries = [(f"SELECT * FROM {t}", ()) for t in tables]
    if _is_postgres(database):
        results = run_sync(_postgres_rows(database, queries))
    else:
        with sqlite3.connect(database) as conn:
            results = [conn.execute(sql).fetchall() for sql, _ in queries]
    return {t: sorted(rows) for t, rows in zip(tables, results, strict=True)}


async def _postgres_rows(
    url: str, queries: list[tuple[str, tuple[Any, ...]]]
) -> list[list[tuple[Any, ...]]]:
    conn = await asyncpg.connect(url)
    try:
        return [
            [tuple(r) for r in await conn.fetch(postgres_params(sql), *params)]
            for sql, params in queries
        ]
    finally:
        await conn.close()
