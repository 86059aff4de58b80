"""The user API: lifecycle, history, filters, and every rejected request storing nothing."""

from __future__ import annotations

import pytest

from scheduler.api.context import CONTEXT
from tests.component.conftest import START, Agent, Harness, Tokens


async def test_run_places_and_returns_starting_notebook(
    harness: Harness, project: Tokens, host: Agent
) -> None:
    reply = await project.run(labels={"team": "vision"}, envvars={"SEED": "1"})
    nb = reply.json
    assert nb["state"] == "STARTING"
    assert nb["state_reason"] == "placed on h1"
    assert nb["host"] == "h1"
    assert nb["generation"] == 1
    assert nb["gpu"] == 1 and nb["cpu"] == 4 and nb["memory_mb"] == 16384
    assert [g["uuid"] for g in nb["gpus"]] == ["GPU-h1-0"]
    assert nb["image"] == "nbfleet/conda:test"
    assert nb["name"].startswith("conda-jupyterlab-") and len(nb["name"]) == 21
    assert nb["created_at"] == START
    assert reply.content_type == "application/json"


async def test_cpu_notebook_defaults(project: Tokens, host: Agent) -> None:
    nb = (await project.run(gpu=0)).json
    assert (nb["gpu"], nb["cpu"], nb["memory_mb"], nb["gpus"]) == (0, 1, 4096, [])
    nb = (await project.run(cpu=3)).json
    assert (nb["gpu"], nb["cpu"], nb["memory_mb"]) == (0, 3, 3 * 4096)
    nb = (await project.run(gpu=2, cpu=6, name="big-one")).json
    assert (nb["gpu"], nb["cpu"], nb["memory_mb"], nb["name"]) == (2, 6, 32768, "big-one")


async def test_get_list_and_history(harness: Harness, project: Tokens, host: Agent) -> None:
    first = (await project.run(labels={"team": "vision"})).json
    second = (await project.run(gpu=0, labels={"team": "nlp"})).json

    got = await project.get(first["id"])
    assert got["id"] == first["id"]
    assert [(h["state"], h["reason"]) for h in got["history"]] == [("STARTING", "placed on h1")]

    everything = await harness.call("GET", "/v1/notebooks", token=project.read)
    assert [n["id"] for n in everything.json["items"]] == [first["id"], second["id"]]
    vision = await harness.call("GET", "/v1/notebooks?label=team=vision", token=project.read)
    assert [n["id"] for n in vision.json["items"]] == [first["id"]]

    await host.report(first["id"], "RUNNING", url="http://h1:3000/lab")
    running = await harness.call("GET", "/v1/notebooks?state=RUNNING", token=project.read)
    assert [n["id"] for n in running.json["items"]] == [first["id"]]
    both = await harness.call(
        "GET", "/v1/notebooks?state=RUNNING&state=STARTING", token=project.read
    )
    assert len(both.json["items"]) == 2

    history = await harness.call("GET", f"/v1/notebooks/{first['id']}/history", token=project.read)
    assert [h["state"] for h in history.json] == ["STARTING", "RUNNING"]


async def test_stop_start_delete_cycle(harness: Harness, project: Tokens, host: Agent) -> None:
    nb = (await project.run(gpu=2)).json
    await host.report(nb["id"], "RUNNING", url="http://h1:3000/lab")
    harness.clock.advance(125)
    await host.heartbeat()

    stopped = await project.action(nb["id"], "stop")
    assert stopped.status == 202
    assert stopped.json["state"] == "STOPPING"
    assert stopped.json["billed_minutes"] == 3  # 125 s is three commenced minutes
    assert stopped.json["gpus"]  # held until the agent reports STOPPED
    await host.report(nb["id"], "STOPPED", reason="workspace pushed")
    after = await project.get(nb["id"])
    assert (after["state"], after["host"], after["gpus"]) == ("STOPPED", None, [])

    started = await project.action(nb["id"], "start")
    assert started.status == 202
    assert started.json["state"] == "STARTING"
    assert started.json["generation"] == 2
    assert started.json["host"] == "h1"

    deleted = await project.action(nb["id"], "delete")
    assert deleted.status == 202 and deleted.json["state"] == "DELETING"
    await host.report(nb["id"], "DELETED", generation=2, reason="removed")
    gone = await project.get(nb["id"])
    assert gone["state"] == "DELETED" and gone["gpus"] == []
    listed = await harness.call("GET", "/v1/notebooks", token=project.read)
    assert listed.json["items"] == []
    asked = await harness.call("GET", "/v1/notebooks?state=DELETED", token=project.read)
    assert [n["id"] for n in asked.json["items"]] == [nb["id"]]
    states = [h["state"] for h in gone["history"]]
    assert states == [
        "STARTING",
        "RUNNING",
        "STOPPING",
        "STOPPED",
        "STARTING",
        "DELETING",
        "DELETED",
    ]


