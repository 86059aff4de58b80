"""The agent protocol: inventory, assignments long-poll, transitions, usage; and placement and
persistence as agents see them."""

from __future__ import annotations

import asyncio

from scheduler.schema import migration_files as _migration_files
from tests.component.conftest import Agent, Harness, Tokens


async def test_register_is_idempotent_and_keeps_reservations(
    harness: Harness, project: Tokens
) -> None:
    agent = harness.agent("h1")
    first = await agent.register(gpus=2, cpus=16)
    assert {k: first.json[k] for k in ("host", "heartbeat_interval_s")} == {
        "host": "h1",
        "heartbeat_interval_s": 10.0,
    }
    assert first.json["ssh_host_key"].startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    nb = (await project.run()).json
    await agent.register(gpus=2, cpus=16)
    hosts = (await harness.call("GET", "/v1/admin/hosts", token=harness.admin_token)).json
    [h1] = hosts["items"]
    assert h1["cpus"] == 16 and h1["cpus_free"] == 16
    assert [(g["uuid"], g["notebook"]) for g in h1["gpus"]] == [
        ("GPU-h1-0", nb["id"]),
        ("GPU-h1-1", None),
    ]

    # Both GPUs vanish: the free one is forgotten, the reserved one kept until released.
    await agent.register(gpus=0, cpus=16, gpu_note="NVML: driver not loaded")
    hosts = (await harness.call("GET", "/v1/admin/hosts", token=harness.admin_token)).json
    assert hosts["items"][0]["gpus"] == []
    assert [g["uuid"] for g in (await project.get(nb["id"]))["gpus"]] == ["GPU-h1-0"]
    await project.action(nb["id"], "stop")
    await agent.report(nb["id"], "STOPPED")
    assert harness.snapshot()["gpus"] == []


async def test_heartbeat_updates_gpus_and_unknown_host_is_told(harness: Harness) -> None:
    stranger = harness.agent("h2")
    reply = await stranger.heartbeat()
    assert reply.status == 200 and reply.json["known"] is False

    agent = harness.agent("h1")
    await agent.register(gpus=1)
    harness.clock.advance(5)
    gpu = {
        "uuid": "GPU-h1-0",
        "index": 0,
        "model": "A100",
        "memory_total_mb": 81920,
        "memory_used_mb": 1234,
        "utilization_pct": 87,
    }
    reply = await agent.heartbeat(gpus=[gpu], containers=[])
    assert reply.json == {"known": True, "heartbeat_interval_s": 10.0, "heartbeat_misses": 3}
    [host] = (await harness.call("GET", "/v1/admin/hosts", token=harness.admin_token)).json["items"]
    assert host["last_heartbeat"] == harness.clock()
    assert (host["gpus"][0]["memory_used_mb"], host["gpus"][0]["utilization_pct"]) == (1234, 87)


async def test_silent_host_gets_no_notebooks(
    harness: Harness, project: Tokens, host: Agent
) -> None:
    harness.clock.advance(31)  # heartbeat_interval_s * heartbeat_misses = 30
    queued = (await project.run()).json
    assert (queued["state"], queued["host"]) == ("QUEUED", None)
    await host.heartbeat()
    await harness.tick()  # the heartbeat is written, the queue moves
    assert (await project.get(queued["id"]))["host"] == "h1"


async def test_assignment_carries_filled_command_and_env(
    harness: Harness, project: Tokens, host: Agent
) -> None:
    nb = (await project.run(envvars={"SEED": "7"}, framework="pytorch")).json
    listing = await host.assignments()
    [item] = listing["items"]
    token = item["access_token"]
    assert len(token) >= 32
    assert item["notebook"] == nb["id"]
    assert item["project"] == "alpha"
    assert item["desired"] == "running" and item["state"] == "STARTING"
    assert item["command"] == [
        "jupyter-lab",
        f"--ServerApp.token={token}",
        "--port=8888",
        f"--ServerApp.base_url=/notebooks/{nb['id']}/",
    ]
    assert item["url_path"] == f"/lab?token={token}"
    assert item["editor_port"] == 8888
    assert item["gpus"] == ["GPU-h1-0"]
    assert item["env"] == {"SEED": "7", "NBFLEET_NOTEBOOK_ID": nb["id"]}
    assert item["initialized"] is False
    assert item["user"] == "1000:100"
    assert item["image"] == "nbfleet/pytorch:test"
    # other hosts see nothing
    other = harness.agent("h2")
    await other.register(gpus=0)
    assert (await other.assignments())["items"] == []

    # the access token is stable across a restart of the notebook
    await host.report(nb["id"], "RUNNING", url="http://h1:1/lab")
    await project.action(nb["id"], "stop")
    await host.report(nb["id"], "STOPPED")
    await project.action(nb["id"], "start")
    [again] = (await host.assignments())["items"]
    assert again["access_token"] == token and again["generation"] == 2
    assert again["initialized"] is True


