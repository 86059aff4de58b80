"""Creates that arrive together are stored and placed in one transaction (a batch,
scheduler/batches.py), each decided as if it had come alone: quota with the ones before it
placed, the hosts' counters kept current between placements (GPUs and CPUs), the later ones of
a kind queued behind one that queued, and a refused one stored nowhere. Both databases."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

from scheduler.api.context import CONTEXT
from tests.component.conftest import FakeClock, Harness, Reply, make_config


async def _gate_batches(harness: Harness) -> tuple[list[int], asyncio.Event]:
    """Record the size of every batch of creates, and hold the first until the event is set,
    so the requests sent meanwhile make one batch."""
    batcher = harness.app[CONTEXT].notebooks._creates
    run = batcher._run
    sizes: list[int] = []
    gate = asyncio.Event()

    async def gated(batch: list[Any]) -> Any:
        sizes.append(len(batch))
        if len(sizes) == 1:
            await gate.wait()
        return await run(batch)

    batcher._run = gated
    return sizes, gate


async def _waiting(harness: Harness, count: int) -> None:
    batcher = harness.app[CONTEXT].notebooks._creates
    for _ in range(500):
        if len(batcher._waiting) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{len(batcher._waiting)} creates waiting, expected {count}")


async def test_a_batch_of_creates_is_decided_as_if_each_came_alone(
    tmp_path: Path, clock: FakeClock
) -> None:
    harness = Harness(
        config=make_config(
            tmp_path, quota={"gpus": 5, "cpus": 256, "notebooks": 64, "cpus_per_notebook": 128}
        ),
        clock=clock,
    )
    await harness.start()
    try:
        project = await harness.project("alpha")
        for name in ("h1", "h2"):
            await harness.agent(name).register(gpus=4, cpus=16)
        sizes, gate = await _gate_batches(harness)
        first = asyncio.create_task(project.run(expect=None, gpu=1))
        while not sizes:
            await asyncio.sleep(0.01)
        bad_volume = {"container": "bucket", "alias": "nope", "mount_path": "/data/x"}
        bodies: list[dict[str, Any]] = (
            [{"gpu": 1}] * 6  # with the first: 5 placed (quota of 5 GPUs), 2 over quota
            + [{"cpu": 6}] * 5  # 16 CPUs a host: 2 a host placed, the fifth queued
            + [{"gpu": 1, "volumes": [bad_volume]}] * 2  # no such datastore
            + [{"cpu": 64}]  # no host could ever hold it
        )
        rest = [asyncio.create_task(project.run(expect=None, **body)) for body in bodies]
        await _waiting(harness, len(bodies))
        gate.set()
        replies: list[Reply] = [await first, *await asyncio.gather(*rest)]
        assert sizes == [1, len(bodies)]
        outcomes = Counter(
            (r.status, r.json.get("state") if r.status == 201 else r.code) for r in replies
        )
        assert outcomes == {
            (201, "STARTING"): 5 + 4,
            (201, "QUEUED"): 1,
            (403, "forbidden"): 2,
            (400, "invalid_request"): 2,
            (503, "no_capacity"): 1,
        }, outcomes
        created = {r.json["id"]: r.json for r in replies if r.status == 201}

        # What is stored is what was answered: the refused ones left nothing behind.
        stored = harness.committed("SELECT id, state, host_id, gpu, cpu FROM notebooks")
        assert {row[0]: row[1] for row in stored} == {i: n["state"] for i, n in created.items()}
        history = harness.committed("SELECT notebook_id, state, reason FROM state_history")
        assert sorted(row[0] for row in history) == sorted(created)
        for notebook_id, state, reason in history:
            assert state == created[notebook_id]["state"]
            assert reason.startswith("placed on h" if state == "STARTING" else "waiting for ")

        # Every host's counters are what its GPUs and notebooks say, and none is overbooked.
        for host, gpus_free, cpus_used, cpus in harness.committed(
            "SELECT id, gpus_free, cpus_used, cpus FROM hosts ORDER BY id"
        ):
            free = harness.committed(
                "SELECT COUNT(*) FROM gpus WHERE host_id = ? AND notebook_id IS NULL", (host,)
            )[0][0]
            used = sum(row[4] for row in stored if row[2] == host and row[3] == 0)
            assert (gpus_free, cpus_used) == (free, used), host
            assert used == 12 <= cpus, host
        holders = [row[0] for row in harness.committed("SELECT notebook_id FROM gpus") if row[0]]
        assert len(holders) == len(set(holders)) == 5

        # The project's use, which the quota reads, is what the notebooks hold.
        [(gpus_used, cpus_used, active)] = harness.committed(
            "SELECT gpus_used, cpus_used, notebooks_active FROM projects WHERE name = 'alpha'"
        )
        assert (gpus_used, cpus_used, active) == (5, 24, 9)
    finally:
        await harness.close()


async def test_a_create_refused_alone_in_a_failed_batch_does_not_fail_the_others(
    tmp_path: Path, clock: FakeClock
) -> None:
    """A batch that fails as a whole (here the database refuses one create's row: its fork
    source vanished) is run again one create at a time: only that one is refused."""
    harness = Harness(config=make_config(tmp_path), clock=clock)
    await harness.start()
    try:
        project = await harness.project("alpha")
        await harness.agent("h1").register(gpus=4)
        service = harness.app[CONTEXT].notebooks
        sizes, gate = await _gate_batches(harness)
        first = asyncio.create_task(project.run(expect=None, gpu=1))
        while not sizes:
            await asyncio.sleep(0.01)
        rest = [asyncio.create_task(project.run(expect=None, gpu=1)) for _ in range(3)]
        await _waiting(harness, 3)
        # One of the waiting creates names a fork source that does not exist: its row breaks
        # a foreign key, which fails the whole batch's insert.
        waiting = service._creates._waiting
        request, future = waiting[1]
        values = list(request.values)
        values[-5] = "no-such-notebook"  # fork_notebook
        waiting[1] = (type(request)(request.project, tuple(values), [], ""), future)
        gate.set()
        replies = [await first, *await asyncio.gather(*rest)]
        assert sizes[:2] == [1, 3] and sizes[2:] == [1, 1, 1]
        assert sorted(r.status for r in replies) == [201, 201, 201, 500]
        stored = harness.committed("SELECT id FROM notebooks")
        assert sorted(row[0] for row in stored) == sorted(
            r.json["id"] for r in replies if r.status == 201
        )
    finally:
        await harness.close()
