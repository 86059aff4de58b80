"""Placement rules, on find_host against a real SQLite database (in memory)."""

from __future__ import annotations

import itertools

import pytest

from common.config import SchedulerConfig
from common.errors import ApiError
from common.wire import DiskSpace
from scheduler.db import Database
from scheduler.db_sqlite import SqliteDatabase
from scheduler.placement import (
    DiskFloor,
    Resources,
    find_host,
    refresh_hosts,
    reserve,
    resources_for,
)

CONFIG = SchedulerConfig(cpus_per_gpu=4, memory_mb_per_gpu=16384, memory_mb_per_cpu=4096)
NOW = 1_000_000.0


def gpus(n: int) -> Resources:
    return resources_for(n, None, CONFIG)


@pytest.fixture
async def db():
    database = SqliteDatabase(":memory:")
    await database.open()
    # GPUs are reserved here without notebook rows.
    database.conn.execute("PRAGMA foreign_keys=OFF")
    yield database
    await database.close()


async def add_host(
    db: Database, name: str, free: int, *, cpus: int = 32, indexes: list[int] | None = None
) -> None:
    async with db.transaction() as tx:
        await tx.run(
            "INSERT INTO hosts (id, agent_url, cpus, memory_mb, state, last_heartbeat, "
            "registered_at) VALUES (?, 'http://x', ?, 1, 'ready', ?, ?)",
            (name, cpus, NOW, NOW),
        )
        for i in indexes if indexes is not None else range(free):
            await tx.run(
                "INSERT INTO gpus (uuid, host_id, idx, model, memory_total_mb) "
                "VALUES (?, ?, ?, 'A100', 1)",
                (f"{name}-{i}", name, i),
            )
        await refresh_hosts(tx, {name})


async def place(db: Database, res: Resources, **kw: object):
    kw.setdefault("disk_floor", DiskFloor.of(CONFIG))
    async with db.transaction() as tx:
        return await find_host(tx, res, now=NOW, fresh_within_s=30, **kw)


async def take(db: Database, res: Resources, notebook: str):
    """Place and reserve, as a run does."""
    async with db.transaction() as tx:
        chosen = await find_host(
            tx, res, now=NOW, fresh_within_s=30, disk_floor=DiskFloor.of(CONFIG)
        )
        if chosen is not None:
            await reserve(tx, chosen, notebook)
            await refresh_hosts(tx, {chosen.host})
        return chosen


def test_defaults() -> None:
    assert resources_for(None, None, CONFIG) == Resources(gpu=1, cpu=4, memory_mb=16384)
    assert resources_for(0, None, CONFIG) == Resources(gpu=0, cpu=1, memory_mb=4096)
    assert resources_for(None, 3, CONFIG) == Resources(gpu=0, cpu=3, memory_mb=12288)
    assert resources_for(2, 1, CONFIG) == Resources(gpu=2, cpu=1, memory_mb=32768)
    with pytest.raises(ApiError) as err:
        resources_for(0, 0, CONFIG)
    assert err.value.code == "invalid_request" and "$.cpu" in err.value.message


async def test_best_fit_leaves_fewest_gpus_over(db: Database) -> None:
    for name, free in (("a", 4), ("b", 2), ("c", 3)):
        await add_host(db, name, free)
    assert (await place(db, gpus(2))).host == "b"
    assert (await place(db, gpus(3))).host == "c"
    assert (await place(db, gpus(4))).host == "a"
    assert (await place(db, gpus(1), strategy="spread")).host == "a"


async def test_ties_go_to_the_lowest_host_id(db: Database) -> None:
    for name in ("z", "m", "q"):
        await add_host(db, name, 2)
    assert (await place(db, gpus(1))).host == "m"


async def test_last_host_preferred_when_it_fits(db: Database) -> None:
    await add_host(db, "a", 4)
    await add_host(db, "b", 1)
    assert (await place(db, gpus(1), last_host="a")).host == "a"
    assert (await place(db, gpus(2), last_host="b")).host == "a"  # b does not fit
    assert (await place(db, gpus(1), last_host="gone")).host == "b"


