"""``nbfleet-scheduler copy-db``: move an installation's whole state from its SQLite file to a
PostgreSQL database, once, while the scheduler is stopped.

Contract (:func:`copy_database`):

* **What is copied**: every table of the source but SQLite's own (``sqlite_*``),
  ``schema_migrations`` and the running replicas' bookkeeping
  (:data:`scheduler.replicas.BOOKKEEPING`: presence, leases, request nonces, which describe
  processes, not the installation), whatever the migrations created, found by reading the source's
  catalogue rather than a list kept here, so a table a later migration adds is copied without
  touching this module. Columns are matched by name; PostgreSQL's ``rowid`` columns (migration
  0011), which SQLite keeps implicitly, take the source's rowids.
* **Preconditions**, each refused with a :class:`CopyRefused` naming what is wrong: source and
  target at the same migration level, and that level this scheduler's; the same tables and
  columns on both; no row in any table of the target. The target is **not** migrated here:
  ``nbfleet-scheduler migrate`` is the one command that changes a schema (under its lock, as on
  every upgrade), and copy-db only writes rows, so a mistyped ``--to`` finds no schema and is
  refused instead of gaining one.
* **Consistency**: the source is read in one read transaction (one snapshot of the WAL), through
  a read-only connection; the target is written in one transaction, so a failure leaves it as
  empty as it was. A scheduler still running on the source may commit after the snapshot, and
  that would be lost: the scheduler must be stopped first.
* **Order**: tables parents first along the foreign keys (SQLite's ``PRAGMA
  foreign_key_list``); rows in rowid order, and a table that refers to itself (a fork names its
  origin) with each row after the row it names, so PostgreSQL's non-deferred constraints hold
  at every row. Every sequence (BIGSERIAL ``id``, ``rowid``) is then set past the largest
  value copied, or past SQLite's ``sqlite_sequence`` counter where AUTOINCREMENT kept a larger
  one (ids of deleted rows are never reused).
* **Speed**: rows go in batches through PostgreSQL's COPY (``copy_records_to_table``), so a
  hundred thousand history rows take seconds.

It speaks to both databases directly (``sqlite3``, ``asyncpg``), not through
:class:`scheduler.db.Database`: it reads catalogues and rowids and uses COPY, which the
services' interface does not offer and should not.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from scheduler.replicas import BOOKKEEPING
from scheduler.schema import migration_files

#: Rows per COPY: large enough that a round trip is nothing beside the rows, small enough that
#: a big table never sits in memory whole.
BATCH = 5_000

STOPPED_NOTE = (
    "the scheduler must be stopped during the copy: what it writes after the copy begins "
    "is not copied"
)


class CopyRefused(Exception):
    """The copy cannot be made; the message says why and what to do. Nothing was written."""


@dataclass
class Copied:
    """What one copy did: rows per table, in the order they were copied."""

    source: str
    target: str
    level: str
    rows: dict[str, int]


@dataclass
class _Table:
    name: str
    columns: list[str]
    #: PostgreSQL columns filled from SQLite's implicit rowid (migration 0011).
    with_rowid: bool
    #: Columns (other than the key) referring to this table's own key: ``[(column, key)]``.
    self_refs: list[tuple[str, str]]


def sqlite_path(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme != "sqlite" or not parts.path:
        raise CopyRefused(f"--from must be a sqlite:///path URL, not {url!r}")
    return parts.path


def _postgres_url(url: str) -> str:
    if urlsplit(url).scheme not in ("postgresql", "postgres"):
        raise CopyRefused(f"--to must be a postgresql://... URL, not {_safe(url)!r}")
    return url


def _safe(url: str) -> str:
    """``url`` without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)


async def copy_database(
    from_url: str, to_url: str, *, say: Callable[[str], None] = lambda _: None
) -> Copied:
    """Copy every row of the SQLite database ``from_url`` into the migrated, empty PostgreSQL
    database ``to_url`` (module docstring); ``say`` hears each table as it is done."""
    path = sqlite_path(from_url)
    _postgres_url(to_url)
    if not Path(path).is_file():
        raise CopyRefused(f"no SQLite database at {path}")
    source = sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True, isolation_level=None)
    try:
        source.execute("BEGIN")  # one snapshot for every read below, until the ROLLBACK
        tables = _source_tables(source)
        target = await asyncpg.connect(to_url)
        try:
            level = await _check_levels(source, target, from_url, to_url)
            await _check_target(target, tables, to_url)
            counts: dict[str, int] = {}
            async with target.transaction():
                for table in tables:
                    counts[table.name] = await _copy_table(source, target, table)
                    say(f"{table.name}: {counts[table.name]} rows")
                await _advance_sequences(source, target)
        finally:
            await target.close()
        source.execute("ROLLBACK")
    finally:
        source.close()
    return Copied(f"sqlite://{Path(path).resolve()}", _safe(to_url), level, counts)


