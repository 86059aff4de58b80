"""Issue 14: idle notebooks stop themselves. The scheduler's half (timeouts per project and per
notebook, the decision, the stop and its reason, what ``get`` shows), through the real HTTP API
with heartbeats carrying the agents' activity, on the fake clock."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.component.conftest import Agent, FakeClock, Harness, Tokens, make_config

HOUR = 3600.0


async def _quota(harness: Harness, project: str, expect: int = 200, **limits: Any) -> Any:
    reply = await harness.call(
        "PATCH", f"/v1/admin/projects/{project}/quota", token=harness.admin_token, body=limits
    )
    assert reply.status == expect, reply.text
    return reply.json


async def _running(project: Tokens, host: Agent, **fields: Any) -> dict[str, Any]:
    nb = (await project.run(gpu=1, **fields)).json
    await host.report(nb["id"], "RUNNING")
    return nb


async def _active(host: Agent, notebook: str, signal: str, at: float | None = None) -> None:
    """A heartbeat saying ``notebook`` was active at ``at`` (now), shown by ``signal``."""
    item = {
        "notebook": notebook,
        "last_activity_at": host.harness.clock() if at is None else at,
        "bytes_in": 0,
        "bytes_out": 0,
        "signal": signal,
    }
    reply = await host.heartbeat(activity=[item])
    assert reply.status == 200, reply.text


async def _later(harness: Harness, host: Agent, seconds: float) -> None:
    """Time passes; the host keeps beating (without activity) and the scheduler ticks."""
    harness.clock.advance(seconds)
    await host.heartbeat()
    await harness.tick()


async def test_operators_set_a_projects_idle_timeout_and_zero_turns_it_off(
    harness: Harness, project: Tokens
) -> None:
    assert (await _quota(harness, "alpha"))["quota"]["idle_timeout_s"] == 0
    assert (await _quota(harness, "alpha", idle_timeout_s=HOUR))["quota"]["idle_timeout_s"] == HOUR
    refused = await harness.call(
        "PATCH",
        "/v1/admin/projects/alpha/quota",
        token=harness.admin_token,
        body={"idle_timeout_s": 5},
    )
    assert refused.status == 400
    assert "idle_timeout_s 5: must be 0 (never) or at least 10 seconds" in refused.json["message"]
    assert (await _quota(harness, "alpha", idle_timeout_s=0))["quota"]["idle_timeout_s"] == 0
    # A project token cannot change its own limits.
    denied = await harness.call(
        "PATCH",
        "/v1/admin/projects/alpha/quota",
        token=project.operator,
        body={"idle_timeout_s": 0},
    )
    assert denied.status in (401, 403)


async def test_a_user_may_ask_for_a_shorter_idle_timeout_never_a_longer_one(
    harness: Harness, project: Tokens, host: Agent
) -> None:
    await _quota(harness, "alpha", idle_timeout_s=HOUR)
    longer = await project.run(expect=403, gpu=1, idle_timeout_s=2 * HOUR)
    assert longer.json["message"] == (
        "project alpha stops notebooks idle for 60 min; a notebook may ask for a shorter idle "
        "timeout, not a longer one (asked for 2 h)"
    )
    assert harness.committed("SELECT id FROM notebooks") == []
    too_short = await project.run(expect=400, gpu=1, idle_timeout_s=3)
    assert "idle_timeout_s" in too_short.json["message"]
    shorter = (await project.run(gpu=1, idle_timeout_s=600)).json
    assert shorter["idle_timeout_s"] == 600
    # Without a project timeout any timeout may be asked for.
    await _quota(harness, "alpha", idle_timeout_s=0)
    assert (await project.run(gpu=1, idle_timeout_s=2 * HOUR)).json["idle_timeout_s"] == 2 * HOUR


async def test_an_idle_notebook_is_stopped_with_what_was_idle_and_never_restarted(
    harness: Harness, project: Tokens, host: Agent
) -> None:
    await _quota(harness, "alpha", idle_timeout_s=600)
    nb = await _running(project, host, restart_on_timeout=True)
    await _active(host, nb["id"], "kernel busy")
    await _later(harness, host, 300)
    got = await project.get(nb["id"])
    assert got["state"] == "RUNNING"
    assert got["idle"] == {
        "last_active_at": harness.clock() - 300,
        "signal": "kernel busy",
        "idle_s": 300,
        "timeout_s": 600,
    }
    await _later(harness, host, 299)
    assert (await project.get(nb["id"]))["state"] == "RUNNING"
    await _later(harness, host, 1)
    got = await project.get(nb["id"])
    assert got["state"] == "STOPPING"
    assert got["idle"] is None
    reason = (
        "idle for 10 min: no editor traffic, kernels and terminals idle, GPU below 5%; "
        "not restarted (restart-on-timeout is for the runtime limit)"
    )
    assert got["state_reason"] == reason
    assert got["history"][-1]["reason"] == reason
    # Billing ends and the workspace is saved the normal way: the agent stops it.
    await host.report(nb["id"], "STOPPED", reason="workspace saved")
    await _later(harness, host, HOUR)
    assert (await project.get(nb["id"]))["state"] == "STOPPED"


async def test_activity_keeps_a_notebook_running_and_every_signal_counts(
    harness: Harness, project: Tokens, host: Agent
) -> None:
    await _quota(harness, "alpha", idle_timeout_s=600)
    nb = await _running(project, host)
    for signal in ("editor traffic", "GPU 87%", "terminal", "SSH", "kernel busy", "kernel"):
        await _later(harness, host, 500)
        await _active(host, nb["id"], signal)
        got = await project.get(nb["id"])
        assert got["state"] == "RUNNING", signal
        assert got["idle"]["signal"] == signal
        assert got["idle"]["idle_s"] == 0
    # Activity reported late (an older time than the one held) never moves it back.
    await _active(host, nb["id"], "CPU 40%", at=harness.clock() - 400)
    await _later(harness, host, 1)
    got = await project.get(nb["id"])
    assert got["idle"]["signal"] == "kernel"
    assert got["idle"]["idle_s"] == 1


async def test_idle_counts_from_the_start_of_the_run_not_an_earlier_one(
    harness: Harness, project: Tokens, host: Agent
) -> None:
    await _quota(harness, "alpha", idle_timeout_s=600)
    nb = await _running(project, host)
    await _active(host, nb["id"], "editor traffic")
    await project.action(nb["id"], "stop")
    await host.report(nb["id"], "STOPPED")
    await _later(harness, host, 2 * HOUR)
    await project.action(nb["id"], "start")
    await host.report(nb["id"], "RUNNING", generation=2)
    got = await project.get(nb["id"])
    assert got["idle"]["signal"] == "started"
    assert got["idle"]["idle_s"] == 0
    await _later(harness, host, 599)
    assert (await project.get(nb["id"]))["state"] == "RUNNING"
    await _later(harness, host, 1)
    assert (await project.get(nb["id"]))["state"] == "STOPPING"


async def test_the_shorter_timeout_applies_and_a_project_change_reaches_running_notebooks(
    harness: Harness, project: Tokens, host: Agent
) -> None:
    await _quota(harness, "alpha", idle_timeout_s=HOUR)
    own = await _running(project, host, idle_timeout_s=1200)
    other = await _running(project, host)
    await _later(harness, host, 900)
    assert (await project.get(own["id"]))["idle"]["timeout_s"] == 1200
    assert (await project.get(other["id"]))["idle"]["timeout_s"] == HOUR
    # The operator shortens the project's timeout: both notebooks are past it.
    await _quota(harness, "alpha", idle_timeout_s=600)
    await _later(harness, host, 1)
    for nb in (own, other):
        got = await project.get(nb["id"])
        assert got["state"] == "STOPPING"
        assert got["state_reason"].startswith("idle for 10 min: ")


async def test_without_a_timeout_an_idle_notebook_runs_on(
    harness: Harness, project: Tokens, host: Agent
) -> None:
    nb = await _running(project, host)
    await _later(harness, host, 24 * HOUR)
    got = await project.get(nb["id"])
    assert got["state"] == "RUNNING"
    assert got["idle"]["timeout_s"] is None
    assert got["idle"]["idle_s"] == 24 * HOUR


async def test_the_reason_names_the_signals_of_a_cpu_notebook_with_ssh_in_code_server(
    harness: Harness, project: Tokens, host: Agent
) -> None:
    await _quota(harness, "alpha", idle_timeout_s=600)
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGv7bJ2qB3y3Ck4NqgHPl1lJ0ELnJ3bU+6q7ZuyQ2xS4 a@b"
    nb = (await project.run(editor="vscode", cpu=2, gpu=0, ssh_public_keys=[key])).json
    await host.report(nb["id"], "RUNNING")
    await _later(harness, host, 600)
    got = await project.get(nb["id"])
    assert got["state_reason"] == (
        "idle for 10 min: no editor or SSH traffic, code-server idle, CPU below 5%"
    )


@pytest.fixture
async def default_15m(tmp_path: Path, clock: FakeClock):
    h = Harness(
        config=make_config(
            tmp_path,
            quota={"gpus": 64, "cpus": 256, "notebooks": 64, "idle_timeout_s": 900},
            idle={"gpu_busy_pct": 20},
        ),
        clock=clock,
    )
    await h.start()
    try:
        yield h
    finally:
        await h.close()


async def test_the_cluster_default_applies_to_projects_without_their_own(
    default_15m: Harness,
) -> None:
    h = default_15m
    alpha, beta = await h.project("alpha"), await h.project("beta")
    host = h.agent("h1")
    await host.register(gpus=2)
    assert (await _quota(h, "alpha"))["quota"]["idle_timeout_s"] == 900
    await _quota(h, "beta", idle_timeout_s=0)
    a, b = await _running(alpha, host), await _running(beta, host)
    await _later(h, host, 900)
    got = await alpha.get(a["id"])
    assert got["state_reason"] == (
        "idle for 15 min: no editor traffic, kernels and terminals idle, GPU below 20%"
    )
    assert (await beta.get(b["id"]))["state"] == "RUNNING"


async def test_assignments_tell_the_agent_what_to_watch(
    default_15m: Harness,
) -> None:
    h = default_15m
    alpha = await h.project("alpha")
    host = h.agent("h1")
    await host.register(gpus=2)
    await alpha.run(gpu=1)
    await alpha.run(editor="vscode", gpu=1)
    items = (await host.assignments())["items"]
    assert [(i["activity_api"], i["gpu_busy_pct"], i["cpu_busy_pct"]) for i in items] == [
        ("jupyter", 20, 5),
        ("code-server", 20, 5),
    ]