async def test_lowest_index_gpus_are_picked(db: Database) -> None:
    await add_host(db, "a", 3, indexes=[5, 1, 3])
    assert (await place(db, gpus(2))).gpus == ("a-1", "a-3")


async def test_no_room_is_none(db: Database) -> None:
    assert await place(db, gpus(1)) is None  # no host at all
    await add_host(db, "a", 1)
    await add_host(db, "b", 0)
    assert await place(db, gpus(2)) is None


async def test_cpu_notebooks_use_free_cpus(db: Database) -> None:
    await add_host(db, "a", 4, cpus=8)
    await add_host(db, "b", 0, cpus=3)
    cpu3 = resources_for(0, 3, CONFIG)
    chosen = await place(db, cpu3)
    assert (chosen.host, chosen.gpus) == ("b", ())
    assert (await place(db, resources_for(0, 5, CONFIG))).host == "a"
    assert await place(db, resources_for(0, 9, CONFIG)) is None


async def test_never_two_notebooks_on_one_gpu(db: Database) -> None:
    """Placing one request after another, reserving what each took, never reuses a GPU."""
    for name, free in (("a", 3), ("b", 5), ("c", 2)):
        await add_host(db, name, free)
    taken: list[str] = []
    for n, wanted in enumerate(itertools.cycle([2, 1, 3])):
        chosen = await take(db, gpus(wanted), f"nb{n}")
        if chosen is None:
            break
        assert len(chosen.gpus) == wanted
        taken.extend(chosen.gpus)
    assert len(taken) == len(set(taken))
    assert len(taken) >= 8


async def set_disk(db: Database, name: str, free_gb: float | None, total_gb: float | None) -> None:
    async with db.transaction() as tx:
        await tx.run(
            "UPDATE hosts SET disk_free_bytes = ?, disk_total_bytes = ? WHERE id = ?",
            (
                None if free_gb is None else int(free_gb * 1e9),
                None if total_gb is None else int(total_gb * 1e9),
                name,
            ),
        )


async def test_a_host_whose_workspace_disk_is_nearly_full_is_skipped(db: Database) -> None:
    # Defaults: keep free the larger of 5% and 10 GB.
    await add_host(db, "a", 1)
    await add_host(db, "b", 4)
    await set_disk(db, "a", 24.9, 500)  # 5% of 500 GB is 25 GB
    await set_disk(db, "b", 25.0, 500)
    assert (await place(db, gpus(1))).host == "b"  # a fits best, but its disk is full
    assert (await place(db, gpus(1), last_host="a")).host == "b"
    await set_disk(db, "b", 9.9, 100)  # 5% is 5 GB; the 10 GB floor holds
    assert await place(db, gpus(1)) is None
    await set_disk(db, "b", None, None)  # an agent that does not report its disk
    assert (await place(db, gpus(1))).host == "b"
    # Both thresholds 0: disk space is not looked at.
    assert (await place(db, gpus(1), disk_floor=DiskFloor())).host == "a"


@pytest.mark.parametrize(
    "free_gb, total_gb, blocked",
    [(24.9, 500, True), (25.0, 500, False), (9.9, 100, True), (10.0, 100, False)],
)
async def test_the_floor_in_python_and_in_sql_agree(
    db: Database, free_gb: float, total_gb: float, blocked: bool
) -> None:
    floor = DiskFloor.of(CONFIG)
    assert floor.blocks(DiskSpace(int(free_gb * 1e9), int(total_gb * 1e9))) is blocked
    await add_host(db, "a", 1)
    await set_disk(db, "a", free_gb, total_gb)
    assert (await place(db, gpus(1)) is None) is blocked


def test_the_reason_names_free_total_and_floor() -> None:
    floor = DiskFloor(min_free_pct=5, min_free_gb=10)
    assert floor.why(DiskSpace(3_200_000_000, 500_000_000_000)) == (
        "workspace disk nearly full (3.2 GB free of 500.0 GB; 25.0 GB must stay free)"
    )
    assert not floor.blocks(None)
