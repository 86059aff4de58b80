"""``PUT /v1/notebooks/{id}``: what applies at once (and reaches the agent at once), what waits
for the next start, what only a stopped notebook may change, and every refusal changing
nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.component.conftest import Agent, FakeClock, Harness, Tokens, started, with_frameworks

VERSIONS = {
    "editors": ["jupyterlab"],
    "versions": {
        "2.12": {"image": "nbfleet/pytorch:2.12"},
        "2.13": {"image": "nbfleet/pytorch:2.13"},
    },
}


@pytest.fixture
async def harness(tmp_path: Path, clock: FakeClock):
    async with started(with_frameworks(tmp_path, pytorch=VERSIONS), clock) as h:
        yield h


async def put(harness: Harness, notebook: str, body: dict[str, Any], token: str) -> Any:
    return await harness.call("PUT", f"/v1/notebooks/{notebook}", token=token, body=body)


async def assignment(agent: Agent, notebook: str) -> dict[str, Any]:
    return {a["notebook"]: a for a in (await agent.assignments())["items"]}[notebook]


async def running(project: Tokens, host: Agent, **fields: Any) -> dict[str, Any]:
    nb = (await project.run(**fields)).json
    await host.report(nb["id"], "RUNNING")
    return nb


async def stopped(project: Tokens, host: Agent, notebook: str, generation: int = 1) -> None:
    assert (await project.action(notebook, "stop")).status == 202
    await host.report(notebook, "STOPPED", generation=generation)


async def test_settings_apply_at_once_to_a_running_notebook_and_reach_its_agent(
    harness: Harness, project: Tokens, host: Agent
) -> None:
    nb = await running(project, host, labels={"team": "cv"}, envvars={"SEED": "1"})
    before = (await host.assignments())["version"]
    body = {
        "name": "renamed",
        "labels": {"team": "nlp", "stage": "dev"},
        "restart_on_timeout": True,
        "unsecure_http": True,
        "idle_timeout_s": 1800,
    }
    reply = await put(harness, nb["id"], body, project.operator)
    assert reply.status == 200, reply.text
    got = await project.get(nb["id"])
    for seen in (reply.json, got):
        assert (seen["name"], seen["labels"], seen["state"]) == (
            "renamed",
            {"team": "nlp", "stage": "dev"},
            "RUNNING",
        )
        assert (seen["restart_on_timeout"], seen["unsecure_http"]) == (True, True)
        assert (seen["idle_timeout_s"], seen["pending_restart"]) == (1800, [])
    # The long-poll answers at once with what the proxy enforces.
    polled = await host.assignments(since=before)
    assert polled["version"] != before
    [item] = polled["items"]
    assert item["unsecure_http"] is True
    assert item["labels"] == {"team": "nlp", "stage": "dev"}

    # Clearing the idle timeout: the project's applies again.
    reply = await put(harness, nb["id"], {"idle_timeout_s": None}, project.operator)
    assert reply.json["idle_timeout_s"] is None


async def test_env_vars_wait_for_the_next_start_and_say_so(
    harness: Harness, project: Tokens, host: Agent
) -> None:
    nb = await running(project, host, envvars={"SEED": "1"})
    # The same values again change nothing that needs a restart.
    same = await put(harness, nb["id"], {"envvars": {"SEED": "1"}}, project.operator)
    assert same.json["pending_restart"] == []
    reply = await put(harness, nb["id"], {"envvars": {"SEED": "2", "MODE": "x"}}, project.operator)
    assert reply.status == 200, reply.text
    assert reply.json["envvars"] == {"SEED": "2", "MODE": "x"}
    assert reply.json["pending_restart"] == ["envvars"]
    # The running container keeps what it started with; the next start gets the new ones.
    await stopped(project, host, nb["id"])
    assert (await project.get(nb["id"]))["pending_restart"] == ["envvars"]
    started = await project.action(nb["id"], "start")
    assert started.json["pending_restart"] == []
    env = (await assignment(host, nb["id"]))["env"]
    assert (env["SEED"], env["MODE"]) == ("2", "x")


async def test_what_shapes_the_container_changes_only_while_stopped(
    harness: Harness, project: Tokens, host: Agent
) -> None:
    await host.register(gpus=4)
    nb = await running(project, host, framework="pytorch", framework_version="2.12")
    for body in ({"gpu": 2}, {"framework_version": "2.13"}, {"volumes": []}, {"flavor": None}):
        refused = await put(harness, nb["id"], {**body, "labels": {"a": "b"}}, project.operator)
        assert (refused.status, refused.json["detail"]["state"]) == (409, "RUNNING"), body
        assert "stopped notebook only" in refused.json["message"] or "stopped" in refused.text
        assert "notebook stop" in refused.json["message"]
    got = await project.get(nb["id"])
    assert (got["gpu"], got["framework_version"], got["labels"]) == (1, "2.12", {})

    await stopped(project, host, nb["id"])
    reply = await put(harness, nb["id"], {"gpu": 2, "framework_version": "2.13"}, project.operator)
    assert reply.status == 200, reply.text
    assert (reply.json["gpu"], reply.json["cpu"], reply.json["memory_mb"]) == (2, 8, 32768)
    assert (reply.json["framework_version"], reply.json["image"]) == (
        "2.13",
        "nbfleet/pytorch:2.13",
    )
    reply = await put(harness, nb["id"], {"cpu": 6}, project.operator)
    assert (reply.json["gpu"], reply.json["cpu"]) == (2, 6)

    # The next start runs what was asked for.
    started = (await project.action(nb["id"], "start")).json
    assert (started["gpu"], len(started["gpus"]), started["image"]) == (
        2,
        2,
        "nbfleet/pytorch:2.13",
    )
    assert (await assignment(host, nb["id"]))["image"] == "nbfleet/pytorch:2.13"


async def test_bad_values_are_400_naming_the_field_and_change_nothing(
    harness: Harness, project: Tokens, host: Agent
) -> None:
    nb = (await project.run(framework="pytorch")).json
    await host.report(nb["id"], "FAILED", reason="exited 1")
    for body, field in [
        ({"framework_version": "9.9"}, "$.framework_version"),
        ({"gpu": -1}, "$.gpu"),
        ({"labels": {"bad key!": "x"}}, "$.labels"),
        ({"envvars": {"1X": "y"}}, "$.envvars"),
        ({"flavor": "no-such"}, "$.flavor"),
        ({"colour": "blue"}, "colour"),
    ]:
        reply = await put(harness, nb["id"], {**body, "name": "changed"}, project.operator)
        assert reply.status == 400, (body, reply.text)
        assert field in reply.json["message"], (body, reply.json["message"])
    assert (await project.get(nb["id"]))["name"] == nb["name"]

    # A failed notebook may hold unpushed volume changes: its volumes wait for a clean stop.
    refused = await put(harness, nb["id"], {"volumes": []}, project.operator)
    assert (refused.status, refused.json["detail"]["state"]) == (409, "FAILED")
    assert "stopped cleanly" in refused.json["message"]
    # Resources are fine on a failed notebook.
    assert (await put(harness, nb["id"], {"gpu": 0, "cpu": 2}, project.operator)).status == 200

    assert (await project.action(nb["id"], "start")).status == 202
    await host.report(nb["id"], "RUNNING", generation=2)
    await stopped(project, host, nb["id"], generation=2)
    volume = {
        "container": "datasets",
        "alias": "nope",
        "mount_path": "/workspace/d",
        "permission": "rw",
    }
    unknown = await put(harness, nb["id"], {"volumes": [volume]}, project.operator)
    assert unknown.status == 400 and "$.volumes[0].alias" in unknown.json["message"]


async def test_who_may_update_and_labels_rescope_tokens_at_once(
    harness: Harness, project: Tokens, host: Agent
) -> None:
    nb = await running(project, host, labels={"team": "cv"})
    read = await put(harness, nb["id"], {"name": "x"}, project.read)
    assert read.status == 403

    made = await harness.call(
        "POST",
        "/v1/tokens",
        token=project.operator,
        body={"role": "operator", "label_selector": {"team": "cv"}},
    )
    scoped = made.json["token"]
    # A scoped token may not move a notebook out of its own reach...
    out = await put(harness, nb["id"], {"labels": {"team": "nlp"}}, scoped)
    assert out.status == 403 and "team=cv" in out.json["message"]
    # ...and keeps its label when it edits the others.
    kept = await put(harness, nb["id"], {"labels": {"stage": "dev"}}, scoped)
    assert kept.json["labels"] == {"stage": "dev", "team": "cv"}

    async def allowed(token: str) -> bool:
        reply = await host.call(
            "POST", "/v1/agents/authorize", {"notebook": nb["id"], "token": token}
        )
        return reply.json["allowed"]

    assert await allowed(scoped)
    moved = await put(harness, nb["id"], {"labels": {"team": "nlp"}}, project.operator)
    assert moved.status == 200
    assert not await allowed(scoped)
    gone = await harness.call("GET", f"/v1/notebooks/{nb['id']}", token=scoped)
    assert gone.status == 403


async def test_an_idle_timeout_over_the_projects_is_403_and_deleted_notebooks_409(
    harness: Harness, project: Tokens, host: Agent
) -> None:
    admin = {"Authorization": f"Bearer {harness.admin_token}"}
    quota = await harness.call(
        "PATCH", "/v1/admin/projects/alpha/quota", headers=admin, body={"idle_timeout_s": 3600}
    )
    assert quota.status == 200, quota.text
    nb = await running(project, host)
    refused = await put(harness, nb["id"], {"idle_timeout_s": 7200}, project.operator)
    assert refused.status == 403, refused.text
    assert (await put(harness, nb["id"], {}, project.operator)).status == 200
    assert (await project.action(nb["id"], "delete")).status == 202
    deleted = await put(harness, nb["id"], {"name": "x"}, project.operator)
    assert (deleted.status, deleted.json["detail"]["state"]) == (409, "DELETING")
