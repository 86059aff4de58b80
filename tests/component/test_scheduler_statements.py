"""The database's batched statements (scheduler.db), on SQLite and on a real PostgreSQL:

* :func:`scheduler.db.run_values` writes every row it is given and nothing else, across chunks
  and with the padding that rounds a chunk up;
* :meth:`scheduler.db.Tx.all_with` stores its writes with its last statement, answers that
  statement's rows, and a block that raises after it stores none of them;
* notifications a group commit carries, several at once and with quotes in them, reach a
  listening replica whole and in order.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from scheduler.db import VALUES_CHUNK, Database, run_values
from scheduler.db_postgres import PostgresDatabase
from scheduler.db_sqlite import SqliteDatabase
from tests.support.postgres import PostgresDatabases

HOST, OTHER = "host-a", "host-b"


@pytest.fixture(params=["sqlite", "postgresql"])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    if request.param == "sqlite":
        database: Database = SqliteDatabase(str(tmp_path / "scheduler.db"))
        url = None
    else:
        databases: PostgresDatabases = request.getfixturevalue("postgres_databases")
        url = databases.fresh()
        database = PostgresDatabase(url)
    await database.open()
    try:
        async with database.transaction() as tx:
            await tx.run(
                "INSERT INTO hosts (id, agent_url, cpus, memory_mb, nvidia_runtime, "
                "last_heartbeat, registered_at) VALUES (?, 'http://127.0.0.1:1', 8, 1024, 0, 0, 0)",
                (HOST,),
            )
            await tx.run(
                "INSERT INTO hosts (id, agent_url, cpus, memory_mb, nvidia_runtime, "
                "last_heartbeat, registered_at) VALUES (?, 'http://127.0.0.1:2', 8, 1024, 0, 0, 0)",
                (OTHER,),
            )
        yield database
    finally:
        await database.close()
        if url is not None:
            databases.drop(url)


async def _gpus(db: Database) -> dict[str, tuple[int, int]]:
    async with db.read() as tx:
        rows = await tx.all("SELECT uuid, memory_used_mb, utilization_pct FROM gpus")
    return {r["uuid"]: (r["memory_used_mb"], r["utilization_pct"]) for r in rows}


@pytest.mark.parametrize("count", [1, 3, VALUES_CHUNK, VALUES_CHUNK + 45])
async def test_run_values_writes_every_row_given_and_no_other(db: Database, count: int) -> None:
    total = count + 5  # five GPUs nobody reports on
    async with db.transaction() as tx:
        await tx.run_many(
            "INSERT INTO gpus (uuid, host_id, idx, model, memory_total_mb) "
            "VALUES (?, ?, ?, 'H100', 81920)",
            ((f"GPU-{i}", HOST, i) for i in range(total)),
        )
    async with db.transaction() as tx:
        await run_values(
            tx,
            "UPDATE gpus SET memory_used_mb = v.column1, utilization_pct = v.column2 "
            "FROM (VALUES {values}) AS v WHERE gpus.uuid = v.column3 AND gpus.host_id = v.column4",
            "(CAST(? AS BIGINT), CAST(? AS BIGINT), ?, ?)",
            ((1000 + i, i % 101, f"GPU-{i}", HOST) for i in range(count)),
        )
    assert await _gpus(db) == {
        f"GPU-{i}": (1000 + i, i % 101) if i < count else (0, 0) for i in range(total)
    }


async def test_run_values_with_no_rows_runs_nothing(db: Database) -> None:
    async with db.transaction() as tx:
        await run_values(tx, "this is not SQL {values}", "(?)", [])


async def test_all_with_stores_its_writes_with_the_last_statement(db: Database) -> None:
    async with db.transaction() as tx:
        rows = await tx.all_with(
            [
                ("UPDATE hosts SET cpus = ? WHERE id = ?", (16, OTHER)),
                (
                    "INSERT INTO gpus (uuid, host_id, idx, model, memory_total_mb) "
                    "VALUES (?, ?, 0, 'H100', 81920)",
                    ("GPU-x", HOST),
                ),
            ],
            "UPDATE hosts SET memory_mb = ? WHERE id = ? RETURNING id, memory_mb",
            (2048, HOST),
        )
    assert [(r["id"], r["memory_mb"]) for r in rows] == [(HOST, 2048)]
    async with db.read() as tx:
        hosts = await tx.all("SELECT id, cpus, memory_mb FROM hosts ORDER BY id")
    assert [tuple(h) for h in hosts] == [(HOST, 8, 2048), (OTHER, 16, 1024)]
    assert await _gpus(db) == {"GPU-x": (0, 0)}


async def test_a_block_that_raises_after_all_with_stores_none_of_it(db: Database) -> None:
    with pytest.raises(RuntimeError, match="refused"):
        async with db.transaction() as tx:
            rows = await tx.all_with(
                [("UPDATE hosts SET cpus = ? WHERE id = ?", (16, OTHER))],
                "UPDATE hosts SET memory_mb = ? WHERE id = ? AND memory_mb = ? RETURNING id",
                (2048, HOST, 1),  # matches nothing: the caller refuses, as change_state does
            )
            if not rows:
                raise RuntimeError("refused")
    async with db.read() as tx:
        hosts = await tx.all("SELECT id, cpus, memory_mb FROM hosts ORDER BY id")
    assert [tuple(h) for h in hosts] == [(HOST, 8, 1024), (OTHER, 8, 1024)]


async def test_notifications_of_a_commit_arrive_whole_and_in_order(
    postgres_databases: PostgresDatabases,
) -> None:
    url = postgres_databases.fresh()
    writer, listener = PostgresDatabase(url), PostgresDatabase(url)
    await writer.open()
    await listener.open()
    heard: list[str] = []
    try:
        await listener.listen({"nbfleet_test": heard.append})
        for _ in range(100):  # until the listening connection is up
            await writer.notify("nbfleet_test", "ping")
            await asyncio.sleep(0.05)
            if heard:
                break
        heard.clear()
        sent = ["a", "it's", "b,c d", "''", "last"]
        async with writer.transaction() as tx:
            await tx.run("UPDATE hosts SET cpus = cpus + 1 WHERE id = ?", ("nobody",))
            for payload in sent:
                tx.notify("nbfleet_test", payload)
        for _ in range(100):
            if len(heard) >= len(sent):
                break
            await asyncio.sleep(0.05)
        assert heard == sent
    finally:
        await listener.close()
        await writer.close()
        postgres_databases.drop(url)
