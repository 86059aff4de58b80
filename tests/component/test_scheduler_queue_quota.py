"""Issue 4: quotas (and their race), the fair queue, flavors, the runtime limit and
restart-on-timeout, driven by the fake clock through the real HTTP API."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.component.conftest import Agent, FakeClock, Harness, Tokens, make_config

FLAVORS = {
    "h100-1-gpu": {"gpu_model": "H100", "cpu": 12, "memory_mb": 80_000, "disk_gb": 100},
    "a100-1-gpu": {"gpu_model": "A100", "cpu": 8, "memory_mb": 40_000, "disk_gb": 50},
    "ai1-1-cpu": {"gpu_model": "", "cpu": 1, "memory_mb": 4_000, "disk_gb": 10},
}


async def _harness(tmp_path: Path, clock: FakeClock, **overrides: Any) -> Harness:
    h = Harness(config=make_config(tmp_path, **overrides), clock=clock)
    await h.start()
    return h


@pytest.fixture
async def quota4(tmp_path: Path, clock: FakeClock):
    """The issue's defaults: 4 GPUs and 10 notebooks per project; 4 GPUs, 12 CPUs a notebook."""
    h = await _harness(
        tmp_path,
        clock,
        quota={"gpus": 4, "cpus": 48, "notebooks": 10, "cpus_per_notebook": 12},
        flavors=FLAVORS,
    )
    try:
        yield h
    finally:
        await h.close()


async def _in_use(harness: Harness) -> int:
    rows = harness.snapshot()["gpus"]
    return sum(1 for row in rows if row[-1] is not None)


async def test_fifty_concurrent_runs_never_exceed_a_quota_of_four_gpus(quota4: Harness) -> None:
    project = await quota4.project("alpha")
    for name in ("h1", "h2", "h3"):
        await quota4.agent(name).register(gpus=8)
    replies = await asyncio.gather(*(project.run(expect=None, gpu=1) for _ in range(50)))
    statuses = sorted(r.status for r in replies)
    assert statuses == [201] * 4 + [403] * 46
    assert await _in_use(quota4) == 4
    refused = next(r for r in replies if r.status == 403)
    assert refused.code == "forbidden"
    assert refused.json["message"] == (
        "project alpha: GPUs in use 4 + 1 requested would exceed the quota of 4 "
        "(an operator can change it with `nbfleet admin project quota alpha`)"
    )
    assert refused.json["detail"] == {"limit": "gpus", "used": 4, "requested": 1, "quota": 4}
    # only STARTING and RUNNING count: a stopped one gives its share back
    first = next(r.json for r in replies if r.status == 201)
    await project.action(first["id"], "stop")
    await quota4.agent(first["host"]).report(first["id"], "STOPPED")
    await project.run(gpu=1)
    assert await _in_use(quota4) == 4


async def test_per_notebook_limits_and_quota_changes(quota4: Harness) -> None:
    project = await quota4.project("alpha")
    await quota4.agent("h1").register(gpus=8, cpus=64)
    too_big = await project.run(expect=403, gpu=5)
    assert (
        too_big.json["message"] == "project alpha: a notebook may have at most 4 GPUs (asked for 5)"
    )
    cpu_heavy = await project.run(expect=403, gpu=0, cpu=16)
    assert "at most 12 CPUs (asked for 16)" in cpu_heavy.json["message"]
    nothing = quota4.snapshot()["notebooks"]
    assert nothing == []

    admin = quota4.admin_token
    changed = await quota4.call(
        "PATCH",
        "/v1/admin/projects/alpha/quota",
        token=admin,
        body={"gpus": 6, "gpus_per_notebook": 6},
    )
    assert changed.status == 200, changed.text
    assert changed.json["quota"]["gpus"] == 6 and changed.json["quota"]["notebooks"] == 10
    await project.run(gpu=5)
    own = await quota4.call("GET", "/v1/quota", token=project.read)
    assert own.json["used"] == {"gpus": 5, "cpus": 0, "notebooks": 1}
    bad = await quota4.call(
        "PATCH", "/v1/admin/projects/alpha/quota", token=admin, body={"gpus": -1}
    )
    assert bad.status == 400 and "$.gpus" in bad.json["message"]
    unknown = await quota4.call(
        "PATCH", "/v1/admin/projects/nope/quota", token=admin, body={"gpus": 1}
    )
    assert unknown.status == 404
    by_project = await quota4.call(
        "PATCH", "/v1/admin/projects/alpha/quota", token=project.operator, body={"gpus": 99}
    )
    assert by_project.status == 403


