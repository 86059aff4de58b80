"""Backups (snapshots agents report), forks from a backup, and sync progress."""

from __future__ import annotations

from typing import Any

from tests.component.conftest import Agent, Harness, Tokens


def snapshot(snap_id: str, at: float, *, kind: str = "stop", logical: int = 1000) -> dict:
    return {
        "id": snap_id,
        "created_at": at,
        "kind": kind,
        "files": 3,
        "logical_bytes": logical,
        "stored_bytes": logical // 2,
    }


async def report_snapshot(
    agent: Agent, notebook: str, snap: dict, *, generation: int = 1, retained: Any = None
):
    body = {"notebook": notebook, "generation": generation, "snapshot": snap}
    if retained is not None:
        body["retained"] = retained
    reply = await agent.call("POST", "/v1/agents/snapshots", body)
    assert reply.status == 200, reply.text


async def running(harness: Harness, project: Tokens, host: Agent, **fields: Any) -> dict:
    nb = (await project.run(**fields)).json
    await host.report(nb["id"], "RUNNING", url="http://h1:5/lab")
    return nb


async def test_backups_list_newest_first_and_follow_retention(
    harness: Harness, project: Tokens, host: Agent
) -> None:
    nb = await running(harness, project, host)
    await report_snapshot(host, nb["id"], snapshot("s1", 100.0, kind="checkpoint"))
    await report_snapshot(host, nb["id"], snapshot("s2", 200.0, kind="checkpoint"))
    # replayed report: harmless
    await report_snapshot(host, nb["id"], snapshot("s2", 200.0, kind="checkpoint"))
    await report_snapshot(host, nb["id"], snapshot("s3", 300.0, logical=5000), retained=["s2"])
    reply = await harness.call("GET", f"/v1/notebooks/{nb['id']}/backups", token=project.read)
    assert reply.status == 200, reply.text
    assert [s["id"] for s in reply.json["items"]] == ["s3", "s2"]
    # get shows the latest snapshot's sizes (storage billing reads them)
    got = await project.get(nb["id"])
    assert got["workspace"]["id"] == "s3"
    assert (got["workspace"]["logical_bytes"], got["workspace"]["stored_bytes"]) == (5000, 2500)


async def test_backups_are_scoped_to_the_project(harness: Harness, project: Tokens, host) -> None:
    nb = await running(harness, project, host)
    other = await harness.project("beta")
    reply = await harness.call("GET", f"/v1/notebooks/{nb['id']}/backups", token=other.read)
    assert reply.status == 404


async def test_snapshot_from_a_host_that_does_not_hold_the_notebook_is_ignored(
    harness: Harness, project: Tokens, host: Agent
) -> None:
    nb = await running(harness, project, host)
    intruder = harness.agent("h2")
    await intruder.register(gpus=1)
    await report_snapshot(intruder, nb["id"], snapshot("evil", 1.0))
    reply = await harness.call("GET", f"/v1/notebooks/{nb['id']}/backups", token=project.read)
    assert reply.json["items"] == []


async def test_fork_starts_from_the_backup_until_it_has_its_own(
    harness: Harness, project: Tokens, host: Agent
) -> None:
    source = await running(harness, project, host, gpu=1, labels={"team": "cv"})
    await report_snapshot(host, source["id"], snapshot("s1", 100.0))
    reply = await harness.call(
        "POST",
        f"/v1/notebooks/{source['id']}/fork",
        token=project.operator,
        body={"backup": "s1", "name": "experiment-2"},
    )
    assert reply.status == 201, reply.text
    fork = reply.json
    assert fork["id"] != source["id"] and fork["name"] == "experiment-2"
    assert fork["forked_from"] == {"notebook": source["id"], "snapshot": "s1"}
    assert (fork["framework"], fork["gpu"], fork["labels"]) == ("conda", 1, {"team": "cv"})
    assert "backup s1" in fork["state_reason"]

    items = {a["notebook"]: a for a in (await host.assignments())["items"]}
    assert items[fork["id"]]["restore_from"] == {"notebook": source["id"], "snapshot": "s1"}
    assert items[fork["id"]]["initialized"] is True
    assert items[source["id"]]["restore_from"] is None

    # once the fork has a snapshot of its own, it restores its own workspace
    await host.report(fork["id"], "RUNNING", url="http://h1:6/lab")
    await report_snapshot(host, fork["id"], snapshot("f1", 400.0, kind="checkpoint"))
    items = {a["notebook"]: a for a in (await host.assignments())["items"]}
    assert items[fork["id"]]["restore_from"] is None


async def test_fork_of_unknown_backup_or_notebook_is_404_and_stores_nothing(
    harness: Harness, project: Tokens, host: Agent
) -> None:
    source = await running(harness, project, host)
    before = harness.snapshot()["notebooks"]
    for path, body in [
        (f"/v1/notebooks/{source['id']}/fork", {"backup": "nope"}),
        ("/v1/notebooks/00000000-0000-0000-0000-000000000000/fork", {"backup": "s1"}),
    ]:
        reply = await harness.call("POST", path, token=project.operator, body=body)
        assert (reply.status, reply.code) == (404, "not_found"), reply.text
    bad = await harness.call(
        "POST", f"/v1/notebooks/{source['id']}/fork", token=project.operator, body={}
    )
    assert bad.status == 400 and "backup" in bad.json["message"]
    reader = await harness.call(
        "POST", f"/v1/notebooks/{source['id']}/fork", token=project.read, body={"backup": "x"}
    )
    assert reader.status == 403
    assert harness.snapshot()["notebooks"] == before


async def test_progress_is_shown_while_syncing_and_cleared_after(
    harness: Harness, project: Tokens, host: Agent
) -> None:
    nb = (await project.run()).json
    progress = {
        "phase": "restore",
        "files_done": 40,
        "files_total": 100,
        "bytes_done": 4000,
        "bytes_total": 10000,
        "at": harness.clock(),
    }
    body = {"notebook": nb["id"], "generation": 1, "progress": progress}
    assert (await host.call("POST", "/v1/agents/progress", body)).status == 200
    assert (await project.get(nb["id"]))["progress"]["files_done"] == 40
    # a report for an older generation or from another host changes nothing
    stale = harness.agent("h2")
    await stale.register(gpus=1)
    await stale.call(
        "POST", "/v1/agents/progress", {**body, "progress": {**progress, "files_done": 1}}
    )
    assert (await project.get(nb["id"]))["progress"]["files_done"] == 40
    await host.call("POST", "/v1/agents/progress", {**body, "progress": None})
    assert (await project.get(nb["id"]))["progress"] is None


async def test_fork_keeps_the_source_volumes(
    harness: Harness, project: Tokens, host: Agent
) -> None:
    store = {
        "alias": "lab-s3",
        "endpoint": "http://127.0.0.1:9000",
        "access_key": "k",
        "secret_key": "s",
    }
    made = await harness.call("POST", "/v1/datastores", token=project.operator, body=store)
    assert made.status == 201, made.text
    volume = {
        "container": "datasets",
        "alias": "lab-s3",
        "mount_path": "/workspace/data",
        "permission": "rw",
    }
    source = await running(harness, project, host, volumes=[volume])
    await report_snapshot(host, source["id"], snapshot("s1", 100.0))
    reply = await harness.call(
        "POST",
        f"/v1/notebooks/{source['id']}/fork",
        token=project.operator,
        body={"backup": "s1"},
    )
    assert reply.status == 201, reply.text
    assert reply.json["volumes"] == [{**volume, "prefix": ""}]
