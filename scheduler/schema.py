"""The schema's source, the migrations, and what PostgreSQL reads differently from SQLite.

**Migrations** are the files ``migrations/NNNN_*.sql``, applied in name order and recorded in
``schema_migrations``; one set for both databases. A file is written in SQLite's dialect with
upper-case type names. Where a change needs different statements per database (SQLite rebuilds
a table to change a CHECK constraint; PostgreSQL alters it), the file marks sections with a line
of its own::

    -- dialect: sqlite        what follows runs on SQLite only
    -- dialect: postgresql    ... on PostgreSQL only
    -- dialect: all           ... on both again (the default at the top of a file)

**Types on PostgreSQL** (:func:`postgres_text`), outside string literals, quoted names and
comments, applied to every section including the PostgreSQL ones:

* ``INTEGER PRIMARY KEY AUTOINCREMENT`` → ``BIGSERIAL PRIMARY KEY``;
* ``INTEGER`` → ``BIGINT``: SQLite's integers are 8 bytes, PostgreSQL's ``INTEGER`` 4, and
  byte counts (disk, snapshots) pass 2^31;
* ``REAL`` → ``DOUBLE PRECISION``: SQLite's ``REAL`` is 8 bytes, PostgreSQL's 4, which would
  round unix times to minutes;
* ``TEXT`` → ``TEXT COLLATE "C"``: text sorts by code point as in SQLite (``ORDER BY id``,
  names, aliases), whatever locale the operator's database was created with.

**Statements** in the code are written once, portable, with ``?`` placeholders;
:func:`postgres_params` numbers them (``$1``, ``$2``, ...) for PostgreSQL, skipping any ``?``
inside a string literal, a quoted name or a comment. Portable here means: ``ON CONFLICT ...
DO NOTHING`` rather than ``INSERT OR IGNORE``; ``CASE`` rather than SQLite's scalar ``MAX(a,
b)``; ``TRUE`` rather than a bare ``1`` as a condition; ``CAST(? AS DOUBLE PRECISION)`` where
a parameter meets an integer column but carries a fraction (PostgreSQL types a parameter from
its context); ``"user"`` quoted (a keyword in PostgreSQL); ``ORDER BY created_at, rowid`` for
insertion order, which migration 0011 gives PostgreSQL as a column of its own.
"""

from __future__ import annotations

import re
from importlib import resources

Dialect = str  # "sqlite" or "postgresql"
DIALECTS = ("sqlite", "postgresql")

#: What creates ``schema_migrations``, run before any migration (translated like one).
SCHEMA_MIGRATIONS_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_migrations "
    "(version TEXT PRIMARY KEY, applied_at REAL NOT NULL)"
)

_SECTION = re.compile(r"^--\s*dialect:\s*(\w+)\s*$")

#: String literals, quoted names and comments: nothing in them is translated.
_OPAQUE = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|--[^\n]*|/\*.*?\*/", re.S)

_TYPES = (
    (re.compile(r"\bINTEGER PRIMARY KEY AUTOINCREMENT\b"), "BIGSERIAL PRIMARY KEY"),
    (re.compile(r"\bINTEGER\b"), "BIGINT"),
    (re.compile(r"\bREAL\b"), "DOUBLE PRECISION"),
    (re.compile(r"\bTEXT\b"), 'TEXT COLLATE "C"'),
)


def migration_files() -> list[tuple[str, str]]:
    """``(name, text)`` of every migration, in the order they apply."""
    folder = resources.files("scheduler") / "migrations"
    found = [
        (entry.name.removesuffix(".sql"), entry.read_text(encoding="utf-8"))
        for entry in folder.iterdir()
        if entry.name.endswith(".sql")
    ]
    return sorted(found)


def for_dialect(script: str, dialect: Dialect) -> str:
    """``script`` without the sections marked for the other database."""
    if dialect not in DIALECTS:
        raise ValueError(f"unknown SQL dialect {dialect!r}")
    kept = []
    current = "all"
    for line in script.splitlines():
        marker = _SECTION.match(line.strip())
        if marker:
            current = marker.group(1)
            if current not in (*DIALECTS, "all"):
                raise ValueError(f"unknown dialect section {current!r} in a migration")
            continue
        if current in ("all", dialect):
            kept.append(line)
    return "\n".join(kept) + "\n"


def _translate_code(sql: str, translate) -> str:
    """Apply ``translate`` to the parts of ``sql`` outside literals, quoted names, comments."""
    out = []
    pos = 0
    for opaque in _OPAQUE.finditer(sql):
        out.append(translate(sql[pos : opaque.start()]))
        out.append(opaque.group(0))
        pos = opaque.end()
    out.append(translate(sql[pos:]))
    return "".join(out)


def postgres_text(script: str) -> str:
    """A migration (or DDL) as PostgreSQL runs it: its PostgreSQL sections, types mapped."""

    def types(code: str) -> str:
        for pattern, replacement in _TYPES:
            code = pattern.sub(replacement, code)
        return code

    return _translate_code(for_dialect(script, "postgresql"), types)


_numbered: dict[str, str] = {}


def postgres_params(sql: str) -> str:
    """``sql`` with its ``?`` placeholders numbered ``$1``, ``$2``, ... (cached per text: the
    statements are a few hundred distinct strings, each translated once)."""
    found = _numbered.get(sql)
    if found is not None:
        return found
    count = 0

    def number(code: str) -> str:
        nonlocal count
        parts = code.split("?")
        numbered = [parts[0]]
        for part in parts[1:]:
            count += 1
            numbered.append(f"${count}{part}")
        return "".join(numbered)

    found = _translate_code(sql, number)
    if len(_numbered) > 10_000:  # statements built with IN lists of every length
        _numbered.clear()
    _numbered[sql] = found
    return found