async def test_long_poll_answers_at_once_when_version_differs(
    harness: Harness, host: Agent
) -> None:
    current = (await host.assignments())["version"]
    reply = await host.assignments(since=current - 1, wait=30)
    assert reply["version"] == current
    # wait=0 with an unchanged version answers at once too
    assert (await host.assignments(since=current, wait=0))["version"] == current


async def test_long_poll_wakes_on_change(harness: Harness, project: Tokens, host: Agent) -> None:
    version = (await host.assignments())["version"]
    poll = asyncio.create_task(host.assignments(since=version, wait=30))
    await asyncio.sleep(0)  # let the poll reach its wait; no wall-clock wait below
    for _ in range(20):
        await asyncio.sleep(0)
    assert not poll.done()
    nb = (await project.run()).json
    reply = await asyncio.wait_for(poll, timeout=5)
    assert reply["version"] > version
    assert [a["notebook"] for a in reply["items"]] == [nb["id"]]

    # a stop bumps it again
    version = reply["version"]
    poll = asyncio.create_task(host.assignments(since=version, wait=30))
    for _ in range(20):
        await asyncio.sleep(0)
    await project.action(nb["id"], "stop")
    reply = await asyncio.wait_for(poll, timeout=5)
    assert reply["items"][0]["desired"] == "stopped" and reply["version"] > version


async def test_long_poll_wait_is_validated(harness: Harness, host: Agent) -> None:
    for query in ("wait=31", "wait=-1", "wait=soon", "since=abc"):
        reply = await host.call("GET", f"/v1/agents/assignments?{query}")
        assert reply.status == 400, query
        assert f"`{query.split('=')[0]}`" in reply.json["message"]


async def test_transition_outcomes(harness: Harness, project: Tokens, host: Agent) -> None:
    nb = (await project.run()).json
    url = "http://h1:3100/lab?token=x"

    harness.clock.advance(3)
    applied = await host.report(nb["id"], "RUNNING", url=url, reason="editor answers")
    assert applied == {
        "notebook": nb["id"],
        "outcome": "applied",
        "state": "RUNNING",
        "message": "",
    }
    got = await project.get(nb["id"])
    # The notebook's URL is its stable one at the scheduler, not where the agent serves it.
    stable = str(harness.client.make_url(f"/notebooks/{nb['id']}/"))
    assert got["url"] == stable and got["running_since"] == harness.clock()
    assert got["state_reason"] == "editor answers"

    before = harness.snapshot()
    repeat = await host.report(nb["id"], "RUNNING", url=url)
    assert repeat["outcome"] == "repeat"
    stale = await host.report(nb["id"], "FAILED", generation=0 + 5)
    assert stale["outcome"] == "stale"
    refused = await host.report(nb["id"], "STOPPED")  # RUNNING → STOPPED skips STOPPING
    assert refused["outcome"] == "refused" and refused["state"] == "RUNNING"
    scheduler_only = await host.report(nb["id"], "DELETING")
    assert scheduler_only["outcome"] == "refused"
    unknown = await host.report("no-such-notebook", "RUNNING")
    assert unknown["outcome"] == "stale"
    other = harness.agent("h2")
    await other.register(gpus=0)
    before = harness.snapshot()
    foreign = await other.report(nb["id"], "FAILED")
    assert foreign["outcome"] == "stale"
    assert harness.snapshot() == before

    failed = await host.report(nb["id"], "FAILED", reason="container exited with code 3")
    assert failed["outcome"] == "applied"
    got = await project.get(nb["id"])
    assert (got["state"], got["host"], got["gpus"], got["url"]) == ("FAILED", None, [], None)
    assert got["state_reason"] == "container exited with code 3"
    assert (await host.assignments())["items"] == []


async def test_report_for_an_older_generation_is_stale(
    harness: Harness, project: Tokens, host: Agent
) -> None:
    nb = (await project.run()).json
    await host.report(nb["id"], "FAILED", reason="exit 1")
    await project.action(nb["id"], "start")
    before = harness.snapshot()
    late = await host.report(nb["id"], "RUNNING", generation=1)
    assert late["outcome"] == "stale"
    assert harness.snapshot() == before


async def test_usage_keeps_the_maximum_and_closes_runs(
    harness: Harness, project: Tokens, host: Agent
) -> None:
    nb = (await project.run()).json
    await host.report(nb["id"], "RUNNING", url="http://h1:1/")
    assert (await host.usage(nb["id"], 5)).json == {"ok": True}
    await host.usage(nb["id"], 5)  # duplicate
    await host.usage(nb["id"], 3)  # an older report arriving late
    assert (await project.get(nb["id"]))["billed_minutes"] == 5
    assert [row[:3] for row in harness.snapshot()["usage"]] == [(nb["id"], 1, 5)]

    # the scheduler closes the run itself when it leaves RUNNING: 61 s is 2 minutes < 5
    harness.clock.advance(61)
    await host.heartbeat()
    await project.action(nb["id"], "stop")
    assert (await project.get(nb["id"]))["billed_minutes"] == 5

    # usage from another host or for a future generation is dropped
    other = harness.agent("h2")
    await other.register(gpus=0)
    await other.usage(nb["id"], 99)
    await host.usage(nb["id"], 99, generation=2)
    assert (await project.get(nb["id"]))["billed_minutes"] == 5

    bad = await host.call("POST", "/v1/agents/usage", {"items": [{"notebook": "x"}]})
    assert bad.status == 400


