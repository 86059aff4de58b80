"""Two scheduler apps ("replicas", each with a Database of its own: a pool of its own on
PostgreSQL) on one database, with concurrent requests spread over both: writers are serialized
across them, so a quota is never overshot and a GPU never reserved twice, whichever replica a
request reaches. On PostgreSQL the two apps' transactions really interleave at every statement
(each is a round trip); only the writers' advisory lock keeps them apart."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.component.conftest import FakeClock, Harness, Reply, make_config

RUNS = 50


@pytest.fixture
async def replicas(tmp_path: Path, clock: FakeClock) -> AsyncIterator[list[Harness]]:
    config = make_config(
        tmp_path, quota={"gpus": 4, "cpus": 256, "notebooks": 64, "cpus_per_notebook": 128}
    )
    started = []
    try:
        for _ in range(2):
            replica = Harness(config=config, clock=clock)
            await replica.start()
            started.append(replica)
        yield started
    finally:
        for replica in started:
            await replica.close()


async def _runs_over(replicas: list[Harness], token: str, **fields: Any) -> list[Reply]:
    body = {"framework": "conda", "editor": "jupyterlab", **fields}
    return await asyncio.gather(
        *(
            replicas[i % len(replicas)].call("POST", "/v1/notebooks", token=token, body=body)
            for i in range(RUNS)
        )
    )


def _reserved(harness: Harness) -> dict[str, list[str]]:
    """GPU uuids by the notebook holding them, as committed."""
    held: dict[str, list[str]] = {}
    for uuid, notebook in harness.committed(
        "SELECT uuid, notebook_id FROM gpus WHERE notebook_id IS NOT NULL"
    ):
        held.setdefault(notebook, []).append(uuid)
    return held


async def test_fifty_runs_over_two_replicas_never_put_a_fifth_gpu_in_use(
    replicas: list[Harness],
) -> None:
    first, second = replicas
    project = await first.project("alpha")
    for host in ("h1", "h2"):
        await second.agent(host).register(gpus=4)

    replies = await _runs_over(replicas, project.operator, gpu=1)

    assert Counter(r.status for r in replies) == {201: 4, 403: RUNS - 4}, [r.text for r in replies]
    assert {r.code for r in replies if r.status == 403} == {"forbidden"}
    placed = [r.json for r in replies if r.status == 201]
    assert {nb["state"] for nb in placed} == {"STARTING"}
    held = _reserved(first)
    assert sorted(held) == sorted(nb["id"] for nb in placed)
    assert all(len(uuids) == 1 for uuids in held.values())
    quota = (await second.call("GET", "/v1/quota", token=project.read)).json
    assert quota["used"]["gpus"] == 4


async def test_fifty_runs_over_two_replicas_never_reserve_a_gpu_twice(
    replicas: list[Harness],
) -> None:
    first, second = replicas
    project = await first.project("alpha")
    await first.call(
        "PATCH",
        "/v1/admin/projects/alpha/quota",
        token=first.admin_token,
        body={"gpus": 64},
    )
    for host in ("h1", "h2"):
        await first.agent(host).register(gpus=4)

    replies = await _runs_over(replicas, project.operator, gpu=1)

    assert Counter(r.status for r in replies) == {201: RUNS}, [r.text for r in replies]
    states = Counter(r.json["state"] for r in replies)
    assert states == {"STARTING": 8, "QUEUED": RUNS - 8}
    held = _reserved(second)
    uuids = [uuid for found in held.values() for uuid in found]
    assert len(uuids) == len(set(uuids)) == 8
    assert sorted(held) == sorted(r.json["id"] for r in replies if r.json["state"] == "STARTING")
    listed = (await second.call("GET", "/v1/notebooks", token=project.read)).json["items"]
    positions = sorted(nb["queue"]["position"] for nb in listed if nb["state"] == "QUEUED")
    assert positions == list(range(1, RUNS - 8 + 1))