async def test_delete_of_stopped_notebook_goes_to_last_host(
    harness: Harness, project: Tokens, host: Agent
) -> None:
    nb = (await project.run()).json
    await project.action(nb["id"], "stop")
    await host.report(nb["id"], "STOPPED")
    await project.action(nb["id"], "delete")
    items = (await host.assignments())["items"]
    assert [(a["notebook"], a["desired"], a["state"]) for a in items] == [
        (nb["id"], "deleted", "DELETING")
    ]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"framework": "nope", "editor": "jupyterlab"}, "$.framework"),
        ({"framework": "conda", "editor": "emacs"}, "$.editor"),
        ({"framework": "pytorch", "editor": "vscode"}, "$.editor"),
        ({"framework": "conda", "editor": "jupyterlab", "gpu": -1}, "$.gpu"),
        ({"framework": "conda", "editor": "jupyterlab", "gpu": 1000}, "$.gpu"),
        ({"framework": "conda", "editor": "jupyterlab", "cpu": -2}, "$.cpu"),
        ({"framework": "conda", "editor": "jupyterlab", "cpu": 100000}, "$.cpu"),
        ({"framework": "conda", "editor": "jupyterlab", "gpu": 0, "cpu": 0}, "$.cpu"),
        ({"framework": "conda", "editor": "jupyterlab", "gpu": "two"}, "$.gpu"),
        ({"framework": "conda", "editor": "jupyterlab", "labels": {"-bad": "x"}}, "$.labels"),
        ({"framework": "conda", "editor": "jupyterlab", "labels": {"k": "a b"}}, "$.labels"),
        ({"framework": "conda", "editor": "jupyterlab", "name": "Not_Valid"}, "$.name"),
        ({"framework": "conda", "editor": "jupyterlab", "envvars": {"1X": "y"}}, "$.envvars"),
        ({"framework": "conda", "editor": "jupyterlab", "colour": "red"}, "colour"),
        ({"editor": "jupyterlab"}, "framework"),
    ],
)
async def test_bad_create_is_400_naming_the_field(
    harness: Harness, project: Tokens, host: Agent, body: dict, field: str
) -> None:
    before = harness.snapshot()
    reply = await harness.call("POST", "/v1/notebooks", token=project.operator, body=body)
    assert reply.status == 400, reply.text
    assert reply.code == "invalid_request"
    assert field in reply.json["message"]
    assert harness.snapshot() == before


@pytest.mark.parametrize("data", [b"", b"{not json", b"[1, 2]", b'"text"', b"\xff\xfe"])
async def test_non_json_body_is_400(
    harness: Harness, project: Tokens, host: Agent, data: bytes
) -> None:
    before = harness.snapshot()
    reply = await harness.call(
        "POST",
        "/v1/notebooks",
        token=project.operator,
        data=data,
        headers={"Content-Type": "application/json"},
    )
    assert reply.status == 400 and reply.code == "invalid_request", reply.text
    assert harness.snapshot() == before


async def test_too_large_body_is_413(harness: Harness, project: Tokens) -> None:
    reply = await harness.call(
        "POST", "/v1/notebooks", token=project.operator, data=b"x" * (2 << 20)
    )
    assert reply.status == 413 and reply.code == "payload_too_large"


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("state=SLEEPING", "state"),
        ("label=novalue", "label"),
        ("label==x", "label"),
        ("label=k=a b", "label"),
        ("label=k=a&label=k=b", "label"),
    ],
)
async def test_bad_list_query_is_400(
    harness: Harness, project: Tokens, query: str, field: str
) -> None:
    reply = await harness.call("GET", f"/v1/notebooks?{query}", token=project.read)
    assert reply.status == 400 and reply.code == "invalid_request"
    assert f"`{field}`" in reply.json["message"]
    assert reply.json["detail"]["field"] == field


async def test_unknown_notebook_is_404(harness: Harness, project: Tokens) -> None:
    for method, suffix in [
        ("GET", ""),
        ("GET", "/history"),
        ("POST", "/start"),
        ("POST", "/stop"),
        ("DELETE", ""),
        ("GET", "/logs"),
    ]:
        reply = await harness.call(
            method, f"/v1/notebooks/0000-missing{suffix}", token=project.operator
        )
        assert reply.status == 404, (method, suffix, reply.text)
        assert reply.code == "not_found"


