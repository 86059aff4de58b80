"""The scheduler's database: one interface over SQLite and PostgreSQL.

SQLite (:mod:`scheduler.db_sqlite`) is one file, the embedded default for one machine;
PostgreSQL (:mod:`scheduler.db_postgres`) is for several scheduler processes on one database.
:func:`database_for` picks one from the config: ``database_url`` when set, else the SQLite file
``database``. Services only see :class:`Database` and :class:`Tx`:

* :meth:`Database.transaction`: a write transaction, committed on normal exit and rolled back
  on any exception. **Writers are serialized**, across every scheduler process on the
  database: a transaction reads what every earlier writer committed, and nobody else writes
  between its reads and its commit. So a quota check made in the placement transaction can
  never be overshot by a concurrent request, and a GPU is never reserved twice. PostgreSQL
  may commit consecutive blocks of one process together (group commit,
  :mod:`scheduler.db_postgres`): to its caller a block is the same, its exit returns once its
  writes are committed and an exception rolls back its writes alone.
* :meth:`Database.read`: a read-only snapshot (it must not write); reads never wait for writers.
* :meth:`Database.read_offloop`: the same for reads that scan many rows (usage reports).
* :meth:`Database.query_one`: one single-statement read (atomic by itself).

Callers must not await anything but the database inside a block: no Docker, no network, no
sleeping. Statements are written once for both databases, with ``?`` placeholders, by the
rules in :mod:`scheduler.schema`; rows are read by column name (``row["state"]``), which
``sqlite3.Row`` and ``asyncpg.Record`` both answer. A write that breaks a constraint (a
duplicate key) raises :class:`IntegrityError` on both.

The schema is the migrations (:mod:`scheduler.schema`): SQLite applies pending ones when it
opens; PostgreSQL only when an operator asks (:meth:`Database.migrate`, ``nbfleet-scheduler
migrate``), and refuses to open with any missing (:class:`MigrationsPending`): a replica never
changes the schema under the others by starting, and never runs on a schema older than its code.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from itertools import chain
from typing import TYPE_CHECKING, Any, TypeAlias
from urllib.parse import urlsplit

from common.config import SchedulerConfig

if TYPE_CHECKING:
    import sqlite3

    import asyncpg

log = logging.getLogger(__name__)

#: A result row: ``sqlite3.Row`` or ``asyncpg.Record``; read it by column name.
Row: TypeAlias = "sqlite3.Row | asyncpg.Record"


class IntegrityError(Exception):
    """A write broke a constraint (a duplicate key, a missing reference). On PostgreSQL the
    transaction cannot go on after it: let it leave the block, which rolls back."""


class MigrationsPending(Exception):
    """The database lacks migrations this scheduler needs; ``nbfleet-scheduler migrate``
    applies them."""

    def __init__(self, where: str, missing: list[str]) -> None:
        self.where = where
        self.missing = missing
        super().__init__(
            f"the database {where} lacks the migrations {', '.join(missing)}: apply them with "
            "`nbfleet-scheduler migrate --config <the scheduler's config>` before starting"
        )


class Tx(ABC):
    """Statements inside one transaction, plus callbacks to run once it has committed."""

    #: The database's (:attr:`Database.dialect`), for the rare statement written twice.
    dialect: str

    def __init__(self) -> None:
        self._after_commit: list[Callable[[], None]] = []
        #: ``(channel, payload)`` to announce to the other replicas with the commit.
        self.notices: list[tuple[str, str]] = []

    @abstractmethod
    async def one(self, sql: str, params: Iterable[Any] = ()) -> Row | None:
        """The first row of a read, or ``None``."""

    @abstractmethod
    async def all(self, sql: str, params: Iterable[Any] = ()) -> list[Row]:
        """Every row of a read."""

    @abstractmethod
    async def run(self, sql: str, params: Iterable[Any] = ()) -> int:
        """Execute a write; returns the number of rows it changed."""

    @abstractmethod
    async def run_many(self, sql: str, rows: Iterable[Iterable[Any]]) -> None:
        """Execute one write for each parameter tuple of ``rows``."""

    async def all_with(
        self, writes: Sequence[tuple[str, Sequence[Any]]], sql: str, params: Sequence[Any]
    ) -> list[Row]:
        """Execute ``writes`` (INSERT, UPDATE or DELETE statements with their parameters), then
        ``sql``; returns ``sql``'s rows. PostgreSQL sends them as one statement (the writes as
        data-modifying ``WITH`` clauses: one round trip instead of several), in which every part
        sees the database as it was before the statement: so none of them may read what
        another writes, and no two may change one row."""
        for write_sql, write_params in writes:
            await self.run(write_sql, write_params)
        return await self.all(sql, params)

    def every_column(self, table: str) -> str:
        """``RETURNING`` every column of ``table`` from an ``UPDATE table ... FROM``: a bare
        ``*`` would also return the ``FROM``'s columns on PostgreSQL, and SQLite refuses
        ``table.*`` there (it returns the updated table's alone)."""
        return "*"

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` after a successful commit (e.g. wake long-polls); never on rollback."""
        self._after_commit.append(callback)

    def notify(self, channel: str, payload: str) -> None:
        """Announce ``payload`` on ``channel`` to every replica listening
        (:meth:`Database.listen`), once this transaction has committed; never on rollback.
        On SQLite (one process) nobody else listens and this does nothing."""
        self.notices.append((channel, payload))

    def committed(self) -> None:
        """Run the after-commit callbacks (the database calls this once it has committed)."""
        for callback in self._after_commit:
            try:
                callback()
            except Exception:
                log.exception("after-commit callback %r failed; the commit stands", callback)


class Database(ABC):
    #: ``sqlite`` or ``postgresql`` (:data:`scheduler.schema.DIALECTS`).
    dialect: str
    #: Whether several scheduler processes may serve this database at once (PostgreSQL); if
    #: not, this process's memory is all there is to share.
    shared: bool = False

    @property
    @abstractmethod
    def where(self) -> str:
        """Which database, for logs and messages (never a password)."""

    @abstractmethod
    async def open(self) -> None:
        """Connect; SQLite applies pending migrations, PostgreSQL raises
        :class:`MigrationsPending` if any is missing."""

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def migrate(self) -> list[str]:
        """Apply the pending migrations (at most one process at a time); returns their names."""

    @abstractmethod
    def transaction(self) -> AbstractAsyncContextManager[Tx]:
        """A write transaction (module docstring)."""

    @abstractmethod
    def read(self) -> AbstractAsyncContextManager[Tx]:
        """A read-only snapshot."""

    @abstractmethod
    def read_offloop(self) -> AbstractAsyncContextManager[Tx]:
        """A read-only snapshot for reads that scan many rows."""

    @abstractmethod
    async def query_one(self, sql: str, params: Iterable[Any] = ()) -> Row | None:
        """One single-statement read (atomic by itself): no transaction around it."""

    @abstractmethod
    async def notify(self, channel: str, payload: str) -> None:
        """Announce ``payload`` on ``channel`` to every replica now (outside a transaction)."""

    @abstractmethod
    async def listen(self, handlers: dict[str, Callable[[str], None]]) -> None:
        """Call ``handlers[channel](payload)`` for what other replicas announce, from now until
        :meth:`close`. If announcements may have been missed (the listening connection broke),
        each handler is called with ``""`` once listening again: treat it as "anything may
        have changed"."""

    async def claim_nonces(self, nonces: list[tuple[str, float]]) -> set[str]:
        """Record each ``(nonce, expires_at)`` as used, for every replica; returns the nonces
        that were new (the others were used before, through any replica, and not expired).
        One process on SQLite: the caller's own memory is the whole record, all are new."""
        return {nonce for nonce, _ in nonces}


def database_for(config: SchedulerConfig) -> Database:
    """The database ``config`` names (not opened yet): ``database_url`` when set, else the
    SQLite file ``database``. ``common.config`` has checked the URL's scheme."""
    url = config.database_url
    if url and urlsplit(url).scheme != "sqlite":
        from scheduler.db_postgres import PostgresDatabase

        return PostgresDatabase(url)
    from scheduler.db_sqlite import SqliteDatabase

    return SqliteDatabase(urlsplit(url).path if url else config.database)


#: Rows per statement of :func:`run_values`.
VALUES_CHUNK = 256


def padded_values(row: str, rows: Sequence[Sequence[Any]]) -> tuple[str, list[Any]]:
    """A ``VALUES`` list of ``row`` (its placeholders, e.g. ``(CAST(? AS INTEGER), ?)``) per
    tuple of ``rows`` (at least one), and its parameters: padded with all-NULL tuples to a
    power of two, so a statement built on it has a few texts, each prepared once, not one per
    length. The statement reads the columns as ``v.column1``, ``v.column2``, ... (``FROM
    (VALUES ...) AS v``: both databases name ``VALUES`` columns so) and must match nothing for
    the padding (a key compared with ``=``, which NULL never satisfies). PostgreSQL types a
    ``VALUES`` parameter as text unless cast: cast every one that is not."""
    size = 1 << (len(rows) - 1).bit_length()
    params = list(chain.from_iterable(rows))
    params += [None] * (len(rows[0]) * (size - len(rows)))
    return ", ".join([row] * size), params


async def run_values(tx: Tx, sql: str, row: str, rows: Iterable[Sequence[Any]]) -> None:
    """Execute ``sql`` for every tuple of ``rows`` in a few statements: ``{values}`` in ``sql``
    becomes a :func:`padded_values` list of ``row`` per tuple, at most :data:`VALUES_CHUNK` a
    statement, e.g. ``UPDATE gpus SET utilization_pct = v.column1 FROM (VALUES {values}) AS v
    WHERE gpus.uuid = v.column2``. On PostgreSQL each statement is executed as a whole, where
    one statement per tuple costs a server-side execution each."""
    pending = [tuple(r) for r in rows]
    for start in range(0, len(pending), VALUES_CHUNK):
        values, params = padded_values(row, pending[start : start + VALUES_CHUNK])
        await tx.run(sql.replace("{values}", values), params)


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