async def test_queue_is_fair_between_projects_and_shows_position(quota4: Harness) -> None:
    alpha, beta = await quota4.project("alpha"), await quota4.project("beta")
    host = quota4.agent("h1")
    await host.register(gpus=1)
    running = (await alpha.run(gpu=1)).json
    assert running["state"] == "STARTING"
    a = []
    for _ in range(3):
        a.append((await alpha.run(gpu=1)).json)
        quota4.clock.advance(1)
    b = (await beta.run(gpu=1)).json  # queued last, but beta has had no turn yet
    assert [nb["state"] for nb in (*a, b)] == ["QUEUED"] * 4
    positions = {nb["id"]: (await alpha.get(nb["id"]))["queue"]["position"] for nb in a}
    assert [positions[nb["id"]] for nb in a] == [2, 3, 4]
    shown = await beta.get(b["id"])
    assert shown["queue"] == {
        "position": 1,
        "waiting_for": "1 GPU",
        "queued_at": b["created_at"],
        "blocked_by": "capacity",
    }
    listed = await quota4.call("GET", "/v1/notebooks?state=QUEUED", token=alpha.read)
    assert [n["queue"]["position"] for n in listed.json["items"]] == [2, 3, 4]

    order = []
    current = running
    for _ in range(4):
        await host.report(current["id"], "RUNNING", generation=current["generation"], url="u")
        owner = alpha if current["project"] == "alpha" else beta
        await owner.action(current["id"], "stop")
        await host.report(current["id"], "STOPPED", generation=current["generation"])
        quota4.clock.advance(1)
        await host.heartbeat()
        await quota4.tick()
        placed = [
            nb
            for nb in (*a, b)
            if (await (alpha if nb["project"] == "alpha" else beta).get(nb["id"]))["state"]
            == "STARTING"
        ]
        assert len(placed) == 1
        current = placed[0]
        order.append(current["id"])
    # beta, never served, goes first; then alpha's in the order they were queued
    assert order == [b["id"], a[0]["id"], a[1]["id"], a[2]["id"]]


async def test_queued_notebooks_can_be_stopped_and_deleted(quota4: Harness) -> None:
    project = await quota4.project("alpha")
    await quota4.agent("h1").register(gpus=1)
    await project.run(gpu=1)
    waiting = (await project.run(gpu=1)).json
    stopped = await project.action(waiting["id"], "stop")
    assert stopped.status == 202 and stopped.json["state"] == "STOPPED"
    assert stopped.json["state_reason"] == "stopped while queued"
    other = (await project.run(gpu=1)).json
    deleted = await project.action(other["id"], "delete")
    assert deleted.json["state"] == "DELETED"  # it never ran: nothing to clean up on a host
    await quota4.tick()
    assert (await project.get(waiting["id"]))["state"] == "STOPPED"
    assert (await quota4.agent("h1").assignments())["items"][0]["state"] == "STARTING"


async def test_a_big_queue_head_is_not_overtaken_but_other_kinds_are_placed(
    quota4: Harness,
) -> None:
    project = await quota4.project("alpha")
    cpus = await quota4.project("beta")
    big_project = await quota4.project("gamma")
    host = quota4.agent("h1")
    await host.register(gpus=4, cpus=16)
    one = (await project.run(gpu=1)).json
    big = (await big_project.run(gpu=4)).json
    assert big["state"] == "QUEUED"
    small = (await cpus.run(gpu=0, cpu=2)).json  # a CPU request is another kind
    assert small["state"] == "STARTING"
    await host.report(one["id"], "FAILED")
    await quota4.tick()
    assert (await big_project.get(big["id"]))["state"] == "STARTING"


