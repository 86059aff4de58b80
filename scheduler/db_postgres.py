"""The scheduler's database on PostgreSQL, through asyncpg: a pool per scheduler process, and
writers serialized across every process on the database.

**Why asyncpg, with the SQL as it is** (not SQLAlchemy's async core on top of it): the
statements are hand-written, keyed and hot (a batch of placements is an insert, a quota
read, a reservation each, and every change of state together through ``Tx.all_with``), and
scripts/bench-scheduler measures what each one costs. asyncpg prepares each distinct statement
once per connection and keeps it (binary protocol, no round trip to parse it again), and puts
nothing between a call and the wire; an expression layer would build, compile and cache-look-up
every statement again per call, to produce SQL we already have. The code's ``?`` placeholders
are numbered once per distinct statement (:func:`scheduler.schema.postgres_params`).

**Writers** (:meth:`PostgresDatabase.transaction`): every write transaction starts with
``pg_advisory_xact_lock(WRITE_LOCK)``, in READ COMMITTED, so each statement after it sees
every commit before it; the lock goes with the commit or rollback. That is what ``BEGIN
IMMEDIATE`` gives SQLite: one writer at a time, here across every scheduler process on the
database. Not SERIALIZABLE: conflicting transactions would fail at commit and need a retry
around every service call, and placements, which all touch the same hosts, would conflict most
of the time. Not row locks (``SELECT ... FOR UPDATE``): the quota check counts a project's
notebooks, and no row lock stops another transaction from inserting one (a phantom). Within a
process, writers queue on an :class:`asyncio.Lock` before taking a connection, so a burst of
writes holds one pooled connection, not all of them, and reads keep flowing.

**Group commit**: writers are serialized anyway, so when a block ends while others of this
process wait for the lock, its transaction is left open and the next block runs in it, inside
a savepoint (:class:`_Group`): up to :data:`GROUP_MAX` blocks share one BEGIN, one advisory
lock and one COMMIT, and the other replicas wait for the lock once per group, not once per
block. A block that raises is rolled back to its savepoint alone; each block's ``async with``
returns (and its after-commit callbacks run) only once the group has committed, so nobody is
answered before their writes are durable, and a failed COMMIT fails every block of the group
(:class:`CommitFailed`). Serially, this is the same as each block committing before the next
began: every block sees the ones before it and nothing else writes in between.

**Reads** (:meth:`~PostgresDatabase.read`): ``REPEATABLE READ READ ONLY``, one snapshot for the
block, no lock, never waiting for a writer.

**Values**: ``SUM`` over integers is ``numeric`` in PostgreSQL (an integer in SQLite); a codec
returns it as ``int`` (``float`` when it has a fraction), so callers get what SQLite gives.

**Migrations** (:meth:`~PostgresDatabase.migrate`) run on a connection of their own under a
session advisory lock (``MIGRATE_LOCK``), so two replicas never migrate at once; each is one
transaction with its ``schema_migrations`` row (PostgreSQL's DDL is transactional). :meth:`open`
refuses to start with any migration missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from scheduler.db import Database, IntegrityError, MigrationsPending, Row, Tx
from scheduler.db_announce import listen, notices_sql
from scheduler.schema import (
    SCHEMA_MIGRATIONS_TABLE,
    migration_files,
    postgres_params,
    postgres_text,
)

log = logging.getLogger(__name__)

#: Advisory lock keys (per database): "nbflee" in ASCII, then the writers' and the migrations'.
WRITE_LOCK = 0x6E62666C6565_01
MIGRATE_LOCK = 0x6E62666C6565_02

#: Connections per scheduler process: one writer at a time, the rest for reads.
POOL_SIZE = 10

#: Write blocks one transaction may carry (group commit). Each after the first is a savepoint,
#: a subtransaction; PostgreSQL keeps 64 of a transaction's in shared memory, past which every
#: snapshot on the server gets slower.
GROUP_MAX = 16
_SAVEPOINT = "nbfleet_block"

_BEGIN_WRITE = f"BEGIN ISOLATION LEVEL READ COMMITTED; SELECT pg_advisory_xact_lock({WRITE_LOCK})"
_BEGIN_READ = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"


def _number(text: str) -> int | float:
    """A ``numeric`` as SQLite would have given it."""
    try:
        return int(text)
    except ValueError:
        return float(text)


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec(
        "numeric", encoder=str, decoder=_number, schema="pg_catalog", format="text"
    )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Nothing to reset when a connection goes back to the pool (asyncpg has rolled back any
    open transaction): the scheduler sets no session state, takes no session locks and does
    not LISTEN on pooled connections. asyncpg's default reset is one more round trip per
    block."""


