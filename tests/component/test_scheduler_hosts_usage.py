"""Issue 4: lost hosts, cordon and drain, the heartbeat TTL, and the usage ledger and report,
driven by the fake clock through the real HTTP API."""

from __future__ import annotations

import json
from pathlib import Path

from common import wire
from tests.component.conftest import Agent, FakeClock, Harness, Tokens, make_config

TTL = 30  # heartbeat_interval_s 10 × heartbeat_misses 3


async def _hosts(harness: Harness) -> dict[str, dict]:
    reply = await harness.call("GET", "/v1/admin/hosts", token=harness.admin_token)
    assert reply.status == 200, reply.text
    return {h["id"]: h for h in reply.json["items"]}


async def test_a_silent_host_is_lost_its_notebooks_error_and_its_gpus_are_not_offered(
    harness: Harness, project: Tokens
) -> None:
    dead, alive = harness.agent("dead"), harness.agent("alive")
    await dead.register(gpus=2)
    await alive.register(gpus=1)
    nb = (await project.run(gpu=2)).json
    assert nb["host"] == "dead"
    await dead.report(nb["id"], "RUNNING", url="http://dead/lab")
    again = (await project.run(gpu=1, restart_on_timeout=True)).json
    assert again["host"] == "alive"
    harness.clock.advance(10)
    await dead.heartbeat()  # its last word

    harness.clock.advance(TTL - 1)
    await alive.heartbeat()
    await harness.tick()
    assert (await project.get(nb["id"]))["state"] == "RUNNING"  # within the TTL
    harness.clock.advance(2)
    await alive.heartbeat()
    await harness.tick()
    lost = await project.get(nb["id"])
    assert lost["state"] == "ERROR" and lost["state_reason"].startswith("host lost: dead")
    assert lost["billed_minutes"] == 1  # billed up to its last heartbeat (10 s), not to now
    hosts = await _hosts(harness)
    assert hosts["dead"]["state"] == "lost"
    assert hosts["dead"]["gpu_models"] == [{"model": "A100", "total": 2, "free": 0}]
    assert hosts["alive"]["state"] == "ready"
    # its GPUs are not offered: a 2-GPU request waits rather than going to the lost host
    waiting = (await project.run(gpu=2)).json
    assert waiting["state"] == "QUEUED"
    await harness.tick()
    assert (await project.get(waiting["id"]))["state"] == "QUEUED"
    # the host comes back: a heartbeat is told to register; registering makes it ready
    back = await dead.heartbeat()
    assert back.json["known"] is False
    await dead.register(gpus=2)
    await harness.tick()
    placed = await project.get(waiting["id"])
    assert (placed["state"], placed["host"]) == ("STARTING", "dead")
    # the ERROR notebook is no longer assigned to it, so its agent retires the container
    items = [i["notebook"] for i in (await dead.assignments())["items"]]
    assert nb["id"] not in items


async def test_restart_on_timeout_notebooks_of_a_lost_host_are_placed_elsewhere(
    harness: Harness, project: Tokens
) -> None:
    dead, spare = harness.agent("dead"), harness.agent("spare")
    await dead.register(gpus=1)
    nb = (await project.run(gpu=1, restart_on_timeout=True)).json
    assert nb["host"] == "dead"
    await dead.report(nb["id"], "RUNNING", url="u")
    await spare.register(gpus=1)
    harness.clock.advance(TTL + 1)
    await spare.heartbeat()
    await harness.tick()
    moved = await project.get(nb["id"])
    assert (moved["state"], moved["host"], moved["generation"]) == ("STARTING", "spare", 2)
    assert [s["state"] for s in moved["history"]][-3:] == ["ERROR", "QUEUED", "STARTING"]
    [item] = (await spare.assignments())["items"]
    assert item["notebook"] == nb["id"] and item["initialized"] is True