async def test_two_gpu_notebook_goes_to_host_with_two_free(
    harness: Harness, project: Tokens
) -> None:
    small, big = harness.agent("small"), harness.agent("big")
    await small.register(gpus=1)
    await big.register(gpus=4)
    await project.run(gpu=2)  # big now has 2 free, small has 1
    nb = (await project.run(gpu=2)).json
    assert nb["host"] == "big"
    assert [g["uuid"] for g in nb["gpus"]] == ["GPU-big-2", "GPU-big-3"]
    one = (await project.run(gpu=1)).json
    assert one["host"] == "small"  # best fit: leaves nothing over
    waiting = (await project.run(gpu=1)).json
    assert (waiting["state"], waiting["queue"]["position"]) == ("QUEUED", 1)


async def test_restart_prefers_last_host(harness: Harness, project: Tokens) -> None:
    a, b = harness.agent("a"), harness.agent("b")
    await a.register(gpus=2)
    await b.register(gpus=1)
    nb = (await project.run(gpu=1)).json
    assert nb["host"] == "b"  # best fit
    await b.report(nb["id"], "FAILED")
    other = (await project.run(gpu=1)).json  # best fit is b again
    assert other["host"] == "b"
    restarted = (await project.action(nb["id"], "start")).json
    assert restarted["host"] == "a"  # b is full now
    await a.report(nb["id"], "FAILED", generation=2)
    await b.report(other["id"], "FAILED")
    again = (await project.action(nb["id"], "start")).json
    assert again["host"] == "a"  # last host preferred over the better fit b


async def test_concurrent_runs_never_share_a_gpu(harness: Harness, project: Tokens) -> None:
    for name in ("h1", "h2", "h3"):
        await harness.agent(name).register(gpus=3)
    replies = await asyncio.gather(*(project.run(expect=None, gpu=2) for _ in range(8)))
    created = [r.json for r in replies if r.json["state"] == "STARTING"]
    queued = [r for r in replies if r.json["state"] == "QUEUED"]
    assert len(created) == 3 and len(queued) == 5
    uuids = [g["uuid"] for nb in created for g in nb["gpus"]]
    assert len(uuids) == len(set(uuids)) == 6
    # 2-GPU requests wait, so 1-GPU ones do not overtake them (no backfill of a blocked kind)
    singles = await asyncio.gather(*(project.run(expect=None, gpu=1) for _ in range(5)))
    assert [r.json["state"] for r in singles] == ["QUEUED"] * 5
    for nb in queued:
        await project.action(nb.json["id"], "stop")
    singles = await asyncio.gather(*(project.run(expect=None, gpu=1) for _ in range(5)))
    assert sorted(r.json["state"] for r in singles) == ["QUEUED"] * 5  # older singles first
    await harness.tick()
    gpus = harness.snapshot()["gpus"]
    taken = [row for row in gpus if row[-1] is not None]
    assert len(taken) == 9


async def test_restart_keeps_state(harness: Harness, project: Tokens, host: Agent) -> None:
    nb = (await project.run(labels={"k": "v"})).json
    await host.report(nb["id"], "RUNNING", url="http://h1:5/lab")
    version = (await host.assignments())["version"]
    before = harness.snapshot()

    await harness.restart()
    assert harness.snapshot() == before
    got = await project.get(nb["id"])
    stable = str(harness.client.make_url(f"/notebooks/{nb['id']}/"))
    assert (got["state"], got["url"], got["labels"]) == ("RUNNING", stable, {"k": "v"})
    assert [h["state"] for h in got["history"]] == ["STARTING", "RUNNING"]  # never queued
    assert (await host.assignments())["version"] == version
    # transitions and placements keep working against the reopened database
    await project.action(nb["id"], "stop")
    assert (await host.report(nb["id"], "STOPPED"))["outcome"] == "applied"
    assert (await project.run(gpu=2)).json["host"] == "h1"
    # every migration applied exactly once, in order, across the restart
    migrations = [m[0] for m in harness.snapshot()["schema_migrations"]]
    assert migrations == [name for name, _ in _migration_files()]


async def test_long_poll_times_out_with_the_current_list(harness: Harness, host: Agent) -> None:
    version = (await host.assignments())["version"]
    reply = await host.assignments(since=version, wait=0.01)
    assert reply == {"version": version, "items": []}