async def test_quota_blocked_queue_entries_wait_without_blocking_others(quota4: Harness) -> None:
    alpha, beta = await quota4.project("alpha"), await quota4.project("beta")
    host = quota4.agent("h1")
    await host.register(gpus=4)
    await alpha.run(gpu=2)
    filler = (await beta.run(gpu=2)).json  # h1 is full
    waiting_alpha = (await alpha.run(gpu=2)).json  # 2 + 2 <= 4: admitted, waits for room
    quota4.clock.advance(1)
    waiting_beta = (await beta.run(gpu=2)).json
    assert (waiting_alpha["state"], waiting_beta["state"]) == ("QUEUED", "QUEUED")
    # the operator lowers alpha's quota while its notebook waits
    lowered = await quota4.call(
        "PATCH", "/v1/admin/projects/alpha/quota", token=quota4.admin_token, body={"gpus": 2}
    )
    assert lowered.status == 200
    await host.report(filler["id"], "FAILED")
    await quota4.tick()
    assert (await beta.get(waiting_beta["id"]))["state"] == "STARTING"
    held = await alpha.get(waiting_alpha["id"])
    assert held["state"] == "QUEUED" and held["queue"]["blocked_by"] == "quota"
    assert "GPUs in use 2 + 2 requested would exceed the quota of 2" in held["state_reason"]


async def test_flavors_pick_the_model_and_scale_the_shape(quota4: Harness) -> None:
    project = await quota4.project("alpha")
    await quota4.agent("a100").register(gpus=4, flavor="a100-1-gpu")
    await quota4.agent("h100").register(gpus=2, flavor="h100-1-gpu")
    await quota4.agent("cpu").register(gpus=0, cpus=16, flavor="ai1-1-cpu")
    nb = (await project.run(gpu=2, flavor="h100-1-gpu")).json
    assert (nb["host"], nb["cpu"], nb["memory_mb"], nb["disk_gb"]) == ("h100", 24, 160_000, 200)
    assert nb["flavor"] == "h100-1-gpu"
    small = (await project.run(cpu=4, flavor="ai1-1-cpu")).json
    assert (small["host"], small["gpu"], small["cpu"], small["memory_mb"]) == ("cpu", 0, 4, 16_000)
    waiting = (await project.run(gpu=1, flavor="h100-1-gpu")).json
    assert waiting["state"] == "QUEUED"  # A100s are free, but an H100 was asked for
    assert waiting["queue"]["waiting_for"] == "1 × H100"
    unknown = await project.run(expect=400, flavor="tpu-v5")
    assert "unknown flavor 'tpu-v5'" in unknown.json["message"] and "$.flavor" in unknown.text
    wrong = await project.run(expect=400, flavor="ai1-1-cpu", gpu=1)
    assert "CPU flavor" in wrong.json["message"]
    never = await (await quota4.project("beta")).run(expect=503, flavor="h100-1-gpu", gpu=3)
    assert "no host of flavor h100-1-gpu has 3 GPUs (the largest has 2)" in never.json["message"]


async def test_spread_places_on_the_emptiest_host(tmp_path: Path, clock: FakeClock) -> None:
    h = await _harness(tmp_path, clock, placement="spread")
    try:
        project = await h.project("alpha")
        await h.agent("a").register(gpus=2)
        await h.agent("b").register(gpus=4)
        hosts = [(await project.run(gpu=1)).json["host"] for _ in range(4)]
        assert hosts == ["b", "b", "a", "b"]
    finally:
        await h.close()