def _source_tables(source: sqlite3.Connection) -> list[_Table]:
    """The source's tables, parents before children along the foreign keys."""
    names = [
        r[0]
        for r in source.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
            "AND name != 'schema_migrations' ORDER BY name"
        )
        if r[0] not in BOOKKEEPING
    ]
    parents: dict[str, set[str]] = {}
    tables: dict[str, _Table] = {}
    for name in names:
        columns = [r[1] for r in source.execute(f'PRAGMA table_info("{name}")')]
        refs = source.execute(f'PRAGMA foreign_key_list("{name}")').fetchall()
        # (id, seq, table, from, to, ...): ``to`` is None when the key is the parent's primary key.
        self_refs = [(r[3], r[4] or _primary_key(source, name)) for r in refs if r[2] == name]
        parents[name] = {r[2] for r in refs if r[2] != name}
        tables[name] = _Table(name, columns, False, self_refs)
    ordered: list[_Table] = []
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in done:
            return
        if name in path:
            raise CopyRefused(f"the foreign keys form a cycle: {' -> '.join((*path, name))}")
        for parent in sorted(parents[name]):
            if parent in tables:
                visit(parent, (*path, name))
        done.add(name)
        ordered.append(tables[name])

    for name in names:
        visit(name, ())
    return ordered


def _primary_key(source: sqlite3.Connection, table: str) -> str:
    keys = [r[1] for r in source.execute(f'PRAGMA table_info("{table}")') if r[5]]
    return keys[0] if len(keys) == 1 else "rowid"


def _level(versions: set[str]) -> str:
    return max(versions) if versions else "no migration"


async def _check_levels(
    source: sqlite3.Connection, target: asyncpg.Connection, from_url: str, to_url: str
) -> str:
    """The migration level both share (this scheduler's), or :class:`CopyRefused`."""
    known = {name for name, _ in migration_files()}
    has_table = source.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
    ).fetchone()
    if not has_table:
        raise CopyRefused(f"{from_url} is not a scheduler database (no schema_migrations)")
    ours = {r[0] for r in source.execute("SELECT version FROM schema_migrations")}
    if not await target.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL"):
        theirs: set[str] = set()
    else:
        theirs = {r["version"] for r in await target.fetch("SELECT version FROM schema_migrations")}
    if ours == theirs == known:
        return _level(known)
    lines = [
        "source and target must both be at this scheduler's migration level:",
        f"  source {from_url}: {_level(ours)}{_difference(ours, known)}",
        f"  target {_safe(to_url)}: {_level(theirs)}{_difference(theirs, known)}",
        f"  this nbfleet-scheduler: {_level(known)}",
    ]
    if ours != known:
        lines.append(
            "bring the source up to date by starting this version's scheduler on it once "
            "(SQLite migrates when it opens), then stop it"
        )
    if theirs != known:
        lines.append(
            "migrate the target first: nbfleet-scheduler migrate --config <a config whose "
            "database_url is the target>"
        )
    raise CopyRefused("\n".join(lines))


def _difference(versions: set[str], known: set[str]) -> str:
    missing, extra = sorted(known - versions), sorted(versions - known)
    said = []
    if missing:
        said.append(f"lacks {', '.join(missing)}")
    if extra:
        said.append(f"has {', '.join(extra)}, which this scheduler does not know")
    return f" ({'; '.join(said)})" if said else ""