async def test_unknown_route_and_method_are_json(harness: Harness, project: Tokens) -> None:
    reply = await harness.call("GET", "/v1/nothing-here", token=project.read)
    assert (reply.status, reply.code) == (404, "not_found")
    assert reply.json["message"] == "no such endpoint: GET /v1/nothing-here"
    for path in ("/", "/v1", "/v1/notebooks/x/nothing/deeper"):
        reply = await harness.call("GET", path, token=project.read)
        assert (reply.status, reply.code) == (404, "not_found"), path
    reply = await harness.call("PUT", "/v1/notebooks", token=project.read)
    assert (reply.status, reply.code) == (405, "method_not_allowed")
    assert reply.json["message"] == "method PUT is not allowed on /v1/notebooks"
    # A path with a parameter, and one only agents use.
    for method, path in (("PATCH", "/v1/notebooks/abc"), ("GET", "/v1/agents/heartbeat")):
        reply = await harness.call(method, path, token=project.read)
        assert (reply.status, reply.code) == (405, "method_not_allowed"), (method, path)


async def test_stop_of_stopped_and_start_of_running_are_409(
    harness: Harness, project: Tokens, host: Agent
) -> None:
    nb = (await project.run()).json
    await host.report(nb["id"], "RUNNING", url="http://h1:1/lab")

    before = harness.snapshot()
    reply = await project.action(nb["id"], "start")
    assert reply.status == 409 and reply.code == "conflict"
    assert "RUNNING" in reply.json["message"]
    assert reply.json["detail"]["state"] == "RUNNING"
    assert harness.snapshot() == before

    await project.action(nb["id"], "stop")
    await host.report(nb["id"], "STOPPED")
    before = harness.snapshot()
    reply = await project.action(nb["id"], "stop")
    assert reply.status == 409 and reply.json["detail"]["state"] == "STOPPED"
    assert "STOPPED" in reply.json["message"]
    assert harness.snapshot() == before

    await project.action(nb["id"], "delete")
    before = harness.snapshot()
    for action in ("delete", "start", "stop"):
        reply = await project.action(nb["id"], action)
        assert reply.status == 409 and reply.json["detail"]["state"] == "DELETING"
    assert harness.snapshot() == before


async def test_a_request_no_host_could_ever_hold_is_503_and_stores_nothing(
    harness: Harness, project: Tokens, host: Agent
) -> None:
    before = harness.snapshot()
    reply = await project.run(expect=503, gpu=3)
    assert reply.code == "no_capacity"
    assert reply.json["message"] == (
        "no host has 3 GPUs (the largest has 2); a notebook of 3 GPUs could never be placed"
    )
    assert harness.snapshot() == before

    reply = await project.run(expect=503, gpu=0, cpu=64)
    assert "no host has 64 CPUs (the largest has 32)" in reply.json["message"]
    assert harness.snapshot() == before


async def test_start_without_room_queues_and_places_when_room_frees(
    harness: Harness, project: Tokens, host: Agent
) -> None:
    nb = (await project.run(gpu=2)).json
    await project.action(nb["id"], "stop")
    await host.report(nb["id"], "STOPPED")
    other = (await project.run(gpu=2)).json  # takes both GPUs
    reply = await project.action(nb["id"], "start")
    assert reply.status == 202
    assert reply.json["state"] == "QUEUED" and reply.json["generation"] == 2
    assert reply.json["queue"]["waiting_for"] == "2 GPUs"
    await harness.tick()
    assert (await project.get(nb["id"]))["state"] == "QUEUED"  # still no room
    await host.report(other["id"], "FAILED")
    await harness.tick()
    placed = await project.get(nb["id"])
    assert (placed["state"], placed["host"], placed["generation"]) == ("STARTING", "h1", 2)


async def test_catalog(harness: Harness, project: Tokens) -> None:
    reply = await harness.call("GET", "/v1/catalog", token=project.read)
    assert reply.status == 200
    assert [f["name"] for f in reply.json["frameworks"]] == ["conda", "pytorch"]
    assert [(e["name"], e["port"]) for e in reply.json["editors"]] == [
        ("jupyterlab", 8888),
        ("vscode", 8080),
    ]


async def test_health_is_open(harness: Harness) -> None:
    reply = await harness.call("GET", "/health")
    assert reply.status == 200 and reply.json["status"] == "ok"


async def test_health_says_503_while_the_database_is_unreachable(harness: Harness) -> None:
    """A load balancer sends requests elsewhere: this replica could answer none of them."""
    db = harness.app[CONTEXT].db
    await db.close()
    try:
        reply = await harness.call("GET", "/health")
        assert reply.status == 503 and reply.json["status"].startswith("database unreachable")
    finally:
        await db.open()
    assert (await harness.call("GET", "/health")).status == 200