async def test_runtime_limit_stops_and_restart_on_timeout_starts_again(
    quota4: Harness,
) -> None:
    project = await quota4.project("alpha")
    host = quota4.agent("h1")
    await host.register(gpus=2)
    plain = (await project.run(gpu=1)).json
    again = (await project.run(gpu=1, restart_on_timeout=True)).json
    assert again["restart_on_timeout"] is True
    for nb in (plain, again):
        await host.report(nb["id"], "RUNNING", url="http://h1/lab")
    seven_days = 7 * 24 * 3600
    quota4.clock.advance(seven_days - 60)
    await host.heartbeat()
    await quota4.tick()
    assert (await project.get(plain["id"]))["state"] == "RUNNING"
    quota4.clock.advance(60)
    await host.heartbeat()
    await quota4.tick()
    for nb in (plain, again):
        got = await project.get(nb["id"])
        assert got["state"] == "STOPPING"
        assert got["state_reason"].startswith("runtime limit of 7 days reached")
        assert got["billed_minutes"] == seven_days // 60
    for nb in (plain, again):
        await host.report(nb["id"], "STOPPED", reason="workspace pushed")
    await quota4.tick()
    assert (await project.get(plain["id"]))["state"] == "STOPPED"
    restarted = await project.get(again["id"])
    assert (restarted["state"], restarted["generation"]) == ("STARTING", 2)
    assert restarted["id"] == again["id"] and restarted["host"] == "h1"
    items = {i["notebook"]: i for i in (await host.assignments())["items"]}
    assert items[again["id"]]["initialized"] is True  # its workspace comes back from the snapshot
    states = [s["state"] for s in restarted["history"]]
    assert states == ["STARTING", "RUNNING", "STOPPING", "STOPPED", "QUEUED", "STARTING"]


async def test_a_user_stop_cancels_the_automatic_restart(quota4: Harness) -> None:
    project = await quota4.project("alpha")
    host = quota4.agent("h1")
    await host.register(gpus=1)
    nb = (await project.run(gpu=1, restart_on_timeout=True)).json
    await host.report(nb["id"], "RUNNING", url="u")
    quota4.clock.advance(7 * 24 * 3600)
    await host.heartbeat()
    await quota4.tick()
    await host.report(nb["id"], "FAILED", reason="push failed")
    await quota4.tick()
    # a notebook that failed to save its workspace is not restarted over an older snapshot
    assert (await project.get(nb["id"]))["state"] == "FAILED"


async def test_scoped_token_reaches_only_labelled_notebooks(
    harness: Harness, project: Tokens, host: Agent
) -> None:
    created = await harness.call(
        "POST",
        "/v1/admin/tokens",
        token=harness.admin_token,
        body={"project": "alpha", "role": "operator", "label_selector": {"team": "vision"}},
    )
    assert created.status == 201 and created.json["label_selector"] == {"team": "vision"}
    scoped = created.json["token"]
    other = (await project.run(labels={"team": "nlp"})).json
    mine = await harness.call(
        "POST", "/v1/notebooks", token=scoped, body={"framework": "conda", "editor": "jupyterlab"}
    )
    assert mine.status == 201 and mine.json["labels"] == {"team": "vision"}
    listed = await harness.call("GET", "/v1/notebooks", token=scoped)
    assert [n["id"] for n in listed.json["items"]] == [mine.json["id"]]
    for method, path in (
        ("GET", f"/v1/notebooks/{other['id']}"),
        ("POST", f"/v1/notebooks/{other['id']}/stop"),
        ("DELETE", f"/v1/notebooks/{other['id']}"),
    ):
        reply = await harness.call(method, path, token=scoped)
        assert reply.status == 403, (method, path)
        assert "labelled team=vision" in reply.json["message"]
    clash = await harness.call(
        "POST",
        "/v1/notebooks",
        token=scoped,
        body={"framework": "conda", "editor": "jupyterlab", "labels": {"team": "nlp"}},
    )
    assert clash.status == 403