async def _check_target(target: asyncpg.Connection, tables: list[_Table], to_url: str) -> None:
    """The target has each source table with the same columns (plus ``rowid``), and no rows;
    marks the tables whose ``rowid`` is a column on PostgreSQL."""
    rows = await target.fetch(
        "SELECT table_name, column_name FROM information_schema.columns "
        "WHERE table_schema = current_schema()"
    )
    found: dict[str, set[str]] = {}
    for r in rows:
        found.setdefault(r["table_name"], set()).add(r["column_name"])
    for table in tables:
        columns = found.get(table.name)
        if columns is None:
            raise CopyRefused(f"the target {_safe(to_url)} has no table {table.name}")
        extra = columns - set(table.columns)
        table.with_rowid = "rowid" in extra and "rowid" not in table.columns
        extra.discard("rowid")
        missing = set(table.columns) - columns
        if missing or extra:
            raise CopyRefused(
                f"table {table.name} differs between source and target: source only "
                f"{sorted(missing)}, target only {sorted(extra)}"
            )
    unknown = set(found) - {t.name for t in tables} - {"schema_migrations", *BOOKKEEPING}
    if unknown:
        raise CopyRefused(f"the target has tables the source lacks: {', '.join(sorted(unknown))}")
    for table in tables:
        if await target.fetchval(f'SELECT EXISTS (SELECT 1 FROM "{table.name}")'):
            raise CopyRefused(
                f"the target {_safe(to_url)} already holds data (table {table.name} has rows): "
                "copy-db only fills an empty database; give it a new one, migrated with "
                "nbfleet-scheduler migrate"
            )


async def _copy_table(source: sqlite3.Connection, target: asyncpg.Connection, table: _Table) -> int:
    columns = list(table.columns)
    selected = ", ".join(f'"{c}"' for c in columns)
    if table.with_rowid:
        columns.append("rowid")
        selected += ", rowid"
    cursor = source.execute(f'SELECT {selected} FROM "{table.name}" ORDER BY rowid')
    rows: Iterator[tuple[Any, ...]] = iter(cursor)
    if table.self_refs:
        rows = _parents_first(list(rows), columns, table.self_refs)
    count = 0
    while True:
        batch = [row for _, row in zip(range(BATCH), rows, strict=False)]
        if not batch:
            return count
        await target.copy_records_to_table(table.name, records=batch, columns=columns)
        count += len(batch)


def _parents_first(
    rows: list[tuple[Any, ...]], columns: list[str], self_refs: list[tuple[str, str]]
) -> Iterator[tuple[Any, ...]]:
    """``rows`` in their order, except that a row naming another row of the same table comes
    after it (a fork's origin is copied before the fork, whatever their rowids)."""
    keys = {key for _, key in self_refs}
    if len(keys) != 1 or next(iter(keys)) not in columns:
        raise CopyRefused(f"cannot order self-references {self_refs}")
    key = columns.index(next(iter(keys)))
    refs = [columns.index(column) for column, _ in self_refs]
    present = {row[key] for row in rows}
    emitted: set[Any] = set()
    waiting: dict[Any, list[tuple[Any, ...]]] = {}

    def held(row: tuple[Any, ...]) -> bool:
        """Whether ``row`` must wait (then it waits on the first row it names not yet out)."""
        pending = [row[i] for i in refs if row[i] in present and row[i] not in emitted]
        if pending:
            waiting.setdefault(pending[0], []).append(row)
        return bool(pending)

    for row in rows:
        if held(row):
            continue
        stack = [row]
        while stack:
            current = stack.pop()
            emitted.add(current[key])
            yield current
            stack.extend(r for r in reversed(waiting.pop(current[key], [])) if not held(r))
    if waiting:
        raise CopyRefused("rows of a table refer to each other in a cycle; nothing was copied")


async def _advance_sequences(source: sqlite3.Connection, target: asyncpg.Connection) -> None:
    """Every sequence owned by a column (BIGSERIAL) goes past the column's largest value and
    past SQLite's AUTOINCREMENT counter for the table, so new rows number after copied ones."""
    counters: dict[str, int] = {}
    if source.execute("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_sequence'").fetchone():
        counters = {r[0]: r[1] for r in source.execute("SELECT name, seq FROM sqlite_sequence")}
    owned = await target.fetch(
        "SELECT table_name, column_name, "
        "pg_get_serial_sequence(quote_ident(table_name), column_name) AS seq "
        "FROM information_schema.columns WHERE table_schema = current_schema() "
        "AND column_default LIKE 'nextval(%'"
    )
    for r in owned:
        if r["seq"] is None:
            continue
        largest = await target.fetchval(
            f'SELECT MAX("{r["column_name"]}") FROM "{r["table_name"]}"'
        )
        # AUTOINCREMENT counts the table's INTEGER PRIMARY KEY, which the schema names ``id``
        # (a BIGSERIAL on PostgreSQL); ``rowid`` columns have no counter beyond their maximum.
        counter = counters.get(r["table_name"]) if r["column_name"] == "id" else None
        values = [v for v in (largest, counter) if v]
        if values:
            await target.execute("SELECT setval($1, $2, true)", r["seq"], max(values))
