"""One schema for SQLite and PostgreSQL: dialect sections, the type mapping, placeholders, and
which database a config names."""

from __future__ import annotations

import msgspec
import pytest

from common.config import ConfigError, SchedulerConfig, load
from scheduler.db import database_for
from scheduler.db_postgres import PostgresDatabase, _rowcount
from scheduler.db_sqlite import SqliteDatabase
from scheduler.schema import (
    for_dialect,
    migration_files,
    postgres_params,
    postgres_text,
)

SCRIPT = """CREATE TABLE t (a INTEGER);
-- dialect: sqlite
PRAGMA x = 1;
-- dialect: postgresql
ALTER TABLE t ADD COLUMN b REAL;
-- dialect: all
CREATE INDEX t_a ON t(a);
"""


def test_sections_keep_what_each_database_runs() -> None:
    assert for_dialect(SCRIPT, "sqlite").split("\n") == [
        "CREATE TABLE t (a INTEGER);",
        "PRAGMA x = 1;",
        "CREATE INDEX t_a ON t(a);",
        "",
    ]
    assert for_dialect(SCRIPT, "postgresql").split("\n") == [
        "CREATE TABLE t (a INTEGER);",
        "ALTER TABLE t ADD COLUMN b REAL;",
        "CREATE INDEX t_a ON t(a);",
        "",
    ]
    with pytest.raises(ValueError, match="mysql"):
        for_dialect("-- dialect: mysql\n", "sqlite")


def test_postgres_types_are_eight_bytes_and_sort_like_sqlite() -> None:
    sql = (
        "CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT, n INTEGER, at REAL, "
        "name TEXT DEFAULT 'INTEGER and REAL', \"TEXT\" TEXT) -- REAL stays in comments\n"
    )
    assert postgres_text(sql) == (
        "CREATE TABLE t (id BIGSERIAL PRIMARY KEY, n BIGINT, at DOUBLE PRECISION, "
        'name TEXT COLLATE "C" DEFAULT \'INTEGER and REAL\', "TEXT" TEXT COLLATE "C") '
        "-- REAL stays in comments\n"
    )


def test_placeholders_are_numbered_outside_literals_and_quoted_names() -> None:
    sql = "SELECT '?', \"a?\" FROM t WHERE a = ? AND b IN (?, ?) -- ?\n AND c = ?"
    assert postgres_params(sql) == (
        "SELECT '?', \"a?\" FROM t WHERE a = $1 AND b IN ($2, $3) -- ?\n AND c = $4"
    )
    assert postgres_params(sql) is postgres_params(sql)  # translated once
    assert postgres_params("SELECT 1") == "SELECT 1"


def test_every_migration_has_known_sections_for_both() -> None:
    for _, script in migration_files():
        for dialect in ("sqlite", "postgresql"):
            for_dialect(script, dialect)


def test_rowcount_from_a_command_status() -> None:
    assert _rowcount("UPDATE 3") == 3
    assert _rowcount("INSERT 0 1") == 1
    assert _rowcount("SAVEPOINT") == -1


def _config(**raw: object) -> SchedulerConfig:
    return msgspec.convert(raw, SchedulerConfig)


def test_database_url_wins_over_database_and_names_the_backend() -> None:
    plain = database_for(_config(database="/var/x.db"))
    assert isinstance(plain, SqliteDatabase) and plain.path == "/var/x.db"
    url = database_for(_config(database="/var/x.db", database_url="sqlite:///srv/y.db"))
    assert isinstance(url, SqliteDatabase) and url.path == "/srv/y.db"
    pg = database_for(_config(database_url="postgresql://nb:secret@db.example:5433/fleet"))
    assert isinstance(pg, PostgresDatabase)
    assert pg.where == "postgresql://nb@db.example:5433/fleet"  # never the password


@pytest.mark.parametrize("url", ["mysql://x/y", "sqlite", "postgresql:", "/var/x.db"])
def test_a_database_url_of_another_kind_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError, match="database_url"):
        load(
            SchedulerConfig,
            None,
            env_prefix="NBFLEET_SCHEDULER_",
            environ={"NBFLEET_SCHEDULER_DATABASE_URL": url},
        )