async def test_catalog_lists_the_flavors(quota4: Harness) -> None:
    project = await quota4.project("alpha")
    reply = await quota4.call("GET", "/v1/catalog", token=project.read)
    flavors = {f["name"]: f for f in reply.json["flavors"]}
    assert sorted(flavors) == ["a100-1-gpu", "ai1-1-cpu", "h100-1-gpu"]
    assert flavors["h100-1-gpu"] == {
        "name": "h100-1-gpu",
        "gpu_model": "H100",
        "cpu": 12,
        "memory_mb": 80_000,
        "disk_gb": 100,
        "description": "",
    }


async def test_a_start_takes_the_catalogs_current_editor_command(
    harness: Harness, project: Tokens, host: Agent
) -> None:
    nb = (await project.run()).json
    await host.report(nb["id"], "RUNNING", url="u")
    await project.action(nb["id"], "stop")
    await host.report(nb["id"], "STOPPED")
    editor = harness.config.catalog.editors["jupyterlab"]
    editor.command = [*editor.command, "--fixed-by-the-operator"]
    await project.action(nb["id"], "start")
    [item] = (await host.assignments())["items"]
    assert item["command"][-1] == "--fixed-by-the-operator"
    assert item["image"] == nb["image"]


async def test_the_use_quota_reads_is_what_the_notebooks_hold_after_every_kind_of_change(
    quota4: Harness,
) -> None:
    """The project's use is kept as counters by change_state; after runs, queueing, reports,
    stops, failures, a lost host, restarts and deletes it equals the sum over the notebooks."""

    def held() -> tuple[int, int, int]:
        [row] = quota4.committed(
            "SELECT COALESCE(SUM(gpu), 0), "
            "COALESCE(SUM(CASE WHEN gpu = 0 THEN cpu ELSE 0 END), 0), COUNT(*) "
            "FROM notebooks WHERE project = 'alpha' AND state IN ('STARTING', 'RUNNING')"
        )
        return tuple(int(v) for v in row)

    def counted() -> tuple[int, int, int]:
        [row] = quota4.committed(
            "SELECT gpus_used, cpus_used, notebooks_active FROM projects WHERE name = 'alpha'"
        )
        return tuple(int(v) for v in row)

    project = await quota4.project("alpha")
    h1, h2 = quota4.agent("h1"), quota4.agent("h2")
    await h1.register(gpus=2, cpus=16)
    await h2.register(gpus=1, cpus=16)
    gpu_a = (await project.run(gpu=2)).json
    gpu_b = (await project.run(gpu=1, restart_on_timeout=True)).json
    cpu_c = (await project.run(gpu=0, cpu=4)).json
    queued = (await project.run(gpu=1)).json  # within quota, but every GPU is taken
    assert queued["state"] == "QUEUED"
    assert counted() == held() == (3, 4, 3)
    for nb in (gpu_a, gpu_b, cpu_c):
        agent = h1 if (await project.get(nb["id"]))["host"] == "h1" else h2
        await agent.report(nb["id"], "RUNNING")
    assert counted() == held()
    # A stop, a failure, a delete: each gives its share back once.
    await project.action(gpu_a["id"], "stop")
    assert counted() == held() == (1, 4, 2)
    host_a = h1 if gpu_a["host"] == "h1" else h2
    await host_a.report(gpu_a["id"], "STOPPED")
    await quota4.tick()  # the queue takes the freed GPUs
    assert counted() == held()
    cpu_host = h1 if (await project.get(cpu_c["id"]))["host"] == "h1" else h2
    await cpu_host.report(cpu_c["id"], "FAILED", reason="container exited with code 1")
    assert counted() == held()
    # The host of the restart-on-timeout notebook is lost; it is queued again elsewhere.
    lost = (await project.get(gpu_b["id"]))["host"]
    alive = h2 if lost == "h1" else h1
    for _ in range(4):
        quota4.clock.advance(11)
        await alive.heartbeat()
    await quota4.tick()
    assert counted() == held()
    for nb in (gpu_a, gpu_b, cpu_c, queued):
        await quota4.call("DELETE", f"/v1/notebooks/{nb['id']}", token=project.operator)
    assert counted() == held()