def _rowcount(status: str) -> int:
    """Rows a command changed, from its status (``UPDATE 3``, ``INSERT 0 1``); -1 for none."""
    count = status.rpartition(" ")[2]
    return int(count) if count.isdigit() else -1


class PostgresTx(Tx):
    dialect = "postgresql"

    def __init__(self, conn: asyncpg.Connection) -> None:
        super().__init__()
        self._conn = conn

    async def one(self, sql: str, params: Iterable[Any] = ()) -> Row | None:
        try:
            return await self._conn.fetchrow(postgres_params(sql), *params)
        except asyncpg.IntegrityConstraintViolationError as exc:
            raise IntegrityError(str(exc)) from exc

    async def all(self, sql: str, params: Iterable[Any] = ()) -> list[Row]:
        try:
            return await self._conn.fetch(postgres_params(sql), *params)
        except asyncpg.IntegrityConstraintViolationError as exc:
            raise IntegrityError(str(exc)) from exc

    async def run(self, sql: str, params: Iterable[Any] = ()) -> int:
        try:
            return _rowcount(await self._conn.execute(postgres_params(sql), *params))
        except asyncpg.IntegrityConstraintViolationError as exc:
            raise IntegrityError(str(exc)) from exc

    def every_column(self, table: str) -> str:
        return f"{table}.*"

    async def all_with(
        self, writes: Sequence[tuple[str, Sequence[Any]]], sql: str, params: Sequence[Any]
    ) -> list[Row]:
        if not writes:
            return await self.all(sql, params)
        clauses = ", ".join(f"nbfleet_w{i} AS ({w})" for i, (w, _) in enumerate(writes))
        args = [value for _, values in writes for value in values]
        return await self.all(f"WITH {clauses} {sql}", [*args, *params])

    async def run_many(self, sql: str, rows: Iterable[Iterable[Any]]) -> None:
        args = [tuple(r) for r in rows]
        if not args:
            return
        try:
            await self._conn.executemany(postgres_params(sql), args)
        except asyncpg.IntegrityConstraintViolationError as exc:
            raise IntegrityError(str(exc)) from exc


class CommitFailed(Exception):
    """The write transaction a block ran in did not commit (group commit: it may have failed
    for another block of the group); nothing the block wrote is stored."""