async def test_heartbeat_interval_and_ttl_grow_with_the_fleet(
    tmp_path: Path, clock: FakeClock
) -> None:
    h = Harness(
        config=make_config(tmp_path, heartbeat_interval_s=10.0, heartbeat_budget_per_s=2.0),
        clock=clock,
    )
    await h.start()
    try:
        replies = []
        for i in range(30):
            replies.append((await h.agent(f"h{i}").register(gpus=0)).json)
        assert replies[0]["heartbeat_interval_s"] == 10.0
        assert replies[-1]["heartbeat_interval_s"] == 15.0  # 30 hosts / 2 per second
        beat = await h.agent("h0").heartbeat()
        assert beat.json["heartbeat_interval_s"] == 15.0
        clock.advance(40)  # past 3 × 10 s, within 3 × 15 s
        await h.tick()
        assert {x["state"] for x in (await _hosts(h)).values()} == {"ready"}
        clock.advance(6)
        await h.tick()
        assert {x["state"] for x in (await _hosts(h)).values()} == {"lost"}
    finally:
        await h.close()


async def test_cordon_and_drain(harness: Harness, project: Tokens) -> None:
    a, b = harness.agent("a"), harness.agent("b")
    await a.register(gpus=2)
    await b.register(gpus=2)
    plain = (await project.run(gpu=1)).json
    moving = (await project.run(gpu=1, restart_on_timeout=True)).json
    assert plain["host"] == moving["host"] == "a"
    for nb in (plain, moving):
        await a.report(nb["id"], "RUNNING", url="u")
    admin = harness.admin_token

    cordoned = await harness.call("POST", "/v1/admin/hosts/b/cordon", token=admin)
    assert cordoned.status == 200 and cordoned.json["state"] == "cordoned"
    assert (await project.run(gpu=2)).json["state"] == "QUEUED"  # a is half full, b cordoned
    await harness.call("POST", "/v1/admin/hosts/b/uncordon", token=admin)
    await harness.tick()

    drained = await harness.call("POST", "/v1/admin/hosts/a/drain", token=admin)
    assert drained.status == 200 and drained.json["state"] == "draining"
    for nb in (plain, moving):
        got = await project.get(nb["id"])
        assert got["state"] == "STOPPING" and got["state_reason"].startswith(
            "host a is being drained"
        )
        await a.report(nb["id"], "STOPPED", reason="workspace pushed")
    await harness.tick()
    assert (await project.get(plain["id"]))["state"] == "STOPPED"
    moved = await project.get(moving["id"])
    # b took the 2-GPU notebook queued above, so the drained one waits for room on b
    assert moved["state"] == "QUEUED"
    hosts = await _hosts(harness)
    assert hosts["a"]["state"] == "cordoned" and hosts["a"]["notebooks"] == 0
    missing = await harness.call("POST", "/v1/admin/hosts/nope/drain", token=admin)
    assert missing.status == 404
    refused = await harness.call("POST", "/v1/admin/hosts/a/uncordon", token=project.operator)
    assert refused.status == 403
    await harness.call("POST", "/v1/admin/hosts/a/uncordon", token=admin)
    await harness.tick()
    back = await project.get(moving["id"])
    assert (back["state"], back["host"]) == ("STARTING", "a")


async def test_a_drained_notebook_that_restarts_is_told_to_stop_on_its_host(
    harness: Harness, project: Tokens
) -> None:
    """The restart intent is the scheduler's: the host is told ``stopped``, in a body the
    agent's own decoder accepts."""
    a = harness.agent("a")
    await a.register(gpus=2)
    nb = (await project.run(gpu=1, restart_on_timeout=True)).json
    await a.report(nb["id"], "RUNNING")
    drained = await harness.call("POST", "/v1/admin/hosts/a/drain", token=harness.admin_token)
    assert drained.status == 200
    body = await a.assignments()
    assignments = wire.decode(json.dumps(body).encode(), wire.Assignments)
    [item] = [i for i in assignments.items if i.notebook == nb["id"]]
    assert (item.desired, item.state) == ("stopped", "STOPPING")


