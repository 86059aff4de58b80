"""The scheduler's database as an operator meets it: ``nbfleet-scheduler migrate``, and a
scheduler that will not start on a PostgreSQL database missing migrations."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from scheduler.db import MigrationsPending
from scheduler.db_postgres import PostgresDatabase
from scheduler.main import main
from scheduler.schema import migration_files
from tests.support.postgres import PostgresDatabases, committed_rows

ALL = [name for name, _ in migration_files()]


@pytest.fixture
def empty_postgres(postgres_databases: PostgresDatabases) -> Iterator[str]:
    url = postgres_databases.empty()
    yield url
    postgres_databases.drop(url)


def _config(tmp_path: Path, database: str) -> str:
    path = tmp_path / "scheduler.toml"
    path.write_text(
        f"{database}\n"
        f'admin_token_file = "{tmp_path / "admin.token"}"\n'
        f'agent_secrets_dir = "{tmp_path / "agents"}"\n'
        'listen = "127.0.0.1:1"\n'
    )
    return str(path)


def test_postgres_refuses_to_run_until_migrate_has_applied_every_migration(
    tmp_path: Path, empty_postgres: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path, f'database_url = "{empty_postgres}"')
    assert main(["run", "--config", config]) == 2
    refused = capsys.readouterr().err
    assert f"lacks the migrations {', '.join(ALL)}" in refused
    assert f"nbfleet-scheduler migrate --config {config}" in refused

    assert main(["migrate", "--config", config]) == 0
    assert capsys.readouterr().out.strip().endswith(f"applied {', '.join(ALL)}")
    assert main(["migrate", "--config", config]) == 0
    assert capsys.readouterr().out.strip().endswith("up to date")
    applied = committed_rows(empty_postgres, "SELECT version FROM schema_migrations ORDER BY 1")
    assert [r[0] for r in applied] == ALL


async def test_an_open_names_the_missing_migrations(empty_postgres: str) -> None:
    with pytest.raises(MigrationsPending) as refused:
        await PostgresDatabase(empty_postgres).open()
    assert refused.value.missing == ALL


async def test_two_replicas_migrating_at_once_apply_each_migration_once(
    empty_postgres: str,
) -> None:
    first, second = await asyncio.gather(
        PostgresDatabase(empty_postgres).migrate(), PostgresDatabase(empty_postgres).migrate()
    )
    assert sorted(first + second) == ALL  # one of them did it all, the other found it done
    database = PostgresDatabase(empty_postgres)
    await database.open()
    await database.close()


def test_sqlite_migrates_at_start_and_migrate_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "state" / "scheduler.db"
    config = _config(tmp_path, f'database_url = "sqlite://{file}"')
    assert main(["migrate", "--config", config]) == 0
    assert capsys.readouterr().out.strip() == f"sqlite://{file}: applied {', '.join(ALL)}"
    assert main(["migrate", "--config", config]) == 0
    assert capsys.readouterr().out.strip() == f"sqlite://{file}: up to date"
    applied = committed_rows(str(file), "SELECT version FROM schema_migrations ORDER BY 1")
    assert [r[0] for r in applied] == ALL