class _Group:
    """One write transaction shared by consecutive blocks of this process (group commit)."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        #: Blocks that ran to their end in it, waiting for the commit.
        self.members: list[PostgresTx] = []
        #: Whether the block running now is inside a savepoint (every block but the first).
        self.guarded = False
        #: Set once it committed or failed; ``error`` says which.
        self.settled = asyncio.Event()
        self.error: BaseException | None = None
        self.closer: asyncio.Task[None] | None = None


class PostgresDatabase(Database):
    dialect = "postgresql"
    shared = True

    def __init__(self, url: str, *, pool_size: int = POOL_SIZE) -> None:
        self.url = url
        self.pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        #: Everything but the writer takes a connection through this, in the order it came:
        #: the pool's own queue lets a newcomer take a connection a waiter was woken for, and
        #: under load some reads waited seconds while most took milliseconds.
        self._others = asyncio.Semaphore(max(1, pool_size - 1))
        self._write_lock = asyncio.Lock()
        #: Writers waiting for the lock (each will run a block): a group stays open for them.
        self._writers = 0
        self._group: _Group | None = None
        self._listener: asyncio.Task[None] | None = None

    @property
    def where(self) -> str:
        parts = urlsplit(self.url)
        host = parts.hostname or ""
        if ":" in host:  # an IPv6 address
            host = f"[{host}]"
        if parts.port is not None:
            host = f"{host}:{parts.port}"
        if parts.username:
            host = f"{parts.username}@{host}"
        return f"{parts.scheme}://{host}{parts.path}"

    async def open(self) -> None:
        pool = await asyncpg.create_pool(
            self.url,
            min_size=1,
            max_size=self.pool_size,
            init=_init_connection,
            reset=_keep_session,
            # Statements built with IN lists of several lengths: keep them all prepared.
            statement_cache_size=1024,
            # standard_conforming_strings: notices_sql's quoting relies on it.
            server_settings={
                "application_name": "nbfleet-scheduler",
                "standard_conforming_strings": "on",
            },
        )
        try:
            async with pool.acquire() as conn:
                missing = await _missing(conn)
        except BaseException:
            await pool.close()
            raise
        if missing:
            await pool.close()
            raise MigrationsPending(self.where, missing)
        self._pool = pool

    async def close(self) -> None:
        if self._group is not None:
            async with self._write_lock:
                if self._group is not None:
                    await self._commit(self._group)
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def migrate(self) -> list[str]:
        conn = await asyncpg.connect(self.url)
        done = []
        try:
            # A session lock, held across the migrations' transactions: another replica's
            # migrate waits here, then finds nothing left to do.
            await conn.execute("SELECT pg_advisory_lock($1)", MIGRATE_LOCK)
            await conn.execute(postgres_text(SCHEMA_MIGRATIONS_TABLE))
            applied = await _applied(conn)
            for name, script in migration_files():
                if name in applied:
                    continue
                log.info("database=%s applying migration %s", self.where, name)
                async with conn.transaction():
                    await conn.execute(postgres_text(script))
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)",
                        name,
                        time.time(),
                    )
                done.append(name)
        finally:
            await conn.close()
        return done

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("database is not open")
        return self._pool

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        self._writers += 1
        try:
            await self._write_lock.acquire()
        finally:
            self._writers -= 1
        try:
            group = self._group
            if group is None or not await self._guard(group):
                group = self._group = await self._begin()
            tx = PostgresTx(group.conn)
            try:
                yield tx
            except BaseException:
                await self._undo(group)
                raise
            group.members.append(tx)
            if self._writers == 0 or len(group.members) >= GROUP_MAX:
                await asyncio.shield(self._commit(group))
            elif group.closer is None:
                # Committed by the last block that joins, or by this task, queued behind the
                # writers waiting now, should one of them give up before its turn.
                group.closer = asyncio.create_task(self._close(group))
        finally:
            self._write_lock.release()
        await group.settled.wait()
        if group.error is not None:
            raise CommitFailed("the write transaction did not commit") from group.error
        tx.committed()

    async def _begin(self) -> _Group:
        conn = await self.pool.acquire()
        try:
            await conn.execute(_BEGIN_WRITE)
        except BaseException:
            await self.pool.release(conn)
            raise
        return _Group(conn)

    async def _guard(self, group: _Group) -> bool:
        """A savepoint for the next block of ``group`` (the previous one's is released);
        ``False`` if that failed, and with it the group (the block begins one of its own)."""
        release = f"RELEASE SAVEPOINT {_SAVEPOINT}; " if group.guarded else ""
        try:
            await group.conn.execute(f"{release}SAVEPOINT {_SAVEPOINT}")
        except BaseException as exc:
            await self._end(group, exc)
            if not isinstance(exc, Exception):
                raise
            return False
        group.guarded = True
        return True

    async def _undo(self, group: _Group) -> None:
        """The running block raised: roll back its writes, and only its own."""
        if not group.guarded:  # the group's first block: the transaction holds nothing else
            await self._end(group, None, rollback=True)
            return
        try:
            await group.conn.execute(f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}")
        except BaseException as exc:
            await self._end(group, exc)
            return
        if self._writers == 0 and self._group is group:
            await asyncio.shield(self._commit(group))

    async def _close(self, group: _Group) -> None:
        async with self._write_lock:
            if self._group is group:
                await self._commit(group)

    async def _commit(self, group: _Group) -> None:
        """Commit ``group`` (a failure is its members' to raise); their announcements go with
        the COMMIT, in its round trip (NOTIFY is delivered when, and only if, it commits)."""
        if self._group is group:
            self._group = None  # from now on, a block that comes begins a group of its own
        notices = [notice for tx in group.members for notice in tx.notices]
        try:
            await group.conn.execute(notices_sql(notices) + "COMMIT")
        except BaseException as exc:
            await self._end(group, exc)
            return
        await self._end(group, None)

    async def _end(self, group: _Group, error: BaseException | None, *, rollback=False) -> None:
        """``group`` is over: committed (``error`` None, no ``rollback``) or not."""
        if self._group is group:
            self._group = None
        group.error = error
        try:
            if error is not None or rollback:
                await _rollback(group.conn)
            await self.pool.release(group.conn)
        finally:
            group.settled.set()  # whatever happened, no member waits forever

    @asynccontextmanager
    async def read(self) -> AsyncIterator[Tx]:
        async with self._others, self.pool.acquire() as conn:
            await conn.execute(_BEGIN_READ)
            try:
                yield PostgresTx(conn)
            except BaseException:
                await _rollback(conn)
                raise
            await conn.execute("COMMIT")

    @asynccontextmanager
    async def read_offloop(self) -> AsyncIterator[Tx]:
        """Reads here are network round trips, which never hold the event loop: a scan is a
        read like any other."""
        async with self.read() as tx:
            yield tx

    async def query_one(self, sql: str, params: Iterable[Any] = ()) -> Row | None:
        async with self._others:
            return await self.pool.fetchrow(postgres_params(sql), *params)

    async def notify(self, channel: str, payload: str) -> None:
        async with self._others:
            await self.pool.execute("SELECT pg_notify($1, $2)", channel, payload)

    async def listen(self, handlers: dict[str, Callable[[str], None]]) -> None:
        if self._listener is None:
            self._listener = asyncio.create_task(
                listen(self.url, self.where, handlers), name="db-listen"
            )

    async def claim_nonces(self, nonces: list[tuple[str, float]]) -> set[str]:
        # One statement in autocommit, outside the writers' lock: the primary key decides,
        # atomically across every replica, which of two requests with one nonce came first.
        async with self._others:
            rows = await self.pool.fetch(
                "INSERT INTO request_nonces (nonce, expires_at) "
                "SELECT * FROM unnest($1::text[], $2::float8[]) ON CONFLICT DO NOTHING "
                "RETURNING nonce",
                [n for n, _ in nonces],
                [e for _, e in nonces],
            )
        return {r["nonce"] for r in rows}


async def _rollback(conn: asyncpg.Connection) -> None:
    """Roll back after an error; a connection that broke is left to the pool, which drops it
    (the server rolls back what a lost connection left open)."""
    try:
        await conn.execute("ROLLBACK")
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
        log.warning("rollback failed (%s); the connection is dropped", exc)
        # A connection that was lost is already detached from the pool: nothing to drop.
        with contextlib.suppress(asyncpg.InterfaceError):
            conn.terminate()


async def _applied(conn: asyncpg.Connection) -> set[str]:
    if not await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL"):
        return set()
    return {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}


async def _missing(conn: asyncpg.Connection) -> list[str]:
    """The migrations this scheduler has that the database lacks."""
    applied = await _applied(conn)
    known = [name for name, _ in migration_files()]
    newer = applied - set(known)
    if newer:
        log.warning(
            "the database has migrations this scheduler does not know (%s): a newer version "
            "migrated it; this one runs on, but upgrade it",
            ", ".join(sorted(newer)),
        )
    return [name for name in known if name not in applied]