async def test_minutes_survive_a_scheduler_restart_and_replays_bill_once(
    harness: Harness, project: Tokens, host: Agent
) -> None:
    nb = (await project.run(gpu=2, labels={"team": "vision"})).json
    await host.report(nb["id"], "RUNNING", url="u")
    harness.clock.advance(290)
    await host.usage(nb["id"], 5)
    await harness.restart()
    await host.usage(nb["id"], 5)  # the agent replays what it had not seen acknowledged
    await host.usage(nb["id"], 4)
    assert (await project.get(nb["id"]))["billed_minutes"] == 5
    harness.clock.advance(10)  # 300 s: still 5 commenced minutes
    await project.action(nb["id"], "stop")
    await host.report(nb["id"], "STOPPED")
    assert (await project.get(nb["id"]))["billed_minutes"] == 5

    report = await harness.call(
        "GET", "/v1/projects/alpha/usage?from=0&group_by=notebook", token=project.read
    )
    assert report.status == 200, report.text
    [row] = report.json["items"]
    assert row["group"] == nb["id"]
    assert (row["minutes"], row["gpu_minutes"], row["cpu_minutes"]) == (5, {"A100": 10}, 0)
    assert report.json["total"]["gpu_minutes"] == {"A100": 10}
    by_label = await harness.call(
        "GET", "/v1/projects/alpha/usage?from=0&group_by=label&label_key=team", token=project.read
    )
    assert [r["group"] for r in by_label.json["items"]] == ["team=vision"]


async def test_usage_report_periods_groups_and_errors(
    harness: Harness, project: Tokens, host: Agent
) -> None:
    start = harness.clock()
    gpu_nb = (await project.run(gpu=1)).json
    cpu_nb = (await project.run(gpu=0, cpu=3)).json
    for nb in (gpu_nb, cpu_nb):
        await host.report(nb["id"], "RUNNING", url="u")
    harness.clock.advance(600)  # 10 minutes
    for nb in (gpu_nb, cpu_nb):
        await project.action(nb["id"], "stop")
        await host.report(nb["id"], "STOPPED")

    async def usage(query: str, token: str | None = None) -> dict:
        reply = await harness.call(
            "GET", f"/v1/projects/alpha/usage?{query}", token=token or project.read
        )
        assert reply.status == 200, reply.text
        return reply.json

    whole = await usage(f"from={start}&to={start + 600}")
    assert whole["total"]["minutes"] == 20
    assert whole["total"]["gpu_minutes"] == {"A100": 10} and whole["total"]["cpu_minutes"] == 30
    first_half = await usage(f"from={start}&to={start + 300}")
    second_half = await usage(f"from={start + 300}&to={start + 900}")
    assert first_half["total"]["minutes"] + second_half["total"]["minutes"] == 20
    assert first_half["total"]["minutes"] == 10
    by_flavor = await usage(f"from={start}&group_by=flavor")
    assert [r["group"] for r in by_flavor["items"]] == ["(no flavor)"]
    iso = await usage("from=2023-11-01&to=2023-12-01T00:00:00Z")
    assert iso["start"] == 1698796800.0 and iso["end"] == 1701388800.0

    for query, field in (
        ("group_by=team", "group_by"),
        ("group_by=label", "label_key"),
        ("from=yesterday", "from"),
        (f"from={start + 10}&to={start}", "to"),
    ):
        bad = await harness.call("GET", f"/v1/projects/alpha/usage?{query}", token=project.read)
        assert bad.status == 400 and f"`{field}`" in bad.json["message"], (query, bad.text)
    beta = await harness.project("beta")
    other = await harness.call("GET", "/v1/projects/alpha/usage", token=beta.read)
    assert other.status == 403

    admin = await harness.call("GET", f"/v1/admin/usage?from={start}", token=harness.admin_token)
    assert [r["group"] for r in admin.json["items"]] == ["alpha"]
    assert admin.json["group_by"] == "project"


async def test_a_scheduler_outage_does_not_make_every_host_lost(
    harness: Harness, project: Tokens, host: Agent
) -> None:
    nb = (await project.run(gpu=1)).json
    await host.report(nb["id"], "RUNNING", url="u")
    await harness.close()
    harness.clock.advance(600)  # the scheduler was down for ten minutes
    await harness.start()
    await harness.tick()
    assert (await project.get(nb["id"]))["state"] == "RUNNING"
    await host.heartbeat()
    harness.clock.advance(TTL - 1)
    await harness.tick()
    assert (await project.get(nb["id"]))["state"] == "RUNNING"
    harness.clock.advance(2)  # now really silent for longer than the TTL
    await harness.tick()
    assert (await project.get(nb["id"]))["state"] == "ERROR"
