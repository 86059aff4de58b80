"""Multi-tenant hosts: the disk figures heartbeats bring. A host whose workspace disk is nearly
full takes no new notebooks (they go elsewhere or queue, never fail), operators see why, and a
notebook shows what its workspace takes on its host's disk."""

from __future__ import annotations

from typing import Any

from tests.component.conftest import Agent, Harness, Tokens

GB = 1_000_000_000
# Defaults: keep free the larger of 5% of the disk and 10 GB.
ROOMY = {"free_bytes": 400 * GB, "total_bytes": 1000 * GB}
FULL = {"free_bytes": 49 * GB, "total_bytes": 1000 * GB}  # under 5% = 50 GB


async def hosts(harness: Harness) -> dict[str, dict[str, Any]]:
    reply = await harness.call("GET", "/v1/admin/hosts", token=harness.admin_token)
    assert reply.status == 200, reply.text
    return {h["id"]: h for h in reply.json["items"]}


async def test_heartbeat_disk_figures_show_in_the_host_list(harness: Harness) -> None:
    roomy, full, old = harness.agent("roomy"), harness.agent("full"), harness.agent("old")
    for agent in (roomy, full, old):
        await agent.register(gpus=1)
    assert (await roomy.heartbeat(disk=ROOMY)).status == 200
    assert (await full.heartbeat(disk=FULL)).status == 200
    assert (await old.heartbeat(gpus=[], containers=[])).status == 200  # an older agent

    listed = await hosts(harness)
    assert listed["roomy"]["disk"] == ROOMY
    assert listed["roomy"]["placement_blocked"] == ""
    assert listed["full"]["disk"] == FULL
    assert listed["full"]["state"] == "ready"
    assert listed["full"]["placement_blocked"] == (
        "workspace disk nearly full (49.0 GB free of 1000.0 GB; 50.0 GB must stay free)"
    )
    assert listed["old"]["disk"] is None and listed["old"]["placement_blocked"] == ""

    # Space freed: the next heartbeat clears it.
    await full.heartbeat(disk={"free_bytes": 60 * GB, "total_bytes": 1000 * GB})
    assert (await hosts(harness))["full"]["placement_blocked"] == ""


async def test_a_disk_full_host_is_skipped_and_the_notebook_goes_elsewhere(
    harness: Harness, project: Tokens
) -> None:
    small, big = harness.agent("a-small"), harness.agent("b-big")
    await small.register(gpus=1)  # best fit for 1 GPU, and first by id
    await big.register(gpus=4)
    await small.heartbeat(disk=FULL)
    await big.heartbeat(disk=ROOMY)
    nb = (await project.run(gpu=1)).json
    assert (nb["state"], nb["host"]) == ("STARTING", "b-big")


async def test_a_request_waits_queued_while_the_only_host_with_room_is_disk_full(
    harness: Harness, project: Tokens, host: Agent
) -> None:
    await host.heartbeat(disk=FULL)
    nb = (await project.run(gpu=1)).json
    assert nb["state"] == "QUEUED"  # not 503: the host could hold it once space is freed
    assert nb["queue"]["waiting_for"] == "1 GPU"
    await harness.tick()
    assert (await project.get(nb["id"]))["state"] == "QUEUED"
    assert [i["notebook"] for i in (await host.assignments())["items"]] == []

    await host.heartbeat(disk=ROOMY)
    await harness.tick()
    placed = await project.get(nb["id"])
    assert (placed["state"], placed["host"]) == ("STARTING", "h1")


async def test_the_thresholds_are_the_operators(harness: Harness, project: Tokens) -> None:
    harness.config.min_free_disk_pct = 0.0
    harness.config.min_free_disk_gb = 50.0
    agent = harness.agent("h1")
    await agent.register(gpus=2)
    await agent.heartbeat(disk={"free_bytes": 51 * GB, "total_bytes": 10_000 * GB})
    assert (await project.run(gpu=1)).json["state"] == "STARTING"  # 0.5% free is fine here
    await agent.heartbeat(disk={"free_bytes": 49 * GB, "total_bytes": 10_000 * GB})
    assert (await project.run(gpu=1)).json["state"] == "QUEUED"


async def test_workspace_disk_use_appears_on_the_notebook(
    harness: Harness, project: Tokens, host: Agent
) -> None:
    nb = (await project.run(gpu=1)).json
    assert nb["workspace_used_bytes"] is None and nb["workspace_used_at"] is None
    await host.report(nb["id"], "RUNNING", url="http://h1/lab")
    now = harness.clock()
    use = {"notebook": nb["id"], "used_bytes": 1_234_000_000, "measured_at": now}
    await host.heartbeat(disk=ROOMY, workspaces=[use])
    await harness.tick()  # heartbeats are written once per tick
    got = await project.get(nb["id"])
    assert (got["workspace_used_bytes"], got["workspace_used_at"]) == (1_234_000_000, now)

    # An older figure arriving late, and one from a host that does not hold it, are dropped.
    late = {**use, "used_bytes": 5, "measured_at": now - 60}
    await host.heartbeat(workspaces=[late])
    other = harness.agent("h2")
    await other.register(gpus=1)
    await other.heartbeat(workspaces=[{**use, "used_bytes": 7, "measured_at": now + 1}])
    await harness.tick()
    assert (await project.get(nb["id"]))["workspace_used_bytes"] == 1_234_000_000

    # Two heartbeats between writes: neither figure is lost.
    second = (await project.run(gpu=1)).json
    await host.report(second["id"], "RUNNING", url="http://h1/lab")
    harness.clock.advance(60)
    later = harness.clock()
    await host.heartbeat(
        workspaces=[{"notebook": nb["id"], "used_bytes": 2 * GB, "measured_at": later}]
    )
    await host.heartbeat(
        workspaces=[{"notebook": second["id"], "used_bytes": 3 * GB, "measured_at": later}]
    )
    await harness.tick()
    assert (await project.get(nb["id"]))["workspace_used_bytes"] == 2 * GB
    assert (await project.get(second["id"]))["workspace_used_bytes"] == 3 * GB

    # The host gives it back: the figure described a dir that is gone.
    await project.action(nb["id"], "stop")
    await host.report(nb["id"], "STOPPED", reason="stopped")
    stopped = await project.get(nb["id"])
    assert stopped["state"] == "STOPPED"
    assert stopped["workspace_used_bytes"] is None and stopped["workspace_used_at"] is None
