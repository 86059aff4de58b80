"""Group commit on PostgreSQL (scheduler.db_postgres): write blocks that queue behind one
another in a process share one transaction, each in a savepoint of its own, and must behave
exactly as if each had committed alone before the next began.

* A block that raises (its own error, or a broken constraint) is rolled back alone; the others
  of its group are stored, and only theirs after-commit callbacks run.
* Read-modify-write through two processes' pools ("replicas") loses no update.
* A writer that gives up while queued does not leave the group it would have joined open.
* When the connection dies before the group commits, every block of it fails and nothing of
  it is stored; the database serves writers again afterwards.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import asyncpg
import pytest

from scheduler.db import IntegrityError
from scheduler.db_postgres import PostgresDatabase
from tests.support.postgres import PostgresDatabases


@pytest.fixture
async def db(postgres_databases: PostgresDatabases) -> AsyncIterator[PostgresDatabase]:
    url = postgres_databases.fresh()
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v BIGINT NOT NULL)")
        await conn.execute("INSERT INTO t VALUES ('n', 0)")
    finally:
        await conn.close()
    database = PostgresDatabase(url)
    await database.open()
    try:
        yield database
    finally:
        await database.close()
        postgres_databases.drop(url)


async def counter(db: PostgresDatabase) -> int:
    row = await db.query_one("SELECT v FROM t WHERE k = 'n'")
    assert row is not None
    return row["v"]


async def increment(db: PostgresDatabase) -> None:
    async with db.transaction() as tx:
        row = await tx.one("SELECT v FROM t WHERE k = 'n'")
        await asyncio.sleep(0)  # others run meanwhile: they must wait for this block
        await tx.run("UPDATE t SET v = ? WHERE k = 'n'", (row["v"] + 1,))


async def test_a_failing_block_is_rolled_back_alone(db: PostgresDatabase) -> None:
    committed: list[int] = []
    failing = {0: "raise", 3: "raise", 5: "integrity"}

    async def block(i: int) -> int:
        async with db.transaction() as tx:
            await tx.run("INSERT INTO t VALUES (?, ?)", (f"k{i}", i))
            tx.after_commit(lambda: committed.append(i))
            if failing.get(i) == "raise":
                raise RuntimeError(f"block {i} fails")
            if failing.get(i) == "integrity":
                await tx.run("INSERT INTO t VALUES (?, ?)", ("n", 1))
        return i

    results = await asyncio.gather(*(block(i) for i in range(10)), return_exceptions=True)
    assert [type(r) for r in results] == [
        RuntimeError if failing.get(i) == "raise" else IntegrityError if i in failing else int
        for i in range(10)
    ]
    stored = sorted(r["k"] for r in await _rows(db, "SELECT k FROM t WHERE k != 'n'"))
    assert stored == sorted(f"k{i}" for i in range(10) if i not in failing)
    assert sorted(committed) == [i for i in range(10) if i not in failing]


async def test_read_modify_write_through_two_processes_loses_no_update(
    db: PostgresDatabase,
) -> None:
    other = PostgresDatabase(db.url)
    await other.open()
    try:
        await asyncio.gather(*(increment(random.choice((db, other))) for _ in range(300)))
    finally:
        await other.close()
    assert await counter(db) == 300


async def test_a_writer_that_gives_up_while_queued_leaves_no_group_open(
    db: PostgresDatabase,
) -> None:
    release = asyncio.Event()

    async def holder() -> None:
        async with db.transaction() as tx:
            await tx.run("UPDATE t SET v = v + 1 WHERE k = 'n'")
            await release.wait()  # holds the writers' lock while the next one queues

    first = asyncio.create_task(holder())
    await asyncio.sleep(0.05)
    queued = asyncio.create_task(increment(db))
    await asyncio.sleep(0.05)
    release.set()
    await asyncio.sleep(0)
    queued.cancel()
    await asyncio.wait_for(first, 10)
    # Committed, and the lock is free for the next writer.
    await asyncio.wait_for(increment(db), 10)
    assert await counter(db) in (2, 3)  # the cancelled one may have run before its cancel


async def test_a_connection_lost_before_commit_fails_every_block_of_the_group(
    db: PostgresDatabase,
) -> None:
    async def block(i: int, kill: bool = False) -> int:
        async with db.transaction() as tx:
            await tx.run("INSERT INTO t VALUES (?, ?)", (f"m{i}", i))
            if kill:
                pid = await tx.one("SELECT pg_backend_pid() AS pid")
                admin = await asyncpg.connect(db.url)
                try:
                    await admin.execute("SELECT pg_terminate_backend($1)", pid["pid"])
                finally:
                    await admin.close()
        return i

    results = await asyncio.wait_for(
        asyncio.gather(block(1), block(2), block(3, kill=True), block(4), return_exceptions=True),
        30,
    )
    # Blocks committed in a group before the one that broke may stand; none after it, and
    # never a block reported as done that is not stored.
    stored = {r["k"] for r in await _rows(db, "SELECT k FROM t WHERE k LIKE 'm%'")}
    done = {f"m{r}" for r in results if isinstance(r, int)}
    assert done == stored, (results, stored)
    assert "m3" not in stored
    await asyncio.wait_for(asyncio.gather(*(increment(db) for _ in range(20))), 30)
    assert await counter(db) == 20


async def _rows(db: PostgresDatabase, sql: str) -> list:
    async with db.read() as tx:
        return await tx.all(sql)
